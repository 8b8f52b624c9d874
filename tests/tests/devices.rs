//! End to end: moving provisioned devices between the unmanaged and managed lists.

use std::time::Duration;

use vprov_core::device::{AmtSession, DeviceTimeouts};
use vprov_core::store::{Store, StoreOptions};
use vprov_tests::eventually;
use vprov_tests::rig::Rig;

/// Provisions one simulated device (kept running) and returns its UUID.
fn provisioned(rig: &Rig, second_octet: u8) -> (vprov_tests::sim::Simulator, String) {
    rig.provision_one(second_octet, |_| true)
}

/// Sets the device's admin credential to `new` directly over AMT (as another tool, or
/// a cut-off exchange, would), logging in with the credential vprov holds as current.
fn set_device_credential(rig: &Rig, store: &Store, uuid: &str, new: &str) {
    let access = store.device_access(uuid).unwrap().unwrap();
    let ca = store.ca_certificate().unwrap().unwrap();
    let addr = std::net::SocketAddr::new(access.address.parse().unwrap(), rig.device_port);
    rig.rt.block_on(async {
        let timeouts = DeviceTimeouts {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(5),
        };
        let mut s = AmtSession::connect_tls(
            addr,
            &ca,
            access.certificate_der.as_deref(),
            "admin",
            &access.password,
            timeouts,
        )
        .await
        .unwrap();
        let realm = s.general_settings().await.unwrap().digest_realm;
        s.set_admin_acl_entry_ex("admin", &realm, new)
            .await
            .unwrap();
    });
}

#[test]
fn a_provisioned_device_is_moved_to_managed_agentless_and_back() {
    let rig = Rig::new(1, "");
    let (_sim, uuid) = provisioned(&rig, 44);
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
    let (sim, uuid) = provisioned(&rig, 45);
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

#[test]
fn a_device_credential_is_changed_and_a_cut_off_change_settles_on_next_contact() {
    let rig = Rig::new(1, "");
    let (sim, uuid) = provisioned(&rig, 46);
    let cli = |args: &[&str]| rig.run_configured(args);
    let status = || cli(&["devices", "power", &uuid, "status"]);
    cli(&["devices", "manage", &uuid, "--agentless"]).ok();

    let out = cli(&["devices", "password", &uuid]).ok();
    assert!(out.contains("admin credential changed"), "{out}");
    assert_eq!(status().ok().trim(), "on", "the store and the device agree");
    let from_stdin = |input: &str| {
        let config = rig.config.to_str().unwrap();
        let args = ["--config", config, "devices", "password", &uuid, "--stdin"];
        rig.s.run_with_stdin(&args, input)
    };
    let err = from_stdin("short\n").fails();
    assert!(err.contains("at least 8"), "{err}");
    from_stdin("Chosen!Passw0rd\n").ok();
    assert_eq!(status().ok().trim(), "on");

    // A change cut off after the device took it: the store still holds the old
    // credential as current and the new one as pending.
    let mut store = Store::open(&StoreOptions::new(rig.s.data_dir())).unwrap();
    let access = store.device_access(&uuid).unwrap().unwrap();
    assert_eq!(access.password.as_str(), "Chosen!Passw0rd");
    assert!(access.pending_password.is_none());
    store
        .begin_password_change(&uuid, "Next!Passw0rd-7", "test")
        .unwrap();
    set_device_credential(&rig, &store, &uuid, "Next!Passw0rd-7");
    // The next contact finds the device on the new credential and records it.
    assert_eq!(status().ok().trim(), "on");
    let access = store.device_access(&uuid).unwrap().unwrap();
    assert_eq!(access.password.as_str(), "Next!Passw0rd-7");
    assert!(access.pending_password.is_none());

    // A change that never reached the device: the pending one is dropped.
    store
        .begin_password_change(&uuid, "Never!Sent-0001", "test")
        .unwrap();
    assert_eq!(status().ok().trim(), "on");
    let access = store.device_access(&uuid).unwrap().unwrap();
    assert_eq!(access.password.as_str(), "Next!Passw0rd-7");
    assert!(access.pending_password.is_none());
    drop(sim);
}

#[test]
fn managed_devices_are_checked_and_a_lost_one_raises_an_alert() {
    let rig = Rig::new(1, "[management]\ncheck_interval_ms = 200\n");
    let (sim, uuid) = provisioned(&rig, 47);
    rig.s.run(&["devices", "manage", &uuid, "--agentless"]).ok();
    let server = rig.serve();
    let reachable = |want: bool| {
        eventually(
            Duration::from_secs(30),
            &format!("reachable = {want}"),
            || (rig.devices()[0]["reachable"] == want).then_some(()),
        )
    };
    reachable(true);
    drop(sim);
    reachable(false);
    let alert = rig.wait_for_alert("managed device is unreachable");
    assert_eq!(alert["device_uuid"], uuid);
    assert_eq!(alert["severity"], "warning");
    assert_eq!(server.stop(), 0);
}

/// The reachability check settles a cut-off credential change like any other
/// contact (it used to try only the old credential and call the device unreachable).
#[test]
fn the_reachability_check_settles_a_cut_off_credential_change() {
    let rig = Rig::new(1, "[management]\ncheck_interval_ms = 200\n");
    let (_sim, uuid) = provisioned(&rig, 52);
    rig.s.run(&["devices", "manage", &uuid, "--agentless"]).ok();
    let mut store = Store::open(&StoreOptions::new(rig.s.data_dir())).unwrap();
    store
        .begin_password_change(&uuid, "Next!Passw0rd-8", "test")
        .unwrap();
    set_device_credential(&rig, &store, &uuid, "Next!Passw0rd-8");
    let server = rig.serve();
    let settled = eventually(Duration::from_secs(30), "the change settled", || {
        let access = store.device_access(&uuid).unwrap().unwrap();
        access.pending_password.is_none().then_some(access)
    });
    assert_eq!(settled.password.as_str(), "Next!Passw0rd-8");
    eventually(Duration::from_secs(30), "reachable", || {
        (rig.devices()[0]["reachable"] == true).then_some(())
    });
    assert!(rig
        .alerts()
        .iter()
        .all(|a| !a["message"].as_str().unwrap().contains("unreachable")));
    assert_eq!(server.stop(), 0);
}

#[test]
fn the_post_agentless_plugin_manages_new_devices_without_an_admin() {
    let rig = Rig::new(1, "");
    rig.s.install_plugin("post_agentless", "post-agentless.so");
    std::fs::write(
        rig.s.data_dir().join("plugins/plugins.toml"),
        "[instances.auto-manage]\nplugin = \"post-agentless\"\n",
    )
    .unwrap();
    let (_sim, uuid) = rig.provision_one(48, |d| d["state"] == "managed");
    let device = &rig.devices()[0];
    assert_eq!(device["uuid"], uuid);
    assert_eq!(device["management_mode"], "agentless");
}

/// A self-signed RSA certificate and key (no link to vprov's CA).
fn foreign_certificate() -> (
    openssl::x509::X509,
    openssl::pkey::PKey<openssl::pkey::Private>,
) {
    use openssl::{asn1::Asn1Time, hash::MessageDigest, pkey::PKey, rsa::Rsa, x509};
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "impostor").unwrap();
    let name = name.build();
    let mut b = x509::X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    (b.build(), key)
}

