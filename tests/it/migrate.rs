//! `migrate` over many tenant schemas: fast skip, concurrency, failures, and
//! every tenant migration's `down.sql`.

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationSource;
use diesel::prelude::*;
use diesel_migrations::{FileBasedMigrations, MigrationHarness};
use std::path::{Path, PathBuf};

use switchboard::db::migrate::{latest_version, migrate_all, Migrations, TenantOutcome};
use switchboard::tenancy::{self, TenantSlug};

use crate::common::TestDb;

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// The embedded tenant migrations plus one new one, as a folder.
fn migrations_with_extra() -> (PathBuf, Migrations) {
    let dir = std::env::temp_dir().join(format!("sb-migrations-{}-{}", std::process::id(), rand::random::<u32>()));
    copy_dir(&crate::common::project_dir().join("tenants"), &dir);
    let extra = dir.join("2099-01-01-000001_extra_thing");
    std::fs::create_dir_all(&extra).expect("mkdir");
    std::fs::write(extra.join("up.sql"), "CREATE TABLE extra_thing (id BIGSERIAL PRIMARY KEY, note TEXT);")
        .expect("write");
    std::fs::write(extra.join("down.sql"), "DROP TABLE extra_thing;").expect("write");
    let source = FileBasedMigrations::from_path(&dir).expect("migrations folder");
    (dir, Migrations::new(source))
}

fn applied_versions(conn: &mut PgConnection, schema: &str) -> i64 {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
        "(SELECT count(*) FROM \"{schema}\".__diesel_schema_migrations)"
    )))
    .get_result(conn)
    .expect("count")
}

#[test]
fn migrate_two_hundred_tenants_concurrently_with_one_failing() {
    const N: usize = 200;
    let db = TestDb::new();
    let pool = db.pool(10);
    // Provision in parallel to keep the test short.
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let mut conn = pool.get().expect("conn");
                for i in (w..N).step_by(4) {
                    let slug = TenantSlug::parse(&format!("t{i:03}")).expect("slug");
                    tenancy::provision(&mut conn, &slug, "T").expect("provision");
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("provision worker");
    }
    let mut conn = db.conn();
    // Make one tenant fail the new migration: the table already exists there.
    conn.batch_execute("CREATE TABLE tenant_t042.extra_thing (x INT)").expect("sabotage");

    let (dir, source) = migrations_with_extra();
    let latest = latest_version(&source).expect("latest");
    assert_eq!(latest, "20990101000001");

    // Two runs at once, as two operators (or an operator and a server start).
    let runs: Vec<_> = (0..2)
        .map(|_| {
            let (pool, source) = (pool.clone(), source.clone());
            std::thread::spawn(move || migrate_all(&pool, &source, 4).expect("migrate runs"))
        })
        .collect();
    let reports: Vec<_> = runs.into_iter().map(|r| r.join().expect("run")).collect();

    let mut applied_by = std::collections::HashMap::<String, usize>::new();
    for report in &reports {
        assert_eq!(report.tenants_total, N);
        let failed: Vec<_> = report.failures().map(|(s, _)| s.to_string()).collect();
        assert_eq!(failed, vec!["t042".to_string()], "only the sabotaged tenant fails");
        for (slug, outcome) in &report.results {
            if let TenantOutcome::Applied(v) = outcome {
                assert_eq!(v, &vec![latest.clone()], "{slug}");
                *applied_by.entry(slug.clone()).or_default() += 1;
            }
        }
    }
    assert_eq!(applied_by.len(), N - 1, "every healthy tenant migrated");
    assert!(applied_by.values().all(|n| *n == 1), "no tenant migrated twice");

    for i in 0..N {
        let schema = format!("tenant_t{i:03}");
        let embedded = Migrations::tenant().migrations().expect("embedded").len() as i64;
        let expected = if i == 42 { embedded } else { embedded + 1 };
        assert_eq!(applied_versions(&mut conn, &schema), expected, "{schema}");
    }
    let behind: i64 = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(&format!(
        "(SELECT count(*) FROM public.tenants WHERE schema_version < '{latest}')"
    )))
    .get_result(&mut conn)
    .expect("count");
    assert_eq!(behind, 1);

    // A third run skips every current schema with one query and retries the failure.
    let third = migrate_all(&pool, &source, 4).expect("third run");
    assert_eq!(third.skipped_current, N - 1);
    assert_eq!(third.results.len(), 1);
    assert_eq!(third.failures().count(), 1);

    // Fixed by hand, the tenant catches up.
    conn.batch_execute("DROP TABLE tenant_t042.extra_thing").expect("repair");
    let fourth = migrate_all(&pool, &source, 4).expect("fourth run");
    assert_eq!(fourth.failures().count(), 0);
    assert_eq!(fourth.applied_count(), 1);
    let _ = std::fs::remove_dir_all(dir);
}

