//! vprov's own provisioning root, for sites without a commercial provisioning
//! certificate (`docs/protocol-notes.md`): a root and a
//! leaf for a DNS suffix, and the USB `setup.bin` that makes a device trust the root.
//!
//! * Root: RSA-3072, SHA-384, CA, 20 years. Leaf: RSA-3072, SHA-384, CN
//!   `provisioning.<suffix>`, OU `Intel(R) Client Setup Certificate`, EKU serverAuth +
//!   2.16.840.1.113741.1.2.3, 5 years (MC-CERT's leaf, with the SHA-384/RSA-3072 that
//!   AMT 22 requires, DMT-ISS #605). The chain passes the same checks as an imported one.
//! * setup.bin (version 3: SHA-256 hashes need it, amt-protocol.md §5.3), one record:
//!   1.1 current MEBx password `admin`, 1.2 new MEBx password (the provisioning
//!   password), 2.8 trusted root hash (algorithm 2 ‖ SHA-256 ‖ name length ‖ name),
//!   2.3 PKI DNS suffix, 2.17/2.18 provisioning server address and port, 2.28 = 1
//!   (MC-CERT's bare-metal file; DMT-DOCS `USBFile.exe … -ztc 1 -hash`).

use std::net::Ipv4Addr;

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{BasicConstraints, ExtendedKeyUsage, KeyUsage};
use openssl::x509::{X509NameBuilder, X509};
use setupbin::{encode_ipv4, var, Entry, Record, SetupBin};

use super::chain::{ChainError, ProvisioningChain, INTEL_SETUP_OID, INTEL_SETUP_OU};

/// The name the root is given in the device's hash table (at most 32 bytes).
pub const ROOT_HASH_NAME: &str = "vprov";
/// setup.bin variable 2.8: a trusted root certificate hash.
pub const TRUSTED_ROOT_HASH: (u16, u16) = (2, 8);
/// setup.bin variable 2.3: the PKI DNS suffix.
pub const PKI_DNS_SUFFIX: (u16, u16) = (2, 3);
/// setup.bin variable 2.28: ME provision halt/activate.
pub const PROVISION_ACTIVATE: (u16, u16) = (2, 28);

fn failed(e: impl std::fmt::Display) -> ChainError {
    ChainError::Read(format!("cannot create the provisioning root: {e}"))
}

fn certificate(
    subject: &[(&str, &str)],
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    now: i64,
    years: i64,
) -> Result<X509, openssl::error::ErrorStack> {
    let mut name = X509NameBuilder::new()?;
    for (field, value) in subject {
        name.append_entry_by_text(field, value)?;
    }
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    let mut serial = BigNum::new()?;
    serial.rand(127, openssl::bn::MsbOption::MAYBE_ZERO, false)?;
    b.set_serial_number(serial.to_asn1_integer()?.as_ref())?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(issuer.map_or(name.as_ref(), |(c, _)| c.subject_name()))?;
    b.set_pubkey(key)?;
    b.set_not_before(Asn1Time::from_unix(now - 86_400)?.as_ref())?;
    b.set_not_after(Asn1Time::from_unix(now + years * 365 * 86_400)?.as_ref())?;
    match issuer {
        None => {
            b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .key_cert_sign()
                    .crl_sign()
                    .build()?,
            )?;
        }
        Some(_) => {
            b.append_extension(
                KeyUsage::new()
                    .critical()
                    .digital_signature()
                    .key_encipherment()
                    .build()?,
            )?;
            b.append_extension(
                ExtendedKeyUsage::new()
                    .server_auth()
                    .other(INTEL_SETUP_OID)
                    .build()?,
            )?;
        }
    }
    b.sign(issuer.map_or(key, |(_, k)| k), MessageDigest::sha384())?;
    Ok(b.build())
}

