//! End to end: the `vprov` binary on a real SQLite store in a temporary directory.

use std::collections::HashSet;
use std::fs;

use serde_json::Value;
use vprov_core::keys::{Pid, Pps};
use vprov_tests::Sandbox;

fn generate(s: &Sandbox, count: u32) -> i64 {
    let out = s
        .run(&["keys", "generate", "--count", &count.to_string()])
        .ok();
    // "batch <id>: <n> keys generated"
    let id = out
        .strip_prefix("batch ")
        .and_then(|r| r.split(':').next())
        .unwrap_or_else(|| panic!("unexpected output {out:?}"));
    assert!(out.contains(&format!("{count} keys generated")), "{out}");
    id.parse().unwrap()
}

fn list(s: &Sandbox, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["keys", "list", "--format", "json"];
    args.extend_from_slice(extra);
    s.run(&args).json().as_array().unwrap().clone()
}

#[test]
fn generated_keys_list_reveal_and_validate() {
    let s = Sandbox::default();
    let batch = generate(&s, 25);
    let keys = list(&s, &["--batch", &batch.to_string()]);
    assert_eq!(keys.len(), 25);
    for k in &keys {
        assert!(k.get("pps").is_none(), "PPS shown without --reveal: {k}");
        assert_eq!(k["state"], "available");
        let pid = k["pid"].as_str().unwrap();
        assert_eq!(pid.len(), 9, "display form XXXX-XXXX: {pid}");
        assert!(pid.parse::<Pid>().is_ok());
    }

    let revealed = list(&s, &["--reveal"]);
    assert_eq!(revealed.len(), 25);
    for k in &revealed {
        let pps = k["pps"].as_str().unwrap();
        assert_eq!(pps.len(), 39, "display form with dashes: {pps}");
        assert!(pps.parse::<Pps>().is_ok());
        s.run(&["keys", "check", k["pid"].as_str().unwrap(), pps])
            .ok();
    }

    let audit = s.run(&["audit", "list", "--format", "json"]).json();
    assert_eq!(audit[0]["action"], "keys.reveal");
    assert_eq!(audit[0]["actor"], "cli:tester");
    assert_eq!(audit[0]["detail"]["count"], 25);
    let text = audit.to_string();
    for k in &revealed {
        assert!(!text.contains(&k["pps"].as_str().unwrap()[..9]));
    }

    let csv = s.run(&["keys", "list", "--format", "csv", "--reveal"]).ok();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("batch,pid,state,device_uuid,state_changed_at,pps")
    );
    assert_eq!(lines.count(), 25);

    let table = s.run(&["keys", "list"]).ok();
    assert_eq!(table.lines().count(), 26);
    assert!(!table.contains("PPS"));
}

