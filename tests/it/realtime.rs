//! The live inbox over real WebSocket clients.

use actix_web::rt::time::timeout;
use awc::ws::{Codec, Frame, Message};
use awc::BoxedSocket;
use diesel::prelude::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;

use crate::channels::{connect_pages, meta_user, META_USER, PAGE_A};
use crate::common::{messenger_text, spawn_app, spawn_app_without_workers, token, TestApp};
use switchboard::auth::Role;
use switchboard::ids::{TenantId, UserId};

pub(crate) type Socket = actix_codec::Framed<BoxedSocket, Codec>;

pub(crate) async fn ws(app: &TestApp, query: &str, bearer: Option<&str>, origin: Option<&str>) -> Result<Socket, u16> {
    let client = awc::Client::builder().max_http_version(awc::http::Version::HTTP_11).finish();
    let mut req = client.ws(format!("{}/ws{query}", app.base.replace("http://", "ws://")));
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    if let Some(o) = origin {
        req = req.origin(o);
    }
    match req.connect().await {
        Ok((_, framed)) => Ok(framed),
        Err(awc::error::WsClientError::InvalidResponseStatus(s)) => Err(s.as_u16()),
        Err(e) => panic!("websocket connect: {e}"),
    }
}

async fn ticket(app: &TestApp, t: &str) -> String {
    let r = app.call("POST", "/api/ws-ticket", Some(t), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["ticket"].as_str().expect("ticket").to_string()
}

/// The next JSON frame (answering pings), or `None` after `wait`.
pub(crate) async fn next(s: &mut Socket, wait: Duration) -> Option<Value> {
    let frame: Value = next_text(s, wait).await.and_then(|t| serde_json::from_str(&t).ok())?;
    // Every frame any test reads keeps API.md's ids and times.
    let mut out = Vec::new();
    crate::openapi::keeps_conventions(&frame, "$", &mut out);
    assert!(out.is_empty(), "a frame with ids or times off the contract: {out:?}\n{frame}");
    Some(frame)
}

/// The next text frame as it came (a close as a `closed` frame), or `None`
/// after `wait`.
async fn next_text(s: &mut Socket, wait: Duration) -> Option<String> {
    loop {
        match timeout(wait, s.next()).await {
            Ok(Some(Ok(Frame::Text(t)))) => return Some(String::from_utf8_lossy(&t).into_owned()),
            Ok(Some(Ok(Frame::Ping(p)))) => {
                let _ = s.send(Message::Pong(p)).await;
            }
            Ok(Some(Ok(Frame::Close(reason)))) => {
                let (code, reason) = reason.map(|r| (u16::from(r.code), r.description)).unzip();
                return Some(json!({"type": "closed", "code": code, "reason": reason}).to_string());
            }
            Ok(Some(Ok(_))) => {}
            _ => return None,
        }
    }
}

/// Frames until one of type `kind` (others skipped), or `None`.
pub(crate) async fn until(s: &mut Socket, kind: &str, wait: Duration) -> Option<Value> {
    let deadline = std::time::Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match next(s, left).await {
            Some(v) if v["type"] == kind => return Some(v),
            Some(v) if v["type"] == "closed" => return Some(v),
            Some(_) => {}
            None => return None,
        }
    }
    None
}

pub(crate) async fn send(s: &mut Socket, v: Value) {
    s.send(Message::Text(v.to_string().into())).await.expect("send");
}

struct Team {
    admin: String,
    agent_x: String,
    agent_other: String,
    agent_x_id: String,
    beta_admin: String,
}

/// acme: page A connected, agent X member of it, another agent not; and a
/// second tenant, beta.
async fn team(app: &TestApp) -> Team {
    meta_user(app).await;
    app.fake("POST", "/_fake/dialog-user", json!({"user_id": META_USER})).await;
    let owner = app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let admin = token(&owner, "access_token");
    let r = connect_pages(app, &admin, &[PAGE_A], false).await;
    let channel = r["items"][0]["id"].as_str().expect("channel").to_string();
    let x = app
        .call(
            "POST",
            "/api/members",
            Some(&admin),
            Some(json!({"email": "xavi@acme.test", "role": "agent", "password": "xavi-password-1", "name": "Xavi"})),
        )
        .await;
    let agent_x_id = x.body["user_id"].as_str().expect("id").to_string();
    app.call(
        "POST",
        "/api/members",
        Some(&admin),
        Some(json!({"email": "olga@acme.test", "role": "agent", "password": "olga-password-1"})),
    )
    .await;
    app.call("PUT", &format!("/api/channels/{channel}/members"), Some(&admin), Some(json!({"user_ids": [agent_x_id]})))
        .await;
    let agent_x = token(&app.login("xavi@acme.test", "xavi-password-1", "acme").await, "access_token");
    let agent_other = token(&app.login("olga@acme.test", "olga-password-1", "acme").await, "access_token");
    let beta = app.signup("beta", "beth@beta.test", "beth-password-1").await;
    Team { admin, agent_x, agent_other, agent_x_id, beta_admin: token(&beta, "access_token") }
}

#[actix_web::test]
async fn refused_upgrades() {
    let app = spawn_app().await;
    let t = team(&app).await;
    assert_eq!(ws(&app, "", None, None).await.err(), Some(401));
    assert_eq!(ws(&app, "?ticket=forged", None, None).await.err(), Some(401));
    assert_eq!(ws(&app, "", Some("not-a-jwt"), None).await.err(), Some(401));
    let tk = ticket(&app, &t.admin).await;
    let mut ok = ws(&app, &format!("?ticket={tk}"), None, None).await.expect("first use");
    assert_eq!(next(&mut ok, Duration::from_secs(3)).await.expect("hello")["type"], "hello");
    assert_eq!(ws(&app, &format!("?ticket={tk}"), None, None).await.err(), Some(401), "single use");
    let expired = ticket(&app, &t.admin).await;
    let mut conn = app.db.conn();
    diesel::sql_query("UPDATE public.ws_tickets SET expires_at = now() - interval '1 second' WHERE used_at IS NULL")
        .execute(&mut conn)
        .expect("expire");
    assert_eq!(ws(&app, &format!("?ticket={expired}"), None, None).await.err(), Some(401));
    assert_eq!(ws(&app, "", Some(&t.admin), Some("https://evil.example")).await.err(), Some(403));
    assert!(ws(&app, "", Some(&t.admin), Some(&app.base)).await.is_ok(), "our own origin");
    assert!(ws(&app, "", Some(&t.admin), Some(crate::common::ALLOWED_ORIGIN)).await.is_ok(), "an allowed one");
    assert!(ws(&app, "", Some(&t.admin), Some("https://inbox.example/")).await.is_ok(), "written with a slash");
    // Two `Origin`s, an allowed one first: each is checked.
    let client = awc::Client::builder().max_http_version(awc::http::Version::HTTP_11).finish();
    let two = client
        .ws(format!("{}/ws", app.base.replace("http://", "ws://")))
        .bearer_auth(&t.admin)
        .header(awc::http::header::ORIGIN, app.base.as_str())
        .header(awc::http::header::ORIGIN, "https://evil.example")
        .connect()
        .await;
    assert!(
        matches!(two, Err(awc::error::WsClientError::InvalidResponseStatus(s)) if s.as_u16() == 403),
        "two origins, one not allowed: {:?}",
        two.as_ref().map(|r| r.0.status())
    );
    assert_eq!(ws(&app, "?since=abc", Some(&t.admin), None).await.err(), Some(400));
    // A login logged out: neither its access token nor a ticket it got
    // before opens a socket.
    let out = app.login("ann@acme.test", "ann-password-1", "acme").await;
    let held = ticket(&app, &token(&out, "access_token")).await;
    let r = app.call("POST", "/api/auth/logout", None, Some(json!({"refresh_token": token(&out, "refresh_token")})));
    assert_eq!(r.await.status, 204);
    assert_eq!(ws(&app, "", Some(&token(&out, "access_token")), None).await.err(), Some(401), "logged out");
    assert_eq!(ws(&app, &format!("?ticket={held}"), None, None).await.err(), Some(401), "its ticket");
    // A plain request, credential and all: 400, and no socket; without a
    // credential 401 as for an upgrade.
    let plain = app.call("GET", "/ws", Some(&t.admin), None).await;
    assert_eq!((plain.status, plain.body["error"]["code"].as_str()), (400, Some("not_a_websocket")));
    assert_eq!(app.call("GET", "/ws", None, None).await.status, 401);
    switchboard::tenancy::set_status(&mut conn, "acme", switchboard::tenancy::TenantStatus::Suspended)
        .expect("suspend");
    assert_eq!(ws(&app, "", Some(&t.admin), None).await.err(), Some(403));
    // The open socket of the suspended tenant is closed.
    let closed = until(&mut ok, "closed", Duration::from_secs(3)).await.expect("closed");
    assert_eq!(closed["code"], 4403);
}

/// A client that floods its socket is held back: a burst of typing
/// messages reaches colleagues as one frame, and past its allowance the
/// client's messages are dropped and it is told so, once; the socket stays.
#[actix_web::test]
async fn a_client_flooding_its_socket_is_held_back() {
    let (_app, _, mut admin, mut x, conv) = admin_and_xavi_at_a_conversation("904").await;
    for _ in 0..30 {
        send(&mut x, json!({"type": "typing", "conversation_id": conv, "on": true})).await;
    }
    assert!(until(&mut admin, "typing", Duration::from_secs(3)).await.is_some(), "typing");
    // One frame a second at most: one, or a few if this machine is slow to
    // read the burst.
    let mut more = 0;
    while until(&mut admin, "typing", Duration::from_millis(700)).await.is_some() {
        more += 1;
    }
    assert!(more <= 3, "{} typing frames for a burst of 30", more + 1);
    // Pings past the allowance: some answered, the rest dropped, the client
    // told once a second.
    for _ in 0..200 {
        send(&mut x, json!({"type": "ping"})).await;
    }
    let (mut pongs, mut told) = (0, 0);
    while let Some(f) = next(&mut x, Duration::from_millis(700)).await {
        match f["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") if f["data"]["code"] == "rate_limited" => told += 1,
            _ => {}
        }
    }
    assert!((10..150).contains(&pongs) && (1..=4).contains(&told), "{pongs} pongs, told {told} times");
    let dropped = switchboard::metrics::WS_CLIENT_DROPPED.load(std::sync::atomic::Ordering::Relaxed);
    assert!(dropped >= 200 - pongs as u64, "{dropped} counted dropped");
    // A second on, the allowance is back.
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    send(&mut x, json!({"type": "ping"})).await;
    assert!(until(&mut x, "pong", Duration::from_secs(3)).await.is_some(), "answered again");
}

/// With a cap on a member's sockets on an instance (the tests set 32), the
/// next is refused before the upgrade with 429, others' are not, and
/// closing one makes room.
#[actix_web::test]
async fn a_member_has_at_most_so_many_sockets_at_once() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let cap = app.config.ws_max_per_member.expect("the tests' configuration sets a cap");
    let mut open = Vec::new();
    for _ in 0..cap {
        let mut s = ws(&app, "", Some(&t.agent_x), None).await.expect("under the cap");
        next(&mut s, Duration::from_secs(5)).await.expect("hello");
        open.push(s);
    }
    assert_eq!(ws(&app, "", Some(&t.agent_x), None).await.err(), Some(429));
    let over = app.call("GET", "/ws", Some(&t.agent_x), None).await;
    assert_eq!(over.body["error"]["code"], "too_many_sockets", "{:?}", over.body);
    assert!(ws(&app, "", Some(&t.admin), None).await.is_ok(), "another member");
    drop(open.pop());
    crate::common::eventually("room again once one closed", || async {
        ws(&app, "", Some(&t.agent_x), None).await.is_ok()
    })
    .await;
}

/// The logged frames of a socket, as (type, conversation id): the first
/// `want` of them (however slow the machine, up to 10 s), then any more that
/// come before `quiet` passes without one.
async fn logged_kinds(s: &mut Socket, want: usize, quiet: Duration) -> Vec<(String, String)> {
    let mut kinds = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let wait =
            if kinds.len() < want { deadline.saturating_duration_since(std::time::Instant::now()) } else { quiet };
        let Some(f) = next(s, wait).await else { return kinds };
        if f["seq"].is_i64() {
            let conv = f["data"]["conversation_id"].as_str().or(f["data"]["id"].as_str()).unwrap_or_default();
            kinds.push((f["type"].as_str().unwrap_or_default().to_string(), conv.to_string()));
        }
    }
}

/// The types of [`logged_kinds`]' frames.
fn types(frames: &[(String, String)]) -> Vec<&str> {
    frames.iter().map(|(k, _)| k.as_str()).collect()
}

#[actix_web::test]
async fn a_new_conversation_is_announced_before_its_first_message() {
    let (app, _, mut admin, _) = admin_at_hello().await;
    let quiet = Duration::from_millis(700);
    // A customer's first message, then their second.
    assert_eq!(app.webhook(&messenger_text("7000000000000001", "m_first.1", "Olá")).await, 200);
    let first = logged_kinds(&mut admin, 3, quiet).await;
    let conv = first.first().map(|(_, c)| c.clone()).unwrap_or_default();
    assert_eq!(types(&first), ["conversation.created", "message.created", "notification"], "{first:?}");
    assert!(first.iter().all(|(_, c)| *c == conv), "{first:?}");
    assert_eq!(app.webhook(&messenger_text("7000000000000001", "m_first.2", "Ainda aí?")).await, 200);
    let second = logged_kinds(&mut admin, 3, quiet).await;
    assert_eq!(types(&second), ["message.created", "conversation.updated", "notification"], "{second:?}");
    // A message the page sent from elsewhere (Business Suite) to someone
    // who never wrote: the same order.
    let mut echo: Value =
        serde_json::from_slice(&crate::common::fixture("messenger_echo_from_page_inbox.json")).expect("fixture");
    echo["entry"][0]["messaging"][0]["recipient"]["id"] = json!("7000000000000002");
    assert_eq!(app.webhook(&serde_json::to_vec(&echo).expect("body")).await, 200);
    let third = logged_kinds(&mut admin, 2, quiet).await;
    assert_eq!(types(&third), ["conversation.created", "message.created"], "{third:?}");
    assert_ne!(third[0].1, conv);
}

/// Messenger sends no name: the one Meta's profile gives comes after the
/// conversation's first frames, as an update, once.
#[actix_web::test]
async fn a_customers_name_found_at_meta_reaches_the_live_inbox() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let mut x = ws(&app, "", Some(&t.agent_x), None).await.expect("x");
    assert_eq!(next(&mut x, Duration::from_secs(3)).await.expect("hello")["type"], "hello");
    let from = "7000000000000004";
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": "Olá", "name": "Rosa Lima Ñ"})).await;
    let created = until(&mut x, "conversation.created", Duration::from_secs(5)).await.expect("created");
    assert_eq!(created["data"]["contact"]["external_id"], from);
    assert!(created["data"]["contact"]["name"].is_null(), "the webhook has no name: {created}");
    let named = until(&mut x, "conversation.updated", Duration::from_secs(5)).await.expect("the name, live");
    assert_eq!(
        (named["data"]["id"].as_str(), named["data"]["contact"]["name"].as_str()),
        (created["data"]["id"].as_str(), Some("Rosa Lima Ñ"))
    );
    assert!(named["data"]["contact"]["profile_pic_url"].is_string());
    // The customer's next message: the name is known, nothing is looked up or announced again.
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": "Ainda aí?"})).await;
    let next_message = logged_kinds(&mut x, 3, Duration::from_millis(800)).await;
    assert_eq!(types(&next_message), ["message.created", "conversation.updated", "notification"]);
}

/// A burst of new customers, each profile answered 4 s late: the lookups
/// overlap, all eight asked before the first answer comes (one after
/// another, the eighth would be asked after 28 s). No clock is read: the
/// fake logs a request as it arrives, before its delay.
#[actix_web::test]
async fn a_burst_of_new_customers_gets_its_names_together() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let slow = json!({"path": "/710000000000", "method": "GET", "delay_ms": 4000, "times": 100});
    app.fake("POST", "/_fake/errors", slow).await;
    for i in 1..=8 {
        let (from, name) = (format!("71000000000000{i:02}"), format!("Cliente {i} ✓"));
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": "Olá", "name": name})).await;
    }
    let lookups = || async {
        app.fake("GET", "/_fake/requests", json!({})).await["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|r| r["method"] == "GET" && r["path"].as_str().is_some_and(|p| p.contains("/710000000000")))
            .count()
    };
    let named = || async {
        let convs = app.call("GET", "/api/conversations", Some(&t.admin), None).await.body;
        convs["items"].as_array().map_or(0, |c| {
            c.iter().filter(|c| c["contact"]["name"].as_str().is_some_and(|n| n.starts_with("Cliente"))).count()
        })
    };
    crate::common::eventually("all eight lookups asked before any answer", || async {
        let asked = lookups().await;
        let done = named().await;
        assert_eq!(done, 0, "a name came back before all eight were asked ({asked} asked)");
        asked == 8
    })
    .await;
    crate::common::eventually("every name", || async { named().await == 8 }).await;
    assert_eq!(lookups().await, 8, "one lookup per customer");
}

#[actix_web::test]
async fn changes_reach_the_live_inbox_once_and_a_repeated_patch_is_silent() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let channel = channels_of(&app, &t.admin).await;
    assert_eq!(app.webhook(&messenger_text("7000000000000003", "m_patch.1", "Oi")).await, 200);
    app.processed().await;
    let conv = app.call("GET", "/api/conversations", Some(&t.admin), None).await.body["items"][0]["id"]
        .as_str()
        .expect("conversation")
        .to_string();
    let (mut x, mut other) = (
        ws(&app, "", Some(&t.agent_x), None).await.expect("x"),
        ws(&app, "", Some(&t.agent_other), None).await.expect("other"),
    );
    for s in [&mut x, &mut other] {
        assert_eq!(next(s, Duration::from_secs(3)).await.expect("hello")["type"], "hello");
    }
    let quiet = Duration::from_millis(700);
    // A renamed channel, new settings: its agents see them at once.
    let rename = json!({"name": "Loja Ünica", "settings": {"notifications": false}});
    let path = format!("/api/channels/{channel}");
    assert_eq!(app.call("PATCH", &path, Some(&t.admin), Some(rename.clone())).await.status, 200);
    let f = until(&mut x, "channel.updated", Duration::from_secs(5)).await.expect("channel.updated");
    assert_eq!((f["data"]["id"].as_str(), f["data"]["name"].as_str()), (Some(channel.as_str()), Some("Loja Ünica")));
    assert_eq!(
        (f["data"]["status"].as_str(), f["data"]["settings"]["notifications"].as_bool()),
        (Some("connected"), Some(false))
    );
    assert!(until(&mut other, "channel.updated", quiet).await.is_none(), "an agent without the channel");
    // The same PATCH again (a retry): the same answer, nothing logged.
    let again = app.call("PATCH", &path, Some(&t.admin), Some(rename)).await;
    assert_eq!((again.status, again.body["name"].as_str()), (200, Some("Loja Ünica")));
    assert_eq!(logged_kinds(&mut x, 0, quiet).await, []);
    // As for a conversation.
    let path = format!("/api/conversations/{conv}");
    let resolve = json!({"status": "resolved", "assignee_id": t.agent_x_id});
    assert_eq!(app.call("PATCH", &path, Some(&t.admin), Some(resolve.clone())).await.status, 200);
    // X was assigned it by a colleague: his unread notifications moved too.
    assert_eq!(
        logged_kinds(&mut x, 2, quiet).await,
        [("conversation.updated".to_string(), conv.clone()), ("notifications.changed".to_string(), String::new())]
    );
    let again = app.call("PATCH", &path, Some(&t.admin), Some(resolve)).await;
    assert_eq!((again.status, again.body["status"].as_str()), (200, Some("resolved")));
    assert_eq!(again.body["assignee_id"], t.agent_x_id.as_str());
    assert_eq!(logged_kinds(&mut x, 0, quiet).await, []);
    assert_eq!(
        app.count("SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action LIKE 'conversation.%' OR action = 'channel.updated'"),
        3
    );
    // The channel's members, as they are: nothing written or told.
    let members_set = "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'channel.members_set'";
    let before = app.count(members_set);
    let same = json!({"user_ids": [t.agent_x_id]});
    let r = app.call("PUT", &format!("/api/channels/{channel}/members"), Some(&t.admin), Some(same)).await;
    assert_eq!((r.status, &r.body["member_ids"]), (200, &json!([t.agent_x_id])), "{:?}", r.body);
    assert_eq!(app.count(members_set), before);
}

