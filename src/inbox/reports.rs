//! Reports for a team's admins (`GET /api/reports/overview`): over a
//! period, what customers sent and the team answered, how soon customers
//! were first answered, and who answered and resolved.
//!
//! Decisions:
//! - A period is `[from, to)`, at most [`MOST_DAYS`] days; by default the
//!   last seven days. Messages count by when they were written
//!   (`sort_at`, Meta's time for a customer's), so a WhatsApp history
//!   shared today counts on its own days, not today.
//! - Conversations opened: created in the period. Resolved: each change to
//!   `resolved` in the period, as the audit log holds it (a conversation
//!   resolved twice counts twice; its resolver is the member who did it).
//! - Replies are the team's, sent from Switchboard (or on their way): not
//!   failed ones, not notes, not auto-replies, not what the business wrote
//!   in Meta's own apps.
//! - First response: for each conversation opened in the period, from its
//!   first customer message to the business's first reply after it,
//!   whenever that came (an answer after the period still counts; none yet
//!   counts as unanswered). A reply from Meta's own apps answers too (the
//!   customer was answered), but is no agent's; an auto-reply does not.
//!   Median and 90th percentile by nearest rank, in seconds.
//! - Satisfaction (`csat`): the surveys sent in the period and their
//!   answers, whenever they came; an agent's are those of the
//!   conversations they had when resolved (or resolved, if no one had
//!   them).
//! - Conversations started (`conversations_started`): the team wrote
//!   first (`inbox::outreach`), counted by the audit log's
//!   `conversation.started`, per channel and per agent who started them;
//!   one whose messages then joined the customer's earlier thread
//!   (`contacts::known_to_whatsapp_as`) still counts, though it is no
//!   longer among those opened.
//! - Reply targets missed (`targets_missed`): the waits whose due time
//!   fell in the period and that the overdue clock rang (`waiting`),
//!   answered since or not, or that ended (answered, resolved) past it
//!   before the clock looked (tenant migration `late_answers`); an
//!   agent's are those assigned to them when it rang or ended (none
//!   assigned: the tenant's and the channel's only).
//! - A contact blocked at the time of the report (spam, abuse) is left out
//!   of what customers brought: their conversations opened (and so their
//!   first responses), the messages they sent, and the reply targets their
//!   waits missed (blocking resolves the conversation, which would end a
//!   wait past its target). What the team did stays counted: replies,
//!   notes, resolutions (a block's too), surveys, conversations started.
//!   Unblocking them brings them back.
//! - One team (`team_id`): the figures of the conversations in that team
//!   at the time of the report (no history of a conversation's team is
//!   kept: one handed to another team takes its past with it), whoever
//!   worked them; the agents' table then lists whoever answered, resolved
//!   or was assigned them, members of the team or not. One label (`label`)
//!   the same way: the conversations that have it at the time of the
//!   report. One contact attribute (`contact_attribute`, `key` or
//!   `key:value` as `inbox::attributes` reads it) the same way: the
//!   conversations of the contacts that have it at the time of the report.
//!   With a channel, a team, a label or an attribute together, the
//!   conversations of all.
//! - The queue (`queue`): each conversation that left the queue
//!   (`hand_out`) for an agent in the period, given by the server or taken
//!   by hand, as the audit log holds it (its `conversation.assigned` keeps
//!   `queued_since`), and how long it had waited there. Those that left
//!   otherwise (resolved, snoozed, "no one", the rule turned off) are not
//!   counted: no agent ended their wait. A blocked contact's waits stay
//!   counted: they were the team's then. Each channel's and agent's row
//!   has its own (`queue_given`, `median_queue_seconds`): the channel's
//!   customers' waits, and those of the conversations that went to the
//!   agent.
//! - `now` is the inbox at the time of the report, whatever the period:
//!   conversations open, pending and snoozed, the open ones nobody is
//!   assigned, those whose customer waits for an answer and those past
//!   their reply target (`waiting`).
//! - No index serves a period (one on every message's time would cost every
//!   webhook): a report reads the tenant's messages once, and each opened
//!   conversation's first messages through its own index, which a period
//!   within a long history keeps cheap. `bench search` times the worst
//!   case, every conversation opened in the period and none answered (each
//!   walk reads all its messages): 0.23–0.36 s at 200,000 messages and
//!   4,000 conversations, 1.4 s at 1,000,000 and 20,000 on the
//!   twenty-second machine. (Collecting every opened conversation's first
//!   messages in two hash joins instead was no faster there, and reads the
//!   whole history for a short period.)

