//! Members' API tokens: long-lived bearer credentials for scripts and
//! integrations, where a login's rotating refresh token does not fit (two
//! processes sharing one would trip its reuse detection and end the login).
//!
//! Decisions:
//! - A token belongs to a member in one tenant and acts as them, with the
//!   role the member has at each use (read with the token, and checked
//!   again by the tenant guard): a demotion narrows it at once, a removal
//!   deletes it. It is `sbt_` and 43 characters of randomness, shown once
//!   at creation; only its SHA-256 is kept.
//! - Anything a member's access token may do, theirs may, but make tokens:
//!   a leaked token cannot mint itself a successor (403 `token_cannot_mint`).
//!   It opens sockets like an access token (`Authorization: Bearer`, or a
//!   ticket from `POST /api/ws-ticket`).
//! - `expires_in_days` (1 to 3,650) or none; at most [`MOST_PER_MEMBER`] per
//!   member and tenant; `last_used_at` to the minute. Revoking (the member,
//!   or an admin) deletes it and closes the sockets it opened, on every
//!   instance. A new password does not revoke tokens (they are not logins).
//! - Created and revoked are audited (`api_token.created`,
//!   `api_token.revoked`), with the token's name, never the token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use rand::RngCore;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{AuthContext, Role};
use crate::audit;
use crate::db::schema::{api_tokens as at, memberships, tenants};
use crate::db::{DbError, TenantConn};
use crate::error::{AppError, AppResult};
use crate::ids::{TenantId, UserId};
use crate::realtime::bus::{notify_live, LiveMsg};

/// What every API token starts with: tells it from an access token (a JWT).
pub const PREFIX: &str = "sbt_";
/// The most tokens a member keeps in a tenant.
pub const MOST_PER_MEMBER: i64 = 20;
/// The longest a token's name is.
pub const MOST_NAME_CHARS: usize = 100;

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The family an API token's requests and sockets carry: revoking it closes
/// those sockets as ending a login closes its own.
pub fn family(id: i64) -> String {
    format!("api-token:{id}")
}

/// The API token a family names, if it names one ([`family`]).
pub fn of_family(family: &str) -> Option<i64> {
    family.strip_prefix("api-token:")?.parse().ok()
}

/// A token as listed (never the token itself).
#[derive(Debug, Serialize, Queryable, Selectable)]
#[diesel(table_name = at)]
pub struct ApiToken {
    #[serde(serialize_with = "crate::ids::as_string")]
    pub id: i64,
    #[serde(serialize_with = "crate::ids::as_string")]
    pub user_id: i64,
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A token just made: the listing, and the token, shown this once.
#[derive(Debug, Serialize)]
pub struct Created {
    #[serde(flatten)]
    pub listed: ApiToken,
    pub token: String,
}

/// `POST /api/me/tokens`: a token for the caller in their tenant.
pub fn create(
    tc: &mut TenantConn<'_>,
    caller: &AuthContext,
    name: &str,
    expires_in_days: Option<i64>,
) -> AppResult<Created> {
    if caller.api_token.is_some() {
        return Err(AppError::forbidden("token_cannot_mint", "an API token cannot make tokens; sign in to make one"));
    }
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MOST_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(AppError::invalid(
            "invalid_name",
            format!("a token's name is 1 to {MOST_NAME_CHARS} characters, without control characters"),
        ));
    }
    if expires_in_days.is_some_and(|d| !(1..=3650).contains(&d)) {
        return Err(AppError::invalid("invalid_expiry", "expires_in_days is 1 to 3650, or null for none"));
    }
    let (tenant, user) = (tc.tenant(), caller.user);
    // Two creates at once would both count nineteen: a member's take turns.
    crate::db::locks::hold(tc.pg(), crate::db::locks::LockClass::ApiTokens, &format!("{}:{}", tenant.0, user.0))?;
    let held: i64 =
        at::table.filter(at::tenant_id.eq(tenant.0)).filter(at::user_id.eq(user.0)).count().get_result(tc.pg())?;
    if held >= MOST_PER_MEMBER {
        return Err(AppError::conflict(
            "too_many_tokens",
            format!("a member keeps at most {MOST_PER_MEMBER} tokens here; revoke one first"),
        ));
    }
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let listed: ApiToken = diesel::insert_into(at::table)
        .values((
            at::tenant_id.eq(tenant.0),
            at::user_id.eq(user.0),
            at::name.eq(name),
            at::token_hash.eq(hash(&token)),
            at::expires_at.eq(expires_in_days.map(|d| Utc::now() + Duration::days(d))),
        ))
        .returning(ApiToken::as_returning())
        .get_result(tc.pg())?;
    audit::record(
        tc,
        Some(user),
        "api_token.created",
        "api_token",
        Some(listed.id.to_string()),
        json!({"name": listed.name, "expires_at": listed.expires_at}),
    )?;
    Ok(Created { listed, token })
}

