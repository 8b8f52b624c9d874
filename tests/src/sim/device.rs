//! One simulated device: its mutable state (credentials, clock, keys, certificates,
//! TLS settings, enumeration contexts), its lifecycle (hellos and the TLS-PSK server
//! in setup mode; after `CommitChanges` and the restart delay, the certificate TLS
//! server on the same port, which stays up until the simulator stops) and its outcome
//! report. With [`SimConfig::require_confirmation`] a device is provisioned only once a
//! client made an authenticated request over the certificate server, as vprov's confirm
//! step does.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openssl::pkey::{PKey, Private};
use openssl::ssl::SslContext;
use openssl::x509::X509;
use serde::Serialize;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;
use tokio::task::JoinSet;
use vprov_core::keys::{KeyGenerator, Pps};

use super::{digest, hello, http, pki, tls, AmtVersion, DeviceSpec, Fault, KeyPool, SimConfig};

/// The admin account name in setup mode.
pub const ADMIN_USER: &str = "admin";
/// Issued Digest nonces a device remembers.
const MAX_NONCES: usize = 256;
/// Open enumeration contexts a device remembers.
const MAX_ENUMERATIONS: usize = 64;
/// Longest PSK identity kept for the report.
const MAX_IDENTITY: usize = 128;

/// Whether a device ended up provisioned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Provisioned,
    NotProvisioned,
}

/// What happened to one device (JSON-serialisable; holds no PPS or password).
#[derive(Clone, Debug, Serialize)]
pub struct DeviceReport {
    /// GUID text form of the hello UUID (§1.6).
    pub uuid: String,
    pub address: Ipv4Addr,
    /// PID in display form `XXXX-XXXX`.
    pub pid: String,
    /// Injected fault, if any.
    pub fault: Option<String>,
    /// Hellos delivered to the server (connection accepted, 32 bytes written).
    pub hellos_sent: u32,
    /// Hellos that could not be delivered (connect refused or timed out, write failed).
    pub hellos_failed: u32,
    /// Why the last undelivered hello failed.
    pub last_hello_error: Option<String>,
    /// The last PSK identity a client sent (lossy UTF-8).
    pub psk_identity_seen: Option<String>,
    /// `SetAdminAclEntryEx` succeeded.
    pub admin_password_changed: bool,
    /// How often `SetAdminAclEntryEx` succeeded: once per provisioning job that got
    /// that far (two jobs on one device show as two).
    pub admin_password_changes: u32,
    pub host_name: String,
    pub domain_name: String,
    /// `SetHighAccuracyTimeSynch` succeeded.
    pub clock_synced: bool,
    /// The remote TLS settings (`Intel(r) AMT 802.3 TLS Settings`) are enabled.
    pub tls_enabled: bool,
    /// The local TLS settings (`Intel(r) AMT LMS TLS Settings`) are enabled.
    pub lms_tls_enabled: bool,
    /// A TLS credential context links an added certificate that matches a key pair.
    pub certificate_installed: bool,
    pub committed: bool,
    /// Milliseconds from the first hello (or device start without hellos) to the
    /// successful `CommitChanges`.
    pub committed_after_ms: Option<u64>,
    /// After the commit, a client made an authenticated request over the certificate
    /// TLS server (vprov's confirm step).
    pub confirmed: bool,
    /// Provisioned: committed and confirmed (committed alone without
    /// [`SimConfig::require_confirmation`]).
    pub outcome: Outcome,
    /// What this device should end as: provisioned unless a fault is injected.
    pub expected_outcome: Outcome,
    /// Why the device could not run (e.g. its address could not be bound).
    pub error: Option<String>,
    /// PKI devices: `acm` once committed (remote configuration ends in Admin Control
    /// Mode); `None` for PSK devices and before the commit.
    pub control_mode: Option<&'static str>,
    /// PKI devices: why the last client chain was refused.
    pub pki_refusal: Option<String>,
    /// PKI devices: the leaf CN of the last accepted client chain.
    pub pki_client_cn: Option<String>,
    /// `SetMEBxPassword` succeeded.
    pub mebx_password_changed: bool,
}

/// A key pair held by the device.
pub struct KeyEntry {
    pub instance_id: String,
    pub key: Arc<PKey<Private>>,
    /// Base64 PKCS#1 RSAPublicKey (`DERKey`).
    pub der_key: String,
}

/// A certificate added with `AddCertificate`.
pub struct CertEntry {
    pub instance_id: String,
    pub cert: X509,
    /// Base64 DER.
    pub der: String,
}

