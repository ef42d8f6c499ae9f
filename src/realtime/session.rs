//! One actor per WebSocket. It says `hello`, replays the log after `since`,
//! then lets what the hub pushes flow to the socket ([`Wire`]), never a
//! duplicate at the seam. It
//! answers `ping`, relays typing and presence, pings the client every 10 s
//! and drops one silent for 30 s. A client's mistakes get `error` frames; a
//! message in fragments is read whole, one over 64 KiB closes with 1009.
//! When the member's channels change, it narrows or widens and says so
//! (`channels.changed`).

use actix::prelude::*;
use actix_web::web;
use actix_web_actors::ws::{self, CloseCode, CloseReason};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::hub::{
    CloseSession, Hub, Join, Leave, Outbox, ReloadChannels, ReplayStep, SetChannels, SetStated, Stated, TypingFrom,
};
use crate::app::AppState;
use crate::auth::Role;
use crate::db::{TenantConn, TenantScope};
use crate::error::{AppError, AppResult};
use crate::inbox::events;
use crate::inbox::ConversationId;

/// How often the server pings, and how long a client may stay silent (no
/// frame of any kind, pongs included) before it is closed (4408):
/// `SWITCHBOARD_WS_PING_SECS` (10) and `SWITCHBOARD_WS_TIMEOUT_SECS` (30),
/// read once.
pub fn heartbeat() -> (Duration, Duration) {
    static HEARTBEAT: std::sync::OnceLock<(Duration, Duration)> = std::sync::OnceLock::new();
    *HEARTBEAT.get_or_init(|| {
        let secs = |name: &str, default: u64| {
            std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok()).filter(|s| *s > 0).unwrap_or(default)
        };
        let every = secs("SWITCHBOARD_WS_PING_SECS", 10);
        // A timeout shorter than two pings would drop clients that answer.
        let timeout = secs("SWITCHBOARD_WS_TIMEOUT_SECS", 30).max(2 * every);
        (Duration::from_secs(every), Duration::from_secs(timeout))
    })
}
/// The most a socket's [`Wire`] hands the HTTP dispatcher at a time: this
/// many bytes, and [`WRITE_FRAMES`] frames. The dispatcher takes parts
/// until its buffer holds this much (its flush size, `http::build_server`),
/// then writes: a socket's write is 16–32 KiB at most. actix keeps that
/// buffer as large as the largest write it carried (up to 128 KiB) for the
/// life of the connection, and a socket behind in a burst has 50–100 KiB
/// of frames waiting, a newcomer to a tenant of 1,000 agents online 1,000
/// presence frames. Written whole, every such socket kept that much (bench
/// realtime, 1,000 agents: +147–162 KiB per socket after a burst, in parts
/// +65–84; for 1,000 sockets told who is online 116 MiB, in parts 66).
pub const WRITE_BUDGET: usize = 16 * 1024;
/// See [`WRITE_BUDGET`]: bounds a part of small frames (presence).
pub const WRITE_FRAMES: usize = 24;

/// The largest message a client may send, whole or in fragments (its
/// messages are a few dozen bytes); beyond it the socket closes with 1009.
pub const CLIENT_MESSAGE_LIMIT: usize = 64 * 1024;

/// Mailbox slots: events travel through the [`Outbox`] to the [`Wire`],
/// never through the actor, so the mailbox holds only the odd control
/// message.
const MAILBOX: usize = 16;
/// A resume sends at most this many events; more (an agent back after a
/// long weekend in a busy tenant) gets `resync_required`, as a pruned log
/// does: reloading over REST is cheaper than a flood of frames, and the
/// replay must never stop short and go live with a gap.
const REPLAY_LIMIT: usize = 10_000;
/// Events after `since` among which a resume will count the agent's;
/// beyond, `resync_required` without counting.
const REPLAY_SCAN_LIMIT: i64 = 100_000;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The channels a member may see (`None`: all of them).
pub fn visible_channels(tc: &mut TenantConn<'_>, user: i64, role: Role) -> AppResult<Option<HashSet<i64>>> {
    use crate::db::tenant_schema::channel_members as cm;
    use diesel::prelude::*;
    if role.at_least(Role::Admin) {
        return Ok(None);
    }
    let ids: Vec<i64> = cm::table.filter(cm::user_id.eq(user)).select(cm::channel_id).load(tc.pg())?;
    Ok(Some(ids.into_iter().collect()))
}

