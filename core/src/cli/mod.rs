//! Command-line definitions (clap) and dispatch to the subcommands.

mod admin;
mod choices;
mod input;
mod keys;
mod output;
mod pki;
mod plugins;
mod records;
mod serve;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use vprov_core::config::Config;
use vprov_core::store::{KeySource, Store, StoreOptions};
use zeroize::Zeroizing;

/// vprov: one-touch provisioning server for Intel vPro / AMT devices.
///
/// Technicians enter a PID/PPS pair generated here into each device's MEBx screen;
/// the device then says hello on port 9971 and vprov provisions it. This command
/// manages the provisioning keys, the provisioning password and the device store.
#[derive(Debug, Parser)]
#[command(
    name = "vprov",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Directory holding the store (vprov.db) and its master key [default: ./data]
    #[arg(long, env = "VPROV_DATA_DIR", global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Configuration file (see config/vprov.toml); embedded defaults when absent
    #[arg(long, env = "VPROV_CONFIG", global = true, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Master key file sealing the store's secrets [default: DIR/master.key]. The key
    /// itself may instead be given as 64 hex digits in VPROV_MASTER_KEY.
    #[arg(
        long,
        env = "VPROV_MASTER_KEY_FILE",
        global = true,
        value_name = "FILE"
    )]
    master_key_file: Option<PathBuf>,

    /// Log format on standard error [default: the configuration's log.format, text]
    #[arg(
        long,
        env = "VPROV_LOG_FORMAT",
        global = true,
        value_name = "FORMAT",
        value_enum
    )]
    log_format: Option<choices::LogFormatChoice>,

    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// The log format: `--log-format` (or `VPROV_LOG_FORMAT`), else the configuration
    /// file's `[log] format`, else text. A configuration that does not load leaves it
    /// text; the command reports that error itself.
    pub fn log_format(&self) -> vprov_core::config::LogFormat {
        match self.log_format {
            Some(choice) => choice.into(),
            None => Config::load(self.config.as_deref())
                .map(|c| c.log.format)
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the provisioning server: listen for hellos and provision devices
    ///
    /// Devices in setup mode send hellos to the hello port; vprov checks each PID,
    /// connects back over TLS-PSK, configures the device into TLS mode and records it
    /// as an unmanaged device. Failures go to the alert log. Stops on SIGINT/SIGTERM.
    Serve(serve::ServeArgs),
    /// Provisioning keys: generate, list, check and revoke PID/PPS pairs
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// The provisioning password technicians set in MEBx
    #[command(subcommand)]
    Password(records::PasswordCommand),
    /// Provisioned devices
    #[command(subcommand)]
    Devices(records::DevicesCommand),
    /// The alert log: unknown PIDs, PID/PPS mismatches, bad hellos, unreachable devices
    #[command(subcommand)]
    Alerts(records::AlertsCommand),
    /// The audit log: who changed or revealed what, and when
    #[command(subcommand)]
    Audit(records::AuditCommand),
    /// Plugins: key export formats, alert sinks, post-provision actions, agent deployers
    ///
    /// Plugin libraries (.so) in the plugin directory [default: DIR/plugins] are
    /// loaded at start and whenever they change; instances are configured in
    /// plugins.toml [default: DIR/plugins/plugins.toml]. See config/plugins.toml.
    #[command(subcommand)]
    Plugins(plugins::PluginsCommand),
    /// Admin API accounts and bearer tokens (the console and scripts sign in with them)
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// vprov's certificate authority
    #[command(subcommand)]
    Ca(admin::CaCommand),
    /// Provisioning certificate chains for PKI remote configuration (AMT 11+ hellos)
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// The store itself: copy it between SQLite and PostgreSQL
    #[command(subcommand)]
    Store(store::StoreCommand),
}

/// Everything a subcommand needs to open the store.
pub struct Context {
    config: Config,
    master_key_file: Option<PathBuf>,
}

impl Context {
    fn store(&self) -> anyhow::Result<Store> {
        Ok(Store::open(&self.store_options())?)
    }

    /// How this command opens the store.
    fn store_options(&self) -> StoreOptions {
        let key = match std::env::var("VPROV_MASTER_KEY") {
            Ok(hex) => Some(KeySource::Hex(Zeroizing::new(hex))),
            Err(_) => self
                .master_key_file
                .clone()
                .or_else(|| self.config.master_key_file.clone())
                .map(KeySource::File),
        };
        StoreOptions {
            data_dir: self.config.data_dir.clone(),
            key,
            busy_timeout: self.config.busy_timeout,
            // VPROV_STORE_URL wins over `[store] url`.
            url: std::env::var("VPROV_STORE_URL")
                .ok()
                .filter(|u| !u.is_empty())
                .or_else(|| {
                    self.config
                        .store_url
                        .as_ref()
                        .map(|u| u.expose().to_string())
                }),
        }
    }
}

/// Who is acting, for the audit log: the local user running the command.
pub fn actor() -> String {
    if let Ok(user) = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")) {
        return format!("cli:{user}");
    }
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::MetadataExt;
        if let Ok(meta) = std::fs::metadata("/proc/self") {
            return format!("cli:uid-{}", meta.uid());
        }
    }
    "cli:unknown".to_string()
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut config = Config::load(cli.config.as_deref()).context("loading configuration")?;
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    let ctx = Context {
        config,
        master_key_file: cli.master_key_file,
    };
    match cli.command {
        Command::Serve(args) => serve::run(args, &ctx),
        Command::Keys(cmd) => keys::run(cmd, &ctx),
        Command::Password(cmd) => records::password(cmd, &ctx),
        Command::Devices(cmd) => records::devices(cmd, &ctx),
        Command::Alerts(cmd) => records::alerts(cmd, &ctx),
        Command::Audit(cmd) => records::audit(cmd, &ctx),
        Command::Plugins(cmd) => plugins::run(cmd, &ctx),
        Command::Admin(cmd) => admin::admin(cmd, &ctx),
        Command::Ca(cmd) => admin::ca(cmd, &ctx),
        Command::Pki(cmd) => pki::run(cmd, &ctx),
        Command::Store(cmd) => store::run(cmd, &ctx),
    }
}
