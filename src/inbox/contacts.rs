//! Contacts: search, and the profile (name, picture) looked up at Meta in
//! the background. A failing lookup never blocks a message: the contact just
//! keeps its id (WhatsApp contacts get their name from the webhook itself).
//!
//! A profile is looked up again when its contact writes more than
//! [`PROFILE_FRESH`] after the last lookup: Meta's picture URLs expire, and
//! customers rename themselves. A contact who never writes again keeps what
//! was found (a client shows its initials for a picture that no longer
//! loads); no one is looked up for being read.

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
use crate::error::AppResult;
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
    // No name found keeps the one the contact has (a WhatsApp profile name).
    let name = name.or_else(|| old.name.clone());
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
