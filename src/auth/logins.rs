//! A person's logins (an extension): where they are signed in, and ending
//! one or all the others ("sign out everywhere else").
//!
//! Decisions:
//! - A login is a refresh-token family that is still live (not revoked,
//!   not expired): its id is the family's (the `fam` of its access tokens),
//!   with the tenant it is for, when it began, when it was last refreshed and
//!   when it ends unless refreshed. Every tenant's, since the person is one
//!   in all of them; `current` marks the one asking.
//! - Ending a login revokes its family (its refresh token stops working)
//!   and closes the sockets opened with it (4401), on every instance; its
//!   access tokens live out their 15 minutes, as after a logout. Ending the
//!   current one is a logout. Audited as `account.logins_ended` in the
//!   tenant asked from, with how many.
//! - Nothing is kept of the device or address: what a login shows is what
//!   the refresh tokens already hold.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use serde_json::json;

use crate::db::schema::{refresh_tokens as rt, tenants};
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;
use crate::realtime::bus::{notify_live, LiveMsg};

/// One live login of the person.
#[derive(Debug, Serialize)]
pub struct Login {
    pub id: String,
    pub tenant: LoginTenant,
    pub started_at: DateTime<Utc>,
    pub last_refreshed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The login asking.
    pub current: bool,
}

#[derive(Debug, Serialize)]
pub struct LoginTenant {
    pub slug: String,
    pub name: String,
}

/// family, refreshed (the live token's creation), expires, tenant slug and name.
type LiveRow = (String, DateTime<Utc>, DateTime<Utc>, String, String);

/// The person's live logins, newest first.
pub fn list(tc: &mut TenantConn<'_>, user: UserId, current_family: &str) -> AppResult<Vec<Login>> {
    let live: Vec<LiveRow> = rt::table
        .inner_join(tenants::table.on(tenants::id.eq(rt::tenant_id)))
        .filter(rt::user_id.eq(user.0))
        .filter(rt::revoked_at.is_null())
        .filter(rt::used_at.is_null())
        .filter(rt::expires_at.gt(Utc::now()))
        .order(rt::created_at.desc())
        .select((rt::family_id, rt::created_at, rt::expires_at, tenants::slug, tenants::name))
        .load(tc.pg())?;
    let families: Vec<&str> = live.iter().map(|l| l.0.as_str()).collect();
    let began: Vec<(String, Option<DateTime<Utc>>)> = rt::table
        .filter(rt::family_id.eq_any(&families))
        .group_by(rt::family_id)
        .select((rt::family_id, diesel::dsl::min(rt::created_at)))
        .load(tc.pg())?;
    let began: std::collections::HashMap<String, DateTime<Utc>> =
        began.into_iter().filter_map(|(f, at)| at.map(|at| (f, at))).collect();
    Ok(live
        .into_iter()
        .map(|(id, refreshed, expires_at, slug, name)| Login {
            started_at: began.get(&id).copied().unwrap_or(refreshed),
            current: id == current_family,
            id,
            tenant: LoginTenant { slug, name },
            last_refreshed_at: refreshed,
            expires_at,
        })
        .collect())
}

/// Ends the person's login `id` (a live one of theirs, else 404).
pub fn end(tc: &mut TenantConn<'_>, user: UserId, id: &str) -> AppResult<()> {
    let tenant: Option<i64> = rt::table
        .filter(rt::user_id.eq(user.0))
        .filter(rt::family_id.eq(id))
        .filter(rt::revoked_at.is_null())
        .filter(rt::expires_at.gt(Utc::now()))
        .select(rt::tenant_id)
        .first(tc.pg())
        .optional()?;
    let tenant = tenant.ok_or_else(|| AppError::not_found("login"))?;
    // Ended meanwhile by the same request sent at once: as a moment later
    // (the second's update waited for the first's and found nothing live).
    if super::refresh::revoke_family(tc.pg(), id)? == 0 {
        return Err(AppError::not_found("login"));
    }
    notify_live(tc.pg(), &LiveMsg::Revoked { t: tenant, u: user.0, family: Some(id.to_string()) })?;
    audited(tc, user, 1)
}

/// Ends every live login of the person but `keep` (the one asking);
/// answers how many ended.
pub fn end_others(tc: &mut TenantConn<'_>, user: UserId, keep: &str) -> AppResult<usize> {
    let ended = super::account::end_logins(tc.pg(), user, Some(keep))?;
    if ended > 0 {
        audited(tc, user, ended)?;
    }
    Ok(ended)
}

fn audited(tc: &mut TenantConn<'_>, user: UserId, count: usize) -> AppResult<()> {
    super::account::audited(tc, user, "account.logins_ended", json!({"count": count}))
}
