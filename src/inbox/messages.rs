//! Messages: listing, agents' replies (stored `pending` with their send-queue
//! row in one transaction), and the status steps the sender and webhooks make.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde_json::{json, Value};

use super::events::EventLog;
use super::views::{conversation_row, ConversationRow, MessageRow, MessageView, Names, ReplyWindow};
use super::{status_moves_forward, ConversationId};
use crate::audit;
use crate::auth::Role;
use crate::channels::{self, ChannelId, ChannelRow, Platform};
use crate::db::tenant_schema::{conversations, messages as m};
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

/// What a reply may carry besides its content.
#[derive(Debug, Clone, Default)]
pub struct ReplyOptions {
    /// Makes a retry safe (1 to 200 characters).
    pub client_id: Option<String>,
    /// The message of the conversation it answers: WhatsApp shows it quoted.
    pub reply_to: Option<super::MessageId>,
    /// Whether its text ends with the agent's signature; `None`: as the
    /// channel's `sign_replies` says.
    pub sign: Option<bool>,
}

pub struct NewOutgoing {
    pub conversation: ConversationId,
    /// `None`: a file without a caption.
    pub text: Option<String>,
    pub client_id: Option<String>,
    /// `None`: sent by the page itself (auto-reply).
    pub agent: Option<UserId>,
    /// What is sent besides the text: an agent's file (`inbox::uploads`),
    /// first, and a WhatsApp template's attachment (`inbox::templates`).
    pub attachments: Vec<Value>,
    /// The WhatsApp id of the message it quotes.
    pub reply_to_external_id: Option<String>,
    /// The sign-off `text` ends with (signed replies), if any.
    pub signature: Option<String>,
}

/// Longest text each platform accepts.
pub fn max_text_chars(p: Platform) -> usize {
    match p {
        Platform::Whatsapp => 4096,
        _ => 2000,
    }
}

/// An agent's or the page's message as stored.
#[derive(Insertable)]
#[diesel(table_name = m)]
struct NewMessage<'a> {
    conversation_id: i64,
    channel_id: i64,
    direction: &'static str,
    sender_kind: &'static str,
    sender_user_id: Option<i64>,
    text: Option<&'a str>,
    attachments: Value,
    status: &'static str,
    client_id: Option<&'a str>,
    sort_at: DateTime<Utc>,
    private: bool,
    reply_to_external_id: Option<&'a str>,
    signature: Option<&'a str>,
}

/// Stores `new` unless its `client_id` is taken in the conversation already;
/// the row either way, and whether this call stored it.
fn insert_once(tc: &mut TenantConn<'_>, new: &NewMessage<'_>) -> AppResult<(MessageRow, bool)> {
    let inserted: Option<MessageRow> = diesel::insert_into(m::table)
        .values(new)
        .on_conflict((m::conversation_id, m::client_id))
        .do_nothing()
        .returning(MessageRow::as_returning())
        .get_result(tc.pg())
        .optional()?;
    if let Some(row) = inserted {
        return Ok((row, true));
    }
    let existing = m::table
        .filter(m::conversation_id.eq(new.conversation_id))
        .filter(m::client_id.eq(new.client_id))
        .select(MessageRow::as_select())
        .first(tc.pg())?;
    Ok((existing, false))
}

/// Stores an outgoing message `pending` and its send-queue row; a repeated
/// `client_id` returns the message stored the first time.
pub fn queue_outgoing(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    names: &mut Names,
    channel: &ChannelRow,
    conv: &ConversationRow,
    out: NewOutgoing,
) -> AppResult<(MessageRow, bool)> {
    let now = Utc::now();
    let new = NewMessage {
        conversation_id: conv.id,
        channel_id: channel.id,
        direction: "out",
        sender_kind: if out.agent.is_some() { "agent" } else { "page" },
        sender_user_id: out.agent.map(|a| a.0),
        text: out.text.as_deref(),
        attachments: Value::Array(out.attachments),
        status: "pending",
        client_id: out.client_id.as_deref(),
        sort_at: now,
        private: false,
        reply_to_external_id: out.reply_to_external_id.as_deref(),
        signature: out.signature.as_deref(),
    };
    let (row, stored) = insert_once(tc, &new)?;
    if !stored {
        return Ok((row, false));
    }
    super::sender::queue(tc, super::sender::SendKind::Message, conv.id, Some(row.id))?;
    // An agent's message answers whoever waits; an automatic one does not
    // (`waiting`).
    let waiting = super::waiting::kept_unless(out.agent.is_some());
    let conv: ConversationRow = diesel::update(conversations::table.find(conv.id))
        .set((
            conversations::last_message_id.eq(row.id),
            conversations::last_activity_at.eq(now),
            waiting,
            conversations::updated_at.eq(now),
        ))
        .returning(ConversationRow::as_returning())
        .get_result(tc.pg())?;
    let view = names.message(tc, &row, conv.contact_id)?;
    log.append(tc, "message.created", Some(channel.id), Some(conv.id), &view)?;
    let conv_view = names.conversation(tc, &conv)?;
    log.append(tc, "conversation.updated", Some(channel.id), Some(conv.id), &conv_view)?;
    Ok((row, true))
}

/// Loads a conversation the caller may see; anything else is a 404.
pub fn visible_conversation(
    tc: &mut TenantConn<'_>,
    user: UserId,
    role: Role,
    id: ConversationId,
) -> AppResult<ConversationRow> {
    let conv = conversation_row(tc, id)?;
    if !channels::can_see(tc, user, role, ChannelId(conv.channel_id))? {
        return Err(AppError::not_found("conversation"));
    }
    Ok(conv)
}

/// What a request under a `client_id` asks for, to tell a retry from
/// another message: the text as written and as it would go now (signed),
/// the reply's own `sign`, the file (by its SHA-256) and the choices.
struct Asked<'a> {
    written: Option<&'a str>,
    sent: Option<&'a str>,
    sign: Option<bool>,
    file: Option<&'a str>,
    choices: Option<&'a Value>,
}

impl<'a> Asked<'a> {
    /// A note's: nothing signs it.
    fn note(text: Option<&'a str>, file: Option<&'a str>) -> Self {
        Asked { written: text, sent: text, sign: None, file, choices: None }
    }
}