#[actix_web::test]
async fn events_reach_exactly_who_may_see_them() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let mut admin = ws(&app, "", Some(&t.admin), None).await.expect("admin");
    let mut x = ws(&app, "", Some(&t.agent_x), None).await.expect("x");
    let mut other = ws(&app, "", Some(&t.agent_other), None).await.expect("other");
    let mut beta = ws(&app, "", Some(&t.beta_admin), None).await.expect("beta");
    let page_a = channels_of(&app, &t.admin).await;
    // The hello names the channels each sees (`null`: all, an admin).
    for (s, sees) in
        [(&mut admin, json!(null)), (&mut x, json!([page_a])), (&mut other, json!([])), (&mut beta, json!(null))]
    {
        let hello = next(s, Duration::from_secs(3)).await.expect("hello");
        assert_eq!(hello["type"], "hello");
        assert!(hello["data"]["last_seq"].is_i64() && hello["data"]["user_id"].is_string());
        assert!(hello["data"]["tenant"] == "acme" || hello["data"]["tenant"] == "beta");
        assert_eq!(hello["data"]["channel_ids"], sees, "{hello}");
    }
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "555", "text": "Olá 👋"})).await;
    let a = until(&mut admin, "message.created", Duration::from_secs(5)).await.expect("admin gets it");
    assert_eq!(a["data"]["text"], "Olá 👋");
    assert!(a["seq"].as_i64().is_some_and(|s| s > 0) && a["at"].is_string());
    let b = until(&mut x, "message.created", Duration::from_secs(5)).await.expect("agent of the channel gets it");
    assert_eq!(b["seq"], a["seq"]);
    assert!(
        until(&mut other, "message.created", Duration::from_millis(700)).await.is_none(),
        "agent without the channel"
    );
    assert!(until(&mut beta, "message.created", Duration::from_millis(300)).await.is_none(), "another tenant");
    // A ping is answered.
    send(&mut x, json!({"type": "ping"})).await;
    assert!(until(&mut x, "pong", Duration::from_secs(3)).await.is_some());

    // Typing: reaches the colleague, never the sender, and expires.
    let conv = app.call("GET", "/api/conversations", Some(&t.admin), None).await.body["items"][0]["id"]
        .as_str()
        .expect("conv")
        .to_string();
    send(&mut x, json!({"type": "typing", "conversation_id": conv, "on": true})).await;
    let typing = until(&mut admin, "typing", Duration::from_secs(3)).await.expect("typing");
    assert_eq!(
        (typing["data"]["user_id"].as_str(), typing["data"]["on"].as_bool()),
        (Some(t.agent_x_id.as_str()), Some(true))
    );
    assert!(typing.get("seq").is_none());
    assert!(until(&mut x, "typing", Duration::from_millis(500)).await.is_none(), "not echoed");
    assert!(
        until(&mut other, "typing", Duration::from_millis(200)).await.is_none(),
        "not to agents without the channel"
    );
    let off = until(&mut admin, "typing", Duration::from_secs(8)).await.expect("expiry");
    assert_eq!(off["data"]["on"], false);
    // Meta was told, once.
    let actions = app.fake("GET", "/_fake/requests", json!({})).await["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|r| r["body"]["sender_action"] == "typing_on")
        .count();
    assert_eq!(actions, 1);
    // A typing message without `on` means typing; it shows the name the
    // agent goes by now, not the one they had when the socket opened.
    let r = app.call("PATCH", "/api/me", Some(&t.agent_x), Some(json!({"name": "Xavier Ü."}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    send(&mut x, json!({"type": "typing", "conversation_id": conv})).await;
    let typing = until(&mut admin, "typing", Duration::from_secs(3)).await.expect("typing without on");
    assert_eq!((typing["data"]["on"].as_bool(), typing["data"]["name"].as_str()), (Some(true), Some("Xavier Ü.")));
    // That typing began after the first expired, when the hub had stopped
    // checking (it checks only while someone types); renewed 3 s in, it
    // lasts 6 s from the renewal, then expires all the same.
    let began = std::time::Instant::now();
    actix_web::rt::time::sleep(Duration::from_secs(3)).await;
    send(&mut x, json!({"type": "typing", "conversation_id": conv, "on": true})).await;
    loop {
        let f = until(&mut admin, "typing", Duration::from_secs(10)).await.expect("expiry after the renewal");
        if f["data"]["on"] == false {
            break;
        }
    }
    assert!(
        began.elapsed() >= Duration::from_millis(8500),
        "expired {:?} after it began, before the renewal's 6 s",
        began.elapsed()
    );

    // Presence: away, then offline when the last socket closes.
    send(&mut x, json!({"type": "presence", "status": "away"})).await;
    let p = until(&mut admin, "presence", Duration::from_secs(3)).await.expect("presence");
    let p = if p["data"]["status"] == "online" {
        until(&mut admin, "presence", Duration::from_secs(3)).await.expect("away")
    } else {
        p
    };
    assert_eq!(
        (p["data"]["user_id"].as_str(), p["data"]["status"].as_str()),
        (Some(t.agent_x_id.as_str()), Some("away"))
    );
    // "Appear offline": the socket stays, colleagues see the agent gone,
    // and back.
    send(&mut x, json!({"type": "presence", "status": "offline"})).await;
    let p = until(&mut admin, "presence", Duration::from_secs(3)).await.expect("appear offline");
    assert_eq!(
        (p["data"]["user_id"].as_str(), p["data"]["status"].as_str()),
        (Some(t.agent_x_id.as_str()), Some("offline"))
    );
    send(&mut x, json!({"type": "presence", "status": "online"})).await;
    let p = until(&mut admin, "presence", Duration::from_secs(3)).await.expect("online again");
    assert_eq!(p["data"]["status"], "online");
    drop(x);
    let p = until(&mut admin, "presence", Duration::from_secs(5)).await.expect("offline");
    assert_eq!(p["data"]["status"], "offline");

    // Access: the other agent gets the channel, then loses their membership.
    let channel = a["data"]["channel_id"].as_str().expect("channel").to_string();
    let olga_id = app.call("GET", "/api/me", Some(&t.agent_other), None).await.body["user"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    app.call(
        "PUT",
        &format!("/api/channels/{channel}/members"),
        Some(&t.admin),
        Some(json!({"user_ids": [t.agent_x_id, olga_id]})),
    )
    .await;
    // Told which channels they see now (an extension: reload the lists).
    let changed = until(&mut other, "channels.changed", Duration::from_secs(5)).await.expect("channels.changed");
    assert_eq!(changed["data"]["channel_ids"], json!([channel]));
    assert!(changed.get("seq").is_none(), "not logged, not replayed");
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "555", "text": "again"})).await;
    assert!(until(&mut other, "message.created", Duration::from_secs(5)).await.is_some(), "widened at once");
    let r = app.call("DELETE", &format!("/api/members/{olga_id}"), Some(&t.admin), None).await;
    assert_eq!(r.status, 204);
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "555", "text": "after the removal"})).await;
    let closed = until(&mut other, "closed", Duration::from_secs(5)).await.expect("closed");
    assert_eq!(closed["code"], 4403);
    // Nothing follows a close frame, whatever the channel still logs.
    assert_eq!(next(&mut other, Duration::from_millis(500)).await, None);

    // Meta rejects the page token: the channel's new status is pushed live.
    app.fake("POST", "/_fake/tokens/expire", json!({"page_id": PAGE_A})).await;
    let r = app.call("POST", &format!("/api/channels/{channel}/check"), Some(&t.admin), None).await;
    assert_eq!(r.body["status"], "reauth_required");
    let c = until(&mut admin, "channel.updated", Duration::from_secs(5)).await.expect("channel.updated");
    assert_eq!(
        (c["data"]["id"].as_str(), c["data"]["status"].as_str()),
        (Some(channel.as_str()), Some("reauth_required"))
    );
}

fn append_events(app: &TestApp, n: usize) {
    append_padded(app, n, 200);
}

fn append_padded(app: &TestApp, n: usize, pad: usize) {
    append_in(&app.pool, n, pad);
}

pub(crate) fn append_in(pool: &switchboard::db::PgPool, n: usize, pad: usize) {
    append_on(pool, None, n, pad);
}

/// `n` events of `channel` (`None`: of no channel, seen by every member)
/// in acme's log, in one transaction.
fn append_on(pool: &switchboard::db::PgPool, channel: Option<i64>, n: usize, pad: usize) {
    let mut conn = pool.get().expect("conn");
    let tenant = switchboard::tenancy::find_by_slug(&mut conn, "acme").expect("q").expect("acme").tenant_id();
    switchboard::db::with_tenant(
        &mut conn,
        &switchboard::db::TenantScope::system(tenant),
        |tc| -> Result<(), switchboard::AppError> {
            let mut log = switchboard::inbox::events::EventLog::new();
            for i in 0..n {
                log.append(tc, "channel.updated", channel, None, json!({"i": i, "pad": "x".repeat(pad)}))?;
            }
            log.notify(tc)
        },
    )
    .expect("append");
}

/// A team; the admin's and agent Xavi's sockets past their hellos; and the
/// conversation a customer (`from`) opened on page A, which both see.
async fn admin_and_xavi_at_a_conversation(from: &str) -> (TestApp, Team, Socket, Socket, String) {
    let app = spawn_app().await;
    let t = team(&app).await;
    let mut admin = ws(&app, "", Some(&t.admin), None).await.expect("admin");
    let mut x = ws(&app, "", Some(&t.agent_x), None).await.expect("x");
    for s in [&mut admin, &mut x] {
        next(s, Duration::from_secs(3)).await.expect("hello");
    }
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": "alguém aí?"})).await;
    let m = until(&mut admin, "message.created", Duration::from_secs(5)).await.expect("message");
    let conv = m["data"]["conversation_id"].as_str().expect("conversation").to_string();
    (app, t, admin, x, conv)
}

/// A team, the admin's socket past its hello, and the `last_seq` it named.
async fn admin_at_hello() -> (TestApp, Team, Socket, i64) {
    admin_at_hello_in(spawn_app().await).await
}

/// [`admin_at_hello`] on the server `app`.
async fn admin_at_hello_in(app: TestApp) -> (TestApp, Team, Socket, i64) {
    let t = team(&app).await;
    let mut s = ws(&app, "", Some(&t.admin), None).await.expect("ws");
    let last = next(&mut s, Duration::from_secs(3)).await.expect("hello")["data"]["last_seq"].as_i64().expect("seq");
    // Answered once the session's replay has read the log (the actor takes
    // nothing else meanwhile): what the test appends next comes live.
    send(&mut s, json!({"type": "ping"})).await;
    until(&mut s, "pong", Duration::from_secs(3)).await.expect("pong");
    (app, t, s, last)
}

#[actix_web::test]
async fn resume_with_since_and_resync() {
    let (app, t, s, last) = admin_at_hello().await;
    drop(s);
    for _ in 0..5 {
        append_events(&app, 10);
    }
    let mut s = ws(&app, &format!("?since={last}"), Some(&t.admin), None).await.expect("resume");
    assert_eq!(next(&mut s, Duration::from_secs(3)).await.expect("hello")["type"], "hello");
    let mut seqs = Vec::new();
    while seqs.len() < 50 {
        let f = next(&mut s, Duration::from_secs(3)).await.expect("replayed event");
        if f["seq"].is_i64() {
            seqs.push(f["seq"].as_i64().unwrap_or(0));
        }
    }
    assert_eq!(seqs, ((last + 1)..=(last + 50)).collect::<Vec<_>>(), "exactly the 50 missed, in order");
    // Live ones follow, with no duplicate at the seam.
    append_events(&app, 1);
    let f = until(&mut s, "channel.updated", Duration::from_secs(3)).await.expect("live");
    assert_eq!(f["seq"], last + 51);
    assert!(next(&mut s, Duration::from_millis(300)).await.is_none_or(|f| f["seq"].as_i64() != Some(last + 51)));

    // The log was pruned past `since`: resync_required.
    let mut conn = app.db.conn();
    diesel::sql_query(format!("DELETE FROM tenant_acme.events WHERE seq <= {}", last + 10))
        .execute(&mut conn)
        .expect("prune");
    let mut s = ws(&app, "?since=1", Some(&t.admin), None).await.expect("old since");
    next(&mut s, Duration::from_secs(3)).await.expect("hello");
    let r = next(&mut s, Duration::from_secs(3)).await.expect("resync");
    assert_eq!(r["type"], "resync_required");

    // A `since` ahead of the log (it lost events, or was reset): resync too,
    // and live events then flow from the log's end.
    let ahead = last + 1_000;
    let mut s = ws(&app, &format!("?since={ahead}"), Some(&t.admin), None).await.expect("since ahead");
    next(&mut s, Duration::from_secs(3)).await.expect("hello");
    let r = next(&mut s, Duration::from_secs(3)).await.expect("resync");
    assert_eq!((r["type"].as_str(), r["data"]["last_seq"].as_i64()), (Some("resync_required"), Some(last + 51)));
    append_events(&app, 1);
    let f = until(&mut s, "channel.updated", Duration::from_secs(3)).await.expect("live after resync");
    assert_eq!(f["seq"], last + 52);
}

/// A resume further behind than a replay carries (10,000 events) gets
/// `resync_required`, never the first 10,000 and then a gap; live events
/// follow from the log's end. Exactly 10,000 are still replayed.
#[actix_web::test]
async fn a_resume_too_far_behind_gets_resync_not_a_gap() {
    let (app, t, mut live, last) = admin_at_hello().await;
    append_padded(&app, 10_001, 0);
    // A socket that stayed reads the burst to its end first: the hub has
    // then handed it all out (one that joins while 10,000 live frames come
    // would be dropped as too slow, 4408, before its replay is done).
    let mut seen = last;
    while seen < last + 10_001 {
        let f = next(&mut live, Duration::from_secs(5)).await.expect("the burst, live");
        seen = f["seq"].as_i64().unwrap_or(seen);
    }
    let mut s = ws(&app, &format!("?since={last}"), Some(&t.admin), None).await.expect("resume");
    assert_eq!(next(&mut s, Duration::from_secs(3)).await.expect("hello")["type"], "hello");
    let r = next(&mut s, Duration::from_secs(5)).await.expect("resync");
    assert_eq!(
        (r["type"].as_str(), r["data"]["reason"].as_str(), r["data"]["last_seq"].as_i64()),
        (Some("resync_required"), Some("too_many"), Some(last + 10_001)),
        "{r}"
    );
    append_events(&app, 1);
    let f = until(&mut s, "channel.updated", Duration::from_secs(3)).await.expect("live after resync");
    assert_eq!(f["seq"], last + 10_002);

    let since = last + 2;
    let mut s = ws(&app, &format!("?since={since}"), Some(&t.admin), None).await.expect("resume at the limit");
    assert_eq!(next(&mut s, Duration::from_secs(3)).await.expect("hello")["type"], "hello");
    let mut expected = since + 1;
    while expected <= last + 10_002 {
        let f = next(&mut s, Duration::from_secs(5)).await.expect("replayed event");
        assert_eq!(f["seq"].as_i64(), Some(expected), "{f}");
        expected += 1;
    }
}

#[actix_web::test]
async fn a_client_that_never_reads_does_not_delay_others() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let mut slow = ws(&app, "", Some(&t.admin), None).await.expect("slow");
    let connected = std::time::Instant::now();
    let mut fast = ws(&app, "", Some(&t.admin), None).await.expect("fast");
    // Both are live, and their writers have served them a live frame: a
    // socket still on its hello or replay is not judged by its outbox (a
    // burst then is read from the log, 4408 never comes), and under load
    // the slow one's could still be starting when the burst began.
    append_in(&app.pool, 1, 10);
    for s in [&mut slow, &mut fast] {
        until(s, "channel.updated", Duration::from_secs(5)).await.expect("live");
    }
    let started = std::time::Instant::now();
    // ~24 MB: more than the kernel buffers a socket that nobody reads. The
    // writer is another thread, as other requests and workers would be.
    let total = 6000;
    let pool = app.pool.clone();
    let writer = std::thread::spawn(move || {
        for _ in 0..(total / 20) {
            append_in(&pool, 20, 4000);
        }
    });
    let mut got = 0;
    while got < total {
        let f = next(&mut fast, Duration::from_secs(10)).await.expect("the fast client keeps receiving");
        if f["type"] == "channel.updated" {
            got += 1;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    writer.join().expect("writer");
    // It writes, it never reads: the server's heartbeat (30 s of silence)
    // must not drop it before the overflow does, on a slow run. (Nor may
    // the TCP timeout on unread data, also 30 s: hence the time below.)
    send(&mut slow, json!({"type": "ping"})).await;
    // It has read nothing for longer than a busy socket may take: the next
    // deliveries find it stopped.
    actix_web::rt::time::sleep(switchboard::realtime::hub::STALLED_AFTER + Duration::from_millis(500)).await;
    // More until it is dropped: how much the kernel holds for a socket
    // nobody reads depends on the machine (its receive buffer grows to
    // `tcp_rmem`'s maximum, 32 MiB on some), and the server judges only
    // frames it could not hand to the kernel. At most 80 MB more.
    let too_slow = || switchboard::metrics::WS_TOO_SLOW.load(std::sync::atomic::Ordering::Relaxed);
    let before = too_slow();
    for _ in 0..40 {
        append_in(&app.pool, 500, 4000);
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        if too_slow() > before {
            break;
        }
    }
    // The slow one was dropped: draining it ends with close code 4408.
    let too_slow = too_slow();
    let mut closed = None;
    let mut read = 0;
    while let Some(f) = next(&mut slow, Duration::from_secs(5)).await {
        if f["type"] == "closed" {
            closed = Some(f);
            break;
        }
        read += 1;
    }
    // Ended without 4408, what it says tells a drop for overflow that lost
    // its close frame from a socket ended some other way (too_slow 0).
    assert_eq!(
        closed.as_ref().map(|c| c["code"].clone()),
        Some(json!(4408)),
        "the slow socket ended after {read} frames, {:?} after it connected, sockets closed as too slow in this process: {too_slow}",
        connected.elapsed()
    );
    // Operators see it.
    let metrics = app.client.get(format!("{}/metrics", app.base)).send().await.expect("metrics");
    let metrics = metrics.text().await.expect("text");
    let counted = metrics.lines().find_map(|l| l.strip_prefix("switchboard_ws_too_slow_total ")).map(str::parse::<u64>);
    assert!(matches!(counted, Some(Ok(n)) if n >= 1), "{metrics}");
}

/// A second server on `app`'s database, without workers: its WebSocket URL
/// (the config of `other`, a spare app, with `app`'s database).
fn second_instance(app: &TestApp, other: &TestApp) -> String {
    let state = actix_web::web::Data::new(switchboard::app::AppState::new(
        std::sync::Arc::new({
            let mut c = (*other.config).clone();
            c.db.database_url = app.config.db.database_url.clone();
            c
        }),
        switchboard::db::Db::new(app.db.pool(2)),
    ));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("ws://127.0.0.1:{}/ws", listener.local_addr().expect("addr").port());
    let server = switchboard::http::build_server(state, listener).expect("second server");
    actix_web::rt::spawn(server);
    base
}

async fn ws_at(url: &str, bearer: &str) -> Socket {
    let client = awc::Client::builder().max_http_version(awc::http::Version::HTTP_11).finish();
    let (_, s) = client.ws(url).bearer_auth(bearer).connect().await.expect("ws on the second instance");
    s
}

#[actix_web::test]
async fn two_instances_share_one_database() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let spare = spawn_app_without_workers().await;
    let mut s = ws_at(&second_instance(&app, &spare), &t.agent_x).await;
    next(&mut s, Duration::from_secs(3)).await.expect("hello");
    // The webhook is received and processed by the first instance.
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "777", "text": "across instances"})).await;
    let m = until(&mut s, "message.created", Duration::from_secs(5)).await.expect("delivered across instances");
    assert_eq!(m["data"]["text"], "across instances");
}

