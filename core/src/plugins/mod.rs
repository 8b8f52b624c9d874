//! The plugin host: loads plugin libraries (see `vprov_sdk`), creates the configured
//! instances, routes work to them and keeps the core safe from them.
//!
//! - [`loader`] finds and loads libraries (ABI and version checks, load-by-copy);
//! - [`instances`] reads the instance configuration (`plugins.toml`);
//! - [`services`] is what a plugin may call back into;
//! - `call_guard` runs every call into an instance (timeout, concurrency bound,
//!   quarantine);
//! - `agents` runs post-provision actions and agent deployment and applies their
//!   outcomes;
//! - `status` reports libraries and instances (`vprov plugins list`, the server's
//!   status snapshot);
//! - `dirs` creates the host's directories for vprov alone;
//! - [`sinks`] delivers each alert sink's queue of the alert fan-out;
//! - [`export`] routes key exports to the exporter offering a format;
//! - [`watch`] reloads on changes to the plugin directory or configuration.
//!
//! Invariants: **no async worker ever blocks on a plugin** (every call runs on the
//! blocking pool, with a timeout and a per-instance concurrency bound); **a broken
//! plugin never stops the core** (load failures are reported and skipped; an instance
//! that panics or hangs is quarantined with an alert); **a reload never leaves fewer
//! working instances than before because of a bad change** (a new library or
//! configuration that fails keeps the previous instance running).
//!
//! This file holds the registry: [`PluginHost`] creates, replaces and retires
//! instances on reload.

mod agents;
mod call_guard;
mod dirs;
pub mod export;
pub mod instances;
pub mod loader;
pub mod services;
pub mod sinks;
mod status;
pub mod watch;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::RArc;
use tokio::sync::Semaphore;
use vprov_sdk::abi::{HostServicesBox, InitContext};
use vprov_sdk::PluginKinds;

use crate::alerts::AlertLog;
use crate::alerts::{AlertSinks, SinkQueue};
use crate::store::{NewAlert, Severity};
use crate::store_thread::StoreHandle;
pub use agents::AgentDeployError;
pub use call_guard::{Instance, PluginCallError};
use dirs::{checked_plugin_dir, private_dir};
use instances::InstanceSpec;
use loader::{LibraryStatus, LoadedLibrary, Loader};
use services::CoreServices;
use sinks::start_sink;
pub use status::{InstanceReport, LibraryReport, StatusSnapshot};

/// The alert source of everything a plugin instance raises (or the core raises about
/// it); such alerts are never delivered back to that instance.
pub fn plugin_source(instance: &str) -> String {
    format!("plugin:{instance}")
}

/// Where plugins live and how they are called.
#[derive(Debug, Clone)]
pub struct HostSettings {
    pub plugin_dir: PathBuf,
    pub config_path: PathBuf,
    /// Instance data directories are `<data_dir>/plugin-data/<instance>`.
    pub data_dir: PathBuf,
    pub call_timeout: Duration,
    pub max_calls_per_instance: usize,
    pub sink_queue: usize,
    /// Kinds to instantiate: everything for the server, exporters for the CLI.
    pub kinds: PluginKinds,
    /// Whether this host writes the status snapshot `vprov plugins list` reads: the
    /// server's does; a one-shot command's must not overwrite it.
    pub publishes_status: bool,
}

impl HostSettings {
    fn run_dir(&self) -> PathBuf {
        self.data_dir.join("run").join("plugins")
    }

    /// Creates the directories the host uses, mode 0700 whatever the umask (server
    /// start). Those in the data directory that other users could use are narrowed to
    /// 0700; a plugin directory configured elsewhere is only checked, since anyone who
    /// can write to it can put code into vprov's process. Problems are logged.
    pub fn prepare_directories(&self) {
        let data = |name: &str| self.data_dir.join(name);
        for dir in [data("run"), self.run_dir(), data("plugin-data")] {
            if let Err(e) = private_dir(&dir) {
                tracing::warn!("cannot create {} (mode 0700): {e}", dir.display());
            }
        }
        let plugins = &self.plugin_dir;
        let prepared = if plugins.starts_with(&self.data_dir) {
            private_dir(plugins)
        } else {
            checked_plugin_dir(plugins)
        };
        if let Err(e) = prepared {
            tracing::warn!(dir = %plugins.display(), "cannot create the plugin directory: {e}");
        }
    }