pub struct WsSession {
    id: u64,
    hub: Addr<Hub>,
    state: web::Data<AppState>,
    tenant: i64,
    tenant_slug: String,
    user: i64,
    role: Role,
    name: String,
    family: String,
    channels: Option<HashSet<i64>>,
    /// The channel sets announced to the client (`channels.changed`) and
    /// maybe not yet written, oldest first, each with its number, behind
    /// the set it surely knows (the hello's or one written): empty when it
    /// knows `channels` ([`WsSession::known_channels`]).
    heard: Vec<(u64, Option<HashSet<i64>>)>,
    /// How many `channels.changed` frames this session handed the hub.
    announced: u64,
    /// How many reads of the member's channels were asked for (a reload,
    /// a replay's start). Only the latest asked is applied: it began after
    /// every change announced before it, where an earlier one, finishing
    /// later, could bring back what a change took away.
    channel_reads: u64,
    /// How many [`ReloadChannels`] the hub sent this session: a read asked
    /// after the latest tells the hub its outbox may go on.
    reloads_heard: u64,
    last_seq: i64,
    /// Where the replay starts: the client's `since`, else the `last_seq`
    /// its hello names (events committed between reading that and joining
    /// the hub would otherwise fall between the two).
    since: i64,
    /// The newest event the replay sent (live frames skip it and older ones).
    last_sent: i64,
    /// Where the replay under way ends: the log's last seq when it began.
    replay_to: i64,
    /// How many events the replay's next page reads ([`PAGE_BYTES`]).
    page_events: i64,
    /// Shared with the hub (which adds frames) and the socket's writer
    /// ([`Wire`], which takes them once the replay is done).
    outbox: Arc<Outbox>,
    heartbeat: Instant,
    /// A client message arriving in fragments, gathered until its last
    /// (`None` between messages; `Some(None)` for a binary one, refused whole).
    fragments: Option<Option<Vec<u8>>>,
    /// What the client may still send ([`Allowance`]).
    allowance: Allowance,
    /// The last typing message passed on: (conversation, on, when).
    last_typing: Option<(ConversationId, bool, Instant)>,
}

/// A client's messages (typing, presence, ping) cost the server a database
/// read or a fan-out to colleagues each, so a socket may send a burst of
/// [`CLIENT_BURST`], refilled at [`CLIENT_RATE`] a second; beyond that
/// they are dropped, and the client told so at most once a second
/// (`rate_limited`). A person typing renews every few seconds.
struct Allowance {
    tokens: f32,
    at: Instant,
    told: Option<Instant>,
}

const CLIENT_BURST: f32 = 40.0;
const CLIENT_RATE: f32 = 20.0;
/// A typing message that repeats the last one passed on (same conversation,
/// still typing) within this is dropped: colleagues' typing frames and the
/// lookup behind them come at most this often per socket, well inside the
/// 6 s a renewal keeps typing on.
const TYPING_REPEAT: Duration = Duration::from_secs(1);

impl Allowance {
    fn new(now: Instant) -> Self {
        Allowance { tokens: CLIENT_BURST, at: now, told: None }
    }

    /// Takes one message's worth; `Err(tell)` when there is none left,
    /// `tell` when the client has not been told so for a second.
    fn take(&mut self, now: Instant) -> Result<(), bool> {
        let refill = now.saturating_duration_since(self.at).as_secs_f32() * CLIENT_RATE;
        self.tokens = (self.tokens + refill).min(CLIENT_BURST);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let tell = self.told.is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
        if tell {
            self.told = Some(now);
        }
        Err(tell)
    }
}

pub struct SessionInit {
    pub tenant: i64,
    pub tenant_slug: String,
    pub user: i64,
    pub role: Role,
    pub name: String,
    pub family: String,
    pub channels: Option<HashSet<i64>>,
    pub last_seq: i64,
    pub since: Option<i64>,
}

