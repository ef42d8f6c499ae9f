//! The durable webhook inbox and its processor.
//!
//! `store` inserts the verified raw body and returns once committed; Meta
//! gets its 200 only then. Workers claim due rows with
//! `FOR UPDATE SKIP LOCKED` (several server instances share the work),
//! lease them for a minute, process a whole batch grouped by tenant — one
//! tenant transaction and one NOTIFY for all of a tenant's items — and mark
//! them done. A crash leaves the lease to expire and the rows to be claimed
//! again; idempotent writes make the second pass harmless.
//!
//! Failures retry with exponential backoff and become dead letters after
//! `MAX_ATTEMPTS`. When a tenant's transaction fails, each of its webhooks
//! is tried again alone, so one that cannot be stored retries (and in the
//! end dead-letters) alone instead of taking its batch with it; so does a
//! panic, at once ([`guarded`]), and a webhook whose last attempt was
//! claimed and never finished (the process died on it) is dead-lettered
//! when claimed once more rather than tried past `MAX_ATTEMPTS`. A body that
//! is not JSON or not a Meta object, and an item for a page or number no
//! tenant holds, dead-letter at once (Meta must not retry because of us).
//! Dead letters can be listed and replayed (CLI and the operator endpoint);
//! replaying after connecting the page processes them. Items of a
//! suspended tenant wait, unprocessed, until it resumes.

use chrono::{Duration, Utc};
use diesel::prelude::*;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::Notify;

use super::events::EventLog;
use super::ingest::{Followups, Ingest};
use crate::app::AppState;
use crate::channels;
use crate::db::queue::{Queue, HELD_RETRY};
use crate::db::schema::{channel_routes, webhook_events as we};
use crate::db::{prepared, with_tenant, DbError, PgPool, TenantScope};
use crate::error::{AppError, AppResult};
use crate::ids::TenantId;
use crate::meta::webhook::{self, Item, RouteKey};
use crate::realtime::hub::Pace;
use crate::realtime::Online;

pub const MAX_ATTEMPTS: i32 = 8;
const LEASE_SECS: i64 = 60;
const SUSPENDED_RETRY_SECS: i64 = 60;

/// A body to store and where to say it is committed.
pub type StoreRequest = (Vec<u8>, tokio::sync::oneshot::Sender<Result<(), String>>);

/// Group commit for the webhook endpoint: requests that arrive while one
/// insert is running go into the next one — a single multi-row INSERT and
/// one commit for all of them. Nothing waits on a timer, so a lone webhook is
/// stored at once; under load many share a round trip and a WAL flush.
/// Each request is answered only after its row is committed.
pub async fn run_store(state: actix_web::web::Data<AppState>) {
    let mut rx = state.store_queue().await;
    // Why it failed is told here, once a while; the webhooks answered 503
    // meanwhile are told once a while too (`telemetry`, summed refusals).
    let mut failing = crate::telemetry::Repeats::default();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 500 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let (bodies, replies): (Vec<Vec<u8>>, Vec<_>) = batch.into_iter().unzip();
        let pool = state.db.pool().clone();
        let result = actix_web::web::block(move || -> Result<usize, String> {
            // On a connection the server closed since, tried again on
            // another rather than answering 503: stored twice at worst
            // (were the reply lost after the commit), which processing
            // absorbs as it does Meta's own duplicates. With the database
            // out of reach, a 503 within half a second (Meta retries).
            let mut stored = 0;
            crate::db::retry_lost_probing(&pool, |conn| {
                stored = prepared("INSERT INTO public.webhook_events (body) SELECT unnest($1::bytea[])")
                    .bind::<diesel::sql_types::Array<diesel::sql_types::Bytea>, _>(&bodies)
                    .execute(conn)?;
                Ok(())
            })
            .map_err(|e| e.to_string())?;
            Ok(stored)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        crate::telemetry::tell_repeats!(failing, "webhook store", &result);
        if let Ok(n) = result {
            state.webhooks_stored.fetch_add(n as u64, Ordering::Relaxed);
        }
        let outcome = result.map(|_| ());
        for reply in replies {
            let _ = reply.send(outcome.clone());
        }
        state.wake_processor.notify_one();
    }
}

struct Claimed {
    id: i64,
    body: Vec<u8>,
    attempts: i32,
}

fn claim(conn: &mut PgConnection, limit: i64) -> Result<Vec<Claimed>, DbError> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
        #[diesel(sql_type = diesel::sql_types::Bytea)]
        body: Vec<u8>,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        attempts: i32,
    }
    let rows: Vec<Row> = prepared(
        "UPDATE public.webhook_events SET attempts = attempts + 1, \
                next_attempt_at = now() + make_interval(secs => $2) \
          WHERE id IN (SELECT id FROM public.webhook_events \
                        WHERE status = 'pending' AND next_attempt_at <= now() \
                        ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED) \
          RETURNING id, body, attempts",
    )
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .bind::<diesel::sql_types::Double, _>(LEASE_SECS as f64)
    .load(conn)?;
    let mut out: Vec<Claimed> =
        rows.into_iter().map(|r| Claimed { id: r.id, body: r.body, attempts: r.attempts }).collect();
    out.sort_by_key(|c| c.id);
    Ok(out)
}

