//! Intel's `setup.bin` USB key file: encoding and strict decoding. The one place the
//! byte layout lives; the `export-usb` plugin writes files with it and
//! `vprov keys inspect-setupbin` reads them (including files from Intel's own tool).
//!
//! Layout (all integers little-endian; `docs/protocol-notes.md` and the reference in
//! `amt-protocol.md` §5 give sources): a 512-byte header chunk — file-type GUID
//! (selects the version), header sizes, version, flags (bit 0: records are not
//! consumed), record count, consumed counter, chunks per record, a 0-terminated module
//! list — then one 512-byte record per device: a 24-byte record header (type 1 = data,
//! flags bit 0 valid / bit 1 scrambled, record number from 1) and entries
//! `module u16 | variable u16 | length u16 | 0 u16 | value`, each padded to 4 bytes.
//! A scrambled record stores every byte after its header as `(plain + 0x11) mod 256`.

use std::fmt;
use std::net::Ipv4Addr;

/// Size of the header chunk and of every record.
pub const CHUNK: usize = 512;
const RECORD_HEADER: usize = 24;
const ENTRY_HEADER: usize = 8;
const SCRAMBLE: u8 = 0x11;

/// File-type GUIDs (bytes as stored) of versions 1 to 4.
const VERSION_GUIDS: [[u8; 16]; 4] = [
    hex16("b516fb7187cbf94ab441ca7b383578f9"),
    hex16("96b28158cf6b724c8b91a15e512e99c4"),
    hex16("a7f7f6c689c4f64793ede2e5020da51d"),
    hex16("aaa93452e129a9448d4d081c07b96353"),
];

const fn hex16(s: &str) -> [u8; 16] {
    let b = s.as_bytes();
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = (nibble(b[2 * i]) << 4) | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => panic!("not a hex digit"),
    }
}

/// Why a file is not a usable setup.bin.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SetupBinError {
    #[error("the file is {0} bytes: a setup.bin is at least one 512-byte header chunk")]
    TooShort(usize),
    #[error("unknown setup.bin file type GUID {0} (versions 1 to 4 are known)")]
    UnknownVersion(String),
    #[error("the header says {field} = {value}; expected {expected}")]
    BadHeader {
        field: &'static str,
        value: u64,
        expected: &'static str,
    },
    #[error("the header announces {announced} records of {chunk} bytes ({need} bytes in all) but the file holds {have}")]
    Truncated {
        announced: u32,
        chunk: usize,
        need: usize,
        have: usize,
    },
    #[error("record {index}: {problem}")]
    BadRecord { index: u32, problem: String },
    #[error("record {record}: entry {module}.{variable} needs {needed} bytes but only {left} are left in the record")]
    EntryTooLong {
        record: u32,
        module: u16,
        variable: u16,
        needed: usize,
        left: usize,
    },
    #[error("version must be 1 to 4, got {0}")]
    InvalidVersion(u8),
}

/// A whole file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupBin {
    /// 1 to 4 (the file-type GUID).
    pub version: u8,
    pub major: u8,
    pub minor: u8,
    /// Whether the BIOS marks records used (header flag bit 0 clear).
    pub consumable: bool,
    /// Records the BIOS already consumed (0 in a new file).
    pub consumed: u32,
    /// Module ids listed in the header.
    pub modules: Vec<u16>,
    pub records: Vec<Record>,
}

/// One record: the settings one device receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// From 1.
    pub number: u32,
    /// Record type 1 (data) with the valid flag; false for an invalid or used record.
    pub valid: bool,
    pub scrambled: bool,
    pub entries: Vec<Entry>,
}

/// One setting: `module.variable = value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub module: u16,
    pub variable: u16,
    pub value: Vec<u8>,
}

