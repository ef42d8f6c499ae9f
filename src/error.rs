//! The one error type of the domain and HTTP layers, and its single mapping to
//! the JSON error contract `{"error": {"code", "message"}}`.
//!
//! An error may carry `details` (an extension: `{"error": {"code",
//! "message", "details"}}`), a value a client can act on where the message
//! is a sentence: the contacts' import lists its wrong rows there.
//!
//! Domain functions say *what kind* of failure happened (not found, conflict,
//! invalid value…) with a machine-readable code; the status code is chosen
//! here and nowhere else. Internal failures keep their cause for the log and
//! show the client only "internal error".

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;
use std::borrow::Cow;
use std::fmt;

use crate::db::DbError;

pub type AppResult<T> = Result<T, AppError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    /// Was here, and is no more (an expired link).
    Gone,
    PayloadTooLarge,
    UnsupportedMediaType,
    Unprocessable,
    RateLimited,
    RangeNotSatisfiable,
    BadGateway,
    Unavailable,
    Internal,
}

impl ErrorKind {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::Forbidden => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::Gone => StatusCode::GONE,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorKind::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

pub struct AppError {
    pub kind: ErrorKind,
    pub code: Cow<'static, str>,
    pub message: String,
    /// Seconds for a `Retry-After` header (rate limits).
    pub retry_after: Option<u64>,
    /// A 416's whole length, for its `Content-Range: bytes */…`.
    whole_length: Option<u64>,
    /// Shown as `error.details` when there are some.
    pub details: Option<Box<serde_json::Value>>,
    source: Option<anyhow::Error>,
}

impl AppError {
    pub fn new(kind: ErrorKind, code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        AppError {
            kind,
            code: code.into(),
            message: message.into(),
            retry_after: None,
            whole_length: None,
            details: None,
            source: None,
        }
    }

    /// 416 `range_not_satisfiable`: the part a `Range` asked for is not in
    /// the file, whose length (when known) the answer's `Content-Range`
    /// gives (RFC 9110 §15.5.17), so a player can ask again within it.
    pub fn range_not_satisfiable(whole_length: Option<u64>) -> Self {
        let size = whole_length.map_or("size unknown".to_string(), |len| format!("bytes */{len}"));
        AppError {
            whole_length,
            ..Self::new(
                ErrorKind::RangeNotSatisfiable,
                "range_not_satisfiable",
                format!("the media has no such part ({size})"),
            )
        }
    }

    /// With `details` shown beside the message.
    pub fn details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    /// With a `Retry-After` of `secs` (at least 1).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, code, message)
    }
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthorized, code, message)
    }
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Forbidden, code, message)
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorKind::NotFound, "not_found", format!("{what} not found"))
    }
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, code, message)
    }
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unprocessable, code, message)
    }
    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, code, message)
    }
    /// 503 `retry` with `Retry-After: 1`: another transaction's work came
    /// first and nothing was written; the same request again will go.
    pub fn concurrent_update() -> Self {
        Self::unavailable("retry", "concurrent update, please retry").retry_after(1)
    }
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        AppError {
            kind: ErrorKind::Internal,
            code: "internal_error".into(),
            message: "internal error".into(),
            retry_after: None,
            whole_length: None,
            details: None,
            source: Some(cause.into()),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// This refusal, of a query parameter's value: a query is not JSON, so
    /// API.md's 422 (valid JSON with invalid values) is its 400 (bad
    /// input) there, with the same code. Other refusals stay as they are.
    pub fn in_query(mut self) -> Self {
        if self.kind == ErrorKind::Unprocessable {
            self.kind = ErrorKind::BadRequest;
        }
        self
    }
}

