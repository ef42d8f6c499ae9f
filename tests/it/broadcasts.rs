//! Broadcasts (`inbox::broadcasts`): one WhatsApp template to many
//! customers, each filled in for them, paced by the sender.

use serde_json::{json, Value};

use crate::channels::PAGE_A;
use crate::common::{eventually, spawn_app, TestApp};
use crate::inbox::{acme, agent_al, by_contact, channel_id, conversations, PHONE};

const WABA: &str = "112233445566778";
const RUI: &str = "351911111111";
const ZOE: &str = "351922222222";
const BLOCKED: &str = "351933333333";
const NEW: &str = "351944444444";
const WA_ID: &str = "14155550123";

fn code(r: &crate::common::Resp) -> (u16, &str) {
    (r.status, r.body["error"]["code"].as_str().unwrap_or(""))
}

async fn create(app: &TestApp, t: &str, body: Value) -> crate::common::Resp {
    app.call("POST", "/api/broadcasts", Some(t), Some(body)).await
}

async fn get(app: &TestApp, t: &str, id: &str) -> Value {
    let r = app.call("GET", &format!("/api/broadcasts/{id}"), Some(t), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

/// Every template send the fake took, to whom and with which texts.
async fn template_sends(app: &TestApp, name: &str) -> Vec<(String, Vec<String>)> {
    let log = app.fake("GET", "/_fake/requests", json!({})).await;
    log["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|c| c["path"] == format!("/{PHONE}/messages") && c["body"]["template"]["name"] == name)
        .map(|c| {
            let texts = c["body"]["template"]["components"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|p| p["parameters"].as_array().cloned().unwrap_or_default())
                .filter_map(|p| p["text"].as_str().map(str::to_string))
                .collect();
            (c["body"]["to"].as_str().unwrap_or("").trim_start_matches('+').to_string(), texts)
        })
        .collect()
}

/// How many customers a template's sends went to (a send Meta refused and
/// the sender retried is one).
async fn reached(app: &TestApp, name: &str) -> usize {
    let to: std::collections::BTreeSet<String> =
        template_sends(app, name).await.into_iter().map(|(to, _)| to).collect();
    to.len()
}

/// Holds (or frees) the number's sends, as Meta's rate limit would, and
/// lets what waits look again at once.
fn hold(app: &TestApp, on: bool) {
    let value = if on {
        "jsonb_build_object('code', 4, 'since', now(), 'until', now() + interval '1 hour')".to_string()
    } else {
        "NULL".to_string()
    };
    app.exec(&format!("UPDATE tenant_acme.channels SET send_hold = {value} WHERE external_id = '{PHONE}'"));
    app.exec("UPDATE public.send_queue SET next_attempt_at = now(), last_error = NULL WHERE status = 'pending'");
}

#[actix_web::test]
async fn a_broadcast_sends_one_template_to_many_customers_each_filled_in() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (phone, page) = (channel_id(&app, &ctx.admin, PHONE).await, channel_id(&app, &ctx.admin, PAGE_A).await);
    let (_, al) = agent_al(&app, &ctx.admin).await;
    for (name, body, category, extra) in [
        ("aviso", "Olá {{1}}, a loja abre às 9h amanhã.", "UTILITY", json!({})),
        ("natal", "Olá {{1}}, o Natal chegou à {{2}}!", "MARKETING", json!({})),
        ("fatura", "A sua fatura {{1}}.", "UTILITY", json!({"header_media": "DOCUMENT"})),
    ] {
        let mut t = json!({"waba_id": WABA, "name": name, "language": "pt_PT", "body": body, "category": category});
        t.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        app.fake("POST", "/_fake/templates", t).await;
    }
    // Three customers who wrote, labelled `vip`; one of them blocked.
    for (number, name) in [(RUI, "Rui Costa"), (ZOE, "Zoë"), (BLOCKED, "Bea")] {
        app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": number, "text": "Olá", "name": name})).await;
    }
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    for number in [RUI, ZOE, BLOCKED] {
        let id = by_contact(&convs, number)["id"].as_str().expect("id").to_string();
        let r = app
            .call("PATCH", &format!("/api/conversations/{id}"), Some(&ctx.admin), Some(json!({"labels": ["VIP"]})))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let blocked = by_contact(&convs, BLOCKED)["contact"]["id"].as_str().expect("id").to_string();
    let r =
        app.call("PATCH", &format!("/api/contacts/{blocked}"), Some(&ctx.admin), Some(json!({"blocked": true}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let rui_conv = by_contact(&convs, RUI)["id"].as_str().expect("id").to_string();

    let aviso = json!({"name": "aviso", "language": "pt_PT", "parameters": ["{{contact.first_name | cliente}}"]});
    let body = json!({"channel_id": phone, "name": "Horário de amanhã", "template": aviso,
        "to": {"phone_numbers": ["+351 944 444 444", "+351 911-111-111"], "label": "vip"}, "client_id": "b-1"});

    // Refused before anything is written.
    for (token, change, status, want) in [
        (&al, json!({}), 403, "forbidden"),
        (&ctx.admin, json!({"channel_id": page}), 422, "whatsapp_only"),
        (&ctx.admin, json!({"channel_id": "987654"}), 404, "not_found"),
        (&ctx.admin, json!({"to": {"phone_numbers": ["+351 944 444 444", "12"]}}), 422, "invalid_phone_number"),
        (&ctx.admin, json!({"to": {}}), 422, "no_recipients"),
        (&ctx.admin, json!({"to": {"label": "nobody-has-this"}}), 422, "no_recipients"),
        (&ctx.admin, json!({"name": " "}), 422, "invalid_name"),
        (&ctx.admin, json!({"template": {"name": "nope", "language": "pt_PT"}}), 422, "unknown_template"),
        (&ctx.admin, json!({"template": {"name": "aviso", "language": "pt_PT"}}), 422, "invalid_template_parameters"),
        (
            &ctx.admin,
            json!({"template": {"name": "fatura", "language": "pt_PT", "parameters": ["#1"]}}),
            422,
            "template_not_supported",
        ),
    ] {
        let mut wrong = body.clone();
        wrong.as_object_mut().expect("object").extend(change.as_object().expect("object").clone());
        let r = create(&app, token, wrong).await;
        assert_eq!(code(&r), (status, want), "{change}: {:?}", r.body);
    }
    for bad in [
        json!({"channel_id": phone}),
        json!([]),
        json!({"channel_id": phone, "name": "x", "template": aviso, "to": {"phone_numbers": "+351944444444"}}),
    ] {
        let r = create(&app, &ctx.admin, bad.clone()).await;
        assert!(matches!(r.status, 400 | 422) && r.body["error"]["code"].is_string(), "{bad}: {:?}", r.body);
    }
    // Meta's messaging limit counts the customers outside their 24-hour
    // window: the three who wrote today do not, two new numbers are more
    // than a limit of one.
    app.exec(&format!(
        "UPDATE tenant_acme.channels SET whatsapp_number = jsonb_set(coalesce(whatsapp_number, '{{}}'), \
         '{{messaging_limit}}', '\"1\"') WHERE external_id = '{PHONE}'"
    ));
    let mut two_new = body.clone();
    two_new["to"]["phone_numbers"] = json!(["+351 944 444 444", "+351 955 555 555"]);
    let r = create(&app, &ctx.admin, two_new).await;
    assert_eq!(code(&r), (422, "over_messaging_limit"));
    assert!(r.body["error"]["message"].as_str().is_some_and(|m| m.contains("reaches 2 outside")), "{:?}", r.body);
    app.exec(&format!(
        "UPDATE tenant_acme.channels SET whatsapp_number = whatsapp_number - 'messaging_limit' WHERE external_id = '{PHONE}'"
    ));
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.broadcasts"), 0);
    assert_eq!(app.count(&format!("SELECT count(*) AS n FROM tenant_acme.contacts WHERE external_id = '{NEW}'")), 0);

    // Made: four numbers (Rui named twice), one job.
    let r = create(&app, &ctx.admin, body.clone()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    assert_eq!((&r.body["status"], &r.body["counts"]["total"]), (&json!("sending"), &json!(4)), "{:?}", r.body);
    assert_eq!(r.body["template"]["parameters"], json!(["{{contact.first_name | cliente}}"]));
    // A retry is the same broadcast; the same client_id for another is refused.
    let again = create(&app, &ctx.admin, body.clone()).await;
    assert_eq!((again.status, &again.body["id"]), (200, &json!(id)), "{:?}", again.body);
    let mut other = body.clone();
    other["name"] = json!("Outra");
    assert_eq!(code(&create(&app, &ctx.admin, other).await), (409, "client_id_reused"));

    eventually("the broadcast done and its messages delivered", || async {
        let b = get(&app, &ctx.admin, &id).await;
        let c = &b["counts"];
        b["status"] == "done"
            && c["skipped"] == 1
            && c["delivered"].as_i64().unwrap_or(0) + c["read"].as_i64().unwrap_or(0) == 3
    })
    .await;
    let mut sends = template_sends(&app, "aviso").await;
    sends.sort();
    assert_eq!(
        sends,
        vec![
            (RUI.to_string(), vec!["Rui".to_string()]),
            (ZOE.to_string(), vec!["Zoë".to_string()]),
            (NEW.to_string(), vec!["cliente".to_string()]),
        ],
        "each once, filled in for them; the blocked customer skipped"
    );
    let skipped =
        app.call("GET", &format!("/api/broadcasts/{id}/recipients?status=skipped"), Some(&ctx.admin), None).await;
    // As documented.
    let doc: Value =
        app.client.get(app.url("/api/openapi.json")).send().await.expect("openapi").json().await.expect("json");
    crate::openapi::conforms(&doc, "Broadcast", &get(&app, &ctx.admin, &id).await);
    crate::openapi::conforms(&doc, "BroadcastRecipientPage", &skipped.body);
    let items = skipped.body["items"].as_array().expect("items").clone();
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(
        (&items[0]["phone_number"], &items[0]["reason"]),
        (&json!(format!("+{BLOCKED}")), &json!("contact_blocked"))
    );
    // Pages by number.
    let first = app.call("GET", &format!("/api/broadcasts/{id}/recipients?limit=2"), Some(&ctx.admin), None).await.body;
    let cursor = first["next_cursor"].as_str().expect("a next page").to_string();
    let second = app
        .call("GET", &format!("/api/broadcasts/{id}/recipients?limit=2&cursor={cursor}"), Some(&ctx.admin), None)
        .await
        .body;
    let numbers: Vec<&str> = first["items"]
        .as_array()
        .into_iter()
        .chain(second["items"].as_array())
        .flatten()
        .filter_map(|r| r["phone_number"].as_str())
        .collect();
    assert_eq!(numbers, vec![format!("+{RUI}"), format!("+{ZOE}"), format!("+{BLOCKED}"), format!("+{NEW}")]);
    let r = app.call("GET", &format!("/api/broadcasts/{id}/recipients?status=nope"), Some(&ctx.admin), None).await;
    assert_eq!(code(&r), (400, "invalid_status"));

    // Rui's open conversation stays open; the new customer's is made resolved and nobody's.
    let open = conversations(&app, &ctx.admin, "?status=open").await;
    assert_eq!(by_contact(&open, RUI)["status"], "open");
    let resolved = conversations(&app, &ctx.admin, "?status=resolved").await;
    let made = by_contact(&resolved, NEW);
    assert_eq!((&made["status"], &made["assignee_id"]), (&json!("resolved"), &Value::Null), "{made}");
    let rui_messages =
        app.call("GET", &format!("/api/conversations/{rui_conv}/messages"), Some(&ctx.admin), None).await.body;
    let texts: Vec<&str> =
        rui_messages["items"].as_array().expect("items").iter().filter_map(|m| m["text"].as_str()).collect();
    assert!(texts.contains(&"Olá Rui, a loja abre às 9h amanhã."), "{texts:?}");
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'broadcast.created'"), 1);

    // A marketing template skips who stopped them; held by Meta, it waits and can be cancelled.
    app.exec(&format!("UPDATE tenant_acme.contacts SET marketing_stopped_at = now() WHERE external_id = '{ZOE}'"));
    let natal = json!({"name": "natal", "language": "pt_PT", "parameters": ["{{contact.first_name | cliente}}", "{{channel.name}}"]});
    let r = create(
        &app,
        &ctx.admin,
        json!({"channel_id": phone, "name": "Natal", "template": natal, "to": {"label": "VIP"}}),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let natal_id = r.body["id"].as_str().expect("id").to_string();
    // Done once its messages are queued; they go a moment later.
    eventually("the marketing broadcast done and its message sent", || async {
        get(&app, &ctx.admin, &natal_id).await["status"] == "done" && reached(&app, "natal").await > 0
    })
    .await;
    let natal_sends = template_sends(&app, "natal").await;
    assert_eq!(natal_sends.len(), 1, "{natal_sends:?}");
    assert_eq!(natal_sends[0].0, RUI);
    let skipped =
        app.call("GET", &format!("/api/broadcasts/{natal_id}/recipients?status=skipped"), Some(&ctx.admin), None).await;
    let reasons: Vec<&str> =
        skipped.body["items"].as_array().expect("items").iter().filter_map(|r| r["reason"].as_str()).collect();
    assert_eq!(reasons, vec!["marketing_stopped", "contact_blocked"], "by number: Zoë, then the blocked one");

    hold(&app, true);
    let many: Vec<String> = (0..45).map(|i| format!("+1415555{i:04}")).collect();
    let held = json!({"channel_id": phone, "name": "Muitos", "template": aviso, "to": {"phone_numbers": many}});
    let r = create(&app, &ctx.admin, held.clone()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let held_id = r.body["id"].as_str().expect("id").to_string();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(
        get(&app, &ctx.admin, &held_id).await["counts"]["pending"],
        45,
        "nothing goes while Meta holds the number"
    );
    let r = app.call("POST", &format!("/api/broadcasts/{held_id}/cancel"), Some(&ctx.admin), None).await;
    assert_eq!(
        (r.status, &r.body["status"], &r.body["counts"]["skipped"]),
        (200, &json!("cancelled"), &json!(45)),
        "{:?}",
        r.body
    );
    let r = app.call("POST", &format!("/api/broadcasts/{held_id}/cancel"), Some(&ctx.admin), None).await;
    assert_eq!((r.status, &r.body["status"]), (200, &json!("cancelled")));
    let r = app.call("POST", &format!("/api/broadcasts/{id}/cancel"), Some(&ctx.admin), None).await;
    assert_eq!(code(&r), (409, "broadcast_finished"));

    // An agent's reply queued while a broadcast is under way goes after one
    // wave, not behind the whole broadcast: the first send meets Meta's
    // throughput limit, which holds the number with the first wave queued.
    hold(&app, false);
    let limit = json!({"path": format!("/{PHONE}/messages"), "status": 400,
        "error": {"code": 130429, "message": "Rate limit hit"}, "times": 1});
    app.fake("POST", "/_fake/errors", limit).await;
    let r = create(&app, &ctx.admin, held.clone()).await;
    let waves_id = r.body["id"].as_str().expect("id").to_string();
    // Its job looked, found the number held, and waits (not merely taken).
    let waiting = |id: &str| {
        format!(
            "SELECT count(*) AS n FROM public.send_queue WHERE kind = 'broadcast' AND broadcast_id = {id} \
              AND status = 'pending' AND last_error LIKE 'held%'"
        )
    };
    eventually("the broadcast waits for Meta's limit", || async { app.count(&waiting(&waves_id)) == 1 }).await;
    assert_eq!(get(&app, &ctx.admin, &waves_id).await["counts"]["pending"], 45 - 20, "one wave queued");
    let (status, _) = crate::inbox::reply(&app, &ctx.admin, &rui_conv, "Já está reservado!", "r-waves").await;
    assert_eq!(status, 202);
    // Tried at once, the reply finds the number held too; the hold is
    // lifted once that is written, or its wait would outlast the lifting.
    let reply_held = format!(
        "SELECT count(*) AS n FROM public.send_queue WHERE kind = 'message' AND conversation_id = {rui_conv} \
          AND status = 'pending' AND last_error LIKE 'held%'"
    );
    eventually("the reply waits for Meta's limit", || async { app.count(&reply_held) == 1 }).await;
    hold(&app, false);
    eventually("the waves sent", || async { get(&app, &ctx.admin, &waves_id).await["status"] == "done" }).await;
    eventually("the reply and the waves sent", || async {
        let log = app.fake("GET", "/_fake/requests", json!({})).await;
        let replied = log["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|c| c["body"]["text"]["body"] == "Já está reservado!"));
        replied && reached(&app, "aviso").await == 3 + 45
    })
    .await;
    let log = app.fake("GET", "/_fake/requests", json!({})).await;
    let calls = log["items"].as_array().expect("items");
    let at_reply = calls.iter().position(|c| c["body"]["text"]["body"] == "Já está reservado!").expect("the reply");
    let last_wave = calls.iter().rposition(|c| c["body"]["template"]["name"] == "aviso").expect("the waves");
    assert!(at_reply < last_wave, "the reply ({at_reply}) waited behind the whole broadcast (last at {last_wave})");

    // Meta pauses the template while a broadcast waits: it fails, who is left skipped.
    hold(&app, true);
    let r = create(&app, &ctx.admin, held).await;
    let paused_id = r.body["id"].as_str().expect("id").to_string();
    eventually("the broadcast waits for the hold's end", || async { app.count(&waiting(&paused_id)) == 1 }).await;
    app.fake(
        "POST",
        "/_fake/template-status",
        json!({"waba_id": WABA, "name": "aviso", "language": "pt_PT", "event": "PAUSED"}),
    )
    .await;
    app.processed().await;
    // Meta restricting the account from starting conversations makes it
    // wait too, the template not looked at meanwhile.
    let restrict = |on: bool| {
        let list = if on {
            r#"[{"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expires_at": null}]"#
        } else {
            "[]"
        };
        app.exec(&format!(
            "UPDATE tenant_acme.channels SET whatsapp_number = \
             jsonb_set(coalesce(whatsapp_number, '{{}}'), '{{restrictions}}', '{list}'::jsonb) WHERE external_id = '{PHONE}'"
        ));
    };
    restrict(true);
    hold(&app, false);
    let restricted = format!(
        "SELECT count(*) AS n FROM public.send_queue WHERE kind = 'broadcast' AND broadcast_id = {paused_id} \
          AND status = 'pending' AND last_error LIKE 'held%' AND next_attempt_at < now() + interval '2 minutes'"
    );
    eventually("the broadcast waits for the restriction's end", || async { app.count(&restricted) == 1 }).await;
    let b = get(&app, &ctx.admin, &paused_id).await;
    assert_eq!((&b["status"], &b["counts"]["pending"]), (&json!("sending"), &json!(45)), "{b}");
    restrict(false);
    hold(&app, false);
    eventually("the broadcast failed", || async { get(&app, &ctx.admin, &paused_id).await["status"] == "failed" })
        .await;
    let b = get(&app, &ctx.admin, &paused_id).await;
    assert_eq!((&b["error"], &b["counts"]["skipped"]), (&json!("template_not_approved"), &json!(45)), "{b}");
    assert_eq!(reached(&app, "aviso").await, 3 + 45, "nothing more sent");

    // Listed newest first; agents may not look.
    let list = app.call("GET", "/api/broadcasts?limit=2", Some(&ctx.admin), None).await.body;
    crate::openapi::conforms(&doc, "BroadcastPage", &list);
    let listed: Vec<&str> = list["items"].as_array().expect("items").iter().filter_map(|b| b["id"].as_str()).collect();
    assert_eq!(listed, vec![paused_id.as_str(), waves_id.as_str()]);
    let cursor = list["next_cursor"].as_str().expect("more").to_string();
    let rest = app.call("GET", &format!("/api/broadcasts?cursor={cursor}"), Some(&ctx.admin), None).await.body;
    assert_eq!(rest["items"].as_array().map(Vec::len), Some(3));
    assert_eq!(code(&app.call("GET", "/api/broadcasts", Some(&al), None).await), (403, "forbidden"));
    assert_eq!(code(&app.call("GET", "/api/broadcasts/999999", Some(&ctx.admin), None).await), (404, "not_found"));

    // Erasing a customer takes their number out of every broadcast.
    let rui = by_contact(&convs, RUI)["contact"]["id"].as_str().expect("id").to_string();
    let r = app.call("DELETE", &format!("/api/contacts/{rui}"), Some(&ctx.admin), None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(
        app.count(&format!("SELECT count(*) AS n FROM tenant_acme.broadcast_recipients WHERE number = '{RUI}'")),
        0
    );
    assert_eq!(get(&app, &ctx.admin, &id).await["counts"]["total"], 3);
}

#[actix_web::test]
async fn a_broadcasts_next_wave_waits_until_the_last_has_gone() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let phone = channel_id(&app, &ctx.admin, PHONE).await;
    let aviso = json!({"waba_id": WABA, "name": "aviso", "language": "pt_PT",
        "body": "Olá {{1}}, a loja abre às 9h amanhã.", "category": "UTILITY"});
    app.fake("POST", "/_fake/templates", aviso).await;
    // An agent's photo to a customer takes three seconds to upload, and
    // their text after it waits for it in the queue.
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Olá"})).await;
    app.processed().await;
    let conv = by_contact(&conversations(&app, &ctx.admin, "").await, WA_ID)["id"].as_str().expect("id").to_string();
    app.fake("POST", "/_fake/errors", json!({"path": "/media", "method": "POST", "delay_ms": 3000, "times": 1})).await;
    let jpeg: Vec<u8> = [&b"\xff\xd8\xff\xe0\0\x10JFIF\0"[..], &[1u8; 256][..]].concat();
    let r = crate::inbox::send_file(&app, &ctx.admin, &conv, Some(("foto.jpg", "image/jpeg", &jpeg)), &[]).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let (status, text) = crate::inbox::reply(&app, &ctx.admin, &conv, "e depois o texto", "wa-after").await;
    assert_eq!(status, 202, "{text}");
    // Meta answers each send a little late, and the channel's rate (20 a
    // second) hands most of a wave back to the queue: a wave takes a
    // second to go, while the job queued behind it is due at once.
    let slow = json!({"path": format!("/{PHONE}/messages"), "method": "POST", "delay_ms": 100, "times": 47});
    app.fake("POST", "/_fake/errors", slow).await;
    let many: Vec<String> = (0..45).map(|i| format!("+1415556{i:04}")).collect();
    let template = json!({"name": "aviso", "language": "pt_PT", "parameters": ["{{contact.first_name | cliente}}"]});
    let r = create(
        &app,
        &ctx.admin,
        json!({"channel_id": phone, "name": "Devagar", "template": template, "to": {"phone_numbers": many}}),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    // The broadcast's messages not yet gone, read at one moment each time.
    let unsent = format!(
        "SELECT count(*) FILTER (WHERE m.status = 'pending') AS n FROM tenant_acme.broadcast_recipients r \
           JOIN tenant_acme.messages m ON m.id = r.message_id WHERE r.broadcast_id = {id}"
    );
    let (mut most, started) = (0, std::time::Instant::now());
    loop {
        most = most.max(app.count(&unsent));
        if get(&app, &ctx.admin, &id).await["status"] == "done" && app.count(&unsent) == 0 {
            break;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(60), "the broadcast never ended");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(most > 0, "a wave was seen waiting to go");
    assert!(most <= 20, "{most} messages were queued at once: a wave went before the last had gone");
    assert_eq!(reached(&app, "aviso").await, 45);
    // The text, queued before the broadcast, went before its second wave
    // (the numbers from +14155560020 on). Before the first, but for the
    // moment it is under a claim: a job under its lease is not counted.
    let log = app.fake("GET", "/_fake/requests", json!({})).await;
    let calls = log["items"].as_array().expect("items");
    let at_text = calls.iter().position(|c| c["body"]["text"]["body"] == "e depois o texto").expect("the text");
    let second = calls
        .iter()
        .position(|c| {
            c["body"]["template"]["name"] == "aviso"
                && c["body"]["to"].as_str().is_some_and(|to| to.trim_start_matches('+') >= "14155560020")
        })
        .expect("the second wave");
    assert!(at_text < second, "the second wave ({second}) went ahead of the reply queued before it ({at_text})");
}

/// The next `broadcast.updated` frame of broadcast `id`, which must say `status`.
async fn announced(socket: &mut crate::realtime::Socket, id: &str, status: &str) -> Value {
    loop {
        let frame = crate::realtime::until(socket, "broadcast.updated", std::time::Duration::from_secs(5))
            .await
            .expect("broadcast.updated");
        if frame["data"]["id"] == id {
            assert_eq!(frame["data"]["status"], status, "{frame}");
            return frame;
        }
    }
}

/// A time `seconds` from now, as the API takes it.
fn in_seconds(seconds: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(seconds)).to_rfc3339()
}

#[actix_web::test]
async fn a_scheduled_broadcast_waits_for_its_time_reaches_an_attribute_and_counts_replies() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let phone = channel_id(&app, &ctx.admin, PHONE).await;
    let t = json!({"waba_id": WABA, "name": "lembrete", "language": "pt_PT",
        "body": "Olá {{1}}, a sua renovação é amanhã.", "category": "UTILITY"});
    app.fake("POST", "/_fake/templates", t).await;
    let plan = json!({"key": "plan", "name": "Plan", "type": "list", "options": ["free", "gold"]});
    assert_eq!(app.call("POST", "/api/contact-attributes", Some(&ctx.admin), Some(plan)).await.status, 201);
    for (number, name) in [(RUI, "Rui Costa"), (ZOE, "Zoë")] {
        app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": number, "text": "Olá", "name": name})).await;
    }
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    // Rui is on the gold plan, Zoë on the free one.
    for (number, value) in [(RUI, "gold"), (ZOE, "free")] {
        let contact = by_contact(&convs, number)["contact"]["id"].as_str().expect("id").to_string();
        let r = app
            .call(
                "PATCH",
                &format!("/api/contacts/{contact}"),
                Some(&ctx.admin),
                Some(json!({"attributes": {"plan": value}})),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let lembrete = json!({"name": "lembrete", "language": "pt_PT", "parameters": ["{{contact.first_name | cliente}}"]});
    let body = json!({"channel_id": phone, "name": "Renovações", "template": lembrete,
        "to": {"attribute": "plan:gold", "phone_numbers": [format!("+{NEW}")]}, "send_at": in_seconds(3_600)});

    for (change, want) in [
        (json!({"send_at": in_seconds(-120)}), "invalid_send_at"),
        (json!({"send_at": in_seconds(91 * 86_400)}), "invalid_send_at"),
        (json!({"to": {"attribute": "colour:red"}}), "invalid_attribute"),
        (json!({"to": {"attribute": "plan:platinum"}}), "invalid_attribute"),
        (
            json!({"to": {"attribute": "plan:free", "label": "nobody-has-this"}, "template": {"name": "nope", "language": "pt_PT"}}),
            "unknown_template",
        ),
    ] {
        let mut wrong = body.clone();
        wrong.as_object_mut().expect("object").extend(change.as_object().expect("object").clone());
        let r = create(&app, &ctx.admin, wrong).await;
        assert_eq!(code(&r), (422, want), "{change}: {:?}", r.body);
    }
    app.exec(&format!("UPDATE tenant_acme.contacts SET attributes = '{{}}' WHERE external_id = '{ZOE}'"));
    let mut nobody = body.clone();
    nobody["to"] = json!({"attribute": "plan:free"});
    assert_eq!(code(&create(&app, &ctx.admin, nobody).await), (422, "no_recipients"));
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.broadcasts"), 0);

    // Scheduled an hour ahead: Rui (gold) and the number given, nobody yet.
    let mut socket = crate::realtime::ws(&app, "", Some(&ctx.admin), None).await.expect("socket");
    let r = create(&app, &ctx.admin, body.clone()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    let frame = announced(&mut socket, &id, "scheduled").await;
    assert_eq!(frame["data"]["counts"]["pending"], 2, "{frame}");
    assert_eq!((&r.body["status"], &r.body["counts"]["pending"]), (&json!("scheduled"), &json!(2)), "{:?}", r.body);
    assert!(r.body["send_at"].is_string(), "{:?}", r.body);
    let doc: Value =
        app.client.get(app.url("/api/openapi.json")).send().await.expect("openapi").json().await.expect("json");
    crate::openapi::conforms(&doc, "Broadcast", &r.body);
    let scheduled = app.call("GET", "/api/broadcasts?status=scheduled", Some(&ctx.admin), None).await.body;
    assert_eq!(scheduled["items"].as_array().map(Vec::len), Some(1), "{scheduled}");
    let sending = app.call("GET", "/api/broadcasts?status=sending", Some(&ctx.admin), None).await.body;
    assert_eq!(sending["items"].as_array().map(Vec::len), Some(0), "{sending}");
    assert_eq!(
        code(&app.call("GET", "/api/broadcasts?status=later", Some(&ctx.admin), None).await),
        (400, "invalid_status")
    );

    // Moved: an empty body or a time past is refused, a later one taken.
    let url = format!("/api/broadcasts/{id}");
    for (bad, want) in [
        (json!({}), "invalid_body"),
        (json!({"send_at": in_seconds(-600)}), "invalid_send_at"),
        (json!({"send_at": in_seconds(60), "name": "x"}), "invalid_body"),
    ] {
        let r = app.call("PATCH", &url, Some(&ctx.admin), Some(bad.clone())).await;
        assert_eq!(code(&r), (422, want), "{bad}: {:?}", r.body);
    }
    let r = app.call("PATCH", &url, Some(&ctx.admin), Some(json!({"send_at": in_seconds(7_200)}))).await;
    assert_eq!((r.status, &r.body["status"]), (200, &json!("scheduled")), "{:?}", r.body);
    let due = |within: i64| {
        format!(
            "SELECT count(*) AS n FROM public.send_queue WHERE kind = 'broadcast' AND broadcast_id = {id} \
              AND status = 'pending' AND next_attempt_at BETWEEN now() + interval '{}' AND now() + interval '{}'",
            within - 120,
            within + 120
        )
    };
    assert_eq!(app.count(&due(7_200)), 1, "one job, due at the new time");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM public.send_queue WHERE broadcast_id = {id} AND status = 'pending'"
        )),
        1,
        "the first time's job is gone"
    );
    // Moved to in four seconds: nothing goes before, then everyone.
    let r = app.call("PATCH", &url, Some(&ctx.admin), Some(json!({"send_at": in_seconds(4)}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert_eq!(reached(&app, "lembrete").await, 0, "sent before its time");
    assert_eq!(get(&app, &ctx.admin, &id).await["status"], "scheduled");
    eventually("the scheduled broadcast sent", || async {
        let b = get(&app, &ctx.admin, &id).await;
        b["status"] == "done" && reached(&app, "lembrete").await == 2
    })
    .await;
    let mut sends = template_sends(&app, "lembrete").await;
    sends.sort();
    assert_eq!(sends, vec![(RUI.to_string(), vec!["Rui".to_string()]), (NEW.to_string(), vec!["cliente".to_string()])]);
    // Live: moved twice, then its one wave, which says it is done.
    for status in ["scheduled", "scheduled", "done"] {
        announced(&mut socket, &id, status).await;
    }
    let r = app.call("PATCH", &url, Some(&ctx.admin), Some(json!({"send_at": in_seconds(60)}))).await;
    assert_eq!(code(&r), (409, "broadcast_not_scheduled"));

    // Rui answers: counted as a reply, and when.
    eventually("delivered", || async {
        let c = get(&app, &ctx.admin, &id).await["counts"].clone();
        c["delivered"].as_i64().unwrap_or(0) + c["read"].as_i64().unwrap_or(0) == 2
    })
    .await;
    assert_eq!(get(&app, &ctx.admin, &id).await["counts"]["replied"], 0);
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": RUI, "text": "Obrigado!", "name": "Rui Costa"}))
        .await;
    app.processed().await;
    let b = get(&app, &ctx.admin, &id).await;
    assert_eq!(b["counts"]["replied"], 1, "{b}");
    let recipients = app.call("GET", &format!("{url}/recipients"), Some(&ctx.admin), None).await.body;
    crate::openapi::conforms(&doc, "BroadcastRecipientPage", &recipients);
    let replied: Vec<(&str, bool)> = recipients["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|r| (r["phone_number"].as_str().unwrap_or(""), r["replied_at"].is_string()))
        .collect();
    assert_eq!(replied, vec![(format!("+{RUI}").as_str(), true), (format!("+{NEW}").as_str(), false)]);

    // Another, scheduled, then cancelled: nobody is sent it. A third sent now by moving it to `null`.
    let r = create(&app, &ctx.admin, body.clone()).await;
    let cancelled = r.body["id"].as_str().expect("id").to_string();
    let r = app.call("POST", &format!("/api/broadcasts/{cancelled}/cancel"), Some(&ctx.admin), None).await;
    assert_eq!(
        (r.status, &r.body["status"], &r.body["counts"]["skipped"]),
        (200, &json!("cancelled"), &json!(2)),
        "{:?}",
        r.body
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM public.send_queue WHERE broadcast_id = {cancelled} AND status = 'pending'"
        )),
        0,
        "its job does not wait out the hour"
    );
    let r = app
        .call("PATCH", &format!("/api/broadcasts/{cancelled}"), Some(&ctx.admin), Some(json!({"send_at": null})))
        .await;
    assert_eq!(code(&r), (409, "broadcast_not_scheduled"));
    let r = create(&app, &ctx.admin, body).await;
    let now_id = r.body["id"].as_str().expect("id").to_string();
    let r =
        app.call("PATCH", &format!("/api/broadcasts/{now_id}"), Some(&ctx.admin), Some(json!({"send_at": null}))).await;
    assert_eq!((r.status, &r.body["status"]), (200, &json!("sending")), "{:?}", r.body);
    eventually("sent at once", || async { get(&app, &ctx.admin, &now_id).await["status"] == "done" }).await;
    // Done once its messages are queued; they go a moment later.
    eventually("the third broadcast's messages sent", || async { template_sends(&app, "lembrete").await.len() >= 4 })
        .await;
    assert_eq!(reached(&app, "lembrete").await, 2, "the same two customers");
    assert_eq!(template_sends(&app, "lembrete").await.len(), 4, "twice each: the first and the third broadcast");
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'broadcast.rescheduled'"), 3);
}

/// A tenant has at most so many broadcasts scheduled or sending, however
/// many are made at once; a retry of one of them is still answered with
/// it, and one ending (cancelled) makes room.
#[actix_web::test]
async fn broadcasts_waiting_stop_at_the_limit() {
    use switchboard::inbox::broadcasts::MOST_WAITING;
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let admin = ctx.admin.as_str();
    let phone = channel_id(&app, admin, PHONE).await;
    let body = |client_id: &str| {
        json!({"channel_id": phone, "name": "Saldos", "client_id": client_id, "send_at": in_seconds(3_600),
            "template": {"name": "hello_world", "language": "en_US"}, "to": {"phone_numbers": [RUI]}})
    };
    let first = create(&app, admin, body("first")).await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    // All but one waiting: made as the first was, scheduled.
    app.exec(&format!(
        "INSERT INTO tenant_acme.broadcasts (channel_id, name, template, created_by, status, send_at) \
         SELECT channel_id, name || g, template, created_by, 'scheduled', send_at \
         FROM tenant_acme.broadcasts, generate_series(1, {}) g",
        MOST_WAITING - 2
    ));
    let answers =
        futures_util::future::join_all((0..5).map(|i| create(&app, admin, body(&format!("at-once-{i}"))))).await;
    crate::common::one_made_rest_refused(&answers, "too_many_broadcasts");
    // Full: a retry of one made is answered with it; a cancelled one makes
    // room.
    let again = create(&app, admin, body("first")).await;
    assert_eq!((again.status, &again.body["id"]), (200, &first.body["id"]), "{:?}", again.body);
    let id = first.body["id"].as_str().expect("id");
    let cancelled = app.call("POST", &format!("/api/broadcasts/{id}/cancel"), Some(admin), None).await;
    assert_eq!(cancelled.status, 200, "{:?}", cancelled.body);
    assert_eq!(create(&app, admin, body("after")).await.status, 201);
    assert_eq!(code(&create(&app, admin, body("one-more")).await), (409, "too_many_broadcasts"));
}
