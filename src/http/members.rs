//! `/api/members` and `/api/invitations`: admins manage who works in the
//! tenant.

use super::json::Json;
use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::pagination::{PageQuery, Paged};
use super::AppState;
use crate::auth::invitations;
use crate::auth::members::{self, NewMember};
use crate::auth::password::PasswordHash;
use crate::auth::users::Email;
use crate::auth::{AuthContext, Role};
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/members").get(list).post(add))
        .service(super::resource("/members/{user_id}").patch(change_role).delete(remove))
        .service(super::resource("/invitations").get(invitations).post(invite))
        .service(super::resource("/invitations/{id}").delete(revoke_invitation));
}

fn parse_role(raw: &str) -> AppResult<Role> {
    Role::parse(raw).ok_or_else(|| AppError::invalid("invalid_role", "role must be owner, admin, agent or viewer"))
}

fn parse_user_id(raw: &str) -> AppResult<UserId> {
    UserId::parse(raw).ok_or_else(|| AppError::not_found("member"))
}

async fn list(state: web::Data<AppState>, auth: AuthContext, q: web::Query<PageQuery>) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let page = q.parse()?;
    let items = state.db.tenant(auth.scope(), move |tc| members::list(tc, page.after, page.limit)).await?;
    Ok(HttpResponse::Ok().json(Paged::new(items, page.limit, |m| m.user_id.0)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    email: String,
    role: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

async fn add(state: web::Data<AppState>, auth: AuthContext, body: Json<AddBody>) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let body = body.into_inner();
    let email = Email::parse(&body.email)?;
    let role = parse_role(&body.role)?;
    let new = NewMember {
        email,
        role,
        name: body.name.unwrap_or_default(),
        // Hash (slow, CPU-bound) on the blocking pool, before the transaction.
        password_hash: match body.password {
            Some(p) => Some(web::block(move || PasswordHash::create(&p)).await??),
            None => None,
        },
    };
    let member = state.db.tenant(auth.scope(), move |tc| members::add(tc, Some(auth.user), auth.role, new)).await?;
    Ok(HttpResponse::Created().json(member))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    role: String,
}

async fn change_role(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    body: Json<RoleBody>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let user = parse_user_id(&path)?;
    let role = parse_role(&body.role)?;
    // Whom what they may no longer answer can go to (`release`).
    let online = state.online.of(auth.tenant);
    let member = state
        .tenant_with_events(auth.scope(), move |tc, log| {
            members::change_role(tc, log, Some(auth.user), auth.role, user, role, &online)
        })
        .await?;
    Ok(HttpResponse::Ok().json(member))
}

async fn remove(state: web::Data<AppState>, auth: AuthContext, path: web::Path<String>) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let user = parse_user_id(&path)?;
    let online = state.online.of(auth.tenant);
    state
        .tenant_with_events(auth.scope(), move |tc, log| members::remove(tc, log, auth.user, auth.role, user, &online))
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteBody {
    email: String,
    role: String,
}

/// `POST /api/invitations` `{email, role}`: 201 with the link to hand over
/// (`auth::invitations`).
async fn invite(state: web::Data<AppState>, auth: AuthContext, body: Json<InviteBody>) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let email = Email::parse(&body.email)?;
    let role = parse_role(&body.role)?;
    let public_url = state.config.public_url.clone();
    let mail = state.config.mail.is_some();
    let issued = state
        .db
        .tenant(auth.scope(), move |tc| {
            invitations::invite(tc, auth.user, auth.role, &email, role, &public_url, mail, chrono::Utc::now())
        })
        .await?;
    if issued.invitation.mailed {
        state.wake_mail.notify_one();
    }
    Ok(HttpResponse::Created().json(issued))
}

/// `GET /api/invitations`: the pending ones, expired included.
async fn invitations(
    state: web::Data<AppState>,
    auth: AuthContext,
    q: web::Query<PageQuery>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let page = q.parse()?;
    let items = state
        .db
        .tenant(auth.scope(), move |tc| invitations::list(tc, page.after, page.limit, chrono::Utc::now()))
        .await?;
    Ok(HttpResponse::Ok().json(Paged::new(items, page.limit, |i| i.id)))
}

/// `DELETE /api/invitations/{id}`: 204; the link stops working.
async fn revoke_invitation(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let id = path.parse::<i64>().map_err(|_| AppError::not_found("invitation"))?;
    state.db.tenant(auth.scope(), move |tc| invitations::revoke(tc, auth.user, id)).await?;
    Ok(HttpResponse::NoContent().finish())
}
