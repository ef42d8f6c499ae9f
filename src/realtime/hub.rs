//! One hub per server instance: knows every socket's tenant, user and
//! channels, fans events out (an event for one member only to their
//! sockets that see its channel), relays typing and presence, and closes
//! sockets whose access ended. It never waits on a client: frames go to each
//! session's [`Outbox`], and one that overflows (a client that stopped
//! reading) is dropped with close code 4408 while others go on. When an
//! access change is announced, an agent's outbox is held until the agent's
//! list is read again, and what came of a lost channel meanwhile is
//! dropped ([`Outbox::hold`]).
//!
//! Under a backlog the hub paces itself: every batch of events costs one
//! socket write to each socket that sees any of it, and in a burst the
//! webhook processor commits batch after batch. A batch handed over with
//! [`Pace::Backlog`] (its committer has more work right behind it) is held
//! until the next batch arrives, so one round of writes carries both. A
//! hold takes in further backlog batches while younger than [`HOLD_WHILE`];
//! the next batch after that, any [`Pace::Now`] batch or a [`Flush`] (the
//! processor found nothing more) sends it all, and [`HOLD_MAX`] sends it
//! whatever happens. A trickle of webhooks and agents' own changes are
//! never held. Held events are already in the log: a socket that connects
//! meanwhile gets them once, from its replay or the flush.
//!
//! Presence is paced too: the users whose sockets here joined, left or went
//! away gather for [`PRESENCE_TICK`] and go out together — to this
//! instance's sockets at once, to the others in a few bus messages — so
//! when a thousand agents reconnect after a restart, each socket gets a few
//! deliveries of many presence frames, not a thousand of one.

use actix::prelude::*;
use actix::{WeakAddr, WeakRecipient};
use chrono::Utc;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bus::{ActiveTenants, Bus, LiveMsg};
use super::session::WsSession;
use super::{CLOSE_LOGGED_OUT, CLOSE_REMOVED, CLOSE_TOO_SLOW};
use crate::inbox::events::StoredEvent;

pub const TYPING_TTL: Duration = Duration::from_secs(6);
/// How often, while anyone types, expired typing is looked for.
const TYPING_CHECK: Duration = Duration::from_millis(500);
/// A hold takes in further backlog batches while younger than this.
pub const HOLD_WHILE: Duration = Duration::from_millis(150);
/// Held events go out after this even if no further batch comes.
pub const HOLD_MAX: Duration = Duration::from_millis(500);
/// Presence changes gather this long and go out together (see
/// `Hub::flush_presence`).
pub const PRESENCE_TICK: Duration = Duration::from_millis(50);

/// How soon a batch of events must reach the sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pace {
    /// At once: an agent's change, a webhook trickle, the log read by the
    /// listener.
    Now,
    /// Its committer has more work right behind it: the hub may hold it
    /// and send it with the next batch.
    Backlog,
}

/// One frame for a session. The text is shared: a clone for each of the
/// sessions it goes to costs a reference count, not a copy.
#[derive(Clone)]
pub struct Frame {
    pub carries: Carries,
    pub text: bytestring::ByteString,
}

/// What a [`Frame`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carries {
    /// The logged event of this seq, and its channel (`None`: of none, for
    /// every member); channel ids start at 1.
    Event { seq: i64, channel: Option<std::num::NonZeroI64> },
    /// Presence: not logged, never dropped for a replay.
    Ephemeral,
    /// Typing in a conversation of this channel: not logged either, but
    /// dropped with the channel's events when a held outbox learns the
    /// member lost it ([`Outbox::release`]).
    Typing { channel: std::num::NonZeroI64 },
    /// `channels.changed`: counted when written
    /// ([`Outbox::channels_told`]).
    ChannelsChanged,
}

impl Frame {
    /// The event's seq, for a logged event.
    pub fn seq(&self) -> Option<i64> {
        match self.carries {
            Carries::Event { seq, .. } => Some(seq),
            Carries::Ephemeral | Carries::Typing { .. } | Carries::ChannelsChanged => None,
        }
    }

    /// The channel whose access the frame needs, for an event or typing.
    fn channel(&self) -> Option<i64> {
        match self.carries {
            Carries::Event { channel, .. } => channel.map(|c| c.get()),
            Carries::Typing { channel } => Some(channel.get()),
            Carries::Ephemeral | Carries::ChannelsChanged => None,
        }
    }
}

/// Frames waiting for one session's socket.
#[derive(Default)]
struct Pending {
    frames: Vec<Frame>,
    /// The socket has been woken (or is replaying and will take everything
    /// when done) and has not emptied the outbox yet; the next frames just
    /// join.
    woken: bool,
    /// The session's replay is done: the socket may take frames, skipping
    /// those at or below `last_sent` (the replay sent them).
    live: bool,
    last_sent: i64,
    /// The session is closing: nothing more goes out.
    closed: bool,
    /// The writer has come to the outbox since the session went live. It
    /// serves the session's own frames first, so until then the socket is
    /// still writing its replay, and frames piling up are no sign of a
    /// client that stopped reading.
    drained: bool,
    /// Events past [`OUTBOX_LIMIT`] were dropped before that: they are in
    /// the log, and the session reads them there ([`ReplayStep::Again`])
    /// before the writer takes more.
    behind: bool,
    /// The session's replay handed the socket a page and reads the next
    /// when the writer comes here, i.e. once the socket has taken it
    /// ([`ReplayStep::NextPage`]).
    page_out: bool,
    /// The session, told when to read more of the log.
    session: Option<WeakRecipient<ReplayStep>>,
    /// Since when frames have waited with none taken: set when the outbox
    /// fills from empty, moved on at every take.
    waiting_since: Option<Instant>,
    /// Wakes the socket's writer when frames come.
    waker: Option<std::task::Waker>,
    /// How many `channels.changed` frames the writer has taken.
    channels_told: u64,
    /// The member's channels are being read again (the hub heard they
    /// changed): nothing goes out until the hub has the new list, and the
    /// frames from this index on, fanned out by the old list meanwhile, are
    /// then kept only if of a channel the member still sees
    /// ([`Outbox::release`]).
    held: Option<usize>,
}

/// Work on its way to the sockets of this instance: event batches sent to
/// the hub and not yet handled, plus sessions woken and not yet written.
/// The webhook processor lets it fall to zero before claiming after a large
/// batch, so that the more the sockets have to write, the larger the next
/// batch, and the fewer the writes per webhook.
#[derive(Default)]
pub struct Unwritten(AtomicUsize);

impl Unwritten {
    pub fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn done(&self) {
        // Never below zero: a miscount must not make the processor wait forever.
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
    }

    pub fn is_zero(&self) -> bool {
        self.0.load(Ordering::Relaxed) == 0
    }

    /// Batches and woken outboxes not written yet.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// A session's outbox, shared by the hub (appends), the session (says when
/// its replay is done, closes it) and the socket's writer (takes the oldest
/// frames, up to a socket write's worth at a time, see
/// [`Outbox::next_write`]). The hub wakes the writer only when the outbox
/// goes from idle to busy, so a socket that is busy or behind gets the
/// frames of many events in one write instead of one write each; an idle
/// one writes at once.
/// Nothing here waits on a client: an outbox that still holds more than
/// [`OUTBOX_LIMIT`] frames when more come means a client that stopped
/// reading.
pub struct Outbox {
    pending: std::sync::Mutex<Pending>,
    unwritten: Arc<Unwritten>,
}

/// Frames a session may have waiting from earlier deliveries when more
/// come before it counts as too slow (4408), if its socket took none for
/// [`STALLED_AFTER`]; [`READING_FACTOR`] times as many if it did (a client
/// that reads, behind in a burst). The delivery itself is not
/// counted: one can be larger than this for a socket that keeps up (a
/// backlog batch of 1,000 new conversations is 3,000 events or more, the
/// hub may hold batches to send together, and an admin sees them all), and
/// refusing it dropped sockets that had read everything. So an outbox
/// holds at most four times this plus one delivery.
pub const OUTBOX_LIMIT: usize = 4096;
/// See [`OUTBOX_LIMIT`].
pub const READING_FACTOR: usize = 4;
/// See [`OUTBOX_LIMIT`]: a socket that took nothing for this long has
/// stopped reading (deliveries can come faster than a busy socket's turn).
pub const STALLED_AFTER: Duration = Duration::from_secs(1);

impl Outbox {
    pub fn new(unwritten: Arc<Unwritten>) -> Outbox {
        Outbox { pending: Default::default(), unwritten }
    }