/// A `client_id` makes a retry safe: the same agent sending the same text
/// (and the same file, by its SHA-256, and the same choices to tap) gets
/// the message stored the first time. The text is what the agent wrote:
/// a signature changed in between (signed replies) does not make the
/// retry another message; rows stored before signatures were kept apart
/// compare as they would go now. Anything else under that id is not a
/// retry, and would otherwise be silently dropped: 409.
fn same_request(tc: &mut TenantConn<'_>, stored: &MessageRow, user: UserId, asked: Asked<'_>) -> AppResult<()> {
    if stored.sender_user_id != Some(user.0)
        || super::uploads::stored_sha256(&stored.attachments) != asked.file
        || choices_of(&stored.attachments) != asked.choices
    {
        return Err(client_id_reused());
    }
    if stored.text.as_deref() == asked.sent {
        return Ok(());
    }
    let signature: Option<String> = m::table.find(stored.id).select(m::signature).first(tc.pg())?;
    let same = match (signature, asked.written, stored.text.as_deref()) {
        // Signed then, asked unsigned now: another request.
        (Some(_), _, _) if asked.sign == Some(false) => false,
        (Some(sig), Some(written), Some(text)) => text == signed(written, &sig),
        // Unsigned then (the channel signs now, or the agent had no sign-off).
        (None, written, text) => text == written,
        _ => false,
    };
    match same {
        true => Ok(()),
        false => Err(client_id_reused()),
    }
}

/// The choices to tap a message offers (`inbox::choices`), as stored.
fn choices_of(attachments: &Value) -> Option<&Value> {
    attachments.as_array()?.iter().find(|a| a["type"] == "choices")
}

fn client_id_reused() -> AppError {
    AppError::conflict(
        "client_id_reused",
        "this client_id was used for another message in this conversation; use a new one",
    )
}

/// `POST /api/conversations/{id}/messages` with `text`.
pub fn create_reply(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: ConversationId,
    text: String,
    opts: ReplyOptions,
) -> AppResult<(MessageView, bool)> {
    reply(tc, log, user, role, id, Reply::Text(text), opts)
}

/// `POST /api/conversations/{id}/messages` with `text` and `choices`: a
/// question and the answers to tap (`inbox::choices`).
#[allow(clippy::too_many_arguments)]
pub fn create_choices_reply(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: ConversationId,
    text: String,
    options: Vec<String>,
    button: Option<String>,
    opts: ReplyOptions,
) -> AppResult<(MessageView, bool)> {
    reply(tc, log, user, role, id, Reply::Choices { text, options, button }, opts)
}

/// `POST /api/conversations/{id}/messages` with a file (`inbox::uploads`),
/// and on WhatsApp perhaps a caption: stored with the message, sent by the
/// sender.
#[allow(clippy::too_many_arguments)]
pub fn create_file_reply(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: ConversationId,
    upload: super::uploads::Upload,
    caption: Option<String>,
    opts: ReplyOptions,
) -> AppResult<(MessageView, bool)> {
    reply(tc, log, user, role, id, Reply::File { upload, caption }, opts)
}

/// The longest note.
pub const MOST_NOTE_CHARS: usize = 10_000;

/// A note as asked for: text or a file or both, a `client_id` for retries,
/// and whom it mentions.
#[derive(Default)]
pub struct Note {
    pub text: Option<String>,
    pub file: Option<super::uploads::Upload>,
    pub client_id: Option<String>,
    pub mentions: super::mentions::Mentions,
}

/// `POST /api/conversations/{id}/messages` with `private: true`: a note
/// for the team, text or a file or both. Stored `sent` at once and never
/// sent to the customer, so it needs no reply window nor a connected
/// channel, and its file no platform's rules; it is announced
/// (`message.created`) like any message, but leaves the conversation's
/// last message and activity as they were: the list stays about the
/// customer. A `client_id` makes a retry safe, as for replies.
/// It may call colleagues in (`mentions`, [`super::mentions`]).
pub fn create_note(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: ConversationId,
    note: Note,
) -> AppResult<(MessageView, bool)> {
    let Note { text, file, client_id, mentions } = note;
    let conv = visible_conversation(tc, user, role, id)?;
    let mut names = Names::default();
    let file_sha = file.as_ref().map(|f| f.sha256.clone());
    if let Some(row) = retried(tc, conv.id, client_id.as_deref())? {
        if !row.private {
            return Err(client_id_reused());
        }
        same_request(tc, &row, user, Asked::note(text.as_deref(), file_sha.as_deref()))?;
        return Ok((names.message(tc, &row, conv.contact_id)?, false));
    }
    match (&text, &file) {
        (Some(t), _) if t.trim().is_empty() => {
            return Err(AppError::invalid("empty_text", "text must not be empty"));
        }
        (Some(t), _) if t.chars().count() > MOST_NOTE_CHARS => {
            return Err(AppError::invalid(
                "text_too_long",
                format!("a note must be at most {MOST_NOTE_CHARS} characters"),
            ));
        }
        (None, None) => return Err(AppError::invalid("empty_text", "text must not be empty")),
        _ => {}
    }
    // Never sent: no platform's rules, only the size any file may have.
    if let Some(f) = &file {
        if f.bytes.is_empty() {
            return Err(AppError::invalid("empty_file", "the file is empty"));
        }
    }
    let mentioned = super::mentions::checked(tc, &conv, &mentions)?;
    let new = NewMessage {
        conversation_id: conv.id,
        channel_id: conv.channel_id,
        direction: "out",
        sender_kind: "agent",
        sender_user_id: Some(user.0),
        text: text.as_deref(),
        attachments: Value::Array(file.iter().map(super::uploads::Upload::attachment).collect()),
        status: "sent",
        client_id: client_id.as_deref(),
        sort_at: Utc::now(),
        private: true,
        reply_to_external_id: None,
        signature: None,
    };
    let (row, stored) = insert_once(tc, &new)?;
    if !stored {
        // A concurrent request with the same client_id stored first.
        same_request(tc, &row, user, Asked::note(text.as_deref(), file_sha.as_deref()))?;
        return Ok((names.message(tc, &row, conv.contact_id)?, false));
    }
    if let Some(f) = &file {
        super::media_copies::store(tc, row.id, 0, &f.mime, &f.bytes)?;
    }
    let view = names.message(tc, &row, conv.contact_id)?;
    log.append(tc, "message.created", Some(conv.channel_id), Some(conv.id), &view)?;
    super::mentions::record(tc, log, &conv, &row, user, &mentioned)?;
    audit::record(
        tc,
        Some(user),
        "message.note",
        "conversation",
        Some(id.to_string()),
        json!({"message_id": row.id.to_string()}),
    )?;
    Ok((view, true))
}

