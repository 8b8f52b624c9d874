//! The PKI provisioning job: from a v3 hello (AMT 11+) to a device record in Admin
//! Control Mode (`docs/protocol-notes.md`).
//!
//! 1. Pick the chain (`crate::pki::select`: a root hash of the hello, the device's DNS
//!    suffix from `[pki]`: subnet rule, reverse DNS if on, default), open its sealed key and check the chain again (it may have
//!    expired since import).
//! 2. Record the intent (device, address, chain, new admin credential — sealed) before
//!    anything changes on the device.
//! 3. TLS to the device's port presenting the chain (`device::pki_tls`), recording
//!    the fingerprint of the certificate the device presents; Digest as `admin` with
//!    the factory MEBx password `admin` (Intel's `Enter-AmtRemoteConfiguration`; Q1),
//!    then the provisioning password (a USB setup.bin sets it), then the intent's
//!    credential (an earlier attempt set it).
//! 4. AMT version and `GetUuid` (must be the hello's), `SetMEBxPassword` (the
//!    device's new admin credential, random per device unless `admin_password =
//!    "provisioning"`: CommitChanges refuses a factory MEBx password, and the device
//!    is not authenticated, so the provisioning password is never sent),
//!    `SetAdminAclEntryEx`, then the PSK job's common steps: host name, clock, key
//!    pair and certificate from vprov's CA, TLS, `CommitChanges`, and confirmation over
//!    TLS pinned to the issued certificate with the new credential.
//! 5. The device record: control mode ACM, path PKI, the chain, the setup certificate
//!    fingerprint.
//!
//! Every failure is an alert of source `provisioning` whose text is the same for the
//! same cause, so repeated hellos of a failing device aggregate into one alert; and,
//! as for PSK jobs (`store/backoff.rs`), the device's next hellos from that address
//! start no job until the back-off has passed, the cause changes or an admin runs
//! `vprov devices retry`.

use super::*;
use crate::device::pki_tls::ChainDialer;
use crate::hello::CertificateHash;
use crate::pki::select::{reverse_name, select, SelectError, REVERSE_DNS_TIMEOUT};
use crate::pki::ProvisioningChain;
use crate::store::{PkiJobIntent, PkiProvisioning, PKI_JOB_PID};

/// The factory MEBx password: the Digest credential of the setup session until the
/// job changes it (amt-pki.md §1.3, VPRO-PS).
const FACTORY_PASSWORD: &str = "admin";

/// A v3 hello: the device to configure.
#[derive(Debug)]
pub struct AcceptedPkiHello {
    pub uuid: DeviceUuid,
    pub address: IpAddr,
    pub hashes: Vec<CertificateHash>,
}

/// The provisioning chain a job presents: the chain, its name in vprov, and the TLS
/// dialer that presents it (and records the certificate the device presents).
struct PkiSetup {
    chain: ProvisioningChain,
    chain_name: String,
    dialer: Arc<ChainDialer>,
}

/// A just-provisioned PKI device as post-provision actions see it (no PID).
fn pki_view(record: &ProvisionedDevice) -> DeviceInfo {
    DeviceInfo {
        uuid: record.uuid.as_str().into(),
        host_name: record.host_name.as_deref().map(Into::into).into(),
        address: record.address.as_str().into(),
        amt_version: record.amt_version.as_deref().map(Into::into).into(),
        pid: "".into(),
        state: "unmanaged".into(),
        management_mode: None.into(),
    }
}

fn failure(step: &'static str, severity: Severity, error: String) -> JobFailure {
    JobFailure {
        step,
        error,
        severity,
    }
}

/// What a PKI job claims: its device at the hello's address (also against PSK jobs).
fn pki_keys(uuid: &str, address: IpAddr) -> JobKeys {
    JobKeys {
        pid: format!("pki {uuid}"),
        keys: [
            format!("pki device {uuid} @{address}"),
            format!("device {uuid} @{address}"),
        ],
    }
}

