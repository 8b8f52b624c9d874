//! Provisioning keys: the PID/PPS pairs a technician types into the MEBx screen.
//!
//! Owns the key format (alphabet, lengths, Intel's check characters), parsing of
//! what people type (dashes and lower case accepted), the dashed display forms, and
//! generation from the operating system's CSPRNG without modulo bias.
//!
//! Format (Intel AMT Implementation and Reference Guide, "PID-PPS Checksum";
//! `docs/protocol-notes.md`): both values use `A–Z0–9`. The PID is 8
//! characters whose 8th is the check character of the first 7; the PPS is 32
//! characters in 8 groups of 4, the 4th of each group being the check character of
//! that group's first 3. A check character is the sum of the ASCII codes mod 36,
//! mapped to `0–9` then `A–Z`.

use std::fmt;
use std::str::FromStr;

use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::{Zeroize, Zeroizing};

/// The most pairs one batch may hold.
pub const MAX_BATCH: u32 = 1_000_000;

/// The 36 symbols of PIDs and PPSs, in check-character order (`0–9`, then `A–Z`).
const SYMBOLS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

/// Number of characters in a PID (including its check character).
pub const PID_LEN: usize = 8;
/// Number of characters in a PPS (including its 8 check characters).
pub const PPS_LEN: usize = 32;

/// Intel's check character for `chars`: the sum of their ASCII codes mod 36.
pub fn check_character(chars: &[u8]) -> u8 {
    let sum: u32 = chars.iter().map(|&c| u32::from(c)).sum();
    SYMBOLS[(sum % 36) as usize]
}

/// Which value a [`KeyFormatError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPart {
    Pid,
    Pps,
}

impl fmt::Display for KeyPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyPart::Pid => "PID",
            KeyPart::Pps => "PPS",
        })
    }
}

/// Why typed text is not a valid PID or PPS. Messages name the bad part by position
/// and never repeat PPS characters, so they are safe to print and log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error(
        "{part} must have {expected} characters (dashes and spaces not counted), found {found}"
    )]
    WrongLength {
        part: KeyPart,
        expected: usize,
        found: usize,
    },
    #[error("{part} character {position} is not a letter A-Z or digit 0-9")]
    BadCharacter { part: KeyPart, position: usize },
    #[error("PID check character (8th) is wrong: a character of the PID was mistyped")]
    PidCheck,
    #[error("PPS group {group} of 8 has a wrong check character (its 4th): a character in that group was mistyped")]
    PpsCheck { group: usize },
}

/// Strips dashes and white space, upper-cases, and checks length and alphabet.
fn normalise<const N: usize>(
    input: &str,
    part: KeyPart,
) -> Result<Zeroizing<[u8; N]>, KeyFormatError> {
    let mut out = Zeroizing::new([0u8; N]);
    let mut n = 0usize;
    for c in input.chars().filter(|c| *c != '-' && !c.is_whitespace()) {
        n += 1;
        if n > N {
            continue; // keep counting for the error message
        }
        let upper = c.to_ascii_uppercase();
        if !upper.is_ascii_uppercase() && !upper.is_ascii_digit() {
            return Err(KeyFormatError::BadCharacter { part, position: n });
        }
        out[n - 1] = upper as u8;
    }
    if n != N {
        return Err(KeyFormatError::WrongLength {
            part,
            expected: N,
            found: n,
        });
    }
    Ok(out)
}

/// A Provisioning ID: 8 characters, the last being the check character. Not secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pid([u8; PID_LEN]);

impl Pid {
    /// The 8 characters without dash, as stored and as sent in hellos and TLS-PSK.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("PID holds ASCII only")
    }

    /// The raw 8 bytes.
    pub fn as_bytes(&self) -> &[u8; PID_LEN] {
        &self.0
    }

    /// Display form `XXXX-XXXX`.
    pub fn dashed(&self) -> String {
        format!("{}-{}", &self.as_str()[..4], &self.as_str()[4..])
    }
}

impl FromStr for Pid {
    type Err = KeyFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let raw = normalise::<PID_LEN>(s, KeyPart::Pid)?;
        if check_character(&raw[..7]) != raw[7] {
            return Err(KeyFormatError::PidCheck);
        }
        Ok(Pid(*raw))
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.dashed())
    }
}

impl fmt::Debug for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pid({})", self.as_str())
    }
}

/// A Provisioning Passphrase: 32 characters in 8 check-summed groups. Secret: its
/// `Debug` is redacted, it has no `Display`, and its memory is wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct Pps(Zeroizing<[u8; PPS_LEN]>);

impl Pps {
    /// The 32 characters without dashes: the TLS pre-shared key and the stored form.
    pub fn expose_bytes(&self) -> &[u8; PPS_LEN] {
        &self.0
    }

