//! The plugin host: loads plugin libraries (see `vprov_sdk`), creates the configured
//! instances, routes work to them and keeps the core safe from them.
//!
//! - [`loader`] finds and loads libraries (ABI and version checks, load-by-copy);
//! - [`instances`] reads the instance configuration (`plugins.toml`);
//! - [`services`] is what a plugin may call back into;
//! - [`sinks`] fans alerts out to alert sinks through bounded queues;
//! - [`export`] routes key exports to the exporter offering a format;
//! - [`watch`] reloads on changes to the plugin directory or configuration.
//!
//! Invariants: **no async worker ever blocks on a plugin** (every call runs on the
//! blocking pool, with a timeout and a per-instance concurrency bound); **a broken
//! plugin never stops the core** (load failures are reported and skipped; an instance
//! that panics or hangs is quarantined with an alert); **a reload never leaves fewer
//! working instances than before because of a bad change** (a new library or
//! configuration that fails keeps the previous instance running).

pub mod export;
pub mod instances;
pub mod loader;
pub mod services;
pub mod sinks;
pub mod watch;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, RResult, RStr};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::time::{timeout_at, Instant};
use vprov_sdk::abi::{HostServicesBox, InitContext, PluginInstanceBox};
use vprov_sdk::{ActionOutcome, DeviceInfo, ErrorKind, OutcomeAction, PluginError, PluginKinds};

use crate::alerts::AlertLog;
use crate::alerts::{AlertSinks, SinkQueue};
use crate::store::{ManagementMode, NewAlert, Severity};
use crate::store_thread::StoreHandle;
use instances::InstanceSpec;
use loader::{LibraryStatus, LoadedLibrary, Loader};
use services::CoreServices;
use sinks::start_sink;

/// Creates `dir` and missing parents, mode 0700 on Unix whatever the umask; the
/// permission bits `dir` has (`None` where there are none).
fn create_0700(dir: &Path) -> std::io::Result<Option<u32>> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700).create(dir)?;
        Ok(Some(std::fs::metadata(dir)?.permissions().mode() & 0o777))
    }
    #[cfg(not(unix))]
    builder.create(dir).map(|()| None)
}

/// Creates `dir` and missing parents for vprov alone (mode 0700). An existing `dir`
/// that other users may use is narrowed to 0700 (logged).
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    if let Some(mode) = create_0700(dir)?.filter(|m| m & 0o077 != 0) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        tracing::warn!(
            "{} was open to other users (mode {mode:03o}); it is 0700 now",
            dir.display()
        );
    }
    #[cfg(not(unix))]
    create_0700(dir)?;
    Ok(())
}

/// Creates a plugin directory outside the data directory (mode 0700), or warns if an
/// existing one is writable by other users; its permissions stay the admin's.
fn checked_plugin_dir(dir: &Path) -> std::io::Result<()> {
    if let Some(mode) = create_0700(dir)?.filter(|m| m & 0o022 != 0) {
        tracing::warn!(
            "the plugin directory {} is writable by other users (mode {mode:03o}): they \
             can put code into vprov's process; make it writable by its owner only",
            dir.display()
        );
    }
    Ok(())
}

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

/// Why an agent could not be deployed.
#[derive(Debug, thiserror::Error)]
pub enum AgentDeployError {
    #[error("no agent deployer is configured: add an instance of an agent-deploying plugin (post-agent-ssh) to {config}")]
    NoDeployer { config: String },
    #[error("no agent profile {profile}; configured profiles: {available}")]
    UnknownProfile { profile: String, available: String },
    #[error("several agent deployers are configured ({instances}): name a profile (configured: {available})")]
    Ambiguous {
        instances: String,
        available: String,
    },
    #[error(transparent)]
    Call(#[from] PluginCallError),
}

/// One live plugin instance.
pub struct Instance {
    pub name: String,
    pub plugin: String,
    pub plugin_version: String,
    /// The kinds the core routes to it.
    pub kinds: PluginKinds,
    file: PathBuf,
    lib_hash: String,
    config_toml: String,
    handle: Arc<PluginInstanceBox>,
    slots: Arc<Semaphore>,
    max_calls: usize,
    timeout: Duration,
    quarantine: Mutex<Option<String>>,
    shut_down: AtomicBool,
    /// A call timed out: a thread may still be stuck inside the plugin.
    hung: AtomicBool,
    link: Option<ServerLink>,
    /// Signalled when the instance's status changes (quarantine), so the server's
    /// status snapshot is rewritten.
    status_changed: Arc<tokio::sync::Notify>,
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

