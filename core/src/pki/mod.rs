//! PKI remote configuration: provisioning certificate chains and how vprov picks one
//! for a device that sent a v3 (PKI) hello.
//!
//! Owns [`chain`] (reading a chain and its key from PEM or PFX, and checking it the
//! way AMT firmware will: `docs/protocol-notes.md`), [`roots`] (names
//! of well-known root hashes, for alerts), [`own_root`] (vprov's own provisioning
//! root and the setup.bin carrying its hash) and [`select`] (matching a hello's root
//! hashes and the device's DNS suffix against the configured chains). The store keeps
//! chains (`store/pki.rs`, key sealed; [`ChainRecord`] is a stored chain); the PKI provisioning job uses them.

pub mod chain;
pub mod own_root;
pub mod roots;
pub mod select;

pub use chain::{ChainError, ChainSummary, ProvisioningChain, RootHashes};

/// A stored chain without its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRecord {
    pub name: String,
    pub common_name: String,
    pub domain: String,
    pub chain_pem: String,
    pub root: RootHashes,
    /// Unix seconds: the earliest `notAfter` in the chain.
    pub not_after: i64,
    /// Milliseconds since the epoch.
    pub imported_at: i64,
    pub imported_by: String,
}
