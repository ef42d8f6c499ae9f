//! Integrators' webhooks against a real receiver.

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::channels::PAGE_A;
use crate::common::{eventually, spawn_app, TestApp};
use crate::inbox::acme;

/// What the receiver heard, and the statuses it answers with in turn
/// (200 once they run out).
#[derive(Default)]
struct Receiver {
    heard: Mutex<Vec<(String, Vec<u8>)>>,
    answers: Mutex<VecDeque<u16>>,
}

async fn hear(req: HttpRequest, body: web::Bytes, r: web::Data<Arc<Receiver>>) -> HttpResponse {
    let sig = req.headers().get("x-switchboard-signature-256").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    r.heard.lock().expect("lock").push((sig, body.to_vec()));
    let status = r.answers.lock().expect("lock").pop_front().unwrap_or(200);
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("status")).finish()
}

async fn receiver() -> (Arc<Receiver>, String) {
    let r = Arc::new(Receiver::default());
    let data = web::Data::new(r.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://127.0.0.1:{}/hooks/switchboard", listener.local_addr().expect("addr").port());
    let server =
        HttpServer::new(move || App::new().app_data(data.clone()).route("/hooks/switchboard", web::post().to(hear)))
            .workers(1)
            .listen(listener)
            .expect("listen")
            .run();
    actix_web::rt::spawn(server);
    (r, url)
}

fn heard(r: &Receiver) -> Vec<(String, Value)> {
    let heard: Vec<(String, Value)> = r
        .heard
        .lock()
        .expect("lock")
        .iter()
        .map(|(sig, body)| (sig.clone(), serde_json::from_slice(body).unwrap_or(Value::Null)))
        .collect();
    // What integrators are sent keeps API.md's ids and times too.
    for (_, body) in &heard {
        let mut out = Vec::new();
        crate::openapi::keeps_conventions(body, "$", &mut out);
        assert!(out.is_empty(), "a delivery with ids or times off the contract: {out:?}\n{body}");
    }
    heard
}

fn types(body: &Value) -> Vec<String> {
    body["events"]
        .as_array()
        .map(|e| e.iter().map(|e| e["type"].as_str().unwrap_or("").to_string()).collect())
        .unwrap_or_default()
}

async fn inbound(app: &TestApp, from: &str, text: &str) {
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": text})).await;
    app.processed().await;
}

/// An admin names an endpoint; the tenant's events reach it signed and in
/// order, a failed delivery is tried again with the same events and none
/// is sent twice after a success; types choose what goes; switched off it
/// gets nothing, and switched on it gets what it missed.
#[actix_web::test]
async fn events_reach_an_integrators_endpoint_signed_and_in_order() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (r, url) = receiver().await;
    let admin = ctx.admin.as_str();
    let agent = app
        .call(
            "POST",
            "/api/members",
            Some(admin),
            Some(json!({"email": "al@acme.test", "role": "agent", "password": "al-password-1"})),
        )
        .await;
    assert_eq!(agent.status, 201);
    let al = crate::common::token(&app.login("al@acme.test", "al-password-1", "acme").await, "access_token");
    assert_eq!(app.call("GET", "/api/integrations/webhooks", Some(&al), None).await.status, 403);
    for (body, code) in [
        (json!({"url": "ftp://example.com/x"}), "invalid_url"),
        (json!({"url": "https://user:pw@example.com/x"}), "invalid_url"),
        (json!({"url": url, "event_types": ["message.exploded"]}), "invalid_event_types"),
    ] {
        let r = app.call("POST", "/api/integrations/webhooks", Some(admin), Some(body.clone())).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some(code)), "{body}");
    }
    // Events from before the endpoint are not sent.
    inbound(&app, "7100", "before").await;
    r.answers.lock().expect("lock").push_back(500);
    let made = app.call("POST", "/api/integrations/webhooks", Some(admin), Some(json!({"url": url}))).await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    let secret = made.body["secret"].as_str().expect("secret").to_string();
    let id = made.body["id"].as_str().expect("id").to_string();
    assert!(secret.starts_with("whsec_"));
    let listed = app.call("GET", "/api/integrations/webhooks", Some(admin), None).await;
    assert_eq!(listed.body["items"][0]["url"], url.as_str());
    assert!(listed.body["items"][0].get("secret").is_none() && !listed.body.to_string().contains(&secret));

    inbound(&app, "7101", "hello there").await;
    eventually("a failure, then the same events delivered", || async { heard(&r).len() >= 2 }).await;
    let got = heard(&r);
    assert_eq!(got[0].1, got[1].1, "the retry carries the same events");
    let body = &got[1].1;
    let bytes = r.heard.lock().expect("lock")[1].1.clone();
    assert_eq!(got[1].0, switchboard::integrations::webhooks::signature(&secret, &bytes), "signed with the secret");
    assert!(types(body).contains(&"message.created".to_string()), "{body}");
    assert!(!body.to_string().contains("before"), "nothing from before the endpoint");
    let texts: Vec<&str> =
        body["events"].as_array().expect("events").iter().filter_map(|e| e["data"]["text"].as_str()).collect();
    assert_eq!(texts, ["hello there"]);
    let seqs: Vec<i64> = body["events"].as_array().expect("events").iter().filter_map(|e| e["seq"].as_i64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]) && !seqs.is_empty(), "{seqs:?}");
    actix_web::rt::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(heard(&r).len(), 2, "nothing sent twice after a success");

    // Only conversation updates.
    let path = format!("/api/integrations/webhooks/{id}");
    let p = app.call("PATCH", &path, Some(admin), Some(json!({"event_types": ["conversation.updated"]}))).await;
    assert_eq!(p.body["event_types"], json!(["conversation.updated"]), "{:?}", p.body);
    inbound(&app, "7101", "second").await;
    eventually("the conversation update", || async { heard(&r).len() >= 3 }).await;
    assert!(types(&heard(&r)[2].1).iter().all(|t| t == "conversation.updated"), "{:?}", heard(&r)[2].1);

    // Off: nothing; on again: what it missed.
    let p = app.call("PATCH", &path, Some(admin), Some(json!({"enabled": false, "event_types": []}))).await;
    assert_eq!(p.body["enabled"], false);
    inbound(&app, "7102", "while off").await;
    actix_web::rt::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(heard(&r).len(), 3);
    app.call("PATCH", &path, Some(admin), Some(json!({"enabled": true}))).await;
    eventually("what it missed", || async { heard(&r).iter().any(|(_, b)| b.to_string().contains("while off")) }).await;

    // Retention pruned what it had not had yet: told to resync first.
    // (Once the delivery just heard is settled: its cursor is written
    // after the endpoint answered, over a change made meanwhile.)
    let settled = || {
        eventually("the delivery settled", || async {
            app.count("SELECT count(*) AS n FROM public.outgoing_webhooks WHERE leased_until IS NULL") == 1
        })
    };
    settled().await;
    let sql = |q: &str| {
        use diesel::RunQueryDsl;
        diesel::sql_query(q).execute(&mut app.db.conn()).expect("sql");
    };
    sql("DELETE FROM tenant_acme.events WHERE seq < (SELECT max(seq) FROM tenant_acme.events)");
    sql("UPDATE public.outgoing_webhooks SET cursor_seq = 0");
    let before = heard(&r).len();
    eventually("resync_required", || async { heard(&r).len() > before }).await;
    let resync = heard(&r)[before].1.clone();
    assert_eq!((types(&resync)[0].as_str(), &resync["events"][0]["data"]["since"]), ("resync_required", &json!(0)));
    // Failing for about a day: switched off, and the audit log says so.
    r.answers.lock().expect("lock").push_back(503);
    settled().await;
    sql("UPDATE public.outgoing_webhooks SET failures = 149, cursor_seq = 0");
    eventually("switched off", || async {
        app.call("GET", "/api/integrations/webhooks", Some(admin), None).await.body["items"][0]["enabled"] == false
    })
    .await;
    let listed = app.call("GET", "/api/integrations/webhooks", Some(admin), None).await;
    assert_eq!(listed.body["items"][0]["last_error"], "answered 503");

    let log = app.call("GET", "/api/audit-log", Some(admin), None).await;
    let actions: Vec<&str> =
        log.body["items"].as_array().expect("items").iter().filter_map(|e| e["action"].as_str()).collect();
    for action in ["webhook.created", "webhook.updated", "webhook.disabled"] {
        assert!(actions.contains(&action), "{action}: {actions:?}");
    }
    assert_eq!(app.call("DELETE", &path, Some(admin), None).await.status, 204);
    assert_eq!(app.call("DELETE", &path, Some(admin), None).await.status, 404);
    assert_eq!(app.call("PATCH", "/api/integrations/webhooks/nope", Some(admin), Some(json!({}))).await.status, 404);
}

