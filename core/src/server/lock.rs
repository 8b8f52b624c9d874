//! Who may serve on a data directory. A server without a node name is the only one:
//! it holds an exclusive advisory lock (`flock`) on `run/serve.lock` in the data
//! directory for as long as it runs, with its pid written in the file. Named nodes
//! (`--node NAME`, `[cluster] node`) may share a data directory (several nodes on one
//! store): each holds that lock shared, so no unnamed server starts beside them,
//! and an exclusive lock on `run/serve-NAME.lock` with its pid, so no two servers
//! run under one name (their claims in the store would be one node's). A refused
//! server is told which process holds the lock. Locks are released when the process
//! exits, however it exits.
//!
//! The locks live on files of their own, never on `vprov.db`: closing any descriptor
//! of the database would drop SQLite's fcntl locks on it (see the store). One-shot
//! commands take no lock and keep working beside running servers.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file of the data directory, relative to it.
const LOCK_FILE: &str = "run/serve.lock";

/// Why this server may not use the data directory.
#[derive(Debug, thiserror::Error)]
pub enum ServeLockError {
    #[error(
        "another vprov serve (pid {}) is already running on the data directory {}: one \
         server per data directory unless every server on it is a named node (--node NAME); \
         stop that one first, or give this one a data directory of its own (--data-dir)",
        pid.map_or_else(|| "unknown".to_string(), |p| p.to_string()),
        data_dir.display()
    )]
    Held { pid: Option<u32>, data_dir: PathBuf },
    #[error(
        "the data directory {} is served by named nodes (--node NAME): a server beside them \
         must be a named node too, with a name of its own",
        data_dir.display()
    )]
    NodesRunning { data_dir: PathBuf },
    #[error(
        "a vprov serve named {node:?} (pid {}) is already running on the data directory {}: \
         give this node another name (--node NAME)",
        pid.map_or_else(|| "unknown".to_string(), |p| p.to_string()),
        data_dir.display()
    )]
    NodeHeld {
        node: String,
        pid: Option<u32>,
        data_dir: PathBuf,
    },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The held locks; dropping them (or exiting) releases them.
#[derive(Debug)]
pub struct ServeLock {
    _dir: Flock<File>,
    _node: Option<Flock<File>>,
}

/// A lock file opened (created, mode 0600, in a 0700 directory) but not locked.
fn open_lock_file(path: &Path) -> Result<File, std::io::Error> {
    if let Some(dir) = path.parent() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(dir)?;
    }
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

/// Locks `path` (`arg`), or returns the pid written in it by its holder: `Err(None)`
/// when the holder wrote none (yet).
fn lock(path: &Path, arg: FlockArg) -> Result<Result<Flock<File>, Option<u32>>, ServeLockError> {
    let io = |source: std::io::Error| ServeLockError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = open_lock_file(path).map_err(io)?;
    match Flock::lock(file, arg) {
        Ok(locked) => Ok(Ok(locked)),
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            Ok(Err(text.trim().parse().ok()))
        }
        Err((_, errno)) => Err(io(errno.into())),
    }
}

/// Writes this process's pid into a lock file it holds exclusively.
fn write_pid(file: &mut Flock<File>, path: &Path) -> Result<(), ServeLockError> {
    let io = |source: std::io::Error| ServeLockError::Io {
        path: path.to_path_buf(),
        source,
    };
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)
}

impl ServeLock {
    /// Takes the data directory's server lock — exclusive without a node name,
    /// shared plus the name's own with one — or says who holds it. `node` must be a
    /// checked name (`config::check_node_name`).
    pub fn acquire(data_dir: &Path, node: Option<&str>) -> Result<ServeLock, ServeLockError> {
        let path = data_dir.join(LOCK_FILE);
        let Some(node) = node else {
            let mut file = match lock(&path, FlockArg::LockExclusiveNonblock)? {
                Ok(file) => file,
                // Named nodes hold it shared and leave it empty.
                Err(None) => {
                    return Err(ServeLockError::NodesRunning {
                        data_dir: data_dir.to_path_buf(),
                    })
                }
                Err(pid) => {
                    return Err(ServeLockError::Held {
                        pid,
                        data_dir: data_dir.to_path_buf(),
                    })
                }
            };
            write_pid(&mut file, &path)?;
            return Ok(ServeLock {
                _dir: file,
                _node: None,
            });
        };
        let shared = match lock(&path, FlockArg::LockSharedNonblock)? {
            Ok(file) => file,
            Err(pid) => {
                return Err(ServeLockError::Held {
                    pid,
                    data_dir: data_dir.to_path_buf(),
                })
            }
        };
        // No pid of an earlier unnamed server may stay in it to mislead.
        shared.set_len(0).map_err(|source| ServeLockError::Io {
            path: path.clone(),
            source,
        })?;
        let node_path = data_dir.join(format!("run/serve-{node}.lock"));
        let mut own = match lock(&node_path, FlockArg::LockExclusiveNonblock)? {
            Ok(file) => file,
            Err(pid) => {
                return Err(ServeLockError::NodeHeld {
                    node: node.to_string(),
                    pid,
                    data_dir: data_dir.to_path_buf(),
                })
            }
        };
        write_pid(&mut own, &node_path)?;
        Ok(ServeLock {
            _dir: shared,
            _node: Some(own),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = ServeLock::acquire(dir.path(), None).unwrap();
        // flock locks belong to the open file, so a second open conflicts even here.
        match ServeLock::acquire(dir.path(), None) {
            Err(ServeLockError::Held { pid, data_dir }) => {
                assert_eq!(pid, Some(std::process::id()));
                assert_eq!(data_dir, dir.path());
            }
            other => panic!("expected Held, got {other:?}"),
        }
        // Nor may a named node start beside an unnamed server.
        assert!(matches!(
            ServeLock::acquire(dir.path(), Some("a")),
            Err(ServeLockError::Held { .. })
        ));
        drop(first);
        let again = ServeLock::acquire(dir.path(), None).unwrap();
        drop(again);
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
    }

    #[test]
    fn named_nodes_share_a_directory_one_server_per_name() {
        let dir = tempfile::tempdir().unwrap();
        // An earlier unnamed server's pid is no longer in the file.
        drop(ServeLock::acquire(dir.path(), None).unwrap());
        let a = ServeLock::acquire(dir.path(), Some("a")).unwrap();
        let b = ServeLock::acquire(dir.path(), Some("b")).unwrap();
        match ServeLock::acquire(dir.path(), Some("a")) {
            Err(ServeLockError::NodeHeld { node, pid, .. }) => {
                assert_eq!(node, "a");
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected NodeHeld, got {other:?}"),
        }
        // An unnamed server is refused while nodes run, and told why.
        let err = ServeLock::acquire(dir.path(), None).unwrap_err();
        assert!(matches!(err, ServeLockError::NodesRunning { .. }), "{err}");
        drop((a, b));
        ServeLock::acquire(dir.path(), None).unwrap();
    }
}
