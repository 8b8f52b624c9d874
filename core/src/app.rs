//! The composition root of `vprov serve`: turns the configuration (and the command
//! line's overrides) into every component's settings, and wires the running server
//! together — store thread, alert log, plugin host, provisioning jobs, reachability
//! check, admin API, hello listener — and takes it down in order on shutdown.
//!
//! This is the one module that knows every other; nothing but the command line
//! imports it. The device port and the device timeouts are derived here, once
//! ([`reach`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vprov_sdk::PluginKinds;

use crate::alerts::{AlertLog, AlertSinks, AlertWriter};
use crate::api::{ApiSettings, ApiState};
use crate::ca::{CaError, CertificateAuthority};
use crate::config::{AdminPasswordPolicy, AlertsConfig, Config};
use crate::device::DeviceTimeouts;
use crate::management::Reach;
use crate::plugins::{HostSettings, PluginHost, ServerLink};
use crate::server::hello_listener::{HelloLimits, HelloListener};
use crate::server::jobs::{JobManager, JobSettings};
use crate::server::limits;
use crate::server::lock::{ServeLock, ServeLockError};
use crate::server::metrics_endpoint;
use crate::server::pki_expiry;
use crate::server::reachability::{self, ReachabilitySettings};
use crate::store::{Store, StoreError, StoreOptions};
use crate::store_thread::StoreHandle;

/// What the command line may override of the configuration.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// This node's name (else `cluster.node`).
    pub node: Option<String>,
    /// Where hellos are received (else `hello.listen`).
    pub hello_listen: Option<SocketAddr>,
    /// The devices' TLS / TLS-PSK port (else `provisioning.device_port`).
    pub device_port: Option<u16>,
    /// `Some(None)` turns the admin API off, `Some(Some(addr))` moves it (else
    /// `api.listen`).
    pub api_listen: Option<Option<SocketAddr>>,
    /// The same for `/metrics` (else `metrics.listen`).
    pub metrics_listen: Option<Option<SocketAddr>>,
}

/// Everything the running server needs besides its listeners.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub hello: HelloLimits,
    pub jobs: JobSettings,
    /// How long shutdown waits for running jobs (abandoned safely after it) and for
    /// admin API requests in progress (cut off after it).
    pub shutdown_grace: Duration,
    pub plugins: HostSettings,
    /// The periodic reachability check of managed devices; `None` turns it off.
    pub reachability: Option<ReachabilitySettings>,
    /// The admin API and console; `None` turns it off.
    pub api: Option<ApiSettings>,
    /// Alert retention and how often repeats are passed on.
    pub alerts: AlertsConfig,
    /// Days before a provisioning chain's expiry it is warned about (`[pki]`).
    pub pki_expiry_warning_days: u32,
    /// This server as a node on its store (`[cluster]`).
    pub node: NodeSettings,
}

/// This server as one of possibly several nodes on one store.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// Its name in logs and in the store's claims.
    pub name: Arc<str>,
    /// Whether it was given one (`--node`, `[cluster] node`): only named nodes may
    /// share a data directory.
    pub named: bool,
    /// How long its claims last unless renewed.
    pub lease: Duration,
}