/// The tokens of `user` in this tenant (every member's for `None`), newest
/// first.
pub fn list(tc: &mut TenantConn<'_>, user: Option<UserId>) -> AppResult<Vec<ApiToken>> {
    let mut q = at::table.filter(at::tenant_id.eq(tc.tenant().0)).into_boxed();
    if let Some(u) = user {
        q = q.filter(at::user_id.eq(u.0));
    }
    Ok(q.order(at::id.desc()).select(ApiToken::as_select()).load(tc.pg())?)
}

/// Revokes token `id`: the caller's own, or anyone's for an admin. Its
/// sockets close (4401) on every instance.
pub fn revoke(tc: &mut TenantConn<'_>, caller: &AuthContext, id: i64) -> AppResult<()> {
    let tenant = tc.tenant();
    let mut q = diesel::delete(at::table.filter(at::id.eq(id)).filter(at::tenant_id.eq(tenant.0))).into_boxed();
    if !caller.role.at_least(Role::Admin) {
        q = q.filter(at::user_id.eq(caller.user.0));
    }
    let gone: Option<(i64, String)> = q.returning((at::user_id, at::name)).get_result(tc.pg()).optional()?;
    let Some((owner, name)) = gone else { return Err(AppError::not_found("token")) };
    notify_live(tc.pg(), &LiveMsg::Revoked { t: tenant.0, u: owner, family: Some(family(id)) })?;
    audit::record(
        tc,
        Some(caller.user),
        "api_token.revoked",
        "api_token",
        Some(id.to_string()),
        json!({"name": name, "user_id": owner.to_string()}),
    )?;
    Ok(())
}

/// Deletes a member's tokens in a tenant (they were removed from it).
pub fn forget_member(conn: &mut PgConnection, user: UserId, tenant: TenantId) -> Result<usize, DbError> {
    Ok(diesel::delete(at::table.filter(at::user_id.eq(user.0)).filter(at::tenant_id.eq(tenant.0))).execute(conn)?)
}

/// Who `token` (an `sbt_…` bearer) acts as, if it is a live token of a
/// member; its `last_used_at` is moved to the minute.
pub fn authenticate(conn: &mut PgConnection, token: &str) -> AppResult<AuthContext> {
    let invalid = || AppError::unauthorized("invalid_token", "the API token is invalid, expired or revoked");
    let found: Option<(i64, i64, i64, String, String)> = at::table
        .inner_join(
            memberships::table.on(memberships::user_id.eq(at::user_id).and(memberships::tenant_id.eq(at::tenant_id))),
        )
        .inner_join(tenants::table.on(tenants::id.eq(at::tenant_id)))
        .filter(at::token_hash.eq(hash(token)))
        .filter(at::expires_at.is_null().or(at::expires_at.gt(Utc::now())))
        .select((at::id, at::tenant_id, at::user_id, memberships::role, tenants::slug))
        .first(conn)
        .optional()?;
    let (id, tenant, user, role, slug) = found.ok_or_else(invalid)?;
    let role = Role::parse(&role).ok_or_else(invalid)?;
    let stale = at::last_used_at.is_null().or(at::last_used_at.lt(Utc::now() - Duration::minutes(1)));
    diesel::update(at::table.find(id).filter(stale)).set(at::last_used_at.eq(Utc::now())).execute(conn)?;
    Ok(AuthContext {
        user: UserId(user),
        tenant: TenantId(tenant),
        tenant_slug: slug,
        role,
        family: family(id),
        api_token: Some(id),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_told_from_an_access_token_and_hashed() {
        let mut bytes = [7u8; 32];
        bytes[0] = 1;
        let token = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        assert_eq!(token.len(), PREFIX.len() + 43);
        // A JWT starts with the base64 of `{"`: never `sbt_`.
        assert!(!"eyJhbGciOiJIUzI1NiJ9.e30.x".starts_with(PREFIX));
        assert_eq!(hash(&token).len(), 32);
        assert_ne!(hash(&token), hash(&token.replace('B', "C")));
        assert_eq!(family(42), "api-token:42");
        assert_eq!((of_family(&family(42)), of_family("3f2c-uuid")), (Some(42), None));
    }
}