/// Presence frames until `quiet` passes without one: user id -> last status.
async fn presence_seen(s: &mut Socket, quiet: Duration) -> std::collections::HashMap<String, String> {
    let mut seen = std::collections::HashMap::new();
    while let Some(f) = until(s, "presence", quiet).await {
        let (Some(u), Some(st)) = (f["data"]["user_id"].as_str(), f["data"]["status"].as_str()) else { break };
        seen.insert(u.to_string(), st.to_string());
    }
    seen
}

/// A socket of `bearer` past its hello, and the presence it was told.
async fn newcomer(app: &TestApp, bearer: &str) -> (Socket, std::collections::HashMap<String, String>) {
    let mut s = ws(app, "", Some(bearer), None).await.expect("ws");
    next(&mut s, Duration::from_secs(3)).await.expect("hello");
    let seen = presence_seen(&mut s, Duration::from_millis(500)).await;
    (s, seen)
}

/// Agent X's socket, once the bus has carried X's own `online` back to it.
async fn online_x(app: &TestApp, t: &Team) -> Socket {
    let (x, seen) = newcomer(app, &t.agent_x).await;
    assert_eq!(seen.get(&t.agent_x_id).map(String::as_str), Some("online"), "{seen:?}");
    x
}

/// A socket that connects is told who is already online or away (nobody
/// else would tell it), and who is not there is not mentioned.
#[actix_web::test]
async fn a_new_socket_hears_who_is_already_there() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let mut x = online_x(&app, &t).await;
    send(&mut x, json!({"type": "presence", "status": "away"})).await;
    assert_eq!(
        presence_seen(&mut x, Duration::from_millis(500)).await.get(&t.agent_x_id).map(String::as_str),
        Some("away")
    );

    let (mut admin, seen) = newcomer(&app, &t.admin).await;
    assert_eq!(seen.get(&t.agent_x_id).map(String::as_str), Some("away"), "{seen:?}");
    assert_eq!(seen.len(), 2, "x and the admin, nobody else: {seen:?}");
    // Another tenant's newcomer hears nothing of acme.
    let (_beta, seen) = newcomer(&app, &t.beta_admin).await;
    assert!(!seen.contains_key(&t.agent_x_id) && seen.len() == 1, "{seen:?}");
    // Gone: not reported to the next newcomer.
    drop(x);
    let seen = presence_seen(&mut admin, Duration::from_secs(2)).await;
    assert_eq!(seen.get(&t.agent_x_id).map(String::as_str), Some("offline"));
    let (_later, seen) = newcomer(&app, &t.admin).await;
    assert!(!seen.contains_key(&t.agent_x_id), "{seen:?}");
}

/// An instance that starts after a colleague connected to another one
/// learns of them (it asks when it starts listening) and tells its sockets.
#[actix_web::test]
async fn a_new_instance_learns_who_is_on_the_others() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let mut x = online_x(&app, &t).await;
    let spare = spawn_app_without_workers().await;
    let mut admin = ws_at(&second_instance(&app, &spare), &t.admin).await;
    next(&mut admin, Duration::from_secs(3)).await.expect("hello");
    let seen = presence_seen(&mut admin, Duration::from_secs(1)).await;
    assert_eq!(seen.get(&t.agent_x_id).map(String::as_str), Some("online"), "{seen:?}");
    // And changes on the first instance keep coming.
    send(&mut x, json!({"type": "presence", "status": "away"})).await;
    let seen = presence_seen(&mut admin, Duration::from_secs(1)).await;
    assert_eq!(seen.get(&t.agent_x_id).map(String::as_str), Some("away"), "{seen:?}");
}

/// The backends of the test database's LISTEN connections (one per
/// instance).
fn listener_pids(conn: &mut diesel::PgConnection) -> Vec<i32> {
    #[derive(QueryableByName)]
    struct Pid {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        pid: i32,
    }
    let listening = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'";
    diesel::sql_query(listening).load::<Pid>(conn).expect("listener").iter().map(|p| p.pid).collect()
}

/// The instance's LISTEN connection dies; events committed while it is away
/// (their NOTIFYs reach nobody) come from the log once it is back: in
/// order, none twice, none lost.
#[actix_web::test]
async fn the_listener_reconnects_and_catches_up_from_the_log() {
    let (app, _team, mut s, last) = admin_at_hello().await;
    // Heard live once, so the listener knows the tenant.
    append_events(&app, 1);
    let first = until(&mut s, "channel.updated", Duration::from_secs(3)).await.expect("live");
    assert_eq!(first["seq"], last + 1);
    let mut conn = app.db.conn();
    let old = listener_pids(&mut conn);
    assert_eq!(old.len(), 1, "one LISTEN connection per instance");
    // Gone when this returns (it waits); the listener backs off before
    // reconnecting, so the events below commit while nobody listens.
    diesel::sql_query(format!("SELECT pg_terminate_backend({}, 5000)", old[0])).execute(&mut conn).expect("terminate");
    append_events(&app, 5);
    let mut seqs = Vec::new();
    while seqs.len() < 5 {
        let f = until(&mut s, "channel.updated", Duration::from_secs(5)).await.expect("caught up after the reconnect");
        seqs.push(f["seq"].as_i64().expect("seq"));
    }
    assert_eq!(seqs, ((last + 2)..=(last + 6)).collect::<Vec<_>>());
    let now = listener_pids(&mut conn);
    assert!(now.len() == 1 && now != old, "a new LISTEN connection: {old:?} -> {now:?}");
    // Live again.
    append_events(&app, 1);
    assert_eq!(until(&mut s, "channel.updated", Duration::from_secs(3)).await.expect("live")["seq"], last + 7);
    assert!(next(&mut s, Duration::from_millis(300)).await.is_none_or(|f| !f["seq"].is_i64()), "nothing twice");
}

/// As a restart of PostgreSQL does, every connection is cut, the pool's
/// idle ones too: the listener connects anew and catches up on another
/// connection than the dead ones the pool still holds. (Its read used to
/// take the pool's first connection and give up quietly on a dead one,
/// leaving the events until the tenant's next notification; whether this
/// test meets a dead one depends on what took them first, so it guards
/// the catch-up rather than pins that: it passed before the change too.
/// The next test pins it.)
#[actix_web::test]
async fn the_listener_catches_up_after_every_connection_was_cut() {
    let (app, _team, mut s, last) = admin_at_hello().await;
    append_events(&app, 1);
    let first = until(&mut s, "channel.updated", Duration::from_secs(3)).await.expect("live");
    assert_eq!(first["seq"], last + 1);
    // The listener first, then (while it waits to reconnect) events whose
    // NOTIFYs reach nobody, then every other connection of the app.
    let writer = app.db.pool(1);
    let mut conn = app.db.conn();
    let old = listener_pids(&mut conn);
    diesel::sql_query(format!("SELECT pg_terminate_backend({}, 5000)", old[0])).execute(&mut conn).expect("terminate");
    append_in(&writer, 3, 200);
    let cut = "SELECT count(pg_terminate_backend(pid, 5000)) AS n FROM pg_stat_activity \
               WHERE datname = current_database() AND pid <> pg_backend_pid()";
    assert!(app.count(cut) >= 2, "the pool's connections");
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        let f = until(&mut s, "channel.updated", Duration::from_secs(5)).await.expect("caught up");
        seqs.push(f["seq"].as_i64().expect("seq"));
    }
    assert_eq!(seqs, ((last + 2)..=(last + 4)).collect::<Vec<_>>());
}

/// The listener stays, every pooled connection of the server is cut (a
/// proxy dropping idle flows does that), and another process commits
/// events: the listener, told of them, reads them on a live connection.
/// Without the background workers and with no other work, nothing else
/// takes the dead connections first, so its read meets one: it used to
/// give up there quietly and leave the events until the tenant's next
/// notification.
#[actix_web::test]
async fn a_notified_read_goes_on_another_connection_when_the_pools_were_cut() {
    let (app, _team, mut s, last) = admin_at_hello_in(spawn_app_without_workers().await).await;
    append_events(&app, 1);
    assert_eq!(until(&mut s, "channel.updated", Duration::from_secs(3)).await.expect("live")["seq"], last + 1);
    let listening = listener_pids(&mut app.db.conn());
    assert_eq!(listening.len(), 1, "one LISTEN connection");
    let cut = format!(
        "SELECT count(pg_terminate_backend(pid, 5000)) AS n FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND pid <> {}",
        listening[0]
    );
    assert!(app.count(&cut) >= 1, "the pool's connections");
    let writer = app.db.pool(1);
    append_in(&writer, 3, 200);
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        match until(&mut s, "channel.updated", Duration::from_secs(3)).await {
            Some(f) => seqs.push(f["seq"].as_i64().expect("seq")),
            None => panic!("only {seqs:?} of the 3 notified events arrived"),
        }
    }
    assert_eq!(seqs, ((last + 2)..=(last + 4)).collect::<Vec<_>>());
    assert_eq!(listener_pids(&mut app.db.conn()), listening, "the listener itself was not cut");
}

/// Access changes announced while the listener was away (live messages,
/// not logged: their NOTIFYs reached nobody) are made good once it is
/// back: every socket of the instance reads its access again. Here the
/// changes are written without their announcements, as an outage loses
/// them: Xavi taken off page A's list is narrowed, Olga removed is closed
/// with 4403. Before, both sockets went on as they were until they
/// reconnected (Xavi still hearing page A).
#[actix_web::test]
async fn access_changes_the_listener_missed_reach_the_sockets_once_it_is_back() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let olga = olga_id(&app, &t).await;
    let mut x = ws(&app, "", Some(&t.agent_x), None).await.expect("xavi");
    let mut o = ws(&app, "", Some(&t.agent_other), None).await.expect("olga");
    for s in [&mut x, &mut o] {
        next(s, Duration::from_secs(3)).await.expect("hello");
    }
    app.exec(&format!("DELETE FROM tenant_acme.channel_members WHERE user_id = {}", t.agent_x_id));
    app.exec(&format!(
        "DELETE FROM public.memberships WHERE user_id = {olga} \
         AND tenant_id = (SELECT id FROM public.tenants WHERE slug = 'acme')"
    ));
    // Unannounced, nothing reaches them yet.
    assert!(until(&mut x, "channels.changed", Duration::from_millis(500)).await.is_none());
    let mut conn = app.db.conn();
    let old = listener_pids(&mut conn);
    diesel::sql_query(format!("SELECT pg_terminate_backend({}, 5000)", old[0])).execute(&mut conn).expect("terminate");
    let changed = until(&mut x, "channels.changed", Duration::from_secs(10)).await.expect("narrowed once back");
    assert_eq!(changed["data"]["channel_ids"], json!([]));
    let closed = until(&mut o, "closed", Duration::from_secs(10)).await.expect("closed once back");
    assert_eq!(closed["code"], 4403);
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "904", "text": "not for Xavi"})).await;
    app.processed().await;
    let heard = until(&mut x, "message.created", Duration::from_millis(800)).await;
    assert!(heard.is_none(), "page A reached Xavi: {heard:?}");
}

/// The listener's wait before reconnecting starts short again once it is
/// listening: connections lost now and then over a process's life (a
/// restart, a proxy cutting idle flows) must not leave it, in the end,
/// 5 s deaf each time.
#[actix_web::test]
async fn the_listener_waits_little_after_each_loss_not_longer_and_longer() {
    let (app, _team, mut s, last) = admin_at_hello().await;
    let mut conn = app.db.conn();
    let started = std::time::Instant::now();
    // Its backoff doubled from 100 ms without ever starting over: these 7
    // losses would take 0.1 + 0.2 + … + 3.2 + 5 = 11.3 s to come back from.
    for loss in 1..=7 {
        let old = listener_pids(&mut conn);
        assert_eq!(old.len(), 1, "one LISTEN connection (loss {loss})");
        diesel::sql_query(format!("SELECT pg_terminate_backend({}, 5000)", old[0]))
            .execute(&mut conn)
            .expect("terminate");
        let back = std::time::Instant::now();
        while listener_pids(&mut conn).iter().all(|p| old.contains(p)) {
            assert!(back.elapsed() < Duration::from_secs(10), "no LISTEN connection again after loss {loss}");
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "7 losses took {took:?} to come back from");
    // And it still hears.
    append_events(&app, 1);
    assert_eq!(until(&mut s, "channel.updated", Duration::from_secs(3)).await.expect("live")["seq"], last + 1);
}

/// Text frames with a `seq` until none comes for `quiet`.
async fn sequenced(s: &mut Socket, quiet: Duration) -> Vec<Value> {
    sequenced_text(s, quiet).await.iter().filter_map(|t| serde_json::from_str(t).ok()).collect()
}

/// The same, as the frames' text.
async fn sequenced_text(s: &mut Socket, quiet: Duration) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(t) = next_text(s, quiet).await {
        if serde_json::from_str::<Value>(&t).is_ok_and(|v| v["seq"].is_i64()) {
            out.push(t);
        }
    }
    out
}

fn consecutive(frames: &[Value], after: i64) -> Vec<i64> {
    let seqs: Vec<i64> = frames.iter().filter_map(|f| f["seq"].as_i64()).collect();
    let want: Vec<i64> = (after + 1..after + 1 + seqs.len() as i64).collect();
    assert_eq!(seqs, want, "every event once, in order, none skipped");
    seqs
}

#[actix_web::test]
async fn a_burst_reaches_every_socket_once_in_order_as_the_log_has_it() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let mut early = ws(&app, "", Some(&t.admin), None).await.expect("early");
    let hello = next(&mut early, Duration::from_secs(3)).await.expect("hello");
    let start = hello["data"]["last_seq"].as_i64().expect("last_seq");
    let now_ms = chrono::Utc::now().timestamp_millis();
    let post = |i: usize| {
        let body = json!({"object": "page", "entry": [{"id": PAGE_A, "time": now_ms + i as i64,
            "messaging": [{"sender": {"id": format!("73920156481{:05}", i % 7)}, "recipient": {"id": PAGE_A},
            "timestamp": now_ms + i as i64,
            "message": {"mid": format!("m_burst_{i}"), "text": format!("burst {i} ✓")}}]}]});
        let app = &app;
        async move { app.webhook(body.to_string().as_bytes()).await }
    };
    // Webhooks arrive while the processor works; a socket opens midway.
    let mut statuses = futures_util::future::join_all((0..120).map(post)).await;
    // Sockets opening while events are being committed must miss none.
    let opening = async {
        let mut opened = Vec::new();
        for _ in 0..6 {
            actix_web::rt::time::sleep(Duration::from_millis(15)).await;
            let mut late = ws(&app, "", Some(&t.admin), None).await.expect("late");
            let hello = next(&mut late, Duration::from_secs(3)).await.expect("hello");
            opened.push((late, hello["data"]["last_seq"].as_i64().expect("last_seq")));
        }
        opened
    };
    let (more, opened) =
        futures_util::future::join(futures_util::future::join_all((120..240).map(post)), opening).await;
    statuses.extend(more);
    assert!(statuses.iter().all(|s| *s == 200));
    app.processed().await;

    let live_text = sequenced_text(&mut early, Duration::from_secs(2)).await;
    let live: Vec<Value> = live_text.iter().map(|t| serde_json::from_str(t).expect("JSON")).collect();
    let seqs = consecutive(&live, start);
    let texts: std::collections::HashSet<&str> =
        live.iter().filter(|f| f["type"] == "message.created").filter_map(|f| f["data"]["text"].as_str()).collect();
    assert_eq!(texts.len(), 240, "each message once");
    let last = *seqs.last().expect("events");
    // Those opened midway: everything after their hello, nothing before.
    for (mut late, late_start) in opened {
        let joined = sequenced(&mut late, Duration::from_millis(500)).await;
        assert_eq!(consecutive(&joined, late_start).last().copied().unwrap_or(late_start), last);
    }
    // Read back from the log, the same frames the live sockets got.
    let mut replay = ws(&app, &format!("?since={start}"), Some(&t.admin), None).await.expect("replay");
    next(&mut replay, Duration::from_secs(3)).await.expect("hello");
    let replayed = sequenced_text(&mut replay, Duration::from_secs(1)).await;
    // Whether a batch went to the hub directly or through the log is a race
    // (the listener may hear of the commit first) that changes nothing here:
    // both paths must give these same frames, byte for byte. `bench
    // realtime` counts reads.
    assert_eq!(replayed.len(), live_text.len());
    for (replayed, live) in replayed.iter().zip(&live_text) {
        assert_eq!(replayed, live);
    }

    // An agent's reply and the sender's outcome follow, in order, after the burst.
    let conv = live
        .iter()
        .find_map(|f| f["data"]["conversation_id"].as_str().filter(|_| f["type"] == "message.created"))
        .expect("a conversation")
        .to_string();
    let r = app
        .call("POST", &format!("/api/conversations/{conv}/messages"), Some(&t.admin), Some(json!({"text": "on it ✓"})))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let mut after = Vec::new();
    while let Some(f) = next(&mut early, Duration::from_secs(2)).await {
        let sent = f["type"] == "message.updated" && f["data"]["status"] == "sent";
        after.push(f);
        if sent {
            break;
        }
    }
    let after: Vec<Value> = after.into_iter().filter(|f| f["seq"].is_i64()).collect();
    consecutive(&after, last);
    assert!(after.iter().any(|f| f["type"] == "message.created" && f["data"]["text"] == "on it ✓"));
    assert!(after.iter().any(|f| f["type"] == "message.updated" && f["data"]["status"] == "sent"));
}

#[actix_web::test]
async fn a_backlog_batch_reaches_the_socket_whole_and_in_order() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let mut s = ws(&app, "", Some(&t.agent_x), None).await.expect("agent x");
    let hello = next(&mut s, Duration::from_secs(3)).await.expect("hello");
    let start = hello["data"]["last_seq"].as_i64().expect("last_seq");
    // A backlog: 150 webhooks stored at once make one batch well past the
    // processor's settle mark, handed to the hub as a backlog batch and held
    // until the processor finds nothing more (unless the listener heard of
    // the commit first and read the events itself: a race by design, so the
    // hold's rules are unit-tested in realtime::hub).
    let bodies: Vec<Vec<u8>> = (0..150)
        .map(|i| {
            crate::common::messenger_text(&format!("6{:015}", i % 11), &format!("m_held_{i}"), &format!("held {i} — ✓"))
        })
        .collect();
    app.store_bodies(&bodies);
    app.processed().await;
    let frames = sequenced(&mut s, Duration::from_secs(2)).await;
    consecutive(&frames, start);
    let texts: Vec<&str> =
        frames.iter().filter(|f| f["type"] == "message.created").filter_map(|f| f["data"]["text"].as_str()).collect();
    assert_eq!(texts.len(), 150, "each message once");
}