impl WsSession {
    pub fn new(hub: Addr<Hub>, state: web::Data<AppState>, init: SessionInit) -> WsSession {
        let outbox = Arc::new(Outbox::new(state.feed.unwritten()));
        WsSession {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            hub,
            state,
            tenant: init.tenant,
            tenant_slug: init.tenant_slug,
            user: init.user,
            role: init.role,
            name: init.name,
            family: init.family,
            channels: init.channels,
            heard: Vec::new(),
            announced: 0,
            channel_reads: 0,
            reloads_heard: 0,
            last_seq: init.last_seq,
            since: init.since.unwrap_or(init.last_seq),
            last_sent: init.since.unwrap_or(init.last_seq),
            replay_to: 0,
            page_events: PAGE_EVENTS_FIRST,
            outbox,
            heartbeat: Instant::now(),
            fragments: None,
            allowance: Allowance::new(Instant::now()),
            last_typing: None,
        }
    }

    /// The channels the member sees, sorted, as the wire shows ids
    /// (`None`: every channel).
    fn channel_ids(&self) -> Option<Vec<String>> {
        self.channels.as_ref().map(|set| {
            let mut ids: Vec<i64> = set.iter().copied().collect();
            ids.sort_unstable();
            ids.iter().map(i64::to_string).collect()
        })
    }

    fn scope(&self) -> TenantScope {
        let (tenant, user) = (crate::ids::TenantId(self.tenant), crate::ids::UserId(self.user));
        TenantScope::member(tenant, user, self.role.as_str(), &self.family)
    }

    /// Starts the session on an upgraded request: the actor's own frames
    /// (hello, the replay, answers, pings, the close) and the hub's frames
    /// (events, typing, presence) share the socket through a [`Wire`].
    pub fn start<S>(
        self,
        req: &actix_web::HttpRequest,
        stream: S,
    ) -> Result<actix_web::HttpResponse, ws::HandshakeError>
    where
        S: futures_util::Stream<Item = Result<bytes::Bytes, actix_web::error::PayloadError>> + 'static,
    {
        let mut response = ws::handshake(req)?;
        let outbox = self.outbox.clone();
        let actor =
            ws::WebsocketContext::with_codec(self, stream, actix_http::ws::Codec::new().max_size(CLIENT_MESSAGE_LIMIT));
        Ok(response.streaming(Wire { actor, outbox }))
    }

    fn close(&self, ctx: &mut ws::WebsocketContext<Self>, code: u16, reason: &str) {
        self.outbox.close();
        ctx.close(Some(CloseReason { code: CloseCode::Other(code), description: Some(reason.to_string()) }));
        ctx.stop();
    }

    /// The member's channels as read now: when they changed, the session
    /// and the hub go by them from here on, and the client learns at once
    /// which channels it sees (to reload its lists); an admin sees all,
    /// always. Told through the hub, in line with the events: written by
    /// the actor, it went out ahead of those the old channels had queued.
    /// The hub hears of every read, changed or not: it holds the outbox
    /// until then ([`Outbox::hold`]).
    fn channels_now(&mut self, channels: Option<HashSet<i64>>, answers: u64) {
        if channels == self.channels {
            self.hub.do_send(SetChannels { id: self.id, answers, change: None });
            return;
        }
        if self.heard.is_empty() {
            // Number 0: the set the client knows, the hello's or written.
            self.heard.push((0, self.channels.take()));
        }
        self.announced += 1;
        self.heard.push((self.announced, channels.clone()));
        self.channels = channels.clone();
        let ids = self.channel_ids();
        let announce = json!({"type": "channels.changed", "at": Utc::now(), "data": {"channel_ids": ids}}).to_string();
        self.hub.do_send(SetChannels { id: self.id, answers, change: Some((channels, announce.into())) });
    }

    /// The channels the client knows it sees: those the last
    /// `channels.changed` its socket has taken named, else the hello's.
    fn known_channels(&mut self) -> Option<HashSet<i64>> {
        let written = self.outbox.channels_told();
        let newest_written = self.heard.iter().rposition(|(n, _)| *n <= written).unwrap_or(0);
        self.heard.drain(..newest_written);
        if self.heard.len() == 1 {
            // The newest announced is written: the client knows `channels`.
            self.heard.clear();
        }
        self.heard.first().map_or_else(|| self.channels.clone(), |(_, set)| set.clone())
    }

