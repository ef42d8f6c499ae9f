//! Mentions in the team's notes: `POST …/messages` with `private: true`
//! may name `mentions`, the ids of members to call in ("@Ann, can you
//! check the refund?"). Each is told at once and finds the note again in
//! `GET /api/mentions`.
//!
//! Decisions:
//! - The client names the members (its picker knows their ids); the
//!   note's text is the author's, shown as written. At most
//!   [`MOST_MENTIONS`]; each must be a member who may see the
//!   conversation's channel (`invalid_mentions` names one who is not), so
//!   nobody is called to a conversation they cannot open. A member named
//!   twice counts once.
//! - Each mentioned member but the author gets a `notification` event
//!   `{kind: "mention", user_id, by, conversation_id, channel_id,
//!   message_id, preview}`. Like every notification it goes to the
//!   channel's sockets; a client shows the ones whose `user_id` is its
//!   own. Mentions ring whatever the channel's `notifications` setting
//!   (that one mutes customers' messages, not colleagues).
//! - A note may call in whole teams too (`mention_teams`, up to
//!   [`MOST_TEAMS`] team ids; one that is no team is `invalid_mentions`):
//!   each of their members who may see the conversation's channel is
//!   mentioned as if named (those who may not are passed over, not
//!   refused: a team is not picked member by member); the note then
//!   mentions those members, and a team's later changes do not change it.
//! - A retried note (same `client_id`) notifies nobody again.
//! - Editing a note (`PATCH /api/messages/{id}`) may give `mentions`
//!   again (or `mention_teams`, or both): the note then mentions exactly
//!   those; a member it names anew is told, one it no longer names stops
//!   finding it. Left out, they stay.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use serde_json::json;

use super::events::EventLog;
use super::views::{ConversationRow, MessageRow};
use super::{ConversationId, MessageId};
use crate::auth::Role;
use crate::channels::{self, ChannelId};
use crate::db::tenant_schema::{messages as m, note_mentions as nm};
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

/// The most members one note mentions.
pub const MOST_MENTIONS: usize = 20;

/// The most teams one note calls in.
pub const MOST_TEAMS: usize = 10;

/// Whom a note calls in, as asked: member ids, and team ids whose members
/// it calls in.
#[derive(Debug, Clone, Default)]
pub struct Mentions {
    pub members: Vec<String>,
    pub teams: Vec<String>,
}

/// The members `raw` names, checked against conversation `conv`: once
/// each, every named one a member who may see its channel, and the
/// members of the named teams who may.
pub fn checked(tc: &mut TenantConn<'_>, conv: &ConversationRow, raw: &Mentions) -> AppResult<Vec<UserId>> {
    let mut ids = checked_members(tc, conv, &raw.members)?;
    if raw.teams.len() > MOST_TEAMS {
        return Err(AppError::invalid("invalid_mentions", format!("a note calls in at most {MOST_TEAMS} teams")));
    }
    let channel = ChannelId(conv.channel_id);
    for r in &raw.teams {
        let not_one = || AppError::invalid("invalid_mentions", format!("`{r}` is not a team"));
        let team = super::teams::TeamId::parse(r.trim()).ok_or_else(not_one)?;
        let members = super::teams::members_of(tc, team)?.ok_or_else(not_one)?;
        for member in members {
            if ids.contains(&member) {
                continue;
            }
            let Some(role) = crate::auth::members::role_of(tc, member)? else { continue };
            if channels::can_see(tc, member, role, channel)? {
                ids.push(member);
            }
        }
    }
    Ok(ids)
}

fn checked_members(tc: &mut TenantConn<'_>, conv: &ConversationRow, raw: &[String]) -> AppResult<Vec<UserId>> {
    if raw.len() > MOST_MENTIONS {
        return Err(AppError::invalid("invalid_mentions", format!("a note mentions at most {MOST_MENTIONS} members")));
    }
    let mut ids: Vec<UserId> = Vec::new();
    for r in raw {
        let not_one =
            || AppError::invalid("invalid_mentions", format!("`{r}` is not a member who can see this conversation"));
        let id = r.trim().parse::<i64>().ok().filter(|i| *i > 0).map(UserId).ok_or_else(not_one)?;
        if ids.contains(&id) {
            continue;
        }
        let Some(role) = crate::auth::members::role_of(tc, id)? else { return Err(not_one()) };
        if !channels::can_see(tc, id, role, ChannelId(conv.channel_id))? {
            return Err(not_one());
        }
        ids.push(id);
    }
    Ok(ids)
}

