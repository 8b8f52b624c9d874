//! What the core offers each plugin instance ([`HostServices`]): logging into the
//! core's tracing, raising alerts, and read-only device lookups through the store
//! thread. Nothing else of the core is reachable from a plugin.

use abi_stable::std_types::{ROption, RResult, RStr};
use vprov_sdk::abi::{DeviceInfo, HostServices, LogLevel, PluginAlert, PluginError, Severity};

use super::ServerLink;
use crate::store::{DeviceRecord, NewAlert, Severity as CoreSeverity};

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
        let Some(link) = &self.link else {
            return RResult::RErr(PluginError::unsupported(
                "device lookups are only available inside `vprov serve`",
            ));
        };
        let uuid = uuid.as_str().to_ascii_lowercase();
        // Plugin calls run on blocking threads, where waiting on the store is fine.
        let found = link
            .runtime
            .block_on(link.store.call(move |s| s.device(&uuid)));
        match found {
            Ok(Ok(device)) => RResult::ROk(device.map(device_info).into()),
            Ok(Err(e)) => RResult::RErr(PluginError::failed(e.to_string()).retryable()),
            Err(e) => RResult::RErr(PluginError::failed(e.to_string())),
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

pub fn sdk_severity(s: CoreSeverity) -> Severity {
    match s {
        CoreSeverity::Info => Severity::INFO,
        CoreSeverity::Warning => Severity::WARNING,
        CoreSeverity::Error => Severity::ERROR,
        CoreSeverity::Critical => Severity::CRITICAL,
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
            assert_eq!(core_severity(sdk_severity(s)), s);
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
