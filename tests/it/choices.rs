//! Replies with choices (`inbox::choices`): WhatsApp reply buttons or a
//! list, Messenger and Instagram quick replies, and the customer's tap
//! coming back as their answer.

use serde_json::{json, Value};

use crate::channels::PAGE_A;
use crate::common::{eventually, spawn_app, TestApp};
use crate::inbox::{acme, by_contact, conversations, PHONE};

const WA_ID: &str = "14155550123";
const PSID: &str = "7392015648120394";

fn code(r: &crate::common::Resp) -> (u16, &str) {
    (r.status, r.body["error"]["code"].as_str().unwrap_or(""))
}

/// The Graph sends to `account` the fake took, their bodies.
pub(crate) async fn sends(app: &TestApp, account: &str) -> Vec<Value> {
    let log = app.fake("GET", "/_fake/requests", json!({})).await;
    log["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|c| c["method"] == "POST" && c["path"] == format!("/{account}/messages"))
        .map(|c| c["body"].clone())
        .collect()
}

#[actix_web::test]
async fn an_agent_offers_choices_and_the_customers_tap_is_their_answer() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Têm mesa hoje?", "name": "Zé"}))
        .await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "Olá"})).await;
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let (wa, fb) = (
        by_contact(&convs, WA_ID)["id"].as_str().expect("id").to_string(),
        by_contact(&convs, PSID)["id"].as_str().expect("id").to_string(),
    );
    let post = |conv: &str, body: Value| {
        let (app, t, url) = (&app, ctx.admin.clone(), format!("/api/conversations/{conv}/messages"));
        async move { app.call("POST", &url, Some(&t), Some(body)).await }
    };

    // Refused before anything is stored.
    let eleven: Vec<String> = (1..=11).map(|i| format!("{i}h")).collect();
    for (conv, body, want) in [
        (&wa, json!({"text": "Que hora?", "choices": eleven}), (422, "invalid_choices")),
        (&wa, json!({"text": "Que hora?", "choices": []}), (422, "invalid_choices")),
        (&wa, json!({"text": "Que hora?", "choices": ["9h", "9H"]}), (422, "invalid_choices")),
        (&wa, json!({"text": "Que hora?", "choices": ["um título longo demais aqui"]}), (422, "invalid_choices")),
        (&wa, json!({"text": "Que hora?", "choices": ["9h"], "choices_button": ""}), (422, "invalid_choices")),
        (&wa, json!({"text": "x".repeat(1025), "choices": ["9h"]}), (422, "text_too_long")),
        (&wa, json!({"text": "Que hora?", "choices_button": "Horas"}), (422, "invalid_body")),
        (&wa, json!({"text": "Que hora?", "choices": ["9h"], "private": true}), (422, "invalid_body")),
        (
            &wa,
            json!({"template": {"name": "hello_world", "language": "en_US"}, "choices": ["9h"]}),
            (422, "invalid_body"),
        ),
    ] {
        let r = post(conv, body.clone()).await;
        assert_eq!(code(&r), want, "{body}: {:?}", r.body);
    }

    // WhatsApp: three as reply buttons, more as a list behind a button.
    let r = post(
        &wa,
        json!({"text": "Temos às 20h. Reservo?", "choices": ["Sim", "Não", "Outra hora"], "client_id": "c-1"}),
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(
        r.body["attachments"],
        json!([{"type": "choices", "url": null, "options": ["Sim", "Não", "Outra hora"], "button": null}])
    );
    let doc: Value =
        app.client.get(app.url("/api/openapi.json")).send().await.expect("openapi").json().await.expect("json");
    crate::openapi::conforms(&doc, "Message", &r.body);
    let again = post(
        &wa,
        json!({"text": "Temos às 20h. Reservo?", "choices": ["Sim", "Não", "Outra hora"], "client_id": "c-1"}),
    )
    .await;
    assert_eq!(again.body["id"], r.body["id"], "a retry is the same message");
    let other =
        post(&wa, json!({"text": "Temos às 20h. Reservo?", "choices": ["Sim", "Não"], "client_id": "c-1"})).await;
    assert_eq!(code(&other), (409, "client_id_reused"), "other choices are another message");
    let plain = post(&wa, json!({"text": "Temos às 20h. Reservo?", "client_id": "c-1"})).await;
    assert_eq!(code(&plain), (409, "client_id_reused"), "and so is none");
    let r = post(
        &wa,
        json!({"text": "Que hora prefere?", "choices": ["19h", "20h", "21h", "22h"], "choices_button": "Horas"}),
    )
    .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let r = post(&fb, json!({"text": "Quer reservar?", "choices": ["Sim", "Não"]})).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    eventually("the three sent", || async {
        let interactive = sends(&app, PHONE).await.iter().filter(|b| b["type"] == "interactive").count();
        let quick = sends(&app, PAGE_A).await.iter().filter(|b| b["message"]["quick_replies"].is_array()).count();
        interactive == 2 && quick == 1
    })
    .await;
    let wa_sends: Vec<Value> = sends(&app, PHONE).await.into_iter().filter(|b| b["type"] == "interactive").collect();
    assert_eq!(wa_sends[0]["interactive"]["type"], "button");
    assert_eq!(wa_sends[0]["interactive"]["body"]["text"], "Temos às 20h. Reservo?");
    assert_eq!(
        wa_sends[0]["interactive"]["action"]["buttons"][1],
        json!({"type": "reply", "reply": {"id": "choice-2", "title": "Não"}})
    );
    assert_eq!(
        (&wa_sends[1]["interactive"]["type"], &wa_sends[1]["interactive"]["action"]["button"]),
        (&json!("list"), &json!("Horas"))
    );
    assert_eq!(wa_sends[1]["interactive"]["action"]["sections"][0]["rows"].as_array().map(Vec::len), Some(4));
    let fb_send =
        sends(&app, PAGE_A).await.into_iter().find(|b| b["message"]["quick_replies"].is_array()).expect("sent");
    assert_eq!(fb_send["message"]["text"], "Quer reservar?");
    assert_eq!(
        fb_send["message"]["quick_replies"][0],
        json!({"content_type": "text", "title": "Sim", "payload": "choice-1"})
    );

    // The customer taps "Não": their answer, with the choice's id.
    let now = chrono::Utc::now().timestamp();
    let tap = json!({"object": "whatsapp_business_account", "entry": [{"id": "112233445566778", "changes": [{
        "field": "messages",
        "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15551234567", "phone_number_id": PHONE},
            "contacts": [{"profile": {"name": "Zé"}, "wa_id": WA_ID}],
            "messages": [{"from": WA_ID, "id": "wamid.TAP1", "timestamp": now.to_string(), "type": "interactive",
                "interactive": {"type": "button_reply", "button_reply": {"id": "choice-2", "title": "Não"}}}]}}]}]});
    assert_eq!(app.webhook(&serde_json::to_vec(&tap).expect("body")).await, 200);
    app.processed().await;
    let r = app.call("GET", &format!("/api/conversations/{wa}/messages?limit=200"), Some(&ctx.admin), None).await;
    let answer = r.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|m| m["direction"] == "in" && m["text"] == "Não")
        .cloned()
        .expect("the customer's answer");
    assert_eq!(answer["quick_reply_payload"], "choice-2", "{answer}");
}

