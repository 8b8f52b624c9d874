//! PKI (hello v3) devices: AMT 11+ in setup mode waiting for remote configuration with
//! a provisioning certificate (`../shared/docs/amt-pki.md` §1, §5).
//!
//! | Behaviour | Source |
//! |---|---|
//! | The v3 hello lists the hashes of the trusted roots, **active entries only** | amt-pki.md §1.1 (MC-AGENT matches only `isActive` entries; Q4 open) |
//! | TLS server on the device port with the device's own self-signed certificate: RSA-2048 for AMT 11.x, EC P-384 `CN=AMT RCFG` from AMT 15 (Tiger Lake) | §1.3 "AMT's certificate" (self-signed before Tiger Lake; the AMT 19 sample is EC P-384 `AMT RCFG`; the On-Die CA issuer is not simulated) |
//! | TLS 1.0–1.2 for AMT 11.x, TLS 1.2 only from AMT 12 | §1.3 "TLS version" (IRG-TLS) |
//! | A client certificate is required; the handshake fails with a fatal alert when the chain breaks a rule | §1.3 "Authentication", §5.3 (alert codes unknown, Q8) |
//! | Chain rules: root self-signed and its hash (by each entry's algorithm) among the active trusted hashes; every signature verifies; at most 4 certificates; no SHA-1 (or weaker) signature anywhere; RSA keys ≥ 2048 bits; leaf EKU serverAuth and (Intel OID 2.16.840.1.113741.1.2.3 or OU exactly `Intel(R) Client Setup Certificate`); leaf CN equal to the device's PKI DNS suffix or ending in `.` + suffix; every certificate valid now | §1.4 (IRG-RCFG 3d–3e, IRG-ACQ, KB-SHA1, DMT-ISS #268; the CN rule is the label-aligned reading of Q2, validity the strict reading of Q3) |
//! | Digest inside the session: `admin` with the factory MEBx password `admin` | §1.3 "HTTP auth inside" (VPRO-PS; Q1 open) |
//! | `SetMEBxPassword` needs a strong password (else 2054 INVALID_PASSWORD); `CommitChanges` answers 2057 while the MEBx password is the factory one | §1.5 row 4, §5.5 (IRG-RCFG 5, RPC-GO) |
//! | A successful commit ends in Admin Control Mode | §1.5 (MC-PROV, SCS11) |

use std::sync::Weak;

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private};
use openssl::ssl::{SslContext, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::{X509NameBuilder, X509StoreContextRef, X509};

use super::device::{unix_now, Device};
use super::AmtVersion;

/// The Intel setup EKU OID.
pub const INTEL_SETUP_OID: &str = "2.16.840.1.113741.1.2.3";
/// The OU that stands in for the OID.
pub const INTEL_SETUP_OU: &str = "Intel(R) Client Setup Certificate";
/// The factory MEBx (and setup-session admin) password.
pub const FACTORY_PASSWORD: &str = "admin";
/// Most certificates a presented chain may have.
pub const MAX_CHAIN: usize = 4;

/// One entry of the device's trusted root hash table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedHash {
    /// 1 SHA-1, 2 SHA-256, 3 SHA-384 (the hello's algorithm byte).
    pub algorithm: u8,
    pub hash: Vec<u8>,
    /// Inactive entries are neither sent nor trusted.
    pub active: bool,
}

impl TrustedHash {
    /// The active SHA-256 entry for a root certificate.
    pub fn sha256_of(root: &X509) -> TrustedHash {
        TrustedHash {
            algorithm: 2,
            hash: root
                .digest(MessageDigest::sha256())
                .map(|d| d.to_vec())
                .unwrap_or_default(),
            active: true,
        }
    }

    fn digest(&self) -> Option<MessageDigest> {
        match (self.algorithm, self.hash.len()) {
            (1, 20) => Some(MessageDigest::sha1()),
            (2, 32) => Some(MessageDigest::sha256()),
            (3, 48) => Some(MessageDigest::sha384()),
            _ => None,
        }
    }
}

