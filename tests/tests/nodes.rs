//! End to end: several `vprov serve` nodes on one store (README, "Several nodes").
//! Every simulated device says each hello to both nodes, as behind one load
//! balancer; each device must be worked on by exactly one node, a node killed with
//! SIGKILL must have its jobs finished by the other, and the console's live updates
//! on one node must show what the other did.
//!
//! The store is the rig's (`Rig::serve_node`): the nodes share its data directory,
//! or, in the `…_on_postgres` tests, one PostgreSQL database (`VPROV_TEST_PG_URL`;
//! `scripts/test.sh` runs a cluster and requires it).

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::mpsc;
use std::time::Duration;

use vprov_core::store::test_database::PgDatabase;
use vprov_tests::api::ApiClient;
use vprov_tests::eventually;
use vprov_tests::rig::Rig;
use vprov_tests::Sandbox;

const NODE_A: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const NODE_B: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// Recorded devices, as the CLI lists them.
fn recorded(rig: &Rig) -> usize {
    rig.devices().len()
}

/// Provisioning intents left in the store (jobs not finished).
fn pending_intents(rig: &Rig) -> i64 {
    rig.s.count("SELECT count(*) FROM provisioning_jobs")
}

/// A rig on SQLite (`pg` none) or on the PostgreSQL database `pg`.
fn rig_on(pg: Option<&PgDatabase>, keys: usize, config: &str) -> Rig {
    Rig::on(
        Sandbox::on_store(pg.map(|p| p.url.clone())),
        keys as u32,
        config,
    )
}

#[test]
fn two_nodes_on_one_store_provision_each_device_exactly_once() {
    exactly_once(None, Ipv4Addr::new(127, 91, 0, 1));
}

#[test]
fn two_nodes_on_one_postgres_database_provision_each_device_exactly_once() {
    if let Some(pg) = PgDatabase::create() {
        exactly_once(Some(&pg), Ipv4Addr::new(127, 93, 0, 1));
    }
}

fn exactly_once(pg: Option<&PgDatabase>, devices: Ipv4Addr) {
    const N: usize = 120;
    let rig = rig_on(pg, N, "[cluster]\nlease_ms = 5000\n");
    let a = rig.serve_node("a", NODE_A);
    let b = rig.serve_node("b", NODE_B);
    let sim = rig.simulate_nodes(&[&a, &b], rig.specs(0..N, devices), 0.001);
    let reports = rig.wait_all(&sim, Duration::from_secs(180));
    for r in &reports {
        assert!(r.committed && r.confirmed, "not provisioned: {r:?}");
        // Both nodes got its hellos; only one job ever set its credential.
        assert_eq!(r.admin_password_changes, 1, "worked on twice: {r:?}");
    }
    eventually(Duration::from_secs(30), "every device recorded", || {
        (recorded(&rig) == N).then_some(())
    });
    let used = rig
        .json(&["keys", "list", "--format", "json"])
        .iter()
        .filter(|k| k["state"] == "used")
        .count();
    assert_eq!(used, N);
    assert_eq!(pending_intents(&rig), 0);
    assert_eq!(a.stop(), 0);
    assert_eq!(b.stop(), 0);
    // Every job released its claims.
    assert_eq!(rig.s.count("SELECT count(*) FROM job_claims"), 0);
}

