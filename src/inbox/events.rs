//! The per-tenant realtime log. Every change the inbox makes appends an
//! event in the same transaction; the transaction then sends at most one
//! `pg_notify` carrying only `<tenant id>:<first seq>:<last seq>` (delivered at commit,
//! so listeners never hear of an event that rolled back).
//!
//! Sequence numbers come from the single row of `event_seq`, incremented
//! with `UPDATE … RETURNING`: the row stays locked until the transaction
//! ends, so a transaction holding seq 41 always commits before one can take
//! 42, and a reader that has seen 42 can never later find a 41.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use std::collections::HashSet;

use crate::db::tenant_schema::{event_seq, events};
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

pub const NOTIFY_CHANNEL: &str = "switchboard_events";

/// The notices meant for one member: a colleague assigned them a
/// conversation or mentioned them, one of theirs passed its reply
/// target, or its customer wrote. Kept for them (`notifications`), and
/// but for the last mailed when they are away (`notice_mail`).
pub const MEMBER_NOTICE_KINDS: [&str; 4] =
    ["assigned", "mention", super::notifications::REPLY_OVERDUE, super::notifications::CUSTOMER_MESSAGE];

/// A notice for one member, as its payload says it.
#[derive(Debug, Clone)]
pub struct MemberNotice {
    /// Of [`MEMBER_NOTICE_KINDS`].
    pub kind: String,
    pub user: i64,
    /// The colleague who did it; none for the clock's.
    pub by: Option<i64>,
    pub conversation: i64,
    /// The note that mentions them.
    pub message: Option<i64>,
    pub preview: Option<String>,
}

impl MemberNotice {
    /// A notice's payload, when it is one member's and not of their own doing.
    fn read(payload: &str) -> Option<MemberNotice> {
        // Most are the channel's (a new message, on every webhook): they
        // name no member, and need no parsing to be passed over.
        if !payload.contains("\"user_id\"") {
            return None;
        }
        #[derive(serde::Deserialize)]
        struct Payload {
            kind: String,
            user_id: Option<String>,
            by: Option<String>,
            conversation_id: String,
            message_id: Option<String>,
            preview: Option<String>,
        }
        let p: Payload = serde_json::from_str(payload).ok()?;
        if !MEMBER_NOTICE_KINDS.contains(&p.kind.as_str()) {
            return None;
        }
        let id = |raw: Option<&str>| raw.and_then(|i| i.parse::<i64>().ok());
        let (user, by) = (id(p.user_id.as_deref())?, id(p.by.as_deref()));
        if by == Some(user) {
            return None;
        }
        Some(MemberNotice {
            conversation: id(Some(&p.conversation_id))?,
            message: id(p.message_id.as_deref()),
            kind: p.kind,
            user,
            by,
            preview: p.preview,
        })
    }
}

/// Events appended by one transaction. They are kept in memory and written
/// at the end ([`EventLog::notify`]) with one sequence reservation and one
/// multi-row insert, so the `event_seq` row lock is held only for the last
/// moments of the transaction.
#[derive(Default)]
pub struct EventLog {
    pending: Vec<Pending>,
    /// Notices for members that no event of their own carries (the live
    /// inbox has them as other events already): kept for the member
    /// (`notifications`) and mailed (`notice_mail`).
    notices: Vec<String>,
    pub count: usize,
}

/// An event appended and not yet written.
struct Pending {
    kind: String,
    channel_id: Option<i64>,
    conversation_id: Option<i64>,
    /// The one member it is for ([`EventLog::append_for`]).
    for_user_id: Option<i64>,
    /// The payload as JSON text.
    payload: String,
}

impl EventLog {
    pub fn new() -> EventLog {
        EventLog::default()
    }

    pub fn append(
        &mut self,
        _tc: &mut TenantConn<'_>,
        kind: &str,
        channel_id: Option<i64>,
        conversation_id: Option<i64>,
        payload: impl Serialize,
    ) -> AppResult<()> {
        self.push(kind, channel_id, conversation_id, None, payload)
    }

    /// An event meant for `user` alone (a mention of them, their unread
    /// count): only their sockets receive it, live or replayed, and only
    /// while they may see `channel_id`; integrators' endpoints, which take
    /// the tenant's whole log, still do.
    pub fn append_for(
        &mut self,
        _tc: &mut TenantConn<'_>,
        user: UserId,
        kind: &str,
        channel_id: Option<i64>,
        conversation_id: Option<i64>,
        payload: impl Serialize,
    ) -> AppResult<()> {
        self.push(kind, channel_id, conversation_id, Some(user.0), payload)
    }

