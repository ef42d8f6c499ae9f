//! The watchdog: Meta silently unsubscribes a page or WhatsApp business
//! account after an hour of failed deliveries, and tokens die without
//! notice. Every `SWITCHBOARD_RECONCILE_SECS` (default 900; 0 turns it off)
//! the server checks each connected channel at Meta, renews lost
//! subscriptions and marks channels with rejected tokens `reauth_required`.

use actix_web::web;
use diesel::prelude::*;
use std::time::Duration;

use super::ChannelId;
use crate::app::AppState;
use crate::db::schema::channel_routes;
use crate::db::TenantScope;
use crate::ids::TenantId;

pub async fn run(state: web::Data<AppState>) {
    let secs = std::env::var("SWITCHBOARD_RECONCILE_SECS").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(900);
    if secs == 0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs(secs));
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = once(&state).await {
            tracing::warn!(error = ?e, "channel reconciliation failed");
        }
    }
}

/// One pass over every connected channel of every tenant.
pub async fn once(state: &AppState) -> crate::error::AppResult<usize> {
    let routes: Vec<(i64, i64)> = state
        .db
        .public(|conn| {
            Ok::<_, crate::error::AppError>(
                channel_routes::table.select((channel_routes::tenant_id, channel_routes::channel_id)).load(conn)?,
            )
        })
        .await?;
    for (tenant, channel) in &routes {
        let scope = TenantScope::system(TenantId(*tenant));
        if let Err(e) = super::connect::check_health(state, scope, ChannelId(*channel)).await {
            tracing::debug!(tenant, channel, error = ?e, "health check skipped");
        }
    }
    Ok(routes.len())
}
