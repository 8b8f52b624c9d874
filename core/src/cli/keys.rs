//! `vprov keys …`: generate, list, check and revoke provisioning keys.

use std::io::{self, BufRead, BufWriter, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use vprov_core::keys::{Pid, Pps};
use vprov_core::store::{KeyFilter, KeyRecord, KeyState, RevokeOutcome, Store};

use super::choices::KeyStateChoice;
use super::output::{self, outln, KeyListFormat, ListFormat, PrivateFile};
use super::{actor, Context};

/// Largest batch `keys generate` makes in one call.
use vprov_core::keys::MAX_BATCH;
/// Batches at least this large show a progress bar on a terminal.
const PROGRESS_FROM: u32 = 10_000;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Generate a batch of new PID/PPS pairs from the OS random generator
    ///
    /// PIDs are unique across the whole store and never reissued. Prints the batch id;
    /// see the pairs with `vprov keys list --batch ID --reveal`.
    Generate {
        /// Number of pairs, 1 to 1000000
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_BATCH)))]
        count: u32,
        /// A note stored with the batch, e.g. the site or purchase order
        #[arg(long)]
        comment: Option<String>,
    },
    /// List provisioning keys (PIDs; PPSs only with --reveal)
    List {
        /// Only keys of this batch
        #[arg(long, value_name = "ID")]
        batch: Option<i64>,
        /// Only keys in this state (`--state available --reveal --format json` is
        /// what amtsim reads)
        #[arg(long, value_enum)]
        state: Option<KeyStateChoice>,
        /// Only this key (dashes and lower case accepted)
        #[arg(long, value_name = "PID")]
        pid: Option<String>,
        /// Also show each PPS; every reveal is written to the audit log
        #[arg(long)]
        reveal: bool,
        /// Output format
        #[arg(long, value_enum, default_value = "table")]
        format: KeyListFormat,
        /// Write the list to this new file, mode 0600, instead of standard output (a
        /// shell redirect would create a file others can read)
        #[arg(long, value_name = "PATH")]
        output: Option<std::path::PathBuf>,
        /// Replace the --output file if it exists
        #[arg(long, requires = "output")]
        force: bool,
    },
    /// List key batches with how many keys are available, used and revoked
    Batches {
        /// Output format
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
    /// Check a PID (and optionally its PPS) for typing errors and against the store
    ///
    /// Validates length, alphabet and every check character; dashes, spaces and lower
    /// case are accepted. When the data directory holds a store, also looks the PID up:
    /// its batch and state, and whether the PPS is this PID's own (a swapped pair is
    /// well formed but belongs to another PID). No PPS is ever printed. Exits 0 when
    /// valid, 1 with what is wrong named otherwise.
    Check {
        /// Provisioning ID, e.g. 0000-037M
        pid: String,
        /// Provisioning passphrase, e.g. NKLD-G5DC-RRNQ-E9YZ-ZIJL-7LFL-VJED-69XJ
        pps: Option<String>,
    },
    /// Export a batch's available keys through a key export plugin
    ///
    /// Routes to whichever plugin offers FORMAT (`vprov plugins list`; e.g. csv from
    /// export-csv). Used and revoked keys are left out. The export is written to the
    /// audit log before any PPS is read; the file is created with mode 0600 (it holds
    /// every PPS), written whole and synced, never left partial, and an existing file
    /// is kept unless --force.
    ///
    /// Options (--option KEY=VALUE) of the bundled formats:
    ///
    /// - csv (export-csv): dashes=false writes bare PIDs and PPSs; delimiter=; for
    ///   spreadsheets in locales with a decimal comma.
    ///
    /// - pdf (export-print): paper=a4|letter (default a4); printer=NAME also prints
    ///   the sheet on that CUPS printer (lp -d NAME).
    ///
    /// - setupbin (export-usb): version=1..4 (default 2, the 2.1 layout PSK-era firmware
    ///   reads); consumable=true|false (default true: the BIOS marks a record used);
    ///   scramble=true|false (default true); server=IPV4 and port=N (the provisioning
    ///   server's address, required unless [export] server_address is configured, and
    ///   port, default the hello port); mode=N (provisioning mode, default 1 =
    ///   enterprise).
    ///
    /// force=true is the same as --force, for every format.
    Export {
        /// The batch to export
        #[arg(long, value_name = "ID")]
        batch: i64,
        /// Export format, as a plugin offers it (e.g. csv)
        #[arg(long)]
        format: String,
        /// File to write (mode 0600)
        #[arg(long, visible_alias = "output", value_name = "PATH")]
        out: std::path::PathBuf,
        /// A format option as key=value (repeatable), e.g. --option server=192.0.2.10;
        /// each format's options are listed above
        #[arg(long = "option", value_name = "KEY=VALUE")]
        options: Vec<String>,
        /// Replace PATH if it exists
        #[arg(long)]
        force: bool,
    },
    /// Decode a setup.bin USB key file and show its header and records
    ///
    /// Reads files from vprov and from other tools (Intel's included). Passwords and
    /// PPSs are masked unless --reveal: the file holds secrets in the clear, so
    /// treat it (and the USB key) like the keys themselves.
    InspectSetupbin {
        /// The setup.bin file
        file: std::path::PathBuf,
        /// Show passwords and PPSs
        #[arg(long)]
        reveal: bool,
        /// Output format
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
    /// Revoke keys so that hellos with their PIDs are refused
    ///
    /// Revoked PIDs are never reissued, and revoking cannot be undone. Either name PIDs
    /// or give --batch to revoke every still-available key of a batch. Revoking a batch
    /// or more than one key asks for confirmation on the terminal; scripts pass --yes.
    Revoke {
        /// PIDs to revoke; if any is unknown, nothing is revoked
        #[arg(required_unless_present = "batch", conflicts_with = "batch")]
        pids: Vec<String>,
        /// Revoke every available key of this batch
        #[arg(long, value_name = "ID")]
        batch: Option<i64>,
        /// Do not ask for confirmation (needed when standard input is not a terminal)
        #[arg(long)]
        yes: bool,
    },
}

pub fn run(cmd: KeysCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::Generate { count, comment } => generate(ctx, count, comment.as_deref()),
        KeysCommand::List {
            batch,
            state,
            pid,
            reveal,
            format,
            output,
            force,
        } => {
            let pid = pid
                .map(|p| p.parse::<Pid>().with_context(|| format!("--pid {p:?}")))
                .transpose()?;
            let filter = KeyFilter {
                batch,
                state: state.map(KeyState::from),
                pid,
            };
            match output {
                Some(path) => list_to_file(ctx, filter, reveal, format, &path, force),
                None => {
                    let mut out = BufWriter::new(io::stdout().lock());
                    list(ctx, filter, reveal, format, &mut out)?;
                    out.flush()?;
                    Ok(ExitCode::SUCCESS)
                }
            }
        }
        KeysCommand::Batches { format } => batches(ctx, format),
        KeysCommand::InspectSetupbin {
            file,
            reveal,
            format,
        } => inspect_setupbin(&file, reveal, format),
        KeysCommand::Export {
            batch,
            format,
            out,
            options,
            force,
        } => super::plugins::export(
            super::plugins::ExportArgs {
                batch,
                format,
                out,
                options,
                force,
            },
            ctx,
        ),
        KeysCommand::Check { pid, pps } => check(ctx, &pid, pps.as_deref()),
        KeysCommand::Revoke { pids, batch, yes } => revoke(ctx, &pids, batch, yes),
    }
}

