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
//!
//! A failure that repeats (the pool failing to connect, a worker's pass
//! failing while the database is down) is told once, then at most once
//! every [`TOLD_EVERY`] with how many it stands for, and its end once
//! ([`Repeats`]): an outage of a minute was otherwise a line from each
//! worker every few seconds and several a second from the pool. The
//! requests refused meanwhile (`database_unavailable`, and webhooks'
//! `store_unavailable`) are told the same way, but for the end, which the
//! pool's and the store's lines tell ([`SUMMED`]); a run of them ends once
//! [`TOLD_EVERY`] passes without one, and the next run's first line says
//! how many the last one's end left untold, apart from its own count.
//!
//! A request's span names its target with the values of the query
//! parameters that carry a credential replaced ([`redacted_target`]): a
//! WebSocket ticket, OAuth's `code` and `state`, Meta's verify token, an
//! unsubscribe token, a media link. Every line logged in the request
//! carries the span's fields, and a log is not a place for credentials.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use tracing::Span;
use tracing_actix_web::{DefaultRootSpanBuilder, RootSpanBuilder};
use tracing_subscriber::EnvFilter;

use crate::error::{AppError, DATABASE_UNAVAILABLE, STORE_UNAVAILABLE};

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
    /// tracing-actix-web's `root_span!` fields, which `on_request_end`
    /// fills in, but for the target: that macro logs the query as it came.
    fn on_request_start(request: &ServiceRequest) -> Span {
        use actix_web::HttpMessage;
        use tracing::field::Empty;
        let route = request.match_pattern().unwrap_or_else(|| "default".into());
        let method = request.method().as_str();
        let user_agent = request.headers().get(actix_web::http::header::USER_AGENT).and_then(|h| h.to_str().ok());
        let request_id = request.extensions().get::<tracing_actix_web::RequestId>().map(|id| id.to_string());
        let info = request.connection_info();
        tracing::info_span!(
            "HTTP request",
            http.method = %method,
            http.route = %route,
            http.flavor = %http_flavor(request.version()),
            http.scheme = %info.scheme(),
            http.host = %info.host(),
            http.client_ip = %info.realip_remote_addr().unwrap_or(""),
            http.user_agent = %user_agent.unwrap_or(""),
            http.target = %redacted_target(request.uri()),
            http.status_code = Empty,
            otel.name = %format!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = Empty,
            request_id = %request_id.unwrap_or_default(),
            exception.message = Empty,
            exception.details = Empty,
            tenant = Empty,
            user_id = Empty,
        )
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, actix_web::Error>) {
        DefaultRootSpanBuilder::on_request_end(span, outcome);
        // Called in the request's span: the line carries its fields.
        let (status, error) = match outcome {
            Ok(response) => match response.response().error() {
                Some(error) => (response.status(), error),
                None => return,
            },
            Err(error) => (error.as_response_error().status_code(), error),
        };
        const ENDED: &str = "request ended in an error";
        match told(status, error, &SUMMED_REPEATS, Instant::now()) {
            Told::Line(Severity::Ours) => tracing::error!("{ENDED}: {error}"),
            Told::Line(Severity::Watch) => tracing::warn!("{ENDED}: {error}"),
            Told::Line(Severity::Theirs) => tracing::info!("{ENDED}: {error}"),
            Told::Summed { more_since_last_told, untold_before_a_pause } => {
                crate::metrics::inc(&crate::metrics::REQUESTS_UNAVAILABLE, 1);
                match untold_before_a_pause {
                    0 => tracing::error!(more_since_last_told, "{ENDED}: {error}"),
                    _ => tracing::error!(more_since_last_told, untold_before_a_pause, "{ENDED}: {error}"),
                }
            }
            Told::Untold => crate::metrics::inc(&crate::metrics::REQUESTS_UNAVAILABLE, 1),
        }
    }
}

/// Query parameters whose values are credentials ([`redacted_target`]).
const SECRET_PARAMETERS: &[&str] =
    &["ticket", "code", "state", "hub.verify_token", "token", "link", "access_token", "refresh_token"];

/// What stands in a logged target for a credential's value.
const REDACTED: &str = "[redacted]";

