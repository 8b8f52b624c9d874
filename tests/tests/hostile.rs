//! End-to-end: hellos an attacker can forge. PIDs are printed on key sheets and sent
//! in clear, and so are device UUIDs: anybody on the provisioning network can say
//! hello with a real device's PID and UUID from an address of their own.

use std::net::Ipv4Addr;
use std::time::Duration;

use vprov_tests::eventually;
use vprov_tests::rig::Rig;
use vprov_tests::sim::{guid_text, hello, Fault};

/// A job for an address that never answers must not hold up the real device saying
/// hello from its own address (it used to, for as long as the connect timeout, and
/// again for every forged hello).
#[test]
fn a_forged_hello_from_a_silent_address_does_not_hold_up_the_real_device() {
    // A long connect timeout: a job stuck on the silent address lasts 30 s.
    let rig = Rig::new(1, "connect_timeout_ms = 30000\n");
    let server = rig.serve();
    let specs = rig.specs(0..1, Ipv4Addr::new(127, 44, 1, 1));
    let (pid, uuid) = (specs[0].pid, specs[0].uuid);
    // The attacker's address accepts TCP (the kernel's backlog) and never speaks TLS.
    let silent_ip = Ipv4Addr::new(127, 44, 0, 9);
    let silent = std::net::TcpListener::bind((silent_ip, rig.device_port)).unwrap();
    silent.set_nonblocking(true).unwrap();
    let forged = hello::encode(0, &uuid, pid.as_bytes());
    let forge = || {
        rig.rt
            .block_on(hello::send(silent_ip, server.hello_addr, &forged))
            .unwrap();
    };
    // The forged job is connecting to the silent address...
    let _held = eventually(Duration::from_secs(30), "the forged job", || {
        forge();
        silent.accept().ok()
    });
    // ...while the real device says hello (and the attacker keeps forging).
    let sim = rig.simulate(&server, specs, 0.001);
    let device = eventually(Duration::from_secs(25), "the real device recorded", || {
        forge();
        rig.devices().into_iter().next()
    });
    assert_eq!(device["uuid"], guid_text(&uuid));
    assert_eq!(device["address"], "127.44.1.1");
    // The forged job is still waiting for the silent address: it held nothing up.
    let silent_alerts: Vec<_> = rig
        .alerts()
        .into_iter()
        .filter(|a| a["address"] == silent_ip.to_string() && a["source"] == "provisioning")
        .collect();
    assert!(silent_alerts.is_empty(), "{silent_alerts:?}");
    assert!(sim.reports()[0].confirmed);
}

/// A device answering with XML nested 5,000 deep (which used to overflow a worker's
/// stack and abort the server) or with an enumeration that never ends (whose pages
/// used to be kept whole) costs an alert, not the server; other devices provision.
#[test]
fn hostile_device_replies_are_alerts_and_the_server_carries_on() {
    let rig = Rig::new(3, "");
    let server = rig.serve();
    let mut specs = rig.specs(0..3, Ipv4Addr::new(127, 45, 0, 1));
    specs[0].fault = Some(Fault::DeepXml {
        method: "GetUuid".into(),
    });
    specs[1].fault = Some(Fault::EndlessPull);
    let sim = rig.simulate(&server, specs, 0.001);
    let deep = rig.wait_for_alert("XML nested too deeply");
    assert_eq!(deep["address"], "127.45.0.1");
    let endless = rig.wait_for_alert("more than 4096 XML elements");
    assert_eq!(endless["address"], "127.45.0.2");
    eventually(
        Duration::from_secs(60),
        "the third device provisioned",
        || (sim.reports()[2].confirmed && rig.devices().len() == 1).then_some(()),
    );
    let reports = sim.reports();
    assert!(!reports[0].committed && !reports[1].committed);
    assert_eq!(server.stop(), 0, "the server is alive and stops cleanly");
}
