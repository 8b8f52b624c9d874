//! PKI remote configuration in the store: provisioning certificate chains (import,
//! list, look-up, removal, the audited setup.bin) and PKI jobs in flight.
//!
//! A chain's leaf key is sealed (context `pki_chain_key:<name>`) before it reaches
//! SQL; the certificates are public and kept as PEM. Listings and hello matching read
//! only the plain columns and never open a key. A PKI job records its intent (device,
//! address, chain, the new admin credential — sealed) before it changes the device,
//! as PSK jobs do, keyed by the device since there is no PID; success records the
//! device (control mode ACM, path PKI, chain, setup certificate fingerprint) and
//! removes the intent in one transaction.

use std::net::Ipv4Addr;

use super::db::{params, OptionalExtension};
use serde_json::json;
use zeroize::Zeroizing;

use super::records::audit;
use super::{now_ms, ProvisionedDevice, Store, StoreError};
pub use crate::pki::ChainRecord;
use crate::pki::{ProvisioningChain, RootHashes};

/// The bytes of a setup.bin: they hold the provisioning password, so they are wiped
/// when dropped.
pub type SetupBinFile = Zeroizing<Vec<u8>>;

fn key_context(name: &str) -> String {
    format!("pki_chain_key:{name}")
}

/// Checks a chain name: 1–64 characters of letters, digits, `.`, `-` and `_`.
pub fn check_chain_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidInput(format!(
            "invalid chain name {:?}: use 1-64 letters, digits, '.', '-' or '_'",
            crate::text::escape_control(name)
        )))
    }
}

const COLUMNS: &str = "name, common_name, domain, chain_pem, root_sha1, root_sha256, root_sha384,
                       not_after, imported_at, imported_by";

fn record(r: &super::db::Row<'_>) -> super::db::Result<ChainRecord> {
    Ok(ChainRecord {
        name: r.get(0)?,
        common_name: r.get(1)?,
        domain: r.get(2)?,
        chain_pem: r.get(3)?,
        root: RootHashes {
            sha1: r.get(4)?,
            sha256: r.get(5)?,
            sha384: r.get(6)?,
        },
        not_after: r.get(7)?,
        imported_at: r.get(8)?,
        imported_by: r.get(9)?,
    })
}

impl Store {
    /// Stores a checked chain under a new name (an existing name is refused: remove
    /// it first), sealing its key; audited. PKI devices waiting after a failed job
    /// (`store/backoff.rs`) try again at their next hello.
    pub fn add_provisioning_chain(
        &mut self,
        name: &str,
        chain: &ProvisioningChain,
        actor: &str,
    ) -> Result<ChainRecord, StoreError> {
        check_chain_name(name)?;
        let summary = chain.summary();
        let pem = chain
            .chain_pem()
            .map_err(|e| StoreError::InvalidInput(e.to_string()))?;
        let key = chain
            .key_pkcs8()
            .map_err(|e| StoreError::InvalidInput(e.to_string()))?;
        let sealed = self.key.seal(&key_context(name), &key);
        let tx = self.write_tx()?;
        let inserted = tx.execute(
            "INSERT INTO provisioning_chains
               (name, common_name, domain, chain_pem, key_sealed, root_sha1, root_sha256,
                root_sha384, not_after, imported_at, imported_by)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (name) DO NOTHING",
            params![
                name,
                summary.common_name,
                summary.domain,
                pem,
                sealed,
                summary.root.sha1,
                summary.root.sha256,
                summary.root.sha384,
                summary.not_after,
                now_ms(),
                actor
            ],
        )?;
        if inserted == 0 {
            return Err(StoreError::InvalidInput(format!(
                "a chain named {name} exists already; remove it first (`vprov pki remove {name}`)"
            )));
        }
        // The chain may be what waiting PKI devices lacked: their next hellos try.
        tx.execute(
            "DELETE FROM job_backoff WHERE pid = ?1",
            [super::PKI_JOB_PID],
        )?;
        audit(
            &tx,
            actor,
            "pki.chain_imported",
            &json!({
                "name": name,
                "common_name": summary.common_name,
                "root_sha256": hex::encode(&summary.root.sha256),
                "not_after": summary.not_after,
            }),
        )?;
        tx.commit()?;
        self.provisioning_chain(name)?
            .ok_or_else(|| StoreError::Corrupt(format!("chain {name} vanished")))
    }

