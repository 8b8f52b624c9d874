//! What agent management keeps in the store: each device's SSH host key, recorded
//! the first time vprov reaches the device over SSH (trust on first use) and replaced
//! only by an admin, and the hash of the device's latest agent enrollment token.

use super::db::{params, OptionalExtension};
use base64::Engine as _;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::records::audit;
use super::{now_ms, Store, StoreError};

/// What the store knows of a device's SSH host key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyStatus {
    /// None was recorded: this one is now.
    FirstUse { fingerprint: String },
    /// It is the recorded key.
    Matches { fingerprint: String },
    /// A different key is recorded (its fingerprint).
    Changed { recorded: String },
}

/// An SSH public key in OpenSSH form (`ssh-ed25519 AAAA… [comment]`): the algorithm
/// and the key blob, without the comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshPublicKey {
    algorithm: String,
    blob: Vec<u8>,
}

impl SshPublicKey {
    /// Parses the OpenSSH text form; the comment, if any, is dropped.
    pub fn parse(text: &str) -> Result<SshPublicKey, StoreError> {
        let bad = || StoreError::InvalidInput(format!("not an OpenSSH public key: {text:.40}"));
        let mut fields = text.split_whitespace();
        let (Some(algorithm), Some(encoded)) = (fields.next(), fields.next()) else {
            return Err(bad());
        };
        let blob = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| bad())?;
        // The blob starts with the algorithm name as an SSH string.
        let named = blob
            .get(..4)
            .map(|n| u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize)
            .and_then(|n| blob.get(4..4 + n))
            .is_some_and(|name| name == algorithm.as_bytes());
        if !named {
            return Err(bad());
        }
        Ok(SshPublicKey {
            algorithm: algorithm.to_string(),
            blob,
        })
    }

    /// The key as OpenSSH writes it, without a comment.
    pub fn openssh(&self) -> String {
        format!(
            "{} {}",
            self.algorithm,
            base64::engine::general_purpose::STANDARD.encode(&self.blob)
        )
    }

    /// `SHA256:<base64>`, the fingerprint OpenSSH prints.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(&self.blob);
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        )
    }
}

impl Store {
    /// Checks `key` against the device's recorded SSH host key, recording it (and an
    /// audit entry) when none is.
    pub fn check_host_key(
        &mut self,
        uuid: &str,
        key: &SshPublicKey,
        actor: &str,
    ) -> Result<HostKeyStatus, StoreError> {
        let tx = self.write_tx()?;
        let known: bool = tx
            .query_row("SELECT 1 FROM devices WHERE uuid = ?1", [uuid], |_| {
                Ok(true)
            })
            .optional()?
            .unwrap_or(false);
        if !known {
            return Err(StoreError::UnknownDevice(uuid.to_string()));
        }
        let recorded: Option<(String, String)> = tx
            .query_row(
                "SELECT public_key, fingerprint FROM device_host_keys WHERE device_uuid = ?1",
                [uuid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let fingerprint = key.fingerprint();
        let status = match recorded {
            Some((public_key, _)) if public_key == key.openssh() => {
                HostKeyStatus::Matches { fingerprint }
            }
            Some((_, recorded)) => HostKeyStatus::Changed { recorded },
            None => {
                tx.execute(
                    "INSERT INTO device_host_keys
                     (device_uuid, public_key, fingerprint, recorded_at, recorded_by)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![uuid, key.openssh(), fingerprint, now_ms(), actor],
                )?;
                audit(
                    &tx,
                    actor,
                    "device.host_key_recorded",
                    &serde_json::json!({ "uuid": uuid, "fingerprint": fingerprint }),
                )?;
                HostKeyStatus::FirstUse { fingerprint }
            }
        };
        tx.commit()?;
        Ok(status)
    }

    /// Forgets the device's recorded SSH host key (after a reinstall, say), so the
    /// next connection records the key it finds. Returns the forgotten fingerprint.
    pub fn forget_host_key(
        &mut self,
        uuid: &str,
        actor: &str,
    ) -> Result<Option<String>, StoreError> {
        let tx = self.write_tx()?;
        let fingerprint: Option<String> = tx
            .query_row(
                "DELETE FROM device_host_keys WHERE device_uuid = ?1 RETURNING fingerprint",
                [uuid],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(fingerprint) = &fingerprint {
            audit(
                &tx,
                actor,
                "device.host_key_forgotten",
                &serde_json::json!({ "uuid": uuid, "fingerprint": fingerprint }),
            )?;
        }
        tx.commit()?;
        Ok(fingerprint)
    }

    /// Issues a fresh enrollment token for an agent deployed to the device under
    /// `profile`: 256 random bits, base64url. Only its SHA-256 is stored, replacing the
    /// device's previous token.
    pub fn issue_enroll_token(
        &mut self,
        uuid: &str,
        profile: &str,
        actor: &str,
    ) -> Result<Zeroizing<String>, StoreError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(bytes.as_mut());
        let token = Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes));
        let hash = Sha256::digest(token.as_bytes()).to_vec();
        let tx = self.write_tx()?;
        let inserted = tx.execute(
            "INSERT INTO agent_enrollments (device_uuid, profile, token_sha256, issued_at)
             SELECT uuid, ?2, ?3, ?4 FROM devices WHERE uuid = ?1
             ON CONFLICT (device_uuid) DO UPDATE SET
                 profile = excluded.profile, token_sha256 = excluded.token_sha256,
                 issued_at = excluded.issued_at",
            params![uuid, profile, hash, now_ms()],
        )?;
        if inserted == 0 {
            return Err(StoreError::UnknownDevice(uuid.to_string()));
        }
        audit(
            &tx,
            actor,
            "agent.enroll_token_issued",
            &serde_json::json!({ "uuid": uuid, "profile": profile }),
        )?;
        tx.commit()?;
        Ok(token)
    }

