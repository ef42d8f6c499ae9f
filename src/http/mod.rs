//! HTTP: routes and thin handlers. Handlers parse and check input, call a
//! domain function on the blocking pool and shape the answer; every failure
//! becomes the JSON error contract through [`AppError`].

pub mod attributes;
pub mod audit;
pub mod auth;
pub mod broadcasts;
pub mod channels;
pub mod health;
pub mod inbox;
pub mod integrations;
pub mod json;
pub mod members;
pub mod meta;
pub mod pagination;
pub mod realtime;
pub mod reports;
pub mod scheduled;
pub mod teams;
pub mod tenants;
pub mod webhooks;

use actix_web::dev::{Server, ServiceResponse};
use actix_web::error::{PathError, QueryPayloadError};
use actix_web::http::header;
use actix_web::middleware::{ErrorHandlerResponse, ErrorHandlers};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use std::net::TcpListener;
use std::sync::Arc;

use crate::config::ServerConfig;
use crate::error::{AppError, AppResult, ErrorKind};
use crate::telemetry::RequestSpan;

/// Largest JSON body the API accepts (webhooks have their own, larger limit).
pub const JSON_LIMIT: usize = 256 * 1024;

/// How long the server keeps an idle connection open by default
/// (`SWITCHBOARD_KEEP_ALIVE_SECS`). Whoever closes an idle connection races
/// the other side's next request on it: a request sent just as the server
/// closes fails (a proxy answers 502; a client sees the connection drop).
/// The safe order is for the client to let go first, so the server waits
/// longer than its clients keep connections idle: longer than a load
/// balancer's idle timeout (AWS's is 60 s by default), as nginx's 75 s.
/// actix's own 5 s is below all of them. A stop does not wait for idle
/// connections: actix closes them as a graceful stop begins.
pub const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(75);

/// How long our own HTTP clients of servers we do not configure (the
/// simulator's and the fake Meta's webhooks, sent to a Switchboard that may
/// sit behind anything) keep an idle connection: under the shortest
/// keep-alive in common use (5 s: actix's and Node's defaults), so they
/// never send on a connection the server is closing.
pub const CLIENT_IDLE: std::time::Duration = std::time::Duration::from_secs(4);

pub use crate::app::AppState;

fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    AppError::bad_request("invalid_query", err.to_string()).into()
}

fn path_error(_err: PathError, _req: &HttpRequest) -> actix_web::Error {
    AppError::not_found("resource").into()
}

async fn no_route(req: HttpRequest) -> Result<HttpResponse, AppError> {
    Err(AppError::new(ErrorKind::NotFound, "not_found", format!("no route for {} {}", req.method(), req.path())))
}

/// `{user_ids}`: who is listed on a channel or a team (the whole set).
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembersBody {
    pub user_ids: Vec<crate::ids::UserId>,
}

/// A resource at `path`: its methods are named once (`.get(handler)`…) and
/// every other method answers 405 in the JSON error shape with the `Allow`
/// header RFC 9110 §15.5.6 requires, listing what is served there.
pub fn resource(path: &str) -> Endpoint {
    Endpoint { resource: web::resource(path), allow: Vec::new() }
}

