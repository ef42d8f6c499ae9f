//! The fake Meta speaks Meta's formats: everything it answers or sends has
//! every field of the matching payload in `shared/fixtures/meta/` (real
//! shapes), with the same JSON types; and what our Graph client sends has
//! every field of the request fixtures. The fake may add fields, as Meta does.
//!
//! No database: the fake runs alone, with a small server that catches the
//! webhooks it sends.

use actix_web::{web, App, HttpServer};
use serde_json::{json, Value};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard::config::MetaConfig;
use switchboard::ids::percent_encode;
use switchboard::meta::fake::{FakeConfig, FakeMeta};
use switchboard::meta::GraphClient;
use switchboard::secret::Secret;

use crate::common::fixture;

/// Where `actual` lacks a field of `expected` or has another JSON type.
/// Arrays of objects compare element by element (the fixture's order) and
/// must not be shorter; lists of scalars compare their items' type; `null` in a fixture matches anything.
fn shape_gaps(expected: &Value, actual: &Value, path: &str, gaps: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Null, _) => {}
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                match a.get(k) {
                    Some(av) => shape_gaps(ev, av, &format!("{path}.{k}"), gaps),
                    None => gaps.push(format!("{path}.{k} missing")),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) if !e.iter().any(|v| v.is_object() || v.is_array()) => {
            // A list of scalars (tasks, scopes): its items' type, not its length.
            match (e.first(), a.is_empty()) {
                (Some(_), true) => gaps.push(format!("{path}: empty, Meta's is not")),
                (Some(ev), false) => {
                    a.iter().enumerate().for_each(|(i, av)| shape_gaps(ev, av, &format!("{path}[{i}]"), gaps))
                }
                (None, _) => {}
            }
        }
        (Value::Array(e), Value::Array(a)) => {
            if a.len() < e.len() {
                gaps.push(format!("{path}: {} items, Meta's has {}", a.len(), e.len()));
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                shape_gaps(ev, av, &format!("{path}[{i}]"), gaps);
            }
        }
        (Value::Bool(_), Value::Bool(_)) | (Value::String(_), Value::String(_)) => {}
        (Value::Number(e), Value::Number(a)) if e.is_f64() == a.is_f64() => {}
        _ => gaps.push(format!("{path}: {actual} where Meta's is {expected}")),
    }
}

#[track_caller]
fn assert_shape(fixture_name: &str, actual: &Value) {
    assert_shape_but(fixture_name, actual, &[]);
}

/// As `assert_shape`, with fields of the fixture (JSON pointers) that may be
/// absent.
#[track_caller]
fn assert_shape_but(fixture_name: &str, actual: &Value, optional: &[&str]) {
    let mut expected: Value = serde_json::from_slice(&fixture(fixture_name)).expect("fixture json");
    for pointer in optional {
        let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
        if let Some(fields) = expected.pointer_mut(parent).and_then(Value::as_object_mut) {
            fields.remove(key);
        }
    }
    let mut gaps = Vec::new();
    shape_gaps(&expected, actual, "", &mut gaps);
    assert!(gaps.is_empty(), "{fixture_name}: {gaps:#?}\nours: {actual:#}");
}

struct Fake {
    base: String,
    http: reqwest::Client,
    caught: Arc<Mutex<Vec<Value>>>,
    handles: Vec<actix_web::dev::ServerHandle>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        for h in self.handles.clone() {
            actix_web::rt::spawn(async move { h.stop(false).await });
        }
    }
}

