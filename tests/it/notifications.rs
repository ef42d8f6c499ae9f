//! A member's notifications (`inbox::notifications`): kept when a
//! colleague assigns them a conversation or mentions them, or a
//! conversation of theirs passes its reply target; listed while they may
//! see it, marked read one by one, all at once, or by reading the
//! conversation.

use serde_json::{json, Value};

use crate::channels::PAGE_A;
use crate::common::{spawn_app, TestApp};
use crate::inbox::{acme, agent_al, by_contact, conversations};
use crate::realtime::{next, until, ws, Socket};
use crate::scheduled::{give_the_page, two_customers};
use std::time::Duration;

/// The next `notifications.changed` on `socket`: whose, and their count.
async fn changed(socket: &mut Socket) -> (Value, Value) {
    let frame = until(socket, "notifications.changed", Duration::from_secs(5)).await.expect("announced");
    assert_eq!(frame["type"], "notifications.changed", "{frame}");
    (frame["data"]["user_id"].clone(), frame["data"]["unread_count"].clone())
}

/// The last unread count announced on `socket` before it falls quiet.
async fn last_changed(socket: &mut Socket) -> Option<(Value, Value)> {
    let mut last = None;
    while let Some(frame) = until(socket, "notifications.changed", Duration::from_millis(500)).await {
        last = Some((frame["data"]["user_id"].clone(), frame["data"]["unread_count"].clone()));
    }
    last
}

fn code(r: &crate::common::Resp) -> (u16, &str) {
    (r.status, r.body["error"]["code"].as_str().unwrap_or(""))
}

