//! Members of a tenant and their roles.
//!
//! Decisions: admins manage members; only owners may grant the owner role or
//! change or remove another owner; nobody can demote or remove the last owner.
//! Adding an email that has no user yet creates the user and needs a password.
//! Removing a member revokes their refresh tokens for this tenant; a
//! membership starts with none ([`join`]).

use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::users::{self, Email};
use super::{refresh, stored_role, Role};
use crate::audit;
use crate::db::schema::{memberships, users as users_t};
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::{TenantId, UserId};
use crate::inbox::conversations::Released;
use crate::realtime::bus::{notify_live, LiveMsg};

#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub user_id: UserId,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
    /// Whether they sign in in two steps (an extension; `auth::mfa`), so an
    /// admin can see who has not.
    pub mfa_enabled: bool,
}

type MemberRow = (i64, String, String, String, DateTime<Utc>, Option<DateTime<Utc>>);

/// What a [`MemberRow`] is read from.
const MEMBER_COLUMNS: (
    users_t::id,
    users_t::email,
    users_t::name,
    memberships::role,
    memberships::created_at,
    users_t::totp_enabled_at,
) = (users_t::id, users_t::email, users_t::name, memberships::role, memberships::created_at, users_t::totp_enabled_at);

/// `users`, sorted and once each, if every one is a member of the tenant
/// (else 422 `unknown_user` naming one that is not): who may be listed on
/// a channel or a team.
pub fn all_members(tc: &mut TenantConn<'_>, users: &[UserId]) -> AppResult<Vec<i64>> {
    let mut ids: Vec<i64> = users.iter().map(|u| u.0).collect();
    ids.sort_unstable();
    ids.dedup();
    let tenant = tc.tenant().0;
    let known: Vec<i64> = memberships::table
        .filter(memberships::tenant_id.eq(tenant))
        .filter(memberships::user_id.eq_any(&ids))
        .select(memberships::user_id)
        .load(tc.pg())?;
    if let Some(missing) = ids.iter().find(|i| !known.contains(i)) {
        return Err(AppError::invalid("unknown_user", format!("user {missing} is not a member of this tenant")));
    }
    Ok(ids)
}

fn to_member(row: MemberRow) -> AppResult<Member> {
    Ok(Member {
        user_id: UserId(row.0),
        email: row.1,
        name: row.2,
        role: stored_role(&row.3)?,
        created_at: row.4,
        mfa_enabled: row.5.is_some(),
    })
}

/// Members ordered by user id, after `after` (keyset pagination).
pub fn list(tc: &mut TenantConn<'_>, after: Option<i64>, limit: i64) -> AppResult<Vec<Member>> {
    let tenant = tc.tenant().0;
    let mut q = memberships::table
        .inner_join(users_t::table)
        .filter(memberships::tenant_id.eq(tenant))
        .order(memberships::user_id)
        .limit(limit)
        .select(MEMBER_COLUMNS)
        .into_boxed();
    if let Some(a) = after {
        q = q.filter(memberships::user_id.gt(a));
    }
    q.load::<MemberRow>(tc.pg())?.into_iter().map(to_member).collect()
}

/// The role `user` has in this tenant, if they are a member.
pub fn role_of(tc: &mut TenantConn<'_>, user: UserId) -> AppResult<Option<Role>> {
    let role: Option<String> = memberships::table
        .filter(memberships::tenant_id.eq(tc.tenant().0))
        .filter(memberships::user_id.eq(user.0))
        .select(memberships::role)
        .first(tc.pg())
        .optional()?;
    Ok(role.as_deref().and_then(Role::parse))
}

pub fn get(tc: &mut TenantConn<'_>, user: UserId) -> AppResult<Member> {
    let tenant = tc.tenant().0;
    let row: MemberRow = memberships::table
        .inner_join(users_t::table)
        .filter(memberships::tenant_id.eq(tenant))
        .filter(memberships::user_id.eq(user.0))
        .select(MEMBER_COLUMNS)
        .first(tc.pg())
        .optional()?
        .ok_or_else(|| AppError::not_found("member"))?;
    to_member(row)
}

pub(super) fn ensure_may_grant(actor_role: Role, role: Role) -> AppResult<()> {
    if role == Role::Owner && actor_role != Role::Owner {
        return Err(AppError::forbidden("forbidden", "only an owner can make someone an owner"));
    }
    Ok(())
}

/// What adding a member needs. `password_hash` is computed by the caller
/// before the transaction when a password was given.
pub struct NewMember {
    pub email: Email,
    pub name: String,
    pub role: Role,
    pub password_hash: Option<super::password::PasswordHash>,
}

