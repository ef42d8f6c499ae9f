//! A member's notifications (an extension): what the inbox told them for
//! themselves — a colleague or the server's auto-assign gave them a
//! conversation, a colleague mentioned them in a note, a conversation
//! assigned to them passed its reply target, or its customer wrote —
//! kept to come back to, as a support tool's bell keeps them
//! (`GET /api/notifications`, `POST /api/notifications/read`).
//!
//! Decisions:
//! - Kept from the notices a change leaves for one member
//!   (`EventLog::member_notices`, which `notice_mail` reads too), in the
//!   change's own transaction (`AppState::tenant_with_events`, and the
//!   webhook processor's for conversations it auto-assigns), online or
//!   not: one seen live is still one to come back to. An auto-assignment
//!   is an `assigned` with `by` null (kept, not mailed: it goes to members
//!   online). Never for what a member does
//!   to themselves, nor for someone no longer a member (an overdue
//!   conversation still assigned to someone who left).
//! - A customer writing in a conversation assigned to a member, after it
//!   was read, is kept for that member as `customer_message` (by the
//!   webhook processor; not into a conversation still unread: that adds
//!   to what waits there already, and costs the webhook path nothing;
//!   not when that message is what gave it to them: that is an
//!   `assigned`; not on a channel with `settings.notifications` off, as
//!   for its `notification` events). One unread per member and
//!   conversation, naming the first message since it was read
//!   (`message_id`, where to start reading); its preview, read when
//!   listed, is the customer's latest message (until it was read). A
//!   chatty customer is one line, and the unread count moves only when
//!   it first comes. (A row moved on by every customer message cost the
//!   processor a quarter to a half more database time per webhook, and
//!   doubled the latency's p99, with every conversation assigned:
//!   `bench realtime --assigned`, docs/BENCHMARKS.md.)
//!   Never mailed (`notice_mail`). Withdrawn, unread, when the
//!   conversation passes to someone else or to no one
//!   ([`changed_hands`]): it was a reminder of a customer waiting on this
//!   member, and no longer is; the new assignee has their `assigned`. The
//!   member may turn it off in a tenant (`PATCH /api/me`
//!   `{inbox_notifications: {customer_message: false}}`); what was kept
//!   stays, to be read as before. The other kinds cannot be turned off:
//!   a colleague or the clock did them for this member.
//! - A `reply_overdue` still unread is withdrawn as a `customer_message`
//!   is when the conversation passes to someone else or to no one: it
//!   said a customer waits on this member past the target, and no longer
//!   does. Nobody is told anew (the clock rings once per wait): the new
//!   assignee has their `assigned`, and `?overdue=true` lists it.
//! - The channel-wide ones (`new_conversation`, `new_message`, thread
//!   control) are every agent's of the channel: the list, the badges and
//!   the live `notification` events show them; they are not kept per
//!   member.
//! - Listed while the member may see the conversation's channel; a
//!   mention while its note is there and still names them (an edit that
//!   drops them, or deleting the note, takes it away, as from
//!   `GET /api/mentions`), its preview the note as it is now. They go with
//!   their conversation (retention, erasure, purge) and with their note;
//!   read ones go after [`KEEP_READ_DAYS`]; a member removed from the team
//!   loses theirs.
//! - Read one by one, all at once, or by reading the conversation they
//!   are about (`POST /api/conversations/{id}/read`: looking at it is
//!   seeing them).
//! - Announced live as `notifications.changed` `{user_id, unread_count}`
//!   whenever a member's unread count moves (one kept, some read, their
//!   channels changed: [`sight_changed`]), to that
//!   member's sockets alone (`EventLog::append_for`), as a mention's
//!   `notification` is: every tab and device of the member keeps its
//!   badge, and one showing the list reads it again.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};

use super::events::{EventLog, MemberNotice};
use super::{ConversationId, MessageId};
use crate::auth::Role;
use crate::channels::ChannelId;
use crate::db::tenant_schema::notifications as n;
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

crate::id_type!(
    /// A member's notification, inside one tenant.
    NotificationId
);

