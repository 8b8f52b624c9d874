//! Self-tests of the AMT device simulator over real loopback sockets, with an
//! independent client: OpenSSL TLS-PSK (TLS 1.0, PSK-AES128-CBC-SHA, SECLEVEL 0),
//! hyper's HTTP/1 client, raw HTTP/1.1 where the wire form matters (connection close,
//! chunks, TLS alerts) and a hand-written Digest implementation. Each test uses its own
//! 127.x address range so tests can run in parallel.

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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_openssl::SslStream;
use vprov_core::keys::{KeyGenerator, Pid, Pps};
use vprov_tests::sim::{DeviceSpec, Fault, KeyPool, Outcome, SimConfig, Simulator, TlsAlert};

const PASSWORD: &str = "P@ssw0rd-Mebx1";
const AMT: &str = "http://intel.com/wbem/wscim/1/amt-schema/1/";
const CIM: &str = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/";
const ENUM: &str = "http://schemas.xmlsoap.org/ws/2004/09/enumeration/";
const XFER: &str = "http://schemas.xmlsoap.org/ws/2004/09/transfer/";
const REMOTE_TLS: &str = "Intel(r) AMT 802.3 TLS Settings";
const LOCAL_TLS: &str = "Intel(r) AMT LMS TLS Settings";
/// The collection name clients send on Create (no space) and the one devices report.
const COLLECTION_CREATE: &str = "TLSProtocolEndpointInstances Collection";
const COLLECTION_REPORTED: &str = "TLSProtocolEndpoint Instances Collection";
/// Fatal protocol_version alert in a TLS 1.0 record (RFC 2246 §7.2).
const PROTOCOL_VERSION_ALERT: [u8; 7] = [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x46];
/// Fatal bad_record_mac alert in a TLS 1.0 record.
const BAD_RECORD_MAC_ALERT: [u8; 7] = [0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x14];
/// How long a test waits for a state it polls for.
const PATIENCE: Duration = Duration::from_secs(10);

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

/// Polls `done` every 10 ms until it holds; panics after [`PATIENCE`].
async fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ------------------------------------------------------------------ TLS clients

/// TLS-PSK with the PID as identity and the PPS as key; the ClientHello announces
/// `max` (TLS 1.0 is what PSK-era firmware speaks).
async fn psk_connect_max(
    addr: SocketAddr,
    pid: &str,
    pps: &[u8],
    max: SslVersion,
) -> anyhow::Result<SslStream<TcpStream>> {
    let mut b = SslContext::builder(SslMethod::tls_client())?;
    b.set_security_level(0);
    b.set_min_proto_version(Some(SslVersion::TLS1))?;
    b.set_max_proto_version(Some(max))?;
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

async fn psk_connect(
    addr: SocketAddr,
    pid: &str,
    pps: &[u8],
) -> anyhow::Result<SslStream<TcpStream>> {
    psk_connect_max(addr, pid, pps, SslVersion::TLS1).await
}

/// Certificate TLS verified against `ca`, announcing `max`.
async fn cert_connect_max(
    addr: SocketAddr,
    ca: &X509,
    max: SslVersion,
) -> anyhow::Result<SslStream<TcpStream>> {
    let mut b = SslConnector::builder(SslMethod::tls_client())?;
    b.set_security_level(0);
    b.set_min_proto_version(Some(SslVersion::TLS1))?;
    b.set_max_proto_version(Some(max))?;
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

/// Waits until the device's certificate TLS server accepts a TLS 1.0 handshake.
async fn wait_for_cert_server(addr: SocketAddr, ca: &X509) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while cert_connect_max(addr, ca, SslVersion::TLS1).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no certificate TLS server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
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

/// `Authorization: Digest` for POST /wsman: RFC 2617 `qop=auth`, or RFC 2069 (no qop).
fn authorization(
    user: &str,
    password: &str,
    (realm, nonce): (&str, &str),
    nc: u32,
    rfc2069: bool,
) -> String {
    let ha1 = md5_hex(&format!("{user}:{realm}:{password}"));
    let ha2 = md5_hex("POST:/wsman");
    if rfc2069 {
        let response = md5_hex(&format!("{ha1}:{nonce}:{ha2}"));
        return format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"/wsman\", \
             response=\"{response}\""
        );
    }
    let nc = format!("{nc:08x}");
    let cnonce = format!("{:016x}", rand::random::<u64>());
    let response = md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"/wsman\", \
         qop=auth, nc={nc}, cnonce=\"{cnonce}\", response=\"{response}\""
    )
}

/// The resource URI of an AMT or CIM class.
fn uri(class: &str) -> String {
    if class.starts_with("CIM_") {
        format!("{CIM}{class}")
    } else {
        format!("{AMT}{class}")
    }
}

