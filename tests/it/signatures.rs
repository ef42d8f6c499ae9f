//! Replies signed by their agent (`inbox::messages`): a member's signature
//! in a tenant (`PATCH /api/me`), a channel's `sign_replies`, and a reply's
//! own `sign`.

use serde_json::{json, Value};

use crate::channels::PAGE_A;
use crate::common::{eventually, spawn_app, TestApp};
use crate::inbox::{acme, agent_al, send_file, PHONE};
use crate::scheduled::{due_now, ended, give_the_page, sent_texts, two_customers};

fn code(r: &crate::common::Resp) -> (u16, &str) {
    (r.status, r.body["error"]["code"].as_str().unwrap_or(""))
}

async fn reply(app: &TestApp, t: &str, conv: &str, body: Value) -> crate::common::Resp {
    app.call("POST", &format!("/api/conversations/{conv}/messages"), Some(t), Some(body)).await
}

async fn me(app: &TestApp, t: &str, change: Value) -> crate::common::Resp {
    app.call("PATCH", "/api/me", Some(t), Some(change)).await
}

#[actix_web::test]
async fn replies_end_with_their_agents_signature_where_the_channel_or_the_reply_says() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let admin = ctx.admin.clone();
    let (wa, page) = two_customers(&app, &admin).await;

    for (change, want) in [
        (json!({"signature": "x".repeat(201)}), (422, "invalid_signature")),
        (json!({"signature": "Ann\u{7}"}), (422, "invalid_signature")),
        (json!({"signature": 7}), (422, "invalid_body")),
    ] {
        let r = me(&app, &admin, change.clone()).await;
        assert_eq!(code(&r), want, "{change}: {:?}", r.body);
    }
    let r = me(&app, &admin, json!({"signature": "  Ann · Acme support 🌱\r\nWe answer 9–18h "})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let signature = "Ann · Acme support 🌱\nWe answer 9–18h";
    assert_eq!(r.body["signature"], signature);
    let r = app.call("GET", "/api/me", Some(&admin), None).await;
    assert_eq!(r.body["signature"], signature);

    // A channel that does not sign: a reply is as written, unless it asks.
    let r = reply(&app, &admin, &wa, json!({"text": "Chega amanhã."})).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["text"], "Chega amanhã.");
    let r = reply(&app, &admin, &wa, json!({"text": "Qualquer coisa, diga.  \n", "sign": true})).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["text"], format!("Qualquer coisa, diga.\n\n{signature}"));

    // The Page signs its agents' replies.
    let channel = app.call("GET", &format!("/api/conversations/{page}"), Some(&admin), None).await.body["channel_id"]
        .as_str()
        .expect("channel")
        .to_string();
    // Written before the Page signed: a retry after is the same request.
    let r = reply(&app, &admin, &page, json!({"text": "Um momento.", "client_id": "u-1"})).await;
    assert_eq!((r.status, &r.body["text"]), (202, &json!("Um momento.")), "{:?}", r.body);
    let unsigned = r.body["id"].clone();
    let on = json!({"settings": {"sign_replies": true}});
    let r = app.call("PATCH", &format!("/api/channels/{channel}"), Some(&admin), Some(on)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["settings"]["sign_replies"], true);
    let signed = format!("Olá! Em que posso ajudar?\n\n{signature}");
    let r = reply(&app, &admin, &page, json!({"text": "Olá! Em que posso ajudar?", "client_id": "s-1"})).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["text"], signed);
    let first = r.body["id"].clone();
    // A retry is the same message; the same client_id unsigned is another.
    let r = reply(&app, &admin, &page, json!({"text": "Olá! Em que posso ajudar?", "client_id": "s-1"})).await;
    assert_eq!((r.status, &r.body["id"]), (202, &first), "{:?}", r.body);
    let r = reply(&app, &admin, &page, json!({"text": "Olá! Em que posso ajudar?", "client_id": "s-1", "sign": false}))
        .await;
    assert_eq!(code(&r), (409, "client_id_reused"));
    let r = reply(&app, &admin, &page, json!({"text": "Um momento.", "client_id": "u-1"})).await;
    assert_eq!((r.status, &r.body["id"], &r.body["text"]), (202, &unsigned, &json!("Um momento.")), "{:?}", r.body);
    // A retry that crosses a change of signature is the same request too:
    // the agent wrote the same.
    assert_eq!(me(&app, &admin, json!({"signature": "Ann, Acme"})).await.status, 200);
    let r = reply(&app, &admin, &page, json!({"text": "Olá! Em que posso ajudar?", "client_id": "s-1"})).await;
    assert_eq!((r.status, &r.body["id"], &r.body["text"]), (202, &first, &json!(signed)), "{:?}", r.body);
    let r = reply(&app, &admin, &page, json!({"text": "Olá! Em que posso ajudar?", "client_id": "s-1", "sign": false}))
        .await;
    assert_eq!(code(&r), (409, "client_id_reused"), "still not unsigned");
    let r = reply(&app, &admin, &page, json!({"text": "Olá!", "client_id": "s-1"})).await;
    assert_eq!(code(&r), (409, "client_id_reused"), "nor another text");
    assert_eq!(me(&app, &admin, json!({"signature": signature})).await.status, 200);
    let r = reply(&app, &admin, &page, json!({"text": "👍", "sign": false})).await;
    assert_eq!(r.body["text"], "👍");
    // The signature counts towards the platform's limit, and says so.
    let room = 2000 - signature.chars().count() - 2;
    let r = reply(&app, &admin, &page, json!({"text": "é".repeat(room + 1)})).await;
    assert_eq!(code(&r), (422, "text_too_long"));
    assert!(r.body["error"]["message"].as_str().is_some_and(|m| m.contains("signature")), "{:?}", r.body);
    let r = reply(&app, &admin, &page, json!({"text": "é".repeat(room)})).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    // Choices are signed as their text; notes and templates never are.
    let r = reply(&app, &admin, &page, json!({"text": "Gostou?", "choices": ["Sim", "Não"]})).await;
    assert_eq!(r.body["text"], format!("Gostou?\n\n{signature}"));
    let r = reply(&app, &admin, &page, json!({"text": "cliente antigo", "private": true})).await;
    assert_eq!((r.status, &r.body["text"]), (201, &json!("cliente antigo")));
    let r = reply(&app, &admin, &page, json!({"text": "cliente antigo", "private": true, "sign": true})).await;
    assert_eq!(code(&r), (422, "invalid_body"));
    let template = json!({"template": {"name": "hello_world", "language": "en_US"}, "sign": true});
    assert_eq!(code(&reply(&app, &admin, &wa, template).await), (422, "invalid_body"));

    // What the customer got is what is stored.
    let on_whatsapp = format!("Qualquer coisa, diga.\n\n{signature}");
    eventually("the replies went", || async {
        let (page_texts, wa_texts) = (sent_texts(&app, PAGE_A).await, sent_texts(&app, PHONE).await);
        page_texts.contains(&signed) && page_texts.iter().any(|t| t == "👍") && wa_texts.contains(&on_whatsapp)
    })
    .await;

    // A WhatsApp caption is signed when asked; a file alone is not.
    let png: Vec<u8> = [&b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"[..], &[7u8; 64][..]].concat();
    let file = Some(("recibo.png", "image/png", &png[..]));
    let r = send_file(&app, &admin, &wa, file, &[("text", "O recibo"), ("sign", "true")]).await;
    assert_eq!((r.status, &r.body["text"]), (202, &json!(format!("O recibo\n\n{signature}"))), "{:?}", r.body);
    let r = send_file(&app, &admin, &wa, file, &[("sign", "true")]).await;
    assert_eq!((r.status, &r.body["text"]), (202, &Value::Null), "{:?}", r.body);
    let r = send_file(&app, &admin, &wa, file, &[("text", "O recibo"), ("sign", "yes")]).await;
    assert_eq!(code(&r), (422, "invalid_body"));

    // A colleague without a signature signs with their name; one with
    // neither sends as written. A signature is one tenant's: taken away, the
    // name signs again.
    let (al, al_token) = agent_al(&app, &admin).await;
    give_the_page(&app, &admin, &al).await;
    let r = reply(&app, &al_token, &page, json!({"text": "Eu vejo isso."})).await;
    assert_eq!((r.status, &r.body["text"]), (202, &json!("Eu vejo isso.")), "{:?}", r.body);
    assert_eq!(me(&app, &al_token, json!({"name": "Al Rivera"})).await.status, 200);
    let r = reply(&app, &al_token, &page, json!({"text": "Já está."})).await;
    assert_eq!(r.body["text"], "Já está.\n\n— Al Rivera");
    let r = me(&app, &admin, json!({"signature": null})).await;
    assert_eq!((r.status, &r.body["signature"]), (200, &Value::Null));
    assert_eq!(me(&app, &admin, json!({"name": "Ann Lee"})).await.status, 200);
    let r = reply(&app, &admin, &page, json!({"text": "Até logo"})).await;
    assert_eq!(r.body["text"], "Até logo\n\n— Ann Lee");

    // A scheduled reply is signed as it goes.
    let at = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let r = app
        .call(
            "POST",
            &format!("/api/conversations/{page}/scheduled-messages"),
            Some(&al_token),
            Some(json!({"text": "Bom dia!", "send_at": at})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    due_now(&app, &id);
    let done = ended(&app, &al_token, &id).await;
    assert_eq!(done["status"], "sent", "{done:?}");
    let message = done["message_id"].as_str().expect("message");
    let r = app.call("GET", &format!("/api/conversations/{page}/messages?limit=200"), Some(&al_token), None).await;
    let sent = r.body["items"].as_array().expect("items").iter().find(|m| m["id"] == message).cloned();
    assert_eq!(sent.map(|m| m["text"].clone()), Some(json!("Bom dia!\n\n— Al Rivera")));
    // One may say otherwise, and change its mind while it waits.
    let r = app
        .call(
            "POST",
            &format!("/api/conversations/{page}/scheduled-messages"),
            Some(&al_token),
            Some(json!({"text": "Boa noite!", "send_at": at, "sign": true})),
        )
        .await;
    assert_eq!((r.status, &r.body["sign"]), (201, &json!(true)), "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    let url = format!("/api/scheduled-messages/{id}");
    let r = app.call("PATCH", &url, Some(&al_token), Some(json!({"sign": false}))).await;
    assert_eq!((r.status, &r.body["sign"]), (200, &json!(false)), "{:?}", r.body);
    due_now(&app, &id);
    let done = ended(&app, &al_token, &id).await;
    let message = done["message_id"].as_str().expect("sent");
    let r = app.call("GET", &format!("/api/conversations/{page}/messages?limit=200"), Some(&al_token), None).await;
    let sent = r.body["items"].as_array().expect("items").iter().find(|m| m["id"] == message).cloned();
    assert_eq!(sent.map(|m| m["text"].clone()), Some(json!("Boa noite!")));

    // One that could not go signed is refused while its author is there to
    // shorten it, written or changed; unsigned it fits.
    let most = switchboard::inbox::messages::max_text_chars(switchboard::channels::Platform::Facebook);
    let long = "ü".repeat(most - 5);
    let path = format!("/api/conversations/{page}/scheduled-messages");
    let r = app.call("POST", &path, Some(&al_token), Some(json!({"text": long, "send_at": at}))).await;
    assert_eq!(code(&r), (422, "text_too_long"), "{:?}", r.body);
    assert!(r.body["error"]["message"].as_str().is_some_and(|m| m.contains("with the signature")), "{:?}", r.body);
    let body = json!({"text": long, "send_at": at, "sign": false});
    let r = app.call("POST", &path, Some(&al_token), Some(body)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let url = format!("/api/scheduled-messages/{}", r.body["id"].as_str().expect("id"));
    let r = app.call("PATCH", &url, Some(&al_token), Some(json!({"sign": null}))).await;
    assert_eq!(code(&r), (422, "text_too_long"), "{:?}", r.body);
    let r = app.call("GET", &url, Some(&al_token), None).await;
    assert_eq!((&r.body["sign"], &r.body["status"]), (&json!(false), &json!("scheduled")), "unchanged: {:?}", r.body);
}
