//! The device store: one SQLite file (`vprov.db`) in the data directory.
//!
//! Owns the connection, the schema ([`schema`]), and every read and write of key
//! batches, provisioning keys, the provisioning password, devices (with their SSH
//! host keys and agent enrollments), provisioning certificate chains ([`pki`]), job claims and turns of several serve nodes ([`claims`]), alerts (aggregated, capped and pruned:
//! [`alerts`]) and the audit log. Every secret is sealed with the [`MasterKey`] before it reaches SQL, so
//! the database file never holds a PPS or a password in plain text.
//!
//! **Single owner.** A [`Store`] owns its `Connection` and is not shared between
//! threads; the CLI opens one per command, and the server gives one to a dedicated
//! thread. Several *processes* may use one store at once: the file runs in WAL mode,
//! every write is an `IMMEDIATE` transaction, and a busy timeout makes a writer wait
//! for another instead of failing.
//!
//! **Nothing is overwritten.** A file that is not SQLite, or is another
//! application's SQLite database, or a store written by a newer vprov, is refused
//! before anything is written to it. A store whose master key is missing or wrong is
//! refused too, and vprov never creates a new key for an existing store.

mod admins;
mod agents;
mod alerts;
mod backoff;
mod changes;
mod claims;
mod copy;
pub mod db;
mod keys;
mod open;
mod pki;
mod provisioning;
mod records;
pub mod schema;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags};
use zeroize::Zeroizing;

use db::{Db, OptionalExtension};

use crate::secrets::{MasterKey, SecretError};
use schema::SchemaState;

pub use admins::{AdminRecord, Credential, CredentialKind, Role};
pub use agents::{HostKeyStatus, SshPublicKey};
pub use alerts::{
    AlertFilter, AlertRecord, AlertRetention, NewAlert, StoredAlert, MAX_FIELD_BYTES,
    MAX_MESSAGE_BYTES,
};
pub use backoff::{JobBackoff, PKI_JOB_PID};
pub use changes::spawn_change_listener;
pub use claims::ClaimOutcome;
pub use copy::{copy_store, CopyReport};
pub use keys::{BatchSummary, KeyCheck, KeyFilter, KeyRecord, KeyState, RevokeOutcome};
pub use open::redact as redact_url;
pub use pki::{check_chain_name, ChainRecord, PkiJobIntent, PkiProvisioning};
pub use provisioning::{JobIntent, JobStep, PidLookup, ProvisionedDevice};
pub use records::{
    AuditRecord, DeviceAccess, DeviceFilter, DeviceRecord, DeviceState, ManagementMode,
    PasswordStatus, Severity,
};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "vprov.db";
/// File name of the default master key file inside the data directory.
pub const KEY_FILE: &str = "master.key";

const KEY_CHECK_CONTEXT: &str = "meta:key_check";
const KEY_CHECK_PLAINTEXT: &[u8] = b"vprov master key check v1";

/// Where the master key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A key file; created (mode 0600) only when the store itself is new.
    File(PathBuf),
    /// 64 hex digits supplied by the operator (e.g. `VPROV_MASTER_KEY`).
    Hex(Zeroizing<String>),
}

/// How to open a store. Its `Debug` shows neither the key nor the URL's password.
#[derive(Clone)]
pub struct StoreOptions {
    pub data_dir: PathBuf,
    /// `None`: the key file `master.key` in the data directory.
    pub key: Option<KeySource>,
    /// How long a writer waits for another process's write transaction.
    pub busy_timeout: Duration,
    /// A PostgreSQL URL (`postgres://…`, `[store] url` or `VPROV_STORE_URL`); `None`:
    /// SQLite, `vprov.db` in the data directory.
    pub url: Option<String>,
}

impl std::fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreOptions")
            .field("data_dir", &self.data_dir)
            .field("key", &self.key.as_ref().map(|_| "(given)"))
            .field("busy_timeout", &self.busy_timeout)
            .field("url", &self.url.as_deref().map(open::redact))
            .finish()
    }
}

impl StoreOptions {
    /// Defaults for `data_dir`: key file in the data dir, 30 s busy timeout.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StoreOptions {
            data_dir: data_dir.into(),
            key: None,
            busy_timeout: Duration::from_secs(30),
            url: None,
        }
    }
}

