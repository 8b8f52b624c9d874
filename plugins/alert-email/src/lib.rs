//! `alert-email`: an alert sink mailing alerts over SMTP with STARTTLS (lettre, TLS
//! through rustls). A burst of alerts becomes one mail: the first alert starts a
//! batch window, and everything raised until it closes (or until `max_batch` alerts)
//! goes out together, so a hello flood cannot flood an inbox.
//!
//! Configuration:
//! - `server = "host:port"` (required), `from` and `to = [...]` (required);
//! - `starttls = "required" | "off"` (default required; `off` only for a relay on the
//!   same host), `ca_file` (PEM: trust a private CA instead of the public roots);
//! - `username` and `password_file` (optional, SMTP AUTH after STARTTLS);
//! - `batch_ms` (default 10000), `max_batch` (default 100), `timeout_ms` (default
//!   10000), `subject_prefix` (default `[vprov]`).
//!
//! Delivery happens on the instance's own thread, so the core's call returns at once;
//! a mail that cannot be sent is reported back as an alert (which this sink, by the
//! core's rule, does not receive again).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{Message, SmtpTransport, Transport};
use serde::Deserialize;
use vprov_sdk::{AlertEvent, AlertSink, Context, Host, Plugin, PluginError, PluginKinds, Severity};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    server: String,
    from: String,
    to: Vec<String>,
    starttls: Option<String>,
    ca_file: Option<String>,
    username: Option<String>,
    password_file: Option<String>,
    batch_ms: Option<u64>,
    max_batch: Option<usize>,
    timeout_ms: Option<u64>,
    subject_prefix: Option<String>,
}

/// Alerts waiting for the mail thread, and whether the instance is stopping.
#[derive(Default)]
struct Queue {
    alerts: Vec<String>,
    worst: Option<u8>,
    stopping: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

pub struct AlertEmail {
    shared: Arc<Shared>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
    max_batch: usize,
}

/// What the mail thread needs.
struct Mailer {
    transport: SmtpTransport,
    from: Mailbox,
    to: Vec<Mailbox>,
    prefix: String,
    batch: Duration,
    max_batch: usize,
    host: Host,
}

fn invalid(what: &str, e: impl std::fmt::Display) -> PluginError {
    PluginError::invalid_config(format!("{what}: {e}"))
}

impl Plugin for AlertEmail {
    const NAME: &'static str = "alert-email";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "alerts by e-mail (SMTP, STARTTLS), bursts batched";
    const KINDS: PluginKinds = PluginKinds::ALERT_SINK;

    fn new(context: Context) -> Result<Self, PluginError> {
        let config: Config = context.config()?;
        let (host, port) = config
            .server
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| invalid("server", format!("{:?} is not host:port", config.server)))?;
        let from: Mailbox = config.from.parse().map_err(|e| invalid("from", e))?;
        if config.to.is_empty() {
            return Err(invalid("to", "name at least one recipient"));
        }
        let to = config
            .to
            .iter()
            .map(|t| t.parse::<Mailbox>().map_err(|e| invalid("to", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let tls = match config.starttls.as_deref() {
            None | Some("required") => {
                let mut params = TlsParameters::builder(host.clone());
                if let Some(ca) = &config.ca_file {
                    let path = context.resolve(ca);
                    let pem = std::fs::read(&path).map_err(|e| invalid("ca_file", e))?;
                    params = params.add_root_certificate(
                        Certificate::from_pem(&pem).map_err(|e| invalid("ca_file", e))?,
                    );
                }
                Tls::Required(params.build().map_err(|e| invalid("starttls", e))?)
            }
            Some("off") => Tls::None,
            Some(other) => {
                return Err(invalid(
                    "starttls",
                    format!("{other:?} is not required or off"),
                ))
            }
        };
        let mut builder = SmtpTransport::builder_dangerous(host)
            .port(port)
            .tls(tls)
            .timeout(Some(Duration::from_millis(
                config.timeout_ms.unwrap_or(10_000),
            )));
        if let Some(user) = config.username {
            let path = config
                .password_file
                .ok_or_else(|| invalid("password_file", "needed with username"))?;
            let password = std::fs::read_to_string(context.resolve(path))
                .map_err(|e| invalid("password_file", e))?;
            builder = builder.credentials(Credentials::new(user, password.trim().to_string()));
        }
        let max_batch = config.max_batch.unwrap_or(100).max(1);
        let mailer = Mailer {
            transport: builder.build(),
            from,
            to,
            prefix: config.subject_prefix.unwrap_or_else(|| "[vprov]".into()),
            batch: Duration::from_millis(config.batch_ms.unwrap_or(10_000)),
            max_batch,
            host: context.host,
        };
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let worker = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("alert-email {}", context.instance_name))
                .spawn(move || mailer.run(&shared))
                .map_err(|e| PluginError::failed(format!("cannot start the mail thread: {e}")))?
        };
        Ok(AlertEmail {
            shared,
            worker: Mutex::new(Some(worker)),
            max_batch,
        })
    }

    fn alert_sink(&self) -> Option<&dyn AlertSink> {
        Some(self)
    }

