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
//!   past it. Minutes of the clock, unless `only_business_hours` is true:
//!   then minutes while the channel is open by its `business_hours` (which
//!   it must have), the clock stopped at night and at weekends, as a team
//!   that closes counts them ([`due`]; a target the openings of the next
//!   year do not reach is no target).
//! - `reply_due_at` is kept on the conversation (so the overdue ones are a
//!   comparison the status index serves), worked out as the wait starts,
//!   and again when the priority, the wait or the channel's targets or
//!   hours change ([`redue_one`], [`redue`]). A channel's change of targets
//!   or hours moves the due times of its waiting conversations, each one
//!   moved announced (`conversation.updated`) in the change's NOTIFY.
//! - When a wait passes its target, the team is told once: a
//!   `notification` `{kind: "reply_overdue", conversation_id, channel_id,
//!   user_id (the assignee, or null), team_id (its team, or null),
//!   waiting_since, reply_due_at}` to the
//!   channel's sockets, within 30 seconds ([`ring_overdue`], on the clock
//!   that wakes snoozed conversations). A new wait, after an answer or a
//!   resolve, rings again when it too runs over; so does a wait already
//!   rung whose due time a change of priority, targets or hours moved past
//!   now. Each wait rung is kept once (`missed_targets`: channel, assignee
//!   then, priority, due time) for the reports' `targets_missed`; so is a
//!   wait that ends past its due time before the clock rang it, by a
//!   trigger on `conversations` (tenant migration `late_answers`), so no
//!   way of ending a wait can forget it. Nobody is told of those.
//! - `GET /api/conversations?waiting=true` lists the waiting ones
//!   (`false`: the others); `sort=waiting` lists the waiting ones, longest
//!   wait first, and `sort=due` those with a target, soonest due first
//!   (the most overdue first: what to answer next, whatever the
//!   priorities); neither with `q`, which lists by activity.

use chrono::{DateTime, Duration, Utc};
use diesel::expression::SqlLiteral;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Timestamptz};
use serde::{Deserialize, Serialize};

use super::views::ConversationRow;
use crate::channels::Settings;
use crate::db::tenant_schema::conversations as c;
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
    /// Count only minutes while the channel is open (its `business_hours`).
    #[serde(default)]
    pub only_business_hours: bool,
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

    /// The target, in minutes, of a conversation of `priority`.
    pub fn minutes(&self, priority: Option<&str>) -> Option<u32> {
        match priority {
            Some("urgent") => self.urgent,
            Some("high") => self.high,
            Some("medium") => self.medium,
            Some("low") => self.low,
            _ => self.none,
        }
    }
}

/// When the team should have answered a conversation of `priority` whose
/// customer waits since `since`, under its channel's `settings`; `None`
/// without a target. Hours stored before they were checked and no longer
/// valid count as always open (as for the away reply).
pub fn due(settings: &Settings, priority: Option<&str>, since: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let minutes = settings.reply_targets.minutes(priority)?;
    let clock = || since.checked_add_signed(Duration::minutes(i64::from(minutes)));
    match settings.business_hours.as_ref().filter(|_| settings.reply_targets.only_business_hours) {
        Some(hours) => hours.after_open_minutes(since, minutes).unwrap_or_else(|_| clock()),
        None => clock(),
    }
}

/// The condition `?overdue=true` adds to a query of `conversations`:
/// waiting past its channel's target for its priority (no target: never).
/// The statuses are named for the status index (see [`UNRESOLVED`]).
pub const OVERDUE: &str =
    "conversations.status IN ('open', 'pending', 'snoozed') AND conversations.reply_due_at <= now()";

/// The two columns of a wait an update writes.
pub type Wait = (
    diesel::dsl::Eq<c::waiting_since, SqlLiteral<Nullable<Timestamptz>>>,
    diesel::dsl::Eq<c::reply_due_at, SqlLiteral<Nullable<Timestamptz>>>,
);

/// What an update sets the wait to: cleared when `answered`, else kept as
/// the row has it when written (not as it was read: a customer's message
/// may have started a wait since).
pub fn kept_unless(answered: bool) -> Wait {
    let kept = |column: &'static str| diesel::dsl::sql(if answered { "NULL" } else { column });
    (c::waiting_since.eq(kept("waiting_since")), c::reply_due_at.eq(kept("reply_due_at")))
}