/// A tenant has at most ten endpoints, however many creates come at once.
#[actix_web::test]
async fn creates_at_once_stop_at_the_limit() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let create = |i: usize| {
        let (app, t) = (&app, ctx.admin.clone());
        async move {
            let body = json!({"url": format!("https://hooks.example.com/{i}")});
            app.call("POST", "/api/integrations/webhooks", Some(&t), Some(body)).await
        }
    };
    let answers = futures_util::future::join_all((0..16).map(create)).await;
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [[201; 10].as_slice(), [409; 6].as_slice()].concat(), "{statuses:?}");
    assert!(answers.iter().filter(|r| r.status == 409).all(|r| r.body["error"]["code"] == "too_many_webhooks"));
    let listed = app.call("GET", "/api/integrations/webhooks", Some(&ctx.admin), None).await;
    assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(10), "{:?}", listed.body);
}

/// One endpoint per URL: made again (a double click, a retry, five at
/// once) or changed to another's URL, it is 409 `webhook_url_taken` naming
/// the one there, never a second endpoint sending each event twice to one
/// receiver. The same URL written otherwise (the host's case, the default
/// port) is the same URL.
#[actix_web::test]
async fn a_url_has_one_endpoint() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let admin = ctx.admin.as_str();
    let make = |url: &'static str| {
        let app = &app;
        async move {
            app.call(
                "POST",
                "/api/integrations/webhooks",
                Some(admin),
                Some(json!({"url": url, "event_types": ["message.created"]})),
            )
            .await
        }
    };
    let answers = futures_util::future::join_all((0..5).map(|_| make("https://hooks.example.com/in"))).await;
    let first = crate::common::one_made_rest_refused(&answers, "webhook_url_taken");
    let id = first.body["id"].as_str().expect("id");
    for refused in answers.iter().filter(|r| r.status == 409) {
        assert!(refused.body["error"]["message"].as_str().is_some_and(|m| m.contains(&format!("webhook {id} "))));
        assert!(refused.body.get("secret").is_none());
    }
    let again = make("HTTPS://Hooks.EXAMPLE.com:443/in").await;
    assert_eq!((again.status, &again.body["error"]["code"]), (409, &json!("webhook_url_taken")), "{:?}", again.body);
    // Another URL is another endpoint, and cannot be changed to the first's.
    let other = make("https://hooks.example.com/other").await;
    assert_eq!(other.status, 201, "{:?}", other.body);
    let path = format!("/api/integrations/webhooks/{}", other.body["id"].as_str().expect("id"));
    let onto = app.call("PATCH", &path, Some(admin), Some(json!({"url": "https://hooks.example.com/in"}))).await;
    assert_eq!((onto.status, &onto.body["error"]["code"]), (409, &json!("webhook_url_taken")), "{:?}", onto.body);
    // Its own URL again, or a third, is a change like any other.
    let own = app.call("PATCH", &path, Some(admin), Some(json!({"url": "https://hooks.example.com/other"}))).await;
    assert_eq!(own.status, 200, "{:?}", own.body);
    let third = app.call("PATCH", &path, Some(admin), Some(json!({"url": "https://hooks.example.com/third"}))).await;
    assert_eq!(
        (third.status, &third.body["url"]),
        (200, &json!("https://hooks.example.com/third")),
        "{:?}",
        third.body
    );
    let listed = app.call("GET", "/api/integrations/webhooks", Some(admin), None).await;
    let urls: Vec<&str> =
        listed.body["items"].as_array().expect("items").iter().filter_map(|e| e["url"].as_str()).collect();
    assert_eq!(urls.len(), 2, "{urls:?}");
    assert!(
        urls.contains(&"https://hooks.example.com/in") && urls.contains(&"https://hooks.example.com/third"),
        "{urls:?}"
    );
    // Gone, its URL is free again.
    let gone = app.call("DELETE", &format!("/api/integrations/webhooks/{id}"), Some(admin), None).await;
    assert_eq!(gone.status, 204);
    assert_eq!(make("https://hooks.example.com/in").await.status, 201);
}