/// A message the caller may see, its row held for a change (else 404, as
/// for another tenant's).
fn visible_message_for_update(
    tc: &mut TenantConn<'_>,
    user: UserId,
    role: Role,
    id: super::MessageId,
) -> AppResult<MessageRow> {
    let row: MessageRow = m::table
        .find(id.0)
        .select(MessageRow::as_select())
        .for_update()
        .first(tc.pg())
        .optional()?
        .ok_or_else(|| AppError::not_found("message"))?;
    if !channels::can_see(tc, user, role, ChannelId(row.channel_id))? {
        return Err(AppError::not_found("message"));
    }
    Ok(row)
}

/// A note the caller may change: it exists, the caller sees its channel
/// (else 404, as for another tenant's), and it is a note (messages sent to
/// the customer stay as they were sent: 403 `not_a_note`).
fn changeable_note(tc: &mut TenantConn<'_>, user: UserId, role: Role, id: super::MessageId) -> AppResult<MessageRow> {
    // Its conversation first, as a retry and the sender take a reply's: a
    // rewrite writes rows naming it (mentions, notifications), and taking
    // the note first it held what an erasure (the conversation, then its
    // messages) wanted while waiting for the conversation.
    lock_conversation_of(tc, id.0)?;
    let row = visible_message_for_update(tc, user, role, id)?;
    if !row.private {
        return Err(AppError::forbidden(
            "not_a_note",
            "only private notes can be edited or deleted; what the customer was sent stays as it was sent",
        ));
    }
    Ok(row)
}

/// `PATCH /api/messages/{id}` with `text`: a note's author rewrites it
/// (announced as `message.updated` with `edited_at`; the same text again
/// changes nothing), and with `mentions` names the members it calls in
/// anew (`mentions` module docs). Nobody else may: 403 `not_your_note`.
pub fn edit_note(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: super::MessageId,
    text: String,
    mentions: Option<super::mentions::Mentions>,
) -> AppResult<MessageView> {
    let row = changeable_note(tc, user, role, id)?;
    if row.sender_user_id != Some(user.0) {
        return Err(AppError::forbidden("not_your_note", "only its author can edit a note"));
    }
    if row.deleted_at.is_some() {
        return Err(AppError::conflict("note_deleted", "this note was deleted"));
    }
    if text.trim().is_empty() {
        return Err(AppError::invalid("empty_text", "text must not be empty; delete the note instead"));
    }
    if text.chars().count() > MOST_NOTE_CHARS {
        return Err(AppError::invalid("text_too_long", format!("a note must be at most {MOST_NOTE_CHARS} characters")));
    }
    let conv = conversation_row(tc, ConversationId(row.conversation_id))?;
    let mentioned = mentions.map(|raw| super::mentions::checked(tc, &conv, &raw)).transpose()?;
    let mut names = Names::default();
    let same_mentions = match &mentioned {
        None => true,
        Some(given) => {
            let mut given = given.clone();
            given.sort_by_key(|u| u.0);
            super::mentions::of_note(tc, super::MessageId(row.id))? == given
        }
    };
    if row.text.as_deref() == Some(text.as_str()) && same_mentions {
        return names.message(tc, &row, conv.contact_id);
    }
    let row: MessageRow = diesel::update(m::table.find(row.id))
        .set((m::text.eq(&text), m::edited_at.eq(diesel::dsl::now), m::updated_at.eq(diesel::dsl::now)))
        .returning(MessageRow::as_returning())
        .get_result(tc.pg())?;
    note_changed(tc, log, user, &row, "message.note_edited")?;
    if let Some(members) = mentioned.filter(|_| !same_mentions) {
        super::mentions::replace(tc, log, &conv, &row, user, &members)?;
    }
    names.message(tc, &row, conv.contact_id)
}

/// A note's change: announced (`message.updated`) and audited as `action`.
fn note_changed(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    row: &MessageRow,
    action: &str,
) -> AppResult<()> {
    log.append(tc, "message.updated", Some(row.channel_id), Some(row.conversation_id), row.update_view())?;
    audit::record(
        tc,
        Some(user),
        action,
        "conversation",
        Some(row.conversation_id.to_string()),
        json!({"message_id": row.id.to_string()}),
    )?;
    Ok(())
}

/// `DELETE /api/messages/{id}`: a note's author, or an admin, deletes it.
/// It stays in its place as deleted (text gone, `deleted_at` set, as an
/// unsent message shows), announced as `message.updated`; deleting it
/// again changes nothing.
pub fn delete_note(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: super::MessageId,
) -> AppResult<()> {
    let row = changeable_note(tc, user, role, id)?;
    if row.sender_user_id != Some(user.0) && !role.at_least(Role::Admin) {
        return Err(AppError::forbidden("not_your_note", "only its author or an admin can delete a note"));
    }
    if row.deleted_at.is_some() {
        return Ok(());
    }
    let row: MessageRow = diesel::update(m::table.find(row.id))
        .set((
            m::text.eq(None::<String>),
            m::attachments.eq(json!([])),
            m::deleted_at.eq(diesel::dsl::now),
            m::updated_at.eq(diesel::dsl::now),
        ))
        .returning(MessageRow::as_returning())
        .get_result(tc.pg())?;
    // Its file goes with it.
    super::media_copies::forget(tc, row.id)?;
    note_changed(tc, log, user, &row, "message.note_deleted")
}

/// The longest reaction kept (one emoji, with its modifiers and joiners).
const MOST_REACTION_CHARS: usize = 16;

