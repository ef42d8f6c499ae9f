//! Login, refresh, logout and "who am I": the flows behind `/api/auth/*` and
//! `/api/me`, as plain functions over a connection.

use diesel::pg::PgConnection;
use diesel::prelude::*;
use serde::Serialize;

use super::jwt::{JwtKeys, ACCESS_TTL_SECS};
use super::users::{self, Email, UserView};
use super::{password, refresh, stored_role, Role};
use crate::db::migrate::latest_tenant_version;
use crate::db::schema::{memberships, tenants};
use crate::error::{AppError, AppResult};
use crate::ids::{TenantId, UserId};
use crate::realtime::bus::{notify_live, LiveMsg};
use crate::tenancy::{self, Tenant};

#[derive(Debug, Clone, Serialize)]
pub struct TenantView {
    pub id: TenantId,
    pub slug: String,
    pub name: String,
    /// Its members must sign in in two steps (an extension; `auth::mfa`).
    pub require_mfa: bool,
}

impl From<&Tenant> for TenantView {
    fn from(t: &Tenant) -> Self {
        TenantView { id: t.tenant_id(), slug: t.slug.clone(), name: t.name.clone(), require_mfa: t.require_mfa }
    }
}

#[derive(Debug, Serialize)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
    pub user: UserView,
    pub tenant: TenantView,
    pub role: Role,
}

/// The one answer to every failed login (which part was wrong is not told).
pub const INVALID_CREDENTIALS: &str = "invalid_credentials";

fn invalid_credentials() -> AppError {
    AppError::unauthorized(INVALID_CREDENTIALS, "email, password or tenant is wrong")
}

/// Refuses tenants that are suspended or whose schema is not migrated yet.
fn ensure_usable(tenant: &Tenant) -> AppResult<()> {
    if !tenant.is_active() {
        return Err(AppError::forbidden("tenant_suspended", "this tenant is suspended"));
    }
    match tenant.schema_version.as_deref() {
        Some(v) if v >= latest_tenant_version() => Ok(()),
        _ => Err(AppError::unavailable("tenant_not_ready", "this tenant's schema is being migrated; retry shortly")),
    }
}

fn role_of(conn: &mut PgConnection, user: UserId, tenant: TenantId) -> AppResult<Option<Role>> {
    let role: Option<String> = memberships::table
        .filter(memberships::user_id.eq(user.0))
        .filter(memberships::tenant_id.eq(tenant.0))
        .select(memberships::role)
        .first(conn)
        .optional()?;
    role.map(|r| stored_role(&r)).transpose()
}

fn pair(
    conn: &mut PgConnection,
    keys: &JwtKeys,
    user: &users::User,
    tenant: &Tenant,
    role: Role,
    family: Option<&str>,
) -> AppResult<TokenPair> {
    let (refresh_token, family) = refresh::issue(conn, user.user_id(), tenant.tenant_id(), family)?;
    let access_token = keys.issue(user.user_id(), tenant.tenant_id(), &tenant.slug, role, &family)?;
    Ok(TokenPair {
        access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in: ACCESS_TTL_SECS,
        user: user.public(),
        tenant: tenant.into(),
        role,
    })
}

/// A login: the password, then (for a person who turned it on, or whose
/// tenant requires it) the second step (`auth::mfa`), only once the
/// password and tenant are right.
pub fn login(
    conn: &mut PgConnection,
    keys: &JwtKeys,
    keyring: &crate::crypto::Keyring,
    email: &str,
    password: &str,
    tenant_slug: &str,
    second: &super::mfa::SecondStep,
) -> AppResult<TokenPair> {
    let (user, tenant, role) = credentials(conn, email, password, tenant_slug)?;
    super::mfa::check_login(conn, keyring, &user, &tenant, second, chrono::Utc::now())?;
    pair(conn, keys, &user, &tenant, role, None)
}

/// The person, tenant and role a login's email, password and tenant name,
/// if all are right and the tenant is usable (401 `invalid_credentials`
/// whatever was wrong).
pub fn credentials(
    conn: &mut PgConnection,
    email: &str,
    password: &str,
    tenant_slug: &str,
) -> AppResult<(users::User, Tenant, Role)> {
    let Ok(email) = Email::parse(email) else {
        password::verify_dummy(password);
        return Err(invalid_credentials());
    };
    let Some(user) = users::find_by_email(conn, &email)? else {
        password::verify_dummy(password);
        return Err(invalid_credentials());
    };
    if !user.password_matches(password) {
        return Err(invalid_credentials());
    }
    // Slugs are lower-case; a login form's "Acme " finds "acme", as the
    // email is found whatever its case.
    let tenant =
        tenancy::find_by_slug(conn, &tenant_slug.trim().to_ascii_lowercase())?.ok_or_else(invalid_credentials)?;
    let role = role_of(conn, user.user_id(), tenant.tenant_id())?.ok_or_else(invalid_credentials)?;
    ensure_usable(&tenant)?;
    Ok((user, tenant, role))
}

