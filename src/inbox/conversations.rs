//! Conversations: the filtered inbox list, one conversation, and the changes
//! agents make (status, assignee, snooze, read).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::dsl::sql;
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::sql_types::{Bool, Text};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::events::EventLog;
use super::messages::visible_conversation;
use super::views::{ConversationRow, ConversationView, Names};
use super::{planned_for_the_pattern, sb_fold_contains, ConversationId};
use crate::audit;
use crate::auth::Role;
use crate::db::schema::memberships;
use crate::db::tenant_schema::{channel_members, contacts, conversations as c, messages, team_members};
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub status: Option<String>,
    pub channel_id: Option<i64>,
    /// `Some(None)`: unassigned; `Some(Some(u))`: assigned to u.
    pub assignee: Option<Option<i64>>,
    pub unread: bool,
    pub q: Option<String>,
    /// Only those with this label (normalized as stored).
    pub label: Option<String>,
    /// `Some(None)`: no priority; `Some(Some(p))`: priority p.
    pub priority: Option<Option<String>>,
    /// Whose team's (`inbox::teams`).
    pub team: Option<TeamFilter>,
    /// `Some(true)`: only those whose customer waits for the team
    /// (`waiting`); `Some(false)`: only the others.
    pub waiting: Option<bool>,
    /// Only those waiting past their channel's reply target.
    pub overdue: bool,
    /// `Some(true)`: only those whose thread another app holds
    /// (`inbox::handover`); `Some(false)`: only the others.
    pub held_elsewhere: Option<bool>,
    /// Only those whose contact has this attribute, or (`Some`) this
    /// value of it (`contact_attribute=key` or `key:value`).
    pub contact_attribute: Option<(String, Option<String>)>,
    /// `Some(true)`: only those waiting in the queue for someone to hand
    /// them to (`hand_out`); `Some(false)`: only the others.
    pub queued: Option<bool>,
    /// `Some(true)`: only those with a scheduled message waiting to go
    /// (`inbox::scheduled`); `Some(false)`: only the others.
    pub scheduled: Option<bool>,
    /// The list's order (not the newest activity first only without `q`).
    pub order: Order,
}

/// Which team's conversations (`team=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeamFilter {
    /// Handed to no team.
    None,
    /// Handed to this team.
    Team(i64),
    /// Handed to a team this member is in.
    MemberOf(UserId),
}

/// How the list is ordered (`sort`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Order {
    /// Newest activity first, keyset on (last_activity_at, id).
    #[default]
    Activity,
    /// The waiting ones, longest wait first, keyset on (waiting_since, id).
    Waiting,
    /// The waiting ones with a reply target, soonest due first (the most
    /// overdue first), keyset on (reply_due_at, id).
    Due,
    /// Those waiting in the queue (`hand_out`), in the order it hands them
    /// out: the longest queued first, keyset on (queued_at, id).
    Queue,
}

impl Order {
    /// The time the keyset of a conversation's place in this order reads.
    pub fn keyed_at(self, view: &super::views::ConversationView) -> DateTime<Utc> {
        match self {
            Order::Activity => None,
            Order::Waiting => view.waiting_since,
            Order::Due => view.reply_due_at,
            Order::Queue => view.queued_at,
        }
        .unwrap_or(view.last_activity_at)
    }
}

/// The list's filters as a client writes them (query parameters, or a
/// saved view's `filters`): read into a [`Filter`] for the one who lists,
/// so `assignee=me` is whoever uses them.
#[derive(Debug, Default, Clone, PartialEq, Deserialize, Serialize)]
pub struct FilterParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assignee: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overdue: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sort: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_elsewhere: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact_attribute: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queued: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduled: Option<String>,
}

impl FilterParams {
    /// The names a client may give.
    pub const NAMES: [&'static str; 15] = [
        "status",
        "channel_id",
        "assignee",
        "unread",
        "q",
        "label",
        "priority",
        "waiting",
        "overdue",
        "sort",
        "held_elsewhere",
        "team",
        "contact_attribute",
        "queued",
        "scheduled",
    ];

    /// These, with each one `over` gives put in its place.
    pub fn overlaid(self, over: FilterParams) -> FilterParams {
        FilterParams {
            status: over.status.or(self.status),
            channel_id: over.channel_id.or(self.channel_id),
            assignee: over.assignee.or(self.assignee),
            unread: over.unread.or(self.unread),
            q: over.q.or(self.q),
            label: over.label.or(self.label),
            priority: over.priority.or(self.priority),
            waiting: over.waiting.or(self.waiting),
            overdue: over.overdue.or(self.overdue),
            sort: over.sort.or(self.sort),
            held_elsewhere: over.held_elsewhere.or(self.held_elsewhere),
            team: over.team.or(self.team),
            contact_attribute: over.contact_attribute.or(self.contact_attribute),
            queued: over.queued.or(self.queued),
            scheduled: over.scheduled.or(self.scheduled),
        }
    }

    /// The filter these say for member `me`; a wrong one is 400
    /// `invalid_query` (`invalid_status` for a status) naming it.
    pub fn filter(&self, me: UserId) -> AppResult<Filter> {
        let bad = |why: String| AppError::bad_request("invalid_query", why);
        let flag = |raw: Option<&str>, what: &str| match raw {
            None | Some("") => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(_) => Err(bad(format!("{what} must be true or false"))),
        };
        let id = |raw: &str, what: &str| raw.parse::<i64>().map_err(|_| bad(format!("{what} is not an id")));
        let status = self.status.clone();
        // PostgreSQL keeps no text with U+0000: refused, as in a body.
        if self.q.as_deref().is_some_and(|q| q.contains('\0')) {
            return Err(bad("q must not contain the character U+0000".into()));
        }
        if status.as_deref().is_some_and(|s| !STATUSES.contains(&s)) {
            return Err(AppError::bad_request("invalid_status", "status must be open, pending, snoozed or resolved"));
        }
        let filter = Filter {
            status,
            channel_id: self.channel_id.as_deref().map(|c| id(c, "channel_id")).transpose()?,
            assignee: match self.assignee.as_deref() {
                None | Some("") => None,
                Some("me") => Some(Some(me.0)),
                Some("none") => Some(None),
                Some(u) => Some(Some(id(u, "assignee")?)),
            },
            unread: flag(self.unread.as_deref(), "unread")?.unwrap_or(false),
            q: self.q.clone(),
            label: self
                .label
                .as_deref()
                .filter(|l| !l.is_empty())
                .map(normalize_label)
                .transpose()
                .map_err(|e| bad(e.message))?,
            priority: match self.priority.as_deref() {
                None | Some("") => None,
                Some("none") => Some(None),
                Some(p) => Some(Some(
                    checked_priority(p).map_err(|_| bad("priority is low, medium, high, urgent or none".into()))?,
                )),
            },
            team: match self.team.as_deref() {
                None | Some("") => None,
                Some("none") => Some(TeamFilter::None),
                Some("mine") => Some(TeamFilter::MemberOf(me)),
                Some(t) => Some(TeamFilter::Team(id(t, "team")?)),
            },
            waiting: flag(self.waiting.as_deref(), "waiting")?,
            overdue: flag(self.overdue.as_deref(), "overdue")?.unwrap_or(false),
            held_elsewhere: flag(self.held_elsewhere.as_deref(), "held_elsewhere")?,
            contact_attribute: match self.contact_attribute.as_deref() {
                None | Some("") => None,
                Some(raw) => Some(super::attributes::parsed_query(raw).map_err(|e| bad(e.message))?),
            },
            queued: flag(self.queued.as_deref(), "queued")?,
            scheduled: flag(self.scheduled.as_deref(), "scheduled")?,
            order: match self.sort.as_deref() {
                None | Some("") | Some("activity") => Order::Activity,
                Some("waiting") => Order::Waiting,
                Some("due") => Order::Due,
                Some("queue") => Order::Queue,
                Some(_) => return Err(bad("sort is activity, waiting, due or queue".into())),
            },
        };
        if filter.order != Order::Activity && filter.q.as_deref().is_some_and(|t| !t.trim().is_empty()) {
            return Err(bad("sort=waiting, due or queue does not go with q: a search lists by activity".into()));
        }
        Ok(filter)
    }
}

