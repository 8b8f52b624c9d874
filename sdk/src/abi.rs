//! The boundary itself: every type and trait object that crosses between the core and
//! a plugin library. Only `#[repr(C)]` types made of abi_stable's `R*` types and
//! integers live here; no tokio, tracing, serde or std collection crosses.
//!
//! **Evolution rule.** This crate's Cargo version is the ABI version (abi_stable checks
//! it at load: for 0.y.z the minor must match). Within one version, fields and trait
//! methods are only ever appended after the item marked `#[sabi(last_prefix_field)]`,
//! never reordered or removed; enums are `u8`/`u32` newtypes with constants, so a new
//! value is not a layout change. An appended trait method has a default body (abi_stable
//! calls it when the other side's vtable predates the method), answering
//! `UNSUPPORTED`; the core routes such calls only to plugins whose manifest declares
//! the kind they belong to.
//!
//! The only `unsafe` in the SDK is what abi_stable's derives generate in this module.

use std::fmt;

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RArc, RBox, ROption, RResult, RStr, RString, RVec};
use abi_stable::{declare_root_module_statics, package_version_strings, sabi_trait, StableAbi};

/// The root module every plugin library exports (through [`crate::export_plugin!`]).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModule_Ref)))]
pub struct PluginModule {
    /// What the library is and which kinds it provides. Cheap; called at every load.
    pub manifest: extern "C" fn() -> PluginManifest,
    /// Creates one configured instance. The host calls it off its async workers.
    ///
    /// Last field of ABI version 0.1: later fields are appended below it, and the host
    /// reads them through `Option`-returning accessors so older plugins still load.
    #[sabi(last_prefix_field)]
    pub instantiate: extern "C" fn(InitContext) -> RResult<PluginInstanceBox, PluginError>,
}

impl RootModule for PluginModule_Ref {
    declare_root_module_statics! {PluginModule_Ref}
    const BASE_NAME: &'static str = "vprov_plugin";
    const NAME: &'static str = "vprov_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The SDK (and so ABI) version this build of the SDK speaks.
pub const SDK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The set of plugin kinds a library provides (a bit set).
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PluginKinds(pub u32);

impl PluginKinds {
    pub const NONE: PluginKinds = PluginKinds(0);
    /// Offers key export formats (`vprov keys export`).
    pub const KEY_EXPORTER: PluginKinds = PluginKinds(1);
    /// Receives every alert.
    pub const ALERT_SINK: PluginKinds = PluginKinds(1 << 1);
    /// Runs after a device is provisioned and says what to do with it.
    pub const POST_PROVISION: PluginKinds = PluginKinds(1 << 2);
    /// Deploys a management agent to a device on request, under named profiles
    /// (`vprov devices manage --agent --profile NAME`).
    pub const AGENT_DEPLOYER: PluginKinds = PluginKinds(1 << 3);

    const NAMES: [(PluginKinds, &'static str); 4] = [
        (PluginKinds::KEY_EXPORTER, "key_exporter"),
        (PluginKinds::ALERT_SINK, "alert_sink"),
        (PluginKinds::POST_PROVISION, "post_provision"),
        (PluginKinds::AGENT_DEPLOYER, "agent_deployer"),
    ];

    pub const fn union(self, other: PluginKinds) -> PluginKinds {
        PluginKinds(self.0 | other.0)
    }

    pub const fn contains(self, other: PluginKinds) -> bool {
        other.0 != 0 && self.0 & other.0 == other.0
    }

    /// The kinds' names, in the form config and logs use (`key_exporter`, ...).
    /// Bits this SDK does not know are shown as `unknown(0x..)`.
    pub fn names(self) -> Vec<String> {
        let mut names: Vec<String> = Self::NAMES
            .iter()
            .filter(|(k, _)| self.contains(*k))
            .map(|(_, n)| (*n).to_string())
            .collect();
        let known = Self::NAMES.iter().fold(0, |acc, (k, _)| acc | k.0);
        if self.0 & !known != 0 {
            names.push(format!("unknown({:#x})", self.0 & !known));
        }
        names
    }
}

impl fmt::Debug for PluginKinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.names().join("|"))
    }
}

/// What a plugin library says about itself.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct PluginManifest {
    /// The name configuration refers to (`plugin = "alert-file"`).
    pub name: RString,
    /// The plugin's own version.
    pub version: RString,
    /// One line for `vprov plugins list`.
    pub description: RString,
    pub kinds: PluginKinds,
    /// The SDK version the library was built against ([`SDK_VERSION`] there).
    pub sdk_version: RString,
}

