//! A client of vprov's admin API for end-to-end tests: HTTPS (ureq, rustls) trusting
//! exactly the sandbox's CA (`vprov ca export`), signed in with a console session
//! cookie or a bearer token.

use std::io::{BufRead, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::Sandbox;

/// How a request authenticates.
#[derive(Debug, Clone)]
pub enum Auth {
    None,
    /// The `vprov_session` cookie (and the console header on changes).
    Session(String),
    /// The cookie without the console header, as a cross-site form would send it.
    CookieOnly(String),
    Bearer(String),
}

/// A client of one server's API.
pub struct ApiClient {
    agent: ureq::Agent,
    tls: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    base: String,
    pub auth: Auth,
}

/// An answer: status and body (JSON when it is JSON, else `Value::Null`), headers.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub json: Value,
    pub bytes: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body's `error` message.
    pub fn error(&self) -> &str {
        self.json["error"].as_str().unwrap_or("")
    }
}

impl ApiClient {
    /// A client of the API at `addr`, trusting the CA of the sandbox's store.
    pub fn new(sandbox: &Sandbox, addr: SocketAddr) -> ApiClient {
        let pem = sandbox.run(&["ca", "export"]).ok();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
            roots.add(cert.expect("CA PEM")).expect("CA certificate");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tls = Arc::new(tls);
        ApiClient {
            agent: ureq::AgentBuilder::new()
                .tls_config(tls.clone())
                .timeout(Duration::from_secs(60))
                .build(),
            tls,
            addr,
            base: format!("https://{addr}"),
            auth: Auth::None,
        }
    }

    /// The same client with other credentials.
    pub fn with(&self, auth: Auth) -> ApiClient {
        ApiClient {
            agent: self.agent.clone(),
            tls: self.tls.clone(),
            addr: self.addr,
            base: self.base.clone(),
            auth,
        }
    }

    /// A TLS connection to the API, for writing a request by hand.
    pub fn connect(&self) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
        let name = rustls::pki_types::ServerName::from(self.addr.ip());
        let connection = rustls::ClientConnection::new(self.tls.clone(), name).expect("TLS client");
        let tcp = TcpStream::connect(self.addr).expect("connect to the API");
        tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        rustls::StreamOwned::new(connection, tcp)
    }

    /// Opens the event stream (`GET /api/v1/events`), or the answer refusing it.
    pub fn open_events(&self) -> Result<EventStream, Answer> {
        let url = self.url("/api/v1/events");
        match self.request_for("GET", &url).call() {
            Ok(response) => Ok(EventStream {
                lines: std::io::BufReader::new(response.into_reader()).lines(),
            }),
            Err(ureq::Error::Status(_, response)) => Err(answer(response)),
            Err(e) => panic!("GET /api/v1/events: {e}"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request to `url` carrying this client's credentials.
    pub fn request_for(&self, method: &str, url: &str) -> ureq::Request {
        let request = self.agent.request(method, url);
        match &self.auth {
            Auth::None => request,
            Auth::Session(cookie) if method != "GET" => request
                .set("Cookie", &format!("vprov_session={cookie}"))
                .set("X-Vprov-Console", "1"),
            Auth::Session(cookie) | Auth::CookieOnly(cookie) => {
                request.set("Cookie", &format!("vprov_session={cookie}"))
            }
            Auth::Bearer(token) => request.set("Authorization", &format!("Bearer {token}")),
        }
    }

    /// Sends `method path` with an optional JSON body.
    pub fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Answer {
        let request = self.request_for(method, &self.url(path));
        let result = match body {
            Some(b) => request
                .set("Content-Type", "application/json")
                .send_string(&b.to_string()),
            None => request.call(),
        };
        match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => answer(r),
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }

    pub fn get(&self, path: &str) -> Answer {
        self.send("GET", path, None)
    }

    pub fn post(&self, path: &str, body: Value) -> Answer {
        self.send("POST", path, Some(&body))
    }

    /// Signs in; the client then carries the session cookie.
    pub fn sign_in(&self, name: &str, password: &str) -> ApiClient {
        let answer = self.post(
            "/api/v1/session",
            serde_json::json!({ "name": name, "password": password }),
        );
        assert_eq!(answer.status, 200, "sign-in: {answer:?}");
        let cookie = answer
            .header("set-cookie")
            .and_then(|c| c.strip_prefix("vprov_session="))
            .and_then(|c| c.split(';').next())
            .expect("a session cookie")
            .to_string();
        self.with(Auth::Session(cookie))
    }
}

/// A whole answer read from `response`.
fn answer(response: ureq::Response) -> Answer {
    let status = response.status();
    let headers = response
        .headers_names()
        .into_iter()
        .flat_map(|n| {
            response
                .all(&n)
                .into_iter()
                .map(|v| (n.clone(), v.to_string()))
                .collect::<Vec<_>>()
        })
        .collect();
    let mut bytes = Vec::new();
    response
        .into_reader()
        .read_to_end(&mut bytes)
        .expect("read body");
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        json,
        bytes,
        headers,
    }
}

/// An open event stream; dropping it closes its connection.
pub struct EventStream {
    lines: std::io::Lines<std::io::BufReader<Box<dyn Read + Send + Sync>>>,
}

impl EventStream {
    /// The next event (name, data), or `None` when the stream ends.
    pub fn next_event(&mut self) -> Option<(String, Value)> {
        let mut name = String::new();
        for line in self.lines.by_ref() {
            let line = line.ok()?;
            if let Some(n) = line.strip_prefix("event: ") {
                name = n.to_string();
            } else if let Some(data) = line.strip_prefix("data: ") {
                return Some((name, serde_json::from_str(data).unwrap_or(Value::Null)));
            }
        }
        None
    }
}

impl Sandbox {
    /// Adds an admin API account.
    pub fn add_admin(&self, name: &str, role: &str, password: &str) {
        self.run_with_stdin(
            &["admin", "add", name, "--role", role, "--stdin"],
            &format!("{password}\n"),
        )
        .ok();
    }
}
