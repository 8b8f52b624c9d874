//! A small, synchronous W3C WebDriver client for the end-to-end tests that drive a
//! real browser: Debian's Chromium (`/usr/bin/chromium`) through chromedriver
//! (`/usr/bin/chromedriver`), both installed by `scripts/install-deps.sh`.
//!
//! This module owns the whole browser lifecycle: [`Browser::start`] starts a private
//! chromedriver on a free loopback port (in its own process group, logging into a
//! temporary directory), opens a headless Chromium session with a fresh profile, and
//! dropping the [`Browser`] ends the session and kills chromedriver together with
//! every Chromium process it started. It speaks the protocol as plain JSON over HTTP
//! (ureq, 30 s timeouts); any WebDriver error becomes a panic naming the command,
//! the error and its message.

use std::fs::File;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};
use tempfile::TempDir;

/// The chromedriver binary Debian's `chromium-driver` package installs.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The Chromium binary Debian's `chromium` package installs.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// How long [`Browser::find`] and [`Element::find`] wait for an element to exist.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the waiting methods poll.
const POLL: Duration = Duration::from_millis(100);
/// How long chromedriver may take to report ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// Timeout of every HTTP request to chromedriver.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// The W3C key under which a web element reference travels.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Why a WebDriver command failed.
enum Failure {
    /// chromedriver answered with a W3C error (`value.error`, `value.message`).
    Driver { error: String, message: String },
    /// No usable answer: connection, timeout or an unparseable body.
    Transport(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Driver { error, message } => write!(f, "{error}: {message}"),
            Failure::Transport(e) => write!(f, "transport error: {e}"),
        }
    }
}

