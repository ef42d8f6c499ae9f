//! Schema-per-tenant isolation and provisioning.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use std::panic::AssertUnwindSafe;

use switchboard::db::tenant::current_search_path;
use switchboard::db::tenant_schema::audit_log;
use switchboard::db::{with_tenant, DbError, TenantScope};
use switchboard::error::AppError;
use switchboard::ids::TenantId;
use switchboard::tenancy::{self, TenantSlug, TenantStatus};

use crate::common::TestDb;

fn provision(conn: &mut PgConnection, slug: &str) -> TenantId {
    let slug = TenantSlug::parse(slug).expect("slug");
    tenancy::provision(conn, &slug, "Test").expect("provision").tenant_id()
}

fn add_rows(conn: &mut PgConnection, t: TenantId, prefix: &str, n: usize) {
    with_tenant(conn, &TenantScope::system(t), |tc| -> Result<(), AppError> {
        for i in 0..n {
            diesel::insert_into(audit_log::table)
                .values((audit_log::action.eq(format!("{prefix}-{i}")), audit_log::target_type.eq("test")))
                .execute(tc.pg())?;
        }
        Ok(())
    })
    .expect("insert rows");
}

fn actions(conn: &mut PgConnection, t: TenantId) -> Vec<String> {
    with_tenant(conn, &TenantScope::system(t), |tc| -> Result<Vec<String>, AppError> {
        Ok(audit_log::table.select(audit_log::action).order(audit_log::id).load(tc.pg())?)
    })
    .expect("read rows")
}

/// Tenants `alpha` and `beta` with `rows` audit rows each.
fn alpha_and_beta(conn: &mut PgConnection, rows: (usize, usize)) -> (TenantId, TenantId) {
    let a = provision(conn, "alpha");
    let b = provision(conn, "beta");
    add_rows(conn, a, "alpha", rows.0);
    add_rows(conn, b, "beta", rows.1);
    (a, b)
}

#[test]
fn tenants_never_see_each_others_rows_on_a_shared_small_pool() {
    let db = TestDb::new();
    let mut setup = db.conn();
    let (a, b) = alpha_and_beta(&mut setup, (5, 7));

    for pool_size in [1u32, 2] {
        let pool = db.pool(pool_size);
        let threads: Vec<_> = (0..4)
            .map(|w| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    for i in 0..60 {
                        let (tenant, prefix, count) = if (i + w) % 2 == 0 { (a, "alpha", 5) } else { (b, "beta", 7) };
                        if i % 10 == 7 {
                            // A unit of work that panics mid-transaction; its
                            // connection must not come back with the transaction open.
                            let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
                                let mut conn = pool.get().expect("checkout");
                                let _ = with_tenant(
                                    &mut conn,
                                    &TenantScope::system(tenant),
                                    |tc| -> Result<(), AppError> {
                                        diesel::insert_into(audit_log::table)
                                            .values((audit_log::action.eq("leak"), audit_log::target_type.eq("test")))
                                            .execute(tc.pg())?;
                                        panic!("panics on purpose");
                                    },
                                );
                            }));
                            assert!(r.is_err());
                            continue;
                        }
                        let mut conn = pool.get().expect("checkout");
                        match i % 10 {
                            // A unit of work that writes, then fails: nothing stays.
                            3 => {
                                let r = with_tenant(
                                    &mut conn,
                                    &TenantScope::system(tenant),
                                    |tc| -> Result<(), AppError> {
                                        diesel::insert_into(audit_log::table)
                                            .values((audit_log::action.eq("leak"), audit_log::target_type.eq("test")))
                                            .execute(tc.pg())?;
                                        Err(AppError::invalid("boom", "fails on purpose"))
                                    },
                                );
                                assert!(r.is_err());
                            }
                            _ => {
                                let seen = actions(&mut conn, tenant);
                                assert_eq!(seen.len(), count, "tenant {prefix} saw {seen:?}");
                                assert!(seen.iter().all(|s| s.starts_with(prefix)), "tenant {prefix} saw {seen:?}");
                            }
                        }
                        // Back in the pool's hands, the connection has no tenant.
                        assert_eq!(current_search_path(&mut conn).expect("search_path"), "\"\"");
                        let outside = diesel::sql_query("SELECT count(*) FROM audit_log").execute(&mut *conn);
                        assert!(outside.is_err(), "a query outside a tenant transaction must fail");
                    }
                })
            })
            .collect();
        for t in threads {
            // Threads assert inside; a panic here would be a failed assertion
            // (the deliberate panics are caught above).
            t.join().expect("worker thread");
        }
    }
    // Nothing written by failing or panicking units remains.
    assert_eq!(actions(&mut setup, a).len(), 5);
    assert_eq!(actions(&mut setup, b).len(), 7);
}

