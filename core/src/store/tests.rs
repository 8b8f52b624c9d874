use super::testdb::{engines, TestEngine};
use super::*;
use crate::keys::Pid;
use crate::password::ProvisioningPassword;
use std::collections::HashSet;

fn open(dir: &Path) -> Store {
    Store::open(&StoreOptions::new(dir)).unwrap()
}

/// A store on `engine` holding one provisioned device; its UUID.
pub(super) fn store_with_device(engine: &TestEngine) -> (Store, String) {
    let mut store = engine.open();
    store.generate_batch(1, None, "t", |_| {}).unwrap();
    let pid = all_pids(&store, &KeyFilter::default())[0];
    let uuid = "8c2f7d4e-0000-4000-8000-000000000001".to_string();
    let job = store
        .begin_job(&pid, &uuid, "127.0.0.5", "N3w!Password")
        .unwrap()
        .unwrap();
    let device = ProvisionedDevice {
        uuid: uuid.clone(),
        host_name: Some("pc-1".into()),
        address: "127.0.0.5".into(),
        amt_version: Some("11.8.50".into()),
        admin_user: "admin".into(),
        certificate_der: vec![1, 2, 3],
    };
    store.complete_job(job.id, &device, "N3w!Password").unwrap();
    (store, uuid)
}

/// Two connections to one new store in a temporary directory, as two server nodes
/// (processes) sharing it have.
/// The PID of a new available key in `store`.
pub(super) fn new_available_pid(store: &mut Store) -> String {
    store.generate_batch(1, None, "t", |_| {}).unwrap();
    let filter = KeyFilter {
        state: Some(KeyState::Available),
        ..KeyFilter::default()
    };
    all_pids(store, &filter)[0].as_str().to_string()
}

/// The database file and its write-ahead log, as bytes (to look for plaintext).
pub(super) fn all_store_bytes(dir: &Path) -> Vec<u8> {
    let mut bytes = fs::read(dir.join(DB_FILE)).unwrap();
    if let Ok(wal) = fs::read(dir.join(format!("{DB_FILE}-wal"))) {
        bytes.extend(wal);
    }
    bytes
}

fn all_pids(store: &Store, filter: &KeyFilter) -> Vec<Pid> {
    let mut pids = Vec::new();
    store
        .for_each_key(filter, |k| -> Result<(), StoreError> {
            pids.push(k.pid);
            Ok(())
        })
        .unwrap();
    pids
}

#[test]
fn first_open_creates_store_and_private_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    open(&data);
    assert!(data.join(DB_FILE).exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(data.join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // Reopening uses the same key.
    open(&data);
}

#[test]
fn pids_are_unique_within_and_across_batches() {
    for engine in engines() {
        let mut store = engine.open();
        let a = store
            .generate_batch(3000, Some("first"), "test", |_| {})
            .unwrap();
        let b = store.generate_batch(3000, None, "test", |_| {}).unwrap();
        assert_ne!(a.id, b.id);
        let pids = all_pids(&store, &KeyFilter::default());
        assert_eq!(pids.len(), 6000);
        assert_eq!(pids.iter().collect::<HashSet<_>>().len(), 6000);
        let only_a = all_pids(
            &store,
            &KeyFilter {
                batch: Some(a.id),
                state: None,
                pid: None,
            },
        );
        assert_eq!(only_a.len(), 3000);
        let batches = store.batches().unwrap();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].comment.as_deref(), Some("first"));
        assert_eq!(batches[0].available, 3000);
    }
}