/// The variables vprov writes, by (module, variable).
pub mod var {
    pub const CURRENT_MEBX_PASSWORD: (u16, u16) = (1, 1);
    pub const NEW_MEBX_PASSWORD: (u16, u16) = (1, 2);
    pub const MANAGEABILITY_SELECTION: (u16, u16) = (1, 3);
    pub const PID: (u16, u16) = (2, 1);
    pub const PPS: (u16, u16) = (2, 2);
    pub const PROVISIONING_MODE: (u16, u16) = (2, 16);
    pub const SERVER_IPV4: (u16, u16) = (2, 17);
    pub const SERVER_PORT: (u16, u16) = (2, 18);
}

/// How a value is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A password or the PPS: masked unless revealed.
    Secret,
    Text,
    Number,
    Ipv4,
    Bytes,
}

/// The documented name and kind of `module.variable`, if known.
pub fn describe(module: u16, variable: u16) -> Option<(&'static str, Kind)> {
    use Kind::*;
    Some(match (module, variable) {
        (1, 1) => ("current MEBx password", Secret),
        (1, 2) => ("new MEBx password", Secret),
        (1, 3) => ("manageability feature selection", Number),
        (1, 4) => ("firmware local update", Number),
        (1, 5) => ("firmware update qualifier", Number),
        (1, 6) => ("power package", Bytes),
        (2, 1) => ("PID", Text),
        (2, 2) => ("PPS", Secret),
        (2, 3) => ("PKI DNS suffix", Text),
        (2, 4) => ("configuration server FQDN", Text),
        (2, 5) => ("remote configuration enabled", Number),
        (2, 8) => (
            "trusted root certificate hash (algorithm, hash, name)",
            Bytes,
        ),
        (2, 6) => ("pre-installed certificates enabled", Number),
        (2, 10) => ("SOL/IDER redirection", Number),
        (2, 11) => ("host name", Text),
        (2, 12) => ("domain name", Text),
        (2, 13) => ("DHCP", Number),
        (2, 14) => ("secure firmware update", Number),
        (2, 16) => ("provisioning mode", Number),
        (2, 17) => ("provisioning server address", Ipv4),
        (2, 18) => ("provisioning server port", Number),
        (2, 23) => ("shared FQDN", Number),
        (2, 24) => ("dynamic DNS update", Number),
        (2, 25) => ("KVM", Number),
        (2, 26) => ("user opt-in consent", Number),
        (2, 27) => ("remote IT consent policy", Number),
        (2, 28) => ("ME provision halt/activate", Number),
        (2, 29) => ("manual setup and configuration", Number),
        _ => return None,
    })
}

impl Entry {
    pub fn new(key: (u16, u16), value: impl Into<Vec<u8>>) -> Entry {
        Entry {
            module: key.0,
            variable: key.1,
            value: value.into(),
        }
    }

