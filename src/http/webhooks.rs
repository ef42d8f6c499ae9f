//! `GET/POST /webhooks/meta` and the operator's dead-letter endpoints.

use super::json::Json;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use subtle::ConstantTimeEq;

use super::pagination::{PageQuery, Paged};
use super::tenants::is_operator;
use super::{resource, AppState};
use crate::error::{AppError, AppResult, STORE_UNAVAILABLE};
use crate::inbox::processor;
use crate::meta::webhook::verify_signature;

/// Meta sends up to 3 MB (WhatsApp); leave room.
pub const WEBHOOK_LIMIT: usize = 4 * 1024 * 1024;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/webhooks/meta").app_data(web::PayloadConfig::new(WEBHOOK_LIMIT)).get(verify).post(receive));
}

pub fn operator_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/operator/dead-letters").get(dead_letters))
        .service(resource("/operator/dead-letters/replay").post(replay));
}

/// The subscription handshake: echo `hub.challenge` as plain text.
async fn verify(state: web::Data<AppState>, q: web::Query<HashMap<String, String>>) -> AppResult<HttpResponse> {
    let mode = q.get("hub.mode").map(String::as_str);
    let token = q.get("hub.verify_token").map(String::as_str).unwrap_or("");
    let expected = state.config.meta.verify_token.expose();
    let token_ok = bool::from(token.as_bytes().ct_eq(expected.as_bytes()));
    match (mode, token_ok, q.get("hub.challenge")) {
        (Some("subscribe"), true, Some(challenge)) => {
            Ok(HttpResponse::Ok().content_type("text/plain").body(challenge.clone()))
        }
        _ => Err(AppError::forbidden("verification_failed", "hub.mode or hub.verify_token is wrong")),
    }
}

/// Verifies the signature over the raw bytes, stores them, then answers 200.
async fn receive(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> AppResult<HttpResponse> {
    let header = req.headers().get("x-hub-signature-256").and_then(|v| v.to_str().ok());
    if !verify_signature(state.config.meta.app_secret.expose().as_bytes(), &body, header) {
        crate::metrics::inc(&crate::metrics::WEBHOOKS_REJECTED, 1);
        return Err(AppError::forbidden(
            "invalid_signature",
            "X-Hub-Signature-256 is missing or does not match the body",
        ));
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let unavailable = || AppError::unavailable(STORE_UNAVAILABLE, "the webhook could not be stored; Meta will retry");
    state.webhook_store.send((body.to_vec(), tx)).await.map_err(|_| unavailable())?;
    // Why a store failed is told by the store (`processor::run_store`),
    // once a while; so are the 503s (`telemetry`'s summed refusals).
    if !matches!(rx.await, Ok(Ok(()))) {
        return Err(unavailable());
    }
    crate::metrics::inc(&crate::metrics::WEBHOOKS_STORED, 1);
    Ok(HttpResponse::Ok().json(json!({"received": true})))
}

fn require_operator(state: &AppState, req: &HttpRequest) -> AppResult<()> {
    if is_operator(state, req) {
        Ok(())
    } else {
        Err(AppError::unauthorized("operator_only", "send Authorization: Bearer <SWITCHBOARD_OPERATOR_TOKEN>"))
    }
}

async fn dead_letters(
    state: web::Data<AppState>,
    req: HttpRequest,
    q: web::Query<PageQuery>,
) -> AppResult<HttpResponse> {
    require_operator(&state, &req)?;
    let page = q.parse()?;
    let items = state.db.public(move |conn| processor::dead_letters(conn, page.after, page.limit)).await?;
    let items: Vec<DeadLetterView> = items
        .into_iter()
        .map(|d| DeadLetterView {
            key: d.id,
            id: d.id.to_string(),
            received_at: d.received_at,
            attempts: d.attempts,
            last_error: d.last_error,
            body: serde_json::from_slice(&d.body).unwrap_or(serde_json::Value::Null),
        })
        .collect();
    Ok(HttpResponse::Ok().json(Paged::new(items, page.limit, |d| d.key)))
}

/// A dead letter as operators see it: the stored body as JSON (`null` if it
/// was not JSON).
#[derive(serde::Serialize)]
struct DeadLetterView {
    #[serde(skip)]
    key: i64,
    id: String,
    received_at: chrono::DateTime<chrono::Utc>,
    attempts: i32,
    last_error: Option<String>,
    body: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayBody {
    #[serde(default)]
    ids: Vec<String>,
}

async fn replay(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: Option<Json<ReplayBody>>,
) -> AppResult<HttpResponse> {
    require_operator(&state, &req)?;
    let ids = body.map(|b| b.into_inner().ids).unwrap_or_default();
    let ids: Vec<i64> = ids
        .iter()
        .map(|i| i.parse::<i64>().map_err(|_| AppError::invalid("invalid_id", format!("{i:?} is not an event id"))))
        .collect::<AppResult<_>>()?;
    let n = state.db.public(move |conn| processor::replay(conn, &ids)).await?;
    state.wake_processor.notify_one();
    Ok(HttpResponse::Ok().json(json!({"replayed": n})))
}