pub const STATUSES: [&str; 4] = ["open", "pending", "snoozed", "resolved"];
/// A conversation's priority, least to most urgent (none: `null`).
pub const PRIORITIES: [&str; 4] = ["low", "medium", "high", "urgent"];

/// A priority as given: one of [`PRIORITIES`], else 422 `invalid_priority`.
pub fn checked_priority(raw: &str) -> AppResult<String> {
    PRIORITIES
        .iter()
        .find(|p| **p == raw)
        .map(|p| p.to_string())
        .ok_or_else(|| AppError::invalid("invalid_priority", "priority is low, medium, high, urgent or null"))
}

/// Who lists, with which filter, from where: what every statement of a
/// page applies.
#[derive(Clone, Copy)]
struct Listing<'f> {
    user: UserId,
    role: Role,
    filter: &'f Filter,
    after: Option<(DateTime<Utc>, i64)>,
    /// The filter's `contact_attribute` value, as the attributes may hold
    /// it ([`attribute_values`]).
    attribute_values: &'f [serde_json::Value],
}

/// What the attributes of a contact the filter's `key:value` finds
/// contain, one of: the value as any type could hold it, and as the key's
/// definition reads it (a list's option in any case).
fn attribute_values(tc: &mut TenantConn<'_>, f: &Filter) -> AppResult<Vec<serde_json::Value>> {
    match &f.contact_attribute {
        Some((key, Some(value))) => super::attributes::containing_as_defined(tc, key, value),
        _ => Ok(Vec::new()),
    }
}

/// In the filter's [`Order`]: newest activity first, the longest waits
/// first, the soonest due first, or the longest queued first.
pub fn list(
    tc: &mut TenantConn<'_>,
    user: UserId,
    role: Role,
    f: &Filter,
    after: Option<(DateTime<Utc>, i64)>,
    limit: i64,
) -> AppResult<Vec<ConversationView>> {
    let values = attribute_values(tc, f)?;
    let listing = Listing { user, role, filter: f, after, attribute_values: &values };
    let search_text = f.q.as_deref().map(str::trim).filter(|t| !t.is_empty());
    // Read again when a contact listed was erased before its name was read
    // (the two are two statements): a page left one short would read as
    // the list's last.
    for _ in 1..LIST_ATTEMPTS {
        let rows = listed_rows(tc, listing, search_text, limit)?;
        if let Some(views) = Names::default().listed(tc, &rows)? {
            return Ok(views);
        }
    }
    let rows = listed_rows(tc, listing, search_text, limit)?;
    Names::default().conversations(tc, &rows)
}

/// Times [`list`] reads a page before it lets a contact erased meanwhile
/// fail it (404), as a view of that one conversation would.
const LIST_ATTEMPTS: usize = 3;

/// The rows of a page of [`list`].
fn listed_rows(
    tc: &mut TenantConn<'_>,
    listing: Listing<'_>,
    search_text: Option<&str>,
    limit: i64,
) -> AppResult<Vec<ConversationRow>> {
    let f = listing.filter;
    Ok(match search_text {
        Some(text) => planned_for_the_pattern(tc, |pg| search(pg, listing, text, limit))?,
        None if f.order == Order::Waiting => {
            filtered(c::table.select(ConversationRow::as_select()).into_boxed(), listing)
                .order((c::waiting_since.asc(), c::id.asc()))
                .limit(limit)
                .load(tc.pg())?
        }
        None if f.order == Order::Due => filtered(c::table.select(ConversationRow::as_select()).into_boxed(), listing)
            .order((c::reply_due_at.asc(), c::id.asc()))
            .limit(limit)
            .load(tc.pg())?,
        None if f.order == Order::Queue => {
            filtered(c::table.select(ConversationRow::as_select()).into_boxed(), listing)
                .order((c::queued_at.asc(), c::id.asc()))
                .limit(limit)
                .load(tc.pg())?
        }
        None => newest_first(filtered(c::table.select(ConversationRow::as_select()).into_boxed(), listing))
            .limit(limit)
            .load(tc.pg())?,
    })
}

/// The most conversations [`counts`] counts of each kind: a count of this
/// many says "this many or more" (a badge shows "9,999+"), so a count
/// costs at most this many index entries however long the history.
pub const MOST_COUNTED: i64 = 10_000;

/// What the inbox's badges show for a filter: how many conversations it
/// lists in all, how many of them are the caller's, how many are no
/// one's, and how many of those wait in the queue (`hand_out`).
#[derive(Debug, Serialize, PartialEq)]
pub struct Counts {
    pub all: i64,
    pub mine: i64,
    pub unassigned: i64,
    pub queued: i64,
}

/// `GET /api/conversations/counts`: [`Counts`] of the conversations `f`
/// lists for `user` (its `assignee` aside; not with a search, `q`), each
/// up to [`MOST_COUNTED`].
pub fn counts(tc: &mut TenantConn<'_>, user: UserId, role: Role, f: &Filter) -> AppResult<Counts> {
    if f.q.as_deref().is_some_and(|t| !t.trim().is_empty()) {
        return Err(AppError::bad_request("invalid_query", "counts take no q: a search is counted by its pages"));
    }
    let values = attribute_values(tc, f)?;
    let mut count = |assignee: Option<Option<i64>>, queued: Option<bool>| -> AppResult<i64> {
        let filter = Filter { assignee, queued: queued.or(f.queued), ..f.clone() };
        let listing = Listing { user, role, filter: &filter, after: None, attribute_values: &values };
        let ids: Vec<i64> = filtered(c::table.select(c::id).into_boxed(), listing).limit(MOST_COUNTED).load(tc.pg())?;
        Ok(ids.len() as i64)
    };
    Ok(Counts {
        all: count(None, None)?,
        mine: count(Some(Some(user.0)), None)?,
        unassigned: count(Some(None), None)?,
        queued: if f.queued == Some(false) { 0 } else { count(None, Some(true))? },
    })
}