/// The due time of a conversation in `status` of `priority` waiting since
/// `since` (a resolved one waits for nobody).
fn due_of(
    settings: &Settings,
    status: &str,
    priority: Option<&str>,
    since: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    since.filter(|_| status != "resolved").and_then(|s| due(settings, priority, s))
}

/// Works out again the due times of `channel`'s waiting conversations
/// under its `settings`, after those changed; each one that moved is
/// announced (`conversation.updated`, its `reply_due_at` new) in `log`. The rows
/// are locked in id order, as a webhook's batch locks them, and before a
/// change of the channel's row: a batch that holds them and then notes
/// its webhooks on the channel cannot wait for us while we wait for it.
pub fn redue(
    tc: &mut TenantConn<'_>,
    log: &mut super::events::EventLog,
    channel: i64,
    settings: &Settings,
) -> AppResult<usize> {
    type Row = (i64, String, Option<String>, Option<DateTime<Utc>>, Option<DateTime<Utc>>);
    let rows: Vec<Row> = c::table
        .filter(c::channel_id.eq(channel))
        .filter(c::status.eq_any(UNRESOLVED))
        .filter(c::waiting_since.is_not_null())
        .order(c::id)
        .select((c::id, c::status, c::priority, c::waiting_since, c::reply_due_at))
        .for_no_key_update()
        .load(tc.pg())?;
    let changed: Vec<(i64, Option<DateTime<Utc>>)> = rows
        .into_iter()
        .filter_map(|(id, status, priority, since, was)| {
            let now = due_of(settings, &status, priority.as_deref(), since);
            (now != was).then_some((id, now))
        })
        .collect();
    if !changed.is_empty() {
        let (ids, dues): (Vec<i64>, Vec<Option<DateTime<Utc>>>) = changed.iter().copied().unzip();
        diesel::sql_query(
            "UPDATE conversations AS c SET reply_due_at = v.due, \
                    overdue_rung_for = CASE WHEN v.due > now() THEN NULL ELSE c.overdue_rung_for END \
               FROM unnest($1::bigint[], $2::timestamptz[]) AS v(id, due) WHERE c.id = v.id",
        )
        .bind::<diesel::sql_types::Array<BigInt>, _>(&ids)
        .bind::<diesel::sql_types::Array<Nullable<Timestamptz>>, _>(dues)
        .execute(tc.pg())?;
        // Open inboxes show the new due times (a list sorted by them too).
        let moved: Vec<ConversationRow> =
            c::table.filter(c::id.eq_any(&ids)).order(c::id).select(ConversationRow::as_select()).load(tc.pg())?;
        let views = super::views::Names::default().conversations(tc, &moved)?;
        for (row, view) in moved.iter().zip(&views) {
            log.append(tc, "conversation.updated", Some(row.channel_id), Some(row.id), view)?;
        }
    }
    Ok(changed.len())
}

/// Works the due time of `conv`, a row this transaction just wrote (so
/// locked, and as it is), out again after its priority or wait changed,
/// writing it when it moved.
pub fn redue_one(tc: &mut TenantConn<'_>, conv: &mut ConversationRow) -> AppResult<()> {
    let settings = crate::channels::find(tc, crate::channels::ChannelId(conv.channel_id))?.settings();
    let now = due_of(&settings, &conv.status, conv.priority.as_deref(), conv.waiting_since);
    if now != conv.reply_due_at {
        // Due later than now: a wait already rung rings again if it runs over.
        if now.is_some_and(|due| due > Utc::now()) {
            diesel::update(c::table.find(conv.id))
                .set((c::reply_due_at.eq(now), c::overdue_rung_for.eq(None::<DateTime<Utc>>)))
                .execute(tc.pg())?;
        } else {
            diesel::update(c::table.find(conv.id)).set(c::reply_due_at.eq(now)).execute(tc.pg())?;
        }
        conv.reply_due_at = now;
    }
    Ok(())
}