/// This node's name: the one given, else `<host name>-<8 hex digits>` naming the
/// data directory (the host name's characters outside a node name's replaced). The
/// default is the same at every start on one data directory, so a server restarted
/// after a crash takes its own claims back at once instead of waiting out its
/// earlier run's leases.
pub fn node_settings(config: &Config, node: Option<&str>) -> NodeSettings {
    let given = node.or(config.cluster.node.as_deref());
    let name = given.map(str::to_string).unwrap_or_else(|| {
        use sha2::Digest;
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "vprov".into());
        let host: String = host
            .chars()
            .take(40)
            .map(|c| match c {
                'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
                _ => '-',
            })
            .collect();
        let dir = std::fs::canonicalize(&config.data_dir).unwrap_or(config.data_dir.clone());
        let digest = sha2::Sha256::digest(dir.as_os_str().as_encoded_bytes());
        format!("{host}-{}", hex::encode(&digest[..4]))
    });
    NodeSettings {
        name: name.into(),
        named: given.is_some(),
        lease: config.cluster.lease,
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Lock(#[from] ServeLockError),
    #[error("loading or creating vprov's certificate authority")]
    Ca(#[source] CaError),
    #[error("cannot listen for hellos on {addr}")]
    BindHello {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen for the admin API on {addr}")]
    BindApi {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot offer the admin API over TLS: {0}")]
    ApiTls(#[from] crate::api::tls::ApiTlsError),
    #[error("cannot listen for metrics scrapes on {addr}")]
    BindMetrics {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the metrics bearer token file {path}")]
    MetricsToken {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the metrics bearer token ({0}) is empty")]
    EmptyMetricsToken(String),
}

/// How vprov reaches a provisioned device: the one place the device port and the
/// device timeouts come from the configuration.
pub fn reach(config: &Config, device_port: Option<u16>) -> Reach {
    let prov = &config.provisioning;
    Reach {
        device_port: device_port.unwrap_or(prov.device_port),
        timeouts: DeviceTimeouts {
            connect: prov.connect_timeout,
            request: prov.step_timeout,
        },
    }
}

/// The plugin host's settings for `kinds` (a one-shot command's host; the server's
/// also publishes its status).
pub fn host_settings(config: &Config, kinds: PluginKinds) -> HostSettings {
    HostSettings {
        publishes_status: false,
        plugin_dir: config.plugin_dir(),
        config_path: config.plugin_config(),
        data_dir: config.data_dir.clone(),
        call_timeout: config.plugins.call_timeout,
        max_calls_per_instance: config.plugins.max_calls_per_instance,
        sink_queue: config.plugins.sink_queue,
        kinds,
    }
}

/// The server's settings from the configuration and the command line.
pub fn server_settings(
    config: &Config,
    store_options: StoreOptions,
    overrides: &Overrides,
) -> ServerSettings {
    let node = node_settings(config, overrides.node.as_deref());
    let hello = &config.hello;
    let prov = &config.provisioning;
    let reach = reach(config, overrides.device_port);
    let api_on = overrides.api_listen.unwrap_or(config.api.listen).is_some();
    ServerSettings {
        hello: HelloLimits {
            max_connections: hello.max_connections,
            read_timeout: hello.read_timeout,
            per_source_burst: hello.per_source_burst,
            per_source_per_second: hello.per_source_per_second,
        },
        jobs: JobSettings {
            device_port: reach.device_port,
            max_concurrent: prov.max_concurrent_jobs,
            limited_by: crate::metrics::Limit::MaxConcurrentJobs,
            timeouts: reach.timeouts,
            commit_wait: prov.commit_wait,
            confirm_timeout: prov.confirm_timeout,
            keep_provisioning_password: prov.admin_password == AdminPasswordPolicy::Provisioning,
            domain: prov.domain.clone(),
            host_name_template: prov.host_name_template.clone(),
            local_tls: prov.local_tls,
            retry_backoff: prov.retry_backoff,
            retry_backoff_max: prov.retry_backoff_max,
            pki: config.pki.domains.clone(),
            node: node.name.clone(),
            lease: node.lease,
        },
        shutdown_grace: prov.shutdown_grace,
        reachability: config
            .management
            .check_interval
            .map(|interval| ReachabilitySettings {
                interval,
                device_port: reach.device_port,
                timeouts: reach.timeouts,
                node: node.name.clone(),
            }),
        plugins: HostSettings {
            publishes_status: true,
            ..host_settings(
                config,
                PluginKinds::KEY_EXPORTER
                    .union(PluginKinds::ALERT_SINK)
                    .union(PluginKinds::POST_PROVISION)
                    .union(PluginKinds::AGENT_DEPLOYER),
            )
        },
        api: api_on.then(|| ApiSettings {
            certificate: config.api.certificate.clone(),
            names: config.api.names.clone(),
            session_ttl: config.api.session_ttl,
            event_streams_per_account: config.api.event_streams_per_account,
            expiry_warning_days: config.pki.expiry_warning_days,
            store_options,
            reach,
            export_server: (
                config.export.server_address.clone(),
                config
                    .export
                    .server_port
                    .unwrap_or(config.hello.listen.port()),
            ),
        }),
        alerts: config.alerts,
        pki_expiry_warning_days: config.pki.expiry_warning_days,
        node,
    }
}

/// A server ready to bind: the store is open, the data directory locked to it and
/// the CA exists (clients fetch it to trust the admin API as soon as it listens).
pub struct App {
    /// The store's connections: one on SQLite, `[store] connections` on PostgreSQL.
    stores: Vec<Store>,
    ca: CertificateAuthority,
    settings: ServerSettings,
    hello_listen: SocketAddr,
    api_listen: Option<SocketAddr>,
    /// `/metrics` on its own listener, and the bearer token scrapes must present.
    metrics_listen: Option<SocketAddr>,
    metrics_token: Option<String>,
    /// Held until the server stops: one server per data directory.
    _lock: ServeLock,
    /// Whether no admin account exists yet (the command line says how to add one).
    pub no_account: bool,
}

/// A server whose listeners are bound.
pub struct Bound {
    app: App,
    hello: TcpListener,
    api: Option<TcpListener>,
    metrics: Option<TcpListener>,
}

/// The bearer token `/metrics` asks for: from `[metrics] bearer_token_file`, else
/// `VPROV_METRICS_TOKEN`, else none.
fn metrics_token(config: &Config) -> Result<Option<String>, AppError> {
    let (token, from) = match &config.metrics.bearer_token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| AppError::MetricsToken {
                path: path.clone(),
                source,
            })?;
            (text, path.display().to_string())
        }
        None => match std::env::var("VPROV_METRICS_TOKEN") {
            Ok(text) => (text, "VPROV_METRICS_TOKEN".to_string()),
            Err(_) => return Ok(None),
        },
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        return Err(AppError::EmptyMetricsToken(from));
    }
    Ok(Some(token))
}

/// Raises the file descriptor limit and caps the jobs at what it allows beside the
/// hello connections; says so when the descriptors, not the configuration, decide.
fn fit_jobs_to_descriptors(settings: &mut ServerSettings) {
    let Some(nofile) = limits::raise_nofile() else {
        return;
    };
    crate::metrics::set_max_fds(nofile);
    let configured = settings.jobs.max_concurrent;
    let (cap, limit) = limits::job_cap(configured, nofile, settings.hello.max_connections);
    settings.jobs.max_concurrent = cap;
    settings.jobs.limited_by = limit;
    if limit == crate::metrics::Limit::FileDescriptors {
        tracing::warn!(
            "file descriptors: the limit of {nofile} allows {cap} jobs at once, not the \
             configured max_concurrent_jobs={configured}; raise RLIMIT_NOFILE (ulimit -n, \
             systemd LimitNOFILE=) to run more"
        );
    } else {
        tracing::info!("up to {cap} provisioning jobs at once (file descriptor limit {nofile})");
    }
}

impl App {
    /// Opens the store, locks the data directory and loads or creates the CA.
    pub fn prepare(
        config: &Config,
        store_options: StoreOptions,
        overrides: Overrides,
    ) -> Result<App, AppError> {
        let mut settings = server_settings(config, store_options.clone(), &overrides);
        fit_jobs_to_descriptors(&mut settings);
        let metrics_listen = overrides.metrics_listen.unwrap_or(config.metrics.listen);
        let metrics_token = match metrics_listen {
            Some(_) => metrics_token(config)?,
            None => None,
        };
        let mut store = Store::open(&store_options)?;
        let node = &settings.node;
        let lock = ServeLock::acquire(&config.data_dir, node.named.then_some(&*node.name))?;
        let ca = CertificateAuthority::load_or_create(&mut store).map_err(AppError::Ca)?;
        let no_account = store.admins()?.is_empty();
        if !store.password_status()?.set {
            tracing::warn!(
                "no provisioning password is set: devices cannot be provisioned until `vprov password set`"
            );
        }
        // PostgreSQL: the pool's other connections (module docs of store_thread),
        // opened here, before the async runtime starts (the sync client needs that).
        let pool = match store_options.url {
            Some(_) => config.store_connections,
            None => 1,
        };
        let mut stores = vec![store];
        for _ in 1..pool {
            stores.push(Store::open(&store_options)?);
        }
        Ok(App {
            stores,
            ca,
            settings,
            hello_listen: overrides.hello_listen.unwrap_or(config.hello.listen),
            api_listen: overrides.api_listen.unwrap_or(config.api.listen),
            metrics_listen,
            metrics_token,
            _lock: lock,
            no_account,
        })
    }

    /// Binds the hello listener and, when the API is on, the API's.
    pub async fn bind(self) -> Result<Bound, AppError> {
        let addr = self.hello_listen;
        let hello = crate::server::bind(addr)
            .await
            .map_err(|source| AppError::BindHello { addr, source })?;
        let api = match self.api_listen {
            Some(addr) => Some(
                crate::server::bind(addr)
                    .await
                    .map_err(|source| AppError::BindApi { addr, source })?,
            ),
            None => None,
        };
        let metrics = match self.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| AppError::BindMetrics { addr, source })?,
            ),
            None => None,
        };
        Ok(Bound {
            app: self,
            hello,
            api,
            metrics,
        })
    }
}

impl Bound {
    /// Where hellos are received.
    pub fn hello_addr(&self) -> std::io::Result<SocketAddr> {
        self.hello.local_addr()
    }

    /// Where the admin API listens, when it is on.
    pub fn api_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.api.as_ref().map(TcpListener::local_addr).transpose()
    }

    /// Whether no admin account exists yet.
    pub fn no_account(&self) -> bool {
        self.app.no_account
    }

    /// Where `/metrics` is served, when it is on.
    pub fn metrics_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.metrics
            .as_ref()
            .map(TcpListener::local_addr)
            .transpose()
    }

    /// Runs the server until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), AppError> {
        let Bound {
            app,
            hello,
            api,
            metrics,
        } = self;
        let metrics = metrics.map(|l| (l, app.metrics_token));
        let listeners = Listeners {
            hello,
            api,
            metrics,
        };
        run(app.stores, app.ca, listeners, app.settings, shutdown).await
    }
}