#[test]
fn a_device_presenting_a_foreign_certificate_is_refused_with_an_alert() {
    let rig = Rig::new(1, "");
    let (sim, uuid) = provisioned(&rig, 49);
    rig.s.run(&["devices", "manage", &uuid, "--agentless"]).ok();
    let address = rig.devices()[0]["address"].as_str().unwrap().to_string();
    drop(sim);
    // Something else now answers at the device's address, with its own certificate.
    let (cert, key) = foreign_certificate();
    let ctx = vprov_tests::sim::tls::cert_context(&cert, &std::sync::Arc::new(key)).unwrap();
    let addr: std::net::SocketAddr = format!("{address}:{}", rig.device_port).parse().unwrap();
    let _impostor = rig.rt.spawn(async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        let listener = socket.listen(16).unwrap();
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = vprov_tests::sim::tls::accept(&ctx, tcp).await;
        }
    });
    let err = rig
        .run_configured(&["devices", "power", &uuid, "status"])
        .fails();
    assert!(err.contains("device certificate rejected"), "{err}");
    let alert = rig.wait_for_alert("power status failed: device certificate rejected");
    assert_eq!(alert["device_uuid"], uuid);
}

/// Anyone with one PID/PPS pair can get a certificate from vprov's CA; a device
/// answering at X's address with such a certificate is not X (it used to be accepted
/// for power status, power off and a password change).
#[test]
fn a_device_presenting_another_devices_vprov_certificate_is_refused() {
    let rig = Rig::new(1, "");
    let (sim, uuid) = provisioned(&rig, 51);
    rig.s.run(&["devices", "manage", &uuid, "--agentless"]).ok();
    let address = rig.devices()[0]["address"].as_str().unwrap().to_string();
    drop(sim);
    // An impostor at the device's address, with a certificate vprov's CA issued for
    // the impostor's own key (as provisioning a device of its own would get it).
    let key = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let cert = {
        let mut store = Store::open(&StoreOptions::new(rig.s.data_dir())).unwrap();
        let ca = vprov_core::ca::CertificateAuthority::load_or_create(&mut store).unwrap();
        let public = key.rsa().unwrap().public_key_to_der_pkcs1().unwrap();
        let der = ca.issue_device_certificate(&public, "impostor").unwrap();
        openssl::x509::X509::from_der(&der).unwrap()
    };
    let ctx = vprov_tests::sim::tls::cert_context(&cert, &std::sync::Arc::new(key)).unwrap();
    let addr: std::net::SocketAddr = format!("{address}:{}", rig.device_port).parse().unwrap();
    let _impostor = rig.rt.spawn(async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        let listener = socket.listen(16).unwrap();
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = vprov_tests::sim::tls::accept(&ctx, tcp).await;
        }
    });
    let err = rig
        .run_configured(&["devices", "power", &uuid, "off"])
        .fails();
    assert!(
        err.contains("a certificate vprov did not issue to this device"),
        "{err}"
    );
    rig.wait_for_alert("power off failed: device certificate rejected");
}

#[test]
fn a_device_that_no_longer_accepts_the_stored_credential_raises_an_alert() {
    let rig = Rig::new(1, "");
    let (_sim, uuid) = provisioned(&rig, 50);
    rig.s.run(&["devices", "manage", &uuid, "--agentless"]).ok();
    // Someone changes the device's credential behind vprov's back.
    let store = Store::open(&StoreOptions::new(rig.s.data_dir())).unwrap();
    set_device_credential(&rig, &store, &uuid, "Changed!Elsewhere9");
    let err = rig.run_configured(&["devices", "inventory", &uuid]).fails();
    assert!(err.contains("refused the credentials"), "{err}");
    let alert = rig.wait_for_alert("inventory failed: device refused the credentials");
    assert_eq!(alert["device_uuid"], uuid);
    // vprov's record is unchanged: nothing was stored from the failed read.
    let err = rig
        .run_configured(&["devices", "inventory", &uuid, "--cached"])
        .fails();
    assert!(err.contains("no inventory stored"), "{err}");
}
