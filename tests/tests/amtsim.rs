//! Self-tests of the AMT device simulator over real loopback sockets, with an
//! independent client: OpenSSL TLS-PSK (TLS 1.0, PSK-AES128-CBC-SHA, SECLEVEL 0),
//! hyper's HTTP/1 client and a hand-written Digest implementation. Each test uses
//! its own 127.x address range so tests can run in parallel.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use md5::{Digest as _, Md5};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::ssl::{Ssl, SslConnector, SslContext, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::{X509Name, X509};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_openssl::SslStream;
use vprov_core::keys::{KeyGenerator, Pid, Pps};
use vprov_tests::sim::{DeviceSpec, Fault, KeyPool, Outcome, SimConfig, Simulator};

const PASSWORD: &str = "P@ssw0rd-Mebx1";
const AMT: &str = "http://intel.com/wbem/wscim/1/amt-schema/1/";
const ENUM: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/";
const XFER: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/";

fn pool() -> Arc<KeyPool> {
    static POOL: OnceLock<Arc<KeyPool>> = OnceLock::new();
    Arc::clone(POOL.get_or_init(|| Arc::new(KeyPool::generate(2).expect("RSA keys"))))
}

fn keys() -> (Pid, Pps) {
    let pair = KeyGenerator::default().pair();
    (pair.pid, pair.pps)
}

fn spec(address: &str) -> DeviceSpec {
    let (pid, pps) = keys();
    DeviceSpec::new(pid, pps, PASSWORD, address.parse().unwrap())
}

/// A config whose hellos go nowhere (nothing listens on port 9 of 127.0.0.1).
fn quiet_config() -> SimConfig {
    let mut c = SimConfig::new("127.0.0.1:9".parse().unwrap(), pool());
    c.device_port = 0;
    c.send_hellos = false;
    c.restart_delay = Duration::from_millis(50);
    c
}

fn device_addr(sim: &Simulator, spec: &DeviceSpec) -> SocketAddr {
    SocketAddr::new(spec.address.into(), sim.device_port())
}

// ------------------------------------------------------------------ TLS clients

async fn psk_connect(
    addr: SocketAddr,
    pid: &str,
    pps: &[u8],
) -> anyhow::Result<SslStream<TcpStream>> {
    let mut b = SslContext::builder(SslMethod::tls_client())?;
    b.set_security_level(0);
    b.set_min_proto_version(Some(SslVersion::TLS1))?;
    b.set_max_proto_version(Some(SslVersion::TLS1))?;
    b.set_cipher_list("PSK-AES128-CBC-SHA")?;
    let identity = pid.as_bytes().to_vec();
    let key = pps.to_vec();
    b.set_psk_client_callback(move |_ssl, _hint, id_out, psk_out| {
        id_out[..identity.len()].copy_from_slice(&identity);
        id_out[identity.len()] = 0;
        psk_out[..key.len()].copy_from_slice(&key);
        Ok(key.len())
    });
    let ssl = Ssl::new(&b.build())?;
    let mut stream = SslStream::new(ssl, TcpStream::connect(addr).await?)?;
    std::pin::Pin::new(&mut stream).connect().await?;
    Ok(stream)
}

async fn cert_connect(addr: SocketAddr, ca: &X509) -> anyhow::Result<SslStream<TcpStream>> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    b.set_security_level(0);
    b.set_min_proto_version(Some(SslVersion::TLS1))?;
    b.set_max_proto_version(Some(SslVersion::TLS1))?;
    b.set_cipher_list("AES128-SHA:AES256-SHA")?;
    b.cert_store_mut().add_cert(ca.clone())?;
    b.set_verify(SslVerifyMode::PEER);
    let ssl = b
        .build()
        .configure()?
        .verify_hostname(false)
        .into_ssl("device")?;
    let mut stream = SslStream::new(ssl, TcpStream::connect(addr).await?)?;
    std::pin::Pin::new(&mut stream).connect().await?;
    Ok(stream)
}

