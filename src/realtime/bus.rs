//! The cross-instance bus. [`Bus`] is the small interface another transport
//! (NATS, Redis) could implement for large fleets; [`PgBus`] is the one
//! that needs nothing but PostgreSQL: NOTIFY to publish, one LISTEN
//! connection per instance (outside the pool) to receive.
//!
//! Event hints (`switchboard_events`, sent by writers inside their
//! transactions) carry `tenant:first:last`; the listener reads the events
//! themselves from the log, only for tenants this instance has sockets for
//! (unless this instance committed them: [`Feed`]). After a reconnect it
//! catches up from the log, so nothing is missed.

use actix::Addr;
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use super::hub::{Events, Flush, Hub, Live, Pace, Unwritten};
use crate::db::listen::ListenConnection;
use crate::db::{PgPool, TenantScope};
use crate::error::{AppError, AppResult};
use crate::ids::TenantId;
use crate::inbox::events::{self, StoredEvent, NOTIFY_CHANNEL};

pub const LIVE_CHANNEL: &str = "switchboard_live";

/// The most members an [`LiveMsg::Acl`] names: a NOTIFY holds 8,000 bytes,
/// an id up to 20 characters and its comma.
pub const ACL_NAMED_MAX: usize = 300;

/// Messages that are not logged: typing, presence, access changes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub enum LiveMsg {
    /// Never shown to any socket of the typing user `u`.
    Typing { t: i64, conv: i64, ch: i64, u: i64, name: String, on: bool },
    /// One user's sockets on instance `inst`. Sent by earlier releases;
    /// this one sends its changes as [`LiveMsg::PresenceOf`], a tick's worth
    /// at once, and still understands this during a rolling upgrade.
    Presence { t: i64, u: i64, inst: String, n: u32, away: bool },
    /// Channel access changed in the tenant: the sessions of the members
    /// `u` whose lists changed reload their channels (`None`: every
    /// session of the tenant; an earlier release's message, or more members
    /// than a NOTIFY names, [`ACL_NAMED_MAX`]).
    Acl {
        t: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        u: Option<Vec<i64>>,
    },
    /// A member left the tenant (or the tenant was suspended: `u` = 0).
    Removed { t: i64, u: i64 },
    /// A login (refresh-token family) ended; without a family, every
    /// login of the member in the tenant (their role changed).
    Revoked { t: i64, u: i64, family: Option<String> },
    /// Instance `inst` has just started listening (first time or after a
    /// reconnect) and knows nothing of the others' sockets: they answer
    /// with [`LiveMsg::PresenceOf`].
    PresenceWanted { inst: String },
    /// Instance `inst`'s sockets: (tenant, user, sockets, all away), in
    /// parts of at most [`PRESENCE_PART`] users (a NOTIFY holds 8,000 bytes):
    /// all of them in answer to [`LiveMsg::PresenceWanted`], else the users
    /// whose sockets there changed in the last presence tick.
    PresenceOf { inst: String, users: Vec<(i64, i64, u32, bool)> },
    /// Instance `inst` is up (every [`presence_alive`]): an instance that
    /// said so once and then falls silent for three periods has died, and
    /// the others forget the sockets it had.
    Alive { inst: String },
    /// Meta changed a template of WhatsApp business account `waba`: every
    /// instance drops its kept list of them (`inbox::templates`). An
    /// instance of an earlier release ignores it and keeps its list its
    /// minute.
    Templates { waba: String },
}

/// How often an instance says it is alive: `SWITCHBOARD_PRESENCE_ALIVE_SECS`
/// (30), read once. Three periods of silence and it is taken for dead.
pub fn presence_alive() -> Duration {
    static EVERY: OnceLock<Duration> = OnceLock::new();
    *EVERY.get_or_init(|| {
        let secs = std::env::var("SWITCHBOARD_PRESENCE_ALIVE_SECS").ok().and_then(|v| v.parse::<u64>().ok());
        Duration::from_secs(secs.filter(|s| *s > 0).unwrap_or(30))
    })
}

/// Users per [`LiveMsg::PresenceOf`]: ~50 bytes of JSON each at most.
pub const PRESENCE_PART: usize = 120;

pub trait Bus: Send + Sync {
    /// Publishes a live message to every instance (this one included).
    fn publish(&self, msg: &LiveMsg) -> AppResult<()>;
}

/// Sends a live message inside the caller's transaction (delivered at
/// commit): access changes made anywhere, even by the CLI, reach every
/// instance.
pub fn notify_live(conn: &mut PgConnection, msg: &LiveMsg) -> AppResult<()> {
    let payload = serde_json::to_string(msg).map_err(AppError::internal)?;
    Ok(notify(conn, &payload)?)
}