/// `q` narrowed by the filter's conditions (all but the search) and the
/// keyset.
fn filtered<'a, ST: 'a>(mut q: c::BoxedQuery<'a, Pg, ST>, listing: Listing<'_>) -> c::BoxedQuery<'a, Pg, ST> {
    let Listing { user, role, filter: f, after, attribute_values } = listing;
    if !role.at_least(Role::Admin) {
        let mine =
            channel_members::table.filter(channel_members::user_id.eq(user.0)).select(channel_members::channel_id);
        q = q.filter(c::channel_id.eq_any(mine));
    }
    if let Some(s) = &f.status {
        q = q.filter(c::status.eq(s.clone()));
    }
    if let Some(ch) = f.channel_id {
        q = q.filter(c::channel_id.eq(ch));
    }
    match f.assignee {
        Some(None) => q = q.filter(c::assignee_id.is_null()),
        Some(Some(u)) => q = q.filter(c::assignee_id.eq(u)),
        None => {}
    }
    if f.unread {
        q = q.filter(c::unread_count.gt(0));
    }
    if let Some(label) = &f.label {
        q = q.filter(c::labels.contains(vec![label.clone()]));
    }
    match &f.priority {
        Some(None) => q = q.filter(c::priority.is_null()),
        Some(Some(p)) => q = q.filter(c::priority.eq(p.clone())),
        None => {}
    }
    match f.team {
        Some(TeamFilter::None) => q = q.filter(c::team_id.is_null()),
        Some(TeamFilter::Team(t)) => q = q.filter(c::team_id.eq(t)),
        Some(TeamFilter::MemberOf(u)) => {
            let teams =
                team_members::table.filter(team_members::user_id.eq(u.0)).select(team_members::team_id.nullable());
            q = q.filter(c::team_id.eq_any(teams))
        }
        None => {}
    }
    match f.waiting {
        Some(true) => q = q.filter(c::status.eq_any(super::waiting::UNRESOLVED)).filter(c::waiting_since.is_not_null()),
        Some(false) => q = q.filter(c::waiting_since.is_null()),
        None => {}
    }
    if f.overdue {
        q = q.filter(sql::<Bool>(super::waiting::OVERDUE));
    }
    match f.queued {
        Some(true) => q = q.filter(c::queued_at.is_not_null()),
        Some(false) => q = q.filter(c::queued_at.is_null()),
        None => {}
    }
    match f.scheduled {
        Some(true) => q = q.filter(c::next_scheduled_at.is_not_null()),
        Some(false) => q = q.filter(c::next_scheduled_at.is_null()),
        None => {}
    }
    match f.held_elsewhere {
        Some(true) => q = q.filter(sql::<Bool>(super::handover::HELD_ELSEWHERE)),
        Some(false) => q = q.filter(sql::<Bool>(super::handover::HELD_ELSEWHERE).is_distinct_from(true)),
        None => {}
    }
    // A subquery of the contacts, a rare value through their attributes'
    // GIN index.
    let holding = |of: contacts::BoxedQuery<'a, Pg, diesel::sql_types::BigInt>| c::contact_id.eq_any(of);
    match &f.contact_attribute {
        Some((key, None)) => {
            q = q.filter(holding(
                contacts::table.filter(contacts::attributes.has_key(key.clone())).select(contacts::id).into_boxed(),
            ))
        }
        Some((_, Some(_))) => {
            let mut of = contacts::table.select(contacts::id).into_boxed();
            for (n, contained) in attribute_values.iter().cloned().enumerate() {
                of = if n == 0 {
                    of.filter(contacts::attributes.contains(contained))
                } else {
                    of.or_filter(contacts::attributes.contains(contained))
                };
            }
            q = q.filter(holding(of))
        }
        None => {}
    }
    match f.order {
        Order::Waiting => {
            q = q.filter(c::status.eq_any(super::waiting::UNRESOLVED)).filter(c::waiting_since.is_not_null());
            if let Some((at, id)) = after {
                q = q.filter(c::waiting_since.gt(at).or(c::waiting_since.eq(at).and(c::id.gt(id))));
            }
        }
        Order::Due => {
            q = q.filter(c::status.eq_any(super::waiting::UNRESOLVED)).filter(c::reply_due_at.is_not_null());
            if let Some((at, id)) = after {
                q = q.filter(c::reply_due_at.gt(at).or(c::reply_due_at.eq(at).and(c::id.gt(id))));
            }
        }
        Order::Queue => {
            q = q.filter(c::queued_at.is_not_null());
            if let Some((at, id)) = after {
                q = q.filter(c::queued_at.gt(at).or(c::queued_at.eq(at).and(c::id.gt(id))));
            }
        }
        Order::Activity => {
            if let Some((at, id)) = after {
                q = q.filter(c::last_activity_at.lt(at).or(c::last_activity_at.eq(at).and(c::id.lt(id))));
            }
        }
    }
    q
}