/// Tells the team of every wait that passed its target since the last
/// look, once per wait ([module docs](self)), and keeps it for the reports
/// (`missed_targets`); how many. Passes over a conversation another
/// transaction holds (rung at a later tick), as the clock's other rounds
/// do (`conversations::wake_snoozed`).
pub fn ring_overdue(tc: &mut TenantConn<'_>, log: &mut super::events::EventLog) -> AppResult<usize> {
    let rung: Vec<ConversationRow> = diesel::sql_query(format!(
        "WITH due AS (SELECT id FROM conversations \
                       WHERE {OVERDUE} AND overdue_rung_for IS DISTINCT FROM waiting_since \
                       ORDER BY id FOR NO KEY UPDATE SKIP LOCKED), \
              rung AS (UPDATE conversations SET overdue_rung_for = waiting_since FROM due \
                        WHERE conversations.id = due.id \
                       RETURNING conversations.*), \
              kept AS (INSERT INTO missed_targets \
                              (conversation_id, channel_id, assignee_id, priority, waiting_since, due_at) \
                       SELECT id, channel_id, assignee_id, priority, waiting_since, reply_due_at FROM rung \
                       ON CONFLICT (conversation_id, waiting_since) DO NOTHING) \
         SELECT * FROM rung ORDER BY id"
    ))
    .load(tc.pg())?;
    for conv in &rung {
        log.append(
            tc,
            "notification",
            Some(conv.channel_id),
            Some(conv.id),
            serde_json::json!({"kind": super::notifications::REPLY_OVERDUE, "conversation_id": conv.id.to_string(),
                "channel_id": conv.channel_id.to_string(), "user_id": conv.assignee_id.map(|a| a.to_string()),
                "team_id": conv.team_id.map(|t| t.to_string()),
                "waiting_since": conv.waiting_since,
                "reply_due_at": conv.reply_due_at}),
        )?;
    }
    Ok(rung.len())
}

/// Works conversation `id`'s wait out again from its messages (after a
/// reply failed, or was retried), and its due time with it; the row when
/// that changed it. A resolved conversation waits for nobody.
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
    Ok(match changed {
        Some(mut conv) => {
            redue_one(tc, &mut conv)?;
            Some(conv)
        }
        None => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A channel's default settings with `changes`.
    fn settings(changes: serde_json::Value) -> Settings {
        let mut all = serde_json::to_value(Settings::default()).expect("settings");
        for (key, value) in changes.as_object().into_iter().flatten() {
            all[key] = value.clone();
        }
        serde_json::from_value(all).expect("settings")
    }

    #[test]
    fn a_target_is_read_by_priority_and_none_stands_for_no_priority() {
        let s = settings(json!({"reply_targets": {"urgent": 15, "high": null, "none": 240}}));
        let since = DateTime::from_timestamp(1_000_000, 0).expect("time");
        assert_eq!(due(&s, Some("urgent"), since), Some(since + Duration::minutes(15)));
        assert_eq!(due(&s, None, since), Some(since + Duration::minutes(240)));
        assert_eq!(due(&s, Some("high"), since), None, "null: no target");
        assert_eq!(due(&s, Some("low"), since), None, "absent: no target");
        assert_eq!(due(&settings(json!({})), Some("urgent"), since), None, "no targets at all");
    }

    #[test]
    fn business_hours_stop_the_clock_only_when_asked() {
        // Open weekdays 09:00–17:00 UTC; 2026-12-04 is a Friday.
        let week: Vec<_> = ["mon", "tue", "wed", "thu", "fri"]
            .iter()
            .map(|d| json!({"day": d, "open": "09:00", "close": "17:00"}))
            .collect();
        let hours = json!({"timezone": "UTC", "week": week});
        let friday_evening = DateTime::parse_from_rfc3339("2026-12-04T16:30:00Z").expect("time").to_utc();
        let clock = settings(json!({"business_hours": hours, "reply_targets": {"none": 60}}));
        assert_eq!(due(&clock, None, friday_evening), Some(friday_evening + Duration::minutes(60)));
        let open =
            settings(json!({"business_hours": hours, "reply_targets": {"none": 60, "only_business_hours": true}}));
        let monday = DateTime::parse_from_rfc3339("2026-12-07T09:30:00Z").expect("time").to_utc();
        assert_eq!(due(&open, None, friday_evening), Some(monday));
        // No hours (only by hand: the API refuses it): the clock.
        let none = settings(json!({"reply_targets": {"none": 60, "only_business_hours": true}}));
        assert_eq!(due(&none, None, friday_evening), Some(friday_evening + Duration::minutes(60)));
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
