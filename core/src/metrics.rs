//! The server's Prometheus metrics: one process-wide registry, the functions every
//! layer records through, and its rendering in the text exposition format
//! (`docs/metrics.md` lists every series).
//!
//! Built on `prometheus-client`, the Prometheus organisation's own Rust client: it
//! encodes the OpenMetrics text format Prometheus scrapes, its label sets are typed
//! (so a label can only take the values this module gives it) and its counters and
//! histograms are lock-free atomics, cheap on the provisioning path.
//!
//! Labels come from fixed sets only — outcomes, results, job steps and WS-Man method
//! names written in the code, alert severities, configured plugin instances — never a
//! PID, PPS, UUID, address or any other value a device or a user sends, so the number
//! of series is bounded and no secret can reach a scrape. A name from outside the
//! fixed set is counted as `other`.
//!
//! One registry per process, like the global logger: `vprov serve` is one server per
//! process, and every layer (device connector, store thread, alert log, jobs) records
//! into it without being handed a handle.

use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use sha2::{Digest, Sha256};

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What became of a hello at the hello listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloOutcome {
    /// A v2 hello whose PID is available: handed to the jobs.
    PskMatched,
    /// A v3 (PKI) hello: handed to the PKI jobs.
    PkiMatched,
    UnknownPid,
    RevokedPid,
    UsedPid,
    /// A PID that is not well formed.
    InvalidPid,
    /// Not a hello, too long, cut off or too slow.
    Malformed,
    /// Refused by the per-source rate limit.
    RateLimited,
    /// Refused: `[hello] max_connections` were open.
    Dropped,
    /// An HTTP probe answered with the plain page.
    Probe,
    /// The store could not look the PID up.
    LookupFailed,
}

impl HelloOutcome {
    fn label(self) -> &'static str {
        match self {
            HelloOutcome::PskMatched => "psk_matched",
            HelloOutcome::PkiMatched => "pki_matched",
            HelloOutcome::UnknownPid => "unknown_pid",
            HelloOutcome::RevokedPid => "revoked_pid",
            HelloOutcome::UsedPid => "used_pid",
            HelloOutcome::InvalidPid => "invalid_pid",
            HelloOutcome::Malformed => "malformed",
            HelloOutcome::RateLimited => "rate_limited",
            HelloOutcome::Dropped => "dropped",
            HelloOutcome::Probe => "probe",
            HelloOutcome::LookupFailed => "lookup_failed",
        }
    }
}

/// Why an accepted hello started no job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Absorbed {
    /// A job for the PID or device at that address is queued or running.
    Duplicate,
    /// The device's last job failed recently (`store/backoff.rs`).
    BackedOff,
}

/// What holds provisioning back when hellos wait for a job slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `[provisioning] max_concurrent_jobs`.
    MaxConcurrentJobs,
    /// The process's file descriptor limit (RLIMIT_NOFILE) lowered the job cap.
    FileDescriptors,
}

impl Limit {
    /// The label value, also the name the admin is told about.
    pub fn label(self) -> &'static str {
        match self {
            Limit::MaxConcurrentJobs => "max_concurrent_jobs",
            Limit::FileDescriptors => "file_descriptors",
        }
    }
}

/// Provisioning job steps that name a failure (`JobFailure::step`); anything else is
/// `other`.
const JOB_STEPS: &[&str] = &[
    "start",
    "store",
    "provisioning password",
    "connect",
    "TLS setup",
    "login",
    "read general settings",
    "read AMT version",
    "GetUuid",
    "SetMEBxPassword",
    "SetAdminAclEntryEx",
    "set host name",
    "GetLowAccuracyTimeSynch",
    "SetHighAccuracyTimeSynch",
    "read TLS credential context",
    "GenerateKeyPair",
    "read key pair",
    "generate device key",
    "AddKey",
    "issue certificate",
    "AddCertificate",
    "create TLS credential context",
    "enable TLS",
    "CommitChanges",
    "confirm TLS mode",
    "TLS-PSK handshake",
    "choose provisioning chain",
];

/// WS-Management calls the device connector makes (`AmtSession`'s step names).
const WSMAN_METHODS: &[&str] = &[
    "AMT_EthernetPortSettings enumerate",
    "AMT_GeneralSettings enumerate",
    "AMT_GeneralSettings put",
    "AMT_PublicPrivateKeyPair enumerate",
    "AMT_TLSCredentialContext create",
    "AMT_TLSCredentialContext enumerate",
    "AMT_TLSSettingData enumerate",
    "AMT_TLSSettingData put",
    "AMT_TLSSettingData put (local)",
    "AddCertificate",
    "AddKey",
    "CIM_AssociatedPowerManagementService enumerate",
    "CIM_BIOSElement enumerate",
    "CIM_PhysicalMemory enumerate",
    "CIM_Processor enumerate",
    "CIM_ServiceAvailableToElement enumerate",
    "CIM_SoftwareIdentity enumerate",
    "CommitChanges",
    "GenerateKeyPair",
    "GetLowAccuracyTimeSynch",
    "GetUuid",
    "RequestPowerStateChange",
    "SetAdminAclEntryEx",
    "SetHighAccuracyTimeSynch",
    "SetMEBxPassword",
];

