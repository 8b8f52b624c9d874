//! End to end: the real `vprov serve` provisions simulated AMT devices over real
//! loopback sockets (each device on its own 127.x.y.z address), with a real SQLite
//! store, and every failure lands in the alert log.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;
use vprov_tests::eventually;
use vprov_tests::rig::{Rig, MEBX_PASSWORD};
use vprov_tests::sim::Fault;

#[test]
fn fifty_devices_are_provisioned_concurrently() {
    let rig = Rig::new(50, "");
    let server = rig.serve();
    let specs = rig.specs(0..50, Ipv4Addr::new(127, 21, 0, 1));
    let uuids: Vec<String> = specs
        .iter()
        .map(|d| vprov_tests::sim::guid_text(&d.uuid))
        .collect();
    let sim = rig.simulate(&server, specs, 0.001);
    let reports = rig.wait_all(&sim, Duration::from_secs(120));
    for r in &reports {
        assert!(r.committed, "not provisioned: {r:?}");
        assert!(
            r.admin_password_changed && r.clock_synced && r.tls_enabled && r.certificate_installed
        );
        assert_eq!(
            r.psk_identity_seen.as_deref(),
            Some(r.pid.replace('-', "").as_str())
        );
    }
    let devices = eventually(Duration::from_secs(20), "50 device records", || {
        let d = rig.json(&[
            "devices",
            "list",
            "--state",
            "unmanaged",
            "--format",
            "json",
        ]);
        (d.len() == 50).then_some(d)
    });
    for d in &devices {
        assert!(
            uuids.contains(&d["uuid"].as_str().unwrap().to_string()),
            "{d}"
        );
        assert_eq!(d["amt_version"], "8.1.40");
        // Factory devices have no host name, and CommitChanges needs one: vprov
        // names them by its default rule.
        assert_eq!(
            d["host_name"],
            format!("amt-{}", d["uuid"].as_str().unwrap())
        );
    }
    let used = rig.json(&["keys", "list", "--state", "used", "--format", "json"]);
    assert_eq!(used.len(), 50);
    let errors: Vec<Value> = rig
        .alerts()
        .into_iter()
        .filter(|a| a["severity"] == "error" || a["severity"] == "critical")
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    // Device credentials and the CA key are sealed like every other secret.
    let bytes = rig.s.store_bytes();
    assert!(!bytes
        .windows(MEBX_PASSWORD.len())
        .any(|w| w == MEBX_PASSWORD.as_bytes()));
    assert_eq!(server.stop(), 0);
}

#[test]
fn a_configured_domain_is_set_on_the_device() {
    let rig = Rig::new(1, "domain = \"corp.example\"\n");
    let server = rig.serve();
    let mut specs = rig.specs(0..1, Ipv4Addr::new(127, 31, 0, 1));
    specs[0].host_name = specs[0].address_host_name();
    let host = specs[0].host_name.clone();
    let sim = rig.simulate(&server, specs, 0.001);
    let report = rig.wait_all(&sim, Duration::from_secs(60)).remove(0);
    assert!(report.committed, "{report:?}");
    assert_eq!(report.domain_name, "corp.example");
    assert_eq!(
        report.host_name, host,
        "the host name the technician set is kept"
    );
    assert_eq!(server.stop(), 0);
}

#[test]
fn a_pid_pps_mismatch_is_an_alert_and_provisions_nothing() {
    let rig = Rig::new(1, "");
    let server = rig.serve();
    let mut specs = rig.specs(0..1, Ipv4Addr::new(127, 22, 0, 1));
    specs[0].fault = Some(Fault::WrongPps);
    let pid = specs[0].pid;
    let _sim = rig.simulate(&server, specs, 0.001);
    let alert = rig.wait_for_alert("PID/PPS mismatch");
    assert_eq!(alert["pid"], pid.dashed());
    assert_eq!(alert["address"], "127.22.0.1");
    assert_eq!(rig.key_state(&pid), "available");
    assert!(rig.devices().is_empty());
    assert_eq!(server.stop(), 0);
}

#[test]
fn a_wrong_mebx_password_is_an_alert() {
    let rig = Rig::new(1, "");
    let server = rig.serve();
    let mut specs = rig.specs(0..1, Ipv4Addr::new(127, 23, 0, 1));
    specs[0].fault = Some(Fault::WrongPassword);
    let pid = specs[0].pid;
    let _sim = rig.simulate(&server, specs, 0.001);
    rig.wait_for_alert("refused the provisioning password");
    assert_eq!(rig.key_state(&pid), "available");
    assert!(rig.devices().is_empty());
    assert_eq!(server.stop(), 0);
}

#[test]
fn a_uuid_mismatch_stops_the_job() {
    let rig = Rig::new(1, "");
    let server = rig.serve();
    let mut specs = rig.specs(0..1, Ipv4Addr::new(127, 24, 0, 1));
    specs[0].fault = Some(Fault::UuidMismatch);
    let pid = specs[0].pid;
    let sim = rig.simulate(&server, specs, 0.001);
    rig.wait_for_alert("UUID mismatch");
    assert_eq!(rig.key_state(&pid), "available");
    assert!(rig.devices().is_empty());
    assert!(
        !sim.reports()[0].admin_password_changed,
        "nothing changed on the device"
    );
    assert_eq!(server.stop(), 0);
}

