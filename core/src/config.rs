//! The configuration file (`config/vprov.toml` documents every setting) and the
//! embedded defaults used when no file is given.
//!
//! Precedence, highest first: command-line flag, environment variable, configuration
//! file, embedded default. Unknown keys are errors, so a typo never silently falls
//! back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::host_name::HostNameTemplate;

/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Default time a writer waits for another process's transaction.
pub const DEFAULT_BUSY_TIMEOUT_MS: u64 = 30_000;
/// Default address of the hello listener.
pub const DEFAULT_HELLO_LISTEN: &str = "0.0.0.0:9971";
/// Where the admin API and console listen by default (this machine only).
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:8443";
/// Default port of the device's TLS (and TLS-PSK) service.
pub const DEFAULT_DEVICE_PORT: u16 = 16993;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("configuration file {path}: {key} {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// The file as written: every field optional, unknown fields rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data_dir: Option<PathBuf>,
    #[serde(default)]
    store: StoreSection,
    #[serde(default)]
    hello: HelloSection,
    #[serde(default)]
    provisioning: ProvisioningSection,
    #[serde(default)]
    plugins: PluginsSection,
    #[serde(default)]
    export: ExportSection,
    #[serde(default)]
    management: ManagementSection,
    #[serde(default)]
    api: ApiSection,
    #[serde(default)]
    alerts: AlertsSection,
    #[serde(default)]
    pki: PkiSection,
    #[serde(default)]
    metrics: MetricsSection,
    #[serde(default)]
    log: LogSection,
    #[serde(default)]
    cluster: ClusterSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    listen: Option<String>,
    bearer_token_file: Option<PathBuf>,
}

/// `[metrics]`: the Prometheus `/metrics` endpoint (`docs/metrics.md`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricsConfig {
    /// Where `vprov serve` offers `/metrics` over plain HTTP; `None` turns it off.
    pub listen: Option<SocketAddr>,
    /// A file holding the bearer token scrapers must present (else the environment
    /// variable `VPROV_METRICS_TOKEN`; neither: no token is asked for).
    pub bearer_token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogSection {
    format: Option<LogFormat>,
}

/// How the server log is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the same fields as the text lines.
    Json,
}

/// `[log]`: the server log on standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterSection {
    node: Option<String>,
    lease_ms: Option<u64>,
}

/// `[cluster]`: this server as one of several `vprov serve` nodes on one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's name (`--node` overrides it); `None`: the only server on its data
    /// directory, named after the host and the data directory.
    pub node: Option<String>,
    /// How long a node's claim of a job lasts unless renewed: after a node died,
    /// another takes its jobs over once this has passed.
    pub lease: Duration,
}

