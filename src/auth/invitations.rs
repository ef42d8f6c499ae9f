//! Invitations: how an admin brings someone into the tenant without
//! choosing their password for them (`POST /api/members` with a password
//! is the other way, for an admin who sets people up themselves).
//!
//! Decisions:
//! - An admin invites an email with a role (only an owner invites an
//!   owner) and gets a link to hand over: with mail on (`mail`) the server
//!   also mails it to the person (`mailed: true`); without, the link is
//!   for the admin's own mail or chat, or an integrator's. The link
//!   is `{SWITCHBOARD_PUBLIC_URL}/invite#<token>`: the token rides in the
//!   fragment, which browsers never send, so it stays out of access logs
//!   and `Referer`s; the page posts it. It is `sbi_` and 43 characters of
//!   randomness; only its SHA-256 is kept.
//! - Valid [`VALID_DAYS`] days; one live invitation per email and tenant:
//!   inviting again replaces it (a new link; the old one stops). The old
//!   link is then answered 410 `invitation_replaced`, not 404: someone
//!   invited twice (an admin's double click, with mail on two mails) who
//!   opens the first is told to use the newer one. Only its token's hash
//!   is kept for that (the latest [`MOST_REPLACED_KEPT`] of an email),
//!   until a revoke of the email or housekeeping. Inviting
//!   a member is 409 `already_member`. Admins list the pending ones and
//!   revoke them; at most [`MOST_PENDING`] pending (409
//!   `too_many_invitations`).
//! - Whoever holds the link accepts it: someone new sets a password (and a
//!   name), and the account is made with the invited email; someone who
//!   has an account proves it as at a login — its password, then its
//!   second step if it has one (`otp` or `recovery_code`) — since a link
//!   alone must not add an account to a tenant. A wrong password or code
//!   counts as a failed login of that account. The answer is the
//!   membership and, since the accept proved what a login proves, a
//!   login too (`access_token`, `refresh_token`… as `POST /api/auth/login`
//!   answers), so the page or app that took the invitation goes straight
//!   into the inbox. Not where the tenant requires two-step sign-in of
//!   someone who has not set it up: there `mfa_setup_required: true` and
//!   no tokens, and they set it up as at a login (`auth::mfa`).
//! - One accept: a retry with the same password gets the same membership
//!   (200), a login again only for an account without a second step (a
//!   one-time code cannot be proved twice; the others sign in); anyone
//!   else gets 409 `invitation_used`. Someone who became a
//!   member meanwhile keeps the role they have. An expired link is 410
//!   `invitation_expired`; an unknown or revoked one 404. A suspended
//!   tenant's links wait for it (403 `tenant_suspended`).
//! - An invitation grants what its inviter may grant: an admin removed, or
//!   made an agent or viewer, takes back their pending invitations, and an
//!   owner made an admin their owners' ([`take_back`]): otherwise a link
//!   an admin kept for their own address would let them back in once
//!   removed. A departing admin's invitations to newcomers go too; another
//!   admin invites again (the listing showed them, and who sent them). An
//!   invitation holds its sender's membership row until it commits, so a
//!   change under way waits for it and takes it back, and one that came
//!   first refuses it.
//! - Someone invited who is added directly (`POST /api/members`, the
//!   command line) settles the invitation, as accepted by them
//!   ([`settled`]): not listed as pending for a member; its link is a
//!   used one's.
//! - Audited: `member.invited`, `invitation.revoked` (by the admin, or
//!   with `by`: `member_removed` / `role_changed` when taken back),
//!   `member.added` with `by: invitation` (by the new member).
//!   Housekeeping deletes invitations a week after they expire.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use rand::RngCore;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::jwt::JwtKeys;
use super::password::PasswordHash;
use super::session::TenantView;
use super::users::{self, Email, UserView};
use super::{members, stored_role, Role};
use crate::audit;
use crate::db::schema::{invitations as inv, memberships, replaced_invitations as replaced};
use crate::db::{DbError, TenantConn};
use crate::error::{AppError, AppResult, ErrorKind};
use crate::ids::{TenantId, UserId};
use crate::tenancy;

