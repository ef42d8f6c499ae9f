//! Contacts: search, and the profile (name, picture) looked up at Meta in
//! the background. A failing lookup never blocks a message: the contact just
//! keeps its id (WhatsApp contacts get their name from the webhook itself).
//!
//! A profile is looked up again when its contact writes more than
//! [`PROFILE_FRESH`] after the last lookup: Meta's picture URLs expire, and
//! customers rename themselves. A quiet contact's profile is looked up
//! again when someone of the team looks at them (their conversation listed
//! or opened, or found in `GET /api/contacts`) more than [`PROFILE_STALE`]
//! after the last lookup, so an old conversation opened today shows a
//! picture that loads; at most once every ten minutes per contact and
//! instance while that lookup fails ([`stale_profiles`]). A viewer's look
//! counts too: the lookup is the server's upkeep, not the viewer's write.
//! A contact whose profile was never found is only looked up when they
//! write (their first lookup may still be under way).
//!
//! The team may name a contact ([`update`]): Meta's names then wait until
//! the team takes its name back. It may also keep what it knows of the
//! customer beyond Meta's profile: an e-mail address, a phone number and a
//! note ([`ContactDetails`]). Decisions: each is optional and cleared with
//! `null` or `""`; an address is checked for its shape only (one `@`, a
//! domain with a dot, no spaces), a number for the characters people
//! write one with (digits, spaces, `+ - ( ) .`, 3 to 15 digits), both kept
//! as typed; a note holds at most [`MOST_NOTES_CHARS`] characters, new
//! lines allowed. Search (contacts' and conversations' `?q=`) finds a saved
//! address or number too, folded as names are ([`details_hold`]). A
//! change is audited (`contact.updated`, naming the fields; a note's text
//! stays out of the log) and announced as `contact.updated` (the contact,
//! to the agents of its channel); a name still announces the contact's
//! conversations, whose summaries show it.
//!
//! The team may block a contact (spam, abuse: `{"blocked": true}`; any
//! member who answers and may see the channel, audited as
//! `contact.blocked` and `contact.unblocked`). Decisions, after what
//! Chatwoot's users asked of theirs:
//! - Their conversation is resolved at once (audited as a change of
//!   status `by: contact_blocked`, no survey sent), and its summary shows
//!   `contact.blocked`, so the team sees why it stays resolved.
//! - Their messages are still stored and announced (`message.created`),
//!   so nothing is lost if the block was a mistake, but quietly: no
//!   reopening, unread count, place in the list (not the last message or
//!   activity, as for notes), notification, greeting, away reply,
//!   assignment, survey answer, profile lookup or media copy (a copy is
//!   fetched from Meta when someone opens it, while Meta's URL lasts).
//!   The reply window's clock still moves, as Meta's does. A webhook
//!   batch that read the contact just before a block committed sees it
//!   before it would reopen the conversation (`ingest`).
//! - Nothing is sent to them: a reply, file, template, reaction or retry
//!   is 409 `contact_blocked` (notes stay free); one queued before the
//!   block fails with that code; a "seen" or typing is not shown them.
//! - Meta is not told (a Page or WhatsApp block at Meta would also stop
//!   the webhooks, and the history with them); unblocking changes nothing
//!   else, and the next message reopens the conversation as anyone's.
//! - `GET /api/contacts?blocked=true` lists them (`false`: the others).
//!
//! An admin may erase a contact, for a customer's right to erasure
//! ([`erase`]).

use chrono::Utc;
use diesel::prelude::*;
use serde::Serialize;

use super::events::EventLog;
use super::views::{ContactRow, ConversationRow};
use super::ContactId;
use crate::auth::Role;
use crate::channels::{ChannelId, Platform};
use crate::db::locks::Taken;
use crate::db::tenant_schema::{channel_members, contacts, conversations};
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

#[derive(Debug, Serialize)]
pub struct ContactListItem {
    pub id: ContactId,
    pub channel_id: ChannelId,
    pub external_id: String,
    pub name: Option<String>,
    pub profile_pic_url: Option<String>,
    pub created_at: chrono::DateTime<Utc>,
    #[serde(flatten)]
    pub details: ContactDetails,
    /// Blocked by the team ([module docs](self)), and since when.
    pub blocked: bool,
    pub blocked_at: Option<chrono::DateTime<Utc>>,
    /// The contact's conversation (one per contact, in its channel), for a
    /// contact page to open.
    pub conversation_id: Option<super::ConversationId>,
}

impl ContactListItem {
    fn new(row: ContactRow, details: ContactDetails, conversation: Option<i64>) -> ContactListItem {
        ContactListItem {
            id: ContactId(row.id),
            channel_id: ChannelId(row.channel_id),
            external_id: row.external_id,
            name: row.name,
            profile_pic_url: row.profile_pic_url,
            created_at: row.created_at,
            details,
            blocked: row.blocked_at.is_some(),
            blocked_at: row.blocked_at,
            conversation_id: conversation.map(super::ConversationId),
        }
    }

    /// The items of `rows`, each with its conversation (one query, which
    /// the (channel, contact) key's unique index answers).
    fn of(tc: &mut TenantConn<'_>, rows: Vec<(ContactRow, ContactDetails)>) -> AppResult<Vec<ContactListItem>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let (channels, ids): (Vec<i64>, Vec<i64>) = rows.iter().map(|(r, _)| (r.channel_id, r.id)).unzip();
        let conversation_of: std::collections::HashMap<i64, i64> = conversations::table
            .filter(conversations::channel_id.eq_any(&channels))
            .filter(conversations::contact_id.eq_any(&ids))
            .select((conversations::contact_id, conversations::id))
            .load::<(i64, i64)>(tc.pg())?
            .into_iter()
            .collect();
        Ok(rows
            .into_iter()
            .map(|(row, details)| {
                let conversation = conversation_of.get(&row.id).copied();
                ContactListItem::new(row, details, conversation)
            })
            .collect())
    }

    fn one(tc: &mut TenantConn<'_>, row: ContactRow, details: ContactDetails) -> AppResult<ContactListItem> {
        let conversation: Option<i64> = conversations::table
            .filter(conversations::channel_id.eq(row.channel_id))
            .filter(conversations::contact_id.eq(row.id))
            .select(conversations::id)
            .first(tc.pg())
            .optional()?;
        Ok(ContactListItem::new(row, details, conversation))
    }
}

/// Announces contacts `ids` as they are now (`contact.updated`, each to
/// its channel's agents): something shown of them changed elsewhere (their
/// links, `contact_links`). One gone meanwhile is passed over.
pub fn announce(tc: &mut TenantConn<'_>, log: &mut EventLog, ids: &[i64]) -> AppResult<()> {
    let rows: Vec<(ContactRow, ContactDetails)> = contacts::table
        .filter(contacts::id.eq_any(ids))
        .order(contacts::id)
        .select((ContactRow::as_select(), ContactDetails::as_select()))
        .load(tc.pg())?;
    for item in ContactListItem::of(tc, rows)? {
        log.append(tc, "contact.updated", Some(item.channel_id.0), None, &item)?;
    }
    Ok(())
}

