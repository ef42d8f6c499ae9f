//! Erasure's reach into the webhook inbox: what Meta sent of an erased
//! customer that is still waiting to be processed (`pending`, retries
//! included) or dead-lettered would otherwise bring them back, as a new
//! contact, when it is processed or replayed (`processor`).
//!
//! Decisions:
//! - Erasing a contact (`contacts::erase`) takes, in the same
//!   transaction, every event naming them out of the stored bodies of
//!   those two kinds: a Messenger or Instagram `messaging`/`standby` item
//!   whose sender or recipient they are, a WhatsApp `messages`,
//!   `statuses`, `contacts` or echo item from, to or about their number,
//!   a history thread that is theirs; only in what came for the contact's
//!   own channel (the entry of its page or account, the change of its
//!   number: the same customer may write to another tenant's number). A
//!   body left with nothing is deleted; the rest keep their other
//!   customers' events, stored again without the erased ones (the
//!   signature was checked when it came; replay does not check it again).
//! - Rows the processor holds at that moment (marking them done) are
//!   passed over (`SKIP LOCKED`: an erasure never waits on a batch), as
//!   is what it already read: a message being processed as the contact is
//!   erased makes them again, as one that comes after would. A body only
//!   claimed (a lease, not a lock) is scrubbed; the batch on it then waits
//!   for the erasure to mark it done. Both take the bodies before the live
//!   log's counter (a batch marks them before it writes its events), so
//!   that wait never closes a cycle. A body that
//!   is not JSON and holds one of their ids is deleted whole: it can never
//!   be processed (it dead-letters at once), and nothing in it can be told
//!   apart from the rest.
//! - Processed bodies (`done`), and those passed over above, are scrubbed
//!   the same way in the background, within a minute or so rather than
//!   left to their retention (`SWITCHBOARD_WEBHOOK_RETENTION_HOURS`, 24
//!   by default): searching a day's traffic would hold the erasure, its
//!   request and its locks far too long. The erasing transaction queues a
//!   pass ([`queue_pass`], a row of `public.webhook_scrubs` naming the
//!   channel, the customer's ids and the range of stored ids up to the
//!   newest); every `serve` works through the queue ([`run`]), woken by
//!   an erasure there and looking each minute for one elsewhere. Each
//!   [`step`] reads [`RANGE`] ids of one pass in its own short transaction
//!   (instances share passes with `SKIP LOCKED`, and a body the processor
//!   holds is tried again at the next step, never waited on); the row is
//!   deleted when its range is done, so the ids it names are kept only
//!   that long. A pass that finds the inbox empty is not queued. What is
//!   stored after the erasure is new and is not touched. Searching 10,000
//!   bodies of ~1 KB took 12–14 ms on the fortieth machine: a day of a
//!   million webhooks is about 100 steps and a second and a half of the
//!   database's time.

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text};
use serde_json::Value;

use crate::db::schema::{webhook_events as we, webhook_scrubs as ws};
use crate::db::TenantConn;
use crate::error::AppResult;

/// Stored ids one background [`step`] reads.
pub const RANGE: i64 = 10_000;
/// How often each instance looks for passes another queued.
const LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// What became of one body.
#[derive(Debug, PartialEq)]
pub enum Scrubbed {
    /// Nothing in it named the contact.
    Untouched,
    /// Events naming them were taken out; this is what is left.
    Changed(Value),
    /// Nothing is left.
    Emptied,
}

/// How many stored bodies an erasure changed and deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, serde::Serialize)]
pub struct InboxScrubbed {
    pub changed: usize,
    pub deleted: usize,
}

/// Takes the events naming the contact (Meta's ids of the customer, each
/// a PSID, IGSID or WhatsApp number: theirs now and before a change) on
/// the channel Meta knows as `channel` (page, Instagram account or phone
/// number id) out of the bodies waiting or dead-lettered in the webhook
/// inbox ([module docs](self)).
pub fn scrub_inbox(tc: &mut TenantConn<'_>, channel: &str, contact: &[String]) -> AppResult<InboxScrubbed> {
    let mut rows: std::collections::BTreeMap<i64, Vec<u8>> = std::collections::BTreeMap::new();
    // One status at a time, each through its partial index: never the
    // processed rows.
    for (status, id) in ["pending", "dead"].iter().flat_map(|s| contact.iter().map(move |id| (*s, id))) {
        let contains = diesel::dsl::sql::<diesel::sql_types::Bool>("position(")
            .bind::<diesel::sql_types::Bytea, _>(id.as_bytes().to_vec())
            .sql(" IN body) > 0");
        rows.extend(
            we::table
                .filter(we::status.eq(status))
                .filter(contains)
                .order(we::id)
                .select((we::id, we::body))
                .for_update()
                .skip_locked()
                .load::<(i64, Vec<u8>)>(tc.pg())?,
        );
    }
    rewrite(tc.pg(), rows, channel, contact)
}