/// What makes a device a PKI device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PkiSetup {
    /// The trusted root hash table (vendor defaults plus any added in MEBx or by USB).
    pub trusted: Vec<TrustedHash>,
    /// The PKI DNS suffix (set in MEBx/USB; the trusted one, `SecureDNS = true`).
    pub dns_suffix: String,
}

impl PkiSetup {
    /// What one setup.bin record does to a factory device touched with the USB key
    /// (amt-pki.md §3.3): 2.8 adds an active trusted hash (algorithm u8 ‖ hash ‖ name
    /// length u8 ‖ name), 2.3 sets the PKI DNS suffix, 1.2 the new MEBx password.
    /// Returns the setup and the MEBx password, or why the record cannot be applied.
    pub fn from_setup_bin(record: &setupbin::Record) -> Result<(PkiSetup, String), String> {
        let value = |key: (u16, u16)| {
            record
                .entries
                .iter()
                .find(|e| (e.module, e.variable) == key)
                .map(|e| e.value.as_slice())
        };
        let hash = value((2, 8)).ok_or("no 2.8 trusted root hash")?;
        let (&algorithm, rest) = hash.split_first().ok_or("empty 2.8")?;
        let len = match algorithm {
            1 => 20,
            2 => 32,
            3 => 48,
            other => return Err(format!("2.8 hash algorithm {other}")),
        };
        let name_len = *rest.get(len).ok_or("2.8 is truncated")? as usize;
        if rest.len() != len + 1 + name_len || name_len > 32 {
            return Err("2.8 has a wrong length".into());
        }
        let suffix = value((2, 3)).ok_or("no 2.3 PKI DNS suffix")?;
        let password = value(setupbin::var::NEW_MEBX_PASSWORD).ok_or("no 1.2 MEBx password")?;
        Ok((
            PkiSetup {
                trusted: vec![TrustedHash {
                    algorithm,
                    hash: rest[..len].to_vec(),
                    active: true,
                }],
                dns_suffix: String::from_utf8_lossy(suffix).into_owned(),
            },
            String::from_utf8_lossy(password).into_owned(),
        ))
    }
}

/// The v3 hello: the v2 header with version 3, then the active hashes.
pub fn encode_hello(retry: u32, uuid: &[u8; 16], trusted: &[TrustedHash]) -> Vec<u8> {
    let active: Vec<&TrustedHash> = trusted.iter().filter(|t| t.active).take(255).collect();
    let mut out = Vec::with_capacity(25 + active.len() * 50);
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&3u16.to_le_bytes());
    out.extend_from_slice(&retry.to_le_bytes());
    out.extend_from_slice(uuid);
    out.push(active.len() as u8);
    for t in active {
        out.push(t.algorithm);
        out.push(t.hash.len() as u8);
        out.extend_from_slice(&t.hash);
    }
    out
}

/// Whether this generation's RCFG certificate is EC P-384 (Tiger Lake, AMT 15, on).
fn uses_ec_certificate(version: AmtVersion) -> bool {
    version
        >= AmtVersion {
            major: 15,
            minor: 0,
        }
}

/// A v3 certificate for `cn` with `key`'s public key and a random serial, valid from
/// now for `days`, issued by `issuer` (self-issued without one); extensions and the
/// signature are the caller's.
fn cert_builder(
    cn: &str,
    key: &PKey<Private>,
    issuer: Option<&X509>,
    days: u32,
) -> anyhow::Result<openssl::x509::X509Builder> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("CN", cn)?;
    let name = name.build();
    let mut b = X509::builder()?;
    b.set_version(2)?;
    b.set_serial_number(
        BigNum::from_u32(rand::random::<u32>() >> 1)?
            .to_asn1_integer()?
            .as_ref(),
    )?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(issuer.map_or(&name, |c| c.subject_name()))?;
    b.set_pubkey(key)?;
    b.set_not_before(Asn1Time::days_from_now(0)?.as_ref())?;
    b.set_not_after(Asn1Time::days_from_now(days)?.as_ref())?;
    Ok(b)
}

