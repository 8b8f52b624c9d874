//! Setup-mode "hello" messages: what a device in setup mode sends to TCP port 9971.
//!
//! Owns the wire formats (`docs/protocol-notes.md`; all little-endian):
//! - **v2 (PSK)**: exactly 32 bytes: `u16` admin-credentials-set (0/1), `u16` version
//!   = 2, `u32` retry count, 16 UUID bytes, 8 ASCII PID characters (no dash);
//! - **v3 (PKI)**: the same 24-byte header with version 3, then a hash count `N` and
//!   `N` entries `[algorithm u8][length u8][hash]` (1 = SHA-1/20, 2 = SHA-256/32,
//!   3 = SHA-384/48). Bytes after the last hash are tolerated and counted, as
//!   MeshCentral's parser does (firmware versions have been seen to append fields).
//!
//! Parsing is total: any byte string gives a [`Hello`] or a [`HelloError`], never a
//! panic, and never allocates more than the input's size.

use std::fmt;
use std::str::FromStr;

/// A device's UUID as the 16 raw bytes of a hello (or of `GetUuid`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceUuid(pub [u8; 16]);

impl fmt::Display for DeviceUuid {
    /// The GUID text form: the first three groups byte-reversed, the last 8 bytes in
    /// order (§1.6), lower-case.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9]
        )?;
        b[10..].iter().try_for_each(|x| write!(f, "{x:02x}"))
    }
}

/// Text that is not a UUID in its 8-4-4-4-12 hexadecimal form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a UUID (8-4-4-4-12 hexadecimal digits)")]
pub struct UuidError(String);

impl FromStr for DeviceUuid {
    type Err = UuidError;

    /// The GUID text form (either case, surrounding whitespace ignored) back into
    /// the bytes [`fmt::Display`] writes it from.
    fn from_str(text: &str) -> Result<DeviceUuid, UuidError> {
        let error = || UuidError(text.chars().take(64).collect());
        let groups: Vec<&str> = text.trim().split('-').collect();
        let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lengths != [8, 4, 4, 4, 12] {
            return Err(error());
        }
        let digits: String = groups.concat();
        if !digits.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(error());
        }
        let mut d = [0u8; 16];
        for (i, byte) in d.iter_mut().enumerate() {
            let pair = digits.get(2 * i..2 * i + 2).ok_or_else(error)?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| error())?;
        }
        let mut b = d;
        b[..4].copy_from_slice(&[d[3], d[2], d[1], d[0]]);
        b[4..8].copy_from_slice(&[d[5], d[4], d[7], d[6]]);
        Ok(DeviceUuid(b))
    }
}

impl DeviceUuid {
    /// The stored text form of a UUID a person or a plugin gave: its canonical form
    /// if it is one, else the text trimmed and lower-cased (which names no device, so
    /// the lookup says "unknown device").
    pub fn canonical(text: &str) -> String {
        match text.parse::<DeviceUuid>() {
            Ok(uuid) => uuid.to_string(),
            Err(_) => text.trim().to_ascii_lowercase(),
        }
    }
}

impl fmt::Debug for DeviceUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceUuid({self})")
    }
}

/// Fields common to every hello version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelloHeader {
    pub admin_credentials_set: bool,
    pub version: u16,
    pub retry_count: u32,
    pub uuid: DeviceUuid,
}

/// A parsed hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// One-touch (PID/PPS) provisioning: AMT 2.x–10.x.
    Psk {
        header: HelloHeader,
        /// The 8 PID bytes as sent; not yet checked for alphabet or check character.
        pid: [u8; 8],
    },
    /// Remote (certificate-based) configuration.
    Pki {
        header: HelloHeader,
        hashes: Vec<CertificateHash>,
        /// Bytes after the last hash (ignored).
        trailing: usize,
    },
}

impl Hello {
    pub fn header(&self) -> &HelloHeader {
        match self {
            Hello::Psk { header, .. } | Hello::Pki { header, .. } => header,
        }
    }
}

/// One trusted-root certificate hash of a PKI hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateHash {
    pub algorithm: HashAlgorithm,
    pub hash: Vec<u8>,
}

/// Hash algorithm of a [`CertificateHash`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    Sha1,
    Sha256,
    Sha384,
}