/// What happened to each event of a batch.
#[derive(Debug, Default)]
pub struct BatchReport {
    pub claimed: usize,
    pub done: usize,
    pub dead: usize,
    pub retried: usize,
    pub items: usize,
    /// Contacts to look up at Meta.
    pub profile_lookups: Vec<super::contacts::ProfileLookup>,
    /// Media to copy off Meta's CDN.
    pub media_copies: Vec<super::media_copies::MediaCopy>,
    pub queued_sends: usize,
    /// What each tenant transaction committed, for this instance's sockets.
    pub events: Vec<(i64, Vec<super::events::StoredEvent>)>,
    /// Bytes of message text each tenant transaction indexed for search.
    pub indexed_text: Vec<(i64, usize)>,
    /// Tenants that kept a change or receipt for a message not stored yet.
    pub kept_early: Vec<i64>,
    /// WhatsApp business accounts whose templates Meta changed.
    pub templates_changed: Vec<String>,
}

enum Outcome {
    Done,
    Dead(String),
    Retry(String),
    Wait,
}

/// Claims and processes one batch. Blocking: run it on the blocking pool.
/// `online`: who may be handed a conversation (`realtime::online`).
pub fn process_batch(pool: &PgPool, app_id: &str, online: &Online, limit: i64) -> AppResult<BatchReport> {
    // A connection the server closed since fails the claim before it is
    // sent (or, at worst, after it took its lease: those webhooks wait out
    // the lease); the claim goes to another connection.
    let mut claimed = Vec::new();
    let mut conn = crate::db::retry_lost(pool, |conn| {
        claimed = claim(conn, limit)?;
        Ok(())
    })?;
    let mut report = BatchReport { claimed: claimed.len(), ..Default::default() };
    if claimed.is_empty() {
        return Ok(report);
    }
    let mut outcome: HashMap<i64, Outcome> = HashMap::new();
    // (event id, route, item) in event order.
    let mut work: Vec<(i64, RouteKey, Item)> = Vec::new();
    for ev in &claimed {
        if ev.attempts > MAX_ATTEMPTS {
            // Its last attempt was claimed and never told how it went (an
            // attempt that does dead-letters at MAX_ATTEMPTS): the process
            // died or its worker failed while on it, as likely on every
            // attempt before. It must not take its batch along once more.
            tracing::error!(webhook = ev.id, "webhook never finished processing; dead-lettered");
            let why =
                format!("{MAX_ATTEMPTS} attempts spent, the last never finished (the server stopped or failed on it)");
            outcome.insert(ev.id, Outcome::Dead(why));
            continue;
        }
        match std::panic::catch_unwind(|| webhook::parse(&ev.body)) {
            Ok(Ok(items)) => {
                outcome.insert(ev.id, Outcome::Done);
                work.extend(items.into_iter().map(|r| (ev.id, r.route, r.item)));
            }
            Ok(Err(e)) => {
                outcome.insert(ev.id, Outcome::Dead(e.to_string()));
            }
            Err(panic) => {
                tracing::error!(webhook = ev.id, "reading the webhook panicked; dead-lettered");
                outcome.insert(ev.id, Outcome::Dead(format!("reading it failed: {}", crate::app::panic_text(&panic))));
            }
        }
    }
    report.items = work.len();
    // One query routes every item of the batch: channels by their id, an
    // account's items by the account (to each of its channels).
    let ids: Vec<&str> = work.iter().filter(|(_, r, _)| !r.parent).map(|(_, r, _)| r.external_id.as_str()).collect();
    let parents: Vec<&str> = work.iter().filter(|(_, r, _)| r.parent).map(|(_, r, _)| r.external_id.as_str()).collect();
    let mut query = channel_routes::table
        .select((
            channel_routes::platform,
            channel_routes::external_id,
            channel_routes::parent_external_id,
            channel_routes::tenant_id,
            channel_routes::channel_id,
        ))
        .filter(channel_routes::external_id.eq_any(&ids))
        .into_boxed();
    if !parents.is_empty() {
        query = query.or_filter(channel_routes::parent_external_id.eq_any(&parents));
    }
    let routes: Vec<(String, String, Option<String>, i64, i64)> = query.load(&mut conn)?;
    let mut by_tenant: BTreeMap<i64, Vec<(i64, i64, Item)>> = BTreeMap::new();
    for (ev, route, item) in work {
        let mut matching = routes.iter().filter(|(p, e, parent, _, _)| {
            p == route.platform.as_str()
                && match route.parent {
                    false => *e == route.external_id,
                    true => parent.as_deref() == Some(route.external_id.as_str()),
                }
        });
        if route.parent {
            // No connected channel under that account: nothing to change
            // (a duplicate after the account's channels were disconnected).
            for (_, _, _, tenant, channel) in matching {
                by_tenant.entry(*tenant).or_default().push((ev, *channel, item.clone()));
            }
            continue;
        }
        match matching.next() {
            Some((_, _, _, tenant, channel)) => by_tenant.entry(*tenant).or_default().push((ev, *channel, item)),
            None => {
                let why = format!("no tenant holds {} {}", route.platform.as_str(), route.external_id);
                outcome.insert(ev, Outcome::Dead(why));
            }
        }
    }
    // Events whose every item belongs to one tenant (the usual case) are
    // marked done inside that tenant's transaction: one round trip fewer,
    // and the mark commits or is lost together with the work it records.
    let mut tenants_of: HashMap<i64, Vec<i64>> = HashMap::new();
    for (tenant, items) in &by_tenant {
        for (ev, _, _) in items {
            let ts = tenants_of.entry(*ev).or_default();
            if !ts.contains(tenant) {
                ts.push(*tenant);
            }
        }
    }
    let mut marked: std::collections::HashSet<i64> = Default::default();
    for (tenant, items) in by_tenant {
        // Asynchronous commit: the raw event stays durable and pending until
        // its "done" mark commits — in this transaction, or for an event of
        // several tenants synchronously afterwards, which WAL order makes
        // imply this one — so a commit lost in a crash only means processing
        // it again (idempotent). Sockets may already have had its events;
        // processed again they can get other seqs, so a client may hold a seq
        // the log then gives another event (a window of the last ~0.2 s
        // before a PostgreSQL crash; a client ahead of the log is told to
        // resync, see realtime::session).
        let scope = TenantScope::system(TenantId(tenant)).with_async_commit();
        let group: Vec<&Work> = items.iter().collect();
        let owned = own(&group, &tenants_of, &outcome);
        let parts = match guarded_live(pool, &mut conn, |c| apply_tenant(c, &scope, app_id, online, &group, &owned))? {
            Ok(applied) => {
                applied.record(tenant, &mut report, &mut marked);
                continue;
            }
            Err(e) if is_waiting(&e) => {
                fail(&mut outcome, &group, &e);
                continue;
            }
            Err(e) => {
                let mut events: Vec<i64> = items.iter().map(|(ev, _, _)| *ev).collect();
                events.dedup();
                if events.len() == 1 {
                    tracing::warn!(tenant, error = ?e, "webhook items failed");
                    fail(&mut outcome, &group, &e);
                    continue;
                }
                // One webhook that cannot be stored (a payload PostgreSQL
                // refuses, say) must not hold back the others: each again in
                // a transaction of its own, so only it retries and, in the
                // end, dead-letters.
                tracing::warn!(tenant, error = ?e, "a tenant's webhooks failed together; trying each alone");
                events
            }
        };
        for ev in parts {
            let part: Vec<&Work> = items.iter().filter(|(e, _, _)| *e == ev).collect();
            let owned = own(&part, &tenants_of, &outcome);
            match guarded_live(pool, &mut conn, |c| apply_tenant(c, &scope, app_id, online, &part, &owned))? {
                Ok(applied) => applied.record(tenant, &mut report, &mut marked),
                Err(e) => {
                    if !is_waiting(&e) {
                        tracing::warn!(tenant, webhook = ev, error = ?e, "webhook failed");
                    }
                    fail(&mut outcome, &part, &e);
                }
            }
        }
    }
    let attempts: HashMap<i64, i32> = claimed.iter().map(|c| (c.id, c.attempts)).collect();
    let done: Vec<i64> = outcome.iter().filter(|(_, o)| matches!(o, Outcome::Done)).map(|(id, _)| *id).collect();
    report.done = done.len();
    let rest: Vec<i64> = done.into_iter().filter(|id| !marked.contains(id)).collect();
    mark_done(&mut conn, &rest)?;
    for (id, o) in outcome {
        match o {
            Outcome::Done => {}
            Outcome::Dead(why) => {
                diesel::update(we::table.find(id))
                    .set((we::status.eq("dead"), we::last_error.eq(why)))
                    .execute(&mut conn)?;
                report.dead += 1;
            }
            Outcome::Retry(why) => {
                let n = attempts.get(&id).copied().unwrap_or(1);
                if n >= MAX_ATTEMPTS {
                    diesel::update(we::table.find(id))
                        .set((we::status.eq("dead"), we::last_error.eq(why)))
                        .execute(&mut conn)?;
                    report.dead += 1;
                } else {
                    let backoff = Duration::seconds(1i64 << n.clamp(0, 12));
                    diesel::update(we::table.find(id))
                        .set((we::next_attempt_at.eq(Utc::now() + backoff), we::last_error.eq(why)))
                        .execute(&mut conn)?;
                    report.retried += 1;
                }
            }
            Outcome::Wait => {
                // A suspended tenant: not an attempt that counts.
                diesel::update(we::table.find(id))
                    .set((
                        we::attempts.eq(we::attempts - 1),
                        we::next_attempt_at.eq(Utc::now() + Duration::seconds(SUSPENDED_RETRY_SECS)),
                        we::last_error.eq("tenant suspended; waiting"),
                    ))
                    .execute(&mut conn)?;
                report.retried += 1;
            }
        }
    }
    Ok(report)
}

