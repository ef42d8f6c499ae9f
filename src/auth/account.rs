//! A person's own account: the name colleagues see, the password, and
//! (per tenant) which notices they are mailed (`members::Prefs`) and the
//! signature their replies carry where a channel signs them
//! (`members::signature`).
//!
//! A password changes only with the current one, checked against the same
//! per-email failure count as logins (one bucket, so a stolen access token
//! buys an attacker no more guesses than the login form does). A new
//! password ends every other login of the person, in every tenant: their
//! refresh-token families are revoked and the sockets opened with them close
//! (4401), so a password changed because it leaked locks the holder out. The
//! login that made the change stays. Access tokens already issued to the
//! other logins live out their 15 minutes, as after a logout.
//!
//! A person who forgot theirs resets it by mail (`password_reset`, with mail
//! on), and operators set one without the current one (`user password`);
//! either ends every login. An admin of a tenant cannot: the person may
//! work in other tenants too.

use chrono::Utc;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use serde_json::json;

use super::password::PasswordHash;
use super::users::{self, Email, User};
use crate::db::schema::{refresh_tokens as rt, users as u};
use crate::db::TenantConn;
use crate::error::{AppError, AppResult, ErrorKind};
use crate::ids::UserId;
use crate::realtime::bus::{notify_live, LiveMsg};

/// The code of a wrong current password; the handler counts it as a failed
/// login of the account.
pub const WRONG_PASSWORD: &str = "wrong_password";
const MAX_NAME_CHARS: usize = 200;

/// A checked change of one's own account. Build it with
/// [`AccountChanges::checked`]: the new password is hashed there, before any
/// transaction.
pub struct AccountChanges {
    name: Option<String>,
    password: Option<PasswordChange>,
    /// In the tenant of the change (`members::Prefs`).
    notifications: Option<super::members::PrefsChange>,
    /// In the tenant of the change (`members::InboxPrefs`).
    inbox: Option<super::members::InboxPrefsChange>,
    /// In the tenant of the change: `Some(None)` takes it away.
    signature: Option<Option<String>>,
}

struct PasswordChange {
    current: String,
    new: PasswordHash,
}

impl AccountChanges {
    /// `name`: `Some("")` clears it (colleagues then see the email).
    /// A new password needs the current one; the current one alone is a
    /// mistake worth saying.
    pub fn checked(
        name: Option<String>,
        current_password: Option<String>,
        new_password: Option<String>,
        notifications: Option<super::members::PrefsChange>,
        inbox: Option<super::members::InboxPrefsChange>,
        signature: Option<Option<String>>,
    ) -> AppResult<AccountChanges> {
        let signature = signature.map(super::members::checked_signature).transpose()?;
        let name = name.map(|n| n.trim().to_string());
        if name.as_ref().is_some_and(|n| n.chars().count() > MAX_NAME_CHARS) {
            return Err(AppError::invalid("invalid_name", format!("name must be at most {MAX_NAME_CHARS} characters")));
        }
        if name.as_ref().is_some_and(|n| n.chars().any(char::is_control)) {
            return Err(AppError::invalid("invalid_name", "name must not hold control characters"));
        }
        let password = match (current_password, new_password) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(AppError::invalid(
                    "current_password_required",
                    "give current_password to set a new password",
                ))
            }
            (Some(_), None) => {
                return Err(AppError::invalid("new_password_required", "give new_password with current_password"))
            }
            (Some(current), Some(new)) => {
                if current == new {
                    return Err(AppError::invalid("same_password", "the new password is the current one"));
                }
                Some(PasswordChange { current, new: PasswordHash::create(&new)? })
            }
        };
        if name.is_none() && password.is_none() && notifications.is_none() && inbox.is_none() && signature.is_none() {
            return Err(AppError::invalid(
                "invalid_body",
                "give `name`, `email_notifications`, `inbox_notifications`, `signature`, or `current_password` and `new_password`",
            ));
        }
        Ok(AccountChanges { name, password, notifications, inbox, signature })
    }
}

/// The email an account's failures are counted under.
pub fn email_of(conn: &mut PgConnection, user: UserId) -> AppResult<String> {
    users::find(conn, user)?.map(|u| u.email).ok_or_else(|| AppError::unauthorized("invalid_token", "unknown user"))
}