/// What the team keeps about a customer beyond Meta's profile. Apart from
/// [`ContactRow`], which the webhook path reads and writes: none of it is
/// Meta's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Queryable, Selectable)]
#[diesel(table_name = contacts)]
pub struct ContactDetails {
    pub email: Option<String>,
    pub phone: Option<String>,
    pub notes: Option<String>,
    /// When the WhatsApp customer stopped marketing messages (Meta's
    /// `user_preferences`; [`marketing_choice`]); `None` while they get them.
    pub marketing_stopped_at: Option<chrono::DateTime<Utc>>,
    /// The team's attributes of the customer, by key (`attributes`).
    pub attributes: serde_json::Value,
}

/// What the team saved of contact `id`.
pub fn details_of(tc: &mut TenantConn<'_>, id: i64) -> AppResult<ContactDetails> {
    Ok(contacts::table.find(id).select(ContactDetails::as_select()).first(tc.pg())?)
}

diesel::define_sql_function! {
    /// `coalesce` of a nullable text with a text.
    #[sql_name = "coalesce"]
    fn coalesce_text(value: diesel::sql_types::Nullable<diesel::sql_types::Text>, otherwise: diesel::sql_types::Text) -> diesel::sql_types::Text;
}

/// Whether a contact's saved address or number holds `text` (a `&str`),
/// folded as names are: the partial index's expression and predicate,
/// written with the DSL so that diesel keeps the statement (its `''` and
/// `' '` are parameters, constants again in the custom plan a search asks
/// for, where the index matches). A macro, not a function: the expression's
/// type is long, and a boxed one could not sit in a subquery.
macro_rules! details_hold {
    ($text:expr) => {{
        use $crate::db::tenant_schema::contacts as dc;
        use $crate::inbox::contacts::coalesce_text;
        dc::email.is_not_null().or(dc::phone.is_not_null()).and(
            $crate::inbox::sb_fold(coalesce_text(dc::email, "").concat(" ").concat(coalesce_text(dc::phone, "")))
                .like($crate::inbox::sb_fold_contains(String::from($text))),
        )
    }};
}
pub(crate) use details_hold;

/// The digits of a search written as a phone number is (`+351 912-345`:
/// digits and `+ - ( ) .` and spaces, at least three digits and some of
/// the other characters); `None` for any other search, which is matched
/// as written.
pub fn phone_digits(text: &str) -> Option<String> {
    written_number(text).filter(|digits| digits.len() >= 3 && digits.len() < text.len())
}

/// The longest e-mail address (RFC 5321's path limit).
pub const MOST_EMAIL_CHARS: usize = 254;
/// The longest note about a contact.
pub const MOST_NOTES_CHARS: usize = 5000;

/// What `PATCH /api/contacts/{id}` changes: a field left out (`None`)
/// stays; `Some(None)` clears it (for `name`: gives it back to Meta).
#[derive(Debug, Clone, Default)]
pub struct ContactChanges {
    pub name: Option<Option<String>>,
    pub email: Option<Option<String>>,
    pub phone: Option<Option<String>>,
    pub notes: Option<Option<String>>,
    /// `Some(true)` blocks, `Some(false)` unblocks.
    pub blocked: Option<bool>,
    /// Attributes to set (`null` removes one); the others stay
    /// (`attributes::apply`).
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

impl ContactChanges {
    /// Checks and tidies every field before anything is written: trimmed,
    /// an empty address, number or note clears it.
    fn checked(self) -> AppResult<ContactChanges> {
        let blank_clears =
            |v: Option<Option<String>>| v.map(|inner| inner.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()));
        let name = self.name.map(|n| n.map(|t| t.trim().to_string()));
        if let Some(Some(n)) = &name {
            if n.is_empty() || n.chars().count() > MOST_NAME_CHARS || n.chars().any(char::is_control) {
                return Err(AppError::invalid(
                    "invalid_name",
                    format!("a name is 1 to {MOST_NAME_CHARS} characters, without control characters"),
                ));
            }
        }
        let email = blank_clears(self.email);
        if let Some(Some(e)) = &email {
            if !plausible_email(e) {
                return Err(AppError::invalid(
                    "invalid_email",
                    format!(
                        "an e-mail address is name@domain.tld, at most {MOST_EMAIL_CHARS} characters, without spaces"
                    ),
                ));
            }
        }
        let phone = blank_clears(self.phone);
        if let Some(Some(p)) = &phone {
            if !plausible_phone(p) {
                return Err(AppError::invalid(
                    "invalid_phone",
                    "a phone number has 3 to 15 digits, with only spaces and + - ( ) . between them",
                ));
            }
        }
        let notes = self.notes.map(|n| n.map(|t| t.trim_end().to_string()).filter(|t| !t.trim().is_empty()));
        if let Some(Some(n)) = &notes {
            if n.chars().count() > MOST_NOTES_CHARS
                || n.chars().any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
            {
                return Err(AppError::invalid(
                    "invalid_notes",
                    format!("a note is at most {MOST_NOTES_CHARS} characters, without control characters but new lines and tabs"),
                ));
            }
        }
        Ok(ContactChanges { name, email, phone, notes, blocked: self.blocked, attributes: self.attributes })
    }
}

/// An address of the shape `local@domain.tld`: what can be checked
/// without sending it mail.
fn plausible_email(e: &str) -> bool {
    let Some((local, domain)) = e.split_once('@') else { return false };
    e.chars().count() <= MOST_EMAIL_CHARS
        && !e.chars().any(|c| c.is_whitespace() || c.is_control())
        && !local.is_empty()
        && local.chars().count() <= 64
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

/// A number as people write one: `+351 912 345 678`, `(555) 123-4567`.
fn plausible_phone(p: &str) -> bool {
    // All ASCII once read as a number, so slicing a byte off is safe.
    written_number(p).is_some_and(|digits| (3..=15).contains(&digits.len()) && !p[1..].contains('+'))
}

/// The digits of `text` when it is written as people write phone numbers
/// (digits, `+ - ( ) .` and spaces, nothing else); `None` otherwise.
pub fn written_number(text: &str) -> Option<String> {
    text.chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '+' | '-' | '(' | ')' | '.'))
        .then(|| text.chars().filter(char::is_ascii_digit).collect())
}

/// What `GET /api/contacts` narrows to: a channel, a search, blocked or
/// not, an attribute.
#[derive(Debug, Clone, Copy, Default)]
pub struct ContactFilter<'a> {
    pub channel: Option<ChannelId>,
    pub q: Option<&'a str>,
    pub blocked: Option<bool>,
    pub attribute: Option<&'a super::attributes::Wanted>,
}

