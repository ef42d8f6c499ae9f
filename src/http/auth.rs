//! `/api/auth/*` and `/api/me`.

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::AppState;
use crate::auth::{session, AuthContext, JwtKeys};
use crate::error::AppResult;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/auth/login").route(web::post().to(login)))
        .service(super::resource("/auth/refresh").route(web::post().to(refresh)))
        .service(super::resource("/auth/logout").route(web::post().to(logout)))
        .service(super::resource("/me").route(web::get().to(me)));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    email: String,
    password: String,
    tenant: String,
}

async fn login(
    state: web::Data<AppState>,
    keys: web::Data<JwtKeys>,
    body: web::Json<LoginBody>,
) -> AppResult<HttpResponse> {
    let body = body.into_inner();
    let keys = keys.into_inner();
    let pair =
        state.db.public(move |conn| session::login(conn, &keys, &body.email, &body.password, &body.tenant)).await?;
    tracing::info!(tenant = %pair.tenant.slug, user_id = %pair.user.id, "login");
    Ok(HttpResponse::Ok().json(pair))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

async fn refresh(
    state: web::Data<AppState>,
    keys: web::Data<JwtKeys>,
    body: web::Json<RefreshBody>,
) -> AppResult<HttpResponse> {
    let token = body.into_inner().refresh_token;
    let keys = keys.into_inner();
    let pair = state.db.public(move |conn| session::refresh(conn, &keys, &token)).await?;
    Ok(HttpResponse::Ok().json(pair))
}

async fn logout(state: web::Data<AppState>, body: web::Json<RefreshBody>) -> AppResult<HttpResponse> {
    let token = body.into_inner().refresh_token;
    state.db.public(move |conn| session::logout(conn, &token)).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn me(state: web::Data<AppState>, auth: AuthContext) -> AppResult<HttpResponse> {
    let me = state.db.tenant(auth.scope(), move |tc| session::me(tc.pg(), auth.user, auth.tenant, auth.role)).await?;
    Ok(HttpResponse::Ok().json(me))
}
