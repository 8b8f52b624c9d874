//! Provisioning certificate chains (PKI remote configuration): import, list, look-up
//! and removal. The leaf's private key is sealed (context `pki_chain_key:<name>`)
//! before it reaches SQL; the certificates are public and kept as PEM. Listings and
//! hello matching read only the plain columns and never open a key.

use rusqlite::{params, OptionalExtension};
use serde_json::json;
use zeroize::Zeroizing;

use super::records::audit;
use super::{now_ms, Store, StoreError};
use crate::pki::{ProvisioningChain, RootHashes};

/// A stored chain without its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRecord {
    pub name: String,
    pub common_name: String,
    pub domain: String,
    pub chain_pem: String,
    pub root: RootHashes,
    /// Unix seconds: the earliest `notAfter` in the chain.
    pub not_after: i64,
    /// Milliseconds since the epoch.
    pub imported_at: i64,
    pub imported_by: String,
}

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

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChainRecord> {
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
    /// it first), sealing its key; audited.
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::chain::tests::{build, Recipe, NOW};
    use crate::store::StoreOptions;

    #[test]
    fn a_chain_round_trips_with_its_key_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&StoreOptions::new(dir.path())).unwrap();
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
        let db = std::fs::read(dir.path().join(crate::store::DB_FILE)).unwrap();
        let wal = std::fs::read(dir.path().join("vprov.db-wal")).unwrap_or_default();
        let needle = &key[40..72];
        for bytes in [&db, &wal] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle));
        }
        let mut store = Store::open(&StoreOptions::new(dir.path())).unwrap();
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
