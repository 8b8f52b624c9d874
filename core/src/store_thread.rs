//! The store's single owner while the server runs: one dedicated thread holds the
//! [`Store`] and runs closures sent to it, so async tasks never block on SQLite and
//! no two threads ever share the connection. Each call's round trip (queueing
//! included) is timed into `vprov_store_call_duration_seconds`.

use std::sync::{Arc, Mutex};

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
    pub fn spawn(store: Store) -> StoreHandle {
        StoreHandle::spawn_pool(vec![store])
    }

    /// Moves each of `stores` (connections to one store) onto a thread of its own;
    /// each call runs on whichever thread is free first. The threads end when every
    /// handle is gone.
    pub fn spawn_pool(stores: Vec<Store>) -> StoreHandle {
        let (tx, rx) = mpsc::channel::<Call>(1024);
        let rx = Arc::new(Mutex::new(rx));
        for (i, mut store) in stores.into_iter().enumerate() {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("vprov-store-{i}"))
                .spawn(move || loop {
                    // One free thread waits for the next call at a time; it lets the
                    // others wait in turn as soon as it has one.
                    let call = rx.lock().expect("store call queue").blocking_recv();
                    let Some(call) = call else { return };
                    match store.reconnect_if_lost() {
                        Ok(true) => tracing::warn!("the store's connection was lost; reconnected"),
                        Ok(false) => {}
                        Err(e) => tracing::warn!("the store's connection was lost: {e}"),
                    }
                    call(&mut store);
                })
                .expect("spawning a store thread");
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreOptions;
    use std::sync::Barrier;
    use std::time::Duration;

    /// Calls run side by side on a pool: two calls that each wait for the other
    /// finish only if they run on two threads at once (on one they would wait
    /// forever: the timeout turns that into a failure).
    #[tokio::test]
    async fn a_pool_runs_calls_side_by_side() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions::new(dir.path());
        let stores = vec![
            Store::open(&options).unwrap(),
            Store::open(&options).unwrap(),
        ];
        let pool = StoreHandle::spawn_pool(stores);
        let meet = Arc::new(Barrier::new(2));
        let call = |meet: Arc<Barrier>| {
            pool.call(move |s| {
                meet.wait();
                s.devices(&Default::default()).map(|d| d.len())
            })
        };
        let both = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(call(meet.clone()), call(meet))
        })
        .await
        .expect("the two calls ran one after the other");
        assert_eq!((both.0.unwrap().unwrap(), both.1.unwrap().unwrap()), (0, 0));
    }
}