impl fmt::Debug for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status().as_u16(), self.code, self.message)?;
        if let Some(source) = &self.source {
            write!(f, " ({source:#})")?;
        }
        Ok(())
    }
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for AppError {}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        self.status()
    }

    fn error_response(&self) -> HttpResponse {
        if self.kind == ErrorKind::Internal {
            tracing::error!(error = ?self, "internal error");
        }
        let mut response = HttpResponse::build(self.status());
        if let Some(secs) = self.retry_after {
            response.insert_header((actix_web::http::header::RETRY_AFTER, secs.to_string()));
        }
        if let Some(len) = self.whole_length {
            response.insert_header((actix_web::http::header::CONTENT_RANGE, format!("bytes */{len}")));
        }
        if self.status() == StatusCode::UNAUTHORIZED {
            // RFC 7235 asks every 401 to name its scheme; RFC 6750 says
            // which token failure it was.
            let challenge = match self.code.as_ref() {
                "invalid_token" | "token_expired" | "token_revoked" | "membership_revoked" | "login_ended" => {
                    r#"Bearer realm="switchboard", error="invalid_token""#
                }
                _ => r#"Bearer realm="switchboard""#,
            };
            response.insert_header((actix_web::http::header::WWW_AUTHENTICATE, challenge));
        }
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(details) = &self.details {
            error["details"] = (**details).clone();
        }
        response.json(json!({ "error": error }))
    }
}

/// The code of a lost connection, or of a pool that cannot connect.
pub const DATABASE_UNAVAILABLE: &str = "database_unavailable";
/// The code of a webhook the store could not keep (Meta retries it).
pub const STORE_UNAVAILABLE: &str = "store_unavailable";

impl From<DbError> for AppError {
    fn from(e: DbError) -> Self {
        use diesel::result::{DatabaseErrorKind, Error as D};
        // The pool could not connect, or a query's connection was gone:
        // the dependency is down (or just restarted), not our bug.
        if matches!(e, DbError::Pool(_)) || crate::db::connection_lost(&e) {
            return AppError::unavailable(DATABASE_UNAVAILABLE, "the database is not reachable").retry_after(1);
        }
        match e {
            DbError::Query(D::NotFound) => AppError::not_found("resource"),
            DbError::Query(D::DatabaseError(DatabaseErrorKind::UniqueViolation, info)) => AppError::conflict(
                "conflict",
                format!("already exists ({})", info.constraint_name().unwrap_or("unique")),
            ),
            DbError::Query(D::DatabaseError(DatabaseErrorKind::SerializationFailure, _)) => {
                AppError::unavailable("retry", "concurrent update, please retry")
            }
            // What a write names was there when it was checked and is gone
            // now (deleted by a request that committed in between: a
            // customer erased as an agent replies to them): nothing was
            // written, and the answer is the one a moment later gets. (Every
            // reference cascades or is set null on delete, so a delete
            // never meets one.)
            DbError::Query(D::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, info)) => {
                AppError::not_found(&referent(info.table_name(), info.constraint_name()))
            }
            // SQLSTATE 40P01, which diesel files under Unknown: PostgreSQL
            // ended this transaction so that another could go on. Nothing
            // was written; the same request again will go. (Locks are taken
            // in one order to make it rare, not impossible.)
            DbError::Query(D::DatabaseError(_, info)) if info.message().starts_with("deadlock detected") => {
                AppError::concurrent_update()
            }
            // SQLSTATE 55P03 and 57014: a row lock or a statement waited
            // past the `lock_timeout` or `statement_timeout` an operator set
            // on the database or its role. Nothing was written; it is the
            // database being busy, not a fault of the request or of ours.
            DbError::Query(D::DatabaseError(_, info))
                if info
                    .message()
                    .strip_prefix("canceling statement due to ")
                    .is_some_and(|why| why.starts_with("lock timeout") || why.starts_with("statement timeout")) =>
            {
                AppError::unavailable("retry", "the database was busy, please retry").retry_after(1)
            }
            // PostgreSQL text and jsonb cannot hold U+0000 (SQLSTATE 22021 /
            // 22P05; diesel keeps no SQLSTATE, so the locale-independent part
            // of the message is matched): the client's input, not our fault.
            DbError::Query(D::DatabaseError(_, info))
                if info.message().contains("0x00")
                    || info.message().contains("\\u0000")
                    || info.details().is_some_and(|d| d.contains("\\u0000")) =>
            {
                AppError::invalid("invalid_text", "text must not contain the character U+0000")
            }
            DbError::TenantNotFound => AppError::not_found("tenant"),
            DbError::TenantSuspended => AppError::forbidden("tenant_suspended", "this tenant is suspended"),
            DbError::TenantNotReady => {
                AppError::unavailable("tenant_not_ready", "this tenant's schema is being migrated; retry shortly")
            }
            DbError::MembershipChanged => {
                AppError::unauthorized("token_revoked", "your role in this tenant changed; log in again")
            }
            DbError::MembershipEnded => {
                AppError::unauthorized("membership_revoked", "you are not a member of this tenant")
            }
            DbError::LoginEnded => AppError::unauthorized(
                "login_ended",
                "this login has ended (signed out, a new password, a refresh token used twice, or a suspension); log in again",
            ),
            other => AppError::internal(other),
        }
    }
}