use chrono::{DateTime, Duration, NaiveDate, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Jsonb, Nullable, Text, Timestamptz};
use serde::Serialize;
use std::collections::BTreeMap;

use super::teams::TeamId;
use crate::channels::ChannelId;
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

/// The longest period a report covers.
pub const MOST_DAYS: i64 = 366;

/// The days a report covers when not told.
pub const DEFAULT_DAYS: i64 = 7;

/// `[from, to)`, and optionally one channel, one team, one label and one
/// contact attribute.
#[derive(Debug, Clone)]
pub struct Period {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub channel: Option<ChannelId>,
    /// The conversations in this team at the time of the report.
    pub team: Option<TeamId>,
    /// The conversations with this label (as stored: normalized) at the
    /// time of the report.
    pub label: Option<String>,
    /// The conversations of the contacts with this attribute, or value of
    /// it (`inbox::attributes`), at the time of the report.
    pub contact_attribute: Option<super::attributes::Wanted>,
}

impl Period {
    /// From the query's `from` and `to` (RFC 3339 times or `YYYY-MM-DD`
    /// dates, UTC midnight; `to` defaults to now, `from` to seven days
    /// before `to`).
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        channel: Option<ChannelId>,
        now: DateTime<Utc>,
    ) -> AppResult<Period> {
        let to = match to {
            Some(t) => moment(t, "to")?,
            None => now,
        };
        let from = match from {
            Some(f) => moment(f, "from")?,
            None => to - Duration::days(DEFAULT_DAYS),
        };
        if from >= to {
            return Err(AppError::invalid("invalid_period", "`from` must come before `to`"));
        }
        if to - from > Duration::days(MOST_DAYS) {
            return Err(AppError::invalid("invalid_period", format!("a report covers at most {MOST_DAYS} days")));
        }
        Ok(Period { from, to, channel, team: None, label: None, contact_attribute: None })
    }
}

fn moment(text: &str, name: &str) -> AppResult<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .ok_or_else(|| {
            AppError::invalid("invalid_period", format!("`{name}` is an RFC 3339 time or a YYYY-MM-DD date"))
        })
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Overview {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub conversations_opened: i64,
    /// The ones the team started by writing first (`outreach`).
    pub conversations_started: i64,
    pub conversations_resolved: i64,
    pub messages_received: i64,
    pub replies_sent: i64,
    pub notes_written: i64,
    /// Waits past their reply target, due in the period.
    pub targets_missed: i64,
    pub first_response: FirstResponse,
    /// Conversations that left the queue for an agent in the period, and
    /// how long each had waited in it.
    pub queue: QueueFigures,
    /// Satisfaction surveys sent in the period, and their answers.
    pub csat: Csat,
    /// The inbox as it is at the time of the report, whatever the period.
    pub now: Backlog,
    pub agents: Vec<AgentFigures>,
    pub channels: Vec<ChannelFigures>,
}

#[derive(Debug, Default, Serialize, PartialEq)]
pub struct FirstResponse {
    pub answered: i64,
    pub unanswered: i64,
    pub median_seconds: Option<i64>,
    pub p90_seconds: Option<i64>,
}

/// Conversations that left the queue (`hand_out`) for an agent in the
/// period, given by the server or taken by hand, and how long each had
/// waited there: median and 90th percentile by nearest rank, in seconds.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct QueueFigures {
    pub given: i64,
    pub median_seconds: Option<i64>,
    pub p90_seconds: Option<i64>,
}

#[derive(QueryableByName)]
struct Waited {
    #[diesel(sql_type = BigInt)]
    channel_id: i64,
    /// Who it went to.
    #[diesel(sql_type = Nullable<BigInt>)]
    agent: Option<i64>,
    #[diesel(sql_type = BigInt)]
    seconds: i64,
}

/// Surveys sent in the period (`inbox::csat`), whenever answered.
#[derive(Debug, Default, Serialize, PartialEq)]
pub struct Csat {
    pub surveys_sent: i64,
    pub answered: i64,
    /// Mean rating, to two decimals; `None` with no answers.
    pub average: Option<f64>,
    /// How many answered 1, 2, 3, 4 and 5.
    pub ratings: [i64; 5],
}

