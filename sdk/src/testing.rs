//! A fake host for plugin unit tests: instantiate a plugin in-process through the same
//! guarded adapter the real boundary uses, and inspect what it logged and raised.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, ROption, RResult, RStr, RString};

use crate::abi::{
    AlertEvent, DeviceInfo, HostKeyCheck, HostKeyVerdict, HostServices, HostServicesBox,
    InitContext, LogLevel, PluginAlert, PluginError, PluginInstanceBox, Severity,
};
use crate::plugin::{instantiate, Plugin};

/// Records logs and alerts; answers device lookups from a list; records SSH host
/// keys by device (trust on first use) and issues enrollment tokens `token-<n>`.
#[derive(Clone, Default)]
pub struct FakeHost {
    pub logs: Arc<Mutex<Vec<(LogLevel, String)>>>,
    pub alerts: Arc<Mutex<Vec<PluginAlert>>>,
    pub devices: Arc<Mutex<Vec<DeviceInfo>>>,
    /// Device UUID → recorded host key (OpenSSH form).
    pub host_keys: Arc<Mutex<BTreeMap<String, String>>>,
    /// (device UUID, profile) of every token issued.
    pub tokens: Arc<Mutex<Vec<(String, String)>>>,
}

impl FakeHost {
    /// Creates an instance of `P` with `config_toml`, as the core would.
    pub fn instantiate<P: Plugin>(
        &self,
        config_toml: &str,
        data_dir: &std::path::Path,
    ) -> Result<PluginInstanceBox, PluginError> {
        instantiate::<P>(InitContext {
            instance_name: "test".into(),
            config_toml: config_toml.into(),
            data_dir: data_dir.to_string_lossy().into_owned().into(),
            host: self.services(),
        })
        .into_result()
    }

    /// This host as the boundary's trait object.
    pub fn services(&self) -> HostServicesBox {
        HostServicesBox::from_ptr(RArc::new(self.clone()), TD_Opaque)
    }

    pub fn logged(&self) -> Vec<String> {
        let logs = self.logs.lock().unwrap();
        logs.iter().map(|(_, m)| m.clone()).collect()
    }
}

impl HostServices for FakeHost {
    fn log(&self, level: LogLevel, message: RStr<'_>) {
        self.logs.lock().unwrap().push((level, message.to_string()));
    }

    fn raise_alert(&self, alert: PluginAlert) -> RResult<(), PluginError> {
        self.alerts.lock().unwrap().push(alert);
        RResult::ROk(())
    }

    fn device(&self, uuid: RStr<'_>) -> RResult<ROption<DeviceInfo>, PluginError> {
        let devices = self.devices.lock().unwrap();
        RResult::ROk(devices.iter().find(|d| d.uuid == uuid).cloned().into())
    }

    fn check_host_key(
        &self,
        uuid: RStr<'_>,
        public_key: RStr<'_>,
    ) -> RResult<HostKeyCheck, PluginError> {
        let mut keys = self.host_keys.lock().unwrap();
        let (verdict, recorded) = match keys.get(uuid.as_str()) {
            None => {
                keys.insert(uuid.to_string(), public_key.to_string());
                (HostKeyVerdict::FIRST_USE, public_key.to_string())
            }
            Some(k) if k.as_str() == public_key.as_str() => (HostKeyVerdict::MATCHES, k.clone()),
            Some(k) => (HostKeyVerdict::CHANGED, k.clone()),
        };
        RResult::ROk(HostKeyCheck {
            verdict,
            recorded_fingerprint: format!("fake:{recorded}").into(),
        })
    }

    fn issue_enroll_token(
        &self,
        uuid: RStr<'_>,
        profile: RStr<'_>,
    ) -> RResult<RString, PluginError> {
        let mut tokens = self.tokens.lock().unwrap();
        tokens.push((uuid.to_string(), profile.to_string()));
        RResult::ROk(format!("token-{}", tokens.len()).into())
    }
}

/// An alert as sinks receive it: `message` from source `hello`, severity error, at a
/// fixed time, with no PID, device or address.
pub fn sample_alert(message: &str) -> AlertEvent {
    AlertEvent {
        at_unix_ms: 1_764_000_000_123,
        severity: Severity::ERROR,
        source: "hello".into(),
        message: message.into(),
        pid: ROption::RNone,
        device_uuid: ROption::RNone,
        address: ROption::RNone,
    }
}

/// A just-provisioned, unmanaged device with UUID `uuid`.
pub fn sample_device(uuid: &str) -> DeviceInfo {
    DeviceInfo {
        uuid: uuid.into(),
        host_name: ROption::RNone,
        address: "127.0.0.1".into(),
        amt_version: ROption::RNone,
        pid: "0000-037M".into(),
        state: "unmanaged".into(),
        management_mode: ROption::RNone,
    }
}

/// A loopback TCP port nobody listens on (bound, then let go): a server that is down.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
