//! Configuration checks and the deployment's failure paths that need no SSH server
//! (the end-to-end tests in `tests/tests/agents.rs` run against a real sshd).

use std::os::unix::fs::PermissionsExt;

use abi_stable::std_types::ROption;
use vprov_sdk::testing::{sample_device, FakeHost};
use vprov_sdk::ErrorKind;

use super::*;

/// A directory with a package and a private identity file.
fn files() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("agent.sh"), "echo installed\n").unwrap();
    let key = dir.path().join("id");
    std::fs::write(&key, "not a key").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    dir
}

fn config(profile_extra: &str, top: &str) -> String {
    format!(
        "{top}\n[profiles.lab]\npackage = \"agent.sh\"\nuser = \"deploy\"\nidentity_file = \"id\"\n\
         command = \"sh {{package}} {{device_uuid}}\"\n{profile_extra}\n"
    )
}

fn instantiate(dir: &tempfile::TempDir, text: &str) -> Result<PluginInstanceHandle, PluginError> {
    FakeHost::default().instantiate::<PostAgentSsh>(text, dir.path())
}

type PluginInstanceHandle = vprov_sdk::abi::PluginInstanceBox;

fn config_error(dir: &tempfile::TempDir, text: &str) -> String {
    let err = instantiate(dir, text)
        .err()
        .expect("config should be refused");
    assert_eq!(err.kind, ErrorKind::INVALID_CONFIG, "{err}");
    err.message.to_string()
}

#[test]
fn a_valid_profile_is_offered_and_defaults_apply() {
    let dir = files();
    let p = instantiate(&dir, &config("", "")).unwrap();
    assert_eq!(p.agent_profiles().len(), 1);
    assert_eq!(p.agent_profiles()[0], "lab");
    // Without after_provisioning, provisioning leaves the device unmanaged.
    let outcome = p
        .after_provisioning(&sample_device("u-1"))
        .into_result()
        .unwrap();
    assert_eq!(outcome.action, OutcomeAction::KEEP_UNMANAGED);
}

#[test]
fn configuration_mistakes_are_named() {
    let dir = files();
    let cases = [
        (
            config("", "").replace("{device_uuid}", "{host}"),
            "unknown placeholder {host}",
        ),
        (
            config("", "").replace("{device_uuid}", "{core_address}"),
            "core_address is not set",
        ),
        (
            config("password_file = \"id\"", ""),
            "exactly one of identity_file and password_file",
        ),
        (
            config("host_key_policy = \"known-hosts\"", ""),
            "needs known_hosts = FILE",
        ),
        (
            config("known_hosts = \"id\"", ""),
            "only used with host_key_policy",
        ),
        (config("attempts = 0", ""), "attempts must be 1 to 10"),
        (config("remote_path = \"/tmp/a b\"", ""), "remote_path"),
        (
            config("", "after_provisioning = \"nope\""),
            "after_provisioning = \"nope\": no such profile",
        ),
        (config("", "core_address = \"x; rm -rf /\""), "core_address"),
        (
            config("", "").replace("agent.sh", "missing.sh"),
            "is not a readable file",
        ),
        (String::new(), "no profiles"),
    ];
    for (text, expected) in cases {
        let message = config_error(&dir, &text);
        assert!(
            message.contains(expected),
            "{message} (expected {expected})"
        );
    }
}

#[test]
fn a_secret_file_others_can_read_is_refused() {
    let dir = files();
    std::fs::set_permissions(
        dir.path().join("id"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let message = config_error(&dir, &config("", ""));
    assert!(
        message.contains("readable by other users (mode 644)"),
        "{message}"
    );
}

#[test]
fn placeholders_expand_to_their_values() {
    assert_eq!(
        placeholders("a {package} {device_uuid} {package}").unwrap(),
        ["package", "device_uuid", "package"]
    );
    assert!(placeholders("a {package").is_err());
    assert_eq!(
        expand(
            "run {package} --id {device_uuid} --token {enroll_token}",
            &[
                ("package", "/tmp/a"),
                ("device_uuid", "u-1"),
                ("enroll_token", "t")
            ]
        ),
        "run /tmp/a --id u-1 --token t"
    );
    assert!(shell_safe("C:/Windows/Temp/agent.msi"));
    assert!(!shell_safe("a;b") && !shell_safe("$(x)") && !shell_safe(""));
}

#[test]
fn an_unreachable_device_fails_at_connect_after_every_attempt() {
    let dir = files();
    let port = vprov_sdk::testing::closed_port();
    let host = FakeHost::default();
    let text = config(
        &format!("port = {port}\nattempts = 2\nretry_delay_ms = 10"),
        "after_provisioning = \"lab\"",
    )
    .replace("{device_uuid}", "{device_uuid} {enroll_token}");
    let p = host.instantiate::<PostAgentSsh>(&text, dir.path()).unwrap();
    let err = p
        .deploy_agent(&sample_device("u-1"), ROption::RNone)
        .into_result()
        .unwrap_err();
    assert!(
        err.message.contains("step connect failed") && err.message.contains("after 2 attempts"),
        "{err}"
    );
    assert!(
        err.message.contains("agent profile lab on device u-1"),
        "{err}"
    );
    // The token was issued once, for this deployment.
    assert_eq!(host.tokens.lock().unwrap().len(), 1);
    assert!(host
        .logged()
        .iter()
        .any(|l| l.contains("attempt 1 of 2 failed")));
}
