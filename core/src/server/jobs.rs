//! Provisioning jobs: one per accepted hello, from the TLS-PSK connection back to the
//! device to the device record in the store.
//!
//! [`JobManager`] absorbs repeated hellos (one job per PID and per device at a time)
//! and caps how many jobs run at once. Each job runs the provisioning steps
//! (`docs/protocol-notes.md`) through the device connector, each under a timeout, as
//! small steps sharing one `JobContext`: every path (TLS-PSK, PKI in [`pki`]) reuses
//! the steps after its login. Before it changes anything on the device it records its intent (PID,
//! device, the new admin credential — sealed) in the store; a failure or crash keeps
//! that intent so the next attempt (or [`JobManager::resume_pending`] after a restart)
//! can log in with whichever credential the device now holds. The PID is marked used
//! only in the transaction that records the provisioned device.
//!
//! **Several nodes on one store.** A job runs only while its node holds the store's
//! claims of the job's keys (`store/claims.rs`), taken once the job has a slot:
//! another node receiving the same device's hellos is refused while the claim's
//! lease runs, and absorbs them. [`JobManager::keep_leases`] renews this node's
//! leases and, every lease period, finishes committed jobs whose node died (their
//! claims expired): those devices send no more hellos. A job checks that it still
//! holds its claim before CommitChanges, so a node stalled past its lease does not
//! commit a device another node has taken over. Jobs that had not committed are
//! taken over on the device's next hello, with the credential their intent records.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use vprov_sdk::DeviceInfo;
use zeroize::Zeroizing;

mod pki;

pub use pki::AcceptedPkiHello;

use super::limits::LimitNotice;
use crate::alerts::AlertLog;
use crate::ca::CertificateAuthority;
use crate::device::{AmtSession, DeviceError, DeviceTimeouts, GeneralSettings};
use crate::hello::DeviceUuid;
use crate::host_name::HostNameTemplate;
use crate::keys::{Pid, Pps};
use crate::metrics::Absorbed;
use crate::password::ProvisioningPassword;
use crate::plugins::PluginHost;
use crate::store::{ClaimOutcome, JobIntent, JobStep, NewAlert, ProvisionedDevice, Severity};
use crate::store_thread::StoreHandle;

/// The AMT account vprov provisions with.
const ADMIN_USER: &str = "admin";

/// How jobs behave (from the `[provisioning]` configuration section).
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// TCP port of the device's TLS / TLS-PSK service.
    pub device_port: u16,
    /// Jobs running at once.
    pub max_concurrent: usize,
    /// What `max_concurrent` is: the configured cap, or the fewer jobs the file
    /// descriptor budget allows (`server/limits.rs`); named when hellos wait.
    pub limited_by: crate::metrics::Limit,
    /// Timeouts of connecting and of each WS-Management call.
    pub timeouts: DeviceTimeouts,
    /// Pause after CommitChanges while the device restarts its network stack.
    pub commit_wait: Duration,
    /// How long to keep trying to reach the device over TLS after committing.
    pub confirm_timeout: Duration,
    /// Keep the provisioning password as the device's admin password instead of a
    /// random per-device one.
    pub keep_provisioning_password: bool,
    /// Domain name to set on the device, if any.
    pub domain: Option<String>,
    /// The host name given to a device that has none (CommitChanges needs one).
    pub host_name_template: HostNameTemplate,
    /// Enable TLS on the local (LMS) interface too.
    pub local_tls: bool,
    /// First wait after a failed job before a hello of that device starts another;
    /// doubles per repeated failure, up to `retry_backoff_max`.
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    /// How a PKI device's DNS suffix is found, to pick its provisioning chain.
    pub pki: crate::pki::select::DomainRules,
    /// This node's name on the store's claims.
    pub node: Arc<str>,
    /// How long a claim lasts unless renewed.
    pub lease: Duration,
}

/// A hello whose PID is available: the device to provision.
#[derive(Debug)]
pub struct AcceptedHello {
    pub pid: Pid,
    pub pps: Pps,
    pub uuid: DeviceUuid,
    pub address: IpAddr,
}

/// Starts jobs, absorbs duplicates, bounds concurrency. Cheap to clone.
#[derive(Clone)]
pub struct JobManager {
    inner: Arc<Inner>,
}

struct Inner {
    settings: JobSettings,
    store: StoreHandle,
    alerts: AlertLog,
    ca: Arc<CertificateAuthority>,
    /// Runs the post-provision actions once a device is recorded.
    plugins: Option<PluginHost>,
    /// Jobs queued or running, by PID and by device, each at the hello's address.
    running: Mutex<Claims>,
    /// Committed intents this node already tried to finish (at start or in a sweep):
    /// each is tried once, then waits for its device's hello like any other, so
    /// the sweep never holds a device's keys while its hellos arrive.
    resumed: Mutex<HashSet<(bool, i64)>>,
    slots: Arc<Semaphore>,
    stopping: AtomicBool,
    /// Tells the admin when hellos wait for a slot.
    limit_notice: LimitNotice,
}

/// Most jobs one PID may have at once, each for another address.
const MAX_JOBS_PER_PID: usize = 4;

/// What a job claims: its PID and its device, each at the hello's address.
#[derive(Debug, Clone)]
struct JobKeys {
    pid: String,
    keys: [String; 2],
}

impl JobKeys {
    fn new(pid: &str, uuid: &str, address: IpAddr) -> JobKeys {
        JobKeys {
            pid: pid.to_string(),
            keys: [
                format!("pid {pid} @{address}"),
                format!("device {uuid} @{address}"),
            ],
        }
    }
}

