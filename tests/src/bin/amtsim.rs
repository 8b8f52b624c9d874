//! `amtsim`: runs N simulated Intel AMT devices in setup mode against a vprov server
//! (hellos to `--server`, TLS-PSK on each device's own loopback address) and reports
//! per-device outcomes as JSON. See `vprov_tests::sim` for what a device does and the
//! source of each behaviour.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use vprov_core::keys::{Pid, Pps};
use vprov_tests::sim::pki::{PkiSetup, TrustedHash};
use vprov_tests::sim::{
    address_for, AmtVersion, Behaviour, DeviceReport, DeviceSpec, Fault, KeyPool, Outcome,
    SimConfig, Simulator, TlsAlert, DEFAULT_AMT_VERSION, DEFAULT_CLOCK_OFFSET_S,
    DEFAULT_REPLY_CHUNK_SIZE,
};

/// Simulate Intel AMT devices doing one-touch (PID/PPS, TLS-PSK) provisioning, and
/// with --pki AMT 11+ devices doing PKI remote configuration (hello v3).
///
/// Each device gets its own loopback address (base, base+1, …, skipping host octets
/// .0 and .255), sends v2 PSK hellos to --server on the 5×1 min / 5×10 min / 5×1 h
/// schedule (scaled by --time-scale), and serves TLS-PSK + Digest + WS-Management on
/// --device-port of its address until CommitChanges; then it serves TLS with the
/// installed certificate until amtsim exits.
///
/// Devices behave like real firmware by default, strictest documented behaviour first:
/// a 401 or 400 ends the connection; SetAdminAclEntryEx resets every Digest nonce;
/// Digest needs qop=auth; a factory device has no host name and CommitChanges answers
/// 2057 until one is Put; AMT before 6.2 has no GenerateKeyPair (AddKey instead);
/// replies are chunked; AMT before 7.0 rejects ClientHellos above TLS 1.0; creating the
/// TLS credential context needs "TLSProtocolEndpointInstances Collection". The flags
/// below turn single behaviours off.
///
/// A device counts as provisioned once it committed and a client (vprov's confirm
/// step) made an authenticated request over its certificate TLS server. amtsim waits
/// for that (up to --timeout) before it reports. With --vprov-data-dir it also waits
/// until vprov's store records every device expected to be provisioned, and checks that
/// it records no other. Exit status 0 means every device reached its expected outcome:
/// "provisioned", or "not-provisioned" for devices with a fault (and, with
/// --vprov-data-dir, vprov recorded exactly the provisioned ones).
#[derive(Parser, Debug)]
#[command(name = "amtsim", version)]
struct Args {
    /// Where hellos are sent (the vprov hello listener).
    #[arg(long, default_value = "127.0.0.1:9971")]
    server: SocketAddr,

    /// JSON key file as printed by `vprov keys list --state available --reveal --format json`
    /// (objects with "pid" and "pps"); the first N pairs are used. Needed unless
    /// --devices is 0.
    #[arg(long)]
    keys: Option<PathBuf>,

    /// PKI devices (hello v3, AMT 11+ remote configuration into Admin Control Mode) to
    /// run after the PSK ones, on the next addresses. They trust the root in
    /// --pki-root (SHA-256, active) and have --pki-dns-suffix as PKI DNS suffix.
    #[arg(long, default_value_t = 0, requires = "pki_root")]
    pki: u32,

    /// PEM file of the root certificate PKI devices trust (the root of the chain
    /// imported with `vprov pki import`).
    #[arg(long, value_name = "FILE")]
    pki_root: Option<PathBuf>,

    /// PKI DNS suffix of the PKI devices (the provisioning leaf CN must be in it).
    #[arg(long, default_value = "example.com")]
    pki_dns_suffix: String,

    /// Firmware versions PKI devices cycle through: the AMT 11.8, 15 and 19 profiles.
    #[arg(long, value_delimiter = ',', default_value = "11.8.55,15.0.35,19.0.5", value_parser = parse_version)]
    pki_amt_versions: Vec<String>,

    /// Number of devices.
    #[arg(long, default_value_t = 1)]
    devices: u32,

    /// Address of the first device (must be in 127.0.0.0/8).
    #[arg(long, default_value = "127.10.0.1")]
    base_address: Ipv4Addr,

    /// TLS port of every device (on its own address).
    #[arg(long, default_value_t = 16993)]
    device_port: u16,

