//! `alert-syslog`: an alert sink sending each alert as an RFC 5424 syslog message, over
//! UDP (one datagram per alert) or TCP (RFC 6587 octet-counted frames on one kept-open
//! connection, reopened after an error).
//!
//! Configuration: `server = "host:port"` (required), `transport = "udp" | "tcp"`
//! (default udp), `facility` (default `local0`; also `daemon`, `auth`, `user`,
//! `local1`…`local7`), `timeout_ms` (default 5000, TCP connect and write).
//!
//! A message: `<PRI>1 TIMESTAMP HOST vprov PROCID MSGID - MESSAGE`, with the alert's
//! severity mapped to syslog's (info 6, warning 4, error 3, critical 2), the alert's
//! source as MSGID, and PID, device and address appended to the message text.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use vprov_sdk::{AlertEvent, AlertSink, Context, Plugin, PluginError, PluginKinds, Severity};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    server: String,
    transport: Option<String>,
    facility: Option<String>,
    timeout_ms: Option<u64>,
}

enum Transport {
    Udp(UdpSocket),
    /// The open connection, if any.
    Tcp(Mutex<Option<TcpStream>>),
}

pub struct AlertSyslog {
    server: SocketAddr,
    facility: u8,
    timeout: Duration,
    host: String,
    transport: Transport,
}

fn facility_code(name: &str) -> Option<u8> {
    Some(match name {
        "user" => 1,
        "daemon" => 3,
        "auth" => 4,
        "local0" => 16,
        "local1" => 17,
        "local2" => 18,
        "local3" => 19,
        "local4" => 20,
        "local5" => 21,
        "local6" => 22,
        "local7" => 23,
        _ => return None,
    })
}

fn syslog_severity(s: Severity) -> u8 {
    match s {
        Severity::INFO => 6,
        Severity::WARNING => 4,
        Severity::CRITICAL => 2,
        _ => 3,
    }
}

/// RFC 5424 header fields: printable US-ASCII without spaces, at most `max` long,
/// `-` when empty.
fn header_field(value: &str, max: usize) -> String {
    let clean: String = value
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(max)
        .collect();
    if clean.is_empty() {
        "-".into()
    } else {
        clean
    }
}

impl Plugin for AlertSyslog {
    const NAME: &'static str = "alert-syslog";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const DESCRIPTION: &'static str = "alerts as RFC 5424 syslog messages (UDP or TCP)";
    const KINDS: PluginKinds = PluginKinds::ALERT_SINK;

    fn new(context: Context) -> Result<Self, PluginError> {
        let config: Config = context.config()?;
        let server = config
            .server
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                PluginError::invalid_config(format!(
                    "server {:?} is not a reachable host:port",
                    config.server
                ))
            })?;
        let facility_name = config.facility.as_deref().unwrap_or("local0");
        let facility = facility_code(facility_name).ok_or_else(|| {
            PluginError::invalid_config(format!(
                "facility {facility_name:?} is not one of user, daemon, auth, local0-local7"
            ))
        })?;
        let transport = match config.transport.as_deref() {
            None | Some("udp") => {
                let local: SocketAddr = if server.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    ([0u16; 8], 0).into()
                };
                let socket = UdpSocket::bind(local)
                    .map_err(|e| PluginError::failed(format!("cannot open a UDP socket: {e}")))?;
                Transport::Udp(socket)
            }
            Some("tcp") => Transport::Tcp(Mutex::new(None)),
            Some(other) => {
                return Err(PluginError::invalid_config(format!(
                    "transport must be udp or tcp, not {other:?}"
                )))
            }
        };
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        Ok(AlertSyslog {
            server,
            facility,
            timeout: Duration::from_millis(config.timeout_ms.unwrap_or(5000).max(1)),
            host: header_field(&host, 255),
            transport,
        })
    }

    fn alert_sink(&self) -> Option<&dyn AlertSink> {
        Some(self)
    }
}