/// The device's own self-signed RCFG certificate and key.
pub fn device_certificate(
    version: AmtVersion,
    rsa: &PKey<Private>,
) -> anyhow::Result<(X509, PKey<Private>)> {
    let key = if uses_ec_certificate(version) {
        PKey::from_ec_key(EcKey::generate(
            EcGroup::from_curve_name(Nid::SECP384R1)?.as_ref(),
        )?)?
    } else {
        rsa.clone()
    };
    let mut b = cert_builder("AMT RCFG", &key, None, 3650)?;
    b.append_extension(
        openssl::x509::extension::ExtendedKeyUsage::new()
            .server_auth()
            .build()?,
    )?;
    let md = if uses_ec_certificate(version) {
        MessageDigest::sha384()
    } else {
        MessageDigest::sha256()
    };
    b.sign(&key, md)?;
    Ok((b.build(), key))
}

/// The setup-mode TLS context of a PKI device: its own certificate, TLS 1.2 (1.0–1.2
/// before AMT 12), and a required client certificate checked by
/// [`check_client_chain`] in the verify callback (a refusal fails the handshake with
/// a fatal alert, and is recorded for the report).
pub fn setup_context(
    dev: Weak<Device>,
    version: AmtVersion,
    cert: &X509,
    key: &PKey<Private>,
) -> anyhow::Result<SslContext> {
    let mut b = SslContext::builder(SslMethod::tls_server())?;
    if version
        < (AmtVersion {
            major: 12,
            minor: 0,
        })
    {
        b.set_security_level(0);
        b.set_min_proto_version(Some(SslVersion::TLS1))?;
        b.set_cipher_list("DEFAULT:AES128-SHA:AES256-SHA")?;
    } else {
        b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    }
    b.set_max_proto_version(Some(SslVersion::TLS1_2))?;
    b.set_certificate(cert)?;
    b.set_private_key(key)?;
    b.check_private_key()?;
    b.set_verify_callback(
        SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT,
        move |_preverified, ctx| verify(&dev, ctx),
    );
    Ok(b.build())
}

/// OpenSSL's own verdict is ignored (the device has no root certificates, only
/// hashes); at depth 0 the chain OpenSSL built from what the client sent is checked.
fn verify(dev: &Weak<Device>, ctx: &mut X509StoreContextRef) -> bool {
    if ctx.error_depth() != 0 {
        return true;
    }
    let Some(dev) = dev.upgrade() else {
        return false;
    };
    let Some(pki) = dev.spec.pki.as_ref() else {
        return false;
    };
    let chain: Vec<X509> = ctx
        .chain()
        .map(|c| c.iter().map(|x| x.to_owned()).collect())
        .unwrap_or_default();
    let verdict = check_client_chain(&chain, pki, unix_now());
    let mut st = dev.state();
    match verdict {
        Ok(cn) => {
            st.pki_client_cn = Some(cn);
            true
        }
        Err(why) => {
            st.pki_refusal = Some(why);
            ctx.set_error(openssl::x509::X509VerifyResult::APPLICATION_VERIFICATION);
            false
        }
    }
}

fn cn_of(cert: &X509) -> Option<String> {
    cert.subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
}

