//! `/api/integrations/webhooks`: a tenant's admins manage the endpoints
//! their events are POSTed to (`integrations::webhooks`).

use super::json::Json;
use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::pagination::{PageQuery, Paged};
use super::{resource, AppState};
use crate::auth::{AuthContext, Role};
use crate::error::{AppError, AppResult};
use crate::integrations::webhooks::{self, Change};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/integrations/webhooks").get(list).post(create))
        .service(resource("/integrations/webhooks/{id}").patch(update).delete(delete))
        .service(resource("/integrations/webhooks/{id}/ping").post(ping));
}

/// `POST /api/integrations/webhooks/{id}/ping`: a signed `ping` now, and
/// how it went (200 either way: the endpoint exists; the receiver failed).
async fn ping(state: web::Data<AppState>, auth: AuthContext, path: web::Path<String>) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let id = webhook_id(&path)?;
    let st = state.clone();
    let (url, secret) = state.db.tenant(auth.scope(), move |tc| webhooks::ping_target(tc, &st.keys, id)).await?;
    let outcome = webhooks::ping(id, &url, &secret, state.config.webhooks_private_ok).await;
    Ok(HttpResponse::Ok().json(outcome))
}

/// An endpoint's id from the path; anything else names none.
fn webhook_id(raw: &str) -> AppResult<i64> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| AppError::not_found("webhook"))
}

async fn list(state: web::Data<AppState>, auth: AuthContext, page: web::Query<PageQuery>) -> AppResult<HttpResponse> {
    let page = page.parse()?;
    auth.require(Role::Admin)?;
    let items = state.db.tenant(auth.scope(), webhooks::list).await?;
    Ok(HttpResponse::Ok().json(Paged::whole(items, &page)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewEndpoint {
    url: String,
    #[serde(default)]
    event_types: Vec<String>,
}

async fn create(state: web::Data<AppState>, auth: AuthContext, body: Json<NewEndpoint>) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let body = body.into_inner();
    let user = auth.user;
    let st = state.clone();
    let created = state
        .db
        .tenant(auth.scope(), move |tc| webhooks::create(tc, &st.keys, user, &body.url, body.event_types))
        .await?;
    Ok(HttpResponse::Created().json(created))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointChange {
    url: Option<String>,
    event_types: Option<Vec<String>>,
    enabled: Option<bool>,
}

async fn update(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    body: Json<EndpointChange>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let id = webhook_id(&path)?;
    let b = body.into_inner();
    let change = Change { url: b.url, event_types: b.event_types, enabled: b.enabled };
    let user = auth.user;
    let endpoint = state.db.tenant(auth.scope(), move |tc| webhooks::update(tc, user, id, change)).await?;
    Ok(HttpResponse::Ok().json(endpoint))
}

async fn delete(state: web::Data<AppState>, auth: AuthContext, path: web::Path<String>) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let id = webhook_id(&path)?;
    let user = auth.user;
    state.db.tenant(auth.scope(), move |tc| webhooks::delete(tc, user, id)).await?;
    Ok(HttpResponse::NoContent().finish())
}