/// Forty agents connect at once (a restart's reconnect storm): colleagues
/// learn of each, and the instances hear of them in a few bus messages,
/// not one NOTIFY per socket.
#[actix_web::test]
async fn a_reconnect_storm_goes_out_in_a_few_presence_messages() {
    use diesel::connection::SimpleConnection;
    let app = spawn_app().await;
    let t = team(&app).await;
    let (mut admin, _) = newcomer(&app, &t.admin).await;
    #[derive(QueryableByName)]
    struct Id {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        id: i64,
    }
    let mut conn = app.db.conn();
    let tenant = diesel::sql_query("SELECT id FROM public.tenants WHERE slug = 'acme'")
        .get_result::<Id>(&mut conn)
        .expect("tenant")
        .id;
    let users: Vec<i64> = diesel::sql_query(
        "INSERT INTO public.users (email, name, password_hash) \
         SELECT 'storm' || i || '@acme.test', 'Storm ' || i, 'not-a-login' FROM generate_series(1, 40) i RETURNING id",
    )
    .load::<Id>(&mut conn)
    .expect("users")
    .into_iter()
    .map(|r| r.id)
    .collect();
    conn.batch_execute(&format!(
        "INSERT INTO public.memberships (user_id, tenant_id, role) SELECT u, {tenant}, 'agent' FROM unnest(ARRAY{users:?}::bigint[]) u"
    ))
    .expect("memberships");
    let mut listener = app.db.conn();
    listener.batch_execute(&format!("LISTEN {}", switchboard::realtime::bus::LIVE_CHANNEL)).expect("listen");
    let tokens: Vec<String> = users
        .iter()
        .map(|u| app.state.jwt.issue(UserId(*u), TenantId(tenant), "acme", Role::Agent, "storm").expect("token"))
        .collect();
    let sockets = futures_util::future::join_all(tokens.iter().map(|tok| async {
        let mut s = ws(&app, "", Some(tok), None).await.expect("ws");
        next(&mut s, Duration::from_secs(5)).await.expect("hello");
        s
    }))
    .await;
    let seen = presence_seen(&mut admin, Duration::from_secs(1)).await;
    let online = users.iter().filter(|u| seen.get(&u.to_string()).map(String::as_str) == Some("online")).count();
    assert_eq!(online, 40, "{seen:?}");
    // What crossed the bus about them.
    let notes: Vec<serde_json::Value> = listener
        .notifications_iter()
        .map(|n| serde_json::from_str(&n.expect("notification").payload).expect("json"))
        .filter(|v: &serde_json::Value| matches!(v["k"].as_str(), Some("presence" | "presence_of")))
        .collect();
    let told: std::collections::HashSet<i64> = notes
        .iter()
        .flat_map(|n| match n["k"].as_str() {
            Some("presence_of") => n["users"].as_array().cloned().unwrap_or_default(),
            _ => vec![json!([n["t"], n["u"], n["n"], n["away"]])],
        })
        .filter_map(|u| u[1].as_i64())
        .collect();
    assert!(users.iter().all(|u| told.contains(u)), "{notes:?}");
    assert!(notes.len() <= 10, "{} presence messages for 40 sockets", notes.len());
    drop(sockets);
}

/// `switchboard serve` as deployed: a process of its own on `app`'s
/// database and fake Meta, on a port of its own; killed when dropped.
pub(crate) struct Serve {
    child: std::process::Child,
    pub(crate) base: String,
}

impl Serve {
    async fn start(app: &TestApp) -> Serve {
        Serve::start_with(app, &[]).await
    }

    pub(crate) async fn start_with(app: &TestApp, env: &[(&str, &str)]) -> Serve {
        let serve = Serve::spawn_with(app, env);
        let ready = format!("{}/readyz", serve.base);
        crate::common::eventually("serve is ready", || async {
            app.client.get(&ready).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        serve
    }

    /// Sends the process `signal` (`TERM`, `INT`) and waits for it to exit,
    /// at most `within`: its exit status, and how long it took.
    async fn stop(&mut self, signal: &str, within: Duration) -> (std::process::ExitStatus, Duration) {
        let asked = std::time::Instant::now();
        let kill =
            std::process::Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
        assert!(kill.expect("kill").success());
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status, asked.elapsed());
            }
            assert!(asked.elapsed() < within, "serve still running {within:?} after SIG{signal}");
            actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Started, not waited for.
    fn spawn_with(app: &TestApp, env: &[(&str, &str)]) -> Serve {
        use base64::Engine;
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let key = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("serve")
            .env("DATABASE_URL", &app.db.url)
            .env("SWITCHBOARD_BIND", format!("127.0.0.1:{port}"))
            .env("SWITCHBOARD_JWT_SECRET", crate::common::JWT_SECRET)
            .env("SWITCHBOARD_ENCRYPTION_KEYS", format!("k1:{key}"))
            .env("META_APP_ID", &app.config.meta.app_id)
            .env("META_APP_SECRET", app.config.meta.app_secret.expose())
            .env("META_VERIFY_TOKEN", "verify-me")
            .env("META_GRAPH_URL", &app.fake_base)
            .env("META_DIALOG_URL", &app.fake_base)
            .env("SWITCHBOARD_RECONCILE_SECS", "0")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .current_dir(std::env::temp_dir())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("switchboard serve");
        Serve { child, base: format!("http://127.0.0.1:{port}") }
    }

    fn ws(&self) -> String {
        format!("{}/ws", self.base.replace("http://", "ws://"))
    }

    /// The most memory the process has held (VmHWM), in KiB.
    fn peak_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM");
        line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a number of kB")
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A change of one channel's list has the sockets of the members it moved
/// read their channels again, not every socket of the tenant (a thousand
/// reads, and a thousand sockets paused until theirs is back, for one agent
/// moved); a list put back unchanged has none read.
#[actix_web::test]
async fn a_list_change_has_only_the_moved_members_sockets_read_again() {
    let app = spawn_app_without_workers().await;
    let t = team(&app).await;
    let channel = channels_of(&app, &t.admin).await;
    // A process of its own: its counters are these sockets' alone.
    let serve = Serve::start(&app).await;
    let mut sockets = Vec::new();
    for bearer in [&t.admin, &t.agent_x, &t.agent_other] {
        let mut s = ws_at(&serve.ws(), bearer).await;
        next(&mut s, Duration::from_secs(5)).await.expect("hello");
        sockets.push(s);
    }
    let reads = || async {
        let text = app.client.get(format!("{}/metrics", serve.base)).send().await.expect("metrics");
        let text = text.text().await.expect("text");
        let line = text.lines().find_map(|l| l.strip_prefix("switchboard_ws_channel_reads_total "));
        line.and_then(|n| n.parse::<u64>().ok()).expect("the counter")
    };
    let before = reads().await;
    list_on(&app, &t.admin, &channel, &[&t.agent_x_id]).await;
    list_on(&app, &t.admin, &channel, &[]).await;
    let changed = until(&mut sockets[1], "channels.changed", Duration::from_secs(5)).await.expect("Xavi narrowed");
    assert_eq!(changed["data"]["channel_ids"], json!([]));
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reads().await - before, 1, "only Xavi's socket read its channels again");
}

/// Two `serve` processes on one database, each with its workers and its
/// LISTEN connection: webhooks received by one reach agents on both,
/// whichever process's worker handled each.
#[actix_web::test]
async fn two_serve_processes_share_one_database() {
    // The in-process app only sets up (no workers: it handles no webhook).
    let app = spawn_app_without_workers().await;
    let t = team(&app).await;
    let (a, b) = (Serve::start(&app).await, Serve::start(&app).await);
    let mut on_a = ws_at(&a.ws(), &t.admin).await;
    let mut on_b = ws_at(&b.ws(), &t.agent_x).await;
    for s in [&mut on_a, &mut on_b] {
        next(s, Duration::from_secs(5)).await.expect("hello");
    }
    for i in 0..6 {
        let body =
            crate::common::messenger_text(&format!("8800{i}"), &format!("m_two_processes_{i}"), &format!("olá {i}"));
        assert_eq!(app.webhook_at(&a.base, &body).await, 200);
    }
    for (name, s) in [("on a", &mut on_a), ("on b", &mut on_b)] {
        let mut texts = std::collections::BTreeSet::new();
        while texts.len() < 6 {
            let m = until(s, "message.created", Duration::from_secs(10)).await;
            let m = m.unwrap_or_else(|| panic!("{name}: only {texts:?}"));
            texts.insert(m["data"]["text"].as_str().expect("text").to_string());
        }
        assert_eq!(texts, (0..6).map(|i| format!("olá {i}")).collect(), "{name}");
    }
}

/// Events an instance commits go to its own sockets directly
/// (`Feed::committed`), not read back from the log: its listener, woken at
/// once by their notification, leaves them to that path. Ten webhooks, each
/// in a batch of its own, on a `serve` process whose metrics are its own.
#[actix_web::test]
async fn an_instances_own_events_reach_its_sockets_without_a_read_back() {
    let app = spawn_app_without_workers().await;
    let t = team(&app).await;
    let serve = Serve::start(&app).await;
    let mut s = ws_at(&serve.ws(), &t.admin).await;
    next(&mut s, Duration::from_secs(5)).await.expect("hello");
    for i in 0..10 {
        let body = crate::common::messenger_text("77001", &format!("m_direct_{i}"), &format!("direct {i}"));
        assert_eq!(app.webhook_at(&serve.base, &body).await, 200);
        let m = until(&mut s, "message.created", Duration::from_secs(10)).await.expect("the message, live");
        assert_eq!(m["data"]["text"], format!("direct {i}"));
    }
    let metrics = app.client.get(format!("{}/metrics", serve.base)).send().await.expect("metrics");
    let metrics = metrics.text().await.expect("text");
    let count = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
    };
    let (direct, reads) = (count("switchboard_bus_direct_total "), count("switchboard_bus_reads_total "));
    // Without the listener's pause: 1–3 direct, 7–9 read back; with it 9
    // and 1 (room is left for a loaded machine).
    assert!(direct >= 6.0 && reads <= 4.0, "handed over directly {direct} times, read back {reads} times");
}

/// Told to stop (SIGTERM, as a deploy or `docker stop` does), `serve`
/// closes its sockets with 1001 (going away) at once, so clients reconnect
/// to another instance, and exits without waiting out its shutdown timeout,
/// nor for a client's idle HTTP connection (kept 75 s) to end.
/// It listens for the signals before it serves anything: one that comes as
/// soon as it answers stops it as cleanly (the signal did not kill it).
#[actix_web::test]
async fn serve_closes_its_sockets_with_1001_when_told_to_stop() {
    let app = spawn_app_without_workers().await;
    let t = team(&app).await;
    for _ in 0..3 {
        // As soon as it answers.
        let mut serve = Serve::spawn_with(&app, &[]);
        let health = format!("{}/healthz", serve.base);
        let started = std::time::Instant::now();
        while app.client.get(&health).send().await.is_err() {
            assert!(started.elapsed() < Duration::from_secs(30), "serve never answered");
            actix_web::rt::time::sleep(Duration::from_millis(2)).await;
        }
        let kill = std::process::Command::new("kill").arg("-TERM").arg(serve.child.id().to_string()).status();
        assert!(kill.expect("kill").success());
        let status = serve.child.wait().expect("wait");
        assert!(status.success(), "SIGTERM just after start: {status:?}");
    }
    for signal in ["TERM", "INT"] {
        let mut serve = Serve::start(&app).await;
        let mut s = ws_at(&serve.ws(), &t.admin).await;
        next(&mut s, Duration::from_secs(5)).await.expect("hello");
        let mut idle = tokio::net::TcpStream::connect(serve.base.trim_start_matches("http://")).await.expect("connect");
        assert_eq!(crate::common::status_on(&mut idle, "/healthz").await, Some(200));
        let (stopped, closed) = futures_util::join!(
            serve.stop(signal, Duration::from_secs(10)),
            until(&mut s, "closed", Duration::from_secs(5))
        );
        let closed = closed.expect("a close frame");
        assert_eq!(closed["code"], 1001, "SIG{signal}: {closed}");
        assert!(stopped.0.success(), "SIG{signal}: {:?}", stopped.0);
        drop(idle);
    }
}

/// A customer of page A writes (through the fake); their conversation's
/// id once a `serve` process (which processes the webhook) has it.
async fn taken_in_by_serve(app: &TestApp, psid: &str, text: &str) -> i64 {
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": psid, "text": text})).await;
    let find = format!(
        "SELECT v.id AS n FROM tenant_acme.conversations v JOIN tenant_acme.contacts c ON c.id = v.contact_id \
         WHERE c.external_id = '{psid}'"
    );
    crate::common::eventually("serve took the message in", || async {
        app.count(&find.replace("v.id AS n", "count(*) AS n")) == 1
    })
    .await;
    app.count(&find)
}

/// A stopping `serve` claims no more sends and lets those under way end
/// before it exits: one cut after Meta took it, before its record, would
/// be sent again by the next instance to claim it. Its sender leaves the
/// count of those sharing the channels' rates (`inbox::roster`) as it goes.
#[actix_web::test]
async fn serve_lets_the_sends_under_way_end_before_it_stops() {
    let app = spawn_app_without_workers().await;
    let t = team(&app).await;
    let mut serve = Serve::start(&app).await;
    let conv = taken_in_by_serve(&app, "6660000000000777", "Olá").await;
    // Meta takes 4 s over the reply.
    let slow = json!({"path": format!("/{PAGE_A}/messages"), "method": "POST", "delay_ms": 4_000, "times": 1});
    app.fake("POST", "/_fake/errors", slow).await;
    let r = app
        .call("POST", &format!("/api/conversations/{conv}/messages"), Some(&t.admin), Some(json!({"text": "Já vai!"})))
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    crate::common::eventually("the send under way", || async {
        let log = app.fake("GET", "/_fake/requests", json!({})).await;
        log["items"].as_array().is_some_and(|items| items.iter().any(|c| c["body"]["message"]["text"] == "Já vai!"))
    })
    .await;
    let senders = "SELECT count(*) AS n FROM public.senders";
    assert_eq!(app.count(senders), 1, "serve's sender is counted among those sharing a channel's rate");
    let metrics = app.client.get(format!("{}/metrics", serve.base)).send().await.expect("metrics");
    let metrics = metrics.text().await.expect("text");
    assert!(metrics.lines().any(|l| l == "switchboard_senders 1"), "as it counted them: {metrics}");
    let (status, took) = serve.stop("TERM", Duration::from_secs(15)).await;
    assert!(status.success(), "{status:?}");
    assert!(took >= Duration::from_secs(2), "serve waited for Meta's answer");
    let recorded = format!("SELECT count(*) AS n FROM tenant_acme.messages WHERE id = {id} AND status <> 'pending'");
    assert_eq!(app.count(&recorded), 1, "the send was recorded before serve stopped");
    assert_eq!(app.count(senders), 0, "and checked out as it stopped, not counted 15 s more");
}

/// A stopping `serve` waits for the files it is uploading too; one still
/// going when its wait ends (`SWITCHBOARD_STOP_WAIT_SECS`) is cut and its
/// job handed back, to be tried again 20 s later, not when its 15-minute
/// lease lapses.
#[actix_web::test]
async fn serve_waits_for_the_files_it_uploads_and_hands_back_those_it_cuts() {
    let app = spawn_app_without_workers().await;
    let t = team(&app).await;
    let mut serve = Serve::start_with(&app, &[("SWITCHBOARD_STOP_WAIT_SECS", "10")]).await;
    let mut convs = Vec::new();
    for psid in ["6660000000000781", "6660000000000782"] {
        convs.push(taken_in_by_serve(&app, psid, "A nota fiscal?").await);
    }
    // Meta takes 6 s over the first file, a minute over the second.
    for delay_ms in [6_000, 60_000] {
        let slow = json!({"path": format!("/{PAGE_A}/messages"), "method": "POST", "delay_ms": delay_ms, "times": 1});
        app.fake("POST", "/_fake/errors", slow).await;
    }
    let uploads = || async {
        let log = app.fake("GET", "/_fake/requests", json!({})).await;
        log["items"].as_array().map_or(0, |items| {
            items.iter().filter(|c| c["method"] == "POST" && c["path"] == format!("/{PAGE_A}/messages")).count()
        })
    };
    let pdf: &[u8] = b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n%%EOF\n";
    let mut ids = Vec::new();
    for (n, conv) in convs.iter().enumerate() {
        let path = format!("/api/conversations/{conv}/messages");
        let r = crate::inbox::post_form(&app, &t.admin, &path, Some(("nota-fiscal.pdf", "application/pdf", pdf)), &[])
            .await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        ids.push(r.body["id"].as_str().expect("id").to_string());
        crate::common::eventually("the upload under way", || async { uploads().await == n + 1 }).await;
    }
    let (status, took) = serve.stop("TERM", Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}");
    assert!(took >= Duration::from_secs(9), "serve waited for the uploads: {took:?}");
    let sent = format!("SELECT count(*) AS n FROM tenant_acme.messages WHERE id = {} AND status <> 'pending' AND external_id IS NOT NULL", ids[0]);
    let how = format!(
        "SELECT status || ' ' || coalesce(error::text, '') AS s FROM tenant_acme.messages WHERE id = {}",
        ids[0]
    );
    assert_eq!(app.count(&sent), 1, "the first file's send was recorded before serve stopped: {}", {
        #[derive(QueryableByName)]
        struct S {
            #[diesel(sql_type = diesel::sql_types::Text)]
            s: String,
        }
        diesel::sql_query(&how).get_result::<S>(&mut app.db.conn()).map(|r| r.s).unwrap_or_default()
    });
    let handed_back = format!(
        "SELECT count(*) AS n FROM public.send_queue WHERE message_id = {} AND status = 'pending' AND may_have_gone \
         AND next_attempt_at BETWEEN now() + interval '5 seconds' AND now() + interval '25 seconds' \
         AND last_error LIKE '%cut by a stopping server%'",
        ids[1]
    );
    assert_eq!(app.count(&handed_back), 1, "the second file's send handed back, to be tried 20 s later");
    let pending =
        format!("SELECT count(*) AS n FROM tenant_acme.messages WHERE id = {} AND status = 'pending'", ids[1]);
    assert_eq!(app.count(&pending), 1);
}