/// `Endpoint`'s one-method routes: `name(handler)` serves `METHOD`.
macro_rules! endpoint_methods {
    ($($(#[$doc:meta])* $name:ident => $method:ident,)*) => {
        $(
            $(#[$doc])*
            pub fn $name<F, Args>(self, handler: F) -> Self
            where
                F: actix_web::Handler<Args>,
                Args: actix_web::FromRequest + 'static,
                F::Output: actix_web::Responder + 'static,
            {
                self.on(actix_web::http::Method::$method, handler)
            }
        )*
    };
}

/// A resource being built by [`resource`]; it knows the methods it serves,
/// so the `Allow` of its 405 cannot drift from its routes.
pub struct Endpoint {
    resource: actix_web::Resource,
    allow: Vec<actix_web::http::Method>,
}

impl Endpoint {
    fn on<F, Args>(mut self, method: actix_web::http::Method, handler: F) -> Self
    where
        F: actix_web::Handler<Args>,
        Args: actix_web::FromRequest + 'static,
        F::Output: actix_web::Responder + 'static,
    {
        self.resource = self.resource.route(web::method(method.clone()).to(handler));
        self.allow.push(method);
        self
    }

    /// GET, and HEAD by the same handler (RFC 9110 §9.1: a server
    /// supports both): the same status and headers, no body (actix sends
    /// none to a HEAD).
    pub fn get<F, Args>(self, handler: F) -> Self
    where
        F: actix_web::Handler<Args>,
        Args: actix_web::FromRequest + 'static,
        F::Output: actix_web::Responder + 'static,
    {
        self.on(actix_web::http::Method::GET, handler.clone()).on(actix_web::http::Method::HEAD, handler)
    }

    endpoint_methods! {
        /// GET alone, for a GET that acts and that a HEAD must not set off:
        /// a socket's upgrade spends its ticket, the OAuth callback its
        /// `state`, an export or a transcript is written to the audit log.
        get_only => GET,
        post => POST,
        put => PUT,
        patch => PATCH,
        delete => DELETE,
    }

    pub fn app_data<U: 'static>(mut self, data: U) -> Self {
        self.resource = self.resource.app_data(data);
        self
    }
}

impl actix_web::dev::HttpServiceFactory for Endpoint {
    fn register(self, config: &mut actix_web::dev::AppService) {
        let allow = self.allow.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(", ");
        let allow = header::HeaderValue::from_str(&allow).unwrap_or(header::HeaderValue::from_static(""));
        let refuse = move |req: HttpRequest| {
            let allow = allow.clone();
            async move { method_not_allowed(req, allow) }
        };
        self.resource.default_service(web::to(refuse)).register(config)
    }
}

fn method_not_allowed(req: HttpRequest, allow: header::HeaderValue) -> HttpResponse {
    let refusal = AppError::new(
        ErrorKind::MethodNotAllowed,
        "method_not_allowed",
        format!("{} is not allowed on {}; it takes {}", req.method(), req.path(), allow.to_str().unwrap_or("")),
    );
    let mut res = actix_web::ResponseError::error_response(&refusal);
    res.headers_mut().insert(header::ALLOW, allow);
    res
}

/// Gives errors produced by the framework itself (an unmatched method, a
/// handler-less 404…) the JSON error shape; our own errors already have it.
fn json_error_shape<B>(res: ServiceResponse<B>) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (code, message) = match status.as_u16() {
        400 => ("bad_request", "the request is malformed"),
        401 => ("unauthorized", "authentication is required"),
        403 => ("forbidden", "not allowed"),
        404 => ("not_found", "no such resource"),
        405 => ("method_not_allowed", "this method is not allowed here"),
        408 => ("request_timeout", "the request took too long"),
        413 => ("payload_too_large", "the body is too large"),
        415 => ("unsupported_media_type", "unsupported content type"),
        431 => ("headers_too_large", "the request headers are too large"),
        s if s >= 500 => ("internal_error", "internal error"),
        _ => ("error", "the request failed"),
    };
    let (req, _) = res.into_parts();
    let body = HttpResponse::build(status).json(serde_json::json!({"error": {"code": code, "message": message}}));
    let res = ServiceResponse::new(req, body).map_into_right_body();
    Ok(ErrorHandlerResponse::Response(res))
}

pub fn error_shape<B: 'static>() -> ErrorHandlers<B> {
    ErrorHandlers::new().default_handler(json_error_shape)
}

/// Cross-origin calls to the API from the browser origins allowed
/// ([`ServerConfig::origin_allowed`]): a preflight is answered, an answer
/// carries `Access-Control-Allow-Origin`. Tokens travel in `Authorization`,
/// never cookies, so no credentials mode. Another origin's request is served
/// without those headers (a browser then withholds the answer), as for
/// clients that are not browsers; its preflight is refused (400).
fn cors(config: Arc<ServerConfig>) -> actix_cors::Cors {
    use actix_web::http::Method;
    actix_cors::Cors::default()
        .allowed_origin_fn(move |origin, _| origin.to_str().is_ok_and(|o| config.origin_allowed(o)))
        .allowed_methods([Method::GET, Method::POST, Method::PATCH, Method::PUT, Method::DELETE])
        .allowed_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            header::ACCEPT_LANGUAGE,
            header::CONTENT_LANGUAGE,
            // A media's parts (`GET /api/messages/{id}/attachments/{index}`).
            header::RANGE,
        ])
        .expose_headers([
            header::RETRY_AFTER,
            header::WWW_AUTHENTICATE,
            header::CONTENT_RANGE,
            header::ACCEPT_RANGES,
            header::CONTENT_DISPOSITION,
        ])
        .max_age(3600)
        .block_on_origin_mismatch(false)
}

/// A `channel_id=` query parameter (reports, contacts): 400
/// `invalid_channel_id` when it cannot name a channel.
fn channel_param(raw: Option<&str>) -> AppResult<Option<crate::channels::ChannelId>> {
    raw.map(|c| {
        c.parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .map(crate::channels::ChannelId)
            .ok_or_else(|| AppError::bad_request("invalid_channel_id", "channel_id is a channel's id"))
    })
    .transpose()
}

