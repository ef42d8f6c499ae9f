//! WebSocket tickets: a browser gets one with its access token
//! (`POST /api/ws-ticket`) and spends it on `GET /ws?ticket=…`. Single use,
//! valid 30 seconds, stored hashed.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{Duration, Utc};
use diesel::prelude::*;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::auth::{AuthContext, Role};
use crate::db::schema::ws_tickets as wt;
use crate::error::{AppError, AppResult};
use crate::ids::{TenantId, UserId};

pub const TICKET_TTL_SECS: i64 = 30;

fn hash(t: &str) -> Vec<u8> {
    Sha256::digest(t.as_bytes()).to_vec()
}

pub fn issue(conn: &mut PgConnection, auth: &AuthContext) -> AppResult<String> {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let ticket = URL_SAFE_NO_PAD.encode(bytes);
    diesel::delete(wt::table.filter(wt::expires_at.lt(Utc::now() - Duration::minutes(5)))).execute(conn)?;
    diesel::insert_into(wt::table)
        .values((
            wt::ticket_hash.eq(hash(&ticket)),
            wt::tenant_id.eq(auth.tenant.0),
            wt::user_id.eq(auth.user.0),
            wt::role.eq(auth.role.as_str()),
            wt::family.eq(&auth.family),
            wt::expires_at.eq(Utc::now() + Duration::seconds(TICKET_TTL_SECS)),
        ))
        .execute(conn)?;
    Ok(ticket)
}

/// Spends a ticket: who it was issued to. Missing, spent or expired: 401.
pub fn redeem(conn: &mut PgConnection, ticket: &str) -> AppResult<AuthContext> {
    let row: Option<(i64, i64, String, String)> = diesel::update(
        wt::table
            .filter(wt::ticket_hash.eq(hash(ticket)))
            .filter(wt::used_at.is_null())
            .filter(wt::expires_at.gt(Utc::now())),
    )
    .set(wt::used_at.eq(Utc::now()))
    .returning((wt::tenant_id, wt::user_id, wt::role, wt::family))
    .get_result(conn)
    .optional()?;
    let (tenant, user, role, family) =
        row.ok_or_else(|| AppError::unauthorized("invalid_ticket", "the ticket is unknown, spent or expired"))?;
    let role = Role::parse(&role).ok_or_else(|| AppError::unauthorized("invalid_ticket", "the ticket is invalid"))?;
    let api_token = crate::auth::api_tokens::of_family(&family);
    Ok(AuthContext {
        user: UserId(user),
        tenant: TenantId(tenant),
        tenant_slug: String::new(),
        role,
        family,
        api_token,
    })
}