/// Read notifications are kept this long.
pub const KEEP_READ_DAYS: i64 = 30;
/// Notifications one `POST /api/notifications/read` names, at most.
pub const MOST_IDS: usize = 200;
/// Characters of a mention's preview.
const PREVIEW_CHARS: i32 = 120;
/// The unread count stops here, as the inbox's badges do.
const MOST_COUNTED: i64 = 10_000;

/// The live event a member's unread count moving is announced as.
pub const CHANGED: &str = "notifications.changed";

/// The kind kept when a customer writes in a conversation assigned to a
/// member: one unread per member and conversation until read.
pub const CUSTOMER_MESSAGE: &str = "customer_message";

/// A conversation assigned to the member passed its reply target.
pub const REPLY_OVERDUE: &str = "reply_overdue";

/// Keeps, in `tc`'s transaction, `notices` (of `log`'s unit of work),
/// announcing the new unread count of each member whose count moved;
/// how many were stored (a customer's message that finds its unread
/// notification there stores nothing).
pub fn keep(tc: &mut TenantConn<'_>, log: &mut EventLog, notices: &[MemberNotice]) -> AppResult<usize> {
    if notices.is_empty() {
        return Ok(0);
    }
    let (customers, others): (Vec<&MemberNotice>, Vec<&MemberNotice>) =
        notices.iter().partition(|n| n.kind == CUSTOMER_MESSAGE);
    let mut kept = insert(tc, &others)?;
    kept.extend(customer_wrote(tc, &customers)?);
    let count = kept.len();
    kept.sort_unstable();
    kept.dedup();
    announce_all(tc, log, &kept)?;
    Ok(count)
}

