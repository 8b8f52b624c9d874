//! The store's single owner while the server runs: one dedicated thread holds the
//! [`Store`] and runs closures sent to it, so async tasks never block on SQLite and
//! no two threads ever share the connection. Each call's round trip (queueing
//! included) is timed into `vprov_store_call_duration_seconds`.

use tokio::sync::{mpsc, oneshot};

use crate::store::Store;

type Call = Box<dyn FnOnce(&mut Store) + Send>;

/// The store thread stopped (it only does when the server shuts down).
#[derive(Debug, thiserror::Error)]
#[error("the store thread has stopped")]
pub struct StoreClosed;

/// A cheap, cloneable handle to the store thread.
#[derive(Clone)]
pub struct StoreHandle {
    calls: mpsc::Sender<Call>,
}

impl StoreHandle {
    /// Moves `store` onto its own thread. The thread ends when every handle is gone.
    pub fn spawn(mut store: Store) -> StoreHandle {
        let (tx, mut rx) = mpsc::channel::<Call>(1024);
        std::thread::Builder::new()
            .name("vprov-store".into())
            .spawn(move || {
                while let Some(call) = rx.blocking_recv() {
                    call(&mut store);
                }
            })
            .expect("spawning the store thread");
        StoreHandle { calls: tx }
    }

    /// Runs `f` on the store thread and returns its result.
    pub async fn call<R, F>(&self, f: F) -> Result<R, StoreClosed>
    where
        R: Send + 'static,
        F: FnOnce(&mut Store) -> R + Send + 'static,
    {
        let started = std::time::Instant::now();
        let (tx, rx) = oneshot::channel();
        self.calls
            .send(Box::new(move |store: &mut Store| {
                let _ = tx.send(f(store));
            }))
            .await
            .map_err(|_| StoreClosed)?;
        let result = rx.await.map_err(|_| StoreClosed);
        crate::metrics::store_call(started.elapsed());
        result
    }
}
