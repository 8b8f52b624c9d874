//! What the core offers each plugin instance ([`HostServices`]): logging into the
//! core's tracing, raising alerts, read-only device lookups, and — for agent
//! deployers — checking a device's SSH host key against the store's record and issuing
//! agent enrollment tokens, all through the store thread. Nothing else of the core is
//! reachable from a plugin.

use abi_stable::std_types::{ROption, RResult, RStr, RString};
use vprov_sdk::abi::{
    DeviceInfo, HostKeyCheck, HostKeyVerdict, HostServices, LogLevel, PluginAlert, PluginError,
    Severity,
};

use super::ServerLink;
use crate::hello::DeviceUuid;
use crate::store::{
    DeviceRecord, HostKeyStatus, NewAlert, Severity as CoreSeverity, SshPublicKey, Store,
    StoreError,
};

/// The host services of one instance.
pub struct CoreServices {
    pub instance: String,
    pub link: Option<ServerLink>,
}

impl HostServices for CoreServices {
    fn log(&self, level: LogLevel, message: RStr<'_>) {
        let plugin = self.instance.as_str();
        let message = message.as_str();
        match level {
            LogLevel::ERROR => tracing::error!(plugin, "{message}"),
            LogLevel::WARN => tracing::warn!(plugin, "{message}"),
            LogLevel::INFO => tracing::info!(plugin, "{message}"),
            LogLevel::DEBUG => tracing::debug!(plugin, "{message}"),
            _ => tracing::trace!(plugin, "{message}"),
        }
    }

    fn raise_alert(&self, alert: PluginAlert) -> RResult<(), PluginError> {
        let Some(link) = &self.link else {
            // One-shot CLI commands have no alert log; the message still reaches the
            // operator.
            tracing::warn!(plugin = %self.instance, "alert: {}", alert.message);
            return RResult::ROk(());
        };
        link.alerts.raise(NewAlert {
            severity: core_severity(alert.severity),
            source: super::plugin_source(&self.instance).into(),
            message: alert.message.into_string(),
            pid: None,
            device_uuid: alert.device_uuid.into_option().map(|u| u.into_string()),
            address: None,
        });
        RResult::ROk(())
    }

    fn device(&self, uuid: RStr<'_>) -> RResult<ROption<DeviceInfo>, PluginError> {
        let uuid = DeviceUuid::canonical(uuid.as_str());
        self.with_store("device lookups", move |s| s.device(&uuid))
            .map(|device| device.map(device_info).into())
            .into()
    }

    fn check_host_key(
        &self,
        uuid: RStr<'_>,
        public_key: RStr<'_>,
    ) -> RResult<HostKeyCheck, PluginError> {
        let uuid = DeviceUuid::canonical(uuid.as_str());
        let key = match SshPublicKey::parse(public_key.as_str()) {
            Ok(key) => key,
            Err(e) => return RResult::RErr(PluginError::failed(e.to_string())),
        };
        let actor = super::plugin_source(&self.instance);
        self.with_store("host key checks", move |s| {
            s.check_host_key(&uuid, &key, &actor)
        })
        .map(|status| match status {
            HostKeyStatus::FirstUse { fingerprint } => HostKeyCheck {
                verdict: HostKeyVerdict::FIRST_USE,
                recorded_fingerprint: fingerprint.into(),
            },
            HostKeyStatus::Matches { fingerprint } => HostKeyCheck {
                verdict: HostKeyVerdict::MATCHES,
                recorded_fingerprint: fingerprint.into(),
            },
            HostKeyStatus::Changed { recorded } => HostKeyCheck {
                verdict: HostKeyVerdict::CHANGED,
                recorded_fingerprint: recorded.into(),
            },
        })
        .into()
    }

    fn issue_enroll_token(
        &self,
        uuid: RStr<'_>,
        profile: RStr<'_>,
    ) -> RResult<RString, PluginError> {
        let uuid = DeviceUuid::canonical(uuid.as_str());
        let profile = profile.to_string();
        let actor = super::plugin_source(&self.instance);
        self.with_store("enrollment tokens", move |s| {
            s.issue_enroll_token(&uuid, &profile, &actor)
        })
        .map(|token| RString::from(token.as_str()))
        .into()
    }
}

impl CoreServices {
    /// Runs `f` on the store thread and waits for it (plugin calls run on blocking
    /// threads, where waiting is fine).
    fn with_store<T: Send + 'static>(
        &self,
        what: &str,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, PluginError> {
        let Some(link) = &self.link else {
            return Err(PluginError::unsupported(format!(
                "{what} are only available where vprov runs the plugin with its store"
            )));
        };
        match link.runtime.block_on(link.store.call(f)) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e @ StoreError::UnknownDevice(_))) => Err(PluginError::failed(e.to_string())),
            Ok(Err(e)) => Err(PluginError::failed(e.to_string()).retryable()),
            Err(e) => Err(PluginError::failed(e.to_string())),
        }
    }
}

pub fn core_severity(s: Severity) -> CoreSeverity {
    match s {
        Severity::INFO => CoreSeverity::Info,
        Severity::WARNING => CoreSeverity::Warning,
        Severity::CRITICAL => CoreSeverity::Critical,
        _ => CoreSeverity::Error,
    }
}

/// A device record as plugins see it (no credentials).
pub fn device_info(d: DeviceRecord) -> DeviceInfo {
    DeviceInfo {
        uuid: d.uuid.into(),
        host_name: d.host_name.map(Into::into).into(),
        address: d.address.unwrap_or_default().into(),
        amt_version: d.amt_version.map(Into::into).into(),
        pid: d.provisioned_pid.unwrap_or_default().into(),
        state: d.state.as_str().into(),
        management_mode: d.management_mode.map(Into::into).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_map_both_ways() {
        for s in [
            CoreSeverity::Info,
            CoreSeverity::Warning,
            CoreSeverity::Error,
            CoreSeverity::Critical,
        ] {
            assert_eq!(core_severity(crate::alerts::sdk_severity(s)), s);
        }
        assert_eq!(core_severity(Severity(200)), CoreSeverity::Error);
    }

    #[test]
    fn outside_the_server_lookups_are_unsupported_and_alerts_are_logged() {
        let services = CoreServices {
            instance: "x".into(),
            link: None,
        };
        let err = services.device(RStr::from("u")).unwrap_err();
        assert_eq!(err.kind, vprov_sdk::ErrorKind::UNSUPPORTED);
        assert!(services
            .raise_alert(PluginAlert {
                severity: Severity::ERROR,
                message: "m".into(),
                device_uuid: ROption::RNone,
            })
            .is_ok());
    }
}
