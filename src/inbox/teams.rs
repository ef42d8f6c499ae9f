//! Teams: named groups of members ("Billing", "Night shift") that a
//! conversation is handed to, beside or instead of one person, so a group
//! can work from "our team's conversations" (an extension).
//!
//! Decisions:
//! - Admins make, rename and delete teams and choose their members (any
//!   member of the tenant); every member lists them (`GET /api/teams`,
//!   with `member_ids`). A name is 1 to [`MOST_NAME_CHARS`] characters,
//!   once per tenant whatever its case (409 `team_name_taken`); a
//!   description up to [`MOST_DESCRIPTION_CHARS`]; at most [`MOST_TEAMS`]
//!   teams (409 `too_many_teams`). A create repeated with the same name,
//!   description and members answers the team made (200), so a retry
//!   makes one.
//! - A conversation has at most one team (`team_id`), set or taken away by
//!   anyone who may change the conversation (`PATCH
//!   /api/conversations/{id}` `{team_id}`, the bulk change, a macro's
//!   `assign_team`), apart from its assignee: the team takes the
//!   conversation, one of them answers it. A team does not widen who sees
//!   a channel: that stays per member (`PUT /api/channels/{id}/members`).
//! - The list filters by `team=<id>`, `team=none` or `team=mine` (the
//!   teams the caller is in; saved views keep it as they keep `assignee=me`).
//! - A channel may name a team (`settings.team_id`): a conversation of it
//!   that opens (new, or reopened by the customer) with no team is handed
//!   to it, by the server (audited with `by: channel`), and the channel's
//!   `auto_assign` then picks among that team's members only (online, and
//!   listed on the channel); none of them there, it waits in the queue
//!   (`hand_out`).
//! - A team may hand its conversations out itself (`auto_assign`, off by
//!   default): one handed to it (a PATCH, the bulk change, a macro, or its
//!   channel's team) that has no one on it and is not resolved goes to the
//!   least busy of its members online who are listed on the channel and
//!   answer, within the channel's `auto_assign_limit` (audited `by:
//!   auto_assign`); none of them there, it waits in the queue for one
//!   (`hand_out`). A change that
//!   names an assignee, or unassigns, with the team keeps that. One of the
//!   team's that the customer opens or reopens with no one on it is picked
//!   for the same way, as the channel's own `auto_assign` would (which,
//!   with a team, already picks among the team); so is one its assignee
//!   hands back on leaving (`conversations::release`).
//! - Deleting a team takes it off its conversations, each announced as
//!   `conversation.updated`, and off the channels naming it (each a
//!   `channel.updated`); a member who leaves the tenant leaves its teams.
//! - Every member's socket hears of teams (tenant-wide events, logged and
//!   replayed like the rest): `team.updated` with the team when one is
//!   made or changed (its members too, a member's leaving included),
//!   `team.deleted` `{id}`; a conversation's team is in its own frames.
//! - Audited: `team.created`, `team.updated`, `team.members_changed`,
//!   `team.deleted`, and `conversation.team_changed`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use serde_json::json;

use super::events::EventLog;
use super::views::{ConversationRow, Names};
use crate::audit;
use crate::auth::members;
use crate::db::tenant_schema::{channels as ch, conversations as c, team_members as tm, teams as t};
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

crate::id_type!(
    /// A team, inside one tenant.
    TeamId
);

pub const MOST_NAME_CHARS: usize = 100;
pub const MOST_DESCRIPTION_CHARS: usize = 1_000;
/// The most teams a tenant keeps.
pub const MOST_TEAMS: i64 = 100;

/// A team as listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TeamView {
    pub id: TeamId,
    pub name: String,
    pub description: String,
    /// Its members, by user id (ascending).
    pub member_ids: Vec<UserId>,
    /// Whether a conversation handed to it with no one on it goes to the
    /// least busy of its members online ([module docs](self)).
    pub auto_assign: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = t)]