/// [`announce`] for each of `users` still a member, their counts read in
/// one query: the webhook processor may tell many members at once.
fn announce_all(tc: &mut TenantConn<'_>, log: &mut EventLog, users: &[i64]) -> AppResult<()> {
    use diesel::sql_types::{Array, BigInt, Text};
    #[derive(QueryableByName)]
    struct Counted {
        #[diesel(sql_type = BigInt)]
        user_id: i64,
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    if users.is_empty() {
        return Ok(());
    }
    // The roles that see every channel, as `Role::at_least` says.
    let sees_all: Vec<&str> = Role::ALL.into_iter().filter(|r| r.at_least(Role::Admin)).map(Role::as_str).collect();
    let tenant = tc.tenant();
    let counted: Vec<Counted> = diesel::sql_query(format!(
        "SELECT u.user_id, (SELECT count(*) FROM (SELECT 1 {} AND n.read_at IS NULL LIMIT $3) unread) AS n \
           FROM (SELECT ms.user_id, ms.role = ANY($4) AS sees_all FROM public.memberships ms \
                  WHERE ms.tenant_id = $1 AND ms.user_id = ANY($2)) u \
          ORDER BY u.user_id",
        shown("u.user_id", "u.sees_all")
    ))
    .bind::<BigInt, _>(tenant.0)
    .bind::<Array<BigInt>, _>(users)
    .bind::<BigInt, _>(MOST_COUNTED)
    .bind::<Array<Text>, _>(sees_all)
    .load(tc.pg())?;
    for c in counted {
        let data = serde_json::json!({"user_id": c.user_id.to_string(), "unread_count": c.n});
        log.append_for(tc, UserId(c.user_id), CHANGED, None, None, data)?;
    }
    Ok(())
}

/// Stores `notices` as they are, for members still of the tenant; the
/// member of each one stored.
fn insert(tc: &mut TenantConn<'_>, notices: &[&MemberNotice]) -> AppResult<Vec<i64>> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text};
    if notices.is_empty() {
        return Ok(Vec::new());
    }
    let users: Vec<i64> = notices.iter().map(|n| n.user).collect();
    let kinds: Vec<&str> = notices.iter().map(|n| n.kind.as_str()).collect();
    let conversations: Vec<i64> = notices.iter().map(|n| n.conversation).collect();
    let messages: Vec<Option<i64>> = notices.iter().map(|n| n.message).collect();
    let by: Vec<Option<i64>> = notices.iter().map(|n| n.by).collect();
    let tenant = tc.tenant();
    let kept: Vec<Kept> = diesel::sql_query(
        "INSERT INTO notifications (user_id, kind, conversation_id, message_id, by_user_id) \
         SELECT v.user_id, v.kind, v.conversation_id, v.message_id, v.by_user_id \
           FROM unnest($1, $2, $3, $4, $5) AS v(user_id, kind, conversation_id, message_id, by_user_id) \
          WHERE EXISTS (SELECT 1 FROM public.memberships ms WHERE ms.user_id = v.user_id AND ms.tenant_id = $6) \
         RETURNING user_id",
    )
    .bind::<Array<BigInt>, _>(users)
    .bind::<Array<Text>, _>(kinds)
    .bind::<Array<BigInt>, _>(conversations)
    .bind::<Array<Nullable<BigInt>>, _>(messages)
    .bind::<Array<Nullable<BigInt>>, _>(by)
    .bind::<BigInt, _>(tenant.0)
    .load(tc.pg())?;
    Ok(kept.into_iter().map(|k| k.user_id).collect())
}

/// A notification stored: whose.
#[derive(QueryableByName)]
struct Kept {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    user_id: i64,
}

/// Customers wrote in conversations assigned to members: each member
/// without an unread notification of that conversation gets one, naming
/// the first of these messages (by when it was written: webhooks come out
/// of order); one who has it keeps it as it is (its preview is read when
/// listed), so a customer's later messages write nothing here. The members
/// given a new one (their unread count moved).
fn customer_wrote(tc: &mut TenantConn<'_>, notices: &[&MemberNotice]) -> AppResult<Vec<i64>> {
    use diesel::sql_types::{Array, BigInt, Nullable};
    if notices.is_empty() {
        return Ok(Vec::new());
    }
    let users: Vec<i64> = notices.iter().map(|n| n.user).collect();
    let conversations: Vec<i64> = notices.iter().map(|n| n.conversation).collect();
    let messages: Vec<Option<i64>> = notices.iter().map(|n| n.message).collect();
    let tenant = tc.tenant();
    // One row per member and conversation, the earliest message's.
    let kept: Vec<Kept> = diesel::sql_query(format!(
        "INSERT INTO notifications (user_id, kind, conversation_id, message_id) \
         SELECT DISTINCT ON (v.user_id, v.conversation_id) v.user_id, '{CUSTOMER_MESSAGE}', v.conversation_id, m.id \
           FROM unnest($1, $2, $3) AS v(user_id, conversation_id, message_id) \
           JOIN messages m ON m.id = v.message_id \
          WHERE EXISTS (SELECT 1 FROM public.memberships ms \
                         WHERE ms.user_id = v.user_id AND ms.tenant_id = $4 AND ms.keep_customer_messages) \
          ORDER BY v.user_id, v.conversation_id, m.sort_at, m.id \
         ON CONFLICT (user_id, conversation_id) WHERE kind = '{CUSTOMER_MESSAGE}' AND read_at IS NULL DO NOTHING \
         RETURNING user_id"
    ))
    .bind::<Array<BigInt>, _>(users)
    .bind::<Array<BigInt>, _>(conversations)
    .bind::<Array<Nullable<BigInt>>, _>(messages)
    .bind::<BigInt, _>(tenant.0)
    .load(tc.pg())?;
    Ok(kept.into_iter().map(|k| k.user_id).collect())
}

/// Notices (`n`) of the conversations `$1` that a change of hands
/// withdraws from whoever no longer has the conversation: one predicate
/// for [`changed_hands`] and the lock taken before it
/// ([`lock_withdrawable`]), so the lock covers what is withdrawn.
const WITHDRAWABLE: &str = "n.conversation_id = ANY($1) \
    AND n.kind IN ('customer_message', 'reply_overdue') AND n.read_at IS NULL";

/// `conversations` changed hands: a `customer_message` or `reply_overdue`
/// still unread by a member no longer on one is withdrawn (each said a
/// customer waits on this member; what waits there is now its new
/// assignee's to answer, told by their `assigned`, or the channel's, whose
/// list shows it overdue), and the count of each member who lost one is
/// announced. Run after the change, in its transaction. How many were
/// withdrawn.
pub fn changed_hands(tc: &mut TenantConn<'_>, log: &mut EventLog, conversations: &[i64]) -> AppResult<usize> {
    use diesel::sql_types::{Array, BigInt};
    if conversations.is_empty() {
        return Ok(0);
    }
    // In id order, as "mark all" takes them ([`mark_read`]).
    let mut withdrawn: Vec<i64> = diesel::sql_query(format!(
        "DELETE FROM notifications WHERE id IN ( \
             SELECT n.id FROM notifications n JOIN conversations c ON c.id = n.conversation_id \
              WHERE {WITHDRAWABLE} AND c.assignee_id IS DISTINCT FROM n.user_id \
              ORDER BY n.id FOR UPDATE OF n) \
         RETURNING user_id"
    ))
    .bind::<Array<BigInt>, _>(conversations)
    .load::<Kept>(tc.pg())?
    .into_iter()
    .map(|k| k.user_id)
    .collect();
    let count = withdrawn.len();
    withdrawn.sort_unstable();
    withdrawn.dedup();
    announce_all(tc, log, &withdrawn)?;
    Ok(count)
}

/// Locks, in id order, the notices [`changed_hands`] would withdraw from
/// `conversations` (locked already, so no new one comes): for a change
/// withdrawing them one conversation after another, as a bulk change
/// does, which "mark all read" ([`mark_read`]) met in another order.
pub fn lock_withdrawable(tc: &mut TenantConn<'_>, conversations: &[i64]) -> AppResult<()> {
    use diesel::sql_types::{Array, BigInt};
    diesel::sql_query(format!("SELECT n.id FROM notifications n WHERE {WITHDRAWABLE} ORDER BY n.id FOR UPDATE"))
        .bind::<Array<BigInt>, _>(conversations)
        .execute(tc.pg())?;
    Ok(())
}

/// Announces `user`'s unread count as it is now.
pub fn announce(tc: &mut TenantConn<'_>, log: &mut EventLog, user: UserId, role: Role) -> AppResult<i64> {
    let unread = unread_count(tc, user, role)?;
    let data = serde_json::json!({"user_id": user.to_string(), "unread_count": unread});
    // Told already by this change (a member leaving a channel loses what
    // its conversations said, then its sight): once is enough.
    if log.latest_for(user, CHANGED) != Some(data.to_string().as_str()) {
        log.append_for(tc, user, CHANGED, None, None, data)?;
    }
    Ok(unread)
}

/// Announces anew the unread counts of those of `users` just put on or
/// taken off `channel`, when they have unread notifications of it: the
/// count is of what one may see, and every tab's badge must follow.
/// Members who see every channel either way are passed over. (A role
/// change ends the member's logins, and their sockets with them: a new
/// login reads the count.) How many were announced.
pub fn sight_changed(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    users: &[UserId],
    channel: ChannelId,
) -> AppResult<usize> {
    use crate::db::tenant_schema::conversations as c;
    if users.is_empty() {
        return Ok(0);
    }
    let ids: Vec<i64> = users.iter().map(|u| u.0).collect();
    let touched: Vec<i64> = n::table
        .inner_join(c::table)
        .filter(n::user_id.eq_any(ids))
        .filter(n::read_at.is_null())
        .filter(c::channel_id.eq(channel.0))
        .select(n::user_id)
        .distinct()
        .load(tc.pg())?;
    let mut announced = 0;
    for user in touched.into_iter().map(UserId) {
        let Some(role) = crate::auth::members::role_of(tc, user)? else { continue };
        if role.at_least(Role::Admin) {
            continue;
        }
        announce(tc, log, user, role)?;
        announced += 1;
    }
    Ok(announced)
}

/// A notification as `GET /api/notifications` lists it.
#[derive(Debug, Serialize)]
pub struct NotificationView {
    pub id: NotificationId,
    pub kind: String,
    pub conversation_id: ConversationId,
    pub channel_id: ChannelId,
    /// The note that mentions them; the first message the customer wrote
    /// since it was read (`customer_message`).
    pub message_id: Option<MessageId>,
    /// The colleague who did it (none for a reply target passing, a
    /// customer writing, or the server's auto-assign).
    pub by: Option<UserId>,
    /// The start of the note as it is now, or of the customer's latest
    /// message (until it was read; none for a file without text); none
    /// for the other kinds.
    pub preview: Option<String>,
    /// For a customer writing, when they first wrote since it was read.
    pub created_at: DateTime<Utc>,
    pub read_at: Option<DateTime<Utc>>,
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    id: i64,
    #[diesel(sql_type = diesel::sql_types::Text)]
    kind: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    conversation_id: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    channel_id: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    message_id: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    by_user_id: Option<i64>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    preview: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    read_at: Option<DateTime<Utc>>,
}

impl From<Row> for NotificationView {
    fn from(r: Row) -> Self {
        NotificationView {
            id: NotificationId(r.id),
            kind: r.kind,
            conversation_id: ConversationId(r.conversation_id),
            channel_id: ChannelId(r.channel_id),
            message_id: r.message_id.map(MessageId),
            by: r.by_user_id.map(UserId),
            preview: r.preview,
            created_at: r.created_at,
            read_at: r.read_at,
        }
    }
}

/// The notifications a member may see: `member` names the member and
/// `sees_all` whether they see every channel (SQL: parameters, or an outer
/// query's columns).
fn shown(member: &str, sees_all: &str) -> String {
    format!(
        "FROM notifications n \
           JOIN conversations c ON c.id = n.conversation_id \
           LEFT JOIN messages m ON m.id = n.message_id \
          WHERE n.user_id = {member} \
            AND ({sees_all} OR c.channel_id IN (SELECT cm.channel_id FROM channel_members cm WHERE cm.user_id = {member})) \
            AND (n.kind <> 'mention' \
                 OR (m.deleted_at IS NULL \
                     AND EXISTS (SELECT 1 FROM note_mentions nm \
                                  WHERE nm.message_id = n.message_id AND nm.user_id = n.user_id)))"
    )
}

/// `user`'s notifications, newest first, after cursor `before` (an id);
/// only the unread ones with `unread_only`.
pub fn list(
    tc: &mut TenantConn<'_>,
    user: UserId,
    role: Role,
    unread_only: bool,
    before: Option<i64>,
    limit: i64,
) -> AppResult<Vec<NotificationView>> {
    use diesel::sql_types::{BigInt, Bool, Integer, Nullable};
    let shown = shown("$1", "$2");
    let rows = diesel::sql_query(format!(
        "SELECT n.id, n.kind, n.conversation_id, c.channel_id, n.message_id, n.by_user_id, \
                CASE WHEN n.kind = '{CUSTOMER_MESSAGE}' THEN \
                       (SELECT left(lm.text, $6) FROM messages lm \
                         WHERE lm.conversation_id = n.conversation_id AND lm.direction = 'in' \
                           AND lm.deleted_at IS NULL AND (n.read_at IS NULL OR lm.created_at <= n.read_at) \
                         ORDER BY lm.sort_at DESC, lm.id DESC LIMIT 1) \
                     WHEN m.deleted_at IS NULL THEN left(m.text, $6) END AS preview, n.created_at, n.read_at \
         {shown} AND (NOT $3 OR n.read_at IS NULL) AND ($4::bigint IS NULL OR n.id < $4) \
         ORDER BY n.id DESC LIMIT $5"
    ))
    .bind::<BigInt, _>(user.0)
    .bind::<Bool, _>(role.at_least(Role::Admin))
    .bind::<Bool, _>(unread_only)
    .bind::<Nullable<BigInt>, _>(before)
    .bind::<BigInt, _>(limit)
    .bind::<Integer, _>(PREVIEW_CHARS)
    .load::<Row>(tc.pg())?;
    Ok(rows.into_iter().map(NotificationView::from).collect())
}

/// How many of `user`'s notifications they may see are unread (counted
/// up to 10,000).
pub fn unread_count(tc: &mut TenantConn<'_>, user: UserId, role: Role) -> AppResult<i64> {
    use diesel::sql_types::{BigInt, Bool};
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let shown = shown("$1", "$2");
    let counted: Count = diesel::sql_query(format!(
        "SELECT count(*) AS n FROM (SELECT 1 {shown} AND n.read_at IS NULL LIMIT $3) unread"
    ))
    .bind::<BigInt, _>(user.0)
    .bind::<Bool, _>(role.at_least(Role::Admin))
    .bind::<BigInt, _>(MOST_COUNTED)
    .get_result(tc.pg())?;
    Ok(counted.n)
}

/// Which of a member's notifications to mark read.
pub enum Which {
    All,
    Ids(Vec<NotificationId>),
    /// Those about one conversation: it was read.
    Conversation(ConversationId),
}

/// `POST /api/notifications/read`, `{ids}` or `{all: true}`, read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadRequest {
    #[serde(default)]
    pub ids: Option<Vec<NotificationId>>,
    #[serde(default)]
    pub all: Option<bool>,
}