/// Adds `new` as a member, as `actor` (`None`: an operator's command) of
/// `actor_role`, creating the user if no one has the email yet.
pub fn add(tc: &mut TenantConn<'_>, actor: Option<UserId>, actor_role: Role, new: NewMember) -> AppResult<Member> {
    ensure_may_grant(actor_role, new.role)?;
    let user = match users::find_by_email(tc.pg(), &new.email)? {
        Some(u) => u,
        None => {
            let hash = new.password_hash.as_ref().ok_or_else(|| {
                AppError::invalid(
                    "password_required",
                    "no user has this email yet; give a password to create one, or invite them (POST /api/invitations)",
                )
            })?;
            users::insert(tc.pg(), &new.email, &new.name, hash)?
        }
    };
    if !join(tc, user.user_id(), new.role)? {
        return Err(AppError::conflict("already_member", "this user is already a member"));
    }
    super::invitations::settled(tc, user.user_id(), &user.email, Utc::now())?;
    audit::record(
        tc,
        actor,
        "member.added",
        "user",
        Some(user.id.to_string()),
        json!({"email": user.email, "role": new.role}),
    )?;
    get(tc, user.user_id())
}

/// Makes `user` a member with `role` unless they are one: whether they
/// became one. A membership starts with no logins or API tokens: any left
/// of an earlier one (made while its removal was under way, which the
/// removal's revoke could not see) end here, their access tokens with them
/// (the guard refuses a revoked login).
pub(super) fn join(tc: &mut TenantConn<'_>, user: UserId, role: Role) -> AppResult<bool> {
    let tenant = tc.tenant();
    let inserted = diesel::insert_into(memberships::table)
        .values((
            memberships::user_id.eq(user.0),
            memberships::tenant_id.eq(tenant.0),
            memberships::role.eq(role.as_str()),
        ))
        .on_conflict_do_nothing()
        .execute(tc.pg())?;
    if inserted == 0 {
        return Ok(false);
    }
    refresh::revoke_member(tc.pg(), user, tenant)?;
    super::api_tokens::forget_member(tc.pg(), user, tenant)?;
    Ok(true)
}

/// Locks the owner rows of the tenant, so two concurrent demotions cannot
/// both see "another owner remains".
fn owner_count_locked(tc: &mut TenantConn<'_>) -> AppResult<usize> {
    let tenant = tc.tenant().0;
    let owners: Vec<i64> = memberships::table
        .filter(memberships::tenant_id.eq(tenant))
        .filter(memberships::role.eq(Role::Owner.as_str()))
        .select(memberships::user_id)
        .for_update()
        .load(tc.pg())?;
    Ok(owners.len())
}

/// Gives `user` `role`, as `actor` (`None`: an operator's command, with an
/// owner's powers) of `actor_role`. The last owner stays one; the member's
/// tokens and sockets end; the invitations they could not make now are
/// taken back; what they may no longer answer goes back to the queue, or
/// to someone of `online`.
pub fn change_role(
    tc: &mut TenantConn<'_>,
    log: &mut crate::inbox::events::EventLog,
    actor: Option<UserId>,
    actor_role: Role,
    user: UserId,
    role: Role,
    online: &[UserId],
) -> AppResult<Member> {
    ensure_may_grant(actor_role, role)?;
    let owners = owner_count_locked(tc)?;
    let current = get(tc, user)?;
    if current.role == Role::Owner && actor_role != Role::Owner {
        return Err(AppError::forbidden("forbidden", "only an owner can change an owner's role"));
    }
    if current.role == Role::Owner && role != Role::Owner && owners <= 1 {
        return Err(AppError::conflict("last_owner", "the last owner cannot be demoted"));
    }
    if current.role == role {
        return Ok(current);
    }
    let tenant = tc.tenant().0;
    diesel::update(memberships::table.find((user.0, tenant)))
        .set(memberships::role.eq(role.as_str()))
        .execute(tc.pg())?;
    // Their tokens name the old role and are refused from now on; their
    // sockets, which would go on with the old role's channels, close as a
    // stale login's (4401: refresh, reconnect), on every instance.
    notify_live(tc.pg(), &LiveMsg::Revoked { t: tenant, u: user.0, family: None })?;
    super::invitations::take_back(tc, actor, user, Some(role), "role_changed")?;
    audit::record(
        tc,
        actor,
        "member.role_changed",
        "user",
        Some(user.to_string()),
        json!({"from": current.role, "to": role}),
    )?;
    // What they may no longer answer goes back to the queue: a viewer
    // answers nothing; an agent, only the channels they are listed on.
    let no_longer = match role {
        Role::Viewer => Some(Released::All),
        Role::Agent if current.role.at_least(Role::Admin) => Some(Released::Unlisted),
        _ => None,
    };
    if let Some(which) = no_longer {
        crate::inbox::conversations::lock_answered(tc, &[user], which)?;
        crate::inbox::conversations::release(tc, log, actor, user, which, "role_changed", online)?;
    }
    // Notice mails still queued quoting what they may no longer see.
    if !role.at_least(Role::Admin) {
        crate::mail::withdraw_unseen(tc, user, crate::mail::NO_LONGER_SEEN)?;
    }
    get(tc, user)
}