/// An item to apply: (webhook event id, channel id, item).
type Work = (i64, i64, Item);

/// The code of the error [`guarded`] makes of a panic.
const PANICKED: &str = "processing_panicked";

/// Runs `work` on `conn`, a panic in it (a bug some payload met) being an
/// error with the code [`PANICKED`] rather than the end of the batch: a
/// batch that panicked would be claimed again once its lease ran out, and
/// panic again, with every webhook in it, for as long as the server ran
/// (a claim does not count attempts; only an outcome does). The connection,
/// left inside the transaction the panic cut short, is given up (the pool
/// drops it, which rolls it back) for a fresh one; an error only if no
/// fresh one can be had.
pub fn guarded<T>(
    pool: &PgPool,
    conn: &mut r2d2::PooledConnection<diesel::r2d2::ConnectionManager<PgConnection>>,
    work: impl FnOnce(&mut PgConnection) -> AppResult<T>,
) -> AppResult<AppResult<T>> {
    let pg: &mut PgConnection = conn;
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(pg))) {
        Ok(done) => Ok(done),
        Err(panic) => {
            use diesel::connection::{AnsiTransactionManager, TransactionManager};
            AnsiTransactionManager::transaction_manager_status_mut(&mut **conn).set_in_error();
            *conn = pool.get().map_err(DbError::from)?;
            let message = format!("processing it failed: {}", crate::app::panic_text(&panic));
            Ok(Err(AppError::new(crate::error::ErrorKind::Internal, PANICKED, message)))
        }
    }
}

