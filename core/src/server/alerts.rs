//! The alert log's write path: every failure the server sees becomes an alert, logged
//! at once and written to the store in batches by one writer task, so a burst of bad
//! hellos costs one transaction per batch. The queue is bounded: if it overflows,
//! alerts are dropped, counted, and the count is itself written as an alert.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::store_thread::StoreHandle;
use crate::store::{NewAlert, Severity};

const QUEUE: usize = 8192;
const BATCH: usize = 1024;
/// Alerts written to the server log per second; the rest of a burst is only stored
/// (and counted in the log), so a flood of bad hellos cannot flood the log.
const LOGGED_PER_SECOND: u64 = 50;

/// Where the server raises alerts. Cheap to clone.
#[derive(Clone)]
pub struct AlertLog {
    tx: mpsc::Sender<NewAlert>,
    dropped: Arc<AtomicU64>,
    log_budget: Arc<LogBudget>,
}

/// How many alerts were logged in the current second, and how many were not.
#[derive(Default)]
struct LogBudget {
    second: AtomicU64,
    logged: AtomicU64,
    unlogged: AtomicU64,
}

impl LogBudget {
    /// Whether one more alert may be logged now; reports what the previous second
    /// left unlogged when a new second starts.
    fn admit(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.logged.store(0, Ordering::Relaxed);
            let unlogged = self.unlogged.swap(0, Ordering::Relaxed);
            if unlogged > 0 {
                tracing::warn!(
                    "{unlogged} more alerts were stored but not logged (see `vprov alerts list`)"
                );
            }
        }
        if self.logged.fetch_add(1, Ordering::Relaxed) < LOGGED_PER_SECOND {
            true
        } else {
            self.unlogged.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

impl AlertLog {
    /// Starts the writer task on the current runtime.
    pub fn start(store: StoreHandle) -> (AlertLog, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let writer = tokio::spawn(write_batches(rx, store, dropped.clone()));
        let log_budget = Arc::new(LogBudget::default());
        (
            AlertLog {
                tx,
                dropped,
                log_budget,
            },
            writer,
        )
    }

    /// Raises an alert: logged now (up to a rate), stored soon. Never blocks.
    pub fn raise(&self, alert: NewAlert) {
        if self.log_budget.admit() {
            tracing::warn!(
                source = alert.source,
                severity = alert.severity.as_str(),
                pid = alert.pid.as_deref(),
                device = alert.device_uuid.as_deref(),
                address = alert.address.as_deref(),
                "alert: {}",
                alert.message
            );
        }
        if self.tx.try_send(alert).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn write_batches(
    mut rx: mpsc::Receiver<NewAlert>,
    store: StoreHandle,
    dropped: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            batch.push(NewAlert {
                severity: Severity::Error,
                source: "alerts",
                message: format!("{lost} alerts were dropped because the alert log was overloaded"),
                pid: None,
                device_uuid: None,
                address: None,
            });
        }
        let alerts = std::mem::take(&mut batch);
        let n = alerts.len();
        match store.call(move |s| s.insert_alerts(&alerts)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("{n} alerts could not be stored: {e}"),
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_budget_caps_alerts_per_second() {
        let budget = LogBudget::default();
        let admitted = (0..200).filter(|_| budget.admit()).count() as u64;
        // A second boundary during the loop may admit up to one more second's worth.
        assert!(
            (LOGGED_PER_SECOND..=2 * LOGGED_PER_SECOND).contains(&admitted),
            "{admitted}"
        );
    }
}
