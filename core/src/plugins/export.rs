//! Key export through the exporter plugins, as `vprov keys export` and the admin API
//! do it: find the instance offering a format, read the batch's available keys
//! (the export is audited before any PPS is read), and build the exporter's request.

use std::collections::BTreeMap;
use std::sync::Arc;

use abi_stable::std_types::RResult;
use vprov_sdk::abi::ExportRequest;
use vprov_sdk::{ExportFormat, KeyPair, PluginKinds};

use super::{Instance, PluginHost};
use crate::store::{KeyFilter, KeyState, Store, StoreError};

/// Why an export request could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("no key export plugin is loaded (plugin directory {0}); see `vprov plugins list`")]
    NoExporter(String),
    #[error("no plugin offers format {format:?}; available: {available}")]
    UnknownFormat { format: String, available: String },
    #[error("no key batch with id {0}")]
    NoBatch(i64),
    #[error("format {0} writes the provisioning password into the file: set it first with `vprov password set`")]
    NoPassword(String),
    #[error("batch {0} has no available keys to export")]
    NothingToExport(i64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every format the active exporter instances offer, with the instance offering it.
pub async fn offers(host: &PluginHost) -> Vec<(Arc<Instance>, ExportFormat)> {
    let mut offers = Vec::new();
    for instance in host.active().iter() {
        if !instance.kinds.contains(PluginKinds::KEY_EXPORTER) {
            continue;
        }
        if let Ok(formats) = instance
            .call("export_formats", |p| RResult::ROk(p.export_formats()))
            .await
        {
            offers.extend(formats.into_iter().map(|f| (instance.clone(), f)));
        }
    }
    offers
}

/// The instance offering `format` among `offers`, or an error listing what is.
pub fn choose(
    offers: &[(Arc<Instance>, ExportFormat)],
    format: &str,
    plugin_dir: &std::path::Path,
) -> Result<(Arc<Instance>, ExportFormat), ExportError> {
    if let Some(found) = offers.iter().find(|(_, f)| f.name.as_str() == format) {
        return Ok(found.clone());
    }
    if offers.is_empty() {
        return Err(ExportError::NoExporter(plugin_dir.display().to_string()));
    }
    let available: Vec<String> = offers
        .iter()
        .map(|(i, f)| format!("{} ({}, plugin {})", f.name, f.description, i.plugin))
        .collect();
    Err(ExportError::UnknownFormat {
        format: format.to_string(),
        available: available.join("; "),
    })
}

/// What an export is for.
pub struct ExportTarget<'a> {
    pub batch: i64,
    pub format: &'a ExportFormat,
    pub plugin: &'a str,
    pub options: &'a BTreeMap<String, String>,
    /// The file the result goes to, if it is a file (not a download).
    pub destination: Option<String>,
    /// The provisioning server address and hello port technicians enter.
    pub server: (&'a str, u16),
}

/// Reads the batch's available keys (audited as `keys.export`) and builds the
/// exporter's request; the number of pairs comes with it.
pub fn request(
    store: &mut Store,
    target: &ExportTarget<'_>,
    actor: &str,
) -> Result<(ExportRequest, usize), ExportError> {
    let batch = store
        .batches()?
        .into_iter()
        .find(|b| b.id == target.batch)
        .ok_or(ExportError::NoBatch(target.batch))?;
    let format = target.format;
    let password = if format.needs_provisioning_password {
        Some(
            store
                .provisioning_password()?
                .ok_or_else(|| ExportError::NoPassword(format.name.to_string()))?,
        )
    } else {
        None
    };
    let filter = KeyFilter {
        batch: Some(target.batch),
        state: Some(KeyState::Available),
        pid: None,
    };
    let detail = serde_json::json!({
        "format": format.name.as_str(),
        "file": target.destination,
        "plugin": target.plugin,
    });
    let keys = store.export_keys(&filter, actor, detail)?;
    if keys.is_empty() {
        return Err(ExportError::NothingToExport(target.batch));
    }
    let count = keys.len();
    let pairs = keys
        .into_iter()
        .map(|k| KeyPair {
            pid: k.pid.as_str().into(),
            pps: k
                .pps
                .as_ref()
                .map(|p| String::from_utf8_lossy(p.expose_bytes()).into_owned())
                .unwrap_or_default()
                .into(),
        })
        .collect();
    let request = ExportRequest {
        format: format.name.clone(),
        options_json: serde_json::to_string(target.options)
            .expect("a map of strings serializes")
            .into(),
        batch_id: batch.id,
        batch_comment: batch.comment.unwrap_or_default().into(),
        batch_created_unix_ms: batch.created_at,
        server_address: target.server.0.into(),
        server_port: target.server.1,
        provisioning_password: password.map(|p| p.expose().into()).into(),
        destination: target.destination.clone().map(Into::into).into(),
        pairs,
    };
    Ok((request, count))
}
