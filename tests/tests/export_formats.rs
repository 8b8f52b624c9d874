//! End to end: the key export plugins behind `vprov keys export` — Intel's setup.bin
//! (export-usb) read back with `vprov keys inspect-setupbin`, and the printable PDF
//! sheet (export-print) read back with poppler's `pdftotext`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use vprov_tests::Sandbox;

const PASSWORD: &str = "Prov!sion1ng-Pass";

/// A store with `count` keys, the provisioning password, and both export plugins.
fn sandbox(count: u32) -> Sandbox {
    let s = Sandbox::default();
    s.run(&["keys", "generate", "--count", &count.to_string()])
        .ok();
    s.run_with_stdin(&["password", "set", "--stdin"], &format!("{PASSWORD}\n"))
        .ok();
    s.install_plugin("export_usb", "export-usb.so");
    s.install_plugin("export_print", "export-print.so");
    s
}

fn export(s: &Sandbox, format: &str, out: &Path, extra: &[&str]) -> vprov_tests::Run {
    let mut args = vec![
        "keys", "export", "--batch", "1", "--format", format, "--out",
    ];
    args.push(out.to_str().unwrap());
    args.extend(extra);
    s.run(&args)
}

/// (PID, PPS) of every key, dashes removed, in issue order.
fn keys(s: &Sandbox) -> Vec<(String, String)> {
    let listed = s
        .run(&["keys", "list", "--reveal", "--format", "json"])
        .json();
    listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            let bare = |v: &Value| v.as_str().unwrap().replace('-', "");
            (bare(&k["pid"]), bare(&k["pps"]))
        })
        .collect()
}

fn inspect(s: &Sandbox, file: &Path, reveal: bool) -> Value {
    let mut args = vec![
        "keys",
        "inspect-setupbin",
        file.to_str().unwrap(),
        "--format",
        "json",
    ];
    if reveal {
        args.push("--reveal");
    }
    s.run(&args).json()
}

fn entry<'a>(record: &'a Value, id: &str) -> &'a str {
    record["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == id)
        .unwrap_or_else(|| panic!("no {id} in {record}"))["value"]
        .as_str()
        .unwrap()
}

fn round_trip(count: u32) {
    let s = sandbox(count);
    let out = s.dir.path().join("setup.bin");
    let printed = export(&s, "setupbin", &out, &["--option", "server=10.1.2.3"]).ok();
    assert!(
        printed.contains(&format!("exported {count} pairs")),
        "{printed}"
    );
    assert_eq!(
        std::fs::metadata(&out).unwrap().len(),
        512 * (1 + u64::from(count))
    );
    let file = inspect(&s, &out, true);
    assert_eq!(file["version"], 2);
    assert_eq!(file["consumable"], true);
    assert_eq!(file["consumed"], 0);
    let records = file["records"].as_array().unwrap();
    let expected = keys(&s);
    assert_eq!(records.len(), expected.len());
    for (i, (record, (pid, pps))) in records.iter().zip(&expected).enumerate() {
        assert_eq!(record["number"], i + 1);
        assert_eq!(record["scrambled"], true);
        assert_eq!(entry(record, "2.1"), pid);
        assert_eq!(entry(record, "2.2"), pps);
        assert_eq!(entry(record, "1.1"), "admin");
        assert_eq!(entry(record, "1.2"), PASSWORD);
        assert_eq!(entry(record, "1.3"), "1");
        assert_eq!(entry(record, "2.17"), "10.1.2.3");
        assert_eq!(entry(record, "2.18"), "9971");
    }
    // Exported keys stay usable.
    let states = s.run(&["keys", "list", "--format", "json"]).json();
    assert!(states
        .as_array()
        .unwrap()
        .iter()
        .all(|k| k["state"] == "available"));
}

#[test]
fn a_setupbin_with_one_pair_round_trips() {
    round_trip(1);
}

#[test]
fn a_setupbin_with_two_pairs_round_trips() {
    round_trip(2);
}

#[test]
fn a_setupbin_with_twenty_thousand_pairs_round_trips() {
    round_trip(20_000);
}

