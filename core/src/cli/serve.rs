//! `vprov serve`: parses its options and runs the provisioning server
//! ([`vprov_core::app`]) until SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use vprov_core::app::{App, Overrides};

use super::Context;

/// Options of `vprov serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address for hello messages from devices [default: 0.0.0.0:9971, or the
    /// configuration's hello.listen]
    #[arg(long, value_name = "ADDR")]
    hello_listen: Option<SocketAddr>,
    /// Port of the devices' TLS / TLS-PSK service [default: 16993, or the
    /// configuration's provisioning.device_port]
    #[arg(long, value_name = "PORT")]
    device_port: Option<u16>,
    /// Address of the admin API and web console (HTTPS), or "off" [default:
    /// 127.0.0.1:8443, or the configuration's api.listen]
    #[arg(long, value_name = "ADDR|off", value_parser = parse_api_listen)]
    api_listen: Option<ApiListen>,
    /// Address of the Prometheus /metrics endpoint (plain HTTP), or "off" [default:
    /// the configuration's metrics.listen, off]
    #[arg(long, value_name = "ADDR|off", value_parser = parse_api_listen)]
    metrics_listen: Option<ApiListen>,
    /// This server's node name, to run several servers on one store (one data
    /// directory or, later, one database): letters, digits, '.', '_' or '-'
    /// [default: the configuration's cluster.node, else unnamed: the only server]
    #[arg(long, value_name = "NAME", value_parser = parse_node)]
    node: Option<String>,
}

fn parse_node(text: &str) -> Result<String, String> {
    vprov_core::config::check_node_name(text).map(|()| text.to_string())
}

/// `--api-listen`, `--metrics-listen`: an address, or off (as `listen = "off"` in the
/// configuration).
#[derive(Debug, Clone, Copy)]
enum ApiListen {
    Off,
    At(SocketAddr),
}

impl ApiListen {
    fn address(self) -> Option<SocketAddr> {
        match self {
            ApiListen::Off => None,
            ApiListen::At(addr) => Some(addr),
        }
    }
}

fn parse_api_listen(text: &str) -> Result<ApiListen, String> {
    if text == "off" {
        return Ok(ApiListen::Off);
    }
    text.parse()
        .map(ApiListen::At)
        .map_err(|_| format!("{text:?} is not an address:port (or \"off\")"))
}

pub fn run(args: ServeArgs, ctx: &Context) -> anyhow::Result<ExitCode> {
    let overrides = Overrides {
        node: args.node,
        hello_listen: args.hello_listen,
        device_port: args.device_port,
        api_listen: args.api_listen.map(ApiListen::address),
        metrics_listen: args.metrics_listen.map(ApiListen::address),
    };
    let app = App::prepare(&ctx.config, ctx.store_options(), overrides)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        let server = app.bind().await?;
        let shutdown = shutdown_signal();
        // One line on stdout each, for scripts and tests that bind port 0.
        let mut lines = vec![format!("listening for hellos on {}", server.hello_addr()?)];
        let api = server.api_addr()?;
        if let Some(api) = api {
            lines.push(format!("admin API and console on https://{api}"));
        }
        if let Some(metrics) = server.metrics_addr()? {
            lines.push(format!("metrics on http://{metrics}/metrics"));
        }
        announce(&lines);
        if let (true, Some(api)) = (server.no_account(), api) {
            // On stderr with the log: the two lines above are what scripts parse.
            tracing::warn!(
                "no admin account exists yet: create the first with `vprov admin add NAME`, \
                 then sign in to the console at https://{api}/"
            );
        }
        tracing::info!(data_dir = %ctx.config.data_dir.display(), "vprov serving");
        server.run(shutdown).await?;
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    });
    // A plugin call that never returned still occupies a blocking thread; do not
    // wait for it (dropping the runtime would).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// Prints the listening lines on stdout. A reader that closed stdout once it had the
/// line it wanted (or never opened it) must not stop a server that is already
/// listening: that would end provisioning silently. The lines go to the log instead.
fn announce(lines: &[String]) {
    let mut out = std::io::stdout().lock();
    let printed = lines
        .iter()
        .try_for_each(|line| writeln!(out, "{line}"))
        .and_then(|()| out.flush());
    if let Err(e) = printed {
        tracing::warn!(
            "cannot print the listening lines on stdout ({e}); serving anyway: {}",
            lines.join("; ")
        );
    }
}

/// Registers for SIGINT (Ctrl-C) and SIGTERM at once and returns what resolves on
/// either. Called before the listening lines are printed: a signal sent as soon as
/// they appear (a service manager, a test) stops the server cleanly; registered any
/// later, it would find the default action and kill the process mid-start.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let interrupt = signal(SignalKind::interrupt()).ok();
        async move {
            let received = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = received(term) => {}
                _ = received(interrupt) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