/// One `AMT_TLSSettingData` instance.
pub struct TlsSetting {
    pub instance_id: &'static str,
    pub enabled: bool,
    pub accept_non_secure: bool,
    pub mutual_auth: bool,
}

/// An open enumeration: remaining items of a snapshot.
pub struct Enumeration {
    pub context: String,
    pub class: String,
    pub items: VecDeque<String>,
}

/// Mutable device state, behind [`Device::state`].
/// CIM power states the simulated host moves between.
pub mod power {
    pub const ON: u16 = 2;
    pub const CYCLE: u16 = 5;
    pub const OFF: u16 = 8;
    pub const RESET: u16 = 10;
}

pub struct State {
    pub admin_user: String,
    /// HA1 = MD5(user:realm:password) of the current admin credential.
    pub ha1: [u8; 16],
    pub admin_password_changed: bool,
    pub admin_password_changes: u32,
    pub host_name: String,
    pub domain_name: String,
    pub clock_offset_s: i64,
    pub clock_synced: bool,
    pub keys: Vec<KeyEntry>,
    pub certs: Vec<CertEntry>,
    pub next_handle: u32,
    pub tls: [TlsSetting; 2],
    /// InstanceID of the certificate linked by the TLS credential context.
    pub credential_context: Option<String>,
    pub enumerations: VecDeque<Enumeration>,
    pub next_enumeration: u32,
    pub next_message: u64,
    pub nonces: VecDeque<String>,
    pub hellos_sent: u32,
    pub hellos_failed: u32,
    pub last_hello_error: Option<String>,
    pub first_hello: Option<Instant>,
    pub psk_identity: Option<String>,
    pub committed_at: Option<Instant>,
    pub error: Option<String>,
    /// The host's CIM power state: 2 on, 8 off (soft).
    pub power_state: u16,
    /// `SetMEBxPassword` succeeded.
    pub mebx_password_changed: bool,
    /// PKI: the leaf CN of the last accepted client chain.
    pub pki_client_cn: Option<String>,
    /// PKI: why the last client chain was refused.
    pub pki_refusal: Option<String>,
}

impl State {
    /// The device clock, in Unix seconds.
    pub fn device_time(&self) -> i64 {
        unix_now().saturating_add(self.clock_offset_s)
    }

    /// The key pair whose public key is `cert`'s.
    pub fn key_for(&self, cert: &X509) -> Option<&KeyEntry> {
        let public = cert.public_key().ok()?;
        self.keys.iter().find(|k| k.key.public_eq(&public))
    }

    /// The certificate linked for TLS, if it matches a key pair.
    pub fn tls_certificate(&self) -> Option<(&CertEntry, &KeyEntry)> {
        let id = self.credential_context.as_deref()?;
        let cert = self.certs.iter().find(|c| c.instance_id == id)?;
        Some((cert, self.key_for(&cert.cert)?))
    }

    /// Whether `CommitChanges` may succeed: clock set, remote TLS enabled with a linked
    /// certificate and key ("If TLS is enabled, RSA key and certificate must be
    /// configured"), and, if `need_host_name`, a host name ("If DHCP is enabled,
    /// host-name must be set"; the simulated device always uses DHCP).
    pub fn ready_to_commit(&self, need_host_name: bool) -> bool {
        self.clock_synced
            && self.tls[0].enabled
            && self.tls_certificate().is_some()
            && !(need_host_name && self.host_name.is_empty())
    }

    /// Allocates a new object handle (shared by keys and certificates).
    pub fn handle(&mut self) -> u32 {
        let h = self.next_handle;
        self.next_handle += 1;
        h
    }

    /// Issues and remembers a Digest nonce.
    pub fn issue_nonce(&mut self) -> String {
        let nonce = digest::new_nonce();
        if self.nonces.len() == MAX_NONCES {
            self.nonces.pop_front();
        }
        self.nonces.push_back(nonce.clone());
        nonce
    }

    /// Stores an enumeration and returns its context.
    pub fn open_enumeration(&mut self, class: &str, items: Vec<String>) -> String {
        self.next_enumeration = self.next_enumeration.wrapping_add(1);
        let context = format!("{:08X}-0000-0000-0000-000000000000", self.next_enumeration);
        if self.enumerations.len() == MAX_ENUMERATIONS {
            self.enumerations.pop_front();
        }
        self.enumerations.push_back(Enumeration {
            context: context.clone(),
            class: class.to_string(),
            items: items.into(),
        });
        context
    }
}

