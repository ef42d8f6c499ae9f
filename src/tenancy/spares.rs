//! Tenant schemas made ahead of time.
//!
//! A tenant schema is ~64 relations (tables, indexes, sequences, TOAST), each
//! a file; on the shared machines' disks creating them took 40–170 ms, most
//! of a sign-up. Renaming a schema is one catalog update. So the servers keep
//! a few *spares*: schemas made and migrated exactly as a tenant's, listed in
//! `public.spare_schemas` only once complete. Provisioning takes the oldest
//! (`SKIP LOCKED`, so concurrent sign-ups take different ones) and renames it
//! to the tenant's name inside the tenant's transaction, then runs the tenant
//! migrations as always: a spare made by an older release catches up there,
//! so `migrate` need not know spares exist. A failed sign-up rolls back and
//! the spare is a spare again. With none ready (a burst of sign-ups, or
//! spares switched off) the schema is created on the spot, as before.
//!
//! `SWITCHBOARD_SPARE_SCHEMAS` (default 2; 0 makes none) is how many the
//! database keeps. Every `serve` refills at start, after each sign-up it
//! handled and once a minute; instances take turns under an advisory lock,
//! so together they keep that many, not that many each.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use rand::RngCore;

use super::SchemaName;
use crate::db::migrate::{migrate_schema_in_tx, try_advisory_lock, Migrations};
use crate::db::DbError;
use crate::error::AppResult;

pub const DEFAULT_SPARES: usize = 2;

/// The refill's lock key. It has a space, so no schema's lock shares it.
const REFILL_LOCK: &str = "spare schemas";

/// How many spares to keep: `SWITCHBOARD_SPARE_SCHEMAS`, at most 20.
pub fn wanted_from_env() -> usize {
    std::env::var("SWITCHBOARD_SPARE_SCHEMAS").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_SPARES).min(20)
}

/// Takes the oldest ready spare out of the list, in the caller's
/// transaction: rolled back, it is a spare again. `None` when there is none.
pub fn take(conn: &mut PgConnection) -> Result<Option<SchemaName>, DbError> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        schema_name: String,
    }
    let row: Option<Row> = diesel::sql_query(
        "DELETE FROM public.spare_schemas WHERE schema_name = ( \
            SELECT s.schema_name FROM public.spare_schemas s \
             WHERE s.schema_name LIKE 'spare\\_%' \
               AND EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspname = s.schema_name) \
             ORDER BY s.created_at, s.schema_name LIMIT 1 FOR UPDATE OF s SKIP LOCKED) \
         RETURNING schema_name",
    )
    .get_result(conn)
    .optional()?;
    Ok(row.and_then(|r| SchemaName::parse(&r.schema_name).ok()))
}

/// Makes one spare: a new schema with every tenant migration, listed once
/// it is complete (in the caller's transaction when there is one).
pub fn make(conn: &mut PgConnection) -> AppResult<SchemaName> {
    let mut bytes = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut bytes);
    let schema = SchemaName::parse(&format!("spare_{}", hex::encode(bytes)))?;
    conn.transaction(|conn| {
        conn.batch_execute(&format!("CREATE SCHEMA {}", schema.quoted()))?;
        // Records the version on no tenant row: a spare has none yet.
        migrate_schema_in_tx(conn, &schema, &Migrations::tenant())?;
        diesel::sql_query("INSERT INTO public.spare_schemas (schema_name) VALUES ($1)")
            .bind::<Text, _>(schema.as_str())
            .execute(conn)?;
        Ok(schema)
    })
}

/// How many spares are listed.
pub fn count(conn: &mut PgConnection) -> Result<i64, DbError> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let row: Row = diesel::sql_query("SELECT count(*) AS n FROM public.spare_schemas").get_result(conn)?;
    Ok(row.n)
}

/// Makes spares until `want` are listed; returns how many it made. Another
/// instance refilling meanwhile makes this one stop (it will see to it).
pub fn refill(conn: &mut PgConnection, want: usize) -> AppResult<usize> {
    // A listed spare whose schema was dropped by hand is no spare.
    diesel::sql_query(
        "DELETE FROM public.spare_schemas s \
          WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspname = s.schema_name)",
    )
    .execute(conn)?;
    let mut made = 0;
    loop {
        let more = conn.transaction(|conn| -> AppResult<bool> {
            if !try_advisory_lock(conn, REFILL_LOCK)? || count(conn)? >= want as i64 {
                return Ok(false);
            }
            make(conn)?;
            Ok(true)
        })?;
        if !more {
            return Ok(made);
        }
        made += 1;
    }
}

/// The refill loop inside `serve` (see the module docs).
pub async fn run(state: actix_web::web::Data<crate::app::AppState>) {
    let want = wanted_from_env();
    if want == 0 {
        return;
    }
    loop {
        let pool = state.db.pool().clone();
        let result = actix_web::web::block(move || -> AppResult<usize> {
            // A pass failed on a dead connection would wait a minute.
            let mut conn = crate::db::live_connection(&pool)?;
            refill(&mut conn, want)
        })
        .await;
        match result {
            Ok(Ok(0)) => {}
            Ok(Ok(made)) => tracing::debug!(made, "spare tenant schemas made"),
            Ok(Err(e)) => tracing::warn!(error = ?e, "making spare tenant schemas failed"),
            Err(e) => tracing::error!(error = %e, "spare schema worker panicked"),
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(60), state.spares_wanted.notified()).await;
    }
}