/// The jobs queued or running.
#[derive(Debug, Default)]
struct Claims {
    keys: HashSet<String>,
    per_pid: std::collections::HashMap<String, usize>,
}

impl Claims {
    fn claim(&mut self, job: &JobKeys) -> bool {
        let for_pid = self.per_pid.get(&job.pid).copied().unwrap_or(0);
        if for_pid >= MAX_JOBS_PER_PID || job.keys.iter().any(|k| self.keys.contains(k)) {
            return false;
        }
        self.keys.extend(job.keys.iter().cloned());
        *self.per_pid.entry(job.pid.clone()).or_default() += 1;
        true
    }

    fn release(&mut self, job: &JobKeys) {
        for k in &job.keys {
            self.keys.remove(k);
        }
        if let Some(n) = self.per_pid.get_mut(&job.pid) {
            *n -= 1;
            if *n == 0 {
                self.per_pid.remove(&job.pid);
            }
        }
    }
}

/// Why a job stopped: the step it was at and what went wrong.
#[derive(Debug)]
struct JobFailure {
    step: &'static str,
    error: String,
    severity: Severity,
}

impl JobFailure {
    fn at(step: &'static str) -> impl FnOnce(DeviceError) -> JobFailure {
        move |e| JobFailure {
            step,
            error: e.to_string(),
            severity: Severity::Error,
        }
    }
}

/// The intent a job records its steps in: a PSK job's (by PID) or a PKI job's (by
/// device).
#[derive(Debug, Clone, Copy)]
enum JobRecord {
    Psk(i64),
    Pki(i64),
}

/// What the shared steps need of a job's recorded intent, whichever way it logged in.
trait RecordedIntent {
    /// The admin credential the job gives the device.
    fn new_password(&self) -> &str;
    /// Where the job's steps are recorded.
    fn record(&self) -> JobRecord;
}

impl RecordedIntent for JobIntent {
    fn new_password(&self) -> &str {
        &self.new_password
    }

    fn record(&self) -> JobRecord {
        JobRecord::Psk(self.id)
    }
}

impl RecordedIntent for crate::store::PkiJobIntent {
    fn new_password(&self) -> &str {
        &self.new_password
    }

    fn record(&self) -> JobRecord {
        JobRecord::Pki(self.id)
    }
}

/// A store failure: the job cannot go on, and the admin must look.
fn store_failure(e: impl std::fmt::Display) -> JobFailure {
    JobFailure {
        step: "store",
        error: e.to_string(),
        severity: Severity::Critical,
    }
}

/// What the steps of one provisioning job share, whichever way it logged in: `I` is
/// its recorded intent (a PSK job's [`JobIntent`] or a PKI job's).
struct JobContext<I = JobIntent> {
    /// The keys the job holds claims on.
    keys: JobKeys,
    /// The device as its hello named it (`GetUuid` must agree).
    hello_uuid: DeviceUuid,
    address: IpAddr,
    /// The device's TLS / TLS-PSK service.
    device: SocketAddr,
    /// The job's recorded intent (its new credential, any certificate issued).
    intent: I,
    /// The logged-in session of the setup connection.
    session: AmtSession,
}

impl<I> JobContext<I> {
    /// The device record of a job that committed: its host name, AMT version and the
    /// certificate it presents.
    fn device_record(
        &self,
        host_name: String,
        amt_version: String,
        certificate_der: Vec<u8>,
    ) -> ProvisionedDevice {
        ProvisionedDevice {
            uuid: self.hello_uuid.to_string(),
            host_name: Some(host_name),
            address: self.address.to_string(),
            amt_version: Some(amt_version),
            admin_user: ADMIN_USER.into(),
            certificate_der,
        }
    }
}

/// What the job read of the device before changing it.
struct DeviceFacts {
    settings: GeneralSettings,
    amt_version: String,
}

/// A just-provisioned device as post-provision actions see it.
fn post_provision_view(record: &ProvisionedDevice, pid: &Pid) -> DeviceInfo {
    DeviceInfo {
        uuid: record.uuid.as_str().into(),
        host_name: record.host_name.as_deref().map(Into::into).into(),
        address: record.address.as_str().into(),
        amt_version: record.amt_version.as_deref().map(Into::into).into(),
        pid: pid.dashed().into(),
        state: "unmanaged".into(),
        management_mode: None.into(),
    }
}

/// Whether firmware of `version` has `GenerateKeyPair` (the reference guide gives it
/// from AMT 6.2 and 7.0 on). An unreadable version is assumed to have it; a device
/// that answers `ActionNotSupported` anyway gets a key from vprov.
fn has_generate_key_pair(version: &str) -> bool {
    let mut parts = version.trim().split('.').map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (6, 2),
        (Some(major), None) => major >= 7,
        _ => true,
    }
}

fn is_action_not_supported(e: &DeviceError) -> bool {
    matches!(e, DeviceError::Fault { subcode, .. } if subcode == "ActionNotSupported")
}

/// An RSA-2048 key vprov generates for firmware without `GenerateKeyPair`: PKCS#1
/// DER, the private half zeroized on drop.
struct DeviceKey {
    private_der: Zeroizing<Vec<u8>>,
    public_der: Vec<u8>,
}