#[derive(QueryableByName, PartialEq, Debug)]
struct Column {
    #[diesel(sql_type = diesel::sql_types::Text)]
    table_name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    column_name: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    data_type: String,
}

fn columns(conn: &mut PgConnection, schema: &str) -> Vec<Column> {
    diesel::sql_query(format!(
        "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = '{schema}' AND table_name <> '__diesel_schema_migrations' ORDER BY 1, 2"
    ))
    .load(conn)
    .expect("columns")
}

#[test]
fn every_tenant_migration_reverts_and_reapplies_cleanly() {
    let db = TestDb::new();
    let mut conn = db.conn();
    tenancy::provision(&mut conn, &TenantSlug::parse("alpha").expect("slug"), "A").expect("provision");
    let before = columns(&mut conn, "tenant_alpha");
    assert!(!before.is_empty());
    conn.transaction(|conn| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        conn.batch_execute("SELECT set_config('search_path', 'tenant_alpha', true)")?;
        conn.revert_all_migrations(Migrations::tenant())?;
        assert!(columns(conn, "tenant_alpha").is_empty(), "down.sql leaves tables behind");
        conn.run_pending_migrations(Migrations::tenant())?;
        Ok(())
    })
    .expect("revert and re-run");
    assert_eq!(columns(&mut conn, "tenant_alpha"), before);
}

#[test]
fn routes_take_their_channels_parents_when_the_column_arrives() {
    use switchboard::db::migrate::PUBLIC_MIGRATIONS;
    let db = TestDb::new();
    let mut conn = db.conn();
    let tenant = tenancy::provision(&mut conn, &TenantSlug::parse("alpha").expect("slug"), "A").expect("provision");
    // A tenant whose schema is not there (dropped by hand): skipped.
    tenancy::provision(&mut conn, &TenantSlug::parse("gone").expect("slug"), "G").expect("provision");
    conn.batch_execute(&format!(
        "DROP SCHEMA tenant_gone CASCADE;
         INSERT INTO tenant_alpha.channels (id, platform, external_id, name, parent_external_id)
              VALUES (7, 'whatsapp', '555001', 'n1', 'waba-1'), (8, 'facebook', 'page-1', 'p', NULL);
         INSERT INTO public.channel_routes (platform, external_id, tenant_id, channel_id)
              VALUES ('whatsapp', '555001', {t}, 7), ('facebook', 'page-1', {t}, 8);",
        t = tenant.id
    ))
    .expect("seed");
    // Back to before the column (and what came after it), and forward
    // again: the backfill runs.
    while conn.revert_last_migration(PUBLIC_MIGRATIONS).expect("revert").to_string() != "20261129000006" {}
    conn.run_pending_migrations(PUBLIC_MIGRATIONS).expect("re-run");
    #[derive(QueryableByName, Debug, PartialEq)]
    struct Route {
        #[diesel(sql_type = diesel::sql_types::Text)]
        external_id: String,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        parent_external_id: Option<String>,
    }
    let routes: Vec<Route> =
        diesel::sql_query("SELECT external_id, parent_external_id FROM public.channel_routes ORDER BY external_id")
            .load(&mut conn)
            .expect("routes");
    assert_eq!(
        routes,
        vec![
            Route { external_id: "555001".into(), parent_external_id: Some("waba-1".into()) },
            Route { external_id: "page-1".into(), parent_external_id: None },
        ]
    );
}

/// Events logged while payloads were jsonb are kept, and still read back,
/// once the column is json.
#[test]
fn events_logged_as_jsonb_survive_the_move_to_json() {
    let db = TestDb::new();
    let mut conn = db.conn();
    tenancy::provision(&mut conn, &TenantSlug::parse("alpha").expect("slug"), "A").expect("provision");
    conn.transaction(|conn| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        conn.batch_execute("SELECT set_config('search_path', 'tenant_alpha', true)")?;
        // Back to before the move (not merely the last migration, which
        // later ones have since become).
        while conn.revert_last_migration(Migrations::tenant())?.to_string() != "20261129000002" {}
        conn.batch_execute(
            r#"INSERT INTO events (seq, type, payload) VALUES (1, 'channel.updated', '{"id": "7", "status": "reauth_required"}')"#,
        )?;
        conn.run_pending_migrations(Migrations::tenant())?;
        Ok(())
    })
    .expect("revert, log, re-run");
    #[derive(QueryableByName)]
    struct Payload {
        #[diesel(sql_type = diesel::sql_types::Text)]
        status: String,
    }
    let p: Payload = diesel::sql_query("SELECT payload->>'status' AS status FROM tenant_alpha.events WHERE seq = 1")
        .get_result(&mut conn)
        .expect("event");
    assert_eq!(p.status, "reauth_required");
}