fn generate(ctx: &Context, count: u32, comment: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut store = ctx.store()?;
    let bar = (count >= PROGRESS_FROM).then(|| {
        // Hidden automatically when stderr is not a terminal.
        let bar = ProgressBar::new(u64::from(count));
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} keys ({per_sec}, {eta} left)")
                .expect("static template"),
        );
        bar
    });
    let batch = store
        .generate_batch(count, comment, &actor(), |n| {
            if let Some(bar) = &bar {
                bar.set_position(n);
            }
        })
        .context("generating keys")?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    outln!("batch {}: {} keys generated", batch.id, batch.size)?;
    Ok(ExitCode::SUCCESS)
}

fn list(
    ctx: &Context,
    filter: KeyFilter,
    reveal: bool,
    format: KeyListFormat,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut store = ctx.store()?;
    let mut writer = KeyWriter::start(out, format, reveal)?;
    if reveal {
        store.reveal_keys(&filter, &actor(), |k| writer.row(&k))?;
    } else {
        store.for_each_key(&filter, |k| writer.row(&k))?;
    }
    writer.finish()?;
    Ok(())
}

/// `keys list --output PATH`: the list as a [`PrivateFile`], whole or not at all.
fn list_to_file(
    ctx: &Context,
    filter: KeyFilter,
    reveal: bool,
    format: KeyListFormat,
    path: &std::path::Path,
    force: bool,
) -> anyhow::Result<ExitCode> {
    if path.exists() && !force {
        bail!("{} exists; pass --force to replace it", path.display());
    }
    let mut file = BufWriter::new(
        PrivateFile::create(path, force).with_context(|| format!("writing {}", path.display()))?,
    );
    list(ctx, filter, reveal, format, &mut file)?;
    file.into_inner()
        .map_err(io::IntoInnerError::into_error)?
        .commit()
        .with_context(|| format!("writing {}", path.display()))?;
    outln!(
        "keys listed to {}; {}",
        path.display(),
        output::PRIVATE_MODE_NOTE
    )?;
    Ok(ExitCode::SUCCESS)
}