    /// The server's status snapshot, read by `vprov plugins list`.
    pub fn status_file(data_dir: &std::path::Path) -> PathBuf {
        data_dir.join("run").join("plugins-status.json")
    }
}

/// The running server's side of the host: absent in one-shot CLI commands.
#[derive(Clone)]
pub struct ServerLink {
    pub alerts: AlertLog,
    pub store: StoreHandle,
    pub runtime: tokio::runtime::Handle,
}

struct State {
    loader: Arc<Mutex<Loader>>,
    libraries: Vec<LibraryStatus>,
    /// The last valid instance configuration.
    specs: Vec<InstanceSpec>,
    instances: BTreeMap<String, Arc<Instance>>,
    /// Each alert sink's queue, with the instance its worker delivers to.
    sink_queues: BTreeMap<String, (Arc<Instance>, SinkQueue)>,
    /// Instances that could not be created, and why.
    failed: BTreeMap<String, String>,
    /// Problems already reported, so a reload does not repeat their alerts.
    reported: HashSet<String>,
}

/// The plugin host. Cheap to clone.
#[derive(Clone)]
pub struct PluginHost {
    inner: Arc<Inner>,
}

struct Inner {
    settings: HostSettings,
    link: Option<ServerLink>,
    sinks: AlertSinks,
    state: tokio::sync::Mutex<State>,
    active: RwLock<Arc<Vec<Arc<Instance>>>>,
    status_changed: Arc<tokio::sync::Notify>,
}

impl PluginHost {
    /// A host with no instances yet; [`PluginHost::reload`] loads them. `sinks` is
    /// the router the alert writer publishes to.
    pub fn new(settings: HostSettings, link: Option<ServerLink>, sinks: AlertSinks) -> PluginHost {
        let loader = Loader::new(settings.plugin_dir.clone(), settings.run_dir());
        let host = PluginHost {
            inner: Arc::new(Inner {
                settings,
                link,
                sinks,
                state: tokio::sync::Mutex::new(State {
                    loader: Arc::new(Mutex::new(loader)),
                    libraries: Vec::new(),
                    specs: Vec::new(),
                    instances: BTreeMap::new(),
                    sink_queues: BTreeMap::new(),
                    failed: BTreeMap::new(),
                    reported: HashSet::new(),
                }),
                active: RwLock::new(Arc::new(Vec::new())),
                status_changed: Arc::new(tokio::sync::Notify::new()),
            }),
        };
        if let (Some(link), true) = (&host.inner.link, host.inner.settings.publishes_status) {
            // Rewrites the status snapshot after a quarantine; ends with the host.
            let weak = Arc::downgrade(&host.inner);
            let changed = host.inner.status_changed.clone();
            link.runtime.spawn(async move {
                loop {
                    changed.notified().await;
                    let Some(inner) = weak.upgrade() else { return };
                    PluginHost { inner }.refresh_status().await;
                }
            });
        }
        host
    }

    pub fn settings(&self) -> &HostSettings {
        &self.inner.settings
    }

    /// The instances that currently take calls.
    pub fn active(&self) -> Arc<Vec<Arc<Instance>>> {
        self.inner.active.read().expect("active lock").clone()
    }

