//! The alert log in the store: aggregation of repeated alerts, size caps, retention,
//! listing and acknowledgement.
//!
//! **What makes two alerts the same.** Two alerts aggregate when their source,
//! severity, PID, device UUID and address are equal and their messages are equal
//! once every run of digits is read as one number (`#`): "dropped 3 alerts" and
//! "dropped 7 alerts" are one cause, while a different step, error text, device or
//! address is another. These fields are hashed into the row's aggregation key. A
//! repeat of an *unacknowledged* alert adds to its `count` and moves its `last_seen`
//! (the message becomes the latest one, `at` stays the first time seen); once an
//! alert is acknowledged, the next repeat starts a new row. The key is found through
//! a unique partial index, so storing an alert costs the same however large the
//! table is.
//!
//! **Sizes.** Messages are cut to [`MAX_MESSAGE_BYTES`] and every other text field to
//! [`MAX_FIELD_BYTES`] (on a character boundary, with a marker). [`Store::prune_alerts`]
//! keeps at most `max_rows` rows (the newest ids) and drops alerts last seen longer
//! ago than the retention period.

use std::collections::HashMap;
use std::time::Duration;

use super::db::{params, OptionalExtension};
use sha2::{Digest, Sha256};

use super::records::{audit, parse_col, Severity};
use super::{now_ms, Store, StoreError};
use crate::text::cap;

/// Largest stored alert message, in bytes (longer ones are cut, with a marker).
pub const MAX_MESSAGE_BYTES: usize = 2048;
/// Largest stored source, PID, device UUID or address of an alert, in bytes.
pub const MAX_FIELD_BYTES: usize = 256;

/// A new alert-log entry. See the module docs for when two of them are the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAlert {
    pub severity: Severity,
    /// What raised it: `hello`, `provisioning`, `plugin:<instance>`, ...
    pub source: std::borrow::Cow<'static, str>,
    pub message: String,
    pub pid: Option<String>,
    pub device_uuid: Option<String>,
    pub address: Option<String>,
}

impl NewAlert {
    /// The alert with every text cut to the size the store keeps.
    pub fn capped(mut self) -> NewAlert {
        fn cut(text: &mut String, max: usize) {
            if text.len() > max {
                *text = cap(text, max).into_owned();
            }
        }
        cut(&mut self.message, MAX_MESSAGE_BYTES);
        if self.source.len() > MAX_FIELD_BYTES {
            self.source = cap(&self.source, MAX_FIELD_BYTES).into_owned().into();
        }
        for text in [&mut self.pid, &mut self.device_uuid, &mut self.address]
            .into_iter()
            .flatten()
        {
            cut(text, MAX_FIELD_BYTES);
        }
        self
    }

    /// The aggregation key: a hash of what makes two alerts the same.
    fn aggregation_key(&self) -> [u8; 16] {
        let mut hash = Sha256::new();
        let mut field = |value: Option<&str>| match value {
            Some(text) => {
                hash.update([1]);
                hash.update((text.len() as u64).to_le_bytes());
                hash.update(text.as_bytes());
            }
            None => hash.update([0]),
        };
        field(Some(&self.source));
        field(Some(self.severity.as_str()));
        field(Some(&cause(&self.message)));
        field(self.pid.as_deref());
        field(self.device_uuid.as_deref());
        field(self.address.as_deref());
        let digest = hash.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        key
    }
}

/// The message with each run of digits read as one number: its cause.
fn cause(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut in_number = false;
    for c in message.chars() {
        if c.is_ascii_digit() {
            if !in_number {
                out.push('#');
            }
            in_number = true;
        } else {
            out.push(c);
            in_number = false;
        }
    }
    out
}

/// What storing one alert (or several same ones from one batch) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAlert {
    /// Index (in the slice given to [`Store::insert_alerts`]) of the last alert
    /// stored into this row.
    pub index: usize,
    pub id: i64,
    /// How often the row's alert has been seen, this batch included.
    pub count: i64,
    /// When it was first seen (Unix ms).
    pub first_seen: i64,
    /// When it was last seen: now.
    pub last_seen: i64,
    /// Whether to tell alert sinks (and the server log) now: a new row, or the
    /// first repeat after the repeat-notice interval.
    pub notify: bool,
}