/// Conversations waiting on the team now: by status, the open ones nobody
/// is assigned, and those whose customer waits.
#[derive(Debug, Default, Serialize, PartialEq, QueryableByName)]
pub struct Backlog {
    #[diesel(sql_type = BigInt)]
    pub open: i64,
    #[diesel(sql_type = BigInt)]
    pub pending: i64,
    #[diesel(sql_type = BigInt)]
    pub snoozed: i64,
    #[diesel(sql_type = BigInt)]
    pub open_unassigned: i64,
    /// Whose customer waits for an answer (`waiting`), and of those, past
    /// their channel's reply target.
    #[diesel(sql_type = BigInt)]
    pub waiting: i64,
    #[diesel(sql_type = BigInt)]
    pub overdue: i64,
    /// Waiting in the queue for an agent (`hand_out`), and since when the
    /// longest of them has.
    #[diesel(sql_type = BigInt)]
    pub queued: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub oldest_queued_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct AgentFigures {
    pub user_id: UserId,
    pub name: Option<String>,
    pub email: Option<String>,
    pub replies: i64,
    pub resolved: i64,
    /// Conversations opened in the period whose first answer was theirs.
    pub first_responses: i64,
    pub median_first_response_seconds: Option<i64>,
    /// Answered surveys of conversations they had (or resolved, when no
    /// one had them), and the mean rating.
    pub csat_answered: i64,
    pub csat_average: Option<f64>,
    /// Conversations they started by writing first (`outreach`).
    pub conversations_started: i64,
    /// Waits past their reply target while theirs.
    pub targets_missed: i64,
    /// Conversations that left the queue for them, and how long those had
    /// waited there (median).
    pub queue_given: i64,
    pub median_queue_seconds: Option<i64>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct ChannelFigures {
    pub channel_id: ChannelId,
    pub name: String,
    pub platform: String,
    pub conversations_opened: i64,
    pub conversations_started: i64,
    pub messages_received: i64,
    pub replies_sent: i64,
    pub targets_missed: i64,
    /// Its conversations that left the queue for an agent, and how long
    /// those had waited there (median).
    pub queue_given: i64,
    pub median_queue_seconds: Option<i64>,
}

#[derive(QueryableByName)]
struct MessageCounts {
    #[diesel(sql_type = BigInt)]
    channel_id: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    sender_user_id: Option<i64>,
    #[diesel(sql_type = BigInt)]
    received: i64,
    #[diesel(sql_type = BigInt)]
    replies: i64,
    #[diesel(sql_type = BigInt)]
    notes: i64,
}

#[derive(QueryableByName)]
struct Opened {
    #[diesel(sql_type = BigInt)]
    channel_id: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    asked_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    answered_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<BigInt>)]
    answered_by: Option<i64>,
}