    /// Display form `XXXX-XXXX-…-XXXX` (39 characters), wiped when dropped.
    pub fn expose_dashed(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(39));
        for (i, group) in self.0.chunks(4).enumerate() {
            if i > 0 {
                s.push('-');
            }
            s.extend(group.iter().map(|&b| b as char));
        }
        s
    }

    /// Rebuilds a PPS from its stored 32 bytes, re-validating every check character.
    pub fn from_stored(bytes: &[u8]) -> Result<Self, KeyFormatError> {
        let text = std::str::from_utf8(bytes).map_err(|_| KeyFormatError::BadCharacter {
            part: KeyPart::Pps,
            position: 1,
        })?;
        text.parse()
    }
}

impl FromStr for Pps {
    type Err = KeyFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let raw = normalise::<PPS_LEN>(s, KeyPart::Pps)?;
        for (i, group) in raw.chunks(4).enumerate() {
            if check_character(&group[..3]) != group[3] {
                return Err(KeyFormatError::PpsCheck { group: i + 1 });
            }
        }
        Ok(Pps(raw))
    }
}

impl fmt::Debug for Pps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pps(<redacted>)")
    }
}

/// One generated PID/PPS pair.
#[derive(Debug, Clone)]
pub struct KeyPair {
    pub pid: Pid,
    pub pps: Pps,
}

/// Draws PID/PPS pairs from the OS CSPRNG. Random bytes are read in blocks and
/// mapped to symbols by rejection sampling (bytes ≥ 252 = 7×36 are discarded), so
/// every symbol is exactly equally likely.
pub struct KeyGenerator {
    buf: [u8; 4096],
    pos: usize,
}

impl Default for KeyGenerator {
    fn default() -> Self {
        KeyGenerator {
            buf: [0; 4096],
            pos: 4096,
        }
    }
}

impl Drop for KeyGenerator {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

impl KeyGenerator {
    fn next_symbol(&mut self) -> u8 {
        loop {
            if self.pos == self.buf.len() {
                OsRng.fill_bytes(&mut self.buf);
                self.pos = 0;
            }
            let b = self.buf[self.pos];
            self.buf[self.pos] = 0;
            self.pos += 1;
            if b < 252 {
                return SYMBOLS[usize::from(b % 36)];
            }
        }
    }

    /// Fills `free` random symbols followed by their check character.
    fn fill_checked(&mut self, out: &mut [u8]) {
        let (free, check) = out.split_at_mut(out.len() - 1);
        for c in free.iter_mut() {
            *c = self.next_symbol();
        }
        check[0] = check_character(free);
    }

    /// A fresh PID (7 random symbols + check character).
    pub fn pid(&mut self) -> Pid {
        let mut pid = [0u8; PID_LEN];
        self.fill_checked(&mut pid);
        Pid(pid)
    }

    /// A fresh PPS (8 groups of 3 random symbols + check character; ≈124 bits).
    pub fn pps(&mut self) -> Pps {
        let mut pps = Zeroizing::new([0u8; PPS_LEN]);
        for group in pps.chunks_mut(4) {
            self.fill_checked(group);
        }
        Pps(pps)
    }

