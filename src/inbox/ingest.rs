//! Applying webhook items to a tenant's inbox, inside the processor's tenant
//! transaction. Every write is idempotent: a replayed or duplicated webhook
//! finds its message already stored (unique (channel, external id)) and
//! changes nothing, and receipts only move statuses forward.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde_json::{json, Value};
use std::collections::HashMap;

use super::early::{self, Change};
use super::events::EventLog;
use super::messages::{self, NewOutgoing};
use super::views::{ContactRow, ConversationRow, MessageRow, Names};
use super::{status_moves_forward, ConversationId};
use crate::channels::{ChannelRow, Platform};
use crate::db::tenant_schema::{contact_former_numbers, contacts, conversations, messages as m};
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::meta::webhook::{Attachment, DeliveryStatus, Item};

/// A conversation's columns, as [`ConversationRow`] reads them, for the
/// batch's statements written out (kept prepared): named, not `*`, which
/// changes shape when a migration adds one (and would differ between
/// tenants while `migrate` runs).
macro_rules! conversation_columns {
    () => {
        "id, channel_id, contact_id, status, assignee_id, snoozed_until, unread_count, last_message_id, \
         last_activity_at, last_inbound_at, last_inbound_external_id, created_at, updated_at, labels, priority, \
         waiting_since, reply_due_at, thread_control, team_id, queued_at, next_scheduled_at"
    };
}

/// Times a message's contact is made anew when each one made is found
/// erased before its conversation is (`Ingest::contact_and_conversation`).
const GONE_ATTEMPTS: usize = 3;

/// When a number changed hands, and the number its contact has now.
type NumberChange = (DateTime<Utc>, String);

/// Who had a number at `at`, given the times it changed hands and the
/// number each holder has now: the first to give it up at or after `at`
/// (`None`: it changed hands only before, so whoever has it now).
fn holder_at(changes: &[NumberChange], at: DateTime<Utc>) -> Option<&str> {
    changes
        .iter()
        .filter(|(changed_at, _)| at <= *changed_at)
        .min_by_key(|(changed_at, _)| *changed_at)
        .map(|(_, n)| n.as_str())
}

/// The customer a message is from or to, and when it was sent, for items
/// that store a message or change a conversation (their contacts and
/// conversations are read, and locked, with the batch's).
fn from_contact(item: &Item) -> Option<(&str, DateTime<Utc>)> {
    match item {
        Item::Message { contact, timestamp, .. }
        | Item::Echo { contact, timestamp, .. }
        | Item::History { contact, timestamp, .. }
        | Item::ThreadControl { contact, timestamp, .. } => Some((contact, *timestamp)),
        _ => None,
    }
}

/// The contact (and when) of a receipt that takes its conversation: one
/// that writes on it, a Messenger or Instagram watermark
/// (`early::keep_watermark`), a WhatsApp message failed (its wait for an
/// answer, `waiting::recompute`); or on messages it does not name: an
/// Instagram read of one message is a read of every reply before it.
/// Those take the conversation first, as an erasure does before its
/// messages: holding the named one, a read waited for an older reply the
/// erasure held while the erasure waited for the named one (seen in the
/// contacts chaos mix).
fn receipt_taking_conversation(item: &Item) -> Option<(&str, DateTime<Utc>)> {
    match item {
        Item::Delivery { contact, watermark: Some(at), .. } | Item::Read { contact, watermark: Some(at), .. } => {
            Some((contact, *at))
        }
        Item::Status { contact, status: DeliveryStatus::Failed, timestamp, .. } => Some((contact, *timestamp)),
        // No time of its own; only WhatsApp numbers are renamed by time.
        Item::Read { contact, watermark: None, mid: Some(_) } => Some((contact, Utc::now())),
        _ => None,
    }
}

/// What the caller does after the transaction commits.
#[derive(Default, Debug)]
pub struct Followups {
    /// Contacts whose profile should be looked up at Meta.
    pub profile_lookups: Vec<super::contacts::ProfileLookup>,
    /// Messenger and Instagram media to copy off Meta's CDN.
    pub media_copies: Vec<super::media_copies::MediaCopy>,
    /// Outgoing messages queued (auto-replies): wake the sender.
    pub queued_sends: usize,
    /// Something was kept for a message not stored yet ([`early`]): sweep
    /// the tenant soon, in case a racing transaction was storing it.
    pub kept_early: bool,
    /// WhatsApp business accounts whose templates Meta changed: drop this
    /// instance's kept lists ([`super::templates::TemplateCache`]).
    pub templates_changed: Vec<String>,
}

pub struct Ingest<'l> {
    pub log: &'l mut EventLog,
    /// Who may be handed a conversation (`auto_assign`).
    online: &'l crate::realtime::Online,
    pub names: Names,
    pub app_id: String,
    pub followups: Followups,
    /// Within one transaction: contacts by (channel, external id) and
    /// conversations by contact, so a batch asks the database once each.
    pub contacts: HashMap<(i64, String), ContactRow>,
    pub conversations: HashMap<i64, ConversationRow>,
    /// Contacts' messages of the batch, inserted up front in one statement:
    /// (channel, Meta id) -> row; absent from `stored` but in `attempted`
    /// means it was already there (a duplicate).
    stored: HashMap<(i64, String), MessageRow>,
    attempted: std::collections::HashSet<(i64, String)>,
    /// Conversations this batch created (for `conversation.created`).
    created: std::collections::HashSet<i64>,
    /// Contacts whose conversation changed in memory, written by [`Ingest::flush`].
    dirty: std::collections::HashSet<i64>,
    /// WhatsApp numbers changed, as far as this batch needs them: (channel,
    /// old) -> every (when, number its contact has now). From this batch's
    /// notices, and from `contact_former_numbers` for the batch's numbers
    /// that changed before. A message the old number sent before a change
    /// is the contact's who changed then, whenever and in whatever batch it
    /// is delivered.
    renamed: HashMap<(i64, String), Vec<NumberChange>>,
    /// Conversations a shared history added to since they were last
    /// announced (id -> contact), announced once each by [`Ingest::finish`].
    imported: std::collections::BTreeMap<i64, i64>,
    /// Conversations where a reply of the team's failed: their wait is
    /// worked out again by [`Ingest::finish`] (`waiting`), in id order.
    unanswered: std::collections::BTreeSet<i64>,
    /// Bytes of message text this batch added to the search index
    /// (merged off the webhook path: see `search_index`).
    pub indexed_text: usize,
}

