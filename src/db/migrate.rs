//! Migrations of the `public` schema and of every tenant schema.
//!
//! Both sets are embedded in the binary. diesel_migrations takes no lock, so
//! every run holds a transaction-scoped advisory lock keyed by the schema:
//! concurrent `migrate` runs and server start-ups queue on the same schema and
//! the second one finds nothing pending. `public.tenants.schema_version`
//! records the newest tenant migration applied, so a run over thousands of
//! current tenants costs one query, not one per schema.

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationSource;
use diesel::pg::{Pg, PgConnection};
use diesel::prelude::*;
use diesel::sql_types::{Int4, Text};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::schema::tenants;
use super::{DbError, PgPool};
use crate::tenancy::SchemaName;

pub const PUBLIC_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");
pub const TENANT_MIGRATIONS: EmbeddedMigrations = embed_migrations!("tenants");

/// A cheaply clonable, thread-safe migration source: the embedded tenant
/// migrations in production, a folder in tests that add a migration.
#[derive(Clone)]
pub struct Migrations(Arc<dyn MigrationSource<Pg> + Send + Sync>);

impl Migrations {
    pub fn tenant() -> Self {
        Migrations(Arc::new(TENANT_MIGRATIONS))
    }

    pub fn new(source: impl MigrationSource<Pg> + Send + Sync + 'static) -> Self {
        Migrations(Arc::new(source))
    }
}

impl MigrationSource<Pg> for Migrations {
    fn migrations(&self) -> diesel::migration::Result<Vec<Box<dyn diesel::migration::Migration<Pg>>>> {
        self.0.migrations()
    }
}

/// First key of the two-key advisory locks taken while migrating.
const LOCK_CLASS_MIGRATE: i32 = super::locks::LockClass::Migrate.key();

/// Newest version in a migration source ("" when it has none).
pub fn latest_version<S: MigrationSource<Pg>>(source: &S) -> Result<String, DbError> {
    let migrations = source.migrations().map_err(|e| DbError::Migration(e.to_string()))?;
    Ok(migrations.iter().map(|m| m.name().version().to_string()).max().unwrap_or_default())
}

/// Newest embedded tenant migration: what a tenant schema must have reached
/// before the server serves that tenant.
pub fn latest_tenant_version() -> &'static str {
    static LATEST: OnceLock<String> = OnceLock::new();
    LATEST.get_or_init(|| latest_version(&TENANT_MIGRATIONS).unwrap_or_default())
}

fn advisory_lock(conn: &mut PgConnection, key: &str) -> Result<(), DbError> {
    diesel::sql_query("SELECT pg_catalog.pg_advisory_xact_lock($1, pg_catalog.hashtext($2))")
        .bind::<Int4, _>(LOCK_CLASS_MIGRATE)
        .bind::<Text, _>(key)
        .execute(conn)?;
    Ok(())
}

/// Takes the transaction-scoped lock `key` of the migration class if no one
/// holds it; `false` when someone does.
pub fn try_advisory_lock(conn: &mut PgConnection, key: &str) -> Result<bool, DbError> {
    #[derive(QueryableByName)]
    struct Got {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        got: bool,
    }
    let row: Got = diesel::sql_query("SELECT pg_catalog.pg_try_advisory_xact_lock($1, pg_catalog.hashtext($2)) AS got")
        .bind::<Int4, _>(LOCK_CLASS_MIGRATE)
        .bind::<Text, _>(key)
        .get_result(conn)?;
    Ok(row.got)
}

fn migration_error(e: Box<dyn std::error::Error + Send + Sync>) -> DbError {
    DbError::Migration(e.to_string())
}

/// Brings `public` up to date; returns the versions applied.
pub fn run_public_migrations(conn: &mut PgConnection) -> Result<Vec<String>, DbError> {
    conn.transaction(|conn| {
        advisory_lock(conn, "public")?;
        conn.batch_execute("SELECT pg_catalog.set_config('search_path', 'public', true)")?;
        let applied = conn.run_pending_migrations(PUBLIC_MIGRATIONS).map_err(migration_error)?;
        Ok(applied.iter().map(|v| v.to_string()).collect())
    })
}

/// Whether `public` has pending migrations (for `readyz`).
pub fn public_pending(conn: &mut PgConnection) -> Result<bool, DbError> {
    conn.transaction(|conn| {
        conn.batch_execute("SELECT pg_catalog.set_config('search_path', 'public', true)")?;
        let pending = conn.has_pending_migration(PUBLIC_MIGRATIONS).map_err(migration_error)?;
        Ok(pending)
    })
}

