//! Schema-per-tenant isolation and provisioning.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use std::panic::AssertUnwindSafe;

use switchboard::db::migrate::latest_tenant_version;
use switchboard::db::tenant::current_search_path;
use switchboard::db::tenant_schema::audit_log;
use switchboard::db::{with_tenant, DbError, TenantScope};
use switchboard::error::AppError;
use switchboard::ids::TenantId;
use switchboard::tenancy::{self, spares, TenantSlug, TenantStatus};

use crate::common::{eventually, spawn_app, TestDb};

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

fn spare_names(conn: &mut PgConnection) -> Vec<String> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Array<diesel::sql_types::Text>>(
        "(SELECT coalesce(array_agg(schema_name ORDER BY created_at, schema_name), '{}') FROM public.spare_schemas)",
    ))
    .get_result(conn)
    .expect("spares")
}

fn schema_exists(conn: &mut PgConnection, name: &str) -> bool {
    diesel::select(
        diesel::dsl::sql::<diesel::sql_types::Bool>("EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = ")
            .bind::<diesel::sql_types::Text, _>(name)
            .sql(")"),
    )
    .get_result(conn)
    .expect("schema exists")
}

/// What a schema holds: every column with its type and default, every index
/// and constraint, with the schema's own name taken out.
fn fingerprint(conn: &mut PgConnection, schema: &str) -> Vec<String> {
    diesel::select(
        diesel::dsl::sql::<diesel::sql_types::Array<diesel::sql_types::Text>>(
            "(SELECT array_agg(replace(x, s, '?') ORDER BY x) FROM (SELECT ",
        )
        .bind::<diesel::sql_types::Text, _>(schema)
        .sql(
            "::text AS s) q, LATERAL (
                SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || coalesce(column_default, '') AS x
                  FROM information_schema.columns WHERE table_schema = q.s
                UNION ALL SELECT indexdef FROM pg_indexes WHERE schemaname = q.s
                UNION ALL SELECT conrelid::regclass::text || ' ' || pg_get_constraintdef(c.oid)
                  FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = q.s
             ) f)",
        ),
    )
    .get_result(conn)
    .expect("fingerprint")
}

#[test]
fn a_spare_schema_becomes_the_tenant_and_a_failed_sign_up_gives_it_back() {
    let db = TestDb::new();
    let mut conn = db.conn();
    let fresh = provision(&mut conn, "fresh");
    assert!(spare_names(&mut conn).is_empty(), "nothing made spares here");
    assert_eq!(spares::refill(&mut conn, 2).expect("refill"), 2);
    assert_eq!(spares::refill(&mut conn, 2).expect("refill again"), 0, "two are listed already");
    let before = spare_names(&mut conn);
    assert_eq!(before.len(), 2);

    // The oldest spare becomes alpha's schema: renamed, not made again, and
    // the same as a schema made on the spot.
    let alpha = provision(&mut conn, "alpha");
    let after = spare_names(&mut conn);
    assert_eq!(after, before[1..].to_vec());
    assert!(!schema_exists(&mut conn, &before[0]), "the spare was renamed");
    assert_eq!(fingerprint(&mut conn, "tenant_alpha"), fingerprint(&mut conn, "tenant_fresh"));
    add_rows(&mut conn, alpha, "alpha", 3);
    add_rows(&mut conn, fresh, "fresh", 1);
    assert_eq!(actions(&mut conn, alpha), ["alpha-0", "alpha-1", "alpha-2"]);
    let row = tenancy::find_by_slug(&mut conn, "alpha").expect("query").expect("alpha");
    assert_eq!(row.schema_version.as_deref(), Some(latest_tenant_version()));

    // A sign-up that fails after taking a spare (its schema name is taken)
    // rolls back: the spare is listed again, under its own name.
    conn.batch_execute("CREATE SCHEMA tenant_orphan").expect("orphan");
    let orphan = tenancy::provision(&mut conn, &TenantSlug::parse("orphan").expect("slug"), "Orphan");
    assert_eq!(orphan.expect_err("schema exists").status().as_u16(), 409);
    assert_eq!(spare_names(&mut conn), after);
    assert!(schema_exists(&mut conn, &after[0]));

    // A listed spare dropped by hand is passed over (the schema is made on
    // the spot), and the next refill forgets it.
    conn.batch_execute(&format!("DROP SCHEMA \"{}\" CASCADE", after[0])).expect("drop by hand");
    let beta = provision(&mut conn, "beta");
    add_rows(&mut conn, beta, "beta", 1);
    assert_eq!(actions(&mut conn, beta), ["beta-0"]);
    assert_eq!(spares::refill(&mut conn, 1).expect("refill"), 1);
    let now = spare_names(&mut conn);
    assert_eq!(now.len(), 1);
    assert_ne!(now[0], after[0]);
}