    /// Sends the events after `last_sent` up to `replay_to` that the member
    /// may see, a page at a time: the next page is read when the socket has
    /// taken this one ([`ReplayStep::NextPage`]), so a resume far behind
    /// holds a page or two, not all it replays. After the last page the
    /// socket goes live. `start`: a replay from `since` begins; it is
    /// checked against the log's bounds and [`REPLAY_LIMIT`], and ends at
    /// the log's end as it is now (later events reach the outbox).
    fn replay(&mut self, ctx: &mut ws::WebsocketContext<Self>, start: bool) {
        let (since, from, to, size) = (self.since, self.last_sent, self.replay_to, self.page_events);
        let state = self.state.clone();
        let (scope, channels, user, role) = (self.scope(), self.channels.clone(), self.user, self.role);
        let known = self.known_channels();
        if start {
            self.channel_reads += 1;
        }
        let answers = self.reloads_heard;
        let fut = async move {
            state
                .db
                .tenant(scope, move |tc| {
                    // The channels as they are now, the hub having this
                    // session: a change between the connect's read and the
                    // join reached no socket here (the hub tells only the
                    // sessions it has), so it is looked for once more.
                    let fresh = if start { Some(visible_channels(tc, user, role)?) } else { None };
                    // A replay's frames go out ahead of the outbox, where a
                    // `channels.changed` waits: it replays the channels the
                    // client knows it sees and may still see. A gained
                    // channel's earlier events are not replayed; the client
                    // reloads its lists when told of it.
                    let channels = both(known, fresh.clone().unwrap_or(channels));
                    let viewer = events::Viewer { user, channels: channels.as_ref() };
                    let oldest = events::oldest_seq(tc)?;
                    let last = events::last_seq(tc)?;
                    let resync = |reason: &'static str| {
                        Ok::<_, AppError>((fresh.clone(), Page::Resync { reason, oldest, last }))
                    };
                    // `from` ahead of the log (a log that lost its newest
                    // events, a database restored or reset), pruned past
                    // `from` (retention may run between pages too), or more
                    // than a replay carries: the client must reload over REST.
                    if from > last {
                        return resync("ahead");
                    }
                    let pruned = match oldest {
                        Some(o) => from + 1 < o,
                        None => from < last,
                    };
                    if pruned {
                        return resync("pruned");
                    }
                    // Counted only when the log holds that many at all.
                    if start
                        && (last - since > REPLAY_SCAN_LIMIT
                            || (last - since > REPLAY_LIMIT as i64
                                && events::more_than_after(tc, since, viewer, REPLAY_LIMIT as i64)?))
                    {
                        return resync("too_many");
                    }
                    let to = if start { last } else { to };
                    let mut page = events::since_for(tc, from, viewer, size)?;
                    page.retain(|e| e.seq <= to);
                    let end = (page.len() as i64) < size || page.last().is_some_and(|e| e.seq >= to);
                    Ok((fresh, Page::Events { events: page, end, to }))
                })
                .await
        };
        ctx.wait(fut.into_actor(self).map(move |result, act, ctx| {
            let result = result.map(|(fresh, page)| {
                if let Some(channels) = fresh {
                    act.channels_now(channels, answers);
                }
                page
            });
            let resync = match result {
                Ok(Page::Events { events, end, to }) => {
                    act.replay_to = to;
                    let bytes: usize = events.iter().map(|e| e.data.len()).sum();
                    if let Some(fit) = (PAGE_BYTES * events.len()).checked_div(bytes) {
                        act.page_events = (fit as i64).clamp(PAGE_EVENTS_MIN, PAGE_EVENTS_MAX);
                    }
                    for e in events {
                        if e.seq > act.last_sent {
                            act.last_sent = e.seq;
                            ctx.text(e.frame());
                        }
                    }
                    if !end {
                        act.outbox.page_written();
                        return;
                    }
                    None
                }
                Ok(Page::Resync { reason, oldest, last }) => Some((reason, oldest, last)),
                Err(e) => {
                    match refusal(&e) {
                        Some((code, reason)) => act.close(ctx, code, reason),
                        None => act.close_after_failed_replay(ctx, e),
                    }
                    return;
                }
            };
            if let Some((reason, oldest, last)) = resync {
                let frame = json!({"type": "resync_required", "at": Utc::now(),
                    "data": {"since": act.since, "oldest_seq": oldest, "last_seq": last, "reason": reason}});
                ctx.text(frame.to_string());
                // Live events continue after the log's end, whatever `since` said.
                act.last_sent = last;
            }
            // Live frames that came meanwhile follow the replay's (the
            // actor's frames go out first); those the replay covered are
            // skipped by seq, so none is sent twice at the seam.
            act.outbox.go_live(act.last_sent);
        }));
    }
}

