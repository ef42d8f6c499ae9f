//! The queue handed out: a conversation its channel (or team) would have
//! handed to someone (`auto_assign`), had anyone been there, goes to
//! someone once they are (an extension).
//!
//! Decisions:
//! - A conversation joins the queue (`queued_at`) only when the server
//!   should have picked someone for it and could not: it opened (new,
//!   reopened by the customer, or woken from a snooze with no one on it)
//!   while nobody who may take it was online with room (`ingest`,
//!   `conversations::wake_snoozed`), it was handed to a team that hands out its own
//!   with none of them there (`conversations::patch`), or its assignee
//!   handed it back on leaving with nobody to take it
//!   (`conversations::release`). A conversation someone deliberately left
//!   with no one stays so: a person's choice is not undone by the server.
//! - Turning a channel's or team's `auto_assign` on is such a choice too:
//!   what then waits open or pending with no one on it, which no rule
//!   covered, is handed out at once among those online, oldest first, and
//!   what nobody can take joins the queue ([`take_up`]). What the other
//!   rule already covered and someone left with no one stays so.
//! - It leaves the queue when anyone takes it, someone names an assignee
//!   or "no one", or nothing hands it out any more: it is snoozed or
//!   resolved (by anyone, by `auto_resolve`, by blocking the contact), it
//!   moves to a team that does not hand out its own, or its channel's and
//!   team's `auto_assign` are off ([`settle`], [`settle_all`], as the
//!   change is written).
//! - Clients see it: `queued_at` on the conversation (joining and leaving
//!   show in the event of the change that did it: `conversation.created`
//!   for a new one, else `conversation.updated`), the list's
//!   `queued` filter and `sort=queue` (this order), and the badges'
//!   `queued` count (`conversations::counts`).
//! - [`hand_out`] gives what waits, oldest first and at most
//!   [`MOST_AT_ONCE`] a turn, each as a conversation the customer opens is
//!   given ([`conversations::repick`](super::conversations::repick)): the
//!   least busy of those online who are listed on its channel and answer,
//!   among its team's members when its team's rule or its channel's with a
//!   team applies, within the channel's `auto_assign_limit`. One that
//!   nobody can take yet waits on. Each given is announced
//!   (`conversation.updated`) and audited as the server's (`by:
//!   auto_assign`, no actor).
//! - When: as soon as an agent comes online (or back from away) on any
//!   instance, since every instance hears of it and wakes its worker
//!   ([`run`], from `realtime::online`); as soon as a member's change may
//!   have made room or a rule (a conversation changed by hand, in bulk or
//!   by a macro: resolved, snoozed, handed on; a contact blocked or
//!   erased; a channel's settings or list, a team's rule or members), or
//!   `auto_resolve` resolved some, on the instance that did it
//!   (`Online::room_changed`); and every [`LOOK_EVERY`] for each tenant
//!   with someone online (what else frees room), by the instances where
//!   that tenant has sockets (each agent online has theirs on one of
//!   them), so a fleet does not look at every tenant once per instance.
//!   Instances take turns per tenant under an advisory lock; one that
//!   finds it held on someone's arrival tries
//!   again [`TURN_AGAIN`] later (the other may have begun before it heard
//!   of the newcomer), and one that finds it held at a look leaves it to
//!   the other.
//!   `switchboard_queue_given_total` counts what the worker gave.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;

use super::conversations::{channel_rule, give, give_or_queue, repick, Picked};
use super::events::EventLog;
use super::views::{ConversationRow, Names};
use crate::db::tenant_schema::conversations as c;
use crate::db::{TenantConn, TenantScope};
use crate::error::AppResult;
use crate::ids::UserId;

/// Conversations one turn gives at most; the rest wait for the next.
pub const MOST_AT_ONCE: i64 = 200;
/// How often every tenant with someone online has its queue looked at.
pub const LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
/// How soon a turn for a newcomer is tried again when another instance
/// held it.
pub const TURN_AGAIN: std::time::Duration = std::time::Duration::from_millis(500);

/// Puts `row`, which has no one on it, in the queue (kept at the time it
/// first joined).
pub fn queue(tc: &mut TenantConn<'_>, row: &mut ConversationRow) -> AppResult<()> {
    if row.queued_at.is_some() {
        return Ok(());
    }
    let at: Option<Option<DateTime<Utc>>> =
        diesel::update(c::table.find(row.id).filter(c::assignee_id.is_null()).filter(c::queued_at.is_null()))
            .set(c::queued_at.eq(diesel::dsl::now))
            .returning(c::queued_at)
            .get_result(tc.pg())
            .optional()?;
    if let Some(at) = at {
        row.queued_at = at;
    }
    Ok(())
}

