//! The device connector: every connection vprov opens to an Intel AMT device.
//!
//! Owns the whole client side of the provisioning tunnel (wire reference:
//! `docs/protocol-notes.md`):
//! - [`tls`]: TCP connect and the TLS handshake, both the legacy TLS-PSK handshake of
//!   one-touch provisioning (PID = identity, PPS = key) and certificate-verified TLS
//!   once the device has its own certificate. The only place legacy TLS settings live.
//! - [`pki_tls`]: TLS to a device in PKI setup mode, presenting a provisioning chain.
//! - `http`: one keep-alive HTTP/1.1 connection per session, `POST /wsman`, HTTP Digest.
//! - `wsman`: WS-Management SOAP 1.2 envelopes and namespace-aware reply parsing.
//! - `amt`: the typed AMT calls an SCS makes ([`AmtSession`] methods).
//!
//! Every network step is bounded by a timeout from [`DeviceTimeouts`]. Errors are typed
//! ([`DeviceError`]) and their messages never contain a PPS or a password.

mod amt;
// `pub(crate)` for the fuzz entry points in `crate::fuzzing`.
pub(crate) mod http;
pub mod pki_tls;
pub mod tls;
pub(crate) mod wsman;

use std::net::SocketAddr;
use std::time::Duration;

use crate::keys::{Pid, Pps};

pub use amt::{Bios, GeneralSettings, Inventory, Memory, NetworkPort, Processor};

/// Per-step time limits for talking to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceTimeouts {
    /// TCP connect plus TLS handshake.
    pub connect: Duration,
    /// One HTTP exchange (including a Digest re-challenge) of one WS-Man request.
    pub request: Duration,
}

impl Default for DeviceTimeouts {
    fn default() -> Self {
        DeviceTimeouts {
            connect: Duration::from_secs(10),
            request: Duration::from_secs(30),
        }
    }
}

/// Why talking to a device failed. Messages are safe to log: they never contain a
/// PPS or a password.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The TCP connection could not be opened (refused, unreachable, …).
    #[error("device unreachable: {0}")]
    Unreachable(String),
    /// A step did not finish within its time limit.
    #[error("device did not answer in time during {step}")]
    Timeout { step: &'static str },
    /// The TLS-PSK handshake failed after key exchange: the device holds another PPS.
    #[error("TLS-PSK handshake failed after key exchange: the device's PPS does not match")]
    PskMismatch,
    /// Any other TLS failure.
    #[error("TLS failure: {0}")]
    Tls(String),
    /// A device in PKI setup mode refused the provisioning chain (certificate alert).
    #[error("the device refused the provisioning certificate chain: {0}")]
    ChainRefused(String),
    /// The device's certificate does not chain to vprov's CA.
    #[error("device certificate rejected: {0}")]
    CertificateRejected(String),
    /// The device refused the credentials (HTTP 401 after sending Digest credentials).
    #[error("device refused the credentials (HTTP 401)")]
    Unauthorized,
    /// The connection failed after it was established (reset, closed, HTTP protocol
    /// error).
    #[error("connection to the device failed: {0}")]
    Connection(String),
    /// An unexpected HTTP status without a SOAP fault.
    #[error("device answered with HTTP status {0}")]
    Http(u16),
    /// A SOAP fault. `code` and `subcode` are the local parts of the fault QNames.
    #[error("WS-Management fault {code}/{subcode}: {reason}")]
    Fault {
        code: String,
        subcode: String,
        reason: String,
    },
    /// A method ran but returned a non-zero `ReturnValue`.
    #[error("{method} returned {code} ({name})")]
    ReturnValue {
        method: &'static str,
        code: u32,
        name: &'static str,
    },
    /// The reply was not what the protocol allows (not XML, missing elements, too big…).
    #[error("malformed reply from device: {0}")]
    Malformed(String),
}

/// One authenticated WS-Management session with a device: a TLS connection (re-dialled
/// whenever the device closes it), hyper HTTP/1.1 over it, and the HTTP Digest state.
pub struct AmtSession {
    http: http::HttpSession,
    message_id: u64,
}

impl AmtSession {
    /// Opens the TLS-PSK tunnel of one-touch provisioning (identity = PID, key = PPS)
    /// and prepares Digest authentication as `user` / `password` inside it.
    pub async fn connect_psk(
        addr: SocketAddr,
        pid: &Pid,
        pps: &Pps,
        user: &str,
        password: &str,
        t: DeviceTimeouts,
    ) -> Result<Self, DeviceError> {
        let dialer = tls::Dialer::Psk {
            pid: *pid,
            pps: pps.clone(),
        };
        Self::open(dialer, addr, user, password, t).await
    }

