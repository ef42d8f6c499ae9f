//! A contact's changes to a message — a reaction, an edit, an unsend — and
//! those that come before the message they are about.
//!
//! Decisions:
//! - Changes go by Meta's timestamps, not by arrival: an edit older than the
//!   one shown changes nothing, nor does a contact's reaction older than
//!   their reaction shown (`reacted_at`); at the same time, the later
//!   arrival wins (WhatsApp's times are to the second); an unsent message
//!   stays unsent (no edit brings its text back) and loses its attachments
//!   too; and a change that changes nothing (Meta's duplicate) logs nothing.
//! - After a failure Meta retries in no particular order, so a change can
//!   come before its message. It is kept (`early_changes`) and applied when
//!   the message is stored, which is then created as it is now: an unsent
//!   message never shows its text, and raises no notification.
//! - Receipts that come before their outgoing message's id is known (a
//!   status webhook beating the send's answer, a read beating the echo of a
//!   reply sent elsewhere) are kept the same way (`early_statuses`) and move
//!   the message forward when it is stored or gets its id.
//! - Messenger's watermarks name no message: the newest of each kind is
//!   kept on the conversation, and a reply sent elsewhere whose echo comes
//!   after it takes the receipt it covers.
//! - What waits for a message that never comes (one from before the
//!   channel was connected) is dropped after [`KEEP_DAYS`]: Meta stops
//!   retrying after seven. What waits for a message that came meanwhile
//!   (two workers racing) is applied by a [`sweep`] of its tenant a few
//!   seconds after it was kept (`inbox::processor`), and by the hourly one.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use serde_json::{json, Value};

use super::events::EventLog;
use super::views::MessageRow;
use crate::db::tenant_schema::{early_changes as ec, early_statuses, messages as m};
use crate::db::TenantConn;
use crate::error::AppResult;

/// How long a change or receipt waits for its message.
pub const KEEP_DAYS: i64 = 7;

/// What a contact did to one of the messages of their conversation.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// `emoji: None` removes the contact's reaction.
    Reaction {
        contact: String,
        emoji: Option<String>,
    },
    Edit {
        text: Option<String>,
    },
    Unsend,
}

impl Change {
    fn kind(&self) -> &'static str {
        match self {
            Change::Reaction { .. } => "reaction",
            Change::Edit { .. } => "edit",
            Change::Unsend => "delete",
        }
    }

    /// Applies the change, made at `at`, to `row` in memory; whether it
    /// changed anything.
    pub fn apply_to(&self, row: &mut MessageRow, at: DateTime<Utc>) -> bool {
        match self {
            Change::Reaction { contact, emoji } => {
                // Same time: arrival decides (WhatsApp's are to the second).
                let mut times = row.reacted_at.as_object().cloned().unwrap_or_default();
                if times.get(contact).and_then(Value::as_i64).is_some_and(|shown| shown > at.timestamp_millis()) {
                    return false;
                }
                let mut reactions = row.reactions.as_object().cloned().unwrap_or_default();
                let before = reactions.get(contact).cloned();
                match emoji {
                    Some(e) => reactions.insert(contact.clone(), json!(e)),
                    None => reactions.remove(contact),
                };
                if reactions.get(contact) == before.as_ref() {
                    return false;
                }
                times.insert(contact.clone(), json!(at.timestamp_millis()));
                row.reactions = Value::Object(reactions);
                row.reacted_at = Value::Object(times);
                true
            }
            Change::Edit { text } => {
                // Same time: arrival decides, as for reactions; the same
                // edit again is a duplicate.
                let duplicate = row.edited_at == Some(at) && row.text == *text;
                if row.deleted_at.is_some() || row.edited_at.is_some_and(|shown| shown > at) || duplicate {
                    return false;
                }
                row.text = text.clone();
                row.edited_at = Some(at);
                true
            }
            Change::Unsend => {
                if row.deleted_at.is_some() {
                    return false;
                }
                row.text = None;
                row.attachments = json!([]);
                row.deleted_at = Some(at);
                true
            }
        }
    }
}

