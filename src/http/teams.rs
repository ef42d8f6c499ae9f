//! `/api/teams`: groups of members conversations are handed to
//! (`inbox::teams`).

use super::json::Json;
use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::pagination::{PageQuery, Paged};
use super::AppState;
use crate::auth::{AuthContext, Role};
use crate::error::{AppError, AppResult};
use crate::ids::UserId;
use crate::inbox::teams::{self, NewTeam, TeamChange, TeamId};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/teams").get(list).post(create))
        .service(super::resource("/teams/{id}").get(get_one).patch(update).delete(delete))
        .service(super::resource("/teams/{id}/members").put(set_members));
}

fn team_id(raw: &str) -> AppResult<TeamId> {
    TeamId::parse(raw).ok_or_else(|| AppError::not_found("team"))
}

/// `GET /api/teams` (every member): all of them (at most 100), by name.
async fn list(state: web::Data<AppState>, auth: AuthContext, page: web::Query<PageQuery>) -> AppResult<HttpResponse> {
    let page = page.parse()?;
    let items = state.db.tenant(auth.scope(), teams::list).await?;
    Ok(HttpResponse::Ok().json(Paged::whole(items, &page)))
}

async fn get_one(state: web::Data<AppState>, auth: AuthContext, path: web::Path<String>) -> AppResult<HttpResponse> {
    let id = team_id(&path)?;
    let team = state.db.tenant(auth.scope(), move |tc| teams::get(tc, id)).await?;
    Ok(HttpResponse::Ok().json(team))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    member_ids: Vec<UserId>,
    #[serde(default)]
    auto_assign: bool,
}

/// `POST /api/teams` (admins): 201, or 200 with the team a repeated create
/// made.
async fn create(state: web::Data<AppState>, auth: AuthContext, body: Json<CreateBody>) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let body = body.into_inner();
    let new = NewTeam {
        name: body.name,
        description: body.description.unwrap_or_default(),
        member_ids: body.member_ids,
        auto_assign: body.auto_assign,
    };
    let (team, made) =
        state.tenant_with_events(auth.scope(), move |tc, log| teams::create(tc, log, auth.user, &new)).await?;
    Ok(if made { HttpResponse::Created() } else { HttpResponse::Ok() }.json(team))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    auto_assign: Option<bool>,
}

/// `PATCH /api/teams/{id}` (admins) `{name?, description?, auto_assign?}`.
async fn update(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    body: Json<UpdateBody>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let id = team_id(&path)?;
    let body = body.into_inner();
    let online = state.online.of(auth.tenant);
    let team = state
        .tenant_with_events(auth.scope(), move |tc, log| {
            let change = TeamChange {
                name: body.name.as_deref(),
                description: body.description.as_deref(),
                auto_assign: body.auto_assign,
            };
            teams::update(tc, log, auth.user, id, change, &online)
        })
        .await?;
    state.online.room_changed(auth.tenant);
    Ok(HttpResponse::Ok().json(team))
}

/// `PUT /api/teams/{id}/members` (admins) `{user_ids}`: the whole set.
async fn set_members(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    body: Json<super::MembersBody>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let id = team_id(&path)?;
    let users = body.into_inner().user_ids;
    let team = state
        .tenant_with_events(auth.scope(), move |tc, log| teams::set_members(tc, log, auth.user, id, &users))
        .await?;
    state.online.room_changed(auth.tenant);
    Ok(HttpResponse::Ok().json(team))
}

/// `DELETE /api/teams/{id}` (admins): 204; its conversations have no team.
async fn delete(state: web::Data<AppState>, auth: AuthContext, path: web::Path<String>) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let id = team_id(&path)?;
    state.tenant_with_events(auth.scope(), move |tc, log| teams::delete(tc, log, auth.user, id)).await?;
    Ok(HttpResponse::NoContent().finish())
}