    /// MEBx password set on every PSK device (the server's provisioning password);
    /// needed unless --devices is 0.
    #[arg(long, env = "AMTSIM_MEBX_PASSWORD", hide_env_values = true)]
    mebx_password: Option<String>,

    /// Multiplies the hello schedule: 1 = real time, 0.01 = 100 times faster.
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,

    /// Fault for every device: wrong-pps, wrong-password, uuid-mismatch,
    /// error:<Method>:<code>, hang:<Method>, drop:<Method>, garbage:<Method>.
    #[arg(long, conflicts_with = "fault_every")]
    fault: Option<Fault>,

    /// Fault for every K-th device (devices K, 2K, …), as K:KIND, e.g. 10:wrong-pps.
    #[arg(long, value_parser = parse_fault_every)]
    fault_every: Option<(u32, Fault)>,

    /// RSA-2048 key pairs generated for GenerateKeyPair, shared by all devices.
    #[arg(long, default_value_t = 4)]
    key_pool: usize,

    /// Cache the key pool in this file (created if missing or too small).
    #[arg(long)]
    key_cache: Option<PathBuf>,

    /// Delay between CommitChanges and the certificate TLS server, in milliseconds.
    #[arg(long, default_value_t = 200)]
    restart_delay_ms: u64,

    /// After the restart delay, how long the device's TLS port stays closed while the
    /// firmware restarts its network stack, in milliseconds.
    #[arg(long, default_value_t = 0)]
    commit_restart_ms: u64,

    /// Delay of every WS-Management reply, in milliseconds (real firmware: hundreds).
    #[arg(long, default_value_t = 0)]
    call_latency_ms: u64,

    /// Initial offset of each device clock from the host clock, in seconds.
    #[arg(long, default_value_t = DEFAULT_CLOCK_OFFSET_S, allow_negative_numbers = true)]
    clock_offset: i64,

    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,

    /// After every fault-free device is provisioned, keep faulty devices running this
    /// many seconds (to catch a server that provisions them anyway).
    #[arg(long, default_value_t = 2)]
    grace: u64,

    /// Write the JSON report here instead of standard output.
    #[arg(long)]
    report: Option<PathBuf>,

    /// Firmware version of every device (X.Y.Z): 6.0.x has no GenerateKeyPair and
    /// rejects TLS hellos above 1.0; 8.x and 10.x have GenerateKeyPair and accept them.
    #[arg(long, default_value = DEFAULT_AMT_VERSION, value_parser = parse_version)]
    amt_version: String,

    /// Give every device a host name (sim-x-y-z from its address) as if set in MEBx;
    /// by default devices are factory-fresh with no host name.
    #[arg(long)]
    host_names: bool,

    /// Keep the connection open after 401 and 400 replies (no Connection: close).
    #[arg(long)]
    keep_alive_after_error: bool,

    /// Keep issued Digest nonces valid when SetAdminAclEntryEx changes the ACL.
    #[arg(long)]
    keep_nonces_on_acl_change: bool,

    /// Accept RFC 2069 Digest responses (no qop).
    #[arg(long)]
    allow_rfc2069_digest: bool,

    /// Let CommitChanges succeed without a host name.
    #[arg(long)]
    allow_commit_without_host_name: bool,

    /// Leave the AMT instance out of CIM_SoftwareIdentity (clients must read the
    /// version from the Server header).
    #[arg(long)]
    no_amt_software_identity: bool,

    /// Body bytes per chunk of a SOAP reply (0: the whole body in one chunk).
    #[arg(long, default_value_t = DEFAULT_REPLY_CHUNK_SIZE)]
    reply_chunk_size: usize,

    /// Reject TLS ClientHellos above TLS 1.0 with a protocol_version alert: auto (for
    /// AMT versions below 7.0), on or off.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    tls_version_intolerance: String,

    /// The fatal alert a version-intolerant device sends: protocol-version, or
    /// bad-record-mac (what MeshCentral's TLS 1.0 retry is keyed on).
    #[arg(long, default_value = "protocol-version", value_parser = ["protocol-version", "bad-record-mac"])]
    tls_intolerance_alert: String,

    /// Also accept "TLSProtocolEndpoint Instances Collection" (with a space) when the
    /// TLS credential context is created.
    #[arg(long)]
    accept_spaced_collection_name: bool,

    /// Count a device as provisioned when it commits, without waiting for a client to
    /// confirm it over its certificate TLS server.
    #[arg(long)]
    no_confirmation: bool,

    /// vprov's data directory: judge success also by the devices its store
    /// (`vprov.db`, opened read-only) records; each report row gets `recorded_by_vprov`.
    #[arg(long)]
    vprov_data_dir: Option<PathBuf>,
}

