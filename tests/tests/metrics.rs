//! End to end: `/metrics` of the real `vprov serve` — counters move as simulated
//! devices are provisioned and hellos arrive, the bearer token is enforced, no secret
//! or device identity appears; the limit that holds hellos back is told; the JSON log
//! is one JSON object per line with the text log's fields and no secret.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use vprov_tests::eventually;
use vprov_tests::rig::{Rig, MEBX_PASSWORD};
use vprov_tests::sim::{guid_text, SimConfig, Simulator};

const TOKEN: &str = "scrape-Token-7f3a9c";

/// A scrape: status and body.
fn get(addr: SocketAddr, token: Option<&str>) -> (u16, String) {
    let mut req = ureq::get(&format!("http://{addr}/metrics")).timeout(Duration::from_secs(10));
    if let Some(token) = token {
        req = req.set("Authorization", &format!("Bearer {token}"));
    }
    match req.call() {
        Ok(resp) => (resp.status(), resp.into_string().unwrap()),
        Err(ureq::Error::Status(code, resp)) => (code, resp.into_string().unwrap()),
        Err(e) => panic!("scrape failed: {e}"),
    }
}

/// A strict parse of the text exposition format: every line is a `#` comment
/// (HELP, TYPE, UNIT, EOF last) or `name{labels} value`; returns each sample by its
/// `name{labels}` as written.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "{text}");
    let mut samples = BTreeMap::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split(' ').next().unwrap();
            assert!(["HELP", "TYPE", "UNIT"].contains(&kind), "{line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        if name_end < series.len() {
            assert!(series.ends_with('}'), "{line}");
        }
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "{line}"
        );
    }
    samples
}

