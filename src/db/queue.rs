//! How long an idle worker of one of the two work queues in `public`
//! (`webhook_events` for the processor, `send_queue` for the sender) may
//! sleep before it looks again.
//!
//! Work stored by this instance wakes its worker at once (a `Notify`), so
//! the looking is for the rest: retries and leases falling due, and work
//! another instance stored and did not take (it stopped). Looking every
//! 250 ms cost an idle server eight queries and some twenty thread wakeups
//! a second. Now a worker whose last 250 ms wait passed unwoken (it is
//! idle: under load a store wakes it within milliseconds, and it does not
//! pay this query) asks when the next row falls due and sleeps until then,
//! at most [`IDLE_MOST`]: the bound on how late another instance's
//! leftovers are taken.

use diesel::prelude::*;
use std::time::Duration;

use super::DbError;

/// The longest an idle worker sleeps unwoken.
pub const IDLE_MOST: Duration = Duration::from_secs(2);
/// How soon to look again when rows are due but none could be claimed
/// (another worker holds them): as often as before.
pub const HELD_RETRY: Duration = Duration::from_millis(250);

/// A work queue in `public`.
#[derive(Clone, Copy, Debug)]
pub enum Queue {
    Webhooks,
    Sends,
}

/// How long to sleep after a claim found nothing.
pub fn idle_wait(conn: &mut PgConnection, queue: Queue) -> Result<Duration, DbError> {
    #[derive(QueryableByName)]
    struct Due {
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Double>)]
        secs: Option<f64>,
    }
    // Measured by the database's clock, as `next_attempt_at` is written.
    let sql = match queue {
        Queue::Webhooks => "SELECT EXTRACT(EPOCH FROM (min(next_attempt_at) - now()))::float8 AS secs \
               FROM public.webhook_events WHERE status = 'pending'"
            .to_string(),
        // A reply is due once its conversation's replies that hold it
        // back are (`inbox::sender`): due before them, it would be looked
        // for in vain every 250 ms while they wait out a backoff or a hold.
        Queue::Sends => format!(
            "SELECT EXTRACT(EPOCH FROM (min(GREATEST(q.next_attempt_at, w.until)) - now()))::float8 AS secs \
               FROM public.send_queue q \
               LEFT JOIN (SELECT e.tenant_id, e.conversation_id, max(e.next_attempt_at) AS until {} \
                           GROUP BY 1, 2) w \
                 ON q.kind = 'message' AND w.tenant_id = q.tenant_id AND w.conversation_id = q.conversation_id \
              WHERE q.status = 'pending'",
            crate::inbox::sender::replies_to_go()
        ),
    };
    let due: Due = diesel::sql_query(sql).get_result(conn)?;
    Ok(wait_until_due(due.secs))
}

/// The sleep for a next row due in `secs` (none pending: `None`).
pub fn wait_until_due(secs: Option<f64>) -> Duration {
    match secs {
        None => IDLE_MOST,
        Some(s) if s.is_nan() || s <= 0.0 => HELD_RETRY,
        // A few milliseconds late, so the row is due when looked at.
        Some(s) => Duration::from_secs_f64(s.min(IDLE_MOST.as_secs_f64())) + Duration::from_millis(5),
    }
    .min(IDLE_MOST)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleeps_until_the_next_row_is_due_and_never_past_the_bound() {
        assert_eq!(wait_until_due(None), IDLE_MOST);
        assert_eq!(wait_until_due(Some(-3.0)), HELD_RETRY, "due but held by another worker");
        assert_eq!(wait_until_due(Some(0.0)), HELD_RETRY);
        assert_eq!(wait_until_due(Some(f64::NAN)), HELD_RETRY);
        assert_eq!(wait_until_due(Some(0.5)), Duration::from_millis(505));
        assert_eq!(wait_until_due(Some(60.0)), IDLE_MOST);
        assert_eq!(wait_until_due(Some(f64::INFINITY)), IDLE_MOST);
    }
}
