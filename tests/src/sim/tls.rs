//! The device's TLS servers, configured like PSK-era firmware (§3): TLS 1.0 only,
//! security level 0 (Debian's openssl.cnf would otherwise force TLS 1.2 and
//! SECLEVEL 2).
//!
//! * Setup mode: `PSK-AES128-CBC-SHA`, the key being the 32 PPS bytes whatever
//!   identity the client sends (the identity is recorded for the report). A client
//!   with another PPS fails the handshake (OpenSSL sends the fatal alert).
//! * After `CommitChanges`: `AES128-SHA:AES256-SHA` (RSA key exchange) with the
//!   certificate installed by `AddCertificate` and the private key of its key pair.

use std::sync::Arc;

use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslContext, SslMethod, SslVersion};
use openssl::x509::X509;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

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
