//! AMT device simulator: many simulated Intel AMT devices (6.x–10.x firmware) in setup
//! mode, each on its own loopback address, that do one-touch (PID/PPS, TLS-PSK)
//! provisioning the way PSK-era firmware does (`../shared/docs/amt-protocol.md` §1, §3,
//! §4, §6, §8).
//!
//! PKI devices (hello v3, AMT 11+ remote configuration into Admin Control Mode) are
//! described in [`pki`].
//!
//! amtsim is written by us, so a test that passes against it proves only that two pieces
//! of our code agree. Every device behaviour is therefore taken from a source (named
//! where it is implemented), and the **strictest** documented behaviour is the
//! default; [`Behaviour`] turns single behaviours off for focused tests:
//!
//! | Behaviour (default on) | Off with | Source |
//! |---|---|---|
//! | 401 and 400 replies carry `Connection: close` and end the connection; nonces are device-wide | [`Behaviour::close_after_error`] | RPS fixtures of AMT 15.0.23 replies; MeshCentral `amt-wsman-comm.js` ("after this, the socket will close and we will auto-retry") |
//! | A successful `SetAdminAclEntryEx` invalidates every issued nonce | [`Behaviour::acl_change_resets_nonces`] | Intel AMT reference guide, "Authentication Options" (digest cache reset on ACL change) |
//! | Digest without `qop=auth` (RFC 2069) is refused | [`Behaviour::require_qop_auth`] | firmware challenges carry `qop="auth"` (RPS fixtures) |
//! | `CommitChanges` answers 2057 while `HostName` is empty (factory default) | [`Behaviour::commit_requires_host_name`] | go-wsman-messages `setupandconfiguration`: "If DHCP is enabled, host-name must be set" |
//! | `GenerateKeyPair` exists from AMT 6.2 (ActionNotSupported before); `AddKey` always | choose [`DeviceSpec::amt_version`] | Intel reference guide (GenerateKeyPair from 6.2/7.0); go-wsman-messages `publickey` `AddKey` |
//! | `CIM_SoftwareIdentity` has the `AMT` instance; every reply a `Server:` header with the version | [`Behaviour::report_amt_identity`] | go-wsman-messages fixtures; MeshCentral `amt-wsman-comm.js` reads the header |
//! | Replies chunked, the body split over several chunks | [`Behaviour::reply_chunk_size`] = 0 | RPS fixtures (AMT 15.0.23 `Transfer-Encoding: chunked`, several chunks per envelope) |
//! | TLS version intolerance below AMT 7.0 (ClientHello above TLS 1.0 → fatal alert, `protocol_version` or [`TlsAlert::BadRecordMac`]) | [`Behaviour::tls_version_intolerant`] | MeshCentral `amt-wsman-comm.js` retries with `TLSv1_method` after "sslv3 alert bad record mac" |
//! | Create of `AMT_TLSCredentialContext` accepts only `TLSProtocolEndpointInstances Collection` | [`Behaviour::accept_spaced_collection_name`] | MeshCentral / go-wsman-messages send it; devices report the spaced name (§8) |
//! | A device counts as provisioned only after an authenticated request over its certificate TLS server | [`SimConfig::require_confirmation`] | project issue: vprov confirms over verified TLS after commit |
//!
//! This module owns the public API (device specifications, behaviours, faults, run
//! configuration, loopback address plan, GUID text form) and ties the parts together:
//!
//! * [`hello`]: the 32-byte v2 PSK hello and its retry schedule;
//! * [`tls`]: the device's TLS servers (TLS-PSK in setup mode, RSA certificate after
//!   `CommitChanges`) and the version-intolerance check in front of them;
//! * [`http`] and [`digest`]: HTTP/1.1 with Digest authentication inside the tunnel;
//! * [`wsman`]: the WS-Management resources and methods a provisioning server calls;
//! * [`device`]: one device's state, lifecycle and outcome report;
//! * [`keypool`]: the RSA key pairs `GenerateKeyPair` hands out;
//! * [`simulator`]: running and observing a set of devices.
//!
//! Usage (inside a tokio runtime):
//!
//! ```no_run
//! # async fn demo(specs: Vec<vprov_tests::sim::DeviceSpec>) -> anyhow::Result<()> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use vprov_tests::sim::{KeyPool, SimConfig, Simulator};
//!
//! let pool = Arc::new(KeyPool::generate(4)?);
//! let config = SimConfig::new("127.0.0.1:9971".parse()?, pool);
//! let sim = Simulator::start(config, specs).await?;
//! // Waits until every device committed and a client confirmed it over its
//! // certificate TLS server (or the timeout).
//! let reports = sim.wait_all(Duration::from_secs(60)).await;
//! sim.shutdown();
//! # let _ = reports; Ok(()) }
//! ```
//!
//! Secrets: PPS and passwords never appear in errors, `Debug` output or reports.

