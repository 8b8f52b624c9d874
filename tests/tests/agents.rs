//! End to end: deploying a management agent over SSH with the post-agent-ssh plugin,
//! after provisioning and on request, against a real OpenSSH server listening on the
//! simulated device's own loopback address.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde_json::Value;
use vprov_core::store::{Store, StoreOptions};
use vprov_tests::rig::Rig;
use vprov_tests::sshd::SshServer;

/// The agent "package": a script that records its arguments in `ran.txt` beside it
/// and exits with the status named by its fifth argument (0 when absent).
const AGENT: &str = "#!/bin/sh\nout=\"$(dirname \"$0\")/ran.txt\"\necho \"$@\" >> \"$out\"\n\
                     if [ -n \"$5\" ] && [ \"$5\" != 0 ]; then echo \"enrolling $3 failed\" >&2; exit \"$5\"; fi\n\
                     echo installed\n";

/// Where the test keeps the agent package, what the device receives, and what ran.
struct AgentFiles {
    dir: tempfile::TempDir,
}

impl AgentFiles {
    fn new() -> AgentFiles {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("agent.sh"), AGENT).unwrap();
        std::fs::create_dir(dir.path().join("device")).unwrap();
        AgentFiles { dir }
    }

    fn package(&self) -> PathBuf {
        self.dir.path().join("agent.sh")
    }

    /// Where the device's copy goes (the "device" is this machine).
    fn remote(&self) -> PathBuf {
        self.dir.path().join("device/agent.sh")
    }

    /// The install command's runs, one line of arguments each.
    fn runs(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("device/ran.txt"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// One profile table for `plugins.toml`.
fn profile(name: &str, sshd: &SshServer, files: &AgentFiles, exit: u8, extra: &str) -> String {
    format!(
        "[instances.agents.config.profiles.{name}]\n\
         package = \"{}\"\nremote_path = \"{}\"\n\
         command = \"sh {{package}} {{core_address}} {{device_uuid}} {{enroll_token}} {{profile}} {exit}\"\n\
         user = \"{}\"\nport = {}\nconnect_timeout_ms = 5000\ncommand_timeout_ms = 20000\n\
         attempts = 2\nretry_delay_ms = 100\n{extra}\n",
        files.package().display(),
        files.remote().display(),
        sshd.user,
        sshd.addr.port(),
    )
}

fn identity(key: &Path) -> String {
    format!("identity_file = \"{}\"", key.display())
}

/// Installs the plugin and configures the `agents` instance.
fn configure(rig: &Rig, top: &str, profiles: &[String]) {
    rig.s.install_plugin("post_agent_ssh", "post-agent-ssh.so");
    let text = format!(
        "[instances.agents]\nplugin = \"post-agent-ssh\"\ncall_timeout_ms = 120000\n\
         [instances.agents.config]\ncore_address = \"127.0.0.1:8443\"\n{top}\n{}",
        profiles.join("\n")
    );
    std::fs::write(rig.s.data_dir().join("plugins/plugins.toml"), text).unwrap();
}

fn device<'a>(devices: &'a [Value], uuid: &str) -> &'a Value {
    devices.iter().find(|d| d["uuid"] == uuid).unwrap()
}

fn store(rig: &Rig) -> Store {
    Store::open(&StoreOptions::new(rig.s.data_dir())).unwrap()
}