/// Takes `row` out of the queue, if it is in it.
pub fn dequeue(tc: &mut TenantConn<'_>, row: &mut ConversationRow) -> AppResult<()> {
    if row.queued_at.is_none() {
        return Ok(());
    }
    diesel::update(c::table.find(row.id)).set(c::queued_at.eq(None::<DateTime<Utc>>)).execute(tc.pg())?;
    row.queued_at = None;
    Ok(())
}

/// Takes `row` out of the queue when nothing would hand it out any more
/// (it was snoozed or resolved, its team changed, its channel's or team's
/// rule was turned off); whether it did. `rules` as for
/// [`repick`](super::conversations::repick), which reads the settings as
/// they are now: call it after they changed.
pub fn settle(
    tc: &mut TenantConn<'_>,
    rules: &mut HashMap<i64, (bool, Option<u32>)>,
    row: &mut ConversationRow,
) -> AppResult<bool> {
    if row.queued_at.is_none() || (row.assignee_id.is_none() && repick(tc, rules, row, &[])? != Picked::NoRule) {
        return Ok(false);
    }
    dequeue(tc, row)?;
    Ok(true)
}

/// Which queued conversations [`settle_all`] looks at.
#[derive(Debug, Clone, Copy)]
pub enum Waiting {
    /// Those of this channel.
    OfChannel(i64),
    /// Those handed to this team. The team's change (`teams::update`)
    /// holds them all, and the team `FOR UPDATE`, which no one handing it
    /// another gets past until the change lands; one handed to it as the
    /// change took them is taken too, in its turn. (Read `SKIP LOCKED`,
    /// which under that hold passes over none: a caller that did not take
    /// them first does not wait here out of order.)
    OfTeam(i64),
}

/// Takes out of the queue, each announced (`conversation.updated`), those
/// of `which` that nothing hands out any more, once a channel's or team's
/// `auto_assign` is turned off (after the change is written); how many.
pub fn settle_all(tc: &mut TenantConn<'_>, log: &mut EventLog, which: Waiting) -> AppResult<usize> {
    let queued = c::table.filter(c::queued_at.is_not_null()).order(c::id).select(ConversationRow::as_select());
    let rows: Vec<ConversationRow> = match which {
        Waiting::OfChannel(channel) => queued.filter(c::channel_id.eq(channel)).for_no_key_update().load(tc.pg())?,
        // Passed over when another transaction holds it (below).
        Waiting::OfTeam(team) => queued.filter(c::team_id.eq(team)).for_no_key_update().skip_locked().load(tc.pg())?,
    };
    let mut rules = HashMap::new();
    let mut names = Names::default();
    let mut settled = 0;
    for mut row in rows {
        if settle(tc, &mut rules, &mut row)? {
            let view = names.conversation(tc, &row)?;
            log.append(tc, "conversation.updated", Some(row.channel_id), Some(row.id), &view)?;
            settled += 1;
        }
    }
    Ok(settled)
}

/// Hands out what a rule just turned on covers (a channel's or team's
/// `auto_assign`, after the change is written): the open or pending
/// conversations of `which` with no one on them and not queued that no
/// rule covered before (the other rule was off; those it covered were
/// left with no one by someone, whose choice stands), oldest first, each
/// as one the customer opens is (given among `online`, else queued),
/// announced (`conversation.updated`); how many were given.
pub fn take_up(tc: &mut TenantConn<'_>, log: &mut EventLog, which: Waiting, online: &[UserId]) -> AppResult<usize> {
    let unheld = c::table
        .filter(c::assignee_id.is_null())
        .filter(c::queued_at.is_null())
        .filter(c::status.eq_any(["open", "pending"]))
        .order(c::id)
        .select(ConversationRow::as_select());
    let rows: Vec<ConversationRow> = match which {
        Waiting::OfChannel(channel) => unheld.filter(c::channel_id.eq(channel)).for_no_key_update().load(tc.pg())?,
        Waiting::OfTeam(team) => unheld.filter(c::team_id.eq(team)).for_no_key_update().skip_locked().load(tc.pg())?,
    };
    let mut rules = HashMap::new();
    let mut team_rules: HashMap<i64, bool> = HashMap::new();
    let mut names = Names::default();
    let mut given = 0;
    for mut row in rows {
        // The other rule, which did not change.
        let covered = match (which, row.team_id) {
            (Waiting::OfTeam(_), _) => channel_rule(tc, &mut rules, row.channel_id)?.0,
            (Waiting::OfChannel(_), Some(team)) => match team_rules.get(&team) {
                Some(on) => *on,
                None => *team_rules.entry(team).or_insert(super::teams::assigns(tc, team)?),
            },
            (Waiting::OfChannel(_), None) => false,
        };
        if covered {
            continue;
        }
        give_or_queue(tc, log, &mut rules, &mut row, online)?;
        if row.assignee_id.is_none() && row.queued_at.is_none() {
            continue;
        }
        given += usize::from(row.assignee_id.is_some());
        let view = names.conversation(tc, &row)?;
        log.append(tc, "conversation.updated", Some(row.channel_id), Some(row.id), &view)?;
    }
    Ok(given)
}