impl AlertSyslog {
    fn message(&self, alert: &AlertEvent) -> String {
        let pri = u16::from(self.facility) * 8 + u16::from(syslog_severity(alert.severity));
        let at = Some(alert.at_rfc3339())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "-".into());
        let mut text = alert.message.to_string();
        let mut details = Vec::new();
        for (name, value) in [
            ("pid", &alert.pid),
            ("device", &alert.device_uuid),
            ("address", &alert.address),
        ] {
            if let Some(v) = value.as_ref().into_option() {
                details.push(format!("{name}={v}"));
            }
        }
        if !details.is_empty() {
            text.push_str(&format!(" ({})", details.join(", ")));
        }
        // MSG is UTF-8, announced by the BOM (RFC 5424 §6.4).
        format!(
            "<{pri}>1 {at} {} vprov {} {} - \u{feff}{text}",
            self.host,
            std::process::id(),
            header_field(&alert.source, 32),
        )
    }

    fn send_tcp(&self, slot: &Mutex<Option<TcpStream>>, frame: &[u8]) -> std::io::Result<()> {
        let mut slot = slot.lock().expect("connection lock");
        if slot.is_none() {
            let stream = TcpStream::connect_timeout(&self.server, self.timeout)?;
            stream.set_write_timeout(Some(self.timeout))?;
            *slot = Some(stream);
        }
        let result = slot.as_mut().expect("connected above").write_all(frame);
        if result.is_err() {
            // Reconnect on the next alert.
            *slot = None;
        }
        result
    }
}

impl AlertSink for AlertSyslog {
    fn deliver(&self, alert: &AlertEvent) -> Result<(), PluginError> {
        let message = self.message(alert);
        let sent = match &self.transport {
            Transport::Udp(socket) => socket.send_to(message.as_bytes(), self.server).map(drop),
            Transport::Tcp(slot) => {
                // RFC 6587 octet counting: "LEN SP MSG".
                let frame = format!("{} {message}", message.len());
                self.send_tcp(slot, frame.as_bytes())
            }
        };
        sent.map_err(|e| {
            PluginError::failed(format!("cannot send to syslog server {}: {e}", self.server))
                .retryable()
        })
    }
}

vprov_sdk::export_plugin!(AlertSyslog);

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::net::TcpListener;

    use abi_stable::std_types::ROption;
    use vprov_sdk::testing::{sample_alert, FakeHost};
    use vprov_sdk::ErrorKind;

    use super::*;

    fn sink(config: &str) -> Result<vprov_sdk::abi::PluginInstanceBox, PluginError> {
        FakeHost::default().instantiate::<AlertSyslog>(config, &std::env::temp_dir())
    }

    #[test]
    fn alerts_become_rfc5424_datagrams() {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let addr = receiver.local_addr().unwrap();
        let s = sink(&format!("server = \"{addr}\"\nfacility = \"daemon\"")).unwrap();
        let alert = AlertEvent {
            severity: Severity::WARNING,
            device_uuid: ROption::RSome("u-1".into()),
            ..sample_alert("unknown PID")
        };
        s.deliver_alert(&alert).unwrap();
        let mut buf = [0u8; 2048];
        let n = receiver.recv(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        // daemon (3) * 8 + warning (4) = 28.
        assert!(
            text.starts_with("<28>1 2025-11-24T16:00:00.123Z "),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                " vprov {} hello - \u{feff}unknown PID (device=u-1)",
                std::process::id()
            )),
            "{text}"
        );
    }

    #[test]
    fn tcp_frames_are_octet_counted() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let s = sink(&format!("server = \"{addr}\"\ntransport = \"tcp\"")).unwrap();
        s.deliver_alert(&sample_alert("one")).unwrap();
        s.deliver_alert(&sample_alert("two")).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.windows(3).filter(|w| *w == b"two").count() == 0 {
            let n = conn.read(&mut buf).unwrap();
            assert!(n > 0, "connection closed early");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8(got).unwrap();
        let (len, rest) = text.split_once(' ').unwrap();
        let first = &rest[..len.parse::<usize>().unwrap()];
        assert!(first.starts_with("<131>1 "), "{first}");
        assert!(first.ends_with("\u{feff}one"), "{first}");
    }

    #[test]
    fn bad_settings_and_an_unreachable_server_are_clear_errors() {
        for (config, needle) in [
            ("server = \"nowhere\"", "server"),
            (
                "server = \"127.0.0.1:514\"\ntransport = \"sctp\"",
                "transport",
            ),
            (
                "server = \"127.0.0.1:514\"\nfacility = \"kern\"",
                "facility",
            ),
        ] {
            let err = sink(config).err().unwrap();
            assert_eq!(err.kind, ErrorKind::INVALID_CONFIG);
            assert!(err.message.contains(needle), "{err}");
        }
        // Nobody listens on this port: the TCP connect is refused.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = sink(&format!(
            "server = \"127.0.0.1:{port}\"\ntransport = \"tcp\""
        ))
        .unwrap();
        let err = s
            .deliver_alert(&sample_alert("x"))
            .into_result()
            .unwrap_err();
        assert!(err.retryable);
        assert!(
            err.message.contains("cannot send to syslog server"),
            "{err}"
        );
    }
}
