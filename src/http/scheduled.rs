//! `/api/conversations/{id}/scheduled-messages` and
//! `/api/scheduled-messages/{id}`: replies written now, sent later
//! (`inbox::scheduled`); any member who may answer the conversation (an
//! agent or above: a viewer reads them and writes none).

use super::json::Json;
use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::pagination::{decode_cursor, one_of, parse_limit, Paged};
use super::{resource, AppState};
use crate::auth::{AuthContext, Role};
use crate::error::{AppError, AppResult};
use crate::inbox::scheduled::{self, NewScheduled, ScheduledChange, ScheduledMessageId, STATUSES};
use crate::inbox::ConversationId;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/conversations/{id}/scheduled-messages").get(list).post(create))
        .service(resource("/scheduled-messages/{id}").get(get_one).patch(change))
        .service(resource("/scheduled-messages/{id}/cancel").post(cancel));
}

fn conversation_id(raw: &str) -> AppResult<ConversationId> {
    ConversationId::parse(raw).ok_or_else(|| AppError::not_found("conversation"))
}

fn scheduled_id(raw: &str) -> AppResult<ScheduledMessageId> {
    ScheduledMessageId::parse(raw).ok_or_else(|| AppError::not_found("scheduled message"))
}

/// `POST /api/conversations/{id}/scheduled-messages`: 201, or 200 with
/// what a retry's `client_id` wrote.
async fn create(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    body: Json<NewScheduled>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Agent)?;
    let id = conversation_id(&path)?;
    let (user, role, new) = (auth.user, auth.role, body.into_inner());
    let (view, made, due) = state
        .tenant_with_events(auth.scope(), move |tc, log| {
            scheduled::create(tc, log, user, role, id, new, chrono::Utc::now())
        })
        .await?;
    if due {
        state.wake_sender.notify_one();
    }
    Ok(if made { HttpResponse::Created() } else { HttpResponse::Ok() }.json(view))
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /api/conversations/{id}/scheduled-messages?status=&limit=&cursor=`:
/// newest written first.
async fn list(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    q: web::Query<ListQuery>,
) -> AppResult<HttpResponse> {
    let id = conversation_id(&path)?;
    let limit = parse_limit(q.limit.as_deref())?;
    let before = q.cursor.as_deref().filter(|c| !c.is_empty()).map(decode_cursor).transpose()?;
    let status = one_of(q.status.as_deref(), &STATUSES)?;
    let (user, role) = (auth.user, auth.role);
    let items = state
        .db
        .tenant(auth.scope(), move |tc| scheduled::list(tc, user, role, id, status.as_deref(), before, limit))
        .await?;
    Ok(HttpResponse::Ok().json(Paged::new(items, limit, |s| s.id.0)))
}

async fn get_one(state: web::Data<AppState>, auth: AuthContext, path: web::Path<String>) -> AppResult<HttpResponse> {
    let id = scheduled_id(&path)?;
    let (user, role) = (auth.user, auth.role);
    let view = state.db.tenant(auth.scope(), move |tc| scheduled::get(tc, user, role, id)).await?;
    Ok(HttpResponse::Ok().json(view))
}

/// `PATCH /api/scheduled-messages/{id}` `{text?, send_at?, cancel_if_replied?}`.
async fn change(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    body: Json<ScheduledChange>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Agent)?;
    let id = scheduled_id(&path)?;
    let (user, role, to) = (auth.user, auth.role, body.into_inner());
    let (view, due) = state
        .tenant_with_events(auth.scope(), move |tc, log| {
            scheduled::change(tc, log, user, role, id, to, chrono::Utc::now())
        })
        .await?;
    if due {
        state.wake_sender.notify_one();
    }
    Ok(HttpResponse::Ok().json(view))
}

/// `POST /api/scheduled-messages/{id}/cancel`.
async fn cancel(state: web::Data<AppState>, auth: AuthContext, path: web::Path<String>) -> AppResult<HttpResponse> {
    auth.require(Role::Agent)?;
    let id = scheduled_id(&path)?;
    let (user, role) = (auth.user, auth.role);
    let view =
        state.tenant_with_events(auth.scope(), move |tc, log| scheduled::cancel(tc, log, user, role, id)).await?;
    Ok(HttpResponse::Ok().json(view))
}
