//! `POST /api/tenants`: sign-up. Open to anyone when `SWITCHBOARD_SIGNUP=open`;
//! otherwise it needs `Authorization: Bearer <SWITCHBOARD_OPERATOR_TOKEN>`.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;

use super::AppState;
use crate::auth::extract::bearer;
use crate::auth::session::TenantView;
use crate::auth::users::Email;
use crate::config::Signup;
use crate::error::{AppError, AppResult};
use crate::tenancy::{self, NewTenant, TenantSlug};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/tenants").route(web::post().to(create)));
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

async fn create(state: web::Data<AppState>, req: HttpRequest, body: web::Json<CreateBody>) -> AppResult<HttpResponse> {
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