/// Everything that can go wrong with the store. Messages say what to do and never
/// include secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot use data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a vprov store: it is not an SQLite database (corrupt or foreign file); it was left untouched")]
    NotADatabase { path: PathBuf },
    #[error("{path} is not a vprov store: it is another application's database (application_id {application_id:#x}); it was left untouched")]
    ForeignDatabase { path: PathBuf, application_id: i32 },
    #[error("{path} was written by a newer vprov (schema {found}, this build knows up to {supported}); upgrade vprov")]
    NewerSchema {
        path: PathBuf,
        found: i32,
        supported: i32,
    },
    #[error("the store {db} exists but its master key file {key} is missing: restore it from backup (or pass the key with VPROV_MASTER_KEY); vprov never creates a new key for an existing store")]
    MissingKey { db: PathBuf, key: PathBuf },
    #[error("the master key does not match the store {db}: it was created with a different key; every vprov process on one store (each serve node too) must use the store's key: its master.key file or the same VPROV_MASTER_KEY")]
    WrongKey { db: PathBuf },
    #[error("cannot connect to the PostgreSQL store {url}: {message}")]
    Connect { url: String, message: String },
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("the store is busy: another vprov process held it for longer than the busy timeout")]
    Busy,
    #[error("the store's file system is full; nothing was changed")]
    DiskFull,
    #[error("the store's database file is damaged (SQLite finds it malformed): restore vprov.db from a backup; vprov changed nothing")]
    Damaged,
    #[error("store error: {0}")]
    Db(db::Error),
    #[error("no key batch with id {0}")]
    BatchNotFound(i64),
    #[error("unknown PID {0}")]
    UnknownPid(String),
    #[error("no device with UUID {0}")]
    UnknownDevice(String),
    #[error("no alert with id {0} (see `vprov alerts list`)")]
    UnknownAlert(i64),
    #[error("the store holds an invalid value: {0}")]
    Corrupt(String),
    #[error("{0}")]
    InvalidInput(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode::*;
        match e.sqlite_error_code() {
            Some(DatabaseBusy) | Some(DatabaseLocked) => StoreError::Busy,
            Some(DiskFull) => StoreError::DiskFull,
            Some(DatabaseCorrupt) => StoreError::Damaged,
            _ => StoreError::Db(db::Error::Sqlite(e)),
        }
    }
}

impl From<db::Error> for StoreError {
    fn from(e: db::Error) -> Self {
        match e {
            db::Error::Sqlite(e) => StoreError::from(e),
            // lock_not_available (lock_timeout), serialization/deadlock failures.
            e if e.postgres_busy() => StoreError::Busy,
            e if e.sqlstate() == Some("53100") => StoreError::DiskFull,
            e => StoreError::Db(e),
        }
    }
}

/// The sealing context of a device's admin password (binds the sealed bytes to the
/// device, so they cannot be moved to another row).
fn device_password_context(uuid: &str) -> String {
    format!("device_password:{uuid}")
}

/// Milliseconds since the Unix epoch: the store's time stamps.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// An open store. See the module docs for its guarantees.
pub struct Store {
    conn: Db,
    key: MasterKey,
    db_path: PathBuf,
    /// The PostgreSQL store's URL, to reconnect with ([`Store::reconnect_if_lost`]);
    /// it may hold a password, so it is never printed.
    url: Option<String>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("db_path", &self.db_path)
            .finish()
    }
}

impl Store {
    /// Opens (or, in an empty data directory, creates) the store.
    pub fn open(options: &StoreOptions) -> Result<Store, StoreError> {
        if let Some(url) = &options.url {
            return open::open_postgres(options, url);
        }
        let dir = &options.data_dir;
        let (db_path, existed) = prepare_db_file(dir)?;
        let not_db = |e: rusqlite::Error| open_error(e, &db_path, dir);
        let conn = connect(&db_path, existed, options.busy_timeout).map_err(not_db)?;
        let conn = Db::sqlite(conn, options.busy_timeout);
        let not_db = |e: db::Error| match e {
            db::Error::Sqlite(e) => open_error(e, &db_path, dir),
            e => StoreError::from(e),
        };
        let state = schema::inspect(&conn).map_err(not_db)?;
        check_schema(&state, &db_path)?;
        let is_new = state == SchemaState::Empty;
        let key = resolve_key(options, &db_path, is_new)?;
        let mut store = Store {
            conn,
            key,
            db_path: db_path.clone(),
            url: None,
        };
        // An existing store proves the key before anything is written to it (a
        // migration, even the journal mode); a new one records its check value below.
        if !is_new {
            store.verify_key()?;
        }
        store.configure(dir)?;
        if is_new {
            store.verify_key()?;
        }
        Ok(store)
    }