#[test]
fn concurrent_sign_ups_each_get_a_schema_of_their_own() {
    let db = TestDb::new();
    let mut conn = db.conn();
    provision(&mut conn, "fresh");
    spares::refill(&mut conn, 3).expect("refill");
    let pool = db.pool(5);
    let handles: Vec<_> = (0..5)
        .map(|i| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let mut conn = pool.get().expect("conn");
                let slug = TenantSlug::parse(&format!("shop-{i}")).expect("slug");
                tenancy::provision(&mut conn, &slug, "Shop").map(|t| t.tenant_id())
            })
        })
        .collect();
    let tenants: Vec<TenantId> =
        handles.into_iter().map(|h| h.join().expect("thread").expect("every sign-up succeeds")).collect();
    for (i, t) in tenants.iter().enumerate() {
        add_rows(&mut conn, *t, &format!("shop{i}"), 1);
        assert_eq!(actions(&mut conn, *t), [format!("shop{i}-0")]);
        assert_eq!(fingerprint(&mut conn, &format!("tenant_shop_{i}")), fingerprint(&mut conn, "tenant_fresh"));
    }
    // No spare was taken twice or lost: what is left is listed, and listed
    // ones are exactly the spare schemas that remain.
    let listed = spare_names(&mut conn);
    let remaining: Vec<String> = diesel::select(diesel::dsl::sql::<diesel::sql_types::Array<diesel::sql_types::Text>>(
        "(SELECT coalesce(array_agg(nspname::text ORDER BY nspname), '{}') FROM pg_namespace WHERE nspname LIKE 'spare\\_%')",
    ))
    .get_result(&mut conn)
    .expect("spare schemas");
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, remaining);
    assert!(listed.len() < 3, "some sign-ups took a spare");
}

#[test]
fn a_spare_made_by_an_older_release_catches_up_when_taken() {
    let db = TestDb::new();
    let mut conn = db.conn();
    provision(&mut conn, "fresh");
    let spare = spares::make(&mut conn).expect("spare");
    // Undo the newest tenant migration in the spare, as if an older release
    // had made it.
    let dir = crate::common::project_dir().join("tenants");
    let mut versions: Vec<_> = std::fs::read_dir(&dir).expect("tenants/").map(|e| e.expect("entry").path()).collect();
    versions.sort();
    let newest = versions.last().expect("a tenant migration");
    let down = std::fs::read_to_string(newest.join("down.sql")).expect("down.sql");
    conn.transaction(|c| -> QueryResult<()> {
        c.batch_execute(&format!("SET LOCAL search_path = \"{}\"", spare.as_str()))?;
        c.batch_execute(&down)?;
        diesel::sql_query("DELETE FROM __diesel_schema_migrations WHERE version = $1")
            .bind::<diesel::sql_types::Text, _>(latest_tenant_version())
            .execute(c)?;
        Ok(())
    })
    .expect("make the spare older");
    assert_ne!(fingerprint(&mut conn, spare.as_str()), fingerprint(&mut conn, "tenant_fresh"), "older, so different");
    let t = provision(&mut conn, "gamma");
    assert!(!schema_exists(&mut conn, spare.as_str()), "the old spare was taken");
    assert_eq!(fingerprint(&mut conn, "tenant_gamma"), fingerprint(&mut conn, "tenant_fresh"));
    let row = tenancy::find_by_slug(&mut conn, "gamma").expect("query").expect("gamma");
    assert_eq!(row.schema_version.as_deref(), Some(latest_tenant_version()));
    add_rows(&mut conn, t, "gamma", 1);
}

