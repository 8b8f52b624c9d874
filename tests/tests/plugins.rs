//! End to end: plugin libraries built in this workspace (export-csv, alert-file and
//! the test fixtures) loaded by the real `vprov` binary — listed, routed to, hot
//! added, replaced and reconfigured while `vprov serve` runs, and the broken ones
//! refused or quarantined while the core keeps provisioning.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use vprov_tests::rig::Rig;
use vprov_tests::{eventually, Sandbox};

fn list(s: &Sandbox) -> Value {
    s.run(&["plugins", "list", "--format", "json"]).json()
}

fn library<'a>(listed: &'a Value, file: &str) -> &'a Value {
    listed["libraries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["file"].as_str().unwrap().ends_with(file))
        .unwrap_or_else(|| panic!("{file} not listed: {listed}"))
}

/// Waits until `vprov plugins list` reports instance `name` with a status starting
/// with `status`, and returns the instance's entry.
fn wait_instance(s: &Sandbox, name: &str, status: &str) -> Value {
    eventually(
        Duration::from_secs(30),
        &format!("instance {name} {status}"),
        || {
            list(s)["instances"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["name"] == name && i["status"].as_str().unwrap().starts_with(status))
                .cloned()
        },
    )
}

fn write_instances(s: &Sandbox, text: &str) {
    let dir = s.data_dir().join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plugins.toml");
    let tmp = dir.join(".plugins.toml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// Sends a hello that is not one: the server raises a "malformed hello" alert.
/// A malformed hello, each from a loopback address of its own: repeats from one
/// address are one alert with a count, and these tests follow every alert.
fn bad_hello(server: SocketAddr, tag: &str) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) + std::process::id() % 200 * 250;
    let source = std::net::Ipv4Addr::new(127, 91, (n / 250 % 250) as u8, (n % 250 + 1) as u8);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        use tokio::io::AsyncWriteExt;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(source.into(), 0)).unwrap();
        let mut tcp = socket.connect(server).await.unwrap();
        tcp.write_all(format!("not a hello {tag}").as_bytes())
            .await
            .unwrap();
    });
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn wait_line(path: &Path, needle: &str) -> String {
    eventually(Duration::from_secs(30), needle, || {
        lines(path).into_iter().find(|l| l.contains(needle))
    })
}

fn plugin_data(s: &Sandbox, instance: &str, file: &str) -> PathBuf {
    s.data_dir().join("plugin-data").join(instance).join(file)
}

/// Serves with one instance `name` of the unruly fixture configured by `config` (TOML
/// lines) and waits until it is active.
fn serve_with_unruly(rig: &Rig, name: &str, config: &str) -> vprov_tests::Server {
    write_instances(
        &rig.s,
        &format!("[instances.{name}]\nplugin = \"fixture-unruly\"\n[instances.{name}.config]\n{config}\n"),
    );
    rig.s.install_plugin("fixture_unruly", "unruly.so");
    let server = rig.serve();
    wait_instance(&rig.s, name, "active");
    server
}