pub mod device;
pub mod digest;
pub mod hello;
pub mod http;
pub mod keypool;
pub mod pki;
pub mod simulator;
pub mod tls;
pub mod wsman;

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use vprov_core::keys::{Pid, Pps};

pub use device::{DeviceReport, Outcome};
pub use keypool::KeyPool;
pub use simulator::Simulator;

/// AMT version reported by default (`CIM_SoftwareIdentity` instance `AMT`).
pub const DEFAULT_AMT_VERSION: &str = "8.1.40";
/// Default delay between a successful `CommitChanges` and the TLS (certificate) server.
pub const DEFAULT_RESTART_DELAY: Duration = Duration::from_millis(200);
/// Default offset of a device's clock from the host's, in seconds (deliberately wrong,
/// so that a server has to synchronise it).
pub const DEFAULT_CLOCK_OFFSET_S: i64 = -5400;
/// The AMT TLS port (IRG: 16993).
pub const DEFAULT_DEVICE_PORT: u16 = 16993;

/// A fault a device shows on demand.
#[derive(Clone, PartialEq, Eq)]
pub enum Fault {
    /// The device holds a different (valid) PPS than the server's: TLS-PSK fails.
    WrongPps,
    /// The MEBx password differs from the one the server uses: Digest answers 401.
    WrongPassword,
    /// `GetUuid` returns a UUID different from the one in the hellos.
    UuidMismatch,
    /// The named method (e.g. `CommitChanges`) returns this ReturnValue without acting.
    Error { method: String, code: u32 },
    /// The named method or operation is never answered.
    Hang { method: String },
    /// The first call of the named method or operation is never answered; later calls
    /// are (for crash-and-restart tests: the server dies while waiting).
    HangOnce { method: String },
    /// The connection is closed when the named method or operation arrives.
    Drop { method: String },
    /// The named method or operation is answered with HTTP 200 and non-XML bytes.
    Garbage { method: String },
    /// Hostile: the named method or operation is answered with a SOAP envelope whose
    /// body nests 5,000 elements deep (35 KB; a recursive parser overflows its stack).
    DeepXml { method: String },
    /// Hostile: every Pull returns a page of 2,000 elements and a context for the
    /// next one, never `EndOfSequence` (a client that keeps every page runs out of
    /// memory).
    EndlessPull,
}

impl Fault {
    /// Text form accepted by [`Fault::from_str`].
    pub fn describe(&self) -> String {
        match self {
            Fault::WrongPps => "wrong-pps".into(),
            Fault::WrongPassword => "wrong-password".into(),
            Fault::UuidMismatch => "uuid-mismatch".into(),
            Fault::Error { method, code } => format!("error:{method}:{code}"),
            Fault::Hang { method } => format!("hang:{method}"),
            Fault::HangOnce { method } => format!("hang-once:{method}"),
            Fault::Drop { method } => format!("drop:{method}"),
            Fault::Garbage { method } => format!("garbage:{method}"),
            Fault::DeepXml { method } => format!("deep-xml:{method}"),
            Fault::EndlessPull => "endless-pull".into(),
        }
    }
}

impl fmt::Debug for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fault({})", self.describe())
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

fn method_name(text: &str) -> anyhow::Result<String> {
    let ok = !text.is_empty()
        && text.len() <= 64
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    anyhow::ensure!(
        ok,
        "fault method must be a WS-Man method name like CommitChanges"
    );
    Ok(text.to_string())
}

impl FromStr for Fault {
    type Err = anyhow::Error;