impl Fake {
    async fn start() -> Fake {
        let fake = FakeMeta::new(FakeConfig::default());
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://127.0.0.1:{}", listener.local_addr().expect("addr").port());
        let server = fake.build_server(listener).expect("fake");

        let caught = Arc::new(Mutex::new(Vec::new()));
        let sink = caught.clone();
        let catcher_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let catcher_url = format!("http://127.0.0.1:{}/hook", catcher_listener.local_addr().expect("addr").port());
        let catcher = HttpServer::new(move || {
            let sink = sink.clone();
            App::new().route(
                "/hook",
                web::post().to(move |body: web::Bytes| {
                    let sink = sink.clone();
                    async move {
                        if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                            sink.lock().expect("lock").push(v);
                        }
                        actix_web::HttpResponse::Ok().finish()
                    }
                }),
            )
        })
        .workers(1)
        .listen(catcher_listener)
        .expect("catcher")
        .run();
        fake.set_webhook_target(Some(catcher_url));
        let handles = vec![server.handle(), catcher.handle()];
        actix_web::rt::spawn(server);
        actix_web::rt::spawn(catcher);
        Fake { base, http: reqwest::Client::new(), caught, handles }
    }

    fn meta_config(&self) -> MetaConfig {
        FakeConfig::default().meta_config(&self.base, "verify-me")
    }

    async fn send(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req.json(b);
        }
        let res = req.send().await.expect("fake answers");
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let (status, v) = self.send(method, path, body).await;
        assert!((200..300).contains(&status), "{method} {path}: {status} {v}");
        v
    }

    /// The fixtures' world: two pages, the first with Instagram; a WhatsApp
    /// business account with one number. Every id and token made.
    async fn fixtures_world(&self) -> Value {
        self.ok(
            "POST",
            "/_fake/users",
            Some(&json!({
                "id": "10160000000000001", "name": "Ana Admin",
                "pages": [
                    {"id": "102938475610293", "name": "Loja Azul", "category": "Clothing (Brand)",
                     "instagram": {"id": "17841400123456789", "username": "loja.azul"}},
                    {"id": "109876543210987", "name": "Tasca do Zé", "category": "Restaurant"},
                ],
                "wabas": [{"id": "112233445566778", "phone_numbers": [
                    {"id": "123456789012345", "display_phone_number": "+1 555-123-4567", "verified_name": "Loja Azul"}]}],
            })),
        )
        .await
    }

    /// Posts a request fixture, as is, to an account's Send API.
    async fn post_fixture(&self, account: &str, token: &str, name: &str) -> Value {
        let body: Value = serde_json::from_slice(&fixture(name)).expect("fixture json");
        self.ok("POST", &format!("/v24.0/{account}/messages?access_token={}", percent_encode(token)), Some(&body)).await
    }

    /// Waits for a webhook that `pick` accepts and checks it against the
    /// fixture named.
    async fn webhook_like(&self, fixture_name: &str, pick: impl Fn(&Value) -> bool) -> Value {
        let v = self.webhook(fixture_name, pick).await;
        assert_shape(fixture_name, &v);
        v
    }

    /// Waits for the caught webhooks to hold one that `pick` accepts.
    async fn webhook(&self, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..250 {
            if let Some(v) = self.caught.lock().expect("lock").iter().find(|v| pick(v)).cloned() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the fake sent no {what}: {:#?}", self.caught.lock().expect("lock"));
    }

    /// The body of the last Graph call the fake logged on `path`.
    async fn last_request_body(&self, path: &str) -> Value {
        let log = self.ok("GET", "/_fake/requests", None).await;
        log["items"]
            .as_array()
            .and_then(|items| items.iter().rev().find(|r| r["path"] == path))
            .map(|r| r["body"].clone())
            .unwrap_or_else(|| panic!("no call on {path}: {log:#}"))
    }
}

fn messaging_event(v: &Value) -> &Value {
    &v["entry"][0]["messaging"][0]
}

fn wa_status(v: &Value) -> &Value {
    &v["entry"][0]["changes"][0]["value"]["statuses"][0]
}

#[actix_web::test]
async fn the_fake_answers_and_sends_in_metas_formats() {
    let f = Fake::start().await;
    let cfg = FakeConfig::default();
    let made = f.fixtures_world().await;
    let page_token = made["pages"][0]["access_token"].as_str().expect("page token").to_string();
    let waba_token = made["wabas"][0]["access_token"].as_str().expect("waba token").to_string();
    let secret = |t: &str| Secret::new(t.to_string());

    // OAuth: code, then a long-lived token.
    let redirect = "https://inbox.example.test/api/channels/facebook/oauth/callback";
    let code =
        f.ok("POST", "/_fake/codes", Some(&json!({"user_id": "10160000000000001", "redirect_uri": redirect}))).await;
    let code = code["code"].as_str().expect("code");
    let q = |pairs: &[(&str, &str)]| {
        pairs.iter().map(|(k, v)| format!("{k}={}", percent_encode(v))).collect::<Vec<_>>().join("&")
    };
    let exchanged = f
        .ok(
            "GET",
            &format!(
                "/v24.0/oauth/access_token?{}",
                q(&[
                    ("client_id", &cfg.app_id),
                    ("client_secret", &cfg.app_secret),
                    ("redirect_uri", redirect),
                    ("code", code)
                ])
            ),
            None,
        )
        .await;
    assert_shape("oauth_access_token_code_exchange.json", &exchanged);
    let short = exchanged["access_token"].as_str().expect("token");
    let long = f
        .ok(
            "GET",
            &format!(
                "/v24.0/oauth/access_token?{}",
                q(&[
                    ("grant_type", "fb_exchange_token"),
                    ("client_id", &cfg.app_id),
                    ("client_secret", &cfg.app_secret),
                    ("fb_exchange_token", short),
                ])
            ),
            None,
        )
        .await;
    assert_shape("oauth_access_token_long_lived.json", &long);
    let user_token = long["access_token"].as_str().expect("token").to_string();

    // The user's pages with their Instagram accounts.
    let fields = "id,name,access_token,category,category_list,tasks,instagram_business_account";
    let accounts = f
        .ok("GET", &format!("/v24.0/me/accounts?{}", q(&[("fields", fields), ("access_token", &user_token)])), None)
        .await;
    assert_shape("me_accounts.json", &accounts);

    // debug_token, valid and then for a token the user revoked.
    let app_token = format!("{}|{}", cfg.app_id, cfg.app_secret);
    let debug = |t: String| format!("/v24.0/debug_token?{}", q(&[("input_token", &t), ("access_token", &app_token)]));
    assert_shape("debug_token.json", &f.ok("GET", &debug(user_token.clone()), None).await);

    // Page subscription: subscribe, then read it back.
    let subscribed_fields =
        "messages,messaging_postbacks,message_deliveries,message_reads,message_echoes,message_reactions,standby,messaging_handovers";
    let sub = f
        .ok(
            "POST",
            &format!(
                "/v24.0/102938475610293/subscribed_apps?{}",
                q(&[("subscribed_fields", subscribed_fields), ("access_token", &page_token)])
            ),
            None,
        )
        .await;
    assert_shape("subscribed_apps_post_success.json", &sub);
    let subs = f
        .ok("GET", &format!("/v24.0/102938475610293/subscribed_apps?{}", q(&[("access_token", &page_token)])), None)
        .await;
    assert_shape("subscribed_apps_get.json", &subs);

    // WhatsApp numbers and media.
    let numbers = f
        .ok("GET", &format!("/v24.0/112233445566778/phone_numbers?{}", q(&[("access_token", &waba_token)])), None)
        .await;
    assert_shape("whatsapp_phone_numbers.json", &numbers);
    let media = f
        .ok("POST", "/_fake/media", Some(&json!({"phone_number_id": "123456789012345", "mime_type": "image/jpeg"})))
        .await;
    let media_id = media["id"].as_str().expect("media id");
    let media = f.ok("GET", &format!("/v24.0/{media_id}?{}", q(&[("access_token", &waba_token)])), None).await;
    assert_shape("whatsapp_media_get.json", &media);
    // Meta's checksum is the hex SHA-256 of the bytes.
    let sha = media["sha256"].as_str().expect("sha256");
    assert!(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()), "{sha}");

    // Customers write: the webhooks have Meta's shapes.
    let inbound = |to: &str, from: &str, text: &str| json!({"to": to, "from": from, "text": text, "name": "Ana Sousa"});
    let m = f.ok("POST", "/_fake/inbound", Some(&inbound("102938475610293", "7392015648120394", "Olá 👋"))).await;
    assert_shape("messenger_text.json", &m["webhook"]);
    let i = f.ok("POST", "/_fake/inbound", Some(&inbound("17841400123456789", "6841100000123456", "Ainda há?"))).await;
    assert_shape("instagram_text.json", &i["webhook"]);
    let w = f.ok("POST", "/_fake/inbound", Some(&inbound("123456789012345", "14155550123", "Olá!"))).await;
    assert_shape("whatsapp_text.json", &w["webhook"]);
    assert_eq!(
        w["webhook"]["entry"][0]["changes"][0]["value"]["metadata"]["display_phone_number"], "15551234567",
        "the number's own display number, in digits"
    );
    let wamid_in = w["webhook"]["entry"][0]["changes"][0]["value"]["messages"][0]["id"].as_str().expect("wamid");

    // Profiles, with the fields asked for.
    let profile =
        |id: &str, fields: &str| format!("/v24.0/{id}?{}", q(&[("fields", fields), ("access_token", &page_token)]));
    let mp = f.ok("GET", &profile("7392015648120394", "first_name,last_name,profile_pic"), None).await;
    assert_shape("messenger_user_profile.json", &mp);
    let ig_fields = "name,username,profile_pic,follower_count,is_user_follow_business,is_business_follow_user";
    let ip = f.ok("GET", &profile("6841100000123456", ig_fields), None).await;
    assert_shape("instagram_user_profile.json", &ip);
    // Only what was asked (and the id), as Graph answers.
    let only_name = f.ok("GET", &profile("6841100000123456", "name"), None).await;
    assert_eq!(only_name, json!({"name": "Ana Sousa", "id": "6841100000123456"}));

    // Our Graph client sends Meta's request shapes, and the fake answers in
    // Meta's response shapes.
    let graph = GraphClient::new(&f.meta_config());
    let mid = graph
        .send_text(
            "102938475610293",
            &secret(&page_token),
            "7392015648120394",
            "Yes, we ship to Lisbon in 2-3 days.",
            None,
            "inbox:msg:4f1c2a9e-0000-4000-8000-000000000001",
        )
        .await
        .expect("send");
    assert_shape("messenger_send_request.json", &f.last_request_body("/102938475610293/messages").await);
    let raw = f.post_fixture("102938475610293", &page_token, "messenger_send_request.json").await;
    // The fixture's recipient is the customer who wrote above.
    assert_shape("messenger_send_response.json", &raw);
    graph
        .send_text("102938475610293", &secret(&page_token), "7392015648120394", "Sorry.", Some("HUMAN_AGENT"), "m")
        .await
        .expect("human agent send");
    assert_shape("messenger_send_request_human_agent.json", &f.last_request_body("/102938475610293/messages").await);
    graph
        .sender_action("102938475610293", &secret(&page_token), "7392015648120394", "typing_on")
        .await
        .expect("typing");
    assert_shape("messenger_sender_action_request.json", &f.last_request_body("/102938475610293/messages").await);
    let action = f.post_fixture("102938475610293", &page_token, "messenger_sender_action_request.json").await;
    assert_shape("messenger_sender_action_response.json", &action);

    // The page's send comes back as echo, delivery and read webhooks.
    f.webhook_like("messenger_echo.json", |v| messaging_event(v)["message"]["mid"] == mid.as_str()).await;
    f.webhook_like("messenger_delivery.json", |v| messaging_event(v)["delivery"]["mids"][0] == mid.as_str()).await;
    f.webhook_like("messenger_read.json", |v| messaging_event(v)["read"].is_object() && v["object"] == "page").await;

    // Instagram: echo and seen.
    let ig_mid = graph
        .send_text("17841400123456789", &secret(&page_token), "6841100000123456", "Yes! Size M left.", None, "m")
        .await
        .expect("instagram send");
    f.webhook_like("instagram_echo.json", |v| messaging_event(v)["message"]["mid"] == ig_mid.as_str()).await;
    f.webhook_like("instagram_seen.json", |v| messaging_event(v)["read"]["mid"] == ig_mid.as_str()).await;

    // WhatsApp: send, mark read (with typing), statuses.
    let wamid = graph
        .whatsapp_text(
            "123456789012345",
            &secret(&waba_token),
            "14155550123",
            "Sim, ainda temos! Quer reservar?",
            Default::default(),
        )
        .await
        .expect("whatsapp send");
    assert_eq!(wamid.wa_id.as_deref(), Some("14155550123"));
    let wamid = wamid.wamid;
    assert_shape("whatsapp_send_request_text.json", &f.last_request_body("/123456789012345/messages").await);
    let raw = f.post_fixture("123456789012345", &waba_token, "whatsapp_send_request_text.json").await;
    assert_shape("whatsapp_send_response.json", &raw);
    graph.whatsapp_typing("123456789012345", &secret(&waba_token), wamid_in).await.expect("typing");
    assert_shape("whatsapp_mark_read_request.json", &f.last_request_body("/123456789012345/messages").await);
    let read = f.post_fixture("123456789012345", &waba_token, "whatsapp_mark_read_request.json").await;
    assert_shape("whatsapp_mark_read_response.json", &read);
    // Meta prices a message on one of its statuses, not on several
    // (CONTRACTS §6); the fake does so on `sent`, so `delivered` has none.
    let pricing = "/entry/0/changes/0/value/statuses/0/pricing";
    for status in ["sent", "delivered", "read"] {
        let v = f.webhook(status, |v| wa_status(v)["id"] == wamid.as_str() && wa_status(v)["status"] == status).await;
        assert_shape_but(&format!("whatsapp_status_{status}.json"), &v, &[pricing]);
        assert_eq!(wa_status(&v).get("pricing").is_some(), status == "sent", "{v}");
    }

    // Meta restricts the business account.
    let restricted = f
        .ok(
            "POST",
            "/_fake/account-update",
            Some(&json!({"waba_id": "112233445566778", "event": "ACCOUNT_RESTRICTION",
                "restriction_info": [{"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": 1773226400}]})),
        )
        .await;
    assert_shape("whatsapp_account_update.json", &restricted["webhook"]);

    // Outside the 24-hour window a WhatsApp send fails later, by webhook.
    let day_ago = (chrono::Utc::now() - chrono::Duration::hours(25)).to_rfc3339();
    f.ok(
        "POST",
        "/_fake/inbound",
        Some(&json!({"to": "123456789012345", "from": "14155550999", "text": "old", "at": day_ago})),
    )
    .await;
    let late = graph
        .whatsapp_text("123456789012345", &secret(&waba_token), "14155550999", "late", Default::default())
        .await
        .expect("accepted")
        .wamid;
    f.webhook_like("whatsapp_status_failed.json", |v| wa_status(v)["id"] == late.as_str()).await;
    // A Brazilian mobile is known without its ninth digit, and Meta says so.
    let br = graph
        .whatsapp_text("123456789012345", &secret(&waba_token), "+55 11 98765-4321", "Olá", Default::default())
        .await
        .expect("accepted");
    assert_eq!(br.wa_id.as_deref(), Some("551187654321"));
    let status = f.webhook("its sent", |v| wa_status(v)["id"] == br.wamid.as_str()).await;
    assert_eq!(wa_status(&status)["recipient_id"], "551187654321");

    // Errors: an expired token, and Messenger's window.
    f.ok("POST", "/_fake/tokens/expire", Some(&json!({"token": user_token}))).await;
    let (status, expired) = f.send("GET", &format!("/v24.0/me?{}", q(&[("access_token", &user_token)])), None).await;
    assert_eq!(status, 400);
    assert_shape("graph_error_190_expired.json", &expired);
    f.ok("POST", "/_fake/tokens/revoke", Some(&json!({"token": user_token}))).await;
    assert_shape("debug_token_invalid.json", &f.ok("GET", &debug(user_token.clone()), None).await);
    let (status, logged_out) = f.send("GET", &format!("/v24.0/me?{}", q(&[("access_token", &user_token)])), None).await;
    assert_eq!((status, &logged_out["error"]["error_subcode"]), (400, &json!(467)));
    assert_shape("graph_error_190_logged_out.json", &logged_out);
    f.ok(
        "POST",
        "/_fake/inbound",
        Some(&json!({"to": "109876543210987", "from": "7392015648120999", "text": "old", "at": day_ago})),
    )
    .await;
    let other_page = made["pages"][1]["access_token"].as_str().expect("token");
    let (status, outside) = f
        .send(
            "POST",
            &format!("/v24.0/109876543210987/messages?{}", q(&[("access_token", other_page)])),
            Some(&json!({"recipient": {"id": "7392015648120999"}, "messaging_type": "RESPONSE", "message": {"text": "late"}})),
        )
        .await;
    assert_eq!(status, 400);
    assert_shape("messenger_error_outside_window.json", &outside);

    // Magic recipients (meta/CONTRACTS.md §11), answered as Meta's fixtures.
    use switchboard::meta::fake::{RATE_LIMITED_PSID, RATE_LIMITED_WA, UNAVAILABLE_PSID, UNDELIVERABLE_WA};
    for (psid, name) in [
        (UNAVAILABLE_PSID, "messenger_error_551_unavailable.json"),
        (RATE_LIMITED_PSID, "graph_error_613_rate_limit.json"),
    ] {
        let (status, error) = f
            .send(
                "POST",
                &format!("/v24.0/109876543210987/messages?{}", q(&[("access_token", other_page)])),
                Some(&json!({"recipient": {"id": psid}, "messaging_type": "RESPONSE", "message": {"text": "olá"}})),
            )
            .await;
        assert_eq!(status, 400, "{error}");
        assert_shape(name, &error);
    }
    for (to, name, expected) in [
        (RATE_LIMITED_WA, "whatsapp_error_130429.json", 429),
        (UNDELIVERABLE_WA, "whatsapp_error_131026_sync.json", 400),
    ] {
        let body = json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": "text",
            "text": {"preview_url": false, "body": "olá"}});
        let (status, error) = f
            .send(
                "POST",
                &format!("/v24.0/123456789012345/messages?{}", q(&[("access_token", &waba_token)])),
                Some(&body),
            )
            .await;
        assert_eq!(status, expected, "{error}");
        assert_shape(name, &error);
    }
    // The pair rate limit: too many messages to one customer just now.
    let body = json!({"messaging_product": "whatsapp", "recipient_type": "individual",
        "to": switchboard::meta::fake::PAIR_LIMITED_WA, "type": "text", "text": {"body": "olá"}});
    let path = format!("/v24.0/123456789012345/messages?{}", q(&[("access_token", &waba_token)]));
    let (status, error) = f.send("POST", &path, Some(&body)).await;
    assert_eq!((status, &error["error"]["code"]), (400, &json!(131056)), "{error}");
    assert_eq!(error["error"]["error_data"]["messaging_product"], "whatsapp");

    // An injected error comes with the headers asked for, a JSON value as its text.
    let usage =
        json!({"109876543210987": [{"type": "messenger", "call_count": 100, "estimated_time_to_regain_access": 3}]});
    let inject = json!({"path": "/109876543210987/messages", "error": {"code": 80006},
        "headers": {"X-Business-Use-Case-Usage": usage, "Retry-After": "180"}});
    f.ok("POST", "/_fake/errors", Some(&inject)).await;
    let res = f
        .http
        .post(format!("{}/v24.0/109876543210987/messages?{}", f.base, q(&[("access_token", other_page)])))
        .json(
            &json!({"recipient": {"id": "7392015648120999"}, "messaging_type": "RESPONSE", "message": {"text": "olá"}}),
        )
        .send()
        .await
        .expect("fake answers");
    assert_eq!(res.status().as_u16(), 400);
    let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let sent: Value = serde_json::from_str(&header("x-business-use-case-usage").expect("usage header")).expect("json");
    assert_eq!((sent, header("retry-after").as_deref()), (usage, Some("180")));
    assert_eq!(switchboard::meta::graph::regain_in(res.headers()), Some(Duration::from_secs(180)));
    for headers in [json!("x"), json!({"bad name": "1"}), json!({"X-Ok": "line\nbreak"})] {
        let (status, answer) = f
            .send("POST", "/_fake/errors", Some(&json!({"path": "/x", "error": {"code": 1}, "headers": headers})))
            .await;
        assert_eq!(status, 400, "{answer}");
    }
    // An error that is not an object is refused, not a crash of the fake.
    for error in [json!("x"), json!(true), json!([1]), json!(613)] {
        let (status, answer) = f.send("POST", "/_fake/errors", Some(&json!({"path": "/x", "error": error}))).await;
        assert_eq!(status, 400, "{answer}");
    }
    f.ok("GET", "/_fake/requests", None).await;
}