#[test]
fn inspect_masks_secrets_and_refuses_broken_files() {
    let s = sandbox(1);
    let out = s.dir.path().join("setup.bin");
    export(&s, "setupbin", &out, &["--option", "server=10.1.2.3"]).ok();
    let masked = s
        .run(&["keys", "inspect-setupbin", out.to_str().unwrap()])
        .ok();
    let (pid, pps) = &keys(&s)[0];
    assert!(masked.contains(pid), "{masked}");
    assert!(!masked.contains(pps.as_str()), "{masked}");
    assert!(!masked.contains(PASSWORD), "{masked}");
    assert!(
        masked.contains("2.17 provisioning server address: 10.1.2.3"),
        "{masked}"
    );

    let mut bytes = std::fs::read(&out).unwrap();
    bytes.truncate(700);
    let broken = s.dir.path().join("broken.bin");
    std::fs::write(&broken, &bytes).unwrap();
    let err = s
        .run(&["keys", "inspect-setupbin", broken.to_str().unwrap()])
        .fails();
    assert!(err.contains("not a valid setup.bin"), "{err}");
    assert!(err.contains("announces 1 records"), "{err}");
    bytes[0] ^= 0xff;
    std::fs::write(&broken, &bytes).unwrap();
    let err = s
        .run(&["keys", "inspect-setupbin", broken.to_str().unwrap()])
        .fails();
    assert!(err.contains("unknown setup.bin file type"), "{err}");
}

#[test]
fn the_server_address_comes_from_the_configuration_and_is_required() {
    let s = sandbox(1);
    let out = s.dir.path().join("setup.bin");
    let err = export(&s, "setupbin", &out, &[]).fails();
    assert!(err.contains("server_address"), "{err}");
    assert!(!out.exists());
    let config = s.dir.path().join("vprov.toml");
    std::fs::write(
        &config,
        "[export]\nserver_address = \"192.168.7.1\"\nserver_port = 19971\n",
    )
    .unwrap();
    let mut args = vec!["--config", config.to_str().unwrap()];
    args.extend(["keys", "export", "--batch", "1", "--format", "setupbin"]);
    args.extend(["--out", out.to_str().unwrap()]);
    s.run(&args).ok();
    let record = &inspect(&s, &out, false)["records"][0];
    assert_eq!(entry(record, "2.17"), "192.168.7.1");
    assert_eq!(entry(record, "2.18"), "19971");
}

#[test]
fn an_existing_file_is_kept_and_a_failed_write_leaves_nothing() {
    let s = sandbox(2);
    let out = s.dir.path().join("setup.bin");
    std::fs::write(&out, b"precious").unwrap();
    let err = export(&s, "setupbin", &out, &["--option", "server=10.1.2.3"]).fails();
    assert!(err.contains("--force"), "{err}");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    export(
        &s,
        "setupbin",
        &out,
        &["--option", "server=10.1.2.3", "--option", "force=true"],
    )
    .ok();
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 3 * 512);

    let missing = s.dir.path().join("no-such-dir").join("setup.bin");
    let err = export(&s, "setupbin", &missing, &["--option", "server=10.1.2.3"]).fails();
    assert!(err.contains("writing"), "{err}");
    assert!(!missing.parent().unwrap().exists());
    let leftovers: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let audit = s.run(&["audit", "list", "--format", "json"]).json();
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["action"] == "keys.export" && a["detail"]["export"]["format"] == "setupbin"));
}

#[test]
fn a_printed_sheet_shows_every_pid_and_pps_of_a_500_pair_batch() {
    let s = sandbox(500);
    let out = s.dir.path().join("sheet.pdf");
    let printed = export(&s, "pdf", &out, &["--option", "paper=letter"]).ok();
    assert!(printed.contains("exported 500 pairs"), "{printed}");
    let text = Command::new("pdftotext")
        .args(["-layout", out.to_str().unwrap(), "-"])
        .output()
        .expect("pdftotext (poppler-utils, installed by scripts/install-deps.sh)");
    assert!(text.status.success(), "{text:?}");
    let text = String::from_utf8_lossy(&text.stdout);
    let listed = s
        .run(&["keys", "list", "--reveal", "--format", "json"])
        .json();
    for key in listed.as_array().unwrap() {
        let pid = key["pid"].as_str().unwrap();
        let pps = key["pps"].as_str().unwrap();
        assert!(text.contains(pid), "{pid} missing");
        assert!(text.contains(pps), "{pps} missing");
    }
    assert!(text.contains("pairs 1–"), "page ranges");
    assert!(text.contains("of 500"), "page ranges");
    assert!(text.contains("CONFIDENTIAL"));
    assert!(text.contains("Batch 1"));
}
