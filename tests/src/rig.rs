//! A provisioning rig for end-to-end tests: a sandbox store with keys and a
//! provisioning password, a fast-test server configuration, and the simulator's
//! runtime; plus the queries tests make through the `vprov` CLI.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use vprov_core::keys::{Pid, Pps};

use crate::sim::{address_for, DeviceReport, DeviceSpec, KeyPool, SimConfig, Simulator};
use crate::{eventually, Sandbox, Server};

pub const MEBX_PASSWORD: &str = "Mebx!Passw0rd";

/// A store with keys and a provisioning password, a server configuration for fast
/// tests, and a tokio runtime for the simulator.
pub struct Rig {
    pub s: Sandbox,
    pub keys: Vec<(Pid, Pps)>,
    /// The server configuration file.
    pub config: PathBuf,
    pub device_port: u16,
    pub rt: tokio::runtime::Runtime,
}

impl Rig {
    pub fn new(keys: u32, extra_config: &str) -> Rig {
        Rig::on(Sandbox::default(), keys, extra_config)
    }

    /// [`Rig::new`] on a given sandbox (e.g. one on PostgreSQL: [`Sandbox::on_store`]).
    pub fn on(s: Sandbox, keys: u32, extra_config: &str) -> Rig {
        s.run(&["keys", "generate", "--count", &keys.to_string()])
            .ok();
        s.run_with_stdin(
            &["password", "set", "--stdin"],
            &format!("{MEBX_PASSWORD}\n"),
        )
        .ok();
        let listed = s
            .run(&["keys", "list", "--reveal", "--format", "json"])
            .json();
        let keys = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    k["pid"].as_str().unwrap().parse().unwrap(),
                    k["pps"].as_str().unwrap().parse().unwrap(),
                )
            })
            .collect();
        let config = s.dir.path().join("vprov.toml");
        let device_port = crate::sim::free_device_port();
        // Fast-test settings, unless `extra_config` sets them itself; the device port
        // also serves CLI commands that talk to devices (`run_configured`).
        let mut text = format!("[provisioning]\ndevice_port = {device_port}\n");
        for default in [
            "commit_wait_ms = 100",
            "confirm_timeout_ms = 15000",
            "step_timeout_ms = 5000",
            "connect_timeout_ms = 3000",
        ] {
            let key = default.split(' ').next().unwrap();
            if !extra_config.contains(key) {
                text.push_str(default);
                text.push('\n');
            }
        }
        text.push_str(extra_config);
        std::fs::write(&config, text).unwrap();
        Rig {
            s,
            keys,
            config,
            device_port,
            rt: tokio::runtime::Runtime::new().unwrap(),
        }
    }

    pub fn serve(&self) -> Server {
        self.serve_on("127.0.0.1:0")
    }

    /// A (re)start on a given hello address: simulated devices keep saying hello to
    /// the address they were given. The device port comes from the rig's config.
    pub fn serve_on(&self, listen: &str) -> Server {
        self.s
            .serve(listen, &["--config", self.config.to_str().unwrap()])
    }

    /// One of several `vprov serve` nodes on the rig's store, named `name`, taking
    /// hellos on `ip` (and its API on 127.0.0.1), each on a free port. The store is
    /// the rig's (its data directory, or its PostgreSQL database): every node and CLI
    /// command of the rig uses it.
    pub fn serve_node(&self, name: &str, ip: Ipv4Addr) -> Server {
        self.s.serve(
            &format!("{ip}:0"),
            &["--config", self.config.to_str().unwrap(), "--node", name],
        )
    }

    /// Simulated devices saying every hello to each of `servers` (several nodes
    /// behind one load balancer: any of them may get a device's hello).
    pub fn simulate_nodes(
        &self,
        servers: &[&Server],
        specs: Vec<DeviceSpec>,
        time_scale: f64,
    ) -> Simulator {
        let mut config = SimConfig::new(
            servers[0].hello_addr,
            Arc::new(KeyPool::generate(2).unwrap()),
        );
        config.also_to = servers[1..].iter().map(|s| s.hello_addr).collect();
        config.device_port = self.device_port;
        config.time_scale = time_scale;
        config.restart_delay = Duration::from_millis(50);
        self.rt.block_on(Simulator::start(config, specs)).unwrap()
    }

    /// One device per key in `keys[range]`, on addresses from `base`.
    pub fn specs(&self, range: std::ops::Range<usize>, base: Ipv4Addr) -> Vec<DeviceSpec> {
        range
            .enumerate()
            .map(|(i, k)| {
                let (pid, pps) = &self.keys[k];
                DeviceSpec::new(
                    *pid,
                    pps.clone(),
                    MEBX_PASSWORD,
                    address_for(i as u32, base).unwrap(),
                )
            })
            .collect()
    }

    pub fn simulate(&self, server: &Server, specs: Vec<DeviceSpec>, time_scale: f64) -> Simulator {
        let mut config = SimConfig::new(server.hello_addr, Arc::new(KeyPool::generate(2).unwrap()));
        config.device_port = self.device_port;
        config.time_scale = time_scale;
        config.restart_delay = Duration::from_millis(50);
        self.rt.block_on(Simulator::start(config, specs)).unwrap()
    }

    /// Runs `vprov --config <rig config> <args>`.
    pub fn run_configured(&self, args: &[&str]) -> crate::Run {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend(args);
        self.s.run(&all)
    }

    pub fn wait_all(&self, sim: &Simulator, timeout: Duration) -> Vec<DeviceReport> {
        self.rt.block_on(sim.wait_all(timeout))
    }

    pub fn json(&self, args: &[&str]) -> Vec<Value> {
        self.s.run(args).json().as_array().unwrap().clone()
    }

    pub fn alerts(&self) -> Vec<Value> {
        self.json(&["alerts", "list", "--format", "json", "--limit", "1000"])
    }

    pub fn wait_for_alert(&self, needle: &str) -> Value {
        eventually(Duration::from_secs(30), needle, || {
            self.alerts()
                .into_iter()
                .find(|a| a["message"].as_str().unwrap_or("").contains(needle))
        })
    }

    pub fn key_state(&self, pid: &Pid) -> String {
        self.json(&["keys", "list", "--format", "json"])
            .into_iter()
            .find(|k| k["pid"] == pid.dashed())
            .map(|k| k["state"].as_str().unwrap().to_string())
            .unwrap()
    }

    pub fn devices(&self) -> Vec<Value> {
        self.json(&["devices", "list", "--format", "json"])
    }

    /// Serves until one simulated device on `127.<second_octet>.0.1` is provisioned
    /// and its record satisfies `done` (post-provision actions run after the record is
    /// written), then stops the server; the device keeps running. Its UUID.
    pub fn provision_one(
        &self,
        second_octet: u8,
        done: impl Fn(&Value) -> bool,
    ) -> (Simulator, String) {
        let server = self.serve();
        let sim = self.simulate(
            &server,
            self.specs(0..1, Ipv4Addr::new(127, second_octet, 0, 1)),
            0.001,
        );
        assert!(self.wait_all(&sim, Duration::from_secs(60))[0].committed);
        let uuid = eventually(Duration::from_secs(60), "device record", || {
            self.devices()
                .first()
                .filter(|d| done(d))
                .map(|d| d["uuid"].as_str().unwrap().to_string())
        });
        assert_eq!(server.stop(), 0);
        (sim, uuid)
    }
}