/// Writes the changeable columns of `row` back; returns the row as stored.
/// An unsent message's copies of its media go with its attachments: after
/// the row's update, which waits for a copy being stored (it holds the row).
pub fn write(tc: &mut TenantConn<'_>, row: &MessageRow) -> AppResult<MessageRow> {
    let stored: MessageRow = diesel::update(m::table.find(row.id))
        .set((
            m::text.eq(&row.text),
            m::attachments.eq(&row.attachments),
            m::reactions.eq(&row.reactions),
            m::reacted_at.eq(&row.reacted_at),
            m::edited_at.eq(row.edited_at),
            m::deleted_at.eq(row.deleted_at),
            m::updated_at.eq(diesel::dsl::now),
        ))
        .returning(MessageRow::as_returning())
        .get_result(tc.pg())?;
    if stored.deleted_at.is_some() {
        super::media_copies::forget(tc, stored.id)?;
    }
    Ok(stored)
}

/// Keeps a change whose message (`external_id` on the channel) is not
/// stored yet. A duplicate is kept once.
pub fn keep(
    tc: &mut TenantConn<'_>,
    channel_id: i64,
    external_id: &str,
    change: &Change,
    at: DateTime<Utc>,
) -> AppResult<()> {
    let (contact, value) = match change {
        Change::Reaction { contact, emoji } => (contact.as_str(), emoji.as_deref()),
        Change::Edit { text } => ("", text.as_deref()),
        Change::Unsend => ("", None),
    };
    diesel::insert_into(ec::table)
        .values((
            ec::channel_id.eq(channel_id),
            ec::external_id.eq(external_id),
            ec::kind.eq(change.kind()),
            ec::contact.eq(contact),
            ec::at.eq(at),
            ec::value.eq(value),
        ))
        .on_conflict_do_nothing()
        .execute(tc.pg())?;
    Ok(())
}

/// Keeps a receipt (`sent`, `delivered`, `read`, `failed`) for an
/// outgoing message whose Meta id is not stored yet: a status webhook can
/// beat the send's answer, an echo's receipt the echo. A duplicate is kept
/// once; statuses that are not receipts are not kept.
pub fn keep_status(
    tc: &mut TenantConn<'_>,
    channel_id: i64,
    external_id: &str,
    status: &str,
    error: Option<&Value>,
) -> AppResult<()> {
    if !matches!(status, "sent" | "delivered" | "read" | "failed") {
        return Ok(());
    }
    diesel::insert_into(early_statuses::table)
        .values((
            early_statuses::channel_id.eq(channel_id),
            early_statuses::external_id.eq(external_id),
            early_statuses::status.eq(status),
            early_statuses::error.eq(error),
        ))
        .on_conflict_do_nothing()
        .execute(tc.pg())?;
    Ok(())
}

/// Moves an outgoing message, just stored or just given its Meta id, by
/// the receipts kept for it (never back; `failed` last), and forgets them.
fn take_statuses(tc: &mut TenantConn<'_>, row: &mut MessageRow) -> AppResult<()> {
    let Some(external_id) = row.external_id.clone() else { return Ok(()) };
    let mine = early_statuses::table
        .filter(early_statuses::channel_id.eq(row.channel_id))
        .filter(early_statuses::external_id.eq(&external_id));
    let mut kept: Vec<(String, Option<Value>)> =
        diesel::delete(mine).returning((early_statuses::status, early_statuses::error)).get_results(tc.pg())?;
    kept.sort_by_key(|(s, _)| if s == "failed" { 10 } else { super::status_rank(s) });
    for (status, error) in kept {
        if let Some(updated) = super::messages::advance_status(tc, row, &status, error)? {
            *row = updated;
        }
    }
    Ok(())
}

/// A Messenger reply sent elsewhere (an echo, Meta's time `sent_at`),
/// stored after the contact's watermark that covers it: it takes the
/// receipt (watermarks name no message, so they are kept per conversation,
/// `contact_delivered_at` and `contact_read_at`).
pub fn take_watermarks(tc: &mut TenantConn<'_>, row: &mut MessageRow, sent_at: DateTime<Utc>) -> AppResult<()> {
    use crate::db::tenant_schema::conversations as c;
    let (delivered, read): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        c::table.find(row.conversation_id).select((c::contact_delivered_at, c::contact_read_at)).first(tc.pg())?;
    let to = match (delivered, read) {
        (_, Some(w)) if sent_at <= w => "read",
        (Some(w), _) if sent_at <= w => "delivered",
        _ => return Ok(()),
    };
    if let Some(updated) = super::messages::advance_status(tc, row, to, None)? {
        *row = updated;
    }
    Ok(())
}