/// Everything an instance is created with.
#[repr(C)]
#[derive(StableAbi)]
pub struct InitContext {
    /// The instance's name from the plugin configuration.
    pub instance_name: RString,
    /// The instance's configuration table, as TOML text (possibly empty). The plugin
    /// parses it into its own type; no Rust type is shared across the boundary.
    pub config_toml: RString,
    /// A directory the instance may use for its files (relative paths in its config
    /// resolve against it).
    pub data_dir: RString,
    /// What the core lets the plugin do.
    pub host: HostServicesBox,
}

/// Severity of an alert; values match the core's alert log.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Debug)]
pub struct Severity(pub u8);

impl Severity {
    pub const INFO: Severity = Severity(0);
    pub const WARNING: Severity = Severity(1);
    pub const ERROR: Severity = Severity(2);
    pub const CRITICAL: Severity = Severity(3);

    pub fn as_str(self) -> &'static str {
        match self {
            Severity::INFO => "info",
            Severity::WARNING => "warning",
            Severity::ERROR => "error",
            Severity::CRITICAL => "critical",
            _ => "unknown",
        }
    }
}

/// Level of a log line a plugin sends to the core's log.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Debug)]
pub struct LogLevel(pub u8);

impl LogLevel {
    pub const ERROR: LogLevel = LogLevel(1);
    pub const WARN: LogLevel = LogLevel(2);
    pub const INFO: LogLevel = LogLevel(3);
    pub const DEBUG: LogLevel = LogLevel(4);
    pub const TRACE: LogLevel = LogLevel(5);
}

/// Why a plugin call failed.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Debug)]
pub struct ErrorKind(pub u8);

impl ErrorKind {
    /// The operation failed (I/O, a remote refused, ...).
    pub const FAILED: ErrorKind = ErrorKind(0);
    /// The instance's configuration is invalid.
    pub const INVALID_CONFIG: ErrorKind = ErrorKind(1);
    /// The request is not supported (an unknown format, a bad option, a kind the
    /// instance does not provide).
    pub const UNSUPPORTED: ErrorKind = ErrorKind(2);
    /// The plugin panicked; the SDK caught it at the boundary.
    pub const PANICKED: ErrorKind = ErrorKind(3);

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::FAILED => "failed",
            ErrorKind::INVALID_CONFIG => "invalid config",
            ErrorKind::UNSUPPORTED => "unsupported",
            ErrorKind::PANICKED => "panicked",
            _ => "unknown error",
        }
    }
}

/// An error returned across the boundary.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct PluginError {
    pub kind: ErrorKind,
    pub message: RString,
    /// Whether trying again later may succeed.
    pub retryable: bool,
}

impl PluginError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> PluginError {
        PluginError {
            kind,
            message: RString::from(message.into()),
            retryable: false,
        }
    }

    pub fn failed(message: impl Into<String>) -> PluginError {
        PluginError::new(ErrorKind::FAILED, message)
    }

    pub fn invalid_config(message: impl Into<String>) -> PluginError {
        PluginError::new(ErrorKind::INVALID_CONFIG, message)
    }

    pub fn unsupported(message: impl Into<String>) -> PluginError {
        PluginError::new(ErrorKind::UNSUPPORTED, message)
    }

    pub fn retryable(mut self) -> PluginError {
        self.retryable = true;
        self
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for PluginError {}

// === key export ===

/// A format a key exporter offers.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct ExportFormat {
    /// What `--format` names (`csv`, `pdf`, `setupbin`).
    pub name: RString,
    pub description: RString,
    /// The file extension, without the dot.
    pub extension: RString,
    pub mime_type: RString,
    /// The format carries the provisioning password (setup.bin sets it as the new MEBx
    /// password), so the core passes it in [`ExportRequest::provisioning_password`].
    pub needs_provisioning_password: bool,
}

/// One PID/PPS pair: 8 and 32 characters, without dashes. `Debug` hides the PPS.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct KeyPair {
    pub pid: RString,
    pub pps: RString,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("pid", &self.pid)
            .field("pps", &"<redacted>")
            .finish()
    }
}

