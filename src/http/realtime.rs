//! `POST /api/ws-ticket` and `GET /ws`: authentication happens before the
//! upgrade; a bad credential, a suspended tenant or a foreign `Origin` gets
//! a plain 401/403 and no socket.

use actix::Addr;
use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::{resource, AppState};
use crate::auth::extract::{authenticate_bearer, bearer};
use crate::auth::AuthContext;
use crate::db::schema::tenants;
use crate::error::{AppError, AppResult, ErrorKind};
use crate::inbox::events;
use crate::realtime::hub::SocketsOf;
use crate::realtime::session::{visible_channels, SessionInit, WsSession};
use crate::realtime::{tickets, Hub};

pub fn api_routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/ws-ticket").post(ticket));
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/ws").get_only(connect));
}

async fn ticket(state: web::Data<AppState>, auth: AuthContext) -> AppResult<HttpResponse> {
    let t = state.db.tenant(auth.scope(), move |tc| tickets::issue(tc.pg(), &auth)).await?;
    Ok(HttpResponse::Ok().json(json!({"ticket": t, "expires_in": tickets::TICKET_TTL_SECS})))
}

#[derive(Deserialize)]
struct WsQuery {
    ticket: Option<String>,
    since: Option<String>,
}

/// Browsers send `Origin`; it must be this server's public origin or one of
/// `SWITCHBOARD_ALLOWED_ORIGINS`. Clients that send none are not browsers.
/// Every one sent is checked, not the first: a browser sends one, so a
/// second is a forger's or a proxy's doing and must not slip past.
fn origin_allowed(state: &AppState, req: &HttpRequest) -> bool {
    req.headers().get_all(header::ORIGIN).all(|origin| origin.to_str().is_ok_and(|o| state.config.origin_allowed(o)))
}

async fn connect(
    state: web::Data<AppState>,
    hub: web::Data<Addr<Hub>>,
    req: HttpRequest,
    stream: web::Payload,
    q: web::Query<WsQuery>,
) -> AppResult<HttpResponse> {
    if !origin_allowed(&state, &req) {
        return Err(AppError::forbidden("origin_not_allowed", "this origin may not open a socket here"));
    }
    let since = match q.since.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            s.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| AppError::bad_request("invalid_since", "since must be a sequence number"))?,
        ),
    };
    let auth = match (&q.ticket, bearer(&req)) {
        (Some(t), _) => {
            let t = t.clone();
            state.db.public(move |conn| tickets::redeem(conn, &t)).await?
        }
        (None, Some(token)) => authenticate_bearer(&state, token).await?,
        (None, None) => {
            return Err(AppError::unauthorized("missing_credential", "send ?ticket= or Authorization: Bearer"))
        }
    };
    if let Some(cap) = state.config.ws_max_per_member {
        let open = hub.send(SocketsOf { tenant: auth.tenant.0, user: auth.user.0 }).await.unwrap_or(0);
        if open >= cap {
            return Err(AppError::new(
                ErrorKind::RateLimited,
                "too_many_sockets",
                format!("this member has {open} sockets open here, the most allowed; close one"),
            )
            .retry_after(5));
        }
    }
    // The guard checks the tenant is active and the membership unchanged.
    let (user, role) = (auth.user.0, auth.role);
    let tenant_id = auth.tenant.0;
    let (last_seq, channels, name, slug) = state
        .db
        .tenant(auth.scope(), move |tc| {
            use diesel::prelude::*;
            let last = events::last_seq(tc)?;
            let channels = visible_channels(tc, user, role)?;
            let name = crate::auth::users::display_name(tc.pg(), crate::ids::UserId(user))?;
            let slug: String = tenants::table.find(tenant_id).select(tenants::slug).first(tc.pg())?;
            Ok::<_, AppError>((last, channels, name, slug))
        })
        .await?;
    let session = WsSession::new(
        hub.get_ref().clone(),
        state.clone(),
        SessionInit {
            tenant: auth.tenant.0,
            tenant_slug: slug,
            user,
            role,
            name,
            family: auth.family.clone(),
            channels,
            last_seq,
            since,
        },
    );
    session
        .start(&req, stream)
        .map_err(|e| AppError::bad_request("not_a_websocket", format!("this is not a WebSocket upgrade ({e})")))
}
