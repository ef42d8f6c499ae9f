//! The sender worker (replies, "seen" signals and the business's reactions
//! to Meta), the profile lookups and the snooze alarm clock, all inside
//! `serve`.
//!
//! A queued reply is sent with the Send API (Messenger, Instagram) or the
//! WhatsApp messages API, then marked `sent` with Meta's id, or `failed` with
//! a typed reason: `outside_window`, `recipient_unavailable`,
//! `meta_token_invalid` (the channel also becomes `reauth_required`),
//! `meta_error`, `contact_blocked` (the team blocked the contact after the
//! reply was queued; `inbox::contacts`). Transient failures retry with
//! backoff; Meta's rate limits hold the channel's sends until they pass
//! (`channels::send_hold`). Sends respect a per-channel rate (`SWITCHBOARD_SEND_RATE`, messages per
//! second per channel, default 20): one the rate holds back is told its
//! turn in the channel's line ([`Pacer`]). Several instances share the
//! rate: each keeps to its part (`inbox::roster`).
//!
//! Conversations' sends go side by side ([`SENDS_AT_ONCE`]), each
//! conversation's in the order they were written: a send waiting on Meta
//! holds up only its own. A reply left to be tried again (Meta failed it
//! for a while or did not answer, rate-limits the channel, or the channel's
//! pace holds it) holds back the replies after it in its conversation until
//! it goes or is given up (about a minute of tries at most, or the rate
//! limit's hold), rather than have them reach the customer before it
//! ([`replies_to_go`]). Two instances keep that order too: a claim that
//! meets an earlier reply's row locked by the other's claim passes over
//! the replies after it ([`claim`]).
//!
//! A file (`inbox::uploads`) is uploaded with its send, which may take a
//! minute: it goes apart from the other sends ([`FILES_AT_ONCE`] at a
//! time), and what follows it in its conversation waits for it, so the
//! customer gets the messages in the order the agent sent them.

use chrono::{Duration as ChronoDuration, Utc};
use diesel::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::views::{ContactRow, ConversationRow, MessageRow, ReplyWindow};
use super::{contacts, conversations, messages};
use crate::app::AppState;
use crate::channels::send_hold::{self, SendHold};
use crate::channels::{connect::note_graph_error, ChannelId, ChannelRow, Platform};
use crate::db::queue::{Queue, HELD_RETRY};
use crate::db::schema::send_queue as sq;
use crate::db::tenant_schema::{contacts as ct, conversations as cv, messages as m};
use crate::db::TenantScope;
use crate::error::{AppError, AppResult};
use crate::ids::TenantId;
use crate::meta::GraphError;
use crate::secret::Secret;

const MAX_SEND_ATTEMPTS: i32 = 6;
/// A broadcast's job kind (`inbox::broadcasts`): no message of its own.
const BROADCAST: &str = "broadcast";

/// What a send job sends (`public.send_queue.kind`, whose CHECK lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendKind {
    /// A reply: its message.
    Message,
    /// "Seen" for the conversation's customer.
    MarkSeen,
    /// The business's reaction to a customer's message, as it is by then.
    Reaction,
}

impl SendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SendKind::Message => "message",
            SendKind::MarkSeen => "mark_seen",
            SendKind::Reaction => "reaction",
        }
    }
}

/// What a job that does its work in steps (`inbox::broadcasts`,
/// `inbox::scheduled`) does next.
pub enum Next {
    /// Nothing: its work ended, or the job is a stray.
    Done,
    /// Look again after this long, and why (Meta holds or restricts the
    /// number, or it is not due yet).
    Wait(Duration, &'static str),
}

/// How long past a `send_at` (`inbox::broadcasts`, `inbox::scheduled`)
/// may be and still be taken as now: clocks differ, and a form takes a
/// while to send.
pub const PAST_GRACE_SECONDS: i64 = 60;

/// Takes a job that waits for its time (a scheduled broadcast's, a
/// scheduled message's; months, perhaps) out of the queue while it waits
/// there; one taken up meanwhile finds itself a stray.
pub fn drop_job(tc: &mut crate::db::TenantConn<'_>, job: Option<i64>) -> AppResult<()> {
    if let Some(job) = job {
        diesel::update(sq::table.find(job).filter(sq::status.eq("pending")))
            .set(sq::status.eq("done"))
            .execute(tc.pg())?;
    }
    Ok(())
}

/// Queues a send job in the caller's transaction (it goes with the change
/// that asks for it); the sender is woken by the caller after the commit.
pub fn queue(
    tc: &mut crate::db::TenantConn<'_>,
    kind: SendKind,
    conversation: i64,
    message: Option<i64>,
) -> AppResult<()> {
    diesel::insert_into(sq::table)
        .values((
            sq::tenant_id.eq(tc.tenant().0),
            sq::message_id.eq(message),
            sq::conversation_id.eq(conversation),
            sq::kind.eq(kind.as_str()),
        ))
        .execute(tc.pg())?;
    Ok(())
}

#[derive(Debug, Clone)]
struct Job {
    id: i64,
    tenant: TenantId,
    message_id: Option<i64>,
    conversation_id: Option<i64>,
    kind: String,
    attempts: i32,
    /// A `broadcast` job's broadcast (`inbox::broadcasts`).
    broadcast_id: Option<i64>,
    /// A `scheduled_message` job's message (`inbox::scheduled`).
    scheduled_message_id: Option<i64>,
    /// An earlier try went out and got no answer ([`JobEnd::Unanswered`]):
    /// Meta may have sent it.
    may_have_gone: bool,
}

/// SQL: the replies still to go (`FROM public.send_queue e WHERE …`)
/// that hold their conversation's other replies back while one of them
/// waits for a later try, so that the customer gets them in the order the
/// agent wrote them. The reply waiting is the conversation's earliest
/// still to go: a turn runs its replies in order, and hands back those
/// after one left queued. Not one that failed past its tries in a way no
/// send explains ([`run_job`]'s errors, each tried again): it would hold
/// its conversation for ever. Other jobs (a "seen", a reaction, a
/// scheduled message before it is due) neither wait nor hold back.
///
/// By conversation rather than by each reply's earlier ones: one hashed
/// set per claim. Asked for each pending reply (a NOT EXISTS over the
/// earlier ones), the planner, its statistics taken while the queue was
/// small, read every pending reply for each: 0.9 s a claim at 2,000
/// pending (`bench sends`).
pub(crate) fn replies_to_go() -> String {
    format!(
        "FROM public.send_queue e WHERE e.status = 'pending' AND e.kind = 'message' \
          AND e.conversation_id IS NOT NULL AND e.attempts <= {MAX_SEND_ATTEMPTS}"
    )
}

/// How long a claimed job is not claimed again ([`claim`]): time for a
/// send that starts late in its turn ([`START_WITHIN`]), its wait for
/// Meta's answer and its record ([`RECORD_FOR`]); after it another pass or
/// instance may take the job up (its process died, say).
const CLAIM_LEASE: Duration = Duration::from_secs(60);
const _: () = assert!(
    START_WITHIN.as_secs() + crate::meta::graph::ANSWER_WITHIN.as_secs() + RECORD_FOR.as_secs()
        <= CLAIM_LEASE.as_secs()
);

/// Claims up to `limit` due jobs, but none of the conversations in `busy`
/// ((tenant, conversation) whose send is under way here: theirs go in
/// turn), and no reply whose conversation has one waiting ([`replies_to_go`]).
fn claim(conn: &mut PgConnection, limit: i64, busy: &[(i64, i64)]) -> Result<Vec<Job>, crate::db::DbError> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        tenant_id: i64,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
        message_id: Option<i64>,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
        conversation_id: Option<i64>,
        #[diesel(sql_type = diesel::sql_types::Text)]
        kind: String,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        attempts: i32,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
        broadcast_id: Option<i64>,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
        scheduled_message_id: Option<i64>,
        #[diesel(sql_type = diesel::sql_types::Bool)]
        may_have_gone: bool,
    }
    // A reply whose conversation has one waiting for a later try waits
    // with it; those due come in this claim, in order (by id). A reply
    // another instance's claim holds at this moment (its row locked, so
    // skipped here) holds back the ones after it too: the rows picked are
    // kept only where no earlier reply of their conversation is left out.
    let rows: Vec<Row> = diesel::sql_query(format!(
        "WITH picked AS ( \
           SELECT q.id, q.tenant_id, q.conversation_id, q.kind FROM public.send_queue q \
            WHERE q.status = 'pending' AND q.next_attempt_at <= now() \
              AND (q.conversation_id IS NULL OR (q.tenant_id, q.conversation_id) NOT IN \
                   (SELECT * FROM unnest($2::bigint[], $3::bigint[]))) \
              AND (q.kind <> 'message' OR q.conversation_id IS NULL OR (q.tenant_id, q.conversation_id) \
                   NOT IN (SELECT e.tenant_id, e.conversation_id {go} AND e.next_attempt_at > now())) \
            ORDER BY q.id LIMIT $1 FOR UPDATE SKIP LOCKED) \
         UPDATE public.send_queue s SET attempts = s.attempts + 1, \
                next_attempt_at = now() + make_interval(secs => {lease}) \
           FROM picked p \
          WHERE s.id = p.id \
            AND (p.kind <> 'message' OR p.conversation_id IS NULL OR NOT EXISTS ( \
                 SELECT 1 {go} AND e.tenant_id = p.tenant_id AND e.conversation_id = p.conversation_id \
                   AND e.id < p.id AND e.id NOT IN (SELECT id FROM picked))) \
          RETURNING s.id, s.tenant_id, s.message_id, s.conversation_id, s.kind, s.attempts, s.broadcast_id, \
                    s.scheduled_message_id, s.may_have_gone",
        go = replies_to_go(),
        lease = CLAIM_LEASE.as_secs()
    ))
    .bind::<diesel::sql_types::BigInt, _>(limit)
    .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(busy.iter().map(|b| b.0).collect::<Vec<_>>())
    .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(busy.iter().map(|b| b.1).collect::<Vec<_>>())
    .load(conn)?;
    let mut jobs: Vec<Job> = rows
        .into_iter()
        .map(|r| Job {
            id: r.id,
            tenant: TenantId(r.tenant_id),
            message_id: r.message_id,
            conversation_id: r.conversation_id,
            kind: r.kind,
            attempts: r.attempts,
            broadcast_id: r.broadcast_id,
            scheduled_message_id: r.scheduled_message_id,
            may_have_gone: r.may_have_gone,
        })
        .collect();
    jobs.sort_by_key(|j| j.id);
    Ok(jobs)
}

