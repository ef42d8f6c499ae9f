//! Who is waiting for the team, since when, and the team's targets for
//! answering them: what a support lead watches ("nobody waits more than
//! an hour; urgent ones fifteen minutes").
//!
//! Decisions:
//! - A conversation's `waiting_since` is the time (Meta's) of its
//!   customer's oldest message the team has not answered. Their message
//!   sets it when it is not set. An answer clears it: an agent's reply,
//!   file or template as it is written (a macro's too), or the business
//!   writing from Meta's own apps (an echo) at or after it. An automatic
//!   message (greeting, away reply, survey) answers nothing: the customer
//!   still waits for a person; nor does a note. Resolving clears it; a
//!   message that reopens the conversation starts it again. Snoozing or
//!   setting it pending does not: the customer still waits (a snoozed
//!   conversation past its target counts as overdue). A bare rating
//!   of a survey, a message unsent before it came and a blocked contact's
//!   messages start nothing.
//! - A reply that fails (Meta refuses it, or WhatsApp reports it failed
//!   later) answered nothing: the wait is worked out again from the
//!   conversation's messages ([`recompute`]: the customer's first message
//!   after the team's last answer that did not fail, answers counted as
//!   the reports count first responses), and a retry of it is worked out
//!   again too.
//! - Reply targets: a channel's `settings.reply_targets`, minutes by
//!   priority (`urgent`, `high`, `medium`, `low`, and `none` for a
//!   conversation without one), each 1 to [`MOST_TARGET_MINUTES`] or
//!   `null` for no target. A waiting conversation with a target shows
//!   `reply_due_at`; `GET /api/conversations?overdue=true` lists those
//!   past it. Minutes of the clock, not of business hours: a team that
//!   closes at night sets targets that reach over it, or none.
//! - When a wait passes its target, the team is told once: a
//!   `notification` `{kind: "reply_overdue", conversation_id, channel_id,
//!   user_id (the assignee, or null), waiting_since, reply_due_at}` to the
//!   channel's sockets, within 30 seconds ([`ring_overdue`], on the clock
//!   that wakes snoozed conversations). A new wait, after an answer or a
//!   resolve, rings again when it too runs over; a wait already rung does
//!   not ring again for a changed target or priority.
//! - `GET /api/conversations?waiting=true` lists the waiting ones
//!   (`false`: the others); `sort=waiting` lists the waiting ones, longest
//!   wait first (not with `q`, which lists by activity).

use chrono::{DateTime, Duration, Utc};
use diesel::expression::SqlLiteral;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Timestamptz};
use serde::{Deserialize, Serialize};

use super::views::ConversationRow;
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};

/// The statuses of a conversation someone may wait in. A resolved one
/// waits for nobody (resolving ends a wait), so a query of the waiting
/// names these too: the status index then reads only the unresolved
/// conversations, where `waiting_since` has no index of its own (every
/// webhook would pay for keeping it).
pub const UNRESOLVED: [&str; 3] = ["open", "pending", "snoozed"];

/// The longest target: 30 days.
pub const MOST_TARGET_MINUTES: u32 = 43_200;

/// Minutes the team gives itself to answer, by the conversation's priority.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplyTargets {
    #[serde(default)]
    pub urgent: Option<u32>,
    #[serde(default)]
    pub high: Option<u32>,
    #[serde(default)]
    pub medium: Option<u32>,
    #[serde(default)]
    pub low: Option<u32>,
    /// For conversations without a priority.
    #[serde(default)]
    pub none: Option<u32>,
}

impl ReplyTargets {
    /// Each target within 1 to [`MOST_TARGET_MINUTES`], else
    /// `invalid_settings` naming it.
    pub fn checked(self) -> AppResult<ReplyTargets> {
        let all = [
            ("urgent", self.urgent),
            ("high", self.high),
            ("medium", self.medium),
            ("low", self.low),
            ("none", self.none),
        ];
        if let Some((name, _)) = all.iter().find(|(_, m)| m.is_some_and(|m| !(1..=MOST_TARGET_MINUTES).contains(&m))) {
            return Err(AppError::invalid(
                "invalid_settings",
                format!("reply_targets.{name} is 1 to {MOST_TARGET_MINUTES} minutes, or null for none"),
            ));
        }
        Ok(self)
    }
}

/// The target, in minutes, of a conversation of `priority` under a
/// channel's stored settings; read straight from them, as every
/// conversation summary needs it.
pub fn target_minutes(settings: &serde_json::Value, priority: Option<&str>) -> Option<i64> {
    let minutes = settings.get("reply_targets")?.get(priority.unwrap_or("none"))?.as_u64()?;
    i64::try_from(minutes).ok()
}

/// When the team should have answered a conversation waiting since
/// `since`, if its channel sets a target for its priority.
pub fn reply_due_at(
    settings: &serde_json::Value,
    priority: Option<&str>,
    since: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let minutes = target_minutes(settings, priority)?;
    since?.checked_add_signed(Duration::minutes(minutes))
}