/// Conversations already waiting when `waiting_since` arrives get it from
/// their messages: the customer's first message after the team's last
/// answer (not a failed reply, a note or an automatic message); none for
/// an answered or resolved one.
#[test]
fn conversations_waiting_before_the_column_arrives_get_their_wait() {
    let db = TestDb::new();
    let mut conn = db.conn();
    tenancy::provision(&mut conn, &TenantSlug::parse("alpha").expect("slug"), "A").expect("provision");
    #[derive(QueryableByName, Debug, PartialEq)]
    struct Waiting {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        since: Option<String>,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        due: Option<String>,
    }
    let waiting: Vec<Waiting> = conn
        .transaction(|conn| -> Result<Vec<Waiting>, Box<dyn std::error::Error + Send + Sync>> {
            conn.batch_execute("SELECT set_config('search_path', 'tenant_alpha', true)")?;
            while conn.revert_last_migration(Migrations::tenant())?.to_string() != "20261201000012" {}
            // 1: asked twice, answered by a reply that failed and by an
            // auto-reply, with a note: waits since its first question.
            // 2: asked, answered by an agent: waits for nobody.
            // 3: answered, asked again twice: since the later first one.
            // 4: asked, resolved: nobody. 5: answered from Meta's apps.
            // Due: 30 minutes with no priority; 1 is high, whose target
            // was stored by hand as a word, which is no target.
            conn.batch_execute(
                "INSERT INTO channels (id, platform, external_id, name, settings) VALUES (1, 'facebook', 'page-1', 'P',
                        '{\"reply_targets\": {\"none\": 30, \"high\": \"soon\"}}');
                 INSERT INTO contacts (id, channel_id, external_id) SELECT i, 1, 'psid-' || i FROM generate_series(1, 5) i;
                 INSERT INTO conversations (id, channel_id, contact_id, status, last_inbound_at)
                      SELECT i, 1, i, CASE WHEN i = 4 THEN 'resolved' ELSE 'open' END, now() FROM generate_series(1, 5) i;
                 UPDATE conversations SET priority = 'high' WHERE id = 1;
                 INSERT INTO messages (conversation_id, channel_id, direction, sender_kind, status, client_id, private, sort_at) VALUES
                   (1, 1, 'in', 'contact', 'received', NULL, false, '2026-03-01 10:00Z'),
                   (1, 1, 'out', 'agent', 'failed', 'c1', false, '2026-03-01 10:01Z'),
                   (1, 1, 'out', 'page', 'sent', 'auto-reply:1', false, '2026-03-01 10:02Z'),
                   (1, 1, 'out', 'agent', 'pending', 'n1', true, '2026-03-01 10:03Z'),
                   (1, 1, 'in', 'contact', 'received', NULL, false, '2026-03-01 10:04Z'),
                   (2, 1, 'in', 'contact', 'received', NULL, false, '2026-03-01 10:00Z'),
                   (2, 1, 'out', 'agent', 'sent', 'c2', false, '2026-03-01 10:05Z'),
                   (3, 1, 'in', 'contact', 'received', NULL, false, '2026-03-01 09:00Z'),
                   (3, 1, 'out', 'agent', 'read', 'c3', false, '2026-03-01 09:30Z'),
                   (3, 1, 'in', 'contact', 'received', NULL, false, '2026-03-01 11:00Z'),
                   (3, 1, 'in', 'contact', 'received', NULL, false, '2026-03-01 11:10Z'),
                   (4, 1, 'in', 'contact', 'received', NULL, false, '2026-03-01 10:00Z'),
                   (5, 1, 'in', 'contact', 'received', NULL, false, '2026-03-01 10:00Z'),
                   (5, 1, 'out', 'page', 'sent', NULL, false, '2026-03-01 10:20Z');",
            )?;
            conn.run_pending_migrations(Migrations::tenant())?;
            Ok(diesel::sql_query(
                "SELECT id, to_char(waiting_since AT TIME ZONE 'UTC', 'HH24:MI') AS since, \
                        to_char(reply_due_at AT TIME ZONE 'UTC', 'HH24:MI') AS due FROM conversations ORDER BY id",
            )
            .load(conn)?)
        })
        .expect("revert, seed, re-run");
    let since = |s: &str| Some(s.to_string());
    assert_eq!(
        waiting,
        vec![
            Waiting { id: 1, since: since("10:00"), due: None },
            Waiting { id: 2, since: None, due: None },
            Waiting { id: 3, since: since("11:00"), due: since("11:30") },
            Waiting { id: 4, since: None, due: None },
            Waiting { id: 5, since: None, due: None },
        ]
    );
}

