//! `bench realtime`: the server runs as a child process (so its memory is
//! its own) against a scratch database; this process opens authenticated
//! WebSockets and sends signed webhooks.
//!
//! Printed, from a first server: its RSS per idle socket for each
//! `--sockets` count. From a second, fresh one with `--agents` connected
//! (spread over 50 channels; each event reaches its channel's agents): the
//! latency from webhook POST to the `message.created` frame while webhooks
//! arrive at `--rate`, then ingest throughput (bursts of 10,000 webhooks)
//! with live push to every agent, to a quarter of them, and with no socket
//! connected, in rounds (the median ratio is the figure). Each run also prints where its time and CPU went (the server's
//! counters and /proc), so a figure can be explained.

use actix_web::rt::System;
use diesel::prelude::*;
use futures_util::StreamExt;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::probe::{counters, cpu, cpu_per, pending_in, rss_kib, shape};
use super::ScratchDb;
use crate::auth::{JwtKeys, Role};
use crate::channels::{NewChannel, Platform};
use crate::cli::BenchArgs;
use crate::config::{DbConfig, EncryptionKey};
use crate::db::migrate::run_public_migrations;
use crate::db::schema::{memberships, users};
use crate::db::tenant_schema::channel_members;
use crate::db::{connect_pool, with_tenant, PgPool, PoolOptions, TenantScope};
use crate::error::AppError;
use crate::ids::{TenantId, UserId};
use crate::meta::webhook::{meta_json, sign};
use crate::secret::Secret;
use crate::tenancy::{self, TenantSlug};

const CHANNELS: usize = 50;
const SECRET: &str = "bench-realtime-jwt-secret-0123456789";
const APP_SECRET: &str = "bench_app_secret";

/// Who a socket logs in as: tenant, its slug, the agent.
type Login = (TenantId, String, UserId);

struct Fixture {
    /// Tenant `rt`'s agents (latency and push runs).
    agents: Vec<Login>,
    /// Idle agents for the memory run, 100 to a tenant (as on a shared
    /// instance; presence is tenant-wide, so one tenant of 10,000 would
    /// measure its login storm instead of the sockets).
    idle: Vec<Login>,
    pages: Vec<String>,
}

/// Users with an agent membership in `tenant`, inserted in bulk.
fn agents_of(conn: &mut PgConnection, tenant: i64, prefix: &str, n: usize) -> anyhow::Result<Vec<i64>> {
    let mut ids: Vec<i64> = Vec::new();
    let rows: Vec<(String, String, String)> =
        (0..n).map(|i| (format!("{prefix}{i}@bench.test"), format!("Agent {i}"), "not-a-login".to_string())).collect();
    for chunk in rows.chunks(1000) {
        let values: Vec<_> =
            chunk.iter().map(|(e, n, h)| (users::email.eq(e), users::name.eq(n), users::password_hash.eq(h))).collect();
        ids.extend(diesel::insert_into(users::table).values(&values).returning(users::id).get_results::<i64>(conn)?);
    }
    for chunk in ids.chunks(1000) {
        let values: Vec<_> = chunk
            .iter()
            .map(|u| (memberships::user_id.eq(*u), memberships::tenant_id.eq(tenant), memberships::role.eq("agent")))
            .collect();
        diesel::insert_into(memberships::table).values(&values).execute(conn)?;
    }
    Ok(ids)
}

fn seed_idle(pool: &PgPool, count: usize) -> anyhow::Result<Vec<Login>> {
    let mut conn = pool.get()?;
    let mut out = Vec::with_capacity(count);
    for k in 0..count.div_ceil(100) {
        let slug = format!("mem-{k}");
        let t = tenancy::provision(&mut conn, &TenantSlug::parse(&slug).map_err(|e| anyhow::anyhow!("{e}"))?, "Mem")
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let n = (count - k * 100).min(100);
        for u in agents_of(&mut conn, t.id, &format!("m{k}-"), n)? {
            out.push((t.tenant_id(), slug.clone(), UserId(u)));
        }
    }
    Ok(out)
}

