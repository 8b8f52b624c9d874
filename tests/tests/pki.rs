//! End to end: PKI remote configuration. The real `vprov serve` takes simulated AMT
//! 11.8, 15 and 19 devices from their v3 hellos to Admin Control Mode with a
//! commercial-style provisioning chain built here from a throwaway root, beside PSK
//! devices in the same run; hellos it cannot serve become aggregated alerts, and a
//! device failing the same way costs one job until it is retried or a chain is
//! imported; a chain firmware would refuse is refused at import.

use std::net::Ipv4Addr;
use std::time::Duration;

use openssl::hash::MessageDigest;
use openssl::x509::X509;
use vprov_tests::eventually;
use vprov_tests::rig::Rig;
use vprov_tests::sim::pki::{PkiSetup, TestChain, TrustedHash};
use vprov_tests::sim::DeviceSpec;

fn chain(cn: &str, md: MessageDigest) -> TestChain {
    TestChain::new(cn, md).unwrap()
}

/// Imports the chain from PEM files (root first: order does not matter).
fn import(rig: &Rig, name: &str, chain: &TestChain) -> vprov_tests::Run {
    let (chain_file, key_file) = chain.write(rig.s.dir.path(), name).unwrap();
    rig.s.run(&[
        "pki",
        "import",
        name,
        "--pem",
        chain_file.to_str().unwrap(),
        "--key",
        key_file.to_str().unwrap(),
    ])
}

/// A device trusting `root` (active) plus an inactive entry and a vendor hash.
fn pki_device(root: &X509, suffix: &str, version: &str, address: Ipv4Addr) -> DeviceSpec {
    let digicert_g2 = hex_bytes("cb3ccbb76031e5e0138f8dd39a23f9de47ffc35e43c1144cea27d46a5ab1cb5f");
    let trusted = vec![
        TrustedHash {
            algorithm: 2,
            hash: digicert_g2,
            active: true,
        },
        TrustedHash {
            algorithm: 3,
            hash: vec![0x5a; 48],
            active: false,
        },
        TrustedHash::sha256_of(root),
    ];
    DeviceSpec::new_pki(
        PkiSetup {
            trusted,
            dns_suffix: suffix.to_string(),
        },
        version,
        address,
    )
}