enum JobEnd {
    Done,
    Retry {
        after: Duration,
        error: String,
        counts: bool,
    },
    /// The try went out and got no answer ([`GraphError::NoAnswer`]): if
    /// Meta sent it, its status or echo names it (`ingest`) and the job
    /// ends when tried again; so the next try waits for one to come, at
    /// least [`AFTER_NO_ANSWER`], and the job keeps that it may have gone.
    Unanswered {
        error: String,
    },
}

/// How long a send that got no answer waits for its next try: Meta's
/// webhooks for a message it sent (statuses, echoes) come within seconds as
/// a rule, after the client's 10 s wait for the answer. A reply that truly
/// did not go is that much later; one that did is not sent twice.
const AFTER_NO_ANSWER: Duration = Duration::from_secs(20);

/// The wait before a job's next try after a failure that may pass, longer
/// with each try (2 s, 4 s, … up to 256 s).
fn backoff(attempts: i32) -> Duration {
    Duration::from_secs(1u64 << attempts.clamp(0, 8))
}

/// Whether a job's try ended it or left it queued for a later one: a
/// reply left queued holds back those after it in its conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Left {
    Ended,
    Queued,
}

async fn finish(state: &AppState, job: &Job, end: JobEnd) -> AppResult<Left> {
    let left = match end {
        JobEnd::Done => Left::Ended,
        JobEnd::Retry { .. } | JobEnd::Unanswered { .. } => Left::Queued,
    };
    let id = job.id;
    let attempts = job.attempts;
    // From now, not from when a connection is had: a send the channel's
    // rate holds back is due at the turn it was told ([`look_again`]).
    let decided = Utc::now();
    let at =
        move |after: Duration| decided + ChronoDuration::from_std(after).unwrap_or_else(|_| ChronoDuration::seconds(1));
    state
        .db
        .public(move |conn| {
            match end {
                JobEnd::Done => {
                    diesel::update(sq::table.find(id)).set(sq::status.eq("done")).execute(conn)?;
                }
                JobEnd::Retry { after, error, counts } => {
                    let attempts_fix = if counts { attempts } else { attempts - 1 };
                    diesel::update(sq::table.find(id))
                        .set((
                            sq::next_attempt_at.eq(at(after)),
                            sq::last_error.eq(error),
                            sq::attempts.eq(attempts_fix),
                        ))
                        .execute(conn)?;
                }
                JobEnd::Unanswered { error } => {
                    let after = backoff(attempts).max(AFTER_NO_ANSWER);
                    diesel::update(sq::table.find(id))
                        .set((sq::next_attempt_at.eq(at(after)), sq::last_error.eq(error), sq::may_have_gone.eq(true)))
                        .execute(conn)?;
                }
            }
            Ok::<_, AppError>(())
        })
        .await?;
    Ok(left)
}

/// Everything a send needs, read in one tenant transaction.
struct Context {
    message: Option<MessageRow>,
    conversation: ConversationRow,
    contact: ContactRow,
    channel: ChannelRow,
    token: Option<Secret<String>>,
    /// An agent's file (`inbox::uploads`); its bytes are read when it is sent.
    file: Option<super::uploads::Sendable>,
    /// Who a WhatsApp message is sent `to`: the customer's WhatsApp id, or
    /// the number an agent wrote first to, as a phone number (`+` and its
    /// digits) until Meta has said which id it is (`inbox::outreach`).
    whatsapp_to: String,
    /// The contact's id is such a number, not yet one Meta named.
    unconfirmed: bool,
    /// An automatic reply to fill in again once the customer's profile is
    /// looked up ([`named_late`]).
    late: bool,
}

async fn load(state: &AppState, job: &Job) -> AppResult<Option<Context>> {
    let keys = state.keys.clone();
    let (message_id, conversation_id) = (job.message_id, job.conversation_id);
    state
        .db
        .tenant(TenantScope::system(job.tenant), move |tc| {
            let found: Option<(MessageRow, bool)> = match message_id {
                Some(id) => m::table
                    .find(id)
                    .select((MessageRow::as_select(), m::unrendered.is_not_null()))
                    .first(tc.pg())
                    .optional()?,
                None => None,
            };
            let late = found.as_ref().is_some_and(|(_, late)| *late);
            let message = found.map(|(message, _)| message);
            let conv_id = message.as_ref().map(|m| m.conversation_id).or(conversation_id);
            let Some(conv_id) = conv_id else { return Ok(None) };
            let conversation: Option<ConversationRow> =
                cv::table.find(conv_id).select(ConversationRow::as_select()).first(tc.pg()).optional()?;
            let Some(conversation) = conversation else { return Ok(None) };
            let (contact, typed): (ContactRow, Option<String>) = ct::table
                .find(conversation.contact_id)
                .select((ContactRow::as_select(), ct::whatsapp_input))
                .first(tc.pg())?;
            let unconfirmed = typed.as_deref() == Some(contact.external_id.as_str());
            let whatsapp_to =
                if unconfirmed { format!("+{}", contact.external_id) } else { contact.external_id.clone() };
            let channel = crate::channels::find(tc, ChannelId(conversation.channel_id))?;
            let token = channel.token(&keys)?;
            let file = message.as_ref().and_then(|m| super::uploads::Sendable::of(&m.attachments));
            Ok::<_, AppError>(Some(Context {
                message,
                conversation,
                contact,
                channel,
                token,
                file,
                whatsapp_to,
                unconfirmed,
                late,
            }))
        })
        .await
}

/// Per-channel pacing of this instance's sends.
///
/// A send the channel's rate holds back is handed back to the queue with
/// a place in the channel's line, in the order sends first asked, and told
/// when its turn comes: a gap after each still coming ahead of it. So the
/// sends held back come back one at a time, each about once, not all at
/// the channel's next free moment and again at every turn another took
/// first (each hand-back is a claim, a read of its context and a write);
/// and one asking later is told a later turn, so a broadcast's wave queued
/// after a reply is told turns after it. Whoever is there when the channel
/// is free goes, so the channel does not idle while a send waits (waiting
/// for the send whose turn it was, when the queue hands it out late, cost
/// a fifth of `bench sends`' rate-bound throughput): one that comes back
/// late goes at the next free moment, ahead of the line, not at its end.
#[derive(Default)]
pub struct Pacer {
    /// Each (tenant, channel)'s lane. Only read and changed under the
    /// lock, never held across a wait.
    lanes: std::sync::Mutex<HashMap<(i64, i64), Lane>>,
    /// How many instances send ([`roster`](super::roster)): each keeps to
    /// its share of a channel's rate (0 is taken as 1).
    sharing: std::sync::atomic::AtomicU32,
}

#[derive(Default)]
struct Lane {
    /// When the channel may send next: one gap after the last send.
    free_at: Option<Instant>,
    /// The sends handed back, in the order they first asked, each with
    /// when it was told to come back.
    line: std::collections::VecDeque<(i64, Instant)>,
}

/// How late a send handed back may be and still count as coming, when the
/// turns of those behind it are told: the queue hands a due job out
/// within a pass, unless a hold or another instance took it meanwhile.
const STILL_COMING: Duration = Duration::from_millis(250);

/// How long a send that does not come back keeps its place: only to bound
/// the memory (no turn is told after it past [`STILL_COMING`]).
const PLACE_KEPT: Duration = Duration::from_secs(60);

/// Files sent at once by one instance, each apart from the other sends: an
/// upload of 25 MB may take a minute, which text replies must not wait for.
pub const FILES_AT_ONCE: usize = 4;

/// How long a file's send job is held by the instance uploading it: past
/// every attempt of its upload ([`GraphClient::send_file`](crate::meta::GraphClient::send_file)),
/// so that no other pass takes it up meanwhile.
const FILE_LEASE_SECONDS: i64 = 15 * 60;

impl Pacer {
    /// How long send `job` waits before the channel may send it; `None`:
    /// it may go now (and its send is counted).
    fn wait(&self, key: (i64, i64), job: i64, per_second: u32) -> Option<Duration> {
        self.wait_at(key, job, per_second, Instant::now())
    }

    /// Keeps to a share of each channel's rate: one of `senders`
    /// instances' ([`roster`](super::roster)).
    pub fn share(&self, senders: u32) {
        self.sharing.store(senders, std::sync::atomic::Ordering::Relaxed);
    }

    fn wait_at(&self, key: (i64, i64), job: i64, per_second: u32, now: Instant) -> Option<Duration> {
        let channel_gap = Duration::from_secs(1) / per_second.max(1);
        // This instance's own sends keep to its share of the rate.
        let gap = channel_gap * self.sharing.load(std::sync::atomic::Ordering::Relaxed).max(1);
        // A poisoned lock holds a whole lane: each is changed in one step.
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let lane = lanes.entry(key).or_default();
        lane.line.retain(|(_, back)| *back + PLACE_KEPT > now);
        let place = lane.line.iter().position(|(j, _)| *j == job);
        let free_at = lane.free_at.map_or(now, |at| at.max(now));
        // Within a gap of its time a send may go: a burst of two at most.
        if free_at <= now + gap {
            if let Some(place) = place {
                lane.line.remove(place);
            }
            lane.free_at = Some(free_at + gap);
            return None;
        }
        let ahead = lane.line.iter().take(place.unwrap_or(lane.line.len()));
        let ahead = ahead.filter(|(_, back)| *back + STILL_COMING > now).count() as u32;
        // Those in the line go at the channel's rate, whichever instance
        // takes them up at their turns: told this one's share, a backlog
        // it claimed would be sent at that share alone, the others
        // following its turns (two instances sent 15 a second, not 20).
        let back = free_at + channel_gap * ahead;
        match place {
            Some(place) => lane.line[place].1 = back,
            None => lane.line.push_back((job, back)),
        }
        Some(back - now)
    }