    /// Opens a certificate-verified TLS connection to a provisioned device whose
    /// certificate was issued by vprov's CA (`ca_der`) — exactly `pinned`, when vprov
    /// knows which one it issued to this device — then prepares Digest
    /// authentication as `user` / `password`.
    pub async fn connect_tls(
        addr: SocketAddr,
        ca_der: &[u8],
        pinned: Option<&[u8]>,
        user: &str,
        password: &str,
        t: DeviceTimeouts,
    ) -> Result<Self, DeviceError> {
        let dialer = tls::Dialer::Verified {
            ca_der: ca_der.into(),
            pinned: pinned.map(Into::into),
        };
        Self::open(dialer, addr, user, password, t).await
    }

    /// Opens TLS to a device in PKI setup mode presenting `chain`'s provisioning chain
    /// (see [`pki_tls`]), then prepares Digest authentication as `user` / `password`.
    pub async fn connect_with_chain(
        addr: SocketAddr,
        chain: std::sync::Arc<pki_tls::ChainDialer>,
        user: &str,
        password: &str,
        t: DeviceTimeouts,
    ) -> Result<Self, DeviceError> {
        Self::open(tls::Dialer::Chain(chain), addr, user, password, t).await
    }

    async fn open(
        dialer: tls::Dialer,
        addr: SocketAddr,
        user: &str,
        password: &str,
        t: DeviceTimeouts,
    ) -> Result<Self, DeviceError> {
        let http = http::HttpSession::open(dialer, addr, user, password, t).await?;
        Ok(AmtSession {
            http,
            message_id: 0,
        })
    }