/// How long stored alerts are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertRetention {
    /// Alerts last seen longer ago than this are deleted; `None` keeps them.
    pub max_age: Option<Duration>,
    /// At most this many rows are kept (those with the newest ids).
    pub max_rows: u64,
}

/// One entry of the alert log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AlertRecord {
    pub id: i64,
    /// When it was first seen.
    pub at: i64,
    /// When it was last seen.
    pub last_seen: i64,
    /// How often it was seen.
    pub count: i64,
    pub severity: Severity,
    pub source: String,
    pub message: String,
    pub pid: Option<String>,
    pub device_uuid: Option<String>,
    pub address: Option<String>,
    pub acknowledged_at: Option<i64>,
    pub acknowledged_by: Option<String>,
}

/// Which alerts to list.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    /// Only alerts of at least this severity.
    pub min_severity: Option<Severity>,
    /// Only acknowledged (`Some(true)`) or unacknowledged ones.
    pub acknowledged: Option<bool>,
    /// Only alerts last seen at or after this time (Unix ms).
    pub seen_since: Option<i64>,
    pub limit: u32,
}

impl Store {
    /// Stores alerts in one transaction (the alert writer batches bursts): a repeat
    /// of an unacknowledged alert adds to its count, anything else is a new row.
    /// Returns one [`StoredAlert`] per row touched, in the order of the alerts.
    ///
    /// `repeat_notice` is how often repeats are worth telling alert sinks about:
    /// `Some(interval)` marks a row notified when it is new or was last notified at
    /// least `interval` ago; `None` (a caller that tells no sink) marks nothing.
    pub fn insert_alerts(
        &mut self,
        alerts: &[NewAlert],
        repeat_notice: Option<Duration>,
    ) -> Result<Vec<StoredAlert>, StoreError> {
        let now = now_ms();
        let capped: Vec<NewAlert> = alerts.iter().map(|a| a.clone().capped()).collect();
        let batch = group_batch(&capped);
        let notice_ms = repeat_notice.map(|d| d.as_millis() as i64);
        let tx = self.write_tx()?;
        let mut stored = Vec::with_capacity(batch.len());
        {
            let mut writer = AlertWriter::prepare(&tx, now, notice_ms)?;
            for group in batch {
                stored.push(writer.write(&group, &capped[group.index])?);
            }
        }
        tx.commit()?;
        Ok(stored)
    }

    /// Deletes alerts beyond `retention`: those last seen before its age limit, and
    /// all but the `max_rows` newest ids. Both use indexes (`last_seen`, the row id),
    /// so pruning costs what it deletes. Returns how many rows were deleted.
    pub fn prune_alerts(&mut self, retention: &AlertRetention) -> Result<u64, StoreError> {
        let tx = self.write_tx()?;
        let mut deleted = 0;
        if let Some(age) = retention.max_age {
            let cutoff = now_ms().saturating_sub(age.as_millis() as i64);
            deleted += tx.execute("DELETE FROM alerts WHERE last_seen < ?1", [cutoff])?;
        }
        deleted += tx.execute(
            "DELETE FROM alerts WHERE id <= (SELECT max(id) FROM alerts) - ?1",
            [retention.max_rows as i64],
        )?;
        tx.commit()?;
        Ok(deleted as u64)
    }

    /// The `limit` alerts at or above `min_severity` seen last, latest first.
    pub fn alerts(
        &self,
        min_severity: Option<Severity>,
        limit: u32,
    ) -> Result<Vec<AlertRecord>, StoreError> {
        self.alerts_where(&AlertFilter {
            min_severity,
            limit,
            ..AlertFilter::default()
        })
    }