    /// A fresh pair.
    pub fn pair(&mut self) -> KeyPair {
        KeyPair {
            pid: self.pid(),
            pps: self.pps(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn intel_worked_example_is_valid() {
        let pid: Pid = "0000-037M".parse().unwrap();
        assert_eq!(pid.as_str(), "0000037M");
        assert_eq!(pid.dashed(), "0000-037M");
        let pps: Pps = "NKLD-G5DC-RRNQ-E9YZ-ZIJL-7LFL-VJED-69XJ".parse().unwrap();
        assert_eq!(pps.expose_bytes(), b"NKLDG5DCRRNQE9YZZIJL7LFLVJED69XJ");
        assert_eq!(
            pps.expose_dashed().as_str(),
            "NKLD-G5DC-RRNQ-E9YZ-ZIJL-7LFL-VJED-69XJ"
        );
    }

    #[test]
    fn check_characters_match_the_documented_table() {
        for (input, check) in [
            ("0000037", b'M'),
            ("NKL", b'D'),
            ("G5D", b'C'),
            ("RRN", b'Q'),
            ("E9Y", b'Z'),
            ("ZIJ", b'L'),
            ("7LF", b'L'),
            ("VJE", b'D'),
            ("69X", b'J'),
        ] {
            assert_eq!(check_character(input.as_bytes()), check, "{input}");
        }
    }

    #[test]
    fn input_without_dashes_and_in_lower_case_is_accepted() {
        assert_eq!(
            "0000037m".parse::<Pid>().unwrap(),
            "0000-037M".parse().unwrap()
        );
        assert!("nkldg5dcrrnqe9yzzijl7lflvjed69xj".parse::<Pps>().is_ok());
        assert!(" nkld g5dc-rrnq e9yz zijl 7lfl vjed 69xj "
            .parse::<Pps>()
            .is_ok());
    }

    #[test]
    fn errors_name_the_bad_part() {
        assert_eq!(
            "0000-037".parse::<Pid>().unwrap_err(),
            KeyFormatError::WrongLength {
                part: KeyPart::Pid,
                expected: 8,
                found: 7
            }
        );
        assert_eq!(
            "0000-03*M".parse::<Pid>().unwrap_err(),
            KeyFormatError::BadCharacter {
                part: KeyPart::Pid,
                position: 7
            }
        );
        assert_eq!(
            "0000-037N".parse::<Pid>().unwrap_err(),
            KeyFormatError::PidCheck
        );
        assert_eq!(
            "NKLD-G5DC-RRNQ-E9YZ-ZIJL-7LFL-VJEE-69XJ"
                .parse::<Pps>()
                .unwrap_err(),
            KeyFormatError::PpsCheck { group: 7 }
        );
        assert_eq!(
            "NKLD-G5DC-RRNQ-E9YZ-ZIJL-7LFL-VJED-69XJ-AAAA"
                .parse::<Pps>()
                .unwrap_err(),
            KeyFormatError::WrongLength {
                part: KeyPart::Pps,
                expected: 32,
                found: 36
            }
        );
        assert!(matches!(
            "NKLD-G5DC-RRNQ-E9YZ-ZIJL-7LFL-VJED-69XÉ".parse::<Pps>(),
            Err(KeyFormatError::BadCharacter { position: 32, .. })
        ));
    }

    #[test]
    fn pps_debug_is_redacted() {
        let pps: Pps = "NKLD-G5DC-RRNQ-E9YZ-ZIJL-7LFL-VJED-69XJ".parse().unwrap();
        let shown = format!(
            "{:?}",
            KeyPair {
                pid: "0000037M".parse().unwrap(),
                pps
            }
        );
        assert!(!shown.contains("NKLD"), "{shown}");
        assert!(shown.contains("0000037M"));
    }

    #[test]
    fn symbols_are_roughly_uniform() {
        // 36 symbols × ~5,000 draws each; a biased mapping (e.g. byte % 36 without
        // rejection) draws the first 4 symbols 8/7 as often: ≈5,625 times, outside
        // ±450. A fair generator stays within ±450 (6.5 σ, σ ≈ 70) on every symbol but
        // about once in 10^9 runs, so this test is not flaky.
        let mut g = KeyGenerator::default();
        let mut counts = [0u32; 36];
        let draws = 36 * 5_000;
        for _ in 0..draws {
            let s = g.next_symbol();
            counts[SYMBOLS.iter().position(|&x| x == s).unwrap()] += 1;
        }
        for (i, &c) in counts.iter().enumerate() {
            assert!((4_550..=5_450).contains(&c), "symbol {i} drawn {c} times");
        }
    }

    /// Intel's mod-36 sum cannot see a substitution whose ASCII codes differ by
    /// exactly 36: `0`↔`T`, `1`↔`U`, … `6`↔`Z`.
    fn checksum_blind_spot(a: u8, b: u8) -> bool {
        a.abs_diff(b) == 36
    }

    #[test]
    fn the_intel_checksum_has_a_documented_blind_spot() {
        // 0000-037M with its first '0' swapped for 'T' still validates: the checksum is
        // Intel's, so vprov must not promise more than it detects.
        assert!("T000-037M".parse::<Pid>().is_ok());
        // Changing a check character itself is always detected.
        assert!("0000-037T".parse::<Pid>().is_err());
    }

    proptest! {
        #[test]
        fn generated_pairs_validate_and_any_single_change_breaks_them(
            pos in 0usize..40, replacement in 0usize..36, seed_draws in 0usize..4
        ) {
            let mut g = KeyGenerator::default();
            for _ in 0..seed_draws { g.pair(); }
            let pair = g.pair();
            let pid = pair.pid.as_str().to_string();
            let pps = String::from_utf8(pair.pps.expose_bytes().to_vec()).unwrap();
            prop_assert_eq!(pid.parse::<Pid>().unwrap(), pair.pid);
            prop_assert!(pps.parse::<Pps>().unwrap() == pair.pps);

            let new = SYMBOLS[replacement];
            if pos < PID_LEN {
                let mut b = pid.into_bytes();
                prop_assume!(b[pos] != new);
                prop_assume!(pos == 7 || !checksum_blind_spot(b[pos], new));
                b[pos] = new;
                prop_assert!(String::from_utf8(b).unwrap().parse::<Pid>().is_err());
            } else {
                let mut b = pps.into_bytes();
                let i = pos - PID_LEN;
                prop_assume!(b[i] != new);
                prop_assume!(i % 4 == 3 || !checksum_blind_spot(b[i], new));
                b[i] = new;
                prop_assert!(String::from_utf8(b).unwrap().parse::<Pps>().is_err());
            }
        }
    }
}