/// A WS-Man request envelope. Deliberately unusual prefixes: the device must parse by
/// namespace.
fn envelope(id: &str, action: &str, class: &str, selectors: &[(&str, &str)], body: &str) -> String {
    let sel: String = selectors
        .iter()
        .map(|(n, v)| format!(r#"<w:Selector Name="{n}">{v}</w:Selector>"#))
        .collect();
    let sel = if sel.is_empty() {
        String::new()
    } else {
        format!("<w:SelectorSet>{sel}</w:SelectorSet>")
    };
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?><S:Envelope xmlns:S="http://www.w3.org/2003/05/soap-envelope" xmlns:A="http://schemas.xmlsoap.org/ws/2004/08/addressing" xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><S:Header><A:Action>{action}</A:Action><A:To>/wsman</A:To><w:ResourceURI>{}</w:ResourceURI><A:MessageID>{id}</A:MessageID><A:ReplyTo><A:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</A:Address></A:ReplyTo><w:OperationTimeout>PT60S</w:OperationTimeout>{sel}</S:Header><S:Body>{body}</S:Body></S:Envelope>"#,
        uri(class)
    )
}

/// A method call envelope `class.method(params)` (parameter values are raw XML).
fn method_envelope(id: &str, class: &str, method: &str, params: &[(&str, &str)]) -> String {
    let p: String = params
        .iter()
        .map(|(n, v)| format!("<h:{n}>{v}</h:{n}>"))
        .collect();
    let body = format!(
        r#"<h:{method}_INPUT xmlns:h="{}">{p}</h:{method}_INPUT>"#,
        uri(class)
    );
    envelope(id, &format!("{}/{method}", uri(class)), class, &[], &body)
}

struct Reply {
    status: StatusCode,
    chunked: bool,
    content_type: String,
    server: String,
    /// The reply carried `Connection: close`.
    connection_close: bool,
    body: String,
}

/// How a [`Client`] reaches the device.
enum Transport {
    Psk { pid: String, pps: Vec<u8> },
    Cert(X509),
}

/// A Digest client that opens a new TLS connection whenever the device ended the last
/// one (as it does after 401 and 400).
struct Client {
    addr: SocketAddr,
    transport: Transport,
    sender: Option<SendRequest<Full<Bytes>>>,
    /// TLS connections opened so far.
    connections: u32,
    user: String,
    password: String,
    /// `(realm, nonce)` of the last challenge.
    challenge: Option<(String, String)>,
    nc: u32,
    next_id: u32,
    unauthorized_seen: u32,
    /// The last `WWW-Authenticate` value.
    www_authenticate: String,
    /// Answer challenges the RFC 2069 way (no qop).
    rfc2069: bool,
}

/// A Digest client (MEBx password) over TLS-PSK to `spec`'s device.
fn client_for(sim: &Simulator, spec: &DeviceSpec) -> Client {
    let transport = Transport::Psk {
        pid: spec.pid.as_str().to_string(),
        pps: spec.pps.expose_bytes().to_vec(),
    };
    Client::new(device_addr(sim, spec), transport, PASSWORD)
}

impl Client {
    fn new(addr: SocketAddr, transport: Transport, password: &str) -> Client {
        Client {
            addr,
            transport,
            sender: None,
            connections: 0,
            user: "admin".into(),
            password: password.into(),
            challenge: None,
            nc: 0,
            next_id: 0,
            unauthorized_seen: 0,
            www_authenticate: String::new(),
            rfc2069: false,
        }
    }

    async fn connect(&mut self) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let stream = match &self.transport {
            Transport::Psk { pid, pps } => psk_connect(self.addr, pid, pps).await?,
            Transport::Cert(ca) => cert_connect_max(self.addr, ca, SslVersion::TLS1).await?,
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        self.connections += 1;
        Ok(sender)
    }

    async fn send_raw(&mut self, body: &str) -> anyhow::Result<Reply> {
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => self.connect().await?,
        };
        let mut req =
            Request::post("/wsman").header("content-type", "application/soap+xml;charset=UTF-8");
        if let Some((realm, nonce)) = &self.challenge {
            self.nc += 1;
            let value = authorization(
                &self.user,
                &self.password,
                (realm, nonce),
                self.nc,
                self.rfc2069,
            );
            req = req.header("authorization", value);
        }
        sender.ready().await?;
        let resp = sender
            .send_request(req.body(Full::new(Bytes::from(body.to_string())))?)
            .await?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap_or_default().to_string())
                .unwrap_or_default()
        };
        let status = resp.status();
        let chunked = header("transfer-encoding").eq_ignore_ascii_case("chunked");
        let content_type = header("content-type");
        let server = header("server");
        let connection_close = header("connection").eq_ignore_ascii_case("close");
        if status == StatusCode::UNAUTHORIZED {
            self.unauthorized_seen += 1;
            let h = header("www-authenticate");
            assert!(h.starts_with("Digest "), "{h}");
            assert_eq!(param(&h, "qop"), "auth");
            self.challenge = Some((param(&h, "realm"), param(&h, "nonce")));
            self.www_authenticate = h;
            self.nc = 0;
        }
        let body =
            String::from_utf8_lossy(&resp.into_body().collect().await?.to_bytes()).into_owned();
        if !connection_close {
            self.sender = Some(sender);
        }
        Ok(Reply {
            status,
            chunked,
            content_type,
            server,
            connection_close,
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

    fn next_id(&mut self) -> String {
        self.next_id += 1;
        self.next_id.to_string()
    }

    fn message(
        &mut self,
        action: &str,
        class: &str,
        selectors: &[(&str, &str)],
        body: &str,
    ) -> (String, String) {
        let id = self.next_id();
        let xml = envelope(&id, action, class, selectors, body);
        (id, xml)
    }

    /// Calls `class.method(params)`; returns the reply body after checking RelatesTo.
    async fn call(&mut self, class: &str, method: &str, params: &[(&str, &str)]) -> String {
        let id = self.next_id();
        let reply = self
            .send(&method_envelope(&id, class, method, params))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(text(&reply.body, "RelatesTo").as_deref(), Some(id.as_str()));
        assert_eq!(
            text(&reply.body, "Action"),
            Some(format!("{}/{method}Response", uri(class)))
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

    /// Put of `class` with `properties` (raw XML inside the class element).
    async fn put(&mut self, class: &str, selectors: &[(&str, &str)], properties: &str) -> Reply {
        let body = format!(
            r#"<h:{class} xmlns:h="{}">{properties}</h:{class}>"#,
            uri(class)
        );
        let (_, xml) = self.message(&format!("{XFER}Put"), class, selectors, &body);
        self.send(&xml).await
    }
}

// ------------------------------------------------------------------ raw HTTP

/// A POST /wsman request as bytes; `close` asks the device to close afterwards.
fn raw_request(body: &str, authorization: Option<&str>, close: bool) -> Vec<u8> {
    let mut head = format!(
        "POST /wsman HTTP/1.1\r\nHost: device\r\nContent-Type: application/soap+xml;charset=UTF-8\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(a) = authorization {
        head.push_str(&format!("Authorization: {a}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// Everything the peer sends until it closes the connection; panics if it keeps the
/// connection open for [`PATIENCE`].
async fn read_until_closed(stream: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
            Err(_) => panic!("the connection stayed open"),
            Ok(Ok(0) | Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Head and body bytes of a raw HTTP reply.
fn split_reply(reply: &[u8]) -> (String, Vec<u8>) {
    let end = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head");
    let head = String::from_utf8_lossy(&reply[..end]).into_owned();
    (head, reply[end + 4..].to_vec())
}

/// A header's value out of a head (names compared without case).
fn head_value(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// Sizes of the chunks of a chunked body, up to (not including) the last, empty one.
fn chunk_sizes(mut body: &[u8]) -> Vec<usize> {
    let mut sizes = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("size line");
        let size = usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap(), 16)
            .expect("hex chunk size");
        if size == 0 {
            return sizes;
        }
        sizes.push(size);
        body = &body[line_end + 2 + size + 2..];
    }
}

/// A raw unauthenticated request on a new PSK connection: the 401's challenge
/// `(realm, nonce)` (the device closes that connection).
async fn raw_challenge(addr: SocketAddr, spec: &DeviceSpec, body: &str) -> (String, String) {
    let mut s = psk_connect(addr, spec.pid.as_str(), spec.pps.expose_bytes())
        .await
        .unwrap();
    s.write_all(&raw_request(body, None, false)).await.unwrap();
    let (head, _) = split_reply(&read_until_closed(&mut s).await);
    let www = head_value(&head, "www-authenticate").expect("challenge");
    (param(&www, "realm"), param(&www, "nonce"))
}

// ------------------------------------------------------------------ XML

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

/// The SOAP fault subcode of a reply.
fn subcode(xml: &str) -> String {
    let doc = roxmltree::Document::parse(xml).unwrap();
    doc.descendants()
        .find(|n| n.tag_name().name() == "Subcode")
        .and_then(|s| s.children().find(|c| c.tag_name().name() == "Value"))
        .and_then(|v| v.text())
        .unwrap_or_default()
        .to_string()
}

/// `VersionString` of the `CIM_SoftwareIdentity` instance `AMT`, if reported.
fn amt_identity(xml: &str) -> Option<String> {
    let doc = roxmltree::Document::parse(xml).unwrap();
    doc.descendants()
        .filter(|n| n.tag_name().name() == "CIM_SoftwareIdentity")
        .find(|n| {
            n.children()
                .any(|c| c.tag_name().name() == "InstanceID" && c.text() == Some("AMT"))
        })
        .and_then(|n| {
            n.children()
                .find(|c| c.tag_name().name() == "VersionString")
        })
        .and_then(|v| v.text())
        .map(str::to_string)
}

/// `SetAdminAclEntryEx` DigestPassword: base64 of raw MD5("admin:realm:password").
fn digest_password(realm: &str, password: &str) -> String {
    B64.encode(Md5::digest(format!("admin:{realm}:{password}").as_bytes()))
}

// ------------------------------------------------------------------ provisioning steps

/// How the device gets its TLS key pair.
enum KeySource {
    /// `GenerateKeyPair(0, 2048)` (AMT 6.2+).
    Generate,
    /// `AddKey` with this private key (any version).
    Add(Rsa<Private>),
}

/// Changes the admin password to `password` (the client uses it from then on).
async fn set_admin_password(c: &mut Client, password: &str) {
    let realm = text(
        &c.enumerate("AMT_GeneralSettings").await.body,
        "DigestRealm",
    )
    .unwrap();
    let dp = digest_password(&realm, password);
    let reply = c
        .call(
            "AMT_AuthorizationService",
            "SetAdminAclEntryEx",
            &[("Username", "admin"), ("DigestPassword", &dp)],
        )
        .await;
    assert_eq!(return_value(&reply), 0);
    c.password = password.into();
}

/// Reads the device clock (90 minutes behind) and sets it.
async fn sync_clock(c: &mut Client) {
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
}

/// Puts a key pair on the device; returns its `DERKey` (PKCS#1 RSAPublicKey).
async fn install_key(c: &mut Client, source: KeySource) -> Vec<u8> {
    let reply = match &source {
        KeySource::Generate => {
            c.call(
                "AMT_PublicKeyManagementService",
                "GenerateKeyPair",
                &[("KeyAlgorithm", "0"), ("KeyLength", "2048")],
            )
            .await
        }
        KeySource::Add(rsa) => {
            let blob = B64.encode(rsa.private_key_to_der().unwrap());
            c.call(
                "AMT_PublicKeyManagementService",
                "AddKey",
                &[("KeyBlob", &blob)],
            )
            .await
        }
    };
    assert_eq!(return_value(&reply), 0, "{reply}");
    let element = match source {
        KeySource::Generate => "KeyPair",
        KeySource::Add(_) => "CreatedKey",
    };
    assert!(has(&reply, element), "{reply}");
    let key_id = text(&reply, "Selector").unwrap();
    let pairs = c.enumerate("AMT_PublicPrivateKeyPair").await;
    let ids = all_texts(&pairs.body, "InstanceID");
    let ders = all_texts(&pairs.body, "DERKey");
    let der = &ders[ids.iter().position(|i| *i == key_id).expect("key pair")];
    assert!(der.starts_with("MIIBCgKCAQEA"), "{der}");
    B64.decode(der).unwrap()
}

/// Signs a certificate for `public_der` and adds it; returns the CA and the
/// certificate's InstanceID.
async fn install_certificate(c: &mut Client, public_der: &[u8]) -> (X509, String) {
    let (ca, _ca_key, cert) = sign(public_der);
    let blob = B64.encode(cert.to_der().unwrap());
    let reply = c
        .call(
            "AMT_PublicKeyManagementService",
            "AddCertificate",
            &[("CertificateBlob", &blob)],
        )
        .await;
    assert_eq!(return_value(&reply), 0);
    assert!(has(&reply, "CreatedCertificate"));
    (ca, text(&reply, "Selector").unwrap())
}

/// Create of `AMT_TLSCredentialContext` linking `cert_id` to the collection `collection`.
async fn create_context(c: &mut Client, cert_id: &str, collection: &str) -> Reply {
    let epr = |class: &str, name: &str, value: &str| {
        format!(
            r#"<A:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</A:Address><A:ReferenceParameters><w:ResourceURI>{AMT}{class}</w:ResourceURI><w:SelectorSet><w:Selector Name="{name}">{value}</w:Selector></w:SelectorSet></A:ReferenceParameters>"#
        )
    };
    let body = format!(
        r#"<h:AMT_TLSCredentialContext xmlns:h="{AMT}AMT_TLSCredentialContext"><h:ElementInContext>{}</h:ElementInContext><h:ElementProvidingContext>{}</h:ElementProvidingContext></h:AMT_TLSCredentialContext>"#,
        epr("AMT_PublicKeyCertificate", "InstanceID", cert_id),
        epr(
            "AMT_TLSProtocolEndpointCollection",
            "ElementName",
            collection
        ),
    );
    let (_, xml) = c.message(
        &format!("{XFER}Create"),
        "AMT_TLSCredentialContext",
        &[],
        &body,
    );
    c.send(&xml).await
}

/// Enables the `instance` TLS settings (remote or local).
async fn enable_tls(c: &mut Client, instance: &str) {
    let properties = format!(
        "<h:ElementName>{instance}</h:ElementName><h:InstanceID>{instance}</h:InstanceID><h:MutualAuthentication>false</h:MutualAuthentication><h:Enabled>true</h:Enabled><h:AcceptNonSecureConnections>true</h:AcceptNonSecureConnections>"
    );
    let reply = c
        .put(
            "AMT_TLSSettingData",
            &[("InstanceID", instance)],
            &properties,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(text(&reply.body, "Enabled").as_deref(), Some("true"));
}

async fn set_host_name(c: &mut Client, host: &str, domain: &str) {
    let reply = c
        .put(
            "AMT_GeneralSettings",
            &[],
            &format!("<h:HostName>{host}</h:HostName><h:DomainName>{domain}</h:DomainName>"),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(text(&reply.body, "HostName").as_deref(), Some(host));
}

async fn commit(c: &mut Client) -> u32 {
    return_value(
        &c.call("AMT_SetupAndConfigurationService", "CommitChanges", &[])
            .await,
    )
}

/// Everything `CommitChanges` needs but the host name: clock, key pair, certificate,
/// credential context, remote TLS. Returns the CA of the device certificate.
async fn prepare_tls(c: &mut Client, source: KeySource) -> X509 {
    sync_clock(c).await;
    let public = install_key(c, source).await;
    let (ca, cert_id) = install_certificate(c, &public).await;
    let reply = create_context(c, &cert_id, COLLECTION_CREATE).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(has(&reply.body, "ResourceCreated"));
    enable_tls(c, REMOTE_TLS).await;
    ca
}

/// GetUuid over the certificate server, as vprov's confirm step does.
async fn confirm(addr: SocketAddr, ca: &X509, password: &str) -> Client {
    wait_for_cert_server(addr, ca).await;
    let mut c = Client::new(addr, Transport::Cert(ca.clone()), password);
    c.call("AMT_SetupAndConfigurationService", "GetUuid", &[])
        .await;
    c
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
async fn undelivered_hellos_are_counted_with_their_error() {
    // Nothing listens on this port any more: every hello is refused (what loadrun's
    // stall diagnosis reports).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut config = quiet_config();
    config.server = closed;
    config.send_hellos = true;
    config.time_scale = 0.001;
    let sim = Simulator::start(config, vec![spec("127.31.0.2")])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sim.reports()[0].hellos_failed < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = &sim.reports()[0];
    assert!(report.hellos_failed >= 2, "{report:?}");
    assert_eq!(report.hellos_sent, 0);
    assert!(
        report
            .last_hello_error
            .as_deref()
            .is_some_and(|e| e.contains("refused")),
        "{report:?}"
    );
    sim.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psk_digest_enumerate_and_get_uuid() {
    let spec = spec("127.32.0.1");
    let sim = Simulator::start(quiet_config(), vec![spec.clone()])
        .await
        .unwrap();
    let mut c = client_for(&sim, &spec);

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
    // A factory device has no host name.
    assert_eq!(text(&pull.body, "HostName").as_deref(), Some(""));

    let reply = c
        .call("AMT_SetupAndConfigurationService", "GetUuid", &[])
        .await;
    assert_eq!(return_value(&reply), 0);
    assert_eq!(
        B64.decode(text(&reply, "UUID").unwrap()).unwrap(),
        spec.uuid
    );

    let tls = c.enumerate("AMT_TLSSettingData").await;
    let ids = all_texts(&tls.body, "InstanceID");
    assert!(ids.contains(&REMOTE_TLS.to_string()), "{ids:?}");
    assert!(ids.contains(&LOCAL_TLS.to_string()), "{ids:?}");

    // Faults: unknown action, bad selector, not XML at all (a fault, not a crash).
    let (_, xml) = c.message(
        &format!("{AMT}AMT_SetupAndConfigurationService/Frobnicate"),
        "AMT_SetupAndConfigurationService",
        &[],
        "",
    );
    let reply = c.send(&xml).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(subcode(&reply.body).ends_with(":ActionNotSupported"));
    let (_, xml) = c.message(
        &format!("{XFER}Get"),
        "AMT_TLSSettingData",
        &[("InstanceID", "nope")],
        "",
    );
    let reply = c.send(&xml).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(subcode(&reply.body).ends_with(":InvalidSelectors"));
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

/// Behaviour 1: 401 and 400 end the connection; nonces outlive it; success keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_or_400_ends_the_connection_and_nonces_outlive_it() {
    let strict = spec("127.37.0.1");
    let mut lax = spec("127.37.0.2");
    lax.behaviour.close_after_error = false;
    let sim = Simulator::start(quiet_config(), vec![strict.clone(), lax.clone()])
        .await
        .unwrap();
    let get_uuid = method_envelope("1", "AMT_SetupAndConfigurationService", "GetUuid", &[]);

    // Unauthenticated: the device answers 401 like firmware and closes the connection.
    let addr = device_addr(&sim, &strict);
    let mut s = psk_connect(addr, strict.pid.as_str(), strict.pps.expose_bytes())
        .await
        .unwrap();
    s.write_all(&raw_request(&get_uuid, None, false))
        .await
        .unwrap();
    let (head, body) = split_reply(&read_until_closed(&mut s).await);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert_eq!(head_value(&head, "connection").as_deref(), Some("close"));
    assert_eq!(
        head_value(&head, "content-length"),
        Some(body.len().to_string())
    );
    assert_eq!(
        head_value(&head, "content-type").as_deref(),
        Some("text/html")
    );
    assert_eq!(
        head_value(&head, "server").as_deref(),
        Some("Intel(R) Active Management Technology 8.1.40")
    );
    let www = head_value(&head, "www-authenticate").unwrap();
    assert!(
        www.contains("stale=\"false\"") && www.contains("qop=\"auth\""),
        "{www}"
    );

    // The nonce of that connection answers on a new one; success keeps the connection.
    let (realm, nonce) = raw_challenge(addr, &strict, &get_uuid).await;
    let mut c = client_for(&sim, &strict);
    c.challenge = Some((realm, nonce));
    for _ in 0..2 {
        let reply = c.send_raw(&get_uuid).await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert!(!reply.connection_close);
    }
    assert_eq!((c.connections, c.unauthorized_seen), (1, 0));

    // A 400 ends the connection too.
    let reply = c.send_raw("\u{0}<<<").await.unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.connection_close);
    assert_eq!(c.send(&get_uuid).await.status, StatusCode::OK);
    assert_eq!(c.connections, 2);

    // Turned off: 401 and 400 keep the connection.
    let mut c = client_for(&sim, &lax);
    let first = c.send_raw(&get_uuid).await.unwrap();
    assert_eq!(first.status, StatusCode::UNAUTHORIZED);
    assert!(!first.connection_close);
    assert_eq!(c.send_raw(&get_uuid).await.unwrap().status, StatusCode::OK);
    let reply = c.send_raw("\u{0}<<<").await.unwrap();
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(!reply.connection_close);
    assert_eq!(c.send_raw(&get_uuid).await.unwrap().status, StatusCode::OK);
    assert_eq!(c.connections, 1);
    sim.shutdown();
}

/// Behaviour 2: an ACL change resets every nonce; Digest needs qop=auth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_change_resets_the_nonces_and_digest_needs_qop_auth() {
    let strict = spec("127.38.0.1");
    let mut keeps = spec("127.38.0.2");
    keeps.behaviour.acl_change_resets_nonces = false;
    let other = spec("127.38.0.3");
    let mut rfc2069 = spec("127.38.0.4");
    rfc2069.behaviour.require_qop_auth = false;
    let specs = vec![
        strict.clone(),
        keeps.clone(),
        other.clone(),
        rfc2069.clone(),
    ];
    let sim = Simulator::start(quiet_config(), specs).await.unwrap();
    let get_uuid = method_envelope("1", "AMT_SetupAndConfigurationService", "GetUuid", &[]);

    for (spec, resets) in [(&strict, true), (&keeps, false)] {
        let mut c = client_for(&sim, spec);
        set_admin_password(&mut c, "N3w-Admin-Passw0rd").await;
        let seen = c.unauthorized_seen;
        // The new password with the nonce issued before the change.
        let reply = c.send_raw(&get_uuid).await.unwrap();
        if resets {
            assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
            assert_eq!(param(&c.www_authenticate, "stale"), "false");
            assert_eq!(c.send_raw(&get_uuid).await.unwrap().status, StatusCode::OK);
        } else {
            assert_eq!(reply.status, StatusCode::OK);
        }
        assert_eq!(c.unauthorized_seen - seen, u32::from(resets));
    }
    // The old password is refused even with a fresh nonce.
    let mut c = client_for(&sim, &strict);
    assert_eq!(c.send(&get_uuid).await.status, StatusCode::UNAUTHORIZED);
    assert!(sim.reports()[0].admin_password_changed);

    for (spec, accepted) in [(&other, false), (&rfc2069, true)] {
        let mut c = client_for(&sim, spec);
        c.rfc2069 = true;
        let expected = if accepted {
            StatusCode::OK
        } else {
            StatusCode::UNAUTHORIZED
        };
        assert_eq!(c.send(&get_uuid).await.status, expected);
        assert_eq!(c.unauthorized_seen, 2 - u32::from(accepted));
    }
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

    let mut c = client_for(&sim, &error);
    assert_eq!(commit(&mut c).await, 1);

    let mut c = client_for(&sim, &drop);
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

    let mut c = client_for(&sim, &garbage);
    let (_, xml) = c.message(
        &format!("{AMT}AMT_SetupAndConfigurationService/GetUuid"),
        "AMT_SetupAndConfigurationService",
        &[],
        "",
    );
    let reply = c.send(&xml).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(roxmltree::Document::parse(&reply.body).is_err());

    let mut c = client_for(&sim, &mismatch);
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
async fn a_device_with_another_mebx_password_refuses_the_servers() {
    let mut wrong = spec("127.35.0.2");
    wrong.fault = Some(Fault::WrongPassword);
    let sim = Simulator::start(quiet_config(), vec![wrong.clone()])
        .await
        .unwrap();
    let mut c = client_for(&sim, &wrong);
    let get_uuid = method_envelope("1", "AMT_SetupAndConfigurationService", "GetUuid", &[]);
    assert_eq!(c.send(&get_uuid).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(c.unauthorized_seen, 2);
    sim.shutdown();
}

/// Behaviour 4: firmware generations (GenerateKeyPair from 6.2, AddKey everywhere,
/// the version in CIM_SoftwareIdentity and in every reply's Server header).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firmware_generations_differ_where_the_sources_say() {
    let mut v6 = spec("127.39.0.1");
    v6.amt_version = "6.0.30".into();
    let v8 = spec("127.39.0.2");
    let mut v10 = spec("127.39.0.3");
    v10.amt_version = "10.0.55".into();
    let mut hidden = spec("127.39.0.4");
    hidden.behaviour.report_amt_identity = false;
    let specs = vec![v6.clone(), v8.clone(), v10.clone(), hidden.clone()];
    let sim = Simulator::start(quiet_config(), specs).await.unwrap();

    for (spec, reported) in [(&v6, true), (&v8, true), (&v10, true), (&hidden, false)] {
        let mut c = client_for(&sim, spec);
        let reply = c.enumerate("CIM_SoftwareIdentity").await;
        assert_eq!(
            reply.server,
            format!("Intel(R) Active Management Technology {}", spec.amt_version)
        );
        let expected = reported.then(|| spec.amt_version.clone());
        assert_eq!(amt_identity(&reply.body), expected, "{}", reply.body);
    }

    // Before 6.2 GenerateKeyPair does not exist: ActionNotSupported, connection closed.
    let mut c = client_for(&sim, &v6);
    let generate = |id: &str| {
        method_envelope(
            id,
            "AMT_PublicKeyManagementService",
            "GenerateKeyPair",
            &[("KeyAlgorithm", "0"), ("KeyLength", "2048")],
        )
    };
    let reply = c.send(&generate("7")).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.connection_close);
    assert!(
        subcode(&reply.body).ends_with(":ActionNotSupported"),
        "{}",
        reply.body
    );
    for spec in [&v8, &v10] {
        let mut c = client_for(&sim, spec);
        install_key(&mut c, KeySource::Generate).await;
    }

    // AddKey on every generation: PKCS#1 private key in, PKCS#1 public key reported.
    let rsa = Rsa::generate(2048).unwrap();
    for spec in [&v6, &v10] {
        let mut c = client_for(&sim, spec);
        let public = install_key(&mut c, KeySource::Add(rsa.clone())).await;
        assert_eq!(public, rsa.public_key_to_der_pkcs1().unwrap());
        install_certificate(&mut c, &public).await;
        let add = |blob: &str| {
            method_envelope(
                "8",
                "AMT_PublicKeyManagementService",
                "AddKey",
                &[("KeyBlob", blob)],
            )
        };
        let again = B64.encode(rsa.private_key_to_der().unwrap());
        assert_eq!(return_value(&c.send(&add(&again)).await.body), 2058);
        assert_eq!(return_value(&c.send(&add("AAAA")).await.body), 2062);
        let small = B64.encode(Rsa::generate(1024).unwrap().private_key_to_der().unwrap());
        assert_eq!(return_value(&c.send(&add(&small)).await.body), 2062);
    }
    sim.shutdown();
}

/// Behaviour 5: SOAP replies are chunked over several chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_come_in_several_chunks() {
    let strict = spec("127.43.0.1");
    let mut one = spec("127.43.0.2");
    one.behaviour.reply_chunk_size = 0;
    let sim = Simulator::start(quiet_config(), vec![strict.clone(), one.clone()])
        .await
        .unwrap();
    let enumerate = envelope(
        "1",
        &format!("{ENUM}Enumerate"),
        "AMT_GeneralSettings",
        &[],
        r#"<E:Enumerate xmlns:E="http://schemas.xmlsoap.org/ws/2004/09/enumeration"/>"#,
    );
    for (spec, several) in [(&strict, true), (&one, false)] {
        let addr = device_addr(&sim, spec);
        let (realm, nonce) = raw_challenge(addr, spec, &enumerate).await;
        let auth = authorization("admin", PASSWORD, (&realm, &nonce), 1, false);
        let mut s = psk_connect(addr, spec.pid.as_str(), spec.pps.expose_bytes())
            .await
            .unwrap();
        s.write_all(&raw_request(&enumerate, Some(&auth), true))
            .await
            .unwrap();
        let (head, body) = split_reply(&read_until_closed(&mut s).await);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(
            head_value(&head, "transfer-encoding").as_deref(),
            Some("chunked")
        );
        assert_eq!(head_value(&head, "content-length"), None);
        let sizes = chunk_sizes(&body);
        if several {
            assert!(sizes.len() >= 2, "{sizes:?}");
            assert!(
                sizes[..sizes.len() - 1].iter().all(|&n| n == 512),
                "{sizes:?}"
            );
        } else {
            assert_eq!(sizes.len(), 1, "{sizes:?}");
        }
    }
    sim.shutdown();
}

/// Behaviour 6: TLS version intolerance (by generation, or forced either way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_firmware_rejects_hellos_above_tls_1_0() {
    let mut v6 = spec("127.40.0.1");
    v6.amt_version = "6.0.30".into();
    let v8 = spec("127.40.0.2");
    let mut forced_on = spec("127.40.0.3");
    forced_on.behaviour.tls_version_intolerant = Some(true);
    let mut forced_off = spec("127.40.0.4");
    forced_off.amt_version = "6.0.30".into();
    forced_off.behaviour.tls_version_intolerant = Some(false);
    let mut mac = spec("127.40.0.5");
    mac.amt_version = "6.0.30".into();
    mac.behaviour.tls_intolerance_alert = TlsAlert::BadRecordMac;
    let cases = [
        (&v6, Some(PROTOCOL_VERSION_ALERT)),
        (&v8, None),
        (&forced_on, Some(PROTOCOL_VERSION_ALERT)),
        (&forced_off, None),
        (&mac, Some(BAD_RECORD_MAC_ALERT)),
    ];
    let specs = cases.iter().map(|(s, _)| (*s).clone()).collect();
    let sim = Simulator::start(quiet_config(), specs).await.unwrap();

    // Record header + ClientHello header announcing TLS 1.2 (client_version 0x0303).
    let hello = [
        0x16, 0x03, 0x01, 0x00, 0x31, 0x01, 0x00, 0x00, 0x2d, 0x03, 0x03,
    ];
    for (spec, alert) in cases {
        let addr = device_addr(&sim, spec);
        let intolerant = alert.is_some();
        if let Some(alert) = alert {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            tcp.write_all(&hello).await.unwrap();
            assert_eq!(read_until_closed(&mut tcp).await, alert);
        }
        let newer = psk_connect_max(
            addr,
            spec.pid.as_str(),
            spec.pps.expose_bytes(),
            SslVersion::TLS1_2,
        )
        .await;
        assert_eq!(newer.is_err(), intolerant, "{}", spec.address);
        // A TLS 1.0 ClientHello always proceeds.
        psk_connect(addr, spec.pid.as_str(), spec.pps.expose_bytes())
            .await
            .unwrap();
    }
    sim.shutdown();
}

/// Behaviours 7 and 8: the collection name on Create and in reports; both TLS setting
/// instances are Put-able and reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_context_names_and_both_tls_settings() {
    let strict = spec("127.41.0.1");
    let mut lax = spec("127.41.0.2");
    lax.behaviour.accept_spaced_collection_name = true;
    let sim = Simulator::start(quiet_config(), vec![strict.clone(), lax.clone()])
        .await
        .unwrap();

    let mut c = client_for(&sim, &strict);
    let public = install_key(&mut c, KeySource::Generate).await;
    let (_, cert_id) = install_certificate(&mut c, &public).await;
    let reply = create_context(&mut c, &cert_id, COLLECTION_REPORTED).await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(text(&reply.body, "Value").as_deref(), Some("a:Receiver"));
    assert!(subcode(&reply.body).ends_with(":InternalError"));
    let reply = create_context(&mut c, &cert_id, "Some Other Collection").await;
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    let reply = create_context(&mut c, &cert_id, COLLECTION_CREATE).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let contexts = c.enumerate("AMT_TLSCredentialContext").await;
    let names = all_texts(&contexts.body, "Selector");
    assert!(
        names.contains(&COLLECTION_REPORTED.to_string()),
        "{names:?}"
    );
    enable_tls(&mut c, LOCAL_TLS).await;

    let mut c = client_for(&sim, &lax);
    let public = install_key(&mut c, KeySource::Generate).await;
    let (_, cert_id) = install_certificate(&mut c, &public).await;
    let reply = create_context(&mut c, &cert_id, COLLECTION_REPORTED).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    enable_tls(&mut c, REMOTE_TLS).await;

    let reports = sim.reports();
    assert_eq!(
        (reports[0].tls_enabled, reports[0].lms_tls_enabled),
        (false, true)
    );
    assert_eq!(
        (reports[1].tls_enabled, reports[1].lms_tls_enabled),
        (true, false)
    );
    sim.shutdown();
}

/// Behaviour 9: the power state through CIM_ServiceAvailableToElement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_state_through_service_available_to_element() {
    let spec = spec("127.42.0.1");
    let sim = Simulator::start(quiet_config(), vec![spec.clone()])
        .await
        .unwrap();
    let mut c = client_for(&sim, &spec);
    let power = |xml: &str| -> Vec<String> {
        let doc = roxmltree::Document::parse(xml).unwrap();
        doc.descendants()
            .filter(|n| n.tag_name().name() == "CIM_AssociatedPowerManagementService")
            .filter_map(|n| n.children().find(|c| c.tag_name().name() == "PowerState"))
            .map(|p| p.text().unwrap_or_default().to_string())
            .collect()
    };
    for class in [
        "CIM_ServiceAvailableToElement",
        "CIM_AssociatedPowerManagementService",
    ] {
        assert_eq!(power(&c.enumerate(class).await.body), ["2"]);
    }
    let host = format!(
        r#"<A:Address xmlns:A="http://schemas.xmlsoap.org/ws/2004/08/addressing">http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</A:Address><A:ReferenceParameters xmlns:A="http://schemas.xmlsoap.org/ws/2004/08/addressing"><w:ResourceURI xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd">{CIM}CIM_ComputerSystem</w:ResourceURI><w:SelectorSet xmlns:w="http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd"><w:Selector Name="Name">ManagedSystem</w:Selector></w:SelectorSet></A:ReferenceParameters>"#
    );
    let reply = c
        .call(
            "CIM_PowerManagementService",
            "RequestPowerStateChange",
            &[("PowerState", "8"), ("ManagedElement", &host)],
        )
        .await;
    assert_eq!(return_value(&reply), 0);
    for class in [
        "CIM_ServiceAvailableToElement",
        "CIM_AssociatedPowerManagementService",
    ] {
        assert_eq!(power(&c.enumerate(class).await.body), ["8"]);
    }
    sim.shutdown();
}

/// Behaviours 3 and 10, end to end: a factory device needs a host name to commit, keeps
/// serving its certificate TLS server after the commit, and counts as provisioned only
/// once a client made an authenticated request over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_provisioning_then_confirmation_over_the_installed_certificate() {
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
    wait_for("a hello", || *hellos.lock().unwrap() > 0).await;

    let mut c = client_for(&sim, &spec);
    let uuid = c
        .call("AMT_SetupAndConfigurationService", "GetUuid", &[])
        .await;
    assert_eq!(B64.decode(text(&uuid, "UUID").unwrap()).unwrap(), spec.uuid);
    let new_password = "Pr0visioned!Pass";
    set_admin_password(&mut c, new_password).await;

    // Nothing is ready yet.
    assert_eq!(commit(&mut c).await, 2057);
    // A certificate for a key the device does not hold is refused.
    let (ca, _, _) = sign(
        &Rsa::generate(2048)
            .unwrap()
            .public_key_to_der_pkcs1()
            .unwrap(),
    );
    let blob = B64.encode(ca.to_der().unwrap());
    let reply = c
        .call(
            "AMT_PublicKeyManagementService",
            "AddCertificate",
            &[("CertificateBlob", &blob)],
        )
        .await;
    assert_eq!(return_value(&reply), 2063);
    let ca = prepare_tls(&mut c, KeySource::Generate).await;

    // Everything but the host name: the factory device refuses to commit.
    let settings = c.enumerate("AMT_GeneralSettings").await;
    assert_eq!(text(&settings.body, "HostName").as_deref(), Some(""));
    assert_eq!(commit(&mut c).await, 2057);
    assert!(!sim.reports()[0].committed);
    set_host_name(&mut c, "desk-042", "corp.example").await;
    assert_eq!(commit(&mut c).await, 0);
    let hellos_at_commit = *hellos.lock().unwrap();

    // Committed, not yet confirmed: not provisioned, and wait_all does not return early.
    let r = sim.wait_all(Duration::from_millis(300)).await.remove(0);
    assert!(r.committed && !r.confirmed, "{r:?}");
    assert_eq!(r.outcome, Outcome::NotProvisioned);

    // After the restart the device serves TLS with the installed certificate; an
    // unauthenticated request does not confirm it, an authenticated one does.
    wait_for_cert_server(addr, &ca).await;
    let mut cert_client = Client::new(addr, Transport::Cert(ca.clone()), new_password);
    let get_uuid = method_envelope("9", "AMT_SetupAndConfigurationService", "GetUuid", &[]);
    let reply = cert_client.send_raw(&get_uuid).await.unwrap();
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(!sim.reports()[0].confirmed);
    let reply = cert_client.send_raw(&get_uuid).await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(
        B64.decode(text(&reply.body, "UUID").unwrap()).unwrap(),
        spec.uuid
    );
    let r = sim.wait_all(PATIENCE).await.remove(0);
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

    assert_eq!(r.outcome, Outcome::Provisioned);
    assert_eq!(r.expected_outcome, Outcome::Provisioned);
    assert!(
        r.committed
            && r.confirmed
            && r.clock_synced
            && r.tls_enabled
            && !r.lms_tls_enabled
            && r.certificate_installed
            && r.admin_password_changed
    );
    assert_eq!(
        (r.host_name.as_str(), r.domain_name.as_str()),
        ("desk-042", "corp.example")
    );
    assert!(r.committed_after_ms.is_some());
    assert_eq!(r.hellos_sent, hellos_at_commit);
    assert_eq!(r.psk_identity_seen.as_deref(), Some(spec.pid.as_str()));
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["outcome"], "provisioned");
    assert_eq!(json["confirmed"], true);
    assert!(!json
        .to_string()
        .contains(std::str::from_utf8(spec.pps.expose_bytes()).unwrap()));
    sim.shutdown();
    hello_task.abort();
}

/// Behaviours 4 and 6 end to end: an AMT 6.0 device is provisioned with AddKey, and its
/// certificate TLS server also accepts only TLS 1.0 hellos.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amt6_provisions_with_add_key_and_tls_1_0_hellos_only() {
    let mut spec = spec("127.44.0.1");
    spec.amt_version = "6.0.30".into();
    let sim = Simulator::start(quiet_config(), vec![spec.clone()])
        .await
        .unwrap();
    let addr = device_addr(&sim, &spec);
    let mut c = client_for(&sim, &spec);
    let password = "Amt6!Provisioned";
    set_admin_password(&mut c, password).await;
    let rsa = Rsa::generate(2048).unwrap();
    let ca = prepare_tls(&mut c, KeySource::Add(rsa)).await;
    set_host_name(&mut c, "desk-006", "").await;
    assert_eq!(commit(&mut c).await, 0);

    wait_for_cert_server(addr, &ca).await;
    assert!(
        cert_connect_max(addr, &ca, SslVersion::TLS1_2)
            .await
            .is_err(),
        "a TLS 1.2 hello must be refused"
    );
    confirm(addr, &ca, password).await;
    let r = sim.wait_all(PATIENCE).await.remove(0);
    assert_eq!(r.outcome, Outcome::Provisioned);
    assert!(r.confirmed);
    sim.shutdown();
}

/// Behaviours 3 and 10 turned off: commit without a host name; the commit alone counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaxed_device_commits_without_host_name_or_confirmation() {
    let mut spec = spec("127.45.0.1");
    spec.behaviour.commit_requires_host_name = false;
    let mut config = quiet_config();
    config.require_confirmation = false;
    let sim = Simulator::start(config, vec![spec.clone()]).await.unwrap();
    let mut c = client_for(&sim, &spec);
    prepare_tls(&mut c, KeySource::Generate).await;
    assert_eq!(commit(&mut c).await, 0);
    let r = sim.wait_all(PATIENCE).await.remove(0);
    assert_eq!(r.outcome, Outcome::Provisioned);
    assert!(r.committed && !r.confirmed && r.host_name.is_empty());
    sim.shutdown();
}
