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
use serde_json::Value;

use crate::db::tenant_schema::{event_seq, events};
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};

pub const NOTIFY_CHANNEL: &str = "switchboard_events";

/// Events appended by one transaction. They are kept in memory and written
/// at the end ([`EventLog::notify`]) with one sequence reservation and one
/// multi-row insert, so the `event_seq` row lock is held only for the last
/// moments of the transaction.
#[derive(Default)]
pub struct EventLog {
    pending: Vec<(String, Option<i64>, Option<i64>, Value)>,
    pub count: usize,
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
        let payload = serde_json::to_value(payload).map_err(AppError::internal)?;
        self.pending.push((kind.to_string(), channel_id, conversation_id, payload));
        self.count += 1;
        Ok(())
    }

    /// Writes the events with consecutive sequence numbers and sends one
    /// NOTIFY for the whole transaction, if anything was appended.
    pub fn notify(self, tc: &mut TenantConn<'_>) -> AppResult<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let n = self.pending.len() as i64;
        let last: i64 = diesel::update(event_seq::table.find(1))
            .set(event_seq::value.eq(event_seq::value + n))
            .returning(event_seq::value)
            .get_result(tc.pg())?;
        let first = last - n + 1;
        let rows: Vec<_> = self
            .pending
            .into_iter()
            .enumerate()
            .map(|(i, (kind, channel_id, conversation_id, payload))| {
                (
                    events::seq.eq(first + i as i64),
                    events::type_.eq(kind),
                    events::channel_id.eq(channel_id),
                    events::conversation_id.eq(conversation_id),
                    events::payload.eq(payload),
                )
            })
            .collect();
        // Large batches go in chunks (bind parameter limit).
        for chunk in rows.chunks(2000) {
            diesel::insert_into(events::table).values(chunk).execute(tc.pg())?;
        }
        // Ids only: "<tenant>:<first seq>:<last seq>".
        let payload = format!("{}:{first}:{last}", tc.tenant().0);
        diesel::sql_query("SELECT pg_catalog.pg_notify($1, $2)")
            .bind::<diesel::sql_types::Text, _>(NOTIFY_CHANNEL)
            .bind::<diesel::sql_types::Text, _>(payload)
            .execute(tc.pg())?;
        Ok(())
    }
}

/// Runs `f` with an event log and sends the notification at its end.
pub fn with_events<T>(
    tc: &mut TenantConn<'_>,
    f: impl FnOnce(&mut TenantConn<'_>, &mut EventLog) -> AppResult<T>,
) -> AppResult<T> {
    let mut log = EventLog::new();
    let out = f(tc, &mut log)?;
    log.notify(tc)?;
    Ok(out)
}

#[derive(Debug, Clone, Serialize, Queryable)]
pub struct StoredEvent {
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub channel_id: Option<i64>,
    pub conversation_id: Option<i64>,
    pub data: Value,
    pub at: DateTime<Utc>,
}

/// Events after `since`, oldest first.
pub fn since(tc: &mut TenantConn<'_>, since: i64, limit: i64) -> AppResult<Vec<StoredEvent>> {
    Ok(events::table
        .filter(events::seq.gt(since))
        .order(events::seq)
        .limit(limit)
        .select((
            events::seq,
            events::type_,
            events::channel_id,
            events::conversation_id,
            events::payload,
            events::created_at,
        ))
        .load(tc.pg())?)
}

pub fn last_seq(tc: &mut TenantConn<'_>) -> AppResult<i64> {
    Ok(event_seq::table.find(1).select(event_seq::value).first(tc.pg())?)
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
        serde_json::json!({"seq": self.seq, "type": self.kind, "at": self.at, "data": self.data}).to_string()
    }
}
