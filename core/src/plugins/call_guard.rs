//! The call guard around one live plugin instance ([`Instance`]): every call runs on
//! the blocking pool under a timeout and a per-instance concurrency bound, a panic
//! comes back as an error, and a panicking or hanging instance is quarantined with
//! an alert.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use abi_stable::std_types::RResult;
use tokio::sync::Semaphore;
use tokio::time::{timeout_at, Instant};
use vprov_sdk::abi::PluginInstanceBox;
use vprov_sdk::{ErrorKind, PluginError, PluginKinds};

use super::{plugin_source, ServerLink};
use crate::store::{NewAlert, Severity};

/// Why a call into a plugin did not return a result.
#[derive(Debug, thiserror::Error)]
pub enum PluginCallError {
    #[error("plugin instance {instance} is quarantined: {reason}")]
    Quarantined { instance: String, reason: String },
    #[error("plugin instance {instance} is busy: all {slots} call slots stayed taken")]
    Busy { instance: String, slots: usize },
    #[error("plugin instance {instance} {reason}")]
    TimedOut { instance: String, reason: String },
    #[error("plugin instance {instance} {reason}")]
    Crashed { instance: String, reason: String },
    #[error("plugin instance {instance}: {error}")]
    Plugin {
        instance: String,
        error: PluginError,
    },
}

/// One live plugin instance.
pub struct Instance {
    pub name: String,
    pub plugin: String,
    pub plugin_version: String,
    /// The kinds the core routes to it.
    pub kinds: PluginKinds,
    pub(super) file: PathBuf,
    pub(super) lib_hash: String,
    pub(super) config_toml: String,
    pub(super) handle: Arc<PluginInstanceBox>,
    pub(super) slots: Arc<Semaphore>,
    pub(super) max_calls: usize,
    pub(super) timeout: Duration,
    pub(super) quarantine: Mutex<Option<String>>,
    pub(super) shut_down: AtomicBool,
    /// A call timed out: a thread may still be stuck inside the plugin.
    pub(super) hung: AtomicBool,
    pub(super) link: Option<ServerLink>,
    /// Signalled when the instance's status changes (quarantine), so the server's
    /// status snapshot is rewritten.
    pub(super) status_changed: Arc<tokio::sync::Notify>,
}

impl Instance {
    /// Why the instance gets no more calls, if it was quarantined.
    pub fn quarantined(&self) -> Option<String> {
        self.quarantine.lock().expect("quarantine lock").clone()
    }