/// WhatsApp templates at the fake: listed in pages as Graph lists them,
/// sent at any time, and refused with Meta's codes.
#[actix_web::test]
async fn the_fakes_templates_are_listed_sent_and_checked_as_metas() {
    let f = Fake::start().await;
    let (waba, phone) = ("112233445566778", "123456789012345");
    let made = f
        .ok(
            "POST",
            "/_fake/users",
            Some(&json!({"name": "Ana", "pages": [], "wabas": [{"id": waba, "phone_numbers": [{"id": phone}]}]})),
        )
        .await;
    let token = made["wabas"][0]["access_token"].as_str().expect("waba token").to_string();
    let graph = GraphClient::new(&f.meta_config());
    let secret = Secret::new(token.clone());
    // Every account starts with Meta's sample.
    let all = graph.whatsapp_templates(waba, &secret, None).await.expect("templates");
    assert_eq!(all.len(), 1);
    assert_eq!(
        (&all[0]["name"], &all[0]["status"], &all[0]["language"]),
        (&json!("hello_world"), &json!("APPROVED"), &json!("en_US"))
    );
    assert!(all[0]["components"].as_array().is_some_and(|c| c.iter().any(|c| c["type"] == "BODY")), "{all:?}");
    let add = |name: &str, status: &str| {
        json!({"waba_id": waba, "name": name, "language": "pt_BR", "status": status, "header": "Pedido {{1}}",
            "body": "Olá {{1}}, pedido {{2}}."})
    };
    for i in 0..4 {
        f.ok("POST", "/_fake/templates", Some(&add(&format!("t{i}"), "APPROVED"))).await;
    }
    f.ok("POST", "/_fake/templates", Some(&add("paused", "PAUSED"))).await;
    // Pages: the client follows them; one name is one template.
    let (status, page) = f
        .send("GET", &format!("/v24.0/{waba}/message_templates?limit=2&access_token={}", percent_encode(&token)), None)
        .await;
    assert_eq!((status, page["data"].as_array().map(Vec::len)), (200, Some(2)));
    assert!(page["paging"]["next"].is_string() && page["paging"]["cursors"]["after"].is_string(), "{page}");
    assert_eq!(graph.whatsapp_templates(waba, &secret, None).await.expect("all").len(), 6);
    let one = graph.whatsapp_templates(waba, &secret, Some("t2")).await.expect("one");
    assert_eq!(one.iter().map(|t| t["name"].clone()).collect::<Vec<_>>(), vec![json!("t2")]);

    // Sent outside the customer's window, and priced, not failed.
    let day_ago = (chrono::Utc::now() - chrono::Duration::hours(30)).to_rfc3339();
    f.ok("POST", "/_fake/inbound", Some(&json!({"to": phone, "from": "14155550999", "text": "old", "at": day_ago})))
        .await;
    let params = |ps: &[&str]| ps.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let wamid = graph
        .whatsapp_template(
            phone,
            &secret,
            "14155550999",
            "t1",
            "pt_BR",
            &params(&["#1"]),
            &params(&["Zoë", "#1"]),
            None,
            Default::default(),
        )
        .await
        .expect("template sent")
        .wamid;
    let sent = f.webhook("sent", |v| wa_status(v)["id"] == wamid.as_str() && wa_status(v)["status"] == "sent").await;
    assert_eq!(wa_status(&sent)["pricing"]["category"], "utility", "{sent}");
    f.webhook("read", |v| wa_status(v)["id"] == wamid.as_str() && wa_status(v)["status"] == "read").await;

    // Refusals, with Meta's codes.
    for (name, language, header, body, code) in [
        ("t1", "en_US", vec!["#1"], vec!["Zoë", "#1"], 132001),
        ("nope", "pt_BR", vec![], vec![], 132001),
        ("t1", "pt_BR", vec!["#1"], vec!["Zoë"], 132000),
        ("t1", "pt_BR", vec!["#1"], vec!["Zoë\nAna", "#1"], 132018),
        ("paused", "pt_BR", vec!["#1"], vec!["Zoë", "#1"], 132015),
    ] {
        let e = graph
            .whatsapp_template(
                phone,
                &secret,
                "14155550123",
                name,
                language,
                &params(&header),
                &params(&body),
                None,
                Default::default(),
            )
            .await
            .expect_err("refused");
        assert_eq!(e.code().map(|(c, _)| c), Some(code), "{name} {language}: {e}");
    }
}

