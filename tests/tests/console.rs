//! End to end in a real browser: headless Chromium, driven through chromedriver
//! (both installed by `scripts/install-deps.sh`), uses the console of a running
//! `vprov serve` the way an admin does — signs in, generates a batch, watches a
//! simulated device provision and appear in the unmanaged list without reloading,
//! moves it to managed (agentless) and powers it off. Screenshots of each step are
//! kept in `target/tmp/console-screenshots/`. On first run, the sign-in page says how
//! to create the first account. The provisioning certificates page imports a chain
//! (flagged as expiring), creates vprov's own root, downloads its setup.bin (audited)
//! and removes a chain after asking; a PKI device shows up as ACM through PKI.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use openssl::hash::MessageDigest;
use vprov_tests::rig::Rig;
use vprov_tests::sim::pki::{PkiSetup, TestChain, TrustedHash};
use vprov_tests::sim::DeviceSpec;
use vprov_tests::webdriver::Browser;
use vprov_tests::Sandbox;

const PASSWORD: &str = "console-admin-pw";
const WAIT: Duration = Duration::from_secs(60);

fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn an_admin_provisions_and_manages_a_device_from_the_console() {
    let rig = Rig::new(1, "");
    rig.s.add_admin("ann", "admin", PASSWORD);
    let server = rig.serve();
    let base = format!("https://{}", server.api_addr.expect("the API is on"));
    let shots = screenshots();
    let browser = Browser::start();
    let shot = |name: &str| browser.screenshot(shots.join(format!("{name}.png")));

    browser.goto(&format!("{base}/"));
    browser.find("#signin-name").send_keys("ann");
    browser.find("#signin-password").send_keys(PASSWORD);
    shot("1-sign-in");
    browser.find("#signin-submit").click();
    browser.wait_until("signed in", WAIT, |b| {
        b.text_of("#whoami").is_some_and(|t| t.contains("ann"))
    });
    browser.wait_until("dashboard counts", WAIT, |b| {
        b.text_of("#count-keys-available").as_deref() == Some("1")
    });
    shot("2-dashboard");

    // A new batch, generated with progress, appears in the list.
    browser.find("a[data-page=\"batches\"]").click();
    let count = browser.find("#generate-count");
    count.clear();
    count.send_keys("2500");
    browser.find("#generate-comment").send_keys("bench 4");
    browser.find("#generate-submit").click();
    browser.wait_until("the new batch", WAIT, |b| {
        b.find_all("tr[data-batch-id]").len() == 2
    });
    shot("3-batches");

    // The device provisions while the unmanaged list is open: it appears live.
    browser.find("a[data-page=\"unmanaged\"]").click();
    browser.find("#page-unmanaged");
    browser.execute("window.__sameDocument = true;", vec![]);
    let _sim = rig.simulate(
        &server,
        rig.specs(0..1, Ipv4Addr::new(127, 81, 0, 1)),
        0.001,
    );
    browser.wait_for("#unmanaged-table tr[data-uuid]", WAIT);
    let uuid = browser.execute(
        "return document.querySelector('#unmanaged-table tr[data-uuid]').dataset.uuid;",
        vec![],
    );
    let uuid = uuid.as_str().expect("a device UUID").to_string();
    assert_eq!(
        browser.execute("return window.__sameDocument === true;", vec![]),
        serde_json::Value::Bool(true),
        "the page was reloaded"
    );
    // The live list re-renders as events arrive: elements are found anew each time.
    let in_row = |css: &str| format!("#unmanaged-table tr[data-uuid=\"{uuid}\"] {css}");
    browser.wait_until("the device's address shown", WAIT, |b| {
        b.text_of(&in_row(""))
            .is_some_and(|t| t.contains("127.81.0.1"))
    });
    shot("4-unmanaged");

    // Select it and move it to managed, agentless.
    browser.click_on(&in_row("input[data-select]"), WAIT);
    browser.find("#move-mode").select_by_value("agentless");
    browser.find("#move-submit").click();
    browser.wait_until("the device left the unmanaged list", WAIT, |b| {
        b.find_all(&format!("#unmanaged-table tr[data-uuid=\"{uuid}\"]"))
            .is_empty()
    });
    browser.find("a[data-page=\"managed\"]").click();
    let managed = |css: &str| format!("#managed-table tr[data-uuid=\"{uuid}\"] {css}");
    browser.wait_until("the device managed agentless", WAIT, |b| {
        b.text_of(&managed(""))
            .is_some_and(|t| t.contains("agentless"))
    });

    // Power it off (the console asks for confirmation first).
    browser.auto_confirm();
    browser.click_on(&managed("button[data-power=\"off\"]"), WAIT);
    browser.wait_until("power off", WAIT, |b| {
        b.text_of(&managed("[data-power-state]")).as_deref() == Some("off")
    });
    shot("5-managed-off");

    // The device really is off, as AMT reports it to the CLI.
    let status = rig
        .run_configured(&["devices", "power", &uuid, "status"])
        .ok();
    assert_eq!(status.trim(), "off");
    let devices = rig.devices();
    assert_eq!(devices[0]["management_mode"], "agentless");
    let audit = rig.json(&["audit", "list", "--format", "json"]);
    assert!(audit
        .iter()
        .any(|e| e["actor"] == "api:ann" && e["action"] == "device.power"));
}

