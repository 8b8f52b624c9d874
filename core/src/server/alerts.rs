//! The alert log's write path: every failure the server sees becomes an alert, logged
//! at once and written to the store in batches by one writer task, so a burst of bad
//! hellos costs one transaction per batch. The queue is bounded: if it overflows,
//! alerts are dropped, counted, and the count is itself written as an alert. Once a
//! batch is stored it is offered to the alert-sink plugins ([`AlertSinks`]), which
//! never slow this path down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use abi_stable::std_types::RString;
use tokio::sync::mpsc;
use vprov_sdk::AlertEvent;

use super::store_thread::StoreHandle;
use crate::plugins::services::sdk_severity;
use crate::plugins::sinks::AlertSinks;
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
    /// Starts the writer task on the current runtime; stored alerts go on to `sinks`.
    pub fn start(store: StoreHandle, sinks: AlertSinks) -> (AlertLog, AlertWriter) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let (close, closed) = tokio::sync::oneshot::channel();
        let writer = AlertWriter {
            task: tokio::spawn(write_batches(rx, closed, store, dropped.clone(), sinks)),
            close,
        };
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
                source = %alert.source,
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

/// The writer task. Plugin instances hold [`AlertLog`] handles for as long as their
/// libraries stay loaded, so the writer is closed explicitly rather than by the last
/// handle going away.
pub struct AlertWriter {
    task: tokio::task::JoinHandle<()>,
    close: tokio::sync::oneshot::Sender<()>,
}

impl AlertWriter {
    /// Stores what is queued, then stops (waiting at most `grace`).
    pub async fn finish(self, grace: std::time::Duration) {
        let _ = self.close.send(());
        let _ = tokio::time::timeout(grace, self.task).await;
    }
}

async fn write_batches(
    mut rx: mpsc::Receiver<NewAlert>,
    mut closed: tokio::sync::oneshot::Receiver<()>,
    store: StoreHandle,
    dropped: Arc<AtomicU64>,
    sinks: AlertSinks,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut closing = false;
    loop {
        if closing {
            // Whatever is queued now is the last batch.
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(a) => batch.push(a),
                    Err(_) => break,
                }
            }
            if batch.is_empty() {
                return;
            }
        } else {
            tokio::select! {
                n = rx.recv_many(&mut batch, BATCH) => if n == 0 { return },
                _ = &mut closed => { closing = true; continue; }
            }
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            batch.push(NewAlert {
                severity: Severity::Error,
                source: "alerts".into(),
                message: format!("{lost} alerts were dropped because the alert log was overloaded"),
                pid: None,
                device_uuid: None,
                address: None,
            });
        }
        let alerts = std::mem::take(&mut batch);
        let n = alerts.len();
        let (stored, alerts) = match store
            .call(move |s| (s.insert_alerts(&alerts), alerts))
            .await
        {
            Ok(stored) => stored,
            Err(_) => return,
        };
        let at = match stored {
            Ok(at) => at,
            Err(e) => {
                tracing::error!("{n} alerts could not be stored: {e}");
                crate::store::now_ms()
            }
        };
        if !sinks.is_empty() {
            let events: Vec<AlertEvent> = alerts.iter().map(|a| alert_event(a, at)).collect();
            sinks.publish(&events);
        }
    }
}

/// An alert as alert sinks receive it.
fn alert_event(a: &NewAlert, at: i64) -> AlertEvent {
    let text = |v: &Option<String>| v.as_deref().map(RString::from).into();
    AlertEvent {
        at_unix_ms: at,
        severity: sdk_severity(a.severity),
        source: a.source.as_ref().into(),
        message: a.message.as_str().into(),
        pid: text(&a.pid),
        device_uuid: text(&a.device_uuid),
        address: text(&a.address),
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
