//! Contacts from a spreadsheet (`inbox::contact_import`): WhatsApp numbers
//! made contacts, known contacts updated, an export edited and sent back;
//! all or nothing, safe to repeat.

use serde_json::{json, Value};

use crate::channels::PAGE_A;
use crate::common::{Resp, TestApp};
use crate::inbox::{acme, agent_al, by_contact, channel_id, conversations, PHONE};

/// `POST /api/contacts/import{query}` with `body` as the CSV.
pub(crate) async fn import(app: &TestApp, t: &str, query: &str, body: impl Into<reqwest::Body>) -> Resp {
    let r = app
        .client
        .post(app.url(&format!("/api/contacts/import{query}")))
        .bearer_auth(t)
        .header("content-type", "text/csv")
        .body(body)
        .send()
        .await
        .expect("import");
    let status = r.status().as_u16();
    Resp { status, body: r.json().await.unwrap_or(Value::Null) }
}

/// The import as a page's form sends it: the CSV as the `file` part.
async fn import_form(
    app: &TestApp,
    t: &str,
    query: String,
    file: Option<Vec<u8>>,
    parts: Vec<(String, String)>,
) -> Resp {
    let file = file.as_deref().map(|bytes| ("contacts.csv", "text/csv", bytes));
    let parts: Vec<(&str, &str)> = parts.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    crate::inbox::post_form(app, t, &format!("/api/contacts/import{query}"), file, &parts).await
}

fn code(r: &Resp) -> (u16, &str) {
    (r.status, r.body["error"]["code"].as_str().unwrap_or(""))
}

fn counts(r: &Resp) -> [u64; 4] {
    ["rows", "created", "updated", "unchanged"].map(|k| r.body[k].as_u64().unwrap_or(u64::MAX))
}

/// The channel's contacts, by external id.
async fn contacts_of(app: &TestApp, t: &str, channel: &str) -> Vec<Value> {
    let r = app.call("GET", &format!("/api/contacts?channel_id={channel}&limit=100"), Some(t), None).await;
    r.body["items"].as_array().expect("items").clone()
}

fn external<'a>(contacts: &'a [Value], id: &str) -> &'a Value {
    contacts.iter().find(|c| c["external_id"] == id).unwrap_or(&Value::Null)
}