    /// Sends what is queued, then stops the mail thread.
    fn shutdown(&self) {
        self.shared.queue.lock().expect("queue").stopping = true;
        self.shared.wake.notify_all();
        if let Some(worker) = self.worker.lock().expect("worker").take() {
            let _ = worker.join();
        }
    }
}

fn line(alert: &AlertEvent) -> String {
    let at = alert.at_rfc3339();
    let mut text = format!(
        "{at} {} [{}] {}",
        alert.severity.as_str(),
        alert.source,
        alert.message
    );
    for (name, value) in [
        ("PID", &alert.pid),
        ("device", &alert.device_uuid),
        ("address", &alert.address),
    ] {
        if let Some(v) = value.as_ref().into_option() {
            text.push_str(&format!("\n    {name}: {v}"));
        }
    }
    text
}

impl AlertSink for AlertEmail {
    fn deliver(&self, alert: &AlertEvent) -> Result<(), PluginError> {
        let mut queue = self.shared.queue.lock().expect("queue");
        if queue.alerts.len() >= self.max_batch * 10 {
            return Err(PluginError::failed(
                "the mail queue is full (the SMTP server is not keeping up)",
            )
            .retryable());
        }
        queue.alerts.push(line(alert));
        queue.worst = queue.worst.max(Some(alert.severity.0));
        self.shared.wake.notify_all();
        Ok(())
    }
}

impl Mailer {
    fn run(self, shared: &Shared) {
        loop {
            let (batch, worst, stopping) = {
                let mut queue = shared.queue.lock().expect("queue");
                while queue.alerts.is_empty() && !queue.stopping {
                    queue = shared.wake.wait(queue).expect("queue");
                }
                // The batch window: collect until it closes, it is full, or we stop.
                let deadline = Instant::now() + self.batch;
                while !queue.stopping && queue.alerts.len() < self.max_batch {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    queue = shared.wake.wait_timeout(queue, left).expect("queue").0;
                }
                let n = queue.alerts.len().min(self.max_batch);
                let batch: Vec<String> = queue.alerts.drain(..n).collect();
                let worst = if queue.alerts.is_empty() {
                    queue.worst.take()
                } else {
                    queue.worst
                };
                (batch, worst, queue.stopping)
            };
            if !batch.is_empty() {
                self.send(&batch, worst);
            }
            if stopping && shared.queue.lock().expect("queue").alerts.is_empty() {
                return;
            }
        }
    }

    fn send(&self, batch: &[String], worst: Option<u8>) {
        let severity = Severity(worst.unwrap_or(0)).as_str();
        let subject = if batch.len() == 1 {
            format!("{} {severity}: {}", self.prefix, first_line(&batch[0]))
        } else {
            format!("{} {} alerts (worst: {severity})", self.prefix, batch.len())
        };
        let mut message = Message::builder().from(self.from.clone()).subject(subject);
        for to in &self.to {
            message = message.to(to.clone());
        }
        let body = format!("{}\n", batch.join("\n\n"));
        let sent = message
            .body(body)
            .map_err(|e| e.to_string())
            .and_then(|m| self.transport.send(&m).map(drop).map_err(|e| e.to_string()));
        if let Err(e) = sent {
            let text = format!("cannot mail {} alerts: {e}", batch.len());
            self.host.error(&text);
            let _ = self.host.raise_alert(Severity::ERROR, &text, None);
        }
    }
}

fn first_line(entry: &str) -> &str {
    entry.lines().next().unwrap_or_default()
}

vprov_sdk::export_plugin!(AlertEmail);

#[cfg(test)]
mod tests {
    use vprov_sdk::testing::{sample_alert, FakeHost};
    use vprov_sdk::ErrorKind;

    use super::*;

    #[test]
    fn an_alert_becomes_a_readable_line() {
        let text = line(&sample_alert("unknown PID"));
        assert_eq!(text, "2025-11-24T16:00:00.123Z error [hello] unknown PID");
    }

    #[test]
    fn settings_are_checked_by_name() {
        let host = FakeHost::default();
        for (config, needle) in [
            (
                "server = \"nohost\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]",
                "server",
            ),
            (
                "server = \"h:25\"\nfrom = \"not an address\"\nto = [\"d@e.f\"]",
                "from",
            ),
            ("server = \"h:25\"\nfrom = \"a@b.c\"\nto = []", "to"),
            (
                "server = \"h:25\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]\nstarttls = \"maybe\"",
                "starttls",
            ),
            (
                "server = \"h:25\"\nfrom = \"a@b.c\"\nto = [\"d@e.f\"]\nusername = \"u\"",
                "password_file",
            ),
        ] {
            let err = host
                .instantiate::<AlertEmail>(config, &std::env::temp_dir())
                .err()
                .unwrap();
            assert_eq!(err.kind, ErrorKind::INVALID_CONFIG);
            assert!(err.message.contains(needle), "{config}: {err}");
        }
    }

    #[test]
    fn an_unreachable_server_is_reported_back_as_an_alert() {
        let port = vprov_sdk::testing::closed_port();
        let host = FakeHost::default();
        let sink = host
            .instantiate::<AlertEmail>(
                &format!("server = \"127.0.0.1:{port}\"\nfrom = \"vprov@example.org\"\nto = [\"it@example.org\"]\nstarttls = \"off\"\nbatch_ms = 10\ntimeout_ms = 1000"),
                &std::env::temp_dir(),
            )
            .unwrap();
        sink.deliver_alert(&sample_alert("x")).unwrap();
        sink.shutdown();
        let raised = host.alerts.lock().unwrap();
        assert_eq!(raised.len(), 1);
        assert!(
            raised[0].message.contains("cannot mail 1 alerts"),
            "{}",
            raised[0].message
        );
    }
}