/// What every invitation token starts with.
pub const PREFIX: &str = "sbi_";
/// How long a link is good for.
pub const VALID_DAYS: i64 = 7;
/// The most invitations a tenant has pending (expired ones included until
/// housekeeping): a script gone wrong cannot fill the table.
pub const MOST_PENDING: i64 = 1_000;
/// The most replaced links of one email told apart from unknown ones (the
/// newest): an admin's script re-inviting in a loop cannot grow the table.
pub const MOST_REPLACED_KEPT: i64 = 20;
/// The error of a link that was accepted already (by someone else, or with
/// another password).
pub const USED: &str = "invitation_used";

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn unknown() -> AppError {
    AppError::new(ErrorKind::NotFound, "invitation_not_found", "this invitation does not exist or was revoked")
}

fn superseded() -> AppError {
    AppError::new(
        ErrorKind::Gone,
        "invitation_replaced",
        "a newer invitation was sent to this address; only its link works",
    )
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = inv)]
struct Row {
    id: i64,
    tenant_id: i64,
    email: String,
    role: String,
    invited_by: Option<i64>,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    accepted_at: Option<DateTime<Utc>>,
    accepted_by: Option<i64>,
    mailed: bool,
}

/// A pending invitation as admins see it (never its token).
#[derive(Debug, Serialize)]
pub struct Invitation {
    #[serde(serialize_with = "crate::ids::as_string")]
    pub id: i64,
    pub email: String,
    pub role: Role,
    pub invited_by: Option<UserId>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Past `expires_at`: the link no longer works (invite again).
    pub expired: bool,
    /// Whether the link was also mailed to the person (mail was on); if
    /// not, it is the admin's to hand over.
    pub mailed: bool,
}

impl Row {
    fn listed(self, now: DateTime<Utc>) -> AppResult<Invitation> {
        Ok(Invitation {
            id: self.id,
            role: stored_role(&self.role)?,
            email: self.email,
            invited_by: self.invited_by.map(UserId),
            created_at: self.created_at,
            expired: self.expires_at <= now,
            expires_at: self.expires_at,
            mailed: self.mailed,
        })
    }

    /// Refuses a link that was used or has expired.
    fn usable(&self, now: DateTime<Utc>) -> AppResult<()> {
        if self.accepted_at.is_some() {
            return Err(AppError::conflict(USED, "this invitation was accepted already"));
        }
        if self.expires_at <= now {
            return Err(AppError::new(
                ErrorKind::Gone,
                "invitation_expired",
                "this invitation has expired; ask for a new one",
            ));
        }
        Ok(())
    }
}

/// An invitation just made: the listing, the token and the link to hand
/// over, shown this once.
#[derive(Debug, Serialize)]
pub struct Issued {
    #[serde(flatten)]
    pub invitation: Invitation,
    pub token: String,
    pub accept_url: String,
}

