//! Running a set of simulated devices on the current tokio runtime: binding every
//! device's setup-mode port up front (so bind errors surface at start), spawning the
//! devices, waiting for outcomes, collecting reports and stopping everything.
//!
//! Devices stay up until the simulator stops: a committed device keeps serving its
//! certificate TLS server so that the provisioning server can confirm it, and the wait
//! functions wait for that confirmation ([`SimConfig::require_confirmation`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;

use super::device::{self, Device, DeviceReport, Outcome};
use super::{DeviceSpec, SimConfig};

/// Poll interval of the wait functions.
const POLL: Duration = Duration::from_millis(20);

/// A running set of devices. Dropping it stops them, like [`Simulator::shutdown`].
pub struct Simulator {
    devices: Vec<Arc<Device>>,
    tasks: Vec<JoinHandle<()>>,
    device_port: u16,
}

impl Simulator {
    /// Binds every device's TLS-PSK port and starts all devices (hellos at once).
    /// Fails if a port cannot be bound, the configuration is invalid, two devices
    /// share an address, or an AMT version does not parse.
    pub async fn start(config: SimConfig, specs: Vec<DeviceSpec>) -> anyhow::Result<Simulator> {
        anyhow::ensure!(
            config.time_scale.is_finite() && config.time_scale >= 0.0,
            "time scale must be a finite number ≥ 0"
        );
        anyhow::ensure!(!config.key_pool.is_empty(), "the key pool is empty");
        let mut seen = std::collections::HashSet::new();
        for spec in &specs {
            anyhow::ensure!(
                spec.address.is_loopback(),
                "{} is not a loopback address",
                spec.address
            );
            anyhow::ensure!(
                seen.insert(spec.address),
                "two devices share {}",
                spec.address
            );
            spec.version()?;
        }
        let mut config = config;
        let mut listeners = Vec::with_capacity(specs.len());
        for spec in &specs {
            let listener = device::bind(spec.address, config.device_port).with_context(|| {
                format!("cannot listen on {}:{}", spec.address, config.device_port)
            })?;
            if config.device_port == 0 {
                config.device_port = listener.local_addr()?.port();
            }
            listeners.push(listener);
        }
        let config = Arc::new(config);
        let devices = specs
            .into_iter()
            .map(|spec| Ok(Arc::new(Device::new(spec, &config)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let tasks = devices
            .iter()
            .zip(listeners)
            .map(|(dev, listener)| {
                tokio::spawn(device::run(Arc::clone(dev), listener, Arc::clone(&config)))
            })
            .collect();
        Ok(Simulator {
            devices,
            tasks,
            device_port: config.device_port,
        })
    }

    /// The TLS port every device listens on.
    pub fn device_port(&self) -> u16 {
        self.device_port
    }

    /// Reports of all devices, in start order.
    pub fn reports(&self) -> Vec<DeviceReport> {
        self.devices.iter().map(|d| d.report()).collect()
    }

    /// Waits until every device is provisioned (committed and, with
    /// [`SimConfig::require_confirmation`], confirmed over its certificate TLS server),
    /// or `timeout`; returns the reports.
    pub async fn wait_all(&self, timeout: Duration) -> Vec<DeviceReport> {
        self.wait_until(timeout, |d| d.is_provisioned()).await
    }

    /// Waits until every device expected to be provisioned (no fault) is provisioned
    /// (as in [`Simulator::wait_all`]), or `timeout`; returns the reports.
    pub async fn wait_expected(&self, timeout: Duration) -> Vec<DeviceReport> {
        self.wait_until(timeout, |d| {
            d.expected_outcome() == Outcome::NotProvisioned || d.is_provisioned()
        })
        .await
    }

    async fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&Device) -> bool,
    ) -> Vec<DeviceReport> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.devices.iter().all(|d| done(d)) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(POLL.min(deadline - tokio::time::Instant::now())).await;
        }
        self.reports()
    }

    /// Stops every device (listeners, connections, hellos).
    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}