impl JobManager {
    /// After a restart: finishes every PKI job whose device committed (it sends no
    /// more hellos); earlier ones wait for the device's next hello, which reuses their
    /// recorded credential.
    pub(super) async fn resume_pending_pki(&self) {
        let Ok(Ok(pending)) = self.inner.store.call(|s| s.pending_pki_jobs()).await else {
            return;
        };
        for intent in pending.into_iter().filter(|i| i.step == "commit") {
            let Ok(address) = intent.address.parse::<IpAddr>() else {
                continue;
            };
            let keys = pki_keys(&intent.device_uuid, address);
            let job = super::JobRecord::Pki(intent.id);
            if self.inner.tried_resume(job, false) || !self.inner.claim(&keys) {
                continue;
            }
            let inner = self.inner.clone();
            tokio::spawn(async move {
                if inner.claim_store(&keys, None).await {
                    if !inner.tried_resume(job, true) {
                        inner.resume_pki(intent, address).await;
                    }
                    inner.release_store(&keys).await;
                }
                inner.release(&keys);
            });
        }
    }

    /// Starts a PKI job for `hello` unless one is queued or running for the device at
    /// that address, or its last job there failed and it waits out the back-off
    /// (repeated hellos are absorbed).
    pub fn submit_pki(&self, hello: AcceptedPkiHello) {
        if self.inner.stopping.load(Ordering::Relaxed) {
            return;
        }
        let keys = pki_keys(&hello.uuid.to_string(), hello.address);
        if !self.inner.claim(&keys) {
            return;
        }
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let (uuid, pid) = (hello.uuid.to_string(), PKI_JOB_PID.to_string());
            if !inner.backing_off(uuid, pid, hello.address).await {
                if let Ok((_slot, _running)) = inner.slot().await {
                    if !inner.stopping.load(Ordering::Relaxed)
                        && inner.claim_store(&keys, None).await
                    {
                        inner.run_pki(hello).await;
                        inner.release_store(&keys).await;
                    }
                }
            }
            inner.release(&keys);
        });
    }
}

impl Inner {
    fn pki_alert(&self, severity: Severity, message: String, uuid: &str, address: IpAddr) {
        self.alerts.raise(NewAlert {
            severity,
            source: "provisioning".into(),
            message,
            pid: None,
            device_uuid: Some(uuid.to_string()),
            address: Some(address.to_string()),
        });
    }

    async fn run_pki(&self, hello: AcceptedPkiHello) {
        let uuid = hello.uuid.to_string();
        let address = hello.address;
        tracing::info!(device = %uuid, %address, "PKI provisioning job started");
        let started = std::time::Instant::now();
        let result = self.provision_pki(hello).await;
        let failed_at = result.as_ref().err().map(|f| f.step);
        crate::metrics::job_finished("pki", failed_at, started.elapsed());
        match result {
            Ok(chain) => {
                tracing::info!(device = %uuid, %address, %chain, "device provisioned (PKI, admin control mode)")
            }
            Err(f) => {
                let cause = format!("{}: {}", f.step, f.error);
                self.record_failure(&uuid, PKI_JOB_PID, address, &cause)
                    .await;
                // The same text for every repeat, so that repeats collapse into one
                // alert with a count.
                self.pki_alert(
                    f.severity,
                    format!(
                        "PKI provisioning failed at step {cause}. Its next hellos wait before \
                         another attempt; fix the cause, then `vprov devices retry {uuid}` \
                         tries at once"
                    ),
                    &uuid,
                    address,
                )
            }
        }
    }

    /// Runs the job: the chain, the credentials, the intent, then the device's
    /// configuration ([`Inner::configure_pki`]); returns the name of the chain used.
    async fn provision_pki(&self, hello: AcceptedPkiHello) -> Result<String, JobFailure> {
        // 1. The chain.
        let setup = self.choose_chain(&hello).await?;
        let provisioning_password = self
            .store
            .call(|s| s.provisioning_password())
            .await
            .map_err(store_failure)?
            .map_err(store_failure)?;
        let new_password = self.pki_credential(provisioning_password.as_ref())?;
        // 2. Intent first.
        let intent = self.begin_pki(&hello, &setup, new_password).await?;
        let (job, resumed) = (intent.id, intent.resumed);
        let result = self
            .configure_pki(&hello, &setup, provisioning_password.as_ref(), intent)
            .await;
        if result.is_err() && !resumed {
            // A fresh intent that never reached the credential step changed nothing.
            let _ = self.store.call(move |s| s.abandon_pki_job(job)).await;
        }
        result.map(|()| setup.chain_name)
    }