/// Records that note `note`, by `author`, mentions `members`, and tells
/// each (but the author) it did not mention already.
pub fn record(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    conv: &ConversationRow,
    note: &MessageRow,
    author: UserId,
    members: &[UserId],
) -> AppResult<()> {
    if members.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = members
        .iter()
        .map(|u| (nm::message_id.eq(note.id), nm::user_id.eq(u.0), nm::conversation_id.eq(conv.id)))
        .collect();
    let added: Vec<i64> = diesel::insert_into(nm::table)
        .values(&rows)
        .on_conflict_do_nothing()
        .returning(nm::user_id)
        .get_results(tc.pg())?;
    let preview: String = note.text.as_deref().unwrap_or("[file]").chars().take(120).collect();
    for member in members.iter().filter(|u| **u != author && added.contains(&u.0)) {
        log.append_for(
            tc,
            *member,
            "notification",
            Some(conv.channel_id),
            Some(conv.id),
            json!({"kind": "mention", "user_id": member.to_string(), "by": author.to_string(),
                   "conversation_id": conv.id.to_string(), "channel_id": conv.channel_id.to_string(),
                   "message_id": note.id.to_string(), "preview": preview}),
        )?;
    }
    Ok(())
}

/// An edited note mentions `members` now: those it no longer names stop
/// finding it in their mentions, those it names anew are told.
pub fn replace(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    conv: &ConversationRow,
    note: &MessageRow,
    author: UserId,
    members: &[UserId],
) -> AppResult<()> {
    let kept: Vec<i64> = members.iter().map(|u| u.0).collect();
    diesel::delete(nm::table.filter(nm::message_id.eq(note.id)).filter(nm::user_id.ne_all(&kept))).execute(tc.pg())?;
    record(tc, log, conv, note, author, members)
}

/// The members note `id` mentions, in id order.
pub fn of_note(tc: &mut TenantConn<'_>, id: MessageId) -> AppResult<Vec<UserId>> {
    let ids: Vec<i64> =
        nm::table.filter(nm::message_id.eq(id.0)).select(nm::user_id).order(nm::user_id).load(tc.pg())?;
    Ok(ids.into_iter().map(UserId).collect())
}

/// A note that mentions the caller, as `GET /api/mentions` lists it.
#[derive(Debug, Serialize)]
pub struct Mention {
    pub message_id: MessageId,
    pub conversation_id: ConversationId,
    #[serde(serialize_with = "crate::ids::as_string")]
    pub by: i64,
    pub text: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The notes that mention `user`, newest first, after cursor `before` (a
/// message id), in the channels they may still see.
pub fn of(
    tc: &mut TenantConn<'_>,
    user: UserId,
    role: Role,
    before: Option<i64>,
    limit: i64,
) -> AppResult<Vec<Mention>> {
    let mut q = nm::table
        .inner_join(m::table)
        .filter(nm::user_id.eq(user.0))
        .filter(m::deleted_at.is_null())
        .select((m::id, m::conversation_id, m::sender_user_id, m::text, m::created_at))
        .order(nm::message_id.desc())
        .limit(limit)
        .into_boxed();
    if let Some(b) = before {
        q = q.filter(nm::message_id.lt(b));
    }
    if !role.at_least(Role::Admin) {
        use crate::db::tenant_schema::channel_members as cm;
        q = q.filter(m::channel_id.eq_any(cm::table.filter(cm::user_id.eq(user.0)).select(cm::channel_id)));
    }
    type Row = (i64, i64, Option<i64>, Option<String>, DateTime<Utc>);
    let rows: Vec<Row> = q.load(tc.pg())?;
    Ok(rows
        .into_iter()
        .map(|(id, conversation, by, text, created_at)| Mention {
            message_id: MessageId(id),
            conversation_id: ConversationId(conversation),
            by: by.unwrap_or_default(),
            text,
            created_at,
        })
        .collect())
}