    /// The payload of the latest `kind` event for `user` appended and not
    /// yet written.
    pub fn latest_for(&self, user: UserId, kind: &str) -> Option<&str> {
        self.pending.iter().rev().find(|p| p.for_user_id == Some(user.0) && p.kind == kind).map(|p| p.payload.as_str())
    }

    fn push(
        &mut self,
        kind: &str,
        channel_id: Option<i64>,
        conversation_id: Option<i64>,
        for_user_id: Option<i64>,
        payload: impl Serialize,
    ) -> AppResult<()> {
        // Serialised once: the same text is stored and, for the processor's
        // events, framed for this instance's sockets.
        let payload = serde_json::to_string(&payload).map_err(AppError::internal)?;
        self.pending.push(Pending { kind: kind.to_string(), channel_id, conversation_id, for_user_id, payload });
        self.count += 1;
        Ok(())
    }

    /// A notice for one member, as a `notification`'s data, that no event
    /// of its own carries (an assignment: `conversation.updated` shows it).
    pub fn notice(&mut self, notice: serde_json::Value) {
        self.notices.push(notice.to_string());
    }

    /// The notices so far meant for one member ([`MEMBER_NOTICE_KINDS`]),
    /// but for what they did themselves: of the `notification` events
    /// appended, then the [`EventLog::notice`] ones. Read once per unit
    /// of work, for mail (`notice_mail`) and the member's list
    /// (`notifications`).
    pub fn member_notices(&self) -> Vec<MemberNotice> {
        let logged = self.pending.iter().filter(|e| e.kind == "notification").map(|e| e.payload.as_str());
        logged.chain(self.notices.iter().map(String::as_str)).filter_map(MemberNotice::read).collect()
    }

    /// Writes the events with consecutive sequence numbers and sends one
    /// NOTIFY for the whole transaction, if anything was appended.
    pub fn notify(self, tc: &mut TenantConn<'_>) -> AppResult<()> {
        self.write(tc).map(drop)
    }

    /// [`EventLog::notify`], returning the events as written, so that after
    /// the commit they can go to this instance's sockets without being read
    /// back ([`crate::realtime::Feed`]). One statement: reserve the numbers
    /// (locking the counter row until commit), insert the rows, notify.
    pub fn write(self, tc: &mut TenantConn<'_>) -> AppResult<Vec<StoredEvent>> {
        use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};
        #[derive(QueryableByName)]
        struct Reserved {
            #[diesel(sql_type = BigInt)]
            last: i64,
            #[diesel(sql_type = Timestamptz)]
            at: DateTime<Utc>,
        }
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let n = self.pending.len() as i64;
        let mut kinds = Vec::with_capacity(self.pending.len());
        let mut channels = Vec::with_capacity(self.pending.len());
        let mut conversations = Vec::with_capacity(self.pending.len());
        let mut users = Vec::with_capacity(self.pending.len());
        let mut payloads = Vec::with_capacity(self.pending.len());
        for e in &self.pending {
            kinds.push(&e.kind);
            channels.push(e.channel_id);
            conversations.push(e.conversation_id);
            users.push(e.for_user_id);
            payloads.push(&e.payload);
        }
        // The NOTIFY carries ids only: "<tenant>:<first seq>:<last seq>".
        // `now()` is the transaction's start, the rows' `created_at`.
        let reserved: Reserved = crate::db::prepared(
            "WITH s AS (UPDATE event_seq SET value = value + $1 WHERE id = 1 RETURNING value), \
                  ins AS (INSERT INTO events (seq, type, channel_id, conversation_id, for_user_id, payload) \
                          SELECT s.value - $1 + v.ord, v.kind, v.channel_id, v.conversation_id, v.for_user_id, \
                                 v.payload::json \
                            FROM s, unnest($2, $3, $4, $5, $6) WITH ORDINALITY \
                                    AS v(kind, channel_id, conversation_id, for_user_id, payload, ord)) \
             SELECT s.value AS last, now() AS at, \
                    pg_catalog.pg_notify($7, $8 || ':' || (s.value - $1 + 1) || ':' || s.value) AS sent \
               FROM s",
        )
        .bind::<BigInt, _>(n)
        .bind::<Array<Text>, _>(kinds)
        .bind::<Array<Nullable<BigInt>>, _>(channels)
        .bind::<Array<Nullable<BigInt>>, _>(conversations)
        .bind::<Array<Nullable<BigInt>>, _>(users)
        .bind::<Array<Text>, _>(payloads)
        .bind::<Text, _>(NOTIFY_CHANNEL)
        .bind::<Text, _>(tc.tenant().0.to_string())
        .get_result(tc.pg())?;
        let first = reserved.last - n + 1;
        Ok(self
            .pending
            .into_iter()
            .zip(first..)
            .map(|(e, seq)| StoredEvent {
                seq,
                kind: e.kind,
                channel_id: e.channel_id,
                conversation_id: e.conversation_id,
                data: e.payload,
                at: reserved.at,
                for_user_id: e.for_user_id,
            })
            .collect())
    }
}