impl DeviceKey {
    fn generate() -> Result<DeviceKey, String> {
        let rsa = openssl::rsa::Rsa::generate(2048).map_err(|e| e.to_string())?;
        Ok(DeviceKey {
            private_der: Zeroizing::new(rsa.private_key_to_der().map_err(|e| e.to_string())?),
            public_der: rsa.public_key_to_der_pkcs1().map_err(|e| e.to_string())?,
        })
    }
}

fn unix_seconds() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

impl JobManager {
    pub fn new(
        settings: JobSettings,
        store: StoreHandle,
        alerts: AlertLog,
        ca: Arc<CertificateAuthority>,
        plugins: Option<PluginHost>,
    ) -> JobManager {
        let slots = Arc::new(Semaphore::new(settings.max_concurrent.max(1)));
        let limit_notice = LimitNotice::new(settings.limited_by, settings.max_concurrent.max(1));
        crate::metrics::set_job_limit(settings.max_concurrent.max(1));
        JobManager {
            inner: Arc::new(Inner {
                settings,
                store,
                alerts,
                ca,
                plugins,
                running: Mutex::new(Claims::default()),
                resumed: Mutex::default(),
                slots,
                stopping: AtomicBool::new(false),
                limit_notice,
            }),
        }
    }

    /// Starts a job for `hello` unless one is already queued or running for its PID
    /// or device at the same address (repeated hellos are absorbed). A hello from
    /// another address is not held up by a job for an address that does not answer:
    /// PIDs are printed and sent in clear, so anybody can send one.
    pub fn submit(&self, hello: AcceptedHello) {
        if self.inner.stopping.load(Ordering::Relaxed) {
            return;
        }
        let keys = JobKeys::new(hello.pid.as_str(), &hello.uuid.to_string(), hello.address);
        if !self.inner.claim(&keys) {
            crate::metrics::absorbed(Absorbed::Duplicate);
            tracing::debug!(pid = %hello.pid, "hello absorbed: a job is already running");
            return;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let (uuid, pid) = (hello.uuid.to_string(), hello.pid.as_str().to_string());
            if !inner.backing_off(uuid, pid, hello.address).await {
                if let Ok((_slot, _running)) = inner.slot().await {
                    let pid = Some(hello.pid.as_str().to_string());
                    if !inner.stopping.load(Ordering::Relaxed)
                        && inner.claim_store(&keys, pid).await
                    {
                        // Boxed: a job's state (several KiB) is allocated once it has
                        // a slot, not inline in every hello waiting for one, so memory
                        // follows the jobs in flight, not the hellos queued.
                        Box::pin(inner.run(hello)).await;
                        inner.release_store(&keys).await;
                    }
                }
            }
            inner.release(&keys);
        });
    }

    /// After a restart: finishes every job whose device may have committed already
    /// (it no longer sends hellos). Jobs that had not reached CommitChanges wait for
    /// the device's next hello, which reuses their recorded credential.
    pub async fn resume_pending(&self) {
        self.resume_pending_pki().await;
        for intent in self.resume_committed().await {
            tracing::info!(pid = %intent.pid, step = %intent.step,
                "interrupted job waits for the device's next hello");
        }
    }

    /// Finishes every PSK job that reached CommitChanges and that no job of this
    /// node or claim of another node's holds; returns the intents that had not
    /// committed.
    async fn resume_committed(&self) -> Vec<JobIntent> {
        let pending = match self.inner.store.call(|s| s.pending_jobs()).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::error!("cannot read pending jobs: {e}");
                return Vec::new();
            }
            Err(_) => return Vec::new(),
        };
        let mut waiting = Vec::new();
        for intent in pending {
            if intent.step != JobStep::Commit {
                waiting.push(intent);
                continue;
            }
            // Hellos for this PID or device are absorbed while the job resumes.
            let Ok(address) = intent.address.parse::<IpAddr>() else {
                continue;
            };
            let keys = JobKeys::new(intent.pid.as_str(), &intent.device_uuid, address);
            let job = JobRecord::Psk(intent.id);
            if self.inner.tried_resume(job, false) || !self.inner.claim(&keys) {
                continue;
            }
            let inner = self.inner.clone();
            tokio::spawn(async move {
                let pid = Some(intent.pid.as_str().to_string());
                if inner.claim_store(&keys, pid).await {
                    if !inner.tried_resume(job, true) {
                        inner.resume(intent).await;
                    }
                    inner.release_store(&keys).await;
                }
                inner.release(&keys);
            });
        }
        waiting
    }

    /// Renews this node's claims every third of the lease for as long as the server
    /// runs, and every lease period finishes committed jobs no live node holds (a
    /// node that died after CommitChanges: its devices send no more hellos), each
    /// tried once by this node (a device that had not committed after all is then
    /// finished on its next hello). The composition root aborts it once the jobs
    /// have stopped.
    pub async fn keep_leases(self) {
        let lease = self.inner.settings.lease;
        let node = self.inner.settings.node.clone();
        let mut renewals = 0u32;
        loop {
            tokio::time::sleep(lease / 3).await;
            let n = node.clone();
            match self
                .inner
                .store
                .call(move |s| s.renew_claims(&n, lease))
                .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(node = %node,
                    "cannot renew this node's job claims: {e}; another node may take its jobs over"),
                Err(_) => return,
            }
            renewals += 1;
            if renewals % 3 == 0 && !self.inner.stopping.load(Ordering::Relaxed) {
                self.resume_pending_pki().await;
                self.resume_committed().await;
            }
        }
    }

    /// Stops starting jobs and waits up to `grace` for running ones to finish. Jobs
    /// still running afterwards are abandoned safely: their intents stay in the store.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.stopping.store(true, Ordering::Relaxed);
        let all = self.inner.settings.max_concurrent.max(1) as u32;
        let _ = tokio::time::timeout(grace, self.inner.slots.acquire_many(all)).await;
    }
}