pub fn remove(
    tc: &mut TenantConn<'_>,
    log: &mut crate::inbox::events::EventLog,
    actor: UserId,
    actor_role: Role,
    user: UserId,
    online: &[UserId],
) -> AppResult<()> {
    let owners = owner_count_locked(tc)?;
    let current = get(tc, user)?;
    if current.role == Role::Owner && actor_role != Role::Owner {
        return Err(AppError::forbidden("forbidden", "only an owner can remove an owner"));
    }
    if current.role == Role::Owner && owners <= 1 {
        return Err(AppError::conflict("last_owner", "the last owner cannot be removed"));
    }
    let tenant = tc.tenant();
    diesel::delete(memberships::table.find((user.0, tenant.0))).execute(tc.pg())?;
    refresh::revoke_member(tc.pg(), user, tenant)?;
    super::api_tokens::forget_member(tc.pg(), user, tenant)?;
    // Off the channels' lists, then their conversations, then what hangs
    // off conversations (their notifications, scheduled messages): the
    // order a change of a channel's list takes them in (the list, then the
    // conversations it hands back), and an erasure (the conversations,
    // then what deleting them deletes), so any two at once take turns
    // rather than deadlock.
    crate::channels::forget_member(tc, user)?;
    // Every conversation the removal writes, at once and in id order, as a
    // bulk change takes its: those they answer (handed back) and those in
    // which messages they scheduled wait (cancelled, `scheduled`).
    let mut theirs = crate::inbox::conversations::answered(tc, user, Released::All)?;
    theirs.extend(crate::inbox::scheduled::waiting_in(tc, user)?);
    crate::inbox::conversations::lock(tc, &theirs)?;
    crate::inbox::conversations::release(tc, log, Some(actor), user, Released::All, "member_removed", online)?;
    super::invitations::take_back(tc, Some(actor), user, None, "member_removed")?;
    // Notice mails still queued (an SMTP server down) tell what they may
    // no longer see.
    crate::mail::withdraw(tc.pg(), tenant, crate::mail::Withdrawn::Member(user), crate::mail::MEMBER_LEFT)?;
    crate::inbox::macros::forget_member(tc, user)?;
    crate::inbox::saved_views::forget_member(tc, user)?;
    crate::inbox::scheduled::forget_member(tc, log, user, &theirs)?;
    crate::inbox::notifications::forget_member(tc, user)?;
    crate::inbox::teams::forget_member(tc, log, user)?;
    // Their sockets in this tenant close (4403), on every instance.
    notify_live(tc.pg(), &LiveMsg::Removed { t: tenant.0, u: user.0 })?;
    audit::record(
        tc,
        Some(actor),
        "member.removed",
        "user",
        Some(user.to_string()),
        json!({"email": current.email, "role": current.role}),
    )?;
    Ok(())
}

/// A member's choice, in one tenant, of the notices they are mailed
/// (`email_notifications`; `inbox::notice_mail`); all on until changed.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Prefs {
    /// Mailed when a colleague assigns them a conversation.
    pub assigned: bool,
    /// Mailed when a colleague mentions them in a note.
    pub mentioned: bool,
    /// Mailed when a conversation assigned to them passes its reply target.
    pub overdue: bool,
}

/// A change of [`Prefs`]: what is left out stays.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefsChange {
    pub assigned: Option<bool>,
    pub mentioned: Option<bool>,
    pub overdue: Option<bool>,
}

/// `user`'s choice in `tenant` (both on for someone not a member).
pub fn prefs(conn: &mut PgConnection, user: UserId, tenant: TenantId) -> AppResult<Prefs> {
    Ok(prefs_of_member(conn, user, tenant)?.unwrap_or(Prefs { assigned: true, mentioned: true, overdue: true }))
}