struct Row {
    id: i64,
    name: String,
    description: String,
    auto_assign: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

fn not_found() -> AppError {
    AppError::not_found("team")
}

fn checked_name(raw: &str) -> AppResult<String> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > MOST_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(AppError::invalid(
            "invalid_name",
            format!("a team's name is 1 to {MOST_NAME_CHARS} characters, without control characters"),
        ));
    }
    Ok(name.to_string())
}

fn checked_description(raw: &str) -> AppResult<String> {
    let description = raw.trim();
    if description.chars().count() > MOST_DESCRIPTION_CHARS {
        return Err(AppError::invalid(
            "invalid_description",
            format!("a team's description is at most {MOST_DESCRIPTION_CHARS} characters"),
        ));
    }
    Ok(description.to_string())
}

fn member_ids(tc: &mut TenantConn<'_>, team: i64) -> AppResult<Vec<UserId>> {
    let ids: Vec<i64> = tm::table.filter(tm::team_id.eq(team)).order(tm::user_id).select(tm::user_id).load(tc.pg())?;
    Ok(ids.into_iter().map(UserId).collect())
}

fn view(tc: &mut TenantConn<'_>, row: Row) -> AppResult<TeamView> {
    let member_ids = member_ids(tc, row.id)?;
    Ok(TeamView {
        id: TeamId(row.id),
        name: row.name,
        description: row.description,
        member_ids,
        auto_assign: row.auto_assign,
        created_at: row.created_at,
        updated_at: row.updated_at,
    })
}

/// Team `id`, locked until the transaction ends so that changes of it take
/// turns: `FOR NO KEY UPDATE`, which lets a conversation written meanwhile
/// name the team (its foreign key's check, `FOR KEY SHARE`). Taken `FOR
/// UPDATE` before the team's conversations, as it once was, it made a
/// webhook batch holding its conversations wait at that check for a
/// change of the team (`auto_assign` turned on or off) that waited for the
/// same conversations to hand them out or settle them, and PostgreSQL
/// ended one of the two. A change of `auto_assign` now takes the
/// conversations first, then the team `FOR UPDATE`
/// ([`take_with_conversations`]).
fn row(tc: &mut TenantConn<'_>, id: TeamId) -> AppResult<Row> {
    t::table.find(id.0).select(Row::as_select()).for_no_key_update().first(tc.pg()).optional()?.ok_or_else(not_found)
}

