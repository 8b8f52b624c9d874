//! The provisioning password, devices, alert severities and the audit log in the store.

use std::fmt;
use std::str::FromStr;

use super::db::{params, OptionalExtension, Transaction};

use super::{now_ms, Store, StoreError};
use crate::password::ProvisioningPassword;

const PASSWORD_SECRET: &str = "provisioning_password";

/// Appends an audit entry inside `tx`, so it commits or rolls back with the change
/// it describes. `detail` must never contain a secret.
pub(super) fn audit(
    tx: &Transaction<'_>,
    actor: &str,
    action: &str,
    detail: &serde_json::Value,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO audit_log (at, actor, action, detail) VALUES (?1, ?2, ?3, ?4)",
        params![now_ms(), actor, action, detail.to_string()],
    )?;
    Ok(())
}

/// Whether the provisioning password is set, and when it last changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PasswordStatus {
    pub set: bool,
    pub changed_at: Option<i64>,
}

/// Whether vprov manages a provisioned device yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceState {
    Unmanaged,
    Managed,
}

impl DeviceState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceState::Unmanaged => "unmanaged",
            DeviceState::Managed => "managed",
        }
    }
}

impl FromStr for DeviceState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "unmanaged" => Ok(DeviceState::Unmanaged),
            "managed" => Ok(DeviceState::Managed),
            other => Err(format!("unknown device state {other:?}")),
        }
    }
}

/// Which devices to list.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub state: Option<DeviceState>,
}

/// A provisioned device as listed (credentials and certificate are not included).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeviceRecord {
    pub uuid: String,
    pub host_name: Option<String>,
    pub address: Option<String>,
    pub amt_version: Option<String>,
    pub state: DeviceState,
    pub management_mode: Option<String>,
    /// The agent profile deployed (managed with an agent).
    pub agent_profile: Option<String>,
    /// The SHA-256 fingerprint of the device's recorded SSH host key, if any.
    pub ssh_host_key: Option<String>,
    pub provisioned_pid: Option<String>,
    pub provisioned_at: i64,
    pub last_contact_at: Option<i64>,
    /// The last reachability check's result (managed devices), if any ran.
    pub reachable: Option<bool>,
    /// `acm` (Admin Control Mode) or `ccm`.
    pub control_mode: String,
    /// `psk` (one-touch, PID/PPS) or `pki` (remote configuration, hello v3).
    pub provisioning_path: String,
    /// The provisioning chain a PKI device was configured with.
    pub pki_chain: Option<String>,
}

/// How to reach a device (see [`Store::device_access`]). `Debug` hides the password.
pub struct DeviceAccess {
    pub address: String,
    pub admin_user: String,
    pub password: zeroize::Zeroizing<String>,
    /// A credential vprov was sending when an earlier change was cut off: the device
    /// may hold this one instead.
    pub pending_password: Option<zeroize::Zeroizing<String>>,
    pub state: DeviceState,
    /// The certificate vprov issued to the device (DER); every later connection
    /// requires the device to present exactly this one. `None` for a record without.
    pub certificate_der: Option<Vec<u8>>,
}

impl fmt::Debug for DeviceAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceAccess")
            .field("address", &self.address)
            .field("admin_user", &self.admin_user)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// How a managed device is managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagementMode {
    /// AMT-only management over TLS, no agent in the operating system.
    Agentless,
    /// A management agent was deployed to the device's operating system.
    Agent,
}

impl ManagementMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ManagementMode::Agentless => "agentless",
            ManagementMode::Agent => "agent",
        }
    }
}

impl FromStr for ManagementMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "agentless" => Ok(ManagementMode::Agentless),
            "agent" => Ok(ManagementMode::Agent),
            other => Err(format!("unknown management mode {other:?}")),
        }
    }
}

