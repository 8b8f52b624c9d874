//! Names of well-known root certificates by SHA-256 hash, so an alert about a hello
//! no configured chain matches can say which CAs the device trusts.
//!
//! The first six are the roots `docs/protocol-notes.md` names from real hellos
//! (MeshCentral issue #2805, the Go Daddy Class 2 root); every hash here was computed
//! from the DER of the certificate in a public root store (Debian `ca-certificates`),
//! and the prefixes of the first six agree with the ones amt-pki.md quotes.

use crate::hello::{CertificateHash, HashAlgorithm};

const KNOWN: &[(&str, &str)] = &[
    (
        "cb3ccbb76031e5e0138f8dd39a23f9de47ffc35e43c1144cea27d46a5ab1cb5f",
        "DigiCert Global Root G2",
    ),
    (
        "31ad6648f8104138c738f39ea4320133393e3a18cc02296ef97c2ac9ef6731d0",
        "DigiCert Global Root G3",
    ),
    (
        "552f7bdcf1a7af9e6ce672017f4f12abf77240c78e761ac203d1d9d20ac89988",
        "DigiCert Trusted Root G4",
    ),
    (
        "cbb522d7b7f127ad6a0113865bdf1cd4102e7d0759af635a7cf4720dc963c53b",
        "GlobalSign Root CA - R3",
    ),
    (
        "c3846bf24b9e93ca64274c0ec67c1ecc5e024ffcacd2d74019350e81fe546ae4",
        "Go Daddy Class 2 CA",
    ),
    (
        "45140b3247eb9cc8c5b4f0d7b53091f73292089e6e5a63e2749dd3aca9198eda",
        "Go Daddy Root Certificate Authority - G2",
    ),
    (
        "4348a0e9444c78cb265e058d5e8944b4d84f9662bd26db257f8934a443c70161",
        "DigiCert Global Root CA",
    ),
    (
        "3e9099b5015e8f486c00bcea9d111ee721faba355a89bcf1df69561e3dc6325c",
        "DigiCert Assured ID Root CA",
    ),
    (
        "ebd41040e4bb3ec742c9e381d31ef2a41a48b6685c96e7cef3c1df6cd4331c99",
        "GlobalSign Root CA",
    ),
    (
        "52f0e1c4e58ec629291b60317f074671b85d7ea80d5b07273463534b32b40234",
        "COMODO RSA Certification Authority",
    ),
    (
        "e793c9b02fd8aa13e21c31228accb08119643b749c898964b1746d46c3d4cbd2",
        "USERTrust RSA Certification Authority",
    ),
    (
        "43df5774b03e7fef5fe40d931a7bedf1bb2e6b42738c4e6d3841103d3aa7f339",
        "Entrust Root Certification Authority - G2",
    ),
];

/// The CA name of a hello hash entry, where vprov knows it (SHA-256 entries only).
pub fn name_of(entry: &CertificateHash) -> Option<&'static str> {
    if entry.algorithm != HashAlgorithm::Sha256 {
        return None;
    }
    let hex = hex::encode(&entry.hash);
    KNOWN.iter().find(|(h, _)| *h == hex).map(|(_, n)| *n)
}

/// One hash entry for people: `SHA-256 cb3ccbb7…b5f (DigiCert Global Root G2)`.
pub fn describe(entry: &CertificateHash) -> String {
    let hex = hex::encode(&entry.hash);
    let short = if hex.len() > 16 {
        format!("{}…{}", &hex[..8], &hex[hex.len() - 4..])
    } else {
        hex
    };
    match name_of(entry) {
        Some(name) => format!("{} {short} ({name})", entry.algorithm.name()),
        None => format!("{} {short}", entry.algorithm.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256(hex_text: &str) -> CertificateHash {
        CertificateHash {
            algorithm: HashAlgorithm::Sha256,
            hash: hex::decode(hex_text).unwrap(),
        }
    }

    #[test]
    fn hashes_from_amt_pki_md_are_named() {
        // amt-pki.md §4: `cb3ccbb7…` DigiCert Global Root G2, `c3846bf2…` Go Daddy Class 2.
        let g2 = sha256(KNOWN[0].0);
        assert!(KNOWN[0].0.starts_with("cb3ccbb7"));
        assert!(KNOWN[4].0.starts_with("c3846bf2"));
        assert_eq!(name_of(&g2), Some("DigiCert Global Root G2"));
        assert_eq!(
            describe(&g2),
            "SHA-256 cb3ccbb7…cb5f (DigiCert Global Root G2)"
        );
        let unknown = sha256(&"ab".repeat(32));
        assert_eq!(name_of(&unknown), None);
        assert_eq!(describe(&unknown), "SHA-256 abababab…abab");
        let sha1 = CertificateHash {
            algorithm: HashAlgorithm::Sha1,
            hash: g2.hash[..20].to_vec(),
        };
        assert_eq!(name_of(&sha1), None);
        for (hex_text, _) in KNOWN {
            assert_eq!(hex::decode(hex_text).unwrap().len(), 32);
        }
    }
}
