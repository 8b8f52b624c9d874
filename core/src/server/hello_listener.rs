//! The hello listener on TCP 9971: accepts one connection per hello, reassembles the
//! message until the device closes, and turns it into either a provisioning job or an
//! alert. The listener never writes to a hello connection, except for a short plain
//! page answering an HTTP `GET` probe.
//!
//! Bounded everywhere: at most [`MAX_HELLO_BYTES`] per hello, a read deadline, a cap
//! on concurrent connections, and a token bucket per source address (for at most
//! 65,536 addresses; a full table is reported, never silent); a flood of hellos
//! costs neither unbounded memory nor sockets.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use super::jobs::{AcceptedHello, AcceptedPkiHello, JobManager};
use crate::alerts::AlertLog;
use crate::hello::{self, Hello};
use crate::keys::Pid;
use crate::metrics::HelloOutcome;
use crate::store::{NewAlert, PidLookup, Severity};
use crate::store_thread::StoreHandle;

/// Largest hello accepted (a v3 hello with the most hashes is well under 1 KiB).
pub const MAX_HELLO_BYTES: usize = 4096;

const PROBE_PAGE: &str = "HTTP/1.0 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\nThis is the vprov provisioning server's hello port.\nIntel AMT devices in setup mode send their setup-mode hello messages here; it is not a web server.\n";

/// Limits of the hello listener.
#[derive(Debug, Clone)]
pub struct HelloLimits {
    /// Connections handled at once; more are closed on accept.
    pub max_connections: usize,
    /// Time a device has to send its whole hello and close.
    pub read_timeout: Duration,
    /// Hellos one source address may send in a burst.
    pub per_source_burst: u32,
    /// Hellos per second one source address may sustain.
    pub per_source_per_second: f64,
}

/// Per-source token buckets, with the time of the last "rate limited" alert.
struct RateLimiter {
    burst: f64,
    per_second: f64,
    /// Source addresses tracked at most; idle full buckets are forgotten beyond this.
    max_sources: usize,
    sources: Mutex<Sources>,
}

#[derive(Default)]
struct Sources {
    buckets: HashMap<IpAddr, Bucket>,
    /// When idle buckets were last looked for in a full table (at most once a
    /// second: it walks the whole table).
    pruned: Option<Instant>,
    /// When a full table was last reported.
    full_alerted: Option<Instant>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
    alerted: Option<Instant>,
}

/// What the rate limiter decided for one connection.
enum Admission {
    Allowed,
    /// Ignored; the alert to raise about it, at most once a minute per source (and
    /// once a minute for a full table).
    Refused(Option<NewAlert>),
}

impl RateLimiter {
    /// Source addresses tracked at most by default.
    const MAX_SOURCES: usize = 65_536;

    fn new(burst: f64, per_second: f64, max_sources: usize) -> RateLimiter {
        RateLimiter {
            burst,
            per_second,
            max_sources,
            sources: Mutex::default(),
        }
    }

    /// How long a bucket takes to fill up again: idle that long, it is forgotten.
    fn horizon(&self) -> Duration {
        Duration::from_secs_f64(self.burst / self.per_second.max(0.001))
    }

