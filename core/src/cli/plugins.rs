//! `vprov plugins list`, `vprov keys export` and `vprov devices manage --agent`: the
//! plugin host as one-shot commands use it (libraries loaded and checked here;
//! exporters and agent deployers instantiated on demand).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _};
use clap::Subcommand;
use vprov_core::alerts::AlertLog;
use vprov_core::alerts::AlertSinks;
use vprov_core::app::host_settings;
use vprov_core::plugins::{
    export, instances, HostSettings, InstanceReport, PluginHost, ServerLink, StatusSnapshot,
};
use vprov_core::store_thread::StoreHandle;

use vprov_sdk::{ExportFormat, PluginKinds};

use super::output::{self, outln, ListFormat, PrivateFile};
use super::{actor, Context};

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// List plugin libraries and instances with their status
    ///
    /// Libraries are loaded and checked now (name, version, kinds, SDK version, or why
    /// loading failed). Instance status (active, quarantined, failed) comes from the
    /// running server; without one, the configured instances are listed.
    List {
        /// Output format
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
}

/// A runtime for one command that, when dropped, does not wait for blocking threads:
/// a plugin call that timed out may still occupy one (a plain drop would wait).
struct CommandRuntime(Option<tokio::runtime::Runtime>);

impl CommandRuntime {
    fn new() -> anyhow::Result<CommandRuntime> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .context("starting the async runtime")?;
        Ok(CommandRuntime(Some(rt)))
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.0.as_ref().expect("runtime").block_on(f)
    }
}

impl Drop for CommandRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

