//! `GET /api/reports/overview`: admins read a period's figures
//! (`inbox::reports`), of all or of one channel, team or label; its agents' and
//! channels' tables also as CSV.

use actix_web::{web, HttpResponse};
use serde::Deserialize;

use super::{resource, AppState};
use crate::auth::{AuthContext, Role};
use crate::error::{AppError, AppResult};
use crate::inbox::reports::{self, Period};
use crate::inbox::teams::{self, TeamId};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/reports/overview").get(overview))
        .service(resource("/reports/agents.csv").get(agents_csv))
        .service(resource("/reports/channels.csv").get(channels_csv));
}

/// The overview's agents, as CSV.
async fn agents_csv(
    state: web::Data<AppState>,
    auth: AuthContext,
    q: web::Query<OverviewQuery>,
) -> AppResult<HttpResponse> {
    let figures = figures(&state, &auth, q.into_inner()).await?;
    Ok(csv("agents", figures.agents_csv()))
}

/// The overview's channels, as CSV.
async fn channels_csv(
    state: web::Data<AppState>,
    auth: AuthContext,
    q: web::Query<OverviewQuery>,
) -> AppResult<HttpResponse> {
    let figures = figures(&state, &auth, q.into_inner()).await?;
    Ok(csv("channels", figures.channels_csv()))
}

fn csv(table: &str, body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header(("Content-Disposition", format!("attachment; filename=\"{table}.csv\"")))
        .body(body)
}

#[derive(Deserialize)]
struct OverviewQuery {
    from: Option<String>,
    to: Option<String>,
    channel_id: Option<String>,
    team_id: Option<String>,
    label: Option<String>,
    contact_attribute: Option<String>,
}

async fn overview(
    state: web::Data<AppState>,
    auth: AuthContext,
    q: web::Query<OverviewQuery>,
) -> AppResult<HttpResponse> {
    Ok(HttpResponse::Ok().json(figures(&state, &auth, q.into_inner()).await?))
}

/// The period's figures, for an admin. Every value that will not do is in
/// the query: 400 ([`AppError::in_query`]).
async fn figures(state: &AppState, auth: &AuthContext, q: OverviewQuery) -> AppResult<reports::Overview> {
    auth.require(Role::Admin)?;
    read_figures(state, auth, q).await.map_err(AppError::in_query)
}

async fn read_figures(state: &AppState, auth: &AuthContext, q: OverviewQuery) -> AppResult<reports::Overview> {
    let channel = super::channel_param(q.channel_id.as_deref())?;
    let team = match q.team_id.as_deref() {
        Some(t) => Some(TeamId::parse(t).ok_or_else(|| AppError::invalid("invalid_team", "team_id is a team's id"))?),
        None => None,
    };
    // As stored, so `VIP ` finds `vip` (invalid_label otherwise).
    let label = q.label.as_deref().map(crate::inbox::conversations::normalize_label).transpose()?;
    let mut period =
        Period { team, label, ..Period::parse(q.from.as_deref(), q.to.as_deref(), channel, chrono::Utc::now())? };
    let attribute = q.contact_attribute;
    state
        .db
        .tenant(auth.scope(), move |tc| {
            if let Some(team) = team {
                teams::existing(tc, team)?;
            }
            // Read as its definition reads it (invalid_attribute).
            period.contact_attribute = attribute.map(|raw| crate::inbox::attributes::wanted(tc, &raw)).transpose()?;
            reports::overview(tc, period)
        })
        .await
}
