//! `/api/broadcasts`: one WhatsApp template sent to many customers
//! (`inbox::broadcasts`); admins and owners.

use super::json::Json;
use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::pagination::{decode_cursor, one_of, parse_limit, Paged};
use super::{resource, AppState};
use crate::auth::{AuthContext, Role};
use crate::channels::ChannelId;
use crate::error::{AppError, AppResult};
use crate::inbox::broadcasts::{self, BroadcastId, NewBroadcast, Reschedule, RECIPIENT_STATUSES, STATUSES};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/broadcasts").get(list).post(create))
        .service(resource("/broadcasts/{id}").get(get_one).patch(reschedule))
        .service(resource("/broadcasts/{id}/recipients").get(recipients))
        .service(resource("/broadcasts/{id}/cancel").post(cancel));
}

fn broadcast_id(raw: &str) -> AppResult<BroadcastId> {
    BroadcastId::parse(raw).ok_or_else(|| AppError::not_found("broadcast"))
}

/// `POST /api/broadcasts`: 201, or 200 with the broadcast a retry's
/// `client_id` made.
async fn create(state: web::Data<AppState>, auth: AuthContext, body: Json<NewBroadcast>) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let (view, made) = broadcasts::create(&state, auth.scope(), auth.user, auth.role, body.into_inner()).await?;
    if made {
        state.wake_sender.notify_one();
    }
    Ok(if made { HttpResponse::Created() } else { HttpResponse::Ok() }.json(view))
}

#[derive(Deserialize)]
struct ListQuery {
    channel_id: Option<String>,
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /api/broadcasts?channel_id=&status=&limit=&cursor=`: newest first.
async fn list(state: web::Data<AppState>, auth: AuthContext, q: web::Query<ListQuery>) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let limit = parse_limit(q.limit.as_deref())?;
    let before = q.cursor.as_deref().filter(|c| !c.is_empty()).map(decode_cursor).transpose()?;
    let channel = match q.channel_id.as_deref().filter(|c| !c.is_empty()) {
        Some(raw) => Some(
            ChannelId::parse(raw)
                .ok_or_else(|| AppError::bad_request("invalid_channel_id", "channel_id must be a channel's id"))?,
        ),
        None => None,
    };
    let status = one_of(q.status.as_deref(), &STATUSES)?;
    let items = state
        .db
        .tenant(auth.scope(), move |tc| broadcasts::list(tc, channel, status.as_deref(), before, limit))
        .await?;
    Ok(HttpResponse::Ok().json(Paged::new(items, limit, |b| b.id.0)))
}

async fn get_one(state: web::Data<AppState>, auth: AuthContext, path: web::Path<String>) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let id = broadcast_id(&path)?;
    let (user, role) = (auth.user, auth.role);
    let view = state.db.tenant(auth.scope(), move |tc| broadcasts::get(tc, user, role, id)).await?;
    Ok(HttpResponse::Ok().json(view))
}

#[derive(Deserialize)]
struct RecipientsQuery {
    status: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// `GET /api/broadcasts/{id}/recipients?status=&limit=&cursor=`: by number.
async fn recipients(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    q: web::Query<RecipientsQuery>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let id = broadcast_id(&path)?;
    let limit = parse_limit(q.limit.as_deref())?;
    let after = q.cursor.as_deref().filter(|c| !c.is_empty()).map(decode_cursor).transpose()?;
    let status = one_of(q.status.as_deref(), &RECIPIENT_STATUSES)?;
    let (user, role) = (auth.user, auth.role);
    let items = state
        .db
        .tenant(auth.scope(), move |tc| broadcasts::recipients(tc, user, role, id, status.as_deref(), after, limit))
        .await?;
    // The key is the number's digits (`+` and digits on the wire).
    Ok(HttpResponse::Ok().json(Paged::new(items, limit, |r| r.phone_number[1..].parse().unwrap_or(0))))
}

/// `PATCH /api/broadcasts/{id}` `{send_at}`: a scheduled broadcast moved.
async fn reschedule(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    body: Json<Reschedule>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let id = broadcast_id(&path)?;
    let (user, role, to) = (auth.user, auth.role, body.into_inner());
    let (view, now) = state
        .tenant_with_events(auth.scope(), move |tc, log| {
            broadcasts::reschedule(tc, log, user, role, id, to, chrono::Utc::now())
        })
        .await?;
    if now {
        state.wake_sender.notify_one();
    }
    Ok(HttpResponse::Ok().json(view))
}

/// `POST /api/broadcasts/{id}/cancel`.
async fn cancel(state: web::Data<AppState>, auth: AuthContext, path: web::Path<String>) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let id = broadcast_id(&path)?;
    let (user, role) = (auth.user, auth.role);
    let view =
        state.tenant_with_events(auth.scope(), move |tc, log| broadcasts::cancel(tc, log, user, role, id)).await?;
    Ok(HttpResponse::Ok().json(view))
}