/// An event as read back for the sockets; `data` is the payload's JSON
/// text, put into frames as it is (never parsed and serialised again).
#[derive(Debug, Clone, Queryable)]
pub struct StoredEvent {
    pub seq: i64,
    pub kind: String,
    pub channel_id: Option<i64>,
    pub conversation_id: Option<i64>,
    pub data: String,
    pub at: DateTime<Utc>,
    /// The one member it is for ([`EventLog::append_for`]); `None`: every
    /// agent's who sees its channel.
    pub for_user_id: Option<i64>,
}

/// Whose events a replay reads: one member's, who sees `channels`
/// (`None`: every channel).
#[derive(Clone, Copy)]
pub struct Viewer<'a> {
    pub user: i64,
    pub channels: Option<&'a HashSet<i64>>,
}

/// The type of an event whose content was removed ([`redact_channel`]);
/// never read back.
pub const REDACTED: &str = "redacted";

/// Events after `since`, whoever they are for, oldest first (redacted ones
/// left out).
pub fn since(tc: &mut TenantConn<'_>, since: i64, limit: i64) -> AppResult<Vec<StoredEvent>> {
    read(tc, after(since, None), limit)
}

/// Events after `since` for `viewer`: of the channels they see (events of
/// no channel, the tenant's own, go to all) and not for someone else;
/// oldest first, redacted ones left out.
pub fn since_for(tc: &mut TenantConn<'_>, since: i64, viewer: Viewer<'_>, limit: i64) -> AppResult<Vec<StoredEvent>> {
    read(tc, after(since, Some(viewer)), limit)
}

fn read(
    tc: &mut TenantConn<'_>,
    query: events::BoxedQuery<'_, diesel::pg::Pg>,
    limit: i64,
) -> AppResult<Vec<StoredEvent>> {
    Ok(query
        .order(events::seq)
        .limit(limit)
        .select((
            events::seq,
            events::type_,
            events::channel_id,
            events::conversation_id,
            diesel::dsl::sql::<diesel::sql_types::Text>("payload::text"),
            events::created_at,
            events::for_user_id,
        ))
        .load(tc.pg())?)
}

/// Whether more than `n` events after `since` are for `viewer` (as
/// [`since_for`] reads them): a replay's size, known before it starts.
pub fn more_than_after(tc: &mut TenantConn<'_>, since: i64, viewer: Viewer<'_>, n: i64) -> AppResult<bool> {
    let query = after(since, Some(viewer)).order(events::seq).offset(n).limit(1).select(events::seq);
    Ok(query.first::<i64>(tc.pg()).optional()?.is_some())
}

/// Events after `since`, all of them or `viewer`'s.
fn after<'a>(since: i64, viewer: Option<Viewer<'_>>) -> events::BoxedQuery<'a, diesel::pg::Pg> {
    let query = events::table.filter(events::seq.gt(since)).filter(events::type_.ne(REDACTED)).into_boxed();
    let Some(viewer) = viewer else { return query };
    let query = query.filter(events::for_user_id.is_null().or(events::for_user_id.eq(viewer.user)));
    match viewer.channels {
        None => query,
        Some(set) => {
            let ids: Vec<i64> = set.iter().copied().collect();
            query.filter(events::channel_id.is_null().or(events::channel_id.eq_any(ids)))
        }
    }
}

pub fn last_seq(tc: &mut TenantConn<'_>) -> AppResult<i64> {
    Ok(event_seq::table.find(1).select(event_seq::value).first(tc.pg())?)
}

/// Empties a purged channel's events: no copy of its messages is replayed,
/// while their sequence numbers stay in the log (resuming clients are told
/// to resync only when retention removed what they missed). Retention
/// prunes them like any other.
pub fn redact_channel(tc: &mut TenantConn<'_>, channel_id: i64) -> AppResult<usize> {
    Ok(diesel::update(events::table.filter(events::channel_id.eq(channel_id))).set(emptied()).execute(tc.pg())?)
}

