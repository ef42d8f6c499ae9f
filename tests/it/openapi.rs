//! The OpenAPI document the server serves describes what it answers: live
//! responses are checked against the document's own schemas (required
//! fields, types, enums, nullability, date-times), so the two cannot drift
//! apart unnoticed.

use serde_json::{json, Value};

use crate::common::{fixture, spawn_app, token, TestApp};
use crate::inbox::acme;
use crate::realtime::{next, until, ws};
use std::time::Duration;

/// Where `value` departs from `schema` (resolved in `doc`), as paths.
fn departures(doc: &Value, schema: &Value, value: &Value, at: &str, out: &mut Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        return departures(doc, &doc["components"]["schemas"][name], value, at, out);
    }
    if value.is_null() {
        if schema["nullable"] != true {
            out.push(format!("{at}: null, not nullable"));
        }
        return;
    }
    if let Some(all) = schema["allOf"].as_array() {
        for s in all {
            departures(doc, s, value, at, out);
        }
        return;
    }
    let fits = match schema["type"].as_str() {
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("boolean") => value.is_boolean(),
        _ => true,
    };
    if !fits {
        out.push(format!("{at}: {value} is not {}", schema["type"]));
        return;
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            out.push(format!("{at}: {value} not in {allowed:?}"));
        }
    }
    if schema["format"] == "date-time" {
        if let Some(t) = value.as_str().filter(|t| chrono::DateTime::parse_from_rfc3339(t).is_err()) {
            out.push(format!("{at}: {t} is not RFC 3339"));
        }
    }
    for key in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if value.get(key).is_none() {
            out.push(format!("{at}: no `{key}`"));
        }
    }
    if let (Some(props), Some(obj)) = (schema["properties"].as_object(), value.as_object()) {
        for (key, s) in props {
            if let Some(v) = obj.get(key) {
                departures(doc, s, v, &format!("{at}.{key}"), out);
            }
        }
    }
    if let Some(items) = value.as_array() {
        for (i, v) in items.iter().enumerate() {
            departures(doc, &schema["items"], v, &format!("{at}[{i}]"), out);
        }
    }
}

/// Checks `value` against the document's schema `name`.
pub(crate) fn conforms(doc: &Value, name: &str, value: &Value) {
    let mut out = Vec::new();
    departures(doc, &json!({"$ref": format!("#/components/schemas/{name}")}), value, "$", &mut out);
    assert!(out.is_empty(), "{value:#} departs from {name}: {out:#?}");
}

/// Calls the server and checks the answer against the documented schema
/// of `template` (the document's path) for that method and status.
async fn check(
    app: &TestApp,
    doc: &Value,
    method: &str,
    template: &str,
    path: &str,
    t: Option<&str>,
    body: Option<Value>,
) -> Value {
    let r = app.call(method, path, t, body).await;
    let op = &doc["paths"][template][method.to_lowercase()];
    let documented = &op["responses"][r.status.to_string()];
    // Statuses not listed answer with the `default` response (the error shape).
    let documented = if documented.is_null() { &op["responses"]["default"] } else { documented };
    let documented = match documented["$ref"].as_str() {
        Some(r) => &doc["components"]["responses"][r.trim_start_matches("#/components/responses/")],
        None => documented,
    };
    let schema = &documented["content"]["application/json"]["schema"];
    assert!(schema.is_object(), "{method} {path} answered {} ({:?}): no schema documented for it", r.status, r.body);
    let mut out = Vec::new();
    departures(doc, schema, &r.body, "$", &mut out);
    keeps_conventions(&r.body, "$", &mut out);
    assert!(out.is_empty(), "{method} {path} departs from the document: {out:#?}\n{:#}", r.body);
    r.body
}