/// Alert sources raised by the core; a plugin's own source is `plugin`.
const ALERT_SOURCES: &[&str] = &[
    "agent",
    "alerts",
    "hello",
    "management",
    "pki",
    "plugins",
    "provisioning",
];

/// `name` if it is one of `known`, else `other`.
fn bounded(name: &str, known: &[&'static str]) -> &'static str {
    known
        .iter()
        .find(|k| **k == name)
        .copied()
        .unwrap_or("other")
}

type Labels = Vec<(&'static str, &'static str)>;
type OwnedLabels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Seconds, 5 ms to about 82 s: WS-Man calls.
fn short_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

/// Seconds, 0.25 s to about 17 min: whole provisioning jobs.
fn job_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.25, 2.0, 13))
}

/// Seconds, 50 µs to about 1.6 s: store round trips.
fn store_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// Every series of the process.
struct Metrics {
    registry: Registry,
    hellos: Family<Labels, Counter>,
    absorbed: Family<Labels, Counter>,
    jobs: Family<Labels, Counter>,
    job_duration: Histograms,
    wsman: Histograms,
    jobs_in_flight: Gauge,
    jobs_queued: Gauge,
    job_limit: Gauge,
    limit_reached: Family<Labels, Counter>,
    devices: Family<Labels, Gauge>,
    alerts: Family<Labels, Counter>,
    alerts_dropped: Counter,
    sink_depth: Family<OwnedLabels, Gauge>,
    sink_drops: Family<OwnedLabels, Counter>,
    store_latency: Histogram,
    resident_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
}

impl Metrics {
    fn new() -> Metrics {
        let mut m = Metrics {
            registry: Registry::default(),
            hellos: Family::default(),
            absorbed: Family::default(),
            jobs: Family::default(),
            job_duration: Family::new_with_constructor(job_buckets),
            wsman: Family::new_with_constructor(short_buckets),
            jobs_in_flight: Gauge::default(),
            jobs_queued: Gauge::default(),
            job_limit: Gauge::default(),
            limit_reached: Family::default(),
            devices: Family::default(),
            alerts: Family::default(),
            alerts_dropped: Counter::default(),
            sink_depth: Family::default(),
            sink_drops: Family::default(),
            store_latency: store_buckets(),
            resident_bytes: Gauge::default(),
            open_fds: Gauge::default(),
            max_fds: Gauge::default(),
        };
        m.register_provisioning();
        m.register_process();
        m
    }

    /// Hellos, jobs and the device connector.
    fn register_provisioning(&mut self) {
        let r = &mut self.registry;
        r.register(
            "vprov_hellos",
            "Hellos received, by outcome",
            self.hellos.clone(),
        );
        r.register(
            "vprov_hellos_absorbed",
            "Matched hellos that started no job, by reason",
            self.absorbed.clone(),
        );
        r.register(
            "vprov_jobs",
            "Provisioning jobs finished, by kind, result and the step that failed",
            self.jobs.clone(),
        );
        r.register(
            "vprov_job_duration_seconds",
            "Time of provisioning jobs from their slot to their end, by kind and result",
            self.job_duration.clone(),
        );
        r.register(
            "vprov_wsman_call_duration_seconds",
            "Time of one WS-Management call to a device (with its re-dials), by method",
            self.wsman.clone(),
        );
        r.register(
            "vprov_jobs_in_flight",
            "Provisioning jobs running now",
            self.jobs_in_flight.clone(),
        );
        r.register(
            "vprov_jobs_queued",
            "Accepted hellos waiting for a job slot",
            self.jobs_queued.clone(),
        );
        r.register(
            "vprov_jobs_limit",
            "Jobs that may run at once (max_concurrent_jobs, or fewer if the descriptor budget is lower)",
            self.job_limit.clone(),
        );
        r.register(
            "vprov_job_limit_reached",
            "Hellos that had to wait for a job slot, by the limit that held them",
            self.limit_reached.clone(),
        );
    }

