//! Conversations: the filtered inbox list, one conversation, and the changes
//! agents make (status, assignee, snooze, read).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde_json::json;

use super::events::EventLog;
use super::messages::visible_conversation;
use super::views::{ConversationRow, ConversationView, Names};
use super::{planned_for_the_pattern, sb_fold_contains, ConversationId};
use crate::audit;
use crate::auth::Role;
use crate::db::schema::{memberships, send_queue};
use crate::db::tenant_schema::{channel_members, contacts, conversations as c, messages};
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub status: Option<String>,
    pub channel_id: Option<i64>,
    /// `Some(None)`: unassigned; `Some(Some(u))`: assigned to u.
    pub assignee: Option<Option<i64>>,
    pub unread: bool,
    pub q: Option<String>,
}

pub const STATUSES: [&str; 4] = ["open", "pending", "snoozed", "resolved"];

/// Newest activity first, keyset on (last_activity_at, id).
pub fn list(
    tc: &mut TenantConn<'_>,
    user: UserId,
    role: Role,
    f: &Filter,
    after: Option<(DateTime<Utc>, i64)>,
    limit: i64,
) -> AppResult<Vec<ConversationView>> {
    let mut q = c::table.select(ConversationRow::as_select()).into_boxed();
    if !role.at_least(Role::Admin) {
        let mine =
            channel_members::table.filter(channel_members::user_id.eq(user.0)).select(channel_members::channel_id);
        q = q.filter(c::channel_id.eq_any(mine));
    }
    if let Some(s) = &f.status {
        q = q.filter(c::status.eq(s.clone()));
    }
    if let Some(ch) = f.channel_id {
        q = q.filter(c::channel_id.eq(ch));
    }
    match f.assignee {
        Some(None) => q = q.filter(c::assignee_id.is_null()),
        Some(Some(u)) => q = q.filter(c::assignee_id.eq(u)),
        None => {}
    }
    if f.unread {
        q = q.filter(c::unread_count.gt(0));
    }
    let search = f.q.as_deref().map(str::trim).filter(|t| !t.is_empty());
    if let Some(text) = search {
        // Folded on both sides: the columns hold folded text, as do the
        // trigram indexes on them.
        let pattern = sb_fold_contains(text.to_string());
        let by_message =
            messages::table.filter(messages::search_text.like(pattern.clone())).select(messages::conversation_id);
        let by_contact = contacts::table.filter(contacts::search_name.like(pattern)).select(contacts::id);
        q = q.filter(c::id.eq_any(by_message).or(c::contact_id.eq_any(by_contact)));
    }
    if let Some((at, id)) = after {
        q = q.filter(c::last_activity_at.lt(at).or(c::last_activity_at.eq(at).and(c::id.lt(id))));
    }
    let q = q.order((c::last_activity_at.desc(), c::id.desc())).limit(limit);
    let rows: Vec<ConversationRow> =
        if search.is_some() { planned_for_the_pattern(tc, |pg| q.load(pg))? } else { q.load(tc.pg())? };
    Names::default().conversations(tc, &rows)
}

pub fn get(tc: &mut TenantConn<'_>, user: UserId, role: Role, id: ConversationId) -> AppResult<ConversationView> {
    let row = visible_conversation(tc, user, role, id)?;
    Names::default().conversation(tc, &row)
}

#[derive(Debug, Default)]
pub struct Patch {
    pub status: Option<String>,
    /// `Some(None)` unassigns.
    pub assignee_id: Option<Option<UserId>>,
    pub snoozed_until: Option<Option<DateTime<Utc>>>,
}