#[test]
fn revealed_pps_match_their_pids_and_the_reveal_is_audited() {
    for engine in engines() {
        let mut store = engine.open();
        let batch = store.generate_batch(50, None, "alice", |_| {}).unwrap();
        let mut seen = 0;
        let filter = KeyFilter {
            batch: Some(batch.id),
            state: None,
            pid: None,
        };
        store
            .reveal_keys(&filter, "bob", |k| -> Result<(), StoreError> {
                let pps = k.pps.expect("revealed");
                // Re-parsing validates every check character.
                assert!(pps.expose_dashed().parse::<crate::keys::Pps>().is_ok());
                seen += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, 50);
        let audit = store.audit_log(10).unwrap();
        assert_eq!(audit[0].action, "keys.reveal");
        assert_eq!(audit[0].actor, "bob");
        assert_eq!(audit[0].detail["count"], 50);
        assert_eq!(audit[1].action, "keys.generate");
    }
}

#[test]
fn revoke_moves_keys_forward_only_and_unknown_pids_change_nothing() {
    for engine in engines() {
        let mut store = engine.open();
        store.generate_batch(3, None, "t", |_| {}).unwrap();
        let pids = all_pids(&store, &KeyFilter::default());
        let unknown: Pid = "0000-037M".parse().unwrap();
        let err = store.revoke_pids(&[pids[0], unknown], "t").unwrap_err();
        assert!(matches!(err, StoreError::UnknownPid(ref p) if p == "0000-037M"));
        let available = KeyFilter {
            batch: None,
            state: Some(KeyState::Available),
            pid: None,
        };
        assert_eq!(all_pids(&store, &available).len(), 3);

        let out = store.revoke_pids(&[pids[0], pids[0]], "t").unwrap();
        assert_eq!(out[0].1, RevokeOutcome::Revoked);
        assert_eq!(out[1].1, RevokeOutcome::AlreadyRevoked);
        assert_eq!(store.revoke_batch(1, "t").unwrap(), 2);
        assert_eq!(all_pids(&store, &available).len(), 0);
        assert!(matches!(
            store.revoke_batch(9, "t"),
            Err(StoreError::BatchNotFound(9))
        ));
    }
}

#[test]
fn check_key_tells_a_pid_s_own_pps_from_another_s_and_the_pid_filter_finds_one() {
    for engine in engines() {
        let mut store = engine.open();
        store.generate_batch(2, None, "t", |_| {}).unwrap();
        let mut keys = Vec::new();
        store
            .reveal_keys(&KeyFilter::default(), "t", |k| -> Result<(), StoreError> {
                keys.push((k.pid, k.pps.unwrap()));
                Ok(())
            })
            .unwrap();
        let ((a, a_pps), (b, b_pps)) = (&keys[0], &keys[1]);
        let own = store.check_key(a, Some(a_pps)).unwrap().unwrap();
        assert_eq!(own.pps_matches, Some(true));
        assert_eq!((own.batch_id, own.state), (1, KeyState::Available));
        assert_eq!(
            store
                .check_key(a, Some(b_pps))
                .unwrap()
                .unwrap()
                .pps_matches,
            Some(false)
        );
        assert_eq!(store.check_key(b, None).unwrap().unwrap().pps_matches, None);
        assert_eq!(
            store
                .check_key(&"0000-037M".parse().unwrap(), None)
                .unwrap(),
            None
        );
        let only_b = KeyFilter {
            pid: Some(*b),
            ..KeyFilter::default()
        };
        assert_eq!(all_pids(&store, &only_b), vec![*b]);
    }
}

#[test]
fn open_existing_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert!(Store::open_existing(&StoreOptions::new(&data))
        .unwrap()
        .is_none());
    assert!(!data.exists());
    open(&data);
    assert!(Store::open_existing(&StoreOptions::new(&data))
        .unwrap()
        .is_some());
}

#[test]
fn the_database_never_holds_a_plaintext_pps_or_password() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.generate_batch(200, None, "t", |_| {}).unwrap();
    let password = ProvisioningPassword::new("Unm1stakable!Pass").unwrap();
    store.set_provisioning_password(&password, "t").unwrap();
    let mut secrets = vec![password.expose().as_bytes().to_vec()];
    store
        .reveal_keys(&KeyFilter::default(), "t", |k| -> Result<(), StoreError> {
            let pps = k.pps.unwrap();
            secrets.push(pps.expose_bytes().to_vec());
            secrets.push(pps.expose_dashed().as_bytes().to_vec());
            // Even one group of a PPS is too much; 12 characters is plenty to look for.
            secrets.push(pps.expose_bytes()[..12].to_vec());
            Ok(())
        })
        .unwrap();
    drop(store);
    let bytes = all_store_bytes(dir.path());
    for secret in &secrets {
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_slice()));
    }
}