/// Empties the events of conversations that go (an erasure, retention),
/// as [`redact_channel`] does a channel's.
pub fn redact_conversations(tc: &mut TenantConn<'_>, ids: &[i64]) -> AppResult<usize> {
    Ok(diesel::update(events::table.filter(events::conversation_id.eq_any(ids))).set(emptied()).execute(tc.pg())?)
}

/// What an emptied event keeps: its sequence number and time, nothing of
/// what it told.
#[allow(clippy::type_complexity)]
pub fn emptied() -> (
    diesel::dsl::Eq<events::type_, &'static str>,
    diesel::dsl::Eq<events::channel_id, Option<i64>>,
    diesel::dsl::Eq<events::conversation_id, Option<i64>>,
    diesel::dsl::Eq<events::for_user_id, Option<i64>>,
    diesel::dsl::Eq<events::payload, serde_json::Value>,
) {
    (
        events::type_.eq(REDACTED),
        events::channel_id.eq(None::<i64>),
        events::conversation_id.eq(None::<i64>),
        events::for_user_id.eq(None::<i64>),
        events::payload.eq(serde_json::json!({})),
    )
}

/// The oldest kept seq (`None` when the log is empty).
pub fn oldest_seq(tc: &mut TenantConn<'_>) -> AppResult<Option<i64>> {
    Ok(events::table.select(diesel::dsl::min(events::seq)).first(tc.pg())?)
}

/// Drops events older than `hours`; returns how many.
pub fn prune(tc: &mut TenantConn<'_>, hours: i64) -> AppResult<usize> {
    let cutoff = Utc::now() - chrono::Duration::hours(hours);
    Ok(diesel::delete(events::table.filter(events::created_at.lt(cutoff))).execute(tc.pg())?)
}

impl StoredEvent {
    /// The frame a client receives: `{"seq", "type", "at", "data"}`.
    pub fn frame(&self) -> String {
        let kind = serde_json::to_string(&self.kind).unwrap_or_else(|_| "\"\"".into());
        let at = self.at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
        format!(r#"{{"seq":{},"type":{kind},"at":"{at}","data":{}}}"#, self.seq, self.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_embeds_the_stored_payload_as_json() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-22T10:00:00.123456Z").expect("time").with_timezone(&Utc);
        let ev = StoredEvent {
            seq: 42,
            kind: "message.created".into(),
            channel_id: Some(7),
            conversation_id: Some(9),
            data: r#"{"id": "5", "text": "héllo \"quoted\" 👋"}"#.into(),
            at,
            for_user_id: None,
        };
        let v: serde_json::Value = serde_json::from_str(&ev.frame()).expect("valid JSON");
        assert_eq!(v["seq"], 42);
        assert_eq!(v["type"], "message.created");
        assert_eq!(v["at"], "2026-11-22T10:00:00.123456Z");
        assert_eq!(v["data"]["text"], "héllo \"quoted\" 👋");
        assert_eq!(v.as_object().map(|o| o.len()), Some(4));
    }

    #[test]
    fn a_member_notice_is_read_from_what_names_one_member_for_a_colleagues_doing() {
        let mention = serde_json::json!({"kind": "mention", "user_id": "7", "by": "3", "conversation_id": "9",
            "channel_id": "1", "message_id": "11", "preview": "olá"});
        let read = MemberNotice::read(&mention.to_string()).expect("a notice");
        assert_eq!(
            (read.kind.as_str(), read.user, read.by, read.conversation, read.message),
            ("mention", 7, Some(3), 9, Some(11))
        );
        // The server's doing names no colleague.
        let auto = serde_json::json!({"kind": "assigned", "user_id": "7", "by": null, "conversation_id": "9"});
        assert_eq!(MemberNotice::read(&auto.to_string()).map(|n| n.by), Some(None));
        // One's own doing, the channel's notices, and what is not one.
        let own = serde_json::json!({"kind": "assigned", "user_id": "7", "by": "7", "conversation_id": "9"});
        let channel = serde_json::json!({"kind": "new_message", "conversation_id": "9", "channel_id": "1"});
        let overdue_unassigned = serde_json::json!({"kind": "reply_overdue", "user_id": null, "conversation_id": "9"});
        for payload in [own.to_string(), channel.to_string(), overdue_unassigned.to_string(), "not json".into()] {
            assert!(MemberNotice::read(&payload).is_none(), "{payload}");
        }
    }
}
