//! `vprov store copy`: moves a store between engines (SQLite data directory,
//! PostgreSQL URL) in one shot, row for row, into a new or empty target.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use vprov_core::store::{copy_store, redact_url, StoreOptions};

use super::output::outln;
use super::Context;

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy every row of a store into a new, empty one (e.g. SQLite to PostgreSQL)
    ///
    /// The target is created with the source's master key (sealed secrets are
    /// copied sealed); a target holding data, or one made with another key, is
    /// refused untouched. Row counts are compared after the copy.
    Copy(CopyArgs),
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Where to copy to: a postgres:// URL or a data directory (SQLite)
    #[arg(long, value_name = "URL-OR-DIR")]
    to: String,
    /// Where to copy from: a postgres:// URL or a data directory (default: the
    /// configured store)
    #[arg(long, value_name = "URL-OR-DIR")]
    from: Option<String>,
}

fn is_url(location: &str) -> bool {
    location.starts_with("postgres://") || location.starts_with("postgresql://")
}

/// `base` pointed at `location`.
fn at(base: &StoreOptions, location: &str) -> StoreOptions {
    let mut options = base.clone();
    if is_url(location) {
        options.url = Some(location.to_string());
    } else {
        options.url = None;
        options.data_dir = location.into();
    }
    options
}

fn describe(options: &StoreOptions) -> String {
    match &options.url {
        Some(url) => redact_url(url),
        None => options.data_dir.display().to_string(),
    }
}

pub fn run(cmd: StoreCommand, ctx: &Context) -> anyhow::Result<ExitCode> {
    let StoreCommand::Copy(args) = cmd;
    let configured = ctx.store_options();
    let from = match &args.from {
        Some(location) => at(&configured, location),
        None => configured.clone(),
    };
    let to = at(&from, &args.to);
    if from.url == to.url && (from.url.is_some() || from.data_dir == to.data_dir) {
        anyhow::bail!("--to names the source store itself: nothing copied");
    }
    let report = copy_store(&from, &to)?;
    for (table, rows) in &report.tables {
        outln!("{table:<20} {rows:>10} rows")?;
    }
    outln!(
        "copied {} rows from {} to {}; the target uses the source's master key: keep that key with it",
        report.total_rows(),
        describe(&from),
        describe(&to)
    )?;
    Ok(ExitCode::SUCCESS)
}