fn notify(conn: &mut PgConnection, payload: &str) -> Result<(), crate::db::DbError> {
    diesel::sql_query("SELECT pg_catalog.pg_notify($1, $2)")
        .bind::<diesel::sql_types::Text, _>(LIVE_CHANNEL)
        .bind::<diesel::sql_types::Text, _>(payload)
        .execute(conn)?;
    Ok(())
}

pub struct PgBus {
    pool: PgPool,
}

impl PgBus {
    pub fn new(pool: PgPool) -> PgBus {
        PgBus { pool }
    }
}

impl Bus for PgBus {
    fn publish(&self, msg: &LiveMsg) -> AppResult<()> {
        let payload = serde_json::to_string(msg).map_err(AppError::internal)?;
        // A pooled connection the server closed since (a restart, a proxy
        // cutting idle ones) is not checked on checkout: met here, the
        // message goes on another rather than being lost (a presence change
        // the other instances would never hear).
        crate::db::retry_lost(&self.pool, |conn| notify(conn, &payload))?;
        Ok(())
    }
}

/// Tenants with sockets on this instance (kept by the hub, read here).
pub type ActiveTenants = Arc<RwLock<HashSet<i64>>>;

/// See [`Feed::settle`].
pub const SETTLE_STALL: Duration = Duration::from_millis(10);

/// How committed events reach this instance's hub: read from the log when
/// the LISTEN connection hears of them, or handed over by whoever in this
/// instance committed them (the webhook processor, a request, the sender;
/// see `AppState::tenant_with_events`), without a read back (under load
/// that read is most of what live push costs PostgreSQL). Both paths
/// pass `delivered` (per tenant, the last seq given to the hub), so the hub
/// gets every event once and in order: the direct path only ever extends a
/// tenant's run of delivered events without a gap, and leaves anything else
/// (another writer's events not yet delivered, the listener busy) to the
/// log, whose notification still comes.
#[derive(Default)]
pub struct Feed {
    hub: OnceLock<Addr<Hub>>,
    active: ActiveTenants,
    unwritten: Arc<Unwritten>,
    delivered: Mutex<HashMap<i64, i64>>,
    /// A backlog batch went to the hub since the last flush (it may be held).
    backlog_sent: AtomicBool,
}

impl Feed {
    /// The tenants with sockets here, shared with the hub that keeps them.
    pub fn active(&self) -> ActiveTenants {
        self.active.clone()
    }

    /// Work on its way to this instance's sockets, shared with the hub and
    /// the sessions' outboxes.
    pub fn unwritten(&self) -> Arc<Unwritten> {
        self.unwritten.clone()
    }

    /// Whether the sockets have caught up with every batch handed over.
    pub fn written(&self) -> bool {
        self.unwritten.is_zero()
    }

    /// Waits until the sockets have written what they were handed, at most
    /// `most`, and no longer than [`SETTLE_STALL`] without progress: a
    /// client that stopped reading keeps its share unwritten until it is
    /// dropped as too slow (4408), and must not make every batch wait for
    /// it meanwhile. Polled: the sessions run on other threads.
    pub async fn settle(&self, most: Duration) {
        let deadline = tokio::time::Instant::now() + most;
        let (mut last, mut moved) = (self.unwritten.count(), tokio::time::Instant::now());
        while last > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let now = tokio::time::Instant::now();
            let count = self.unwritten.count();
            if count != last {
                (last, moved) = (count, now);
            }
            if now >= deadline || now.duration_since(moved) >= SETTLE_STALL {
                break;
            }
        }
    }

    fn hand_over(&self, hub: &Addr<Hub>, tenant: i64, events: Vec<StoredEvent>, pace: Pace) {
        if pace == Pace::Backlog {
            self.backlog_sent.store(true, Ordering::Relaxed);
        }
        self.unwritten.add();
        hub.do_send(Events { tenant, events: Arc::new(events), pace });
    }

    /// The committer ran out of work: whatever the hub holds goes out now
    /// (a message to the hub only if it may hold something: an idle
    /// processor calls this at every poll).
    pub fn flush(&self) {
        if let Some(hub) = self.hub.get() {
            if self.backlog_sent.swap(false, Ordering::Relaxed) {
                hub.do_send(Flush);
            }
        }
    }

    /// Whether `tenant`'s events up to `seq` have gone to the hub (or were
    /// passed over: nobody here listened).
    fn has_delivered(&self, tenant: i64, seq: i64) -> bool {
        self.delivered.lock().map(|d| d.get(&tenant).is_some_and(|&done| done >= seq)).unwrap_or(false)
    }

    /// Whether `tenant` has sockets on this instance.
    pub fn wants(&self, tenant: i64) -> bool {
        self.active.read().map(|a| a.contains(&tenant)).unwrap_or(false)
    }

    /// Events of `tenant` this instance has just committed, in seq order;
    /// `pace` says whether the hub may hold them for the next batch.
    pub fn committed(&self, tenant: i64, events: Vec<StoredEvent>, pace: Pace) {
        let (Some(first), Some(last)) = (events.first().map(|e| e.seq), events.last().map(|e| e.seq)) else {
            return;
        };
        let Some(hub) = self.hub.get() else { return };
        // Held by the listener while it reads the log: it will hear of these.
        let Ok(mut delivered) = self.delivered.try_lock() else { return };
        // A tenant the listener has not placed yet, or a gap before `first`:
        // the log fills it, in order.
        if delivered.get(&tenant) != Some(&(first - 1)) {
            return;
        }
        delivered.insert(tenant, last);
        if self.wants(tenant) {
            crate::metrics::inc(&crate::metrics::BUS_DIRECT, 1);
            self.hand_over(hub, tenant, events, pace);
        }
    }
}

