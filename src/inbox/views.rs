//! The JSON shapes of API.md (Message, Conversation) and the rows behind them.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;

use super::{ContactId, ConversationId, MessageId};
use crate::channels::whatsapp_number::restricting;
use crate::channels::{ChannelId, ChannelRow, Platform};
use crate::db::schema::users;
use crate::db::tenant_schema::{channels, contacts, conversations, messages};
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = messages)]
pub struct MessageRow {
    pub id: i64,
    pub conversation_id: i64,
    pub channel_id: i64,
    pub direction: String,
    pub sender_kind: String,
    pub sender_user_id: Option<i64>,
    pub text: Option<String>,
    pub attachments: Value,
    pub status: String,
    pub error: Option<Value>,
    pub external_id: Option<String>,
    pub client_id: Option<String>,
    pub reply_to_external_id: Option<String>,
    pub quick_reply_payload: Option<String>,
    pub postback_payload: Option<String>,
    pub reactions: Value,
    /// When each contact's reaction was made (ms by contact): not shown.
    pub reacted_at: Value,
    pub edited_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub platform_timestamp: Option<DateTime<Utc>>,
    pub sort_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// A note for the team (`messages::create_note`), never sent.
    pub private: bool,
    /// Meta took this template but holds it (template pacing): what it
    /// said (`held_for_quality_assessment`, `paused`) until its next status.
    pub held_by_meta: Option<String>,
}

#[cfg(test)]
impl MessageRow {
    /// A customer's message received at `at`, for unit tests to vary.
    pub fn sample(at: DateTime<Utc>) -> MessageRow {
        MessageRow {
            id: 1,
            conversation_id: 1,
            channel_id: 1,
            direction: "in".into(),
            sender_kind: "contact".into(),
            sender_user_id: None,
            text: None,
            attachments: Value::Array(Vec::new()),
            status: "received".into(),
            error: None,
            external_id: None,
            client_id: None,
            reply_to_external_id: None,
            quick_reply_payload: None,
            postback_payload: None,
            reactions: serde_json::json!({}),
            reacted_at: serde_json::json!({}),
            edited_at: None,
            deleted_at: None,
            platform_timestamp: None,
            sort_at: at,
            created_at: at,
            updated_at: at,
            private: false,
            held_by_meta: None,
        }
    }
}

#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = conversations)]
pub struct ConversationRow {
    pub id: i64,
    pub channel_id: i64,
    pub contact_id: i64,
    pub status: String,
    pub assignee_id: Option<i64>,
    pub snoozed_until: Option<DateTime<Utc>>,
    pub unread_count: i32,
    pub last_message_id: Option<i64>,
    pub last_activity_at: DateTime<Utc>,
    pub last_inbound_at: Option<DateTime<Utc>>,
    pub last_inbound_external_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub labels: Vec<String>,
    /// low, medium, high or urgent; `None` for none.
    pub priority: Option<String>,
    /// When the customer's oldest message the team has not answered came
    /// (`inbox::waiting`).
    pub waiting_since: Option<DateTime<Utc>>,
    /// When the wait's target runs out (`inbox::waiting`).
    pub reply_due_at: Option<DateTime<Utc>>,
    /// Which app answers the customer (`inbox::handover`).
    pub thread_control: Option<Value>,
    /// The team it is handed to (`inbox::teams`).
    pub team_id: Option<i64>,
    /// When it began to wait in the queue for someone to hand it to
    /// (`inbox::hand_out`).
    pub queued_at: Option<DateTime<Utc>>,
    /// The earliest of its scheduled messages that wait (`inbox::scheduled`).
    pub next_scheduled_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Queryable, Selectable, QueryableByName)]