    /// Rescans the plugin directory and re-reads the instance configuration, then
    /// creates, replaces or retires only the instances whose library or configuration
    /// changed.
    pub async fn reload(&self) {
        let inner = &self.inner;
        let mut state = inner.state.lock().await;
        Self::scan(&mut state).await;
        let libraries = std::mem::take(&mut state.libraries);
        for lib in &libraries {
            match lib {
                LibraryStatus::Failed { file, reason } => self.report_once(
                    &mut state,
                    format!("{}: {reason}", file.display()),
                    format!("plugin library {} was not loaded: {reason}", file.display()),
                ),
                LibraryStatus::Loaded(l) => {
                    if state.reported.insert(format!("loaded {}", l.hash)) && inner.link.is_some() {
                        tracing::info!(file = %l.file.display(), plugin = %l.manifest.name,
                            version = %l.manifest.version, kinds = ?l.manifest.kinds, "plugin library loaded");
                    }
                }
            }
        }
        state.libraries = libraries;

        match instances::load(&inner.settings.config_path) {
            Ok(specs) => state.specs = specs,
            Err(e) => self.report_once(
                &mut state,
                format!("config {e}"),
                format!("{e}; the current plugin instances keep running"),
            ),
        }

        let desired = self.desired_specs(&state);
        let mut next: BTreeMap<String, Arc<Instance>> = BTreeMap::new();
        let mut failed = BTreeMap::new();
        let mut retired = Vec::new();
        for spec in desired {
            let old = state.instances.remove(&spec.name);
            let (result, replaced) = self.resolve(&mut state, &spec, old).await;
            retired.extend(replaced);
            match result {
                Ok(instance) => {
                    next.insert(spec.name.clone(), instance);
                }
                Err(reason) => {
                    failed.insert(spec.name.clone(), reason);
                }
            }
        }
        // Whatever is left was removed from the configuration.
        retired.extend(std::mem::take(&mut state.instances).into_values());
        state.instances = next;
        state.failed = failed;
        self.publish(&mut state);
        for old in retired {
            tracing::info!(instance = %old.name, "plugin instance retired");
            self.retire(&mut state, old).await;
        }
        if inner.settings.publishes_status {
            self.write_status(&state);
        }
    }

    /// Scans the plugin directory without creating instances (`vprov plugins list`).
    pub async fn scan_libraries(&self) {
        let mut state = self.inner.state.lock().await;
        Self::scan(&mut state).await;
    }

    /// Loading runs the libraries' initializers: keep it off the async workers.
    async fn scan(state: &mut State) {
        let loader = state.loader.clone();
        state.libraries =
            tokio::task::spawn_blocking(move || loader.lock().expect("loader").scan())
                .await
                .unwrap_or_default();
    }

