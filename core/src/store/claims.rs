//! Several `vprov serve` nodes on one store: job claims held with a lease, and turns
//! of periodic work.
//!
//! **Job claims.** A node works on a device only while it holds the store claim of
//! each of the job's keys (its PID and its device, each at the hello's address — the
//! same keys the server's in-memory claims absorb duplicate hellos with). A claim
//! names its node and a lease end (`lease_until`, ms since the epoch); the node
//! renews its leases while its jobs run ([`Store::renew_claims`]) and deletes its
//! claims when a job ends. Another node may take a claim only once its lease has
//! expired, in one atomic conditional upsert per key (`INSERT … ON CONFLICT DO
//! UPDATE … WHERE lease_until < now RETURNING node`): whichever node's statement
//! runs second sees the first one's row and gets nothing back. All keys of a job are
//! taken in one write transaction, so a job holds all or none. That is atomic in
//! SQLite (an `IMMEDIATE` transaction serialises writers) and in PostgreSQL at READ
//! COMMITTED (`ON CONFLICT DO UPDATE` locks the conflicting row and re-checks the
//! `WHERE` on its latest version).
//!
//! **Turns.** Periodic work (reachability checks, PKI expiry warnings, alert
//! pruning) is done once per interval across nodes: a node does a round only if it
//! takes the task's turn ([`Store::take_turn`]), a conditional upsert that succeeds
//! only when the task's `due_at` has passed, and moves it an interval ahead.
//!
//! The SQL here is written to run unchanged on PostgreSQL: numbered parameters,
//! `ON CONFLICT … DO UPDATE … WHERE`, `RETURNING`, 64-bit integer times, no
//! SQLite-only functions.

use std::time::Duration;

use super::db::{params, OptionalExtension};

use super::{now_ms, Store, StoreError};

