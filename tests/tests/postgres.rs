//! End to end on PostgreSQL: `vprov store copy` moves a store from SQLite to a
//! database and back, and `vprov serve` with `[store] url` provisions simulated
//! devices into it. Needs `VPROV_TEST_PG_URL` (see `vprov_tests::pg`).

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;
use vprov_core::store::test_database::PgDatabase;
use vprov_tests::eventually;
use vprov_tests::rig::Rig;

#[test]
fn serve_on_postgres_provisions_devices_after_a_copy_from_sqlite_and_back() {
    let Some(pg) = PgDatabase::create() else {
        return;
    };
    let rig = Rig::new(5, &format!("[store]\nurl = \"{}\"\n", pg.url));
    // Rig::new stored the keys and the password in SQLite (no --config): move them.
    let out = rig.s.run(&["store", "copy", "--to", &pg.url]).ok();
    assert!(
        out.contains("provisioning_keys             5 rows"),
        "{out}"
    );
    assert!(out.contains("vprov:***@"), "{out}");
    assert!(
        !out.contains("vprov:vprov@"),
        "the URL's password was printed: {out}"
    );
    let err = rig.s.run(&["store", "copy", "--to", &pg.url]).fails();
    assert!(err.contains("is not empty"), "{err}");
    assert!(!err.contains("vprov:vprov@"), "{err}");

    let server = rig.serve();
    let sim = rig.simulate(
        &server,
        rig.specs(0..5, Ipv4Addr::new(127, 23, 0, 1)),
        0.001,
    );
    for r in rig.wait_all(&sim, Duration::from_secs(120)) {
        assert!(r.committed, "not provisioned: {r:?}");
    }
    let devices = eventually(Duration::from_secs(20), "5 device records", || {
        let d: Vec<Value> = rig
            .run_configured(&["devices", "list", "--format", "json"])
            .json()
            .as_array()
            .unwrap()
            .clone();
        (d.len() == 5).then_some(d)
    });
    assert!(
        devices.iter().all(|d| d["state"] == "unmanaged"),
        "{devices:?}"
    );
    assert_eq!(server.stop(), 0);
    // The records are in PostgreSQL; the SQLite file the keys came from has none.
    let in_pg: i64 = pg
        .client()
        .query_one("SELECT count(*) FROM devices", &[])
        .unwrap()
        .get(0);
    assert_eq!(in_pg, 5);
    let in_sqlite: i64 = rig
        .s
        .sqlite()
        .query_row("SELECT count(*) FROM devices", [], |r| r.get(0))
        .unwrap();
    assert_eq!(in_sqlite, 0);

    // And back to a new SQLite data directory, with the original master key.
    let back = rig.s.dir.path().join("back");
    let out = rig
        .run_configured(&["store", "copy", "--to", back.to_str().unwrap()])
        .ok();
    assert!(
        out.contains("devices                       5 rows"),
        "{out}"
    );
    let key = rig.s.data_dir().join("master.key");
    let used = vprov_tests::bare_command()
        .args(["--data-dir", back.to_str().unwrap()])
        .args(["--master-key-file", key.to_str().unwrap()])
        .args(["keys", "list", "--state", "used", "--format", "json"])
        .output()
        .unwrap();
    let used: Value = serde_json::from_slice(&used.stdout).unwrap();
    assert_eq!(used.as_array().unwrap().len(), 5);
}