/// `GET /api/contacts`: the contacts the caller may see, by id, narrowed
/// by `filter`.
pub fn search(
    tc: &mut TenantConn<'_>,
    user: UserId,
    role: Role,
    filter: &ContactFilter<'_>,
    after: Option<i64>,
    limit: i64,
) -> AppResult<Vec<ContactListItem>> {
    let ContactFilter { channel, q, blocked, attribute } = *filter;
    let mut query = contacts::table
        .select((ContactRow::as_select(), ContactDetails::as_select()))
        .order(contacts::id)
        .limit(limit)
        .into_boxed();
    if !role.at_least(Role::Admin) {
        let mine =
            channel_members::table.filter(channel_members::user_id.eq(user.0)).select(channel_members::channel_id);
        query = query.filter(contacts::channel_id.eq_any(mine));
    }
    if let Some(channel) = channel {
        query = query.filter(contacts::channel_id.eq(channel.0));
    }
    let search = q.map(str::trim).filter(|t| !t.is_empty());
    if let Some(text) = search {
        // A number as people write it finds a WhatsApp customer's id by its
        // digits, and the number an agent wrote first to (`outreach`).
        let digits = phone_digits(text);
        let written = contacts::search_name
            .like(super::sb_fold_contains(text.to_string()))
            .or(contacts::external_id.ilike(super::contains_pattern(digits.as_deref().unwrap_or(text))))
            .or(details_hold!(text));
        query = match digits {
            Some(digits) => query.filter(written.or(contacts::whatsapp_input.eq(digits))),
            None => query.filter(written),
        };
    }
    match blocked {
        Some(true) => query = query.filter(contacts::blocked_at.is_not_null()),
        Some(false) => query = query.filter(contacts::blocked_at.is_null()),
        None => {}
    }
    // A rare attribute or value through the attributes' GIN index (tenant
    // migration `contact_attributes`); a common one walking the ids.
    match attribute.map(|a| (a.key(), a.contained())) {
        Some((_, Some(contained))) => query = query.filter(contacts::attributes.contains(contained)),
        Some((key, None)) => query = query.filter(contacts::attributes.has_key(key.to_string())),
        None => {}
    }
    if let Some(a) = after {
        query = query.filter(contacts::id.gt(a));
    }
    let rows: Vec<(ContactRow, ContactDetails)> = if search.is_some() {
        super::planned_for_the_pattern(tc, |pg| query.load(pg))?
    } else {
        query.load(tc.pg())?
    };
    ContactListItem::of(tc, rows)
}

/// How long a looked-up profile (or Meta's answer that there is none) is
/// taken as current: a day, so a customer active every day costs one
/// profile call a day, not one a message.
pub const PROFILE_FRESH: chrono::TimeDelta = chrono::TimeDelta::hours(24);

/// How old a quiet contact's profile may be when their conversation is
/// looked at: Meta's picture URLs last days, not weeks, and a list page
/// looked at every minute must not cost a Graph call a minute.
pub const PROFILE_STALE: chrono::TimeDelta = chrono::TimeDelta::days(3);

/// How soon a lookup queued from a look at the conversation is queued
/// again (by this instance) while it fails.
pub const STALE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

/// Lookups queued from looks, by (tenant, contact).
pub type StaleRetries = super::once_per::OncePer<(i64, i64)>;

/// An empty [`StaleRetries`].
pub fn stale_retries() -> StaleRetries {
    StaleRetries::new(STALE_RETRY_AFTER, 10_000)
}

/// Whether a Messenger or Instagram contact last looked up at `checked_at`
/// (never: `None`) is to be looked up at `now`.
pub fn profile_due(checked_at: Option<chrono::DateTime<Utc>>, now: chrono::DateTime<Utc>) -> bool {
    checked_at.is_none_or(|at| now - at > PROFILE_FRESH)
}

/// A profile to look up at Meta, with everything the lookup needs so it
/// reads nothing from the database (only a found profile is written).
#[derive(Debug, Clone)]
pub struct ProfileLookup {
    pub tenant: crate::ids::TenantId,
    pub contact_id: i64,
    pub contact_external: String,
    pub platform: Platform,
    pub channel_id: i64,
    pub channel_external: String,
    pub sealed_token: Option<String>,
}

impl ProfileLookup {
    pub fn new(tenant: crate::ids::TenantId, contact: &ContactRow, channel: &crate::channels::ChannelRow) -> Self {
        ProfileLookup {
            tenant,
            contact_id: contact.id,
            contact_external: contact.external_id.clone(),
            platform: channel.platform(),
            channel_id: channel.id,
            channel_external: channel.external_id.clone(),
            sealed_token: channel.sealed_token().map(str::to_string),
        }
    }
}

/// Lookups for the Messenger and Instagram contacts among `contact_ids`
/// whose profile was found more than [`PROFILE_STALE`] before `now` (one
/// query; none is the usual answer).
pub fn stale_profiles(
    tc: &mut TenantConn<'_>,
    contact_ids: &[i64],
    now: chrono::DateTime<Utc>,
) -> AppResult<Vec<ProfileLookup>> {
    use crate::db::tenant_schema::channels;
    if contact_ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(ContactRow, crate::channels::ChannelRow)> = contacts::table
        .inner_join(channels::table)
        .filter(contacts::id.eq_any(contact_ids))
        .filter(contacts::profile_checked_at.lt(now - PROFILE_STALE))
        .filter(channels::platform.ne(Platform::Whatsapp.as_str()))
        .select((ContactRow::as_select(), crate::channels::ChannelRow::as_select()))
        .load(tc.pg())?;
    Ok(rows.iter().map(|(contact, channel)| ProfileLookup::new(tc.tenant(), contact, channel)).collect())
}

/// Fields to ask Meta for, per platform.
pub fn profile_fields(p: Platform) -> &'static str {
    match p {
        Platform::Instagram => "name,username,profile_pic",
        _ => "first_name,last_name,profile_pic",
    }
}

/// The name and picture in Meta's answer for a profile: Instagram's
/// `name`, else Messenger's first and last names, else the Instagram
/// `username`; `profile_pic`. A value that is not text, or is blank, is
/// not there: a blank name must not replace the one the contact has.
pub fn profile_of(v: &serde_json::Value) -> (Option<String>, Option<String>) {
    let s = |k: &str| {
        v.get(k).and_then(serde_json::Value::as_str).map(str::trim).filter(|t| !t.is_empty()).map(str::to_string)
    };
    let full = match (s("first_name"), s("last_name")) {
        (Some(f), Some(l)) => Some(format!("{f} {l}")),
        (Some(f), None) => Some(f),
        (None, l) => l,
    };
    (s("name").or(full).or_else(|| s("username")), s("profile_pic"))
}