    /// `wrong-pps`, `wrong-password`, `uuid-mismatch`, `error:<Method>:<code>`,
    /// `hang:<Method>`, `drop:<Method>`, `garbage:<Method>`, and the hostile
    /// `deep-xml:<Method>` and `endless-pull`. `<Method>` is a method
    /// name (`CommitChanges`); for `hang`, `drop` and `garbage` it may also be an
    /// operation (`Get`, `Put`, `Create`, `Enumerate`, `Pull`, `Release`).
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let mut parts = s.splitn(3, ':');
        let kind = parts.next().unwrap_or_default();
        let method = parts.next();
        let rest = parts.next();
        Ok(match (kind, method, rest) {
            ("wrong-pps", None, None) => Fault::WrongPps,
            ("wrong-password", None, None) => Fault::WrongPassword,
            ("uuid-mismatch", None, None) => Fault::UuidMismatch,
            ("error", Some(m), Some(code)) => Fault::Error {
                method: method_name(m)?,
                code: code
                    .parse()
                    .map_err(|_| anyhow::anyhow!("error fault code must be a number"))?,
            },
            ("hang", Some(m), None) => Fault::Hang {
                method: method_name(m)?,
            },
            ("hang-once", Some(m), None) => Fault::HangOnce {
                method: method_name(m)?,
            },
            ("drop", Some(m), None) => Fault::Drop {
                method: method_name(m)?,
            },
            ("garbage", Some(m), None) => Fault::Garbage {
                method: method_name(m)?,
            },
            ("deep-xml", Some(m), None) => Fault::DeepXml {
                method: method_name(m)?,
            },
            ("endless-pull", None, None) => Fault::EndlessPull,
            _ => anyhow::bail!(
                "unknown fault {s:?}: expected wrong-pps, wrong-password, uuid-mismatch, \
                 error:<Method>:<code>, hang:<Method>, hang-once:<Method>, drop:<Method>, \
                 garbage:<Method>, deep-xml:<Method> or endless-pull"
            ),
        })
    }
}

/// Firmware generation, parsed from [`DeviceSpec::amt_version`] (`major.minor.patch`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AmtVersion {
    pub major: u32,
    pub minor: u32,
}

impl AmtVersion {
    /// Parses `X.Y` or `X.Y.Z[.B]` (the form of the `Server:` header and of
    /// `CIM_SoftwareIdentity`).
    pub fn parse(text: &str) -> Option<AmtVersion> {
        let mut parts = text.split('.');
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next()?.parse().ok()?;
        if parts.any(|p| p.parse::<u32>().is_err()) {
            return None;
        }
        Some(AmtVersion { major, minor })
    }

    /// `AMT_PublicKeyManagementService.GenerateKeyPair` exists (the reference guide lists
    /// it from AMT 6.2/7.0; older firmware only takes keys through `AddKey`).
    pub fn has_generate_key_pair(self) -> bool {
        self >= AmtVersion { major: 6, minor: 2 }
    }

    /// Firmware of this generation rejects a ClientHello above TLS 1.0 (MeshCentral keeps
    /// a TLS 1.0-only retry for it); assumed for everything before AMT 7.0.
    pub fn is_tls_version_intolerant(self) -> bool {
        self < AmtVersion { major: 7, minor: 0 }
    }
}

