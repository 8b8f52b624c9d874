//! The provisioning password: the strong MEBx password technicians set on every
//! device, which vprov uses to log in over the TLS-PSK tunnel.
//!
//! Owns AMT's password rules (Intel AMT `SetMEBxPassword` / MEBx: 8–32 characters, at
//! least one lower-case letter, one upper-case letter, one digit and one
//! non-alphanumeric character, and none of `"` `,` `:`). Only 7-bit printable ASCII
//! is accepted, since that is what the MEBx screen can type.

use std::fmt;

use zeroize::Zeroizing;

/// A provisioning password that passed [`validate`]. Its `Debug` is redacted and its
/// memory is wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct ProvisioningPassword(Zeroizing<String>);

impl ProvisioningPassword {
    /// Validates `candidate` and wraps it.
    pub fn new(candidate: &str) -> Result<Self, PasswordRuleError> {
        validate(candidate)?;
        Ok(ProvisioningPassword(Zeroizing::new(candidate.to_string())))
    }

    /// The password itself, for sealing it or logging in to a device.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ProvisioningPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ProvisioningPassword(<redacted>)")
    }
}

/// Characters of generated passwords: letters and digits without look-alikes, and
/// symbols AMT accepts.
const GENERATED_SYMBOLS: &[u8] =
    b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789!#%&()*+-./;<=>?@[]^_{}~";

/// A random 24-character password that satisfies AMT's rules (≈150 bits), drawn
/// from the OS CSPRNG: the per-device admin credential vprov sets by default.
pub fn generate() -> ProvisioningPassword {
    use rand::Rng;
    let mut rng = rand::rngs::OsRng;
    loop {
        let candidate: Zeroizing<String> = Zeroizing::new(
            (0..24)
                .map(|_| GENERATED_SYMBOLS[rng.gen_range(0..GENERATED_SYMBOLS.len())] as char)
                .collect(),
        );
        if let Ok(password) = ProvisioningPassword::new(&candidate) {
            return password;
        }
    }
}

/// The first rule a candidate password breaks. Messages never repeat the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordRuleError {
    #[error("the password must have at least 8 characters (it has {0})")]
    TooShort(usize),
    #[error("the password must have at most 32 characters (it has {0})")]
    TooLong(usize),
    #[error("character {0} is not printable ASCII (MEBx accepts only printable ASCII)")]
    NotPrintableAscii(usize),
    #[error("character {position} is {ch:?}, which AMT forbids in passwords (no \", no comma, no colon)")]
    Forbidden { position: usize, ch: char },
    #[error("the password needs at least one lower-case letter (a-z)")]
    NoLowerCase,
    #[error("the password needs at least one upper-case letter (A-Z)")]
    NoUpperCase,
    #[error("the password needs at least one digit (0-9)")]
    NoDigit,
    #[error("the password needs at least one non-alphanumeric character, such as ! or #")]
    NoSymbol,
}

/// Checks `candidate` against AMT's rules, reporting the first rule it breaks.
pub fn validate(candidate: &str) -> Result<(), PasswordRuleError> {
    let len = candidate.chars().count();
    if len < 8 {
        return Err(PasswordRuleError::TooShort(len));
    }
    if len > 32 {
        return Err(PasswordRuleError::TooLong(len));
    }
    for (i, ch) in candidate.chars().enumerate() {
        if !(ch.is_ascii_graphic() || ch == ' ') {
            return Err(PasswordRuleError::NotPrintableAscii(i + 1));
        }
        if matches!(ch, '"' | ',' | ':') {
            return Err(PasswordRuleError::Forbidden {
                position: i + 1,
                ch,
            });
        }
    }
    let has = |f: fn(&char) -> bool| candidate.chars().any(|c| f(&c));
    if !has(char::is_ascii_lowercase) {
        return Err(PasswordRuleError::NoLowerCase);
    }
    if !has(char::is_ascii_uppercase) {
        return Err(PasswordRuleError::NoUpperCase);
    }
    if !has(char::is_ascii_digit) {
        return Err(PasswordRuleError::NoDigit);
    }
    if !has(|c| !c.is_ascii_alphanumeric()) {
        return Err(PasswordRuleError::NoSymbol);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use PasswordRuleError::*;

    #[test]
    fn accepts_strong_passwords() {
        for p in [
            "P@ssw0rd",
            "HeyH0Password!",
            "Aa1!Aa1!Aa1!Aa1!Aa1!Aa1!Aa1!Aa1!",
            "a B3 c d!",
        ] {
            assert_eq!(validate(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn names_the_rule_that_failed() {
        assert_eq!(validate("Aa1!"), Err(TooShort(4)));
        assert_eq!(validate(&"Aa1!".repeat(9)), Err(TooLong(36)));
        assert_eq!(validate("password1!"), Err(NoUpperCase));
        assert_eq!(validate("PASSWORD1!"), Err(NoLowerCase));
        assert_eq!(validate("Password!!"), Err(NoDigit));
        assert_eq!(validate("Password12"), Err(NoSymbol));
        assert_eq!(
            validate("Pass:word1!"),
            Err(Forbidden {
                position: 5,
                ch: ':'
            })
        );
        assert!(matches!(
            validate("Pass,word1!"),
            Err(Forbidden { ch: ',', .. })
        ));
        assert!(matches!(
            validate("Pass\"word1!"),
            Err(Forbidden { ch: '"', .. })
        ));
        assert_eq!(validate("Pässword1!"), Err(NotPrintableAscii(2)));
        assert_eq!(validate("Pass\tword1!"), Err(NotPrintableAscii(5)));
    }

    #[test]
    fn wrapper_validates_and_redacts() {
        assert!(ProvisioningPassword::new("weak").is_err());
        let p = ProvisioningPassword::new("HeyH0Password!").unwrap();
        assert_eq!(p.expose(), "HeyH0Password!");
        assert!(!format!("{p:?}").contains("HeyH0"));
    }

    #[test]
    fn generated_passwords_follow_the_rules_and_differ() {
        let a = generate();
        let b = generate();
        assert_eq!(a.expose().len(), 24);
        assert_eq!(validate(a.expose()), Ok(()));
        assert_ne!(a, b);
    }

    #[test]
    fn messages_do_not_repeat_the_password() {
        let err = validate("Secret:Word1").unwrap_err().to_string();
        assert!(!err.contains("Secret"), "{err}");
    }
}