impl Inner {
    /// Waits for a job slot, counted as queued meanwhile; when none is free, the
    /// limit that holds the hello back is counted and, now and then, told.
    async fn slot(
        &self,
    ) -> Result<(OwnedSemaphorePermit, crate::metrics::Running), tokio::sync::AcquireError> {
        let queued = crate::metrics::job_queued();
        if self.slots.available_permits() == 0 {
            if let Some(message) = self.limit_notice.hit(crate::metrics::jobs_queued()) {
                tracing::warn!("{message}");
                self.alerts.raise(NewAlert {
                    severity: Severity::Warning,
                    source: "provisioning".into(),
                    message,
                    pid: None,
                    device_uuid: None,
                    address: None,
                });
            }
        }
        let slot = self.slots.clone().acquire_owned().await?;
        Ok((slot, queued.running()))
    }

    fn alert(&self, severity: Severity, message: String, pid: &Pid, uuid: &str, address: IpAddr) {
        self.alerts.raise(NewAlert {
            severity,
            source: "provisioning".into(),
            message,
            pid: Some(pid.dashed()),
            device_uuid: Some(uuid.to_string()),
            address: Some(address.to_string()),
        });
    }

    /// Whether the device's last job with `pid` (PKI jobs: [`crate::store::PKI_JOB_PID`]) from
    /// `address` failed recently enough that this hello starts none: it is absorbed
    /// without a new alert.
    async fn backing_off(&self, uuid: String, pid: String, address: IpAddr) -> bool {
        let address = address.to_string();
        match self
            .store
            .call(move |s| s.job_backoff(&uuid, &pid, &address))
            .await
        {
            Ok(Ok(Some(b))) => {
                crate::metrics::absorbed(Absorbed::BackedOff);
                tracing::debug!(pid = %b.pid, device = %b.device_uuid, failures = b.failures,
                    "hello absorbed: the device's last job failed; waiting before the next");
                true
            }
            _ => false,
        }
    }

    /// Records a failed job (`cause`: its step and error) so the device's next hellos
    /// wait ([`crate::store::Store::record_job_failure`]).
    async fn record_failure(&self, uuid: &str, pid: &str, address: IpAddr, cause: &str) {
        let (u, p, c) = (uuid.to_string(), pid.to_string(), cause.to_string());
        let a = address.to_string();
        let (base, max) = (self.settings.retry_backoff, self.settings.retry_backoff_max);
        let _ = self
            .store
            .call(move |s| s.record_job_failure(&u, &p, &a, &c, base, max))
            .await;
    }

    async fn run(&self, hello: AcceptedHello) {
        let uuid = hello.uuid.to_string();
        let (pid, address) = (hello.pid, hello.address);
        let node = &self.settings.node;
        tracing::info!(%pid, device = %uuid, %address, %node, "provisioning job started");
        let started = std::time::Instant::now();
        let result = self.provision(hello).await;
        let failed_at = result.as_ref().err().map(|f| f.step);
        crate::metrics::job_finished("psk", failed_at, started.elapsed());
        match result {
            Ok(()) => tracing::info!(%pid, device = %uuid, %address, %node, "device provisioned"),
            Err(f) => {
                let cause = format!("{}: {}", f.step, f.error);
                self.record_failure(&uuid, pid.as_str(), address, &cause)
                    .await;
                // The same text for every repeat, so that repeats collapse into one
                // alert with a count.
                self.alert(
                    f.severity,
                    format!(
                        "provisioning failed at step {cause}. Its next hellos wait before \
                         another attempt; fix the cause, then `vprov devices retry {uuid}` \
                         tries at once"
                    ),
                    &pid,
                    &uuid,
                    address,
                )
            }
        }
    }

    /// The TLS-PSK path: the job's intent, a PSK login, then the steps every path
    /// shares (credential, host name, clock, TLS, commit, confirm, record).
    async fn provision(&self, hello: AcceptedHello) -> Result<(), JobFailure> {
        let (provisioning_password, intent) = self.begin(&hello).await?;
        let device = SocketAddr::new(hello.address, self.settings.device_port);
        let session = self
            .login_psk(&hello, &intent, device, provisioning_password.expose())
            .await?;
        let keys = JobKeys::new(hello.pid.as_str(), &hello.uuid.to_string(), hello.address);
        let mut job = JobContext {
            keys,
            hello_uuid: hello.uuid,
            address: hello.address,
            device,
            intent,
            session,
        };
        let facts = self.identify(&mut job).await?;
        self.set_credential(&mut job, &facts.settings).await?;
        let host_name = self.name_device(&mut job, &facts.settings).await?;
        self.sync_clock(&mut job).await?;
        let certificate = self
            .tls_certificate(&mut job, &host_name, &facts.amt_version)
            .await?;
        self.commit(&mut job).await?;
        let record = job.device_record(host_name, facts.amt_version, certificate);
        self.confirm_and_record(job, record).await
    }