/// Severity of an alert.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "info" => Ok(Severity::Info),
            "warning" => Ok(Severity::Warning),
            "error" => Ok(Severity::Error),
            "critical" => Ok(Severity::Critical),
            other => Err(format!("unknown severity {other:?}")),
        }
    }
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub detail: serde_json::Value,
}

pub(super) fn parse_col<T: FromStr>(idx: usize, text: String) -> super::db::Result<T> {
    text.parse().map_err(|_| super::db::Error::Column {
        index: idx,
        message: format!("unexpected value {text:?}"),
    })
}

impl Store {
    /// Seals and stores the provisioning password, replacing any previous one.
    pub fn set_provisioning_password(
        &mut self,
        password: &ProvisioningPassword,
        actor: &str,
    ) -> Result<(), StoreError> {
        let sealed = self.key.seal(
            &format!("secret:{PASSWORD_SECRET}"),
            password.expose().as_bytes(),
        );
        let tx = self.write_tx()?;
        tx.execute(
            "INSERT INTO secrets (name, sealed, changed_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed,
                                              changed_at = excluded.changed_at",
            params![PASSWORD_SECRET, sealed, now_ms()],
        )?;
        audit(&tx, actor, "password.set", &serde_json::json!({}))?;
        tx.commit()?;
        Ok(())
    }

