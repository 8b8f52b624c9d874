//! PKI remote configuration: provisioning certificate chains and how vprov picks one
//! for a device that sent a v3 (PKI) hello.
//!
//! Owns [`chain`] (reading a chain and its key from PEM or PFX, and checking it the
//! way AMT firmware will: `../shared/docs/amt-pki.md` §1.4 and §3.1), [`roots`] (names
//! of well-known root hashes, for alerts), [`own_root`] (vprov's own provisioning
//! root and the setup.bin carrying its hash) and [`select`] (matching a hello's root
//! hashes and the device's DNS suffix against the configured chains). The store keeps
//! chains (`store/pki.rs`, key sealed); the PKI provisioning job uses them.

pub mod chain;
pub mod own_root;
pub mod roots;
pub mod select;

pub use chain::{ChainError, ChainSummary, ProvisioningChain, RootHashes};