/// Starts the LISTEN loop of `feed` on its own thread, until the hub stops.
pub fn spawn_listener(database_url: String, pool: PgPool, hub: Addr<Hub>, feed: Arc<Feed>) {
    if feed.hub.set(hub.clone()).is_err() {
        tracing::error!("this instance's event feed already has a hub");
        return;
    }
    std::thread::Builder::new()
        .name("switchboard-listen".into())
        .spawn(move || {
            const FIRST_BACKOFF: Duration = Duration::from_millis(100);
            let mut backoff = FIRST_BACKOFF;
            let mut failing = crate::telemetry::Repeats::default();
            // Ends with the hub (the server stopped).
            while hub.connected() {
                // Once listening (and caught up) again, the next loss
                // starts from the short wait, and the outage is told over.
                let mut listening = || {
                    backoff = FIRST_BACKOFF;
                    if let Some((failed_for, failures)) = failing.went(Instant::now()) {
                        tracing::warn!(?failed_for, failures, "bus listener is listening again");
                    }
                };
                match listen(&database_url, &pool, &hub, &feed, &mut listening) {
                    Ok(()) => return,
                    Err(e) => {
                        if let Some(more_since_last_told) = failing.failed(Instant::now()) {
                            tracing::warn!(error = %e, more_since_last_told, "bus listener lost its connection; reconnecting");
                        }
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        })
        .ok();
}

/// Listens until the hub stops (`Ok`) or the connection is lost; calls
/// `listening` once it listens and has caught up.
fn listen(url: &str, pool: &PgPool, hub: &Addr<Hub>, feed: &Feed, listening: &mut dyn FnMut()) -> anyhow::Result<()> {
    // Its keepalives matter most here: the connection only ever waits for
    // notifications, so a peer that vanished silently would otherwise leave
    // this instance deaf to the others for hours.
    let mut conn = ListenConnection::connect(&crate::db::connection_string(url))?;
    conn.execute(&format!("LISTEN {NOTIFY_CHANNEL}; LISTEN {LIVE_CHANNEL}"))?;
    // Presence the other instances announced while we were not listening,
    // and the access changes (none on a first start: no socket yet).
    hub.do_send(super::hub::WantPresence);
    hub.do_send(super::hub::CheckAccess);
    // Whatever happened while we were away: catch up from the logs.
    let known: Vec<i64> = feed.delivered.lock().map(|d| d.keys().copied().collect()).unwrap_or_default();
    for t in known {
        catch_up(pool, hub, feed, t, None)?;
    }
    listening();
    while hub.connected() {
        // Asleep until PostgreSQL sends something; the timeout only bounds
        // how long a stopped hub goes unnoticed.
        let mut notes = conn.wait(LISTEN_WAIT)?;
        let to_read = notes
            .iter()
            .filter(|n| n.channel == NOTIFY_CHANNEL)
            .filter_map(|n| events_of(&n.payload))
            .any(|(t, _, last)| feed.wants(t) && !feed.has_delivered(t, last));
        if to_read {
            // Events this instance committed go to the hub directly
            // (`Feed::committed`) just after their commit, when their
            // notification comes too: that path goes first, or the
            // listener, awake at once, reads them back from the log (bench
            // realtime: 40 such reads where there had been 7). Events of a
            // tenant with no socket here are never read: no pause for them.
            std::thread::sleep(DIRECT_FIRST);
            notes.extend(conn.wait(Duration::ZERO)?);
        }
        for n in notes {
            if n.channel == NOTIFY_CHANNEL {
                if let Some((t, first, last)) = events_of(&n.payload) {
                    catch_up(pool, hub, feed, t, Some((first, last)))?;
                }
            } else if let Ok(msg) = serde_json::from_str::<LiveMsg>(&n.payload) {
                hub.do_send(Live(msg));
            }
        }
    }
    Ok(())
}

/// A notification of events: `<tenant>:<first seq>:<last seq>`.
fn events_of(payload: &str) -> Option<(i64, i64, i64)> {
    let mut parts = payload.split(':').map(|p| p.parse::<i64>().ok());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Some(t)), Some(Some(first)), Some(Some(last))) => Some((t, first, last)),
        _ => None,
    }
}