impl<'l> Ingest<'l> {
    pub fn new(log: &'l mut EventLog, app_id: &str, online: &'l crate::realtime::Online) -> Ingest<'l> {
        Ingest {
            log,
            online,
            names: Names::default(),
            app_id: app_id.to_string(),
            followups: Followups::default(),
            contacts: HashMap::new(),
            conversations: HashMap::new(),
            stored: HashMap::new(),
            attempted: Default::default(),
            created: Default::default(),
            dirty: Default::default(),
            renamed: HashMap::new(),
            imported: Default::default(),
            unanswered: Default::default(),
            indexed_text: 0,
        }
    }

    /// Loads, in two queries, the contacts and conversations a batch of
    /// items will touch, so applying each item costs about two statements.
    /// The conversations are locked until the transaction ends.
    pub fn prefetch(
        &mut self,
        tc: &mut TenantConn<'_>,
        items: &[(i64, &Item)],
        channels: &HashMap<i64, ChannelRow>,
    ) -> AppResult<()> {
        // Before anything looks contacts up: the batch's messages from a
        // customer's new number belong to the contact of the old one.
        for (channel, item) in items {
            if let Item::NumberChanged { contact, new_contact, timestamp } = item {
                self.renumber(tc, *channel, contact, new_contact, *timestamp)?;
            }
        }
        // Only WhatsApp numbers change: other batches skip the query.
        let whatsapp: Vec<(i64, &Item)> = items
            .iter()
            .filter(|(channel, _)| channels.get(channel).is_some_and(|c| c.platform() == Platform::Whatsapp))
            .map(|(channel, item)| (*channel, *item))
            .collect();
        self.load_former_numbers(tc, &whatsapp)?;
        let mut channel_ids: Vec<i64> = Vec::new();
        let mut externals: Vec<String> = Vec::new();
        for (channel, item) in items {
            let key = match (from_contact(item), receipt_taking_conversation(item)) {
                (Some((contact, at)), _) => self.key(*channel, contact, at),
                // What the receipt writes on its conversation is locked here
                // with the others, in id order: locked when the receipt came
                // to be applied, a batch holding a newer conversation waited
                // for an older one that a change locking in id order (a bulk
                // change) held while it waited for the newer, and PostgreSQL
                // ended one of the two.
                (None, Some((contact, at))) => self.key(*channel, contact, at),
                (None, None) => continue,
            };
            if !self.contacts.contains_key(&key) {
                channel_ids.push(key.0);
                externals.push(key.1);
            }
        }
        if !externals.is_empty() {
            self.load_known(tc, channel_ids, externals)?;
        }
        self.insert_messages(tc, items)?;
        lock_named(tc, items)
    }

    fn load_known(&mut self, tc: &mut TenantConn<'_>, channel_ids: Vec<i64>, externals: Vec<String>) -> AppResult<()> {
        use diesel::sql_types::{Array, BigInt, Text};
        // Pairs, not two `= ANY` lists: those match the cross product (every
        // contact id on every channel of the batch), which the planner
        // rightly answers with a sequential scan; pairs are one index probe each.
        // Columns named, not `*`: the folded search copy of the name is not read.
        let found: Vec<ContactRow> = crate::db::prepared(
            "SELECT id, channel_id, external_id, name, profile_pic_url, profile_checked_at, created_at, updated_at, \
                    blocked_at \
               FROM contacts WHERE (channel_id, external_id) IN (SELECT * FROM unnest($1::bigint[], $2::text[]))",
        )
        .bind::<Array<BigInt>, _>(channel_ids)
        .bind::<Array<Text>, _>(externals)
        .load(tc.pg())?;
        let (channels, ids): (Vec<i64>, Vec<i64>) = found.iter().map(|c| (c.channel_id, c.id)).unzip();
        for c in found {
            self.names.put_contact(&c);
            self.contacts.insert((c.channel_id, c.external_id.clone()), c);
        }
        // Locked for the transaction (in id order, so two workers never
        // deadlock here): their changes are then computed in memory and
        // written once per batch.
        let convs: Vec<ConversationRow> = crate::db::prepared(concat!(
            "SELECT ",
            conversation_columns!(),
            " FROM conversations \
              WHERE (channel_id, contact_id) IN (SELECT * FROM unnest($1::bigint[], $2::bigint[])) \
              ORDER BY id FOR NO KEY UPDATE",
        ))
        .bind::<Array<BigInt>, _>(channels)
        .bind::<Array<BigInt>, _>(ids)
        .load(tc.pg())?;
        for c in convs {
            self.conversations.insert(c.contact_id, c);
        }
        Ok(())
    }

    /// New contacts and their conversations, each kind in one statement
    /// (a burst of first messages, a campaign, costs no more per message).
    fn create_missing(&mut self, tc: &mut TenantConn<'_>, items: &[(i64, &Item)]) -> AppResult<()> {
        let mut new_contacts: Vec<(i64, String, Option<String>)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (channel, item) in items {
            if let Item::Message { contact, contact_name, timestamp, .. } = item {
                let key = self.key(*channel, contact, *timestamp);
                if !self.contacts.contains_key(&key) && seen.insert(key.clone()) {
                    new_contacts.push((key.0, key.1, contact_name.clone()));
                }
            }
        }
        if !new_contacts.is_empty() {
            let values: Vec<_> = new_contacts
                .iter()
                .map(|(c, e, n)| (contacts::channel_id.eq(*c), contacts::external_id.eq(e), contacts::name.eq(n)))
                .collect();
            let inserted: Vec<ContactRow> = diesel::insert_into(contacts::table)
                .values(&values)
                .on_conflict((contacts::channel_id, contacts::external_id))
                .do_nothing()
                .returning(ContactRow::as_returning())
                .get_results(tc.pg())?;
            for c in inserted {
                self.names.put_contact(&c);
                self.contacts.insert((c.channel_id, c.external_id.clone()), c);
            }
        }
        // Contacts (found or made) without a conversation yet.
        let mut need: Vec<(i64, i64)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (channel, item) in items {
            if let Item::Message { contact, timestamp, .. } = item {
                if let Some(c) = self.contacts.get(&self.key(*channel, contact, *timestamp)) {
                    if !self.conversations.contains_key(&c.id) && seen.insert(c.id) {
                        need.push((*channel, c.id));
                    }
                }
            }
        }
        if !need.is_empty() {
            use diesel::sql_types::{Array, BigInt};
            let (channels, ids): (Vec<i64>, Vec<i64>) = need.into_iter().unzip();
            // Each contact's key taken by the insert itself (`FOR KEY SHARE`,
            // as the foreign key's check would): one erased since it was read
            // is left out rather than failing the batch (`conversation_of_contact`).
            let inserted: Vec<ConversationRow> = crate::db::prepared(concat!(
                "INSERT INTO conversations (channel_id, contact_id) \
                 SELECT v.ch, k.id FROM unnest($1::bigint[], $2::bigint[]) AS v(ch, contact) \
                   JOIN contacts k ON k.id = v.contact ORDER BY k.id FOR KEY SHARE OF k \
                 ON CONFLICT (channel_id, contact_id) DO NOTHING RETURNING ",
                conversation_columns!(),
            ))
            .bind::<Array<BigInt>, _>(channels)
            .bind::<Array<BigInt>, _>(ids)
            .load(tc.pg())?;
            for c in inserted {
                self.created.insert(c.id);
                self.conversations.insert(c.contact_id, c);
            }
        }
        // Whatever a concurrent transaction made first, or erased, is seen
        // to one by one below.
        Ok(())
    }

    /// Inserts every contact message of the batch in one statement (after
    /// making sure its contact and conversation exist, in item order).
    fn insert_messages(&mut self, tc: &mut TenantConn<'_>, items: &[(i64, &Item)]) -> AppResult<()> {
        self.create_missing(tc, items)?;
        // Column by column, for one fixed statement (kept prepared) whatever
        // the batch holds.
        let mut rows = MessageColumns::default();
        for (channel, item) in items {
            let Item::Message {
                contact,
                contact_name,
                mid,
                text,
                attachments,
                quick_reply,
                postback,
                reply_to,
                timestamp,
            } = item
            else {
                continue;
            };
            let (_, conv, created) =
                self.contact_and_conversation(tc, *channel, contact, *timestamp, contact_name.as_deref())?;
            if created {
                self.created.insert(conv.id);
            }
            self.attempted.insert((*channel, mid.clone()));
            rows.conversation.push(conv.id);
            rows.channel.push(*channel);
            rows.text.push(text.clone());
            rows.attachments.push(serde_json::to_string(attachments).unwrap_or_else(|_| "[]".into()));
            rows.external.push(mid.clone());
            rows.reply_to.push(reply_to.clone());
            rows.quick_reply.push(quick_reply.clone());
            rows.postback.push(postback.clone());
            rows.at.push(*timestamp);
        }
        if rows.conversation.is_empty() {
            return Ok(());
        }
        use diesel::sql_types::{Array, BigInt, Nullable, Text, Timestamptz};
        // Columns returned by name, not `*`: the folded search copy of each
        // text is not read.
        let inserted: Vec<MessageRow> = crate::db::prepared(
            "INSERT INTO messages (conversation_id, channel_id, direction, sender_kind, text, attachments, status, \
                                   external_id, reply_to_external_id, quick_reply_payload, postback_payload, \
                                   platform_timestamp, sort_at) \
             SELECT v.conv, v.ch, 'in', 'contact', v.text, v.att::jsonb, 'received', v.ext, v.reply, v.qr, v.pb, \
                    v.at, v.at \
               FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], \
                           $8::text[], $9::timestamptz[]) WITH ORDINALITY \
                    AS v(conv, ch, text, att, ext, reply, qr, pb, at, ord) \
              ORDER BY v.ord \
             ON CONFLICT (channel_id, external_id) DO NOTHING \
             RETURNING id, conversation_id, channel_id, direction, sender_kind, sender_user_id, text, attachments, \
                       status, error, external_id, client_id, reply_to_external_id, quick_reply_payload, \
                       postback_payload, reactions, reacted_at, edited_at, deleted_at, platform_timestamp, sort_at, \
                       created_at, updated_at, private, held_by_meta",
        )
        .bind::<Array<BigInt>, _>(&rows.conversation)
        .bind::<Array<BigInt>, _>(&rows.channel)
        .bind::<Array<Nullable<Text>>, _>(&rows.text)
        .bind::<Array<Text>, _>(&rows.attachments)
        .bind::<Array<Text>, _>(&rows.external)
        .bind::<Array<Nullable<Text>>, _>(&rows.reply_to)
        .bind::<Array<Nullable<Text>>, _>(&rows.quick_reply)
        .bind::<Array<Nullable<Text>>, _>(&rows.postback)
        .bind::<Array<Timestamptz>, _>(&rows.at)
        .load(tc.pg())?;
        // Created as they are now: what their contacts did to them before
        // they came is applied first.
        let mut inserted = inserted;
        early::take(tc, &mut inserted)?;
        for r in inserted {
            self.indexed_text += r.text.as_ref().map_or(0, String::len);
            if let Some(ext) = r.external_id.clone() {
                self.stored.insert((r.channel_id, ext), r);
            }
        }
        Ok(())
    }

    /// A WhatsApp customer changed their number at `at`: their contact (and
    /// so their conversation and where replies go) is known by the new one,
    /// and the old one is kept as a former number (`contact_former_numbers`)
    /// so that what it sent before the change finds the contact, in this
    /// batch or a later one (Meta may deliver it after the notice). What the
    /// old number sends after the change is someone else's: numbers are
    /// recycled. If the new number already is a contact of this channel (it
    /// wrote before the notice came), both stay as they are. Once done, a
    /// repeat finds the new number taken and changes nothing.
    fn renumber(
        &mut self,
        tc: &mut TenantConn<'_>,
        channel_id: i64,
        old: &str,
        new: &str,
        at: DateTime<Utc>,
    ) -> AppResult<()> {
        let here = contacts::table.filter(contacts::channel_id.eq(channel_id));
        if here.filter(contacts::external_id.eq(new)).count().get_result::<i64>(tc.pg())? > 0 {
            return Ok(());
        }
        self.renamed.entry((channel_id, old.to_string())).or_default().push((at, new.to_string()));
        let moved: Option<ContactRow> = diesel::update(here.filter(contacts::external_id.eq(old)))
            .set((contacts::external_id.eq(new), contacts::updated_at.eq(diesel::dsl::now)))
            .returning(ContactRow::as_returning())
            .get_result(tc.pg())
            .optional()?;
        let contact = match moved {
            Some(c) => {
                self.contacts.remove(&(channel_id, old.to_string()));
                c
            }
            // A customer this channel never heard from: the notice is their
            // first word, so the contact starts under the new number.
            None => upsert_contact(tc, channel_id, new, None, at)?,
        };
        diesel::insert_into(contact_former_numbers::table)
            .values((
                contact_former_numbers::channel_id.eq(channel_id),
                contact_former_numbers::external_id.eq(old),
                contact_former_numbers::contact_id.eq(contact.id),
                contact_former_numbers::changed_at.eq(at),
            ))
            .on_conflict_do_nothing()
            .execute(tc.pg())?;
        self.names.put_contact(&contact);
        self.contacts.insert((channel_id, new.to_string()), contact);
        Ok(())
    }

    /// The earlier number changes of the numbers these WhatsApp messages
    /// come from (one query).
    fn load_former_numbers(&mut self, tc: &mut TenantConn<'_>, items: &[(i64, &Item)]) -> AppResult<()> {
        use diesel::sql_types::{Array, BigInt, Text, Timestamptz};
        #[derive(QueryableByName)]
        struct Former {
            #[diesel(sql_type = BigInt)]
            channel_id: i64,
            #[diesel(sql_type = Text)]
            old: String,
            #[diesel(sql_type = Text)]
            new: String,
            #[diesel(sql_type = Timestamptz)]
            changed_at: DateTime<Utc>,
        }
        let mut seen = std::collections::HashSet::new();
        let (channel_ids, externals): (Vec<i64>, Vec<String>) = items
            .iter()
            .filter_map(|(channel, item)| from_contact(item).map(|(contact, _)| (*channel, contact.to_string())))
            .filter(|key| seen.insert(key.clone()))
            .unzip();
        if externals.is_empty() {
            return Ok(());
        }
        let found: Vec<Former> = crate::db::prepared(
            "SELECT f.channel_id, f.external_id AS old, c.external_id AS new, f.changed_at \
               FROM contact_former_numbers f JOIN contacts c ON c.id = f.contact_id \
              WHERE (f.channel_id, f.external_id) IN (SELECT * FROM unnest($1::bigint[], $2::text[]))",
        )
        .bind::<Array<BigInt>, _>(channel_ids)
        .bind::<Array<Text>, _>(externals)
        .load(tc.pg())?;
        for f in found {
            // A number that became the contact's own again is not a former one.
            if f.old != f.new {
                let changes = self.renamed.entry((f.channel_id, f.old)).or_default();
                if !changes.iter().any(|(at, _)| *at == f.changed_at) {
                    changes.push((f.changed_at, f.new));
                }
            }
        }
        Ok(())
    }

    /// Writes the conversations changed in memory, in one statement.
    pub fn flush(&mut self, tc: &mut TenantConn<'_>) -> AppResult<()> {
        use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Timestamptz};
        if self.dirty.is_empty() {
            return Ok(());
        }
        let rows: Vec<ConversationRow> =
            self.dirty.drain().filter_map(|contact| self.conversations.get(&contact).cloned()).collect();
        crate::db::prepared(
            "UPDATE conversations AS c SET status = v.status, \
                 snoozed_until = CASE WHEN v.status = 'open' THEN NULL ELSE c.snoozed_until END, \
                 unread_count = v.unread, last_message_id = v.lm, last_activity_at = v.la, \
                 last_inbound_at = v.li, last_inbound_external_id = v.lie, waiting_since = v.ws, reply_due_at = v.due, \
                 updated_at = now() \
             FROM unnest($1, $2, $3, $4, $5, $6, $7, $8, $9) AS v(id, unread, lm, la, li, lie, status, ws, due) \
            WHERE c.id = v.id",
        )
        .bind::<Array<BigInt>, _>(rows.iter().map(|r| r.id).collect::<Vec<_>>())
        .bind::<Array<Integer>, _>(rows.iter().map(|r| r.unread_count).collect::<Vec<_>>())
        .bind::<Array<Nullable<BigInt>>, _>(rows.iter().map(|r| r.last_message_id).collect::<Vec<_>>())
        .bind::<Array<Timestamptz>, _>(rows.iter().map(|r| r.last_activity_at).collect::<Vec<_>>())
        .bind::<Array<Nullable<Timestamptz>>, _>(rows.iter().map(|r| r.last_inbound_at).collect::<Vec<_>>())
        .bind::<Array<Nullable<Text>>, _>(rows.iter().map(|r| r.last_inbound_external_id.clone()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(rows.iter().map(|r| r.status.clone()).collect::<Vec<_>>())
        .bind::<Array<Nullable<Timestamptz>>, _>(rows.iter().map(|r| r.waiting_since).collect::<Vec<_>>())
        .bind::<Array<Nullable<Timestamptz>>, _>(rows.iter().map(|r| r.reply_due_at).collect::<Vec<_>>())
        .execute(tc.pg())?;
        Ok(())
    }

    /// The key the sender of a message sent at `at` from `external` is
    /// known by: if `external` changed hands at or after `at`, the number
    /// of the contact who had it then, as it is now (see `renamed`; followed
    /// through a few changes in a row within the batch).
    fn key(&self, channel_id: i64, external: &str, at: DateTime<Utc>) -> (i64, String) {
        let mut key = (channel_id, external.to_string());
        for _ in 0..4 {
            match self.renamed.get(&key).and_then(|changes| holder_at(changes, at)) {
                Some(new) if new != key.1 => key = (channel_id, new.to_string()),
                _ => break,
            }
        }
        key
    }

    fn contact(
        &mut self,
        tc: &mut TenantConn<'_>,
        channel_id: i64,
        external: &str,
        at: DateTime<Utc>,
        name: Option<&str>,
    ) -> AppResult<ContactRow> {
        let key = self.key(channel_id, external, at);
        let external = key.1.as_str();
        if let Some(c) = self.contacts.get(&key) {
            if name.is_none() || c.name.as_deref() == name {
                return Ok(c.clone());
            }
        }
        let c = upsert_contact(tc, channel_id, external, name, at)?;
        self.names.put_contact(&c);
        self.contacts.insert(key, c.clone());
        Ok(c)
    }

    /// The contact of `external` (as [`Ingest::contact`]) and their
    /// conversation, made when missing (and whether it was). A contact
    /// erased since it was read (the erasure committed as the batch waited
    /// for it) is made anew, as it would be a moment later: what the
    /// customer sends is never lost to the race.
    fn contact_and_conversation(
        &mut self,
        tc: &mut TenantConn<'_>,
        channel_id: i64,
        external: &str,
        at: DateTime<Utc>,
        name: Option<&str>,
    ) -> AppResult<(ContactRow, ConversationRow, bool)> {
        for _ in 0..GONE_ATTEMPTS {
            let c = self.contact(tc, channel_id, external, at, name)?;
            if let Some(conv) = self.conversations.get(&c.id) {
                return Ok((c, conv.clone(), false));
            }
            match conversation_of_contact(tc, channel_id, c.id)? {
                Some((conv, created)) => {
                    self.conversations.insert(c.id, conv.clone());
                    return Ok((c, conv, created));
                }
                None => {
                    self.contacts.remove(&self.key(channel_id, external, at));
                }
            }
        }
        // Erased again each time it was made: no one erases that fast.
        Err(AppError::concurrent_update())
    }
}

