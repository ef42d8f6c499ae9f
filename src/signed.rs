//! Short-lived values the server signs and gets back from browsers (the
//! OAuth `state`, media links): `base64url(JSON) "." base64url(HMAC-SHA256)`.
//! Each use has its own key, derived from the JWT secret with a label, so a
//! value signed for one use never passes for another, nor for a token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

/// Why a value does not open.
#[derive(Debug, PartialEq, Eq)]
pub enum Unsigned {
    Malformed,
    Tampered,
}

/// The key for one use (`label`) of `secret`.
pub fn key(secret: &[u8], label: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(label.as_bytes());
    h.update(b"\0");
    h.update(secret);
    h.finalize().to_vec()
}

fn mac(key: &[u8], payload: &str) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC accepts keys of any length");
    m.update(payload.as_bytes());
    m
}

pub fn sign<T: Serialize>(key: &[u8], claims: &T) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let sig = URL_SAFE_NO_PAD.encode(mac(key, &payload).finalize().into_bytes());
    format!("{payload}.{sig}")
}

/// The claims of a value signed with `key`.
pub fn open<T: DeserializeOwned>(key: &[u8], value: &str) -> Result<T, Unsigned> {
    let (payload, sig) = value.split_once('.').ok_or(Unsigned::Malformed)?;
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| Unsigned::Malformed)?;
    mac(key, payload).verify_slice(&sig).map_err(|_| Unsigned::Tampered)?;
    let raw = URL_SAFE_NO_PAD.decode(payload).map_err(|_| Unsigned::Malformed)?;
    serde_json::from_slice(&raw).map_err(|_| Unsigned::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_opens_with_its_own_key_only() {
        let (a, b) = (key(b"secret", "one use"), key(b"secret", "another use"));
        let value = sign(&a, &serde_json::json!({"t": 7}));
        assert_eq!(open::<serde_json::Value>(&a, &value), Ok(serde_json::json!({"t": 7})));
        assert_eq!(open::<serde_json::Value>(&b, &value), Err(Unsigned::Tampered));
        let forged = value.replacen(value.split('.').next().unwrap_or_default(), "eyJ0Ijo4fQ", 1);
        assert_eq!(open::<serde_json::Value>(&a, &forged), Err(Unsigned::Tampered));
        assert_eq!(open::<serde_json::Value>(&a, "no dot"), Err(Unsigned::Malformed));
    }
}
