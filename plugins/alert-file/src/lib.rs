//! `alert-file`: an alert sink writing every alert as one JSON line to a file, rotated
//! by size.
//!
//! Configuration (all optional):
//! - `path` (default `alerts.jsonl`): relative paths resolve against the instance's
//!   data directory; parent directories are created;
//! - `max_bytes` (default 10 MiB, at least 1024): when the next line would make the
//!   file larger, it is rotated: `alerts.jsonl` → `alerts.jsonl.1` → `.2` …;
//! - `keep` (default 5, at least 1): rotated files kept; the oldest is removed.
//!
//! Each line: `at` (RFC 3339 UTC), `at_unix_ms`, `severity`, `source`, `message`,
//! `pid`, `device_uuid`, `address` (null when absent). A line is written with one
//! `write` on a file opened for appending, so concurrent readers (`tail -f`, log
//! shippers) never see half a line; the file is synced when the instance stops.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Deserialize;
use vprov_sdk::{AlertEvent, AlertSink, Context, Plugin, PluginError, PluginKinds};

const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024;
const DEFAULT_KEEP: u32 = 5;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    path: Option<String>,
    max_bytes: Option<u64>,
    keep: Option<u32>,
}

pub struct AlertFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    /// The open file and its size, or `None` until the first alert (and after an
    /// error, so the next alert reopens it).
    file: Mutex<Option<(File, u64)>>,
}

impl Plugin for AlertFile {
    const NAME: &'static str = "alert-file";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "alerts as JSON lines in a file, rotated by size";
    const KINDS: PluginKinds = PluginKinds::ALERT_SINK;

    fn new(context: Context) -> Result<Self, PluginError> {
        let config: Config = context.config()?;
        let max_bytes = config.max_bytes.unwrap_or(DEFAULT_MAX_BYTES);
        if max_bytes < 1024 {
            return Err(PluginError::invalid_config(format!(
                "max_bytes must be at least 1024, got {max_bytes}"
            )));
        }
        let keep = config.keep.unwrap_or(DEFAULT_KEEP);
        if keep == 0 {
            return Err(PluginError::invalid_config("keep must be at least 1"));
        }
        let path = context.resolve(config.path.unwrap_or_else(|| "alerts.jsonl".into()));
        if path.file_name().is_none() {
            return Err(PluginError::invalid_config(format!(
                "path {} names no file",
                path.display()
            )));
        }
        Ok(AlertFile {
            path,
            max_bytes,
            keep,
            file: Mutex::new(None),
        })
    }

    fn alert_sink(&self) -> Option<&dyn AlertSink> {
        Some(self)
    }

    fn shutdown(&self) {
        if let Some((file, _)) = self.file.lock().expect("file lock").as_ref() {
            let _ = file.sync_all();
        }
    }
}

impl AlertSink for AlertFile {
    fn deliver(&self, alert: &AlertEvent) -> Result<(), PluginError> {
        let mut line = serde_json::to_vec(&alert.to_json())
            .map_err(|e| PluginError::failed(format!("cannot encode the alert: {e}")))?;
        line.push(b'\n');
        let mut slot = self.file.lock().expect("file lock");
        let result = self.append(&mut slot, &line);
        if result.is_err() {
            // Reopen on the next alert (the directory may have been fixed).
            *slot = None;
        }
        result.map_err(|e| {
            PluginError::failed(format!("cannot write {}: {e}", self.path.display())).retryable()
        })
    }
}

impl AlertFile {
    fn append(&self, slot: &mut Option<(File, u64)>, line: &[u8]) -> std::io::Result<()> {
        if slot.is_none() {
            *slot = Some(self.open()?);
        }
        let (_, size) = slot.as_ref().expect("opened above");
        if *size > 0 && *size + line.len() as u64 > self.max_bytes {
            *slot = None;
            self.rotate()?;
            *slot = Some(self.open()?);
        }
        let (file, size) = slot.as_mut().expect("opened above");
        file.write_all(line)?;
        *size += line.len() as u64;
        Ok(())
    }

