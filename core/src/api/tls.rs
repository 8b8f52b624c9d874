//! The admin API's TLS server configuration (rustls): a configured certificate chain
//! and key (PEM files), or by default a certificate vprov's CA issues at start for the
//! listen address, `localhost` and any configured names. Browsers then trust the
//! console once vprov's CA is installed as a trusted authority.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::ca::{CaError, CertificateAuthority};

/// Why the API cannot offer TLS.
#[derive(Debug, thiserror::Error)]
pub enum ApiTlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no {what} in PEM form")]
    Missing { path: String, what: &'static str },
    #[error("the API certificate and key do not form a usable TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("cannot issue the API certificate: {0}")]
    Ca(#[from] CaError),
}

fn read(path: &Path) -> Result<Vec<u8>, ApiTlsError> {
    std::fs::read(path).map_err(|source| ApiTlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The server configuration: from `files` (certificate chain, key) when given, else
/// issued by `ca` for `listen` and `names`.
pub fn server_config(
    files: Option<(&Path, &Path)>,
    ca: &CertificateAuthority,
    listen: SocketAddr,
    names: &[String],
) -> Result<Arc<rustls::ServerConfig>, ApiTlsError> {
    let (chain, key) = match files {
        Some((cert_path, key_path)) => {
            let pem = read(cert_path)?;
            let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut pem.as_slice())
                .filter_map(Result::ok)
                .collect();
            if chain.is_empty() {
                return Err(ApiTlsError::Missing {
                    path: cert_path.display().to_string(),
                    what: "certificate",
                });
            }
            let pem = zeroize::Zeroizing::new(read(key_path)?);
            let key = rustls_pemfile::private_key(&mut pem.as_slice())
                .ok()
                .flatten()
                .ok_or_else(|| ApiTlsError::Missing {
                    path: key_path.display().to_string(),
                    what: "private key",
                })?;
            (chain, key)
        }
        None => {
            let mut all = vec!["localhost".to_string()];
            if !listen.ip().is_unspecified() {
                all.insert(0, listen.ip().to_string());
            } else {
                all.push("127.0.0.1".to_string());
            }
            all.extend(names.iter().cloned());
            let (cert, key) = ca.issue_server_certificate(&all)?;
            (
                vec![
                    CertificateDer::from(cert),
                    CertificateDer::from(ca.cert_der().to_vec()),
                ],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.to_vec())),
            )
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
