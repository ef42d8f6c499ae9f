//! Tenant-scoped units of work.
//!
//! [`with_tenant`] is the only constructor of a [`TenantConn`]. It opens a
//! transaction whose first statement, sent in the same round trip as `BEGIN`,
//! is `public.sb_enter_tenant(...)`: that function checks the tenant is active
//! and migrated (and, for a member's request, that their role is still the one
//! in their token) and then sets `search_path` to the quoted tenant schema with
//! `set_config(..., true)`. The setting ends with the transaction, so a
//! connection that goes back to the pool carries nothing into the next
//! request, and it works behind PgBouncer in transaction mode.

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::pg::PgConnection;

use super::DbError;
use crate::ids::{TenantId, UserId};

/// Who is entering which tenant. `member` is `None` for system work
/// (webhook processing, operators' commands).
#[derive(Clone, Copy, Debug)]
pub struct TenantScope {
    pub tenant: TenantId,
    pub member: Option<(UserId, &'static str)>,
    /// The member's login (refresh-token family), refused once ended.
    /// `None` for credentials checked otherwise (API tokens, looked up on
    /// every request).
    pub login: Option<uuid::Uuid>,
    /// Reaches suspended tenants too (data deletion, key rotation).
    pub maintenance: bool,
    /// Commit without waiting for the WAL flush. Only for work whose input
    /// stays durable elsewhere and is redone if the commit is lost (the
    /// webhook processor: its "done" mark rides in the same transaction).
    pub async_commit: bool,
}

impl TenantScope {
    pub fn system(tenant: TenantId) -> Self {
        TenantScope { tenant, member: None, login: None, maintenance: false, async_commit: false }
    }

    /// A member's request, made with a credential of `family`: a login's
    /// refresh-token family (a UUID), whose end the guard checks, or an
    /// API token's, checked where the token is looked up.
    pub fn member(tenant: TenantId, user: UserId, role: &'static str, family: &str) -> Self {
        let login = uuid::Uuid::parse_str(family).ok();
        TenantScope { tenant, member: Some((user, role)), login, maintenance: false, async_commit: false }
    }

    pub fn maintenance(tenant: TenantId) -> Self {
        TenantScope { tenant, member: None, login: None, maintenance: true, async_commit: false }
    }

    /// See [`TenantScope::async_commit`].
    pub fn with_async_commit(self) -> Self {
        TenantScope { async_commit: true, ..self }
    }
}

/// A connection inside a tenant transaction. Tenant repositories take
/// `&mut TenantConn`; there is no other way to reach tenant tables.
pub struct TenantConn<'a> {
    conn: &'a mut PgConnection,
    tenant: TenantId,
}

impl TenantConn<'_> {
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// The underlying connection, for running diesel queries. It is still
    /// inside the tenant transaction.
    pub fn pg(&mut self) -> &mut PgConnection {
        self.conn
    }
}

fn enter_sql(scope: &TenantScope) -> String {
    let version = super::migrate::latest_tenant_version();
    // Every interpolated value is an integer, a role from a fixed set, a
    // migration version made of digits, or a UUID as `Uuid` writes it (hex
    // and dashes); nothing here is a client's text.
    debug_assert!(version.bytes().all(|b| b.is_ascii_digit()));
    let (user, role) = match scope.member {
        Some((u, r)) => {
            debug_assert!(r.bytes().all(|b| b.is_ascii_lowercase()));
            (u.0.to_string(), format!("'{r}'"))
        }
        None => ("NULL".to_string(), "NULL".to_string()),
    };
    // Same round trip as BEGIN; transaction-local like the search path.
    let commit = if scope.async_commit { "; SET LOCAL synchronous_commit TO off" } else { "" };
    // Work without a login (webhooks, workers, API tokens) calls the guard
    // that checks none.
    let login = scope.login.map_or_else(String::new, |l| format!(", '{}'::uuid", l.hyphenated()));
    format!(
        "BEGIN; SELECT public.sb_enter_tenant({}, '{}', {}, {}, {}{login}){commit}",
        scope.tenant.0, version, user, role, scope.maintenance
    )
}

/// Runs `f` in one transaction scoped to the tenant. Commits when `f` returns
/// `Ok`, rolls back otherwise. A panic inside `f` leaves the connection marked
/// broken, so the pool discards it instead of reusing an open transaction.
pub fn with_tenant<T, E, F>(conn: &mut PgConnection, scope: &TenantScope, f: F) -> Result<T, E>
where
    F: FnOnce(&mut TenantConn<'_>) -> Result<T, E>,
    E: From<DbError>,
{
    begin(conn, scope)?;
    run_begun(conn, scope.tenant, f)
}

/// Opens the tenant transaction (`BEGIN` and the guard, one round trip).
/// On failure no transaction is left open and, if the connection could not
/// close one, it is marked broken so the pool discards it; nothing was
/// done, so the caller may try again on another connection.
pub(super) fn begin(conn: &mut PgConnection, scope: &TenantScope) -> Result<(), DbError> {
    if let Err(e) = AnsiTransactionManager::begin_transaction_sql(conn, &enter_sql(scope)) {
        // The guard raised inside our BEGIN: the server-side transaction is
        // open and aborted while diesel believes none is. Close it by hand.
        if conn.batch_execute("ROLLBACK").is_err() {
            AnsiTransactionManager::transaction_manager_status_mut(conn).set_in_error();
        }
        return Err(DbError::from_guard(e));
    }
    Ok(())
}

/// The rest of [`with_tenant`], once [`begin`] succeeded on `conn`.
pub(super) fn run_begun<T, E, F>(conn: &mut PgConnection, tenant: TenantId, f: F) -> Result<T, E>
where
    F: FnOnce(&mut TenantConn<'_>) -> Result<T, E>,
    E: From<DbError>,
{
    let result = f(&mut TenantConn { conn, tenant });
    match result {
        Ok(value) => {
            AnsiTransactionManager::commit_transaction(conn).map_err(DbError::from)?;
            Ok(value)
        }
        Err(e) => {
            if AnsiTransactionManager::rollback_transaction(conn).is_err() {
                AnsiTransactionManager::transaction_manager_status_mut(conn).set_in_error();
            }
            Err(e)
        }
    }
}

/// The transaction-local setting we rely on; used by tests and `readyz`.
pub fn current_search_path(conn: &mut PgConnection) -> Result<String, DbError> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        search_path: String,
    }
    let row: Row = diesel::RunQueryDsl::get_result(
        diesel::sql_query("SELECT pg_catalog.current_setting('search_path') AS search_path"),
        conn,
    )?;
    Ok(row.search_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_login_is_checked_for_its_end() {
        let (tenant, user) = (TenantId(7), UserId(9));
        let login = "0b6f2a9e-3c1d-4e5f-8a7b-9c0d1e2f3a4b";
        let system = enter_sql(&TenantScope::system(tenant));
        assert!(system.contains("sb_enter_tenant(7, '") && system.ends_with(", NULL, NULL, false)"), "{system}");
        let member = enter_sql(&TenantScope::member(tenant, user, "agent", login));
        assert!(member.ends_with(&format!(", 9, 'agent', false, '{login}'::uuid)")), "{member}");
        // An API token's family is no login: it is checked where it is looked up.
        let token = enter_sql(&TenantScope::member(tenant, user, "agent", "api-token:3"));
        assert!(token.ends_with(", 9, 'agent', false)"), "{token}");
        // Nothing but a UUID is written into the statement.
        let odd = enter_sql(&TenantScope::member(tenant, user, "agent", "x'); DROP TABLE t; --"));
        assert!(!odd.contains("DROP"), "{odd}");
    }
}
