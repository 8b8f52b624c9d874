//! HTTP/1.1 inside the device's TLS tunnel (hyper 1): `POST /wsman` only, Digest
//! authentication against the device's current admin credential, and the firmware's
//! connection handling as captured in RPS's tests (AMT 11.8/15.0.23 replies):
//!
//! * SOAP replies are `Transfer-Encoding: chunked`, the body split over several chunks
//!   ([`super::Behaviour::reply_chunk_size`]); successful replies keep the connection;
//! * a 401 carries `WWW-Authenticate: Digest realm=…, nonce=…,stale="false",qop="auth"`,
//!   a small `text/html` page with `Content-Length`, and `Connection: close`; 400 replies
//!   also carry `Connection: close`; the connection ends after either
//!   ([`super::Behaviour::close_after_error`]). Nonces are the device's, not the
//!   connection's: a nonce issued on one connection is accepted on the next;
//! * every reply carries `Server: Intel(R) Active Management Technology X.Y.Z`
//!   (MeshCentral `amt-wsman-comm.js` reads the version from it);
//! * on the certificate server (after `CommitChanges`), the first authenticated request
//!   confirms the device ([`super::SimConfig::require_confirmation`]);
//! * the transport-level faults (`hang`, `drop`, `garbage`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{
    HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_TYPE, SERVER, WWW_AUTHENTICATE,
};
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
/// The page a 401 carries (the firmware sends its web UI's "unauthorized" page).
const UNAUTHORIZED_PAGE: &str = "<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01 Transitional//EN\" >\n<html><head><title>Intel&reg; Active Management Technology</title></head>\n<body><p>Log on failed. Incorrect user name or password, or user account temporarily locked.</p></body></html>\n";

/// Which of the device's TLS servers a connection came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// TLS-PSK, before `CommitChanges`.
    Setup,
    /// The certificate TLS server after the commit.
    Provisioned,
}

/// A reply body: either chunked (no length announced, one chunk per piece, as the
/// firmware sends SOAP), or with a known length (`Content-Length`, as its 401 page).
pub struct ReplyBody {
    pieces: VecDeque<Bytes>,
    length: Option<u64>,
}

impl ReplyBody {
    /// `bytes` in chunks of `chunk_size` bytes (0: one chunk).
    pub fn chunked(bytes: impl Into<Bytes>, chunk_size: usize) -> ReplyBody {
        let mut bytes: Bytes = bytes.into();
        let mut pieces = VecDeque::new();
        if chunk_size > 0 {
            while bytes.len() > chunk_size {
                pieces.push_back(bytes.split_to(chunk_size));
            }
        }
        if !bytes.is_empty() {
            pieces.push_back(bytes);
        }
        ReplyBody {
            pieces,
            length: None,
        }
    }

    /// `bytes` with `Content-Length`.
    pub fn sized(bytes: impl Into<Bytes>) -> ReplyBody {
        let bytes: Bytes = bytes.into();
        let length = Some(bytes.len() as u64);
        let pieces = if bytes.is_empty() {
            VecDeque::new()
        } else {
            VecDeque::from([bytes])
        };
        ReplyBody { pieces, length }
    }
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.pieces.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        // A chunked body never reports its end up front: hyper would then send it
        // with a length instead of chunks.
        self.pieces.is_empty() && self.length.is_some()
    }

    fn size_hint(&self) -> SizeHint {
        self.length.map(SizeHint::with_exact).unwrap_or_default()
    }
}