/// Host clock in Unix seconds.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// One simulated device.
pub struct Device {
    pub spec: DeviceSpec,
    /// `Digest:` + 32 hex.
    pub realm: String,
    /// The PPS the device really holds (differs from the spec's with `wrong-pps`).
    pps: Pps,
    /// What `GetUuid` answers (differs from the hello's with `uuid-mismatch`).
    pub reported_uuid: [u8; 16],
    pub key_pool: Arc<KeyPool>,
    /// Firmware generation of `spec.amt_version`.
    pub version: AmtVersion,
    pub started: Instant,
    state: Mutex<State>,
    committed: watch::Sender<bool>,
    /// An authenticated request arrived over the certificate TLS server.
    confirmed: AtomicBool,
    require_confirmation: bool,
    /// Delay of every WS-Management reply ([`SimConfig::call_latency`]).
    pub call_latency: Duration,
    /// A once-only fault (`hang-once`) has fired.
    fault_spent: AtomicBool,
}

impl Device {
    /// A device in setup mode. Fails if the spec's AMT version does not parse.
    pub fn new(spec: DeviceSpec, config: &SimConfig) -> anyhow::Result<Device> {
        let version = spec.version()?;
        let realm = format!(
            "Digest:{}",
            digest::hex(&rand::random::<[u8; 16]>()).to_ascii_uppercase()
        );
        let pps = match spec.fault {
            Some(Fault::WrongPps) => different_pps(&spec.pps),
            _ => spec.pps.clone(),
        };
        let password = match spec.fault {
            Some(Fault::WrongPassword) => format!("{}-x", spec.mebx_password),
            _ => spec.mebx_password.clone(),
        };
        let reported_uuid = match spec.fault {
            Some(Fault::UuidMismatch) => {
                let mut u = spec.uuid;
                u[15] ^= 0x5a;
                u[0] ^= 0xa5;
                u
            }
            _ => spec.uuid,
        };
        let state = State {
            admin_user: ADMIN_USER.to_string(),
            ha1: digest::ha1(ADMIN_USER, &realm, &password),
            admin_password_changed: false,
            admin_password_changes: 0,
            host_name: spec.host_name.clone(),
            domain_name: spec.domain_name.clone(),
            clock_offset_s: config.clock_offset_s,
            clock_synced: false,
            keys: Vec::new(),
            certs: Vec::new(),
            next_handle: 0,
            tls: [
                TlsSetting {
                    instance_id: "Intel(r) AMT 802.3 TLS Settings",
                    enabled: false,
                    accept_non_secure: true,
                    mutual_auth: false,
                },
                TlsSetting {
                    instance_id: "Intel(r) AMT LMS TLS Settings",
                    enabled: false,
                    accept_non_secure: true,
                    mutual_auth: false,
                },
            ],
            credential_context: None,
            enumerations: VecDeque::new(),
            next_enumeration: 0x93,
            next_message: 0,
            nonces: VecDeque::new(),
            hellos_sent: 0,
            hellos_failed: 0,
            last_hello_error: None,
            first_hello: None,
            psk_identity: None,
            committed_at: None,
            error: None,
            power_state: power::ON,
            mebx_password_changed: false,
            pki_client_cn: None,
            pki_refusal: None,
        };
        Ok(Device {
            spec,
            realm,
            pps,
            reported_uuid,
            key_pool: Arc::clone(&config.key_pool),
            version,
            started: Instant::now(),
            state: Mutex::new(state),
            committed: watch::channel(false).0,
            confirmed: AtomicBool::new(false),
            require_confirmation: config.require_confirmation,
            call_latency: config.call_latency,
            fault_spent: AtomicBool::new(false),
        })
    }

    /// Locks the state (a poisoned lock is taken over: state stays usable).
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The configured fault, if any.
    pub fn fault(&self) -> Option<&Fault> {
        self.spec.fault.as_ref()
    }

    /// Records a successful `CommitChanges` (the caller holds the state lock).
    pub fn mark_committed(&self, state: &mut State) {
        if state.committed_at.is_none() {
            state.committed_at = Some(Instant::now());
        }
        self.committed.send_replace(true);
    }

    /// Whether the device committed.
    pub fn is_committed(&self) -> bool {
        *self.committed.borrow()
    }

    /// Records an authenticated request over the certificate TLS server.
    pub fn mark_confirmed(&self) {
        self.confirmed.store(true, Ordering::SeqCst);
    }

    /// Whether a client confirmed the device after its commit.
    pub fn is_confirmed(&self) -> bool {
        self.confirmed.load(Ordering::SeqCst)
    }

    /// Whether the device counts as provisioned (see [`DeviceReport::outcome`]).
    pub fn is_provisioned(&self) -> bool {
        self.is_committed() && (self.is_confirmed() || !self.require_confirmation)
    }

