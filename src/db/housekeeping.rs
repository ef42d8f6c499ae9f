//! Housekeeping of the `public` tables that grow with traffic, hourly in
//! every `serve` ([`run`]):
//! - stored Meta webhooks, once processed, after
//!   `SWITCHBOARD_WEBHOOK_RETENTION_HOURS` (24): the raw bodies hold
//!   customers' messages, already stored where they belong (and erased
//!   there when a contact is, `inbox::contacts::erase`, and from these
//!   bodies too, `inbox::scrub`); a day is enough
//!   to look into what Meta sent. Dead letters stay until the operator
//!   replays or drops them (`webhooks dead-letters`);
//! - finished sends (done, or given up: the message shows its failure)
//!   after the same time;
//! - refresh tokens a day past their expiry (used, revoked or not: an
//!   expired one is refused whether it is known or not);
//! - invitations a week past their expiry, accepted or not, and the
//!   hashes of replaced ones a week past when they would have expired
//!   (`auth::invitations`; until then an expired or replaced link is told
//!   apart from an unknown one);
//! - password resets a day past their expiry (`auth::password_reset`), and
//!   mail a week after it was queued, once sent or given up (`mail`; its
//!   body is emptied then).
//!
//! Rows go in batches of [`BATCH`], each its own statement, oldest first,
//! so no lock is held long and a backlog of months (a release before this
//! one kept everything) drains without stalling the queues. Instances that
//! prune at once only wait on each other's rows.
//! `switchboard_pruned_rows_total` counts what went.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use diesel::sql_types::Timestamptz;

use super::DbError;
use crate::app::AppState;
use crate::error::AppError;

/// Rows deleted per statement.
pub const BATCH: i64 = 5_000;

/// How long each kind of row is kept.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Processed webhooks and finished sends.
    pub work: Duration,
    /// Refresh tokens, past their expiry.
    pub refresh_tokens: Duration,
    /// Invitations, past their expiry.
    pub invitations: Duration,
    /// Sent (or given up) mail, from when it was queued; password resets
    /// are kept a day past their expiry.
    pub mail: Duration,
}

impl Retention {
    /// `SWITCHBOARD_WEBHOOK_RETENTION_HOURS` (24, at least 1).
    pub fn from_env() -> Retention {
        let hours = std::env::var("SWITCHBOARD_WEBHOOK_RETENTION_HOURS")
            .ok()
            .and_then(|v| v.parse::<i64>().ok())
            .filter(|h| *h > 0)
            .unwrap_or(24);
        Retention {
            work: Duration::hours(hours),
            refresh_tokens: Duration::days(1),
            invitations: Duration::days(7),
            mail: Duration::days(7),
        }
    }
}

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub webhooks: usize,
    pub sends: usize,
    pub refresh_tokens: usize,
    pub invitations: usize,
    /// Mail and password resets.
    pub mail: usize,
}

/// Deletes, as of `now`, what `retention` no longer keeps.
pub fn prune(conn: &mut PgConnection, now: DateTime<Utc>, retention: Retention) -> Result<Pruned, DbError> {
    let work_cutoff = now - retention.work;
    let pruned = Pruned {
        webhooks: in_batches(
            conn,
            "DELETE FROM public.webhook_events WHERE id IN (SELECT id FROM public.webhook_events \
              WHERE status = 'done' AND processed_at < $1 ORDER BY id LIMIT $2)",
            work_cutoff,
        )?,
        sends: in_batches(
            conn,
            "DELETE FROM public.send_queue WHERE id IN (SELECT id FROM public.send_queue \
              WHERE status IN ('done', 'dead') AND created_at < $1 ORDER BY id LIMIT $2)",
            work_cutoff,
        )?,
        refresh_tokens: in_batches(
            conn,
            "DELETE FROM public.refresh_tokens WHERE id IN (SELECT id FROM public.refresh_tokens \
              WHERE expires_at < $1 ORDER BY id LIMIT $2)",
            now - retention.refresh_tokens,
        )?,
        invitations: in_batches(
            conn,
            "DELETE FROM public.invitations WHERE id IN (SELECT id FROM public.invitations \
              WHERE expires_at < $1 ORDER BY id LIMIT $2)",
            now - retention.invitations,
        )? + in_batches(
            conn,
            "DELETE FROM public.replaced_invitations WHERE token_hash IN \
              (SELECT token_hash FROM public.replaced_invitations WHERE expires_at < $1 \
              ORDER BY expires_at LIMIT $2)",
            now - retention.invitations,
        )?,
        mail: in_batches(
            conn,
            "DELETE FROM public.mail_outbox WHERE id IN (SELECT id FROM public.mail_outbox \
              WHERE created_at < $1 AND (sent_at IS NOT NULL OR failed_at IS NOT NULL) ORDER BY id LIMIT $2)",
            now - retention.mail,
        )? + in_batches(
            conn,
            "DELETE FROM public.password_resets WHERE id IN (SELECT id FROM public.password_resets \
              WHERE expires_at < $1 ORDER BY id LIMIT $2)",
            now - retention.refresh_tokens,
        )?,
    };
    let rows = pruned.webhooks + pruned.sends + pruned.refresh_tokens + pruned.invitations + pruned.mail;
    crate::metrics::inc(&crate::metrics::PRUNED_ROWS, rows as u64);
    Ok(pruned)
}

/// Runs `sql` (a delete of at most `$2` rows older than `$1`) until it
/// deletes fewer than a batch.
fn in_batches(conn: &mut PgConnection, sql: &str, cutoff: DateTime<Utc>) -> Result<usize, DbError> {
    let mut total = 0;
    loop {
        let n = diesel::sql_query(sql)
            .bind::<Timestamptz, _>(cutoff)
            .bind::<diesel::sql_types::BigInt, _>(BATCH)
            .execute(conn)?;
        total += n;
        if (n as i64) < BATCH {
            return Ok(total);
        }
    }
}

/// Prunes hourly, the first time a minute after start (not in the rush of
/// a restart).
pub async fn run(state: actix_web::web::Data<AppState>) {
    let retention = Retention::from_env();
    let start = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut tick = tokio::time::interval_at(start, std::time::Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let pruned = state.db.public(move |conn| Ok::<_, AppError>(prune(conn, Utc::now(), retention)?)).await;
        match pruned {
            Ok(p) if p != Pruned::default() => {
                tracing::info!(
                    webhooks = p.webhooks,
                    sends = p.sends,
                    refresh_tokens = p.refresh_tokens,
                    "pruned what retention no longer keeps"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = ?e, "housekeeping skipped a pass"),
        }
    }
}
