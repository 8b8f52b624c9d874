//! The plugin host's directories: created for vprov alone (mode 0700), and a plugin
//! directory elsewhere checked for other users' write access.

use std::path::Path;

/// Creates `dir` and missing parents, mode 0700 on Unix whatever the umask; the
/// permission bits `dir` has (`None` where there are none).
fn create_0700(dir: &Path) -> std::io::Result<Option<u32>> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700).create(dir)?;
        Ok(Some(std::fs::metadata(dir)?.permissions().mode() & 0o777))
    }
    #[cfg(not(unix))]
    builder.create(dir).map(|()| None)
}

/// Creates `dir` and missing parents for vprov alone (mode 0700). An existing `dir`
/// that other users may use is narrowed to 0700 (logged).
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    if let Some(mode) = create_0700(dir)?.filter(|m| m & 0o077 != 0) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        tracing::warn!(
            "{} was open to other users (mode {mode:03o}); it is 0700 now",
            dir.display()
        );
    }
    #[cfg(not(unix))]
    create_0700(dir)?;
    Ok(())
}

/// Creates a plugin directory outside the data directory (mode 0700), or warns if an
/// existing one is writable by other users; its permissions stay the admin's.
pub(super) fn checked_plugin_dir(dir: &Path) -> std::io::Result<()> {
    if let Some(mode) = create_0700(dir)?.filter(|m| m & 0o022 != 0) {
        tracing::warn!(
            "the plugin directory {} is writable by other users (mode {mode:03o}): they \
             can put code into vprov's process; make it writable by its owner only",
            dir.display()
        );
    }
    Ok(())
}
