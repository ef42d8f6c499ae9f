//! A conversation as plain text, for a person outside the inbox: a
//! colleague by e-mail, a customer who asks for what they wrote, a
//! dispute. `GET /api/conversations/{id}/transcript`.
//!
//! Decisions:
//! - Anyone who may see the conversation may export it; each export is
//!   audited (`conversation.exported`), since it carries a customer's
//!   words out of the tool.
//! - The team's notes are left out unless asked for (`notes=true`): a
//!   transcript is often handed to the customer.
//! - Times are in `tz` (an IANA zone, UTC by default), to the minute, one
//!   line per message; a message of several lines continues indented.
//!   Attachments show as `[image]`, `[file: name.pdf]`; an unsent message
//!   as `(unsent)`, a failed reply as `(not delivered)`, an edited one as
//!   `(edited)`.
//! - At most [`MOST_MESSAGES`] messages, the oldest first; past that, a
//!   last line says how many more there are.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use diesel::prelude::*;
use serde_json::Value;

use super::messages::visible_conversation;
use super::views::{MessageRow, Names};
use super::ConversationId;
use crate::audit;
use crate::auth::Role;
use crate::channels::Platform;
use crate::db::tenant_schema::messages as m;
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

/// The most messages a transcript holds.
pub const MOST_MESSAGES: i64 = 100_000;
/// Messages read per query.
const PAGE: i64 = 1_000;

/// How a transcript is written.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub tz: Tz,
    pub notes: bool,
}

impl Options {
    /// From the query's `tz` and `notes` (each optional).
    pub fn parse(tz: Option<&str>, notes: Option<&str>) -> AppResult<Options> {
        let tz = match tz.map(str::trim).filter(|t| !t.is_empty()) {
            None => Tz::UTC,
            Some(name) => name
                .parse::<Tz>()
                .map_err(|_| AppError::invalid("invalid_timezone", "tz is an IANA time zone, like Europe/Lisbon"))?,
        };
        let notes = match notes {
            None | Some("false") => false,
            Some("true") => true,
            Some(_) => return Err(AppError::invalid("invalid_notes", "notes is true or false")),
        };
        Ok(Options { tz, notes })
    }
}

/// A transcript: its file name and text.
pub struct Transcript {
    pub filename: String,
    pub text: String,
}

/// Conversation `id` as text, for `user`, who may see it.
pub fn render(
    tc: &mut TenantConn<'_>,
    user: UserId,
    role: Role,
    id: ConversationId,
    opts: Options,
) -> AppResult<Transcript> {
    let conv = visible_conversation(tc, user, role, id)?;
    let mut names = Names::default();
    let channel = names.channel(tc, conv.channel_id)?;
    let contact = names.contact(tc, conv.contact_id)?;
    let customer = contact.name.clone().unwrap_or_else(|| format!("customer {}", contact.external_id));
    let platform = match channel.platform() {
        Platform::Facebook => "Messenger",
        Platform::Instagram => "Instagram",
        Platform::Whatsapp => "WhatsApp",
    };
    let when = |at: DateTime<Utc>| at.with_timezone(&opts.tz).format("%Y-%m-%d %H:%M").to_string();
    let exporter = names.user(tc, user.0)?;
    let mut text = format!(
        "Conversation {} with {customer} ({platform}, {})\nExported {} ({}) by {exporter}{}\n\n",
        conv.id,
        channel.name,
        when(Utc::now()),
        opts.tz.name(),
        if opts.notes { ", with the team's notes" } else { "" },
    );
    let mut after: Option<(DateTime<Utc>, i64)> = None;
    let mut written = 0;
    while written < MOST_MESSAGES {
        let mut q = m::table.filter(m::conversation_id.eq(conv.id)).select(MessageRow::as_select()).into_boxed();
        if !opts.notes {
            q = q.filter(m::private.eq(false));
        }
        if let Some((at, id)) = after {
            q = q.filter(m::sort_at.gt(at).or(m::sort_at.eq(at).and(m::id.gt(id))));
        }
        let rows: Vec<MessageRow> =
            q.order((m::sort_at, m::id)).limit(PAGE.min(MOST_MESSAGES - written)).load(tc.pg())?;
        for row in &rows {
            let who = match row.sender_kind.as_str() {
                "contact" => customer.clone(),
                "agent" => match row.sender_user_id {
                    Some(u) => names.user(tc, u)?,
                    None => "an agent".to_string(),
                },
                // The business from elsewhere (an echo), or an automatic message.
                _ if row.client_id.is_some() => format!("{} (automatic)", channel.name),
                _ => channel.name.clone(),
            };
            let who = if row.private { format!("Note by {who}") } else { who };
            text.push_str(&format!("[{}] {who}: {}\n", when(row.sort_at), body(row)));
        }
        written += rows.len() as i64;
        match rows.last() {
            Some(last) if rows.len() as i64 == PAGE => after = Some((last.sort_at, last.id)),
            _ => break,
        }
    }
    if written == MOST_MESSAGES {
        if let Some((at, id)) = after {
            let mut q = m::table
                .filter(m::conversation_id.eq(conv.id))
                .filter(m::sort_at.gt(at).or(m::sort_at.eq(at).and(m::id.gt(id))))
                .into_boxed();
            if !opts.notes {
                q = q.filter(m::private.eq(false));
            }
            let more: i64 = q.count().get_result(tc.pg())?;
            if more > 0 {
                text.push_str(&format!("… and {more} later messages, not included\n"));
            }
        }
    }
    audit::record(
        tc,
        Some(user),
        "conversation.exported",
        "conversation",
        Some(conv.id.to_string()),
        serde_json::json!({"notes": opts.notes, "messages": written}),
    )?;
    Ok(Transcript { filename: format!("conversation-{}.txt", conv.id), text })
}