/// Migrates one tenant schema inside the caller's open transaction: locks the
/// schema, applies what is pending and records the version on the tenant row.
/// The schema must exist: provisioning creates it, and a schema that vanished
/// is an error to report, not something to recreate empty.
pub fn migrate_schema_in_tx(
    conn: &mut PgConnection,
    schema: &SchemaName,
    source: &Migrations,
) -> Result<Vec<String>, DbError> {
    advisory_lock(conn, schema.as_str())?;
    conn.batch_execute(&format!("SELECT pg_catalog.set_config('search_path', '{q}', true)", q = schema.quoted()))?;
    let applied: Vec<String> =
        conn.run_pending_migrations(source.clone()).map_err(migration_error)?.iter().map(|v| v.to_string()).collect();
    let latest = latest_version(source)?;
    // The search path holds only the tenant schema: `public` stays qualified.
    diesel::update(tenants::table.filter(tenants::schema_name.eq(schema.as_str())))
        .set((tenants::schema_version.eq(&latest), tenants::updated_at.eq(diesel::dsl::now)))
        .execute(conn)?;
    conn.batch_execute("SELECT pg_catalog.set_config('search_path', '', true)")?;
    Ok(applied)
}

/// One tenant's outcome in a `migrate` run.
#[derive(Debug, Clone)]
pub enum TenantOutcome {
    Applied(Vec<String>),
    AlreadyCurrent,
    Failed(String),
}

#[derive(Debug, Default)]
pub struct MigrateReport {
    pub public_applied: Vec<String>,
    pub tenants_total: usize,
    /// Tenants skipped by the one-query fast path.
    pub skipped_current: usize,
    pub results: Vec<(String, TenantOutcome)>,
    pub elapsed: Duration,
}

impl MigrateReport {
    pub fn failures(&self) -> impl Iterator<Item = (&str, &str)> {
        self.results.iter().filter_map(|(slug, o)| match o {
            TenantOutcome::Failed(e) => Some((slug.as_str(), e.as_str())),
            _ => None,
        })
    }

    pub fn applied_count(&self) -> usize {
        self.results.iter().filter(|(_, o)| matches!(o, TenantOutcome::Applied(v) if !v.is_empty())).count()
    }
}

/// Brings `public` and every tenant schema up to date, `jobs` schemas at a
/// time. A failing tenant does not stop the others; see
/// [`MigrateReport::failures`].
pub fn migrate_all(pool: &PgPool, source: &Migrations, jobs: usize) -> Result<MigrateReport, DbError> {
    migrate_all_with(pool, source, jobs, false)
}

/// Like [`migrate_all`]; with `check_every_schema` the one-query fast path is
/// skipped and each schema is locked and inspected (what a tool without a
/// version column must do; the benchmark reports both).
pub fn migrate_all_with(
    pool: &PgPool,
    source: &Migrations,
    jobs: usize,
    check_every_schema: bool,
) -> Result<MigrateReport, DbError> {
    let started = Instant::now();
    let mut report = MigrateReport::default();
    let latest = latest_version(source)?;
    let behind: Vec<(String, String)> = {
        let mut conn = pool.get()?;
        report.public_applied = run_public_migrations(&mut conn)?;
        report.tenants_total = tenants::table.count().get_result::<i64>(&mut conn)? as usize;
        let mut q = tenants::table.order(tenants::id).select((tenants::slug, tenants::schema_name)).into_boxed();
        if !check_every_schema {
            let behind = tenants::schema_version.is_null().or(tenants::schema_version.lt(&latest));
            q = q.filter(behind);
        }
        q.load(&mut conn)?
    };
    report.skipped_current = report.tenants_total - behind.len();

    let queue = Arc::new(Mutex::new(VecDeque::from(behind)));
    let results = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..jobs.max(1))
        .map(|_| {
            let (queue, results, pool, source) = (queue.clone(), results.clone(), pool.clone(), source.clone());
            std::thread::spawn(move || loop {
                let next = queue.lock().map(|mut q| q.pop_front()).unwrap_or(None);
                let Some((slug, schema)) = next else { break };
                let outcome = migrate_one(&pool, &schema, &source);
                if let Ok(mut r) = results.lock() {
                    r.push((slug, outcome));
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    report.results = std::mem::take(&mut *results.lock().map_err(|_| DbError::Migration("worker panicked".into()))?);
    report.results.sort_by(|a, b| a.0.cmp(&b.0));
    report.elapsed = started.elapsed();
    Ok(report)
}

fn migrate_one(pool: &PgPool, schema: &str, source: &Migrations) -> TenantOutcome {
    let run = || -> Result<Vec<String>, DbError> {
        let schema = SchemaName::parse(schema).map_err(|e| DbError::Migration(e.message))?;
        let mut conn = pool.get()?;
        conn.transaction(|conn| migrate_schema_in_tx(conn, &schema, source))
    };
    match run() {
        Ok(v) if v.is_empty() => TenantOutcome::AlreadyCurrent,
        Ok(v) => TenantOutcome::Applied(v),
        Err(e) => TenantOutcome::Failed(e.to_string()),
    }
}
