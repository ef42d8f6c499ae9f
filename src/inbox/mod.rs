//! The inbox: contacts, conversations, messages and the replies agents send.
//!
//! Decisions:
//! - One conversation per (channel, contact). Resolving closes it; the
//!   contact's next message reopens it (that counts as "opening" for the
//!   auto-reply). Snoozed and pending conversations reopen on a new message
//!   too; snoozes also wake when `snoozed_until` passes, at the clock's
//!   next tick (every 30 s). Until then a change that leaves the snooze
//!   alone (an assignee, labels) goes ahead; snoozing again needs a time
//!   still to come (422 `invalid_snooze`).
//! - The unread count belongs to the conversation (the team's inbox), not to
//!   each agent; `POST …/read` by anyone clears it.
//! - Receipts only ever move a message forward
//!   (pending → sent → delivered → read); `failed` replaces only pending or
//!   sent. A receipt for a message whose Meta id is not stored yet is kept
//!   (`early_statuses`) and applied when the id arrives.
//! - Echoes of our own sends are matched by id or by the `sb:<id>` metadata
//!   we send; other echoes (Page inbox, Business Suite, another app) become
//!   outgoing messages sent by the page.
//! - Besides text replies: files (`uploads`), WhatsApp templates,
//!   sendable whatever the window (`templates`), private notes for the
//!   team, never sent, which their author may edit (`messages::create_note`,
//!   `edit_note`, `delete_note`), and the business's reactions to
//!   customers' messages (`messages::react`). A WhatsApp reply may quote
//!   the message it answers (`ReplyOptions::reply_to`). A text reply may
//!   be written now and sent later (`scheduled`).

pub mod attributes;
pub mod auto_resolve;
pub mod broadcasts;
pub mod canned;
pub mod choices;
pub mod contact_export;
pub mod contact_import;
pub mod contact_links;
pub mod contacts;
pub mod conversations;
pub mod csat;
pub mod early;
pub mod events;
pub mod hand_out;
pub mod handover;
pub mod ingest;
pub mod macros;
pub mod media;
pub mod media_copies;
pub mod mentions;
pub mod messages;
pub mod notice_mail;
pub mod notifications;
pub mod once_per;
pub mod outreach;
pub mod processor;
pub mod reports;
pub mod retention;
pub mod roster;
pub mod routing;
pub mod saved_views;
pub mod scheduled;
pub mod scrub;
pub mod search_index;
pub mod sender;
pub mod teams;
pub mod template_authoring;
pub mod templates;
pub mod transcript;
pub mod uploads;
pub mod variables;
pub mod views;
pub mod waiting;

/// Whose a macro or a saved view is: the team's (every member's to use,
/// admins' to keep), or its maker's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    Team,
    Personal,
}

impl Visibility {
    /// Whose a thing of this visibility that `maker` makes is: theirs, or
    /// the team's (`None`).
    pub fn owner(self, maker: crate::ids::UserId) -> Option<i64> {
        (self == Visibility::Personal).then_some(maker.0)
    }

    /// The visibility of a thing kept for `owner` (`None`: the team).
    pub fn of(owner: Option<i64>) -> Visibility {
        if owner.is_some() {
            Visibility::Personal
        } else {
            Visibility::Team
        }
    }

    /// A change that names `asked` keeps this visibility, as made; else
    /// 422 `invalid_visibility` (of a `what`).
    pub fn kept(self, asked: Option<Visibility>, what: &str) -> crate::error::AppResult<()> {
        if asked.is_some_and(|v| v != self) {
            return Err(crate::error::AppError::invalid(
                "invalid_visibility",
                format!("a {what}'s visibility stays as it was made; make a new one instead"),
            ));
        }
        Ok(())
    }
}

crate::id_type!(
    /// A conversation, inside one tenant.
    ConversationId
);
crate::id_type!(
    /// A message, inside one tenant.
    MessageId
);
crate::id_type!(
    /// A contact, inside one tenant.
    ContactId
);

diesel::define_sql_function! {
    /// A LIKE pattern that finds the folded `text` anywhere in folded text
    /// (`public.sb_fold`: lower case, accents removed, as the columns
    /// `messages.search_text` and `contacts.search_name` hold it), its own
    /// `%`, `_` and `\` taken literally (`public.sb_fold_contains`).
    fn sb_fold_contains(text: diesel::sql_types::Text) -> diesel::sql_types::Nullable<diesel::sql_types::Text>;
}

diesel::define_sql_function! {
    /// Text folded as search compares it (`public.sb_fold`).
    fn sb_fold(text: diesel::sql_types::Text) -> diesel::sql_types::Nullable<diesel::sql_types::Text>;
}

/// Runs a search planned for its own parameters: its cost depends on the
/// pattern. One or two characters cannot use the trigram index and are best
/// scanned, longer ones best looked up. The statement is cached per
/// connection, and after five runs PostgreSQL may settle on a generic plan,
/// made without the pattern: one way for every pattern, and
/// `sb_fold_contains($1)` evaluated for every row instead of once (at
/// 200,000 messages a two-character search took 350 ms instead of 40;
/// `bench search`). What the transaction does next (lookups by id) keeps
/// its cached plans.
pub(crate) fn planned_for_the_pattern<T>(
    tc: &mut crate::db::TenantConn<'_>,
    search: impl FnOnce(&mut diesel::PgConnection) -> diesel::QueryResult<T>,
) -> crate::error::AppResult<T> {
    use diesel::connection::SimpleConnection;
    tc.pg().batch_execute("SET LOCAL plan_cache_mode = force_custom_plan")?;
    let found = search(tc.pg())?;
    tc.pg().batch_execute("SET LOCAL plan_cache_mode = DEFAULT")?;
    Ok(found)
}

/// How long an idle worker of `queue` sleeps unless woken
/// ([`crate::db::queue`]), asked on a connection known to work (the
/// pool's may have been closed by the server since); as before on an error.
pub async fn idle_wait(state: &crate::app::AppState, queue: crate::db::queue::Queue) -> std::time::Duration {
    let pool = state.db.pool().clone();
    let due = actix_web::web::block(move || {
        let mut conn = crate::db::live_connection(&pool)?;
        crate::db::queue::idle_wait(&mut conn, queue)
    })
    .await;
    match due {
        Ok(Ok(wait)) => wait,
        _ => crate::db::queue::HELD_RETRY,
    }
}

/// `%text%` for a LIKE that finds `text` anywhere, its own `%`, `_` and `\`
/// taken literally.
pub fn contains_pattern(text: &str) -> String {
    format!("%{}%", text.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"))
}

/// Position of a status in the forward-only order.
pub fn status_rank(s: &str) -> i32 {
    match s {
        "pending" => 0,
        "sent" => 1,
        "delivered" => 2,
        "read" => 3,
        _ => -1,
    }
}

/// Whether `to` may replace `from`.
pub fn status_moves_forward(from: &str, to: &str) -> bool {
    match to {
        "failed" => matches!(from, "pending" | "sent"),
        _ => from != "failed" && status_rank(to) > status_rank(from),
    }
}

#[cfg(test)]
mod tests {
    use super::status_moves_forward as fwd;

    #[test]
    fn statuses_only_move_forward() {
        assert!(fwd("pending", "sent") && fwd("sent", "delivered") && fwd("sent", "read") && fwd("delivered", "read"));
        assert!(!fwd("read", "delivered") && !fwd("delivered", "sent") && !fwd("read", "read"));
        assert!(fwd("sent", "failed") && fwd("pending", "failed"));
        assert!(!fwd("delivered", "failed") && !fwd("failed", "sent") && !fwd("failed", "read"));
    }
}
