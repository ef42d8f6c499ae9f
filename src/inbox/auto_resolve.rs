//! Auto-resolve: a channel's conversations left idle are resolved by the
//! server, so the open tab holds the work still to do rather than every
//! thread a customer stopped answering (an extension; the channel's
//! `settings.auto_resolve`).
//!
//! Decisions:
//! - `settings.auto_resolve` is `{"after_hours": 1 to` [`MOST_HOURS`]`,
//!   "unanswered": false}`, or `null` (the default): off.
//! - Idle: open or pending (a snoozed conversation keeps its own time, and
//!   once woken counts from its waking), with no message either way
//!   (`last_activity_at`, notes included) and no change (status,
//!   assignment, labels, priority, team, a read) for `after_hours`.
//! - A customer the team owes an answer (`waiting`: they wrote last and
//!   nobody answered) is left open: closing them silently is how a support
//!   inbox loses customers; reply targets are there to chase them. A team
//!   whose customers end with "thanks!" may set `unanswered: true`, and
//!   then those close too (the wait ends; one past its target is kept as
//!   missed, as any wait ended late).
//! - Resolved as a member resolves, without the member: announced
//!   (`conversation.updated`), audited `conversation.status_changed`
//!   `{from, to: "resolved", by: "auto_resolve", after_hours}` with no
//!   actor, so the reports count it among the resolved and as no agent's.
//!   No satisfaction survey and no message to the customer: someone
//!   silent for hours would get it out of the blue, on Meta's platforms
//!   mostly outside the 24-hour window. A customer who writes again
//!   reopens it, as always.
//! - On the 30-second clock (`sender::run_snooze_clock`), at most
//!   [`BATCH`] a tenant per tick, the longest idle first, so turning it on
//!   over a backlog of months resolves it in steps without a long lock. A
//!   conversation a webhook is writing is passed over (`SKIP LOCKED`) and
//!   looked at again next tick, when its new message has made it not idle.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel::sql_types::Bool;
use diesel::IntoSql;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::events::EventLog;
use super::views::ConversationRow;
use crate::db::tenant_schema::conversations as c;
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};

/// The longest idle time: 90 days.
pub const MOST_HOURS: u32 = 2_160;

/// Conversations resolved per tenant per tick.
pub const BATCH: i64 = 500;

/// A channel's auto-resolve ([module docs](self)).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AutoResolve {
    pub after_hours: u32,
    /// Also those whose customer waits for an answer.
    #[serde(default)]
    pub unanswered: bool,
}

impl AutoResolve {
    pub fn checked(self) -> AppResult<AutoResolve> {
        if !(1..=MOST_HOURS).contains(&self.after_hours) {
            return Err(AppError::invalid(
                "invalid_settings",
                format!("auto_resolve.after_hours is 1 to {MOST_HOURS} (90 days), or auto_resolve null for none"),
            ));
        }
        Ok(self)
    }
}

/// The statuses a conversation is resolved from when idle.
const IDLE_STATUSES: [&str; 2] = ["open", "pending"];

/// Resolves the idle conversations of every channel that asks for it, as
/// of `now`; how many.
pub fn resolve_idle(tc: &mut TenantConn<'_>, log: &mut EventLog, now: DateTime<Utc>) -> AppResult<usize> {
    let mut resolved = 0;
    for (channel, rule) in crate::channels::with_setting(tc, "auto_resolve", AutoResolve::checked)? {
        let left = BATCH - resolved as i64;
        if left <= 0 {
            break;
        }
        resolved += resolve_in(tc, log, channel, rule, now, left)?;
    }
    Ok(resolved)
}

fn resolve_in(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    channel: i64,
    rule: AutoResolve,
    now: DateTime<Utc>,
    limit: i64,
) -> AppResult<usize> {
    let cutoff = now - Duration::hours(i64::from(rule.after_hours));
    let idle: Vec<(i64, String)> = c::table
        .filter(c::channel_id.eq(channel))
        .filter(c::status.eq_any(IDLE_STATUSES))
        .filter(c::last_activity_at.lt(cutoff))
        .filter(c::updated_at.lt(cutoff))
        .filter(c::waiting_since.is_null().or(rule.unanswered.into_sql::<Bool>()))
        .order((c::last_activity_at, c::id))
        .limit(limit)
        .select((c::id, c::status))
        .for_no_key_update()
        .skip_locked()
        .load(tc.pg())?;
    if idle.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = idle.iter().map(|(id, _)| *id).collect();
    // Locked above: nothing changed them since they were found idle.
    let rows: Vec<ConversationRow> = diesel::update(c::table.filter(c::id.eq_any(&ids)))
        .set((
            c::status.eq("resolved"),
            super::waiting::kept_unless(true),
            c::queued_at.eq(None::<chrono::DateTime<chrono::Utc>>),
            c::updated_at.eq(diesel::dsl::now),
        ))
        .returning(ConversationRow::as_returning())
        .get_results(tc.pg())?;
    for (id, was) in &idle {
        crate::audit::record(
            tc,
            None,
            "conversation.status_changed",
            "conversation",
            Some(id.to_string()),
            json!({"from": was, "to": "resolved", "by": "auto_resolve", "after_hours": rule.after_hours}),
        )?;
    }
    super::conversations::announce(tc, log, &rows)?;
    Ok(rows.len())
}
