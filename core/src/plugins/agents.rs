//! Post-provision actions and agent deployment: which instance runs, and the rules
//! for applying what it answers — a device moves to managed (agentless or agent) in
//! the store, audited as the instance; a failure is an alert and leaves the device
//! where it was.

use std::sync::Arc;

use abi_stable::std_types::{RResult, RStr};
use vprov_sdk::{ActionOutcome, DeviceInfo, OutcomeAction, PluginKinds};

use super::{plugin_source, services, Instance, PluginCallError, PluginHost, ServerLink};
use crate::store::{ManagementMode, NewAlert, Severity};

/// Why an agent could not be deployed.
#[derive(Debug, thiserror::Error)]
pub enum AgentDeployError {
    #[error("no agent deployer is configured: add an instance of an agent-deploying plugin (post-agent-ssh) to {config}")]
    NoDeployer { config: String },
    #[error("no agent profile {profile}; configured profiles: {available}")]
    UnknownProfile { profile: String, available: String },
    #[error("several agent deployers are configured ({instances}): name a profile (configured: {available})")]
    Ambiguous {
        instances: String,
        available: String,
    },
    #[error(transparent)]
    Call(#[from] PluginCallError),
}

impl PluginHost {
    /// Runs the post-provision actions for a newly provisioned device, in instance
    /// name order, and applies their outcomes. Provisioning does not wait for this.
    pub fn after_provisioning(&self, device: DeviceInfo) {
        let actions: Vec<Arc<Instance>> = self
            .active()
            .iter()
            .filter(|i| i.kinds.contains(PluginKinds::POST_PROVISION))
            .cloned()
            .collect();
        let Some(link) = self.inner.link.clone() else {
            return;
        };
        if actions.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for action in actions {
                let d = device.clone();
                match action.call("run", move |p| p.after_provisioning(&d)).await {
                    Ok(outcome) => apply_outcome(&link, &action, &device, outcome).await,
                    Err(e) => link.alerts.raise(NewAlert {
                        severity: Severity::Error,
                        source: plugin_source(&action.name).into(),
                        message: format!(
                            "post-provision action failed for device {}: {e}; the device stays where it is",
                            device.uuid
                        ),
                        pid: Some(device.pid.to_string()),
                        device_uuid: Some(device.uuid.to_string()),
                        address: Some(device.address.to_string()),
                    }),
                }
            }
        });
    }
}

impl PluginHost {
    /// Every profile the active agent deployers offer, sorted.
    pub async fn agent_profiles(&self) -> Vec<String> {
        let mut all = Vec::new();
        for deployer in self.active().iter() {
            if !deployer.kinds.contains(PluginKinds::AGENT_DEPLOYER) {
                continue;
            }
            if let Ok(profiles) = deployer
                .call("agent_profiles", |p| {
                    RResult::ROk(
                        p.agent_profiles()
                            .into_iter()
                            .map(|p| p.into_string())
                            .collect::<Vec<_>>(),
                    )
                })
                .await
            {
                all.extend(profiles);
            }
        }
        all.sort_unstable();
        all
    }

