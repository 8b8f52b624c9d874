//! `/metrics` on a plain-HTTP listener of its own (`[metrics] listen`): Prometheus
//! scrapes the process's registry ([`crate::metrics`]) here, with the devices by
//! state read from the store at most every [`DEVICE_COUNT_EVERY`]. When a bearer
//! token is configured every scrape must present it (compared in constant time);
//! nothing else is served.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::store::{DeviceFilter, DeviceState};
use crate::store_thread::StoreHandle;

/// The devices-by-state gauges are refreshed from the store at most this often: a
/// scrape every few seconds does not load the device table every time.
pub const DEVICE_COUNT_EVERY: Duration = Duration::from_secs(30);

/// How long one scrape connection may stay open.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Scrape connections open at once; one more is closed at once. A scraper needs one;
/// without a cap, anyone who reaches the port could hold descriptors the provisioning
/// jobs need.
const MAX_CONNECTIONS: usize = 16;

/// What the endpoint needs.
struct Endpoint {
    token: Option<String>,
    store: StoreHandle,
    counted: Mutex<Option<Instant>>,
}

/// Serves `/metrics` on `listener` until `stop` turns true.
pub async fn serve(
    listener: TcpListener,
    token: Option<String>,
    store: StoreHandle,
    mut stop: watch::Receiver<bool>,
) {
    let endpoint = Arc::new(Endpoint {
        token,
        store,
        counted: Mutex::new(None),
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((tcp, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let endpoint = endpoint.clone();
                async move { Ok::<_, Infallible>(endpoint.answer(&req).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
        });
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("valid"),
    );
    resp
}

impl Endpoint {
    async fn answer<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.uri().path() != "/metrics" {
            return plain(StatusCode::NOT_FOUND, "not found: try /metrics\n");
        }
        if req.method() != Method::GET {
            return plain(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        }
        if let Some(token) = &self.token {
            let presented = req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            if !crate::metrics::bearer_matches(token, presented) {
                let mut resp = plain(StatusCode::UNAUTHORIZED, "a bearer token is required\n");
                resp.headers_mut()
                    .insert(WWW_AUTHENTICATE, "Bearer".parse().expect("valid"));
                return resp;
            }
        }
        self.count_devices().await;
        let mut resp = Response::new(Full::new(Bytes::from(crate::metrics::render())));
        resp.headers_mut().insert(
            CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE.parse().expect("valid"),
        );
        resp
    }

    /// Refreshes the devices-by-state gauges when they are older than
    /// [`DEVICE_COUNT_EVERY`].
    async fn count_devices(&self) {
        {
            let mut counted = self.counted.lock().expect("metrics lock");
            if counted.is_some_and(|at| at.elapsed() < DEVICE_COUNT_EVERY) {
                return;
            }
            *counted = Some(Instant::now());
        }
        let counts = self
            .store
            .call(|s| {
                s.devices(&DeviceFilter::default()).map(|devices| {
                    let managed = devices
                        .iter()
                        .filter(|d| d.state == DeviceState::Managed)
                        .count();
                    (devices.len() - managed, managed)
                })
            })
            .await;
        match counts {
            Ok(Ok((unmanaged, managed))) => {
                crate::metrics::set_devices(DeviceState::Unmanaged.as_str(), unmanaged);
                crate::metrics::set_devices(DeviceState::Managed.as_str(), managed);
            }
            Ok(Err(e)) => tracing::warn!("metrics: cannot count devices: {e}"),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// With MAX_CONNECTIONS connections held open, one more is closed at once
    /// (end of file), not kept for the connection timeout.
    #[tokio::test]
    async fn connections_beyond_the_cap_are_closed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let options = crate::store::StoreOptions::new(dir.path());
        let store = crate::store::Store::open(&options).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, stop) = watch::channel(false);
        tokio::spawn(serve(listener, None, StoreHandle::spawn(store), stop));
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        // Accepted in order: the held ones take every slot first.
        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(20), extra.read(&mut byte))
            .await
            .expect("the connection beyond the cap was kept open");
        assert_eq!(read.unwrap(), 0);
    }
}
