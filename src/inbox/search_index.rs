//! Upkeep of the inbox's search indexes, off the webhook path.
//!
//! Message texts and contact names are searched through trigram GIN indexes
//! (`GET /api/conversations?q=`, `GET /api/contacts?q=`). PostgreSQL adds
//! new entries to a GIN index's pending list, which is cheap, and merges
//! that list into the index proper when it outgrows `gin_pending_list_limit`
//! (4 MB) — inside whichever insert crossed the line. On the webhook path
//! that insert is the processor's message insert, in a transaction that
//! holds the tenant's event sequence: every ~3,000–10,000 messages one batch
//! paid a 35–110 ms merge and every webhook queued behind it waited (the
//! slow statements auto_explain showed at 2,000 webhooks/s).
//!
//! So the processor notes how much text each tenant's batches indexed, and
//! [`run`] merges a tenant's pending lists on a connection of its own
//! (`gin_clean_pending_list`) once [`MERGE_AT_BYTES`] of text waits or the
//! oldest waited [`MERGE_AFTER`]. The merge is the same work the insert
//! would have done, in batches of about a thousand messages, which merge
//! nearly as cheaply per entry as the 4 MB ones; inserts go on meanwhile
//! (an insert that finds a merge running does not wait for it). Should this
//! worker fall behind, PostgreSQL still merges at the limit as before.
//! Replies, contact names and contact attributes (`inbox::attributes`: a
//! new customer adds an empty object's entry) are few and are merged with
//! the next batch's texts, or by autovacuum.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use diesel::prelude::*;

use crate::app::AppState;
use crate::db::{TenantConn, TenantScope};
use crate::error::AppResult;
use crate::ids::TenantId;

/// Text waiting in a tenant's pending list that is worth a merge: with
/// trigrams about one index entry per character, ~64 KiB of text is ~1 MB
/// of pending entries, well below the 4 MB at which an insert merges.
pub const MERGE_AT_BYTES: usize = 64 * 1024;
/// A trickle is merged too, so a quiet tenant's next burst starts clean;
/// rarely, since each merge is a transaction of its own and a shared
/// instance may hold thousands of tenants that trickle.
pub const MERGE_AFTER: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(100);

/// The tenants whose search indexes have entries waiting, and how much.
#[derive(Default)]
pub struct SearchBacklog {
    waiting: Mutex<HashMap<TenantId, Waiting>>,
    /// Rung when text waits: the worker sleeps while none does.
    arrived: tokio::sync::Notify,
}

struct Waiting {
    bytes: usize,
    since: Instant,
}

impl SearchBacklog {
    /// `bytes` of text were indexed in `tenant` (committed).
    pub fn indexed(&self, tenant: TenantId, bytes: usize, now: Instant) {
        if bytes == 0 {
            return;
        }
        if let Ok(mut w) = self.waiting.lock() {
            w.entry(tenant).or_insert(Waiting { bytes: 0, since: now }).bytes += bytes;
        }
        self.arrived.notify_one();
    }

    fn is_empty(&self) -> bool {
        self.waiting.lock().map(|w| w.is_empty()).unwrap_or(true)
    }

    /// Takes the tenants due for a merge at `now`.
    pub fn take_due(&self, now: Instant) -> Vec<TenantId> {
        let Ok(mut w) = self.waiting.lock() else { return Vec::new() };
        let due: Vec<TenantId> = w
            .iter()
            .filter(|(_, t)| t.bytes >= MERGE_AT_BYTES || now.duration_since(t.since) >= MERGE_AFTER)
            .map(|(id, _)| *id)
            .collect();
        for id in &due {
            w.remove(id);
        }
        due
    }
}

/// Merges the pending lists of the tenant's search indexes; returns how
/// many pending pages that removed.
pub fn merge_pending(tc: &mut TenantConn<'_>) -> AppResult<i64> {
    #[derive(QueryableByName)]
    struct Merged {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        pages: i64,
    }
    // The names resolve in the tenant's schema (first on the search path).
    let merged: Merged = diesel::sql_query(
        "SELECT (pg_catalog.gin_clean_pending_list('messages_text_trgm'::regclass) \
               + pg_catalog.gin_clean_pending_list('contacts_name_trgm'::regclass) \
               + pg_catalog.gin_clean_pending_list('contacts_attributes_idx'::regclass)) AS pages",
    )
    .get_result(tc.pg())?;
    Ok(merged.pages)
}

/// The worker of `serve`: merges each tenant's pending entries when due.
pub async fn run(state: actix_web::web::Data<AppState>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Asleep while no text waits (a permit stored by `indexed` meanwhile
        // ends the wait at once).
        if state.search_backlog.is_empty() {
            state.search_backlog.arrived.notified().await;
        }
        tick.tick().await;
        for tenant in state.search_backlog.take_due(Instant::now()) {
            let r = state.db.tenant(TenantScope::system(tenant), merge_pending).await;
            match r {
                Ok(pages) => crate::metrics::inc(&crate::metrics::SEARCH_PAGES_MERGED, pages.max(0) as u64),
                // A tenant suspended or dropped since: nothing to keep.
                Err(e) => tracing::debug!(tenant = tenant.0, error = ?e, "search index merge skipped"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_is_due_when_enough_text_waits_or_it_waited_long_enough() {
        let b = SearchBacklog::default();
        let t0 = Instant::now();
        b.indexed(TenantId(1), MERGE_AT_BYTES / 2, t0);
        b.indexed(TenantId(2), 100, t0);
        b.indexed(TenantId(3), 0, t0);
        assert!(b.take_due(t0).is_empty(), "nothing is due yet");
        b.indexed(TenantId(1), MERGE_AT_BYTES / 2, t0 + Duration::from_millis(10));
        assert_eq!(b.take_due(t0 + Duration::from_millis(10)), vec![TenantId(1)]);
        assert!(b.take_due(t0 + Duration::from_millis(20)).is_empty(), "taken once");
        // Tenant 2's trickle is due once its oldest text waited MERGE_AFTER;
        // tenant 3 indexed nothing and never is.
        assert_eq!(b.take_due(t0 + MERGE_AFTER), vec![TenantId(2)]);
        assert!(b.take_due(t0 + MERGE_AFTER * 10).is_empty());
        // Text indexed after a take starts a new wait.
        b.indexed(TenantId(1), 10, t0 + MERGE_AFTER * 10);
        assert!(b.take_due(t0 + MERGE_AFTER * 10).is_empty());
        assert_eq!(b.take_due(t0 + MERGE_AFTER * 11), vec![TenantId(1)]);
    }
}
