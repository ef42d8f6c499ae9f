//! The r2d2 pool and the async bridge onto the blocking thread pool.
//!
//! Connections are opened with `search_path = ''`: no application table
//! resolves without a schema, so forgetting the tenant scope is an error, not
//! a read of somebody else's rows. Connections are recycled after ten minutes
//! because a backend that touched many schemas holds their catalog cache.
//!
//! They are also opened with `jit = off`. PostgreSQL compiles a query to
//! machine code when its estimated cost passes `jit_above_cost`, which the
//! estimate of a search over a large tenant does; the compiling took 100–200
//! ms a time on our machines for a query that runs in 2–16 ms without it.
//! Nothing this server asks runs long enough to win it back.
//!
//! While the database cannot be reached, r2d2 tries to open connections
//! several times a second, and by default logs every failure: an outage
//! of a minute was hundreds of identical error lines. Here the first
//! failure is logged, then at most one line every
//! [`TOLD_EVERY`](crate::telemetry::TOLD_EVERY) with how many it stands
//! for, and the first connection opened after them says how long the
//! database was out of reach ([`Repeats`]).

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::pg::PgConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, PooledConnection};
use diesel::result::DatabaseErrorKind;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::DbError;
use crate::telemetry::Repeats;

pub type PgPool = r2d2::Pool<ConnectionManager<PgConnection>>;

#[derive(Debug, Clone, Copy)]
pub struct PoolOptions {
    pub max_size: u32,
    /// Short-lived processes (commands, tests) should open every connection
    /// up front (`Some(max_size)`): a connection r2d2 is still opening in the
    /// background when the process exits can crash libpq/OpenSSL's exit
    /// handlers.
    pub min_idle: Option<u32>,
    pub connect_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions { max_size: 10, min_idle: Some(1), connect_timeout: Duration::from_secs(5) }
    }
}

#[derive(Debug)]
struct SessionDefaults {
    failures: Arc<Mutex<Repeats>>,
}

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for SessionDefaults {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute("SET search_path TO ''; SET jit = off").map_err(diesel::r2d2::Error::QueryError)?;
        let back = self.failures.lock().ok().and_then(|mut f| f.went(Instant::now()));
        if let Some((out_for, failures)) = back {
            tracing::warn!(out_for = ?out_for, failures, "the database is reachable again");
        }
        Ok(())
    }
}

/// r2d2's error handler: [`Repeats`] decides what is logged.
#[derive(Debug)]
struct QuietFailures {
    failures: Arc<Mutex<Repeats>>,
}

impl r2d2::HandleError<diesel::r2d2::Error> for QuietFailures {
    fn handle_error(&self, error: diesel::r2d2::Error) {
        let tell = self.failures.lock().ok().and_then(|mut f| f.failed(Instant::now()));
        if let Some(untold) = tell {
            tracing::error!(%error, more_since_last_told = untold, "cannot open a database connection");
        }
    }
}

/// Builds the pool; fails fast when the database cannot be reached.
pub fn connect_pool(database_url: &str, opts: PoolOptions) -> Result<PgPool, DbError> {
    let manager = ConnectionManager::<PgConnection>::new(connection_string(database_url));
    let failures = Arc::new(Mutex::new(Repeats::default()));
    let pool = r2d2::Pool::builder()
        .max_size(opts.max_size)
        .min_idle(opts.min_idle)
        .max_lifetime(Some(Duration::from_secs(600)))
        .idle_timeout(Some(Duration::from_secs(300)))
        .connection_timeout(opts.connect_timeout)
        // A broken connection is detected by diesel (`has_broken`); a test
        // query on every checkout would cost a round trip per request.
        .test_on_check_out(false)
        .connection_customizer(Box::new(SessionDefaults { failures: failures.clone() }))
        .error_handler(Box::new(QuietFailures { failures }))
        .build(manager)?;
    Ok(pool)
}

/// The application's handle on the database. Work runs on the blocking pool,
/// never on an actix worker thread.
#[derive(Clone)]
pub struct Db {
    pool: PgPool,
}