async fn notifications(app: &TestApp, t: &str, query: &str) -> Value {
    let r = app.call("GET", &format!("/api/notifications{query}"), Some(t), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

fn kinds(page: &Value) -> Vec<String> {
    page["items"].as_array().expect("items").iter().map(|n| n["kind"].as_str().unwrap_or("").to_string()).collect()
}

async fn read(app: &TestApp, t: &str, body: Value) -> crate::common::Resp {
    app.call("POST", "/api/notifications/read", Some(t), Some(body)).await
}

/// An id as the API writes it (a string), as a number.
fn id(v: &Value) -> i64 {
    v.as_str().and_then(|s| s.parse::<i64>().ok()).expect("an id")
}

/// Runs `work` in acme's schema as the server's own workers do: what it
/// tells members is kept for them, and its events are written.
fn in_acme<T>(
    app: &TestApp,
    work: impl FnOnce(
        &mut switchboard::db::TenantConn<'_>,
        &mut switchboard::inbox::events::EventLog,
    ) -> Result<T, switchboard::AppError>,
) -> T {
    let mut pooled = app.pool.get().expect("conn");
    let tenant = switchboard::tenancy::find_by_slug(&mut pooled, "acme").expect("q").expect("acme").tenant_id();
    switchboard::db::with_tenant(&mut pooled, &switchboard::db::TenantScope::system(tenant), |tc| {
        let mut log = switchboard::inbox::events::EventLog::new();
        let out = work(tc, &mut log)?;
        let notices = log.member_notices();
        switchboard::inbox::notifications::keep(tc, &mut log, &notices)?;
        log.write(tc)?;
        Ok::<_, switchboard::AppError>(out)
    })
    .expect("the work")
}

/// Rings conversation waits past their target as the server's clock does,
/// keeping what it tells each member.
fn ring_overdue(app: &TestApp) -> usize {
    in_acme(app, switchboard::inbox::waiting::ring_overdue)
}

#[actix_web::test]
async fn a_member_finds_what_they_were_told_and_marks_it_read() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let admin = ctx.admin.clone();
    let (wa, page) = two_customers(&app, &admin).await;
    let (al, al_token) = agent_al(&app, &admin).await;
    give_the_page(&app, &admin, &al).await;
    let me = app.call("GET", "/api/me", Some(&admin), None).await.body["user"]["id"].clone();
    let mut socket = ws(&app, "", Some(&al_token), None).await.expect("socket");
    let empty = notifications(&app, &al_token, "").await;
    assert_eq!(empty, json!({"items": [], "next_cursor": null, "unread_count": 0}));

    // A colleague assigns Al the Page's conversation and mentions him in a
    // note; what Ann does to herself tells nobody.
    let assign = |conv: &str, to: &Value| {
        let (app, t, url, body) =
            (&app, admin.clone(), format!("/api/conversations/{conv}"), json!({"assignee_id": to}));
        async move { app.call("PATCH", &url, Some(&t), Some(body)).await }
    };
    assert_eq!(assign(&page, &al["user_id"]).await.status, 200);
    // Every tab of his keeps its badge: an assignment has no notification
    // event of its own.
    assert_eq!(changed(&mut socket).await, (al["user_id"].clone(), json!(1)));
    assert_eq!(assign(&wa, &me).await.status, 200);
    let note = json!({"text": "Al, this one asks for a refund 💸", "private": true, "mentions": [al["user_id"]]});
    let r = app.call("POST", &format!("/api/conversations/{page}/messages"), Some(&admin), Some(note)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let note_id = r.body["id"].clone();
    let list = notifications(&app, &al_token, "").await;
    assert_eq!(kinds(&list), ["mention", "assigned"]);
    assert_eq!(list["unread_count"], 2);
    let mention = &list["items"][0];
    assert_eq!(
        (&mention["conversation_id"], &mention["message_id"], &mention["by"], &mention["read_at"]),
        (&json!(page), &note_id, &me, &Value::Null)
    );
    assert_eq!(mention["preview"], "Al, this one asks for a refund 💸");
    assert_eq!(list["items"][1]["message_id"], Value::Null);
    let doc: Value =
        app.client.get(app.url("/api/openapi.json")).send().await.expect("openapi").json().await.expect("json");
    for item in list["items"].as_array().expect("items") {
        crate::openapi::conforms(&doc, "Notification", item);
    }
    assert_eq!(notifications(&app, &admin, "").await["unread_count"], 0);

    // Paged, newest first.
    let first = notifications(&app, &al_token, "?limit=1").await;
    assert_eq!(kinds(&first), ["mention"]);
    let cursor = first["next_cursor"].as_str().expect("a next page").to_string();
    assert_eq!(kinds(&notifications(&app, &al_token, &format!("?limit=1&cursor={cursor}")).await), ["assigned"]);

    // Bad asks are refused; marking is safe to repeat, and others' ids
    // are passed over.
    for (body, want) in [
        (json!({}), (422, "invalid_body")),
        (json!({"ids": []}), (422, "invalid_body")),
        (json!({"all": false}), (422, "invalid_body")),
        (json!({"ids": ["1"], "all": true}), (422, "invalid_body")),
        (json!({"ids": (1..=201).map(|i| i.to_string()).collect::<Vec<_>>()}), (422, "invalid_body")),
        (json!({"ids": ["x"]}), (422, "invalid_body")),
        (json!({"every": true}), (422, "invalid_body")),
    ] {
        let r = read(&app, &al_token, body.clone()).await;
        assert_eq!(code(&r), want, "{body}: {:?}", r.body);
    }
    let r = app.call("GET", "/api/notifications?unread=maybe", Some(&al_token), None).await;
    assert_eq!(code(&r), (400, "invalid_query"));
    let mention_id = mention["id"].clone();
    let r = read(&app, &admin, json!({"ids": [mention_id]})).await;
    assert_eq!(r.body, json!({"marked": 0, "unread_count": 0}));
    let r = read(&app, &al_token, json!({"ids": [mention_id]})).await;
    assert_eq!(r.body, json!({"marked": 1, "unread_count": 1}));
    // The mention's count of 2, then this read's 1.
    assert_eq!(changed(&mut socket).await, (al["user_id"].clone(), json!(2)));
    assert_eq!(changed(&mut socket).await, (al["user_id"].clone(), json!(1)));
    let r = read(&app, &al_token, json!({"ids": [mention_id]})).await;
    assert_eq!(r.body, json!({"marked": 0, "unread_count": 1}));
    assert_eq!(kinds(&notifications(&app, &al_token, "?unread=true").await), ["assigned"]);
    assert!(notifications(&app, &al_token, "").await["items"][0]["read_at"].is_string());

    // Reading the conversation is seeing what one was told of it.
    let r = app.call("POST", &format!("/api/conversations/{page}/read"), Some(&al_token), None).await;
    assert!(r.status < 300, "{:?}", r.body);
    assert_eq!(notifications(&app, &al_token, "").await["unread_count"], 0);

    // A note that no longer names him takes its mention away, and so does
    // deleting it.
    let note2 = json!({"text": "Also check the address", "private": true, "mentions": [al["user_id"]]});
    let r = app.call("POST", &format!("/api/conversations/{page}/messages"), Some(&admin), Some(note2)).await;
    let second_note = r.body["id"].as_str().expect("id").to_string();
    assert_eq!(kinds(&notifications(&app, &al_token, "?unread=true").await), ["mention"]);
    let r = app
        .call(
            "PATCH",
            &format!("/api/messages/{second_note}"),
            Some(&admin),
            Some(json!({"text": "Also check the address", "mentions": []})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(notifications(&app, &al_token, "?unread=true").await["unread_count"], 0);
    let r = app.call("DELETE", &format!("/api/messages/{}", note_id.as_str().expect("id")), Some(&admin), None).await;
    assert!(r.status < 300, "{:?}", r.body);
    let left = notifications(&app, &al_token, "").await;
    assert_eq!(kinds(&left), ["assigned"], "{left}");

    // A conversation of his passing its reply target is kept for him.
    app.exec(&format!(
        "UPDATE tenant_acme.conversations SET waiting_since = now() - interval '2 hours', \
             reply_due_at = now() - interval '1 hour' WHERE id = {page}"
    ));
    assert_eq!(ring_overdue(&app), 1);
    let list = notifications(&app, &al_token, "?unread=true").await;
    assert_eq!((kinds(&list), &list["items"][0]["by"]), (vec!["reply_overdue".to_string()], &Value::Null));

    // Out of the channel, he sees none of its notifications, and his
    // badge says so at once; back, he sees those still his (the mention;
    // the overdue went with the conversation, released as he left). All
    // at once marks every one.
    let note3 = json!({"text": "Can you call her back?", "private": true, "mentions": [al["user_id"]]});
    let r = app.call("POST", &format!("/api/conversations/{page}/messages"), Some(&admin), Some(note3)).await;
    assert!(r.status < 300, "{:?}", r.body);
    assert_eq!(notifications(&app, &al_token, "?unread=true").await["unread_count"], 2);
    let mut fresh = ws(&app, "", Some(&al_token), None).await.expect("socket");
    until(&mut fresh, "hello", Duration::from_secs(5)).await.expect("hello");
    let r = app
        .call(
            "PUT",
            &format!("/api/channels/{}/members", list["items"][0]["channel_id"].as_str().expect("c")),
            Some(&admin),
            Some(json!({"user_ids": []})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(notifications(&app, &al_token, "").await, json!({"items": [], "next_cursor": null, "unread_count": 0}));
    // Announced once, though the overdue went and the channel did.
    assert_eq!(changed(&mut fresh).await, (al["user_id"].clone(), json!(0)));
    give_the_page(&app, &admin, &al).await;
    assert_eq!(changed(&mut fresh).await, (al["user_id"].clone(), json!(1)));
    let r = read(&app, &al_token, json!({"all": true})).await;
    assert_eq!(r.body, json!({"marked": 1, "unread_count": 0}));

    // Read ones go after 30 days, by the hourly pruning; unread ones stay.
    let kept = "SELECT count(*) AS n FROM tenant_acme.notifications";
    let before = app.count(kept);
    app.exec(
        "UPDATE tenant_acme.notifications SET read_at = now() - interval '31 days' \
          WHERE id = (SELECT max(id) FROM tenant_acme.notifications WHERE kind = 'mention')",
    );
    app.exec("UPDATE tenant_acme.notifications SET created_at = now() - interval '90 days' WHERE read_at IS NULL");
    let pruned = in_acme(&app, |tc, _| switchboard::inbox::notifications::prune(tc));
    assert_eq!((pruned, app.count(kept)), (1, before - 1));

    // Removed from the team, his notifications go.
    let r =
        app.call("DELETE", &format!("/api/members/{}", al["user_id"].as_str().expect("id")), Some(&admin), None).await;
    assert!(r.status < 300, "{:?}", r.body);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.notifications"), 0);
}

/// The types of the frames on `socket` up to and including the
/// `message.created` of `message` (later events come later: what is not
/// among these never came).
async fn types_until_message(socket: &mut Socket, message: &Value) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let frame = next(socket, Duration::from_secs(10)).await.expect("a frame");
        seen.push(frame["type"].as_str().unwrap_or("").to_string());
        if frame["type"] == "message.created" && frame["data"]["id"] == *message {
            return seen;
        }
        assert_ne!(frame["type"], "closed", "{seen:?}");
    }
}

/// What the live inbox tells one member (a mention of them, their unread
/// count) reaches only that member's sockets, live and when resumed:
/// colleagues of the same channel, and admins who see every channel, hear
/// the note but not whom it called in.
#[actix_web::test]
async fn what_is_told_to_one_member_reaches_only_their_sockets() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let admin = ctx.admin.clone();
    let (_, page) = two_customers(&app, &admin).await;
    let (al, al_token) = agent_al(&app, &admin).await;
    let bo = json!({"email": "bo@acme.test", "role": "agent", "password": "bo-password-1"});
    let r = app.call("POST", "/api/members", Some(&admin), Some(bo)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    // Both agents of the Page.
    let members = json!({"user_ids": [al["user_id"], r.body["user_id"]]});
    let shown = app.call("GET", &format!("/api/conversations/{page}"), Some(&admin), None).await;
    let url = format!("/api/channels/{}/members", shown.body["channel_id"].as_str().expect("channel"));
    assert_eq!(app.call("PUT", &url, Some(&admin), Some(members)).await.status, 200);
    let bo_token = crate::common::token(&app.login("bo@acme.test", "bo-password-1", "acme").await, "access_token");
    let dee = json!({"email": "dee@acme.test", "role": "admin", "password": "dee-password-1"});
    let dee = app.call("POST", "/api/members", Some(&admin), Some(dee)).await;
    assert_eq!(dee.status, 201, "{:?}", dee.body);
    let dee_token = crate::common::token(&app.login("dee@acme.test", "dee-password-1", "acme").await, "access_token");

    let mut al_socket = ws(&app, "", Some(&al_token), None).await.expect("socket");
    let mut bo_socket = ws(&app, "", Some(&bo_token), None).await.expect("socket");
    let mut dee_socket = ws(&app, "", Some(&dee_token), None).await.expect("socket");
    let hello = until(&mut bo_socket, "hello", Duration::from_secs(5)).await.expect("hello");
    let before = hello["data"]["last_seq"].as_i64().expect("last_seq");

    // Ann mentions Al in a note, then writes one that names nobody.
    let path = format!("/api/conversations/{page}/messages");
    let note = json!({"text": "Al, the refund 💸", "private": true, "mentions": [al["user_id"]], "client_id": "m-1"});
    let r = app.call("POST", &path, Some(&admin), Some(note)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let plain = json!({"text": "noted", "private": true, "client_id": "m-2"});
    let r = app.call("POST", &path, Some(&admin), Some(plain)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let last_note = r.body["id"].clone();

    let told = until(&mut al_socket, "notification", Duration::from_secs(10)).await.expect("told");
    assert_eq!((&told["data"]["kind"], &told["data"]["user_id"]), (&json!("mention"), &al["user_id"]));
    assert_eq!(changed(&mut al_socket).await, (al["user_id"].clone(), json!(1)));
    for (who, socket) in [("Bo", &mut bo_socket), ("Dee", &mut dee_socket)] {
        let seen = types_until_message(socket, &last_note).await;
        assert_eq!(seen.iter().filter(|t| *t == "message.created").count(), 2, "{who}: {seen:?}");
        assert!(!seen.iter().any(|t| t.starts_with("notification")), "{who} heard Al's notices: {seen:?}");
    }

    // Resumed from before the notes, the same.
    let since = format!("?since={before}");
    let mut bo_again = ws(&app, &since, Some(&bo_token), None).await.expect("socket");
    let seen = types_until_message(&mut bo_again, &last_note).await;
    assert!(seen.iter().any(|t| t == "message.created"), "{seen:?}");
    assert!(!seen.iter().any(|t| t.starts_with("notification")), "replayed to Bo: {seen:?}");
    let mut al_again = ws(&app, &since, Some(&al_token), None).await.expect("socket");
    let seen = types_until_message(&mut al_again, &last_note).await;
    assert!(seen.contains(&"notification".to_string()), "{seen:?}");
    assert!(seen.contains(&"notifications.changed".to_string()), "{seen:?}");

    // Dee, an admin on no channel's list, is given the conversation: her
    // count is of every channel's.
    let to_dee = json!({"assignee_id": dee.body["user_id"]});
    let r = app.call("PATCH", &format!("/api/conversations/{page}"), Some(&admin), Some(to_dee)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(changed(&mut dee_socket).await, (dee.body["user_id"].clone(), json!(1)));

    // Kept in the log as Al's alone (integrators' endpoints still take it).
    let mentions =
        "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'notification' AND for_user_id IS NOT NULL";
    assert_eq!(app.count(mentions), 1);

    // Erasing the customer takes what Al was told of them with the
    // conversation, kept and logged.
    let r = app.call("GET", &format!("/api/conversations/{page}"), Some(&admin), None).await;
    let contact = r.body["contact"]["id"].as_str().expect("contact").to_string();
    assert_eq!(notifications(&app, &al_token, "").await["unread_count"], 1);
    let r = app.call("DELETE", &format!("/api/contacts/{contact}"), Some(&admin), None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(notifications(&app, &al_token, "").await, json!({"items": [], "next_cursor": null, "unread_count": 0}));
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.notifications"), 0);
    assert_eq!(app.count(mentions), 0);
}

/// The server's own assignments (auto-assign) are kept, never mailed: they
/// go to members online, and a mail would have no colleague to name;
/// a colleague's is mailed to a member who is not online. A customer
/// writing in their conversation is never mailed.
#[actix_web::test]
async fn the_servers_assignments_are_not_mailed() {
    use switchboard::inbox::events::MemberNotice;
    use switchboard::inbox::notice_mail::{queue, Reach};
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (_, page) = two_customers(&app, &ctx.admin).await;
    let (al, _) = agent_al(&app, &ctx.admin).await;
    let al_id = id(&al["user_id"]);
    let ann_id = id(&app.call("GET", "/api/me", Some(&ctx.admin), None).await.body["user"]["id"]);
    let conversation = page.parse::<i64>().expect("an id");
    let assigned = move |by: Option<i64>| MemberNotice {
        kind: "assigned".into(),
        user: al_id,
        by,
        conversation,
        message: None,
        preview: None,
    };
    let queued = in_acme(&app, |tc, _| {
        let reach =
            Reach { online: &[], conversation_url: None, public_url: "http://127.0.0.1", unsubscribe_key: b"key" };
        let by_the_server = queue(tc, &[assigned(None)], &reach)?;
        let by_ann = queue(tc, &[assigned(Some(ann_id))], &reach)?;
        // A customer writing in Al's conversation is kept, not mailed.
        let wrote = MemberNotice { kind: "customer_message".into(), ..assigned(None) };
        let by_the_customer = queue(tc, &[wrote], &reach)?;
        Ok((by_the_server, by_ann, by_the_customer))
    });
    assert_eq!(queued, (0, 1, 0));
}

/// The Page's customer, who writes in Portuguese.
const PSID: &str = "7392015648120394";

/// Acme with both customers written in, and Al an agent of the Page.
struct OnThePage {
    admin: String,
    /// The Page's conversation.
    page: String,
    al: Value,
    al_token: String,
}

async fn al_on_the_page(app: &TestApp) -> OnThePage {
    let admin = acme(app).await.admin;
    let (_, page) = two_customers(app, &admin).await;
    let (al, al_token) = agent_al(app, &admin).await;
    give_the_page(app, &admin, &al).await;
    OnThePage { admin, page, al, al_token }
}

/// A customer writing in a conversation assigned to someone is kept for
/// that member alone: one unread line per conversation, naming the first
/// message and showing the latest (by when it was written), the count
/// moving once;
/// nothing while nobody has it, nor when the message is what gave it to
/// them; read with the conversation; never mailed.
#[actix_web::test]
async fn an_assignees_customer_writing_is_one_line_until_read() {
    let app = spawn_app().await;
    let OnThePage { admin, page, al, al_token } = al_on_the_page(&app).await;
    let customer = |text: &str, at: Option<chrono::DateTime<chrono::Utc>>| {
        let mut body = json!({"to": PAGE_A, "from": PSID, "text": text});
        if let Some(at) = at {
            body["at"] = json!(at.to_rfc3339());
        }
        let app = &app;
        async move {
            app.fake("POST", "/_fake/inbound", body).await;
            app.processed().await;
        }
    };

    // Nobody has it: nothing kept for anyone.
    customer("Alguém aí?", None).await;
    assert_eq!(notifications(&app, &al_token, "").await["unread_count"], 0);
    assert_eq!(notifications(&app, &admin, "").await["unread_count"], 0);

    // Ann gives it to Al. He marks that read, but not the conversation:
    // the customer writing into it, unread, adds to what waits already.
    let r = app
        .call("PATCH", &format!("/api/conversations/{page}"), Some(&admin), Some(json!({"assignee_id": al["user_id"]})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(kinds(&notifications(&app, &al_token, "").await), ["assigned"]);
    assert_eq!(read(&app, &al_token, json!({"all": true})).await.status, 200);
    customer("Oi?", None).await;
    assert_eq!(notifications(&app, &al_token, "").await["unread_count"], 0, "the conversation was unread");
    // He reads the conversation.
    let r = app.call("POST", &format!("/api/conversations/{page}/read"), Some(&al_token), None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let mut al_socket = ws(&app, "", Some(&al_token), None).await.expect("socket");
    until(&mut al_socket, "hello", Duration::from_secs(5)).await.expect("hello");

    // The customer writes three times, the last delivered late: one line,
    // from the first and showing what they wrote last; the count moved once.
    // (Their clock a little ahead of ours: later than what came before.)
    let now = chrono::Utc::now();
    customer("Pedido 1234 🧾", Some(now + chrono::Duration::seconds(1))).await;
    assert_eq!(changed(&mut al_socket).await, (al["user_id"].clone(), json!(1)));
    customer("Já chegou? Obrigada!", Some(now + chrono::Duration::seconds(3))).await;
    customer("(esqueci: é urgente)", Some(now + chrono::Duration::seconds(2))).await;
    let listed = notifications(&app, &al_token, "?unread=true").await;
    assert_eq!((listed["unread_count"].clone(), kinds(&listed)), (json!(1), vec!["customer_message".to_string()]));
    let line = &listed["items"][0];
    assert_eq!((&line["conversation_id"], &line["by"]), (&json!(page), &Value::Null), "{line}");
    assert_eq!(line["preview"], "Já chegou? Obrigada!", "{line}");
    let shown = app.call("GET", &format!("/api/conversations/{page}/messages"), Some(&al_token), None).await;
    let first = shown.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|m| m["text"] == "Pedido 1234 🧾")
        .expect("the message")["id"]
        .clone();
    assert_eq!(line["message_id"], first, "where to start reading: {line}");
    assert_eq!(notifications(&app, &admin, "").await["unread_count"], 0, "Ann is told nothing");
    assert_eq!(
        app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'notifications.changed'"),
        3,
        "Al's assignment, his reading it, the first message; not the later ones"
    );

    // Reading the conversation reads it; the next message is a new line.
    let r = app.call("POST", &format!("/api/conversations/{page}/read"), Some(&al_token), None).await;
    assert!(r.status < 300, "{:?}", r.body);
    assert_eq!(notifications(&app, &al_token, "").await["unread_count"], 0);
    customer("Alô?", Some(now + chrono::Duration::seconds(4))).await;
    let listed = notifications(&app, &al_token, "").await;
    assert_eq!(listed["unread_count"], 1);
    assert_eq!(kinds(&listed), ["customer_message", "customer_message", "assigned"]);
    assert_eq!(listed["items"][0]["preview"], "Alô?");
    assert_ne!(listed["items"][0]["id"], line["id"]);
    assert_eq!(listed["items"][1]["preview"], "Já chegou? Obrigada!", "the read one shows what was read");

    // Several messages in one unit of work (a batch of webhooks), the
    // later one first: the line names the earlier.
    assert_eq!(read(&app, &al_token, json!({"all": true})).await.status, 200);
    let latest = shown.body["items"].as_array().expect("items").iter().find(|m| m["text"] == "Já chegou? Obrigada!");
    let wrote = |message: &Value| switchboard::inbox::events::MemberNotice {
        kind: "customer_message".into(),
        user: id(&al["user_id"]),
        by: None,
        conversation: id(&json!(page)),
        message: Some(id(message)),
        preview: None,
    };
    let notices = [wrote(&latest.expect("the message")["id"]), wrote(&first)];
    let kept = in_acme(&app, |tc, log| switchboard::inbox::notifications::keep(tc, log, &notices));
    assert_eq!(kept, 1);
    let listed = notifications(&app, &al_token, "?unread=true").await;
    assert_eq!(listed["items"][0]["message_id"], first, "{listed}");

    // Al turns them off in this tenant: what was kept stays; no more come.
    let me = app.call("GET", "/api/me", Some(&al_token), None).await;
    assert_eq!(me.body["inbox_notifications"], json!({"customer_message": true}), "{:?}", me.body);
    for bad in [json!({"customer_message": "no"}), json!({"mentions": false}), json!(true)] {
        let r = app.call("PATCH", "/api/me", Some(&al_token), Some(json!({"inbox_notifications": bad}))).await;
        assert_eq!(r.status, 422, "{bad}: {:?}", r.body);
        assert!(r.body["error"]["code"].is_string(), "{:?}", r.body);
    }
    let off = json!({"inbox_notifications": {"customer_message": false}});
    let r = app.call("PATCH", "/api/me", Some(&al_token), Some(off)).await;
    assert_eq!((r.status, &r.body["inbox_notifications"]), (200, &json!({"customer_message": false})), "{:?}", r.body);
    assert_eq!(r.body["email_notifications"]["assigned"], true, "mail is another choice");
    assert_eq!(app.call("POST", &format!("/api/conversations/{page}/read"), Some(&al_token), None).await.status, 204);
    customer("Ainda aí?", None).await;
    let listed = notifications(&app, &al_token, "").await;
    assert_eq!((listed["unread_count"].clone(), listed["items"].as_array().map(Vec::len)), (json!(0), Some(4)));
}

#[actix_web::test]
async fn a_customers_message_waiting_on_a_member_is_withdrawn_when_the_conversation_changes_hands() {
    let app = spawn_app().await;
    let OnThePage { admin, page, al, al_token } = al_on_the_page(&app).await;
    let path = format!("/api/conversations/{page}");
    // Al has the conversation and has read it; the customer writes.
    let waits_on_al = || async {
        let r = app.call("PATCH", &path, Some(&admin), Some(json!({"assignee_id": al["user_id"]}))).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(app.call("POST", &format!("{path}/read"), Some(&al_token), None).await.status, 204);
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "Ainda à espera… 🙏"})).await;
        app.processed().await;
        let listed = notifications(&app, &al_token, "?unread=true").await;
        assert_eq!(kinds(&listed), ["customer_message"], "{listed}");
    };
    waits_on_al().await;
    let mut al_socket = ws(&app, "", Some(&al_token), None).await.expect("socket");
    until(&mut al_socket, "hello", Duration::from_secs(5)).await.expect("hello");

    // Ann takes him off it: the customer no longer waits on him. His count
    // follows live; the lines he read stay.
    let r = app.call("PATCH", &path, Some(&admin), Some(json!({"assignee_id": null}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(changed(&mut al_socket).await, (al["user_id"].clone(), json!(0)));
    let listed = notifications(&app, &al_token, "").await;
    assert_eq!((listed["unread_count"].clone(), kinds(&listed)), (json!(0), vec!["assigned".to_string()]));
    // Repeating the change withdraws nothing more and announces nothing.
    let before = app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'notifications.changed'");
    let r = app.call("PATCH", &path, Some(&admin), Some(json!({"assignee_id": null}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'notifications.changed'"), before);

    // Given back, the customer writes again; then he loses the channel
    // (the server releases his conversations there): withdrawn too, so
    // it is not there when he is given the channel again.
    waits_on_al().await;
    let channel =
        by_contact(&conversations(&app, &admin, "").await, PSID)["channel_id"].as_str().expect("c").to_string();
    let r =
        app.call("PUT", &format!("/api/channels/{channel}/members"), Some(&admin), Some(json!({"user_ids": []}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    give_the_page(&app, &admin, &al).await;
    let listed = notifications(&app, &al_token, "?unread=true").await;
    assert_eq!(listed["unread_count"], 0, "{listed}");

    // Other changes leave it: it is still his customer waiting.
    waits_on_al().await;
    let r = app.call("PATCH", &path, Some(&admin), Some(json!({"priority": "high", "labels": ["vip"]}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(notifications(&app, &al_token, "?unread=true").await["unread_count"], 1);

    // The wait passes its target: that is his too, and goes with the
    // conversation as well; one he read stays, read.
    app.exec(&format!(
        "UPDATE tenant_acme.conversations SET waiting_since = now() - interval '2 hours', \
             reply_due_at = now() - interval '1 hour' WHERE id = {page}"
    ));
    assert_eq!(ring_overdue(&app), 1);
    let listed = notifications(&app, &al_token, "?unread=true").await;
    assert_eq!(kinds(&listed), ["reply_overdue", "customer_message"], "{listed}");
    let r = app.call("PATCH", &path, Some(&admin), Some(json!({"assignee_id": null}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(last_changed(&mut al_socket).await, Some((al["user_id"].clone(), json!(0))));
    let listed = notifications(&app, &al_token, "").await;
    assert!(!kinds(&listed).contains(&"reply_overdue".to_string()), "{listed}");
}

/// "Mark all read" and a bulk change handing away two of the member's
/// conversations (which withdraws what told them of those customers) take
/// the member's notifications in id order, so one waits for the other.
/// "Mark all" took them in its plan's order, the bulk change conversation
/// by conversation as it changed each: each could hold one the other
/// waited for (503 to one). Here the rows lie, and their conversations
/// run, against their ids; the other side is played by a transaction
/// taking them in id order.
#[actix_web::test]
async fn mark_all_read_and_a_change_of_hands_at_once_take_turns() {
    use crate::common::transaction_held_until_waited;
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let admin = ctx.admin.as_str();
    let (wa, fb) = two_customers(&app, admin).await;
    let owner = app.count("SELECT id AS n FROM public.users WHERE email = 'ann@acme.test'");
    let (a, b): (i64, i64) = (wa.parse().expect("id"), fb.parse().expect("id"));
    let (low, high) = (a.min(b), a.max(b));
    // Ann's notices, eight: each row written lies after the one before and
    // has a lower id; the first half are of the lower conversation.
    let notices = || {
        app.exec("DELETE FROM tenant_acme.notifications");
        for k in 0..8 {
            let (id, conv) = (9000007 - k, if k < 4 { low } else { high });
            app.exec(&format!(
                "INSERT INTO tenant_acme.notifications (id, user_id, kind, conversation_id) \
                 VALUES ({id}, {owner}, 'reply_overdue', {conv})"
            ));
        }
    };
    let bulk = |assignee: Value| {
        let body = json!({"ids": [wa, fb], "assignee_id": assignee});
        app.call("POST", "/api/conversations/bulk", Some(admin), Some(body))
    };
    let take_lower_first = "BEGIN; SELECT id FROM tenant_acme.notifications WHERE id = 9000000 FOR UPDATE".to_string();
    let unread = "SELECT count(*) AS n FROM tenant_acme.notifications WHERE read_at IS NULL";

    // Handed away while she marks them all read.
    let r = bulk(json!(owner.to_string())).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    notices();
    let then = "UPDATE tenant_acme.notifications SET read_at = now() WHERE id BETWEEN 9000000 AND 9000007";
    let (begun, held) = transaction_held_until_waited(&app.db.url, take_lower_first.clone(), Some(then.into()));
    begun.recv().expect("begun");
    let r = bulk(Value::Null).await;
    let (waited, went) = held.join().expect("the marking's thread");
    assert_eq!(went, Ok(()), "marked read");
    assert!(waited, "the change waited for it");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!((app.count(unread), app.count("SELECT count(*) AS n FROM tenant_acme.notifications")), (0, 8));

    // She marks them all read while they are handed away.
    let r = bulk(json!(owner.to_string())).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    notices();
    let then = "DELETE FROM tenant_acme.notifications WHERE id BETWEEN 9000000 AND 9000007";
    let (begun, held) = transaction_held_until_waited(&app.db.url, take_lower_first, Some(then.into()));
    begun.recv().expect("begun");
    let r = read(&app, admin, json!({"all": true})).await;
    let (waited, went) = held.join().expect("the change's thread");
    assert_eq!(went, Ok(()), "withdrawn");
    assert!(waited, "the marking waited for it");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.notifications"), 0);
}