#[actix_web::test]
async fn a_spreadsheet_of_contacts_goes_in_whole_or_not_at_all() {
    let app = crate::common::spawn_app().await;
    let ctx = acme(&app).await;
    let admin = ctx.admin.as_str();
    let whatsapp = channel_id(&app, admin, PHONE).await;
    let page = channel_id(&app, admin, PAGE_A).await;
    for d in [
        json!({"key": "plan", "name": "Plan", "type": "list", "options": ["free", "pro", "enterprise"]}),
        json!({"key": "seats", "name": "Seats", "type": "number"}),
        json!({"key": "vip", "name": "VIP", "type": "boolean"}),
    ] {
        assert_eq!(app.call("POST", "/api/contact-attributes", Some(admin), Some(d)).await.status, 201);
    }

    // Numbers nobody has become contacts, without conversations.
    let list = "\u{feff}phone,name,email,attributes.plan,attributes.seats,attributes.vip\r\n\
                +351 912 345 678,Ana Sousa,ana@example.pt,pro,12,TRUE\r\n\
                +55 11 98765-4321,\"João \"\"Jó\"\" Lima\",,free,,\r\n\
                \r\n";
    let q = format!("?channel_id={whatsapp}");
    let r = import(&app, admin, &q, list).await;
    assert_eq!((r.status, counts(&r)), (200, [2, 2, 0, 0]), "{:?}", r.body);
    assert_eq!(r.body["dry_run"], false);
    let made = contacts_of(&app, admin, &whatsapp).await;
    let ana = external(&made, "351912345678");
    assert_eq!(
        (&ana["name"], &ana["email"], &ana["phone"], &ana["attributes"], &ana["conversation_id"]),
        (
            &json!("Ana Sousa"),
            &json!("ana@example.pt"),
            &json!("+351 912 345 678"),
            &json!({"plan": "pro", "seats": 12, "vip": true}),
            &Value::Null
        ),
        "{made:?}"
    );
    let joao = external(&made, "5511987654321");
    assert_eq!((&joao["name"], &joao["email"]), (&json!("João \"Jó\" Lima"), &Value::Null), "{made:?}");
    // The same file again changes nothing, and says so.
    let events = || app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'contact.updated'");
    let announced = events();
    assert_eq!(announced, 2, "each contact made is announced");
    let r = import(&app, admin, &q, list).await;
    assert_eq!((r.status, counts(&r)), (200, [2, 0, 0, 2]), "{:?}", r.body);
    assert_eq!(events(), announced);
    assert_eq!(contacts_of(&app, admin, &whatsapp).await.len(), 2);

    // The customer's own first message lands on the contact the file made.
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": "351912345678", "text": "olá"})).await;
    // And one the file does not name, with the name WhatsApp gives.
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": "351912000333", "text": "oi", "name": "Bea Meta"}))
        .await;
    app.processed().await;
    let convs = conversations(&app, admin, "").await;
    assert_eq!(by_contact(&convs, "351912345678")["contact"]["id"], ana["id"], "{convs:?}");

    // Messenger contacts are found by their id, never made.
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "7392015648190001", "text": "hi"})).await;
    app.processed().await;
    let on_page = format!("?channel_id={page}");
    let r = import(&app, admin, &on_page, "external_id,notes\n7392015648190001,Calls after 6pm\n").await;
    assert_eq!((r.status, counts(&r)), (200, [1, 0, 1, 0]), "{:?}", r.body);
    let customer = external(&contacts_of(&app, admin, &page).await, "7392015648190001").clone();
    assert_eq!(customer["notes"], "Calls after 6pm");

    // One wrong row and nothing is written; the error names the lines.
    let wrong = "phone,external_id,email,attributes.plan\n\
                 +351 912 345 678,,ana@new.pt,enterprise\n\
                 +44 20,,,\n\
                 +351912345600,,not-an-address,\n\
                 +351912345601,,,gold\n";
    let before = app.count("SELECT count(*) AS n FROM tenant_acme.contacts");
    let r = import(&app, admin, &q, wrong).await;
    assert_eq!(code(&r), (422, "invalid_import"), "{:?}", r.body);
    let message = r.body["error"]["message"].as_str().unwrap_or("");
    for line in ["line 3:", "line 4:", "line 5:"] {
        assert!(message.contains(line), "{message}");
    }
    assert!(!message.contains("line 2:"), "{message}");
    // And lists them for a client to mark, each with the PATCH's code.
    let details = &r.body["error"]["details"];
    let listed: Vec<(u64, &str)> = details["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|w| (w["line"].as_u64().unwrap_or(0), w["code"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(details["wrong_rows"], 3, "{details}");
    assert_eq!(listed, [(3, "invalid_phone_number"), (4, "invalid_email"), (5, "invalid_attributes")], "{details}");
    assert!(details["rows"][1]["message"].as_str().is_some_and(|m| m.contains("e-mail address")), "{details}");
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.contacts"), before);
    let ana_now = external(&contacts_of(&app, admin, &whatsapp).await, "351912345678").clone();
    assert_eq!((&ana_now["email"], &ana_now["attributes"]["plan"]), (&json!("ana@example.pt"), &json!("pro")));
    let r = import(&app, admin, &on_page, "external_id,notes\n7392015648199999,who?\n").await;
    assert_eq!(code(&r), (422, "invalid_import"), "a Messenger id nobody has: {:?}", r.body);
    let r = import(&app, admin, "", "phone\n+351912345678\n").await;
    assert_eq!(code(&r), (422, "invalid_import"), "no channel: {:?}", r.body);
    let r = import(&app, admin, &q, "phone\n+351912345678\0\n").await;
    assert_eq!(code(&r), (422, "invalid_import"), "a NUL: {:?}", r.body);
    assert_eq!(r.body["error"]["details"]["rows"][0]["code"], "invalid_text", "{:?}", r.body);

    // The file's shape is checked before any row.
    for (bad, expected) in [
        ("phone,plna\n+351912345602,pro\n", "invalid_csv"),
        ("phone,attributes.colour\n+351912345602,red\n", "invalid_csv"),
        ("name\nAna\n", "invalid_csv"),
        ("phone,name\n+351912345602\n", "invalid_csv"),
    ] {
        assert_eq!(code(&import(&app, admin, &q, bad).await), (422, expected), "{bad}");
    }
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.contacts"), before);

    // A dry run answers as the import would, and keeps nothing.
    let announced = events();
    let r = import(&app, admin, &format!("{q}&dry_run=true"), "phone,name\n+351912345603,Rui\n").await;
    assert_eq!((r.status, counts(&r), &r.body["dry_run"]), (200, [1, 1, 0, 0], &json!(true)), "{:?}", r.body);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.contacts"), before);
    assert_eq!(events(), announced);

    // An export edited in a spreadsheet goes back: only the edit changes.
    let csv = app
        .client
        .get(app.url("/api/contacts.csv"))
        .bearer_auth(admin)
        .send()
        .await
        .expect("export")
        .text()
        .await
        .expect("csv");
    let r = import(&app, admin, "", csv.clone()).await;
    assert_eq!((r.status, counts(&r)), (200, [4, 0, 0, 4]), "{:?} {csv}", r.body);
    let named_by_meta =
        app.count("SELECT count(*) AS n FROM tenant_acme.contacts WHERE name = 'Bea Meta' AND name_set_by IS NULL");
    assert_eq!(named_by_meta, 1, "Meta's names stay Meta's");
    let r = import(&app, admin, "", csv.replace(",pro,12,true", ",enterprise,40,true")).await;
    assert_eq!((r.status, counts(&r)), (200, [4, 0, 1, 3]), "{:?} {csv}", r.body);
    let ana_now = external(&contacts_of(&app, admin, &whatsapp).await, "351912345678").clone();
    assert_eq!(ana_now["attributes"], json!({"plan": "enterprise", "seats": 40, "vip": true}));
    // A row whose id is on another channel than its channel_id says.
    let moved = format!("id,channel_id\n{},{page}\n", ana["id"].as_str().unwrap_or(""));
    assert_eq!(code(&import(&app, admin, "", moved).await), (422, "invalid_import"));
    let audited = app.count("SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'contacts.imported'");
    assert_eq!(audited, 5, "each import that went in, once");

    // The export's cap: more contacts than it holds is refused whole, and
    // audited only when it is not.
    let exported = |most: usize| {
        crate::auto_resolve::in_acme(&app, |tc, _| {
            let filter = switchboard::inbox::contacts::ContactFilter::default();
            let user = switchboard::ids::UserId(1);
            Ok(switchboard::inbox::contact_export::export_at_most(tc, user, &filter, most).map(|(_, n)| n))
        })
        .map_err(|e| e.code.to_string())
    };
    let audited = || app.count("SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'contacts.exported'");
    let before = audited();
    assert_eq!(exported(4), Ok(4));
    assert_eq!(exported(3), Err("too_many_contacts".to_string()));
    assert_eq!(audited(), before + 1);

    // Admins only; the CSV itself, or a form's file (a page's file
    // input), its query in the form's parts or the query; at most 2 MB.
    let (_, al) = agent_al(&app, admin).await;
    assert_eq!(code(&import(&app, &al, &q, list).await).0, 403);
    let form = |query: &str, file: Option<&[u8]>, parts: &[(&str, &str)]| {
        import_form(
            &app,
            admin,
            query.to_string(),
            file.map(<[u8]>::to_vec),
            parts.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
        )
    };
    let one: &[u8] = b"phone,name\n+351912345604,Teo\n";
    let r = form(&q, Some(one), &[("dry_run", "true")]).await;
    assert_eq!((r.status, counts(&r), &r.body["dry_run"]), (200, [1, 1, 0, 0], &json!(true)), "{:?}", r.body);
    let r = form("", Some(one), &[("channel_id", &whatsapp)]).await;
    assert_eq!((r.status, counts(&r), &r.body["dry_run"]), (200, [1, 1, 0, 0], &json!(false)), "{:?}", r.body);
    assert_eq!(external(&contacts_of(&app, admin, &whatsapp).await, "351912345604")["name"], "Teo");
    for (query, file, parts, why) in [
        (q.as_str(), Some(one), &[("channel_id", whatsapp.as_str())][..], "channel_id twice"),
        (q.as_str(), None, &[][..], "no file"),
        (q.as_str(), Some(one), &[("notes", "x")][..], "an unknown part"),
    ] {
        assert_eq!(code(&form(query, file, parts).await), (400, "invalid_body"), "{why}");
    }
    let huge = format!("phone\n{}", "+351912345605\n".repeat(160_000));
    assert_eq!(code(&form(&q, Some(huge.as_bytes()), &[]).await), (413, "payload_too_large"));
    let big = format!("phone,notes\n{}", "+351912345605,x\n".repeat(140_000));
    let r = import(&app, admin, &q, big).await;
    assert_eq!(code(&r), (413, "payload_too_large"), "{:?}", r.body);
    assert_eq!(code(&import(&app, admin, &format!("{q}&dry_run=yes"), list).await), (400, "invalid_dry_run"));
}