/// Stores a profile (or only that it was checked). A name or picture that
/// changed is announced as `conversation.updated` for the contact's
/// conversations: a Messenger or Instagram customer's first message comes
/// without a name, and the live inbox learns it here, not at the next reload.
pub fn store_profile(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    contact_id: i64,
    name: Option<String>,
    pic: Option<String>,
) -> AppResult<()> {
    let now = Utc::now();
    // Locked: two lookups of one contact (queued by two batches) store and
    // announce one after the other, the second finding nothing changed.
    let Some((old, named_by_team)) = contacts::table
        .find(contact_id)
        .select((ContactRow::as_select(), contacts::name_set_by))
        .for_update()
        .first::<(ContactRow, Option<i64>)>(tc.pg())
        .optional()?
    else {
        return Ok(());
    };
    // No name found keeps the one the contact has (a WhatsApp profile
    // name), and so does a name the team gave.
    let name = if named_by_team.is_some() { old.name.clone() } else { name.or_else(|| old.name.clone()) };
    let changed = name != old.name || pic != old.profile_pic_url;
    diesel::update(contacts::table.find(contact_id))
        .set((
            contacts::name.eq(&name),
            contacts::profile_pic_url.eq(&pic),
            contacts::profile_checked_at.eq(now),
            contacts::updated_at.eq(now),
        ))
        .execute(tc.pg())?;
    if changed {
        let rows: Vec<ConversationRow> = conversations::table
            .filter(conversations::contact_id.eq(contact_id))
            .select(ConversationRow::as_select())
            .load(tc.pg())?;
        super::conversations::announce(tc, log, &rows)?;
    }
    Ok(())
}

/// The longest name the team gives a contact.
pub const MOST_NAME_CHARS: usize = 200;

/// `GET /api/contacts/{id}`: one contact, for who may see its channel.
pub fn get(tc: &mut TenantConn<'_>, user: UserId, role: Role, id: ContactId) -> AppResult<ContactListItem> {
    let (row, details): (ContactRow, ContactDetails) = contacts::table
        .find(id.0)
        .select((ContactRow::as_select(), ContactDetails::as_select()))
        .first(tc.pg())
        .optional()?
        .ok_or_else(|| AppError::not_found("contact"))?;
    if !crate::channels::can_see(tc, user, role, ChannelId(row.channel_id))? {
        return Err(AppError::not_found("contact"));
    }
    ContactListItem::one(tc, row, details)
}

/// `PATCH /api/contacts/{id}`: the team names a contact (a WhatsApp
/// "Mom 2", a Messenger customer without a public name) or keeps its
/// address, number or note ([module docs](self)). A name stays, whatever
/// Meta's profile lookups and webhooks say, until the team takes it back
/// (`Some(None)`): then Meta's next name (a profile lookup, queued now for
/// Messenger and Instagram, or the next WhatsApp webhook) shows. Every
/// field is checked before anything is written; what is as it was changes
/// nothing (a retry logs nothing). Only for who may see the contact's
/// channel.
pub fn update(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: ContactId,
    changes: ContactChanges,
) -> AppResult<ContactListItem> {
    update_telling(tc, log, user, role, id, changes).map(|(item, _)| item)
}

/// [`update`], and whether anything changed.
pub fn update_telling(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: ContactId,
    changes: ContactChanges,
) -> AppResult<(ContactListItem, bool)> {
    let changes = changes.checked()?;
    if changes.blocked == Some(true) {
        // Its conversations first, then the contact: the order the webhook
        // path locks them in, so the two never wait on each other.
        lock_conversations(tc.pg(), id, Then::Change)?;
    }
    let (old, set_by, details): (ContactRow, Option<i64>, ContactDetails) = contacts::table
        .find(id.0)
        .select((ContactRow::as_select(), contacts::name_set_by, ContactDetails::as_select()))
        .for_update()
        .first(tc.pg())
        .optional()?
        .ok_or_else(|| AppError::not_found("contact"))?;
    if !crate::channels::can_see(tc, user, role, ChannelId(old.channel_id))? {
        return Err(AppError::not_found("contact"));
    }
    let mut changed = false;
    let row: ContactRow = match &changes.name {
        None => old,
        Some(Some(n)) if set_by.is_some() && old.name.as_deref() == Some(n.as_str()) => old,
        Some(Some(n)) => {
            let row = diesel::update(contacts::table.find(id.0))
                .set((
                    contacts::name.eq(n),
                    contacts::name_set_by.eq(user.0),
                    contacts::updated_at.eq(diesel::dsl::now),
                ))
                .returning(ContactRow::as_returning())
                .get_result(tc.pg())?;
            after_change(tc, log, user, &row, "contact.renamed", serde_json::json!({"name": row.name}))?;
            changed = true;
            row
        }
        Some(None) if set_by.is_none() => old,
        Some(None) => {
            // Meta's next name shows: a profile lookup is due now.
            let row = diesel::update(contacts::table.find(id.0))
                .set((
                    contacts::name_set_by.eq(None::<i64>),
                    contacts::name_at.eq(None::<chrono::DateTime<Utc>>),
                    // Stale, so that this look queues the lookup (`stale_profiles`).
                    contacts::profile_checked_at.eq(chrono::DateTime::<Utc>::UNIX_EPOCH),
                    contacts::updated_at.eq(diesel::dsl::now),
                ))
                .returning(ContactRow::as_returning())
                .get_result(tc.pg())?;
            after_change(tc, log, user, &row, "contact.name_released", serde_json::json!({"name": row.name}))?;
            changed = true;
            row
        }
    };
    let wanted = ContactDetails {
        email: changes.email.unwrap_or_else(|| details.email.clone()),
        phone: changes.phone.unwrap_or_else(|| details.phone.clone()),
        notes: changes.notes.unwrap_or_else(|| details.notes.clone()),
        marketing_stopped_at: details.marketing_stopped_at,
        attributes: super::attributes::apply(tc, &details.attributes, &changes.attributes)?,
    };
    if wanted != details {
        diesel::update(contacts::table.find(id.0))
            .set((
                contacts::email.eq(&wanted.email),
                contacts::phone.eq(&wanted.phone),
                contacts::notes.eq(&wanted.notes),
                contacts::attributes.eq(&wanted.attributes),
                contacts::updated_at.eq(diesel::dsl::now),
            ))
            .execute(tc.pg())?;
        let fields: Vec<&str> = [
            ("email", wanted.email != details.email),
            ("phone", wanted.phone != details.phone),
            ("notes", wanted.notes != details.notes),
            ("attributes", wanted.attributes != details.attributes),
        ]
        .into_iter()
        .filter_map(|(field, differs)| differs.then_some(field))
        .collect();
        // The note's text is the team's working notes, not an admin's
        // record; of the attributes, which changed, not their values.
        let mut audited = serde_json::json!({"fields": fields, "email": wanted.email, "phone": wanted.phone});
        if wanted.attributes != details.attributes {
            let changed: Vec<&String> =
                changes.attributes.keys().filter(|k| wanted.attributes.get(k) != details.attributes.get(k)).collect();
            audited["attributes"] = serde_json::json!(changed);
        }
        crate::audit::record(tc, Some(user), "contact.updated", "contact", Some(row.id.to_string()), audited)?;
        changed = true;
    }
    let row = match changes.blocked {
        Some(true) if row.blocked_at.is_none() => {
            changed = true;
            block(tc, log, user, &row)?
        }
        Some(false) if row.blocked_at.is_some() => {
            changed = true;
            unblock(tc, log, user, &row)?
        }
        _ => row,
    };
    let item = ContactListItem::one(tc, row, wanted)?;
    if changed {
        log.append(tc, "contact.updated", Some(item.channel_id.0), None, &item)?;
    }
    Ok((item, changed))
}