/// The server's bound listeners.
pub struct Listeners {
    pub hello: TcpListener,
    /// The admin API's, when it is on.
    pub api: Option<TcpListener>,
    /// `/metrics` and its bearer token, when it is on.
    pub metrics: Option<(TcpListener, Option<String>)>,
}

/// Runs the server on already-bound listeners (hello, and admin API and metrics when
/// they are on) and connections to its store until `shutdown` resolves.
pub async fn run(
    stores: Vec<Store>,
    ca: CertificateAuthority,
    listeners: Listeners,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AppError> {
    let api_listener = listeners.api;
    let ca = Arc::new(ca);
    let api_tls = match (&settings.api, &api_listener) {
        (Some(api), Some(l)) => Some(api_tls(api, &ca, l)?),
        _ => None,
    };
    let ca_der: Arc<[u8]> = ca.cert_der().into();
    let store = StoreHandle::spawn_pool(stores);
    let sinks = AlertSinks::default();
    sinks.report_depths();
    let node = settings.node.name.clone();
    tracing::info!(node = %node, lease_ms = settings.node.lease.as_millis() as u64, "serving as node");
    let (alerts, alert_writer) =
        AlertLog::start(store.clone(), sinks.clone(), settings.alerts, node.clone());
    let (stop_tx, stop_rx) = watch::channel(false);

    let plugins = start_plugins(&settings, &store, &alerts, sinks, &stop_rx).await;
    let jobs = JobManager::new(
        settings.jobs.clone(),
        store.clone(),
        alerts.clone(),
        ca,
        Some(plugins.host.clone()),
    );
    jobs.resume_pending().await;
    let leases = tokio::spawn(jobs.clone().keep_leases());

    let (expiry, checking) = spawn_periodic(&settings, &store, &alerts, ca_der, node, &stop_rx);
    let api = spawn_api(
        &settings,
        api_listener,
        api_tls,
        &store,
        &alerts,
        &plugins.host,
        &stop_rx,
    );
    if let Some((l, token)) = listeners.metrics {
        // Ends by itself on stop; a scrape in progress is cut off with the process.
        tokio::spawn(metrics_endpoint::serve(
            l,
            token,
            store.clone(),
            stop_rx.clone(),
        ));
    }
    let hello = HelloListener::new(
        listeners.hello,
        settings.hello.clone(),
        store,
        alerts,
        jobs.clone(),
    );
    let listening = tokio::spawn(hello.run(stop_rx));

    shutdown.await;
    Running {
        stop: stop_tx,
        listening,
        leases,
        expiry,
        checking,
        api,
        jobs,
        plugins,
        alert_writer,
    }
    .stop(settings.shutdown_grace)
    .await;
    Ok(())
}

/// Starts the periodic work: PKI expiry warnings, and the reachability check when it
/// is on (each round taken by one node of several).
fn spawn_periodic(
    settings: &ServerSettings,
    store: &StoreHandle,
    alerts: &AlertLog,
    ca_der: Arc<[u8]>,
    node: Arc<str>,
    stop: &watch::Receiver<bool>,
) -> (JoinHandle<()>, Option<JoinHandle<()>>) {
    let expiry = tokio::spawn(pki_expiry::run(
        store.clone(),
        alerts.clone(),
        settings.pki_expiry_warning_days,
        node,
        stop.clone(),
    ));
    let checking = settings.reachability.clone().map(|r| {
        let (store, alerts, stop) = (store.clone(), alerts.clone(), stop.clone());
        tokio::spawn(reachability::run(store, alerts, ca_der, r, stop))
    });
    (expiry, checking)
}

/// Starts serving the admin API when it is on (settings, listener and TLS).
fn spawn_api(
    settings: &ServerSettings,
    api_listener: Option<TcpListener>,
    api_tls: Option<Arc<rustls::ServerConfig>>,
    store: &StoreHandle,
    alerts: &AlertLog,
    plugins: &PluginHost,
    stop: &watch::Receiver<bool>,
) -> Option<JoinHandle<()>> {
    let (Some(api_settings), Some(api_listener), Some(tls)) =
        (settings.api.clone(), api_listener, api_tls)
    else {
        return None;
    };
    let state = ApiState::new(
        api_settings,
        store.clone(),
        alerts.clone(),
        plugins.clone(),
        stop.clone(),
    );
    let grace = settings.shutdown_grace;
    let serving = crate::api::serve(api_listener, tls, Arc::new(state), stop.clone(), grace);
    Some(tokio::spawn(serving))
}

/// The running server's parts, taken down in order by [`Running::stop`].
struct Running {
    stop: watch::Sender<bool>,
    listening: JoinHandle<()>,
    leases: JoinHandle<()>,
    expiry: JoinHandle<()>,
    checking: Option<JoinHandle<()>>,
    api: Option<JoinHandle<()>>,
    jobs: JobManager,
    plugins: Plugins,
    alert_writer: AlertWriter,
}

impl Running {
    /// Stops accepting hellos and API connections, waits up to `grace` for running
    /// jobs and API requests, then stops the plugins and flushes the alert log.
    async fn stop(self, grace: Duration) {
        tracing::info!(
            "shutting down: no new hellos or API connections; waiting for running jobs and API requests"
        );
        let _ = self.stop.send(true);
        let _ = self.listening.await;
        let _ = self.expiry.await;
        if let Some(checking) = self.checking {
            let _ = checking.await;
        }
        // Both within the one grace period.
        let api_done = async {
            if let Some(api) = self.api {
                let _ = api.await;
            }
        };
        tokio::join!(api_done, self.jobs.shutdown(grace));
        // After the jobs: their leases were renewed while they ran. Jobs abandoned
        // after the grace period keep their intents; their claims expire.
        self.leases.abort();
        self.plugins.host.shutdown().await;
        drop(self.plugins.watcher);
        self.alert_writer.finish(Duration::from_secs(5)).await;
    }
}

/// The admin API's TLS configuration for the address `listener` is bound to.
fn api_tls(
    api: &ApiSettings,
    ca: &CertificateAuthority,
    listener: &TcpListener,
) -> Result<Arc<rustls::ServerConfig>, AppError> {
    let local = listener
        .local_addr()
        .map_err(|e| crate::api::tls::ApiTlsError::Read {
            path: "the API listener".into(),
            source: e,
        })?;
    let certificate = api
        .certificate
        .as_ref()
        .map(|(c, k)| (c.as_path(), k.as_path()));
    Ok(crate::api::tls::server_config(
        certificate,
        ca,
        local,
        &api.names,
    )?)
}

/// The server's plugin host and the watcher that reloads it.
struct Plugins {
    host: PluginHost,
    /// Kept alive until shutdown; without it plugins still work, only hot reload is
    /// off.
    watcher: Option<(notify::RecommendedWatcher, tokio::task::JoinHandle<()>)>,
}

/// Creates the plugin host, loads the configured instances and starts hot reload.
async fn start_plugins(
    settings: &ServerSettings,
    store: &StoreHandle,
    alerts: &AlertLog,
    sinks: AlertSinks,
    stop: &watch::Receiver<bool>,
) -> Plugins {
    let host = PluginHost::new(
        settings.plugins.clone(),
        Some(ServerLink {
            alerts: alerts.clone(),
            store: store.clone(),
            runtime: tokio::runtime::Handle::current(),
        }),
        sinks,
    );
    settings.plugins.prepare_directories();
    host.reload().await;
    host.remove_stale_copies().await;
    let watcher = match crate::plugins::watch::start(host.clone(), stop.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                "plugin hot reload is off: cannot watch the plugin directory or configuration: {e}"
            );
            None
        }
    };
    Plugins { host, watcher }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command line's overrides win over the configuration, and every
    /// component gets the same device port and timeouts.
    #[test]
    fn overrides_win_and_the_device_port_is_shared() {
        let mut config = Config::default();
        config.management.check_interval = Some(Duration::from_secs(60));
        let options = StoreOptions {
            data_dir: config.data_dir.clone(),
            key: None,
            busy_timeout: config.busy_timeout,
            url: None,
        };
        let plain = server_settings(&config, options.clone(), &Overrides::default());
        assert_eq!(plain.jobs.device_port, config.provisioning.device_port);
        assert_eq!(plain.api.is_some(), config.api.listen.is_some());
        let moved = server_settings(
            &config,
            options,
            &Overrides {
                device_port: Some(1234),
                api_listen: Some(None),
                node: Some("b".into()),
                hello_listen: None,
                metrics_listen: None,
            },
        );
        assert_eq!(moved.jobs.device_port, 1234);
        assert_eq!(moved.reachability.as_ref().unwrap().device_port, 1234);
        assert!(moved.api.is_none());
        assert_eq!((&*moved.node.name, moved.node.named), ("b", true));
        assert!(!plain.node.named);
        assert!(plain.plugins.publishes_status);
        assert_eq!(
            reach(&config, Some(1234)).timeouts.connect,
            config.provisioning.connect_timeout
        );
        // Unnamed: the same name at every start on one data directory, another on
        // another.
        assert_eq!(node_settings(&config, None).name, plain.node.name);
        config.data_dir = "/elsewhere".into();
        assert_ne!(node_settings(&config, None).name, plain.node.name);
    }
}