pub fn patch(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: ConversationId,
    p: Patch,
) -> AppResult<ConversationView> {
    let row = visible_conversation(tc, user, role, id)?;
    let mut status = row.status.clone();
    let mut snoozed_until = row.snoozed_until;
    let mut assignee = row.assignee_id;
    if let Some(s) = &p.status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(AppError::invalid("invalid_status", "status must be open, pending, snoozed or resolved"));
        }
        status = s.clone();
    }
    if let Some(until) = p.snoozed_until {
        snoozed_until = until;
        if until.is_some() && p.status.is_none() {
            status = "snoozed".into();
        }
    }
    if status == "snoozed" {
        match snoozed_until {
            Some(t) if t > Utc::now() => {}
            _ => return Err(AppError::invalid("invalid_snooze", "snoozing needs snoozed_until in the future")),
        }
    } else {
        snoozed_until = None;
    }
    if let Some(a) = p.assignee_id {
        if let Some(a) = a {
            let member: Option<String> = memberships::table
                .filter(memberships::tenant_id.eq(tc.tenant().0))
                .filter(memberships::user_id.eq(a.0))
                .select(memberships::role)
                .first(tc.pg())
                .optional()?;
            let role = member.as_deref().and_then(Role::parse);
            let Some(role) = role.filter(|r| r.can_write()) else {
                return Err(AppError::invalid("invalid_assignee", "the assignee must be a member who can answer"));
            };
            if !crate::channels::can_see(tc, a, role, crate::channels::ChannelId(row.channel_id))? {
                return Err(AppError::invalid("invalid_assignee", "the assignee cannot see this channel"));
            }
        }
        assignee = a.map(|u| u.0);
    }
    // A retried or repeated PATCH changes nothing: no write, no event.
    if (&status, snoozed_until, assignee) == (&row.status, row.snoozed_until, row.assignee_id) {
        return Names::default().conversation(tc, &row);
    }
    let updated: ConversationRow = diesel::update(c::table.find(row.id))
        .set((
            c::status.eq(&status),
            c::snoozed_until.eq(snoozed_until),
            c::assignee_id.eq(assignee),
            c::updated_at.eq(diesel::dsl::now),
        ))
        .returning(ConversationRow::as_returning())
        .get_result(tc.pg())?;
    if status != row.status {
        audit::record(
            tc,
            Some(user),
            "conversation.status_changed",
            "conversation",
            Some(id.to_string()),
            json!({"from": row.status, "to": status}),
        )?;
    }
    if assignee != row.assignee_id {
        audit::record(
            tc,
            Some(user),
            "conversation.assigned",
            "conversation",
            Some(id.to_string()),
            json!({"from": row.assignee_id.map(|a| a.to_string()), "to": assignee.map(|a| a.to_string())}),
        )?;
    }
    let view = Names::default().conversation(tc, &updated)?;
    log.append(tc, "conversation.updated", Some(updated.channel_id), Some(updated.id), &view)?;
    Ok(view)
}

/// Marks the conversation read and queues the platform's "seen" signal.
pub fn mark_read(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: ConversationId,
) -> AppResult<bool> {
    let row = visible_conversation(tc, user, role, id)?;
    if row.unread_count == 0 {
        return Ok(false);
    }
    let updated: ConversationRow = diesel::update(c::table.find(row.id))
        .set((c::unread_count.eq(0), c::updated_at.eq(diesel::dsl::now)))
        .returning(ConversationRow::as_returning())
        .get_result(tc.pg())?;
    diesel::insert_into(send_queue::table)
        .values((
            send_queue::tenant_id.eq(tc.tenant().0),
            send_queue::conversation_id.eq(row.id),
            send_queue::kind.eq("mark_seen"),
        ))
        .execute(tc.pg())?;
    let view = Names::default().conversation(tc, &updated)?;
    log.append(tc, "conversation.updated", Some(updated.channel_id), Some(updated.id), &view)?;
    Ok(true)
}

/// Wakes snoozed conversations whose time has come; returns how many.
pub fn wake_snoozed(tc: &mut TenantConn<'_>, log: &mut EventLog) -> AppResult<usize> {
    let woken: Vec<ConversationRow> =
        diesel::update(c::table.filter(c::status.eq("snoozed")).filter(c::snoozed_until.le(Utc::now())))
            .set((c::status.eq("open"), c::snoozed_until.eq(None::<DateTime<Utc>>), c::updated_at.eq(diesel::dsl::now)))
            .returning(ConversationRow::as_returning())
            .get_results(tc.pg())?;
    announce(tc, log, &woken)?;
    Ok(woken.len())
}

/// Logs `conversation.updated` with the summary of each conversation.
pub fn announce(tc: &mut TenantConn<'_>, log: &mut EventLog, rows: &[ConversationRow]) -> AppResult<()> {
    let views = Names::default().conversations(tc, rows)?;
    for (row, view) in rows.iter().zip(&views) {
        log.append(tc, "conversation.updated", Some(row.channel_id), Some(row.id), view)?;
    }
    Ok(())
}