impl ReadRequest {
    /// One of the two, and no more than [`MOST_IDS`] ids (422
    /// `invalid_body`).
    pub fn which(self) -> AppResult<Which> {
        match (self.ids, self.all) {
            (Some(ids), None) if !ids.is_empty() && ids.len() <= MOST_IDS => Ok(Which::Ids(ids)),
            (None, Some(true)) => Ok(Which::All),
            _ => Err(AppError::invalid(
                "invalid_body",
                format!("give ids (1 to {MOST_IDS} notification ids) or all: true"),
            )),
        }
    }
}

/// Marks `user`'s unread notifications that `which` names, of those they
/// may see, read (ids of others' or unknown ones are passed over: marking
/// is safe to repeat), announcing the count when it moved; how many, and
/// then how many stay unread (not counted when none was marked).
pub fn mark_read(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    which: Which,
) -> AppResult<(usize, Option<i64>)> {
    use diesel::sql_types::{Array, BigInt, Bool, Nullable};
    let (ids, conversation) = match which {
        Which::All => (None, None),
        Which::Ids(ids) => (Some(ids.into_iter().map(|i| i.0).collect::<Vec<i64>>()), None),
        Which::Conversation(c) => (None, Some(c.0)),
    };
    let shown = shown("$1", "$2");
    // Taken in id order, as a change of hands takes them
    // ([`changed_hands`]): in the scan's order, "mark all" and a bulk
    // change handing away several of the member's conversations could each
    // hold one the other waited for.
    let marked = diesel::sql_query(format!(
        "WITH picked AS (SELECT n.id {shown} AND n.read_at IS NULL \
                            AND ($3::bigint[] IS NULL OR n.id = ANY($3)) \
                            AND ($4::bigint IS NULL OR n.conversation_id = $4) \
                          ORDER BY n.id FOR NO KEY UPDATE OF n) \
         UPDATE notifications SET read_at = now() WHERE id IN (SELECT id FROM picked)"
    ))
    .bind::<BigInt, _>(user.0)
    .bind::<Bool, _>(role.at_least(Role::Admin))
    .bind::<Nullable<Array<BigInt>>, _>(ids)
    .bind::<Nullable<BigInt>, _>(conversation)
    .execute(tc.pg())?;
    let unread = match marked {
        0 => None,
        _ => Some(announce(tc, log, user, role)?),
    };
    Ok((marked, unread))
}

/// A member removed from the team: their notifications go.
pub fn forget_member(tc: &mut TenantConn<'_>, user: UserId) -> AppResult<()> {
    diesel::delete(n::table.filter(n::user_id.eq(user.0))).execute(tc.pg())?;
    Ok(())
}

/// Deletes read notifications older than [`KEEP_READ_DAYS`] (the hourly
/// pruning of each tenant).
pub fn prune(tc: &mut TenantConn<'_>) -> AppResult<usize> {
    let cutoff = Utc::now() - chrono::Duration::days(KEEP_READ_DAYS);
    Ok(diesel::delete(n::table.filter(n::read_at.lt(cutoff))).execute(tc.pg())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_withdrawable_notices_are_the_two_kinds_a_change_of_hands_ends() {
        for kind in [CUSTOMER_MESSAGE, REPLY_OVERDUE] {
            assert!(WITHDRAWABLE.contains(&format!("'{kind}'")), "{kind} missing from {WITHDRAWABLE}");
        }
        assert_eq!(WITHDRAWABLE.matches('\'').count(), 4, "no other kind: {WITHDRAWABLE}");
    }
}
