//! Writing first: an agent starts a WhatsApp conversation with a number
//! that has not written (or not lately), with an approved template, as
//! WhatsApp allows a business to (a reminder, a follow-up to a call).
//!
//! Decisions:
//! - WhatsApp only (`whatsapp_only`): on Messenger and Instagram the
//!   customer writes first, and a business has no way to reach a person it
//!   has no id for.
//! - A template only (`template_required`): a number that has not written
//!   in 24 hours takes nothing else, and one that has is answered in its
//!   conversation (`POST …/messages`).
//! - The number is the customer's WhatsApp number with its country code,
//!   `+`, spaces, dots, dashes and brackets allowed (`+351 912-345 678`),
//!   7 to 15 digits (E.164) not starting with 0 (`invalid_phone_number`).
//!   Its digits are the contact's WhatsApp id, as Meta's webhooks name the
//!   customer, so their answer lands in the same conversation. When Meta
//!   answers the send with another id for them (a Brazilian mobile is
//!   often known without its ninth digit), the contact takes Meta's and
//!   keeps the number written (`contacts::known_to_whatsapp_as`), so a
//!   start to it again finds them; when Meta's id is another contact's
//!   (the customer wrote before under it), the team's messages join that
//!   customer's thread and the contact made for the number goes
//!   (`contacts::fold_into_known`). Until Meta has answered, the contact's
//!   messages go `to` the number as a phone number (`+` and digits), as
//!   Meta resolves those, and afterwards to the id Meta named.
//! - A number the channel knows goes to its conversation (one per contact
//!   and channel): a resolved one is reopened (and given to the starter if
//!   nobody has it), an open, pending or snoozed one is left as it is; a
//!   blocked contact is refused (`contact_blocked`), a marketing template
//!   to a customer who stopped them too (`marketing_stopped`; known even
//!   of a customer who never wrote, from Meta's `user_preferences`). A new one
//!   is made open and the starter's, in the channel's team if it names one
//!   (`teams`), announced (`conversation.created`) and audited
//!   (`conversation.started`).
//! - A start to a number whose contact is being erased waits for the
//!   erasure and then starts anew, with a new contact for the number (as
//!   a moment later it would), not a 404 for a contact the caller never
//!   named.
//! - An agent taken off the channel's list, or removed, as their start
//!   runs: the start waits for the change and is refused (404 `channel`,
//!   401 `membership_revoked`), with nothing written.
//! - The template is checked with Meta before anything is written: a
//!   refused one leaves no contact and no conversation behind. The
//!   contact, the conversation and the queued message are one transaction;
//!   a `client_id` makes a retry safe, as for any reply.

use chrono::Utc;
use diesel::prelude::*;
use serde::Serialize;

use super::conversations::{self, Patch};
use super::events::EventLog;
use super::messages::{self, TemplateTarget};
use super::views::{ConversationView, MessageView, Names};
use super::ConversationId;
use crate::app::AppState;
use crate::auth::Role;
use crate::channels::{self, ChannelId, ChannelRow, Platform};
use crate::db::tenant_schema::{contacts, conversations as c};
use crate::db::{TenantConn, TenantScope};
use crate::error::{AppError, AppResult, ErrorKind};
use crate::ids::UserId;

/// A customer's WhatsApp number: its digits, country code first (Meta's
/// `wa_id`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Number(String);

