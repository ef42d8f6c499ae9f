//! JSON request bodies, refused the way API.md sorts bad input: 400
//! `invalid_json` for a body that is not JSON, 422 `invalid_body` for JSON
//! whose values will not do (a wrong type, a field missing or unknown).
//!
//! serde cannot tell the two apart by itself: it stops at the first error it
//! meets, so a body cut short after a wrong value was called a wrong value
//! (422), and serde_json calls a number or a list where an enum's name
//! belongs "expected value", a syntax error (400 "not valid JSON" for valid
//! JSON). So the body is first checked to be JSON ([`RawValue`]: checked, not
//! built into a tree), and only then read into its type, whose every error
//! is then about the values.

use actix_web::dev::{JsonBody, Payload};
use actix_web::error::JsonPayloadError;
use actix_web::{FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use super::JSON_LIMIT;
use crate::error::{AppError, AppResult, ErrorKind};

/// A handler's JSON body (in place of `web::Json`). Taken with any JSON
/// media type (`application/json`, `…+json`) or none; up to
/// [`JSON_LIMIT`] bytes.
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T> Json<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for Json<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Json<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = JsonBody::<Box<RawValue>>::new(req, payload, None, false).limit(JSON_LIMIT);
        Box::pin(async move {
            let raw = body.await.map_err(|e| refused(&e))?;
            values(raw.get()).map(Json)
        })
    }
}

/// `bytes` read as a `T` (a body an extractor does not read: one that may
/// be left out), refused as [`Json`] refuses.
pub fn read<T: DeserializeOwned>(bytes: &[u8]) -> AppResult<T> {
    let raw: Box<RawValue> = serde_json::from_slice(bytes).map_err(|e| not_json(&e))?;
    values(raw.get())
}

/// JSON text read as a `T`: what fails is its values.
fn values<T: DeserializeOwned>(json: &str) -> AppResult<T> {
    serde_json::from_str(json).map_err(|e| {
        let message = if e.is_data() {
            e.to_string()
        } else {
            // serde_json's word for a value that is neither an enum's
            // name nor an object where an enum is read.
            format!(
                "a value is of the wrong type or not one of those allowed (line {} column {})",
                e.line(),
                e.column()
            )
        };
        AppError::invalid("invalid_body", message)
    })
}

fn not_json(e: &serde_json::Error) -> AppError {
    AppError::bad_request("invalid_json", format!("the body is not valid JSON: {e}"))
}

fn refused(e: &JsonPayloadError) -> AppError {
    match e {
        JsonPayloadError::OverflowKnownLength { .. } | JsonPayloadError::Overflow { .. } => AppError::new(
            ErrorKind::PayloadTooLarge,
            "payload_too_large",
            format!("the body is larger than {JSON_LIMIT} bytes"),
        ),
        JsonPayloadError::ContentType => AppError::new(
            ErrorKind::UnsupportedMediaType,
            "unsupported_media_type",
            "send Content-Type: application/json",
        ),
        JsonPayloadError::Deserialize(de) => not_json(de),
        other => AppError::bad_request("invalid_body", other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        kind: Kind,
        n: Option<i32>,
    }

    #[derive(serde::Deserialize, Debug)]
    #[serde(rename_all = "lowercase")]
    enum Kind {
        Team,
        Personal,
    }

    fn status(text: &str) -> (u16, String) {
        match read::<Body>(text.as_bytes()) {
            Ok(_) => (200, String::new()),
            Err(e) => (e.status().as_u16(), e.code.to_string()),
        }
    }

    #[test]
    fn what_is_not_json_is_400_and_json_with_wrong_values_422() {
        let invalid = (422, "invalid_body".to_string());
        let not_json = (400, "invalid_json".to_string());
        assert_eq!(status(r#"{"kind": "team"}"#).0, 200);
        // Values that will not do, in valid JSON; the enum's among them,
        // which serde_json alone calls a syntax error.
        for text in [
            r#"{"kind": 7}"#,
            r#"{"kind": []}"#,
            r#"{"kind": true}"#,
            r#"{"kind": "everyone"}"#,
            r#"{"kind": "team", "n": "7"}"#,
            r#"{"kind": "team", "other": 1}"#,
            r#"{"n": 1}"#,
            "null",
            "[]",
        ] {
            assert_eq!(status(text), invalid, "{text}");
        }
        // Not JSON, wherever the first wrong value comes.
        for text in [
            r#"{"kind": "team", "other": 1"#,
            r#"{"kind": 7,"#,
            r#"{"kind": "team",}"#,
            "kind=team",
            "",
            "\u{feff}{\"kind\": \"team\"}",
        ] {
            assert_eq!(status(text), not_json, "{text:?}");
        }
    }
}