/// The channels in both sets (`None`: every channel).
fn both(a: Option<HashSet<i64>>, b: Option<HashSet<i64>>) -> Option<HashSet<i64>> {
    match (a, b) {
        (None, set) | (set, None) => set,
        (Some(a), Some(b)) => Some(a.intersection(&b).copied().collect()),
    }
}

/// A replay hands the socket a page at a time, and reads the next when the
/// socket has taken it. A page is about this many bytes of events: its
/// number of events follows the size of the last page's, between
/// [`PAGE_EVENTS_MIN`] and [`PAGE_EVENTS_MAX`]. Every copy of a page counts:
/// the database's answer, the events, their frames, the socket's buffers.
const PAGE_BYTES: usize = 128 * 1024;
/// See [`PAGE_BYTES`].
const PAGE_EVENTS_MIN: i64 = 4;
/// See [`PAGE_BYTES`].
const PAGE_EVENTS_MAX: i64 = 128;
/// The first page's events, before any size is known.
const PAGE_EVENTS_FIRST: i64 = 16;

/// What one read of a replay found.
enum Page {
    /// Events to send, whether they end the replay, and where it ends.
    Events { events: Vec<events::StoredEvent>, end: bool, to: i64 },
    /// The client must reload over REST.
    Resync { reason: &'static str, oldest: Option<i64>, last: i64 },
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        crate::metrics::WS_OPEN.fetch_add(1, Ordering::Relaxed);
        crate::metrics::inc(&crate::metrics::WS_OPENED, 1);
        ctx.set_mailbox_capacity(MAILBOX);
        let (every, timeout) = heartbeat();
        ctx.run_interval(every, move |act, ctx| {
            if Instant::now().duration_since(act.heartbeat) > timeout {
                // Usually nobody is left to read it; a client that is (its
                // pongs lost on the way) learns why and resumes.
                crate::metrics::inc(&crate::metrics::WS_SILENT, 1);
                act.close(ctx, super::CLOSE_TOO_SLOW, "no answer to pings; reconnect with since");
                return;
            }
            ctx.ping(b"");
        });
        self.outbox.replays_for(ctx.address().downgrade().recipient());
        let join = self.hub.send(Join {
            id: self.id,
            addr: ctx.address(),
            outbox: self.outbox.clone(),
            tenant: self.tenant,
            user: self.user,
            family: self.family.clone(),
            channels: self.channels.clone(),
        });
        // The hello and the replay wait until the hub has this session: an
        // event committed after that reaches the outbox, one before is in
        // the log the replay reads, so a client that acts once it has its
        // hello misses nothing. Read sooner, an event committed between the
        // read and the join reached neither (nor was it read from the log
        // at all when the tenant had no other socket here).
        ctx.wait(join.into_actor(self).map(|joined, act, ctx| {
            if joined.is_err() {
                act.close(ctx, 1001, "server stopping");
                return;
            }
            // `tenant` is the slug, as at login; `tenant_id` its id;
            // `channel_ids` the channels the member sees (`null`: all, an
            // admin), as `channels.changed` will tell when they change.
            let hello = json!({"type": "hello", "at": Utc::now(), "data": {
                "user_id": act.user.to_string(), "tenant": act.tenant_slug, "tenant_id": act.tenant.to_string(),
                "last_seq": act.last_seq, "channel_ids": act.channel_ids()}});
            ctx.text(hello.to_string());
            act.replay(ctx, true);
        }));
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        crate::metrics::WS_OPEN.fetch_sub(1, Ordering::Relaxed);
        // Neither side closed it: the connection ended under it.
        if self.outbox.close() {
            crate::metrics::inc(&crate::metrics::WS_UNCLOSED, 1);
        }
        self.hub.do_send(Leave { id: self.id });
    }
}

