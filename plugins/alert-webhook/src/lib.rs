//! `alert-webhook`: an alert sink POSTing each alert as JSON to an HTTP(S) endpoint —
//! a chat integration, a ticket system, an on-call service.
//!
//! Configuration:
//! - `url` (required): `https://…` (TLS through rustls, verified against the Mozilla
//!   roots, or `ca_file`) or `http://…`;
//! - `ca_file`: PEM certificates to trust instead of the public roots (a private CA);
//! - `secret_file`: a file holding a shared secret; each request then carries
//!   `X-Vprov-Signature: sha256=<hex HMAC-SHA256 of the body>`;
//! - `timeout_ms` (default 2000) per attempt, `retries` (default 2) after the first
//!   attempt, with backoff 250 ms, 500 ms, …. Keep attempts × timeout under the core's
//!   `[plugins] call_timeout_ms`, or the instance is quarantined as hung.
//!
//! Server errors (5xx), 429 and transport failures are retried; other 4xx answers are
//! final. The body: `at`, `at_unix_ms`, `severity`, `source`, `message`, `pid`,
//! `device_uuid`, `address`.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use vprov_sdk::{AlertEvent, AlertSink, Context, Plugin, PluginError, PluginKinds};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: String,
    ca_file: Option<String>,
    secret_file: Option<String>,
    timeout_ms: Option<u64>,
    retries: Option<u32>,
}

pub struct AlertWebhook {
    url: String,
    /// The URL as errors show it: scheme and host only, since webhook URLs often
    /// carry their secret token in the path or query.
    shown_url: String,
    agent: ureq::Agent,
    secret: Option<Vec<u8>>,
    retries: u32,
}

impl Plugin for AlertWebhook {
    const NAME: &'static str = "alert-webhook";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "alerts as JSON HTTP(S) POSTs, retried, optionally signed";
    const KINDS: PluginKinds = PluginKinds::ALERT_SINK;

    fn new(context: Context) -> Result<Self, PluginError> {
        let config: Config = context.config()?;
        if !(config.url.starts_with("https://") || config.url.starts_with("http://")) {
            return Err(PluginError::invalid_config(format!(
                "url must start with https:// or http://, got {}",
                shown_url(&config.url)
            )));
        }
        let timeout = Duration::from_millis(config.timeout_ms.unwrap_or(2000).max(1));
        let mut builder = ureq::AgentBuilder::new().timeout(timeout);
        if let Some(ca) = &config.ca_file {
            builder = builder.tls_config(Arc::new(tls_trusting(&context.resolve(ca))?));
        }
        let secret = match &config.secret_file {
            Some(path) => {
                let path = context.resolve(path);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    PluginError::invalid_config(format!("secret_file {}: {e}", path.display()))
                })?;
                let secret = text.trim().as_bytes().to_vec();
                if secret.is_empty() {
                    return Err(PluginError::invalid_config(format!(
                        "secret_file {} is empty",
                        path.display()
                    )));
                }
                Some(secret)
            }
            None => None,
        };
        Ok(AlertWebhook {
            shown_url: shown_url(&config.url),
            url: config.url,
            agent: builder.build(),
            secret,
            retries: config.retries.unwrap_or(2).min(10),
        })
    }

    fn alert_sink(&self) -> Option<&dyn AlertSink> {
        Some(self)
    }
}

/// `scheme://host[:port]/…`: the URL without path, query or user information.
fn shown_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("?", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let elided = if rest.len() > authority.len() {
        "/…"
    } else {
        ""
    };
    format!("{scheme}://{host}{elided}")
}

/// A rustls client configuration trusting only the certificates in `path`.
fn tls_trusting(path: &std::path::Path) -> Result<rustls::ClientConfig, PluginError> {
    let bad =
        |why: String| PluginError::invalid_config(format!("ca_file {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("holds no PEM certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl AlertSink for AlertWebhook {
    fn deliver(&self, alert: &AlertEvent) -> Result<(), PluginError> {
        let body = serde_json::to_vec(&alert.to_json()).expect("JSON of strings and numbers");
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(250 << (attempt - 1).min(6)));
            }
            let mut request = self
                .agent
                .post(&self.url)
                .set("Content-Type", "application/json")
                .set(
                    "User-Agent",
                    concat!("vprov-alert-webhook/", env!("CARGO_PKG_VERSION")),
                );
            if let Some(secret) = &self.secret {
                request = request.set("X-Vprov-Signature", &signature(secret, &body));
            }
            match request.send_bytes(&body) {
                Ok(_) => return Ok(()),
                Err(ureq::Error::Status(code, _)) if code == 429 || code >= 500 => {
                    last = format!("the webhook answered {code}");
                }
                Err(ureq::Error::Status(code, _)) => {
                    return Err(PluginError::failed(format!(
                        "the webhook {} refused the alert with {code}",
                        self.shown_url
                    )))
                }
                // Not the error's Display: it starts with the whole URL.
                Err(ureq::Error::Transport(t)) => {
                    last = t.kind().to_string();
                    if let Some(m) = t.message() {
                        last.push_str(&format!(": {m}"));
                    }
                    if let Some(cause) = std::error::Error::source(&t) {
                        last.push_str(&format!(": {cause}"));
                    }
                }
            }
        }
        Err(PluginError::failed(format!(
            "cannot deliver to {} after {} attempts: {last}",
            self.shown_url,
            self.retries + 1
        ))
        .retryable())
    }
}