    /// The first turn told that is still to come: the worker looks for due
    /// sends again then ([`run`]), not a [`HELD_RETRY`] later, which is
    /// longer than a gap at 5 a second and made each send held back late.
    fn next_turn(&self, now: Instant) -> Option<Instant> {
        let lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        lanes.values().flat_map(|lane| lane.line.iter().map(|(_, back)| *back)).filter(|back| *back > now).min()
    }
}

/// Messages a second a channel sends at most (`SWITCHBOARD_SEND_RATE`, 20).
pub(super) fn send_rate() -> u32 {
    std::env::var("SWITCHBOARD_SEND_RATE").ok().and_then(|v| v.parse().ok()).filter(|n| *n > 0).unwrap_or(20)
}

async fn handle(state: &actix_web::web::Data<AppState>, pacer: &Pacer, job: &Job) -> AppResult<Left> {
    let stepped = match (job.kind.as_str(), job.broadcast_id, job.scheduled_message_id) {
        (BROADCAST, Some(broadcast), _) => Some(super::broadcasts::run_job(state, job.tenant, broadcast, job.id).await),
        (super::scheduled::JOB_KIND, _, Some(scheduled)) => {
            Some(super::scheduled::run_job(state, job.tenant, scheduled, job.id).await)
        }
        _ => None,
    };
    if let Some(stepped) = stepped {
        let end = match stepped {
            Ok(Next::Done) => JobEnd::Done,
            Ok(Next::Wait(after, why)) => JobEnd::Retry { after, error: why.into(), counts: false },
            Err(e) if e.code == "tenant_suspended" || e.code == "tenant_not_ready" => {
                JobEnd::Retry { after: Duration::from_secs(60), error: e.message, counts: false }
            }
            Err(e) => return Err(e),
        };
        return finish(state, job, end).await;
    }
    let ctx = match load(state, job).await {
        Ok(Some(c)) => c,
        Ok(None) => return finish(state, job, JobEnd::Done).await,
        Err(e) if e.code == "tenant_suspended" || e.code == "tenant_not_ready" => {
            return finish(
                state,
                job,
                JobEnd::Retry { after: Duration::from_secs(60), error: e.message, counts: false },
            )
            .await;
        }
        Err(e) => return Err(e),
    };
    // Nothing reaches a blocked contact (`contacts`): a reply fails as
    // `contact_blocked` (`deliver`); a "seen" or a reaction is dropped.
    if ctx.contact.blocked_at.is_some() && job.kind != SendKind::Message.as_str() {
        return finish(state, job, JobEnd::Done).await;
    }
    // Meta rate-limits the channel (`channels::send_hold`): what would be
    // sent waits for the hold's end; a "seen" by then is news of nothing.
    if let Some(hold) = SendHold::of(&ctx.channel, Utc::now()) {
        if job.kind == SendKind::MarkSeen.as_str() {
            return finish(state, job, JobEnd::Done).await;
        }
        let after = until(hold.until);
        let error = format!("held: Meta's rate limit (code {})", hold.code);
        return finish(state, job, JobEnd::Retry { after, error, counts: false }).await;
    }
    if job.kind == SendKind::MarkSeen.as_str() {
        if let (Some(token), "connected") = (&ctx.token, ctx.channel.status.as_str()) {
            let r = match ctx.channel.platform() {
                Platform::Whatsapp => match &ctx.conversation.last_inbound_external_id {
                    Some(wamid) => state.graph.whatsapp_mark_read(&ctx.channel.external_id, token, wamid).await,
                    None => Ok(()),
                },
                _ => {
                    state
                        .graph
                        .sender_action(&ctx.channel.external_id, token, &ctx.contact.external_id, "mark_seen")
                        .await
                }
            };
            match r {
                Ok(()) => lift_hold(state, job.tenant, &ctx.channel).await,
                Err(e) => {
                    if let Err(err) = hold_sends(state, job.tenant, &ctx.channel, &e).await {
                        tracing::warn!(error = %err.message, "the channel's sends could not be held");
                    }
                    note_graph_error(state, job.tenant, ChannelId(ctx.channel.id), e).await;
                }
            }
        }
        return finish(state, job, JobEnd::Done).await;
    }
    if job.kind == SendKind::Reaction.as_str() {
        if let Some(after) = send_reaction(state, job, &ctx).await {
            let error = "held: Meta's rate limit".to_string();
            return finish(state, job, JobEnd::Retry { after, error, counts: false }).await;
        }
        return finish(state, job, JobEnd::Done).await;
    }
    let Some(message) = ctx.message.clone() else { return finish(state, job, JobEnd::Done).await };
    if message.status != "pending" {
        return finish(state, job, JobEnd::Done).await;
    }
    let conversation = (job.tenant.0, ctx.conversation.id);
    let (behind_a_file, uploads) = state.sends.uploads_beside(conversation);
    if behind_a_file || (ctx.file.is_some() && uploads >= FILES_AT_ONCE) {
        let error = "waits for a file being sent".to_string();
        return finish(state, job, JobEnd::Retry { after: Duration::from_secs(1), error, counts: false }).await;
    }
    if let Some(wait) = pacer.wait((job.tenant.0, ctx.channel.id), job.id, send_rate()) {
        crate::metrics::inc(&crate::metrics::SENDS_PACED, 1);
        return finish(state, job, JobEnd::Retry { after: wait, error: "paced".into(), counts: false }).await;
    }
    let message = match ctx.late {
        true => match named_late(state, job, &ctx, message.id).await? {
            Some(message) => message,
            None => return finish(state, job, JobEnd::Done).await,
        },
        false => message,
    };
    if ctx.file.is_none() {
        return deliver(state, job, ctx, message).await;
    }
    // A file goes apart, its job held meanwhile (`FILE_LEASE_SECONDS`).
    let Some(under_way) = state.sends.upload(job.id, conversation) else {
        let error = "waits for a file being sent".to_string();
        return finish(state, job, JobEnd::Retry { after: Duration::from_secs(1), error, counts: false }).await;
    };
    let id = job.id;
    let held = state
        .db
        .public(move |conn| {
            diesel::update(sq::table.find(id))
                .set(sq::next_attempt_at.eq(Utc::now() + ChronoDuration::seconds(FILE_LEASE_SECONDS)))
                .execute(conn)?;
            Ok::<_, AppError>(())
        })
        .await;
    // Its place is given back with `under_way` (here if holding failed).
    held?;
    let (state, job) = (state.clone(), job.clone());
    actix_web::rt::spawn(async move {
        match crate::app::contained(deliver(&state, &job, ctx, message)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(job = job.id, error = ?e, "file send failed; will retry");
                let retry = JobEnd::Retry { after: Duration::from_secs(5), error: e.message.clone(), counts: true };
                let _ = finish(&state, &job, retry).await;
            }
            Err(panic) => {
                let why = format!("sending it failed: {panic}");
                tracing::error!(job = job.id, error = %why, "file send panicked");
                after_panic(&state, &job, why).await;
            }
        }
        // Its place given back before the conversation's next send is woken.
        drop(under_way);
        state.wake_sender.notify_one();
    });
    // Held by its upload's lease meanwhile.
    Ok(Left::Queued)
}

/// An automatic reply that names a customer Meta has not named yet
/// (`inbox::variables`): their profile is looked up first (once; a
/// failed lookup leaves the fallbacks), then the text is filled in again.
async fn named_late(state: &AppState, job: &Job, ctx: &Context, message: i64) -> AppResult<Option<MessageRow>> {
    let unnamed = ctx.contact.name.as_deref().is_none_or(|n| n.trim().is_empty());
    if unnamed && contacts::profile_due(ctx.contact.profile_checked_at, Utc::now()) {
        let lookup = contacts::ProfileLookup::new(job.tenant, &ctx.contact, &ctx.channel);
        if let Err(e) = lookup_profile(state, lookup).await {
            tracing::debug!(error = ?e, "profile lookup before an automatic reply failed");
        }
    }
    state
        .tenant_with_events(TenantScope::system(job.tenant), move |tc, log| {
            super::variables::fill_in_late(tc, log, message)
        })
        .await
}

/// Sends the business's reaction to a customer's message as it is now (so
/// that of several quick changes the last is what the customer sees). A
/// failure is noted on the channel, not retried: the reaction stays shown
/// here, as the agent set it. Meta's rate limit holds the channel's sends,
/// this one's too: returns how long until it is tried again.
async fn send_reaction(state: &AppState, job: &Job, ctx: &Context) -> Option<Duration> {
    let (Some(message), Some(token), "connected") = (&ctx.message, &ctx.token, ctx.channel.status.as_str()) else {
        return None;
    };
    let external = message.external_id.as_deref()?;
    let emoji = message.reactions.get(&ctx.channel.external_id).and_then(serde_json::Value::as_str);
    let (account, to) = (&ctx.channel.external_id, &ctx.contact.external_id);
    let r = match ctx.channel.platform() {
        Platform::Whatsapp => state.graph.whatsapp_reaction(account, token, to, external, emoji).await,
        _ => state.graph.react(account, token, to, external, emoji).await,
    };
    match r {
        Ok(()) => lift_hold(state, job.tenant, &ctx.channel).await,
        Err(e) => match hold_sends(state, job.tenant, &ctx.channel, &e).await {
            Ok(Some(after)) => return Some(after),
            Ok(None) => {
                note_graph_error(state, job.tenant, ChannelId(ctx.channel.id), e).await;
            }
            Err(err) => tracing::warn!(error = %err.message, "the channel's sends could not be held"),
        },
    }
    None
}