/// `PUT /api/messages/{id}/reaction` (`Some` emoji) or `DELETE` (`None`):
/// the business reacts to a customer's message, as the page or number.
/// Kept in the message's `reactions` under the channel's own id (as Meta
/// names the page or number reacting), announced (`message.updated`) and
/// sent by the sender; the same reaction again changes and sends nothing.
/// Only a customer's message Meta has, inside the reply window (a reaction
/// is a message on WhatsApp).
pub fn react(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: super::MessageId,
    emoji: Option<String>,
) -> AppResult<MessageView> {
    if let Some(e) = &emoji {
        if e.trim().is_empty() || e.chars().count() > MOST_REACTION_CHARS || e.chars().any(char::is_whitespace) {
            return Err(AppError::invalid("invalid_reaction", "a reaction is one emoji"));
        }
    }
    let row = visible_message_for_update(tc, user, role, id)?;
    // Said precisely: a client shows the sentence to an agent who tapped a
    // message and expects to know why nothing happened.
    let refused = if row.private {
        Some("a private note cannot be reacted to; only a customer's message can")
    } else if row.direction != "in" {
        Some("only a customer's message can be reacted to, not one the team or the page sent")
    } else if row.deleted_at.is_some() {
        Some("the customer deleted this message; it cannot be reacted to")
    } else if row.external_id.is_none() {
        Some("this message has no id at Meta, so a reaction cannot name it")
    } else {
        None
    };
    if let Some(why) = refused {
        return Err(AppError::invalid("cannot_react", why));
    }
    let conv = conversation_row(tc, ConversationId(row.conversation_id))?;
    let mut names = Names::default();
    let channel = names.channel(tc, row.channel_id)?;
    super::contacts::refuse_if_blocked(&names.contact_of(tc, &conv)?)?;
    if channel.status != "connected" {
        return Err(AppError::conflict(
            "channel_not_connected",
            format!("the channel is {}; reconnect it first", channel.status),
        ));
    }
    if !ReplyWindow::of(&channel, conv.last_inbound_at, Utc::now()).can_reply {
        return Err(AppError::invalid("outside_window", "the reply window has closed: a reaction cannot be sent"));
    }
    crate::channels::whatsapp_number::refuse_if_restricted(&channel, true)?;
    let mut row = row;
    let change = super::early::Change::Reaction { contact: channel.external_id.clone(), emoji };
    if change.apply_to(&mut row, Utc::now()) {
        row = super::early::write(tc, &row)?;
        log.append(tc, "message.updated", Some(row.channel_id), Some(row.conversation_id), row.update_view())?;
        super::sender::queue(tc, super::sender::SendKind::Reaction, conv.id, Some(row.id))?;
    }
    names.message(tc, &row, conv.contact_id)
}

/// `POST /api/messages/{id}/retry`: a reply that failed (Meta refused it,
/// the channel was disconnected, the window closed before it went) is sent
/// again, as it was written: `pending` again, its error and Meta's id of
/// the failed attempt cleared, queued, announced (`message.updated`) and
/// audited. Only a reply of the team's (not a note, not the page's own
/// message), and only if it could be sent now: the channel connected, the
/// window open (a template at any time). A reply already pending again (a
/// retried retry) is answered as it is; one that went out is 409
/// `not_failed`.
pub fn retry(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: super::MessageId,
) -> AppResult<MessageView> {
    // A retry changes the conversation's wait too (`waiting`).
    lock_conversation_of(tc, id.0)?;
    let row = visible_message_for_update(tc, user, role, id)?;
    if row.direction != "out" || row.sender_kind != "agent" || row.private || row.deleted_at.is_some() {
        return Err(AppError::invalid("not_retryable", "only a reply the team sent can be sent again"));
    }
    let conv = conversation_row(tc, ConversationId(row.conversation_id))?;
    let mut names = Names::default();
    match row.status.as_str() {
        "pending" => return names.message(tc, &row, conv.contact_id),
        "failed" => {}
        _ => return Err(AppError::conflict("not_failed", "the reply went out; only a failed one is sent again")),
    }
    let channel = names.channel(tc, row.channel_id)?;
    super::contacts::refuse_if_blocked(&names.contact_of(tc, &conv)?)?;
    if channel.status != "connected" {
        return Err(AppError::conflict(
            "channel_not_connected",
            format!("the channel is {}; reconnect it first", channel.status),
        ));
    }
    let template = super::templates::stored(&row.attachments).is_some();
    let window = ReplyWindow::of(&channel, conv.last_inbound_at, Utc::now());
    if !template && !window.can_reply {
        return Err(AppError::invalid(
            "outside_window",
            "the contact's last message is older than the reply window allows; send a template instead",
        ));
    }
    crate::channels::whatsapp_number::refuse_if_restricted(&channel, window.can_reply)?;
    // Meta's id of the failed attempt goes: a late status of it must not
    // move the new attempt, whose id the send brings.
    let row: MessageRow = diesel::update(m::table.find(row.id))
        .set((
            m::status.eq("pending"),
            m::error.eq(None::<Value>),
            m::external_id.eq(None::<String>),
            m::platform_timestamp.eq(None::<DateTime<Utc>>),
            m::updated_at.eq(diesel::dsl::now),
        ))
        .returning(MessageRow::as_returning())
        .get_result(tc.pg())?;
    super::sender::queue(tc, super::sender::SendKind::Message, conv.id, Some(row.id))?;
    log.append(tc, "message.updated", Some(row.channel_id), Some(row.conversation_id), row.update_view())?;
    // On its way again: it answers what it answered before it failed.
    rewaited(tc, log, conv.id)?;
    audit::record(
        tc,
        Some(user),
        "message.retried",
        "conversation",
        Some(conv.id.to_string()),
        json!({"message_id": row.id.to_string()}),
    )?;
    names.message(tc, &row, conv.contact_id)
}

/// What a template reply needs before Meta is asked for the template.
pub enum TemplateTarget {
    /// The `client_id` was used already: a retry, answered with its message.
    Retried(MessageView),
    /// The conversation's channel, and whether its customer stopped
    /// marketing messages.
    Channel(ChannelRow, bool),
}

/// The checks of a template reply that come before Meta is asked: the
/// caller may see the conversation, and a retry (the same agent, template
/// and parameters under a `client_id` used already) is answered without
/// asking Meta. Whether the channel can send templates is
/// `inbox::templates`' to check.
pub fn template_target(
    tc: &mut TenantConn<'_>,
    user: UserId,
    role: Role,
    id: ConversationId,
    client_id: Option<&str>,
    choice: &super::templates::Choice,
    header_file_sha: Option<&str>,
) -> AppResult<TemplateTarget> {
    let conv = visible_conversation(tc, user, role, id)?;
    let mut names = Names::default();
    let channel = names.channel(tc, conv.channel_id)?;
    if let Some(row) = retried(tc, conv.id, client_id)? {
        // The same agent sending the same template is a retry.
        let asked =
            (choice.name.clone(), choice.language.clone(), choice.header_parameters.clone(), choice.parameters.clone());
        if row.sender_user_id != Some(user.0)
            || super::templates::stored(&row.attachments) != Some(asked)
            || super::uploads::stored_sha256(&row.attachments) != header_file_sha
        {
            return Err(client_id_reused());
        }
        return Ok(TemplateTarget::Retried(names.message(tc, &row, conv.contact_id)?));
    }
    super::contacts::refuse_if_blocked(&names.contact_of(tc, &conv)?)?;
    // Before Meta is asked for the template.
    let window = ReplyWindow::of(&channel, conv.last_inbound_at, Utc::now());
    crate::channels::whatsapp_number::refuse_if_restricted(&channel, window.can_reply)?;
    let stopped = super::contacts::marketing_stopped(tc, conv.contact_id)?;
    Ok(TemplateTarget::Channel(channel, stopped))
}

