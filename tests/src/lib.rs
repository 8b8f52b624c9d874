//! Test harness for vprov's end-to-end tests: runs the real `vprov` binary against a
//! real SQLite store in a temporary data directory, and the AMT device simulator
//! ([`sim`], binary `amtsim`) whose simulated devices it provisions.
//!
//! The binary is the one built into the same target directory as the test
//! executable (`cargo build --workspace` or `scripts/test.sh` builds it first).

pub mod api;
pub mod invariants;
pub mod rig;
pub mod sim;
pub mod sshd;
pub mod webdriver;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Path of the `vprov` binary next to this test executable's `deps/` directory.
pub fn vprov_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let bin = dir.join(format!("vprov{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing: build it first (scripts/test.sh does, or `cargo build --workspace`)",
        bin.display()
    );
    bin
}

/// Path of a plugin library built into the same target directory (`name` is the
/// crate's lib name, e.g. `export_csv` → `libexport_csv.so`).
pub fn plugin_library(name: &str) -> PathBuf {
    let bin = vprov_bin();
    let lib = bin.with_file_name(format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(
        lib.exists(),
        "{} is missing: build the plugins first (scripts/test.sh does, or `cargo build --workspace`)",
        lib.display()
    );
    lib
}

/// A `vprov` command with no arguments, no VPROV_* variables inherited, no
/// standard input and `USER=tester` (the audit log's actor).
pub fn bare_command() -> Command {
    let mut cmd = Command::new(vprov_bin());
    for (name, _) in std::env::vars() {
        if name.starts_with("VPROV_") {
            cmd.env_remove(name);
        }
    }
    cmd.env("USER", "tester").stdin(Stdio::null());
    cmd
}

/// A temporary data directory and helpers to run `vprov` on it.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    /// The PostgreSQL store every command of the sandbox uses (`VPROV_STORE_URL`);
    /// `None`: SQLite in the data directory.
    pub store_url: Option<String>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox {
            dir: tempfile::tempdir().expect("temporary directory"),
            store_url: None,
        }
    }
}

/// What one `vprov` run printed.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts success and returns stdout.
    pub fn ok(self) -> String {
        assert_eq!(self.code, 0, "vprov failed: {self:#?}");
        self.stdout
    }

    /// Asserts failure and returns stderr.
    pub fn fails(self) -> String {
        assert_ne!(self.code, 0, "vprov unexpectedly succeeded: {self:#?}");
        self.stderr
    }

    /// Parses stdout as JSON.
    pub fn json(self) -> serde_json::Value {
        let out = self.ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }
}

impl Sandbox {
    /// The data directory passed with `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A `vprov --data-dir <sandbox>` command with no VPROV_* variables inherited.
    pub fn command(&self) -> Command {
        let mut cmd = bare_command();
        cmd.arg("--data-dir").arg(self.data_dir());
        if let Some(url) = &self.store_url {
            cmd.env("VPROV_STORE_URL", url);
        }
        cmd
    }

    /// A sandbox whose commands use the PostgreSQL store at `url` (the master key
    /// stays in its data directory).
    pub fn on_store(url: Option<String>) -> Sandbox {
        Sandbox {
            store_url: url,
            ..Sandbox::default()
        }
    }

    /// The one integer `sql` returns, read from the sandbox's store on either engine.
    pub fn count(&self, sql: &str) -> i64 {
        match &self.store_url {
            Some(url) => postgres::Client::connect(url, postgres::NoTls)
                .and_then(|mut c| c.query_one(&format!("SELECT CAST(({sql}) AS BIGINT)"), &[]))
                .and_then(|row| row.try_get(0))
                .expect("a count from the PostgreSQL store"),
            None => self
                .sqlite()
                .query_row(sql, [], |r| r.get(0))
                .expect("a count from the SQLite store"),
        }
    }