#[test]
fn the_sign_in_page_says_how_to_create_the_first_account() {
    let s = Sandbox::default();
    let server = s.serve("127.0.0.1:0", &[]);
    let base = format!("https://{}", server.api_addr.expect("the API is on"));
    let browser = Browser::start();
    browser.goto(&format!("{base}/"));
    browser.wait_until("the first-account hint", WAIT, |b| {
        b.text_of("#signin-hint")
            .is_some_and(|t| t.contains("vprov admin add NAME"))
    });
    browser.screenshot(screenshots().join("0-first-run-sign-in.png"));
    // (That the hint goes once an account exists: first_hour.rs, through the API.)
}

/// Signs `name` in on the console at `base`.
fn sign_in(browser: &Browser, base: &str, name: &str) {
    browser.goto(&format!("{base}/"));
    browser.find("#signin-name").send_keys(name);
    browser.find("#signin-password").send_keys(PASSWORD);
    browser.find("#signin-submit").click();
    browser.wait_until("signed in", WAIT, |b| {
        b.text_of("#whoami").is_some_and(|t| t.contains(name))
    });
}

#[test]
fn an_admin_manages_provisioning_certificates_from_the_console() {
    // The test chain lives a year: with a 400-day warning it is "expiring".
    let rig = Rig::new(
        1,
        "[pki]\ndefault_domain = \"example.com\"\nexpiry_warning_days = 400\n",
    );
    rig.s.add_admin("ann", "admin", PASSWORD);
    let server = rig.serve();
    let base = format!("https://{}", server.api_addr.expect("the API is on"));
    let shots = screenshots();
    let browser = Browser::start();
    sign_in(&browser, &base, "ann");
    browser.find("a[data-page=\"pki\"]").click();
    browser.wait_until("the empty chain list", WAIT, |b| {
        b.text_of("#chains-table tbody")
            .is_some_and(|t| t.contains("no provisioning chains"))
    });

    // Import a commercial-style chain from its PEM files.
    let commercial = TestChain::new("provisioning.example.com", MessageDigest::sha256()).unwrap();
    let (pem, key) = commercial.write(rig.s.dir.path(), "commercial").unwrap();
    browser.find("#chain-name").send_keys("commercial");
    browser.find("#chain-pem").send_keys(pem.to_str().unwrap());
    browser.find("#chain-key").send_keys(key.to_str().unwrap());
    browser.find("#chain-import-submit").click();
    let row = |name: &str| format!("#chains-table tr[data-chain=\"{name}\"]");
    browser.wait_for(&row("commercial"), WAIT);
    let root_sha256: String = commercial
        .root
        .digest(MessageDigest::sha256())
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let text = browser.text_of(&row("commercial")).unwrap();
    assert!(
        text.contains(&root_sha256) && text.contains("provisioning.example.com"),
        "{text}"
    );
    let expiry = format!("{} td[data-expiry]", row("commercial"));
    assert_eq!(
        browser.find(&expiry).attr("class").as_deref(),
        Some("expiring")
    );
    assert!(browser.text_of(&expiry).unwrap().contains("renew soon"));

    // And a PFX with its password, as a CA delivers one.
    let bought = TestChain::new("provisioning.corp.example.com", MessageDigest::sha256()).unwrap();
    let mut cas = openssl::stack::Stack::new().unwrap();
    for c in &bought.certs[1..] {
        cas.push(c.clone()).unwrap();
    }
    let pfx = openssl::pkcs12::Pkcs12::builder()
        .name("provisioning")
        .pkey(&bought.leaf_key)
        .cert(&bought.certs[0])
        .ca(cas)
        .build2("pfx-Passw0rd")
        .unwrap();
    let pfx_file = rig.s.dir.path().join("bought.pfx");
    std::fs::write(&pfx_file, pfx.to_der().unwrap()).unwrap();
    browser.find("#chain-name").send_keys("bought");
    browser
        .find("#chain-pfx")
        .send_keys(pfx_file.to_str().unwrap());
    // A wrong password is refused with the reason; the form keeps what was chosen.
    browser.find("#chain-password").send_keys("wrong-pw");
    browser.find("#chain-import-submit").click();
    browser.wait_until("the refusal", WAIT, |b| {
        b.text_of("#status")
            .is_some_and(|t| t.contains("wrong password"))
    });
    assert!(browser.find_all(&row("bought")).is_empty());
    browser.find("#chain-password").clear();
    browser.find("#chain-password").send_keys("pfx-Passw0rd");
    browser.find("#chain-import-submit").click();
    browser.wait_for(&row("bought"), WAIT);
    assert!(browser
        .text_of(&row("bought"))
        .unwrap()
        .contains("provisioning.corp.example.com"));

    // vprov's own root, and its setup.bin.
    browser.find("#own-root-name").send_keys("own");
    browser
        .find("#own-root-domain")
        .send_keys("lab.example.com");
    browser.find("#own-root-submit").click();
    browser.wait_for(&row("own"), WAIT);
    let own_expiry = format!("{} td[data-expiry]", row("own"));
    assert_eq!(browser.find(&own_expiry).attr("class"), None);
    browser.find("#setupbin-server").send_keys("127.0.0.9");
    browser.click_on(&format!("{} button[data-setupbin]", row("own")), WAIT);
    browser.wait_until("the setup.bin downloaded", WAIT, |b| {
        b.text_of("#status")
            .is_some_and(|t| t.contains("setup.bin for chain own downloaded"))
    });
    browser.screenshot(shots.join("6-certificates.png"));

    // Removing asks first.
    browser.execute("window.confirm = () => false;", vec![]);
    browser.click_on(&format!("{} button[data-remove-chain]", row("own")), WAIT);
    assert!(!browser.find_all(&row("own")).is_empty(), "removed unasked");
    browser.auto_confirm();
    browser.click_on(&format!("{} button[data-remove-chain]", row("own")), WAIT);
    browser.wait_until("the chain removed", WAIT, |b| {
        b.find_all(&row("own")).is_empty()
    });

    // A PKI device provisions with the imported chain: the device list says how.
    browser.find("a[data-page=\"unmanaged\"]").click();
    let spec = DeviceSpec::new_pki(
        PkiSetup {
            trusted: vec![TrustedHash::sha256_of(&commercial.root)],
            dns_suffix: "example.com".into(),
        },
        "19.0.5",
        Ipv4Addr::new(127, 82, 0, 1),
    );
    let _sim = rig.simulate(&server, vec![spec], 0.001);
    browser.wait_until("the PKI device listed", WAIT, |b| {
        b.text_of("#unmanaged-table td[data-provisioned-as]")
            .is_some_and(|t| t == "ACM, PKI (commercial)")
    });
    browser.screenshot(shots.join("7-pki-device.png"));

    let audit = rig.json(&["audit", "list", "--format", "json"]);
    for action in ["pki.chain_imported", "pki.setupbin", "pki.chain_removed"] {
        assert!(
            audit
                .iter()
                .any(|e| e["actor"] == "api:ann" && e["action"] == action),
            "{action}: {audit:?}"
        );
    }
    assert_eq!(server.stop(), 0);
}
