//! Teams (`inbox::teams`): admins keep named groups of members; anyone who
//! answers hands a conversation to one; the inbox filters by them.

use serde_json::{json, Value};
use std::time::Duration;

use crate::channels::PAGE_A;
use crate::common::{spawn_app, TestApp};
use crate::inbox::{acme, agent_al, by_contact, channel_id, conversations, reply, send_file, PHONE};
use crate::realtime::{until, ws};

fn code(r: &crate::common::Resp) -> (u16, &str) {
    (r.status, r.body["error"]["code"].as_str().unwrap_or(""))
}

fn ids(items: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = items.iter().map(|c| c["id"].as_str().expect("id").to_string()).collect();
    ids.sort();
    ids
}

async fn patch(app: &TestApp, t: &str, conversation: &str, body: Value) -> crate::common::Resp {
    app.call("PATCH", &format!("/api/conversations/{conversation}"), Some(t), Some(body)).await
}

/// Acme with agent Al listed on page A: the admin's token, Al's id and
/// token, and the page's id.
pub(crate) async fn al_on_page_a(app: &TestApp) -> (String, String, String, String) {
    al_listed_on(app, PAGE_A).await
}

/// Acme with agent Al alone on the list of the channel whose external id
/// is `external`: (the admin's token, Al's id, Al's token, the channel's id).
pub(crate) async fn al_listed_on(app: &TestApp, external: &str) -> (String, String, String, String) {
    let ctx = acme(app).await;
    let (al_member, al) = agent_al(app, &ctx.admin).await;
    let al_id = al_member["user_id"].as_str().expect("id").to_string();
    let channel = channel_id(app, &ctx.admin, external).await;
    let listed = json!({"user_ids": [al_id]});
    let r = app.call("PUT", &format!("/api/channels/{channel}/members"), Some(&ctx.admin), Some(listed)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    (ctx.admin, al_id, al, channel)
}

/// Each of `senders` writes `text` to page A: their conversations' ids, in
/// that order.
async fn write_to_page_a<const N: usize>(app: &TestApp, admin: &str, senders: [&str; N], text: &str) -> [String; N] {
    for from in senders {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": text})).await;
    }
    app.processed().await;
    let convs = conversations(app, admin, "").await;
    senders.map(|from| by_contact(&convs, from)["id"].as_str().expect("id").to_string())
}

#[actix_web::test]
async fn a_team_takes_conversations_and_its_members_find_them() {
    let app = spawn_app().await;
    let (admin, al_id, al, page) = al_on_page_a(&app).await;
    let admin = admin.as_str();
    let senders = ["7392015648160001", "7392015648160002"];
    let [first, second] = write_to_page_a(&app, admin, senders, "my invoice is wrong").await;
    let one = app.call("GET", &format!("/api/conversations/{first}"), Some(admin), None).await;
    assert_eq!(one.body["team_id"], Value::Null);

    // Admins keep teams; a create said twice makes one.
    let billing = json!({"name": "Billing", "description": "Invoices and refunds", "member_ids": [al_id, al_id]});
    assert_eq!(code(&app.call("POST", "/api/teams", Some(&al), Some(billing.clone())).await), (403, "forbidden"));
    let made = app.call("POST", "/api/teams", Some(admin), Some(billing.clone())).await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    assert_eq!(made.body["member_ids"], json!([al_id]));
    let team = made.body["id"].as_str().expect("id").to_string();
    let again = app.call("POST", "/api/teams", Some(admin), Some(billing)).await;
    assert_eq!((again.status, &again.body["id"]), (200, &json!(team)));
    for (body, want) in [
        (json!({"name": " BILLING ", "description": "other"}), (409, "team_name_taken")),
        (json!({"name": "  "}), (422, "invalid_name")),
        (json!({"name": "x".repeat(101)}), (422, "invalid_name")),
        (json!({"name": "Night", "member_ids": ["999999"]}), (422, "unknown_user")),
        (json!({"name": "Night", "description": "d".repeat(1001)}), (422, "invalid_description")),
    ] {
        assert_eq!(code(&app.call("POST", "/api/teams", Some(admin), Some(body.clone())).await), want, "{body}");
    }
    let listed = app.call("GET", "/api/teams", Some(&al), None).await;
    assert_eq!(listed.body["items"].as_array().map(Vec::len), Some(1), "{:?}", listed.body);
    assert_eq!(listed.body["items"][0]["name"], "Billing");
    assert_eq!(app.call("GET", "/api/teams/999999", Some(&al), None).await.status, 404);
    assert_eq!(app.call("GET", "/api/teams/nope", Some(&al), None).await.status, 404);

    // Al (an agent of the channel) hands a conversation to the team; his
    // socket hears it.
    let mut socket = ws(&app, "", Some(&al), None).await.expect("socket");
    let r = patch(&app, &al, &first, json!({"team_id": team})).await;
    assert_eq!((r.status, &r.body["team_id"]), (200, &json!(team)), "{:?}", r.body);
    // (A profile look-up may announce a conversation first.)
    let frame = loop {
        let f = until(&mut socket, "conversation.updated", Duration::from_secs(5)).await.expect("frame");
        if f["data"]["id"] == json!(first) && !f["data"]["team_id"].is_null() {
            break f;
        }
    };
    assert_eq!(frame["data"]["team_id"], json!(team));
    assert_eq!(code(&patch(&app, &al, &second, json!({"team_id": "999999"})).await), (422, "invalid_team"));
    assert_eq!(code(&patch(&app, &al, &second, json!({"team_id": "abc"})).await), (422, "invalid_team"));
    assert_eq!(code(&patch(&app, &al, &second, json!({"team_id": true})).await), (422, "invalid_body"));

    // The inbox by team: mine, none, one.
    assert_eq!(ids(&conversations(&app, &al, "?team=mine").await), [first.as_str()]);
    assert_eq!(ids(&conversations(&app, &al, "?team=none").await), [second.as_str()]);
    assert_eq!(ids(&conversations(&app, admin, &format!("?team={team}")).await), [first.as_str()]);
    assert_eq!(conversations(&app, admin, "?team=mine").await.len(), 0, "the owner is in no team");
    let r = app.call("GET", "/api/conversations?team=billing", Some(admin), None).await;
    assert_eq!(code(&r), (400, "invalid_query"));
    // A saved view keeps `team=mine` for whoever uses it.
    let view = json!({"name": "Our team", "visibility": "team", "filters": {"team": "mine"}});
    let r = app.call("POST", "/api/views", Some(admin), Some(view)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let view_id = r.body["id"].as_str().expect("id").to_string();
    assert_eq!(ids(&conversations(&app, &al, &format!("?view={view_id}")).await), [first.as_str()]);

    // In bulk, and by a macro.
    let r = app
        .call("POST", "/api/conversations/bulk", Some(&al), Some(json!({"ids": [first, second], "team_id": team})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(conversations(&app, &al, "?team=mine").await.len(), 2);
    let unteam = json!({"name": "Back to everyone", "actions": [{"type": "assign_team", "team_id": null}]});
    let r = app.call("POST", "/api/macros", Some(admin), Some(unteam)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let run = format!("/api/conversations/{second}/macros/{}", r.body["id"].as_str().expect("id"));
    let r = app.call("POST", &run, Some(&al), None).await;
    assert_eq!((r.status, &r.body["conversation"]["team_id"]), (200, &Value::Null), "{:?}", r.body);

    // A channel's team: a conversation that opens there goes to it, and
    // auto-assign picks among its members: Al, though Ann is listed on the
    // channel too, online, and ahead of him on a tie.
    let ann_id = app.call("GET", "/api/me", Some(admin), None).await.body["user"]["id"].clone();
    let listed = json!({"user_ids": [al_id, ann_id]});
    let r = app.call("PUT", &format!("/api/channels/{page}/members"), Some(admin), Some(listed)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let settings = |team: Value| json!({"settings": {"team_id": team, "auto_assign": true}});
    let channel = format!("/api/channels/{page}");
    let r = app.call("PATCH", &channel, Some(admin), Some(settings(json!("999999")))).await;
    assert_eq!(code(&r), (422, "invalid_team"));
    let r = app.call("PATCH", &channel, Some(admin), Some(settings(json!(team)))).await;
    assert_eq!((r.status, &r.body["settings"]["team_id"]), (200, &json!(team)), "{:?}", r.body);
    let _ann_online = ws(&app, "", Some(admin), None).await.expect("socket");
    // Once her colleagues are told she is online, so is the server.
    loop {
        let f = until(&mut socket, "presence", Duration::from_secs(5)).await.expect("presence");
        if f["data"]["user_id"] == ann_id && f["data"]["status"] == "online" {
            break;
        }
    }
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "7392015648160003", "text": "refund?"})).await;
    app.processed().await;
    let third = by_contact(&conversations(&app, admin, "").await, "7392015648160003").clone();
    assert_eq!((&third["team_id"], &third["assignee_id"]), (&json!(team), &json!(al_id)), "{third}");

    // Renamed; members changed: Al's "mine" empties.
    let r = app.call("PATCH", &format!("/api/teams/{team}"), Some(admin), Some(json!({"name": "Payments"}))).await;
    assert_eq!(
        (r.status, &r.body["name"], &r.body["description"]),
        (200, &json!("Payments"), &json!("Invoices and refunds"))
    );
    // Every member's socket hears of teams.
    let frame = until(&mut socket, "team.updated", Duration::from_secs(5)).await.expect("team frame");
    assert_eq!((&frame["data"]["id"], &frame["data"]["name"]), (&json!(team), &json!("Payments")));
    assert!(frame["seq"].is_i64(), "logged, so replayed: {frame}");
    let r = app.call("PUT", &format!("/api/teams/{team}/members"), Some(admin), Some(json!({"user_ids": []}))).await;
    assert_eq!((r.status, &r.body["member_ids"]), (200, &json!([])), "{:?}", r.body);
    assert_eq!(conversations(&app, &al, "?team=mine").await.len(), 0);

    // Deleted: its conversation has no team, and the socket hears so.
    assert_eq!(app.call("DELETE", &format!("/api/teams/{team}"), Some(&al), None).await.status, 403);
    assert_eq!(app.call("DELETE", &format!("/api/teams/{team}"), Some(admin), None).await.status, 204);
    assert_eq!(app.call("DELETE", &format!("/api/teams/{team}"), Some(admin), None).await.status, 404);
    let frame = loop {
        let f = until(&mut socket, "conversation.updated", Duration::from_secs(5)).await.expect("frame");
        if f["data"]["id"] == json!(first) && f["data"]["team_id"].is_null() {
            break f;
        }
    };
    assert_eq!(frame["data"]["status"], "open");
    let freed = until(&mut socket, "channel.updated", Duration::from_secs(5)).await.expect("channel frame");
    assert_eq!((&freed["data"]["id"], &freed["data"]["settings"]["team_id"]), (&json!(page), &Value::Null));
    let gone = until(&mut socket, "team.deleted", Duration::from_secs(5)).await.expect("deleted frame");
    assert_eq!(gone["data"], json!({"id": team}));
    let one = app.call("GET", &format!("/api/conversations/{first}"), Some(admin), None).await;
    assert_eq!(one.body["team_id"], Value::Null);
    // The channel hands its conversations to no team now.
    let r = app.call("GET", &channel, Some(admin), None).await;
    assert_eq!((&r.body["settings"]["team_id"], &r.body["settings"]["auto_assign"]), (&Value::Null, &json!(true)));

    // A member who leaves the tenant leaves its teams.
    let night =
        app.call("POST", "/api/teams", Some(admin), Some(json!({"name": "Night", "member_ids": [al_id]}))).await;
    let night_id = night.body["id"].as_str().expect("id").to_string();
    let mut watching = ws(&app, "", Some(admin), None).await.expect("socket");
    assert_eq!(app.call("DELETE", &format!("/api/members/{al_id}"), Some(admin), None).await.status, 204);
    let frame = until(&mut watching, "team.updated", Duration::from_secs(5)).await.expect("team frame");
    assert_eq!((&frame["data"]["id"], &frame["data"]["member_ids"]), (&json!(night_id), &json!([])));
    let night = app.call("GET", &format!("/api/teams/{night_id}"), Some(admin), None).await;
    assert_eq!(night.body["member_ids"], json!([]));

    let log = app.call("GET", "/api/audit-log?limit=200", Some(admin), None).await.body;
    let actions: Vec<&str> =
        log["items"].as_array().expect("items").iter().filter_map(|e| e["action"].as_str()).collect();
    for action in ["team.created", "team.updated", "team.members_changed", "team.deleted", "conversation.team_changed"]
    {
        assert!(actions.contains(&action), "{action} not audited: {actions:?}");
    }
}

/// A report of one team: the figures of the conversations in it, whoever
/// worked them; the team must be one of the tenant's. Of one label too. Notifications name
/// the team; a conversation an agent starts on a channel naming a team
/// goes to it.
#[actix_web::test]
async fn a_report_of_one_team_counts_its_conversations() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let admin = ctx.admin.as_str();
    let senders = ["7392015648170001", "7392015648170002", "7392015648170003"];
    let [first, second, third] = write_to_page_a(&app, admin, senders, "¿Dónde está mi pedido? 📦").await;
    let made = app.call("POST", "/api/teams", Some(admin), Some(json!({"name": "Envíos"}))).await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    let team = made.body["id"].as_str().expect("id").to_string();
    for c in [&first, &second] {
        assert_eq!(patch(&app, admin, c, json!({"team_id": team})).await.status, 200);
    }
    // The team answers and resolves one; the other conversation outside it
    // is answered too.
    assert_eq!(reply(&app, admin, &first, "Ya salió", "team-rep-1").await.0, 202);
    assert_eq!(reply(&app, admin, &third, "Hola", "team-rep-2").await.0, 202);
    assert_eq!(patch(&app, admin, &first, json!({"status": "resolved"})).await.status, 200);

    let report = |query: String| {
        let (app, t) = (&app, ctx.admin.clone());
        async move { app.call("GET", &format!("/api/reports/overview{query}"), Some(&t), None).await }
    };
    let figures = |o: &Value| {
        [
            o["conversations_opened"].clone(),
            o["messages_received"].clone(),
            o["replies_sent"].clone(),
            o["conversations_resolved"].clone(),
            o["first_response"]["answered"].clone(),
            o["first_response"]["unanswered"].clone(),
            o["now"]["open"].clone(),
        ]
    };
    let all = report(String::new()).await;
    assert_eq!(all.status, 200, "{:?}", all.body);
    assert_eq!(figures(&all.body), [3, 3, 2, 1, 2, 1, 2].map(|n| json!(n)), "{:?}", all.body);
    let one = report(format!("?team_id={team}")).await;
    assert_eq!(one.status, 200, "{:?}", one.body);
    assert_eq!(figures(&one.body), [2, 2, 1, 1, 1, 1, 1].map(|n| json!(n)), "{:?}", one.body);
    let agents = one.body["agents"].as_array().expect("agents");
    assert_eq!(agents.len(), 1, "{agents:?}");
    assert_eq!((&agents[0]["replies"], &agents[0]["resolved"]), (&json!(1), &json!(1)));
    // With its channel too; as CSV.
    let page = channel_id(&app, admin, PAGE_A).await;
    let both = report(format!("?team_id={team}&channel_id={page}")).await;
    assert_eq!(figures(&both.body), figures(&one.body));
    let csv = app.client.get(app.url(&format!("/api/reports/channels.csv?team_id={team}"))).bearer_auth(admin);
    let text = csv.send().await.expect("csv").text().await.expect("text");
    assert!(text.lines().nth(1).is_some_and(|row| row.ends_with(",2,0,2,1,0,0,")), "{text}");
    // One label, as stored whatever its case; with the team, both.
    for c in [&first, &third] {
        assert_eq!(patch(&app, admin, c, json!({"add_labels": ["Urgente"]})).await.status, 200);
    }
    let labelled = report("?label=%20URGENTE".into()).await;
    assert_eq!(labelled.status, 200, "{:?}", labelled.body);
    assert_eq!(figures(&labelled.body), [2, 2, 2, 1, 2, 0, 1].map(|n| json!(n)), "{:?}", labelled.body);
    let both = report(format!("?label=urgente&team_id={team}")).await;
    assert_eq!(figures(&both.body), [1, 1, 1, 1, 1, 0, 0].map(|n| json!(n)), "{:?}", both.body);
    for query in ["?label=", "?label=a,b"] {
        assert_eq!(code(&report(query.into()).await), (400, "invalid_label"), "{query}");
    }
    // A team nobody is in holds nothing; what is not a team is refused.
    let empty = app.call("POST", "/api/teams", Some(admin), Some(json!({"name": "Nadie"}))).await;
    let empty = empty.body["id"].as_str().expect("id").to_string();
    let none = report(format!("?team_id={empty}")).await;
    assert_eq!(figures(&none.body), [0, 0, 0, 0, 0, 0, 0].map(|n| json!(n)), "{:?}", none.body);
    for query in ["?team_id=abc", "?team_id=0", "?team_id=999999"] {
        assert_eq!(code(&report(query.into()).await), (400, "invalid_team"), "{query}");
    }

    // Notifications name the conversation's team, so a client can show a
    // team's members theirs.
    let told = |conv: &str, team: &str| {
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'notification' \
              AND conversation_id = {conv} AND payload->>'team_id' {team}"
        ))
    };
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": senders[1], "text": "¿Y ahora?"})).await;
    app.processed().await;
    assert_eq!(told(&second, &format!("= '{team}'")), 1, "the message after the handover names the team");
    assert!(told(&second, "IS NULL") >= 1, "the first came before it");
    // A WhatsApp number naming a team gives it the conversations an agent
    // starts there too.
    let phone = channel_id(&app, admin, PHONE).await;
    let r = app
        .call("PATCH", &format!("/api/channels/{phone}"), Some(admin), Some(json!({"settings": {"team_id": team}})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let start = json!({"channel_id": phone, "phone_number": "+34 612 345 678",
        "template": {"name": "hello_world", "language": "en_US"}, "client_id": "team-start"});
    let r = app.call("POST", "/api/conversations", Some(admin), Some(start)).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let started = &r.body["conversation"];
    assert_eq!(started["team_id"], json!(team), "{started}");
}

/// A team that hands out its conversations: one handed to it with no one
/// on it goes to the least busy of its members online (none online: it
/// waits); a change naming no one keeps no one; the customer reopening one
/// of the team's gets a member too; off again, it picks no one.
#[actix_web::test]
async fn a_team_that_hands_out_its_conversations_picks_a_member_online() {
    let app = spawn_app().await;
    let (admin, al_id, al, _) = al_on_page_a(&app).await;
    let admin = admin.as_str();
    let senders = ["7392015648180001", "7392015648180002", "7392015648180003", "7392015648180004"];
    let [first, second, third, fourth] = write_to_page_a(&app, admin, senders, "Olá 👋").await;

    let team = json!({"name": "Suporte", "member_ids": [al_id], "auto_assign": true});
    let made = app.call("POST", "/api/teams", Some(admin), Some(team)).await;
    assert_eq!((made.status, &made.body["auto_assign"]), (201, &json!(true)), "{:?}", made.body);
    let team = made.body["id"].as_str().expect("id").to_string();
    let r = app.call("PATCH", &format!("/api/teams/{team}"), Some(admin), Some(json!({"auto_assign": "yes"}))).await;
    assert_eq!(code(&r), (422, "invalid_body"));

    // Nobody of the team online: it waits for one.
    let r = patch(&app, admin, &first, json!({"team_id": team})).await;
    assert_eq!((r.status, &r.body["assignee_id"]), (200, &Value::Null), "{:?}", r.body);

    // Al comes online (the server knows once his colleagues are told).
    let mut watching = ws(&app, "", Some(admin), None).await.expect("socket");
    let _al_online = ws(&app, "", Some(&al), None).await.expect("socket");
    loop {
        let f = until(&mut watching, "presence", Duration::from_secs(5)).await.expect("presence");
        if f["data"]["user_id"] == json!(al_id) && f["data"]["status"] == "online" {
            break;
        }
    }
    // The one that waited for him is his (`inbox::hand_out`).
    let first_of = || async {
        app.call("GET", &format!("/api/conversations/{first}"), Some(admin), None).await.body["assignee_id"].clone()
    };
    crate::common::eventually("the queue handed out", || async { first_of().await == json!(al_id) }).await;
    let r = patch(&app, admin, &second, json!({"team_id": team})).await;
    assert_eq!((r.status, &r.body["team_id"], &r.body["assignee_id"]), (200, &json!(team), &json!(al_id)));
    // Named no one with the team: no one.
    let r = patch(&app, admin, &third, json!({"team_id": team, "assignee_id": null})).await;
    assert_eq!((r.status, &r.body["assignee_id"]), (200, &Value::Null), "{:?}", r.body);
    // In bulk: each gets one.
    let r =
        app.call("POST", "/api/conversations/bulk", Some(admin), Some(json!({"ids": [fourth], "team_id": team}))).await;
    assert_eq!((r.status, &r.body["items"][0]["assignee_id"]), (200, &json!(al_id)), "{:?}", r.body);

    // The customer reopens one of the team's with no one on it: Al.
    assert_eq!(patch(&app, admin, &first, json!({"status": "resolved", "assignee_id": null})).await.status, 200);
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": senders[0], "text": "Ainda preciso de ajuda"}))
        .await;
    app.processed().await;
    let one = app.call("GET", &format!("/api/conversations/{first}"), Some(admin), None).await;
    assert_eq!((&one.body["status"], &one.body["assignee_id"]), (&json!("open"), &json!(al_id)), "{:?}", one.body);

    let picked = app.count(
        "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'conversation.assigned' \
          AND actor_user_id IS NULL AND details->>'by' = 'auto_assign'",
    );
    assert_eq!(picked, 4, "the queue on his arrival, the PATCH, the bulk change and the reopening");

    // Off: a conversation handed over stays with no one.
    let r = app.call("PATCH", &format!("/api/teams/{team}"), Some(admin), Some(json!({"auto_assign": false}))).await;
    assert_eq!((r.status, &r.body["auto_assign"], &r.body["name"]), (200, &json!(false), &json!("Suporte")));
    let r = patch(&app, admin, &third, json!({"team_id": null})).await;
    assert_eq!(r.status, 200);
    let r = patch(&app, admin, &third, json!({"team_id": team})).await;
    assert_eq!((r.status, &r.body["assignee_id"]), (200, &Value::Null), "{:?}", r.body);
}

/// A note calls in a whole team: each member who may see the conversation
/// is mentioned (told, and finds it), one who may not is passed over; a
/// team that is none is refused and nothing written; not on a reply; a
/// note with a file names teams in its own part; an edit names them anew.
#[actix_web::test]
async fn a_note_calls_in_a_team() {
    let app = spawn_app().await;
    let (admin, al_id, al, _) = al_on_page_a(&app).await;
    let admin = admin.as_str();
    let bo = json!({"email": "bo@acme.test", "role": "agent", "password": "bo-password-1"});
    let bo = app.call("POST", "/api/members", Some(admin), Some(bo)).await;
    assert_eq!(bo.status, 201, "{:?}", bo.body);
    let bo_id = bo.body["user_id"].as_str().expect("id").to_string();
    let [conv] = write_to_page_a(&app, admin, ["7392015648190001"], "Reembolso?").await;
    let made = app
        .call("POST", "/api/teams", Some(admin), Some(json!({"name": "Finanças", "member_ids": [al_id, bo_id]})))
        .await;
    let team = made.body["id"].as_str().expect("id").to_string();
    let path = format!("/api/conversations/{conv}/messages");
    let written =
        || app.count(&format!("SELECT count(*) AS n FROM tenant_acme.messages WHERE conversation_id = {conv}"));
    let before = written();
    for bad in [json!(["abc"]), json!(["999999"]), json!((1..=11).map(|i| i.to_string()).collect::<Vec<_>>())] {
        let body = json!({"text": "@Finanças", "private": true, "mention_teams": bad});
        let r = app.call("POST", &path, Some(admin), Some(body)).await;
        assert_eq!(code(&r), (422, "invalid_mentions"), "{bad}");
    }
    let r = app.call("POST", &path, Some(admin), Some(json!({"text": "olá", "mention_teams": [team]}))).await;
    assert_eq!(code(&r), (422, "invalid_body"), "not on a reply");
    assert_eq!(written(), before, "nothing was written");

    let mut socket = ws(&app, "", Some(&al), None).await.expect("socket");
    let body = json!({"text": "@Finanças podem ver?", "private": true, "mention_teams": [team], "client_id": "tm-1"});
    let r = app.call("POST", &path, Some(admin), Some(body)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let note = r.body["id"].as_str().expect("id").to_string();
    let told = until(&mut socket, "notification", Duration::from_secs(10)).await.expect("told");
    assert_eq!((&told["data"]["kind"], &told["data"]["user_id"]), (&json!("mention"), &json!(al_id)));
    let mentioned = |user: &str| {
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'notification' \
              AND payload->>'kind' = 'mention' AND payload->>'user_id' = '{user}'"
        ))
    };
    assert_eq!((mentioned(&al_id), mentioned(&bo_id)), (1, 0), "Bo cannot see the channel: passed over");
    let mine = app.call("GET", "/api/mentions", Some(&al), None).await;
    assert_eq!(mine.body["items"][0]["message_id"], json!(note), "{:?}", mine.body);

    // With a file, in its own part; an edit names whom it names now.
    let file = Some(("recibo.pdf", "application/pdf", b"%PDF-1.4 recibo".as_slice()));
    let parts = [("private", "true"), ("text", "@Finanças o recibo"), ("mention_teams", team.as_str())];
    let r = send_file(&app, admin, &conv, file, &parts).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(mentioned(&al_id), 2);
    let edit = format!("/api/messages/{note}");
    let r = app.call("PATCH", &edit, Some(admin), Some(json!({"text": "@Finanças?", "mentions": []}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let texts = |body: &Value| -> Vec<String> {
        body["items"].as_array().expect("items").iter().filter_map(|m| m["text"].as_str().map(str::to_string)).collect()
    };
    assert_eq!(texts(&app.call("GET", "/api/mentions", Some(&al), None).await.body), ["@Finanças o recibo"]);
    let r = app.call("PATCH", &edit, Some(admin), Some(json!({"text": "@Finanças!", "mention_teams": [team]}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(texts(&app.call("GET", "/api/mentions", Some(&al), None).await.body).len(), 2);
    assert_eq!(mentioned(&al_id), 3, "named anew, told again");
}

/// A channel's routing rules sort a conversation as it opens by what the
/// customer wrote (case and accents aside): team, labels, priority; the
/// first rule that matches; later messages do not route again; wrong rules
/// are refused; a deleted team leaves the rules that name it.
#[actix_web::test]
async fn a_channels_rules_route_a_conversation_by_what_the_customer_wrote() {
    let app = spawn_app().await;
    let (admin, _, _, page) = al_on_page_a(&app).await;
    let admin = admin.as_str();
    let made = app.call("POST", "/api/teams", Some(admin), Some(json!({"name": "Reembolsos"}))).await;
    let team = made.body["id"].as_str().expect("id").to_string();
    let made = app.call("POST", "/api/teams", Some(admin), Some(json!({"name": "Geral"}))).await;
    let general = made.body["id"].as_str().expect("id").to_string();
    let channel = format!("/api/channels/{page}");
    // The channel's own team takes what no rule gave one; a high priority
    // is due an answer in 30 minutes, none in no time set.
    let r = app
        .call(
            "PATCH",
            &channel,
            Some(admin),
            Some(json!({"settings": {"team_id": general, "reply_targets": {"high": 30}}})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let routing = |rules: Value| json!({"settings": {"routing": rules}});
    let rules = json!([
        {"contains": [" reembolso ", "refund"], "team_id": team, "labels": ["Refund "], "priority": "high"},
        {"contains": ["fatura"], "labels": ["billing"]},
        {"contains": ["urgente"], "team_id": team},
    ]);
    let r = app.call("PATCH", &channel, Some(admin), Some(routing(rules))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body["settings"]["routing"][0],
        json!({"contains": ["reembolso", "refund"], "team_id": team, "labels": ["refund"], "priority": "high"})
    );
    let one = |rule: Value| json!([rule]);
    for (rules, want) in [
        (json!((0..21).map(|_| json!({"contains": ["x"], "labels": ["x"]})).collect::<Vec<_>>()), "invalid_settings"),
        (one(json!({"contains": ["x"]})), "invalid_settings"),
        (one(json!({"contains": [], "labels": ["x"]})), "invalid_settings"),
        (one(json!({"contains": ["  "], "labels": ["x"]})), "invalid_settings"),
        (one(json!({"contains": ["x".repeat(101)], "labels": ["x"]})), "invalid_settings"),
        (one(json!({"contains": ["x"], "team_id": "999999"})), "invalid_team"),
        (one(json!({"contains": ["x"], "labels": ["a,b"]})), "invalid_label"),
        (one(json!({"contains": ["x"], "priority": "asap"})), "invalid_priority"),
        (one(json!({"contains": ["x"], "labels": ["x"], "assign": "me"})), "invalid_body"),
    ] {
        let r = app.call("PATCH", &channel, Some(admin), Some(routing(rules.clone()))).await;
        assert_eq!(code(&r), (422, want), "{rules}");
    }
    let kept = app.call("GET", &channel, Some(admin), None).await;
    assert_eq!(kept.body["settings"]["routing"].as_array().map(Vec::len), Some(3), "nothing half written");

    let senders = ["7392015648200001", "7392015648200002", "7392015648200003"];
    let texts = ["Quero um REEMBOLSO da minha fatura", "Minha FATÚRA veio errada", "Olá, bom dia"];
    for (from, text) in senders.iter().zip(texts) {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": text})).await;
    }
    app.processed().await;
    let convs = conversations(&app, admin, "").await;
    let shown = |from: &str| {
        let c = by_contact(&convs, from);
        (c["team_id"].clone(), c["labels"].clone(), c["priority"].clone())
    };
    assert_eq!(shown(senders[0]), (json!(team), json!(["refund"]), json!("high")), "the first rule that matches");
    assert_eq!(shown(senders[1]), (json!(general), json!(["billing"]), Value::Null), "accents aside");
    assert_eq!(shown(senders[2]), (json!(general), json!([]), Value::Null), "no rule");
    // The wait's due time follows the priority routing gave.
    let routed = by_contact(&convs, senders[0]);
    let time = |v: &Value| chrono::DateTime::parse_from_rfc3339(v.as_str().expect("a time")).expect("rfc 3339");
    assert_eq!(
        time(&routed["reply_due_at"]) - time(&routed["waiting_since"]),
        chrono::Duration::minutes(30),
        "{routed}"
    );
    assert_eq!(by_contact(&convs, senders[1])["reply_due_at"], Value::Null);
    // A later message of the open conversation does not route again.
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": senders[2], "text": "É urgente!"})).await;
    app.processed().await;
    let third = by_contact(&conversations(&app, admin, "").await, senders[2]).clone();
    assert_eq!(third["team_id"], json!(general), "{third}");
    let routed = |keyword: &str| {
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'conversation.routed' \
              AND details->>'keyword' = '{keyword}'"
        ))
    };
    assert_eq!((routed("reembolso"), routed("fatura")), (1, 1), "audited with the keyword found, accents aside");
    let all = app.count("SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'conversation.routed'");
    assert_eq!(all, 2);

    // The team deleted: off the rules; the one left with nothing to do goes.
    assert_eq!(app.call("DELETE", &format!("/api/teams/{team}"), Some(admin), None).await.status, 204);
    let after = app.call("GET", &channel, Some(admin), None).await.body["settings"]["routing"].clone();
    assert_eq!(
        after,
        json!([
            {"contains": ["reembolso", "refund"], "team_id": null, "labels": ["refund"], "priority": "high"},
            {"contains": ["fatura"], "team_id": null, "labels": ["billing"], "priority": null},
        ])
    );
}

/// Routing by who the customer is: a rule's `contact_attribute` (a VIP
/// list imported before they wrote), alone or with keywords, a photo
/// routed by it; checked against the definitions when saved.
#[actix_web::test]
async fn a_channels_rules_route_a_customer_by_their_attributes() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let admin = ctx.admin.as_str();
    let whatsapp = channel_id(&app, admin, PHONE).await;
    for d in [
        json!({"key": "vip", "name": "VIP", "type": "boolean"}),
        json!({"key": "plan", "name": "Plan", "type": "list", "options": ["free", "enterprise"]}),
    ] {
        assert_eq!(app.call("POST", "/api/contact-attributes", Some(admin), Some(d)).await.status, 201);
    }
    let made = app.call("POST", "/api/teams", Some(admin), Some(json!({"name": "VIP desk"}))).await;
    let team = made.body["id"].as_str().expect("id").to_string();
    let channel = format!("/api/channels/{whatsapp}");
    let routing = |rules: Value| json!({"settings": {"routing": rules}});
    let rules = json!([
        {"contains": ["cancel"], "contact_attribute": " plan:enterprise", "labels": ["churn-risk"]},
        {"contact_attribute": "vip:TRUE", "team_id": team, "labels": ["vip"], "priority": "urgent"},
        {"contains": ["cancel"], "labels": ["cancel"]},
        {"contains": ["refund"], "labels": ["refund"], "on": "every_message"},
        {"contains": ["hours", "horário"], "reply": "  We open 9–18, Monday to Friday.  ", "on": "every_message"},
    ]);
    let r = app.call("PATCH", &channel, Some(admin), Some(routing(rules))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let kept = &r.body["settings"]["routing"];
    assert_eq!(
        (&kept[0]["contact_attribute"], &kept[1]["contact_attribute"]),
        (&json!("plan:enterprise"), &json!("vip:true"))
    );
    assert_eq!((&kept[1]["contains"], kept[2].get("contact_attribute")), (&json!([]), None), "{kept}");
    assert_eq!((kept[2].get("on"), &kept[3]["on"]), (None, &json!("every_message")), "{kept}");
    assert_eq!((kept[3].get("reply"), &kept[4]["reply"]), (None, &json!("We open 9–18, Monday to Friday.")));
    let one = |rule: Value| json!([rule]);
    for rules in [
        one(json!({"contact_attribute": "colour", "labels": ["x"]})),
        one(json!({"contact_attribute": "vip:maybe", "labels": ["x"]})),
        one(json!({"contact_attribute": "plan:gold", "labels": ["x"]})),
        one(json!({"labels": ["x"]})),
        one(json!({"contact_attribute": "vip"})),
        one(json!({"contains": ["x"], "reply": "  "})),
        one(json!({"contains": ["x"], "reply": "x".repeat(1001)})),
    ] {
        let r = app.call("PATCH", &channel, Some(admin), Some(routing(rules.clone()))).await;
        assert_eq!(code(&r), (422, "invalid_settings"), "{rules}");
    }
    let sometimes = one(json!({"contains": ["x"], "labels": ["x"], "on": "sometimes"}));
    assert_eq!(code(&app.call("PATCH", &channel, Some(admin), Some(routing(sometimes))).await), (422, "invalid_body"));

    // Who is who, known before they write.
    let list = "phone,attributes.vip,attributes.plan\n+351 912 000 001,true,\n+351 912 000 002,,enterprise\n\
                +351 912 000 003,true,enterprise\n+351 912 000 004,false,free\n";
    let r = crate::contact_import::import(&app, admin, &format!("?channel_id={whatsapp}"), list).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let writes = [
        ("351912000001", json!({"text": "bom dia"})),
        ("351912000002", json!({"text": "I want to CANCEL"})),
        ("351912000003", json!({"image": {"mime_type": "image/jpeg", "data": "a photo"}})),
        ("351912000004", json!({"text": "cancel please"})),
        ("351912000005", json!({"text": "olá"})),
    ];
    for (from, what) in &writes {
        let mut body = json!({"to": PHONE, "from": from});
        body.as_object_mut().expect("object").extend(what.as_object().expect("object").clone());
        app.fake("POST", "/_fake/inbound", body).await;
    }
    app.processed().await;
    let convs = conversations(&app, admin, "").await;
    let shown = |from: &str| {
        let c = by_contact(&convs, from);
        (c["team_id"].clone(), c["labels"].clone(), c["priority"].clone())
    };
    assert_eq!(shown("351912000001"), (json!(team), json!(["vip"]), json!("urgent")), "a VIP");
    assert_eq!(shown("351912000002"), (Value::Null, json!(["churn-risk"]), Value::Null), "both hold: the first rule");
    assert_eq!(shown("351912000003"), (json!(team), json!(["vip"]), json!("urgent")), "a VIP's photo");
    assert_eq!(shown("351912000004"), (Value::Null, json!(["cancel"]), Value::Null), "not a VIP: the keyword's");
    assert_eq!(shown("351912000005"), (Value::Null, json!([]), Value::Null), "unknown: no rule");
    let audited = app.count(
        "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'conversation.routed' \
          AND details->>'contact_attribute' = 'vip:true' AND details->>'keyword' IS NULL",
    );
    assert_eq!(audited, 2);

    // A rule that looks at every message: a later one that holds labels
    // the open conversation, once.
    for text in ["and about a REFUND", "the refund, again"] {
        app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": "351912000005", "text": text})).await;
        app.processed().await;
    }
    let convs = conversations(&app, admin, "").await;
    let c = by_contact(&convs, "351912000005");
    assert_eq!((&c["status"], &c["labels"], &c["team_id"]), (&json!("open"), &json!(["refund"]), &Value::Null));
    let refunds = app.count(
        "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'conversation.routed' \
          AND details->>'keyword' = 'refund'",
    );
    assert_eq!(refunds, 1, "a rule that changes nothing is passed over");

    // A rule's reply answers each message it holds for, once: Meta's
    // retry of one sends nothing again.
    let asked = json!({"to": PHONE, "from": "351912000004", "text": "What are your HOURS?", "id": "wamid.hours-1"});
    for body in [asked.clone(), asked, json!({"to": PHONE, "from": "351912000004", "text": "horario?"})] {
        app.fake("POST", "/_fake/inbound", body).await;
        app.processed().await;
    }
    let fourth = by_contact(&convs, "351912000004")["id"].as_str().expect("id").to_string();
    let answered = || {
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.messages WHERE conversation_id = {fourth} AND direction = 'out' \
              AND text = 'We open 9–18, Monday to Friday.' AND sender_user_id IS NULL"
        ))
    };
    assert_eq!(answered(), 2, "one answer a question, none for the retry");
    crate::common::eventually("the answers sent", || async {
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.messages WHERE conversation_id = {fourth} AND direction = 'out' \
              AND external_id IS NOT NULL"
        )) == 2
    })
    .await;

    // Made a VIP later: the next time they open a conversation.
    let fifth = by_contact(&convs, "351912000005").clone();
    let conv = fifth["id"].as_str().expect("id");
    let r = app
        .call("PATCH", &format!("/api/conversations/{conv}"), Some(admin), Some(json!({"status": "resolved"})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let contact = fifth["contact"]["id"].as_str().expect("id");
    let r = app
        .call("PATCH", &format!("/api/contacts/{contact}"), Some(admin), Some(json!({"attributes": {"vip": true}})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": "351912000005", "text": "again"})).await;
    app.processed().await;
    let convs = conversations(&app, admin, "").await;
    let c = by_contact(&convs, "351912000005");
    assert_eq!((&c["team_id"], &c["labels"]), (&json!(team), &json!(["refund", "vip"])), "{c}");

    // An option taken away takes the rules naming it; a definition
    // deleted, those naming it at all: whole, keywords and all, each
    // channel announced; what is left saves again as it is.
    let announced = || {
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'channel.updated' AND channel_id = {whatsapp}"
        ))
    };
    let before = announced();
    let narrowed = json!({"options": ["free"]});
    assert_eq!(app.call("PATCH", "/api/contact-attributes/plan", Some(admin), Some(narrowed)).await.status, 200);
    assert_eq!(app.call("DELETE", "/api/contact-attributes/vip", Some(admin), None).await.status, 204);
    assert_eq!(announced(), before + 2);
    let left = app.call("GET", &channel, Some(admin), None).await.body["settings"]["routing"].clone();
    let kept: Vec<&Value> = left.as_array().expect("rules").iter().map(|r| &r["contains"][0]).collect();
    assert_eq!(kept, [&json!("cancel"), &json!("refund"), &json!("hours")], "{left}");
    let r = app.call("PATCH", &channel, Some(admin), Some(routing(left.clone()))).await;
    assert_eq!((r.status, &r.body["settings"]["routing"]), (200, &left), "{:?}", r.body);
}

/// A transaction of Acme's that did `work` and stays open, holding what
/// it took, until released (or `most` passed).
struct Held {
    release: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

fn hold<W>(app: &TestApp, most: Duration, work: W) -> Held
where
    W: FnOnce(&mut switchboard::db::TenantConn<'_>) -> switchboard::AppResult<()> + Send + 'static,
{
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let pool = app.pool.clone();
    let thread = std::thread::spawn(move || {
        let mut pooled = pool.get().expect("conn");
        let tenant = switchboard::tenancy::find_by_slug(&mut pooled, "acme").expect("q").expect("acme").tenant_id();
        switchboard::db::with_tenant(&mut pooled, &switchboard::db::TenantScope::system(tenant), |tc| {
            work(tc)?;
            held_tx.send(()).expect("told");
            let _ = release_rx.recv_timeout(most);
            Ok::<_, switchboard::AppError>(())
        })
        .expect("the held transaction");
    });
    held_rx.recv().expect("held");
    Held { release, thread }
}

impl Held {
    /// Released once a statement of the test's database waits for an
    /// advisory lock (a settings lock): whether one did within 10 s.
    fn release_when_waited_for(self, url: String) -> std::thread::JoinHandle<bool> {
        std::thread::spawn(move || {
            use diesel::{Connection, RunQueryDsl};
            #[derive(diesel::QueryableByName)]
            struct Waiting {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                n: i64,
            }
            let mut watcher = diesel::PgConnection::establish(&url).expect("connect");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let waited = loop {
                let w: Waiting = diesel::sql_query(
                    "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() \
                       AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
                )
                .get_result(&mut watcher)
                .expect("q");
                if w.n > 0 || std::time::Instant::now() > deadline {
                    break w.n > 0;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            self.release();
            waited
        })
    }

    fn release(self) {
        let _ = self.release.send(());
        self.thread.join().expect("the held transaction's thread");
    }
}

#[actix_web::test]
async fn taking_rules_off_the_channels_waits_for_a_change_of_their_settings_under_way() {
    // A change of a channel's settings holds them (and its share of every
    // channel's) before the teams and definitions its rules name; a
    // deletion that takes rules away holds every channel's before its
    // team or definition, so it never deadlocks with a change nor has one
    // read the rules before it and write them back after it. A webhook
    // batch acting on the settings does not hold the deletion up.
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let admin = ctx.admin.as_str();
    let whatsapp = channel_id(&app, admin, PHONE).await;
    let made = app.call("POST", "/api/teams", Some(admin), Some(json!({"name": "Billing"}))).await;
    let team = made.body["id"].as_str().expect("id").to_string();
    let d = json!({"key": "plan", "name": "Plan", "type": "list", "options": ["free", "enterprise"]});
    assert_eq!(app.call("POST", "/api/contact-attributes", Some(admin), Some(d)).await.status, 201);
    let rules = json!({"settings": {"team_id": team, "routing": [
        {"contains": ["invoice"], "team_id": team},
        {"contact_attribute": "plan:enterprise", "labels": ["enterprise"]},
        {"contact_attribute": "plan", "labels": ["planned"]},
        {"contains": ["hello"], "labels": ["greeting"]},
    ]}});
    let channel = format!("/api/channels/{whatsapp}");
    let r = app.call("PATCH", &channel, Some(admin), Some(rules)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let id = switchboard::channels::ChannelId(whatsapp.parse().expect("a decimal id"));
    let labels = |settings: &Value| -> Vec<Value> {
        settings["routing"].as_array().expect("rules").iter().map(|r| r["labels"].clone()).collect()
    };

    // A rename of the channel under way: the deletion waits for it, then
    // takes the rules the rename wrote back.
    let renaming = hold(&app, Duration::from_secs(15), move |tc| {
        let rename = serde_json::from_value(json!({"name": "Renamed"})).expect("a patch");
        switchboard::channels::patch(tc, switchboard::ids::UserId(1), id, rename, &[]).map(|_| ())
    });
    let waited = renaming.release_when_waited_for(app.db.url.clone());
    let r = app.call("DELETE", &format!("/api/teams/{team}"), Some(admin), None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert!(waited.join().expect("the watcher"), "the deletion did not wait for the change");
    let left = app.call("GET", &channel, Some(admin), None).await.body;
    assert_eq!((&left["name"], &left["settings"]["team_id"]), (&json!("Renamed"), &Value::Null), "{left}");
    assert_eq!(labels(&left["settings"]), [json!(["enterprise"]), json!(["planned"]), json!(["greeting"])]);

    // A webhook batch acting on the settings: the deletion goes on.
    let batch = hold(&app, Duration::from_secs(15), move |tc| switchboard::channels::read_settings(tc, &[id.0]));
    let started = std::time::Instant::now();
    let narrowed = json!({"options": ["free"]});
    let r = app.call("PATCH", "/api/contact-attributes/plan", Some(admin), Some(narrowed)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(started.elapsed() < Duration::from_secs(10), "the deletion waited for the batch");
    batch.release();
    let left = app.call("GET", &channel, Some(admin), None).await.body;
    assert_eq!(labels(&left["settings"]), [json!(["planned"]), json!(["greeting"])], "{left}");

    let renaming = hold(&app, Duration::from_secs(15), move |tc| {
        let rename = serde_json::from_value(json!({"name": "Renamed again"})).expect("a patch");
        switchboard::channels::patch(tc, switchboard::ids::UserId(1), id, rename, &[]).map(|_| ())
    });
    let waited = renaming.release_when_waited_for(app.db.url.clone());
    assert_eq!(app.call("DELETE", "/api/contact-attributes/plan", Some(admin), None).await.status, 204);
    assert!(waited.join().expect("the watcher"), "the deletion did not wait for the change");
    let left = app.call("GET", &channel, Some(admin), None).await.body;
    assert_eq!(labels(&left["settings"]), [json!(["greeting"])], "{left}");
}

/// Acme (Al on page A) with team Billing, `auto_assign` off, and the
/// conversation of `sender`, who wrote to page A, handed to it (no one on
/// it, not queued): the admin's token, the conversation's and team's ids.
async fn billing_with_one_conversation(app: &TestApp, sender: &str) -> (String, String, String) {
    let (admin, _al_id, _al, _page) = al_on_page_a(app).await;
    let [conv] = write_to_page_a(app, &admin, [sender], "Rechnung?").await;
    let made = app.call("POST", "/api/teams", Some(&admin), Some(json!({"name": "Billing"}))).await;
    let team = made.body["id"].as_str().expect("id").to_string();
    let r = patch(app, &admin, &conv, json!({"team_id": team})).await;
    assert_eq!((r.status, r.body["queued_at"].as_str()), (200, None), "{:?}", r.body);
    (admin, conv, team)
}

/// A team's `auto_assign` turned on while a webhook batch holds one of its
/// conversations: the change waits for the batch, and the batch, writing
/// the conversation again (which has PostgreSQL check its team's key), is
/// not held up by the change's lock on the team. Under `FOR UPDATE` the
/// two waited on each other until PostgreSQL ended one (503 `retry`).
#[actix_web::test]
async fn a_teams_change_and_a_batch_writing_its_conversation_do_not_deadlock() {
    use crate::common::transaction_held_until_waited;
    let app = spawn_app().await;
    let (admin, conv, team) = billing_with_one_conversation(&app, "6620000000000001").await;

    // The batch's writes, as `ingest` makes them: the second checks the
    // team's key, the row being the transaction's own by then.
    let write = format!("UPDATE tenant_acme.conversations SET updated_at = now() WHERE id = {conv}");
    let (begun, held) = transaction_held_until_waited(&app.db.url, format!("BEGIN; {write}"), Some(write));
    begun.recv().expect("begun");
    let r = app.call("PATCH", &format!("/api/teams/{team}"), Some(&admin), Some(json!({"auto_assign": true}))).await;
    let (waited, went) = held.join().expect("the batch's thread");
    assert_eq!(went, Ok(()), "the batch went through");
    assert!(waited, "the change waited for the batch");
    assert_eq!((r.status, &r.body["auto_assign"]), (200, &json!(true)), "{:?}", r.body);
    // Nobody online: it waits in the queue for someone.
    let shown = app.call("GET", &format!("/api/conversations/{conv}"), Some(&admin), None).await;
    assert!(shown.body["queued_at"].is_string(), "{:?}", shown.body);
}

/// A team's `auto_assign` turned on or off takes the team's conversations
/// before the team, in id order, as a change handing a conversation to a
/// team takes the conversation and then the team. It took the team first
/// and then, handing out, waited for a conversation such a change held
/// while that change waited for the team: a deadlock (503 to the team's
/// change; seen in a chaos run).
#[actix_web::test]
async fn a_teams_auto_assign_and_a_hand_over_to_it_at_once_take_turns() {
    use crate::common::transaction_held_until_waited;
    let app = spawn_app().await;
    let (admin, conv, team) = billing_with_one_conversation(&app, "6620000000000002").await;
    for on in [true, false] {
        // A change of the conversation (handing it to the team again) under
        // way: the conversation, then the team.
        let begin = format!("BEGIN; SELECT id FROM tenant_acme.conversations WHERE id = {conv} FOR NO KEY UPDATE");
        let then = format!("SELECT id FROM tenant_acme.teams WHERE id = {team} FOR NO KEY UPDATE");
        let (begun, held) = transaction_held_until_waited(&app.db.url, begin, Some(then));
        begun.recv().expect("begun");
        let r = app.call("PATCH", &format!("/api/teams/{team}"), Some(&admin), Some(json!({"auto_assign": on}))).await;
        let (waited, went) = held.join().expect("the change's thread");
        assert_eq!(went, Ok(()), "the conversation's change went through");
        assert!(waited, "the team's change waited for it");
        assert_eq!((r.status, &r.body["auto_assign"]), (200, &json!(on)), "{:?}", r.body);
    }
}

/// Begins a transaction on `conn` holding acme's conversation `id` as a
/// change of it does; the connection's backend pid.
fn holding_conversation(conn: &mut diesel::PgConnection, id: &str) -> Result<i64, String> {
    crate::common::holding(
        conn,
        &format!("SELECT id AS n FROM tenant_acme.conversations WHERE id = {id} FOR NO KEY UPDATE"),
    )
}

/// A team's `auto_assign` given as it was read, but turned meanwhile by
/// another change (committed while this one waited for the team): this
/// change then turns it back, handing out the team's conversations. It
/// took them before the team only when its first, unlocked read said it
/// would turn it, so here it took them after, holding the team, and
/// deadlocked with a change holding one of them and waiting for the team
/// (503 to the team's change; seen in a chaos run). Now it takes them
/// whenever `auto_assign` is given.
#[actix_web::test]
async fn a_teams_auto_assign_turned_by_another_change_meanwhile_takes_its_conversations_first() {
    use crate::common::{a_wait_on, bigint, transaction_held_until_waited};
    use diesel::{Connection, RunQueryDsl};
    let app = spawn_app().await;
    let (admin, conv, team) = billing_with_one_conversation(&app, "6620000000000003").await;
    let on = app.call("PATCH", &format!("/api/teams/{team}"), Some(&admin), Some(json!({"auto_assign": true}))).await;
    assert_eq!(on.status, 200, "{:?}", on.body);
    // Nobody online took it: let it wait unqueued, for the team's hand-out.
    app.exec(&format!("UPDATE tenant_acme.conversations SET queued_at = NULL, assignee_id = NULL WHERE id = {conv}"));

    // A change of the conversation under way: the conversation, then (once
    // someone waits for it) the team.
    let (url, held_conv, then_team) = (app.db.url.clone(), conv.clone(), team.clone());
    let (begun_tx, begun) = std::sync::mpsc::channel();
    let changing = std::thread::spawn(move || -> Result<(), String> {
        let mut holder = diesel::PgConnection::establish(&url).expect("connect");
        let mut watcher = diesel::PgConnection::establish(&url).expect("connect");
        let me = holding_conversation(&mut holder, &held_conv)?;
        begun_tx.send(()).expect("told");
        a_wait_on(&mut watcher, me, Duration::from_secs(5));
        bigint(
            &mut holder,
            &format!("SELECT id AS n FROM tenant_acme.teams WHERE id = {then_team} FOR NO KEY UPDATE"),
        )?;
        diesel::sql_query("COMMIT").execute(&mut holder).map_err(|e| e.to_string())?;
        Ok(())
    });
    begun.recv().expect("begun");
    // Another change turning it off, holding the team until someone waits.
    let off = format!("BEGIN; UPDATE tenant_acme.teams SET auto_assign = false WHERE id = {team}");
    let (begun, turned) = transaction_held_until_waited(&app.db.url, off, None);
    begun.recv().expect("begun");

    let r = app.call("PATCH", &format!("/api/teams/{team}"), Some(&admin), Some(json!({"auto_assign": true}))).await;
    let (_, turned) = turned.join().expect("the other change's thread");
    assert_eq!(turned, Ok(()), "turned off");
    assert_eq!(changing.join().expect("the conversation's change"), Ok(()), "the conversation's change went");
    assert_eq!((r.status, &r.body["auto_assign"]), (200, &json!(true)), "{:?}", r.body);
    let queued =
        format!("SELECT count(*) AS n FROM tenant_acme.conversations WHERE id = {conv} AND queued_at IS NOT NULL");
    assert_eq!(app.count(&queued), 1, "handed out again: with no one online, it waits in the queue");
}

/// A conversation handed to a team after the team's change took the
/// team's conversations (as it waited for the team), and held now by a
/// change that will wait for the team: turning `auto_assign` on waited
/// for it while holding the team, which deadlocked (503 to one of the
/// two); then it passed over it, which left it with no one. Now the turn
/// lets go of what it took, takes them all again, that one in its turn,
/// and hands it out with the rest.
#[actix_web::test]
async fn a_teams_auto_assign_takes_a_conversation_handed_to_it_meanwhile_and_held_in_its_turn() {
    use crate::common::{a_wait_on, bigint, holding};
    use diesel::{Connection, RunQueryDsl};
    let app = spawn_app().await;
    let (admin, _first, team) = billing_with_one_conversation(&app, "6620000000000004").await;
    let [late] = write_to_page_a(&app, &admin, ["6620000000000005"], "Und meine Rechnung?").await;

    let (url, team_id, late_id) = (app.db.url.clone(), team.clone(), late.clone());
    let (begun_tx, begun) = std::sync::mpsc::channel();
    let others = std::thread::spawn(move || -> Result<(), String> {
        let connect = || diesel::PgConnection::establish(&url).expect("connect");
        let (mut holder, mut joiner, mut changer, mut watcher) = (connect(), connect(), connect(), connect());
        // Something holds the team: the change takes the team's
        // conversations, then waits for it.
        let holder_pid = holding(
            &mut holder,
            &format!("SELECT id AS n FROM tenant_acme.teams WHERE id = {team_id} FOR NO KEY UPDATE"),
        )?;
        begun_tx.send(()).expect("told");
        assert!(a_wait_on(&mut watcher, holder_pid, Duration::from_secs(5)), "the team's change waits for the team");
        // Meanwhile a conversation is handed to the team, and then held by
        // a change that will want the team.
        let join = format!("UPDATE tenant_acme.conversations SET team_id = {team_id} WHERE id = {late_id}");
        diesel::sql_query(join).execute(&mut joiner).map_err(|e| e.to_string())?;
        let changer_pid = holding_conversation(&mut changer, &late_id)?;
        diesel::sql_query("COMMIT").execute(&mut holder).map_err(|e| e.to_string())?;
        // The team's change, having let go of the team, waits for it (or,
        // as before, passes over it and commits).
        let committed = format!("SELECT auto_assign::int::bigint AS n FROM tenant_acme.teams WHERE id = {team_id}");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !a_wait_on(&mut watcher, changer_pid, Duration::from_millis(20))
            && bigint(&mut watcher, &committed)? == 0
            && std::time::Instant::now() < deadline
        {}
        bigint(&mut changer, &format!("SELECT id AS n FROM tenant_acme.teams WHERE id = {team_id} FOR NO KEY UPDATE"))?;
        diesel::sql_query("COMMIT").execute(&mut changer).map_err(|e| e.to_string())?;
        Ok(())
    });
    begun.recv().expect("begun");
    let r = app.call("PATCH", &format!("/api/teams/{team}"), Some(&admin), Some(json!({"auto_assign": true}))).await;
    assert_eq!(others.join().expect("the others' thread"), Ok(()), "the conversation's change went");
    assert_eq!((r.status, &r.body["auto_assign"]), (200, &json!(true)), "{:?}", r.body);
    // Handed out with the rest: with no one online, it waits in the queue.
    let queued =
        format!("SELECT count(*) AS n FROM tenant_acme.conversations WHERE id = {late} AND queued_at IS NOT NULL");
    assert_eq!(app.count(&queued), 1, "handed out, not passed over");
}

/// A conversation handed to a team by a change that read the team's rule
/// as it was (off), as the rule is turned on: the turn waits for that
/// change (its check of the team's key) and hands the conversation out
/// with the rest. It went past the turn's lock on the team, which only
/// held other changes of the team off, and was left with no one and out
/// of the queue until someone took it.
#[actix_web::test]
async fn a_teams_auto_assign_turned_on_as_a_conversation_is_handed_to_it_hands_that_one_out_too() {
    use crate::common::transaction_held_until_waited;
    let app = spawn_app().await;
    let (admin, _first, team) = billing_with_one_conversation(&app, "6620000000000011").await;
    let [late] = write_to_page_a(&app, &admin, ["6620000000000012"], "Rechnung, bitte 🧾").await;

    // The change has read the rule (off: nobody to pick, no queue) and
    // hands the conversation to the team.
    let hand_over = format!("BEGIN; UPDATE tenant_acme.conversations SET team_id = {team} WHERE id = {late}");
    let (begun, handing) = transaction_held_until_waited(&app.db.url, hand_over, None);
    begun.recv().expect("begun");
    let r = app.call("PATCH", &format!("/api/teams/{team}"), Some(&admin), Some(json!({"auto_assign": true}))).await;
    let (waited, went) = handing.join().expect("the hand-over's thread");
    assert_eq!(went, Ok(()), "the hand-over went");
    assert!(waited, "the turn waited for the hand-over");
    assert_eq!((r.status, &r.body["auto_assign"]), (200, &json!(true)), "{:?}", r.body);
    let shown = app.call("GET", &format!("/api/conversations/{late}"), Some(&admin), None).await;
    assert_eq!(shown.body["team_id"].as_str(), Some(team.as_str()), "{:?}", shown.body);
    assert!(
        shown.body["queued_at"].is_string(),
        "handed out: with no one online, it waits in the queue {:?}",
        shown.body
    );
}

/// A conversation left queued for a team that no longer hands out (as a
/// change that missed settling it would leave it; a turn of the rule
/// passed over one held by another change until 2026-12-06) is taken out
/// of the queue at the next hand-out round, not given.
#[actix_web::test]
async fn a_conversation_left_queued_for_a_team_that_no_longer_hands_out_leaves_the_queue_at_the_next_round() {
    let app = spawn_app().await;
    let (admin, conv, team) = billing_with_one_conversation(&app, "6620000000000006").await;
    // Al, online: someone the round could give it to.
    let al = switchboard::ids::UserId(app.count("SELECT id AS n FROM public.users WHERE email = 'al@acme.test'"));
    // The rule off, the conversation still queued (as if passed over).
    let r = app.call("PATCH", &format!("/api/teams/{team}"), Some(&admin), Some(json!({"auto_assign": false}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    app.exec(&format!("UPDATE tenant_acme.conversations SET queued_at = now() WHERE id = {conv}"));
    let round = crate::auto_resolve::in_acme(&app, |tc, log| switchboard::inbox::hand_out::hand_out(tc, log, &[al]));
    assert_eq!(round, Some(0), "nobody was given it");
    let left = format!(
        "SELECT count(*) AS n FROM tenant_acme.conversations WHERE id = {conv} AND queued_at IS NULL AND assignee_id IS NULL"
    );
    assert_eq!(app.count(&left), 1, "out of the queue, with no one on it");
}

/// A team deleted while a conversation is handed to it (after the deletion
/// took the team's conversations, as it waited for the team) and then held
/// by a change that wants one the deletion took (a bulk change of both,
/// in id order): the deletion took the late one last, out of order, and
/// the two waited on each other (503 to one; seen in a chaos run). Now it
/// lets go of what it took and takes them again, the late one in its turn.
#[actix_web::test]
async fn a_team_deleted_as_a_conversation_is_handed_to_it_takes_that_one_in_its_turn() {
    use crate::common::{a_wait_on, bigint, holding};
    use diesel::{Connection, RunQueryDsl};
    let app = spawn_app().await;
    let (admin, _al_id, _al, _page) = al_on_page_a(&app).await;
    let [one, two] = write_to_page_a(&app, &admin, ["6620000000000007", "6620000000000008"], "Rechnung?").await;
    let number = |id: &str| id.parse::<i64>().expect("a numeric id");
    // The late one comes first in id order: the change holding it then
    // wants the team's own, as a bulk change of both would.
    let (late, member) = if number(&one) < number(&two) { (one, two) } else { (two, one) };
    let made = app.call("POST", "/api/teams", Some(&admin), Some(json!({"name": "Billing"}))).await;
    let team = made.body["id"].as_str().expect("id").to_string();
    assert_eq!(patch(&app, &admin, &member, json!({"team_id": team})).await.status, 200);

    let (url, team_id, late_id, member_id) = (app.db.url.clone(), team.clone(), late.clone(), member.clone());
    let (begun_tx, begun) = std::sync::mpsc::channel();
    let others = std::thread::spawn(move || -> Result<(), String> {
        let connect = || diesel::PgConnection::establish(&url).expect("connect");
        let (mut holder, mut joiner, mut changer, mut watcher) = (connect(), connect(), connect(), connect());
        // A change handing some conversation to the team holds its key: the
        // deletion takes the team's conversations, then waits for the team.
        let holder_pid =
            holding(&mut holder, &format!("SELECT id AS n FROM tenant_acme.teams WHERE id = {team_id} FOR KEY SHARE"))?;
        begun_tx.send(()).expect("told");
        assert!(a_wait_on(&mut watcher, holder_pid, Duration::from_secs(5)), "the deletion waits for the team");
        // Meanwhile the other conversation is handed to the team, then held
        // by a change of both.
        let join = format!("UPDATE tenant_acme.conversations SET team_id = {team_id} WHERE id = {late_id}");
        diesel::sql_query(join).execute(&mut joiner).map_err(|e| e.to_string())?;
        let changer_pid = holding_conversation(&mut changer, &late_id)?;
        diesel::sql_query("COMMIT").execute(&mut holder).map_err(|e| e.to_string())?;
        // The deletion, let through, comes to the late one and waits for it.
        assert!(a_wait_on(&mut watcher, changer_pid, Duration::from_secs(5)), "the deletion waits for the late one");
        bigint(
            &mut changer,
            &format!("SELECT id AS n FROM tenant_acme.conversations WHERE id = {member_id} FOR NO KEY UPDATE"),
        )?;
        diesel::sql_query("COMMIT").execute(&mut changer).map_err(|e| e.to_string())?;
        Ok(())
    });
    begun.recv().expect("begun");
    let r = app.call("DELETE", &format!("/api/teams/{team}"), Some(&admin), None).await;
    assert_eq!(others.join().expect("the others' thread"), Ok(()), "the change of both went");
    assert_eq!(r.status, 204, "{:?}", r.body);
    let freed = format!(
        "SELECT count(*) AS n FROM tenant_acme.conversations WHERE id IN ({late}, {member}) AND team_id IS NULL"
    );
    assert_eq!(app.count(&freed), 2, "both taken off the team");
    for id in [&late, &member] {
        let shown = app.call("GET", &format!("/api/conversations/{id}"), Some(&admin), None).await;
        assert_eq!((shown.status, &shown.body["team_id"]), (200, &Value::Null), "{:?}", shown.body);
    }
}

/// `release` hands back what it can take now. A conversation of theirs
/// that another transaction holds (one that became theirs after the
/// caller took its locks in id order) is left to that transaction, which
/// checks its assignee as it writes, rather than waited for out of order;
/// the rest go back to the queue.
#[actix_web::test]
async fn a_release_leaves_a_conversation_another_transaction_holds_and_hands_back_the_rest() {
    use crate::common::holding;
    use diesel::{Connection, RunQueryDsl};
    let app = spawn_app().await;
    let (admin, al_id, _al, _page) = al_on_page_a(&app).await;
    let [free, held] = write_to_page_a(&app, &admin, ["6630000000000001", "6630000000000002"], "¿Hola?").await;
    for c in [&free, &held] {
        assert_eq!(patch(&app, &admin, c, json!({"assignee_id": al_id})).await.status, 200);
    }
    let mut holder = diesel::PgConnection::establish(&app.db.url).expect("connect");
    let hold = format!("SELECT id AS n FROM tenant_acme.conversations WHERE id = {held} FOR NO KEY UPDATE");
    holding(&mut holder, &hold).expect("held");
    let al = switchboard::ids::UserId(al_id.parse().expect("a numeric id"));
    // Within the helper's lock timeout (3 s): a release that waited fails.
    let released = crate::auto_resolve::in_acme(&app, |tc, log| {
        use switchboard::inbox::conversations::{release, Released};
        release(tc, log, None, al, Released::All, "member_removed", &[])
    });
    diesel::sql_query("COMMIT").execute(&mut holder).expect("let go");
    assert_eq!(released, 1);
    let assignee = |c: &str| {
        let (app, admin, path) = (&app, admin.clone(), format!("/api/conversations/{c}"));
        async move { app.call("GET", &path, Some(&admin), None).await.body["assignee_id"].clone() }
    };
    assert_eq!(assignee(&free).await, Value::Null, "the free one went back to the queue");
    assert_eq!(assignee(&held).await, json!(al_id), "the held one was left to its holder");
}