#[test]
fn the_simulator_sends_metas_webhook_shapes() {
    use switchboard::cli::SimulateArgs;
    use switchboard::simulate::{bodies, Kind};
    // One event of one kind, for one target.
    let one = |target: &str, kind: Kind| -> Value {
        let args = SimulateArgs {
            url: String::new(),
            app_secret: "s".into(),
            page: (target == "page").then(|| "102938475610293".into()),
            instagram: (target == "instagram").then(|| "17841400123456789".into()),
            phone: (target == "phone").then(|| "123456789012345".into()),
            count: 1,
            rate: 0,
            concurrency: 1,
            contacts: 1,
            duplicates: false,
            bad_signature: false,
            odd: 0,
            batch: 1,
            retries: 0,
            shuffle: 1,
            kinds: vec![kind],
        };
        let body = bodies(&args, "shape").next().unwrap_or_else(|| panic!("{target} sends {kind:?}"));
        serde_json::from_str(&body).expect("json")
    };
    let cases = [
        ("page", Kind::Text, "messenger_text.json"),
        ("page", Kind::Image, "messenger_image.json"),
        ("page", Kind::Postback, "messenger_postback.json"),
        ("page", Kind::Echo, "messenger_echo_from_page_inbox.json"),
        ("page", Kind::Delivery, "messenger_delivery.json"),
        ("page", Kind::Read, "messenger_read.json"),
        ("page", Kind::Reaction, "messenger_reaction.json"),
        ("instagram", Kind::Text, "instagram_text.json"),
        ("instagram", Kind::Echo, "instagram_echo.json"),
        ("instagram", Kind::Read, "instagram_seen.json"),
        ("instagram", Kind::Reaction, "instagram_reaction.json"),
        ("phone", Kind::Text, "whatsapp_text.json"),
        ("phone", Kind::Image, "whatsapp_image.json"),
        ("phone", Kind::Delivery, "whatsapp_status_delivered.json"),
        ("phone", Kind::Read, "whatsapp_status_read.json"),
        ("phone", Kind::Reaction, "whatsapp_reaction.json"),
    ];
    for (target, kind, name) in cases {
        assert_shape(name, &one(target, kind));
    }
}