// ------------------------------------------------------------------ HTTP + Digest

fn md5_hex(text: &str) -> String {
    Md5::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `name="value"` out of a WWW-Authenticate header.
fn param(header: &str, name: &str) -> String {
    let start = header.find(&format!("{name}=\"")).expect(name) + name.len() + 2;
    let len = header[start..].find('"').unwrap();
    header[start..start + len].to_string()
}

struct Reply {
    status: StatusCode,
    chunked: bool,
    content_type: String,
    body: String,
}

struct Client {
    sender: SendRequest<Full<Bytes>>,
    user: String,
    password: String,
    challenge: Option<(String, String)>,
    nc: u32,
    next_id: u32,
    unauthorized_seen: u32,
}

/// A Digest client (MEBx password) inside a TLS-PSK connection to `spec`'s device.
async fn client_for(sim: &Simulator, spec: &DeviceSpec) -> Client {
    let stream = psk_connect(
        device_addr(sim, spec),
        spec.pid.as_str(),
        spec.pps.expose_bytes(),
    )
    .await
    .unwrap();
    Client::new(stream, PASSWORD).await
}

impl Client {
    async fn new(stream: SslStream<TcpStream>, password: &str) -> Client {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client {
            sender,
            user: "admin".into(),
            password: password.into(),
            challenge: None,
            nc: 0,
            next_id: 0,
            unauthorized_seen: 0,
        }
    }

    async fn send_raw(&mut self, body: &str) -> anyhow::Result<Reply> {
        let mut req =
            Request::post("/wsman").header("content-type", "application/soap+xml;charset=UTF-8");
        if let Some((realm, nonce)) = &self.challenge {
            self.nc += 1;
            let nc = format!("{:08x}", self.nc);
            let cnonce = format!("{:016x}", rand::random::<u64>());
            let ha1 = md5_hex(&format!("{}:{realm}:{}", self.user, self.password));
            let ha2 = md5_hex("POST:/wsman");
            let response = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
            req = req.header(
                "authorization",
                format!(
                    "Digest username=\"{}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"/wsman\", \
                     qop=auth, nc={nc}, cnonce=\"{cnonce}\", response=\"{response}\"",
                    self.user
                ),
            );
        }
        self.sender.ready().await?;
        let resp = self
            .sender
            .send_request(req.body(Full::new(Bytes::from(body.to_string())))?)
            .await?;
        let status = resp.status();
        let chunked = resp
            .headers()
            .get("transfer-encoding")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap_or_default().to_string())
            .unwrap_or_default();
        if status == StatusCode::UNAUTHORIZED {
            self.unauthorized_seen += 1;
            let h = resp.headers()["www-authenticate"].to_str()?.to_string();
            assert!(h.starts_with("Digest "), "{h}");
            assert_eq!(param(&h, "qop"), "auth");
            self.challenge = Some((param(&h, "realm"), param(&h, "nonce")));
            self.nc = 0;
        }
        let body =
            String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes()).into_owned();
        Ok(Reply {
            status,
            chunked,
            content_type,
            body,
        })
    }

    /// Sends, answering one Digest challenge.
    async fn send(&mut self, body: &str) -> Reply {
        let first = self.send_raw(body).await.unwrap();
        if first.status == StatusCode::UNAUTHORIZED {
            return self.send_raw(body).await.unwrap();
        }
        first
    }

    fn message(
        &mut self,
        action: &str,
        class: &str,
        selectors: &[(&str, &str)],
        body: &str,
    ) -> (String, String) {
        self.next_id += 1;
        let id = format!("{}", self.next_id);
        let sel: String = selectors
            .iter()
            .map(|(n, v)| format!(r#"<w:Selector Name="{n}">{v}</w:Selector>"#))
            .collect();
        let sel = if sel.is_empty() {
            String::new()
        } else {
            format!("<w:SelectorSet>{sel}</w:SelectorSet>")
        };
        // Deliberately unusual prefixes: the device must parse by namespace.
        let xml = format!(
            r#"<?xml version="1.0" encoding="utf-8"?><S:Envelope xmlns:S="http://www.w3.org/2003/05/soap-envelope" xmlns:A="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><S:Header><A:Action>{action}</A:Action><A:To>/wsman</A:To><w:ResourceURI>{AMT}{class}</w:ResourceURI><A:MessageID>{id}</A:MessageID><A:ReplyTo><A:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</A:Address></A:ReplyTo><w:OperationTimeout>PT60S</w:OperationTimeout>{sel}</S:Header><S:Body>{body}</S:Body></S:Envelope>"#
        );
        (id, xml)
    }

    /// Calls `class.method(params)`; returns the reply body after checking RelatesTo.
    async fn call(&mut self, class: &str, method: &str, params: &[(&str, &str)]) -> String {
        let p: String = params
            .iter()
            .map(|(n, v)| format!("<h:{n}>{v}</h:{n}>"))
            .collect();
        let body = format!(r#"<h:{method}_INPUT xmlns:h="{AMT}{class}">{p}</h:{method}_INPUT>"#);
        let (id, xml) = self.message(&format!("{AMT}{class}/{method}"), class, &[], &body);
        let reply = self.send(&xml).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(text(&reply.body, "RelatesTo").as_deref(), Some(id.as_str()));
        assert_eq!(
            text(&reply.body, "Action"),
            Some(format!("{AMT}{class}/{method}Response"))
        );
        reply.body
    }

    /// Enumerate + Pull of `class`; returns the Pull reply.
    async fn enumerate(&mut self, class: &str) -> Reply {
        let body = r#"<E:Enumerate xmlns:E="http://schemas.xmlsoap.org/ws/2004/09/enumeration"/>"#;
        let (_, xml) = self.message(&format!("{ENUM}Enumerate"), class, &[], body);
        let reply = self.send(&xml).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        let context = text(&reply.body, "EnumerationContext").expect("context");
        let body = format!(
            r#"<E:Pull xmlns:E="http://schemas.xmlsoap.org/ws/2004/09/enumeration"><E:EnumerationContext>{context}</E:EnumerationContext><E:MaxElements>999</E:MaxElements></E:Pull>"#
        );
        let (_, xml) = self.message(&format!("{ENUM}Pull"), class, &[], &body);
        let reply = self.send(&xml).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert!(has(&reply.body, "EndOfSequence"), "{}", reply.body);
        reply
    }
}

fn has(xml: &str, local: &str) -> bool {
    let doc = roxmltree::Document::parse(xml).unwrap();
    doc.descendants().any(|n| n.tag_name().name() == local)
}

/// Text of the first element with this local name.
fn text(xml: &str, local: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).unwrap();
    doc.descendants()
        .find(|n| n.is_element() && n.tag_name().name() == local)
        .map(|n| n.text().unwrap_or_default().to_string())
}

fn all_texts(xml: &str, local: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(xml).unwrap();
    doc.descendants()
        .filter(|n| n.is_element() && n.tag_name().name() == local)
        .map(|n| n.text().unwrap_or_default().to_string())
        .collect()
}

fn return_value(xml: &str) -> u32 {
    text(xml, "ReturnValue")
        .expect("ReturnValue")
        .parse()
        .unwrap()
}

/// `SetAdminAclEntryEx` DigestPassword: base64 of raw MD5("admin:realm:password").
fn digest_password(realm: &str, password: &str) -> String {
    B64.encode(Md5::digest(format!("admin:{realm}:{password}").as_bytes()))
}

// ------------------------------------------------------------------ tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_is_32_bytes_from_the_device_address() {
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = quiet_config();
    config.server = server.local_addr().unwrap();
    config.send_hellos = true;
    config.time_scale = 0.001;
    let spec = spec("127.31.0.1");
    let sim = Simulator::start(config, vec![spec.clone()]).await.unwrap();
    for retry in 0u32..2 {
        let (mut conn, peer) = tokio::time::timeout(Duration::from_secs(5), server.accept())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(peer.ip(), Ipv4Addr::new(127, 31, 0, 1));
        let mut hello = Vec::new();
        conn.read_to_end(&mut hello).await.unwrap();
        assert_eq!(hello.len(), 32);
        assert_eq!(&hello[0..4], &[1, 0, 2, 0]);
        assert_eq!(u32::from_le_bytes(hello[4..8].try_into().unwrap()), retry);
        assert_eq!(&hello[8..24], &spec.uuid);
        assert_eq!(&hello[24..32], spec.pid.as_str().as_bytes());
    }
    let report = &sim.reports()[0];
    assert!(report.hellos_sent >= 2);
    assert_eq!(report.outcome, Outcome::NotProvisioned);
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psk_digest_enumerate_and_get_uuid() {
    let spec = spec("127.32.0.1");
    let sim = Simulator::start(quiet_config(), vec![spec.clone()])
        .await
        .unwrap();
    let stream = psk_connect(
        device_addr(&sim, &spec),
        spec.pid.as_str(),
        spec.pps.expose_bytes(),
    )
    .await
    .unwrap();
    let mut c = Client::new(stream, PASSWORD).await;

    let pull = c.enumerate("AMT_GeneralSettings").await;
    assert_eq!(c.unauthorized_seen, 1, "first request must be challenged");
    assert!(pull.chunked, "replies are chunked");
    assert_eq!(pull.content_type, "application/soap+xml;charset=UTF-8");
    let realm = text(&pull.body, "DigestRealm").unwrap();
    assert_eq!(
        Some(realm.clone()),
        c.challenge.as_ref().map(|(r, _)| r.clone())
    );
    assert!(realm.starts_with("Digest:") && realm.len() == 39, "{realm}");
    assert_eq!(
        text(&pull.body, "HostName").as_deref(),
        Some(spec.host_name.as_str())
    );

    let reply = c
        .call("AMT_SetupAndConfigurationService", "GetUuid", &[])
        .await;
    assert_eq!(return_value(&reply), 0);
    assert_eq!(
        B64.decode(text(&reply, "UUID").unwrap()).unwrap(),
        spec.uuid
    );

    let versions = c.enumerate("CIM_SoftwareIdentity").await;
    assert!(all_texts(&versions.body, "VersionString").contains(&"8.1.40".to_string()));

    let tls = c.enumerate("AMT_TLSSettingData").await;
    let ids = all_texts(&tls.body, "InstanceID");
    assert!(
        ids.contains(&"Intel(r) AMT 802.3 TLS Settings".to_string()),
        "{ids:?}"
    );
    assert!(
        ids.contains(&"Intel(r) AMT LMS TLS Settings".to_string()),
        "{ids:?}"
    );

    // Faults: unknown action, bad selector.
    let (_, xml) = c.message(
        &format!("{AMT}AMT_SetupAndConfigurationService/Frobnicate"),
        "AMT_SetupAndConfigurationService",
        &[],
        "",
    );
    let reply = c.send(&xml).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(text(&reply.body, "Value").is_some());
    assert!(all_texts(&reply.body, "Value")
        .iter()
        .any(|v| v.ends_with(":ActionNotSupported")));
    let (_, xml) = c.message(
        &format!("{XFER}Get"),
        "AMT_TLSSettingData",
        &[("InstanceID", "nope")],
        "",
    );
    let reply = c.send(&xml).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(all_texts(&reply.body, "Value")
        .iter()
        .any(|v| v.ends_with(":InvalidSelectors")));
    // Not XML at all: a fault, not a crash; the connection stays usable.
    let reply = c.send("\u{0}<<<").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        return_value(
            &c.call("AMT_SetupAndConfigurationService", "GetUuid", &[])
                .await
        ),
        0
    );

    let report = &sim.reports()[0];
    assert_eq!(report.psk_identity_seen.as_deref(), Some(spec.pid.as_str()));
    assert!(!report.committed);
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pps_fails_the_handshake() {
    let mut faulty = spec("127.33.0.1");
    faulty.fault = Some(Fault::WrongPps);
    let plain = spec("127.33.0.2");
    let sim = Simulator::start(quiet_config(), vec![faulty.clone(), plain.clone()])
        .await
        .unwrap();
    // The device holds another PPS than the one "the server" has.
    let r = psk_connect(
        device_addr(&sim, &faulty),
        faulty.pid.as_str(),
        faulty.pps.expose_bytes(),
    )
    .await;
    assert!(r.is_err(), "handshake with the wrong PPS must fail");
    // A client with a wrong PPS against a normal device.
    let (_, other) = keys();
    let r = psk_connect(
        device_addr(&sim, &plain),
        plain.pid.as_str(),
        other.expose_bytes(),
    )
    .await;
    assert!(r.is_err(), "handshake with the wrong PPS must fail");
    // The right one still works afterwards.
    psk_connect(
        device_addr(&sim, &plain),
        plain.pid.as_str(),
        plain.pps.expose_bytes(),
    )
    .await
    .unwrap();
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_errors_and_transport_faults() {
    let mut error = spec("127.34.0.1");
    error.fault = Some("error:CommitChanges:1".parse().unwrap());
    let mut drop = spec("127.34.0.2");
    drop.fault = Some("drop:GetUuid".parse().unwrap());
    let mut garbage = spec("127.34.0.3");
    garbage.fault = Some("garbage:GetUuid".parse().unwrap());
    let mut mismatch = spec("127.34.0.4");
    mismatch.fault = Some(Fault::UuidMismatch);
    let specs = vec![
        error.clone(),
        drop.clone(),
        garbage.clone(),
        mismatch.clone(),
    ];
    let sim = Simulator::start(quiet_config(), specs).await.unwrap();

    let mut c = client_for(&sim, &error).await;
    assert_eq!(
        return_value(
            &c.call("AMT_SetupAndConfigurationService", "CommitChanges", &[])
                .await
        ),
        1
    );

    let mut c = client_for(&sim, &drop).await;
    let (_, xml) = c.message(
        &format!("{AMT}AMT_SetupAndConfigurationService/GetUuid"),
        "AMT_SetupAndConfigurationService",
        &[],
        "",
    );
    assert_eq!(
        c.send_raw(&xml).await.unwrap().status,
        StatusCode::UNAUTHORIZED
    );
    assert!(
        c.send_raw(&xml).await.is_err(),
        "the connection must be dropped"
    );

    let mut c = client_for(&sim, &garbage).await;
    let (_, xml) = c.message(
        &format!("{AMT}AMT_SetupAndConfigurationService/GetUuid"),
        "AMT_SetupAndConfigurationService",
        &[],
        "",
    );
    let reply = c.send(&xml).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(roxmltree::Document::parse(&reply.body).is_err());

    let mut c = client_for(&sim, &mismatch).await;
    let reply = c
        .call("AMT_SetupAndConfigurationService", "GetUuid", &[])
        .await;
    assert_ne!(
        B64.decode(text(&reply, "UUID").unwrap()).unwrap(),
        mismatch.uuid
    );

    for r in sim.reports() {
        assert_eq!(r.expected_outcome, Outcome::NotProvisioned);
        assert!(!r.committed);
    }
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_admin_password_replaces_the_mebx_password() {
    let mut wrong = spec("127.35.0.2");
    wrong.fault = Some(Fault::WrongPassword);
    let spec = spec("127.35.0.1");
    let sim = Simulator::start(quiet_config(), vec![spec.clone(), wrong.clone()])
        .await
        .unwrap();
    let addr = device_addr(&sim, &spec);
    let mut c = Client::new(
        psk_connect(addr, spec.pid.as_str(), spec.pps.expose_bytes())
            .await
            .unwrap(),
        PASSWORD,
    )
    .await;
    let realm = text(
        &c.enumerate("AMT_GeneralSettings").await.body,
        "DigestRealm",
    )
    .unwrap();
    let new_password = "N3w-Admin-Passw0rd";
    let dp = digest_password(&realm, new_password);
    let reply = c
        .call(
            "AMT_AuthorizationService",
            "SetAdminAclEntryEx",
            &[("Username", "admin"), ("DigestPassword", &dp)],
        )
        .await;
    assert_eq!(return_value(&reply), 0);

    // The old password is refused from the next request on, even with a fresh nonce.
    let (_, xml) = c.message(
        &format!("{AMT}AMT_SetupAndConfigurationService/GetUuid"),
        "AMT_SetupAndConfigurationService",
        &[],
        "",
    );
    assert_eq!(c.send(&xml).await.status, StatusCode::UNAUTHORIZED);
    c.password = new_password.into();
    assert_eq!(c.send(&xml).await.status, StatusCode::OK);
    assert!(sim.reports()[0].admin_password_changed);

    // A device whose MEBx password differs refuses the server's.
    let addr = device_addr(&sim, &wrong);
    let mut c = Client::new(
        psk_connect(addr, wrong.pid.as_str(), wrong.pps.expose_bytes())
            .await
            .unwrap(),
        PASSWORD,
    )
    .await;
    assert_eq!(c.send(&xml).await.status, StatusCode::UNAUTHORIZED);
    sim.shutdown();
}

/// A CA (EC P-256, fast to generate) and a device certificate for `public_der`
/// (PKCS#1 RSAPublicKey) signed by it.
fn sign(public_der: &[u8]) -> (X509, PKey<Private>, X509) {
    let ca_key = PKey::from_ec_key(
        EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap(),
    )
    .unwrap();
    let mut name = X509Name::builder().unwrap();
    name.append_entry_by_text("CN", "vprov test CA").unwrap();
    let ca_name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&ca_name).unwrap();
    b.set_issuer_name(&ca_name).unwrap();
    b.set_pubkey(&ca_key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    b.append_extension(
        openssl::x509::extension::BasicConstraints::new()
            .critical()
            .ca()
            .build()
            .unwrap(),
    )
    .unwrap();
    b.sign(&ca_key, MessageDigest::sha256()).unwrap();
    let ca = b.build();

    let device_key = PKey::from_rsa(Rsa::public_key_from_der_pkcs1(public_der).unwrap()).unwrap();
    let mut name = X509Name::builder().unwrap();
    name.append_entry_by_text("CN", "amt-device").unwrap();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(2).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name.build()).unwrap();
    b.set_issuer_name(&ca_name).unwrap();
    b.set_pubkey(&device_key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    b.sign(&ca_key, MessageDigest::sha256()).unwrap();
    (ca, ca_key, b.build())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_provisioning_then_tls_with_the_installed_certificate() {
    // A hello listener that counts well-formed hellos.
    let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_addr = server.local_addr().unwrap();
    let hellos = Arc::new(Mutex::new(0u32));
    let counter = Arc::clone(&hellos);
    let hello_task = tokio::spawn(async move {
        while let Ok((mut conn, _)) = server.accept().await {
            let mut buf = Vec::new();
            if conn.read_to_end(&mut buf).await.is_ok() && buf.len() == 32 {
                *counter.lock().unwrap() += 1;
            }
        }
    });
    let mut config = quiet_config();
    config.server = server_addr;
    config.send_hellos = true;
    config.time_scale = 0.001; // one hello every 60 ms
    let spec = spec("127.36.0.1");
    let sim = Simulator::start(config, vec![spec.clone()]).await.unwrap();
    let addr = device_addr(&sim, &spec);
    while *hellos.lock().unwrap() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let stream = psk_connect(addr, spec.pid.as_str(), spec.pps.expose_bytes())
        .await
        .unwrap();
    let mut c = Client::new(stream, PASSWORD).await;
    let realm = text(
        &c.enumerate("AMT_GeneralSettings").await.body,
        "DigestRealm",
    )
    .unwrap();
    let uuid = c
        .call("AMT_SetupAndConfigurationService", "GetUuid", &[])
        .await;
    assert_eq!(B64.decode(text(&uuid, "UUID").unwrap()).unwrap(), spec.uuid);

    // New admin password; from now on Digest uses it.
    let new_password = "Pr0visioned!Pass";
    let dp = digest_password(&realm, new_password);
    let reply = c
        .call(
            "AMT_AuthorizationService",
            "SetAdminAclEntryEx",
            &[("Username", "admin"), ("DigestPassword", &dp)],
        )
        .await;
    assert_eq!(return_value(&reply), 0);
    c.password = new_password.into();

    // Clock: the device is 90 minutes behind; set it.
    let reply = c
        .call(
            "AMT_TimeSynchronizationService",
            "GetLowAccuracyTimeSynch",
            &[],
        )
        .await;
    let ta0: i64 = text(&reply, "Ta0").unwrap().parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - ta0 - 5400).abs() < 5, "device clock {ta0} vs {now}");
    let t = now.to_string();
    let reply = c
        .call(
            "AMT_TimeSynchronizationService",
            "SetHighAccuracyTimeSynch",
            &[("Ta0", &ta0.to_string()), ("Tm1", &t), ("Tm2", &t)],
        )
        .await;
    assert_eq!(return_value(&reply), 0);

    // Not ready yet: no key, certificate or TLS.
    let reply = c
        .call("AMT_SetupAndConfigurationService", "CommitChanges", &[])
        .await;
    assert_eq!(return_value(&reply), 2057);

    // Key pair and certificate.
    let reply = c
        .call(
            "AMT_PublicKeyManagementService",
            "GenerateKeyPair",
            &[("KeyAlgorithm", "0"), ("KeyLength", "2048")],
        )
        .await;
    assert_eq!(return_value(&reply), 0);
    let key_id = text(&reply, "Selector").unwrap();
    assert_eq!(key_id, "Intel(r) AMT Key: Handle: 0");
    let pairs = c.enumerate("AMT_PublicPrivateKeyPair").await;
    let der_key = text(&pairs.body, "DERKey").unwrap();
    assert!(der_key.starts_with("MIIBCgKCAQEA"), "{der_key}");
    let (ca, _ca_key, cert) = sign(&B64.decode(&der_key).unwrap());
    // A certificate for a key the device does not hold is refused.
    let blob = B64.encode(ca.to_der().unwrap());
    let reply = c
        .call(
            "AMT_PublicKeyManagementService",
            "AddCertificate",
            &[("CertificateBlob", &blob)],
        )
        .await;
    assert_eq!(return_value(&reply), 2063);
    let blob = B64.encode(cert.to_der().unwrap());
    let reply = c
        .call(
            "AMT_PublicKeyManagementService",
            "AddCertificate",
            &[("CertificateBlob", &blob)],
        )
        .await;
    assert_eq!(return_value(&reply), 0);
    let cert_id = text(&reply, "Selector").unwrap();
    assert_eq!(cert_id, "Intel(r) AMT Certificate: Handle: 1");

    // Link it for TLS.
    let epr = |class: &str, name: &str, value: &str| {
        format!(
            r#"<A:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</A:Address><A:ReferenceParameters><w:ResourceURI>{AMT}{class}</w:ResourceURI><w:SelectorSet><w:Selector Name="{name}">{value}</w:Selector></w:SelectorSet></A:ReferenceParameters>"#
        )
    };
    let body = format!(
        r#"<h:AMT_TLSCredentialContext xmlns:h="{AMT}AMT_TLSCredentialContext"><h:ElementInContext>{}</h:ElementInContext><h:ElementProvidingContext>{}</h:ElementProvidingContext></h:AMT_TLSCredentialContext>"#,
        epr("AMT_PublicKeyCertificate", "InstanceID", &cert_id),
        epr(
            "AMT_TLSProtocolEndpointCollection",
            "ElementName",
            "TLSProtocolEndpointInstances Collection"
        ),
    );
    let (_, xml) = c.message(
        &format!("{XFER}Create"),
        "AMT_TLSCredentialContext",
        &[],
        &body,
    );
    let reply = c.send(&xml).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(has(&reply.body, "ResourceCreated"));

    let remote = "Intel(r) AMT 802.3 TLS Settings";
    let body = format!(
        r#"<h:AMT_TLSSettingData xmlns:h="{AMT}AMT_TLSSettingData"><h:ElementName>{remote}</h:ElementName><h:InstanceID>{remote}</h:InstanceID><h:MutualAuthentication>false</h:MutualAuthentication><h:Enabled>true</h:Enabled><h:AcceptNonSecureConnections>true</h:AcceptNonSecureConnections></h:AMT_TLSSettingData>"#
    );
    let (_, xml) = c.message(
        &format!("{XFER}Put"),
        "AMT_TLSSettingData",
        &[("InstanceID", remote)],
        &body,
    );
    let reply = c.send(&xml).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(text(&reply.body, "Enabled").as_deref(), Some("true"));

    let body = format!(
        r#"<h:AMT_GeneralSettings xmlns:h="{AMT}AMT_GeneralSettings"><h:HostName>desk-042</h:HostName><h:DomainName>corp.example</h:DomainName></h:AMT_GeneralSettings>"#
    );
    let (_, xml) = c.message(&format!("{XFER}Put"), "AMT_GeneralSettings", &[], &body);
    assert_eq!(c.send(&xml).await.status, StatusCode::OK);

    let reply = c
        .call("AMT_SetupAndConfigurationService", "CommitChanges", &[])
        .await;
    assert_eq!(return_value(&reply), 0);
    let hellos_at_commit = *hellos.lock().unwrap();

    // After the restart the device serves TLS with the installed certificate.
    let reports = sim.wait_all(Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stream = cert_connect(addr, &ca).await.unwrap();
    let mut c = Client::new(stream, new_password).await;
    let reply = c
        .call("AMT_SetupAndConfigurationService", "GetUuid", &[])
        .await;
    assert_eq!(
        B64.decode(text(&reply, "UUID").unwrap()).unwrap(),
        spec.uuid
    );
    assert!(
        psk_connect(addr, spec.pid.as_str(), spec.pps.expose_bytes())
            .await
            .is_err(),
        "TLS-PSK is gone"
    );
    assert_eq!(
        *hellos.lock().unwrap(),
        hellos_at_commit,
        "hellos stop at commit"
    );

    let r = &reports[0];
    assert_eq!(r.outcome, Outcome::Provisioned);
    assert_eq!(r.expected_outcome, Outcome::Provisioned);
    assert!(
        r.committed
            && r.clock_synced
            && r.tls_enabled
            && r.certificate_installed
            && r.admin_password_changed
    );
    assert_eq!(r.host_name, "desk-042");
    assert!(r.committed_after_ms.is_some());
    assert_eq!(r.hellos_sent, hellos_at_commit);
    assert_eq!(r.psk_identity_seen.as_deref(), Some(spec.pid.as_str()));
    let json = serde_json::to_value(r).unwrap();
    assert_eq!(json["outcome"], "provisioned");
    assert!(!json
        .to_string()
        .contains(std::str::from_utf8(spec.pps.expose_bytes()).unwrap()));
    sim.shutdown();
    hello_task.abort();
}
