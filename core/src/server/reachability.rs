//! The periodic reachability check of managed devices: every interval, each managed
//! device is reached over verified TLS with its own credential (one `GetUuid`). The
//! result is recorded (`reachable`, last contact) and a change raises an alert, so an
//! admin learns when a device drops off the network, stops accepting vprov's
//! credential, or presents a certificate vprov's CA did not issue.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use super::alerts::AlertLog;
use super::store_thread::StoreHandle;
use crate::device::{AmtSession, DeviceError, DeviceTimeouts};
use crate::hello::DeviceUuid;
use crate::store::{DeviceFilter, DeviceState, NewAlert, Severity};

/// Devices checked at once.
const CONCURRENT_CHECKS: usize = 16;

/// How the check runs.
#[derive(Debug, Clone)]
pub struct ReachabilitySettings {
    pub interval: Duration,
    pub device_port: u16,
    pub timeouts: DeviceTimeouts,
}

/// Checks every managed device each `interval` until `stop`.
pub async fn run(
    store: StoreHandle,
    alerts: AlertLog,
    ca_der: Arc<Vec<u8>>,
    settings: ReachabilitySettings,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_CHECKS));
    loop {
        let managed = match store
            .call(|s| {
                s.devices(&DeviceFilter {
                    state: Some(DeviceState::Managed),
                })
            })
            .await
        {
            Ok(Ok(devices)) => devices,
            Ok(Err(e)) => {
                tracing::warn!("reachability check: cannot list devices: {e}");
                Vec::new()
            }
            Err(_) => return,
        };
        let mut checks = tokio::task::JoinSet::new();
        for device in managed {
            let (store, alerts, ca, settings, slots) = (
                store.clone(),
                alerts.clone(),
                ca_der.clone(),
                settings.clone(),
                slots.clone(),
            );
            checks.spawn(async move {
                let Ok(_slot) = slots.acquire_owned().await else {
                    return;
                };
                check(
                    &store,
                    &alerts,
                    &ca,
                    &settings,
                    &device.uuid,
                    device.reachable,
                )
                .await;
            });
        }
        tokio::select! {
            _ = async { while checks.join_next().await.is_some() {} } => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

async fn check(
    store: &StoreHandle,
    alerts: &AlertLog,
    ca: &[u8],
    settings: &ReachabilitySettings,
    uuid: &str,
    was: Option<bool>,
) {
    let id = uuid.to_string();
    let Ok(Ok(Some(access))) = store.call(move |s| s.device_access(&id)).await else {
        return;
    };
    let outcome = async {
        let ip: IpAddr = access.address.parse().map_err(|_| {
            DeviceError::Unreachable(format!("no usable address {}", access.address))
        })?;
        let addr = SocketAddr::new(ip, settings.device_port);
        let mut session = AmtSession::connect_tls(
            addr,
            ca,
            &access.admin_user,
            &access.password,
            settings.timeouts,
        )
        .await?;
        let reported = DeviceUuid(session.get_uuid().await?).to_string();
        if reported != uuid {
            return Err(DeviceError::Malformed(format!(
                "the device at {addr} is {reported}"
            )));
        }
        Ok(())
    }
    .await;
    let reachable = outcome.is_ok();
    let id = uuid.to_string();
    let _ = store
        .call(move |s| s.set_device_reachable(&id, reachable))
        .await;
    if was == Some(reachable) {
        return;
    }
    let (severity, message) = match &outcome {
        Ok(()) if was.is_none() => return,
        Ok(()) => (
            Severity::Info,
            "managed device is reachable again".to_string(),
        ),
        Err(e) => (
            Severity::Warning,
            format!("managed device is unreachable: {e}"),
        ),
    };
    alerts.raise(NewAlert {
        severity,
        source: "management".into(),
        message,
        pid: None,
        device_uuid: Some(uuid.to_string()),
        address: Some(access.address.clone()),
    });
}