    /// Picks the hello's provisioning chain, opens its sealed key and checks the chain
    /// again (it may have expired since import).
    async fn choose_chain(&self, hello: &AcceptedPkiHello) -> Result<PkiSetup, JobFailure> {
        let rules = self.settings.pki.clone();
        let (hashes, address) = (hello.hashes.clone(), hello.address);
        let name = if rules.wants_reverse_dns(address) {
            reverse_name(address, REVERSE_DNS_TIMEOUT).await
        } else {
            None
        };
        let chosen = self
            .store
            .call(move |s| {
                let chains = s.provisioning_chains()?;
                Ok::<_, crate::store::StoreError>(
                    select(&chains, &hashes, address, name.as_deref(), &rules).cloned(),
                )
            })
            .await
            .map_err(store_failure)?
            .map_err(store_failure)?
            .map_err(|e| {
                let severity = match e {
                    SelectError::NoHashMatch { .. } => Severity::Warning,
                    _ => Severity::Error,
                };
                failure("choose provisioning chain", severity, e.to_string())
            })?;
        let name = chosen.name.clone();
        let key = self
            .store
            .call(move |s| s.provisioning_chain_key(&name))
            .await
            .map_err(store_failure)?
            .map_err(store_failure)?;
        let now = crate::store::now_ms() / 1000;
        let chain = ProvisioningChain::from_stored(&chosen.chain_pem, &key, now).map_err(|e| {
            failure(
                "provisioning chain",
                Severity::Error,
                format!("chain {} is no longer usable: {e}", chosen.name),
            )
        })?;
        drop(key);
        let dialer = Arc::new(ChainDialer::new(&chain).map_err(JobFailure::at("TLS setup"))?);
        Ok(PkiSetup {
            chain,
            chain_name: chosen.name,
            dialer,
        })
    }

    /// The device's new admin credential: random per device, or the provisioning
    /// password when `admin_password = "provisioning"`.
    fn pki_credential(
        &self,
        provisioning_password: Option<&ProvisioningPassword>,
    ) -> Result<Zeroizing<String>, JobFailure> {
        match (provisioning_password, self.settings.keep_provisioning_password) {
            (_, false) => Ok(Zeroizing::new(crate::password::generate().expose().to_string())),
            (Some(p), true) => Ok(Zeroizing::new(p.expose().to_string())),
            (None, true) => Err(failure(
                "provisioning password",
                Severity::Error,
                "admin_password = \"provisioning\" but no provisioning password is set (vprov password set)".into(),
            )),
        }
    }

    /// Records the job's intent (device, address, chain, new credential) before
    /// anything changes on the device; refuses a hello after a committed job.
    async fn begin_pki(
        &self,
        hello: &AcceptedPkiHello,
        setup: &PkiSetup,
        new_password: Zeroizing<String>,
    ) -> Result<PkiJobIntent, JobFailure> {
        let (u, a, c, pw) = (
            hello.uuid.to_string(),
            hello.address.to_string(),
            setup.chain_name.clone(),
            new_password,
        );
        let intent: PkiJobIntent = self
            .store
            .call(move |s| s.begin_pki_job(&u, &a, &c, &pw))
            .await
            .map_err(store_failure)?
            .map_err(store_failure)?;
        if intent.step == "commit" {
            return Err(failure(
                "start",
                Severity::Warning,
                format!(
                    "an earlier job for this device committed at {} with chain {}; a hello after a commit is unexpected",
                    intent.address, intent.chain_name
                ),
            ));
        }
        Ok(intent)
    }