impl HashAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            HashAlgorithm::Sha1 => "SHA-1",
            HashAlgorithm::Sha256 => "SHA-256",
            HashAlgorithm::Sha384 => "SHA-384",
        }
    }
}

/// Why bytes received on the hello port are not a hello. Safe to put in an alert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("empty message")]
    Empty,
    #[error("{0} bytes is too short for a hello header (24 bytes)")]
    TooShort(usize),
    #[error("admin-credentials flag is {0}, expected 0 or 1")]
    BadAdminFlag(u16),
    #[error("unsupported hello version {0} (vprov understands 2 = PSK and 3 = PKI)")]
    UnsupportedVersion(u16),
    #[error("a version 2 (PSK) hello has exactly 32 bytes, this one has {0}")]
    PskLength(usize),
    #[error("PKI hello hash entry {index}: unknown algorithm {algorithm} with length {length}")]
    BadHashEntry {
        index: usize,
        algorithm: u8,
        length: u8,
    },
    #[error("PKI hello is truncated: {expected} hashes announced, {found} present")]
    Truncated { expected: usize, found: usize },
}

/// Parses one hello message (the whole content of one connection).
pub fn parse(bytes: &[u8]) -> Result<Hello, HelloError> {
    if bytes.is_empty() {
        return Err(HelloError::Empty);
    }
    if bytes.len() < 24 {
        return Err(HelloError::TooShort(bytes.len()));
    }
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
    let admin = u16_at(0);
    if admin > 1 {
        return Err(HelloError::BadAdminFlag(admin));
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&bytes[8..24]);
    let header = HelloHeader {
        admin_credentials_set: admin == 1,
        version: u16_at(2),
        retry_count: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        uuid: DeviceUuid(uuid),
    };
    match header.version {
        2 => {
            if bytes.len() != 32 {
                return Err(HelloError::PskLength(bytes.len()));
            }
            let mut pid = [0u8; 8];
            pid.copy_from_slice(&bytes[24..32]);
            Ok(Hello::Psk { header, pid })
        }
        3 => parse_pki(header, &bytes[24..]),
        other => Err(HelloError::UnsupportedVersion(other)),
    }
}