#[test]
fn password_round_trip_and_status() {
    for engine in engines() {
        let mut store = engine.open();
        assert!(!store.password_status().unwrap().set);
        assert!(store.provisioning_password().unwrap().is_none());
        let password = ProvisioningPassword::new("HeyH0Password!").unwrap();
        store.set_provisioning_password(&password, "t").unwrap();
        let status = store.password_status().unwrap();
        assert!(status.set && status.changed_at.is_some());
        assert_eq!(store.provisioning_password().unwrap(), Some(password));
    }
}

#[test]
fn a_wrong_or_missing_key_is_refused_and_no_new_key_is_made() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path())
        .generate_batch(1, None, "t", |_| {})
        .unwrap();

    let mut wrong = StoreOptions::new(dir.path());
    wrong.key = Some(KeySource::Hex(Zeroizing::new("11".repeat(32))));
    assert!(matches!(
        Store::open(&wrong),
        Err(StoreError::WrongKey { .. })
    ));

    fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
    assert!(matches!(
        Store::open(&StoreOptions::new(dir.path())),
        Err(StoreError::MissingKey { .. })
    ));
    assert!(!dir.path().join(KEY_FILE).exists());
}

#[test]
fn a_wrong_key_is_refused_before_an_older_store_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path());
    // Make it a store of the previous schema version, as an older vprov left it
    // (undo the newest migration).
    {
        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.execute_batch(&format!(
            "DROP TABLE job_claims;
             DROP TABLE periodic_turns;
             PRAGMA user_version = {};",
            schema::SCHEMA_VERSION - 1
        ))
        .unwrap();
    }
    let version = || -> i32 {
        rusqlite::Connection::open(dir.path().join(DB_FILE))
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    let mut wrong = StoreOptions::new(dir.path());
    wrong.key = Some(KeySource::Hex(Zeroizing::new("11".repeat(32))));
    assert!(matches!(
        Store::open(&wrong),
        Err(StoreError::WrongKey { .. })
    ));
    assert_eq!(
        version(),
        schema::SCHEMA_VERSION - 1,
        "migrated with a wrong key"
    );
    open(dir.path());
    assert_eq!(version(), schema::SCHEMA_VERSION);
}

#[test]
fn foreign_and_corrupt_files_are_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(DB_FILE);
    fs::write(&db, b"this is a spreadsheet, not a database").unwrap();
    assert!(matches!(
        Store::open(&StoreOptions::new(dir.path())),
        Err(StoreError::NotADatabase { .. })
    ));
    assert_eq!(
        fs::read(&db).unwrap(),
        b"this is a spreadsheet, not a database"
    );
    assert!(!dir.path().join(KEY_FILE).exists());

    fs::remove_file(&db).unwrap();
    let conn = Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE invoices (n INTEGER); INSERT INTO invoices VALUES (1);")
        .unwrap();
    drop(conn);
    let before = fs::read(&db).unwrap();
    assert!(matches!(
        Store::open(&StoreOptions::new(dir.path())),
        Err(StoreError::ForeignDatabase { .. })
    ));
    assert_eq!(fs::read(&db).unwrap(), before);
}

#[test]
fn a_damaged_store_is_reported_as_damaged_and_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path())
        .generate_batch(2000, None, "t", |_| {})
        .unwrap();
    let db = dir.path().join(DB_FILE);
    let mut bytes = fs::read(&db).unwrap();
    // Keep the header page; overwrite everything after it.
    let page = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    for b in &mut bytes[page..] {
        *b = 0xA5;
    }
    fs::write(&db, &bytes).unwrap();
    let err = Store::open(&StoreOptions::new(dir.path()))
        .and_then(|s| s.batches().map(drop))
        .unwrap_err();
    assert!(
        matches!(err, StoreError::Damaged | StoreError::NotADatabase { .. }),
        "{err}"
    );
    assert_eq!(fs::read(&db).unwrap(), bytes);
}