/// `user`'s choice in `tenant`, if they are a member (`None`: someone
/// who left, whom nothing of the tenant's is mailed).
pub fn prefs_of_member(conn: &mut PgConnection, user: UserId, tenant: TenantId) -> AppResult<Option<Prefs>> {
    let row: Option<(bool, bool, bool)> = memberships::table
        .find((user.0, tenant.0))
        .select((memberships::mail_assigned, memberships::mail_mentioned, memberships::mail_overdue))
        .first(conn)
        .optional()?;
    Ok(row.map(|(assigned, mentioned, overdue)| Prefs { assigned, mentioned, overdue }))
}

/// Applies `change` to `user`'s choice in `tenant`; whether it changed
/// (never for someone not a member: they have no choice to change).
pub fn set_prefs(conn: &mut PgConnection, user: UserId, tenant: TenantId, change: PrefsChange) -> AppResult<bool> {
    let Some(now) = prefs_of_member(conn, user, tenant)? else { return Ok(false) };
    let want = Prefs {
        assigned: change.assigned.unwrap_or(now.assigned),
        mentioned: change.mentioned.unwrap_or(now.mentioned),
        overdue: change.overdue.unwrap_or(now.overdue),
    };
    if want == now {
        return Ok(false);
    }
    diesel::update(memberships::table.find((user.0, tenant.0)))
        .set((
            memberships::mail_assigned.eq(want.assigned),
            memberships::mail_mentioned.eq(want.mentioned),
            memberships::mail_overdue.eq(want.overdue),
        ))
        .execute(conn)?;
    Ok(true)
}

/// A member's choice, in one tenant, of what their notifications keep
/// (`inbox_notifications`; `inbox::notifications`): only the kind that
/// comes with every customer's message can be turned off; the rest are
/// what a colleague or the clock did for them.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct InboxPrefs {
    /// Kept when the customer of a conversation assigned to them writes.
    pub customer_message: bool,
}

/// A change of [`InboxPrefs`]: what is left out stays.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxPrefsChange {
    pub customer_message: Option<bool>,
}

/// `user`'s choice in `tenant` (on for someone not a member).
pub fn inbox_prefs(conn: &mut PgConnection, user: UserId, tenant: TenantId) -> AppResult<InboxPrefs> {
    let kept: Option<bool> = memberships::table
        .find((user.0, tenant.0))
        .select(memberships::keep_customer_messages)
        .first(conn)
        .optional()?;
    Ok(InboxPrefs { customer_message: kept.unwrap_or(true) })
}

/// Applies `change` to `user`'s choice in `tenant`; whether it changed.
/// What was kept stays, to be read as before.
pub fn set_inbox_prefs(
    conn: &mut PgConnection,
    user: UserId,
    tenant: TenantId,
    change: InboxPrefsChange,
) -> AppResult<bool> {
    let Some(want) = change.customer_message else { return Ok(false) };
    let changed = diesel::update(memberships::table.find((user.0, tenant.0)))
        .filter(memberships::keep_customer_messages.ne(want))
        .set(memberships::keep_customer_messages.eq(want))
        .execute(conn)?;
    Ok(changed > 0)
}

/// The longest signature.
pub const MOST_SIGNATURE_CHARS: usize = 200;

/// A signature as given to `PATCH /api/me`: trimmed, `None` when blank or
/// `null`; at most [`MOST_SIGNATURE_CHARS`] characters, on several lines if
/// wanted but with no other control characters (422 `invalid_signature`).
pub fn checked_signature(raw: Option<String>) -> AppResult<Option<String>> {
    let Some(text) = raw.map(|s| s.trim().replace("\r\n", "\n")).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if text.chars().count() > MOST_SIGNATURE_CHARS {
        return Err(AppError::invalid(
            "invalid_signature",
            format!("signature must be at most {MOST_SIGNATURE_CHARS} characters"),
        ));
    }
    if text.chars().any(|c| c.is_control() && c != '\n') {
        return Err(AppError::invalid("invalid_signature", "signature must not hold control characters but new lines"));
    }
    Ok(Some(text))
}

/// `user`'s signature in `tenant` (`None`: none set, or not a member).
pub fn signature(conn: &mut PgConnection, user: UserId, tenant: TenantId) -> AppResult<Option<String>> {
    Ok(memberships::table
        .find((user.0, tenant.0))
        .select(memberships::signature)
        .first::<Option<String>>(conn)
        .optional()?
        .flatten())
}

/// Sets `user`'s signature in `tenant`; whether it changed (never for
/// someone not a member).
pub fn set_signature(conn: &mut PgConnection, user: UserId, tenant: TenantId, wanted: Option<&str>) -> AppResult<bool> {
    let changed = diesel::update(memberships::table.find((user.0, tenant.0)))
        .filter(memberships::signature.is_distinct_from(wanted))
        .set(memberships::signature.eq(wanted))
        .execute(conn)?;
    Ok(changed > 0)
}
