//! The instances whose sender runs, counted so that together they keep to
//! each channel's rate (`SWITCHBOARD_SEND_RATE`).
//!
//! Each instance paces its own sends ([`Pacer`]); several instances share
//! the send queue, so without a count each would send to a channel at the
//! whole rate, and two at twice it. Each sender checks in to
//! `public.senders` every [`CHECK_IN_EVERY`] and learns how many checked in
//! within [`ALIVE_FOR`]; its pacer then spaces a channel's sends by that
//! many gaps. The queue hands a channel's backlog to whichever instance
//! claims first, and a send the pace holds back goes back to the queue for
//! any of them, so each takes its part of a backlog (not wholly evenly:
//! below).
//!
//! The sends an instance holds back are told turns at the channel's whole
//! rate, since whichever instance is free takes each up at its turn
//! ([`Pacer`]); one taken up by an instance not yet free for it goes back
//! again, told a later turn. So while a counted instance sends nothing
//! (it crashed, and counts a few seconds more) the held sends come back
//! more often, and the channel gets less than its rate, not more.
//!
//! Decided: an instance that stops checks out; one that crashed counts
//! until [`ALIVE_FOR`] passes, meanwhile the others keep to less than the
//! rate rather than more. A database out of reach leaves the last count.
//! An older instance that does not check in is not counted.

use diesel::sql_types::{BigInt, Text};
use diesel::{PgConnection, QueryableByName, RunQueryDsl};
use std::time::Duration;

use super::sender::Pacer;
use crate::app::AppState;
use crate::error::AppResult;

/// How often a sender checks in: the others learn of a new instance that
/// soon (it learns of them at once), and until then keep to their shares
/// as they were, together up to half the rate more for a moment.
pub const CHECK_IN_EVERY: Duration = Duration::from_secs(2);

/// How long a check-in counts: past four missed ones, so a check-in slowed
/// by a busy database does not drop a live instance from the count.
pub const ALIVE_FOR: Duration = Duration::from_secs(10);

/// How long a row of an instance that stopped checking in is kept.
const FORGOTTEN_AFTER: Duration = Duration::from_secs(300);

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Checks `me` in; how many senders run, `me` among them. Rows long
/// stale go on the way.
pub fn check_in(conn: &mut PgConnection, me: uuid::Uuid) -> diesel::QueryResult<u32> {
    // One statement: the count reads the table as it was before the
    // statement, so it counts the others and adds one.
    let count: Count = diesel::sql_query(format!(
        "WITH mine AS (
             INSERT INTO public.senders (id, seen_at) VALUES ($1::uuid, now())
             ON CONFLICT (id) DO UPDATE SET seen_at = now()
         ), forgotten AS (
             DELETE FROM public.senders WHERE seen_at < now() - interval '{forgotten} seconds'
         )
         SELECT 1 + count(*) AS n FROM public.senders
         WHERE id <> $1::uuid AND seen_at > now() - interval '{alive} seconds'",
        forgotten = FORGOTTEN_AFTER.as_secs(),
        alive = ALIVE_FOR.as_secs(),
    ))
    .bind::<Text, _>(me.to_string())
    .get_result(conn)?;
    Ok(u32::try_from(count.n).unwrap_or(u32::MAX).max(1))
}

/// Takes `me` out of the count at once (a stop), rather than after
/// [`ALIVE_FOR`].
pub fn check_out(conn: &mut PgConnection, me: uuid::Uuid) -> diesel::QueryResult<()> {
    diesel::sql_query("DELETE FROM public.senders WHERE id = $1::uuid")
        .bind::<Text, _>(me.to_string())
        .execute(conn)?;
    Ok(())
}

/// Enlists this instance's sender and checks it in a first time, so that
/// it starts with its share of the channels' rate; its id. A sender
/// restarted after a panic keeps its id, so it is not counted twice.
pub async fn enlist(state: &AppState, pacer: &Pacer) -> uuid::Uuid {
    let me = state.sends.enlisted().unwrap_or_else(uuid::Uuid::new_v4);
    state.sends.enlist(me);
    if let Ok(senders) = state.db.public(move |conn| -> AppResult<u32> { Ok(check_in(conn, me)?) }).await {
        share(pacer, senders);
    }
    me
}

/// Keeps sender `me` checked in while it runs, and `pacer`'s share of the
/// channels' rate up to date. Runs beside the sender's loop
/// ([`run`](super::sender::run)), ended with it; a stop checks out
/// ([`leave`]).
pub async fn keep(state: &AppState, pacer: &Pacer, me: uuid::Uuid) {
    let mut failing = crate::telemetry::Repeats::default();
    loop {
        tokio::time::sleep(CHECK_IN_EVERY).await;
        if state.sends.stopping() {
            return;
        }
        let result = state.db.public(move |conn| -> AppResult<u32> { Ok(check_in(conn, me)?) }).await;
        crate::telemetry::tell_repeats!(failing, "sender check-in", &result);
        if let Ok(senders) = result {
            share(pacer, senders);
        }
    }
}

fn share(pacer: &Pacer, senders: u32) {
    pacer.share(senders);
    crate::metrics::SENDERS.store(i64::from(senders), std::sync::atomic::Ordering::Relaxed);
}

/// Checks this instance's sender out, as it stops: the others take its
/// share at their next check-in rather than after [`ALIVE_FOR`].
pub async fn leave(state: &AppState) -> AppResult<()> {
    match state.sends.enlisted() {
        Some(me) => state.db.public(move |conn| -> AppResult<()> { Ok(check_out(conn, me)?) }).await,
        None => Ok(()),
    }
}