    /// Alerts matching `filter`, the one seen last first.
    pub fn alerts_where(&self, filter: &AlertFilter) -> Result<Vec<AlertRecord>, StoreError> {
        let mut levels: Vec<Option<&str>> = [
            Severity::Info,
            Severity::Warning,
            Severity::Error,
            Severity::Critical,
        ]
        .into_iter()
        .filter(|s| filter.min_severity.is_none_or(|min| *s >= min))
        .map(|s| Some(s.as_str()))
        .collect();
        // Four places, NULL where a level is not wanted (NULL matches nothing).
        levels.resize(4, None);
        let mut stmt = self.conn.prepare(
            "SELECT id, at, last_seen, count, severity, source, message, pid, device_uuid,
                    address, acknowledged_at, acknowledged_by
             FROM alerts WHERE severity IN (?1, ?2, ?3, ?4)
               AND (CAST(?5 AS BIGINT) IS NULL
                    OR (CASE WHEN acknowledged_at IS NULL THEN 0 ELSE 1 END) = ?5)
               AND last_seen >= ?6
             ORDER BY last_seen DESC, id DESC LIMIT ?7",
        )?;
        let params = params![
            levels[0],
            levels[1],
            levels[2],
            levels[3],
            filter.acknowledged,
            filter.seen_since.unwrap_or(i64::MIN),
            filter.limit
        ];
        let rows = stmt.query_map(params, |r| {
            Ok(AlertRecord {
                id: r.get(0)?,
                at: r.get(1)?,
                last_seen: r.get(2)?,
                count: r.get(3)?,
                severity: parse_col(4, r.get(4)?)?,
                source: r.get(5)?,
                message: r.get(6)?,
                pid: r.get(7)?,
                device_uuid: r.get(8)?,
                address: r.get(9)?,
                acknowledged_at: r.get(10)?,
                acknowledged_by: r.get(11)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks an alert acknowledged (audited). Acknowledging twice keeps the first.
    /// `false` if there is no such alert.
    pub fn acknowledge_alert(&mut self, id: i64, actor: &str) -> Result<bool, StoreError> {
        match self.acknowledge_alerts(&[id], actor) {
            Ok(_) => Ok(true),
            Err(StoreError::UnknownAlert(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Marks alerts acknowledged in one transaction, with an audit entry for each
    /// one that was not acknowledged yet; returns how many those were. If any id is
    /// unknown nothing changes.
    pub fn acknowledge_alerts(&mut self, ids: &[i64], actor: &str) -> Result<u64, StoreError> {
        let tx = self.write_tx()?;
        let now = now_ms();
        let mut changed = 0;
        for &id in ids {
            let exists = tx
                .query_row("SELECT 1 FROM alerts WHERE id = ?1", [id], |_| Ok(()))
                .optional()?
                .is_some();
            if !exists {
                return Err(StoreError::UnknownAlert(id));
            }
            if tx.execute(
                "UPDATE alerts SET acknowledged_at = ?2, acknowledged_by = ?3
                 WHERE id = ?1 AND acknowledged_at IS NULL",
                params![id, now, actor],
            )? > 0
            {
                changed += 1;
                audit(
                    &tx,
                    actor,
                    "alert.acknowledge",
                    &serde_json::json!({ "id": id }),
                )?;
            }
        }
        tx.commit()?;
        Ok(changed)
    }

    /// Marks every unacknowledged alert acknowledged, with one audit entry giving
    /// how many and the highest id; returns how many.
    pub fn acknowledge_all_alerts(&mut self, actor: &str) -> Result<u64, StoreError> {
        let tx = self.write_tx()?;
        let (count, max_id): (i64, Option<i64>) = tx.query_row(
            "SELECT count(*), max(id) FROM alerts WHERE acknowledged_at IS NULL",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if count > 0 {
            tx.execute(
                "UPDATE alerts SET acknowledged_at = ?1, acknowledged_by = ?2
                 WHERE acknowledged_at IS NULL",
                params![now_ms(), actor],
            )?;
            audit(
                &tx,
                actor,
                "alert.acknowledge_all",
                &serde_json::json!({ "count": count, "up_to_id": max_id }),
            )?;
        }
        tx.commit()?;
        Ok(count as u64)
    }
}

/// Alerts of one batch that are the same (one write): their aggregation key, how
/// many there are and the index of the last one (whose message is stored).
struct BatchGroup {
    key: [u8; 16],
    count: i64,
    index: usize,
}

/// Groups a batch's same alerts, in the order each was first seen.
fn group_batch(alerts: &[NewAlert]) -> Vec<BatchGroup> {
    let mut groups: Vec<BatchGroup> = Vec::new();
    let mut by_key: HashMap<[u8; 16], usize> = HashMap::new();
    for (i, a) in alerts.iter().enumerate() {
        let key = a.aggregation_key();
        let g = *by_key.entry(key).or_insert_with(|| {
            groups.push(BatchGroup {
                key,
                count: 0,
                index: i,
            });
            groups.len() - 1
        });
        groups[g].count += 1;
        groups[g].index = i;
    }
    groups
}

/// The statements storing a batch's groups in one transaction: a repeat of an
/// unacknowledged alert bumps its row, anything else inserts one.
struct AlertWriter<'t> {
    find: super::db::Statement<'t>,
    bump: super::db::Statement<'t>,
    insert: super::db::Statement<'t>,
    now: i64,
    notice_ms: Option<i64>,
}

impl<'t> AlertWriter<'t> {
    fn prepare(
        tx: &'t super::db::Transaction<'t>,
        now: i64,
        notice_ms: Option<i64>,
    ) -> Result<AlertWriter<'t>, StoreError> {
        Ok(AlertWriter {
            find: tx.prepare(
                "SELECT id, at, count, notified_at FROM alerts
                 WHERE agg_key = ?1 AND acknowledged_at IS NULL",
            )?,
            bump: tx.prepare(
                "UPDATE alerts SET count = count + ?2, last_seen = ?3, message = ?4,
                        notified_at = ?5
                 WHERE id = ?1",
            )?,
            insert: tx.prepare(
                "INSERT INTO alerts (at, last_seen, count, notified_at, agg_key, severity,
                                     source, message, pid, device_uuid, address)
                 VALUES (?1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 RETURNING id",
            )?,
            now,
            notice_ms,
        })
    }

    /// Stores `group`, whose last alert is `a`.
    fn write(&mut self, group: &BatchGroup, a: &NewAlert) -> Result<StoredAlert, StoreError> {
        let open: Option<(i64, i64, i64, Option<i64>)> = self
            .find
            .query_row([&group.key[..]], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        match open {
            Some(row) => self.bump(group, a, row),
            None => self.insert(group, a),
        }
    }

    /// Adds `group` to its open row `(id, first seen, count, notified at)`.
    fn bump(
        &mut self,
        group: &BatchGroup,
        a: &NewAlert,
        (id, first_seen, count, notified_at): (i64, i64, i64, Option<i64>),
    ) -> Result<StoredAlert, StoreError> {
        let now = self.now;
        let due = self
            .notice_ms
            .is_some_and(|interval| notified_at.is_none_or(|at| now - at >= interval));
        let notified_at = if due { Some(now) } else { notified_at };
        self.bump
            .execute(params![id, group.count, now, a.message, notified_at])?;
        Ok(StoredAlert {
            index: group.index,
            id,
            count: count + group.count,
            first_seen,
            last_seen: now,
            notify: due,
        })
    }

    /// Stores `group` as a new row.
    fn insert(&mut self, group: &BatchGroup, a: &NewAlert) -> Result<StoredAlert, StoreError> {
        let now = self.now;
        let id = self.insert.query_row(
            params![
                now,
                group.count,
                self.notice_ms.map(|_| now),
                &group.key[..],
                a.severity.as_str(),
                a.source.as_ref(),
                a.message,
                a.pid,
                a.device_uuid,
                a.address
            ],
            |r| r.get(0),
        )?;
        Ok(StoredAlert {
            index: group.index,
            id,
            count: group.count,
            first_seen: now,
            last_seen: now,
            notify: self.notice_ms.is_some(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testdb::{engines, TestEngine};

    fn new_store(engine: &TestEngine) -> Store {
        engine.open()
    }

    fn alert(message: &str, address: &str) -> NewAlert {
        NewAlert {
            severity: Severity::Warning,
            source: "provisioning".into(),
            message: message.into(),
            pid: Some("0000-037M".into()),
            device_uuid: Some("8c3a1f2e-0000-4000-8000-000000000001".into()),
            address: Some(address.into()),
        }
    }

    const NOTICE: Option<Duration> = Some(Duration::from_secs(600));

    #[test]
    fn repeats_of_an_unacknowledged_alert_are_one_row_with_a_count() {
        for engine in engines() {
            let mut store = new_store(&engine);
            let failed = alert(
                "provisioning failed at step login: 401 after 3 tries",
                "10.0.0.1",
            );
            let stored = store
                .insert_alerts(std::slice::from_ref(&failed), NOTICE)
                .unwrap();
            assert!(stored[0].notify);
            for _ in 0..9 {
                let again = store
                    .insert_alerts(std::slice::from_ref(&failed), NOTICE)
                    .unwrap();
                assert_eq!(again[0].id, stored[0].id);
                assert!(
                    !again[0].notify,
                    "repeats are not told again within the interval"
                );
            }
            // Numbers do not make another cause; the latest message is kept.
            let numbers = alert(
                "provisioning failed at step login: 401 after 4 tries",
                "10.0.0.1",
            );
            store
                .insert_alerts(std::slice::from_ref(&numbers), NOTICE)
                .unwrap();
            // Another address, step or severity is another alert.
            let elsewhere = alert(
                "provisioning failed at step login: 401 after 3 tries",
                "10.0.0.2",
            );
            let other_step = alert(
                "provisioning failed at step commit: 401 after 3 tries",
                "10.0.0.1",
            );
            let mut critical = failed.clone();
            critical.severity = Severity::Critical;
            store
                .insert_alerts(&[elsewhere, other_step, critical], NOTICE)
                .unwrap();
            let all = store.alerts(None, 100).unwrap();
            assert_eq!(all.len(), 4, "{all:#?}");
            let first = all.iter().find(|a| a.id == stored[0].id).unwrap();
            assert_eq!(first.count, 11);
            assert_eq!(first.message, numbers.message);
            assert!(first.last_seen >= first.at);
        }
    }

    #[test]
    fn same_alerts_in_one_batch_are_one_write_and_one_notice() {
        for engine in engines() {
            let mut store = new_store(&engine);
            let a = alert("no provisioning password", "10.0.0.1");
            let stored = store
                .insert_alerts(&[a.clone(), a.clone(), a], NOTICE)
                .unwrap();
            assert_eq!(stored.len(), 1);
            assert_eq!((stored[0].count, stored[0].index), (3, 2));
            assert!(stored[0].notify);
            assert_eq!(store.alerts(None, 10).unwrap()[0].count, 3);
        }
    }

    /// Several serve nodes on one store: each passes on the alerts it stores, and
    /// the store decides in the storing transaction, so a repeat stored by another
    /// node within the interval is not passed on twice.
    #[test]
    fn two_nodes_storing_one_alert_pass_it_on_once() {
        for engine in engines() {
            let (mut a, mut b) = (engine.open(), engine.open());
            let alert = alert("provisioning failed", "10.0.0.1");
            assert!(
                a.insert_alerts(std::slice::from_ref(&alert), NOTICE)
                    .unwrap()[0]
                    .notify
            );
            let repeat = b
                .insert_alerts(std::slice::from_ref(&alert), NOTICE)
                .unwrap();
            assert_eq!(repeat[0].count, 2);
            assert!(!repeat[0].notify);
        }
    }

    #[test]
    fn a_repeat_after_the_interval_is_told_again_and_one_without_sinks_never() {
        for engine in engines() {
            let mut store = new_store(&engine);
            let a = alert("unreachable", "10.0.0.1");
            assert!(!store.insert_alerts(std::slice::from_ref(&a), None).unwrap()[0].notify);
            // Never told (no sink saw it): the server's next repeat is told.
            assert!(
                store
                    .insert_alerts(std::slice::from_ref(&a), NOTICE)
                    .unwrap()[0]
                    .notify
            );
            assert!(
                !store
                    .insert_alerts(std::slice::from_ref(&a), NOTICE)
                    .unwrap()[0]
                    .notify
            );
            // An interval of zero has always elapsed.
            assert!(store.insert_alerts(&[a], Some(Duration::ZERO)).unwrap()[0].notify);
        }
    }

    #[test]
    fn an_acknowledged_alert_is_not_reopened_by_a_repeat() {
        for engine in engines() {
            let mut store = new_store(&engine);
            let a = alert("mismatch", "10.0.0.1");
            let first = store
                .insert_alerts(&[a.clone(), a.clone()], NOTICE)
                .unwrap()[0]
                .id;
            assert!(store.acknowledge_alert(first, "ann").unwrap());
            let second = store.insert_alerts(&[a], NOTICE).unwrap();
            assert_ne!(second[0].id, first);
            assert!(second[0].notify);
            let all = store.alerts(None, 10).unwrap();
            assert_eq!(all.len(), 2);
            assert_eq!(all.iter().find(|r| r.id == first).unwrap().count, 2);
        }
    }

    #[test]
    fn huge_texts_are_stored_capped() {
        for engine in engines() {
            let mut store = new_store(&engine);
            let mut a = alert(&format!("fault: {}", "\r\nX".repeat(400_000)), "10.0.0.1");
            a.source = "plugin:".to_string().repeat(100).into();
            store.insert_alerts(&[a], None).unwrap();
            let stored = &store.alerts(None, 1).unwrap()[0];
            assert!(
                stored.message.len() <= MAX_MESSAGE_BYTES,
                "{}",
                stored.message.len()
            );
            assert!(stored.message.ends_with("bytes in all]"));
            assert!(stored.source.len() <= MAX_FIELD_BYTES);
        }
    }

    #[test]
    fn pruning_keeps_the_newest_rows_and_drops_old_ones() {
        for engine in engines() {
            let mut store = new_store(&engine);
            let many: Vec<NewAlert> = (0..50)
                .map(|i| alert("unknown PID", &format!("10.0.1.{i}")))
                .collect();
            let stored = store.insert_alerts(&many, None).unwrap();
            let keep = AlertRetention {
                max_age: Some(Duration::from_secs(3600)),
                max_rows: 20,
            };
            assert_eq!(store.prune_alerts(&keep).unwrap(), 30);
            let left = store.alerts(None, 100).unwrap();
            assert_eq!(left.len(), 20);
            assert!(left.iter().all(|a| a.id >= stored[30].id));
            store
                .conn
                .execute(
                    "UPDATE alerts SET last_seen = last_seen - 7200000 WHERE id % 2 = 0",
                    [],
                )
                .unwrap();
            assert_eq!(store.prune_alerts(&keep).unwrap(), 10);
            assert_eq!(store.alerts(None, 100).unwrap().len(), 10);
        }
    }

    #[test]
    fn acknowledging_many_is_all_or_nothing_and_audited() {
        for engine in engines() {
            let mut store = new_store(&engine);
            let stored = store
                .insert_alerts(&[alert("a", "10.0.0.1"), alert("b", "10.0.0.1")], None)
                .unwrap();
            let a = stored[0].id;
            assert!(matches!(
                store.acknowledge_alerts(&[a, 999], "ann"),
                Err(StoreError::UnknownAlert(999))
            ));
            assert_eq!(
                store
                    .alerts_where(&AlertFilter {
                        acknowledged: Some(true),
                        limit: 9,
                        ..Default::default()
                    })
                    .unwrap()
                    .len(),
                0
            );
            assert_eq!(store.acknowledge_alerts(&[a, a], "ann").unwrap(), 1);
            store
                .insert_alerts(&[alert("c", "10.0.0.1")], None)
                .unwrap();
            assert_eq!(store.acknowledge_all_alerts("bob").unwrap(), 2);
            assert_eq!(store.acknowledge_all_alerts("bob").unwrap(), 0);
            assert!(store
                .alerts(None, 10)
                .unwrap()
                .iter()
                .all(|r| r.acknowledged_at.is_some()));
            let actions: Vec<String> = store
                .audit_log(10)
                .unwrap()
                .into_iter()
                .map(|e| e.action)
                .collect();
            assert_eq!(actions, ["alert.acknowledge_all", "alert.acknowledge"]);
        }
    }
}