#[test]
fn an_agent_is_deployed_after_provisioning_and_the_device_managed_with_it() {
    let rig = Rig::new(1, "");
    let sshd = SshServer::start(Ipv4Addr::new(127, 61, 0, 1));
    let files = AgentFiles::new();
    configure(
        &rig,
        "after_provisioning = \"lab\"",
        &[profile(
            "lab",
            &sshd,
            &files,
            0,
            &identity(&sshd.client_key),
        )],
    );
    let (_sim, uuid) = rig.provision_one(61, |d| d["state"] == "managed");

    let devices = rig.devices();
    let d = device(&devices, &uuid);
    assert_eq!(d["management_mode"], "agent");
    assert_eq!(d["agent_profile"], "lab");
    // Trust on first use: the host key sshd presented is now the device's.
    assert_eq!(d["ssh_host_key"], sshd.host_fingerprint());

    // The package arrived whole and the install command got every placeholder.
    assert_eq!(std::fs::read_to_string(files.remote()).unwrap(), AGENT);
    let runs = files.runs();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let args: Vec<&str> = runs[0].split(' ').collect();
    assert_eq!(args[0], "127.0.0.1:8443");
    assert_eq!(args[1], uuid);
    assert_eq!(args[2].len(), 43, "a 256-bit base64url token: {}", args[2]);
    assert_eq!(args[3], "lab");
    // The store holds only the token's hash, and that hash matches.
    assert!(store(&rig).enroll_token_matches(&uuid, args[2]).unwrap());
    assert!(!rig
        .s
        .store_bytes()
        .windows(43)
        .any(|w| w == args[2].as_bytes()));

    let audit = rig.json(&["audit", "list", "--format", "json"]);
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|e| (e["actor"].as_str().unwrap(), e["action"].as_str().unwrap()))
        .collect();
    for expected in [
        ("plugin:agents", "device.host_key_recorded"),
        ("plugin:agents", "agent.enroll_token_issued"),
        ("plugin:agents", "device.manage"),
    ] {
        assert!(actions.contains(&expected), "{expected:?} in {actions:?}");
    }
}

#[test]
fn an_agent_is_deployed_on_request_and_a_changed_host_key_stops_it() {
    let rig = Rig::new(1, "");
    let mut sshd = SshServer::start(Ipv4Addr::new(127, 62, 0, 1));
    let files = AgentFiles::new();
    configure(
        &rig,
        "",
        &[profile(
            "lab",
            &sshd,
            &files,
            0,
            &identity(&sshd.client_key),
        )],
    );
    // Without after_provisioning, a new device stays unmanaged.
    let (_sim, uuid) = rig.provision_one(62, |_| true);
    assert_eq!(rig.devices()[0]["state"], "unmanaged");
    assert!(files.runs().is_empty());

    let err = rig
        .s
        .run(&["devices", "manage", &uuid, "--agent", "--profile", "nope"])
        .fails();
    assert!(
        err.contains("no agent profile nope; configured profiles: lab"),
        "{err}"
    );
    let out = rig.s.run(&["devices", "manage", &uuid, "--agent"]).ok();
    assert!(out.contains("agent deployed (profile lab)"), "{out}");
    let devices = rig.devices();
    assert_eq!(device(&devices, &uuid)["management_mode"], "agent");
    assert_eq!(files.runs().len(), 1);
    let first_key = sshd.host_fingerprint();
    rig.s.run(&["devices", "unmanage", &uuid]).ok();

    // The same address now answers with another host key: nothing is sent to it.
    sshd.restart_with_new_host_key();
    let err = rig
        .s
        .run(&["devices", "manage", &uuid, "--agent", "--profile", "lab"])
        .fails();
    assert!(err.contains("step host key failed"), "{err}");
    assert!(err.contains(&first_key), "{err}");
    assert!(
        err.contains(&format!("vprov devices forget-host-key {uuid}")),
        "{err}"
    );
    assert_eq!(files.runs().len(), 1, "the install command ran again");
    let devices = rig.devices();
    assert_eq!(device(&devices, &uuid)["state"], "unmanaged");
    assert_eq!(device(&devices, &uuid)["ssh_host_key"], first_key);
    let alert = rig.wait_for_alert("step host key failed");
    assert_eq!(alert["source"], "agent");
    assert_eq!(alert["device_uuid"], uuid.as_str());

    // An admin who knows the host was reinstalled forgets the old key.
    let out = rig.s.run(&["devices", "forget-host-key", &uuid]).ok();
    assert!(out.contains(&first_key), "{out}");
    rig.s.run(&["devices", "manage", &uuid, "--agent"]).ok();
    let devices = rig.devices();
    assert_eq!(device(&devices, &uuid)["state"], "managed");
    assert_eq!(
        device(&devices, &uuid)["ssh_host_key"],
        sshd.host_fingerprint()
    );
    assert_eq!(files.runs().len(), 2);
}

