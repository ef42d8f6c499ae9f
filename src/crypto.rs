//! Encryption at rest for Meta access tokens: AES-256-GCM with a random
//! 96-bit nonce, the key id stored beside the ciphertext so keys can rotate,
//! and associated data that binds a ciphertext to the row it belongs to (a
//! token copied to another channel's row does not decrypt).
//!
//! Stored form: `<key id>:<base64(nonce || ciphertext+tag)>`.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::RngCore;

use crate::config::EncryptionKey;
use crate::secret::Secret;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("ciphertext is malformed")]
    Malformed,
    #[error("no key with id {0:?} is configured")]
    UnknownKey(String),
    #[error("ciphertext does not authenticate (wrong key or wrong row)")]
    Authentication,
}

/// The configured keys; the first one encrypts, all of them decrypt.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(String, Aes256Gcm)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<_> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        write!(f, "Keyring({ids:?})")
    }
}

impl Keyring {
    pub fn new(keys: &[EncryptionKey]) -> Keyring {
        Keyring { keys: keys.iter().map(|k| (k.id.clone(), Aes256Gcm::new(k.key.expose().into()))).collect() }
    }

    pub fn current_key_id(&self) -> &str {
        self.keys.first().map(|(id, _)| id.as_str()).unwrap_or("")
    }

    pub fn encrypt(&self, plaintext: &Secret<String>, aad: &str) -> String {
        // Never empty: the configuration refuses an empty key list.
        let (id, cipher) = &self.keys[0];
        let mut nonce = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut nonce);
        // Encryption with a valid key and a 12-byte nonce cannot fail.
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext.expose().as_bytes(), aad: aad.as_bytes() })
            .unwrap_or_default();
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        format!("{id}:{}", STANDARD.encode(blob))
    }

    pub fn decrypt(&self, stored: &str, aad: &str) -> Result<Secret<String>, CryptoError> {
        let (id, b64) = stored.split_once(':').ok_or(CryptoError::Malformed)?;
        let cipher = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, c)| c)
            .ok_or_else(|| CryptoError::UnknownKey(id.to_string()))?;
        let blob = STANDARD.decode(b64).map_err(|_| CryptoError::Malformed)?;
        if blob.len() < 12 + 16 {
            return Err(CryptoError::Malformed);
        }
        let (nonce, ct) = blob.split_at(12);
        let pt = cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad: aad.as_bytes() })
            .map_err(|_| CryptoError::Authentication)?;
        String::from_utf8(pt).map(Secret::new).map_err(|_| CryptoError::Malformed)
    }

    /// The key id a stored value was sealed with.
    pub fn key_id_of(stored: &str) -> Option<&str> {
        stored.split_once(':').map(|(id, _)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, b: u8) -> EncryptionKey {
        EncryptionKey { id: id.into(), key: Secret::new([b; 32]) }
    }

    #[test]
    fn seal_open_rotate_and_bind() {
        let old = Keyring::new(&[key("k1", 1)]);
        let token = Secret::new("EAAFakePageToken".to_string());
        let sealed = old.encrypt(&token, "channel:facebook:1");
        assert!(sealed.starts_with("k1:"));
        assert!(!sealed.contains("EAAFake"));
        assert_eq!(old.decrypt(&sealed, "channel:facebook:1").expect("opens").expose(), token.expose());
        // Bound to its row.
        assert!(matches!(old.decrypt(&sealed, "channel:facebook:2"), Err(CryptoError::Authentication)));
        // A new key first: old ciphertexts still open, new ones use k2.
        let rotated = Keyring::new(&[key("k2", 2), key("k1", 1)]);
        assert!(rotated.decrypt(&sealed, "channel:facebook:1").is_ok());
        assert!(rotated.encrypt(&token, "x").starts_with("k2:"));
        let only_new = Keyring::new(&[key("k2", 2)]);
        assert!(matches!(only_new.decrypt(&sealed, "channel:facebook:1"), Err(CryptoError::UnknownKey(_))));
        assert!(matches!(old.decrypt("k1:AAAA", "x"), Err(CryptoError::Malformed)));
    }
}