/// After Meta's rate limit `e` on a call of `channel`'s: holds what the
/// limit's scope names (`channels::send_hold`) and returns how long until
/// the channel may send; `None` for any other error, and for a limit that
/// holds only its own send (its retries back off as a transient error's).
async fn hold_sends(
    state: &AppState,
    tenant: TenantId,
    channel: &ChannelRow,
    e: &GraphError,
) -> AppResult<Option<Duration>> {
    let GraphError::RateLimited { code, regain_in, .. } = e else { return Ok(None) };
    let (code, said) = (*code, *regain_in);
    if send_hold::scope(code) == send_hold::Scope::Send {
        return Ok(None);
    }
    let channel = channel.clone();
    let end = state
        .db
        .tenant(TenantScope::system(tenant), move |tc| send_hold::hold(tc, &channel, code, said, Utc::now()))
        .await?;
    crate::metrics::inc(&crate::metrics::SENDS_HELD, 1);
    tracing::warn!(tenant = tenant.0, code, until = %end, "Meta rate-limits the channel: its sends are held");
    Ok(Some(until(end)))
}

/// A call of the channel's went through: its hold, if one is kept, is lifted.
async fn lift_hold(state: &AppState, tenant: TenantId, channel: &ChannelRow) {
    if channel.send_hold.is_none() {
        return;
    }
    let id = channel.id;
    let r = state.db.tenant(TenantScope::system(tenant), move |tc| send_hold::lift(tc, id)).await;
    if let Err(e) = r {
        tracing::warn!(error = %e.message, "the channel's hold could not be lifted");
    }
}

/// How long from now until `end` (a second at least: a retry is not a spin).
pub(super) fn until(end: chrono::DateTime<Utc>) -> Duration {
    (end - Utc::now()).to_std().unwrap_or_default().max(Duration::from_secs(1))
}