/// `POST /api/invitations`: invites `email` as `role`; `public_url` is where
/// the link points. With `mail`, the link is also mailed to them (`mail`,
/// queued in this transaction).
#[allow(clippy::too_many_arguments)]
pub fn invite(
    tc: &mut TenantConn<'_>,
    actor: UserId,
    actor_role: Role,
    email: &Email,
    role: Role,
    public_url: &str,
    mail: bool,
    now: DateTime<Utc>,
) -> AppResult<Issued> {
    members::ensure_may_grant(actor_role, role)?;
    let tenant = tc.tenant();
    // The inviter's membership, held until this commits: a role change or
    // removal under way waits for the invitation and then takes it back
    // (`take_back`), and one that came first is seen here, not only by the
    // guard before it.
    let held: Option<String> =
        memberships::table.find((actor.0, tenant.0)).select(memberships::role).for_share().first(tc.pg()).optional()?;
    match held {
        None => return Err(DbError::MembershipEnded.into()),
        Some(r) if r != actor_role.as_str() => return Err(DbError::MembershipChanged.into()),
        Some(_) => {}
    }
    // Two invitations of one email at once: the second replaces the first.
    crate::db::locks::hold(
        tc.pg(),
        crate::db::locks::LockClass::Invitations,
        &format!("{}:{}", tenant.0, email.as_str()),
    )?;
    if let Some(user) = users::find_by_email(tc.pg(), email)? {
        if members::role_of(tc, user.user_id())?.is_some() {
            return Err(AppError::conflict("already_member", "this person is already a member"));
        }
    }
    let pending: i64 = inv::table
        .filter(inv::tenant_id.eq(tenant.0))
        .filter(inv::accepted_at.is_null())
        .filter(inv::email.ne(email.as_str()))
        .count()
        .get_result(tc.pg())?;
    // (Inviting an email again replaces its invitation: never refused.)
    if pending >= MOST_PENDING {
        return Err(AppError::conflict(
            "too_many_invitations",
            format!("a tenant has at most {MOST_PENDING} invitations pending; revoke some first"),
        ));
    }
    let gone: Vec<(Vec<u8>, DateTime<Utc>)> = diesel::delete(
        inv::table
            .filter(inv::tenant_id.eq(tenant.0))
            .filter(inv::email.eq(email.as_str()))
            .filter(inv::accepted_at.is_null()),
    )
    .returning((inv::token_hash, inv::expires_at))
    .get_results(tc.pg())?;
    let replaced = gone.len();
    for (token_hash, expires_at) in gone {
        diesel::insert_into(replaced::table)
            .values((
                replaced::token_hash.eq(token_hash),
                replaced::tenant_id.eq(tenant.0),
                replaced::email.eq(email.as_str()),
                replaced::replaced_at.eq(now),
                replaced::expires_at.eq(expires_at),
            ))
            .on_conflict_do_nothing()
            .execute(tc.pg())?;
    }
    if replaced > 0 {
        // Under the email's lock: nobody adds to its list meanwhile.
        let older: Vec<Vec<u8>> = replaced::table
            .filter(replaced::tenant_id.eq(tenant.0))
            .filter(replaced::email.eq(email.as_str()))
            .order((replaced::replaced_at.desc(), replaced::token_hash))
            .offset(MOST_REPLACED_KEPT)
            .select(replaced::token_hash)
            .load(tc.pg())?;
        if !older.is_empty() {
            diesel::delete(replaced::table.filter(replaced::token_hash.eq_any(older))).execute(tc.pg())?;
        }
    }
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let row: Row = diesel::insert_into(inv::table)
        .values((
            inv::tenant_id.eq(tenant.0),
            inv::email.eq(email.as_str()),
            inv::role.eq(role.as_str()),
            inv::token_hash.eq(hash(&token)),
            inv::invited_by.eq(actor.0),
            inv::created_at.eq(now),
            inv::expires_at.eq(now + Duration::days(VALID_DAYS)),
            inv::mailed.eq(mail),
        ))
        .returning(Row::as_returning())
        .get_result(tc.pg())?;
    audit::record(
        tc,
        Some(actor),
        "member.invited",
        "invitation",
        Some(row.id.to_string()),
        json!({"email": row.email, "role": role, "replaced": replaced > 0}),
    )?;
    let accept_url = format!("{}/invite#{token}", public_url.trim_end_matches('/'));
    if mail {
        let workspace = tenancy::find(tc.pg(), tenant)?.map(|t| t.name).unwrap_or_default();
        let inviter = users::display_name(tc.pg(), actor)?;
        let body = format!(
            "{inviter} invited you to work in {workspace} on Switchboard, as {role}.\n\n\
             Accept the invitation here (the link is good for {VALID_DAYS} days):\n{accept_url}\n\n\
             If you did not expect it, ignore this mail: nothing happens without the link.\n",
            role = role.as_str(),
        );
        crate::mail::queue(tc.pg(), email.as_str(), &format!("Join {workspace} on Switchboard"), &body)?;
    }
    Ok(Issued { invitation: row.listed(now)?, token, accept_url })
}