/// A request's path and query as logged: each parameter of
/// [`SECRET_PARAMETERS`] (its name as the server reads it, percent-decoded)
/// with its value replaced, the rest as it came.
fn redacted_target(uri: &actix_web::http::Uri) -> std::borrow::Cow<'_, str> {
    let Some(query) = uri.query() else { return uri.path().into() };
    let is_secret = |pair: &str| {
        let name = form_urlencoded::parse(pair.as_bytes()).next().map(|(name, _)| name);
        name.is_some_and(|name| SECRET_PARAMETERS.contains(&name.as_ref()))
    };
    if !query.split('&').any(is_secret) {
        return uri.path_and_query().map_or(uri.path(), |p| p.as_str()).into();
    }
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match (is_secret(pair), pair.split_once('=')) {
            (true, Some((name, _))) => format!("{name}={REDACTED}"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{}?{}", uri.path(), pairs.join("&")).into()
}

/// As tracing-actix-web names HTTP versions.
fn http_flavor(version: actix_web::http::Version) -> std::borrow::Cow<'static, str> {
    use actix_web::http::Version;
    match version {
        Version::HTTP_09 => "0.9".into(),
        Version::HTTP_10 => "1.0".into(),
        Version::HTTP_11 => "1.1".into(),
        Version::HTTP_2 => "2.0".into(),
        Version::HTTP_3 => "3.0".into(),
        other => format!("{other:?}").into(),
    }
}

/// The refusals told as a repeating failure is ([`Repeats`]), each code on
/// its own: a request refused because the database is out of reach, and a
/// webhook the store could not keep (the store tells why). While the
/// database is down every request is one, Meta's webhooks and their
/// retries included: a line each was thousands a minute. The first is
/// told, then one every [`TOLD_EVERY`] with how many it stands for (each
/// is counted in `switchboard_requests_unavailable_total`); the pool's and
/// the store's own lines tell when they go again.
const SUMMED: [&str; 2] = [DATABASE_UNAVAILABLE, STORE_UNAVAILABLE];
static SUMMED_REPEATS: Mutex<[Repeats; 2]> = Mutex::new([Repeats::new(), Repeats::new()]);

/// What line a request that ended in an error leaves.
#[derive(Debug, PartialEq)]
enum Told {
    Line(Severity),
    /// One of the [`SUMMED`] refusals, standing for `more_since_last_told`
    /// earlier ones of its code that were not told; the first after a
    /// pause of [`TOLD_EVERY`] or more (the run before it over) stands for
    /// none, and says how many that run's end left untold.
    Summed {
        more_since_last_told: u64,
        untold_before_a_pause: u64,
    },
    /// One of those, not told (one was, lately).
    Untold,
}

