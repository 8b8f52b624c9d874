//! End-to-end: vprov provisions simulated devices of three firmware generations with
//! every firmware behaviour of `docs/protocol-notes.md` switched on (the simulator's
//! default), and a device that fails the same way on every hello costs one job and
//! one alert per back-off period, not one per hello.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;
use vprov_tests::eventually;
use vprov_tests::rig::Rig;
use vprov_tests::sim::{Fault, TlsAlert};

#[test]
fn amt_6_8_and_10_devices_provision_with_every_firmware_behaviour_on() {
    let rig = Rig::new(4, "");
    let server = rig.serve();
    let mut specs = rig.specs(0..4, Ipv4Addr::new(127, 41, 0, 1));
    // AMT 6.0: no GenerateKeyPair (vprov sends its own key with AddKey), and a TLS
    // stack that refuses ClientHellos above TLS 1.0 — one with protocol_version, one
    // with the bad_record_mac MeshCentral watches for.
    specs[0].amt_version = "6.0.40".into();
    specs[1].amt_version = "6.0.40".into();
    specs[1].behaviour.tls_intolerance_alert = TlsAlert::BadRecordMac;
    specs[2].amt_version = "8.1.40".into();
    // AMT 10 without an AMT instance in CIM_SoftwareIdentity: the version comes from
    // the HTTP Server header.
    specs[3].amt_version = "10.0.55".into();
    specs[3].behaviour.report_amt_identity = false;
    for spec in &specs {
        assert!(
            spec.host_name.is_empty(),
            "factory devices have no host name"
        );
    }
    let sim = rig.simulate(&server, specs, 0.001);
    let reports = rig.wait_all(&sim, Duration::from_secs(120));
    for r in &reports {
        assert!(r.committed && r.confirmed, "not provisioned: {r:?}");
        assert!(r.tls_enabled && r.lms_tls_enabled, "{r:?}");
        assert_eq!(r.host_name, format!("amt-{}", r.uuid), "{r:?}");
    }
    let devices = eventually(Duration::from_secs(30), "4 device records", || {
        let d = rig.devices();
        (d.len() == 4).then_some(d)
    });
    let version_of = |r: &vprov_tests::sim::DeviceReport| -> Value {
        devices
            .iter()
            .find(|d| d["uuid"] == r.uuid)
            .unwrap_or_else(|| panic!("{} not recorded", r.uuid))["amt_version"]
            .clone()
    };
    assert_eq!(version_of(&reports[0]), "6.0.40");
    assert_eq!(version_of(&reports[1]), "6.0.40");
    assert_eq!(version_of(&reports[2]), "8.1.40");
    assert_eq!(version_of(&reports[3]), "10.0.55");
    for d in &devices {
        assert_eq!(
            d["host_name"],
            format!("amt-{}", d["uuid"].as_str().unwrap())
        );
    }
    let errors: Vec<Value> = rig
        .alerts()
        .into_iter()
        .filter(|a| a["severity"] == "error" || a["severity"] == "critical")
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    // The key vprov generated for the AMT 6 devices is never stored.
    let bytes = rig.s.store_bytes();
    assert!(!bytes.windows(15).any(|w| w == b"-----BEGIN RSA "));
    assert_eq!(server.stop(), 0);
}

#[test]
fn a_configured_host_name_rule_names_devices_and_local_tls_can_stay_off() {
    let rig = Rig::new(
        1,
        "host_name_template = \"pc-{uuid8}\"\nlocal_tls = false\n",
    );
    let server = rig.serve();
    let specs = rig.specs(0..1, Ipv4Addr::new(127, 42, 0, 1));
    let sim = rig.simulate(&server, specs, 0.001);
    let report = rig.wait_all(&sim, Duration::from_secs(60)).remove(0);
    assert!(report.confirmed, "{report:?}");
    assert!(report.tls_enabled && !report.lms_tls_enabled, "{report:?}");
    assert_eq!(report.host_name, format!("pc-{}", &report.uuid[..8]));
    let device = eventually(Duration::from_secs(30), "the device record", || {
        rig.devices().into_iter().next()
    });
    assert_eq!(device["host_name"], report.host_name);
    assert_eq!(server.stop(), 0);
}

/// The provisioning alerts about one device.
fn job_alerts(rig: &Rig, uuid: &str) -> Vec<Value> {
    rig.alerts()
        .into_iter()
        .filter(|a| a["source"] == "provisioning" && a["device_uuid"] == uuid)
        .collect()
}

#[test]
fn a_device_failing_the_same_way_costs_one_job_and_one_alert_until_retried() {
    let rig = Rig::new(1, "retry_backoff_ms = 600000\n");
    let server = rig.serve();
    let mut specs = rig.specs(0..1, Ipv4Addr::new(127, 43, 0, 1));
    specs[0].fault = Some(Fault::Error {
        method: "CommitChanges".into(),
        code: 1,
    });
    let sim = rig.simulate(&server, specs, 0.001);
    let uuid = sim.reports()[0].uuid.clone();
    let first = eventually(Duration::from_secs(60), "the failure alert", || {
        job_alerts(&rig, &uuid).into_iter().next()
    });
    let message = first["message"].as_str().unwrap();
    assert!(message.contains("step CommitChanges"), "{message}");
    assert!(
        message.contains(&format!("vprov devices retry {uuid}")),
        "the alert says what to do: {message}"
    );
    // The device keeps saying hello; none of those hellos starts a job.
    let hellos = sim.reports()[0].hellos_sent;
    eventually(Duration::from_secs(60), "ten more hellos", || {
        (sim.reports()[0].hellos_sent >= hellos + 10).then_some(())
    });
    let alerts = job_alerts(&rig, &uuid);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["count"], 1, "{alerts:?}");

    // An admin's retry: the next hello runs a job at once, and the same failure
    // adds to the one alert's count.
    let retried = rig.s.run(&["devices", "retry", &uuid]).ok();
    assert!(retried.contains("starts a job at once"), "{retried}");
    let again = eventually(Duration::from_secs(60), "the retried job", || {
        let alerts = job_alerts(&rig, &uuid);
        (alerts.len() == 1 && alerts[0]["count"] == 2).then_some(alerts)
    });
    assert_eq!(again[0]["id"], first["id"]);
    let audit = rig.s.run(&["audit", "list", "--format", "json"]).json();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["action"] == "device.retry"),
        "{audit}"
    );
    let second = rig.s.run(&["devices", "retry", &uuid]).ok();
    assert!(
        second.contains("failed 1 time(s)"),
        "the retry started the count anew: {second}"
    );
    assert_eq!(server.stop(), 0);
}