    /// Devices, alerts, plugins, the store and the process.
    fn register_process(&mut self) {
        let r = &mut self.registry;
        r.register(
            "vprov_devices",
            "Provisioned devices in the store, by state (at scrape time)",
            self.devices.clone(),
        );
        r.register(
            "vprov_alerts",
            "Alerts raised, by source and severity",
            self.alerts.clone(),
        );
        r.register(
            "vprov_alerts_dropped",
            "Alerts dropped because the alert log's queue was full",
            self.alerts_dropped.clone(),
        );
        r.register(
            "vprov_plugin_sink_queue_depth",
            "Alerts queued for an alert sink instance (at scrape time)",
            self.sink_depth.clone(),
        );
        r.register(
            "vprov_plugin_sink_drops",
            "Alerts an alert sink instance lost because its queue was full",
            self.sink_drops.clone(),
        );
        r.register(
            "vprov_store_call_duration_seconds",
            "Round trip of one call to the store thread, queueing included",
            self.store_latency.clone(),
        );
        r.register(
            "vprov_process_resident_memory_bytes",
            "Resident set size of the process (at scrape time)",
            self.resident_bytes.clone(),
        );
        r.register(
            "vprov_process_open_fds",
            "Open file descriptors of the process (at scrape time)",
            self.open_fds.clone(),
        );
        r.register(
            "vprov_process_max_fds",
            "The process's file descriptor limit (RLIMIT_NOFILE, soft)",
            self.max_fds.clone(),
        );
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Sink depth samplers registered by the alert fan-out, run at each scrape.
type Sampler = Box<dyn Fn() + Send + Sync>;
static SAMPLERS: Mutex<Vec<Sampler>> = Mutex::new(Vec::new());

/// Counts one hello's outcome.
pub fn hello(outcome: HelloOutcome) {
    METRICS
        .hellos
        .get_or_create(&vec![("outcome", outcome.label())])
        .inc();
}

/// Counts a matched hello that started no job.
pub fn absorbed(reason: Absorbed) {
    let reason = match reason {
        Absorbed::Duplicate => "duplicate",
        Absorbed::BackedOff => "backed_off",
    };
    METRICS
        .absorbed
        .get_or_create(&vec![("reason", reason)])
        .inc();
}

/// Counts a finished job: `kind` is `psk` or `pki`; `failed_at` the step that
/// failed (`None`: provisioned).
pub fn job_finished(kind: &'static str, failed_at: Option<&str>, took: Duration) {
    let (result, step) = match failed_at {
        None => ("provisioned", "none"),
        Some(step) => ("failed", bounded(step, JOB_STEPS)),
    };
    let kind = bounded(kind, &["psk", "pki"]);
    METRICS
        .jobs
        .get_or_create(&vec![("kind", kind), ("result", result), ("step", step)])
        .inc();
    METRICS
        .job_duration
        .get_or_create(&vec![("kind", kind), ("result", result)])
        .observe(took.as_secs_f64());
}

/// Times one WS-Management call.
pub fn wsman_call(method: &str, took: Duration) {
    METRICS
        .wsman
        .get_or_create(&vec![("method", bounded(method, WSMAN_METHODS))])
        .observe(took.as_secs_f64());
}

/// A hello waits for a job slot until the guard is turned into a [`Running`] one
/// (or dropped).
pub struct Queued(());

/// A job runs until the guard is dropped.
pub struct Running(());

/// Counts a hello as queued for a job slot.
pub fn job_queued() -> Queued {
    METRICS.jobs_queued.inc();
    Queued(())
}

impl Queued {
    /// The hello got its slot: the job runs.
    pub fn running(self) -> Running {
        METRICS.jobs_in_flight.inc();
        Running(())
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        METRICS.jobs_queued.dec();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        METRICS.jobs_in_flight.dec();
    }
}

/// Hellos waiting for a job slot now.
pub fn jobs_queued() -> i64 {
    METRICS.jobs_queued.get()
}

/// Jobs running now.
pub fn jobs_in_flight() -> i64 {
    METRICS.jobs_in_flight.get()
}

/// The job cap in force.
pub fn set_job_limit(jobs: usize) {
    METRICS
        .job_limit
        .set(i64::try_from(jobs).unwrap_or(i64::MAX));
}

/// Counts a hello that found every job slot taken.
pub fn limit_reached(limit: Limit) {
    METRICS
        .limit_reached
        .get_or_create(&vec![("limit", limit.label())])
        .inc();
}

/// The provisioned devices in `state` (`unmanaged`, `managed`).
pub fn set_devices(state: &'static str, count: usize) {
    METRICS
        .devices
        .get_or_create(&vec![("state", state)])
        .set(i64::try_from(count).unwrap_or(i64::MAX));
}

/// Counts a raised alert. A source outside the core's own (a plugin's) is `plugin`.
pub fn alert(source: &str, severity: &'static str) {
    let source = if source.starts_with("plugin") && source != "plugins" {
        "plugin"
    } else {
        bounded(source, ALERT_SOURCES)
    };
    METRICS
        .alerts
        .get_or_create(&vec![("source", source), ("severity", severity)])
        .inc();
}

/// Counts an alert the alert log dropped.
pub fn alert_dropped() {
    METRICS.alerts_dropped.inc();
}

/// The queue depth of the alert sink instance `sink` (a configured instance name).
pub fn set_sink_depth(sink: &str, depth: usize) {
    METRICS
        .sink_depth
        .get_or_create(&vec![("sink", sink.to_string())])
        .set(i64::try_from(depth).unwrap_or(i64::MAX));
}

/// Forgets every sink's depth (before the samplers report the current set).
fn clear_sink_depths() {
    METRICS.sink_depth.clear();
}

/// Counts an alert that sink instance `sink` lost.
pub fn sink_dropped(sink: &str) {
    METRICS
        .sink_drops
        .get_or_create(&vec![("sink", sink.to_string())])
        .inc();
}

/// Runs `sample` at every scrape (it reports queue depths through
/// [`set_sink_depth`]).
pub fn on_scrape(sample: impl Fn() + Send + Sync + 'static) {
    SAMPLERS
        .lock()
        .expect("metrics samplers")
        .push(Box::new(sample));
}

/// Times one store thread round trip.
pub fn store_call(took: Duration) {
    METRICS.store_latency.observe(took.as_secs_f64());
}

/// The process's file descriptor limit.
pub fn set_max_fds(limit: u64) {
    METRICS
        .max_fds
        .set(i64::try_from(limit).unwrap_or(i64::MAX));
}

/// Resident set size in bytes, from `/proc/self/status` (Linux).
fn resident_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Open descriptors, from `/proc/self/fd` (Linux).
fn open_fds() -> Option<i64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count();
    i64::try_from(n).ok()
}

/// Every series in the text exposition format, process figures and sink depths
/// read now.
pub fn render() -> String {
    if let Some(rss) = resident_bytes() {
        METRICS.resident_bytes.set(rss);
    }
    if let Some(fds) = open_fds() {
        METRICS.open_fds.set(fds);
    }
    clear_sink_depths();
    for sample in SAMPLERS.lock().expect("metrics samplers").iter() {
        sample();
    }
    let mut text = String::new();
    encode(&mut text, &METRICS.registry).expect("writing to a String cannot fail");
    text
}

/// Whether the `Authorization` header value `presented` carries `Bearer <token>`.
/// Compares digests in constant time, so neither the token's content nor its length
/// leaks through timing.
pub fn bearer_matches(token: &str, presented: Option<&str>) -> bool {
    let Some(given) = presented.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let (a, b) = (
        Sha256::digest(token.as_bytes()),
        Sha256::digest(given.as_bytes()),
    );
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line starting with `prefix` in `text`.
    fn sample(text: &str, prefix: &str) -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    #[test]
    fn counters_move_and_render_in_the_text_format() {
        let line = "vprov_hellos_total{outcome=\"unknown_pid\"}";
        let before = sample(&render(), line);
        hello(HelloOutcome::UnknownPid);
        let text = render();
        assert_eq!(sample(&text, line), before + 1.0);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE vprov_job_duration_seconds histogram"));
    }

    #[test]
    fn names_outside_the_fixed_sets_are_other() {
        wsman_call("Evil_Method 0000-037M", Duration::from_millis(3));
        job_finished("psk", Some("a step from a device"), Duration::from_secs(1));
        alert("plugin:alert-file", "warning");
        let text = render();
        assert!(text.contains("vprov_wsman_call_duration_seconds_count{method=\"other\"}"));
        assert!(text.contains("step=\"other\""));
        assert!(text.contains("source=\"plugin\""));
        assert!(!text.contains("0000-037M"));
        assert!(!text.contains("alert-file"));
    }

    #[test]
    fn queued_and_running_guards_keep_the_gauges_current() {
        // Other tests in this process may hold guards; count relative to now.
        let (queued, running) = (jobs_queued(), jobs_in_flight());
        let waiting = job_queued();
        assert_eq!(jobs_queued(), queued + 1);
        let job = waiting.running();
        assert_eq!(jobs_queued(), queued);
        assert_eq!(jobs_in_flight(), running + 1);
        drop(job);
        assert_eq!(jobs_in_flight(), running);
    }

    #[test]
    fn the_bearer_token_must_match_exactly() {
        assert!(bearer_matches("s3cret", Some("Bearer s3cret")));
        assert!(!bearer_matches("s3cret", Some("Bearer s3cre")));
        assert!(!bearer_matches("s3cret", Some("Bearer s3cret ")));
        assert!(!bearer_matches("s3cret", Some("s3cret")));
        assert!(!bearer_matches("s3cret", None));
    }

    #[test]
    fn process_figures_are_read_at_scrape_time() {
        let text = render();
        assert!(sample(&text, "vprov_process_resident_memory_bytes") > 0.0);
        assert!(sample(&text, "vprov_process_open_fds") > 0.0);
    }
}
