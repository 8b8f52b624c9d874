//! Agentless management of one provisioned device, as a command or an API request
//! does it: open the device's record, reach it over TLS verified against vprov's CA
//! with its own admin credential, and power it or read its inventory. A failed
//! exchange is stored as an alert naming the device. Used by `vprov devices …` and
//! the admin API (each runs it on a thread of its own, with its own store connection).

use std::net::{IpAddr, SocketAddr};

use serde_json::json;

use crate::device::{AmtSession, DeviceError, DeviceTimeouts, Inventory};
use crate::store::{DeviceAccess, DeviceState, NewAlert, Severity, Store, StoreError};

/// Why a management operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no device with UUID {0}")]
    UnknownDevice(String),
    #[error(
        "device {0} is not managed: move it first with `vprov devices manage {0} --agentless`"
    )]
    NotManaged(String),
    #[error("the store has no certificate authority (no device was provisioned here)")]
    NoCertificateAuthority,
    #[error("device {uuid} has no usable address ({address})")]
    NoAddress { uuid: String, address: String },
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("device {} at {}: {} failed: {}", .0.uuid, .0.addr, .0.what, .0.source)]
    Device(Box<DeviceFailure>),
}

/// A failed exchange with a device.
#[derive(Debug)]
pub struct DeviceFailure {
    pub uuid: String,
    pub addr: SocketAddr,
    pub what: String,
    pub source: DeviceError,
}

/// How to reach devices: their TLS port and time limits.
#[derive(Debug, Clone, Copy)]
pub struct Reach {
    pub device_port: u16,
    pub timeouts: DeviceTimeouts,
}

/// What `devices power` can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerAction {
    Status,
    On,
    Off,
    Reset,
    Cycle,
}

impl PowerAction {
    pub fn name(self) -> &'static str {
        match self {
            PowerAction::Status => "status",
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::Reset => "reset",
            PowerAction::Cycle => "cycle",
        }
    }

    /// The CIM power state `RequestPowerStateChange` asks for (none for status).
    pub fn cim_state(self) -> Option<u16> {
        match self {
            PowerAction::Status => None,
            PowerAction::On => Some(2),
            PowerAction::Cycle => Some(5),
            PowerAction::Off => Some(8),
            PowerAction::Reset => Some(10),
        }
    }
}

/// A CIM power state as people say it.
pub fn power_state_name(state: u16) -> String {
    match state {
        2 => "on".into(),
        3 | 4 => "sleeping".into(),
        7 => "hibernating".into(),
        6 | 8 | 12 | 13 => "off".into(),
        other => format!("state {other}"),
    }
}

/// A provisioned device opened for one operation: where it is and how to log in.
pub struct ManagedDevice {
    pub uuid: String,
    pub store: Store,
    pub access: DeviceAccess,
    pub addr: SocketAddr,
    ca: Vec<u8>,
    timeouts: DeviceTimeouts,
}

impl ManagedDevice {
    /// Opens a managed device (power and inventory act only on managed devices).
    pub fn open(store: Store, uuid: &str, reach: Reach) -> Result<ManagedDevice, ManagementError> {
        let device = ManagedDevice::open_provisioned(store, uuid, reach)?;
        if device.access.state != DeviceState::Managed {
            return Err(ManagementError::NotManaged(device.uuid));
        }
        Ok(device)
    }

    /// Opens any provisioned device, managed or not.
    pub fn open_provisioned(
        store: Store,
        uuid: &str,
        reach: Reach,
    ) -> Result<ManagedDevice, ManagementError> {
        let uuid = uuid.trim().to_ascii_lowercase();
        let access = store
            .device_access(&uuid)?
            .ok_or_else(|| ManagementError::UnknownDevice(uuid.clone()))?;
        let ca = store
            .ca_certificate()?
            .ok_or(ManagementError::NoCertificateAuthority)?;
        let ip: IpAddr = access
            .address
            .parse()
            .map_err(|_| ManagementError::NoAddress {
                uuid: uuid.clone(),
                address: access.address.clone(),
            })?;
        Ok(ManagedDevice {
            addr: SocketAddr::new(ip, reach.device_port),
            timeouts: reach.timeouts,
            uuid,
            store,
            access,
            ca,
        })
    }

    /// Runs `work` in a verified-TLS session with the device. If an earlier
    /// credential change was cut off, the device holds either the old or the new
    /// credential: whichever it accepts becomes the recorded one.
    pub fn run<T>(
        &mut self,
        work: impl for<'s> Fn(
            &'s mut AmtSession,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, DeviceError>> + 's>,
        >,
    ) -> Result<Result<T, DeviceError>, ManagementError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ManagementError::Runtime)?;
        let attempt = |password: &str| {
            runtime.block_on(async {
                let mut session = AmtSession::connect_tls(
                    self.addr,
                    &self.ca,
                    &self.access.admin_user,
                    password,
                    self.timeouts,
                )
                .await?;
                work(&mut session).await
            })
        };
        let first = attempt(&self.access.password);
        let Some(pending) = self.access.pending_password.take() else {
            return Ok(first);
        };
        match first {
            Err(DeviceError::Unauthorized) => {
                let second = attempt(&pending);
                if second.is_ok() {
                    self.store.complete_password_change(&self.uuid, "vprov")?;
                    self.access.password = pending;
                } else {
                    self.access.pending_password = Some(pending);
                }
                Ok(second)
            }
            Ok(value) => {
                // The device kept the old credential: the change never took.
                self.store.abandon_password_change(&self.uuid)?;
                Ok(Ok(value))
            }
            Err(e) => {
                self.access.pending_password = Some(pending);
                Ok(Err(e))
            }
        }
    }

    /// A failed exchange: an alert naming the device, and the error for the caller.
    pub fn failed(&mut self, what: &str, e: DeviceError) -> ManagementError {
        let alert = NewAlert {
            severity: Severity::Error,
            source: "management".into(),
            message: format!("{what} failed: {e}"),
            pid: None,
            device_uuid: Some(self.uuid.clone()),
            address: Some(self.access.address.clone()),
        };
        if let Err(store_error) = self.store.insert_alerts(&[alert], None) {
            tracing::error!("cannot store the alert about {}: {store_error}", self.uuid);
        }
        ManagementError::Device(Box::new(DeviceFailure {
            uuid: self.uuid.clone(),
            addr: self.addr,
            what: what.to_string(),
            source: e,
        }))
    }

    /// Requests `action` (audited when it changes anything) and returns the power
    /// state the device then reports.
    pub fn power(&mut self, action: PowerAction, actor: &str) -> Result<u16, ManagementError> {
        if let Some(state) = action.cim_state() {
            self.store.record_audit(
                actor,
                "device.power",
                &json!({ "uuid": self.uuid, "action": action.name(), "power_state": state }),
            )?;
        }
        let result = self.run(|s| {
            Box::pin(async move {
                if let Some(state) = action.cim_state() {
                    s.request_power_state_change(state).await?;
                }
                s.power_state().await
            })
        })?;
        let state = result.map_err(|e| self.failed(&format!("power {}", action.name()), e))?;
        self.store.touch_device(&self.uuid)?;
        Ok(state)
    }

    /// Reads the device's inventory and stores it with the device.
    pub fn read_inventory(&mut self) -> Result<Inventory, ManagementError> {
        let result = self.run(|s| Box::pin(async move { s.inventory().await }))?;
        let inventory = result.map_err(|e| self.failed("inventory", e))?;
        let text = serde_json::to_string(&inventory).expect("an inventory serializes");
        self.store.set_device_inventory(&self.uuid, &text)?;
        Ok(inventory)
    }
}
