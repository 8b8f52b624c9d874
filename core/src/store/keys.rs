//! Key batches and provisioning keys (PID/PPS pairs) in the store.
//!
//! A key is `available` until it is bound to a device (`used`) or `revoked`; it
//! never goes back, and no key row is ever deleted, so a PID is never reissued
//! (the schema's triggers enforce both). PPSs are sealed under the context
//! `pps:<PID>`.

use std::fmt;
use std::str::FromStr;

use super::db::{params, OptionalExtension, Value};
use serde_json::json;

use super::{now_ms, Store, StoreError};
use crate::keys::{KeyGenerator, Pid, Pps};

/// Life cycle of a provisioning key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    Available,
    Used,
    Revoked,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Available => "available",
            KeyState::Used => "used",
            KeyState::Revoked => "revoked",
        }
    }
}

impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "available" => Ok(KeyState::Available),
            "used" => Ok(KeyState::Used),
            "revoked" => Ok(KeyState::Revoked),
            other => Err(format!("unknown key state {other:?}")),
        }
    }
}

/// A batch and how many of its keys are in each state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BatchSummary {
    pub id: i64,
    pub created_at: i64,
    pub comment: Option<String>,
    pub size: u64,
    pub available: u64,
    pub used: u64,
    pub revoked: u64,
}

/// Which keys to list.
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    pub batch: Option<i64>,
    pub state: Option<KeyState>,
    /// Only this key.
    pub pid: Option<Pid>,
}

/// One provisioning key; `pps` is present only when revealed.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub pid: Pid,
    pub batch_id: i64,
    pub state: KeyState,
    pub device_uuid: Option<String>,
    pub state_changed_at: i64,
    pub pps: Option<Pps>,
}

/// What the store knows of one PID, and whether a PPS given with it is its own
/// (`keys check`). Holds no PPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCheck {
    pub batch_id: i64,
    pub state: KeyState,
    pub device_uuid: Option<String>,
    /// `Some(true)` if the PPS asked about is this PID's, `None` if none was asked about.
    pub pps_matches: Option<bool>,
}

/// What `revoke` did to one PID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOutcome {
    Revoked,
    AlreadyRevoked,
    /// Bound to a device already; a used key cannot be revoked.
    Used {
        device_uuid: String,
    },
}

/// Pairs per INSERT statement while generating a batch.
const ROWS_PER_INSERT: usize = 64;
/// SQLite's page cache while a batch is generated (enough for the PID index of about
/// 1,500,000 keys), and otherwise (SQLite's default), in KiB.
const GENERATION_CACHE_KIB: i64 = 32 * 1024;
const DEFAULT_CACHE_KIB: i64 = 2000;

/// An INSERT of `rows` keys. Rows go in INSERTs of up to ROWS_PER_INSERT pairs: one
/// statement per row would spend most of the time in per-statement overhead.
fn insert_sql(rows: usize) -> String {
    let values = vec!["(?, ?, ?, ?)"; rows].join(", ");
    format!(
        "INSERT INTO provisioning_keys (pid, batch_id, pps_sealed, state_changed_at)
         VALUES {values} ON CONFLICT (pid) DO NOTHING"
    )
}

fn pps_context(pid: &Pid) -> String {
    format!("pps:{}", pid.as_str())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("a key's {what}"))
}

impl Store {
    /// Generates and stores a batch of `count` fresh pairs in one transaction,
    /// streaming (memory does not grow with `count`). `progress` is called with the
    /// number of pairs stored so far.
    pub fn generate_batch(
        &mut self,
        count: u32,
        comment: Option<&str>,
        actor: &str,
        mut progress: impl FnMut(u64),
    ) -> Result<BatchSummary, StoreError> {
        let key = self.key.clone();
        let now = now_ms();
        // A page cache that holds the whole PID index (about 20 bytes a key) while
        // the batch goes in: random PIDs touch index pages all over, and a page
        // spilled to the log early is written again each time it changes.
        // (SQLite only: PostgreSQL's buffers are the server's.)
        if let Some(conn) = self.conn.as_sqlite() {
            conn.pragma_update(None, "cache_size", -GENERATION_CACHE_KIB)?;
        }
        let result = self.insert_batch(count, comment, actor, now, &key, &mut progress);
        if let Some(conn) = self.conn.as_sqlite() {
            conn.pragma_update(None, "cache_size", -DEFAULT_CACHE_KIB)?;
        }
        result
    }