    /// Reads the provisioning password, picks the device's new admin credential and
    /// records the job's intent: from here on a crash never loses that credential.
    async fn begin(
        &self,
        hello: &AcceptedHello,
    ) -> Result<(ProvisioningPassword, JobIntent), JobFailure> {
        let provisioning_password = self
            .store
            .call(|s| s.provisioning_password())
            .await
            .map_err(store_failure)?
            .map_err(store_failure)?
            .ok_or(JobFailure {
                step: "provisioning password",
                error: "no provisioning password is set (vprov password set)".into(),
                severity: Severity::Error,
            })?;
        let new_password = if self.settings.keep_provisioning_password {
            Zeroizing::new(provisioning_password.expose().to_string())
        } else {
            Zeroizing::new(crate::password::generate().expose().to_string())
        };
        let (pid, addr, pw) = (hello.pid, hello.address.to_string(), new_password);
        let uuid = hello.uuid.to_string();
        let intent = self
            .store
            .call(move |s| s.begin_job(&pid, &uuid, &addr, &pw))
            .await
            .map_err(store_failure)?
            .map_err(store_failure)?
            .ok_or(JobFailure {
                step: "start",
                error: "the PID is no longer available".into(),
                severity: Severity::Warning,
            })?;
        let uuid = hello.uuid.to_string();
        if intent.step == JobStep::Commit
            && (intent.device_uuid != uuid || intent.address != hello.address.to_string())
        {
            // That device committed (it sends no more hellos) and its job is being
            // finished from the recorded intent; this hello is not from it.
            return Err(JobFailure {
                step: "start",
                error: format!(
                    "a job for this PID already committed device {} at {}; a hello naming \
                     device {uuid} from another address is ignored",
                    intent.device_uuid, intent.address
                ),
                severity: Severity::Warning,
            });
        }
        Ok((provisioning_password, intent))
    }

    /// Logs in over TLS-PSK with the provisioning password (`identify` falls back to
    /// the credential an earlier attempt may have set).
    async fn login_psk(
        &self,
        hello: &AcceptedHello,
        intent: &JobIntent,
        device: SocketAddr,
        provisioning_password: &str,
    ) -> Result<AmtSession, JobFailure> {
        let t = self.settings.timeouts;
        match AmtSession::connect_psk(
            device,
            &hello.pid,
            &hello.pps,
            ADMIN_USER,
            provisioning_password,
            t,
        )
        .await
        {
            Ok(s) => Ok(s),
            Err(DeviceError::PskMismatch) => {
                self.forget_unless_resumed(intent).await;
                Err(JobFailure {
                    step: "TLS-PSK handshake",
                    error: "PID/PPS mismatch: the device holds a different PPS for this PID; re-enter the pair in MEBx".into(),
                    severity: Severity::Error,
                })
            }
            Err(e) => Err(self.fail_early(intent, "connect", e).await),
        }
    }

    /// Reads the device's general settings (with the intent's credential if the
    /// logged-in one is refused: an earlier attempt may have set it) and AMT version,
    /// and checks that `GetUuid` names the device the hello named.
    async fn identify(&self, job: &mut JobContext) -> Result<DeviceFacts, JobFailure> {
        let session = &mut job.session;
        let settings = match session.general_settings().await {
            Ok(s) => s,
            Err(DeviceError::Unauthorized) => {
                session.set_password(&job.intent.new_password);
                session
                    .general_settings()
                    .await
                    .map_err(|e| match e {
                        DeviceError::Unauthorized => JobFailure {
                            step: "login",
                            error: "the device refused the provisioning password: check the MEBx password the technician set".into(),
                            severity: Severity::Error,
                        },
                        e => JobFailure::at("read general settings")(e),
                    })?
            }
            Err(e) => return Err(JobFailure::at("read general settings")(e)),
        };
        let amt_version = session
            .amt_version()
            .await
            .map_err(JobFailure::at("read AMT version"))?;
        let device_uuid = DeviceUuid(
            session
                .get_uuid()
                .await
                .map_err(JobFailure::at("GetUuid"))?,
        );
        if device_uuid != job.hello_uuid {
            self.forget_unless_resumed(&job.intent).await;
            return Err(JobFailure {
                step: "GetUuid",
                error: format!(
                    "UUID mismatch: the hello said {}, the device says {device_uuid}",
                    job.hello_uuid
                ),
                severity: Severity::Error,
            });
        }
        Ok(DeviceFacts {
            settings,
            amt_version,
        })
    }

    /// Sets the device's admin credential to the one the intent recorded.
    async fn set_credential<I: RecordedIntent>(
        &self,
        job: &mut JobContext<I>,
        settings: &GeneralSettings,
    ) -> Result<(), JobFailure> {
        let new_password = job.intent.new_password();
        job.session
            .set_admin_acl_entry_ex(ADMIN_USER, &settings.digest_realm, new_password)
            .await
            .map_err(JobFailure::at("SetAdminAclEntryEx"))?;
        job.session.set_password(new_password);
        Ok(())
    }

    /// Names the device by the configured rule when it has no host name
    /// (CommitChanges refuses a device with DHCP on and no host name: 2057), and sets
    /// the configured domain; returns the device's host name.
    async fn name_device<I>(
        &self,
        job: &mut JobContext<I>,
        settings: &GeneralSettings,
    ) -> Result<String, JobFailure> {
        let host_name = if settings.host_name.is_empty() {
            self.settings
                .host_name_template
                .render(job.hello_uuid, job.address)
        } else {
            settings.host_name.clone()
        };
        if host_name != settings.host_name || self.settings.domain.is_some() {
            let domain = self
                .settings
                .domain
                .as_deref()
                .unwrap_or(&settings.domain_name);
            job.session
                .set_host_name(&host_name, domain)
                .await
                .map_err(JobFailure::at("set host name"))?;
        }
        Ok(host_name)
    }