fn parse_pki(header: HelloHeader, body: &[u8]) -> Result<Hello, HelloError> {
    let Some((&count, mut rest)) = body.split_first() else {
        return Err(HelloError::Truncated {
            expected: 1,
            found: 0,
        });
    };
    let expected = usize::from(count);
    let mut hashes = Vec::with_capacity(expected);
    for index in 0..expected {
        let truncated = HelloError::Truncated {
            expected,
            found: index,
        };
        let [algorithm, length, tail @ ..] = rest else {
            return Err(truncated);
        };
        let algo = match (*algorithm, *length) {
            (1, 20) => HashAlgorithm::Sha1,
            (2, 32) => HashAlgorithm::Sha256,
            (3, 48) => HashAlgorithm::Sha384,
            (algorithm, length) => {
                return Err(HelloError::BadHashEntry {
                    index,
                    algorithm,
                    length,
                })
            }
        };
        let n = usize::from(*length);
        if tail.len() < n {
            return Err(truncated);
        }
        hashes.push(CertificateHash {
            algorithm: algo,
            hash: tail[..n].to_vec(),
        });
        rest = &tail[n..];
    }
    Ok(Hello::Pki {
        header,
        hashes,
        trailing: rest.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    /// The synthetic v2 hello of §1.8.
    const PSK_HELLO: &str = "01000200000000004b529b93d413181de4871c697a6b7a2b303030303033374d";

    #[test]
    fn parses_the_documented_psk_hello() {
        let hello = parse(&unhex(PSK_HELLO)).unwrap();
        let Hello::Psk { header, pid } = hello else {
            panic!("not PSK")
        };
        assert!(header.admin_credentials_set);
        assert_eq!(header.version, 2);
        assert_eq!(header.retry_count, 0);
        assert_eq!(
            header.uuid.to_string(),
            "939b524b-13d4-1d18-e487-1c697a6b7a2b"
        );
        assert_eq!(&pid, b"0000037M");
    }

    #[test]
    fn uuid_text_forms_match_the_documented_vectors() {
        for (raw, text) in [
            (
                "3ec2ffd2d19d2d41860a54b2039b72ff",
                "d2ffc23e-9dd1-412d-860a-54b2039b72ff",
            ),
            (
                "13aee355d2bfbb6117a088aedd7037ea",
                "55e3ae13-bfd2-61bb-17a0-88aedd7037ea",
            ),
        ] {
            let mut b = [0u8; 16];
            b.copy_from_slice(&unhex(raw));
            assert_eq!(DeviceUuid(b).to_string(), text);
        }
    }

    /// A v3 hello shaped like MeshCentral's real sample 1: 23 SHA-256 hashes.
    fn pki_hello(count: u8, entries: usize) -> Vec<u8> {
        let mut b = unhex("0100 0300 00000000 4b529b93d413181de4871c697a6b7a2b");
        b.push(count);
        for i in 0..entries {
            b.extend([2u8, 32]);
            b.extend([i as u8; 32]);
        }
        b
    }

    #[test]
    fn parses_a_pki_hello_ending_exactly_at_its_last_hash() {
        let bytes = pki_hello(23, 23);
        assert_eq!(bytes.len(), 807, "the size of MeshCentral's sample 1");
        let Hello::Pki {
            header,
            hashes,
            trailing,
        } = parse(&bytes).unwrap()
        else {
            panic!("not PKI")
        };
        assert_eq!(trailing, 0);
        assert_eq!(header.version, 3);
        assert_eq!(hashes.len(), 23);
        assert_eq!(hashes[22].algorithm, HashAlgorithm::Sha256);
        assert_eq!(hashes[22].hash, vec![22u8; 32]);
    }

    #[test]
    fn malformed_hellos_are_named() {
        assert_eq!(parse(&[]), Err(HelloError::Empty));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(HelloError::TooShort(16)));
        let mut bad_flag = unhex(PSK_HELLO);
        bad_flag[0] = 7;
        assert_eq!(parse(&bad_flag), Err(HelloError::BadAdminFlag(7)));
        let mut v1 = unhex(PSK_HELLO);
        v1[2] = 1;
        assert_eq!(parse(&v1), Err(HelloError::UnsupportedVersion(1)));
        let mut long = unhex(PSK_HELLO);
        long.push(0);
        assert_eq!(parse(&long), Err(HelloError::PskLength(33)));
        assert_eq!(
            parse(&pki_hello(23, 22)),
            Err(HelloError::Truncated {
                expected: 23,
                found: 22
            })
        );
        // Bytes after the last hash are tolerated (MeshCentral's parser does).
        let mut longer = pki_hello(1, 1);
        longer.extend([9, 9, 9]);
        assert!(matches!(
            parse(&longer),
            Ok(Hello::Pki { ref hashes, trailing: 3, .. }) if hashes.len() == 1
        ));
        let mut bad_algo = pki_hello(1, 1);
        bad_algo[26] = 33;
        assert_eq!(
            parse(&bad_algo),
            Err(HelloError::BadHashEntry {
                index: 0,
                algorithm: 2,
                length: 33
            })
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = parse(&bytes);
        }
    }

    #[test]
    fn uuid_text_parses_back_to_its_bytes() {
        let b: [u8; 16] = core::array::from_fn(|i| (i as u8) * 17);
        let uuid = DeviceUuid(b);
        let text = uuid.to_string();
        assert_eq!(text.parse::<DeviceUuid>(), Ok(uuid));
        assert_eq!(
            format!(" {} ", text.to_uppercase()).parse::<DeviceUuid>(),
            Ok(uuid)
        );
        assert_eq!(DeviceUuid::canonical(&text.to_uppercase()), text);
        for bad in [
            "",
            "nope",
            "00112233-4455-6677-8899-aabbccddeef",
            "0011223-34455-6677-8899-aabbccddeeff",
            "0011223g-4455-6677-8899-aabbccddeeff",
            "+0112233-4455-6677-8899-aabbccddeeff",
        ] {
            assert!(bad.parse::<DeviceUuid>().is_err(), "{bad}");
        }
        assert_eq!(DeviceUuid::canonical(" NOPE "), "nope");
    }
}
