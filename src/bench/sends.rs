//! `bench sends`: agents' replies through the sender to the fake Graph API,
//! in this process, as `serve` runs them: the sends of
//! [`SENDS_AT_ONCE`](crate::inbox::sender::SENDS_AT_ONCE) conversations at
//! once, each conversation's in order, on a pool of `serve`'s default size
//! (10), while the fake's webhooks for each send (echo, delivery, read)
//! come back and are processed beside them.
//!
//! Two rounds: Meta answering at once (what our side costs), then Meta
//! taking `--meta-ms` over each send (the Send API's answer takes a few
//! hundred milliseconds; the sends at once bound the rate then). Printed
//! for each: replies a second from the first written to the last recorded
//! sent, the time from a reply's commit to its record as sent (p50, p99),
//! the pool's connections in use at most and how often all of them were,
//! whether every conversation's replies reached Meta in the order
//! written (each once), how many sends the channels' rate handed back
//! to the queue, and how long the server took to answer the
//! customers' webhooks meanwhile (their messages, `--inbound-per-second`
//! through the fake, which waits for the answer): the pool the sends take
//! is the one the webhooks are stored with.
//!
//! `--instances N` runs N instances' workers on the database, each with
//! its own pool, as N `serve` processes: their senders share each
//! channel's rate (`inbox::roster`), which `SWITCHBOARD_SEND_RATE` makes
//! the bound to see.

use anyhow::Context;
use diesel::prelude::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ScratchDb;
use crate::channels::{NewChannel, Platform};
use crate::cli::BenchArgs;
use crate::config::{DbConfig, EncryptionKey, ServerConfig, Signup};
use crate::db::migrate::run_public_migrations;
use crate::db::schema::{memberships, users};
use crate::db::{connect_pool, PoolOptions, TenantScope};
use crate::error::AppError;
use crate::ids::{TenantId, UserId};
use crate::inbox::messages::ReplyOptions;
use crate::inbox::ConversationId;
use crate::meta::fake::{FakeConfig, FakeMeta};
use crate::secret::Secret;
use crate::tenancy::{self, TenantSlug};

