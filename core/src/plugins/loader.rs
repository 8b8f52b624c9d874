//! Finds plugin libraries in the plugin directory and loads them with explicit paths.
//!
//! Each library is first copied to `run/plugins/<stem>-<content hash>.<ext>` in the
//! data directory and loaded from there: the dynamic loader returns the cached handle
//! for a path it already opened, and overwriting a mapped library crashes the process,
//! so a replaced file must become a new path. Loaded libraries are never unloaded
//! (abi_stable leaks them on purpose): each replacement keeps the old copy mapped
//! until the process exits (under 1 MiB of code and data for the bundled plugins in a
//! release build); restart to reclaim. The server deletes stale copies at start.
//!
//! Load checks, in order: abi_stable's own ABI header, the SDK version the library was
//! built against (for 0.y.z the minor must match), the root module's type layout, then
//! the manifest (a name, at least one known kind).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use abi_stable::library::{lib_header_from_path, LibraryError};
use vprov_sdk::abi::{PluginModule_Ref, SDK_VERSION};
use vprov_sdk::PluginKinds;

/// A library that loaded and passed every check.
pub struct LoadedLibrary {
    /// The file in the plugin directory.
    pub file: PathBuf,
    /// Hex SHA-256 prefix of the file's content (names the loaded copy).
    pub hash: String,
    pub manifest: Manifest,
    pub(super) module: PluginModule_Ref,
}

/// A plugin's manifest, in core types.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub description: String,
    pub kinds: Vec<String>,
    #[serde(skip)]
    pub kind_bits: PluginKinds,
    pub sdk_version: String,
}

/// One file of the plugin directory and what became of it.
#[derive(Clone)]
pub enum LibraryStatus {
    Loaded(Arc<LoadedLibrary>),
    Failed { file: PathBuf, reason: String },
}

impl LibraryStatus {
    pub fn file(&self) -> &Path {
        match self {
            LibraryStatus::Loaded(l) => &l.file,
            LibraryStatus::Failed { file, .. } => file,
        }
    }
}

/// Loads libraries, remembering each by content so an unchanged file is not loaded
/// (or copied) twice.
pub struct Loader {
    dir: PathBuf,
    run_dir: PathBuf,
    by_hash: HashMap<String, Result<Arc<LoadedLibrary>, String>>,
}