/// A message's line after its sender: text (further lines indented), its
/// attachments, and what became of it.
fn body(row: &MessageRow) -> String {
    let mut parts: Vec<String> = Vec::new();
    if row.deleted_at.is_some() && !row.private {
        return "(unsent)".to_string();
    }
    if let Some(t) = row.text.as_deref().filter(|t| !t.trim().is_empty()) {
        parts.push(t.trim_end().replace("\r\n", "\n").replace('\n', "\n    "));
    }
    for a in row.attachments.as_array().into_iter().flatten() {
        parts.push(attachment(a));
    }
    if row.deleted_at.is_some() {
        parts.push("(deleted)".into());
    } else if row.status == "failed" {
        parts.push("(not delivered)".into());
    }
    if row.edited_at.is_some() {
        parts.push("(edited)".into());
    }
    if parts.is_empty() {
        parts.push("(empty)".into());
    }
    parts.join(" ")
}

fn attachment(a: &Value) -> String {
    let kind = a.get("type").and_then(Value::as_str).unwrap_or("attachment");
    match a.get("filename").and_then(Value::as_str) {
        Some(name) => format!("[{kind}: {name}]"),
        None => format!("[{kind}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(text: Option<&str>, attachments: Value) -> MessageRow {
        MessageRow { text: text.map(str::to_string), attachments, ..MessageRow::sample(Utc::now()) }
    }

    #[test]
    fn a_message_reads_as_a_line() {
        assert_eq!(body(&row(Some("Olá\nsegunda linha\n"), Value::Null)), "Olá\n    segunda linha");
        let files = serde_json::json!([{"type": "image"}, {"type": "file", "filename": "fatura.pdf"}]);
        assert_eq!(body(&row(Some("aqui"), files)), "aqui [image] [file: fatura.pdf]");
        let mut unsent = row(Some("oops"), Value::Null);
        unsent.deleted_at = Some(Utc::now());
        assert_eq!(body(&unsent), "(unsent)");
        let mut failed = row(Some("Bom dia"), Value::Null);
        (failed.status, failed.edited_at) = ("failed".into(), Some(Utc::now()));
        assert_eq!(body(&failed), "Bom dia (not delivered) (edited)");
        assert_eq!(body(&row(Some("  "), Value::Null)), "(empty)");
    }

    #[test]
    fn options_are_checked() {
        assert!(
            Options::parse(Some("Europe/Lisbon"), Some("true")).is_ok_and(|o| o.notes && o.tz == Tz::Europe__Lisbon)
        );
        assert!(Options::parse(None, None).is_ok_and(|o| !o.notes && o.tz == Tz::UTC));
        assert_eq!(Options::parse(Some("Mars/Olympus"), None).err().map(|e| e.code), Some("invalid_timezone".into()));
        assert_eq!(Options::parse(None, Some("yes")).err().map(|e| e.code), Some("invalid_notes".into()));
    }
}
