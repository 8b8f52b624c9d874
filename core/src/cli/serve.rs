//! `vprov serve`: runs the provisioning server until SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;
use vprov_core::api::ApiSettings;
use vprov_core::config::AdminPasswordPolicy;
use vprov_core::device::DeviceTimeouts;
use vprov_core::management::Reach;
use vprov_core::plugins::HostSettings;
use vprov_core::server::hello_listener::HelloLimits;
use vprov_core::server::jobs::JobSettings;
use vprov_core::server::lock::ServeLock;
use vprov_core::server::reachability::ReachabilitySettings;
use vprov_core::server::{self, ServerSettings};
use vprov_sdk::PluginKinds;

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
}

/// `--api-listen`: an address, or off (as `api.listen = "off"` in the configuration).
#[derive(Debug, Clone, Copy)]
enum ApiListen {
    Off,
    At(SocketAddr),
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
    let hello = &ctx.config.hello;
    let prov = &ctx.config.provisioning;
    let listen = args.hello_listen.unwrap_or(hello.listen);
    let api_listen = match args.api_listen {
        Some(ApiListen::Off) => None,
        Some(ApiListen::At(addr)) => Some(addr),
        None => ctx.config.api.listen,
    };
    let device_port = args.device_port.unwrap_or(prov.device_port);
    let timeouts = DeviceTimeouts {
        connect: prov.connect_timeout,
        request: prov.step_timeout,
    };
    let settings = ServerSettings {
        hello: HelloLimits {
            max_connections: hello.max_connections,
            read_timeout: hello.read_timeout,
            per_source_burst: hello.per_source_burst,
            per_source_per_second: hello.per_source_per_second,
        },
        jobs: JobSettings {
            device_port: args.device_port.unwrap_or(prov.device_port),
            max_concurrent: prov.max_concurrent_jobs,
            timeouts: DeviceTimeouts {
                connect: prov.connect_timeout,
                request: prov.step_timeout,
            },
            commit_wait: prov.commit_wait,
            confirm_timeout: prov.confirm_timeout,
            keep_provisioning_password: prov.admin_password == AdminPasswordPolicy::Provisioning,
            domain: prov.domain.clone(),
            host_name_template: prov.host_name_template.clone(),
            local_tls: prov.local_tls,
            retry_backoff: prov.retry_backoff,
            retry_backoff_max: prov.retry_backoff_max,
        },
        shutdown_grace: prov.shutdown_grace,
        reachability: ctx
            .config
            .management
            .check_interval
            .map(|interval| ReachabilitySettings {
                interval,
                device_port: args.device_port.unwrap_or(prov.device_port),
                timeouts: DeviceTimeouts {
                    connect: prov.connect_timeout,
                    request: prov.step_timeout,
                },
            }),
        plugins: HostSettings {
            publishes_status: true,
            ..super::plugins::host_settings(
                &ctx.config,
                PluginKinds::KEY_EXPORTER
                    .union(PluginKinds::ALERT_SINK)
                    .union(PluginKinds::POST_PROVISION)
                    .union(PluginKinds::AGENT_DEPLOYER),
            )
        },
        api: api_listen.map(|_| ApiSettings {
            certificate: ctx.config.api.certificate.clone(),
            names: ctx.config.api.names.clone(),
            session_ttl: ctx.config.api.session_ttl,
            event_streams_per_account: ctx.config.api.event_streams_per_account,
            store_options: ctx.store_options(),
            reach: Reach {
                device_port,
                timeouts,
            },
            export_server: (
                ctx.config.export.server_address.clone(),
                ctx.config
                    .export
                    .server_port
                    .unwrap_or(ctx.config.hello.listen.port()),
            ),
        }),
        alerts: ctx.config.alerts,
    };
    let mut store = ctx.store()?;
    // Held until this function returns: one server per data directory.
    let _lock = ServeLock::acquire(&ctx.config.data_dir)?;
    // The CA exists before anything listens: clients fetch it (`vprov ca export`) to
    // trust the admin API as soon as the listening lines are printed.
    let ca = vprov_core::ca::CertificateAuthority::load_or_create(&mut store)
        .context("loading or creating vprov's certificate authority")?;
    let no_account = store.admins()?.is_empty();
    if !store.password_status()?.set {
        tracing::warn!(
            "no provisioning password is set: devices cannot be provisioned until `vprov password set`"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(async move {
        let listener = server::bind(listen)
            .await
            .with_context(|| format!("cannot listen for hellos on {listen}"))?;
        let local = listener.local_addr()?;
        let api_listener = match api_listen {
            Some(addr) => Some(
                server::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen for the admin API on {addr}"))?,
            ),
            None => None,
        };
        // One line on stdout each, for scripts and tests that bind port 0.
        let mut lines = vec![format!("listening for hellos on {local}")];
        if let Some(api) = &api_listener {
            lines.push(format!(
                "admin API and console on https://{}",
                api.local_addr()?
            ));
        }
        announce(&lines);
        if let (true, Some(api)) = (no_account, &api_listener) {
            // On stderr with the log: the two lines above are what scripts parse.
            tracing::warn!(
                "no admin account exists yet: create the first with `vprov admin add NAME`, \
                 then sign in to the console at https://{}/",
                api.local_addr()?
            );
        }
        tracing::info!(data_dir = %ctx.config.data_dir.display(), "vprov serving");
        server::run(
            store,
            ca,
            listener,
            api_listener,
            settings,
            shutdown_signal(),
        )
        .await?;
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

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