/// [`guarded`], run once more on another connection when the connection
/// was lost under `work` (a restart, a failover, a proxy cutting it):
/// nothing of it committed, or, a commit's answer lost, what it did is
/// found done and not done twice. Left on the dead connection, the rest of
/// the batch (each webhook alone, the marks) would fail too, as internal
/// errors, and the whole batch wait out its lease: a minute for a blip.
fn guarded_live<T>(
    pool: &PgPool,
    conn: &mut r2d2::PooledConnection<diesel::r2d2::ConnectionManager<PgConnection>>,
    mut work: impl FnMut(&mut PgConnection) -> AppResult<T>,
) -> AppResult<AppResult<T>> {
    match guarded(pool, conn, &mut work)? {
        Err(e) if e.code == crate::error::DATABASE_UNAVAILABLE => {
            use diesel::connection::{AnsiTransactionManager, TransactionManager};
            tracing::warn!(error = ?e, "the processor's connection was lost; going on with another");
            // So that the pool drops it rather than hand it out again.
            AnsiTransactionManager::transaction_manager_status_mut(&mut **conn).set_in_error();
            *conn = crate::db::live_connection(pool)?;
            guarded(pool, conn, work)
        }
        done => Ok(done),
    }
}

/// What one tenant transaction committed.
struct Applied {
    written: Vec<super::events::StoredEvent>,
    followups: Followups,
    marked: Vec<i64>,
    indexed_text: usize,
}

impl Applied {
    fn record(self, tenant: i64, report: &mut BatchReport, marked: &mut std::collections::HashSet<i64>) {
        report.events.push((tenant, self.written));
        report.indexed_text.push((tenant, self.indexed_text));
        marked.extend(self.marked);
        report.profile_lookups.extend(self.followups.profile_lookups);
        report.media_copies.extend(self.followups.media_copies);
        report.queued_sends += self.followups.queued_sends;
        report.templates_changed.extend(self.followups.templates_changed);
        if self.followups.kept_early {
            report.kept_early.push(tenant);
        }
    }
}

