//! End to end: what a new admin does in the first hour works as written — the README
//! tour's commands, one data directory per server, private export files, `keys check`
//! against the store, the way into the console on first run, and the small things
//! (closed pipes, `--help`, `--api-listen off`, audit actors, pasted passwords).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use vprov_tests::api::ApiClient;
use vprov_tests::{eventually, Sandbox};

const WAIT: Duration = Duration::from_secs(30);

fn generate(s: &Sandbox, count: u32) {
    s.run(&["keys", "generate", "--count", &count.to_string()])
        .ok();
}

fn keys(s: &Sandbox, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["keys", "list", "--format", "json"];
    args.extend_from_slice(extra);
    s.run(&args).json().as_array().unwrap().clone()
}

fn pid(k: &Value) -> &str {
    k["pid"].as_str().unwrap()
}

fn pps(k: &Value) -> &str {
    k["pps"].as_str().unwrap()
}

/// A child process killed when dropped, so a failing test leaves no server behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn revoking_a_batch_or_several_keys_needs_yes_without_a_terminal() {
    let s = Sandbox::default();
    generate(&s, 4);
    let all = keys(&s, &[]);

    // Standard input is not a terminal: nothing to confirm on, so refuse.
    let err = s.run(&["keys", "revoke", "--batch", "1"]).fails();
    assert!(err.contains("--yes"), "{err}");
    let err = s
        .run(&["keys", "revoke", pid(&all[0]), pid(&all[1])])
        .fails();
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(keys(&s, &["--state", "available"]).len(), 4);

    // One named key needs no confirmation; several or a batch need --yes.
    let out = s.run(&["keys", "revoke", pid(&all[0])]).ok();
    assert!(out.contains("revoked"), "{out}");
    s.run(&["keys", "revoke", "--yes", pid(&all[1]), pid(&all[2])])
        .ok();
    let out = s.run(&["keys", "revoke", "--batch", "1", "--yes"]).ok();
    assert!(out.contains("1 available keys revoked"), "{out}");
    assert_eq!(keys(&s, &["--state", "revoked"]).len(), 4);
}

