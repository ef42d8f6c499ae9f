//! What `bench realtime` reads off the server under test and the machine:
//! RSS and CPU time from /proc, the server's `/metrics` counters, the
//! webhook backlog.

use diesel::prelude::*;
use std::collections::HashMap;

use crate::db::PgPool;

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system, in clock ticks) of the server, of PostgreSQL's
/// processes and of this benchmark process, read from /proc.
#[derive(Clone, Copy, Default)]
pub struct Cpu {
    server: u64,
    postgres: u64,
    client: u64,
    /// The whole machine (all cores): busy and idle ticks, from /proc/stat.
    busy: u64,
    idle: u64,
}

fn machine() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().filter_map(|n| n.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let idle = v.get(3)? + v.get(4)?;
    let busy = v.iter().take(8).sum::<u64>() - idle;
    Some((busy, idle))
}

fn ticks(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    let rest: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

pub fn cpu(server: u32) -> Cpu {
    let mut c = Cpu::default();
    if let Some((busy, idle)) = machine() {
        (c.busy, c.idle) = (busy, idle);
    }
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else { return c };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Some((comm, t)) = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|s| ticks(&s)) else {
            continue;
        };
        if pid == server {
            c.server += t;
        } else if pid == me {
            c.client += t;
        } else if comm == "postgres" {
            c.postgres += t;
        }
    }
    c
}

/// CPU per webhook between two readings, in µs.
pub fn cpu_per(before: Cpu, after: Cpu, webhooks: usize) -> String {
    let hz = 100.0; // USER_HZ on Linux
    let per = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / hz * 1e6 / webhooks.max(1) as f64;
    let (busy, idle) = (after.busy.saturating_sub(before.busy), after.idle.saturating_sub(before.idle));
    format!(
        "CPU per webhook: server {:.0} µs, PostgreSQL {:.0} µs, benchmark client {:.0} µs; machine {:.0} % busy",
        per(before.server, after.server),
        per(before.postgres, after.postgres),
        per(before.client, after.client),
        busy as f64 * 100.0 / (busy + idle).max(1) as f64
    )
}

/// The server's counters (its `/metrics`), to explain a phase's figures.
pub async fn counters(base: &str) -> HashMap<String, f64> {
    let Ok(resp) = reqwest::get(format!("{base}/metrics")).await else { return HashMap::new() };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Frames per socket write and webhooks per processor batch between two readings.
pub fn shape(before: &HashMap<String, f64>, after: &HashMap<String, f64>) -> String {
    let d = |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let batches = d("switchboard_webhook_batches_total").max(1.0);
    let reads = d("switchboard_bus_reads_total").max(1.0);
    let webhooks = d("switchboard_webhooks_processed_total").max(1.0);
    format!(
        "{:.1} socket writes per webhook, {:.1} frames each; {:.1} webhooks per processor batch, {:.1} ms each; {:.0} event reads, {:.1} ms each",
        d("switchboard_ws_deliveries_total") / webhooks,
        d("switchboard_ws_frames_total") / d("switchboard_ws_deliveries_total").max(1.0),
        webhooks / batches,
        d("switchboard_webhook_batch_micros_total") / batches / 1000.0,
        reads,
        d("switchboard_bus_read_micros_total") / reads / 1000.0,
    )
}

/// Whether webhooks still wait to be processed. It stops at the first one:
/// counting them all visited every entry of the pending index, dead ones
/// too until a vacuum (3.8 ms a call, polled every 20 ms: 110 ms of
/// PostgreSQL's time in a 2 s `bench ingest`, beside the work it timed).
pub fn pending(conn: &mut PgConnection) -> bool {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(
        "EXISTS (SELECT 1 FROM public.webhook_events WHERE status = 'pending')",
    ))
    .get_result(conn)
    .unwrap_or(false)
}

pub fn pending_in(pool: &PgPool) -> bool {
    pool.get().map(|mut conn| pending(&mut conn)).unwrap_or(false)
}