    /// Whether handshakes above TLS 1.0 are refused ([`super::Behaviour`]).
    pub fn tls_version_intolerant(&self) -> bool {
        self.spec
            .behaviour
            .tls_version_intolerant
            .unwrap_or_else(|| self.version.is_tls_version_intolerant())
    }

    /// A receiver that sees `true` once the device committed.
    pub fn commit_watch(&self) -> watch::Receiver<bool> {
        self.committed.subscribe()
    }

    fn record_error(&self, what: String) {
        self.state().error.get_or_insert(what);
    }

    /// The outcome report.
    pub fn report(&self) -> DeviceReport {
        let st = self.state();
        let committed = st.committed_at.is_some();
        let since = st.first_hello.unwrap_or(self.started);
        DeviceReport {
            uuid: super::guid_text(&self.spec.uuid),
            address: self.spec.address,
            pid: self.spec.pid.dashed(),
            fault: self.spec.fault.as_ref().map(Fault::describe),
            hellos_sent: st.hellos_sent,
            hellos_failed: st.hellos_failed,
            last_hello_error: st.last_hello_error.clone(),
            psk_identity_seen: st.psk_identity.clone(),
            admin_password_changed: st.admin_password_changed,
            admin_password_changes: st.admin_password_changes,
            host_name: st.host_name.clone(),
            domain_name: st.domain_name.clone(),
            clock_synced: st.clock_synced,
            tls_enabled: st.tls[0].enabled,
            lms_tls_enabled: st.tls[1].enabled,
            certificate_installed: st.tls_certificate().is_some(),
            committed,
            committed_after_ms: st.committed_at.map(|t| {
                u64::try_from(t.saturating_duration_since(since).as_millis()).unwrap_or(u64::MAX)
            }),
            confirmed: self.is_confirmed(),
            outcome: if self.is_provisioned() {
                Outcome::Provisioned
            } else {
                Outcome::NotProvisioned
            },
            expected_outcome: self.expected_outcome(),
            error: st.error.clone(),
            control_mode: (self.spec.pki.is_some() && committed).then_some("acm"),
            pki_refusal: st.pki_refusal.clone(),
            pki_client_cn: st.pki_client_cn.clone(),
            mebx_password_changed: st.mebx_password_changed,
        }
    }

    /// Marks a once-only fault as fired; `true` the first time only.
    pub fn spend_fault(&self) -> bool {
        !self.fault_spent.swap(true, Ordering::SeqCst)
    }

    /// Provisioned unless a fault is injected that the flow cannot survive (every
    /// fault but `hang-once` targets the provisioning flow for good).
    pub fn expected_outcome(&self) -> Outcome {
        if self
            .spec
            .fault
            .as_ref()
            .is_some_and(|f| !matches!(f, Fault::HangOnce { .. }))
        {
            Outcome::NotProvisioned
        } else {
            Outcome::Provisioned
        }
    }

    fn psk_context(self: &Arc<Self>) -> anyhow::Result<SslContext> {
        let weak = Arc::downgrade(self);
        tls::psk_context(*self.pps.expose_bytes(), move |identity| {
            if let Some(dev) = weak.upgrade() {
                let shown = String::from_utf8_lossy(&identity[..identity.len().min(MAX_IDENTITY)]);
                dev.state().psk_identity = Some(shown.into_owned());
            }
        })
    }

    /// The setup-mode context: TLS-PSK, or for a PKI device its own certificate and
    /// the client-chain check.
    fn setup_context(self: &Arc<Self>) -> anyhow::Result<SslContext> {
        if self.spec.pki.is_none() {
            return self.psk_context();
        }
        let (cert, key) = pki::device_certificate(self.version, &self.key_pool.take())?;
        pki::setup_context(Arc::downgrade(self), self.version, &cert, &key)
    }

    fn cert_context(&self) -> anyhow::Result<SslContext> {
        let st = self.state();
        let (cert, key) = st
            .tls_certificate()
            .ok_or_else(|| anyhow::anyhow!("no TLS certificate after commit"))?;
        tls::cert_context(&cert.cert, &key.key)
    }
}

/// A valid PPS different from `pps`.
fn different_pps(pps: &Pps) -> Pps {
    let mut generator = KeyGenerator::default();
    loop {
        let other = generator.pps();
        if &other != pps {
            return other;
        }
    }
}

/// Binds `addr:port` with SO_REUSEADDR (the port is re-bound after the restart).
pub fn bind(addr: Ipv4Addr, port: u16) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::new(IpAddr::V4(addr), port))?;
    socket.listen(1024)
}

