//! `vprov serve`: the running provisioning server.
//!
//! Data flow: [`hello_listener`] (TCP 9971) parses a hello and checks its PID in the
//! store → [`jobs`] connects back to the device over TLS-PSK and provisions it → the
//! store records the device. Every failure on the way is raised on the [`alerts`]
//! log. The store is owned by one thread ([`store_thread`]); no async worker touches
//! SQLite. [`reachability`] checks managed devices periodically. [`lock`] keeps it to
//! one server per data directory.

pub mod alerts;
pub mod hello_listener;
pub mod jobs;
pub mod lock;
pub mod pki_expiry;
pub mod reachability;
pub mod store_thread;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::ca::CertificateAuthority;
use crate::plugins::sinks::AlertSinks;
use crate::plugins::{HostSettings, PluginHost, ServerLink};
use crate::store::Store;
use alerts::AlertLog;
use hello_listener::{HelloLimits, HelloListener};
use jobs::{JobManager, JobSettings};
use store_thread::StoreHandle;

/// Everything `run` needs besides the bound listener.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub hello: HelloLimits,
    pub jobs: JobSettings,
    /// How long shutdown waits for running jobs (abandoned safely after it) and for
    /// admin API requests in progress (cut off after it).
    pub shutdown_grace: Duration,
    pub plugins: HostSettings,
    /// The periodic reachability check of managed devices; `None` turns it off.
    pub reachability: Option<reachability::ReachabilitySettings>,
    /// The admin API and console; `None` turns it off.
    pub api: Option<crate::api::ApiSettings>,
    /// Alert retention and how often repeats are passed on.
    pub alerts: crate::config::AlertsConfig,
    /// Days before a provisioning chain's expiry it is warned about (`[pki]`).
    pub pki_expiry_warning_days: u32,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot offer the admin API over TLS: {0}")]
    ApiTls(#[from] crate::api::tls::ApiTlsError),
}

/// Runs the server on an already-bound hello listener (and admin API listener, when
/// the API is on) until `shutdown` resolves.
/// `ca` is vprov's CA as [`CertificateAuthority::load_or_create`] gives it.
pub async fn run(
    store: Store,
    ca: CertificateAuthority,
    listener: TcpListener,
    api_listener: Option<TcpListener>,
    settings: ServerSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let ca = Arc::new(ca);
    let api_tls = match (&settings.api, &api_listener) {
        (Some(api), Some(l)) => Some(crate::api::tls::server_config(
            api.certificate
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path())),
            &ca,
            l.local_addr()
                .map_err(|e| crate::api::tls::ApiTlsError::Read {
                    path: "the API listener".into(),
                    source: e,
                })?,
            &api.names,
        )?),
        _ => None,
    };
    let ca_der: Arc<[u8]> = ca.cert_der().into();
    let store = StoreHandle::spawn(store);
    let sinks = AlertSinks::default();
    let (alerts, alert_writer) = AlertLog::start(store.clone(), sinks.clone(), settings.alerts);
    let (stop_tx, stop_rx) = watch::channel(false);

    let plugins = PluginHost::new(
        settings.plugins.clone(),
        Some(ServerLink {
            alerts: alerts.clone(),
            store: store.clone(),
            runtime: tokio::runtime::Handle::current(),
        }),
        sinks,
    );
    settings.plugins.prepare_directories();
    plugins.reload().await;
    plugins.remove_stale_copies().await;
    // Kept alive until shutdown; without it plugins still work, only hot reload is off.
    let _watcher = match crate::plugins::watch::start(plugins.clone(), stop_rx.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                "plugin hot reload is off: cannot watch the plugin directory or configuration: {e}"
            );
            None
        }
    };

    let jobs = JobManager::new(
        settings.jobs.clone(),
        store.clone(),
        alerts.clone(),
        ca,
        Some(plugins.clone()),
    );
    jobs.resume_pending().await;

    let expiry = tokio::spawn(pki_expiry::run(
        store.clone(),
        alerts.clone(),
        settings.pki_expiry_warning_days,
        stop_rx.clone(),
    ));
    let checking = settings.reachability.clone().map(|r| {
        tokio::spawn(reachability::run(
            store.clone(),
            alerts.clone(),
            ca_der,
            r,
            stop_rx.clone(),
        ))
    });
    let api = match (settings.api.clone(), api_listener, api_tls) {
        (Some(api_settings), Some(api_listener), Some(tls)) => {
            let state = Arc::new(crate::api::ApiState {
                settings: api_settings,
                store: store.clone(),
                alerts: alerts.clone(),
                plugins: plugins.clone(),
                events: Default::default(),
                limiter: Default::default(),
                generations: Default::default(),
                stop: stop_rx.clone(),
            });
            Some(tokio::spawn(crate::api::serve(
                api_listener,
                tls,
                state,
                stop_rx.clone(),
                settings.shutdown_grace,
            )))
        }
        _ => None,
    };
    let hello = HelloListener::new(
        listener,
        settings.hello.clone(),
        store,
        alerts,
        jobs.clone(),
    );
    let listening = tokio::spawn(hello.run(stop_rx));

    shutdown.await;
    tracing::info!(
        "shutting down: no new hellos or API connections; waiting for running jobs and API requests"
    );
    let _ = stop_tx.send(true);
    let _ = listening.await;
    let _ = expiry.await;
    if let Some(checking) = checking {
        let _ = checking.await;
    }
    // Both within the one grace period.
    let api_done = async {
        if let Some(api) = api {
            let _ = api.await;
        }
    };
    tokio::join!(api_done, jobs.shutdown(settings.shutdown_grace));
    plugins.shutdown().await;
    alert_writer.finish(Duration::from_secs(5)).await;
    Ok(())
}

/// Connections the kernel queues for the hello listener before it accepts them (the
/// kernel caps it at `net.core.somaxconn`). Devices connect, write 32 bytes and close
/// at once, so a burst of hellos outpaces any accept loop for a moment; a full queue
/// drops SYNs and costs the device a one-second retransmit.
const HELLO_BACKLOG: u32 = 4096;

/// Binds the hello listener (a clear error names the address on failure).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // As TcpListener::bind does: a restarted server can rebind at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(HELLO_BACKLOG)
}