#[test]
fn a_step_error_and_a_device_dying_mid_job_are_alerts_naming_the_step() {
    let rig = Rig::new(2, "");
    let server = rig.serve();
    let mut specs = rig.specs(0..2, Ipv4Addr::new(127, 25, 0, 1));
    specs[0].fault = Some(Fault::Error {
        method: "CommitChanges".into(),
        code: 38,
    });
    specs[1].fault = Some(Fault::Drop {
        method: "GenerateKeyPair".into(),
    });
    let pids = [specs[0].pid, specs[1].pid];
    let _sim = rig.simulate(&server, specs, 0.001);
    let a = rig.wait_for_alert("CommitChanges");
    assert!(
        a["message"]
            .as_str()
            .unwrap()
            .contains("FLASH_WRITE_LIMIT_EXCEEDED"),
        "{a}"
    );
    rig.wait_for_alert("GenerateKeyPair");
    for pid in &pids {
        assert_eq!(rig.key_state(pid), "available");
    }
    assert!(rig.devices().is_empty());
    assert_eq!(server.stop(), 0);
}

#[test]
fn a_used_pid_saying_hello_again_is_refused() {
    let rig = Rig::new(1, "");
    let server = rig.serve();
    let first = rig.specs(0..1, Ipv4Addr::new(127, 26, 0, 1));
    let pid = first[0].pid;
    let sim = rig.simulate(&server, first, 0.001);
    assert!(rig.wait_all(&sim, Duration::from_secs(60))[0].committed);
    eventually(Duration::from_secs(10), "device record", || {
        (rig.devices().len() == 1).then_some(())
    });
    // Another device typed the same pair.
    let second = rig.specs(0..1, Ipv4Addr::new(127, 26, 1, 1));
    let _sim2 = rig.simulate(&server, second, 0.001);
    let alert = rig.wait_for_alert("already used");
    assert_eq!(alert["pid"], pid.dashed());
    assert_eq!(rig.devices().len(), 1);
    assert_eq!(server.stop(), 0);
}

/// Kills the server (SIGKILL) while a job waits on `method`, restarts it, and checks
/// that the device ends provisioned with a credential vprov holds, the PID used once.
fn crash_and_resume_at(method: &str, second_octet: u8) {
    let rig = Rig::new(1, "");
    let server = rig.serve();
    let mut specs = rig.specs(0..1, Ipv4Addr::new(127, second_octet, 0, 1));
    specs[0].fault = Some(Fault::HangOnce {
        method: method.into(),
    });
    let pid = specs[0].pid;
    // Slower hellos, so the device is still saying hello after the restart.
    let sim = rig.simulate(&server, specs, 0.01);
    eventually(
        Duration::from_secs(30),
        "the job to reach the hanging call",
        || {
            let r = &sim.reports()[0];
            let reached = match method {
                "GetUuid" => r.psk_identity_seen.is_some(),
                "GenerateKeyPair" => r.clock_synced,
                "CommitChanges" => r.tls_enabled,
                _ => unreachable!(),
            };
            reached.then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let hello_addr = server.hello_addr.to_string();
    server.kill();
    assert_eq!(
        rig.key_state(&pid),
        "available",
        "no PID is used before the device is"
    );

    let server = rig.serve_on(&hello_addr);
    let report = rig.wait_all(&sim, Duration::from_secs(90)).remove(0);
    assert!(report.committed, "{report:?}");
    let device = eventually(Duration::from_secs(30), "device record", || {
        rig.devices().into_iter().next()
    });
    assert_eq!(device["uuid"], report.uuid);
    assert_eq!(rig.key_state(&pid), "used");
    assert_eq!(server.stop(), 0);
}

#[test]
fn killed_before_the_credential_change_then_restarted() {
    crash_and_resume_at("GetUuid", 27);
}

#[test]
fn killed_after_the_credential_change_then_restarted() {
    crash_and_resume_at("GenerateKeyPair", 28);
}

#[test]
fn killed_at_commit_then_restarted() {
    crash_and_resume_at("CommitChanges", 29);
}

#[test]
fn killed_after_commit_then_resumed_on_restart() {
    // A long commit wait: the server is killed after the device committed (it no
    // longer sends hellos) but before the job recorded the device.
    let rig = Rig::new(1, "commit_wait_ms = 4000\n");
    let server = rig.serve();
    let specs = rig.specs(0..1, Ipv4Addr::new(127, 30, 0, 1));
    let pid = specs[0].pid;
    let sim = rig.simulate(&server, specs, 0.001);
    // Committed, but not yet confirmed by vprov (it waits commit_wait_ms first).
    eventually(Duration::from_secs(60), "the commit", || {
        sim.reports()[0].committed.then_some(())
    });
    let hello_addr = server.hello_addr.to_string();
    server.kill();
    assert_eq!(rig.key_state(&pid), "available");
    assert!(rig.devices().is_empty());

    let server = rig.serve_on(&hello_addr);
    eventually(
        Duration::from_secs(40),
        "the resumed job to record the device",
        || (rig.devices().len() == 1).then_some(()),
    );
    assert_eq!(rig.key_state(&pid), "used");
    assert_eq!(server.stop(), 0);
}
