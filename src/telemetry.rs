//! Logs: `tracing` with a request id and the tenant on every request's span;
//! plain text by default, JSON with `SWITCHBOARD_LOG_FORMAT=json`. The level
//! comes from `RUST_LOG` (default `info`).

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
    }
}