/// Checks a node name: 1 to 64 letters, digits, `.`, `_` or `-` (it names a lock
/// file and appears in logs).
pub fn check_node_name(name: &str) -> Result<(), String> {
    let fits = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 64 || !name.chars().all(fits) || name.starts_with('.') {
        return Err(format!(
            "node name {name:?} must be 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"
        ));
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PkiSection {
    default_domain: Option<String>,
    subnets: Option<Vec<String>>,
    reverse_dns: Option<bool>,
    expiry_warning_days: Option<u32>,
}

/// `[pki]`: PKI remote configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiConfig {
    /// How a PKI (hello v3) device's DNS suffix is found, to pick its chain.
    pub domains: crate::pki::select::DomainRules,
    /// Days before a provisioning chain expires that it is warned about.
    pub expiry_warning_days: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertsSection {
    retention_days: Option<u64>,
    max_rows: Option<u64>,
    repeat_notice_minutes: Option<u64>,
}

/// `[alerts]`: how long the alert log keeps alerts, how large it may grow, and how
/// often repeats of one alert are passed on to alert sinks and the server log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertsConfig {
    /// Alerts last seen longer ago than this are deleted; `None` keeps them (then
    /// only `max_rows` bounds the table).
    pub retention: Option<Duration>,
    /// Rows the alert table keeps at most (the newest).
    pub max_rows: u64,
    /// After an alert is passed on, its repeats are passed on again at most once in
    /// this long.
    pub repeat_notice: Duration,
}

impl AlertsConfig {
    /// The store's retention rule.
    pub fn retention(&self) -> crate::store::AlertRetention {
        crate::store::AlertRetention {
            max_age: self.retention,
            max_rows: self.max_rows,
        }
    }
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            retention: Some(Duration::from_secs(90 * 86_400)),
            max_rows: 50_000,
            repeat_notice: Duration::from_secs(15 * 60),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiSection {
    listen: Option<String>,
    certificate_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    names: Option<Vec<String>>,
    session_hours: Option<u64>,
    event_streams_per_account: Option<usize>,
}

/// `[api]`: the admin API and web console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiConfig {
    /// Where `vprov serve` offers it; `None` turns it off.
    pub listen: Option<SocketAddr>,
    /// A certificate chain and key (PEM) replacing the CA-issued certificate.
    pub certificate: Option<(PathBuf, PathBuf)>,
    /// More names for the CA-issued certificate (the host's DNS name, say).
    pub names: Vec<String>,
    /// How long a console session lasts.
    pub session_ttl: Duration,
    /// Event streams (the console's live updates) one account may have open at once.
    pub event_streams_per_account: usize,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManagementSection {
    check_interval_ms: Option<u64>,
}

/// `[management]`: managed devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagementConfig {
    /// Pause between reachability checks of managed devices; `None` turns them off.
    pub check_interval: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginsSection {
    dir: Option<PathBuf>,
    config: Option<PathBuf>,
    call_timeout_ms: Option<u64>,
    max_calls_per_instance: Option<usize>,
    sink_queue: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportSection {
    server_address: Option<String>,
    server_port: Option<u16>,
}

/// `[plugins]`: where plugin libraries and their configuration live, and how the core
/// calls them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginsConfig {
    /// Plugin library directory; `None` means `plugins/` in the data directory.
    pub dir: Option<PathBuf>,
    /// Plugin instance configuration; `None` means `plugins.toml` in the plugin dir.
    pub config: Option<PathBuf>,
    /// How long one call into a plugin may take before the instance is quarantined.
    pub call_timeout: Duration,
    /// Calls into one instance at once.
    pub max_calls_per_instance: usize,
    /// Alerts queued per alert sink before further alerts for it are dropped.
    pub sink_queue: usize,
}

/// `[export]`: what key sheets and key files tell the technician about this server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    /// The provisioning server address technicians enter in MEBx; empty if unset.
    pub server_address: String,
    /// The hello port they enter; `None` means the hello listener's port.
    pub server_port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HelloSection {
    listen: Option<SocketAddr>,
    max_connections: Option<usize>,
    read_timeout_ms: Option<u64>,
    per_source_burst: Option<u32>,
    per_source_per_second: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProvisioningSection {
    device_port: Option<u16>,
    max_concurrent_jobs: Option<usize>,
    connect_timeout_ms: Option<u64>,
    step_timeout_ms: Option<u64>,
    commit_wait_ms: Option<u64>,
    confirm_timeout_ms: Option<u64>,
    admin_password: Option<AdminPasswordPolicy>,
    domain: Option<String>,
    host_name_template: Option<String>,
    local_tls: Option<bool>,
    retry_backoff_ms: Option<u64>,
    retry_backoff_max_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
}

/// Which admin password a provisioned device ends up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdminPasswordPolicy {
    /// A random strong password per device, sealed in the store.
    Random,
    /// Keep the provisioning password.
    Provisioning,
}

/// `[hello]`: the hello listener.
#[derive(Debug, Clone, PartialEq)]
pub struct HelloConfig {
    pub listen: SocketAddr,
    pub max_connections: usize,
    pub read_timeout: Duration,
    pub per_source_burst: u32,
    pub per_source_per_second: f64,
}

/// `[provisioning]`: provisioning jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisioningConfig {
    pub device_port: u16,
    pub max_concurrent_jobs: usize,
    pub connect_timeout: Duration,
    pub step_timeout: Duration,
    pub commit_wait: Duration,
    pub confirm_timeout: Duration,
    pub admin_password: AdminPasswordPolicy,
    pub domain: Option<String>,
    /// The host name given to a device that has none (CommitChanges needs one).
    pub host_name_template: HostNameTemplate,
    /// Enable TLS on the local (LMS) interface as well as the network one.
    pub local_tls: bool,
    /// Wait after a device's job failed before its next hello starts another;
    /// doubles with every further failure of the same kind, up to the maximum.
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreSection {
    busy_timeout_ms: Option<u64>,
    master_key_file: Option<PathBuf>,
    url: Option<String>,
    connections: Option<usize>,
}

/// Store connections of `vprov serve` on PostgreSQL unless configured.
pub const DEFAULT_STORE_CONNECTIONS: usize = 4;

/// A PostgreSQL store URL (`[store] url`). It may hold a password, so it prints
/// redacted (`Debug` too).
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl(String);

impl StoreUrl {
    /// The URL itself, password and all: only for connecting.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::store::redact_url(&self.0))
    }
}

/// The resolved configuration (before command-line and environment overrides,
/// which the binary applies).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Directory holding `vprov.db`, `master.key` and (later) plugins.
    pub data_dir: PathBuf,
    /// How long a writer waits for another process's write transaction.
    pub busy_timeout: Duration,
    /// Master key file; `None` means `master.key` in the data directory.
    pub master_key_file: Option<PathBuf>,
    /// A PostgreSQL store (`[store] url`); `None`: SQLite in the data directory.
    pub store_url: Option<StoreUrl>,
    /// Connections `vprov serve` keeps to a PostgreSQL store, each on a store thread
    /// of its own (`[store] connections`); SQLite always has one.
    pub store_connections: usize,
    pub hello: HelloConfig,
    pub provisioning: ProvisioningConfig,
    pub plugins: PluginsConfig,
    pub export: ExportConfig,
    pub management: ManagementConfig,
    pub api: ApiConfig,
    pub alerts: AlertsConfig,
    pub pki: PkiConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub cluster: ClusterConfig,
}

