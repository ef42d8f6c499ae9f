//! One customer on several channels: the team links the contacts that are
//! the same person (their Messenger, Instagram and WhatsApp contacts, or
//! two WhatsApp numbers), so an agent on one sees the others and opens
//! their conversations.
//!
//! Decisions, where Chatwoot merges contacts into one:
//! - Linked, not merged. A contact is how one channel knows the customer
//!   (its id there is where replies go), so each keeps its name, details,
//!   attributes, block and conversation; linking only says they are one
//!   person. Taking one out of its person (`DELETE …/links`) undoes it
//!   without loss, which a merge could not.
//! - A person holds at most [`MOST_LINKED`] contacts. Linking a contact to
//!   one of another person joins the two persons; a person left with one
//!   contact is no person any more.
//! - Any member who answers (owner, admin, agent) links contacts they may
//!   both see (by their channels); the contact named in the body and not
//!   seen is 422 `unknown_contact`. A page (`GET /api/contacts/{id}`, its
//!   `PATCH`, and the link calls' answers) lists as `linked` the person's
//!   other contacts the caller may see, oldest first: others stay unshown.
//!   One conversation (`GET /api/conversations/{id}`) lists them too, as
//!   its `contact.linked`, so the agent answering sees where else the
//!   customer wrote; lists and events leave them out (one more read per
//!   row, and an erased name must not live on in another's events).
//! - Links are audited (`contact.linked` naming the other contact,
//!   `contact.unlinked`) and each contact whose person changed is announced
//!   (`contact.updated`), so an open contact page reloads. Events carry no
//!   linked contacts: an erasure empties a contact's own events, and its
//!   name must not live on in another's. Erasing a contact takes it out of
//!   its person.
//! - Linking contacts already linked, or unlinking one that is not,
//!   changes nothing (a retry is harmless).
//! - Link changes of one tenant take turns (a transaction-level advisory
//!   lock), so two joins at once cannot leave a person split or too large.

use diesel::prelude::*;
use serde::Serialize;

use super::contacts::{self, ContactListItem};
use super::events::EventLog;
use super::{ContactId, ConversationId};
use crate::auth::Role;
use crate::channels::ChannelId;
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

/// The most contacts one person holds.
pub const MOST_LINKED: usize = 10;

/// One of the person's other contacts, as a page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Linked {
    pub id: ContactId,
    pub channel_id: ChannelId,
    /// `facebook`, `instagram` or `whatsapp`.
    pub platform: String,
    pub name: Option<String>,
    pub profile_pic_url: Option<String>,
    pub conversation_id: Option<ConversationId>,
}

#[derive(QueryableByName)]
struct LinkedRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    channel_id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    platform: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    name: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    profile_pic_url: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    conversation_id: Option<i64>,
}

/// A contact with the person's other contacts the caller may see.
#[derive(Debug, Serialize)]
pub struct ContactPage {
    #[serde(flatten)]
    pub contact: ContactListItem,
    pub linked: Vec<Linked>,
}

/// `contact` (which the caller may see) with its `linked` contacts.
pub fn page(tc: &mut TenantConn<'_>, user: UserId, role: Role, contact: ContactListItem) -> AppResult<ContactPage> {
    let linked = linked(tc, user, role, contact.id)?;
    Ok(ContactPage { contact, linked })
}

/// The other contacts of `contact`'s person that the caller may see,
/// oldest first (none when it is in no person).
pub fn linked(tc: &mut TenantConn<'_>, user: UserId, role: Role, contact: ContactId) -> AppResult<Vec<Linked>> {
    let linked = diesel::sql_query(
        "SELECT c.id, c.channel_id, ch.platform, c.name, c.profile_pic_url, cv.id AS conversation_id \
           FROM contact_links l \
           JOIN contacts c ON c.id = l.contact_id \
           JOIN channels ch ON ch.id = c.channel_id \
           LEFT JOIN conversations cv ON cv.channel_id = c.channel_id AND cv.contact_id = c.id \
          WHERE l.person = (SELECT person FROM contact_links WHERE contact_id = $1) AND c.id <> $1 \
            AND ($2 OR EXISTS (SELECT 1 FROM channel_members m \
                                WHERE m.channel_id = c.channel_id AND m.user_id = $3)) \
          ORDER BY c.id",
    )
    .bind::<diesel::sql_types::BigInt, _>(contact.0)
    .bind::<diesel::sql_types::Bool, _>(role.at_least(Role::Admin))
    .bind::<diesel::sql_types::BigInt, _>(user.0)
    .load::<LinkedRow>(tc.pg())?
    .into_iter()
    .map(|r| Linked {
        id: ContactId(r.id),
        channel_id: ChannelId(r.channel_id),
        platform: r.platform,
        name: r.name,
        profile_pic_url: r.profile_pic_url,
        conversation_id: r.conversation_id.map(ConversationId),
    })
    .collect();
    Ok(linked)
}

/// For the export (`contact_export`, admins): each of `ids` that is
/// linked, with the ids of its person's other contacts, oldest first,
/// separated by spaces.
pub fn linked_ids(tc: &mut TenantConn<'_>, ids: &[i64]) -> AppResult<std::collections::HashMap<i64, String>> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
        #[diesel(sql_type = diesel::sql_types::Text)]
        linked: String,
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT l.contact_id AS id, string_agg(o.contact_id::text, ' ' ORDER BY o.contact_id) AS linked \
           FROM contact_links l JOIN contact_links o ON o.person = l.person AND o.contact_id <> l.contact_id \
          WHERE l.contact_id = ANY($1) GROUP BY l.contact_id",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(ids)
    .load(tc.pg())?;
    Ok(rows.into_iter().map(|r| (r.id, r.linked)).collect())
}

