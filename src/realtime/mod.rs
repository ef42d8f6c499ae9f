//! The live inbox: authenticated WebSockets, one session actor per socket
//! and one hub per server instance (actix actors; kept in this module so
//! they could be swapped for another WebSocket stack).
//!
//! Flow: writers append to a tenant's event log and `NOTIFY` ids only; each
//! instance's [`bus`] listens on one dedicated connection, reads the new
//! events of tenants it has sockets for, and hands them to the [`hub`],
//! which pushes each to the sessions allowed to see its channel. Events
//! this instance commits (webhook processor, agents' requests, the sender)
//! skip the read: the committer hands them over itself ([`bus::Feed`]).
//! A new socket replays the log after the `last_seq` of its hello (or the
//! client's `since`), so none falls between connecting and joining the
//! hub; a `since` the log cannot serve whole (pruned, ahead of it, or more
//! than a replay carries) gets `resync_required` instead. Typing, presence
//! and access changes travel the same bus as small live messages and are
//! neither logged nor replayed.
//!
//! Close codes: 4401 the session's login ended (logout, refresh reuse,
//! role change), 4403 removed from the tenant or tenant suspended or dropped, 4408 the
//! client fell too far behind, or sent nothing, not even a pong, for the
//! heartbeat timeout (reconnect with `since` to resume); and the
//! standard 1001 when the server shuts down (reconnect, to another instance,
//! with `since`), 1009 for a client message over
//! `session::CLIENT_MESSAGE_LIMIT`, 1007 for text that is not UTF-8
//! (whole or in fragments), 1002 for another protocol error (a close
//! frame whose code no endpoint may send among them); a connection that
//! fails under the socket ends without one (`switchboard_ws_unclosed_total`
//! counts those). A close
//! frame queues behind what the client has not read, so a client that
//! stopped reading is let go at the TCP level too (`http::on_connect`).

pub mod bus;
pub mod hub;
pub mod online;
pub mod session;
pub mod tickets;

pub use bus::{Bus, Feed, LiveMsg, PgBus};
pub use hub::Hub;
pub use online::Online;

pub const CLOSE_LOGGED_OUT: u16 = 4401;
pub const CLOSE_REMOVED: u16 = 4403;
pub const CLOSE_TOO_SLOW: u16 = 4408;
pub const CLOSE_GOING_AWAY: u16 = 1001;

/// `on` of a typing message (socket or REST) that leaves it out: sending
/// one is the sign of typing.
pub fn typing_on_by_default() -> bool {
    true
}