/// The condition `?overdue=true` adds to a query of `conversations`:
/// waiting past its channel's target for its priority (no target: never).
/// The statuses are named for the status index (see [`UNRESOLVED`]).
pub const OVERDUE: &str = "conversations.status IN ('open', 'pending', 'snoozed') AND conversations.waiting_since IS NOT NULL \
    AND conversations.waiting_since + make_interval(mins => (SELECT (ch.settings->'reply_targets'->>coalesce(conversations.priority, 'none'))::int \
                                                                FROM channels ch WHERE ch.id = conversations.channel_id)) <= now()";

/// What an update sets `waiting_since` to: cleared when `answered`, else
/// kept as the row has it when written (not as it was read: a customer's
/// message may have started a wait since).
pub fn kept_unless(answered: bool) -> SqlLiteral<Nullable<Timestamptz>> {
    diesel::dsl::sql(if answered { "NULL" } else { "waiting_since" })
}

/// Tells the team of every wait that passed its target since the last
/// look, once per wait ([module docs](self)); how many.
pub fn ring_overdue(tc: &mut TenantConn<'_>, log: &mut super::events::EventLog) -> AppResult<usize> {
    let rung: Vec<ConversationRow> = diesel::sql_query(format!(
        "UPDATE conversations SET overdue_rung_for = waiting_since \
          WHERE {OVERDUE} AND overdue_rung_for IS DISTINCT FROM waiting_since \
         RETURNING conversations.*"
    ))
    .load(tc.pg())?;
    for conv in &rung {
        let settings: serde_json::Value = crate::db::tenant_schema::channels::table
            .find(conv.channel_id)
            .select(crate::db::tenant_schema::channels::settings)
            .first(tc.pg())?;
        log.append(
            tc,
            "notification",
            Some(conv.channel_id),
            Some(conv.id),
            serde_json::json!({"kind": "reply_overdue", "conversation_id": conv.id.to_string(),
                "channel_id": conv.channel_id.to_string(), "user_id": conv.assignee_id.map(|a| a.to_string()),
                "waiting_since": conv.waiting_since,
                "reply_due_at": reply_due_at(&settings, conv.priority.as_deref(), conv.waiting_since)}),
        )?;
    }
    Ok(rung.len())
}

/// Works conversation `id`'s wait out again from its messages (after a
/// reply failed, or was retried); the row when that changed it. A
/// resolved conversation waits for nobody.
pub fn recompute(tc: &mut TenantConn<'_>, id: i64) -> AppResult<Option<ConversationRow>> {
    let changed: Option<ConversationRow> = diesel::sql_query(format!(
        "WITH w AS (SELECT (SELECT min(i.sort_at) FROM messages i \
                             WHERE i.conversation_id = $1 AND i.direction = 'in' AND NOT i.private \
                               AND i.deleted_at IS NULL \
                               AND i.sort_at > coalesce((SELECT max(m.sort_at) FROM messages m \
                                                          WHERE m.conversation_id = $1 AND {answers}), \
                                                        '-infinity'::timestamptz)) AS at) \
         UPDATE conversations SET waiting_since = w.at, updated_at = now() FROM w \
          WHERE id = $1 AND status <> 'resolved' AND waiting_since IS DISTINCT FROM w.at \
         RETURNING conversations.*",
        answers = super::reports::ANSWERS
    ))
    .bind::<BigInt, _>(id)
    .get_result(tc.pg())
    .optional()?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_target_is_read_by_priority_and_none_stands_for_no_priority() {
        let settings = json!({"reply_targets": {"urgent": 15, "high": null, "none": 240}});
        let since = DateTime::from_timestamp(1_000_000, 0);
        assert_eq!(reply_due_at(&settings, Some("urgent"), since), since.map(|s| s + Duration::minutes(15)));
        assert_eq!(reply_due_at(&settings, None, since), since.map(|s| s + Duration::minutes(240)));
        assert_eq!(reply_due_at(&settings, Some("high"), since), None, "null: no target");
        assert_eq!(reply_due_at(&settings, Some("low"), since), None, "absent: no target");
        assert_eq!(reply_due_at(&settings, Some("urgent"), None), None, "nobody waiting");
        assert_eq!(reply_due_at(&json!({}), Some("urgent"), since), None, "no targets at all");
    }

    #[test]
    fn targets_are_checked_one_by_one() {
        let ok = ReplyTargets { urgent: Some(1), none: Some(MOST_TARGET_MINUTES), ..Default::default() };
        assert_eq!(ok.clone().checked().ok(), Some(ok));
        let zero = ReplyTargets { high: Some(0), ..Default::default() };
        let e = zero.checked().expect_err("zero minutes");
        assert!(e.message.contains("reply_targets.high"), "{}", e.message);
        let long = ReplyTargets { low: Some(MOST_TARGET_MINUTES + 1), ..Default::default() };
        assert!(long.checked().is_err());
        assert!(serde_json::from_value::<ReplyTargets>(json!({"critical": 5})).is_err(), "unknown priority");
    }
}