#[test]
fn an_unusable_data_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    fs::write(&file, b"x").unwrap();
    let err = Store::open(&StoreOptions::new(file.join("data"))).unwrap_err();
    assert!(matches!(err, StoreError::DataDir { .. }), "{err}");
}

/// The fcntl locks this process holds on `path`, as listed in `/proc/locks`.
#[cfg(target_os = "linux")]
fn own_locks_on(path: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    let inode = fs::metadata(path).unwrap().ino();
    let pid = std::process::id().to_string();
    fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // "1: POSIX  ADVISORY  READ 1234 08:01:5678 128 128"
            let (Some(p), Some(dev_inode)) = (fields.get(4), fields.get(5)) else {
                return false;
            };
            *p == pid && dev_inode.rsplit(':').next() == Some(inode.to_string().as_str())
        })
        .count()
}

/// A second `Store::open` in a process (the API's key generation beside the server's
/// store thread) must leave the first connection's SQLite locks alone: POSIX drops a
/// process's fcntl locks on a file when any descriptor of it is closed, and without
/// them another process's last close deletes the WAL the server still writes to.
#[cfg(target_os = "linux")]
#[test]
fn a_second_open_in_the_process_keeps_the_first_connections_locks() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = open(dir.path());
    server.generate_batch(1, None, "t", |_| {}).unwrap();
    let db = dir.path().join(DB_FILE);
    let held = own_locks_on(&db);
    assert!(
        held > 0,
        "a WAL connection holds a shared lock on the database"
    );
    for _ in 0..3 {
        drop(open(dir.path()));
        assert_eq!(
            own_locks_on(&db),
            held,
            "opening the store again dropped the open connection's locks"
        );
    }
    // The first connection still writes where every other connection reads.
    server.generate_batch(2, None, "u", |_| {}).unwrap();
    assert_eq!(open(dir.path()).batches().unwrap().len(), 2);
}

/// A hello naming another device (PIDs travel in clear) must not redirect the
/// recovery of a job whose device already committed.
#[test]
fn a_committed_intent_keeps_its_device_and_address() {
    for engine in engines() {
        let mut store = engine.open();
        store.generate_batch(1, None, "t", |_| {}).unwrap();
        let pid = all_pids(&store, &KeyFilter::default())[0];
        let real = "8c2f7d4e-0000-4000-8000-000000000001";
        let job = store
            .begin_job(&pid, real, "127.0.0.5", "N3w!Password")
            .unwrap()
            .unwrap();
        // Before the commit, the device's next hello may come from a new address.
        let moved = store
            .begin_job(&pid, real, "127.0.0.6", "ignored")
            .unwrap()
            .unwrap();
        assert_eq!((moved.id, moved.address.as_str()), (job.id, "127.0.0.6"));
        store
            .set_job_step(job.id, crate::store::JobStep::Commit)
            .unwrap();
        let forged = store
            .begin_job(
                &pid,
                "00000000-0000-0000-0000-00000000dead",
                "127.0.0.66",
                "x",
            )
            .unwrap()
            .unwrap();
        assert_eq!(forged.device_uuid, real);
        assert_eq!(forged.address, "127.0.0.6");
        assert_eq!(forged.new_password.as_str(), "N3w!Password");
        let pending = store.pending_jobs().unwrap();
        assert_eq!(pending[0].address, "127.0.0.6");
    }
}