#[diesel(table_name = contacts)]
pub struct ContactRow {
    pub id: i64,
    pub channel_id: i64,
    pub external_id: String,
    pub name: Option<String>,
    pub profile_pic_url: Option<String>,
    pub profile_checked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the team blocked the contact (`inbox::contacts`): their
    /// messages are kept quietly and nothing is sent to them.
    pub blocked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SenderView {
    pub kind: String,
    pub id: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MessageView {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub channel_id: ChannelId,
    pub direction: String,
    pub sender: SenderView,
    pub text: Option<String>,
    pub attachments: Value,
    pub status: String,
    pub error: Option<Value>,
    pub external_id: Option<String>,
    pub client_id: Option<String>,
    pub reply_to: Option<String>,
    pub quick_reply_payload: Option<String>,
    pub postback_payload: Option<String>,
    pub reactions: Value,
    pub edited_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub platform_timestamp: Option<DateTime<Utc>>,
    /// A note for the team, never sent (an extension).
    pub private: bool,
    /// Meta took this template but holds it (an extension).
    pub held_by_meta: Option<String>,
}

/// `message.updated` data.
#[derive(Debug, Clone, Serialize)]
pub struct MessageUpdate {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub status: String,
    pub error: Option<Value>,
    pub text: Option<String>,
    pub reactions: Value,
    pub external_id: Option<String>,
    pub edited_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
    pub held_by_meta: Option<String>,
    /// Only when they changed (a shared history's media filled in), so
    /// that receipts stay small.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Value>,
}

impl MessageRow {
    pub fn update_view(&self) -> MessageUpdate {
        MessageUpdate {
            id: MessageId(self.id),
            conversation_id: ConversationId(self.conversation_id),
            status: self.status.clone(),
            error: self.error.clone(),
            text: self.text.clone(),
            reactions: self.reactions.clone(),
            external_id: self.external_id.clone(),
            edited_at: self.edited_at,
            deleted_at: self.deleted_at,
            held_by_meta: self.held_by_meta.clone(),
            attachments: None,
        }
    }
}

/// The path a client fetches a message's attachment `index` from
/// (`GET /api/messages/{id}/attachments/{index}`).
pub fn attachment_path(message: i64, index: usize) -> String {
    format!("/api/messages/{message}/attachments/{index}")
}

/// A message's attachments as clients see them: WhatsApp media, which Meta
/// serves only to the channel's token, and agents' files, kept here
/// (`inbox::uploads`), get this server's [`attachment_path`] as their
/// `url` (a path on this server, fetched with the agent's Bearer token);
/// the others keep Meta's CDN URL.
pub fn shown_attachments(message: i64, stored: &Value) -> Value {
    let Some(items) = stored.as_array() else { return stored.clone() };
    let shown = items
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let mut a = a.clone();
            let here = a.get("media_id").is_some_and(Value::is_string) || a.get("uploaded") == Some(&Value::Bool(true));
            let proxied = here && a.get("url").is_none_or(Value::is_null);
            if let (true, Some(o)) = (proxied, a.as_object_mut()) {
                o.insert("url".into(), Value::String(attachment_path(message, i)));
            }
            a
        })
        .collect();
    Value::Array(shown)
}

/// The `type` of a message's first attachment.
fn first_attachment_type(attachments: &Value) -> Option<String> {
    attachments.as_array()?.first()?.get("type")?.as_str().map(str::to_string)
}

/// Caches names while building many views in one transaction.
#[derive(Default)]
pub struct Names {
    contacts: HashMap<i64, ContactRow>,
    users: HashMap<i64, String>,
    channels: HashMap<i64, ChannelRow>,
}

impl Names {
    pub fn contact(&mut self, tc: &mut TenantConn<'_>, id: i64) -> AppResult<ContactRow> {
        if let Some(c) = self.contacts.get(&id) {
            return Ok(c.clone());
        }
        let c: ContactRow = contacts::table.find(id).select(ContactRow::as_select()).first(tc.pg())?;
        self.contacts.insert(id, c.clone());
        Ok(c)
    }

    /// The contact of conversation `conv`. One erased since the
    /// conversation was read took it with them: not found, as the
    /// conversation the caller named.
    pub fn contact_of(&mut self, tc: &mut TenantConn<'_>, conv: &ConversationRow) -> AppResult<ContactRow> {
        self.contact(tc, conv.contact_id).map_err(|e| match e.kind {
            crate::error::ErrorKind::NotFound => AppError::not_found("conversation"),
            _ => e,
        })
    }