/// A message [`Ingest::store_elsewhere`] stores.
struct Elsewhere<'a> {
    contact: &'a str,
    mid: &'a str,
    inbound: bool,
    status: &'a str,
    text: Option<&'a str>,
    attachments: &'a [Attachment],
    timestamp: DateTime<Utc>,
    /// From a shared history: a conversation it opens starts resolved (the
    /// customer's next message reopens it), so an import of months of
    /// chats does not fill the agents' open list.
    history: bool,
}

/// A batch's contact messages, one vector per column.
#[derive(Default)]
struct MessageColumns {
    conversation: Vec<i64>,
    channel: Vec<i64>,
    text: Vec<Option<String>>,
    attachments: Vec<String>,
    external: Vec<String>,
    reply_to: Vec<Option<String>>,
    quick_reply: Vec<Option<String>>,
    postback: Vec<Option<String>>,
    at: Vec<DateTime<Utc>>,
}

fn preview(text: Option<&str>, attachments: &[Attachment]) -> String {
    match text {
        Some(t) if !t.is_empty() => t.chars().take(120).collect(),
        _ => attachments.first().map(|a| format!("[{}]", a.kind)).unwrap_or_default(),
    }
}

/// The contact of `external_id` on the channel, created when missing. A
/// `name` (WhatsApp's profile name, sent with each message at `at`) is
/// taken when the contact has none or when it is newer than the one it has:
/// customers rename themselves, and a webhook delivered late does not undo
/// that.
pub fn upsert_contact(
    tc: &mut TenantConn<'_>,
    channel_id: i64,
    external_id: &str,
    name: Option<&str>,
    at: DateTime<Utc>,
) -> AppResult<ContactRow> {
    // Known contacts are the common case: one query for them.
    let found: Option<ContactRow> = contacts::table
        .filter(contacts::channel_id.eq(channel_id))
        .filter(contacts::external_id.eq(external_id))
        .select(ContactRow::as_select())
        .first(tc.pg())
        .optional()?;
    let mut c = match found {
        Some(c) => c,
        None => {
            let inserted: Option<ContactRow> = diesel::insert_into(contacts::table)
                .values((
                    contacts::channel_id.eq(channel_id),
                    contacts::external_id.eq(external_id),
                    contacts::name.eq(name),
                    contacts::name_at.eq(name.map(|_| at)),
                ))
                .on_conflict((contacts::channel_id, contacts::external_id))
                .do_nothing()
                .returning(ContactRow::as_returning())
                .get_result(tc.pg())
                .optional()?;
            match inserted {
                Some(c) => return Ok(c),
                // Another transaction inserted it meanwhile.
                None => contacts::table
                    .filter(contacts::channel_id.eq(channel_id))
                    .filter(contacts::external_id.eq(external_id))
                    .select(ContactRow::as_select())
                    .first(tc.pg())?,
            }
        }
    };
    if let Some(n) = name.filter(|n| c.name.as_deref() != Some(*n)) {
        // Newer than the name shown, and not one the team gave.
        let older = contacts::name_set_by
            .is_null()
            .and(contacts::name.is_null().or(contacts::name_at.is_null()).or(contacts::name_at.le(at)));
        let renamed: Option<ContactRow> = diesel::update(contacts::table.find(c.id).filter(older))
            .set((contacts::name.eq(n), contacts::name_at.eq(at), contacts::updated_at.eq(diesel::dsl::now)))
            .returning(ContactRow::as_returning())
            .get_result(tc.pg())
            .optional()?;
        if let Some(r) = renamed {
            c = r;
        }
    }
    Ok(c)
}

