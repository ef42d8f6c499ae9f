//! Auto-resolve (`inbox::auto_resolve`): a channel's idle conversations are
//! resolved by the server's clock, never a customer the team owes an
//! answer unless the channel says so.

use diesel::connection::SimpleConnection;
use serde_json::{json, Value};

use crate::channels::PAGE_A;
use crate::common::TestApp;
use crate::common::{eventually, spawn_app};
use crate::inbox::{acme, by_contact, channel_id, conversations, reply, PHONE};

/// `work` in Acme's tenant as the clock does it (the system's scope, its
/// events announced). A row lock it waits for past 3 s fails it.
pub(crate) fn in_acme<T>(
    app: &TestApp,
    work: impl FnOnce(
        &mut switchboard::db::TenantConn<'_>,
        &mut switchboard::inbox::events::EventLog,
    ) -> switchboard::AppResult<T>,
) -> T {
    use diesel::RunQueryDsl;
    let mut pooled = app.pool.get().expect("conn");
    let tenant = switchboard::tenancy::find_by_slug(&mut pooled, "acme").expect("q").expect("acme").tenant_id();
    switchboard::db::with_tenant(&mut pooled, &switchboard::db::TenantScope::system(tenant), |tc| {
        diesel::sql_query("SET LOCAL lock_timeout = '3s'").execute(tc.pg())?;
        let mut log = switchboard::inbox::events::EventLog::new();
        let out = work(tc, &mut log)?;
        log.notify(tc)?;
        Ok::<_, switchboard::AppError>(out)
    })
    .expect("the clock's work")
}

/// One tick of the clock's auto-resolve for Acme: how many it resolved.
fn tick(app: &TestApp) -> usize {
    in_acme(app, |tc, log| switchboard::inbox::auto_resolve::resolve_idle(tc, log, chrono::Utc::now()))
}

/// Page A's `settings` changed by Acme's admin.
async fn set_page(app: &TestApp, admin: &str, page: &str, settings: Value) -> crate::common::Resp {
    app.call("PATCH", &format!("/api/channels/{page}"), Some(admin), Some(json!({"settings": settings}))).await
}

/// Nothing has happened to `ids` for `hours` (no message, no change).
fn idle_for(app: &TestApp, ids: &[&str], hours: u32, what: &str) {
    let list = ids.join(",");
    let mut conn = app.db.conn();
    conn.batch_execute(&format!(
        "UPDATE tenant_acme.conversations SET {what} = now() - interval '{hours} hours' WHERE id IN ({list})"
    ))
    .expect("time passes");
}

async fn status(app: &TestApp, admin: &str, id: &str) -> Value {
    app.call("GET", &format!("/api/conversations/{id}"), Some(admin), None).await.body
}