    /// The PKI path: a TLS login presenting the chain, then the steps every path
    /// shares (credential, host name, clock, certificate, commit, confirm), and the
    /// device record in Admin Control Mode.
    async fn configure_pki(
        &self,
        hello: &AcceptedPkiHello,
        setup: &PkiSetup,
        provisioning_password: Option<&ProvisioningPassword>,
        intent: PkiJobIntent,
    ) -> Result<(), JobFailure> {
        let device = SocketAddr::new(hello.address, self.settings.device_port);
        let session = self.connect_pki(device, setup).await?;
        let mut job = JobContext {
            keys: pki_keys(&hello.uuid.to_string(), hello.address),
            hello_uuid: hello.uuid,
            address: hello.address,
            device,
            intent,
            session,
        };
        let settings = self
            .login_pki(&mut job, setup, provisioning_password)
            .await?;
        let facts = self.identify_pki(&mut job, settings).await?;

        // From here on the device may hold the intent's credential: keep the intent.
        self.pki_step(job.intent.id, "credential").await;
        // The MEBx password becomes the device's own credential, not the provisioning
        // password: the device is not authenticated (its certificate is self-signed),
        // so whoever answers at the hello's address learns what is sent here.
        job.session
            .set_mebx_password(&job.intent.new_password)
            .await
            .map_err(JobFailure::at("SetMEBxPassword"))?;
        self.set_credential(&mut job, &facts.settings).await?;
        let host_name = self.name_device(&mut job, &facts.settings).await?;
        self.sync_clock(&mut job).await?;
        let certificate = self
            .install_certificate(
                &mut job.session,
                job.intent.record(),
                &host_name,
                &facts.amt_version,
            )
            .await?;
        self.commit(&mut job).await?;
        let record = job.device_record(host_name, facts.amt_version, certificate);
        self.confirm_and_record_pki(job, record, setup).await
    }

    /// Connects over TLS presenting the chain, as `admin` with the factory password.
    async fn connect_pki(
        &self,
        device: SocketAddr,
        setup: &PkiSetup,
    ) -> Result<AmtSession, JobFailure> {
        AmtSession::connect_with_chain(
            device,
            Arc::clone(&setup.dialer),
            ADMIN_USER,
            FACTORY_PASSWORD,
            self.settings.timeouts,
        )
        .await
        .map_err(|e| match e {
            DeviceError::ChainRefused(alert) => failure(
                "TLS handshake",
                Severity::Error,
                format!(
                    "the device refused the provisioning chain (CN {}): {alert}; check its trusted hashes and PKI DNS suffix",
                    setup.chain.summary().common_name
                ),
            ),
            e => JobFailure::at("connect")(e),
        })
    }

    /// Reads the device's general settings with the factory password, then the
    /// provisioning password (a vprov setup.bin sets it), then the job's own
    /// credential (an earlier attempt may have set it); records the fingerprint of the
    /// certificate the device presented.
    async fn login_pki(
        &self,
        job: &mut JobContext<PkiJobIntent>,
        setup: &PkiSetup,
        provisioning_password: Option<&ProvisioningPassword>,
    ) -> Result<GeneralSettings, JobFailure> {
        let mut settings = None;
        let candidates = [
            Some(FACTORY_PASSWORD),
            provisioning_password.map(|p| p.expose()),
            Some(job.intent.new_password.as_str()),
        ];
        for password in candidates.into_iter().flatten() {
            job.session.set_password(password);
            match job.session.general_settings().await {
                Ok(s) => {
                    settings = Some(s);
                    break;
                }
                Err(DeviceError::Unauthorized) => continue,
                Err(DeviceError::ChainRefused(alert)) => {
                    return Err(failure(
                        "TLS handshake",
                        Severity::Error,
                        format!("the device refused the provisioning chain: {alert}"),
                    ))
                }
                Err(e) => return Err(JobFailure::at("read general settings")(e)),
            }
        }
        if let Some(fp) = setup.dialer.device_certificate_sha256() {
            let job = job.intent.id;
            let _ = self
                .store
                .call(move |s| s.set_pki_job_fingerprint(job, &fp))
                .await;
        }
        settings.ok_or_else(|| {
            failure(
                "login",
                Severity::Error,
                "the device refused the factory MEBx password, the provisioning password and the job's credential: set its MEBx password back or unprovision it".into(),
            )
        })
    }

