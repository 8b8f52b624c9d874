//! The pool of RSA-2048 key pairs that simulated devices hand out from
//! `AMT_PublicKeyManagementService.GenerateKeyPair`.
//!
//! Generating RSA keys costs tens of milliseconds each, so a run generates a few once
//! (in parallel, optionally cached in a JSON file of PKCS#8 PEM strings) and every
//! device takes them round-robin. Devices may therefore share a key pair; that is fine
//! for a simulator whose purpose is to load the server, not to be secure.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;

/// RSA key pairs shared by all devices of a run.
pub struct KeyPool {
    keys: Vec<Arc<PKey<Private>>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for KeyPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyPool({} RSA keys)", self.keys.len())
    }
}

impl KeyPool {
    /// Generates `n` (at least 1) RSA-2048 key pairs, using all CPUs.
    pub fn generate(n: usize) -> anyhow::Result<KeyPool> {
        let n = n.max(1);
        let threads = std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(1)
            .min(n);
        let keys = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let count = n / threads + usize::from(t < n % threads);
                    scope.spawn(move || -> anyhow::Result<Vec<PKey<Private>>> {
                        (0..count)
                            .map(|_| Ok(PKey::from_rsa(Rsa::generate(2048)?)?))
                            .collect()
                    })
                })
                .collect();
            let mut keys = Vec::with_capacity(n);
            for worker in workers {
                let part = worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("RSA key generation thread panicked"))??;
                keys.extend(part);
            }
            anyhow::Ok(keys)
        })?;
        Ok(KeyPool::from_keys(keys))
    }

    /// Loads the pool from `path` if it holds at least `n` keys, otherwise generates
    /// `n` keys and writes them there (JSON array of PKCS#8 PEM strings).
    pub fn load_or_generate(path: &Path, n: usize) -> anyhow::Result<KeyPool> {
        if let Ok(text) = std::fs::read_to_string(path) {
            let pems: Vec<String> = serde_json::from_str(&text)
                .with_context(|| format!("{} is not a key pool file", path.display()))?;
            if pems.len() >= n.max(1) {
                let keys = pems
                    .iter()
                    .map(|pem| PKey::private_key_from_pem(pem.as_bytes()))
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| format!("{} holds an unreadable key", path.display()))?;
                return Ok(KeyPool::from_keys(keys));
            }
        }
        let pool = KeyPool::generate(n)?;
        let pems = pool
            .keys
            .iter()
            .map(|k| Ok(String::from_utf8(k.private_key_to_pem_pkcs8()?)?))
            .collect::<anyhow::Result<Vec<_>>>()?;
        std::fs::write(path, serde_json::to_string_pretty(&pems)?)
            .with_context(|| format!("cannot write key pool file {}", path.display()))?;
        Ok(pool)
    }

    fn from_keys(keys: Vec<PKey<Private>>) -> KeyPool {
        KeyPool {
            keys: keys.into_iter().map(Arc::new).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Whether the pool is empty (never true for a pool built by this module).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The next key pair, round-robin.
    pub fn take(&self) -> Arc<PKey<Private>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.keys.len();
        Arc::clone(&self.keys[i])
    }
}
