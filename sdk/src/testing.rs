//! A fake host for plugin unit tests: instantiate a plugin in-process through the same
//! guarded adapter the real boundary uses, and inspect what it logged and raised.

use std::sync::{Arc, Mutex};

use abi_stable::sabi_trait::TD_Opaque;
use abi_stable::std_types::{RArc, ROption, RResult, RStr};

use crate::abi::{
    AlertEvent, DeviceInfo, HostServices, HostServicesBox, InitContext, LogLevel, PluginAlert,
    PluginError, PluginInstanceBox, Severity,
};
use crate::plugin::{instantiate, Plugin};

/// Records logs and alerts; answers device lookups from a list.
#[derive(Clone, Default)]
pub struct FakeHost {
    pub logs: Arc<Mutex<Vec<(LogLevel, String)>>>,
    pub alerts: Arc<Mutex<Vec<PluginAlert>>>,
    pub devices: Arc<Mutex<Vec<DeviceInfo>>>,
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