    pub fn put_contact(&mut self, c: &ContactRow) {
        self.contacts.insert(c.id, c.clone());
    }

    pub fn put_channel(&mut self, c: &ChannelRow) {
        self.channels.insert(c.id, c.clone());
    }

    pub fn channel(&mut self, tc: &mut TenantConn<'_>, id: i64) -> AppResult<ChannelRow> {
        if let Some(c) = self.channels.get(&id) {
            return Ok(c.clone());
        }
        let c: ChannelRow = channels::table.find(id).select(ChannelRow::as_select()).first(tc.pg())?;
        self.channels.insert(id, c.clone());
        Ok(c)
    }

    pub fn user(&mut self, tc: &mut TenantConn<'_>, id: i64) -> AppResult<String> {
        if let Some(n) = self.users.get(&id) {
            return Ok(n.clone());
        }
        let (name, email): (String, String) =
            users::table.find(id).select((users::name, users::email)).first(tc.pg()).optional()?.unwrap_or_default();
        let n = if name.is_empty() { email } else { name };
        self.users.insert(id, n.clone());
        Ok(n)
    }

    pub fn message(&mut self, tc: &mut TenantConn<'_>, row: &MessageRow, contact_id: i64) -> AppResult<MessageView> {
        let sender = match row.sender_kind.as_str() {
            "contact" => {
                let c = self.contact(tc, contact_id)?;
                SenderView { kind: "contact".into(), id: Some(c.id.to_string()), name: c.name }
            }
            "agent" => {
                let name = match row.sender_user_id {
                    Some(u) => Some(self.user(tc, u)?),
                    None => None,
                };
                SenderView { kind: "agent".into(), id: row.sender_user_id.map(|u| u.to_string()), name }
            }
            _ => {
                let ch = self.channel(tc, row.channel_id)?;
                SenderView { kind: "page".into(), id: Some(ch.id.to_string()), name: Some(ch.name) }
            }
        };
        Ok(MessageView {
            id: MessageId(row.id),
            conversation_id: ConversationId(row.conversation_id),
            channel_id: ChannelId(row.channel_id),
            direction: row.direction.clone(),
            sender,
            text: row.text.clone(),
            attachments: shown_attachments(row.id, &row.attachments),
            status: row.status.clone(),
            error: row.error.clone(),
            external_id: row.external_id.clone(),
            client_id: row.client_id.clone(),
            reply_to: row.reply_to_external_id.clone(),
            quick_reply_payload: row.quick_reply_payload.clone(),
            postback_payload: row.postback_payload.clone(),
            reactions: row.reactions.clone(),
            edited_at: row.edited_at,
            deleted_at: row.deleted_at,
            created_at: row.created_at,
            platform_timestamp: row.platform_timestamp,
            private: row.private,
            held_by_meta: row.held_by_meta.clone(),
        })
    }

    pub fn conversation(&mut self, tc: &mut TenantConn<'_>, row: &ConversationRow) -> AppResult<ConversationView> {
        self.conversation_with(tc, row, None)
    }

    /// The views of many conversations (a page of the list, a batch to
    /// announce): their contacts and last messages are read in one query
    /// each, not one per conversation.
    pub fn conversations(
        &mut self,
        tc: &mut TenantConn<'_>,
        rows: &[ConversationRow],
    ) -> AppResult<Vec<ConversationView>> {
        let last = self.read_for(tc, rows)?;
        rows.iter().map(|r| self.conversation_with(tc, r, r.last_message_id.and_then(|id| last.get(&id)))).collect()
    }

    /// Like [`Names::conversations`], for rows read without a lock (a
    /// list); `None` when a contact of theirs was erased by the time the
    /// names are read (the erasure committed between the two statements),
    /// for the caller to read its rows again.
    pub fn listed(
        &mut self,
        tc: &mut TenantConn<'_>,
        rows: &[ConversationRow],
    ) -> AppResult<Option<Vec<ConversationView>>> {
        let last = self.read_for(tc, rows)?;
        if rows.iter().any(|r| !self.contacts.contains_key(&r.contact_id)) {
            return Ok(None);
        }
        let views = rows.iter().map(|r| self.conversation_with(tc, r, r.last_message_id.and_then(|id| last.get(&id))));
        views.collect::<AppResult<_>>().map(Some)
    }