/// Every team, by name.
pub fn list(tc: &mut TenantConn<'_>) -> AppResult<Vec<TeamView>> {
    let rows: Vec<Row> = t::table.order((t::name, t::id)).select(Row::as_select()).load(tc.pg())?;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let pairs: Vec<(i64, i64)> = tm::table
        .filter(tm::team_id.eq_any(&ids))
        .order((tm::team_id, tm::user_id))
        .select((tm::team_id, tm::user_id))
        .load(tc.pg())?;
    Ok(rows
        .into_iter()
        .map(|r| TeamView {
            member_ids: pairs.iter().filter(|(team, _)| *team == r.id).map(|(_, u)| UserId(*u)).collect(),
            id: TeamId(r.id),
            name: r.name,
            description: r.description,
            auto_assign: r.auto_assign,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
        .collect())
}

pub fn get(tc: &mut TenantConn<'_>, id: TeamId) -> AppResult<TeamView> {
    let row = t::table.find(id.0).select(Row::as_select()).first(tc.pg()).optional()?.ok_or_else(not_found)?;
    view(tc, row)
}

/// What a new team is.
pub struct NewTeam {
    pub name: String,
    pub description: String,
    pub member_ids: Vec<UserId>,
    pub auto_assign: bool,
}

/// `POST /api/teams`: the team, and whether it was made now (`false`: the
/// same create again).
pub fn create(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    actor: UserId,
    new: &NewTeam,
) -> AppResult<(TeamView, bool)> {
    let name = checked_name(&new.name)?;
    let description = checked_description(&new.description)?;
    let listed = members::all_members(tc, &new.member_ids)?;
    // Two creates at once would both count 99, or both find the name free.
    let tenant = tc.tenant().0;
    crate::db::locks::hold(tc.pg(), crate::db::locks::LockClass::Teams, &tenant.to_string())?;
    if let Some(same) = named(tc, &name)? {
        let same = view(tc, same)?;
        let wanted: Vec<UserId> = listed.iter().copied().map(UserId).collect();
        if same.name == name
            && same.description == description
            && same.member_ids == wanted
            && same.auto_assign == new.auto_assign
        {
            return Ok((same, false));
        }
        return Err(taken());
    }
    let count: i64 = t::table.count().get_result(tc.pg())?;
    if count >= MOST_TEAMS {
        return Err(AppError::conflict("too_many_teams", format!("a tenant keeps at most {MOST_TEAMS} teams")));
    }
    let row: Row = diesel::insert_into(t::table)
        .values((t::name.eq(&name), t::description.eq(&description), t::auto_assign.eq(new.auto_assign)))
        .returning(Row::as_returning())
        .get_result(tc.pg())
        .map_err(name_clash)?;
    let values: Vec<_> = listed.iter().map(|u| (tm::team_id.eq(row.id), tm::user_id.eq(*u))).collect();
    if !values.is_empty() {
        diesel::insert_into(tm::table).values(&values).execute(tc.pg())?;
    }
    audit::record(
        tc,
        Some(actor),
        "team.created",
        "team",
        Some(row.id.to_string()),
        json!({"name": name, "member_ids": listed.iter().map(i64::to_string).collect::<Vec<_>>(),
            "auto_assign": new.auto_assign}),
    )?;
    let made = view(tc, row)?;
    log.append(tc, "team.updated", None, None, &made)?;
    Ok((made, true))
}

fn taken() -> AppError {
    AppError::conflict("team_name_taken", "another team has this name")
}

/// A write that met the unique name (a rename racing this one): 409.
fn name_clash(e: diesel::result::Error) -> AppError {
    match e {
        diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _) => taken(),
        e => e.into(),
    }
}

/// The team called `name`, whatever its case.
fn named(tc: &mut TenantConn<'_>, name: &str) -> AppResult<Option<Row>> {
    Ok(t::table
        .filter(diesel::dsl::sql::<diesel::sql_types::Text>("lower(name)").eq(name.to_lowercase()))
        .select(Row::as_select())
        .first(tc.pg())
        .optional()?)
}

/// What `PATCH /api/teams/{id}` changes; left out, kept.
#[derive(Default)]
pub struct TeamChange<'a> {
    pub name: Option<&'a str>,
    pub description: Option<&'a str>,
    pub auto_assign: Option<bool>,
}