/// What a foreign key names, from its constraint (`messages_conversation_id_fkey`
/// on `messages`: `conversation`); `resource` when it cannot be told.
fn referent(table: Option<&str>, constraint: Option<&str>) -> String {
    let named = constraint
        .and_then(|c| c.strip_suffix("_fkey"))
        .map(|c| table.and_then(|t| c.strip_prefix(t)).and_then(|c| c.strip_prefix('_')).unwrap_or(c))
        .map(|column| column.strip_suffix("_id").unwrap_or(column).replace('_', " "))
        .filter(|name| !name.is_empty());
    named.unwrap_or_else(|| "resource".to_string())
}

impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        DbError::from(e).into()
    }
}

impl From<crate::meta::GraphError> for AppError {
    fn from(e: crate::meta::GraphError) -> Self {
        use crate::meta::GraphError as G;
        let message = e.to_string();
        match e {
            G::TokenInvalid { .. } => AppError::invalid("meta_token_invalid", message),
            G::Permission { .. } => AppError::invalid("meta_permission_denied", message),
            G::RateLimited { regain_in, .. } => {
                let limited = AppError::new(ErrorKind::RateLimited, "meta_rate_limited", message);
                // Meta's own estimate, passed on (RFC 9110 §10.2.3), where it gave one.
                match regain_in {
                    Some(wait) => limited.retry_after(wait.as_secs()),
                    None => limited,
                }
            }
            G::OutsideWindow { .. } => AppError::invalid("outside_window", message),
            G::RecipientUnavailable { .. } => AppError::invalid("recipient_unavailable", message),
            G::Transient { .. } | G::Network(_) | G::NoAnswer(_) => AppError::unavailable("meta_unavailable", message),
            G::Other { .. } | G::Decode(_) => AppError::new(ErrorKind::BadGateway, "meta_error", message),
            // Made of what was given or kept (an id, a token): checked at
            // the door, so this names a value a check let through.
            G::Unsendable(_) => AppError::invalid("meta_request_invalid", message),
        }
    }
}

impl From<crate::crypto::CryptoError> for AppError {
    fn from(e: crate::crypto::CryptoError) -> Self {
        AppError::internal(e)
    }
}

impl From<actix_web::error::BlockingError> for AppError {
    fn from(e: actix_web::error::BlockingError) -> Self {
        AppError::internal(anyhow::anyhow!("blocking task failed: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::referent;

    #[test]
    fn a_foreign_key_names_what_it_refers_to() {
        assert_eq!(referent(Some("messages"), Some("messages_conversation_id_fkey")), "conversation");
        assert_eq!(referent(Some("note_mentions"), Some("note_mentions_message_id_fkey")), "message");
        assert_eq!(referent(Some("broadcast_recipients"), Some("broadcast_recipients_contact_id_fkey")), "contact");
        assert_eq!(referent(Some("conversations"), Some("conversations_team_id_fkey")), "team");
        assert_eq!(referent(None, Some("odd_fkey")), "odd");
        assert_eq!(referent(Some("t"), Some("t_fkey")), "t");
        assert_eq!(referent(Some("t"), None), "resource");
        assert_eq!(referent(None, Some("_fkey")), "resource");
    }
}
