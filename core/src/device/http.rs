//! HTTP/1.1 over the device's TLS stream, and HTTP Digest authentication.
//!
//! Owns the one keep-alive hyper client connection of a session (`POST /wsman`,
//! `Content-Type: application/soap+xml;charset=UTF-8`, `Host` = the device address),
//! the response-body cap, and RFC 2617 Digest (MD5, `qop=auth`, `nc` counter, random
//! `cnonce`): the first request goes without credentials, the 401 challenge is parsed
//! and later requests reuse its nonce with an incremented `nc`. Firmware closes the
//! connection after every 401, so the session re-dials (a new TLS-PSK handshake in
//! setup mode) to answer it; a 401 to an authenticated request gets one retry with a
//! fresh challenge (the device resets its nonces on ACL changes); a second one is
//! [`DeviceError::Unauthorized`]. RFC 2069 Digest (no `qop`) is refused. Chunked and
//! `Content-Length` bodies are both handled by hyper (firmware uses chunked,
//! `amt-protocol.md` §8).

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{
    HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, SERVER, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use md5::{Digest, Md5};
use rand::RngCore;
use tokio::task::JoinHandle;
use tokio::time::{timeout, timeout_at, Instant};
use zeroize::Zeroizing;

use super::tls::{Dialer, HelloVersions};
use super::{DeviceError, DeviceTimeouts};

/// Largest reply body accepted from a device. Real firmware keeps envelopes under the
/// 153,600-byte `MaxEnvelopeSize` MeshCentral asks for; with 256 jobs in flight this
/// bounds the reply buffers of hostile devices to 64 MiB.
pub(crate) const MAX_BODY: usize = 256 * 1024;
/// The WS-Management endpoint.
const WSMAN_PATH: &str = "/wsman";
const SOAP_CONTENT_TYPE: &str = "application/soap+xml;charset=UTF-8";

/// A reply with its status and (capped) body.
pub(crate) struct HttpReply {
    pub status: u16,
    pub body: Bytes,
}

/// The live HTTP/1.1 connection of a session.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    task: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Closes the TLS connection now instead of whenever the task notices.
        self.task.abort();
    }
}

/// One device conversation over HTTP/1.1 with its Digest state. The connection is
/// re-dialled whenever the device closes it: firmware answers every 401 (and 400)
/// with `Connection: close` (`amt-protocol.md` §8), so a challenge is always
/// answered on a new connection, which then stays open as long as the device allows.
pub(crate) struct HttpSession {
    dialer: Dialer,
    addr: SocketAddr,
    versions: HelloVersions,
    connection: Option<Connection>,
    host: HeaderValue,
    user: String,
    password: Zeroizing<String>,
    digest: Option<DigestState>,
    timeouts: DeviceTimeouts,
    /// The first `Server` header the device sent (firmware names its AMT version).
    server: Option<String>,
}

impl HttpSession {
    /// Dials the device and starts HTTP/1.1 over the connection (no request yet).
    pub(crate) async fn open(
        dialer: Dialer,
        addr: SocketAddr,
        user: &str,
        password: &str,
        timeouts: DeviceTimeouts,
    ) -> Result<Self, DeviceError> {
        let host = HeaderValue::from_str(&addr.to_string())
            .map_err(|e| DeviceError::Connection(format!("bad Host header: {e}")))?;
        let mut session = HttpSession {
            dialer,
            addr,
            versions: HelloVersions::Modern,
            connection: None,
            host,
            user: user.to_string(),
            password: Zeroizing::new(password.to_string()),
            digest: None,
            timeouts,
            server: None,
        };
        session.connect().await?;
        Ok(session)
    }

