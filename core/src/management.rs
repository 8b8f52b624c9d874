//! Agentless management of provisioned devices.
//!
//! [`DeviceLink`] is the one way vprov reaches a provisioned device — management
//! commands, the API and the reachability check alike: TLS verified against vprov's
//! CA *and pinned to the certificate vprov issued to that device*, the device's own
//! admin credential (with a cut-off credential change settled on whichever the device
//! accepts), and `GetUuid` checked against the record, so a device answering at
//! another's address is never taken for it.
//!
//! [`ManagedDevice`] is one operation as a command or an API request does it: open
//! the device's record, reach it through its link, power it or read its inventory. A
//! failed exchange is an alert naming the device. Used by `vprov devices …` and the
//! admin API (each runs it on a thread of its own, with its own store connection).

use std::net::{IpAddr, SocketAddr};

use serde_json::json;

use crate::device::{AmtSession, DeviceError, DeviceTimeouts, Inventory};
use crate::hello::DeviceUuid;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
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

/// What a cut-off credential change turned out to be, for the store to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialSettled {
    /// No change was pending, or the device could not be asked.
    Unchanged,
    /// The device accepted the pending credential: it is now the recorded one.
    PendingAccepted,
    /// The device still holds the old credential: the change never took.
    PendingAbandoned,
}

/// How vprov reaches one provisioned device (see the module docs).
pub struct DeviceLink {
    pub uuid: String,
    pub addr: SocketAddr,
    ca: std::sync::Arc<[u8]>,
    certificate: Option<Vec<u8>>,
    user: String,
    timeouts: DeviceTimeouts,
}

impl DeviceLink {
    /// The link to device `uuid` as its record `access` describes it.
    pub fn new(
        uuid: &str,
        access: &DeviceAccess,
        ca: std::sync::Arc<[u8]>,
        reach: Reach,
    ) -> Result<DeviceLink, ManagementError> {
        let ip: IpAddr = access
            .address
            .parse()
            .map_err(|_| ManagementError::NoAddress {
                uuid: uuid.to_string(),
                address: access.address.clone(),
            })?;
        Ok(DeviceLink {
            uuid: uuid.to_string(),
            addr: SocketAddr::new(ip, reach.device_port),
            ca,
            certificate: access.certificate_der.clone(),
            user: access.admin_user.clone(),
            timeouts: reach.timeouts,
        })
    }

    /// A session logged in with `password`, after the device proved to be this one:
    /// its certificate is the one vprov issued to it, and `GetUuid` names it.
    pub async fn session(&self, password: &str) -> Result<AmtSession, DeviceError> {
        let mut session = AmtSession::connect_tls(
            self.addr,
            &self.ca,
            self.certificate.as_deref(),
            &self.user,
            password,
            self.timeouts,
        )
        .await?;
        let reported = DeviceUuid(session.get_uuid().await?).to_string();
        if reported != self.uuid {
            return Err(DeviceError::CertificateRejected(format!(
                "the device at {} says it is {reported}, not {}",
                self.addr, self.uuid
            )));
        }
        Ok(session)
    }

    /// Runs `work` in a session with the device's credential. If an earlier
    /// credential change was cut off, the device holds either the old or the new
    /// credential: whichever it accepts is used, and the outcome says which.
    pub async fn with_credential<T>(
        &self,
        access: &DeviceAccess,
        work: impl for<'s> Fn(
                &'s mut AmtSession,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<T, DeviceError>> + Send + 's>,
            > + Sync,
    ) -> (Result<T, DeviceError>, CredentialSettled) {
        let attempt = |password: &str| {
            let password = password.to_string();
            let work = &work;
            async move {
                let mut session = self.session(&password).await?;
                work(&mut session).await
            }
        };
        let first = attempt(&access.password).await;
        let Some(pending) = &access.pending_password else {
            return (first, CredentialSettled::Unchanged);
        };
        match first {
            Err(DeviceError::Unauthorized) => {
                let second = attempt(pending).await;
                let settled = if second.is_ok() {
                    CredentialSettled::PendingAccepted
                } else {
                    CredentialSettled::Unchanged
                };
                (second, settled)
            }
            Ok(value) => (Ok(value), CredentialSettled::PendingAbandoned),
            Err(e) => (Err(e), CredentialSettled::Unchanged),
        }
    }
}

/// Where a management alert goes: inside the server, the alert log (stored *and*
/// handed to the alert sinks); a command stores it directly.
pub type RaiseAlert = std::sync::Arc<dyn Fn(NewAlert) + Send + Sync>;

/// A provisioned device opened for one operation: where it is and how to log in.
pub struct ManagedDevice {
    pub uuid: String,
    pub store: Store,
    pub access: DeviceAccess,
    pub addr: SocketAddr,
    link: DeviceLink,
    raise: Option<RaiseAlert>,
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
        let uuid = DeviceUuid::canonical(uuid);
        let access = store
            .device_access(&uuid)?
            .ok_or_else(|| ManagementError::UnknownDevice(uuid.clone()))?;
        let ca = store
            .ca_certificate()?
            .ok_or(ManagementError::NoCertificateAuthority)?;
        let link = DeviceLink::new(&uuid, &access, ca.into(), reach)?;
        Ok(ManagedDevice {
            addr: link.addr,
            uuid,
            store,
            access,
            link,
            raise: None,
        })
    }

    /// Sends this operation's alerts to `raise` (the server's alert log) instead of
    /// storing them directly, so the alert sinks see them too.
    pub fn alerts_to(mut self, raise: RaiseAlert) -> ManagedDevice {
        self.raise = Some(raise);
        self
    }

    /// Runs `work` through the device's [`DeviceLink`] and records how a cut-off
    /// credential change settled.
    pub fn run<T>(
        &mut self,
        work: impl for<'s> Fn(
                &'s mut AmtSession,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<T, DeviceError>> + Send + 's>,
            > + Sync,
    ) -> Result<Result<T, DeviceError>, ManagementError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ManagementError::Runtime)?;
        let (outcome, settled) = runtime.block_on(self.link.with_credential(&self.access, work));
        match settled {
            CredentialSettled::Unchanged => {}
            CredentialSettled::PendingAccepted => {
                self.store.complete_password_change(&self.uuid, "vprov")?;
                if let Some(pending) = self.access.pending_password.take() {
                    self.access.password = pending;
                }
            }
            CredentialSettled::PendingAbandoned => {
                self.store.abandon_password_change(&self.uuid)?;
                self.access.pending_password = None;
            }
        }
        Ok(outcome)
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
        match &self.raise {
            Some(raise) => raise(alert),
            None => {
                if let Err(store_error) = self.store.insert_alerts(&[alert], None) {
                    tracing::error!("cannot store the alert about {}: {store_error}", self.uuid);
                }
            }
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