    fn admit(&self, ip: IpAddr) -> Admission {
        let now = Instant::now();
        let mut sources = self.sources.lock().expect("rate limiter lock");
        let sources = &mut *sources;
        if sources.buckets.len() >= self.max_sources && !sources.buckets.contains_key(&ip) {
            if sources
                .pruned
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
            {
                let horizon = self.horizon();
                sources
                    .buckets
                    .retain(|_, b| now.duration_since(b.at) < horizon);
                sources.pruned = Some(now);
            }
            if sources.buckets.len() >= self.max_sources {
                // Every tracked source sent a hello within the horizon: a new one
                // (perhaps a real device) is ignored, which an admin must hear of.
                let alert = sources
                    .full_alerted
                    .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60));
                if !alert {
                    return Admission::Refused(None);
                }
                sources.full_alerted = Some(now);
                return Admission::Refused(Some(NewAlert {
                    severity: Severity::Warning,
                    source: "hello".into(),
                    message: format!(
                        "hellos from new addresses are ignored: {} addresses sent hellos within {} s, \
                         the most the hello rate limiter tracks (a flood from many addresses?); \
                         devices that keep saying hello are served once addresses go quiet",
                        self.max_sources,
                        self.horizon().as_secs().max(1)
                    ),
                    pid: None,
                    device_uuid: None,
                    address: None,
                }));
            }
        }
        let bucket = sources.buckets.entry(ip).or_insert(Bucket {
            tokens: self.burst,
            at: now,
            alerted: None,
        });
        let elapsed = now.duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Admission::Allowed;
        }
        let alert = bucket
            .alerted
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60));
        if !alert {
            return Admission::Refused(None);
        }
        bucket.alerted = Some(now);
        Admission::Refused(Some(NewAlert {
            severity: Severity::Warning,
            source: "hello".into(),
            message: "too many hellos from this address; excess hellos are ignored".into(),
            pid: None,
            device_uuid: None,
            address: Some(ip.to_string()),
        }))
    }
}

/// Accepts hello connections until shutdown.
pub struct HelloListener {
    listener: TcpListener,
    limits: HelloLimits,
    store: StoreHandle,
    alerts: AlertLog,
    jobs: JobManager,
}

impl HelloListener {
    pub fn new(
        listener: TcpListener,
        limits: HelloLimits,
        store: StoreHandle,
        alerts: AlertLog,
        jobs: JobManager,
    ) -> Self {
        HelloListener {
            listener,
            limits,
            store,
            alerts,
            jobs,
        }
    }

    /// Runs the accept loop until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let connections = Arc::new(Semaphore::new(self.limits.max_connections));
        let limiter = Arc::new(RateLimiter::new(
            f64::from(self.limits.per_source_burst.max(1)),
            self.limits.per_source_per_second,
            RateLimiter::MAX_SOURCES,
        ));
        let ctx = Arc::new(HandlerContext {
            store: self.store,
            alerts: self.alerts,
            jobs: self.jobs,
            read_timeout: self.limits.read_timeout,
        });
        let mut backoff = Duration::from_millis(10);
        loop {
            let accepted = tokio::select! {
                _ = shutdown.changed() => return,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(conn) => {
                    backoff = Duration::from_millis(10);
                    conn
                }
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!("hello listener accept failed: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                crate::metrics::hello(HelloOutcome::Dropped);
                tracing::debug!(%peer, "hello connection refused: too many at once");
                continue;
            };
            match limiter.admit(peer.ip()) {
                Admission::Allowed => {}
                Admission::Refused(alert) => {
                    crate::metrics::hello(HelloOutcome::RateLimited);
                    tracing::debug!(%peer, "hello ignored by the rate limiter");
                    if let Some(alert) = alert {
                        ctx.alerts.raise(alert);
                    }
                    continue;
                }
            }
            let ctx = ctx.clone();
            tokio::spawn(async move {
                ctx.handle(stream, peer).await;
                drop(permit);
            });
        }
    }
}

struct HandlerContext {
    store: StoreHandle,
    alerts: AlertLog,
    jobs: JobManager,
    read_timeout: Duration,
}

/// What arrived on one connection.
enum Received {
    Message(Vec<u8>),
    Probe,
    Oversized,
}

fn is_http_probe(buf: &[u8]) -> bool {
    (buf.starts_with(b"GET ") || buf.starts_with(b"HEAD "))
        && buf.windows(4).any(|w| w == b"\r\n\r\n")
}