    /// Adds frames and wakes the socket's writer if it was idle (`Ok(true)`
    /// then). Taken by value: an idle outbox (the usual case) just keeps the
    /// list it is given.
    fn add(&self, mut frames: Vec<Frame>) -> Result<bool, ()> {
        let waker = {
            let mut p = self.pending.lock().map_err(|_| ())?;
            if p.closed {
                return Ok(false);
            }
            if p.frames.len() > OUTBOX_LIMIT && !p.drained {
                // A socket still replaying, in a burst. Typing and presence,
                // which are not logged, stay.
                p.frames.retain(|f| f.seq().is_none());
                frames.retain(|f| f.seq().is_none());
                p.behind = true;
                let kept = p.frames.len();
                p.held = p.held.map(|from| from.min(kept));
            }
            let now = Instant::now();
            let reading = p.waiting_since.is_none_or(|at| now.saturating_duration_since(at) < STALLED_AFTER);
            if p.frames.len() > OUTBOX_LIMIT * if reading { READING_FACTOR } else { 1 } {
                return Err(());
            }
            if p.frames.is_empty() {
                p.waiting_since = Some(now);
                p.frames = frames;
            } else {
                p.frames.extend(frames);
            }
            if std::mem::replace(&mut p.woken, true) {
                return Ok(false);
            }
            self.unwritten.add();
            if p.live {
                p.waker.take()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(true)
    }

    /// Whom to tell when the socket has taken a replay page
    /// ([`Pending::page_out`]) or the outbox dropped events
    /// ([`Pending::behind`]).
    pub fn replays_for(&self, session: WeakRecipient<ReplayStep>) {
        if let Ok(mut p) = self.pending.lock() {
            p.session = Some(session);
        }
    }

    /// The session handed the socket a page of its replay: it is told
    /// ([`ReplayStep::NextPage`]) when the writer has taken it, so a
    /// replay holds a page or two in memory, not the whole log after
    /// `since` (10,000 events of up to some KiB each, per resuming socket).
    pub fn page_written(&self) {
        let waker = {
            let Ok(mut p) = self.pending.lock() else { return };
            p.page_out = true;
            p.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The replay is done (it sent everything up to `last_sent`): frames
    /// go out from now on.
    pub fn go_live(&self, last_sent: i64) {
        let waker = {
            let Ok(mut p) = self.pending.lock() else { return };
            p.live = true;
            p.last_sent = p.last_sent.max(last_sent);
            p.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The member's channels may have changed: nothing goes out until the
    /// hub has read them again ([`Pending::held`]). Frames keep coming
    /// meanwhile, by the old list.
    pub fn hold(&self) {
        if let Ok(mut p) = self.pending.lock() {
            if p.held.is_none() {
                p.held = Some(p.frames.len());
            }
        }
    }

    /// The member's channels were read again: of the frames that came while
    /// they were read, events and typing of a channel not in `keep` (`None`:
    /// every channel) are dropped, and the writer goes on. A socket whose client
    /// stopped reading is told last: its actor, which reads the list, runs
    /// only when the socket can write, and the old list went on filling
    /// its outbox until then.
    pub fn release(&self, keep: Option<&HashSet<i64>>) {
        let waker = {
            let Ok(mut p) = self.pending.lock() else { return };
            let Some(from) = p.held.take() else { return };
            if let Some(keep) = keep {
                let from = from.min(p.frames.len());
                let mut i = 0;
                p.frames.retain(|f| {
                    i += 1;
                    i <= from || f.channel().is_none_or(|c| keep.contains(&c))
                });
                if p.frames.is_empty() && std::mem::replace(&mut p.woken, false) {
                    self.unwritten.done();
                }
            }
            if p.live && !p.frames.is_empty() {
                p.waker.take()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// How many `channels.changed` frames the socket has been handed: the
    /// client has heard of the newest of them, and of none after.
    pub fn channels_told(&self) -> u64 {
        self.pending.lock().map_or(0, |p| p.channels_told)
    }

    /// Nothing more goes out; what waits is dropped and stops counting as
    /// unwritten work. Whether it was open until now (a session closed by
    /// either side closed it first).
    pub fn close(&self) -> bool {
        let Ok(mut p) = self.pending.lock() else { return false };
        let was_open = !std::mem::replace(&mut p.closed, true);
        p.frames = Vec::new();
        p.waker = None;
        if std::mem::replace(&mut p.woken, false) {
            self.unwritten.done();
        }
        was_open
    }

    /// The socket's next write: the oldest frames, encoded as WebSocket text
    /// frames in one buffer, at most [`crate::realtime::session::WRITE_BUDGET`]
    /// bytes or [`crate::realtime::session::WRITE_FRAMES`] frames (at least
    /// one). `None` when there is nothing to send yet; `waker` is then
    /// called when there is.
    pub fn next_write(&self, waker: &std::task::Waker) -> Option<bytes::Bytes> {
        use crate::realtime::session::{WRITE_BUDGET, WRITE_FRAMES};
        loop {
            let frames = {
                let Ok(mut p) = self.pending.lock() else { return None };
                if !p.live && !p.closed && std::mem::take(&mut p.page_out) {
                    // The session's frames (the page) are all taken: the
                    // writer only comes here when it has none left.
                    let session = p.session.as_ref().and_then(|s| s.upgrade());
                    p.waker = Some(waker.clone());
                    drop(p);
                    if let Some(s) = session {
                        s.do_send(ReplayStep::NextPage);
                    }
                    return None;
                }
                if p.live && p.held.is_some() {
                    // Released (and woken) once the hub has the new list.
                    p.waker = Some(waker.clone());
                    return None;
                }
                if p.live && !p.closed && std::mem::take(&mut p.behind) {
                    // The replay is written; what was dropped meanwhile comes
                    // from the log, then live frames again (skipping what
                    // that replay sent).
                    p.live = false;
                    p.drained = false;
                    let (from, session) = (p.last_sent, p.session.as_ref().and_then(|s| s.upgrade()));
                    p.waker = Some(waker.clone());
                    drop(p);
                    if let Some(s) = session {
                        s.do_send(ReplayStep::Again { from });
                    }
                    return None;
                }
                if p.live {
                    p.drained = true;
                }
                if p.closed || !p.live || p.frames.is_empty() {
                    if !p.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                        p.waker = Some(waker.clone());
                    }
                    return None;
                }
                let (mut frames, _) = Self::take_locked(&mut p, &self.unwritten, WRITE_BUDGET, WRITE_FRAMES);
                // The replay already sent these.
                let last_sent = p.last_sent;
                frames.retain(|f| f.seq().is_none_or(|s| s > last_sent));
                if let Some(s) = frames.iter().filter_map(|f| f.seq()).max() {
                    p.last_sent = s;
                }
                p.channels_told += frames.iter().filter(|f| f.carries == Carries::ChannelsChanged).count() as u64;
                frames
            };
            if frames.is_empty() {
                continue;
            }
            crate::metrics::inc(&crate::metrics::WS_DELIVERIES, 1);
            crate::metrics::inc(&crate::metrics::WS_FRAMES, frames.len() as u64);
            return Some(encode_text_frames(&frames));
        }
    }

    /// Everything waiting (tests look at the outbox without a socket).
    #[cfg(test)]
    fn take(&self) -> Vec<Frame> {
        self.take_up_to(usize::MAX, usize::MAX).0
    }

    #[cfg(test)]
    fn take_up_to(&self, budget: usize, most: usize) -> (Vec<Frame>, bool) {
        let Ok(mut p) = self.pending.lock() else { return (Vec::new(), false) };
        Self::take_locked(&mut p, &self.unwritten, budget, most)
    }

    /// The oldest frames waiting, at most `most` of them and about `budget`
    /// bytes of text (at least one frame), and whether more wait. While
    /// more wait the outbox stays woken: new frames join without a wake-up
    /// and the writer comes back for them itself; once it has taken the
    /// last, the next frames wake it.
    fn take_locked(p: &mut Pending, unwritten: &Unwritten, budget: usize, most: usize) -> (Vec<Frame>, bool) {
        if !p.frames.is_empty() {
            p.waiting_since = Some(Instant::now());
        }
        let mut bytes = 0;
        let fit = p
            .frames
            .iter()
            .enumerate()
            .position(|(i, f)| {
                bytes += f.text.len();
                bytes > budget || i >= most
            })
            .map_or(p.frames.len(), |i| i.max(1));
        if fit < p.frames.len() {
            let rest = p.frames.split_off(fit);
            return (std::mem::replace(&mut p.frames, rest), true);
        }
        if std::mem::replace(&mut p.woken, false) {
            unwritten.done();
        }
        (std::mem::take(&mut p.frames), false)
    }
}

/// Frames as the server sends them on the wire (RFC 6455 §5.2: final,
/// text, unmasked), one after another in one buffer: each event's text is
/// copied once per socket, straight into what the socket writes.
pub fn encode_text_frames(frames: &[Frame]) -> bytes::Bytes {
    use bytes::BufMut;
    let header = |len: usize| match len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    };
    let total: usize = frames.iter().map(|f| header(f.text.len()) + f.text.len()).sum();
    let mut out = bytes::BytesMut::with_capacity(total);
    for f in frames {
        let len = f.text.len();
        out.put_u8(0x81);
        match len {
            0..=125 => out.put_u8(len as u8),
            126..=0xFFFF => {
                out.put_u8(126);
                out.put_u16(len as u16);
            }
            _ => {
                out.put_u8(127);
                out.put_u64(len as u64);
            }
        }
        out.put_slice(f.text.as_bytes());
    }
    out.freeze()
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // A session that ended with frames unwritten.
        if self.pending.get_mut().map(|p| p.woken).unwrap_or(false) {
            self.unwritten.done();
        }
    }
}

/// What an outbox tells its session's replay.
#[derive(Message)]
#[rtype(result = "()")]
pub enum ReplayStep {
    /// The socket has taken the replay's last page: read the next.
    NextPage,
    /// Events for this session were dropped while its socket caught up: it
    /// reads the log after `from` (the newest event it was sent), then
    /// goes live again.
    Again { from: i64 },
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseSession {
    pub code: u16,
    pub reason: &'static str,
}

/// Closes every socket of this instance (the server is going away);
/// answers how many there were.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseAll {
    pub code: u16,
    pub reason: &'static str,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct ReloadChannels;

#[derive(Message)]
#[rtype(result = "()")]
pub struct Join {
    pub id: u64,
    pub addr: Addr<WsSession>,
    pub outbox: Arc<Outbox>,
    pub tenant: i64,
    pub user: i64,
    pub family: String,
    /// `None`: sees every channel (admins).
    pub channels: Option<HashSet<i64>>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    pub id: u64,
}

/// A session read its member's channels. When they changed, the hub fans
/// out to it by the new set from now on, and the `channels.changed` frame
/// joins its outbox behind every frame fanned out by the old set, so that
/// the client hears of the change after the last event of a channel it
/// lost and before the first of one it gained. A read answering the latest
/// [`ReloadChannels`] also lets an outbox held since the hub heard of the
/// change go on ([`Outbox::release`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetChannels {
    pub id: u64,
    /// How many [`ReloadChannels`] the session had had when it asked for
    /// this read: only one asked after the latest lets the outbox go on.
    pub answers: u64,
    /// The new channels and their announcement; `None`: the read found
    /// them unchanged (or failed), and the outbox just goes on.
    pub change: Option<(Option<HashSet<i64>>, bytestring::ByteString)>,
}

/// How many sockets a member has open on this instance.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct SocketsOf {
    pub tenant: i64,
    pub user: i64,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct SetStated {
    pub id: u64,
    pub stated: Stated,
}

/// What a socket's client said of its agent (`{"type": "presence"}`);
/// a new socket is `Online`. An agent's presence is derived from these:
/// online while any socket says online, away while the rest say away,
/// offline with no socket or every one saying offline ("appear offline":
/// the socket still gets everything, colleagues see the agent gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stated {
    Online,
    Away,
    Offline,
}

impl Stated {
    pub fn parse(s: &str) -> Option<Stated> {
        match s {
            "online" => Some(Stated::Online),
            "away" => Some(Stated::Away),
            "offline" => Some(Stated::Offline),
            _ => None,
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Events {
    pub tenant: i64,
    pub events: Arc<Vec<StoredEvent>>,
    pub pace: Pace,
}

/// "Send whatever is held": the committer ran out of work.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Flush;

#[derive(Message)]
#[rtype(result = "()")]
pub struct Live(pub LiveMsg);

/// This instance's listener is (again) listening: ask the other instances
/// who is on their sockets.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WantPresence;

/// This instance's listener is listening again after a loss: the access
/// changes announced meanwhile (a member removed, a login ended, a
/// channel's list changed: live messages, not logged) were never heard,
/// so every session here reads its access again (and an agent's outbox
/// is held until then), as on a [`LiveMsg::Acl`] naming nobody; one whose
/// member or login is gone is closed by that read (4403, 4401).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CheckAccess;

#[derive(Message)]
#[rtype(result = "()")]
pub struct TypingFrom {
    pub id: u64,
    pub tenant: i64,
    pub conversation: i64,
    pub channel: i64,
    pub user: i64,
    pub name: String,
    pub on: bool,
}

struct Entry {
    addr: Addr<WsSession>,
    outbox: Arc<Outbox>,
    tenant: i64,
    user: i64,
    family: String,
    channels: Option<HashSet<i64>>,
    stated: Stated,
    /// How many [`ReloadChannels`] it was sent.
    reloads: u64,
}

impl Entry {
    /// Has the session read its member's channels again. An agent's outbox
    /// holds what comes meanwhile until the new list is in
    /// ([`Outbox::hold`]); an admin sees every channel whatever changed.
    fn reload_channels(&mut self) {
        if self.channels.is_some() {
            self.outbox.hold();
        }
        self.reloads += 1;
        crate::metrics::inc(&crate::metrics::WS_CHANNEL_READS, 1);
        self.addr.do_send(ReloadChannels);
    }
}

type Ids = HashSet<u64>;

/// Who is where: sessions by tenant, by user and by channel, so a fan-out
/// costs the frames it delivers, not a scan of every socket of the tenant.
/// A session is either in `all_channels` (admins) or under each of its
/// channels in `by_channel`, never both.
#[derive(Default)]
struct Index {
    sessions: HashMap<u64, Entry>,
    by_tenant: HashMap<i64, Ids>,
    by_user: HashMap<(i64, i64), Ids>,
    by_channel: HashMap<(i64, i64), Ids>,
    all_channels: HashMap<i64, Ids>,
}

fn unlink<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Ids>, key: K, id: u64) {
    if let Some(set) = map.get_mut(&key) {
        set.remove(&id);
        if set.is_empty() {
            map.remove(&key);
        }
    }
}

impl Index {
    fn link_channels(&mut self, id: u64, tenant: i64, channels: &Option<HashSet<i64>>) {
        match channels {
            None => {
                self.all_channels.entry(tenant).or_default().insert(id);
            }
            Some(set) => {
                for c in set {
                    self.by_channel.entry((tenant, *c)).or_default().insert(id);
                }
            }
        }
    }

    fn unlink_channels(&mut self, id: u64, tenant: i64, channels: &Option<HashSet<i64>>) {
        match channels {
            None => unlink(&mut self.all_channels, tenant, id),
            Some(set) => {
                for c in set {
                    unlink(&mut self.by_channel, (tenant, *c), id);
                }
            }
        }
    }

    fn insert(&mut self, id: u64, e: Entry) {
        self.by_tenant.entry(e.tenant).or_default().insert(id);
        self.by_user.entry((e.tenant, e.user)).or_default().insert(id);
        self.link_channels(id, e.tenant, &e.channels);
        self.sessions.insert(id, e);
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.sessions.remove(&id)?;
        unlink(&mut self.by_tenant, e.tenant, id);
        unlink(&mut self.by_user, (e.tenant, e.user), id);
        self.unlink_channels(id, e.tenant, &e.channels);
        Some(e)
    }

    fn set_channels(&mut self, id: u64, channels: Option<HashSet<i64>>) {
        let Some(e) = self.sessions.get(&id) else { return };
        let (tenant, old) = (e.tenant, e.channels.clone());
        self.unlink_channels(id, tenant, &old);
        self.link_channels(id, tenant, &channels);
        if let Some(e) = self.sessions.get_mut(&id) {
            e.channels = channels;
        }
    }

    /// The sessions that may see an event of `channel` (`None`: tenant-wide).
    fn audience(&self, tenant: i64, channel: Option<i64>) -> Vec<u64> {
        let empty = Ids::new();
        match channel {
            None => self.by_tenant.get(&tenant).unwrap_or(&empty).iter().copied().collect(),
            Some(c) => {
                let members = self.by_channel.get(&(tenant, c)).unwrap_or(&empty);
                let admins = self.all_channels.get(&tenant).unwrap_or(&empty);
                members.iter().chain(admins.iter()).copied().collect()
            }
        }
    }

    /// The sessions of `user` that may see an event of `channel`: an event
    /// for one member ([`StoredEvent::for_user_id`]).
    fn audience_of(&self, tenant: i64, channel: Option<i64>, user: i64) -> Vec<u64> {
        let Some(ids) = self.by_user.get(&(tenant, user)) else { return Vec::new() };
        let sees = |id: &u64| match (channel, self.sessions.get(id)) {
            (None, Some(_)) => true,
            (Some(c), Some(e)) => e.channels.as_ref().is_none_or(|set| set.contains(&c)),
            (_, None) => false,
        };
        ids.iter().copied().filter(sees).collect()
    }

    fn of_user(&self, tenant: i64, user: i64) -> Vec<u64> {
        self.by_user.get(&(tenant, user)).map(|s| s.iter().copied().collect()).unwrap_or_default()
    }
}

pub struct Hub {
    instance: String,
    bus: Arc<dyn Bus>,
    active: ActiveTenants,
    unwritten: Arc<Unwritten>,
    index: Index,
    typing: HashMap<(i64, i64, i64), (Instant, i64, String)>,
    /// An expiry check of `typing` is scheduled ([`Hub::expire_typing`]):
    /// only while someone types, so an idle hub sleeps.
    typing_check_due: bool,
    presence: HashMap<(i64, i64), HashMap<String, (u32, bool)>>,
    /// Per tenant, the users shown online or away, with the frame that said
    /// so: a socket that joins gets these first (nobody else would tell it
    /// who is already there). Offline users are not kept.
    shown: HashMap<i64, HashMap<i64, (&'static str, Frame)>>,
    holds: Holds,
    /// When `presence_now` last warned of a tenant too large to tell about
    /// (once a minute, not once per joining socket of a reconnect storm).
    presence_warned: Option<Instant>,
    /// Users whose sockets here changed since the last presence tick.
    presence_dirty: std::collections::HashSet<(i64, i64)>,
    /// A presence tick is due ([`FlushPresence`], [`PRESENCE_TICK`] after
    /// the first change): ticks come only when something changed, so an
    /// idle hub sleeps.
    presence_tick_due: bool,
    /// This hub, once started: whom the tick is sent to (weak: a hub
    /// must not keep itself alive).
    me: Option<WeakAddr<Hub>>,
    /// Other instances that said they are alive, and when they were last
    /// heard from (see [`LiveMsg::Alive`]).
    instances: HashMap<String, Instant>,
    /// When this instance's own `Alive` last came back through the bus: if
    /// it stops coming, this instance is the deaf one (its listener is
    /// down), and it takes nobody for dead.
    own_alive_heard: Instant,
    /// Set by [`CloseAll`]: the server is going away, and a socket that
    /// joins after it is closed the same way.
    closing: Option<CloseSession>,
    /// This instance's kept template lists, dropped when any instance
    /// hears Meta changed one ([`LiveMsg::Templates`]).
    templates: Arc<crate::inbox::templates::TemplateCache>,
    /// Who is online, as `shown` says, for the webhook processor.
    online: Arc<super::Online>,
}

/// What a hub shares with the rest of its instance.
pub struct Shared {
    pub templates: Arc<crate::inbox::templates::TemplateCache>,
    pub online: Arc<super::Online>,
}

impl Hub {
    pub fn new(
        instance: String,
        bus: Arc<dyn Bus>,
        active: ActiveTenants,
        unwritten: Arc<Unwritten>,
        shared: Shared,
    ) -> Hub {
        Hub {
            instance,
            templates: shared.templates,
            online: shared.online,
            bus,
            active,
            unwritten,
            index: Index::default(),
            typing: HashMap::new(),
            typing_check_due: false,
            presence: HashMap::new(),
            shown: HashMap::new(),
            holds: Holds::default(),
            presence_warned: None,
            presence_dirty: Default::default(),
            presence_tick_due: false,
            me: None,
            instances: HashMap::new(),
            own_alive_heard: Instant::now(),
            closing: None,
        }
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.index.remove(id)?;
        if !self.index.by_tenant.contains_key(&e.tenant) {
            if let Ok(mut a) = self.active.write() {
                a.remove(&e.tenant);
            }
        }
        Some(e)
    }

    /// Queues frames for one session without waiting; an overflowing outbox
    /// (a client that stopped reading) drops the session.
    fn send(&mut self, id: u64, frames: Vec<Frame>) {
        let Some(e) = self.index.sessions.get(&id) else { return };
        let wake = match e.outbox.add(frames) {
            Ok(wake) => wake,
            Err(()) => {
                tracing::info!(session = id, "socket too slow; closing it");
                crate::metrics::inc(&crate::metrics::WS_TOO_SLOW, 1);
                // Its frames are dropped (it resumes with `since`), and it no
                // longer counts as unwritten work while its actor winds down.
                e.outbox.close();
                let addr = e.addr.clone();
                let (tenant, user) = (e.tenant, e.user);
                self.remove(id);
                addr.do_send(CloseSession { code: CLOSE_TOO_SLOW, reason: "too slow; reconnect with since" });
                self.note_presence(tenant, user);
                return;
            }
        };
        if wake && !e.addr.connected() {
            if let Some(e) = self.remove(id) {
                self.note_presence(e.tenant, e.user);
            }
        }
    }

    /// To everyone who sees `channel`, but never to the sockets of `except_user`.
    fn broadcast(&mut self, tenant: i64, channel: Option<i64>, frame: Frame, except_user: Option<i64>) {
        let skip = except_user.map(|u| self.index.of_user(tenant, u)).unwrap_or_default();
        for id in self.index.audience(tenant, channel) {
            if !skip.contains(&id) {
                self.send(id, vec![frame.clone()]);
            }
        }
    }

    fn publish(&self, msg: LiveMsg) {
        let bus = self.bus.clone();
        let work = move || {
            if let Err(e) = bus.publish(&msg) {
                tracing::warn!(error = ?e, "could not publish a live message");
            }
        };
        // Dropped with its runtime (the process ending), the hub has no
        // blocking pool to hand its last presence to: it publishes in place
        // rather than panic.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(work)),
            Err(_) => work(),
        }
    }

    /// A user's sockets here changed (joined, left, away): their presence
    /// goes out with the next tick's ([`PRESENCE_TICK`]), due from now if
    /// none is.
    fn note_presence(&mut self, tenant: i64, user: i64) {
        self.presence_dirty.insert((tenant, user));
        if self.presence_tick_due {
            return;
        }
        let (Some(me), Ok(runtime)) = (self.me.clone(), tokio::runtime::Handle::try_current()) else { return };
        self.presence_tick_due = true;
        runtime.spawn(async move {
            tokio::time::sleep(PRESENCE_TICK).await;
            if let Some(hub) = me.upgrade() {
                hub.do_send(FlushPresence);
            }
        });
    }

    /// Sends the presence changed since the last tick: to the other
    /// instances in parts of [`PRESENCE_PART`](super::bus::PRESENCE_PART)
    /// users, to this instance's sockets at once. A reconnect storm of N
    /// agents thus costs a NOTIFY per part and, per socket, one delivery a
    /// tick, instead of a NOTIFY per socket and N² deliveries.
    fn flush_presence(&mut self) {
        if self.presence_dirty.is_empty() {
            return;
        }
        let dirty: Vec<(i64, i64)> = self.presence_dirty.drain().collect();
        let mine: Vec<(i64, i64, u32, bool)> = dirty
            .into_iter()
            .map(|(tenant, user)| {
                let sockets = self.index.of_user(tenant, user);
                let (n, away) = shown(sockets.iter().filter_map(|id| self.index.sessions.get(id)).map(|e| e.stated));
                (tenant, user, n, away)
            })
            .collect();
        for part in mine.chunks(super::bus::PRESENCE_PART) {
            self.publish(LiveMsg::PresenceOf { inst: self.instance.clone(), users: part.to_vec() });
        }
        let inst = self.instance.clone();
        self.heard_presence(&inst, mine);
    }

    /// An instance's view of users (sockets there, all away or not); each
    /// tenant's sockets get that tenant's changes in one delivery.
    fn heard_presence(&mut self, inst: &str, users: Vec<(i64, i64, u32, bool)>) {
        let mut changed: HashMap<i64, Vec<Frame>> = HashMap::new();
        for (tenant, user, n, away) in users {
            self.presence.entry((tenant, user)).or_default().insert(inst.to_string(), (n, away));
            if let Some(frame) = self.presence_changed(tenant, user) {
                changed.entry(tenant).or_default().push(frame);
            }
        }
        for (tenant, frames) in changed {
            for id in self.index.audience(tenant, None) {
                self.send(id, frames.clone());
            }
        }
    }

    /// A dead instance's sockets are gone: its users go offline unless
    /// another instance has them.
    fn forget_instance(&mut self, inst: &str) {
        self.instances.remove(inst);
        let users: Vec<(i64, i64)> =
            self.presence.iter().filter(|(_, by)| by.contains_key(inst)).map(|(k, _)| *k).collect();
        // As if it had said so: no sockets there.
        self.heard_presence(inst, users.into_iter().map(|(t, u)| (t, u, 0, false)).collect());
        self.presence.retain(|_, by| {
            by.remove(inst);
            !by.is_empty()
        });
    }

    /// The frame announcing `user`'s presence, if it is not what was shown.
    fn presence_changed(&mut self, tenant: i64, user: i64) -> Option<Frame> {
        let status = match self.presence.get(&(tenant, user)) {
            Some(m) if m.values().any(|(n, away)| *n > 0 && !away) => "online",
            Some(m) if m.values().any(|(n, _)| *n > 0) => "away",
            _ => "offline",
        };
        let was = self.shown.get(&tenant).and_then(|users| users.get(&user)).map_or("offline", |(s, _)| *s);
        if was == status {
            return None;
        }
        self.online.set(tenant, user, status == "online");
        let frame =
            json!({"type": "presence", "at": Utc::now(), "data": {"user_id": user.to_string(), "status": status}});
        let frame = Frame { carries: Carries::Ephemeral, text: frame.to_string().into() };
        let users = self.shown.entry(tenant).or_default();
        if status == "offline" {
            users.remove(&user);
            if users.is_empty() {
                self.shown.remove(&tenant);
            }
        } else {
            users.insert(user, (status, frame.clone()));
        }
        Some(frame)
    }

    /// Who is online or away in `tenant`, as the frames that said so (at
    /// most half an outbox: a tenant with more agents online than that is
    /// past what per-user presence frames can serve).
    fn presence_now(&mut self, tenant: i64) -> Vec<Frame> {
        let Some(users) = self.shown.get(&tenant) else { return Vec::new() };
        let quiet = self.presence_warned.is_some_and(|at| at.elapsed() < Duration::from_secs(60));
        if users.len() > OUTBOX_LIMIT / 2 && !quiet {
            tracing::warn!(tenant, online = users.len(), "too many agents online to tell a new socket about each");
            self.presence_warned = Some(Instant::now());
        }
        users.values().take(OUTBOX_LIMIT / 2).map(|(_, f)| f.clone()).collect()
    }

    /// Typing expires [`TYPING_TTL`] after its last renewal: checked every
    /// [`TYPING_CHECK`] while anyone types, not at all otherwise.
    fn check_typing_soon(&mut self, ctx: &mut Context<Self>) {
        if !self.typing_check_due && !self.typing.is_empty() {
            self.typing_check_due = true;
            ctx.run_later(TYPING_CHECK, |hub, ctx| hub.expire_typing(ctx));
        }
    }

    fn expire_typing(&mut self, ctx: &mut Context<Self>) {
        self.typing_check_due = false;
        let now = Instant::now();
        let expired: Vec<_> =
            self.typing.iter().filter(|(_, (at, _, _))| *at <= now).map(|(k, v)| (*k, v.1, v.2.clone())).collect();
        for ((tenant, conv, user), channel, name) in expired {
            self.typing.remove(&(tenant, conv, user));
            self.broadcast(tenant, Some(channel), Hub::typing_frame(conv, channel, user, &name, false), Some(user));
        }
        self.check_typing_soon(ctx);
    }

    fn typing_frame(conv: i64, channel: i64, user: i64, name: &str, on: bool) -> Frame {
        let frame = json!({"type": "typing", "at": Utc::now(), "data": {
            "conversation_id": conv.to_string(), "user_id": user.to_string(), "name": name, "on": on}});
        let carries =
            std::num::NonZeroI64::new(channel).map_or(Carries::Ephemeral, |channel| Carries::Typing { channel });
        Frame { carries, text: frame.to_string().into() }
    }
}

/// The instances silent for three periods of `alive`, taken for dead; none
/// while this instance's own `Alive` has not come back for as long (its
/// listener is down: it is the one that hears nothing).
fn silent_instances(
    instances: &HashMap<String, Instant>,
    own_heard: Instant,
    now: Instant,
    alive: Duration,
) -> Vec<String> {
    let silent = |at: Instant| now.saturating_duration_since(at) > 3 * alive;
    if silent(own_heard) {
        return Vec::new();
    }
    instances.iter().filter(|(_, at)| silent(**at)).map(|(i, _)| i.clone()).collect()
}

impl Actor for Hub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.me = Some(ctx.address().downgrade());
        let alive = super::bus::presence_alive();
        ctx.run_interval(alive, move |hub, _| {
            hub.publish(LiveMsg::Alive { inst: hub.instance.clone() });
            for inst in silent_instances(&hub.instances, hub.own_alive_heard, Instant::now(), alive) {
                tracing::info!(instance = %inst, "an instance fell silent; forgetting its sockets");
                hub.forget_instance(&inst);
            }
        });
    }

    /// Shutting down: what the last tick did not send yet goes now (best
    /// effort: the other instances hear of the sockets closed here).
    fn stopped(&mut self, _: &mut Self::Context) {
        self.flush_presence();
    }
}

impl Handler<Join> for Hub {
    type Result = ();
    fn handle(&mut self, m: Join, _: &mut Context<Self>) {
        if let Ok(mut a) = self.active.write() {
            a.insert(m.tenant);
        }
        let entry = Entry {
            addr: m.addr,
            outbox: m.outbox,
            tenant: m.tenant,
            user: m.user,
            family: m.family,
            channels: m.channels,
            stated: Stated::Online,
            reloads: 0,
        };
        if let Some(c) = &self.closing {
            entry.addr.do_send(CloseSession { code: c.code, reason: c.reason });
        }
        self.index.insert(m.id, entry);
        let now = self.presence_now(m.tenant);
        if !now.is_empty() {
            self.send(m.id, now);
        }
        self.note_presence(m.tenant, m.user);
    }
}

impl Handler<SocketsOf> for Hub {
    type Result = usize;
    fn handle(&mut self, m: SocketsOf, _: &mut Context<Self>) -> usize {
        self.index.by_user.get(&(m.tenant, m.user)).map_or(0, HashSet::len)
    }
}

impl Handler<Leave> for Hub {
    type Result = ();
    fn handle(&mut self, m: Leave, _: &mut Context<Self>) {
        if let Some(e) = self.remove(m.id) {
            self.note_presence(e.tenant, e.user);
        }
    }
}

impl Handler<CloseAll> for Hub {
    type Result = usize;
    fn handle(&mut self, m: CloseAll, _: &mut Context<Self>) -> usize {
        self.closing = Some(CloseSession { code: m.code, reason: m.reason });
        for e in self.index.sessions.values() {
            e.addr.do_send(CloseSession { code: m.code, reason: m.reason });
        }
        self.index.sessions.len()
    }
}

impl Handler<SetChannels> for Hub {
    type Result = ();
    fn handle(&mut self, m: SetChannels, _: &mut Context<Self>) {
        if let Some((channels, announce)) = m.change {
            self.index.set_channels(m.id, channels);
            self.send(m.id, vec![Frame { carries: Carries::ChannelsChanged, text: announce }]);
        }
        // A read asked before the latest reload may predate the change it
        // announced: the outbox waits for the next.
        if let Some(e) = self.index.sessions.get(&m.id).filter(|e| e.reloads == m.answers) {
            e.outbox.release(e.channels.as_ref());
        }
    }
}

impl Handler<SetStated> for Hub {
    type Result = ();
    fn handle(&mut self, m: SetStated, _: &mut Context<Self>) {
        let Some(e) = self.index.sessions.get_mut(&m.id) else { return };
        if e.stated == m.stated {
            return;
        }
        e.stated = m.stated;
        let (t, u) = (e.tenant, e.user);
        self.note_presence(t, u);
    }
}

impl Handler<Events> for Hub {
    type Result = ();
    fn handle(&mut self, m: Events, ctx: &mut Context<Self>) {
        // Each batch counts as unwritten from its hand-over (bus::Feed, the
        // listener) until its sessions are woken; a held one stops counting
        // at once: the processor goes on with its next batch, which brings
        // it out.
        match self.holds.take(m, Instant::now()) {
            Take::Send(batches) => {
                self.deliver(batches);
                self.unwritten.done();
            }
            Take::Joined => {
                crate::metrics::inc(&crate::metrics::HUB_HELD, 1);
                self.unwritten.done();
            }
            Take::Started(generation) => {
                crate::metrics::inc(&crate::metrics::HUB_HELD, 1);
                self.unwritten.done();
                ctx.run_later(HOLD_MAX, move |hub, _| {
                    if let Some(batches) = hub.holds.release_if(generation) {
                        hub.deliver(batches);
                    }
                });
            }
        }
    }
}

/// The presence tick ([`Hub::note_presence`]).
#[derive(Message)]
#[rtype(result = "()")]
struct FlushPresence;

impl Handler<FlushPresence> for Hub {
    type Result = ();
    fn handle(&mut self, _: FlushPresence, _: &mut Context<Self>) {
        self.presence_tick_due = false;
        self.flush_presence();
    }
}

impl Handler<Flush> for Hub {
    type Result = ();
    fn handle(&mut self, _: Flush, _: &mut Context<Self>) {
        let batches = self.holds.release();
        if !batches.is_empty() {
            self.deliver(batches);
        }
    }
}

/// Batches held back to go out with a later one.
struct Held {
    batches: Vec<Events>,
    since: Instant,
    /// Tells the `HOLD_MAX` timer whether its hold is still the one waiting.
    generation: u64,
}

/// The hub's backlog hold (see the module docs), apart from the sockets
/// so its rules can be tested alone.
#[derive(Default)]
struct Holds {
    held: Option<Held>,
    started: u64,
}

enum Take {
    /// Send these now (what was held, then the new batch).
    Send(Vec<Events>),
    /// Joined the hold already waiting.
    Joined,
    /// Started a hold; its `HOLD_MAX` timer names this generation.
    Started(u64),
}

impl Holds {
    fn take(&mut self, m: Events, now: Instant) -> Take {
        if m.pace == Pace::Backlog {
            match &mut self.held {
                Some(h) if now.saturating_duration_since(h.since) < HOLD_WHILE => {
                    h.batches.push(m);
                    return Take::Joined;
                }
                None => {
                    self.started += 1;
                    self.held = Some(Held { batches: vec![m], since: now, generation: self.started });
                    return Take::Started(self.started);
                }
                Some(_) => {}
            }
        }
        let mut all = self.release();
        all.push(m);
        Take::Send(all)
    }

    /// Everything held, oldest first.
    fn release(&mut self) -> Vec<Events> {
        self.held.take().map(|h| h.batches).unwrap_or_default()
    }

    /// What is held, if it is still the hold of `generation`.
    fn release_if(&mut self, generation: u64) -> Option<Vec<Events>> {
        if self.held.as_ref()?.generation == generation {
            Some(self.release())
        } else {
            None
        }
    }
}

impl Hub {
    /// Each session gets its frames of all `batches`, in the order they
    /// were committed, as one delivery.
    fn deliver(&mut self, batches: Vec<Events>) {
        let mut out: HashMap<u64, Vec<Frame>> = HashMap::new();
        let mut audience: HashMap<(i64, Option<i64>, Option<i64>), Vec<u64>> = HashMap::new();
        for m in &batches {
            for ev in m.events.iter() {
                let channel = ev.channel_id.and_then(std::num::NonZeroI64::new);
                let frame = Frame { carries: Carries::Event { seq: ev.seq, channel }, text: ev.frame().into() };
                let index = &self.index;
                let ids =
                    audience.entry((m.tenant, ev.channel_id, ev.for_user_id)).or_insert_with(|| match ev.for_user_id {
                        Some(user) => index.audience_of(m.tenant, ev.channel_id, user),
                        None => index.audience(m.tenant, ev.channel_id),
                    });
                for id in ids.iter() {
                    out.entry(*id).or_default().push(frame.clone());
                }
            }
        }
        for (id, frames) in out {
            self.send(id, frames);
        }
    }
}

impl Handler<TypingFrom> for Hub {
    type Result = ();
    fn handle(&mut self, m: TypingFrom, _: &mut Context<Self>) {
        self.publish(LiveMsg::Typing {
            t: m.tenant,
            conv: m.conversation,
            ch: m.channel,
            u: m.user,
            name: m.name,
            on: m.on,
        });
    }
}

impl Handler<CheckAccess> for Hub {
    type Result = ();
    fn handle(&mut self, _: CheckAccess, _: &mut Context<Self>) {
        for e in self.index.sessions.values_mut() {
            e.reload_channels();
        }
    }
}

impl Handler<WantPresence> for Hub {
    type Result = ();
    fn handle(&mut self, _: WantPresence, _: &mut Context<Self>) {
        self.publish(LiveMsg::PresenceWanted { inst: self.instance.clone() });
    }
}

/// How one instance shows a user, from their sockets there: (sockets that
/// show them, all of those away). What crosses instances; a socket saying
/// offline counts as none.
fn shown(stated: impl IntoIterator<Item = Stated>) -> (u32, bool) {
    let (mut n, mut away) = (0, true);
    for s in stated {
        if s != Stated::Offline {
            n += 1;
            away &= s == Stated::Away;
        }
    }
    (n, n > 0 && away)
}

impl Hub {
    /// Every user with sockets here: (tenant, user, sockets, all away).
    fn presence_here(&self) -> Vec<(i64, i64, u32, bool)> {
        let mut users: HashMap<(i64, i64), Vec<Stated>> = HashMap::new();
        for e in self.index.sessions.values() {
            users.entry((e.tenant, e.user)).or_default().push(e.stated);
        }
        users
            .into_iter()
            .map(|((t, u), stated)| {
                let (n, away) = shown(stated);
                (t, u, n, away)
            })
            .collect()
    }
}

impl Handler<Live> for Hub {
    type Result = ();
    fn handle(&mut self, Live(msg): Live, ctx: &mut Context<Self>) {
        // Any word from an instance known to be alive keeps it so.
        if let LiveMsg::Alive { inst } | LiveMsg::PresenceOf { inst, .. } | LiveMsg::Presence { inst, .. } = &msg {
            if *inst != self.instance
                && (matches!(msg, LiveMsg::Alive { .. }) || self.instances.contains_key(inst.as_str()))
            {
                self.instances.insert(inst.clone(), Instant::now());
            }
        }
        match msg {
            LiveMsg::Alive { inst } if inst == self.instance => self.own_alive_heard = Instant::now(),
            LiveMsg::Alive { .. } => {}
            LiveMsg::PresenceWanted { inst } if inst != self.instance => {
                for users in self.presence_here().chunks(super::bus::PRESENCE_PART) {
                    self.publish(LiveMsg::PresenceOf { inst: self.instance.clone(), users: users.to_vec() });
                }
            }
            LiveMsg::PresenceOf { inst, users } if inst != self.instance => self.heard_presence(&inst, users),
            // Our own question, answer or changes, come back through the bus
            // (the changes were applied here when sent).
            LiveMsg::PresenceWanted { .. } | LiveMsg::PresenceOf { .. } => {}
            LiveMsg::Typing { t, conv, ch, u, name, on } => {
                if on {
                    self.typing.insert((t, conv, u), (Instant::now() + TYPING_TTL, ch, name.clone()));
                    self.check_typing_soon(ctx);
                } else {
                    self.typing.remove(&(t, conv, u));
                }
                // Never echoed to its sender (any of the sender's own sockets).
                self.broadcast(t, Some(ch), Hub::typing_frame(conv, ch, u, &name, on), Some(u));
            }
            // From an instance of an earlier release (this one sends
            // `PresenceOf`); never our own.
            LiveMsg::Presence { t, u, inst, n, away } if inst != self.instance => {
                self.heard_presence(&inst, vec![(t, u, n, away)])
            }
            LiveMsg::Presence { .. } => {}
            LiveMsg::Templates { waba } => self.templates.forget(&waba),
            LiveMsg::Acl { t, u } => {
                let ids = match u {
                    Some(users) => users.into_iter().flat_map(|u| self.index.of_user(t, u)).collect(),
                    None => self.index.audience(t, None),
                };
                for id in ids {
                    if let Some(e) = self.index.sessions.get_mut(&id) {
                        e.reload_channels();
                    }
                }
            }
            LiveMsg::Removed { t, u } => {
                let ids = if u == 0 { self.index.audience(t, None) } else { self.index.of_user(t, u) };
                for id in ids {
                    if let Some(e) = self.remove(id) {
                        e.addr
                            .do_send(CloseSession { code: CLOSE_REMOVED, reason: "no longer a member of this tenant" });
                        self.note_presence(e.tenant, e.user);
                    }
                }
            }
            LiveMsg::Revoked { t, u, family } => {
                let ids: Vec<u64> = self
                    .index
                    .of_user(t, u)
                    .into_iter()
                    .filter(|id| {
                        self.index.sessions.get(id).is_some_and(|e| family.as_ref().is_none_or(|f| *f == e.family))
                    })
                    .collect();
                // No family: every login of the member at once, which only
                // a role change ends (the reason a socket's own refused
                // read gives too, `session::refusal`).
                let reason = if family.is_none() { "your role changed" } else { "this login ended" };
                for id in ids {
                    if let Some(e) = self.remove(id) {
                        e.addr.do_send(CloseSession { code: CLOSE_LOGGED_OUT, reason });
                        self.note_presence(e.tenant, e.user);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_that_hears_nothing_takes_nobody_for_dead() {
        let alive = Duration::from_secs(30);
        let start = Instant::now();
        let instances: HashMap<String, Instant> =
            [("quiet".to_string(), start), ("talking".to_string(), start + Duration::from_secs(80))].into();
        let now = start + Duration::from_secs(100);
        // Hearing itself: the one silent for 100 s (> 90) is dead.
        assert_eq!(
            silent_instances(&instances, start + Duration::from_secs(95), now, alive),
            vec!["quiet".to_string()]
        );
        // Its own Alive last came back 100 s ago: its listener is down, the
        // silence is its own; nobody is forgotten.
        assert!(silent_instances(&instances, start, now, alive).is_empty());
        // Back within three periods of hearing itself: both stay.
        assert!(silent_instances(&instances, now, start + Duration::from_secs(85), alive).is_empty());
    }

    #[test]
    fn a_user_is_shown_by_the_sockets_that_do_not_say_offline() {
        use Stated::*;
        assert_eq!(shown([]), (0, false), "no socket");
        assert_eq!(shown([Online, Away]), (2, false), "one tab online");
        assert_eq!(shown([Away, Away]), (2, true));
        assert_eq!(shown([Offline, Away]), (1, true), "the other tab away");
        assert_eq!(shown([Offline, Offline]), (0, false), "appearing offline");
    }

    fn frame(seq: i64) -> Frame {
        Frame { carries: Carries::Event { seq, channel: None }, text: format!("{{\"seq\":{seq}}}").into() }
    }

    /// The texts of the frames in one socket write.
    fn texts(write: bytes::Bytes) -> Vec<String> {
        let mut wire = bytes::BytesMut::from(&write[..]);
        let mut texts = Vec::new();
        while let Ok(Some((_, _, Some(p)))) = actix_http::ws::Parser::parse(&mut wire, false, usize::MAX) {
            texts.push(String::from_utf8_lossy(&p).into_owned());
        }
        texts
    }

    #[test]
    fn unwritten_counts_woken_outboxes_until_taken_or_dropped() {
        let unwritten = Arc::new(Unwritten::default());
        let a = Outbox::new(unwritten.clone());
        assert_eq!(a.add(vec![frame(1)]), Ok(true), "idle to busy wakes");
        assert_eq!(a.add(vec![frame(2), frame(3)]), Ok(false), "busy: frames just join");
        assert!(!unwritten.is_zero());
        let taken: Vec<i64> = a.take().iter().filter_map(|f| f.seq()).collect();
        assert_eq!(taken, vec![1, 2, 3]);
        assert!(unwritten.is_zero());
        // A session that ends with frames waiting no longer counts.
        let b = Outbox::new(unwritten.clone());
        assert_eq!(b.add(vec![frame(4)]), Ok(true));
        drop(b);
        assert!(unwritten.is_zero());
        // A miscount never wraps below zero.
        unwritten.done();
        unwritten.add();
        assert!(!unwritten.is_zero());
        unwritten.done();
        assert!(unwritten.is_zero());
    }

    fn batch(first: i64, pace: Pace) -> Events {
        let ev = |seq| StoredEvent {
            seq,
            kind: "message.created".into(),
            channel_id: Some(1),
            conversation_id: Some(1),
            data: "{}".into(),
            at: Utc::now(),
            for_user_id: None,
        };
        Events { tenant: 1, events: Arc::new(vec![ev(first), ev(first + 1)]), pace }
    }

    fn firsts(batches: &[Events]) -> Vec<i64> {
        batches.iter().map(|b| b.events[0].seq).collect()
    }

    #[test]
    fn a_backlog_batch_waits_for_the_next_and_goes_out_with_it_in_order() {
        let mut holds = Holds::default();
        let t0 = Instant::now();
        assert!(matches!(holds.take(batch(1, Pace::Backlog), t0), Take::Started(1)));
        // Backlog batches join while the hold is young...
        assert!(matches!(holds.take(batch(3, Pace::Backlog), t0 + HOLD_WHILE / 2), Take::Joined));
        // ...and the first one after that sends everything, oldest first.
        match holds.take(batch(5, Pace::Backlog), t0 + HOLD_WHILE) {
            Take::Send(b) => assert_eq!(firsts(&b), vec![1, 3, 5]),
            _ => panic!("an old hold must go out"),
        }
        assert!(holds.release().is_empty(), "nothing left behind");
    }

    #[test]
    fn a_batch_that_must_go_now_sends_what_is_held_first() {
        let mut holds = Holds::default();
        let t0 = Instant::now();
        // A trickle, an agent's change: never held.
        match holds.take(batch(1, Pace::Now), t0) {
            Take::Send(b) => assert_eq!(firsts(&b), vec![1]),
            _ => panic!("never held"),
        }
        assert!(matches!(holds.take(batch(3, Pace::Backlog), t0), Take::Started(1)));
        match holds.take(batch(5, Pace::Now), t0) {
            Take::Send(b) => assert_eq!(firsts(&b), vec![3, 5]),
            _ => panic!("must go now"),
        }
    }

    #[test]
    fn the_timer_releases_only_its_own_hold() {
        let mut holds = Holds::default();
        let t0 = Instant::now();
        assert!(matches!(holds.take(batch(1, Pace::Backlog), t0), Take::Started(1)));
        // The processor ran out of work (Flush): out it goes.
        assert_eq!(firsts(&holds.release()), vec![1]);
        assert!(matches!(holds.take(batch(3, Pace::Backlog), t0), Take::Started(2)));
        assert!(holds.release_if(1).is_none(), "the first hold's timer finds a newer hold");
        assert_eq!(holds.release_if(2).map(|b| firsts(&b)), Some(vec![3]));
        assert!(holds.release_if(2).is_none());
    }

    #[test]
    fn a_budgeted_take_leaves_the_rest_woken_and_in_order() {
        let unwritten = Arc::new(Unwritten::default());
        let o = Outbox::new(unwritten.clone());
        // Each frame's text is 9 or 10 bytes ({"seq":N}).
        assert_eq!(o.add((1..=9).map(frame).collect()), Ok(true));
        let seqs = |v: Vec<Frame>| v.iter().filter_map(|f| f.seq()).collect::<Vec<_>>();
        let (first, more) = o.take_up_to(30, 100);
        assert_eq!((seqs(first), more), (vec![1, 2, 3], true));
        assert!(!unwritten.is_zero(), "frames still wait");
        // Frames that come meanwhile join without waking the session again.
        assert_eq!(o.add(vec![frame(10)]), Ok(false));
        // A frame larger than the budget still goes, alone.
        let (one, more) = o.take_up_to(1, 100);
        assert_eq!((seqs(one), more), (vec![4], true));
        // At most `most` frames, however small.
        let (two, more) = o.take_up_to(1000, 2);
        assert_eq!((seqs(two), more), (vec![5, 6], true));
        let (rest, more) = o.take_up_to(1000, 100);
        assert_eq!((seqs(rest), more), (vec![7, 8, 9, 10], false));
        assert!(unwritten.is_zero());
        assert_eq!(o.add(vec![frame(11)]), Ok(true), "empty again: the next frame wakes it");
    }

    #[test]
    fn an_overflowing_outbox_refuses_and_counts_nothing_more() {
        let unwritten = Arc::new(Unwritten::default());
        let o = Outbox::new(unwritten.clone());
        // Live, and its writer has come to the outbox (its replay is written).
        o.go_live(-1);
        assert!(o.next_write(&futures_util::task::noop_waker()).is_none());
        // One delivery larger than the limit is taken whole: the socket
        // may keep up with it.
        let many: Vec<Frame> = (0..2 * OUTBOX_LIMIT as i64).map(frame).collect();
        assert_eq!(o.add(many), Ok(true));
        // Taken down to the limit: the socket reads, more still come...
        let (_, more) = o.take_up_to(usize::MAX, OUTBOX_LIMIT);
        assert!(more);
        assert_eq!(o.add(vec![frame(-1)]), Ok(false));
        // ...but not once it took nothing for a while and more than the
        // limit waits.
        o.pending.lock().expect("lock").waiting_since = Instant::now().checked_sub(STALLED_AFTER);
        assert_eq!(o.add(vec![frame(-2)]), Err(()));
        assert_eq!(o.take().len(), OUTBOX_LIMIT + 1);
        assert!(unwritten.is_zero());

        // A socket that reads is let fall further behind, not without end.
        let o = Outbox::new(unwritten.clone());
        o.go_live(-1);
        assert!(o.next_write(&futures_util::task::noop_waker()).is_none());
        let limit = OUTBOX_LIMIT * READING_FACTOR;
        assert_eq!(o.add((0..limit as i64 + 2).map(frame).collect()), Ok(true));
        let _ = o.take_up_to(usize::MAX, 1);
        assert_eq!(o.add(vec![frame(-1)]), Err(()), "more than {limit} wait, reading or not");
    }

    #[test]
    fn frames_are_encoded_as_a_client_reads_them() {
        // Each length form of RFC 6455: 7 bits, 16 bits and 64 bits.
        let sizes = [0usize, 5, 125, 126, 127, 0xFFFF, 0x10000, 70_000];
        let frames: Vec<Frame> = sizes
            .iter()
            .map(|n| Frame {
                carries: Carries::Ephemeral,
                text: "é".repeat(n / 2).chars().chain("x".repeat(n % 2).chars()).collect::<String>().into(),
            })
            .collect();
        let mut wire = bytes::BytesMut::from(&encode_text_frames(&frames)[..]);
        for f in &frames {
            let (finished, opcode, payload) = actix_http::ws::Parser::parse(&mut wire, false, usize::MAX)
                .expect("a valid frame")
                .expect("a whole frame");
            assert!(finished);
            assert_eq!(opcode, actix_http::ws::OpCode::Text);
            assert_eq!(payload.as_deref().unwrap_or_default(), f.text.as_bytes());
        }
        assert!(wire.is_empty());
    }

    #[test]
    fn a_burst_while_the_replay_is_written_is_read_again_from_the_log_not_a_close() {
        let unwritten = Arc::new(Unwritten::default());
        let o = Outbox::new(unwritten.clone());
        let presence = Frame { carries: Carries::Ephemeral, text: "presence".into() };
        let waker = futures_util::task::noop_waker();
        // Replaying, or live with the replay not written yet (the writer has
        // not come to the outbox): a burst past the limit, then more.
        assert_eq!(o.add((10..11 + OUTBOX_LIMIT as i64).map(frame).collect()), Ok(true));
        o.go_live(9);
        assert_eq!(o.add(vec![presence.clone(), frame(5000)]), Ok(false), "no 4408 yet");
        // The events were dropped (the log has them), presence stays. The
        // writer, coming to the outbox, has the session replay again first.
        assert!(o.next_write(&waker).is_none(), "the log first");
        assert_eq!(o.add(vec![frame(5001)]), Ok(false));
        o.go_live(5000);
        assert_eq!(texts(o.next_write(&waker).expect("frames")), ["presence", r#"{"seq":5001}"#]);
        assert!(unwritten.is_zero());
        // Now the replay is written: the same overflow, nothing taken for a
        // while, is a client that stopped reading.
        assert_eq!(o.add((1..=OUTBOX_LIMIT as i64 + 1).map(|i| frame(6000 + i)).collect()), Ok(true));
        o.pending.lock().expect("lock").waiting_since = Instant::now().checked_sub(STALLED_AFTER);
        assert_eq!(o.add(vec![frame(9999)]), Err(()));
    }

    #[test]
    fn the_writer_waits_for_the_replay_skips_what_it_sent_and_stops_at_close() {
        let unwritten = Arc::new(Unwritten::default());
        let o = Outbox::new(unwritten.clone());
        let waker = futures_util::task::noop_waker();
        assert_eq!(o.add((1..=5).map(frame).collect()), Ok(true));
        assert!(o.next_write(&waker).is_none(), "nothing before the replay is done");
        o.go_live(3);
        assert_eq!(texts(o.next_write(&waker).expect("frames")), [r#"{"seq":4}"#, r#"{"seq":5}"#]);
        assert!(unwritten.is_zero());
        assert!(o.next_write(&waker).is_none());
        o.close();
        assert_eq!(o.add(vec![frame(6)]), Ok(false));
        assert!(o.next_write(&waker).is_none());
        assert!(unwritten.is_zero());
    }
    #[test]
    fn a_held_outbox_writes_nothing_then_drops_what_came_of_a_lost_channel() {
        let unwritten = Arc::new(Unwritten::default());
        let o = Outbox::new(unwritten.clone());
        let waker = futures_util::task::noop_waker();
        let of = |seq: i64, channel: Option<i64>| Frame {
            carries: Carries::Event { seq, channel: channel.and_then(std::num::NonZeroI64::new) },
            text: format!("{{\"seq\":{seq}}}").into(),
        };
        let typing_in = |channel: i64, text: &str| Frame {
            carries: Carries::Typing { channel: std::num::NonZeroI64::new(channel).expect("a channel") },
            text: text.to_string().into(),
        };
        let presence = Frame { carries: Carries::Ephemeral, text: "presence".into() };
        o.go_live(0);
        assert_eq!(o.add(vec![of(1, Some(1)), of(2, Some(2)), typing_in(1, "typing 1 before")]), Ok(true));
        // The hub heard the member's channels changed: what came before
        // stays, nothing goes out until the new list is in.
        o.hold();
        let meanwhile = vec![
            of(3, Some(1)),
            of(4, Some(2)),
            of(5, None),
            typing_in(1, "typing 1"),
            typing_in(2, "typing 2"),
            presence,
        ];
        assert_eq!(o.add(meanwhile), Ok(false));
        o.hold();
        assert!(o.next_write(&waker).is_none(), "held");
        o.release(Some(&HashSet::from([2])));
        assert_eq!(
            texts(o.next_write(&waker).expect("frames")),
            [r#"{"seq":1}"#, r#"{"seq":2}"#, "typing 1 before", r#"{"seq":4}"#, r#"{"seq":5}"#, "typing 2", "presence"],
            "channel 1's event and typing that came while held are dropped"
        );
        assert!(unwritten.is_zero());
        // Only what came while held, all of it lost: nothing left to write.
        o.hold();
        assert_eq!(o.add(vec![of(6, Some(1))]), Ok(true));
        o.release(Some(&HashSet::new()));
        assert!(o.next_write(&waker).is_none());
        assert!(unwritten.is_zero(), "the dropped frames no longer count");
        // Released without a list (unchanged, or an admin's): all goes.
        o.hold();
        assert_eq!(o.add(vec![of(7, Some(1))]), Ok(true));
        o.release(None);
        assert_eq!(texts(o.next_write(&waker).expect("frames")), [r#"{"seq":7}"#]);
    }
}
