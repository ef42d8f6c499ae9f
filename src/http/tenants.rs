//! `POST /api/tenants`: sign-up. Open to anyone when `SWITCHBOARD_SIGNUP=open`;
//! otherwise it needs `Authorization: Bearer <SWITCHBOARD_OPERATOR_TOKEN>`.
//! `GET`/`PATCH /api/tenant`: the caller's tenant and its policy (an
//! extension: whether it requires two-step sign-in, `auth::mfa`).

use super::json::Json;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::AppState;
use crate::auth::extract::bearer;
use crate::auth::session::TenantView;
use crate::auth::users::Email;
use crate::auth::{mfa, AuthContext, Role};
use crate::config::Signup;
use crate::error::{AppError, AppResult};
use crate::tenancy::{self, NewTenant, TenantSlug};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/tenants").post(create))
        .service(super::resource("/tenant").get(get_tenant).patch(patch_tenant));
}

/// `GET /api/tenant`: the caller's tenant.
async fn get_tenant(state: web::Data<AppState>, auth: AuthContext) -> AppResult<HttpResponse> {
    let id = auth.tenant;
    let tenant = state
        .db
        .tenant(auth.scope(), move |tc| tenancy::find(tc.pg(), id)?.ok_or_else(|| AppError::not_found("tenant")))
        .await?;
    Ok(HttpResponse::Ok().json(TenantView::from(&tenant)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantChange {
    require_mfa: bool,
}

/// `PATCH /api/tenant` `{require_mfa}` (owners): whether members must sign
/// in in two steps.
async fn patch_tenant(
    state: web::Data<AppState>,
    auth: AuthContext,
    body: Json<TenantChange>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Owner)?;
    let (user, required) = (auth.user, body.into_inner().require_mfa);
    let tenant = state.db.tenant(auth.scope(), move |tc| mfa::set_required(tc, user, required)).await?;
    Ok(HttpResponse::Ok().json(TenantView::from(&tenant)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    slug: String,
    name: String,
    owner_email: String,
    owner_password: String,
    #[serde(default)]
    owner_name: Option<String>,
}

/// Whether the request carries the operator token.
pub fn is_operator(state: &AppState, req: &HttpRequest) -> bool {
    match (&state.config.operator_token, bearer(req)) {
        (Some(expected), Some(given)) => bool::from(expected.expose().as_bytes().ct_eq(given.as_bytes())),
        _ => false,
    }
}

async fn create(state: web::Data<AppState>, req: HttpRequest, body: Json<CreateBody>) -> AppResult<HttpResponse> {
    if state.config.signup == Signup::Closed && !is_operator(&state, &req) {
        return Err(if bearer(&req).is_some() {
            AppError::unauthorized("invalid_operator_token", "the operator token is wrong")
        } else {
            AppError::forbidden("signup_closed", "sign-up is closed; an operator token is required")
        });
    }
    let body = body.into_inner();
    let new = NewTenant {
        slug: TenantSlug::parse(&body.slug)?,
        name: body.name,
        owner_email: Email::parse(&body.owner_email)?,
        owner_name: body.owner_name.unwrap_or_default(),
        owner_password: body.owner_password,
    };
    let (tenant, owner) = state.db.public(move |conn| tenancy::create_tenant(conn, new)).await?;
    tracing::info!(tenant = %tenant.slug, "tenant created");
    state.spares_wanted.notify_one();
    Ok(HttpResponse::Created().json(json!({
        "tenant": TenantView::from(&tenant),
        "owner": owner.public(),
        "role": "owner",
    })))
}