/// An admin pings an endpoint while setting up a receiver: one signed
/// `ping` now, and how it went; the endpoint's failures stay as they were.
#[actix_web::test]
async fn a_ping_says_whether_the_receiver_answers() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (r, url) = receiver().await;
    let admin = ctx.admin.as_str();
    // Switched off, so only the pings reach the receiver.
    let made = app.call("POST", "/api/integrations/webhooks", Some(admin), Some(json!({"url": url}))).await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    let (id, secret) = (made.body["id"].as_str().expect("id"), made.body["secret"].as_str().expect("secret"));
    let path = format!("/api/integrations/webhooks/{id}");
    app.call("PATCH", &path, Some(admin), Some(json!({"enabled": false}))).await;

    let ping = app.call("POST", &format!("{path}/ping"), Some(admin), None).await;
    assert_eq!((ping.status, &ping.body["delivered"], &ping.body["error"]), (200, &json!(true), &json!(null)));
    assert!(ping.body["duration_ms"].is_u64(), "{:?}", ping.body);
    let got = heard(&r);
    assert_eq!(got.len(), 1);
    assert_eq!(types(&got[0].1), ["ping"]);
    assert_eq!((&got[0].1["events"][0]["seq"], &got[0].1["events"][0]["data"]["webhook_id"]), (&json!(0), &json!(id)));
    let bytes = r.heard.lock().expect("lock")[0].1.clone();
    assert_eq!(got[0].0, switchboard::integrations::webhooks::signature(secret, &bytes));

    r.answers.lock().expect("lock").push_back(503);
    let ping = app.call("POST", &format!("{path}/ping"), Some(admin), None).await;
    assert_eq!(
        (ping.status, &ping.body["delivered"], &ping.body["error"]),
        (200, &json!(false), &json!("answered 503"))
    );
    let listed = app.call("GET", "/api/integrations/webhooks", Some(admin), None).await;
    assert_eq!(listed.body["items"][0]["failures"], 0, "{:?}", listed.body);
    for bad in ["999999", "abc"] {
        let r = app.call("POST", &format!("/api/integrations/webhooks/{bad}/ping"), Some(admin), None).await;
        assert_eq!(r.status, 404, "{bad}");
    }
}