/// Serves one connection of `server` until the client or the device closes it, or
/// until `stop` (then the request in flight is finished and the connection closed).
pub async fn serve_connection(
    mut tcp: TcpStream,
    ctx: SslContext,
    dev: Arc<Device>,
    server: Server,
    mut stop: Option<watch::Receiver<bool>>,
) {
    let handshake = async {
        let alert = dev.spec.behaviour.tls_intolerance_alert;
        if dev.tls_version_intolerant() && tls::refuse_newer_hello(&mut tcp, alert).await {
            return None;
        }
        tls::accept(&ctx, tcp).await.ok()
    };
    let Ok(Some(stream)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await else {
        return;
    };
    let service = service_fn(move |req| handle(Arc::clone(&dev), server, req));
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

fn response(status: StatusCode, body: ReplyBody, dev: &Device) -> Response<ReplyBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let server = format!(
        "Intel(R) Active Management Technology {}",
        dev.spec.amt_version
    );
    if let Ok(v) = HeaderValue::from_str(&server) {
        resp.headers_mut().insert(SERVER, v);
    }
    if dev.spec.behaviour.close_after_error
        && matches!(status, StatusCode::UNAUTHORIZED | StatusCode::BAD_REQUEST)
    {
        // hyper closes the connection after a reply carrying this header.
        resp.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

fn empty(status: StatusCode, dev: &Device) -> Response<ReplyBody> {
    response(status, ReplyBody::sized(Bytes::new()), dev)
}

fn soap(status: StatusCode, xml: impl Into<Bytes>, dev: &Device) -> Response<ReplyBody> {
    let body = ReplyBody::chunked(xml, dev.spec.behaviour.reply_chunk_size);
    let mut resp = response(status, body, dev);
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(SOAP_CONTENT_TYPE));
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
    let qop = if dev.spec.behaviour.require_qop_auth {
        digest::Qop::AuthOnly
    } else {
        digest::Qop::AllowRfc2069
    };
    let st = dev.state();
    st.nonces.contains(&creds.nonce)
        && digest::verify(
            &creds,
            req.method().as_str(),
            &st.admin_user,
            &dev.realm,
            &st.ha1,
            qop,
        )
}

async fn handle(
    dev: Arc<Device>,
    server: Server,
    req: Request<Incoming>,
) -> Result<Response<ReplyBody>, std::io::Error> {
    if req.uri().path() != "/wsman" {
        return Ok(empty(StatusCode::NOT_FOUND, &dev));
    }
    if req.method() != Method::POST {
        return Ok(empty(StatusCode::METHOD_NOT_ALLOWED, &dev));
    }
    // Read the body even when refusing it, so the connection can be kept alive.
    let authenticated = authenticated(&dev, &req);
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Ok(empty(StatusCode::PAYLOAD_TOO_LARGE, &dev)),
    };
    // Slow firmware: this connection waits, other devices' connections do not.
    if !dev.call_latency.is_zero() {
        tokio::time::sleep(dev.call_latency).await;
    }
    if !authenticated {
        let nonce = dev.state().issue_nonce();
        let mut resp = response(
            StatusCode::UNAUTHORIZED,
            ReplyBody::sized(UNAUTHORIZED_PAGE),
            &dev,
        );
        let headers = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&digest::challenge(&dev.realm, &nonce)) {
            headers.insert(WWW_AUTHENTICATE, v);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        return Ok(resp);
    }
    if server == Server::Provisioned {
        dev.mark_confirmed();
    }
    match wsman::handle(&dev, &body) {
        wsman::Reply::Xml { status, xml } => Ok(soap(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            xml,
            &dev,
        )),
        wsman::Reply::Hang => std::future::pending().await,
        wsman::Reply::Drop => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "drop fault",
        )),
        wsman::Reply::Garbage => Ok(soap(
            StatusCode::OK,
            Bytes::from_static(b"\x00\xff\xfe<<garbage \x1b]]> not XML\xc3("),
            &dev,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_split_and_sized_bodies_announce_their_length() {
        let b = ReplyBody::chunked(vec![b'x'; 1100], 512);
        assert_eq!(
            b.pieces.iter().map(Bytes::len).collect::<Vec<_>>(),
            [512, 512, 76]
        );
        assert_eq!(b.size_hint().exact(), None);
        assert!(!b.is_end_stream());
        assert_eq!(ReplyBody::chunked(vec![b'x'; 1100], 0).pieces.len(), 1);
        let s = ReplyBody::sized("abc");
        assert_eq!(s.size_hint().exact(), Some(3));
    }
}