    /// Whether `token` is the device's current enrollment token.
    pub fn enroll_token_matches(&self, uuid: &str, token: &str) -> Result<bool, StoreError> {
        let hash: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT token_sha256 FROM agent_enrollments WHERE device_uuid = ?1",
                [uuid],
                |r| r.get(0),
            )
            .optional()?;
        Ok(hash.is_some_and(|h| h == Sha256::digest(token.as_bytes()).as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testdb::engines;
    use crate::store::tests::store_with_device;

    // Made with `ssh-keygen -t ed25519`; `ssh-keygen -l` prints the first one's
    // fingerprint as below.
    const ED25519: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEAuf6TA21WBPp1TXVwiTuZ72DsTTyJx4CKjrzoyhxAJ host";
    const ED25519_FINGERPRINT: &str = "SHA256:rfvNU0qoqoRVD0pSrxx+2f/B+RwCIF6WSSELKWlCgrg";
    const OTHER: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIN20FmAW/0rqrj6+TLck+n4btg2JkxqfLCtGRmWCauYA";

    #[test]
    fn public_keys_parse_and_fingerprint_like_openssh() {
        let key = SshPublicKey::parse(ED25519).unwrap();
        assert!(key.openssh().starts_with("ssh-ed25519 AAAAC3"));
        assert!(!key.openssh().contains("host"));
        assert_eq!(key.fingerprint(), ED25519_FINGERPRINT);
        let renamed = ED25519.replace("ssh-ed25519", "ssh-rsa");
        for bad in ["", "ssh-ed25519", "ssh-ed25519 !!!", renamed.as_str()] {
            assert!(SshPublicKey::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_host_key_is_recorded_on_first_use_and_a_different_one_is_flagged() {
        for engine in engines() {
            let (mut store, uuid) = store_with_device(&engine);
            let key = SshPublicKey::parse(ED25519).unwrap();
            let other = SshPublicKey::parse(OTHER).unwrap();
            let first = store.check_host_key(&uuid, &key, "t").unwrap();
            assert_eq!(
                first,
                HostKeyStatus::FirstUse {
                    fingerprint: key.fingerprint()
                }
            );
            assert!(matches!(
                store.check_host_key(&uuid, &key, "t").unwrap(),
                HostKeyStatus::Matches { .. }
            ));
            assert_eq!(
                store.check_host_key(&uuid, &other, "t").unwrap(),
                HostKeyStatus::Changed {
                    recorded: key.fingerprint()
                }
            );
            // The changed key did not replace the record.
            let listed = store.device(&uuid).unwrap().unwrap();
            assert_eq!(listed.ssh_host_key, Some(key.fingerprint()));
            assert_eq!(
                store.forget_host_key(&uuid, "t").unwrap(),
                Some(key.fingerprint())
            );
            assert!(matches!(
                store.check_host_key(&uuid, &other, "t").unwrap(),
                HostKeyStatus::FirstUse { .. }
            ));
            assert!(matches!(
                store.check_host_key("nope", &key, "t"),
                Err(StoreError::UnknownDevice(_))
            ));
        }
    }

    #[test]
    fn only_the_latest_enroll_token_matches_and_only_its_hash_is_stored() {
        for engine in engines() {
            let (mut store, uuid) = store_with_device(&engine);
            let first = store.issue_enroll_token(&uuid, "lab", "t").unwrap();
            let second = store.issue_enroll_token(&uuid, "lab", "t").unwrap();
            assert_eq!(second.len(), 43);
            assert_ne!(*first, *second);
            assert!(store.enroll_token_matches(&uuid, &second).unwrap());
            assert!(!store.enroll_token_matches(&uuid, &first).unwrap());
            assert!(matches!(
                store.issue_enroll_token("nope", "lab", "t"),
                Err(StoreError::UnknownDevice(_))
            ));
            drop(store);
            // The SQLite file, read raw (PostgreSQL keeps its files to itself).
            if engine.pg.is_none() {
                let bytes = crate::store::tests::all_store_bytes(engine.dir.path());
                assert!(!bytes.windows(second.len()).any(|w| w == second.as_bytes()));
            }
        }
    }
}