/// `POST /api/conversations/{id}/messages` with `template`, made ready
/// ([`super::templates::prepare`]): sent whether the window is open or not.
#[allow(clippy::too_many_arguments)]
pub fn create_template_reply(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: ConversationId,
    prepared: super::templates::Prepared,
    header_file: Option<super::uploads::Upload>,
    opts: ReplyOptions,
) -> AppResult<(MessageView, bool)> {
    reply(tc, log, user, role, id, Reply::Template { prepared, header_file }, opts)
}

/// A macro's message or note already written under `client_id` by `user`
/// (`private` for a note): the run is a retry, and its earlier message
/// stands even if its text would render otherwise now (a name changed
/// since, `inbox::macros`). Anything else under that id is left to the
/// usual checks (409).
pub fn macro_retried(
    tc: &mut TenantConn<'_>,
    user: UserId,
    conv: &ConversationRow,
    client_id: Option<&str>,
    private: bool,
) -> AppResult<Option<MessageView>> {
    match retried(tc, conv.id, client_id)? {
        Some(row) if row.sender_user_id == Some(user.0) && row.private == private => {
            Ok(Some(Names::default().message(tc, &row, conv.contact_id)?))
        }
        _ => Ok(None),
    }
}

/// The message a `client_id` (1 to 200 characters) names in the
/// conversation already, if any: the request may be a retry.
fn retried(tc: &mut TenantConn<'_>, conversation: i64, client_id: Option<&str>) -> AppResult<Option<MessageRow>> {
    let Some(cid) = client_id else { return Ok(None) };
    if cid.is_empty() || cid.len() > 200 {
        return Err(AppError::invalid("invalid_client_id", "client_id must be 1 to 200 characters"));
    }
    by_client_id(tc, conversation, cid)
}

fn by_client_id(tc: &mut TenantConn<'_>, conversation: i64, cid: &str) -> AppResult<Option<MessageRow>> {
    Ok(m::table
        .filter(m::conversation_id.eq(conversation))
        .filter(m::client_id.eq(cid))
        .select(MessageRow::as_select())
        .first(tc.pg())
        .optional()?)
}

/// The WhatsApp id of the message `quoted`, which a reply may quote: a
/// message of the same conversation that WhatsApp has (received, or sent
/// and not unsent), not a note. Messenger and Instagram replies quote
/// nothing (`reply_to_whatsapp_only`).
fn quotable(
    tc: &mut TenantConn<'_>,
    channel: &ChannelRow,
    conv: &ConversationRow,
    quoted: super::MessageId,
) -> AppResult<String> {
    if channel.platform() != Platform::Whatsapp {
        return Err(AppError::invalid(
            "reply_to_whatsapp_only",
            "only WhatsApp shows a reply quoting a message; send it without reply_to",
        ));
    }
    let found: Option<Option<String>> = m::table
        .find(quoted.0)
        .filter(m::conversation_id.eq(conv.id))
        .filter(m::private.eq(false))
        .filter(m::deleted_at.is_null())
        .select(m::external_id)
        .first(tc.pg())
        .optional()?;
    found.flatten().ok_or_else(|| {
        AppError::invalid(
            "invalid_reply_to",
            "reply_to must be a message of this conversation that WhatsApp has: not a note, not one still pending, not one unsent",
        )
    })
}

/// What an agent's reply carries.
enum Reply {
    Text(String),
    /// A WhatsApp template, filled in: its text and attachment, and the
    /// file its media header shows.
    Template {
        prepared: super::templates::Prepared,
        header_file: Option<super::uploads::Upload>,
    },
    /// A file, with a caption where the platform shows one.
    File {
        upload: super::uploads::Upload,
        caption: Option<String>,
    },
    /// A question with the answers to tap (`inbox::choices`).
    Choices {
        text: String,
        options: Vec<String>,
        button: Option<String>,
    },
}

/// A reply: text, a template, or a file.
fn reply(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: ConversationId,
    content: Reply,
    opts: ReplyOptions,
) -> AppResult<(MessageView, bool)> {
    let ReplyOptions { client_id, reply_to, sign } = opts;
    let conv = visible_conversation(tc, user, role, id)?;
    let mut names = Names::default();
    let channel = names.channel(tc, conv.channel_id)?;
    let template = matches!(content, Reply::Template { .. });
    let choices = matches!(content, Reply::Choices { .. });
    // A template's text is Meta's to approve, word for word.
    let signature = match template {
        true => None,
        false => signature_for(tc, user, &channel, sign)?,
    };
    // A file, sent as the message or as a template's header: kept first.
    let (text, attachments, file) = match content {
        Reply::Text(text) => (Some(text), Vec::new(), None),
        Reply::Choices { text, options, button } => {
            (Some(text), vec![super::choices::attachment(channel.platform(), &options, button.as_deref())?], None)
        }
        Reply::Template { prepared, header_file } => {
            let file_attachment = header_file.as_ref().map(super::uploads::Upload::attachment);
            (Some(prepared.text), file_attachment.into_iter().chain([prepared.attachment]).collect(), header_file)
        }
        Reply::File { upload, caption } => (caption, vec![upload.attachment()], Some(upload)),
    };
    // What the customer gets, and so what is stored (a file without a
    // caption goes unsigned: nothing shows beside it).
    let nothing_written = text.as_deref().is_none_or(|t| t.trim().is_empty());
    let written = text.clone();
    let (text, signature) = match (text, signature) {
        (Some(t), Some(sig)) if !t.trim().is_empty() => (Some(signed(&t, &sig)), Some(sig)),
        (text, _) => (text, None),
    };
    let file_sha = file.as_ref().map(|f| f.sha256.clone());
    let offered = choices_of(&Value::Array(attachments.clone())).cloned();
    let asked = || Asked {
        written: written.as_deref(),
        sent: text.as_deref(),
        sign,
        file: file_sha.as_deref(),
        choices: offered.as_ref(),
    };
    if let Some(row) = retried(tc, conv.id, client_id.as_deref())? {
        if row.private {
            return Err(client_id_reused());
        }
        same_request(tc, &row, user, asked())?;
        return Ok((names.message(tc, &row, conv.contact_id)?, false));
    }
    match &file {
        // A header's file was checked with its template (`templates::prepare`).
        Some(upload) if !template => {
            super::uploads::check(channel.platform(), upload, text.as_deref())?;
        }
        _ => {
            if nothing_written {
                return Err(AppError::invalid("empty_text", "text must not be empty"));
            }
            if template && channel.platform() != Platform::Whatsapp {
                return Err(AppError::invalid(
                    "templates_whatsapp_only",
                    "message templates are WhatsApp's; send text here",
                ));
            }
            let max = match (choices, channel.platform()) {
                (true, Platform::Whatsapp) => super::choices::WHATSAPP_TEXT_CHARS,
                (_, platform) => max_text_chars(platform),
            };
            let with = if signature.is_some() { ", with the signature" } else { "" };
            if !template && text.as_deref().unwrap_or_default().chars().count() > max {
                return Err(AppError::invalid(
                    "text_too_long",
                    format!("text must be at most {max} characters on this platform{with}"),
                ));
            }
        }
    }
    let reply_to_external_id = match reply_to {
        Some(quoted) => Some(quotable(tc, &channel, &conv, quoted)?),
        None => None,
    };
    super::contacts::refuse_if_blocked(&names.contact_of(tc, &conv)?)?;
    if channel.status != "connected" {
        return Err(AppError::conflict(
            "channel_not_connected",
            format!("the channel is {}; reconnect it first", channel.status),
        ));
    }
    // A template is what may be sent once the window has closed.
    let window = ReplyWindow::of(&channel, conv.last_inbound_at, Utc::now());
    if !template && !window.can_reply {
        return Err(AppError::invalid(
            "outside_window",
            "the contact's last message is older than the reply window allows (24 hours; 7 days with the human agent tag; a WhatsApp template at any time)",
        ));
    }
    crate::channels::whatsapp_number::refuse_if_restricted(&channel, window.can_reply)?;
    let (row, created) = queue_outgoing(
        tc,
        log,
        &mut names,
        &channel,
        &conv,
        NewOutgoing {
            conversation: id,
            text: text.clone(),
            client_id,
            agent: Some(user),
            attachments,
            reply_to_external_id,
            signature: signature.clone(),
        },
    )?;
    if created {
        if let Some(upload) = &file {
            // The file is kept with its message, as a copy of a customer's media is.
            super::media_copies::store(tc, row.id, 0, &upload.mime, &upload.bytes)?;
        }
        audit::record(
            tc,
            Some(user),
            "message.queued",
            "conversation",
            Some(id.to_string()),
            json!({"message_id": row.id.to_string()}),
        )?;
    } else {
        // A concurrent request with the same client_id stored first.
        same_request(tc, &row, user, asked())?;
    }
    Ok((names.message(tc, &row, conv.contact_id)?, created))
}

