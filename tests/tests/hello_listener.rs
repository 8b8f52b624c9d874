//! End to end: `vprov serve`'s hello listener against hostile and unknown hellos, over
//! real sockets, with alerts read back through `vprov alerts list`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;
use vprov_tests::{eventually, Sandbox, Server};

fn hello_v2(pid: &[u8; 8], uuid: [u8; 16]) -> Vec<u8> {
    let mut b = vec![1, 0, 2, 0, 0, 0, 0, 0];
    b.extend(uuid);
    b.extend(pid);
    b
}

fn send(addr: SocketAddr, bytes: &[u8]) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(bytes).unwrap();
}

fn alerts(s: &Sandbox) -> Vec<Value> {
    s.run(&["alerts", "list", "--format", "json"])
        .json()
        .as_array()
        .unwrap()
        .clone()
}

fn wait_for_alert(s: &Sandbox, needle: &str) -> Value {
    eventually(Duration::from_secs(10), needle, || {
        alerts(s)
            .into_iter()
            .find(|a| a["message"].as_str().unwrap_or("").contains(needle))
    })
}

fn start(s: &Sandbox) -> Server {
    s.run(&["keys", "generate", "--count", "3"]).ok();
    s.serve("127.0.0.1:0", &["--device-port", "1"])
}

#[test]
fn unknown_and_revoked_pids_raise_alerts_and_nothing_connects_back() {
    let s = Sandbox::default();
    let server = start(&s);
    send(server.hello_addr, &hello_v2(b"0000037M", [7; 16]));
    let alert = wait_for_alert(&s, "unknown PID");
    assert_eq!(alert["pid"], "0000-037M");
    assert_eq!(alert["address"], "127.0.0.1");
    assert_eq!(alert["device_uuid"], "07070707-0707-0707-0707-070707070707");

    let keys = s.run(&["keys", "list", "--format", "json"]).json();
    let pid = keys[0]["pid"].as_str().unwrap().to_string();
    s.run(&["keys", "revoke", &pid]).ok();
    let raw: [u8; 8] = pid.replace('-', "").as_bytes().try_into().unwrap();
    send(server.hello_addr, &hello_v2(&raw, [8; 16]));
    let alert = wait_for_alert(&s, "revoked PID");
    assert_eq!(alert["pid"], pid);

    // A PID whose check character is wrong is refused before any look-up.
    send(server.hello_addr, &hello_v2(b"0000037N", [9; 16]));
    wait_for_alert(&s, "invalid PID");
    assert_eq!(server.stop(), 0);
}

#[test]
fn malformed_oversized_and_slow_hellos_are_alerts_not_crashes() {
    let s = Sandbox::default();
    let mut server = start(&s);
    let addr = server.hello_addr;

    send(addr, b"\x01\x00\x02\x00short");
    wait_for_alert(&s, "too short");
    send(addr, &[0xff; 40]);
    wait_for_alert(&s, "admin-credentials flag");
    let mut v9 = hello_v2(b"0000037M", [1; 16]);
    v9[2] = 9;
    send(addr, &v9);
    wait_for_alert(&s, "unsupported hello version 9");
    let mut pki = vec![1, 0, 3, 0, 0, 0, 0, 0];
    pki.extend([3u8; 16]);
    pki.extend([1u8, 2, 32]);
    pki.extend([0xab; 32]);
    send(addr, &pki);
    // A well-formed PKI hello goes to a PKI job; with no chain imported it is an alert
    // naming the hash.
    let alert = wait_for_alert(
        &s,
        "no configured provisioning chain has a root the device trusts; the device trusts SHA-256 abababab",
    );
    assert_eq!(alert["device_uuid"], "03030303-0303-0303-0303-030303030303");

    // 5,000 bytes: refused at 4 KiB, the connection may be reset while we write.
    if let Ok(mut big) = TcpStream::connect(addr) {
        let _ = big.write_all(&[0u8; 5000]);
    }
    wait_for_alert(&s, "more than 4096 bytes");

    // A hello sent in pieces is reassembled.
    let mut pieces = TcpStream::connect(addr).unwrap();
    let hello = hello_v2(b"0000037M", [5; 16]);
    pieces.write_all(&hello[..10]).unwrap();
    pieces.flush().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    pieces.write_all(&hello[10..]).unwrap();
    drop(pieces);
    eventually(Duration::from_secs(10), "reassembled hello", || {
        alerts(&s)
            .into_iter()
            .find(|a| a["device_uuid"] == "05050505-0505-0505-0505-050505050505")
    });

    // The server is still alive and well.
    assert!(server.child.try_wait().unwrap().is_none());
    assert_eq!(server.stop(), 0);
}

