//! The alert-sink instances' side of the alert fan-out ([`crate::alerts::AlertSinks`]):
//! one worker task per sink delivers its bounded queue in order and reports what the
//! sink dropped or failed to deliver. A sink that falls behind loses alerts (counted
//! and reported), never slowing the alert writer or provisioning.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use vprov_sdk::AlertEvent;

use super::{plugin_source, Instance, PluginCallError, ServerLink};
use crate::alerts::SinkQueue;
use crate::store::{NewAlert, Severity};

/// How often a sink's drops, and its delivery failures, are reported at most.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(10);
const FAILURE_REPORT_EVERY: Duration = Duration::from_secs(60);

/// Creates the queue of a new sink instance and starts its worker.
pub fn start_sink(instance: Arc<Instance>, capacity: usize, link: ServerLink) -> SinkQueue {
    let (queue, rx, dropped) = SinkQueue::new(plugin_source(&instance.name), capacity);
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