async fn receive(stream: &mut TcpStream) -> std::io::Result<Received> {
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Received::Message(buf));
        }
        if buf.len() + n > MAX_HELLO_BYTES {
            return Ok(Received::Oversized);
        }
        buf.extend_from_slice(&chunk[..n]);
        if is_http_probe(&buf) {
            return Ok(Received::Probe);
        }
    }
}

impl HandlerContext {
    fn alert(&self, severity: Severity, message: String, address: IpAddr) -> NewAlert {
        NewAlert {
            severity,
            source: "hello".into(),
            message,
            pid: None,
            device_uuid: None,
            address: Some(address.to_string()),
        }
    }

    async fn handle(&self, mut stream: TcpStream, peer: SocketAddr) {
        let ip = peer.ip();
        let received = tokio::time::timeout(self.read_timeout, receive(&mut stream)).await;
        let bytes = match received {
            Ok(Ok(Received::Message(bytes))) => bytes,
            Ok(Ok(Received::Probe)) => {
                crate::metrics::hello(HelloOutcome::Probe);
                let _ = stream.write_all(PROBE_PAGE.as_bytes()).await;
                let _ = stream.shutdown().await;
                return;
            }
            Ok(Ok(Received::Oversized)) => {
                crate::metrics::hello(HelloOutcome::Malformed);
                self.alerts.raise(self.alert(
                    Severity::Warning,
                    format!("malformed hello: more than {MAX_HELLO_BYTES} bytes"),
                    ip,
                ));
                return;
            }
            Ok(Err(e)) => {
                crate::metrics::hello(HelloOutcome::Malformed);
                self.alerts.raise(self.alert(
                    Severity::Warning,
                    format!("malformed hello: connection failed before the message ended ({e})"),
                    ip,
                ));
                return;
            }
            Err(_) => {
                crate::metrics::hello(HelloOutcome::Malformed);
                self.alerts.raise(self.alert(
                    Severity::Warning,
                    format!(
                        "malformed hello: not complete within {} s",
                        self.read_timeout.as_secs_f32()
                    ),
                    ip,
                ));
                return;
            }
        };
        drop(stream);
        self.dispatch(&bytes, ip).await;
    }