/// The firmware's checks on the client chain (leaf first, as built). `Ok(leaf CN)` or
/// the reason for the refusal.
pub fn check_client_chain(chain: &[X509], pki: &PkiSetup, now: i64) -> Result<String, String> {
    let (leaf, root) = match chain {
        [] => return Err("no client certificate".into()),
        [_] => return Err("the chain has no root".into()),
        [leaf, .., root] => (leaf, root),
    };
    if chain.len() > MAX_CHAIN {
        return Err(format!(
            "chain of {} certificates (at most {MAX_CHAIN})",
            chain.len()
        ));
    }
    let self_signed = root.issued(root) == openssl::x509::X509VerifyResult::OK
        && root
            .public_key()
            .ok()
            .is_some_and(|k| root.verify(&k).unwrap_or(false));
    if !self_signed {
        return Err("the chain does not end in a self-signed root".into());
    }
    let trusted = pki.trusted.iter().filter(|t| t.active).any(|t| {
        t.digest()
            .and_then(|md| root.digest(md).ok())
            .is_some_and(|d| *d == *t.hash)
    });
    if !trusted {
        return Err("the root's hash is not among the active trusted hashes".into());
    }
    for pair in chain.windows(2) {
        let ok = pair[1]
            .public_key()
            .ok()
            .is_some_and(|k| pair[0].verify(&k).unwrap_or(false));
        if !ok {
            return Err("a signature in the chain does not verify".into());
        }
    }
    for cert in chain {
        let nid = cert.signature_algorithm().object().nid();
        let strong = [
            Nid::SHA256WITHRSAENCRYPTION,
            Nid::SHA384WITHRSAENCRYPTION,
            Nid::SHA512WITHRSAENCRYPTION,
            Nid::ECDSA_WITH_SHA256,
            Nid::ECDSA_WITH_SHA384,
            Nid::ECDSA_WITH_SHA512,
        ];
        if !strong.contains(&nid) {
            return Err(format!(
                "certificate signed with {} (no SHA-1)",
                cert.signature_algorithm().object()
            ));
        }
        let key = cert.public_key().map_err(|e| e.to_string())?;
        if key.id() == Id::RSA && key.bits() < 2048 {
            return Err(format!("RSA key of {} bits (at least 2048)", key.bits()));
        }
        let valid = |t: &openssl::asn1::Asn1TimeRef, later: bool| {
            Asn1Time::from_unix(now)
                .ok()
                .and_then(|n| t.compare(&n).ok())
                .is_some_and(|o| if later { o.is_ge() } else { o.is_le() })
        };
        if !valid(cert.not_after(), true) || !valid(cert.not_before(), false) {
            return Err("a certificate is not valid now".into());
        }
    }
    let der = leaf.to_der().map_err(|e| e.to_string())?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| format!("leaf: {e}"))?;
    let eku = parsed.extended_key_usage().ok().flatten().map(|e| e.value);
    if !eku.is_some_and(|e| e.server_auth) {
        return Err("the leaf lacks serverAuth".into());
    }
    let oid = eku.is_some_and(|e| e.other.iter().any(|o| o.to_id_string() == INTEL_SETUP_OID));
    let ou = parsed
        .subject()
        .iter_organizational_unit()
        .any(|a| a.as_str() == Ok(INTEL_SETUP_OU));
    if !oid && !ou {
        return Err("the leaf has neither the Intel setup OID nor the OU".into());
    }
    let cn = cn_of(leaf)
        .ok_or("the leaf has no CN")?
        .to_ascii_lowercase();
    let suffix = pki.dns_suffix.to_ascii_lowercase();
    if cn != suffix && !cn.ends_with(&format!(".{suffix}")) {
        return Err(format!(
            "the leaf CN {cn} is not in the device's DNS suffix {suffix}"
        ));
    }
    Ok(cn)
}

/// AMT's strong-password rule for `SetMEBxPassword`: 8–32 characters with a digit, a
/// lower-case and an upper-case letter and a non-alphanumeric character other than
/// `"`, `,` and `:` (Intel reference guide, "Setting the MEBx password").
pub fn is_strong(password: &str) -> bool {
    let len = password.chars().count();
    (8..=32).contains(&len)
        && password.chars().any(|c| c.is_ascii_digit())
        && password.chars().any(|c| c.is_ascii_lowercase())
        && password.chars().any(|c| c.is_ascii_uppercase())
        && password.chars().any(|c| !c.is_ascii_alphanumeric())
        && !password.contains(['"', ',', ':'])
}