/// A `q=` query parameter (a search): 400 `invalid_query` for one holding
/// U+0000. PostgreSQL keeps it in no text, so such a search could find
/// nothing; it is refused, as the character is in a body.
fn search_text(q: Option<String>) -> AppResult<Option<String>> {
    match q {
        Some(q) if q.contains('\0') => {
            Err(AppError::bad_request("invalid_query", "q must not contain the character U+0000"))
        }
        q => Ok(q),
    }
}

/// All routes.
pub fn routes(cfg: &mut web::ServiceConfig, config: Arc<ServerConfig>) {
    cfg.app_data(web::QueryConfig::default().error_handler(query_error))
        .app_data(web::PathConfig::default().error_handler(path_error))
        .configure(health::routes)
        // Before the /api scope, which would otherwise claim /api/openapi.json.
        .configure(crate::web::routes)
        .service(
            web::scope("/api")
                .wrap(actix_web::middleware::from_fn(crate::auth::extract::api_token_first))
                // Answers hold tokens and customers' words: no cache keeps
                // them (RFC 6749 §5.1 asks it of token answers), but where a
                // handler says otherwise (an attachment, private and stable).
                .wrap(actix_web::middleware::DefaultHeaders::new().add((header::CACHE_CONTROL, "no-store")))
                .wrap(cors(config))
                .configure(auth::routes)
                .configure(tenants::routes)
                .configure(members::routes)
                .configure(teams::routes)
                .configure(broadcasts::routes)
                .configure(attributes::routes)
                .configure(channels::routes)
                .configure(inbox::routes)
                .configure(scheduled::routes)
                .configure(webhooks::operator_routes)
                .configure(realtime::api_routes)
                .configure(audit::routes)
                .configure(reports::routes)
                .configure(integrations::routes),
        )
        .configure(webhooks::routes)
        .configure(realtime::routes)
        .configure(meta::routes)
        .default_service(web::to(no_route));
}

/// Starts this instance's hub and its LISTEN thread (inside the actix system).
pub fn start_realtime(state: &AppState) -> actix::Addr<crate::realtime::Hub> {
    use actix::Actor;
    let instance = uuid::Uuid::new_v4().to_string();
    let hub = crate::realtime::Hub::new(
        instance,
        state.bus.clone(),
        state.feed.active(),
        state.feed.unwritten(),
        crate::realtime::hub::Shared { templates: state.templates.clone(), online: state.online.clone() },
    )
    .start();
    crate::realtime::bus::spawn_listener(
        state.config.db.database_url.expose().clone(),
        state.db.pool().clone(),
        hub.clone(),
        state.feed.clone(),
    );
    hub
}