/// Keeps the contact's newest Messenger watermark of a kind (`delivered`,
/// `read`) on their conversation, for replies stored after it.
pub fn keep_watermark(tc: &mut TenantConn<'_>, conversation: i64, status: &str, w: DateTime<Utc>) -> AppResult<()> {
    use crate::db::tenant_schema::conversations as c;
    let q = c::table.find(conversation);
    match status {
        "read" => diesel::update(q.filter(c::contact_read_at.is_null().or(c::contact_read_at.lt(w))))
            .set(c::contact_read_at.eq(w))
            .execute(tc.pg())?,
        _ => diesel::update(q.filter(c::contact_delivered_at.is_null().or(c::contact_delivered_at.lt(w))))
            .set(c::contact_delivered_at.eq(w))
            .execute(tc.pg())?,
    };
    Ok(())
}

/// Applies to `rows`, just stored (or just given their Meta id), what was
/// kept for them: receipts of outgoing ones, then the contacts' changes in
/// the order they were made; and forgets those. Rows that changed are
/// replaced by what was stored. For incoming rows, one query in all.
pub fn take(tc: &mut TenantConn<'_>, rows: &mut [MessageRow]) -> AppResult<()> {
    for row in rows.iter_mut().filter(|r| r.direction == "out") {
        take_statuses(tc, row)?;
    }
    use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};
    #[derive(QueryableByName)]
    struct Kept {
        #[diesel(sql_type = BigInt)]
        channel_id: i64,
        #[diesel(sql_type = Text)]
        external_id: String,
        #[diesel(sql_type = Text)]
        kind: String,
        #[diesel(sql_type = Text)]
        contact: String,
        #[diesel(sql_type = Timestamptz)]
        at: DateTime<Utc>,
        #[diesel(sql_type = Nullable<Text>)]
        value: Option<String>,
    }
    let (channels, externals): (Vec<i64>, Vec<String>) =
        rows.iter().filter_map(|r| Some((r.channel_id, r.external_id.clone()?))).unzip();
    if externals.is_empty() {
        return Ok(());
    }
    let mut kept: Vec<Kept> = crate::db::prepared(
        "DELETE FROM early_changes \
          WHERE (channel_id, external_id) IN (SELECT * FROM unnest($1::bigint[], $2::text[])) \
         RETURNING channel_id, external_id, kind, contact, at, value",
    )
    .bind::<Array<BigInt>, _>(channels)
    .bind::<Array<Text>, _>(externals)
    .load(tc.pg())?;
    if kept.is_empty() {
        return Ok(());
    }
    kept.sort_by_key(|k| k.at);
    for row in rows.iter_mut() {
        let mut changed = false;
        let key = (row.channel_id, row.external_id.clone());
        for k in kept.iter().filter(|k| k.channel_id == key.0 && Some(&k.external_id) == key.1.as_ref()) {
            let change = match k.kind.as_str() {
                "reaction" => Change::Reaction { contact: k.contact.clone(), emoji: k.value.clone() },
                "edit" => Change::Edit { text: k.value.clone() },
                "delete" => Change::Unsend,
                // Written by a newer release: not ours to guess.
                _ => continue,
            };
            changed |= change.apply_to(row, k.at);
        }
        if changed {
            *row = write(tc, row)?;
        }
    }
    Ok(())
}

/// Applies what waits for messages that are stored after all, and logs
/// `message.updated` for each that changed; how many. Two workers can race
/// (one keeps an edit while the other stores its message, neither seeing
/// the other's uncommitted row): this, run a few seconds after a batch kept
/// something and with the hourly pruning, is the net under that rare case,
/// so nothing kept outlives its message for long.
pub fn sweep(tc: &mut TenantConn<'_>, log: &mut EventLog) -> AppResult<usize> {
    let waited_for = diesel::dsl::sql::<diesel::sql_types::Bool>(
        "(channel_id, external_id) IN (SELECT channel_id, external_id FROM early_changes \
                                       UNION SELECT channel_id, external_id FROM early_statuses)",
    );
    let mut rows: Vec<MessageRow> =
        m::table.filter(waited_for).select(MessageRow::as_select()).order(m::id).for_update().load(tc.pg())?;
    if rows.is_empty() {
        return Ok(0);
    }
    let before: Vec<DateTime<Utc>> = rows.iter().map(|r| r.updated_at).collect();
    take(tc, &mut rows)?;
    let mut changed = 0;
    for (row, was) in rows.iter().zip(before) {
        if row.updated_at != was {
            log.append(tc, "message.updated", Some(row.channel_id), Some(row.conversation_id), row.update_view())?;
            changed += 1;
        }
    }
    // Receipts of incoming messages are no receipts: nothing will take them.
    diesel::sql_query(
        "DELETE FROM early_statuses s USING messages m \
          WHERE m.channel_id = s.channel_id AND m.external_id = s.external_id",
    )
    .execute(tc.pg())?;
    Ok(changed)
}

