//! Process counters for `GET /metrics` (Prometheus text format). Plain
//! atomics: the handful of figures an operator watches, no registry.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

pub static WEBHOOKS_STORED: AtomicU64 = AtomicU64::new(0);
pub static WEBHOOKS_REJECTED: AtomicU64 = AtomicU64::new(0);
pub static WEBHOOKS_PROCESSED: AtomicU64 = AtomicU64::new(0);
pub static WEBHOOKS_DEAD: AtomicU64 = AtomicU64::new(0);
pub static WEBHOOKS_RETRIED: AtomicU64 = AtomicU64::new(0);
pub static MESSAGES_SENT: AtomicU64 = AtomicU64::new(0);
pub static MESSAGES_FAILED: AtomicU64 = AtomicU64::new(0);
pub static SENDS_HELD: AtomicU64 = AtomicU64::new(0);
pub static SENDS_PACED: AtomicU64 = AtomicU64::new(0);
pub static WS_OPEN: AtomicI64 = AtomicI64::new(0);
/// Senders sharing each channel's rate, as this instance last counted
/// them (`inbox::roster`); 0 before its first count.
pub static SENDERS: AtomicI64 = AtomicI64::new(0);
pub static WS_OPENED: AtomicU64 = AtomicU64::new(0);
pub static WS_DELIVERIES: AtomicU64 = AtomicU64::new(0);
pub static WS_FRAMES: AtomicU64 = AtomicU64::new(0);
pub static WS_REPLAYS_AGAIN: AtomicU64 = AtomicU64::new(0);
pub static WS_TOO_SLOW: AtomicU64 = AtomicU64::new(0);
pub static WS_SILENT: AtomicU64 = AtomicU64::new(0);
pub static WS_UNCLOSED: AtomicU64 = AtomicU64::new(0);
pub static WS_CHANNEL_READS: AtomicU64 = AtomicU64::new(0);
pub static WEBHOOK_BATCHES: AtomicU64 = AtomicU64::new(0);
pub static WEBHOOK_BATCH_MICROS: AtomicU64 = AtomicU64::new(0);
pub static BUS_READS: AtomicU64 = AtomicU64::new(0);
pub static BUS_READ_MICROS: AtomicU64 = AtomicU64::new(0);
pub static BUS_DIRECT: AtomicU64 = AtomicU64::new(0);
pub static HUB_HELD: AtomicU64 = AtomicU64::new(0);
pub static SEARCH_PAGES_MERGED: AtomicU64 = AtomicU64::new(0);
pub static DB_CONNECTIONS_LOST: AtomicU64 = AtomicU64::new(0);
pub static WS_CLIENT_DROPPED: AtomicU64 = AtomicU64::new(0);
pub static MEDIA_COPIED: AtomicU64 = AtomicU64::new(0);
pub static MEDIA_NOT_COPIED: AtomicU64 = AtomicU64::new(0);
pub static PRUNED_ROWS: AtomicU64 = AtomicU64::new(0);
pub static QUEUE_GIVEN: AtomicU64 = AtomicU64::new(0);
pub static WORKER_RESTARTS: AtomicU64 = AtomicU64::new(0);
pub static REQUESTS_UNAVAILABLE: AtomicU64 = AtomicU64::new(0);

