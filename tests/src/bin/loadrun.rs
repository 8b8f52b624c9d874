//! `loadrun`: a load run of the real `vprov serve` against `amtsim` devices, printing
//! the figures the provisioning targets are checked by:
//! - devices provisioned per second end to end, and p50/p99 job time (first hello →
//!   CommitChanges, as the device saw it) for N simulated devices;
//! - well-formed hellos with unknown PIDs absorbed per second;
//! - the server's CPU seconds (user + system, from `/proc/<pid>/stat`) per
//!   provisioned device, which wall-clock noise on a shared machine does not blur;
//! - the server's RSS when it started, its peak (VmHWM) while it provisions with at
//!   most `--max-jobs` jobs in flight, and its RSS once the run is over;
//! - a stall: when no device is recorded for `--stall` seconds, the run stops with a
//!   STALL diagnosis (server alive and busy? hellos delivered or failing? jobs in
//!   flight, by step? sockets by state, the hello port's accept queue) and exits
//!   non-zero, so a run that measures nothing never passes for a slow one;
//! - with `--kill K`, a fault run: the server is killed with SIGKILL K times at
//!   random moments while it provisions, and restarted; then the store's invariants
//!   are checked (no used PID without its device, no device without its used PID,
//!   every device that committed recorded, and logging in with the credential vprov
//!   recorded for it, over TLS pinned to its certificate).
//! - with `--nodes N`, N `vprov serve` nodes on the one store (named `node0`…, hellos
//!   on 127.0.0.2…), every device saying each hello to all of them; with
//!   `--kill-node`, the first node is killed with SIGKILL once a third of the devices
//!   are recorded and not restarted: the others must finish its jobs (after its
//!   claims' lease, `--lease-ms`), and the invariants are checked as for `--kill`.
//!   CPU and RSS figures are the last node's.
//!
//! Build in release mode and run: `cargo build --release --workspace &&
//! target/release/loadrun --devices 1000`. Everything stays on loopback and stops by
//! itself; the store lives in a temporary directory.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use vprov_core::keys::{Pid, Pps};
use vprov_tests::sim::{address_for, DeviceSpec, KeyPool, SimConfig, Simulator};

const MEBX_PASSWORD: &str = "Load!Run2026";
/// How long the server is left idle after provisioning before "RSS after the run"
/// (its allocator returns freed pages about ten seconds after they are freed).
const SETTLE: Duration = Duration::from_secs(15);

