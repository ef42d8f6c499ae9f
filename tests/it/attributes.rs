//! Contact attributes (`inbox::attributes`): admins define them, the team
//! fills them in on contacts, each value checked against its definition.

use serde_json::{json, Value};

use crate::channels::PAGE_A;
use crate::common::{spawn_app, TestApp};
use crate::inbox::{acme, agent_al, by_contact, channel_id, conversations, PHONE};

fn code(r: &crate::common::Resp) -> (u16, &str) {
    (r.status, r.body["error"]["code"].as_str().unwrap_or(""))
}

async fn define(app: &TestApp, t: &str, body: Value) -> crate::common::Resp {
    app.call("POST", "/api/contact-attributes", Some(t), Some(body)).await
}

#[actix_web::test]
async fn a_team_defines_attributes_and_fills_them_in_checked() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let admin = ctx.admin.as_str();
    let (_, al) = agent_al(&app, admin).await;

    let plan = json!({"key": "plan", "name": "Plan", "type": "list", "options": ["free", "pro", "enterprise"]});
    let made = define(&app, admin, plan.clone()).await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    assert_eq!(
        (&made.body["key"], &made.body["type"], &made.body["options"]),
        (&json!("plan"), &json!("list"), &json!(["free", "pro", "enterprise"]))
    );
    for body in [
        json!({"key": "seats", "name": "Seats", "type": "number"}),
        json!({"key": "vip", "name": "VIP", "type": "boolean"}),
        json!({"key": "renewal", "name": "Renews on", "type": "date"}),
        json!({"key": "order_ref", "name": "  Última encomenda  ", "type": "text"}),
    ] {
        let r = define(&app, admin, body.clone()).await;
        assert_eq!(r.status, 201, "{body}: {:?}", r.body);
    }
    // The same create again is the one made; another under its key is not.
    let again = define(&app, admin, plan.clone()).await;
    assert_eq!((again.status, &again.body["created_at"]), (200, &made.body["created_at"]));
    let other = json!({"key": "plan", "name": "Plan", "type": "text"});
    assert_eq!(code(&define(&app, admin, other).await), (409, "attribute_exists"));
    for (bad, expected) in [
        (json!({"key": "Plan", "name": "x", "type": "text"}), "invalid_key"),
        (json!({"key": "1st", "name": "x", "type": "text"}), "invalid_key"),
        (json!({"key": "a".repeat(41), "name": "x", "type": "text"}), "invalid_key"),
        (json!({"key": "x", "name": " ", "type": "text"}), "invalid_name"),
        (json!({"key": "x", "name": "x", "type": "list"}), "invalid_options"),
        (json!({"key": "x", "name": "x", "type": "list", "options": ["a", " a "]}), "invalid_options"),
        (json!({"key": "x", "name": "x", "type": "text", "options": ["a"]}), "invalid_options"),
        (json!({"key": "x", "name": "x", "type": "colour"}), "invalid_body"),
        (json!({"key": "x", "name": "x", "type": "text", "required": true}), "invalid_body"),
    ] {
        assert_eq!(code(&define(&app, admin, bad.clone()).await).1, expected, "{bad}");
    }
    // Every member reads them, oldest first; only admins keep them.
    let listed = app.call("GET", "/api/contact-attributes", Some(&al), None).await;
    let keys: Vec<&str> =
        listed.body["items"].as_array().expect("items").iter().filter_map(|d| d["key"].as_str()).collect();
    assert_eq!(keys, ["plan", "seats", "vip", "renewal", "order_ref"]);
    assert_eq!(listed.body["items"][4]["name"], "Última encomenda");
    assert_eq!(code(&define(&app, &al, json!({"key": "x", "name": "x", "type": "text"})).await).0, 403);

    // A customer's contact gets values, each as its definition says.
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "7392015648190001", "text": "hi"})).await;
    app.processed().await;
    let convs = conversations(&app, admin, "").await;
    let contact = by_contact(&convs, "7392015648190001")["contact"]["id"].as_str().expect("id").to_string();
    let path = format!("/api/contacts/{contact}");
    let fresh = app.call("GET", &path, Some(admin), None).await;
    assert_eq!(fresh.body["attributes"], json!({}), "{:?}", fresh.body);
    let set = |body: Value| {
        let (app, path) = (&app, path.clone());
        async move { app.call("PATCH", &path, Some(admin), Some(body)).await }
    };
    let r = set(json!({"attributes": {"plan": "pro", "seats": 12, "vip": true, "renewal": "2027-01-31",
        "order_ref": "  #A-1 ✓ "}}))
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let expected = json!({"plan": "pro", "seats": 12, "vip": true, "renewal": "2027-01-31", "order_ref": "#A-1 ✓"});
    assert_eq!(r.body["attributes"], expected);
    assert_eq!(app.call("GET", &path, Some(admin), None).await.body["attributes"], expected);
    // A wrong value refuses the whole change: the name stays as it was.
    for bad in [
        json!({"plan": "gold"}),
        json!({"seats": "12"}),
        json!({"vip": "yes"}),
        json!({"renewal": "2027-02-30"}),
        json!({"renewal": "2027-1-31"}),
        json!({"order_ref": "x".repeat(501)}),
        json!({"colour": "blue"}),
        json!({"plan\0": "pro"}),
        json!({"order_ref": "a\0b"}),
    ] {
        let r = set(json!({"name": "Renamed", "attributes": bad.clone()})).await;
        assert_eq!(code(&r), (422, "invalid_attributes"), "{bad}: {:?}", r.body);
    }
    assert_eq!(code(&set(json!({"attributes": ["plan"]})).await), (422, "invalid_body"));
    let now = app.call("GET", &path, Some(admin), None).await.body;
    assert_eq!((&now["name"], &now["attributes"]), (&Value::Null, &expected), "{now}");
    // A change names only what it changes; null or an empty text removes.
    let announced = || {
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'contact.updated' AND payload->>'id' = '{contact}'"
        ))
    };
    let before = announced();
    // (A list's option in another case is the option, as written.)
    let r = set(json!({"attributes": {"seats": null, "order_ref": "", "plan": "Enterprise "}})).await;
    assert_eq!(r.body["attributes"], json!({"plan": "enterprise", "vip": true, "renewal": "2027-01-31"}));
    assert_eq!(announced(), before + 1);
    let r = set(json!({"attributes": {"plan": "ENTERPRISE"}})).await;
    assert_eq!(r.status, 200);
    assert_eq!(announced(), before + 1, "the same values again change nothing");
    // A form's cleared field removes a value of any type.
    let r = set(json!({"attributes": {"renewal": ""}})).await;
    assert_eq!(r.body["attributes"], json!({"plan": "enterprise", "vip": true}), "{:?}", r.body);
    let r = set(json!({"attributes": {"renewal": "2027-01-31"}})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Audited by key, not by value.
    let audited = app.count(&format!(
        "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'contact.updated' AND target_id = '{contact}' \
            AND details->'attributes' @> '[\"seats\", \"order_ref\", \"plan\"]' \
            AND jsonb_array_length(details->'attributes') = 3 AND details::text NOT LIKE '%enterprise%'"
    ));
    assert_eq!(audited, 1);

    // Contacts found by an attribute, or by a value of it as its type
    // reads it; another customer has a plan too, a cheaper one.
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "7392015648190002", "text": "olá"})).await;
    app.processed().await;
    let convs = conversations(&app, admin, "").await;
    let other = by_contact(&convs, "7392015648190002")["contact"]["id"].as_str().expect("id").to_string();
    let r = app
        .call(
            "PATCH",
            &format!("/api/contacts/{other}"),
            Some(admin),
            Some(json!({"attributes": {"plan": "free",
            "seats": 3}})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let found = |query: &str| {
        let app = &app;
        let url = format!("/api/contacts?attribute={query}");
        async move {
            let r = app.call("GET", &url, Some(admin), None).await;
            if r.status != 200 {
                return Err(code(&r).1.to_string());
            }
            Ok(r.body["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter_map(|c| c["id"].as_str().map(String::from))
                .collect::<Vec<_>>())
        }
    };
    let both = {
        let mut both = vec![contact.clone(), other.clone()];
        both.sort_by_key(|id| id.parse::<i64>().unwrap_or_default());
        both
    };
    assert_eq!(found("plan").await, Ok(both));
    assert_eq!(found("plan:enterprise").await, Ok(vec![contact.clone()]));
    assert_eq!(found("plan:free").await, Ok(vec![other.clone()]));
    assert_eq!(found("seats:3").await, Ok(vec![other.clone()]));
    assert_eq!(found("vip:true").await, Ok(vec![contact.clone()]));
    assert_eq!(found("vip:false").await, Ok(vec![]));
    assert_eq!(found("renewal").await, Ok(vec![contact.clone()]));
    // With a channel too: the page's contacts, none of the number's.
    let (page, phone) = (channel_id(&app, admin, PAGE_A).await, channel_id(&app, admin, PHONE).await);
    assert_eq!(found(&format!("plan&channel_id={page}")).await.map(|v| v.len()), Ok(2));
    assert_eq!(found(&format!("plan&channel_id={phone}")).await, Ok(vec![]));
    assert_eq!(found("plan&channel_id=page").await, Err("invalid_channel_id".to_string()));
    for bad in ["colour", "plan:gold", "seats:three", "vip:yes", "renewal:soon", "plan:", "plan%00", "order_ref:a%00"] {
        assert_eq!(found(bad).await, Err("invalid_attribute".to_string()), "{bad}");
    }
    // The inbox lists their conversations the same way, in a saved view
    // too, and counts them.
    let conversation_of = |contact_id: &str| {
        convs
            .iter()
            .find(|c| c["contact"]["id"] == contact_id)
            .and_then(|c| c["id"].as_str())
            .expect("conv")
            .to_string()
    };
    let (theirs, others) = (conversation_of(&contact), conversation_of(&other));
    let listed = |query: String| {
        let app = &app;
        async move {
            let r = app.call("GET", &format!("/api/conversations?{query}"), Some(admin), None).await;
            if r.status != 200 {
                return Err(code(&r).1.to_string());
            }
            let mut ids: Vec<String> = r.body["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter_map(|c| c["id"].as_str().map(String::from))
                .collect();
            ids.sort();
            Ok(ids)
        }
    };
    let mut both_conversations = vec![theirs.clone(), others.clone()];
    both_conversations.sort();
    assert_eq!(listed("contact_attribute=plan".into()).await, Ok(both_conversations));
    assert_eq!(listed("contact_attribute=plan:enterprise".into()).await, Ok(vec![theirs.clone()]));
    // A list's option in any case, as a contact's PATCH reads it.
    assert_eq!(listed("contact_attribute=plan:ENTERPRISE".into()).await, Ok(vec![theirs.clone()]));
    let counted = app.call("GET", "/api/conversations/counts?contact_attribute=plan:Enterprise", Some(admin), None);
    assert_eq!(counted.await.body["all"], 1);
    assert_eq!(listed("contact_attribute=seats:3&status=open".into()).await, Ok(vec![others.clone()]));
    assert_eq!(listed("contact_attribute=vip:true&q=hi".into()).await, Ok(vec![theirs.clone()]));
    assert_eq!(listed("contact_attribute=colour:blue".into()).await, Ok(vec![]), "a key none has finds nothing");
    assert_eq!(listed("contact_attribute=Plan:pro".into()).await, Err("invalid_query".into()));
    assert_eq!(listed("contact_attribute=plan%00".into()).await, Err("invalid_query".into()));
    assert_eq!(listed("contact_attribute=plan:a%00b".into()).await, Err("invalid_query".into()));
    let view = json!({"name": "Enterprise", "filters": {"contact_attribute": "plan:enterprise"}});
    let r = app.call("POST", "/api/views", Some(admin), Some(view)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let view_id = r.body["id"].as_str().expect("id").to_string();
    assert_eq!(listed(format!("view={view_id}")).await, Ok(vec![theirs.clone()]));
    let counts = app.call("GET", &format!("/api/conversations/counts?view={view_id}"), Some(admin), None).await;
    assert_eq!(counts.body["all"], 1, "{:?}", counts.body);

    // Reports of those customers' conversations.
    let report = |query: &str| {
        let url = format!("/api/reports/overview?contact_attribute={query}");
        let app = &app;
        async move { app.call("GET", &url, Some(admin), None).await }
    };
    for (query, opened) in [("plan", 2), ("plan:enterprise", 1), ("seats:3", 1), ("vip:false", 0)] {
        let r = report(query).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let figures = (&r.body["conversations_opened"], &r.body["messages_received"], &r.body["now"]["open"]);
        assert_eq!(figures, (&json!(opened), &json!(opened), &json!(opened)), "{query}: {:?}", r.body);
    }
    let r = app.call("GET", "/api/reports/agents.csv?contact_attribute=plan:enterprise", Some(admin), None).await;
    assert_eq!(r.status, 200);
    // A query's values are not JSON: what will not do there is a 400.
    assert_eq!(code(&report("plan:gold").await), (400, "invalid_attribute"));
    assert_eq!(code(&report("nothing").await), (400, "invalid_attribute"));

    // A list's options change: a value taken away goes from the contacts.
    let patch_def = |key: &str, body: Value| {
        let app = &app;
        let url = format!("/api/contact-attributes/{key}");
        async move { app.call("PATCH", &url, Some(admin), Some(body)).await }
    };
    let r = patch_def("plan", json!({"name": "Subscription", "options": ["free", "pro"]})).await;
    assert_eq!((r.status, &r.body["name"], &r.body["options"]), (200, &json!("Subscription"), &json!(["free", "pro"])));
    let now = app.call("GET", &path, Some(admin), None).await.body;
    assert_eq!(now["attributes"], json!({"vip": true, "renewal": "2027-01-31"}), "{now}");
    assert_eq!(code(&patch_def("plan", json!({"type": "text"})).await), (422, "invalid_body"));
    assert_eq!(code(&patch_def("seats", json!({"options": ["1"]})).await), (422, "invalid_options"));
    assert_eq!(code(&patch_def("nothing", json!({"name": "x"})).await).0, 404);
    assert_eq!(code(&patch_def("plan%00", json!({"name": "x"})).await).0, 404);
    assert_eq!(code(&patch_def("vip", json!({"name": "VIP"})).await).0, 200, "the same name: nothing to do");
    // A definition deleted takes its values with it.
    let r = app.call("DELETE", "/api/contact-attributes/vip", Some(admin), None).await;
    assert_eq!(r.status, 204);
    assert_eq!(app.call("DELETE", "/api/contact-attributes/vip", Some(admin), None).await.status, 404);
    let now = app.call("GET", &path, Some(admin), None).await.body;
    assert_eq!(now["attributes"], json!({"renewal": "2027-01-31"}), "{now}");
    assert_eq!(code(&set(json!({"attributes": {"vip": true}})).await), (422, "invalid_attributes"));
    let audited = app.count(
        "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'contact_attribute.deleted' \
            AND target_id = 'vip' AND details->>'contacts_cleared' = '1'",
    );
    assert_eq!(audited, 1);

    // Admins export the contacts as a spreadsheet, an attribute a column.
    let r = app
        .call("PATCH", &format!("/api/contacts/{other}"), Some(admin), Some(json!({"name": "=SUM(A1), \"Lda\""})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let export = |query: &str, t: &str| {
        let req = app.client.get(app.url(&format!("/api/contacts.csv{query}"))).bearer_auth(t).send();
        async move {
            let r = req.await.expect("export");
            let status = r.status().as_u16();
            let kind = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            (status, kind, r.text().await.expect("text"))
        }
    };
    let (status, kind, csv) = export("", admin).await;
    assert_eq!((status, kind.as_str()), (200, "text/csv; charset=utf-8"), "{csv}");
    let lines: Vec<&str> = csv.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines[0],
        "id,channel_id,external_id,name,email,phone,notes,blocked,blocked_at,marketing_stopped_at,created_at,\
         conversation_id,linked,attributes.plan,attributes.seats,attributes.renewal,attributes.order_ref"
    );
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[1].starts_with(&format!("{contact},")) && lines[1].ends_with(",,,2027-01-31,"), "{csv}");
    assert!(lines[2].contains(",\"'=SUM(A1), \"\"Lda\"\"\",") && lines[2].ends_with(",free,3,,"), "{csv}");
    let (_, _, narrowed) = export("?attribute=plan:free", admin).await;
    assert_eq!(narrowed.split("\r\n").filter(|l| !l.is_empty()).count(), 2, "{narrowed}");
    let (_, _, elsewhere) = export(&format!("?channel_id={phone}"), admin).await;
    assert_eq!(elsewhere.split("\r\n").filter(|l| !l.is_empty()).count(), 1, "the header only: {elsewhere}");
    let (status, _, _) = export("", &al).await;
    assert_eq!(status, 403);
    let (status, _, body) = export("?attribute=nothing", admin).await;
    assert!(status == 400 && body.contains("invalid_attribute"), "{body}");
    let audited = app.count(
        "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'contacts.exported' \
            AND details->>'count' IN ('0', '1', '2')",
    );
    assert_eq!(audited, 3);

    // A macro sets a contact's attributes, checked when saved and when run.
    let bad_macro =
        json!({"name": "Bigger", "actions": [{"type": "set_contact_attributes", "attributes": {"seats": "many"}}]});
    let r = app.call("POST", "/api/macros", Some(admin), Some(bad_macro)).await;
    assert_eq!(code(&r), (422, "invalid_actions"), "{:?}", r.body);
    let grow = json!({"name": "Bigger", "actions": [{"type": "set_contact_attributes", "attributes": {"seats": 4,
        "order_ref": "upgrade"}}, {"type": "add_labels", "labels": ["upsell"]}]});
    let r = app.call("POST", "/api/macros", Some(admin), Some(grow)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let grow = r.body["id"].as_str().expect("id").to_string();
    let r = app.call("POST", &format!("/api/conversations/{others}/macros/{grow}"), Some(admin), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["conversation"]["labels"], json!(["upsell"]), "{:?}", r.body);
    let now = app.call("GET", &format!("/api/contacts/{other}"), Some(admin), None).await.body;
    assert_eq!(now["attributes"], json!({"plan": "free", "seats": 4, "order_ref": "upgrade"}), "{now}");
    // A definition gone since: the run is refused whole, nothing written.
    assert_eq!(app.call("DELETE", "/api/contact-attributes/order_ref", Some(admin), None).await.status, 204);
    let r = app.call("POST", &format!("/api/conversations/{theirs}/macros/{grow}"), Some(admin), None).await;
    assert_eq!(code(&r), (422, "invalid_attributes"), "{:?}", r.body);
    let theirs_now = app.call("GET", &format!("/api/conversations/{theirs}"), Some(admin), None).await.body;
    assert_eq!(theirs_now["labels"], json!([]), "{theirs_now}");

    // At most 50 in a tenant.
    for n in 0..47 {
        let r = define(&app, admin, json!({"key": format!("extra_{n}"), "name": format!("Extra {n}"), "type": "text"}))
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    assert_eq!(
        code(&define(&app, admin, json!({"key": "one_more", "name": "x", "type": "text"})).await).1,
        "too_many_attributes"
    );
}

#[actix_web::test]
async fn every_members_socket_hears_of_the_definitions() {
    use crate::realtime::{until, ws};
    use std::time::Duration;
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let admin = ctx.admin.as_str();
    // An agent who sees no channel still keeps the definitions.
    let (_, al) = agent_al(&app, admin).await;
    let mut socket = ws(&app, "", Some(&al), None).await.expect("socket");
    let wait = Duration::from_secs(5);
    let plan = json!({"key": "plan", "name": "Plan", "type": "list", "options": ["free", "pro"]});
    assert_eq!(define(&app, admin, plan.clone()).await.status, 201);
    let made = until(&mut socket, "contact_attribute.updated", wait).await.expect("made");
    assert_eq!((&made["data"]["key"], &made["data"]["options"]), (&json!("plan"), &json!(["free", "pro"])), "{made}");
    assert!(made["seq"].is_i64(), "logged, so replayed: {made}");
    // The same create again changes nothing, and says nothing.
    let said = || app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type LIKE 'contact_attribute.%'");
    assert_eq!(define(&app, admin, plan).await.status, 200);
    assert_eq!(said(), 1);

    let narrowed = json!({"name": "Subscription", "options": ["pro"]});
    let r = app.call("PATCH", "/api/contact-attributes/plan", Some(admin), Some(narrowed)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let changed = until(&mut socket, "contact_attribute.updated", wait).await.expect("changed");
    assert_eq!((&changed["data"]["name"], &changed["data"]["options"]), (&json!("Subscription"), &json!(["pro"])));
    let same = json!({"name": "Subscription"});
    assert_eq!(app.call("PATCH", "/api/contact-attributes/plan", Some(admin), Some(same)).await.status, 200);
    assert_eq!(said(), 2, "a change that changes nothing says nothing");

    assert_eq!(app.call("DELETE", "/api/contact-attributes/plan", Some(admin), None).await.status, 204);
    let gone = until(&mut socket, "contact_attribute.deleted", wait).await.expect("deleted");
    assert_eq!(gone["data"], json!({"key": "plan"}));

    // Replayed to a socket that was away, in order.
    let mut back = ws(&app, &format!("?since={}", made["seq"]), Some(&al), None).await.expect("socket");
    let again = until(&mut back, "contact_attribute.updated", wait).await.expect("replayed");
    assert_eq!(again["seq"], changed["seq"]);
    let again = until(&mut back, "contact_attribute.deleted", wait).await.expect("replayed");
    assert_eq!(again["seq"], gone["seq"]);
}
