//! The public tables that grow with traffic are pruned by retention, and
//! only what retention no longer keeps goes.

use diesel::prelude::*;
use serde_json::json;
use switchboard::db::housekeeping::{prune, Pruned, Retention, BATCH};

use crate::channels::PAGE_A;
use crate::common::{spawn_app, spawn_app_without_workers, token};
use crate::inbox::acme;

#[actix_web::test]
async fn what_retention_no_longer_keeps_goes_and_nothing_else() {
    let app = spawn_app().await;
    acme(&app).await;
    for i in 0..4 {
        let text = format!("message {i}");
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "7392015648120394", "text": text})).await;
    }
    app.processed().await;
    let login = app.login("ann@acme.test", "ann-password-1", "acme").await;
    let mut conn = app.db.conn();
    let run = |conn: &mut PgConnection, sql: &str| {
        diesel::sql_query(sql).execute(conn).unwrap_or_else(|e| panic!("{sql}: {e}"));
    };
    // Two days old: processed webhooks (a backlog of more than a batch of
    // them, as a release that kept everything leaves), a dead letter, one
    // still pending, a finished send, and a refresh token expired that long.
    let processed = app.count("SELECT count(*) AS n FROM public.webhook_events WHERE status = 'done'");
    assert!(processed >= 4, "{processed}");
    run(&mut conn, "UPDATE public.webhook_events SET processed_at = now() - interval '2 days' WHERE status = 'done'");
    run(
        &mut conn,
        &format!(
            "INSERT INTO public.webhook_events (body, status, processed_at, received_at) \
             SELECT 'old'::bytea, 'done', now() - interval '3 days', now() - interval '3 days' \
               FROM generate_series(1, {})",
            BATCH + 1000
        ),
    );
    run(&mut conn, "INSERT INTO public.webhook_events (body, status, received_at) VALUES ('dead'::bytea, 'dead', now() - interval '9 days'), ('waiting'::bytea, 'pending', now() - interval '9 days')");
    // Processed an hour ago: kept.
    run(&mut conn, "INSERT INTO public.webhook_events (body, status, processed_at) VALUES ('recent'::bytea, 'done', now() - interval '1 hour')");
    let tenant = app.count("SELECT id AS n FROM public.tenants WHERE slug = 'acme'");
    run(
        &mut conn,
        &format!(
            "INSERT INTO public.send_queue (tenant_id, conversation_id, kind, status, created_at) VALUES \
             ({tenant}, 1, 'mark_seen', 'done', now() - interval '2 days'), \
             ({tenant}, 1, 'mark_seen', 'dead', now() - interval '2 days'), \
             ({tenant}, 1, 'mark_seen', 'pending', now() - interval '2 days'), \
             ({tenant}, 1, 'mark_seen', 'done', now() - interval '1 hour')"
        ),
    );
    let sends_before = app.count("SELECT count(*) AS n FROM public.send_queue");
    let old_sends = app.count("SELECT count(*) AS n FROM public.send_queue WHERE status <> 'pending' AND created_at < now() - interval '1 day'");
    assert_eq!(old_sends, 2);
    run(&mut conn, "UPDATE public.refresh_tokens SET expires_at = now() - interval '2 days' WHERE id = (SELECT min(id) FROM public.refresh_tokens)");
    let tokens_before = app.count("SELECT count(*) AS n FROM public.refresh_tokens");
    // Invitations: one expired eight days ago (goes), one six days ago and
    // one still good (kept).
    run(
        &mut conn,
        &format!(
            "INSERT INTO public.invitations (tenant_id, email, role, token_hash, expires_at, accepted_at) VALUES \
             ({tenant}, 'old@acme.test', 'agent', 'a'::bytea, now() - interval '8 days', now() - interval '9 days'), \
             ({tenant}, 'late@acme.test', 'agent', 'b'::bytea, now() - interval '6 days', NULL), \
             ({tenant}, 'new@acme.test', 'agent', 'c'::bytea, now() + interval '6 days', NULL)"
        ),
    );
    // Replaced links, likewise by when they would have expired.
    run(
        &mut conn,
        &format!(
            "INSERT INTO public.replaced_invitations (token_hash, tenant_id, email, replaced_at, expires_at) VALUES \
             ('ra'::bytea, {tenant}, 'late@acme.test', now() - interval '14 days', now() - interval '8 days'), \
             ('rb'::bytea, {tenant}, 'new@acme.test', now() - interval '1 day', now() - interval '6 days')"
        ),
    );

    // Mail: sent eight days ago (goes); queued eight days ago and still
    // being tried, sent a day ago (kept). Password resets: expired two
    // days ago (goes), an hour ago (kept).
    run(
        &mut conn,
        "INSERT INTO public.mail_outbox (recipient, subject, body, created_at, sent_at) VALUES \
         ('a@x.test', 's', '', now() - interval '8 days', now() - interval '8 days'), \
         ('b@x.test', 's', 'b', now() - interval '8 days', NULL), \
         ('c@x.test', 's', '', now() - interval '1 day', now() - interval '1 day')",
    );
    let user = app.count("SELECT min(id) AS n FROM public.users");
    run(
        &mut conn,
        &format!(
            "INSERT INTO public.password_resets (user_id, token_hash, expires_at) VALUES \
             ({user}, 'r1'::bytea, now() - interval '2 days'), ({user}, 'r2'::bytea, now() - interval '1 hour')"
        ),
    );

    let retention = Retention {
        work: chrono::Duration::hours(24),
        refresh_tokens: chrono::Duration::days(1),
        invitations: chrono::Duration::days(7),
        mail: chrono::Duration::days(7),
    };
    let counted = switchboard::metrics::PRUNED_ROWS.load(std::sync::atomic::Ordering::Relaxed);
    let pruned = prune(&mut conn, chrono::Utc::now(), retention).expect("prune");
    let now_counted = switchboard::metrics::PRUNED_ROWS.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        now_counted
            >= counted
                + (pruned.webhooks + pruned.sends + pruned.refresh_tokens + pruned.invitations + pruned.mail) as u64
    );
    assert_eq!(
        pruned,
        Pruned {
            webhooks: processed as usize + BATCH as usize + 1000,
            sends: 2,
            refresh_tokens: 1,
            invitations: 2,
            mail: 2
        },
        "{pruned:?}"
    );
    let left =
        |status: &str| app.count(&format!("SELECT count(*) AS n FROM public.webhook_events WHERE status = '{status}'"));
    assert_eq!((left("done"), left("dead"), left("pending")), (1, 1, 1));
    assert_eq!(app.count("SELECT count(*) AS n FROM public.send_queue"), sends_before - 2);
    assert_eq!(app.count("SELECT count(*) AS n FROM public.refresh_tokens"), tokens_before - 1);
    assert_eq!(app.count("SELECT count(*) AS n FROM public.invitations WHERE email <> 'old@acme.test'"), 2);
    assert_eq!(app.count("SELECT count(*) AS n FROM public.invitations"), 2);
    assert_eq!(app.count("SELECT count(*) AS n FROM public.replaced_invitations WHERE token_hash = 'rb'::bytea"), 1);
    assert_eq!(app.count("SELECT count(*) AS n FROM public.replaced_invitations"), 1);
    assert_eq!(app.count("SELECT count(*) AS n FROM public.mail_outbox WHERE recipient <> 'a@x.test'"), 2);
    assert_eq!(app.count("SELECT count(*) AS n FROM public.mail_outbox"), 2);
    assert_eq!(app.count("SELECT count(*) AS n FROM public.password_resets WHERE token_hash = 'r2'::bytea"), 1);
    assert_eq!(app.count("SELECT count(*) AS n FROM public.password_resets"), 1);
    // A second pass finds nothing; the newest login still refreshes.
    assert_eq!(prune(&mut conn, chrono::Utc::now(), retention).expect("prune"), Pruned::default());
    let r = app
        .call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": token(&login, "refresh_token")})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