#[actix_web::test]
async fn idle_conversations_are_resolved_but_not_a_customer_owed_an_answer() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let admin = ctx.admin.as_str();
    let page = channel_id(&app, admin, PAGE_A).await;
    let settings = |s: Value| set_page(&app, admin, &page, s);

    // Checked before anything is kept.
    for (bad, code) in [
        (json!({"after_hours": 0}), "invalid_settings"),
        (json!({"after_hours": 2161}), "invalid_settings"),
        (json!({"after_hours": "a day"}), "invalid_body"),
        (json!({"after_hours": 24, "message": "bye"}), "invalid_body"),
        (json!({}), "invalid_body"),
    ] {
        let r = settings(json!({"auto_resolve": bad})).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some(code)), "{bad}: {:?}", r.body);
    }
    let r = app.call("GET", &format!("/api/channels/{page}"), Some(admin), None).await;
    assert_eq!(r.body["settings"]["auto_resolve"], Value::Null, "off unless asked: {:?}", r.body);

    // Customers on page A: one answered (idle), one answered and set
    // pending (idle), one answered and snoozed, one who waits for an
    // answer, one answered whose conversation was labelled since its last
    // message; and one on the WhatsApp number, whose channel asks nothing.
    let senders = ["7392015648170001", "7392015648170002", "7392015648170003", "7392015648170004", "7392015648170005"];
    for from in senders {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": "help, ça ne marche pas 🙏"}))
            .await;
    }
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": "351912000111", "text": "olá"})).await;
    app.processed().await;
    let convs = conversations(&app, admin, "").await;
    let id = |from: &str| by_contact(&convs, from)["id"].as_str().expect("id").to_string();
    let [answered, pending, snoozed, waiting, labelled] = senders.map(id);
    let whatsapp = id("351912000111");
    for (n, conv) in [&answered, &pending, &snoozed, &labelled, &whatsapp].into_iter().enumerate() {
        let (status, body) = reply(&app, admin, conv, "Fixed now, sorry!", &format!("ar-{n}")).await;
        assert_eq!(status, 202, "{body}");
    }
    // What follows a send (Meta's echo, delivery and read) touches the
    // conversation too: all of it in before time is made to pass.
    eventually("the replies were read", || async {
        let mut all = true;
        for conv in [&answered, &pending, &snoozed, &labelled, &whatsapp] {
            all &= status(&app, admin, conv).await["last_message"]["status"] == "read";
        }
        all
    })
    .await;
    app.processed().await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(72)).to_rfc3339();
    for (conv, change) in [(&pending, json!({"status": "pending"})), (&snoozed, json!({"snoozed_until": later}))] {
        let r = app.call("PATCH", &format!("/api/conversations/{conv}"), Some(admin), Some(change)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let every = [&answered, &pending, &snoozed, &waiting, &labelled, &whatsapp].map(String::as_str);
    idle_for(&app, &every, 25, "last_activity_at");
    let not_labelled = [&answered, &pending, &snoozed, &waiting, &whatsapp].map(String::as_str);
    idle_for(&app, &not_labelled, 25, "updated_at");

    // The server's own clock may tick meanwhile (every 30 s): what is
    // checked is what became of the conversations, not who did it.
    let as_they_were = [
        (&answered, "open"),
        (&pending, "pending"),
        (&snoozed, "snoozed"),
        (&waiting, "open"),
        (&labelled, "open"),
        (&whatsapp, "open"),
    ];
    let unchanged = || async {
        for (conv, expected) in as_they_were {
            assert_eq!(status(&app, admin, conv).await["status"], expected, "{conv}");
        }
    };
    let mut socket = crate::realtime::ws(&app, "", Some(admin), None).await.expect("socket");
    // Off: nothing is resolved, however idle.
    tick(&app);
    unchanged().await;
    let r = settings(json!({"auto_resolve": {"after_hours": 26}})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["settings"]["auto_resolve"], json!({"after_hours": 26, "unanswered": false}));
    tick(&app);
    unchanged().await;
    let r = settings(json!({"auto_resolve": {"after_hours": 24}})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    tick(&app);
    assert_eq!(tick(&app), 0, "once");
    for (conv, expected) in [
        (&answered, "resolved"),
        (&pending, "resolved"),
        (&snoozed, "snoozed"),
        (&waiting, "open"),
        (&labelled, "open"),
        (&whatsapp, "open"),
    ] {
        assert_eq!(status(&app, admin, conv).await["status"], expected, "{conv}");
    }
    // The live inbox sees it as it sees a member's resolve.
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let frame = crate::realtime::until(&mut socket, "conversation.updated", std::time::Duration::from_secs(5))
            .await
            .expect("conversation.updated");
        if frame["data"]["status"] == "resolved" {
            seen.push(frame["data"]["id"].as_str().expect("id").to_string());
        }
    }
    seen.sort();
    let mut expected = vec![answered.clone(), pending.clone()];
    expected.sort();
    assert_eq!(seen, expected);
    // Audited without an actor, and counted by the reports as resolved but
    // as no agent's.
    let audited = app.count(
        "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'conversation.status_changed' \
            AND actor_user_id IS NULL AND details->>'by' = 'auto_resolve' AND details->>'after_hours' = '24' \
            AND details->>'to' = 'resolved'",
    );
    assert_eq!(audited, 2);
    let from_pending = app.count(&format!(
        "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE details->>'by' = 'auto_resolve' \
            AND target_id = '{pending}' AND details->>'from' = 'pending'"
    ));
    assert_eq!(from_pending, 1);
    let report = app.call("GET", "/api/reports/overview", Some(admin), None).await.body;
    assert_eq!(report["conversations_resolved"], 2, "{report}");
    let agents = report["agents"].as_array().cloned().unwrap_or_default();
    assert!(agents.iter().all(|a| a["resolved"] == 0), "{report}");
    // A snooze that ends counts from its waking, not from the last message.
    let mut conn = app.db.conn();
    conn.batch_execute(&format!(
        "UPDATE tenant_acme.conversations SET snoozed_until = now() - interval '1 second' WHERE id = {snoozed}"
    ))
    .expect("the snooze ends");
    in_acme(&app, |tc, log| switchboard::inbox::conversations::wake_snoozed(tc, log, &[]));
    tick(&app);
    assert_eq!(status(&app, admin, &snoozed).await["status"], "open", "woken just now: not idle");
    // No survey goes to a customer silent for a day.
    let r = settings(json!({"csat": {"enabled": true, "text": "How did we do? 1-5"}})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    idle_for(&app, &[&labelled], 25, "updated_at");
    tick(&app);
    assert_eq!(status(&app, admin, &labelled).await["status"], "resolved", "labelled a day ago: idle now");
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.csat_surveys"), 0);

    // A customer who writes again reopens theirs.
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": senders[0], "text": "it broke again"})).await;
    app.processed().await;
    assert_eq!(status(&app, admin, &answered).await["status"], "open");

    // `unanswered`: the customer owed an answer goes too, their wait ended.
    let r = settings(json!({"auto_resolve": {"after_hours": 24, "unanswered": true}})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    tick(&app);
    let c = status(&app, admin, &waiting).await;
    assert_eq!((&c["status"], &c["waiting_since"]), (&json!("resolved"), &Value::Null), "{c}");
    assert_eq!(status(&app, admin, &answered).await["status"], "open", "written to a moment ago");
    // Taken off: nothing more.
    let r = settings(json!({"auto_resolve": null})).await;
    assert_eq!((r.status, &r.body["settings"]["auto_resolve"]), (200, &Value::Null), "{:?}", r.body);
    idle_for(&app, &[&answered], 25, "last_activity_at");
    idle_for(&app, &[&answered], 25, "updated_at");
    assert_eq!(tick(&app), 0);
    assert_eq!(status(&app, admin, &whatsapp).await["status"], "open", "its channel never asked");
}

/// A conversation a webhook is writing is passed over, not waited for, and
/// resolved at a later tick if it is still idle.
#[actix_web::test]
async fn a_conversation_being_written_is_passed_over_not_waited_for() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let admin = ctx.admin.as_str();
    let page = channel_id(&app, admin, PAGE_A).await;
    let senders = ["7392015648180001", "7392015648180002"];
    for from in senders {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": "hi"})).await;
    }
    app.processed().await;
    let convs = conversations(&app, admin, "").await;
    let [first, second] = senders.map(|from| by_contact(&convs, from)["id"].as_str().expect("id").to_string());
    idle_for(&app, &[&first, &second], 3, "last_activity_at");
    idle_for(&app, &[&first, &second], 3, "updated_at");
    let r = set_page(&app, admin, &page, json!({"auto_resolve": {"after_hours": 2, "unanswered": true}})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Another transaction holds the first conversation's row.
    let mut holder = app.db.conn();
    holder
        .batch_execute(&format!("BEGIN; SELECT id FROM tenant_acme.conversations WHERE id = {first} FOR UPDATE"))
        .expect("lock");
    tick(&app);
    let resolved = conversations(&app, admin, "?status=resolved").await;
    let ids: Vec<&str> = resolved.iter().filter_map(|c| c["id"].as_str()).collect();
    assert_eq!(ids, [second.as_str()], "the other one only, not waiting for the lock");
    holder.batch_execute("ROLLBACK").expect("release");
    tick(&app);
    eventually("both resolved", || async { conversations(&app, admin, "?status=resolved").await.len() == 2 }).await;
}

/// So do the clock's other rounds, in the same transaction: a snooze that
/// ended wakes, and a wait past its target rings, for every conversation
/// but one a change holds (as a bulk change does), which has its turn at a
/// later tick. Each round updated all it found at once, in no set order,
/// so it waited for that one while holding others: a deadlock with a
/// change holding it and waiting for those.
#[actix_web::test]
async fn the_clocks_wakes_and_rings_pass_over_a_conversation_being_written() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let admin = ctx.admin.as_str();
    let senders = ["7392015648190001", "7392015648190002"];
    for from in senders {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": "hi"})).await;
    }
    app.processed().await;
    let convs = conversations(&app, admin, "").await;
    let [first, second] = senders.map(|from| by_contact(&convs, from)["id"].as_str().expect("id").to_string());
    let both = format!("{first},{second}");
    let mut conn = app.db.conn();
    let mut holder = app.db.conn();
    let hold = |holder: &mut diesel::PgConnection| {
        let lock = format!("BEGIN; SELECT id FROM tenant_acme.conversations WHERE id = {first} FOR NO KEY UPDATE");
        holder.batch_execute(&lock).expect("lock");
    };
    let statuses = || async {
        let (a, b) = (status(&app, admin, &first).await, status(&app, admin, &second).await);
        (a["status"].as_str().unwrap_or("").to_string(), b["status"].as_str().unwrap_or("").to_string())
    };

    // Both snoozes ended.
    conn.batch_execute(&format!(
        "UPDATE tenant_acme.conversations SET status = 'snoozed', snoozed_until = now() - interval '1 second' \
          WHERE id IN ({both})"
    ))
    .expect("snoozes end");
    hold(&mut holder);
    in_acme(&app, |tc, log| switchboard::inbox::conversations::wake_snoozed(tc, log, &[]));
    assert_eq!(statuses().await, ("snoozed".into(), "open".into()), "the other one woke, not waiting");
    holder.batch_execute("ROLLBACK").expect("release");
    in_acme(&app, |tc, log| switchboard::inbox::conversations::wake_snoozed(tc, log, &[]));
    assert_eq!(statuses().await, ("open".into(), "open".into()), "woken at the next tick");

    // Both waits past their target.
    conn.batch_execute(&format!(
        "UPDATE tenant_acme.conversations SET waiting_since = now() - interval '2 hours', \
                reply_due_at = now() - interval '1 minute', overdue_rung_for = NULL WHERE id IN ({both})"
    ))
    .expect("targets pass");
    let rung = |id: &str| {
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.conversations WHERE id = {id} AND overdue_rung_for IS NOT NULL"
        ))
    };
    hold(&mut holder);
    in_acme(&app, switchboard::inbox::waiting::ring_overdue);
    assert_eq!((rung(&first), rung(&second)), (0, 1), "the other one rang, not waiting");
    holder.batch_execute("ROLLBACK").expect("release");
    in_acme(&app, switchboard::inbox::waiting::ring_overdue);
    assert_eq!((rung(&first), rung(&second)), (1, 1), "rung at the next tick");
}

