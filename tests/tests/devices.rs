//! End to end: moving provisioned devices between the unmanaged and managed lists.

use std::net::Ipv4Addr;
use std::time::Duration;

use vprov_tests::eventually;
use vprov_tests::rig::Rig;

#[test]
fn a_provisioned_device_is_moved_to_managed_agentless_and_back() {
    let rig = Rig::new(1, "");
    let server = rig.serve();
    let sim = rig.simulate(
        &server,
        rig.specs(0..1, Ipv4Addr::new(127, 44, 0, 1)),
        0.001,
    );
    assert!(rig.wait_all(&sim, Duration::from_secs(60))[0].committed);
    let uuid = eventually(Duration::from_secs(30), "device record", || {
        rig.devices()
            .first()
            .map(|d| d["uuid"].as_str().unwrap().to_string())
    });
    assert_eq!(server.stop(), 0);
    let s = &rig.s;

    let err = s.run(&["devices", "manage", &uuid]).fails();
    assert!(err.contains("--agentless"), "{err}");
    // An unknown UUID among them: nothing moves.
    let err = s
        .run(&[
            "devices",
            "manage",
            &uuid,
            "00000000-0000-0000-0000-000000000000",
            "--agentless",
        ])
        .fails();
    assert!(err.contains("no device with UUID 00000000"), "{err}");
    assert_eq!(rig.devices()[0]["state"], "unmanaged");

    let upper = uuid.to_ascii_uppercase();
    let out = s.run(&["devices", "manage", &upper, "--agentless"]).ok();
    assert!(
        out.contains("1 device(s) moved to managed (agentless)"),
        "{out}"
    );
    let managed = s
        .run(&["devices", "list", "--state", "managed", "--format", "json"])
        .json();
    assert_eq!(managed[0]["uuid"], uuid);
    assert_eq!(managed[0]["management_mode"], "agentless");
    let table = s.run(&["devices", "list"]).ok();
    assert!(table.contains("LAST CONTACT"), "{table}");

    s.run(&["devices", "unmanage", &uuid]).ok();
    assert_eq!(rig.devices()[0]["state"], "unmanaged");
    let audit = s.run(&["audit", "list", "--format", "json"]).json();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["action"].as_str().unwrap())
        .collect();
    assert_eq!(&actions[..2], ["device.unmanage", "device.manage"]);
    assert_eq!(audit[1]["actor"], "cli:tester");
}

#[test]
fn a_managed_device_is_powered_and_inventoried_over_verified_tls() {
    let rig = Rig::new(1, "");
    let server = rig.serve();
    let sim = rig.simulate(
        &server,
        rig.specs(0..1, Ipv4Addr::new(127, 45, 0, 1)),
        0.001,
    );
    assert!(rig.wait_all(&sim, Duration::from_secs(60))[0].committed);
    let uuid = eventually(Duration::from_secs(30), "device record", || {
        rig.devices()
            .first()
            .map(|d| d["uuid"].as_str().unwrap().to_string())
    });
    assert_eq!(server.stop(), 0);
    let power = |action: &str| rig.run_configured(&["devices", "power", &uuid, action]);

    let err = power("status").fails();
    assert!(err.contains("is not managed"), "{err}");
    rig.s.run(&["devices", "manage", &uuid, "--agentless"]).ok();

    assert_eq!(power("status").ok().trim(), "on");
    assert!(power("off")
        .ok()
        .contains("off requested; the device reports: off"));
    assert_eq!(power("status").ok().trim(), "off");
    // A reset needs a running host: the device refuses, and the error says so.
    let err = power("reset").fails();
    assert!(err.contains("RequestPowerStateChange"), "{err}");
    assert!(power("on").ok().contains("the device reports: on"));
    assert!(power("cycle").ok().contains("the device reports: on"));
    let device = &rig.devices()[0];
    assert!(device["last_contact_at"].is_string(), "{device}");
    let audit = rig.s.run(&["audit", "list", "--format", "json"]).json();
    let powered: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "device.power")
        .map(|a| a["detail"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(powered, ["cycle", "on", "reset", "off"]);

    // Inventory: read over AMT, stored with the device, shown again from the store.
    let err = rig
        .run_configured(&["devices", "inventory", &uuid, "--cached"])
        .fails();
    assert!(err.contains("no inventory stored"), "{err}");
    let read = rig
        .run_configured(&["devices", "inventory", &uuid, "--format", "json"])
        .json();
    let inv = &read["inventory"];
    assert_eq!(inv["amt_version"], "8.1.40");
    assert_eq!(inv["bios"]["manufacturer"], "Intel Corp.");
    assert_eq!(inv["bios"]["release_date"], "2012-03-14T00:00:00Z");
    assert_eq!(inv["processors"][0]["max_clock_mhz"], 3400);
    assert_eq!(inv["memory"].as_array().unwrap().len(), 2);
    assert_eq!(inv["memory"][0]["capacity_bytes"], 4u64 << 30);
    assert_eq!(inv["network"][0]["ip"], "127.45.0.1");
    assert!(inv["network"][0]["mac"]
        .as_str()
        .unwrap()
        .starts_with("00-1e-"));
    let cached = rig
        .run_configured(&[
            "devices",
            "inventory",
            &uuid,
            "--cached",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(cached["inventory"], *inv);
    let table = rig.run_configured(&["devices", "inventory", &uuid]).ok();
    assert!(
        table.contains("memory     4 GiB 1333 MHz Samsung"),
        "{table}"
    );

    // The device goes away: a clear error and an alert naming it.
    drop(sim);
    let err = power("status").fails();
    assert!(err.contains(&uuid), "{err}");
    let alert = rig.wait_for_alert("power status failed");
    assert_eq!(alert["device_uuid"], uuid);
}