/// `PATCH /api/teams/{id}` `{name?, description?, auto_assign?}`; the same
/// values again change nothing.
pub fn update(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    actor: UserId,
    id: TeamId,
    change: TeamChange<'_>,
    online: &[UserId],
) -> AppResult<TeamView> {
    let name = change.name.map(checked_name).transpose()?;
    let description = change.description.map(checked_description).transpose()?;
    // Turning `auto_assign` on or off hands its conversations out or
    // back: they go before the team, in id order, as a bulk change takes
    // them before the team it names (and as `delete` does). Taken after,
    // one a change held as it waited for the team deadlocked with this.
    // Whenever `auto_assign` is given, even as it is: whether it changes is
    // known only once the team is locked (read before, another change
    // could turn it in between, and this one then hand out after taking
    // the team). The team is then held `FOR UPDATE`, so that none is handed
    // to it until this lands: one handed to it meanwhile by a change that
    // read the rule as it was (off) was otherwise passed over, held by that
    // change, and waited with no one until someone took it.
    let current = if change.auto_assign.is_some() { take_with_conversations(tc, id)? } else { row(tc, id)? };
    let new_name = name.unwrap_or_else(|| current.name.clone());
    let new_description = description.unwrap_or_else(|| current.description.clone());
    let auto_assign = change.auto_assign.unwrap_or(current.auto_assign);
    if (&new_name, &new_description, auto_assign) == (&current.name, &current.description, current.auto_assign) {
        return view(tc, current);
    }
    if new_name.to_lowercase() != current.name.to_lowercase() && named(tc, &new_name)?.is_some() {
        return Err(taken());
    }
    let updated: Row = diesel::update(t::table.find(id.0))
        .set((
            t::name.eq(&new_name),
            t::description.eq(&new_description),
            t::auto_assign.eq(auto_assign),
            t::updated_at.eq(diesel::dsl::now),
        ))
        .returning(Row::as_returning())
        .get_result(tc.pg())
        .map_err(name_clash)?;
    let mut fields = Vec::new();
    if new_name != current.name {
        fields.push("name");
    }
    if new_description != current.description {
        fields.push("description");
    }
    if auto_assign != current.auto_assign {
        fields.push("auto_assign");
    }
    audit::record(
        tc,
        Some(actor),
        "team.updated",
        "team",
        Some(id.to_string()),
        json!({"fields": fields, "from": current.name, "to": new_name}),
    )?;
    // Turned off: what waited for the team to hand it out waits no more,
    // unless its channel hands it out. Turned on: what no rule covered is
    // handed out (among `online`) as the team's rule now would (`hand_out`;
    // read as now written).
    if current.auto_assign && !auto_assign {
        super::hand_out::settle_all(tc, log, super::hand_out::Waiting::OfTeam(id.0))?;
    } else if !current.auto_assign && auto_assign {
        super::hand_out::take_up(tc, log, super::hand_out::Waiting::OfTeam(id.0), online)?;
    }
    let changed = view(tc, updated)?;
    log.append(tc, "team.updated", None, None, &changed)?;
    Ok(changed)
}

/// `PUT /api/teams/{id}/members` `{user_ids}`: the whole set.
pub fn set_members(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    actor: UserId,
    id: TeamId,
    user_ids: &[UserId],
) -> AppResult<TeamView> {
    let current = row(tc, id)?;
    let wanted = members::all_members(tc, user_ids)?;
    let had: Vec<i64> = member_ids(tc, id.0)?.into_iter().map(|u| u.0).collect();
    if had == wanted {
        return view(tc, current);
    }
    diesel::delete(tm::table.filter(tm::team_id.eq(id.0)).filter(tm::user_id.ne_all(&wanted))).execute(tc.pg())?;
    let values: Vec<_> = wanted.iter().map(|u| (tm::team_id.eq(id.0), tm::user_id.eq(*u))).collect();
    if !values.is_empty() {
        diesel::insert_into(tm::table).values(&values).on_conflict_do_nothing().execute(tc.pg())?;
    }
    diesel::update(t::table.find(id.0)).set(t::updated_at.eq(diesel::dsl::now)).execute(tc.pg())?;
    let ids = |v: &[i64]| v.iter().map(i64::to_string).collect::<Vec<_>>();
    let added: Vec<i64> = wanted.iter().filter(|u| !had.contains(u)).copied().collect();
    let removed: Vec<i64> = had.iter().filter(|u| !wanted.contains(u)).copied().collect();
    audit::record(
        tc,
        Some(actor),
        "team.members_changed",
        "team",
        Some(id.to_string()),
        json!({"added": ids(&added), "removed": ids(&removed)}),
    )?;
    let changed = get(tc, id)?;
    log.append(tc, "team.updated", None, None, &changed)?;
    Ok(changed)
}