pub fn inc(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The exposition text; `pending` is the webhook backlog read at scrape time.
pub fn render(pending_webhooks: i64, pending_sends: i64) -> String {
    let counters = [
        ("switchboard_webhooks_stored_total", "Verified webhooks stored", &WEBHOOKS_STORED),
        ("switchboard_webhooks_rejected_total", "Webhooks refused for their signature", &WEBHOOKS_REJECTED),
        ("switchboard_webhooks_processed_total", "Stored webhooks processed", &WEBHOOKS_PROCESSED),
        ("switchboard_webhooks_dead_total", "Webhooks moved to the dead letters", &WEBHOOKS_DEAD),
        ("switchboard_webhooks_retried_total", "Webhook processing attempts to retry", &WEBHOOKS_RETRIED),
        ("switchboard_messages_sent_total", "Replies Meta accepted", &MESSAGES_SENT),
        ("switchboard_messages_failed_total", "Replies that failed", &MESSAGES_FAILED),
        ("switchboard_sends_held_total", "Channels' sends held after Meta's rate limits", &SENDS_HELD),
        (
            "switchboard_sends_paced_total",
            "Sends handed back to the queue to wait for their turn at their channel's rate (SWITCHBOARD_SEND_RATE)",
            &SENDS_PACED,
        ),
        ("switchboard_ws_connections_total", "WebSocket sessions opened", &WS_OPENED),
        ("switchboard_ws_deliveries_total", "Bursts of frames handed to sockets", &WS_DELIVERIES),
        ("switchboard_ws_frames_total", "Event frames handed to sockets", &WS_FRAMES),
        (
            "switchboard_ws_replays_again_total",
            "Replays read again from the log: a burst overflowed a socket still writing its replay",
            &WS_REPLAYS_AGAIN,
        ),
        (
            "switchboard_ws_too_slow_total",
            "Sockets closed as too slow (4408): their outbox overflowed (stopped reading, or far behind)",
            &WS_TOO_SLOW,
        ),
        (
            "switchboard_ws_silent_total",
            "Sockets closed (4408) after sending nothing, not even a pong, for the heartbeat timeout",
            &WS_SILENT,
        ),
        (
            "switchboard_ws_unclosed_total",
            "Sockets that ended with no close frame from either side: the client's connection dropped, or one whose client stopped reading was let go (TCP_USER_TIMEOUT)",
            &WS_UNCLOSED,
        ),
        (
            "switchboard_ws_channel_reads_total",
            "Sockets told to read their member's channels again (a channel list changed, the listener came back)",
            &WS_CHANNEL_READS,
        ),
        ("switchboard_webhook_batches_total", "Processor batches that claimed work", &WEBHOOK_BATCHES),
        ("switchboard_webhook_batch_micros_total", "Time spent in those batches (µs)", &WEBHOOK_BATCH_MICROS),
        ("switchboard_bus_reads_total", "Event log reads by this instance's listener", &BUS_READS),
        ("switchboard_bus_read_micros_total", "Time spent in those reads (µs)", &BUS_READ_MICROS),
        (
            "switchboard_bus_direct_total",
            "Event batches this instance committed and handed to its sockets unread",
            &BUS_DIRECT,
        ),
        ("switchboard_hub_held_total", "Event batches held under a backlog to go out with a later one", &HUB_HELD),
        (
            "switchboard_search_pages_merged_total",
            "Pending-list pages of search indexes merged off the webhook path",
            &SEARCH_PAGES_MERGED,
        ),
        (
            "switchboard_db_connections_lost_total",
            "Pooled connections found closed by the server and replaced before any work",
            &DB_CONNECTIONS_LOST,
        ),
        (
            "switchboard_ws_client_messages_dropped_total",
            "Client socket messages dropped past the socket's allowance",
            &WS_CLIENT_DROPPED,
        ),
        ("switchboard_media_copied_total", "Messenger and Instagram media copied off Meta's CDN", &MEDIA_COPIED),
        (
            "switchboard_media_not_copied_total",
            "Media copies that failed (the CDN refused or was unreachable, too large, too slow)",
            &MEDIA_NOT_COPIED,
        ),
        (
            "switchboard_pruned_rows_total",
            "Rows the public tables' housekeeping deleted: processed webhooks, finished sends, expired refresh tokens, invitations and password resets, old mail",
            &PRUNED_ROWS,
        ),
        (
            "switchboard_queue_given_total",
            "Queued conversations this instance handed to an agent who came online or had room (inbox::hand_out)",
            &QUEUE_GIVEN,
        ),
        (
            "switchboard_worker_restarts_total",
            "Background workers started again after they panicked (app::supervise)",
            &WORKER_RESTARTS,
        ),
        (
            "switchboard_requests_unavailable_total",
            "Requests answered 503 as the database was out of reach or a webhook could not be stored (database_unavailable, store_unavailable; the log tells them once a while)",
            &REQUESTS_UNAVAILABLE,
        ),
    ];
    let mut out = String::new();
    for (name, help, c) in counters {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n", c.load(Ordering::Relaxed)));
    }
    let gauges = [
        ("switchboard_ws_open", "Open WebSocket sessions on this instance", WS_OPEN.load(Ordering::Relaxed)),
        (
            "switchboard_senders",
            "Instances whose senders share each channel's rate (SWITCHBOARD_SEND_RATE), as this one last counted them",
            SENDERS.load(Ordering::Relaxed),
        ),
        ("switchboard_webhooks_pending", "Stored webhooks waiting to be processed (all instances)", pending_webhooks),
        ("switchboard_sends_pending", "Queued sends (all instances)", pending_sends),
    ];
    for (name, help, v) in gauges {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    /// The README's table of metrics lists each one as `/metrics` says it
    /// (name, type and help), so operators read what they will scrape.
    #[test]
    fn the_readme_lists_every_metric() {
        let readme = include_str!("../README.md");
        let text = super::render(0, 0);
        let mut helps = text.lines().filter_map(|l| l.strip_prefix("# HELP "));
        let types = text.lines().filter_map(|l| l.strip_prefix("# TYPE "));
        for kind in types {
            let (name, kind) = kind.split_once(' ').expect("name and type");
            let help = helps.next().and_then(|h| h.strip_prefix(name)).expect("its help").trim();
            let row = format!("| `{name}` | {kind} | {help} |");
            assert!(readme.contains(&row), "README.md lacks the row {row}");
        }
    }
}
