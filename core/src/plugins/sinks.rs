//! Alert fan-out to the alert-sink instances. Every alert, once stored in the
//! built-in alert log, is offered to each sink's bounded queue; a sink that falls
//! behind loses alerts (counted and reported), never slowing the alert writer or
//! provisioning. One worker task per sink delivers its queue in order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use vprov_sdk::AlertEvent;

use super::{plugin_source, Instance, PluginCallError, ServerLink};
use crate::store::{NewAlert, Severity};

/// How often a sink's drops, and its delivery failures, are reported at most.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(10);
const FAILURE_REPORT_EVERY: Duration = Duration::from_secs(60);

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
}

/// Creates the queue of a new sink instance and starts its worker.
pub fn start_sink(instance: Arc<Instance>, capacity: usize, link: ServerLink) -> SinkQueue {
    let (tx, rx) = mpsc::channel(capacity);
    let dropped = Arc::new(AtomicU64::new(0));
    let queue = SinkQueue {
        own_source: plugin_source(&instance.name),
        tx,
        dropped: dropped.clone(),
    };
    tokio::spawn(deliver(instance, rx, dropped, link));
    queue
}

async fn deliver(
    instance: Arc<Instance>,
    mut rx: mpsc::Receiver<AlertEvent>,
    dropped: Arc<AtomicU64>,
    link: ServerLink,
) {
    let mut last_drop_report: Option<Instant> = None;
    let mut last_failure_report: Option<Instant> = None;
    let mut failures = 0u64;
    let due = |last: Option<Instant>, every: Duration| last.is_none_or(|t| t.elapsed() >= every);
    while let Some(event) = rx.recv().await {
        if instance.quarantined().is_some() {
            continue;
        }
        match instance
            .call("deliver", move |p| p.deliver_alert(&event))
            .await
        {
            Ok(()) => {}
            // Quarantine raises its own alert.
            Err(
                PluginCallError::Quarantined { .. }
                | PluginCallError::TimedOut { .. }
                | PluginCallError::Crashed { .. },
            ) => {}
            Err(e) => {
                failures += 1;
                if due(last_failure_report, FAILURE_REPORT_EVERY) {
                    last_failure_report = Some(Instant::now());
                    report(
                        &link,
                        &instance.name,
                        format!(
                            "alert sink {} cannot deliver alerts ({failures} failed since the last report): {e}",
                            instance.name
                        ),
                    );
                    failures = 0;
                }
            }
        }
        if dropped.load(Ordering::Relaxed) > 0 && due(last_drop_report, DROP_REPORT_EVERY) {
            last_drop_report = Some(Instant::now());
            let n = dropped.swap(0, Ordering::Relaxed);
            report(
                &link,
                &instance.name,
                format!(
                    "alert sink {} fell behind: {n} alerts were dropped for it (they are in the alert log)",
                    instance.name
                ),
            );
        }
    }
    instance.shutdown().await;
}

fn report(link: &ServerLink, instance: &str, message: String) {
    link.alerts.raise(NewAlert {
        severity: Severity::Warning,
        source: plugin_source(instance).into(),
        message,
        pid: None,
        device_uuid: None,
        address: None,
    });
}
