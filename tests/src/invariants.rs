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
use vprov_core::store::{Store, StoreOptions};

use crate::sim::DeviceReport;

/// Checks the invariants of the store in `data` against the simulated devices'
/// `reports` (their TLS service on `device_port`); returns how many committed
/// devices were checked.
pub async fn check(
    data: &Path,
    reports: &[DeviceReport],
    device_port: u16,
) -> anyhow::Result<usize> {
    let store = Store::open(&StoreOptions::new(data))?;
    let db = data.join("vprov.db");
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
    let timeouts = vprov_core::device::DeviceTimeouts {
        connect: Duration::from_secs(10),
        request: Duration::from_secs(10),
    };
    let mut checked = 0;
    for report in reports.iter().filter(|r| r.committed) {
        let access = store
            .device_access(&report.uuid)?
            .with_context(|| format!("device {} committed but is not recorded", report.uuid))?;
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
        checked += 1;
    }
    Ok(checked)
}

fn count(db: &Path, sql: &str) -> anyhow::Result<u64> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    Ok(conn.query_row(sql, [], |r| r.get(0))?)
}
