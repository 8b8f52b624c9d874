//! The convenience layer plugin authors write against: plain Rust traits
//! ([`Plugin`] plus one per kind), a [`Host`] handle, and the adapters that turn them
//! into the boundary's trait objects. Every call into plugin code runs under
//! `catch_unwind`, so a panic comes back to the core as an `ErrorKind::PANICKED` error
//! instead of unwinding across the boundary (which would abort the process).

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{ROption, RResult, RStr, RString, RVec};
use serde::de::DeserializeOwned;

use crate::abi::{
    self, ActionOutcome, AlertEvent, DeviceInfo, ErrorKind, ExportFormat, ExportRequest,
    ExportedFile, HostKeyCheck, HostServicesBox, InitContext, LogLevel, PluginAlert, PluginError,
    PluginInstanceBox, PluginKinds, PluginManifest, Severity,
};

/// A plugin: its manifest as constants, a constructor, and the kinds it implements.
///
/// Export it with [`crate::export_plugin!`]. The instance is shared by concurrent
/// calls, so kinds take `&self` (use interior mutability where state changes).
pub trait Plugin: Send + Sync + Sized + 'static {
    /// The name configuration refers to.
    const NAME: &'static str;
    /// The plugin's version; usually `env!("CARGO_PKG_VERSION")`.
    const VERSION: &'static str;
    /// One line for `vprov plugins list`.
    const DESCRIPTION: &'static str;
    /// The kinds implemented below; the core routes only these.
    const KINDS: PluginKinds;

    /// Creates an instance from its configuration. An invalid configuration is an
    /// `INVALID_CONFIG` error naming the problem.
    fn new(context: Context) -> Result<Self, PluginError>;

    fn key_exporter(&self) -> Option<&dyn KeyExporter> {
        None
    }

    fn alert_sink(&self) -> Option<&dyn AlertSink> {
        None
    }

    fn post_provision(&self) -> Option<&dyn PostProvisionAction> {
        None
    }

    fn agent_deployer(&self) -> Option<&dyn AgentDeployer> {
        None
    }

    /// Called once when the instance is retired (replaced, removed or the core stops).
    fn shutdown(&self) {}
}

/// Exports PID/PPS batches in one or more formats.
pub trait KeyExporter {
    fn formats(&self) -> Vec<ExportFormat>;
    fn export(&self, request: &ExportRequest) -> Result<ExportedFile, PluginError>;
}

/// Receives every alert of the core's alert log.
pub trait AlertSink {
    fn deliver(&self, alert: &AlertEvent) -> Result<(), PluginError>;
}

/// Runs after a device is provisioned; the core applies the returned outcome.
pub trait PostProvisionAction {
    fn run(&self, device: &DeviceInfo) -> Result<ActionOutcome, PluginError>;
}

/// Deploys a management agent to a device's operating system on request, under
/// named profiles. The core moves the device to managed (agent) when it succeeds.
pub trait AgentDeployer {
    /// The profile names this instance deploys.
    fn profiles(&self) -> Vec<String>;
    /// Deploys under `profile` (the instance's default profile when `None`). An error
    /// names the step that failed; the device stays where it is.
    fn deploy(
        &self,
        device: &DeviceInfo,
        profile: Option<&str>,
    ) -> Result<ActionOutcome, PluginError>;
}

/// What an instance is created with.
pub struct Context {
    pub instance_name: String,
    /// The instance's TOML configuration table as text; see [`Context::config`].
    pub config_toml: String,
    /// Where the instance keeps its files; relative paths resolve against it.
    pub data_dir: PathBuf,
    pub host: Host,
}

impl Context {
    /// Parses the configuration into the plugin's own type; errors are
    /// `INVALID_CONFIG` with the parser's message (which names the bad key).
    pub fn config<T: DeserializeOwned>(&self) -> Result<T, PluginError> {
        toml::from_str(&self.config_toml).map_err(|e| {
            PluginError::invalid_config(format!("instance {}: {e}", self.instance_name))
        })
    }