    /// Calls into the plugin on the blocking pool, bounded by the call timeout and the
    /// instance's concurrency limit. A panic or a timeout quarantines the instance.
    pub async fn call<T: Send + 'static>(
        self: &Arc<Self>,
        what: &'static str,
        f: impl FnOnce(&PluginInstanceBox) -> RResult<T, PluginError> + Send + 'static,
    ) -> Result<T, PluginCallError> {
        if let Some(reason) = self.quarantined() {
            return Err(PluginCallError::Quarantined {
                instance: self.name.clone(),
                reason,
            });
        }
        let deadline = Instant::now() + self.timeout;
        let permit = match timeout_at(deadline, self.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                return Err(PluginCallError::Busy {
                    instance: self.name.clone(),
                    slots: self.max_calls,
                })
            }
        };
        let handle = self.handle.clone();
        // The permit moves into the call: a hung call keeps holding its slot.
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(&handle).into_result()
        });
        match timeout_at(deadline, task).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(error))) => {
                if error.kind == ErrorKind::PANICKED {
                    self.quarantine_for(format!("{} (in {what})", error.message));
                }
                Err(PluginCallError::Plugin {
                    instance: self.name.clone(),
                    error,
                })
            }
            Ok(Err(join)) => {
                let reason = format!("crashed in {what}: {join}");
                self.quarantine_for(reason.clone());
                Err(PluginCallError::Crashed {
                    instance: self.name.clone(),
                    reason,
                })
            }
            Err(_) => {
                let reason = format!(
                    "did not return from {what} within {} ms",
                    self.timeout.as_millis()
                );
                // Its thread may still be inside the plugin: never call it again.
                self.hung.store(true, Ordering::Relaxed);
                self.quarantine_for(reason.clone());
                Err(PluginCallError::TimedOut {
                    instance: self.name.clone(),
                    reason,
                })
            }
        }
    }

    pub(super) fn quarantine_for(&self, reason: String) {
        {
            let mut q = self.quarantine.lock().expect("quarantine lock");
            if q.is_some() {
                return;
            }
            *q = Some(reason.clone());
        }
        self.status_changed.notify_one();
        let message = format!(
            "plugin instance {} ({} {}) quarantined: {reason}; it gets no more calls until its library or configuration changes",
            self.name, self.plugin, self.plugin_version
        );
        match &self.link {
            Some(link) => link.alerts.raise(NewAlert {
                severity: Severity::Error,
                source: plugin_source(&self.name).into(),
                message,
                pid: None,
                device_uuid: None,
                address: None,
            }),
            None => tracing::error!("{message}"),
        }
    }

    /// Tells the plugin to stop, once; skipped for an instance quarantined for hanging
    /// (its thread may still be stuck inside it).
    pub async fn shutdown(&self) {
        if self.shut_down.swap(true, Ordering::Relaxed) {
            return;
        }
        if self.hung.load(Ordering::Relaxed) {
            return;
        }
        let handle = self.handle.clone();
        let task = tokio::task::spawn_blocking(move || handle.shutdown());
        if tokio::time::timeout(self.timeout, task).await.is_err() {
            tracing::warn!(instance = %self.name, "plugin shutdown did not return in time");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use vprov_sdk::testing::{sample_alert, FakeHost};
    use vprov_sdk::{AlertEvent, AlertSink, Context, Plugin};

    use super::*;

    static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
    static MAX_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

    /// An in-process sink that panics, sleeps or counts concurrent calls.
    struct TestSink {
        mode: String,
    }

    impl Plugin for TestSink {
        const NAME: &'static str = "test-sink";
        const VERSION: &'static str = "1.0.0";
        const DESCRIPTION: &'static str = "test";
        const KINDS: PluginKinds = PluginKinds::ALERT_SINK;

        fn new(context: Context) -> Result<Self, PluginError> {
            Ok(TestSink {
                mode: context.config_toml,
            })
        }

        fn alert_sink(&self) -> Option<&dyn AlertSink> {
            Some(self)
        }
    }

    impl AlertSink for TestSink {
        fn deliver(&self, _: &AlertEvent) -> Result<(), PluginError> {
            match self.mode.as_str() {
                "panic" => panic!("boom"),
                "sleep" => std::thread::sleep(Duration::from_millis(800)),
                _ => {
                    let now = IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
                    MAX_IN_FLIGHT.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
                }
            }
            Ok(())
        }
    }

    fn instance(mode: &str, timeout: Duration, max_calls: usize) -> Arc<Instance> {
        let dir = std::env::temp_dir();
        let handle = FakeHost::default()
            .instantiate::<TestSink>(mode, &dir)
            .unwrap();
        Arc::new(Instance {
            name: "t".into(),
            plugin: "test-sink".into(),
            plugin_version: "1.0.0".into(),
            kinds: PluginKinds::ALERT_SINK,
            file: PathBuf::from("t.so"),
            lib_hash: "h".into(),
            config_toml: mode.into(),
            handle: Arc::new(handle),
            slots: Arc::new(Semaphore::new(max_calls)),
            max_calls,
            timeout,
            quarantine: Mutex::new(None),
            shut_down: AtomicBool::new(false),
            hung: AtomicBool::new(false),
            link: None,
            status_changed: Arc::default(),
        })
    }

    async fn deliver(i: &Arc<Instance>) -> Result<(), PluginCallError> {
        let e = sample_alert("m");
        i.call("deliver", move |p| p.deliver_alert(&e)).await
    }

    #[tokio::test]
    async fn a_panic_is_an_error_and_quarantines_the_instance() {
        let i = instance("panic", Duration::from_secs(5), 2);
        let err = deliver(&i).await.unwrap_err();
        assert!(matches!(err, PluginCallError::Plugin { .. }), "{err}");
        assert!(i.quarantined().unwrap().contains("boom"));
        let err = deliver(&i).await.unwrap_err();
        assert!(matches!(err, PluginCallError::Quarantined { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_call_that_does_not_return_in_time_quarantines_the_instance() {
        let i = instance("sleep", Duration::from_millis(100), 2);
        let err = deliver(&i).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("did not return from deliver within 100 ms"),
            "{err}"
        );
        assert!(i.quarantined().is_some());
        // Shutdown skips an instance that may still be stuck inside the plugin.
        i.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_into_one_instance_are_bounded() {
        let i = instance("count", Duration::from_secs(10), 2);
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let i = i.clone();
                tokio::spawn(async move { deliver(&i).await })
            })
            .collect();
        for c in calls {
            c.await.unwrap().unwrap();
        }
        let max = MAX_IN_FLIGHT.load(Ordering::SeqCst);
        assert!((1..=2).contains(&max), "{max} calls at once");
    }
}
