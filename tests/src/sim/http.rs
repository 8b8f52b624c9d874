//! HTTP/1.1 inside the device's TLS tunnel (hyper 1, keep-alive): `POST /wsman` only,
//! Digest authentication against the device's current admin credential, chunked
//! replies like the firmware's (§8), and the transport-level faults (`hang`, `drop`,
//! `garbage`).

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, SERVER, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use openssl::ssl::SslContext;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::device::{stopped, Device};
use super::{digest, tls, wsman};

/// Largest request body accepted.
const MAX_BODY: usize = 512 * 1024;
/// Longest a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Content type of WS-Man replies.
pub const SOAP_CONTENT_TYPE: &str = "application/soap+xml;charset=UTF-8";

/// A body sent as one chunk with no length announced, so hyper uses
/// `Transfer-Encoding: chunked` as the firmware does.
pub struct ChunkedBody(Option<Bytes>);

impl ChunkedBody {
    pub fn new(bytes: impl Into<Bytes>) -> ChunkedBody {
        ChunkedBody(Some(bytes.into()))
    }
}

impl Body for ChunkedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}

/// Serves one TLS connection until the client closes it, or until `stop` (then the
/// request in flight is finished and the connection closed).
pub async fn serve_connection(
    tcp: TcpStream,
    ctx: SslContext,
    dev: Arc<Device>,
    mut stop: Option<watch::Receiver<bool>>,
) {
    let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls::accept(&ctx, tcp)).await
    else {
        return;
    };
    let service = service_fn(move |req| handle(Arc::clone(&dev), req));
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn response(
    status: StatusCode,
    soap: bool,
    body: impl Into<Bytes>,
    dev: &Device,
) -> Response<ChunkedBody> {
    let mut resp = Response::new(ChunkedBody::new(body));
    *resp.status_mut() = status;
    let server = format!(
        "Intel(R) Active Management Technology {}",
        dev.spec.amt_version
    );
    if let Ok(v) = HeaderValue::from_str(&server) {
        resp.headers_mut().insert(SERVER, v);
    }
    if soap {
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(SOAP_CONTENT_TYPE));
    }
    resp
}

/// Whether `req` carries valid Digest credentials for the device's admin account.
fn authenticated(dev: &Device, req: &Request<Incoming>) -> bool {
    let Some(creds) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(digest::parse)
    else {
        return false;
    };
    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    if creds.uri != uri {
        return false;
    }
    let st = dev.state();
    st.nonces.contains(&creds.nonce)
        && digest::verify(
            &creds,
            req.method().as_str(),
            &st.admin_user,
            &dev.realm,
            &st.ha1,
        )
}

async fn handle(
    dev: Arc<Device>,
    req: Request<Incoming>,
) -> Result<Response<ChunkedBody>, std::io::Error> {
    if req.uri().path() != "/wsman" {
        return Ok(response(StatusCode::NOT_FOUND, false, Bytes::new(), &dev));
    }
    if req.method() != Method::POST {
        return Ok(response(
            StatusCode::METHOD_NOT_ALLOWED,
            false,
            Bytes::new(),
            &dev,
        ));
    }
    // Read the body even when refusing it, so the connection can be kept alive.
    let authenticated = authenticated(&dev, &req);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(response(
                StatusCode::PAYLOAD_TOO_LARGE,
                false,
                Bytes::new(),
                &dev,
            ));
        }
    };
    if !authenticated {
        let nonce = dev.state().issue_nonce();
        let mut resp = response(StatusCode::UNAUTHORIZED, false, Bytes::new(), &dev);
        if let Ok(v) = HeaderValue::from_str(&digest::challenge(&dev.realm, &nonce)) {
            resp.headers_mut().insert(WWW_AUTHENTICATE, v);
        }
        return Ok(resp);
    }
    match wsman::handle(&dev, &body) {
        wsman::Reply::Xml { status, xml } => Ok(response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            true,
            xml,
            &dev,
        )),
        wsman::Reply::Hang => std::future::pending().await,
        wsman::Reply::Drop => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "drop fault",
        )),
        wsman::Reply::Garbage => Ok(response(
            StatusCode::OK,
            true,
            Bytes::from_static(b"\x00\xff\xfe<<garbage \x1b]]> not XML\xc3("),
            &dev,
        )),
    }
}