#[test]
fn libraries_are_listed_and_broken_ones_refused_with_their_reason() {
    let s = Sandbox::default();
    s.run(&["keys", "generate", "--count", "1"]).ok();
    s.install_plugin("export_csv", "export-csv.so");
    s.install_plugin("fixture_old_sdk", "old-sdk.so");
    s.install_plugin("fixture_not_abi_stable", "not-a-plugin.so");
    std::fs::write(s.data_dir().join("plugins/garbage.so"), b"not even ELF").unwrap();

    let listed = list(&s);
    let csv = library(&listed, "export-csv.so");
    assert_eq!(csv["status"], "loaded");
    assert_eq!(csv["name"], "export-csv");
    assert_eq!(csv["kinds"], serde_json::json!(["key_exporter"]));
    let status = |file| {
        library(&listed, file)["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let old = status("old-sdk.so");
    assert!(old.contains("incompatible SDK"), "{old}");
    assert!(old.contains("0.0.9"), "{old}");
    let not_plugin = status("not-a-plugin.so");
    assert!(
        not_plugin.contains("exports no abi_stable root module"),
        "{not_plugin}"
    );
    assert!(
        status("garbage.so").contains("not a loadable library"),
        "{listed}"
    );

    let table = s.run(&["plugins", "list"]).ok();
    assert!(table.contains("export-csv"), "{table}");
    assert!(
        table.contains("failed: built against an incompatible SDK"),
        "{table}"
    );
}

/// The audit entry of the most recent `action`.
fn audit_entry(s: &Sandbox, action: &str) -> Value {
    let audit = s.run(&["audit", "list", "--format", "json"]).json();
    audit
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["action"] == action)
        .cloned()
        .unwrap_or_else(|| panic!("no {action} in the audit log: {audit}"))
}

/// A file's permission bits.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[test]
fn plugin_directories_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    // A one-shot command creates them: 0700 under umask 022.
    let s = Sandbox::default();
    s.run(&["keys", "generate", "--count", "1"]).ok();
    s.install_plugin("export_csv", "export-csv.so");
    let out = s.dir.path().join("batch.csv");
    let exported = vprov_tests::with_umask(
        s.command()
            .args(["keys", "export", "--batch", "1", "--format", "csv", "--out"])
            .arg(&out),
        0o022,
    )
    .output()
    .unwrap();
    assert!(exported.status.success(), "{exported:?}");
    let data = s.data_dir();
    for dir in [
        "run",
        "run/plugins",
        "plugin-data",
        "plugin-data/export-csv",
    ] {
        assert_eq!(format!("{:o}", mode(&data.join(dir))), "700", "{dir}");
    }

    // The server creates the rest and narrows those left open (by an older vprov,
    // say, or by hand, like the plugin directory here).
    let s = Sandbox::default();
    s.run(&["keys", "generate", "--count", "1"]).ok();
    s.install_plugin("export_csv", "export-csv.so");
    let data = s.data_dir();
    std::fs::create_dir(data.join("plugin-data")).unwrap();
    for dir in ["plugins", "plugin-data"] {
        std::fs::set_permissions(data.join(dir), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let server = vprov_tests::Server::start(vprov_tests::with_umask(
        &s.serve_command("127.0.0.1:0", &[]),
        0o022,
    ));
    let dirs = [
        "plugins",
        "run",
        "run/plugins",
        "plugin-data",
        "plugin-data/export-csv",
    ];
    // The last is made when the server has loaded the library.
    eventually(Duration::from_secs(30), "the plugin directories", || {
        dirs.iter().all(|d| data.join(d).exists()).then_some(())
    });
    for dir in dirs {
        assert_eq!(format!("{:o}", mode(&data.join(dir))), "700", "{dir}");
    }
    assert_eq!(server.stop(), 0);
}

#[test]
fn keys_export_routes_to_the_plugin_offering_the_format() {
    let s = Sandbox::default();
    let out = s.dir.path().join("batch.csv");
    let export = |format: &str, extra: &[&str]| {
        let mut args = vec!["keys", "export", "--batch", "1", "--format", format];
        args.extend(["--out", out.to_str().unwrap()]);
        args.extend(extra);
        s.run(&args)
    };
    s.run(&["keys", "generate", "--count", "5", "--comment", "bench 4"])
        .ok();
    let err = export("csv", &[]).fails();
    assert!(err.contains("no key export plugin is loaded"), "{err}");

    s.install_plugin("export_csv", "export-csv.so");
    let err = export("pdf", &[]).fails();
    assert!(err.contains("no plugin offers format \"pdf\""), "{err}");
    assert!(err.contains("csv ("), "{err}");
    assert!(!out.exists());

    let printed = export("csv", &["--option", "delimiter=;"]).ok();
    assert!(printed.contains("exported 5 pairs of batch 1"), "{printed}");
    let keys = s
        .run(&["keys", "list", "--reveal", "--format", "json"])
        .json();
    let csv = lines(&out);
    assert_eq!(csv.len(), 6, "{csv:?}");
    for (row, key) in csv[1..].iter().zip(keys.as_array().unwrap()) {
        let expected = format!(
            "{};{};1;bench 4",
            key["pid"].as_str().unwrap(),
            key["pps"].as_str().unwrap()
        );
        assert!(row.ends_with(&expected), "{row} vs {expected}");
    }
    let audited = audit_entry(&s, "keys.export");
    assert_eq!(audited["detail"]["export"]["format"], "csv");
    assert_eq!(audited["detail"]["count"], 5);

    // An existing file is kept unless --force; a bad option is the plugin's error.
    let err = export("csv", &[]).fails();
    assert!(err.contains("--force"), "{err}");
    let err = export("csv", &["--force", "--option", "colour=red"]).fails();
    assert!(err.contains("colour"), "{err}");
    assert_eq!(lines(&out).len(), 6, "the old file is intact");
}

#[test]
fn a_dropped_in_sink_becomes_active_and_a_config_change_reconfigures_it() {
    let rig = Rig::new(1, "");
    let s = &rig.s;
    let server = rig.serve();
    write_instances(
        s,
        "[instances.to-file]\nplugin = \"alert-file\"\n[instances.to-file.config]\npath = \"first.jsonl\"\n",
    );
    // The configuration names a plugin that is not there yet.
    wait_instance(
        s,
        "to-file",
        "failed: no loaded library provides plugin alert-file",
    );

    s.install_plugin("alert_file", "alert-file.so");
    wait_instance(s, "to-file", "active");
    bad_hello(server.hello_addr, "one");
    let first = plugin_data(s, "to-file", "first.jsonl");
    let line: Value = serde_json::from_str(&wait_line(&first, "malformed hello")).unwrap();
    assert_eq!(line["source"], "hello");
    assert_eq!(line["severity"], "warning");

    // A new path: only this instance is re-created, and alerts follow the change.
    write_instances(
        s,
        "[instances.to-file]\nplugin = \"alert-file\"\n[instances.to-file.config]\npath = \"second.jsonl\"\n",
    );
    let second = plugin_data(s, "to-file", "second.jsonl");
    eventually(Duration::from_secs(30), "the new path in use", || {
        bad_hello(server.hello_addr, "two");
        std::thread::sleep(Duration::from_millis(200));
        (!lines(&second).is_empty()).then_some(())
    });

    // A configuration the plugin refuses, then one that is not TOML: both keep the
    // running instance, with an alert.
    write_instances(
        s,
        "[instances.to-file]\nplugin = \"alert-file\"\n[instances.to-file.config]\npath = \"third.jsonl\"\nmax_bytes = 1\n",
    );
    rig.wait_for_alert("the previous one keeps running");
    write_instances(s, "[instances.to-file\nplugin = ");
    rig.wait_for_alert("the current plugin instances keep running");
    let before = lines(&second).len();
    bad_hello(server.hello_addr, "three");
    eventually(Duration::from_secs(30), "alerts still delivered", || {
        (lines(&second).len() > before).then_some(())
    });
    assert!(!plugin_data(s, "to-file", "third.jsonl").exists());
    assert_eq!(server.stop(), 0);
}

#[test]
fn a_replaced_library_is_loaded_as_a_new_copy_and_swapped_in() {
    let rig = Rig::new(1, "");
    let s = &rig.s;
    let server = serve_with_unruly(&rig, "probe", "record = \"seen.txt\"");
    let v1 = wait_instance(s, "probe", "active");
    assert_eq!(v1["plugin"], "fixture-unruly 0.1.0");
    let seen = plugin_data(s, "probe", "seen.txt");
    bad_hello(server.hello_addr, "before");
    wait_line(&seen, "alert v0.1.0 malformed hello");

    s.install_plugin("fixture_unruly_v2", "unruly.so");
    eventually(Duration::from_secs(30), "version 2 active", || {
        let listed = list(s);
        let probe = listed["instances"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == "probe")
            .cloned()?;
        (probe["plugin"] == "fixture-unruly 2.0.0" && probe["status"] == "active").then_some(())
    });
    bad_hello(server.hello_addr, "after");
    wait_line(&seen, "alert v2.0.0 malformed hello");
    assert_eq!(server.stop(), 0);
}

#[test]
fn panicking_and_hanging_plugins_are_quarantined_while_devices_provision() {
    let rig = Rig::new(2, "[plugins]\ncall_timeout_ms = 1500\n");
    let s = &rig.s;
    write_instances(
        s,
        "[instances.panicky]\nplugin = \"fixture-unruly\"\n[instances.panicky.config]\nmode = \"panic\"\n\
         [instances.stuck]\nplugin = \"fixture-unruly\"\n[instances.stuck.config]\nmode = \"hang\"\n\
         [instances.broken-start]\nplugin = \"fixture-unruly\"\n[instances.broken-start.config]\nmode = \"panic\"\npanic_in = \"new\"\n",
    );
    s.install_plugin("fixture_unruly", "unruly.so");
    s.install_plugin("fixture_old_sdk", "old-sdk.so");
    s.install_plugin("fixture_not_abi_stable", "not-a-plugin.so");
    let server = rig.serve();

    rig.wait_for_alert("old-sdk.so was not loaded: built against an incompatible SDK");
    rig.wait_for_alert("not-a-plugin.so was not loaded: not a vprov plugin");
    let failed = wait_instance(s, "broken-start", "failed:");
    assert!(
        failed["status"].as_str().unwrap().contains("told to panic"),
        "{failed}"
    );

    bad_hello(server.hello_addr, "trigger");
    let panicked = wait_instance(s, "panicky", "quarantined:");
    assert!(
        panicked["status"]
            .as_str()
            .unwrap()
            .contains("fixture-unruly told to panic"),
        "{panicked}"
    );
    let hung = wait_instance(s, "stuck", "quarantined:");
    assert!(
        hung["status"]
            .as_str()
            .unwrap()
            .contains("did not return from deliver within 1500 ms"),
        "{hung}"
    );
    rig.wait_for_alert("plugin instance panicky (fixture-unruly 0.1.0) quarantined");

    // The core keeps provisioning.
    let specs = rig.specs(0..2, Ipv4Addr::new(127, 41, 0, 1));
    let sim = rig.simulate(&server, specs, 0.001);
    let reports = rig.wait_all(&sim, Duration::from_secs(60));
    assert!(reports.iter().all(|r| r.committed), "{reports:?}");
    eventually(Duration::from_secs(30), "both devices recorded", || {
        (rig.devices().len() == 2).then_some(())
    });
    assert_eq!(server.stop(), 0, "a hung plugin does not block shutdown");
}

#[test]
fn a_slow_sink_cannot_delay_provisioning() {
    let rig = Rig::new(3, "[plugins]\ncall_timeout_ms = 60000\nsink_queue = 2\n");
    let s = &rig.s;
    let server = serve_with_unruly(
        &rig,
        "slow",
        "mode = \"slow\"\ndelay_ms = 8000\nrecord = \"seen.txt\"",
    );
    // More alerts than the sink's queue holds.
    for i in 0..6 {
        bad_hello(server.hello_addr, &i.to_string());
    }
    let specs = rig.specs(0..3, Ipv4Addr::new(127, 42, 0, 1));
    let sim = rig.simulate(&server, specs, 0.001);
    let reports = rig.wait_all(&sim, Duration::from_secs(60));
    assert!(reports.iter().all(|r| r.committed), "{reports:?}");
    eventually(Duration::from_secs(30), "devices recorded", || {
        (rig.devices().len() == 3).then_some(())
    });
    let seen = plugin_data(s, "slow", "seen.txt");
    assert!(
        lines(&seen).iter().all(|l| !l.starts_with("alert")),
        "provisioning finished before the sink delivered its first alert: {:?}",
        lines(&seen)
    );
    // Once the sink catches up, what it lost is reported.
    rig.wait_for_alert("alert sink slow fell behind");
    assert_eq!(server.stop(), 0);
}

#[test]
fn a_post_provision_action_moves_the_device_to_managed() {
    let rig = Rig::new(1, "");
    let s = &rig.s;
    let server = serve_with_unruly(
        &rig,
        "manage",
        "outcome = \"agentless\"\nrecord = \"seen.txt\"",
    );
    let specs = rig.specs(0..1, Ipv4Addr::new(127, 43, 0, 1));
    let sim = rig.simulate(&server, specs, 0.001);
    assert!(rig.wait_all(&sim, Duration::from_secs(60))[0].committed);
    let device = eventually(Duration::from_secs(30), "device managed", || {
        rig.devices().into_iter().find(|d| d["state"] == "managed")
    });
    assert_eq!(device["management_mode"], "agentless");
    wait_line(
        &plugin_data(s, "manage", "seen.txt"),
        &format!("device {}", device["uuid"].as_str().unwrap()),
    );
    let moved = audit_entry(s, "device.manage");
    assert_eq!(moved["actor"], "plugin:manage");
    assert_eq!(moved["detail"]["mode"], "agentless");
    assert_eq!(server.stop(), 0);
}

#[test]
fn alerts_reach_a_syslog_server_on_loopback() {
    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let rig = Rig::new(1, "");
    write_instances(
        &rig.s,
        &format!(
            "[instances.syslog]\nplugin = \"alert-syslog\"\n[instances.syslog.config]\nserver = \"{}\"\n",
            receiver.local_addr().unwrap()
        ),
    );
    rig.s.install_plugin("alert_syslog", "alert-syslog.so");
    let server = rig.serve();
    wait_instance(&rig.s, "syslog", "active");
    bad_hello(server.hello_addr, "for syslog");
    let mut buf = [0u8; 4096];
    let n = receiver.recv(&mut buf).expect("a syslog datagram");
    let text = String::from_utf8_lossy(&buf[..n]);
    // local0 (16) * 8 + warning (4) = 132; MSGID is the alert's source.
    assert!(text.starts_with("<132>1 "), "{text}");
    assert!(text.contains(" vprov "), "{text}");
    assert!(text.contains(" hello - \u{feff}malformed hello"), "{text}");
    assert!(text.contains("address=127.91."), "{text}");
    assert_eq!(server.stop(), 0);
}

/// An HTTP endpoint on loopback: answers 200 to each request and sends its body on.
fn webhook_receiver() -> (String, std::sync::mpsc::Receiver<Value>) {
    use std::io::{BufRead, BufReader, Read};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/alerts", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut reader = BufReader::new(stream);
            let mut len = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let mut stream = reader.into_inner();
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if tx.send(serde_json::from_slice(&body).unwrap()).is_err() {
                return;
            }
        }
    });
    (url, rx)
}

