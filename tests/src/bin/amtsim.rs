//! `amtsim`: runs N simulated Intel AMT devices in setup mode against a vprov server
//! (hellos to `--server`, TLS-PSK on each device's own loopback address) and reports
//! per-device outcomes as JSON. See `vprov_tests::sim` for what a device does.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use vprov_core::keys::{Pid, Pps};
use vprov_tests::sim::{
    address_for, DeviceReport, DeviceSpec, Fault, KeyPool, SimConfig, Simulator,
    DEFAULT_CLOCK_OFFSET_S,
};

/// Simulate Intel AMT devices doing one-touch (PID/PPS, TLS-PSK) provisioning.
///
/// Each device gets its own loopback address (base, base+1, …, skipping host octets
/// .0 and .255), sends v2 PSK hellos to --server on the 5×1 min / 5×10 min / 5×1 h
/// schedule (scaled by --time-scale), and serves TLS-PSK + Digest + WS-Management on
/// --device-port of its address until CommitChanges; then it serves TLS with the
/// installed certificate. Exit status 0 means every device reached its expected
/// outcome: "provisioned", or "not-provisioned" for devices with a fault.
#[derive(Parser, Debug)]
#[command(name = "amtsim", version)]
struct Args {
    /// Where hellos are sent (the vprov hello listener).
    #[arg(long, default_value = "127.0.0.1:9971")]
    server: SocketAddr,

    /// JSON key file as printed by `vprov keys list --state available --reveal --format json`
    /// (objects with "pid" and "pps"); the first N pairs are used.
    #[arg(long)]
    keys: PathBuf,

    /// Number of devices.
    #[arg(long, default_value_t = 1)]
    devices: u32,

    /// Address of the first device (must be in 127.0.0.0/8).
    #[arg(long, default_value = "127.10.0.1")]
    base_address: Ipv4Addr,

    /// TLS port of every device (on its own address).
    #[arg(long, default_value_t = 16993)]
    device_port: u16,

    /// MEBx password set on every device (the server's provisioning password).
    #[arg(long, env = "AMTSIM_MEBX_PASSWORD", hide_env_values = true)]
    mebx_password: String,

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
    let keys = read_keys(&args.keys, n)?;
    let pool = match &args.key_cache {
        Some(path) => KeyPool::load_or_generate(path, args.key_pool)?,
        None => KeyPool::generate(args.key_pool)?,
    };
    let mut specs = Vec::with_capacity(n);
    for (i, (pid, pps)) in (0u32..).zip(keys) {
        let address = address_for(i, args.base_address)
            .with_context(|| format!("device {} would be outside 127.0.0.0/8", i + 1))?;
        let mut spec = DeviceSpec::new(pid, pps, &args.mebx_password, address);
        spec.fault = match &args.fault_every {
            Some((k, fault)) if (i + 1) % k == 0 => Some(fault.clone()),
            Some(_) => None,
            None => args.fault.clone(),
        };
        specs.push(spec);
    }
    let mut config = SimConfig::new(args.server, Arc::new(pool));
    config.device_port = args.device_port;
    config.time_scale = args.time_scale;
    config.restart_delay = Duration::from_millis(args.restart_delay_ms);
    config.clock_offset_s = args.clock_offset;
    let faulty = specs.iter().any(|s| s.fault.is_some());
    let sim = Simulator::start(config, specs).await?;
    eprintln!(
        "amtsim: {n} devices from {} on port {}, hellos to {}",
        args.base_address,
        sim.device_port(),
        args.server
    );
    sim.wait_expected(Duration::from_secs(args.timeout)).await;
    if faulty {
        tokio::time::sleep(Duration::from_secs(args.grace)).await;
    }
    let reports = sim.reports();
    sim.shutdown();
    write_report(&reports, args.report.as_ref())?;
    let provisioned = reports.iter().filter(|r| r.committed).count();
    let as_expected = reports.iter().all(|r| r.outcome == r.expected_outcome);
    eprintln!(
        "amtsim: devices {}, provisioned {provisioned}, as expected {}, elapsed {:.1} s",
        reports.len(),
        if as_expected { "yes" } else { "no" },
        started.elapsed().as_secs_f64()
    );
    Ok(as_expected)
}

fn write_report(reports: &[DeviceReport], path: Option<&PathBuf>) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(reports)?;
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
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("amtsim: {e:#}");
            ExitCode::from(2)
        }
    }
}
