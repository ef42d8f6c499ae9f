//! Writing WhatsApp templates (`inbox::template_authoring`): submitted to
//! Meta for review from the inbox, retried safely, deleted.

use serde_json::{json, Value};

use crate::channels::PAGE_A;
use crate::common::{spawn_app, TestApp};
use crate::inbox::{acme, agent_al, channel_id, PHONE};

const WABA: &str = "112233445566778";

fn code(r: &crate::common::Resp) -> (u16, &str) {
    (r.status, r.body["error"]["code"].as_str().unwrap_or(""))
}

/// The channel's templates as listed: (name, language, status, sendable).
async fn listed(app: &TestApp, t: &str, channel: &str) -> Vec<(String, String, String, bool)> {
    let r = app.call("GET", &format!("/api/channels/{channel}/templates"), Some(t), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap_or("").to_string(),
                t["language"].as_str().unwrap_or("").to_string(),
                t["status"].as_str().unwrap_or("").to_string(),
                t["sendable"] == true,
            )
        })
        .collect()
}

/// The template submissions Meta received, their bodies.
async fn submitted(app: &TestApp) -> Vec<Value> {
    let log = app.fake("GET", "/_fake/requests", json!({})).await;
    log["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|c| c["method"] == "POST" && c["path"] == format!("/{WABA}/message_templates"))
        .map(|c| c["body"].clone())
        .collect()
}

#[actix_web::test]
async fn an_admin_submits_a_template_for_review_and_deletes_it() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (phone, page) = (channel_id(&app, &ctx.admin, PHONE).await, channel_id(&app, &ctx.admin, PAGE_A).await);
    let (_, al) = agent_al(&app, &ctx.admin).await;
    let url = format!("/api/channels/{phone}/templates");
    let body = json!({"name": "pedido_pronto", "language": "pt_BR", "category": "UTILITY",
        "header": "Pedido {{1}}", "body": "Olá {{1}}, o seu pedido {{2}} está pronto para levantar. 📦",
        "footer": "Loja Azul", "examples": {"header": "#77", "body": ["Ana", "#77"]},
        "buttons": [{"type": "QUICK_REPLY", "text": "Obrigado"}, {"type": "URL", "text": "Ver loja", "url": "https://loja.example"}]});

    // Refused before Meta is asked.
    for (token, target, change, status, want) in [
        (&al, &phone, json!({}), 403, "forbidden"),
        (&ctx.admin, &page, json!({}), 422, "templates_whatsapp_only"),
        (&ctx.admin, &phone, json!({"name": "Pedido Pronto"}), 422, "invalid_template"),
        (&ctx.admin, &phone, json!({"examples": {"header": "#77", "body": ["Ana"]}}), 422, "invalid_template"),
        (&ctx.admin, &phone, json!({"body": "{{1}} o seu pedido {{2}} está pronto"}), 422, "invalid_template"),
        (&ctx.admin, &phone, json!({"category": "AUTHENTICATION"}), 422, "template_not_supported"),
        (&ctx.admin, &phone, json!({"colour": "blue"}), 422, "invalid_body"),
    ] {
        let mut wrong = body.clone();
        wrong.as_object_mut().expect("object").extend(change.as_object().expect("object").clone());
        let r = app.call("POST", &format!("/api/channels/{target}/templates"), Some(token), Some(wrong)).await;
        assert_eq!(code(&r), (status, want), "{change}: {:?}", r.body);
    }
    assert!(submitted(&app).await.is_empty(), "nothing reached Meta");

    // Submitted: pending, not sendable yet; Meta got the components with their examples.
    let r = app.call("POST", &url, Some(&ctx.admin), Some(body.clone())).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(
        (&r.body["status"], &r.body["sendable"], &r.body["body_parameters"], &r.body["header"]),
        (&json!("PENDING"), &json!(false), &json!(2), &json!("Pedido {{1}}")),
        "{:?}",
        r.body
    );
    let doc: Value =
        app.client.get(app.url("/api/openapi.json")).send().await.expect("openapi").json().await.expect("json");
    crate::openapi::conforms(&doc, "Template", &r.body);
    let sent = submitted(&app).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["components"][1]["example"]["body_text"], json!([["Ana", "#77"]]));
    assert_eq!(
        sent[0]["components"][3]["buttons"][1],
        json!({"type": "URL", "text": "Ver loja", "url": "https://loja.example"})
    );
    assert!(listed(&app, &ctx.admin, &phone).await.contains(&(
        "pedido_pronto".into(),
        "pt_BR".into(),
        "PENDING".into(),
        false
    )));
    // A retry is the same template; another under its name is refused.
    let again = app.call("POST", &url, Some(&ctx.admin), Some(body.clone())).await;
    assert_eq!((again.status, &again.body["name"]), (200, &json!("pedido_pronto")), "{:?}", again.body);
    let mut other = body.clone();
    other["body"] = json!("Olá {{1}}, o pedido {{2}} chegou.");
    assert_eq!(code(&app.call("POST", &url, Some(&ctx.admin), Some(other)).await), (409, "template_exists"));
    assert_eq!(submitted(&app).await.len(), 1, "neither reached Meta");

    // Meta approves it: it can be sent.
    app.fake(
        "POST",
        "/_fake/template-status",
        json!({"waba_id": WABA, "name": "pedido_pronto", "language": "pt_BR", "event": "APPROVED"}),
    )
    .await;
    app.processed().await;
    assert!(listed(&app, &ctx.admin, &phone).await.contains(&(
        "pedido_pronto".into(),
        "pt_BR".into(),
        "APPROVED".into(),
        true
    )));

    // Made at Meta meanwhile (an answer lost on the way): the same is taken
    // as made; another is refused.
    let lost = json!({"name": "aviso_loja", "language": "pt_BR", "category": "MARKETING",
        "body": "A loja fecha mais cedo hoje, {{1}}.", "examples": {"body": ["Ana"]}});
    app.fake(
        "POST",
        "/_fake/templates",
        json!({"waba_id": WABA, "name": "aviso_loja", "language": "pt_BR", "category": "MARKETING",
            "status": "PENDING", "body": "A loja fecha mais cedo hoje, {{1}}."}),
    )
    .await;
    let r = app.call("POST", &url, Some(&ctx.admin), Some(lost.clone())).await;
    assert_eq!((r.status, &r.body["status"]), (200, &json!("PENDING")), "{:?}", r.body);
    let mut clash = lost.clone();
    clash["language"] = json!("en_US");
    app.fake(
        "POST",
        "/_fake/templates",
        json!({"waba_id": WABA, "name": "aviso_loja", "language": "en_US", "status": "PENDING", "body": "Closing early."}),
    )
    .await;
    assert_eq!(code(&app.call("POST", &url, Some(&ctx.admin), Some(clash)).await), (409, "template_exists"));
    // Meta refusing it otherwise: its words, nothing kept.
    let refusal = json!({"path": format!("/{WABA}/message_templates"), "method": "POST", "status": 400,
        "error": {"code": 100, "message": "(#100) Invalid parameter: the body is too similar to an existing template"}});
    app.fake("POST", "/_fake/errors", refusal).await;
    let mut refused = body.clone();
    refused["name"] = json!("pedido_pronto_2");
    let r = app.call("POST", &url, Some(&ctx.admin), Some(refused.clone())).await;
    assert_eq!(code(&r), (422, "meta_refused"));
    assert!(r.body["error"]["message"].as_str().is_some_and(|m| m.contains("too similar")), "{:?}", r.body);
    // Meta's limit on the account: a 429 that passes on how long Meta said
    // it lasts (5 minutes), as Retry-After; nothing kept.
    let usage = json!({WABA: [{"type": "whatsapp_business_management", "call_count": 100,
        "total_cputime": 1, "total_time": 1, "estimated_time_to_regain_access": 5}]});
    let limit = json!({"path": format!("/{WABA}/message_templates"), "method": "POST", "status": 400,
        "error": {"code": 80007, "message": "(#80007) There have been too many calls to this WhatsApp Business account."},
        "headers": {"X-Business-Use-Case-Usage": usage}});
    app.fake("POST", "/_fake/errors", limit).await;
    let res = app.client.post(app.url(&url)).bearer_auth(&ctx.admin).json(&refused).send().await.expect("answer");
    let retry_after = res.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!((res.status().as_u16(), retry_after), (429, Some("300".to_string())));
    let limited: serde_json::Value = res.json().await.expect("json");
    assert_eq!(limited["error"]["code"], "meta_rate_limited", "{limited}");

    // One more at Meta, made in WhatsApp Manager (deleted there below).
    app.fake(
        "POST",
        "/_fake/templates",
        json!({"waba_id": WABA, "name": "so_na_meta", "language": "pt_BR", "status": "APPROVED", "body": "Oi."}),
    )
    .await;

    // Deleted: every language of the name; agents may not; an unknown one is 404.
    let delete = |name: &str, t: &str| {
        let (app, url, t) = (&app, format!("{url}/{name}"), t.to_string());
        async move { app.call("DELETE", &url, Some(&t), None).await }
    };
    assert_eq!(code(&delete("aviso_loja", &al).await), (403, "forbidden"));
    assert_eq!(code(&delete("nao_existe", &ctx.admin).await), (404, "not_found"));
    // Sent many times at once: deleted once, the others answered as a
    // moment later (Meta's 100/2593002 for the rest), recorded once (below).
    let answers = futures_util::future::join_all((0..6).map(|_| delete("aviso_loja", &ctx.admin))).await;
    let mut statuses: Vec<(u16, String)> =
        answers.iter().map(|r| (r.status, r.body["error"]["code"].as_str().unwrap_or("").to_string())).collect();
    statuses.sort_unstable();
    let gone = (404, "not_found".to_string());
    assert_eq!(statuses, [(204, String::new()), gone.clone(), gone.clone(), gone.clone(), gone.clone(), gone]);
    let names: Vec<String> = listed(&app, &ctx.admin, &phone).await.into_iter().map(|t| t.0).collect();
    assert!(!names.contains(&"aviso_loja".to_string()) && names.contains(&"pedido_pronto".to_string()), "{names:?}");
    assert_eq!(code(&delete("aviso_loja", &ctx.admin).await), (404, "not_found"));
    // Deleted in WhatsApp Manager while the list kept here still has it:
    // Meta's "not found" (100/2593002, its words for people beside a bare
    // "Invalid parameter") is a 404 too, and the list is read again.
    let names =
        |app, t, phone| async move { listed(app, t, phone).await.into_iter().map(|t| t.0).collect::<Vec<String>>() };
    assert!(names(&app, &ctx.admin, &phone).await.contains(&"so_na_meta".to_string()), "read from Meta, kept");
    let at_meta = app
        .client
        .delete(format!("{}/v24.0/{WABA}/message_templates?name=so_na_meta", app.fake_base))
        .bearer_auth(&ctx.waba_token)
        .send()
        .await
        .expect("fake");
    assert!(at_meta.status().is_success(), "{}", at_meta.status());
    assert!(names(&app, &ctx.admin, &phone).await.contains(&"so_na_meta".to_string()), "the kept list has it");
    assert_eq!(code(&delete("so_na_meta", &ctx.admin).await), (404, "not_found"));
    assert!(!names(&app, &ctx.admin, &phone).await.contains(&"so_na_meta".to_string()), "read again");

    let log = app.call("GET", "/api/audit-log?limit=200", Some(&ctx.admin), None).await;
    let actions: Vec<(String, String)> = log.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"].as_str().is_some_and(|a| a.starts_with("channel.template_")))
        .map(|e| {
            (e["action"].as_str().unwrap_or("").to_string(), e["details"]["name"].as_str().unwrap_or("").to_string())
        })
        .collect();
    assert_eq!(
        actions,
        vec![
            ("channel.template_deleted".to_string(), "aviso_loja".to_string()),
            ("channel.template_submitted".to_string(), "pedido_pronto".to_string()),
        ],
        "newest first; the retries recorded nothing"
    );
    assert_eq!(
        log.body["items"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["action"] == "channel.template_deleted"))
            .map(|e| e["details"]["languages"].clone()),
        Some(json!(["pt_BR", "en_US"]))
    );
}