#[test]
fn the_guard_refuses_unknown_suspended_and_unmigrated_tenants() {
    let db = TestDb::new();
    let pool = db.pool(1);
    let mut conn = pool.get().expect("checkout");
    let a = provision(&mut conn, "alpha");
    let refuse = |conn: &mut PgConnection, t: TenantId| {
        with_tenant(conn, &TenantScope::system(t), |_| -> Result<(), DbError> { Ok(()) }).expect_err("refused")
    };
    assert!(matches!(refuse(&mut conn, TenantId(999_999)), DbError::TenantNotFound));
    tenancy::set_status(&mut conn, "alpha", TenantStatus::Suspended).expect("suspend");
    assert!(matches!(refuse(&mut conn, a), DbError::TenantSuspended));
    // The refused transaction was closed: the connection is still usable.
    assert_eq!(current_search_path(&mut conn).expect("usable"), "\"\"");
    tenancy::set_status(&mut conn, "alpha", TenantStatus::Active).expect("resume");
    conn.batch_execute("UPDATE public.tenants SET schema_version = '1' WHERE slug = 'alpha'").expect("age");
    assert!(matches!(refuse(&mut conn, a), DbError::TenantNotReady));
}

#[test]
fn provisioning_is_all_or_nothing_and_refuses_bad_names() {
    let db = TestDb::new();
    let mut conn = db.conn();
    provision(&mut conn, "alpha");
    // Same slug again: 409, and no second schema or row.
    let again = tenancy::provision(&mut conn, &TenantSlug::parse("alpha").expect("slug"), "Again");
    assert_eq!(again.expect_err("duplicate").status().as_u16(), 409);
    // A schema that exists without a tenant row (left by hand): refused, and
    // the tenant row inserted before the failure is rolled back.
    conn.batch_execute("CREATE SCHEMA tenant_orphan").expect("orphan");
    let orphan = tenancy::provision(&mut conn, &TenantSlug::parse("orphan").expect("slug"), "Orphan");
    assert_eq!(orphan.expect_err("schema exists").status().as_u16(), 409);
    assert!(tenancy::find_by_slug(&mut conn, "orphan").expect("query").is_none());
    for bad in [
        "a; drop schema public",
        "Robert'); DROP TABLE",
        "\"quoted\"",
        "UPPER",
        "public",
        "pg-catalog",
        "information-schema",
        &"x".repeat(41),
    ] {
        let err = TenantSlug::parse(bad).expect_err("refused");
        assert_eq!(err.status().as_u16(), 422, "{bad}");
    }
    let schemas: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
        "(SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'tenant\\_%')",
    ))
    .get_result(&mut conn)
    .expect("count");
    assert_eq!(schemas, 2, "alpha and the hand-made orphan only");
}

/// Hand-written SQL kept prepared per connection (`db::prepared`) names
/// tenant tables unqualified, like the DSL's cached statements: PostgreSQL
/// plans it again when the search path differs, so one kept statement on one
/// connection reads whichever tenant the transaction is scoped to.
#[test]
fn a_kept_statement_reads_the_tenant_of_the_moment() {
    use diesel::sql_types::{BigInt, Text};
    use switchboard::db::prepared;
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let db = TestDb::new();
    let mut conn = db.conn();
    let (a, b) = alpha_and_beta(&mut conn, (2, 3));
    for _ in 0..3 {
        for (tenant, want) in [(a, 2), (b, 3), (a, 2)] {
            let n = with_tenant(&mut conn, &TenantScope::system(tenant), |tc| -> Result<i64, AppError> {
                let c: Count = prepared("SELECT count(*) AS n FROM audit_log WHERE target_type = $1")
                    .bind::<Text, _>("test")
                    .get_result(tc.pg())?;
                Ok(c.n)
            })
            .expect("count");
            assert_eq!(n, want);
        }
    }
    let kept: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_prepared_statements WHERE statement LIKE 'SELECT count(*) AS n FROM audit_log%'",
    )
    .get_result(&mut conn)
    .expect("prepared statements");
    assert_eq!(kept.n, 1, "prepared once on this connection, not per run or per tenant");
}