/// Sends one WebDriver command and returns the answer's `value`. A POST always
/// carries a JSON body (`{}` when there is nothing to send), as the protocol requires.
fn command(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> Result<Value, Failure> {
    let request = agent.request(method, url);
    let result = if method == "POST" {
        let body = body.cloned().unwrap_or_else(|| json!({}));
        request
            .set("Content-Type", "application/json; charset=utf-8")
            .send_string(&body.to_string())
    } else {
        request.call()
    };
    let (ok, response) = match result {
        Ok(response) => (true, response),
        Err(ureq::Error::Status(_, response)) => (false, response),
        Err(ureq::Error::Transport(e)) => return Err(Failure::Transport(e.to_string())),
    };
    let status = response.status();
    // into_string() caps bodies at 10 MB; screenshots can be large, so read it all.
    let mut text = String::new();
    response
        .into_reader()
        .read_to_string(&mut text)
        .map_err(|e| Failure::Transport(format!("reading the answer: {e}")))?;
    let answer: Value = serde_json::from_str(&text).map_err(|e| {
        Failure::Transport(format!("HTTP {status}, body is not JSON ({e}): {text}"))
    })?;
    let value = answer.get("value").cloned().unwrap_or(Value::Null);
    if let Some(error) = value.get("error").and_then(Value::as_str).filter(|_| !ok) {
        return Err(Failure::Driver {
            error: error.to_string(),
            message: value
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        });
    }
    if !ok {
        return Err(Failure::Transport(format!("HTTP {status}: {text}")));
    }
    Ok(value)
}

/// Sends `kill -s <signal> -- -<pgid>`; true when the group had a process to signal.
fn signal_group(pgid: u32, signal: &str) -> bool {
    Command::new("kill")
        .args(["-s", signal, "--", &format!("-{pgid}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The chromedriver process (leader of its own process group, which also holds the
/// Chromium processes it starts) and the temporary directory with its log and the
/// browser profile. Dropping it kills the whole group.
struct Driver {
    child: Child,
    dir: TempDir,
}

impl Driver {
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("chromedriver.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let pgid = self.child.id();
        signal_group(pgid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            // Reap chromedriver as soon as it exits: a zombie leader still counts as
            // a member of the group for `kill -0`.
            let _ = self.child.try_wait();
            if !signal_group(pgid, "0") {
                break;
            }
            if Instant::now() >= deadline {
                signal_group(pgid, "KILL");
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- last lines of the chromedriver log ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A headless Chromium session driven through a private chromedriver.
pub struct Browser {
    agent: ureq::Agent,
    /// `http://127.0.0.1:<port>/session/<id>`
    session_url: String,
    driver: Driver,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless Chromium
    /// session with a fresh profile. Panics (naming `scripts/install-deps.sh` when
    /// the binaries are missing) if anything fails.
    pub fn start() -> Browser {
        for bin in [CHROMEDRIVER, CHROMIUM] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: run scripts/install-deps.sh (installs Debian's chromium \
                 and chromium-driver)"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("vprov-webdriver-")
            .tempdir()
            .expect("temporary directory for chromedriver");
        let profile = dir.path().join("profile");
        std::fs::create_dir(&profile).expect("browser profile directory");
        let log_path = dir.path().join("chromedriver.log");
        let log = File::create(&log_path).expect("chromedriver log file");

        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
            listener.local_addr().expect("local address").port()
        };
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log file handle"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {CHROMEDRIVER} ({e}): run scripts/install-deps.sh")
            });
        let mut driver = Driver { child, dir };
        let base = format!("http://127.0.0.1:{port}");
        let agent = ureq::AgentBuilder::new().timeout(HTTP_TIMEOUT).build();

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = driver.child.try_wait() {
                panic!(
                    "chromedriver exited ({status}) before becoming ready; its log:\n{}",
                    driver.log()
                );
            }
            let ready = command(&agent, "GET", &format!("{base}/status"), None)
                .map(|v| v["ready"].as_bool() == Some(true))
                .unwrap_or(false);
            if ready {
                break;
            }
            if Instant::now() >= deadline {
                panic!(
                    "chromedriver on port {port} not ready after {STARTUP_TIMEOUT:?}; its log:\n{}",
                    driver.log()
                );
            }
            thread::sleep(POLL);
        }

        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "acceptInsecureCerts": true,
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--disable-quic",
                            "--no-first-run",
                            "--disable-background-networking",
                            "--disable-component-update",
                            "--disable-sync",
                            "--window-size=1280,900",
                            format!("--user-data-dir={}", profile.display()),
                        ],
                    },
                },
            },
        });
        let session = command(
            &agent,
            "POST",
            &format!("{base}/session"),
            Some(&capabilities),
        )
        .unwrap_or_else(|e| {
            panic!(
                "creating the WebDriver session failed: {e}\nchromedriver log:\n{}",
                driver.log()
            )
        });
        let id = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("new session answer has no sessionId: {session}"))
            .to_string();
        Browser {
            agent,
            session_url: format!("{base}/session/{id}"),
            driver,
        }
    }

    /// The chromedriver log file (inside the temporary directory, removed on drop).
    pub fn log_path(&self) -> PathBuf {
        self.driver.log_path()
    }

    /// Sends a command to `<session>/<path>`, failing softly.
    fn try_cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.session_url);
        command(&self.agent, method, &url, body.as_ref())
    }

    /// Sends a command to `<session>/<path>`; any failure panics.
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_cmd(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"))
    }

    /// Navigates to `url` and waits for the page to load.
    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    /// The current page's URL.
    pub fn current_url(&self) -> String {
        as_string(self.cmd("GET", "/url", None))
    }

    /// The current page's title.
    pub fn title(&self) -> String {
        as_string(self.cmd("GET", "/title", None))
    }

    /// The first element matching `css`, waiting up to [`DEFAULT_TIMEOUT`] for it.
    pub fn find(&self, css: &str) -> Element<'_> {
        self.wait_for(css, DEFAULT_TIMEOUT)
    }

    /// The first element matching `css`, waiting up to `timeout` for it to exist.
    /// Panics naming the selector and the current URL on timeout.
    pub fn wait_for(&self, css: &str, timeout: Duration) -> Element<'_> {
        self.poll_element("", css, timeout)
    }

    /// Polls `<session><scope>/element` until `css` matches (scope is "" for the
    /// document, `/element/<id>` for a subtree).
    fn poll_element(&self, scope: &str, css: &str, timeout: Duration) -> Element<'_> {
        let path = format!("{scope}/element");
        let body = json!({ "using": "css selector", "value": css });
        let deadline = Instant::now() + timeout;
        loop {
            match self.try_cmd("POST", &path, Some(body.clone())) {
                Ok(value) => return self.element(value),
                Err(Failure::Driver { error, .. }) if error == "no such element" => {}
                Err(e) => panic!("WebDriver finding {css:?}: {e}"),
            }
            if Instant::now() >= deadline {
                panic!(
                    "no element matches {css:?} after {timeout:?} (page {})",
                    self.current_url()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Every element matching `css` right now (no waiting; may be empty).
    pub fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        let found = self.cmd(
            "POST",
            "/elements",
            Some(json!({ "using": "css selector", "value": css })),
        );
        self.elements(found)
    }

    /// The text of the first element matching `css` now, or `None` if there is none
    /// or the page re-rendered it between finding and reading (a live list does).
    /// For `wait_until` conditions.
    pub fn text_of(&self, css: &str) -> Option<String> {
        let body = json!({ "using": "css selector", "value": css });
        let found = self.try_cmd("POST", "/element", Some(body)).ok()?;
        let id = found[ELEMENT_KEY].as_str()?.to_string();
        let text = self
            .try_cmd("GET", &format!("/element/{id}/text"), None)
            .ok()?;
        text.as_str().map(str::to_string)
    }

    /// Clicks the first element matching `css`, finding it again if the page
    /// re-rendered it in between, for up to `timeout`.
    pub fn click_on(&self, css: &str, timeout: Duration) {
        let body = json!({ "using": "css selector", "value": css });
        let deadline = Instant::now() + timeout;
        loop {
            let clicked = self
                .try_cmd("POST", "/element", Some(body.clone()))
                .ok()
                .and_then(|found| found[ELEMENT_KEY].as_str().map(str::to_string))
                .is_some_and(|id| {
                    self.try_cmd("POST", &format!("/element/{id}/click"), None)
                        .is_ok()
                });
            if clicked {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "could not click {css:?} within {timeout:?} (page {})",
                    self.current_url()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Polls `f` every 100 ms until it returns true; panics with `what` (a
    /// description of the awaited condition) and the current URL after `timeout`.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut f: impl FnMut(&Browser) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if f(self) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting until {what} (page {})",
                    self.current_url()
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the page and
    /// returns its result. Pass elements with [`Element::to_arg`].
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Saves a PNG screenshot of the viewport at `path`.
    pub fn screenshot(&self, path: impl AsRef<Path>) {
        let path = path.as_ref();
        let encoded = as_string(self.cmd("GET", "/screenshot", None));
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_bytes())
            .expect("screenshot answer is base64");
        std::fs::write(path, png)
            .unwrap_or_else(|e| panic!("writing screenshot {}: {e}", path.display()));
    }

    /// Accepts the open alert, confirm or prompt dialog.
    pub fn accept_alert(&self) {
        self.cmd("POST", "/alert/accept", None);
    }

    /// Makes `window.confirm` return true without showing a dialog, for the current
    /// page (call again after navigating).
    pub fn auto_confirm(&self) {
        self.execute("window.confirm = () => true;", vec![]);
    }

    fn element(&self, value: Value) -> Element<'_> {
        let id = value[ELEMENT_KEY]
            .as_str()
            .unwrap_or_else(|| panic!("not a web element reference: {value}"))
            .to_string();
        Element { browser: self, id }
    }

    fn elements(&self, value: Value) -> Vec<Element<'_>> {
        match value {
            Value::Array(items) => items.into_iter().map(|v| self.element(v)).collect(),
            other => panic!("expected a list of elements, got {other}"),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends Chromium cleanly; the Driver field then kills chromedriver's group.
        let _ = command(&self.agent, "DELETE", &self.session_url, None);
    }
}

impl std::fmt::Debug for Browser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Browser")
            .field("session", &self.session_url)
            .finish()
    }
}

/// An element of the page a [`Browser`] shows.
#[derive(Debug, Clone)]
pub struct Element<'b> {
    browser: &'b Browser,
    id: String,
}

