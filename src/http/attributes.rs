//! `/api/contact-attributes`: the attributes a team keeps for its contacts
//! (`inbox::attributes`); their values go through `PATCH /api/contacts/{id}`.

use super::json::Json;
use actix_web::{web, HttpResponse};

use super::pagination::{PageQuery, Paged};
use super::AppState;
use crate::auth::{AuthContext, Role};
use crate::error::AppResult;
use crate::inbox::attributes::{self, DefinitionChange, NewDefinition};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/contact-attributes").get(list).post(create))
        .service(super::resource("/contact-attributes/{key}").patch(update).delete(delete));
}

/// `GET /api/contact-attributes` (every member): all of them, oldest first.
async fn list(state: web::Data<AppState>, auth: AuthContext, page: web::Query<PageQuery>) -> AppResult<HttpResponse> {
    let page = page.parse()?;
    let items = state.db.tenant(auth.scope(), attributes::list).await?;
    Ok(HttpResponse::Ok().json(Paged::whole(items, &page)))
}

/// `POST /api/contact-attributes` (admins): 201, or 200 with the one a
/// repeated create made.
async fn create(state: web::Data<AppState>, auth: AuthContext, body: Json<NewDefinition>) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let new = body.into_inner();
    let (made, new) =
        state.tenant_with_events(auth.scope(), move |tc, log| attributes::create(tc, log, auth.user, new)).await?;
    Ok(if new { HttpResponse::Created() } else { HttpResponse::Ok() }.json(made))
}

/// `PATCH /api/contact-attributes/{key}` (admins) `{name?, options?}`.
async fn update(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
    body: Json<DefinitionChange>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let (key, change) = (path.into_inner(), body.into_inner());
    let changed = state
        .tenant_with_events(auth.scope(), move |tc, log| attributes::update(tc, log, auth.user, &key, change))
        .await?;
    Ok(HttpResponse::Ok().json(changed))
}

/// `DELETE /api/contact-attributes/{key}` (admins): 204; its values go
/// from every contact.
async fn delete(state: web::Data<AppState>, auth: AuthContext, path: web::Path<String>) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let key = path.into_inner();
    state.tenant_with_events(auth.scope(), move |tc, log| attributes::delete(tc, log, auth.user, &key)).await?;
    Ok(HttpResponse::NoContent().finish())
}