vprov_sdk::export_plugin!(AlertWebhook);

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    use vprov_sdk::testing::{sample_alert, FakeHost};
    use vprov_sdk::ErrorKind;

    use super::*;

    /// Answers each connection with the next status, recording request heads and
    /// bodies; returns the URL.
    /// (request head, body) of each request served.
    type Seen = Vec<(String, Vec<u8>)>;

    fn server(statuses: Vec<u16>) -> (String, std::thread::JoinHandle<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for status in statuses {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream);
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    head.push_str(&line);
                }
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let mut stream = reader.into_inner();
                write!(
                    stream,
                    "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                seen.push((head, body));
            }
            seen
        });
        (url, handle)
    }

    fn sink(
        config: &str,
        dir: &std::path::Path,
    ) -> Result<vprov_sdk::abi::PluginInstanceBox, PluginError> {
        FakeHost::default().instantiate::<AlertWebhook>(config, dir)
    }

    #[test]
    fn errors_show_the_url_without_its_secret_parts() {
        assert_eq!(
            shown_url("https://hooks.example.com/services/T0/B0/s3cr3tT0k3n?x=1"),
            "https://hooks.example.com/…"
        );
        assert_eq!(
            shown_url("http://user:pw@10.0.0.1:8080"),
            "http://10.0.0.1:8080"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = sink(
            &format!("url = \"http://127.0.0.1:{port}/hook/s3cr3tT0k3n\"\nretries = 0"),
            &std::env::temp_dir(),
        )
        .unwrap();
        let err = s
            .deliver_alert(&sample_alert("x"))
            .into_result()
            .unwrap_err();
        assert!(!err.message.contains("s3cr3tT0k3n"), "{err}");
        assert!(
            err.message.contains(&format!("127.0.0.1:{port}/…")),
            "{err}"
        );
    }

    #[test]
    fn the_signature_is_rfc4231_hmac_sha256() {
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_server_error_is_retried_and_the_request_is_signed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "s3cret\n").unwrap();
        let (url, seen) = server(vec![500, 200]);
        let s = sink(
            &format!("url = \"{url}\"\nsecret_file = \"secret\""),
            dir.path(),
        )
        .unwrap();
        s.deliver_alert(&sample_alert("unknown PID")).unwrap();
        let seen = seen.join().unwrap();
        assert_eq!(seen.len(), 2, "one retry");
        let (head, body) = &seen[1];
        assert!(head.starts_with("POST /hook HTTP/1.1"), "{head}");
        let json: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(json["message"], "unknown PID");
        assert_eq!(json["severity"], "error");
        let expected = signature(b"s3cret", body);
        assert!(
            head.lines()
                .any(|l| l.eq_ignore_ascii_case(&format!("x-vprov-signature: {expected}"))),
            "{head}"
        );
    }

    #[test]
    fn a_client_error_is_final_and_an_unreachable_hook_is_retryable() {
        let (url, seen) = server(vec![404]);
        let s = sink(&format!("url = \"{url}\""), &std::env::temp_dir()).unwrap();
        let err = s
            .deliver_alert(&sample_alert("x"))
            .into_result()
            .unwrap_err();
        assert!(err.message.contains("refused the alert with 404"), "{err}");
        assert!(!err.retryable);
        assert_eq!(seen.join().unwrap().len(), 1);

        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = sink(
            &format!("url = \"http://127.0.0.1:{port}/\"\nretries = 1\ntimeout_ms = 500"),
            &std::env::temp_dir(),
        )
        .unwrap();
        let err = s
            .deliver_alert(&sample_alert("x"))
            .into_result()
            .unwrap_err();
        assert!(err.retryable);
        assert!(err.message.contains("after 2 attempts"), "{err}");
    }

    #[test]
    fn https_is_verified_against_the_configured_ca() {
        // A private CA and a server certificate for 127.0.0.1 and localhost.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let config = Arc::new(config);
        let served = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(config).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                tls.read_exact(&mut byte).unwrap();
                head.push(byte[0]);
            }
            tls.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                .unwrap();
            tls.conn.send_close_notify();
            let _ = tls.flush();
            String::from_utf8(head).unwrap()
        });

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        let s = sink(
            &format!("url = \"https://localhost:{port}/hook\"\nca_file = \"ca.pem\""),
            dir.path(),
        )
        .unwrap();
        s.deliver_alert(&sample_alert("over TLS")).unwrap();
        assert!(served.join().unwrap().starts_with("POST /hook"));
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let dir = std::env::temp_dir();
        for (config, needle) in [
            ("url = \"ftp://x\"", "url"),
            (
                "url = \"https://x\"\nca_file = \"/nonexistent.pem\"",
                "ca_file",
            ),
            (
                "url = \"https://x\"\nsecret_file = \"/nonexistent\"",
                "secret_file",
            ),
            ("url = \"https://x\"\nretry = 3", "retry"),
        ] {
            let err = sink(config, &dir).err().unwrap();
            assert_eq!(err.kind, ErrorKind::INVALID_CONFIG);
            assert!(err.message.contains(needle), "{config}: {err}");
        }
    }
}