/// PostgreSQL keeps the SQLite file's refusals: a wrong master key, another
/// application's tables, a newer vprov's schema; each leaves the database as it was.
#[test]
fn a_postgres_store_refuses_a_wrong_key_a_foreign_database_and_a_newer_schema() {
    let Some(pg) = testdb::PgDatabase::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(dir.path());
    options.url = Some(pg.url.clone());
    Store::open(&options)
        .unwrap()
        .generate_batch(1, None, "t", |_| {})
        .unwrap();
    let mut wrong = options.clone();
    wrong.key = Some(KeySource::Hex(Zeroizing::new("11".repeat(32))));
    let err = Store::open(&wrong).unwrap_err();
    assert!(matches!(err, StoreError::WrongKey { .. }), "{err}");
    assert!(err.to_string().contains("postgres://vprov:***@"), "{err}");
    assert!(!err.to_string().contains("vprov:vprov@"), "{err}");

    let mut admin = postgres::Client::connect(&pg.url, postgres::NoTls).unwrap();
    admin
        .batch_execute("UPDATE vprov_schema SET version = version + 1")
        .unwrap();
    let err = Store::open(&options).unwrap_err();
    assert!(matches!(err, StoreError::NewerSchema { .. }), "{err}");

    let foreign = testdb::PgDatabase::create().unwrap();
    let mut admin = postgres::Client::connect(&foreign.url, postgres::NoTls).unwrap();
    admin
        .batch_execute("CREATE TABLE customers (id BIGINT)")
        .unwrap();
    options.url = Some(foreign.url.clone());
    let err = Store::open(&options).unwrap_err();
    assert!(matches!(err, StoreError::ForeignDatabase { .. }), "{err}");
    let tables: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 1, "the foreign database was written to");
}

/// Two processes (here: connections) opening one new PostgreSQL store at once
/// initialise it once; both then share the schema and the key check.
#[test]
fn concurrent_first_opens_of_a_postgres_store_initialise_it_once() {
    let Some(pg) = testdb::PgDatabase::create() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(dir.path());
    options.url = Some(pg.url.clone());
    options.key = Some(KeySource::Hex(Zeroizing::new("22".repeat(32))));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let options = options.clone();
            std::thread::spawn(move || Store::open(&options).map(drop))
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    let mut store = Store::open(&options).unwrap();
    store.generate_batch(3, None, "t", |_| {}).unwrap();
    assert_eq!(store.batches().unwrap()[0].available, 3);
}

/// `sslmode=require` connects over TLS, verified against `sslrootcert` (the test
/// cluster's self-signed certificate, `VPROV_TEST_PG_CA`); without that root the
/// server is not trusted and nothing is opened.
#[test]
fn a_postgres_store_over_tls_verifies_the_server_certificate() {
    let Some(pg) = testdb::PgDatabase::create() else {
        return;
    };
    let Some(ca) = std::env::var_os("VPROV_TEST_PG_CA") else {
        assert!(
            std::env::var_os("VPROV_TEST_REQUIRE_PG").is_none(),
            "VPROV_TEST_REQUIRE_PG is set but VPROV_TEST_PG_CA is not"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(dir.path());
    options.url = Some(format!("{}?sslmode=require", pg.url));
    let err = Store::open(&options).unwrap_err();
    assert!(matches!(err, StoreError::Connect { .. }), "{err}");
    assert!(!err.to_string().contains("vprov:vprov@"), "{err}");
    options.url = Some(format!(
        "{}?sslmode=require&sslrootcert={}",
        pg.url,
        ca.to_str().unwrap()
    ));
    let store = Store::open(&options).unwrap();
    let tls: bool = store
        .conn
        .query_row(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(tls);
}

/// The management writes outside transactions (reachability, inventory, contact) on
/// every engine: a boolean parameter is tested as `CAST(?N AS BIGINT) <> 0`, which
/// both accept.
#[test]
fn reachability_inventory_and_contact_are_recorded() {
    for engine in engines() {
        let (mut store, uuid) = store_with_device(&engine);
        store.set_device_reachable(&uuid, true).unwrap();
        let seen = store.device(&uuid).unwrap().unwrap();
        assert_eq!(seen.reachable, Some(true), "{}", engine.name);
        assert!(seen.last_contact_at.is_some());
        store.set_device_reachable(&uuid, false).unwrap();
        assert_eq!(store.device(&uuid).unwrap().unwrap().reachable, Some(false));
        store.set_device_inventory(&uuid, "{\"cpu\":1}").unwrap();
        assert_eq!(
            store.device_inventory(&uuid).unwrap().unwrap().0,
            "{\"cpu\":1}"
        );
        store.touch_device(&uuid).unwrap();
        store.abandon_password_change(&uuid).unwrap();
    }
}
