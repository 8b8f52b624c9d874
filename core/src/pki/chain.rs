//! A provisioning certificate chain and its private key, checked the way AMT firmware
//! checks the chain a configuration server presents (`docs/protocol-notes.md`):
//!
//! - 2 to 4 certificates forming one path from the leaf to a self-signed root, each
//!   signed by the next (§1.4 "Chain length", §3.1: RPS builds at most 4; the root must
//!   be present because the device matches its hash, §1.2);
//! - the leaf's extended key usage contains serverAuth (§1.4 "Server cert"), and either
//!   the Intel setup OID 2.16.840.1.113741.1.2.3 or the subject OU exactly
//!   `Intel(R) Client Setup Certificate` (§1.4 "Purpose", IRG-ACQ);
//! - no SHA-1 (or weaker) signature anywhere, RSA keys of at least 2048 bits, an RSA
//!   leaf key (§1.4 "Algorithms", KB-SHA1; §3.1 RPS and RPC-GO sign with RSA only);
//! - every certificate valid now (§1.4 "Time": firmware records the check; refusing is
//!   the strict reading, Q3);
//! - the private key belongs to the leaf.
//!
//! A refusal names the certificate and the rule. The leaf's common name gives the
//! chain's domain (see [`ChainSummary::domain`]).

use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkcs12::Pkcs12;
use openssl::pkey::{Id, PKey, Private};
use openssl::x509::X509;
use zeroize::Zeroizing;

/// The Intel "client setup" extended key usage OID.
pub const INTEL_SETUP_OID: &str = "2.16.840.1.113741.1.2.3";
/// The subject OU that stands in for [`INTEL_SETUP_OID`] (case-sensitive).
pub const INTEL_SETUP_OU: &str = "Intel(R) Client Setup Certificate";
/// Most certificates a chain may have (leaf, two intermediates, root).
pub const MAX_CERTIFICATES: usize = 4;
/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: u32 = 2048;

/// Why a chain was refused. Every message names the rule the device would apply; none
/// carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("cannot read the certificates: {0}")]
    Read(String),
    #[error("no certificate found in the input")]
    NoCertificates,
    #[error("no private key found: give the leaf's key (in the PEM file or with --key)")]
    NoKey,
    #[error("cannot read the private key (an encrypted key needs its password): {0}")]
    Key(String),
    #[error("cannot open the PFX file (wrong password, or not a PKCS#12 file): {0}")]
    Pfx(String),
    #[error(
        "the chain has {0} certificates; AMT accepts at most 4 (leaf, two intermediates, root)"
    )]
    TooMany(usize),
    #[error("a provisioning chain needs the leaf and its root (at least 2 certificates): the device matches the root's hash")]
    TooShort,
    #[error("the certificates are not one chain: {0}")]
    NotOneChain(String),
    #[error("the chain ends at {subject} without its self-signed root: include the root certificate (the device matches its hash)")]
    MissingRoot { subject: String },
    #[error("the signature of {subject} does not verify with its issuer's key")]
    BadSignature { subject: String },
    #[error("the private key does not belong to the leaf certificate {subject}")]
    KeyMismatch { subject: String },
    #[error("the leaf {subject} lacks the serverAuth extended key usage (1.3.6.1.5.5.7.3.1) AMT requires")]
    NoServerAuth { subject: String },
    #[error("the leaf {subject} has neither the Intel setup OID 2.16.840.1.113741.1.2.3 in its extended key usage nor the OU \"Intel(R) Client Setup Certificate\"")]
    NoIntelPurpose { subject: String },
    #[error("{subject} is signed with SHA-1 ({algorithm}); AMT 16 and later refuse SHA-1 anywhere in the chain")]
    Sha1 { subject: String, algorithm: String },
    #[error(
        "{subject} is signed with {algorithm}, which AMT does not accept (use SHA-256 or SHA-384)"
    )]
    SignatureAlgorithm { subject: String, algorithm: String },
    #[error("{subject} has an RSA key of {bits} bits; AMT requires at least 2048")]
    WeakRsa { subject: String, bits: u32 },
    #[error("{subject} has a {what} key; {rule}")]
    UnsupportedKey {
        subject: String,
        what: String,
        rule: &'static str,
    },
    #[error("{subject} expired on {not_after}")]
    Expired { subject: String, not_after: String },
    #[error("{subject} is not valid before {not_before}")]
    NotYetValid { subject: String, not_before: String },
    #[error("the leaf {subject} has no usable common name (a DNS name with at least two labels): the device compares its domain with its own DNS suffix")]
    NoCommonName { subject: String },
    #[error("cannot parse the certificate {index} of the chain: {reason}")]
    Parse { index: usize, reason: String },
}

