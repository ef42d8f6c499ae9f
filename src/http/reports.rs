//! `GET /api/reports/overview`: admins read a period's figures
//! (`inbox::reports`).

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::{resource, AppState};
use crate::auth::{AuthContext, Role};
use crate::channels::ChannelId;
use crate::error::{AppError, AppResult};
use crate::inbox::reports::{self, Period};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/reports/overview").route(web::get().to(overview)));
}

#[derive(Deserialize)]
struct OverviewQuery {
    from: Option<String>,
    to: Option<String>,
    channel_id: Option<String>,
}

async fn overview(
    state: web::Data<AppState>,
    auth: AuthContext,
    q: web::Query<OverviewQuery>,
) -> AppResult<HttpResponse> {
    auth.require(Role::Admin)?;
    let q = q.into_inner();
    let channel = match q.channel_id.as_deref() {
        Some(c) => Some(
            c.parse::<i64>()
                .ok()
                .filter(|id| *id > 0)
                .map(ChannelId)
                .ok_or_else(|| AppError::invalid("invalid_channel_id", "channel_id is a channel's id"))?,
        ),
        None => None,
    };
    let period = Period::parse(q.from.as_deref(), q.to.as_deref(), channel, chrono::Utc::now())?;
    let figures = state.db.tenant(auth.scope(), move |tc| reports::overview(tc, period)).await?;
    Ok(HttpResponse::Ok().json(figures))
}