/// A new root and leaf for DNS suffix `domain` (checked like any imported chain).
pub fn create(domain: &str, now: i64) -> Result<ProvisioningChain, ChainError> {
    let rsa = || {
        openssl::rsa::Rsa::generate(3072)
            .and_then(PKey::from_rsa)
            .map_err(failed)
    };
    let (root_key, leaf_key) = (rsa()?, rsa()?);
    let root_cn = format!("vprov provisioning root {domain}");
    let root = certificate(
        &[("CN", root_cn.as_str()), ("O", "vprov")],
        &root_key,
        None,
        now,
        20,
    )
    .map_err(failed)?;
    let leaf_cn = format!("provisioning.{domain}");
    let leaf = certificate(
        &[
            ("CN", leaf_cn.as_str()),
            ("OU", INTEL_SETUP_OU),
            ("O", "vprov"),
        ],
        &leaf_key,
        Some((&root, &root_key)),
        now,
        5,
    )
    .map_err(failed)?;
    ProvisioningChain::from_parts(vec![leaf, root], leaf_key, now)
}

/// A setup.bin (version 3, one record) making a device trust the root whose SHA-256
/// is `root_sha256`, with the PKI DNS suffix `domain`, the MEBx password
/// `mebx_password` and vprov at `server:port`.
pub fn setup_bin(
    root_sha256: &[u8],
    domain: &str,
    mebx_password: &str,
    server: Ipv4Addr,
    port: u16,
) -> Result<Vec<u8>, String> {
    let mut hash = vec![2u8];
    hash.extend_from_slice(root_sha256);
    hash.push(ROOT_HASH_NAME.len() as u8);
    hash.extend_from_slice(ROOT_HASH_NAME.as_bytes());
    let mut file = SetupBin::new(3, true).map_err(|e| e.to_string())?;
    file.records.push(Record {
        number: 1,
        valid: true,
        scrambled: true,
        entries: vec![
            Entry::new(var::CURRENT_MEBX_PASSWORD, "admin"),
            Entry::new(var::NEW_MEBX_PASSWORD, mebx_password.as_bytes()),
            Entry::new(var::MANAGEABILITY_SELECTION, [1]),
            Entry::new(PKI_DNS_SUFFIX, domain.as_bytes()),
            Entry::new(TRUSTED_ROOT_HASH, hash),
            Entry::new(var::SERVER_IPV4, encode_ipv4(server)),
            Entry::new(var::SERVER_PORT, port.to_le_bytes()),
            Entry::new(PROVISION_ACTIVATE, [1]),
        ],
    });
    file.encode().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_own_root_passes_the_firmware_checks_and_goes_into_setup_bin() {
        let now = 1_800_000_000;
        let chain = create("example.com", now).unwrap();
        let s = chain.summary();
        assert_eq!(s.common_name, "provisioning.example.com");
        assert_eq!(s.domain, "example.com");
        assert_eq!(s.leaf_key_bits, 3072);
        let bytes = setup_bin(
            &s.root.sha256,
            "example.com",
            "P@ssw0rd!",
            Ipv4Addr::new(10, 0, 0, 5),
            9971,
        )
        .unwrap();
        let file = SetupBin::decode(&bytes).unwrap();
        assert_eq!(file.version, 3);
        let record = &file.records[0];
        let value = |key: (u16, u16)| {
            record
                .entries
                .iter()
                .find(|e| (e.module, e.variable) == key)
                .map(|e| e.value.clone())
                .unwrap()
        };
        let hash = value(TRUSTED_ROOT_HASH);
        assert_eq!(hash[0], 2);
        assert_eq!(&hash[1..33], s.root.sha256.as_slice());
        assert_eq!(&hash[34..], ROOT_HASH_NAME.as_bytes());
        assert_eq!(value(PKI_DNS_SUFFIX), b"example.com");
        assert_eq!(value(PROVISION_ACTIVATE), [1]);
        assert_eq!(value(var::NEW_MEBX_PASSWORD), b"P@ssw0rd!");
    }
}
