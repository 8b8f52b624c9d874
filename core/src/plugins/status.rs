//! What the plugin host reports about itself: libraries and instances for `vprov
//! plugins list`, and the server's status snapshot (`run/plugins-status.json`) that
//! command reads while a server runs.

use serde::Serialize;

use super::loader::LibraryStatus;
use super::{private_dir, HostSettings, PluginHost, State};

/// What `vprov plugins list` shows about a library.
#[derive(Debug, Clone, Serialize)]
pub struct LibraryReport {
    pub file: String,
    pub name: Option<String>,
    pub version: Option<String>,
    pub kinds: Vec<String>,
    pub sdk_version: Option<String>,
    /// `loaded` or `failed: <why>`.
    pub status: String,
}

/// What `vprov plugins list` shows about an instance.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct InstanceReport {
    pub name: String,
    pub plugin: String,
    pub kinds: Vec<String>,
    /// `active`, `quarantined: <why>` or `failed: <why>`.
    pub status: String,
}

/// The server's status snapshot (`run/plugins-status.json`).
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct StatusSnapshot {
    pub server_pid: u32,
    pub updated_at_ms: i64,
    pub instances: Vec<InstanceReport>,
}

impl PluginHost {
    /// Libraries as last scanned, for `vprov plugins list`.
    pub async fn library_reports(&self) -> Vec<LibraryReport> {
        let state = self.inner.state.lock().await;
        state
            .libraries
            .iter()
            .map(|l| match l {
                LibraryStatus::Loaded(l) => LibraryReport {
                    file: l.file.display().to_string(),
                    name: Some(l.manifest.name.clone()),
                    version: Some(l.manifest.version.clone()),
                    kinds: l.manifest.kinds.clone(),
                    sdk_version: Some(l.manifest.sdk_version.clone()),
                    status: "loaded".into(),
                },
                LibraryStatus::Failed { file, reason } => LibraryReport {
                    file: file.display().to_string(),
                    name: None,
                    version: None,
                    kinds: Vec::new(),
                    sdk_version: None,
                    status: format!("failed: {reason}"),
                },
            })
            .collect()
    }

    /// Instances (live and failed), for `vprov plugins list`.
    pub async fn instance_reports(&self) -> Vec<InstanceReport> {
        let state = self.inner.state.lock().await;
        instance_reports(&state)
    }

    pub(super) fn write_status(&self, state: &State) {
        let snapshot = StatusSnapshot {
            server_pid: std::process::id(),
            updated_at_ms: crate::store::now_ms(),
            instances: instance_reports(state),
        };
        let path = HostSettings::status_file(&self.inner.settings.data_dir);
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&snapshot)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                private_dir(path.parent().expect("status file has a parent"))?;
                std::fs::write(&tmp, bytes)?;
                std::fs::rename(&tmp, &path)
            });
        if let Err(e) = written {
            tracing::warn!("cannot write plugin status {}: {e}", path.display());
        }
    }

    /// Refreshes the status snapshot (after a quarantine, say).
    pub async fn refresh_status(&self) {
        if self.inner.settings.publishes_status {
            let state = self.inner.state.lock().await;
            self.write_status(&state);
        }
    }
}

fn instance_reports(state: &State) -> Vec<InstanceReport> {
    let mut reports: Vec<InstanceReport> = state
        .instances
        .values()
        .map(|i| InstanceReport {
            name: i.name.clone(),
            plugin: format!("{} {}", i.plugin, i.plugin_version),
            kinds: i.kinds.names(),
            status: match i.quarantined() {
                Some(reason) => format!("quarantined: {reason}"),
                None => "active".into(),
            },
        })
        .collect();
    for (name, reason) in &state.failed {
        let plugin = state
            .specs
            .iter()
            .find(|s| &s.name == name)
            .map(|s| s.plugin.clone())
            .unwrap_or_default();
        reports.push(InstanceReport {
            name: name.clone(),
            plugin,
            kinds: Vec::new(),
            status: format!("failed: {reason}"),
        });
    }
    reports.sort_by(|a, b| a.name.cmp(&b.name));
    reports
}
