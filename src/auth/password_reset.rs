//! A forgotten password, reset by mail (an extension; needs mail on,
//! `mail`). Without mail the operator sets one (`switchboard user
//! password`).
//!
//! Decisions:
//! - `POST /api/auth/password-reset` `{email}` answers 202 whatever the
//!   email: whether an account has it is not told, so the form finds out
//!   nobody's address. With mail off it is 503 `mail_unavailable`, the same
//!   for everyone (an address that is not one is 422 `invalid_email`
//!   first, mail on or off). Nor is it told by the time the answer takes: an
//!   account's reset writes rows an unknown address does not, so every
//!   answer waits until [`ANSWER_AFTER`] has passed since the request came
//!   (an idle wait, no thread or connection held).
//! - For an account, a link `{SWITCHBOARD_PUBLIC_URL}/reset#sbr_…` is
//!   mailed to its email: `sbr_` and 43 characters of randomness, in the
//!   fragment (never sent to a server, so never logged), only its SHA-256
//!   kept, good for [`VALID_MINUTES`] minutes. Asking again replaces it;
//!   at most one mail per account every [`RESEND_AFTER_SECS`] seconds (a
//!   request within it is answered the same and mails nothing), so the
//!   form cannot flood someone's mailbox.
//! - `POST /api/auth/password-reset/confirm` `{token, password}` sets the
//!   password (checked as any new password) and ends every login of the
//!   person in every tenant, as a change of password does (their sockets
//!   close): 204. Once: a used or unknown link is 404 `reset_not_found`,
//!   an expired one 410 `reset_expired`. Two-step sign-in stays: the
//!   password is only its first step. Not in any tenant's audit log (no
//!   tenant did it); logged with the person's id.
//! - Housekeeping deletes resets a day after they expire.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::password::PasswordHash;
use super::users::{self, Email};
use crate::db::schema::{password_resets as pr, users as u};
use crate::error::{AppError, AppResult, ErrorKind};
use crate::ids::UserId;

/// What every reset token starts with.
pub const PREFIX: &str = "sbr_";
/// How long a link is good for.
pub const VALID_MINUTES: i64 = 60;
/// The least time between two mails to one account.
pub const RESEND_AFTER_SECS: i64 = 60;
/// How long after the request every answer to it comes, so that an
/// account's and an unknown address's take the same (their work takes a
/// few milliseconds, more under load).
pub const ANSWER_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

fn unknown() -> AppError {
    AppError::new(ErrorKind::NotFound, "reset_not_found", "this link was used already, replaced, or is none of ours")
}

/// `POST /api/auth/password-reset`: mails a link to `email`'s account, if
/// there is one and none was mailed just now. `public_url` is where the
/// link points. Whether a mail went is for the caller's log, not the
/// answer.
pub fn request(conn: &mut PgConnection, email: &Email, public_url: &str, now: DateTime<Utc>) -> AppResult<bool> {
    conn.transaction(|conn| {
        let Some(user) = users::find_by_email(conn, email)? else { return Ok(false) };
        // Two requests at once: the second sees the first's row.
        users::own_for_update(conn, user.user_id())?;
        let recent: i64 = pr::table
            .filter(pr::user_id.eq(user.id))
            .filter(pr::used_at.is_null())
            .filter(pr::created_at.gt(now - Duration::seconds(RESEND_AFTER_SECS)))
            .count()
            .get_result(conn)?;
        if recent > 0 {
            return Ok(false);
        }
        diesel::delete(pr::table.filter(pr::user_id.eq(user.id)).filter(pr::used_at.is_null())).execute(conn)?;
        let mut bytes = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        let token = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        diesel::insert_into(pr::table)
            .values((
                pr::user_id.eq(user.id),
                pr::token_hash.eq(hash(&token)),
                pr::created_at.eq(now),
                pr::expires_at.eq(now + Duration::minutes(VALID_MINUTES)),
            ))
            .execute(conn)?;
        let link = format!("{}/reset#{token}", public_url.trim_end_matches('/'));
        let body = format!(
            "Someone (we hope you) asked to reset the password of the Switchboard account {email}.\n\n\
             Choose a new password here (the link is good for {VALID_MINUTES} minutes):\n{link}\n\n\
             If you did not ask, ignore this mail: your password stays as it is.\n",
            email = user.email,
        );
        crate::mail::queue(conn, &user.email, "Reset your Switchboard password", &body)?;
        Ok(true)
    })
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = pr)]
struct Reset {
    id: i64,
    user_id: i64,
    expires_at: DateTime<Utc>,
    used_at: Option<DateTime<Utc>>,
}

/// The reset `token` names, if it may still be used: its id and person
/// (404 `reset_not_found`, 410 `reset_expired`). Locked when `lock`.
fn usable(conn: &mut PgConnection, token: &str, now: DateTime<Utc>, lock: bool) -> AppResult<(i64, i64)> {
    // Not one of ours: no query.
    if !token.starts_with(PREFIX) || token.len() != PREFIX.len() + 43 {
        return Err(unknown());
    }
    let query = pr::table.filter(pr::token_hash.eq(hash(token))).select(Reset::as_select());
    let found: Option<Reset> = if lock { query.for_update().first(conn) } else { query.first(conn) }.optional()?;
    let Reset { id, user_id: user, expires_at, used_at } = found.ok_or_else(unknown)?;
    if used_at.is_some() {
        return Err(unknown());
    }
    if expires_at <= now {
        return Err(AppError::new(ErrorKind::Gone, "reset_expired", "this link has expired; ask for a new one"));
    }
    Ok((id, user))
}

/// Whether `token` may still be used: checked before its new password is
/// hashed, so a flood of made-up links costs no hashing.
pub fn check(conn: &mut PgConnection, token: &str, now: DateTime<Utc>) -> AppResult<()> {
    usable(conn, token, now, false).map(|_| ())
}

/// `POST /api/auth/password-reset/confirm`: the password of the link's
/// account becomes `new` (hashed by the caller, off any transaction), every
/// login of theirs ends. Answers whose password it was.
pub fn confirm(conn: &mut PgConnection, token: &str, new: &PasswordHash, now: DateTime<Utc>) -> AppResult<UserId> {
    conn.transaction(|conn| {
        let (id, user) = usable(conn, token, now, true)?;
        diesel::update(u::table.find(user)).set(u::password_hash.eq(new.as_str())).execute(conn)?;
        diesel::update(pr::table.find(id)).set(pr::used_at.eq(now)).execute(conn)?;
        super::account::end_logins(conn, UserId(user), None)?;
        Ok(UserId(user))
    })
}
