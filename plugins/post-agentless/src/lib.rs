//! `post-agentless`: a post-provision action that moves every newly provisioned
//! device to the managed devices, agentless (AMT-only management: power, inventory,
//! reachability over TLS). Configure an instance in `plugins.toml` to make that the
//! default; without one, devices stay in the unmanaged list for an admin to move.
//!
//! Configuration: `only_hosts = ["pc-*", ...]` (optional): move only devices whose
//! host name matches one of these patterns (`*` matches any run of characters);
//! others stay unmanaged.

use serde::Deserialize;
use vprov_sdk::{
    ActionOutcome, Context, DeviceInfo, OutcomeAction, Plugin, PluginError, PluginKinds,
    PostProvisionAction,
};

pub struct PostAgentless {
    only_hosts: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    only_hosts: Option<Vec<String>>,
}

impl Plugin for PostAgentless {
    const NAME: &'static str = "post-agentless";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "moves newly provisioned devices to managed (agentless)";
    const KINDS: PluginKinds = PluginKinds::POST_PROVISION;

    fn new(context: Context) -> Result<Self, PluginError> {
        let config: Config = context.config()?;
        if let Some(patterns) = &config.only_hosts {
            if patterns.iter().any(|p| p.is_empty()) {
                return Err(PluginError::invalid_config("only_hosts: empty pattern"));
            }
        }
        Ok(PostAgentless {
            only_hosts: config.only_hosts,
        })
    }

    fn post_provision(&self) -> Option<&dyn PostProvisionAction> {
        Some(self)
    }
}

impl PostProvisionAction for PostAgentless {
    fn run(&self, device: &DeviceInfo) -> Result<ActionOutcome, PluginError> {
        let host = device.host_name.as_ref().map(|h| h.as_str()).into_option();
        let selected = match (&self.only_hosts, host) {
            (None, _) => true,
            (Some(patterns), Some(host)) => patterns.iter().any(|p| matches(p, host)),
            (Some(_), None) => false,
        };
        Ok(if selected {
            ActionOutcome {
                action: OutcomeAction::MANAGE_AGENTLESS,
                profile: None.into(),
                message: "post-agentless: managed over AMT, no agent".into(),
            }
        } else {
            ActionOutcome {
                action: OutcomeAction::KEEP_UNMANAGED,
                profile: None.into(),
                message: "post-agentless: host name not selected by only_hosts".into(),
            }
        })
    }
}

/// Glob match with `*` only, ASCII case-insensitive (host names are).
fn matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.to_ascii_lowercase(), text.to_ascii_lowercase());
    let parts: Vec<&str> = p.split('*').collect();
    if parts.len() == 1 {
        return p == t;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !t.starts_with(first) || !t[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &t[first.len()..t.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

vprov_sdk::export_plugin!(PostAgentless);

#[cfg(test)]
mod tests {
    use abi_stable::std_types::ROption;
    use vprov_sdk::testing::{sample_device, FakeHost};

    use super::*;

    fn run(config: &str, host: Option<&str>) -> Result<ActionOutcome, PluginError> {
        let fake = FakeHost::default();
        let p = fake.instantiate::<PostAgentless>(config, &std::env::temp_dir())?;
        let mut device = sample_device("u-1");
        device.host_name = host
            .map(Into::into)
            .map(ROption::RSome)
            .unwrap_or(ROption::RNone);
        p.after_provisioning(&device).into_result()
    }

    #[test]
    fn every_device_is_managed_agentless_by_default() {
        assert_eq!(
            run("", None).unwrap().action,
            OutcomeAction::MANAGE_AGENTLESS
        );
    }

    #[test]
    fn only_hosts_selects_by_host_name() {
        let config = "only_hosts = [\"pc-*\", \"lab-*-2\"]";
        assert_eq!(
            run(config, Some("PC-17")).unwrap().action,
            OutcomeAction::MANAGE_AGENTLESS
        );
        assert_eq!(
            run(config, Some("lab-a-2")).unwrap().action,
            OutcomeAction::MANAGE_AGENTLESS
        );
        assert_eq!(
            run(config, Some("srv-1")).unwrap().action,
            OutcomeAction::KEEP_UNMANAGED
        );
        assert_eq!(
            run(config, None).unwrap().action,
            OutcomeAction::KEEP_UNMANAGED
        );
        assert!(run("only_hosts = [\"\"]", None).is_err());
    }

    #[test]
    fn globs_match_like_shell_stars() {
        assert!(matches("a*c", "abbbc"));
        assert!(matches("*", "x"));
        assert!(matches("x", "X"));
        assert!(!matches("a*c*d", "abcx"));
        assert!(matches("a*c*d", "abcxd"));
    }
}
