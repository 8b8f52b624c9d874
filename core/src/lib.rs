//! vprov-core: the provisioning core of vprov, an Intel AMT one-touch (PID/PPS)
//! provisioning server.
//!
//! Layout (see `ARCHITECTURE.md` at the repository root for the whole map):
//! - [`keys`]: the PID/PPS format, Intel's check characters and key generation;
//! - [`password`]: the provisioning password and AMT's password rules;
//! - [`secrets`]: the master key and AES-256-GCM sealing of secrets at rest;
//! - [`store`]: the SQLite store (key batches, keys, devices, alerts, audit log);
//! - [`config`]: the configuration file and its embedded defaults;
//! - [`hello`]: the setup-mode hello messages devices send to port 9971;
//! - [`ca`]: vprov's certificate authority for device TLS certificates;
//! - [`pki`]: provisioning certificate chains for PKI (hello v3) remote configuration;
//! - [`device`]: the device connector (TLS-PSK, legacy TLS, Digest, WS-Management);
//! - [`management`]: agentless management of one device (power, inventory);
//! - [`store_thread`]: the store's single owner while the server runs;
//! - [`views`]: record JSON and time formats shared by the API and the CLI;
//! - [`alerts`]: the alert log and the fan-out to alert sinks;
//! - [`plugins`]: the plugin host;
//! - [`server`]: the server's parts: hello listener, provisioning jobs, reachability;
//! - [`api`]: the admin API and web console `vprov serve` offers over HTTPS;
//! - [`accounts`]: admin account password hashes and session/bearer tokens;
//! - [`text`]: outside text made safe to store and log (size caps, escaping);
//! - [`host_name`]: the host-name rule for devices that have none;
//! - [`metrics`]: the process's Prometheus metrics, which every layer records into;
//! - [`app`]: the composition root of `vprov serve`.
//!
//! The modules form layers, checked by a test (`layering.rs`): see
//! `ARCHITECTURE.md`, Layering.
//!
//! `fuzzing` (feature `fuzzing`, off by default) holds the entry points of the fuzz
//! targets in `fuzz/`.
//!
//! The `vprov` binary (`src/main.rs`, `src/cli/`) is a thin command line over these.

pub mod accounts;
pub mod alerts;
pub mod api;
pub mod app;
pub mod ca;
pub mod config;
pub mod device;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod hello;
pub mod host_name;
pub mod keys;
#[cfg(test)]
mod layering;
pub mod management;
pub mod metrics;
pub mod password;
pub mod pki;
pub mod plugins;
pub mod secrets;
pub mod server;
pub mod store;
pub mod store_thread;
pub mod text;
pub mod views;