#[test]
fn alerts_are_posted_to_a_webhook_and_a_hanging_one_is_reported() {
    let (url, received) = webhook_receiver();
    // A second endpoint that accepts connections and never answers.
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stuck_url = format!("http://{}/", stuck.local_addr().unwrap());
    let rig = Rig::new(1, "");
    write_instances(
        &rig.s,
        &format!(
            "[instances.hook]\nplugin = \"alert-webhook\"\n[instances.hook.config]\nurl = \"{url}\"\n\
             [instances.stuck-hook]\nplugin = \"alert-webhook\"\n[instances.stuck-hook.config]\nurl = \"{stuck_url}\"\ntimeout_ms = 300\nretries = 1\n"
        ),
    );
    rig.s.install_plugin("alert_webhook", "alert-webhook.so");
    let server = rig.serve();
    wait_instance(&rig.s, "hook", "active");
    wait_instance(&rig.s, "stuck-hook", "active");
    bad_hello(server.hello_addr, "for the webhook");
    let posted = received
        .recv_timeout(Duration::from_secs(30))
        .expect("a POST");
    assert_eq!(posted["source"], "hello");
    assert!(
        posted["message"]
            .as_str()
            .unwrap()
            .starts_with("malformed hello"),
        "{posted}"
    );
    assert!(
        posted["address"].as_str().unwrap().starts_with("127.91."),
        "{posted}"
    );
    let alert = rig.wait_for_alert("alert sink stuck-hook cannot deliver alerts");
    assert!(
        alert["message"]
            .as_str()
            .unwrap()
            .contains("after 2 attempts"),
        "{alert}"
    );
    // Slow failures are failures, not hangs: the instance stays active.
    wait_instance(&rig.s, "stuck-hook", "active");
    assert_eq!(server.stop(), 0);
    drop(stuck);
}

