//! Secrets at rest: the master key and AES-256-GCM sealing of every secret the store
//! keeps (PPSs, the provisioning password, device credentials, later private keys).
//!
//! A sealed value is `version (1 byte) ‖ nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)`.
//! Each value is bound to what it is (the *context*, e.g. `pps:0000037M`) through
//! GCM's associated data, so a sealed PPS copied onto another row does not open.
//! Nonces are random 96-bit values from the OS CSPRNG.
//!
//! The master key lives in a key file (64 hex digits) created on first run with mode
//! 0600, or is supplied by the operator (`VPROV_MASTER_KEY`, `--master-key-file`).

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::Zeroizing;

const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

/// Why a key could not be loaded or a value could not be opened. Never carries key
/// material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("master key file {path} does not exist")]
    KeyFileMissing { path: PathBuf },
    #[error("cannot read master key file {path}: {source}")]
    KeyFileRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create master key file {path}: {source}")]
    KeyFileCreate {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("master key from {origin} is malformed: expected 64 hexadecimal digits (32 bytes)")]
    MalformedKey { origin: String },
    #[error("a sealed {context} value cannot be opened: wrong master key or damaged data")]
    Open { context: String },
}

/// The 256-bit key that seals every secret in the store. Wiped from memory on drop;
/// `Debug` shows nothing of it.
#[derive(Clone)]
pub struct MasterKey {
    cipher: Aes256Gcm,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    fn from_bytes(bytes: &[u8; 32]) -> Self {
        MasterKey {
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }

    /// A new random key and its hex text (for the key file).
    fn generate() -> (Self, Zeroizing<String>) {
        let mut bytes = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(bytes.as_mut());
        (
            Self::from_bytes(&bytes),
            Zeroizing::new(hex::encode(*bytes)),
        )
    }

    /// Parses 64 hex digits (surrounding white space ignored). `origin` names where
    /// the text came from, for the error message.
    pub fn from_hex(text: &str, origin: &str) -> Result<Self, SecretError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), bytes.as_mut()).map_err(|_| {
            SecretError::MalformedKey {
                origin: origin.to_string(),
            }
        })?;
        Ok(Self::from_bytes(&bytes))
    }

    /// Loads the key file at `path`.
    pub fn load_file(path: &Path) -> Result<Self, SecretError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SecretError::KeyFileMissing {
                    path: path.to_path_buf(),
                })
            }
            Err(source) => {
                return Err(SecretError::KeyFileRead {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        warn_if_readable_by_others(path);
        Self::from_hex(&text, &path.display().to_string())
    }

    /// Creates a new key file at `path` (mode 0600, never overwriting an existing
    /// file), flushed to disk before it is returned.
    pub fn create_file(path: &Path) -> Result<Self, SecretError> {
        let create_err = |source| SecretError::KeyFileCreate {
            path: path.to_path_buf(),
            source,
        };
        let (key, text) = Self::generate();
        // Written whole under a temporary name, then linked into place: another
        // process creating the same store at once finds either no key file or a
        // complete one, never a half-written one; and a link never replaces a file.
        let dir = path.parent().unwrap_or(Path::new("."));
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("key");
        let tmp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let written = options.open(&tmp).and_then(|mut file| {
            file.write_all(text.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()
        });
        let linked = written.and_then(|()| fs::hard_link(&tmp, path));
        let _ = fs::remove_file(&tmp);
        linked.map_err(create_err)?;
        Ok(key)
    }

    /// Seals `plaintext` as a value of kind `context`.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        sealed.push(SEAL_VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        sealed
    }

    /// Opens a value sealed as `context`. Fails, never returns garbage, if the key,
    /// the context or a single byte differs.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SecretError> {
        let fail = || SecretError::Open {
            context: context.split(':').next().unwrap_or(context).to_string(),
        };
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != SEAL_VERSION {
            return Err(fail());
        }
        let (nonce, ciphertext) = sealed[1..].split_at(NONCE_LEN);
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| fail())
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "master key file is accessible to other users; restrict it with chmod 600"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let (key, _) = MasterKey::generate();
        let sealed = key.seal("pps:0000037M", b"NKLDG5DCRRNQE9YZZIJL7LFLVJED69XJ");
        assert!(!sealed.windows(4).any(|w| w == b"NKLD"));
        assert_eq!(
            key.open("pps:0000037M", &sealed).unwrap().as_slice(),
            b"NKLDG5DCRRNQE9YZZIJL7LFLVJED69XJ"
        );
    }

    #[test]
    fn wrong_key_context_or_tampering_fails() {
        let (key, _) = MasterKey::generate();
        let (other, _) = MasterKey::generate();
        let sealed = key.seal("pps:0000037M", b"secret");
        assert!(matches!(
            other.open("pps:0000037M", &sealed),
            Err(SecretError::Open { .. })
        ));
        assert!(key.open("pps:11111111", &sealed).is_err());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(key.open("pps:0000037M", &tampered).is_err());
        assert!(key.open("pps:0000037M", &sealed[..5]).is_err());
        assert!(key.open("pps:0000037M", &[]).is_err());
    }

    #[test]
    fn two_seals_of_one_value_differ() {
        let (key, _) = MasterKey::generate();
        assert_ne!(key.seal("x", b"same"), key.seal("x", b"same"));
    }

    #[test]
    fn key_file_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let key = MasterKey::create_file(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let sealed = key.seal("t", b"v");
        let loaded = MasterKey::load_file(&path).unwrap();
        assert_eq!(loaded.open("t", &sealed).unwrap().as_slice(), b"v");
        assert!(matches!(
            MasterKey::create_file(&path),
            Err(SecretError::KeyFileCreate { .. })
        ));
        assert_eq!(loaded.open("t", &sealed).unwrap().as_slice(), b"v");
    }

    #[test]
    fn malformed_and_missing_keys_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            MasterKey::load_file(&dir.path().join("nope")),
            Err(SecretError::KeyFileMissing { .. })
        ));
        assert!(matches!(
            MasterKey::from_hex("abcd", "env"),
            Err(SecretError::MalformedKey { .. })
        ));
        assert!(format!("{:?}", MasterKey::generate().0).contains("redacted"));
    }
}
