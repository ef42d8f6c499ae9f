//! Replies written now and sent later (`inbox::scheduled`): refused when
//! they could not go, sent at their time and not before, changed and
//! cancelled by whom may, stopped by the customer's answer, failed with a
//! reason when a reply could no longer go then.

use serde_json::{json, Value};
use std::time::Duration;

use crate::channels::PAGE_A;
use crate::common::{eventually, spawn_app, TestApp};
use crate::inbox::{acme, agent_al, by_contact, conversations, PHONE};
use crate::realtime::{until, ws};

const WA_ID: &str = "14155550123";
const PSID: &str = "7392015648120394";

fn code(r: &crate::common::Resp) -> (u16, &str) {
    (r.status, r.body["error"]["code"].as_str().unwrap_or(""))
}

fn in_secs(s: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(s)).to_rfc3339()
}

/// The texts the fake took for `account`.
pub(crate) async fn sent_texts(app: &TestApp, account: &str) -> Vec<String> {
    crate::choices::sends(app, account)
        .await
        .iter()
        .filter_map(|b| b["text"]["body"].as_str().or(b["message"]["text"].as_str()).map(str::to_string))
        .collect()
}

async fn get(app: &TestApp, t: &str, id: &str) -> Value {
    let r = app.call("GET", &format!("/api/scheduled-messages/{id}"), Some(t), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

/// Makes scheduled message `id` due now, as time passing would, without
/// changing it (a change is what `cancel_if_replied` counts from).
pub(crate) fn due_now(app: &TestApp, id: &str) {
    app.exec(&format!("UPDATE tenant_acme.scheduled_messages SET send_at = now() WHERE id = {id}"));
    app.exec(&format!(
        "UPDATE public.send_queue SET next_attempt_at = now() WHERE scheduled_message_id = {id} AND status = 'pending'"
    ));
}

/// When scheduled message `id` goes, as the API says it.
async fn goes_at(app: &TestApp, t: &str, id: &str) -> String {
    get(app, t, id).await["send_at"].as_str().expect("send_at").to_string()
}

pub(crate) async fn ended(app: &TestApp, t: &str, id: &str) -> Value {
    eventually("the scheduled message ended", || async { get(app, t, id).await["status"] != "scheduled" }).await;
    get(app, t, id).await
}

/// Makes `member` an agent of the Page.
pub(crate) async fn give_the_page(app: &TestApp, admin: &str, member: &Value) {
    let page = by_contact(&conversations(app, admin, "").await, PSID)["channel_id"].as_str().expect("c").to_string();
    let members = json!({"user_ids": [member["user_id"]]});
    let r = app.call("PUT", &format!("/api/channels/{page}/members"), Some(admin), Some(members)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

/// The customers of WhatsApp and the Page write in; their conversations.
pub(crate) async fn two_customers(app: &TestApp, admin: &str) -> (String, String) {
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "A encomenda chega quando?"})).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "Olá 👋"})).await;
    app.processed().await;
    let convs = conversations(app, admin, "").await;
    (
        by_contact(&convs, WA_ID)["id"].as_str().expect("id").to_string(),
        by_contact(&convs, PSID)["id"].as_str().expect("id").to_string(),
    )
}