    fn insert_batch(
        &mut self,
        count: u32,
        comment: Option<&str>,
        actor: &str,
        now: i64,
        key: &crate::secrets::MasterKey,
        progress: &mut impl FnMut(u64),
    ) -> Result<BatchSummary, StoreError> {
        let tx = self.write_tx()?;
        let batch_id: i64 = tx.query_row(
            "INSERT INTO key_batches (created_at, comment, size) VALUES (?1, ?2, ?3)
             RETURNING id",
            params![now, comment, count],
            |r| r.get(0),
        )?;
        {
            let mut full = tx.prepare(&insert_sql(ROWS_PER_INSERT))?;
            let mut generator = KeyGenerator::default();
            let mut stored = 0u64;
            let mut reported = 0u64;
            let mut rows: Vec<(String, Vec<u8>)> = Vec::with_capacity(ROWS_PER_INSERT);
            while stored < u64::from(count) {
                let want = (u64::from(count) - stored).min(ROWS_PER_INSERT as u64) as usize;
                rows.clear();
                for _ in 0..want {
                    let pair = generator.pair();
                    let sealed = key.seal(&pps_context(&pair.pid), pair.pps.expose_bytes());
                    rows.push((pair.pid.as_str().to_string(), sealed));
                }
                let values: Vec<Value> = rows
                    .drain(..)
                    .flat_map(|(pid, sealed)| {
                        [
                            Value::Text(pid),
                            Value::Integer(batch_id),
                            Value::Blob(sealed),
                            Value::Integer(now),
                        ]
                    })
                    .collect();
                // A PID already issued (in any batch, any state) is skipped and drawn
                // again in the next round.
                let inserted = if want == ROWS_PER_INSERT {
                    full.execute(values)?
                } else {
                    tx.execute(&insert_sql(want), values)?
                };
                stored += inserted as u64;
                if stored - reported >= 1024 {
                    reported = stored;
                    progress(stored);
                }
            }
            progress(stored);
        }
        super::records::audit(
            &tx,
            actor,
            "keys.generate",
            &json!({ "batch": batch_id, "count": count, "comment": comment }),
        )?;
        tx.commit()?;
        Ok(BatchSummary {
            id: batch_id,
            created_at: now,
            comment: comment.map(str::to_string),
            size: u64::from(count),
            available: u64::from(count),
            used: 0,
            revoked: 0,
        })
    }