    /// Uses `password` for every later request (e.g. after `SetAdminAclEntryEx`).
    pub fn set_password(&mut self, password: &str) {
        self.http.set_password(password);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    use openssl::ssl::{Ssl, SslStream};

    use super::http::{digest_response, parse_auth_params};
    use super::tls::tests::{pid, pps, psk_server, PPS};
    use super::wsman::tests::reply;

    const REALM: &str = "Digest:F3EB554784E729164447A89F60B641C5";
    const OLD_PASSWORD: &str = "P@ssw0rd";
    const NEW_PASSWORD: &str = "N3w-P@ssw0rd!";

    struct Request {
        head: String,
        body: String,
    }

    impl Request {
        fn header(&self, name: &str) -> Option<&str> {
            self.head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim())
            })
        }

        /// Checks the Digest credentials; returns `nc`.
        fn check_digest(&self, nonce: &str, password: &str) -> String {
            let auth = self.header("Authorization").expect("Authorization");
            let params =
                parse_auth_params(auth.strip_prefix("Digest ").expect("Digest")).expect("params");
            let get = |k: &str| params.iter().find(|(n, _)| n == k).expect(k).1.clone();
            assert_eq!(get("username"), "admin");
            assert_eq!(get("realm"), REALM);
            assert_eq!(get("nonce"), nonce);
            assert_eq!(get("uri"), "/wsman");
            assert_eq!(get("qop"), "auth");
            let expected = digest_response(
                "admin",
                REALM,
                password,
                "POST",
                "/wsman",
                nonce,
                &get("nc"),
                &get("cnonce"),
                Some("auth"),
            );
            assert_eq!(get("response"), expected, "digest response");
            get("nc")
        }
    }

    fn read_request(s: &mut SslStream<std::net::TcpStream>) -> Request {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte).expect("read head");
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf).expect("utf8");
        let mut req = Request {
            head,
            body: String::new(),
        };
        let len: usize = req
            .header("Content-Length")
            .expect("Content-Length")
            .parse()
            .expect("number");
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).expect("read body");
        req.body = String::from_utf8(body).expect("utf8");
        req
    }

    fn challenge(s: &mut SslStream<std::net::TcpStream>, nonce: &str, stale: bool) {
        let reply = format!(
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Digest realm=\"{REALM}\", nonce=\"{nonce}\", stale=\"{stale}\", qop=\"auth\"\r\nContent-Type: text/html\r\nConnection: close\r\nContent-Length: 13\r\n\r\nUnauthorized."
        );
        s.write_all(reply.as_bytes()).expect("write 401");
    }

    /// Firmware-style chunked 200 with the body split over two chunks.
    fn chunked_ok(s: &mut SslStream<std::net::TcpStream>, body: &str) {
        let (a, b) = body.split_at(body.len() / 2);
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/soap+xml; charset=UTF-8\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
            a.len(),
            b.len()
        );
        s.write_all(reply.as_bytes()).expect("write 200");
    }

    fn output(class: &str, method: &str, inner: &str) -> String {
        let uri = wsman::amt_uri(class);
        reply(
            ["a", "b", "c", "g"],
            &format!(r#"xmlns:h="{uri}""#),
            &format!("{uri}/{method}Response"),
            &format!("<h:{method}_OUTPUT>{inner}</h:{method}_OUTPUT>"),
        )
    }

    /// One TLS-PSK session against a scripted device that behaves like firmware: every
    /// 401 says `Connection: close` and ends the connection (RPS fixtures, MeshCentral),
    /// so each challenge is answered over a new TLS-PSK handshake; successful replies
    /// are chunked and keep the connection; nonces are reused with a rising `nc`; a
    /// device that resets its nonces (any ACL change) gets one fresh-challenge retry
    /// whether or not it says `stale`; credentials refused with a fresh challenge are
    /// Unauthorized at once.
    #[tokio::test]
    async fn psk_session_with_digest_and_chunked_replies() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ctx = psk_server(PPS.as_bytes(), Arc::new(Mutex::new(None)));
        let device = std::thread::spawn(move || {
            let accept = || {
                let (tcp, _) = listener.accept().expect("accept");
                Ssl::new(&ctx).expect("ssl").accept(tcp).expect("handshake")
            };
            // Firmware answers a 401 and closes; the client must dial again.
            let refuse = |mut s: SslStream<std::net::TcpStream>, nonce: &str, stale: bool| {
                challenge(&mut s, nonce, stale);
                let _ = s.shutdown();
            };

            // 1: GetUuid without credentials → challenge, connection closed.
            let mut s = accept();
            let r = read_request(&mut s);
            assert!(r.head.starts_with("POST /wsman HTTP/1.1\r\n"), "{}", r.head);
            assert_eq!(r.header("Host"), Some(addr.to_string().as_str()));
            assert_eq!(
                r.header("Content-Type"),
                Some("application/soap+xml;charset=UTF-8")
            );
            assert!(r.header("Authorization").is_none());
            assert!(r.body.contains("GetUuid_INPUT"));
            refuse(s, "nonce-1,x", false);

            // 2: the same request with credentials on a new connection → chunked 200.
            let mut s = accept();
            let r = read_request(&mut s);
            assert_eq!(r.check_digest("nonce-1,x", OLD_PASSWORD), "00000001");
            assert!(r.body.contains("GetUuid_INPUT"));
            chunked_ok(
                &mut s,
                &output(
                    "AMT_SetupAndConfigurationService",
                    "GetUuid",
                    "<h:UUID>E67jVdK/u2EXoIiu3XA36g==</h:UUID><h:ReturnValue>0</h:ReturnValue>",
                ),
            );

            // 3: kept alive: the nonce is reused with nc 2 and the new password; the
            // device calls the nonce stale.
            let r = read_request(&mut s);
            assert_eq!(r.check_digest("nonce-1,x", NEW_PASSWORD), "00000002");
            assert!(r.body.contains("CommitChanges_INPUT"));
            refuse(s, "nonce-2", true);
            let mut s = accept();
            let r = read_request(&mut s);
            assert_eq!(r.check_digest("nonce-2", NEW_PASSWORD), "00000001");
            chunked_ok(
                &mut s,
                &output(
                    "AMT_SetupAndConfigurationService",
                    "CommitChanges",
                    "<h:ReturnValue>38</h:ReturnValue>",
                ),
            );

            // 4: the device reset its digest cache (an ACL change): a plain 401, not
            // stale. One retry with the fresh challenge succeeds.
            let r = read_request(&mut s);
            r.check_digest("nonce-2", NEW_PASSWORD);
            refuse(s, "nonce-3", false);
            let mut s = accept();
            let r = read_request(&mut s);
            assert_eq!(r.check_digest("nonce-3", NEW_PASSWORD), "00000001");
            chunked_ok(
                &mut s,
                &output(
                    "AMT_TimeSynchronizationService",
                    "GetLowAccuracyTimeSynch",
                    "<h:Ta0>1700000000</h:Ta0><h:ReturnValue>0</h:ReturnValue>",
                ),
            );

            // 5: credentials refused: the retry with a fresh challenge is refused
            // too, and the client stops there.
            let r = read_request(&mut s);
            r.check_digest("nonce-3", NEW_PASSWORD);
            refuse(s, "nonce-4", false);
            let mut s = accept();
            let r = read_request(&mut s);
            assert_eq!(r.check_digest("nonce-4", NEW_PASSWORD), "00000001");
            refuse(s, "nonce-5", false);
        });

        let t = DeviceTimeouts {
            connect: Duration::from_secs(3),
            request: Duration::from_secs(3),
        };
        let mut session = AmtSession::connect_psk(addr, &pid(), &pps(), "admin", OLD_PASSWORD, t)
            .await
            .expect("session");
        let uuid = session.get_uuid().await.expect("uuid");
        assert_eq!(hex::encode(uuid), "13aee355d2bfbb6117a088aedd7037ea");

        session.set_password(NEW_PASSWORD);
        let err = session.commit_changes().await.expect_err("RV 38");
        assert!(
            matches!(
                err,
                DeviceError::ReturnValue {
                    method: "CommitChanges",
                    code: 38,
                    name: "FLASH_WRITE_LIMIT_EXCEEDED"
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            session.low_accuracy_time().await.expect("ta0"),
            1_700_000_000
        );
        let err = session.low_accuracy_time().await.expect_err("refused");
        assert!(matches!(err, DeviceError::Unauthorized), "{err:?}");
        assert!(!err.to_string().contains(NEW_PASSWORD));
        device.join().expect("device script");
    }

    /// RFC 2069 Digest (a challenge without `qop`) is refused, not answered.
    #[tokio::test]
    async fn digest_without_qop_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ctx = psk_server(PPS.as_bytes(), Arc::new(Mutex::new(None)));
        let device = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().expect("accept");
            let mut s = Ssl::new(&ctx).expect("ssl").accept(tcp).expect("handshake");
            read_request(&mut s);
            let reply = format!(
                "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Digest realm=\"{REALM}\", nonce=\"n\"\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            );
            s.write_all(reply.as_bytes()).expect("write 401");
        });
        let t = DeviceTimeouts {
            connect: Duration::from_secs(3),
            request: Duration::from_secs(3),
        };
        let mut session = AmtSession::connect_psk(addr, &pid(), &pps(), "admin", OLD_PASSWORD, t)
            .await
            .expect("session");
        let err = session.get_uuid().await.expect_err("RFC 2069");
        assert!(err.to_string().contains("RFC 2069"), "{err}");
        device.join().expect("device script");
    }

    /// A reply that stops mid-way is a Timeout naming the step, and an oversized or
    /// faulting reply is typed.
    #[tokio::test]
    async fn faults_oversize_and_stalls() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ctx = psk_server(PPS.as_bytes(), Arc::new(Mutex::new(None)));
        let device = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().expect("accept");
            let mut s = Ssl::new(&ctx).expect("ssl").accept(tcp).expect("handshake");
            // SOAP fault with HTTP 400.
            read_request(&mut s);
            let fault = reply(
                ["s", "b", "c", "g"],
                "",
                "http://schemas.xmlsoap.org/ws/2004/08/addressing/fault",
                "<s:Fault><s:Code><s:Value>s:Sender</s:Value><s:Subcode><s:Value>c:InvalidSelectors</s:Value></s:Subcode></s:Code><s:Reason><s:Text>The selectors are invalid.</s:Text></s:Reason></s:Fault>",
            );
            let head = format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/soap+xml\r\nContent-Length: {}\r\n\r\n",
                fault.len()
            );
            s.write_all(head.as_bytes()).expect("w");
            s.write_all(fault.as_bytes()).expect("w");
            // Plain 500 without a fault.
            read_request(&mut s);
            s.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops")
                .expect("w");
            // Oversized body.
            read_request(&mut s);
            let big = 2 * http::MAX_BODY;
            s.write_all(format!("HTTP/1.1 200 OK\r\nContent-Length: {big}\r\n\r\n").as_bytes())
                .expect("w");
            let _ = s.write_all(&vec![b'x'; big]);
        });
        let t = DeviceTimeouts {
            connect: Duration::from_secs(3),
            request: Duration::from_secs(3),
        };
        let mut session = AmtSession::connect_psk(addr, &pid(), &pps(), "admin", OLD_PASSWORD, t)
            .await
            .expect("session");
        match session.get_uuid().await {
            Err(DeviceError::Fault {
                code,
                subcode,
                reason,
            }) => {
                assert_eq!(
                    (code.as_str(), subcode.as_str()),
                    ("Sender", "InvalidSelectors")
                );
                assert_eq!(reason, "The selectors are invalid.");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            session.get_uuid().await,
            Err(DeviceError::Http(500))
        ));
        assert!(matches!(
            session.amt_version().await,
            Err(DeviceError::Malformed(_))
        ));
        drop(session);
        device.join().expect("device script");
    }

    /// An enumeration whose pages each pass the per-reply limits still cannot make a
    /// job keep more than [`wsman::MAX_ELEMENTS`] elements (a hostile device's 64
    /// large pages used to be kept whole).
    #[tokio::test]
    async fn an_endless_enumeration_is_cut_at_the_element_budget() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ctx = psk_server(PPS.as_bytes(), Arc::new(Mutex::new(None)));
        let device = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().expect("accept");
            let mut s = Ssl::new(&ctx).expect("ssl").accept(tcp).expect("handshake");
            let ns = ["a", "b", "c", "g"];
            read_request(&mut s);
            chunked_ok(
                &mut s,
                &reply(ns, "", "EnumerateResponse", "<g:EnumerateResponse><g:EnumerationContext>c1</g:EnumerationContext></g:EnumerateResponse>"),
            );
            // 1,365 elements a page: the fourth page crosses the 4,096 budget.
            let items = "<h:X xmlns:h=\"urn:x\"/>".repeat(wsman::MAX_ELEMENTS / 3);
            for _ in 0..4 {
                read_request(&mut s);
                chunked_ok(
                    &mut s,
                    &reply(ns, "", "PullResponse", &format!("<g:PullResponse><g:EnumerationContext>c1</g:EnumerationContext><g:Items>{items}</g:Items></g:PullResponse>")),
                );
            }
        });
        let t = DeviceTimeouts {
            connect: Duration::from_secs(3),
            request: Duration::from_secs(3),
        };
        let mut session = AmtSession::connect_psk(addr, &pid(), &pps(), "admin", OLD_PASSWORD, t)
            .await
            .expect("session");
        let err = session.amt_version().await.expect_err("budget");
        assert!(
            matches!(&err, DeviceError::Malformed(m) if m.contains("more than")),
            "{err:?}"
        );
        drop(session);
        device
            .join()
            .expect("device script: four pulls, then the job gave up");
    }

    /// The power state is read the way go-wsman-messages, RPS and MeshCentral read it:
    /// through `CIM_ServiceAvailableToElement`.
    #[tokio::test]
    async fn the_power_state_comes_from_service_available_to_element() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ctx = psk_server(PPS.as_bytes(), Arc::new(Mutex::new(None)));
        let device = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().expect("accept");
            let mut s = Ssl::new(&ctx).expect("ssl").accept(tcp).expect("handshake");
            let ns = ["a", "b", "c", "g"];
            let r = read_request(&mut s);
            assert!(
                r.body
                    .contains("CIM_ServiceAvailableToElement</w:ResourceURI>"),
                "{}",
                r.body
            );
            chunked_ok(
                &mut s,
                &reply(ns, "", "EnumerateResponse", "<g:EnumerateResponse><g:EnumerationContext>c1</g:EnumerationContext></g:EnumerateResponse>"),
            );
            read_request(&mut s);
            let uri = wsman::cim_uri("CIM_AssociatedPowerManagementService");
            chunked_ok(
                &mut s,
                &reply(ns, &format!(r#"xmlns:h="{uri}""#), "PullResponse", "<g:PullResponse><g:Items><h:CIM_AssociatedPowerManagementService><h:PowerState>8</h:PowerState></h:CIM_AssociatedPowerManagementService></g:Items><g:EndOfSequence/></g:PullResponse>"),
            );
        });
        let t = DeviceTimeouts {
            connect: Duration::from_secs(3),
            request: Duration::from_secs(3),
        };
        let mut session = AmtSession::connect_psk(addr, &pid(), &pps(), "admin", OLD_PASSWORD, t)
            .await
            .expect("session");
        assert_eq!(session.power_state().await.expect("power state"), 8);
        drop(session);
        device.join().expect("device script");
    }

    #[tokio::test]
    async fn stalled_reply_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let ctx = psk_server(PPS.as_bytes(), Arc::new(Mutex::new(None)));
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let device = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().expect("accept");
            let mut s = Ssl::new(&ctx).expect("ssl").accept(tcp).expect("handshake");
            read_request(&mut s);
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n<a:Env")
                .expect("w");
            let _ = done_rx.recv_timeout(Duration::from_secs(3));
        });
        let t = DeviceTimeouts {
            connect: Duration::from_secs(3),
            request: Duration::from_millis(300),
        };
        let mut session = AmtSession::connect_psk(addr, &pid(), &pps(), "admin", OLD_PASSWORD, t)
            .await
            .expect("session");
        let err = session.generate_key_pair().await.expect_err("stall");
        assert!(
            matches!(
                err,
                DeviceError::Timeout {
                    step: "GenerateKeyPair"
                }
            ),
            "{err:?}"
        );
        done_tx.send(()).expect("signal");
        device.join().expect("device");
    }
}