#[test]
fn failed_deployments_name_their_step_and_leave_the_device_unmanaged() {
    let rig = Rig::new(1, "");
    let sshd = SshServer::start(Ipv4Addr::new(127, 63, 0, 1));
    let files = AgentFiles::new();
    let dir = files.dir.path();
    let listed = dir.join("known_hosts");
    std::fs::write(&listed, format!("{}\n", sshd.known_hosts_line())).unwrap();
    // A known_hosts file naming this address with some other ed25519 key.
    let wrong = dir.join("known_hosts.wrong");
    let stranger = std::fs::read_to_string(sshd.stranger_key.with_extension("pub")).unwrap();
    let stranger: Vec<&str> = stranger.split_whitespace().take(2).collect();
    std::fs::write(
        &wrong,
        format!(
            "[{}]:{} {}\n",
            sshd.addr.ip(),
            sshd.addr.port(),
            stranger.join(" ")
        ),
    )
    .unwrap();
    let key = identity(&sshd.client_key);
    configure(
        &rig,
        "after_provisioning = \"failing\"",
        &[
            profile("failing", &sshd, &files, 3, &key),
            profile("stranger", &sshd, &files, 0, &identity(&sshd.stranger_key)),
            profile(
                "listed",
                &sshd,
                &files,
                0,
                &format!(
                    "{key}\nhost_key_policy = \"known-hosts\"\nknown_hosts = \"{}\"",
                    listed.display()
                ),
            ),
            profile(
                "mislisted",
                &sshd,
                &files,
                0,
                &format!(
                    "{key}\nhost_key_policy = \"known-hosts\"\nknown_hosts = \"{}\"",
                    wrong.display()
                ),
            ),
        ],
    );

    // After provisioning: the install command fails, so the device stays unmanaged.
    let failed = |a: &Value| {
        a["message"]
            .as_str()
            .unwrap()
            .contains("step install failed")
    };
    let (_sim, uuid) = rig.provision_one(63, |_| rig.alerts().iter().any(failed));
    let alert = rig.wait_for_alert("step install failed");
    let message = alert["message"].as_str().unwrap();
    assert!(
        message.contains("post-provision action failed"),
        "{message}"
    );
    assert!(
        message.contains("exited with status 3: enrolling <enroll token> failed"),
        "{message}"
    );
    let token = files.runs()[0].split(' ').nth(2).unwrap().to_string();
    assert!(!message.contains(&token), "the token leaked: {message}");
    assert_eq!(rig.devices()[0]["state"], "unmanaged");

    let manage = |profile: &str| {
        rig.s
            .run(&["devices", "manage", &uuid, "--agent", "--profile", profile])
    };
    let err = manage("stranger").fails();
    assert!(
        err.contains("step authenticate failed: the device refused public key authentication"),
        "{err}"
    );
    let err = manage("mislisted").fails();
    assert!(
        err.contains("step host key failed") && err.contains("differs from line 1"),
        "{err}"
    );
    let err = manage("failing").fails();
    assert!(err.contains("exited with status 3"), "{err}");
    assert_eq!(rig.devices()[0]["state"], "unmanaged");
    let alerts = rig.alerts();
    for step in ["authenticate", "host key", "install"] {
        assert!(
            alerts.iter().any(|a| a["source"] == "agent"
                && a["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("step {step} failed"))),
            "no agent alert for step {step}"
        );
    }

    // Verified against the admin's known_hosts file, the deployment goes through.
    manage("listed").ok();
    let devices = rig.devices();
    assert_eq!(devices[0]["state"], "managed");
    assert_eq!(devices[0]["agent_profile"], "listed");
}