fn seed(pool: &PgPool, agents: usize, idle: usize, assigned: bool) -> anyhow::Result<Fixture> {
    let mut conn = pool.get()?;
    run_public_migrations(&mut conn)?;
    let t = tenancy::provision(&mut conn, &TenantSlug::parse("rt").map_err(|e| anyhow::anyhow!("{e}"))?, "RT")
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let keyring = crate::crypto::Keyring::new(&[EncryptionKey { id: "bench".into(), key: Secret::new([3u8; 32]) }]);
    let pages: Vec<String> = (0..CHANNELS).map(|i| format!("40000000{i:07}")).collect();
    let ids = agents_of(&mut conn, t.id, "agent", agents)?;
    let ids2 = ids.clone();
    let pages2 = pages.clone();
    with_tenant(&mut conn, &TenantScope::system(t.tenant_id()), |tc| -> Result<(), AppError> {
        let mut channel_ids = Vec::new();
        for p in &pages2 {
            let c = NewChannel {
                platform: Platform::Facebook,
                external_id: p.clone(),
                name: p.clone(),
                token: Secret::new("EAAFakeBench".into()),
                parent_external_id: None,
                meta_user_id: None,
            };
            channel_ids.push(crate::channels::upsert_connected(tc, &keyring, None, &c)?.id);
        }
        for chunk in ids2.chunks(1000).enumerate() {
            let values: Vec<_> = chunk
                .1
                .iter()
                .enumerate()
                .map(|(j, u)| {
                    let i = chunk.0 * 1000 + j;
                    (channel_members::channel_id.eq(channel_ids[i % CHANNELS]), channel_members::user_id.eq(*u))
                })
                .collect();
            diesel::insert_into(channel_members::table).values(&values).execute(tc.pg())?;
        }
        if assigned {
            diesel::sql_query("UPDATE channels SET settings = settings || '{\"auto_assign\": true}'")
                .execute(tc.pg())?;
        }
        Ok(())
    })
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let tenant = t.tenant_id();
    let agents = ids.into_iter().map(|u| (tenant, "rt".to_string(), UserId(u))).collect();
    Ok(Fixture { agents, idle: seed_idle(pool, idle)?, pages })
}

fn start_server(url: &str, port: u16) -> anyhow::Result<std::process::Child> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD.encode([3u8; 32]);
    let child = std::process::Command::new(std::env::current_exe()?)
        .arg("serve")
        .env("DATABASE_URL", url)
        .env("SWITCHBOARD_BIND", format!("127.0.0.1:{port}"))
        .env("SWITCHBOARD_JWT_SECRET", SECRET)
        .env("SWITCHBOARD_ENCRYPTION_KEYS", format!("bench:{key}"))
        .env("SWITCHBOARD_DB_POOL_SIZE", "12")
        .env("SWITCHBOARD_RECONCILE_SECS", "0")
        .env("META_APP_ID", "1234567890123456")
        .env("META_APP_SECRET", APP_SECRET)
        .env("META_VERIFY_TOKEN", "v")
        .env("META_GRAPH_URL", "http://127.0.0.1:9")
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    Ok(child)
}

/// The server under test, stopped however the benchmark ends (an error,
/// a panic such as printing to a closed pipe), never left running.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now_nanos() -> i128 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0) as i128
}

/// What customers write, so messages are as long as real ones (the search
/// index's work grows with the text); the send time goes first.
const CUSTOMER_TEXTS: [&str; 6] = [
    "Hi, my order hasn't arrived yet, can you check where it is?",
    "Do you have this jacket in size M? The website says out of stock",
    "Thanks!",
    "I was charged twice for the same order, please refund one of them asap",
    "What are your opening hours on Sunday?",
    "Hello 👋 is the discount code still valid? It says expired when I try it at checkout",
];

fn webhook(page: &str, i: usize, run: u32) -> String {
    let ms = chrono::Utc::now().timestamp_millis();
    let v = serde_json::json!({"object": "page", "entry": [{"id": page, "time": ms, "messaging": [{
        "sender": {"id": format!("8{:015}", i % 997)}, "recipient": {"id": page}, "timestamp": ms,
        "message": {"mid": format!("m_rt_{run}_{i}"), "text": format!("t={} {}", now_nanos(), CUSTOMER_TEXTS[i % CUSTOMER_TEXTS.len()])}}]}]});
    meta_json(&v)
}