/// A real SMTP server (aiosmtpd, installed by scripts/install-deps.sh) on loopback,
/// offering STARTTLS with a certificate from a private CA and storing mail in a
/// Maildir. Killed when dropped.
struct SmtpServer {
    child: std::process::Child,
    port: u16,
    ca_pem: PathBuf,
    maildir: PathBuf,
}

impl SmtpServer {
    fn start(dir: &Path) -> SmtpServer {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let ca_pem = dir.join("smtp-ca.pem");
        std::fs::write(&ca_pem, ca.pem()).unwrap();
        std::fs::write(dir.join("smtp-cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("smtp-key.pem"), key.serialize_pem()).unwrap();
        let maildir = dir.join("maildir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .arg("--tlscert")
            .arg(dir.join("smtp-cert.pem"))
            .arg("--tlskey")
            .arg(dir.join("smtp-key.pem"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m aiosmtpd (installed by scripts/install-deps.sh)");
        eventually(Duration::from_secs(30), "aiosmtpd listening", || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(drop)
        });
        SmtpServer {
            child,
            port,
            ca_pem,
            maildir,
        }
    }

    fn mails(&self) -> Vec<String> {
        std::fs::read_dir(self.maildir.join("new"))
            .map(|entries| {
                entries
                    .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_burst_of_alerts_is_mailed_once_over_starttls() {
    let rig = Rig::new(1, "");
    let smtp = SmtpServer::start(rig.s.dir.path());
    write_instances(
        &rig.s,
        &format!(
            "[instances.mail]\nplugin = \"alert-email\"\n[instances.mail.config]\n\
             server = \"localhost:{}\"\nfrom = \"vprov@example.org\"\nto = [\"it@example.org\"]\n\
             ca_file = \"{}\"\nbatch_ms = 1500\n",
            smtp.port,
            smtp.ca_pem.display()
        ),
    );
    rig.s.install_plugin("alert_email", "alert-email.so");
    let server = rig.serve();
    wait_instance(&rig.s, "mail", "active");
    for i in 0..3 {
        bad_hello(server.hello_addr, &format!("burst {i}"));
    }
    let mail = eventually(Duration::from_secs(30), "a mail", || {
        smtp.mails().into_iter().next()
    });
    assert!(
        mail.contains("Subject: [vprov] 3 alerts (worst: warning)"),
        "{mail}"
    );
    assert_eq!(mail.matches("malformed hello").count(), 3, "{mail}");
    assert!(mail.contains("To: it@example.org"), "{mail}");
    // aiosmtpd only accepts mail after STARTTLS (it requires TLS by default).
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(smtp.mails().len(), 1, "one mail for the burst");
    assert_eq!(server.stop(), 0);
}
