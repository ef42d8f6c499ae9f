//! Liveness and readiness.

use actix_web::{web, HttpResponse};
use diesel::prelude::*;
use serde_json::json;

use super::AppState;
use crate::db::migrate::{latest_tenant_version, public_pending};
use crate::db::schema::tenants;
use crate::error::{AppError, AppResult};

pub fn routes(cfg: &mut web::ServiceConfig) {
    // HEAD too (every `get` takes it): load balancers' health checks often use it.
    cfg.service(super::resource("/healthz").get(healthz))
        .service(super::resource("/readyz").get(readyz))
        .service(super::resource("/metrics").get(metrics));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Ready when the database answers, `public` has nothing pending, and no
/// tenant schema is behind this binary's tenant migrations. With the
/// database out of reach it answers 503 within about half a second
/// ([`crate::db::Db::probe`]), as `/metrics` answers its gauges as -1.
async fn readyz(state: web::Data<AppState>) -> AppResult<HttpResponse> {
    let latest = latest_tenant_version();
    let (pending, behind) = state
        .db
        .probe(move |conn| -> AppResult<(bool, i64)> {
            let pending = public_pending(conn)?;
            let behind = tenants::table
                .filter(tenants::schema_version.is_null().or(tenants::schema_version.lt(latest)))
                .count()
                .get_result::<i64>(conn)?;
            Ok((pending, behind))
        })
        .await
        .map_err(|e| {
            if e.status().is_server_error() {
                AppError::unavailable("database_unavailable", "the database is not reachable")
            } else {
                e
            }
        })?;
    if pending {
        return Err(AppError::unavailable(
            "migrations_pending",
            "public migrations are pending; run `switchboard migrate`",
        ));
    }
    if behind > 0 {
        return Err(AppError::unavailable(
            "migrations_pending",
            format!("{behind} tenant schema(s) are behind; run `switchboard migrate`"),
        ));
    }
    Ok(HttpResponse::Ok().json(json!({"status": "ready", "database": "ok", "tenant_schema_version": latest})))
}

async fn metrics(state: web::Data<AppState>) -> AppResult<HttpResponse> {
    let (webhooks, sends) = state
        .db
        .probe(|conn| -> AppResult<(i64, i64)> {
            use crate::db::schema::{send_queue, webhook_events};
            let w = webhook_events::table.filter(webhook_events::status.eq("pending")).count().get_result(conn)?;
            let s = send_queue::table.filter(send_queue::status.eq("pending")).count().get_result(conn)?;
            Ok((w, s))
        })
        .await
        .unwrap_or((-1, -1));
    Ok(HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(crate::metrics::render(webhooks, sends)))
}
