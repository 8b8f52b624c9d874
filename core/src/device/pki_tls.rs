//! TLS to a device in PKI setup mode (hello v3): vprov is the TLS client and presents a
//! provisioning chain as its client certificate (`docs/protocol-notes.md`).
//!
//! * The chain goes out leaf first, then the intermediates and the root (the device
//!   matches the root's hash; MeshCentral's reversed order is not followed, §1.3).
//! * TLS 1.0 to 1.2 is offered and the device picks (AMT 12 and later speak 1.2 only);
//!   both RSA key transport and (EC)DHE suites are offered, because pre-Tiger-Lake
//!   certificates are RSA and later ones EC P-384 (§1.3 "Key exchange").
//! * The device's certificate is self-signed (before Tiger Lake) or issued by Intel's
//!   On-Die CA: it is accepted without verification, as MeshCentral does, and its
//!   SHA-256 fingerprint is recorded on the first connection; every later connection
//!   of the same session must present the same certificate, so a session that re-dials
//!   after a 401 cannot be taken over by another host at that address.
//! * A handshake the device aborts with a certificate alert is reported as
//!   [`DeviceError::ChainRefused`].

use std::pin::Pin;
use std::sync::Mutex;
use std::time::Duration;

use openssl::hash::MessageDigest;
use openssl::ssl::{Ssl, SslContext, SslMethod, SslVerifyMode, SslVersion};
use tokio::time::{timeout_at, Instant};
use tokio_openssl::SslStream;

use super::tls::{Connected, HelloVersions};
use super::DeviceError;
use crate::pki::ProvisioningChain;

/// Certificate suites: modern defaults plus the RSA key-transport suites of older
/// firmware; never anonymous or unencrypted suites.
const CIPHERS: &str = "DEFAULT:AES128-SHA:AES256-SHA:!aNULL:!eNULL";
/// `ERR_LIB_SSL`.
const LIB_SSL: i32 = 20;

/// A client context holding one provisioning chain, and the device certificate seen.
pub struct ChainDialer {
    context: SslContext,
    device_certificate: Mutex<Option<Vec<u8>>>,
}

impl std::fmt::Debug for ChainDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainDialer(<key redacted>)")
    }
}

impl ChainDialer {
    /// Builds the client context for `chain`.
    pub fn new(chain: &ProvisioningChain) -> Result<ChainDialer, DeviceError> {
        let build = || -> Result<SslContext, openssl::error::ErrorStack> {
            let mut b = SslContext::builder(SslMethod::tls_client())?;
            b.set_security_level(0);
            b.set_min_proto_version(Some(SslVersion::TLS1))?;
            b.set_max_proto_version(Some(SslVersion::TLS1_2))?;
            b.set_cipher_list(CIPHERS)?;
            let certs = chain.certificates();
            b.set_certificate(&certs[0])?;
            for cert in &certs[1..] {
                b.add_extra_chain_cert(cert.clone())?;
            }
            b.set_private_key(chain.key())?;
            b.check_private_key()?;
            b.set_verify(SslVerifyMode::NONE);
            Ok(b.build())
        };
        Ok(ChainDialer {
            context: build().map_err(|e| DeviceError::Tls(e.to_string()))?,
            device_certificate: Mutex::new(None),
        })
    }

    /// SHA-256 of the device's certificate (DER), once a handshake completed.
    pub fn device_certificate_sha256(&self) -> Option<Vec<u8>> {
        let seen = self.device_certificate.lock().ok()?.clone()?;
        openssl::hash::hash(MessageDigest::sha256(), &seen)
            .ok()
            .map(|d| d.to_vec())
    }

    /// Connects to `addr` presenting the chain.
    pub(crate) async fn dial(
        &self,
        addr: std::net::SocketAddr,
        timeout: Duration,
        versions: HelloVersions,
    ) -> Result<Connected, DeviceError> {
        let deadline = Instant::now() + timeout;
        let mut ssl = Ssl::new(&self.context).map_err(|e| DeviceError::Tls(e.to_string()))?;
        if versions == HelloVersions::Tls10Only {
            ssl.set_max_proto_version(Some(SslVersion::TLS1))
                .map_err(|e| DeviceError::Tls(e.to_string()))?;
        }
        let tcp = match timeout_at(deadline, tokio::net::TcpStream::connect(addr)).await {
            Err(_) => {
                return Err(DeviceError::Timeout {
                    step: "TCP connect",
                })
            }
            Ok(Err(e)) => return Err(DeviceError::Unreachable(format!("{addr}: {e}"))),
            Ok(Ok(tcp)) => tcp,
        };
        let _ = tcp.set_nodelay(true);
        let mut stream = SslStream::new(ssl, tcp).map_err(|e| DeviceError::Tls(e.to_string()))?;
        match timeout_at(deadline, Pin::new(&mut stream).connect()).await {
            Err(_) => {
                return Err(DeviceError::Timeout {
                    step: "TLS handshake",
                })
            }
            Ok(Err(e)) => return Err(classify(&e)),
            Ok(Ok(())) => {}
        }
        let presented = stream
            .ssl()
            .peer_certificate()
            .and_then(|c| c.to_der().ok())
            .ok_or_else(|| {
                DeviceError::CertificateRejected("the device sent no certificate".into())
            })?;
        let mut seen = self
            .device_certificate
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match seen.as_ref() {
            Some(first) if *first != presented => return Err(DeviceError::CertificateRejected(
                "the device presents another certificate than on the session's first connection"
                    .into(),
            )),
            Some(_) => {}
            None => *seen = Some(presented),
        }
        Ok(Connected { stream, versions })
    }
}

/// A handshake error: a certificate alert from the device means it refused the chain.
fn classify(e: &openssl::ssl::Error) -> DeviceError {
    // SSL_R_SSLV3_ALERT_* / SSL_R_TLSV1_ALERT_* reasons are 1000 + the alert number:
    // 42 bad_certificate … 49 access_denied, 116 certificate_required.
    let refused = e.ssl_error().is_some_and(|stack| {
        stack.errors().iter().any(|err| {
            err.library_code() == LIB_SSL && matches!(err.reason_code(), 1040 | 1042..=1049 | 1116)
        })
    });
    if refused {
        DeviceError::ChainRefused(e.to_string())
    } else {
        DeviceError::Tls(e.to_string())
    }
}