impl Element<'_> {
    fn cmd(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        let path = format!("/element/{}{what}", self.id);
        self.browser.cmd(method, &path, body)
    }

    /// This element as an argument for [`Browser::execute`].
    pub fn to_arg(&self) -> Value {
        json!({ ELEMENT_KEY: self.id })
    }

    /// Clicks the element (scrolling it into view first).
    pub fn click(&self) {
        self.cmd("POST", "/click", None);
    }

    /// Types `text` into the element.
    pub fn send_keys(&self, text: &str) {
        self.cmd("POST", "/value", Some(json!({ "text": text })));
    }

    /// Empties an input or textarea.
    pub fn clear(&self) {
        self.cmd("POST", "/clear", None);
    }

    /// The element's rendered text.
    pub fn text(&self) -> String {
        as_string(self.cmd("GET", "/text", None))
    }

    /// The HTML attribute `name` as the markup (or script) set it, if present. This
    /// is not the live state: an input's typed text is `property("value")`.
    pub fn attr(&self, name: &str) -> Option<String> {
        match self.cmd("GET", &format!("/attribute/{name}"), None) {
            Value::Null => None,
            Value::String(s) => Some(s),
            other => Some(other.to_string()),
        }
    }

    /// The DOM property `name` (e.g. `value`, `checked`), `Null` when undefined.
    pub fn property(&self, name: &str) -> Value {
        self.cmd("GET", &format!("/property/{name}"), None)
    }

    /// Whether the element is rendered visibly.
    pub fn is_displayed(&self) -> bool {
        self.cmd("GET", "/displayed", None).as_bool() == Some(true)
    }

    /// The first element inside this one matching `css`, waiting up to
    /// [`DEFAULT_TIMEOUT`] for it.
    pub fn find(&self, css: &str) -> Element<'_> {
        self.browser
            .poll_element(&format!("/element/{}", self.id), css, DEFAULT_TIMEOUT)
    }

    /// Selects the `<option>` with this `value` of a `<select>` by clicking it.
    pub fn select_by_value(&self, value: &str) {
        let escaped = value.replace('\\', "\\\\").replace('"', "\\\"");
        self.find(&format!("option[value=\"{escaped}\"]")).click();
    }
}