/// What the socket writes: the actor's frames first (so the hello and the
/// replay precede everything), then the hub's, taken straight from the
/// [`Outbox`] and encoded once per write ([`Outbox::next_write`]). The hub's
/// frames never pass through the actor: no mailbox message, actor turn or
/// per-frame queue slot per event, and the dispatcher asks for the next
/// part as soon as it has room (16 KiB at a time, `http::build_server`).
struct Wire<A> {
    actor: A,
    outbox: Arc<Outbox>,
}

impl<A> futures_util::Stream for Wire<A>
where
    A: futures_util::Stream<Item = Result<bytes::Bytes, actix_web::Error>> + Unpin,
{
    type Item = Result<bytes::Bytes, actix_web::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        // The actor's stream ends when the session does (after its close
        // frame); so does the socket's, whatever the outbox holds.
        if let Poll::Ready(done) = std::pin::Pin::new(&mut self.actor).poll_next(cx) {
            return Poll::Ready(done);
        }
        match self.outbox.next_write(cx.waker()) {
            Some(bytes) => Poll::Ready(Some(Ok(bytes))),
            None => Poll::Pending,
        }
    }
}

impl Handler<ReplayStep> for WsSession {
    type Result = ();
    fn handle(&mut self, m: ReplayStep, ctx: &mut Self::Context) {
        match m {
            ReplayStep::NextPage => self.replay(ctx, false),
            ReplayStep::Again { from } => {
                crate::metrics::inc(&crate::metrics::WS_REPLAYS_AGAIN, 1);
                self.since = from;
                self.last_sent = from;
                self.replay(ctx, true);
            }
        }
    }
}

impl Handler<CloseSession> for WsSession {
    type Result = ();
    fn handle(&mut self, m: CloseSession, ctx: &mut Self::Context) {
        self.close(ctx, m.code, m.reason);
    }
}