/// A batch of pairs to export. `Debug` hides every secret.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct ExportRequest {
    /// One of the exporter's [`ExportFormat`] names.
    pub format: RString,
    /// `--option key=value` pairs as a JSON object of strings.
    pub options_json: RString,
    pub batch_id: i64,
    pub batch_comment: RString,
    pub batch_created_unix_ms: i64,
    /// The provisioning server address technicians enter (from configuration; may be
    /// empty when unknown) and its hello port.
    pub server_address: RString,
    pub server_port: u16,
    /// Present only for formats that declare `needs_provisioning_password`.
    pub provisioning_password: ROption<RString>,
    /// The file the core will write the result to, when it is a file (`vprov keys
    /// export --out`); absent for downloads. Exporters may check the destination
    /// (its file system, say) and warn through the host's log; the core does the write.
    pub destination: ROption<RString>,
    pub pairs: RVec<KeyPair>,
}

impl fmt::Debug for ExportRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportRequest")
            .field("format", &self.format)
            .field("options_json", &self.options_json)
            .field("batch_id", &self.batch_id)
            .field("server_address", &self.server_address)
            .field("server_port", &self.server_port)
            .field(
                "provisioning_password",
                &self.provisioning_password.as_ref().map(|_| "<redacted>"),
            )
            .field("destination", &self.destination)
            .field("pairs", &self.pairs.len())
            .finish_non_exhaustive()
    }
}

/// An exported file: its bytes and how to name it.
#[repr(C)]
#[derive(StableAbi, Clone)]
pub struct ExportedFile {
    pub bytes: RVec<u8>,
    /// A suggested file name (the CLI writes to `--out`; downloads use this).
    pub file_name: RString,
    pub mime_type: RString,
}

impl fmt::Debug for ExportedFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportedFile")
            .field("bytes", &self.bytes.len())
            .field("file_name", &self.file_name)
            .field("mime_type", &self.mime_type)
            .finish()
    }
}

// === alerts ===

/// One alert of the core's alert log, as sinks receive it.
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct AlertEvent {
    pub at_unix_ms: i64,
    pub severity: Severity,
    /// What raised it: `hello`, `provisioning`, `plugin:<instance>`, ...
    pub source: RString,
    pub message: RString,
    pub pid: ROption<RString>,
    pub device_uuid: ROption<RString>,
    pub address: ROption<RString>,
}

/// An alert a plugin raises through [`HostServices::raise_alert`].
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct PluginAlert {
    pub severity: Severity,
    pub message: RString,
    pub device_uuid: ROption<RString>,
}

// === devices ===

/// A device as the core knows it (no credentials).
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Canonical lower-case UUID text.
    pub uuid: RString,
    pub host_name: ROption<RString>,
    /// The address the device provisioned from.
    pub address: RString,
    pub amt_version: ROption<RString>,
    /// The PID it provisioned with (dashed form).
    pub pid: RString,
    /// `unmanaged` or `managed`.
    pub state: RString,
    /// `agentless` or `agent` when managed.
    pub management_mode: ROption<RString>,
}

/// What a post-provision action asks the core to do with the device.
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Debug)]
pub struct OutcomeAction(pub u8);

impl OutcomeAction {
    /// Leave it in the unmanaged list.
    pub const KEEP_UNMANAGED: OutcomeAction = OutcomeAction(0);
    /// Move it to managed devices, agentless (AMT-only management).
    pub const MANAGE_AGENTLESS: OutcomeAction = OutcomeAction(1);
    /// Move it to managed devices with a management agent (deployed by the action).
    pub const MANAGE_WITH_AGENT: OutcomeAction = OutcomeAction(2);
}

/// The result of a post-provision action, applied by the core.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct ActionOutcome {
    pub action: OutcomeAction,
    /// For `MANAGE_WITH_AGENT`: the agent profile used.
    pub profile: ROption<RString>,
    /// What was done, for the audit log.
    pub message: RString,
}

/// What the core knows of a device's SSH host key ([`HostServices::check_host_key`]).
#[repr(transparent)]
#[derive(StableAbi, Clone, Copy, PartialEq, Eq, Debug)]
pub struct HostKeyVerdict(pub u8);

impl HostKeyVerdict {
    /// No key was recorded for the device: this one is now (trust on first use).
    pub const FIRST_USE: HostKeyVerdict = HostKeyVerdict(0);
    /// The key is the one recorded.
    pub const MATCHES: HostKeyVerdict = HostKeyVerdict(1);
    /// A different key is recorded: the host may be an impostor (or was reinstalled;
    /// an admin clears the record with `vprov devices forget-host-key`).
    pub const CHANGED: HostKeyVerdict = HostKeyVerdict(2);
}