#[actix_web::test]
async fn the_server_keeps_spares_ready_and_sign_up_takes_one() {
    let app = spawn_app().await;
    let count = "SELECT count(*) AS n FROM public.spare_schemas";
    eventually("two spares made at start", || async { app.count(count) == 2 }).await;
    let oldest = spare_names(&mut app.db.conn())[0].clone();
    app.signup("delta", "owner@delta.test", "correct horse battery").await;
    let mut conn = app.db.conn();
    assert!(!schema_exists(&mut conn, &oldest), "sign-up renamed the oldest spare");
    assert!(schema_exists(&mut conn, "tenant_delta"));
    eventually("refilled after the sign-up", || async { app.count(count) == 2 }).await;
    assert!(!spare_names(&mut conn).contains(&oldest));
}

/// Cuts every server-side connection of the app's database but the caller's
/// (as a restart, a failover or a proxy dropping idle connections would);
/// how many.
fn cut_connections(app: &crate::common::TestApp) -> i64 {
    app.count(
        "SELECT count(pg_terminate_backend(pid, 5000)) AS n FROM pg_stat_activity \
          WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
}

/// Pooled connections the server closed since are replaced before any work:
/// a tenant request, a webhook or a login does not fail for one.
#[actix_web::test]
async fn connections_the_server_closed_cost_no_request() {
    let app = crate::common::spawn_app_without_workers().await;
    let owner = app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let access = crate::common::token(&owner, "access_token");
    let lost = || switchboard::metrics::DB_CONNECTIONS_LOST.load(std::sync::atomic::Ordering::Relaxed);
    let before = lost();
    // Every idle pooled connection (and the bus's listener) is cut; without
    // workers nothing else takes one before the requests below.
    assert!(cut_connections(&app) >= 4);
    for _ in 0..8 {
        let r = app.call("GET", "/api/conversations", Some(&access), None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    assert!(lost() > before, "the closed connections were met and replaced");
    cut_connections(&app);
    let body = crate::common::messenger_text("5100000000000001", "m_cut.1", "still there?");
    for _ in 0..4 {
        assert_eq!(app.webhook(&body).await, 200);
    }
    cut_connections(&app);
    for _ in 0..6 {
        let r = app
            .call(
                "POST",
                "/api/auth/login",
                None,
                Some(serde_json::json!({"email": "ann@acme.test", "password": "ann-password-1", "tenant": "acme"})),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
}

/// The spare-schema refill's pass meets connections the server closed (a
/// restart, a failover, an idle timeout) and goes on with another: the
/// spares are made at once. Before, the pass failed on the first dead one
/// and waited its minute, or the next sign-up, to go again.
#[actix_web::test]
async fn the_spare_refill_goes_on_after_the_connections_were_cut() {
    let app = crate::common::spawn_app_without_workers().await;
    let want = spares::wanted_from_env() as i64;
    assert!(want > 0, "this test needs SWITCHBOARD_SPARE_SCHEMAS unset or above 0");
    assert_eq!(app.count("SELECT count(*) AS n FROM public.spare_schemas"), 0, "no worker made spares");
    // Every idle pooled connection is cut, once the listener, started,
    // has asked the other instances for their presence (on the pool: done
    // after the cut, it would pass over the dead connections and leave
    // the refill fresh ones). The listener itself is not cut: back, it
    // would do so again. Without workers nothing else takes one.
    eventually("the listener's first publish", || async {
        app.count(
            "SELECT count(*) AS n FROM pg_stat_activity \
              WHERE datname = current_database() AND state = 'idle' AND query LIKE '%pg_notify%'",
        ) > 0
    })
    .await;
    let cut = app.count(
        "SELECT count(pg_terminate_backend(pid, 5000)) AS n FROM pg_stat_activity \
          WHERE datname = current_database() AND pid <> pg_backend_pid() AND query NOT LIKE 'LISTEN%'",
    );
    assert!(cut >= 4, "the pool's connections");
    let refill = actix_web::rt::spawn(spares::run(app.state.clone()));
    eventually("the spares made", || async { app.count("SELECT count(*) AS n FROM public.spare_schemas") == want })
        .await;
    refill.abort();
}

/// The workers' claims move to another connection too: the first pass after
/// the pool's connections were closed claims its work instead of failing
/// (and leaving it a batch later).
#[actix_web::test]
async fn the_workers_claims_survive_closed_connections() {
    let app = crate::common::spawn_app_without_workers().await;
    // A page no tenant holds: claimed, then dead-lettered.
    app.store_bodies(&[crate::common::messenger_text("5100000000000002", "m_claim.1", "anyone there?")]);
    assert!(cut_connections(&app) >= 4);
    let (pool, app_id, online) = (app.pool.clone(), app.config.meta.app_id.clone(), app.state.online.clone());
    let report =
        actix_web::web::block(move || switchboard::inbox::processor::process_batch(&pool, &app_id, &online, 100))
            .await
            .expect("blocking pool")
            .expect("the processor's pass");
    assert_eq!(report.claimed, 1);
    // The pool still holds the connections the first cut closed; of those
    // opened since (the pass's own, returned to the pool, and whatever the
    // pool has opened by now: a matter of timing) none is left open.
    assert!(cut_connections(&app) >= 1);
    let claimed = switchboard::inbox::sender::run_once(&app.state, &switchboard::inbox::sender::Pacer::default())
        .await
        .expect("the sender's pass");
    assert_eq!(claimed, 0, "nothing was queued");
}

/// A live message (typing, presence: no transaction of a request carries
/// it) goes out on another connection when the pooled one it got was
/// closed by the server since, rather than being lost.
#[actix_web::test]
async fn a_live_message_survives_a_closed_connection() {
    use switchboard::realtime::bus::{Bus, LiveMsg, PgBus};
    let app = crate::common::spawn_app_without_workers().await;
    // Both opened at once (min_idle), then closed under the pool.
    let pool = app.db.pool(2);
    assert!(cut_connections(&app) >= 2);
    let lost = || switchboard::metrics::DB_CONNECTIONS_LOST.load(std::sync::atomic::Ordering::Relaxed);
    let before = lost();
    let bus = PgBus::new(pool);
    actix_web::web::block(move || bus.publish(&LiveMsg::Alive { inst: "a-test".into() }))
        .await
        .expect("blocking pool")
        .expect("published");
    assert!(lost() > before, "the closed connection was met and replaced");
}

/// An idle worker sleeps until its queue's next row falls due, never past
/// `IDLE_MOST` (another instance's leftovers), and looks again soon when
/// rows are due but held (another worker claimed them).
#[actix_web::test]
async fn idle_workers_sleep_until_their_next_row_falls_due() {
    use std::time::Duration;
    use switchboard::db::queue::{idle_wait, Queue, HELD_RETRY, IDLE_MOST};
    let app = crate::common::spawn_app_without_workers().await;
    let mut conn = app.db.conn();
    assert_eq!(idle_wait(&mut conn, Queue::Webhooks).expect("wait"), IDLE_MOST);
    assert_eq!(idle_wait(&mut conn, Queue::Sends).expect("wait"), IDLE_MOST);
    app.signup("idle", "ida@idle.test", "ida-password-1").await;
    // A webhook to retry in a second; a reply to retry in a second and a half.
    conn.batch_execute(
        "INSERT INTO public.webhook_events (body, next_attempt_at) VALUES ('{}', now() + interval '1 second')",
    )
    .expect("a retry");
    conn.batch_execute(
        "INSERT INTO public.send_queue (tenant_id, kind, next_attempt_at) \
         SELECT id, 'message', now() + interval '1.5 seconds' FROM public.tenants WHERE slug = 'idle'",
    )
    .expect("a send to retry");
    let about = |wait: Duration, secs: f64| {
        let s = wait.as_secs_f64();
        // Less by the time this test took since the insert.
        assert!(s > secs - 0.4 && s <= secs + 0.01, "{wait:?} against {secs} s");
    };
    about(idle_wait(&mut conn, Queue::Webhooks).expect("wait"), 1.0);
    about(idle_wait(&mut conn, Queue::Sends).expect("wait"), 1.5);
    // Due, but no claim took it (another worker's lease): soon again.
    conn.batch_execute("UPDATE public.webhook_events SET next_attempt_at = now() - interval '1 second'").expect("due");
    assert_eq!(idle_wait(&mut conn, Queue::Webhooks).expect("wait"), HELD_RETRY);
    // Done and dead rows are no work.
    conn.batch_execute("UPDATE public.webhook_events SET status = 'done'").expect("done");
    conn.batch_execute("UPDATE public.send_queue SET status = 'dead'").expect("dead");
    assert_eq!(idle_wait(&mut conn, Queue::Webhooks).expect("wait"), IDLE_MOST);
    assert_eq!(idle_wait(&mut conn, Queue::Sends).expect("wait"), IDLE_MOST);
    // The workers ask on a pooled connection that works: after every one
    // was cut, the answer is the queue's, not the error's quick retry.
    drop(conn);
    assert!(cut_connections(&app) >= 4);
    assert_eq!(switchboard::inbox::idle_wait(&app.state, Queue::Webhooks).await, IDLE_MOST);
    assert_eq!(switchboard::inbox::idle_wait(&app.state, Queue::Sends).await, IDLE_MOST);
}

/// A transaction PostgreSQL ends to break a deadlock is a concurrent
/// update to retry (503 `retry`, `Retry-After`), not our bug (a 500): two
/// transactions here lock two rows in opposite orders.
#[test]
fn a_deadlock_is_answered_as_a_retry() {
    let db = TestDb::new();
    let pool = db.pool(2);
    pool.get()
        .expect("conn")
        .batch_execute("CREATE TABLE public.deadlock_probe (id int PRIMARY KEY); INSERT INTO public.deadlock_probe VALUES (1), (2)")
        .expect("table");
    let both = std::sync::Arc::new(std::sync::Barrier::new(2));
    let lock = |first: i32, second: i32| {
        let (pool, both) = (pool.clone(), both.clone());
        std::thread::spawn(move || {
            let mut conn = pool.get().expect("conn");
            conn.transaction::<_, DbError, _>(|conn| {
                let take = |conn: &mut PgConnection, id: i32| {
                    diesel::sql_query(format!("SELECT id FROM public.deadlock_probe WHERE id = {id} FOR UPDATE"))
                        .execute(conn)
                };
                take(conn, first)?;
                both.wait();
                take(conn, second)?;
                Ok(())
            })
        })
    };
    let (a, b) = (lock(1, 2), lock(2, 1));
    let ended: Vec<AppError> =
        [a, b].into_iter().filter_map(|t| t.join().expect("thread").err()).map(AppError::from).collect();
    assert_eq!(ended.len(), 1, "one goes on: {ended:?}");
    assert_eq!((ended[0].status().as_u16(), ended[0].code.as_ref(), ended[0].retry_after), (503, "retry", Some(1)));
}

/// A TCP forwarder to the test database's server that can be cut: every
/// flow through it ends and new ones are refused, as when the database
/// goes down or the network to it fails.
struct Outage {
    url: String,
    tasks: std::rc::Rc<std::cell::RefCell<Vec<actix_web::rt::task::JoinHandle<()>>>>,
}

impl Outage {
    /// `database_url` with its host and port replaced by the forwarder's.
    async fn before(database_url: &str) -> Outage {
        let scheme = database_url.find("://").map_or(0, |i| i + 3);
        let at = database_url[scheme..].find('@').map_or(scheme, |i| scheme + i + 1);
        let end = database_url[at..].find(['/', '?']).map_or(database_url.len(), |i| at + i);
        let server = database_url[at..end].to_string();
        let server = if server.contains(':') { server } else { format!("{server}:5432") };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("{}{}{}", &database_url[..at], listener.local_addr().expect("addr"), &database_url[end..]);
        let tasks = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let flows = tasks.clone();
        let accept = actix_web::rt::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let server = server.clone();
                flows.borrow_mut().push(actix_web::rt::spawn(async move {
                    if let Ok(mut db) = tokio::net::TcpStream::connect(server).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut db).await;
                    }
                }));
            }
        });
        tasks.borrow_mut().push(accept);
        Outage { url, tasks }
    }

    fn begin(&self) {
        for t in self.tasks.borrow_mut().drain(..) {
            t.abort();
        }
    }
}