/// What ends `user`'s reply on `channel` as `sign` asks (`None`: as the
/// channel's `sign_replies` says), if anything does.
pub(super) fn signature_for(
    tc: &mut TenantConn<'_>,
    user: UserId,
    channel: &crate::channels::ChannelRow,
    sign: Option<bool>,
) -> AppResult<Option<String>> {
    match sign.unwrap_or_else(|| channel.settings().sign_replies) {
        true => sign_off(tc, user),
        false => Ok(None),
    }
}

/// What signs `user`'s replies in this tenant: their signature there,
/// else a dash and their name; `None` with neither.
fn sign_off(tc: &mut TenantConn<'_>, user: UserId) -> AppResult<Option<String>> {
    let tenant = tc.tenant();
    if let Some(signature) = crate::auth::members::signature(tc.pg(), user, tenant)? {
        return Ok(Some(signature));
    }
    let name = crate::auth::users::find(tc.pg(), user)?.map(|u| u.name).filter(|n| !n.trim().is_empty());
    Ok(name.map(|n| format!("— {}", n.trim())))
}

/// `text` signed: the signature on a paragraph of its own below it.
pub(super) fn signed(text: &str, signature: &str) -> String {
    format!("{}\n\n{signature}", text.trim_end())
}

/// Moves a message's status forward (never back); `None` when it would
/// not. Any status ends a hold of Meta's (`held_by_meta`): a held
/// template's `sent` comes when Meta lets it go, though it shows `sent`
/// already.
pub fn advance_status(
    tc: &mut TenantConn<'_>,
    row: &MessageRow,
    to: &str,
    error: Option<Value>,
) -> AppResult<Option<MessageRow>> {
    let forward = status_moves_forward(&row.status, to);
    if !forward && row.held_by_meta.is_none() {
        return Ok(None);
    }
    let to = if forward { to } else { row.status.as_str() };
    let error = if to == "failed" { error.or_else(|| row.error.clone()) } else { row.error.clone() };
    let updated = diesel::update(m::table.find(row.id).filter(m::status.eq(&row.status)))
        .set((
            m::status.eq(to),
            m::error.eq(error),
            m::held_by_meta.eq(None::<String>),
            m::updated_at.eq(diesel::dsl::now),
        ))
        .returning(MessageRow::as_returning())
        .get_result(tc.pg())
        .optional()?;
    Ok(updated)
}

/// The sender got Meta's id for a message: store it, mark it sent (and
/// `held_by_meta`, what Meta said when it took a template it holds), and
/// apply the receipts and reactions that arrived first ([`super::early`]).
pub fn mark_sent(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    id: i64,
    external_id: &str,
    held: Option<&str>,
) -> AppResult<()> {
    // Its conversation first, as `mark_failed` takes it: an erasure takes
    // the conversation, then deletes the message, and met this holding the
    // message and waiting (its writes' foreign-key checks) for the
    // conversation.
    let row: Option<MessageRow> = match lock_conversation_of(tc, id)? {
        Some(_) => m::table.find(id).select(MessageRow::as_select()).for_update().first(tc.pg()).optional()?,
        None => None,
    };
    // Erased with its contact while it was on its way: nothing to record,
    // and nothing to send again.
    let Some(row) = row else { return Ok(()) };
    // An echo stored as we go is not seen by the delete below but holds its
    // id in the unique index: the update waits for it to commit, then fails.
    // Once more, it is seen and goes (a savepoint keeps the first try's
    // failure from ending the transaction). Without the second try the
    // send's job was tried again, and the customer sent the reply twice.
    let (beaten, mut row) = match tc.pg().transaction(|c| merge_sent(c, &row, external_id, held)) {
        Err(crate::db::DbError::Query(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        ))) => merge_sent(tc.pg(), &row, external_id, held)?,
        other => other?,
    };
    // What the customer did to an echo that went (read it, reacted) is
    // carried over to the reply.
    for (_, status, reactions, reacted_at) in &beaten {
        super::early::keep_status(tc, row.channel_id, external_id, status, None)?;
        for (contact, emoji) in reactions.as_object().into_iter().flatten() {
            let change =
                super::early::Change::Reaction { contact: contact.clone(), emoji: emoji.as_str().map(str::to_string) };
            let at = reacted_at.get(contact).and_then(Value::as_i64).and_then(DateTime::from_timestamp_millis);
            super::early::keep(tc, row.channel_id, external_id, &change, at.unwrap_or_else(Utc::now))?;
        }
    }
    super::early::take(tc, std::slice::from_mut(&mut row))?;
    log.append(tc, "message.updated", Some(row.channel_id), Some(row.conversation_id), row.update_view())?;
    if !beaten.is_empty() {
        merged(tc, log, &row, beaten.iter().map(|(ghost, ..)| *ghost).collect())?;
    }
    Ok(())
}