/// Load run of vprov serve against simulated AMT devices.
#[derive(Debug, Parser)]
struct Args {
    /// Simulated devices to provision
    #[arg(long, default_value_t = 1000)]
    devices: u32,
    /// Well-formed hellos with unknown PIDs to send in the absorption phase
    #[arg(long, default_value_t = 50_000)]
    unknown_hellos: u32,
    /// Distinct source addresses those hellos come from
    #[arg(long, default_value_t = 5_000)]
    unknown_sources: u32,
    /// Hello connections open at once in the absorption phase
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// RSA key pairs the simulated devices share
    #[arg(long, default_value_t = 8)]
    key_pool: usize,
    /// Give up after this many seconds
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Jobs the server runs at once (`[provisioning] max_concurrent_jobs`) [default:
    /// the server's default]
    #[arg(long)]
    max_jobs: Option<usize>,
    /// Each simulated device delays every WS-Management reply by this long (real
    /// firmware: hundreds of milliseconds)
    #[arg(long, default_value_t = 0)]
    call_latency_ms: u64,
    /// After CommitChanges each simulated device's TLS port is closed this long while
    /// its firmware restarts the network stack (real firmware: seconds)
    #[arg(long, default_value_t = 0)]
    commit_restart_ms: u64,
    /// Stop with a STALL diagnosis when no device is recorded for this many seconds
    #[arg(long, default_value_t = 60)]
    stall: u64,
    /// Fault run: kill the server with SIGKILL this many times at random moments
    /// while it provisions (restarting it each time), then check the invariants
    #[arg(long, default_value_t = 0)]
    kill: u32,
    /// Run the server on this PostgreSQL store (an empty database) instead of SQLite
    /// in a temporary data directory
    #[arg(long, value_name = "URL")]
    store_url: Option<String>,
    /// PKI devices (hello v3, AMT 11.8/15/19 profiles in turn) provisioned into Admin
    /// Control Mode in the same run, with a throwaway provisioning chain; their figures
    /// are printed beside the PSK ones
    #[arg(long, default_value_t = 0)]
    pki: u32,
    /// `vprov serve` nodes on the one store
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    /// With --nodes 2 or more: kill the first node with SIGKILL once a third of the
    /// devices are recorded (not restarted), then check the invariants
    #[arg(long)]
    kill_node: bool,
    /// With --nodes 2 or more: `[cluster] lease_ms`, how long a dead node's claims
    /// keep its jobs from the others
    #[arg(long, default_value_t = 5000)]
    lease_ms: u64,
}

/// `--pki N`: imports a throwaway chain for `example.com` into the store; returns the
/// `[pki]` configuration and the N device specifications (on 127.41.x.y).
fn pki_setup(data: &Path, dir: &Path, n: u32) -> anyhow::Result<(String, Vec<DeviceSpec>)> {
    use vprov_tests::sim::pki::{PkiSetup, TestChain, TrustedHash};
    if n == 0 {
        return Ok((String::new(), Vec::new()));
    }
    let chain = TestChain::new(
        "provisioning.example.com",
        openssl::hash::MessageDigest::sha256(),
    )?;
    let (pem, key) = chain.write(dir, "load-chain")?;
    let mut c = vprov(data)?;
    c.args(["pki", "import", "load", "--pem"])
        .arg(&pem)
        .arg("--key")
        .arg(&key);
    run_ok(c, None)?;
    let versions = ["11.8.55", "15.0.35", "19.0.5"];
    let specs = (0..n)
        .map(|i| {
            let address = address_for(i, Ipv4Addr::new(127, 41, 0, 1)).context("address")?;
            let setup = PkiSetup {
                trusted: vec![TrustedHash::sha256_of(&chain.root)],
                dns_suffix: "example.com".into(),
            };
            Ok(DeviceSpec::new_pki(
                setup,
                versions[i as usize % 3],
                address,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(("[pki]\ndefault_domain = \"example.com\"\n".into(), specs))
}

/// `(recorded in s, devices/s, p50 ms, p99 ms)` of the reports `of` selects.
fn figures(
    reports: &[vprov_tests::sim::DeviceReport],
    of: impl Fn(&vprov_tests::sim::DeviceReport) -> bool,
    seconds: f64,
) -> (usize, f64, u64, u64) {
    let mut times: Vec<u64> = reports
        .iter()
        .filter(|r| of(r))
        .filter_map(|r| r.committed_after_ms)
        .collect();
    times.sort_unstable();
    (
        times.len(),
        times.len() as f64 / seconds,
        percentile(&times, 0.5),
        percentile(&times, 0.99),
    )
}

/// A loopback address with a port free right now (for the server's `/metrics`).
fn free_loopback_addr() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// The sum of the samples of `series` (any labels) on the server's `/metrics`;
/// `None` if it cannot be scraped.
fn scrape(metrics: SocketAddr, series: &str) -> Option<f64> {
    let text = ureq::get(&format!("http://{metrics}/metrics"))
        .timeout(Duration::from_secs(2))
        .call()
        .ok()?
        .into_string()
        .ok()?;
    Some(
        text.lines()
            .filter(|l| {
                l.strip_prefix(series)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum(),
    )
}

fn sibling(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    anyhow::ensure!(
        path.exists(),
        "{} not found: build the workspace first",
        path.display()
    );
    Ok(path)
}

fn vprov(data: &Path) -> anyhow::Result<Command> {
    let mut cmd = Command::new(sibling("vprov")?);
    cmd.arg("--data-dir")
        .arg(data)
        .env_remove("VPROV_MASTER_KEY");
    match STORE_URL.get().cloned().flatten() {
        Some(url) => cmd.env("VPROV_STORE_URL", url),
        None => cmd.env_remove("VPROV_STORE_URL"),
    };
    Ok(cmd)
}

fn store_at(data: &Path) -> StoreAt {
    match STORE_URL.get().cloned().flatten() {
        Some(url) => StoreAt::Url(url),
        None => StoreAt::File(data.join("vprov.db")),
    }
}

fn run_ok(mut cmd: Command, stdin: Option<&str>) -> anyhow::Result<String> {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Peak and current resident set size of a process, in MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`; 100 on
/// every Linux we run on).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A process's scheduler state letter and CPU time used (user + system), in seconds.
fn cpu_state(pid: u32) -> Option<(char, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some((state, ticks / clock_ticks()))
}

/// CPU seconds the server used: the current process's plus those of servers the
/// fault run killed.
struct CpuMeter {
    earlier: f64,
}

impl CpuMeter {
    fn total(&self, pid: u32) -> f64 {
        self.earlier + cpu_state(pid).map_or(0.0, |(_, s)| s)
    }
}

/// TCP sockets on this machine by state, and the accept queue of the listener on
/// `port` (from `/proc/net/tcp`).
fn socket_summary(port: u16) -> String {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let mut states = std::collections::BTreeMap::<&str, usize>::new();
    let mut backlog = None;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(st), Some(queues)) = (f.get(1), f.get(3), f.get(4)) else {
            continue;
        };
        let name = match *st {
            "01" => "ESTABLISHED",
            "02" => "SYN_SENT",
            "03" => "SYN_RECV",
            "04" => "FIN_WAIT1",
            "05" => "FIN_WAIT2",
            "06" => "TIME_WAIT",
            "07" => "CLOSE",
            "08" => "CLOSE_WAIT",
            "09" => "LAST_ACK",
            "0A" => "LISTEN",
            "0B" => "CLOSING",
            _ => "other",
        };
        *states.entry(name).or_default() += 1;
        let local_port = local
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        if name == "LISTEN" && local_port == Some(port) {
            // For a listener, rx_queue is the accept queue's length.
            backlog = queues
                .split(':')
                .nth(1)
                .and_then(|q| usize::from_str_radix(q, 16).ok());
        }
    }
    let states: Vec<String> = states.iter().map(|(k, v)| format!("{k} {v}")).collect();
    format!(
        "sockets: {}; hello port {port}: {}",
        states.join(", "),
        backlog.map_or("no listener".into(), |b| format!(
            "listening, {b} connections waiting to be accepted"
        ))
    )
}

/// What the run saw when progress last changed, for the stall diagnosis.
struct Progress {
    recorded: u64,
    committed: usize,
    hellos_sent: u64,
    cpu: f64,
    at: Instant,
}

/// The STALL diagnosis: what the server, the devices, the store and the sockets
/// show after `--stall` seconds without a device recorded.
fn diagnose_stall(
    server: &mut ServerProcess,
    sim: &Simulator,
    db: &StoreAt,
    hello_addr: SocketAddr,
    cpu: &CpuMeter,
    last: &Progress,
) -> String {
    let pid = server.0.id();
    let quiet = last.at.elapsed().as_secs_f64();
    let server_line = match server.0.try_wait() {
        Ok(Some(status)) => format!("server pid {pid} has EXITED ({status})"),
        _ => {
            let (state, _) = cpu_state(pid).unwrap_or(('?', 0.0));
            let used = cpu.total(pid) - last.cpu;
            format!(
                "server pid {pid} alive (state {state}), {used:.1} CPU s in the last {quiet:.0} s ({})",
                if used > quiet * 0.1 { "busy" } else { "idle" }
            )
        }
    };
    let reports = sim.reports();
    let sent: u64 = reports.iter().map(|r| u64::from(r.hellos_sent)).sum();
    let failed: u64 = reports.iter().map(|r| u64::from(r.hellos_failed)).sum();
    let never = reports.iter().filter(|r| r.hellos_sent == 0).count();
    let committed = reports.iter().filter(|r| r.committed).count();
    let mut errors = std::collections::BTreeMap::<&str, usize>::new();
    for e in reports.iter().filter_map(|r| r.last_hello_error.as_deref()) {
        *errors.entry(e).or_default() += 1;
    }
    let errors: Vec<String> = errors.iter().map(|(e, n)| format!("{n}× {e}")).collect();
    let jobs = query_rows(
        db,
        "SELECT step || ' ' || count(*) FROM provisioning_jobs GROUP BY step",
    );
    let backing_off = count(
        db,
        "SELECT count(*) FROM job_backoff WHERE retry_at > unixepoch() * 1000",
    );
    let alerts = query_rows(
        db,
        "SELECT count || '× ' || substr(message, 1, 160) FROM alerts ORDER BY last_seen DESC, id DESC LIMIT 3",
    );
    format!(
        "STALL: no device recorded for {quiet:.0} s ({} of {} recorded)\n  \
         {server_line}\n  \
         hellos: {sent} delivered ({} since the last progress), {failed} failed{}; \
         {never} devices never got one through\n  \
         devices: {committed} committed ({} since the last progress)\n  \
         jobs in flight (store intents by step): {}; \
         {backing_off} devices backing off after a failure\n  \
         latest alerts: {}\n  \
         {}",
        last.recorded,
        reports.len(),
        sent - last.hellos_sent.min(sent),
        if errors.is_empty() {
            String::new()
        } else {
            format!(" (last errors: {})", errors.join("; "))
        },
        committed.saturating_sub(last.committed),
        if jobs.is_empty() {
            "none".into()
        } else {
            jobs.join(", ")
        },
        if alerts.is_empty() {
            "none".into()
        } else {
            alerts.join(" | ")
        },
        socket_summary(hello_addr.port()),
    )
}

/// Starts `vprov serve` with the load configuration; returns it and its hello address.
fn start_server(
    data: &Path,
    config: &Path,
    hello_listen: &str,
    device_port: u16,
    node: Option<&str>,
    metrics_listen: &str,
) -> anyhow::Result<(ServerProcess, SocketAddr)> {
    let mut child = vprov(data)?
        .arg("--config")
        .arg(config)
        .args([
            "serve",
            "--hello-listen",
            hello_listen,
            "--api-listen",
            "127.0.0.1:0",
        ])
        .args(["--device-port", &device_port.to_string()])
        .args(["--metrics-listen", metrics_listen])
        .args(node.map(|n| ["--node", n]).into_iter().flatten())
        .env("VPROV_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(match std::env::var_os("LOADRUN_SERVER_LOG") {
            Some(path) => Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
            None => Stdio::null(),
        })
        .spawn()?;
    let mut line = String::new();
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    stdout.read_line(&mut line)?;
    // Whatever else the server prints (the API line) is read until it exits: it
    // must never write into a closed pipe.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let hello_addr: SocketAddr = line
        .trim()
        .strip_prefix("listening for hellos on ")
        .with_context(|| format!("vprov serve did not start: {line:?}"))?
        .parse()?;
    Ok((ServerProcess(child), hello_addr))
}

/// A random moment for the next SIGKILL: 0.3 to 3 s away.
fn random_pause() -> Duration {
    Duration::from_millis(300 + rand::random::<u64>() % 2700)
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Where the run's store is read for progress: the SQLite file or, with
/// `--store-url`, the PostgreSQL database.
enum StoreAt {
    File(PathBuf),
    Url(String),
}

/// `--store-url`, for every `vprov` this run starts (as `VPROV_STORE_URL`).
static STORE_URL: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// The first column of every row `sql` returns, as text (empty on any error).
fn query_rows(db: &StoreAt, sql: &str) -> Vec<String> {
    match db {
        StoreAt::File(path) => {
            let rows = || -> rusqlite::Result<Vec<String>> {
                let conn = rusqlite::Connection::open_with_flags(
                    path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )?;
                let mut stmt = conn.prepare(sql)?;
                let rows = stmt.query_map([], |r| r.get(0))?;
                rows.collect()
            };
            rows().unwrap_or_default()
        }
        StoreAt::Url(url) => postgres::Client::connect(url, postgres::NoTls)
            .and_then(|mut c| c.query(sql, &[]))
            .map(|rows| rows.iter().filter_map(|r| r.try_get(0).ok()).collect())
            .unwrap_or_default(),
    }
}

fn count(db: &StoreAt, sql: &str) -> u64 {
    match db {
        StoreAt::File(path) => {
            rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .and_then(|c| c.query_row(sql, [], |r| r.get(0)))
                .unwrap_or(0)
        }
        // PostgreSQL sums to NUMERIC: the figure is cast to BIGINT.
        StoreAt::Url(url) => postgres::Client::connect(url, postgres::NoTls)
            .and_then(|mut c| c.query_one(&format!("SELECT CAST(({sql}) AS BIGINT)"), &[]))
            .and_then(|r| r.try_get::<_, i64>(0))
            .map_or(0, |n| n as u64),
    }
}

struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.wait();
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    vprov_tests::sim::raise_nofile();
    if args.nodes == 0 || (args.kill > 0 && args.nodes > 1) || (args.kill_node && args.nodes < 2) {
        bail!("--nodes must be at least 1, --kill needs one node, --kill-node at least two");
    }
    STORE_URL
        .set(args.store_url.clone())
        .expect("set once, at the start");
    if args.pki > 0 && args.kill > 0 {
        bail!("--kill checks PSK invariants (every device has its used PID): run it without --pki");
    }
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let n = args.devices;

    // `--devices 0 --pki N` is a PKI-only run: no keys.
    if n > 0 {
        run_ok(
            {
                let mut c = vprov(&data)?;
                c.args(["keys", "generate", "--count", &n.to_string()]);
                c
            },
            None,
        )?;
    }
    run_ok(
        {
            let mut c = vprov(&data)?;
            c.args(["password", "set", "--stdin"]);
            c
        },
        Some(&format!("{MEBX_PASSWORD}\n")),
    )?;
    let listed: serde_json::Value = serde_json::from_str(&run_ok(
        {
            let mut c = vprov(&data)?;
            c.args(["keys", "list", "--reveal", "--format", "json"]);
            c
        },
        None,
    )?)?;
    let keys: Vec<(Pid, Pps)> = listed
        .as_array()
        .context("key list")?
        .iter()
        .map(|k| {
            Ok((
                k["pid"].as_str().context("pid")?.parse()?,
                k["pps"].as_str().context("pps")?.parse()?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;

    let (pki_config, pki_specs) = pki_setup(&data, dir.path(), args.pki)?;
    let device_port = vprov_tests::sim::free_device_port();
    let metrics_addr = free_loopback_addr()?;
    let config = dir.path().join("load.toml");
    let max_jobs = args
        .max_jobs
        .map(|m| format!("max_concurrent_jobs = {m}\n"))
        .unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            "[alerts]\nmax_rows = 10000000\n\
             [hello]\nmax_connections = 4096\nper_source_burst = 50\nper_source_per_second = 50.0\n\
             [provisioning]\n{max_jobs}commit_wait_ms = 200\n\
             confirm_timeout_ms = 60000\nstep_timeout_ms = 60000\nconnect_timeout_ms = 30000\n\
             {pki_config}[cluster]\nlease_ms = {lease_ms}\n",
            lease_ms = args.lease_ms
        ),
    )?;
    // Every node but the last (whose figures are measured).
    let mut others = Vec::new();
    for i in 0..args.nodes - 1 {
        let listen = format!("127.0.0.{}:0", 2 + i);
        let name = format!("node{i}");
        others.push(start_server(
            &data,
            &config,
            &listen,
            device_port,
            Some(&name),
            "off",
        )?);
    }
    let (listen, name) = match args.nodes {
        1 => ("127.0.0.1:0".to_string(), None),
        n => (
            format!("127.0.0.{}:0", 1 + n),
            Some(format!("node{}", n - 1)),
        ),
    };
    // Only the measured node offers /metrics (its figures are scraped).
    let metrics_listen = metrics_addr.to_string();
    let (server, hello_addr) = start_server(
        &data,
        &config,
        &listen,
        device_port,
        name.as_deref(),
        &metrics_listen,
    )?;
    let mut server = server;
    let mut server_pid = server.0.id();
    let db = store_at(&data);

    let rt = tokio::runtime::Runtime::new()?;
    let job_limit = scrape(metrics_addr, "vprov_jobs_limit").unwrap_or(0.0);
    println!(
        "vprov load run: {n} devices, at most {job_limit} jobs at once, server pid {server_pid}, \
         hellos on {hello_addr}; devices answer WS-Man in {} ms and restart {} ms after a commit",
        args.call_latency_ms, args.commit_restart_ms
    );
    let pool = Arc::new(KeyPool::generate(args.key_pool)?);
    let specs = keys
        .into_iter()
        .enumerate()
        .map(|(i, (pid, pps))| {
            let addr = address_for(i as u32, Ipv4Addr::new(127, 40, 0, 1)).context("address")?;
            Ok(DeviceSpec::new(pid, pps, MEBX_PASSWORD, addr))
        })
        .chain(pki_specs.into_iter().map(Ok))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut sim_config = SimConfig::new(hello_addr, pool);
    sim_config.also_to = others.iter().map(|(_, addr)| *addr).collect();
    sim_config.device_port = device_port;
    sim_config.time_scale = 0.05;
    sim_config.restart_delay = Duration::from_millis(100);
    sim_config.call_latency = Duration::from_millis(args.call_latency_ms);
    sim_config.commit_restart = Duration::from_millis(args.commit_restart_ms);

    // Phase 1: provisioning.
    let mut cpu = CpuMeter { earlier: 0.0 };
    let cpu_at_start = cpu.total(server_pid);
    let rss_at_start = rss_mib(server_pid).1;
    let own_cpu_at_start = cpu_state(std::process::id()).map_or(0.0, |(_, s)| s);
    let started = Instant::now();
    let sim = rt.block_on(Simulator::start(sim_config, specs))?;
    let deadline = started + Duration::from_secs(args.timeout);
    let mut peak_rss = 0.0f64;
    let mut peak_jobs = 0.0f64;
    let mut peak_queued = 0.0f64;
    let mut last_scrape = Instant::now();
    let mut last_report = Instant::now();
    let mut kills_left = args.kill;
    let mut next_kill = Instant::now() + random_pause();
    let mut progress = Progress {
        recorded: 0,
        committed: 0,
        hellos_sent: 0,
        cpu: cpu_at_start,
        at: Instant::now(),
    };
    loop {
        let recorded = count(&db, "SELECT count(*) FROM devices");
        peak_rss = peak_rss.max(rss_mib(server_pid).0);
        if last_scrape.elapsed() >= Duration::from_millis(250) {
            last_scrape = Instant::now();
            peak_jobs = peak_jobs.max(scrape(metrics_addr, "vprov_jobs_in_flight").unwrap_or(0.0));
            peak_queued = peak_queued.max(scrape(metrics_addr, "vprov_jobs_queued").unwrap_or(0.0));
        }
        if recorded >= u64::from(n + args.pki) && kills_left == 0 {
            break;
        }
        if kills_left > 0 && Instant::now() >= next_kill {
            kills_left -= 1;
            let mut old = server;
            cpu.earlier = cpu.total(server_pid);
            let _ = old.0.kill();
            let _ = old.0.wait();
            std::mem::forget(old);
            let (restarted, _) = start_server(
                &data,
                &config,
                &hello_addr.to_string(),
                device_port,
                None,
                &metrics_listen,
            )?;
            server = restarted;
            server_pid = server.0.id();
            eprintln!(
                "  {:.1} s: killed the server ({} of {} kills), restarted as pid {server_pid} with {recorded} devices recorded",
                started.elapsed().as_secs_f64(),
                args.kill - kills_left,
                args.kill
            );
            next_kill = Instant::now() + random_pause();
        }
        if args.kill_node && !others.is_empty() && recorded >= u64::from(n) / 3 {
            let (mut first, _) = others.remove(0);
            let _ = first.0.kill();
            let _ = first.0.wait();
            std::mem::forget(first);
            eprintln!(
                "  {:.1} s: killed node0 with {recorded} devices recorded; the others finish its jobs",
                started.elapsed().as_secs_f64()
            );
        }
        let reporting = last_report.elapsed() >= Duration::from_secs(5);
        if reporting || progress.at.elapsed() >= Duration::from_secs(args.stall) {
            let reports = sim.reports();
            let committed = reports.iter().filter(|r| r.committed).count();
            if recorded != progress.recorded || committed != progress.committed {
                progress = Progress {
                    recorded,
                    committed,
                    hellos_sent: reports.iter().map(|r| u64::from(r.hellos_sent)).sum(),
                    cpu: cpu.total(server_pid),
                    at: Instant::now(),
                };
            }
            if reporting {
                last_report = Instant::now();
                eprintln!(
                    "  {:.0} s: {committed} devices committed, {recorded} recorded; server {:.1} CPU s, RSS {:.1} MiB",
                    started.elapsed().as_secs_f64(),
                    cpu.total(server_pid) - cpu_at_start,
                    rss_mib(server_pid).1
                );
            }
        }
        if progress.at.elapsed() >= Duration::from_secs(args.stall) {
            println!(
                "{}",
                diagnose_stall(&mut server, &sim, &db, hello_addr, &cpu, &progress)
            );
            bail!("stalled: no device recorded for {} s", args.stall);
        }
        if Instant::now() > deadline {
            println!(
                "{}",
                diagnose_stall(&mut server, &sim, &db, hello_addr, &cpu, &progress)
            );
            bail!("timed out: {recorded} of {n} devices recorded");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    let cpu_used = cpu.total(server_pid) - cpu_at_start;
    let reports = sim.reports();
    let mut times: Vec<u64> = reports
        .iter()
        .filter_map(|r| r.committed_after_ms)
        .collect();
    times.sort_unstable();
    println!(
        "provisioning: {} devices recorded in {:.2} s = {:.1} devices/s; job time (hello → commit) p50 {} ms, p99 {} ms, max {} ms",
        n + args.pki,
        elapsed.as_secs_f64(),
        f64::from(n + args.pki) / elapsed.as_secs_f64(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.last().copied().unwrap_or(0)
    );
    if args.pki > 0 {
        let secs = elapsed.as_secs_f64();
        for (label, pki) in [("PSK", false), ("PKI", true)] {
            let (count, rate, p50, p99) =
                figures(&reports, |r| r.control_mode.is_some() == pki, secs);
            println!(
                "  {label}: {count} devices committed, {rate:.1} devices/s over the run; job time p50 {p50} ms, p99 {p99} ms"
            );
        }
    }
    println!("server peak RSS after provisioning: {peak_rss:.1} MiB");
    println!(
        "server jobs: peak {peak_jobs} in flight, peak {peak_queued} hellos waiting for a slot \
         (/metrics every 250 ms); {} hellos met the job limit",
        // A count: printed whole (a float counter of zero could print as "-0").
        scrape(metrics_addr, "vprov_job_limit_reached_total").unwrap_or(0.0) as u64
    );
    let total = n + args.pki;
    let own_cpu = cpu_state(std::process::id()).map_or(0.0, |(_, s)| s) - own_cpu_at_start;
    println!(
        "server CPU: {cpu_used:.1} s for {total} devices = {:.2} ms per device \
         (the simulated devices and this tool: {:.2} ms per device)",
        cpu_used * 1000.0 / f64::from(total),
        own_cpu * 1000.0 / f64::from(total)
    );
    if args.kill > 0 || args.kill_node {
        let checked = rt.block_on(vprov_tests::invariants::check(
            &data,
            STORE_URL.get().cloned().flatten().as_deref(),
            &sim.reports(),
            device_port,
        ))?;
        let kills = if args.kill_node {
            "node0 killed with SIGKILL, not restarted".to_string()
        } else {
            format!("{} SIGKILLs", args.kill)
        };
        println!(
            "fault run: {kills}; invariants hold: {checked} committed devices recorded and \
             logged into with their recorded credential, no used PID without its device, \
             no device without its used PID"
        );
    }
    drop(sim);
    // The run is over once the devices are gone; give the server time to finish what
    // is left (alerts, returning freed memory) before reading what it keeps.
    std::thread::sleep(SETTLE);
    println!(
        "server RSS: {rss_at_start:.1} MiB at start, peak {peak_rss:.1} MiB while provisioning, \
         {:.1} MiB {} s after the run",
        rss_mib(server_pid).1,
        SETTLE.as_secs()
    );

    // Phase 2: unknown PIDs, from many source addresses at once. A hello counts as
    // absorbed once its alert is stored, so the rate covers the server's whole path
    // (accept, parse, PID lookup, alert), not just the kernel taking the bytes.
    let flood_started = Instant::now();
    let (secs, ok) = rt.block_on(flood(hello_addr, &args))?;
    println!(
        "unknown-PID hellos: {ok} of {} sent in {secs:.2} s ({:.0}/s)",
        args.unknown_hellos,
        f64::from(ok) / secs
    );
    let mut last = (0, Instant::now());
    let stored = loop {
        let stored = count(
            &db,
            "SELECT coalesce(sum(count), 0) FROM alerts WHERE message LIKE '%unknown PID%'",
        );
        if stored != last.0 {
            last = (stored, Instant::now());
        }
        // Done when every hello is stored, or nothing more arrived for 5 s.
        if stored >= u64::from(ok) || last.1.elapsed() > Duration::from_secs(5) {
            break stored;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let absorbed_secs = (last.1 - flood_started).as_secs_f64();
    println!(
        "alert log: {stored} unknown-PID alerts stored {:.2} s after the first hello = {:.0} hellos/s absorbed",
        absorbed_secs,
        stored as f64 / absorbed_secs
    );
    let (hwm, rss) = rss_mib(server_pid);
    println!("server RSS after the hello flood: peak {hwm:.1} MiB, now {rss:.1} MiB");
    drop(server);
    Ok(())
}

/// Sends `unknown_hellos` well-formed v2 hellos with unknown PIDs (valid check
/// characters) round-robin from `unknown_sources` addresses; returns (seconds,
/// delivered).
async fn flood(server: SocketAddr, args: &Args) -> anyhow::Result<(f64, u32)> {
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut generator = vprov_core::keys::KeyGenerator::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut ok = 0u32;
    let started = Instant::now();
    for i in 0..args.unknown_hellos {
        let source = address_for(i % args.unknown_sources, Ipv4Addr::new(127, 60, 0, 1))
            .context("source address")?;
        let pid = generator.pid();
        let mut hello = vec![1u8, 0, 2, 0, 0, 0, 0, 0];
        hello.extend((i as u128).to_le_bytes());
        hello.extend(pid.as_bytes());
        let permit = sem.clone().acquire_owned().await?;
        tasks.spawn(async move {
            let _permit = permit;
            let sent = async {
                use tokio::io::AsyncWriteExt;
                let socket = tokio::net::TcpSocket::new_v4()?;
                socket.bind(SocketAddr::new(source.into(), 0))?;
                let mut stream = socket.connect(server).await?;
                stream.write_all(&hello).await?;
                stream.shutdown().await
            };
            sent.await.is_ok()
        });
        while let Some(done) = tasks.try_join_next() {
            ok += u32::from(done?);
        }
    }
    while let Some(done) = tasks.join_next().await {
        ok += u32::from(done?);
    }
    Ok((started.elapsed().as_secs_f64(), ok))
}