/// The fake refuses choices and new templates as Meta does: too many
/// buttons or rows, quick replies past thirteen, a template without its
/// examples or under a name taken; it deletes templates by name.
#[actix_web::test]
async fn the_fake_checks_choices_and_new_templates_as_metas() {
    let f = Fake::start().await;
    let (page, waba, phone) = ("102938475610293", "112233445566778", "123456789012345");
    let made = f
        .ok(
            "POST",
            "/_fake/users",
            Some(&json!({"name": "Ana", "pages": [{"id": page, "name": "Loja Azul"}],
                "wabas": [{"id": waba, "phone_numbers": [{"id": phone}]}]})),
        )
        .await;
    let page_token = made["pages"][0]["access_token"].as_str().expect("page token").to_string();
    let waba_token = made["wabas"][0]["access_token"].as_str().expect("waba token").to_string();
    for (to, from) in [(page, "7392015648120394"), (phone, "14155550123")] {
        f.ok("POST", "/_fake/inbound", Some(&json!({"to": to, "from": from, "text": "Olá"}))).await;
    }
    let at = |account: &str, token: &str, what: &str| {
        format!("/v24.0/{account}/{what}?access_token={}", percent_encode(token))
    };
    let code = |v: &Value| v["error"]["code"].as_i64();

    // WhatsApp: reply buttons up to three, list rows up to ten.
    let interactive = |i: Value| json!({"messaging_product": "whatsapp", "to": "14155550123", "type": "interactive", "interactive": i});
    let buttons = |n: usize| {
        let b: Vec<Value> = (1..=n)
            .map(|i| json!({"type": "reply", "reply": {"id": format!("choice-{i}"), "title": format!("b{i}")}}))
            .collect();
        interactive(json!({"type": "button", "body": {"text": "Hoje?"}, "action": {"buttons": b}}))
    };
    let rows = |n: usize| {
        let r: Vec<Value> = (1..=n).map(|i| json!({"id": format!("choice-{i}"), "title": format!("r{i}")})).collect();
        interactive(
            json!({"type": "list", "body": {"text": "Hora?"}, "action": {"button": "Horas", "sections": [{"rows": r}]}}),
        )
    };
    let wa = at(phone, &waba_token, "messages");
    for (body, fine) in [(buttons(3), true), (buttons(4), false), (rows(10), true), (rows(11), false)] {
        let (status, v) = f.send("POST", &wa, Some(&body)).await;
        assert_eq!(status == 200, fine, "{body}: {v}");
        if !fine {
            assert_eq!(code(&v), Some(131009), "{v}");
        }
    }
    // Messenger: up to thirteen quick replies of at most twenty characters.
    let quick = |n: usize, title: &str| {
        let q: Vec<Value> = (1..=n)
            .map(|i| json!({"content_type": "text", "title": format!("{title}{i}"), "payload": format!("choice-{i}")}))
            .collect();
        json!({"recipient": {"id": "7392015648120394"}, "messaging_type": "RESPONSE", "message": {"text": "Sim?", "quick_replies": q}})
    };
    let fb = at(page, &page_token, "messages");
    for (body, fine) in [(quick(13, "q"), true), (quick(14, "q"), false), (quick(1, &"x".repeat(20)), false)] {
        let (status, v) = f.send("POST", &fb, Some(&body)).await;
        assert_eq!(status == 200, fine, "{body}: {v}");
        if !fine {
            assert_eq!(code(&v), Some(100), "{v}");
        }
    }

    // A new template: its examples needed, its name free in that language.
    let templates = at(waba, &waba_token, "message_templates");
    let template = |name: &str, examples: bool| {
        let mut body = json!({"type": "BODY", "text": "Olá {{1}}, tudo bem?"});
        if examples {
            body["example"] = json!({"body_text": [["Ana"]]});
        }
        json!({"name": name, "language": "pt_BR", "category": "UTILITY", "components": [body]})
    };
    let (status, v) = f.send("POST", &templates, Some(&template("aviso", false))).await;
    assert_eq!((status, v["error"]["error_subcode"].as_i64()), (400, Some(2388043)), "{v}");
    let (status, v) = f.send("POST", &templates, Some(&template("Aviso Novo", true))).await;
    assert_eq!((status, code(&v)), (400, Some(100)), "{v}");
    let made = f.ok("POST", &templates, Some(&template("aviso", true))).await;
    assert_eq!((&made["status"], &made["category"]), (&json!("PENDING"), &json!("UTILITY")), "{made}");
    assert!(made["id"].is_string(), "{made}");
    let (status, v) = f.send("POST", &templates, Some(&template("aviso", true))).await;
    assert_eq!((status, v["error"]["error_subcode"].as_i64()), (400, Some(2388024)), "{v}");
    let delete = format!("{templates}&name=aviso");
    assert_eq!(f.ok("DELETE", &delete, None).await, json!({"success": true}));
    let (status, v) = f.send("DELETE", &delete, None).await;
    assert_eq!((status, code(&v)), (400, Some(100)), "{v}");
}