    fn quarantine_for(&self, reason: String) {
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

/// What `vprov plugins list` shows about a library.
#[derive(Debug, Clone, Serialize)]
pub struct LibraryReport {
    pub file: String,
    pub name: Option<String>,
    pub version: Option<String>,
    pub kinds: Vec<String>,
    pub sdk_version: Option<String>,
    /// `loaded` or `failed: <why>`.
    pub status: String,
}

/// What `vprov plugins list` shows about an instance.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct InstanceReport {
    pub name: String,
    pub plugin: String,
    pub kinds: Vec<String>,
    /// `active`, `quarantined: <why>` or `failed: <why>`.
    pub status: String,
}

/// The server's status snapshot (`run/plugins-status.json`).
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct StatusSnapshot {
    pub server_pid: u32,
    pub updated_at_ms: i64,
    pub instances: Vec<InstanceReport>,
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
            // A replaced file that fails to load keeps the previous build running.
            if let Some(old) = &old {
                let broken = state.libraries.iter().find_map(|l| match l {
                    LibraryStatus::Failed { file, reason } if file == &old.file => {
                        Some(reason.clone())
                    }
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
            return (Err(reason), old);
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

    /// Libraries as last scanned, for `vprov plugins list`.
    pub async fn library_reports(&self) -> Vec<LibraryReport> {
        let state = self.inner.state.lock().await;
        state
            .libraries
            .iter()
            .map(|l| match l {
                LibraryStatus::Loaded(l) => LibraryReport {
                    file: l.file.display().to_string(),
                    name: Some(l.manifest.name.clone()),
                    version: Some(l.manifest.version.clone()),
                    kinds: l.manifest.kinds.clone(),
                    sdk_version: Some(l.manifest.sdk_version.clone()),
                    status: "loaded".into(),
                },
                LibraryStatus::Failed { file, reason } => LibraryReport {
                    file: file.display().to_string(),
                    name: None,
                    version: None,
                    kinds: Vec::new(),
                    sdk_version: None,
                    status: format!("failed: {reason}"),
                },
            })
            .collect()
    }

    /// Instances (live and failed), for `vprov plugins list`.
    pub async fn instance_reports(&self) -> Vec<InstanceReport> {
        let state = self.inner.state.lock().await;
        instance_reports(&state)
    }

    fn write_status(&self, state: &State) {
        let snapshot = StatusSnapshot {
            server_pid: std::process::id(),
            updated_at_ms: crate::store::now_ms(),
            instances: instance_reports(state),
        };
        let path = HostSettings::status_file(&self.inner.settings.data_dir);
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&snapshot)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                private_dir(path.parent().expect("status file has a parent"))?;
                std::fs::write(&tmp, bytes)?;
                std::fs::rename(&tmp, &path)
            });
        if let Err(e) = written {
            tracing::warn!("cannot write plugin status {}: {e}", path.display());
        }
    }

    /// Refreshes the status snapshot (after a quarantine, say).
    pub async fn refresh_status(&self) {
        if self.inner.settings.publishes_status {
            let state = self.inner.state.lock().await;
            self.write_status(&state);
        }
    }

    /// Runs the post-provision actions for a newly provisioned device, in instance
    /// name order, and applies their outcomes. Provisioning does not wait for this.
    pub fn after_provisioning(&self, device: DeviceInfo) {
        let actions: Vec<Arc<Instance>> = self
            .active()
            .iter()
            .filter(|i| i.kinds.contains(PluginKinds::POST_PROVISION))
            .cloned()
            .collect();
        let Some(link) = self.inner.link.clone() else {
            return;
        };
        if actions.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for action in actions {
                let d = device.clone();
                match action.call("run", move |p| p.after_provisioning(&d)).await {
                    Ok(outcome) => apply_outcome(&link, &action, &device, outcome).await,
                    Err(e) => link.alerts.raise(NewAlert {
                        severity: Severity::Error,
                        source: plugin_source(&action.name).into(),
                        message: format!(
                            "post-provision action failed for device {}: {e}; the device stays where it is",
                            device.uuid
                        ),
                        pid: Some(device.pid.to_string()),
                        device_uuid: Some(device.uuid.to_string()),
                        address: Some(device.address.to_string()),
                    }),
                }
            }
        });
    }
}