    /// Every stored chain, by name.
    pub fn provisioning_chains(&self) -> Result<Vec<ChainRecord>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {COLUMNS} FROM provisioning_chains ORDER BY name"
        ))?;
        let rows = stmt.query_map([], record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One stored chain.
    pub fn provisioning_chain(&self, name: &str) -> Result<Option<ChainRecord>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM provisioning_chains WHERE name = ?1"),
                [name],
                record,
            )
            .optional()?)
    }

    /// The chain's leaf key (PKCS#8 DER), opened for a provisioning job.
    pub fn provisioning_chain_key(&self, name: &str) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let sealed: Vec<u8> = self
            .conn
            .query_row(
                "SELECT key_sealed FROM provisioning_chains WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| StoreError::InvalidInput(format!("no chain named {name}")))?;
        Ok(self.key.open(&key_context(name), &sealed)?)
    }

    /// Removes a chain and its key; audited. `false` if there was none.
    pub fn remove_provisioning_chain(
        &mut self,
        name: &str,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let tx = self.write_tx()?;
        let removed = tx.execute("DELETE FROM provisioning_chains WHERE name = ?1", [name])?;
        if removed > 0 {
            audit(&tx, actor, "pki.chain_removed", &json!({ "name": name }))?;
        }
        tx.commit()?;
        Ok(removed > 0)
    }

    /// A USB setup.bin making devices trust chain `name`'s root
    /// ([`crate::pki::own_root::setup_bin`]), audited (`pki.setupbin`) like a key
    /// export: the file carries the provisioning password as the devices' new MEBx
    /// password. `None` if there is no such chain.
    pub fn provisioning_setup_bin(
        &mut self,
        name: &str,
        server: Ipv4Addr,
        port: u16,
        actor: &str,
    ) -> Result<Option<(ChainRecord, SetupBinFile)>, StoreError> {
        let Some(chain) = self.provisioning_chain(name)? else {
            return Ok(None);
        };
        let password = self.provisioning_password()?.ok_or_else(|| {
            StoreError::InvalidInput(
                "no provisioning password is set (vprov password set): setup.bin makes it the MEBx password"
                    .into(),
            )
        })?;
        let bytes = crate::pki::own_root::setup_bin(
            &chain.root.sha256,
            &chain.domain,
            password.expose(),
            server,
            port,
        )
        .map_err(StoreError::InvalidInput)?;
        let tx = self.write_tx()?;
        audit(
            &tx,
            actor,
            "pki.setupbin",
            &json!({
                "name": name,
                "root_sha256": hex::encode(&chain.root.sha256),
                "domain": chain.domain,
                "server": server.to_string(),
                "port": port,
            }),
        )?;
        tx.commit()?;
        Ok(Some((chain, Zeroizing::new(bytes))))
    }
}

/// A PKI job recorded before it touches the device.
#[derive(Debug, Clone)]
pub struct PkiJobIntent {
    pub id: i64,
    pub device_uuid: String,
    pub address: String,
    pub chain_name: String,
    pub step: String,
    /// The admin password the job sets on the device (sealed in the store).
    pub new_password: Zeroizing<String>,
    /// The certificate issued for the device, once the job got that far.
    pub certificate_der: Option<Vec<u8>>,
    /// SHA-256 of the certificate the device presented in setup mode, once seen.
    pub setup_certificate_sha256: Option<Vec<u8>>,
    /// An earlier attempt left this intent, so the device may hold `new_password`.
    pub resumed: bool,
}

/// How a PKI device was provisioned, beside its [`ProvisionedDevice`] record.
#[derive(Debug, Clone)]
pub struct PkiProvisioning {
    pub chain_name: String,
    /// SHA-256 of the certificate the device presented in setup mode.
    pub setup_certificate_sha256: Vec<u8>,
}

fn pki_job_context(uuid: &str) -> String {
    format!("pki_job_password:{uuid}")
}

impl Store {
    /// Records a PKI job's intent, or returns the one an earlier attempt left for
    /// this device (whose credential the device may hold already). An intent that
    /// reached CommitChanges keeps its address and chain.
    pub fn begin_pki_job(
        &mut self,
        device_uuid: &str,
        address: &str,
        chain_name: &str,
        new_password: &str,
    ) -> Result<PkiJobIntent, StoreError> {
        let sealed = self
            .key
            .seal(&pki_job_context(device_uuid), new_password.as_bytes());
        let now = now_ms();
        let tx = self.write_tx()?;
        let resumed = tx
            .query_row(
                "SELECT 1 FROM pki_jobs WHERE device_uuid = ?1",
                [device_uuid],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        tx.execute(
            "INSERT INTO pki_jobs (device_uuid, address, chain_name, new_password_sealed, step,
                                   created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, 'started', ?5, ?5)
             ON CONFLICT (device_uuid) DO UPDATE SET address = excluded.address,
                 chain_name = excluded.chain_name, updated_at = excluded.updated_at
             WHERE pki_jobs.step <> 'commit'",
            params![device_uuid, address, chain_name, sealed, now],
        )?;
        tx.commit()?;
        let intent = self
            .pki_jobs_where("device_uuid = ?1", &[&device_uuid])?
            .pop()
            .ok_or_else(|| StoreError::Corrupt("a PKI job vanished".into()))?;
        Ok(PkiJobIntent { resumed, ..intent })
    }