/// With the database out of reach, the health probes answer within about
/// `db::PROBE_WAIT`, not the pool's connect timeout of 5 s: a load
/// balancer's or Kubernetes' probe (1 s by default) gets its 503. So does
/// a webhook, inside the 5 s Meta gives it (before, it waited the connect
/// timeout, and the webhooks that came meanwhile queued behind it). Each
/// refusal is counted in `switchboard_requests_unavailable_total`.
#[actix_web::test]
async fn probes_answer_at_once_while_the_database_is_out_of_reach() {
    use std::time::{Duration, Instant};
    let app = crate::common::spawn_app_without_workers().await;
    let outage = Outage::before(app.config.db.database_url.expose()).await;
    let options =
        switchboard::db::PoolOptions { max_size: 3, min_idle: Some(3), connect_timeout: Duration::from_secs(5) };
    // Opened on another thread: the forwarder runs on this one.
    let url = outage.url.clone();
    let pool = actix_web::web::block(move || switchboard::db::connect_pool(&url, options))
        .await
        .expect("blocking pool")
        .expect("a pool through the forwarder");
    // A pool only busy is waited for past PROBE_WAIT: a loaded instance is
    // not unready.
    let held: Vec<_> = (0..3).map(|_| pool.get().expect("conn")).collect();
    let release = std::thread::spawn(move || {
        std::thread::sleep(switchboard::db::PROBE_WAIT * 3);
        drop(held);
    });
    let probe = switchboard::db::Db::new(pool.clone()).probe(|_| Ok::<_, AppError>(())).await;
    assert!(probe.is_ok(), "a busy pool was not waited for");
    release.join().expect("release");
    let state = actix_web::web::Data::new(switchboard::app::AppState::new(
        std::sync::Arc::new({
            let mut c = (*app.config).clone();
            c.db.database_url = outage.url.clone().into();
            c
        }),
        switchboard::db::Db::new(pool),
    ));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    actix_web::rt::spawn(switchboard::http::build_server(state, listener).expect("server"));
    let get = |path: &str| app.client.get(format!("{base}{path}")).send();
    assert_eq!(get("/readyz").await.expect("readyz").status(), 200);
    let refused = || switchboard::metrics::REQUESTS_UNAVAILABLE.load(std::sync::atomic::Ordering::Relaxed);
    let refused_before = refused();
    outage.begin();
    for _ in 0..2 {
        let started = Instant::now();
        let r = get("/readyz").await.expect("readyz");
        let took = started.elapsed();
        assert_eq!(r.status(), 503);
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
        assert!(took < Duration::from_secs(3), "/readyz took {took:?}");
        let started = Instant::now();
        let metrics = get("/metrics").await.expect("metrics").text().await.expect("text");
        assert!(metrics.contains("\nswitchboard_webhooks_pending -1\n"), "{metrics}");
        assert!(started.elapsed() < Duration::from_secs(3), "/metrics took {:?}", started.elapsed());
        // Meta wants its answer within 5 s: a 503 it retries, at once.
        let started = Instant::now();
        let body = crate::common::messenger_text("4001", "m.outage", "hi");
        assert_eq!(app.webhook_at(&base, &body).await, 503);
        assert!(started.elapsed() < Duration::from_secs(3), "the webhook took {:?}", started.elapsed());
    }
    // Told in the log once a while (`telemetry`), each one counted.
    assert!(refused() >= refused_before + 4, "two /readyz and two webhooks refused");
}

/// A server that takes the TCP connection and never answers (hung, or a
/// proxy in front of one that is down) does not hold an attempt to connect
/// for ever: our connections are opened with a connect timeout
/// (`db::connection_string`), so the pool's and the bus listener's
/// attempts come back and try again.
#[test]
fn a_server_that_never_answers_is_given_up_on() {
    use std::time::Duration;
    // Never accepted: the kernel completes the handshake and keeps what
    // libpq sends.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("postgres://postgres@{}/none", hole.local_addr().expect("addr"));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(PgConnection::establish(&switchboard::db::connection_string(&url)).is_err());
    });
    assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Ok(true), "still waiting 20 s in");
    drop(hole);
}