impl Db {
    pub fn new(pool: PgPool) -> Self {
        Db { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs `f` with a plain pooled connection (public tables only) on the
    /// blocking pool. The connection is checked first (`SELECT 1`,
    /// one round trip) and replaced if the server closed it, as a tenant
    /// transaction's `BEGIN` does for it: `f` may write before it reads,
    /// so it cannot be the check. The work that comes here is rare beside
    /// the tenant work (logins, refreshes, socket tickets, operators').
    pub async fn public<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut PgConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + From<actix_web::error::BlockingError> + Send + 'static,
    {
        self.public_waiting(false, f).await
    }

    /// [`Db::public`] for health probes and scrapes (`/readyz`,
    /// `/metrics`): when the pool could not hand over or open a connection
    /// within [`PROBE_WAIT`] it gives up then, not after the pool's connect
    /// timeout (5 s), so with the database down a probe gets its answer
    /// inside its own timeout (1 s by default in Kubernetes). A pool merely
    /// busy (every connection open and in use) is waited for as any request
    /// waits: a loaded instance is not reported unready for it.
    pub async fn probe<T, E, F>(&self, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut PgConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + From<actix_web::error::BlockingError> + Send + 'static,
    {
        self.public_waiting(true, f).await
    }

    async fn public_waiting<T, E, F>(&self, probe: bool, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut PgConnection) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + From<actix_web::error::BlockingError> + Send + 'static,
    {
        let pool = self.pool.clone();
        actix_web::web::block(move || {
            let mut conn =
                retry_lost_waiting(&pool, probe, |conn| conn.batch_execute("SELECT 1").map_err(DbError::from))?;
            f(&mut conn)
        })
        .await?
    }

    /// Runs `f` inside one tenant transaction on the blocking pool. A pooled
    /// connection the server has closed since (a restart, a failover, a
    /// proxy or firewall cutting idle connections) fails at the `BEGIN`,
    /// before anything is done: it is dropped and the transaction opened on
    /// another, up to the pool's size, so the request does not fail for it.
    pub async fn tenant<T, E, F>(&self, scope: super::TenantScope, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut super::TenantConn<'_>) -> Result<T, E> + Send + 'static,
        T: Send + 'static,
        E: From<DbError> + From<actix_web::error::BlockingError> + Send + 'static,
    {
        let pool = self.pool.clone();
        actix_web::web::block(move || tenant_on_pool(&pool, &scope, f)).await?
    }
}

/// What [`Db::tenant`] does, for a caller already on a blocking thread:
/// `f` inside one tenant transaction on a pooled connection, opened on
/// another when the one the pool hands out was closed by the server since.
pub fn tenant_on_pool<T, E, F>(pool: &PgPool, scope: &super::TenantScope, f: F) -> Result<T, E>
where
    F: FnOnce(&mut super::TenantConn<'_>) -> Result<T, E>,
    E: From<DbError>,
{
    let mut conn = retry_lost(pool, |conn| super::tenant::begin(conn, scope))?;
    super::tenant::run_begun(&mut conn, scope.tenant, f)
}

/// Whether the error says the connection is gone: diesel turns libpq's
/// `CONNECTION_BAD` and SQLSTATE class 08 into `ClosedConnection`, and a
/// query libpq could not send on a dead socket ("no connection to the
/// server") into `UnableToSendCommand`, which it also uses for too many
/// bind parameters; libpq's message (C locale) tells the two apart.
pub fn connection_lost(e: &DbError) -> bool {
    use diesel::result::Error as D;
    match e {
        DbError::Query(D::DatabaseError(DatabaseErrorKind::ClosedConnection, _)) => true,
        DbError::Query(D::DatabaseError(DatabaseErrorKind::UnableToSendCommand, info)) => {
            let m = info.message();
            m.contains("connection") || m.contains("server")
        }
        _ => false,
    }
}

/// A pooled connection on which `first` succeeded. `first` must be safe to
/// repeat when the connection turns out closed: it is retried on another
/// connection, as many times as the pool holds connections, each closed one
/// being marked broken so the pool discards it instead of handing it out
/// again.
pub fn retry_lost(
    pool: &PgPool,
    first: impl FnMut(&mut PgConnection) -> Result<(), DbError>,
) -> Result<PooledConnection<ConnectionManager<PgConnection>>, DbError> {
    retry_lost_waiting(pool, false, first)
}

/// [`retry_lost`], giving up as a health probe does ([`Db::probe`]) when
/// the database is out of reach: within [`PROBE_WAIT`] unless the pool is
/// only busy. For the webhook store, whose caller (Meta) wants its answer
/// within 5 s: a 503 then, not after the pool's connect timeout, each
/// webhook queued behind the last.
pub fn retry_lost_probing(
    pool: &PgPool,
    first: impl FnMut(&mut PgConnection) -> Result<(), DbError>,
) -> Result<PooledConnection<ConnectionManager<PgConnection>>, DbError> {
    retry_lost_waiting(pool, true, first)
}

/// A pooled connection that answered a `SELECT 1`, for work whose first
/// statement is not a tenant `BEGIN` ([`tenant_on_pool`] checks that one):
/// the background workers' passes. One the server closed since is passed
/// over as in [`retry_lost`]; the round trip is the price, small beside a
/// pass that would otherwise fail on it and wait for the next.
pub fn live_connection(pool: &PgPool) -> Result<PooledConnection<ConnectionManager<PgConnection>>, DbError> {
    retry_lost(pool, |conn| conn.batch_execute("SELECT 1").map_err(DbError::from))
}

/// How long a health probe waits for a connection the pool does not have
/// open yet ([`Db::probe`]).
pub const PROBE_WAIT: Duration = Duration::from_millis(500);

/// [`retry_lost`], checking out as a probe does (`probe`, [`Db::probe`]).
fn retry_lost_waiting(
    pool: &PgPool,
    probe: bool,
    mut first: impl FnMut(&mut PgConnection) -> Result<(), DbError>,
) -> Result<PooledConnection<ConnectionManager<PgConnection>>, DbError> {
    let mut left = pool.max_size();
    loop {
        let mut conn = if probe { probe_checkout(pool)? } else { pool.get()? };
        match first(&mut conn) {
            Ok(()) => return Ok(conn),
            Err(e) if left > 0 && connection_lost(&e) => {
                left -= 1;
                AnsiTransactionManager::transaction_manager_status_mut(&mut *conn).set_in_error();
                crate::metrics::inc(&crate::metrics::DB_CONNECTIONS_LOST, 1);
            }
            Err(e) => return Err(e),
        }
    }
}

/// A connection within [`PROBE_WAIT`], unless every connection the pool
/// may hold is open and in use: the database answers then, the pool is
/// busy, and the checkout waits the rest of the connect timeout as
/// [`r2d2::Pool::get`] would. (r2d2's error says why only to the first
/// waiter after a failed attempt, and its attempts space out to 2.5 s.)
fn probe_checkout(pool: &PgPool) -> Result<PooledConnection<ConnectionManager<PgConnection>>, r2d2::Error> {
    match pool.get_timeout(PROBE_WAIT) {
        Err(_) if pool.state().connections >= pool.max_size() => {
            pool.get_timeout(pool.connection_timeout().saturating_sub(PROBE_WAIT))
        }
        got => got,
    }
}

/// How every connection of ours is opened: `url` with what it does not set
/// itself of
/// - `connect_timeout=5`: libpq otherwise waits for ever for a server that
///   accepted the TCP connection and does not answer (hung, or a proxy in
///   front of one that is down), and the kernel's two minutes for one
///   whose address went silent. r2d2 opens connections on a few threads of
///   its own; each stuck there is one the pool cannot open when the
///   database is back.
/// - TCP keepalives (30 s idle, then 3 probes 10 s apart): a peer that
///   vanished silently (a failover, a NAT or load balancer that dropped an
///   idle flow) is found within a minute, not after the system's two
///   hours idle, and the connection errors (the pool replaces it, the bus
///   listener connects again and catches up from the log) instead of the
///   next query waiting on it.
/// - `tcp_user_timeout=60000` (ms): keepalives probe only a quiet wire; a
///   connection whose network went dark while a query it sent was still
///   unacknowledged would otherwise wait TCP's retransmission timeout
///   (about 15 minutes) holding its pool slot. A minute, as long as the
///   keepalives take to give up; a slow query is not cut by it, since the
///   server's kernel acknowledges what it was sent.
pub fn connection_string(url: &str) -> String {
    const DEFAULTS: [(&str, &str); 6] = [
        ("connect_timeout", "5"),
        ("keepalives", "1"),
        ("keepalives_idle", "30"),
        ("keepalives_interval", "10"),
        ("keepalives_count", "3"),
        ("tcp_user_timeout", "60000"),
    ];
    let uri = url.starts_with("postgres://") || url.starts_with("postgresql://");
    // A key=value string may space its `=`s; `keepalives=` is not inside
    // `keepalives_idle=`.
    let set: String = url.split('=').map(str::trim).collect::<Vec<_>>().join("=");
    let missing: Vec<String> =
        DEFAULTS.iter().filter(|(k, _)| !set.contains(&format!("{k}="))).map(|(k, v)| format!("{k}={v}")).collect();
    if missing.is_empty() {
        url.to_string()
    } else if uri {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}{}", missing.join("&"))
    } else {
        format!("{url} {}", missing.join(" "))
    }
}

/// The same server URL with another database name.
pub fn url_with_database(url: &str, database: &str) -> Option<String> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://")? + 3;
    let slash = base[scheme_end..].find('/').map(|i| i + scheme_end).unwrap_or(base.len());
    let mut out = format!("{}/{database}", &base[..slash]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Some(out)
}

/// Splits a PostgreSQL URL into (URL of the `postgres` maintenance database,
/// database name). `None` when the URL names no database.
pub fn maintenance_url(url: &str) -> Option<(String, String)> {
    let base = url.split_once('?').map_or(url, |(b, _)| b);
    let scheme_end = base.find("://")? + 3;
    let slash = base[scheme_end..].find('/')? + scheme_end;
    let name = &base[slash + 1..];
    if name.is_empty() {
        return None;
    }
    Some((url_with_database(url, "postgres")?, name.to_string()))
}

/// Creates the database named in `url` when it does not exist yet, so a
/// fresh PostgreSQL needs no manual step.
pub fn ensure_database(url: &str) -> Result<(), DbError> {
    use diesel::prelude::*;
    if PgConnection::establish(&connection_string(url)).is_ok() {
        return Ok(());
    }
    let Some((admin_url, name)) = maintenance_url(url) else {
        return Ok(());
    };
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(DbError::Migration(format!("will not create database {name:?}: unusual name")));
    }
    let mut admin = PgConnection::establish(&connection_string(&admin_url))?;
    let exists: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
        "EXISTS (SELECT 1 FROM pg_database WHERE datname = '{name}')"
    )))
    .get_result(&mut admin)?;
    if !exists {
        tracing::info!(database = %name, "creating database");
        admin.batch_execute(&format!("CREATE DATABASE \"{name}\""))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::maintenance_url;

    #[test]
    fn connections_time_out_and_keep_alive_unless_told_otherwise() {
        use super::connection_string;
        let all = "connect_timeout=5&keepalives=1&keepalives_idle=30&keepalives_interval=10&keepalives_count=3&tcp_user_timeout=60000";
        assert_eq!(connection_string("postgres://u@h:5432/db"), format!("postgres://u@h:5432/db?{all}"));
        assert_eq!(
            connection_string("postgresql://u@h/db?sslmode=require"),
            format!("postgresql://u@h/db?sslmode=require&{all}")
        );
        assert_eq!(connection_string("host=h dbname=db"), format!("host=h dbname=db {}", all.replace('&', " ")));
        // What the URL sets stays as it is; the rest is added.
        assert_eq!(
            connection_string("postgres://u@h/db?keepalives_idle=5&connect_timeout=2"),
            "postgres://u@h/db?keepalives_idle=5&connect_timeout=2&keepalives=1&keepalives_interval=10&keepalives_count=3&tcp_user_timeout=60000"
        );
        assert_eq!(
            connection_string("host=h connect_timeout = 9 keepalives =0"),
            "host=h connect_timeout = 9 keepalives =0 keepalives_idle=30 keepalives_interval=10 keepalives_count=3 tcp_user_timeout=60000"
        );
        let own = "postgres://u@h/db?connect_timeout=9&keepalives=0&keepalives_idle=1&keepalives_interval=1&keepalives_count=1&tcp_user_timeout=0";
        assert_eq!(connection_string(own), own);
    }

    #[test]
    fn maintenance_urls() {
        assert_eq!(
            maintenance_url("postgres://u:p@h:5432/app?sslmode=disable"),
            Some(("postgres://u:p@h:5432/postgres?sslmode=disable".into(), "app".into()))
        );
        assert_eq!(maintenance_url("postgres://h"), None);
        assert_eq!(
            super::url_with_database("postgres://postgres@h/postgres?x=1", "b").as_deref(),
            Some("postgres://postgres@h/b?x=1")
        );
    }
}