#[derive(QueryableByName)]
struct Resolved {
    #[diesel(sql_type = Nullable<BigInt>)]
    actor_user_id: Option<i64>,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Conversations started by writing first, by channel and starter.
#[derive(QueryableByName)]
struct Started {
    #[diesel(sql_type = BigInt)]
    channel_id: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    actor_user_id: Option<i64>,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// A count by channel.
#[derive(QueryableByName)]
struct PerChannel {
    #[diesel(sql_type = BigInt)]
    channel_id: i64,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Missed {
    #[diesel(sql_type = BigInt)]
    channel_id: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    assignee_id: Option<i64>,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Surveys {
    #[diesel(sql_type = Nullable<BigInt>)]
    agent: Option<i64>,
    #[diesel(sql_type = BigInt)]
    sent: i64,
    #[diesel(sql_type = diesel::sql_types::Array<BigInt>)]
    ratings: Vec<i64>,
}

#[derive(QueryableByName)]
struct ChannelName {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    platform: String,
}

#[derive(QueryableByName)]
struct Person {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    email: String,
}

/// The replies of the team's that answer a customer, as a condition on
/// messages `m`: an agent's, or the business's from Meta's own apps (no
/// client id); not failed, not a note, not an auto-reply. (A customer's
/// wait ends by the same rule: `waiting`.)
pub(super) const ANSWERS: &str = "m.direction = 'out' AND NOT m.private AND m.status <> 'failed' \
    AND (m.sender_kind = 'agent' OR (m.sender_kind = 'page' AND m.client_id IS NULL))";

/// The conversations of the contacts blocked now, whom a report leaves
/// out of what customers brought ([module docs](self)): few, read once
/// per query (the blocked contacts' partial index).
const BLOCKED: &str = "SELECT bc.id FROM conversations bc JOIN contacts bk ON bk.id = bc.contact_id \
    WHERE bk.blocked_at IS NOT NULL";

/// Whether conversations `c` are among the report's: in its team (`$4`),
/// with its label (`$5`), of a contact with its attribute (`$6`, of value
/// `$7` when given), when it names them.
const SCOPED: &str = "($4::int8 IS NULL OR c.team_id = $4) AND ($5::text IS NULL OR $5 = ANY (c.labels)) \
    AND ($6::text IS NULL OR EXISTS (SELECT 1 FROM contacts ct WHERE ct.id = c.contact_id \
         AND ct.attributes ? $6 AND ($7::jsonb IS NULL OR ct.attributes @> $7)))";

/// Whether the conversation `column` names (`c.id{cast}`'s type) is among
/// the report's ([`SCOPED`]): a condition for a table keyed by
/// conversation.
fn in_scope(column: &str, cast: &str) -> String {
    format!(
        "(($4::int8 IS NULL AND $5::text IS NULL AND $6::text IS NULL) \
          OR {column} IN (SELECT c.id{cast} FROM conversations c WHERE {SCOPED}))"
    )
}

/// The period's figures ([module docs](self)).
pub fn overview(tc: &mut TenantConn<'_>, period: Period) -> AppResult<Overview> {
    let channel = period.channel.map(|c| c.0);
    let team = period.team.map(|t| t.0);
    let label = period.label.as_deref();
    let (attribute, attribute_value) = match &period.contact_attribute {
        Some(a) => (Some(a.key()), a.contained()),
        None => (None, None),
    };
    // Every query but `now` takes the period and the scope, in the numbers
    // `SCOPED` and `in_scope` use.
    macro_rules! scoped {
        ($sql:expr) => {
            diesel::sql_query($sql)
                .bind::<Timestamptz, _>(period.from)
                .bind::<Timestamptz, _>(period.to)
                .bind::<Nullable<BigInt>, _>(channel)
                .bind::<Nullable<BigInt>, _>(team)
                .bind::<Nullable<Text>, _>(label)
                .bind::<Nullable<Text>, _>(attribute)
                .bind::<Nullable<Jsonb>, _>(attribute_value.clone())
        };
    }
    let counts: Vec<MessageCounts> = scoped!(format!(
        "SELECT channel_id, sender_user_id, \
                count(*) FILTER (WHERE direction = 'in' AND NOT private) AS received, \
                count(*) FILTER (WHERE direction = 'out' AND sender_kind = 'agent' AND NOT private \
                                   AND status <> 'failed') AS replies, \
                count(*) FILTER (WHERE private) AS notes \
           FROM messages \
          WHERE sort_at >= $1 AND sort_at < $2 AND ($3::int8 IS NULL OR channel_id = $3) AND {} \
          GROUP BY channel_id, sender_user_id",
        in_scope("conversation_id", "")
    ))
    .load(tc.pg())?;
    // What blocked contacts sent, taken off the count above: read through
    // their few conversations' index, not by another pass over the period.
    let blocked_received: Vec<PerChannel> = scoped!(format!(
        "SELECT m.channel_id, count(*) AS n FROM messages m \
          WHERE m.conversation_id IN ({BLOCKED}) AND m.direction = 'in' AND NOT m.private \
            AND m.sort_at >= $1 AND m.sort_at < $2 AND ($3::int8 IS NULL OR m.channel_id = $3) \
            AND {} \
          GROUP BY m.channel_id",
        in_scope("m.conversation_id", "")
    ))
    .load(tc.pg())?;
    let opened: Vec<Opened> = scoped!(format!(
        "SELECT c.channel_id, asked.at AS asked_at, answer.at AS answered_at, answer.by AS answered_by \
           FROM conversations c \
           LEFT JOIN LATERAL (SELECT m.sort_at AS at FROM messages m \
                               WHERE m.conversation_id = c.id AND m.direction = 'in' AND NOT m.private \
                               ORDER BY m.sort_at, m.id LIMIT 1) asked ON true \
           LEFT JOIN LATERAL (SELECT m.sort_at AS at, m.sender_user_id AS by FROM messages m \
                               WHERE m.conversation_id = c.id AND {ANSWERS} AND m.sort_at >= asked.at \
                               ORDER BY m.sort_at, m.id LIMIT 1) answer ON true \
          WHERE c.created_at >= $1 AND c.created_at < $2 AND ($3::int8 IS NULL OR c.channel_id = $3) \
            AND {SCOPED} AND c.id <> ALL (ARRAY({BLOCKED}))"
    ))
    .load(tc.pg())?;
    let resolved: Vec<Resolved> = scoped!(format!(
        "SELECT a.actor_user_id, count(*) AS n \
           FROM audit_log a JOIN conversations c ON c.id::text = a.target_id \
          WHERE a.action = 'conversation.status_changed' AND a.details->>'to' = 'resolved' \
            AND a.created_at >= $1 AND a.created_at < $2 AND ($3::int8 IS NULL OR c.channel_id = $3) \
            AND {SCOPED} \
          GROUP BY a.actor_user_id"
    ))
    .load(tc.pg())?;

    // Each that left the queue for an agent is audited with since when it
    // had waited (`conversations::give`, `patch`).
    let queue_waits: Vec<Waited> = scoped!(format!(
        "SELECT c.channel_id, (a.details->>'to')::int8 AS agent, greatest(0, floor(extract(epoch FROM \
                  a.created_at - (a.details->>'queued_since')::timestamptz)))::int8 AS seconds \
           FROM audit_log a JOIN conversations c ON c.id::text = a.target_id \
          WHERE a.action = 'conversation.assigned' AND a.details ? 'queued_since' \
            AND a.created_at >= $1 AND a.created_at < $2 AND ($3::int8 IS NULL OR c.channel_id = $3) \
            AND {SCOPED}"
    ))
    .load(tc.pg())?;

    // As the audit log keeps them: an erased contact's conversation was
    // still started (its entry keeps the channel, not the contact).
    let started: Vec<Started> = scoped!(format!(
        "SELECT (a.details->>'channel_id')::int8 AS channel_id, a.actor_user_id, count(*) AS n \
           FROM audit_log a \
          WHERE a.action = 'conversation.started' AND a.created_at >= $1 AND a.created_at < $2 \
            AND ($3::int8 IS NULL OR a.details->>'channel_id' = $3::text) \
            AND {} \
          GROUP BY 1, 2",
        in_scope("a.target_id", "::text")
    ))
    .load(tc.pg())?;

    let surveys: Vec<Surveys> = scoped!(format!(
        "SELECT coalesce(assignee_id, resolved_by) AS agent, count(*) AS sent, \
                ARRAY[count(*) FILTER (WHERE rating = 1), count(*) FILTER (WHERE rating = 2), \
                      count(*) FILTER (WHERE rating = 3), count(*) FILTER (WHERE rating = 4), \
                      count(*) FILTER (WHERE rating = 5)] AS ratings \
           FROM csat_surveys \
          WHERE sent_at >= $1 AND sent_at < $2 AND ($3::int8 IS NULL OR channel_id = $3) AND {} \
          GROUP BY 1",
        in_scope("conversation_id", "")
    ))
    .load(tc.pg())?;

    let missed: Vec<Missed> = scoped!(format!(
        "SELECT channel_id, assignee_id, count(*) AS n FROM missed_targets \
          WHERE due_at >= $1 AND due_at < $2 AND ($3::int8 IS NULL OR channel_id = $3) \
            AND conversation_id <> ALL (ARRAY({BLOCKED})) AND {} \
          GROUP BY channel_id, assignee_id",
        in_scope("conversation_id", "")
    ))
    .load(tc.pg())?;

    // Resolved conversations are most of a long history: the status index
    // counts only those waiting.
    let now: Backlog = diesel::sql_query(format!(
        "SELECT count(*) FILTER (WHERE status = 'open') AS open, \
                count(*) FILTER (WHERE status = 'pending') AS pending, \
                count(*) FILTER (WHERE status = 'snoozed') AS snoozed, \
                count(*) FILTER (WHERE status = 'open' AND assignee_id IS NULL) AS open_unassigned, \
                count(*) FILTER (WHERE waiting_since IS NOT NULL) AS waiting, \
                count(*) FILTER (WHERE {}) AS overdue, \
                count(*) FILTER (WHERE queued_at IS NOT NULL) AS queued, \
                min(queued_at) AS oldest_queued_at \
           FROM conversations \
          WHERE status IN ('open', 'pending', 'snoozed') AND ($3::int8 IS NULL OR channel_id = $3) AND {}",
        super::waiting::OVERDUE,
        in_scope("id", "")
    ))
    // No period here; `$1` and `$2` stay unused so that the scope keeps
    // its numbers (`SCOPED`).
    .bind::<Nullable<Timestamptz>, _>(None::<DateTime<Utc>>)
    .bind::<Nullable<Timestamptz>, _>(None::<DateTime<Utc>>)
    .bind::<Nullable<BigInt>, _>(channel)
    .bind::<Nullable<BigInt>, _>(team)
    .bind::<Nullable<Text>, _>(label)
    .bind::<Nullable<Text>, _>(attribute)
    .bind::<Nullable<Jsonb>, _>(attribute_value.clone())
    .get_result(tc.pg())?;

    let mut channels: BTreeMap<i64, ChannelFigures> = BTreeMap::new();
    let mut agents: BTreeMap<i64, AgentFigures> = BTreeMap::new();
    let mut waits_by_agent: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut notes_written = 0;
    for c in &counts {
        let figures = channels.entry(c.channel_id).or_insert_with(|| empty_channel(c.channel_id));
        figures.messages_received += c.received;
        figures.replies_sent += c.replies;
        notes_written += c.notes;
        if let (Some(user), true) = (c.sender_user_id, c.replies > 0) {
            agents.entry(user).or_insert_with(|| empty_agent(user)).replies += c.replies;
        }
    }
    for b in &blocked_received {
        channels.entry(b.channel_id).or_insert_with(|| empty_channel(b.channel_id)).messages_received -= b.n;
    }
    let mut waits = Vec::new();
    let mut unanswered = 0;
    for o in &opened {
        channels.entry(o.channel_id).or_insert_with(|| empty_channel(o.channel_id)).conversations_opened += 1;
        match (o.asked_at, o.answered_at) {
            (Some(asked), Some(answered)) => {
                let wait = (answered - asked).num_seconds().max(0);
                waits.push(wait);
                if let Some(user) = o.answered_by {
                    agents.entry(user).or_insert_with(|| empty_agent(user)).first_responses += 1;
                    waits_by_agent.entry(user).or_default().push(wait);
                }
            }
            // The business wrote first and the customer has not written: nothing to answer.
            (None, _) => {}
            (Some(_), None) => unanswered += 1,
        }
    }
    let mut targets_missed = 0;
    for m in &missed {
        targets_missed += m.n;
        channels.entry(m.channel_id).or_insert_with(|| empty_channel(m.channel_id)).targets_missed += m.n;
        if let Some(user) = m.assignee_id {
            agents.entry(user).or_insert_with(|| empty_agent(user)).targets_missed += m.n;
        }
    }
    let mut conversations_started = 0;
    for st in &started {
        conversations_started += st.n;
        channels.entry(st.channel_id).or_insert_with(|| empty_channel(st.channel_id)).conversations_started += st.n;
        if let Some(user) = st.actor_user_id {
            agents.entry(user).or_insert_with(|| empty_agent(user)).conversations_started += st.n;
        }
    }
    let mut queue_all = Vec::with_capacity(queue_waits.len());
    let mut queue_by_channel: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut queue_by_agent: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for w in &queue_waits {
        queue_all.push(w.seconds);
        queue_by_channel.entry(w.channel_id).or_default().push(w.seconds);
        if let Some(user) = w.agent {
            queue_by_agent.entry(user).or_default().push(w.seconds);
        }
    }
    for (channel, mut w) in queue_by_channel {
        let c = channels.entry(channel).or_insert_with(|| empty_channel(channel));
        (c.queue_given, c.median_queue_seconds) = (w.len() as i64, rank(&mut w, 50));
    }
    for (user, mut w) in queue_by_agent {
        let a = agents.entry(user).or_insert_with(|| empty_agent(user));
        (a.queue_given, a.median_queue_seconds) = (w.len() as i64, rank(&mut w, 50));
    }
    let queue = QueueFigures {
        given: queue_all.len() as i64,
        median_seconds: rank(&mut queue_all.clone(), 50),
        p90_seconds: rank(&mut queue_all, 90),
    };
    let mut conversations_resolved = 0;
    for r in &resolved {
        conversations_resolved += r.n;
        if let Some(user) = r.actor_user_id {
            agents.entry(user).or_insert_with(|| empty_agent(user)).resolved += r.n;
        }
    }
    let mut csat = Csat::default();
    for group in &surveys {
        csat.surveys_sent += group.sent;
        let mut mine = [0i64; 5];
        for (n, count) in mine.iter_mut().zip(&group.ratings) {
            *n = *count;
        }
        for (all, n) in csat.ratings.iter_mut().zip(mine) {
            *all += n;
        }
        if let (Some(user), Some(average)) = (group.agent, mean(&mine)) {
            let a = agents.entry(user).or_insert_with(|| empty_agent(user));
            a.csat_answered = mine.iter().sum();
            a.csat_average = Some(average);
        }
    }
    csat.answered = csat.ratings.iter().sum();
    csat.average = mean(&csat.ratings);
    for (user, mut w) in waits_by_agent {
        if let Some(a) = agents.get_mut(&user) {
            a.median_first_response_seconds = rank(&mut w, 50);
        }
    }
    name_channels(tc, &mut channels)?;
    name_agents(tc, &mut agents)?;
    let first_response = FirstResponse {
        answered: waits.len() as i64,
        unanswered,
        median_seconds: rank(&mut waits.clone(), 50),
        p90_seconds: rank(&mut waits, 90),
    };
    let mut agents: Vec<AgentFigures> = agents.into_values().collect();
    agents.sort_by(|a, b| (b.replies, b.resolved, a.user_id.0).cmp(&(a.replies, a.resolved, b.user_id.0)));
    let channels: Vec<ChannelFigures> = channels.into_values().collect();
    Ok(Overview {
        from: period.from,
        to: period.to,
        conversations_opened: opened.len() as i64,
        conversations_started,
        conversations_resolved,
        messages_received: channels.iter().map(|c| c.messages_received).sum(),
        replies_sent: channels.iter().map(|c| c.replies_sent).sum(),
        notes_written,
        targets_missed,
        first_response,
        queue,
        csat,
        now,
        agents,
        channels,
    })
}

fn empty_channel(id: i64) -> ChannelFigures {
    ChannelFigures {
        channel_id: ChannelId(id),
        name: String::new(),
        platform: String::new(),
        conversations_opened: 0,
        conversations_started: 0,
        messages_received: 0,
        replies_sent: 0,
        targets_missed: 0,
        queue_given: 0,
        median_queue_seconds: None,
    }
}

fn empty_agent(id: i64) -> AgentFigures {
    AgentFigures {
        user_id: UserId(id),
        name: None,
        email: None,
        replies: 0,
        resolved: 0,
        first_responses: 0,
        median_first_response_seconds: None,
        csat_answered: 0,
        csat_average: None,
        conversations_started: 0,
        targets_missed: 0,
        queue_given: 0,
        median_queue_seconds: None,
    }
}

/// The mean of ratings counted as [1s, 2s, 3s, 4s, 5s], to two decimals.
fn mean(ratings: &[i64; 5]) -> Option<f64> {
    let answers: i64 = ratings.iter().sum();
    let total: i64 = ratings.iter().zip(1..).map(|(n, score)| n * score).sum();
    (answers > 0).then(|| (total as f64 * 100.0 / answers as f64).round() / 100.0)
}

/// The `percent`th percentile of `values` by nearest rank; `None` for none.
fn rank(values: &mut [i64], percent: usize) -> Option<i64> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let at = (values.len() * percent).div_ceil(100).clamp(1, values.len());
    Some(values[at - 1])
}

fn name_channels(tc: &mut TenantConn<'_>, channels: &mut BTreeMap<i64, ChannelFigures>) -> AppResult<()> {
    let ids: Vec<i64> = channels.keys().copied().collect();
    let named: Vec<ChannelName> = diesel::sql_query("SELECT id, name, platform FROM channels WHERE id = ANY($1)")
        .bind::<diesel::sql_types::Array<BigInt>, _>(&ids)
        .load(tc.pg())?;
    for n in named {
        if let Some(c) = channels.get_mut(&n.id) {
            c.name = n.name;
            c.platform = n.platform;
        }
    }
    Ok(())
}

/// Names and addresses of the members (former members too: their replies
/// stay theirs).
fn name_agents(tc: &mut TenantConn<'_>, agents: &mut BTreeMap<i64, AgentFigures>) -> AppResult<()> {
    let ids: Vec<i64> = agents.keys().copied().collect();
    let people: Vec<Person> = diesel::sql_query("SELECT id, name, email FROM public.users WHERE id = ANY($1)")
        .bind::<diesel::sql_types::Array<BigInt>, _>(&ids)
        .load(tc.pg())?;
    for p in people {
        if let Some(a) = agents.get_mut(&p.id) {
            a.name = Some(p.name);
            a.email = Some(p.email);
        }
    }
    Ok(())
}

/// The report's tables as CSV, for a spreadsheet
/// (`GET /api/reports/agents.csv`, `…/channels.csv`): a header row, then
/// one row per agent or channel; times in seconds, averages to two
/// decimals, empty where there is none.
impl Overview {
    pub fn agents_csv(&self) -> String {
        let mut out = csv_row(&[
            "user_id",
            "name",
            "email",
            "replies",
            "resolved",
            "first_responses",
            "median_first_response_seconds",
            "csat_answered",
            "csat_average",
            "conversations_started",
            "targets_missed",
            "queue_given",
            "median_queue_seconds",
        ]);
        for a in &self.agents {
            out.push_str(&csv_row(&[
                &a.user_id.to_string(),
                a.name.as_deref().unwrap_or_default(),
                a.email.as_deref().unwrap_or_default(),
                &a.replies.to_string(),
                &a.resolved.to_string(),
                &a.first_responses.to_string(),
                &a.median_first_response_seconds.map(|s| s.to_string()).unwrap_or_default(),
                &a.csat_answered.to_string(),
                &a.csat_average.map(|v| format!("{v:.2}")).unwrap_or_default(),
                &a.conversations_started.to_string(),
                &a.targets_missed.to_string(),
                &a.queue_given.to_string(),
                &a.median_queue_seconds.map(|s| s.to_string()).unwrap_or_default(),
            ]));
        }
        out
    }

