//! The periodic reachability check of managed devices: every interval, each managed
//! device is reached through its [`DeviceLink`] (verified TLS pinned to its own
//! certificate, its own credential — a cut-off credential change settled —, one
//! `GetUuid` matched against the record). The
//! result is recorded (`reachable`, last contact) and a change raises an alert, so an
//! admin learns when a device drops off the network, stops accepting vprov's
//! credential, or presents a certificate vprov's CA did not issue.
//!
//! With several nodes on one store, each round is done by one node: the one that
//! takes the store's `reachability` turn (due once per interval). Every node asks at
//! least every [`TURN_POLL`], so a round is late by at most that when the node that
//! did the last one has stopped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

use crate::alerts::AlertLog;
use crate::device::{DeviceError, DeviceTimeouts};
use crate::management::{CredentialSettled, DeviceLink, Reach};
use crate::store::{DeviceFilter, DeviceState, NewAlert, Severity};
use crate::store_thread::StoreHandle;

/// Devices checked at once.
const CONCURRENT_CHECKS: usize = 16;

/// Longest pause between asking for the round's turn.
pub const TURN_POLL: Duration = Duration::from_secs(30);

/// How the check runs.
#[derive(Debug, Clone)]
pub struct ReachabilitySettings {
    pub interval: Duration,
    pub device_port: u16,
    pub timeouts: DeviceTimeouts,
    /// The node asking for the rounds' turns.
    pub node: Arc<str>,
}

/// Checks every managed device each `interval` until `stop`.
pub async fn run(
    store: StoreHandle,
    alerts: AlertLog,
    ca_der: Arc<[u8]>,
    settings: ReachabilitySettings,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENT_CHECKS));
    loop {
        let node = settings.node.clone();
        let interval = settings.interval;
        match store
            .call(move |s| s.take_turn("reachability", &node, interval))
            .await
        {
            Ok(Ok(true)) => {
                if !round(&store, &alerts, &ca_der, &settings, &slots, &mut stop).await {
                    return;
                }
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!("reachability check: cannot take its turn: {e}"),
            Err(_) => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(settings.interval.min(TURN_POLL)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Checks every managed device once; `false` if the server is stopping.
async fn round(
    store: &StoreHandle,
    alerts: &AlertLog,
    ca_der: &Arc<[u8]>,
    settings: &ReachabilitySettings,
    slots: &Arc<Semaphore>,
    stop: &mut watch::Receiver<bool>,
) -> bool {
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
        Err(_) => return false,
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
                ca,
                &settings,
                &device.uuid,
                device.reachable,
            )
            .await;
        });
    }
    tokio::select! {
        _ = async { while checks.join_next().await.is_some() {} } => true,
        _ = stop.wait_for(|s| *s) => false,
    }
}

async fn check(
    store: &StoreHandle,
    alerts: &AlertLog,
    ca: Arc<[u8]>,
    settings: &ReachabilitySettings,
    uuid: &str,
    was: Option<bool>,
) {
    let id = uuid.to_string();
    let Ok(Ok(Some(access))) = store.call(move |s| s.device_access(&id)).await else {
        return;
    };
    let reach = Reach {
        device_port: settings.device_port,
        timeouts: settings.timeouts,
    };
    let outcome = match DeviceLink::new(uuid, &access, ca, reach) {
        Ok(link) => {
            // The link checks the device's certificate and UUID; nothing more to do.
            let (outcome, settled) = link
                .with_credential(&access, |_| Box::pin(async { Ok(()) }))
                .await;
            let id = uuid.to_string();
            match settled {
                CredentialSettled::Unchanged => {}
                CredentialSettled::PendingAccepted => {
                    let _ = store
                        .call(move |s| s.complete_password_change(&id, "vprov"))
                        .await;
                }
                CredentialSettled::PendingAbandoned => {
                    let _ = store.call(move |s| s.abandon_password_change(&id)).await;
                }
            }
            outcome
        }
        Err(e) => Err(DeviceError::Unreachable(e.to_string())),
    };
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