/// Drops what a purged channel's messages were waiting for.
pub fn forget_channel(tc: &mut TenantConn<'_>, channel_id: i64) -> AppResult<()> {
    diesel::delete(ec::table.filter(ec::channel_id.eq(channel_id))).execute(tc.pg())?;
    diesel::delete(early_statuses::table.filter(early_statuses::channel_id.eq(channel_id))).execute(tc.pg())?;
    Ok(())
}

/// Drops kept changes and receipts older than [`KEEP_DAYS`]; how many.
pub fn prune(tc: &mut TenantConn<'_>) -> AppResult<usize> {
    let cutoff = Utc::now() - Duration::days(KEEP_DAYS);
    let changes = diesel::delete(ec::table.filter(ec::created_at.lt(cutoff))).execute(tc.pg())?;
    let statuses =
        diesel::delete(early_statuses::table.filter(early_statuses::created_at.lt(cutoff))).execute(tc.pg())?;
    Ok(changes + statuses)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> MessageRow {
        let at = DateTime::from_timestamp(1_773_140_000, 0).expect("time");
        MessageRow {
            text: Some("original".into()),
            attachments: json!([{"type": "image", "url": "https://cdn.example.test/1.jpg"}]),
            external_id: Some("m_1".into()),
            platform_timestamp: Some(at),
            ..MessageRow::sample(at)
        }
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_773_140_000 + secs, 0).expect("time")
    }

    #[test]
    fn edits_go_by_their_time_and_never_undo_an_unsend() {
        let mut r = row();
        let edit = |t: &str| Change::Edit { text: Some(t.into()) };
        assert!(edit("second").apply_to(&mut r, at(20)));
        assert!(!edit("first").apply_to(&mut r, at(10)), "an older edit, delivered late");
        assert!(!edit("second").apply_to(&mut r, at(20)), "a duplicate");
        assert_eq!((r.text.as_deref(), r.edited_at), (Some("second"), Some(at(20))));
        assert!(edit("second, again").apply_to(&mut r, at(20)), "another at the same time: it came later");
        assert!(edit("second").apply_to(&mut r, at(21)));
        assert!(Change::Unsend.apply_to(&mut r, at(30)));
        assert!(!Change::Unsend.apply_to(&mut r, at(30)));
        assert!(!edit("third").apply_to(&mut r, at(40)), "no edit brings an unsent text back");
        assert_eq!((r.text.as_deref(), &r.attachments, r.deleted_at), (None, &json!([]), Some(at(30))));
    }

    #[test]
    fn a_reaction_that_changes_nothing_says_so() {
        let mut r = row();
        let react = |e: Option<&str>| Change::Reaction { contact: "psid".into(), emoji: e.map(str::to_string) };
        assert!(react(Some("❤️")).apply_to(&mut r, at(1)));
        assert!(!react(Some("❤️")).apply_to(&mut r, at(1)));
        assert_eq!(r.reactions, json!({"psid": "❤️"}));
        assert!(react(None).apply_to(&mut r, at(2)));
        assert!(!react(None).apply_to(&mut r, at(2)));
        assert_eq!(r.reactions, json!({}));
        // A reaction made before the removal, delivered after it: stays removed.
        assert!(!react(Some("👍")).apply_to(&mut r, at(1)));
        // Another within the same second (WhatsApp's precision): it came later.
        assert!(react(Some("😂")).apply_to(&mut r, at(2)));
        assert_eq!(r.reactions, json!({"psid": "😂"}));
        // Another contact's reaction has a time of its own.
        let other = Change::Reaction { contact: "igsid".into(), emoji: Some("❤️".into()) };
        assert!(other.apply_to(&mut r, at(0)));
        assert_eq!(r.reactions, json!({"psid": "😂", "igsid": "❤️"}));
    }
}