/// Streams key rows in one of the list formats, so a million keys need no buffer.
struct KeyWriter<'a> {
    out: &'a mut dyn Write,
    format: KeyListFormat,
    reveal: bool,
    first: bool,
}

impl<'a> KeyWriter<'a> {
    fn start(out: &'a mut dyn Write, format: KeyListFormat, reveal: bool) -> io::Result<Self> {
        match format {
            KeyListFormat::Table => {
                write!(
                    out,
                    "{:<7} {:<9}  {:<9}  {:<36}  {:<20}",
                    "BATCH", "PID", "STATE", "DEVICE", "CHANGED"
                )?;
                if reveal {
                    write!(out, "  PPS")?;
                }
                writeln!(out)?;
            }
            KeyListFormat::Csv => {
                write!(out, "batch,pid,state,device_uuid,state_changed_at")?;
                if reveal {
                    write!(out, ",pps")?;
                }
                writeln!(out)?;
            }
            KeyListFormat::Json => write!(out, "[")?,
        }
        Ok(KeyWriter {
            out,
            format,
            reveal,
            first: true,
        })
    }

    fn row(&mut self, k: &KeyRecord) -> anyhow::Result<()> {
        let pps = match (&k.pps, self.reveal) {
            (Some(pps), true) => Some(pps.expose_dashed()),
            _ => None,
        };
        let changed = output::time(k.state_changed_at);
        let device = k.device_uuid.as_deref();
        match self.format {
            KeyListFormat::Table => {
                write!(
                    self.out,
                    "{:<7} {:<9}  {:<9}  {:<36}  {:<20}",
                    k.batch_id,
                    k.pid.dashed(),
                    k.state,
                    device.unwrap_or("-"),
                    changed
                )?;
                if let Some(pps) = &pps {
                    write!(self.out, "  {}", pps.as_str())?;
                }
                writeln!(self.out)?;
            }
            KeyListFormat::Csv => {
                // Every field is a number, a key, a state, a UUID or a time stamp: none
                // needs CSV quoting.
                write!(
                    self.out,
                    "{},{},{},{},{}",
                    k.batch_id,
                    k.pid.dashed(),
                    k.state,
                    device.unwrap_or(""),
                    changed
                )?;
                if let Some(pps) = &pps {
                    write!(self.out, ",{}", pps.as_str())?;
                }
                writeln!(self.out)?;
            }
            KeyListFormat::Json => {
                let mut obj = serde_json::json!({
                    "batch": k.batch_id,
                    "pid": k.pid.dashed(),
                    "state": k.state,
                    "device_uuid": device,
                    "state_changed_at": changed,
                });
                if let Some(pps) = &pps {
                    obj["pps"] = serde_json::Value::String(pps.to_string());
                }
                let sep = if self.first { "\n  " } else { ",\n  " };
                write!(self.out, "{sep}{obj}")?;
            }
        }
        self.first = false;
        Ok(())
    }