    /// Synchronises the device's clock with vprov's.
    async fn sync_clock<I>(&self, job: &mut JobContext<I>) -> Result<(), JobFailure> {
        let ta0 = job
            .session
            .low_accuracy_time()
            .await
            .map_err(JobFailure::at("GetLowAccuracyTimeSynch"))?;
        let now = unix_seconds();
        job.session
            .set_high_accuracy_time(ta0, now, now)
            .await
            .map_err(JobFailure::at("SetHighAccuracyTimeSynch"))
    }

    /// The certificate the device presents from now on: the one an earlier attempt
    /// installed and linked (reused rather than piling up key pairs: AMT allows one
    /// credential context), or a new one ([`Inner::install_certificate`]).
    async fn tls_certificate(
        &self,
        job: &mut JobContext,
        host_name: &str,
        amt_version: &str,
    ) -> Result<Vec<u8>, JobFailure> {
        // Only a resumed job can find a context of its own: a fresh intent means no
        // earlier attempt got past the credential change.
        let has_context = job.intent.resumed
            && job
                .session
                .has_tls_credential_context()
                .await
                .map_err(JobFailure::at("read TLS credential context"))?;
        match (&job.intent.certificate_der, has_context) {
            (Some(issued), true) => Ok(issued.clone()),
            (None, true) => Err(JobFailure {
                step: "read TLS credential context",
                error: "the device already has a TLS credential context that vprov did not create"
                    .into(),
                severity: Severity::Error,
            }),
            (_, false) => {
                self.install_certificate(
                    &mut job.session,
                    job.intent.record(),
                    host_name,
                    amt_version,
                )
                .await
            }
        }
    }

    /// Enables TLS (and on the local interface if configured), records that the job
    /// is committing, and commits.
    async fn commit<I: RecordedIntent>(&self, job: &mut JobContext<I>) -> Result<(), JobFailure> {
        job.session
            .enable_tls(self.settings.local_tls)
            .await
            .map_err(JobFailure::at("enable TLS"))?;
        self.still_claimed(&job.keys).await?;
        self.mark_committing(job.intent.record()).await;
        job.session
            .commit_changes()
            .await
            .map_err(JobFailure::at("CommitChanges"))
    }

    /// Closes the setup session and confirms the device over TLS pinned to
    /// `record`'s certificate with its new credential; returns the job's intent.
    async fn confirm<I: RecordedIntent>(
        &self,
        job: JobContext<I>,
        record: &ProvisionedDevice,
    ) -> Result<I, JobFailure> {
        let JobContext {
            hello_uuid,
            device,
            intent,
            session,
            ..
        } = job;
        drop(session);
        self.confirm_tls(
            device,
            intent.new_password(),
            hello_uuid,
            &record.certificate_der,
        )
        .await
        .map_err(JobFailure::at("confirm TLS mode"))?;
        Ok(intent)
    }

    /// Confirms the device ([`Inner::confirm`]), then records it (marking the PID
    /// used) and hands it to the post-provision actions.
    async fn confirm_and_record(
        &self,
        job: JobContext,
        record: ProvisionedDevice,
    ) -> Result<(), JobFailure> {
        let intent = self.confirm(job, &record).await?;
        let pw = intent.new_password.clone();
        let id = intent.id;
        let device = post_provision_view(&record, &intent.pid);
        self.store
            .call(move |s| {
                let uuid = record.uuid.clone();
                s.complete_job(id, &record, &pw)?;
                s.clear_job_backoff(&uuid).map(drop)
            })
            .await
            .map_err(store_failure)?
            .map_err(store_failure)?;
        self.provisioned(device);
        Ok(())
    }

    /// Hands a newly recorded device to the post-provision actions (if any).
    fn provisioned(&self, device: DeviceInfo) {
        if let Some(plugins) = &self.plugins {
            plugins.after_provisioning(device);
        }
    }

    /// Gets the device a key pair — generated inside it (`GenerateKeyPair`, AMT
    /// 6.2/7.0 on), or by vprov and sent with `AddKey` on older firmware (by the
    /// reported version, and whenever the device answers `ActionNotSupported`) —,
    /// issues a certificate for it, records the certificate with the job, installs
    /// it and links it as the TLS credential.
    ///
    /// A key vprov generates is a secret: held zeroized in memory only, sent once,
    /// never logged or stored. A crash before the certificate is recorded makes the
    /// next attempt add a fresh one.
    async fn install_certificate(
        &self,
        session: &mut AmtSession,
        job: JobRecord,
        host_name: &str,
        amt_version: &str,
    ) -> Result<Vec<u8>, JobFailure> {
        let generated = if has_generate_key_pair(amt_version) {
            match session.generate_key_pair().await {
                Ok(key_pair) => Some(key_pair),
                Err(e) if is_action_not_supported(&e) => None,
                Err(e) => return Err(JobFailure::at("GenerateKeyPair")(e)),
            }
        } else {
            None
        };
        let public_key = match generated {
            Some(key_pair) => session
                .public_key(&key_pair)
                .await
                .map_err(JobFailure::at("read key pair"))?,
            None => {
                let key = DeviceKey::generate().map_err(|e| JobFailure {
                    step: "generate device key",
                    error: e,
                    severity: Severity::Error,
                })?;
                session
                    .add_key(&key.private_der)
                    .await
                    .map_err(JobFailure::at("AddKey"))?;
                key.public_der
            }
        };
        let common_name = host_name;
        let certificate = self
            .ca
            .issue_device_certificate(&public_key, common_name)
            .map_err(|e| JobFailure {
                step: "issue certificate",
                error: e.to_string(),
                severity: Severity::Error,
            })?;
        let cert = certificate.clone();
        let _ = self
            .store
            .call(move |s| match job {
                JobRecord::Psk(id) => s.set_job_certificate(id, &cert),
                JobRecord::Pki(id) => s.set_pki_job_certificate(id, &cert),
            })
            .await;
        let cert_id = session
            .add_certificate(&certificate)
            .await
            .map_err(JobFailure::at("AddCertificate"))?;
        session
            .create_tls_credential_context(&cert_id)
            .await
            .map_err(JobFailure::at("create TLS credential context"))?;
        Ok(certificate)
    }