/// The contact `external_id` names on `channel`, if any.
pub fn find_external(tc: &mut TenantConn<'_>, channel: ChannelId, external_id: &str) -> AppResult<Option<ContactId>> {
    Ok(contacts::table
        .filter(contacts::channel_id.eq(channel.0))
        .filter(contacts::external_id.eq(external_id))
        .select(contacts::id)
        .first(tc.pg())
        .optional()?
        .map(ContactId))
}

/// A contact's channel and the name it shows.
pub struct Shown {
    pub channel_id: ChannelId,
    pub name: Option<String>,
}

/// Contact `id`'s channel and shown name, if it is there.
pub fn shown(tc: &mut TenantConn<'_>, id: ContactId) -> AppResult<Option<Shown>> {
    let found: Option<(i64, Option<String>)> =
        contacts::table.find(id.0).select((contacts::channel_id, contacts::name)).first(tc.pg()).optional()?;
    Ok(found.map(|(channel, name)| Shown { channel_id: ChannelId(channel), name }))
}

/// Blocks `contact` for `user` ([module docs](self)): its conversation is
/// resolved if it was not (audited as a change of status `by` the block,
/// without a survey) and announced, since its summary shows the block.
fn block(tc: &mut TenantConn<'_>, log: &mut EventLog, user: UserId, contact: &ContactRow) -> AppResult<ContactRow> {
    let row = diesel::update(contacts::table.find(contact.id))
        .set((
            contacts::blocked_at.eq(diesel::dsl::now),
            contacts::blocked_by.eq(user.0),
            contacts::updated_at.eq(diesel::dsl::now),
        ))
        .returning(ContactRow::as_returning())
        .get_result(tc.pg())?;
    let open: Vec<ConversationRow> = conversations::table
        .filter(conversations::contact_id.eq(contact.id))
        .filter(conversations::status.ne("resolved"))
        .select(ConversationRow::as_select())
        .for_no_key_update()
        .load(tc.pg())?;
    for conv in &open {
        diesel::update(conversations::table.find(conv.id))
            .set((
                conversations::status.eq("resolved"),
                conversations::waiting_since.eq(None::<chrono::DateTime<Utc>>),
                conversations::reply_due_at.eq(None::<chrono::DateTime<Utc>>),
                conversations::snoozed_until.eq(None::<chrono::DateTime<Utc>>),
                conversations::queued_at.eq(None::<chrono::DateTime<Utc>>),
                conversations::updated_at.eq(diesel::dsl::now),
            ))
            .execute(tc.pg())?;
        crate::audit::record(
            tc,
            Some(user),
            "conversation.status_changed",
            "conversation",
            Some(conv.id.to_string()),
            serde_json::json!({"from": conv.status, "to": "resolved", "by": "contact_blocked"}),
        )?;
    }
    after_change(tc, log, user, &row, "contact.blocked", serde_json::json!({}))?;
    Ok(row)
}

/// Lifts the block on `contact`: nothing else changes; their next message
/// reopens their conversation as anyone's does.
fn unblock(tc: &mut TenantConn<'_>, log: &mut EventLog, user: UserId, contact: &ContactRow) -> AppResult<ContactRow> {
    let row = diesel::update(contacts::table.find(contact.id))
        .set((
            contacts::blocked_at.eq(None::<chrono::DateTime<Utc>>),
            contacts::blocked_by.eq(None::<i64>),
            contacts::updated_at.eq(diesel::dsl::now),
        ))
        .returning(ContactRow::as_returning())
        .get_result(tc.pg())?;
    after_change(tc, log, user, &row, "contact.unblocked", serde_json::json!({}))?;
    Ok(row)
}

/// What [`lock_conversations`] locks for.
#[derive(Clone, Copy)]
enum Then {
    /// Changing them: `FOR NO KEY UPDATE`, as every change of a
    /// conversation locks (`conversations::lock`).
    Change,
    /// Deleting them (an erasure): `FOR UPDATE`, which a message being
    /// written to one meanwhile (its foreign key's check) waits for, rather
    /// than failing once the conversation is gone.
    Delete,
}

/// Locks contact `id`'s conversations (one per channel it writes on), in
/// id order, and answers their ids.
fn lock_conversations(conn: &mut PgConnection, id: ContactId, then: Then) -> AppResult<Vec<i64>> {
    let theirs = conversations::table.filter(conversations::contact_id.eq(id.0)).order(conversations::id);
    Ok(match then {
        Then::Change => theirs.select(conversations::id).for_no_key_update().load(conn)?,
        Then::Delete => theirs.select(conversations::id).for_update().load(conn)?,
    })
}

/// Times an erasure takes the contact's conversations again when one was
/// started with them as it took them; past that, 503 `retry`.
const ERASURE_ATTEMPTS: usize = 5;

/// Why a notice mail quoting an erased customer was not sent.
const ERASED: &str = "withdrawn: the customer was erased";

/// What [`erase`] removed.
#[derive(Debug, Serialize)]
pub struct Erased {
    pub conversations: usize,
    pub messages: i64,
    /// Webhook bodies waiting or dead-lettered that named them
    /// (`scrub`): changed, deleted.
    pub webhooks: super::scrub::InboxScrubbed,
}

