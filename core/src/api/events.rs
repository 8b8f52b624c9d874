//! Live updates for the console: one task watches the store — so changes made by
//! `vprov` commands in other processes count as well as the server's own — and
//! broadcasts device and alert changes; `GET /api/v1/events` streams them, with the
//! key generations' progress, as server-sent events — at most
//! `[api] event_streams_per_account` streams per account at once, so one account
//! cannot hold all of the API's connections.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use serde_json::Value;
use tokio::sync::{broadcast, watch, Notify};
use tokio_stream::wrappers::{BroadcastStream, WatchStream};
use tokio_stream::{Stream, StreamExt};

use super::auth::Caller;
use super::{ApiError, ApiResult, ApiState, State};
use crate::store::{AlertFilter, DeviceFilter};
use crate::views::{alert_json, device_json};

/// How often the store is looked at for changes. Watching the store (not this
/// server's own work) is what makes a stream on one serve node show what the other
/// nodes on the store did. PostgreSQL announces every committed write
/// (LISTEN/NOTIFY, `store/changes.rs`), which ends the wait at once; the periodic
/// look stays, longer, in case an announcement is lost with a connection.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);
const WATCH_INTERVAL_ANNOUNCED: Duration = Duration::from_secs(5);
/// After an announcement, how long further writes are gathered into the same look
/// (a burst of writes costs one look, at most ten a second).
const SETTLE: Duration = Duration::from_millis(100);

/// Stops the change listener's thread when the watcher ends.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// On PostgreSQL, a listener that wakes the watcher on every committed write (of any
/// node); `None` on SQLite or when the listener's thread cannot start.
fn announcements(state: &ApiState) -> Option<(Arc<Notify>, StopOnDrop)> {
    let url = state.settings.store_options.url.clone()?;
    let changed = Arc::new(Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    let wake = changed.clone();
    match crate::store::spawn_change_listener(url, move || wake.notify_one(), stop.clone()) {
        Ok(_) => Some((changed, StopOnDrop(stop))),
        Err(e) => {
            tracing::warn!(
                "cannot start the store change listener ({e}); looking every {WATCH_INTERVAL:?}"
            );
            None
        }
    }
}

/// One event: its SSE name (`device`, `alert`, `generation`, `ready`) and JSON data.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: &'static str,
    pub data: Value,
}

/// Fans events out to every open stream; a stream that falls behind skips what it
/// missed (the console re-reads lists when it reconnects). Counts the streams each
/// account has open, so that one account cannot hold every API connection.
#[derive(Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Event>,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus {
            tx: broadcast::channel(1024).0,
            open: Arc::default(),
        }
    }
}

/// One account's open stream: dropping it (the stream ends or its client goes)
/// frees its place.
struct StreamSlot {
    open: Arc<Mutex<HashMap<String, usize>>>,
    account: String,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("event streams lock");
        if let Some(n) = open.get_mut(&self.account) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.account);
            }
        }
    }
}

impl EventBus {
    pub fn publish(&self, name: &'static str, data: Value) {
        let _ = self.tx.send(Event { name, data });
    }

    fn listening(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// A place for one more stream of `account`, unless it has `limit` open.
    fn open_stream(&self, account: &str, limit: usize) -> Option<StreamSlot> {
        let mut open = self.open.lock().expect("event streams lock");
        let n = open.entry(account.to_string()).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            open: self.open.clone(),
            account: account.to_string(),
        })
    }
}

/// Waits until the store should be looked at again: an announced change (and
/// [`SETTLE`] for more), or the periodic look. `false` once the server stops.
async fn next_look(changed: Option<&Notify>, stop: &mut watch::Receiver<bool>) -> bool {
    let interval = match changed {
        Some(_) => WATCH_INTERVAL_ANNOUNCED,
        None => WATCH_INTERVAL,
    };
    let announcement = async {
        match changed {
            Some(changed) => {
                changed.notified().await;
                tokio::time::sleep(SETTLE).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(interval) => true,
        _ = announcement => true,
        _ = super::stopped(stop) => false,
    }
}

/// Compares the store with what it last saw and publishes the differences, while
/// anybody listens.
pub async fn watch_store(state: Arc<ApiState>, mut stop: watch::Receiver<bool>) {
    let mut devices: HashMap<String, Value> = HashMap::new();
    // Alerts are watched by when they were last seen, so a repeat (a higher count)
    // is pushed too; those already pushed with the latest time stamp are remembered
    // (by count) so they are not pushed again.
    let mut since = 0i64;
    let mut at_since: HashMap<i64, i64> = HashMap::new();
    // Until someone listens (again), only the baseline is kept current.
    let mut quiet = true;
    let announced = announcements(&state);
    let changed = announced.as_ref().map(|(changed, _)| changed.clone());
    while next_look(changed.as_deref(), &mut stop).await {
        if !state.events.listening() {
            quiet = true;
            continue;
        }
        let seen_since = since;
        let read = state
            .store(move |s| {
                let devices = s.devices(&DeviceFilter::default())?;
                let alerts = s.alerts_where(&AlertFilter {
                    seen_since: Some(seen_since),
                    limit: 500,
                    ..AlertFilter::default()
                })?;
                Ok((devices, alerts))
            })
            .await;
        let Ok((now_devices, new_alerts)) = read else {
            continue;
        };
        for device in &now_devices {
            let json = device_json(device);
            if devices.get(&device.uuid) != Some(&json) {
                if !quiet {
                    state.events.publish("device", json.clone());
                }
                devices.insert(device.uuid.clone(), json);
            }
        }
        // Oldest first; in a burst of more than 500 between looks, the oldest are
        // skipped (they are in the alert log).
        let latest = new_alerts.first().map_or(since, |a| a.last_seen.max(since));
        let mut now_at_latest = HashMap::new();
        for alert in new_alerts.iter().rev() {
            let pushed = at_since.get(&alert.id) == Some(&alert.count);
            if !quiet && !pushed {
                state.events.publish("alert", alert_json(alert));
            }
            if alert.last_seen == latest {
                now_at_latest.insert(alert.id, alert.count);
            }
        }
        since = latest;
        at_since = now_at_latest;
        if quiet {
            // Streams opened since the last look now see every later change: tell
            // them (the console ignores it; tests wait for it instead of sleeping).
            state.events.publish("ready", Value::Null);
        }
        quiet = false;
    }
}

/// `GET /api/v1/events`: at most `event_streams_per_account` at once per account
/// (429 beyond); every stream ends when the server stops.
pub async fn stream(
    state: State,
    caller: Caller,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let limit = state.settings.event_streams_per_account;
    let slot = state
        .events
        .open_stream(&caller.name, limit)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "account {} has {limit} event streams open already, the most [api] \
                 event_streams_per_account allows: close one (a console tab, say) first",
                    caller.name
                ),
            )
        })?;
    let events = BroadcastStream::new(state.events.tx.subscribe()).filter_map(move |e| {
        // The slot lives as long as the stream.
        let _open = &slot;
        e.ok()
            .map(|e| Some(SseEvent::default().event(e.name).data(e.data.to_string())))
    });
    let stop = WatchStream::new(state.stop.clone())
        .filter(|stopped| *stopped)
        .map(|_| None);
    let events = events
        .merge(stop)
        .take_while(Option::is_some)
        .filter_map(|e| e.map(Ok));
    Ok(Sse::new(events).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keep-alive"),
    ))
}