/// Pages the conversations are spread over (each has its own pace).
const PAGES: usize = 20;
/// `serve`'s default pool (`SWITCHBOARD_DB_POOL_SIZE`).
const POOL: u32 = 10;
/// Replies written at once, as that many agents pressing send.
const WRITERS: usize = 16;

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let cfg = DbConfig::from_env()?;
    let scratch = ScratchDb::create(cfg.database_url.expose(), "sends")?;
    let pool = connect_pool(&scratch.url, PoolOptions { max_size: POOL, min_idle: Some(POOL), ..Default::default() })?;
    let (tenant, agent) = {
        let mut conn = pool.get()?;
        run_public_migrations(&mut conn)?;
        let t =
            tenancy::provision(&mut conn, &TenantSlug::parse("sends").map_err(|e| anyhow::anyhow!("{e}"))?, "Sends")
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let user: i64 = diesel::insert_into(users::table)
            .values((users::email.eq("agent@bench.test"), users::name.eq("Agent"), users::password_hash.eq("-")))
            .returning(users::id)
            .get_result(&mut conn)?;
        diesel::insert_into(memberships::table)
            .values((memberships::user_id.eq(user), memberships::tenant_id.eq(t.id), memberships::role.eq("admin")))
            .execute(&mut conn)?;
        (t.tenant_id(), UserId(user))
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let fake_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let (addr, fake_base) = (listener.local_addr()?, format!("http://{}", fake_listener.local_addr()?));
    let fake_cfg = FakeConfig::default();
    let keys = vec![EncryptionKey { id: "bench".into(), key: Secret::new([3u8; 32]) }];
    let config = Arc::new(ServerConfig {
        db: DbConfig { database_url: Secret::new(scratch.url.clone()), pool_size: POOL },
        bind: addr,
        public_url: format!("http://{addr}"),
        jwt_secret: Secret::new(b"bench-secret-bench-secret-bench-secret".to_vec()),
        encryption_keys: keys.clone(),
        signup: Signup::Closed,
        operator_token: None,
        meta: fake_cfg.meta_config(&fake_base, "v"),
        json_logs: false,
        allowed_origins: Vec::new(),
        ws_max_per_member: None,
        webhooks_private_ok: true,
        mail: None,
        keep_alive: crate::http::KEEP_ALIVE,
    });
    let conversations = args.conversations.max(1);
    let replies = args.replies.max(1);
    let instances = args.instances.clamp(1, 4);
    println!(
        "switchboard bench sends ({replies} replies over {conversations} conversations of {PAGES} pages, \
         {instances} instance(s), each with a pool of {POOL} and {} sends at once)",
        crate::inbox::sender::sends_at_once()
    );
    // The other instances: their own pools and workers on this database
    // (no HTTP: the fake's webhooks reach the first, the queues are shared).
    let others = (1..instances)
        .map(|_| connect_pool(&scratch.url, PoolOptions { max_size: POOL, min_idle: Some(POOL), ..Default::default() }))
        .collect::<Result<Vec<_>, _>>()?;
    actix_web::rt::System::new().block_on(async move {
        let fake = FakeMeta::new(fake_cfg);
        fake.set_webhook_target(Some(format!("http://{addr}/webhooks/meta")));
        actix_web::rt::spawn(fake.build_server(fake_listener)?);
        let db = crate::db::Db::new(pool.clone());
        let state = actix_web::web::Data::new(crate::app::AppState::new(config, db));
        crate::app::spawn_workers(&state);
        for pool in others {
            let other = actix_web::web::Data::new(crate::app::AppState::new(state.config.clone(), crate::db::Db::new(pool)));
            crate::app::spawn_workers(&other);
        }
        actix_web::rt::spawn(crate::http::build_server(state.clone(), listener)?);
        let http = reqwest::Client::new();
        let pages = connect_pages(&state, &http, &fake_base, tenant, &keys).await?;
        let convs = customers_write(&state, &http, &fake_base, tenant, &pages, conversations).await?;
        for (round, meta_ms) in [(1, 0), (2, args.meta_ms)] {
            let n = if meta_ms == 0 { replies } else { replies.min(args.slow_replies.max(1)) };
            if meta_ms > 0 {
                let slow = json!({"path": "/messages", "method": "POST", "delay_ms": meta_ms, "times": n});
                http.post(format!("{fake_base}/_fake/errors")).json(&slow).send().await?.error_for_status()?;
            }
            let customers = Customers { pages: &pages, convs: &convs, per_second: args.inbound_per_second };
            let r = round_of(&state, &http, &fake_base, tenant, agent, &customers, round, n).await?;
            let meta = if meta_ms == 0 { "Meta answering at once".to_string() } else { format!("Meta taking {meta_ms} ms") };
            let inbound = match args.inbound_per_second {
                0 => "none (--inbound-per-second 0)".to_string(),
                _ => format!(
                    "{} answered, p50 {:.1} ms, p99 {:.1} ms",
                    r.inbound.len(),
                    super::percentile(&r.inbound, 0.5).as_secs_f64() * 1e3,
                    super::percentile(&r.inbound, 0.99).as_secs_f64() * 1e3,
                ),
            };
            println!(
                "{meta}: {n} replies sent in {:.2}s: {:.0} replies/s; commit → recorded sent p50 {:.1} ms, p99 {:.1} ms; \
                 pool in use at most {}/{POOL}, all of it {:.0} % of the time; in the order written: {}; \
                 handed back by the channels' rate: {}; customers' webhooks meanwhile: {inbound}",
                r.took.as_secs_f64(),
                n as f64 / r.took.as_secs_f64(),
                r.p50_ms,
                r.p99_ms,
                r.pool_most,
                r.pool_full_pct,
                if r.in_order { "every conversation" } else { "NO" },
                r.paced,
            );
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(())
}

/// Pages at the fake, connected in the tenant: their ids.
async fn connect_pages(
    state: &crate::app::AppState,
    http: &reqwest::Client,
    fake_base: &str,
    tenant: TenantId,
    keys: &[EncryptionKey],
) -> anyhow::Result<Vec<String>> {
    let pages: Vec<Value> = (0..PAGES).map(|i| json!({"name": format!("Bench page {i}")})).collect();
    let created: Value = http
        .post(format!("{fake_base}/_fake/users"))
        .json(&json!({"name": "Bench owner", "pages": pages}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let made: Vec<(String, String)> = created["pages"]
        .as_array()
        .context("the fake made no pages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?.to_string(), p["access_token"].as_str()?.to_string())))
        .collect();
    anyhow::ensure!(made.len() == PAGES, "the fake made {} pages", made.len());
    let keyring = crate::crypto::Keyring::new(keys);
    let to_connect = made.clone();
    state
        .db
        .tenant(TenantScope::system(tenant), move |tc| {
            for (id, token) in to_connect {
                let c = NewChannel {
                    platform: Platform::Facebook,
                    external_id: id.clone(),
                    name: id,
                    token: Secret::new(token),
                    parent_external_id: None,
                    meta_user_id: None,
                };
                crate::channels::upsert_connected(tc, &keyring, None, &c)?;
            }
            Ok::<_, AppError>(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(made.into_iter().map(|(id, _)| id).collect())
}

/// Each customer writes to a page (through the fake, which signs and
/// sends the webhook); their conversations, once processed.
async fn customers_write(
    state: &crate::app::AppState,
    http: &reqwest::Client,
    fake_base: &str,
    tenant: TenantId,
    pages: &[String],
    n: usize,
) -> anyhow::Result<Vec<i64>> {
    for c in 0..n {
        let body =
            json!({"to": pages[c % pages.len()], "from": format!("7100{c:012}"), "text": "Olá! Têm em azul? 💙"});
        http.post(format!("{fake_base}/_fake/inbound")).json(&body).send().await?.error_for_status()?;
    }
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let ids = state
            .db
            .tenant(TenantScope::system(tenant), |tc| {
                use crate::db::tenant_schema::conversations as cv;
                Ok::<_, AppError>(cv::table.order(cv::id).select(cv::id).load::<i64>(tc.pg())?)
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        if ids.len() >= n {
            return Ok(ids);
        }
        anyhow::ensure!(Instant::now() < until, "{} of {n} conversations after a minute", ids.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The customers of a round: the pages, the conversations, whose customers
/// (`convs.len()` of them) write the pages as [`customers_write`] had them,
/// and how many of their messages come a second while the replies go.
struct Customers<'a> {
    pages: &'a [String],
    convs: &'a [i64],
    per_second: u64,
}

struct Round {
    took: Duration,
    p50_ms: f64,
    p99_ms: f64,
    pool_most: u32,
    pool_full_pct: f64,
    in_order: bool,
    /// Sends the channels' rate handed back to the queue (each a claim, a
    /// read and a write more).
    paced: u64,
    /// The customers' webhooks' answer times, POST to the fake's inbound
    /// to its answer (the fake waits for ours).
    inbound: Vec<Duration>,
}

/// Writes `n` replies (`WRITERS` at a time, conversation after
/// conversation) and waits until every one is recorded sent, the
/// conversations' customers writing meanwhile ([`customers_write_meanwhile`]).
#[allow(clippy::too_many_arguments)]
async fn round_of(
    state: &actix_web::web::Data<crate::app::AppState>,
    http: &reqwest::Client,
    fake_base: &str,
    tenant: TenantId,
    agent: UserId,
    customers: &Customers<'_>,
    round: usize,
    n: usize,
) -> anyhow::Result<Round> {
    let convs = customers.convs;
    use futures_util::StreamExt;
    let paced_before = crate::metrics::SENDS_PACED.load(Ordering::Relaxed);
    let recorded_before = replies_recorded();
    // The pool, sampled every 2 ms: connections in use at most, and how
    // often all were.
    let (done, most) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
    let sampler = {
        let (pool, done, most) = (state.db.pool().clone(), done.clone(), most.clone());
        std::thread::spawn(move || {
            let (mut samples, mut full) = (0u64, 0u64);
            while !done.load(Ordering::Relaxed) {
                let s = pool.state();
                let in_use = s.connections - s.idle_connections;
                most.fetch_max(in_use, Ordering::Relaxed);
                samples += 1;
                full += u64::from(in_use >= POOL);
                std::thread::sleep(Duration::from_millis(2));
            }
            full as f64 / samples.max(1) as f64 * 100.0
        })
    };
    let inbound = actix_web::rt::spawn(customers_write_meanwhile(
        http.clone(),
        fake_base.to_string(),
        customers.pages.to_vec(),
        (convs.len(), customers.per_second),
        done.clone(),
    ));
    let started = Instant::now();
    let texts: Vec<(i64, String)> =
        (0..n).map(|i| (convs[i % convs.len()], format!("r{round}-{:05} Segue o link 🔗", i))).collect();
    let written = futures_util::stream::iter(texts.clone())
        .map(|(conv, text)| {
            let state = state.clone();
            async move {
                let r = state
                    .tenant_with_events(TenantScope::system(tenant), move |tc, log| {
                        crate::inbox::messages::create_reply(
                            tc,
                            log,
                            agent,
                            crate::auth::Role::Admin,
                            ConversationId(conv),
                            text,
                            ReplyOptions { client_id: None, reply_to: None, sign: Some(false) },
                        )
                    })
                    .await;
                state.wake_sender.notify_one();
                r
            }
        })
        .buffer_unordered(WRITERS)
        .collect::<Vec<_>>()
        .await;
    if let Some(Err(e)) = written.into_iter().find(|r| r.is_err()) {
        anyhow::bail!("a reply was refused: {e:?}");
    }
    let prefix = format!("r{round}-%");
    let until = Instant::now() + Duration::from_secs(600);
    // The sender's counters say when the round's replies may all be
    // recorded, read without a query: a count every 10 ms took a
    // connection of the pool being measured, and CPU beside the sends. The
    // messages then say whether they are (another reply, counted too, may
    // have ended the wait early: then they are counted every 10 ms), and
    // every 100 ms meanwhile (a reply an echo marked sent first is not
    // counted).
    let mut looked = Instant::now();
    loop {
        if replies_recorded() - recorded_before < n as u64 && looked.elapsed() < Duration::from_millis(100) {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        looked = Instant::now();
        let like = prefix.clone();
        let left = state
            .db
            .tenant(TenantScope::system(tenant), move |tc| {
                use crate::db::tenant_schema::messages as m;
                Ok::<_, AppError>(
                    m::table
                        .filter(m::text.like(like))
                        .filter(m::status.eq("pending"))
                        .count()
                        .get_result::<i64>(tc.pg())?,
                )
            })
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        if left == 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < until, "{left} replies still pending after ten minutes");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    let paced = crate::metrics::SENDS_PACED.load(Ordering::Relaxed) - paced_before;
    done.store(true, Ordering::Relaxed);
    let pool_full_pct = sampler.join().unwrap_or(f64::NAN);
    let (p50_ms, p99_ms) = commit_to_sent(state, tenant, prefix).await?;
    let in_order = reached_in_order(http, fake_base, round).await?;
    let inbound = inbound.await.context("the customers' writer")??;
    let pool_most = most.load(Ordering::Relaxed);
    Ok(Round { took, p50_ms, p99_ms, pool_most, pool_full_pct, in_order, paced, inbound })
}

/// Replies this process recorded sent or failed (`inbox::sender`).
fn replies_recorded() -> u64 {
    crate::metrics::MESSAGES_SENT.load(Ordering::Relaxed) + crate::metrics::MESSAGES_FAILED.load(Ordering::Relaxed)
}

/// The conversations' customers write, `per_second` one after another (none
/// at 0), until `done`: each webhook's answer time.
async fn customers_write_meanwhile(
    http: reqwest::Client,
    fake_base: String,
    pages: Vec<String>,
    (customers, per_second): (usize, u64),
    done: Arc<AtomicBool>,
) -> anyhow::Result<Vec<Duration>> {
    if per_second == 0 {
        return Ok(Vec::new());
    }
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / per_second.min(1_000_000)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut times, mut c) = (Vec::new(), 0usize);
    while !done.load(Ordering::Relaxed) {
        tick.tick().await;
        let body = json!({"to": pages[c % pages.len()], "from": format!("7100{:012}", c % customers.max(1)),
            "text": "E o prazo de entrega? 🚚"});
        let asked = Instant::now();
        let r: Value = http.post(format!("{fake_base}/_fake/inbound")).json(&body).send().await?.json().await?;
        anyhow::ensure!(r["delivered_status"] == 200, "a customer's webhook was not answered 200: {r}");
        times.push(asked.elapsed());
        c += 1;
    }
    Ok(times)
}

/// From each reply's commit to the event that announced it sent (p50, p99, ms).
async fn commit_to_sent(state: &crate::app::AppState, tenant: TenantId, like: String) -> anyhow::Result<(f64, f64)> {
    #[derive(QueryableByName)]
    struct P {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
        p50: Option<f64>,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
        p99: Option<f64>,
    }
    let p = state
        .db
        .tenant(TenantScope::system(tenant), move |tc| {
            Ok::<_, AppError>(
                diesel::sql_query(
                    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS p50, \
                            percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) AS p99 \
                       FROM (SELECT EXTRACT(EPOCH FROM min(e.created_at) - m.created_at)::float8 * 1000 AS ms \
                               FROM messages m JOIN events e ON e.type = 'message.updated' \
                                AND e.conversation_id = m.conversation_id \
                                AND e.payload->>'id' = m.id::text AND e.payload->>'status' = 'sent' \
                              WHERE m.text LIKE $1 GROUP BY m.id, m.created_at) x",
                )
                .bind::<diesel::sql_types::Text, _>(like)
                .get_result::<P>(tc.pg())?,
            )
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok((p.p50.unwrap_or(f64::NAN), p.p99.unwrap_or(f64::NAN)))
}

/// Whether the fake got each customer's replies of this round in the
/// order they were written (their numbers rise).
async fn reached_in_order(http: &reqwest::Client, fake_base: &str, round: usize) -> anyhow::Result<bool> {
    let log: Value = http.get(format!("{fake_base}/_fake/requests")).send().await?.json().await?;
    let mark = format!("r{round}-");
    let mut last: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for call in log["items"].as_array().into_iter().flatten() {
        let (Some(to), Some(text)) =
            (call["body"]["recipient"]["id"].as_str(), call["body"]["message"]["text"].as_str())
        else {
            continue;
        };
        let Some(number) = text.strip_prefix(&mark).and_then(|t| t.get(..5)).and_then(|n| n.parse::<u64>().ok()) else {
            continue;
        };
        if last.insert(to.to_string(), number).is_some_and(|before| before >= number) {
            return Ok(false);
        }
    }
    Ok(true)
}