async fn send_webhooks(base: &str, pages: &[String], count: usize, rate: u32, run: u32) -> Duration {
    let client = reqwest::Client::builder().pool_max_idle_per_host(32).build().unwrap_or_default();
    let started = Instant::now();
    let gap = if rate == 0 { Duration::ZERO } else { Duration::from_secs(1) / rate };
    futures_util::stream::iter(0..count)
        .map(|i| {
            let client = client.clone();
            let page = pages[i % pages.len()].clone();
            let url = format!("{base}/webhooks/meta");
            let due = started + gap * i as u32;
            async move {
                tokio::time::sleep_until(due.into()).await;
                // The send time goes into the body now, not when queued.
                let body = webhook(&page, i, run);
                let sig = sign(APP_SECRET.as_bytes(), body.as_bytes());
                let _ = client
                    .post(url)
                    .header("x-hub-signature-256", sig)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    started.elapsed()
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let counts: Vec<usize> = args.sockets.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let max = counts.iter().copied().max().unwrap_or(1000);
    let cfg = DbConfig::from_env()?;
    let scratch = ScratchDb::create(cfg.database_url.expose(), "realtime")?;
    let pool = connect_pool(&scratch.url, PoolOptions { max_size: 4, min_idle: Some(4), ..Default::default() })?;
    let fx = seed(&pool, args.agents.max(1), max, args.assigned)?;
    // Memory first, on a server of its own (its RSS then holds sockets only),
    // then latency and push on a fresh one.
    let mut result = Ok(());
    for memory_only in [true, false] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let server = Server(start_server(&scratch.url, port)?);
        let pid = server.0.id();
        let base = format!("http://127.0.0.1:{port}");
        result = System::new().block_on(drive(args, &counts, &fx, &base, pid, &pool, memory_only));
        drop(server);
        if result.is_err() {
            break;
        }
    }
    result
}

async fn drive(
    args: &BenchArgs,
    counts: &[usize],
    fx: &Fixture,
    base: &str,
    pid: u32,
    pool: &PgPool,
    memory_only: bool,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http.get(format!("{base}/readyz")).send().await.map(|r| r.status().is_success()).unwrap_or(false) {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    let keys = JwtKeys::new(SECRET.as_bytes());
    if memory_only {
        let assigned = if args.assigned { ", conversations auto-assigned" } else { "" };
        println!("switchboard bench realtime ({CHANNELS} channels{assigned}; server pid {pid} for memory)");
    } else {
        println!("(server pid {pid} for latency and push)");
    }
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let base_rss = rss_kib(pid);
    let latencies: Rc<RefCell<Vec<f64>>> = Rc::new(RefCell::new(Vec::new()));
    // (POST → the processing transaction began, that → frame at the agent)
    let splits: Rc<RefCell<Vec<(f64, f64)>>> = Rc::new(RefCell::new(Vec::new()));
    // Frames are timed during the latency run only; the bursts just read them.
    let timing = Rc::new(Cell::new(true));
    let mut sockets = Vec::new();
    let ws_url = format!("{}/ws", base.replace("http://", "ws://"));
    // Opens sockets (agent i on channel i % CHANNELS) until `target` are open.
    let open_to = |logins: &[Login], target: usize, sockets: &mut Vec<actix_web::rt::task::JoinHandle<()>>| {
        let logins: Vec<Login> = logins[sockets.len()..target.min(logins.len())].to_vec();
        let (lat, split, timing) = (latencies.clone(), splits.clone(), timing.clone());
        let (keys, ws_url) = (keys.clone(), ws_url.clone());
        let start = sockets.len();
        async move {
            let mut opened = Vec::new();
            for (i, (tenant, slug, user)) in logins.into_iter().enumerate() {
                let i = start + i;
                let token =
                    keys.issue(user, tenant, &slug, Role::Agent, "bench").map_err(|e| anyhow::anyhow!("{e}"))?;
                let client = awc::Client::builder()
                    .max_http_version(awc::http::Version::HTTP_11)
                    .timeout(Duration::from_secs(30))
                    .finish();
                let (_, framed) = client
                    .ws(ws_url.clone())
                    .bearer_auth(token)
                    .connect()
                    .await
                    .map_err(|e| anyhow::anyhow!("socket {i}: {e}"))?;
                let reader = Reader { lat: lat.clone(), split: split.clone(), timing: timing.clone() };
                // Every socket is read (a socket nobody reads would be dropped as too slow).
                opened.push(actix_web::rt::spawn(reader.run(framed.into_parts())));
            }
            Ok::<_, anyhow::Error>(opened)
        }
    };
    if memory_only {
        for &target in counts {
            let more = open_to(&fx.idle, target, &mut sockets).await?;
            sockets.extend(more);
            actix_web::rt::time::sleep(Duration::from_secs(2)).await;
            let rss = rss_kib(pid);
            let live = counters(base).await.get("switchboard_ws_open").copied().unwrap_or(0.0);
            println!(
                "{target} idle authenticated sockets ({live} open at the server): server RSS {} MiB, {:.1} KiB per socket   [goal < 25 KiB]",
                rss / 1024,
                (rss.saturating_sub(base_rss)) as f64 / target as f64
            );
        }
        for s in sockets {
            s.abort();
        }
        return Ok(());
    }
    let more = open_to(&fx.agents, fx.agents.len(), &mut sockets).await?;
    sockets.extend(more);
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    let open = sockets.len();
    // A warm inbox: every customer of the runs below already has a contact
    // and a conversation (a burst, unmeasured, makes them), as in a working
    // inbox where most messages continue a conversation.
    let rss_idle = rss_kib(pid);
    burst(base, fx, pool, pid, 0).await;
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    // What a burst leaves behind in sockets that are idle again (buffers
    // sized by their largest write, memory the allocator keeps).
    let rss_after = rss_kib(pid);
    println!(
        "{open} agents' sockets: server RSS {} MiB before a burst of 10,000 webhooks, {} MiB after ({:.1} KiB more per socket)",
        rss_idle / 1024,
        rss_after / 1024,
        rss_after.saturating_sub(rss_idle) as f64 / open as f64
    );
    // Latency at a steady rate.
    let count = (args.rate as u64 * args.seconds) as usize;
    latencies.borrow_mut().clear();
    splits.borrow_mut().clear();
    let before = counters(base).await;
    let cpu_before = cpu(pid);
    let spent = send_webhooks(base, &fx.pages, count, args.rate, 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while pending_in(pool) && Instant::now() < deadline {
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    let cpu_latency = cpu_per(cpu_before, cpu(pid), count);
    timing.set(false);
    let mut lat = latencies.borrow().clone();
    let expected = count * (open / CHANNELS);
    println!(
        "{count} webhooks in {spent:.2?} ({:.0}/s) with {open} agents: {} of ~{expected} frames; webhook POST → frame at the agent p50 {:.1} ms, p99 {:.1} ms   [goal p99 < 100 ms at 2000/s]",
        count as f64 / spent.as_secs_f64(),
        lat.len(),
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99)
    );
    let (mut wait, mut push): (Vec<f64>, Vec<f64>) = splits.borrow().iter().copied().unzip();
    println!(
        "  (POST → processing began p50 {:.1} ms, p99 {:.1} ms; then → frame p50 {:.1} ms, p99 {:.1} ms; {})",
        percentile(&mut wait, 0.5),
        percentile(&mut wait, 0.99),
        percentile(&mut push, 0.5),
        percentile(&mut push, 0.99),
        shape(&before, &counters(base).await)
    );
    println!("  ({cpu_latency})");
    // Ingest throughput in rounds, each measuring back to back live push to
    // every agent (20 to a channel), to a quarter of them (5 to a channel)
    // and to none: single bursts on this shared machine move by ±10 points.
    if args.rounds == 0 {
        return Ok(());
    }
    let quarter = open / 4;
    let (mut all_pct, mut few_pct) = (Vec::new(), Vec::new());
    let mut details = Vec::new();
    for round in 0..args.rounds {
        if sockets.is_empty() {
            let more = open_to(&fx.agents, fx.agents.len(), &mut sockets).await?;
            sockets.extend(more);
            actix_web::rt::time::sleep(Duration::from_secs(2)).await;
        }
        vacuum_analyze(pool);
        let on = burst(base, fx, pool, pid, 2 + round * 3).await;
        for s in sockets.drain(quarter..) {
            s.abort();
        }
        actix_web::rt::time::sleep(Duration::from_secs(2)).await;
        vacuum_analyze(pool);
        let few = burst(base, fx, pool, pid, 3 + round * 3).await;
        for s in sockets.drain(..) {
            s.abort();
        }
        actix_web::rt::time::sleep(Duration::from_secs(2)).await;
        vacuum_analyze(pool);
        let off = burst(base, fx, pool, pid, 4 + round * 3).await;
        all_pct.push(on.rate / off.rate * 100.0);
        few_pct.push(few.rate / off.rate * 100.0);
        println!(
            "  (round {}: {:.0} events/s with push to {open} sockets, {:.0} to {quarter}, {:.0} to none)",
            round + 1,
            on.rate,
            few.rate,
            off.rate
        );
        details = vec![on.detail, few.detail, off.detail];
    }
    let list = |v: &[f64]| v.iter().map(|p| format!("{p:.0}")).collect::<Vec<_>>().join(", ");
    println!(
        "ingest with live push to {open} sockets ({} to a channel) against none: median on/off {:.0} % (rounds: {} %)   [goal >= 80 %]",
        open / CHANNELS,
        percentile(&mut all_pct.clone(), 0.5),
        list(&all_pct)
    );
    println!(
        "  (to {quarter} sockets, {} to a channel: median {:.0} % (rounds: {} %))",
        quarter / CHANNELS,
        percentile(&mut few_pct.clone(), 0.5),
        list(&few_pct)
    );
    for (case, detail) in ["push to all", "push to a quarter", "push off"].iter().zip(&details) {
        println!("  (last round, {case}: {detail})");
    }
    Ok(())
}

/// Vacuumed tables and fresh planner statistics before each burst, as
/// autovacuum keeps them in a working inbox: left to autovacuum, its work
/// on a table that just grew by 10,000 rows lands inside whichever burst
/// runs next, and the on/off comparison measures that instead; and where
/// autovacuum is off (some of these machines), every burst inherits the
/// dead rows of all the earlier ones.
fn vacuum_analyze(pool: &PgPool) {
    use diesel::connection::SimpleConnection;
    if let Ok(mut conn) = pool.get() {
        let _ = conn.batch_execute("VACUUM ANALYZE");
    }
}

struct Burst {
    rate: f64,
    detail: String,
}

/// Sends 10,000 webhooks as fast as they are taken and times them until
/// all are processed.
async fn burst(base: &str, fx: &Fixture, pool: &PgPool, pid: u32, run: u32) -> Burst {
    let count = 10_000;
    let before = counters(base).await;
    let cpu_before = cpu(pid);
    let t = Instant::now();
    send_webhooks(base, &fx.pages, count, 0, run).await;
    while pending_in(pool) {
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = count as f64 / t.elapsed().as_secs_f64();
    let used = cpu_per(cpu_before, cpu(pid), count);
    Burst { rate, detail: format!("{}; {used}", shape(&before, &counters(base).await)) }
}

/// One socket's reader. The bench client shares the server's two cores, so
/// it reads like a lean client would: straight off the TCP stream into one
/// reused buffer, walking the frame headers in place (server frames are
/// never masked), instead of a codec that allocates each frame. Every byte
/// and every frame is still read; pings are answered (the server drops a
/// socket silent for 30 s).
struct Reader {
    lat: Rc<RefCell<Vec<f64>>>,
    split: Rc<RefCell<Vec<(f64, f64)>>>,
    timing: Rc<Cell<bool>>,
}

impl Reader {
    async fn run(self, parts: actix_codec::FramedParts<awc::BoxedSocket, awc::ws::Codec>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut io = parts.io;
        let mut buf = bytes::BytesMut::with_capacity(64 * 1024);
        buf.extend_from_slice(&parts.read_buf);
        loop {
            let mut at = 0;
            let mut pong = false;
            while let Some((opcode, start, end)) = ws_frame(&buf[at..]) {
                let payload = &buf[at + start..at + end];
                match opcode {
                    0x1 => self.text(payload),
                    0x8 => return,
                    0x9 => pong = true,
                    _ => {}
                }
                at += end;
            }
            let _ = buf.split_to(at);
            // A masked, empty pong (client frames must be masked).
            if pong && io.write_all(&[0x8a, 0x80, 1, 2, 3, 4]).await.is_err() {
                return;
            }
            if buf.capacity() - buf.len() < 16 * 1024 {
                buf.reserve(64 * 1024);
            }
            match io.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    fn text(&self, t: &[u8]) {
        if !self.timing.get() {
            return;
        }
        let Some(pos) = memchr_t(t) else { return };
        let digits: String = t[pos + 2..].iter().take_while(|b| b.is_ascii_digit()).map(|b| *b as char).collect();
        let Ok(sent) = digits.parse::<i128>() else { return };
        let now = now_nanos();
        self.lat.borrow_mut().push((now - sent) as f64 / 1e6);
        if let Some(at) = event_at(t) {
            self.split.borrow_mut().push(((at - sent) as f64 / 1e6, (now - at) as f64 / 1e6));
        }
    }
}

/// The first complete WebSocket frame in `b`: opcode, payload start and end.
fn ws_frame(b: &[u8]) -> Option<(u8, usize, usize)> {
    let (b0, b1) = (*b.first()?, *b.get(1)?);
    let (len, head): (usize, usize) = match b1 & 0x7f {
        126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
        127 => (u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize, 10),
        n => (n as usize, 2),
    };
    let end = head.checked_add(len)?;
    (b.len() >= end).then_some((b0 & 0x0f, head, end))
}

/// Where `t=` starts in a `message.created` frame (the text carries the
/// send time). The type sits in the frame's first bytes (`{"seq":N,"type":…`),
/// so other frames are told apart without scanning them.
fn memchr_t(t: &[u8]) -> Option<usize> {
    find(&t[..t.len().min(48)], b"\"type\":\"message.created\"")?;
    find(t, b"\"t=").map(|p| p + 1)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The event's `at` (when its transaction began), in ns.
fn event_at(t: &[u8]) -> Option<i128> {
    let start = find(&t[..t.len().min(96)], b"\"at\":\"")? + 6;
    let end = start + t[start..].iter().position(|b| *b == b'"')?;
    let at = std::str::from_utf8(&t[start..end]).ok()?;
    chrono::DateTime::parse_from_rfc3339(at).ok()?.timestamp_nanos_opt().map(i128::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_found_in_place_whatever_their_length_encoding() {
        let mut b = vec![0x81, 3];
        b.extend_from_slice(b"abc");
        assert_eq!(ws_frame(&b), Some((1, 2, 5)));
        assert_eq!(ws_frame(&b[..4]), None, "incomplete");
        let mut b = vec![0x81, 126, 0x01, 0x00];
        b.extend(std::iter::repeat_n(b'x', 256));
        assert_eq!(ws_frame(&b), Some((1, 4, 260)));
        let mut b = vec![0x89, 127, 0, 0, 0, 0, 0, 1, 0, 0];
        b.extend(std::iter::repeat_n(b'y', 65536));
        assert_eq!(ws_frame(&b), Some((9, 10, 65546)));
        assert_eq!(ws_frame(&[0x81, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), None, "no overflow");
        assert_eq!(ws_frame(&[0x81]), None);
    }

    #[test]
    fn only_message_created_frames_are_timed() {
        let created = br#"{"seq":12,"type":"message.created","at":"2026-11-22T10:00:00.5Z","data":{"text":"t=1700"}}"#;
        let pos = memchr_t(created).expect("timed");
        assert_eq!(&created[pos..pos + 6], b"t=1700");
        assert_eq!(event_at(created), Some(1_795_341_600_500_000_000));
        let updated = br#"{"seq":13,"type":"conversation.updated","at":"2026-11-22T10:00:00Z","data":{"text":"t=1"}}"#;
        assert_eq!(memchr_t(updated), None);
    }
}