/// The server pings; a client silent past the timeout (no frame, not even
/// a pong) is closed with 4408 and counted, while one that answers stays.
/// Timings shortened through the configuration, on a `serve` process of
/// its own.
#[actix_web::test]
async fn a_silent_client_is_dropped_and_an_answering_one_stays() {
    let app = spawn_app_without_workers().await;
    let t = team(&app).await;
    let serve =
        Serve::start_with(&app, &[("SWITCHBOARD_WS_PING_SECS", "1"), ("SWITCHBOARD_WS_TIMEOUT_SECS", "2")]).await;
    let mut silent = ws_at(&serve.ws(), &t.admin).await;
    let connected = std::time::Instant::now();
    let mut answering = ws_at(&serve.ws(), &t.agent_x).await;
    // `next` answers the server's pings while it waits.
    let until_then = std::time::Instant::now() + Duration::from_millis(4500);
    while std::time::Instant::now() < until_then {
        let _ = next(&mut answering, Duration::from_millis(300)).await;
    }
    send(&mut answering, json!({"type": "ping"})).await;
    assert!(until(&mut answering, "pong", Duration::from_secs(3)).await.is_some(), "the answering client was dropped");
    // The silent one was pinged, then closed (about 3 s in: a ping a
    // second, more than 2 s of silence); what it was sent is still to read.
    let mut pings = 0;
    let dropped_by = connected + Duration::from_secs(7);
    let ended = loop {
        let left = dropped_by.saturating_duration_since(std::time::Instant::now());
        match timeout(left, silent.next()).await {
            Ok(Some(Ok(Frame::Ping(_)))) => pings += 1,
            Ok(Some(Ok(Frame::Close(close)))) => {
                break Ok(close.map(|c| (u16::from(c.code), c.description.unwrap_or_default())))
            }
            Ok(Some(Err(e))) => break Err(format!("error {e}")),
            Ok(None) => break Err("end of stream without a close frame".to_string()),
            Ok(Some(Ok(_))) => {}
            Err(_) => break Err("still connected 7 s in".to_string()),
        }
    };
    match ended {
        Ok(Some((4408, reason))) => assert!(reason.contains("since"), "{reason}"),
        other => panic!("the silent client was not closed with 4408: {other:?}"),
    }
    assert!(pings >= 1, "it was never pinged");
    let metrics = app.client.get(format!("{}/metrics", serve.base)).send().await.expect("metrics");
    let metrics = metrics.text().await.expect("text");
    let counted = metrics.lines().find_map(|l| l.strip_prefix("switchboard_ws_silent_total ")).map(str::parse::<u64>);
    assert_eq!(counted, Some(Ok(1)), "{metrics}");
}

/// A socket whose login ended before the hub could say so (here: ended in
/// the database alone) is closed as the hub would close it, 4401, when its
/// own next read is refused by the tenant's guard, not 1011 as if the log
/// could not be read (seen when a logout raced a new socket's replay).
#[actix_web::test]
async fn a_socket_whose_own_read_finds_its_login_ended_is_closed_with_4401() {
    use base64::Engine;
    let app = spawn_app().await;
    let t = team(&app).await;
    let login = app.login("xavi@acme.test", "xavi-password-1", "acme").await;
    let access = token(&login, "access_token");
    let mut socket = ws(&app, "", Some(&access), None).await.expect("socket");
    next(&mut socket, Duration::from_secs(3)).await.expect("hello");
    let payload = access.split('.').nth(1).expect("a JWT");
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64");
    let claims: Value = serde_json::from_slice(&claims).expect("claims");
    let family = claims["fam"].as_str().expect("fam");
    let ended = app.exec(&format!("UPDATE public.refresh_tokens SET revoked_at = now() WHERE family_id = '{family}'"));
    assert!(ended >= 1);
    // Its channels change: the session reads them again, and the guard refuses.
    let channel = channels_of(&app, &t.admin).await;
    list_on(&app, &t.admin, &channel, &[]).await;
    let closed = until(&mut socket, "closed", Duration::from_secs(5)).await.expect("closed");
    assert_eq!(closed["code"], 4401, "{closed}");
}

/// Access that narrows or ends reaches open sockets at once: an agent taken
/// off a channel stops getting its events on the same socket; a logout, or
/// the reuse of a spent refresh token, closes that login's sockets (4401)
/// and only those.
#[actix_web::test]
async fn narrowed_and_ended_logins_reach_open_sockets() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let first = app.login("xavi@acme.test", "xavi-password-1", "acme").await;
    let second = app.login("xavi@acme.test", "xavi-password-1", "acme").await;
    let mut admin = ws(&app, "", Some(&t.admin), None).await.expect("admin");
    let mut x1 = ws(&app, "", Some(&token(&first, "access_token")), None).await.expect("x, first login");
    let mut x2 = ws(&app, "", Some(&token(&second, "access_token")), None).await.expect("x, second login");
    for s in [&mut admin, &mut x1, &mut x2] {
        next(s, Duration::from_secs(3)).await.expect("hello");
    }
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "901", "text": "first"})).await;
    for s in [&mut admin, &mut x1, &mut x2] {
        assert!(until(s, "message.created", Duration::from_secs(5)).await.is_some());
    }
    // Off the channel: the same sockets stay open but hear nothing more of it.
    let channel = channels_of(&app, &t.admin).await;
    list_on(&app, &t.admin, &channel, &[]).await;
    // The sessions reload their channels when told (a NOTIFY away), and say so.
    for s in [&mut x1, &mut x2] {
        let changed = until(s, "channels.changed", Duration::from_secs(5)).await.expect("channels.changed");
        assert_eq!(changed["data"]["channel_ids"], json!([]));
    }
    assert!(until(&mut admin, "channels.changed", Duration::from_millis(300)).await.is_none(), "an admin sees all");
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "902", "text": "second"})).await;
    let m = until(&mut admin, "message.created", Duration::from_secs(5)).await.expect("the admin sees it");
    assert_eq!(m["data"]["text"], "second");
    for s in [&mut x1, &mut x2] {
        let heard = until(s, "message.created", Duration::from_millis(800)).await;
        assert!(heard.is_none(), "narrowed at once: {heard:?}");
    }
    // The first login logs out: its socket closes, the other login's stays.
    let r = app
        .call("POST", "/api/auth/logout", None, Some(json!({"refresh_token": token(&first, "refresh_token")})))
        .await;
    assert_eq!(r.status, 204);
    let closed = until(&mut x1, "closed", Duration::from_secs(5)).await.expect("closed");
    assert_eq!(closed["code"], 4401);
    send(&mut x2, json!({"type": "ping"})).await;
    assert_eq!(until(&mut x2, "pong", Duration::from_secs(3)).await.expect("still open")["type"], "pong");
    // The second login's refresh token is used twice: the reuse ends it.
    let spent = token(&second, "refresh_token");
    for expected in [200, 401] {
        let r = app.call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": spent}))).await;
        assert_eq!(r.status, expected, "{:?}", r.body);
    }
    let closed = until(&mut x2, "closed", Duration::from_secs(5)).await.expect("closed");
    assert_eq!(closed["code"], 4401);
    // The admin's socket was never touched.
    send(&mut admin, json!({"type": "ping"})).await;
    assert!(until(&mut admin, "pong", Duration::from_secs(3)).await.is_some_and(|f| f["type"] == "pong"));
}

/// A socket taken off a channel hears of it after every event that
/// channel had queued for it and before anything of its new set: the
/// `channels.changed` frame goes in line with the events, not ahead of
/// them. Seen in the chaos runs: a client that had just been told it no
/// longer sees a channel got one of its messages next.
#[actix_web::test]
async fn channels_changed_comes_after_what_the_old_channels_queued() {
    use crate::teardown::RawClient;
    let app = spawn_app().await;
    let t = team(&app).await;
    let channel = channels_of(&app, &t.admin).await;
    let mut first = ws(&app, "", Some(&t.agent_x), None).await.expect("xavi");
    let last =
        next(&mut first, Duration::from_secs(3)).await.expect("hello")["data"]["last_seq"].as_i64().expect("seq");
    drop(first);
    // A resume of ~10 MB that a client reading nothing stalls: what comes
    // live meanwhile waits in the socket's outbox.
    let pool = app.pool.clone();
    tokio::task::spawn_blocking(move || append_in(&pool, 300, 32_000)).await.expect("append");
    let mut x = RawClient::connect_to(&app.base, &format!("/ws?since={last}"), &t.agent_x, Some(4096)).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "903", "text": "while Xavi sees page A"})).await;
    app.processed().await;
    list_on(&app, &t.admin, &channel, &[]).await;
    // The hub hears of it (a NOTIFY away) while the socket is still
    // stalled; the session, whose actor runs only when its socket can
    // write, reads the list once the client reads again.
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "903", "text": "after"})).await;
    app.processed().await;

    let mut kinds = Vec::new();
    while let Some(f) = x.frame(Duration::from_secs(3)).await {
        if f.opcode == 0x1 {
            let v: Value = serde_json::from_slice(&f.payload).expect("JSON");
            if v["type"] != "channel.updated" {
                kinds.push((v["type"].as_str().unwrap_or("").to_string(), v["data"]["text"].clone()));
            }
        }
    }
    let changed = kinds.iter().position(|(k, _)| k == "channels.changed").expect("channels.changed");
    let page_a = ["message.created", "conversation.created", "conversation.updated", "notification"];
    let before: Vec<_> = kinds[..changed].iter().filter(|(k, _)| page_a.contains(&k.as_str())).collect();
    assert!(
        before.iter().any(|(k, text)| k == "message.created" && text == "while Xavi sees page A"),
        "the message of page A before the change reached Xavi: {kinds:?}"
    );
    let after: Vec<_> = kinds[changed..].iter().filter(|(k, _)| page_a.contains(&k.as_str())).collect();
    assert!(after.is_empty(), "page A's events after Xavi was told he no longer sees it: {after:?} in {kinds:?}");
}

/// A member given a channel while their long resume is under way hears of
/// it before any of its events: the replay, written ahead of the outbox
/// where `channels.changed` waits, sends only the channels the client knows
/// it sees; those gained come live after the frame (the client reloads its
/// lists when told).
#[actix_web::test]
async fn a_channel_gained_during_a_resume_is_named_before_its_events() {
    use crate::teardown::RawClient;
    let app = spawn_app().await;
    let t = team(&app).await;
    let channel = channels_of(&app, &t.admin).await;
    list_on(&app, &t.admin, &channel, &[]).await;
    let mut first = ws(&app, "", Some(&t.agent_x), None).await.expect("xavi");
    let hello = next(&mut first, Duration::from_secs(3)).await.expect("hello");
    assert_eq!(hello["data"]["channel_ids"], json!([]), "Xavi sees no channel");
    let last = hello["data"]["last_seq"].as_i64().expect("seq");
    drop(first);
    // ~10 MB every member sees, which a client reading nothing stalls, then
    // events of page A, which Xavi does not see yet.
    let (pool, page): (_, i64) = (app.pool.clone(), channel.parse().expect("id"));
    tokio::task::spawn_blocking(move || {
        append_on(&pool, None, 300, 32_000);
        append_on(&pool, Some(page), 20, 3);
    })
    .await
    .expect("append");
    let mut x = RawClient::connect_to(&app.base, &format!("/ws?since={last}"), &t.agent_x, Some(4096)).await;
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    list_on(&app, &t.admin, &channel, &[&t.agent_x_id]).await;
    // The session (its actor runs when its socket can write) reloads its
    // channels once the client reads, with most of the resume to come.
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;

    let label = |v: &Value| match v["type"].as_str().unwrap_or("") {
        "channel.updated" if v["data"]["pad"].as_str().is_some_and(|p| p.len() > 100) => "everyone's",
        "channel.updated" if v["data"]["pad"].is_string() => "page A's",
        "message.created" if v["data"]["text"] == "now Xavi sees page A" => "the live message",
        "channels.changed" => "channels.changed",
        _ => "other",
    };
    let mut seen = Vec::new();
    while let Some(f) = x.frame(Duration::from_secs(3)).await {
        if f.opcode == 0x1 {
            let v: Value = serde_json::from_slice(&f.payload).expect("JSON");
            seen.push(label(&v));
            if seen.last() == Some(&"channels.changed") {
                break;
            }
        }
    }
    assert_eq!(seen.last(), Some(&"channels.changed"), "told of page A");
    assert_eq!(seen.iter().filter(|l| **l == "everyone's").count(), 300, "the whole resume, then the frame");
    let early = seen.iter().filter(|l| **l == "page A's").count();
    assert_eq!(early, 0, "page A's events before Xavi was told he sees it: {early}");
    // Page A's events come live from then on.
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "903", "text": "now Xavi sees page A"})).await;
    let mut live = Vec::new();
    while let Some(f) = x.frame(Duration::from_secs(3)).await {
        if f.opcode == 0x1 {
            live.push(label(&serde_json::from_slice(&f.payload).expect("JSON")));
        }
    }
    assert!(live.contains(&"the live message"), "page A's live message after the change: {live:?}");
}

/// A socket whose client stopped reading is narrowed like any other. Its
/// actor, which reads the member's new list, runs only when the socket can
/// write, so the hub went on fanning out by the old list until the client
/// read again, and those frames went out: page A's message, sent after
/// Xavi was taken off page A. The hub now holds the outbox from when it
/// hears of the change, and drops what came of a lost channel meanwhile:
/// its events, and colleagues' typing in its conversations (not logged, but
/// no more the member's to see).
#[actix_web::test]
async fn a_stalled_socket_gets_nothing_of_a_channel_lost_while_it_stalled() {
    use crate::teardown::RawClient;
    let app = spawn_app().await;
    let t = team(&app).await;
    let channel = channels_of(&app, &t.admin).await;
    // A page A conversation from before Xavi connects, for the admin to
    // type in while he stalls.
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "905", "text": "before"})).await;
    app.processed().await;
    let listed = app.call("GET", "/api/conversations", Some(&t.admin), None).await;
    let conv = listed.body["items"][0]["id"].as_str().expect("a conversation").to_string();
    let mut x = RawClient::connect_to(&app.base, "/ws", &t.agent_x, Some(4096)).await;
    // ~10 MB of live events every member sees, which the client does not read.
    let pool = app.pool.clone();
    tokio::task::spawn_blocking(move || append_in(&pool, 300, 32_000)).await.expect("append");
    actix_web::rt::time::sleep(Duration::from_secs(1)).await;
    list_on(&app, &t.admin, &channel, &[]).await;
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "904", "text": "after Xavi lost page A"})).await;
    app.processed().await;
    // Typing is not logged, yet it is of page A too.
    let r =
        app.call("POST", &format!("/api/conversations/{conv}/typing"), Some(&t.admin), Some(json!({"on": true}))).await;
    assert!(r.status < 300, "{:?}", r.body);
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;

    let (mut everyones, mut changed, mut leaked) = (0, false, Vec::new());
    while let Some(f) = x.frame(Duration::from_secs(3)).await {
        if f.opcode == 0x1 {
            let v: Value = serde_json::from_slice(&f.payload).expect("JSON");
            match v["type"].as_str().unwrap_or("") {
                "channel.updated" => everyones += 1,
                "channels.changed" => changed = true,
                "hello" | "presence" => {}
                _ => leaked.push(v),
            }
        }
    }
    assert_eq!(everyones, 300, "every event Xavi still sees");
    assert!(changed, "told of the change");
    assert!(leaked.is_empty(), "page A's events after Xavi lost it: {leaked:?}");
}