impl PluginHost {
    /// Every profile the active agent deployers offer, sorted.
    pub async fn agent_profiles(&self) -> Vec<String> {
        let mut all = Vec::new();
        for deployer in self.active().iter() {
            if !deployer.kinds.contains(PluginKinds::AGENT_DEPLOYER) {
                continue;
            }
            if let Ok(profiles) = deployer
                .call("agent_profiles", |p| {
                    RResult::ROk(
                        p.agent_profiles()
                            .into_iter()
                            .map(|p| p.into_string())
                            .collect::<Vec<_>>(),
                    )
                })
                .await
            {
                all.extend(profiles);
            }
        }
        all.sort_unstable();
        all
    }

    /// Deploys a management agent to `device` under `profile` (or, with none, the
    /// default profile of the only agent deployer), through the deployer instance
    /// offering that profile. The caller applies the outcome.
    pub async fn deploy_agent(
        &self,
        device: DeviceInfo,
        profile: Option<String>,
    ) -> Result<ActionOutcome, AgentDeployError> {
        let deployers: Vec<Arc<Instance>> = self
            .active()
            .iter()
            .filter(|i| i.kinds.contains(PluginKinds::AGENT_DEPLOYER))
            .cloned()
            .collect();
        if deployers.is_empty() {
            return Err(AgentDeployError::NoDeployer {
                config: self.inner.settings.config_path.display().to_string(),
            });
        }
        let mut offered: Vec<(Arc<Instance>, Vec<String>)> = Vec::new();
        for deployer in deployers {
            let profiles = deployer
                .call("agent_profiles", |p| {
                    RResult::ROk(
                        p.agent_profiles()
                            .into_iter()
                            .map(|p| p.into_string())
                            .collect(),
                    )
                })
                .await?;
            offered.push((deployer, profiles));
        }
        let available = || {
            let mut all: Vec<&str> = offered
                .iter()
                .flat_map(|(_, p)| p.iter().map(String::as_str))
                .collect();
            all.sort_unstable();
            if all.is_empty() {
                "none".to_string()
            } else {
                all.join(", ")
            }
        };
        let deployer = match &profile {
            Some(name) => match offered.iter().find(|(_, p)| p.contains(name)) {
                Some((deployer, _)) => deployer.clone(),
                None => {
                    return Err(AgentDeployError::UnknownProfile {
                        profile: name.clone(),
                        available: available(),
                    })
                }
            },
            None if offered.len() == 1 => offered[0].0.clone(),
            None => {
                return Err(AgentDeployError::Ambiguous {
                    instances: offered
                        .iter()
                        .map(|(i, _)| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    available: available(),
                })
            }
        };
        let outcome = deployer
            .call("deploy_agent", move |p| {
                p.deploy_agent(&device, profile.as_deref().map(RStr::from).into())
            })
            .await?;
        Ok(outcome)
    }
}

impl PluginHost {
    /// Deploys an agent to `device` and, on success, moves it to managed (agent) with
    /// the profile deployed, audited as `actor`; returns that profile. A failure is
    /// raised as an alert (source `agent`) naming the step, and the device stays
    /// where it was. Needs a host with a store link.
    pub async fn deploy_and_manage(
        &self,
        device: crate::store::DeviceRecord,
        profile: Option<String>,
        actor: &str,
    ) -> Result<Option<String>, String> {
        let Some(link) = self.inner.link.clone() else {
            return Err("agent deployment needs vprov's store".into());
        };
        let uuid = device.uuid.clone();
        let info = services::device_info(device.clone());
        let deployed = match self.deploy_agent(info, profile).await {
            Ok(o) if o.action == OutcomeAction::MANAGE_WITH_AGENT => {
                let deployed = o.profile.as_ref().map(|p| p.to_string()).into_option();
                let detail = serde_json::json!({ "message": o.message.as_str() });
                let (u, p, actor) = (uuid.clone(), deployed.clone(), actor.to_string());
                link.store
                    .call(move |s| {
                        s.set_device_management(
                            &[&u],
                            Some(ManagementMode::Agent),
                            p.as_deref(),
                            &actor,
                            detail,
                        )
                    })
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
                    .map(|()| deployed)
            }
            Ok(o) => Err(format!(
                "the deployer did not deploy an agent: {}",
                o.message
            )),
            Err(e) => Err(e.to_string()),
        };
        deployed.map_err(|e| {
            let message = format!(
                "agent deployment to device {uuid} failed: {e}; the device stays {}",
                device.state.as_str()
            );
            link.alerts.raise(NewAlert {
                severity: Severity::Error,
                source: "agent".into(),
                message: message.clone(),
                pid: device.provisioned_pid.clone(),
                device_uuid: Some(uuid.clone()),
                address: device.address.clone(),
            });
            message
        })
    }
}

fn instance_reports(state: &State) -> Vec<InstanceReport> {
    let mut reports: Vec<InstanceReport> = state
        .instances
        .values()
        .map(|i| InstanceReport {
            name: i.name.clone(),
            plugin: format!("{} {}", i.plugin, i.plugin_version),
            kinds: i.kinds.names(),
            status: match i.quarantined() {
                Some(reason) => format!("quarantined: {reason}"),
                None => "active".into(),
            },
        })
        .collect();
    for (name, reason) in &state.failed {
        let plugin = state
            .specs
            .iter()
            .find(|s| &s.name == name)
            .map(|s| s.plugin.clone())
            .unwrap_or_default();
        reports.push(InstanceReport {
            name: name.clone(),
            plugin,
            kinds: Vec::new(),
            status: format!("failed: {reason}"),
        });
    }
    reports.sort_by(|a, b| a.name.cmp(&b.name));
    reports
}

async fn apply_outcome(
    link: &ServerLink,
    action: &Instance,
    device: &DeviceInfo,
    outcome: ActionOutcome,
) {
    let mode = match outcome.action {
        OutcomeAction::KEEP_UNMANAGED => {
            tracing::info!(instance = %action.name, device = %device.uuid, "post-provision action: {}", outcome.message);
            return;
        }
        OutcomeAction::MANAGE_AGENTLESS => ManagementMode::Agentless,
        OutcomeAction::MANAGE_WITH_AGENT => ManagementMode::Agent,
        other => {
            link.alerts.raise(NewAlert {
                severity: Severity::Error,
                source: plugin_source(&action.name).into(),
                message: format!(
                    "post-provision action returned an unknown outcome ({}) for device {}; ignored",
                    other.0, device.uuid
                ),
                pid: None,
                device_uuid: Some(device.uuid.to_string()),
                address: None,
            });
            return;
        }
    };
    let uuid = device.uuid.to_string();
    let actor = plugin_source(&action.name);
    let profile = outcome
        .profile
        .as_ref()
        .map(|p| p.to_string())
        .into_option();
    let detail = serde_json::json!({ "message": outcome.message.as_str() });
    match link
        .store
        .call(move |s| {
            s.set_device_management(&[&uuid], Some(mode), profile.as_deref(), &actor, detail)
        })
        .await
    {
        Ok(Ok(())) => tracing::info!(instance = %action.name, device = %device.uuid,
            mode = mode.as_str(), "device moved to managed by a post-provision action"),
        Ok(Err(e)) => tracing::error!("cannot apply post-provision outcome: {e}"),
        Err(_) => {}
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