    fn finish(self) -> io::Result<()> {
        if self.format == KeyListFormat::Json {
            writeln!(self.out, "{}]", if self.first { "" } else { "\n" })?;
        }
        Ok(())
    }
}

fn batches(ctx: &Context, format: ListFormat) -> anyhow::Result<ExitCode> {
    let batches = ctx.store()?.batches()?;
    match format {
        ListFormat::Json => output::json(&serde_json::json!(batches
            .iter()
            .map(|b| serde_json::json!({
                "id": b.id,
                "created_at": output::time(b.created_at),
                "comment": b.comment,
                "size": b.size,
                "available": b.available,
                "used": b.used,
                "revoked": b.revoked,
            }))
            .collect::<Vec<_>>()))?,
        ListFormat::Table => output::table(
            &[
                "BATCH",
                "CREATED",
                "SIZE",
                "AVAILABLE",
                "USED",
                "REVOKED",
                "COMMENT",
            ],
            &batches
                .iter()
                .map(|b| {
                    vec![
                        b.id.to_string(),
                        output::time(b.created_at),
                        b.size.to_string(),
                        b.available.to_string(),
                        b.used.to_string(),
                        b.revoked.to_string(),
                        output::cell(b.comment.as_deref()),
                    ]
                })
                .collect::<Vec<_>>(),
        )?,
    }
    Ok(ExitCode::SUCCESS)
}

