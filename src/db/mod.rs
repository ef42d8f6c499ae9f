//! The database room: the pool, tenant-scoped connections, migrations and the
//! diesel table definitions.
//!
//! Two kinds of connection exist for application code:
//! - a plain pooled `PgConnection`, whose search path is empty, so only the
//!   schema-qualified `public.*` tables of [`schema`] resolve on it;
//! - a [`TenantConn`], obtainable only from [`with_tenant`], inside one
//!   transaction whose search path points at one tenant's schema.
//!
//! Tenant tables ([`tenant_schema`]) are unqualified, so they only resolve on a
//! `TenantConn`; a query for them anywhere else fails loudly.

pub mod housekeeping;
pub mod listen;
pub mod locks;
pub mod migrate;
pub mod pool;
pub mod prepared;
pub mod queue;
pub mod schema;
pub mod tenant;
pub mod tenant_schema;
pub mod tls_exit;

pub use pool::{
    connect_pool, connection_lost, connection_string, ensure_database, live_connection, retry_lost, retry_lost_probing,
    tenant_on_pool, Db, PgPool, PoolOptions, PROBE_WAIT,
};
pub use prepared::prepared;
pub use tenant::{with_tenant, TenantConn, TenantScope};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("no database connection: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("cannot connect: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("tenant not found")]
    TenantNotFound,
    #[error("tenant suspended")]
    TenantSuspended,
    #[error("tenant schema not migrated")]
    TenantNotReady,
    #[error("the member's role changed since the token was issued")]
    MembershipChanged,
    #[error("not a member of the token's tenant (removed, or never one)")]
    MembershipEnded,
    #[error("the token's login was ended")]
    LoginEnded,
    #[error("migration failed: {0}")]
    Migration(String),
}

impl DbError {
    /// Maps the guard's `RAISE EXCEPTION 'switchboard:…'` to typed errors.
    pub(crate) fn from_guard(e: diesel::result::Error) -> DbError {
        if let diesel::result::Error::DatabaseError(_, info) = &e {
            match info.message() {
                "switchboard:tenant_not_found" => return DbError::TenantNotFound,
                "switchboard:tenant_suspended" => return DbError::TenantSuspended,
                "switchboard:tenant_not_ready" => return DbError::TenantNotReady,
                // The DETAIL says which (since 2026-12-05-000001).
                "switchboard:membership_changed" if info.details() == Some("removed") => {
                    return DbError::MembershipEnded
                }
                "switchboard:membership_changed" => return DbError::MembershipChanged,
                "switchboard:login_ended" => return DbError::LoginEnded,
                _ => {}
            }
        }
        DbError::Query(e)
    }
}