/// Stores each of `rows` (locked by the caller) without the events naming
/// `contact` on `channel`, or deletes it when nothing is left.
fn rewrite(
    conn: &mut PgConnection,
    rows: impl IntoIterator<Item = (i64, Vec<u8>)>,
    channel: &str,
    contact: &[String],
) -> AppResult<InboxScrubbed> {
    let mut done = InboxScrubbed::default();
    for (id, body) in rows {
        // Every row here holds one of their ids somewhere.
        let Ok(parsed) = serde_json::from_slice::<Value>(&body) else {
            diesel::delete(we::table.find(id)).execute(conn)?;
            done.deleted += 1;
            continue;
        };
        match scrub(&parsed, channel, contact) {
            Scrubbed::Untouched => {}
            Scrubbed::Changed(left) => {
                let bytes = serde_json::to_vec(&left).map_err(crate::error::AppError::internal)?;
                diesel::update(we::table.find(id)).set(we::body.eq(bytes)).execute(conn)?;
                done.changed += 1;
            }
            Scrubbed::Emptied => {
                diesel::delete(we::table.find(id)).execute(conn)?;
                done.deleted += 1;
            }
        }
    }
    Ok(done)
}

/// Queues the background pass over every body stored until now (in the
/// erasing transaction, so a rollback queues nothing): see the
/// [module docs](self).
pub fn queue_pass(tc: &mut TenantConn<'_>, channel: &str, contact: &[String]) -> AppResult<()> {
    // Only min and max, so each is one probe of the key's index (any other
    // aggregate, a count, would read the whole table).
    diesel::sql_query(
        "INSERT INTO public.webhook_scrubs (channel, contact_ids, after_id, up_to) \
         SELECT $1, $2, min(id) - 1, max(id) FROM public.webhook_events HAVING max(id) IS NOT NULL",
    )
    .bind::<Text, _>(channel)
    .bind::<Array<Text>, _>(contact)
    .execute(tc.pg())?;
    Ok(())
}

/// What one background [`step`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Step {
    /// The bodies it changed and deleted.
    pub scrubbed: InboxScrubbed,
    /// Whether it moved on (a body held by the processor stops it there).
    pub moved: bool,
    /// Whether its pass is done (and its row deleted).
    pub finished: bool,
}