    /// Every PKI job in flight (after a restart: those past CommitChanges are finished).
    pub fn pending_pki_jobs(&self) -> Result<Vec<PkiJobIntent>, StoreError> {
        self.pki_jobs_where("1 = 1", &[])
    }

    fn pki_jobs_where(
        &self,
        condition: &str,
        args: &[&dyn super::db::ToSql],
    ) -> Result<Vec<PkiJobIntent>, StoreError> {
        type Row = (
            i64,
            String,
            String,
            String,
            String,
            Vec<u8>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
        );
        let mut stmt = self.conn.prepare(&format!(
            "SELECT id, device_uuid, address, chain_name, step, new_password_sealed,
                    certificate_der, setup_certificate_sha256
             FROM pki_jobs WHERE {condition} ORDER BY id"
        ))?;
        let rows: Vec<Row> = stmt
            .query_map(args, |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(
                |(id, device_uuid, address, chain_name, step, sealed, cert, fp)| {
                    let plain = self.key.open(&pki_job_context(&device_uuid), &sealed)?;
                    let new_password =
                        Zeroizing::new(String::from_utf8(plain.to_vec()).map_err(|_| {
                            StoreError::Corrupt("a PKI job password is not UTF-8".into())
                        })?);
                    Ok(PkiJobIntent {
                        id,
                        device_uuid,
                        address,
                        chain_name,
                        step,
                        new_password,
                        certificate_der: cert,
                        setup_certificate_sha256: fp,
                        resumed: true,
                    })
                },
            )
            .collect()
    }

    /// Records the SHA-256 of the certificate the device presented in setup mode.
    pub fn set_pki_job_fingerprint(&mut self, job: i64, sha256: &[u8]) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE pki_jobs SET setup_certificate_sha256 = ?2, updated_at = ?3 WHERE id = ?1",
            params![job, sha256, now_ms()],
        )?;
        Ok(())
    }

    /// Records the certificate a PKI job issued for its device.
    pub fn set_pki_job_certificate(&mut self, job: i64, der: &[u8]) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE pki_jobs SET certificate_der = ?2, updated_at = ?3 WHERE id = ?1",
            params![job, der, now_ms()],
        )?;
        Ok(())
    }

    /// Records the step a PKI job reached.
    pub fn set_pki_job_step(&mut self, job: i64, step: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE pki_jobs SET step = ?2, updated_at = ?3 WHERE id = ?1",
            params![job, step, now_ms()],
        )?;
        Ok(())
    }

    /// Drops a PKI job's intent if it never got past its start (so nothing changed
    /// on the device); an intent past it keeps the credential the device may hold.
    pub fn abandon_pki_job(&mut self, job: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "DELETE FROM pki_jobs WHERE id = ?1 AND step = 'started'",
            [job],
        )?;
        Ok(())
    }

    /// Records a device provisioned by PKI remote configuration (admin control mode)
    /// and removes the job's intent, in one transaction; audited.
    pub fn complete_pki_job(
        &mut self,
        job: i64,
        device: &ProvisionedDevice,
        pki: &PkiProvisioning,
        admin_password: &str,
    ) -> Result<(), StoreError> {
        let sealed = self.key.seal(
            &super::device_password_context(&device.uuid),
            admin_password.as_bytes(),
        );
        let tx = self.write_tx()?;
        let now = now_ms();
        tx.execute(
            "INSERT INTO devices (uuid, host_name, address, amt_version, state, admin_user,
                                  admin_password_sealed, certificate_der, provisioned_pid,
                                  provisioned_at, last_contact_at, control_mode,
                                  provisioning_path, pki_chain, setup_certificate_sha256)
             VALUES (?1, ?2, ?3, ?4, 'unmanaged', ?5, ?6, ?7, NULL, ?8, ?8, 'acm', 'pki', ?9, ?10)
             ON CONFLICT (uuid) DO UPDATE SET
                host_name = excluded.host_name, address = excluded.address,
                amt_version = excluded.amt_version, state = 'unmanaged',
                management_mode = NULL, admin_user = excluded.admin_user,
                admin_password_sealed = excluded.admin_password_sealed,
                pending_password_sealed = NULL,
                certificate_der = excluded.certificate_der, provisioned_pid = NULL,
                provisioned_at = excluded.provisioned_at,
                last_contact_at = excluded.last_contact_at, control_mode = 'acm',
                provisioning_path = 'pki', pki_chain = excluded.pki_chain,
                setup_certificate_sha256 = excluded.setup_certificate_sha256",
            params![
                device.uuid,
                device.host_name,
                device.address,
                device.amt_version,
                device.admin_user,
                sealed,
                device.certificate_der,
                now,
                pki.chain_name,
                pki.setup_certificate_sha256
            ],
        )?;
        tx.execute("DELETE FROM pki_jobs WHERE id = ?1", [job])?;
        audit(
            &tx,
            "provisioning",
            "device.provisioned",
            &json!({ "uuid": device.uuid, "path": "pki", "chain": pki.chain_name,
                     "address": device.address }),
        )?;
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::chain::tests::{build, Recipe, NOW};
    use crate::store::testdb::engines;
    use crate::store::PKI_JOB_PID;

    #[test]
    fn a_chain_round_trips_with_its_key_sealed() {
        for engine in engines() {
            let dir = engine.dir.path();
            let mut store = engine.open();
            let (certs, key) = build(&Recipe::default());
            let chain = ProvisioningChain::from_parts(certs, key, NOW).unwrap();
            let rec = store
                .add_provisioning_chain("example", &chain, "cli:test")
                .unwrap();
            assert_eq!(rec.domain, "example.com");
            assert_eq!(rec.root, chain.summary().root);
            assert!(store
                .add_provisioning_chain("example", &chain, "cli:test")
                .unwrap_err()
                .to_string()
                .contains("exists already"));
            assert!(store
                .add_provisioning_chain("bad name", &chain, "cli:test")
                .is_err());

            let key = store.provisioning_chain_key("example").unwrap();
            let again = ProvisioningChain::from_stored(&rec.chain_pem, &key, NOW).unwrap();
            assert_eq!(again.summary(), chain.summary());
            // The key is sealed: its DER is nowhere in the database file.
            drop(store);
            // (The SQLite file, read raw: PostgreSQL keeps its files to itself.)
            if engine.pg.is_none() {
                let bytes = crate::store::tests::all_store_bytes(dir);
                let needle = &key[40..72];
                assert!(!bytes.windows(needle.len()).any(|w| w == needle));
            }
            let mut store = engine.open();
            assert_eq!(store.provisioning_chains().unwrap().len(), 1);
            assert!(store
                .remove_provisioning_chain("example", "cli:test")
                .unwrap());
            assert!(!store
                .remove_provisioning_chain("example", "cli:test")
                .unwrap());
            assert!(store.provisioning_chains().unwrap().is_empty());
        }
    }

    #[test]
    fn a_new_chain_ends_the_wait_of_pki_devices_only() {
        for engine in engines() {
            let mut store = engine.open();
            let wait = std::time::Duration::from_secs(600);
            let (pki, psk) = (
                "8c2f7d4e-0000-4000-8000-0000000000b1",
                "8c2f7d4e-0000-4000-8000-0000000000b2",
            );
            let a = "127.0.0.7";
            store
                .record_job_failure(
                    pki,
                    PKI_JOB_PID,
                    a,
                    "choose provisioning chain: x",
                    wait,
                    wait,
                )
                .unwrap();
            store
                .record_job_failure(psk, "0000037M", a, "CommitChanges: y", wait, wait)
                .unwrap();
            assert!(store.job_backoff(pki, PKI_JOB_PID, a).unwrap().is_some());
            let (certs, key) = build(&Recipe::default());
            let chain = ProvisioningChain::from_parts(certs, key, NOW).unwrap();
            store
                .add_provisioning_chain("example", &chain, "cli:test")
                .unwrap();
            assert!(store.job_backoff(pki, PKI_JOB_PID, a).unwrap().is_none());
            assert!(store.job_backoff(psk, "0000037M", a).unwrap().is_some());
        }
    }

    #[test]
    fn a_setup_bin_needs_the_password_and_is_audited() {
        for engine in engines() {
            let mut store = engine.open();
            let (certs, key) = build(&Recipe::default());
            let chain = ProvisioningChain::from_parts(certs, key, NOW).unwrap();
            store
                .add_provisioning_chain("example", &chain, "cli:test")
                .unwrap();
            let server = Ipv4Addr::new(10, 0, 0, 5);
            assert!(store
                .provisioning_setup_bin("nope", server, 9971, "api:ann")
                .unwrap()
                .is_none());
            let err = store
                .provisioning_setup_bin("example", server, 9971, "api:ann")
                .unwrap_err();
            assert!(err.to_string().contains("vprov password set"), "{err}");
            assert_ne!(store.audit_log(1).unwrap()[0].action, "pki.setupbin");
            let password = crate::password::ProvisioningPassword::new("Mebx!Passw0rd").unwrap();
            store
                .set_provisioning_password(&password, "cli:test")
                .unwrap();
            let (rec, bytes) = store
                .provisioning_setup_bin("example", server, 9971, "api:ann")
                .unwrap()
                .unwrap();
            assert_eq!(rec.name, "example");
            let file = setupbin::SetupBin::decode(&bytes).unwrap();
            assert_eq!(file.records.len(), 1);
            let entry = audit_entry(&store);
            assert_eq!(
                (entry.0.as_str(), entry.1.as_str()),
                ("api:ann", "pki.setupbin")
            );
            assert!(
                !entry.2.contains("Mebx"),
                "no secret in the audit: {}",
                entry.2
            );
        }
    }

    fn audit_entry(store: &Store) -> (String, String, String) {
        let e = store.audit_log(1).unwrap().remove(0);
        (e.actor, e.action, e.detail.to_string())
    }

    #[test]
    fn pki_job_intents_keep_the_credential_and_complete_into_an_acm_record() {
        for engine in engines() {
            let dir = engine.dir.path();
            let mut store = engine.open();
            let uuid = "8c2f7d4e-0000-4000-8000-0000000000aa";
            let first = store
                .begin_pki_job(uuid, "127.0.0.9", "corp", "N3w!Passw0rd")
                .unwrap();
            assert!(!first.resumed);
            // A failure before the credential step drops the intent ...
            store.abandon_pki_job(first.id).unwrap();
            assert!(store.pending_pki_jobs().unwrap().is_empty());
            // ... after it, the intent and its credential stay for the next attempt.
            let job = store
                .begin_pki_job(uuid, "127.0.0.9", "corp", "N3w!Passw0rd")
                .unwrap();
            store.set_pki_job_step(job.id, "credential").unwrap();
            store.abandon_pki_job(job.id).unwrap();
            let again = store
                .begin_pki_job(uuid, "127.0.0.10", "corp", "Other!Passw0rd")
                .unwrap();
            assert!(again.resumed);
            assert_eq!(again.new_password.as_str(), "N3w!Passw0rd");
            assert_eq!(again.address, "127.0.0.10");
            // Once committed, a hello from elsewhere does not move it.
            store.set_pki_job_fingerprint(again.id, &[7; 32]).unwrap();
            store.set_pki_job_step(again.id, "commit").unwrap();
            let committed = store
                .begin_pki_job(uuid, "127.0.0.99", "other", "x")
                .unwrap();
            assert_eq!(
                (committed.address.as_str(), committed.chain_name.as_str()),
                ("127.0.0.10", "corp")
            );
            assert_eq!(committed.setup_certificate_sha256, Some(vec![7; 32]));
            let device = ProvisionedDevice {
                uuid: uuid.into(),
                host_name: Some("amt-1".into()),
                address: committed.address.clone(),
                amt_version: Some("19.0.5".into()),
                admin_user: "admin".into(),
                certificate_der: vec![1, 2, 3],
            };
            let pki = PkiProvisioning {
                chain_name: committed.chain_name.clone(),
                setup_certificate_sha256: vec![7; 32],
            };
            store
                .complete_pki_job(committed.id, &device, &pki, &committed.new_password)
                .unwrap();
            assert!(store.pending_pki_jobs().unwrap().is_empty());
            let record = store.device(uuid).unwrap().unwrap();
            assert_eq!(
                (
                    record.control_mode.as_str(),
                    record.provisioning_path.as_str(),
                    record.pki_chain.as_deref(),
                    record.provisioned_pid
                ),
                ("acm", "pki", Some("corp"), None)
            );
            let access = store.device_access(uuid).unwrap().unwrap();
            assert_eq!(access.password.as_str(), "N3w!Passw0rd");
            drop(store);
            if engine.pg.is_none() {
                let db = crate::store::tests::all_store_bytes(dir);
                assert!(!db.windows(12).any(|w| w == b"N3w!Passw0rd"));
            }
        }
    }
}