    /// Marks `keys` as having a job; false if one has, or if the PID already has
    /// [`MAX_JOBS_PER_PID`] jobs (from as many addresses).
    fn claim(&self, keys: &JobKeys) -> bool {
        self.running.lock().expect("jobs lock").claim(keys)
    }

    fn release(&self, keys: &JobKeys) {
        self.running.lock().expect("jobs lock").release(keys);
    }

    /// Whether this node already tried to finish the committed intent `job`; with
    /// `mark`, records that it tries now.
    fn tried_resume(&self, job: JobRecord, mark: bool) -> bool {
        let key = match job {
            JobRecord::Psk(id) => (false, id),
            JobRecord::Pki(id) => (true, id),
        };
        let mut tried = self.resumed.lock().expect("resumed lock");
        if mark {
            !tried.insert(key)
        } else {
            tried.contains(&key)
        }
    }

    /// Claims `keys` in the store for this node (all nodes on the store see it);
    /// with `pid`, only while that PID is available. False if another node holds
    /// one (that node works on the device) or the PID was used meanwhile.
    async fn claim_store(&self, keys: &JobKeys, pid: Option<String>) -> bool {
        let (k, node, lease) = (
            keys.keys.to_vec(),
            self.settings.node.clone(),
            self.settings.lease,
        );
        let claimed = self
            .store
            .call(move |s| s.claim_job(&k, pid.as_deref(), &node, lease))
            .await;
        match claimed {
            Ok(Ok(ClaimOutcome::Claimed)) => true,
            Ok(Ok(ClaimOutcome::HeldBy(other))) => {
                tracing::debug!(key = %keys.keys[0], node = %other,
                    "hello absorbed: another node works on this device");
                false
            }
            Ok(Ok(ClaimOutcome::PidTaken)) => {
                tracing::debug!(key = %keys.keys[0], "hello absorbed: its PID was used meanwhile");
                false
            }
            Ok(Err(e)) => {
                tracing::error!(key = %keys.keys[0], "cannot claim a job in the store: {e}");
                false
            }
            Err(_) => false,
        }
    }

    /// Gives up this node's store claims of `keys` (the job ended).
    async fn release_store(&self, keys: &JobKeys) {
        let (k, node) = (keys.keys.to_vec(), self.settings.node.clone());
        if let Ok(Err(e)) = self.store.call(move |s| s.release_claims(&k, &node)).await {
            tracing::warn!(key = %keys.keys[0], "cannot release a job claim (it expires): {e}");
        }
    }

    /// Fails the job unless this node still holds its claims (renewing them): a node
    /// stalled past its lease may have lost the device to another.
    async fn still_claimed(&self, keys: &JobKeys) -> Result<(), JobFailure> {
        let (k, node, lease) = (
            keys.keys.to_vec(),
            self.settings.node.clone(),
            self.settings.lease,
        );
        match self
            .store
            .call(move |s| s.confirm_claim(&k, &node, lease))
            .await
            .map_err(store_failure)?
            .map_err(store_failure)?
        {
            true => Ok(()),
            false => Err(JobFailure {
                step: "claim",
                error: format!(
                    "node {} lost this job's claim (its lease expired): another node may be \
                     working on the device, so this one stops before CommitChanges",
                    self.settings.node
                ),
                severity: Severity::Warning,
            }),
        }
    }

    /// Jobs queued or running for `pid`, at any address.
    fn jobs_for_pid(&self, pid: &Pid) -> usize {
        self.running
            .lock()
            .expect("jobs lock")
            .per_pid
            .get(pid.as_str())
            .copied()
            .unwrap_or(0)
    }

    /// Reconnects over TLS (the device must present the certificate the job issued)
    /// with the new credential until the device answers with the expected UUID.
    async fn confirm_tls(
        &self,
        device: SocketAddr,
        password: &str,
        expected: DeviceUuid,
        certificate: &[u8],
    ) -> Result<(), DeviceError> {
        tokio::time::sleep(self.settings.commit_wait).await;
        match self
            .reach_after_restart(device, password, Some(certificate))
            .await?
        {
            (_, uuid) if uuid == expected => Ok(()),
            (_, uuid) => Err(DeviceError::Malformed(format!(
                "after commit the device at {device} reports UUID {uuid}"
            ))),
        }
    }