#[actix_web::test]
async fn a_scheduled_reply_goes_at_its_time_and_not_before() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (wa, fb) = two_customers(&app, &ctx.admin).await;
    let schedule = |conv: &str, body: Value| {
        let (app, t, url) = (&app, ctx.admin.clone(), format!("/api/conversations/{conv}/scheduled-messages"));
        async move { app.call("POST", &url, Some(&t), Some(body)).await }
    };

    // Refused before anything is stored: what could not go.
    for (conv, body, want) in [
        (&wa, json!({"text": "  ", "send_at": in_secs(60)}), (422, "empty_text")),
        (&wa, json!({"text": "x".repeat(4097), "send_at": in_secs(60)}), (422, "text_too_long")),
        (&fb, json!({"text": "x".repeat(2001), "send_at": in_secs(60)}), (422, "text_too_long")),
        (&wa, json!({"text": "Bom dia", "send_at": in_secs(-300)}), (422, "invalid_send_at")),
        // The window closes 24 hours after the customer wrote.
        (&wa, json!({"text": "Bom dia", "send_at": in_secs(25 * 3600)}), (422, "outside_window")),
        (&fb, json!({"text": "Bom dia", "send_at": in_secs(25 * 3600)}), (422, "outside_window")),
        (&wa, json!({"text": "Bom dia"}), (422, "invalid_body")),
        (&wa, json!({"text": "Bom dia", "send_at": "amanhã"}), (422, "invalid_body")),
        (&wa, json!({"text": "Bom dia", "send_at": in_secs(60), "private": true}), (422, "invalid_body")),
        (&wa, json!({"text": "Bom dia", "send_at": in_secs(60), "client_id": ""}), (422, "invalid_client_id")),
        (&"999999".to_string(), json!({"text": "Bom dia", "send_at": in_secs(60)}), (404, "not_found")),
    ] {
        let r = schedule(conv, body.clone()).await;
        assert_eq!(code(&r), want, "{body}: {:?}", r.body);
    }
    let window = schedule(&wa, json!({"text": "Bom dia", "send_at": in_secs(25 * 3600)})).await;
    assert!(
        window.body["error"]["message"].as_str().is_some_and(|m| m.contains("reply window ends at")),
        "{:?}",
        window.body
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.scheduled_messages"), 0);

    let mut socket = ws(&app, "", Some(&ctx.admin), None).await.expect("socket");
    let text = "Já saiu do armazém — chega amanhã 📦";
    let r = schedule(&wa, json!({"text": text, "send_at": in_secs(5), "client_id": "later-1"})).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let made = r.body.clone();
    assert_eq!(
        (&made["status"], &made["cancel_if_replied"], &made["reason"]),
        (&json!("scheduled"), &json!(false), &Value::Null)
    );
    let doc: Value =
        app.client.get(app.url("/api/openapi.json")).send().await.expect("openapi").json().await.expect("json");
    crate::openapi::conforms(&doc, "ScheduledMessage", &made);
    let id = made["id"].as_str().expect("id").to_string();
    let frame = until(&mut socket, "scheduled_message.updated", Duration::from_secs(5)).await.expect("announced");
    assert_eq!((&frame["data"]["id"], &frame["data"]["status"]), (&made["id"], &json!("scheduled")));

    // The conversation shows when it goes, for the list's clock.
    let conv = app.call("GET", &format!("/api/conversations/{wa}"), Some(&ctx.admin), None).await.body;
    assert_eq!(conv["next_scheduled_at"], made["send_at"], "{conv}");
    crate::openapi::conforms(&doc, "Conversation", &conv);
    let ids = |convs: Vec<Value>| convs.iter().map(|c| c["id"].clone()).collect::<Vec<_>>();
    assert_eq!(ids(conversations(&app, &ctx.admin, "?scheduled=true").await), vec![json!(wa)]);
    assert!(!ids(conversations(&app, &ctx.admin, "?scheduled=false").await).contains(&json!(wa)));
    // A saved view keeps the filter, and the badges count by it.
    let view = json!({"name": "Agendadas", "filters": {"scheduled": "true"}});
    let r = app.call("POST", "/api/views", Some(&ctx.admin), Some(view)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let view_id = r.body["id"].as_str().expect("id").to_string();
    assert_eq!(ids(conversations(&app, &ctx.admin, &format!("?view={view_id}")).await), vec![json!(wa)]);
    let counts = app.call("GET", "/api/conversations/counts?scheduled=true", Some(&ctx.admin), None).await;
    assert_eq!(counts.body["all"], 1, "{:?}", counts.body);

    // A retry is the same; the same client_id for another text is not.
    let again = schedule(&wa, json!({"text": text, "send_at": in_secs(3), "client_id": "later-1"})).await;
    assert_eq!((again.status, &again.body["id"]), (200, &made["id"]));
    let other = schedule(&wa, json!({"text": "outra coisa", "send_at": in_secs(3), "client_id": "later-1"})).await;
    assert_eq!(code(&other), (409, "client_id_reused"));

    // Not sent, nor in the thread, before its time: past the longest an
    // idle sender sleeps, it is still waiting.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(!sent_texts(&app, PHONE).await.contains(&text.to_string()));
    let thread = app.call("GET", &format!("/api/conversations/{wa}/messages"), Some(&ctx.admin), None).await;
    assert!(thread.body["items"].as_array().expect("items").iter().all(|m| m["text"] != text));
    let listed = app.call("GET", &format!("/api/conversations/{wa}/scheduled-messages"), Some(&ctx.admin), None).await;
    assert_eq!(listed.body["items"].as_array().map(|a| a.len()), Some(1), "{:?}", listed.body);

    // At its time it is the admin's reply, sent.
    let done = ended(&app, &ctx.admin, &id).await;
    assert_eq!(done["status"], "sent", "{done}");
    assert!(done["finished_at"].is_string());
    let message_id = done["message_id"].as_str().expect("message id").to_string();
    eventually("sent to WhatsApp", || async { sent_texts(&app, PHONE).await.contains(&text.to_string()) }).await;
    let thread = app.call("GET", &format!("/api/conversations/{wa}/messages"), Some(&ctx.admin), None).await;
    let reply = thread.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|m| m["id"] == json!(message_id))
        .cloned()
        .expect("in the thread");
    assert_eq!((&reply["text"], &reply["sender"]["kind"]), (&json!(text), &json!("agent")));
    assert_eq!(reply["client_id"], json!(format!("scheduled-{id}")));
    let frame = until(&mut socket, "scheduled_message.updated", Duration::from_secs(5)).await.expect("sent, announced");
    assert_eq!(frame["data"]["status"], "sent");
    assert_eq!(sent_texts(&app, PHONE).await.iter().filter(|t| *t == text).count(), 1, "sent once");
    // Its job taken up again (an instance stopped mid-way): nothing more goes.
    app.exec(&format!(
        "UPDATE public.send_queue SET status = 'pending', next_attempt_at = now() WHERE scheduled_message_id = {id}"
    ));
    eventually("the job done again", || async {
        app.count(&format!(
            "SELECT count(*) AS n FROM public.send_queue WHERE scheduled_message_id = {id} AND status = 'pending'"
        )) == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sent_texts(&app, PHONE).await.iter().filter(|t| *t == text).count(), 1, "still sent once");
    assert_eq!(get(&app, &ctx.admin, &id).await["message_id"], json!(message_id));
    let conv = app.call("GET", &format!("/api/conversations/{wa}"), Some(&ctx.admin), None).await.body;
    assert_eq!(conv["next_scheduled_at"], Value::Null, "nothing waits");
    assert_eq!(conversations(&app, &ctx.admin, "?scheduled=true").await, Vec::<Value>::new());
    let r = app.call("GET", "/api/conversations?scheduled=maybe", Some(&ctx.admin), None).await;
    assert_eq!(code(&r), (400, "invalid_query"));

    // A sent one is finished.
    let r = app.call("POST", &format!("/api/scheduled-messages/{id}/cancel"), Some(&ctx.admin), None).await;
    assert_eq!(code(&r), (409, "scheduled_message_finished"));
    let r =
        app.call("PATCH", &format!("/api/scheduled-messages/{id}"), Some(&ctx.admin), Some(json!({"text": "x"}))).await;
    assert_eq!(code(&r), (409, "scheduled_message_finished"));
    let audit = app.call("GET", "/api/audit-log?limit=200", Some(&ctx.admin), None).await;
    let actions: Vec<&str> =
        audit.body["items"].as_array().expect("items").iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"scheduled_message.created"), "{actions:?}");
}

