//! The alert log's write path: every failure the server sees becomes an alert,
//! queued at once (its texts cut to the store's caps) and written to the store in
//! batches by one writer task, so a burst of bad hellos costs one transaction per
//! batch. The queue is bounded: if it overflows, alerts are dropped, counted, and the
//! count is itself written as an alert.
//!
//! The store aggregates repeats (see [`crate::store::NewAlert`]): one row per cause
//! with a count. An alert is written to the server log (control characters escaped,
//! at most 50 a second) and offered to the alert sinks ([`AlertSinks`]: one bounded
//! queue per sink, filled by this module and emptied by the plugin host, so a sink
//! never slows this path down) when it is new, and each repeat at most once per
//! `[alerts] repeat_notice_minutes`, saying how often it was seen. The writer also
//! prunes the table to `[alerts] retention_days` and `max_rows`: after every
//! [`PRUNE_EVERY_ROWS`] rows it touched, and every [`PRUNE_INTERVAL`] when it takes
//! the store's `alert_prune` turn (several nodes on one store prune once per
//! interval between them).
//!
//! With several nodes on one store each alert is passed on once: by the node that
//! raised it, and only when the store marks its row notified, which it decides
//! inside the write transaction that stores it (so of two nodes adding repeats of
//! one alert, only one is told to pass it on per `repeat_notice_minutes`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use abi_stable::std_types::RString;
use tokio::sync::mpsc;
use vprov_sdk::abi::Severity as SdkSeverity;
use vprov_sdk::AlertEvent;

use crate::config::AlertsConfig;
use crate::store::{NewAlert, Severity, StoredAlert};
use crate::store_thread::StoreHandle;
use crate::text::escape_control;

const QUEUE: usize = 8192;
const BATCH: usize = 1024;
/// The writer prunes the table after touching this many rows...
pub const PRUNE_EVERY_ROWS: usize = 1024;
/// ...and at least this often.
pub const PRUNE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// Alerts written to the server log per second; the rest of a burst is only stored
/// (and counted in the log), so a flood of bad hellos cannot flood the log.
const LOGGED_PER_SECOND: u64 = 50;

/// Where the server raises alerts. Cheap to clone.
#[derive(Clone)]
pub struct AlertLog {
    tx: mpsc::Sender<NewAlert>,
    dropped: Arc<AtomicU64>,
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
    /// Starts the writer task on the current runtime; stored alerts go on to `sinks`,
    /// and the table is kept within `settings`.
    pub fn start(
        store: StoreHandle,
        sinks: AlertSinks,
        settings: AlertsConfig,
        node: Arc<str>,
    ) -> (AlertLog, AlertWriter) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let (close, closed) = tokio::sync::oneshot::channel();
        let writer = Writer {
            store,
            dropped: dropped.clone(),
            sinks,
            settings,
            log_budget: LogBudget::default(),
            node,
        };
        let writer = AlertWriter {
            task: tokio::spawn(writer.run(rx, closed)),
            close,
        };
        (AlertLog { tx, dropped }, writer)
    }

    /// Raises an alert: stored soon, then logged and passed on to alert sinks
    /// unless it is a repeat told recently. Never blocks.
    ///
    /// A repeated failure (a device that fails the same way at every hello) needs
    /// nothing special: raise the same alert again and the store counts it. Say in
    /// the message what the admin must do; keep changing numbers (times, tries) in
    /// digits, which do not make a different cause.
    pub fn raise(&self, alert: NewAlert) {
        crate::metrics::alert(&alert.source, alert.severity.as_str());
        if self.tx.try_send(alert.capped()).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::alert_dropped();
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

/// What the writer task holds.
struct Writer {
    store: StoreHandle,
    dropped: Arc<AtomicU64>,
    sinks: AlertSinks,
    settings: AlertsConfig,
    log_budget: LogBudget,
    /// The node taking the periodic pruning's turns.
    node: Arc<str>,
}

impl Writer {
    async fn run(
        self,
        mut rx: mpsc::Receiver<NewAlert>,
        mut closed: tokio::sync::oneshot::Receiver<()>,
    ) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut closing = false;
        let mut touched = 0usize;
        let mut prune = tokio::time::interval(PRUNE_INTERVAL);
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
                    _ = prune.tick() => {
                        if self.prune_turn().await {
                            touched = 0;
                            if !self.prune().await { return }
                        }
                        continue;
                    }
                }
            }
            let lost = self.dropped.swap(0, Ordering::Relaxed);
            if lost > 0 {
                batch.push(NewAlert {
                    severity: Severity::Error,
                    source: "alerts".into(),
                    message: format!(
                        "{lost} alerts were dropped because the alert log was overloaded"
                    ),
                    pid: None,
                    device_uuid: None,
                    address: None,
                });
            }
            let alerts = std::mem::take(&mut batch);
            let Some(rows) = self.store_batch(alerts).await else {
                return;
            };
            touched += rows;
            if touched >= PRUNE_EVERY_ROWS {
                touched = 0;
                if !self.prune().await {
                    return;
                }
            }
        }
    }

    /// Stores one batch, then logs and passes on what is worth telling. Returns how
    /// many rows it touched; `None` once the store thread is gone.
    async fn store_batch(&self, alerts: Vec<NewAlert>) -> Option<usize> {
        let notice = Some(self.settings.repeat_notice);
        let (stored, alerts) = self
            .store
            .call(move |s| (s.insert_alerts(&alerts, notice), alerts))
            .await
            .ok()?;
        let (touched, told): (usize, Vec<AlertEvent>) = match stored {
            Ok(rows) => (
                rows.len(),
                rows.iter()
                    .filter(|row| row.notify)
                    .map(|row| self.tell(&alerts[row.index], Some(row)))
                    .collect(),
            ),
            Err(e) => {
                tracing::error!("{} alerts could not be stored: {e}", alerts.len());
                (0, alerts.iter().map(|a| self.tell(a, None)).collect())
            }
        };
        if !self.sinks.is_empty() && !told.is_empty() {
            self.sinks.publish(&told);
        }
        Some(touched)
    }

    /// Logs an alert (within the budget) and makes the event alert sinks receive;
    /// `row` is what the store made of it.
    fn tell(&self, a: &NewAlert, row: Option<&StoredAlert>) -> AlertEvent {
        let message = match row {
            Some(row) if row.count > 1 => format!(
                "{} (seen {} times since {})",
                a.message,
                row.count,
                crate::views::time_ms(row.first_seen)
            ),
            _ => a.message.clone(),
        };
        if self.log_budget.admit() {
            let field = |v: &Option<String>| v.as_deref().map(|t| escape_control(t).into_owned());
            tracing::warn!(
                source = %escape_control(&a.source),
                severity = a.severity.as_str(),
                pid = field(&a.pid),
                device = field(&a.device_uuid),
                address = field(&a.address),
                "alert: {}",
                escape_control(&message)
            );
        }
        let text = |v: &Option<String>| v.as_deref().map(RString::from).into();
        AlertEvent {
            at_unix_ms: row.map_or_else(crate::store::now_ms, |r| r.last_seen),
            severity: sdk_severity(a.severity),
            source: a.source.as_ref().into(),
            message: message.as_str().into(),
            pid: text(&a.pid),
            device_uuid: text(&a.device_uuid),
            address: text(&a.address),
        }
    }

    /// Whether this node takes the periodic pruning's turn (no other node pruned in
    /// the last [`PRUNE_INTERVAL`]).
    async fn prune_turn(&self) -> bool {
        let node = self.node.clone();
        let turn = self
            .store
            .call(move |s| s.take_turn("alert_prune", &node, PRUNE_INTERVAL))
            .await;
        matches!(turn, Ok(Ok(true)))
    }

    /// Applies the retention settings; `false` once the store thread is gone.
    async fn prune(&self) -> bool {
        let retention = self.settings.retention();
        match self.store.call(move |s| s.prune_alerts(&retention)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!("alert log: {n} old alerts deleted (retention)"),
            Ok(Err(e)) => tracing::error!("alert log: old alerts could not be deleted: {e}"),
            Err(_) => return false,
        }
        true
    }
}

