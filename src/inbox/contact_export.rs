//! `GET /api/contacts.csv`: the contacts as a spreadsheet, for a CRM or a
//! mailing tool (an extension).
//!
//! Decisions:
//! - Admins only, and audited (`contacts.exported`, with the filters and
//!   the count): it is the customers' personal data in bulk.
//! - The list's filters (`channel_id`, `q`, `blocked`, `attribute`);
//!   oldest first.
//! - One row per contact: `id, channel_id, external_id, name, email,
//!   phone, notes, blocked, blocked_at, marketing_stopped_at, created_at,
//!   conversation_id, linked` (the ids of the contacts linked to it as
//!   the same customer, `contact_links`, separated by spaces), then one
//!   column per contact attribute, named
//!   `attributes.<key>`, in the definitions' order (a value as written:
//!   numbers as JSON writes them, `true`/`false`, dates `YYYY-MM-DD`; empty
//!   when the contact has none).
//! - RFC 4180 with CRLF, and no cell a spreadsheet would run as a formula
//!   (`reports::csv_row`).
//! - At most [`MOST_EXPORTED`] contacts: more is 422 `too_many_contacts`,
//!   asking to narrow it, rather than an answer held in memory without
//!   bound.

use serde_json::Value;

use super::attributes;
use super::contacts::{self, ContactFilter};
use super::reports::csv_row;
use crate::auth::Role;
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

pub const MOST_EXPORTED: usize = 100_000;
/// Contacts read per statement.
const BATCH: i64 = 1_000;

const COLUMNS: [&str; 13] = [
    "id",
    "channel_id",
    "external_id",
    "name",
    "email",
    "phone",
    "notes",
    "blocked",
    "blocked_at",
    "marketing_stopped_at",
    "created_at",
    "conversation_id",
    "linked",
];

/// The CSV of the contacts `filter` lists for admin `user`, and how many.
pub fn export(tc: &mut TenantConn<'_>, user: UserId, filter: &ContactFilter<'_>) -> AppResult<(String, usize)> {
    export_at_most(tc, user, filter, MOST_EXPORTED)
}

/// [`export`] of at most `most` contacts (the tests' small cap).
pub fn export_at_most(
    tc: &mut TenantConn<'_>,
    user: UserId,
    filter: &ContactFilter<'_>,
    most: usize,
) -> AppResult<(String, usize)> {
    let keys: Vec<String> = attributes::list(tc)?.into_iter().map(|d| d.key).collect();
    let mut header: Vec<String> = COLUMNS.iter().map(|c| c.to_string()).collect();
    header.extend(keys.iter().map(|k| format!("attributes.{k}")));
    let mut out = csv_row(&header.iter().map(String::as_str).collect::<Vec<_>>());
    let (mut after, mut count) = (None, 0);
    loop {
        let page = contacts::search(tc, user, Role::Admin, filter, after, BATCH)?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.0);
        count += page.len();
        if count > most {
            return Err(AppError::invalid(
                "too_many_contacts",
                format!("an export holds at most {most} contacts: narrow it by channel_id, q, blocked or attribute"),
            ));
        }
        let ids: Vec<i64> = page.iter().map(|c| c.id.0).collect();
        let linked = super::contact_links::linked_ids(tc, &ids)?;
        for c in &page {
            let time = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
            let mut row = vec![
                c.id.to_string(),
                c.channel_id.to_string(),
                c.external_id.clone(),
                c.name.clone().unwrap_or_default(),
                c.details.email.clone().unwrap_or_default(),
                c.details.phone.clone().unwrap_or_default(),
                c.details.notes.clone().unwrap_or_default(),
                c.blocked.to_string(),
                time(c.blocked_at),
                time(c.details.marketing_stopped_at),
                c.created_at.to_rfc3339(),
                c.conversation_id.map(|id| id.to_string()).unwrap_or_default(),
                linked.get(&c.id.0).cloned().unwrap_or_default(),
            ];
            row.extend(keys.iter().map(|k| match c.details.attributes.get(k) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(other) => other.to_string(),
            }));
            out.push_str(&csv_row(&row.iter().map(String::as_str).collect::<Vec<_>>()));
        }
        if page.len() < BATCH as usize {
            break;
        }
    }
    crate::audit::record(
        tc,
        Some(user),
        "contacts.exported",
        "contact",
        None,
        serde_json::json!({"count": count, "channel_id": filter.channel.map(|c| c.0.to_string()),
            "q": filter.q, "blocked": filter.blocked,
            "attribute": filter.attribute.map(|a| a.key().to_string())}),
    )?;
    Ok((out, count))
}