/// Firmware behaviours a device shows. [`Behaviour::default`] is the strictest
/// documented behaviour; each field turns one off for a focused test (module docs list
/// the sources).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Behaviour {
    /// Answers 401 and 400 with `Connection: close` and closes the connection after the
    /// reply (RPS fixtures of AMT 11.8/15.0 replies; MeshCentral `amt-wsman-comm.js`
    /// reconnects after every 401). Nonces stay valid across connections either way.
    pub close_after_error: bool,
    /// A successful `SetAdminAclEntryEx` invalidates every issued nonce (reference
    /// guide, "Authentication Options": the digest cache is reset on any ACL change).
    pub acl_change_resets_nonces: bool,
    /// Refuses Digest responses without `qop=auth` (RFC 2069 form) with 401.
    pub require_qop_auth: bool,
    /// `CommitChanges` answers 2057 (DATA_MISSING) while `AMT_GeneralSettings.HostName`
    /// is empty (go-wsman-messages `setupandconfiguration`, quoting Intel: "If DHCP is
    /// enabled, host-name must be set").
    pub commit_requires_host_name: bool,
    /// `CIM_SoftwareIdentity` includes the `AMT` instance (false: clients must read the
    /// version from the `Server:` header, as MeshCentral does).
    pub report_amt_identity: bool,
    /// Body bytes per HTTP chunk of a SOAP reply; 0 sends the body as one chunk. Replies
    /// are always `Transfer-Encoding: chunked` (RPS fixtures of AMT 15.0.23 replies).
    pub reply_chunk_size: usize,
    /// Aborts TLS handshakes (PSK and certificate) whose ClientHello `client_version` is
    /// above TLS 1.0 with a fatal `protocol_version` alert. `None`: by firmware
    /// generation ([`AmtVersion::is_tls_version_intolerant`]).
    pub tls_version_intolerant: Option<bool>,
    /// The fatal alert an intolerant device answers a newer ClientHello with.
    pub tls_intolerance_alert: TlsAlert,
    /// Create of `AMT_TLSCredentialContext` also accepts the collection name the device
    /// reports (`TLSProtocolEndpoint Instances Collection`, with a space); by default
    /// only the clients' form without the space is accepted (§8).
    pub accept_spaced_collection_name: bool,
}

/// The fatal TLS alert a version-intolerant device sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsAlert {
    /// `protocol_version` (70): the standard answer to an unsupported version.
    ProtocolVersion,
    /// `bad_record_mac` (20): what MeshCentral's `amt-wsman-comm.js` watches for
    /// ("sslv3 alert bad record mac") before retrying with a TLS 1.0-only hello.
    BadRecordMac,
}

impl TlsAlert {
    /// The alert's description byte.
    pub fn description(self) -> u8 {
        match self {
            TlsAlert::ProtocolVersion => 70,
            TlsAlert::BadRecordMac => 20,
        }
    }
}

/// Default body bytes per reply chunk (AMT 15.0.23 replies captured in RPS's tests come
/// in chunks of a few hundred bytes).
pub const DEFAULT_REPLY_CHUNK_SIZE: usize = 512;

impl Default for Behaviour {
    fn default() -> Behaviour {
        Behaviour {
            close_after_error: true,
            acl_change_resets_nonces: true,
            require_qop_auth: true,
            commit_requires_host_name: true,
            report_amt_identity: true,
            reply_chunk_size: DEFAULT_REPLY_CHUNK_SIZE,
            tls_version_intolerant: None,
            tls_intolerance_alert: TlsAlert::ProtocolVersion,
            accept_spaced_collection_name: false,
        }
    }
}

/// One simulated device.
#[derive(Clone)]
pub struct DeviceSpec {
    /// Raw 16 UUID bytes as sent in hellos (shown as a GUID by [`guid_text`]).
    pub uuid: [u8; 16],
    pub pid: Pid,
    /// The PPS the technician entered (the device's copy; [`Fault::WrongPps`] replaces it).
    pub pps: Pps,
    /// The MEBx password the technician set ([`Fault::WrongPassword`] replaces it).
    pub mebx_password: String,
    /// Firmware version `X.Y.Z`; selects the generation's behaviour ([`AmtVersion`]).
    pub amt_version: String,
    /// `AMT_GeneralSettings.HostName`: empty on a factory device.
    pub host_name: String,
    pub domain_name: String,
    /// The device's own loopback address (`127.x.y.z`).
    pub address: Ipv4Addr,
    pub fault: Option<Fault>,
    pub behaviour: Behaviour,
    /// A PKI (hello v3) device: AMT 11+ waiting for remote configuration with a
    /// provisioning certificate ([`pki`]); `pid` and `pps` are then unused.
    pub pki: Option<pki::PkiSetup>,
}

impl DeviceSpec {
    /// A factory device: random UUID, the default AMT version, no host or domain name,
    /// strict behaviour.
    pub fn new(pid: Pid, pps: Pps, mebx_password: &str, address: Ipv4Addr) -> DeviceSpec {
        DeviceSpec {
            uuid: rand::random(),
            pid,
            pps,
            mebx_password: mebx_password.to_string(),
            amt_version: DEFAULT_AMT_VERSION.to_string(),
            host_name: String::new(),
            domain_name: String::new(),
            address,
            fault: None,
            behaviour: Behaviour::default(),
            pki: None,
        }
    }