/// Runs `vprov --data-dir … <args>` on a pseudo-terminal (util-linux `script`), with
/// `input` typed at it; returns what the terminal showed.
fn on_a_terminal(s: &Sandbox, args: &str, input: &str) -> String {
    use std::io::Write;
    let line = format!(
        "{} --data-dir '{}' {args}",
        vprov_tests::vprov_bin().display(),
        s.data_dir().display()
    );
    let mut command = std::process::Command::new("script");
    for (name, _) in std::env::vars() {
        if name.starts_with("VPROV_") {
            command.env_remove(name);
        }
    }
    let mut child = command
        .args(["-qec", &line, "/dev/null"])
        .env("USER", "tester")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("util-linux script");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn on_a_terminal_revoking_a_batch_asks_first() {
    let s = Sandbox::default();
    generate(&s, 2);
    let shown = on_a_terminal(&s, "keys revoke --batch 1", "n\n");
    assert!(shown.contains("all 2 available keys of batch 1"), "{shown}");
    assert!(shown.contains("nothing was revoked"), "{shown}");
    assert_eq!(keys(&s, &["--state", "available"]).len(), 2);
    let shown = on_a_terminal(&s, "keys revoke --batch 1", "y\n");
    assert!(shown.contains("2 available keys revoked"), "{shown}");
    assert_eq!(keys(&s, &["--state", "revoked"]).len(), 2);
}

#[test]
fn keys_list_finds_one_key_by_pid_and_filters_available_keys_for_amtsim() {
    let s = Sandbox::default();
    generate(&s, 3);
    let all = keys(&s, &[]);
    s.run(&["keys", "revoke", pid(&all[1])]).ok();

    let one = keys(
        &s,
        &["--pid", &pid(&all[2]).to_lowercase().replace('-', "")],
    );
    assert_eq!(one.len(), 1, "{one:?}");
    assert_eq!(one[0]["pid"], all[2]["pid"]);

    // The README's recipe for amtsim: available keys only, with their PPSs.
    let available = keys(&s, &["--state", "available", "--reveal"]);
    assert_eq!(available.len(), 2);
    assert!(available.iter().all(|k| k["state"] == "available"));
    assert!(available.iter().all(|k| k["pps"].is_string()));

    let err = s.run(&["keys", "list", "--pid", "0000-037M"]).ok();
    assert_eq!(err.lines().count(), 1, "only the header: {err}");
}

#[test]
fn keys_check_says_whether_the_pps_belongs_to_the_stored_pid() {
    let s = Sandbox::default();
    generate(&s, 2);
    let all = keys(&s, &["--reveal"]);
    let (a, b) = (&all[0], &all[1]);

    // A swapped pair: both halves are well formed, but they do not belong together.
    let run = s.run(&["keys", "check", pid(a), pps(b)]);
    let text = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(text.contains("does not belong"), "{text}");
    assert!(text.contains("batch 1"), "{text}");
    assert!(text.contains("available"), "{text}");
    for k in &all {
        assert!(!text.contains(&pps(k)[..9]), "a PPS was printed: {text}");
    }

    let out = s.run(&["keys", "check", pid(a), pps(a)]).ok();
    assert!(out.contains("belongs to PID"), "{out}");
    assert!(
        out.contains("batch 1") && out.contains("available"),
        "{out}"
    );
    assert!(!out.contains(&pps(a)[..9]), "{out}");

    // A well-formed PID this store never issued.
    let run = s.run(&["keys", "check", "0000-037M"]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stderr.contains("not in the store"), "{run:#?}");

    // Without a store (no data directory) only the form is checked, and none is made.
    let bare = Sandbox::default();
    let out = bare.run(&["keys", "check", pid(a), pps(b)]).ok();
    assert!(out.contains("well formed"), "{out}");
    assert!(!bare.data_dir().exists());
}

/// Starts `vprov serve` with stderr captured; returns the child, its two stdout
/// lines, and the stderr text as it arrives.
fn serve_capturing(s: &Sandbox, extra: &[&str]) -> (Reaped, Vec<String>, Arc<Mutex<String>>) {
    let mut child = Reaped(
        s.command()
            .args(["serve", "--hello-listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start vprov serve"),
    );
    let stderr = Arc::new(Mutex::new(String::new()));
    let mut err = child.0.stderr.take().unwrap();
    let sink = stderr.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    let mut out = BufReader::new(child.0.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        lines.push(line.trim_end().to_string());
    }
    // Keep draining stdout so the server never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (child, lines, stderr)
}

#[test]
fn a_second_server_on_the_same_data_directory_is_refused_naming_the_first() {
    let s = Sandbox::default();
    let first = s.serve("127.0.0.1:0", &[]);
    let first_pid = first.child.id();

    let mut second = Reaped(
        s.command()
            .args(["serve", "--hello-listen", "127.0.0.1:0"])
            .args(["--api-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let status = eventually(WAIT, "the second server to give up", || {
        second.0.try_wait().unwrap()
    });
    assert!(!status.success());
    let mut err = String::new();
    second
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains(&format!("pid {first_pid}")), "{err}");
    assert!(err.contains("already"), "{err}");
    let mut out = String::new();
    second
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(!out.contains("listening"), "it listened: {out}");

    // One-shot commands keep working beside the running server.
    generate(&s, 2);
    assert_eq!(keys(&s, &[]).len(), 2);

    // Once the first has stopped, a new server starts.
    assert_eq!(first.stop(), 0);
    let again = s.serve("127.0.0.1:0", &[]);
    assert!(again.api_addr.is_some());
}

#[test]
fn exported_files_are_private_and_the_cli_says_so() {
    let s = Sandbox::default();
    generate(&s, 3);
    s.install_plugin("export_csv", "export-csv.so");
    let out = s.dir.path().join("batch1.csv");
    for extra in [&[][..], &["--force"][..]] {
        let mut args = vec!["keys", "export", "--batch", "1", "--format", "csv"];
        args.extend(["--output", out.to_str().unwrap()]);
        args.extend(extra);
        let said = s.run(&args).ok();
        assert!(said.contains("written with mode 0600"), "{said}");
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }

    // A reveal written by vprov (not by a shell redirect) is private too.
    let list = s.dir.path().join("keys.json");
    let list_arg = list.to_str().unwrap();
    let said = s
        .run(&[
            "keys", "list", "--reveal", "--format", "json", "--output", list_arg,
        ])
        .ok();
    assert!(said.contains("written with mode 0600"), "{said}");
    let mode = std::fs::metadata(&list).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    let listed: Value = serde_json::from_slice(&std::fs::read(&list).unwrap()).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3);
    assert!(listed[0]["pps"].is_string());
    let err = s.run(&["keys", "list", "--output", list_arg]).fails();
    assert!(err.contains("--force"), "{err}");
}

#[test]
fn the_banner_and_the_sign_in_page_say_how_to_create_the_first_account() {
    let s = Sandbox::default();
    let (server, lines, stderr) = serve_capturing(&s, &["--api-listen", "127.0.0.1:0"]);
    assert!(
        lines[0].starts_with("listening for hellos on "),
        "{lines:?}"
    );
    let api: std::net::SocketAddr = lines[1]
        .strip_prefix("admin API and console on https://")
        .unwrap_or_else(|| panic!("{lines:?}"))
        .parse()
        .unwrap();
    eventually(WAIT, "the first-account hint in the log", || {
        stderr
            .lock()
            .unwrap()
            .contains("vprov admin add NAME")
            .then_some(())
    });
    let client = ApiClient::new(&s, api);
    let answer = client.get("/api/v1/session");
    assert_eq!(answer.status, 401);
    assert!(answer.error().contains("vprov admin add"), "{answer:?}");
    assert_eq!(answer.json["admin_accounts"], false, "{answer:?}");

    // Once an account exists the hint is gone from the API and the next start.
    s.add_admin("ann", "admin", "a-good-long-password");
    let answer = client.get("/api/v1/session");
    assert_eq!(answer.status, 401);
    assert!(!answer.error().contains("vprov admin add"), "{answer:?}");
    drop(server);
    let (_server, _, stderr) = serve_capturing(&s, &["--api-listen", "127.0.0.1:0"]);
    eventually(WAIT, "the server to log that it serves", || {
        stderr
            .lock()
            .unwrap()
            .contains("vprov serving")
            .then_some(())
    });
    assert!(
        !stderr.lock().unwrap().contains("vprov admin add"),
        "{}",
        stderr.lock().unwrap()
    );
}

#[test]
fn a_closed_output_pipe_ends_a_command_quietly() {
    let s = Sandbox::default();
    generate(&s, 1);
    for args in [&["plugins", "list"][..], &["keys", "batches"][..]] {
        // The reading end is closed before vprov writes: every write fails (EPIPE).
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let output = s
            .command()
            .args(args)
            .stdout(Stdio::from(write))
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

#[test]
fn serve_keeps_serving_when_its_output_pipe_is_closed() {
    // A supervisor that reads the listening line and closes the pipe (loadrun did)
    // must not stop the server: it exited at its next line, quietly, with status 0,
    // and a whole load run provisioned nothing.
    let s = Sandbox::default();
    generate(&s, 1);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (read, write) = nix::unistd::pipe().unwrap();
    drop(read);
    let mut server = s
        .serve_command(&format!("127.0.0.1:{port}"), &[])
        .stdout(Stdio::from(write))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = server.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&line);
        }
    });
    eventually(
        Duration::from_secs(20),
        "the listening lines in the log",
        || {
            log.lock()
                .unwrap()
                .contains(&format!("listening for hellos on 127.0.0.1:{port}"))
                .then_some(())
        },
    );
    // The line above is logged after the write to the closed pipe failed; the server
    // still answers on its hello port and has not exited.
    std::net::TcpStream::connect(("127.0.0.1", port)).expect("the hello port still listens");
    assert!(
        server.try_wait().unwrap().is_none(),
        "vprov serve exited: {}",
        log.lock().unwrap()
    );
    let _ = server.kill();
    let _ = server.wait();
}

