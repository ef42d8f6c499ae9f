//! `GET /api/audit-log`: admins read who did what, newest first.

use actix_web::{web, HttpResponse};

use super::pagination::{PageQuery, Paged};
use super::{resource, AppState};
use crate::audit;
use crate::auth::{AuthContext, Role};
use crate::error::AppResult;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/audit-log").get(list));
}

async fn list(state: web::Data<AppState>, auth: AuthContext, q: web::Query<PageQuery>) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let page = q.parse()?;
    let items = state
        .db
        .tenant(auth.scope(), move |tc| Ok::<_, crate::error::AppError>(audit::list(tc, page.after, page.limit)?))
        .await?;
    Ok(HttpResponse::Ok().json(Paged::new(items, page.limit, |e| e.id)))
}
