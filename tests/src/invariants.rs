//! The store's invariants after a fault run (a server, or one of several nodes,
//! killed with SIGKILL while it provisioned), shared by `loadrun --kill` /
//! `--kill-node` and the end-to-end tests: no used PID without its device record, no
//! device record without its used PID, every device that committed recorded, and
//! every recorded device accepting the credential vprov recorded for it, over TLS
//! pinned to the certificate vprov issued it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use vprov_core::store::{DeviceAccess, Store, StoreOptions};

use crate::sim::DeviceReport;

/// Checks the invariants of the store in `data` (or, with `store_url`, the
/// PostgreSQL store it names; the master key stays in `data`) against the simulated
/// devices' `reports` (their TLS service on `device_port`); returns how many
/// committed devices were checked.
pub async fn check(
    data: &Path,
    store_url: Option<&str>,
    reports: &[DeviceReport],
    device_port: u16,
) -> anyhow::Result<usize> {
    let committed: Vec<&DeviceReport> = reports.iter().filter(|r| r.committed).collect();
    let uuids = committed.iter().map(|r| r.uuid.clone()).collect();
    let (data, url) = (data.to_path_buf(), store_url.map(str::to_string));
    // The store is read on a plain thread: the PostgreSQL client runs a runtime of
    // its own, which must not start on a tokio worker.
    let (ca, accesses) =
        tokio::task::spawn_blocking(move || read_store(&data, url, uuids)).await??;
    let timeouts = vprov_core::device::DeviceTimeouts {
        connect: Duration::from_secs(10),
        request: Duration::from_secs(10),
    };
    for (report, access) in committed.iter().zip(&accesses) {
        let addr = SocketAddr::new(report.address.into(), device_port);
        let mut session = vprov_core::device::AmtSession::connect_tls(
            addr,
            &ca,
            access.certificate_der.as_deref(),
            &access.admin_user,
            &access.password,
            timeouts,
        )
        .await
        .with_context(|| format!("device {}: cannot log in", report.uuid))?;
        let uuid =
            vprov_core::hello::DeviceUuid(session.get_uuid().await.with_context(|| {
                format!("device {} refuses its recorded credential", report.uuid)
            })?);
        anyhow::ensure!(
            uuid.to_string() == report.uuid,
            "device {} is {uuid}",
            report.uuid
        );
    }
    Ok(accesses.len())
}

/// Checks the PID/device pairing in the store and reads its CA certificate and the
/// recorded access of each device in `uuids` (each must be recorded).
fn read_store(
    data: &Path,
    url: Option<String>,
    uuids: Vec<String>,
) -> anyhow::Result<(Vec<u8>, Vec<DeviceAccess>)> {
    let db = match &url {
        Some(url) => StoreAt::Url(url.clone()),
        None => StoreAt::File(data.join("vprov.db")),
    };
    let mut options = StoreOptions::new(data);
    options.url = url;
    let store = Store::open(&options)?;
    let orphans = count(
        &db,
        "SELECT count(*) FROM provisioning_keys k WHERE k.state = 'used'
         AND NOT EXISTS (SELECT 1 FROM devices d WHERE d.uuid = k.device_uuid)",
    )?;
    anyhow::ensure!(orphans == 0, "{orphans} used PIDs have no device record");
    let unbound = count(
        &db,
        "SELECT count(*) FROM devices d WHERE NOT EXISTS
         (SELECT 1 FROM provisioning_keys k WHERE k.device_uuid = d.uuid AND k.state = 'used')",
    )?;
    anyhow::ensure!(unbound == 0, "{unbound} devices have no used PID");
    let ca = store.ca_certificate()?.context("no CA in the store")?;
    let accesses = uuids
        .iter()
        .map(|uuid| {
            store
                .device_access(uuid)?
                .with_context(|| format!("device {uuid} committed but is not recorded"))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok((ca, accesses))
}

/// Where the store's rows are read: the SQLite file, or the PostgreSQL database.
enum StoreAt {
    File(std::path::PathBuf),
    Url(String),
}

fn count(db: &StoreAt, sql: &str) -> anyhow::Result<u64> {
    match db {
        StoreAt::File(path) => {
            let conn = rusqlite::Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
            )?;
            Ok(conn.query_row(sql, [], |r| r.get(0))?)
        }
        StoreAt::Url(url) => {
            let mut client = postgres::Client::connect(url, postgres::NoTls)?;
            let n: i64 = client.query_one(sql, &[])?.try_get(0)?;
            Ok(n as u64)
        }
    }
}