    /// The provisioning password, if one has been set.
    pub fn provisioning_password(&self) -> Result<Option<ProvisioningPassword>, StoreError> {
        let sealed: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT sealed FROM secrets WHERE name = ?1",
                [PASSWORD_SECRET],
                |r| r.get(0),
            )
            .optional()?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let plain = self
            .key
            .open(&format!("secret:{PASSWORD_SECRET}"), &sealed)?;
        let text = std::str::from_utf8(&plain).ok();
        text.and_then(|t| ProvisioningPassword::new(t).ok())
            .map(Some)
            .ok_or_else(|| StoreError::Corrupt("the sealed provisioning password".into()))
    }

    /// Whether the provisioning password is set and when it changed.
    pub fn password_status(&self) -> Result<PasswordStatus, StoreError> {
        let changed_at: Option<i64> = self
            .conn
            .query_row(
                "SELECT changed_at FROM secrets WHERE name = ?1",
                [PASSWORD_SECRET],
                |r| r.get(0),
            )
            .optional()?;
        Ok(PasswordStatus {
            set: changed_at.is_some(),
            changed_at,
        })
    }

    /// Provisioned devices, most recently provisioned first.
    pub fn devices(&self, filter: &DeviceFilter) -> Result<Vec<DeviceRecord>, StoreError> {
        self.query_devices(filter.state, None)
    }

    /// One device by UUID (canonical lower-case text).
    pub fn device(&self, uuid: &str) -> Result<Option<DeviceRecord>, StoreError> {
        Ok(self.query_devices(None, Some(uuid))?.pop())
    }

    fn query_devices(
        &self,
        state: Option<DeviceState>,
        uuid: Option<&str>,
    ) -> Result<Vec<DeviceRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT uuid, host_name, address, amt_version, state, management_mode,
                    provisioned_pid, provisioned_at, last_contact_at, reachable,
                    agent_profile, k.fingerprint, control_mode, provisioning_path, pki_chain
             FROM devices LEFT JOIN device_host_keys k ON k.device_uuid = uuid
             WHERE (CAST(?1 AS TEXT) IS NULL OR state = ?1)
               AND (CAST(?2 AS TEXT) IS NULL OR uuid = ?2)
             ORDER BY provisioned_at DESC, uuid",
        )?;
        let rows = stmt.query_map(params![state.map(DeviceState::as_str), uuid], |r| {
            Ok(DeviceRecord {
                uuid: r.get(0)?,
                host_name: r.get(1)?,
                address: r.get(2)?,
                amt_version: r.get(3)?,
                state: parse_col(4, r.get(4)?)?,
                management_mode: r.get(5)?,
                provisioned_pid: r.get(6)?,
                provisioned_at: r.get(7)?,
                last_contact_at: r.get(8)?,
                reachable: r.get(9)?,
                agent_profile: r.get(10)?,
                ssh_host_key: r.get(11)?,
                control_mode: r.get(12)?,
                provisioning_path: r.get(13)?,
                pki_chain: r.get(14)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// What it takes to reach a provisioned device: its address and admin credential
    /// (opened from the store), and whether it is managed.
    pub fn device_access(&self, uuid: &str) -> Result<Option<DeviceAccess>, StoreError> {
        /// address, admin user, sealed credential, sealed pending credential, state,
        /// certificate
        type Row = (
            Option<String>,
            Option<String>,
            Option<Vec<u8>>,
            Option<Vec<u8>>,
            String,
            Option<Vec<u8>>,
        );
        let row: Option<Row> = self
            .conn
            .query_row(
                "SELECT address, admin_user, admin_password_sealed, pending_password_sealed, state,
                        certificate_der
                 FROM devices WHERE uuid = ?1",
                [uuid],
                |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                },
            )
            .optional()?;
        let Some((address, user, sealed, pending, state, certificate)) = row else {
            return Ok(None);
        };
        let corrupt = |what: &str| StoreError::Corrupt(format!("device {uuid} has no {what}"));
        let open =
            |context: String, sealed: &[u8]| -> Result<zeroize::Zeroizing<String>, StoreError> {
                let plain = self.key.open(&context, sealed)?;
                String::from_utf8(plain.to_vec())
                    .map(zeroize::Zeroizing::new)
                    .map_err(|_| corrupt("readable credential"))
            };
        let sealed = sealed.ok_or_else(|| corrupt("admin credential"))?;
        Ok(Some(DeviceAccess {
            address: address.ok_or_else(|| corrupt("address"))?,
            admin_user: user.ok_or_else(|| corrupt("admin user"))?,
            password: open(super::device_password_context(uuid), &sealed)?,
            pending_password: pending
                .map(|p| open(format!("device_pending_password:{uuid}"), &p))
                .transpose()?,
            state: state.parse().map_err(|_| corrupt("valid state"))?,
            certificate_der: certificate.filter(|c| !c.is_empty()),
        }))
    }

    /// Records (sealed) the admin credential about to be sent to a device, before it
    /// is sent: if the exchange is cut, vprov still holds whichever credential the
    /// device ended up with.
    pub fn begin_password_change(
        &mut self,
        uuid: &str,
        new_password: &str,
        actor: &str,
    ) -> Result<(), StoreError> {
        let sealed = self.key.seal(
            &format!("device_pending_password:{uuid}"),
            new_password.as_bytes(),
        );
        let tx = self.write_tx()?;
        if tx.execute(
            "UPDATE devices SET pending_password_sealed = ?2 WHERE uuid = ?1",
            params![uuid, sealed],
        )? == 0
        {
            return Err(StoreError::UnknownDevice(uuid.to_string()));
        }
        audit(
            &tx,
            actor,
            "device.password.begin",
            &serde_json::json!({ "uuid": uuid }),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The device accepted the pending credential: it becomes the device's credential.
    pub fn complete_password_change(&mut self, uuid: &str, actor: &str) -> Result<(), StoreError> {
        let pending: Option<Vec<u8>> = self
            .conn
            .query_row(
                "SELECT pending_password_sealed FROM devices WHERE uuid = ?1",
                [uuid],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        let Some(pending) = pending else {
            return Err(StoreError::Corrupt(format!(
                "device {uuid} has no pending credential"
            )));
        };
        // Re-seal under the credential's own context.
        let plain = self
            .key
            .open(&format!("device_pending_password:{uuid}"), &pending)?;
        let sealed = self.key.seal(&super::device_password_context(uuid), &plain);
        let tx = self.write_tx()?;
        tx.execute(
            "UPDATE devices SET admin_password_sealed = ?2, pending_password_sealed = NULL
             WHERE uuid = ?1",
            params![uuid, sealed],
        )?;
        audit(
            &tx,
            actor,
            "device.password.changed",
            &serde_json::json!({ "uuid": uuid }),
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The device refused the pending credential (it keeps the old one).
    pub fn abandon_password_change(&mut self, uuid: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE devices SET pending_password_sealed = NULL WHERE uuid = ?1",
            [uuid],
        )?;
        Ok(())
    }

    /// Stores the inventory (JSON) read from a device just now.
    pub fn set_device_inventory(&mut self, uuid: &str, inventory: &str) -> Result<(), StoreError> {
        let changed = self.conn.execute(
            "UPDATE devices SET inventory = ?2, inventory_at = ?3, last_contact_at = ?3 WHERE uuid = ?1",
            params![uuid, inventory, now_ms()],
        )?;
        if changed == 0 {
            return Err(StoreError::UnknownDevice(uuid.to_string()));
        }
        Ok(())
    }

    /// The stored inventory (JSON) and when it was read, if any.
    pub fn device_inventory(&self, uuid: &str) -> Result<Option<(String, i64)>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT inventory, inventory_at FROM devices WHERE uuid = ?1 AND inventory IS NOT NULL",
                [uuid],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Records a reachability check; a reachable device also gets its last contact.
    pub fn set_device_reachable(&mut self, uuid: &str, reachable: bool) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE devices SET reachable = ?2,
                    last_contact_at = CASE WHEN CAST(?2 AS BIGINT) <> 0 THEN ?3 ELSE last_contact_at END
             WHERE uuid = ?1",
            params![uuid, reachable, now_ms()],
        )?;
        Ok(())
    }

    /// Records that the device answered just now.
    pub fn touch_device(&mut self, uuid: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE devices SET last_contact_at = ?2 WHERE uuid = ?1",
            params![uuid, now_ms()],
        )?;
        Ok(())
    }

    /// Writes one audit entry.
    pub fn record_audit(
        &mut self,
        actor: &str,
        action: &str,
        detail: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        audit(&tx, actor, action, detail)?;
        tx.commit()?;
        Ok(())
    }

    /// Moves devices to managed (`Some(mode)`: `agentless` or `agent`, the latter
    /// with the agent profile deployed) or back to unmanaged (`None`) in one
    /// transaction, with an audit entry per device saying who and why. If any UUID is
    /// unknown nothing changes.
    pub fn set_device_management(
        &mut self,
        uuids: &[&str],
        mode: Option<ManagementMode>,
        profile: Option<&str>,
        actor: &str,
        detail: serde_json::Value,
    ) -> Result<(), StoreError> {
        let tx = self.write_tx()?;
        let (state, mode_text) = match mode {
            Some(m) => ("managed", Some(m.as_str())),
            None => ("unmanaged", None),
        };
        let profile = profile.filter(|_| mode == Some(ManagementMode::Agent));
        for uuid in uuids {
            let changed = tx.execute(
                "UPDATE devices SET state = ?2, management_mode = ?3, agent_profile = ?4
                 WHERE uuid = ?1",
                params![uuid, state, mode_text, profile],
            )?;
            if changed == 0 {
                return Err(StoreError::UnknownDevice(uuid.to_string()));
            }
            audit(
                &tx,
                actor,
                if mode.is_some() {
                    "device.manage"
                } else {
                    "device.unmanage"
                },
                &serde_json::json!({
                    "uuid": uuid, "mode": mode_text, "profile": profile, "detail": detail
                }),
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The newest `limit` audit entries, newest first.
    pub fn audit_log(&self, limit: u32) -> Result<Vec<AuditRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, at, actor, action, detail FROM audit_log ORDER BY id DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit], |r| {
            let detail: String = r.get(4)?;
            Ok(AuditRecord {
                id: r.get(0)?,
                at: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