/// Gives what waits in the queue to those of `online` who may take it (see
/// the module docs); how many were given, or `None` when another instance
/// has the turn.
pub fn hand_out(tc: &mut TenantConn<'_>, log: &mut EventLog, online: &[UserId]) -> AppResult<Option<usize>> {
    if online.is_empty() {
        return Ok(Some(0));
    }
    let waiting: bool =
        diesel::select(diesel::dsl::exists(c::table.filter(c::queued_at.is_not_null()))).get_result(tc.pg())?;
    if !waiting {
        return Ok(Some(0));
    }
    let key = format!("hand out {}", tc.tenant().0);
    if !crate::db::migrate::try_advisory_lock(tc.pg(), &key)? {
        return Ok(None);
    }
    let rows: Vec<ConversationRow> = c::table
        .filter(c::queued_at.is_not_null())
        .order((c::queued_at, c::id))
        .limit(MOST_AT_ONCE)
        .for_no_key_update()
        .skip_locked()
        .select(ConversationRow::as_select())
        .load(tc.pg())?;
    let mut rules = HashMap::new();
    let mut names = Names::default();
    let mut given = 0;
    for mut row in rows {
        let picked = if row.assignee_id.is_some() { Picked::NoRule } else { repick(tc, &mut rules, &row, online)? };
        match picked {
            Picked::Agent(agent, team) => {
                if !give(tc, log, &mut row, agent, team)? {
                    continue;
                }
                given += 1;
            }
            Picked::Nobody => continue,
            // Nothing hands it out any more: a change missed settling it.
            Picked::NoRule => dequeue(tc, &mut row)?,
        }
        let view = names.conversation(tc, &row)?;
        log.append(tc, "conversation.updated", Some(row.channel_id), Some(row.id), &view)?;
    }
    Ok(Some(given))
}

/// The worker of `serve`: hands out the queue of a tenant where an agent
/// came online (at once, and again [`TURN_AGAIN`] later while another
/// instance holds the turn), and every [`LOOK_EVERY`] of each tenant with
/// someone online and sockets here.
pub async fn run(state: actix_web::web::Data<crate::app::AppState>) {
    let mut tick = tokio::time::interval(LOOK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (tenants, arrivals) = tokio::select! {
            _ = state.online.arrived() => (state.online.take_arrivals(), true),
            _ = tick.tick() => {
                (state.online.tenants().into_iter().filter(|t| state.feed.wants(t.0)).collect(), false)
            }
        };
        for tenant in tenants {
            let online = state.online.of(tenant);
            let turn = move |tc: &mut TenantConn<'_>, log: &mut EventLog| hand_out(tc, log, &online);
            match state.tenant_with_events(TenantScope::system(tenant), turn).await {
                Ok(Some(0)) => {}
                Ok(None) if arrivals => {
                    let state = state.clone();
                    actix_web::rt::spawn(async move {
                        tokio::time::sleep(TURN_AGAIN).await;
                        state.online.look_at(tenant);
                    });
                }
                Ok(None) => {}
                Ok(Some(n)) => {
                    crate::metrics::inc(&crate::metrics::QUEUE_GIVEN, n as u64);
                    tracing::debug!(tenant = tenant.0, given = n, "queue handed out");
                }
                Err(e) => tracing::debug!(tenant = tenant.0, error = ?e, "queue not handed out this turn"),
            }
        }
    }
}