/// The fake is what the demo and load tests send to: every request
/// fixture, with each value in turn retyped or removed and as other JSON
/// altogether, is answered as Meta answers, a success or a Graph error
/// (`{"error": {message, type, code, fbtrace_id}}` with a 4xx), never a
/// 5xx; and a success names the message it sent.
#[actix_web::test]
async fn the_fake_answers_requests_of_any_shape_as_meta_does() {
    use switchboard::meta::variants::{every_variant, odd_values};
    let f = Fake::start().await;
    let made = f.fixtures_world().await;
    let page_token = made["pages"][0]["access_token"].as_str().expect("page token").to_string();
    let waba_token = made["wabas"][0]["access_token"].as_str().expect("waba token").to_string();
    let at = |account: &str, token: &str, edge: &str| {
        format!("/v24.0/{account}/{edge}?access_token={}", percent_encode(token))
    };
    let page = at("102938475610293", &page_token, "messages");
    let number = at("123456789012345", &waba_token, "messages");
    let fixed = |name: &str| -> Value { serde_json::from_slice(&fixture(name)).expect("fixture") };
    // Each request (a fixture, or as our Graph client makes it), where it
    // is sent, what a success names, and what Meta refuses to go without
    // (text, not blank).
    let cases: Vec<(&str, String, Value, &str, &[&str])> = vec![
        ("messenger send", page.clone(), fixed("messenger_send_request.json"), "/message_id", &["/recipient/id"]),
        (
            "messenger send, tagged",
            page.clone(),
            fixed("messenger_send_request_human_agent.json"),
            "/message_id",
            &["/recipient/id", "/tag"],
        ),
        (
            "sender action",
            page.clone(),
            fixed("messenger_sender_action_request.json"),
            "/recipient_id",
            &["/recipient/id", "/sender_action"],
        ),
        (
            "whatsapp send",
            number.clone(),
            fixed("whatsapp_send_request_text.json"),
            "/messages/0/id",
            &["/to", "/text/body"],
        ),
        ("whatsapp read", number.clone(), fixed("whatsapp_mark_read_request.json"), "/success", &["/message_id"]),
        (
            "take thread",
            at("102938475610293", &page_token, "take_thread_control"),
            json!({"recipient": {"id": "7392015648120394"}, "metadata": "sb"}),
            "/success",
            &["/recipient/id"],
        ),
        (
            "new template",
            at("112233445566778", &waba_token, "message_templates"),
            json!({"name": "aviso", "language": "pt_BR", "category": "UTILITY",
                "components": [{"type": "BODY", "text": "Olá {{1}}", "example": {"body_text": [["Ana"]]}}]}),
            "/id",
            &["/name", "/language", "/category"],
        ),
    ];
    let mut tried = 0;
    let mut wrong = Vec::new();
    for (name, path, original, names, needed) in cases {
        let mut bodies = vec![("as it is".to_string(), original.clone())];
        bodies.extend(every_variant(&original, &odd_values()));
        for whole in [json!(null), json!([]), json!("text"), json!(7), json!({})] {
            bodies.push((format!("the body {whole}"), whole));
        }
        for (what, body) in bodies {
            tried += 1;
            let (status, answer) = f.send("POST", &path, Some(&body)).await;
            let error = &answer["error"];
            let lacks =
                needed.iter().any(|p| body.pointer(p).and_then(Value::as_str).is_none_or(|s| s.trim().is_empty()));
            let fine = match status {
                200 if lacks => false,
                200 => {
                    answer.pointer(names).is_some_and(|v| v.as_str().is_some_and(|s| !s.trim().is_empty()) || v == true)
                }
                400..=499 => {
                    error["message"].as_str().is_some_and(|m| !m.is_empty())
                        && error["type"].is_string()
                        && error["code"].is_i64()
                        && error["fbtrace_id"].is_string()
                }
                _ => false,
            };
            if !fine || (what == "as it is" && status != 200) {
                wrong.push(format!("{name} {what}: {status} {answer}"));
            }
        }
    }
    assert!(tried > 300, "only {tried} requests");
    assert!(wrong.is_empty(), "{} of {tried} answers are not Meta's:\n{}", wrong.len(), wrong.join("\n"));
}