/// `DELETE /api/contacts/{id}` (admins): a customer's right to erasure.
/// The contact goes with everything the tenant holds of them: their
/// conversation and its messages, files, ratings and former numbers
/// (cascades); the live log's copies (events redacted as a purged
/// channel's are, so no socket resuming and no integrator's endpoint is
/// sent them); and what the audit log says of the contact (entries kept,
/// who did what and when, their details emptied). Open inboxes are told
/// (`conversation.deleted` `{id, channel_id}`); audited as `contact.erased`
/// with counts only. What Meta sent of them and is not processed yet has
/// their events taken out (`scrub`), and a pass is queued to do the same
/// to what is processed, in the background. Notice mails still queued that
/// quote their conversations are withdrawn (`mail::withdraw_quoting_gone`). Meta's late echo of a reply to them
/// names the erased message and is dropped (`ingest`). If the customer
/// writes again, they are a new contact.
pub fn erase(tc: &mut TenantConn<'_>, log: &mut EventLog, user: UserId, id: ContactId) -> AppResult<Erased> {
    use crate::db::tenant_schema::{audit_log, events};
    // Out of its person first, as a link takes its turn before it touches
    // a contact (`contact_links`); then conversations, then the contact:
    // the webhook path's order.
    super::contact_links::before_erasure(tc, log, id)?;
    // Then the contact, which no one starts a conversation with past
    // (that checks its key). One started between the two (a broadcast
    // reaching an imported contact, an agent writing first) was deleted by
    // the cascade but not counted, nor its events emptied; so then all are
    // let go and taken again, that one among them (`db::locks::in_turn`).
    let taken = crate::db::locks::in_turn(tc.pg(), ERASURE_ATTEMPTS, |conn| -> AppResult<Taken<_>> {
        let held = lock_conversations(conn, id, Then::Delete)?;
        let contact: ContactRow = contacts::table
            .find(id.0)
            .select(ContactRow::as_select())
            .for_update()
            .first(conn)
            .optional()?
            .ok_or_else(|| AppError::not_found("contact"))?;
        let late =
            conversations::table.filter(conversations::contact_id.eq(id.0)).filter(conversations::id.ne_all(&held));
        let late: Option<i64> = late.select(conversations::id).first(conn).optional()?;
        Ok(if late.is_some() { Taken::Late } else { Taken::All((held, contact)) })
    })?;
    let (conversation_ids, contact) = taken.ok_or_else(AppError::concurrent_update)?;
    let message_count = super::messages::take_for_deletion(tc, &conversation_ids)? as i64;
    // Their numbers before a change too (`contact_former_numbers`, gone
    // with them), for the webhook inbox below.
    let mut known_as: Vec<String> = crate::db::tenant_schema::contact_former_numbers::table
        .filter(crate::db::tenant_schema::contact_former_numbers::contact_id.eq(contact.id))
        .select(crate::db::tenant_schema::contact_former_numbers::external_id)
        .load(tc.pg())?;
    known_as.push(contact.external_id.clone());
    // The number an agent wrote first to them at, if any (`outreach`).
    let typed: Option<String> = contacts::table.find(contact.id).select(contacts::whatsapp_input).first(tc.pg())?;
    let numbers: Vec<&str> = known_as.iter().map(String::as_str).chain(typed.as_deref()).collect();
    super::broadcasts::forget(tc, contact.channel_id, &numbers)?;
    diesel::delete(contacts::table.find(contact.id)).execute(tc.pg())?;
    // Notice mails still queued quote them.
    crate::mail::withdraw_quoting_gone(tc, ERASED)?;
    let contact_key = contact.id.to_string();
    let copies = events::conversation_id.eq_any(&conversation_ids).or(events::type_
        .eq("contact.updated")
        .and(events::channel_id.eq(contact.channel_id))
        .and(
            diesel::dsl::sql::<diesel::sql_types::Bool>("payload->>'id' = ")
                .bind::<diesel::sql_types::Text, _>(&contact_key),
        ));
    diesel::update(events::table.filter(copies)).set(super::events::emptied()).execute(tc.pg())?;
    diesel::update(
        audit_log::table.filter(audit_log::target_type.eq("contact")).filter(audit_log::target_id.eq(&contact_key)),
    )
    .set(audit_log::details.eq(serde_json::json!({"erased": true})))
    .execute(tc.pg())?;
    // What Meta sent of them and is not processed yet would bring them back.
    let channel = crate::channels::find(tc, crate::channels::ChannelId(contact.channel_id))?;
    let webhooks = super::scrub::scrub_inbox(tc, &channel.external_id, &known_as)?;
    // And what is processed, or being processed now, in the background.
    super::scrub::queue_pass(tc, &channel.external_id, &known_as)?;
    for conversation in &conversation_ids {
        let data = serde_json::json!({"id": conversation.to_string(), "channel_id": contact.channel_id.to_string()});
        log.append(tc, "conversation.deleted", Some(contact.channel_id), Some(*conversation), data)?;
    }
    let erased = Erased { conversations: conversation_ids.len(), messages: message_count, webhooks };
    crate::audit::record(
        tc,
        Some(user),
        "contact.erased",
        "contact",
        Some(contact_key),
        serde_json::json!({"channel_id": contact.channel_id.to_string(), "conversations": erased.conversations,
            "messages": erased.messages, "webhooks_changed": webhooks.changed, "webhooks_deleted": webhooks.deleted}),
    )?;
    Ok(erased)
}

/// Refuses anything sent to a blocked contact (409 `contact_blocked`):
/// replies, files, templates, reactions and retries alike. Notes stay free.
pub fn refuse_if_blocked(contact: &ContactRow) -> AppResult<()> {
    if contact.blocked_at.is_some() {
        return Err(AppError::conflict(
            "contact_blocked",
            "the contact is blocked; unblock them (PATCH /api/contacts/{id}) to write to them",
        ));
    }
    Ok(())
}

/// After a change its conversations' summaries show (a name, a block):
/// they are announced, and the change audited as `action`.
/// A WhatsApp customer stopped (`stopped`) or resumed marketing messages
/// at `at` (Meta's `user_preferences`): kept on their contact, announced
/// (`contact.updated`) and audited (`contact.marketing_stopped` /
/// `contact.marketing_resumed`), unless a choice as new or newer is kept (a
/// retry, or one delivered late). A customer this channel never heard from
/// has no contact to keep it on: nothing.
pub fn marketing_choice(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    channel_id: i64,
    external_id: &str,
    stopped: bool,
    at: chrono::DateTime<Utc>,
) -> AppResult<()> {
    let changed: Option<(ContactRow, ContactDetails)> = diesel::update(
        contacts::table
            .filter(contacts::channel_id.eq(channel_id))
            .filter(contacts::external_id.eq(external_id))
            .filter(contacts::marketing_chosen_at.is_null().or(contacts::marketing_chosen_at.lt(at))),
    )
    .set((
        contacts::marketing_stopped_at.eq(stopped.then_some(at)),
        contacts::marketing_chosen_at.eq(at),
        contacts::updated_at.eq(diesel::dsl::now),
    ))
    .returning((ContactRow::as_returning(), ContactDetails::as_returning()))
    .get_result(tc.pg())
    .optional()?;
    let Some((row, details)) = changed else { return Ok(()) };
    let action = if stopped { "contact.marketing_stopped" } else { "contact.marketing_resumed" };
    crate::audit::record(tc, None, action, "contact", Some(row.id.to_string()), serde_json::json!({"at": at}))?;
    let item = ContactListItem::one(tc, row, details)?;
    log.append(tc, "contact.updated", Some(item.channel_id.0), None, &item)?;
    Ok(())
}

