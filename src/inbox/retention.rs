//! Keeping conversations no longer than needed: a channel's
//! `settings.retention` deletes its resolved conversations some days after
//! they went quiet (an extension), for a business whose privacy policy
//! promises customers their messages go after a while.
//!
//! Decisions:
//! - `settings.retention` is `{"after_days": 1 to` [`MOST_DAYS`]`}`, or
//!   `null` (the default): kept for ever.
//! - Only resolved conversations go, once both their last message
//!   (`last_activity_at`) and their last change (`updated_at`) are older
//!   than `after_days`: open, pending and snoozed ones are work still to
//!   do, and a conversation with a reply still waiting to be sent stays
//!   until it is.
//! - A conversation goes as an erasure takes one: with its messages,
//!   files, ratings and mentions; the live log's copies are emptied (no
//!   socket resuming and no integrator's endpoint is sent them), and it is
//!   announced as `conversation.deleted` `{id, channel_id}`. The contact
//!   stays (the team's name, details and attributes, and Meta's id to
//!   answer with), so a customer who writes again opens a new
//!   conversation. The audit log keeps who did what, and records each
//!   sweep of a channel once (`conversations.expired`, no actor, with the
//!   counts). Its messages are taken in id order before the cascade, as
//!   a webhook batch takes those it names (`ingest::lock_named`). Reports
//!   over the deleted days lose what they read from conversations and
//!   messages (opened, messages, replies, first responses, surveys); what
//!   they read from the audit log stays (resolutions, conversations
//!   started, the queue).
//! - Meta's webhook bodies are kept `SWITCHBOARD_WEBHOOK_RETENTION_HOURS`
//!   (24 by default), so with that default they hold no copy of what a
//!   retention of a day or more deletes.
//! - On the 30-second clock (`sender::run_snooze_clock`), at most
//!   [`BATCH`] conversations a tenant per tick, the longest quiet first,
//!   so turning it on over years of history deletes it in steps. A
//!   conversation a webhook is writing is passed over (`SKIP LOCKED`):
//!   its new message makes it not quiet.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::events::EventLog;
use crate::db::tenant_schema::{conversations as c, messages as m};
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};

/// The longest retention: ten years.
pub const MOST_DAYS: u32 = 3_650;

/// Conversations deleted per tenant per tick.
pub const BATCH: i64 = 100;

/// A channel's retention ([module docs](self)).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    pub after_days: u32,
}

impl Retention {
    pub fn checked(self) -> AppResult<Retention> {
        if !(1..=MOST_DAYS).contains(&self.after_days) {
            return Err(AppError::invalid(
                "invalid_settings",
                format!("retention.after_days is 1 to {MOST_DAYS}, or retention null to keep conversations"),
            ));
        }
        Ok(self)
    }
}

/// Deletes the conversations every channel that asks for it keeps no
/// longer, as of `now`; how many.
pub fn expire(tc: &mut TenantConn<'_>, log: &mut EventLog, now: DateTime<Utc>) -> AppResult<usize> {
    let mut deleted = 0;
    for (channel, rule) in crate::channels::with_setting(tc, "retention", Retention::checked)? {
        let left = BATCH - deleted as i64;
        if left <= 0 {
            break;
        }
        deleted += expire_in(tc, log, channel, rule, now, left)?;
    }
    Ok(deleted)
}

fn expire_in(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    channel: i64,
    rule: Retention,
    now: DateTime<Utc>,
    limit: i64,
) -> AppResult<usize> {
    let cutoff = now - Duration::days(i64::from(rule.after_days));
    let unsent = m::table.filter(m::conversation_id.eq(c::id)).filter(m::status.eq("pending"));
    let due: Vec<i64> = c::table
        .filter(c::channel_id.eq(channel))
        .filter(c::status.eq("resolved"))
        .filter(c::last_activity_at.lt(cutoff))
        .filter(c::updated_at.lt(cutoff))
        .filter(diesel::dsl::not(diesel::dsl::exists(unsent)))
        .order((c::last_activity_at, c::id))
        .limit(limit)
        .select(c::id)
        .for_update()
        .skip_locked()
        .load(tc.pg())?;
    if due.is_empty() {
        return Ok(0);
    }
    // A batch holding a late receipt's message is waited for, not
    // deadlocked with.
    let messages = super::messages::take_for_deletion(tc, &due)?;
    // Locked above: nothing changed them since they were found quiet.
    diesel::delete(c::table.filter(c::id.eq_any(&due))).execute(tc.pg())?;
    super::events::redact_conversations(tc, &due)?;
    for id in &due {
        let data = json!({"id": id.to_string(), "channel_id": channel.to_string()});
        log.append(tc, "conversation.deleted", Some(channel), Some(*id), data)?;
    }
    crate::audit::record(
        tc,
        None,
        "conversations.expired",
        "channel",
        Some(channel.to_string()),
        json!({"conversations": due.len(), "messages": messages, "after_days": rule.after_days}),
    )?;
    Ok(due.len())
}