fn sample(samples: &BTreeMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

/// Sends one well-formed hello for a PID this store never generated.
fn unknown_hello(server: SocketAddr) {
    let message = vprov_tests::sim::hello::encode(0, &[7; 16], b"0000037M");
    let mut tcp = std::net::TcpStream::connect(server).unwrap();
    tcp.write_all(&message).unwrap();
}

#[test]
fn provisioning_moves_the_counters_the_token_is_enforced_and_no_secret_shows() {
    let rig = Rig::new(2, "");
    let token_file = rig.s.dir.path().join("metrics.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut config = std::fs::read_to_string(&rig.config).unwrap();
    config.push_str(&format!(
        "[metrics]\nbearer_token_file = \"{}\"\n",
        token_file.display()
    ));
    std::fs::write(&rig.config, config).unwrap();
    let server = rig.s.serve(
        "127.0.0.1:0",
        &[
            "--config",
            rig.config.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let metrics = server.metrics_addr.expect("metrics address announced");

    // Slow devices that restart their network stack after the commit: the confirm
    // step retries connecting until the certificate server is up.
    let specs = rig.specs(0..2, Ipv4Addr::new(127, 61, 0, 1));
    let uuids: Vec<String> = specs.iter().map(|d| guid_text(&d.uuid)).collect();
    let mut sim_config = SimConfig::new(
        server.hello_addr,
        std::sync::Arc::new(vprov_tests::sim::KeyPool::generate(2).unwrap()),
    );
    sim_config.device_port = rig.device_port;
    sim_config.time_scale = 0.001;
    sim_config.restart_delay = Duration::from_millis(50);
    sim_config.call_latency = Duration::from_millis(20);
    sim_config.commit_restart = Duration::from_millis(1500);
    let sim = rig
        .rt
        .block_on(Simulator::start(sim_config, specs))
        .unwrap();
    let reports = rig.wait_all(&sim, Duration::from_secs(120));
    assert!(reports.iter().all(|r| r.committed), "{reports:?}");
    eventually(Duration::from_secs(30), "2 device records", || {
        (rig.devices().len() == 2).then_some(())
    });
    unknown_hello(server.hello_addr);
    rig.wait_for_alert("unknown PID");

    // The token is enforced before anything is counted or shown.
    assert_eq!(get(metrics, None).0, 401);
    assert_eq!(get(metrics, Some("scrape-Token-7f3a9")).0, 401);
    assert_eq!(get(metrics, Some(&format!("{TOKEN}x"))).0, 401);
    let (status, text) = get(metrics, Some(TOKEN));
    assert_eq!(status, 200, "{text}");
    let s = parse(&text);
    assert!(
        sample(&s, "vprov_hellos_total{outcome=\"psk_matched\"}") >= 2.0,
        "{text}"
    );
    assert!(sample(&s, "vprov_hellos_total{outcome=\"unknown_pid\"}") >= 1.0);
    assert_eq!(
        sample(
            &s,
            "vprov_jobs_total{kind=\"psk\",result=\"provisioned\",step=\"none\"}"
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &s,
            "vprov_job_duration_seconds_count{kind=\"psk\",result=\"provisioned\"}"
        ),
        2.0
    );
    assert!(
        sample(
            &s,
            "vprov_wsman_call_duration_seconds_count{method=\"CommitChanges\"}"
        ) >= 2.0,
        "{text}"
    );
    // Every WS-Man reply took at least the simulated 20 ms.
    assert_eq!(
        sample(
            &s,
            "vprov_wsman_call_duration_seconds_bucket{le=\"0.005\",method=\"CommitChanges\"}"
        ),
        0.0,
        "{text}"
    );
    assert!(sample(&s, "vprov_store_call_duration_seconds_count") > 0.0);
    assert_eq!(
        sample(&s, "vprov_devices{state=\"unmanaged\"}"),
        2.0,
        "{text}"
    );
    assert!(
        sample(
            &s,
            "vprov_alerts_total{source=\"hello\",severity=\"warning\"}"
        ) >= 1.0
    );
    assert_eq!(sample(&s, "vprov_jobs_in_flight"), 0.0);
    assert!(sample(&s, "vprov_jobs_limit") >= 1.0);
    assert!(sample(&s, "vprov_process_resident_memory_bytes") > 0.0);
    assert!(sample(&s, "vprov_process_open_fds") > 0.0);

    // No secret, no device identity.
    let mut secrets: Vec<String> = vec![TOKEN.into(), MEBX_PASSWORD.into(), "0000037M".into()];
    for (pid, pps) in &rig.keys {
        secrets.extend([pid.dashed(), pid.as_str().to_string()]);
        secrets.push(pps.expose_dashed().to_string());
        secrets.push(String::from_utf8(pps.expose_bytes().to_vec()).unwrap());
    }
    secrets.extend(uuids);
    for secret in &secrets {
        assert!(!text.contains(secret.as_str()), "{secret} in /metrics");
    }
    assert_eq!(server.stop(), 0);
}

#[test]
fn hellos_held_back_by_max_concurrent_jobs_are_told() {
    let rig = Rig::new(4, "max_concurrent_jobs = 1\n");
    let server = rig.s.serve(
        "127.0.0.1:0",
        &[
            "--config",
            rig.config.to_str().unwrap(),
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    );
    let metrics = server.metrics_addr.unwrap();
    let mut sim_config = SimConfig::new(
        server.hello_addr,
        std::sync::Arc::new(vprov_tests::sim::KeyPool::generate(2).unwrap()),
    );
    sim_config.device_port = rig.device_port;
    sim_config.time_scale = 0.001;
    sim_config.call_latency = Duration::from_millis(50);
    let specs = rig.specs(0..4, Ipv4Addr::new(127, 62, 0, 1));
    let sim = rig
        .rt
        .block_on(Simulator::start(sim_config, specs))
        .unwrap();
    let alert = rig.wait_for_alert("hellos waiting: max_concurrent_jobs=1 reached");
    assert_eq!(alert["severity"], "warning");
    let reports = rig.wait_all(&sim, Duration::from_secs(120));
    assert!(reports.iter().all(|r| r.committed), "{reports:?}");
    let (_, text) = get(metrics, None);
    let s = parse(&text);
    assert!(
        sample(
            &s,
            "vprov_job_limit_reached_total{limit=\"max_concurrent_jobs\"}"
        ) >= 1.0,
        "{text}"
    );
    assert_eq!(sample(&s, "vprov_jobs_limit"), 1.0);
    assert_eq!(server.stop(), 0);
}

#[test]
fn the_json_log_has_the_text_logs_fields_and_no_secret() {
    let rig = Rig::new(1, "");
    let mut command = rig.s.serve_command(
        "127.0.0.1:0",
        &[
            "--config",
            rig.config.to_str().unwrap(),
            "--api-listen",
            "off",
        ],
    );
    let log = rig.s.dir.path().join("serve.log");
    let mut child = command
        .env("VPROV_LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let hello: SocketAddr = line
        .trim()
        .strip_prefix("listening for hellos on ")
        .unwrap()
        .parse()
        .unwrap();
    unknown_hello(hello);
    let lines = eventually(Duration::from_secs(30), "the alert in the log", || {
        let text = std::fs::read_to_string(&log).unwrap();
        text.contains("unknown PID").then_some(text)
    });
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    let mut messages = Vec::new();
    for line in lines.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["timestamp"].is_string(), "{line}");
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&v["level"].as_str().unwrap()),
            "{line}"
        );
        messages.push(v["fields"]["message"].as_str().unwrap().to_string());
    }
    assert!(
        messages.iter().any(|m| m == "vprov serving"),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.contains("unknown PID")),
        "{messages:?}"
    );
    // The serving line's field is a field, as in the text log.
    assert!(lines.contains("\"data_dir\""), "{lines}");
    let (pid, pps) = &rig.keys[0];
    let raw_pps = String::from_utf8(pps.expose_bytes().to_vec()).unwrap();
    for secret in [MEBX_PASSWORD, &pps.expose_dashed(), &raw_pps, &pid.dashed()] {
        assert!(!lines.contains(secret), "{secret} in the log");
    }
}