#[test]
fn a_slow_hello_times_out_with_an_alert() {
    let s = Sandbox::default();
    let cfg = s.dir.path().join("slow.toml");
    std::fs::write(&cfg, "[hello]\nread_timeout_ms = 300\n").unwrap();
    s.run(&["keys", "generate", "--count", "1"]).ok();
    let server = s.serve("127.0.0.1:0", &["--config", cfg.to_str().unwrap()]);
    let mut slow = TcpStream::connect(server.hello_addr).unwrap();
    slow.write_all(&[1, 0]).unwrap();
    wait_for_alert(&s, "not complete within");
    drop(slow);
    assert_eq!(server.stop(), 0);
}

#[test]
fn an_http_probe_gets_a_short_page() {
    let s = Sandbox::default();
    let server = start(&s);
    let mut c = TcpStream::connect(server.hello_addr).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: vprov\r\n\r\n")
        .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut page = String::new();
    c.read_to_string(&mut page).unwrap();
    assert!(page.starts_with("HTTP/1.0 200 OK"), "{page}");
    assert!(page.contains("hello port"), "{page}");
    assert!(alerts(&s).is_empty());
    assert_eq!(server.stop(), 0);
}

#[test]
fn repeated_hellos_are_one_alert_with_a_count_until_acknowledged() {
    let s = Sandbox::default();
    let server = start(&s);
    let unknown = |a: &Value| a["message"].as_str().unwrap().contains("unknown PID");
    for _ in 0..10 {
        send(server.hello_addr, &hello_v2(b"0000037M", [7; 16]));
    }
    let first = eventually(Duration::from_secs(10), "ten hellos counted", || {
        let all: Vec<Value> = alerts(&s).into_iter().filter(unknown).collect();
        (all.iter()
            .map(|a| a["count"].as_i64().unwrap())
            .sum::<i64>()
            == 10)
            .then_some(all)
    });
    assert_eq!(first.len(), 1, "one alert, not ten: {first:#?}");
    assert!(first[0]["last_seen"].as_str().unwrap() >= first[0]["at"].as_str().unwrap());

    // Acknowledged (audited), the alert stays closed: the next repeat is a new one.
    let id = first[0]["id"].to_string();
    assert!(s
        .run(&["alerts", "ack", "999999"])
        .fails()
        .contains("no alert with id 999999"));
    assert!(s
        .run(&["alerts", "ack", &id])
        .ok()
        .contains("1 alert(s) acknowledged"));
    send(server.hello_addr, &hello_v2(b"0000037M", [7; 16]));
    let again = eventually(Duration::from_secs(10), "a new alert", || {
        let all: Vec<Value> = alerts(&s).into_iter().filter(unknown).collect();
        (all.len() == 2).then_some(all)
    });
    assert_eq!(again[0]["count"], 1);
    assert_eq!(again[0]["acknowledged_at"], Value::Null);
    assert_eq!(again[1]["count"], 10);
    assert!(s
        .run(&["alerts", "ack", "--all"])
        .ok()
        .contains("1 alert(s) acknowledged"));
    let audit = s.run(&["audit", "list", "--format", "json"]).json();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions[..2], ["alert.acknowledge_all", "alert.acknowledge"]);
    assert_eq!(server.stop(), 0);
}

#[test]
fn a_flood_from_one_address_is_rate_limited_with_one_alert() {
    let s = Sandbox::default();
    let server = start(&s);
    for i in 0..60u8 {
        send(server.hello_addr, &hello_v2(b"0000037M", [i; 16]));
    }
    wait_for_alert(&s, "too many hellos from this address");
    std::thread::sleep(Duration::from_millis(300));
    let all = alerts(&s);
    let limited = all
        .iter()
        .filter(|a| a["message"].as_str().unwrap().contains("too many hellos"))
        .count();
    let unknown = all
        .iter()
        .filter(|a| a["message"].as_str().unwrap().contains("unknown PID"))
        .count();
    assert_eq!(limited, 1);
    assert!(
        unknown <= 25,
        "the burst of 20 (+ refill) passed, not all 60: {unknown}"
    );
    assert_eq!(server.stop(), 0);
}

#[test]
fn an_address_in_use_is_a_clear_error() {
    let s = Sandbox::default();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = s.run(&["serve", "--hello-listen", &addr]).fails();
    assert!(
        err.contains(&format!("cannot listen for hellos on {addr}")),
        "{err}"
    );
}