impl Config {
    /// The plugin library directory.
    pub fn plugin_dir(&self) -> PathBuf {
        self.plugins
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("plugins"))
    }

    /// The plugin instance configuration file.
    pub fn plugin_config(&self) -> PathBuf {
        self.plugins
            .config
            .clone()
            .unwrap_or_else(|| self.plugin_dir().join("plugins.toml"))
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            busy_timeout: Duration::from_millis(DEFAULT_BUSY_TIMEOUT_MS),
            master_key_file: None,
            store_url: None,
            store_connections: DEFAULT_STORE_CONNECTIONS,
            hello: HelloConfig {
                listen: DEFAULT_HELLO_LISTEN.parse().expect("valid default address"),
                max_connections: 1024,
                read_timeout: Duration::from_secs(10),
                per_source_burst: 20,
                per_source_per_second: 2.0,
            },
            provisioning: ProvisioningConfig {
                device_port: DEFAULT_DEVICE_PORT,
                max_concurrent_jobs: 2048,
                connect_timeout: Duration::from_secs(10),
                step_timeout: Duration::from_secs(30),
                commit_wait: Duration::from_secs(5),
                confirm_timeout: Duration::from_secs(60),
                admin_password: AdminPasswordPolicy::Random,
                domain: None,
                host_name_template: HostNameTemplate::default(),
                local_tls: true,
                retry_backoff: Duration::from_secs(60),
                retry_backoff_max: Duration::from_secs(3600),
                shutdown_grace: Duration::from_secs(30),
            },
            plugins: PluginsConfig {
                dir: None,
                config: None,
                call_timeout: Duration::from_secs(10),
                max_calls_per_instance: 4,
                sink_queue: 1024,
            },
            export: ExportConfig {
                server_address: String::new(),
                server_port: None,
            },
            management: ManagementConfig {
                check_interval: Some(Duration::from_secs(300)),
            },
            api: ApiConfig {
                listen: Some(DEFAULT_API_LISTEN.parse().expect("valid default address")),
                certificate: None,
                names: Vec::new(),
                session_ttl: Duration::from_secs(12 * 3600),
                event_streams_per_account: 4,
            },
            alerts: AlertsConfig::default(),
            pki: PkiConfig {
                domains: crate::pki::select::DomainRules::default(),
                expiry_warning_days: 30,
            },
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
            cluster: ClusterConfig {
                node: None,
                lease: Duration::from_secs(30),
            },
        }
    }
}