/// `DELETE /api/teams/{id}`: taken off its conversations (each announced),
/// then gone.
pub fn delete(tc: &mut TenantConn<'_>, log: &mut EventLog, actor: UserId, id: TeamId) -> AppResult<()> {
    // Before the team is touched: a channel's change holds its settings
    // before the team its rules name.
    let held = crate::channels::change_all_settings(tc)?;
    let current = take_with_conversations(tc, id)?;
    let mut freed: Vec<ConversationRow> = diesel::update(c::table.filter(c::team_id.eq(id.0)))
        .set((c::team_id.eq(None::<i64>), c::updated_at.eq(diesel::dsl::now)))
        .returning(ConversationRow::as_returning())
        .get_results(tc.pg())?;
    let mut names = Names::default();
    let mut rules = std::collections::HashMap::new();
    for conversation in &mut freed {
        // One that waited for the team waits on only if its channel hands
        // it out (`hand_out`).
        super::hand_out::settle(tc, &mut rules, conversation)?;
        let view = names.conversation(tc, conversation)?;
        log.append(tc, "conversation.updated", Some(conversation.channel_id), Some(conversation.id), &view)?;
    }
    // Channels that hand their conversations to it hand them to none.
    let channels: Vec<i64> =
        diesel::update(ch::table.filter(ch::settings.retrieve_as_text("team_id").eq(id.to_string())))
            .set((ch::settings.eq(ch::settings.remove("team_id")), ch::updated_at.eq(diesel::dsl::now)))
            .returning(ch::id)
            .get_results(tc.pg())?;
    for channel in channels {
        crate::channels::announce_settings(tc, log, crate::channels::ChannelId(channel))?;
    }
    super::routing::forget_team(tc, log, &held, id.0)?;
    diesel::delete(t::table.find(id.0)).execute(tc.pg())?;
    audit::record(
        tc,
        Some(actor),
        "team.deleted",
        "team",
        Some(id.to_string()),
        json!({"name": current.name, "conversations": freed.len()}),
    )?;
    log.append(tc, "team.deleted", None, None, json!({"id": id}))?;
    Ok(())
}

/// Times a deletion, or a change of `auto_assign`, takes the team's
/// conversations again when others were handed to the team as it took
/// them; past that, 503 `retry`.
const TAKE_ATTEMPTS: usize = 5;

/// Takes team `id` with all its conversations, for its deletion or a
/// change of its `auto_assign`: its conversations in id order, as a bulk
/// change takes them before the team it names, then the team itself (`FOR
/// UPDATE`, which no one handing a conversation to it gets past: that
/// checks the team's key). A conversation handed to it between the two,
/// which a deletion would otherwise take last, out of order (the foreign
/// key's `SET NULL`, or the update that frees them), deadlocked with a
/// change holding it and waiting for one the deletion held (a bulk change
/// of both: 503 to one; seen in a chaos run); a change of the rule passed
/// it over. So an attempt that finds one lets go of all it took and takes
/// them again, the late one among them in its turn (`db::locks::in_turn`).
fn take_with_conversations(tc: &mut TenantConn<'_>, id: TeamId) -> AppResult<Row> {
    use crate::db::locks::{in_turn, Taken};
    let team = in_turn(tc.pg(), TAKE_ATTEMPTS, |conn| -> AppResult<Taken<Row>> {
        let held: Vec<i64> =
            c::table.filter(c::team_id.eq(id.0)).order(c::id).select(c::id).for_no_key_update().load(conn)?;
        let team = t::table.find(id.0).select(Row::as_select()).for_update().first(conn).optional()?;
        let team = team.ok_or_else(not_found)?;
        let late = c::table.filter(c::team_id.eq(id.0)).filter(c::id.ne_all(&held)).select(c::id);
        let late: Option<i64> = late.first(conn).optional()?;
        Ok(if late.is_some() { Taken::Late } else { Taken::All(team) })
    })?;
    team.ok_or_else(AppError::concurrent_update)
}

/// `team`, if it is one of this tenant's (else 422 `invalid_team`): what a
/// conversation may be handed to.
pub fn existing(tc: &mut TenantConn<'_>, team: TeamId) -> AppResult<i64> {
    // Held (key share) so a delete at once waits for this change to land.
    t::table
        .find(team.0)
        .select(t::id)
        .for_key_share()
        .first(tc.pg())
        .optional()?
        .ok_or_else(|| AppError::invalid("invalid_team", format!("team {team} does not exist")))
}

