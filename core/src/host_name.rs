//! The host-name rule for devices that have none.
//!
//! Intel's `CommitChanges` precondition (quoted in go-wsman-messages
//! `setupandconfiguration`): "If DHCP is enabled, host-name must be set". Factory
//! devices have an empty host name and DHCP on, so they answer 2057 (DATA_MISSING)
//! unless the provisioning server names them first. [`HostNameTemplate`] is the
//! configured rule (`[provisioning] host_name_template`): placeholders `{uuid}` (the
//! device's UUID, 36 characters), `{uuid8}` (its first 8 hex digits) and `{address}`
//! (the hello's source address with `-` for `.` and `:`). The result must be a valid
//! DNS label, which is checked when the configuration is read.

use std::net::IpAddr;

use crate::hello::DeviceUuid;

/// The default rule: unique and stable for every device.
pub const DEFAULT_TEMPLATE: &str = "amt-{uuid}";

/// Longest DNS label (RFC 1035), which is also AMT's host-name limit.
const MAX_LABEL: usize = 63;

/// A checked host-name template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNameTemplate(String);

impl Default for HostNameTemplate {
    fn default() -> Self {
        HostNameTemplate(DEFAULT_TEMPLATE.to_string())
    }
}

impl HostNameTemplate {
    /// Checks `template` by rendering it for the longest values its placeholders can
    /// take; the error says what is wrong.
    pub fn parse(template: &str) -> Result<Self, String> {
        let candidate = HostNameTemplate(template.to_string());
        let probe = candidate.render(
            DeviceUuid([0xab; 16]),
            "fd00:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
                .parse()
                .expect("address"),
        );
        if let Some(rest) = probe.split('{').nth(1) {
            let name = rest.split('}').next().unwrap_or(rest);
            return Err(format!(
                "unknown placeholder {{{name}}} (known: {{uuid}}, {{uuid8}}, {{address}})"
            ));
        }
        check_label(&probe)?;
        Ok(candidate)
    }

    /// The host name for a device.
    pub fn render(&self, uuid: DeviceUuid, address: IpAddr) -> String {
        let uuid = uuid.to_string();
        let address: String = address
            .to_string()
            .chars()
            .map(|c| if c == '.' || c == ':' { '-' } else { c })
            .collect();
        self.0
            .replace("{uuid8}", &uuid[..8])
            .replace("{uuid}", &uuid)
            .replace("{address}", &address)
            .to_ascii_lowercase()
    }
}

/// A DNS label: 1–63 letters, digits and hyphens, not starting or ending with one.
fn check_label(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_LABEL {
        return Err(format!(
            "gives host names of up to {} characters; AMT allows 1 to {MAX_LABEL}",
            name.len()
        ));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        || name.starts_with('-')
        || name.ends_with('-')
    {
        return Err(format!(
            "gives {name:?}, which is not a host name (letters, digits and inner hyphens only)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_names_each_device_by_its_uuid() {
        let uuid = DeviceUuid([0x11; 16]);
        let name = HostNameTemplate::default().render(uuid, "127.0.0.9".parse().unwrap());
        assert_eq!(name, format!("amt-{uuid}"));
        assert!(check_label(&name).is_ok());
    }

    #[test]
    fn placeholders_render_and_bad_templates_are_refused() {
        let t = HostNameTemplate::parse("PC-{uuid8}-{address}").unwrap();
        assert_eq!(
            t.render(DeviceUuid([0xab; 16]), "10.1.2.3".parse().unwrap()),
            "pc-abababab-10-1-2-3"
        );
        for (bad, needle) in [
            ("pc_{uuid8}", "not a host name"),
            ("{serial}", "unknown placeholder {serial}"),
            ("", "1 to 63"),
            ("-{uuid8}", "not a host name"),
            ("a-very-long-prefix-that-will-not-fit-{uuid}", "1 to 63"),
        ] {
            let err = HostNameTemplate::parse(bad).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