/// A tick resolves at most a batch a tenant, the longest idle first: turned
/// on over a backlog, it clears it in steps.
#[actix_web::test]
async fn a_backlog_is_resolved_a_batch_a_tick_longest_idle_first() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let admin = ctx.admin.as_str();
    let page = channel_id(&app, admin, PAGE_A).await;
    let batch = switchboard::inbox::auto_resolve::BATCH;
    // A backlog of months: one more than a batch, idle for 1 to 501 days.
    let mut conn = app.db.conn();
    conn.batch_execute(&format!(
        "INSERT INTO tenant_acme.contacts (channel_id, external_id) \
           SELECT {page}, (7392015648200000 + g)::text FROM generate_series(1, {n}) g; \
         INSERT INTO tenant_acme.conversations (channel_id, contact_id, last_activity_at, updated_at) \
           SELECT {page}, id, now() - (id || ' days')::interval, now() - (id || ' days')::interval \
             FROM tenant_acme.contacts WHERE external_id::bigint > 7392015648200000",
        n = batch + 1
    ))
    .expect("a backlog");
    let r = set_page(&app, admin, &page, json!({"auto_resolve": {"after_hours": 24}})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let open = |app: &TestApp| app.count("SELECT count(*) AS n FROM tenant_acme.conversations WHERE status = 'open'");
    let newest = "SELECT count(*) AS n FROM tenant_acme.conversations \
        WHERE status = 'open' AND last_activity_at = (SELECT max(last_activity_at) FROM tenant_acme.conversations)";
    // The server's own clock may have ticked too: at most a batch a tick,
    // whoever ticks, and the newest idle one last.
    let first = tick(&app);
    assert!(first as i64 <= batch, "{first}");
    if open(&app) > 0 {
        assert_eq!(app.count(newest), 1, "the longest idle went first");
    }
    tick(&app);
    assert_eq!(open(&app), 0, "the rest at the next tick");
}
