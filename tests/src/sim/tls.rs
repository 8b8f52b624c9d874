//! The device's TLS servers, configured like PSK-era firmware (§3): TLS 1.0 only,
//! security level 0 (Debian's openssl.cnf would otherwise force TLS 1.2 and
//! SECLEVEL 2).
//!
//! * Setup mode: `PSK-AES128-CBC-SHA`, the key being the 32 PPS bytes whatever
//!   identity the client sends (the identity is recorded for the report). A client
//!   with another PPS fails the handshake (OpenSSL sends the fatal alert).
//! * After `CommitChanges`: `AES128-SHA:AES256-SHA` (RSA key exchange) with the
//!   certificate installed by `AddCertificate` and the private key of its key pair.
//!
//! Version intolerance ([`super::Behaviour::tls_version_intolerant`], on by default below
//! AMT 7.0): firmware of that era aborts a handshake whose ClientHello announces more
//! than TLS 1.0, which is why MeshCentral (`amt-wsman-comm.js`) retries such devices
//! with `secureProtocol = 'TLSv1_method'`. [`refuse_newer_hello`] peeks at the first
//! record before OpenSSL sees the stream and answers `client_version` > 0x0301 with a
//! fatal alert: `protocol_version` by default (the standard answer), or
//! `bad_record_mac`, the alert MeshCentral's retry is keyed on
//! ([`super::TlsAlert`]).

use std::sync::Arc;

use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslContext, SslMethod, SslVersion};
use openssl::x509::X509;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

use super::TlsAlert;

/// Cipher suite of the setup-mode server.
pub const PSK_CIPHERS: &str = "PSK-AES128-CBC-SHA";
/// Cipher suites of the provisioned device.
pub const CERT_CIPHERS: &str = "AES128-SHA:AES256-SHA";

fn tls10_builder(ciphers: &str) -> anyhow::Result<openssl::ssl::SslContextBuilder> {
    let mut b = SslContext::builder(SslMethod::tls_server())?;
    b.set_security_level(0);
    b.set_min_proto_version(Some(SslVersion::TLS1))?;
    b.set_max_proto_version(Some(SslVersion::TLS1))?;
    b.set_cipher_list(ciphers)?;
    Ok(b)
}

/// The setup-mode TLS-PSK context. `on_identity` receives the client's PSK identity.
///
/// OpenSSL's Rust binding has no safe call for `SSL_CTX_use_psk_identity_hint`, so no
/// identity hint is sent (firmware may send the PID; clients must accept either).
pub fn psk_context(
    pps: [u8; 32],
    on_identity: impl Fn(&[u8]) + Send + Sync + 'static,
) -> anyhow::Result<SslContext> {
    let mut b = tls10_builder(PSK_CIPHERS)?;
    b.set_psk_server_callback(move |_ssl, identity, psk| {
        on_identity(identity.unwrap_or_default());
        match psk.get_mut(..pps.len()) {
            Some(out) => {
                out.copy_from_slice(&pps);
                Ok(pps.len())
            }
            None => Ok(0),
        }
    });
    Ok(b.build())
}

/// The provisioned device's TLS context.
pub fn cert_context(cert: &X509, key: &Arc<PKey<Private>>) -> anyhow::Result<SslContext> {
    let mut b = tls10_builder(CERT_CIPHERS)?;
    b.set_certificate(cert)?;
    b.set_private_key(key)?;
    b.check_private_key()?;
    Ok(b.build())
}

/// Runs the server side of a handshake on `tcp`.
pub async fn accept(ctx: &SslContext, tcp: TcpStream) -> anyhow::Result<SslStream<TcpStream>> {
    let ssl = openssl::ssl::Ssl::new(ctx)?;
    let mut stream = SslStream::new(ssl, tcp)?;
    std::pin::Pin::new(&mut stream).accept().await?;
    Ok(stream)
}

/// A fatal alert with `description` in a TLS 1.0 record (RFC 2246 §7.2).
pub fn fatal_alert(description: u8) -> [u8; 7] {
    [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, description]
}
/// Record header (5) + handshake type and length (4) + client_version (2).
const HELLO_PREFIX: usize = 11;

/// `client_version` of the ClientHello at the start of `tcp`, without consuming it.
/// `None` if the stream does not start with a TLS handshake record holding a ClientHello
/// (OpenSSL then fails the handshake itself) or closes first.
async fn peek_client_version(tcp: &TcpStream) -> Option<u16> {
    let mut buf = [0u8; HELLO_PREFIX];
    loop {
        let n = tcp.peek(&mut buf).await.ok()?;
        if n == 0 || buf[0] != 0x16 || (n > 5 && buf[5] != 0x01) {
            return None;
        }
        if n == HELLO_PREFIX {
            return Some(u16::from_be_bytes([buf[9], buf[10]]));
        }
        // Part of the prefix has arrived: peek again shortly (the caller bounds the wait).
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Answers a ClientHello above TLS 1.0 with `alert` ([`fatal_alert`]) and closes the
/// stream; returns `true` if it did (then the connection is over).
pub async fn refuse_newer_hello(tcp: &mut TcpStream, alert: TlsAlert) -> bool {
    match peek_client_version(tcp).await {
        Some(version) if version > 0x0301 => {
            let _ = tcp.write_all(&fatal_alert(alert.description())).await;
            let _ = tcp.shutdown().await;
            true
        }
        _ => false,
    }
}