/// What came of trying to claim a job's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This node holds every key until its lease ends.
    Claimed,
    /// Another node holds a key under an unexpired lease; nothing was claimed.
    HeldBy(String),
    /// The job's PID is no longer available (another job used it, or it was
    /// revoked); nothing was claimed.
    PidTaken,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Claims every key in `keys` for `node` until `lease` from now, all or none.
    /// A key held by `node` itself (an earlier run under the same node name) or
    /// whose lease expired is taken over. With `pid`, the claim also requires the PID
    /// to be still available (checked in the same transaction).
    pub fn claim_job(
        &mut self,
        keys: &[String],
        pid: Option<&str>,
        node: &str,
        lease: Duration,
    ) -> Result<ClaimOutcome, StoreError> {
        let now = now_ms();
        let until = now.saturating_add(millis(lease));
        let tx = self.write_tx()?;
        if let Some(pid) = pid {
            let available = tx
                .query_row(
                    "SELECT 1 FROM provisioning_keys WHERE pid = ?1 AND state = 'available'",
                    [pid],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
            if !available {
                return Ok(ClaimOutcome::PidTaken);
            }
        }
        for key in keys {
            let taken: Option<String> = tx
                .query_row(
                    "INSERT INTO job_claims (claim_key, node, lease_until) VALUES (?1, ?2, ?3)
                     ON CONFLICT (claim_key) DO UPDATE
                         SET node = excluded.node, lease_until = excluded.lease_until
                         WHERE job_claims.lease_until < ?4 OR job_claims.node = excluded.node
                     RETURNING node",
                    params![key, node, until, now],
                    |r| r.get(0),
                )
                .optional()?;
            if taken.is_none() {
                let holder: String = tx.query_row(
                    "SELECT node FROM job_claims WHERE claim_key = ?1",
                    [key],
                    |r| r.get(0),
                )?;
                // Dropping the transaction rolls back the keys taken before this one.
                return Ok(ClaimOutcome::HeldBy(holder));
            }
        }
        tx.commit()?;
        Ok(ClaimOutcome::Claimed)
    }

    /// Whether `node` still holds every key in `keys`, extending their lease to
    /// `lease` from now if so (a job checks this before a step that must not run
    /// twice: a node stalled past its lease may have lost the job to another).
    pub fn confirm_claim(
        &mut self,
        keys: &[String],
        node: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let until = now_ms().saturating_add(millis(lease));
        let tx = self.write_tx()?;
        for key in keys {
            let renewed = tx.execute(
                "UPDATE job_claims SET lease_until = ?3 WHERE claim_key = ?1 AND node = ?2",
                params![key, node, until],
            )?;
            if renewed != 1 {
                return Ok(false);
            }
        }
        tx.commit()?;
        Ok(true)
    }

    /// Extends every claim `node` holds to `lease` from now, and deletes claims whose
    /// lease expired (any node may take those anyway). Returns how many it renewed.
    pub fn renew_claims(&mut self, node: &str, lease: Duration) -> Result<usize, StoreError> {
        let now = now_ms();
        let tx = self.write_tx()?;
        let renewed = tx.execute(
            "UPDATE job_claims SET lease_until = ?2 WHERE node = ?1",
            params![node, now.saturating_add(millis(lease))],
        )?;
        tx.execute(
            "DELETE FROM job_claims WHERE lease_until < ?1",
            params![now],
        )?;
        tx.commit()?;
        Ok(renewed)
    }

    /// Gives up `node`'s claims of `keys` (its job ended).
    pub fn release_claims(&mut self, keys: &[String], node: &str) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        for key in keys {
            tx.execute(
                "DELETE FROM job_claims WHERE claim_key = ?1 AND node = ?2",
                params![key, node],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The node holding `key` under an unexpired lease, if any.
    pub fn claim_holder(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT node FROM job_claims WHERE claim_key = ?1 AND lease_until >= ?2",
                params![key, now_ms()],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Takes `task`'s turn for `node` if the task is due (never done, or its last
    /// round was taken at least `interval` ago), moving it `interval` ahead. Exactly
    /// one of several nodes asking at once gets it.
    pub fn take_turn(
        &mut self,
        task: &str,
        node: &str,
        interval: Duration,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let tx = self.write_tx()?;
        let taken: Option<String> = tx
            .query_row(
                "INSERT INTO periodic_turns (task, node, taken_at, due_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (task) DO UPDATE
                     SET node = excluded.node, taken_at = excluded.taken_at,
                         due_at = excluded.due_at
                     WHERE periodic_turns.due_at <= excluded.taken_at
                 RETURNING node",
                params![task, node, now, now.saturating_add(millis(interval))],
                |r| r.get(0),
            )
            .optional()?;
        tx.commit()?;
        Ok(taken.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testdb::engines;
    use crate::store::tests::new_available_pid;

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    const LEASE: Duration = Duration::from_secs(30);

    #[test]
    fn a_claim_is_exclusive_until_its_lease_expires() {
        for engine in engines() {
            let (mut a, mut b) = (engine.open(), engine.open());
            let job = keys(&["pid P @127.0.0.2", "device U @127.0.0.2"]);
            assert_eq!(
                a.claim_job(&job, None, "a", LEASE).unwrap(),
                ClaimOutcome::Claimed
            );
            // Another node, from another connection (process), cannot take it...
            assert_eq!(
                b.claim_job(&job, None, "b", LEASE).unwrap(),
                ClaimOutcome::HeldBy("a".into())
            );
            // ...nor any job sharing one key with it, and such a refusal takes nothing.
            let overlapping = keys(&["pid Q @127.0.0.2", "device U @127.0.0.2"]);
            assert_eq!(
                b.claim_job(&overlapping, None, "b", LEASE).unwrap(),
                ClaimOutcome::HeldBy("a".into())
            );
            assert_eq!(b.claim_holder("pid Q @127.0.0.2").unwrap(), None);
            // The holder itself may take it again (a restart under the same node name).
            assert_eq!(
                a.claim_job(&job, None, "a", LEASE).unwrap(),
                ClaimOutcome::Claimed
            );
            // Once the lease expired (a node that died), another node takes it over.
            assert_eq!(a.renew_claims("a", Duration::ZERO).unwrap(), 2);
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(
                b.claim_job(&job, None, "b", LEASE).unwrap(),
                ClaimOutcome::Claimed
            );
            assert_eq!(b.claim_holder(&job[1]).unwrap().as_deref(), Some("b"));
            // The old holder learns it lost the job before it commits anything.
            assert!(!a.confirm_claim(&job, "a", LEASE).unwrap());
            assert!(b.confirm_claim(&job, "b", LEASE).unwrap());
            // Releasing by the wrong node does nothing; by the holder frees the keys.
            a.release_claims(&job, "a").unwrap();
            assert_eq!(b.claim_holder(&job[0]).unwrap().as_deref(), Some("b"));
            b.release_claims(&job, "b").unwrap();
            assert_eq!(
                a.claim_job(&job, None, "a", LEASE).unwrap(),
                ClaimOutcome::Claimed
            );
        }
    }

    #[test]
    fn renewing_keeps_own_claims_and_clears_expired_ones() {
        for engine in engines() {
            let (mut a, mut b) = (engine.open(), engine.open());
            a.claim_job(&keys(&["x"]), None, "a", Duration::ZERO)
                .unwrap();
            b.claim_job(&keys(&["y"]), None, "b", LEASE).unwrap();
            std::thread::sleep(Duration::from_millis(5));
            assert_eq!(b.renew_claims("b", LEASE).unwrap(), 1);
            // a's expired claim is gone; b's is kept.
            assert_eq!(a.claim_holder("x").unwrap(), None);
            assert_eq!(a.renew_claims("a", LEASE).unwrap(), 0);
            assert_eq!(a.claim_holder("y").unwrap().as_deref(), Some("b"));
        }
    }

    #[test]
    fn a_pid_that_is_no_longer_available_is_not_claimed() {
        for engine in engines() {
            let (mut a, _b) = (engine.open(), engine.open());
            let pid = new_available_pid(&mut a);
            let job = keys(&["pid @x"]);
            assert_eq!(
                a.claim_job(&job, Some("no-such-pid"), "a", LEASE).unwrap(),
                ClaimOutcome::PidTaken
            );
            assert_eq!(a.claim_holder("pid @x").unwrap(), None);
            assert_eq!(
                a.claim_job(&job, Some(&pid), "a", LEASE).unwrap(),
                ClaimOutcome::Claimed
            );
        }
    }

    #[test]
    fn a_turn_is_taken_once_per_interval_across_nodes() {
        for engine in engines() {
            let (mut a, mut b) = (engine.open(), engine.open());
            let hour = Duration::from_secs(3600);
            assert!(a.take_turn("reachability", "a", hour).unwrap());
            assert!(!b.take_turn("reachability", "b", hour).unwrap());
            assert!(!a.take_turn("reachability", "a", hour).unwrap());
            // Other tasks are independent.
            assert!(b.take_turn("pki_expiry", "b", hour).unwrap());
            // Once due, whichever node asks first takes it.
            assert!(b.take_turn("alert_prune", "b", Duration::ZERO).unwrap());
            assert!(a.take_turn("alert_prune", "a", hour).unwrap());
            assert!(!b.take_turn("alert_prune", "b", hour).unwrap());
        }
    }
}