fn parse_version(text: &str) -> Result<String, String> {
    AmtVersion::parse(text)
        .map(|_| text.to_string())
        .ok_or_else(|| "expected an AMT version like 8.1.40".to_string())
}

impl Args {
    fn behaviour(&self) -> Behaviour {
        Behaviour {
            close_after_error: !self.keep_alive_after_error,
            acl_change_resets_nonces: !self.keep_nonces_on_acl_change,
            require_qop_auth: !self.allow_rfc2069_digest,
            commit_requires_host_name: !self.allow_commit_without_host_name,
            report_amt_identity: !self.no_amt_software_identity,
            reply_chunk_size: self.reply_chunk_size,
            tls_version_intolerant: match self.tls_version_intolerance.as_str() {
                "on" => Some(true),
                "off" => Some(false),
                _ => None,
            },
            tls_intolerance_alert: match self.tls_intolerance_alert.as_str() {
                "bad-record-mac" => TlsAlert::BadRecordMac,
                _ => TlsAlert::ProtocolVersion,
            },
            accept_spaced_collection_name: self.accept_spaced_collection_name,
        }
    }
}

fn parse_fault_every(text: &str) -> Result<(u32, Fault), String> {
    let (k, kind) = text
        .split_once(':')
        .ok_or("expected K:KIND, e.g. 10:wrong-pps")?;
    let k: u32 = k
        .parse()
        .map_err(|_| "K must be a positive number".to_string())?;
    if k == 0 {
        return Err("K must be a positive number".into());
    }
    Ok((k, kind.parse().map_err(|e: anyhow::Error| e.to_string())?))
}

#[derive(serde::Deserialize)]
struct KeyRow {
    pid: String,
    pps: Option<String>,
}

fn read_keys(path: &PathBuf, n: usize) -> anyhow::Result<Vec<(Pid, Pps)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let rows: Vec<KeyRow> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON array of keys", path.display()))?;
    anyhow::ensure!(
        rows.len() >= n,
        "{} holds {} keys, {n} devices need {n}",
        path.display(),
        rows.len()
    );
    rows.into_iter()
        .take(n)
        .enumerate()
        .map(|(i, row)| {
            let pid: Pid = row
                .pid
                .parse()
                .with_context(|| format!("key {}: bad PID", i + 1))?;
            let pps = row
                .pps
                .with_context(|| format!("key {}: no PPS (list the keys with --reveal)", i + 1))?
                .parse()
                .with_context(|| format!("key {}: bad PPS", i + 1))?;
            Ok((pid, pps))
        })
        .collect()
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let started = Instant::now();
    let n = usize::try_from(args.devices)?;
    let keys = match (&args.keys, n) {
        (_, 0) => Vec::new(),
        (Some(path), n) => read_keys(path, n)?,
        (None, _) => anyhow::bail!("--keys is needed for PSK devices (or use --devices 0)"),
    };
    let pool = match &args.key_cache {
        Some(path) => KeyPool::load_or_generate(path, args.key_pool)?,
        None => KeyPool::generate(args.key_pool)?,
    };
    let mut specs = Vec::with_capacity(n);
    for (i, (pid, pps)) in (0u32..).zip(keys) {
        let address = address_for(i, args.base_address)
            .with_context(|| format!("device {} would be outside 127.0.0.0/8", i + 1))?;
        let mebx = args
            .mebx_password
            .as_deref()
            .context("--mebx-password is needed for PSK devices")?;
        let mut spec = DeviceSpec::new(pid, pps, mebx, address);
        spec.amt_version = args.amt_version.clone();
        spec.behaviour = args.behaviour();
        if args.host_names {
            spec.host_name = spec.address_host_name();
        }
        spec.fault = match &args.fault_every {
            Some((k, fault)) if (i + 1) % k == 0 => Some(fault.clone()),
            Some(_) => None,
            None => args.fault.clone(),
        };
        specs.push(spec);
    }
    if let Some(root) = &args.pki_root {
        let pem = std::fs::read(root).with_context(|| format!("cannot read {}", root.display()))?;
        let root = openssl::x509::X509::from_pem(&pem)
            .with_context(|| format!("{} holds no PEM certificate", root.display()))?;
        for i in 0..args.pki {
            let index = args.devices + i;
            let address = address_for(index, args.base_address)
                .with_context(|| format!("device {} would be outside 127.0.0.0/8", index + 1))?;
            let version = &args.pki_amt_versions[i as usize % args.pki_amt_versions.len()];
            let setup = PkiSetup {
                trusted: vec![TrustedHash::sha256_of(&root)],
                dns_suffix: args.pki_dns_suffix.clone(),
            };
            let mut spec = DeviceSpec::new_pki(setup, version, address);
            spec.behaviour = args.behaviour();
            specs.push(spec);
        }
    }
    let n = specs.len();
    let mut config = SimConfig::new(args.server, Arc::new(pool));
    config.device_port = args.device_port;
    config.time_scale = args.time_scale;
    config.restart_delay = Duration::from_millis(args.restart_delay_ms);
    config.commit_restart = Duration::from_millis(args.commit_restart_ms);
    config.call_latency = Duration::from_millis(args.call_latency_ms);
    config.clock_offset_s = args.clock_offset;
    config.require_confirmation = !args.no_confirmation;
    let faulty = specs.iter().any(|s| s.fault.is_some());
    let sim = Simulator::start(config, specs).await?;
    eprintln!(
        "amtsim: {n} devices from {} on port {}, hellos to {}",
        args.base_address,
        sim.device_port(),
        args.server
    );
    let deadline = started + Duration::from_secs(args.timeout);
    sim.wait_expected(Duration::from_secs(args.timeout)).await;
    if faulty {
        tokio::time::sleep(Duration::from_secs(args.grace)).await;
    }
    // Devices stay up while vprov records them (its confirm step needs them).
    let recorded = match &args.vprov_data_dir {
        Some(dir) => Some(wait_recorded(&dir.join("vprov.db"), &sim.reports(), deadline).await),
        None => None,
    };
    let reports = sim.reports();
    sim.shutdown();
    write_report(&reports, recorded.as_ref(), args.report.as_ref())?;
    let committed = reports.iter().filter(|r| r.committed).count();
    let confirmed = reports.iter().filter(|r| r.confirmed).count();
    let provisioned = reports
        .iter()
        .filter(|r| r.outcome == Outcome::Provisioned)
        .count();
    let as_expected = reports.iter().all(|r| {
        r.outcome == r.expected_outcome
            && recorded.as_ref().is_none_or(|set| {
                set.contains(&r.uuid) == (r.expected_outcome == Outcome::Provisioned)
            })
    });
    eprintln!(
        "amtsim: devices {}, committed {committed}, confirmed {confirmed}, provisioned \
         {provisioned}, as expected {}, elapsed {:.1} s",
        reports.len(),
        if as_expected { "yes" } else { "no" },
        started.elapsed().as_secs_f64()
    );
    Ok(as_expected)
}