    /// Reads the AMT version and checks that `GetUuid` names the device the hello
    /// named.
    async fn identify_pki(
        &self,
        job: &mut JobContext<PkiJobIntent>,
        settings: GeneralSettings,
    ) -> Result<DeviceFacts, JobFailure> {
        let amt_version = job
            .session
            .amt_version()
            .await
            .map_err(JobFailure::at("read AMT version"))?;
        let device_uuid = job
            .session
            .get_uuid()
            .await
            .map_err(JobFailure::at("GetUuid"))?;
        if DeviceUuid(device_uuid) != job.hello_uuid {
            return Err(failure(
                "GetUuid",
                Severity::Error,
                format!(
                    "UUID mismatch: the hello said {}, the device says {}",
                    job.hello_uuid,
                    DeviceUuid(device_uuid)
                ),
            ));
        }
        Ok(DeviceFacts {
            settings,
            amt_version,
        })
    }

    /// Confirms the device ([`Inner::confirm`]), then records it in Admin Control
    /// Mode with its chain and setup certificate fingerprint, and hands it to the
    /// post-provision actions.
    async fn confirm_and_record_pki(
        &self,
        job: JobContext<PkiJobIntent>,
        record: ProvisionedDevice,
        setup: &PkiSetup,
    ) -> Result<(), JobFailure> {
        let intent = self.confirm(job, &record).await?;
        let pki = PkiProvisioning {
            chain_name: setup.chain_name.clone(),
            setup_certificate_sha256: setup.dialer.device_certificate_sha256().unwrap_or_default(),
        };
        let view = pki_view(&record);
        let (id, pw) = (intent.id, intent.new_password.clone());
        self.store
            .call(move |s| {
                let uuid = record.uuid.clone();
                s.complete_pki_job(id, &record, &pki, &pw)?;
                s.clear_job_backoff(&uuid).map(drop)
            })
            .await
            .map_err(store_failure)?
            .map_err(store_failure)?;
        self.provisioned(view);
        Ok(())
    }

    /// Confirms a device whose job committed before a restart and records it.
    async fn resume_pki(&self, intent: PkiJobIntent, address: IpAddr) {
        let device = SocketAddr::new(address, self.settings.device_port);
        let reached = self
            .reread_after_restart(
                device,
                &intent.new_password,
                intent.certificate_der.as_deref(),
                &intent.address,
            )
            .await;
        match reached {
            Ok((uuid, record)) if uuid.to_string() == intent.device_uuid => {
                let pki = PkiProvisioning {
                    chain_name: intent.chain_name.clone(),
                    setup_certificate_sha256: intent
                        .setup_certificate_sha256
                        .clone()
                        .unwrap_or_default(),
                };
                let view = pki_view(&record);
                let (id, pw) = (intent.id, intent.new_password.clone());
                match self
                    .store
                    .call(move |s| s.complete_pki_job(id, &record, &pki, &pw))
                    .await
                {
                    Ok(Ok(())) => {
                        tracing::info!(device = %intent.device_uuid,
                            "interrupted PKI job finished: the device had committed");
                        self.provisioned(view);
                    }
                    Ok(Err(e)) => tracing::error!("cannot record resumed PKI device: {e}"),
                    Err(_) => {}
                }
            }
            Ok((uuid, _)) => self.pki_alert(
                Severity::Error,
                format!("resuming an interrupted PKI job: the device at this address is {uuid}, not the expected one"),
                &intent.device_uuid,
                address,
            ),
            Err(e) => tracing::info!(device = %intent.device_uuid,
                "interrupted PKI job: device not reachable over TLS yet ({e})"),
        }
    }

    pub(super) async fn pki_step(&self, job: i64, step: &'static str) {
        let _ = self
            .store
            .call(move |s| s.set_pki_job_step(job, step))
            .await;
    }
}
