//! Retention (`inbox::retention`): a channel's resolved conversations go
//! once quiet for its `after_days`, as an erasure takes them; the contact
//! stays, and nothing else goes.

use diesel::connection::SimpleConnection;
use serde_json::{json, Value};

use crate::auto_resolve::in_acme;
use crate::channels::PAGE_A;
use crate::common::spawn_app;
use crate::inbox::{acme, by_contact, channel_id, conversations, PHONE};

/// One tick of the clock's retention for Acme: how many it deleted.
fn tick(app: &crate::common::TestApp) -> usize {
    in_acme(app, |tc, log| switchboard::inbox::retention::expire(tc, log, chrono::Utc::now()))
}

#[actix_web::test]
async fn resolved_conversations_go_once_kept_long_enough() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let admin = ctx.admin.as_str();
    let page = channel_id(&app, admin, PAGE_A).await;
    let settings = |s: Value| {
        let app = &app;
        let path = format!("/api/channels/{page}");
        async move { app.call("PATCH", &path, Some(admin), Some(json!({"settings": {"retention": s}}))).await }
    };
    for (bad, code) in [
        (json!({"after_days": 0}), "invalid_settings"),
        (json!({"after_days": 3651}), "invalid_settings"),
        (json!({"after_days": "a month"}), "invalid_body"),
        (json!({"after_days": 30, "also": 1}), "invalid_body"),
        (json!({}), "invalid_body"),
    ] {
        let r = settings(bad.clone()).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some(code)), "{bad}: {:?}", r.body);
    }
    let r = app.call("GET", &format!("/api/channels/{page}"), Some(admin), None).await;
    assert_eq!(r.body["settings"]["retention"], Value::Null, "kept unless asked: {:?}", r.body);

    // On page A: one resolved and quiet (goes), one resolved and quiet but
    // changed lately, one open and quiet, one resolved and quiet with a
    // reply still to send; on the WhatsApp number, whose channel keeps
    // everything, one resolved and quiet.
    let senders = ["7392015648180001", "7392015648180002", "7392015648180003", "7392015648180004"];
    for from in senders {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": "Olá, é sobre a encomenda 📦"}))
            .await;
    }
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": "351912000222", "text": "olá"})).await;
    app.processed().await;
    let convs = conversations(&app, admin, "").await;
    let id = |from: &str| by_contact(&convs, from)["id"].as_str().expect("id").to_string();
    let [gone, changed, open, unsent] = senders.map(id);
    let whatsapp = id("351912000222");
    let contact = by_contact(&convs, senders[0])["contact"]["id"].as_str().expect("contact").to_string();
    for conv in [&gone, &changed, &unsent, &whatsapp] {
        let r = app
            .call("PATCH", &format!("/api/conversations/{conv}"), Some(admin), Some(json!({"status": "resolved"})))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let r = settings(json!({"after_days": 30})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["settings"]["retention"], json!({"after_days": 30}));
    let all = [&gone, &changed, &open, &unsent, &whatsapp].map(|c| c.as_str()).join(",");
    let mut conn = app.db.conn();
    conn.batch_execute(&format!(
        "UPDATE tenant_acme.conversations SET last_activity_at = now() - interval '31 days', \
                updated_at = now() - interval '31 days' WHERE id IN ({all}); \
         UPDATE tenant_acme.conversations SET updated_at = now() - interval '29 days' WHERE id = {changed}; \
         UPDATE tenant_acme.messages SET status = 'pending' WHERE conversation_id = {unsent}"
    ))
    .expect("time passes");
    drop(conn);

    assert_eq!(tick(&app), 1);
    assert_eq!(tick(&app), 0, "a second tick finds nothing more");
    let shown = |conv: String| {
        let app = &app;
        async move { app.call("GET", &format!("/api/conversations/{conv}"), Some(admin), None).await.status }
    };
    assert_eq!(shown(gone.clone()).await, 404);
    for kept in [&changed, &open, &unsent, &whatsapp] {
        assert_eq!(shown(kept.clone()).await, 200, "{kept}");
    }
    assert_eq!(app.count(&format!("SELECT count(*) AS n FROM tenant_acme.messages WHERE conversation_id = {gone}")), 0);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.events WHERE conversation_id = {gone} AND type <> 'conversation.deleted'"
        )),
        0
    );
    let deleted = format!(
        "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'conversation.deleted' \
          AND conversation_id = {gone} AND payload::jsonb = '{{\"id\": \"{gone}\", \"channel_id\": \"{page}\"}}'::jsonb"
    );
    assert_eq!(app.count(&deleted), 1);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'conversations.expired' \
              AND actor_user_id IS NULL AND target_id = '{page}' AND details->>'conversations' = '1'"
        )),
        1
    );
    // The contact stays; writing again, the customer opens a new conversation.
    let r = app.call("GET", &format!("/api/contacts/{contact}"), Some(admin), None).await;
    assert_eq!((r.status, &r.body["conversation_id"]), (200, &Value::Null), "{:?}", r.body);
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": senders[0], "text": "Voltei!"})).await;
    app.processed().await;
    let again = by_contact(&conversations(&app, admin, "").await, senders[0]).clone();
    assert_ne!(again["id"].as_str(), Some(gone.as_str()));
    assert_eq!(again["status"], "open");

    let r = settings(Value::Null).await;
    assert_eq!((r.status, &r.body["settings"]["retention"]), (200, &Value::Null), "{:?}", r.body);
    let mut conn = app.db.conn();
    conn.batch_execute(&format!(
        "UPDATE tenant_acme.conversations SET updated_at = now() - interval '31 days' WHERE id = {changed}"
    ))
    .expect("time passes");
    drop(conn);
    assert_eq!(tick(&app), 0, "kept once retention is off");
}