    /// A factory PKI device (hello v3) of firmware `amt_version`: trusted hashes, PKI
    /// DNS suffix, MEBx password still the factory `admin`.
    pub fn new_pki(pki: pki::PkiSetup, amt_version: &str, address: Ipv4Addr) -> DeviceSpec {
        let mut generator = vprov_core::keys::KeyGenerator::default();
        let (pid, pps) = (generator.pid(), generator.pps());
        DeviceSpec {
            amt_version: amt_version.to_string(),
            pki: Some(pki),
            ..DeviceSpec::new(pid, pps, pki::FACTORY_PASSWORD, address)
        }
    }

    /// A host name derived from the address (`sim-x-y-z`), for runs that want devices
    /// whose technician already set one in MEBx.
    pub fn address_host_name(&self) -> String {
        let o = self.address.octets();
        format!("sim-{}-{}-{}", o[1], o[2], o[3])
    }

    /// The parsed firmware version (checked by [`Simulator::start`]).
    pub fn version(&self) -> anyhow::Result<AmtVersion> {
        AmtVersion::parse(&self.amt_version).ok_or_else(|| {
            anyhow::anyhow!(
                "AMT version {:?} is not of the form X.Y.Z",
                self.amt_version
            )
        })
    }
}

impl fmt::Debug for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceSpec")
            .field("uuid", &guid_text(&self.uuid))
            .field("pid", &self.pid)
            .field("address", &self.address)
            .field("amt_version", &self.amt_version)
            .field("fault", &self.fault)
            .field("behaviour", &self.behaviour)
            .finish_non_exhaustive()
    }
}

/// Settings shared by all devices of a run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Where hellos go (the provisioning server's hello listener).
    pub server: SocketAddr,
    /// Further hello listeners every hello also goes to (several vprov nodes behind
    /// one load balancer: a device's hellos may reach any of them).
    pub also_to: Vec<SocketAddr>,
    /// TLS port every device listens on, on its own address. 0 = pick a free port on
    /// the first device's address and use it for all (see [`Simulator::device_port`]).
    pub device_port: u16,
    /// Multiplies the hello schedule (1.0 = real minutes/hours; 0.001 in tests).
    pub time_scale: f64,
    /// Delay between a successful `CommitChanges` and the certificate TLS server.
    pub restart_delay: Duration,
    /// How long, after `restart_delay`, the device's TLS port is closed (connections
    /// refused) while the firmware restarts its network stack; then the certificate
    /// TLS server comes up (`docs/protocol-notes.md`, "Commit restart").
    pub commit_restart: Duration,
    /// Each WS-Management reply is delayed by this long (real firmware answers in
    /// hundreds of milliseconds); other devices are not held up.
    pub call_latency: Duration,
    /// RSA key pairs for `GenerateKeyPair`.
    pub key_pool: Arc<KeyPool>,
    /// Initial offset of every device clock from the host clock, in seconds.
    pub clock_offset_s: i64,
    /// Send hellos at all (false: the device only listens, for tests that connect
    /// directly).
    pub send_hellos: bool,
    /// A committed device counts as provisioned only once a client made an authenticated
    /// request over its certificate TLS server (what vprov's confirm step does); false:
    /// the commit alone counts.
    pub require_confirmation: bool,
}

impl SimConfig {
    /// Defaults: port 16993, real-time schedule, 200 ms restart, clock 90 min behind,
    /// confirmation required.
    pub fn new(server: SocketAddr, key_pool: Arc<KeyPool>) -> SimConfig {
        SimConfig {
            server,
            also_to: Vec::new(),
            device_port: DEFAULT_DEVICE_PORT,
            time_scale: 1.0,
            restart_delay: DEFAULT_RESTART_DELAY,
            commit_restart: Duration::ZERO,
            call_latency: Duration::ZERO,
            key_pool,
            clock_offset_s: DEFAULT_CLOCK_OFFSET_S,
            send_hellos: true,
            require_confirmation: true,
        }
    }
}