/// Applies `changes` to `user`'s account inside the caller's tenant
/// transaction (the audit entry goes to that tenant's log). `keep_family` is
/// the login making the change; every other one of the person's logins ends
/// when the password changes. A wrong current password changes nothing.
pub fn change(
    tc: &mut TenantConn<'_>,
    user: UserId,
    keep_family: &str,
    changes: AccountChanges,
) -> AppResult<Vec<&'static str>> {
    let row: User = users::own_for_update(tc.pg(), user)?;
    let mut changed = Vec::new();
    if let Some(pw) = &changes.password {
        if !row.password_matches(&pw.current) {
            return Err(AppError::forbidden(WRONG_PASSWORD, "the current password is wrong"));
        }
        diesel::update(u::table.find(user.0)).set(u::password_hash.eq(pw.new.as_str())).execute(tc.pg())?;
        end_logins(tc.pg(), user, Some(keep_family))?;
        changed.push("password");
    }
    if let Some(name) = changes.name.filter(|n| *n != row.name) {
        diesel::update(u::table.find(user.0)).set(u::name.eq(name)).execute(tc.pg())?;
        changed.push("name");
    }
    if let Some(wanted) = changes.notifications {
        let tenant = tc.tenant();
        if super::members::set_prefs(tc.pg(), user, tenant, wanted)? {
            changed.push("email_notifications");
        }
    }
    if let Some(wanted) = changes.inbox {
        let tenant = tc.tenant();
        if super::members::set_inbox_prefs(tc.pg(), user, tenant, wanted)? {
            changed.push("inbox_notifications");
        }
    }
    if let Some(wanted) = changes.signature {
        let tenant = tc.tenant();
        if super::members::set_signature(tc.pg(), user, tenant, wanted.as_deref())? {
            changed.push("signature");
        }
    }
    if !changed.is_empty() {
        audited(tc, user, "account.updated", json!({"fields": changed}))?;
    }
    Ok(changed)
}

/// Audits `action` on the person's own account, in the tenant they did it from.
pub(super) fn audited(
    tc: &mut TenantConn<'_>,
    user: UserId,
    action: &str,
    details: serde_json::Value,
) -> AppResult<()> {
    crate::audit::record(tc, Some(user), action, "user", Some(user.0.to_string()), details)?;
    Ok(())
}

/// Sets a password without the current one (operators), ending every login
/// of the person. Answers how many logins ended.
pub fn set_password(conn: &mut PgConnection, email: &Email, new: &PasswordHash) -> AppResult<usize> {
    conn.transaction(|conn| {
        let user = users::find_by_email(conn, email)?
            .ok_or_else(|| AppError::new(ErrorKind::NotFound, "user_not_found", "no user has this email"))?;
        diesel::update(u::table.find(user.id)).set(u::password_hash.eq(new.as_str())).execute(conn)?;
        end_logins(conn, user.user_id(), None)
    })
}

/// Revokes the person's live refresh-token families but `keep`, in every
/// tenant, and closes the sockets opened with them on every instance.
pub(super) fn end_logins(conn: &mut PgConnection, user: UserId, keep: Option<&str>) -> AppResult<usize> {
    let mut live = rt::table
        .filter(rt::user_id.eq(user.0))
        .filter(rt::revoked_at.is_null())
        .filter(rt::expires_at.gt(Utc::now()))
        .into_boxed();
    if let Some(keep) = keep {
        live = live.filter(rt::family_id.ne(keep.to_string()));
    }
    let families: Vec<(i64, String)> = live.select((rt::tenant_id, rt::family_id)).distinct().load(conn)?;
    for (t, family) in &families {
        super::refresh::revoke_family(conn, family)?;
        notify_live(conn, &LiveMsg::Revoked { t: *t, u: user.0, family: Some(family.clone()) })?;
    }
    Ok(families.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: AppResult<AccountChanges>) -> String {
        r.err().map(|e| e.code.to_string()).unwrap_or_default()
    }

    #[test]
    fn what_a_change_must_hold() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(code(AccountChanges::checked(None, None, None, None, None, None)), "invalid_body");
        assert_eq!(
            code(AccountChanges::checked(None, None, s("new-password-1"), None, None, None)),
            "current_password_required"
        );
        assert_eq!(
            code(AccountChanges::checked(None, s("old-password-1"), None, None, None, None)),
            "new_password_required"
        );
        assert_eq!(
            code(AccountChanges::checked(None, s("old-password-1"), s("short"), None, None, None)),
            "weak_password"
        );
        assert_eq!(
            code(AccountChanges::checked(None, s("same-password"), s("same-password"), None, None, None)),
            "same_password"
        );
        assert_eq!(code(AccountChanges::checked(Some("x".repeat(201)), None, None, None, None, None)), "invalid_name");
        assert_eq!(code(AccountChanges::checked(s("a\u{7}b"), None, None, None, None, None)), "invalid_name");
        let ok = AccountChanges::checked(s("  Ann Lee  "), None, None, None, None, None).expect("a name alone");
        assert_eq!(ok.name.as_deref(), Some("Ann Lee"));
        assert!(AccountChanges::checked(s(""), s("old-password-1"), s("new-password-1"), None, None, None).is_ok());
        let sig = |v: &str| AccountChanges::checked(None, None, None, None, None, Some(Some(v.to_string())));
        assert_eq!(code(sig(&"x".repeat(201))), "invalid_signature");
        assert_eq!(code(sig("Ann\tLee")), "invalid_signature");
        let ok = sig("  Ann Lee\r\nAcme support \n").expect("a signature alone");
        assert_eq!(ok.signature, Some(Some("Ann Lee\nAcme support".to_string())));
        let blank = sig("   ").expect("a blank signature takes it away");
        assert_eq!(blank.signature, Some(None));
        let quiet = Some(crate::auth::members::InboxPrefsChange { customer_message: Some(false) });
        assert!(AccountChanges::checked(None, None, None, None, quiet, None).is_ok(), "a choice alone");
    }
}