/// UUIDs (lower-case GUID text) of the devices vprov's store records; empty if it
/// cannot be read yet.
fn recorded_uuids(db: &Path) -> HashSet<String> {
    let read = || -> rusqlite::Result<HashSet<String>> {
        let c =
            rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        c.busy_timeout(Duration::from_secs(1))?;
        let mut stmt = c.prepare("SELECT uuid FROM devices")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        rows.map(|u| u.map(|u| u.to_ascii_lowercase())).collect()
    };
    read().unwrap_or_default()
}

/// Polls vprov's store until it records every device expected to be provisioned, or
/// `deadline`; returns what it records then.
async fn wait_recorded(db: &Path, reports: &[DeviceReport], deadline: Instant) -> HashSet<String> {
    loop {
        let recorded = recorded_uuids(db);
        let all = reports
            .iter()
            .filter(|r| r.expected_outcome == Outcome::Provisioned)
            .all(|r| recorded.contains(&r.uuid));
        if all || Instant::now() >= deadline {
            return recorded;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn write_report(
    reports: &[DeviceReport],
    recorded: Option<&HashSet<String>>,
    path: Option<&PathBuf>,
) -> anyhow::Result<()> {
    let mut rows = serde_json::to_value(reports)?;
    if let (Some(set), Some(rows)) = (recorded, rows.as_array_mut()) {
        for (row, report) in rows.iter_mut().zip(reports) {
            row["recorded_by_vprov"] = set.contains(&report.uuid).into();
        }
    }
    let json = serde_json::to_string_pretty(&rows)?;
    match path {
        Some(p) => {
            std::fs::write(p, json + "\n").with_context(|| format!("cannot write {}", p.display()))
        }
        None => {
            println!("{json}");
            Ok(())
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    vprov_tests::sim::raise_nofile();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("amtsim: {e:#}");
            ExitCode::from(2)
        }
    }
}