    fn open(&self) -> std::io::Result<(File, u64)> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let size = file.metadata()?.len();
        Ok((file, size))
    }

    /// `path.(keep-1)` → `path.keep` (replacing the oldest) … `path` → `path.1`.
    fn rotate(&self) -> std::io::Result<()> {
        for n in (1..self.keep).rev() {
            let from = numbered(&self.path, n);
            if from.exists() {
                std::fs::rename(&from, numbered(&self.path, n + 1))?;
            }
        }
        std::fs::rename(&self.path, numbered(&self.path, 1))
    }
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = path.file_name().expect("checked at start").to_os_string();
    name.push(format!(".{n}"));
    path.with_file_name(name)
}

vprov_sdk::export_plugin!(AlertFile);

#[cfg(test)]
mod tests {
    use abi_stable::std_types::ROption;
    use vprov_sdk::testing::{sample_alert, FakeHost};
    use vprov_sdk::{ErrorKind, Severity};

    use super::*;

    fn alert(message: &str) -> AlertEvent {
        AlertEvent {
            severity: Severity::WARNING,
            pid: ROption::RSome("0000-037M".into()),
            address: ROption::RSome("10.0.0.7".into()),
            ..sample_alert(message)
        }
    }

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn each_alert_is_one_json_line_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FakeHost::default()
            .instantiate::<AlertFile>("path = \"logs/a.jsonl\"", dir.path())
            .unwrap();
        sink.deliver_alert(&alert("first")).unwrap();
        sink.deliver_alert(&alert("second")).unwrap();
        let got = lines(&dir.path().join("logs/a.jsonl"));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0]["message"], "first");
        assert_eq!(got[0]["at"], "2025-11-24T16:00:00.123Z");
        assert_eq!(got[0]["at_unix_ms"], 1_764_000_000_123u64);
        assert_eq!(got[0]["severity"], "warning");
        assert_eq!(got[0]["source"], "hello");
        assert_eq!(got[0]["pid"], "0000-037M");
        assert_eq!(got[0]["device_uuid"], serde_json::Value::Null);
        assert_eq!(got[0]["address"], "10.0.0.7");
        sink.shutdown();
    }

    #[test]
    fn the_file_rotates_at_the_size_limit_keeping_the_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FakeHost::default()
            .instantiate::<AlertFile>("max_bytes = 1024\nkeep = 2", dir.path())
            .unwrap();
        for i in 0..60 {
            sink.deliver_alert(&alert(&format!("alert {i:02}")))
                .unwrap();
        }
        let path = dir.path().join("alerts.jsonl");
        for p in [&path, &numbered(&path, 1), &numbered(&path, 2)] {
            let size = std::fs::metadata(p).unwrap().len();
            assert!(size <= 1024, "{} is {size} bytes", p.display());
        }
        assert!(!numbered(&path, 3).exists(), "only `keep` rotated files");
        // The newest alert is in the live file and the files are in age order.
        let live = lines(&path);
        assert_eq!(live.last().unwrap()["message"], "alert 59");
        let older = lines(&numbered(&path, 1));
        assert!(older.last().unwrap()["message"].as_str() < live[0]["message"].as_str());
    }

    #[test]
    fn invalid_settings_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let host = FakeHost::default();
        for (config, needle) in [
            ("max_bytes = 10", "max_bytes"),
            ("keep = 0", "keep"),
            ("colour = 1", "colour"),
        ] {
            let err = host
                .instantiate::<AlertFile>(config, dir.path())
                .err()
                .unwrap();
            assert_eq!(err.kind, ErrorKind::INVALID_CONFIG);
            assert!(err.message.contains(needle), "{err}");
        }
    }

    #[test]
    fn a_write_error_is_a_retryable_failure_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be.
        std::fs::create_dir(dir.path().join("alerts.jsonl")).unwrap();
        let sink = FakeHost::default()
            .instantiate::<AlertFile>("", dir.path())
            .unwrap();
        let err = sink.deliver_alert(&alert("x")).into_result().unwrap_err();
        assert_eq!(err.kind, ErrorKind::FAILED);
        assert!(err.retryable);
        assert!(err.message.contains("alerts.jsonl"), "{err}");
    }
}