    /// Every batch, oldest first, with per-state counts.
    pub fn batches(&self) -> Result<Vec<BatchSummary>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT b.id, b.created_at, b.comment, b.size,
                    count(*) FILTER (WHERE k.state = 'available'),
                    count(*) FILTER (WHERE k.state = 'used'),
                    count(*) FILTER (WHERE k.state = 'revoked')
             FROM key_batches b LEFT JOIN provisioning_keys k ON k.batch_id = b.id
             GROUP BY b.id ORDER BY b.id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(BatchSummary {
                id: r.get(0)?,
                created_at: r.get(1)?,
                comment: r.get(2)?,
                size: r.get(3)?,
                available: r.get(4)?,
                used: r.get(5)?,
                revoked: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn ensure_batch(&self, batch: Option<i64>) -> Result<(), StoreError> {
        if let Some(id) = batch {
            let found: Option<i64> = self
                .conn
                .query_row("SELECT id FROM key_batches WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?;
            found.ok_or(StoreError::BatchNotFound(id))?;
        }
        Ok(())
    }

    /// Calls `f` for each key matching `filter` in issue order, without PPSs.
    pub fn for_each_key<E: From<StoreError>>(
        &self,
        filter: &KeyFilter,
        f: impl FnMut(KeyRecord) -> Result<(), E>,
    ) -> Result<(), E> {
        self.ensure_batch(filter.batch)?;
        self.iterate_keys(filter, false, f)
    }

    /// Like [`Store::for_each_key`] but with each PPS opened. The reveal is written
    /// to the audit log (who, which filter, how many keys) before any PPS is read.
    pub fn reveal_keys<E: From<StoreError>>(
        &mut self,
        filter: &KeyFilter,
        actor: &str,
        f: impl FnMut(KeyRecord) -> Result<(), E>,
    ) -> Result<(), E> {
        self.audited_reveal(filter, actor, "keys.reveal", serde_json::Value::Null, f)
    }

    /// The keys matching `filter` in issue order, PPSs opened, for an export. The export
    /// (format, file, count) is written to the audit log before any PPS is read.
    pub fn export_keys(
        &mut self,
        filter: &KeyFilter,
        actor: &str,
        export: serde_json::Value,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let mut keys = Vec::new();
        self.audited_reveal(filter, actor, "keys.export", export, |k| {
            keys.push(k);
            Ok::<(), StoreError>(())
        })?;
        Ok(keys)
    }

    fn audited_reveal<E: From<StoreError>>(
        &mut self,
        filter: &KeyFilter,
        actor: &str,
        action: &str,
        extra: serde_json::Value,
        f: impl FnMut(KeyRecord) -> Result<(), E>,
    ) -> Result<(), E> {
        self.ensure_batch(filter.batch)?;
        let tx = self.write_tx()?;
        let count: u64 = tx
            .query_row(
                "SELECT count(*) FROM provisioning_keys
                 WHERE (CAST(?1 AS BIGINT) IS NULL OR batch_id = ?1)
               AND (CAST(?2 AS TEXT) IS NULL OR state = ?2)
                   AND (CAST(?3 AS TEXT) IS NULL OR pid = ?3)",
                params![
                    filter.batch,
                    filter.state.map(KeyState::as_str),
                    filter.pid.as_ref().map(Pid::as_str)
                ],
                |r| r.get(0),
            )
            .map_err(StoreError::from)?;
        super::records::audit(
            &tx,
            actor,
            action,
            &if extra.is_null() {
                json!({ "batch": filter.batch, "state": filter.state, "pid": filter.pid.as_ref().map(Pid::dashed), "count": count })
            } else {
                json!({ "batch": filter.batch, "state": filter.state, "pid": filter.pid.as_ref().map(Pid::dashed), "count": count, "export": extra })
            },
        )?;
        tx.commit().map_err(StoreError::from)?;
        self.iterate_keys(filter, true, f)
    }

    fn iterate_keys<E: From<StoreError>>(
        &self,
        filter: &KeyFilter,
        reveal: bool,
        mut f: impl FnMut(KeyRecord) -> Result<(), E>,
    ) -> Result<(), E> {
        /// The store's error or the caller's, kept apart while rows stream.
        enum Failed<E> {
            Store(StoreError),
            Caller(E),
        }
        impl<E> From<super::db::Error> for Failed<E> {
            fn from(e: super::db::Error) -> Self {
                Failed::Store(e.into())
            }
        }
        let result = self.conn.query_each(
            "SELECT pid, batch_id, state, device_uuid, state_changed_at, pps_sealed
             FROM provisioning_keys
             WHERE (CAST(?1 AS BIGINT) IS NULL OR batch_id = ?1)
               AND (CAST(?2 AS TEXT) IS NULL OR state = ?2)
               AND (CAST(?3 AS TEXT) IS NULL OR pid = ?3)
             ORDER BY seq",
            params![
                filter.batch,
                filter.state.map(KeyState::as_str),
                filter.pid.as_ref().map(Pid::as_str)
            ],
            |row| {
                let record = self.key_record(row, reveal).map_err(Failed::Store)?;
                f(record).map_err(Failed::Caller)
            },
        );
        match result {
            Ok(()) => Ok(()),
            Err(Failed::Store(e)) => Err(e.into()),
            Err(Failed::Caller(e)) => Err(e),
        }
    }

    fn key_record(&self, row: &super::db::Row<'_>, reveal: bool) -> Result<KeyRecord, StoreError> {
        let pid: String = row.get(0)?;
        let pid: Pid = pid.parse().map_err(|_| corrupt("pid"))?;
        let state: String = row.get(2)?;
        let pps = if reveal {
            let sealed: Vec<u8> = row.get(5)?;
            let plain = self.key.open(&pps_context(&pid), &sealed)?;
            Some(Pps::from_stored(&plain).map_err(|_| corrupt("pps"))?)
        } else {
            None
        };
        Ok(KeyRecord {
            pid,
            batch_id: row.get(1)?,
            state: state.parse().map_err(|_| corrupt("state"))?,
            device_uuid: row.get(3)?,
            state_changed_at: row.get(4)?,
            pps,
        })
    }

    /// What the store knows of `pid` (`None`: never issued here) and, given `pps`,
    /// whether it is this PID's own. The stored PPS is opened only to compare it.
    pub fn check_key(&self, pid: &Pid, pps: Option<&Pps>) -> Result<Option<KeyCheck>, StoreError> {
        let row: Option<(i64, String, Option<String>, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT batch_id, state, device_uuid, pps_sealed FROM provisioning_keys
                 WHERE pid = ?1",
                [pid.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((batch_id, state, device_uuid, sealed)) = row else {
            return Ok(None);
        };
        let pps_matches = match pps {
            Some(pps) => {
                let stored = self.key.open(&pps_context(pid), &sealed)?;
                Some(stored.as_slice() == pps.expose_bytes().as_slice())
            }
            None => None,
        };
        Ok(Some(KeyCheck {
            batch_id,
            state: state.parse().map_err(|_| corrupt("state"))?,
            device_uuid,
            pps_matches,
        }))
    }

    /// Revokes each PID that is still available, in one transaction. If any PID is
    /// unknown nothing is changed.
    pub fn revoke_pids(
        &mut self,
        pids: &[Pid],
        actor: &str,
    ) -> Result<Vec<(Pid, RevokeOutcome)>, StoreError> {
        let now = now_ms();
        let tx = self.write_tx()?;
        let mut outcomes = Vec::with_capacity(pids.len());
        for pid in pids {
            let found: Option<(String, Option<String>)> = tx
                .query_row(
                    "SELECT state, device_uuid FROM provisioning_keys WHERE pid = ?1",
                    [pid.as_str()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let outcome = match found {
                None => return Err(StoreError::UnknownPid(pid.dashed())),
                Some((state, _)) if state == "revoked" => RevokeOutcome::AlreadyRevoked,
                Some((state, uuid)) if state == "used" => RevokeOutcome::Used {
                    device_uuid: uuid.unwrap_or_default(),
                },
                Some(_) => {
                    tx.execute(
                        "UPDATE provisioning_keys SET state = 'revoked', state_changed_at = ?2
                         WHERE pid = ?1",
                        params![pid.as_str(), now],
                    )?;
                    RevokeOutcome::Revoked
                }
            };
            outcomes.push((*pid, outcome));
        }
        let revoked: Vec<String> = outcomes
            .iter()
            .filter(|(_, o)| *o == RevokeOutcome::Revoked)
            .map(|(p, _)| p.as_str().to_string())
            .collect();
        if !revoked.is_empty() {
            super::records::audit(&tx, actor, "keys.revoke", &json!({ "pids": revoked }))?;
        }
        tx.commit()?;
        Ok(outcomes)
    }

    /// Revokes every available key of a batch; returns how many were revoked.
    pub fn revoke_batch(&mut self, batch: i64, actor: &str) -> Result<u64, StoreError> {
        self.ensure_batch(Some(batch))?;
        let tx = self.write_tx()?;
        let n = tx.execute(
            "UPDATE provisioning_keys SET state = 'revoked', state_changed_at = ?2
             WHERE batch_id = ?1 AND state = 'available'",
            params![batch, now_ms()],
        )? as u64;
        super::records::audit(
            &tx,
            actor,
            "keys.revoke_batch",
            &json!({ "batch": batch, "count": n }),
        )?;
        tx.commit()?;
        Ok(n)
    }
}