/// How a send went: what Meta answered (`Sent`), or why it failed.
type Outcome = Result<Sent, (&'static str, String)>;

/// A send Meta took: the message's id there and, on WhatsApp, the
/// customer's id as Meta names it and whether Meta holds the message
/// (`WhatsappSent`).
struct Sent {
    external_id: String,
    wa_id: Option<String>,
    held: Option<String>,
}

/// An Instagram reply an earlier try of which went out and got no answer
/// ([`JobEnd::Unanswered`]): if Meta sent it, its echo, which names
/// nothing of ours (no `metadata` on Instagram), was stored as the page's
/// own message. Such a message with the reply's text, stored since the
/// reply was: its Meta id, for the reply to take over (`mark_sent` merges
/// the two) rather than the customer getting a second copy. Were it the
/// page's own from elsewhere, word for word in those seconds, the customer
/// has the text once either way.
async fn echo_of_the_unanswered(
    state: &AppState,
    job: &Job,
    ctx: &Context,
    message: &MessageRow,
) -> AppResult<Option<String>> {
    let text = match (&message.text, ctx.file.is_none() && ctx.channel.platform() == Platform::Instagram) {
        (Some(text), true) if job.may_have_gone => text.clone(),
        _ => return Ok(None),
    };
    let (conversation, after) = (message.conversation_id, message.id);
    state
        .db
        .tenant(TenantScope::system(job.tenant), move |tc| {
            Ok::<_, AppError>(
                m::table
                    .filter(m::conversation_id.eq(conversation))
                    .filter(m::id.gt(after))
                    .filter(m::sender_kind.eq("page"))
                    .filter(m::client_id.is_null())
                    .filter(m::text.eq(text))
                    .order(m::id)
                    .select(m::external_id)
                    .first::<Option<String>>(tc.pg())
                    .optional()?
                    .flatten(),
            )
        })
        .await
}

/// Sends a reply and records how it went.
async fn deliver(state: &AppState, job: &Job, ctx: Context, message: MessageRow) -> AppResult<Left> {
    if let Some(echoed) = echo_of_the_unanswered(state, job, &ctx, &message).await? {
        record_sent(state, job.tenant, message.id, echoed, None).await?;
        return finish(state, job, JobEnd::Done).await;
    }
    // A file's bytes (up to 25 MB) are read only now, not at each pass it waits.
    let bytes = match &ctx.file {
        Some(_) => {
            let id = message.id;
            state
                .db
                .tenant(TenantScope::system(job.tenant), move |tc| {
                    Ok::<_, AppError>(super::media_copies::find(tc, id, 0, None)?.map(|c| bytes::Bytes::from(c.bytes)))
                })
                .await?
        }
        None => None,
    };
    let file = ctx.file.as_ref().zip(bytes);
    let fail = |code: &'static str, message: String| (code, message);
    let outcome: Outcome = match (&ctx.token, ctx.channel.status.as_str()) {
        // Queued before the team blocked the contact.
        _ if ctx.contact.blocked_at.is_some() => {
            Err(fail("contact_blocked", "the contact was blocked before the message could be sent".into()))
        }
        // An automatic message (greeting, away reply, survey) never takes a
        // thread from the app answering the customer; an agent's reply does.
        _ if message.sender_kind != "agent" && super::handover::ThreadControl::held_elsewhere(&ctx.conversation) => {
            Err(fail(
                "thread_held_elsewhere",
                "another app answers this customer now; an automatic message does not take the thread from it".into(),
            ))
        }
        (Some(token), "connected") => {
            let window = ReplyWindow::of(&ctx.channel, ctx.conversation.last_inbound_at, Utc::now());
            let text = message.text.clone().unwrap_or_default();
            // A template may go out whether the window is open or not.
            let template = super::templates::stored(&message.attachments);
            let choices = super::choices::stored(&message.attachments);
            if !window.can_reply && template.is_none() {
                Err(fail("outside_window", "the reply window closed before the message could be sent".into()))
            } else if let Some(r) = crate::channels::whatsapp_number::restricting(&ctx.channel, window.can_reply) {
                // Meta restricted the account after the message was queued.
                Err(fail("messaging_restricted", crate::channels::whatsapp_number::restricted_message(&r)))
            } else if ctx.file.is_some() && file.is_none() {
                // Stored with the message; gone only if the message went meanwhile.
                Err(fail("file_missing", "the file to send is no longer kept".into()))
            } else {
                // WhatsApp: the customer's message the reply quotes, and
                // ours, which the statuses name back (`ingest`): a send whose
                // answer was lost is known sent by its first status.
                let ours = format!("sb:{}", message.id);
                let marks =
                    crate::meta::WhatsappMarks { quoting: message.reply_to_external_id.as_deref(), ours: Some(&ours) };
                // Another app holds the thread (`handover`): take it back first.
                let take = super::handover::ThreadControl::held_elsewhere(&ctx.conversation);
                let taken = match take {
                    true => {
                        let metadata = format!("sb:{}", message.id);
                        let r = state
                            .graph
                            .take_thread_control(&ctx.channel.external_id, token, &ctx.contact.external_id, &metadata)
                            .await;
                        if r.is_ok() {
                            took_thread(state, job.tenant, ctx.conversation.id).await?;
                        }
                        r
                    }
                    false => Ok(()),
                };
                let r = match taken {
                    Err(e) => Err(e),
                    Ok(()) => match (ctx.channel.platform(), template, &file) {
                        (Platform::Whatsapp, Some((name, language, header, body)), header_media) => state
                            .graph
                            .whatsapp_template(
                                &ctx.channel.external_id,
                                token,
                                &ctx.whatsapp_to,
                                &name,
                                &language,
                                &header,
                                &body,
                                header_media.as_ref().map(|(f, b)| (*f, b.clone())),
                                marks,
                            )
                            .await
                            .map(sent),
                        (Platform::Whatsapp, _, Some((file, bytes))) => {
                            let caption = message.text.as_deref();
                            state
                                .graph
                                .whatsapp_file(
                                    &ctx.channel.external_id,
                                    token,
                                    &ctx.whatsapp_to,
                                    file,
                                    bytes.clone(),
                                    caption,
                                    marks,
                                )
                                .await
                                .map(sent)
                        }
                        (_, _, Some((file, bytes))) => {
                            let metadata = format!("sb:{}", message.id);
                            state
                                .graph
                                .send_file(
                                    &ctx.channel.external_id,
                                    token,
                                    &ctx.contact.external_id,
                                    file,
                                    bytes.clone(),
                                    window.tag,
                                    &metadata,
                                )
                                .await
                                .map(|external_id| Sent { external_id, wa_id: None, held: None })
                        }
                        (platform, None, None) if choices.is_some() => {
                            let (options, button) = choices.unwrap_or_default();
                            if platform == Platform::Whatsapp {
                                let interactive =
                                    super::choices::whatsapp_interactive(&text, &options, button.as_deref());
                                state
                                    .graph
                                    .whatsapp_interactive(
                                        &ctx.channel.external_id,
                                        token,
                                        &ctx.whatsapp_to,
                                        interactive,
                                        marks,
                                    )
                                    .await
                                    .map(sent)
                            } else {
                                let metadata = format!("sb:{}", message.id);
                                state
                                    .graph
                                    .send_choices(
                                        &ctx.channel.external_id,
                                        token,
                                        &ctx.contact.external_id,
                                        &text,
                                        super::choices::quick_replies(&options),
                                        window.tag,
                                        &metadata,
                                    )
                                    .await
                                    .map(|external_id| Sent { external_id, wa_id: None, held: None })
                            }
                        }
                        (Platform::Whatsapp, None, None) => state
                            .graph
                            .whatsapp_text(&ctx.channel.external_id, token, &ctx.whatsapp_to, &text, marks)
                            .await
                            .map(sent),
                        _ => {
                            let metadata = format!("sb:{}", message.id);
                            state
                                .graph
                                .send_text(
                                    &ctx.channel.external_id,
                                    token,
                                    &ctx.contact.external_id,
                                    &text,
                                    window.tag,
                                    &metadata,
                                )
                                .await
                                .map(|external_id| Sent { external_id, wa_id: None, held: None })
                        }
                    },
                };
                match r {
                    Ok(id) => Ok(id),
                    // The channel's sends wait for Meta's limit to pass, this one's too.
                    Err(e @ GraphError::RateLimited { code, .. })
                        if send_hold::scope(code) != send_hold::Scope::Send =>
                    {
                        let after =
                            hold_sends(state, job.tenant, &ctx.channel, &e).await?.unwrap_or(Duration::from_secs(1));
                        return finish(state, job, JobEnd::Retry { after, error: e.to_string(), counts: false }).await;
                    }
                    Err(e @ GraphError::NoAnswer(_)) if job.attempts < MAX_SEND_ATTEMPTS => {
                        return finish(state, job, JobEnd::Unanswered { error: e.to_string() }).await;
                    }
                    Err(e)
                        if (e.is_transient() || matches!(e, GraphError::RateLimited { .. }))
                            && job.attempts < MAX_SEND_ATTEMPTS =>
                    {
                        let after = backoff(job.attempts);
                        return finish(state, job, JobEnd::Retry { after, error: e.to_string(), counts: true }).await;
                    }
                    Err(e) => {
                        // The template is gone, paused, disabled or changed: the kept list is stale.
                        if matches!(e.code(), Some((132000 | 132001 | 132012 | 132015 | 132016, _))) {
                            if let Some(waba) = ctx.channel.parent_external_id.as_deref() {
                                state.templates.forget(waba);
                            }
                        }
                        let e = note_graph_error(state, job.tenant, ChannelId(ctx.channel.id), e).await;
                        Err(fail(e.reason(), e.explanation()))
                    }
                }
            }
        }
        _ => Err(fail("channel_not_connected", format!("the channel is {}", ctx.channel.status))),
    };
    let id = message.id;
    match outcome {
        Ok(Sent { external_id, wa_id, held }) => {
            lift_hold(state, job.tenant, &ctx.channel).await;
            let (contact, known_as, unconfirmed) = (ctx.contact.id, ctx.contact.external_id.clone(), ctx.unconfirmed);
            record_sent(state, job.tenant, id, external_id, held).await?;
            // Meta said who the customer is: news only for a number an
            // agent wrote first to. Apart from the send's record, which a
            // failure here (a lock another transaction holds) must not undo.
            if let Some(w) = wa_id.filter(|w| unconfirmed || *w != known_as) {
                let named = state
                    .tenant_with_events(TenantScope::system(job.tenant), move |tc, log| {
                        super::contacts::known_to_whatsapp_as(tc, log, contact, &w)
                    })
                    .await;
                if let Err(e) = named {
                    tracing::warn!(contact, error = %e.message, "the customer's WhatsApp id was not recorded");
                }
            }
            crate::metrics::inc(&crate::metrics::MESSAGES_SENT, 1);
        }
        Err((code, why)) => {
            state
                .tenant_with_events(TenantScope::system(job.tenant), move |tc, log| {
                    messages::mark_failed(tc, log, id, code, &why)
                })
                .await?;
            crate::metrics::inc(&crate::metrics::MESSAGES_FAILED, 1);
        }
    }
    finish(state, job, JobEnd::Done).await
}

/// How long a send Meta took is tried to be recorded (`record_sent`):
/// under the claim's lease ([`CLAIM_LEASE`]), after which another pass
/// could take the job up again.
const RECORD_FOR: Duration = Duration::from_secs(45);

/// Records a send Meta took. A job whose record failed would be tried
/// again, and the customer get the message twice; so a failure the
/// database says is passing (a lost connection, a full pool, a deadlock or
/// serialization failure: 503) is tried again here, the send not, for up
/// to [`RECORD_FOR`]. Anything else, or longer, ends the job's attempt as
/// before.
async fn record_sent(
    state: &AppState,
    tenant: TenantId,
    id: i64,
    external_id: String,
    held: Option<String>,
) -> AppResult<()> {
    let until = std::time::Instant::now() + RECORD_FOR;
    let mut wait = Duration::from_millis(100);
    loop {
        let (external, held_now) = (external_id.clone(), held.clone());
        let recorded = state
            .tenant_with_events(TenantScope::system(tenant), move |tc, log| {
                messages::mark_sent(tc, log, id, &external, held_now.as_deref())
            })
            .await;
        match recorded {
            Err(e)
                if e.status() == actix_web::http::StatusCode::SERVICE_UNAVAILABLE
                    && std::time::Instant::now() + wait < until =>
            {
                tracing::warn!(message = id, error = %e.message, "a send Meta took is not recorded yet; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// What a WhatsApp send's answer tells.
fn sent(s: crate::meta::graph::WhatsappSent) -> Sent {
    Sent { external_id: s.wamid, wa_id: s.wa_id, held: s.held }
}

/// The thread is ours from a take that Meta accepted (a later event of
/// Meta's still wins: `handover`).
async fn took_thread(state: &AppState, tenant: TenantId, conversation: i64) -> AppResult<()> {
    let ours = state.graph.app_id().to_string();
    let change = crate::meta::webhook::ThreadChange::Passed { to: Some(ours.clone()) };
    state
        .tenant_with_events(TenantScope::system(tenant), move |tc, log| {
            super::handover::apply_to(tc, log, conversation, &change, Utc::now(), &ours).map(|_| ())
        })
        .await
}

/// Sends one instance makes at once: a conversation's jobs go in turn, in
/// the order they were queued, and the conversations side by side, so
/// that a send waiting on Meta (up to its 10 s for an answer) holds up
/// only its own conversation, not every tenant's replies. A turn that
/// ends makes room for the next claim at once ([`run`]).
/// `SWITCHBOARD_SENDS_AT_ONCE` sets it ([`sends_at_once`]).
pub const SENDS_AT_ONCE: usize = 8;

/// [`SENDS_AT_ONCE`], or `SWITCHBOARD_SENDS_AT_ONCE` (1 to 64): more for
/// an instance whose sends wait long on Meta (a send holds a connection
/// only for its records, not while it waits), at the cost of more of the
/// pool taken when Meta answers at once.
pub fn sends_at_once() -> usize {
    sends_at_once_from(std::env::var("SWITCHBOARD_SENDS_AT_ONCE").ok().as_deref())
}

/// The setting's value: the default for none, or one out of range.
fn sends_at_once_from(setting: Option<&str>) -> usize {
    setting.and_then(|v| v.trim().parse::<usize>().ok()).filter(|n| (1..=64).contains(n)).unwrap_or(SENDS_AT_ONCE)
}

/// A claimed job not started this long after its claim (the sends before
/// it in its conversation waited on Meta) is handed back to a later claim,
/// so that what it does, a send waiting for Meta's answer and its record
/// ([`RECORD_FOR`]), fits in the claim's lease ([`CLAIM_LEASE`]), after
/// which another instance could take it up.
const START_WITHIN: Duration = Duration::from_secs(5);

/// The conversations' turns under way in this instance's sender, the files
/// it is uploading, and whether the server is stopping: a stopping server
/// lets them end ([`UnderWay::stop`]) rather than cut a send Meta may have
/// taken before its record, and the sender claims no more.
#[derive(Default)]
pub struct UnderWay {
    stopping: std::sync::atomic::AtomicBool,
    turns: std::sync::atomic::AtomicUsize,
    /// The files being uploaded, each apart under its lease
    /// ([`FILE_LEASE_SECONDS`]), [`FILES_AT_ONCE`] at most: send job →
    /// (tenant, conversation). What follows one in its conversation waits
    /// for it, so the customer gets them in the order the agent sent them.
    uploads: std::sync::Mutex<HashMap<i64, (i64, i64)>>,
    /// This instance's sender in the count of senders (`inbox::roster`).
    enlisted: std::sync::Mutex<Option<uuid::Uuid>>,
}

/// How long a stopping server waits for the sends under way, by default:
/// past one send's wait for Meta's answer (10 s) and a record the database
/// takes as usual. A record it holds back longer (up to [`RECORD_FOR`]) is
/// cut; the job is taken up again once its lease lapses, by when the
/// send's status or echo has mostly marked it sent. An upload still going
/// is cut and its job handed back ([`hand_back_cut_uploads`]).
/// `SWITCHBOARD_STOP_WAIT_SECS` sets it (below the orchestrator's grace
/// before it kills the process: Kubernetes gives 30 s).
pub const STOP_WITHIN: Duration = Duration::from_secs(20);

/// [`STOP_WITHIN`], or `SWITCHBOARD_STOP_WAIT_SECS`.
pub fn stop_within() -> Duration {
    std::env::var("SWITCHBOARD_STOP_WAIT_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(STOP_WITHIN)
}

/// What a stop's wait left under way ([`UnderWay::stop`]).
#[derive(Debug, Default)]
pub struct StillUnderWay {
    pub turns: usize,
    /// The send jobs of the files still being uploaded.
    pub uploads: Vec<i64>,
}

/// A file's upload under way, counted in [`UnderWay`] until dropped.
struct Uploading {
    under_way: std::sync::Arc<UnderWay>,
    job: i64,
}

impl Drop for Uploading {
    fn drop(&mut self) {
        self.under_way.uploading().remove(&self.job);
    }
}

impl UnderWay {
    pub(super) fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(super) fn enlist(&self, me: uuid::Uuid) {
        *self.enlisted.lock().unwrap_or_else(|p| p.into_inner()) = Some(me);
    }

    pub(super) fn enlisted(&self) -> Option<uuid::Uuid> {
        *self.enlisted.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, turns: usize) {
        self.turns.store(turns, std::sync::atomic::Ordering::SeqCst);
    }

    fn uploading(&self) -> std::sync::MutexGuard<'_, HashMap<i64, (i64, i64)>> {
        // Only inserts and removes happen under the lock: a poisoned one holds a good map.
        self.uploads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a file of `conversation` is being uploaded, and how many are.
    fn uploads_beside(&self, conversation: (i64, i64)) -> (bool, usize) {
        let uploading = self.uploading();
        (uploading.values().any(|c| *c == conversation), uploading.len())
    }

    /// Takes a place for `job`'s upload, held until the guard is dropped;
    /// none while [`FILES_AT_ONCE`] are under way or its conversation has
    /// one. Taken under the lock at once: other conversations' files are
    /// looked at side by side ([`SENDS_AT_ONCE`]).
    fn upload(self: &std::sync::Arc<Self>, job: i64, conversation: (i64, i64)) -> Option<Uploading> {
        let mut uploading = self.uploading();
        if uploading.len() >= FILES_AT_ONCE || uploading.values().any(|c| *c == conversation) {
            return None;
        }
        uploading.insert(job, conversation);
        Some(Uploading { under_way: self.clone(), job })
    }

    /// No more claims; waits up to `within` for the turns and the uploads
    /// under way to end. What was left.
    pub async fn stop(&self, wake: &tokio::sync::Notify, within: Duration) -> StillUnderWay {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        wake.notify_one();
        let until = Instant::now() + within;
        loop {
            let left = StillUnderWay {
                turns: self.turns.load(std::sync::atomic::Ordering::SeqCst),
                uploads: self.uploading().keys().copied().collect(),
            };
            if (left.turns == 0 && left.uploads.is_empty()) || Instant::now() >= until {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Hands back the send jobs of uploads a stop cut: each is tried again
/// [`AFTER_NO_ANSWER`] later, by another instance or this one restarted,
/// instead of when its 15-minute lease lapses, with the replies after it in
/// its conversation waiting for it meanwhile ([`replies_to_go`]). The
/// upload may have reached Meta and the message gone (its send was under
/// way): then its status (WhatsApp) or echo (Messenger) marks it sent
/// first, as after a send Meta did not answer, and the job keeps that it
/// may have gone.
pub async fn hand_back_cut_uploads(state: &AppState, jobs: Vec<i64>) -> AppResult<usize> {
    let at = Utc::now() + ChronoDuration::from_std(AFTER_NO_ANSWER).unwrap_or_else(|_| ChronoDuration::seconds(20));
    state
        .db
        .public(move |conn| {
            Ok::<_, AppError>(
                diesel::update(sq::table.filter(sq::id.eq_any(jobs)).filter(sq::status.eq("pending")))
                    .set((
                        sq::next_attempt_at.eq(at),
                        sq::may_have_gone.eq(true),
                        sq::last_error.eq("its upload was cut by a stopping server"),
                    ))
                    .execute(conn)?,
            )
        })
        .await
}

/// How long the worker waits, while it is not idle, before it claims
/// again: until the next send the channels' rate held back is due (its
/// row is due at the turn it was told, looked for [`TURN_MARGIN`] after,
/// as `db::queue::idle_wait` looks a little late), or [`HELD_RETRY`] at
/// most.
fn look_again(next_turn: Option<Instant>, now: Instant) -> Duration {
    let due = |turn: Instant| turn.saturating_duration_since(now) + TURN_MARGIN;
    next_turn.map_or(HELD_RETRY, |turn| due(turn).min(HELD_RETRY))
}

/// How much later than its turn a send held back is looked for: its row
/// is due at the turn ([`finish`]), by the clock of this host, which the
/// database's `now()` may trail or lead by a little.
const TURN_MARGIN: Duration = Duration::from_millis(10);

/// Claims up to `limit` due jobs but those of the `busy` conversations.
async fn claim_due(state: &AppState, limit: usize, busy: Vec<(i64, i64)>) -> AppResult<Vec<Job>> {
    let pool = state.db.pool().clone();
    actix_web::web::block(move || -> AppResult<Vec<Job>> {
        // On another connection if the first is one the server closed (as
        // the processor's claim).
        let mut jobs = Vec::new();
        crate::db::retry_lost(&pool, |conn| {
            jobs = claim(conn, limit as i64, &busy)?;
            Ok(())
        })?;
        Ok(jobs)
    })
    .await?
}

/// One pass: claims what is due and runs it to the end ([`SENDS_AT_ONCE`]
/// conversations at a time); how many jobs it claimed. The worker ([`run`])
/// claims again as each conversation's turn ends instead.
pub async fn run_once(state: &actix_web::web::Data<AppState>, pacer: &Pacer) -> AppResult<usize> {
    let jobs = claim_due(state, 50, Vec::new()).await?;
    let (claimed, claimed_at) = (jobs.len(), Instant::now());
    use futures_util::StreamExt;
    futures_util::stream::iter(in_turns(jobs))
        .for_each_concurrent(sends_at_once(), |turn| async move {
            run_turn(state, pacer, turn, claimed_at).await;
        })
        .await;
    Ok(claimed)
}

/// A conversation's claimed jobs, one after the other; its (tenant,
/// conversation) once they are done.
async fn run_turn(
    state: &actix_web::web::Data<AppState>,
    pacer: &Pacer,
    turn: Vec<Job>,
    claimed_at: Instant,
) -> Option<(i64, i64)> {
    // A reply left queued holds back the turn's later replies: handed
    // back, they wait for it in the queue ([`replies_to_go`]).
    let mut reply_queued = false;
    for job in &turn {
        let is_reply = job.kind == SendKind::Message.as_str();
        let why = match (claimed_at.elapsed() > START_WITHIN, reply_queued && is_reply) {
            (true, _) => Some("handed back: its turn came late"),
            (false, true) => Some("handed back: waits for a reply before it"),
            (false, false) => None,
        };
        if let Some(why) = why {
            let _ = finish(state, job, JobEnd::Retry { after: Duration::ZERO, error: why.into(), counts: false }).await;
            continue;
        }
        if run_job(state, pacer, job).await == Left::Queued && is_reply {
            reply_queued = true;
        }
    }
    conversation_of(&turn)
}

/// The (tenant, conversation) a turn's jobs belong to, if any.
fn conversation_of(turn: &[Job]) -> Option<(i64, i64)> {
    turn.first().and_then(|j| Some((j.tenant.0, j.conversation_id?)))
}

/// Claimed jobs by conversation (each conversation's in the order they
/// came), those of no conversation each on its own.
fn in_turns(jobs: Vec<Job>) -> Vec<Vec<Job>> {
    let mut turns: Vec<Vec<Job>> = Vec::new();
    let mut of_conversation: HashMap<(i64, i64), usize> = HashMap::new();
    for job in jobs {
        match job.conversation_id {
            Some(c) => {
                let turn = *of_conversation.entry((job.tenant.0, c)).or_insert_with(|| {
                    turns.push(Vec::new());
                    turns.len() - 1
                });
                turns[turn].push(job);
            }
            None => turns.push(vec![job]),
        }
    }
    turns
}

/// One job, whatever it meets: an error ends its try (tried again 5 s
/// later), a panic too ([`after_panic`]). Whether it is left queued (a
/// failure to record that counts as queued: its lease holds it).
async fn run_job(state: &actix_web::web::Data<AppState>, pacer: &Pacer, job: &Job) -> Left {
    match crate::app::contained(handle(state, pacer, job)).await {
        Ok(Ok(left)) => left,
        Ok(Err(e)) => {
            tracing::warn!(job = job.id, error = ?e, "send failed; will retry");
            let retry = JobEnd::Retry { after: Duration::from_secs(5), error: e.message.clone(), counts: true };
            let _ = finish(state, job, retry).await;
            Left::Queued
        }
        // A bug some job met: the jobs after it in this claim go on,
        // rather than wait with it for the worker to start again.
        Err(panic) => {
            let why = format!("sending it failed: {panic}");
            tracing::error!(job = job.id, kind = %job.kind, error = %why, "send panicked");
            after_panic(state, job, why).await
        }
    }
}

/// What becomes of a job whose handling panicked ([`after_panic_end`]).
async fn after_panic(state: &AppState, job: &Job, why: String) -> Left {
    let end = after_panic_end(&job.kind, job.attempts, why.clone());
    if matches!(end, JobEnd::Done) {
        if let (Some(id), true) = (job.message_id, job.kind == SendKind::Message.as_str()) {
            let failed = state
                .tenant_with_events(TenantScope::system(job.tenant), move |tc, log| {
                    messages::mark_failed(tc, log, id, "internal_error", &why)
                })
                .await;
            if let Err(e) = failed {
                tracing::warn!(job = job.id, error = %e.message, "the reply could not be marked failed");
            }
        }
    }
    finish(state, job, end).await.unwrap_or(Left::Queued)
}

/// A job that panicked is tried again later and later (as a failed send
/// to Meta is, up to 256 s apart); after [`MAX_SEND_ATTEMPTS`] it is given
/// up, a reply then marked `failed` (`internal_error`) so the agent sees
/// it did not go and may send it again, instead of it staying `pending`.
fn after_panic_end(kind: &str, attempts: i32, why: String) -> JobEnd {
    // Broadcast and scheduled jobs step through their own state; theirs
    // stays as the panic left it and is retried as long as any.
    let gives_up = [SendKind::Message, SendKind::MarkSeen, SendKind::Reaction].iter().any(|k| k.as_str() == kind);
    if gives_up && attempts >= MAX_SEND_ATTEMPTS {
        JobEnd::Done
    } else {
        JobEnd::Retry { after: backoff(attempts), error: why, counts: true }
    }
}

/// The conversations' turns under way in [`run`] ([`sends_at_once`] at
/// most), and which conversations those are: their later jobs wait for them.
struct Turns<F> {
    running: futures_util::stream::FuturesUnordered<F>,
    busy: std::collections::HashSet<(i64, i64)>,
}

impl<F: std::future::Future<Output = Option<(i64, i64)>>> Turns<F> {
    fn new() -> Self {
        Turns { running: futures_util::stream::FuturesUnordered::new(), busy: Default::default() }
    }

    fn len(&self) -> usize {
        self.running.len()
    }

    fn push(&mut self, conversation: Option<(i64, i64)>, turn: F) {
        self.busy.extend(conversation);
        self.running.push(turn);
    }

    /// The next turn to end, its conversation then free; pending while none runs.
    async fn next_end(&mut self) -> Option<(i64, i64)> {
        use futures_util::StreamExt;
        if self.running.is_empty() {
            return std::future::pending().await;
        }
        let done = self.running.next().await.flatten();
        if let Some(conversation) = done {
            self.busy.remove(&conversation);
        }
        done
    }

    /// Awaits `work` (a claim, a look at the queue) while the turns go on:
    /// a send whose answer came back is recorded meanwhile, rather than
    /// wait for a claim that waits on a pool busy with ingest. Calls
    /// `ended` with the turns left as each ends; how many ended.
    async fn meanwhile<T>(&mut self, work: impl std::future::Future<Output = T>, ended: impl Fn(usize)) -> (T, usize) {
        tokio::pin!(work);
        let mut count = 0;
        loop {
            tokio::select! {
                out = &mut work => return (out, count),
                _ = self.next_end() => {
                    count += 1;
                    ended(self.len());
                }
            }
        }
    }
}

pub async fn run(state: actix_web::web::Data<AppState>) {
    let pacer = Pacer::default();
    // The count of instances sending is kept beside the sends, and ends
    // with them (a restart after a panic checks in again, as the same).
    let me = super::roster::enlist(&state, &pacer).await;
    futures_util::future::join(super::roster::keep(&state, &pacer, me), send(&state, &pacer)).await;
}

/// The sender's loop ([`run`]).
async fn send(state: &actix_web::web::Data<AppState>, pacer: &Pacer) {
    let at_once = sends_at_once();
    let mut turns = Turns::new();
    let mut quiet = false;
    let mut failing = crate::telemetry::Repeats::default();
    loop {
        // Stopping: no more claims; the turns under way end. A claim counts
        // as a turn before stopping is looked at (both in one order), so a
        // stop either sees it and waits for what it claims, or prevents it.
        state.sends.set(turns.len() + 1);
        let room = match state.sends.stopping() {
            true => 0,
            false => at_once.saturating_sub(turns.len()),
        };
        let (pass, ended) = match room {
            0 => (Ok(0), 0),
            _ => {
                let claim = claim_due(state, room, turns.busy.iter().copied().collect());
                let (jobs, ended) = turns.meanwhile(claim, |left| state.sends.set(left + 1)).await;
                let claimed_at = Instant::now();
                let pass = jobs.map(|jobs| {
                    let claimed = jobs.len();
                    for turn in in_turns(jobs) {
                        turns.push(conversation_of(&turn), run_turn(state, pacer, turn, claimed_at));
                    }
                    claimed
                });
                (pass, ended)
            }
        };
        state.sends.set(turns.len());
        crate::telemetry::tell_repeats!(failing, "sender pass", &pass);
        // A turn that ended during the claim freed its conversation's next job.
        if ended > 0 {
            quiet = false;
        }
        let idle = match pass {
            Ok(n) if (n > 0 || ended > 0) && turns.len() < at_once => continue,
            // As the processor: the due time only once a wait passed unwoken.
            Ok(_) => quiet,
            Err(_) => false,
        };
        let wait = async {
            let wait = match (idle, pass.is_ok()) {
                (true, _) => super::idle_wait(state, Queue::Sends).await,
                (false, true) => {
                    let now = Instant::now();
                    look_again(pacer.next_turn(now), now)
                }
                // The claim failed (the database, say): not sooner at a turn.
                (false, false) => HELD_RETRY,
            };
            tokio::time::timeout(wait, state.wake_sender.notified()).await.is_err()
        };
        // A turn's end makes room (and frees its conversation's next job),
        // also while the look for the next due time is under way.
        tokio::select! {
            _ = turns.next_end() => {
                state.sends.set(turns.len());
                quiet = false;
            }
            unwoken = wait => quiet = unwoken,
        }
    }
}

/// Looks up contacts' profiles at Meta, [`PROFILE_LOOKUPS_AT_ONCE`] at a time.
pub async fn run_profiles(state: actix_web::web::Data<AppState>) {
    use futures_util::StreamExt;
    let rx = state.profile_queue().await;
    let lookups = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|l| (l, rx)) });
    lookups
        .for_each_concurrent(PROFILE_LOOKUPS_AT_ONCE, |lookup| {
            let state = state.clone();
            async move {
                if let Err(e) = lookup_profile(&state, lookup).await {
                    tracing::debug!(error = ?e, "profile lookup failed");
                }
            }
        })
        .await;
}

/// Queues the lookups of stale profiles an agent just looked at
/// ([`contacts::stale_profiles`]), each at most once in a while; a full
/// queue drops them (the next look queues them again).
pub fn refresh_stale_profiles(state: &AppState, lookups: Vec<contacts::ProfileLookup>) {
    let now = std::time::Instant::now();
    for lookup in lookups {
        if state.profile_refreshes.due((lookup.tenant.0, lookup.contact_id), now) {
            let _ = state.profile_lookups.try_send(lookup);
        }
    }
}

/// Profile lookups in flight at once: a burst of new customers (a campaign)
/// gets its names in seconds, not one Graph round trip after another.
const PROFILE_LOOKUPS_AT_ONCE: usize = 8;

/// One lookup. A found profile is stored; Meta's "no profile for this
/// user" is stored as checked; anything else (network, rate limit, a dead
/// token) stores nothing and the contact's next message tries again.
pub async fn lookup_profile(state: &AppState, l: contacts::ProfileLookup) -> AppResult<()> {
    let Some(sealed) = &l.sealed_token else { return Ok(()) };
    let aad = crate::channels::token_aad(l.platform.as_str(), &l.channel_external);
    let token = state.keys.decrypt(sealed, &aad)?;
    let (name, pic) = match state.graph.profile(&l.contact_external, &token, contacts::profile_fields(l.platform)).await
    {
        Ok(v) => contacts::profile_of(&v),
        Err(e)
            if matches!(e.code(), Some((2018218, _)) | Some((100, Some(33))))
                || matches!(e, GraphError::RecipientUnavailable { .. }) =>
        {
            (None, None)
        }
        Err(e) => {
            note_graph_error(state, l.tenant, ChannelId(l.channel_id), e).await;
            return Ok(());
        }
    };
    let contact = l.contact_id;
    state
        .tenant_with_events(TenantScope::system(l.tenant), move |tc, log| {
            contacts::store_profile(tc, log, contact, name, pic)
        })
        .await
}

/// Wakes snoozed conversations of every active tenant, lifts the WhatsApp
/// restrictions that ran out (`channels::whatsapp_number`), rings waits
/// past their reply target (`waiting`), resolves idle conversations
/// (`auto_resolve`) and deletes those kept long enough (`retention`),
/// every 30 seconds.
pub async fn run_snooze_clock(state: actix_web::web::Data<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    loop {
        tick.tick().await;
        let tenants = state.db.public(|conn| Ok::<_, AppError>(crate::tenancy::list(conn)?)).await.unwrap_or_default();
        for t in tenants.into_iter().filter(|t| t.is_active()) {
            let online = state.online.of(t.tenant_id());
            let r = state
                .tenant_with_events(TenantScope::system(t.tenant_id()), move |tc, log| {
                    conversations::wake_snoozed(tc, log, &online)?;
                    crate::channels::whatsapp_number::lift_ended(tc)?;
                    super::waiting::ring_overdue(tc, log)?;
                    super::auto_resolve::resolve_idle(tc, log, chrono::Utc::now())
                })
                .await;
            // Its own transaction: deletes that wait for a row lock hold
            // up no snoozed conversation's waking.
            let expired = state
                .tenant_with_events(TenantScope::system(t.tenant_id()), move |tc, log| {
                    super::retention::expire(tc, log, chrono::Utc::now())
                })
                .await;
            if let Err(e) = expired {
                tracing::debug!(tenant = %t.slug, error = ?e, "retention skipped a tenant this tick");
            }
            match r {
                // What it resolved made room for the queue (`hand_out`).
                Ok(resolved) if resolved > 0 => state.online.room_changed(t.tenant_id()),
                Ok(_) => {}
                Err(e) => tracing::debug!(tenant = %t.slug, error = ?e, "snooze clock skipped a tenant"),
            }
        }
    }
}

/// Drops events older than `SWITCHBOARD_EVENT_RETENTION_HOURS` (default 72)
/// from every tenant's log, hourly (a client resuming from before that gets
/// `resync_required`); applies what waited for messages that came
/// meanwhile, and drops receipts and changes that waited for their message
/// longer than [`early::KEEP_DAYS`](super::early::KEEP_DAYS).
pub async fn run_event_pruner(state: actix_web::web::Data<AppState>) {
    let hours = std::env::var("SWITCHBOARD_EVENT_RETENTION_HOURS")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|h| *h > 0)
        .unwrap_or(72);
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let tenants = state.db.public(|conn| Ok::<_, AppError>(crate::tenancy::list(conn)?)).await.unwrap_or_default();
        for t in tenants {
            let r = state
                .db
                .tenant(TenantScope::maintenance(t.tenant_id()), move |tc| {
                    super::events::prune(tc, hours)?;
                    super::notifications::prune(tc)?;
                    let mut log = super::events::EventLog::new();
                    super::early::sweep(tc, &mut log)?;
                    log.notify(tc)?;
                    super::early::prune(tc)
                })
                .await;
            if let Err(e) = r {
                tracing::debug!(tenant = %t.slug, error = ?e, "event pruning skipped a tenant");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{look_again, Pacer, HELD_RETRY};
    use std::time::{Duration, Instant};

    #[test]
    fn a_job_that_panics_is_tried_later_and_later_then_given_up() {
        use super::{after_panic_end, JobEnd, MAX_SEND_ATTEMPTS};
        let after = |kind: &str, attempts: i32| match after_panic_end(kind, attempts, "why".into()) {
            JobEnd::Retry { after, counts: true, .. } => Some(after),
            JobEnd::Retry { counts: false, .. } => panic!("a panic must count as an attempt"),
            JobEnd::Unanswered { .. } => panic!("a panic is not a send Meta did not answer"),
            JobEnd::Done => None,
        };
        assert_eq!(after("message", 1), Some(Duration::from_secs(2)));
        assert_eq!(after("message", 5), Some(Duration::from_secs(32)));
        for kind in ["message", "mark_seen", "reaction"] {
            assert_eq!(after(kind, MAX_SEND_ATTEMPTS), None, "{kind} is given up");
        }
        // Stepped jobs keep their own state: tried again, at most 256 s apart.
        assert_eq!(after("broadcast", 40), Some(Duration::from_secs(256)));
        assert_eq!(after(crate::inbox::scheduled::JOB_KIND, 40), Some(Duration::from_secs(256)));
    }

    /// A claim (or a look at the queue) waiting on a busy pool does not
    /// hold up the turns under way: one whose answer came back ends meanwhile.
    #[actix_web::test]
    async fn the_turns_go_on_while_the_sender_claims() {
        let (ended, claim_may_end) = tokio::sync::oneshot::channel::<()>();
        let mut turns = super::Turns::new();
        turns.push(Some((1, 7)), async move {
            tokio::task::yield_now().await;
            let _ = ended.send(());
            Some((1, 7))
        });
        let left = std::cell::Cell::new(None);
        let claim = async { claim_may_end.await.is_ok() };
        let within = tokio::time::timeout(Duration::from_secs(5), turns.meanwhile(claim, |n| left.set(Some(n))));
        let (claimed, ended) = within.await.expect("the turn ended while the claim waited");
        assert!(claimed);
        assert_eq!((ended, left.get(), turns.len()), (1, Some(0), 0));
        assert!(turns.busy.is_empty(), "its conversation is free for the next claim");
    }

    #[test]
    fn sends_at_once_is_set_within_its_bounds() {
        use super::{sends_at_once_from, SENDS_AT_ONCE};
        assert_eq!(sends_at_once_from(Some("16")), 16);
        assert_eq!(sends_at_once_from(Some(" 64 ")), 64);
        for unset in [None, Some(""), Some("0"), Some("65"), Some("-1"), Some("eight")] {
            assert_eq!(sends_at_once_from(unset), SENDS_AT_ONCE, "{unset:?}");
        }
    }

    #[test]
    fn pacing_spaces_sends_per_channel() {
        let p = Pacer::default();
        // 10/s: the first sends go, then the channel must wait; others do not.
        let waits: Vec<Option<Duration>> = (0..4).map(|job| p.wait((1, 1), job, 10)).collect();
        assert!(waits[0].is_none() && waits[1].is_none());
        assert!(waits[3].is_some_and(|w| w > Duration::ZERO && w <= Duration::from_millis(400)));
        assert!(p.wait((1, 2), 9, 10).is_none(), "another channel is not slowed");
    }

    /// Two instances sending (`inbox::roster`): each keeps to half the
    /// rate, so together they keep to it; the line's turns are told at the
    /// channel's rate, since the other instance takes them up too.
    #[test]
    fn an_instance_among_others_keeps_to_its_share_of_the_rate() {
        let (p, t0) = (Pacer::default(), Instant::now());
        p.share(2);
        // 10 a second between two: a send asks every 10 ms for 2 s; this
        // instance sends a burst of two, then one every 200 ms.
        let went = |p: &Pacer, from: u64, job: i64| {
            (0..200).filter(|i| at(p, t0, from + i * 10, job + *i as i64).is_none()).count()
        };
        assert_eq!(went(&p, 0, 1), 2 + 9, "its share");
        // Alone: the whole rate.
        let alone = Pacer::default();
        alone.share(1);
        assert_eq!(went(&alone, 0, 1), 2 + 19);
        // Those held back after a burst are told turns 100 ms apart, from
        // when this instance may send next.
        let (p, t0) = (Pacer::default(), Instant::now());
        p.share(2);
        assert_eq!(after_a_burst(&p, t0, 5), [Some(400), Some(500), Some(600)]);
    }

    /// 10 a second (a gap of 100 ms), from `t0`: what job `job` is told at `ms`.
    fn at(p: &Pacer, t0: Instant, ms: u64, job: i64) -> Option<u64> {
        let wait = p.wait_at((1, 1), job, 10, t0 + Duration::from_millis(ms));
        wait.map(|w| w.as_millis() as u64)
    }

    /// A burst of two (jobs 1 and 2) at `t0`, then jobs 3 to `last` ask:
    /// what they are told.
    fn after_a_burst(p: &Pacer, t0: Instant, last: i64) -> Vec<Option<u64>> {
        assert_eq!((at(p, t0, 0, 1), at(p, t0, 0, 2)), (None, None), "a burst of two");
        (3..=last).map(|job| at(p, t0, 0, job)).collect()
    }

    #[test]
    fn sends_held_back_are_told_their_turns_in_the_order_they_asked() {
        let (p, t0) = (Pacer::default(), Instant::now());
        assert_eq!(after_a_burst(&p, t0, 5), [Some(200), Some(300), Some(400)], "each its own turn");
        // A free moment (within a gap of 3's turn) goes to whoever asks;
        // the next to ask is told a turn after those in the line.
        assert_eq!((at(&p, t0, 150, 6), at(&p, t0, 150, 7)), (None, Some(450)));
        // Each comes at its turn and goes: none is held back twice.
        for (ms, job) in [(200, 3), (300, 4), (400, 5), (600, 7)] {
            assert_eq!(at(&p, t0, ms, job), None, "{job} at {ms} ms");
        }
        assert!(p.lanes.lock().expect("lanes")[&(1, 1)].line.is_empty(), "each went once");
    }

    /// The queue hands out late, and in any order, sends whose turns came
    /// together: the channel does not wait for the first, and one that
    /// comes too late for a free moment goes at the next, ahead of the line.
    #[test]
    fn a_send_that_comes_back_late_goes_at_the_next_free_moment() {
        let (p, t0) = (Pacer::default(), Instant::now());
        assert_eq!(after_a_burst(&p, t0, 6), [Some(200), Some(300), Some(400), Some(500)]);
        assert_eq!((at(&p, t0, 420, 5), at(&p, t0, 420, 3)), (None, None), "a burst of two");
        assert_eq!(at(&p, t0, 430, 4), Some(190), "first in the line");
        assert_eq!(at(&p, t0, 500, 6), Some(220), "behind 4");
        assert_eq!(at(&p, t0, 500, 7), Some(320), "behind 4 and 6");
        for (ms, job) in [(620, 4), (720, 6), (820, 7)] {
            assert_eq!(at(&p, t0, ms, job), None, "{job} at {ms} ms");
        }
    }

    #[test]
    fn a_send_that_does_not_come_back_holds_nobody_up() {
        let (p, t0) = (Pacer::default(), Instant::now());
        assert_eq!(after_a_burst(&p, t0, 4), [Some(200), Some(300)]);
        // 3 met a hold, say: the next to ask is told a turn behind it while
        // it may still come, and goes at its own turn all the same.
        assert_eq!(super::STILL_COMING, Duration::from_millis(250), "the times below count on it");
        assert_eq!(at(&p, t0, 300, 4), None);
        assert_eq!((at(&p, t0, 330, 5), at(&p, t0, 330, 6)), (None, Some(270)));
        assert_eq!(at(&p, t0, 600, 6), None);
        // Past that it counts for nobody's turn.
        assert_eq!((at(&p, t0, 600, 7), at(&p, t0, 600, 8)), (None, Some(200)));
        // Past a minute its place is forgotten (only the memory it takes).
        assert_eq!(at(&p, t0, 800, 8), None);
        let later = 200 + super::PLACE_KEPT.as_millis() as u64;
        assert_eq!(at(&p, t0, later, 10), None);
        assert!(p.lanes.lock().expect("lanes")[&(1, 1)].line.is_empty());
    }

    #[test]
    fn sends_handed_out_late_still_go_a_gap_apart() {
        let (p, t0) = (Pacer::default(), Instant::now());
        assert_eq!(after_a_burst(&p, t0, 6), [Some(200), Some(300), Some(400), Some(500)]);
        // The queue handed all four out a second late, at once: two go,
        // the others wait a gap each after them, and one asking now after those.
        let late: Vec<Option<u64>> = (3..=6).map(|job| at(&p, t0, 1_000, job)).collect();
        assert_eq!(late, [None, None, Some(200), Some(300)]);
        assert_eq!(at(&p, t0, 1_000, 7), Some(400));
        assert_eq!((at(&p, t0, 1_200, 5), at(&p, t0, 1_300, 6), at(&p, t0, 1_400, 7)), (None, None, None));
    }

    #[test]
    fn the_worker_looks_again_at_the_first_turn_still_to_come() {
        let (p, t0) = (Pacer::default(), Instant::now());
        let t = |ms: u64| t0 + Duration::from_millis(ms);
        let look = |ms: u64| look_again(p.next_turn(t(ms)), t(ms)).as_millis();
        assert_eq!((p.next_turn(t0), look(0)), (None, HELD_RETRY.as_millis()), "no send held back");
        assert_eq!(after_a_burst(&p, t0, 4), [Some(200), Some(300)]);
        assert_eq!((p.next_turn(t0), look(0)), (Some(t(200)), 210), "3's turn, its row due by then");
        // 3's turn has come (it is being claimed): then 4's.
        assert_eq!((p.next_turn(t(200)), look(250)), (Some(t(300)), 60));
        // Another channel's turn further off than the usual look again.
        assert_eq!([1, 2, 3].map(|job| p.wait_at((2, 2), job, 1, t0)), [None, None, Some(Duration::from_secs(2))]);
        assert_eq!((p.next_turn(t(300)), look(300)), (Some(t(2_000)), HELD_RETRY.as_millis()));
        assert_eq!(p.next_turn(t(2_000)), None, "every turn told has come");
    }
}