/// Applies `part` (one tenant's items, in order) in one tenant transaction
/// that also marks the webhook events `own` done.
fn apply_tenant(
    conn: &mut PgConnection,
    scope: &TenantScope,
    app_id: &str,
    online: &Online,
    part: &[&Work],
    own: &[i64],
) -> AppResult<Applied> {
    with_tenant(conn, scope, |tc| {
        let mut log = EventLog::new();
        let mut ingest = Ingest::new(&mut log, app_id, online);
        let mut ids: Vec<i64> = part.iter().map(|(_, c, _)| *c).collect();
        ids.sort_unstable();
        ids.dedup();
        // Their settings (reply targets, hours) stay as read until commit.
        channels::read_settings(tc, &ids)?;
        let channels_of = channels::find_many(tc, &ids)?;
        channels_of.values().for_each(|c| ingest.names.put_channel(c));
        let refs: Vec<(i64, &Item)> = part.iter().map(|(_, c, i)| (*c, i)).collect();
        ingest.prefetch(tc, &refs, &channels_of)?;
        for (_, channel_id, item) in part {
            // The route named it; gone only if deleted since (then retried, then dead).
            let channel = channels_of.get(channel_id).ok_or_else(|| AppError::not_found("channel"))?;
            ingest.apply(tc, channel, item)?;
        }
        ingest.finish(tc)?;
        channels::note_webhooks(tc, &ids)?;
        let followups = std::mem::take(&mut ingest.followups);
        let indexed_text = ingest.indexed_text;
        // Conversations auto-assigned here are kept in their assignee's
        // notifications (`notifications`), as in `tenant_with_events`; the
        // server's assignments are not mailed (`notice_mail`).
        let notices = log.member_notices();
        super::notifications::keep(tc, &mut log, &notices)?;
        // Marked before the log is written: an erasure scrubbing one of
        // these bodies (`scrub`, which may lock it between our claim and
        // here) writes its own events after it; taking the log's counter
        // first, then waiting for that body, the two would deadlock.
        mark_done(tc.pg(), own)?;
        let written = log.write(tc)?;
        Ok(Applied { written, followups, marked: own.to_vec(), indexed_text })
    })
}

/// The webhook events of `part` whose every item is in it and that have not
/// failed: their "done" mark rides in the tenant transaction.
fn own(part: &[&Work], tenants_of: &HashMap<i64, Vec<i64>>, outcome: &HashMap<i64, Outcome>) -> Vec<i64> {
    let mut ids: Vec<i64> = part
        .iter()
        .map(|(ev, _, _)| *ev)
        .filter(|ev| tenants_of.get(ev).is_some_and(|t| t.len() == 1) && matches!(outcome.get(ev), Some(Outcome::Done)))
        .collect();
    ids.dedup();
    ids
}

/// The tenant cannot take work now (suspended, or its schema not migrated yet).
fn is_waiting(e: &AppError) -> bool {
    e.code == "tenant_suspended" || e.code == "tenant_not_ready"
}

/// Records that `part` (one webhook's items, or a group of one webhook)
/// failed with `e`: waits for a tenant that cannot take work now,
/// dead-letters at once what panicked (a bug: trying again would meet it
/// again), retries otherwise (dead letters stay dead).
fn fail(outcome: &mut HashMap<i64, Outcome>, part: &[&Work], e: &AppError) {
    for (ev, _, _) in part {
        let entry = outcome.entry(*ev).or_insert(Outcome::Done);
        if matches!(entry, Outcome::Dead(_)) {
            continue;
        }
        *entry = if is_waiting(e) {
            Outcome::Wait
        } else if e.code == PANICKED {
            Outcome::Dead(e.message.clone())
        } else {
            Outcome::Retry(format!("{e:?}"))
        };
    }
}

fn mark_done(conn: &mut PgConnection, ids: &[i64]) -> AppResult<()> {
    if !ids.is_empty() {
        prepared(
            "UPDATE public.webhook_events SET status = 'done', processed_at = now(), last_error = NULL \
              WHERE id = ANY($1)",
        )
        .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(ids)
        .execute(conn)?;
    }
    Ok(())
}

#[derive(Debug, Serialize, Queryable)]
pub struct DeadLetter {
    #[serde(serialize_with = "crate::ids::as_string")]
    pub id: i64,
    pub received_at: chrono::DateTime<Utc>,
    pub attempts: i32,
    pub last_error: Option<String>,
    #[serde(skip)]
    pub body: Vec<u8>,
}

pub fn dead_letters(conn: &mut PgConnection, after: Option<i64>, limit: i64) -> AppResult<Vec<DeadLetter>> {
    let mut q = we::table
        .filter(we::status.eq("dead"))
        .order(we::id)
        .limit(limit)
        .select((we::id, we::received_at, we::attempts, we::last_error, we::body))
        .into_boxed();
    if let Some(a) = after {
        q = q.filter(we::id.gt(a));
    }
    Ok(q.load(conn)?)
}

/// Puts dead letters back in the queue (all of them when `ids` is empty).
pub fn replay(conn: &mut PgConnection, ids: &[i64]) -> AppResult<usize> {
    let base = we::table.filter(we::status.eq("dead"));
    let set = (we::status.eq("pending"), we::attempts.eq(0), we::next_attempt_at.eq(Utc::now()));
    let n = if ids.is_empty() {
        diesel::update(base).set(set).execute(conn)?
    } else {
        diesel::update(base.filter(we::id.eq_any(ids))).set(set).execute(conn)?
    };
    Ok(n)
}