/// A channel's member lists audited before ids were strings there read as
/// strings afterwards, in their order; newer entries and other actions are
/// left as they are.
#[test]
fn audited_member_lists_get_their_ids_as_strings() {
    let db = TestDb::new();
    let mut conn = db.conn();
    tenancy::provision(&mut conn, &TenantSlug::parse("alpha").expect("slug"), "A").expect("provision");
    conn.transaction(|conn| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        conn.batch_execute("SELECT set_config('search_path', 'tenant_alpha', true)")?;
        while conn.revert_last_migration(Migrations::tenant())?.to_string() != "20261205000001" {}
        conn.batch_execute(
            r#"INSERT INTO audit_log (action, target_type, target_id, details) VALUES
                 ('channel.members_set', 'channel', '1', '{"user_ids": [12, 3, 40]}'),
                 ('channel.members_set', 'channel', '1', '{"user_ids": []}'),
                 ('channel.members_set', 'channel', '2', '{"user_ids": ["5"]}'),
                 ('team.created', 'team', '1', '{"member_ids": ["7"], "count": 3}')"#,
        )?;
        conn.run_pending_migrations(Migrations::tenant())?;
        Ok(())
    })
    .expect("revert, audit, re-run");
    #[derive(QueryableByName)]
    struct Details {
        #[diesel(sql_type = diesel::sql_types::Text)]
        details: String,
    }
    let rows: Vec<String> =
        diesel::sql_query("SELECT details::text AS details FROM tenant_alpha.audit_log ORDER BY id")
            .load::<Details>(&mut conn)
            .expect("audit")
            .into_iter()
            .map(|d| d.details)
            .collect();
    assert_eq!(
        rows,
        [
            r#"{"user_ids": ["12", "3", "40"]}"#,
            r#"{"user_ids": []}"#,
            r#"{"user_ids": ["5"]}"#,
            r#"{"count": 3, "member_ids": ["7"]}"#,
        ]
    );
}

/// Channel lists kept before a removal took the member off them lose
/// whoever is no longer a member of the schema's tenant (a member of
/// another tenant included); the members stay.
#[test]
fn channel_lists_lose_those_no_longer_members() {
    let db = TestDb::new();
    let mut conn = db.conn();
    tenancy::provision(&mut conn, &TenantSlug::parse("alpha").expect("slug"), "A").expect("provision");
    tenancy::provision(&mut conn, &TenantSlug::parse("beta").expect("slug"), "B").expect("provision");
    conn.batch_execute(
        "INSERT INTO public.users (id, email, password_hash) VALUES
           (901, 'member@a.test', 'x'), (902, 'gone@a.test', 'x'), (903, 'other@b.test', 'x');
         INSERT INTO public.memberships (user_id, tenant_id, role)
           SELECT 901, id, 'agent' FROM public.tenants WHERE slug = 'alpha'
           UNION ALL SELECT 903, id, 'agent' FROM public.tenants WHERE slug = 'beta';",
    )
    .expect("people");
    conn.transaction(|conn| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        conn.batch_execute("SELECT set_config('search_path', 'tenant_alpha', true)")?;
        while conn.revert_last_migration(Migrations::tenant())?.to_string() != "20261205000002" {}
        conn.batch_execute(
            "INSERT INTO channels (id, platform, external_id, name) VALUES (1, 'facebook', '1', 'P');
             INSERT INTO channel_members (channel_id, user_id) VALUES (1, 901), (1, 902), (1, 903);",
        )?;
        conn.run_pending_migrations(Migrations::tenant())?;
        Ok(())
    })
    .expect("revert, list, re-run");
    #[derive(QueryableByName)]
    struct Listed {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        user_id: i64,
    }
    let listed: Vec<i64> = diesel::sql_query("SELECT user_id FROM tenant_alpha.channel_members ORDER BY user_id")
        .load::<Listed>(&mut conn)
        .expect("lists")
        .into_iter()
        .map(|l| l.user_id)
        .collect();
    assert_eq!(listed, [901]);
}
