//! The vprov plugin SDK: the stable ABI between the vprov core and its dynamically
//! loaded plugins (key export formats, alert sinks, post-provision actions, agent
//! deployers), and the plain-Rust layer plugin authors write against.
//!
//! - [`abi`]: the boundary (root module, manifest, trait objects, data types), built on
//!   abi_stable so the core can check at load that a library was built against a
//!   compatible SDK. This crate's version is the ABI version.
//! - [`plugin`]: the [`Plugin`] trait and one trait per kind, the [`Host`] handle, and
//!   [`export_plugin!`], which exports a plugin type as the library's root module. Every
//!   call into plugin code is guarded: a panic becomes an error, never an unwind across
//!   the boundary.
//! - [`testing`]: a fake host for unit tests.
//!
//! Plugins are trusted code running inside the core's process: they can do anything
//! the core can. The boundary protects against mistakes (panics, incompatible builds),
//! not against hostile libraries.
//!
//! A minimal alert sink:
//!
//! ```
//! use vprov_sdk::{AlertEvent, AlertSink, Context, Plugin, PluginError, PluginKinds};
//!
//! struct Counter(std::sync::atomic::AtomicU64);
//!
//! impl Plugin for Counter {
//!     const NAME: &'static str = "counter";
//!     const VERSION: &'static str = "1.0.0";
//!     const DESCRIPTION: &'static str = "counts alerts";
//!     const KINDS: PluginKinds = PluginKinds::ALERT_SINK;
//!     fn new(_: Context) -> Result<Self, PluginError> {
//!         Ok(Counter(Default::default()))
//!     }
//!     fn alert_sink(&self) -> Option<&dyn AlertSink> {
//!         Some(self)
//!     }
//! }
//!
//! impl AlertSink for Counter {
//!     fn deliver(&self, _: &AlertEvent) -> Result<(), PluginError> {
//!         self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
//!         Ok(())
//!     }
//! }
//! // In the plugin's cdylib crate: vprov_sdk::export_plugin!(Counter);
//! ```

// `PluginModule_Ref` and `*_TO` are abi_stable's generated names; `#[sabi_trait]`
// expands to impls inside a const block.
#[allow(unsafe_code, non_camel_case_types, non_local_definitions)]
pub mod abi;
pub mod plugin;
pub mod testing;

pub use abi::{
    ActionOutcome, AlertEvent, DeviceInfo, ErrorKind, ExportFormat, ExportRequest, ExportedFile,
    HostKeyCheck, HostKeyVerdict, KeyPair, LogLevel, OutcomeAction, PluginAlert, PluginError,
    PluginKinds, PluginManifest, Severity, SDK_VERSION,
};
pub use plugin::{
    export_options, AgentDeployer, AlertSink, Context, Host, KeyExporter, Plugin,
    PostProvisionAction,
};

#[cfg(test)]
mod tests;
