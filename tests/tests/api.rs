//! End to end: the admin API of `vprov serve` over HTTPS — sign-in, sessions, bearer
//! tokens, roles and the sign-in rate limit; keys, exports, the provisioning password,
//! alerts, plugins and the audit log; devices provisioned by the simulator, managed,
//! powered and inventoried, with the live event stream.

use std::io::{BufRead, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};
use vprov_tests::api::{ApiClient, Auth};
use vprov_tests::eventually;
use vprov_tests::rig::Rig;

const ANN: &str = "ann-the-admin-pw";
const OLAF: &str = "olaf-operates-pw";

/// A rig with keys, two accounts (ann: admin, olaf: operator) and a running server.
fn api_rig(keys: u32) -> (Rig, vprov_tests::Server, ApiClient) {
    let rig = Rig::new(keys, "");
    rig.s.add_admin("ann", "admin", ANN);
    rig.s.add_admin("olaf", "operator", OLAF);
    let server = rig.serve();
    let client = ApiClient::new(&rig.s, server.api_addr.expect("the API is on"));
    (rig, server, client)
}

fn audit_actions(api: &ApiClient) -> Vec<(String, String)> {
    let audit = api.get("/api/v1/audit?limit=1000");
    assert_eq!(audit.status, 200);
    audit
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["actor"].as_str().unwrap().to_string(),
                e["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn concurrent_guesses_are_counted_before_they_are_checked() {
    let (_rig, _server, anon) = api_rig(1);
    let attempt = |name: &str, password: &str| {
        anon.post(
            "/api/v1/session",
            json!({"name": name, "password": password}),
        )
        .status
    };
    // Names no account can have (too long, or a password typed into the field) are
    // refused before they are counted or checked: the right password still works.
    for name in ["n".repeat(65), "ann-the-admin-pw !".into()] {
        for _ in 0..10 {
            assert_eq!(attempt(&name, "x"), 400);
        }
    }
    assert_eq!(attempt("ann", ANN), 200);

    // 50 wrong guesses and the right password at once: only as many as the limit
    // allows are checked, the rest wait (429) — the right one too, unless it was
    // among the first.
    let barrier = std::sync::Barrier::new(51);
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..51)
            .map(|i| {
                let (client, barrier) = (anon.with(Auth::None), &barrier);
                scope.spawn(move || {
                    let password = if i == 25 {
                        ANN.to_string()
                    } else {
                        format!("guess-{i}")
                    };
                    barrier.wait();
                    client
                        .post(
                            "/api/v1/session",
                            json!({"name": "ann", "password": password}),
                        )
                        .status
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let checked = statuses.iter().filter(|s| matches!(s, 200 | 401)).count();
    assert!(checked <= 5, "{checked} guesses were checked: {statuses:?}");
    assert!(
        statuses.iter().all(|s| matches!(s, 200 | 401 | 429)),
        "{statuses:?}"
    );
}

#[test]
fn sign_in_sessions_tokens_roles_and_the_rate_limit() {
    let (rig, _server, anon) = api_rig(3);
    // Every resource wants a signed-in caller (signing out without a session only
    // clears the cookie).
    assert_eq!(anon.send("DELETE", "/api/v1/session", None).status, 204);
    for (method, path) in [
        ("GET", "/api/v1/session"),
        ("GET", "/api/v1/dashboard"),
        ("GET", "/api/v1/batches"),
        ("POST", "/api/v1/batches"),
        ("GET", "/api/v1/generations/1"),
        ("GET", "/api/v1/batches/1/keys"),
        ("POST", "/api/v1/batches/1/revoke"),
        ("GET", "/api/v1/batches/1/export?format=csv"),
        ("POST", "/api/v1/keys/revoke"),
        ("GET", "/api/v1/export-formats"),
        ("GET", "/api/v1/password"),
        ("PUT", "/api/v1/password"),
        ("GET", "/api/v1/devices"),
        (
            "GET",
            "/api/v1/devices/00000000-0000-0000-0000-000000000000",
        ),
        ("POST", "/api/v1/devices/manage"),
        ("POST", "/api/v1/devices/unmanage"),
        (
            "POST",
            "/api/v1/devices/00000000-0000-0000-0000-000000000000/power",
        ),
        (
            "POST",
            "/api/v1/devices/00000000-0000-0000-0000-000000000000/inventory",
        ),
        ("GET", "/api/v1/agent-profiles"),
        ("GET", "/api/v1/alerts"),
        ("POST", "/api/v1/alerts/1/acknowledge"),
        ("GET", "/api/v1/plugins"),
        ("GET", "/api/v1/audit"),
        ("GET", "/api/v1/events"),
    ] {
        let body = (method != "GET").then(|| json!({}));
        let answer = anon.send(method, path, body.as_ref());
        assert_eq!(answer.status, 401, "{method} {path}: {answer:?}");
        assert_eq!(answer.error(), "sign in first");
    }
    let wrong = anon.post(
        "/api/v1/session",
        json!({"name": "ann", "password": "nope"}),
    );
    assert_eq!(
        (wrong.status, wrong.error()),
        (401, "wrong name or password")
    );
    let unknown = anon.post("/api/v1/session", json!({"name": "zed", "password": ANN}));
    assert_eq!(unknown.status, 401);

    // A session cookie with the flags a console needs.
    let signed = anon.post("/api/v1/session", json!({"name": "ann", "password": ANN}));
    let cookie = signed.header("set-cookie").unwrap().to_string();
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    let ann = anon.sign_in("ann", ANN);
    assert_eq!(
        ann.get("/api/v1/session").json,
        json!({"name": "ann", "role": "admin"})
    );
    // A cookie-authenticated change without the console header is refused.
    let Auth::Session(session) = ann.auth.clone() else {
        unreachable!()
    };
    let bare = anon.with(Auth::Bearer("x".into()));
    assert_eq!(bare.get("/api/v1/session").status, 401);
    let forged = anon
        .with(Auth::CookieOnly(session))
        .post("/api/v1/batches", json!({"count": 1}));
    assert_eq!(forged.status, 403, "{forged:?}");

    // Bearer tokens act with the account's role; a token is not a session.
    let token = rig
        .s
        .run(&["admin", "token", "olaf", "--comment", "ci"])
        .ok();
    let olaf = anon.with(Auth::Bearer(token.trim().to_string()));
    assert_eq!(olaf.get("/api/v1/session").json["role"], "operator");
    assert_eq!(
        anon.with(Auth::Session(token.trim().to_string()))
            .get("/api/v1/session")
            .status,
        401
    );

    // Operators may not reveal, export or change the provisioning password.
    assert_eq!(olaf.get("/api/v1/batches/1/keys").status, 200);
    let keys = olaf.get("/api/v1/batches/1/keys").json;
    assert!(keys[0]["pid"].is_string() && keys[0].get("pps").is_none());
    for (method, path, body) in [
        ("GET", "/api/v1/batches/1/keys?reveal=true", None),
        ("GET", "/api/v1/batches/1/export?format=csv", None),
        (
            "PUT",
            "/api/v1/password",
            Some(json!({"password": "N3w!Password"})),
        ),
    ] {
        let answer = olaf.send(method, path, body.as_ref());
        assert_eq!(answer.status, 403, "{method} {path}: {answer:?}");
        assert!(
            answer.error().starts_with("operators may not"),
            "{answer:?}"
        );
    }
    // Admins may, and the reveal is audited.
    let revealed = ann.get("/api/v1/batches/1/keys?reveal=true").json;
    assert_eq!(revealed.as_array().unwrap().len(), 3);
    assert_eq!(revealed[0]["pps"].as_str().unwrap().len(), 39);
    let actions = audit_actions(&ann);
    assert!(
        actions.contains(&("api:ann".into(), "keys.reveal".into())),
        "{actions:?}"
    );
    assert!(actions.contains(&("api:ann".into(), "admin.sign_in".into())));

    // Five failures from one address (two above, three now), then it waits — even
    // with a right password.
    let attempt = |name: &str, password: &str| {
        anon.post(
            "/api/v1/session",
            json!({"name": name, "password": password}),
        )
    };
    for _ in 0..3 {
        assert_eq!(attempt("mallory", "x").status, 401);
    }
    let limited = attempt("mallory", "x");
    assert_eq!(limited.status, 429, "{limited:?}");
    assert!(limited.header("retry-after").is_some());
    assert_eq!(attempt("ann", ANN).status, 429);

    // Signing out ends the session; removing an account ends its tokens.
    assert_eq!(ann.send("DELETE", "/api/v1/session", None).status, 204);
    assert_eq!(ann.get("/api/v1/session").status, 401);
    let accounts = rig.s.run(&["admin", "list", "--format", "json"]).json();
    assert_eq!(accounts[1]["name"], "olaf");
    assert_eq!(accounts[1]["tokens"], 1);
    rig.s.run(&["admin", "remove", "olaf"]).ok();
    assert_eq!(olaf.get("/api/v1/session").status, 401);
    let err = rig
        .s
        .run_with_stdin(&["admin", "add", "eve", "--stdin"], "short\n")
        .fails();
    assert!(err.contains("at least 12 characters"), "{err}");

    let spec = anon.get("/api/v1/openapi.json");
    assert_eq!(spec.json["openapi"], "3.0.3");
    assert!(spec.json["paths"].as_object().unwrap().len() >= 20);
}

#[test]
fn keys_exports_the_password_alerts_plugins_and_audit() {
    let (rig, server, anon) = api_rig(1);
    rig.s.install_plugin("export_csv", "export-csv.so");
    let ann = anon.sign_in("ann", ANN);

    let bad = ann.post("/api/v1/batches", json!({"count": 0}));
    assert_eq!(bad.status, 422, "{bad:?}");
    // Malformed bodies, queries and paths are answered like every other error.
    for (answer, needle) in [
        (
            ann.post("/api/v1/batches", json!({"count": "many"})),
            "count",
        ),
        (ann.get("/api/v1/devices?state=lost"), "state"),
        (ann.get("/api/v1/generations/first"), "first"),
    ] {
        assert!((400..500).contains(&answer.status), "{answer:?}");
        assert!(answer.error().contains(needle), "{answer:?}");
    }
    let started = ann.post("/api/v1/batches", json!({"count": 5, "comment": "site B"}));
    assert_eq!(started.status, 202, "{started:?}");
    let id = started.json["generation"].as_u64().unwrap();
    let done = eventually(Duration::from_secs(30), "generation", || {
        let g = ann.get(&format!("/api/v1/generations/{id}")).json;
        (g["done"] == true).then_some(g)
    });
    assert_eq!(
        (done["generated"].as_u64(), done["error"].clone()),
        (Some(5), Value::Null)
    );
    let batch = done["batch"].as_i64().unwrap();
    let batches = ann.get("/api/v1/batches").json;
    let listed = batches
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["id"] == batch)
        .unwrap();
    assert_eq!(
        (listed["size"].as_u64(), listed["comment"].as_str()),
        (Some(5), Some("site B"))
    );

    // Export through the plugin, as a download, once the server reports it loaded
    // (it was installed while the server ran: the reload takes its own time).
    eventually(Duration::from_secs(30), "the csv exporter loaded", || {
        let formats = ann.get("/api/v1/export-formats").json;
        formats
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["name"] == "csv")
            .then_some(())
    });
    let file = ann.get(&format!(
        "/api/v1/batches/{batch}/export?format=csv&option=dashes=true"
    ));
    assert_eq!(file.status, 200, "{file:?}");
    assert!(file
        .header("content-disposition")
        .unwrap()
        .starts_with("attachment"));
    let pids: Vec<String> = ann
        .get(&format!("/api/v1/batches/{batch}/keys"))
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["pid"].as_str().unwrap().to_string())
        .collect();
    let text = String::from_utf8(file.bytes.clone()).unwrap();
    assert!(pids.iter().all(|p| text.contains(p)), "{text}");
    let unknown = ann.get(&format!("/api/v1/batches/{batch}/export?format=docx"));
    assert_eq!(unknown.status, 422);
    assert!(unknown.error().contains("available: csv"), "{unknown:?}");

    // Revoking: an unknown PID among them changes nothing.
    let none = ann.post(
        "/api/v1/keys/revoke",
        json!({"pids": [pids[0], "0000-037M"]}),
    );
    assert_eq!(none.status, 404, "{none:?}");
    let one = ann.post("/api/v1/keys/revoke", json!({"pids": [pids[0]]}));
    assert_eq!(one.json["revoked"], 1);
    let rest = ann.post(&format!("/api/v1/batches/{batch}/revoke"), json!({}));
    assert_eq!(rest.json["revoked"], 4);

    // The provisioning password: AMT's rules, then set.
    let weak = ann.send(
        "PUT",
        "/api/v1/password",
        Some(&json!({"password": "weakling"})),
    );
    assert_eq!(weak.status, 422);
    assert!(weak.error().contains("upper-case"), "{weak:?}");
    let set = ann.send(
        "PUT",
        "/api/v1/password",
        Some(&json!({"password": "N3w!Provisioning"})),
    );
    assert_eq!(set.status, 204, "{set:?}");
    assert_eq!(ann.get("/api/v1/password").json["set"], true);

    // Alerts: a malformed hello, listed, acknowledged.
    let mut tcp = TcpStream::connect(server.hello_addr).unwrap();
    tcp.write_all(b"not a hello").unwrap();
    drop(tcp);
    let alert = eventually(Duration::from_secs(30), "alert", || {
        ann.get("/api/v1/alerts?acknowledged=false")
            .json
            .as_array()
            .unwrap()
            .first()
            .cloned()
    });
    let alert_id = alert["id"].as_i64().unwrap();
    let ack = ann.post(&format!("/api/v1/alerts/{alert_id}/acknowledge"), json!({}));
    assert_eq!(ack.status, 204);
    let acked = ann.get("/api/v1/alerts").json;
    assert_eq!(acked[0]["acknowledged_by"], "api:ann");
    assert!(ann
        .get("/api/v1/alerts?acknowledged=false")
        .json
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(
        ann.post("/api/v1/alerts/999999/acknowledge", json!({}))
            .status,
        404
    );

    let plugins = ann.get("/api/v1/plugins").json;
    assert!(plugins["libraries"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["name"] == "export-csv"));
    let dashboard = ann.get("/api/v1/dashboard").json;
    assert_eq!(dashboard["keys"]["revoked"], 5);
    assert_eq!(ann.get("/api/v1/devices").json["total"], 0);
    let actions = audit_actions(&ann);
    for action in [
        "keys.generate",
        "keys.export",
        "keys.revoke",
        "alert.acknowledge",
        "password.set",
    ] {
        assert!(
            actions
                .iter()
                .any(|(actor, a)| actor == "api:ann" && a.starts_with(action)),
            "{action} in {actions:?}"
        );
    }
}

/// Reads server-sent events from the API on a thread: (event name, data) pairs.
fn events(api: &ApiClient) -> mpsc::Receiver<(String, Value)> {
    let (tx, rx) = mpsc::channel();
    let mut stream = api.open_events().expect("event stream");
    std::thread::spawn(move || {
        while let Some(event) = stream.next_event() {
            if tx.send(event).is_err() {
                return;
            }
        }
    });
    rx
}

#[test]
fn one_account_holds_a_bounded_number_of_event_streams() {
    let (_rig, _server, anon) = api_rig(1);
    let olaf = anon.sign_in("olaf", OLAF);
    let mut streams: Vec<_> = (0..4)
        .map(|_| olaf.open_events().expect("an event stream"))
        .collect();
    // A fifth, even from another session of the same account, is refused: one
    // account cannot hold the API's 256 connections.
    let again = anon.sign_in("olaf", OLAF);
    let refused = again
        .open_events()
        .err()
        .expect("a fifth stream is refused");
    assert_eq!(refused.status, 429, "{refused:?}");
    assert!(
        refused.error().contains("olaf has 4 event streams open")
            && refused.error().contains("event_streams_per_account"),
        "{refused:?}"
    );
    // The account's other requests and other accounts' streams are served.
    assert_eq!(olaf.get("/api/v1/dashboard").status, 200);
    let ann = anon.sign_in("ann", ANN);
    let _anns = ann.open_events().expect("another account's stream");
    // A closed stream frees its place.
    drop(streams.pop());
    streams.push(eventually(Duration::from_secs(30), "a freed place", || {
        olaf.open_events().ok()
    }));
}

/// Reads one line (without its CRLF) of an HTTP answer.
fn read_line(reader: &mut impl BufRead) -> String {
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    line.trim_end().to_string()
}

#[test]
fn a_request_in_progress_is_answered_when_the_server_stops() {
    let (_rig, server, anon) = api_rig(1);
    let api = server.api_addr.unwrap();
    let body = json!({"name": "ann", "password": ANN}).to_string();
    let mut connection = std::io::BufReader::new(anon.connect());
    write!(
        connection.get_mut(),
        "POST /api/v1/session HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    )
    .unwrap();
    connection.get_mut().flush().unwrap();
    // The server has read the request and waits for its body.
    assert_eq!(read_line(&mut connection), "HTTP/1.1 100 Continue");
    assert_eq!(read_line(&mut connection), "");

    server.terminate();
    eventually(Duration::from_secs(30), "new connections refused", || {
        TcpStream::connect(api).err()
    });
    connection.get_mut().write_all(body.as_bytes()).unwrap();
    connection.get_mut().flush().unwrap();
    assert_eq!(read_line(&mut connection), "HTTP/1.1 200 OK");
    let mut rest = String::new();
    connection
        .read_to_string(&mut rest)
        .expect("the answer ends and the connection closes");
    assert!(rest.contains("vprov_session="), "{rest}");
    assert_eq!(server.wait(), 0);
}

fn next_event(
    rx: &mpsc::Receiver<(String, Value)>,
    what: &str,
    matches: impl Fn(&str, &Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok((name, data)) if matches(&name, &data) => return data,
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    panic!("no {what} event");
}

#[test]
fn devices_are_streamed_managed_powered_and_inventoried() {
    let (rig, server, anon) = api_rig(1);
    let olaf = anon.sign_in("olaf", OLAF);
    let stream = events(&olaf);
    // The server says when the stream sees every later change.
    next_event(&stream, "the stream ready", |name, _| name == "ready");
    let sim = rig.simulate(
        &server,
        rig.specs(0..1, Ipv4Addr::new(127, 71, 0, 1)),
        0.001,
    );
    let device = next_event(&stream, "device", |n, d| {
        n == "device" && d["state"] == "unmanaged"
    });
    let uuid = device["uuid"].as_str().unwrap().to_string();
    assert!(rig.wait_all(&sim, Duration::from_secs(60))[0].committed);

    let listed = olaf.get("/api/v1/devices?state=unmanaged").json;
    assert_eq!(listed["total"], 1);
    let paged = olaf.get("/api/v1/devices?limit=1&offset=1").json;
    assert_eq!(
        (
            paged["total"].as_u64(),
            paged["devices"].as_array().map(Vec::len)
        ),
        (Some(1), Some(0))
    );
    assert_eq!(olaf.get("/api/v1/devices?state=managed").json["total"], 0);
    assert_eq!(listed["devices"][0]["uuid"], uuid.as_str());
    assert_eq!(olaf.get("/api/v1/devices?limit=0").status, 400);
    assert_eq!(
        olaf.get(&format!("/api/v1/devices/{uuid}")).json["address"],
        "127.71.0.1"
    );
    assert_eq!(
        olaf.get("/api/v1/devices/00000000-0000-0000-0000-000000000000")
            .status,
        404
    );

    // Not managed yet: no power control.
    let early = olaf.post(
        &format!("/api/v1/devices/{uuid}/power"),
        json!({"action": "status"}),
    );
    assert_eq!(early.status, 409, "{early:?}");
    let unknown = olaf.post(
        "/api/v1/devices/manage",
        json!({"uuids": [uuid, "00000000-0000-0000-0000-000000000000"], "mode": "agentless"}),
    );
    assert_eq!(unknown.status, 404);
    let moved = olaf.post(
        "/api/v1/devices/manage",
        json!({"uuids": [uuid], "mode": "agentless"}),
    );
    assert_eq!(moved.json["managed"][0], uuid.as_str(), "{moved:?}");
    next_event(&stream, "managed device", |n, d| {
        n == "device" && d["uuid"] == uuid.as_str() && d["management_mode"] == "agentless"
    });

    let power = |action: &str| {
        olaf.post(
            &format!("/api/v1/devices/{uuid}/power"),
            json!({"action": action}),
        )
    };
    assert_eq!(power("status").json["power"], "on");
    assert_eq!(power("off").json["power"], "off");
    assert_eq!(power("status").json["power"], "off");
    assert_eq!(power("sideways").status, 422);
    let inventory = olaf.post(&format!("/api/v1/devices/{uuid}/inventory"), json!({}));
    assert_eq!(inventory.status, 200, "{inventory:?}");
    assert!(inventory.json["amt_version"].is_string(), "{inventory:?}");
    let detail = olaf.get(&format!("/api/v1/devices/{uuid}")).json;
    assert!(detail["inventory"].is_object() && detail["inventory_at"].is_string());
    // No agent deployer is configured: a clear refusal, the device stays as it is.
    let agent = olaf.post(
        "/api/v1/devices/manage",
        json!({"uuids": [uuid], "mode": "agent", "profile": "lab"}),
    );
    assert!(
        agent.json["failed"][0]["error"]
            .as_str()
            .unwrap()
            .contains("no agent deployer is configured"),
        "{agent:?}"
    );
    assert_eq!(olaf.get("/api/v1/agent-profiles").json, json!([]));

    let back = olaf.post("/api/v1/devices/unmanage", json!({"uuids": [uuid]}));
    assert_eq!(back.json["unmanaged"][0], uuid.as_str());
    next_event(&stream, "unmanaged device", |n, d| {
        n == "device" && d["uuid"] == uuid.as_str() && d["state"] == "unmanaged"
    });
    let actions = audit_actions(&olaf);
    for action in ["device.manage", "device.power", "device.unmanage"] {
        assert!(
            actions.contains(&("api:olaf".to_string(), action.to_string())),
            "{action} in {actions:?}"
        );
    }

    // A new alert reaches the stream too.
    let mut tcp = TcpStream::connect(server.hello_addr).unwrap();
    tcp.write_all(b"garbage hello").unwrap();
    drop(tcp);
    next_event(&stream, "alert", |n, _| n == "alert");
}

#[test]
fn a_configured_certificate_replaces_the_ca_issued_one() {
    let rig = Rig::new(1, "");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let dir = rig.s.dir.path();
    std::fs::write(dir.join("api.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("api.key"), key.serialize_pem()).unwrap();
    let config = std::fs::read_to_string(&rig.config).unwrap()
        + &format!(
            "[api]\ncertificate_file = \"{}\"\nkey_file = \"{}\"\n",
            dir.join("api.crt").display(),
            dir.join("api.key").display()
        );
    std::fs::write(&rig.config, config).unwrap();
    let server = rig.serve();
    let addr = server.api_addr.unwrap();
    // Trusting only the configured certificate works; vprov's CA no longer does.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let agent = ureq::AgentBuilder::new()
        .tls_config(std::sync::Arc::new(tls))
        .build();
    let answer = agent
        .get(&format!("https://{addr}/api/v1/openapi.json"))
        .call()
        .unwrap();
    assert_eq!(answer.status(), 200);
    let via_ca =
        std::panic::catch_unwind(|| ApiClient::new(&rig.s, addr).get("/api/v1/openapi.json"));
    assert!(via_ca.is_err(), "the CA-issued certificate is still served");
}

/// A management action from the API that fails raises its alert through the server's
/// alert log, so the alert sinks see it (it used to go straight to the store).
#[test]
fn a_failed_management_action_from_the_api_reaches_the_alert_sinks() {
    let rig = Rig::new(1, "");
    rig.s.add_admin("ann", "admin", ANN);
    let (sim, uuid) = rig.provision_one(72, |_| true);
    rig.s.run(&["devices", "manage", &uuid, "--agentless"]).ok();
    rig.s.install_plugin("alert_file", "alert-file.so");
    std::fs::write(
        rig.s.data_dir().join("plugins/plugins.toml"),
        "[instances.to-file]\nplugin = \"alert-file\"\n[instances.to-file.config]\npath = \"alerts.jsonl\"\n",
    )
    .unwrap();
    let server = rig.serve();
    let ann = ApiClient::new(&rig.s, server.api_addr.expect("the API is on")).sign_in("ann", ANN);
    eventually(Duration::from_secs(30), "the sink active", || {
        let plugins = ann.get("/api/v1/plugins").json;
        plugins["instances"]
            .as_array()
            .is_some_and(|i| i.iter().any(|i| i["status"] == "active"))
            .then_some(())
    });
    drop(sim);
    let failed = ann.post(
        &format!("/api/v1/devices/{uuid}/power"),
        json!({"action": "status"}),
    );
    assert!(failed.status >= 400, "{failed:?}");
    let sink = rig.s.data_dir().join("plugin-data/to-file/alerts.jsonl");
    let line = eventually(Duration::from_secs(30), "the alert in the sink", || {
        std::fs::read_to_string(&sink).ok().and_then(|t| {
            t.lines()
                .find(|l| l.contains("power status failed"))
                .map(str::to_string)
        })
    });
    let alert: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(alert["source"], "management");
    assert_eq!(alert["device_uuid"], uuid.as_str());
    assert_eq!(server.stop(), 0);
}