impl Handler<ReloadChannels> for WsSession {
    type Result = ();
    fn handle(&mut self, _: ReloadChannels, ctx: &mut Self::Context) {
        let state = self.state.clone();
        let (scope, user, role) = (self.scope(), self.user, self.role);
        self.channel_reads += 1;
        self.reloads_heard += 1;
        let (asked, answers) = (self.channel_reads, self.reloads_heard);
        let fut = async move { state.db.tenant(scope, move |tc| visible_channels(tc, user, role)).await };
        ctx.spawn(fut.into_actor(self).map(move |r, act, ctx| match r {
            Ok(channels) if asked == act.channel_reads => act.channels_now(channels, answers),
            // A later read was asked for: it applies.
            Ok(_) => {}
            // The guard refused: the login ended, membership or role changed.
            Err(e) => match refusal(&e) {
                Some((code, reason)) => act.close(ctx, code, reason),
                None => {
                    tracing::warn!(error = ?e, "could not reload channels");
                    // The outbox goes on by the channels it had.
                    if asked == act.channel_reads {
                        act.hub.do_send(SetChannels { id: act.id, answers, change: None });
                    }
                }
            },
        }));
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMsg {
    Ping,
    Typing {
        conversation_id: ConversationId,
        #[serde(default = "super::typing_on_by_default")]
        on: bool,
    },
    Presence {
        status: String,
    },
}

impl WsSession {
    fn typing(&mut self, conversation: ConversationId, on: bool, ctx: &mut ws::WebsocketContext<Self>) {
        let state = self.state.clone();
        let (scope, user, role, keys) = (self.scope(), self.user, self.role, self.state.keys.clone());
        let fut = async move {
            state
                .db
                .tenant(scope, move |tc| {
                    let user = crate::ids::UserId(user);
                    let target = crate::inbox::messages::typing_target(tc, &keys, user, role, conversation)?;
                    // The name they go by now (they may have changed it
                    // since the socket opened), as `POST …/typing` shows.
                    Ok((target, crate::auth::users::display_name(tc.pg(), user)?))
                })
                .await
        };
        ctx.spawn(fut.into_actor(self).map(move |r, act, ctx| {
            let target = match r {
                Ok((target, name)) => {
                    act.name = name;
                    target
                }
                // The guard refused: the login ended, membership or role changed.
                Err(e) => {
                    if let Some((code, reason)) = refusal(&e) {
                        return act.close(ctx, code, reason);
                    }
                    // Not passed on, so not the last one: a retry within
                    // the second is not dropped as its repeat.
                    if act.last_typing.is_some_and(|(c, o, _)| (c, o) == (conversation, on)) {
                        act.last_typing = None;
                    }
                    if e.status().is_server_error() {
                        tracing::warn!(error = ?e, "could not read a typing message's conversation");
                        return ctx.text(error_frame("unavailable", "try again shortly"));
                    }
                    return ctx.text(error_frame("not_found", "no such conversation"));
                }
            };
            let conv = target.conversation;
            act.hub.do_send(TypingFrom {
                id: act.id,
                tenant: act.tenant,
                conversation: conv,
                channel: target.channel.id,
                user: act.user,
                name: act.name.clone(),
                on,
            });
            // Meta's typing indicator, throttled per agent and conversation
            // as for `POST …/typing` (all of the agent's sockets together).
            if act.state.typing_due(act.tenant, conv, act.user, on) {
                target.send(&act.state.graph, on);
            }
        }));
    }
}

impl StreamHandler<Result<ws::Message, ws::ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ws::ProtocolError>, ctx: &mut Self::Context) {
        let msg = match msg {
            Ok(m) => m,
            Err(ws::ProtocolError::Overflow) => return self.close(ctx, CloseCode::Size.into(), "message too large"),
            Err(e) if not_utf8(&e) => return self.close(ctx, CloseCode::Invalid.into(), "text is not UTF-8"),
            // The connection failed under the socket (actix reports a client
            // gone mid-stream as an I/O error of its payload): no close frame
            // can reach it, and it is not the client's protocol error.
            Err(ws::ProtocolError::Io(_)) => return ctx.stop(),
            Err(_) => return self.close(ctx, CloseCode::Protocol.into(), "protocol error"),
        };
        self.heartbeat = Instant::now();
        match msg {
            ws::Message::Ping(p) => ctx.pong(&p),
            ws::Message::Pong(_) => {}
            ws::Message::Text(text) => self.client_text(&text, ctx),
            ws::Message::Binary(_) => ctx.text(error_frame("invalid_message", "send JSON text frames")),
            // A code no endpoint may send (RFC 6455 §7.4: 1005, 1006, 1015,
            // unassigned ones) is a protocol error, not one to echo.
            ws::Message::Close(Some(reason)) if !close_code_sendable(reason.code.into()) => {
                self.close(ctx, CloseCode::Protocol.into(), "invalid close code")
            }
            ws::Message::Close(reason) => {
                // Nothing may follow the answering close frame.
                self.outbox.close();
                ctx.close(reason);
                ctx.stop();
            }
            ws::Message::Continuation(item) => self.fragment(item, ctx),
            ws::Message::Nop => {}
        }
    }
}

/// The close code and reason for the tenant guard's refusal of this
/// socket's credential, as the hub would close it (its word may not have
/// come yet when the socket's own read is refused): none for other errors.
impl WsSession {
    /// A replay that failed for no refusal's sake: the tenant may have been
    /// dropped as the log was read (its schema gone under the read, before
    /// the drop's own close reached the hub), which closes the socket as the
    /// drop does (4403); anything else as a failure (1011).
    fn close_after_failed_replay(&mut self, ctx: &mut ws::WebsocketContext<Self>, e: AppError) {
        let (state, tenant) = (self.state.clone(), self.tenant);
        let kept = async move {
            use crate::db::schema::tenants;
            use diesel::prelude::*;
            state
                .db
                .public(move |conn| {
                    let kept = tenants::table.find(tenant).count().get_result::<i64>(conn)?;
                    Ok::<_, AppError>(kept > 0)
                })
                .await
        };
        ctx.wait(kept.into_actor(self).map(move |kept, act, ctx| match kept {
            Ok(false) => act.close(ctx, super::CLOSE_REMOVED, "this tenant was dropped"),
            _ => {
                tracing::warn!(error = ?e, "replay failed");
                act.close(ctx, 1011, "could not read the event log");
            }
        }));
    }
}

fn refusal(e: &AppError) -> Option<(u16, &'static str)> {
    match e.code.as_ref() {
        "login_ended" => Some((super::CLOSE_LOGGED_OUT, "this login ended")),
        "token_revoked" => Some((super::CLOSE_LOGGED_OUT, "your role changed")),
        "membership_revoked" => Some((super::CLOSE_REMOVED, "no longer a member of this tenant")),
        "tenant_suspended" => Some((super::CLOSE_REMOVED, "this tenant is suspended")),
        _ => None,
    }
}

