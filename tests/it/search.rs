//! The inbox list and search at the domain level, on one connection: what
//! they find, how each search is planned, what a page costs.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::BigInt;

use switchboard::auth::Role;
use switchboard::db::{with_tenant, TenantScope};
use switchboard::ids::UserId;
use switchboard::inbox::{contacts, conversations};
use switchboard::tenancy::{self, TenantSlug};

use crate::common::TestDb;

/// A database with tenant `alpha` seeded by `sql` (run in its schema), and
/// the pool of one connection every statement of the test goes through.
fn alpha_seeded(sql: &str) -> (TestDb, switchboard::db::PgPool, TenantScope) {
    let db = TestDb::new();
    let pool = db.pool(1);
    let mut conn = pool.get().expect("conn");
    let tenant =
        tenancy::provision(&mut conn, &TenantSlug::parse("alpha").expect("slug"), "A").expect("provision").tenant_id();
    conn.batch_execute(&format!("SET search_path = tenant_alpha, public; {sql}; RESET search_path")).expect("seed");
    (db, pool, TenantScope::system(tenant))
}

#[derive(QueryableByName)]
struct Plans {
    #[diesel(sql_type = BigInt)]
    generic: i64,
    #[diesel(sql_type = BigInt)]
    custom: i64,
}

/// The search statement is cached on the connection, and after five runs
/// PostgreSQL may settle on a generic plan made without the pattern, which
/// folds the pattern again for every row and scans the whole trigram index
/// for a two-character one. Every search must get a plan of its own; the
/// folded columns must find across case and accents, written and changed.
#[test]
fn every_search_is_planned_for_its_own_pattern() {
    let (_db, pool, scope) = alpha_seeded(
        "INSERT INTO channels (platform, external_id, name) VALUES ('facebook', '102938475610293', 'Page A');
         INSERT INTO contacts (channel_id, external_id, name)
           SELECT 1, (7392015648120000 + g)::text, (ARRAY['João Pereira', 'Zoë Müller', 'Ana Ruiz'])[1 + g % 3]
             FROM generate_series(1, 3000) g;
         INSERT INTO conversations (channel_id, contact_id, last_activity_at)
           SELECT 1, id, now() - id * interval '1 minute' FROM contacts;
         INSERT INTO messages (conversation_id, channel_id, direction, sender_kind, text, status)
           SELECT c.id, 1, 'in', 'contact',
                  (ARRAY['Preciso de AJUDA com o pedido', 'ok', 'can I get a refund?'])[1 + (c.id + g) % 3] || ' #' || c.id,
                  'received'
             FROM conversations c CROSS JOIN generate_series(1, 20) g;
         UPDATE messages SET text = 'Où est ma commande ?' WHERE id = 1;
         UPDATE contacts SET name = 'Łukasz Wróbel' WHERE id = 2;
         ANALYZE",
    );
    let mut conn = pool.get().expect("conn");
    let found = |conn: &mut PgConnection, q: &str| -> usize {
        let filter = conversations::Filter { q: Some(q.to_string()), ..Default::default() };
        with_tenant(conn, &scope, |tc| conversations::list(tc, UserId(0), Role::Owner, &filter, None, 200))
            .expect("search")
            .len()
    };
    let contacts_found = |conn: &mut PgConnection, q: &str| -> usize {
        with_tenant(conn, &scope, |tc| contacts::search(tc, UserId(0), Role::Owner, Some(q), None, 200))
            .expect("contact search")
            .len()
    };
    // One-character searches first: they scan, a generic plan guessing a
    // few rows from the index looks cheaper than their plans.
    for _ in 0..6 {
        assert_eq!(found(&mut conn, "a"), 200);
    }
    for _ in 0..3 {
        assert_eq!(found(&mut conn, "preciso de ajuda"), 200, "folded case, a page of the 300");
        assert_eq!(found(&mut conn, "ok"), 200);
        assert_eq!(found(&mut conn, "zq"), 0);
        assert_eq!(found(&mut conn, "#3000"), 1);
        assert_eq!(found(&mut conn, "ou est"), 1, "a changed text is folded again");
        assert_eq!(found(&mut conn, "zoe MULLER"), 200, "contact names too");
        assert_eq!(contacts_found(&mut conn, "joão"), 200);
        assert_eq!(contacts_found(&mut conn, "lukasz wrobel"), 1, "a changed name is folded again");
        assert_eq!(contacts_found(&mut conn, "u"), 200, "Müller and Ruiz");
    }
    let plans: Plans = diesel::sql_query(
        "SELECT coalesce(sum(generic_plans), 0)::int8 AS generic, coalesce(sum(custom_plans), 0)::int8 AS custom \
           FROM pg_prepared_statements WHERE statement LIKE '%search_%LIKE%'",
    )
    .get_result(&mut *conn)
    .expect("plans");
    assert_eq!(plans.generic, 0, "a search ran on a generic plan ({} custom)", plans.custom);
    assert!(plans.custom >= 33, "the searches were cached and planned {} times", plans.custom);
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// A contact search matches names or external ids; with an index on each,
/// PostgreSQL answers the OR from both instead of reading every contact.
#[test]
fn contact_search_reads_the_indexes_not_every_contact() {
    let (_db, pool, scope) = alpha_seeded(
        "INSERT INTO channels (platform, external_id, name) VALUES ('whatsapp', '123456789012345', 'Number');
         INSERT INTO contacts (channel_id, external_id, name)
           SELECT 1, (14155550000 + g)::text, 'Customer ' || md5(g::text) FROM generate_series(1, 100000) g;
         UPDATE contacts SET name = 'Zoë Müller' WHERE id = 777;
         ANALYZE contacts",
    );
    let mut conn = pool.get().expect("conn");
    let search = |conn: &mut PgConnection, q: &str| {
        with_tenant(conn, &scope, |tc| contacts::search(tc, UserId(0), Role::Owner, Some(q), None, 50))
            .expect("contact search")
            .into_iter()
            .map(|c| c.external_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(search(&mut conn, "4155569999"), ["14155569999"], "by number");
    assert_eq!(search(&mut conn, "zoe mull"), ["14155550777"], "by name");
    // The statistics arrive a moment after the backend flushes them.
    conn.batch_execute(
        "DO $$ BEGIN IF to_regproc('pg_stat_force_next_flush') IS NOT NULL THEN \
           PERFORM pg_stat_force_next_flush(); END IF; END $$",
    )
    .expect("flush");
    let scans = |conn: &mut PgConnection| -> i64 {
        conn.batch_execute("SELECT pg_stat_clear_snapshot()").expect("snapshot");
        diesel::sql_query(
            "SELECT coalesce(sum(idx_scan), 0)::int8 AS n FROM pg_stat_user_indexes \
              WHERE schemaname = 'tenant_alpha' AND indexrelname = 'contacts_external_trgm'",
        )
        .get_result::<Count>(conn)
        .expect("index scans")
        .n
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while scans(&mut conn) < 2 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(scans(&mut conn), 2, "each search read the external ids' index");
}

/// A page of the inbox is a few queries, not a few per conversation: the
/// contacts and last messages of the page are read together.
#[test]
fn a_page_of_the_inbox_reads_its_contacts_and_last_messages_together() {
    let (_db, pool, scope) = alpha_seeded(
        "INSERT INTO channels (platform, external_id, name) VALUES ('facebook', '102938475610293', 'Page A');
         INSERT INTO contacts (channel_id, external_id, name)
           SELECT 1, (7392015648120000 + g)::text, 'Client ' || g FROM generate_series(1, 40) g;
         INSERT INTO conversations (channel_id, contact_id, last_activity_at)
           SELECT 1, id, now() - id * interval '1 minute' FROM contacts ORDER BY id;
         INSERT INTO messages (conversation_id, channel_id, direction, sender_kind, text, status)
           SELECT c.id, 1, 'in', 'contact', 'olá ' || c.id || '.' || g, 'received'
             FROM conversations c CROSS JOIN generate_series(1, 3) g;
         UPDATE conversations c SET last_message_id = (SELECT max(id) FROM messages m WHERE m.conversation_id = c.id)",
    );
    let mut conn = pool.get().expect("conn");
    let executed = |conn: &mut PgConnection| -> i64 {
        diesel::sql_query(
            "SELECT coalesce(sum(generic_plans + custom_plans), 0)::int8 AS n FROM pg_prepared_statements",
        )
        .get_result::<Count>(conn)
        .expect("statements")
        .n
    };
    let before = executed(&mut conn);
    let page = with_tenant(&mut conn, &scope, |tc| {
        conversations::list(tc, UserId(0), Role::Owner, &conversations::Filter::default(), None, 30)
    })
    .expect("list");
    let statements = executed(&mut conn) - before;
    assert_eq!(page.len(), 30);
    for view in &page {
        let id = view.id.0;
        assert_eq!(view.contact.name.as_deref(), Some(format!("Client {id}").as_str()));
        let last = view.last_message.as_ref().expect("last message");
        assert_eq!(last.text.as_deref(), Some(format!("olá {id}.3").as_str()));
    }
    assert!(statements <= 6, "a page of 30 ran {statements} statements");
}