/// An endpoint is the tenant's: made by an admin who is then removed, it
/// goes on delivering, unlike that admin's invitations.
#[actix_web::test]
async fn an_endpoint_outlives_the_admin_who_made_it() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (r, url) = receiver().await;
    let admin = ctx.admin.as_str();
    let bea = json!({"email": "bea@acme.test", "role": "admin", "password": "bea-password-1"});
    let added = app.call("POST", "/api/members", Some(admin), Some(bea)).await;
    assert_eq!(added.status, 201, "{:?}", added.body);
    let bea_id = added.body["user_id"].as_str().expect("id").to_string();
    let bea = crate::common::token(&app.login("bea@acme.test", "bea-password-1", "acme").await, "access_token");
    let made = app.call("POST", "/api/integrations/webhooks", Some(&bea), Some(json!({"url": url}))).await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    let invited = json!({"email": "cy@acme.test", "role": "agent"});
    assert_eq!(app.call("POST", "/api/invitations", Some(&bea), Some(invited)).await.status, 201);

    assert_eq!(app.call("DELETE", &format!("/api/members/{bea_id}"), Some(admin), None).await.status, 204);
    inbound(&app, "7301", "after she left").await;
    eventually("delivered after its maker left", || async {
        heard(&r).iter().any(|(_, body)| body.to_string().contains("after she left"))
    })
    .await;
    let listed = app.call("GET", "/api/integrations/webhooks", Some(admin), None).await;
    assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(1));
    let pending = app.call("GET", "/api/invitations", Some(admin), None).await;
    assert_eq!(pending.body["items"], json!([]), "her invitation went with her");
}

