//! Change announcements of a PostgreSQL store: every write transaction ends with
//! `NOTIFY vprov_store` ([`CHANNEL`], sent with its `COMMIT`, so a listener hears of it
//! exactly when the change is visible), and [`spawn_change_listener`] keeps a
//! connection that `LISTEN`s and calls back on each announcement. Whichever process or
//! node wrote, every node's console event stream ([`crate::api`]) then looks at the
//! store at once instead of at its next periodic look.
//!
//! The listener runs on a plain thread, like the store's own (the sync client runs a
//! runtime of its own); it reconnects after a lost connection and calls back once
//! after every (re)connection, since changes made meanwhile were not announced. SQLite
//! has no such mechanism: watchers there look periodically.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use super::open::{connect, redact};

/// The notification channel of store changes.
pub const CHANNEL: &str = "vprov_store";

/// How often the listener looks at `stop` while no announcement arrives, and waits
/// before reconnecting.
const TICK: Duration = Duration::from_secs(1);

/// Starts a thread that calls `changed` whenever a write transaction commits on the
/// PostgreSQL store at `url` (and once after each connection), until `stop` is set.
pub fn spawn_change_listener(
    url: String,
    changed: impl Fn() + Send + 'static,
    stop: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("vprov-store-changes".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = listen(&url, &changed, &stop) {
                    tracing::warn!(store = %redact(&url), "store change listener: {e}; reconnecting");
                    std::thread::sleep(TICK);
                }
            }
        })
}

/// One connection's listening, until `stop` is set (`Ok`) or the connection fails.
fn listen(url: &str, changed: &impl Fn(), stop: &AtomicBool) -> Result<(), String> {
    let mut client = connect(url).map_err(|e| e.to_string())?;
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .map_err(|e| e.to_string())?;
    changed();
    let mut notifications = client.notifications();
    // Each wait ends on an announcement or after TICK (to look at `stop`); a lost
    // connection ends it with an error.
    let mut arrived = notifications.timeout_iter(TICK);
    while !stop.load(Ordering::Relaxed) {
        if arrived.next().map_err(|e| e.to_string())?.is_some() {
            changed();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testdb::PgDatabase;
    use crate::store::{Store, StoreOptions};
    use std::sync::mpsc;

    /// A write on one connection is announced to the listener of another (as between
    /// two nodes); without the announcement no call would come and the wait fails.
    #[test]
    fn a_committed_write_is_announced_to_listeners() {
        let Some(pg) = PgDatabase::create() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut options = StoreOptions::new(dir.path());
        options.url = Some(pg.url.clone());
        let mut store = Store::open(&options).unwrap();
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let listener = spawn_change_listener(
            pg.url.clone(),
            move || {
                let _ = tx.send(());
            },
            stop.clone(),
        )
        .unwrap();
        // The call after connecting: it listens from here on.
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the listener connected");
        assert!(rx.try_recv().is_err(), "no change yet");
        store.generate_batch(1, None, "t", |_| {}).unwrap();
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the committed write was announced");
        stop.store(true, Ordering::Relaxed);
        listener.join().unwrap();
    }
}