    /// Runs `vprov <args>`.
    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.command().args(args).output().expect("run vprov"))
    }

    /// Runs `vprov <args>` with `input` on standard input.
    pub fn run_with_stdin(&self, args: &[&str], input: &str) -> Run {
        use std::io::Write;
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vprov");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        Run::from(child.wait_with_output().expect("wait for vprov"))
    }

    /// The store's bytes: the database file and its WAL, if any.
    pub fn store_bytes(&self) -> Vec<u8> {
        let mut bytes = std::fs::read(self.data_dir().join("vprov.db")).unwrap_or_default();
        bytes.extend(std::fs::read(self.data_dir().join("vprov.db-wal")).unwrap_or_default());
        bytes
    }

    /// Copies the plugin library `lib` (see [`plugin_library`]) into the data
    /// directory's plugin folder as `file`, replacing any file of that name.
    pub fn install_plugin(&self, lib: &str, file: &str) -> PathBuf {
        let dir = self.data_dir().join("plugins");
        std::fs::create_dir_all(&dir).unwrap();
        let dest = dir.join(file);
        // Write beside it and rename, as an admin replacing a library should: a
        // library being loaded is never seen half-written.
        let tmp = dir.join(format!(".{file}.tmp"));
        std::fs::copy(plugin_library(lib), &tmp).unwrap();
        std::fs::rename(&tmp, &dest).unwrap();
        dest
    }

    /// A direct connection to the store's SQLite file, for planting rows that later
    /// features write (devices, alerts).
    pub fn sqlite(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.data_dir().join("vprov.db")).expect("open store")
    }
}

/// A running `vprov serve` on the sandbox's store, killed when dropped.
pub struct Server {
    pub child: std::process::Child,
    /// Where it listens for hellos.
    pub hello_addr: std::net::SocketAddr,
    /// Where it offers the admin API and console (HTTPS).
    pub api_addr: Option<std::net::SocketAddr>,
    /// Where it serves `/metrics` (started with `--metrics-listen`).
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl Sandbox {
    /// Starts `vprov serve --hello-listen <listen> <extra…>` and waits until it
    /// listens; the admin API gets a free loopback port unless `extra` names one (or
    /// `off`).
    /// `VPROV_LOG=debug` in the environment shows the server's log.
    pub fn serve(&self, listen: &str, extra: &[&str]) -> Server {
        Server::start(self.serve_command(listen, extra))
    }

    /// The command [`Sandbox::serve`] runs.
    pub fn serve_command(&self, listen: &str, extra: &[&str]) -> Command {
        let mut command = self.command();
        command.args(["serve", "--hello-listen", listen]);
        if !extra.contains(&"--api-listen") {
            command.args(["--api-listen", "127.0.0.1:0"]);
        }
        command.args(extra);
        command
    }
}

/// `command` run with the file mode creation mask `umask` (set by `sh`, as a service
/// manager or a login shell would).
pub fn with_umask(command: &Command, umask: u32) -> Command {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!("umask {umask:03o} && exec \"$0\" \"$@\""))
        .arg(command.get_program())
        .args(command.get_args())
        .stdin(Stdio::null());
    for (name, value) in command.get_envs() {
        match value {
            Some(value) => sh.env(name, value),
            None => sh.env_remove(name),
        };
    }
    sh
}

impl Server {
    /// Starts `command` (a `vprov serve`) and waits until it listens.
    pub fn start(mut command: Command) -> Server {
        use std::io::BufRead;
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("VPROV_TEST_SERVER_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("start vprov serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut stdout = std::io::BufReader::new(stdout);
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .trim()
            .strip_prefix("listening for hellos on ")
            .unwrap_or_else(|| panic!("vprov serve did not start: {line:?}"))
            .parse()
            .expect("listening address");
        // With the API off there is no second line to wait for.
        let args: Vec<&std::ffi::OsStr> = command.get_args().collect();
        let api_off = args
            .windows(2)
            .any(|w| w[0] == "--api-listen" && w[1] == "off");
        line.clear();
        if !api_off {
            stdout.read_line(&mut line).expect("read the API line");
        }
        let api_addr = line
            .trim()
            .strip_prefix("admin API and console on https://")
            .map(|a| a.parse().expect("API address"));
        let metrics_on = args
            .windows(2)
            .any(|w| w[0] == "--metrics-listen" && w[1] != "off");
        line.clear();
        if metrics_on {
            stdout.read_line(&mut line).expect("read the metrics line");
        }
        let metrics_addr = line
            .trim()
            .strip_prefix("metrics on http://")
            .and_then(|a| a.strip_suffix("/metrics"))
            .map(|a| a.parse().expect("metrics address"));
        Server {
            child,
            hello_addr: addr,
            api_addr,
            metrics_addr,
        }
    }
}

impl Server {
    /// Sends SIGTERM and waits for a clean exit; returns the exit code.
    pub fn stop(self) -> i32 {
        self.terminate();
        self.wait()
    }

    /// Sends SIGTERM: the server begins to shut down.
    pub fn terminate(&self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
    }

    /// Waits for the server to exit; returns the exit code.
    pub fn wait(mut self) -> i32 {
        let status = self.child.wait().expect("wait for vprov serve");
        status.code().unwrap_or(-1)
    }

    /// SIGKILL: the crash case.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout`.
pub fn eventually<T>(
    timeout: std::time::Duration,
    what: &str,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