fn newest_first<'a, ST: 'a>(q: c::BoxedQuery<'a, Pg, ST>) -> c::BoxedQuery<'a, Pg, ST> {
    q.order((c::last_activity_at.desc(), c::id.desc()))
}

/// A page of the conversations whose messages or contact name hold `text`
/// (folded on both sides: the columns hold folded text, as do the trigram
/// indexes on them).
///
/// Two ways to find them, each fast where the other is slow. Collecting
/// every match (through the trigram index, or a scan for one or two
/// characters) and keeping the newest costs what the matches cost: a rare
/// word takes milliseconds, a word in half the messages reads half the
/// messages (at 1,000,000 messages, 140–350 ms for the first page).
/// Probing the newest conversations one by one, each through its messages'
/// index and stopping at its first match, costs what the page costs when
/// most conversations match, and reads every message of every conversation
/// probed when the word is rare (50 conversations of 5,000 messages: 60 ms
/// against 2 for collecting). PostgreSQL does not choose well between them:
/// the page's `LIMIT` does not reach into a match on messages or a contact
/// (an `OR` of two subqueries), and its costs rate reading a message as far
/// cheaper than a `LIKE` on it.
///
/// So: PostgreSQL's estimate of the messages holding the word decides
/// first. Under [`PROBE_FROM`] of them per conversation of the page, the
/// matches are collected, as cheap as they are few. Above it, the newest
/// conversations are probed a page at a time, at most `PROBE_PAGES` pages.
/// The probing stops as soon as the page is full (every conversation not
/// probed is older), and also as soon as the conversations probed so far,
/// matching as they did, could not fill it from the ones left; then the
/// rest are collected, those probed left out.
///
/// `bench search`, 1,000,000 messages: words in most conversations 2.2–2.8
/// ms (136–268 ms collecting only); rarer words as before, plus the
/// estimate (about 1 ms).
fn search(pg: &mut PgConnection, listing: Listing<'_>, text: &str, limit: i64) -> QueryResult<Vec<ConversationRow>> {
    let page = usize::try_from(limit).unwrap_or(usize::MAX).max(1);
    if messages_holding(pg, text)? < PROBE_FROM * limit as f64 {
        return collect(pg, listing, text, &[], limit);
    }
    let most = limit.saturating_mul(PROBE_PAGES);
    let newest: Vec<i64> = newest_first(filtered(c::table.select(c::id).into_boxed(), listing)).limit(most).load(pg)?;
    let mut rows: Vec<ConversationRow> = Vec::new();
    let mut probed = 0;
    for ids in newest.chunks(page) {
        let found: Vec<ConversationRow> = filtered(c::table.select(ConversationRow::as_select()).into_boxed(), listing)
            .filter(c::id.eq_any(ids))
            .filter(message_probe(text).or(contact_probe(text)))
            .load(pg)?;
        rows.extend(found);
        probed += ids.len();
        if rows.len() >= page || rows.len() * newest.len() < page * probed {
            break;
        }
    }
    let everything_probed = probed == newest.len() && (newest.len() as i64) < most;
    if rows.len() < page && !everything_probed {
        let older = collect(pg, listing, text, &newest[..probed], limit - rows.len() as i64)?;
        rows.extend(older);
    }
    // Sorted here whatever happened between the statements: a conversation
    // may have become active since it was probed.
    rows.sort_by_key(|r| std::cmp::Reverse((r.last_activity_at, r.id)));
    rows.truncate(page);
    Ok(rows)
}

/// Probing pays (see [`search`]) from this many messages holding the word,
/// as PostgreSQL estimates them, per conversation of the page.
const PROBE_FROM: f64 = 100.0;

/// How many pages' worth of the newest conversations a search probes one
/// by one, at most, before it collects the rest.
const PROBE_PAGES: i64 = 4;

#[derive(QueryableByName)]
struct Explained {
    #[diesel(sql_type = diesel::sql_types::Json, column_name = "QUERY PLAN")]
    plan: serde_json::Value,
}

/// PostgreSQL's estimate of the messages holding `text`: the statement is
/// planned, not run (a fraction of a millisecond), with the text itself,
/// from the column's statistics. Unreadable, it counts as many.
fn messages_holding(pg: &mut PgConnection, text: &str) -> QueryResult<f64> {
    let explained: Explained = diesel::sql_query(
        "EXPLAIN (FORMAT JSON) SELECT 1 FROM messages WHERE search_text LIKE public.sb_fold_contains($1)",
    )
    .bind::<Text, _>(text)
    .get_result(pg)?;
    Ok(explained.plan[0]["Plan"]["Plan Rows"].as_f64().unwrap_or(f64::MAX))
}

/// The newest `limit` conversations but those in `skip` with a message or
/// contact holding `text`, from every match.
fn collect(
    pg: &mut PgConnection,
    listing: Listing<'_>,
    text: &str,
    skip: &[i64],
    limit: i64,
) -> QueryResult<Vec<ConversationRow>> {
    let pattern = sb_fold_contains(text.to_string());
    let by_message =
        messages::table.filter(messages::search_text.like(pattern.clone())).select(messages::conversation_id);
    let written = contacts::search_name.like(pattern).or(super::contacts::details_hold!(text));
    let by_contact = match super::contacts::phone_digits(text) {
        Some(digits) => contacts::table
            .filter(
                written
                    .or(contacts::external_id.like(super::contains_pattern(&digits)))
                    .or(contacts::whatsapp_input.eq(digits)),
            )
            .select(contacts::id)
            .into_boxed(),
        None => contacts::table.filter(written).select(contacts::id).into_boxed(),
    };
    let mut q = newest_first(filtered(c::table.select(ConversationRow::as_select()).into_boxed(), listing))
        .filter(c::id.eq_any(by_message).or(c::contact_id.eq_any(by_contact)));
    if !skip.is_empty() {
        q = q.filter(c::id.ne_all(skip));
    }
    q.limit(limit).load(pg)
}

/// A condition on the outer query's conversation, with the searched text
/// bound.
type Probe = Box<dyn BoxableExpression<c::table, Pg, SqlType = Bool>>;

/// Whether the conversation (the row of the outer query) has a message
/// holding the text, asked of that conversation's messages, stopping at the
/// first match.
const MESSAGE_HOLDS: [&str; 2] = [
    "EXISTS (SELECT 1 FROM messages probed \
      WHERE probed.conversation_id = conversations.id AND probed.search_text LIKE public.sb_fold_contains(",
    ") OFFSET 0)",
];
/// Whether the conversation's contact's name, or the address or number
/// the team saved for them, holds the text, by the contact's key. The text
/// is bound once for each `LIKE`: a custom plan folds each pattern once,
/// where a pattern computed in the subquery was folded at every probe.
const CONTACT_HOLDS: [&str; 4] = [
    "EXISTS (SELECT 1 FROM contacts probed \
      WHERE probed.id = conversations.contact_id AND (probed.search_name LIKE public.sb_fold_contains(",
    ") OR ((probed.email IS NOT NULL OR probed.phone IS NOT NULL) \
      AND public.sb_fold(coalesce(probed.email, '') || ' ' || coalesce(probed.phone, '')) \
          LIKE public.sb_fold_contains(",
    "))",
    ") OFFSET 0)",
];
/// What `CONTACT_HOLDS` adds for a text written as a phone number
/// (`contacts::phone_digits`): the customer's id holding its digits, or the
/// number an agent wrote first to being them.
const NUMBER_HOLDS: [&str; 2] = [" OR probed.external_id LIKE ", " OR probed.whatsapp_input = "];

/// `MESSAGE_HOLDS` for `text`. `OFFSET 0` keeps each probe a question per
/// conversation: without it PostgreSQL may turn it into a hash of every
/// match, the collecting the probe is there to avoid. diesel's query
/// builder has no correlated subquery.
fn message_probe(text: &str) -> Probe {
    let [holds, end] = MESSAGE_HOLDS;
    Box::new(sql::<Bool>(holds).bind::<Text, _>(text.to_string()).sql(end))
}

/// `CONTACT_HOLDS` for `text`, as [`message_probe`].
fn contact_probe(text: &str) -> Probe {
    let [holds, between, details_end, end] = CONTACT_HOLDS;
    let probe = sql::<Bool>(holds)
        .bind::<Text, _>(text.to_string())
        .sql(between)
        .bind::<Text, _>(text.to_string())
        .sql(details_end);
    match super::contacts::phone_digits(text) {
        Some(digits) => {
            let [id_holds, input_is] = NUMBER_HOLDS;
            Box::new(
                probe
                    .sql(id_holds)
                    .bind::<Text, _>(super::contains_pattern(&digits))
                    .sql(input_is)
                    .bind::<Text, _>(digits)
                    .sql(end),
            )
        }
        None => Box::new(probe.sql(end)),
    }
}

/// One conversation, with its contact's linked contacts
/// (`contact_links`).
pub fn get(tc: &mut TenantConn<'_>, user: UserId, role: Role, id: ConversationId) -> AppResult<ConversationView> {
    let row = visible_conversation(tc, user, role, id)?;
    let mut view = Names::default().conversation(tc, &row)?;
    view.contact.linked = Some(super::contact_links::linked(tc, user, role, view.contact.id)?);
    Ok(view)
}

#[derive(Debug, Default, Clone)]
pub struct Patch {
    pub status: Option<String>,
    /// `Some(None)` unassigns.
    pub assignee_id: Option<Option<UserId>>,
    pub snoozed_until: Option<Option<DateTime<Utc>>>,
    /// The whole set, replacing what it had (`[]` removes them all).
    pub labels: Option<Vec<String>>,
    /// Labels to add to, and to take from, what it has (not with `labels`):
    /// one label on a screenful at once, whatever else each has.
    pub add_labels: Vec<String>,
    pub remove_labels: Vec<String>,
    /// `Some(None)` takes the priority away.
    pub priority: Option<Option<String>>,
    /// `Some(None)` takes it from its team (`inbox::teams`).
    pub team_id: Option<Option<super::teams::TeamId>>,
}

impl Patch {
    /// Whether it may free room the queue waits for (`inbox::hand_out`):
    /// a conversation leaving someone, their load, or a team's rule. Labels
    /// and priority alone never do, so they do not wake the queue.
    pub fn may_make_room(&self) -> bool {
        self.status.is_some() || self.assignee_id.is_some() || self.snoozed_until.is_some() || self.team_id.is_some()
    }
}

/// The most conversations one bulk change takes.
pub const MOST_AT_ONCE: usize = 100;

/// Takes the row locks of conversations `ids` (those that exist) for the
/// rest of the transaction, in id order, as a webhook's batch takes them:
/// a change read after it is the conversation as it is, and another
/// change waits its turn.
///
/// Every change of a conversation locks it `FOR NO KEY UPDATE`, the lock
/// an `UPDATE` takes, never `FOR UPDATE` (kept for deleting one: an
/// erasure, retention). A row written meanwhile that names the
/// conversation (a message, a note, a notification: its foreign key's
/// check takes `FOR KEY SHARE`) then goes on beside it. Under `FOR
/// UPDATE` such a writer waited there, holding what it had already
/// written or locked (a scheduled message being sent, another
/// conversation), and a change waiting for that in turn deadlocked with
/// it (a bulk change and a reply's send, a cancel and a scheduled send).
pub(crate) fn lock(tc: &mut TenantConn<'_>, ids: &[i64]) -> AppResult<()> {
    c::table.filter(c::id.eq_any(ids)).order(c::id).select(c::id).for_no_key_update().load::<i64>(tc.pg())?;
    Ok(())
}

/// `POST /api/conversations/bulk`: the same change to each of `ids` (a
/// team resolving or assigning a screenful at once), each as
/// [`patch`] makes it (checked, audited, announced; one already so
/// unchanged), all in the caller's one transaction: a conversation the
/// caller may not see, or a change one of them refuses, and none changes
/// (the error names the conversation).
pub fn patch_many(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    ids: &[ConversationId],
    p: &Patch,
    online: &[UserId],
) -> AppResult<Vec<ConversationView>> {
    let raw: Vec<i64> = ids.iter().map(|id| id.0).collect();
    let held = match p.assignee_id {
        Some(Some(assignee)) => Some(hold_assignee(tc, assignee, &raw)?),
        _ => None,
    };
    // All of them first: two bulk changes naming the same conversations in
    // other orders would otherwise each hold one the other waits for.
    lock(tc, &raw)?;
    // So too the notices a change of hands withdraws, which each change
    // below withdraws for its own conversation (in the request's order).
    super::notifications::lock_withdrawable(tc, &raw)?;
    ids.iter()
        .map(|id| {
            patch_locked(tc, log, user, role, *id, p.clone(), online, held.as_ref()).map_err(|mut e| {
                e.message = format!("conversation {id}: {}", e.message);
                e
            })
        })
        .collect()
}

/// `PATCH /api/conversations/{id}`: `p`'s changes, checked, audited and
/// announced. `online` is who is online in the tenant now, of whom a team
/// the conversation is handed to may pick its assignee (`teams`).
pub fn patch(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: ConversationId,
    p: Patch,
    online: &[UserId],
) -> AppResult<ConversationView> {
    // Read under the row's lock: the change is worked out from what it is
    // (labels added to those there, "changes nothing" told apart), and two
    // sent at once take turns instead of both writing, auditing and
    // announcing the same change, or one losing the other's labels.
    let held = match p.assignee_id {
        Some(Some(assignee)) => Some(hold_assignee(tc, assignee, &[id.0])?),
        _ => None,
    };
    lock(tc, &[id.0])?;
    patch_locked(tc, log, user, role, id, p, online, held.as_ref())
}

/// [`patch`] of a conversation locked already, its assignee (if it names
/// one) held first (`held`, [`hold_assignee`]).
#[allow(clippy::too_many_arguments)]
pub(super) fn patch_locked(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: ConversationId,
    p: Patch,
    online: &[UserId],
    held: Option<&HeldAssignee>,
) -> AppResult<ConversationView> {
    let row = visible_conversation(tc, user, role, id)?;
    let mut status = row.status.clone();
    let mut snoozed_until = row.snoozed_until;
    let mut assignee = row.assignee_id;
    let labels = match &p.labels {
        Some(given) => normalize_labels(given)?,
        None if p.add_labels.is_empty() && p.remove_labels.is_empty() => row.labels.clone(),
        None => {
            let (add, remove) = (normalize_labels(&p.add_labels)?, normalize_labels(&p.remove_labels)?);
            if let Some(both) = add.iter().find(|l| remove.contains(l)) {
                return Err(AppError::invalid("invalid_label", format!("`{both}` is both added and removed")));
            }
            let kept = row.labels.iter().filter(|l| !remove.contains(l)).cloned();
            normalize_labels(&kept.chain(add).collect::<Vec<_>>())?
        }
    };
    if let Some(s) = &p.status {
        if !STATUSES.contains(&s.as_str()) {
            return Err(AppError::invalid("invalid_status", "status must be open, pending, snoozed or resolved"));
        }
        status = s.clone();
    }
    if let Some(until) = p.snoozed_until {
        snoozed_until = until;
        if until.is_some() && p.status.is_none() {
            status = "snoozed".into();
        }
    }
    if status == "snoozed" {
        let snooze_given = p.status.is_some() || p.snoozed_until.is_some();
        match snoozed_until {
            Some(t) if t > Utc::now() => {}
            // A snooze that ran out moments ago, left as it is by this
            // change: the clock wakes it (within 30 s, `wake_snoozed`);
            // meanwhile other changes (an assignee, labels) go ahead.
            Some(_) if !snooze_given => {}
            _ => return Err(AppError::invalid("invalid_snooze", "snoozing needs snoozed_until in the future")),
        }
    } else {
        snoozed_until = None;
    }
    if let Some(a) = p.assignee_id {
        if let Some(a) = a {
            // As found before the conversation was locked: looked at again
            // now, a change of the member under way (their removal, their
            // leaving the list) would be waited for while this holds the
            // conversation that change hands back.
            let answer = match held.and_then(|h| h.answer(a, row.channel_id)) {
                Some(answer) => answer,
                None => answerer_held(tc, a, row.channel_id, Hold::Wait)?,
            };
            match answer {
                Answerer::Yes => {}
                Answerer::No => {
                    return Err(AppError::invalid("invalid_assignee", "the assignee must be a member who can answer"))
                }
                Answerer::NotOnChannel => {
                    return Err(AppError::invalid("invalid_assignee", "the assignee cannot see this channel"))
                }
            }
        }
        assignee = a.map(|u| u.0);
    }
    // Reopened with its assignee kept (resolved, it kept them for the
    // reports): theirs again only if they may still answer it, as when the
    // customer reopens it (`ingest`). Looked at without waiting, since this
    // holds the conversation: a change of theirs under way counts as no.
    let mut reopened_without = false;
    if let (None, "resolved", false, Some(was)) = (p.assignee_id, row.status.as_str(), status == "resolved", assignee) {
        if answerer_held(tc, UserId(was), row.channel_id, Hold::Skip)? != Answerer::Yes {
            (assignee, reopened_without) = (None, true);
        }
    }
    let priority = match &p.priority {
        None => row.priority.clone(),
        Some(None) => None,
        Some(Some(given)) => Some(checked_priority(given)?),
    };
    let team = match p.team_id {
        None => row.team_id,
        Some(None) => None,
        Some(Some(t)) => Some(super::teams::existing(tc, t)?),
    };
    // Handed to a team that hands its conversations out, with no one on it
    // and no one named by this change (`teams`).
    let mut picked = None;
    if let (Some(t), None, None, false) = (team, assignee, p.assignee_id, status == "resolved") {
        if team != row.team_id {
            picked = super::teams::pick_member(tc, t, crate::channels::ChannelId(row.channel_id), online)?;
            assignee = picked.map(|u| u.0);
        }
    }
    // A retried or repeated PATCH changes nothing: no write, no event;
    // but "no one", said of one waiting in the queue with no one, takes it
    // out (`hand_out`): someone chose it so.
    let unqueued = p.assignee_id == Some(None) && row.queued_at.is_some();
    if (&status, snoozed_until, assignee, &labels, &priority, team)
        == (&row.status, row.snoozed_until, row.assignee_id, &row.labels, &row.priority, row.team_id)
        && !unqueued
    {
        return Names::default().conversation(tc, &row);
    }
    let mut updated: ConversationRow = diesel::update(c::table.find(row.id))
        .set((
            c::status.eq(&status),
            super::waiting::kept_unless(status == "resolved"),
            c::snoozed_until.eq(snoozed_until),
            c::assignee_id.eq(assignee),
            c::labels.eq(&labels),
            c::priority.eq(&priority),
            c::team_id.eq(team),
            c::updated_at.eq(diesel::dsl::now),
        ))
        .returning(ConversationRow::as_returning())
        .get_result(tc.pg())?;
    if team != row.team_id {
        audit_change(
            tc,
            user,
            id,
            "conversation.team_changed",
            json!({"from": row.team_id.map(|t| t.to_string()), "to": team.map(|t| t.to_string())}),
        )?;
    }
    if priority != row.priority {
        // Another priority, another target for the wait (`waiting`).
        if updated.waiting_since.is_some() {
            super::waiting::redue_one(tc, &mut updated)?;
        }
        audit_change(tc, user, id, "conversation.prioritized", json!({"from": row.priority, "to": priority}))?;
    }
    if status != row.status {
        audit_change(tc, user, id, "conversation.status_changed", json!({"from": row.status, "to": status}))?;
    }
    // The queue (`hand_out`): a team handed it that hands out its own found
    // nobody now, so it waits for someone; anyone on it or a deliberate
    // "no one" takes it out, as does what leaves nothing to hand it out
    // (resolved, snoozed, another team).
    let waits = match team {
        Some(t)
            if team != row.team_id
                && assignee.is_none()
                && p.assignee_id.is_none()
                && matches!(status.as_str(), "open" | "pending") =>
        {
            super::teams::assigns(tc, t)?
        }
        _ => false,
    };
    if waits {
        super::hand_out::queue(tc, &mut updated)?;
    } else if assignee != row.assignee_id || p.assignee_id.is_some() {
        super::hand_out::dequeue(tc, &mut updated)?;
    } else {
        super::hand_out::settle(tc, &mut HashMap::new(), &mut updated)?;
    }
    if let Some(agent) = picked {
        audit_auto_assigned(tc, id, agent, team, row.queued_at)?;
    } else if assignee != row.assignee_id {
        let mut details =
            json!({"from": row.assignee_id.map(|a| a.to_string()), "to": assignee.map(|a| a.to_string())});
        // Taken from the queue by hand: its wait ends too (the report's `queue`).
        if let (Some(since), Some(_)) = (row.queued_at, assignee) {
            details["queued_since"] = json!(since);
        }
        if reopened_without {
            details["by"] = json!("reopened");
        }
        audit_change(tc, user, id, "conversation.assigned", details)?;
    }
    if labels != row.labels {
        audit_change(tc, user, id, "conversation.labelled", json!({"from": row.labels, "to": labels}))?;
    }
    let view = Names::default().conversation(tc, &updated)?;
    log.append(tc, "conversation.updated", Some(updated.channel_id), Some(updated.id), &view)?;
    if row.assignee_id.is_some() && assignee != row.assignee_id {
        super::notifications::changed_hands(tc, log, &[updated.id])?;
    }
    // Someone handed a conversation by another hears of it by mail when
    // not online (`notice_mail`); the inbox shows it by the event above.
    if let Some(to) = assignee.filter(|a| Some(*a) != row.assignee_id && *a != user.0) {
        log.notice(assigned_notice(ConversationId(updated.id), UserId(to), Some(user)));
    }
    if status == "resolved" && row.status != "resolved" && super::csat::on_resolved(tc, log, &updated, user)? {
        // The survey is the conversation's last message now.
        let surveyed = super::views::conversation_row(tc, id)?;
        return Names::default().conversation(tc, &surveyed);
    }
    Ok(view)
}

/// Of `candidates`, the one to hand a new conversation of `channel`: a
/// member of the channel who answers (owner, admin or agent; not a viewer),
/// with the fewest open or pending conversations assigned (fewer than
/// `limit`, when there is one), ties to the longest-standing member (the
/// lowest id). Owners and admins see every channel but are candidates only
/// where they are listed as members.
pub fn least_busy(
    tc: &mut TenantConn<'_>,
    channel: crate::channels::ChannelId,
    candidates: &[UserId],
    limit: Option<u32>,
) -> AppResult<Option<UserId>> {
    let ids: Vec<i64> = candidates.iter().map(|u| u.0).collect();
    let listed: Vec<i64> = channel_members::table
        .filter(channel_members::channel_id.eq(channel.0))
        .filter(channel_members::user_id.eq_any(&ids))
        .select(channel_members::user_id)
        .load(tc.pg())?;
    if listed.is_empty() {
        return Ok(None);
    }
    let tenant = tc.tenant().0;
    let answering: Vec<i64> = memberships::table
        .filter(memberships::tenant_id.eq(tenant))
        .filter(memberships::user_id.eq_any(&listed))
        .filter(memberships::role.ne(Role::Viewer.as_str()))
        .select(memberships::user_id)
        .load(tc.pg())?;
    let load: Vec<(Option<i64>, i64)> = c::table
        .filter(c::assignee_id.eq_any(&answering))
        .filter(c::status.eq_any(["open", "pending"]))
        .group_by(c::assignee_id)
        .select((c::assignee_id, diesel::dsl::count_star()))
        .load(tc.pg())?;
    let busy = |user: i64| load.iter().find(|(a, _)| *a == Some(user)).map_or(0, |(_, n)| *n);
    let room = |user: &i64| limit.is_none_or(|l| busy(*user) < i64::from(l));
    Ok(answering.into_iter().filter(room).min_by_key(|u| (busy(*u), *u)).map(UserId))
}

/// Holds what says whether `assignee` may answer the conversations `ids`
/// ([`answerer_held`], waiting for a change of theirs under way), before
/// the conversations' own locks are taken: in the order a removal, a
/// demotion or a change of a channel's list takes them (the membership,
/// the list, then the member's conversations, `release`). Taken after, an
/// assignment of a conversation the member already answers held the lock
/// the change's hand-back waits for while it waited for the change, and
/// PostgreSQL ended one of the two (503 `retry`). A conversation's channel
/// never changes, so it is read here without a lock. What it found is the
/// answer for the rest of the transaction ([`HeldAssignee`]).
pub(super) fn hold_assignee(tc: &mut TenantConn<'_>, assignee: UserId, ids: &[i64]) -> AppResult<HeldAssignee> {
    let channels: Vec<i64> =
        c::table.filter(c::id.eq_any(ids)).select(c::channel_id).distinct().order(c::channel_id).load(tc.pg())?;
    let mut answers = Vec::with_capacity(channels.len());
    for channel in channels {
        // Not a member (or a viewer): the same for every channel.
        let answer = match answers.last() {
            Some((_, Answerer::No)) => Answerer::No,
            _ => answerer_held(tc, assignee, channel, Hold::Wait)?,
        };
        answers.push((channel, answer));
    }
    Ok(HeldAssignee { assignee, answers })
}

/// Whether an assignee may answer each channel, as [`hold_assignee`] found
/// it before the conversations were locked: what an assignment goes by.
/// A yes is held until the transaction ends; a no is the answer at that
/// moment, not looked at again once the conversation is held.
pub(super) struct HeldAssignee {
    assignee: UserId,
    answers: Vec<(i64, Answerer)>,
}

impl HeldAssignee {
    fn answer(&self, assignee: UserId, channel: i64) -> Option<Answerer> {
        if assignee != self.assignee {
            return None;
        }
        self.answers.iter().find(|(c, _)| *c == channel).map(|(_, a)| *a)
    }
}

/// Whether someone may be given a conversation of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answerer {
    Yes,
    /// Not a member, or a viewer (who answers nothing).
    No,
    /// An agent not listed on the channel.
    NotOnChannel,
}

