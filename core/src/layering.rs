//! The layering of the crate's modules, checked against the source: every top-level
//! module sits on one layer and may name (`crate::…`) only modules on lower layers,
//! so the module graph has no cycles and reads bottom-up:
//! foundations → pki chains → store → store thread, views → alerts → {plugins, management} →
//! {server, api} → app → the command line. `ARCHITECTURE.md` states the same rules.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module of `core/src` and its layer; a module may use modules on
/// lower layers only (never its own layer: `server` and `api` do not know each
/// other, nor do `plugins` and `management`).
const LAYERS: &[(&str, u8)] = &[
    // Foundations: formats, secrets, text; no store.
    ("text", 0),
    ("keys", 0),
    ("password", 0),
    ("secrets", 0),
    ("hello", 0),
    ("accounts", 0),
    // The process's metrics registry: every layer records into it.
    ("metrics", 0),
    // Provisioning certificate chains (PKI): formats only, no store.
    ("pki", 1),
    // The store and the host-name rule (on the hello's UUID); then what needs them
    // or only the wire: the CA (kept in the store), the configuration (alert
    // retention is a store type), the device connector.
    ("store", 2),
    ("host_name", 2),
    ("ca", 3),
    ("config", 3),
    ("device", 3),
    ("store_thread", 4),
    ("views", 4),
    ("alerts", 5),
    ("plugins", 6),
    ("management", 6),
    ("server", 7),
    ("api", 7),
    ("app", 8),
    // Entry points of the fuzz targets (feature `fuzzing`), and this check.
    ("fuzzing", 9),
    ("layering", 9),
];

/// Library modules the command line (`main.rs`, `cli/`) may not use: it runs the
/// server through `app` and never reaches into its parts.
const NOT_FOR_THE_CLI: &[&str] = &["server", "api", "fuzzing", "layering"];

/// The top-level modules `text` names as `crate::…` paths (comments skipped; a
/// `crate::{a, b}` group names each of its members).
fn crate_paths(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let preceded = rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            rest = &rest[at + "crate::".len()..];
            if preceded {
                continue; // `vprov_crate::…` and the like
            }
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                found.extend(group[..end].split(',').filter_map(|item| head(item.trim())));
            } else if let Some(name) = head(rest) {
                found.push(name);
            }
        }
    }
    found
}

/// The leading identifier of a path.
fn head(path: &str) -> Option<String> {
    let name: String = path
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The Rust files under `path` (itself, if it is one).
fn rust_files(path: &Path) -> Vec<PathBuf> {
    if path.is_file() {
        return vec![path.to_path_buf()];
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            files.extend(rust_files(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            files.push(p);
        }
    }
    files
}

/// Where `src` breaks the layering: one line per offending use.
fn violations(src: &Path) -> Vec<String> {
    let layer: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut found = Vec::new();
    for (module, own) in LAYERS {
        let path = [src.join(format!("{module}.rs")), src.join(module)]
            .into_iter()
            .find(|p| p.exists());
        for file in path.iter().flat_map(|p| rust_files(p)) {
            let text = std::fs::read_to_string(&file).expect("reading a source file");
            for used in crate_paths(&text) {
                match layer.get(used.as_str()) {
                    Some(l) if l < own || used == *module => {}
                    Some(_) => found.push(format!("{} uses crate::{used}", file.display())),
                    None => {}
                }
            }
        }
    }
    found
}

/// Where the command line uses library modules it may not.
fn cli_violations(src: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for file in rust_files(&src.join("cli"))
        .into_iter()
        .chain([src.join("main.rs")])
    {
        let text = std::fs::read_to_string(&file).expect("reading a source file");
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for module in NOT_FOR_THE_CLI {
                if line.contains(&format!("vprov_core::{module}::"))
                    || line.contains(&format!("vprov_core::{module};"))
                {
                    found.push(format!("{} uses vprov_core::{module}", file.display()));
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
    }

    #[test]
    fn every_module_uses_only_lower_layers() {
        let found = violations(&src());
        assert!(found.is_empty(), "layering broken:\n{}", found.join("\n"));
    }

    #[test]
    fn the_command_line_runs_the_server_through_app() {
        let found = cli_violations(&src());
        assert!(found.is_empty(), "layering broken:\n{}", found.join("\n"));
    }

    /// Every top-level module of the crate has a layer (a new one must be placed).
    #[test]
    fn every_module_has_a_layer() {
        let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
        for line in lib.lines() {
            let line = line.trim();
            let Some(name) = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("mod "))
            else {
                continue;
            };
            let name = name.trim_end_matches(';');
            assert!(
                LAYERS.iter().any(|(m, _)| *m == name),
                "module {name} has no layer in layering.rs"
            );
        }
    }

    #[test]
    fn finds_paths_groups_and_skips_comments() {
        let text = "use crate::store::Store;\n\
                    // crate::api in a comment\n\
                    let x = crate::alerts::sdk_severity(s);\n\
                    use crate::{keys::Pid, text};\n\
                    use vprov_crate::x;\n";
        assert_eq!(crate_paths(text), ["store", "alerts", "keys", "text"]);
    }

    /// A use of a higher layer is reported (the check can fail).
    #[test]
    fn an_upward_use_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("store.rs"),
            "use crate::alerts::AlertLog;\n",
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("server")).unwrap();
        std::fs::write(
            dir.path().join("server").join("jobs.rs"),
            "use crate::api::ApiState;\nuse crate::store::Store;\n",
        )
        .unwrap();
        let found = violations(dir.path());
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].ends_with("store.rs uses crate::alerts"),
            "{found:?}"
        );
        assert!(found[1].ends_with("jobs.rs uses crate::api"), "{found:?}");
    }

    #[test]
    fn the_cli_may_not_reach_into_the_server() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("cli")).unwrap();
        std::fs::write(
            dir.path().join("cli").join("serve.rs"),
            "use vprov_core::server::jobs::JobSettings;\nuse vprov_core::app::App;\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("main.rs"), "mod cli;\n").unwrap();
        let found = cli_violations(dir.path());
        assert_eq!(found.len(), 1, "{found:?}");
    }
}