#[actix_web::test]
async fn scheduled_replies_are_changed_cancelled_or_stopped_as_asked() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (wa, fb) = two_customers(&app, &ctx.admin).await;
    let (al, al_t) = agent_al(&app, &ctx.admin).await;
    let schedule = |t: &str, conv: &str, body: Value| {
        let (app, t, url) = (&app, t.to_string(), format!("/api/conversations/{conv}/scheduled-messages"));
        async move { app.call("POST", &url, Some(&t), Some(body)).await }
    };
    let patch = |t: &str, id: &str, body: Value| {
        let (app, t, url) = (&app, t.to_string(), format!("/api/scheduled-messages/{id}"));
        async move { app.call("PATCH", &url, Some(&t), Some(body)).await }
    };
    let cancel = |t: &str, id: &str| {
        let (app, t, url) = (&app, t.to_string(), format!("/api/scheduled-messages/{id}/cancel"));
        async move { app.call("POST", &url, Some(&t), None).await }
    };

    // The admin's, on the Page: Al, of no channel, sees nothing of it.
    let r = schedule(&ctx.admin, &fb, json!({"text": "Ainda precisa de ajuda?", "send_at": in_secs(3600)})).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let admins = r.body["id"].as_str().expect("id").to_string();
    let r = app.call("GET", &format!("/api/scheduled-messages/{admins}"), Some(&al_t), None).await;
    assert_eq!(code(&r), (404, "not_found"));
    let r = schedule(&al_t, &fb, json!({"text": "Olá", "send_at": in_secs(3600)})).await;
    assert_eq!(code(&r), (404, "not_found"));

    // Al, given the Page, writes one; only Al changes it.
    give_the_page(&app, &ctx.admin, &al).await;
    let r = schedule(&al_t, &fb, json!({"text": "Já resolvemos?", "send_at": in_secs(3600)})).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let als = r.body["id"].as_str().expect("id").to_string();
    let r = patch(&ctx.admin, &als, json!({"text": "outra"})).await;
    assert_eq!(code(&r), (403, "not_your_scheduled_message"));
    let r = cancel(&al_t, &admins).await;
    assert_eq!(code(&r), (403, "not_your_scheduled_message"));
    // Al made a viewer (still of the Page) reads them and writes none.
    let role = |r: &str| json!({"role": r});
    let to = format!("/api/members/{}", al["user_id"].as_str().expect("id"));
    assert_eq!(app.call("PATCH", &to, Some(&ctx.admin), Some(role("viewer"))).await.status, 200);
    let al_t = crate::common::token(&app.login("al@acme.test", "al-password-1", "acme").await, "access_token");
    assert_eq!(get(&app, &al_t, &als).await["status"], "scheduled");
    let r = schedule(&al_t, &fb, json!({"text": "Olá", "send_at": in_secs(3600)})).await;
    assert_eq!(code(&r).0, 403, "{:?}", r.body);
    assert_eq!(code(&patch(&al_t, &als, json!({"text": "outra"})).await).0, 403);
    assert_eq!(code(&cancel(&al_t, &als).await).0, 403);
    assert_eq!(app.call("PATCH", &to, Some(&ctx.admin), Some(role("agent"))).await.status, 200);
    let al_t = crate::common::token(&app.login("al@acme.test", "al-password-1", "acme").await, "access_token");
    for (body, want) in [
        (json!({"text": ""}), (422, "empty_text")),
        (json!({"send_at": in_secs(-600)}), (422, "invalid_send_at")),
        (json!({"send_at": in_secs(30 * 3600)}), (422, "outside_window")),
        (json!({"status": "sent"}), (422, "invalid_body")),
    ] {
        let r = patch(&al_t, &als, body.clone()).await;
        assert_eq!(code(&r), want, "{body}: {:?}", r.body);
    }
    let r = patch(&al_t, &als, json!({"text": "Já está resolvido? 🙂", "send_at": in_secs(7200)})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["text"], "Já está resolvido? 🙂");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM public.send_queue WHERE scheduled_message_id = {als} AND status = 'pending'"
        )),
        1,
        "a moved one has one job waiting"
    );
    // An admin cancels anyone's; again is the same; a cancelled one stays.
    let r = cancel(&ctx.admin, &als).await;
    assert_eq!((r.status, &r.body["status"], &r.body["reason"]), (200, &json!("cancelled"), &json!("cancelled")));
    let r = cancel(&ctx.admin, &als).await;
    assert_eq!((r.status, &r.body["status"]), (200, &json!("cancelled")));
    let r = patch(&al_t, &als, json!({"text": "de novo"})).await;
    assert_eq!(code(&r), (409, "scheduled_message_finished"));
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM public.send_queue WHERE scheduled_message_id = {als} AND status = 'pending'"
        )),
        0,
        "a cancelled one's job is gone"
    );

    // Two waiting on WhatsApp; the customer answers; then both fall due.
    let r = schedule(
        &ctx.admin,
        &wa,
        json!({"text": "Conseguiu receber?", "send_at": in_secs(3600), "cancel_if_replied": true}),
    )
    .await;
    let asked = r.body["id"].as_str().expect("id").to_string();
    let r = schedule(&ctx.admin, &wa, json!({"text": "Lembrete: loja fecha às 19h", "send_at": in_secs(3600)})).await;
    let reminder = r.body["id"].as_str().expect("id").to_string();
    // With choices to tap: checked as a reply's, sent as WhatsApp buttons.
    let r = schedule(
        &ctx.admin,
        &wa,
        json!({"text": "Quer recolher na loja?", "choices": ["Sim", "sim"], "send_at": in_secs(3600)}),
    )
    .await;
    assert_eq!(code(&r), (422, "invalid_choices"));
    let r =
        schedule(&ctx.admin, &wa, json!({"text": "Quer?", "choices_button": "Ver", "send_at": in_secs(3600)})).await;
    assert_eq!(code(&r), (422, "invalid_choices"));
    let r = schedule(
        &ctx.admin,
        &wa,
        json!({"text": "Quer recolher na loja?", "choices": ["Sim", "Não"], "send_at": in_secs(3600)}),
    )
    .await;
    assert_eq!((r.status, &r.body["choices"]), (201, &json!(["Sim", "Não"])), "{:?}", r.body);
    let question = r.body["id"].as_str().expect("id").to_string();
    let conv = app.call("GET", &format!("/api/conversations/{wa}"), Some(&ctx.admin), None).await.body;
    let earliest = [&goes_at(&app, &ctx.admin, &asked).await, &goes_at(&app, &ctx.admin, &reminder).await]
        .into_iter()
        .min()
        .cloned();
    assert_eq!(conv["next_scheduled_at"].as_str().map(str::to_string), earliest, "{conv}");
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Recebi, obrigado!"})).await;
    app.processed().await;
    due_now(&app, &asked);
    due_now(&app, &reminder);
    let stopped = ended(&app, &ctx.admin, &asked).await;
    assert_eq!((&stopped["status"], &stopped["reason"]), (&json!("cancelled"), &json!("customer_replied")));
    assert_eq!(ended(&app, &ctx.admin, &reminder).await["status"], "sent");
    due_now(&app, &question);
    assert_eq!(ended(&app, &ctx.admin, &question).await["status"], "sent");
    eventually("the question sent with its buttons", || async {
        crate::choices::sends(&app, PHONE).await.iter().any(|b| {
            b["type"] == "interactive"
                && b["interactive"]["body"]["text"] == "Quer recolher na loja?"
                && b["interactive"]["action"]["buttons"][1]["reply"]["title"] == "Não"
        })
    })
    .await;
    eventually("the reminder sent", || async {
        sent_texts(&app, PHONE).await.contains(&"Lembrete: loja fecha às 19h".to_string())
    })
    .await;
    assert!(!sent_texts(&app, PHONE).await.contains(&"Conseguiu receber?".to_string()));

    let r = app
        .call("GET", &format!("/api/conversations/{wa}/scheduled-messages?status=cancelled"), Some(&ctx.admin), None)
        .await;
    let ids: Vec<&Value> = r.body["items"].as_array().expect("items").iter().map(|s| &s["id"]).collect();
    assert_eq!(ids, vec![&json!(asked)]);
    let r = app
        .call("GET", &format!("/api/conversations/{wa}/scheduled-messages?status=later"), Some(&ctx.admin), None)
        .await;
    assert_eq!(code(&r), (400, "invalid_status"));
}

