//! Scheduled messages: an agent's reply written now and sent later ("send
//! it at nine tomorrow", "ask on Friday whether it arrived"), an
//! extension of the contract.
//!
//! Decisions:
//! - Text, perhaps with choices to tap (`choices`, `choices_button`, as
//!   a reply takes them, `inbox::choices`; kept as written), to the
//!   conversation's customer, by a member who may answer it (`POST /api/conversations/{id}/scheduled-messages`
//!   `{text, send_at, cancel_if_replied?, client_id?, sign?}`). It waits apart
//!   from the messages (`scheduled_messages`), so the thread, its search,
//!   badges and the waiting clock hold only what the customer was sent;
//!   clients show what waits from `GET …/scheduled-messages` and the live
//!   `scheduled_message.updated`; the conversation shows when the
//!   earliest goes (`next_scheduled_at`, announced as
//!   `conversation.updated` when it moves) for the list's clock.
//! - Checked when it is written as a reply is (text, a blocked customer,
//!   the channel connected), and against the reply window *at its time*:
//!   a `send_at` past the window's end, as known now, is refused
//!   (`outside_window`, with when it ends), since it could only fail; a
//!   window closed already needs a template, not a later text. At most
//!   [`MOST_WAITING`] wait in one conversation (`too_many_scheduled`).
//!   `send_at` is RFC 3339, a minute past at most (taken as now; earlier
//!   is `invalid_send_at`).
//! - A `client_id` makes a create safe to retry (the same author, text,
//!   choices and `sign` get the first; anything else is 409
//!   `client_id_reused`). Without one, the same message by the same author
//!   for the same time, while the first still waits, is the first too
//!   (200): a double click would otherwise reach the customer twice.
//! - At its time the sender's `scheduled_message` job makes it the
//!   author's reply (`client_id` `scheduled-<id>`, so a job run twice
//!   sends once), checked again as any reply is, and it ends `sent` with
//!   its `message_id`; or `failed` with why (`outside_window`,
//!   `contact_blocked`, `channel_not_connected`, `messaging_restricted`,
//!   `author_not_member`, `author_lost_access`: the author was removed or
//!   no longer sees the channel). Removing a member cancels theirs at
//!   once (`author_removed`), so nothing goes later in their name. With
//!   `cancel_if_replied` (default false) a customer who wrote after it
//!   was written or last changed cancels it (`customer_replied`): a
//!   follow-up they answered first is not sent. It is signed as a reply
//!   is when it goes (`sign`, else the channel's `sign_replies` then, with
//!   the author's signature then; `inbox::messages`). One too long to go
//!   signed as things stand is refused when written or changed.
//! - Its author changes it (`PATCH /api/scheduled-messages/{id}`: text,
//!   `send_at`, `cancel_if_replied`, `sign`) while it waits; the author or an
//!   admin cancels it (`POST /api/scheduled-messages/{id}/cancel`;
//!   `cancelled` again is answered as it is; a sent or failed one is 409
//!   `scheduled_message_finished`). A resolved conversation's still goes
//!   (a follow-up is often written just before resolving), and the
//!   conversation stays as it is, as for a reply.
//! - Announced live as `scheduled_message.updated` (written, changed,
//!   sent, cancelled, failed) to those who see the channel; audited
//!   `scheduled_message.created`, `.changed`, `.cancelled` (the reply
//!   itself as `message.queued`). It goes with its conversation
//!   (retention, erasure) and its channel.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::events::EventLog;
use super::messages::{self, ReplyOptions};
use super::sender::{drop_job, Next, PAST_GRACE_SECONDS};
use super::views::{Names, ReplyWindow};
use super::{ConversationId, MessageId};
use crate::app::AppState;
use crate::auth::Role;
use crate::channels::{self, ChannelId};
use crate::db::schema::send_queue as sq;
use crate::db::tenant_schema::{messages as m, scheduled_messages as s};
use crate::db::{TenantConn, TenantScope};
use crate::error::{AppError, AppResult, ErrorKind};
use crate::ids::{TenantId, UserId};