/// SIGTERM and SIGINT, listened for from the moment this is made: from
/// then on they no longer end the process at once. Made before the server
/// is, not in the task that waits for them, which the runtime may first
/// run only after the first connections are served (a deploy's SIGTERM
/// then killed the process without a close frame).
struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    /// Needs the runtime (inside the actix system).
    fn listen() -> StopSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let (term, int) = (signal(SignalKind::terminate()).ok(), signal(SignalKind::interrupt()).ok());
            if term.is_none() && int.is_none() {
                tracing::warn!("cannot listen for SIGTERM or SIGINT: they end the process without closing sockets");
            }
            StopSignals { term, int }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// Until one comes (never, if neither could be listened for).
    async fn received(self) {
        #[cfg(unix)]
        {
            // Whichever could be registered is waited on, even if the
            // other could not.
            async fn one(s: Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = one(self.term) => {}
                _ = one(self.int) => {}
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Stops the server on SIGTERM or SIGINT (actix's own handling is off: it
/// would wait up to 30 s for open connections, which WebSockets keep, and
/// on SIGINT cut them without a close frame). The hub first closes every
/// socket with 1001 (going away), so clients reconnect at once, to another
/// instance, and resume with `since`; the sender claims no more and the
/// sends under way end (a send Meta took, cut before its record, would be
/// sent again), and the files being uploaded, for up to
/// [`STOP_WITHIN`](crate::inbox::sender::STOP_WITHIN) (an upload still
/// going is cut and handed back); then requests in flight finish and the
/// server stops.
async fn stop_on_signal(
    signals: StopSignals,
    state: web::Data<AppState>,
    hub: actix::Addr<crate::realtime::Hub>,
    server: actix_web::dev::ServerHandle,
) {
    signals.received().await;
    let closed = hub
        .send(crate::realtime::hub::CloseAll {
            code: crate::realtime::CLOSE_GOING_AWAY,
            reason: "the server is shutting down; reconnect",
        })
        .await
        .unwrap_or(0);
    tracing::info!(closed, "shutting down: WebSockets closed with 1001");
    let left = state.sends.stop(&state.wake_sender, crate::inbox::sender::stop_within()).await;
    if left.turns > 0 {
        tracing::warn!(left = left.turns, "shutting down with sends under way");
    }
    if let Err(e) = crate::inbox::roster::leave(&state).await {
        tracing::warn!(error = %e.message, "this sender stays counted a few seconds: it could not check out");
    }
    if !left.uploads.is_empty() {
        let cut = left.uploads.len();
        match crate::inbox::sender::hand_back_cut_uploads(&state, left.uploads).await {
            Ok(_) => tracing::warn!(cut, "shutting down with files being uploaded: their sends are handed back"),
            Err(e) => {
                tracing::warn!(cut, error = %e.message, "files being uploaded were cut; their sends wait for their lease")
            }
        }
    }
    server.stop(true).await;
}

/// Set on every accepted connection: data left unacknowledged, or unread
/// behind a peer's zero window, for longer than the WebSocket silence
/// timeout ends the connection (`TCP_USER_TIMEOUT`). Without it a client
/// that stops reading keeps its connection, its dispatcher and a full send
/// buffer (megabytes) for as long as it stays connected: its session is
/// closed (4408), but the close frame waits behind the unread
/// bytes and actix has no write timeout. A peer gone without a word is let
/// go as soon, instead of after the kernel's ~15 minutes of retries.
fn on_connect(connection: &dyn std::any::Any, _: &mut actix_web::dev::Extensions) {
    #[cfg(target_os = "linux")]
    if let Some(tcp) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        let (_, silence) = crate::realtime::session::heartbeat();
        if let Err(e) = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(silence)) {
            tracing::debug!(error = %e, "TCP_USER_TIMEOUT not set");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = connection;
}

/// Binds the server to `listener` (port 0 in tests).
pub fn build_server(state: web::Data<AppState>, listener: TcpListener) -> std::io::Result<Server> {
    let signals = StopSignals::listen();
    let state_for_stop = state.clone();
    let keys = web::Data::new(state.jwt.clone());
    let config = state.config.clone();
    let hub = web::Data::new(start_realtime(&state));
    let hub_addr = hub.get_ref().clone();
    // The webhook endpoint's group-commit writer.
    let writer = state.clone();
    crate::app::supervise("webhook store", move || crate::inbox::processor::run_store(writer.clone()));
    // Database work runs on each worker's blocking pool; no more threads than
    // the pool has connections, so waiting happens in r2d2, bounded.
    let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let blocking = (config.db.pool_size as usize).div_ceil(workers).max(2);
    let keep_alive = config.keep_alive;
    let server = HttpServer::new(move || {
        App::new()
            .wrap(error_shape())
            .wrap(tracing_actix_web::TracingLogger::<RequestSpan>::new())
            // Outermost, so errors get it too: no answer is to be read as
            // another type than it says (a browser sniffing JSON as HTML).
            .wrap(actix_web::middleware::DefaultHeaders::new().add(("X-Content-Type-Options", "nosniff")))
            .app_data(state.clone())
            .app_data(keys.clone())
            .app_data(hub.clone())
            .configure(|cfg| routes(cfg, config.clone()))
    })
    .workers(workers)
    .keep_alive(keep_alive)
    .on_connect(on_connect)
    // Kept at actix's 1 s. After a WebSocket's closing handshake actix does
    // not close TCP at once (RFC 6455 §7.1.1 asks the server to, and clients
    // wait for it): it drains the socket's stream until the client closes or
    // this timeout, which it reckons from a clock refreshed every 500 ms. A
    // timeout under that can fall due before it is armed and then never
    // wakes the connection, so closes finish 0.5–1 s after the handshake.
    .client_disconnect_timeout(std::time::Duration::from_secs(1))
    // Flushed at a socket's part of frames, so the dispatcher's buffer,
    // which it keeps, stays that small (realtime::session::WRITE_BUDGET).
    .h1_write_buffer_size(crate::realtime::session::WRITE_BUDGET)
    .worker_max_blocking_threads(blocking)
    .disable_signals()
    .listen(listener)?
    .run();
    actix_web::rt::spawn(stop_on_signal(signals, state_for_stop, hub_addr, server.handle()));
    Ok(server)
}
