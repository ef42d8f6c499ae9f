//! Facebook Login for connecting pages: the signed, short-lived, single-use
//! `state`, and the pending selection of pages an OAuth round trip found.
//!
//! `state` = `base64url(JSON {n: nonce, t: tenant, u: user, e: expiry}) "."
//! base64url(HMAC-SHA256)`; the nonce is also stored in `public.oauth_states`
//! and spent on the callback, so a replayed state is refused.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{Duration, Utc};
use diesel::prelude::*;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::crypto::Keyring;
use crate::db::schema::oauth_states;
use crate::db::tenant_schema::pending_selections;
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::{TenantId, UserId};
use crate::meta::graph::InstagramAccount;
use crate::secret::Secret;

pub const STATE_TTL_MINUTES: i64 = 10;
pub const SELECTION_TTL_MINUTES: i64 = 60;
pub const SCOPES: &str = "pages_show_list,pages_messaging,pages_manage_metadata,instagram_basic,instagram_manage_messages,business_management";

#[derive(Serialize, Deserialize)]
struct StateClaims {
    n: String,
    t: i64,
    u: i64,
    e: i64,
}

/// The state-signing key ([`crate::signed`]).
pub fn state_key(jwt_secret: &[u8]) -> Vec<u8> {
    crate::signed::key(jwt_secret, "switchboard oauth state v1")
}

/// Signs a state value (no database work: see [`new_state`]).
pub fn sign_state(key: &[u8], nonce: &str, tenant: TenantId, user: UserId, expires_at: i64) -> String {
    crate::signed::sign(key, &StateClaims { n: nonce.to_string(), t: tenant.0, u: user.0, e: expires_at })
}

/// Mints a state for (tenant, user) and records its nonce.
pub fn new_state(conn: &mut PgConnection, key: &[u8], tenant: TenantId, user: UserId) -> AppResult<String> {
    let mut bytes = [0u8; 18];
    rand::thread_rng().fill_bytes(&mut bytes);
    let nonce = URL_SAFE_NO_PAD.encode(bytes);
    let expires = Utc::now() + Duration::minutes(STATE_TTL_MINUTES);
    diesel::insert_into(oauth_states::table)
        .values((
            oauth_states::nonce.eq(&nonce),
            oauth_states::tenant_id.eq(tenant.0),
            oauth_states::user_id.eq(user.0),
            oauth_states::expires_at.eq(expires),
        ))
        .execute(conn)?;
    // Old states are useless; sweep them while we are here.
    diesel::delete(oauth_states::table.filter(oauth_states::expires_at.lt(Utc::now() - Duration::hours(1))))
        .execute(conn)?;
    Ok(sign_state(key, &nonce, tenant, user, expires.timestamp()))
}

fn bad_state(message: &str) -> AppError {
    AppError::bad_request("invalid_state", message.to_string())
}

/// Verifies and spends a state: returns who started the flow.
pub fn consume_state(conn: &mut PgConnection, key: &[u8], state: &str) -> AppResult<(TenantId, UserId)> {
    let claims: StateClaims = crate::signed::open(key, state).map_err(|e| match e {
        crate::signed::Unsigned::Tampered => bad_state("the OAuth state was tampered with"),
        crate::signed::Unsigned::Malformed => bad_state("the OAuth state is malformed"),
    })?;
    if claims.e < Utc::now().timestamp() {
        return Err(bad_state("the OAuth state has expired; start again"));
    }
    let spent = diesel::update(
        oauth_states::table
            .filter(oauth_states::nonce.eq(&claims.n))
            .filter(oauth_states::used_at.is_null())
            .filter(oauth_states::tenant_id.eq(claims.t))
            .filter(oauth_states::user_id.eq(claims.u)),
    )
    .set(oauth_states::used_at.eq(Utc::now()))
    .execute(conn)?;
    if spent != 1 {
        return Err(bad_state("the OAuth state was already used; start again"));
    }
    Ok((TenantId(claims.t), UserId(claims.u)))
}

/// A page found by OAuth, as shown to the admin (no token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingPage {
    pub id: String,
    pub name: String,
    pub category: Option<String>,
    pub instagram: Option<InstagramAccount>,
}

pub fn selection_aad(id: &str) -> String {
    format!("selection:{id}")
}

pub fn create_selection(
    tc: &mut TenantConn<'_>,
    keys: &Keyring,
    created_by: UserId,
    meta_user_id: &str,
    user_token: &Secret<String>,
    pages: &[PendingPage],
) -> AppResult<String> {
    let id = uuid::Uuid::new_v4().to_string();
    let sealed = keys.encrypt(user_token, &selection_aad(&id));
    diesel::delete(pending_selections::table.filter(pending_selections::expires_at.lt(Utc::now()))).execute(tc.pg())?;
    diesel::insert_into(pending_selections::table)
        .values((
            pending_selections::id.eq(&id),
            pending_selections::created_by.eq(created_by.0),
            pending_selections::meta_user_id.eq(meta_user_id),
            pending_selections::user_token_enc.eq(&sealed),
            pending_selections::pages.eq(serde_json::to_value(pages).map_err(AppError::internal)?),
            pending_selections::expires_at.eq(Utc::now() + Duration::minutes(SELECTION_TTL_MINUTES)),
        ))
        .execute(tc.pg())?;
    Ok(id)
}

pub struct Selection {
    pub id: String,
    pub meta_user_id: String,
    pub user_token: Secret<String>,
    pub pages: Vec<PendingPage>,
}

pub fn load_selection(tc: &mut TenantConn<'_>, keys: &Keyring, id: &str) -> AppResult<Selection> {
    // PostgreSQL keeps no text with U+0000: such an id names nothing.
    if id.contains('\0') {
        return Err(AppError::not_found("selection"));
    }
    let row: Option<(String, String, serde_json::Value)> = pending_selections::table
        .find(id)
        .filter(pending_selections::expires_at.gt(Utc::now()))
        .select((pending_selections::meta_user_id, pending_selections::user_token_enc, pending_selections::pages))
        .first(tc.pg())
        .optional()?;
    let (meta_user_id, sealed, pages) = row.ok_or_else(|| AppError::not_found("selection"))?;
    Ok(Selection {
        id: id.to_string(),
        meta_user_id,
        user_token: keys.decrypt(&sealed, &selection_aad(id))?,
        pages: serde_json::from_value(pages).map_err(AppError::internal)?,
    })
}