/// The (channel, contact) conversation, created when missing; 404
/// `contact` when the contact is gone (erased as this ran).
pub fn conversation_for(
    tc: &mut TenantConn<'_>,
    channel_id: i64,
    contact_id: i64,
) -> AppResult<(ConversationRow, bool)> {
    conversation_of_contact(tc, channel_id, contact_id)?.ok_or_else(|| AppError::not_found("contact"))
}

/// The (channel, contact) conversation, created when missing, and whether
/// it was; `None` when the contact is gone: erased after it was found, as
/// this waited for the erasure. One statement, in the order an erasure
/// takes them (`contacts::erase`): the conversation first, and only when
/// there is none the contact's key (`FOR KEY SHARE`, as the insert's
/// foreign-key check would, at the same moment). Holding the contact's key
/// while it waited for the conversation, it met an erasure holding the
/// conversation and waiting for the contact in a deadlock. A contact
/// erased meanwhile reads as no contact rather than failing the
/// transaction on the key's check: the caller may then go on, with a
/// contact made anew. Only when another transaction made the conversation
/// as this ran is it read again, holding the key.
pub fn conversation_of_contact(
    tc: &mut TenantConn<'_>,
    channel_id: i64,
    contact_id: i64,
) -> AppResult<Option<(ConversationRow, bool)>> {
    use diesel::sql_types::BigInt;
    #[derive(QueryableByName)]
    struct Found {
        #[diesel(embed)]
        conversation: ConversationRow,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        created: bool,
    }
    // The insert's `NOT EXISTS` is a one-time filter: with a conversation
    // found, the contact is not read, so not locked.
    let found: Option<Found> = diesel::sql_query(
        "WITH found AS (SELECT * FROM conversations WHERE channel_id = $1 AND contact_id = $2 FOR NO KEY UPDATE), \
              made AS (INSERT INTO conversations (channel_id, contact_id) \
                       SELECT $1, k.id FROM contacts k WHERE k.id = $2 AND NOT EXISTS (SELECT 1 FROM found) \
                       FOR KEY SHARE OF k \
                       ON CONFLICT (channel_id, contact_id) DO NOTHING RETURNING *) \
         SELECT found.*, false AS created FROM found UNION ALL SELECT made.*, true AS created FROM made",
    )
    .bind::<BigInt, _>(channel_id)
    .bind::<BigInt, _>(contact_id)
    .get_result(tc.pg())
    .optional()?;
    if let Some(f) = found {
        return Ok(Some((f.conversation, f.created)));
    }
    // Made by another transaction as this ran, or its contact gone (and it
    // with them, by the cascade).
    let c = conversations::table
        .filter(conversations::channel_id.eq(channel_id))
        .filter(conversations::contact_id.eq(contact_id))
        .select(ConversationRow::as_select())
        .for_no_key_update()
        .first(tc.pg())
        .optional()?;
    Ok(c.map(|c| (c, false)))
}

/// Locks the stored messages a batch's items name (receipts, statuses,
/// reactions, edits, unsends, echoes, history), all at once and in id
/// order, after the batch's conversations: taken one by one as the items
/// were applied, in the order Meta sent them, a batch holding a newer
/// message waited for an older one that an erasure's cascade held (the
/// erasure takes its messages in id order too) while the erasure waited
/// for the newer, and PostgreSQL ended one of the two.
fn lock_named(tc: &mut TenantConn<'_>, items: &[(i64, &Item)]) -> AppResult<()> {
    use diesel::sql_types::{Array, BigInt, Text};
    let (mut channels, mut mids): (Vec<i64>, Vec<&str>) = (Vec::new(), Vec::new());
    for (channel, item) in items {
        let one = match item {
            Item::Echo { mid, .. }
            | Item::History { mid, .. }
            | Item::Edit { mid, .. }
            | Item::Delete { mid, .. }
            | Item::Reaction { mid, .. }
            | Item::Read { mid: Some(mid), .. }
            | Item::Status { wamid: mid, .. } => Some(mid),
            _ => None,
        };
        let more: &[String] = match item {
            Item::Delivery { mids, .. } => mids,
            _ => &[],
        };
        for mid in one.into_iter().chain(more) {
            channels.push(*channel);
            mids.push(mid.as_str());
        }
    }
    if mids.is_empty() {
        return Ok(());
    }
    crate::db::prepared(
        "SELECT id FROM messages WHERE (channel_id, external_id) IN (SELECT * FROM unnest($1::bigint[], $2::text[])) \
          ORDER BY id FOR UPDATE",
    )
    .bind::<Array<BigInt>, _>(channels)
    .bind::<Array<Text>, _>(mids)
    .execute(tc.pg())?;
    Ok(())
}

fn find_by_external(tc: &mut TenantConn<'_>, channel_id: i64, external_id: &str) -> AppResult<Option<MessageRow>> {
    Ok(m::table
        .filter(m::channel_id.eq(channel_id))
        .filter(m::external_id.eq(external_id))
        .select(MessageRow::as_select())
        .for_update()
        .first(tc.pg())
        .optional()?)
}