/// Pending invitations (expired ones too, until housekeeping), by id after
/// `after`.
pub fn list(tc: &mut TenantConn<'_>, after: Option<i64>, limit: i64, now: DateTime<Utc>) -> AppResult<Vec<Invitation>> {
    let mut q = inv::table
        .filter(inv::tenant_id.eq(tc.tenant().0))
        .filter(inv::accepted_at.is_null())
        .order(inv::id)
        .limit(limit)
        .select(Row::as_select())
        .into_boxed();
    if let Some(a) = after {
        q = q.filter(inv::id.gt(a));
    }
    q.load::<Row>(tc.pg())?.into_iter().map(|r| r.listed(now)).collect()
}

/// `DELETE /api/invitations/{id}`: the link stops working, and the links
/// it replaced are unknown too (not "use the newer one": there is none).
pub fn revoke(tc: &mut TenantConn<'_>, actor: UserId, id: i64) -> AppResult<()> {
    let gone: Option<(i64, String, String)> = diesel::delete(
        inv::table.filter(inv::id.eq(id)).filter(inv::tenant_id.eq(tc.tenant().0)).filter(inv::accepted_at.is_null()),
    )
    .returning((inv::id, inv::email, inv::role))
    .get_result(tc.pg())
    .optional()?;
    let gone = gone.ok_or_else(|| AppError::not_found("invitation"))?;
    forget_revoked(tc, Some(actor), gone, json!({}))
}

/// Takes back the pending invitations `inviter` made that they could not
/// make now: every one once they left the tenant or may invite nobody
/// (`now` none, or below admin), their owners' once they are no longer an
/// owner. An invitation grants what its inviter could: left standing, a
/// removed admin's link to their own address would let them back in.
/// Revoked as by `DELETE /api/invitations/{id}`, by `actor` (`None`: an
/// operator's command), audited with `by`: why. How many.
pub fn take_back(
    tc: &mut TenantConn<'_>,
    actor: Option<UserId>,
    inviter: UserId,
    now: Option<Role>,
    why: &str,
) -> AppResult<usize> {
    let beyond: &[Role] = match now {
        Some(Role::Owner) => return Ok(0),
        Some(Role::Admin) => &[Role::Owner],
        Some(Role::Agent | Role::Viewer) | None => &Role::ALL,
    };
    let gone: Vec<(i64, String, String)> = diesel::delete(
        inv::table
            .filter(inv::tenant_id.eq(tc.tenant().0))
            .filter(inv::invited_by.eq(inviter.0))
            .filter(inv::accepted_at.is_null())
            .filter(inv::role.eq_any(beyond.iter().map(|r| r.as_str()))),
    )
    .returning((inv::id, inv::email, inv::role))
    .get_results(tc.pg())?;
    let n = gone.len();
    for one in gone {
        forget_revoked(tc, actor, one, json!({"by": why, "invited_by": inviter.to_string()}))?;
    }
    Ok(n)
}

/// `user`, of `email`, became a member otherwise (`POST /api/members`,
/// the command line): its pending invitation here is settled, as accepted
/// by them, rather than listed as pending for a member. Its link then
/// answers as a used one: its accept, with their password, logs them in.
pub fn settled(tc: &mut TenantConn<'_>, user: UserId, email: &str, now: DateTime<Utc>) -> AppResult<()> {
    diesel::update(
        inv::table
            .filter(inv::tenant_id.eq(tc.tenant().0))
            .filter(inv::email.eq(email))
            .filter(inv::accepted_at.is_null()),
    )
    .set((inv::accepted_at.eq(now), inv::accepted_by.eq(user.0)))
    .execute(tc.pg())?;
    Ok(())
}

/// After a pending invitation `(id, email, role)` was deleted: the links it
/// replaced become unknown, and the revoke is audited with `more` details.
fn forget_revoked(
    tc: &mut TenantConn<'_>,
    actor: Option<UserId>,
    (id, email, role): (i64, String, String),
    mut more: serde_json::Value,
) -> AppResult<()> {
    diesel::delete(replaced::table.filter(replaced::tenant_id.eq(tc.tenant().0)).filter(replaced::email.eq(&email)))
        .execute(tc.pg())?;
    more["email"] = json!(email);
    more["role"] = json!(role);
    audit::record(tc, actor, "invitation.revoked", "invitation", Some(id.to_string()), more)?;
    Ok(())
}