/// The processor loop inside `serve`: runs batches while there is work,
/// then sleeps until woken (a webhook stored by this instance) or the next
/// row falls due (retries; work other instances stored and left, looked
/// for at least every two seconds: `db::queue`). A helper
/// (`primary` false) claims only while the last batch came back full.
pub async fn run(state: actix_web::web::Data<AppState>, primary: bool) {
    // Smaller batches answer sooner; larger ones carry more per transaction.
    let batch = env_or("SWITCHBOARD_WEBHOOK_BATCH", 1000i64).clamp(1, 1000);
    let stored = state.webhooks_stored.clone();
    // Under load the processor lets work gather. Every batch writes once to
    // each socket that sees any of it, so with many agents online the socket
    // writes, more than the SQL, are what a batch costs, and fewer, larger
    // batches keep live push from eating the ingest (bench realtime: push
    // on/off). After every batch (of at least `wait_writes_at`, default 1)
    // it first lets this instance's sockets write what they were handed (at
    // most `gather`, and not past a stall: a client that stopped reading is
    // not waited for, `Feed::settle`): the more they have to write, the more
    // webhooks the next batch finds. After one of at least `gather_at` it also waits (at most
    // `gather`) for half a batch more. Neither after a full batch: the
    // backlog is deep already. A batch of at least `settle_at` is also
    // handed to the hub as a backlog batch: its frames may wait for the next
    // batch's, so a burst costs a round of socket writes per two batches or
    // more, not per batch (realtime::hub); the first claim that finds
    // nothing sends what waits.
    //
    // Waiting for the writes after small batches too is what keeps a burst
    // out of a slow equilibrium. It used to start at `settle_at`: a burst
    // whose first batches came in under it stayed in small batches, each
    // writing to every socket; the writes slowed the webhook answers on the
    // same threads, intake and processing met at ~3,000/s, and the batches
    // never grew. Rounds of `bench realtime` were bimodal, ~5,700–6,200/s or
    // ~2,800–3,600/s with push to 1,000 sockets (push on/off medians 43–75 %
    // in six runs). Waiting after every batch, in four runs alternated with
    // the old threshold: every round 4,500–6,400/s, medians 78–85 % against
    // 65–72 %; steady batches grew from ~15 to ~30 and the p50 latency by
    // ~5–10 ms (p99 44–75 ms against 37–67 ms).
    //
    // `settle_at` must stay above the batches of a steady load. At 2,000
    // webhooks/s with 1,000 agents they hold ~10–30 on a fast machine and
    // ~30–45 on a slower one, where at 50 the tail of batches above it was
    // settled and held: each wait made the next batch larger and likelier to
    // wait in turn, and the p99 went from ~90–115 to 155–305 ms (bench
    // realtime, alternated runs). At 150 bursts still settle within their
    // first batches (they run at 400–1,000 a batch).
    // That was not enough on the slowest machines: see `backlog_rate`.
    let settle_at = env_or("SWITCHBOARD_WEBHOOK_SETTLE_AT", 150i64);
    let wait_writes_at = env_or("SWITCHBOARD_WEBHOOK_WAIT_WRITES_AT", 1i64);
    let gather_at = env_or("SWITCHBOARD_WEBHOOK_GATHER_AT", 200i64);
    let gather = std::time::Duration::from_millis(env_or("SWITCHBOARD_WEBHOOK_GATHER_MS", 50u64));
    let mut behind = state.processor_behind.subscribe();
    // How fast webhooks come, not how large batches are, tells heavy load
    // from a steady one. Batch size alone could not: on a slower machine
    // (bench realtime, the sixth, ninth and fifteenth in
    // docs/BENCHMARKS.md) steady batches at 2,000/s reached `settle_at`,
    // and each hold made the next batch larger and likelier to be held in
    // turn, the p99 locked in at 200–700 ms. The rate a batch's claim
    // measures does not grow with the waits, so the hold and the gathering
    // no longer feed themselves. Below `backlog_rate` latency comes first;
    // above it (bursts, which run at 3,000–9,000/s) fewer, larger socket
    // writes do.
    let backlog_rate = env_or("SWITCHBOARD_WEBHOOK_BACKLOG_RATE", 2600f64);
    let mut claims = ClaimRate::default();
    // The last wait passed without a wake (see below).
    let mut quiet = false;
    let set_behind = |now: bool| state.processor_behind.send_if_modified(|b| std::mem::replace(b, now) != now);
    let mut failing = crate::telemetry::Repeats::default();
    loop {
        if !primary && behind.wait_for(|b| *b).await.is_err() {
            return; // The state (and its sender) is gone: the server stopped.
        }
        let pool = state.db.pool().clone();
        let app_id = state.config.meta.app_id.clone();
        let online = state.online.clone();
        let claim_started = std::time::Instant::now();
        let result = actix_web::web::block(move || {
            let started = std::time::Instant::now();
            let r = process_batch(&pool, &app_id, &online, batch);
            if r.as_ref().is_ok_and(|r| r.claimed > 0) {
                crate::metrics::inc(&crate::metrics::WEBHOOK_BATCH_MICROS, started.elapsed().as_micros() as u64);
            }
            r
        })
        .await;
        if let Ok(pass) = &result {
            crate::telemetry::tell_repeats!(failing, "webhook batch", pass);
        }
        match result {
            Ok(Ok(report)) if report.claimed > 0 => {
                set_behind(report.claimed as i64 >= batch);
                let claimed = report.claimed as i64;
                use crate::metrics::{inc, WEBHOOKS_DEAD, WEBHOOKS_PROCESSED, WEBHOOKS_RETRIED, WEBHOOK_BATCHES};
                inc(&WEBHOOK_BATCHES, 1);
                inc(&WEBHOOKS_PROCESSED, report.done as u64);
                inc(&WEBHOOKS_DEAD, report.dead as u64);
                inc(&WEBHOOKS_RETRIED, report.retried as u64);
                let rate = claims.note(claim_started, report.claimed as u64);
                // A batch this large, with webhooks coming faster than
                // `backlog_rate`, most likely has more queued behind it:
                // its frames may wait for the next batch's (realtime::hub).
                let heavy = rate >= backlog_rate || claimed >= batch;
                let pace = if claimed >= settle_at && heavy { Pace::Backlog } else { Pace::Now };
                after_batch(&state, report, pace);
                if primary && claimed >= wait_writes_at && claimed < batch {
                    state.feed.settle(gather).await;
                }
                if primary && claimed >= gather_at && heavy && claimed < batch {
                    gather_more(&stored, &state.wake_processor, batch as u64 / 2, gather).await;
                }
                continue;
            }
            Ok(Ok(_)) => {
                claims.note(claim_started, 0);
                set_behind(false);
                // Nothing more came: frames held for a next batch go out now
                // (the helper's too: only the primary keeps claiming).
                if primary {
                    state.feed.flush();
                    // Under load a store wakes this wait within
                    // milliseconds: the due time is asked only once a wait
                    // passed unwoken. (The helper goes back to waiting for
                    // a full batch, below.)
                    let wait = if quiet { super::idle_wait(&state, Queue::Webhooks).await } else { HELD_RETRY };
                    quiet = tokio::time::timeout(wait, state.wake_processor.notified()).await.is_err();
                    continue;
                }
            }
            Ok(Err(_)) => {} // told above
            Err(e) => tracing::error!(error = %e, "webhook worker panicked"),
        }
        let _ = tokio::time::timeout(HELD_RETRY, state.wake_processor.notified()).await;
    }
}

