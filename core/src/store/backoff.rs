//! Provisioning back-off: a device whose job failed waits before its next hello
//! starts another, so a device that fails the same way on every hello (and keeps
//! saying hello for hours) costs one job per back-off period, not one per hello.
//!
//! The wait is per device, PID and address: a hello with another PID, or from
//! another address (anybody can send a hello naming a device and its PID, both sent
//! in clear), is not held back. It doubles with each further failure of the same
//! cause and starts again from the base when the cause changes. `vprov devices retry
//! UUID` (and the API) clears it.
//!
//! PKI jobs (v3 hellos carry no PID) wait the same way under [`PKI_JOB_PID`]; a newly
//! stored provisioning chain may be what they lacked, so storing one clears their
//! waits (`store/pki.rs`).

use std::time::Duration;

use super::db::{params, OptionalExtension};

use super::{now_ms, Store, StoreError};

/// The PID column of a PKI job's back-off: PKI jobs have none, and no PID has this
/// form.
pub const PKI_JOB_PID: &str = "pki";

/// A device waiting before its next job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobBackoff {
    pub device_uuid: String,
    pub pid: String,
    /// The step and error of the last failure.
    pub cause: String,
    /// Failures in a row with this cause.
    pub failures: u32,
    /// Milliseconds since the epoch before which hellos start no job.
    pub retry_at: i64,
}

impl Store {
    /// Records a failed job of `device_uuid` with `pid` at `address` and returns the
    /// wait: `base` doubled for each earlier failure there with the same PID and
    /// cause, at most `max`.
    pub fn record_job_failure(
        &mut self,
        device_uuid: &str,
        pid: &str,
        address: &str,
        cause: &str,
        base: Duration,
        max: Duration,
    ) -> Result<JobBackoff, StoreError> {
        let tx = self.write_tx()?;
        let earlier: Option<u32> = tx
            .query_row(
                "SELECT failures FROM job_backoff
                 WHERE device_uuid = ?1 AND pid = ?2 AND address = ?3 AND cause = ?4",
                params![device_uuid, pid, address, cause],
                |r| r.get(0),
            )
            .optional()?;
        let failures = earlier.map_or(1, |n| n.saturating_add(1));
        let factor = 1u32 << (failures - 1).min(20);
        let wait = base.saturating_mul(factor).min(max);
        let now = now_ms();
        let retry_at = now.saturating_add(wait.as_millis() as i64);
        tx.execute(
            "INSERT INTO job_backoff
                 (device_uuid, pid, address, cause, failures, last_failed_at, retry_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (device_uuid) DO UPDATE SET pid = excluded.pid,
                 address = excluded.address, cause = excluded.cause,
                 failures = excluded.failures, last_failed_at = excluded.last_failed_at,
                 retry_at = excluded.retry_at",
            params![device_uuid, pid, address, cause, failures, now, retry_at],
        )?;
        tx.commit()?;
        Ok(JobBackoff {
            device_uuid: device_uuid.to_string(),
            pid: pid.to_string(),
            cause: cause.to_string(),
            failures,
            retry_at,
        })
    }

    /// The wait that holds back a hello of `device_uuid` with `pid` from `address`, if
    /// any is running.
    pub fn job_backoff(
        &self,
        device_uuid: &str,
        pid: &str,
        address: &str,
    ) -> Result<Option<JobBackoff>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT device_uuid, pid, cause, failures, retry_at FROM job_backoff
                 WHERE device_uuid = ?1 AND pid = ?2 AND address = ?3 AND retry_at > ?4",
                params![device_uuid, pid, address, now_ms()],
                |r| {
                    Ok(JobBackoff {
                        device_uuid: r.get(0)?,
                        pid: r.get(1)?,
                        cause: r.get(2)?,
                        failures: r.get(3)?,
                        retry_at: r.get(4)?,
                    })
                },
            )
            .optional()?)
    }

    /// Forgets a device's failures after it provisioned. Returns whether it was
    /// waiting.
    pub fn clear_job_backoff(&mut self, device_uuid: &str) -> Result<bool, StoreError> {
        let tx = self.write_tx()?;
        let n = tx.execute(
            "DELETE FROM job_backoff WHERE device_uuid = ?1",
            [device_uuid],
        )?;
        tx.commit()?;
        Ok(n > 0)
    }

    /// An admin's retry: the device's next hello starts a job at once. Audited when
    /// the device was waiting; returns what it was waiting after.
    pub fn retry_device(
        &mut self,
        device_uuid: &str,
        actor: &str,
    ) -> Result<Option<JobBackoff>, StoreError> {
        let tx = self.write_tx()?;
        let waiting = tx
            .query_row(
                "DELETE FROM job_backoff WHERE device_uuid = ?1
                 RETURNING device_uuid, pid, cause, failures, retry_at",
                [device_uuid],
                |r| {
                    Ok(JobBackoff {
                        device_uuid: r.get(0)?,
                        pid: r.get(1)?,
                        cause: r.get(2)?,
                        failures: r.get(3)?,
                        retry_at: r.get(4)?,
                    })
                },
            )
            .optional()?;
        if let Some(b) = &waiting {
            super::records::audit(
                &tx,
                actor,
                "device.retry",
                &serde_json::json!({ "uuid": device_uuid, "pid": b.pid, "failures": b.failures }),
            )?;
        }
        tx.commit()?;
        Ok(waiting)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testdb::engines;

    #[test]
    fn the_wait_doubles_per_cause_and_pid_and_clears() {
        for engine in engines() {
            let mut store = engine.open();
            let (base, max) = (Duration::from_secs(10), Duration::from_secs(25));
            let u = "8c2f7d4e-0000-4000-8000-000000000001";
            const A: &str = "127.0.0.5";
            let wait = |b: &JobBackoff| b.retry_at - now_ms();
            let first = store
                .record_job_failure(u, "0000037M", A, "CommitChanges", base, max)
                .unwrap();
            assert_eq!(first.failures, 1);
            assert!((9_000..=10_000).contains(&wait(&first)));
            let second = store
                .record_job_failure(u, "0000037M", A, "CommitChanges", base, max)
                .unwrap();
            assert_eq!(second.failures, 2);
            assert!((19_000..=20_000).contains(&wait(&second)));
            let third = store
                .record_job_failure(u, "0000037M", A, "CommitChanges", base, max)
                .unwrap();
            assert!((24_000..=25_000).contains(&wait(&third)), "capped");
            // Another cause starts again from the base.
            let other = store
                .record_job_failure(u, "0000037M", A, "GetUuid", base, max)
                .unwrap();
            assert_eq!(other.failures, 1);
            // Only hellos with the same PID from the same address wait.
            assert!(store.job_backoff(u, "0000037M", A).unwrap().is_some());
            assert!(store.job_backoff(u, "0000046N", A).unwrap().is_none());
            assert!(store
                .job_backoff(u, "0000037M", "127.0.0.66")
                .unwrap()
                .is_none());
            let retried = store.retry_device(u, "cli:root").unwrap().unwrap();
            assert_eq!(retried.cause, "GetUuid");
            assert!(store.job_backoff(u, "0000037M", A).unwrap().is_none());
            assert!(store.retry_device(u, "cli:root").unwrap().is_none());
            let audit = store.audit_log(10).unwrap();
            assert_eq!(audit[0].action, "device.retry");
            store
                .record_job_failure(u, "0000037M", A, "x", base, max)
                .unwrap();
            assert!(store.clear_job_backoff(u).unwrap());
            assert!(!store.clear_job_backoff(u).unwrap());
        }
    }
}