fn as_string(value: Value) -> String {
    match value {
        Value::String(s) => s,
        other => panic!("expected a string from WebDriver, got {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpStream;

    const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>webdriver harness</title></head>
<body>
<form id="form" onsubmit="return false">
  <input id="name" type="text">
  <select id="color"><option value="red">Red</option><option value="a &quot;b&quot;">Quoted</option></select>
  <button id="go" type="button">Go</button>
</form>
<p id="out"></p>
<script>
document.getElementById('go').addEventListener('click', () => {
  document.getElementById('out').textContent = document.getElementById('name').value;
});
</script>
</body></html>"#;

    fn serve(mut stream: TcpStream) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let response = if request.starts_with(b"GET / ") {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{PAGE}",
                PAGE.len()
            )
        } else {
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
        };
        let _ = stream.write_all(response.as_bytes());
    }

    /// Serves PAGE at `/` on a loopback port (one thread per connection: Chromium
    /// opens speculative connections it may never use) and returns its URL.
    fn page_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || serve(stream));
            }
        });
        format!("http://127.0.0.1:{port}/")
    }

    #[test]
    fn webdriver_drives_a_form_and_takes_a_screenshot() {
        let url = page_server();
        let browser = Browser::start();
        browser.goto(&url);
        assert_eq!(browser.title(), "webdriver harness");
        assert_eq!(browser.current_url(), url);

        let input = browser.find("#name");
        assert!(input.is_displayed());
        input.send_keys("draft");
        input.clear();
        input.send_keys("hello vprov");
        assert_eq!(input.property("value"), json!("hello vprov"));
        assert_eq!(input.attr("type").as_deref(), Some("text"));
        assert_eq!(input.attr("data-missing"), None);

        let select = browser.find("#color");
        select.select_by_value("a \"b\"");
        assert_eq!(select.property("value"), json!("a \"b\""));
        assert_eq!(browser.find("form").find("#go").text(), "Go");
        assert_eq!(browser.find_all("option").len(), 2);
        assert!(browser.find_all(".nothing").is_empty());

        browser.find("#go").click();
        browser.wait_until("#out shows the input", Duration::from_secs(5), |b| {
            b.find("#out").text() == "hello vprov"
        });

        let out = browser.find("#out");
        let text = browser.execute(
            "return arguments[0].textContent + arguments[1];",
            vec![out.to_arg(), json!("!")],
        );
        assert_eq!(text, json!("hello vprov!"));
        browser.auto_confirm();
        assert_eq!(
            browser.execute("return confirm('sure?');", vec![]),
            json!(true)
        );

        let dir = tempfile::tempdir().unwrap();
        let shot = dir.path().join("page.png");
        browser.screenshot(&shot);
        let png = std::fs::read(&shot).unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");

        let pgid = browser.driver.child.id();
        drop(browser);
        assert!(
            !signal_group(pgid, "0"),
            "chromedriver's process group survived the Browser"
        );
    }

    #[test]
    #[should_panic(expected = "no element matches \"#absent\"")]
    fn webdriver_find_times_out_naming_the_selector() {
        let url = page_server();
        let browser = Browser::start();
        browser.goto(&url);
        browser.wait_for("#absent", Duration::from_millis(300));
    }
}