/// Meta named a WhatsApp customer by another id than the number they were
/// written to (`graph::WhatsappSent`; a number an agent typed to write
/// first, `inbox::outreach`): the contact takes Meta's id, so their answers,
/// which come from it, land in their conversation. Announced with their
/// conversations and audited (`contact.whatsapp_id`, system); the number
/// written to is kept (`whatsapp_input`), so writing first to it again
/// finds them. A number Meta answers with as it was written is the
/// customer's id: sent as an id from then on. When another contact of
/// the channel has Meta's id already (the customer wrote before under
/// it), the one made for the number folds into it (`fold_into_known`).
pub fn known_to_whatsapp_as(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    contact_id: i64,
    wa_id: &str,
) -> AppResult<()> {
    if wa_id.is_empty() || wa_id.len() > 20 || !wa_id.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(());
    }
    // The number written was the customer's id: nothing more to remember.
    let confirmed = diesel::update(
        contacts::table
            .find(contact_id)
            .filter(contacts::external_id.eq(wa_id))
            .filter(contacts::whatsapp_input.eq(wa_id)),
    )
    .set(contacts::whatsapp_input.eq(None::<String>))
    .execute(tc.pg())?;
    if confirmed > 0 {
        return Ok(());
    }
    #[derive(QueryableByName)]
    struct Moved {
        #[diesel(sql_type = diesel::sql_types::Text)]
        was: String,
    }
    // A savepoint: a customer's message stored meanwhile under that id
    // (the unique key) leaves the contact as it was, not the send unrecorded.
    let moved: Option<Moved> = tc
        .pg()
        .transaction(|c| {
            diesel::sql_query(
                "UPDATE contacts AS k SET external_id = $2, whatsapp_input = old.was, updated_at = now() \
                   FROM (SELECT id, external_id AS was FROM contacts WHERE id = $1 FOR UPDATE) AS old \
                  WHERE k.id = old.id AND k.external_id <> $2 \
                    AND NOT EXISTS (SELECT 1 FROM contacts o WHERE o.channel_id = k.channel_id AND o.external_id = $2) \
                 RETURNING old.was",
            )
            .bind::<diesel::sql_types::BigInt, _>(contact_id)
            .bind::<diesel::sql_types::Text, _>(wa_id)
            .get_result(c)
            .optional()
        })
        .or_else(|e| match e {
            diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _) => Ok(None),
            e => Err(e),
        })?;
    let Some(moved) = moved else { return fold_into_known(tc, log, contact_id, wa_id) };
    crate::audit::record(
        tc,
        None,
        "contact.whatsapp_id",
        "contact",
        Some(contact_id.to_string()),
        serde_json::json!({"from": moved.was, "to": wa_id}),
    )?;
    let (row, details): (ContactRow, ContactDetails) = contacts::table
        .find(contact_id)
        .select((ContactRow::as_select(), ContactDetails::as_select()))
        .first(tc.pg())?;
    let item = ContactListItem::one(tc, row, details)?;
    log.append(tc, "contact.updated", Some(item.channel_id.0), None, &item)?;
    let rows: Vec<ConversationRow> = conversations::table
        .filter(conversations::contact_id.eq(contact_id))
        .select(ConversationRow::as_select())
        .load(tc.pg())?;
    super::conversations::announce(tc, log, &rows)
}

/// Meta's id for the customer an agent wrote first to (`typed`, a contact
/// still named by the number as written) is another contact's: the
/// customer wrote before under it. While `typed`'s conversation holds only
/// the team's messages, they move to that contact's conversation (made if
/// it has none) and `typed` goes, so the customer has one thread; that
/// contact keeps the number written (`whatsapp_input`), so writing first
/// to it again finds them. Announced (`conversation.deleted` for the one
/// that went, `message.created` for each message moved, the thread
/// updated) and audited (`contact.merged`). A `client_id` both threads
/// used leaves both as they are, as does a customer's message in `typed`'s.
fn fold_into_known(tc: &mut TenantConn<'_>, log: &mut EventLog, typed: i64, wa_id: &str) -> AppResult<()> {
    use super::views::{MessageRow, Names};
    use crate::db::tenant_schema::messages;
    let Some((channel, external, input)) = contacts::table
        .find(typed)
        .select((contacts::channel_id, contacts::external_id, contacts::whatsapp_input))
        .first::<(i64, String, Option<String>)>(tc.pg())
        .optional()?
    else {
        return Ok(());
    };
    if input.as_deref() != Some(external.as_str()) || external == wa_id {
        return Ok(());
    }
    let known: Option<i64> = contacts::table
        .filter(contacts::channel_id.eq(channel))
        .filter(contacts::external_id.eq(wa_id))
        .select(contacts::id)
        .first(tc.pg())
        .optional()?;
    let Some(known) = known else { return Ok(()) };
    // Both threads, in id order, as a batch naming both takes them: taking
    // `typed`'s first could meet one holding the other and waiting for it.
    let both: Vec<ConversationRow> = conversations::table
        .filter(conversations::contact_id.eq(typed))
        .or_filter(conversations::channel_id.eq(channel).and(conversations::contact_id.eq(known)))
        .order(conversations::id)
        .select(ConversationRow::as_select())
        .for_update()
        .load(tc.pg())?;
    let from = both.into_iter().find(|c| c.contact_id == typed);
    let customer_wrote = match &from {
        Some(f) => {
            let inbound = messages::table
                .filter(messages::conversation_id.eq(f.id))
                .filter(messages::direction.eq("in"))
                .count()
                .get_result::<i64>(tc.pg())?;
            inbound > 0
        }
        None => false,
    };
    if customer_wrote {
        return Ok(());
    }
    // Made only now: a thread for a customer known by their marketing
    // choice alone (a client_id both used needs one that exists).
    // `known` erased as this waited: no thread to join.
    let Some((into, made)) = super::ingest::conversation_of_contact(tc, channel, known)? else {
        return Ok(());
    };
    // A savepoint: a client_id both threads used leaves both as they are.
    let moved: Vec<MessageRow> = match &from {
        Some(f) => {
            let (from_id, into_id) = (f.id, into.id);
            let attempt = tc.pg().transaction(|c| {
                diesel::sql_query("UPDATE note_mentions SET conversation_id = $2 WHERE conversation_id = $1")
                    .bind::<diesel::sql_types::BigInt, _>(from_id)
                    .bind::<diesel::sql_types::BigInt, _>(into_id)
                    .execute(c)?;
                diesel::update(messages::table.filter(messages::conversation_id.eq(from_id)))
                    .set(messages::conversation_id.eq(into_id))
                    .returning(MessageRow::as_returning())
                    .get_results(c)
            });
            match attempt {
                Ok(rows) => rows,
                Err(diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _)) => {
                    return Ok(());
                }
                Err(e) => return Err(e.into()),
            }
        }
        None => Vec::new(),
    };
    if let Some(f) = &from {
        diesel::delete(conversations::table.find(f.id)).execute(tc.pg())?;
        let data = serde_json::json!({"id": f.id.to_string(), "channel_id": channel.to_string()});
        log.append(tc, "conversation.deleted", Some(channel), Some(f.id), data)?;
    }
    diesel::delete(contacts::table.find(typed)).execute(tc.pg())?;
    diesel::update(contacts::table.find(known).filter(contacts::whatsapp_input.is_null()))
        .set(contacts::whatsapp_input.eq(&external))
        .execute(tc.pg())?;
    // The thread's newest message may be one moved.
    let into: ConversationRow = diesel::sql_query(
        "UPDATE conversations c SET last_message_id = n.id, last_activity_at = greatest(c.last_activity_at, n.sort_at), \
                updated_at = now() \
           FROM (SELECT id, sort_at FROM messages WHERE conversation_id = $1 AND NOT private \
                  ORDER BY sort_at DESC, id DESC LIMIT 1) n \
          WHERE c.id = $1 RETURNING c.*",
    )
    .bind::<diesel::sql_types::BigInt, _>(into.id)
    .get_result(tc.pg())
    .optional()?
    .unwrap_or(into);
    crate::audit::record(
        tc,
        None,
        "contact.merged",
        "contact",
        Some(known.to_string()),
        serde_json::json!({"from_contact_id": typed.to_string(), "number": external, "messages": moved.len()}),
    )?;
    let mut names = Names::default();
    if made {
        let view = names.conversation(tc, &into)?;
        log.append(tc, "conversation.created", Some(channel), Some(into.id), &view)?;
    }
    for m in &moved {
        let view = names.message(tc, m, known)?;
        log.append(tc, "message.created", Some(channel), Some(into.id), &view)?;
    }
    let view = names.conversation(tc, &into)?;
    log.append(tc, "conversation.updated", Some(channel), Some(into.id), &view)?;
    Ok(())
}