#[derive(QueryableByName)]
struct Found {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// Reads the next [`RANGE`] ids of the oldest queued pass no other
/// instance is on, in one transaction: `None` when none waits.
pub fn step(conn: &mut PgConnection) -> AppResult<Option<Step>> {
    conn.transaction(|conn| {
        let pass: Option<(i64, String, Vec<String>, i64, i64)> = ws::table
            .order(ws::id)
            .select((ws::id, ws::channel, ws::contact_ids, ws::after_id, ws::up_to))
            .for_update()
            .skip_locked()
            .first(conn)
            .optional()?;
        let Some((id, channel, contact, after, up_to)) = pass else { return Ok(None) };
        let end = after.saturating_add(RANGE).min(up_to);
        // Through the primary key: a range, never the whole table.
        let found: Vec<i64> = diesel::sql_query(
            "SELECT id FROM public.webhook_events WHERE id > $1 AND id <= $2 AND EXISTS \
             (SELECT 1 FROM unnest($3::text[]) AS c(v) WHERE position(convert_to(c.v, 'UTF8') IN body) > 0)",
        )
        .bind::<BigInt, _>(after)
        .bind::<BigInt, _>(end)
        .bind::<Array<Text>, _>(&contact)
        .load::<Found>(conn)?
        .into_iter()
        .map(|f| f.id)
        .collect();
        let rows: Vec<(i64, Vec<u8>)> = if found.is_empty() {
            Vec::new()
        } else {
            we::table
                .filter(we::id.eq_any(&found))
                .order(we::id)
                .select((we::id, we::body))
                .for_update()
                .skip_locked()
                .load(conn)?
        };
        // A body held elsewhere (or gone since) is where the next step
        // starts again.
        let reached = match found.iter().find(|f| !rows.iter().any(|(id, _)| id == *f)) {
            Some(held) => held - 1,
            None => end,
        };
        let scrubbed = rewrite(conn, rows, &channel, &contact)?;
        let finished = reached >= up_to;
        if finished {
            diesel::delete(ws::table.find(id)).execute(conn)?;
        } else {
            diesel::update(ws::table.find(id)).set(ws::after_id.eq(reached)).execute(conn)?;
        }
        Ok(Some(Step { scrubbed, moved: reached > after, finished }))
    })
}

/// Works through the queued passes, woken by an erasure on this instance
/// (`AppState::wake_scrub`) and looking every minute for any other.
pub async fn run(state: actix_web::web::Data<crate::app::AppState>) {
    loop {
        let mut total = InboxScrubbed::default();
        loop {
            match state.db.public(step).await {
                Ok(Some(step)) => {
                    total.changed += step.scrubbed.changed;
                    total.deleted += step.scrubbed.deleted;
                    if step.finished {
                        tracing::info!(
                            changed = total.changed,
                            deleted = total.deleted,
                            "erasure's pass over processed webhooks done"
                        );
                        total = InboxScrubbed::default();
                    }
                    if !step.moved {
                        // The processor holds a body: after a while.
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = ?e, "erasure's pass over processed webhooks will try again");
                    break;
                }
            }
        }
        let _ = tokio::time::timeout(LOOK_EVERY, state.wake_scrub.notified()).await;
    }
}

/// One body without the events naming any of `contact` on `channel`.
pub fn scrub(body: &Value, channel: &str, contact: &[String]) -> Scrubbed {
    let Some(entries) = body.get("entry").and_then(Value::as_array) else { return Scrubbed::Untouched };
    let whatsapp = body.get("object").and_then(Value::as_str) == Some("whatsapp_business_account");
    let mut removed = false;
    let mut kept_entries = Vec::with_capacity(entries.len());
    for entry in entries {
        let mut entry = entry.clone();
        let mut emptied = false;
        if whatsapp {
            if let Some(changes) = entry.get_mut("changes").and_then(Value::as_array_mut) {
                let before = changes.len();
                changes.retain_mut(|change| {
                    let Some(value) = change.get_mut("value") else { return true };
                    let number = value.pointer("/metadata/phone_number_id").and_then(Value::as_str);
                    if number != Some(channel) {
                        return true;
                    }
                    let (took, empty) = without(value, contact);
                    removed |= took;
                    !(took && empty)
                });
                emptied = before > 0 && changes.is_empty();
            }
        } else if entry.get("id").and_then(Value::as_str) == Some(channel) {
            let (took, empty) = without(&mut entry, contact);
            removed |= took;
            emptied = took && empty;
        }
        if !emptied {
            kept_entries.push(entry);
        }
    }
    if !removed {
        return Scrubbed::Untouched;
    }
    if kept_entries.is_empty() {
        return Scrubbed::Emptied;
    }
    let mut left = body.clone();
    left["entry"] = Value::Array(kept_entries);
    Scrubbed::Changed(left)
}

/// Drops from `holder`'s arrays (and their items' arrays, as a history's
/// threads hold messages) every item naming `contact`: whether any was
/// dropped, and whether `holder` has no item left in any array.
fn without(holder: &mut Value, contact: &[String]) -> (bool, bool) {
    let Some(fields) = holder.as_object_mut() else { return (false, false) };
    let mut took = false;
    let mut items_left = 0;
    for (key, field) in fields.iter_mut() {
        let Some(items) = field.as_array_mut() else { continue };
        let threads = key == "threads";
        items.retain_mut(|item| {
            if names(item, contact, threads) {
                took = true;
                return false;
            }
            let (inner_took, _) = without(item, contact);
            took |= inner_took;
            true
        });
        items_left += items.len();
    }
    (took, items_left == 0)
}

/// Whether one event or record is about `contact`: its sender or
/// recipient (Messenger, Instagram), from, to, `wa_id` or `recipient_id`
/// (WhatsApp), or a history thread's `id`.
fn names(item: &Value, contact: &[String], thread: bool) -> bool {
    let is = |v: Option<&Value>| v.and_then(Value::as_str).is_some_and(|id| contact.iter().any(|c| c == id));
    is(item.pointer("/sender/id"))
        || is(item.pointer("/recipient/id"))
        || is(item.get("from"))
        || is(item.get("to"))
        || is(item.get("wa_id"))
        || is(item.get("recipient_id"))
        || (thread && is(item.get("id")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids(of: &[&str]) -> Vec<String> {
        of.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_messenger_batch_keeps_the_other_customer_and_the_other_page() {
        let body = json!({"object": "page", "entry": [
            {"id": "PAGE", "time": 1, "messaging": [
                {"sender": {"id": "GONE"}, "recipient": {"id": "PAGE"}, "message": {"mid": "m1", "text": "erase me"}},
                {"sender": {"id": "PAGE"}, "recipient": {"id": "GONE"}, "message": {"mid": "m2", "is_echo": true}},
                {"sender": {"id": "STAYS"}, "recipient": {"id": "PAGE"}, "message": {"mid": "m3", "text": "hi"}}]},
            {"id": "OTHER", "time": 1, "messaging": [
                {"sender": {"id": "GONE"}, "recipient": {"id": "OTHER"}, "message": {"mid": "m4", "text": "not ours"}}]}]});
        let Scrubbed::Changed(left) = scrub(&body, "PAGE", &ids(&["GONE"])) else { panic!("changed") };
        assert_eq!(left["entry"][0]["messaging"].as_array().map(Vec::len), Some(1));
        assert_eq!(left["entry"][0]["messaging"][0]["message"]["mid"], "m3");
        assert_eq!(left["entry"][1], body["entry"][1], "another page's entry is another channel's");
    }

    #[test]
    fn a_body_of_only_theirs_is_emptied_and_one_without_them_untouched() {
        let body = json!({"object": "instagram", "entry": [{"id": "IG", "time": 1, "messaging": [
            {"sender": {"id": "GONE"}, "recipient": {"id": "IG"}, "read": {"mid": "m1"}}]}]});
        assert_eq!(scrub(&body, "IG", &ids(&["GONE"])), Scrubbed::Emptied);
        assert_eq!(scrub(&body, "IG", &ids(&["SOMEONE"])), Scrubbed::Untouched);
        assert_eq!(scrub(&json!({"object": "page"}), "IG", &ids(&["GONE"])), Scrubbed::Untouched);
        assert_eq!(scrub(&json!([1, 2]), "IG", &ids(&["GONE"])), Scrubbed::Untouched);
    }

    #[test]
    fn whatsapp_takes_their_messages_statuses_contacts_and_thread_on_that_number_only_by_any_of_their_numbers() {
        let change = |number: &str, value: Value| {
            let mut v = value;
            v["metadata"] = json!({"phone_number_id": number});
            json!({"field": "messages", "value": v})
        };
        let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "WABA", "changes": [
            change("N1", json!({
                "contacts": [{"wa_id": "4915", "profile": {"name": "Gone"}}, {"wa_id": "3361", "profile": {"name": "Stays"}}],
                "messages": [{"from": "4915", "id": "wamid.1"}, {"from": "3361", "id": "wamid.2"},
                             {"from": "4916", "id": "wamid.7"}]})),
            change("N1", json!({"statuses": [{"id": "wamid.3", "status": "read", "recipient_id": "4915"}]})),
            change("N1", json!({"history": [{"threads": [
                {"id": "4915", "messages": [{"from": "4915", "id": "wamid.4"}]},
                {"id": "3361", "messages": [{"from": "3361", "id": "wamid.5"}]}]}]})),
            change("N2", json!({"messages": [{"from": "4915", "id": "wamid.6"}]}))]}]});
        // 4916: their number before a change.
        let Scrubbed::Changed(left) = scrub(&body, "N1", &ids(&["4915", "4916"])) else { panic!("changed") };
        let changes = left["entry"][0]["changes"].as_array().cloned().unwrap_or_default();
        assert_eq!(changes.len(), 3, "the status change had only theirs: {changes:?}");
        assert_eq!(changes[0]["value"]["contacts"], json!([{"wa_id": "3361", "profile": {"name": "Stays"}}]));
        assert_eq!(changes[0]["value"]["messages"], json!([{"from": "3361", "id": "wamid.2"}]));
        assert_eq!(changes[1]["value"]["history"][0]["threads"].as_array().map(Vec::len), Some(1));
        assert_eq!(changes[1]["value"]["history"][0]["threads"][0]["id"], "3361");
        assert_eq!(changes[2]["value"]["metadata"]["phone_number_id"], "N2", "another number is left");
        assert!(!left.to_string().contains("wamid.1") && !left.to_string().contains("wamid.4"));
    }
}