impl Ingest<'_> {
    pub fn apply(&mut self, tc: &mut TenantConn<'_>, channel: &ChannelRow, item: &Item) -> AppResult<()> {
        // A message not stored with its batch (a caller that did not
        // prefetch) is stored the same way, alone.
        if let Item::Message { mid, .. } = item {
            if !self.attempted.contains(&(channel.id, mid.clone())) {
                self.insert_messages(tc, &[(channel.id, item)])?;
            }
        }
        match item {
            Item::Message { contact, contact_name, mid, attachments, timestamp, .. } => {
                let incoming = Incoming {
                    contact,
                    contact_name: contact_name.as_deref(),
                    mid,
                    attachments,
                    timestamp: *timestamp,
                };
                self.incoming(tc, channel, incoming)
            }
            Item::History { contact, mid, inbound, text, attachments, status, timestamp } => {
                let elsewhere = Elsewhere {
                    contact,
                    mid,
                    inbound: *inbound,
                    status,
                    text: text.as_deref(),
                    attachments,
                    timestamp: *timestamp,
                    history: true,
                };
                self.store_elsewhere(tc, channel, elsewhere)
            }
            Item::Echo { contact, mid, text, attachments, app_id, metadata, timestamp } => self.echo(
                tc,
                channel,
                contact,
                mid,
                text.as_deref(),
                attachments,
                app_id.as_deref(),
                metadata.as_deref(),
                *timestamp,
            ),
            Item::Edit { mid, text, timestamp, .. } => {
                self.contact_change(tc, channel, mid, Change::Edit { text: text.clone() }, *timestamp)
            }
            Item::Delete { mid, timestamp, .. } => self.contact_change(tc, channel, mid, Change::Unsend, *timestamp),
            Item::Reaction { contact, mid, emoji, timestamp } => {
                let change = Change::Reaction { contact: contact.clone(), emoji: emoji.clone() };
                self.contact_change(tc, channel, mid, change, *timestamp)
            }
            Item::Delivery { contact, mids, watermark } => {
                self.receipt(tc, channel, contact, "delivered", mids, *watermark, None)
            }
            Item::Read { contact, watermark, mid } => {
                let mids: Vec<String> = mid.iter().cloned().collect();
                self.receipt(tc, channel, contact, "read", &mids, *watermark, None)
            }
            Item::Status { contact, wamid, status, error, timestamp, mark } => {
                // Meta refused a marketing template: the customer stopped them
                // (the preference's own webhook may never have come).
                let stopped = error.as_ref().and_then(|e| e["meta_code"].as_i64())
                    == Some(crate::meta::webhook::MARKETING_STOPPED);
                if stopped && *status == DeliveryStatus::Failed {
                    super::contacts::marketing_choice(tc, self.log, channel.id, contact, true, *timestamp)?;
                }
                self.status(tc, channel, wamid, *status, error.clone(), mark.as_deref())
            }
            // Done by `prefetch`; again for a caller that did not (a no-op then).
            Item::NumberChanged { contact, new_contact, timestamp } => {
                self.renumber(tc, channel.id, contact, new_contact, *timestamp)
            }
            Item::AccountUpdate { event, detail, timestamp } => {
                crate::channels::whatsapp_account::apply(tc, channel, &self.app_id, event, detail, *timestamp)
            }
            Item::PolicyEnforcement { action, reason, timestamp } => {
                crate::channels::policy::apply(tc, channel, action, reason.as_deref(), *timestamp)
            }
            Item::MarketingChoice { contact, stopped, timestamp } => {
                // A customer who never wrote (a template sent from elsewhere)
                // is kept too, so that writing first to them knows (`outreach`).
                upsert_contact(tc, channel.id, contact, None, *timestamp)?;
                super::contacts::marketing_choice(tc, self.log, channel.id, contact, *stopped, *timestamp)
            }
            Item::NumberQuality { display, event, limit, timestamp } => {
                let update = crate::channels::whatsapp_number::QualityUpdate {
                    display,
                    event,
                    limit: limit.as_deref(),
                    at: *timestamp,
                };
                crate::channels::whatsapp_number::quality_update(tc, channel, update)
            }
            Item::BusinessCapability { limit, timestamp } => {
                crate::channels::whatsapp_number::capability_update(tc, channel, limit, *timestamp)
            }
            Item::TemplateCategory {
                template_id,
                name,
                language,
                previous,
                category,
                coming,
                coming_at,
                timestamp,
            } => {
                if coming.is_none() {
                    if let Some(waba) = &channel.parent_external_id {
                        if !self.followups.templates_changed.contains(waba) {
                            self.followups.templates_changed.push(waba.clone());
                        }
                    }
                }
                let change = super::templates::CategoryChange {
                    template_id: template_id.as_deref(),
                    name,
                    language: language.as_deref(),
                    previous: previous.as_deref(),
                    category: category.as_deref(),
                    coming: coming.as_deref(),
                    coming_at: *coming_at,
                    at: *timestamp,
                };
                super::templates::category_changed(tc, self.log, channel, change).map(|_| ())
            }
            Item::ThreadControl { contact, change, timestamp } => {
                self.thread_control(tc, channel, contact, change, *timestamp)
            }
            Item::TemplateStatus { template_id, name, language, event, reason, timestamp } => {
                if let Some(waba) = &channel.parent_external_id {
                    if !self.followups.templates_changed.contains(waba) {
                        self.followups.templates_changed.push(waba.clone());
                    }
                }
                let change = super::templates::StatusChange {
                    template_id: template_id.as_deref(),
                    name,
                    language: language.as_deref(),
                    event,
                    reason: reason.as_deref(),
                    at: *timestamp,
                };
                super::templates::status_changed(tc, self.log, channel, change).map(|_| ())
            }
        }
    }

    /// Who holds a customer's thread ([`super::handover`]). A customer
    /// with no conversation here yet has nothing to show it on: skipped.
    fn thread_control(
        &mut self,
        tc: &mut TenantConn<'_>,
        channel: &ChannelRow,
        contact: &str,
        change: &crate::meta::webhook::ThreadChange,
        at: DateTime<Utc>,
    ) -> AppResult<()> {
        let known = match self.contacts.get(&(channel.id, contact.to_string())) {
            Some(c) => Some(c.id),
            None => contacts::table
                .filter(contacts::channel_id.eq(channel.id))
                .filter(contacts::external_id.eq(contact))
                .select(contacts::id)
                .first(tc.pg())
                .optional()?,
        };
        let Some(contact_id) = known else { return Ok(()) };
        let conv = match self.conversations.entry(contact_id) {
            std::collections::hash_map::Entry::Occupied(kept) => kept.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                let found: Option<ConversationRow> = conversations::table
                    .filter(conversations::channel_id.eq(channel.id))
                    .filter(conversations::contact_id.eq(contact_id))
                    .select(ConversationRow::as_select())
                    .for_no_key_update()
                    .first(tc.pg())
                    .optional()?;
                let Some(found) = found else { return Ok(()) };
                slot.insert(found)
            }
        };
        let Some(moved) = super::handover::apply(tc, conv, change, at, &self.app_id)? else { return Ok(()) };
        let conv = conv.clone();
        // Created by this batch and not announced yet: its
        // `conversation.created` will carry the thread as it is.
        if self.created.contains(&conv.id) {
            return Ok(());
        }
        if moved.announced() {
            let view = self.names.conversation(tc, &conv)?;
            self.log.append(tc, "conversation.updated", Some(conv.channel_id), Some(conv.id), &view)?;
        }
        if let Some(notice) = moved.notice(&conv) {
            self.log.append(tc, "notification", Some(conv.channel_id), Some(conv.id), notice)?;
        }
        Ok(())
    }

    fn updated(&mut self, tc: &mut TenantConn<'_>, row: &MessageRow) -> AppResult<()> {
        self.log.append(tc, "message.updated", Some(row.channel_id), Some(row.conversation_id), row.update_view())?;
        Ok(())
    }

    /// A contact's reaction, edit or unsend of message `mid`: applied if it
    /// changes anything, or kept for when the message comes ([`early`]).
    fn contact_change(
        &mut self,
        tc: &mut TenantConn<'_>,
        channel: &ChannelRow,
        mid: &str,
        change: Change,
        at: DateTime<Utc>,
    ) -> AppResult<()> {
        let Some(mut row) = find_by_external(tc, channel.id, mid)? else {
            self.followups.kept_early = true;
            return early::keep(tc, channel.id, mid, &change, at);
        };
        if !change.apply_to(&mut row, at) {
            return Ok(());
        }
        let updated = early::write(tc, &row)?;
        self.updated(tc, &updated)
    }

    fn incoming(&mut self, tc: &mut TenantConn<'_>, channel: &ChannelRow, msg: Incoming<'_>) -> AppResult<()> {
        let (contact, conv, mut created) =
            self.contact_and_conversation(tc, channel.id, msg.contact, msg.timestamp, msg.contact_name)?;
        let mut blocked = contact.blocked_at.is_some();
        if !blocked
            && super::contacts::profile_due(contact.profile_checked_at, Utc::now())
            && channel.platform() != Platform::Whatsapp
            && !self.followups.profile_lookups.iter().any(|l| l.contact_id == contact.id)
        {
            self.followups.profile_lookups.push(super::contacts::ProfileLookup::new(tc.tenant(), &contact, channel));
        }
        let key = (channel.id, msg.mid.to_string());
        created = created || self.created.remove(&conv.id);
        let inserted = self.stored.remove(&key);
        // A replay or duplicate: already stored, nothing else to do.
        let Some(row) = inserted else { return Ok(()) };
        // The contact was read before the conversation's lock was had: a
        // block committed meanwhile (it resolves the conversation, holding
        // that lock) is seen now, where it matters: before reopening.
        if !blocked && !created && conv.status != "open" {
            blocked = contacts::table
                .find(contact.id)
                .select(contacts::blocked_at)
                .first::<Option<DateTime<Utc>>>(tc.pg())?
                .is_some();
        }
        if blocked {
            return self.quietly(tc, conv, &row, contact.id, msg, created);
        }
        // A bare rating of a resolved conversation's survey leaves it
        // resolved (`csat`).
        let rated_only = !created
            && conv.status == "resolved"
            && row.deleted_at.is_none()
            && super::csat::answer(tc, conv.id, row.text.as_deref(), Utc::now())?.is_some_and(|r| r.comment.is_none());
        let reopened = !created && conv.status != "open" && !rated_only;
        // The row is locked by this transaction (prefetch, or created or
        // selected FOR NO KEY UPDATE): compute the change here, write it at flush.
        let ts = msg.timestamp;
        let old = conv;
        let mut conv = old.clone();
        let settings = channel.settings();
        if !rated_only {
            conv.status = "open".into();
            conv.snoozed_until = None;
            conv.unread_count += 1;
            // Unsent before it came (`early`): nothing to answer.
            if row.deleted_at.is_none() {
                conv.waiting_since = Some(old.waiting_since.map_or(ts, |w| w.min(ts)));
            }
            if conv.waiting_since != old.waiting_since {
                conv.reply_due_at = conv
                    .waiting_since
                    .and_then(|since| super::waiting::due(&settings, conv.priority.as_deref(), since));
            }
        }
        if old.last_message_id.is_none() || ts >= old.last_activity_at {
            conv.last_message_id = Some(row.id);
        }
        conv.last_activity_at = if old.last_message_id.is_none() { ts } else { old.last_activity_at.max(ts) };
        if old.last_inbound_at.is_none_or(|t| ts >= t) {
            conv.last_inbound_external_id = Some(msg.mid.to_string());
        }
        conv.last_inbound_at = Some(old.last_inbound_at.map_or(ts, |t| t.max(ts)));
        conv.updated_at = Utc::now();
        self.dirty.insert(contact.id);
        self.conversations.insert(contact.id, conv.clone());
        let mut routing_reply = None;
        let mut routing_choices = Vec::new();
        if !settings.routing.is_empty() && row.deleted_at.is_none() && !rated_only {
            // The channel's rules first, by what the customer wrote and
            // who they are (`routing`); later messages, by the rules that
            // look at every message.
            let text = row.text.as_deref().filter(|t| !t.trim().is_empty());
            if let Some(routed) = super::routing::route(tc, &conv, &settings.routing, text, created || reopened)? {
                (routing_reply, routing_choices) = (routed.reply, routed.reply_choices);
                let priority_moved = routed.priority != conv.priority;
                conv.team_id = routed.team_id;
                conv.labels = routed.labels;
                conv.priority = routed.priority;
                if priority_moved {
                    conv.reply_due_at = conv
                        .waiting_since
                        .and_then(|since| super::waiting::due(&settings, conv.priority.as_deref(), since));
                }
                self.conversations.insert(contact.id, conv.clone());
            }
        }
        if let (true, Some(was)) = (reopened, conv.assignee_id) {
            // Resolved, it kept its assignee for the reports; reopened, it
            // goes back to them only if they may still answer it. One
            // removed, taken off the channel's list or made a viewer since
            // is taken off it, and it is handed out as a new one would be:
            // a customer must not wait on someone who will not answer.
            use super::conversations::{answerer_held, Answerer, Hold};
            if answerer_held(tc, crate::ids::UserId(was), channel.id, Hold::Skip)? != Answerer::Yes {
                diesel::update(conversations::table.find(conv.id))
                    .set(conversations::assignee_id.eq(None::<i64>))
                    .execute(tc.pg())?;
                crate::audit::record(
                    tc,
                    None,
                    "conversation.assigned",
                    "conversation",
                    Some(conv.id.to_string()),
                    json!({"from": was.to_string(), "to": null, "by": "reopened"}),
                )?;
                conv.assignee_id = None;
                if let Some(kept) = self.conversations.get_mut(&contact.id) {
                    kept.assignee_id = None;
                }
            }
        }
        if let (true, None, Some(team)) = (created || reopened, conv.team_id, settings.team_id) {
            // The channel's team takes it (`teams`), before anyone is picked.
            if super::teams::hand_to_channels_team(tc, conv.id, team)? {
                conv.team_id = Some(team.0);
                if let Some(kept) = self.conversations.get_mut(&contact.id) {
                    kept.team_id = Some(team.0);
                }
            }
        }
        // The channel's auto-assign, or (when it has none) its team's.
        let assigning = settings.auto_assign
            || match conv.team_id {
                Some(team) if (created || reopened) && conv.assignee_id.is_none() => super::teams::assigns(tc, team)?,
                _ => false,
            };
        if (created || reopened) && conv.assignee_id.is_none() && assigning {
            if let Some(agent) = self.auto_assign(tc, channel, &conv, settings.auto_assign_limit)? {
                conv.assignee_id = Some(agent.0);
                conv.queued_at = None;
            } else {
                // Nobody there to take it: it waits for someone (`hand_out`).
                super::hand_out::queue(tc, &mut conv)?;
            }
            if let Some(kept) = self.conversations.get_mut(&contact.id) {
                (kept.assignee_id, kept.queued_at) = (conv.assignee_id, conv.queued_at);
            }
        }
        self.log_message(tc, &conv, &row, contact.id, created)?;
        if channel.platform() != Platform::Whatsapp {
            self.followups.media_copies.extend(super::media_copies::wanted(tc.tenant(), &row));
        }
        // Unsent before it came (`early`): nothing to show, no one to ping.
        if settings.notifications && row.deleted_at.is_none() && !rated_only {
            let n = if created || reopened { "new_conversation" } else { "new_message" };
            self.log.append(
                tc,
                "notification",
                Some(channel.id),
                Some(conv.id),
                json!({"kind": n, "conversation_id": conv.id.to_string(), "channel_id": channel.id.to_string(),
                    "team_id": conv.team_id.map(|t| t.to_string()), "preview": preview(row.text.as_deref(), msg.attachments)}),
            )?;
            // The assignee's own customer wrote after the conversation was
            // read (into an unread one, it adds to what waits already; one
            // this message gave them is an `assigned`): kept for them alone
            // (`notifications`).
            let assignee = old.assignee_id.filter(|a| conv.assignee_id == Some(*a) && old.unread_count == 0);
            if let Some(assignee) = assignee {
                self.log.notice(json!({"kind": super::notifications::CUSTOMER_MESSAGE,
                    "user_id": assignee.to_string(), "conversation_id": conv.id.to_string(),
                    "channel_id": channel.id.to_string(), "message_id": row.id.to_string()}));
            }
        }
        // Each with the choices it offers (`choices`).
        let mut replies: Vec<(&str, String, &[String])> = Vec::new();
        // Another app answers this customer (`handover`): ours stays quiet.
        let quiet = super::handover::ThreadControl::held_elsewhere(&conv);
        if (created || reopened) && !quiet {
            if let Some(text) = settings.auto_reply.due() {
                replies.push((text, format!("auto-reply:{}", row.id), &settings.auto_reply.choices));
            }
        }
        // A routing rule's answer (`routing`), once per customer message.
        if let Some(text) = routing_reply.as_deref().filter(|_| !quiet) {
            replies.push((text, format!("routing-reply:{}", row.id), &routing_choices));
        }
        // Once per closed period (`channels::hours`); not for a message
        // the customer had unsent before it came.
        if let Some((text, since)) =
            settings.away_due(Utc::now()).filter(|_| row.deleted_at.is_none() && !rated_only && !quiet)
        {
            replies.push((text, format!("away-reply:{}", since.timestamp()), &settings.away_reply.choices));
        }
        // Their variables (`variables`): the customer and the channel; no
        // agent. What the team saved of the customer is read only for a
        // text that asks for it.
        let details = match replies.iter().any(|(text, _, _)| super::variables::needs_details(text)) {
            true => Some(super::contacts::details_of(tc, contact.id)?),
            false => None,
        };
        let values = super::variables::Values {
            contact: contact.name.as_deref(),
            agent: None,
            channel: Some(channel.name.as_str()),
            details: details.as_ref(),
        };
        // A Messenger or Instagram customer's name comes with their profile,
        // looked up after this message: a reply that names them is filled
        // in again by the sender, which looks the profile up first.
        let unnamed = channel.platform() != Platform::Whatsapp
            && contact.name.as_deref().is_none_or(|n| n.trim().is_empty())
            && super::contacts::profile_due(contact.profile_checked_at, Utc::now());
        for (raw, client_id, choices) in replies {
            let text = super::variables::render(raw, &values);
            if text.trim().is_empty() {
                // All variables, none known yet: nothing to say.
                continue;
            }
            let late = unnamed && super::variables::names_contact(raw);
            let out = NewOutgoing {
                conversation: ConversationId(conv.id),
                text: Some(text),
                client_id: Some(client_id),
                agent: None,
                // Saved checked for this platform (`channels::patch`).
                attachments: super::choices::attachment(channel.platform(), choices, None).ok().into_iter().collect(),
                reply_to_external_id: None,
                signature: None,
            };
            self.flush(tc)?;
            let (row, queued) = messages::queue_outgoing(tc, self.log, &mut self.names, channel, &conv, out)?;
            if queued && late {
                super::variables::fill_later(tc, row.id, raw)?;
                // The sender looks the profile up before this reply goes.
                self.followups.profile_lookups.retain(|l| l.contact_id != contact.id);
            }
            // The queued reply changed the conversation row.
            self.conversations.remove(&contact.id);
            self.followups.queued_sends += usize::from(queued);
        }
        Ok(())
    }

    /// A message from a contact the team blocked (`contacts` module docs):
    /// stored and announced to whoever has the conversation open, the reply
    /// window's clock moved as Meta's is (for when they are unblocked), and
    /// nothing else: no reopening, unread count, place in the list,
    /// notification, automatic reply, assignment or survey answer.
    fn quietly(
        &mut self,
        tc: &mut TenantConn<'_>,
        mut conv: ConversationRow,
        row: &MessageRow,
        contact_id: i64,
        msg: Incoming<'_>,
        created: bool,
    ) -> AppResult<()> {
        let ts = msg.timestamp;
        if created {
            // A blocked contact's conversation made now (it had none):
            // resolved, as blocking leaves the one it has.
            conv.status = "resolved".into();
        }
        if conv.last_inbound_at.is_none_or(|t| ts >= t) {
            conv.last_inbound_external_id = Some(msg.mid.to_string());
        }
        conv.last_inbound_at = Some(conv.last_inbound_at.map_or(ts, |t| t.max(ts)));
        conv.updated_at = Utc::now();
        self.dirty.insert(contact_id);
        self.conversations.insert(contact_id, conv.clone());
        self.log_message(tc, &conv, row, contact_id, created)
    }

    /// Hands `conv`, just opened with no one assigned, to the least busy of
    /// the channel's agents online now (of its team's, when it has one), if
    /// any is.
    fn auto_assign(
        &mut self,
        tc: &mut TenantConn<'_>,
        channel: &ChannelRow,
        conv: &ConversationRow,
        limit: Option<u32>,
    ) -> AppResult<Option<crate::ids::UserId>> {
        let mut online = self.online.of(tc.tenant());
        if let (Some(team), false) = (conv.team_id, online.is_empty()) {
            online = super::teams::members_among(tc, team, &online)?;
        }
        if online.is_empty() {
            return Ok(None);
        }
        let id = conv.id;
        // The batch's reopened conversations count as open in the tally.
        self.flush(tc)?;
        let Some(agent) = super::conversations::least_busy(tc, channel.channel_id(), &online, limit)? else {
            return Ok(None);
        };
        let assigned =
            super::conversations::assign_automatically(tc, self.log, ConversationId(id), agent, conv.channel_id)?;
        Ok(assigned.then_some(agent))
    }

    #[allow(clippy::too_many_arguments)]
    fn echo(
        &mut self,
        tc: &mut TenantConn<'_>,
        channel: &ChannelRow,
        contact: &str,
        mid: &str,
        text: Option<&str>,
        attachments: &[Attachment],
        app_id: Option<&str>,
        metadata: Option<&str>,
        timestamp: DateTime<Utc>,
    ) -> AppResult<()> {
        // Ours, already matched by id: at most a status step.
        if let Some(row) = find_by_external(tc, channel.id, mid)? {
            if status_moves_forward(&row.status, "sent") {
                let updated: MessageRow = diesel::update(m::table.find(row.id))
                    .set(m::status.eq("sent"))
                    .returning(MessageRow::as_returning())
                    .get_result(tc.pg())?;
                self.updated(tc, &updated)?;
            }
            return Ok(());
        }
        // Ours, echoed before the send's answer was stored: match the metadata.
        let ours = app_id.is_none_or(|a| a == self.app_id);
        if let (true, Some(id)) = (ours, metadata.and_then(our_mark)) {
            if let Some(mut updated) = known_by_mark(tc, channel.id, id, mid)? {
                if channel.platform() == Platform::Facebook {
                    early::take_watermarks(tc, &mut updated, timestamp)?;
                }
                self.updated(tc, &updated)?;
            }
            // Ours, and gone (its contact erased while it was on its way):
            // not a message from elsewhere to bring back.
            return Ok(());
        }
        // Sent by the page from elsewhere (Page inbox, Business Suite, phone).
        let elsewhere =
            Elsewhere { contact, mid, inbound: false, status: "sent", text, attachments, timestamp, history: false };
        self.store_elsewhere(tc, channel, elsewhere)
    }

    /// A message that happened elsewhere (the page's other inboxes, a
    /// WhatsApp Business app's shared history): stored once, made the
    /// conversation's last message if it is the newest (and its last
    /// inbound one, which opens the reply window, if it is the customer's),
    /// and logged. Nothing else: no unread count, no reopening, no
    /// notification, no automatic reply.
    fn store_elsewhere(&mut self, tc: &mut TenantConn<'_>, channel: &ChannelRow, msg: Elsewhere<'_>) -> AppResult<()> {
        let Elsewhere { contact, mid, inbound, status, text, attachments, timestamp, history } = msg;
        self.flush(tc)?;
        let (c, conv, created) = self.contact_and_conversation(tc, channel.id, contact, timestamp, None)?;
        let inserted: Option<MessageRow> = diesel::insert_into(m::table)
            .values((
                m::conversation_id.eq(conv.id),
                m::channel_id.eq(channel.id),
                m::direction.eq(if inbound { "in" } else { "out" }),
                m::sender_kind.eq(if inbound { "contact" } else { "page" }),
                m::text.eq(text),
                m::attachments.eq(serde_json::to_value(attachments).unwrap_or_else(|_| json!([]))),
                m::status.eq(status),
                m::external_id.eq(mid),
                m::platform_timestamp.eq(timestamp),
                m::sort_at.eq(timestamp),
            ))
            .on_conflict((m::channel_id, m::external_id))
            .do_nothing()
            .returning(MessageRow::as_returning())
            .get_result(tc.pg())
            .optional()?;
        let Some(mut row) = inserted else {
            return if history { self.fill_placeholder(tc, channel, mid, text, attachments) } else { Ok(()) };
        };
        early::take(tc, std::slice::from_mut(&mut row))?;
        if !inbound && !history && channel.platform() == Platform::Facebook {
            early::take_watermarks(tc, &mut row, timestamp)?;
        }
        if channel.platform() != Platform::Whatsapp {
            self.followups.media_copies.extend(super::media_copies::wanted(tc.tenant(), &row));
        }
        let newest = timestamp >= conv.last_activity_at || created;
        let newest_inbound = inbound && conv.last_inbound_at.is_none_or(|t| timestamp >= t);
        // The business answered from elsewhere (`waiting`); a shared history
        // is the past, and answers nothing now.
        let answered = !inbound && !history && conv.waiting_since.is_some_and(|w| w <= timestamp);
        let conv: ConversationRow = diesel::update(conversations::table.find(conv.id))
            .set((
                conversations::last_message_id.eq(if newest { Some(row.id) } else { conv.last_message_id }),
                conversations::last_activity_at.eq(if newest { timestamp } else { conv.last_activity_at }),
                conversations::last_inbound_at.eq(if newest_inbound { Some(timestamp) } else { conv.last_inbound_at }),
                conversations::last_inbound_external_id.eq(if newest_inbound {
                    Some(mid.to_string())
                } else {
                    conv.last_inbound_external_id.clone()
                }),
                conversations::status.eq(if history && created { "resolved" } else { conv.status.as_str() }),
                conversations::waiting_since.eq(if answered { None } else { conv.waiting_since }),
                conversations::reply_due_at.eq(if answered { None } else { conv.reply_due_at }),
                conversations::updated_at.eq(diesel::dsl::now),
            ))
            .returning(ConversationRow::as_returning())
            .get_result(tc.pg())?;
        self.conversations.insert(c.id, conv.clone());
        if history && !created {
            // Months of chats may come in one chunk: the live inbox hears of
            // each conversation when it opens and once more at the end of
            // the batch (`finish`), not of every old message.
            self.imported.insert(conv.id, c.id);
            return Ok(());
        }
        if history {
            // Announced now, so that anything later in the batch (a live
            // message of the same customer) comes after it.
            let conv_view = self.names.conversation_with(tc, &conv, Some(&row))?;
            self.log.append(tc, "conversation.created", Some(channel.id), Some(conv.id), &conv_view)?;
            return Ok(());
        }
        self.log_message(tc, &conv, &row, c.id, created)
    }

    /// Logs a new message and its conversation's summary (which shows it as
    /// the last message). A conversation it opened is announced first, so
    /// the live inbox never hears of a message in a conversation it does
    /// not know; an existing one is updated after the message.
    fn log_message(
        &mut self,
        tc: &mut TenantConn<'_>,
        conv: &ConversationRow,
        row: &MessageRow,
        contact_id: i64,
        created: bool,
    ) -> AppResult<()> {
        let (channel, id) = (Some(conv.channel_id), Some(conv.id));
        let view = self.names.message(tc, row, contact_id)?;
        let conv_view = self.names.conversation_with(tc, conv, Some(row))?;
        if created {
            self.log.append(tc, "conversation.created", channel, id, &conv_view)?;
            self.log.append(tc, "message.created", channel, id, &view)?;
        } else {
            self.log.append(tc, "message.created", channel, id, &view)?;
            self.log.append(tc, "conversation.updated", channel, id, &conv_view)?;
        }
        Ok(())
    }

    /// Ends the batch: writes what is still in memory and announces the
    /// conversations a shared history added to.
    pub fn finish(&mut self, tc: &mut TenantConn<'_>) -> AppResult<()> {
        self.flush(tc)?;
        for (id, contact) in std::mem::take(&mut self.imported) {
            let Some(conv) = self.conversations.get(&contact).filter(|c| c.id == id).cloned() else { continue };
            let view = self.names.conversation(tc, &conv)?;
            self.log.append(tc, "conversation.updated", Some(conv.channel_id), Some(conv.id), &view)?;
        }
        for id in std::mem::take(&mut self.unanswered) {
            if let Some(conv) = super::waiting::recompute(tc, id)? {
                if let Some(kept) = self.conversations.get_mut(&conv.contact_id) {
                    kept.waiting_since = conv.waiting_since;
                    kept.reply_due_at = conv.reply_due_at;
                }
                let view = self.names.conversation(tc, &conv)?;
                self.log.append(tc, "conversation.updated", Some(conv.channel_id), Some(conv.id), &view)?;
            }
        }
        Ok(())
    }

    /// A shared history sends its media first as `media_placeholder`s and
    /// later again, by the same ids, with their media (those of the last 14
    /// days): the placeholder takes the media. Anything else already stored
    /// stays as it is.
    fn fill_placeholder(
        &mut self,
        tc: &mut TenantConn<'_>,
        channel: &ChannelRow,
        mid: &str,
        text: Option<&str>,
        attachments: &[Attachment],
    ) -> AppResult<()> {
        const PLACEHOLDER: &str = "media_placeholder";
        if attachments.first().is_none_or(|a| a.kind == PLACEHOLDER) {
            return Ok(());
        }
        let Some(row) = find_by_external(tc, channel.id, mid)? else { return Ok(()) };
        if row.attachments.pointer("/0/type").and_then(Value::as_str) != Some(PLACEHOLDER) {
            return Ok(());
        }
        let media = serde_json::to_value(attachments).unwrap_or_else(|_| json!([]));
        let updated: MessageRow = diesel::update(m::table.find(row.id))
            .set((
                m::attachments.eq(&media),
                m::text.eq(text.or(row.text.as_deref())),
                m::updated_at.eq(diesel::dsl::now),
            ))
            .returning(MessageRow::as_returning())
            .get_result(tc.pg())?;
        let view = crate::inbox::views::MessageUpdate {
            attachments: Some(crate::inbox::views::shown_attachments(updated.id, &media)),
            ..updated.update_view()
        };
        self.log.append(tc, "message.updated", Some(updated.channel_id), Some(updated.conversation_id), view)?;
        Ok(())
    }

    /// Messenger/Instagram delivery and read receipts: by id and by watermark.
    #[allow(clippy::too_many_arguments)]
    fn receipt(
        &mut self,
        tc: &mut TenantConn<'_>,
        channel: &ChannelRow,
        contact: &str,
        status: &str,
        mids: &[String],
        watermark: Option<DateTime<Utc>>,
        _error: Option<Value>,
    ) -> AppResult<()> {
        // Messages named that are not stored yet (a reply sent elsewhere,
        // whose echo is still to come) take the receipt when they are.
        if !mids.is_empty() {
            let known: Vec<Option<String>> = m::table
                .filter(m::channel_id.eq(channel.id))
                .filter(m::external_id.eq_any(mids))
                .select(m::external_id)
                .load(tc.pg())?;
            for mid in mids.iter().filter(|mid| !known.iter().any(|k| k.as_ref() == Some(*mid))) {
                self.followups.kept_early = true;
                early::keep_status(tc, channel.id, mid, status, None)?;
            }
        }
        let contact_id: Option<i64> = contacts::table
            .filter(contacts::channel_id.eq(channel.id))
            .filter(contacts::external_id.eq(contact))
            .select(contacts::id)
            .first(tc.pg())
            .optional()?;
        let Some(contact_id) = contact_id else { return Ok(()) };
        let conv: Option<i64> = conversations::table
            .filter(conversations::channel_id.eq(channel.id))
            .filter(conversations::contact_id.eq(contact_id))
            .select(conversations::id)
            .first(tc.pg())
            .optional()?;
        let Some(conv) = conv else { return Ok(()) };
        if let Some(w) = watermark {
            early::keep_watermark(tc, conv, status, w)?;
        }
        // "Read up to this message" (Instagram) is a watermark at its time.
        let mut limit = watermark;
        if status == "read" && watermark.is_none() {
            for mid in mids {
                let at: Option<DateTime<Utc>> = m::table
                    .filter(m::channel_id.eq(channel.id))
                    .filter(m::external_id.eq(mid))
                    .select(m::sort_at)
                    .first(tc.pg())
                    .optional()?;
                limit = limit.max(at);
            }
        }
        let earlier: Vec<&str> = match status {
            "read" => vec!["sent", "delivered"],
            _ => vec!["sent"],
        };
        let mut q = m::table
            .filter(m::conversation_id.eq(conv))
            .filter(m::direction.eq("out"))
            // A note was never sent: nothing for the customer to read.
            .filter(m::private.eq(false))
            .filter(m::status.eq_any(earlier))
            .into_boxed();
        q = match limit {
            Some(w) => q.filter(m::sort_at.le(w).or(m::external_id.eq_any(mids))),
            None => q.filter(m::external_id.eq_any(mids)),
        };
        let ids: Vec<i64> = q.select(m::id).order(m::id).load(tc.pg())?;
        for id in ids {
            let updated: MessageRow = diesel::update(m::table.find(id))
                .set((m::status.eq(status), m::updated_at.eq(diesel::dsl::now)))
                .returning(MessageRow::as_returning())
                .get_result(tc.pg())?;
            self.updated(tc, &updated)?;
        }
        Ok(())
    }

    /// WhatsApp status of one message; kept for later if the id is
    /// unknown, unless it names our message by its mark (`mark`): sent
    /// with no answer stored yet, or with its answer lost.
    fn status(
        &mut self,
        tc: &mut TenantConn<'_>,
        channel: &ChannelRow,
        wamid: &str,
        status: DeliveryStatus,
        error: Option<Value>,
        mark: Option<&str>,
    ) -> AppResult<()> {
        let (row, marked) = match find_by_external(tc, channel.id, wamid)? {
            Some(row) => (row, false),
            None => match mark.and_then(our_mark) {
                Some(id) => match known_by_mark(tc, channel.id, id, wamid)? {
                    Some(row) => (row, true),
                    // Ours, and gone; or known by another id already (a
                    // copy sent again after its answer was lost).
                    None => return Ok(()),
                },
                None => {
                    self.followups.kept_early = true;
                    return early::keep_status(tc, channel.id, wamid, status.as_str(), error.as_ref());
                }
            },
        };
        match messages::advance_status(tc, &row, status.as_str(), error)? {
            Some(updated) => {
                if updated.status == "failed" && updated.sender_kind == "agent" {
                    self.unanswered.insert(updated.conversation_id);
                }
                self.updated(tc, &updated)?;
            }
            // Its id and `sent` are news by themselves.
            None if marked => self.updated(tc, &row)?,
            None => {}
        }
        Ok(())
    }
}