    /// Deploys a management agent to `device` under `profile` (or, with none, the
    /// default profile of the only agent deployer), through the deployer instance
    /// offering that profile. The caller applies the outcome.
    pub async fn deploy_agent(
        &self,
        device: DeviceInfo,
        profile: Option<String>,
    ) -> Result<ActionOutcome, AgentDeployError> {
        let deployers: Vec<Arc<Instance>> = self
            .active()
            .iter()
            .filter(|i| i.kinds.contains(PluginKinds::AGENT_DEPLOYER))
            .cloned()
            .collect();
        if deployers.is_empty() {
            return Err(AgentDeployError::NoDeployer {
                config: self.inner.settings.config_path.display().to_string(),
            });
        }
        let mut offered: Vec<(Arc<Instance>, Vec<String>)> = Vec::new();
        for deployer in deployers {
            let profiles = deployer
                .call("agent_profiles", |p| {
                    RResult::ROk(
                        p.agent_profiles()
                            .into_iter()
                            .map(|p| p.into_string())
                            .collect(),
                    )
                })
                .await?;
            offered.push((deployer, profiles));
        }
        let available = || {
            let mut all: Vec<&str> = offered
                .iter()
                .flat_map(|(_, p)| p.iter().map(String::as_str))
                .collect();
            all.sort_unstable();
            if all.is_empty() {
                "none".to_string()
            } else {
                all.join(", ")
            }
        };
        let deployer = match &profile {
            Some(name) => match offered.iter().find(|(_, p)| p.contains(name)) {
                Some((deployer, _)) => deployer.clone(),
                None => {
                    return Err(AgentDeployError::UnknownProfile {
                        profile: name.clone(),
                        available: available(),
                    })
                }
            },
            None if offered.len() == 1 => offered[0].0.clone(),
            None => {
                return Err(AgentDeployError::Ambiguous {
                    instances: offered
                        .iter()
                        .map(|(i, _)| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    available: available(),
                })
            }
        };
        let outcome = deployer
            .call("deploy_agent", move |p| {
                p.deploy_agent(&device, profile.as_deref().map(RStr::from).into())
            })
            .await?;
        Ok(outcome)
    }
}

impl PluginHost {
    /// Deploys an agent to `device` and, on success, moves it to managed (agent) with
    /// the profile deployed, audited as `actor`; returns that profile. A failure is
    /// raised as an alert (source `agent`) naming the step, and the device stays
    /// where it was. Needs a host with a store link.
    pub async fn deploy_and_manage(
        &self,
        device: crate::store::DeviceRecord,
        profile: Option<String>,
        actor: &str,
    ) -> Result<Option<String>, String> {
        let Some(link) = self.inner.link.clone() else {
            return Err("agent deployment needs vprov's store".into());
        };
        let uuid = device.uuid.clone();
        let info = services::device_info(device.clone());
        let deployed = match self.deploy_agent(info, profile).await {
            Ok(o) if o.action == OutcomeAction::MANAGE_WITH_AGENT => {
                let deployed = o.profile.as_ref().map(|p| p.to_string()).into_option();
                let detail = serde_json::json!({ "message": o.message.as_str() });
                let (u, p, actor) = (uuid.clone(), deployed.clone(), actor.to_string());
                link.store
                    .call(move |s| {
                        s.set_device_management(
                            &[&u],
                            Some(ManagementMode::Agent),
                            p.as_deref(),
                            &actor,
                            detail,
                        )
                    })
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()))
                    .map(|()| deployed)
            }
            Ok(o) => Err(format!(
                "the deployer did not deploy an agent: {}",
                o.message
            )),
            Err(e) => Err(e.to_string()),
        };
        deployed.map_err(|e| {
            let message = format!(
                "agent deployment to device {uuid} failed: {e}; the device stays {}",
                device.state.as_str()
            );
            link.alerts.raise(NewAlert {
                severity: Severity::Error,
                source: "agent".into(),
                message: message.clone(),
                pid: device.provisioned_pid.clone(),
                device_uuid: Some(uuid.clone()),
                address: device.address.clone(),
            });
            message
        })
    }
}

async fn apply_outcome(
    link: &ServerLink,
    action: &Instance,
    device: &DeviceInfo,
    outcome: ActionOutcome,
) {
    let mode = match outcome.action {
        OutcomeAction::KEEP_UNMANAGED => {
            tracing::info!(instance = %action.name, device = %device.uuid, "post-provision action: {}", outcome.message);
            return;
        }
        OutcomeAction::MANAGE_AGENTLESS => ManagementMode::Agentless,
        OutcomeAction::MANAGE_WITH_AGENT => ManagementMode::Agent,
        other => {
            link.alerts.raise(NewAlert {
                severity: Severity::Error,
                source: plugin_source(&action.name).into(),
                message: format!(
                    "post-provision action returned an unknown outcome ({}) for device {}; ignored",
                    other.0, device.uuid
                ),
                pid: None,
                device_uuid: Some(device.uuid.to_string()),
                address: None,
            });
            return;
        }
    };
    let uuid = device.uuid.to_string();
    let actor = plugin_source(&action.name);
    let profile = outcome
        .profile
        .as_ref()
        .map(|p| p.to_string())
        .into_option();
    let detail = serde_json::json!({ "message": outcome.message.as_str() });
    match link
        .store
        .call(move |s| {
            s.set_device_management(&[&uuid], Some(mode), profile.as_deref(), &actor, detail)
        })
        .await
    {
        Ok(Ok(())) => tracing::info!(instance = %action.name, device = %device.uuid,
            mode = mode.as_str(), "device moved to managed by a post-provision action"),
        Ok(Err(e)) => tracing::error!("cannot apply post-provision outcome: {e}"),
        Err(_) => {}
    }
}
