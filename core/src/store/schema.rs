//! The store's schema as an append-only list of migrations, one list per engine with
//! the same numbers (a migration appended to one is appended to the other).
//!
//! **Never edit or reorder a migration that has shipped; append a new one.** The
//! number of applied migrations is kept in `PRAGMA user_version` (SQLite) or the
//! table `vprov_schema` (PostgreSQL), and every store carries vprov's application id
//! (`PRAGMA application_id`, or beside the version) so that a foreign database is
//! refused instead of being written to.

use super::db::{Db, OptionalExtension, Result};

/// `PRAGMA application_id` of a vprov store: ASCII "vprv".
pub const APPLICATION_ID: i32 = 0x7670_7276;

/// Migration `i` moves a store from `user_version = i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: keys, password, devices, alerts, audit log.
    r#"
    CREATE TABLE meta (
        name  TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) STRICT;

    CREATE TABLE secrets (
        name       TEXT PRIMARY KEY,
        sealed     BLOB NOT NULL,
        changed_at INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE key_batches (
        id         INTEGER PRIMARY KEY,
        created_at INTEGER NOT NULL,
        comment    TEXT,
        size       INTEGER NOT NULL CHECK (size > 0)
    ) STRICT;

    CREATE TABLE provisioning_keys (
        seq              INTEGER PRIMARY KEY,
        pid              TEXT NOT NULL UNIQUE CHECK (length(pid) = 8),
        batch_id         INTEGER NOT NULL REFERENCES key_batches(id),
        pps_sealed       BLOB NOT NULL,
        state            TEXT NOT NULL DEFAULT 'available'
                         CHECK (state IN ('available', 'used', 'revoked')),
        device_uuid      TEXT,
        state_changed_at INTEGER NOT NULL,
        CHECK ((state = 'used') = (device_uuid IS NOT NULL))
    ) STRICT;
    CREATE INDEX provisioning_keys_by_batch ON provisioning_keys (batch_id, seq);

    CREATE TRIGGER provisioning_keys_never_deleted
    BEFORE DELETE ON provisioning_keys
    BEGIN
        SELECT RAISE(ABORT, 'provisioning keys are never deleted: a PID is never reissued');
    END;

    CREATE TRIGGER provisioning_keys_immutable
    BEFORE UPDATE OF seq, pid, batch_id, pps_sealed ON provisioning_keys
    BEGIN
        SELECT RAISE(ABORT, 'a provisioning key''s PID, PPS and batch never change');
    END;

    CREATE TRIGGER provisioning_keys_state_moves_forward
    BEFORE UPDATE OF state ON provisioning_keys
    WHEN OLD.state <> 'available' AND NEW.state <> OLD.state
    BEGIN
        SELECT RAISE(ABORT, 'a used or revoked provisioning key never changes state again');
    END;

    CREATE TABLE devices (
        uuid                  TEXT PRIMARY KEY,
        host_name             TEXT,
        address               TEXT,
        amt_version           TEXT,
        state                 TEXT NOT NULL DEFAULT 'unmanaged'
                              CHECK (state IN ('unmanaged', 'managed')),
        management_mode       TEXT CHECK (management_mode IN ('agentless', 'agent')),
        admin_user            TEXT,
        admin_password_sealed BLOB,
        certificate_der       BLOB,
        provisioned_pid       TEXT REFERENCES provisioning_keys (pid),
        provisioned_at        INTEGER NOT NULL,
        last_contact_at       INTEGER,
        CHECK ((state = 'managed') = (management_mode IS NOT NULL))
    ) STRICT;

    CREATE TABLE alerts (
        id          INTEGER PRIMARY KEY,
        at          INTEGER NOT NULL,
        severity    TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'error', 'critical')),
        source      TEXT NOT NULL,
        message     TEXT NOT NULL,
        pid         TEXT,
        device_uuid TEXT,
        address     TEXT
    ) STRICT;

    CREATE TABLE audit_log (
        id     INTEGER PRIMARY KEY,
        at     INTEGER NOT NULL,
        actor  TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    ) STRICT;
    "#,
    // 2: provisioning jobs in flight (crash-safe intent records).
    r#"
    CREATE TABLE provisioning_jobs (
        id                    INTEGER PRIMARY KEY,
        pid                   TEXT NOT NULL UNIQUE REFERENCES provisioning_keys (pid),
        device_uuid           TEXT NOT NULL,
        address               TEXT NOT NULL,
        new_password_sealed   BLOB NOT NULL,
        certificate_der       BLOB,
        step                  TEXT NOT NULL,
        created_at            INTEGER NOT NULL,
        updated_at            INTEGER NOT NULL
    ) STRICT;
    "#,
    // 3: the last inventory read from each device (JSON) and when; a new admin
    // credential being sent to the device (sealed), kept beside the old one until the
    // device accepts it; whether the last reachability check reached it.
    r#"
    ALTER TABLE devices ADD COLUMN inventory TEXT;
    ALTER TABLE devices ADD COLUMN inventory_at INTEGER;
    ALTER TABLE devices ADD COLUMN pending_password_sealed BLOB;
    ALTER TABLE devices ADD COLUMN reachable INTEGER;
    "#,
    // 4: agent management: the profile a device's agent was deployed under; each
    // device's SSH host key, recorded on first use and replaced only by an admin; the
    // hash of the device's latest agent enrollment token (never the token).
    r#"
    ALTER TABLE devices ADD COLUMN agent_profile TEXT;
    CREATE TABLE device_host_keys (
        device_uuid TEXT PRIMARY KEY REFERENCES devices (uuid),
        public_key  TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        recorded_at INTEGER NOT NULL,
        recorded_by TEXT NOT NULL
    ) STRICT;
    CREATE TABLE agent_enrollments (
        device_uuid  TEXT PRIMARY KEY REFERENCES devices (uuid),
        profile      TEXT NOT NULL,
        token_sha256 BLOB NOT NULL CHECK (length(token_sha256) = 32),
        issued_at    INTEGER NOT NULL
    ) STRICT;
    "#,
    // 5: the admin API's accounts (argon2 password hashes), their console sessions
    // and bearer tokens (only SHA-256 hashes of either), and who acknowledged an alert.
    r#"
    CREATE TABLE admins (
        name          TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        role          TEXT NOT NULL CHECK (role IN ('admin', 'operator')),
        created_at    INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE admin_credentials (
        token_sha256 BLOB PRIMARY KEY CHECK (length(token_sha256) = 32),
        admin        TEXT NOT NULL REFERENCES admins (name) ON DELETE CASCADE,
        kind         TEXT NOT NULL CHECK (kind IN ('session', 'token')),
        comment      TEXT,
        created_at   INTEGER NOT NULL,
        expires_at   INTEGER
    ) STRICT;
    ALTER TABLE alerts ADD COLUMN acknowledged_at INTEGER;
    ALTER TABLE alerts ADD COLUMN acknowledged_by TEXT;
    "#,
    // 6: repeated alerts aggregate: an unacknowledged alert is one row per
    // aggregation key (`agg_key`, a hash: see `NewAlert`), with how often it was seen
    // (`at` is the first time, `last_seen` the last) and when alert sinks were last
    // told about it. Rows from before keep no key (they never aggregate) and their
    // messages are cut to the cap new alerts get. `last_seen` orders listings and
    // drives retention.
    r#"
    ALTER TABLE alerts ADD COLUMN count INTEGER NOT NULL DEFAULT 1 CHECK (count >= 1);
    ALTER TABLE alerts ADD COLUMN last_seen INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE alerts ADD COLUMN notified_at INTEGER;
    ALTER TABLE alerts ADD COLUMN agg_key BLOB;
    UPDATE alerts SET last_seen = at, notified_at = at;
    UPDATE alerts SET message = substr(message, 1, 1900) || '… [cut]'
    WHERE length(CAST(message AS BLOB)) > 2048;
    CREATE UNIQUE INDEX alerts_open_by_key ON alerts (agg_key) WHERE acknowledged_at IS NULL;
    CREATE INDEX alerts_by_last_seen ON alerts (last_seen);
    "#,
    // 7: devices whose provisioning job failed wait before their next hello starts
    // another (they keep saying hello for hours).
    r#"
    CREATE TABLE job_backoff (
        device_uuid     TEXT PRIMARY KEY,
        pid             TEXT NOT NULL,
        address         TEXT NOT NULL,
        cause           TEXT NOT NULL,
        failures        INTEGER NOT NULL CHECK (failures > 0),
        last_failed_at  INTEGER NOT NULL,
        retry_at        INTEGER NOT NULL
    ) STRICT;
    "#,
    // 8: provisioning certificate chains for PKI remote configuration (hello v3):
    // the certificates (PEM, leaf first), the leaf's key (sealed, context
    // `pki_chain_key:<name>`), and what selection and listings need without opening
    // either: the leaf CN and its domain, the root's hashes, the earliest expiry.
    r#"
    CREATE TABLE provisioning_chains (
        name         TEXT PRIMARY KEY,
        common_name  TEXT NOT NULL,
        domain       TEXT NOT NULL,
        chain_pem    TEXT NOT NULL,
        key_sealed   BLOB NOT NULL,
        root_sha1    BLOB NOT NULL CHECK (length(root_sha1) = 20),
        root_sha256  BLOB NOT NULL CHECK (length(root_sha256) = 32),
        root_sha384  BLOB NOT NULL CHECK (length(root_sha384) = 48),
        not_after    INTEGER NOT NULL,
        imported_at  INTEGER NOT NULL,
        imported_by  TEXT NOT NULL
    ) STRICT;
    "#,
    // 9: PKI provisioning: jobs in flight for devices without a PID (keyed by the
    // device; the new admin credential sealed as `pki_job_password:<uuid>`), and on
    // every device record its control mode, the path it was provisioned by (every
    // device before this migration came by PSK remote configuration, which ends in
    // admin control mode), the chain a PKI device was configured with and the SHA-256
    // of the certificate it presented in setup mode.
    r#"
    CREATE TABLE pki_jobs (
        id                  INTEGER PRIMARY KEY,
        device_uuid         TEXT NOT NULL UNIQUE,
        address             TEXT NOT NULL,
        chain_name          TEXT NOT NULL,
        new_password_sealed BLOB NOT NULL,
        certificate_der     BLOB,
        setup_certificate_sha256 BLOB,
        step                TEXT NOT NULL,
        created_at          INTEGER NOT NULL,
        updated_at          INTEGER NOT NULL
    ) STRICT;
    ALTER TABLE devices ADD COLUMN control_mode TEXT NOT NULL DEFAULT 'acm'
        CHECK (control_mode IN ('acm', 'ccm'));
    ALTER TABLE devices ADD COLUMN provisioning_path TEXT NOT NULL DEFAULT 'psk'
        CHECK (provisioning_path IN ('psk', 'pki'));
    ALTER TABLE devices ADD COLUMN pki_chain TEXT;
    ALTER TABLE devices ADD COLUMN setup_certificate_sha256 BLOB;
    "#,
    // 10: several serve nodes on one store (`claims.rs`): the claim of a job's key
    // (its PID or device at an address) by the node working on it, until its lease
    // ends (ms since the epoch); and each periodic task's next due time, so one node
    // does each round. Both portable as they stand (64-bit integer times).
    r#"
    CREATE TABLE job_claims (
        claim_key    TEXT PRIMARY KEY,
        node         TEXT NOT NULL,
        lease_until  INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX job_claims_by_node ON job_claims (node);
    CREATE TABLE periodic_turns (
        task      TEXT PRIMARY KEY,
        node      TEXT NOT NULL,
        taken_at  INTEGER NOT NULL,
        due_at    INTEGER NOT NULL
    ) STRICT;
    "#,
];

/// The same migrations for PostgreSQL, number for number: BIGINT for INTEGER (every
/// integer is 64-bit), BYTEA for BLOB, identity columns for SQLite's rowid keys, and
/// the triggers as PL/pgSQL functions. The schema version and the application id live
/// in the table `vprov_schema` (PostgreSQL has no `user_version`/`application_id`).
const PG_MIGRATIONS: &[&str] = &[
    // 1
    r#"
    CREATE TABLE vprov_schema (application_id BIGINT NOT NULL, version BIGINT NOT NULL);
    CREATE TABLE meta (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
    CREATE TABLE secrets (name TEXT PRIMARY KEY, sealed BYTEA NOT NULL, changed_at BIGINT NOT NULL);
    CREATE TABLE key_batches (
        id         BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        created_at BIGINT NOT NULL,
        comment    TEXT,
        size       BIGINT NOT NULL CHECK (size > 0)
    );
    CREATE TABLE provisioning_keys (
        seq              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        pid              TEXT NOT NULL UNIQUE CHECK (length(pid) = 8),
        batch_id         BIGINT NOT NULL REFERENCES key_batches(id),
        pps_sealed       BYTEA NOT NULL,
        state            TEXT NOT NULL DEFAULT 'available'
                         CHECK (state IN ('available', 'used', 'revoked')),
        device_uuid      TEXT,
        state_changed_at BIGINT NOT NULL,
        CHECK ((state = 'used') = (device_uuid IS NOT NULL))
    );
    CREATE INDEX provisioning_keys_by_batch ON provisioning_keys (batch_id, seq);
    CREATE FUNCTION provisioning_keys_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            RAISE EXCEPTION 'provisioning keys are never deleted: a PID is never reissued';
        END IF;
        IF NEW.seq <> OLD.seq OR NEW.pid <> OLD.pid OR NEW.batch_id <> OLD.batch_id
           OR NEW.pps_sealed <> OLD.pps_sealed THEN
            RAISE EXCEPTION 'a provisioning key''s PID, PPS and batch never change';
        END IF;
        IF OLD.state <> 'available' AND NEW.state <> OLD.state THEN
            RAISE EXCEPTION 'a used or revoked provisioning key never changes state again';
        END IF;
        RETURN NEW;
    END $$;
    CREATE TRIGGER provisioning_keys_guard BEFORE UPDATE OR DELETE ON provisioning_keys
        FOR EACH ROW EXECUTE FUNCTION provisioning_keys_guard();
    CREATE TABLE devices (
        uuid                  TEXT PRIMARY KEY,
        host_name             TEXT,
        address               TEXT,
        amt_version           TEXT,
        state                 TEXT NOT NULL DEFAULT 'unmanaged'
                              CHECK (state IN ('unmanaged', 'managed')),
        management_mode       TEXT CHECK (management_mode IN ('agentless', 'agent')),
        admin_user            TEXT,
        admin_password_sealed BYTEA,
        certificate_der       BYTEA,
        provisioned_pid       TEXT REFERENCES provisioning_keys (pid),
        provisioned_at        BIGINT NOT NULL,
        last_contact_at       BIGINT,
        CHECK ((state = 'managed') = (management_mode IS NOT NULL))
    );
    CREATE TABLE alerts (
        id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        at          BIGINT NOT NULL,
        severity    TEXT NOT NULL CHECK (severity IN ('info', 'warning', 'error', 'critical')),
        source      TEXT NOT NULL,
        message     TEXT NOT NULL,
        pid         TEXT,
        device_uuid TEXT,
        address     TEXT
    );
    CREATE TABLE audit_log (
        id     BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        at     BIGINT NOT NULL,
        actor  TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    "#,
    // 2
    r#"
    CREATE TABLE provisioning_jobs (
        id                    BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        pid                   TEXT NOT NULL UNIQUE REFERENCES provisioning_keys (pid),
        device_uuid           TEXT NOT NULL,
        address               TEXT NOT NULL,
        new_password_sealed   BYTEA NOT NULL,
        certificate_der       BYTEA,
        step                  TEXT NOT NULL,
        created_at            BIGINT NOT NULL,
        updated_at            BIGINT NOT NULL
    );
    "#,
    // 3
    r#"
    ALTER TABLE devices ADD COLUMN inventory TEXT;
    ALTER TABLE devices ADD COLUMN inventory_at BIGINT;
    ALTER TABLE devices ADD COLUMN pending_password_sealed BYTEA;
    ALTER TABLE devices ADD COLUMN reachable BIGINT;
    "#,
    // 4
    r#"
    ALTER TABLE devices ADD COLUMN agent_profile TEXT;
    CREATE TABLE device_host_keys (
        device_uuid TEXT PRIMARY KEY REFERENCES devices (uuid),
        public_key  TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        recorded_at BIGINT NOT NULL,
        recorded_by TEXT NOT NULL
    );
    CREATE TABLE agent_enrollments (
        device_uuid  TEXT PRIMARY KEY REFERENCES devices (uuid),
        profile      TEXT NOT NULL,
        token_sha256 BYTEA NOT NULL CHECK (length(token_sha256) = 32),
        issued_at    BIGINT NOT NULL
    );
    "#,
    // 5
    r#"
    CREATE TABLE admins (
        name          TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        role          TEXT NOT NULL CHECK (role IN ('admin', 'operator')),
        created_at    BIGINT NOT NULL
    );
    CREATE TABLE admin_credentials (
        token_sha256 BYTEA PRIMARY KEY CHECK (length(token_sha256) = 32),
        admin        TEXT NOT NULL REFERENCES admins (name) ON DELETE CASCADE,
        kind         TEXT NOT NULL CHECK (kind IN ('session', 'token')),
        comment      TEXT,
        created_at   BIGINT NOT NULL,
        expires_at   BIGINT
    );
    ALTER TABLE alerts ADD COLUMN acknowledged_at BIGINT;
    ALTER TABLE alerts ADD COLUMN acknowledged_by TEXT;
    "#,
    // 6
    r#"
    ALTER TABLE alerts ADD COLUMN count BIGINT NOT NULL DEFAULT 1 CHECK (count >= 1);
    ALTER TABLE alerts ADD COLUMN last_seen BIGINT NOT NULL DEFAULT 0;
    ALTER TABLE alerts ADD COLUMN notified_at BIGINT;
    ALTER TABLE alerts ADD COLUMN agg_key BYTEA;
    UPDATE alerts SET last_seen = at, notified_at = at;
    UPDATE alerts SET message = substr(message, 1, 1900) || '… [cut]'
    WHERE octet_length(message) > 2048;
    CREATE UNIQUE INDEX alerts_open_by_key ON alerts (agg_key) WHERE acknowledged_at IS NULL;
    CREATE INDEX alerts_by_last_seen ON alerts (last_seen);
    "#,
    // 7
    r#"
    CREATE TABLE job_backoff (
        device_uuid     TEXT PRIMARY KEY,
        pid             TEXT NOT NULL,
        address         TEXT NOT NULL,
        cause           TEXT NOT NULL,
        failures        BIGINT NOT NULL CHECK (failures > 0),
        last_failed_at  BIGINT NOT NULL,
        retry_at        BIGINT NOT NULL
    );
    "#,
    // 8
    r#"
    CREATE TABLE provisioning_chains (
        name         TEXT PRIMARY KEY,
        common_name  TEXT NOT NULL,
        domain       TEXT NOT NULL,
        chain_pem    TEXT NOT NULL,
        key_sealed   BYTEA NOT NULL,
        root_sha1    BYTEA NOT NULL CHECK (length(root_sha1) = 20),
        root_sha256  BYTEA NOT NULL CHECK (length(root_sha256) = 32),
        root_sha384  BYTEA NOT NULL CHECK (length(root_sha384) = 48),
        not_after    BIGINT NOT NULL,
        imported_at  BIGINT NOT NULL,
        imported_by  TEXT NOT NULL
    );
    "#,
    // 9
    r#"
    CREATE TABLE pki_jobs (
        id                  BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        device_uuid         TEXT NOT NULL UNIQUE,
        address             TEXT NOT NULL,
        chain_name          TEXT NOT NULL,
        new_password_sealed BYTEA NOT NULL,
        certificate_der     BYTEA,
        setup_certificate_sha256 BYTEA,
        step                TEXT NOT NULL,
        created_at          BIGINT NOT NULL,
        updated_at          BIGINT NOT NULL
    );
    ALTER TABLE devices ADD COLUMN control_mode TEXT NOT NULL DEFAULT 'acm'
        CHECK (control_mode IN ('acm', 'ccm'));
    ALTER TABLE devices ADD COLUMN provisioning_path TEXT NOT NULL DEFAULT 'psk'
        CHECK (provisioning_path IN ('psk', 'pki'));
    ALTER TABLE devices ADD COLUMN pki_chain TEXT;
    ALTER TABLE devices ADD COLUMN setup_certificate_sha256 BYTEA;
    "#,
    // 10
    r#"
    CREATE TABLE job_claims (
        claim_key    TEXT PRIMARY KEY,
        node         TEXT NOT NULL,
        lease_until  BIGINT NOT NULL
    );
    CREATE INDEX job_claims_by_node ON job_claims (node);
    CREATE TABLE periodic_turns (
        task      TEXT PRIMARY KEY,
        node      TEXT NOT NULL,
        taken_at  BIGINT NOT NULL,
        due_at    BIGINT NOT NULL
    );
    "#,
];

/// Number of migrations this build knows: the schema version it writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Every table a store holds, parents before children: the order a copy writes them
/// (`vprov store copy`).
pub const TABLES: &[&str] = &[
    "meta",
    "secrets",
    "key_batches",
    "provisioning_keys",
    "devices",
    "alerts",
    "audit_log",
    "provisioning_jobs",
    "device_host_keys",
    "agent_enrollments",
    "admins",
    "admin_credentials",
    "job_backoff",
    "provisioning_chains",
    "pki_jobs",
    "job_claims",
    "periodic_turns",
];

/// What [`migrate`] found before applying anything.
#[derive(Debug, PartialEq, Eq)]
pub enum SchemaState {
    /// An empty database (or none): safe to initialise.
    Empty,
    /// A vprov store at this schema version.
    Vprov { version: i32 },
    /// Some other database.
    Foreign { application_id: i32 },
}

/// Classifies the database without writing to it. One statement, so one snapshot:
/// another process may be initialising the store at this very moment, and reading
/// its application id before that commit and its tables after would make a new
/// vprov store look like a foreign database.
pub fn inspect(db: &Db) -> Result<SchemaState> {
    if db.is_postgres() {
        return inspect_postgres(db);
    }
    let (app_id, version, objects): (i32, i32, i64) = db.query_row(
        "SELECT (SELECT application_id FROM pragma_application_id),
                (SELECT user_version FROM pragma_user_version),
                (SELECT count(*) FROM sqlite_schema)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(match app_id {
        APPLICATION_ID => SchemaState::Vprov { version },
        0 if version == 0 && objects == 0 => SchemaState::Empty,
        other => SchemaState::Foreign {
            application_id: other,
        },
    })
}

/// PostgreSQL: the current schema holds `vprov_schema` (a store), nothing (empty), or
/// other relations (foreign).
fn inspect_postgres(db: &Db) -> Result<SchemaState> {
    let (has_marker, objects): (bool, i64) = db.query_row(
        "SELECT to_regclass('vprov_schema') IS NOT NULL,
                (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = current_schema())",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if !has_marker {
        return Ok(if objects == 0 {
            SchemaState::Empty
        } else {
            SchemaState::Foreign { application_id: 0 }
        });
    }
    let marker: Option<(i64, i64)> = db
        .query_row(
            "SELECT application_id, version FROM vprov_schema",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match marker {
        Some((app, version)) if app == i64::from(APPLICATION_ID) => SchemaState::Vprov {
            version: i32::try_from(version).unwrap_or(i32::MAX),
        },
        Some((app, _)) => SchemaState::Foreign {
            application_id: i32::try_from(app).unwrap_or(-1),
        },
        // Another process created the marker table and has not committed its row:
        // impossible (one transaction), so an empty marker is someone else's table.
        None => SchemaState::Foreign { application_id: 0 },
    })
}

/// Applies every migration the store lacks, all in one write transaction, so
/// that two processes opening a new store at once initialise it exactly once.
/// Returns the schema version found before migrating.
pub fn migrate(db: &mut Db) -> Result<i32> {
    let postgres = db.is_postgres();
    let tx = db.transaction()?;
    let found: i32 = if postgres {
        // Inspected again under the write lock: another process may have migrated.
        match inspect_postgres(&tx)? {
            SchemaState::Vprov { version } => version,
            _ => 0,
        }
    } else {
        tx.query_row("PRAGMA user_version", [], |r| r.get(0))?
    };
    let migrations = if postgres { PG_MIGRATIONS } else { MIGRATIONS };
    for sql in migrations.iter().skip(found.max(0) as usize) {
        tx.execute_batch(sql)?;
    }
    if found < SCHEMA_VERSION {
        if postgres {
            tx.execute("DELETE FROM vprov_schema", [])?;
            tx.execute(
                "INSERT INTO vprov_schema (application_id, version) VALUES (?1, ?2)",
                [i64::from(APPLICATION_ID), i64::from(SCHEMA_VERSION)],
            )?;
        } else {
            tx.execute_batch(&format!(
                "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION}"
            ))?;
        }
    }
    tx.commit()?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn memory() -> Db {
        Db::sqlite(
            Connection::open_in_memory().unwrap(),
            std::time::Duration::from_secs(1),
        )
    }

    #[test]
    fn both_engines_have_every_migration() {
        assert_eq!(PG_MIGRATIONS.len(), MIGRATIONS.len());
    }

    #[test]
    fn the_copy_order_names_every_table() {
        let db = memory();
        let mut db = db;
        migrate(&mut db).unwrap();
        let mut tables: Vec<String> = db
            .query_map(
                "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let mut expected: Vec<String> = TABLES.iter().map(|t| t.to_string()).collect();
        tables.sort();
        expected.sort();
        assert_eq!(tables, expected);
    }

    #[test]
    fn migrating_twice_is_a_no_op() {
        let mut conn = memory();
        assert_eq!(inspect(&conn).unwrap(), SchemaState::Empty);
        assert_eq!(migrate(&mut conn).unwrap(), 0);
        assert_eq!(migrate(&mut conn).unwrap(), SCHEMA_VERSION);
        assert_eq!(
            inspect(&conn).unwrap(),
            SchemaState::Vprov {
                version: SCHEMA_VERSION
            }
        );
    }

    #[test]
    fn migration_6_keeps_old_alerts_apart_and_cuts_huge_messages() {
        let conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..5] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        conn.pragma_update(None, "user_version", 5).unwrap();
        let huge = "x".repeat(1 << 20);
        for message in ["same", "same", huge.as_str()] {
            conn.execute(
                "INSERT INTO alerts (at, severity, source, message) VALUES (7, 'error', 's', ?1)",
                [message],
            )
            .unwrap();
        }
        let mut db = Db::sqlite(conn, std::time::Duration::from_secs(1));
        assert_eq!(migrate(&mut db).unwrap(), 5);
        let conn = db.as_sqlite().unwrap();
        let rows: Vec<(i64, i64, i64, usize)> = conn
            .prepare(
                "SELECT count, last_seen, notified_at, length(message) FROM alerts ORDER BY id",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows[0], (1, 7, 7, 4));
        assert_eq!(rows[1], (1, 7, 7, 4));
        assert!(rows[2].3 < 2048, "{:?}", rows[2]);
    }

    #[test]
    fn a_foreign_database_is_recognised() {
        let conn = memory();
        conn.execute_batch("CREATE TABLE customers (id INTEGER)")
            .unwrap();
        assert_eq!(
            inspect(&conn).unwrap(),
            SchemaState::Foreign { application_id: 0 }
        );
    }

    #[test]
    fn keys_are_never_deleted_and_never_revived() {
        let mut conn = memory();
        migrate(&mut conn).unwrap();
        conn.execute_batch(
            "INSERT INTO key_batches (id, created_at, size) VALUES (1, 0, 1);
             INSERT INTO provisioning_keys (pid, batch_id, pps_sealed, state_changed_at)
             VALUES ('0000037M', 1, x'00', 0);",
        )
        .unwrap();
        assert!(conn.execute("DELETE FROM provisioning_keys", []).is_err());
        conn.execute("UPDATE provisioning_keys SET state = 'revoked'", [])
            .unwrap();
        assert!(conn
            .execute("UPDATE provisioning_keys SET state = 'available'", [])
            .is_err());
        assert!(conn
            .execute("UPDATE provisioning_keys SET pid = '11111111'", [])
            .is_err());
    }
}