/// API.md's conventions, whatever the document says: "ids are strings"
/// (every `id` or `…_id` anywhere in an answer is a string or null, every
/// `…_ids` a list of strings or null) and "times are RFC 3339 UTC" (every
/// `at`, `…_at` or `…_until`).
pub(crate) fn keeps_conventions(value: &Value, at: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(fields) => {
            for (key, v) in fields {
                let here = format!("{at}.{key}");
                let one = key == "id" || key.ends_with("_id");
                if one && !(v.is_string() || v.is_null()) {
                    out.push(format!("{here}: an id that is not a string: {v}"));
                }
                if key.ends_with("_ids")
                    && !(v.is_null() || v.as_array().is_some_and(|a| a.iter().all(Value::is_string)))
                {
                    out.push(format!("{here}: ids that are not strings: {v}"));
                }
                // "times are RFC 3339 UTC" too.
                let time = key == "at" || key.ends_with("_at") || key.ends_with("_until");
                let utc =
                    |t: &str| chrono::DateTime::parse_from_rfc3339(t).is_ok_and(|d| d.offset().local_minus_utc() == 0);
                if time && !(v.is_null() || v.as_str().is_some_and(utc)) {
                    out.push(format!("{here}: a time that is not RFC 3339 UTC: {v}"));
                }
                keeps_conventions(v, &here, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                keeps_conventions(v, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

#[actix_web::test]
async fn live_answers_match_the_served_openapi_document() {
    let app = spawn_app().await;
    let doc = app.call("GET", "/api/openapi.json", None, None).await.body;
    assert_eq!(doc["openapi"], "3.0.3");
    let ctx = acme(&app).await;
    let admin = ctx.admin.as_str();
    assert_eq!(app.webhook(&fixture("messenger_text.json")).await, 200);
    assert_eq!(app.webhook(&fixture("instagram_story_reply.json")).await, 200);
    app.processed().await;

    let tenant = check(
        &app,
        &doc,
        "POST",
        "/api/tenants",
        "/api/tenants",
        None,
        Some(json!({"slug": "other-shop", "name": "Other", "owner_email": "o@other.test", "owner_password": "other-password-1"})),
    )
    .await;
    assert_eq!(tenant["tenant"]["slug"], "other-shop");
    let login = check(
        &app,
        &doc,
        "POST",
        "/api/auth/login",
        "/api/auth/login",
        None,
        Some(json!({"email": "ann@acme.test", "password": "ann-password-1", "tenant": "acme"})),
    )
    .await;
    let refresh = json!({"refresh_token": token(&login, "refresh_token")});
    check(&app, &doc, "POST", "/api/auth/refresh", "/api/auth/refresh", None, Some(refresh)).await;
    check(&app, &doc, "GET", "/api/me", "/api/me", Some(admin), None).await;
    // Two-step sign-in begun (pending: logins still need no code).
    let begun = json!({"current_password": "ann-password-1"});
    let enrollment = check(&app, &doc, "POST", "/api/me/mfa", "/api/me/mfa", Some(admin), Some(begun)).await;
    assert!(enrollment["secret"].is_string(), "{enrollment}");
    let tenant = check(&app, &doc, "GET", "/api/tenant", "/api/tenant", Some(admin), None).await;
    assert_eq!(tenant["require_mfa"], false, "{tenant}");
    let logins = check(&app, &doc, "GET", "/api/me/logins", "/api/me/logins", Some(admin), None).await;
    assert!(!logins["items"].as_array().expect("items").is_empty(), "{logins}");
    let renamed = check(&app, &doc, "PATCH", "/api/me", "/api/me", Some(admin), Some(json!({"name": "Ann"}))).await;
    assert_eq!(renamed["user"]["name"], "Ann");
    let member = json!({"email": "bo@acme.test", "role": "agent", "password": "bo-password-1"});
    let bo = check(&app, &doc, "POST", "/api/members", "/api/members", Some(admin), Some(member)).await;
    let bo_id = bo["user_id"].as_str().expect("user id").to_string();
    check(
        &app,
        &doc,
        "PATCH",
        "/api/members/{user_id}",
        &format!("/api/members/{bo_id}"),
        Some(admin),
        Some(json!({"role": "admin"})),
    )
    .await;
    check(&app, &doc, "GET", "/api/members", "/api/members", Some(admin), None).await;
    let invite = json!({"email": "cy@acme.test", "role": "agent"});
    let link = check(&app, &doc, "POST", "/api/invitations", "/api/invitations", Some(admin), Some(invite)).await;
    check(&app, &doc, "GET", "/api/invitations", "/api/invitations", Some(admin), None).await;
    let held = json!({"token": token(&link, "token")});
    check(&app, &doc, "POST", "/api/auth/invitation", "/api/auth/invitation", None, Some(held)).await;
    check(&app, &doc, "POST", "/unsubscribe", "/unsubscribe?token=none.AAAA", None, None).await;
    let accepting = json!({"token": token(&link, "token"), "password": "cy-password-1", "name": "Cy"});
    let path = "/api/auth/invitation/accept";
    let joined = check(&app, &doc, "POST", path, path, None, Some(accepting)).await;
    assert_eq!(joined["role"], "agent", "{joined}");
    let billing = json!({"name": "Billing", "member_ids": [bo_id]});
    let team = check(&app, &doc, "POST", "/api/teams", "/api/teams", Some(admin), Some(billing)).await;
    let team = format!("/api/teams/{}", team["id"].as_str().expect("team id"));
    check(&app, &doc, "GET", "/api/teams", "/api/teams", Some(admin), None).await;
    check(&app, &doc, "GET", "/api/teams/{id}", &team, Some(admin), None).await;
    check(&app, &doc, "PATCH", "/api/teams/{id}", &team, Some(admin), Some(json!({"name": "Payments"}))).await;
    let members = json!({"user_ids": []});
    check(&app, &doc, "PUT", "/api/teams/{id}/members", &format!("{team}/members"), Some(admin), Some(members)).await;

    let channels = check(&app, &doc, "GET", "/api/channels", "/api/channels", Some(admin), None).await;
    let channel = channels["items"][0]["id"].as_str().expect("channel").to_string();
    let one = format!("/api/channels/{channel}");
    check(&app, &doc, "GET", "/api/channels/{id}", &one, Some(admin), None).await;
    let settings = json!({"settings": {"auto_reply": {"enabled": true, "text": "Hi! We answer within the hour."},
        "auto_resolve": {"after_hours": 48}}});
    check(&app, &doc, "PATCH", "/api/channels/{id}", &one, Some(admin), Some(settings)).await;
    let members = json!({"user_ids": [bo_id]});
    check(&app, &doc, "PUT", "/api/channels/{id}/members", &format!("{one}/members"), Some(admin), Some(members)).await;
    let whatsapp = channels["items"].as_array().and_then(|cs| cs.iter().find(|c| c["platform"] == "whatsapp"));
    let whatsapp = whatsapp.and_then(|c| c["id"].as_str()).expect("a whatsapp channel");
    let templates = format!("/api/channels/{whatsapp}/templates");
    let listed = check(&app, &doc, "GET", "/api/channels/{id}/templates", &templates, Some(admin), None).await;
    assert_eq!(listed["items"][0]["name"], "hello_world", "{listed}");

    let convs = check(&app, &doc, "GET", "/api/conversations", "/api/conversations", Some(admin), None).await;
    assert!(convs["items"].as_array().is_some_and(|c| c.len() >= 2), "{convs}");
    for conv in convs["items"].as_array().into_iter().flatten() {
        let id = conv["id"].as_str().expect("id");
        let path = format!("/api/conversations/{id}");
        check(&app, &doc, "GET", "/api/conversations/{id}", &path, Some(admin), None).await;
        let msgs = format!("{path}/messages");
        check(&app, &doc, "GET", "/api/conversations/{id}/messages", &msgs, Some(admin), None).await;
    }
    // Errors have the documented shape too.
    let none =
        check(&app, &doc, "GET", "/api/conversations/{id}", "/api/conversations/999999", Some(admin), None).await;
    assert_eq!(none["error"]["code"], "not_found");
    let old = format!("/api/conversations/{}/messages", convs["items"][0]["id"].as_str().expect("id"));
    let late = json!({"text": "Sorry for the wait", "client_id": "c-0"});
    let refused = check(&app, &doc, "POST", "/api/conversations/{id}/messages", &old, Some(admin), Some(late)).await;
    assert_eq!(refused["error"]["code"], "outside_window", "the fixtures' messages are months old");

    // A customer writes now: that conversation can be answered. The frames
    // it brings carry the same objects as the REST answers.
    let mut socket = ws(&app, "", Some(admin), None).await.expect("ws");
    let hello = next(&mut socket, Duration::from_secs(3)).await.expect("hello");
    conforms(&doc, "Event", &hello);
    app.fake("POST", "/_fake/inbound", json!({"to": crate::channels::PAGE_A, "from": "4242", "text": "Still open?"}))
        .await;
    for (kind, data) in [("conversation.created", "Conversation"), ("message.created", "Message")] {
        let frame = until(&mut socket, kind, Duration::from_secs(5)).await.expect(kind);
        conforms(&doc, "Event", &frame);
        conforms(&doc, data, &frame["data"]);
    }
    crate::common::eventually("the new conversation", || async {
        let convs = app.call("GET", "/api/conversations", Some(admin), None).await.body;
        convs["items"].as_array().is_some_and(|c| c.iter().any(|c| c["contact"]["external_id"] == "4242"))
    })
    .await;
    let convs = check(&app, &doc, "GET", "/api/conversations", "/api/conversations", Some(admin), None).await;
    let counted = "/api/conversations/counts";
    let counts = check(&app, &doc, "GET", counted, &format!("{counted}?status=open"), Some(admin), None).await;
    assert!(counts["all"].as_i64().is_some_and(|n| n >= 1), "{counts}");
    check(&app, &doc, "GET", counted, &format!("{counted}?q=x"), Some(admin), None).await;
    let fresh = convs["items"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["contact"]["external_id"] == "4242"))
        .and_then(|c| c["id"].as_str())
        .expect("the new conversation")
        .to_string();
    let path = format!("/api/conversations/{fresh}");
    check(&app, &doc, "PATCH", "/api/conversations/{id}", &path, Some(admin), Some(json!({"status": "pending"}))).await;
    let reply = json!({"text": "On its way 📦", "client_id": "c-1"});
    check(
        &app,
        &doc,
        "POST",
        "/api/conversations/{id}/messages",
        &format!("{path}/messages"),
        Some(admin),
        Some(reply),
    )
    .await;

    let contacts = check(&app, &doc, "GET", "/api/contacts", "/api/contacts", Some(admin), None).await;
    let contact = format!("/api/contacts/{}", contacts["items"][0]["id"].as_str().expect("a contact"));
    check(&app, &doc, "GET", "/api/contacts/{id}", &contact, Some(admin), None).await;
    let attrs = "/api/contact-attributes";
    let tier = json!({"key": "tier", "name": "Tier", "type": "list", "options": ["gold", "silver"]});
    check(&app, &doc, "POST", attrs, attrs, Some(admin), Some(tier)).await;
    check(&app, &doc, "GET", attrs, attrs, Some(admin), None).await;
    let renamed = json!({"name": "Customer tier"});
    check(
        &app,
        &doc,
        "PATCH",
        "/api/contact-attributes/{key}",
        "/api/contact-attributes/tier",
        Some(admin),
        Some(renamed),
    )
    .await;
    let details = json!({"email": "rita@exemplo.pt", "notes": "Prefers mornings", "attributes": {"tier": "gold"}});
    check(&app, &doc, "PATCH", "/api/contacts/{id}", &contact, Some(admin), Some(details)).await;
    let scratch = json!({"key": "scratch", "name": "Scratch", "type": "text"});
    check(&app, &doc, "POST", attrs, attrs, Some(admin), Some(scratch)).await;
    let r = app.call("DELETE", "/api/contact-attributes/scratch", Some(admin), None).await;
    let documented = &doc["paths"]["/api/contact-attributes/{key}"]["delete"]["responses"]["204"];
    assert_eq!((r.status, documented.is_object()), (204, true));
    check(&app, &doc, "GET", "/api/reports/overview", "/api/reports/overview", Some(admin), None).await;
    let hooks = "/api/integrations/webhooks";
    let hook = json!({"url": "https://crm.example.com/hooks", "event_types": ["message.created"]});
    let made = check(&app, &doc, "POST", hooks, hooks, Some(admin), Some(hook)).await;
    let hook_path = format!("{hooks}/{}", made["id"].as_str().expect("id"));
    check(&app, &doc, "GET", hooks, hooks, Some(admin), None).await;
    let off = json!({"enabled": false});
    check(&app, &doc, "PATCH", "/api/integrations/webhooks/{id}", &hook_path, Some(admin), Some(off)).await;
    check(&app, &doc, "GET", "/api/labels", "/api/labels", Some(admin), None).await;
    let canned = json!({"shortcut": "ship", "text": "We ship to Lisbon."});
    check(&app, &doc, "POST", "/api/canned-responses", "/api/canned-responses", Some(admin), Some(canned)).await;
    check(&app, &doc, "GET", "/api/canned-responses", "/api/canned-responses", Some(admin), None).await;
    check(&app, &doc, "GET", "/api/audit-log", "/api/audit-log", Some(admin), None).await;
    check(&app, &doc, "POST", "/api/ws-ticket", "/api/ws-ticket", Some(admin), None).await;
    let tokens = "/api/me/tokens";
    let made =
        check(&app, &doc, "POST", tokens, tokens, Some(admin), Some(json!({"name": "CRM", "expires_in_days": 90})))
            .await;
    let api_token = made["token"].as_str().expect("token").to_string();
    check(&app, &doc, "GET", tokens, tokens, Some(&api_token), None).await;
    check(&app, &doc, "GET", "/api/api-tokens", "/api/api-tokens", Some(admin), None).await;
    check(&app, &doc, "GET", "/api/mentions", "/api/mentions", Some(admin), None).await;
    let thanks = json!({"name": "Thanks", "actions": [{"type": "add_labels", "labels": ["thanked"]}]});
    let made = check(&app, &doc, "POST", "/api/macros", "/api/macros", Some(admin), Some(thanks)).await;
    check(&app, &doc, "GET", "/api/macros", "/api/macros", Some(admin), None).await;
    let run = format!("{path}/macros/{}", made["id"].as_str().expect("id"));
    check(&app, &doc, "POST", "/api/conversations/{id}/macros/{macro_id}", &run, Some(admin), None).await;
    let mine = json!({"name": "Mine", "filters": {"assignee": "me", "unread": true}});
    let view = check(&app, &doc, "POST", "/api/views", "/api/views", Some(admin), Some(mine)).await;
    check(&app, &doc, "GET", "/api/views", "/api/views", Some(admin), None).await;
    let view_path = format!("/api/views/{}", view["id"].as_str().expect("id"));
    let open = json!({"name": "Open", "filters": {"status": "open"}});
    check(&app, &doc, "PATCH", "/api/views/{id}", &view_path, Some(admin), Some(open)).await;
    let bad = json!({"name": "Bad", "filters": {"colour": "red"}});
    check(&app, &doc, "POST", "/api/views", "/api/views", Some(admin), Some(bad)).await;
}

/// A body the schema describes: every property, each with a plausible
/// value (an id this test made where the name says which, a future time,
/// an address), so that most endpoints get past their first check.
fn example(doc: &Value, schema: &Value, name: &str, ids: &Ids) -> Value {
    if let Some(r) = schema["$ref"].as_str() {
        let named = r.trim_start_matches("#/components/schemas/");
        return example(doc, &doc["components"]["schemas"][named], name, ids);
    }
    if let Some(all) = schema["allOf"].as_array() {
        let mut merged = serde_json::Map::new();
        for s in all {
            if let Value::Object(part) = example(doc, s, name, ids) {
                merged.extend(part);
            }
        }
        return Value::Object(merged);
    }
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.first()) {
        return first.clone();
    }
    let soon = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    match schema["type"].as_str() {
        Some("object") => Value::Object(
            schema["properties"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, s)| (k.clone(), example(doc, s, k, ids)))
                .collect(),
        ),
        Some("array") => {
            let n = schema["minItems"].as_u64().unwrap_or(1).max(1) as usize;
            Value::Array(vec![example(doc, &schema["items"], name.trim_end_matches('s'), ids); n])
        }
        Some("integer") | Some("number") => json!(schema["minimum"].as_i64().unwrap_or(1)),
        Some("boolean") => json!(name != "require_mfa"),
        _ if schema["format"] == "date-time" => json!(soon),
        _ => json!(match name {
            "email" | "owner_email" => "zoe@acme.test",
            "password" | "new_password" | "owner_password" => "a-long-password-1",
            "url" => "https://hooks.example.com/switchboard",
            "channel_id" => ids.whatsapp.as_str(),
            "contact_id" => ids.contact.as_str(),
            "assignee_id" | "user_id" | "user_ids" => ids.agent.as_str(),
            "emoji" => "👍",
            "phone_number" => "+351 912 345 678",
            "slug" | "tenant" => "acme",
            "key" => "tier",
            _ => "hello",
        }),
    }
}

/// What is wrong with an answer, if anything: a 5xx (but 503
/// `mail_unavailable`: this server sends no mail, which a password reset
/// says so), or an error without the JSON error shape.
fn breach(what: String, status: u16, text: &str) -> Option<String> {
    let answer: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let shaped = answer
        .pointer("/error/code")
        .and_then(Value::as_str)
        .is_some_and(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        && answer.pointer("/error/message").and_then(Value::as_str).is_some_and(|m| !m.is_empty());
    let mail_off = status == 503 && answer.pointer("/error/code") == Some(&json!("mail_unavailable"));
    ((status >= 500 && !mail_off) || (status >= 400 && !shaped))
        .then(|| format!("{what}: {status} {}", text.chars().take(200).collect::<String>()))
}

/// Sends `ask`: its status and text, counted in `tried`; or none, noted in
/// `wrong` under `what`.
async fn answer(
    ask: reqwest::RequestBuilder,
    what: &str,
    tried: &mut usize,
    wrong: &mut Vec<String>,
) -> Option<(u16, String)> {
    match ask.send().await {
        Ok(res) => {
            *tried += 1;
            let status = res.status().as_u16();
            Some((status, res.text().await.unwrap_or_default()))
        }
        Err(e) => {
            wrong.push(format!("{what}: no answer ({e})"));
            None
        }
    }
}

/// `text` as one segment of a path (percent-encoded but for letters,
/// digits and `-._~`).
fn urlencoding(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A new member of the admin's tenant.
async fn member(app: &TestApp, admin: &str, email: &str, role: &str, password: &str) -> crate::common::Resp {
    let body = json!({"email": email, "role": role, "password": password});
    app.call("POST", "/api/members", Some(admin), Some(body)).await
}

/// What this test made, for paths and bodies to name.
struct Ids {
    whatsapp: String,
    contact: String,
    agent: String,
    conversation: String,
    message: String,
}

impl Ids {
    /// `template` with the ids this test made; anything else names a thing
    /// it did not make (404, after the body is read).
    fn path_of(&self, template: &str) -> String {
        let mut path = template.to_string();
        for (prefix, id) in [
            ("/api/members/{user_id}", &self.agent),
            ("/api/channels/{id}", &self.whatsapp),
            ("/api/conversations/{id}", &self.conversation),
            ("/api/messages/{id}", &self.message),
            ("/api/contacts/{id}", &self.contact),
        ] {
            if template.starts_with(prefix) {
                let param = &prefix[prefix.rfind('{').expect("a parameter")..];
                path = path.replacen(param, id, 1);
            }
        }
        while let (Some(a), Some(b)) = (path.find('{'), path.find('}')) {
            path.replace_range(a..=b, "1");
        }
        path
    }
}

/// A tenant whose customer wrote just now (the reply window is open), with
/// a reply, an agent and the served document: what the documented writes
/// name.
struct Shop {
    doc: Value,
    admin: String,
    ids: Ids,
    channels: Value,
}

async fn shop(app: &TestApp) -> Shop {
    let doc = app.call("GET", "/api/openapi.json", None, None).await.body;
    let admin = acme(app).await.admin;
    let mut customer: Value = serde_json::from_slice(&fixture("messenger_text.json")).expect("fixture");
    customer["entry"][0]["messaging"][0]["timestamp"] = json!(chrono::Utc::now().timestamp_millis());
    assert_eq!(app.webhook(&serde_json::to_vec(&customer).expect("json")).await, 200);
    app.processed().await;
    let agent = member(app, &admin, "bo@acme.test", "agent", "bo-password-12").await;
    let channels = app.call("GET", "/api/channels", Some(&admin), None).await.body;
    let whatsapp = channels["items"].as_array().expect("channels").iter().find(|c| c["platform"] == "whatsapp");
    let convs = app.call("GET", "/api/conversations", Some(&admin), None).await.body;
    let conversation = convs["items"][0]["id"].as_str().expect("a conversation").to_string();
    let reply = app
        .call(
            "POST",
            &format!("/api/conversations/{conversation}/messages"),
            Some(&admin),
            Some(json!({"text": "Olá!", "client_id": "shape-1"})),
        )
        .await;
    let ids = Ids {
        whatsapp: whatsapp.and_then(|c| c["id"].as_str()).expect("the WhatsApp channel").to_string(),
        contact: convs["items"][0]["contact"]["id"].as_str().expect("contact").to_string(),
        agent: agent.body["user_id"].as_str().expect("the agent's id").to_string(),
        conversation,
        message: reply.body["id"].as_str().expect("the reply's id").to_string(),
    };
    Shop { doc, admin, ids, channels }
}

/// Every documented write that takes a JSON body, with a body, and how
/// many of the first are bodies that must be taken. A body made from the
/// schema alone stops at some endpoints' first check (a field that
/// excludes another, an action of one kind): the first bodies, each taken
/// as it is, reach the work behind. They come first, before other bodies
/// block the contact or end the conversation; the tenant's own settings
/// come last, since whether it requires two-step sign-in changes what the
/// rest may do.
fn bodies(doc: &Value, ids: &Ids) -> (Vec<(String, String, Value)>, usize) {
    let mut operations: Vec<(String, String, Value)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(template, ops)| {
            ops.as_object().into_iter().flatten().filter_map(move |(method, op)| {
                let schema = op.pointer("/requestBody/content/application~1json/schema")?;
                Some((method.to_uppercase(), template.clone(), schema.clone()))
            })
        })
        .collect();
    operations.sort_by_key(|(_, template, _)| template == "/api/tenant");
    assert!(operations.len() >= 50, "only {} bodies documented", operations.len());
    let soon = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let taken: Vec<(&str, &str, Value)> = vec![
        ("POST", "/api/conversations/{id}/scheduled-messages", json!({"text": "Até amanhã", "send_at": soon})),
        ("POST", "/api/conversations/{id}/messages", json!({"text": "Olá 🙂", "client_id": "odd-base"})),
        ("PATCH", "/api/conversations/{id}", json!({"status": "pending", "priority": "high"})),
        (
            "PATCH",
            "/api/channels/{id}",
            json!({"name": "Loja", "settings": {"auto_reply": {"enabled": true, "text": "Já respondemos"}, "notifications": true}}),
        ),
        ("POST", "/api/teams", json!({"name": "Vendas", "description": "quem vende", "member_ids": [ids.agent]})),
        (
            "POST",
            "/api/macros",
            json!({"name": "Obrigado", "actions": [{"type": "add_labels", "labels": ["vip"]}, {"type": "set_status", "status": "resolved"}, {"type": "snooze", "hours": 2}]}),
        ),
        (
            "POST",
            "/api/contact-attributes",
            json!({"key": "tier", "name": "Tier", "type": "list", "options": ["gold", "silver"]}),
        ),
        ("PATCH", "/api/contacts/{id}", json!({"name": "Zoë", "email": "zoe@exemplo.pt", "phone": "+351 912 345 678"})),
        ("POST", "/api/notifications/read", json!({"all": true})),
        ("PATCH", "/api/members/{user_id}", json!({"role": "admin"})),
        ("POST", "/api/conversations/bulk", json!({"ids": [ids.conversation], "add_labels": ["vip"]})),
        (
            "POST",
            "/api/conversations",
            json!({"channel_id": ids.whatsapp, "phone_number": "+34 612 345 678", "client_id": "start-1",
                "template": {"name": "hello_world", "language": "en_US"}}),
        ),
        (
            "POST",
            "/api/broadcasts",
            json!({"channel_id": ids.whatsapp, "name": "Novidades", "client_id": "news-1",
                "template": {"name": "hello_world", "language": "en_US"}, "to": {"phone_numbers": ["+34 612 345 679"]}}),
        ),
        (
            "POST",
            "/api/channels/{id}/templates",
            json!({"name": "aviso_chegada", "language": "pt_BR", "category": "UTILITY", "body": "O seu pedido chegou à loja."}),
        ),
    ];
    let mut bases: Vec<(String, String, Value)> =
        taken.into_iter().map(|(m, t, body)| (m.to_string(), t.to_string(), body)).collect();
    let reaching = bases.len();
    bases.extend(operations.iter().map(|(m, t, schema)| (m.clone(), t.clone(), example(doc, schema, "", ids))));
    (bases, reaching)
}

/// Every documented write under /api that takes no body.
fn bodiless(doc: &Value) -> Vec<(String, String, Value)> {
    doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .filter(|(template, _)| template.starts_with("/api/"))
        .flat_map(|(template, ops)| {
            ops.as_object().into_iter().flatten().filter_map(move |(method, op)| {
                let writes = matches!(method.as_str(), "post" | "patch" | "put" | "delete");
                (writes && op.get("requestBody").is_none())
                    .then(|| (method.to_uppercase(), template.clone(), Value::Null))
            })
        })
        .collect()
}

/// Every query parameter the served document names, and every id in its
/// paths, given odd text; every JSON body it describes, as its schema says
/// and with each value in turn retyped or removed (`meta::variants`), and
/// the whole body replaced by other JSON: no answer is a 5xx, every error
/// has the JSON error shape, no valid JSON is 400 nor any query 422 (API.md
/// keeps 422 for JSON with invalid values), and an id in a path that names
/// nothing is 404. The contract's promise for bad input, tried
/// on every endpoint, today's and tomorrow's (the list comes from the
/// document).
#[actix_web::test]
async fn every_documented_body_of_any_shape_is_answered_as_the_contract_says() {
    use switchboard::meta::variants::{every_variant, odd_values};
    let app = spawn_app().await;
    let Shop { doc, admin, ids, channels } = shop(&app).await;
    let admin = admin.as_str();
    let path_of = |template: &str| ids.path_of(template);
    // Every documented query parameter, and every id in a path, as other
    // text: a number too large, U+0000, emoji, JSON, nothing.
    let odd_texts =
        ["", "-1", "0", "1e300", "99999999999999999999999", "x\u{0}y", "🙂 ü 中 \u{202e}", "[]", "{}", "null"];
    let mut wrong = Vec::new();
    let mut tried = 0;
    for (template, ops) in doc["paths"].as_object().expect("paths") {
        let Some(get) = ops.get("get") else { continue };
        let path = path_of(template);
        let queried = get["parameters"].as_array().into_iter().flatten().filter(|p| p["in"] == "query");
        // Each ask, and whether it is odd in a query (else in the path).
        let mut asks: Vec<(String, bool, reqwest::RequestBuilder)> = Vec::new();
        for parameter in queried {
            let name = parameter["name"].as_str().expect("a name");
            for text in odd_texts {
                let ask = app.client.get(app.url(&path)).query(&[(name, text)]);
                asks.push((format!("GET {path}?{name}={text:?}"), true, ask));
            }
        }
        if template.contains('{') {
            for text in odd_texts.iter().filter(|t| !t.is_empty()) {
                let at = template.find('{').expect("a parameter");
                let end = template[at..].find('}').expect("its end") + at;
                let odd = format!("{}{}{}", &template[..at], urlencoding(text), &template[end + 1..]);
                let odd = path_of(&odd);
                asks.push((format!("GET {odd}"), false, app.client.get(app.url(&odd))));
            }
        }
        for (what, in_query, ask) in asks {
            if let Some((status, text)) = answer(ask.bearer_auth(admin), &what, &mut tried, &mut wrong).await {
                // A query is not JSON: what will not do there is a 400 (422 is
                // for JSON). A path that names nothing is a 404.
                if (in_query && status == 422) || (!in_query && status != 404) {
                    wrong.push(format!("{what}: {status} {text}"));
                }
                wrong.extend(breach(what, status, &text));
            }
        }
    }
    let (bases, reaching) = bodies(&doc, &ids);
    // Viewers never write: as a viewer, each of these bodies is refused,
    // but where a person acts on their own account (their profile, logins,
    // tokens, two-step sign-in, notifications, personal views) or on no
    // account at all (signing in, sign-up, invitations, resets).
    let viewer = {
        let added = member(&app, admin, "vera@acme.test", "viewer", "vera-password-12").await;
        assert_eq!(added.status, 201, "{:?}", added.body);
        // She and the agent of every channel, so that what refuses them is
        // their role, not what they may see.
        for channel in channels["items"].as_array().expect("channels") {
            let members = format!("/api/channels/{}/members", channel["id"].as_str().expect("id"));
            let both = json!({"user_ids": [added.body["user_id"], ids.agent]});
            let put = app.call("PUT", &members, Some(admin), Some(both)).await;
            assert_eq!(put.status, 200, "{:?}", put.body);
        }
        token(&app.login("vera@acme.test", "vera-password-12", "acme").await, "access_token")
    };
    let own = [
        "PATCH /api/me",
        "POST /api/me/tokens",
        "POST /api/me/mfa",
        "DELETE /api/me/mfa",
        "POST /api/me/mfa/confirm",
        "POST /api/me/mfa/recovery-codes",
        "POST /api/notifications/read",
        "POST /api/views",
        "PATCH /api/views/{id}",
        "POST /api/auth/login",
        "POST /api/auth/refresh",
        "POST /api/auth/logout",
        "POST /api/auth/mfa-setup",
        "POST /api/auth/mfa-setup/confirm",
        "POST /api/auth/invitation",
        "POST /api/auth/invitation/accept",
        "POST /api/auth/password-reset",
        "POST /api/auth/password-reset/confirm",
        "POST /api/tenants",
    ];
    // And what the document says is for admins is refused an agent. The
    // writes that take no body go too, without one.
    let agent = token(&app.login("bo@acme.test", "bo-password-12", "acme").await, "access_token");
    let bodiless = bodiless(&doc);
    assert!(bodiless.len() >= 25, "only {} writes without a body", bodiless.len());
    // What the document marks for admins is not read by an agent either.
    for (template, ops) in doc["paths"].as_object().expect("paths") {
        let summary = ops["get"]["summary"].as_str().unwrap_or_default();
        if !template.starts_with("/api/") || !summary.to_lowercase().contains("admin") {
            continue;
        }
        let res = app.client.get(app.url(&path_of(template))).bearer_auth(&agent).send().await;
        let status = res.map(|r| r.status().as_u16()).unwrap_or(0);
        if (200..300).contains(&status) {
            wrong.push(format!("GET {template} as an agent: {status}"));
        }
    }
    let own = [
        &own[..],
        &[
            "DELETE /api/me/logins",
            "DELETE /api/me/logins/{id}",
            "DELETE /api/me/tokens/{id}",
            "DELETE /api/api-tokens/{id}",
        ],
        &["DELETE /api/views/{id}", "POST /api/ws-ticket"],
    ]
    .concat();
    for (i, (method, template, base)) in bases.iter().chain(&bodiless).enumerate() {
        let named = format!("{method} {template}");
        let summary = doc["paths"][template.as_str()][method.to_lowercase()]["summary"].as_str().unwrap_or_default();
        let for_admins = summary.contains("(admin");
        for (who, t) in [("a viewer", &viewer), ("an agent", &agent)] {
            if who == "an agent" && !for_admins {
                continue;
            }
            let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let ask = app.client.request(m, app.url(&path_of(template))).bearer_auth(t);
            let res = if base.is_null() { ask.send().await } else { ask.json(base).send().await };
            let status = res.map(|r| r.status().as_u16()).unwrap_or(0);
            let refused = if i < reaching { status == 403 } else { !(200..300).contains(&status) };
            if !refused && !own.contains(&named.as_str()) {
                wrong.push(format!("{named} as {who}: {status}"));
            }
        }
    }
    for (i, (method, template, base)) in bases.iter().enumerate() {
        let path = path_of(template);
        let mut bodies = vec![("as documented".to_string(), base.clone())];
        bodies.extend(every_variant(base, &odd_values()));
        for whole in [json!(null), json!([]), json!("text"), json!(7), json!([base.clone()])] {
            bodies.push((format!("the body {whole}"), whole));
        }
        for (what, body) in bodies {
            let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let ask = app.client.request(m, app.url(&path)).bearer_auth(admin).json(&body);
            let named = format!("{method} {path} {what}");
            if let Some((status, text)) = answer(ask, &named, &mut tried, &mut wrong).await {
                if i < reaching && what == "as documented" && !(200..300).contains(&status) {
                    wrong.push(format!("{method} {path}, a body that should be taken: {status} {text}"));
                }
                // API.md: 400 is for input that is not JSON; valid JSON with
                // values that will not do is 422.
                if status == 400 {
                    wrong.push(format!("{named}: 400 for valid JSON (422 expected) {text}"));
                }
                wrong.extend(breach(named, status, &text));
            }
        }
    }
    assert!(tried > 5_000, "only {tried} requests tried");
    assert!(wrong.is_empty(), "{} of {tried} answers break the contract:\n{}", wrong.len(), wrong.join("\n"));
    // The server still answers as before.
    assert_eq!(app.call("GET", "/api/conversations", Some(admin), None).await.status, 200);
}

/// Clients retry, and a double click sends twice: every documented write,
/// sent five times at once, is answered as the contract says. No 5xx (not
/// even a 503 for a deadlock or a serialization failure the server should
/// have tried again itself), every error in the JSON shape, and where one
/// copy is taken the others are taken too, or refused as a conflict or a
/// limit (or, for a removal, as already gone). What a retry must not make
/// twice exists once.
#[actix_web::test]
async fn every_documented_write_sent_five_times_at_once_is_answered_as_once() {
    let app = spawn_app().await;
    let Shop { doc, admin, ids, .. } = shop(&app).await;
    let (mut writes, _) = bodies(&doc, &ids);
    let mut bodiless = bodiless(&doc);
    // Removals last, so that what they remove was written to first.
    bodiless.sort_by_key(|(method, _, _)| method == "DELETE");
    writes.extend(bodiless);
    let mut wrong = Vec::new();
    for (method, template, body) in &writes {
        let path = ids.path_of(template);
        let copy = || {
            let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let ask = app.client.request(m, app.url(&path)).bearer_auth(&admin);
            let ask = if body.is_null() { ask } else { ask.json(body) };
            async move {
                match ask.send().await {
                    Ok(res) => (res.status().as_u16(), res.text().await.unwrap_or_default()),
                    Err(e) => (0, e.to_string()),
                }
            }
        };
        let answers = futures_util::future::join_all((0..5).map(|_| copy())).await;
        let named = format!("{method} {path}");
        for (status, text) in &answers {
            if *status == 0 {
                wrong.push(format!("{named}: no answer ({text})"));
            }
            wrong.extend(breach(named.clone(), *status, text));
        }
        let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
        let taken = statuses.iter().any(|s| (200..300).contains(s));
        let as_once = |s: &u16| (200..300).contains(s) || [409, 429].contains(s) || (method == "DELETE" && *s == 404);
        if taken && !statuses.iter().all(as_once) {
            wrong.push(format!("{named}: {statuses:?} {:?}", answers.iter().map(|(_, t)| t).collect::<Vec<_>>()));
        }
        // Each copy taken names the one thing made, but where each call
        // makes a new one by design: a token (its secret shown once), an
        // invitation (a new link replaces the last).
        let mut made: Vec<Value> = answers
            .iter()
            .filter(|(s, _)| (200..300).contains(s))
            .filter_map(|(_, text)| serde_json::from_str::<Value>(text).ok()?.get("id").cloned())
            .collect();
        made.sort_by_key(Value::to_string);
        made.dedup();
        let anew = ["POST /api/me/tokens", "POST /api/invitations"].contains(&format!("{method} {template}").as_str());
        if made.len() > 1 && !anew {
            wrong.push(format!("{named}: five copies made {made:?}"));
        }
    }
    assert!(writes.len() >= 90, "only {} writes documented", writes.len());
    assert!(
        wrong.is_empty(),
        "{} of {} writes answered five copies wrongly:\n{}",
        wrong.len(),
        writes.len(),
        wrong.join("\n")
    );
}

/// What an odd request is called, its headers and its body.
type Envelope = (&'static str, Vec<(&'static str, &'static str)>, Vec<u8>);

/// The body's envelope, odd in the ways a client or a proxy gets it
/// wrong: no media type, another one, a charset the server does not read,
/// a compression the body is not in, nothing at all, text not in UTF-8,
/// JSON cut short, no JSON at all.
/// Every documented write answers a 4xx in the JSON error shape (or takes
/// it, where it reads no body), never a 5xx or a dropped connection; what
/// is not JSON is 400 `invalid_json`, wherever it goes wrong (API.md); and
/// every documented path, asked with another method (a preflight, HEAD,
/// TRACE, one nobody knows), answers without a 5xx, its errors shaped.
#[actix_web::test]
async fn every_documented_write_in_an_odd_envelope_is_refused_in_the_json_shape() {
    let app = spawn_app().await;
    let Shop { doc, admin, ids, .. } = shop(&app).await;
    let (writes, _) = bodies(&doc, &ids);
    let mut wrong = Vec::new();
    let mut tried = 0;
    for (method, template, body) in &writes {
        let path = ids.path_of(template);
        let json = serde_json::to_vec(body).expect("json");
        let envelopes: Vec<Envelope> = vec![
            ("no media type", vec![], json.clone()),
            ("as text/plain", vec![("content-type", "text/plain")], json.clone()),
            ("as a form", vec![("content-type", "application/x-www-form-urlencoded")], b"a=1&b=2".to_vec()),
            ("in UTF-16", vec![("content-type", "application/json; charset=utf-16")], json.clone()),
            ("said gzipped", vec![("content-type", "application/json"), ("content-encoding", "gzip")], json.clone()),
            (
                "said in br",
                vec![("content-type", "application/json"), ("content-encoding", "br")],
                b"\x00\x01".to_vec(),
            ),
            ("empty", vec![("content-type", "application/json")], Vec::new()),
            ("as latin-1", vec![("content-type", "application/json")], b"{\"text\": \"ol\xe1\"}".to_vec()),
            ("with a BOM", vec![("content-type", "application/json")], [b"\xef\xbb\xbf".as_slice(), &json].concat()),
            ("cut short", vec![("content-type", "application/json")], json[..json.len() - 1].to_vec()),
            ("not JSON", vec![("content-type", "application/json")], b"text=1".to_vec()),
        ];
        for (what, headers, bytes) in envelopes {
            let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let mut ask = app.client.request(m, app.url(&path)).bearer_auth(&admin).body(bytes);
            for (name, value) in headers {
                ask = ask.header(name, value);
            }
            let named = format!("{method} {path} {what}");
            if let Some((status, text)) = answer(ask, &named, &mut tried, &mut wrong).await {
                // API.md: bad input that is not JSON is a 400 (once the
                // credential holds: the operator's routes take another).
                let not_json = matches!(what, "cut short" | "not JSON") && status != 401;
                if not_json && (status != 400 || !text.contains("\"invalid_json\"")) {
                    wrong.push(format!("{named}: {status} (400 invalid_json expected) {text}"));
                }
                wrong.extend(breach(named, status, &text));
            }
        }
    }
    // And every documented path asked with the other methods: a preflight
    // (a browser's, from anywhere), HEAD, TRACE, one nobody knows.
    for template in doc["paths"].as_object().expect("paths").keys() {
        let path = ids.path_of(template);
        for method in ["OPTIONS", "HEAD", "TRACE", "PURGE"] {
            let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let ask = app
                .client
                .request(m, app.url(&path))
                .bearer_auth(&admin)
                .header("origin", "https://evil.example")
                .header("access-control-request-method", "POST");
            let named = format!("{method} {path}");
            if let Some((status, text)) = answer(ask, &named, &mut tried, &mut wrong).await {
                // A HEAD answer has no body to shape.
                match method {
                    "HEAD" if status >= 500 => wrong.push(format!("{named}: {status}")),
                    "HEAD" => {}
                    _ => wrong.extend(breach(named, status, &text)),
                }
            }
        }
    }
    assert!(tried > 500, "only {tried} requests tried");
    assert!(wrong.is_empty(), "{} of {tried} answers break the contract:\n{}", wrong.len(), wrong.join("\n"));
}

/// What tenant `id` holds: for each table of its schema, and each row of
/// the public tables that names it (`tenant_id`), its rows' count and the
/// sum of their hashes.
fn holdings(app: &TestApp, schema: &str, id: i64) -> Vec<(String, i64, i64)> {
    use diesel::{sql_types::Text, QueryableByName, RunQueryDsl};
    #[derive(QueryableByName)]
    struct Table {
        #[diesel(sql_type = Text)]
        name: String,
    }
    let mut conn = app.db.conn();
    let tables = |sql: String, conn: &mut diesel::PgConnection| -> Vec<String> {
        diesel::sql_query(sql).load::<Table>(conn).expect("tables").into_iter().map(|t| t.name).collect()
    };
    let own = tables(
        format!("SELECT table_name AS name FROM information_schema.tables WHERE table_schema = '{schema}' ORDER BY 1"),
        &mut conn,
    );
    let shared = tables(
        "SELECT table_name AS name FROM information_schema.columns \
         WHERE table_schema = 'public' AND column_name = 'tenant_id' ORDER BY 1"
            .to_string(),
        &mut conn,
    );
    let mut out = Vec::new();
    let mut add = |name: String, from: String| {
        let n = app.count(&format!("SELECT count(*) AS n FROM {from}"));
        let sum = app.count(&format!("SELECT coalesce(sum(hashtext(t::text)::bigint), 0)::bigint AS n FROM {from}"));
        out.push((name, n, sum));
    };
    for table in own {
        add(format!("{schema}.{table}"), format!("{schema}.\"{table}\" t"));
    }
    for table in shared {
        add(format!("public.{table}"), format!("(SELECT * FROM public.\"{table}\" WHERE tenant_id = {id}) t"));
    }
    add("public.tenants".into(), format!("(SELECT * FROM public.tenants WHERE id = {id}) t"));
    out
}

/// Marks the shop's conversation with `mark` where only those who see its
/// channel may read it (a note, a label, the customer's name); its path.
async fn mark_the_conversation(app: &TestApp, admin: &str, ids: &Ids, mark: &str) -> String {
    let conversation = format!("/api/conversations/{}", ids.conversation);
    let note = json!({"text": mark, "private": true, "client_id": "mark-note"});
    let r = app.call("POST", &format!("{conversation}/messages"), Some(admin), Some(note)).await;
    assert!((200..300).contains(&r.status), "{:?}", r.body);
    let r = app.call("PATCH", &conversation, Some(admin), Some(json!({"add_labels": [mark]}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r =
        app.call("PATCH", &format!("/api/contacts/{}", ids.contact), Some(admin), Some(json!({"name": mark}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    conversation
}

/// Sends every documented body once, as the admin, taken or not: something
/// in most lists.
async fn write_each_once(app: &TestApp, admin: &str, doc: &Value, ids: &Ids) {
    let (writes, _) = bodies(doc, ids);
    for (method, template, body) in &writes {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let _ = app.client.request(m, app.url(&ids.path_of(template))).bearer_auth(admin).json(body).send().await;
    }
}

/// Acme's [`holdings`] once they stay the same for a second (what its
/// workers still had to do, done: a delivery under way, a name looked up).
async fn idle(app: &TestApp, acme_id: i64) -> Vec<(String, i64, i64)> {
    let mut last = holdings(app, "tenant_acme", acme_id);
    for _ in 0..15 {
        actix_web::rt::time::sleep(Duration::from_secs(1)).await;
        let now = holdings(app, "tenant_acme", acme_id);
        if now == last {
            return now;
        }
        eprintln!("acme not idle yet: {:?}", changes(&last, &now));
        last = now;
    }
    panic!("acme never idle");
}

/// The tables whose [`holdings`] differ between `before` and `after`.
fn changes(before: &[(String, i64, i64)], after: &[(String, i64, i64)]) -> Vec<String> {
    assert_eq!(before.len(), after.len(), "the same tables");
    before.iter().zip(after).filter(|(b, a)| b != a).map(|(b, a)| format!("{}: {} rows → {}", b.0, b.1, a.1)).collect()
}

/// Waits until the shop's reply was read (the fake's receipts come a
/// moment after the send) and every webhook processed.
async fn settled(app: &TestApp) {
    crate::common::eventually("the reply read", || async {
        app.count("SELECT count(*) AS n FROM tenant_acme.messages WHERE client_id = 'shape-1' AND status = 'read'") == 1
    })
    .await;
    app.processed().await;
}

/// Someone who should see nothing of what `ids` name sends every
/// documented read (before and after the rest), and every write, with
/// those ids: the answers that show any of `secrets`.
async fn outsider(app: &TestApp, doc: &Value, ids: &Ids, token: &str, secrets: &[&str]) -> Vec<String> {
    let shows = |text: &str| secrets.iter().any(|s| text.contains(s));
    let reads: Vec<String> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .filter(|(template, ops)| template.starts_with("/api/") && ops.get("get").is_some())
        .map(|(template, _)| ids.path_of(template))
        .collect();
    let read_all = |when: &'static str| {
        let reads = &reads;
        async move {
            let mut seen = Vec::new();
            for path in reads {
                for query in ["", "?q=only", "?limit=200"] {
                    let r = app.client.get(app.url(&format!("{path}{query}"))).bearer_auth(token).send().await;
                    let text = match r {
                        Ok(r) => r.text().await.unwrap_or_default(),
                        Err(e) => format!("no answer: {e}"),
                    };
                    if shows(&text) {
                        seen.push(format!("{when}: GET {path}{query}: {}", text.chars().take(300).collect::<String>()));
                    }
                }
            }
            seen
        }
    };
    let mut wrong = read_all("before the writes").await;
    let (writes, _) = bodies(doc, ids);
    let mut bodiless = bodiless(doc);
    bodiless.sort_by_key(|(method, _, _)| method == "DELETE");
    for (method, template, body) in writes.iter().chain(&bodiless) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let ask = app.client.request(m, app.url(&ids.path_of(template))).bearer_auth(token);
        let res = if body.is_null() { ask.send().await } else { ask.json(body).send().await };
        let text = match res {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => format!("no answer: {e}"),
        };
        if shows(&text) {
            wrong.push(format!("{method} {template}: {}", text.chars().take(300).collect::<String>()));
        }
    }
    app.processed().await;
    wrong.extend(read_all("after the writes").await);
    wrong
}

/// Tenants share one database, its public tables and its id sequences'
/// shapes: a second tenant's admin sends every documented request, with
/// the first tenant's ids in the paths and bodies (its conversation,
/// contact, message, channel, agent…), reads nothing of the first's (no
/// answer holds a mark only the first's things carry, or its customer's
/// id), and changes nothing of it (every table of its schema, and every
/// row of the public tables that names it, as before).
#[actix_web::test]
async fn a_second_tenant_reads_and_changes_nothing_of_the_first() {
    let app = spawn_app().await;
    let Shop { doc, admin, ids, .. } = shop(&app).await;
    let mark = "acme-only-q7z";
    for (path, body) in [
        ("/api/canned-responses", json!({"shortcut": mark, "text": mark})),
        ("/api/teams", json!({"name": mark, "member_ids": [ids.agent]})),
        ("/api/macros", json!({"name": mark, "actions": [{"type": "add_labels", "labels": [mark]}]})),
        ("/api/views", json!({"name": mark, "filters": {"q": mark}})),
        ("/api/contact-attributes", json!({"key": "acme_only", "name": mark, "type": "text"})),
        ("/api/integrations/webhooks", json!({"url": format!("https://hooks.example.com/{mark}")})),
        ("/api/invitations", json!({"email": format!("{mark}@acme.test"), "role": "agent"})),
        ("/api/me/tokens", json!({"name": mark})),
    ] {
        let r = app.call("POST", path, Some(&admin), Some(body)).await;
        assert!((200..300).contains(&r.status), "{path}: {:?}", r.body);
    }
    let conversation = mark_the_conversation(&app, &admin, &ids, mark).await;
    // Idle before the second comes: its endpoint off (a receiver that
    // does not resolve is tried again and again), its reply read (the
    // fake's receipts come a moment after the send).
    let hooks = app.call("GET", "/api/integrations/webhooks", Some(&admin), None).await.body;
    let hook = format!("/api/integrations/webhooks/{}", hooks["items"][0]["id"].as_str().expect("id"));
    let off = app.call("PATCH", &hook, Some(&admin), Some(json!({"enabled": false}))).await;
    assert_eq!(off.status, 200, "{:?}", off.body);
    settled(&app).await;
    let acme_id = app.count("SELECT id AS n FROM public.tenants WHERE slug = 'acme'");
    let before = idle(&app, acme_id).await;
    let beta = token(&app.signup("beta", "bo@beta.test", "beta-password-1").await, "access_token");
    let wrong = outsider(&app, &doc, &ids, &beta, &[mark, "7392015648120394"]).await;
    assert!(wrong.is_empty(), "the second tenant read the first's:\n{}", wrong.join("\n"));
    let after = holdings(&app, "tenant_acme", acme_id);
    let changed = changes(&before, &after);
    assert!(changed.is_empty(), "the second tenant changed the first's:\n{}", changed.join("\n"));
    // And the first still works as before.
    assert_eq!(app.call("GET", &conversation, Some(&admin), None).await.status, 200);
}

/// Agents see only their channels: an agent of none sends every documented
/// read and write with the ids of a conversation, its contact and its
/// messages. No answer holds anything of them (the customer's name, a
/// note, a label, the customer's id), and nothing of any channel changes
/// (the tables of channels, contacts, conversations, messages and what
/// hangs on them).
#[actix_web::test]
async fn an_agent_reads_and_changes_nothing_of_channels_not_theirs() {
    let app = spawn_app().await;
    let Shop { doc, admin, ids, .. } = shop(&app).await;
    let mark = "page-only-k3v";
    mark_the_conversation(&app, &admin, &ids, mark).await;
    settled(&app).await;
    let agent = token(&app.login("bo@acme.test", "bo-password-12", "acme").await, "access_token");
    let theirs = app.call("GET", "/api/channels", Some(&agent), None).await.body;
    assert_eq!(theirs["items"], json!([]), "an agent of no channel");
    let acme_id = app.count("SELECT id AS n FROM public.tenants WHERE slug = 'acme'");
    let channels_of = |app: &TestApp| {
        let bound = [
            "channels",
            "channel_members",
            "contacts",
            "contact_former_numbers",
            "contact_links",
            "conversations",
            "messages",
            "media_copies",
            "note_mentions",
            "scheduled_messages",
            "csat_surveys",
            "broadcasts",
            "broadcast_recipients",
        ]
        .map(|t| format!("tenant_acme.{t}"));
        let all = holdings(app, "tenant_acme", acme_id);
        let kept: Vec<_> = all.into_iter().filter(|(name, _, _)| bound.contains(name)).collect();
        assert_eq!(kept.len(), bound.len(), "every table named is there");
        kept
    };
    idle(&app, acme_id).await;
    let before = channels_of(&app);
    let wrong = outsider(&app, &doc, &ids, &agent, &[mark, "7392015648120394"]).await;
    assert!(wrong.is_empty(), "the agent read what is not theirs:\n{}", wrong.join("\n"));
    let after = channels_of(&app);
    let changed = changes(&before, &after);
    assert!(changed.is_empty(), "the agent changed what is not theirs:\n{}", changed.join("\n"));
}

/// The documented operations that need a credential (all but those the
/// document marks `security: []`): method, template and a body for those
/// that take one (the first `bodies` gives, those taken as they are first).
fn guarded(doc: &Value, ids: &Ids) -> Vec<(String, String, Value)> {
    let (bases, _) = bodies(doc, ids);
    let mut out = Vec::new();
    for (template, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().into_iter().flatten() {
            if op.get("security").and_then(Value::as_array).is_some_and(|s| s.is_empty()) || !op.is_object() {
                continue;
            }
            let method = method.to_uppercase();
            let body = bases
                .iter()
                .find(|(m, t, _)| *m == method && t == template)
                .map(|(_, _, body)| body.clone())
                .unwrap_or(Value::Null);
            out.push((method, template.clone(), body));
        }
    }
    out
}

/// Refreshes `refresh`'s login: the new access and refresh tokens.
async fn refreshed(app: &TestApp, refresh: &str) -> crate::common::Resp {
    app.call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": refresh}))).await
}

/// Every operation the document does not mark public, asked with a
/// credential that does not hold, is refused with 401 in the JSON error
/// shape, naming its scheme (RFC 7235) (or, where the database says it no
/// longer holds, as the handler refuses first on its own: a role, a body),
/// and changes nothing of the tenant:
/// no credential, one that is not a token, a token signed with another
/// key, unsigned (`alg: none`), expired, or naming a tenant its person is
/// not a member of; a refresh token, a socket ticket or an invitation's
/// token in an access token's place; and the access tokens of logins that
/// ended (logged out, signed out from another device, a password changed
/// elsewhere, a refresh token used twice), of a member removed, of an
/// admin since made an agent, and a revoked API token. Then the tenant is
/// suspended: its owner's live token gets 403 `tenant_suspended`
/// everywhere, and still nothing changes.
#[actix_web::test]
async fn every_guarded_operation_refuses_a_credential_that_does_not_hold() {
    use switchboard::auth::jwt::{Claims, JwtKeys};
    let app = spawn_app().await;
    let Shop { doc, admin, ids, .. } = shop(&app).await;
    let operations = guarded(&doc, &ids);
    assert!(operations.len() >= 100, "only {} guarded operations documented", operations.len());
    let me = app.call("GET", "/api/me", Some(&admin), None).await.body;
    let (owner_id, acme_key) = (me["user"]["id"].clone(), me["tenant"]["id"].clone());
    let beta = app.signup("beta", "beth@beta.test", "beth-password-1").await;

    // Tokens no server of ours signed, or signed for something else.
    let keys = JwtKeys::new(crate::common::JWT_SECRET.as_bytes());
    let now = chrono::Utc::now().timestamp();
    let claims = |tenant: &Value| crate::auth::claims(owner_id.as_str().expect("id"), tenant.as_str().expect("id"));
    let expired = Claims { iat: now - 1000, nbf: now - 1000, exp: now - 120, ..claims(&acme_key) };
    let unsigned = {
        use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
        let payload = serde_json::to_vec(&claims(&acme_key)).expect("json");
        format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#), URL_SAFE_NO_PAD.encode(payload))
    };
    let mut credentials: Vec<(&str, Option<String>)> = vec![
        ("none", None),
        ("not a token", Some("not-a-token".into())),
        ("signed with another key", Some(JwtKeys::new(&[7u8; 40]).sign(&claims(&acme_key)).expect("sign"))),
        ("unsigned", Some(unsigned)),
        ("expired", Some(keys.sign(&expired).expect("sign"))),
        ("for a tenant not theirs", Some(keys.sign(&claims(&beta["tenant"]["id"])).expect("sign"))),
    ];

    // Other credentials in an access token's place.
    let login = app.login("ann@acme.test", "ann-password-1", "acme").await;
    credentials.push(("a refresh token", Some(token(&login, "refresh_token"))));
    let ticket = app.call("POST", "/api/ws-ticket", Some(&admin), None).await;
    credentials.push(("a socket ticket", Some(token(&ticket.body, "ticket"))));
    let invited =
        app.call("POST", "/api/invitations", Some(&admin), Some(json!({"email": "ivy@acme.test", "role": "agent"})));
    credentials.push(("an invitation", Some(token(&invited.await.body, "token"))));

    // Logins that ended, and members no longer what their token says.
    let out = app.login("ann@acme.test", "ann-password-1", "acme").await;
    let r = app.call("POST", "/api/auth/logout", None, Some(json!({"refresh_token": token(&out, "refresh_token")})));
    assert_eq!(r.await.status, 204);
    credentials.push(("a login logged out", Some(token(&out, "access_token"))));
    let elsewhere = app.login("ann@acme.test", "ann-password-1", "acme").await;
    let r = app.call("DELETE", "/api/me/logins", Some(&admin), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    credentials.push(("a login signed out from elsewhere", Some(token(&elsewhere, "access_token"))));
    let reused = app.login("ann@acme.test", "ann-password-1", "acme").await;
    let first = refreshed(&app, &token(&reused, "refresh_token")).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    assert_eq!(refreshed(&app, &token(&reused, "refresh_token")).await.status, 401, "a refresh token used twice");
    credentials.push(("a login whose refresh token was used twice", Some(token(&first.body, "access_token"))));
    for (email, password) in [("pat@acme.test", "pat-password-12"), ("rex@acme.test", "rex-password-12")] {
        let r = member(&app, &admin, email, "admin", password).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let pat = app.login("pat@acme.test", "pat-password-12", "acme").await;
    let pat_too = app.login("pat@acme.test", "pat-password-12", "acme").await;
    let change = json!({"current_password": "pat-password-12", "new_password": "pat-password-13"});
    let r = app.call("PATCH", "/api/me", Some(&token(&pat, "access_token")), Some(change)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    credentials.push(("a login whose password was changed elsewhere", Some(token(&pat_too, "access_token"))));
    let rex = app.login("rex@acme.test", "rex-password-12", "acme").await;
    let rex_id = app.call("GET", "/api/me", Some(&token(&rex, "access_token")), None).await.body["user"]["id"].clone();
    let demoted = format!("/api/members/{}", rex_id.as_str().expect("id"));
    let r = app.call("PATCH", &demoted, Some(&admin), Some(json!({"role": "agent"}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    credentials.push(("an admin since made an agent", Some(token(&rex, "access_token"))));
    let pat_id = app.call("GET", "/api/me", Some(&token(&pat, "access_token")), None).await.body["user"]["id"].clone();
    let r = app.call("DELETE", &format!("/api/members/{}", pat_id.as_str().expect("id")), Some(&admin), None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    credentials.push(("a member removed", Some(token(&pat, "access_token"))));
    let made = app.call("POST", "/api/me/tokens", Some(&admin), Some(json!({"name": "CRM"}))).await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    let gone = format!("/api/me/tokens/{}", made.body["id"].as_str().expect("id"));
    assert_eq!(app.call("DELETE", &gone, Some(&admin), None).await.status, 204);
    credentials.push(("a revoked API token", Some(token(&made.body, "token"))));

    settled(&app).await;
    let acme_id = app.count("SELECT id AS n FROM public.tenants WHERE slug = 'acme'");
    let before = idle(&app, acme_id).await;
    let ask = |method: &str, template: &str, body: &Value, credential: Option<&str>| {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut ask = app.client.request(m, app.url(&ids.path_of(template)));
        if let Some(c) = credential {
            ask = ask.bearer_auth(c);
        }
        if body.is_null() {
            ask
        } else {
            ask.json(body)
        }
    };
    // A credential that is no token of ours is refused before anything
    // else. One well signed whose login, membership or role the database
    // no longer backs is refused where the request enters the tenant (the
    // guard): a request the handler refuses first on its own (a role, a
    // body) is refused as such, and nothing else gets past.
    let in_the_guard = [
        "for a tenant not theirs",
        "a login logged out",
        "a login signed out from elsewhere",
        "a login whose refresh token was used twice",
        "a login whose password was changed elsewhere",
        "an admin since made an agent",
        "a member removed",
    ];
    let own_refusal = |status: u16, code: &str| matches!((status, code), (403, "forbidden") | (400 | 422, _));
    let mut wrong = Vec::new();
    let mut tried = 0;
    for (what, credential) in &credentials {
        let mut told = 0;
        for (method, template, body) in &operations {
            let named = format!("{method} {template} with {what}");
            let res = ask(method, template, body, credential.as_deref()).send().await;
            let Ok(res) = res.map_err(|e| wrong.push(format!("{named}: no answer ({e})"))) else { continue };
            tried += 1;
            let status = res.status().as_u16();
            let scheme = res.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default();
            let scheme = scheme.starts_with("Bearer ");
            let text = res.text().await.unwrap_or_default();
            let code = serde_json::from_str::<Value>(&text).ok().and_then(|v| v.pointer("/error/code").cloned());
            let code = code.as_ref().and_then(Value::as_str).unwrap_or_default();
            told += usize::from(status == 401);
            let refused = (status == 401 && scheme) || (in_the_guard.contains(what) && own_refusal(status, code));
            if !refused {
                wrong.push(format!("{named}: {status} {}", text.chars().take(200).collect::<String>()));
            }
            wrong.extend(breach(named, status, &text));
        }
        // The guard is reached: most operations are refused by it.
        if told * 10 < operations.len() * 7 {
            wrong.push(format!("{what}: only {told} of {} answered 401", operations.len()));
        }
    }
    let after = holdings(&app, "tenant_acme", acme_id);
    // The owner's own token, still live, once the tenant is suspended.
    let mut conn = app.db.conn();
    switchboard::tenancy::set_status(&mut conn, "acme", switchboard::tenancy::TenantStatus::Suspended)
        .expect("suspend");
    let suspended = holdings(&app, "tenant_acme", acme_id);
    for (method, template, body) in &operations {
        let named = format!("{method} {template} in a suspended tenant");
        let res = ask(method, template, body, Some(&admin)).send().await;
        let Ok(res) = res.map_err(|e| wrong.push(format!("{named}: no answer ({e})"))) else { continue };
        tried += 1;
        let status = res.status().as_u16();
        let text = res.text().await.unwrap_or_default();
        let code = serde_json::from_str::<Value>(&text).ok().and_then(|v| v.pointer("/error/code").cloned());
        let code = code.as_ref().and_then(Value::as_str).unwrap_or_default();
        let operators = template.starts_with("/api/operator/") && status == 401;
        let suspended_said = status == 403 && code == "tenant_suspended";
        if !(suspended_said || own_refusal(status, code) || operators) {
            wrong.push(format!("{named}: {status} {}", text.chars().take(200).collect::<String>()));
        }
        wrong.extend(breach(named, status, &text));
    }
    assert!(tried >= operations.len() * (credentials.len() + 1), "only {tried} requests answered");
    assert!(wrong.is_empty(), "{} of {tried} answers let a credential through:\n{}", wrong.len(), wrong.join("\n"));
    let changed = changes(&before, &after);
    assert!(changed.is_empty(), "credentials that do not hold changed the tenant:\n{}", changed.join("\n"));
    let changed = changes(&suspended, &holdings(&app, "tenant_acme", acme_id));
    assert!(changed.is_empty(), "a suspended tenant's owner changed it:\n{}", changed.join("\n"));
}

/// What an answer shows, to compare two: its status and, for JSON, its
/// keys and how many items a list holds.
fn outline(status: u16, text: &str) -> String {
    let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let keys: Vec<&String> = value.as_object().map(|o| o.keys().collect()).unwrap_or_default();
    let items = value["items"].as_array().map(Vec::len);
    let code = value.pointer("/error/code").and_then(Value::as_str).unwrap_or_default();
    format!("{status} {code} {keys:?} items {items:?}")
}

/// A member's API token acts as its member: every documented read (as it
/// is, searched, and a long page) answers the same with the admin's API
/// token as with their access token, the same status and the same shape,
/// lists as long; the one thing it may not do is make tokens.
#[actix_web::test]
async fn an_api_token_reads_what_its_member_reads() {
    let app = spawn_app().await;
    let Shop { doc, admin, ids, .. } = shop(&app).await;
    write_each_once(&app, &admin, &doc, &ids).await;
    settled(&app).await;
    let made = app.call("POST", "/api/me/tokens", Some(&admin), Some(json!({"name": "CRM"}))).await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    let api_token = token(&made.body, "token");
    let mut wrong = Vec::new();
    let mut compared = 0;
    for (method, template, _) in guarded(&doc, &ids) {
        if method != "GET" {
            continue;
        }
        let path = ids.path_of(&template);
        for query in ["", "?q=o", "?limit=200"] {
            let mut seen = Vec::new();
            for credential in [&admin, &api_token] {
                let res = app.client.get(app.url(&format!("{path}{query}"))).bearer_auth(credential).send().await;
                let (status, text) = match res {
                    Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
                    Err(e) => (0, e.to_string()),
                };
                seen.push(outline(status, &text));
            }
            compared += 1;
            if seen[0] != seen[1] {
                wrong.push(format!("GET {path}{query}: access token {}, API token {}", seen[0], seen[1]));
            }
        }
    }
    assert!(compared >= 100, "only {compared} reads compared");
    assert!(wrong.is_empty(), "{} of {compared} reads differ:\n{}", wrong.len(), wrong.join("\n"));
}

/// Every documented list, walked one item a page by its `next_cursor`
/// given back as `?cursor=`, gives exactly what one page of 200 gives:
/// each item once, none left out (a cursor over a key the list is not
/// ordered by skips or repeats); and each reads `limit` alike.
#[actix_web::test]
async fn every_list_walked_a_page_at_a_time_gives_each_item_once() {
    let app = spawn_app().await;
    let Shop { doc, admin, ids, .. } = shop(&app).await;
    // Something in every list: each documented body, taken or not, once.
    write_each_once(&app, &admin, &doc, &ids).await;
    // And a second of each kind the bodies made one of.
    let conversation = format!("/api/conversations/{}", ids.conversation);
    let soon = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    for (method, path, body) in [
        ("POST", "/api/teams".to_string(), json!({"name": "Equipa 2"})),
        (
            "POST",
            "/api/macros".to_string(),
            json!({"name": "M2", "actions": [{"type": "set_status", "status": "resolved"}]}),
        ),
        ("POST", "/api/views".to_string(), json!({"name": "V2", "filters": {}})),
        ("POST", "/api/contact-attributes".to_string(), json!({"key": "tier2", "name": "Tier 2", "type": "text"})),
        ("POST", "/api/integrations/webhooks".to_string(), json!({"url": "https://hooks.example.com/2"})),
        ("POST", "/api/invitations".to_string(), json!({"email": "two@acme.test", "role": "agent"})),
        ("POST", "/api/me/tokens".to_string(), json!({"name": "t2"})),
        ("POST", format!("{conversation}/scheduled-messages"), json!({"text": "Depois", "send_at": soon})),
        ("PATCH", conversation.clone(), json!({"add_labels": ["segunda"]})),
        (
            "POST",
            "/api/broadcasts".to_string(),
            json!({"channel_id": ids.whatsapp, "name": "Mais", "client_id": "news-2",
                "template": {"name": "hello_world", "language": "en_US"},
                "to": {"phone_numbers": ["+34 612 345 670", "+34 612 345 671"]}}),
        ),
    ] {
        let r = app.call(method, &path, Some(&admin), Some(body)).await;
        assert!((200..300).contains(&r.status), "{method} {path}: {:?}", r.body);
    }
    app.login("ann@acme.test", "ann-password-1", "acme").await;
    for i in 0..3 {
        let body = json!({"shortcut": format!("walk{i}"), "text": "Olá"});
        app.call("POST", "/api/canned-responses", Some(&admin), Some(body)).await;
    }
    settled(&app).await;
    let get = |path: String| {
        let (app, admin) = (&app, &admin);
        async move {
            let r = app.client.get(app.url(&path)).bearer_auth(admin).send().await.expect("an answer");
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let key = |item: &Value| item.get("id").map_or_else(|| item.to_string(), Value::to_string);
    let mut wrong = Vec::new();
    let mut walked_lists = 0;
    for (template, ops) in doc["paths"].as_object().expect("paths") {
        if !template.starts_with("/api/") || ops.get("get").is_none() {
            continue;
        }
        let path = ids.path_of(template);
        let join = if path.contains('?') { '&' } else { '?' };
        let (status, whole) = get(format!("{path}{join}limit=200")).await;
        let (Some(all), Some(Value::Null)) = (whole["items"].as_array(), whole.get("next_cursor")) else {
            continue;
        };
        // Every list reads `limit` alike: 1 to 200, else 400.
        for odd in ["0", "201", "-1", "x"] {
            let (status, body) = get(format!("{path}{join}limit={odd}")).await;
            if (status, &body["error"]["code"]) != (400, &json!("invalid_limit")) {
                wrong.push(format!("{path}{join}limit={odd}: {status} {body}"));
            }
        }
        if status != 200 || all.len() < 2 {
            continue;
        }
        walked_lists += 1;
        let mut seen: Vec<String> = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..=all.len() + 1 {
            let page = match &cursor {
                None => format!("{path}{join}limit=1"),
                Some(c) => format!("{path}{join}limit=1&cursor={}", urlencoding(c)),
            };
            let (status, body) = get(page.clone()).await;
            if status != 200 {
                wrong.push(format!("{page}: {status} {body}"));
                break;
            }
            seen.extend(body["items"].as_array().into_iter().flatten().map(key));
            match body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        // The pages' order may differ from one page's (messages page back,
        // each page oldest first): each item once is what counts.
        seen.sort();
        let mut expected: Vec<String> = all.iter().map(key).collect();
        expected.sort();
        if seen != expected {
            wrong.push(format!("{path}: one at a time {seen:?}, at once {expected:?}"));
        }
    }
    assert!(walked_lists >= 18, "only {walked_lists} lists with two items or more");
    // The messages' cursor is `before` in the contract; `cursor` is the
    // same, and two different ones are refused.
    let messages = format!("{conversation}/messages");
    let (_, first) = get(format!("{messages}?limit=1")).await;
    let next = urlencoding(first["next_cursor"].as_str().expect("an older page"));
    let (_, by_before) = get(format!("{messages}?limit=1&before={next}")).await;
    let (_, by_cursor) = get(format!("{messages}?limit=1&cursor={next}")).await;
    assert_eq!(by_before, by_cursor);
    let (status, both) = get(format!("{messages}?before={next}&cursor=dDox")).await;
    assert_eq!((status, &both["error"]["code"]), (400, &json!("invalid_cursor")), "{both}");
    assert!(wrong.is_empty(), "{} lists walk wrongly:\n{}", wrong.len(), wrong.join("\n"));
}

/// Where `shown` (in a list) and `there` (on the item's page) differ, in
/// the fields both have, at any depth (the page may say more).
fn disagreements(shown: &Value, there: &Value, at: &str, out: &mut Vec<String>) {
    match (shown, there) {
        (Value::Object(a), Value::Object(b)) => {
            for (field, value) in a {
                if let Some(other) = b.get(field) {
                    disagreements(value, other, &format!("{at}.{field}"), out);
                }
            }
        }
        (a, b) if a != b => out.push(format!("{at}: one shows {a}, its page {b}")),
        _ => {}
    }
}

/// What a write answers of the thing it made or changed, the thing's own
/// page then shows alike: every field both have is the same (an answer
/// built before the last change, or from what the client sent, drifts).
/// Each documented write is sent once, as the admin; a taken one that
/// answers an object with an id is compared with its page, or the list
/// it is in.
#[actix_web::test]
async fn what_a_write_answers_its_page_then_shows() {
    let app = spawn_app().await;
    let Shop { doc, admin, ids, .. } = shop(&app).await;
    let paths = doc["paths"].as_object().expect("paths");
    let readable = |template: &str| paths.get(template).and_then(|ops| ops.get("get")).is_some();
    let (mut writes, _) = bodies(&doc, &ids);
    let mut bodiless = bodiless(&doc);
    bodiless.sort_by_key(|(method, _, _)| method == "DELETE");
    writes.extend(bodiless);
    let mut compared = 0;
    let mut wrong = Vec::new();
    for (method, template, body) in &writes {
        let path = ids.path_of(template);
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let ask = app.client.request(m, app.url(&path)).bearer_auth(&admin);
        let Ok(res) = (if body.is_null() { ask } else { ask.json(body) }).send().await else { continue };
        let status = res.status().as_u16();
        let answer: Value = res.json().await.unwrap_or(Value::Null);
        let Some(id) = answer["id"].as_str().filter(|_| (200..300).contains(&status)) else { continue };
        // Its own page; else the list it is in.
        let parent = |t: &str| t.rsplit_once('/').map(|(p, _)| p.to_string()).unwrap_or_default();
        let (page, listed) = if method != "POST" && template.ends_with('}') && readable(template) {
            (path.clone(), false)
        } else if method == "POST" && readable(&format!("{template}/{{id}}")) {
            (format!("{path}/{id}"), false)
        } else if method != "POST" && !template.ends_with('}') && readable(&parent(template)) {
            (parent(&path), false)
        } else if method == "POST" && readable(template) {
            (path.clone(), true)
        } else if template.ends_with('}') && readable(&parent(template)) {
            (parent(&path), true)
        } else {
            continue;
        };
        let asked = if listed { format!("{page}?limit=200") } else { page.clone() };
        let own = app.call("GET", &asked, Some(&admin), None).await;
        let there = if listed {
            let items = own.body["items"].as_array().cloned().unwrap_or_default();
            items.into_iter().find(|item| item["id"] == answer["id"]).unwrap_or(Value::Null)
        } else {
            own.body.clone()
        };
        if own.status != 200 || there.is_null() {
            wrong.push(format!("{method} {template} answered {id}; GET {asked}: {} {}", own.status, own.body));
            continue;
        }
        compared += 1;
        let mut differ = Vec::new();
        disagreements(&answer, &there, &format!("{method} {template} then GET {asked}"), &mut differ);
        // What workers move on after the answer (a reply's send and its
        // receipts, a broadcast's progress) may differ by the time the page
        // is asked for; everything else (names, texts, ids, labels,
        // assignees, settings, members) is the same.
        let moving = [
            "status",
            "error",
            "external_id",
            "platform_timestamp",
            "finished_at",
            "counts",
            "last_message",
            "last_activity_at",
            "held_by_meta",
        ];
        differ.retain(|d| {
            let at = d.split(": one shows").next().unwrap_or_default();
            let fields = at.rsplit_once(" then GET ").map_or(at, |(_, page)| page);
            !fields.split('.').skip(1).any(|field| moving.contains(&field))
        });
        wrong.extend(differ);
    }
    assert!(compared >= 15, "only {compared} writes compared");
    assert!(wrong.is_empty(), "{} differences:\n{}", wrong.len(), wrong.join("\n"));
}

/// What a list shows of each item, the item's own page shows alike: every
/// field both have is the same (a list and a page built apart drift).
#[actix_web::test]
async fn a_list_and_each_items_own_page_agree() {
    let app = spawn_app().await;
    let Shop { doc, admin, ids, .. } = shop(&app).await;
    write_each_once(&app, &admin, &doc, &ids).await;
    settled(&app).await;
    let paths = doc["paths"].as_object().expect("paths");
    let mut compared = 0;
    let mut wrong = Vec::new();
    for (template, ops) in paths {
        let detail = format!("{template}/{{id}}");
        if !template.starts_with("/api/")
            || ops.get("get").is_none()
            || paths.get(&detail).and_then(|d| d.get("get")).is_none()
        {
            continue;
        }
        let list = app.call("GET", &format!("{}?limit=200", ids.path_of(template)), Some(&admin), None).await;
        for item in list.body["items"].as_array().into_iter().flatten() {
            let Some(id) = item["id"].as_str() else { continue };
            let own_path = format!("{}/{id}", ids.path_of(template));
            let own = app.call("GET", &own_path, Some(&admin), None).await;
            if own.status != 200 {
                wrong.push(format!("{own_path}: {} {}", own.status, own.body));
                continue;
            }
            compared += 1;
            disagreements(item, &own.body, &own_path, &mut wrong);
        }
    }
    assert!(compared >= 8, "only {compared} items compared");
    assert!(wrong.is_empty(), "{} differences:\n{}", wrong.len(), wrong.join("\n"));
}

/// Every documented path is served with exactly the methods the document
/// gives it: each is routed (never 405), and any other method is refused
/// with 405 in the JSON shape and an `Allow` header naming the documented
/// ones (RFC 9110 §15.5.6), so a client learns what the path takes.
#[actix_web::test]
async fn every_documented_path_refuses_other_methods_naming_its_own() {
    let app = spawn_app().await;
    let doc: Value =
        app.client.get(app.url("/api/openapi.json")).send().await.expect("doc").json().await.expect("json");
    let methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    let mut wrong = Vec::new();
    let mut refused = 0;
    let mut got = std::collections::HashMap::new();
    for (template, ops) in doc["paths"].as_object().expect("paths") {
        // Any id routes: the method is refused before a handler looks.
        let path: String =
            template.split('/').map(|s| if s.starts_with('{') { "1" } else { s }).collect::<Vec<_>>().join("/");
        let mut documented: Vec<String> =
            ops.as_object().expect("ops").keys().filter(|k| *k != "parameters").map(|k| k.to_uppercase()).collect();
        documented.sort();
        for method in methods {
            let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
            let res = app.client.request(m, app.url(&path)).send().await.expect("an answer");
            let status = res.status().as_u16();
            let allow = res.headers().get("allow").and_then(|v| v.to_str().ok()).map(str::to_string);
            let text = res.text().await.unwrap_or_default();
            if documented.iter().any(|d| d == method) {
                if status == 405 {
                    wrong.push(format!("{method} {template} is documented but answered 405"));
                }
                if method == "GET" {
                    got.insert(template.clone(), status);
                }
                continue;
            }
            // HEAD is served wherever GET is, with GET's status, but where
            // a GET acts (a socket's upgrade spends its ticket, the OAuth
            // callback its state, an export or a transcript is audited).
            let acting = [
                "/ws",
                "/api/channels/facebook/oauth/callback",
                "/api/contacts.csv",
                "/api/conversations/{id}/transcript",
            ];
            if method == "HEAD" && documented.iter().any(|d| d == "GET") && !acting.contains(&template.as_str()) {
                if got.get(template) != Some(&status) {
                    wrong.push(format!("HEAD {template}: {status}, GET {:?}", got.get(template)));
                }
                continue;
            }
            refused += 1;
            if status != 405 {
                wrong.push(format!("{method} {template}, not documented: {status}"));
                continue;
            }
            if method != "HEAD" {
                wrong.extend(breach(format!("{method} {template}"), status, &text));
            }
            let mut named: Vec<String> = allow
                .unwrap_or_default()
                .split(',')
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty() && m != "HEAD")
                .collect();
            named.sort();
            if named != documented {
                wrong.push(format!("{method} {template}: Allow names {named:?}, the document {documented:?}"));
            }
        }
    }
    assert!(refused > 250, "only {refused} methods refused");
    assert!(wrong.is_empty(), "{} departures:\n{}", wrong.len(), wrong.join("\n"));
    // A HEAD is answered with GET's headers and no body.
    let get = app.client.get(app.url("/api/openapi.json")).send().await.expect("GET");
    let head = app.client.head(app.url("/api/openapi.json")).send().await.expect("HEAD");
    assert_eq!(head.status(), 200);
    // Its length is the GET body's, so the comparison below means something.
    assert!(head.headers().get("content-length").is_some_and(|l| l != "0"), "{:?}", head.headers());
    for name in ["content-type", "content-length", "cache-control"] {
        assert_eq!(head.headers().get(name), get.headers().get(name), "{name}");
    }
    assert!(head.bytes().await.expect("no body").is_empty());
    // Pages outside the document say what they take too.
    for (path, allow) in [
        ("/invite", "GET, HEAD"),
        ("/reset", "GET, HEAD"),
        ("/healthz", "GET, HEAD"),
        ("/ws", "GET"),
        ("/unsubscribe", "GET, HEAD, POST"),
    ] {
        let res = app.client.delete(app.url(path)).send().await.expect("an answer");
        assert_eq!(res.status().as_u16(), 405, "DELETE {path}");
        assert_eq!(res.headers().get("allow").and_then(|v| v.to_str().ok()), Some(allow), "DELETE {path}");
    }
}