    /// Opens a new connection, with the ClientHello that worked before.
    async fn connect(&mut self) -> Result<(), DeviceError> {
        self.connection = None;
        let connected = self
            .dialer
            .dial(self.addr, self.timeouts.connect, self.versions)
            .await?;
        self.versions = connected.versions;
        let (sender, conn) = timeout(
            self.timeouts.connect,
            hyper::client::conn::http1::handshake(TokioIo::new(connected.stream)),
        )
        .await
        .map_err(|_| DeviceError::Timeout {
            step: "HTTP handshake",
        })?
        .map_err(|e| DeviceError::Connection(e.to_string()))?;
        let task = tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "device HTTP connection ended with an error");
            }
        });
        self.connection = Some(Connection { sender, task });
        Ok(())
    }

    pub(crate) fn set_password(&mut self, password: &str) {
        self.password = Zeroizing::new(password.to_string());
    }

    /// The device's `Server` header, if it sent one.
    pub(crate) fn server_header(&self) -> Option<&str> {
        self.server.as_deref()
    }

    /// POSTs one SOAP envelope to `/wsman`, authenticating with Digest. `step` names
    /// the call in a timeout error. Statuses other than 401 are returned to the caller.
    ///
    /// A 401 to an unauthenticated request is answered with its challenge; a 401 to
    /// an authenticated one (the device reset its nonces: any ACL change does, and
    /// firmware may at any time) gets one retry with a fresh challenge — unless that
    /// challenge was itself fresh, when the credentials are simply wrong. RFC 2069
    /// Digest (no `qop=auth`) is refused.
    pub(crate) async fn post_wsman(
        &mut self,
        envelope: Bytes,
        step: &'static str,
    ) -> Result<HttpReply, DeviceError> {
        let deadline = Instant::now() + self.timeouts.request;
        let mut fresh_challenge = false;
        let mut retried = false;
        loop {
            let reconnect = self
                .connection
                .as_ref()
                .is_none_or(|c| c.sender.is_closed());
            if reconnect {
                timeout_at(deadline, self.connect())
                    .await
                    .map_err(|_| DeviceError::Timeout { step })??;
            }
            let authorization = match self.digest.as_mut() {
                Some(state) => Some(state.authorization(&self.user, &self.password)?),
                None => None,
            };
            let sent_credentials = authorization.is_some();
            let reply = timeout_at(deadline, self.exchange(envelope.clone(), authorization))
                .await
                .map_err(|_| DeviceError::Timeout { step })??;
            if reply.close || reply.status == StatusCode::UNAUTHORIZED.as_u16() {
                // The device closes after this reply (firmware always does after a
                // 401): the next request dials again.
                self.connection = None;
            }
            if reply.status != StatusCode::UNAUTHORIZED.as_u16() {
                return Ok(HttpReply {
                    status: reply.status,
                    body: reply.body,
                });
            }
            let challenge = reply
                .challenges
                .iter()
                .find_map(|h| parse_challenge(h).transpose())
                .transpose()?
                .ok_or(DeviceError::Unauthorized)?;
            if !challenge.qop_auth {
                return Err(DeviceError::Malformed(
                    "the device offers only RFC 2069 Digest (no qop=auth), which vprov refuses"
                        .into(),
                ));
            }
            if sent_credentials && (fresh_challenge || retried) {
                return Err(DeviceError::Unauthorized);
            }
            retried |= sent_credentials;
            fresh_challenge = true;
            self.digest = Some(DigestState { challenge, nc: 0 });
        }
    }

    async fn exchange(
        &mut self,
        envelope: Bytes,
        authorization: Option<HeaderValue>,
    ) -> Result<RawReply, DeviceError> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(WSMAN_PATH)
            .header(HOST, self.host.clone())
            .header(CONTENT_TYPE, SOAP_CONTENT_TYPE);
        if let Some(value) = authorization {
            request = request.header(AUTHORIZATION, value);
        }
        let request = request
            .body(Full::new(envelope))
            .map_err(|e| DeviceError::Connection(e.to_string()))?;
        let connection = self
            .connection
            .as_mut()
            .ok_or_else(|| DeviceError::Connection("not connected".into()))?;
        connection
            .sender
            .ready()
            .await
            .map_err(|e| DeviceError::Connection(e.to_string()))?;
        let response = connection
            .sender
            .send_request(request)
            .await
            .map_err(|e| DeviceError::Connection(e.to_string()))?;
        let status = response.status().as_u16();
        let headers = response.headers();
        let challenges = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        let close = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("close"));
        if self.server.is_none() {
            self.server = headers
                .get(SERVER)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.chars().take(128).collect());
        }
        let body = Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    DeviceError::Malformed(format!("reply body larger than {MAX_BODY} bytes"))
                } else {
                    DeviceError::Connection(e.to_string())
                }
            })?
            .to_bytes();
        Ok(RawReply {
            status,
            challenges,
            close,
            body,
        })
    }
}