    /// The value as text for display, secrets masked unless `reveal`.
    pub fn display_value(&self, reveal: bool) -> String {
        let kind = describe(self.module, self.variable).map_or(Kind::Bytes, |(_, k)| k);
        let text = || String::from_utf8_lossy(&self.value).into_owned();
        match kind {
            Kind::Secret if !reveal => "*".repeat(self.value.len().min(8)),
            Kind::Secret | Kind::Text => text(),
            Kind::Number => match self.value.len() {
                1 => self.value[0].to_string(),
                2 => u16::from_le_bytes([self.value[0], self.value[1]]).to_string(),
                4 => u32::from_le_bytes(self.value[..4].try_into().expect("4 bytes")).to_string(),
                _ => hex(&self.value),
            },
            Kind::Ipv4 if self.value.len() == 4 => decode_ipv4(&self.value).to_string(),
            Kind::Ipv4 | Kind::Bytes => hex(&self.value),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 2.17 stores the address in reversed octet order (the u32 little-endian of the
/// address read as a big-endian number).
pub fn encode_ipv4(addr: Ipv4Addr) -> [u8; 4] {
    let [a, b, c, d] = addr.octets();
    [d, c, b, a]
}

pub fn decode_ipv4(bytes: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(bytes[3], bytes[2], bytes[1], bytes[0])
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = describe(self.module, self.variable).map_or("unknown", |(n, _)| n);
        write!(
            f,
            "{}.{} {name} = {}",
            self.module,
            self.variable,
            self.display_value(false)
        )
    }
}

impl SetupBin {
    /// A new file of `version` (1 to 4) with no records, modules 1 and 2.
    pub fn new(version: u8, consumable: bool) -> Result<SetupBin, SetupBinError> {
        if !(1..=4).contains(&version) {
            return Err(SetupBinError::InvalidVersion(version));
        }
        Ok(SetupBin {
            version,
            // Version 2 files carry the 2.1 variables (server address and port, mode).
            major: version,
            minor: u8::from(version == 2),
            consumable,
            consumed: 0,
            modules: vec![1, 2],
            records: Vec::new(),
        })
    }

    /// The file's bytes: header chunk, then one chunk per record. Entries are written
    /// sorted by (module, variable). A record whose entries do not fit its chunk is an
    /// error.
    pub fn encode(&self) -> Result<Vec<u8>, SetupBinError> {
        if !(1..=4).contains(&self.version) {
            return Err(SetupBinError::InvalidVersion(self.version));
        }
        let mut out = vec![0u8; CHUNK * (1 + self.records.len())];
        let h = &mut out[..CHUNK];
        h[..16].copy_from_slice(&VERSION_GUIDS[usize::from(self.version - 1)]);
        put16(h, 16, 1);
        put16(h, 18, (42 + 2 * self.modules.len()) as u16);
        put32(h, 20, 0);
        h[24] = self.major;
        h[25] = self.minor;
        put16(h, 26, u16::from(!self.consumable));
        put32(h, 28, self.records.len() as u32);
        put32(h, 32, self.consumed);
        put16(h, 36, 1);
        for (i, m) in self.modules.iter().enumerate() {
            put16(h, 40 + 2 * i, *m);
        }
        for (i, record) in self.records.iter().enumerate() {
            let chunk = &mut out[CHUNK * (i + 1)..CHUNK * (i + 2)];
            encode_record(record, chunk)?;
        }
        Ok(out)
    }

    /// Parses a whole file, checking every size and count against the header.
    pub fn decode(bytes: &[u8]) -> Result<SetupBin, SetupBinError> {
        if bytes.len() < CHUNK {
            return Err(SetupBinError::TooShort(bytes.len()));
        }
        let h = &bytes[..CHUNK];
        let guid: [u8; 16] = h[..16].try_into().expect("16 bytes");
        let version = VERSION_GUIDS
            .iter()
            .position(|g| *g == guid)
            .ok_or_else(|| SetupBinError::UnknownVersion(hex(&guid)))? as u8
            + 1;
        expect(get16(h, 16).into(), 1, "header chunk count", "1")?;
        let chunks_per_record = get16(h, 36);
        expect(chunks_per_record.into(), 1, "chunks per record", "1")?;
        let mut modules = Vec::new();
        let mut at = 40;
        while at + 2 <= CHUNK {
            let m = get16(h, at);
            if m == 0 {
                break;
            }
            modules.push(m);
            at += 2;
        }
        let header_bytes = get16(h, 18);
        if usize::from(header_bytes) != 42 + 2 * modules.len() {
            return Err(SetupBinError::BadHeader {
                field: "header byte count",
                value: header_bytes.into(),
                expected: "42 + 2 × the number of listed modules",
            });
        }
        let count = get32(h, 28);
        let need = CHUNK * (1 + count as usize);
        if bytes.len() < need {
            return Err(SetupBinError::Truncated {
                announced: count,
                chunk: CHUNK,
                need,
                have: bytes.len(),
            });
        }
        let consumed = get32(h, 32);
        if consumed > count {
            return Err(SetupBinError::BadHeader {
                field: "records consumed",
                value: consumed.into(),
                expected: "at most the record count",
            });
        }
        let records = (0..count)
            .map(|i| {
                let start = CHUNK * (1 + i as usize);
                decode_record(i + 1, &bytes[start..start + CHUNK])
            })
            .collect::<Result<_, _>>()?;
        Ok(SetupBin {
            version,
            major: h[24],
            minor: h[25],
            consumable: get16(h, 26) & 1 == 0,
            consumed,
            modules,
            records,
        })
    }
}

fn expect(
    value: u64,
    want: u64,
    field: &'static str,
    expected: &'static str,
) -> Result<(), SetupBinError> {
    if value == want {
        Ok(())
    } else {
        Err(SetupBinError::BadHeader {
            field,
            value,
            expected,
        })
    }
}

fn encode_record(record: &Record, chunk: &mut [u8]) -> Result<(), SetupBinError> {
    put32(chunk, 0, u32::from(record.valid));
    put32(
        chunk,
        4,
        u32::from(record.valid) | (u32::from(record.scrambled) << 1),
    );
    put16(chunk, 16, 1);
    put16(chunk, 18, RECORD_HEADER as u16);
    put32(chunk, 20, record.number);
    let mut entries: Vec<&Entry> = record.entries.iter().collect();
    entries.sort_by_key(|e| (e.module, e.variable));
    let mut at = RECORD_HEADER;
    for e in entries {
        let padded = (e.value.len() + 3) & !3;
        let needed = ENTRY_HEADER + padded;
        if at + needed > CHUNK || e.value.len() > usize::from(u16::MAX) {
            return Err(SetupBinError::EntryTooLong {
                record: record.number,
                module: e.module,
                variable: e.variable,
                needed,
                left: CHUNK - at,
            });
        }
        put16(chunk, at, e.module);
        put16(chunk, at + 2, e.variable);
        put16(chunk, at + 4, e.value.len() as u16);
        chunk[at + ENTRY_HEADER..at + ENTRY_HEADER + e.value.len()].copy_from_slice(&e.value);
        at += needed;
    }
    if record.scrambled {
        for b in &mut chunk[RECORD_HEADER..] {
            *b = b.wrapping_add(SCRAMBLE);
        }
    }
    Ok(())
}

fn decode_record(index: u32, chunk: &[u8]) -> Result<Record, SetupBinError> {
    let bad = |problem: String| SetupBinError::BadRecord { index, problem };
    let kind = get32(chunk, 0);
    let flags = get32(chunk, 4);
    if get16(chunk, 16) != 1 {
        return Err(bad(format!(
            "chunk count {} (expected 1)",
            get16(chunk, 16)
        )));
    }
    if usize::from(get16(chunk, 18)) != RECORD_HEADER {
        return Err(bad(format!(
            "header byte count {} (expected {RECORD_HEADER})",
            get16(chunk, 18)
        )));
    }
    let number = get32(chunk, 20);
    let scrambled = flags & 2 != 0;
    let body: Vec<u8> = chunk[RECORD_HEADER..]
        .iter()
        .map(|b| {
            if scrambled {
                b.wrapping_sub(SCRAMBLE)
            } else {
                *b
            }
        })
        .collect();
    let mut entries = Vec::new();
    let mut at = 0;
    while at + ENTRY_HEADER <= body.len() {
        let module = get16(&body, at);
        let variable = get16(&body, at + 2);
        if module == 0 || variable == 0 {
            break;
        }
        let len = usize::from(get16(&body, at + 4));
        let left = body.len() - at - ENTRY_HEADER;
        if len > left {
            return Err(SetupBinError::EntryTooLong {
                record: number,
                module,
                variable,
                needed: ENTRY_HEADER + len,
                left: left + ENTRY_HEADER,
            });
        }
        let start = at + ENTRY_HEADER;
        entries.push(Entry {
            module,
            variable,
            value: body[start..start + len].to_vec(),
        });
        at = start + ((len + 3) & !3);
    }
    Ok(Record {
        number,
        valid: kind == 1 && flags & 1 != 0,
        scrambled,
        entries,
    })
}

fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn get16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn get32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests;