    /// Sets the connection's journal, durability and integrity modes, then migrates
    /// the schema (`dir` names the data directory in errors).
    fn configure(&mut self, dir: &Path) -> Result<(), StoreError> {
        let db_path = self.db_path.clone();
        let not_db = |e: rusqlite::Error| open_error(e, &db_path, dir);
        if let Some(conn) = self.conn.as_sqlite() {
            // WAL: readers never block the writer, and two processes can share the file.
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |_| Ok(()))
                .map_err(not_db)?;
            // FULL: a committed transaction survives power loss (no lost provisioning).
            conn.pragma_update(None, "synchronous", "FULL")?;
            // Enforce the REFERENCES clauses of the schema.
            conn.pragma_update(None, "foreign_keys", true)?;
            // Statement journals (one per multi-row INSERT) and temporary indexes stay
            // in memory: they are small, and a temporary file costs a write per page.
            conn.pragma_update(None, "temp_store", "MEMORY")?;
        }
        schema::migrate(&mut self.conn)
            .map(drop)
            .map_err(|e| match e {
                db::Error::Sqlite(e) => not_db(e),
                e => StoreError::from(e),
            })
    }

    /// Opens the store if its data directory holds one; `None` (and nothing created)
    /// otherwise. For commands that only consult a store when there is one.
    pub fn open_existing(options: &StoreOptions) -> Result<Option<Store>, StoreError> {
        if options.url.is_some() {
            return Store::open(options).map(Some);
        }
        if !database_exists(&options.data_dir.join(DB_FILE))? {
            return Ok(None);
        }
        Store::open(options).map(Some)
    }

    /// Path of the database file (PostgreSQL: its URL, password redacted).
    pub fn db_path(&self) -> &Path {
        &self.db_path
    }

    /// Proves the master key is the one this store was created with, recording a
    /// check value on first use.
    fn verify_key(&self) -> Result<(), StoreError> {
        let existing: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT value FROM meta WHERE name = 'key_check'", [], |r| {
                r.get(0)
            })
            .optional()?;
        let check = match existing {
            Some(check) => check,
            None => {
                let sealed = self.key.seal(KEY_CHECK_CONTEXT, KEY_CHECK_PLAINTEXT);
                self.conn.execute(
                    "INSERT INTO meta (name, value) VALUES ('key_check', ?1)
                     ON CONFLICT (name) DO NOTHING",
                    [&sealed],
                )?;
                self.conn
                    .query_row("SELECT value FROM meta WHERE name = 'key_check'", [], |r| {
                        r.get(0)
                    })?
            }
        };
        match self.key.open(KEY_CHECK_CONTEXT, &check) {
            Ok(p) if p.as_slice() == KEY_CHECK_PLAINTEXT => Ok(()),
            _ => Err(StoreError::WrongKey {
                db: self.db_path.clone(),
            }),
        }
    }

    /// Starts a write transaction (waiting for other writers up to the busy timeout).
    fn write_tx(&mut self) -> Result<db::Transaction<'_>, StoreError> {
        Ok(self.conn.transaction()?)
    }
}