    async fn dispatch(&self, bytes: &[u8], ip: IpAddr) {
        let hello = match hello::parse(bytes) {
            Ok(hello) => hello,
            Err(e) => {
                crate::metrics::hello(HelloOutcome::Malformed);
                self.alerts.raise(self.alert(
                    Severity::Warning,
                    format!("malformed hello: {e}"),
                    ip,
                ));
                return;
            }
        };
        let uuid = hello.header().uuid;
        let pid_bytes = match hello {
            Hello::Psk { pid, .. } => pid,
            Hello::Pki { hashes, .. } => {
                crate::metrics::hello(HelloOutcome::PkiMatched);
                self.jobs.submit_pki(AcceptedPkiHello {
                    uuid,
                    address: ip,
                    hashes,
                });
                return;
            }
        };
        let shown_pid: String = pid_bytes
            .iter()
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
            .collect();
        let pid: Pid = match shown_pid.parse() {
            Ok(pid)
                if shown_pid
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) =>
            {
                pid
            }
            Ok(_) | Err(_) => {
                crate::metrics::hello(HelloOutcome::InvalidPid);
                let why = shown_pid
                    .parse::<Pid>()
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "PID is not upper-case".into());
                let mut alert = self.alert(
                    Severity::Warning,
                    format!("hello with an invalid PID: {why}"),
                    ip,
                );
                alert.pid = Some(shown_pid);
                alert.device_uuid = Some(uuid.to_string());
                self.alerts.raise(alert);
                return;
            }
        };
        let lookup = self.store.call(move |s| s.lookup_pid(&pid)).await;
        let outcome = self.answer(lookup, pid, uuid, ip);
        crate::metrics::hello(outcome);
    }

    /// Starts a job for an available PID or raises the alert a PID look-up calls for.
    fn answer(
        &self,
        lookup: Result<
            Result<PidLookup, crate::store::StoreError>,
            crate::store_thread::StoreClosed,
        >,
        pid: Pid,
        uuid: crate::hello::DeviceUuid,
        ip: IpAddr,
    ) -> HelloOutcome {
        let reject = |message: String| {
            let mut alert = self.alert(Severity::Warning, message, ip);
            alert.pid = Some(pid.dashed());
            alert.device_uuid = Some(uuid.to_string());
            self.alerts.raise(alert);
        };
        match lookup {
            Ok(Ok(PidLookup::Available(pps))) => {
                self.jobs.submit(AcceptedHello {
                    pid,
                    pps,
                    uuid,
                    address: ip,
                });
                HelloOutcome::PskMatched
            }
            Ok(Ok(PidLookup::Unknown)) => {
                reject("hello with an unknown PID: not generated by this vprov".into());
                HelloOutcome::UnknownPid
            }
            Ok(Ok(PidLookup::Revoked)) => {
                reject("hello with a revoked PID".into());
                HelloOutcome::RevokedPid
            }
            Ok(Ok(PidLookup::Used { device_uuid })) => {
                reject(format!(
                    "hello with a PID already used to provision device {device_uuid}"
                ));
                HelloOutcome::UsedPid
            }
            Ok(Err(e)) => {
                tracing::error!("PID look-up failed: {e}");
                HelloOutcome::LookupFailed
            }
            Err(_) => HelloOutcome::LookupFailed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The alert a refusal raises, if any.
    fn refused(admission: Admission) -> Option<NewAlert> {
        match admission {
            Admission::Allowed => panic!("admitted"),
            Admission::Refused(alert) => alert,
        }
    }

    #[test]
    fn rate_limiter_allows_a_burst_then_limits_and_alerts_once() {
        let limiter = RateLimiter::new(3.0, 0.0001, RateLimiter::MAX_SOURCES);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        for _ in 0..3 {
            assert!(matches!(limiter.admit(ip), Admission::Allowed));
        }
        let alert = refused(limiter.admit(ip)).expect("an alert");
        assert_eq!(alert.address.as_deref(), Some("127.0.0.9"));
        assert!(alert.message.starts_with("too many hellos"), "{alert:?}");
        assert!(refused(limiter.admit(ip)).is_none());
        let other: IpAddr = "127.0.0.10".parse().unwrap();
        assert!(matches!(limiter.admit(other), Admission::Allowed));
    }

    #[test]
    fn a_full_source_table_is_reported_once_not_silently() {
        // Every tracked source is busy (nothing fills up again within the test).
        let limiter = RateLimiter::new(5.0, 0.0001, 3);
        for last in 1..=3 {
            let ip: IpAddr = format!("127.0.1.{last}").parse().unwrap();
            assert!(matches!(limiter.admit(ip), Admission::Allowed));
        }
        let new: IpAddr = "127.0.1.4".parse().unwrap();
        let alert = refused(limiter.admit(new)).expect("a full table is reported");
        assert_eq!(alert.severity, Severity::Warning);
        assert_eq!(
            alert.address, None,
            "one alert for all addresses: {alert:?}"
        );
        assert!(
            alert
                .message
                .starts_with("hellos from new addresses are ignored: 3 addresses"),
            "{alert:?}"
        );
        // Later ones within the minute are part of the same situation.
        let another: IpAddr = "127.0.1.5".parse().unwrap();
        assert!(refused(limiter.admit(another)).is_none());
        assert!(refused(limiter.admit(new)).is_none());
        // Tracked sources are still served.
        let known: IpAddr = "127.0.1.1".parse().unwrap();
        assert!(matches!(limiter.admit(known), Admission::Allowed));
    }

    #[test]
    fn http_probes_are_recognised() {
        assert!(is_http_probe(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!is_http_probe(b"GET / HTTP/1.1\r\n"));
        assert!(!is_http_probe(b"\x01\x00\x02\x00"));
    }
}