/// Messages that may wait in one conversation at once.
pub const MOST_WAITING: i64 = 20;
/// A scheduled message's statuses, as `?status=` takes them.
pub const STATUSES: [&str; 4] = ["scheduled", "sent", "cancelled", "failed"];
/// The send queue's kind for its job.
pub const JOB_KIND: &str = "scheduled_message";

crate::id_type!(
    /// A scheduled message, inside one tenant.
    ScheduledMessageId
);

/// `POST /api/conversations/{id}/scheduled-messages`, read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewScheduled {
    pub text: String,
    #[serde(default)]
    pub choices: Option<Vec<String>>,
    #[serde(default)]
    pub choices_button: Option<String>,
    pub send_at: DateTime<Utc>,
    #[serde(default)]
    pub cancel_if_replied: bool,
    #[serde(default)]
    pub client_id: Option<String>,
    /// Whether it ends with the author's signature; left out: as the
    /// channel's `sign_replies` says when it goes.
    #[serde(default)]
    pub sign: Option<bool>,
}

/// `PATCH /api/scheduled-messages/{id}`, read: what is given changes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduledChange {
    pub text: Option<String>,
    pub send_at: Option<DateTime<Utc>>,
    pub cancel_if_replied: Option<bool>,
    /// Left out: unchanged; `null`: as the channel says when it goes.
    #[serde(default, deserialize_with = "crate::patch::present")]
    pub sign: Option<Option<bool>>,
}

/// A scheduled message as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduledView {
    pub id: ScheduledMessageId,
    pub conversation_id: ConversationId,
    pub channel_id: ChannelId,
    pub text: String,
    /// Answers to tap under it; `null`: none.
    pub choices: Option<Vec<String>>,
    /// A WhatsApp list's button, when named.
    pub choices_button: Option<String>,
    pub send_at: DateTime<Utc>,
    pub cancel_if_replied: bool,
    /// Whether it ends with the author's signature; `null`: as the
    /// channel's `sign_replies` says when it goes.
    pub sign: Option<bool>,
    /// `scheduled`, `sent`, `cancelled` or `failed`.
    pub status: String,
    /// Why it was cancelled or failed: `cancelled` (by a member),
    /// `customer_replied`, `author_removed`, or an error code.
    pub reason: Option<String>,
    /// The reply it became.
    pub message_id: Option<MessageId>,
    pub created_by: UserId,
    pub client_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = s)]
struct ScheduledRow {
    id: i64,
    conversation_id: i64,
    channel_id: i64,
    created_by: i64,
    text: String,
    choices: Option<serde_json::Value>,
    send_at: DateTime<Utc>,
    cancel_if_replied: bool,
    status: String,
    reason: Option<String>,
    message_id: Option<i64>,
    client_id: Option<String>,
    job_id: Option<i64>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    sign: Option<bool>,
}

/// The choices a row keeps: their titles and a list's button.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Choices {
    options: Vec<String>,
    button: Option<String>,
}

impl ScheduledRow {
    fn choices(&self) -> Option<Choices> {
        self.choices.clone().and_then(|c| serde_json::from_value(c).ok())
    }
}

impl From<ScheduledRow> for ScheduledView {
    fn from(r: ScheduledRow) -> Self {
        let choices = r.choices();
        ScheduledView {
            id: ScheduledMessageId(r.id),
            conversation_id: ConversationId(r.conversation_id),
            channel_id: ChannelId(r.channel_id),
            text: r.text,
            choices_button: choices.as_ref().and_then(|c| c.button.clone()),
            choices: choices.map(|c| c.options),
            send_at: r.send_at,
            cancel_if_replied: r.cancel_if_replied,
            sign: r.sign,
            status: r.status,
            reason: r.reason,
            message_id: r.message_id.map(MessageId),
            created_by: UserId(r.created_by),
            client_id: r.client_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        }
    }
}