/// A WhatsApp tap on the choice `title` (`choice-<n>`) by `WA_ID`.
fn tap(wamid: &str, n: usize, title: &str) -> Vec<u8> {
    let now = chrono::Utc::now().timestamp();
    serde_json::to_vec(&json!({"object": "whatsapp_business_account", "entry": [{"id": "112233445566778", "changes": [{
        "field": "messages",
        "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15551234567", "phone_number_id": PHONE},
            "contacts": [{"profile": {"name": "Zé"}, "wa_id": WA_ID}],
            "messages": [{"from": WA_ID, "id": wamid, "timestamp": now.to_string(), "type": "interactive",
                "interactive": {"type": "button_reply", "button_reply": {"id": format!("choice-{n}"), "title": title}}}]}}]}]}))
    .expect("body")
}

#[actix_web::test]
async fn a_greeting_offers_a_menu_and_routing_sorts_by_the_tap() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let phone = crate::inbox::channel_id(&app, &ctx.admin, PHONE).await;
    let made = app.call("POST", "/api/teams", Some(&ctx.admin), Some(json!({"name": "Suporte"}))).await;
    let support = made.body["id"].as_str().expect("id").to_string();
    let url = format!("/api/channels/{phone}");
    let eleven: Vec<String> = (1..=11).map(|i| format!("op {i}")).collect();
    for bad in [
        json!({"auto_reply": {"choices": eleven}}),
        json!({"auto_reply": {"choices": ["Vendas", "vendas"]}}),
        json!({"csat": {"choices": ["5 - ótimo"]}}),
        json!({"csat": {"choices": ["5", "⭐⭐⭐⭐⭐"]}}),
        json!({"routing": [{"contains": ["x"], "labels": ["x"], "reply_choices": ["Sim"]}]}),
        json!({"routing": [{"contains": ["x"], "reply": "Sim?", "reply_choices": eleven}]}),
    ] {
        let r = app.call("PATCH", &url, Some(&ctx.admin), Some(json!({"settings": bad}))).await;
        assert_eq!(code(&r), (422, "invalid_settings"), "{bad}: {:?}", r.body);
    }
    let settings = json!({"settings": {
        "auto_reply": {"enabled": true, "text": "Olá {{contact.first_name | cliente}}! Como podemos ajudar?", "choices": [" Vendas", "Suporte"]},
        "routing": [{"contains": ["suporte"], "team_id": support, "labels": ["suporte"], "on": "every_message"},
            {"contains": ["horário"], "reply": "Abrimos às 9h. Quer marcar?", "reply_choices": ["Sim", "Não"], "on": "every_message"}]}});
    let r = app.call("PATCH", &url, Some(&ctx.admin), Some(settings)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["settings"]["auto_reply"]["choices"], json!(["Vendas", "Suporte"]));

    // The customer writes: the greeting comes with its menu.
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Boa tarde", "name": "Zé Silva"}))
        .await;
    app.processed().await;
    eventually("the greeting sent with its menu", || async {
        sends(&app, PHONE).await.iter().any(|b| b["type"] == "interactive")
    })
    .await;
    let greeting = sends(&app, PHONE).await.into_iter().find(|b| b["type"] == "interactive").expect("sent");
    assert_eq!(greeting["interactive"]["body"]["text"], "Olá Zé! Como podemos ajudar?");
    assert_eq!(greeting["interactive"]["action"]["buttons"][1]["reply"]["title"], "Suporte");
    let conv = by_contact(&conversations(&app, &ctx.admin, "").await, WA_ID).clone();
    assert_eq!(conv["team_id"], Value::Null, "not sorted yet");

    // The tap sorts the conversation.
    assert_eq!(app.webhook(&tap("wamid.MENU1", 2, "Suporte")).await, 200);
    app.processed().await;
    let conv = by_contact(&conversations(&app, &ctx.admin, "").await, WA_ID).clone();
    assert_eq!((&conv["team_id"], &conv["labels"]), (&json!(support), &json!(["suporte"])), "{conv}");

    // A rule's reply offers its own choices.
    app.fake(
        "POST",
        "/_fake/inbound",
        json!({"to": PHONE, "from": WA_ID, "text": "Qual é o horário?", "name": "Zé Silva"}),
    )
    .await;
    app.processed().await;
    eventually("the rule's reply sent with its choices", || async {
        sends(&app, PHONE).await.iter().filter(|b| b["type"] == "interactive").count() == 2
    })
    .await;
    let answer = sends(&app, PHONE).await.into_iter().filter(|b| b["type"] == "interactive").nth(1).expect("sent");
    assert_eq!(answer["interactive"]["body"]["text"], "Abrimos às 9h. Quer marcar?");
    assert_eq!(answer["interactive"]["action"]["buttons"][0]["reply"]["title"], "Sim");

    // Taken away with [].
    let r = app.call("PATCH", &url, Some(&ctx.admin), Some(json!({"settings": {"auto_reply": {"choices": []}}}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.body["settings"]["auto_reply"].get("choices").is_none(), "{:?}", r.body);
}

/// A WhatsApp tap on row `title` (`choice-<n>`) of a list, by `WA_ID`.
fn list_tap(wamid: &str, n: usize, title: &str) -> Vec<u8> {
    let mut body: Value = serde_json::from_slice(&tap(wamid, n, title)).expect("json");
    let message = &mut body["entry"][0]["changes"][0]["value"]["messages"][0];
    message["interactive"] = json!({"type": "list_reply", "list_reply": {"id": format!("choice-{n}"), "title": title}});
    serde_json::to_vec(&body).expect("body")
}

#[actix_web::test]
async fn a_survey_offers_its_ratings_and_a_tap_rates() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let phone = crate::inbox::channel_id(&app, &ctx.admin, PHONE).await;
    let ratings = ["5 ⭐⭐⭐⭐⭐", "4 ⭐⭐⭐⭐", "3 ⭐⭐⭐", "2 ⭐⭐", "1 ⭐"];
    let survey =
        json!({"settings": {"csat": {"enabled": true, "text": "Como correu? Toque numa nota.", "choices": ratings}}});
    let r = app.call("PATCH", &format!("/api/channels/{phone}"), Some(&ctx.admin), Some(survey)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["settings"]["csat"]["choices"], json!(ratings));

    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Chegou, obrigado", "name": "Zé"}))
        .await;
    app.processed().await;
    let conv = by_contact(&conversations(&app, &ctx.admin, "").await, WA_ID)["id"].as_str().expect("id").to_string();
    let r = app
        .call("PATCH", &format!("/api/conversations/{conv}"), Some(&ctx.admin), Some(json!({"status": "resolved"})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    eventually("the survey sent as a list", || async {
        sends(&app, PHONE).await.iter().any(|b| b["type"] == "interactive")
    })
    .await;
    let sent = sends(&app, PHONE).await.into_iter().find(|b| b["type"] == "interactive").expect("sent");
    assert_eq!(
        (&sent["interactive"]["type"], &sent["interactive"]["body"]["text"]),
        (&json!("list"), &json!("Como correu? Toque numa nota."))
    );
    let rows = sent["interactive"]["action"]["sections"][0]["rows"].as_array().cloned().unwrap_or_default();
    let titles: Vec<&str> = rows.iter().filter_map(|r| r["title"].as_str()).collect();
    assert_eq!(titles, ratings.to_vec());

    // The customer taps "4 ⭐⭐⭐⭐": rated 4, and the conversation stays resolved.
    assert_eq!(app.webhook(&list_tap("wamid.RATE1", 2, "4 ⭐⭐⭐⭐")).await, 200);
    app.processed().await;
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.csat_surveys WHERE conversation_id = {conv} AND rating = 4 AND comment IS NULL"
        )),
        1
    );
    let c = app.call("GET", &format!("/api/conversations/{conv}"), Some(&ctx.admin), None).await.body;
    assert_eq!(c["status"], "resolved", "{c}");
}