    /// Reads the contacts of `rows` not known yet, and their last messages.
    fn read_for(&mut self, tc: &mut TenantConn<'_>, rows: &[ConversationRow]) -> AppResult<HashMap<i64, MessageRow>> {
        let unknown: Vec<i64> =
            rows.iter().map(|r| r.contact_id).filter(|id| !self.contacts.contains_key(id)).collect();
        if !unknown.is_empty() {
            let found: Vec<ContactRow> =
                contacts::table.filter(contacts::id.eq_any(unknown)).select(ContactRow::as_select()).load(tc.pg())?;
            for c in &found {
                self.put_contact(c);
            }
        }
        let last_ids: Vec<i64> = rows.iter().filter_map(|r| r.last_message_id).collect();
        Ok(if last_ids.is_empty() {
            HashMap::new()
        } else {
            messages::table
                .filter(messages::id.eq_any(last_ids))
                .select(MessageRow::as_select())
                .load(tc.pg())?
                .into_iter()
                .map(|m| (m.id, m))
                .collect()
        })
    }

    /// Like [`Names::conversation`], with the last message already at hand.
    pub fn conversation_with(
        &mut self,
        tc: &mut TenantConn<'_>,
        row: &ConversationRow,
        known: Option<&MessageRow>,
    ) -> AppResult<ConversationView> {
        let contact = self.contact_of(tc, row)?;
        let channel = self.channel(tc, row.channel_id)?;
        let known = known.filter(|m| Some(m.id) == row.last_message_id);
        let last_message = match (known, row.last_message_id) {
            (Some(m), _) => Some(LastMessage {
                id: MessageId(m.id),
                text: m.text.clone(),
                attachment_type: first_attachment_type(&m.attachments),
                direction: m.direction.clone(),
                status: m.status.clone(),
                created_at: m.created_at,
            }),
            (None, Some(id)) => {
                messages::table.find(id).select(MessageRow::as_select()).first(tc.pg()).optional()?.map(|m| {
                    LastMessage {
                        id: MessageId(m.id),
                        attachment_type: first_attachment_type(&m.attachments),
                        text: m.text,
                        direction: m.direction,
                        status: m.status,
                        created_at: m.created_at,
                    }
                })
            }
            (None, None) => None,
        };
        let window = ReplyWindow::of(&channel, row.last_inbound_at, Utc::now());
        Ok(ConversationView {
            id: ConversationId(row.id),
            channel_id: ChannelId(row.channel_id),
            platform: channel.platform(),
            contact: ContactView {
                id: ContactId(contact.id),
                external_id: contact.external_id,
                name: contact.name,
                profile_pic_url: contact.profile_pic_url,
                blocked: contact.blocked_at.is_some(),
                linked: None,
            },
            status: row.status.clone(),
            assignee_id: row.assignee_id.map(UserId),
            team_id: row.team_id.map(super::teams::TeamId),
            queued_at: row.queued_at,
            snoozed_until: row.snoozed_until,
            unread_count: row.unread_count,
            last_message,
            last_activity_at: row.last_activity_at,
            last_inbound_at: row.last_inbound_at,
            // Meta's restrictions of a WhatsApp account stop some sends.
            can_reply: window.can_reply && restricting(&channel, true).is_none(),
            can_send_template: channel.platform() == Platform::Whatsapp
                && channel.status == "connected"
                && restricting(&channel, window.can_reply).is_none(),
            labels: row.labels.clone(),
            priority: row.priority.clone(),
            waiting_since: row.waiting_since,
            reply_due_at: row.reply_due_at,
            thread_control: super::handover::ThreadControl::of(row).map(|t| t.view()),
            reply_window_ends_at: window.ends_at,
            next_scheduled_at: row.next_scheduled_at,
            created_at: row.created_at,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ContactView {
    pub id: ContactId,
    pub external_id: String,
    pub name: Option<String>,
    pub profile_pic_url: Option<String>,
    /// Blocked by the team (an extension): why the conversation stays
    /// resolved and replies are refused.
    pub blocked: bool,
    /// The customer's other contacts the caller may see (an extension;
    /// `inbox::contact_links`): only in one conversation's view.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linked: Option<Vec<super::contact_links::Linked>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastMessage {
    pub id: MessageId,
    pub text: Option<String>,
    /// The type of its first attachment (`image`, `file`, `template`…), for
    /// a list to show "Photo" where there is no text.
    pub attachment_type: Option<String>,
    pub direction: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConversationView {
    pub id: ConversationId,
    pub channel_id: ChannelId,
    pub platform: Platform,
    pub contact: ContactView,
    pub status: String,
    pub assignee_id: Option<UserId>,
    /// The team it is handed to (an extension; `inbox::teams`).
    pub team_id: Option<super::teams::TeamId>,
    /// Since when it waits in the queue for someone who may take it to
    /// come online or have room (an extension; `inbox::hand_out`); null
    /// when it does not wait.
    pub queued_at: Option<DateTime<Utc>>,
    pub snoozed_until: Option<DateTime<Utc>>,
    pub unread_count: i32,
    pub last_message: Option<LastMessage>,
    pub last_activity_at: DateTime<Utc>,
    pub last_inbound_at: Option<DateTime<Utc>>,
    pub can_reply: bool,
    /// A WhatsApp template may be sent (`inbox::templates`), window or not.
    pub can_send_template: bool,
    /// Labels the team put on it (an extension).
    pub labels: Vec<String>,
    /// How urgent the team judged it: low, medium, high, urgent or null (an extension).
    pub priority: Option<String>,
    /// When the customer's oldest message the team has not answered came
    /// (an extension; `inbox::waiting`).
    pub waiting_since: Option<DateTime<Utc>>,
    /// When the channel's reply target for its priority runs out, while
    /// the customer waits (an extension).
    pub reply_due_at: Option<DateTime<Utc>>,
    /// Which app answers the customer, once a handover event or a standby
    /// delivery said so (an extension; Messenger and Instagram only).
    pub thread_control: Option<super::handover::ThreadControlView>,
    pub reply_window_ends_at: Option<DateTime<Utc>>,
    /// When the earliest of its scheduled messages goes (an extension;
    /// `inbox::scheduled`); null when none waits.
    pub next_scheduled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Whether an agent may answer now, until when, and with which tag.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyWindow {
    pub can_reply: bool,
    pub ends_at: Option<DateTime<Utc>>,
    /// `HUMAN_AGENT` between 24 h and 7 days (Messenger, Instagram).
    pub tag: Option<&'static str>,
}

impl ReplyWindow {
    pub fn of(channel: &ChannelRow, last_inbound: Option<DateTime<Utc>>, now: DateTime<Utc>) -> ReplyWindow {
        let connected = channel.status == "connected";
        let Some(last) = last_inbound else { return ReplyWindow { can_reply: false, ends_at: None, tag: None } };
        let standard = last + Duration::hours(24);
        if now < standard {
            return ReplyWindow { can_reply: connected, ends_at: Some(standard), tag: None };
        }
        let human = last + Duration::days(7);
        if channel.platform() != Platform::Whatsapp && channel.settings().human_agent && now < human {
            return ReplyWindow { can_reply: connected, ends_at: Some(human), tag: Some("HUMAN_AGENT") };
        }
        ReplyWindow { can_reply: false, ends_at: Some(standard), tag: None }
    }
}

pub fn conversation_row(tc: &mut TenantConn<'_>, id: ConversationId) -> AppResult<ConversationRow> {
    conversations::table
        .find(id.0)
        .select(ConversationRow::as_select())
        .first(tc.pg())
        .optional()?
        .ok_or_else(|| AppError::not_found("conversation"))
}