fn told(status: StatusCode, error: &actix_web::Error, summed: &Mutex<[Repeats; 2]>, now: Instant) -> Told {
    let code = error.as_error::<AppError>().map(|e| e.code.as_ref());
    let Some(which) = SUMMED.iter().position(|c| Some(*c) == code) else {
        return Told::Line(Severity::of(status));
    };
    // A poisoned lock only means a panic mid-update of a few counters.
    let mut repeats = summed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let repeats = &mut repeats[which];
    // Nothing tells a run of refusals' end but the pause after it.
    let untold_before_a_pause = match repeats.last {
        Some(last) if now.saturating_duration_since(last) >= TOLD_EVERY => std::mem::take(repeats).untold,
        _ => 0,
    };
    match repeats.failed(now) {
        Some(more_since_last_told) => Told::Summed { more_since_last_told, untold_before_a_pause },
        None => Told::Untold,
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
    fn of(status: StatusCode) -> Severity {
        use StatusCode as S;
        match status {
            s if !s.is_client_error() => Severity::Ours,
            S::UNAUTHORIZED | S::FORBIDDEN | S::TOO_MANY_REQUESTS => Severity::Watch,
            _ => Severity::Theirs,
        }
    }
}

/// At most one line this often while a failure repeats.
pub const TOLD_EVERY: Duration = Duration::from_secs(30);

/// The failures of one repeating thing since it last went (a pool's
/// connects, a worker's passes), and what of them was told ([module
/// docs](self)).
#[derive(Debug, Default)]
pub struct Repeats {
    since: Option<Instant>,
    told_at: Option<Instant>,
    /// Failures since the last line.
    untold: u64,
    /// Failures since it last went.
    count: u64,
    /// The last failure.
    last: Option<Instant>,
}

impl Repeats {
    pub const fn new() -> Repeats {
        Repeats { since: None, told_at: None, untold: 0, count: 0, last: None }
    }

    /// A failure at `now`: `Some(n)` when it is to be told, standing for
    /// `n` earlier ones that were not.
    pub fn failed(&mut self, now: Instant) -> Option<u64> {
        self.since.get_or_insert(now);
        self.last = Some(now);
        self.count += 1;
        if self.told_at.is_some_and(|at| now.saturating_duration_since(at) < TOLD_EVERY) {
            self.untold += 1;
            return None;
        }
        self.told_at = Some(now);
        Some(std::mem::take(&mut self.untold))
    }

    /// It went at `now`: after failures, how long since the first and how
    /// many there were (to be told); the count starts again.
    pub fn went(&mut self, now: Instant) -> Option<(Duration, u64)> {
        let since = self.since.take()?;
        let count = self.count;
        *self = Repeats::default();
        Some((now.saturating_duration_since(since), count))
    }
}

/// A worker's pass (`what`, a literal) ended with `outcome` (a `&Result`
/// whose error is `Debug`): a failure is warned of as
/// [`Repeats::failed`] says, and the first pass that goes after failures
/// says so. A macro so that the line's target is the worker's module.
macro_rules! tell_repeats {
    ($repeats:expr, $what:literal, $outcome:expr) => {
        match $outcome {
            Ok(_) => {
                if let Some((failed_for, failures)) = $repeats.went(std::time::Instant::now()) {
                    tracing::warn!(?failed_for, failures, concat!($what, " goes again"));
                }
            }
            Err(error) => {
                if let Some(more_since_last_told) = $repeats.failed(std::time::Instant::now()) {
                    tracing::warn!(?error, more_since_last_told, concat!($what, " failed"));
                }
            }
        }
    };
}
pub(crate) use tell_repeats;

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::StatusCode as S;

    #[test]
    fn credentials_in_a_query_are_not_logged() {
        let target = |uri: &str| redacted_target(&uri.parse().expect("a uri")).into_owned();
        assert_eq!(target("/ws?ticket=s3cr3t&since=42"), "/ws?ticket=[redacted]&since=42");
        assert_eq!(
            target("/api/channels/facebook/oauth/callback?code=AQ-x_1&state=eyJ.sig#_=_"),
            "/api/channels/facebook/oauth/callback?code=[redacted]&state=[redacted]"
        );
        assert_eq!(
            target("/webhooks/meta?hub.mode=subscribe&hub.verify_token=v%20t&hub.challenge=1158201444"),
            "/webhooks/meta?hub.mode=subscribe&hub.verify_token=[redacted]&hub.challenge=1158201444"
        );
        // The name as the server reads it: percent-encoded, or `+` for a space.
        assert_eq!(target("/unsubscribe?t%6Fken=abc&all=true"), "/unsubscribe?t%6Fken=[redacted]&all=true");
        assert_eq!(target("/api/messages/7/attachments/0?link=a.b.c"), "/api/messages/7/attachments/0?link=[redacted]");
        // Others, and a name with no value, stay as they came.
        assert_eq!(
            target("/api/conversations?q=caf%C3%A9+au+lait&limit=5"),
            "/api/conversations?q=caf%C3%A9+au+lait&limit=5"
        );
        assert_eq!(target("/ws?ticket&ticketing=1&x=code=1"), "/ws?ticket&ticketing=1&x=code=1");
        assert_eq!(target("/healthz"), "/healthz");
    }

    /// A writer that keeps what it is given, for a test to read.
    #[derive(Clone, Default)]
    struct Kept(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Kept {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Kept {
        type Writer = Kept;
        fn make_writer(&'a self) -> Kept {
            self.clone()
        }
    }

    #[actix_web::test]
    async fn a_line_in_a_request_names_its_target_without_the_ticket() {
        use actix_web::{test, web, App, HttpResponse};
        let kept = Kept::default();
        let subscriber = tracing_subscriber::fmt().with_writer(kept.clone()).with_ansi(false).finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let app = test::init_service(App::new().wrap(tracing_actix_web::TracingLogger::<RequestSpan>::new()).route(
            "/ws",
            web::get().to(|| async {
                tracing::info!("inside the request");
                HttpResponse::NoContent().finish()
            }),
        ))
        .await;
        let request =
            test::TestRequest::with_uri("/ws?ticket=s3cr3t-t1cket&since=9").insert_header(("user-agent", "agent/1"));
        assert_eq!(test::call_service(&app, request.to_request()).await.status(), S::NO_CONTENT);
        let line = String::from_utf8(kept.0.lock().unwrap_or_else(|p| p.into_inner()).clone()).expect("utf-8");
        assert!(line.contains("inside the request"), "{line}");
        assert!(line.contains("http.target=/ws?ticket=[redacted]&since=9"), "{line}");
        assert!(line.contains("http.route=/ws") && line.contains("http.user_agent=agent/1"), "{line}");
        assert!(line.contains("request_id=") && line.contains("otel.name=GET /ws"), "{line}");
        assert!(!line.contains("s3cr3t"), "{line}");
    }

    #[test]
    fn a_repeating_failure_is_one_line_a_while_and_one_when_it_ends() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut f = Repeats::default();
        assert_eq!(f.went(at(0)), None, "nothing to say without failures");
        assert_eq!(f.failed(at(0)), Some(0), "the first is told");
        let every = TOLD_EVERY.as_millis() as u64;
        let told: Vec<_> = (1..=9).filter_map(|i| f.failed(at(i * every / 4)).map(|n| (i, n))).collect();
        // Told again once the interval has passed, with what it stood for.
        assert_eq!(told, [(4, 3), (8, 3)]);
        assert_eq!(f.went(at(10 * every / 4)), Some((Duration::from_millis(10 * every / 4), 10)));
        assert_eq!(f.went(at(11 * every / 4)), None, "said once");
        // The next outage starts afresh: its first failure is told at once.
        assert_eq!(f.failed(at(11 * every / 4)), Some(0));
    }

    #[test]
    fn refusals_for_a_database_out_of_reach_are_told_as_a_repeating_failure() {
        let summed = Mutex::new([Repeats::new(), Repeats::new()]);
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let every = TOLD_EVERY.as_millis() as u64;
        let gone = || actix_web::Error::from(AppError::unavailable(DATABASE_UNAVAILABLE, "out of reach"));
        let unkept = || actix_web::Error::from(AppError::unavailable(STORE_UNAVAILABLE, "not stored"));
        assert_eq!(
            told(S::SERVICE_UNAVAILABLE, &gone(), &summed, at(0)),
            Told::Summed { more_since_last_told: 0, untold_before_a_pause: 0 }
        );
        for i in 1..=5 {
            assert_eq!(told(S::SERVICE_UNAVAILABLE, &gone(), &summed, at(i * every / 10)), Told::Untold);
        }
        // Each code on its own: the store's first is told though the
        // database's was just now.
        assert_eq!(
            told(S::SERVICE_UNAVAILABLE, &unkept(), &summed, at(every / 2)),
            Told::Summed { more_since_last_told: 0, untold_before_a_pause: 0 }
        );
        assert_eq!(told(S::SERVICE_UNAVAILABLE, &unkept(), &summed, at(every / 2 + 1)), Told::Untold);
        // Other errors meanwhile keep their own line, and count for nothing here.
        let others = [
            (S::SERVICE_UNAVAILABLE, AppError::concurrent_update(), Severity::Ours),
            (S::SERVICE_UNAVAILABLE, AppError::unavailable("meta_unavailable", "Meta is away"), Severity::Ours),
            (S::INTERNAL_SERVER_ERROR, AppError::internal(anyhow::anyhow!("boom")), Severity::Ours),
            (S::UNAUTHORIZED, AppError::unauthorized("invalid_token", "no"), Severity::Watch),
        ];
        for (status, error, severity) in others {
            assert_eq!(told(status, &error.into(), &summed, at(every / 2)), Told::Line(severity));
        }
        // Told again once the interval has passed, with the five between.
        let five = Told::Summed { more_since_last_told: 5, untold_before_a_pause: 0 };
        assert_eq!(told(S::SERVICE_UNAVAILABLE, &gone(), &summed, at(every)), five);
        assert_eq!(told(S::SERVICE_UNAVAILABLE, &gone(), &summed, at(every + 1)), Told::Untold);
        assert_eq!(told(S::SERVICE_UNAVAILABLE, &gone(), &summed, at(every + 2)), Told::Untold);
        // A pause as long as the interval ends the run: the next refusal is
        // told at once, for itself, and says what the run's end left untold.
        let again = Told::Summed { more_since_last_told: 0, untold_before_a_pause: 2 };
        assert_eq!(told(S::SERVICE_UNAVAILABLE, &gone(), &summed, at(2 * every + 2)), again);
        assert_eq!(told(S::SERVICE_UNAVAILABLE, &gone(), &summed, at(2 * every + 3)), Told::Untold);
        // The store's run, untold since `every / 2 + 1`, ended long ago too.
        let store_again = Told::Summed { more_since_last_told: 0, untold_before_a_pause: 1 };
        assert_eq!(told(S::SERVICE_UNAVAILABLE, &unkept(), &summed, at(2 * every + 3)), store_again);
    }

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
