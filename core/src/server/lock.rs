//! One server per data directory. `vprov serve` holds an advisory lock (`flock`) on
//! `run/serve.lock` in the data directory for as long as it runs, with its pid written
//! in the file; a second server on the same directory is refused at start, naming the
//! first. The lock is released when the process exits, however it exits.
//!
//! The lock lives on a file of its own, never on `vprov.db`: closing any descriptor of
//! the database would drop SQLite's fcntl locks on it (see the store). One-shot
//! commands take no lock and keep working beside a running server.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The lock file, relative to the data directory.
const LOCK_FILE: &str = "run/serve.lock";

/// Why this server may not use the data directory.
#[derive(Debug, thiserror::Error)]
pub enum ServeLockError {
    #[error(
        "another vprov serve (pid {}) is already running on the data directory {}: one \
         server per data directory; stop that one first, or give this one a data directory \
         of its own (--data-dir)",
        pid.map_or_else(|| "unknown".to_string(), |p| p.to_string()),
        data_dir.display()
    )]
    Held { pid: Option<u32>, data_dir: PathBuf },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The held lock; dropping it (or exiting) releases it.
#[derive(Debug)]
pub struct ServeLock {
    _file: Flock<File>,
}

impl ServeLock {
    /// Takes the data directory's server lock, or says which process holds it.
    pub fn acquire(data_dir: &Path) -> Result<ServeLock, ServeLockError> {
        let path = data_dir.join(LOCK_FILE);
        let io = |source: std::io::Error| ServeLockError::Io {
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir).map_err(io)?;
        }
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&path).map_err(io)?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                // The holder may not have written its pid yet: then it is unknown.
                let _ = file.read_to_string(&mut text);
                return Err(ServeLockError::Held {
                    pid: text.trim().parse().ok(),
                    data_dir: data_dir.to_path_buf(),
                });
            }
            Err((_, errno)) => return Err(io(errno.into())),
        };
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(ServeLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = ServeLock::acquire(dir.path()).unwrap();
        // flock locks belong to the open file, so a second open conflicts even here.
        match ServeLock::acquire(dir.path()) {
            Err(ServeLockError::Held { pid, data_dir }) => {
                assert_eq!(pid, Some(std::process::id()));
                assert_eq!(data_dir, dir.path());
            }
            other => panic!("expected Held, got {other:?}"),
        }
        drop(first);
        let again = ServeLock::acquire(dir.path()).unwrap();
        drop(again);
        let text = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
    }
}