/// When it goes: `send_at`, or now for a time up to a minute past.
fn due_at(send_at: DateTime<Utc>, now: DateTime<Utc>) -> AppResult<DateTime<Utc>> {
    if send_at < now - chrono::Duration::seconds(PAST_GRACE_SECONDS) {
        return Err(AppError::invalid("invalid_send_at", "send_at is in the past; send the reply now instead"));
    }
    Ok(send_at.max(now))
}

/// The text a reply on `channel` may carry (with `choices`, WhatsApp's
/// question is shorter), with the `signature` it would end with if it went
/// now: one that could never go is refused while the author is there to
/// shorten it (a signature changed meanwhile is checked again as it goes).
fn checked_text(text: &str, channel: &channels::ChannelRow, choices: bool, signature: Option<&str>) -> AppResult<()> {
    if text.trim().is_empty() {
        return Err(AppError::invalid("empty_text", "text must not be empty"));
    }
    let max = match (choices, channel.platform()) {
        (true, channels::Platform::Whatsapp) => super::choices::WHATSAPP_TEXT_CHARS,
        (_, platform) => messages::max_text_chars(platform),
    };
    let (sent, with) = match signature {
        Some(sig) => (messages::signed(text, sig), ", with the signature"),
        None => (text.to_string(), ""),
    };
    if sent.chars().count() > max {
        return Err(AppError::invalid(
            "text_too_long",
            format!("text must be at most {max} characters on this platform{with}"),
        ));
    }
    Ok(())
}