/// Retention takes the messages of what it deletes in id order before the
/// cascade deletes them in its index's order (by time): a webhook batch
/// takes the messages its receipts and reactions name in id order too
/// (`ingest`). Here the customer's first message by time was stored last
/// (Meta delivered it late), and a batch holds the other, about to take
/// it: the deletion waits for the batch instead of holding the one it
/// wants, and neither is ended as a deadlock.
#[actix_web::test]
async fn retention_takes_the_messages_it_deletes_in_the_order_a_webhook_batch_takes_them() {
    use crate::common::{a_wait_on, bigint, holding, messenger_text, spawn_app_without_workers};
    use diesel::{Connection, PgConnection, RunQueryDsl};
    let app = spawn_app_without_workers().await;
    let ctx = acme(&app).await;
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let keep = json!({"settings": {"retention": {"after_days": 1}}});
    assert_eq!(app.call("PATCH", &format!("/api/channels/{page}"), Some(&ctx.admin), Some(keep)).await.status, 200);
    for mid in ["m_stored_first", "m_sent_first"] {
        assert_eq!(app.webhook(&messenger_text("7392015648180011", mid, "Olá 👋")).await, 200);
        crate::inbox::process_now(&app);
    }
    app.exec(
        "UPDATE tenant_acme.messages SET sort_at = sort_at + interval '1 hour' WHERE external_id = 'm_stored_first'",
    );
    app.exec(
        "UPDATE tenant_acme.conversations SET status = 'resolved', last_activity_at = now() - interval '2 days', \
                updated_at = now() - interval '2 days'",
    );
    let take = |mid: &str| {
        format!(
            "SELECT count(*) AS n FROM (SELECT id FROM tenant_acme.messages WHERE external_id = '{mid}' FOR UPDATE) m"
        )
    };
    let connect = || PgConnection::establish(&app.db.url).expect("connect");
    let (mut batch, mut watcher) = (connect(), connect());
    let holder = holding(&mut batch, &take("m_stored_first")).expect("the batch holds the older by id");
    std::thread::scope(|scope| {
        let expiry = scope.spawn(|| tick(&app));
        assert!(a_wait_on(&mut watcher, holder, std::time::Duration::from_secs(5)), "the deletion waits");
        // Past the deletion's own deadlock check (1 s), so that a cycle, if
        // there is one, is found by the batch's next statement.
        std::thread::sleep(std::time::Duration::from_millis(1_500));
        let taken = bigint(&mut batch, &take("m_sent_first"));
        diesel::sql_query(if taken.is_ok() { "COMMIT" } else { "ROLLBACK" }).execute(&mut batch).expect("end");
        assert_eq!(taken, Ok(1), "the batch takes the other");
        assert_eq!(expiry.join().ok(), Some(1), "the deletion went after it");
    });
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages"), 0);
}
