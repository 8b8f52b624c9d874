//! `vprov store copy`: a one-shot copy of every row of one store into a new one, on
//! either engine (SQLite → PostgreSQL and back). Sealed secrets are copied as they are
//! (still sealed), so both stores must use the same master key: the target is opened
//! (created) with the source's key, and an existing target with another key is
//! refused. A target holding any data is refused; the copy is one transaction, and
//! row counts are compared after it.

use super::db::{Db, Value};
use super::schema::TABLES;
use super::{Store, StoreError, StoreOptions};

/// Tables whose integer key PostgreSQL draws from an identity sequence, and its column.
const IDENTITY_COLUMNS: &[(&str, &str)] = &[
    ("key_batches", "id"),
    ("provisioning_keys", "seq"),
    ("alerts", "id"),
    ("audit_log", "id"),
    ("provisioning_jobs", "id"),
    ("pki_jobs", "id"),
];

/// Rows copied, per table, in copy order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    pub tables: Vec<(String, u64)>,
}

impl CopyReport {
    pub fn total_rows(&self) -> u64 {
        self.tables.iter().map(|(_, n)| n).sum()
    }
}

/// Copies the store of `from` into the (new or empty) store of `to`; `to.key` is
/// ignored: the target uses the source's master key.
pub fn copy_store(from: &StoreOptions, to: &StoreOptions) -> Result<CopyReport, StoreError> {
    let source = Store::open(from)?;
    let mut target_options = to.clone();
    target_options.key = Some(source_key(from));
    let mut target = Store::open(&target_options)?;
    refuse_non_empty(&target)?;
    let mut report = CopyReport { tables: Vec::new() };
    let tx = target.write_tx()?;
    for table in TABLES {
        let columns = column_names(&source.conn, table)?;
        let list = columns.join(", ");
        let marks: Vec<String> = (1..=columns.len()).map(|i| format!("?{i}")).collect();
        // The target's own key check stays (sealed with the same key).
        let filter = if *table == "meta" {
            " WHERE name <> 'key_check'"
        } else {
            ""
        };
        let insert = format!("INSERT INTO {table} ({list}) VALUES ({})", marks.join(", "));
        let mut copied = 0u64;
        source
            .conn
            .query_each(&format!("SELECT {list} FROM {table}{filter}"), [], |row| {
                let values = (0..columns.len())
                    .map(|i| row.get::<_, Value>(i))
                    .collect::<Result<Vec<_>, _>>()?;
                tx.execute(&insert, values)?;
                copied += 1;
                Ok::<(), StoreError>(())
            })?;
        report.tables.push((table.to_string(), copied));
    }
    if tx.is_postgres() {
        for (table, column) in IDENTITY_COLUMNS {
            // The next generated key follows the copied ones.
            tx.query_row(
                &format!(
                    "SELECT setval(pg_get_serial_sequence('{table}', '{column}'),
                                   (SELECT coalesce(max({column}), 0) + 1 FROM {table}), false)"
                ),
                [],
                |_| Ok(()),
            )?;
        }
    }
    tx.commit()?;
    verify_counts(&source, &target, &report)?;
    Ok(report)
}

/// The source's master key, for the target too.
fn source_key(from: &StoreOptions) -> super::KeySource {
    from.key
        .clone()
        .unwrap_or_else(|| super::KeySource::File(from.data_dir.join(super::KEY_FILE)))
}

fn count(db: &Db, table: &str) -> Result<u64, StoreError> {
    Ok(db.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?)
}

/// The target may hold its schema and its key check, nothing else.
fn refuse_non_empty(target: &Store) -> Result<(), StoreError> {
    for table in TABLES {
        let rows = count(&target.conn, table)?;
        let own = if *table == "meta" { 1 } else { 0 };
        if rows > own {
            return Err(StoreError::InvalidInput(format!(
                "the target store {} is not empty (table {table} has {rows} rows); vprov copies only into a new or empty store and changed nothing",
                target.db_path.display()
            )));
        }
    }
    Ok(())
}

fn verify_counts(source: &Store, target: &Store, report: &CopyReport) -> Result<(), StoreError> {
    for (table, copied) in &report.tables {
        let (from, to) = (count(&source.conn, table)?, count(&target.conn, table)?);
        // meta: the source's key check was left out, the target has its own.
        if from != to || (table != "meta" && to != *copied) {
            return Err(StoreError::Corrupt(format!(
                "after the copy, table {table} has {from} rows in the source and {to} in the target"
            )));
        }
    }
    Ok(())
}

/// A table's columns in order.
fn column_names(db: &Db, table: &str) -> Result<Vec<String>, StoreError> {
    let names = if db.is_postgres() {
        db.query_map(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = ?1
             ORDER BY ordinal_position",
            [table],
            |r| r.get(0),
        )?
    } else {
        db.query_map(
            "SELECT name FROM pragma_table_info(?1) ORDER BY cid",
            [table],
            |r| r.get(0),
        )?
    };
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testdb::engines;
    use crate::store::{AlertFilter, KeyFilter};

    /// Every engine pair (SQLite → PostgreSQL, PostgreSQL → SQLite, SQLite → SQLite):
    /// rows, sealed secrets and generated keys survive; a non-empty target is refused.
    #[test]
    fn a_store_copies_row_for_row_between_engines_and_never_into_data() {
        let sources = engines();
        let targets = engines();
        for (source_engine, target_engine) in sources.iter().zip(targets.iter().rev()) {
            let (mut store, uuid) = crate::store::tests::store_with_device(source_engine);
            store.generate_batch(70, Some("b"), "t", |_| {}).unwrap();
            let password = crate::password::ProvisioningPassword::new("Pr0v!sion").unwrap();
            store.set_provisioning_password(&password, "t").unwrap();
            drop(store);
            let from = source_engine.options();
            let to = target_engine.options();
            let report = copy_store(&from, &to).unwrap();
            assert!(report.total_rows() > 71, "{report:?}");
            let mut key_options = to.clone();
            key_options.key = Some(source_key(&from));
            let mut copied = Store::open(&key_options).unwrap();
            assert_eq!(copied.batches().unwrap().len(), 2);
            assert_eq!(
                copied.provisioning_password().unwrap().unwrap().expose(),
                "Pr0v!sion"
            );
            let access = copied.device_access(&uuid).unwrap().unwrap();
            assert_eq!(access.password.as_str(), "N3w!Password");
            let mut revealed = 0;
            copied
                .reveal_keys(&KeyFilter::default(), "t", |k| -> Result<(), StoreError> {
                    assert!(k.pps.is_some());
                    revealed += 1;
                    Ok(())
                })
                .unwrap();
            assert_eq!(revealed, 71);
            // New rows get keys after the copied ones.
            let next = copied.generate_batch(1, None, "t", |_| {}).unwrap();
            assert_eq!(next.id, 3);
            assert!(copied.alerts_where(&AlertFilter::default()).is_ok());
            drop(copied);
            let err = copy_store(&from, &to).unwrap_err();
            assert!(err.to_string().contains("is not empty"), "{err}");
        }
    }
}
