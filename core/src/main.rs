//! `vprov`: the command line of the vprov provisioning server. Parses arguments,
//! sets up logging and hands over to [`cli`]; everything else lives in the
//! `vprov_core` library.

mod cli;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;

/// jemalloc, with its background thread returning freed pages to the system (about
/// ten seconds after they are freed). With glibc's malloc, `vprov serve` kept what a
/// burst of jobs had freed — spread over its per-thread arenas — and its peak grew
/// with every device provisioned: a 3,000-device load run left 62 MB resident of
/// which `malloc_trim` gave back 34 MB (README, "Benchmarks and load runs").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    init_logging(args.log_format());
    match cli::run(args) {
        Ok(code) => code,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The log on standard error, filtered by `VPROV_LOG` (default `info`): text lines,
/// or with `json` one JSON object per line (timestamp, level, `fields` with the
/// message and the same fields as the text line).
fn init_logging(format: vprov_core::config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VPROV_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let log = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_target(false);
    match format {
        vprov_core::config::LogFormat::Text => {
            log.with_ansi(std::io::stderr().is_terminal()).init()
        }
        vprov_core::config::LogFormat::Json => log.json().init(),
    }
}

/// Output piped into `head` and closed early is not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