/// SHA-1, SHA-256 and SHA-384 of a root certificate's DER: what hellos carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootHashes {
    pub sha1: Vec<u8>,
    pub sha256: Vec<u8>,
    pub sha384: Vec<u8>,
}

impl RootHashes {
    /// The hashes of one certificate's DER.
    pub fn of_der(der: &[u8]) -> Self {
        let digest = |md| {
            openssl::hash::hash(md, der)
                .map(|d| d.to_vec())
                .unwrap_or_default()
        };
        RootHashes {
            sha1: digest(MessageDigest::sha1()),
            sha256: digest(MessageDigest::sha256()),
            sha384: digest(MessageDigest::sha384()),
        }
    }

    /// Whether a hello's hash entry is one of these (same algorithm, same bytes).
    pub fn matches(&self, entry: &crate::hello::CertificateHash) -> bool {
        use crate::hello::HashAlgorithm::*;
        let mine = match entry.algorithm {
            Sha1 => &self.sha1,
            Sha256 => &self.sha256,
            Sha384 => &self.sha384,
        };
        *mine == entry.hash
    }
}

/// What a checked chain says about itself (no key material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// The leaf's subject common name, lower-case.
    pub common_name: String,
    /// The domain the chain serves: the common name without its first label when it
    /// has three or more (`prov.example.com` → `example.com`, `*.example.com` →
    /// `example.com`), else the common name itself.
    pub domain: String,
    /// Subjects, leaf first.
    pub subjects: Vec<String>,
    /// The earliest `notAfter` of the chain (Unix seconds): when it stops working.
    pub not_after: i64,
    /// Hashes of the root certificate.
    pub root: RootHashes,
    /// SHA-256 of the leaf's DER.
    pub leaf_sha256: Vec<u8>,
    /// The leaf's RSA modulus size.
    pub leaf_key_bits: u32,
}

/// A checked chain (leaf first) and the leaf's private key.
pub struct ProvisioningChain {
    certificates: Vec<X509>,
    key: PKey<Private>,
    summary: ChainSummary,
}

impl std::fmt::Debug for ProvisioningChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProvisioningChain")
            .field("summary", &self.summary)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// One certificate with what the checks need, parsed once.
struct Parsed {
    cert: X509,
    der: Vec<u8>,
    subject_raw: Vec<u8>,
    issuer_raw: Vec<u8>,
    subject: String,
}

fn parse_one(index: usize, cert: X509) -> Result<Parsed, ChainError> {
    let der = cert.to_der().map_err(|e| ChainError::Parse {
        index,
        reason: e.to_string(),
    })?;
    let (_, x) = x509_parser::parse_x509_certificate(&der).map_err(|e| ChainError::Parse {
        index,
        reason: e.to_string(),
    })?;
    let subject_raw = x.subject().as_raw().to_vec();
    let issuer_raw = x.issuer().as_raw().to_vec();
    let subject = crate::text::escape_control(&x.subject().to_string()).into_owned();
    Ok(Parsed {
        cert,
        der,
        subject_raw,
        issuer_raw,
        subject,
    })
}