/// How [`answerer_held`] meets a change of the member under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hold {
    /// Waits for it, and answers as it left things: a person assigning is
    /// told the truth.
    Wait,
    /// Takes the member for one who cannot answer now: the server's own
    /// assignments pick no one rather than wait in the middle of a batch.
    Skip,
}

/// Whether `user` may answer conversations of `channel` (a member who is
/// no viewer and, unless an admin or owner, on the channel's list),
/// holding what says so (`FOR SHARE`) until the transaction ends. So an
/// assignment cannot slip past the member's removal, a demotion or their
/// leaving the channel's list: one under way waits for the assignment and
/// then hands the conversation back with their others (`release`), and
/// one that came first is seen. Read without the hold, a removal that
/// committed between this check and the assignment's commit left the
/// conversation with someone no longer in the tenant.
pub(super) fn answerer_held(tc: &mut TenantConn<'_>, user: UserId, channel: i64, hold: Hold) -> AppResult<Answerer> {
    let tenant = tc.tenant().0;
    let membership = memberships::table.find((user.0, tenant)).select(memberships::role).for_share();
    let role: Option<String> = match hold {
        Hold::Wait => membership.first(tc.pg()).optional()?,
        Hold::Skip => membership.skip_locked().first(tc.pg()).optional()?,
    };
    let Some(role) = role.as_deref().and_then(Role::parse).filter(|r| r.can_write()) else {
        return Ok(Answerer::No);
    };
    if role.at_least(Role::Admin) {
        return Ok(Answerer::Yes);
    }
    let listed = channel_members::table
        .filter(channel_members::channel_id.eq(channel))
        .filter(channel_members::user_id.eq(user.0))
        .select(channel_members::user_id)
        .for_share();
    let listed: Option<i64> = match hold {
        Hold::Wait => listed.first(tc.pg()).optional()?,
        Hold::Skip => listed.skip_locked().first(tc.pg()).optional()?,
    };
    Ok(if listed.is_some() { Answerer::Yes } else { Answerer::NotOnChannel })
}