impl Config {
    /// Loads `path`, or returns the embedded defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses configuration text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let defaults = Config::default();
        let busy_ms = file
            .store
            .busy_timeout_ms
            .unwrap_or(DEFAULT_BUSY_TIMEOUT_MS);
        if !(1..=3_600_000).contains(&busy_ms) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key: "store.busy_timeout_ms",
                message: format!("must be between 1 and 3600000, got {busy_ms}"),
            });
        }
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        let store_url = store_url(file.store.url, &invalid)?;
        let store_connections = file.store.connections.unwrap_or(DEFAULT_STORE_CONNECTIONS);
        if !(1..=64).contains(&store_connections) {
            return Err(invalid(
                "store.connections",
                format!("must be between 1 and 64, got {store_connections}"),
            ));
        }
        let hello = hello_section(file.hello, defaults.hello, &invalid)?;
        let provisioning =
            provisioning_section(file.provisioning, defaults.provisioning, &invalid)?;
        let plugins = plugins_section(file.plugins, defaults.plugins, &invalid)?;
        let export = ExportConfig {
            server_address: file.export.server_address.unwrap_or_default(),
            server_port: file.export.server_port,
        };
        let management = ManagementConfig {
            check_interval: match file.management.check_interval_ms {
                None => defaults.management.check_interval,
                Some(0) => None,
                Some(ms) => Some(Duration::from_millis(ms)),
            },
        };
        let api = api_section(file.api, defaults.api, &invalid)?;
        let alerts = alerts_section(file.alerts, defaults.alerts, &invalid)?;
        let pki = pki_section(file.pki, defaults.pki, &invalid)?;
        let cluster = cluster_section(file.cluster, defaults.cluster, &invalid)?;
        let metrics = metrics_section(file.metrics, &invalid)?;
        Ok(Config {
            cluster,
            metrics,
            log: LogConfig {
                format: file.log.format.unwrap_or_default(),
            },
            pki,
            alerts,
            api,
            management,
            data_dir: file.data_dir.unwrap_or(defaults.data_dir),
            busy_timeout: Duration::from_millis(busy_ms),
            master_key_file: file.store.master_key_file,
            store_url,
            store_connections,
            hello,
            provisioning,
            plugins,
            export,
        })
    }
}

/// `[store] url`: a PostgreSQL URL (its password never in an error), or none.
fn store_url(
    url: Option<String>,
    invalid: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<Option<StoreUrl>, ConfigError> {
    match url {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            Ok(Some(StoreUrl(url)))
        }
        Some(url) => Err(invalid(
            "store.url",
            format!(
                "must be a postgres:// or postgresql:// URL, got {}",
                crate::store::redact_url(&url)
            ),
        )),
        None => Ok(None),
    }
}