impl Number {
    /// The number as a person writes it ([module docs](self)).
    pub fn parse(raw: &str) -> AppResult<Number> {
        let bad = || {
            AppError::invalid(
                "invalid_phone_number",
                "phone_number must be a WhatsApp number with its country code, e.g. +14155550123",
            )
        };
        let trimmed = raw.trim();
        let rest = trimmed.strip_prefix('+').unwrap_or(trimmed);
        match super::contacts::written_number(rest) {
            Some(digits) if !rest.contains('+') && (7..=15).contains(&digits.len()) && !digits.starts_with('0') => {
                Ok(Number(digits))
            }
            _ => Err(bad()),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What `POST /api/conversations` answers: where the message went, and it.
#[derive(Serialize)]
pub struct Started {
    pub conversation: ConversationView,
    pub message: MessageView,
}

/// Where a start goes, read before Meta is asked.
enum Found {
    /// The `client_id` was used already in the number's conversation.
    Retried(ConversationId, MessageView),
    /// The channel, and whether the number's customer stopped marketing
    /// messages.
    Channel(ChannelRow, bool),
}

/// Where a start to `number` on `channel` goes, as far as the database
/// knows before Meta is asked: a retry's message, or the channel (seen by
/// the caller, WhatsApp) and the customer's marketing choice; a blocked
/// customer is refused here.
#[allow(clippy::too_many_arguments)]
fn look(
    tc: &mut TenantConn<'_>,
    user: UserId,
    role: Role,
    channel: ChannelId,
    number: &Number,
    client_id: Option<&str>,
    choice: &super::templates::Choice,
    header_file_sha: Option<&str>,
) -> AppResult<Found> {
    if !channels::can_see(tc, user, role, channel)? {
        return Err(AppError::not_found("channel"));
    }
    let row = channels::find(tc, channel)?;
    if row.platform() != Platform::Whatsapp {
        return Err(AppError::invalid(
            "whatsapp_only",
            "only WhatsApp lets a business write first; on Messenger and Instagram the customer does",
        ));
    }
    let Some(contact) = known_contact(tc, channel.0, number)? else {
        // Writing first starts a conversation.
        channels::whatsapp_number::refuse_if_restricted(&row, false)?;
        return Ok(Found::Channel(row, false));
    };
    let conversation: Option<i64> = c::table
        .filter(c::channel_id.eq(channel.0))
        .filter(c::contact_id.eq(contact))
        .select(c::id)
        .first(tc.pg())
        .optional()?;
    // Erased as this read them (their conversation or their contact gone
    // between two statements): the number is nobody's now, as for a start
    // a moment later, not a 404 for what the caller never named.
    let nobodys = |row: ChannelRow| {
        channels::whatsapp_number::refuse_if_restricted(&row, false)?;
        Ok(Found::Channel(row, false))
    };
    match conversation.map(ConversationId) {
        Some(id) => match messages::template_target(tc, user, role, id, client_id, choice, header_file_sha) {
            Ok(TemplateTarget::Retried(view)) => Ok(Found::Retried(id, view)),
            Ok(TemplateTarget::Channel(row, stopped)) => Ok(Found::Channel(row, stopped)),
            Err(e) if e.kind == ErrorKind::NotFound && !still_there(tc, id)? => nobodys(row),
            // Taken off the channel's list as this read (the conversation
            // is there, unseen): the channel is what the start named.
            Err(e) if e.kind == ErrorKind::NotFound && !channels::can_see(tc, user, role, channel)? => {
                Err(AppError::not_found("channel"))
            }
            Err(e) => Err(e),
        },
        // Known without a conversation: their marketing choice came first.
        None => {
            let found: Option<super::views::ContactRow> = contacts::table
                .find(contact)
                .select(super::views::ContactRow::as_select())
                .first(tc.pg())
                .optional()?;
            let Some(found) = found else { return nobodys(row) };
            super::contacts::refuse_if_blocked(&found)?;
            channels::whatsapp_number::refuse_if_restricted(&row, false)?;
            Ok(Found::Channel(row, super::contacts::marketing_stopped(tc, contact)?))
        }
    }
}

/// The channel's contact of `number`: whose WhatsApp id it is, else the
/// one an agent wrote first to at it (Meta knowing them by another id).
/// Two lookups, each a whole key of its index: one `OR` of both is
/// planned, for a channel the statistics think empty (just connected, or
/// filled by an import), as a walk of every contact the channel has.
pub(crate) fn known_contact(tc: &mut TenantConn<'_>, channel: i64, number: &Number) -> AppResult<Option<i64>> {
    if let Some(id) = super::contacts::find_external(tc, ChannelId(channel), number.as_str())? {
        return Ok(Some(id.0));
    }
    Ok(contacts::table
        .filter(contacts::channel_id.eq(channel))
        .filter(contacts::whatsapp_input.eq(number.as_str()))
        .select(contacts::id)
        .first(tc.pg())
        .optional()?)
}

/// The number's conversation on `channel`, made (open, `user`'s) or
/// reopened as the [module docs](self) say.
pub fn open(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    channel: &ChannelRow,
    number: &Number,
) -> AppResult<ConversationId> {
    // The starter's membership and place on the channel's list, held until
    // the start commits (`answerer_held`): a removal or a change of the
    // list under way waits for it, and one that came first is seen, so a
    // start never writes to, reopens or takes a conversation of a channel
    // its agent has just left (nor answers 404 for a conversation it
    // never named).
    match conversations::answerer_held(tc, user, channel.id, conversations::Hold::Wait)? {
        conversations::Answerer::Yes => {}
        conversations::Answerer::No => {
            return Err(AppError::unauthorized("membership_revoked", "you are no longer a member of this tenant"))
        }
        conversations::Answerer::NotOnChannel => return Err(AppError::not_found("channel")),
    }
    let mut contact = match known_contact(tc, channel.id, number)? {
        Some(id) => id,
        None => new_contact(tc, channel.id, number)?,
    };
    let (conv, created) = match super::ingest::conversation_of_contact(tc, channel.id, contact)? {
        Some(found) => found,
        // Erased as this began (found, then gone once the erasure it waited
        // for landed): the number is nobody's now, and starts anew, as it
        // would a moment later.
        None => {
            contact = new_contact(tc, channel.id, number)?;
            super::ingest::conversation_for(tc, channel.id, contact)?
        }
    };
    let id = ConversationId(conv.id);
    if created {
        // The channel's team takes it, as one a customer opens (`teams`).
        if let Some(team) = channel.settings().team_id {
            super::teams::hand_to_channels_team(tc, conv.id, team)?;
        }
        // Theirs: their place was held above.
        let conv = diesel::update(c::table.find(conv.id))
            .set((c::assignee_id.eq(user.0), c::updated_at.eq(diesel::dsl::now)))
            .returning(super::views::ConversationRow::as_returning())
            .get_result(tc.pg())?;
        crate::audit::record(
            tc,
            Some(user),
            "conversation.started",
            "conversation",
            Some(id.to_string()),
            serde_json::json!({"channel_id": channel.id.to_string(), "contact_id": contact.to_string()}),
        )?;
        let view = Names::default().conversation(tc, &conv)?;
        log.append(tc, "conversation.created", Some(channel.id), Some(conv.id), &view)?;
    } else if conv.status == "resolved" {
        let reopen = Patch {
            status: Some("open".into()),
            assignee_id: conv.assignee_id.is_none().then_some(Some(user)),
            ..Patch::default()
        };
        conversations::patch(tc, log, user, role, id, reopen, &[])?;
    }
    Ok(id)
}

/// Whether conversation `id` is there still.
fn still_there(tc: &mut TenantConn<'_>, id: ConversationId) -> AppResult<bool> {
    Ok(diesel::select(diesel::dsl::exists(c::table.find(id.0))).get_result(tc.pg())?)
}

/// A contact for a number nobody of the channel has: sent to as a phone
/// number until Meta answers with the customer's id (`whatsapp_input` set
/// to the id; `contacts::known_to_whatsapp_as`). One a customer's message
/// stored meanwhile has that id from Meta already.
pub(crate) fn new_contact(tc: &mut TenantConn<'_>, channel: i64, number: &Number) -> AppResult<i64> {
    let inserted: Option<i64> = diesel::insert_into(contacts::table)
        .values((
            contacts::channel_id.eq(channel),
            contacts::external_id.eq(number.as_str()),
            contacts::whatsapp_input.eq(number.as_str()),
        ))
        .on_conflict((contacts::channel_id, contacts::external_id))
        .do_nothing()
        .returning(contacts::id)
        .get_result(tc.pg())
        .optional()?;
    match inserted {
        Some(id) => Ok(id),
        None => Ok(super::ingest::upsert_contact(tc, channel, number.as_str(), None, Utc::now())?.id),
    }
}

/// `POST /api/conversations`: `choice` sent to `number` on `channel`
/// ([module docs](self)); whether the message was queued now (not a retry).
#[allow(clippy::too_many_arguments)]
pub async fn start(
    app: &AppState,
    scope: TenantScope,
    user: UserId,
    role: Role,
    channel: ChannelId,
    number: Number,
    choice: super::templates::Choice,
    opts: messages::ReplyOptions,
    header_file: Option<super::uploads::Upload>,
) -> AppResult<(Started, bool)> {
    if opts.reply_to.is_some() {
        return Err(AppError::invalid("invalid_reply_to", "a conversation's first message quotes nothing"));
    }
    let (cid, asked, wanted) = (opts.client_id.clone(), choice.clone(), number.clone());
    let sha = header_file.as_ref().map(|f| f.sha256.clone());
    let found = app
        .db
        .tenant(scope, move |tc| look(tc, user, role, channel, &wanted, cid.as_deref(), &asked, sha.as_deref()))
        .await?;
    let (row, marketing_stopped) = match found {
        Found::Retried(id, message) => {
            let conversation = app.db.tenant(scope, move |tc| conversations::get(tc, user, role, id)).await?;
            return Ok((Started { conversation, message }, false));
        }
        Found::Channel(row, stopped) => (row, stopped),
    };
    let prepared =
        super::templates::checked(app, scope.tenant, row.clone(), &choice, header_file.as_ref(), marketing_stopped)
            .await?;
    app.tenant_with_events(scope, move |tc, log| {
        let id = open(tc, log, user, role, &row, &number)?;
        let (message, queued) = messages::create_template_reply(tc, log, user, role, id, prepared, header_file, opts)?;
        let conversation = conversations::get(tc, user, role, id)?;
        Ok((Started { conversation, message }, queued))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_as_people_write_them() {
        for (raw, digits) in [
            ("+14155550123", "14155550123"),
            ("14155550123", "14155550123"),
            (" +351 912-345 678 ", "351912345678"),
            ("+44 (20) 7946.0958", "442079460958"),
            ("+6831234", "6831234"),
        ] {
            assert_eq!(Number::parse(raw).map(|n| n.0).ok().as_deref(), Some(digits), "{raw}");
        }
        for raw in [
            "",
            "+",
            "123456",
            "1234567890123456",
            "0044 20 7946 0958",
            "+1 415 555 0123 ext 4",
            "++14155550123",
            "１４１５５５５０１２３",
            "+1\u{200b}4155550123",
            "1415555012३",
        ] {
            assert!(Number::parse(raw).is_err(), "{raw:?}");
        }
    }
}