#[test]
fn keys_export_help_lists_each_formats_options() {
    let help = Sandbox::default().run(&["keys", "export", "--help"]).ok();
    for option in [
        "dashes=",
        "delimiter=",
        "paper=",
        "printer=",
        "version=",
        "consumable=",
        "scramble=",
        "server=",
        "port=",
        "mode=",
    ] {
        assert!(help.contains(option), "{option} missing from:\n{help}");
    }
}

#[test]
fn api_listen_off_turns_the_api_off_on_the_command_line() {
    let s = Sandbox::default();
    let mut server = s.serve("127.0.0.1:0", &["--api-listen", "off"]);
    assert_eq!(server.api_addr, None);
    // It serves hellos all the same.
    std::net::TcpStream::connect(server.hello_addr).unwrap();
    assert!(server.child.try_wait().unwrap().is_none(), "it exited");
}

#[test]
fn a_token_issued_by_the_cli_is_audited_under_the_cli_user() {
    let s = Sandbox::default();
    s.add_admin("ann", "admin", "a-good-long-password");
    s.run(&["admin", "token", "ann", "--comment", "nightly"])
        .ok();
    let audit = s.run(&["audit", "list", "--format", "json"]).json();
    let issued = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "admin.token_issued")
        .unwrap_or_else(|| panic!("{audit}"));
    assert_eq!(issued["actor"], "cli:tester", "{issued}");
    assert_eq!(issued["detail"]["name"], "ann", "{issued}");
}

#[test]
fn a_password_on_stdin_with_surrounding_whitespace_is_refused() {
    let s = Sandbox::default();
    for (args, password) in [
        (
            &["admin", "add", "ann", "--stdin"][..],
            "a-good-long-password ",
        ),
        (
            &["admin", "add", "ann", "--stdin"][..],
            " a-good-long-password",
        ),
        (&["password", "set", "--stdin"][..], "Prov!sion1ng-Pass\t"),
    ] {
        let err = s.run_with_stdin(args, &format!("{password}\n")).fails();
        assert!(err.contains("whitespace"), "{err}");
        assert!(
            !err.contains(password.trim()),
            "the password was printed: {err}"
        );
    }
    assert_eq!(
        s.run(&["admin", "list", "--format", "json"]).json(),
        serde_json::json!([])
    );
    // Without the stray space it is taken (a Windows line ending is no whitespace).
    s.run_with_stdin(
        &["admin", "add", "ann", "--stdin"],
        "a-good-long-password\r\n",
    )
    .ok();
}

/// A SIGTERM sent the moment the listening line appears (a service manager's stop
/// right after start, a test's) stops the server cleanly: the handler is in place
/// before the line is printed, not only once the server has finished starting.
#[test]
fn serve_stops_cleanly_on_a_sigterm_sent_as_soon_as_it_listens() {
    let s = Sandbox::default();
    for _ in 0..10 {
        let server = s.serve("127.0.0.1:0", &["--api-listen", "off"]);
        assert_eq!(server.stop(), 0, "vprov serve was killed by its SIGTERM");
    }
}