/// Raises this process's descriptor limit to its hard limit: each simulated device
/// needs a listener, and a connection per job talking to it.
pub fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// A device port for a test or load run: free on 127.0.0.1 and below Linux's
/// ephemeral range (32768+), so that no outgoing connection of a simulated device (a
/// hello from the same 127.x.y.z address) can already hold it.
pub fn free_device_port() -> u16 {
    loop {
        let port = rand::random::<u16>() % 12_000 + 20_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The `index`-th device address counting from `base`, skipping host octets 0 and
/// 255. `None` if it would leave 127.0.0.0/8 (or `base` is not in it).
pub fn address_for(index: u32, base: Ipv4Addr) -> Option<Ipv4Addr> {
    let b = u32::from(base);
    if base.octets()[0] != 127 {
        return None;
    }
    // Position of base among valid addresses: 254 per /24, host octets 1..=254.
    let prefix = b >> 8;
    let host = b & 0xff;
    let start = match host {
        0 => u64::from(prefix) * 254,
        255 => (u64::from(prefix) + 1) * 254,
        h => u64::from(prefix) * 254 + u64::from(h - 1),
    };
    let target = start + u64::from(index);
    let addr = u32::try_from(((target / 254) << 8) | (target % 254 + 1)).ok()?;
    let addr = Ipv4Addr::from(addr);
    (addr.octets()[0] == 127).then_some(addr)
}

/// GUID text of raw UUID bytes: first three groups byte-reversed (§1.6), as vprov
/// shows them.
pub fn guid_text(raw: &[u8; 16]) -> String {
    vprov_core::hello::DeviceUuid(*raw).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_matches_the_documented_vectors() {
        let raw = [
            0x4b, 0x52, 0x9b, 0x93, 0xd4, 0x13, 0x18, 0x1d, 0xe4, 0x87, 0x1c, 0x69, 0x7a, 0x6b,
            0x7a, 0x2b,
        ];
        assert_eq!(guid_text(&raw), "939b524b-13d4-1d18-e487-1c697a6b7a2b");
    }

    #[test]
    fn addresses_skip_network_and_broadcast_octets() {
        let base: Ipv4Addr = "127.10.0.1".parse().unwrap();
        assert_eq!(address_for(0, base), Some("127.10.0.1".parse().unwrap()));
        assert_eq!(
            address_for(253, base),
            Some("127.10.0.254".parse().unwrap())
        );
        assert_eq!(address_for(254, base), Some("127.10.1.1".parse().unwrap()));
        assert_eq!(
            address_for(0, "127.10.0.255".parse().unwrap()),
            Some("127.10.1.1".parse().unwrap())
        );
        assert_eq!(address_for(0, "10.0.0.1".parse().unwrap()), None);
        assert_eq!(address_for(10, "127.255.255.250".parse().unwrap()), None);
    }

    #[test]
    fn versions_select_the_firmware_generation() {
        let v = |t| AmtVersion::parse(t).unwrap();
        assert!(!v("6.0.30").has_generate_key_pair());
        assert!(!v("6.1.0").has_generate_key_pair());
        assert!(v("6.2.10").has_generate_key_pair());
        assert!(v("10.0.55.3000").has_generate_key_pair());
        assert!(v("6.2.10").is_tls_version_intolerant());
        assert!(!v("7.0.0").is_tls_version_intolerant());
        assert!(!v("8.1.40").is_tls_version_intolerant());
        for bad in ["", "8", "8.x", "8.1.y", "a.b.c"] {
            assert!(AmtVersion::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn faults_parse_and_print() {
        for text in [
            "wrong-pps",
            "wrong-password",
            "uuid-mismatch",
            "error:CommitChanges:1",
            "hang:GetUuid",
            "hang-once:CommitChanges",
            "drop:Pull",
            "garbage:Enumerate",
            "deep-xml:GetUuid",
            "endless-pull",
        ] {
            assert_eq!(text.parse::<Fault>().unwrap().describe(), text);
        }
        for bad in [
            "",
            "error:CommitChanges",
            "hang:",
            "drop:a/b",
            "error:X:y",
            "nope",
        ] {
            assert!(bad.parse::<Fault>().is_err(), "{bad}");
        }
    }
}
