//! Admin API credentials: argon2id password hashes for admin accounts, and the random
//! tokens of console sessions and bearer tokens (256 bits, base64url), of which the
//! store keeps only SHA-256 hashes.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use base64::Engine as _;
use rand::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Why an admin password is not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccountError {
    #[error("an admin password needs at least {MIN_PASSWORD} characters")]
    TooShort,
    #[error("an admin account name is 1 to 64 letters, digits, '.', '-', '_' or '@'")]
    BadName,
}

/// The shortest admin password accepted.
pub const MIN_PASSWORD: usize = 12;

/// Checks an account name.
pub fn check_name(name: &str) -> Result<(), AccountError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_@".contains(c));
    ok.then_some(()).ok_or(AccountError::BadName)
}

/// Checks an admin password against the rules (its length).
pub fn check_password(password: &str) -> Result<(), AccountError> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(AccountError::TooShort);
    }
    Ok(())
}

/// A salted argon2id hash (PHC string) of `password`.
pub fn hash_password(password: &str) -> Result<String, AccountError> {
    check_password(password)?;
    let salt = SaltString::generate(&mut OsRng);
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters hashes any password")
        .to_string())
}

/// Whether `password` matches `hash` (a PHC string); a malformed hash never matches.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A fresh session or bearer token.
pub fn new_token() -> Zeroizing<String> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref()))
}

/// The hash the store keeps of a token.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_salt_and_verify() {
        let a = hash_password("correct horse battery").unwrap();
        let b = hash_password("correct horse battery").unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b, "salted");
        assert!(verify_password(&a, "correct horse battery"));
        assert!(!verify_password(&a, "correct horse battery!"));
        assert!(!verify_password("not a hash", "x"));
        assert_eq!(hash_password("short"), Err(AccountError::TooShort));
    }

    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 43);
        assert_ne!(*a, *b);
        assert_ne!(token_hash(&a), token_hash(&b));
        assert!(check_name("ann.lee@site-b").is_ok());
        assert!(check_name("a b").is_err() && check_name("").is_err());
    }
}