    /// `path` resolved against the data dir unless absolute.
    pub fn resolve(&self, path: impl Into<PathBuf>) -> PathBuf {
        let path = path.into();
        if path.is_absolute() {
            path
        } else {
            self.data_dir.join(path)
        }
    }
}

/// The core's services, as a plugin uses them. Cheap to clone.
#[derive(Clone)]
pub struct Host(Arc<HostServicesBox>);

impl Host {
    pub fn new(services: HostServicesBox) -> Host {
        Host(Arc::new(services))
    }

    pub fn log(&self, level: LogLevel, message: &str) {
        self.0.log(level, RStr::from(message));
    }

    pub fn info(&self, message: &str) {
        self.log(LogLevel::INFO, message);
    }

    pub fn warn(&self, message: &str) {
        self.log(LogLevel::WARN, message);
    }

    pub fn error(&self, message: &str) {
        self.log(LogLevel::ERROR, message);
    }

    /// Raises an alert into the core's alert log.
    pub fn raise_alert(
        &self,
        severity: Severity,
        message: &str,
        device_uuid: Option<&str>,
    ) -> Result<(), PluginError> {
        self.0
            .raise_alert(PluginAlert {
                severity,
                message: message.into(),
                device_uuid: device_uuid.map(RString::from).into(),
            })
            .into()
    }

    /// Looks a device up through the core.
    pub fn device(&self, uuid: &str) -> Result<Option<DeviceInfo>, PluginError> {
        self.0
            .device(RStr::from(uuid))
            .into_result()
            .map(|d| d.into_option())
    }

    /// Checks a device's SSH host key (OpenSSH form) against the store's record,
    /// recording it on first use.
    pub fn check_host_key(
        &self,
        uuid: &str,
        public_key: &str,
    ) -> Result<HostKeyCheck, PluginError> {
        self.0
            .check_host_key(RStr::from(uuid), RStr::from(public_key))
            .into_result()
    }

    /// A fresh agent enrollment token for the device (the store keeps its hash).
    pub fn issue_enroll_token(&self, uuid: &str, profile: &str) -> Result<String, PluginError> {
        self.0
            .issue_enroll_token(RStr::from(uuid), RStr::from(profile))
            .into_result()
            .map(RString::into_string)
    }
}

impl AlertEvent {
    /// The alert's time as RFC 3339 UTC with milliseconds (empty if out of range).
    pub fn at_rfc3339(&self) -> String {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.at_unix_ms) * 1_000_000)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default()
    }

    /// The alert as the JSON object sinks write: `at`, `at_unix_ms`, `severity`,
    /// `source`, `message`, `pid`, `device_uuid`, `address` (null when absent).
    pub fn to_json(&self) -> serde_json::Value {
        let text = |v: &ROption<RString>| v.as_ref().map(|s| s.to_string()).into_option();
        serde_json::json!({
            "at": self.at_rfc3339(),
            "at_unix_ms": self.at_unix_ms,
            "severity": self.severity.as_str(),
            "source": self.source.as_str(),
            "message": self.message.as_str(),
            "pid": text(&self.pid),
            "device_uuid": text(&self.device_uuid),
            "address": text(&self.address),
        })
    }
}

/// For exporters: checks that `request` asks for `format` and parses its
/// `--option key=value` pairs into the exporter's own options type (use
/// `#[serde(deny_unknown_fields)]` so a misspelt option is an error naming it).
pub fn export_options<T: DeserializeOwned>(
    request: &ExportRequest,
    format: &str,
) -> Result<T, PluginError> {
    if request.format != format {
        return Err(PluginError::unsupported(format!(
            "unknown format {}",
            request.format
        )));
    }
    serde_json::from_str(&request.options_json)
        .map_err(|e| PluginError::unsupported(format!("bad option: {e}")))
}

/// The manifest of `P`, as the root module reports it.
pub extern "C" fn manifest_of<P: Plugin>() -> PluginManifest {
    PluginManifest {
        name: P::NAME.into(),
        version: P::VERSION.into(),
        description: P::DESCRIPTION.into(),
        kinds: P::KINDS,
        sdk_version: abi::SDK_VERSION.into(),
    }
}