/// Our message's id in the mark a send gives Meta (`sb:<id>`: Messenger's
/// `metadata`, WhatsApp's `biz_opaque_callback_data`), which it passes back.
fn our_mark(mark: &str) -> Option<i64> {
    mark.strip_prefix("sb:").and_then(|i| i.parse::<i64>().ok())
}

/// Our message `id` on this channel, named `external` by Meta before the
/// send's answer was stored (or with that answer lost): it takes the id, is
/// sent at least, and takes the receipts that came before it. `None` when
/// it is gone, or already known by an id.
fn known_by_mark(tc: &mut TenantConn<'_>, channel: i64, id: i64, external: &str) -> AppResult<Option<MessageRow>> {
    let row: Option<MessageRow> = m::table
        .find(id)
        .filter(m::channel_id.eq(channel))
        .select(MessageRow::as_select())
        .for_update()
        .first(tc.pg())
        .optional()?;
    let Some(row) = row.filter(|r| r.external_id.is_none()) else { return Ok(None) };
    let status = if status_moves_forward(&row.status, "sent") { "sent" } else { row.status.as_str() };
    let mut updated: MessageRow = diesel::update(m::table.find(row.id))
        .set((m::external_id.eq(external), m::status.eq(status), m::updated_at.eq(diesel::dsl::now)))
        .returning(MessageRow::as_returning())
        .get_result(tc.pg())?;
    early::take(tc, std::slice::from_mut(&mut updated))?;
    Ok(Some(updated))
}

struct Incoming<'a> {
    contact: &'a str,
    contact_name: Option<&'a str>,
    mid: &'a str,
    attachments: &'a [Attachment],
    timestamp: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).expect("time")
    }

    #[test]
    fn a_number_belongs_to_whoever_gave_it_up_next() {
        // Ana gave the number up at 200 (she is now on 555-B); Bruno got it
        // and gave it up at 500 (now on 555-C).
        let changes = vec![(at(500), "555C".to_string()), (at(200), "555B".to_string())];
        assert_eq!(holder_at(&changes, at(100)), Some("555B"), "before the first change: Ana");
        assert_eq!(holder_at(&changes, at(200)), Some("555B"), "the change's own second: still Ana");
        assert_eq!(holder_at(&changes, at(300)), Some("555C"), "between the changes: Bruno");
        assert_eq!(holder_at(&changes, at(600)), None, "after the last: whoever has it now");
        assert_eq!(holder_at(&[], at(100)), None);
    }
}
