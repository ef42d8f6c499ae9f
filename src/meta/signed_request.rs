//! Meta's `signed_request` (deauthorize and data-deletion callbacks):
//! `base64url(HMAC-SHA256(app secret, <encoded payload>)) "." base64url(JSON)`,
//! both parts unpadded. The HMAC covers the still-encoded payload segment.

use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

#[derive(Debug, Deserialize)]
pub struct SignedRequest {
    pub algorithm: String,
    /// App-scoped id of the Facebook user.
    pub user_id: String,
    #[serde(default)]
    pub issued_at: Option<i64>,
    #[serde(default)]
    pub expires: Option<i64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignedRequestError {
    #[error("signed_request is malformed")]
    Malformed,
    #[error("signed_request signature does not match")]
    BadSignature,
    #[error("signed_request algorithm is not HMAC-SHA256")]
    BadAlgorithm,
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    // Meta sends no padding; accept it anyway.
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok().or_else(|| URL_SAFE.decode(s).ok())
}

pub fn verify(raw: &str, app_secret: &str) -> Result<SignedRequest, SignedRequestError> {
    let (sig, payload) = raw.trim().split_once('.').ok_or(SignedRequestError::Malformed)?;
    let sig = b64url(sig).ok_or(SignedRequestError::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()).map_err(|_| SignedRequestError::Malformed)?;
    mac.update(payload.as_bytes());
    mac.verify_slice(&sig).map_err(|_| SignedRequestError::BadSignature)?;
    let json = b64url(payload).ok_or(SignedRequestError::Malformed)?;
    let req: SignedRequest = serde_json::from_slice(&json).map_err(|_| SignedRequestError::Malformed)?;
    if !req.algorithm.eq_ignore_ascii_case("HMAC-SHA256") {
        return Err(SignedRequestError::BadAlgorithm);
    }
    Ok(req)
}

/// Builds a signed_request (the fake Meta and tests send these).
pub fn sign(payload: &serde_json::Value, app_secret: &str) -> String {
    let encoded = URL_SAFE_NO_PAD.encode(payload.to_string());
    let mut mac = match Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(encoded.as_bytes());
    format!("{}.{encoded}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "fake_app_secret_0123456789abcdef";

    #[test]
    fn fixtures() {
        let text = std::fs::read_to_string(crate::meta::fixture_path("signed_request_example.txt"))
            .expect("shared fixtures beside the project");
        let values: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("signed_request=")).collect();
        assert_eq!(values.len(), 3);
        let deletion = verify(values[0], SECRET).expect("data deletion verifies");
        assert_eq!(deletion.user_id, "10160000000000001");
        assert_eq!(verify(values[1], SECRET).expect("deauthorize verifies").user_id, "10160000000000001");
        assert_eq!(verify(values[2], SECRET).err(), Some(SignedRequestError::BadSignature));
        assert_eq!(verify(values[0], "another-secret").err(), Some(SignedRequestError::BadSignature));
        assert_eq!(verify("nodot", SECRET).err(), Some(SignedRequestError::Malformed));
        let ours = sign(&serde_json::json!({"algorithm": "HMAC-SHA256", "user_id": "42"}), SECRET);
        assert_eq!(verify(&ours, SECRET).expect("round trip").user_id, "42");
        let md5 = sign(&serde_json::json!({"algorithm": "MD5", "user_id": "42"}), SECRET);
        assert_eq!(verify(&md5, SECRET).err(), Some(SignedRequestError::BadAlgorithm));
    }
}
