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