#[actix_web::test]
async fn a_scheduled_reply_that_can_no_longer_go_fails_with_why() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (wa, fb) = two_customers(&app, &ctx.admin).await;
    let (al, al_t) = agent_al(&app, &ctx.admin).await;
    give_the_page(&app, &ctx.admin, &al).await;
    let schedule = |t: &str, conv: &str, text: &str| {
        let (app, t, url) = (&app, t.to_string(), format!("/api/conversations/{conv}/scheduled-messages"));
        let body = json!({"text": text, "send_at": in_secs(3600)});
        async move {
            let r = app.call("POST", &url, Some(&t), Some(body)).await;
            assert_eq!(r.status, 201, "{:?}", r.body);
            r.body["id"].as_str().expect("id").to_string()
        }
    };

    // Al's, and Al leaves the team: cancelled at once.
    let als = schedule(&al_t, &fb, "Até amanhã!").await;
    let r = app
        .call("DELETE", &format!("/api/members/{}", al["user_id"].as_str().expect("user")), Some(&ctx.admin), None)
        .await;
    assert!(r.status == 200 || r.status == 204, "{:?}", r.body);
    let gone = get(&app, &ctx.admin, &als).await;
    assert_eq!((&gone["status"], &gone["reason"]), (&json!("cancelled"), &json!("author_removed")), "{gone}");
    // Had Al's membership gone some other way, it would fail at its time.
    let orphan = schedule(&ctx.admin, &fb, "Até já!").await;
    app.exec(&format!(
        "UPDATE tenant_acme.scheduled_messages SET created_by = {} WHERE id = {orphan}",
        al["user_id"].as_str().expect("user")
    ));
    // The customer blocked by the team.
    let blocked = schedule(&ctx.admin, &wa, "Promoção!").await;
    let contact = by_contact(&conversations(&app, &ctx.admin, "").await, WA_ID)["contact"]["id"]
        .as_str()
        .expect("contact")
        .to_string();
    let r =
        app.call("PATCH", &format!("/api/contacts/{contact}"), Some(&ctx.admin), Some(json!({"blocked": true}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The window closed meanwhile (the customer wrote eight days ago).
    let late = schedule(&ctx.admin, &fb, "Olá de novo").await;
    app.exec(&format!(
        "UPDATE tenant_acme.conversations SET last_inbound_at = now() - interval '8 days' WHERE id = {fb}"
    ));

    for (id, reason) in [(&orphan, "author_not_member"), (&blocked, "contact_blocked"), (&late, "outside_window")] {
        due_now(&app, id);
        let done = ended(&app, &ctx.admin, id).await;
        assert_eq!(
            (&done["status"], &done["reason"], &done["message_id"]),
            (&json!("failed"), &json!(reason), &Value::Null)
        );
    }
    let texts = [sent_texts(&app, PHONE).await, sent_texts(&app, PAGE_A).await].concat();
    for t in ["Até amanhã!", "Até já!", "Promoção!", "Olá de novo"] {
        assert!(!texts.contains(&t.to_string()), "{t} was sent");
    }
}

/// A double click (or a retry without a `client_id`) schedules one
/// message: the same text by the same author for the same time, while the
/// first waits, is the first (200). Anything else is a message of its
/// own: another text, time or author, or the same once the first no
/// longer waits.
#[actix_web::test]
async fn the_same_scheduled_reply_twice_is_one() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let admin = ctx.admin.as_str();
    let (whatsapp, _) = two_customers(&app, admin).await;
    let path = format!("/api/conversations/{whatsapp}/scheduled-messages");
    let at = in_secs(3_600);
    let write = |text: &str, at: &str| {
        let (app, path) = (&app, path.clone());
        let body = json!({"text": text, "send_at": at});
        async move { app.call("POST", &path, Some(admin), Some(body)).await }
    };
    let answers = futures_util::future::join_all((0..5).map(|_| write("Chega amanhã 📦", &at))).await;
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 200, 201], "{:?}", answers.iter().map(|r| &r.body).collect::<Vec<_>>());
    let first = answers[0].body["id"].as_str().expect("id").to_string();
    assert!(answers.iter().all(|r| r.body["id"] == json!(first)), "one message");
    // Another text, or another time: another message.
    assert_eq!(write("Chega depois de amanhã", &at).await.status, 201);
    assert_eq!(write("Chega amanhã 📦", &in_secs(7_200)).await.status, 201);
    // Asked to cancel if the customer answers: another message too.
    let careful = json!({"text": "Chega amanhã 📦", "send_at": at, "cancel_if_replied": true});
    assert_eq!(app.call("POST", &path, Some(admin), Some(careful)).await.status, 201);
    let waiting = app.count(&format!(
        "SELECT count(*) AS n FROM tenant_acme.scheduled_messages WHERE conversation_id = {whatsapp} AND status = 'scheduled'"
    ));
    assert_eq!(waiting, 4);
    // Cancelled, the first no longer waits: the same again is new.
    let cancelled = app.call("POST", &format!("/api/scheduled-messages/{first}/cancel"), Some(admin), None).await;
    assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
    let again = write("Chega amanhã 📦", &at).await;
    assert_eq!(again.status, 201, "{:?}", again.body);
    assert_ne!(again.body["id"], json!(first));
}