/// The ids of the unresolved conversations [`release`] hands back for
/// `member` (`which`), read without a lock.
pub fn answered(tc: &mut TenantConn<'_>, member: UserId, which: Released) -> AppResult<Vec<i64>> {
    let theirs = c::table.filter(c::assignee_id.eq(member.0)).filter(c::status.ne("resolved")).order(c::id);
    let listed =
        channel_members::table.filter(channel_members::user_id.eq(member.0)).select(channel_members::channel_id);
    Ok(match which {
        Released::All => theirs.select(c::id).load(tc.pg())?,
        Released::Of(channel) => theirs.filter(c::channel_id.eq(channel)).select(c::id).load(tc.pg())?,
        Released::Unlisted => {
            theirs.filter(diesel::dsl::not(c::channel_id.eq_any(listed))).select(c::id).load(tc.pg())?
        }
    })
}

/// Locks, all at once and in id order, the conversations [`release`]
/// hands back for each of `members` (`which`): taken before it, as every
/// caller of it does. One member's after another's, a bulk change holding
/// one of the first's and waiting for one of the second's deadlocked with
/// it.
pub fn lock_answered(tc: &mut TenantConn<'_>, members: &[UserId], which: Released) -> AppResult<()> {
    let mut ids = Vec::new();
    for member in members {
        ids.extend(answered(tc, *member, which)?);
    }
    lock(tc, &ids)
}

/// Which of a member's conversations [`release`] hands back.
#[derive(Debug, Clone, Copy)]
pub enum Released {
    /// Every one: they left the tenant, or may no longer answer (viewer).
    All,
    /// Those of a channel they no longer see.
    Of(i64),
    /// Those of the channels they are not listed on: an admin who became
    /// an agent sees only those.
    Unlisted,
}

