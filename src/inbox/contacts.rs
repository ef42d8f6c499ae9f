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
//! The team may name a contact ([`rename`]): Meta's names then wait until
//! the team takes its name back.

use chrono::Utc;
use diesel::prelude::*;
use serde::Serialize;

use super::events::EventLog;
use super::views::{ContactRow, ConversationRow};
use super::ContactId;
use crate::auth::Role;
use crate::channels::{ChannelId, Platform};
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
}

pub fn search(
    tc: &mut TenantConn<'_>,
    user: UserId,
    role: Role,
    q: Option<&str>,
    after: Option<i64>,
    limit: i64,
) -> AppResult<Vec<ContactListItem>> {
    let mut query = contacts::table.select(ContactRow::as_select()).order(contacts::id).limit(limit).into_boxed();
    if !role.at_least(Role::Admin) {
        let mine =
            channel_members::table.filter(channel_members::user_id.eq(user.0)).select(channel_members::channel_id);
        query = query.filter(contacts::channel_id.eq_any(mine));
    }
    let search = q.map(str::trim).filter(|t| !t.is_empty());
    if let Some(text) = search {
        query = query.filter(
            contacts::search_name
                .like(super::sb_fold_contains(text.to_string()))
                .or(contacts::external_id.ilike(super::contains_pattern(text))),
        );
    }
    if let Some(a) = after {
        query = query.filter(contacts::id.gt(a));
    }
    let rows: Vec<ContactRow> = if search.is_some() {
        super::planned_for_the_pattern(tc, |pg| query.load(pg))?
    } else {
        query.load(tc.pg())?
    };
    Ok(rows
        .into_iter()
        .map(|c| ContactListItem {
            id: ContactId(c.id),
            channel_id: ChannelId(c.channel_id),
            external_id: c.external_id,
            name: c.name,
            profile_pic_url: c.profile_pic_url,
            created_at: c.created_at,
        })
        .collect())
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
    let Some(old) =
        contacts::table.find(contact_id).select(ContactRow::as_select()).for_update().first(tc.pg()).optional()?
    else {
        return Ok(());
    };
    // No name found keeps the one the contact has (a WhatsApp profile
    // name), and so does a name the team gave.
    let named_by_team: Option<i64> = contacts::table.find(contact_id).select(contacts::name_set_by).first(tc.pg())?;
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

/// `PATCH /api/contacts/{id}` with `name`: the team names a contact (a
/// WhatsApp "Mom 2", a Messenger customer without a public name). The
/// name stays, whatever Meta's profile lookups and webhooks say, until the
/// team takes it back (`None`): then Meta's next name (a profile lookup,
/// queued now for Messenger and Instagram, or the next WhatsApp webhook)
/// shows. Announced for the contact's conversations and audited; the same
/// name again changes nothing. Only for who may see the contact's channel.
pub fn rename(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: ContactId,
    name: Option<String>,
) -> AppResult<ContactListItem> {
    let name = name.map(|n| n.trim().to_string());
    if let Some(n) = &name {
        if n.is_empty() || n.chars().count() > MOST_NAME_CHARS || n.chars().any(char::is_control) {
            return Err(AppError::invalid(
                "invalid_name",
                format!("a name is 1 to {MOST_NAME_CHARS} characters, without control characters"),
            ));
        }
    }
    let old: ContactRow = contacts::table
        .find(id.0)
        .select(ContactRow::as_select())
        .for_update()
        .first(tc.pg())
        .optional()?
        .ok_or_else(|| AppError::not_found("contact"))?;
    if !crate::channels::can_see(tc, user, role, ChannelId(old.channel_id))? {
        return Err(AppError::not_found("contact"));
    }
    let set_by: Option<i64> = contacts::table.find(id.0).select(contacts::name_set_by).first(tc.pg())?;
    let row: ContactRow = match &name {
        Some(n) if set_by.is_some() && old.name.as_deref() == Some(n.as_str()) => old,
        Some(n) => {
            let row = diesel::update(contacts::table.find(id.0))
                .set((
                    contacts::name.eq(n),
                    contacts::name_set_by.eq(user.0),
                    contacts::updated_at.eq(diesel::dsl::now),
                ))
                .returning(ContactRow::as_returning())
                .get_result(tc.pg())?;
            after_rename(tc, log, user, &row, "contact.renamed")?;
            row
        }
        None if set_by.is_none() => old,
        None => {
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
            after_rename(tc, log, user, &row, "contact.name_released")?;
            row
        }
    };
    Ok(ContactListItem {
        id: ContactId(row.id),
        channel_id: ChannelId(row.channel_id),
        external_id: row.external_id,
        name: row.name,
        profile_pic_url: row.profile_pic_url,
        created_at: row.created_at,
    })
}

fn after_rename(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    row: &ContactRow,
    action: &str,
) -> AppResult<()> {
    let rows: Vec<ConversationRow> = conversations::table
        .filter(conversations::contact_id.eq(row.id))
        .select(ConversationRow::as_select())
        .load(tc.pg())?;
    super::conversations::announce(tc, log, &rows)?;
    crate::audit::record(
        tc,
        Some(user),
        action,
        "contact",
        Some(row.id.to_string()),
        serde_json::json!({"name": row.name}),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_is_due_when_never_looked_up_or_a_day_old() {
        let now = Utc::now();
        assert!(profile_due(None, now));
        assert!(!profile_due(Some(now), now));
        assert!(!profile_due(Some(now - PROFILE_FRESH), now));
        assert!(profile_due(Some(now - PROFILE_FRESH - chrono::TimeDelta::seconds(1)), now));
    }
}
