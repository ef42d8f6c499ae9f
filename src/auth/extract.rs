//! The request extractor: `AuthContext` in a handler's arguments means "a
//! valid access token (or a member's API token, `auth::api_tokens`) was
//! presented". The tenant comes only from the token.

use actix_web::body::MessageBody;
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use futures_util::future::{ready, FutureExt, LocalBoxFuture};

use super::{JwtKeys, Role};
use crate::db::TenantScope;
use crate::error::{AppError, AppResult};
use crate::ids::{TenantId, UserId};

#[derive(Clone, Debug)]
pub struct AuthContext {
    pub user: UserId,
    pub tenant: TenantId,
    pub tenant_slug: String,
    pub role: Role,
    pub family: String,
    /// The member's API token the request came with, if it did.
    pub api_token: Option<i64>,
}

impl AuthContext {
    /// One-line role guard: `auth.require(Role::Admin)?`.
    pub fn require(&self, min: Role) -> AppResult<()> {
        if self.role.at_least(min) {
            Ok(())
        } else {
            Err(AppError::forbidden("forbidden", format!("this needs the {min} role or higher")))
        }
    }

    /// The tenant transaction scope of this request; the guard in the
    /// database re-checks the membership and role.
    pub fn scope(&self) -> TenantScope {
        TenantScope::member(self.tenant, self.user, self.role.as_str(), &self.family)
    }
}

/// The bearer token of a request, if it has one.
pub fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(actix_web::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

pub fn authenticate(keys: &JwtKeys, token: &str) -> AppResult<AuthContext> {
    let claims = keys.verify(token)?;
    let bad = || AppError::unauthorized("invalid_token", "the access token is invalid");
    Ok(AuthContext {
        user: claims.user_id().ok_or_else(bad)?,
        tenant: claims.tenant_id().ok_or_else(bad)?,
        tenant_slug: claims.ten.clone(),
        role: claims.role,
        family: claims.fam.clone(),
        api_token: None,
    })
}

/// Who a bearer credential is: a member's API token (looked up) or an
/// access token (verified here).
pub async fn authenticate_bearer(state: &crate::app::AppState, token: &str) -> AppResult<AuthContext> {
    if token.starts_with(super::api_tokens::PREFIX) {
        let token = token.to_string();
        return state.db.public(move |conn| super::api_tokens::authenticate(conn, &token)).await;
    }
    authenticate(&state.jwt, token)
}

/// An API token's lookup, done before the handler ([`api_token_first`]).
struct LookedUp(AppResult<AuthContext>);

/// Middleware of the API's scope: looks an API token up before the
/// handler's extractors run. They are polled together, so while the
/// lookup waited on the database a body refused at once (422) or a role
/// refused answered first; a bad credential must be told 401 first, as an
/// access token (checked without the database) is. Nothing is refused
/// here: a route that needs no credential ignores what was found.
pub async fn api_token_first(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let token = bearer(req.request()).filter(|t| t.starts_with(super::api_tokens::PREFIX)).map(str::to_string);
    if let (Some(token), Some(state)) = (token, req.app_data::<web::Data<crate::app::AppState>>().cloned()) {
        let found = authenticate_bearer(&state, &token).await;
        req.extensions_mut().insert(LookedUp(found));
    }
    next.call(req).await
}

fn recorded(ctx: AuthContext) -> AuthContext {
    tracing::Span::current().record("tenant", ctx.tenant_slug.as_str());
    tracing::Span::current().record("user_id", ctx.user.0);
    ctx
}

impl FromRequest for AuthContext {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(token) = bearer(req) else {
            let missing = AppError::unauthorized("missing_token", "send Authorization: Bearer <access token>");
            return ready(Err(missing)).boxed_local();
        };
        // An API token needs the database; an access token does not.
        if token.starts_with(super::api_tokens::PREFIX) {
            if let Some(LookedUp(found)) = req.extensions_mut().remove::<LookedUp>() {
                return ready(found.map(recorded)).boxed_local();
            }
            let Some(state) = req.app_data::<web::Data<crate::app::AppState>>().cloned() else {
                return ready(Err(AppError::internal(anyhow::anyhow!("AppState not registered")))).boxed_local();
            };
            let token = token.to_string();
            return async move { authenticate_bearer(&state, &token).await.map(recorded) }.boxed_local();
        }
        let result = req
            .app_data::<web::Data<JwtKeys>>()
            .ok_or_else(|| AppError::internal(anyhow::anyhow!("JwtKeys not registered")))
            .and_then(|keys| authenticate(keys, token))
            .map(recorded);
        ready(result).boxed_local()
    }
}