/// A scheduled message being sent as a cancel takes its conversation
/// and then it: the send takes the conversation first too, so one waits
/// for the other.
#[actix_web::test]
async fn a_scheduled_send_and_a_cancel_at_once_take_turns() {
    // The cancel held by hand: the conversation, then the message. The
    // send took the message first and then wrote to the conversation: a
    // deadlock, and the send's job tried again.
    use crate::common::transaction_held_until_waited;
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (wa, _) = two_customers(&app, &ctx.admin).await;
    let body = json!({"text": "Até já", "send_at": in_secs(3600)});
    let r =
        app.call("POST", &format!("/api/conversations/{wa}/scheduled-messages"), Some(&ctx.admin), Some(body)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    let begin = format!("BEGIN; SELECT id FROM tenant_acme.conversations WHERE id = {wa} FOR NO KEY UPDATE");
    let then = format!("SELECT id FROM tenant_acme.scheduled_messages WHERE id = {id} FOR UPDATE");
    let (begun, held) = transaction_held_until_waited(&app.db.url, begin, Some(then));
    begun.recv().expect("begun");
    due_now(&app, &id);
    // The sender runs on this test's runtime: awaited, not blocked on.
    while !held.is_finished() {
        actix_web::rt::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (waited, went) = held.join().expect("the cancel's thread");
    assert_eq!(went, Ok(()), "the cancel went through");
    assert!(waited, "the send waited for the cancel");
    assert_eq!(ended(&app, &ctx.admin, &id).await["status"], "sent");
    let tried = format!("SELECT max(attempts)::bigint AS n FROM public.send_queue WHERE scheduled_message_id = {id}");
    assert_eq!(app.count(&tried), 1, "sent at the first try");
}

/// A scheduled message cancelled or changed as a removal (or a change of
/// its conversation) takes the conversation and then the scheduled
/// message: both take the conversation first, so one waits for the other.
/// The cancel took the scheduled message first, then waited for the
/// conversation: a deadlock (503).
#[actix_web::test]
async fn a_cancel_and_a_change_of_its_conversation_at_once_take_turns() {
    use crate::common::transaction_held_until_waited;
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (wa, fb) = two_customers(&app, &ctx.admin).await;
    for (n, conv) in [wa, fb].into_iter().enumerate() {
        let body = json!({"text": "Até já", "send_at": in_secs(3600)});
        let r = app
            .call("POST", &format!("/api/conversations/{conv}/scheduled-messages"), Some(&ctx.admin), Some(body))
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        let id = r.body["id"].as_str().expect("id").to_string();
        let begin = format!("BEGIN; SELECT id FROM tenant_acme.conversations WHERE id = {conv} FOR UPDATE");
        let then = format!("SELECT id FROM tenant_acme.scheduled_messages WHERE id = {id} FOR UPDATE");
        let (begun, held) = transaction_held_until_waited(&app.db.url, begin, Some(then));
        begun.recv().expect("begun");
        let r = match n {
            0 => app.call("POST", &format!("/api/scheduled-messages/{id}/cancel"), Some(&ctx.admin), None).await,
            _ => {
                let later = json!({"send_at": in_secs(7200)});
                app.call("PATCH", &format!("/api/scheduled-messages/{id}"), Some(&ctx.admin), Some(later)).await
            }
        };
        let (waited, went) = held.join().expect("the change's thread");
        assert_eq!(went, Ok(()), "the change went through");
        assert!(waited, "the request waited for the change");
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
}

/// A member's removal cancels what they scheduled in the conversations it
/// took at its start (in id order, with those they answer) and writes to
/// no other. One they scheduled elsewhere while it went (a request of
/// theirs begun before it; here one made his by hand, committed while the
/// removal waited for Al's saved view) is left, and fails when due. Cancelled by the removal, out of its order, it
/// deadlocked with a bulk change holding that conversation and waiting for
/// one the removal held (503).
#[actix_web::test]
async fn a_removal_writes_only_to_the_conversations_it_took_first() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (al, al_t) = agent_al(&app, &ctx.admin).await;
    for (from, text) in [(PSID, "Olá 👋"), ("7392015648120395", "Oi, alguém?")] {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": text})).await;
        app.processed().await;
    }
    give_the_page(&app, &ctx.admin, &al).await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let conv_of = |psid: &str| by_contact(&convs, psid)["id"].as_str().expect("id").to_string();
    let (elsewhere, taken) = (conv_of(PSID), conv_of("7392015648120395"));
    let schedule = |conv: &str| {
        let (app, t, url) = (&app, al_t.clone(), format!("/api/conversations/{conv}/scheduled-messages"));
        async move {
            let r = app.call("POST", &url, Some(&t), Some(json!({"text": "Até já", "send_at": in_secs(3600)}))).await;
            assert_eq!(r.status, 201, "{:?}", r.body);
            r.body["id"].as_str().expect("id").to_string()
        }
    };
    let waits = schedule(&taken).await;
    let late = schedule(&elsewhere).await;
    // Not Al's while the removal looks for his (Ann's, the owner).
    let owner = "(SELECT id FROM public.users WHERE email = 'ann@acme.test')";
    app.exec(&format!("UPDATE tenant_acme.scheduled_messages SET created_by = {owner} WHERE id = {late}"));
    let r = app.call("POST", "/api/views", Some(&al_t), Some(json!({"name": "Mine", "filters": {}}))).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let view = r.body["id"].as_str().expect("id").to_string();

    let url = app.db.url.clone();
    let (begun_tx, begun) = std::sync::mpsc::channel();
    let (elsewhere_t, taken_t, late_t) = (elsewhere.clone(), taken.clone(), late.clone());
    let al_id = al["user_id"].as_str().expect("user").to_string();
    let others = std::thread::spawn(move || {
        let connect = || diesel::PgConnection::establish(&url).expect("connect");
        let (mut author, mut bulk, mut watcher) = (connect(), connect(), connect());
        let waiting = crate::common::a_lock_waited_for;
        let author_sql = format!(
            "BEGIN; UPDATE tenant_acme.scheduled_messages SET created_by = {al_id} WHERE id = {late_t}; \
             SELECT id FROM tenant_acme.saved_views WHERE id = {view} FOR UPDATE"
        );
        author.batch_execute(&author_sql).expect("the author's request");
        begun_tx.send(()).expect("told");
        // The removal, past its locks, waits for Al's saved view; a bulk
        // change takes the other conversation meanwhile, and the author's
        // request commits.
        assert!(waiting(&mut watcher, Duration::from_secs(5)), "the removal waited");
        let lock = |id: &str| format!("SELECT id FROM tenant_acme.conversations WHERE id = {id} FOR NO KEY UPDATE");
        bulk.batch_execute(&format!("BEGIN; {}", lock(&elsewhere_t))).expect("the bulk change began");
        author.batch_execute("COMMIT").expect("the author's request done");
        waiting(&mut watcher, Duration::from_secs(1));
        bulk.batch_execute(&format!("{}; COMMIT", lock(&taken_t))).map_err(|e| e.to_string())
    });
    begun.recv().expect("begun");
    let r = app
        .call("DELETE", &format!("/api/members/{}", al["user_id"].as_str().expect("user")), Some(&ctx.admin), None)
        .await;
    let went = others.join().expect("the others' thread");
    assert_eq!(went, Ok(()), "the bulk change went through");
    assert_eq!(r.status, 204, "{:?}", r.body);
    let cancelled = get(&app, &ctx.admin, &waits).await;
    assert_eq!((&cancelled["status"], &cancelled["reason"]), (&json!("cancelled"), &json!("author_removed")));
    assert_eq!(get(&app, &ctx.admin, &late).await["status"], "scheduled", "left to its time");
    due_now(&app, &late);
    let failed = ended(&app, &ctx.admin, &late).await;
    assert_eq!((&failed["status"], &failed["reason"]), (&json!("failed"), &json!("author_not_member")));
}
