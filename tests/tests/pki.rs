//! End to end: PKI remote configuration. The real `vprov serve` takes simulated AMT
//! 11.8, 15 and 19 devices from their v3 hellos to Admin Control Mode with a
//! commercial-style provisioning chain built here from a throwaway root, beside PSK
//! devices in the same run; hellos it cannot serve become aggregated alerts; a chain
//! firmware would refuse is refused at import.

use std::net::Ipv4Addr;
use std::time::Duration;

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage};
use openssl::x509::{X509NameBuilder, X509};
use vprov_tests::eventually;
use vprov_tests::rig::Rig;
use vprov_tests::sim::pki::{PkiSetup, TrustedHash};
use vprov_tests::sim::DeviceSpec;

/// A root, an intermediate and a vPro provisioning leaf for `cn`, signed with `md`.
struct Chain {
    root: X509,
    certs: Vec<X509>,
    leaf_key: PKey<Private>,
}

fn cert(
    cn: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    ca: bool,
    md: MessageDigest,
) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(
        BigNum::from_u32(rand::random::<u32>() >> 1)
            .unwrap()
            .to_asn1_integer()
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.map_or(&name, |(c, _)| c.subject_name()))
        .unwrap();
    b.set_pubkey(key).unwrap();
    b.set_not_before(Asn1Time::days_from_now(0).unwrap().as_ref())
        .unwrap();
    b.set_not_after(Asn1Time::days_from_now(365).unwrap().as_ref())
        .unwrap();
    if ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
    } else {
        b.append_extension(
            ExtendedKeyUsage::new()
                .server_auth()
                .other("2.16.840.1.113741.1.2.3")
                .build()
                .unwrap(),
        )
        .unwrap();
    }
    b.sign(issuer.map_or(key, |(_, k)| k), md).unwrap();
    b.build()
}

fn rsa() -> PKey<Private> {
    PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()
}

fn chain(cn: &str, md: MessageDigest) -> Chain {
    let (root_key, inter_key, leaf_key) = (rsa(), rsa(), rsa());
    let root = cert(
        "Throwaway Test Root",
        &root_key,
        None,
        true,
        MessageDigest::sha256(),
    );
    let inter = cert(
        "Throwaway Issuing CA",
        &inter_key,
        Some((&root, &root_key)),
        true,
        MessageDigest::sha256(),
    );
    let leaf = cert(cn, &leaf_key, Some((&inter, &inter_key)), false, md);
    Chain {
        certs: vec![leaf, inter, root.clone()],
        root,
        leaf_key,
    }
}

/// Writes the chain (root first, to show order does not matter) and the key; imports it.
fn import(rig: &Rig, name: &str, chain: &Chain) -> vprov_tests::Run {
    let dir = rig.s.dir.path();
    let mut pem = Vec::new();
    for c in chain.certs.iter().rev() {
        pem.extend(c.to_pem().unwrap());
    }
    let (chain_file, key_file) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&chain_file, pem).unwrap();
    std::fs::write(
        &key_file,
        chain.leaf_key.private_key_to_pem_pkcs8().unwrap(),
    )
    .unwrap();
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
            active: false,
            ..TrustedHash::sha256_of(&cert(
                "Inactive",
                &rsa(),
                None,
                true,
                MessageDigest::sha256(),
            ))
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
    // Every hello of a failing device adds to one alert.
    eventually(Duration::from_secs(30), "repeats counted", || {
        rig.alerts()
            .into_iter()
            .find(|a| a["address"] == "127.64.0.1" && a["count"].as_u64().unwrap_or(0) >= 3)
    });
    assert_eq!(
        rig.alerts()
            .iter()
            .filter(|a| a["address"] == "127.64.0.1")
            .count(),
        1
    );
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