/// [`mark_sent`]'s writes: an echo of `row` that beat us and was stored as
/// the page's own message (an Instagram echo has no metadata to match)
/// goes, and `row` takes Meta's id. Answers the rows that went (with what
/// the customer did to them), and `row` as it is.
#[allow(clippy::type_complexity)]
fn merge_sent(
    conn: &mut diesel::PgConnection,
    row: &MessageRow,
    external_id: &str,
    held: Option<&str>,
) -> Result<(Vec<(i64, String, Value, Value)>, MessageRow), crate::db::DbError> {
    let beaten: Vec<(i64, String, Value, Value)> = diesel::delete(
        m::table
            .filter(m::channel_id.eq(row.channel_id))
            .filter(m::external_id.eq(external_id))
            .filter(m::sender_kind.eq("page"))
            .filter(m::client_id.is_null())
            .filter(m::id.ne(row.id)),
    )
    .returning((m::id, m::status, m::reactions, m::reacted_at))
    .get_results(conn)?;
    let status = if status_moves_forward(&row.status, "sent") { "sent" } else { row.status.as_str() };
    let row: MessageRow = diesel::update(m::table.find(row.id))
        .set((
            m::external_id.eq(external_id),
            m::status.eq(status),
            m::platform_timestamp.eq(row.platform_timestamp.or(Some(Utc::now()))),
            m::held_by_meta.eq(held),
            m::updated_at.eq(diesel::dsl::now),
        ))
        .returning(MessageRow::as_returning())
        .get_result(conn)?;
    Ok((beaten, row))
}

/// The live inbox showed `ghosts` (echoes of `row` stored before its id was
/// known) as messages of their own: each is announced gone, `merged_into`
/// the reply (an extension of `message.updated`; `deleted_at` set for
/// clients that know only that), and a conversation that showed one as its
/// last message shows the reply.
fn merged(tc: &mut TenantConn<'_>, log: &mut EventLog, row: &MessageRow, ghosts: Vec<i64>) -> AppResult<()> {
    let (channel, conversation) = (Some(row.channel_id), Some(row.conversation_id));
    for ghost in &ghosts {
        // The reply's update, as the row that went: gone, and into which.
        let gone = MessageRow {
            id: *ghost,
            text: None,
            reactions: json!({}),
            edited_at: None,
            deleted_at: Some(Utc::now()),
            ..row.clone()
        };
        let mut data = serde_json::to_value(gone.update_view()).unwrap_or_else(|_| json!({}));
        if let Some(fields) = data.as_object_mut() {
            fields.insert("merged_into".into(), json!(row.id.to_string()));
        }
        log.append(tc, "message.updated", channel, conversation, data)?;
    }
    let conv: Option<ConversationRow> = diesel::update(
        conversations::table.find(row.conversation_id).filter(conversations::last_message_id.eq_any(&ghosts)),
    )
    .set(conversations::last_message_id.eq(row.id))
    .returning(ConversationRow::as_returning())
    .get_result(tc.pg())
    .optional()?;
    if let Some(conv) = conv {
        let view = super::views::Names::default().conversation(tc, &conv)?;
        log.append(tc, "conversation.updated", channel, conversation, view)?;
    }
    Ok(())
}

pub fn mark_failed(tc: &mut TenantConn<'_>, log: &mut EventLog, id: i64, code: &str, message: &str) -> AppResult<()> {
    // A failed reply of an agent's answered nothing (`waiting`): its
    // conversation changes too.
    if lock_conversation_of(tc, id)?.is_none() {
        return Ok(());
    }
    let row: MessageRow = m::table.find(id).select(MessageRow::as_select()).for_update().first(tc.pg())?;
    if let Some(updated) = advance_status(tc, &row, "failed", Some(json!({"code": code, "message": message})))? {
        log.append(
            tc,
            "message.updated",
            Some(updated.channel_id),
            Some(updated.conversation_id),
            updated.update_view(),
        )?;
        if updated.sender_kind == "agent" {
            rewaited(tc, log, updated.conversation_id)?;
        }
    }
    Ok(())
}

/// Locks the conversation of message `id` (when there is one), before
/// the message is locked: the webhook path takes a conversation's lock
/// before its messages', and a change of both takes them in that order
/// too, so that neither waits for the other.
fn lock_conversation_of(tc: &mut TenantConn<'_>, id: i64) -> AppResult<Option<i64>> {
    let Some(conversation) = m::table.find(id).select(m::conversation_id).first::<i64>(tc.pg()).optional()? else {
        return Ok(None);
    };
    super::conversations::lock(tc, &[conversation])?;
    Ok(Some(conversation))
}

/// Takes the messages of `conversations` in id order, before a cascade
/// deletes them in its index's order (an erasure, retention): a webhook
/// batch takes the messages its items name in id order too
/// (`ingest::lock_named`), so neither holds one the other waits behind.
/// How many there are.
pub fn take_for_deletion(tc: &mut TenantConn<'_>, conversations: &[i64]) -> AppResult<usize> {
    let ids: Vec<i64> = m::table
        .filter(m::conversation_id.eq_any(conversations))
        .order(m::id)
        .select(m::id)
        .for_update()
        .load(tc.pg())?;
    Ok(ids.len())
}

/// Works conversation `id`'s wait out again after one of its replies
/// failed or was retried, announcing the change (`waiting::recompute`).
fn rewaited(tc: &mut TenantConn<'_>, log: &mut EventLog, id: i64) -> AppResult<()> {
    if let Some(conv) = super::waiting::recompute(tc, id)? {
        let view = Names::default().conversation(tc, &conv)?;
        log.append(tc, "conversation.updated", Some(conv.channel_id), Some(conv.id), &view)?;
    }
    Ok(())
}

