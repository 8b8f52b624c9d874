//! `vprov password …`, `vprov devices …`, `vprov alerts …` and `vprov audit …`.

use std::process::ExitCode;

use super::choices::{DeviceStateChoice, PowerChoice, SeverityChoice};
use anyhow::{bail, Context as _};
use clap::Subcommand;
use serde_json::json;
use vprov_core::device::{DeviceError, Inventory};
use vprov_core::hello::DeviceUuid;
use vprov_core::management::{power_state_name, ManagedDevice, PowerAction, Reach};
use vprov_core::password::ProvisioningPassword;
use vprov_core::store::{DeviceFilter, DeviceState, ManagementMode, Severity};
use vprov_core::text::escape_control;
use vprov_core::views::{alert_json, audit_json, device_json};
use zeroize::Zeroizing;

use super::output::{self, cell, outln, ListFormat};
use super::{actor, input, Context};

#[derive(Debug, Subcommand)]
pub enum PasswordCommand {
    /// Set the provisioning password (prompted twice without echo)
    ///
    /// AMT's rules apply: 8-32 printable ASCII characters with at least one lower-case
    /// letter, one upper-case letter, one digit and one other character, and none of
    /// " , : . The password is stored sealed and never printed.
    Set {
        /// Read the password from the first line of standard input instead of prompting
        /// (leading or trailing whitespace is refused as a copy-and-paste accident)
        #[arg(long)]
        stdin: bool,
    },
    /// Show whether the provisioning password is set and when it last changed
    Status {
        /// Output format
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// Move unmanaged devices to managed devices
    ///
    /// --agentless: AMT-only management (power, inventory) over TLS, no agent in the
    /// operating system; all devices move or, if any UUID is unknown, none.
    ///
    /// --agent: deploy a management agent to each device's operating system first,
    /// through the configured agent deployer (the post-agent-ssh plugin: copies the
    /// profile's package over SSH and runs its install command). A device moves to
    /// managed (agent) only when its deployment succeeded; a failure names the step,
    /// is written to the alert log, and leaves the device where it was. Exits
    /// non-zero if any deployment failed.
    ///
    /// Every move is written to the audit log.
    #[command(group(clap::ArgGroup::new("how").required(true).args(["agentless", "agent"])))]
    Manage {
        /// Device UUIDs (as `vprov devices list` shows them)
        #[arg(required = true)]
        uuids: Vec<String>,
        /// Manage over AMT only, without an agent
        #[arg(long)]
        agentless: bool,
        /// Deploy a management agent, then manage the device with it
        #[arg(long)]
        agent: bool,
        /// The agent profile to deploy (package, command, credentials; see the agent
        /// deployer's configuration) [default: the deployer's default profile]
        #[arg(long, requires = "agent", value_name = "NAME")]
        profile: Option<String>,
    },
    /// Forget a device's recorded SSH host key
    ///
    /// Agent deployment records each device's SSH host key the first time it
    /// connects and refuses a device presenting a different one. After an operating
    /// system reinstall, forget the old key so the next deployment records the new
    /// one. Audited.
    ForgetHostKey {
        /// Device UUID
        uuid: String,
    },
    /// Let a device whose provisioning failed try again at its next hello
    ///
    /// A device whose job failed keeps saying hello; vprov waits before each further
    /// attempt (longer after each failure of the same kind, `[provisioning]
    /// retry_backoff_ms`) and keeps one alert with a count. Once the cause is fixed,
    /// this makes the device's next hello start a job at once. Audited.
    Retry {
        /// Device UUID, as the alert shows it
        uuid: String,
    },
    /// Read or change a managed device's power state over AMT (TLS, verified against
    /// vprov's CA, with the device's own admin credential)
    ///
    /// status: on / off; on; off (immediate, not a graceful shutdown); reset (a hard
    /// reset of a running host); cycle (off, then on). Changes are audited; a device
    /// that cannot be reached raises an alert.
    Power {
        /// Device UUID
        uuid: String,
        /// What to do
        #[arg(value_enum)]
        action: PowerChoice,
    },
    /// Read a managed device's hardware and firmware inventory over AMT and store it
    ///
    /// AMT and firmware versions, BIOS, processors, memory, and the network ports'
    /// MAC and IP addresses.
    Inventory {
        /// Device UUID
        uuid: String,
        /// Show the inventory stored at the last read instead of asking the device
        #[arg(long)]
        cached: bool,
        /// Output format
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
    /// Change one device's admin credential (AMT's SetAdminAclEntryEx)
    ///
    /// A random strong password by default, or one read from standard input with
    /// --stdin (AMT's password rules apply). The new credential is sealed in the store
    /// before it is sent, and the old one kept until the device accepts the new one, so
    /// an interruption never locks vprov out. Audited; the password is never printed.
    Password {
        /// Device UUID
        uuid: String,
        /// Generate a random strong password (the default)
        #[arg(long, conflicts_with = "stdin")]
        random: bool,
        /// Read the new password from the first line of standard input
        #[arg(long)]
        stdin: bool,
    },
    /// Move managed devices back to the unmanaged list
    Unmanage {
        /// Device UUIDs
        #[arg(required = true)]
        uuids: Vec<String>,
    },
    /// List provisioned devices
    List {
        /// Only devices in this state
        #[arg(long, value_enum)]
        state: Option<DeviceStateChoice>,
        /// Output format
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// List alerts, newest first
    List {
        /// Only alerts of at least this severity
        #[arg(long, value_enum)]
        severity: Option<SeverityChoice>,
        /// At most this many alerts
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Output format
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
    /// Acknowledge alerts (audited): a repeat of an acknowledged alert is listed as
    /// a new alert instead of adding to its count
    Ack {
        /// Ids of the alerts (see `vprov alerts list`); if any is unknown, none is
        /// acknowledged
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<i64>,
        /// Acknowledge every unacknowledged alert
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List audit entries, newest first
    List {
        /// At most this many entries
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Output format
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
}

pub fn password(cmd: PasswordCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match cmd {
        PasswordCommand::Set { stdin } => {
            let password = if stdin {
                read_password_line()?
            } else {
                prompt_password()?
            };
            let mut store = ctx.store()?;
            store.set_provisioning_password(&password, &actor())?;
            outln!("provisioning password set")?;
        }
        PasswordCommand::Status { format } => {
            let status = ctx.store()?.password_status()?;
            let changed = status.changed_at.map(output::time);
            match format {
                ListFormat::Json => output::json(&json!({
                    "set": status.set,
                    "changed_at": changed,
                }))?,
                ListFormat::Table => match changed {
                    Some(at) => outln!("provisioning password: set (changed {at})")?,
                    None => {
                        outln!("provisioning password: not set (set it with `vprov password set`)")?
                    }
                },
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read_password_line() -> anyhow::Result<ProvisioningPassword> {
    let line = input::secret_line("the password")?;
    Ok(ProvisioningPassword::new(&line)?)
}

fn prompt_password() -> anyhow::Result<ProvisioningPassword> {
    let typed = input::secret_twice("New provisioning password: ", |p| {
        ProvisioningPassword::new(p).map(drop).map_err(Into::into)
    })?;
    Ok(ProvisioningPassword::new(&typed)?)
}

pub fn devices(cmd: DevicesCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    let (state, format) = match cmd {
        DevicesCommand::List { state, format } => (state, format),
        DevicesCommand::Manage {
            uuids,
            agentless,
            profile,
            ..
        } => {
            if agentless {
                return move_devices(ctx, &uuids, Some(ManagementMode::Agentless));
            }
            return super::plugins::deploy_agents(ctx, &uuids, profile);
        }
        DevicesCommand::ForgetHostKey { uuid } => return forget_host_key(ctx, &uuid),
        DevicesCommand::Retry { uuid } => return retry(ctx, &uuid),
        DevicesCommand::Unmanage { uuids } => return move_devices(ctx, &uuids, None),
        DevicesCommand::Power { uuid, action } => return power(ctx, &uuid, action.into()),
        DevicesCommand::Password { uuid, stdin, .. } => {
            return change_device_password(ctx, &uuid, stdin)
        }
        DevicesCommand::Inventory {
            uuid,
            cached,
            format,
        } => return inventory(ctx, &uuid, cached, format),
    };
    list_devices(ctx, state, format)
}

/// `devices forget-host-key`.
fn forget_host_key(ctx: &Context, uuid: &str) -> anyhow::Result<ExitCode> {
    let uuid = DeviceUuid::canonical(uuid);
    let mut store = ctx.store()?;
    if store.device(&uuid)?.is_none() {
        bail!("no device with UUID {uuid}");
    }
    match store.forget_host_key(&uuid, &actor())? {
        Some(fingerprint) => outln!(
            "device {uuid}: SSH host key {fingerprint} forgotten; the next connection records the key it finds"
        )?,
        None => outln!("device {uuid} has no recorded SSH host key")?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `devices retry`.
fn retry(ctx: &Context, uuid: &str) -> anyhow::Result<ExitCode> {
    let uuid = DeviceUuid::canonical(uuid);
    match ctx.store()?.retry_device(&uuid, &actor())? {
        Some(b) => println!(
            "device {uuid}: its next hello starts a job at once (it had failed {} time(s), last at step {})",
            b.failures, b.cause
        ),
        None => println!("device {uuid} is not waiting: its next hello starts a job anyway"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `devices list`.
fn list_devices(
    ctx: &Context,
    state: Option<DeviceStateChoice>,
    format: ListFormat,
) -> anyhow::Result<ExitCode> {
    let devices = ctx.store()?.devices(&DeviceFilter {
        state: state.map(DeviceState::from),
    })?;
    match format {
        ListFormat::Json => {
            output::json(&json!(devices.iter().map(device_json).collect::<Vec<_>>()))?
        }
        ListFormat::Table => output::table(
            &[
                "UUID",
                "HOST",
                "ADDRESS",
                "AMT",
                "STATE",
                "MODE",
                "PROVISIONED",
                "LAST CONTACT",
                "REACHABLE",
            ],
            &devices
                .iter()
                .map(|d| {
                    vec![
                        d.uuid.clone(),
                        cell(d.host_name.as_deref()),
                        cell(d.address.as_deref()),
                        cell(d.amt_version.as_deref()),
                        d.state.as_str().to_string(),
                        match (&d.management_mode, &d.agent_profile) {
                            (Some(mode), Some(profile)) => format!("{mode} ({profile})"),
                            (mode, _) => cell(mode.as_deref()),
                        },
                        output::time(d.provisioned_at),
                        cell(d.last_contact_at.map(output::time).as_deref()),
                        match d.reachable {
                            Some(true) => "yes".into(),
                            Some(false) => "no".into(),
                            None => "-".into(),
                        },
                    ]
                })
                .collect::<Vec<_>>(),
        )?,
    }
    Ok(ExitCode::SUCCESS)
}

pub fn alerts(cmd: AlertsCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    let (severity, limit, format) = match cmd {
        AlertsCommand::List {
            severity,
            limit,
            format,
        } => (severity, limit, format),
        AlertsCommand::Ack { ids, all } => {
            let mut store = ctx.store()?;
            let n = if all {
                store.acknowledge_all_alerts(&actor())?
            } else {
                store.acknowledge_alerts(&ids, &actor())?
            };
            println!("{n} alert(s) acknowledged");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let alerts = ctx.store()?.alerts(severity.map(Severity::from), limit)?;
    match format {
        ListFormat::Json => {
            output::json(&json!(alerts.iter().map(alert_json).collect::<Vec<_>>()))?
        }
        ListFormat::Table => output::table(
            &[
                "ID",
                "LAST SEEN",
                "COUNT",
                "SEVERITY",
                "SOURCE",
                "ADDRESS",
                "PID",
                "DEVICE",
                "ACK",
                "MESSAGE",
            ],
            &alerts
                .iter()
                .map(|a| {
                    vec![
                        a.id.to_string(),
                        output::time(a.last_seen),
                        a.count.to_string(),
                        a.severity.to_string(),
                        a.source.clone(),
                        cell(a.address.as_deref()),
                        cell(a.pid.as_deref()),
                        cell(a.device_uuid.as_deref()),
                        if a.acknowledged_at.is_some() {
                            "yes"
                        } else {
                            "no"
                        }
                        .into(),
                        // Device-supplied text never moves the terminal's cursor.
                        escape_control(&a.message).into_owned(),
                    ]
                })
                .collect::<Vec<_>>(),
        )?,
    }
    Ok(ExitCode::SUCCESS)
}

pub fn audit(cmd: AuditCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    let AuditCommand::List { limit, format } = cmd;
    let entries = ctx.store()?.audit_log(limit)?;
    match format {
        ListFormat::Json => {
            output::json(&json!(entries.iter().map(audit_json).collect::<Vec<_>>()))?
        }
        ListFormat::Table => output::table(
            &["TIME", "ACTOR", "ACTION", "DETAIL"],
            &entries
                .iter()
                .map(|e| {
                    vec![
                        output::time(e.at),
                        e.actor.clone(),
                        e.action.clone(),
                        e.detail.to_string(),
                    ]
                })
                .collect::<Vec<_>>(),
        )?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `devices manage` / `devices unmanage`: all named devices or none.
fn move_devices(
    ctx: &Context,
    uuids: &[String],
    mode: Option<ManagementMode>,
) -> anyhow::Result<ExitCode> {
    let canonical: Vec<String> = uuids.iter().map(|u| DeviceUuid::canonical(u)).collect();
    let refs: Vec<&str> = canonical.iter().map(String::as_str).collect();
    ctx.store()?
        .set_device_management(&refs, mode, None, &actor(), json!(null))?;
    let to = match mode {
        Some(m) => format!("managed ({})", m.as_str()),
        None => "unmanaged".to_string(),
    };
    outln!("{} device(s) moved to {to}", refs.len())?;
    Ok(ExitCode::SUCCESS)
}

/// How commands reach devices, from the configuration.
fn reach(ctx: &Context) -> Reach {
    vprov_core::app::reach(&ctx.config, None)
}

/// `devices power`: one WS-Management session with the device over verified TLS.
fn power(ctx: &Context, uuid: &str, action: PowerAction) -> anyhow::Result<ExitCode> {
    let mut device = ManagedDevice::open(ctx.store()?, uuid, reach(ctx))?;
    let now = power_state_name(device.power(action, &actor())?);
    match action {
        PowerAction::Status => outln!("{now}")?,
        _ => outln!("{} requested; the device reports: {now}", action.name())?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `devices inventory`: read (or with `cached`, show the stored) inventory.
fn inventory(
    ctx: &Context,
    uuid: &str,
    cached: bool,
    format: ListFormat,
) -> anyhow::Result<ExitCode> {
    let (inventory, at) = if cached {
        let uuid = DeviceUuid::canonical(uuid);
        let (text, at) = ctx.store()?.device_inventory(&uuid)?.with_context(|| {
            format!("no inventory stored for device {uuid}: run `vprov devices inventory {uuid}`")
        })?;
        let inventory: Inventory = serde_json::from_str(&text).context("stored inventory")?;
        (inventory, at)
    } else {
        let mut device = ManagedDevice::open(ctx.store()?, uuid, reach(ctx))?;
        (device.read_inventory()?, vprov_core::store::now_ms())
    };
    match format {
        ListFormat::Json => {
            output::json(&json!({ "read_at": output::time(at), "inventory": inventory }))?
        }
        ListFormat::Table => print_inventory(&inventory, at)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn print_inventory(inv: &Inventory, at: i64) -> std::io::Result<()> {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    outln!("read at    {}", output::time(at))?;
    outln!("AMT        {}", inv.amt_version)?;
    outln!(
        "BIOS       {} {} ({})",
        or_dash(&inv.bios.manufacturer),
        or_dash(&inv.bios.version),
        or_dash(&inv.bios.release_date)
    )?;
    for p in &inv.processors {
        let mhz = p.max_clock_mhz.map_or("-".into(), |m| format!("{m} MHz"));
        outln!("processor  {} ({mhz})", or_dash(&p.name))?;
    }
    for m in &inv.memory {
        let gib = m.capacity_bytes.map_or("-".into(), |c| {
            format!("{:.0} GiB", c as f64 / (1u64 << 30) as f64)
        });
        let speed = m.speed_mhz.map_or("-".into(), |s| format!("{s} MHz"));
        outln!(
            "memory     {gib} {speed} {} {}",
            or_dash(&m.manufacturer),
            or_dash(&m.part_number)
        )?;
    }
    for n in &inv.network {
        let dhcp = match n.dhcp {
            Some(true) => "DHCP",
            Some(false) => "static",
            None => "-",
        };
        outln!("network    {} {} ({dhcp})", or_dash(&n.mac), or_dash(&n.ip))?;
    }
    for (component, version) in &inv.firmware {
        outln!("firmware   {component}: {version}")?;
    }
    Ok(())
}

/// `devices password`: intent (sealed) first, then the device, then the record.
fn change_device_password(ctx: &Context, uuid: &str, from_stdin: bool) -> anyhow::Result<ExitCode> {
    let new = if from_stdin {
        ProvisioningPassword::new(&input::secret_line("the new password")?)?
    } else {
        vprov_core::password::generate()
    };
    let mut device = ManagedDevice::open_provisioned(ctx.store()?, uuid, reach(ctx))?;
    // Settle any earlier cut-off change first, so exactly one change is in flight.
    let settled = device.run(|s| Box::pin(async move { s.get_uuid().await.map(drop) }))?;
    settled.map_err(|e| device.failed("password change", e))?;
    let uuid = device.uuid.clone();
    device
        .store
        .begin_password_change(&uuid, new.expose(), &actor())?;
    let user = device.access.admin_user.clone();
    let secret = Zeroizing::new(new.expose().to_string());
    let result = device.run(|s| {
        let (user, secret) = (user.clone(), secret.clone());
        Box::pin(async move {
            let realm = s.general_settings().await?.digest_realm;
            s.set_admin_acl_entry_ex(&user, &realm, &secret).await
        })
    })?;
    match result {
        Ok(()) => {
            device.store.complete_password_change(&uuid, &actor())?;
            device.store.touch_device(&uuid)?;
            outln!("device {uuid}: admin credential changed (sealed in the store)")?;
            Ok(ExitCode::SUCCESS)
        }
        // The device answered and refused: it keeps the old credential.
        Err(
            e @ (DeviceError::ReturnValue { .. }
            | DeviceError::Fault { .. }
            | DeviceError::Unauthorized),
        ) => {
            device.store.abandon_password_change(&uuid)?;
            Err(device.failed("password change", e).into())
        }
        // Cut off: the device may hold either; both stay recorded until next contact.
        Err(e) => Err(anyhow::Error::from(device.failed("password change", e)).context(
            "the outcome is unknown: vprov keeps both credentials and settles on the next contact",
        )),
    }
}
