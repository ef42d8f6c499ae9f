//! Logs: `tracing` with a request id and the tenant on every request's span;
//! plain text by default, JSON with `SWITCHBOARD_LOG_FORMAT=json`. The level
//! comes from `RUST_LOG` (default `info`).
//!
//! A request that ends in an error leaves one line (in its span, with the
//! error's code and message), at a level an operator can act on: `error`
//! for a 5xx (ours to look into), `warn` for 401, 403 and 429 (someone
//! without a valid credential, refused, or held back: worth watching), and
//! `info` for the rest of the client's mistakes (400, 404, 409, 422…),
//! which are theirs and part of a normal day; tracing-actix-web would put
//! all of those at `warn`.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use tracing::Span;
use tracing_actix_web::{DefaultRootSpanBuilder, RootSpanBuilder};
use tracing_subscriber::EnvFilter;

pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests start several servers) is harmless: keep the first.
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// Root span of each request: tracing-actix-web's fields (method, route,
/// status, `request_id`) plus `tenant` and `user_id`, filled in by the auth
/// extractor.
pub struct RequestSpan;

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        tracing_actix_web::root_span!(request, tenant = tracing::field::Empty, user_id = tracing::field::Empty)
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, actix_web::Error>) {
        DefaultRootSpanBuilder::on_request_end(span, outcome);
        // Called in the request's span: the line carries its fields.
        let (status, error) = match outcome {
            Ok(response) => match response.response().error() {
                Some(error) => (response.status(), error.as_response_error()),
                None => return,
            },
            Err(error) => (error.as_response_error().status_code(), error.as_response_error()),
        };
        const ENDED: &str = "request ended in an error";
        match Severity::of(status) {
            Severity::Ours => tracing::error!("{ENDED}: {error}"),
            Severity::Watch => tracing::warn!("{ENDED}: {error}"),
            Severity::Theirs => tracing::info!("{ENDED}: {error}"),
        }
    }
}

/// How much an error answer matters to whoever runs the server.
#[derive(Debug, PartialEq)]
enum Severity {
    /// A 5xx: ours to look into.
    Ours,
    /// No valid credential, refused, or held back.
    Watch,
    /// The client's mistake.
    Theirs,
}

impl Severity {
    fn of(status: actix_web::http::StatusCode) -> Severity {
        use actix_web::http::StatusCode as S;
        match status {
            s if !s.is_client_error() => Severity::Ours,
            S::UNAUTHORIZED | S::FORBIDDEN | S::TOO_MANY_REQUESTS => Severity::Watch,
            _ => Severity::Theirs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::StatusCode as S;

    #[test]
    fn only_our_failures_are_errors_and_only_refusals_warnings() {
        for (status, severity) in [
            (S::INTERNAL_SERVER_ERROR, Severity::Ours),
            (S::BAD_GATEWAY, Severity::Ours),
            (S::SERVICE_UNAVAILABLE, Severity::Ours),
            (S::UNAUTHORIZED, Severity::Watch),
            (S::FORBIDDEN, Severity::Watch),
            (S::TOO_MANY_REQUESTS, Severity::Watch),
            (S::BAD_REQUEST, Severity::Theirs),
            (S::NOT_FOUND, Severity::Theirs),
            (S::CONFLICT, Severity::Theirs),
            (S::UNPROCESSABLE_ENTITY, Severity::Theirs),
        ] {
            assert_eq!(Severity::of(status), severity, "{status}");
        }
    }
}
