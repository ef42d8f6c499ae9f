//! Refresh tokens: random, stored only as SHA-256, single use. Each use
//! rotates it within its family; presenting a spent token again means it was
//! stolen or replayed, so the whole family is revoked.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{Duration, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::db::schema::refresh_tokens as rt;
use crate::db::DbError;
use crate::error::{AppError, AppResult};
use crate::ids::{TenantId, UserId};

pub const REFRESH_TTL_DAYS: i64 = 30;

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Creates a refresh token in `family` (a new family when `None`) and returns
/// `(token, family)`.
pub fn issue(
    conn: &mut PgConnection,
    user: UserId,
    tenant: TenantId,
    family: Option<&str>,
) -> Result<(String, String), DbError> {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let family = family.map(str::to_string).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    diesel::insert_into(rt::table)
        .values((
            rt::token_hash.eq(hash(&token)),
            rt::family_id.eq(&family),
            rt::user_id.eq(user.0),
            rt::tenant_id.eq(tenant.0),
            rt::expires_at.eq(Utc::now() + Duration::days(REFRESH_TTL_DAYS)),
        ))
        .execute(conn)?;
    Ok((token, family))
}

/// The holder of a refresh token that was just spent.
pub struct Spent {
    pub user: UserId,
    pub tenant: TenantId,
    pub family: String,
}

type Time = chrono::DateTime<Utc>;
/// id, family, user, tenant, expires, used, revoked.
type TokenRow = (i64, String, i64, i64, Time, Option<Time>, Option<Time>);

fn invalid() -> AppError {
    AppError::unauthorized("invalid_refresh_token", "the refresh token is invalid or expired")
}

/// Marks `token` used and returns its holder; must run inside a transaction
/// (the caller issues the successor in the same one). A reused token revokes
/// its family; the revocation is committed even though the call fails, so it
/// runs in its own statement before the error is returned.
pub fn spend(conn: &mut PgConnection, token: &str) -> AppResult<Result<Spent, String>> {
    let row: Option<TokenRow> = rt::table
        .filter(rt::token_hash.eq(hash(token)))
        .select((rt::id, rt::family_id, rt::user_id, rt::tenant_id, rt::expires_at, rt::used_at, rt::revoked_at))
        .for_update()
        .first(conn)
        .optional()?;
    let Some((id, family, user, tenant, expires_at, used_at, revoked_at)) = row else {
        return Err(invalid());
    };
    if revoked_at.is_some() || expires_at <= Utc::now() {
        return Err(invalid());
    }
    if used_at.is_some() {
        // Reuse: the caller must revoke `family` and commit, then refuse.
        return Ok(Err(family));
    }
    diesel::update(rt::table.find(id)).set(rt::used_at.eq(Utc::now())).execute(conn)?;
    Ok(Ok(Spent { user: UserId(user), tenant: TenantId(tenant), family }))
}

pub fn revoke_family(conn: &mut PgConnection, family: &str) -> Result<usize, DbError> {
    Ok(diesel::update(rt::table.filter(rt::family_id.eq(family)).filter(rt::revoked_at.is_null()))
        .set(rt::revoked_at.eq(Utc::now()))
        .execute(conn)?)
}

/// Revokes the family a token belongs to (logout). Unknown tokens are
/// ignored. Returns the family's (tenant, user, family).
pub fn revoke_by_token(conn: &mut PgConnection, token: &str) -> Result<Option<(i64, i64, String)>, DbError> {
    let row: Option<(i64, i64, String)> = rt::table
        .filter(rt::token_hash.eq(hash(token)))
        .select((rt::tenant_id, rt::user_id, rt::family_id))
        .first(conn)
        .optional()?;
    if let Some((_, _, f)) = &row {
        revoke_family(conn, f)?;
    }
    Ok(row)
}

/// The (tenant, user) of a family.
pub fn family_owner(conn: &mut PgConnection, family: &str) -> Result<Option<(i64, i64)>, DbError> {
    Ok(rt::table.filter(rt::family_id.eq(family)).select((rt::tenant_id, rt::user_id)).first(conn).optional()?)
}

pub fn revoke_member(conn: &mut PgConnection, user: UserId, tenant: TenantId) -> Result<usize, DbError> {
    Ok(diesel::update(
        rt::table.filter(rt::user_id.eq(user.0)).filter(rt::tenant_id.eq(tenant.0)).filter(rt::revoked_at.is_null()),
    )
    .set(rt::revoked_at.eq(Utc::now()))
    .execute(conn)?)
}

pub fn revoke_tenant(conn: &mut PgConnection, tenant: TenantId) -> Result<usize, DbError> {
    Ok(diesel::update(rt::table.filter(rt::tenant_id.eq(tenant.0)).filter(rt::revoked_at.is_null()))
        .set(rt::revoked_at.eq(Utc::now()))
        .execute(conn)?)
}