#[test]
fn pids_are_unique_across_batches_and_batches_are_listed() {
    let s = Sandbox::default();
    let a = generate(&s, 2000);
    let b = generate(&s, 2000);
    assert_ne!(a, b);
    let pids: HashSet<String> = list(&s, &[])
        .iter()
        .map(|k| k["pid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(pids.len(), 4000);
    let batches = s.run(&["keys", "batches", "--format", "json"]).json();
    assert_eq!(batches.as_array().unwrap().len(), 2);
    assert_eq!(batches[1]["available"], 2000);
}

#[test]
fn keys_check_accepts_intel_example_and_names_the_bad_part() {
    let s = Sandbox::default();
    let ok = s
        .run(&[
            "keys",
            "check",
            "0000-037M",
            "NKLD-G5DC-RRNQ-E9YZ-ZIJL-7LFL-VJED-69XJ",
        ])
        .ok();
    assert!(ok.starts_with("valid"), "{ok}");
    s.run(&[
        "keys",
        "check",
        "0000037m",
        "nkldg5dcrrnqe9yzzijl7lflvjed69xj",
    ])
    .ok();
    s.run(&["keys", "check", "0000-037M"]).ok();

    let err = s.run(&["keys", "check", "0000-038M"]).fails();
    assert!(err.contains("PID check character"), "{err}");
    let err = s.run(&["keys", "check", "0000-37M"]).fails();
    assert!(err.contains("PID must have 8 characters"), "{err}");
    let err = s
        .run(&[
            "keys",
            "check",
            "0000-037M",
            "NKLD-G5DC-RRNQ-E9YZ-ZIJL-7LFL-VJED-69XK",
        ])
        .fails();
    assert!(err.contains("PPS group 8"), "{err}");
    assert!(!err.contains("69XK"), "the PPS must not be echoed: {err}");
    let err = s
        .run(&[
            "keys",
            "check",
            "0000-037M",
            "NKLD-G5DC-RRNQ-E9YZ-ZIJL-7LFL-VJED-69X!",
        ])
        .fails();
    assert!(err.contains("PPS character 32"), "{err}");
    // keys check needs no store.
    assert!(!s.data_dir().exists());
}

#[test]
fn revoke_by_pid_and_batch() {
    let s = Sandbox::default();
    let batch = generate(&s, 5);
    let keys = list(&s, &[]);
    let p0 = keys[0]["pid"].as_str().unwrap().to_string();

    let err = s.run(&["keys", "revoke", &p0, "0000-037M"]).fails();
    assert!(err.contains("unknown PID 0000-037M"), "{err}");
    assert_eq!(list(&s, &["--state", "available"]).len(), 5);

    let out = s
        .run(&["keys", "revoke", &p0.to_lowercase().replace('-', "")])
        .ok();
    assert!(out.contains("revoked"), "{out}");
    assert_eq!(list(&s, &["--state", "revoked"]).len(), 1);
    let out = s.run(&["keys", "revoke", &p0]).ok();
    assert!(out.contains("already revoked"), "{out}");

    let out = s
        .run(&["keys", "revoke", "--batch", &batch.to_string(), "--yes"])
        .ok();
    assert!(out.contains("4 available keys revoked"), "{out}");
    assert_eq!(list(&s, &["--state", "available"]).len(), 0);
    let err = s.run(&["keys", "revoke", "--batch", "99"]).fails();
    assert!(err.contains("no key batch with id 99"), "{err}");
    s.run(&["keys", "revoke"]).fails();
    // Revoked PIDs stay in the store: never deleted, never reissued.
    assert_eq!(list(&s, &[]).len(), 5);
}

#[test]
fn counts_out_of_range_are_refused() {
    let s = Sandbox::default();
    for bad in ["0", "1000001", "-5", "many"] {
        let err = s.run(&["keys", "generate", "--count", bad]).fails();
        assert!(err.contains("--count"), "{err}");
    }
}

#[test]
fn password_rules_status_and_sealing() {
    let s = Sandbox::default();
    let st = s.run(&["password", "status", "--format", "json"]).json();
    assert_eq!(st["set"], false);

    let err = s
        .run_with_stdin(&["password", "set", "--stdin"], "nouppercase1!\n")
        .fails();
    assert!(err.contains("upper-case"), "{err}");
    let err = s
        .run_with_stdin(&["password", "set", "--stdin"], "Has:Colon1\n")
        .fails();
    assert!(err.contains("forbids"), "{err}");
    assert!(!err.contains("Has:Colon1"), "{err}");
    // No terminal and no --stdin: a clear error, not a hang.
    let err = s.run(&["password", "set"]).fails();
    assert!(err.contains("--stdin"), "{err}");

    let password = "Corr3ct-Horse!Battery";
    let out = s
        .run_with_stdin(&["password", "set", "--stdin"], &format!("{password}\n"))
        .ok();
    assert_eq!(out.trim(), "provisioning password set");
    let st = s.run(&["password", "status", "--format", "json"]).json();
    assert_eq!(st["set"], true);
    assert!(st["changed_at"].is_string());

    generate(&s, 100);
    let revealed = list(&s, &["--reveal"]);
    let bytes = s.store_bytes();
    let contains = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(!contains(password));
    for k in revealed {
        let pps = k["pps"].as_str().unwrap();
        assert!(!contains(pps));
        assert!(!contains(&pps.replace('-', "")));
        assert!(!contains(&pps.replace('-', "")[..16]));
    }
}

/// Runs `processes` × `keys generate --count count` at the same time; all must succeed.
fn generate_concurrently(s: &Sandbox, processes: usize, count: u32) {
    let children: Vec<_> = (0..processes)
        .map(|_| {
            s.command()
                .args(["keys", "generate", "--count", &count.to_string()])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

#[test]
fn two_processes_write_one_store_at_once() {
    let s = Sandbox::default();
    generate(&s, 1); // create the store first so both see an existing one
    generate_concurrently(&s, 2, 3000);
    let pids: HashSet<String> = list(&s, &[])
        .iter()
        .map(|k| k["pid"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(pids.len(), 6001);
}

#[test]
fn two_processes_creating_a_new_store_agree_on_one_key() {
    let s = Sandbox::default();
    generate_concurrently(&s, 3, 10);
    assert_eq!(list(&s, &["--reveal"]).len(), 30);
}

#[test]
fn corrupt_and_foreign_databases_are_refused_untouched() {
    let s = Sandbox::default();
    fs::create_dir_all(s.data_dir()).unwrap();
    let db = s.data_dir().join("vprov.db");
    fs::write(&db, b"PK\x03\x04 definitely a zip file").unwrap();
    let err = s.run(&["keys", "list"]).fails();
    assert!(err.contains("not an SQLite database"), "{err}");
    assert_eq!(fs::read(&db).unwrap(), b"PK\x03\x04 definitely a zip file");
    assert!(!s.data_dir().join("master.key").exists());

    fs::remove_file(&db).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE orders (n INTEGER); INSERT INTO orders VALUES (7);")
        .unwrap();
    drop(conn);
    let before = fs::read(&db).unwrap();
    let err = s.run(&["keys", "generate", "--count", "1"]).fails();
    assert!(err.contains("another application's database"), "{err}");
    assert_eq!(fs::read(&db).unwrap(), before);
}

#[test]
fn a_missing_or_wrong_master_key_is_refused() {
    let s = Sandbox::default();
    generate(&s, 3);
    let before = s.store_bytes();

    let err = s
        .command()
        .env("VPROV_MASTER_KEY", "ab".repeat(32))
        .args(["keys", "list", "--reveal"])
        .output()
        .unwrap();
    assert!(!err.status.success());
    let err = String::from_utf8_lossy(&err.stderr);
    assert!(err.contains("master key does not match"), "{err}");

    let err = s
        .command()
        .env("VPROV_MASTER_KEY", "not-hex")
        .args(["keys", "list"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&err.stderr).contains("64 hexadecimal digits"));

    let key = s.data_dir().join("master.key");
    let moved = s.dir.path().join("backup.key");
    fs::rename(&key, &moved).unwrap();
    let err = s.run(&["keys", "list"]).fails();
    assert!(err.contains("master key file"), "{err}");
    assert!(err.contains("is missing"), "{err}");
    assert!(
        !key.exists(),
        "a new key must not be created for an existing store"
    );
    assert_eq!(s.store_bytes(), before);

    // The key supplied from elsewhere works, by flag and by environment.
    let out = s
        .command()
        .arg("--master-key-file")
        .arg(&moved)
        .args(["keys", "list", "--reveal", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let hex = fs::read_to_string(&moved).unwrap();
    let out = s
        .command()
        .env("VPROV_MASTER_KEY", hex.trim())
        .args(["keys", "list", "--reveal"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn an_unusable_data_dir_is_a_clear_error() {
    let s = Sandbox::default();
    let file = s.dir.path().join("not-a-dir");
    fs::write(&file, b"x").unwrap();
    let out = vprov_tests::bare_command()
        .arg("--data-dir")
        .arg(file.join("data"))
        .args(["keys", "generate", "--count", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot use data directory"), "{err}");
}

#[test]
fn configuration_file_is_used_and_a_corrupt_one_is_refused() {
    let s = Sandbox::default();
    let cfg = s.dir.path().join("vprov.toml");
    let other = s.dir.path().join("elsewhere");
    fs::write(
        &cfg,
        format!("data_dir = {:?}\n", other.display().to_string()),
    )
    .unwrap();
    let out = vprov_tests_command(&cfg, &["keys", "generate", "--count", "2"]);
    assert!(out.status.success(), "{out:?}");
    assert!(other.join("vprov.db").exists());

    fs::write(&cfg, "[store]\nbusy_timeout_ms = \"soon\"\n").unwrap();
    let out = vprov_tests_command(&cfg, &["keys", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("vprov.toml") && err.contains("busy_timeout_ms"),
        "{err}"
    );

    // The documented default file is a valid configuration.
    let documented = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/vprov.toml");
    let out = s
        .command()
        .args(["--config", documented, "keys", "batches"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn the_data_dir_and_config_come_from_flags_environment_or_defaults() {
    let s = Sandbox::default();
    let root = s.dir.path();
    let run = |cmd: &mut std::process::Command| {
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    let generate = ["keys", "generate", "--count", "1"];
    // No flag, no variable: ./data under the working directory.
    run(vprov_tests::bare_command().current_dir(root).args(generate));
    assert!(root.join("data/vprov.db").exists());
    // VPROV_DATA_DIR, and --data-dir over it.
    run(vprov_tests::bare_command()
        .env("VPROV_DATA_DIR", root.join("from-env"))
        .args(generate));
    assert!(root.join("from-env/vprov.db").exists());
    run(vprov_tests::bare_command()
        .env("VPROV_DATA_DIR", root.join("from-env"))
        .arg("--data-dir")
        .arg(root.join("from-flag"))
        .args(generate));
    assert!(root.join("from-flag/vprov.db").exists());
    // VPROV_CONFIG names the configuration file, whose data_dir applies.
    let cfg = root.join("site.toml");
    let dir = root.join("from-config").display().to_string();
    fs::write(
        &cfg,
        format!(
            "data_dir = {dir:?}
"
        ),
    )
    .unwrap();
    run(vprov_tests::bare_command()
        .env("VPROV_CONFIG", &cfg)
        .args(generate));
    assert!(root.join("from-config/vprov.db").exists());
    // ... and a bad one is refused by name.
    fs::write(&cfg, "data_dri = \"x\"\n").unwrap();
    let out = vprov_tests::bare_command()
        .env("VPROV_CONFIG", &cfg)
        .args(["keys", "batches"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("data_dri"), "{err}");
}

/// `vprov --config FILE …` without `--data-dir`, so the file's `data_dir` applies.
fn vprov_tests_command(cfg: &std::path::Path, args: &[&str]) -> std::process::Output {
    vprov_tests::bare_command()
        .arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn devices_and_alerts_are_listed_from_the_store() {
    let s = Sandbox::default();
    assert_eq!(
        s.run(&["devices", "list", "--format", "json"]).json(),
        Value::Array(vec![])
    );
    assert_eq!(
        s.run(&["alerts", "list", "--format", "json"]).json(),
        Value::Array(vec![])
    );

    let conn = s.sqlite();
    conn.execute_batch(
        "INSERT INTO devices (uuid, host_name, address, amt_version, provisioned_at)
           VALUES ('939b524b-13d4-1d18-e487-1c697a6b7a2b', 'pc-042', '10.0.0.42', '8.1.40', 1764000000000);
         INSERT INTO devices (uuid, state, management_mode, provisioned_at)
           VALUES ('d2ffc23e-9dd1-412d-860a-54b2039b72ff', 'managed', 'agentless', 1764000001000);
         INSERT INTO alerts (at, severity, source, message, pid, address)
           VALUES (1764000000000, 'warning', 'hello', 'unknown PID', '0000-037M', '10.0.0.9');
         INSERT INTO alerts (at, severity, source, message)
           VALUES (1764000002000, 'info', 'test', 'second');",
    )
    .unwrap();
    drop(conn);

    let all = s.run(&["devices", "list", "--format", "json"]).json();
    assert_eq!(all.as_array().unwrap().len(), 2);
    let unmanaged = s
        .run(&[
            "devices",
            "list",
            "--state",
            "unmanaged",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(unmanaged.as_array().unwrap().len(), 1);
    assert_eq!(unmanaged[0]["host_name"], "pc-042");
    assert_eq!(unmanaged[0]["provisioned_at"], "2025-11-24T16:00:00.000Z");
    let table = s.run(&["devices", "list"]).ok();
    assert!(
        table.contains("pc-042") && table.contains("agentless"),
        "{table}"
    );

    let alerts = s.run(&["alerts", "list", "--format", "json"]).json();
    assert_eq!(alerts[0]["message"], "second");
    assert_eq!(alerts[1]["pid"], "0000-037M");
    let warnings = s
        .run(&[
            "alerts",
            "list",
            "--severity",
            "warning",
            "--format",
            "json",
        ])
        .json();
    assert_eq!(warnings.as_array().unwrap().len(), 1);
    let table = s.run(&["alerts", "list"]).ok();
    assert!(
        table.contains("unknown PID") && table.contains("10.0.0.9"),
        "{table}"
    );
}

#[test]
fn help_explains_every_command() {
    let s = Sandbox::default();
    let help = s.run(&["--help"]).ok();
    for cmd in [
        "keys",
        "password",
        "devices",
        "alerts",
        "audit",
        "--data-dir",
        "--config",
    ] {
        assert!(help.contains(cmd), "{cmd} missing from --help");
    }
    let help = s.run(&["keys", "generate", "--help"]).ok();
    assert!(help.contains("1 to 1000000"), "{help}");
}