/// See [`listen`].
const LISTEN_WAIT: Duration = Duration::from_millis(500);
/// See [`listen`].
const DIRECT_FIRST: Duration = Duration::from_millis(5);

/// Hands the hub `tenant`'s events after the last delivered one, up to the
/// notified `(first, last)` (all there are after a reconnect: `None`).
fn catch_up(
    pool: &PgPool,
    hub: &Addr<Hub>,
    feed: &Feed,
    tenant: i64,
    notified: Option<(i64, i64)>,
) -> anyhow::Result<()> {
    // Held throughout, so the direct path never slips in between.
    let mut delivered = feed.delivered.lock().map_err(|_| anyhow::anyhow!("event feed lock poisoned"))?;
    // The first we hear of a tenant is where its delivery starts.
    let from = *delivered.entry(tenant).or_insert(notified.map(|(first, _)| first - 1).unwrap_or(0));
    let until = notified.map(|(_, last)| last);
    if until.is_some_and(|u| u <= from) {
        return Ok(());
    }
    if !feed.wants(tenant) {
        // Nobody here listens to this tenant: just move the mark.
        if let Some(u) = until {
            delivered.insert(tenant, u);
        }
        return Ok(());
    }
    let started = std::time::Instant::now();
    let scope = TenantScope::maintenance(TenantId(tenant));
    let mut since = from;
    loop {
        // On another connection if the pool's first was closed by the
        // server since (after a restart the listener connects anew while the
        // pool still holds the dead ones): failing here would leave these
        // events until the tenant's next notification.
        let batch = crate::db::tenant_on_pool(pool, &scope, |tc| events::since(tc, since, 1000));
        let batch = match batch {
            Ok(b) => b,
            // No connection works: the listener's own is likely gone too.
            // It connects again and catches up from the log then.
            Err(e) if e.code == crate::error::DATABASE_UNAVAILABLE => {
                anyhow::bail!("cannot read tenant {tenant}'s events: {}", e.message)
            }
            // The tenant's schema gone (dropped meanwhile), say.
            Err(e) => {
                tracing::debug!(tenant, error = ?e, "cannot read events");
                return Ok(());
            }
        };
        let Some(last) = batch.last().map(|e| e.seq) else { break };
        since = last;
        let full = batch.len() == 1000;
        feed.hand_over(hub, tenant, batch, Pace::Now);
        if !full {
            break;
        }
    }
    delivered.insert(tenant, since.max(until.unwrap_or(0)).max(from));
    crate::metrics::inc(&crate::metrics::BUS_READS, 1);
    crate::metrics::inc(&crate::metrics::BUS_READ_MICROS, started.elapsed().as_micros() as u64);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_web::test]
    async fn settling_waits_for_writes_but_not_for_a_stalled_client() {
        let feed = Feed::default();
        let unwritten = feed.unwritten();
        // Nothing to write: back at once.
        tokio::time::timeout(Duration::from_millis(500), feed.settle(Duration::from_secs(60)))
            .await
            .expect("nothing to wait for");
        // Two sockets writing, one done after 5 ms, the other never (a client
        // that stopped reading): it returns soon after the stall, not at the
        // deadline.
        unwritten.add();
        unwritten.add();
        let done = unwritten.clone();
        actix_web::rt::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            done.done();
        });
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(10), feed.settle(Duration::from_secs(60)))
            .await
            .expect("a stalled client is not waited for");
        assert!(started.elapsed() >= SETTLE_STALL, "it waited for the one making progress");
        assert_eq!(unwritten.count(), 1);
    }

    #[test]
    fn a_full_presence_part_fits_a_notify() {
        let users = vec![(i64::MAX, i64::MAX, u32::MAX, false); PRESENCE_PART];
        let inst = "i".repeat(64);
        let json = serde_json::to_string(&LiveMsg::PresenceOf { inst, users }).expect("json");
        assert!(json.len() < 8000, "{} bytes", json.len());
    }

    #[test]
    fn an_access_change_naming_its_most_members_fits_a_notify_and_an_old_one_reads() {
        let u = Some(vec![i64::MIN; ACL_NAMED_MAX]);
        let json = serde_json::to_string(&LiveMsg::Acl { t: i64::MIN, u }).expect("json");
        assert!(json.len() < 8000, "{} bytes", json.len());
        // An earlier release names nobody: every session reloads.
        let old: LiveMsg = serde_json::from_str(r#"{"k":"acl","t":5}"#).expect("an earlier release's");
        assert!(matches!(old, LiveMsg::Acl { t: 5, u: None }), "{old:?}");
    }

    #[test]
    fn an_events_notification_is_read_or_passed_over_never_a_panic() {
        assert_eq!(events_of("12:3:9"), Some((12, 3, 9)));
        for bad in ["", "12", "12:3", "12:x:9", "a:b:c", "12:3:99999999999999999999"] {
            assert_eq!(events_of(bad), None, "{bad}");
        }
    }

    use actix::Actor;

    struct Quiet;

    impl Bus for Quiet {
        fn publish(&self, _: &LiveMsg) -> AppResult<()> {
            Ok(())
        }
    }

    fn event(seq: i64) -> StoredEvent {
        StoredEvent {
            seq,
            kind: "message.created".into(),
            channel_id: Some(1),
            conversation_id: Some(1),
            data: "{}".into(),
            at: chrono::Utc::now(),
            for_user_id: None,
        }
    }

    fn mark(feed: &Feed, tenant: i64) -> Option<i64> {
        feed.delivered.lock().expect("marks").get(&tenant).copied()
    }

    async fn hub_caught_up(feed: &Feed) -> bool {
        for _ in 0..500 {
            if feed.written() {
                return true;
            }
            actix_web::rt::time::sleep(Duration::from_millis(2)).await;
        }
        false
    }

    #[actix_web::test]
    async fn the_direct_path_only_extends_a_run_without_a_gap() {
        let feed = Feed::default();
        let hub = Hub::new(
            "test".into(),
            Arc::new(Quiet),
            feed.active(),
            feed.unwritten(),
            crate::realtime::hub::Shared { templates: Default::default(), online: Default::default() },
        )
        .start();
        assert!(feed.hub.set(hub).is_ok());
        // A tenant the listener has not placed yet: left to the log.
        feed.committed(7, vec![event(1)], Pace::Now);
        assert_eq!(mark(&feed, 7), None);
        assert!(feed.written(), "nothing handed over");

        feed.delivered.lock().expect("marks").insert(7, 5);
        feed.active.write().expect("active").insert(7);
        feed.committed(7, vec![event(6), event(7)], Pace::Now);
        assert_eq!(mark(&feed, 7), Some(7));
        assert!(!feed.written(), "handed to the hub");
        assert!(hub_caught_up(&feed).await, "the hub took the batch");

        // A gap (an event of another writer not delivered yet): left to the log.
        feed.committed(7, vec![event(9)], Pace::Now);
        assert_eq!(mark(&feed, 7), Some(7));
        assert!(feed.written());

        // The listener holds the marks while it reads the log: left to it.
        let held = feed.delivered.lock().expect("marks");
        feed.committed(7, vec![event(8)], Pace::Now);
        drop(held);
        assert_eq!(mark(&feed, 7), Some(7));
        assert!(feed.written());

        // A tenant without sockets here: the mark moves, nothing is handed over.
        feed.delivered.lock().expect("marks").insert(8, 0);
        feed.committed(8, vec![event(1), event(2)], Pace::Now);
        assert_eq!(mark(&feed, 8), Some(2));
        assert!(feed.written());

        // Only a backlog batch handed over makes the next flush reach the hub.
        assert!(!feed.backlog_sent.load(Ordering::Relaxed), "nothing the hub could hold");
        feed.committed(7, vec![event(8), event(9)], Pace::Backlog);
        assert!(feed.backlog_sent.load(Ordering::Relaxed));
        feed.flush();
        assert!(!feed.backlog_sent.load(Ordering::Relaxed));
        assert!(hub_caught_up(&feed).await);
    }
}
