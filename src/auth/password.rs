//! Password hashing with argon2id (the crate's default parameters).

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::error::{AppError, AppResult};

pub const MIN_PASSWORD_CHARS: usize = 8;
const MAX_PASSWORD_BYTES: usize = 1024;

/// A PHC-format argon2 hash, safe to store.
#[derive(Clone)]
pub struct PasswordHash(String);

impl PasswordHash {
    /// Validates the password's length and hashes it.
    pub fn create(password: &str) -> AppResult<PasswordHash> {
        if password.chars().count() < MIN_PASSWORD_CHARS {
            return Err(AppError::invalid(
                "weak_password",
                format!("password must have at least {MIN_PASSWORD_CHARS} characters"),
            ));
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(AppError::invalid("weak_password", "password is too long"));
        }
        let salt = SaltString::generate(&mut OsRng);
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map_err(|e| AppError::internal(anyhow::anyhow!("argon2: {e}")))?;
        Ok(PasswordHash(hash.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a password against a stored hash; a malformed hash never matches.
pub fn verify(password: &str, stored: &str) -> bool {
    if password.len() > MAX_PASSWORD_BYTES {
        return false;
    }
    match argon2::PasswordHash::new(stored) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Spends the time of one verification, so an unknown email takes as long to
/// refuse as a wrong password.
pub fn verify_dummy(password: &str) {
    use std::sync::OnceLock;
    static DUMMY: OnceLock<String> = OnceLock::new();
    let stored =
        DUMMY.get_or_init(|| PasswordHash::create("dummy-password-for-timing").map(|h| h.0).unwrap_or_default());
    let _ = verify(password, stored);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = PasswordHash::create("correct horse").expect("hash");
        assert!(verify("correct horse", h.as_str()));
        assert!(!verify("wrong horse", h.as_str()));
        assert!(!verify("correct horse", "not-a-hash"));
        assert!(PasswordHash::create("short").is_err());
    }
}