/// What the holder of a link is shown before accepting it.
#[derive(Debug, Serialize)]
pub struct Details {
    pub tenant: TenantView,
    pub email: String,
    pub role: Role,
    pub expires_at: DateTime<Utc>,
    /// Whether the email has an account (then accepting asks its password,
    /// else a new one).
    pub has_account: bool,
}

/// A link as found, whatever its state (the accept re-checks it in its
/// transaction).
pub struct Found {
    pub tenant: TenantId,
    tenant_active: bool,
    pub details: Details,
    row: Row,
}

impl Found {
    /// Refuses a link that was used or has expired, or a suspended tenant.
    pub fn usable(&self, now: DateTime<Utc>) -> AppResult<()> {
        self.row.usable(now)?;
        if !self.tenant_active {
            return Err(AppError::forbidden("tenant_suspended", "this tenant is suspended"));
        }
        Ok(())
    }

    /// Whether it was accepted already (a retry may still be answered).
    pub fn accepted(&self) -> bool {
        self.row.accepted_at.is_some()
    }
}

/// Reads the invitation `token` names (404 for none).
pub fn find(conn: &mut PgConnection, token: &str) -> AppResult<Found> {
    // Not one of ours: no query.
    if !token.starts_with(PREFIX) || token.len() != PREFIX.len() + 43 {
        return Err(unknown());
    }
    let token_hash = hash(token);
    let row: Option<Row> =
        inv::table.filter(inv::token_hash.eq(&token_hash)).select(Row::as_select()).first(conn).optional()?;
    let Some(row) = row else {
        let was_replaced: bool =
            diesel::select(diesel::dsl::exists(replaced::table.filter(replaced::token_hash.eq(&token_hash))))
                .get_result(conn)?;
        return Err(if was_replaced { superseded() } else { unknown() });
    };
    let tenant = tenancy::find(conn, TenantId(row.tenant_id))?.ok_or_else(unknown)?;
    let email = Email::parse(&row.email)?;
    let has_account = users::find_by_email(conn, &email)?.is_some();
    let details = Details {
        tenant: (&tenant).into(),
        email: row.email.clone(),
        role: stored_role(&row.role)?,
        expires_at: row.expires_at,
        has_account,
    };
    Ok(Found { tenant: tenant.tenant_id(), tenant_active: tenant.is_active(), details, row })
}

/// The membership an accepted invitation gave, and the login it opened
/// (none where the tenant requires a second step the person lacks, or on
/// a retry that could not prove one).
#[derive(Debug, Serialize)]
pub struct Accepted {
    #[serde(flatten)]
    pub login: Option<Tokens>,
    pub user: UserView,
    pub tenant: TenantView,
    pub role: Role,
    /// The tenant requires two-step sign-in, which the person has not set up.
    pub mfa_setup_required: bool,
}

/// A login's tokens, as `POST /api/auth/login` answers them.
#[derive(Debug, Serialize)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    pub expires_in: i64,
}

/// What accepting takes: the password (new, hashed by the caller off any
/// transaction, for someone without an account; else their own) and the
/// name of a new account.
pub struct Acceptance {
    pub token: String,
    pub password: String,
    /// An existing account's second step, if it has one.
    pub second: super::mfa::SecondStep,
    pub new_password: Option<PasswordHash>,
    pub name: String,
}