/// Puts the agents `user_ids` on `channel`'s list, answered 200.
async fn list_on(app: &TestApp, admin: &str, channel: &str, user_ids: &[&str]) {
    let r = app
        .call("PUT", &format!("/api/channels/{channel}/members"), Some(admin), Some(json!({"user_ids": user_ids})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

/// The id of page A's channel, as the admin lists it.
async fn channels_of(app: &TestApp, admin: &str) -> String {
    let r = app.call("GET", "/api/channels", Some(admin), None).await;
    let items = r.body["items"].as_array().expect("items");
    let page = items.iter().find(|c| c["external_id"] == PAGE_A).expect("page A");
    page["id"].as_str().expect("id").to_string()
}

/// An instance that said it was alive and then fell silent (it crashed) is
/// forgotten after three periods: its agents go offline on the others.
#[actix_web::test]
async fn the_agents_of_an_instance_that_died_go_offline() {
    use switchboard::realtime::bus::notify_live;
    use switchboard::realtime::LiveMsg;
    let app = spawn_app_without_workers().await;
    let t = team(&app).await;
    let serve = Serve::start_with(&app, &[("SWITCHBOARD_PRESENCE_ALIVE_SECS", "1")]).await;
    let mut admin = ws_at(&serve.ws(), &t.admin).await;
    next(&mut admin, Duration::from_secs(3)).await.expect("hello");
    presence_seen(&mut admin, Duration::from_millis(500)).await;
    // A "ghost" instance says it is alive and has agent X's socket, then
    // never speaks again.
    let tenant: i64 =
        serde_json::from_value(app.call("GET", "/api/me", Some(&t.admin), None).await.body["tenant"]["id"].clone())
            .map(|id: String| id.parse().expect("id"))
            .expect("tenant id");
    let x: i64 = t.agent_x_id.parse().expect("id");
    let mut conn = app.db.conn();
    notify_live(&mut conn, &LiveMsg::Alive { inst: "ghost".into() }).expect("alive");
    notify_live(&mut conn, &LiveMsg::PresenceOf { inst: "ghost".into(), users: vec![(tenant, x, 1, false)] })
        .expect("presence");
    let online = presence_seen(&mut admin, Duration::from_millis(800)).await;
    assert_eq!(online.get(&t.agent_x_id).map(String::as_str), Some("online"), "{online:?}");
    // Three seconds of silence, checked every second: offline within ~5 s.
    let gone = until(&mut admin, "presence", Duration::from_secs(8)).await.expect("offline");
    assert_eq!(
        (gone["data"]["user_id"].as_str(), gone["data"]["status"].as_str()),
        (Some(t.agent_x_id.as_str()), Some("offline"))
    );
}

/// `POST /api/conversations/{id}/typing` does what a socket's `typing`
/// does: colleagues see it live (never the sender's own sockets), and the
/// contact sees the page typing, at most every 5 s.
#[actix_web::test]
async fn typing_over_rest_reaches_colleagues_and_the_contact_once() {
    let (app, t, mut admin, mut x, conv) = admin_and_xavi_at_a_conversation("903").await;
    // Without `on` it means typing (the first frame shows it on).
    for body in [json!({}), json!({"on": true})] {
        let r = app.call("POST", &format!("/api/conversations/{conv}/typing"), Some(&t.agent_x), Some(body)).await;
        assert_eq!(r.status, 204, "{:?}", r.body);
    }
    let typing = until(&mut admin, "typing", Duration::from_secs(3)).await.expect("typing");
    assert_eq!(
        (typing["data"]["user_id"].as_str(), typing["data"]["name"].as_str(), typing["data"]["on"].as_bool()),
        (Some(t.agent_x_id.as_str()), Some("Xavi"), Some(true))
    );
    assert_eq!(typing["data"]["conversation_id"], conv.as_str());
    assert!(until(&mut x, "typing", Duration::from_millis(500)).await.is_none(), "not echoed to the sender");
    let r = app
        .call("POST", &format!("/api/conversations/{conv}/typing"), Some(&t.agent_x), Some(json!({"on": false})))
        .await;
    assert_eq!(r.status, 204);
    // The second "on" renewed it; then "off".
    let mut seen = Vec::new();
    while seen.last() != Some(&false) {
        let f = until(&mut admin, "typing", Duration::from_secs(3)).await.expect("typing off");
        seen.push(f["data"]["on"].as_bool().expect("on"));
    }
    assert!(seen.len() <= 2, "{seen:?}");
    let actions = |action: &'static str| {
        let app = &app;
        async move {
            app.fake("GET", "/_fake/requests", json!({})).await["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter(|r| r["body"]["sender_action"] == action && r["body"]["recipient"]["id"] == "903")
                .count()
        }
    };
    crate::common::eventually("typing_off sent", || async { actions("typing_off").await == 1 }).await;
    assert_eq!(actions("typing_on").await, 1, "two typing_on within 5 s: one sender action");
}

/// A client's malformed messages are answered with `error` frames in the
/// envelope, and the socket stays open.
#[actix_web::test]
async fn a_clients_mistakes_get_error_frames_and_the_socket_stays() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let mut x = ws(&app, "", Some(&t.agent_x), None).await.expect("x");
    next(&mut x, Duration::from_secs(3)).await.expect("hello");
    let cases = [
        (Message::Text("not json".into()), "invalid_message"),
        (Message::Text(r#"{"type": "teleport"}"#.into()), "invalid_message"),
        (Message::Binary(vec![1u8, 2, 3].into()), "invalid_message"),
        (Message::Text(r#"{"type": "presence", "status": "asleep"}"#.into()), "invalid_status"),
        (Message::Text(r#"{"type": "typing", "conversation_id": "999999", "on": true}"#.into()), "not_found"),
    ];
    for (message, code) in cases {
        x.send(message).await.expect("send");
        let e = until(&mut x, "error", Duration::from_secs(3)).await.expect("error frame");
        assert_eq!(e["data"]["code"], code, "{e}");
        assert!(e["data"]["message"].as_str().is_some_and(|m| !m.is_empty()) && e["at"].is_string(), "{e}");
    }
    // The message says what is wrong.
    send(&mut x, json!({"type": "typing", "on": true})).await;
    let e = until(&mut x, "error", Duration::from_secs(3)).await.expect("error frame");
    assert!(e["data"]["message"].as_str().is_some_and(|m| m.contains("missing field `conversation_id`")), "{e}");
    send(&mut x, json!({"type": "ping"})).await;
    assert_eq!(until(&mut x, "pong", Duration::from_secs(3)).await.expect("still open")["type"], "pong");
    // Each client message with each value in turn retyped or removed, and
    // messages of other JSON (paced under the socket's allowance): each is
    // answered with an error frame or taken, and the socket stays open.
    let mut odd = Vec::new();
    for base in [
        json!({"type": "typing", "conversation_id": "1", "on": true}),
        json!({"type": "presence", "status": "away"}),
        json!({"type": "ping"}),
    ] {
        odd.extend(switchboard::meta::variants::every_variant(&base, &switchboard::meta::variants::odd_values()));
    }
    for whole in [json!(null), json!([]), json!("ping"), json!(7), json!([{"type": "ping"}])] {
        odd.push((format!("{whole}"), whole));
    }
    for (what, message) in &odd {
        send(&mut x, message.clone()).await;
        while let Some(frame) = next(&mut x, Duration::from_millis(60)).await {
            let kind = frame["type"].as_str().unwrap_or_default();
            assert!(matches!(kind, "error" | "pong" | "presence"), "{what}: {frame}");
            if kind == "error" {
                assert!(frame["data"]["code"].is_string() && frame["data"]["message"].is_string(), "{frame}");
            }
        }
    }
    send(&mut x, json!({"type": "ping"})).await;
    let after = until(&mut x, "pong", Duration::from_secs(3)).await.expect("still open after odd messages");
    assert_eq!(after["type"], "pong", "{} odd messages", odd.len());
    // A message in fragments (RFC 6455 §5.4) is read whole: a ping, split
    // mid-character; a binary one is refused like a whole binary message.
    use actix_http::ws::Item;
    let ping = r#"{"type": "ping", "note": "olá"}"#.as_bytes();
    let cut = ping.len() - 4;
    for item in [
        Item::FirstText(ping[..10].to_vec().into()),
        Item::Continue(ping[10..cut].to_vec().into()),
        Item::Last(ping[cut..].to_vec().into()),
    ] {
        x.send(Message::Continuation(item)).await.expect("send");
    }
    assert_eq!(until(&mut x, "pong", Duration::from_secs(3)).await.expect("fragments")["type"], "pong");
    for item in [Item::FirstBinary(vec![1u8].into()), Item::Last(vec![2u8].into())] {
        x.send(Message::Continuation(item)).await.expect("send");
    }
    let e = until(&mut x, "error", Duration::from_secs(3)).await.expect("binary fragments");
    assert_eq!(e["data"]["code"], "invalid_message");
    // Larger than any client message: closed with 1009, whole or in fragments.
    x.send(Message::Text("x".repeat(70 * 1024).into())).await.expect("send");
    assert_eq!(until(&mut x, "closed", Duration::from_secs(3)).await.expect("closed")["code"], 1009);
    let mut y = ws(&app, "", Some(&t.agent_x), None).await.expect("y");
    next(&mut y, Duration::from_secs(3)).await.expect("hello");
    x = y;
    x.send(Message::Continuation(Item::FirstText(vec![b' '; 40 * 1024].into()))).await.expect("send");
    x.send(Message::Continuation(Item::Last(vec![b' '; 40 * 1024].into()))).await.expect("send");
    assert_eq!(until(&mut x, "closed", Duration::from_secs(3)).await.expect("closed")["code"], 1009);

    // A viewer may watch but not type: told so, as `POST …/typing` answers.
    let added = app
        .call(
            "POST",
            "/api/members",
            Some(&t.admin),
            Some(json!({"email": "vera@acme.test", "role": "viewer", "password": "vera-password-1"})),
        )
        .await;
    assert_eq!(added.status, 201, "{:?}", added.body);
    let viewer = token(&app.login("vera@acme.test", "vera-password-1", "acme").await, "access_token");
    let mut v = ws(&app, "", Some(&viewer), None).await.expect("viewer");
    next(&mut v, Duration::from_secs(3)).await.expect("hello");
    send(&mut v, json!({"type": "typing", "conversation_id": "1", "on": true})).await;
    let e = until(&mut v, "error", Duration::from_secs(3)).await.expect("typing refused");
    assert_eq!(e["data"]["code"], "forbidden", "{e}");
}

/// A socket that keeps up is never dropped for the size of one delivery. A
/// backlog (webhooks stored while no processor ran, a retry flood) is
/// processed in batches of up to 1,000, each new conversation ~4 events,
/// and the hub may hold batches to send them together: the admin, who sees
/// every channel, gets deliveries of more than `OUTBOX_LIMIT` frames at
/// once. It gets every event, in order, and is not closed as too slow.
#[actix_web::test]
async fn a_socket_that_keeps_up_gets_a_backlog_whole() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let mut s = ws(&app, "", Some(&t.admin), None).await.expect("ws");
    let mut seq = next(&mut s, Duration::from_secs(3)).await.expect("hello")["data"]["last_seq"].as_i64().expect("seq");
    let total = 5000;
    let bodies: Vec<Vec<u8>> = (0..total)
        .map(|i| crate::common::messenger_text(&format!("{}", 7_000_000 + i), &format!("m_backlog_{i}"), "a backlog"))
        .collect();
    app.store_bodies(&bodies);
    let mut created = 0;
    while created < total {
        let f = next(&mut s, Duration::from_secs(20)).await.expect("the backlog keeps coming");
        assert_ne!(f["type"], "closed", "{f}");
        if let Some(n) = f["seq"].as_i64() {
            assert_eq!(n, seq + 1, "in order, nothing missing: {f}");
            seq = n;
        }
        if f["type"] == "message.created" {
            created += 1;
        }
    }
}

/// A socket that resumes is still writing its replay when a burst comes:
/// the frames past the limit are dropped and read again from the log once
/// the replay is written, not a 4408 (which the client's reconnect would
/// meet again for as long as the burst lasts). Here the client reads
/// nothing until the burst is in, so its replay (24 MB) cannot be written;
/// replay and burst together stay under what a replay carries. It gets
/// every event in order and stays open.
#[actix_web::test]
async fn a_burst_while_a_resume_is_written_is_read_again_from_the_log() {
    let (app, t, s, last) = admin_at_hello().await;
    drop(s);
    append_padded(&app, 1500, 16_000);
    let mut s = ws(&app, &format!("?since={last}"), Some(&t.admin), None).await.expect("resume");
    // The burst, in deliveries of 500, while nothing is read.
    for _ in 0..16 {
        append_padded(&app, 500, 100);
    }
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    let end = last + 1500 + 8000;
    let mut seq = last;
    while seq < end {
        let f = next(&mut s, Duration::from_secs(10)).await.expect("frames keep coming");
        assert!(f["type"] != "closed" && f["type"] != "resync_required", "{f} after seq {seq}");
        if let Some(n) = f["seq"].as_i64() {
            assert_eq!(n, seq + 1, "in order, nothing missing: {f}");
            seq = n;
        }
    }
    send(&mut s, json!({"type": "ping"})).await;
    let pong = until(&mut s, "pong", Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(pong["type"], "pong", "still open: {pong}");
}

/// A resume far behind goes out a page at a time, as the socket takes it:
/// a client that reads nothing holds the server to a page or two, not the
/// whole replay (here 2,000 events of 32 KB, 64 MB: the peak grew by about
/// 2 MB; when a replay was read at once, by 200 MB). Once the client reads,
/// every event comes in order, then live ones. On a `serve` process of its
/// own, whose peak memory is the measure.
#[actix_web::test]
async fn a_resume_is_read_from_the_log_as_the_socket_takes_it() {
    use crate::teardown::RawClient;
    let app = spawn_app_without_workers().await;
    let admin = token(&app.signup("acme", "ann@acme.test", "ann-password-1").await, "access_token");
    // No spare schemas made in the background: only the replay is measured.
    let serve = Serve::start_with(&app, &[("SWITCHBOARD_SPARE_SCHEMAS", "0")]).await;
    let text = |f: crate::teardown::RawFrame| serde_json::from_slice::<Value>(&f.payload).expect("JSON");
    let mut first = RawClient::connect_to(&serve.base, "/ws", &admin, None).await;
    let hello = text(first.frame(Duration::from_secs(5)).await.expect("hello"));
    let last = hello["data"]["last_seq"].as_i64().expect("last_seq");
    drop(first);
    let pool = app.pool.clone();
    tokio::task::spawn_blocking(move || {
        for _ in 0..8 {
            append_in(&pool, 250, 32_000);
        }
    })
    .await
    .expect("append");

    // The appends' notifications are the server's to read first: measure
    // from a peak that has stopped moving (on a busy machine it lags).
    let mut before = serve.peak_kib();
    for _ in 0..20 {
        actix_web::rt::time::sleep(Duration::from_millis(250)).await;
        let now = serve.peak_kib();
        if now == before {
            break;
        }
        before = now;
    }
    let mut client = RawClient::connect_to(&serve.base, &format!("/ws?since={last}"), &admin, Some(4096)).await;
    // A replay read whole was all in memory within a second.
    actix_web::rt::time::sleep(Duration::from_secs(3)).await;
    let grown = serve.peak_kib().saturating_sub(before);
    assert!(grown < 16 * 1024, "peak memory grew by {grown} KiB for one resuming socket that reads nothing");

    let end = last + 2000;
    let mut seq = last;
    let mut live_sent = false;
    while seq < end + 1 {
        let f = client.frame(Duration::from_secs(10)).await.expect("frames keep coming");
        if f.opcode != 0x1 {
            assert_ne!(f.opcode, 0x8, "closed after seq {seq}: {:?}", f.payload);
            continue;
        }
        let f = text(f);
        if f["seq"].is_null() {
            // hello, presence
            continue;
        }
        assert_eq!(f["seq"].as_i64(), Some(seq + 1), "in order, nothing missing: {}", f["type"]);
        seq += 1;
        if seq == end && !live_sent {
            // The replay is done: a new event comes live.
            append_in(&app.pool, 1, 10);
            live_sent = true;
        }
    }
}

/// A resume in pages still gives each member exactly the events they may
/// see, in order: an agent of one channel among others' events, and an
/// agent of none (who sees only the tenant's own), each over many pages.
#[actix_web::test]
async fn a_paged_resume_gives_each_member_their_events_only() {
    let (app, t, s, last) = admin_at_hello().await;
    drop(s);
    let channels = app.call("GET", "/api/channels", Some(&t.admin), None).await;
    let a: i64 = channels.body["items"][0]["id"].as_str().and_then(|id| id.parse().ok()).expect("channel A");
    let mut seen_by_x = Vec::new();
    let mut seen_by_all = Vec::new();
    let mut seq = last;
    for _ in 0..3 {
        for (channel, n) in [(Some(a), 100), (Some(a + 1_000), 150), (None, 5)] {
            append_on(&app.pool, channel, n, 100);
            let range = (seq + 1)..=(seq + n as i64);
            if channel != Some(a + 1_000) {
                seen_by_x.extend(range.clone());
            }
            if channel.is_none() {
                seen_by_all.extend(range);
            }
            seq += n as i64;
        }
    }
    for (bearer, expected) in [(&t.agent_x, seen_by_x), (&t.agent_other, seen_by_all)] {
        let mut s = ws(&app, &format!("?since={last}"), Some(bearer), None).await.expect("resume");
        let got: Vec<i64> =
            sequenced(&mut s, Duration::from_millis(700)).await.iter().filter_map(|f| f["seq"].as_i64()).collect();
        assert_eq!(got, expected);
    }
}

/// Meta's review of a WhatsApp template reaches every instance's kept list
/// of templates, not only the one that processed the webhook: another
/// `serve` process shows the paused template at once, not a minute later.
#[actix_web::test]
async fn a_template_review_reaches_every_instances_kept_templates() {
    let app = spawn_app().await;
    let ctx = crate::inbox::acme(&app).await;
    let other = Serve::start_with(&app, &[]).await;
    let channels = app.call("GET", "/api/channels", Some(&ctx.admin), None).await.body;
    let channel = channels["items"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["platform"] == "whatsapp"))
        .and_then(|c| c["id"].as_str())
        .expect("the number")
        .to_string();
    let status_at = |base: String| {
        let (app, admin, channel) = (&app, ctx.admin.clone(), channel.clone());
        async move {
            let r = app
                .client
                .get(format!("{base}/api/channels/{channel}/templates"))
                .bearer_auth(admin)
                .send()
                .await
                .expect("templates");
            let body: Value = r.json().await.expect("json");
            let items = body["items"].as_array().cloned().unwrap_or_default();
            items.iter().find(|t| t["name"] == "hello_world").map(|t| t["status"].clone()).unwrap_or_default()
        }
    };
    // The other instance keeps the list it read.
    assert_eq!(status_at(other.base.clone()).await, "APPROVED");
    let review = json!({"waba_id": "112233445566778", "name": "hello_world", "event": "PAUSED"});
    let r = app.fake("POST", "/_fake/template-status", review).await;
    assert_eq!(r["delivered_status"], 200, "{r}");
    app.processed().await;
    crate::common::eventually("the other instance reads the list again", || async {
        status_at(other.base.clone()).await == "PAUSED"
    })
    .await;
}

/// Waits for a presence frame saying `user` is `status`.
async fn shown_as(s: &mut Socket, user: &str, status: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        let f = until(s, "presence", left).await.unwrap_or_else(|| panic!("{user} never shown {status}"));
        if f["data"]["user_id"] == user && f["data"]["status"] == status {
            return;
        }
    }
    panic!("{user} never shown {status}");
}

/// Olga's user id (`team`'s other agent).
async fn olga_id(app: &TestApp, t: &Team) -> String {
    let members = app.call("GET", "/api/members", Some(&t.admin), None).await.body["items"].clone();
    let olga = members.as_array().expect("items").iter().find(|m| m["email"] == "olga@acme.test").cloned();
    olga.expect("olga")["user_id"].as_str().expect("id").to_string()
}

/// Acme's channel, with `listed` (user ids) its members and `settings`
/// (how it hands conversations out) written.
async fn handing_out(app: &TestApp, t: &Team, listed: Value, settings: Value) -> String {
    let channel = channels_of(app, &t.admin).await;
    let path = format!("/api/channels/{channel}/members");
    let r = app.call("PUT", &path, Some(&t.admin), Some(json!({"user_ids": listed}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = app
        .call("PATCH", &format!("/api/channels/{channel}"), Some(&t.admin), Some(json!({"settings": settings})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    channel
}

/// Auto-assignment (`settings.auto_assign`): a conversation that opens with
/// no one assigned goes to the least busy of the channel's agents online
/// now, never to one offline or away, nor to someone online who is not on
/// the channel; the live inbox hears it assigned from the start. Off (the
/// default), nobody is assigned.
#[actix_web::test]
async fn new_conversations_go_to_the_least_busy_agent_online() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let channel = channels_of(&app, &t.admin).await;
    let olga_id = olga_id(&app, &t).await;
    let r = app
        .call(
            "PUT",
            &format!("/api/channels/{channel}/members"),
            Some(&t.admin),
            Some(json!({"user_ids": [t.agent_x_id, olga_id]})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let assignee_of = |from: &'static str| {
        let app = &app;
        let admin = t.admin.clone();
        async move {
            app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": format!("hi from {from}")}))
                .await;
            app.processed().await;
            let r = app.call("GET", "/api/conversations?limit=200", Some(&admin), None).await;
            let items = r.body["items"].as_array().expect("items").clone();
            let c = items.iter().find(|c| c["contact"]["external_id"] == from).expect("conversation").clone();
            c["assignee_id"].as_str().map(str::to_string)
        }
    };
    let path = format!("/api/channels/{channel}");
    let settings = |s: Value| app.call("PATCH", &path, Some(&t.admin), Some(json!({"settings": s})));
    let mut x = online_x(&app, &t).await;
    assert_eq!(assignee_of("801").await, None, "off by default");
    // Resolved, so that turning the rule on has nothing waiting to hand
    // out (`turning_auto_assign_on_hands_out_what_already_waits`).
    let open: Vec<Value> = app.call("GET", "/api/conversations", Some(&t.admin), None).await.body["items"]
        .as_array()
        .expect("items")
        .clone();
    assert_eq!(open.len(), 1);
    let first = format!("/api/conversations/{}", open[0]["id"].as_str().expect("id"));
    let r = app.call("PATCH", &first, Some(&t.admin), Some(json!({"status": "resolved"}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);

    let r = settings(json!({"auto_assign": true})).await;
    assert_eq!((r.status, &r.body["settings"]["auto_assign"]), (200, &json!(true)), "{:?}", r.body);
    // The admin is online but not on the channel; Olga is offline: Xavi.
    let (mut admin, _) = newcomer(&app, &t.admin).await;
    assert_eq!(assignee_of("802").await.as_deref(), Some(t.agent_x_id.as_str()));
    let created = until(&mut admin, "conversation.created", Duration::from_secs(3)).await.expect("created");
    assert_eq!(created["data"]["assignee_id"], t.agent_x_id.as_str(), "announced assigned");
    // Olga comes: she has none, Xavi one.
    let mut olga = ws(&app, "", Some(&t.agent_other), None).await.expect("olga");
    next(&mut olga, Duration::from_secs(3)).await.expect("hello");
    shown_as(&mut admin, &olga_id, "online").await;
    assert_eq!(assignee_of("803").await.as_deref(), Some(olga_id.as_str()));
    // One each: the tie goes to the longest-standing member, Xavi.
    assert_eq!(assignee_of("804").await.as_deref(), Some(t.agent_x_id.as_str()));
    // Xavi away: Olga, though she has as many.
    send(&mut x, json!({"type": "presence", "status": "away"})).await;
    shown_as(&mut admin, &t.agent_x_id, "away").await;
    assert_eq!(assignee_of("805").await.as_deref(), Some(olga_id.as_str()));
    // A limit of two each: Olga, with two, is passed over.
    let r = settings(json!({"auto_assign_limit": 0})).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_settings")));
    let r = settings(json!({"auto_assign_limit": 2})).await;
    assert_eq!(r.body["settings"]["auto_assign_limit"], 2, "{:?}", r.body);
    assert_eq!(assignee_of("807").await, None, "Olga is full, Xavi away");
    let r = settings(json!({"auto_assign_limit": null})).await;
    assert!(r.body["settings"]["auto_assign_limit"].is_null(), "{:?}", r.body);
    // Olga has room now: the one that waited is hers at once (the limit's
    // change wakes the queue, `inbox::hand_out`).
    crate::common::eventually("807 is Olga's", || async {
        let items = app.call("GET", "/api/conversations?limit=200", Some(&t.admin), None).await.body["items"].clone();
        let waited = items.as_array().expect("items").iter().find(|c| c["contact"]["external_id"] == "807").cloned();
        waited.expect("807")["assignee_id"] == json!(olga_id)
    })
    .await;
    // Olga gone, Xavi away: nobody.
    drop(olga);
    shown_as(&mut admin, &olga_id, "offline").await;
    assert_eq!(assignee_of("806").await, None);
    // Audited as the server's doing.
    let log = app.call("GET", "/api/audit-log?limit=200", Some(&t.admin), None).await;
    let auto: Vec<&Value> = log.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"] == "conversation.assigned" && e["details"]["by"] == "auto_assign")
        .collect();
    assert_eq!(auto.len(), 5);
    assert!(auto.iter().all(|e| e["actor_user_id"].is_null()));
    // And kept in each one's notifications, by no one: those the
    // webhooks' processing gave (802, 804; 803, 805) and the one the
    // queue gave (807).
    for (token, want) in [(&t.agent_x, 2), (&t.agent_other, 3)] {
        let r = app.call("GET", "/api/notifications", Some(token), None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let items = r.body["items"].as_array().expect("items");
        assert_eq!((items.len(), &r.body["unread_count"]), (want, &json!(want)), "{:?}", r.body);
        assert!(items.iter().all(|n| n["kind"] == "assigned" && n["by"].is_null()), "{items:?}");
    }
}

/// Conversations that opened while nobody could take them wait in the
/// queue (`inbox::hand_out`): agents who come online take them, oldest
/// first, within the channel's limit; what is left goes as room frees; one
/// someone left with no one on purpose stays so.
#[actix_web::test]
async fn the_queue_goes_to_agents_as_they_come_online() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let olga_id = olga_id(&app, &t).await;
    let listed = json!([t.agent_x_id, olga_id]);
    handing_out(&app, &t, listed, json!({"auto_assign": true, "auto_assign_limit": 1})).await;
    // The admin is online but not on the channel's list: nobody to take them.
    let (_admin, _) = newcomer(&app, &t.admin).await;
    let senders = ["931", "932", "933", "934"];
    for from in senders {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": "¿Hay alguien? 🙋"})).await;
    }
    app.processed().await;
    let assignees = || async {
        let r = app.call("GET", "/api/conversations?limit=200", Some(&t.admin), None).await;
        let items = r.body["items"].as_array().expect("items").clone();
        senders
            .iter()
            .map(|from| {
                let c = items.iter().find(|c| c["contact"]["external_id"] == *from).expect("conversation");
                (c["id"].as_str().expect("id").to_string(), c["assignee_id"].clone())
            })
            .collect::<Vec<_>>()
    };
    let now = assignees().await;
    assert!(now.iter().all(|(_, a)| a.is_null()), "{now:?}");
    let conv: Vec<String> = now.into_iter().map(|(id, _)| id).collect();
    // Someone says the last one is for no one: it stays so.
    let no_one = json!({"assignee_id": null});
    let r = app.call("PATCH", &format!("/api/conversations/{}", conv[3]), Some(&t.admin), Some(no_one)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let who = |v: Vec<(String, Value)>| v.into_iter().map(|(_, a)| a).collect::<Vec<_>>();

    // They have waited ten minutes when Xavi comes online: the oldest is
    // his (his limit is one).
    app.exec("UPDATE tenant_acme.conversations SET queued_at = queued_at - interval '10 minutes'");
    let _x = online_x(&app, &t).await;
    let x = json!(t.agent_x_id);
    let want = vec![x.clone(), Value::Null, Value::Null, Value::Null];
    crate::common::eventually("Xavi has the oldest", || async { who(assignees().await) == want }).await;
    // Olga comes online: the next is hers.
    let _olga = ws(&app, "", Some(&t.agent_other), None).await.expect("olga");
    let want = vec![x.clone(), json!(olga_id), Value::Null, Value::Null];
    crate::common::eventually("Olga has the next", || async { who(assignees().await) == want }).await;
    // The worker counts what it gave (other tests' turns count too).
    let metrics = app.client.get(app.url("/metrics")).send().await.expect("request").text().await.expect("text");
    let given = metrics.lines().find_map(|l| l.strip_prefix("switchboard_queue_given_total ")).map(str::parse::<u64>);
    assert!(matches!(given, Some(Ok(n)) if n >= 2), "{given:?}");

    // Xavi resolves his: the room it frees is handed out at once (not at
    // the next 30 s look), the third is his.
    let r = app
        .call(
            "PATCH",
            &format!("/api/conversations/{}", conv[0]),
            Some(&t.agent_x),
            Some(json!({"status": "resolved"})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let want = vec![x.clone(), json!(olga_id), x.clone(), Value::Null];
    crate::common::eventually("Xavi has the third", || async { who(assignees().await) == want }).await;
    // Audited as the server's, three times; nothing is left waiting.
    let auto = app.count(
        "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'conversation.assigned' \
         AND details->>'by' = 'auto_assign' AND actor_user_id IS NULL",
    );
    assert_eq!(auto, 3);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.conversations WHERE queued_at IS NOT NULL"), 0);
    // The report says how long the three had waited.
    let r = app.call("GET", "/api/reports/overview", Some(&t.admin), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let queue = &r.body["queue"];
    let waited = |k: &str| queue[k].as_i64().unwrap_or_else(|| panic!("{k} {queue:?}"));
    assert!(queue["given"] == 3 && (600..700).contains(&waited("median_seconds")), "{queue:?}");
    assert!(waited("p90_seconds") >= waited("median_seconds"), "{queue:?}");
}

/// An agent comes online while another instance has the queue's turn
/// (which may have begun before it heard of them): the turn is tried again
/// soon after, not left to the next 30 s look.
#[actix_web::test]
async fn a_newcomer_gets_the_queue_when_another_instance_held_the_turn() {
    use diesel::connection::SimpleConnection;
    let app = spawn_app().await;
    let t = team(&app).await;
    handing_out(&app, &t, json!([t.agent_x_id]), json!({"auto_assign": true})).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "951", "text": "Olá? 🕰️"})).await;
    app.processed().await;
    let assignee = || async {
        let r = app.call("GET", "/api/conversations?limit=200", Some(&t.admin), None).await;
        let items = r.body["items"].as_array().expect("items").clone();
        let c = items.iter().find(|c| c["contact"]["external_id"] == "951").cloned().expect("conversation");
        assert!(c["queued_at"].is_string() || c["assignee_id"].is_string(), "{c:?}");
        c["assignee_id"].clone()
    };
    assert_eq!(assignee().await, Value::Null);
    // "Another instance" holds acme's turn, as its transaction would.
    let tenant = app.count("SELECT id AS n FROM public.tenants WHERE slug = 'acme'");
    let mut other = app.db.conn();
    other.batch_execute("BEGIN").expect("begin");
    let held = switchboard::db::migrate::try_advisory_lock(&mut other, &format!("hand out {tenant}")).expect("lock");
    assert!(held);
    let _x = online_x(&app, &t).await;
    actix_web::rt::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(assignee().await, Value::Null, "the turn is held");
    other.batch_execute("COMMIT").expect("commit");
    let x = json!(t.agent_x_id);
    crate::common::eventually("Xavi has it soon after", || async { assignee().await == x }).await;
}

/// The queue shows (`inbox::hand_out`): a conversation waiting in it says
/// since when (`queued_at`), the list filters and orders by it, the badges
/// count it; it leaves the queue, announced, when someone says "no one",
/// when it is snoozed, and when its channel's or team's rule is turned off.
#[actix_web::test]
async fn the_queue_shows_in_the_list_and_the_badges_and_leaves_when_nothing_hands_it_out() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let olga_id = olga_id(&app, &t).await;
    let rule = |on: bool| json!({"settings": {"auto_assign": on}});
    let channel = handing_out(&app, &t, json!([t.agent_x_id, olga_id]), json!({"auto_assign": true})).await;
    // The admin watches, online but not on the channel's list: nobody to
    // take them, so all five wait.
    let (mut admin, _) = newcomer(&app, &t.admin).await;
    for from in ["941", "942", "943", "944", "945"] {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": "Hallo, ist da wer? ⏳"})).await;
    }
    app.processed().await;
    let get = |q: String| {
        let (app, admin) = (&app, t.admin.clone());
        async move {
            let r = app.call("GET", &format!("/api/conversations{q}"), Some(&admin), None).await;
            assert_eq!(r.status, 200, "{q} {:?}", r.body);
            r.body
        }
    };
    let ids = |body: &Value| -> Vec<String> {
        body["items"].as_array().expect("items").iter().map(|c| c["id"].as_str().expect("id").to_string()).collect()
    };
    // In the order it hands them out, a page at a time.
    let first = get("?sort=queue&limit=3".into()).await;
    let cursor = first["next_cursor"].as_str().expect("a next page").to_string();
    let rest = get(format!("?sort=queue&limit=3&cursor={cursor}")).await;
    let queue: Vec<Value> =
        [&first, &rest].iter().flat_map(|b| b["items"].as_array().expect("items").clone()).collect();
    let keys: Vec<(String, i64)> = queue
        .iter()
        .map(|c| {
            let at = c["queued_at"].as_str().expect("queued_at").to_string();
            (at, c["id"].as_str().expect("id").parse().expect("id"))
        })
        .collect();
    let mut sorted = keys.clone();
    sorted.sort_by(|a, b| {
        let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).expect("time");
        (at(&a.0), a.1).cmp(&(at(&b.0), b.1))
    });
    assert_eq!((keys.len(), &keys), (5, &sorted), "{queue:?}");
    let queued: Vec<String> = keys.iter().map(|(_, id)| id.to_string()).collect();
    let mut listed = ids(&get("?queued=true".into()).await);
    listed.sort();
    let mut want = queued.clone();
    want.sort();
    assert_eq!(listed, want);
    assert!(ids(&get("?queued=false".into()).await).iter().all(|id| !queued.contains(id)));
    let counts = |q: &'static str| {
        let (app, admin) = (&app, t.admin.clone());
        async move {
            let r = app.call("GET", &format!("/api/conversations/counts{q}"), Some(&admin), None).await;
            assert_eq!(r.status, 200, "{q} {:?}", r.body);
            r.body
        }
    };
    assert_eq!(counts("").await["queued"], 5);
    assert_eq!(counts("?queued=false").await["queued"], 0);
    // The report's picture of the inbox now counts it, and says since when
    // the longest has waited.
    let r = app.call("GET", "/api/reports/overview", Some(&t.admin), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!((&r.body["now"]["queued"], &r.body["now"]["oldest_queued_at"]), (&json!(5), &json!(keys[0].0)));
    // A saved view of the queue lists it as the query does.
    let view = json!({"name": "Queue", "filters": {"queued": "true", "sort": "queue"}});
    let r = app.call("POST", "/api/views", Some(&t.admin), Some(view)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let view_id = r.body["id"].as_str().expect("id").to_string();
    assert_eq!(ids(&get(format!("?view={view_id}")).await), queued);
    for bad in ["?queued=maybe", "?sort=queue&q=hallo", "?sort=line"] {
        let r = app.call("GET", &format!("/api/conversations{bad}"), Some(&t.admin), None).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some("invalid_query")), "{bad}");
    }

    // "No one", said of one that already has no one, takes it out: answered
    // and announced so.
    let patch = |id: String, change: Value| {
        let (app, admin) = (&app, t.admin.clone());
        async move {
            let r = app.call("PATCH", &format!("/api/conversations/{id}"), Some(&admin), Some(change)).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            r.body
        }
    };
    let out = patch(queued[4].clone(), json!({"assignee_id": null})).await;
    assert_eq!((&out["assignee_id"], &out["queued_at"]), (&Value::Null, &Value::Null));
    async fn heard(socket: &mut Socket, id: String) -> Value {
        loop {
            let frame = until(socket, "conversation.updated", Duration::from_secs(5)).await.expect("an update");
            if frame["data"]["id"] == id.as_str() {
                return frame["data"].clone();
            }
        }
    }
    assert_eq!(heard(&mut admin, queued[4].clone()).await["queued_at"], Value::Null);
    // Snoozed: nothing hands it out while it sleeps.
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let out = patch(queued[3].clone(), json!({"snoozed_until": later})).await;
    assert_eq!((out["status"].as_str(), &out["queued_at"]), (Some("snoozed"), &Value::Null));
    assert_eq!(counts("").await["queued"], 3);

    // The channel's rule turned off: the rest wait no more, each announced.
    let r = app.call("PATCH", &format!("/api/channels/{channel}"), Some(&t.admin), Some(rule(false))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(heard(&mut admin, queued[0].clone()).await["queued_at"], Value::Null);
    assert_eq!(counts("").await["queued"], 0);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.conversations WHERE queued_at IS NOT NULL"), 0);

    // A team that hands out its own, with none of its members online: what
    // it is handed waits, until its rule is turned off.
    let made = app
        .call(
            "POST",
            "/api/teams",
            Some(&t.admin),
            Some(json!({"name": "Warteschlange", "member_ids": [t.agent_x_id], "auto_assign": true})),
        )
        .await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    let team_id = made.body["id"].as_str().expect("id").to_string();
    let out = patch(queued[1].clone(), json!({"team_id": team_id})).await;
    assert!(out["queued_at"].is_string() && out["assignee_id"].is_null(), "{out:?}");
    let r =
        app.call("PATCH", &format!("/api/teams/{team_id}"), Some(&t.admin), Some(json!({"auto_assign": false}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(heard(&mut admin, queued[1].clone()).await["queued_at"], Value::Null);
    assert_eq!(counts("").await["queued"], 0);
}

/// Turning a channel's or a team's `auto_assign` on hands out what already
/// waits with no one on it and no rule covered, oldest first, as one the
/// customer opens would be (given among those online, else queued); what is
/// resolved or held stays, and so does what the other rule covered and
/// someone left with no one.
#[actix_web::test]
async fn turning_auto_assign_on_hands_out_what_already_waits() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let olga_id = olga_id(&app, &t).await;
    let listed = json!([t.agent_x_id, olga_id]);
    let channel = handing_out(&app, &t, listed, json!({"auto_assign": false, "auto_assign_limit": 2})).await;
    let make_team = |name: &'static str, member: String, on: bool| {
        let (app, admin) = (&app, t.admin.clone());
        async move {
            let body = json!({"name": name, "member_ids": [member], "auto_assign": on});
            let r = app.call("POST", "/api/teams", Some(&admin), Some(body)).await;
            assert_eq!(r.status, 201, "{:?}", r.body);
            r.body["id"].as_str().expect("id").to_string()
        }
    };
    let early = make_team("Frühschicht", olga_id.clone(), true).await;
    let mut x = online_x(&app, &t).await;
    for from in ["961", "962", "963", "964", "965", "966", "967"] {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": "Γεια σας, υπάρχει κανείς; 👋"}))
            .await;
    }
    app.processed().await;
    let list = || async {
        let r = app.call("GET", "/api/conversations?limit=200", Some(&t.admin), None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let mut items = r.body["items"].as_array().expect("items").clone();
        items.sort_by_key(|c| c["id"].as_str().expect("id").parse::<i64>().expect("numeric id"));
        items
    };
    let conv: Vec<String> = list().await.iter().map(|c| c["id"].as_str().expect("id").to_string()).collect();
    assert_eq!(conv.len(), 7);
    let patch = |id: String, change: Value| {
        let (app, admin) = (&app, t.admin.clone());
        async move {
            let r = app.call("PATCH", &format!("/api/conversations/{id}"), Some(&admin), Some(change)).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
    };
    // The first is resolved, the second Olga's, the third handed to a team
    // that hands out its own, with no one on it on purpose.
    patch(conv[0].clone(), json!({"status": "resolved"})).await;
    patch(conv[1].clone(), json!({"assignee_id": olga_id})).await;
    patch(conv[2].clone(), json!({"team_id": early, "assignee_id": null})).await;
    let state = || async {
        list()
            .await
            .iter()
            .map(|c| (c["assignee_id"].as_str().unwrap_or("-").to_string(), c["queued_at"].is_string()))
            .collect::<Vec<_>>()
    };
    let (xavi, olga, none) = (t.agent_x_id.clone(), olga_id.clone(), "-".to_string());
    let mut before: Vec<(String, bool)> = vec![(none.clone(), false); 7];
    before[1] = (olga.clone(), false);
    assert_eq!(state().await, before);

    // The channel's rule on: Xavi (online; Olga is not) takes the two oldest
    // his limit allows, the other two wait in the queue, each announced.
    let on = json!({"settings": {"auto_assign": true}});
    let path = format!("/api/channels/{channel}");
    let r = app.call("PATCH", &path, Some(&t.admin), Some(on.clone())).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut after = before.clone();
    (after[3], after[4]) = ((xavi.clone(), false), (xavi.clone(), false));
    (after[5], after[6]) = ((none.clone(), true), (none.clone(), true));
    assert_eq!(state().await, after);
    // (The changes above were announced before.)
    let want: std::collections::BTreeMap<String, bool> = (3..7).map(|i| (conv[i].clone(), i >= 5)).collect();
    let mut heard = std::collections::BTreeMap::new();
    while heard.len() < 4 {
        let f = until(&mut x, "conversation.updated", Duration::from_secs(5)).await.expect("an update");
        let id = f["data"]["id"].as_str().expect("id").to_string();
        if want.contains_key(&id) {
            heard.insert(id, f["data"]["queued_at"].is_string());
        }
    }
    assert_eq!(heard, want);
    let given = app.count(
        "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'conversation.assigned' \
         AND details->>'by' = 'auto_assign' AND actor_user_id IS NULL",
    );
    assert_eq!(given, 2);
    // Said again, it changes nothing.
    let r = app.call("PATCH", &path, Some(&t.admin), Some(on)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(state().await, after);

    // Off again, the queue empties; a team that does not hand out its own
    // is given the last two, and Xavi has room for one more.
    let r = app.call("PATCH", &path, Some(&t.admin), Some(json!({"settings": {"auto_assign": false}}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let late = make_team("Spätschicht", xavi.clone(), false).await;
    patch(conv[5].clone(), json!({"team_id": late})).await;
    patch(conv[6].clone(), json!({"team_id": late})).await;
    patch(conv[3].clone(), json!({"status": "resolved"})).await;
    let mut now = after.clone();
    (now[5], now[6]) = ((none.clone(), false), (none.clone(), false));
    assert_eq!(state().await, now);
    // The team's rule on: the older is Xavi's, the younger waits.
    let r = app.call("PATCH", &format!("/api/teams/{late}"), Some(&t.admin), Some(json!({"auto_assign": true}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    (now[5], now[6]) = ((xavi.clone(), false), (none.clone(), true));
    assert_eq!(state().await, now);

    // The report's queue counts only what left it for an agent: the last,
    // waiting an hour, taken by hand; not what the rule turned off let go,
    // nor what was given without waiting.
    app.exec(&format!(
        "UPDATE tenant_acme.conversations SET queued_at = queued_at - interval '1 hour' WHERE id = {}",
        conv[6]
    ));
    patch(conv[6].clone(), json!({"assignee_id": olga_id})).await;
    let r = app.call("GET", "/api/reports/overview", Some(&t.admin), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let queue = &r.body["queue"];
    let waited = queue["median_seconds"].as_i64().expect("a median");
    assert!(queue["given"] == 1 && (3600..3660).contains(&waited) && queue["p90_seconds"] == waited, "{queue:?}");
    // The channel's row and Olga's say the same of that one wait; Xavi's,
    // given his without a wait, count none.
    let row = |table: &str, key: &str, id: &str| {
        let rows = r.body[table].as_array().cloned().unwrap_or_default();
        let row = rows.into_iter().find(|row| row[key] == id).unwrap_or_default();
        (row["queue_given"].clone(), row["median_queue_seconds"].clone())
    };
    assert_eq!(row("channels", "channel_id", &channel), (json!(1), json!(waited)), "{}", r.body);
    assert_eq!(row("agents", "user_id", &olga_id), (json!(1), json!(waited)), "{}", r.body);
    let (xavis, _) = row("agents", "user_id", &t.agent_x_id);
    assert_eq!(xavis.as_i64().unwrap_or(0), 0, "{}", r.body);
    let csv = app.client.get(app.url("/api/reports/agents.csv")).bearer_auth(&t.admin).send().await.expect("csv");
    let csv = csv.text().await.expect("text");
    let olga = csv.lines().find(|l| l.starts_with(&format!("{olga_id},")));
    assert!(olga.is_some_and(|l| l.ends_with(&format!(",1,{waited}"))), "{csv}");
}

/// Room the team frees goes to the queue at once: a contact blocked (which
/// resolves their conversation) lets the one waiting go to the agent whose
/// limit it held, without waiting for the 30 s look.
#[actix_web::test]
async fn a_blocked_contact_makes_room_for_the_queue_at_once() {
    let app = spawn_app().await;
    let t = team(&app).await;
    handing_out(&app, &t, json!([t.agent_x_id]), json!({"auto_assign": true, "auto_assign_limit": 1})).await;
    let _x = online_x(&app, &t).await;
    for from in ["971", "972"] {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": "Merhaba, kimse var mı? 🙂"}))
            .await;
        app.processed().await;
    }
    let of = |from: &'static str| {
        let (app, admin) = (&app, t.admin.clone());
        async move {
            let r = app.call("GET", "/api/conversations?limit=200", Some(&admin), None).await;
            let items = r.body["items"].as_array().expect("items").clone();
            items.into_iter().find(|c| c["contact"]["external_id"] == from).expect("conversation")
        }
    };
    let first = of("971").await;
    assert_eq!(first["assignee_id"], t.agent_x_id.as_str());
    assert!(of("972").await["queued_at"].is_string(), "Xavi is full: it waits");
    let contact = format!("/api/contacts/{}", first["contact"]["id"].as_str().expect("contact"));
    let r = app.call("PATCH", &contact, Some(&t.admin), Some(json!({"blocked": true}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    crate::common::eventually("the waiting one is Xavi's", || async {
        of("972").await["assignee_id"] == t.agent_x_id.as_str()
    })
    .await;
}

/// A conversation handed back by someone who may no longer answer it
/// (`conversations::release`) goes at once to someone else online, where
/// its channel or its team hands conversations out, as a new one would;
/// a snoozed one, or one with nobody to take it, waits in the queue.
#[actix_web::test]
async fn conversations_handed_back_go_to_someone_online_when_the_channel_assigns() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let channel = channels_of(&app, &t.admin).await;
    let olga_id = olga_id(&app, &t).await;
    let list = |ids: Value| {
        let app = &app;
        let (admin, path) = (t.admin.clone(), format!("/api/channels/{channel}/members"));
        async move {
            let r = app.call("PUT", &path, Some(&admin), Some(json!({"user_ids": ids}))).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
    };
    let patch = |path: String, change: Value| {
        let app = &app;
        let admin = t.admin.clone();
        async move {
            let r = app.call("PATCH", &path, Some(&admin), Some(change)).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            r.body
        }
    };
    list(json!([t.agent_x_id, olga_id])).await;
    for from in ["911", "912", "913"] {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": "Bonjour 👋"})).await;
    }
    app.processed().await;
    let items = app.call("GET", "/api/conversations?limit=200", Some(&t.admin), None).await.body["items"].clone();
    let conv: Vec<String> = ["911", "912", "913"]
        .iter()
        .map(|from| {
            let c = items.as_array().expect("items").iter().find(|c| c["contact"]["external_id"] == *from);
            c.expect("conversation")["id"].as_str().expect("id").to_string()
        })
        .collect();
    let at = |c: &str| format!("/api/conversations/{c}");
    for c in &conv {
        patch(at(c), json!({"assignee_id": olga_id})).await;
    }
    let later = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    patch(at(&conv[2]), json!({"status": "snoozed", "snoozed_until": later})).await;
    let assignee = |c: &str| {
        let app = &app;
        let (admin, path) = (t.admin.clone(), at(c));
        async move { app.call("GET", &path, Some(&admin), None).await.body["assignee_id"].clone() }
    };
    let auto = |team: Option<&str>| {
        let filter = match team {
            Some(team) => format!("details->>'team_id' = '{team}'"),
            None => "details->>'team_id' IS NULL".to_string(),
        };
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'conversation.assigned' \
             AND details->>'by' = 'auto_assign' AND actor_user_id IS NULL AND {filter}"
        ))
    };

    // The channel hands conversations out; Olga leaves its list with Xavi
    // and her online: Xavi takes her two open ones, the snoozed one waits.
    let r = patch(format!("/api/channels/{channel}"), json!({"settings": {"auto_assign": true}})).await;
    assert_eq!(r["settings"]["auto_assign"], true);
    let (mut admin, _) = newcomer(&app, &t.admin).await;
    let _x = online_x(&app, &t).await;
    let _olga = ws(&app, "", Some(&t.agent_other), None).await.expect("olga");
    shown_as(&mut admin, &olga_id, "online").await;
    list(json!([t.agent_x_id])).await;
    assert_eq!(assignee(&conv[0]).await, json!(t.agent_x_id));
    assert_eq!(assignee(&conv[1]).await, json!(t.agent_x_id));
    assert_eq!(assignee(&conv[2]).await, Value::Null, "a snoozed one waits");
    // Each announced once, as it ends up.
    let mut told = std::collections::HashMap::new();
    while let Some(f) = until(&mut admin, "conversation.updated", Duration::from_millis(1500)).await {
        assert!(told
            .insert(f["data"]["id"].as_str().expect("id").to_string(), f["data"]["assignee_id"].clone())
            .is_none());
    }
    let expected: std::collections::HashMap<String, Value> = [
        (conv[0].clone(), json!(t.agent_x_id)),
        (conv[1].clone(), json!(t.agent_x_id)),
        (conv[2].clone(), Value::Null),
    ]
    .into();
    assert_eq!(told, expected);
    // Audited as handed back, then as the server's pick.
    let released = "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'conversation.assigned' \
                    AND details->>'to' IS NULL AND details->>'by' = 'channel_left'";
    assert_eq!((app.count(released), auto(None)), (3, 2));
    // The snoozed one wakes with no one on it: handed out as one the
    // customer reopens would be.
    let mut conn = app.db.conn();
    diesel::sql_query(format!(
        "UPDATE tenant_acme.conversations SET snoozed_until = now() - interval '1 second' WHERE id = {}",
        conv[2]
    ))
    .execute(&mut conn)
    .expect("time passes");
    let tenant = switchboard::ids::TenantId(app.count("SELECT id AS n FROM public.tenants WHERE slug = 'acme'"));
    let online = app.state.online.of(tenant);
    let wake = move |tc: &mut switchboard::db::TenantConn<'_>, log: &mut switchboard::inbox::events::EventLog| {
        switchboard::inbox::conversations::wake_snoozed(tc, log, &online)
    };
    let woken = app.state.tenant_with_events(switchboard::db::TenantScope::system(tenant), wake).await;
    assert_eq!(woken.expect("woken"), 1);
    assert_eq!(assignee(&conv[2]).await, json!(t.agent_x_id));
    assert_eq!(auto(None), 3);

    // A team that hands out its own: Xavi leaves the tenant; the one of
    // Olga's team goes to her, the other (no team; the channel no longer
    // hands out) waits.
    patch(format!("/api/channels/{channel}"), json!({"settings": {"auto_assign": false}})).await;
    list(json!([t.agent_x_id, olga_id])).await;
    let billing = json!({"name": "Billing", "auto_assign": true, "member_ids": [olga_id]});
    let made = app.call("POST", "/api/teams", Some(&t.admin), Some(billing)).await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    let team_id = made.body["id"].as_str().expect("id").to_string();
    let handed = patch(at(&conv[0]), json!({"team_id": team_id})).await;
    assert_eq!(handed["assignee_id"], json!(t.agent_x_id), "an assigned one keeps its assignee");
    let r = app.call("DELETE", &format!("/api/members/{}", t.agent_x_id), Some(&t.admin), None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(assignee(&conv[0]).await, json!(olga_id));
    assert_eq!(assignee(&conv[1]).await, Value::Null);
    assert_eq!(auto(Some(&team_id)), 1);
}

/// A role change reaches the member's open sockets at once: an admin made
/// an agent stops hearing the channels an agent is not listed on. Their
/// access tokens name the old role and are refused from then on, so their
/// sockets close as a login's whose token went stale (4401: refresh, then
/// reconnect), not as a removal (4403); the new token's socket sees what
/// the new role sees. Another member's socket is not touched.
#[actix_web::test]
async fn a_role_change_closes_the_members_sockets_with_4401() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let dora = app
        .call(
            "POST",
            "/api/members",
            Some(&t.admin),
            Some(json!({"email": "dora@acme.test", "role": "admin", "password": "dora-password-1"})),
        )
        .await;
    let dora_id = dora.body["user_id"].as_str().expect("id").to_string();
    let login = app.login("dora@acme.test", "dora-password-1", "acme").await;
    let access = token(&login, "access_token");
    let mut dora = ws(&app, "", Some(&access), None).await.expect("dora");
    // Her API token acts with the role she has at each use (an extension).
    let api = app.call("POST", "/api/me/tokens", Some(&access), Some(json!({"name": "CRM"}))).await;
    let api = api.body["token"].as_str().expect("token").to_string();
    let mut by_api = ws(&app, "", Some(&api), None).await.expect("by her API token");
    let mut x = ws(&app, "", Some(&t.agent_x), None).await.expect("xavi");
    for s in [&mut dora, &mut by_api, &mut x] {
        next(s, Duration::from_secs(3)).await.expect("hello");
    }
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "931", "text": "while an admin"})).await;
    assert!(until(&mut dora, "message.created", Duration::from_secs(5)).await.is_some(), "an admin sees all");
    assert!(until(&mut x, "message.created", Duration::from_secs(5)).await.is_some(), "xavi is on page A");
    let r = app.call("PATCH", &format!("/api/members/{dora_id}"), Some(&t.admin), Some(json!({"role": "agent"}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "931", "text": "after the change"})).await;
    for s in [&mut dora, &mut by_api] {
        let closed = until(s, "closed", Duration::from_secs(5)).await;
        let said = closed.as_ref().map(|c| (c["code"].clone(), c["reason"].clone()));
        assert_eq!(said, Some((json!(4401), json!("your role changed"))), "{closed:?}");
    }
    // Refreshed, the login carries the new role: page A is not hers now.
    let r = app.call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": token(&login, "refresh_token")})));
    let r = r.await;
    assert_eq!((r.status, r.body["role"].as_str()), (200, Some("agent")), "{:?}", r.body);
    let mut again = ws(&app, "", Some(&token(&r.body, "access_token")), None).await.expect("reconnected");
    let mut by_api = ws(&app, "", Some(&api), None).await.expect("the API token reconnects, as an agent's");
    for s in [&mut again, &mut by_api] {
        next(s, Duration::from_secs(3)).await.expect("hello");
    }
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "931", "text": "as an agent"})).await;
    let m = until(&mut x, "message.created", Duration::from_secs(5)).await.expect("xavi, on page A, hears it");
    assert_eq!(m["data"]["text"], "after the change");
    let m = until(&mut x, "message.created", Duration::from_secs(5)).await.expect("and the next");
    assert_eq!(m["data"]["text"], "as an agent");
    for s in [&mut again, &mut by_api] {
        let heard = until(s, "message.created", Duration::from_millis(800)).await;
        assert!(heard.is_none(), "an agent off page A hears nothing of it: {heard:?}");
    }
    // An operator's `user create` that changes her role does the same.
    let mut cli =
        app.db.command(&["user", "create", "--email", "dora@acme.test", "--tenant", "acme", "--role", "admin"]);
    let cli = cli.output().expect("run switchboard");
    assert!(cli.status.success(), "{cli:?}");
    let closed = until(&mut again, "closed", Duration::from_secs(5)).await;
    assert_eq!(closed.as_ref().map(|c| c["code"].clone()), Some(json!(4401)), "{closed:?}");
    send(&mut x, json!({"type": "ping"})).await;
    assert!(until(&mut x, "pong", Duration::from_secs(3)).await.is_some(), "xavi's socket was never touched");
}

/// A socket whose own read (a typing message's, its channels reloaded)
/// finds the member's role changed, or the member gone, before the hub said
/// so (here: changed in the database alone) is closed as the hub would
/// close it: 4401 for a role (refresh, reconnect), 4403 for a removal, not
/// the one code for both, nor an error frame as if the conversation were
/// not there.
#[actix_web::test]
async fn a_socket_whose_own_read_finds_the_role_changed_or_the_member_gone() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let channel = channels_of(&app, &t.admin).await;
    let olga = app.login("olga@acme.test", "olga-password-1", "acme").await;
    let olga_id = olga["user"]["id"].as_str().expect("id").to_string();
    // Olga on page A's list too: a change of it is one of hers.
    list_on(&app, &t.admin, &channel, &[&t.agent_x_id, &olga_id]).await;
    let mut x = ws(&app, "", Some(&t.agent_x), None).await.expect("xavi");
    let mut o = ws(&app, "", Some(&token(&olga, "access_token")), None).await.expect("olga");
    for s in [&mut x, &mut o] {
        next(s, Duration::from_secs(3)).await.expect("hello");
    }
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "941", "text": "hello"})).await;
    let m = until(&mut x, "message.created", Duration::from_secs(5)).await.expect("xavi is on page A");
    let conversation = m["data"]["conversation_id"].as_str().expect("conversation").to_string();
    let changed = app.exec(&format!("UPDATE public.memberships SET role = 'viewer' WHERE user_id = {}", t.agent_x_id));
    let gone = app.exec(&format!("DELETE FROM public.memberships WHERE user_id = {olga_id}"));
    assert_eq!((changed, gone), (1, 1));
    // Xavi types: the session reads the conversation, and the guard refuses.
    send(&mut x, json!({"type": "typing", "conversation_id": conversation, "on": true})).await;
    let closed = until(&mut x, "closed", Duration::from_secs(5)).await.expect("closed");
    assert_eq!(closed["code"], 4401, "{closed}");
    // Channels change: Olga's session reads hers again, and the guard refuses.
    list_on(&app, &t.admin, &channel, &[]).await;
    let closed = until(&mut o, "closed", Duration::from_secs(5)).await.expect("closed");
    assert_eq!(closed["code"], 4403, "{closed}");
}

/// A tenant dropped by an operator closes its open sockets, as a suspended
/// one's (4403), rather than leave them open with nothing to hear; another
/// tenant's socket stays.
#[actix_web::test]
async fn a_dropped_tenants_sockets_close_with_4403() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let mut acme = ws(&app, "", Some(&t.admin), None).await.expect("acme");
    let mut beta = ws(&app, "", Some(&t.beta_admin), None).await.expect("beta");
    for s in [&mut acme, &mut beta] {
        next(s, Duration::from_secs(3)).await.expect("hello");
    }
    let mut conn = app.db.conn();
    switchboard::tenancy::drop_tenant(&mut conn, "beta").expect("drop");
    let closed = until(&mut beta, "closed", Duration::from_secs(5)).await.expect("closed");
    assert_eq!(closed["code"], 4403, "{closed}");
    send(&mut acme, json!({"type": "ping"})).await;
    assert!(until(&mut acme, "pong", Duration::from_secs(3)).await.is_some(), "acme's socket stays");
}

/// The race a tenant's drop can meet: the socket's first read of the log
/// (the replay) fails because the tenant's tables went under it, before the
/// drop's own close reaches the hub. Forced here: the log held locked while
/// the replay waits on it, the tenant deleted without the drop's notice, the
/// log then gone. The socket closes as the drop does (4403), not as a
/// failure to read (1011).
#[actix_web::test]
async fn a_replay_failing_as_its_tenant_goes_closes_with_4403() {
    use diesel::connection::SimpleConnection;
    let app = spawn_app().await;
    let t = team(&app).await;
    let mut lock = app.db.conn();
    lock.batch_execute("BEGIN; LOCK TABLE tenant_beta.events IN ACCESS EXCLUSIVE MODE").expect("lock");
    let mut beta = ws(&app, "", Some(&t.beta_admin), None).await.expect("beta");
    next(&mut beta, Duration::from_secs(3)).await.expect("hello");
    crate::common::eventually("the replay waits on the log", || async {
        // The replay's first read of the log: the oldest event's seq (a
        // worker's read of it may wait too).
        app.count(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
               AND wait_event_type = 'Lock' AND query LIKE '%min(%events%'",
        ) >= 1
    })
    .await;
    app.exec("DELETE FROM public.tenants WHERE slug = 'beta'");
    lock.batch_execute("ALTER TABLE tenant_beta.events RENAME TO events_gone; COMMIT").expect("gone");
    let closed = until(&mut beta, "closed", Duration::from_secs(5)).await.expect("closed");
    assert_eq!(closed["code"], 4403, "{closed}");
}

/// A typing message whose read fails for the database's sake (here the
/// conversations table is renamed away for a moment) is answered with an
/// `unavailable` error frame, not `not_found` as if the conversation were
/// not there, and the socket stays open: once the table is back, the same
/// message reaches the colleague.
#[actix_web::test]
async fn a_typing_message_whose_read_fails_is_told_to_try_again() {
    let app = spawn_app().await;
    let t = team(&app).await;
    let mut x = ws(&app, "", Some(&t.agent_x), None).await.expect("xavi");
    let mut admin = ws(&app, "", Some(&t.admin), None).await.expect("admin");
    for s in [&mut x, &mut admin] {
        next(s, Duration::from_secs(3)).await.expect("hello");
    }
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "951", "text": "hello"})).await;
    let m = until(&mut x, "message.created", Duration::from_secs(5)).await.expect("xavi is on page A");
    let conversation = m["data"]["conversation_id"].as_str().expect("conversation").to_string();
    let typing = json!({"type": "typing", "conversation_id": conversation, "on": true});
    app.exec("ALTER TABLE tenant_acme.conversations RENAME TO conversations_away");
    send(&mut x, typing.clone()).await;
    let told = until(&mut x, "error", Duration::from_secs(5)).await;
    app.exec("ALTER TABLE tenant_acme.conversations_away RENAME TO conversations");
    let told = told.expect("an error frame");
    assert_eq!(told["data"]["code"], "unavailable", "{told}");
    send(&mut x, typing).await;
    let heard = until(&mut admin, "typing", Duration::from_secs(5)).await.expect("the colleague hears it");
    assert_eq!(
        (heard["data"]["conversation_id"].as_str(), heard["data"]["on"].as_bool()),
        (Some(&*conversation), Some(true))
    );
}