/// Takes `member`'s unresolved conversations (those `which` names) back
/// to the queue: they left the tenant, lost the channel, or may no longer
/// answer, and a customer must not wait on someone who will not. Each is
/// audited (`conversation.assigned` with `by`: why); resolved ones keep
/// their assignee for the reports. One open or pending whose channel (or
/// team) hands conversations out goes at once to someone else of `online`
/// as a conversation the customer opens would ([`repick`]), or, with
/// nobody there, waits in the queue for someone (`hand_out`); the rest
/// wait unassigned. Each is announced once, as it ends up
/// (`conversation.updated`). Locked in id order, as the webhook path
/// locks. `actor` is `None` for an operator's command. How many were
/// released.
pub fn release(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    actor: Option<UserId>,
    member: UserId,
    which: Released,
    why: &str,
    online: &[UserId],
) -> AppResult<usize> {
    // Locked by the caller already, in id order with everything else it
    // writes (`lock_answered`, a removal's lock). One
    // that became theirs only since (a resolved one reopened by a
    // transaction still under way) is left to that transaction: waited
    // for here, out of order, it deadlocked with a bulk change.
    let found = answered(tc, member, which)?;
    let ids: Vec<i64> = c::table
        .filter(c::id.eq_any(&found))
        .filter(c::assignee_id.eq(member.0))
        .filter(c::status.ne("resolved"))
        .order(c::id)
        .select(c::id)
        .for_no_key_update()
        .skip_locked()
        .load(tc.pg())?;
    if ids.is_empty() {
        return Ok(0);
    }
    let released: Vec<ConversationRow> = diesel::update(c::table.filter(c::id.eq_any(&ids)))
        .set((c::assignee_id.eq(None::<i64>), c::updated_at.eq(diesel::dsl::now)))
        .returning(ConversationRow::as_returning())
        .get_results(tc.pg())?;
    let others: Vec<UserId> = online.iter().copied().filter(|u| *u != member).collect();
    let mut rules = HashMap::new();
    let mut names = Names::default();
    for mut row in released.iter().cloned() {
        let id = ConversationId(row.id);
        let details = json!({"from": member.to_string(), "to": null, "by": why});
        audit::record(tc, actor, "conversation.assigned", "conversation", Some(id.to_string()), details)?;
        give_or_queue(tc, log, &mut rules, &mut row, &others)?;
        let view = names.conversation(tc, &row)?;
        log.append(tc, "conversation.updated", Some(row.channel_id), Some(row.id), &view)?;
    }
    super::notifications::changed_hands(tc, log, &ids)?;
    Ok(released.len())
}

/// What [`repick`] found for a conversation with no one on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Picked {
    /// This member, and the team whose own rule picked them (`None`: the
    /// channel's).
    Agent(UserId, Option<i64>),
    /// Its channel or team hands it out, but nobody of the candidates can
    /// take it now: it waits in the queue (`hand_out`).
    Nobody,
    /// Nothing hands it out (no rule on, or it is not open or pending: a
    /// snoozed one waits for its time).
    NoRule,
}

/// Who of `candidates` (online) takes `row`, which has no one on it: as
/// for a conversation the customer opens (`ingest`), the channel's
/// `auto_assign` (among its team's members when it has one), or else its
/// team's own `auto_assign`; the least busy who is listed on the channel
/// and answers, within the channel's `auto_assign_limit`. `rules` keeps
/// each channel's settings read once.
pub fn repick(
    tc: &mut TenantConn<'_>,
    rules: &mut HashMap<i64, (bool, Option<u32>)>,
    row: &ConversationRow,
    candidates: &[UserId],
) -> AppResult<Picked> {
    if !matches!(row.status.as_str(), "open" | "pending") {
        return Ok(Picked::NoRule);
    }
    let channel = crate::channels::ChannelId(row.channel_id);
    let (channel_assigns, limit) = channel_rule(tc, rules, row.channel_id)?;
    let by_team = match row.team_id {
        Some(team) if !channel_assigns && super::teams::assigns(tc, team)? => Some(team),
        _ if channel_assigns => None,
        _ => return Ok(Picked::NoRule),
    };
    let among = match row.team_id {
        Some(team) if !candidates.is_empty() => super::teams::members_among(tc, team, candidates)?,
        _ => candidates.to_vec(),
    };
    if among.is_empty() {
        return Ok(Picked::Nobody);
    }
    Ok(match least_busy(tc, channel, &among, limit)? {
        Some(agent) => Picked::Agent(agent, by_team),
        None => Picked::Nobody,
    })
}

/// A channel's `auto_assign` and `auto_assign_limit`, read once into
/// `rules`.
pub(super) fn channel_rule(
    tc: &mut TenantConn<'_>,
    rules: &mut HashMap<i64, (bool, Option<u32>)>,
    channel: i64,
) -> AppResult<(bool, Option<u32>)> {
    if let Some(rule) = rules.get(&channel) {
        return Ok(*rule);
    }
    let s = crate::channels::find(tc, crate::channels::ChannelId(channel))?.settings();
    Ok(*rules.entry(channel).or_insert((s.auto_assign, s.auto_assign_limit)))
}

/// Hands `row`, which has no one on it, out as its channel's or team's
/// rule would one the customer opens ([`repick`] among `online`): given,
/// or, with nobody to take it, in the queue (`hand_out`); with no rule
/// on, left as it is. The caller announces it.
pub(super) fn give_or_queue(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    rules: &mut HashMap<i64, (bool, Option<u32>)>,
    row: &mut ConversationRow,
    online: &[UserId],
) -> AppResult<()> {
    match repick(tc, rules, row, online)? {
        Picked::Agent(agent, team) => give(tc, log, row, agent, team).map(|_| ()),
        Picked::Nobody => super::hand_out::queue(tc, row),
        Picked::NoRule => Ok(()),
    }
}

/// Gives `row`, which has no one on it, to `agent` by the server's rule
/// (`team`'s, or the channel's; [`repick`]): written, out of the queue,
/// audited (with since when it was queued, for the report's `queue`); the
/// caller announces it. An agent whose membership or place on the channel
/// is changing at that moment is not given it: it waits in the queue for
/// the next hand-out (`false`).
pub(super) fn give(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    row: &mut ConversationRow,
    agent: UserId,
    team: Option<i64>,
) -> AppResult<bool> {
    if answerer_held(tc, agent, row.channel_id, Hold::Skip)? != Answerer::Yes {
        super::hand_out::queue(tc, row)?;
        return Ok(false);
    }
    diesel::update(c::table.find(row.id))
        .set((c::assignee_id.eq(agent.0), c::queued_at.eq(None::<DateTime<Utc>>), c::updated_at.eq(diesel::dsl::now)))
        .execute(tc.pg())?;
    audit_auto_assigned(tc, ConversationId(row.id), agent, team, row.queued_at)?;
    log.notice(assigned_notice(ConversationId(row.id), agent, None));
    row.assignee_id = Some(agent.0);
    row.queued_at = None;
    Ok(true)
}

/// Assigns a conversation no one has to `agent` of `channel`, by the
/// server (the audit entry has no actor). A conversation someone took
/// meanwhile keeps them; an agent whose membership or place on the channel
/// is changing at that moment is not given it.
pub fn assign_automatically(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    id: ConversationId,
    agent: UserId,
    channel: i64,
) -> AppResult<bool> {
    if answerer_held(tc, agent, channel, Hold::Skip)? != Answerer::Yes {
        return Ok(false);
    }
    let n = diesel::update(c::table.find(id.0).filter(c::assignee_id.is_null()))
        .set((c::assignee_id.eq(agent.0), c::queued_at.eq(None::<DateTime<Utc>>)))
        .execute(tc.pg())?;
    if n > 0 {
        audit_auto_assigned(tc, id, agent, None, None)?;
        log.notice(assigned_notice(id, agent, None));
    }
    Ok(n > 0)
}

/// The audit entry of `user`'s change to conversation `id`.
fn audit_change(
    tc: &mut TenantConn<'_>,
    user: UserId,
    id: ConversationId,
    action: &str,
    details: serde_json::Value,
) -> AppResult<()> {
    Ok(audit::record(tc, Some(user), action, "conversation", Some(id.to_string()), details)?)
}

/// What tells `to` they were given conversation `id`, by a colleague (a
/// team's rule picking them for a colleague's hand-over counts as the
/// colleague's) or (`None`) by the server's auto-assign: kept in their
/// notifications, and a colleague's mailed when they are not online
/// (`notice_mail`).
fn assigned_notice(id: ConversationId, to: UserId, by: Option<UserId>) -> serde_json::Value {
    json!({"kind": "assigned", "user_id": to.to_string(), "by": by.map(|u| u.to_string()),
           "conversation_id": id.to_string()})
}