/// The router the alert writer publishes to. Cheap to clone.
#[derive(Clone, Default)]
pub struct AlertSinks {
    queues: Arc<RwLock<Arc<Vec<SinkQueue>>>>,
}

/// The sending side of one sink's queue.
#[derive(Clone)]
pub struct SinkQueue {
    /// Alerts raised by (or about) this instance are not sent back to it.
    own_source: String,
    tx: mpsc::Sender<AlertEvent>,
    dropped: Arc<AtomicU64>,
}

impl SinkQueue {
    /// A queue of `capacity` alerts for the sink whose own alerts come from
    /// `own_source`; the worker reads the receiver and reports the drop counter.
    pub fn new(
        own_source: String,
        capacity: usize,
    ) -> (SinkQueue, mpsc::Receiver<AlertEvent>, Arc<AtomicU64>) {
        let (tx, rx) = mpsc::channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let queue = SinkQueue {
            own_source,
            tx,
            dropped: dropped.clone(),
        };
        (queue, rx, dropped)
    }
}

impl AlertSinks {
    /// Offers each alert to every sink; never waits.
    pub fn publish(&self, events: &[AlertEvent]) {
        let queues = self.queues.read().expect("sinks lock").clone();
        for q in queues.iter() {
            for event in events {
                if event.source.as_str() == q.own_source {
                    continue;
                }
                if q.tx.try_send(event.clone()).is_err() {
                    q.dropped.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::sink_dropped(sink_name(&q.own_source));
                }
            }
        }
    }

    /// Replaces the set of sinks (on reload). Dropping a queue's sender lets its
    /// worker drain what is queued, then shut the instance down.
    pub fn set(&self, queues: Vec<SinkQueue>) {
        *self.queues.write().expect("sinks lock") = Arc::new(queues);
    }

    pub fn is_empty(&self) -> bool {
        self.queues.read().expect("sinks lock").is_empty()
    }

    /// Reports each sink's queue depth to the metrics at every scrape.
    pub fn report_depths(&self) {
        let sinks = self.clone();
        crate::metrics::on_scrape(move || {
            let queues = sinks.queues.read().expect("sinks lock").clone();
            for q in queues.iter() {
                let depth = q.tx.max_capacity() - q.tx.capacity();
                crate::metrics::set_sink_depth(sink_name(&q.own_source), depth);
            }
        });
    }
}

/// A sink's instance name (its own alerts' source is `plugin:NAME`).
fn sink_name(own_source: &str) -> &str {
    own_source.strip_prefix("plugin:").unwrap_or(own_source)
}

/// A store severity as the SDK carries it to alert sinks.
pub fn sdk_severity(s: Severity) -> SdkSeverity {
    match s {
        Severity::Info => SdkSeverity::INFO,
        Severity::Warning => SdkSeverity::WARNING,
        Severity::Error => SdkSeverity::ERROR,
        Severity::Critical => SdkSeverity::CRITICAL,
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
