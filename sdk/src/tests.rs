//! The guarded adapter, redaction and manifest helpers, through the fake host.

use abi_stable::std_types::{ROption, RString};
use serde::Deserialize;

use crate::abi;
use crate::testing::FakeHost;
use crate::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SinkConfig {
    panic_on: Option<String>,
}

struct Sink {
    panic_on: Option<String>,
    host: Host,
}

impl Plugin for Sink {
    const NAME: &'static str = "sink";
    const VERSION: &'static str = "1.2.3";
    const DESCRIPTION: &'static str = "test sink";
    const KINDS: PluginKinds = PluginKinds::ALERT_SINK;

    fn new(context: Context) -> Result<Self, PluginError> {
        let config: SinkConfig = context.config()?;
        if config.panic_on.as_deref() == Some("new") {
            panic!("told to panic in new");
        }
        Ok(Sink {
            panic_on: config.panic_on,
            host: context.host,
        })
    }

    fn alert_sink(&self) -> Option<&dyn AlertSink> {
        Some(self)
    }
}

impl AlertSink for Sink {
    fn deliver(&self, alert: &AlertEvent) -> Result<(), PluginError> {
        if self.panic_on.as_deref() == Some("deliver") {
            panic!("told to panic on {}", alert.message);
        }
        self.host.info(&format!("got {}", alert.message));
        self.host.raise_alert(
            Severity::WARNING,
            "echo",
            alert.device_uuid.as_ref().map(|u| u.as_str()).into_option(),
        )
    }
}

fn alert(message: &str) -> AlertEvent {
    AlertEvent {
        device_uuid: ROption::RSome("u-1".into()),
        ..testing::sample_alert(message)
    }
}

fn data_dir() -> std::path::PathBuf {
    std::env::temp_dir()
}

#[test]
fn a_sink_delivers_and_uses_the_host() {
    let host = FakeHost::default();
    let sink = host.instantiate::<Sink>("", &data_dir()).unwrap();
    assert!(sink.deliver_alert(&alert("a1")).is_ok());
    assert_eq!(host.logged(), ["got a1"]);
    let raised = host.alerts.lock().unwrap();
    assert_eq!(raised[0].message, "echo");
    assert_eq!(raised[0].device_uuid, ROption::RSome(RString::from("u-1")));
}

#[test]
fn a_panic_becomes_an_error_in_every_call() {
    let host = FakeHost::default();
    let err = host
        .instantiate::<Sink>("panic_on = \"new\"", &data_dir())
        .err()
        .unwrap();
    assert_eq!(err.kind, ErrorKind::PANICKED);
    assert!(err.message.contains("told to panic in new"), "{err}");

    let sink = host
        .instantiate::<Sink>("panic_on = \"deliver\"", &data_dir())
        .unwrap();
    let err = sink
        .deliver_alert(&alert("boom"))
        .into_result()
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::PANICKED);
    assert!(err.message.contains("told to panic on boom"), "{err}");
    // Still callable afterwards: the panic did not poison the adapter.
    assert!(sink.deliver_alert(&alert("again")).is_err());
}

#[test]
fn a_bad_config_is_an_invalid_config_error_naming_the_key() {
    let err = FakeHost::default()
        .instantiate::<Sink>("colour = 1", &data_dir())
        .err()
        .unwrap();
    assert_eq!(err.kind, ErrorKind::INVALID_CONFIG);
    assert!(err.message.contains("colour"), "{err}");
}

#[test]
fn kinds_not_provided_answer_unsupported() {
    let sink = FakeHost::default()
        .instantiate::<Sink>("", &data_dir())
        .unwrap();
    assert!(sink.export_formats().is_empty());
    let err = sink
        .after_provisioning(&testing::sample_device("u"))
        .into_result()
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::UNSUPPORTED);
    assert!(sink.agent_profiles().is_empty());
    let err = sink
        .deploy_agent(&testing::sample_device("u"), ROption::RNone)
        .into_result()
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::UNSUPPORTED);
}

#[test]
fn the_fake_host_records_host_keys_on_first_use() {
    let host = Host::new(FakeHost::default().services());
    let first = host.check_host_key("u", "ssh-ed25519 AAAA").unwrap();
    assert_eq!(first.verdict, HostKeyVerdict::FIRST_USE);
    let again = host.check_host_key("u", "ssh-ed25519 AAAA").unwrap();
    assert_eq!(again.verdict, HostKeyVerdict::MATCHES);
    let other = host.check_host_key("u", "ssh-ed25519 BBBB").unwrap();
    assert_eq!(other.verdict, HostKeyVerdict::CHANGED);
    assert_eq!(host.issue_enroll_token("u", "p").unwrap(), "token-1");
}

#[test]
fn the_manifest_carries_the_sdk_version_and_kinds() {
    let m = plugin::manifest_of::<Sink>();
    assert_eq!(m.name, "sink");
    assert_eq!(m.version, "1.2.3");
    assert_eq!(m.sdk_version, abi::SDK_VERSION);
    assert_eq!(m.kinds.names(), ["alert_sink"]);
    let all = PluginKinds::KEY_EXPORTER
        .union(PluginKinds::POST_PROVISION)
        .union(PluginKinds(1 << 7));
    assert_eq!(
        all.names(),
        ["key_exporter", "post_provision", "unknown(0x80)"]
    );
    assert!(!PluginKinds::NONE.contains(PluginKinds::NONE));
}

#[test]
fn secrets_print_redacted() {
    let pps = "NKLDG5DCRRNQE9YZZIJL7LFLVJED69XJ";
    let request = ExportRequest {
        format: "csv".into(),
        options_json: "{}".into(),
        batch_id: 1,
        batch_comment: RString::new(),
        batch_created_unix_ms: 0,
        server_address: "10.0.0.1".into(),
        server_port: 9971,
        provisioning_password: ROption::RSome("P@ssw0rd-secret".into()),
        destination: ROption::RNone,
        pairs: vec![KeyPair {
            pid: "0000037M".into(),
            pps: pps.into(),
        }]
        .into(),
    };
    let shown = format!("{request:?} {:?}", request.pairs[0]);
    assert!(!shown.contains(pps), "{shown}");
    assert!(!shown.contains("P@ssw0rd"), "{shown}");
    assert!(shown.contains("0000037M"), "{shown}");
}