/// Erasure's background pass over stored webhooks (`inbox::scrub`): a
/// range of ids at a time, never past a body another transaction holds
/// (the processor), until its row is deleted; nothing stored after it, nor
/// anything of another customer or page, is touched.
#[actix_web::test]
async fn erasures_pass_over_processed_webhooks_goes_by_range_and_waits_for_a_held_body() {
    use switchboard::inbox::scrub::{step, InboxScrubbed, Step, RANGE};
    let app = spawn_app_without_workers().await;
    let said = |page: &str, from: &str, text: &str| {
        let body = json!({"object": "page", "entry": [{"id": page, "time": 1, "messaging": [
            {"sender": {"id": from}, "recipient": {"id": page}, "message": {"mid": text, "text": text}}]}]});
        app.count(&format!(
            "INSERT INTO public.webhook_events (body, status, processed_at) \
             VALUES (convert_to($b${body}$b$, 'UTF8'), 'done', now()) RETURNING id AS n"
        ))
    };
    let first = said("P1", "GONE", "first");
    let other = said("P1", "STAYS", "other");
    let elsewhere = said("P2", "GONE", "elsewhere");
    // Not JSON, naming them: it could never be processed.
    let junk = app.count(
        "INSERT INTO public.webhook_events (body, status) VALUES ('GONE, not JSON'::bytea, 'dead') RETURNING id AS n",
    );
    let junk_of_another = app.count(
        "INSERT INTO public.webhook_events (body, status) VALUES ('STAYS, not JSON'::bytea, 'dead') RETURNING id AS n",
    );
    // Far enough on that the pass takes more than one step to reach it.
    app.exec(&format!("SELECT setval('public.webhook_events_id_seq', {})", first + RANGE + 5));
    let held = said("P1", "GONE", "held");
    app.exec(&format!(
        "INSERT INTO public.webhook_scrubs (channel, contact_ids, after_id, up_to) VALUES ('P1', '{{GONE}}', {}, {held})",
        first - 1
    ));
    let after = said("P1", "GONE", "after the erasure");
    let exists = |id: i64| app.count(&format!("SELECT count(*) AS n FROM public.webhook_events WHERE id = {id}"));
    let pass_at = || app.count("SELECT coalesce(max(after_id), -1) AS n FROM public.webhook_scrubs");

    // The processor holds one of theirs.
    let mut holder = app.db.conn();
    diesel::sql_query("BEGIN").execute(&mut holder).expect("begin");
    diesel::sql_query(format!("SELECT id FROM public.webhook_events WHERE id = {held} FOR UPDATE"))
        .execute(&mut holder)
        .expect("hold");
    let mut conn = app.db.conn();
    let one = |n: usize| InboxScrubbed { changed: 0, deleted: n };
    assert_eq!(
        step(&mut conn).expect("step"),
        Some(Step { scrubbed: one(2), moved: true, finished: false }),
        "the first range"
    );
    assert_eq!((exists(first), exists(other), exists(elsewhere)), (0, 1, 1));
    assert_eq!((exists(junk), exists(junk_of_another)), (0, 1));
    assert_eq!(pass_at(), first - 1 + RANGE);
    assert_eq!(
        step(&mut conn).expect("step"),
        Some(Step { scrubbed: one(0), moved: true, finished: false }),
        "up to the held body"
    );
    assert_eq!((pass_at(), exists(held)), (held - 1, 1));
    assert_eq!(step(&mut conn).expect("step"), Some(Step { scrubbed: one(0), moved: false, finished: false }));
    diesel::sql_query("ROLLBACK").execute(&mut holder).expect("release");
    assert_eq!(step(&mut conn).expect("step"), Some(Step { scrubbed: one(1), moved: true, finished: true }));
    assert_eq!((exists(held), exists(after), pass_at()), (0, 1, -1));
    assert_eq!(step(&mut conn).expect("step"), None);
}