struct RawReply {
    status: u16,
    challenges: Vec<String>,
    /// The device said `Connection: close`.
    close: bool,
    body: Bytes,
}

/// A parsed `WWW-Authenticate: Digest …` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DigestChallenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    /// The server offered `qop=auth` (otherwise RFC 2069 compatibility mode).
    pub qop_auth: bool,
    /// The `algorithm` parameter exactly as sent, echoed back (MD5 only).
    pub algorithm: Option<String>,
    pub stale: bool,
}

/// The challenge in use and the nonce count sent with it.
struct DigestState {
    challenge: DigestChallenge,
    nc: u32,
}

impl DigestState {
    fn authorization(&mut self, user: &str, password: &str) -> Result<HeaderValue, DeviceError> {
        self.nc = self.nc.wrapping_add(1);
        let c = &self.challenge;
        let mut raw = [0u8; 8];
        rand::thread_rng().fill_bytes(&mut raw);
        let cnonce = hex::encode(raw);
        let nc = format!("{:08x}", self.nc);
        let qop = c.qop_auth.then_some("auth");
        let response = digest_response(
            user, &c.realm, password, "POST", WSMAN_PATH, &c.nonce, &nc, &cnonce, qop,
        );
        let mut value = format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{WSMAN_PATH}\", response=\"{response}\"",
            quote(user),
            quote(&c.realm),
            quote(&c.nonce),
        );
        if qop.is_some() {
            value.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
        }
        if let Some(algorithm) = &c.algorithm {
            value.push_str(&format!(", algorithm={algorithm}"));
        }
        if let Some(opaque) = &c.opaque {
            value.push_str(&format!(", opaque=\"{}\"", quote(opaque)));
        }
        HeaderValue::from_str(&value).map_err(|_| {
            DeviceError::Malformed("Digest challenge has characters not allowed in a header".into())
        })
    }
}

/// Escapes `"` and `\` for a quoted-string.
fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn md5_hex(data: &str) -> String {
    hex::encode(Md5::digest(data.as_bytes()))
}

/// The RFC 2617 `response` value (MD5; with `qop=auth` when `qop` is given, else the
/// RFC 2069 form).
#[allow(clippy::too_many_arguments)]
pub(crate) fn digest_response(
    user: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    nc: &str,
    cnonce: &str,
    qop: Option<&str>,
) -> String {
    let ha1 = Zeroizing::new(md5_hex(&format!("{user}:{realm}:{password}")));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    match qop {
        Some(qop) => md5_hex(&format!("{}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}", *ha1)),
        None => md5_hex(&format!("{}:{nonce}:{ha2}", *ha1)),
    }
}