/// Runs the device until its task is aborted: setup mode on `listener`, then (after a
/// successful commit and the restart delay) the certificate TLS server on the same
/// port.
pub async fn run(dev: Arc<Device>, listener: TcpListener, config: Arc<SimConfig>) {
    let port = match listener.local_addr() {
        Ok(a) => a.port(),
        Err(e) => return dev.record_error(format!("listener address: {e}")),
    };
    let psk = match dev.setup_context() {
        Ok(ctx) => ctx,
        Err(e) => return dev.record_error(format!("setup-mode TLS: {e}")),
    };
    let psk_server = tokio::spawn(serve(
        listener,
        psk,
        Arc::clone(&dev),
        http::Server::Setup,
        Some(dev.commit_watch()),
    ));
    let hello_sender = config
        .send_hellos
        .then(|| tokio::spawn(hellos(Arc::clone(&dev), Arc::clone(&config))));
    // If this device's task is aborted (simulator shutdown), stop both with it.
    let _guards = (
        AbortOnDrop(psk_server.abort_handle()),
        hello_sender.as_ref().map(|h| AbortOnDrop(h.abort_handle())),
    );
    if dev.commit_watch().wait_for(|c| *c).await.is_err() {
        return;
    }
    // The firmware restarts its network stack: hellos stop (a hello being written is
    // finished, never cut off), the PSK listener closes, in-flight replies are
    // finished, then the certificate server comes up on the same port.
    tokio::time::sleep(config.restart_delay).await;
    psk_server.abort();
    // Wait until the PSK listener is really closed before binding the port again.
    let _ = psk_server.await;
    if let Some(sender) = hello_sender {
        let _ = sender.await;
    }
    // Nothing listens on the port while the network stack restarts.
    tokio::time::sleep(config.commit_restart).await;
    let ctx = match dev.cert_context() {
        Ok(ctx) => ctx,
        Err(e) => return dev.record_error(format!("TLS setup after commit: {e}")),
    };
    match rebind(dev.spec.address, port).await {
        Ok(listener) => serve(listener, ctx, dev, http::Server::Provisioned, None).await,
        Err(e) => dev.record_error(format!(
            "cannot bind {}:{port} after commit: {e}",
            dev.spec.address
        )),
    }
}

/// Binds the port again after the restart, retrying for up to a second: the setup
/// connections' tasks were aborted, but a socket of one may be closed a moment
/// later (a client killed mid-request leaves its connection's task to be dropped).
async fn rebind(addr: Ipv4Addr, port: u16) -> std::io::Result<TcpListener> {
    let mut tries = 0;
    loop {
        match bind(addr, port) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 20 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            bound => return bound,
        }
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits until `stop` turns true; forever without one.
pub async fn stopped(stop: &mut Option<watch::Receiver<bool>>) {
    if let Some(rx) = stop {
        if rx.wait_for(|v| *v).await.is_ok() {
            return;
        }
    }
    std::future::pending().await
}

/// Accepts TLS connections on `listener` until `stop`, then lets open connections
/// finish their current request.
async fn serve(
    listener: TcpListener,
    ctx: SslContext,
    dev: Arc<Device>,
    server: http::Server,
    mut stop: Option<watch::Receiver<bool>>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    conns.spawn(http::serve_connection(
                        tcp,
                        ctx.clone(),
                        Arc::clone(&dev),
                        server,
                        stop.clone(),
                    ));
                }
                // Out of descriptors or similar: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = stopped(&mut stop) => break,
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// Sends hellos with retry counts 0..=14 on the scaled schedule, stopping at commit.
async fn hellos(dev: Arc<Device>, config: Arc<SimConfig>) {
    let mut committed = dev.commit_watch();
    let pid = *dev.spec.pid.as_bytes();
    for retry in 0..=hello::MAX_RETRY {
        if dev.is_committed() {
            return;
        }
        dev.state().first_hello.get_or_insert_with(Instant::now);
        let message = match &dev.spec.pki {
            Some(p) => pki::encode_hello(retry, &dev.spec.uuid, &p.trusted),
            None => hello::encode(retry, &dev.spec.uuid, &pid).to_vec(),
        };
        for server in std::iter::once(config.server).chain(config.also_to.iter().copied()) {
            match hello::send(dev.spec.address, server, &message).await {
                Ok(()) => dev.state().hellos_sent += 1,
                Err(e) => {
                    let mut st = dev.state();
                    st.hellos_failed += 1;
                    st.last_hello_error = Some(e.to_string());
                }
            }
        }
        if retry == hello::MAX_RETRY {
            return;
        }
        let wait = hello::scaled(hello::interval_after(retry), config.time_scale);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = committed.wait_for(|c| *c) => return,
        }
    }
}