fn check(ctx: &Context, pid: &str, pps: Option<&str>) -> anyhow::Result<ExitCode> {
    let pid = match pid.parse::<Pid>() {
        Ok(pid) => pid,
        Err(e) => {
            eprintln!("invalid: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let pps = match pps.map(str::parse::<Pps>).transpose() {
        Ok(pps) => pps,
        Err(e) => {
            eprintln!("invalid: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let formed = if pps.is_some() {
        format!("PID {pid} and its PPS are well formed")
    } else {
        format!("PID {pid} is well formed")
    };
    // Only a store that exists is consulted: checking a key creates none.
    let Some(store) = Store::open_existing(&ctx.store_options())? else {
        outln!(
            "valid: {formed} (no store in {} to look it up in)",
            ctx.config.data_dir.display()
        )?;
        return Ok(ExitCode::SUCCESS);
    };
    let Some(found) = store.check_key(&pid, pps.as_ref())? else {
        eprintln!("invalid: {formed} but not in the store (never generated here)");
        return Ok(ExitCode::FAILURE);
    };
    let mut place = format!("batch {}, {}", found.batch_id, found.state);
    if let Some(uuid) = &found.device_uuid {
        place.push_str(&format!(" by device {uuid}"));
    }
    match found.pps_matches {
        Some(false) => {
            eprintln!(
                "invalid: the PPS does not belong to PID {pid} ({place}): both are well formed, \
                 so it is probably another pair's PPS"
            );
            Ok(ExitCode::FAILURE)
        }
        Some(true) => {
            outln!("valid: the PPS belongs to PID {pid} ({place})")?;
            Ok(ExitCode::SUCCESS)
        }
        None => {
            outln!("valid: {formed} and in the store ({place})")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Asks on the terminal before an irreversible change; `yes` answers for scripts.
/// Without a terminal and without `yes`, refuses (nothing is changed).
fn confirm(question: &str, yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !io::stdin().is_terminal() {
        bail!("{question} Standard input is not a terminal to confirm on: pass --yes to revoke without asking; nothing was revoked");
    }
    eprint!("{question} This cannot be undone. Revoke? [y/N] ");
    io::stderr().flush()?;
    let mut answer = String::new();
    io::stdin().lock().read_line(&mut answer)?;
    if !matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes") {
        bail!("not confirmed; nothing was revoked");
    }
    Ok(())
}

fn revoke(
    ctx: &Context,
    pids: &[String],
    batch: Option<i64>,
    yes: bool,
) -> anyhow::Result<ExitCode> {
    let mut store = ctx.store()?;
    if let Some(batch) = batch {
        let summary = store
            .batches()?
            .into_iter()
            .find(|b| b.id == batch)
            .ok_or(vprov_core::store::StoreError::BatchNotFound(batch))?;
        confirm(
            &format!(
                "This revokes all {} available keys of batch {batch}{}.",
                summary.available,
                summary
                    .comment
                    .map(|c| format!(" ({c})"))
                    .unwrap_or_default()
            ),
            yes,
        )?;
        let n = store.revoke_batch(batch, &actor())?;
        outln!("batch {batch}: {n} available keys revoked")?;
        return Ok(ExitCode::SUCCESS);
    }
    let parsed = pids
        .iter()
        .map(|p| p.parse::<Pid>().with_context(|| format!("{p:?}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if parsed.len() > 1 {
        // Unknown PIDs are named before anything is asked.
        for pid in &parsed {
            if store.check_key(pid, None)?.is_none() {
                return Err(vprov_core::store::StoreError::UnknownPid(pid.dashed()).into());
            }
        }
        confirm(&format!("This revokes {} keys.", parsed.len()), yes)?;
    }
    let outcomes = store.revoke_pids(&parsed, &actor())?;
    let mut all_done = true;
    for (pid, outcome) in outcomes {
        match outcome {
            RevokeOutcome::Revoked => outln!("{pid}: revoked")?,
            RevokeOutcome::AlreadyRevoked => outln!("{pid}: already revoked")?,
            RevokeOutcome::Used { device_uuid } => {
                all_done = false;
                outln!("{pid}: not revoked: already used by device {device_uuid}")?;
            }
        }
    }
    if !all_done {
        bail!("some keys could not be revoked because devices were provisioned with them");
    }
    Ok(ExitCode::SUCCESS)
}

fn inspect_setupbin(
    path: &std::path::Path,
    reveal: bool,
    format: ListFormat,
) -> anyhow::Result<ExitCode> {
    use setupbin::{describe, SetupBin};
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let file = SetupBin::decode(&bytes)
        .with_context(|| format!("{} is not a valid setup.bin", path.display()))?;
    let name = |m: u16, v: u16| describe(m, v).map_or("unknown", |(n, _)| n);
    match format {
        ListFormat::Json => output::json(&serde_json::json!({
            "version": file.version,
            "format_version": format!("{}.{}", file.major, file.minor),
            "consumable": file.consumable,
            "record_count": file.records.len(),
            "consumed": file.consumed,
            "modules": file.modules,
            "records": file.records.iter().map(|r| serde_json::json!({
                "number": r.number,
                "valid": r.valid,
                "scrambled": r.scrambled,
                "entries": r.entries.iter().map(|e| serde_json::json!({
                    "id": format!("{}.{}", e.module, e.variable),
                    "name": name(e.module, e.variable),
                    "value": e.display_value(reveal),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }))?,
        ListFormat::Table => {
            outln!(
                "setup.bin version {} ({}.{}), {} records, {} consumed, records {}, modules {:?}",
                file.version,
                file.major,
                file.minor,
                file.records.len(),
                file.consumed,
                if file.consumable {
                    "consumable"
                } else {
                    "not consumed"
                },
                file.modules
            )?;
            let mut out = io::stdout().lock();
            for r in &file.records {
                writeln!(
                    out,
                    "record {}{}{}",
                    r.number,
                    if r.valid { "" } else { " (invalid or used)" },
                    if r.scrambled { ", scrambled" } else { "" }
                )?;
                for e in &r.entries {
                    writeln!(
                        out,
                        "  {}.{} {}: {}",
                        e.module,
                        e.variable,
                        name(e.module, e.variable),
                        e.display_value(reveal)
                    )?;
                }
            }
            out.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