/// A new login (token pair) of a person whose credentials were checked.
pub fn open(
    conn: &mut PgConnection,
    keys: &JwtKeys,
    user: &users::User,
    tenant: &Tenant,
    role: Role,
) -> AppResult<TokenPair> {
    pair(conn, keys, user, tenant, role, None)
}

/// Rotates a refresh token. The role in the new access token is the member's
/// current one; a member who was removed, or a suspended tenant, gets nothing.
pub fn refresh(conn: &mut PgConnection, keys: &JwtKeys, token: &str) -> AppResult<TokenPair> {
    enum Outcome {
        Pair(Box<TokenPair>),
        Reused,
        Removed,
        MfaRequired,
    }
    let outcome = conn.transaction(|conn| -> AppResult<Outcome> {
        let spent = match refresh::spend(conn, token)? {
            Ok(spent) => spent,
            Err(family) => {
                refresh::revoke_family(conn, &family)?;
                if let Some((t, u)) = refresh::family_owner(conn, &family)? {
                    notify_live(conn, &LiveMsg::Revoked { t, u, family: Some(family) })?;
                }
                return Ok(Outcome::Reused);
            }
        };
        let Some(role) = role_of(conn, spent.user, spent.tenant)? else {
            refresh::revoke_family(conn, &spent.family)?;
            return Ok(Outcome::Removed);
        };
        let tenant = tenancy::find(conn, spent.tenant)?.ok_or_else(|| AppError::not_found("tenant"))?;
        ensure_usable(&tenant)?;
        let user = users::find(conn, spent.user)?.ok_or_else(|| AppError::not_found("user"))?;
        // The tenant came to require two-step sign-in of a person without
        // it: this login ends; the next needs it set up (`auth::mfa`).
        if tenant.require_mfa && user.totp_enabled_at.is_none() {
            refresh::revoke_family(conn, &spent.family)?;
            return Ok(Outcome::MfaRequired);
        }
        Ok(Outcome::Pair(Box::new(pair(conn, keys, &user, &tenant, role, Some(&spent.family))?)))
    })?;
    match outcome {
        Outcome::Pair(p) => Ok(*p),
        Outcome::Reused => Err(AppError::unauthorized(
            "refresh_token_reused",
            "this refresh token was already used; its session has been ended everywhere",
        )),
        Outcome::Removed => {
            Err(AppError::unauthorized("membership_revoked", "you are no longer a member of this tenant"))
        }
        Outcome::MfaRequired => Err(super::mfa::required_here()),
    }
}

pub fn logout(conn: &mut PgConnection, token: &str) -> AppResult<()> {
    conn.transaction(|conn| {
        if let Some((t, u, family)) = refresh::revoke_by_token(conn, token)? {
            // Sockets opened with this login close too.
            notify_live(conn, &LiveMsg::Revoked { t, u, family: Some(family) })?;
        }
        Ok(())
    })
}

#[derive(Debug, Serialize)]
pub struct MembershipView {
    pub tenant: TenantRef,
    pub role: Role,
}

#[derive(Debug, Serialize)]
pub struct TenantRef {
    pub slug: String,
    pub name: String,
}

#[derive(Debug, Serialize)]
pub struct Me {
    pub user: UserView,
    pub tenant: TenantView,
    pub role: Role,
    pub memberships: Vec<MembershipView>,
    /// What they are mailed of in this tenant (an extension; `inbox::notice_mail`).
    pub email_notifications: super::members::Prefs,
    /// What their notifications keep in this tenant (an extension;
    /// `inbox::notifications`).
    pub inbox_notifications: super::members::InboxPrefs,
    /// What signs their replies in this tenant where a channel signs them
    /// (an extension; `inbox::messages`); `null`: their name does.
    pub signature: Option<String>,
}

pub fn me(conn: &mut PgConnection, user: UserId, tenant: TenantId, role: Role) -> AppResult<Me> {
    let u = users::find(conn, user)?.ok_or_else(|| AppError::unauthorized("invalid_token", "unknown user"))?;
    let t = tenancy::find(conn, tenant)?.ok_or_else(|| AppError::not_found("tenant"))?;
    let rows: Vec<(String, String, String)> = memberships::table
        .inner_join(tenants::table)
        .filter(memberships::user_id.eq(user.0))
        .order(tenants::slug)
        .select((tenants::slug, tenants::name, memberships::role))
        .load(conn)?;
    let memberships = rows
        .into_iter()
        .map(|(slug, name, role)| Ok(MembershipView { tenant: TenantRef { slug, name }, role: stored_role(&role)? }))
        .collect::<AppResult<Vec<_>>>()?;
    let email_notifications = super::members::prefs(conn, user, tenant)?;
    let inbox_notifications = super::members::inbox_prefs(conn, user, tenant)?;
    let signature = super::members::signature(conn, user, tenant)?;
    Ok(Me {
        user: u.public(),
        tenant: (&t).into(),
        role,
        memberships,
        email_notifications,
        inbox_notifications,
        signature,
    })
}