/// The `[metrics]` section, checked.
fn metrics_section(
    m: MetricsSection,
    invalid: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<MetricsConfig, ConfigError> {
    let listen = match m.listen.as_deref() {
        None | Some("") | Some("off") => None,
        Some(text) => Some(text.parse().map_err(|_| {
            invalid(
                "metrics.listen",
                format!("{text:?} is not an address:port (or \"off\")"),
            )
        })?),
    };
    Ok(MetricsConfig {
        listen,
        bearer_token_file: m.bearer_token_file,
    })
}

/// The `[hello]` section over its defaults, checked.
fn hello_section(
    h: HelloSection,
    hd: HelloConfig,
    invalid: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<HelloConfig, ConfigError> {
    let ms = |v: Option<u64>, d: Duration| v.map(Duration::from_millis).unwrap_or(d);
    let hello = HelloConfig {
        listen: h.listen.unwrap_or(hd.listen),
        max_connections: h.max_connections.unwrap_or(hd.max_connections),
        read_timeout: ms(h.read_timeout_ms, hd.read_timeout),
        per_source_burst: h.per_source_burst.unwrap_or(hd.per_source_burst),
        per_source_per_second: h.per_source_per_second.unwrap_or(hd.per_source_per_second),
    };
    if hello.max_connections == 0 {
        return Err(invalid(
            "hello.max_connections",
            "must be at least 1".into(),
        ));
    }
    if hello.per_source_burst == 0
        || hello.per_source_per_second.is_nan()
        || hello.per_source_per_second <= 0.0
    {
        return Err(invalid(
            "hello.per_source_burst / per_source_per_second",
            "must be greater than 0".into(),
        ));
    }
    Ok(hello)
}

/// The `[provisioning]` section over its defaults, checked.
fn provisioning_section(
    p: ProvisioningSection,
    pd: ProvisioningConfig,
    invalid: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<ProvisioningConfig, ConfigError> {
    let ms = |v: Option<u64>, d: Duration| v.map(Duration::from_millis).unwrap_or(d);
    let provisioning = ProvisioningConfig {
        device_port: p.device_port.unwrap_or(pd.device_port),
        max_concurrent_jobs: p.max_concurrent_jobs.unwrap_or(pd.max_concurrent_jobs),
        connect_timeout: ms(p.connect_timeout_ms, pd.connect_timeout),
        step_timeout: ms(p.step_timeout_ms, pd.step_timeout),
        commit_wait: ms(p.commit_wait_ms, pd.commit_wait),
        confirm_timeout: ms(p.confirm_timeout_ms, pd.confirm_timeout),
        admin_password: p.admin_password.unwrap_or(pd.admin_password),
        domain: p.domain.filter(|d| !d.is_empty()),
        host_name_template: match p.host_name_template {
            Some(t) => HostNameTemplate::parse(&t)
                .map_err(|e| invalid("provisioning.host_name_template", e))?,
            None => pd.host_name_template,
        },
        local_tls: p.local_tls.unwrap_or(pd.local_tls),
        retry_backoff: ms(p.retry_backoff_ms, pd.retry_backoff),
        retry_backoff_max: ms(p.retry_backoff_max_ms, pd.retry_backoff_max),
        shutdown_grace: ms(p.shutdown_grace_ms, pd.shutdown_grace),
    };
    if provisioning.retry_backoff > provisioning.retry_backoff_max {
        return Err(invalid(
            "provisioning.retry_backoff_ms",
            "must not exceed retry_backoff_max_ms".into(),
        ));
    }
    if provisioning.max_concurrent_jobs == 0 {
        return Err(invalid(
            "provisioning.max_concurrent_jobs",
            "must be at least 1".into(),
        ));
    }
    Ok(provisioning)
}

/// The `[plugins]` section over its defaults, checked.
fn plugins_section(
    g: PluginsSection,
    gd: PluginsConfig,
    invalid: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<PluginsConfig, ConfigError> {
    let ms = |v: Option<u64>, d: Duration| v.map(Duration::from_millis).unwrap_or(d);
    let plugins = PluginsConfig {
        dir: g.dir,
        config: g.config,
        call_timeout: ms(g.call_timeout_ms, gd.call_timeout),
        max_calls_per_instance: g
            .max_calls_per_instance
            .unwrap_or(gd.max_calls_per_instance),
        sink_queue: g.sink_queue.unwrap_or(gd.sink_queue),
    };
    if plugins.call_timeout.is_zero() {
        return Err(invalid(
            "plugins.call_timeout_ms",
            "must be at least 1".into(),
        ));
    }
    if plugins.max_calls_per_instance == 0 || plugins.sink_queue == 0 {
        return Err(invalid(
            "plugins.max_calls_per_instance / sink_queue",
            "must be at least 1".into(),
        ));
    }
    Ok(plugins)
}

/// The `[api]` section over its defaults, checked.
fn api_section(
    a: ApiSection,
    defaults: ApiConfig,
    invalid: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<ApiConfig, ConfigError> {
    let listen = match a.listen.as_deref() {
        None => defaults.listen,
        Some("") | Some("off") => None,
        Some(text) => Some(text.parse().map_err(|_| {
            invalid(
                "api.listen",
                format!("{text:?} is not an address:port (or \"off\")"),
            )
        })?),
    };
    let certificate = match (a.certificate_file, a.key_file) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(invalid(
                "api.certificate_file / key_file",
                "set both or neither".into(),
            ))
        }
    };
    let session_hours = a.session_hours.unwrap_or(12);
    if !(1..=24 * 30).contains(&session_hours) {
        return Err(invalid("api.session_hours", "must be 1 to 720".into()));
    }
    let event_streams_per_account = a
        .event_streams_per_account
        .unwrap_or(defaults.event_streams_per_account);
    if !(1..=64).contains(&event_streams_per_account) {
        return Err(invalid(
            "api.event_streams_per_account",
            "must be 1 to 64".into(),
        ));
    }
    let api = ApiConfig {
        listen,
        certificate,
        names: a.names.unwrap_or_default(),
        session_ttl: Duration::from_secs(session_hours * 3600),
        event_streams_per_account,
    };
    Ok(api)
}

/// The `[alerts]` section over its defaults, checked.
fn alerts_section(
    al: AlertsSection,
    ad: AlertsConfig,
    invalid: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<AlertsConfig, ConfigError> {
    let alerts = AlertsConfig {
        retention: match al.retention_days {
            None => ad.retention,
            Some(0) => None,
            Some(days) if days <= 36_500 => Some(Duration::from_secs(days * 86_400)),
            Some(_) => {
                return Err(invalid(
                    "alerts.retention_days",
                    "must be 0 (keep) to 36500".into(),
                ))
            }
        },
        max_rows: al.max_rows.unwrap_or(ad.max_rows),
        repeat_notice: al
            .repeat_notice_minutes
            .map_or(ad.repeat_notice, |m| Duration::from_secs(m * 60)),
    };
    if !(100..=10_000_000).contains(&alerts.max_rows) {
        return Err(invalid("alerts.max_rows", "must be 100 to 10000000".into()));
    }
    if al.repeat_notice_minutes.is_some_and(|m| m > 10_080) {
        return Err(invalid(
            "alerts.repeat_notice_minutes",
            "must be 0 to 10080 (a week)".into(),
        ));
    }
    Ok(alerts)
}

/// The `[pki]` section over its defaults, checked.
/// The `[cluster]` section over its defaults, checked.
fn cluster_section(
    c: ClusterSection,
    cd: ClusterConfig,
    invalid: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<ClusterConfig, ConfigError> {
    if let Some(node) = &c.node {
        check_node_name(node).map_err(|e| invalid("cluster.node", e))?;
    }
    let lease = match c.lease_ms {
        None => cd.lease,
        Some(ms) if (1000..=3_600_000).contains(&ms) => Duration::from_millis(ms),
        Some(ms) => {
            return Err(invalid(
                "cluster.lease_ms",
                format!("must be between 1000 and 3600000, got {ms}"),
            ))
        }
    };
    Ok(ClusterConfig {
        node: c.node.or(cd.node),
        lease,
    })
}

fn pki_section(
    p: PkiSection,
    pd: PkiConfig,
    invalid: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<PkiConfig, ConfigError> {
    let default_domain = match p.default_domain.filter(|d| !d.is_empty()) {
        Some(d) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            crate::pki::select::check_domain(&d).map_err(|e| invalid("pki.default_domain", e))?;
            Some(d)
        }
        None => None,
    };
    let subnets = p
        .subnets
        .unwrap_or_default()
        .iter()
        .map(|s| crate::pki::select::SubnetRule::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("pki.subnets", e))?;
    let expiry_warning_days = match p.expiry_warning_days {
        None => pd.expiry_warning_days,
        Some(d) if d <= 3650 => d,
        Some(_) => {
            return Err(invalid(
                "pki.expiry_warning_days",
                "must be 0 to 3650".into(),
            ))
        }
    };
    Ok(PkiConfig {
        domains: crate::pki::select::DomainRules {
            default_domain,
            subnets,
            reverse_dns: p.reverse_dns.unwrap_or(pd.domains.reverse_dns),
        },
        expiry_warning_days,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_default_file_equals_the_embedded_defaults() {
        let text = include_str!("../../config/vprov.toml");
        let parsed = Config::parse(text, Path::new("config/vprov.toml")).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn settings_are_read() {
        let c = Config::parse(
            "data_dir = \"/var/lib/vprov\"\n[store]\nbusy_timeout_ms = 500\nmaster_key_file = \"/etc/vprov/key\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/vprov"));
        assert_eq!(c.busy_timeout, Duration::from_millis(500));
        assert_eq!(c.master_key_file, Some(PathBuf::from("/etc/vprov/key")));
        let off = Config::parse("[management]\ncheck_interval_ms = 0\n", Path::new("x")).unwrap();
        assert_eq!(off.management.check_interval, None);
        let alerts = Config::parse(
            "[alerts]\nretention_days = 0\nmax_rows = 1000\nrepeat_notice_minutes = 1\n",
            Path::new("x"),
        )
        .unwrap()
        .alerts;
        assert_eq!(
            alerts,
            AlertsConfig {
                retention: None,
                max_rows: 1000,
                repeat_notice: Duration::from_secs(60),
            }
        );
        let err = Config::parse("[alerts]\nmax_rows = 0\n", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("alerts.max_rows"), "{err}");
        let cluster = Config::parse(
            "[cluster]\nnode = \"b-2\"\nlease_ms = 2000\n",
            Path::new("x"),
        )
        .unwrap()
        .cluster;
        assert_eq!(cluster.node.as_deref(), Some("b-2"));
        assert_eq!(cluster.lease, Duration::from_secs(2));
    }

    #[test]
    fn store_connections_are_read_and_bounded() {
        assert_eq!(
            Config::default().store_connections,
            DEFAULT_STORE_CONNECTIONS
        );
        let c = Config::parse("[store]\nconnections = 8\n", Path::new("x")).unwrap();
        assert_eq!(c.store_connections, 8);
        for bad in ["0", "65"] {
            let text = format!("[store]\nconnections = {bad}\n");
            let err = Config::parse(&text, Path::new("x")).unwrap_err();
            assert!(err.to_string().contains("store.connections"), "{err}");
        }
    }

    #[test]
    fn node_names_and_leases_are_checked() {
        for bad in ["", "a/b", "../x", ".hidden", "sp ace", &"n".repeat(65)] {
            let text = format!("[cluster]\nnode = {bad:?}\n");
            let err = Config::parse(&text, Path::new("x")).unwrap_err();
            assert!(err.to_string().contains("cluster.node"), "{bad}: {err}");
        }
        let err = Config::parse("[cluster]\nlease_ms = 10\n", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("cluster.lease_ms"), "{err}");
        assert!(check_node_name("node-a.example_1").is_ok());
    }

    #[test]
    fn pki_domain_rules_are_read() {
        let c = Config::parse(
            "[pki]\ndefault_domain = \"Example.COM.\"\nsubnets = [\"10.1.0.0/16 = lab.example.com\"]\nreverse_dns = true\n",
            Path::new("x"),
        )
        .unwrap();
        let d = &c.pki.domains;
        assert_eq!(d.default_domain.as_deref(), Some("example.com"));
        assert_eq!(d.subnets.len(), 1);
        assert!(d.reverse_dns);
        assert!(!Config::default().pki.domains.reverse_dns);
        let err = Config::parse("[pki]\nreverse_dns = \"yes\"\n", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("reverse_dns"), "{err}");
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        let err = Config::parse("[store]\nbusy_timeout = 5\n", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("busy_timeout"), "{err}");
        let err = Config::parse("[store]\nbusy_timeout_ms = 0\n", Path::new("x")).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
        let err = Config::parse(
            "[store]\nurl = \"mysql://u:hunter2@db/x\"\n",
            Path::new("x"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("store.url"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let c = Config::parse(
            "[store]\nurl = \"postgres://u:hunter2@db/x\"\n",
            Path::new("x"),
        )
        .unwrap();
        let url = c.store_url.as_ref().unwrap();
        assert_eq!(url.expose(), "postgres://u:hunter2@db/x");
        assert!(!format!("{c:?}").contains("hunter2"));
        let err = Config::parse("data_dir = [", Path::new("x")).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert!(matches!(
            Config::load(Some(Path::new("/nonexistent/vprov.toml"))),
            Err(ConfigError::Read { .. })
        ));
    }
}