    /// Reads back a device whose job committed before a restart, over TLS with the
    /// job's credential and certificate: the UUID it reports (the caller checks it
    /// against the intent) and the record to store for it, at `address`.
    async fn reread_after_restart(
        &self,
        device: SocketAddr,
        password: &str,
        certificate: Option<&[u8]>,
        address: &str,
    ) -> Result<(DeviceUuid, ProvisionedDevice), DeviceError> {
        let (mut s, uuid) = self
            .reach_after_restart(device, password, certificate)
            .await?;
        let amt_version = s.amt_version().await.ok();
        let host = s.general_settings().await.ok().map(|g| g.host_name);
        let record = ProvisionedDevice {
            uuid: uuid.to_string(),
            host_name: host.filter(|h| !h.is_empty()),
            address: address.to_owned(),
            amt_version,
            admin_user: ADMIN_USER.into(),
            certificate_der: certificate.map(<[u8]>::to_vec).unwrap_or_default(),
        };
        Ok((uuid, record))
    }

    /// Connects over TLS with `password` and reads the device's UUID, retrying for up
    /// to the confirm timeout: after CommitChanges the firmware restarts its network
    /// stack, and for a while the port refuses connections or still speaks PSK.
    async fn reach_after_restart(
        &self,
        device: SocketAddr,
        password: &str,
        certificate: Option<&[u8]>,
    ) -> Result<(AmtSession, DeviceUuid), DeviceError> {
        let deadline = tokio::time::Instant::now() + self.settings.confirm_timeout;
        loop {
            let attempt = async {
                let mut s = AmtSession::connect_tls(
                    device,
                    self.ca.cert_der(),
                    certificate,
                    ADMIN_USER,
                    password,
                    self.settings.timeouts,
                )
                .await?;
                let uuid = DeviceUuid(s.get_uuid().await?);
                Ok::<_, DeviceError>((s, uuid))
            };
            match attempt.await {
                Ok(reached) => return Ok(reached),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
    }

    async fn resume(&self, intent: JobIntent) {
        let Ok(ip) = intent.address.parse::<IpAddr>() else {
            return;
        };
        let device = SocketAddr::new(ip, self.settings.device_port);
        let confirmed = self
            .reread_after_restart(
                device,
                &intent.new_password,
                intent.certificate_der.as_deref(),
                &intent.address,
            )
            .await;
        match confirmed {
            Ok((uuid, record)) if uuid.to_string() == intent.device_uuid => {
                let pw = intent.new_password.clone();
                let id = intent.id;
                let device = post_provision_view(&record, &intent.pid);
                match self.store.call(move |s| s.complete_job(id, &record, &pw)).await {
                    Ok(Ok(())) => {
                        tracing::info!(pid = %intent.pid, device = %intent.device_uuid,
                            node = %self.settings.node,
                            "interrupted job finished: the device had committed");
                        self.provisioned(device);
                    }
                    Ok(Err(e)) => tracing::error!("cannot record resumed device: {e}"),
                    Err(_) => {}
                }
            }
            Ok((uuid, _)) => self.alert(
                Severity::Error,
                format!(
                    "resuming an interrupted job: the device at this address is {uuid}, not the expected one"
                ),
                &intent.pid,
                &intent.device_uuid,
                ip,
            ),
            Err(e) => tracing::info!(pid = %intent.pid, "interrupted job: device not in TLS mode yet ({e}); waiting for its next hello"),
        }
    }

    async fn step(&self, job: i64, step: JobStep) {
        let _ = self.store.call(move |s| s.set_job_step(job, step)).await;
    }

    /// Records that `job` is about to send CommitChanges: from here on only its
    /// recorded intent finishes it.
    async fn mark_committing(&self, job: JobRecord) {
        match job {
            JobRecord::Psk(id) => self.step(id, JobStep::Commit).await,
            JobRecord::Pki(id) => self.pki_step(id, "commit").await,
        }
    }

    /// After a failure before this attempt changed anything on the device: drops the
    /// intent, unless an earlier attempt left it (that attempt may have given the
    /// device the recorded credential). Either way the PID stays available.
    async fn forget_unless_resumed(&self, intent: &JobIntent) {
        // Another job for this PID (from another address) may be using the intent.
        if !intent.resumed && self.jobs_for_pid(&intent.pid) <= 1 {
            let job = intent.id;
            let _ = self.store.call(move |s| s.abandon_job(job)).await;
        }
    }

    async fn fail_early(
        &self,
        intent: &JobIntent,
        step: &'static str,
        e: DeviceError,
    ) -> JobFailure {
        self.forget_unless_resumed(intent).await;
        JobFailure::at(step)(e)
    }
}

#[cfg(test)]
mod key_generation_tests {
    use super::*;

    /// The reference guide gives GenerateKeyPair from AMT 6.2 and 7.0 on.
    #[test]
    fn generate_key_pair_exists_from_6_2_on() {
        for (version, has) in [
            ("6.0.40", false),
            ("6.1.0", false),
            ("6.2.10", true),
            ("7.0.0", true),
            ("10.0.55", true),
            ("5", false),
            ("garbage", true),
        ] {
            assert_eq!(has_generate_key_pair(version), has, "{version}");
        }
    }

    #[test]
    fn a_device_key_is_rsa_2048_in_pkcs1() {
        let key = DeviceKey::generate().unwrap();
        let private = openssl::rsa::Rsa::private_key_from_der(&key.private_der).unwrap();
        assert_eq!(private.size(), 256);
        let public = openssl::rsa::Rsa::public_key_from_der_pkcs1(&key.public_der).unwrap();
        assert_eq!(public.n(), private.n());
    }
}
