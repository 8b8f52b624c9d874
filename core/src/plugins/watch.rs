//! Hot reload: watches the plugin directory and the instance configuration file with
//! notify and reloads the host after a change settles. Directories are watched rather
//! than files, so a configuration replaced by rename (as editors save) is still seen.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use super::PluginHost;

/// How long the files must be quiet before a reload (a copy in progress, an editor's
/// save-by-rename).
const SETTLE: Duration = Duration::from_millis(400);

/// Watches until `stop`; the returned watcher must be kept alive meanwhile.
pub fn start(
    host: PluginHost,
    mut stop: watch::Receiver<bool>,
) -> Result<(notify::RecommendedWatcher, tokio::task::JoinHandle<()>), notify::Error> {
    // Canonical paths, so the paths in events compare equal to them.
    let plugin_dir = host.settings().plugin_dir.canonicalize()?;
    let config_path = &host.settings().config_path;
    let config_dir = parent_dir(config_path).canonicalize()?;
    let config = config_dir.join(config_path.file_name().unwrap_or_default());
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let relevant = {
        let plugin_dir = plugin_dir.clone();
        let config = config.clone();
        move |path: &Path| path == config || path.parent() == Some(plugin_dir.as_path())
    };
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else {
            // A lost event queue: reload to be safe.
            let _ = tx.try_send(());
            return;
        };
        if event.kind.is_access() {
            return;
        }
        if event.paths.iter().any(|p| relevant(p)) {
            // Capacity 1: a burst of events becomes one pending reload.
            let _ = tx.try_send(());
        }
    })?;
    watcher.watch(&plugin_dir, RecursiveMode::NonRecursive)?;
    if config_dir != plugin_dir {
        watcher.watch(&config_dir, RecursiveMode::NonRecursive)?;
    }
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                got = rx.recv() => if got.is_none() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
            // Let the burst settle: keep waiting while events keep coming.
            loop {
                tokio::time::sleep(SETTLE).await;
                if rx.try_recv().is_err() {
                    break;
                }
            }
            tracing::info!("plugin directory or configuration changed: reloading plugins");
            host.reload().await;
        }
    });
    Ok((watcher, task))
}

fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
