//! The configuration file (`config/vprov.toml` documents every setting) and the
//! embedded defaults used when no file is given.
//!
//! Precedence, highest first: command-line flag, environment variable, configuration
//! file, embedded default. Unknown keys are errors, so a typo never silently falls
//! back to a default.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default data directory, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "./data";
/// Default time a writer waits for another process's transaction.
pub const DEFAULT_BUSY_TIMEOUT_MS: u64 = 30_000;

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("configuration file {path}: {key} {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

/// The file as written: every field optional, unknown fields rejected.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data_dir: Option<PathBuf>,
    #[serde(default)]
    store: StoreSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreSection {
    busy_timeout_ms: Option<u64>,
    master_key_file: Option<PathBuf>,
}

/// The resolved configuration (before command-line and environment overrides,
/// which the binary applies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Directory holding `vprov.db`, `master.key` and (later) plugins.
    pub data_dir: PathBuf,
    /// How long a writer waits for another process's write transaction.
    pub busy_timeout: Duration,
    /// Master key file; `None` means `master.key` in the data directory.
    pub master_key_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            busy_timeout: Duration::from_millis(DEFAULT_BUSY_TIMEOUT_MS),
            master_key_file: None,
        }
    }
}

impl Config {
    /// Loads `path`, or returns the embedded defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses configuration text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().replace('\n', " "),
        })?;
        let defaults = Config::default();
        let busy_ms = file
            .store
            .busy_timeout_ms
            .unwrap_or(DEFAULT_BUSY_TIMEOUT_MS);
        if !(1..=3_600_000).contains(&busy_ms) {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                key: "store.busy_timeout_ms",
                message: format!("must be between 1 and 3600000, got {busy_ms}"),
            });
        }
        Ok(Config {
            data_dir: file.data_dir.unwrap_or(defaults.data_dir),
            busy_timeout: Duration::from_millis(busy_ms),
            master_key_file: file.store.master_key_file,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_default_file_equals_the_embedded_defaults() {
        let text = include_str!("../../config/vprov.toml");
        let parsed = Config::parse(text, Path::new("config/vprov.toml")).unwrap();
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn settings_are_read() {
        let c = Config::parse(
            "data_dir = \"/var/lib/vprov\"\n[store]\nbusy_timeout_ms = 500\nmaster_key_file = \"/etc/vprov/key\"\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/vprov"));
        assert_eq!(c.busy_timeout, Duration::from_millis(500));
        assert_eq!(c.master_key_file, Some(PathBuf::from("/etc/vprov/key")));
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        let err = Config::parse("[store]\nbusy_timeout = 5\n", Path::new("x")).unwrap_err();
        assert!(err.to_string().contains("busy_timeout"), "{err}");
        let err = Config::parse("[store]\nbusy_timeout_ms = 0\n", Path::new("x")).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
        let err = Config::parse("data_dir = [", Path::new("x")).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert!(matches!(
            Config::load(Some(Path::new("/nonexistent/vprov.toml"))),
            Err(ConfigError::Read { .. })
        ));
    }
}
