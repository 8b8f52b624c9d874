//! The plugin instance configuration (`plugins.toml` in the plugin directory by default):
//! which plugins run, under which names, with which settings.
//!
//! ```toml
//! [instances.alerts-to-file]
//! plugin = "alert-file"          # the plugin's manifest name
//! enabled = true                 # optional, default true
//! call_timeout_ms = 10000        # optional: this instance's call bound, overriding
//!                                # [plugins] call_timeout_ms (agent deployers need minutes)
//! [instances.alerts-to-file.config]
//! path = "alerts.jsonl"          # the plugin's own settings, passed to it as TOML
//! ```
//!
//! A missing file means no instances. Key exporters need no entry: a plugin that
//! offers export formats and has no configured instance gets an implicit one with an
//! empty configuration, named after the plugin.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Why the instance configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InstanceConfigError {
    #[error("cannot read plugin configuration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("plugin configuration {path} is invalid: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstancesFile {
    #[serde(default)]
    instances: BTreeMap<String, InstanceEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstanceEntry {
    plugin: String,
    #[serde(default = "enabled_by_default")]
    enabled: bool,
    call_timeout_ms: Option<u64>,
    #[serde(default)]
    config: toml::Table,
}

/// The longest call bound an instance may have: one hour.
const MAX_CALL_TIMEOUT_MS: u64 = 3_600_000;

fn enabled_by_default() -> bool {
    true
}

/// One configured instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    pub name: String,
    /// The manifest name of the plugin it instantiates.
    pub plugin: String,
    /// Its configuration table as TOML text, passed to the plugin as is.
    pub config_toml: String,
    /// Created because an exporter plugin had no configured instance.
    pub implicit: bool,
    /// This instance's call bound, when it overrides the host's.
    pub call_timeout: Option<std::time::Duration>,
}

/// Reads the enabled instances from `path`, sorted by name.
pub fn load(path: &Path) -> Result<Vec<InstanceSpec>, InstanceConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(InstanceConfigError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    parse(&text).map_err(|message| InstanceConfigError::Invalid {
        path: path.to_path_buf(),
        message,
    })
}

fn parse(text: &str) -> Result<Vec<InstanceSpec>, String> {
    let file: InstancesFile =
        toml::from_str(text).map_err(|e| e.to_string().trim_end().replace('\n', " "))?;
    let mut specs = Vec::new();
    for (name, entry) in file.instances {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(format!(
                "instance name {name:?}: use letters, digits, '-' and '_' (at most 64)"
            ));
        }
        if let Some(ms) = entry.call_timeout_ms {
            if !(1..=MAX_CALL_TIMEOUT_MS).contains(&ms) {
                return Err(format!(
                    "instance {name}: call_timeout_ms must be 1 to {MAX_CALL_TIMEOUT_MS}, not {ms}"
                ));
            }
        }
        if entry.enabled {
            specs.push(InstanceSpec {
                call_timeout: entry.call_timeout_ms.map(std::time::Duration::from_millis),
                config_toml: toml::to_string(&entry.config)
                    .map_err(|e| format!("instance {name}: {e}"))?,
                plugin: entry.plugin,
                name,
                implicit: false,
            });
        }
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_are_read_with_their_config_as_toml() {
        let specs = parse(
            "[instances.b]\nplugin = \"alert-file\"\n[instances.b.config]\npath = \"x.jsonl\"\nmax_bytes = 2048\n\
             [instances.a]\nplugin = \"export-csv\"\n\
             [instances.off]\nplugin = \"alert-file\"\nenabled = false\n",
        )
        .unwrap();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let table: toml::Table = toml::from_str(&specs[1].config_toml).unwrap();
        assert_eq!(table["path"].as_str(), Some("x.jsonl"));
        assert_eq!(table["max_bytes"].as_integer(), Some(2048));
        assert_eq!(specs[0].config_toml, "");
        assert_eq!(specs[0].call_timeout, None);
        let specs = parse("[instances.a]\nplugin = \"x\"\ncall_timeout_ms = 600000\n").unwrap();
        assert_eq!(
            specs[0].call_timeout,
            Some(std::time::Duration::from_secs(600))
        );
    }

    #[test]
    fn mistakes_are_errors_that_say_where() {
        let err = parse("[instances.a]\nplugn = \"x\"\n").unwrap_err();
        assert!(err.contains("plugn"), "{err}");
        let err = parse("[instances.\"a b\"]\nplugin = \"x\"\n").unwrap_err();
        assert!(err.contains("a b"), "{err}");
        let err = parse("[instances.a]\nplugin = \"x\"\ncall_timeout_ms = 0\n").unwrap_err();
        assert!(
            err.contains("call_timeout_ms must be 1 to 3600000"),
            "{err}"
        );
        assert!(parse("[instances.a\n").is_err());
    }

    #[test]
    fn the_shipped_example_configures_nothing() {
        assert!(parse(include_str!("../../../config/plugins.toml"))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_missing_file_is_no_instances() {
        assert!(load(Path::new("/nonexistent/plugins.toml"))
            .unwrap()
            .is_empty());
    }
}
