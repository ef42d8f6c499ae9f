//! The public tables that grow with traffic are pruned by retention, and
//! only what retention no longer keeps goes.

use diesel::prelude::*;
use serde_json::json;
use switchboard::db::housekeeping::{prune, Pruned, Retention, BATCH};

use crate::channels::PAGE_A;
use crate::common::{spawn_app, token};
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
            invitations: 1,
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