/// Parses one `WWW-Authenticate` value. `Ok(None)`: another scheme (e.g. Negotiate).
pub(crate) fn parse_challenge(header: &str) -> Result<Option<DigestChallenge>, DeviceError> {
    let header = header.trim_start();
    let Some((scheme, rest)) = header.split_once(|c: char| c.is_ascii_whitespace()) else {
        return Ok(None);
    };
    if !scheme.eq_ignore_ascii_case("Digest") {
        return Ok(None);
    }
    let params = parse_auth_params(rest)
        .ok_or_else(|| DeviceError::Malformed("unparsable Digest challenge".into()))?;
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let missing = |what: &str| DeviceError::Malformed(format!("Digest challenge without {what}"));
    let realm = get("realm").ok_or_else(|| missing("realm"))?;
    let nonce = get("nonce").ok_or_else(|| missing("nonce"))?;
    let qop_auth = match get("qop") {
        None => false,
        Some(qop) => {
            if !qop
                .split(',')
                .any(|q| q.trim().eq_ignore_ascii_case("auth"))
            {
                return Err(DeviceError::Malformed(format!(
                    "Digest challenge offers qop {qop:?} without auth"
                )));
            }
            true
        }
    };
    let algorithm = get("algorithm");
    if let Some(a) = &algorithm {
        if !a.eq_ignore_ascii_case("MD5") {
            return Err(DeviceError::Malformed(format!(
                "unsupported Digest algorithm {a:?}"
            )));
        }
    }
    Ok(Some(DigestChallenge {
        realm,
        nonce,
        opaque: get("opaque"),
        qop_auth,
        algorithm,
        stale: get("stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
    }))
}

/// `name=token` / `name="quoted string"` pairs separated by commas (RFC 7235).
pub(crate) fn parse_auth_params(s: &str) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Some(out);
        }
        let mut name = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && *c != ',' && !c.is_whitespace()) {
            name.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if name.is_empty() || chars.next() != Some('=') {
            return None;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => value.push(chars.next()?),
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',' && !c.is_whitespace()) {
                value.push(c);
            }
        }
        out.push((name, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_worked_example() {
        let r = digest_response(
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            "00000001",
            "0a4f113b",
            Some("auth"),
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn parses_amt_style_challenge() {
        let c = parse_challenge(
            r#"Digest realm="Digest:F3EB554784E729164447A89F60B641C5", nonce="Q2hhbGxlbmdl,=", stale="false",qop="auth""#,
        )
        .expect("ok")
        .expect("digest");
        assert_eq!(c.realm, "Digest:F3EB554784E729164447A89F60B641C5");
        assert_eq!(c.nonce, "Q2hhbGxlbmdl,=");
        assert!(c.qop_auth);
        assert!(!c.stale);
        assert_eq!(c.opaque, None);
    }

    #[test]
    fn parses_quoted_escapes_tokens_and_stale() {
        let c = parse_challenge(
            r#"digest  realm = "a \"quoted\", realm" ,nonce=abc123, opaque="xyz", qop="auth,auth-int", algorithm=MD5, stale=TRUE"#,
        )
        .expect("ok")
        .expect("digest");
        assert_eq!(c.realm, r#"a "quoted", realm"#);
        assert_eq!(c.nonce, "abc123");
        assert_eq!(c.opaque.as_deref(), Some("xyz"));
        assert_eq!(c.algorithm.as_deref(), Some("MD5"));
        assert!(c.qop_auth && c.stale);
    }

    #[test]
    fn rejects_bad_challenges() {
        assert_eq!(parse_challenge("Negotiate").expect("ok"), None);
        assert_eq!(parse_challenge("Basic realm=\"x\"").expect("ok"), None);
        for bad in [
            r#"Digest realm="unterminated"#,
            r#"Digest nonce="n""#,
            r#"Digest realm="r""#,
            r#"Digest realm="r", nonce="n", qop="auth-int""#,
            r#"Digest realm="r", nonce="n", algorithm=SHA-256"#,
            r#"Digest realm"#,
        ] {
            assert!(
                matches!(parse_challenge(bad), Err(DeviceError::Malformed(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn authorization_header_counts_and_quotes() {
        let mut state = DigestState {
            challenge: DigestChallenge {
                realm: "Digest:ABC".into(),
                nonce: "n\"1".into(),
                opaque: Some("op".into()),
                qop_auth: true,
                algorithm: None,
                stale: false,
            },
            nc: 0,
        };
        let first = state.authorization("admin", "P@ssw0rd").expect("header");
        let second = state.authorization("admin", "P@ssw0rd").expect("header");
        let first = first.to_str().expect("ascii");
        let second = second.to_str().expect("ascii");
        assert!(first.starts_with("Digest username=\"admin\", realm=\"Digest:ABC\""));
        assert!(first.contains("nonce=\"n\\\"1\""));
        assert!(first.contains("nc=00000001") && second.contains("nc=00000002"));
        assert!(first.contains("uri=\"/wsman\"") && first.contains("opaque=\"op\""));
        assert!(!first.contains("P@ssw0rd"));
        // The response must be the RFC 2617 computation over the header's own values.
        let params =
            parse_auth_params(first.strip_prefix("Digest ").expect("scheme")).expect("params");
        let get = |k: &str| params.iter().find(|(n, _)| n == k).expect(k).1.clone();
        let expected = digest_response(
            "admin",
            "Digest:ABC",
            "P@ssw0rd",
            "POST",
            "/wsman",
            "n\"1",
            &get("nc"),
            &get("cnonce"),
            Some("auth"),
        );
        assert_eq!(get("response"), expected);
    }
}