impl Loader {
    pub fn new(dir: PathBuf, run_dir: PathBuf) -> Loader {
        Loader {
            dir,
            run_dir,
            by_hash: HashMap::new(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Loads every library in the directory, sorted by file name. A missing
    /// directory is an empty one. When two libraries provide the same plugin name
    /// the first (by file name) wins and the other is reported as failed.
    pub fn scan(&mut self) -> Vec<LibraryStatus> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().and_then(|e| e.to_str()) == Some(std::env::consts::DLL_EXTENSION)
                        && p.is_file()
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        files.sort();
        let mut seen: HashMap<String, PathBuf> = HashMap::new();
        files
            .into_iter()
            .map(|file| match self.load(&file) {
                Ok(lib) => match seen.get(&lib.manifest.name) {
                    Some(first) => LibraryStatus::Failed {
                        reason: format!(
                            "plugin {} is already provided by {}",
                            lib.manifest.name,
                            first.display()
                        ),
                        file,
                    },
                    None => {
                        seen.insert(lib.manifest.name.clone(), file.clone());
                        // The cached entry may name the file under an earlier path.
                        LibraryStatus::Loaded(Arc::new(LoadedLibrary {
                            file,
                            hash: lib.hash.clone(),
                            manifest: lib.manifest.clone(),
                            module: lib.module,
                        }))
                    }
                },
                Err(reason) => LibraryStatus::Failed { file, reason },
            })
            .collect()
    }

    fn load(&mut self, file: &Path) -> Result<Arc<LoadedLibrary>, String> {
        let bytes = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
        let hash = hex::encode(&openssl::sha::sha256(&bytes)[..8]);
        if let Some(done) = self.by_hash.get(&hash) {
            return done.clone();
        }
        // A failed copy (disk full, say) is not remembered: the next scan retries.
        let copy = self.copy(file, &bytes, &hash)?;
        let result = load_copy(file, &copy, &hash).map(Arc::new);
        self.by_hash.insert(hash, result.clone());
        result
    }

    /// Copies the library to its content-named path (atomically: a reader never sees
    /// a partial copy), unless that copy exists already.
    fn copy(&self, file: &Path, bytes: &[u8], hash: &str) -> Result<PathBuf, String> {
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("plugin");
        let name = format!("{stem}-{hash}.{}", std::env::consts::DLL_EXTENSION);
        let copy = self.run_dir.join(name);
        if copy.exists() {
            return Ok(copy);
        }
        let fail = |e: std::io::Error| {
            format!(
                "cannot copy it to {} for loading: {e}",
                self.run_dir.display()
            )
        };
        super::private_dir(&self.run_dir).map_err(fail)?;
        let tmp = self
            .run_dir
            .join(format!(".{stem}-{hash}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(fail)?;
        std::fs::rename(&tmp, &copy).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail(e)
        })?;
        Ok(copy)
    }
}

/// Loads the copy and checks it (ABI header, SDK version, layout, manifest).
fn load_copy(file: &Path, copy: &Path, hash: &str) -> Result<LoadedLibrary, String> {
    let header = lib_header_from_path(copy).map_err(describe)?;
    let module = header
        .init_root_module::<PluginModule_Ref>()
        .map_err(describe)?;
    let m = (module.manifest())();
    let manifest = Manifest {
        name: m.name.into_string(),
        version: m.version.into_string(),
        description: m.description.into_string(),
        kinds: m.kinds.names(),
        kind_bits: m.kinds,
        sdk_version: m.sdk_version.into_string(),
    };
    check_manifest(&manifest)?;
    Ok(LoadedLibrary {
        file: file.to_path_buf(),
        hash: hash.to_string(),
        manifest,
        module,
    })
}

/// A load error in words an admin can act on.
fn describe(e: LibraryError) -> String {
    match e {
        LibraryError::OpenError { err, .. } => format!("not a loadable library: {err}"),
        LibraryError::GetSymbolError { .. } => {
            "not a vprov plugin: it exports no abi_stable root module".into()
        }
        LibraryError::IncompatibleVersionNumber {
            library_name,
            expected_version,
            actual_version,
        } => format!(
            "built against an incompatible SDK: {library_name} {actual_version}, this core \
             speaks {expected_version} (rebuild the plugin against vprov-sdk {SDK_VERSION})"
        ),
        LibraryError::InvalidAbiHeader(h) => format!(
            "built with an incompatible abi_stable ({}.{}; rebuild against vprov-sdk {SDK_VERSION})",
            h.abi_major, h.abi_minor
        ),
        LibraryError::AbiInstability(_) => format!(
            "its plugin interface does not match this core's (built against a different \
             vprov-sdk; rebuild it against vprov-sdk {SDK_VERSION})"
        ),
        other => format!("refused by the ABI check: {other}"),
    }
}

fn check_manifest(m: &Manifest) -> Result<(), String> {
    let ok_name = !m.name.is_empty()
        && m.name.len() <= 64
        && m.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok_name {
        return Err(format!("invalid plugin name {:?} in its manifest", m.name));
    }
    let known = PluginKinds::KEY_EXPORTER
        .union(PluginKinds::ALERT_SINK)
        .union(PluginKinds::POST_PROVISION);
    if m.kind_bits.0 & known.0 == 0 {
        return Err(format!(
            "plugin {} provides no kind this core knows ({:?})",
            m.name, m.kind_bits
        ));
    }
    let major_minor = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
    if major_minor(&m.sdk_version) != major_minor(SDK_VERSION) {
        return Err(format!(
            "plugin {} was built against vprov-sdk {}, this core speaks {SDK_VERSION}",
            m.name, m.sdk_version
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(name: &str, kinds: PluginKinds, sdk: &str) -> Manifest {
        Manifest {
            name: name.into(),
            version: "1.0.0".into(),
            description: String::new(),
            kinds: kinds.names(),
            kind_bits: kinds,
            sdk_version: sdk.into(),
        }
    }

    #[test]
    fn manifests_are_checked() {
        assert!(check_manifest(&manifest(
            "alert-file",
            PluginKinds::ALERT_SINK,
            SDK_VERSION
        ))
        .is_ok());
        let err =
            check_manifest(&manifest("../x", PluginKinds::ALERT_SINK, SDK_VERSION)).unwrap_err();
        assert!(err.contains("invalid plugin name"), "{err}");
        let err = check_manifest(&manifest("x", PluginKinds(1 << 9), SDK_VERSION)).unwrap_err();
        assert!(err.contains("no kind"), "{err}");
        let err = check_manifest(&manifest("x", PluginKinds::ALERT_SINK, "9.9.0")).unwrap_err();
        assert!(err.contains("9.9.0"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_library_fails_with_a_reason_and_a_missing_dir_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path().join("plugins");
        let mut loader = Loader::new(plugins.clone(), dir.path().join("run"));
        assert!(loader.scan().is_empty());
        std::fs::create_dir(&plugins).unwrap();
        let bogus = plugins.join(format!("bogus.{}", std::env::consts::DLL_EXTENSION));
        std::fs::write(&bogus, b"not an ELF file").unwrap();
        std::fs::write(plugins.join("README.txt"), b"ignored").unwrap();
        let scanned = loader.scan();
        assert_eq!(scanned.len(), 1);
        match &scanned[0] {
            LibraryStatus::Failed { file, reason } => {
                assert_eq!(file, &bogus);
                assert!(reason.contains("not a loadable library"), "{reason}");
            }
            LibraryStatus::Loaded(_) => panic!("loaded a text file"),
        }
    }
}