/// Whether a WhatsApp customer stopped marketing messages (a marketing
/// template is then refused before it is sent: Meta would not deliver it).
pub fn marketing_stopped(tc: &mut TenantConn<'_>, contact_id: i64) -> AppResult<bool> {
    let at: Option<chrono::DateTime<Utc>> =
        contacts::table.find(contact_id).select(contacts::marketing_stopped_at).first(tc.pg())?;
    Ok(at.is_some())
}

fn after_change(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    row: &ContactRow,
    action: &str,
    details: serde_json::Value,
) -> AppResult<()> {
    let rows: Vec<ConversationRow> = conversations::table
        .filter(conversations::contact_id.eq(row.id))
        .select(ConversationRow::as_select())
        .load(tc.pg())?;
    super::conversations::announce(tc, log, &rows)?;
    crate::audit::record(tc, Some(user), action, "contact", Some(row.id.to_string()), details)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Meta's profiles as the fixtures show them, and every variant with one
    /// value retyped or removed: a name or picture is read only from text
    /// that says something.
    #[test]
    fn a_profile_is_read_from_metas_answer_whatever_its_shape() {
        use crate::meta::variants::{every_variant, odd_values};
        let read = |name: &str| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(crate::meta::fixture_path(name)).expect("fixture")).expect("json")
        };
        let messenger = read("messenger_user_profile.json");
        let instagram = read("instagram_user_profile.json");
        assert_eq!(profile_of(&messenger).0.as_deref(), Some("Ana Sousa"));
        assert!(profile_of(&messenger).1.is_some_and(|p| p.starts_with("https://")));
        assert_eq!(profile_of(&instagram).0.as_deref(), Some("Ana Sousa"));
        let only_username = serde_json::json!({"username": "ana.sousa.pt", "name": "  "});
        assert_eq!(profile_of(&only_username), (Some("ana.sousa.pt".into()), None));
        assert_eq!(profile_of(&serde_json::json!({"last_name": "Sousa"})).0.as_deref(), Some("Sousa"));
        assert_eq!(profile_of(&serde_json::json!({"name": "", "first_name": 7})), (None, None));
        let mut tried = 0;
        for original in [&messenger, &instagram] {
            for (what, v) in every_variant(original, &odd_values()) {
                tried += 1;
                let (name, pic) = profile_of(&v);
                for got in [&name, &pic].into_iter().flatten() {
                    assert!(!got.trim().is_empty(), "{what}: {got:?}");
                }
                // What a variant leaves untouched is still read.
                if v.get("profile_pic") == original.get("profile_pic") {
                    assert_eq!(pic, profile_of(original).1, "{what}");
                }
            }
        }
        assert!(tried > 100, "{tried}");
    }

    #[test]
    fn a_search_written_as_a_number_is_read_as_its_digits() {
        for (q, digits) in [("+351 912 345 678", Some("351912345678")), ("(912) 345-678", Some("912345678"))] {
            assert_eq!(phone_digits(q).as_deref(), digits, "{q}");
        }
        // Digits alone are matched as written; words are not numbers.
        for q in ["912345678", "+1", "Ana 912 345", "12", "+ - ()"] {
            assert_eq!(phone_digits(q), None, "{q}");
        }
    }

    #[test]
    fn addresses_and_numbers_are_checked_for_their_shape() {
        for good in ["zoe@exemplo.pt", "a.b+tag@mail.co.uk", "Zoë@exemplo.pt"] {
            assert!(plausible_email(good), "{good}");
        }
        for bad in [
            "zoe",
            "zoe@",
            "@exemplo.pt",
            "zoe@localhost",
            "zoe@.pt",
            "zoe@exemplo.",
            "a@b..pt",
            "a b@c.pt",
            "a@b@c.pt",
        ] {
            assert!(!plausible_email(bad), "{bad}");
        }
        assert!(!plausible_email(&format!("{}@exemplo.pt", "a".repeat(65))));
        for good in ["+351 912 345 678", "(555) 123-4567", "112", "555.123.4567"] {
            assert!(plausible_phone(good), "{good}");
        }
        for bad in ["12", "+", "1234567890123456", "351+912", "call me", "912 345 678 ext 2", "١٢٣٤"] {
            assert!(!plausible_phone(bad), "{bad}");
        }
    }

    #[test]
    fn a_profile_is_due_when_never_looked_up_or_a_day_old() {
        let now = Utc::now();
        assert!(profile_due(None, now));
        assert!(!profile_due(Some(now), now));
        assert!(!profile_due(Some(now - PROFILE_FRESH), now));
        assert!(profile_due(Some(now - PROFILE_FRESH - chrono::TimeDelta::seconds(1)), now));
    }
}