pub fn run(cmd: PluginsCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    let PluginsCommand::List { format } = cmd;
    let settings = host_settings(&ctx.config, PluginKinds::NONE);
    let host = PluginHost::new(settings.clone(), None, AlertSinks::default());
    let libraries = CommandRuntime::new()?.block_on(async {
        host.scan_libraries().await;
        host.library_reports().await
    });
    let (instances, source) = instance_status(&settings);
    match format {
        ListFormat::Json => output::json(&serde_json::json!({
            "plugin_dir": settings.plugin_dir,
            "config": settings.config_path,
            "libraries": libraries,
            "instances": instances,
            "instance_status_from": source,
        }))?,
        ListFormat::Table => {
            outln!("Plugin libraries in {}:", settings.plugin_dir.display())?;
            if libraries.is_empty() {
                outln!("  (none)")?;
            } else {
                let rows: Vec<Vec<String>> = libraries
                    .iter()
                    .map(|l| {
                        vec![
                            file_name(&l.file),
                            output::cell(l.name.as_deref()),
                            output::cell(l.version.as_deref()),
                            l.kinds.join(","),
                            l.status.clone(),
                        ]
                    })
                    .collect();
                output::table(&["FILE", "PLUGIN", "VERSION", "KINDS", "STATUS"], &rows)?;
            }
            outln!()?;
            outln!(
                "Instances ({}; status {source}):",
                settings.config_path.display()
            )?;
            if instances.is_empty() {
                outln!("  (none)")?;
            } else {
                let rows: Vec<Vec<String>> = instances
                    .iter()
                    .map(|i| {
                        vec![
                            i.name.clone(),
                            i.plugin.clone(),
                            i.kinds.join(","),
                            i.status.clone(),
                        ]
                    })
                    .collect();
                output::table(&["NAME", "PLUGIN", "KINDS", "STATUS"], &rows)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `devices manage --agent`: deploys an agent to each device, one after another,
/// through the configured agent deployer. A success moves the device to managed
/// (agent) with its profile; a failure is an alert naming the step, and the device
/// stays where it was. Every UUID is checked before anything is deployed.
pub fn deploy_agents(
    ctx: &Context,
    uuids: &[String],
    profile: Option<String>,
) -> anyhow::Result<ExitCode> {
    let store = ctx.store()?;
    let mut devices = Vec::new();
    for uuid in uuids {
        let uuid = vprov_core::hello::DeviceUuid::canonical(uuid);
        let device = store
            .device(&uuid)?
            .ok_or_else(|| anyhow!("no device with UUID {uuid}; nothing was deployed"))?;
        devices.push(device);
    }
    let settings = host_settings(&ctx.config, PluginKinds::AGENT_DEPLOYER);
    let rt = CommandRuntime::new()?;
    let failed = rt.block_on(async {
        let store = StoreHandle::spawn(store);
        let (alerts, writer) = AlertLog::start(
            store.clone(),
            Default::default(),
            ctx.config.alerts,
            "vprov-cli".into(),
        );
        let link = ServerLink {
            alerts,
            store: store.clone(),
            runtime: tokio::runtime::Handle::current(),
        };
        let host = PluginHost::new(settings, Some(link), Default::default());
        host.reload().await;
        let mut failed = 0usize;
        for device in devices {
            let uuid = device.uuid.clone();
            match host
                .deploy_and_manage(device, profile.clone(), &actor())
                .await
            {
                Ok(deployed) => {
                    // A closed output pipe must not stop the remaining deployments.
                    let _ = outln!(
                        "{uuid}: agent deployed (profile {}); managed (agent)",
                        deployed.as_deref().unwrap_or("-")
                    );
                }
                Err(message) => {
                    failed += 1;
                    eprintln!("error: {message}");
                }
            }
        }
        host.shutdown().await;
        writer.finish(std::time::Duration::from_secs(10)).await;
        failed
    });
    if failed > 0 {
        bail!(
            "{failed} of {} agent deployment(s) failed (see `vprov alerts list`)",
            uuids.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn file_name(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

/// Instance status from the running server's snapshot, or the configuration.
fn instance_status(settings: &HostSettings) -> (Vec<InstanceReport>, String) {
    let snapshot = std::fs::read(HostSettings::status_file(&settings.data_dir))
        .ok()
        .and_then(|b| serde_json::from_slice::<StatusSnapshot>(&b).ok())
        .filter(|s| Path::new(&format!("/proc/{}", s.server_pid)).exists());
    if let Some(s) = snapshot {
        return (
            s.instances,
            format!(
                "from the running server (pid {}, as of {})",
                s.server_pid,
                output::time(s.updated_at_ms)
            ),
        );
    }
    match instances::load(&settings.config_path) {
        Ok(specs) => (
            specs
                .into_iter()
                .map(|s| InstanceReport {
                    name: s.name,
                    plugin: s.plugin,
                    kinds: Vec::new(),
                    status: "configured".into(),
                })
                .collect(),
            "as configured: no server is running".into(),
        ),
        Err(e) => (
            Vec::new(),
            format!("unknown: the configuration cannot be used ({e})"),
        ),
    }
}

/// What `keys export` was asked to do.
pub struct ExportArgs {
    pub batch: i64,
    pub format: String,
    pub out: PathBuf,
    pub options: Vec<String>,
    pub force: bool,
}

/// `vprov keys export`: routes the batch's available keys to the exporter offering
/// the format and writes the result to `out` (mode 0600, whole, synced, never
/// partial).
pub fn export(args: ExportArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let mut options = parse_options(&args.options)?;
    // `--option force=true` is the same as --force; overwriting is the core's business,
    // so exporters never see it.
    let force = args.force || options.remove("force").as_deref() == Some("true");
    if args.out.exists() && !force {
        bail!("{} exists; pass --force to replace it", args.out.display());
    }
    let settings = host_settings(&ctx.config, PluginKinds::KEY_EXPORTER);
    let host = PluginHost::new(settings.clone(), None, AlertSinks::default());
    let rt = CommandRuntime::new()?;
    let offers = rt.block_on(async {
        host.reload().await;
        export::offers(&host).await
    });
    let (instance, format) = export::choose(&offers, &args.format, &settings.plugin_dir)?;
    let hello_port = ctx.config.hello.listen.port();
    let target = export::ExportTarget {
        batch: args.batch,
        format: &format,
        plugin: &instance.plugin,
        options: &options,
        destination: Some(args.out.display().to_string()),
        server: (
            ctx.config.export.server_address.as_str(),
            ctx.config.export.server_port.unwrap_or(hello_port),
        ),
    };
    let (request, count) = export::request(&mut ctx.store()?, &target, &actor())?;
    let file = rt
        .block_on(instance.call("export", move |p| p.export_keys(&request)))
        .with_context(|| format!("exporting batch {} as {}", args.batch, format.name))?;
    write_whole(&args.out, &file.bytes, force)
        .with_context(|| format!("writing {}", args.out.display()))?;
    outln!(
        "exported {count} pairs of batch {} as {} to {} ({} bytes, plugin {} {}); {}",
        args.batch,
        format_label(&format),
        args.out.display(),
        file.bytes.len(),
        instance.plugin,
        instance.plugin_version,
        output::PRIVATE_MODE_NOTE
    )?;
    Ok(ExitCode::SUCCESS)
}

fn format_label(f: &ExportFormat) -> String {
    format!("{} ({})", f.name, f.mime_type)
}

/// `--option key=value` pairs as a map (a repeated key is an error).
fn parse_options(options: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut map = BTreeMap::new();
    for option in options {
        let Some((k, v)) = option.split_once('=') else {
            bail!("--option {option:?}: expected key=value");
        };
        if k.is_empty() {
            bail!("--option {option:?}: the key is empty");
        }
        if map.insert(k.to_string(), v.to_string()).is_some() {
            bail!("--option {k} is given twice");
        }
    }
    Ok(map)
}

/// Writes `bytes` to `out` as a [`PrivateFile`] (mode 0600, whole and synced, never
/// partial), after checking that the file system has room for them.
fn write_whole(out: &Path, bytes: &[u8], force: bool) -> std::io::Result<()> {
    // Check before writing: on a small USB key a half-written file helps nobody.
    let dir = output::parent_dir(out);
    let stat = nix::sys::statvfs::statvfs(&dir).map_err(std::io::Error::from)?;
    // Both are u64 on 64-bit Linux but narrower elsewhere.
    #[allow(clippy::useless_conversion)]
    let free = u64::from(stat.blocks_available()) * u64::from(stat.fragment_size());
    if (bytes.len() as u64) > free {
        return Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!(
                "{} bytes needed but only {free} are free on {}",
                bytes.len(),
                dir.display()
            ),
        ));
    }
    let mut file = PrivateFile::create(out, force)?;
    file.write_all(bytes)?;
    file.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_key_value_pairs() {
        let m = parse_options(&["a=1".into(), "b=x=y".into()]).unwrap();
        assert_eq!(m["a"], "1");
        assert_eq!(m["b"], "x=y");
        assert!(parse_options(&["novalue".into()]).is_err());
        assert!(parse_options(&["=v".into()]).is_err());
        assert!(parse_options(&["a=1".into(), "a=2".into()]).is_err());
    }

    #[test]
    fn a_whole_file_is_written_private_and_an_existing_one_kept_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("keys.csv");
        write_whole(&out, b"one", false).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"one");
        let err = write_whole(&out, b"two", false).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&out).unwrap(), b"one");
        write_whole(&out, b"three", true).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"three");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&out).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        // No temporary file is left behind either way.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("missing-dir").join("keys.csv");
        assert!(write_whole(&out, b"x", false).is_err());
        assert!(!out.exists());
    }
}