/// Creates the data directory (mode 0700 on Unix) and any missing parents.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Creates an empty file with mode 0600 unless it exists already. An existing file is
/// never opened (see [`database_exists`] for why).
fn create_private_file(path: &Path) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// `Ok(true)` if `path` exists with content, `Ok(false)` if it is missing or empty.
///
/// Only `stat` is used: the file is never opened outside SQLite. POSIX drops every
/// fcntl lock a process holds on a file when *any* descriptor of it is closed, so a
/// second `Store::open` inside a process that already has a connection (the server's
/// store thread) would silently strip that connection's SQLite locks, and another
/// process could then checkpoint and delete the WAL under it. SQLite itself checks the
/// 16-byte magic of a non-empty file (`SQLITE_NOTADB`), which [`Store::open`] reports as
/// [`StoreError::NotADatabase`] before anything is written.
fn database_exists(path: &Path) -> Result<bool, StoreError> {
    match fs::metadata(path) {
        Ok(meta) => Ok(meta.len() > 0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(StoreError::DataDir {
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub(super) fn resolve_key(
    options: &StoreOptions,
    db: &Path,
    is_new: bool,
) -> Result<MasterKey, StoreError> {
    let path = match &options.key {
        Some(KeySource::Hex(hex)) => return Ok(MasterKey::from_hex(hex, "VPROV_MASTER_KEY")?),
        Some(KeySource::File(path)) => path.clone(),
        None => options.data_dir.join(KEY_FILE),
    };
    match MasterKey::load_file(&path) {
        Ok(key) => Ok(key),
        Err(SecretError::KeyFileMissing { .. }) if is_new => match MasterKey::create_file(&path) {
            Ok(key) => {
                tracing::info!(path = %path.display(), "created a new master key file; back it up");
                Ok(key)
            }
            // Another process created it a moment ago: use that one.
            Err(SecretError::KeyFileCreate { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Ok(MasterKey::load_file(&path)?)
            }
            Err(e) => Err(e.into()),
        },
        Err(SecretError::KeyFileMissing { .. }) => Err(StoreError::MissingKey {
            db: db.to_path_buf(),
            key: path,
        }),
        Err(e) => Err(e.into()),
    }
}

/// Creates the data directory if needed and, in a new store, the database file with
/// mode 0600; returns the database's path and whether it existed.
fn prepare_db_file(dir: &Path) -> Result<(PathBuf, bool), StoreError> {
    create_private_dir(dir).map_err(|source| StoreError::DataDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let db_path = dir.join(DB_FILE);
    let existed = database_exists(&db_path)?;
    if !existed {
        // Created here with mode 0600 so that SQLite (which gives its -wal and
        // -shm files the database's mode) never makes the store world-readable.
        create_private_file(&db_path).map_err(|source| StoreError::DataDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    Ok((db_path, existed))
}

/// Opens the database file (creating it only if it did not exist) with a busy
/// timeout.
fn connect(
    db_path: &Path,
    existed: bool,
    busy_timeout: Duration,
) -> Result<Connection, rusqlite::Error> {
    let flags = if existed {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE
    } | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(db_path, flags)?;
    // Wait for other writers rather than failing at once (two CLI processes).
    conn.busy_timeout(busy_timeout)?;
    Ok(conn)
}

/// An SQLite error while opening the store: a file that is not a database, one that
/// cannot be written, or another error.
fn open_error(e: rusqlite::Error, db_path: &Path, dir: &Path) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) | Some(rusqlite::ErrorCode::DatabaseCorrupt) => {
            StoreError::NotADatabase {
                path: db_path.to_path_buf(),
            }
        }
        Some(rusqlite::ErrorCode::CannotOpen) | Some(rusqlite::ErrorCode::ReadOnly) => {
            StoreError::DataDir {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("cannot open {} for writing", db_path.display()),
                ),
            }
        }
        _ => StoreError::from(e),
    }
}

/// Refuses another application's database and a store written by a newer vprov.
pub(super) fn check_schema(state: &SchemaState, db_path: &Path) -> Result<(), StoreError> {
    match *state {
        SchemaState::Foreign { application_id } => Err(StoreError::ForeignDatabase {
            path: db_path.to_path_buf(),
            application_id,
        }),
        SchemaState::Vprov { version } if version > schema::SCHEMA_VERSION => {
            Err(StoreError::NewerSchema {
                path: db_path.to_path_buf(),
                found: version,
                supported: schema::SCHEMA_VERSION,
            })
        }
        _ => Ok(()),
    }
}

#[cfg(any(test, feature = "test-support"))]
pub mod test_database;
#[cfg(test)]
mod testdb;
#[cfg(test)]
mod tests;