/// Where one of a message's attachments is fetched from
/// (`GET /api/messages/{id}/attachments/{index}`).
#[derive(Debug)]
pub enum AttachmentSource {
    /// Meta's CDN serves it to whoever has the URL (Messenger, Instagram).
    Url(String),
    /// WhatsApp media: Meta serves it only to the channel's token.
    Media { media_id: String, filename: Option<String>, channel: Box<ChannelRow> },
    /// A file an agent sent (`inbox::uploads`), kept here with its name.
    Uploaded { filename: Option<String> },
}

/// The attachment `index` of message `id`, if `viewer` may see the message
/// (no viewer: a signed link, checked when it was made); anything else is a
/// 404, as for a message of another tenant.
/// An unsent message has nothing left to fetch; the channel's token is
/// needed while it is connected (or waiting for reconnection: the token
/// may still be good for media).
pub fn attachment_source(
    tc: &mut TenantConn<'_>,
    viewer: Option<(UserId, Role)>,
    id: super::MessageId,
    index: usize,
) -> AppResult<AttachmentSource> {
    let row: MessageRow = m::table
        .find(id.0)
        .select(MessageRow::as_select())
        .first(tc.pg())
        .optional()?
        .ok_or_else(|| AppError::not_found("message"))?;
    if let Some((user, role)) = viewer {
        if !channels::can_see(tc, user, role, ChannelId(row.channel_id))? {
            return Err(AppError::not_found("message"));
        }
    }
    let attachment = row
        .attachments
        .as_array()
        .and_then(|a| a.get(index))
        .filter(|_| row.deleted_at.is_none())
        .ok_or_else(|| AppError::not_found("attachment"))?;
    let text = |k: &str| attachment.get(k).and_then(Value::as_str).map(str::to_string);
    if attachment.get("uploaded").and_then(Value::as_bool) == Some(true) {
        return Ok(AttachmentSource::Uploaded { filename: text("filename") });
    }
    if let Some(media_id) = text("media_id") {
        let channel = channels::find(tc, ChannelId(row.channel_id))?;
        if channel.sealed_token().is_none() {
            return Err(AppError::conflict(
                "channel_not_connected",
                format!("the channel is {}; its media can be fetched once it is reconnected", channel.status),
            ));
        }
        return Ok(AttachmentSource::Media { media_id, filename: text("filename"), channel: Box::new(channel) });
    }
    // A pin's `geo:` URI is for the client itself, not a place to fetch from.
    match text("url").filter(|u| u.starts_with("https://") || u.starts_with("http://")) {
        Some(url) => Ok(AttachmentSource::Url(url)),
        None => Err(AppError::new(
            crate::error::ErrorKind::NotFound,
            "no_media",
            "this attachment has nothing to fetch (a location, a notice, what Meta does not show)",
        )),
    }
}

/// A page of messages and the (time, id) cursor of the next, older page.
pub type MessagePage = (Vec<MessageView>, Option<(DateTime<Utc>, i64)>);

/// Oldest-to-newest page of the messages before `before` (newest page when
/// `None`); returns the items and the cursor of the next, older page.
pub fn list(
    tc: &mut TenantConn<'_>,
    conv: &ConversationRow,
    before: Option<(DateTime<Utc>, i64)>,
    limit: i64,
) -> AppResult<MessagePage> {
    let mut q = m::table.filter(m::conversation_id.eq(conv.id)).select(MessageRow::as_select()).into_boxed();
    if let Some((at, id)) = before {
        q = q.filter(m::sort_at.lt(at).or(m::sort_at.eq(at).and(m::id.lt(id))));
    }
    let mut rows: Vec<MessageRow> = q.order((m::sort_at.desc(), m::id.desc())).limit(limit).load(tc.pg())?;
    let next = if rows.len() as i64 == limit { rows.last().map(|r| (r.sort_at, r.id)) } else { None };
    rows.reverse();
    let mut names = Names::default();
    let items = rows.iter().map(|r| names.message(tc, r, conv.contact_id)).collect::<AppResult<Vec<_>>>()?;
    Ok((items, next))
}

/// What showing the contact a typing indicator needs, for a conversation
/// the caller may see.
pub struct TypingTarget {
    pub conversation: i64,
    pub channel: ChannelRow,
    pub contact: String,
    pub token: Option<crate::secret::Secret<String>>,
    /// The customer's latest message (WhatsApp shows typing on a receipt).
    pub last_inbound: Option<String>,
}

pub fn typing_target(
    tc: &mut TenantConn<'_>,
    keys: &crate::crypto::Keyring,
    user: UserId,
    role: Role,
    id: ConversationId,
) -> AppResult<TypingTarget> {
    use crate::db::tenant_schema::contacts;
    let conv = visible_conversation(tc, user, role, id)?;
    let channel = channels::find(tc, ChannelId(conv.channel_id))?;
    // Gone with its contact, erased since it was read.
    let (contact, blocked_at): (String, Option<chrono::DateTime<Utc>>) = contacts::table
        .find(conv.contact_id)
        .select((contacts::external_id, contacts::blocked_at))
        .first(tc.pg())
        .optional()?
        .ok_or_else(|| AppError::not_found("conversation"))?;
    // A blocked contact is shown nothing, typing included.
    let token = if blocked_at.is_some() { None } else { channel.token(keys)? };
    Ok(TypingTarget { conversation: conv.id, channel, contact, token, last_inbound: conv.last_inbound_external_id })
}

impl TypingTarget {
    /// Shows the contact the business typing, in the background, best
    /// effort. Messenger and Instagram: `typing_on`/`typing_off` sender
    /// actions. WhatsApp: a read receipt of the customer's latest message
    /// with a typing indicator (an agent who types has read it); there is no
    /// "off" (it ends with the answer, or after 25 s), and nothing without a
    /// message from the customer. Nothing while Meta rate-limits the
    /// channel (`channels::send_hold`). Returns whether it was sent.
    pub fn send(self, graph: &crate::meta::GraphClient, on: bool) -> bool {
        let (Some(token), "connected") = (self.token, self.channel.status.as_str()) else { return false };
        if crate::channels::send_hold::SendHold::of(&self.channel, Utc::now()).is_some() {
            return false;
        }
        let graph = graph.clone();
        if self.channel.platform() == Platform::Whatsapp {
            let (true, Some(wamid)) = (on, self.last_inbound) else { return false };
            actix_web::rt::spawn(async move {
                let _ = graph.whatsapp_typing(&self.channel.external_id, &token, &wamid).await;
            });
            return true;
        }
        let action = if on { "typing_on" } else { "typing_off" };
        actix_web::rt::spawn(async move {
            let _ = graph.sender_action(&self.channel.external_id, &token, &self.contact, action).await;
        });
        true
    }
}