/// Hands conversation `id`, just opened with no team, to its channel's
/// `team` (if it still is one), by the server: whether it did.
pub fn hand_to_channels_team(tc: &mut TenantConn<'_>, id: i64, team: TeamId) -> AppResult<bool> {
    let there = t::table.find(team.0).select(t::id).for_key_share();
    let n = diesel::update(c::table.find(id).filter(c::team_id.is_null()).filter(diesel::dsl::exists(there)))
        .set(c::team_id.eq(team.0))
        .execute(tc.pg())?;
    if n > 0 {
        audit::record(
            tc,
            None,
            "conversation.team_changed",
            "conversation",
            Some(id.to_string()),
            json!({"from": null, "to": team.to_string(), "by": "channel"}),
        )?;
    }
    Ok(n > 0)
}

/// Whether `team` hands its conversations out itself (`auto_assign`).
pub fn assigns(tc: &mut TenantConn<'_>, team: i64) -> AppResult<bool> {
    Ok(t::table.find(team).select(t::auto_assign).first(tc.pg()).optional()?.unwrap_or(false))
}

/// Who takes a conversation of `channel` just handed to `team` with no one
/// on it, when the team hands its conversations out: the least busy of its
/// members in `online` who are listed on the channel and answer, within
/// the channel's `auto_assign_limit` (`conversations::least_busy`); `None`
/// when the team does not, or none of them can.
pub fn pick_member(
    tc: &mut TenantConn<'_>,
    team: i64,
    channel: crate::channels::ChannelId,
    online: &[UserId],
) -> AppResult<Option<UserId>> {
    if online.is_empty() || !assigns(tc, team)? {
        return Ok(None);
    }
    let candidates = members_among(tc, team, online)?;
    if candidates.is_empty() {
        return Ok(None);
    }
    let limit = crate::channels::find(tc, channel)?.settings().auto_assign_limit;
    super::conversations::least_busy(tc, channel, &candidates, limit)
}

/// The members of `team`, or `None` when it is no team.
pub fn members_of(tc: &mut TenantConn<'_>, team: TeamId) -> AppResult<Option<Vec<UserId>>> {
    let there: Option<i64> = t::table.find(team.0).select(t::id).first(tc.pg()).optional()?;
    there.map(|id| member_ids(tc, id)).transpose()
}

/// The members of `team`, of `candidates`.
pub fn members_among(tc: &mut TenantConn<'_>, team: i64, candidates: &[UserId]) -> AppResult<Vec<UserId>> {
    let ids: Vec<i64> = candidates.iter().map(|u| u.0).collect();
    let members: Vec<i64> =
        tm::table.filter(tm::team_id.eq(team)).filter(tm::user_id.eq_any(&ids)).select(tm::user_id).load(tc.pg())?;
    Ok(members.into_iter().map(UserId).collect())
}

/// A member who left the tenant leaves its teams (each announced).
pub fn forget_member(tc: &mut TenantConn<'_>, log: &mut EventLog, user: UserId) -> AppResult<()> {
    let left: Vec<i64> =
        diesel::delete(tm::table.filter(tm::user_id.eq(user.0))).returning(tm::team_id).get_results(tc.pg())?;
    for team in left {
        let changed = get(tc, TeamId(team))?;
        log.append(tc, "team.updated", None, None, &changed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_descriptions_are_checked() {
        assert_eq!(checked_name("  Billing ").ok().as_deref(), Some("Billing"));
        assert!(checked_name(" ").is_err());
        assert!(checked_name("a\u{0007}b").is_err());
        assert!(checked_name(&"é".repeat(MOST_NAME_CHARS)).is_ok());
        assert!(checked_name(&"é".repeat(MOST_NAME_CHARS + 1)).is_err());
        assert_eq!(checked_description("").ok().as_deref(), Some(""));
        assert!(checked_description(&"x".repeat(MOST_DESCRIPTION_CHARS + 1)).is_err());
    }
}
