//! Advisory locks: their classes, in one place.
//!
//! A two-key advisory lock is (class, hash of a key). Work of one kind takes
//! turns under its own class, so two kinds never wait for each other by a
//! chance match of their keys. The classes are one enum's values, which the
//! compiler keeps distinct; as constants kept beside their users, two pairs
//! had come to share one (teams and channel settings, saved views and
//! invitations).
//! Numbers stay as they were where they were unique: a rolling upgrade's old
//! and new instances then still take turns.
//!
//! Also [`in_turn`]: row locks taken again, in order, when a row joined
//! what a deletion takes after it took the rest.

use diesel::sql_types::{Int4, Text};
use diesel::{PgConnection, RunQueryDsl};

/// The first key of an advisory lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum LockClass {
    /// A schema being migrated (`migrate`).
    Migrate = 0x5b_0001,
    /// A tenant's integrators' webhook endpoints being made (their limit).
    WebhookEndpoints = 0x5b_0002,
    /// A member's API tokens being made (their limit).
    ApiTokens = 0x5b_0003,
    /// The invitations of one email in a tenant.
    Invitations = 0x5b_0004,
    /// A channel's settings: changed exclusively, read shared by webhook
    /// batches.
    ChannelSettings = 0x5b_0005,
    /// Changes of channels' settings, one per tenant: shared by a change of
    /// one channel's, alone by a change of every channel's.
    AllChannelSettings = 0x5b_0006,
    /// A tenant's teams being made (their limit and names).
    Teams = 0x5b_0007,
    /// A member's (or the tenant's) saved views being made.
    SavedViews = 0x5b_0008,
    /// Who may see one channel (`PUT /api/channels/{id}/members`).
    ChannelMembers = 0x5b_0009,
    /// A tenant's contact links being changed (`inbox::contact_links`;
    /// until 2026-12-04 a one-key lock of its own, so an instance older
    /// than that does not take turns with a newer one).
    ContactLinks = 0x5b_000a,
    /// A tenant's canned responses being made (their limit).
    CannedResponses = 0x5b_000b,
    /// The team's macros, or one member's own, being made (their limit).
    Macros = 0x5b_000c,
    /// A tenant's broadcasts being made (the limit of those waiting).
    Broadcasts = 0x5b_000d,
}

impl LockClass {
    pub const fn key(self) -> i32 {
        self as i32
    }
}

/// Waits for, then holds until the transaction ends, the exclusive lock of
/// `class` and `key`.
pub fn hold(conn: &mut PgConnection, class: LockClass, key: &str) -> diesel::QueryResult<()> {
    diesel::sql_query("SELECT pg_catalog.pg_advisory_xact_lock($1, pg_catalog.hashtext($2))")
        .bind::<Int4, _>(class.key())
        .bind::<Text, _>(key)
        .execute(conn)?;
    Ok(())
}

/// What one attempt of [`in_turn`] found.
pub enum Taken<T> {
    /// All it meant to take, in its order: kept.
    All(T),
    /// A row joined what it takes after it took the rest (it would have to
    /// take that one last, out of order): all it took is let go.
    Late,
}

/// Why an attempt's savepoint was rolled back.
enum Undone<E> {
    Late,
    Failed(E),
}

impl<E: From<diesel::result::Error>> From<diesel::result::Error> for Undone<E> {
    fn from(e: diesel::result::Error) -> Self {
        Undone::Failed(E::from(e))
    }
}

/// Runs `attempt` in a savepoint, up to `attempts` times while it finds
/// [`Taken::Late`], each time letting go of every lock it took; `None`
/// when every attempt did.
///
/// For a deletion that takes the rows naming a parent (a team's, a
/// channel's or a contact's conversations) in id order, as their writers take them, and
/// then the parent, which no one can name a row after since that checks
/// the parent's key: a row named after the first step is found by the
/// attempt, which then takes them all again rather than wait for it last,
/// holding the others, while a writer holding it waits for one of those.
pub fn in_turn<T, E: From<diesel::result::Error>>(
    conn: &mut PgConnection,
    attempts: usize,
    mut attempt: impl FnMut(&mut PgConnection) -> Result<Taken<T>, E>,
) -> Result<Option<T>, E> {
    use diesel::Connection;
    for _ in 0..attempts {
        let taken = conn.transaction(|conn| match attempt(conn) {
            Ok(Taken::All(t)) => Ok(t),
            Ok(Taken::Late) => Err(Undone::Late),
            Err(e) => Err(Undone::Failed(e)),
        });
        match taken {
            Ok(t) => return Ok(Some(t)),
            Err(Undone::Late) => continue,
            Err(Undone::Failed(e)) => return Err(e),
        }
    }
    Ok(None)
}