/// A throwaway provisioning chain in the shape of a commercial one — root, issuing
/// CA, leaf with serverAuth and the Intel setup OID — for tests and load runs. Every
/// key is RSA-2048; `md` signs the leaf.
pub struct TestChain {
    pub root: X509,
    /// Leaf first.
    pub certs: Vec<X509>,
    pub leaf_key: PKey<Private>,
}

fn test_cert(
    cn: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    ca: bool,
    md: MessageDigest,
) -> anyhow::Result<X509> {
    let mut b = cert_builder(cn, key, issuer.map(|(c, _)| c), 365)?;
    if ca {
        b.append_extension(
            openssl::x509::extension::BasicConstraints::new()
                .critical()
                .ca()
                .build()?,
        )?;
    } else {
        b.append_extension(
            openssl::x509::extension::ExtendedKeyUsage::new()
                .server_auth()
                .other(INTEL_SETUP_OID)
                .build()?,
        )?;
    }
    b.sign(issuer.map_or(key, |(_, k)| k), md)?;
    Ok(b.build())
}

impl TestChain {
    /// A chain whose leaf CN is `cn`.
    pub fn new(cn: &str, md: MessageDigest) -> anyhow::Result<TestChain> {
        let rsa = || -> anyhow::Result<PKey<Private>> {
            Ok(PKey::from_rsa(openssl::rsa::Rsa::generate(2048)?)?)
        };
        let (root_key, issuing_key, leaf_key) = (rsa()?, rsa()?, rsa()?);
        let sha256 = MessageDigest::sha256();
        let root = test_cert("Throwaway Test Root", &root_key, None, true, sha256)?;
        let issuing = test_cert(
            "Throwaway Issuing CA",
            &issuing_key,
            Some((&root, &root_key)),
            true,
            sha256,
        )?;
        let leaf = test_cert(cn, &leaf_key, Some((&issuing, &issuing_key)), false, md)?;
        Ok(TestChain {
            certs: vec![leaf, issuing, root.clone()],
            root,
            leaf_key,
        })
    }

    /// Writes `<name>.pem` (the certificates root first: order must not matter) and
    /// `<name>.key` into `dir`; returns both paths.
    pub fn write(
        &self,
        dir: &std::path::Path,
        name: &str,
    ) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
        let mut pem = Vec::new();
        for c in self.certs.iter().rev() {
            pem.extend(c.to_pem()?);
        }
        let (chain, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&chain, pem)?;
        std::fs::write(&key, self.leaf_key.private_key_to_pem_pkcs8()?)?;
        Ok((chain, key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hello_lists_active_hashes_only() {
        let uuid = [7u8; 16];
        let trusted = vec![
            TrustedHash {
                algorithm: 2,
                hash: vec![0xaa; 32],
                active: true,
            },
            TrustedHash {
                algorithm: 1,
                hash: vec![0xbb; 20],
                active: false,
            },
            TrustedHash {
                algorithm: 3,
                hash: vec![0xcc; 48],
                active: true,
            },
        ];
        let bytes = encode_hello(2, &uuid, &trusted);
        match vprov_core::hello::parse(&bytes).unwrap() {
            vprov_core::hello::Hello::Pki {
                header,
                hashes,
                trailing,
            } => {
                assert_eq!(header.retry_count, 2);
                assert_eq!(header.uuid.0, uuid);
                assert_eq!(trailing, 0);
                assert_eq!(hashes.len(), 2);
                assert_eq!(hashes[1].hash, vec![0xcc; 48]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn passwords_follow_the_amt_rule() {
        assert!(is_strong("P@ssw0rd"));
        assert!(!is_strong("admin"));
        assert!(!is_strong("Passw0rd"));
        assert!(!is_strong("P@ss:w0rd"));
    }
}