/// `POST /api/auth/invitation/accept`, in the invitation's tenant.
pub fn accept(
    tc: &mut TenantConn<'_>,
    keys: &crate::crypto::Keyring,
    jwt: &JwtKeys,
    acceptance: &Acceptance,
    now: DateTime<Utc>,
) -> AppResult<Accepted> {
    let tenant = tc.tenant();
    let row: Row = inv::table
        .filter(inv::token_hash.eq(hash(&acceptance.token)))
        .filter(inv::tenant_id.eq(tenant.0))
        .select(Row::as_select())
        .for_update()
        .first(tc.pg())
        .optional()?
        .ok_or_else(unknown)?;
    if row.accepted_at.is_some() {
        return retried(tc, jwt, &row, &acceptance.password);
    }
    row.usable(now)?;
    let email = Email::parse(&row.email)?;
    let user = match users::find_by_email(tc.pg(), &email)? {
        Some(user) if user.password_matches(&acceptance.password) => {
            super::mfa::check_second_step(tc.pg(), keys, &user, &acceptance.second, now)?;
            user
        }
        Some(_) => return Err(AppError::unauthorized(super::session::INVALID_CREDENTIALS, "the password is wrong")),
        None => {
            // The account went between the look and now: hash and retry.
            let hash = acceptance.new_password.as_ref().ok_or_else(|| {
                AppError::conflict("invitation_changed", "this email's account changed meanwhile; try again")
            })?;
            users::insert(tc.pg(), &email, &acceptance.name, hash)?
        }
    };
    let invited = stored_role(&row.role)?;
    members::join(tc, user.user_id(), invited)?;
    let role = members::role_of(tc, user.user_id())?.ok_or_else(unknown)?;
    diesel::update(inv::table.find(row.id))
        .set((inv::accepted_at.eq(now), inv::accepted_by.eq(user.id)))
        .execute(tc.pg())?;
    audit::record(
        tc,
        Some(user.user_id()),
        "member.added",
        "user",
        Some(user.id.to_string()),
        json!({
            "email": user.email,
            "role": role,
            "by": "invitation",
            "invitation_id": row.id.to_string(),
            "invited_by": row.invited_by.map(|u| u.to_string()),
        }),
    )?;
    // Proved now: the password, and the second step of one who has it.
    accepted(tc, jwt, &user, role, true)
}

/// A second accept of a used link: the same membership for the person who
/// accepted it, with their password; 409 for anyone else.
fn retried(tc: &mut TenantConn<'_>, jwt: &JwtKeys, row: &Row, password: &str) -> AppResult<Accepted> {
    let used = || AppError::conflict(USED, "this invitation was accepted already");
    let user = match row.accepted_by {
        Some(id) => users::find(tc.pg(), UserId(id))?.ok_or_else(used)?,
        None => return Err(used()),
    };
    if !user.password_matches(password) {
        return Err(used());
    }
    let role = members::role_of(tc, user.user_id())?.ok_or_else(used)?;
    // Only the password was proved: enough for an account without a
    // second step, as at a login.
    let proved = user.totp_enabled_at.is_none();
    accepted(tc, jwt, &user, role, proved)
}

/// The answer: a login where `proved` covers what a login here asks.
fn accepted(
    tc: &mut TenantConn<'_>,
    jwt: &JwtKeys,
    user: &users::User,
    role: Role,
    proved: bool,
) -> AppResult<Accepted> {
    let id = tc.tenant();
    let tenant = tenancy::find(tc.pg(), id)?.ok_or_else(unknown)?;
    let mfa_setup_required = tenant.require_mfa && user.totp_enabled_at.is_none();
    let login = if proved && !mfa_setup_required {
        let pair = super::session::open(tc.pg(), jwt, user, &tenant, role)?;
        Some(Tokens {
            access_token: pair.access_token,
            refresh_token: pair.refresh_token,
            token_type: pair.token_type,
            expires_in: pair.expires_in,
        })
    } else {
        None
    };
    Ok(Accepted { login, user: user.public(), tenant: (&tenant).into(), role, mfa_setup_required })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_has_its_prefix_and_only_its_hash_is_kept() {
        let token = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode([9u8; 32]));
        assert_eq!(token.len(), PREFIX.len() + 43);
        assert_eq!(hash(&token).len(), 32);
        assert_ne!(hash(&token), hash(&token.replace('J', "K")));
    }
}