    /// Deletes loaded copies of libraries that are no longer in the plugin directory
    /// (server start; a copy still mapped by another process stays valid for it).
    pub async fn remove_stale_copies(&self) {
        let state = self.inner.state.lock().await;
        let current: HashSet<String> = state
            .libraries
            .iter()
            .filter_map(|l| match l {
                LibraryStatus::Loaded(l) => Some(l.hash.clone()),
                LibraryStatus::Failed { .. } => None,
            })
            .collect();
        let Ok(entries) = std::fs::read_dir(self.inner.settings.run_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let hash = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.rsplit_once('-'))
                .map(|(_, h)| h.to_string());
            if hash.is_none_or(|h| !current.contains(&h)) {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Stops every instance (server shutdown).
    pub async fn shutdown(&self) {
        let mut state = self.inner.state.lock().await;
        let all: Vec<Arc<Instance>> = std::mem::take(&mut state.instances).into_values().collect();
        *self.inner.active.write().expect("active lock") = Arc::new(Vec::new());
        self.inner.sinks.set(Vec::new());
        state.sink_queues.clear();
        for instance in all {
            instance.shutdown().await;
        }
    }

    /// Configured instances plus an implicit one per exporter plugin nobody configured.
    fn desired_specs(&self, state: &State) -> Vec<InstanceSpec> {
        let mut specs = state.specs.clone();
        for lib in &state.libraries {
            let LibraryStatus::Loaded(lib) = lib else {
                continue;
            };
            let name = &lib.manifest.name;
            let configured = specs.iter().any(|s| &s.plugin == name || &s.name == name);
            if lib.manifest.kind_bits.contains(PluginKinds::KEY_EXPORTER) && !configured {
                specs.push(InstanceSpec {
                    name: name.clone(),
                    plugin: name.clone(),
                    config_toml: String::new(),
                    implicit: true,
                    call_timeout: None,
                });
            }
        }
        specs
    }

    /// Keeps, replaces or creates the instance for `spec`; also returns the previous
    /// instance when it is to be retired.
    async fn resolve(
        &self,
        state: &mut State,
        spec: &InstanceSpec,
        old: Option<Arc<Instance>>,
    ) -> (Result<Arc<Instance>, String>, Option<Arc<Instance>>) {
        let lib = state.libraries.iter().find_map(|l| match l {
            LibraryStatus::Loaded(l) if l.manifest.name == spec.plugin => Some(l.clone()),
            _ => None,
        });
        let Some(lib) = lib else {
            return self.without_library(state, spec, old);
        };
        if let Some(old) = &old {
            if old.lib_hash == lib.hash
                && old.config_toml == spec.config_toml
                && old.timeout
                    == spec
                        .call_timeout
                        .unwrap_or(self.inner.settings.call_timeout)
            {
                return (Ok(old.clone()), None);
            }
        }
        match self.instantiate(&lib, spec).await {
            Ok(instance) => {
                if self.inner.link.is_some() {
                    tracing::info!(instance = %spec.name, plugin = %lib.manifest.name,
                        version = %lib.manifest.version,
                        "plugin instance {}", if old.is_some() { "replaced" } else { "started" });
                }
                (Ok(instance), old)
            }
            Err(error) => match old {
                Some(old) => {
                    self.report_once(
                        state,
                        format!("refused {} {} {}", spec.name, lib.hash, spec.config_toml),
                        format!(
                            "plugin instance {}: the new library or configuration was refused ({error}); the previous one keeps running",
                            spec.name
                        ),
                    );
                    (Ok(old), None)
                }
                None => {
                    self.report_once(
                        state,
                        format!("failed {} {} {}", spec.name, lib.hash, spec.config_toml),
                        format!(
                            "plugin instance {} could not be created: {error}",
                            spec.name
                        ),
                    );
                    (Err(error), None)
                }
            },
        }
    }

    /// `resolve` when no loaded library provides `spec`'s plugin: a replaced file
    /// that fails to load keeps the previous build running; otherwise the instance
    /// fails.
    fn without_library(
        &self,
        state: &mut State,
        spec: &InstanceSpec,
        old: Option<Arc<Instance>>,
    ) -> (Result<Arc<Instance>, String>, Option<Arc<Instance>>) {
        if let Some(old) = &old {
            let broken = state.libraries.iter().find_map(|l| match l {
                LibraryStatus::Failed { file, reason } if file == &old.file => Some(reason.clone()),
                _ => None,
            });
            if let Some(reason) = broken {
                self.report_once(
                    state,
                    format!("keep {} {}", old.name, reason),
                    format!(
                        "plugin instance {} keeps running {} {}: the replacement library was refused ({reason})",
                        old.name, old.plugin, old.plugin_version
                    ),
                );
                return (Ok(old.clone()), None);
            }
        }
        let reason = format!("no loaded library provides plugin {}", spec.plugin);
        self.report_once(
            state,
            format!("missing {} {}", spec.name, spec.plugin),
            format!("plugin instance {}: {reason}", spec.name),
        );
        (Err(reason), old)
    }

    async fn instantiate(
        &self,
        lib: &Arc<LoadedLibrary>,
        spec: &InstanceSpec,
    ) -> Result<Arc<Instance>, String> {
        let settings = &self.inner.settings;
        let data_dir = settings.data_dir.join("plugin-data").join(&spec.name);
        private_dir(&data_dir).map_err(|e| {
            format!(
                "cannot create its data directory {}: {e}",
                data_dir.display()
            )
        })?;
        let services = CoreServices {
            instance: spec.name.clone(),
            link: self.inner.link.clone(),
        };
        let context = InitContext {
            instance_name: spec.name.as_str().into(),
            config_toml: spec.config_toml.as_str().into(),
            data_dir: data_dir.to_string_lossy().into_owned().into(),
            host: HostServicesBox::from_ptr(RArc::new(services), TD_Opaque),
        };
        let module = lib.module;
        let task =
            tokio::task::spawn_blocking(move || (module.instantiate())(context).into_result());
        let handle = match tokio::time::timeout(settings.call_timeout, task).await {
            Ok(Ok(Ok(handle))) => handle,
            Ok(Ok(Err(e))) => return Err(e.to_string()),
            Ok(Err(e)) => return Err(format!("crashed while starting: {e}")),
            Err(_) => {
                return Err(format!(
                    "did not finish starting within {} ms",
                    settings.call_timeout.as_millis()
                ))
            }
        };
        let mut kinds = PluginKinds(lib.manifest.kind_bits.0 & settings.kinds.0);
        if spec.implicit {
            kinds = PluginKinds(kinds.0 & PluginKinds::KEY_EXPORTER.0);
        }
        let instance = Arc::new(Instance {
            name: spec.name.clone(),
            plugin: lib.manifest.name.clone(),
            plugin_version: lib.manifest.version.clone(),
            kinds,
            file: lib.file.clone(),
            lib_hash: lib.hash.clone(),
            config_toml: spec.config_toml.clone(),
            handle: Arc::new(handle),
            slots: Arc::new(Semaphore::new(settings.max_calls_per_instance)),
            max_calls: settings.max_calls_per_instance,
            timeout: spec.call_timeout.unwrap_or(settings.call_timeout),
            quarantine: Mutex::new(None),
            shut_down: AtomicBool::new(false),
            hung: AtomicBool::new(false),
            link: self.inner.link.clone(),
            status_changed: self.inner.status_changed.clone(),
        });
        Ok(instance)
    }

    /// Makes `state.instances` the active set and routes alerts to its sinks.
    fn publish(&self, state: &mut State) {
        let active: Vec<Arc<Instance>> = state.instances.values().cloned().collect();
        let mut queues = BTreeMap::new();
        if let Some(link) = &self.inner.link {
            for instance in &active {
                if !instance.kinds.contains(PluginKinds::ALERT_SINK) {
                    continue;
                }
                let queue = match state.sink_queues.remove(&instance.name) {
                    // Same instance as before: keep its queue (and worker).
                    Some((same, q)) if Arc::ptr_eq(&same, instance) => q,
                    _ => start_sink(
                        instance.clone(),
                        self.inner.settings.sink_queue,
                        link.clone(),
                    ),
                };
                queues.insert(instance.name.clone(), (instance.clone(), queue));
            }
        }
        state.sink_queues = queues;
        self.inner
            .sinks
            .set(state.sink_queues.values().map(|(_, q)| q.clone()).collect());
        *self.inner.active.write().expect("active lock") = Arc::new(active);
    }

    async fn retire(&self, state: &mut State, old: Arc<Instance>) {
        // A sink is shut down by its worker once its queue drains; others at once.
        let is_sink = old.kinds.contains(PluginKinds::ALERT_SINK) && self.inner.link.is_some();
        if !is_sink {
            old.shutdown().await;
        }
        state
            .reported
            .retain(|k| !k.starts_with(&format!("keep {} ", old.name)));
    }

    fn report_once(&self, state: &mut State, key: String, message: String) {
        if !state.reported.insert(key) {
            return;
        }
        match &self.inner.link {
            Some(link) => link.alerts.raise(NewAlert {
                severity: Severity::Error,
                source: "plugins".into(),
                message,
                pid: None,
                device_uuid: None,
                address: None,
            }),
            None => tracing::warn!("{message}"),
        }
    }
}