/// Reads the device events of an event stream on a thread: the UUIDs.
fn device_events(api: &ApiClient) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let mut stream = api.open_events().expect("event stream");
    std::thread::spawn(move || {
        while let Some((name, data)) = stream.next_event() {
            let uuid = data["uuid"].as_str().map(str::to_string);
            let sent = match (name.as_str(), uuid) {
                ("ready", _) => tx.send(String::new()),
                ("device", Some(uuid)) => tx.send(uuid),
                _ => Ok(()),
            };
            if sent.is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn a_node_killed_mid_run_has_its_jobs_finished_by_the_survivor_whose_console_sees_all() {
    killed_mid_run(None, Ipv4Addr::new(127, 92, 0, 1));
}

#[test]
fn a_node_killed_mid_run_on_postgres_has_its_jobs_finished_by_the_survivor() {
    if let Some(pg) = PgDatabase::create() {
        killed_mid_run(Some(&pg), Ipv4Addr::new(127, 94, 0, 1));
    }
}

fn killed_mid_run(pg: Option<&PgDatabase>, devices: Ipv4Addr) {
    const N: usize = 150;
    // A job the dead node left may fail once on the survivor (e.g. the device still
    // restarting): its next hello retries soon.
    let rig = rig_on(
        pg,
        N,
        "retry_backoff_ms = 500\n[cluster]\nlease_ms = 2000\n",
    );
    rig.s.add_admin("olaf", "admin", "Olaf!Passw0rd-1");
    let a = rig.serve_node("a", NODE_A);
    let b = rig.serve_node("b", NODE_B);
    let console = ApiClient::new(&rig.s, b.api_addr.unwrap()).sign_in("olaf", "Olaf!Passw0rd-1");
    let events = device_events(&console);
    assert_eq!(
        events.recv_timeout(Duration::from_secs(30)).unwrap(),
        "",
        "the stream is ready first"
    );
    let specs = rig.specs(0..N, devices);
    let sim = rig.simulate_nodes(&[&a, &b], specs, 0.002);
    // Killed mid-job: some devices recorded, and node a holding claims of others
    // (read straight from the store: the run is over in seconds). One claim is
    // enough: both nodes get every hello, and on a busy machine the other node may
    // win most of them.
    let held = eventually(Duration::from_secs(120), "node a mid-run", || {
        let count = |sql: &str| rig.s.count(sql);
        let held = count("SELECT count(*) FROM job_claims WHERE node = 'a'");
        (count("SELECT count(*) FROM devices") >= 10 && held >= 1).then_some(held)
    });
    a.kill();
    eprintln!("node a killed holding {held} job claims");
    let reports = rig.wait_all(&sim, Duration::from_secs(240));
    for r in &reports {
        let alerts = || {
            rig.alerts()
                .into_iter()
                .filter(|a| a["device_uuid"] == r.uuid.as_str())
                .collect::<Vec<_>>()
        };
        assert!(
            r.committed && r.confirmed,
            "not provisioned: {r:?}, alerts {:#?}",
            alerts()
        );
    }
    let failures: Vec<_> = rig
        .alerts()
        .into_iter()
        .map(|a| a["message"].as_str().unwrap_or("").to_string())
        .collect();
    eprintln!("alerts of the run: {failures:#?}");
    eventually(Duration::from_secs(60), "every device recorded", || {
        (recorded(&rig) == N).then_some(())
    });
    eventually(Duration::from_secs(30), "no intent left", || {
        (pending_intents(&rig) == 0).then_some(())
    });
    let checked = rig
        .rt
        .block_on(vprov_tests::invariants::check(
            &rig.s.data_dir(),
            rig.s.store_url.as_deref(),
            &reports,
            rig.device_port,
        ))
        .unwrap();
    assert_eq!(checked, N);
    // The survivor's console saw every device, those the dead node recorded too.
    let mut seen = HashSet::new();
    while seen.len() < N {
        match events.recv_timeout(Duration::from_secs(30)) {
            Ok(uuid) => {
                seen.insert(uuid);
            }
            Err(_) => panic!(
                "the survivor's event stream showed {} of {N} devices",
                seen.len()
            ),
        }
    }
    assert_eq!(b.stop(), 0);
}

#[test]
fn a_node_with_another_master_key_refuses_to_start_and_says_why() {
    let rig = Rig::new(1, "");
    let a = rig.serve_node("a", NODE_A);
    let mut command = rig.s.serve_command(
        &format!("{NODE_B}:0"),
        &["--config", rig.config.to_str().unwrap(), "--node", "b"],
    );
    let output = command
        .env("VPROV_MASTER_KEY", "11".repeat(32))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the master key does not match the store")
            && stderr.contains("each serve node too")
            && stderr.contains("VPROV_MASTER_KEY"),
        "{stderr}"
    );
    // The first node is untouched.
    assert_eq!(a.stop(), 0);
}

#[test]
fn nodes_share_a_data_directory_only_by_distinct_names() {
    let rig = Rig::new(1, "");
    let a = rig.serve_node("a", NODE_A);
    let refused = |extra: &[&str]| {
        let mut args = vec!["--config", rig.config.to_str().unwrap()];
        args.extend(extra);
        let output = rig
            .s
            .serve_command(&format!("{NODE_B}:0"), &args)
            .output()
            .unwrap();
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let same_name = refused(&["--node", "a"]);
    assert!(
        same_name.contains("a vprov serve named \"a\"") && same_name.contains("another name"),
        "{same_name}"
    );
    let unnamed = refused(&[]);
    assert!(unnamed.contains("served by named nodes"), "{unnamed}");
    let bad = refused(&["--node", "../x"]);
    assert!(bad.contains("node name"), "{bad}");
    let b = rig.serve_node("b", NODE_B);
    assert_eq!(a.stop(), 0);
    assert_eq!(b.stop(), 0);
}