/// The audit entry of an assignment by the server (no actor): by the
/// channel's auto-assign, or by `team`'s (`teams`).
fn audit_auto_assigned(
    tc: &mut TenantConn<'_>,
    id: ConversationId,
    agent: UserId,
    team: Option<i64>,
    queued_since: Option<DateTime<Utc>>,
) -> AppResult<()> {
    let mut details = json!({"from": null, "to": agent.to_string(), "by": "auto_assign"});
    if let Some(team) = team {
        details["team_id"] = json!(team.to_string());
    }
    if let Some(since) = queued_since {
        details["queued_since"] = json!(since);
    }
    Ok(audit::record(tc, None, "conversation.assigned", "conversation", Some(id.to_string()), details)?)
}

/// Most labels on one conversation, and the longest label.
pub const MOST_LABELS: usize = 20;
pub const MOST_LABEL_CHARS: usize = 50;

/// One label as stored: trimmed, lower case, inner spaces as one; 1 to
/// [`MOST_LABEL_CHARS`] characters, no control characters and no comma
/// (clients list labels with commas).
pub fn normalize_label(raw: &str) -> AppResult<String> {
    let label = raw.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    let bad = |why: &str| AppError::invalid("invalid_label", format!("{why}: {raw:?}"));
    if label.is_empty() || label.chars().count() > MOST_LABEL_CHARS {
        return Err(bad(&format!("a label is 1 to {MOST_LABEL_CHARS} characters")));
    }
    if label.chars().any(|ch| ch.is_control() || ch == ',') {
        return Err(bad("a label holds no comma and no control character"));
    }
    Ok(label)
}

/// A set of labels as stored: each normalized, once, sorted; at most
/// [`MOST_LABELS`].
pub fn normalize_labels(raw: &[String]) -> AppResult<Vec<String>> {
    let mut labels = raw.iter().map(|l| normalize_label(l)).collect::<AppResult<Vec<_>>>()?;
    labels.sort();
    labels.dedup();
    if labels.len() > MOST_LABELS {
        return Err(AppError::invalid("invalid_label", format!("a conversation has at most {MOST_LABELS} labels")));
    }
    Ok(labels)
}

/// A label in use, and on how many conversations.
#[derive(Debug, serde::Serialize, QueryableByName, PartialEq)]
pub struct LabelCount {
    #[diesel(sql_type = Text)]
    pub label: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub conversations: i64,
}

/// The most labels `GET /api/labels` lists.
pub const MOST_LABELS_LISTED: i64 = 200;

/// `GET /api/labels`: the labels on the conversations the caller may see,
/// most used first, for a client to offer as it types. One pass over the
/// tenant's conversations (no index, as for the filter).
pub fn labels_in_use(tc: &mut TenantConn<'_>, user: UserId, role: Role) -> AppResult<Vec<LabelCount>> {
    Ok(diesel::sql_query(
        "SELECT l AS label, count(*) AS conversations \
           FROM conversations c CROSS JOIN LATERAL unnest(c.labels) AS l \
          WHERE $1 OR c.channel_id IN (SELECT channel_id FROM channel_members WHERE user_id = $2) \
          GROUP BY l ORDER BY count(*) DESC, l LIMIT $3",
    )
    .bind::<Bool, _>(role.at_least(Role::Admin))
    .bind::<diesel::sql_types::BigInt, _>(user.0)
    .bind::<diesel::sql_types::BigInt, _>(MOST_LABELS_LISTED)
    .load(tc.pg())?)
}

/// Marks the conversation read and queues the platform's "seen" signal.
pub fn mark_read(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: ConversationId,
) -> AppResult<bool> {
    // The conversation before what hangs off it (the reader's
    // notifications of it), as a removal takes them: the other way round,
    // a read by someone being removed held their notifications while it
    // waited for the conversation, which the removal held while it waited
    // for those notifications.
    lock(tc, &[id.0])?;
    let row = visible_conversation(tc, user, role, id)?;
    // Looking at it is seeing what one was told of it.
    super::notifications::mark_read(tc, log, user, role, super::notifications::Which::Conversation(id))?;
    if row.unread_count == 0 || !set_unread(tc, log, row.id, false)? {
        return Ok(false);
    }
    super::sender::queue(tc, super::sender::SendKind::MarkSeen, row.id, None)?;
    Ok(true)
}

/// Marks conversation `id` read (`unread` false: its unread count to 0)
/// or unread (to 1, from 0), announced, if it is not so already when its
/// turn comes (a read sent twice at once: the second finds it done);
/// whether it changed.
fn set_unread(tc: &mut TenantConn<'_>, log: &mut EventLog, id: i64, unread: bool) -> AppResult<bool> {
    let updated: Option<ConversationRow> = diesel::update(c::table.find(id).filter(c::unread_count.eq(0).eq(unread)))
        .set((c::unread_count.eq(i32::from(unread)), c::updated_at.eq(diesel::dsl::now)))
        .returning(ConversationRow::as_returning())
        .get_result(tc.pg())
        .optional()?;
    let Some(updated) = updated else { return Ok(false) };
    announce(tc, log, std::slice::from_ref(&updated))?;
    Ok(true)
}

/// `POST /api/conversations/{id}/unread`: marks it unread again for the
/// team (an unread count of 0 becomes 1; one already unread stays as it
/// is), so it stands out in the list to come back to. Meta is not told:
/// a "seen" sent to the customer cannot be taken back. Whether it changed.
pub fn mark_unread(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: ConversationId,
) -> AppResult<bool> {
    let row = visible_conversation(tc, user, role, id)?;
    if row.unread_count > 0 {
        return Ok(false);
    }
    set_unread(tc, log, row.id, true)
}

/// Wakes snoozed conversations whose time has come (one with no one on it
/// handed out among `online`, or queued, as [`give_or_queue`] does);
/// returns how many.
///
/// Taken in id order, passing over one another transaction holds (woken
/// at a later tick), as `auto_resolve` does: the clock's rounds share a
/// transaction, so waiting for one while holding others deadlocked with a
/// change holding it and waiting for those.
pub fn wake_snoozed(tc: &mut TenantConn<'_>, log: &mut EventLog, online: &[UserId]) -> AppResult<usize> {
    let due: Vec<i64> = c::table
        .filter(c::status.eq("snoozed"))
        .filter(c::snoozed_until.le(Utc::now()))
        .order(c::id)
        .select(c::id)
        .for_no_key_update()
        .skip_locked()
        .load(tc.pg())?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut woken: Vec<ConversationRow> = diesel::update(c::table.filter(c::id.eq_any(&due)))
        .set((c::status.eq("open"), c::snoozed_until.eq(None::<DateTime<Utc>>), c::updated_at.eq(diesel::dsl::now)))
        .returning(ConversationRow::as_returning())
        .get_results(tc.pg())?;
    woken.sort_by_key(|r| r.id);
    // One that wakes with no one on it (its assignee handed it back while
    // it slept) is handed out as one the customer reopens would be.
    let mut rules = HashMap::new();
    for row in woken.iter_mut().filter(|r| r.assignee_id.is_none()) {
        give_or_queue(tc, log, &mut rules, row, online)?;
    }
    announce(tc, log, &woken)?;
    Ok(woken.len())
}

/// Logs `conversation.updated` with the summary of each conversation.
pub fn announce(tc: &mut TenantConn<'_>, log: &mut EventLog, rows: &[ConversationRow]) -> AppResult<()> {
    let views = Names::default().conversations(tc, rows)?;
    for (row, view) in rows.iter().zip(&views) {
        log.append(tc, "conversation.updated", Some(row.channel_id), Some(row.id), view)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_change_of_who_or_what_state_may_make_room() {
        let labels = Patch { add_labels: vec!["vip".into()], priority: Some(Some("high".into())), ..Patch::default() };
        assert!(!labels.may_make_room());
        assert!(!Patch::default().may_make_room());
        for p in [
            Patch { status: Some("resolved".into()), ..labels.clone() },
            Patch { assignee_id: Some(None), ..Patch::default() },
            Patch { snoozed_until: Some(Some(Utc::now())), ..Patch::default() },
            Patch { team_id: Some(None), ..Patch::default() },
        ] {
            assert!(p.may_make_room(), "{p:?}");
        }
    }
}