    pub fn channels_csv(&self) -> String {
        let mut out = csv_row(&[
            "channel_id",
            "name",
            "platform",
            "conversations_opened",
            "conversations_started",
            "messages_received",
            "replies_sent",
            "targets_missed",
            "queue_given",
            "median_queue_seconds",
        ]);
        for c in &self.channels {
            out.push_str(&csv_row(&[
                &c.channel_id.to_string(),
                &c.name,
                &c.platform,
                &c.conversations_opened.to_string(),
                &c.conversations_started.to_string(),
                &c.messages_received.to_string(),
                &c.replies_sent.to_string(),
                &c.targets_missed.to_string(),
                &c.queue_given.to_string(),
                &c.median_queue_seconds.map(|s| s.to_string()).unwrap_or_default(),
            ]));
        }
        out
    }
}

/// One CSV line (RFC 4180, CRLF). A field a spreadsheet would take for a
/// formula (a name someone chose, starting `=`, `+`, `-`, `@`, a tab or a
/// carriage return) is kept as text with a leading `'`: an exported
/// report must not run what a member typed as their name.
pub(crate) fn csv_row(fields: &[&str]) -> String {
    let cells: Vec<String> = fields
        .iter()
        .map(|f| {
            let f = if f.starts_with(['=', '+', '-', '@', '\t', '\r']) && f.parse::<f64>().is_err() {
                format!("'{f}")
            } else {
                f.to_string()
            };
            if f.contains([',', '"', '\n', '\r']) {
                format!("\"{}\"", f.replace('"', "\"\""))
            } else {
                f
            }
        })
        .collect();
    format!("{}\r\n", cells.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_what_it_must_and_runs_no_formula() {
        assert_eq!(csv_row(&["1", "Ann", "ann@acme.test"]), "1,Ann,ann@acme.test\r\n");
        assert_eq!(
            csv_row(&["Lee, Ann", "say \"hi\"", "two\nlines"]),
            "\"Lee, Ann\",\"say \"\"hi\"\"\",\"two\nlines\"\r\n"
        );
        assert_eq!(
            csv_row(&["=HYPERLINK(\"x\")", "@SUM(A1)", "-12", "+3.5", ""]),
            "\"'=HYPERLINK(\"\"x\"\")\",'@SUM(A1),-12,+3.5,\r\n"
        );
    }

    #[test]
    fn ratings_average_to_two_decimals() {
        assert_eq!(mean(&[0; 5]), None);
        assert_eq!(mean(&[0, 0, 0, 0, 3]), Some(5.0));
        assert_eq!(mean(&[1, 0, 0, 1, 1]), Some(3.33));
        assert_eq!(mean(&[0, 1, 0, 0, 2]), Some(4.0));
    }

    #[test]
    fn percentiles_are_by_nearest_rank() {
        assert_eq!(rank(&mut [], 50), None);
        assert_eq!(rank(&mut [7], 90), Some(7));
        assert_eq!(rank(&mut [30, 10, 20, 40], 50), Some(20));
        let mut ten: Vec<i64> = (1..=10).rev().collect();
        assert_eq!((rank(&mut ten, 50), rank(&mut ten, 90)), (Some(5), Some(9)));
    }

    #[test]
    fn a_period_is_read_from_times_or_dates_and_checked() {
        let now = Utc::now();
        let p = Period::parse(Some("2026-11-01"), Some("2026-12-01T00:00:00Z"), None, now).expect("period");
        assert_eq!(
            (p.from.to_rfc3339(), p.to.to_rfc3339()),
            ("2026-11-01T00:00:00+00:00".into(), "2026-12-01T00:00:00+00:00".into())
        );
        let default = Period::parse(None, None, None, now).expect("default");
        assert_eq!((default.to, default.to - default.from), (now, Duration::days(DEFAULT_DAYS)));
        for (from, to) in [
            (Some("2026-12-01"), Some("2026-11-01")),
            (Some("2024-01-01"), Some("2026-01-01")),
            (Some("yesterday"), None),
            (None, Some("2026-13-01")),
        ] {
            let e = Period::parse(from, to, None, now).expect_err("refused");
            assert_eq!(e.code, "invalid_period", "{from:?} {to:?}");
        }
    }
}