/// An admin switches an endpoint off while a delivery to it is under way,
/// and the delivery fails: the failure is recorded and the endpoint stays
/// off. Before, the failure's record set it on again (`enabled` written
/// as "not past the most failures"), and it went on being tried.
#[actix_web::test]
async fn an_endpoint_switched_off_during_a_failing_delivery_stays_off() {
    use std::io::{Read, Write};
    let app = crate::common::spawn_app_without_workers().await;
    let ctx = acme(&app).await;
    let admin = ctx.admin.as_str();
    // A receiver that holds the request until told, then answers 500.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://127.0.0.1:{}/hooks/switchboard", listener.local_addr().expect("addr").port());
    let (arrived, has_arrived) = std::sync::mpsc::channel::<()>();
    let (answer, to_answer) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let _ = stream.read(&mut [0u8; 65536]);
            let _ = arrived.send(());
            let _ = to_answer.recv();
            let _ = stream
                .write_all(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    let made = app.call("POST", "/api/integrations/webhooks", Some(admin), Some(json!({"url": url}))).await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    let hook = format!("/api/integrations/webhooks/{}", made.body["id"].as_str().expect("id"));
    crate::realtime::append_in(&app.pool, 2, 10);
    let state = app.state.clone();
    let round = actix_web::rt::spawn(async move { switchboard::integrations::webhooks::deliver_due(&state).await });
    eventually("the delivery under way", || async { has_arrived.try_recv().is_ok() }).await;
    let off = app.call("PATCH", &hook, Some(admin), Some(json!({"enabled": false}))).await;
    assert_eq!((off.status, &off.body["enabled"]), (200, &json!(false)), "{:?}", off.body);
    answer.send(()).expect("the receiver waits");
    let sent = round.await.expect("the round");
    assert_eq!(sent.map_err(|e| e.message), Ok(0), "nothing delivered");
    let listed = app.call("GET", "/api/integrations/webhooks", Some(admin), None).await;
    let endpoint = &listed.body["items"][0];
    assert_eq!((&endpoint["enabled"], &endpoint["failures"]), (&json!(false), &json!(1)), "{endpoint}");
    assert!(endpoint["last_error"].as_str().is_some_and(|e| !e.is_empty()), "the failure recorded: {endpoint}");
    let next = switchboard::integrations::webhooks::deliver_due(&app.state).await;
    assert_eq!(next.map_err(|e| e.message), Ok(0), "an endpoint off is not tried");
}

/// Every pooled connection is cut (a database restart, a proxy dropping
/// idle flows) between two rounds: the next round claims, reads and
/// settles on fresh connections, so the events go out then, and nothing
/// is counted against the endpoint. Before, the round failed on the first
/// dead connection (claim), or, further on, a dead connection under the
/// read was recorded as the endpoint's failure.
#[actix_web::test]
async fn a_round_after_the_connections_were_cut_delivers_and_blames_no_endpoint() {
    let app = crate::common::spawn_app_without_workers().await;
    let ctx = acme(&app).await;
    let (r, url) = receiver().await;
    let admin = ctx.admin.as_str();
    let made = app.call("POST", "/api/integrations/webhooks", Some(admin), Some(json!({"url": url}))).await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    crate::realtime::append_in(&app.pool, 2, 10);
    let cut = app.count(
        "SELECT count(pg_terminate_backend(pid, 5000)) AS n FROM pg_stat_activity \
          WHERE datname = current_database() AND pid <> pg_backend_pid() AND query NOT LIKE 'LISTEN%'",
    );
    assert!(cut >= 1, "the pool's connections");
    let sent = switchboard::integrations::webhooks::deliver_due(&app.state).await;
    assert_eq!(sent.map_err(|e| e.message), Ok(1), "delivered in the round after the cut");
    let got = heard(&r);
    assert_eq!(got.len(), 1);
    assert_eq!(types(&got[0].1), ["channel.updated", "channel.updated"], "{}", got[0].1);
    let listed = app.call("GET", "/api/integrations/webhooks", Some(admin), None).await;
    let endpoint = &listed.body["items"][0];
    assert_eq!((&endpoint["failures"], &endpoint["last_error"]), (&json!(0), &Value::Null), "{endpoint}");
    assert_eq!(
        app.count("SELECT count(*) AS n FROM public.outgoing_webhooks WHERE leased_until IS NULL"),
        1,
        "settled, not left to its lease"
    );
}

/// A round whose read of the events loses its connection (here the log's
/// read ends its own backend, every time, as a database going down
/// would) sends nothing and counts nothing against the endpoint: no
/// failure, no `last_error` for the integrator to read, no backoff; the
/// next round, the database back, delivers. Before, it was recorded as the
/// endpoint's failure ("reading the events: …").
#[actix_web::test]
async fn a_database_lost_while_reading_the_events_is_not_the_endpoints_failure() {
    let app = crate::common::spawn_app_without_workers().await;
    let ctx = acme(&app).await;
    let (r, url) = receiver().await;
    let made = app.call("POST", "/api/integrations/webhooks", Some(&ctx.admin), Some(json!({"url": url}))).await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    crate::realtime::append_in(&app.pool, 2, 10);
    app.exec(
        "CREATE FUNCTION public.cut_me() RETURNS boolean LANGUAGE sql VOLATILE \
           AS 'SELECT pg_terminate_backend(pg_backend_pid())'",
    );
    app.exec("ALTER TABLE tenant_acme.events RENAME TO events_kept");
    app.exec("CREATE VIEW tenant_acme.events AS SELECT * FROM tenant_acme.events_kept WHERE public.cut_me()");
    let sent = switchboard::integrations::webhooks::deliver_due(&app.state).await;
    assert_eq!(sent.map_err(|e| e.message), Ok(0));
    assert!(heard(&r).is_empty());
    let blamed = "SELECT count(*) AS n FROM public.outgoing_webhooks \
                   WHERE failures > 0 OR last_error IS NOT NULL OR next_attempt_at > now() \
                      OR leased_until IS NOT NULL";
    assert_eq!(app.count(blamed), 0, "nothing counted against the endpoint, and it is let go");
    app.exec("DROP VIEW tenant_acme.events");
    app.exec("ALTER TABLE tenant_acme.events_kept RENAME TO events");
    let sent = switchboard::integrations::webhooks::deliver_due(&app.state).await;
    assert_eq!(sent.map_err(|e| e.message), Ok(1), "delivered next round");
    assert_eq!(types(&heard(&r)[0].1), ["channel.updated", "channel.updated"]);
}