fn hex_bytes(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

/// uuid, control mode, provisioning path, chain, fingerprint length, PID.
type DeviceRow = (
    String,
    String,
    String,
    Option<String>,
    Option<usize>,
    Option<String>,
);

const PKI_CONFIG: &str =
    "[pki]\ndefault_domain = \"example.com\"\nsubnets = [\"127.63.0.0/16 = other.org\"]\n";

#[test]
fn amt_11_15_19_reach_admin_control_mode_beside_psk_devices() {
    let rig = Rig::new(2, PKI_CONFIG);
    let commercial = chain("provisioning.example.com", MessageDigest::sha256());
    let out = import(&rig, "commercial", &commercial).ok();
    assert!(out.contains("domain example.com"), "{out}");
    let server = rig.serve();
    let mut specs = rig.specs(0..2, Ipv4Addr::new(127, 61, 0, 1));
    for (i, version) in ["11.8.55", "15.0.35", "19.0.5"].iter().enumerate() {
        specs.push(pki_device(
            &commercial.root,
            "example.com",
            version,
            Ipv4Addr::new(127, 62, 0, 1 + i as u8),
        ));
    }
    let sim = rig.simulate(&server, specs, 0.001);
    let reports = rig.wait_all(&sim, Duration::from_secs(120));
    for r in &reports {
        assert!(r.committed && r.confirmed, "not provisioned: {r:?}");
    }
    for r in &reports[2..] {
        assert_eq!(r.control_mode, Some("acm"), "{r:?}");
        assert!(r.mebx_password_changed && r.admin_password_changed, "{r:?}");
        assert_eq!(r.pki_client_cn.as_deref(), Some("provisioning.example.com"));
        assert_eq!(r.pki_refusal, None);
    }
    let rows: Vec<DeviceRow> = eventually(Duration::from_secs(20), "five device records", || {
        let conn = rig.s.sqlite();
        let mut stmt = conn
            .prepare(
                "SELECT uuid, control_mode, provisioning_path, pki_chain,
                            length(setup_certificate_sha256), provisioned_pid
                     FROM devices ORDER BY provisioning_path, uuid",
            )
            .unwrap();
        let rows: Vec<_> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        (rows.len() == 5).then_some(rows)
    });
    let (pki, psk): (Vec<_>, Vec<_>) = rows.iter().partition(|r| r.2 == "pki");
    assert_eq!((pki.len(), psk.len()), (3, 2), "{rows:?}");
    for r in &pki {
        assert_eq!(r.1, "acm");
        assert_eq!(r.3.as_deref(), Some("commercial"));
        assert_eq!(r.4, Some(32), "setup certificate fingerprint recorded");
        assert_eq!(r.5, None, "a PKI device uses no PID");
    }
    for r in &psk {
        assert_eq!((r.1.as_str(), r.3.as_deref()), ("acm", None));
        assert!(r.5.is_some());
    }
    // The device list shows mode, path and chain.
    let listed = rig.devices();
    let pki_listed: Vec<_> = listed
        .iter()
        .filter(|d| d["provisioning_path"] == "pki")
        .collect();
    assert_eq!(pki_listed.len(), 3, "{listed:?}");
    for d in pki_listed {
        assert_eq!(d["control_mode"], "acm");
        assert_eq!(d["pki_chain"], "commercial");
        assert!(d["amt_version"].as_str().is_some(), "{d}");
    }
    let errors: Vec<_> = rig
        .alerts()
        .into_iter()
        .filter(|a| a["severity"] == "error" || a["severity"] == "critical")
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(server.stop(), 0);
}

#[test]
fn unmatched_hashes_and_wrong_domains_are_aggregated_alerts() {
    let rig = Rig::new(1, PKI_CONFIG);
    let commercial = chain("provisioning.example.com", MessageDigest::sha256());
    import(&rig, "commercial", &commercial).ok();
    let server = rig.serve();
    let stranger = chain("provisioning.example.com", MessageDigest::sha256());
    let specs = vec![
        // Trusts only roots vprov has no chain for.
        pki_device(
            &stranger.root,
            "example.com",
            "15.0.35",
            Ipv4Addr::new(127, 64, 0, 1),
        ),
        // vprov's rule for 127.63.0.0/16 says other.org: no chain fits.
        pki_device(
            &commercial.root,
            "other.org",
            "15.0.35",
            Ipv4Addr::new(127, 63, 0, 1),
        ),
        // vprov assumes example.com, but the device's PKI DNS suffix is another: the
        // device refuses the chain in the handshake.
        pki_device(
            &commercial.root,
            "corp.example.net",
            "11.8.55",
            Ipv4Addr::new(127, 65, 0, 1),
        ),
    ];
    let sim = rig.simulate(&server, specs, 0.001);
    let no_match =
        rig.wait_for_alert("no configured provisioning chain has a root the device trusts");
    let message = no_match["message"].as_str().unwrap();
    assert!(message.contains("DigiCert Global Root G2"), "{message}");
    assert_eq!(no_match["address"], "127.64.0.1");
    let mismatch = rig.wait_for_alert("do not fit its DNS suffix other.org");
    assert_eq!(mismatch["address"], "127.63.0.1");
    let refused = rig.wait_for_alert("refused the provisioning chain");
    assert_eq!(refused["address"], "127.65.0.1");
    // The failing devices keep saying hello; they wait out the back-off, so their
    // alerts stay one each, seen once.
    let hellos = sim.reports()[0].hellos_sent;
    eventually(Duration::from_secs(60), "three more hellos", || {
        (sim.reports()[0].hellos_sent >= hellos + 3).then_some(())
    });
    let repeats: Vec<_> = rig
        .alerts()
        .into_iter()
        .filter(|a| a["address"] == "127.64.0.1")
        .collect();
    assert_eq!(repeats.len(), 1, "{repeats:?}");
    assert_eq!(repeats[0]["count"], 1, "{repeats:?}");
    let reports = sim.reports();
    assert!(reports.iter().all(|r| !r.committed), "{reports:?}");
    assert!(
        reports[2]
            .pki_refusal
            .as_deref()
            .is_some_and(|w| w.contains("DNS suffix")),
        "{:?}",
        reports[2]
    );
    assert!(rig.devices().is_empty());
    assert_eq!(server.stop(), 0);
}

/// The provisioning alerts about one device.
fn job_alerts(rig: &Rig, uuid: &str) -> Vec<serde_json::Value> {
    rig.alerts()
        .into_iter()
        .filter(|a| a["source"] == "provisioning" && a["device_uuid"] == uuid)
        .collect()
}

#[test]
fn a_pki_device_failing_the_same_way_costs_one_job_and_one_alert_until_retried() {
    let rig = Rig::new(1, &format!("retry_backoff_ms = 600000\n{PKI_CONFIG}"));
    let commercial = chain("provisioning.example.com", MessageDigest::sha256());
    import(&rig, "commercial", &commercial).ok();
    let server = rig.serve();
    // The device trusts only a root vprov has no chain for (yet).
    let stranger = chain("provisioning.example.com", MessageDigest::sha256());
    let spec = pki_device(
        &stranger.root,
        "example.com",
        "15.0.35",
        Ipv4Addr::new(127, 68, 0, 1),
    );
    let sim = rig.simulate(&server, vec![spec], 0.001);
    let uuid = sim.reports()[0].uuid.clone();
    let first = eventually(Duration::from_secs(60), "the failure alert", || {
        job_alerts(&rig, &uuid).into_iter().next()
    });
    let message = first["message"].as_str().unwrap();
    assert!(
        message.contains("no configured provisioning chain")
            && message.contains(&format!("vprov devices retry {uuid}")),
        "{message}"
    );
    // The device keeps saying hello; none of those hellos starts a job.
    let hellos = sim.reports()[0].hellos_sent;
    eventually(Duration::from_secs(60), "ten more hellos", || {
        (sim.reports()[0].hellos_sent >= hellos + 10).then_some(())
    });
    let alerts = job_alerts(&rig, &uuid);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["count"], 1, "{alerts:?}");

    // An admin's retry: the next hello runs a job at once; the same failure adds to
    // the one alert's count.
    let retried = rig.s.run(&["devices", "retry", &uuid]).ok();
    assert!(retried.contains("starts a job at once"), "{retried}");
    let again = eventually(Duration::from_secs(60), "the retried job", || {
        let alerts = job_alerts(&rig, &uuid);
        (alerts.len() == 1 && alerts[0]["count"] == 2).then_some(alerts)
    });
    assert_eq!(again[0]["id"], first["id"]);

    // The missing chain arrives: the device's next hello is served without a retry.
    import(&rig, "stranger", &stranger).ok();
    let report = rig.wait_all(&sim, Duration::from_secs(60)).remove(0);
    assert!(report.committed && report.confirmed, "{report:?}");
    let device = eventually(Duration::from_secs(20), "device record", || {
        rig.devices().into_iter().next()
    });
    assert_eq!(device["pki_chain"], "stranger");
    let after = rig.s.run(&["devices", "retry", &uuid]).ok();
    assert!(after.contains("is not waiting"), "{after}");
    assert_eq!(server.stop(), 0);
}