/// Link changes of this tenant take turns ([module docs](self)).
fn take_turn(tc: &mut TenantConn<'_>) -> AppResult<()> {
    let tenant = tc.tenant().0.to_string();
    crate::db::locks::hold(tc.pg(), crate::db::locks::LockClass::ContactLinks, &tenant)?;
    Ok(())
}

fn person_of(tc: &mut TenantConn<'_>, contact: i64) -> AppResult<Option<i64>> {
    use crate::db::tenant_schema::contact_links as l;
    Ok(l::table.find(contact).select(l::person).first(tc.pg()).optional()?)
}

fn members(tc: &mut TenantConn<'_>, person: i64) -> AppResult<Vec<i64>> {
    use crate::db::tenant_schema::contact_links as l;
    Ok(l::table.filter(l::person.eq(person)).order(l::contact_id).select(l::contact_id).load(tc.pg())?)
}

/// `POST /api/contacts/{id}/links` `{contact_id}`: `id` and `other` are
/// one person ([module docs](self)).
pub fn link(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: ContactId,
    other: ContactId,
) -> AppResult<ContactPage> {
    use crate::db::tenant_schema::contact_links as l;
    // The turn first: an erasure takes it before it locks the contact.
    take_turn(tc)?;
    let contact = contacts::get(tc, user, role, id)?;
    if other == id {
        return Err(AppError::invalid("same_contact", "a contact cannot be linked to itself"));
    }
    contacts::get(tc, user, role, other).map_err(|e| match e.kind {
        crate::error::ErrorKind::NotFound => {
            AppError::invalid("unknown_contact", "contact_id names no contact you may see")
        }
        _ => e,
    })?;
    let (mine, theirs) = (person_of(tc, id.0)?, person_of(tc, other.0)?);
    if mine.is_some() && mine == theirs {
        return page(tc, user, role, contact);
    }
    let size = |tc: &mut TenantConn<'_>, person: Option<i64>| -> AppResult<usize> {
        Ok(match person {
            Some(p) => members(tc, p)?.len(),
            None => 1,
        })
    };
    if size(tc, mine)? + size(tc, theirs)? > MOST_LINKED {
        return Err(AppError::invalid(
            "too_many_linked",
            format!("a person holds at most {MOST_LINKED} contacts; unlink one first"),
        ));
    }
    let person = match mine.or(theirs) {
        Some(p) => p,
        None => diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>("nextval('contact_people')"))
            .get_result(tc.pg())?,
    };
    if let (Some(_), Some(joined)) = (mine, theirs) {
        diesel::update(l::table.filter(l::person.eq(joined))).set(l::person.eq(person)).execute(tc.pg())?;
    }
    for (contact, had) in [(id.0, mine), (other.0, theirs)] {
        if had.is_none() {
            diesel::insert_into(l::table)
                .values((l::contact_id.eq(contact), l::person.eq(person), l::linked_by.eq(user.0)))
                .execute(tc.pg())?;
        }
    }
    let everyone = members(tc, person)?;
    contacts::announce(tc, log, &everyone)?;
    crate::audit::record(
        tc,
        Some(user),
        "contact.linked",
        "contact",
        Some(id.0.to_string()),
        serde_json::json!({"contact_id": other.0.to_string()}),
    )?;
    page(tc, user, role, contact)
}

/// `DELETE /api/contacts/{id}/links`: the contact is no longer one person
/// with the others ([module docs](self)).
pub fn unlink(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: ContactId,
) -> AppResult<ContactPage> {
    take_turn(tc)?;
    let contact = contacts::get(tc, user, role, id)?;
    if let Some(mut changed) = leave(tc, id)? {
        changed.push(id.0);
        contacts::announce(tc, log, &changed)?;
        crate::audit::record(
            tc,
            Some(user),
            "contact.unlinked",
            "contact",
            Some(id.0.to_string()),
            serde_json::json!({}),
        )?;
    }
    page(tc, user, role, contact)
}

/// Takes contact `id` out of its person (the caller has taken the turn,
/// or is erasing the contact): `None` if it had none, else the contacts it
/// leaves behind, whose person changed (none left when only one was).
fn leave(tc: &mut TenantConn<'_>, id: ContactId) -> AppResult<Option<Vec<i64>>> {
    use crate::db::tenant_schema::contact_links as l;
    let Some(person) = person_of(tc, id.0)? else { return Ok(None) };
    diesel::delete(l::table.find(id.0)).execute(tc.pg())?;
    let rest = members(tc, person)?;
    if rest.len() == 1 {
        diesel::delete(l::table.filter(l::person.eq(person))).execute(tc.pg())?;
    }
    Ok(Some(rest))
}

/// Before contact `id` is erased (first, before it is locked): out of
/// its person, and the contacts it leaves announced (their pages list it
/// no more).
pub fn before_erasure(tc: &mut TenantConn<'_>, log: &mut EventLog, id: ContactId) -> AppResult<()> {
    take_turn(tc)?;
    if let Some(rest) = leave(tc, id)? {
        contacts::announce(tc, log, &rest)?;
    }
    Ok(())
}