/// Creates an instance of `P` behind the boundary's trait object.
pub extern "C" fn instantiate<P: Plugin>(
    context: InitContext,
) -> RResult<PluginInstanceBox, PluginError> {
    let context = Context {
        instance_name: context.instance_name.into_string(),
        config_toml: context.config_toml.into_string(),
        data_dir: PathBuf::from(context.data_dir.into_string()),
        host: Host::new(context.host),
    };
    guarded("instantiate", || P::new(context))
        .map(|plugin| PluginInstanceBox::from_value(Guarded(plugin), TD_Opaque))
        .into()
}

/// Runs plugin code, turning a panic into a `PANICKED` error.
fn guarded<T>(call: &str, f: impl FnOnce() -> Result<T, PluginError>) -> Result<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => Err(PluginError::new(
            ErrorKind::PANICKED,
            format!("panicked in {call}: {}", panic_message(&*payload)),
        )),
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

fn not_provided(kind: &str) -> PluginError {
    PluginError::unsupported(format!("this plugin is not a {kind}"))
}

/// A plugin behind the boundary: every method guarded.
struct Guarded<P>(P);

impl<P: Plugin> abi::PluginInstance for Guarded<P> {
    fn export_formats(&self) -> RVec<ExportFormat> {
        guarded("export_formats", || {
            Ok(self
                .0
                .key_exporter()
                .map(|e| e.formats())
                .unwrap_or_default())
        })
        .unwrap_or_default()
        .into()
    }

    fn export_keys(&self, request: &ExportRequest) -> RResult<ExportedFile, PluginError> {
        guarded("export", || {
            self.0
                .key_exporter()
                .ok_or_else(|| not_provided("key exporter"))?
                .export(request)
        })
        .into()
    }

    fn deliver_alert(&self, alert: &AlertEvent) -> RResult<(), PluginError> {
        guarded("deliver", || {
            self.0
                .alert_sink()
                .ok_or_else(|| not_provided("alert sink"))?
                .deliver(alert)
        })
        .into()
    }

    fn after_provisioning(&self, device: &DeviceInfo) -> RResult<ActionOutcome, PluginError> {
        guarded("run", || {
            self.0
                .post_provision()
                .ok_or_else(|| not_provided("post-provision action"))?
                .run(device)
        })
        .into()
    }

    fn shutdown(&self) {
        let _ = guarded("shutdown", || {
            self.0.shutdown();
            Ok(())
        });
    }

    fn agent_profiles(&self) -> RVec<RString> {
        guarded("agent_profiles", || {
            Ok(self
                .0
                .agent_deployer()
                .map(|d| d.profiles())
                .unwrap_or_default())
        })
        .unwrap_or_default()
        .into_iter()
        .map(RString::from)
        .collect()
    }

    fn deploy_agent(
        &self,
        device: &DeviceInfo,
        profile: ROption<RStr<'_>>,
    ) -> RResult<ActionOutcome, PluginError> {
        guarded("deploy_agent", || {
            self.0
                .agent_deployer()
                .ok_or_else(|| not_provided("agent deployer"))?
                .deploy(device, profile.map(|p| p.as_str()).into_option())
        })
        .into()
    }
}

/// Exports `$plugin` (a type implementing [`Plugin`]) as the library's root module.
/// The plugin crate must be a `cdylib` and depend on `abi_stable` (whose attribute
/// this expands to).
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        // The SDK turns a panic into an error by catching the unwind; with
        // panic = "abort" a plugin's panic would take the whole server down.
        #[cfg(panic = "abort")]
        compile_error!("vprov plugins must be built with panic = \"unwind\" (the default)");

        /// The library's root module, read by the vprov core at load.
        #[::abi_stable::export_root_module]
        pub fn vprov_plugin_root_module() -> $crate::abi::PluginModule_Ref {
            use ::abi_stable::prefix_type::PrefixTypeTrait;
            $crate::abi::PluginModule {
                manifest: $crate::plugin::manifest_of::<$plugin>,
                instantiate: $crate::plugin::instantiate::<$plugin>,
            }
            .leak_into_prefix()
        }
    };
}