#[test]
fn a_sha1_chain_is_refused_at_import() {
    let rig = Rig::new(1, "");
    let sha1 = chain("provisioning.example.com", MessageDigest::sha1());
    let err = import(&rig, "old", &sha1).fails();
    assert!(
        err.contains("SHA-1") && err.contains("nothing was imported"),
        "{err}"
    );
    assert!(rig.json(&["pki", "list", "--format", "json"]).is_empty());
    // The same chain signed with SHA-256 is taken, and listed with its root hashes.
    let good = chain("provisioning.example.com", MessageDigest::sha256());
    import(&rig, "good", &good).ok();
    let listed = rig.json(&["pki", "list", "--format", "json"]);
    let root_sha256: String = good
        .root
        .digest(MessageDigest::sha256())
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["root_sha256"], root_sha256);
    assert_eq!(listed[0]["certificates"].as_array().unwrap().len(), 3);
}

#[test]
fn vprovs_own_root_reaches_a_device_through_a_setup_bin() {
    let rig = Rig::new(1, PKI_CONFIG);
    let out = rig
        .s
        .run(&["pki", "create-root", "own", "--domain", "example.com"])
        .ok();
    assert!(out.contains("provisioning.example.com"), "{out}");
    let file = rig.s.dir.path().join("setup.bin");
    let server = rig.serve();
    let hello = server.hello_addr;
    let std::net::SocketAddr::V4(hello_v4) = hello else {
        panic!("{hello}")
    };
    rig.s
        .run(&[
            "pki",
            "setupbin",
            "own",
            "--output",
            file.to_str().unwrap(),
            "--server",
            &hello_v4.ip().to_string(),
            "--port",
            &hello.port().to_string(),
        ])
        .ok();
    let inspected = rig
        .s
        .run(&["keys", "inspect-setupbin", file.to_str().unwrap()])
        .ok();
    assert!(
        inspected.contains("trusted root certificate hash"),
        "{inspected}"
    );
    assert!(inspected.contains("PKI DNS suffix"), "{inspected}");
    // The technician's USB touch: the factory device takes the record.
    let bin = setupbin::SetupBin::decode(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(bin.version, 3);
    let (setup, mebx) = PkiSetup::from_setup_bin(&bin.records[0]).unwrap();
    assert_eq!(setup.dns_suffix, "example.com");
    let mut spec = DeviceSpec::new_pki(setup, "19.0.5", Ipv4Addr::new(127, 66, 0, 1));
    spec.mebx_password = mebx;
    let sim = rig.simulate(&server, vec![spec], 0.001);
    let report = rig.wait_all(&sim, Duration::from_secs(60)).remove(0);
    assert!(report.committed && report.confirmed, "{report:?}");
    assert_eq!(report.control_mode, Some("acm"));
    let device = eventually(Duration::from_secs(20), "device record", || {
        rig.devices().into_iter().next()
    });
    assert_eq!(device["pki_chain"], "own");
    assert_eq!(device["control_mode"], "acm");
    assert_eq!(server.stop(), 0);
}

#[test]
fn a_pki_job_killed_after_commit_is_finished_on_restart() {
    // A long commit wait: the server is killed after the device committed (it sends
    // no more hellos) but before the job recorded it.
    let rig = Rig::new(1, &format!("commit_wait_ms = 4000\n{PKI_CONFIG}"));
    let commercial = chain("provisioning.example.com", MessageDigest::sha256());
    import(&rig, "commercial", &commercial).ok();
    let server = rig.serve();
    let spec = pki_device(
        &commercial.root,
        "example.com",
        "15.0.35",
        Ipv4Addr::new(127, 67, 0, 1),
    );
    let sim = rig.simulate(&server, vec![spec], 0.001);
    eventually(Duration::from_secs(60), "the commit", || {
        sim.reports()[0].committed.then_some(())
    });
    let hello_addr = server.hello_addr.to_string();
    server.kill();
    assert!(rig.devices().is_empty());
    let server = rig.serve_on(&hello_addr);
    let device = eventually(Duration::from_secs(40), "the resumed job", || {
        rig.devices().into_iter().next()
    });
    assert_eq!(device["provisioning_path"], "pki");
    assert_eq!(device["pki_chain"], "commercial");
    let fingerprint: usize = rig
        .s
        .sqlite()
        .query_row(
            "SELECT length(setup_certificate_sha256) FROM devices",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(fingerprint, 32);
    assert_eq!(server.stop(), 0);
}

#[test]
fn chains_over_the_api_with_roles_and_refusals() {
    use vprov_tests::api::ApiClient;
    let rig = Rig::new(1, "");
    rig.s.add_admin("ann", "admin", "ann-the-admin-pw");
    rig.s.add_admin("olaf", "operator", "olaf-operates-pw");
    let server = rig.serve();
    let client = ApiClient::new(&rig.s, server.api_addr.expect("the API is on"));
    let ann = client.sign_in("ann", "ann-the-admin-pw");
    let olaf = client.sign_in("olaf", "olaf-operates-pw");
    let good = chain("provisioning.example.com", MessageDigest::sha256());
    let pem: String = good
        .certs
        .iter()
        .map(|c| String::from_utf8(c.to_pem().unwrap()).unwrap())
        .collect();
    let key_pem = String::from_utf8(good.leaf_key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let body = serde_json::json!({ "name": "corp", "pem": pem, "key_pem": key_pem });
    assert_eq!(olaf.post("/api/v1/pki/chains", body.clone()).status, 403);
    let created = ann.post("/api/v1/pki/chains", body);
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.json["domain"], "example.com");
    let sha1 = chain("provisioning.example.com", MessageDigest::sha1());
    let sha1_pem: String = sha1
        .certs
        .iter()
        .map(|c| String::from_utf8(c.to_pem().unwrap()).unwrap())
        .collect();
    let refused = ann.post(
        "/api/v1/pki/chains",
        serde_json::json!({
            "name": "old",
            "pem": sha1_pem,
            "key_pem": String::from_utf8(sha1.leaf_key.private_key_to_pem_pkcs8().unwrap()).unwrap(),
        }),
    );
    assert_eq!(refused.status, 422);
    assert!(refused.error().contains("SHA-1"), "{refused:?}");
    let listed = olaf.get("/api/v1/pki/chains");
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json.as_array().unwrap().len(), 1);
    assert_eq!(listed.json[0]["expires_soon"], false, "{:?}", listed.json);

    // vprov's own root, and the setup.bin that makes devices trust it: admins only,
    // audited (it carries the provisioning password).
    let own = serde_json::json!({ "name": "own", "domain": "Corp.Example.org." });
    assert_eq!(olaf.post("/api/v1/pki/own-root", own.clone()).status, 403);
    let bad_domain = ann.post(
        "/api/v1/pki/own-root",
        serde_json::json!({ "name": "own", "domain": "localhost" }),
    );
    assert_eq!(bad_domain.status, 400, "{bad_domain:?}");
    let created = ann.post("/api/v1/pki/own-root", own);
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.json["common_name"], "provisioning.corp.example.org");
    let target = serde_json::json!({ "server": "127.0.0.9", "port": 9971 });
    let path = "/api/v1/pki/chains/own/setupbin";
    assert_eq!(olaf.post(path, target.clone()).status, 403);
    assert_eq!(
        ann.post("/api/v1/pki/chains/nope/setupbin", target.clone())
            .status,
        404
    );
    // No address configured ([export] server_address) and none given.
    let no_server = ann.post(path, serde_json::json!({}));
    assert_eq!(no_server.status, 400, "{no_server:?}");
    assert!(no_server.error().contains("server"), "{no_server:?}");
    let file = ann.post(path, target);
    assert_eq!(file.status, 200, "{file:?}");
    assert_eq!(
        file.header("content-disposition"),
        Some("attachment; filename=\"setup.bin\"")
    );
    let bin = setupbin::SetupBin::decode(&file.bytes).unwrap();
    let (setup, mebx) = PkiSetup::from_setup_bin(&bin.records[0]).unwrap();
    assert_eq!(setup.dns_suffix, "corp.example.org");
    assert_eq!(
        Some(setup.trusted[0].hash.clone()),
        created.json["root_sha256"].as_str().map(hex_bytes)
    );
    assert_eq!(
        mebx,
        vprov_tests::rig::MEBX_PASSWORD,
        "the file sets the MEBx password"
    );
    assert_eq!(
        olaf.send("DELETE", "/api/v1/pki/chains/corp", None).status,
        403
    );
    assert_eq!(
        ann.send("DELETE", "/api/v1/pki/chains/corp", None).status,
        204
    );
    assert_eq!(
        ann.send("DELETE", "/api/v1/pki/chains/corp", None).status,
        404
    );
    let audit = rig.s.run(&["audit", "list", "--format", "json"]).ok();
    assert!(
        audit.contains("pki.chain_imported")
            && audit.contains("pki.chain_removed")
            && audit.contains("pki.setupbin"),
        "{audit}"
    );
    assert_eq!(server.stop(), 0);
}
