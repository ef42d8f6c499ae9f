//! Canned responses: a tenant's shortcuts to often-typed answers.
//!
//! The composer finds them as the agent types (`GET
//! /api/canned-responses?q=`): those whose shortcut starts with the text
//! (a leading `/`, as typed, is passed over) or whose text holds it,
//! either case, in the usual pages. With `conversation_id`, each also
//! has `rendered`: its text with its variables (`variables`,
//! `{{contact.first_name}}`…) filled in for that conversation and the
//! member asking, ready for the composer (a conversation they may not see
//! is 404).
//!
//! A tenant keeps at most [`MOST_CANNED`] (409 `too_many_canned_responses`):
//! far more than a team types from, few enough that the composer's search
//! stays quick and one tenant cannot fill the database with them.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use crate::db::tenant_schema::canned_responses as cr;
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

/// Canned responses a tenant keeps.
pub const MOST_CANNED: i64 = 1_000;

#[derive(Debug, Serialize, Queryable)]
pub struct Canned {
    #[serde(serialize_with = "crate::ids::as_string")]
    pub id: i64,
    pub shortcut: String,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

/// A page of them by id, those `text` finds only when given (see the
/// module docs).
pub fn list(tc: &mut TenantConn<'_>, text: Option<&str>, after: Option<i64>, limit: i64) -> AppResult<Vec<Canned>> {
    let mut q =
        cr::table.select((cr::id, cr::shortcut, cr::text, cr::created_at)).order(cr::id).limit(limit).into_boxed();
    if let Some(a) = after {
        q = q.filter(cr::id.gt(a));
    }
    let text = text.map(|t| t.trim().trim_start_matches('/')).filter(|t| !t.is_empty());
    if let Some(t) = text {
        let anywhere = super::contains_pattern(t);
        // The same escaping, without the leading `%`: a prefix.
        let prefix = anywhere[1..].to_string();
        q = q.filter(cr::shortcut.ilike(prefix).or(cr::text.ilike(anywhere)));
    }
    Ok(q.load(tc.pg())?)
}

/// A canned response with its text filled in for one conversation.
#[derive(Debug, Serialize)]
pub struct Filled {
    #[serde(flatten)]
    pub canned: Canned,
    /// Its text with its variables filled in (`variables`).
    pub rendered: String,
}

/// `items` filled in for `conversation` as `user` would write in it (see
/// the module docs): 404 for a conversation they may not see.
pub fn fill(
    tc: &mut TenantConn<'_>,
    user: UserId,
    role: crate::auth::Role,
    conversation: super::ConversationId,
    items: Vec<Canned>,
) -> AppResult<Vec<Filled>> {
    let row = super::messages::visible_conversation(tc, user, role, conversation)?;
    let looked = match items.iter().any(|c| super::variables::any(&c.text)) {
        true => super::variables::look_up(tc, row.id, Some(user))?,
        false => super::variables::Looked::default(),
    };
    let values = looked.values();
    Ok(items.into_iter().map(|c| Filled { rendered: super::variables::render(&c.text, &values), canned: c }).collect())
}

/// A shortcut as kept (without a leading `/`), if it is one.
fn checked_shortcut(shortcut: &str) -> AppResult<&str> {
    let shortcut = shortcut.trim().trim_start_matches('/');
    if shortcut.is_empty() || shortcut.chars().count() > 50 || shortcut.chars().any(char::is_whitespace) {
        return Err(AppError::invalid("invalid_shortcut", "shortcut must be 1 to 50 characters without spaces"));
    }
    Ok(shortcut)
}

fn check_text(text: &str) -> AppResult<()> {
    if text.trim().is_empty() || text.chars().count() > 4096 {
        return Err(AppError::invalid("invalid_text", "text must be 1 to 4096 characters"));
    }
    Ok(())
}

fn shortcut_taken() -> AppError {
    AppError::conflict("shortcut_taken", "another canned response has this shortcut")
}

/// Adds one; whether it was added. The same shortcut and text again (a
/// retry, at the limit too) is answered with the one stored; another text
/// under a shortcut in use is 409 `shortcut_taken`; one more than
/// [`MOST_CANNED`], 409 `too_many_canned_responses`.
pub fn create(tc: &mut TenantConn<'_>, user: UserId, shortcut: &str, text: &str) -> AppResult<(Canned, bool)> {
    let shortcut = checked_shortcut(shortcut)?;
    check_text(text)?;
    // Two creates at once would both count one short of the limit.
    let tenant = tc.tenant().0.to_string();
    crate::db::locks::hold(tc.pg(), crate::db::locks::LockClass::CannedResponses, &tenant)?;
    let stored: Option<Canned> = cr::table
        .filter(cr::shortcut.eq(shortcut))
        .select((cr::id, cr::shortcut, cr::text, cr::created_at))
        .first(tc.pg())
        .optional()?;
    if let Some(stored) = stored {
        return match stored.text == text {
            true => Ok((stored, false)),
            false => Err(shortcut_taken()),
        };
    }
    let kept: i64 = cr::table.count().get_result(tc.pg())?;
    if kept >= MOST_CANNED {
        return Err(AppError::conflict(
            "too_many_canned_responses",
            format!("a tenant keeps at most {MOST_CANNED} canned responses: delete some first"),
        ));
    }
    let added: Canned = diesel::insert_into(cr::table)
        .values((cr::shortcut.eq(shortcut), cr::text.eq(text), cr::created_by.eq(user.0)))
        .returning((cr::id, cr::shortcut, cr::text, cr::created_at))
        .get_result(tc.pg())?;
    Ok((added, true))
}

/// Changes one's shortcut, text or both.
pub fn update(tc: &mut TenantConn<'_>, id: i64, shortcut: Option<&str>, text: Option<&str>) -> AppResult<Canned> {
    let shortcut = shortcut.map(checked_shortcut).transpose()?;
    if let Some(t) = text {
        check_text(t)?;
    }
    let current: Canned = cr::table
        .find(id)
        .select((cr::id, cr::shortcut, cr::text, cr::created_at))
        .for_update()
        .first(tc.pg())
        .optional()?
        .ok_or_else(|| AppError::not_found("canned response"))?;
    let (shortcut, text) = (shortcut.unwrap_or(&current.shortcut), text.unwrap_or(&current.text));
    if shortcut != current.shortcut {
        let taken: Option<i64> =
            cr::table.filter(cr::shortcut.eq(shortcut)).select(cr::id).first(tc.pg()).optional()?;
        if taken.is_some() {
            return Err(shortcut_taken());
        }
    }
    Ok(diesel::update(cr::table.find(id))
        .set((cr::shortcut.eq(shortcut), cr::text.eq(text)))
        .returning((cr::id, cr::shortcut, cr::text, cr::created_at))
        .get_result(tc.pg())?)
}

pub fn delete(tc: &mut TenantConn<'_>, id: i64) -> AppResult<()> {
    let n = diesel::delete(cr::table.find(id)).execute(tc.pg())?;
    if n == 0 {
        return Err(AppError::not_found("canned response"));
    }
    Ok(())
}