/// Whether a reply written now could go at `at`, as far as is known now:
/// the customer, the channel, and the reply window then.
fn sendable_at(
    tc: &mut TenantConn<'_>,
    names: &mut Names,
    channel: &channels::ChannelRow,
    conv: &super::views::ConversationRow,
    at: DateTime<Utc>,
) -> AppResult<()> {
    super::contacts::refuse_if_blocked(&names.contact_of(tc, conv)?)?;
    if channel.status != "connected" {
        return Err(AppError::conflict(
            "channel_not_connected",
            format!("the channel is {}; reconnect it first", channel.status),
        ));
    }
    let window = ReplyWindow::of(channel, conv.last_inbound_at, at);
    if !window.can_reply {
        let message = match window.ends_at {
            Some(end) if end > Utc::now() => format!(
                "the reply window ends at {}, before send_at; schedule it earlier (or send a template after)",
                end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            _ => "the reply window has closed; no text can go until the customer writes again".to_string(),
        };
        return Err(AppError::invalid("outside_window", message));
    }
    Ok(())
}

fn check_client_id(cid: Option<&str>) -> AppResult<()> {
    match cid {
        Some(c) if c.is_empty() || c.chars().count() > 200 => {
            Err(AppError::invalid("invalid_client_id", "client_id must be 1 to 200 characters"))
        }
        _ => Ok(()),
    }
}

/// `POST /api/conversations/{id}/scheduled-messages` ([module docs](self)):
/// the message, whether this call wrote it (a retry's `client_id` gets the
/// first), and whether it is due now (the sender is woken).
pub fn create(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: ConversationId,
    new: NewScheduled,
    now: DateTime<Utc>,
) -> AppResult<(ScheduledView, bool, bool)> {
    check_client_id(new.client_id.as_deref())?;
    let conv = messages::visible_conversation(tc, user, role, id)?;
    if let Some(row) = by_client_id(tc, conv.id, new.client_id.as_deref())? {
        return retried(row, user, &new).map(|v| (v, false, false));
    }
    let mut names = Names::default();
    let channel = names.channel(tc, conv.channel_id)?;
    let choices = match (&new.choices, &new.choices_button) {
        (Some(options), button) => {
            // Checked as a reply's; kept as the platform will show them.
            let shown = super::choices::attachment(channel.platform(), options, button.as_deref())?;
            Some(serde_json::from_value::<Choices>(shown).map_err(AppError::internal)?)
        }
        (None, Some(_)) => {
            return Err(AppError::invalid("invalid_choices", "choices_button goes with choices"));
        }
        (None, None) => None,
    };
    let signature = messages::signature_for(tc, user, &channel, new.sign)?;
    checked_text(&new.text, &channel, choices.is_some(), signature.as_deref())?;
    let send_at = due_at(new.send_at, now)?;
    sendable_at(tc, &mut names, &channel, &conv, send_at)?;
    // The conversation's row, locked: two writers count in turn.
    diesel::sql_query("SELECT 1 FROM conversations WHERE id = $1 FOR NO KEY UPDATE")
        .bind::<diesel::sql_types::BigInt, _>(conv.id)
        .execute(tc.pg())?;
    let waiting: i64 = s::table
        .filter(s::conversation_id.eq(conv.id))
        .filter(s::status.eq("scheduled"))
        .count()
        .get_result(tc.pg())?;
    if new.client_id.is_none() {
        if let Some(row) = waiting_same(tc, conv.id, user, &new, send_at)? {
            return Ok((row.into(), false, false));
        }
    }
    if waiting >= MOST_WAITING {
        return Err(AppError::conflict(
            "too_many_scheduled",
            format!("{MOST_WAITING} messages wait in this conversation already; send or cancel one first"),
        ));
    }
    let inserted: Option<ScheduledRow> = diesel::insert_into(s::table)
        .values((
            s::conversation_id.eq(conv.id),
            s::channel_id.eq(conv.channel_id),
            s::created_by.eq(user.0),
            s::text.eq(&new.text),
            s::choices.eq(choices.as_ref().map(|c| json!(c))),
            s::send_at.eq(send_at),
            s::cancel_if_replied.eq(new.cancel_if_replied),
            s::client_id.eq(new.client_id.as_deref()),
            s::sign.eq(new.sign),
        ))
        .on_conflict((s::conversation_id, s::client_id))
        .do_nothing()
        .returning(ScheduledRow::as_returning())
        .get_result(tc.pg())
        .optional()?;
    let Some(row) = inserted else {
        // A concurrent retry with the same client_id stored first.
        let row = by_client_id(tc, conv.id, new.client_id.as_deref())?.ok_or_else(|| {
            AppError::internal(anyhow::anyhow!("a scheduled message's client_id conflict without a row"))
        })?;
        return retried(row, user, &new).map(|v| (v, false, false));
    };
    let job = queue_job(tc, &row, send_at)?;
    diesel::update(s::table.find(row.id)).set(s::job_id.eq(job)).execute(tc.pg())?;
    crate::audit::record(
        tc,
        Some(user),
        "scheduled_message.created",
        "conversation",
        Some(conv.id.to_string()),
        json!({"scheduled_message_id": row.id.to_string(), "send_at": send_at}),
    )?;
    refresh_next(tc, log, conv.id)?;
    let view = announce(tc, log, row.id)?;
    Ok((view, true, send_at <= now))
}

/// A `client_id` already used in the conversation: the same author, text,
/// choices and `sign` are a retry (as for replies, `messages`); anything else a
/// 409.
fn retried(row: ScheduledRow, user: UserId, new: &NewScheduled) -> AppResult<ScheduledView> {
    let options = row.choices().map(|c| c.options);
    let asked = new.choices.as_ref().map(|o| o.iter().map(|t| t.trim().to_string()).collect::<Vec<_>>());
    if row.created_by == user.0 && row.text == new.text && options == asked && row.sign == new.sign {
        return Ok(row.into());
    }
    Err(AppError::conflict(
        "client_id_reused",
        "this client_id was used for another scheduled message in this conversation; use a new one",
    ))
}

/// The same message, by the same author for the same time, waiting already
/// without a `client_id`: a double click or a retry without one, which
/// would reach the customer twice. Called under the conversation's lock.
fn waiting_same(
    tc: &mut TenantConn<'_>,
    conversation: i64,
    user: UserId,
    new: &NewScheduled,
    send_at: DateTime<Utc>,
) -> AppResult<Option<ScheduledRow>> {
    let rows: Vec<ScheduledRow> = s::table
        .filter(s::conversation_id.eq(conversation))
        .filter(s::status.eq("scheduled"))
        .filter(s::client_id.is_null())
        .filter(s::created_by.eq(user.0))
        .filter(s::text.eq(&new.text))
        .filter(s::send_at.eq(send_at))
        .filter(s::cancel_if_replied.eq(new.cancel_if_replied))
        .select(ScheduledRow::as_select())
        .load(tc.pg())?;
    Ok(rows.into_iter().find(|row| retried(row.clone(), user, new).is_ok()))
}

fn by_client_id(tc: &mut TenantConn<'_>, conversation: i64, cid: Option<&str>) -> AppResult<Option<ScheduledRow>> {
    let Some(cid) = cid else { return Ok(None) };
    Ok(s::table
        .filter(s::conversation_id.eq(conversation))
        .filter(s::client_id.eq(cid))
        .select(ScheduledRow::as_select())
        .first(tc.pg())
        .optional()?)
}

/// Queues the job that sends `row` at `at`.
fn queue_job(tc: &mut TenantConn<'_>, row: &ScheduledRow, at: DateTime<Utc>) -> AppResult<i64> {
    Ok(diesel::insert_into(sq::table)
        .values((
            sq::tenant_id.eq(tc.tenant().0),
            sq::kind.eq(JOB_KIND),
            sq::conversation_id.eq(row.conversation_id),
            sq::scheduled_message_id.eq(row.id),
            sq::next_attempt_at.eq(at),
        ))
        .returning(sq::id)
        .get_result(tc.pg())?)
}

/// Announces scheduled message `id` as it is now; its view.
fn announce(tc: &mut TenantConn<'_>, log: &mut EventLog, id: i64) -> AppResult<ScheduledView> {
    let row: ScheduledRow = s::table.find(id).select(ScheduledRow::as_select()).first(tc.pg())?;
    let (channel, conversation) = (row.channel_id, row.conversation_id);
    let view = ScheduledView::from(row);
    log.append(tc, "scheduled_message.updated", Some(channel), Some(conversation), &view)?;
    Ok(view)
}

/// Keeps the conversation's `next_scheduled_at` (the earliest of its
/// messages that wait), announcing the conversation when it moved.
fn refresh_next(tc: &mut TenantConn<'_>, log: &mut EventLog, conversation: i64) -> AppResult<()> {
    let moved: Option<super::views::ConversationRow> = diesel::sql_query(
        "UPDATE conversations c SET next_scheduled_at = n.at \
           FROM (SELECT min(send_at) AS at FROM scheduled_messages \
                  WHERE conversation_id = $1 AND status = 'scheduled') n \
          WHERE c.id = $1 AND c.next_scheduled_at IS DISTINCT FROM n.at RETURNING c.*",
    )
    .bind::<diesel::sql_types::BigInt, _>(conversation)
    .get_result(tc.pg())
    .optional()?;
    if let Some(conv) = moved {
        let view = Names::default().conversation(tc, &conv)?;
        log.append(tc, "conversation.updated", Some(conv.channel_id), Some(conv.id), &view)?;
    }
    Ok(())
}

/// `GET /api/conversations/{id}/scheduled-messages?status=`: newest
/// written first, `limit` after the id `before`.
pub fn list(
    tc: &mut TenantConn<'_>,
    user: UserId,
    role: Role,
    id: ConversationId,
    status: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> AppResult<Vec<ScheduledView>> {
    let conv = messages::visible_conversation(tc, user, role, id)?;
    let mut q = s::table.filter(s::conversation_id.eq(conv.id)).into_boxed();
    if let Some(status) = status {
        q = q.filter(s::status.eq(status.to_string()));
    }
    if let Some(before) = before {
        q = q.filter(s::id.lt(before));
    }
    let rows: Vec<ScheduledRow> = q.order(s::id.desc()).limit(limit).select(ScheduledRow::as_select()).load(tc.pg())?;
    Ok(rows.into_iter().map(ScheduledView::from).collect())
}

/// The scheduled message `id` (locked, to be changed: `lock`), if the
/// caller may see its conversation.
fn visible(
    tc: &mut TenantConn<'_>,
    user: UserId,
    role: Role,
    id: ScheduledMessageId,
    lock: bool,
) -> AppResult<ScheduledRow> {
    let q = s::table.find(id.0).select(ScheduledRow::as_select());
    let mut row: Option<ScheduledRow> = q.first(tc.pg()).optional()?;
    if let (true, Some(found)) = (lock, &row) {
        // Its conversation first, then the row: the order a removal (or a
        // change of the conversation) takes them in, so that a change of
        // this one and theirs take turns rather than deadlock.
        super::conversations::lock(tc, &[found.conversation_id])?;
        row = q.for_update().first(tc.pg()).optional()?;
    }
    match row {
        Some(row) if channels::can_see(tc, user, role, ChannelId(row.channel_id))? => Ok(row),
        _ => Err(AppError::not_found("scheduled message")),
    }
}

/// `GET /api/scheduled-messages/{id}`.
pub fn get(tc: &mut TenantConn<'_>, user: UserId, role: Role, id: ScheduledMessageId) -> AppResult<ScheduledView> {
    visible(tc, user, role, id, false).map(ScheduledView::from)
}

fn finished(row: &ScheduledRow) -> AppError {
    AppError::conflict("scheduled_message_finished", format!("this scheduled message is {} already", row.status))
}

/// `PATCH /api/scheduled-messages/{id}` ([module docs](self)): its
/// author changes it while it waits; the message, and whether it is due
/// now.
pub fn change(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: ScheduledMessageId,
    to: ScheduledChange,
    now: DateTime<Utc>,
) -> AppResult<(ScheduledView, bool)> {
    let row = visible(tc, user, role, id, true)?;
    if row.created_by != user.0 {
        return Err(AppError::forbidden(
            "not_your_scheduled_message",
            "only its author can change a scheduled message",
        ));
    }
    if row.status != "scheduled" {
        return Err(finished(&row));
    }
    let mut names = Names::default();
    let channel = names.channel(tc, row.channel_id)?;
    let conv = super::views::conversation_row(tc, ConversationId(row.conversation_id))?;
    let text = to.text.unwrap_or_else(|| row.text.clone());
    let sign = to.sign.unwrap_or(row.sign);
    let signature = messages::signature_for(tc, user, &channel, sign)?;
    checked_text(&text, &channel, row.choices.is_some(), signature.as_deref())?;
    let send_at = match to.send_at {
        Some(at) => due_at(at, now)?,
        None => row.send_at,
    };
    let cancel_if_replied = to.cancel_if_replied.unwrap_or(row.cancel_if_replied);
    if text == row.text && send_at == row.send_at && cancel_if_replied == row.cancel_if_replied && sign == row.sign {
        return Ok((row.into(), false));
    }
    sendable_at(tc, &mut names, &channel, &conv, send_at)?;
    let mut job = row.job_id;
    if send_at != row.send_at {
        // A new job, so the old one is a stray whatever it is doing now.
        drop_job(tc, row.job_id)?;
        job = Some(queue_job(tc, &row, send_at)?);
    }
    diesel::update(s::table.find(row.id))
        .set((
            s::text.eq(&text),
            s::send_at.eq(send_at),
            s::cancel_if_replied.eq(cancel_if_replied),
            s::sign.eq(sign),
            s::job_id.eq(job),
            s::updated_at.eq(now),
        ))
        .execute(tc.pg())?;
    crate::audit::record(
        tc,
        Some(user),
        "scheduled_message.changed",
        "conversation",
        Some(row.conversation_id.to_string()),
        json!({"scheduled_message_id": row.id.to_string(), "send_at": send_at,
            "text_changed": text != row.text}),
    )?;
    refresh_next(tc, log, row.conversation_id)?;
    Ok((announce(tc, log, row.id)?, send_at <= now))
}

/// `POST /api/scheduled-messages/{id}/cancel`: its author or an admin.
pub fn cancel(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: ScheduledMessageId,
) -> AppResult<ScheduledView> {
    let row = visible(tc, user, role, id, true)?;
    if row.created_by != user.0 && !role.at_least(Role::Admin) {
        return Err(AppError::forbidden(
            "not_your_scheduled_message",
            "only its author or an admin can cancel a scheduled message",
        ));
    }
    match row.status.as_str() {
        "scheduled" => {}
        "cancelled" => return Ok(row.into()),
        _ => return Err(finished(&row)),
    }
    drop_job(tc, row.job_id)?;
    end(tc, row.id, "cancelled", Some("cancelled"), None)?;
    crate::audit::record(
        tc,
        Some(user),
        "scheduled_message.cancelled",
        "conversation",
        Some(row.conversation_id.to_string()),
        json!({"scheduled_message_id": row.id.to_string()}),
    )?;
    refresh_next(tc, log, row.conversation_id)?;
    announce(tc, log, row.id)
}

/// The conversations in which messages `user` scheduled still wait.
pub fn waiting_in(tc: &mut TenantConn<'_>, user: UserId) -> AppResult<Vec<i64>> {
    Ok(s::table
        .filter(s::created_by.eq(user.0))
        .filter(s::status.eq("scheduled"))
        .select(s::conversation_id)
        .load(tc.pg())?)
}

/// A member removed from the tenant: what they scheduled that still waits
/// is cancelled (`author_removed`), not sent in their name later.
///
/// Only in `held`, the conversations the removal locked (those
/// [`waiting_in`] found): one scheduled by them in another meanwhile (a
/// request of theirs begun before the removal) is left to be checked when
/// due (`author_not_member`, unless they are a member again by then),
/// since writing to its conversation now, out of the removal's id order,
/// deadlocked with a bulk change holding it.
pub fn forget_member(tc: &mut TenantConn<'_>, log: &mut EventLog, user: UserId, held: &[i64]) -> AppResult<()> {
    let waiting: Vec<ScheduledRow> = s::table
        .filter(s::created_by.eq(user.0))
        .filter(s::status.eq("scheduled"))
        .filter(s::conversation_id.eq_any(held))
        .order(s::id)
        .select(ScheduledRow::as_select())
        .for_update()
        .load(tc.pg())?;
    for row in waiting {
        drop_job(tc, row.job_id)?;
        end(tc, row.id, "cancelled", Some("author_removed"), None)?;
        refresh_next(tc, log, row.conversation_id)?;
        announce(tc, log, row.id)?;
    }
    Ok(())
}

/// Ends scheduled message `id` with `status`, `reason` and the message it
/// became.
fn end(tc: &mut TenantConn<'_>, id: i64, status: &str, reason: Option<&str>, message: Option<i64>) -> AppResult<()> {
    diesel::update(s::table.find(id))
        .set((
            s::status.eq(status),
            s::reason.eq(reason),
            s::message_id.eq(message),
            s::job_id.eq(None::<i64>),
            s::finished_at.eq(diesel::dsl::now),
            s::updated_at.eq(diesel::dsl::now),
        ))
        .execute(tc.pg())?;
    Ok(())
}

/// Why a job waits.
const NOT_YET: &str = "scheduled: not due yet";

/// The sender's `scheduled_message` job `job` of scheduled message `id`
/// ([module docs](self)): one transaction.
pub async fn run_job(app: &AppState, tenant: TenantId, id: i64, job: i64) -> AppResult<Next> {
    app.tenant_with_events(TenantScope::system(tenant), move |tc, log| send_due(tc, log, id, job, Utc::now())).await
}

fn send_due(tc: &mut TenantConn<'_>, log: &mut EventLog, id: i64, job: i64, now: DateTime<Utc>) -> AppResult<Next> {
    // Its conversation before it, as a cancel or a change takes them
    // (`visible`): the other way round, a cancel holding the conversation
    // and waiting for this row deadlocked with the send, which held the
    // row and then wrote to the conversation.
    let Some(conversation) = s::table.find(id).select(s::conversation_id).first::<i64>(tc.pg()).optional()? else {
        return Ok(Next::Done);
    };
    super::conversations::lock(tc, &[conversation])?;
    let row: Option<ScheduledRow> =
        s::table.find(id).select(ScheduledRow::as_select()).for_update().first(tc.pg()).optional()?;
    let Some(row) = row.filter(|r| r.status == "scheduled" && r.job_id == Some(job)) else { return Ok(Next::Done) };
    // The clocks of the database, which made it due, and of this instance
    // may differ by a little.
    if row.send_at > now {
        return Ok(Next::Wait((row.send_at - now).to_std().unwrap_or_default(), NOT_YET));
    }
    let (status, reason, message) = match outcome(tc, log, &row)? {
        Ok(message) => ("sent", None, Some(message)),
        Err(reason) if reason == "customer_replied" => ("cancelled", Some(reason), None),
        Err(reason) => ("failed", Some(reason), None),
    };
    end(tc, row.id, status, reason.as_deref(), message)?;
    refresh_next(tc, log, row.conversation_id)?;
    announce(tc, log, row.id)?;
    Ok(Next::Done)
}

/// The reply `row` becomes, or why it does not go (a reason); a database
/// error ends the job's transaction, to be tried again.
fn outcome(tc: &mut TenantConn<'_>, log: &mut EventLog, row: &ScheduledRow) -> AppResult<Result<i64, String>> {
    if row.cancel_if_replied {
        let replied: bool = diesel::select(diesel::dsl::exists(
            m::table
                .filter(m::conversation_id.eq(row.conversation_id))
                .filter(m::direction.eq("in"))
                .filter(m::created_at.gt(row.updated_at)),
        ))
        .get_result(tc.pg())?;
        if replied {
            return Ok(Err("customer_replied".into()));
        }
    }
    let author = UserId(row.created_by);
    let Some(role) = crate::auth::members::role_of(tc, author)? else {
        return Ok(Err("author_not_member".into()));
    };
    if !channels::can_see(tc, author, role, ChannelId(row.channel_id))? {
        return Ok(Err("author_lost_access".into()));
    }
    let opts = ReplyOptions { client_id: Some(format!("scheduled-{}", row.id)), reply_to: None, sign: row.sign };
    let conv = ConversationId(row.conversation_id);
    let replied = match row.choices() {
        Some(c) => {
            messages::create_choices_reply(tc, log, author, role, conv, row.text.clone(), c.options, c.button, opts)
        }
        None => messages::create_reply(tc, log, author, role, conv, row.text.clone(), opts),
    };
    match replied {
        Ok((message, _)) => Ok(Ok(message.id.0)),
        // Refused as a reply now would be: it fails with that reason.
        Err(e) if !matches!(e.kind, ErrorKind::Internal | ErrorKind::Unavailable | ErrorKind::BadGateway) => {
            Ok(Err(e.code.into_owned()))
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_time_a_minute_past_is_now_and_earlier_is_refused() {
        let now = Utc::now();
        assert_eq!(due_at(now + chrono::Duration::hours(2), now).ok(), Some(now + chrono::Duration::hours(2)));
        assert_eq!(due_at(now - chrono::Duration::seconds(30), now).ok(), Some(now));
        let err = due_at(now - chrono::Duration::minutes(5), now).err().map(|e| e.code);
        assert_eq!(err.as_deref(), Some("invalid_send_at"));
    }
}
