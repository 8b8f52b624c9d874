//! `post-agent-ssh`: deploys a management agent to a device's operating system over
//! SSH — copies the profile's agent package (SFTP), runs its install command, checks
//! the exit status — either on request (`vprov devices manage UUID --agent
//! --profile NAME`) or after every provisioning (`after_provisioning = "NAME"`). The
//! core moves the device to managed (agent) only when the deployment succeeded; an
//! error names the step that failed (connect, host key, authenticate, copy package,
//! install) and the device stays where it was.
//!
//! The device's operating system is reached at the address the device provisioned
//! from (AMT shares the host's network interface and address).
//!
//! Configuration (`[instances.NAME.config]` in plugins.toml):
//!
//! ```toml
//! after_provisioning = "windows"   # optional: deploy this profile to every new device
//! default_profile = "windows"      # optional: for --agent without --profile
//! core_address = "vprov.example.com:8443"   # what {core_address} becomes
//! [profiles.windows]
//! package = "/srv/agents/agent-setup.msi"   # the local file copied to the device
//! remote_path = "C:/Windows/Temp/agent-setup.msi"   # default /tmp/<file name>
//! command = "msiexec /qn /i {package} SERVER={core_address} DEVICE={device_uuid} TOKEN={enroll_token}"
//! user = "deploy"
//! identity_file = "/etc/vprov/deploy_ed25519"  # OpenSSH private key, mode 0600 …
//! # password_file = "/etc/vprov/deploy.pass"  # … or a file holding the password
//! port = 22
//! host_key_policy = "trust-on-first-use"      # or "known-hosts" with known_hosts = FILE
//! connect_timeout_ms = 10000
//! command_timeout_ms = 300000
//! attempts = 3                                 # connection attempts (transport errors only)
//! retry_delay_ms = 5000
//! ```
//!
//! Placeholders in `command`: `{package}` (the remote path), `{core_address}`,
//! `{device_uuid}`, `{enroll_token}` (a fresh token the core issues per deployment;
//! it keeps only its hash), `{profile}`. Every value is restricted to characters that
//! need no quoting in a shell, so a value can never change the command's meaning.
//!
//! Host keys: with `trust-on-first-use` the core records each device's key the first
//! time and refuses a different one later (an admin clears the record with `vprov
//! devices forget-host-key`); with `known-hosts` the key must be listed in the given
//! OpenSSH known_hosts file. Credentials are read from their files at each deployment
//! and never logged.
//!
//! Each deployment runs on its own runtime inside the plugin call, so the instance
//! needs a `call_timeout_ms` (plugins.toml) longer than `attempts` × (connect + copy +
//! `command_timeout_ms`).

mod ssh;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use vprov_sdk::{
    ActionOutcome, AgentDeployer, Context, DeviceInfo, Host, OutcomeAction, Plugin, PluginError,
    PluginKinds, PostProvisionAction,
};

pub use ssh::{DeployError, Step};

/// The placeholders `command` may use.
const PLACEHOLDERS: [&str; 5] = [
    "package",
    "core_address",
    "device_uuid",
    "enroll_token",
    "profile",
];

pub struct PostAgentSsh {
    after_provisioning: Option<String>,
    default_profile: Option<String>,
    core_address: Option<String>,
    profiles: BTreeMap<String, Profile>,
    host: Host,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    after_provisioning: Option<String>,
    default_profile: Option<String>,
    core_address: Option<String>,
    #[serde(default)]
    profiles: BTreeMap<String, ProfileConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileConfig {
    package: PathBuf,
    remote_path: Option<String>,
    command: String,
    user: String,
    identity_file: Option<PathBuf>,
    password_file: Option<PathBuf>,
    #[serde(default = "default_port")]
    port: u16,
    #[serde(default)]
    host_key_policy: HostKeyPolicyName,
    known_hosts: Option<PathBuf>,
    #[serde(default = "default_connect_timeout_ms")]
    connect_timeout_ms: u64,
    #[serde(default = "default_command_timeout_ms")]
    command_timeout_ms: u64,
    #[serde(default = "default_attempts")]
    attempts: u32,
    #[serde(default = "default_retry_delay_ms")]
    retry_delay_ms: u64,
}

fn default_port() -> u16 {
    22
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_command_timeout_ms() -> u64 {
    300_000
}
fn default_attempts() -> u32 {
    3
}
fn default_retry_delay_ms() -> u64 {
    5_000
}

#[derive(Deserialize, Default, Clone, Copy, PartialEq, Eq, Debug)]
#[serde(rename_all = "kebab-case")]
enum HostKeyPolicyName {
    #[default]
    TrustOnFirstUse,
    KnownHosts,
}

/// How a device's SSH host key is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyPolicy {
    /// Recorded in the core's store the first time, then required.
    TrustOnFirstUse,
    /// Listed in this OpenSSH known_hosts file.
    KnownHosts(PathBuf),
}

/// How the deployment logs in. Only paths: the secrets are read at each deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    IdentityFile(PathBuf),
    PasswordFile(PathBuf),
}