/// Webhooks claimed per second over the last [`ClaimRate::WINDOW`]: what
/// each claim took arrived since the one before it.
#[derive(Default)]
pub struct ClaimRate {
    claims: std::collections::VecDeque<(std::time::Instant, u64)>,
}

impl ClaimRate {
    pub const WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

    /// Notes a claim that started `at` and took `claimed`; the rate now
    /// (0 until two claims span some time). A claim that found nothing
    /// drained the queue: the count starts again from it.
    pub fn note(&mut self, at: std::time::Instant, claimed: u64) -> f64 {
        if claimed == 0 {
            self.claims.clear();
        }
        self.claims.push_back((at, claimed));
        while self.claims.len() > 2 && self.claims.front().is_some_and(|(t, _)| at.duration_since(*t) > Self::WINDOW) {
            self.claims.pop_front();
        }
        let Some(&(first, _)) = self.claims.front() else { return 0.0 };
        let span = at.duration_since(first).as_secs_f64();
        if span <= 0.0 {
            return 0.0;
        }
        // The first claim's webhooks came before the span began.
        let came: u64 = self.claims.iter().skip(1).map(|(_, n)| n).sum();
        came as f64 / span
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Waits until `want` more webhooks are stored here (`stored` counts them,
/// `stored_signal` rings at each store) or `most` has passed.
pub async fn gather_more(stored: &AtomicU64, stored_signal: &Notify, want: u64, most: std::time::Duration) {
    let mark = stored.load(Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + most;
    while stored.load(Ordering::Relaxed).wrapping_sub(mark) < want {
        if tokio::time::timeout_at(deadline, stored_signal.notified()).await.is_err() {
            break;
        }
    }
}

fn after_batch(state: &actix_web::web::Data<AppState>, report: BatchReport, pace: Pace) {
    for (tenant, events) in report.events {
        state.feed.committed(tenant, events, pace);
    }
    let now = std::time::Instant::now();
    for (tenant, bytes) in report.indexed_text {
        state.search_backlog.indexed(TenantId(tenant), bytes, now);
    }
    if report.queued_sends > 0 {
        state.wake_sender.notify_one();
    }
    // Bounded too: what does not fit is queued again when it is asked for.
    for copy in report.media_copies.into_iter().filter(|c| state.cdn_hosts.allows(&c.url)) {
        let _ = state.media_copies.try_send(copy);
    }
    for lookup in report.profile_lookups {
        // Bounded queue: when it is full the lookup is simply skipped; the
        // contact keeps its id and is looked up on its next message.
        let _ = state.profile_lookups.try_send(lookup);
    }
    for tenant in report.kept_early {
        sweep_soon(state, tenant);
    }
    for waba in report.templates_changed {
        state.templates.forget(&waba);
    }
}

/// How long after a batch kept a change for a message it did not find the
/// tenant's kept changes are matched again ([`super::early::sweep`]).
const SWEEP_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// Two workers can race: one keeps an edit, an unsend or a receipt while
/// the other stores its message, neither seeing the other's uncommitted
/// row, so each commits without the other. The keeping side looks again
/// once the storing transaction must have ended (a batch takes well under
/// a second); the hourly sweep stays the net for a slower one. One sweep
/// per tenant at a time: a keep committed before it starts is in it.
fn sweep_soon(state: &actix_web::web::Data<AppState>, tenant: i64) {
    let fresh = state.sweeps_due.lock().map(|mut due| due.insert(tenant)).unwrap_or(false);
    if !fresh {
        return;
    }
    let state = state.clone();
    actix_web::rt::spawn(async move {
        tokio::time::sleep(SWEEP_AFTER).await;
        if let Ok(mut due) = state.sweeps_due.lock() {
            due.remove(&tenant);
        }
        let r = state
            .db
            .tenant(TenantScope::maintenance(TenantId(tenant)), |tc| {
                let mut log = EventLog::new();
                let applied = super::early::sweep(tc, &mut log)?;
                log.notify(tc)?;
                Ok::<_, AppError>(applied)
            })
            .await;
        match r {
            Ok(0) => {}
            Ok(n) => tracing::info!(tenant, applied = n, "kept changes matched messages a racing batch stored"),
            Err(e) => tracing::debug!(tenant, error = ?e, "sweep of kept changes skipped"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// What a failed webhook becomes: a panic is dead at once, a waiting
    /// tenant waits, anything else retries, and a dead letter stays dead.
    #[test]
    fn a_panic_dead_letters_and_other_failures_retry_or_wait() {
        let item =
            |ev: i64| -> Work { (ev, 1, Item::Delivery { contact: "c".into(), mids: Vec::new(), watermark: None }) };
        let (one, two, three, four) = (item(1), item(2), item(3), item(4));
        let mut outcome: HashMap<i64, Outcome> = HashMap::new();
        outcome.insert(4, Outcome::Dead("no tenant holds it".into()));
        let panicked = AppError::new(crate::error::ErrorKind::Internal, PANICKED, "processing it failed: a bug");
        fail(&mut outcome, &[&one], &panicked);
        fail(&mut outcome, &[&two], &AppError::unavailable("tenant_suspended", "suspended"));
        fail(&mut outcome, &[&three], &AppError::unavailable("retry", "deadlock"));
        fail(&mut outcome, &[&four], &panicked);
        assert!(matches!(&outcome[&1], Outcome::Dead(why) if why == "processing it failed: a bug"));
        assert!(matches!(outcome[&2], Outcome::Wait));
        assert!(matches!(outcome[&3], Outcome::Retry(_)));
        assert!(matches!(&outcome[&4], Outcome::Dead(why) if why == "no tenant holds it"));
    }

    #[test]
    fn the_claim_rate_counts_what_came_since_the_first_claim_of_the_window() {
        use std::time::Instant;
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut rate = ClaimRate::default();
        assert_eq!(rate.note(t0, 40), 0.0, "one claim spans no time");
        // Steady 2,000/s in batches of 200, whatever the gaps between them.
        assert_eq!(rate.note(ms(100), 200), 2000.0);
        assert_eq!(rate.note(ms(200), 200), 2000.0);
        for i in 3..30 {
            let r = rate.note(ms(100 * i), 200);
            assert!((r - 2000.0).abs() < 1.0, "{r}");
        }
        // A burst: 900 every 100 ms reads as a burst within two claims.
        rate.note(ms(3000), 0);
        rate.note(ms(3010), 1);
        assert!(rate.note(ms(3110), 900) > 8000.0);
        // Long idle: a claim after it reads low, not as a burst.
        assert_eq!(rate.note(ms(9000), 0), 0.0);
        assert!(rate.note(ms(10500), 5) < 10.0);
        assert!(rate.claims.len() <= 3);
    }

    #[tokio::test]
    async fn gathering_ends_when_enough_arrived_or_at_the_deadline() {
        let stored = Arc::new(AtomicU64::new(7));
        let signal = Arc::new(Notify::new());
        let (s, n) = (stored.clone(), signal.clone());
        let feeder = tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                s.fetch_add(60, Ordering::Relaxed);
                n.notify_one();
            }
        });
        // 250 wanted; 300 come within ~25 ms: it returns long before a minute.
        tokio::time::timeout(Duration::from_secs(30), gather_more(&stored, &signal, 250, Duration::from_secs(60)))
            .await
            .expect("returns once enough were stored");
        assert!(stored.load(Ordering::Relaxed) >= 7 + 250);
        feeder.await.expect("feeder");
        // Nothing comes: it gives up at its deadline.
        tokio::time::timeout(Duration::from_secs(30), gather_more(&stored, &signal, 1, Duration::from_millis(20)))
            .await
            .expect("returns at the deadline");
    }
}