/// The answer to [`HostServices::check_host_key`].
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Eq)]
pub struct HostKeyCheck {
    pub verdict: HostKeyVerdict,
    /// The recorded key's SHA-256 fingerprint (`SHA256:…`, as OpenSSH prints it).
    pub recorded_fingerprint: RString,
}

// === trait objects ===

/// What the core offers a plugin. The core never blocks inside these calls for long.
#[sabi_trait]
pub trait HostServices: Send + Sync {
    /// Writes a line to the core's log, tagged with the instance name.
    fn log(&self, level: LogLevel, message: RStr<'_>);

    /// Raises an alert into the core's alert log (which delivers it to the other
    /// sinks, never back to the raising instance).
    fn raise_alert(&self, alert: PluginAlert) -> RResult<(), PluginError>;

    /// Looks a device up by UUID, through the core (read-only).
    ///
    /// Last method of ABI version 0.1: later methods are appended below it.
    #[sabi(last_prefix_field)]
    fn device(&self, uuid: RStr<'_>) -> RResult<ROption<DeviceInfo>, PluginError>;

    /// Checks a device's SSH host key (`public_key` in OpenSSH form, `ssh-ed25519
    /// AAAA…`) against the one recorded in the store, recording it when none is (trust
    /// on first use). Only an admin can replace a recorded key. Appended in 0.1; a
    /// core without it answers `UNSUPPORTED`.
    fn check_host_key(
        &self,
        uuid: RStr<'_>,
        public_key: RStr<'_>,
    ) -> RResult<HostKeyCheck, PluginError> {
        let _ = (uuid, public_key);
        RResult::RErr(PluginError::unsupported(
            "this vprov core does not record SSH host keys",
        ))
    }

    /// Issues a fresh enrollment token for an agent being deployed to the device
    /// under `profile`. The store keeps only its hash; an earlier token of the device
    /// stops being valid. Appended in 0.1; a core without it answers `UNSUPPORTED`.
    fn issue_enroll_token(
        &self,
        uuid: RStr<'_>,
        profile: RStr<'_>,
    ) -> RResult<RString, PluginError> {
        let _ = (uuid, profile);
        RResult::RErr(PluginError::unsupported(
            "this vprov core does not issue agent enrollment tokens",
        ))
    }
}

/// The host handle as a plugin holds it.
pub type HostServicesBox = HostServices_TO<'static, RArc<()>>;

/// One configured plugin instance. The core calls only the methods of the kinds the
/// manifest declares; the others answer `UNSUPPORTED`.
#[sabi_trait]
pub trait PluginInstance: Send + Sync {
    /// KeyExporter: the formats offered.
    fn export_formats(&self) -> RVec<ExportFormat>;

    /// KeyExporter: exports a batch.
    fn export_keys(&self, request: &ExportRequest) -> RResult<ExportedFile, PluginError>;

    /// AlertSink: delivers one alert.
    fn deliver_alert(&self, alert: &AlertEvent) -> RResult<(), PluginError>;

    /// PostProvisionAction: acts on a newly provisioned device.
    fn after_provisioning(&self, device: &DeviceInfo) -> RResult<ActionOutcome, PluginError>;

    /// Stops the instance (flush files, stop threads). Called once, after the core
    /// stopped routing calls to it.
    ///
    /// Last method of ABI version 0.1: later methods are appended below it.
    #[sabi(last_prefix_field)]
    fn shutdown(&self);

    /// AgentDeployer: the profile names it deploys. Appended in 0.1 (an older
    /// plugin offers none).
    fn agent_profiles(&self) -> RVec<RString> {
        RVec::new()
    }

    /// AgentDeployer: deploys a management agent to `device` under `profile` (the
    /// instance's default profile when absent). Appended in 0.1.
    fn deploy_agent(
        &self,
        device: &DeviceInfo,
        profile: ROption<RStr<'_>>,
    ) -> RResult<ActionOutcome, PluginError> {
        let _ = (device, profile);
        RResult::RErr(PluginError::unsupported("this plugin deploys no agents"))
    }
}

/// An instance as the core holds it.
pub type PluginInstanceBox = PluginInstance_TO<'static, RBox<()>>;