/// One validated profile.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    pub package: PathBuf,
    pub remote_path: String,
    pub command: String,
    pub user: String,
    pub credential: Credential,
    pub port: u16,
    pub host_key_policy: HostKeyPolicy,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub attempts: u32,
    pub retry_delay: Duration,
}

fn invalid(profile: &str, message: impl std::fmt::Display) -> PluginError {
    PluginError::invalid_config(format!("profile {profile}: {message}"))
}

/// Whether `value` can stand in a shell command unquoted (and on Windows' command
/// line): letters, digits and `. _ - : / @ + , =`.
fn shell_safe(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:/@+,=".contains(c))
}

/// The `{name}` placeholders of `command`, or an error naming an unknown one.
fn placeholders(command: &str) -> Result<Vec<&str>, String> {
    let mut found = Vec::new();
    let mut rest = command;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| "an unclosed '{' in command".to_string())?;
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{name}}} in command (known: {})",
                PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(" ")
            ));
        }
        found.push(name);
        rest = &after[close + 1..];
    }
    Ok(found)
}

/// `command` with every placeholder replaced by its value.
fn expand(command: &str, values: &[(&str, &str)]) -> String {
    let mut out = command.to_string();
    for (name, value) in values {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

/// Refuses a secret file others can read, as OpenSSH does for private keys.
fn check_secret_file(profile: &str, path: &std::path::Path) -> Result<(), PluginError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| invalid(profile, format!("cannot read {}: {e}", path.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(invalid(
                profile,
                format!(
                    "{} is readable by other users (mode {:o}): make it 0600",
                    path.display(),
                    mode & 0o777
                ),
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = meta;
    Ok(())
}

impl Profile {
    fn from_config(
        name: &str,
        c: ProfileConfig,
        context: &Context,
        core_address: Option<&str>,
    ) -> Result<Profile, PluginError> {
        if c.user.is_empty()
            || c.user
                .chars()
                .any(|ch| ch.is_whitespace() || ch.is_control())
        {
            return Err(invalid(name, "user must be a user name"));
        }
        let package = context.resolve(&c.package);
        if !package.is_file() {
            return Err(invalid(
                name,
                format!("package {} is not a readable file", package.display()),
            ));
        }
        let remote_path = match c.remote_path {
            Some(p) => p,
            None => {
                let file = package
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                format!("/tmp/{file}")
            }
        };
        if !shell_safe(&remote_path) {
            return Err(invalid(
                name,
                format!("remote_path {remote_path:?}: use letters, digits and . _ - : / @ + , ="),
            ));
        }
        let used = placeholders(&c.command).map_err(|e| invalid(name, e))?;
        if used.contains(&"core_address") && core_address.is_none() {
            return Err(invalid(
                name,
                "command uses {core_address} but core_address is not set",
            ));
        }
        let credential = match (c.identity_file, c.password_file) {
            (Some(key), None) => Credential::IdentityFile(context.resolve(key)),
            (None, Some(pw)) => Credential::PasswordFile(context.resolve(pw)),
            _ => {
                return Err(invalid(
                    name,
                    "set exactly one of identity_file and password_file",
                ))
            }
        };
        match &credential {
            Credential::IdentityFile(p) | Credential::PasswordFile(p) => {
                check_secret_file(name, p)?
            }
        }
        let host_key_policy = match (c.host_key_policy, c.known_hosts) {
            (HostKeyPolicyName::TrustOnFirstUse, None) => HostKeyPolicy::TrustOnFirstUse,
            (HostKeyPolicyName::KnownHosts, Some(file)) => {
                let file = context.resolve(file);
                if !file.is_file() {
                    return Err(invalid(
                        name,
                        format!("known_hosts {} is not a readable file", file.display()),
                    ));
                }
                HostKeyPolicy::KnownHosts(file)
            }
            (HostKeyPolicyName::KnownHosts, None) => {
                return Err(invalid(
                    name,
                    "host_key_policy = \"known-hosts\" needs known_hosts = FILE",
                ))
            }
            (HostKeyPolicyName::TrustOnFirstUse, Some(_)) => {
                return Err(invalid(
                    name,
                    "known_hosts is only used with host_key_policy = \"known-hosts\"",
                ))
            }
        };
        if !(1..=10).contains(&c.attempts) {
            return Err(invalid(name, "attempts must be 1 to 10"));
        }
        for (key, ms) in [
            ("connect_timeout_ms", c.connect_timeout_ms),
            ("command_timeout_ms", c.command_timeout_ms),
        ] {
            if !(1..=3_600_000).contains(&ms) {
                return Err(invalid(name, format!("{key} must be 1 to 3600000")));
            }
        }
        Ok(Profile {
            name: name.to_string(),
            package,
            remote_path,
            command: c.command,
            user: c.user,
            credential,
            port: c.port,
            host_key_policy,
            connect_timeout: Duration::from_millis(c.connect_timeout_ms),
            command_timeout: Duration::from_millis(c.command_timeout_ms),
            attempts: c.attempts,
            retry_delay: Duration::from_millis(c.retry_delay_ms.min(600_000)),
        })
    }
}

impl Plugin for PostAgentSsh {
    const NAME: &'static str = "post-agent-ssh";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str =
        "deploys a management agent to devices over SSH (on request or after provisioning)";
    const KINDS: PluginKinds = PluginKinds::POST_PROVISION.union(PluginKinds::AGENT_DEPLOYER);

    fn new(context: Context) -> Result<Self, PluginError> {
        let config: Config = context.config()?;
        if let Some(address) = &config.core_address {
            if !shell_safe(address) {
                return Err(PluginError::invalid_config(format!(
                    "core_address {address:?}: use a host name or address with an optional port"
                )));
            }
        }
        if config.profiles.is_empty() {
            return Err(PluginError::invalid_config(
                "no profiles: add at least one [profiles.NAME] table",
            ));
        }
        let mut profiles = BTreeMap::new();
        for (name, profile) in config.profiles {
            if !shell_safe(&name) {
                return Err(PluginError::invalid_config(format!(
                    "profile name {name:?}: use letters, digits, '-' and '_'"
                )));
            }
            let profile =
                Profile::from_config(&name, profile, &context, config.core_address.as_deref())?;
            profiles.insert(name, profile);
        }
        for (key, value) in [
            ("after_provisioning", &config.after_provisioning),
            ("default_profile", &config.default_profile),
        ] {
            if let Some(name) = value {
                if !profiles.contains_key(name) {
                    return Err(PluginError::invalid_config(format!(
                        "{key} = {name:?}: no such profile (configured: {})",
                        profiles.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
        Ok(PostAgentSsh {
            after_provisioning: config.after_provisioning,
            default_profile: config.default_profile,
            core_address: config.core_address,
            profiles,
            host: context.host,
        })
    }

    fn post_provision(&self) -> Option<&dyn PostProvisionAction> {
        Some(self)
    }

    fn agent_deployer(&self) -> Option<&dyn AgentDeployer> {
        Some(self)
    }
}

impl PostAgentSsh {
    /// The profile `requested` names, or the default one.
    fn profile(&self, requested: Option<&str>) -> Result<&Profile, PluginError> {
        let name = requested
            .or(self.default_profile.as_deref())
            .or(self.after_provisioning.as_deref())
            .or_else(|| {
                (self.profiles.len() == 1)
                    .then(|| self.profiles.keys().next().map(String::as_str))
                    .flatten()
            });
        let configured = || self.profiles.keys().cloned().collect::<Vec<_>>().join(", ");
        let Some(name) = name else {
            return Err(PluginError::unsupported(format!(
                "several profiles and no default_profile: name one (configured: {})",
                configured()
            )));
        };
        self.profiles.get(name).ok_or_else(|| {
            PluginError::unsupported(format!("no profile {name} (configured: {})", configured()))
        })
    }

    /// Deploys `profile` to `device` and says so in the outcome.
    fn deploy_profile(
        &self,
        device: &DeviceInfo,
        profile: &Profile,
    ) -> Result<ActionOutcome, PluginError> {
        let uuid = device.uuid.as_str();
        let uses = placeholders(&profile.command).unwrap_or_default();
        let token = if uses.contains(&"enroll_token") {
            zeroize::Zeroizing::new(self.host.issue_enroll_token(uuid, &profile.name)?)
        } else {
            zeroize::Zeroizing::new(String::new())
        };
        // The token is base64url; anything else must not reach a shell.
        if uses.contains(&"enroll_token") && !shell_safe(&token) {
            return Err(PluginError::failed(
                "the core issued a malformed enrollment token",
            ));
        }
        if !shell_safe(uuid) {
            return Err(PluginError::failed(format!(
                "device UUID {uuid:?} is malformed"
            )));
        }
        let command = zeroize::Zeroizing::new(expand(
            &profile.command,
            &[
                ("package", profile.remote_path.as_str()),
                ("core_address", self.core_address.as_deref().unwrap_or("")),
                ("device_uuid", uuid),
                ("enroll_token", token.as_str()),
                ("profile", profile.name.as_str()),
            ],
        ));
        let address = device.address.as_str();
        self.host.info(&format!(
            "deploying agent profile {} to device {uuid} at {address}:{}",
            profile.name, profile.port
        ));
        let target = ssh::Target {
            address,
            device_uuid: uuid,
            host: &self.host,
        };
        match ssh::deploy(&target, profile, &command, &token) {
            Ok(report) => {
                self.host.info(&format!(
                    "agent profile {} deployed to device {uuid} ({} bytes copied, install exited 0)",
                    profile.name, report.bytes_copied
                ));
                Ok(ActionOutcome {
                    action: OutcomeAction::MANAGE_WITH_AGENT,
                    profile: abi_stable::std_types::ROption::RSome(profile.name.as_str().into()),
                    message: format!(
                        "post-agent-ssh: agent profile {} installed over SSH as {}",
                        profile.name, profile.user
                    )
                    .into(),
                })
            }
            Err(e) => Err(PluginError::failed(format!(
                "agent profile {} on device {uuid} ({address}:{}): {e}",
                profile.name, profile.port
            ))),
        }
    }
}

impl PostProvisionAction for PostAgentSsh {
    fn run(&self, device: &DeviceInfo) -> Result<ActionOutcome, PluginError> {
        let Some(name) = &self.after_provisioning else {
            return Ok(ActionOutcome {
                action: OutcomeAction::KEEP_UNMANAGED,
                profile: abi_stable::std_types::ROption::RNone,
                message: "post-agent-ssh: no profile is deployed after provisioning (after_provisioning is not set)".into(),
            });
        };
        let profile = self.profile(Some(name))?;
        self.deploy_profile(device, profile)
    }
}

impl AgentDeployer for PostAgentSsh {
    fn profiles(&self) -> Vec<String> {
        self.profiles.keys().cloned().collect()
    }

    fn deploy(
        &self,
        device: &DeviceInfo,
        profile: Option<&str>,
    ) -> Result<ActionOutcome, PluginError> {
        let profile = self.profile(profile)?;
        self.deploy_profile(device, profile)
    }
}

vprov_sdk::export_plugin!(PostAgentSsh);

#[cfg(test)]
mod tests;