fn unix_time_text(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

impl ProvisioningChain {
    /// Reads certificates (any order) and the key from PEM: `key_pem` if given, else
    /// the key in `pem` itself. An encrypted key is opened with `password`; nothing is
    /// ever prompted for.
    pub fn from_pem(
        pem: &[u8],
        key_pem: Option<&[u8]>,
        password: &[u8],
        now: i64,
    ) -> Result<Self, ChainError> {
        let certificates =
            X509::stack_from_pem(pem).map_err(|e| ChainError::Read(e.to_string()))?;
        let key_source = key_pem.unwrap_or(pem);
        if !String::from_utf8_lossy(key_source).contains("PRIVATE KEY-----") {
            return Err(ChainError::NoKey);
        }
        let key = PKey::private_key_from_pem_passphrase(key_source, password)
            .map_err(|e| ChainError::Key(e.to_string()))?;
        Self::from_parts(certificates, key, now)
    }

    /// Reads a PKCS#12 (PFX) file: its certificate, the CA certificates and the key.
    pub fn from_pfx(der: &[u8], password: &str, now: i64) -> Result<Self, ChainError> {
        let parsed = Pkcs12::from_der(der)
            .and_then(|p| p.parse2(password))
            .map_err(|e| ChainError::Pfx(e.to_string()))?;
        let mut certificates: Vec<X509> = parsed.cert.into_iter().collect();
        if let Some(ca) = parsed.ca {
            certificates.extend(ca);
        }
        let key = parsed.pkey.ok_or(ChainError::NoKey)?;
        Self::from_parts(certificates, key, now)
    }

    /// Checks certificates (any order, duplicates ignored) and the leaf's key.
    pub fn from_parts(
        certificates: Vec<X509>,
        key: PKey<Private>,
        now: i64,
    ) -> Result<Self, ChainError> {
        if certificates.is_empty() {
            return Err(ChainError::NoCertificates);
        }
        let mut parsed: Vec<Parsed> = Vec::new();
        for (i, cert) in certificates.into_iter().enumerate() {
            let p = parse_one(i, cert)?;
            if !parsed.iter().any(|q| q.der == p.der) {
                parsed.push(p);
            }
        }
        if parsed.len() > MAX_CERTIFICATES {
            return Err(ChainError::TooMany(parsed.len()));
        }
        if parsed.len() < 2 {
            return Err(ChainError::TooShort);
        }
        let ordered = order(parsed)?;
        let leaf = &ordered[0];
        let key_matches = leaf
            .cert
            .public_key()
            .map(|pk| pk.public_eq(&key))
            .unwrap_or(false);
        if !key_matches {
            return Err(ChainError::KeyMismatch {
                subject: leaf.subject.clone(),
            });
        }
        let mut not_after = i64::MAX;
        for (i, p) in ordered.iter().enumerate() {
            not_after = not_after.min(check_certificate(p, i == 0, now)?);
        }
        let (common_name, leaf_key_bits) = check_leaf(leaf)?;
        let domain = domain_of(&common_name);
        let root = ordered.last().map(|r| RootHashes::of_der(&r.der));
        let summary = ChainSummary {
            domain,
            common_name,
            subjects: ordered.iter().map(|p| p.subject.clone()).collect(),
            not_after,
            root: root.ok_or(ChainError::TooShort)?,
            leaf_sha256: RootHashes::of_der(&leaf.der).sha256,
            leaf_key_bits,
        };
        Ok(ProvisioningChain {
            certificates: ordered.into_iter().map(|p| p.cert).collect(),
            key,
            summary,
        })
    }

    /// The certificates, leaf first, root last.
    pub fn certificates(&self) -> &[X509] {
        &self.certificates
    }

    /// The leaf's private key.
    pub fn key(&self) -> &PKey<Private> {
        &self.key
    }

    /// The key as PKCS#8 DER, for sealing.
    pub fn key_pkcs8(&self) -> Result<Zeroizing<Vec<u8>>, ChainError> {
        self.key
            .private_key_to_pkcs8()
            .map(Zeroizing::new)
            .map_err(|e| ChainError::Key(e.to_string()))
    }

    /// The certificates as PEM, leaf first: how the store keeps them.
    pub fn chain_pem(&self) -> Result<String, ChainError> {
        let mut out = String::new();
        for cert in &self.certificates {
            let pem = cert.to_pem().map_err(|e| ChainError::Read(e.to_string()))?;
            out.push_str(&String::from_utf8_lossy(&pem));
        }
        Ok(out)
    }

    /// Rebuilds a stored chain (PEM, PKCS#8 key DER), checking it again against `now`.
    pub fn from_stored(chain_pem: &str, key_pkcs8: &[u8], now: i64) -> Result<Self, ChainError> {
        let certificates = X509::stack_from_pem(chain_pem.as_bytes())
            .map_err(|e| ChainError::Read(e.to_string()))?;
        let key =
            PKey::private_key_from_pkcs8(key_pkcs8).map_err(|e| ChainError::Key(e.to_string()))?;
        Self::from_parts(certificates, key, now)
    }

    pub fn summary(&self) -> &ChainSummary {
        &self.summary
    }
}

/// The subjects of the certificates in a PEM text, in order (for listings).
pub fn subjects_of_pem(pem: &str) -> Vec<String> {
    X509::stack_from_pem(pem.as_bytes())
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .filter_map(|(i, c)| parse_one(i, c).ok().map(|p| p.subject))
        .collect()
}

/// The chain's domain from the leaf CN (see [`ChainSummary::domain`]).
fn domain_of(common_name: &str) -> String {
    let labels: Vec<&str> = common_name.split('.').collect();
    if labels.len() >= 3 {
        labels[1..].join(".")
    } else {
        common_name.to_string()
    }
}

/// Orders the certificates leaf first: the leaf is the one certificate that issued
/// none of the others; each next one is the issuer of the previous, and the last is a
/// self-signed root. Every signature is verified on the way.
fn order(mut certs: Vec<Parsed>) -> Result<Vec<Parsed>, ChainError> {
    let issues_another = |i: usize, certs: &[Parsed]| {
        certs.iter().enumerate().any(|(j, c)| {
            j != i && c.issuer_raw == certs[i].subject_raw && c.subject_raw != c.issuer_raw
        })
    };
    let leaves: Vec<usize> = (0..certs.len())
        .filter(|&i| !issues_another(i, &certs))
        .collect();
    let [leaf] = leaves[..] else {
        let names: Vec<&str> = leaves.iter().map(|&i| certs[i].subject.as_str()).collect();
        return Err(ChainError::NotOneChain(if names.is_empty() {
            "every certificate issues another (a loop)".to_string()
        } else {
            format!(
                "{} certificates could be the leaf: {}",
                names.len(),
                names.join("; ")
            )
        }));
    };
    let mut ordered = vec![certs.remove(leaf)];
    loop {
        let current = ordered.last().expect("the leaf is in");
        if current.subject_raw == current.issuer_raw {
            let key = current.cert.public_key().ok();
            if !key.is_some_and(|k| current.cert.verify(&k).unwrap_or(false)) {
                return Err(ChainError::BadSignature {
                    subject: current.subject.clone(),
                });
            }
            break;
        }
        let Some(next) = certs
            .iter()
            .position(|c| c.subject_raw == current.issuer_raw)
        else {
            return Err(ChainError::MissingRoot {
                subject: current.subject.clone(),
            });
        };
        let issuer_key = certs[next].cert.public_key().ok();
        if !issuer_key.is_some_and(|k| current.cert.verify(&k).unwrap_or(false)) {
            return Err(ChainError::BadSignature {
                subject: current.subject.clone(),
            });
        }
        ordered.push(certs.remove(next));
    }
    if let Some(extra) = certs.first() {
        return Err(ChainError::NotOneChain(format!(
            "{} is not on the path from the leaf to the root",
            extra.subject
        )));
    }
    Ok(ordered)
}

/// Signature algorithm, key and validity of one certificate; returns its `notAfter`.
fn check_certificate(p: &Parsed, is_leaf: bool, now: i64) -> Result<i64, ChainError> {
    let nid = p.cert.signature_algorithm().object().nid();
    let algorithm = p.cert.signature_algorithm().object().to_string();
    match nid {
        Nid::SHA256WITHRSAENCRYPTION
        | Nid::SHA384WITHRSAENCRYPTION
        | Nid::SHA512WITHRSAENCRYPTION
        | Nid::ECDSA_WITH_SHA256
        | Nid::ECDSA_WITH_SHA384
        | Nid::ECDSA_WITH_SHA512 => {}
        Nid::SHA1WITHRSAENCRYPTION | Nid::SHA1WITHRSA | Nid::ECDSA_WITH_SHA1 | Nid::DSAWITHSHA1 => {
            return Err(ChainError::Sha1 {
                subject: p.subject.clone(),
                algorithm,
            })
        }
        _ => {
            return Err(ChainError::SignatureAlgorithm {
                subject: p.subject.clone(),
                algorithm,
            })
        }
    }
    let key = p.cert.public_key().map_err(|e| ChainError::Parse {
        index: 0,
        reason: e.to_string(),
    })?;
    match key.id() {
        Id::RSA if key.bits() < MIN_RSA_BITS => {
            return Err(ChainError::WeakRsa {
                subject: p.subject.clone(),
                bits: key.bits(),
            })
        }
        Id::RSA => {}
        Id::EC if !is_leaf => {}
        other => {
            return Err(ChainError::UnsupportedKey {
                subject: p.subject.clone(),
                what: format!("{other:?}").replace("Id(", "type ("),
                rule: if is_leaf {
                    "the leaf key must be RSA (at least 2048 bits)"
                } else {
                    "CA keys must be RSA (at least 2048 bits) or EC"
                },
            })
        }
    }
    let (_, x) = x509_parser::parse_x509_certificate(&p.der).map_err(|e| ChainError::Parse {
        index: 0,
        reason: e.to_string(),
    })?;
    let not_before = x.validity().not_before.timestamp();
    let not_after = x.validity().not_after.timestamp();
    if now > not_after {
        return Err(ChainError::Expired {
            subject: p.subject.clone(),
            not_after: unix_time_text(not_after),
        });
    }
    if now < not_before {
        return Err(ChainError::NotYetValid {
            subject: p.subject.clone(),
            not_before: unix_time_text(not_before),
        });
    }
    Ok(not_after)
}

/// The leaf's purpose rules and common name; returns the CN (lower-case) and key bits.
fn check_leaf(leaf: &Parsed) -> Result<(String, u32), ChainError> {
    let parse_error = |e: String| ChainError::Parse {
        index: 0,
        reason: e,
    };
    let (_, x) =
        x509_parser::parse_x509_certificate(&leaf.der).map_err(|e| parse_error(e.to_string()))?;
    let eku = x
        .extended_key_usage()
        .map_err(|e| parse_error(e.to_string()))?;
    let (server_auth, intel_oid) = match eku {
        Some(ext) => (
            ext.value.server_auth,
            ext.value
                .other
                .iter()
                .any(|oid| oid.to_id_string() == INTEL_SETUP_OID),
        ),
        None => (false, false),
    };
    if !server_auth {
        return Err(ChainError::NoServerAuth {
            subject: leaf.subject.clone(),
        });
    }
    let intel_ou = x
        .subject()
        .iter_organizational_unit()
        .any(|ou| ou.as_str() == Ok(INTEL_SETUP_OU));
    if !intel_oid && !intel_ou {
        return Err(ChainError::NoIntelPurpose {
            subject: leaf.subject.clone(),
        });
    }
    let no_name = || ChainError::NoCommonName {
        subject: leaf.subject.clone(),
    };
    let cn = x
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(no_name)?
        .to_ascii_lowercase();
    let labels: Vec<&str> = cn.trim_start_matches("*.").split('.').collect();
    let valid_label = |l: &&str| {
        !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if labels.len() < 2 || !labels.iter().all(valid_label) {
        return Err(no_name());
    }
    let bits = leaf.cert.public_key().map(|k| k.bits()).unwrap_or(0);
    Ok((cn, bits))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, Issuer, KeyPair, SignatureAlgorithm,
    };

    pub(crate) const NOW: i64 = 1_800_000_000; // 2027-01-15

    /// How a test chain is built.
    pub(crate) struct Recipe {
        pub leaf_cn: &'static str,
        pub leaf_eku: Vec<ExtendedKeyUsagePurpose>,
        pub leaf_ou: Option<&'static str>,
        pub intel_oid: bool,
        pub leaf_bits: u32,
        pub intermediate: bool,
        pub leaf_alg: &'static SignatureAlgorithm,
        pub not_after: i64,
    }

    impl Default for Recipe {
        fn default() -> Self {
            Recipe {
                leaf_cn: "prov.example.com",
                leaf_eku: vec![ExtendedKeyUsagePurpose::ServerAuth],
                leaf_ou: None,
                intel_oid: true,
                leaf_bits: 2048,
                intermediate: true,
                leaf_alg: &rcgen::PKCS_RSA_SHA256,
                not_after: NOW + 86_400 * 365,
            }
        }
    }

    fn rsa_key(bits: u32, alg: &'static SignatureAlgorithm) -> (KeyPair, PKey<Private>) {
        let pkey = PKey::from_rsa(openssl::rsa::Rsa::generate(bits).unwrap()).unwrap();
        let der = pkey.private_key_to_pkcs8().unwrap();
        let kp = KeyPair::from_pkcs8_der_and_sign_algo(&der.as_slice().into(), alg).unwrap();
        (kp, pkey)
    }

    fn validity(p: &mut CertificateParams, not_after: i64) {
        p.not_before = time::OffsetDateTime::from_unix_timestamp(NOW - 86_400).unwrap();
        p.not_after = time::OffsetDateTime::from_unix_timestamp(not_after).unwrap();
    }

    fn ca_params(cn: &str) -> CertificateParams {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        validity(&mut p, NOW + 86_400 * 3650);
        p
    }

    /// Builds a chain; returns certificates leaf first and the leaf key.
    pub(crate) fn build(recipe: &Recipe) -> (Vec<X509>, PKey<Private>) {
        let (certs, key, _) = build_with_root_key(recipe);
        (certs, key)
    }

    /// [`build`], plus the root's key. A leaf key below 2048 bits (which rcgen's ring
    /// backend refuses) gets its leaf re-signed by OpenSSL ([`resign_leaf`]).
    pub(crate) fn build_with_root_key(
        recipe: &Recipe,
    ) -> (Vec<X509>, PKey<Private>, PKey<Private>) {
        let (root_key, root_pkey) = rsa_key(2048, &rcgen::PKCS_RSA_SHA256);
        let root_params = ca_params("Test Root");
        let root = root_params.self_signed(&root_key).unwrap();
        let mut certs = Vec::new();
        let root_issuer = Issuer::new(root_params, &root_key);
        let (inter_key, _) = rsa_key(2048, &rcgen::PKCS_RSA_SHA256);
        let inter_params = ca_params("Test Intermediate");
        let inter = inter_params.signed_by(&inter_key, &root_issuer).unwrap();
        let inter_issuer = Issuer::new(inter_params, &inter_key);
        let (leaf_kp, leaf_pkey) = rsa_key(recipe.leaf_bits.max(2048), recipe.leaf_alg);
        let mut leaf = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, recipe.leaf_cn);
        if let Some(ou) = recipe.leaf_ou {
            dn.push(DnType::OrganizationalUnitName, ou);
        }
        leaf.distinguished_name = dn;
        leaf.extended_key_usages = recipe.leaf_eku.clone();
        if recipe.intel_oid {
            leaf.extended_key_usages
                .push(ExtendedKeyUsagePurpose::Other(vec![
                    2, 16, 840, 1, 113741, 1, 2, 3,
                ]));
        }
        validity(&mut leaf, recipe.not_after);
        let issuer = if recipe.intermediate {
            &inter_issuer
        } else {
            &root_issuer
        };
        let leaf = leaf.signed_by(&leaf_kp, issuer).unwrap();
        certs.push(X509::from_der(leaf.der()).unwrap());
        if recipe.intermediate {
            certs.push(X509::from_der(inter.der()).unwrap());
        }
        certs.push(X509::from_der(root.der()).unwrap());
        if recipe.leaf_bits < 2048 {
            assert!(!recipe.intermediate, "weak leaves are signed by the root");
            let weak =
                PKey::from_rsa(openssl::rsa::Rsa::generate(recipe.leaf_bits).unwrap()).unwrap();
            resign_leaf(&mut certs, &weak, &root_pkey, MessageDigest::sha256());
            return (certs, weak, root_pkey);
        }
        (certs, leaf_pkey, root_pkey)
    }

    /// Replaces the leaf (certs[0]) by one with the same names, validity and
    /// serverAuth + Intel EKU for `leaf_key`, signed by `issuer_key` with `md`.
    pub(crate) fn resign_leaf(
        certs: &mut [X509],
        leaf_key: &PKey<Private>,
        issuer_key: &PKey<Private>,
        md: MessageDigest,
    ) {
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_subject_name(certs[0].subject_name()).unwrap();
        b.set_issuer_name(certs[0].issuer_name()).unwrap();
        b.set_pubkey(leaf_key).unwrap();
        b.set_not_before(certs[0].not_before()).unwrap();
        b.set_not_after(certs[0].not_after()).unwrap();
        let eku = openssl::x509::extension::ExtendedKeyUsage::new()
            .server_auth()
            .other(INTEL_SETUP_OID)
            .build()
            .unwrap();
        b.append_extension(eku).unwrap();
        b.sign(issuer_key, md).unwrap();
        certs[0] = b.build();
    }

    fn check(recipe: &Recipe) -> Result<ProvisioningChain, ChainError> {
        let (certs, key) = build(recipe);
        ProvisioningChain::from_parts(certs, key, NOW)
    }

    #[test]
    fn a_commercial_style_chain_is_accepted_in_any_order() {
        let (mut certs, key) = build(&Recipe::default());
        let root_der = certs[2].to_der().unwrap();
        certs.reverse();
        let chain = ProvisioningChain::from_parts(certs, key, NOW).unwrap();
        let s = chain.summary();
        assert_eq!(s.common_name, "prov.example.com");
        assert_eq!(s.domain, "example.com");
        assert_eq!(s.subjects.len(), 3);
        assert!(s.subjects[0].contains("prov.example.com"));
        assert!(s.subjects[2].contains("Test Root"));
        assert_eq!(s.root, RootHashes::of_der(&root_der));
        assert_eq!(
            (s.root.sha1.len(), s.root.sha256.len(), s.root.sha384.len()),
            (20, 32, 48)
        );
        // The stored form rebuilds the same chain.
        let again = ProvisioningChain::from_stored(
            &chain.chain_pem().unwrap(),
            &chain.key_pkcs8().unwrap(),
            NOW,
        )
        .unwrap();
        assert_eq!(again.summary(), chain.summary());
    }

    #[test]
    fn the_ou_stands_in_for_the_intel_oid_but_only_exactly() {
        let ou = Recipe {
            intel_oid: false,
            leaf_ou: Some(INTEL_SETUP_OU),
            ..Recipe::default()
        };
        check(&ou).unwrap();
        let wrong_case = Recipe {
            intel_oid: false,
            leaf_ou: Some("intel(r) client setup certificate"),
            ..Recipe::default()
        };
        assert!(matches!(
            check(&wrong_case),
            Err(ChainError::NoIntelPurpose { .. })
        ));
    }

    #[test]
    fn each_firmware_rule_refuses_with_its_reason() {
        let no_server_auth = Recipe {
            leaf_eku: vec![ExtendedKeyUsagePurpose::ClientAuth],
            ..Recipe::default()
        };
        assert!(matches!(
            check(&no_server_auth),
            Err(ChainError::NoServerAuth { .. })
        ));
        let no_purpose = Recipe {
            intel_oid: false,
            ..Recipe::default()
        };
        let err = check(&no_purpose).unwrap_err();
        assert!(err.to_string().contains("2.16.840.1.113741.1.2.3"), "{err}");
        let weak = Recipe {
            leaf_bits: 1024,
            intermediate: false,
            ..Recipe::default()
        };
        assert!(matches!(
            check(&weak),
            Err(ChainError::WeakRsa { bits: 1024, .. })
        ));
        let expired = Recipe {
            not_after: NOW - 10,
            ..Recipe::default()
        };
        let err = check(&expired).unwrap_err();
        assert!(matches!(err, ChainError::Expired { .. }), "{err}");
        let bad_cn = Recipe {
            leaf_cn: "localhost",
            ..Recipe::default()
        };
        assert!(matches!(
            check(&bad_cn),
            Err(ChainError::NoCommonName { .. })
        ));
    }

    #[test]
    fn sha1_anywhere_is_refused() {
        // rcgen cannot sign with SHA-1: OpenSSL re-signs the leaf.
        let (mut certs, key, root_key) = build_with_root_key(&Recipe {
            intermediate: false,
            ..Recipe::default()
        });
        // The same leaf signed with SHA-256 passes: only the digest differs.
        resign_leaf(&mut certs, &key, &root_key, MessageDigest::sha256());
        let reference = ProvisioningChain::from_parts(certs.clone(), key.clone(), NOW);
        assert!(reference.is_ok(), "{reference:?}");
        resign_leaf(&mut certs, &key, &root_key, MessageDigest::sha1());
        let err = ProvisioningChain::from_parts(certs, key, NOW).unwrap_err();
        assert!(matches!(err, ChainError::Sha1 { .. }), "{err}");
        assert!(err.to_string().contains("SHA-1"), "{err}");
    }

    #[test]
    fn structure_and_key_mistakes_are_named() {
        let (certs, _) = build(&Recipe::default());
        let (_, other_key) = rsa_key(2048, &rcgen::PKCS_RSA_SHA256);
        assert!(matches!(
            ProvisioningChain::from_parts(certs.clone(), other_key, NOW),
            Err(ChainError::KeyMismatch { .. })
        ));
        let (_, key) = build(&Recipe::default());
        // Without its root.
        let (mut no_root, leaf_key) = build(&Recipe::default());
        no_root.pop();
        assert!(matches!(
            ProvisioningChain::from_parts(no_root, leaf_key, NOW),
            Err(ChainError::MissingRoot { .. })
        ));
        // Five certificates.
        let (mut five, leaf_key) = build(&Recipe::default());
        five.extend(build(&Recipe::default()).0.into_iter().take(2));
        assert!(matches!(
            ProvisioningChain::from_parts(five, leaf_key, NOW),
            Err(ChainError::TooMany(5))
        ));
        // Two unrelated chains: two leaves.
        let (mut two, leaf_key) = build(&Recipe::default());
        two.truncate(2);
        two.extend(build(&Recipe::default()).0.into_iter().take(1));
        assert!(matches!(
            ProvisioningChain::from_parts(two, leaf_key, NOW),
            Err(ChainError::NotOneChain(_))
        ));
        assert!(matches!(
            ProvisioningChain::from_parts(certs[..1].to_vec(), key, NOW),
            Err(ChainError::TooShort)
        ));
    }

    #[test]
    fn pem_and_pfx_inputs_are_read() {
        let (certs, key) = build(&Recipe::default());
        let mut pem = Vec::new();
        for c in &certs {
            pem.extend(c.to_pem().unwrap());
        }
        let key_pem = key.private_key_to_pem_pkcs8().unwrap();
        assert!(matches!(
            ProvisioningChain::from_pem(&pem, None, b"", NOW),
            Err(ChainError::NoKey)
        ));
        ProvisioningChain::from_pem(&pem, Some(&key_pem), b"", NOW).unwrap();
        let mut both = pem.clone();
        both.extend(&key_pem);
        ProvisioningChain::from_pem(&both, None, b"", NOW).unwrap();

        let mut ca = openssl::stack::Stack::new().unwrap();
        for c in &certs[1..] {
            ca.push(c.clone()).unwrap();
        }
        let pfx = Pkcs12::builder()
            .name("prov")
            .pkey(&key)
            .cert(&certs[0])
            .ca(ca)
            .build2("s3cret")
            .unwrap()
            .to_der()
            .unwrap();
        let chain = ProvisioningChain::from_pfx(&pfx, "s3cret", NOW).unwrap();
        assert_eq!(chain.certificates().len(), 3);
        assert!(matches!(
            ProvisioningChain::from_pfx(&pfx, "wrong", NOW),
            Err(ChainError::Pfx(_))
        ));
    }

    #[test]
    fn debug_output_hides_the_key() {
        let chain = check(&Recipe::default()).unwrap();
        let text = format!("{chain:?}");
        assert!(
            text.contains("redacted") && !text.contains("PRIVATE"),
            "{text}"
        );
    }
}