/// Whether a close frame may carry `code` (RFC 6455 §7.4.1 and IANA's
/// registry: the standard codes an endpoint sends, and those left to
/// libraries and applications).
fn close_code_sendable(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Whether a read failed because a whole text frame was not UTF-8, which
/// RFC 6455 §7.4.1 answers with 1007, not 1002. actix-web-actors reports it
/// only as an `Other` I/O error carrying `Utf8Error`'s words; a failed read
/// of the connection itself never reaches the peer, whatever the code.
fn not_utf8(e: &ws::ProtocolError) -> bool {
    matches!(e, ws::ProtocolError::Io(io) if io.to_string().contains("utf-8"))
}

impl WsSession {
    /// A message sent in fragments (RFC 6455 §5.4) is read once whole.
    fn fragment(&mut self, item: actix_http::ws::Item, ctx: &mut ws::WebsocketContext<Self>) {
        let (first, binary, last, bytes) = match item {
            actix_http::ws::Item::FirstText(b) => (true, false, false, b),
            actix_http::ws::Item::FirstBinary(b) => (true, true, false, b),
            actix_http::ws::Item::Continue(b) => (false, false, false, b),
            actix_http::ws::Item::Last(b) => (false, false, true, b),
        };
        if first != self.fragments.is_none() {
            return self.close(ctx, CloseCode::Protocol.into(), "unexpected continuation frame");
        }
        let gathered = self.fragments.get_or_insert_with(|| (!binary).then(Vec::new));
        if let Some(text) = gathered {
            if text.len() + bytes.len() > CLIENT_MESSAGE_LIMIT {
                return self.close(ctx, CloseCode::Size.into(), "message too large");
            }
            text.extend_from_slice(&bytes);
        }
        if !last {
            return;
        }
        match self.fragments.take().flatten().map(String::from_utf8) {
            Some(Ok(text)) => self.client_text(&text, ctx),
            Some(Err(_)) => self.close(ctx, CloseCode::Invalid.into(), "text is not UTF-8"),
            None => ctx.text(error_frame("invalid_message", "send JSON text frames")),
        }
    }

    fn client_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        let now = Instant::now();
        if let Err(tell) = self.allowance.take(now) {
            crate::metrics::inc(&crate::metrics::WS_CLIENT_DROPPED, 1);
            if tell {
                ctx.text(error_frame("rate_limited", "too many messages; some were dropped, slow down"));
            }
            return;
        }
        match serde_json::from_str::<ClientMsg>(text) {
            Ok(ClientMsg::Ping) => ctx.text(json!({"type": "pong", "at": Utc::now()}).to_string()),
            Ok(ClientMsg::Typing { conversation_id, on }) => {
                let repeat = self.last_typing.is_some_and(|(c, o, at)| {
                    c == conversation_id && o == on && (!on || now.saturating_duration_since(at) < TYPING_REPEAT)
                });
                if repeat {
                    return;
                }
                self.last_typing = Some((conversation_id, on, now));
                if self.role.can_write() {
                    self.typing(conversation_id, on, ctx);
                } else {
                    // As `POST …/typing` answers a viewer (403 forbidden).
                    ctx.text(error_frame("forbidden", "typing needs the agent role or higher"));
                }
            }
            Ok(ClientMsg::Presence { status }) => match Stated::parse(&status) {
                Some(stated) => self.hub.do_send(SetStated { id: self.id, stated }),
                None => ctx.text(error_frame("invalid_status", "status must be online, away or offline")),
            },
            // serde's words say what is wrong ("missing field `on`",
            // "unknown variant `teleport`, expected one of …").
            Err(e) => ctx.text(error_frame("invalid_message", &format!("unknown or malformed message: {e}"))),
        }
    }
}

/// A client's mistake, told in the frame envelope (`type`, `at`, `data`
/// with the REST error's `code` and `message`); the socket stays open.
fn error_frame(code: &str, message: &str) -> String {
    json!({"type": "error", "at": Utc::now(), "data": {"code": code, "message": message}}).to_string()
}
