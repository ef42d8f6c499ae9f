//! From Meta webhook to conversation, and the agent's reply back, over HTTP
//! against the fake Meta.

use diesel::prelude::*;
use serde_json::{json, Value};

use switchboard::meta::variants;

use crate::channels::{connect_pages, meta_user, oauth_round, IG_A, META_USER, PAGE_A, PAGE_B};
use crate::common::{eventually, fixture, messenger_text, spawn_app, spawn_app_without_workers, token, TestApp};

const PSID: &str = "7392015648120394";
pub(crate) const PHONE: &str = "123456789012345";
const WA_ID: &str = "14155550123";

pub(crate) struct Ctx {
    pub(crate) admin: String,
    /// The WhatsApp business account's token at the fake Meta.
    pub(crate) waba_token: String,
}

/// Tenant acme with page A (+ Instagram) and the WhatsApp number connected.
pub(crate) async fn acme(app: &TestApp) -> Ctx {
    let created = meta_user(app).await;
    app.fake("POST", "/_fake/dialog-user", json!({"user_id": META_USER})).await;
    let owner = app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let admin = token(&owner, "access_token");
    connect_pages(app, &admin, &[PAGE_A], true).await;
    let waba_token = created["wabas"][0]["access_token"].as_str().expect("token");
    let r = app
        .call(
            "POST",
            "/api/channels/whatsapp/connect",
            Some(&admin),
            Some(json!({"waba_id": "112233445566778", "access_token": waba_token})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    Ctx { admin, waba_token: waba_token.to_string() }
}

pub(crate) async fn conversations(app: &TestApp, t: &str, query: &str) -> Vec<Value> {
    let r = app.call("GET", &format!("/api/conversations{query}"), Some(t), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["items"].as_array().expect("items").clone()
}

async fn messages(app: &TestApp, t: &str, conversation: &str) -> Vec<Value> {
    let r = app.call("GET", &format!("/api/conversations/{conversation}/messages?limit=200"), Some(t), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body["items"].as_array().expect("items").clone()
}

pub(crate) fn by_contact<'a>(convs: &'a [Value], external: &str) -> &'a Value {
    convs
        .iter()
        .find(|c| c["contact"]["external_id"] == external)
        .unwrap_or_else(|| panic!("no conversation with {external}"))
}

#[actix_web::test]
async fn every_fixture_lands_as_the_right_rows() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let names = [
        "messenger_text.json",
        "messenger_text_quick_reply_and_reply_to.json",
        "messenger_image.json",
        "messenger_postback.json",
        "messenger_echo.json",
        "messenger_delivery.json",
        "messenger_read.json",
        "messenger_reaction.json",
        "messenger_standby.json",
        "messenger_echo_from_page_inbox.json",
        "instagram_text.json",
        "instagram_echo.json",
        "instagram_story_mention.json",
        "instagram_story_reply.json",
        "instagram_reaction.json",
        "instagram_seen.json",
        "whatsapp_text.json",
        "whatsapp_image.json",
        "whatsapp_reply_context.json",
        "whatsapp_reaction.json",
        "whatsapp_status_sent.json",
        "whatsapp_status_delivered.json",
        "whatsapp_status_read.json",
        "whatsapp_status_failed.json",
        "whatsapp_status_batch_out_of_order.json",
        "whatsapp_account_update.json",
        "whatsapp_template_status_update.json",
    ];
    for name in names {
        assert_eq!(app.webhook(&fixture(name)).await, 200, "{name}");
        // Order matters for receipts after their messages: let each land.
        app.processed().await;
    }
    assert_eq!(app.count("SELECT count(*) AS n FROM public.webhook_events WHERE status = 'dead'"), 0);

    let convs = conversations(&app, &ctx.admin, "").await;
    let fb = by_contact(&convs, PSID);
    assert_eq!(fb["platform"], "facebook");
    assert_eq!(fb["status"], "open");
    let fb_msgs = messages(&app, &ctx.admin, fb["id"].as_str().expect("id")).await;
    let texts: Vec<&str> = fb_msgs.iter().filter_map(|m| m["text"].as_str()).collect();
    for t in [
        "Hi! Do you ship to Lisbon?",
        "Yes please",
        "Yes, we ship to Lisbon in 2-3 days.",
        "Message while another app (e.g. Page inbox) owns the thread",
        "(typed by a human in Meta Business Suite inbox)",
    ] {
        assert!(texts.contains(&t), "{t} missing from {texts:?}");
    }
    let quick = fb_msgs.iter().find(|m| m["text"] == "Yes please").expect("quick reply");
    assert_eq!(quick["quick_reply_payload"], "CONFIRM_ORDER_8812");
    assert_eq!(quick["reply_to"], "m_PageSentMsg0000001abc");
    let image = fb_msgs.iter().find(|m| m["attachments"][0]["type"] == "image").expect("image");
    assert!(image["attachments"][0]["url"].as_str().is_some_and(|u| u.starts_with("https://")));
    // The echo (sent by the page from elsewhere) was delivered, read, reacted to.
    let echo = fb_msgs.iter().find(|m| m["external_id"] == "m_Echo00000000000000000001").expect("echo");
    assert_eq!(
        (echo["direction"].as_str(), echo["sender"]["kind"].as_str(), echo["status"].as_str()),
        (Some("out"), Some("page"), Some("read"))
    );
    assert_eq!(echo["reactions"][PSID], "❤️");
    let inbox_echo =
        fb_msgs.iter().find(|m| m["external_id"] == "m_Echo00000000000000000002").expect("page inbox echo");
    assert_eq!(inbox_echo["sender"]["kind"], "page");
    // Oldest to newest by Meta's time, not arrival.
    let times: Vec<&str> = fb_msgs.iter().filter_map(|m| m["platform_timestamp"].as_str()).collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted);
    // The postback came from another contact: its own conversation.
    let pb_conv = by_contact(&convs, "6283920174650381");
    let pb = messages(&app, &ctx.admin, pb_conv["id"].as_str().expect("id")).await;
    assert_eq!(
        (pb[0]["text"].as_str(), pb[0]["postback_payload"].as_str()),
        (Some("Get Started"), Some("GET_STARTED"))
    );

    let ig = by_contact(&convs, "6841100000123456");
    assert_eq!(ig["platform"], "instagram");
    let ig_msgs = messages(&app, &ctx.admin, ig["id"].as_str().expect("id")).await;
    assert!(ig_msgs.iter().any(|m| m["attachments"][0]["type"] == "story_mention"));
    let ig_echo = ig_msgs.iter().find(|m| m["text"] == "Yes! Size M left.").expect("ig echo");
    assert_eq!(ig_echo["status"], "read", "instagram_seen marks it read");
    assert_eq!(ig_echo["reactions"]["6841100000123456"], "❤️");

    let wa = by_contact(&convs, WA_ID);
    assert_eq!(wa["contact"]["name"], "Ana Sousa");
    let wa_msgs = messages(&app, &ctx.admin, wa["id"].as_str().expect("id")).await;
    assert!(wa_msgs.iter().any(|m| m["text"] == "Olá! Ainda têm a mesa de carvalho?"));
    assert!(wa_msgs.iter().any(|m| m["attachments"][0]["media_id"] == "1020304050607080" && m["text"] == "this one"));
    assert!(wa["unread_count"].as_i64().unwrap_or(0) >= 2);
    // Statuses for messages we never sent are kept, not lost.
    assert!(app.count("SELECT count(*) AS n FROM tenant_acme.early_statuses") >= 3);

    // Instagram delete (same id as the first IG text): updated, not inserted.
    let before = app.count("SELECT count(*) AS n FROM tenant_acme.messages");
    assert_eq!(app.webhook(&fixture("instagram_deleted.json")).await, 200);
    app.processed().await;
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages"), before);
    assert_eq!(
        app.count("SELECT count(*) AS n FROM tenant_acme.messages WHERE deleted_at IS NOT NULL AND text IS NULL"),
        1
    );
    // Events were logged for all of it, in one sequence.
    let events = app.count("SELECT count(*) AS n FROM tenant_acme.events");
    assert_eq!(app.count("SELECT max(seq) AS n FROM tenant_acme.events"), events);
}

#[actix_web::test]
async fn duplicates_batches_and_tenants() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    // Page B belongs to tenant beta.
    let beth = app.signup("beta", "beth@beta.test", "beth-password-1").await;
    let beta_admin = token(&beth, "access_token");
    connect_pages(&app, &beta_admin, &[PAGE_B], false).await;

    let body = fixture("messenger_text.json");
    assert_eq!(app.webhook(&body).await, 200);
    assert_eq!(app.webhook(&body).await, 200);
    let sends: Vec<_> = (0..10).map(|_| app.webhook(&body)).collect();
    for s in futures_util::future::join_all(sends).await {
        assert_eq!(s, 200);
    }
    app.processed().await;
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages"), 1);
    assert_eq!(app.count("SELECT count(*) AS n FROM public.webhook_events WHERE status = 'done'"), 12);
    let convs = conversations(&app, &ctx.admin, "").await;
    assert_eq!(convs[0]["unread_count"], 1, "a duplicate is not a new unread message");

    // One body, two pages, two tenants: each lands in its own schema only.
    assert_eq!(app.webhook(&fixture("messenger_batch_two_pages.json")).await, 200);
    app.processed().await;
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages WHERE external_id LIKE 'm_Batch%'"), 2);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_beta.messages WHERE external_id LIKE 'm_Batch%'"), 1);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_beta.messages WHERE text = 'first'"), 0);
    let beta_convs = conversations(&app, &beta_admin, "").await;
    assert_eq!(beta_convs.len(), 1);
    assert_eq!(beta_convs[0]["last_message"]["text"], "hello page B");
    // acme's newest message is "first", even though the earlier one arrived later.
    let acme_conv = by_contact(&conversations(&app, &ctx.admin, "").await, PSID).clone();
    assert_eq!(acme_conv["last_message"]["text"], "first");
    // Ids are per tenant: beta's conversation id, asked in acme, never shows
    // beta's conversation (it is acme's own with that id, or a 404).
    let r = app
        .call(
            "GET",
            &format!("/api/conversations/{}", beta_convs[0]["id"].as_str().unwrap_or("")),
            Some(&ctx.admin),
            None,
        )
        .await;
    assert!(r.status == 404 || r.body["contact"]["external_id"] != "5102938475610293", "{:?}", r.body);
    let r = app.call("GET", "/api/conversations/424242", Some(&ctx.admin), None).await;
    assert_eq!(r.status, 404);
}

#[actix_web::test]
async fn signatures_are_checked_on_the_raw_bytes() {
    let app = spawn_app().await;
    acme(&app).await;
    let raw = fixture("signature/messenger_unicode_body.raw");
    let good = "sha256=02167e90e9f3f3636c13390296b063109f2ce034c86bbf27c4e1eaf17cab92c5";
    let post = |body: Vec<u8>, sig: Option<&'static str>| {
        let mut req = app.client.post(app.url("/webhooks/meta")).header("content-type", "application/json").body(body);
        if let Some(s) = sig {
            req = req.header("x-hub-signature-256", s);
        }
        async move { req.send().await.expect("post").status().as_u16() }
    };
    let reserialized = serde_json::to_vec(&serde_json::from_slice::<Value>(&raw).expect("json")).expect("json");
    assert_eq!(post(reserialized, Some(good)).await, 403);
    assert_eq!(post(raw.clone(), None).await, 403);
    assert_eq!(post(raw.clone(), Some("sha256=00")).await, 403);
    assert_eq!(post(raw.clone(), Some("sha1=0f62145090842379e67f37b09ef5607604a9ed87")).await, 403);
    assert_eq!(app.count("SELECT count(*) AS n FROM public.webhook_events"), 0, "nothing stored");
    assert_eq!(post(raw, Some(good)).await, 200);
    app.processed().await;
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages WHERE text LIKE 'Olá José — preço 10€ 😀 https://example.com/a?b=1'"), 1);
    // Verification handshake.
    let ok = app
        .client
        .get(app.url("/webhooks/meta?hub.mode=subscribe&hub.verify_token=verify-me&hub.challenge=1158201444"))
        .send()
        .await
        .expect("get");
    assert_eq!(ok.status().as_u16(), 200);
    assert_eq!(ok.text().await.expect("text"), "1158201444");
    let bad = app
        .client
        .get(app.url("/webhooks/meta?hub.mode=subscribe&hub.verify_token=nope&hub.challenge=1"))
        .send()
        .await
        .expect("get");
    assert_eq!(bad.status().as_u16(), 403);
    // A valid signature over something that is not Meta's: stored, answered
    // 200 (a non-200 would make Meta retry or switch the webhooks off),
    // dead-lettered.
    let odd: [&[u8]; 4] = [b"{not json", b"[]", b"", br#"{"object":"user","entry":[]}"#];
    for body in odd {
        assert_eq!(app.webhook(body).await, 200, "{:?}", String::from_utf8_lossy(body));
    }
    app.processed().await;
    assert_eq!(app.count("SELECT count(*) AS n FROM public.webhook_events WHERE status = 'dead'"), 4);
}

#[actix_web::test]
async fn unknown_pages_dead_letter_and_replay_after_connecting() {
    let app = spawn_app().await;
    meta_user(&app).await;
    app.fake("POST", "/_fake/dialog-user", json!({"user_id": META_USER})).await;
    let owner = app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let admin = token(&owner, "access_token");
    assert_eq!(app.webhook(&fixture("messenger_text.json")).await, 200);
    app.processed().await;
    let dead = app.call("GET", "/api/operator/dead-letters", Some(crate::common::OPERATOR_TOKEN), None).await;
    assert_eq!(dead.status, 200, "{:?}", dead.body);
    let items = dead.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 1);
    assert!(items[0]["last_error"].as_str().is_some_and(|e| e.contains(PAGE_A)));
    assert_eq!(app.call("GET", "/api/operator/dead-letters", Some(&admin), None).await.status, 401);
    // Connect the page, replay: the message arrives.
    let sel = oauth_round(&app, &admin).await;
    app.call(
        "POST",
        "/api/channels/facebook/connect",
        Some(&admin),
        Some(json!({"selection_id": sel["selection_id"], "page_ids": [PAGE_A]})),
    )
    .await;
    let r = app
        .call("POST", "/api/operator/dead-letters/replay", Some(crate::common::OPERATOR_TOKEN), Some(json!({})))
        .await;
    assert_eq!(r.body["replayed"], 1);
    app.processed().await;
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages"), 1);
}

/// A message the business typed in the WhatsApp Business app on its phone
/// (`smb_message_echoes`, coexistence), to `to`.
fn whatsapp_echo(to: &str, wamid: &str, text: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"object": "whatsapp_business_account", "entry": [{"id": "112233445566778", "changes": [{
        "field": "smb_message_echoes",
        "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15551234567", "phone_number_id": PHONE},
            "message_echoes": [{"from": "15551234567", "to": to, "id": wamid, "timestamp": "1773140100",
                "type": "text", "text": {"body": text}}]}}]}]}))
    .expect("body")
}

#[actix_web::test]
async fn replies_from_the_whatsapp_business_app_show_in_the_conversation_once() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    assert_eq!(app.webhook(&fixture("whatsapp_text.json")).await, 200);
    // Meta retries: the same echo twice.
    for _ in 0..2 {
        assert_eq!(app.webhook(&whatsapp_echo(WA_ID, "wamid.ECHO1", "Sim, ainda temos 🙂")).await, 200);
    }
    // To a customer who has not written here yet: a new conversation.
    assert_eq!(app.webhook(&whatsapp_echo("351912345678", "wamid.ECHO2", "Olá, a sua encomenda chegou")).await, 200);
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let wa = by_contact(&convs, WA_ID);
    let msgs = messages(&app, &ctx.admin, wa["id"].as_str().expect("id")).await;
    let echoes: Vec<&Value> = msgs.iter().filter(|m| m["external_id"] == "wamid.ECHO1").collect();
    assert_eq!(echoes.len(), 1, "{msgs:?}");
    assert_eq!(
        (echoes[0]["direction"].as_str(), echoes[0]["sender"]["kind"].as_str(), echoes[0]["status"].as_str()),
        (Some("out"), Some("page"), Some("sent"))
    );
    assert_eq!(echoes[0]["text"], "Sim, ainda temos 🙂");
    assert_eq!(echoes[0]["platform_timestamp"], "2026-03-10T10:55:00Z");
    assert_eq!(wa["last_message"]["text"], "Sim, ainda temos 🙂");
    let other = by_contact(&convs, "351912345678");
    assert_eq!(other["platform"], "whatsapp");
    assert_eq!(other["last_message"]["direction"], "out");
    assert_eq!(app.count("SELECT count(*) AS n FROM public.webhook_events WHERE status = 'dead'"), 0);
}

#[actix_web::test]
async fn the_simulator_sends_every_kind_and_each_lands_once() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let args = switchboard::cli::SimulateArgs {
        url: app.url("/webhooks/meta"),
        app_secret: app.config.meta.app_secret.expose().to_string(),
        page: Some(PAGE_A.into()),
        instagram: Some(IG_A.into()),
        phone: Some(PHONE.into()),
        // The targets take turns: 18 each, two whole turns of Messenger's 9
        // kinds, two and a part of Instagram's 8 and of WhatsApp's 8.
        count: 54,
        rate: 0,
        concurrency: 1,
        contacts: 50,
        duplicates: true,
        bad_signature: false,
        odd: 0,
        // Two events a body: the entries land in order.
        batch: 2,
        shuffle: 1,
        retries: 0,
        kinds: switchboard::simulate::Kind::ALL.to_vec(),
    };
    let report = switchboard::simulate::run(&args).await;
    assert_eq!((report.sent, report.statuses.get(&200).copied(), report.errors), (54, Some(54), 0));
    app.processed().await;
    assert_eq!(app.count("SELECT count(*) AS n FROM public.webhook_events WHERE status = 'dead'"), 0);
    let per_platform = |platform: &str, filter: &str| {
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.messages m JOIN tenant_acme.channels c ON c.id = m.channel_id \
             WHERE c.platform = '{platform}' {filter}"
        ))
    };
    // Messages once each (the copies were Meta's retries): text, image,
    // button, postback or location, and the business's answer, a turn.
    assert_eq!(per_platform("facebook", ""), 10);
    assert_eq!(per_platform("instagram", ""), 10);
    assert_eq!(per_platform("whatsapp", ""), 12);
    // Each whole turn's answer was delivered, read and reacted to.
    let answered = "AND m.sender_kind = 'page' AND m.status = 'read' AND m.reactions <> '{}'::jsonb";
    assert_eq!(per_platform("facebook", answered), 2);
    assert_eq!(per_platform("instagram", answered), 2);
    assert_eq!(per_platform("whatsapp", answered), 2);
    assert_eq!(per_platform("whatsapp", "AND m.text LIKE '📍%'"), 2);
    assert_eq!(per_platform("facebook", "AND m.postback_payload = 'GET_STARTED'"), 2);
    // Each whole turn's text was edited, and on Instagram its photo unsent.
    let edited = "AND m.edited_at IS NOT NULL AND m.text LIKE '%(editado)'";
    assert_eq!((per_platform("facebook", edited), per_platform("instagram", edited)), (2, 2));
    let unsent = "AND m.deleted_at IS NOT NULL AND m.attachments = '[]'::jsonb";
    assert_eq!(per_platform("instagram", unsent), 2);
    // A contact a turn (the third turns of Instagram and WhatsApp too), one
    // conversation each.
    let convs = conversations(&app, &ctx.admin, "").await;
    assert_eq!(convs.len(), 8, "{convs:?}");
    // Again out of order (receipts, reactions, edits and unsends before
    // their message, copies before originals), eight at a time: still each
    // message once, and each change applied, whenever its message came.
    let report =
        switchboard::simulate::run(&switchboard::cli::SimulateArgs { shuffle: 8, concurrency: 4, ..args.clone() })
            .await;
    assert_eq!((report.statuses.get(&200).copied(), report.errors), (Some(54), 0));
    app.processed().await;
    assert_eq!(app.count("SELECT count(*) AS n FROM public.webhook_events WHERE status = 'dead'"), 0);
    assert_eq!(
        (per_platform("facebook", ""), per_platform("instagram", ""), per_platform("whatsapp", "")),
        (20, 20, 24)
    );
    let reacted = "AND m.sender_kind = 'page' AND m.reactions <> '{}'::jsonb";
    assert_eq!(
        (per_platform("facebook", reacted), per_platform("instagram", reacted), per_platform("whatsapp", reacted)),
        (4, 4, 4)
    );
    assert_eq!((per_platform("facebook", edited), per_platform("instagram", edited)), (4, 4));
    assert_eq!(per_platform("instagram", unsent), 4);
    // Receipts that came before their answer waited for it: by id, or as
    // the conversation's watermark (Messenger's reads name no message).
    assert_eq!(
        (per_platform("facebook", answered), per_platform("instagram", answered), per_platform("whatsapp", answered)),
        (4, 4, 4)
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.early_changes"), 0);
    assert_eq!(conversations(&app, &ctx.admin, "").await.len(), 8);
    // And with one value of every body retyped or removed (`--odd 100`):
    // each is taken, then processed or dead-lettered at once, none left to
    // retry, and the inbox still reads.
    let report = switchboard::simulate::run(&switchboard::cli::SimulateArgs { odd: 100, concurrency: 4, ..args }).await;
    assert_eq!((report.statuses.get(&200).copied(), report.errors), (Some(54), 0));
    app.processed().await;
    let retried = "SELECT count(*) AS n FROM public.webhook_events WHERE last_error LIKE '%failed:%'";
    assert_eq!(app.count(retried), 0);
    let listed = app.call("GET", "/api/conversations?limit=200", Some(&ctx.admin), None).await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    for c in listed.body["items"].as_array().expect("items") {
        let id = c["id"].as_str().expect("id");
        let page = app.call("GET", &format!("/api/conversations/{id}/messages"), Some(&ctx.admin), None).await;
        assert_eq!(page.status, 200, "{:?}", page.body);
    }
}

#[actix_web::test]
async fn subscriptions_meta_drops_for_failed_deliveries_are_renewed_by_the_check() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let list = app.call("GET", "/api/channels", Some(&ctx.admin), None).await;
    let id_of = |external: &str| {
        list.body["items"].as_array().expect("items").iter().find(|c| c["external_id"] == external).expect("channel")
            ["id"]
            .as_str()
            .expect("id")
            .to_string()
    };
    let (page, phone) = (id_of(PAGE_A), id_of(PHONE));
    let subscribed = |state: &Value| {
        let page = state["pages"].as_array().expect("pages").iter().find(|p| p["id"] == PAGE_A).cloned();
        (page.map(|p| !p["subscribed_fields"].is_null()), state["wabas"][0]["subscribed"].as_bool())
    };
    // Our endpoint is down: two failed deliveries each and Meta gives up.
    let url = app.url("/webhooks/meta");
    app.fake("POST", "/_fake/webhook-target", json!({"url": "http://127.0.0.1:9/webhooks/meta", "disable_after": 2}))
        .await;
    for to in [PAGE_A, PAGE_A, PHONE, PHONE] {
        let r = app.fake("POST", "/_fake/inbound", json!({"to": to, "from": "5102938475610293", "text": "olá?"})).await;
        assert!(r["delivered_status"].is_null(), "{r}");
    }
    assert_eq!(subscribed(&app.fake("GET", "/_fake/state", json!({})).await), (Some(false), Some(false)));
    // Back up, but unsubscribed: nothing comes, Instagram (the page's) neither.
    app.fake("POST", "/_fake/webhook-target", json!({"url": url, "disable_after": 2})).await;
    for to in [PAGE_A, IG_A, PHONE] {
        let r = app.fake("POST", "/_fake/inbound", json!({"to": to, "from": "5102938475610293", "text": "olá?"})).await;
        assert_eq!(r["dropped"], true, "{r}");
    }
    assert_eq!(app.count("SELECT count(*) AS n FROM public.webhook_events"), 0);
    // The check (the watchdog's, on demand) subscribes both again.
    for id in [&page, &phone] {
        let r = app.call("POST", &format!("/api/channels/{id}/check"), Some(&ctx.admin), None).await;
        assert_eq!((r.status, r.body["status"].as_str()), (200, Some("connected")), "{:?}", r.body);
    }
    assert_eq!(subscribed(&app.fake("GET", "/_fake/state", json!({})).await), (Some(true), Some(true)));
    for to in [PAGE_A, PHONE] {
        let r = app.fake("POST", "/_fake/inbound", json!({"to": to, "from": "5102938475610293", "text": "olá?"})).await;
        assert_eq!(r["delivered_status"], 200, "{r}");
    }
    app.processed().await;
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages"), 2);
}

#[actix_web::test]
async fn a_purged_channel_is_not_replayed_from_the_event_log() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    assert_eq!(app.webhook(&fixture("messenger_text.json")).await, 200);
    assert_eq!(app.webhook(&fixture("whatsapp_text.json")).await, 200);
    // An edit and a receipt waiting for messages that have not come: the
    // purge takes them too (the edit holds the customer's words).
    let edit = json!({"object": "page", "entry": [{"id": PAGE_A, "time": 1, "messaging": [{"sender": {"id": PSID},
        "recipient": {"id": PAGE_A}, "timestamp": 1773140000000_i64, "message_edit": {"mid": "m_later", "text": "meu endereço", "num_edit": 1}}]}]});
    assert_eq!(app.webhook(edit.to_string().as_bytes()).await, 200);
    let delivery = json!({"object": "page", "entry": [{"id": PAGE_A, "time": 1, "messaging": [{"sender": {"id": PSID},
        "recipient": {"id": PAGE_A}, "timestamp": 1773140000000_i64, "delivery": {"mids": ["m_reply_later"], "watermark": 1}}]}]});
    assert_eq!(app.webhook(delivery.to_string().as_bytes()).await, 200);
    app.processed().await;
    let waiting = "SELECT (SELECT count(*) FROM tenant_acme.early_changes) + (SELECT count(*) FROM tenant_acme.early_statuses) AS n";
    assert_eq!(app.count(waiting), 2);
    let list = app.call("GET", "/api/channels", Some(&ctx.admin), None).await;
    let page = list.body["items"].as_array().expect("items").iter().find(|c| c["external_id"] == PAGE_A).expect("A")
        ["id"]
        .as_str()
        .expect("id")
        .to_string();
    let mut open = crate::realtime::ws(&app, "", Some(&ctx.admin), None).await.expect("socket");
    let r = app.call("DELETE", &format!("/api/channels/{page}?purge=true"), Some(&ctx.admin), None).await;
    assert_eq!(r.status, 204);
    assert_eq!(app.count(waiting), 0);
    // An open inbox is told, and only that stays in the log.
    let told = crate::realtime::until(&mut open, "channel.updated", std::time::Duration::from_secs(10)).await;
    let told = told.expect("channel.updated");
    assert_eq!((told["data"]["id"].as_str(), told["data"]["deleted"].as_bool()), (Some(page.as_str()), Some(true)));
    assert_eq!(told["data"]["status"], "disconnected");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.events WHERE channel_id = {page} AND type <> 'channel.updated'"
        )),
        0
    );
    // A socket resuming from the start of what the log keeps (a client from
    // before the log's first event is told to reload) hears the number's
    // message only.
    let first = app.count("SELECT min(seq) AS n FROM tenant_acme.events");
    let query = format!("?since={}", first - 1);
    let mut socket = crate::realtime::ws(&app, &query, Some(&ctx.admin), None).await.expect("socket");
    // The replay ends with the purge's announcement, the log's last event.
    let mut texts = Vec::new();
    loop {
        let frame = crate::realtime::next(&mut socket, std::time::Duration::from_secs(10)).await.expect("replay");
        assert_ne!(frame["type"], "resync_required");
        assert_ne!(frame["data"]["channel_id"].as_str(), Some(page.as_str()), "{frame}");
        if frame["type"] == "message.created" {
            texts.push(frame["data"]["text"].as_str().unwrap_or_default().to_string());
        }
        if frame["type"] == "channel.updated" && frame["data"]["id"] == page.as_str() {
            assert_eq!(frame["data"]["deleted"], true, "{frame}");
            break;
        }
    }
    assert_eq!(texts, ["Olá! Ainda têm a mesa de carvalho?"]);
    // The page's events were the log's first (its connection): emptied, not
    // deleted, so a client resuming from the very start is not told to
    // reload, and hears no copy of them either.
    assert_eq!(app.count("SELECT min(seq) AS n FROM tenant_acme.events"), 1);
    let mut from_start = crate::realtime::ws(&app, "?since=0", Some(&ctx.admin), None).await.expect("socket");
    assert_eq!(
        crate::realtime::next(&mut from_start, std::time::Duration::from_secs(5)).await.expect("hello")["type"],
        "hello"
    );
    let first = crate::realtime::next(&mut from_start, std::time::Duration::from_secs(5)).await.expect("replay");
    assert_ne!(first["type"], "resync_required", "{first}");
    assert!(first["seq"].as_i64() > Some(1), "the page's own first event is not replayed: {first}");
}

/// A channel purged while its conversations are being written: the purge
/// takes what those writers take, in their order (the channel's settings
/// lock, its member list's lock, then the conversations in id order, then
/// the channel), and waits for each. It deleted the channel first and
/// then, by the cascade, its conversations and member list: a webhook
/// batch holding a conversation and then naming the channel in a row it
/// writes, a change of the channel's settings holding the conversations
/// whose due times move and then writing the channel (or writing it, then
/// taking what it hands out), or a change of its member list holding a
/// member's row and then the conversations it hands back each deadlocked
/// with it (503 to one of the two).
#[actix_web::test]
async fn a_channels_purge_and_the_writers_of_its_conversations_at_once_take_turns() {
    use crate::common::transaction_held_until_waited;
    let conversation = "SELECT id FROM tenant_acme.conversations WHERE id = {conv} FOR NO KEY UPDATE";
    let channel = "UPDATE tenant_acme.channels SET updated_at = now() WHERE id = {page}";
    let settings = "BEGIN; SELECT pg_catalog.pg_advisory_xact_lock_shared({rules}, pg_catalog.hashtext('{tenant}')); \
                    SELECT pg_catalog.pg_advisory_xact_lock({settings}, pg_catalog.hashtext('{tenant}:{page}'))";
    let members = "BEGIN; SELECT pg_catalog.pg_advisory_xact_lock({members}, pg_catalog.hashtext('{tenant}:{page}')); \
                   DELETE FROM tenant_acme.channel_members WHERE channel_id = {page}";
    let cases = [
        (
            "a batch",
            format!("BEGIN; {conversation}"),
            "SELECT id FROM tenant_acme.channels WHERE id = {page} FOR KEY SHARE",
        ),
        // Due times moved, then the channel written.
        ("a settings change", format!("{settings}; {conversation}"), channel),
        // The channel written, then what it hands out taken.
        ("a settings change handing out", format!("{settings}; {channel}"), conversation),
        ("a member list's change", members.to_string(), conversation),
    ];
    for (writer, begin, then) in cases {
        let app = spawn_app().await;
        let ctx = acme(&app).await;
        assert_eq!(app.webhook(&fixture("messenger_text.json")).await, 200);
        app.processed().await;
        let page = app.count(&format!("SELECT id AS n FROM tenant_acme.channels WHERE external_id = '{PAGE_A}'"));
        let conv = app.count(&format!("SELECT id AS n FROM tenant_acme.conversations WHERE channel_id = {page}"));
        let tenant = app.count("SELECT id AS n FROM public.tenants WHERE slug = 'acme'");
        let owner = app.count("SELECT id AS n FROM public.users WHERE email = 'ann@acme.test'");
        let listed = json!({"user_ids": [owner.to_string()]});
        let r = app.call("PUT", &format!("/api/channels/{page}/members"), Some(&ctx.admin), Some(listed)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let fill = |sql: &str| {
            sql.replace("{conv}", &conv.to_string())
                .replace("{page}", &page.to_string())
                .replace("{tenant}", &tenant.to_string())
                .replace("{members}", &0x5b_0009.to_string())
                .replace("{settings}", &0x5b_0005.to_string())
                .replace("{rules}", &0x5b_0006.to_string())
        };
        let (begun, held) = transaction_held_until_waited(&app.db.url, fill(&begin), Some(fill(then)));
        begun.recv().expect("begun");
        let r = app.call("DELETE", &format!("/api/channels/{page}?purge=true"), Some(&ctx.admin), None).await;
        let (waited, went) = held.join().expect("the writer's thread");
        assert_eq!(went, Ok(()), "{writer} went through");
        assert!(waited, "the purge waited for {writer}");
        assert_eq!(r.status, 204, "{writer}: {:?}", r.body);
        assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.conversations"), 0, "{writer}");
    }
}

/// Acme with a customer's conversation on page A (from the fixture): the
/// context and page A's channel id, as a number for SQL.
async fn page_a_with_a_conversation(app: &TestApp) -> (Ctx, i64) {
    let ctx = acme(app).await;
    assert_eq!(app.webhook(&fixture("messenger_text.json")).await, 200);
    app.processed().await;
    let page = app.count(&format!("SELECT id AS n FROM tenant_acme.channels WHERE external_id = '{PAGE_A}'"));
    (ctx, page)
}

/// A conversation started on a channel as it is purged (after the purge
/// took the channel's conversations, as it waited for the channel), then
/// held by a change that writes to the channel (a message names it): the
/// purge's cascade took it last, out of order, holding the channel the
/// change waited for (503 to one). Now the purge lets go of what it took
/// and takes them all again, that one in its turn.
#[actix_web::test]
async fn a_channel_purged_as_a_conversation_is_started_on_it_takes_that_one_in_its_turn() {
    use crate::common::{a_wait_on, bigint, holding};
    let app = spawn_app().await;
    let (ctx, page) = page_a_with_a_conversation(&app).await;

    let url = app.db.url.clone();
    let (begun_tx, begun) = std::sync::mpsc::channel();
    let others = std::thread::spawn(move || -> Result<(), String> {
        let connect = || diesel::PgConnection::establish(&url).expect("connect");
        let (mut holder, mut starter, mut changer, mut watcher) = (connect(), connect(), connect(), connect());
        let key_share = format!("SELECT id AS n FROM tenant_acme.channels WHERE id = {page} FOR KEY SHARE");
        // A change writing to the channel holds its key: the purge takes
        // the channel's conversations, then waits for the channel.
        let holder_pid = holding(&mut holder, &key_share)?;
        begun_tx.send(()).expect("told");
        assert!(
            a_wait_on(&mut watcher, holder_pid, std::time::Duration::from_secs(5)),
            "the purge waits for the channel"
        );
        // Meanwhile a conversation is started on it, then held by a change.
        let late = bigint(
            &mut starter,
            &format!(
                "WITH k AS (INSERT INTO tenant_acme.contacts (channel_id, external_id) VALUES ({page}, '6620000000000009') \
                 RETURNING id) INSERT INTO tenant_acme.conversations (channel_id, contact_id) SELECT {page}, id FROM k \
                 RETURNING id AS n"
            ),
        )?;
        let changer_pid = holding(
            &mut changer,
            &format!("SELECT id AS n FROM tenant_acme.conversations WHERE id = {late} FOR NO KEY UPDATE"),
        )?;
        diesel::sql_query("COMMIT").execute(&mut holder).map_err(|e| e.to_string())?;
        // The purge, let through, comes to the late one and waits for it.
        assert!(
            a_wait_on(&mut watcher, changer_pid, std::time::Duration::from_secs(5)),
            "the purge waits for the late one"
        );
        // The change writes its message, naming the channel.
        bigint(&mut changer, &key_share)?;
        diesel::sql_query("COMMIT").execute(&mut changer).map_err(|e| e.to_string())?;
        Ok(())
    });
    begun.recv().expect("begun");
    let r = app.call("DELETE", &format!("/api/channels/{page}?purge=true"), Some(&ctx.admin), None).await;
    assert_eq!(others.join().expect("the others' thread"), Ok(()), "the change went");
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.conversations"), 0, "the late one purged too");
    assert_eq!(app.count(&format!("SELECT count(*) AS n FROM tenant_acme.channels WHERE id = {page}")), 0);
}

/// Two purges of one channel sent at once: the second, past its lookup of
/// the channel, waits for the first and then finds it gone (404), with
/// nothing of its own written; the first purges it (204).
#[actix_web::test]
async fn a_channel_purged_twice_at_once_is_purged_by_one_and_not_found_by_the_other() {
    use crate::common::{a_wait_on, bigint, holding};
    let app = spawn_app().await;
    let (ctx, page) = page_a_with_a_conversation(&app).await;

    let url = app.db.url.clone();
    let (begun_tx, begun) = std::sync::mpsc::channel();
    let holder_thread = std::thread::spawn(move || -> Result<(), String> {
        let connect = || diesel::PgConnection::establish(&url).expect("connect");
        let (mut holder, mut watcher) = (connect(), connect());
        // A write naming the channel holds its key: the first purge to get
        // there waits for the channel, holding its settings' lock.
        let holder_pid =
            holding(&mut holder, &format!("SELECT id AS n FROM tenant_acme.channels WHERE id = {page} FOR KEY SHARE"))?;
        begun_tx.send(()).expect("told");
        let at_most = std::time::Duration::from_secs(5);
        assert!(a_wait_on(&mut watcher, holder_pid, at_most), "the first purge waits for the channel");
        let first = bigint(
            &mut watcher,
            &format!(
                "SELECT pid::bigint AS n FROM pg_stat_activity WHERE {holder_pid} = ANY(pg_catalog.pg_blocking_pids(pid))"
            ),
        )?;
        assert!(a_wait_on(&mut watcher, first, at_most), "the second purge waits for the first");
        diesel::sql_query("COMMIT").execute(&mut holder).map_err(|e| e.to_string())?;
        Ok(())
    });
    begun.recv().expect("begun");
    let purge = format!("/api/channels/{page}?purge=true");
    let (a, b) = tokio::join!(
        app.call("DELETE", &purge, Some(&ctx.admin), None),
        app.call("DELETE", &purge, Some(&ctx.admin), None)
    );
    assert_eq!(holder_thread.join().expect("the holder's thread"), Ok(()));
    let mut statuses = [a.status, b.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [204, 404], "{:?} {:?}", a.body, b.body);
    let gone = if a.status == 404 { &a } else { &b };
    assert_eq!(gone.body["error"]["code"], "not_found", "{:?}", gone.body);
    assert_eq!(app.count(&format!("SELECT count(*) AS n FROM tenant_acme.channels WHERE id = {page}")), 0);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.conversations"), 0);
    assert_eq!(
        app.count("SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'channel.purged'"),
        1,
        "purged once"
    );
}

/// A conversation started with a contact as they are erased (after the
/// erasure took their conversations, as it waited for the contact; a
/// broadcast reaching an imported contact): it went by the cascade, but
/// its events, which quote the customer, stayed in the log. Now the
/// erasure takes them all again, that one among them, and empties its
/// events too.
#[actix_web::test]
async fn a_contact_erased_as_a_conversation_is_started_with_them_leaves_none_of_its_events() {
    use crate::common::{a_wait_on, bigint, holding};
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let contact = app.count(&format!(
        "INSERT INTO tenant_acme.contacts (channel_id, external_id, name) VALUES ({page}, '6620000000000010', \
         'Zélia Tardia') RETURNING id AS n"
    ));

    let url = app.db.url.clone();
    let (begun_tx, begun) = std::sync::mpsc::channel();
    let others = std::thread::spawn(move || -> Result<(), String> {
        let connect = || diesel::PgConnection::establish(&url).expect("connect");
        let (mut holder, mut starter, mut watcher) = (connect(), connect(), connect());
        // A write naming the contact holds its key: the erasure takes their
        // conversations (none), then waits for the contact.
        let holder_pid = holding(
            &mut holder,
            &format!("SELECT id AS n FROM tenant_acme.contacts WHERE id = {contact} FOR KEY SHARE"),
        )?;
        begun_tx.send(()).expect("told");
        assert!(a_wait_on(&mut watcher, holder_pid, std::time::Duration::from_secs(5)), "the erasure waits");
        // Meanwhile a conversation is started with them, and announced.
        bigint(
            &mut starter,
            &format!(
                "WITH v AS (INSERT INTO tenant_acme.conversations (channel_id, contact_id) VALUES ({page}, {contact}) \
                 RETURNING id), e AS (INSERT INTO tenant_acme.events (seq, type, channel_id, conversation_id, payload) \
                 SELECT 900000000, 'conversation.created', {page}, id, \
                 '{{\"contact\": {{\"name\": \"Zélia Tardia\"}}}}' FROM v) SELECT id AS n FROM v"
            ),
        )?;
        diesel::sql_query("COMMIT").execute(&mut holder).map_err(|e| e.to_string())?;
        Ok(())
    });
    begun.recv().expect("begun");
    let r = app.call("DELETE", &format!("/api/contacts/{contact}"), Some(&ctx.admin), None).await;
    assert_eq!(others.join().expect("the others' thread"), Ok(()), "the conversation was started");
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(
        app.count(&format!("SELECT count(*) AS n FROM tenant_acme.conversations WHERE contact_id = {contact}")),
        0
    );
    let quoting = "SELECT count(*) AS n FROM tenant_acme.events WHERE payload::text LIKE '%Zélia%' OR seq = 900000000 \
                   AND type <> 'redacted'";
    assert_eq!(app.count(quoting), 0, "its event emptied");
}

/// A start to a number whose contact is erased as it runs (found, then
/// gone once the erasure it waited for landed): it starts anew, with a new
/// contact for the number, as a moment later it would. It failed the
/// foreign key's check on the contact and answered 404 `contact` to a call
/// that names a phone number (seen in a chaos run).
#[actix_web::test]
async fn a_start_to_a_number_whose_contact_is_erased_meanwhile_starts_anew() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let phone = channel_id(&app, &ctx.admin, PHONE).await;
    let number = "351913000333";
    let (erased, erasing) = a_contact_being_erased(&app, &phone, number, "Iolanda Órfã");
    let started = a_start_during_an_erasure(&app, &ctx.admin, &phone, number, erased, erasing).await;
    assert_eq!(started["conversation"]["contact"]["name"], Value::Null, "nothing of the erased one: {started}");
}

/// A start to `number` on `phone` as contact `erased` of it is erased
/// (`erasing`): it waits for the erasure and starts anew, with a new
/// contact for the number. Its answer.
async fn a_start_during_an_erasure(
    app: &TestApp,
    admin: &str,
    phone: &str,
    number: &str,
    erased: i64,
    erasing: crate::common::HeldOutcome,
) -> Value {
    let start = json!({"channel_id": phone, "phone_number": format!("+{number}"),
        "template": {"name": "hello_world", "language": "en_US"}, "client_id": format!("start-{number}")});
    let r = app.call("POST", "/api/conversations", Some(admin), Some(start)).await;
    let (waited, went) = erasing.join().expect("the erasure's thread");
    assert_eq!(went, Ok(()), "erased");
    assert!(waited, "the start waited for the erasure");
    assert_eq!(r.status, 202, "{:?}", r.body);
    let anew = app.count(&format!(
        "SELECT c.id AS n FROM tenant_acme.contacts c JOIN tenant_acme.conversations v ON v.contact_id = c.id \
         WHERE c.external_id = '{number}'"
    ));
    assert_ne!(anew, erased, "a new contact for the number");
    assert_eq!(r.body["conversation"]["contact"]["id"].as_str(), Some(anew.to_string().as_str()), "{:?}", r.body);
    r.body
}

/// A start to a number whose customer wrote before and is being erased:
/// the erasure has taken their conversation and then takes the contact.
/// The start waits for the conversation holding nothing of the contact,
/// and then starts anew. It held the contact's key as it waited, and the
/// erasure, waiting for that key, ended in a deadlock.
#[actix_web::test]
async fn a_start_to_a_number_whose_conversation_an_erasure_holds_waits_for_it_and_starts_anew() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let phone = channel_id(&app, &ctx.admin, PHONE).await;
    let number = "351913000444";
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": number, "text": "Olá, é a Íris 🌷"})).await;
    app.processed().await;
    let erased = app.count(&format!("SELECT id AS n FROM tenant_acme.contacts WHERE external_id = '{number}'"));
    let erasure = (
        format!("BEGIN; SELECT id FROM tenant_acme.conversations WHERE contact_id = {erased} FOR UPDATE"),
        format!(
            "SELECT id FROM tenant_acme.contacts WHERE id = {erased} FOR UPDATE; \
             DELETE FROM tenant_acme.contacts WHERE id = {erased}"
        ),
    );
    let (begun, erasing) = crate::common::transaction_held_until_waited(&app.db.url, erasure.0, Some(erasure.1));
    begun.recv().expect("begun");
    a_start_during_an_erasure(&app, &ctx.admin, &phone, number, erased, erasing).await;
}

/// A number an agent wrote first to is a customer's who wrote before
/// (Meta names their id): the thread made for the number folds into
/// theirs (`contacts::fold_into_known`) while a batch holds their thread
/// and then takes the other (as a batch naming both takes them, in id
/// order). The fold takes the two in that order too, so it waits for the
/// batch holding nothing, and then folds. It took the number's thread
/// first, and the two ended in a deadlock.
#[actix_web::test]
async fn a_number_folding_into_its_customers_thread_takes_the_two_threads_in_a_batchs_order() {
    use switchboard::inbox::contacts;
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let phone = channel_id(&app, &ctx.admin, PHONE).await;
    let (known, typed_number) = ("552187654322", "5521987654322");
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": known, "text": "Oi, é o Zé 🙂"})).await;
    app.processed().await;
    let into = app.count(&format!(
        "SELECT v.id AS n FROM tenant_acme.conversations v JOIN tenant_acme.contacts c ON c.id = v.contact_id \
         WHERE c.external_id = '{known}'"
    ));
    let typed = app.count(&format!(
        "INSERT INTO tenant_acme.contacts (channel_id, external_id, whatsapp_input) \
         VALUES ({phone}, '{typed_number}', '{typed_number}') RETURNING id AS n"
    ));
    let from = app.count(&format!(
        "INSERT INTO tenant_acme.conversations (channel_id, contact_id) VALUES ({phone}, {typed}) RETURNING id AS n"
    ));
    assert!(into < from, "the customer's thread first, in id order");
    let batch = (
        format!("BEGIN; SELECT id FROM tenant_acme.conversations WHERE id = {into} FOR UPDATE"),
        format!("SELECT id FROM tenant_acme.conversations WHERE id = {from} FOR UPDATE"),
    );
    let (begun, batching) = crate::common::transaction_held_until_waited(&app.db.url, batch.0, Some(batch.1));
    begun.recv().expect("begun");
    crate::auto_resolve::in_acme(&app, |tc, log| contacts::known_to_whatsapp_as(tc, log, typed, known));
    let (waited, went) = batching.join().expect("the batch's thread");
    assert_eq!(went, Ok(()), "the batch went");
    assert!(waited, "the fold waited for the batch");
    let left = app.count(&format!(
        "SELECT count(*) AS n FROM tenant_acme.conversations WHERE id = {from} OR contact_id = {typed}"
    ));
    assert_eq!(left, 0, "folded: the number's thread went");
    let typed_left = app.count(&format!("SELECT count(*) AS n FROM tenant_acme.contacts WHERE id = {typed}"));
    assert_eq!(typed_left, 0, "and the contact made for the number");
    let kept = app.count(&format!(
        "SELECT count(*) AS n FROM tenant_acme.contacts WHERE external_id = '{known}' AND whatsapp_input = '{typed_number}'"
    ));
    assert_eq!(kept, 1, "the customer keeps the number written");
}

/// An agent starting a conversation with a number the channel knows as
/// they are taken off the channel's list: the start waits for the change
/// and is refused as for a channel they cannot see (404 `channel`), with
/// nothing queued. It read their place on the list without holding it,
/// and queued the template in a channel they had left (or, the change
/// committed between its reads, answered 404 `conversation`, seen in the
/// mixed chaos mix).
#[actix_web::test]
async fn a_start_as_its_agent_leaves_the_channels_list_waits_and_is_refused() {
    let app = spawn_app().await;
    let (_, al_id, al, phone) = crate::teams::al_listed_on(&app, PHONE).await;
    let number = "351913000555";
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": number, "text": "Bom dia, é o Ângelo"})).await;
    app.processed().await;
    let unlisting = format!("BEGIN; DELETE FROM tenant_acme.channel_members WHERE user_id = {al_id}");
    let (begun, held) = crate::common::transaction_held_until_waited(&app.db.url, unlisting, None);
    begun.recv().expect("begun");
    let start = json!({"channel_id": phone, "phone_number": "+351 913 000 555",
        "template": {"name": "hello_world", "language": "en_US"}, "client_id": "start-leaving-1"});
    let r = app.call("POST", "/api/conversations", Some(&al), Some(start)).await;
    let (waited, went) = held.join().expect("the change's thread");
    assert_eq!(went, Ok(()), "taken off the list");
    assert!(waited, "the start waited for the change");
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (404, Some("not_found")), "{:?}", r.body);
    assert_eq!(r.body["error"]["message"], "channel not found", "{:?}", r.body);
    let queued = app.count("SELECT count(*) AS n FROM tenant_acme.messages WHERE direction = 'out'");
    assert_eq!(queued, 0, "nothing queued");
}

/// A contact of `channel` known with no conversation yet (an import, a
/// marketing choice) and its erasure under way: deleted, not committed
/// until some other transaction waits for it (`transaction_held_until_waited`).
fn a_contact_being_erased(
    app: &TestApp,
    channel: &str,
    external: &str,
    name: &str,
) -> (i64, crate::common::HeldOutcome) {
    let erased = app.count(&format!(
        "INSERT INTO tenant_acme.contacts (channel_id, external_id, name) VALUES ({channel}, '{external}', '{name}') \
         RETURNING id AS n"
    ));
    let erasure = format!("BEGIN; DELETE FROM tenant_acme.contacts WHERE id = {erased}");
    let (begun, erasing) = crate::common::transaction_held_until_waited(&app.db.url, erasure, None);
    begun.recv().expect("begun");
    (erased, erasing)
}

/// A customer erased as the processor stores their message: the batch
/// read the contact, then waited for the erasure to make their
/// conversation. The message is stored, under a new contact, in that
/// batch, not failed and tried again.
#[actix_web::test]
async fn a_message_whose_contact_is_erased_as_its_batch_stores_it_comes_under_a_new_contact() {
    let app = spawn_app_without_workers().await;
    let ctx = acme(&app).await;
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let psid = "7392015648120777";
    assert_eq!(app.webhook(&messenger_text(psid, "m_erased_meanwhile", "Ainda aqui? 👋")).await, 200);
    let (erased, erasing) = a_contact_being_erased(&app, &page, psid, "Zé Apagado");
    let report = one_batch(&app).expect("batch");
    let (waited, went) = erasing.join().expect("the erasure's thread");
    assert_eq!(went, Ok(()), "erased");
    assert!(waited, "the batch waited for the erasure");
    assert_eq!((report.done, report.retried, report.dead), (1, 0, 0), "{report:?}");
    let anew = app.count(&format!(
        "SELECT c.id AS n FROM tenant_acme.contacts c JOIN tenant_acme.conversations v ON v.contact_id = c.id \
           JOIN tenant_acme.messages m ON m.conversation_id = v.id \
         WHERE c.external_id = '{psid}' AND m.external_id = 'm_erased_meanwhile'"
    ));
    assert_ne!(anew, erased, "a new contact for the customer");
}

/// A batch whose webhook body an erasure scrubs after the batch claimed it
/// (a lease, not a lock): the batch waits for the erasure to mark the body
/// done, holding nothing the erasure then needs (the live log's counter),
/// so neither is ended as a deadlock.
#[actix_web::test]
async fn a_batch_marking_a_body_an_erasure_holds_waits_for_it_without_a_deadlock() {
    use crate::common::{a_wait_on, holding};
    let app = spawn_app_without_workers().await;
    let _ctx = acme(&app).await;
    assert_eq!(app.webhook(&messenger_text(PSID, "m_first", "Olá")).await, 200);
    process_now(&app);
    assert_eq!(app.webhook(&messenger_text(PSID, "m_scrubbed", "Olá outra vez")).await, 200);
    let connect = || PgConnection::establish(&app.db.url).expect("connect");
    let (mut conversation_holder, mut erasure, mut watcher) = (connect(), connect(), connect());
    // Holds the batch after its claim, before it writes anything.
    let held = "SELECT count(*) AS n FROM (SELECT id FROM tenant_acme.conversations FOR UPDATE) AS x";
    let holder = holding(&mut conversation_holder, held).expect("conversation held");
    std::thread::scope(|scope| {
        let batch = scope.spawn(|| one_batch(&app));
        assert!(a_wait_on(&mut watcher, holder, std::time::Duration::from_secs(5)), "the batch waits");
        // The erasure's scrub: the body, claimed and so still pending.
        let scrub = "SELECT count(*) AS n FROM (SELECT id FROM public.webhook_events \
                     WHERE status = 'pending' FOR UPDATE SKIP LOCKED) AS x";
        let erasing = holding(&mut erasure, scrub).expect("scrubbing");
        diesel::sql_query("COMMIT").execute(&mut conversation_holder).expect("let go");
        assert!(a_wait_on(&mut watcher, erasing, std::time::Duration::from_secs(5)), "the batch waits for the body");
        // Past the batch's own deadlock check (1 s), so that a cycle, if
        // there is one, is found by the erasure's next statement.
        std::thread::sleep(std::time::Duration::from_millis(1_500));
        let counted = diesel::sql_query("UPDATE tenant_acme.event_seq SET value = value WHERE id = 1")
            .execute(&mut erasure)
            .map_err(|e| e.to_string());
        diesel::sql_query(if counted.is_ok() { "COMMIT" } else { "ROLLBACK" }).execute(&mut erasure).expect("end");
        assert_eq!(counted, Ok(1), "the erasure writes its events");
        let report = batch.join().expect("the batch's thread").expect("batch");
        assert_eq!((report.done, report.retried, report.dead), (1, 0, 0), "{report:?}");
    });
    let stored = app.count("SELECT count(*) AS n FROM tenant_acme.messages WHERE external_id = 'm_scrubbed'");
    assert_eq!(stored, 1);
}

/// A batch whose reactions name a customer's newer message, then an older
/// one, as their erasure takes those messages (in id order): the batch
/// takes the messages it names at once, in id order too, so it waits for
/// the erasure holding none of them, and the erasure is not ended as a
/// deadlock.
#[actix_web::test]
async fn a_batch_naming_messages_an_erasure_takes_waits_for_it_without_a_deadlock() {
    let app = spawn_app_without_workers().await;
    let _ctx = acme(&app).await;
    for mid in ["m_older", "m_newer"] {
        assert_eq!(app.webhook(&messenger_text(PSID, mid, "Olá")).await, 200);
    }
    process_now(&app);
    let ms = chrono::Utc::now().timestamp_millis();
    let react = |mid: &str, emoji: &str| {
        json!({"sender": {"id": PSID}, "recipient": {"id": PAGE_A}, "timestamp": ms,
            "reaction": {"mid": mid, "action": "react", "reaction": "other", "emoji": emoji}})
    };
    let body = json!({"object": "page", "entry": [{"id": PAGE_A, "time": ms,
        "messaging": [react("m_newer", "👍"), react("m_older", "❤️")]}]});
    assert_eq!(app.webhook(&serde_json::to_vec(&body).expect("body")).await, 200);
    // The erasure has taken the conversation and the older message.
    a_batch_meets_an_erasure_holding(&app, PSID, "m_older");
}

/// A note's author names a colleague anew as the note's customer is
/// erased. The rewrite takes the note's conversation before the note (as
/// a retry and the sender take a reply's), so it waits for the erasure,
/// which holds the conversation and takes its messages next. Taking the
/// note first, it held what the erasure wanted while it waited for the
/// conversation (the new mention names it), and one of the two was ended
/// as a deadlock.
#[actix_web::test]
async fn a_note_rewritten_as_its_customer_is_erased_waits_for_the_erasure() {
    use crate::common::transaction_held_until_waited;
    let app = spawn_app().await;
    let (admin, al_id, _al, _page) = crate::teams::al_on_page_a(&app).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "Onde está o reembolso?"})).await;
    app.processed().await;
    let conv = by_contact(&conversations(&app, &admin, "").await, PSID)["id"].as_str().expect("id").to_string();
    let note = json!({"text": "Vou ver", "private": true, "client_id": "n-erased"});
    let made = app.call("POST", &format!("/api/conversations/{conv}/messages"), Some(&admin), Some(note)).await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    let note = made.body["id"].as_str().expect("id").to_string();
    let (begun, held) = transaction_held_until_waited(
        &app.db.url,
        format!("BEGIN; SELECT id FROM tenant_acme.conversations WHERE id = {conv} FOR UPDATE"),
        Some(format!("SELECT id FROM tenant_acme.messages WHERE id = {note} FOR UPDATE")),
    );
    begun.recv().expect("begun");
    let rewrite = json!({"text": "@Al podes ver o reembolso?", "mentions": [al_id]});
    let r = app.call("PATCH", &format!("/api/messages/{note}"), Some(&admin), Some(rewrite)).await;
    let (waited, went) = held.join().expect("the erasure's thread");
    assert_eq!(went, Ok(()), "the erasure took the note");
    assert!(waited, "the rewrite waited for the erasure");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["text"], "@Al podes ver o reembolso?");
}

/// An Instagram read of the newest of two replies (a read of both) comes
/// as their customer is erased: the batch takes the conversation before
/// the reply it names, as the erasure takes the conversation before its
/// messages, so it waits for the erasure holding none of them. Taking the
/// named reply first, it then waited for the older one, which the erasure
/// held as it waited for the named one, and one of the two was ended as a
/// deadlock (seen in the contacts chaos mix).
#[actix_web::test]
async fn an_instagram_read_of_two_replies_as_their_customer_is_erased_waits_for_the_erasure() {
    const IGSID: &str = "6841100000123457";
    let app = spawn_app_without_workers().await;
    let _ctx = acme(&app).await;
    let ms = chrono::Utc::now().timestamp_millis();
    let event = |from: &str, to: &str, at: i64, what: Value| {
        let mut one = json!({"sender": {"id": from}, "recipient": {"id": to}, "timestamp": at});
        one.as_object_mut().expect("object").extend(what.as_object().expect("object").clone());
        serde_json::to_vec(&json!({"object": "instagram", "entry": [{"id": IG_A, "time": at, "messaging": [one]}]}))
            .expect("body")
    };
    let asked = event(IGSID, IG_A, ms - 3_000, json!({"message": {"mid": "ig_asked", "text": "Há tamanho M?"}}));
    assert_eq!(app.webhook(&asked).await, 200);
    process_now(&app);
    for (mid, at) in [("ig_reply_older", ms - 2_000), ("ig_reply_newer", ms - 1_000)] {
        let echo = json!({"message": {"mid": mid, "text": "Há sim! 👕", "is_echo": true}});
        assert_eq!(app.webhook(&event(IG_A, IGSID, at, echo)).await, 200);
        process_now(&app);
    }
    assert_eq!(app.webhook(&event(IGSID, IG_A, ms, json!({"read": {"mid": "ig_reply_newer"}}))).await, 200);
    // The erasure has taken the conversation and, in id order, the older reply.
    a_batch_meets_an_erasure_holding(&app, IGSID, "ig_reply_older");
}

/// An erasure of customer `contact` that has taken their conversation and
/// their message `older` (all the conversations, here), and the batch of
/// the webhook waiting to be processed: the batch waits for the erasure,
/// whose delete then goes rather than ending as a deadlock, and the batch
/// after it; nothing of the customer is left.
fn a_batch_meets_an_erasure_holding(app: &TestApp, contact: &str, older: &str) {
    use crate::common::{a_wait_on, holding};
    let connect = || PgConnection::establish(&app.db.url).expect("connect");
    let (mut erasure, mut watcher) = (connect(), connect());
    let taken = format!(
        "SELECT count(*) AS n FROM (SELECT id FROM tenant_acme.conversations FOR UPDATE) AS c, \
         (SELECT id FROM tenant_acme.messages WHERE external_id = '{older}' FOR UPDATE) AS m"
    );
    let erasing = holding(&mut erasure, &taken).expect("taken");
    std::thread::scope(|scope| {
        let batch = scope.spawn(|| one_batch(app));
        assert!(a_wait_on(&mut watcher, erasing, std::time::Duration::from_secs(5)), "the batch waits");
        // Past the batch's own deadlock check (1 s), so that a cycle, if
        // there is one, is found by the erasure's next statement.
        std::thread::sleep(std::time::Duration::from_millis(1_500));
        let deleted = diesel::sql_query(format!("DELETE FROM tenant_acme.contacts WHERE external_id = '{contact}'"))
            .execute(&mut erasure)
            .map_err(|e| e.to_string());
        diesel::sql_query(if deleted.is_ok() { "COMMIT" } else { "ROLLBACK" }).execute(&mut erasure).expect("end");
        assert_eq!(deleted, Ok(1), "erased");
        let report = batch.join().expect("the batch's thread").expect("batch");
        assert_eq!((report.done, report.retried, report.dead), (1, 0, 0), "{report:?}");
    });
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages"), 0, "nothing of them is left");
}

/// A list whose rows were read before a contact of theirs was erased and
/// whose names are read after (two statements) is told to read its rows
/// again (`Names::listed`), rather than failing (404) or answering a page
/// one short, which would read as the list's last; read again, the page
/// lists the rest. (The race itself, between a list's two statements,
/// was seen in the contacts chaos mix: GETs of the list answered 404.)
#[actix_web::test]
async fn a_list_read_as_a_contact_is_erased_reads_again_without_them() {
    use switchboard::db::tenant_schema::conversations as c;
    use switchboard::inbox::{conversations, views};
    let app = spawn_app_without_workers().await;
    let _ctx = acme(&app).await;
    for (psid, mid) in [("7392015648120811", "m_stays"), ("7392015648120822", "m_goes")] {
        assert_eq!(app.webhook(&messenger_text(psid, mid, "Olá, bom dia ☀️")).await, 200);
    }
    process_now(&app);
    let me = switchboard::ids::UserId(app.count("SELECT id AS n FROM public.users ORDER BY id LIMIT 1"));
    crate::auto_resolve::in_acme(&app, |tc, _log| {
        let rows: Vec<views::ConversationRow> =
            c::table.order(c::id).select(views::ConversationRow::as_select()).load(tc.pg())?;
        assert_eq!(rows.len(), 2);
        // Erased, and committed, between the two statements.
        app.exec("DELETE FROM tenant_acme.contacts WHERE external_id = '7392015648120822'");
        assert!(views::Names::default().listed(tc, &rows)?.is_none(), "told to read the rows again");
        let filter = conversations::Filter::default();
        let page = conversations::list(tc, me, switchboard::auth::Role::Admin, &filter, None, 2)?;
        let contacts: Vec<&str> = page.iter().map(|v| v.contact.external_id.as_str()).collect();
        assert_eq!(contacts, ["7392015648120811"]);
        Ok(())
    });
}

/// Runs the webhook processor once, as a worker would (for an app without
/// workers, whose order of processing the test chooses).
pub(crate) fn process_now(app: &TestApp) {
    let report = one_batch(app).expect("batch");
    assert_eq!(report.dead, 0);
}

/// One batch of the webhook processor, its report (or why it failed).
fn one_batch(app: &TestApp) -> switchboard::AppResult<switchboard::inbox::processor::BatchReport> {
    switchboard::inbox::processor::process_batch(&app.pool, "1234567890123456", &app.state.online, 100)
}

/// A reply's delivery, naming its id, comes before the echo that tells us
/// that id (the send's answer is slow): the echo, matched by our metadata,
/// takes the receipt.
#[actix_web::test]
async fn a_receipt_before_the_echo_of_a_reply_is_applied_when_the_echo_comes() {
    let app = spawn_app_without_workers().await;
    let ctx = acme(&app).await;
    let ms = chrono::Utc::now().timestamp_millis();
    let event = |e: Value| {
        serde_json::to_vec(&json!({"object": "page", "entry": [{"id": PAGE_A, "time": ms, "messaging": [e]}]}))
            .expect("body")
    };
    let question = event(json!({"sender": {"id": PSID}, "recipient": {"id": PAGE_A}, "timestamp": ms - 1_000,
        "message": {"mid": "m_question", "text": "Têm o M?"}}));
    assert_eq!(app.webhook(&question).await, 200);
    process_now(&app);
    let conv = conversations(&app, &ctx.admin, "").await[0]["id"].as_str().expect("id").to_string();
    let (status, msg) = reply(&app, &ctx.admin, &conv, "Temos!", "c-1").await;
    assert_eq!(status, 202, "{msg}");
    let id = msg["id"].as_str().expect("id").to_string();
    let delivery = event(json!({"sender": {"id": PSID}, "recipient": {"id": PAGE_A}, "timestamp": ms + 300,
        "delivery": {"mids": ["m_answer"], "watermark": ms - 60_000}}));
    assert_eq!(app.webhook(&delivery).await, 200);
    process_now(&app);
    let echo = event(json!({"sender": {"id": PAGE_A}, "recipient": {"id": PSID}, "timestamp": ms,
        "message": {"mid": "m_answer", "is_echo": true, "app_id": 1234567890123456_i64, "metadata": format!("sb:{id}"), "text": "Temos!"}}));
    assert_eq!(app.webhook(&echo).await, 200);
    process_now(&app);
    let mine = messages(&app, &ctx.admin, &conv).await.into_iter().find(|m| m["id"] == id.as_str()).expect("reply");
    assert_eq!(
        (mine["external_id"].as_str(), mine["status"].as_str()),
        (Some("m_answer"), Some("delivered")),
        "{mine}"
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.early_statuses"), 0);
}

/// A receipt that writes on its conversation (a Messenger watermark; a
/// WhatsApp reply failed, which has the conversation wait for an answer
/// again) has it locked with the batch's others, in id order, before any
/// is written. Locked when the receipt was applied, a batch holding a
/// newer conversation (a message's) waited for an older one (the
/// receipt's) that a bulk change, locking in id order, held while it
/// waited for the newer: a deadlock, 503 to the person or the batch done
/// again.
#[actix_web::test]
async fn a_receipt_and_a_message_in_one_batch_take_their_conversations_in_order() {
    use crate::common::transaction_held_until_waited;
    let app = spawn_app_without_workers().await;
    let _ctx = acme(&app).await;
    let ms = chrono::Utc::now().timestamp_millis();
    let conv = |external: &str| {
        app.count(&format!(
            "SELECT c.id AS n FROM tenant_acme.conversations c JOIN tenant_acme.contacts k ON k.id = c.contact_id \
              WHERE k.external_id = '{external}'"
        ))
    };
    // The batch, processed while a change holds the older conversation
    // and then takes the newer; answers the batch's report.
    let race = |older: i64, newer: i64| {
        let lock = |id: i64| format!("SELECT id FROM tenant_acme.conversations WHERE id = {id} FOR UPDATE");
        let (begun, held) =
            transaction_held_until_waited(&app.db.url, format!("BEGIN; {}", lock(older)), Some(lock(newer)));
        begun.recv().expect("begun");
        let report = one_batch(&app).expect("batch");
        let (waited, went) = held.join().expect("the change's thread");
        assert_eq!(went, Ok(()), "the change went through");
        assert!(waited, "the batch waited for the change");
        assert_eq!((report.done, report.retried, report.dead), (1, 0, 0), "done at once");
    };

    // Messenger: the first customer reads, the second writes again.
    let (first, second) = ("6610000000000001", "6610000000000002");
    let body = |events: Vec<Value>| {
        serde_json::to_vec(&json!({"object": "page", "entry": [{"id": PAGE_A, "time": ms, "messaging": events}]}))
            .expect("body")
    };
    let said = |psid: &str, mid: &str, at: i64| {
        json!({"sender": {"id": psid}, "recipient": {"id": PAGE_A}, "timestamp": at,
               "message": {"mid": mid, "text": "Olá 👋"}})
    };
    assert_eq!(app.webhook(&body(vec![said(first, "m_first", ms - 2_000)])).await, 200);
    process_now(&app);
    assert_eq!(app.webhook(&body(vec![said(second, "m_second", ms - 1_000)])).await, 200);
    process_now(&app);
    let (older, newer) = (conv(first), conv(second));
    assert!(older < newer);
    let read = json!({"sender": {"id": first}, "recipient": {"id": PAGE_A}, "timestamp": ms,
                      "read": {"watermark": ms - 500}});
    assert_eq!(app.webhook(&body(vec![read, said(second, "m_again", ms + 1)])).await, 200);
    race(older, newer);
    let read_at = format!(
        "SELECT count(*) AS n FROM tenant_acme.conversations WHERE id = {older} AND contact_read_at IS NOT NULL"
    );
    assert_eq!(app.count(&read_at), 1);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages WHERE external_id = 'm_again'"), 1);

    // WhatsApp: the reply to the third fails, the fourth writes again.
    let (third, fourth) = ("351910000301", "351910000302");
    let secs = ms / 1000;
    assert_eq!(app.webhook(&whatsapp_text_at(third, "wamid.third", secs - 2, "Olá")).await, 200);
    process_now(&app);
    assert_eq!(app.webhook(&whatsapp_text_at(fourth, "wamid.fourth", secs - 1, "Olá")).await, 200);
    process_now(&app);
    let (older, newer) = (conv(third), conv(fourth));
    assert!(older < newer);
    // The third's answer, sent as far as anyone knew.
    app.exec(&format!(
        "INSERT INTO tenant_acme.messages (conversation_id, channel_id, direction, sender_kind, status, external_id, text) \
         SELECT id, channel_id, 'out', 'agent', 'sent', 'wamid.answer', 'Olá!' FROM tenant_acme.conversations WHERE id = {older}"
    ));
    app.exec(&format!("UPDATE tenant_acme.conversations SET waiting_since = NULL WHERE id = {older}"));
    let failed = json!({"id": "112233445566778", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15551234567", "phone_number_id": PHONE},
        "statuses": [{"id": "wamid.answer", "status": "failed", "timestamp": secs.to_string(), "recipient_id": third,
                      "errors": [{"code": 131047, "title": "Re-engagement message"}]}]}}]});
    let again = whatsapp_entry(fourth, "Zé", "wamid.again", secs, "Ainda?");
    let batch = json!({"object": "whatsapp_business_account", "entry": [failed, again]});
    assert_eq!(app.webhook(&serde_json::to_vec(&batch).expect("body")).await, 200);
    race(older, newer);
    let waits =
        format!("SELECT count(*) AS n FROM tenant_acme.conversations WHERE id = {older} AND waiting_since IS NOT NULL");
    assert_eq!(app.count(&waits), 1);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages WHERE external_id = 'wamid.again'"), 1);
}

/// A row lock or a statement that waits past the database's `lock_timeout`
/// or `statement_timeout` (an operator's setting) is 503 `retry`, as a
/// deadlock is: the database busy, not an internal error (500).
#[actix_web::test]
async fn a_wait_past_the_databases_timeouts_is_unavailable_not_an_internal_error() {
    use diesel::connection::SimpleConnection;
    use diesel::RunQueryDsl;
    let app = spawn_app().await;
    let _ctx = acme(&app).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "6660000000000002", "text": "Alô?"})).await;
    app.processed().await;
    let conv = app.count("SELECT max(id) AS n FROM tenant_acme.conversations");
    let mut holder = app.db.conn();
    let lock = format!("SELECT id FROM conversations WHERE id = {conv} FOR NO KEY UPDATE");
    holder.batch_execute(&format!("BEGIN; SET LOCAL search_path = tenant_acme; {lock}")).expect("held");
    let mut pooled = app.pool.get().expect("conn");
    let tenant = switchboard::tenancy::find_by_slug(&mut pooled, "acme").expect("q").expect("acme").tenant_id();
    for (setting, waits) in [("lock_timeout", lock.as_str()), ("statement_timeout", "SELECT pg_sleep(2)")] {
        let scope = switchboard::db::TenantScope::system(tenant);
        let err = switchboard::db::with_tenant(&mut pooled, &scope, |tc| {
            diesel::sql_query(format!("SET LOCAL {setting} = '100ms'")).execute(tc.pg())?;
            diesel::sql_query(waits).execute(tc.pg())?;
            Ok::<_, switchboard::AppError>(())
        })
        .expect_err("it timed out");
        assert_eq!((err.status().as_u16(), err.code.as_ref()), (503, "retry"), "{setting}: {err:?}");
    }
    holder.batch_execute("ROLLBACK").expect("released");
}

/// A change of conversations does not wait for a message being written to
/// one of them (its foreign key's check): that writer may hold another of
/// them, as a scheduled message being sent holds its own row, and under
/// `FOR UPDATE` the two deadlocked (503 `retry` to one of them).
#[actix_web::test]
async fn a_change_of_conversations_goes_beside_a_message_being_written_to_one() {
    use crate::common::transaction_held_until_waited;
    let app = spawn_app_without_workers().await;
    let ctx = acme(&app).await;
    let secs = chrono::Utc::now().timestamp();
    for (n, wa) in ["351910000401", "351910000402"].iter().enumerate() {
        let at = secs - 2 + n as i64;
        assert_eq!(app.webhook(&whatsapp_text_at(wa, &format!("wamid.w{n}"), at, "Olá")).await, 200);
        process_now(&app);
    }
    let older = app.count("SELECT min(id) AS n FROM tenant_acme.conversations");
    let newer = app.count("SELECT max(id) AS n FROM tenant_acme.conversations");
    assert!(older < newer);
    // A note being written to the newer; then the writer changes the older.
    let note = format!(
        "BEGIN; INSERT INTO tenant_acme.messages (conversation_id, channel_id, direction, sender_kind, status, text, private) \
         SELECT id, channel_id, 'out', 'agent', 'sent', 'a note', true FROM tenant_acme.conversations WHERE id = {newer}"
    );
    let then = format!("UPDATE tenant_acme.conversations SET priority = 'high' WHERE id = {older}");
    let (begun, held) = transaction_held_until_waited(&app.db.url, note, Some(then));
    begun.recv().expect("begun");
    let ids = json!([older.to_string(), newer.to_string()]);
    let r = app
        .call("POST", "/api/conversations/bulk", Some(&ctx.admin), Some(json!({"ids": ids, "add_labels": ["vip"]})))
        .await;
    let (waited, went) = held.join().expect("the writer's thread");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(!waited, "the change did not wait for the note");
    assert_eq!(went, Ok(()), "the writer went through too");
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.conversations WHERE 'vip' = ANY(labels)"), 2);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages WHERE text = 'a note'"), 1);
}

/// Instagram echoes carry no metadata: one that comes before the send's
/// answer is stored as the page's message. When the answer comes, the two
/// are one: the echo's row goes, the conversation shows the agent's reply
/// as its last message, and the live inbox is told which row went where.
#[actix_web::test]
async fn an_echo_that_beats_the_sends_answer_is_merged_into_the_reply() {
    const IGSID: &str = "6841100000123456";
    let app = spawn_app_without_workers().await;
    let ctx = acme(&app).await;
    let ms = chrono::Utc::now().timestamp_millis();
    let event = |from: &str, to: &str, at: i64, message: Value| {
        serde_json::to_vec(&json!({"object": "instagram", "entry": [{"id": IG_A, "time": at, "messaging": [
            {"sender": {"id": from}, "recipient": {"id": to}, "timestamp": at, "message": message}]}]}))
        .expect("body")
    };
    assert_eq!(app.webhook(&event(IGSID, IG_A, ms - 1_000, json!({"mid": "ig_q", "text": "Ainda há?"}))).await, 200);
    process_now(&app);
    let conv = conversations(&app, &ctx.admin, "").await[0]["id"].as_str().expect("id").to_string();
    let (status, msg) = reply(&app, &ctx.admin, &conv, "Há sim!", "c-1").await;
    assert_eq!(status, 202, "{msg}");
    let id: i64 = msg["id"].as_str().expect("id").parse().expect("number");
    // The echo first (Meta sent it after we queued the reply), then a read
    // naming it: both on the page's row.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let ms = chrono::Utc::now().timestamp_millis();
    assert_eq!(
        app.webhook(&event(IG_A, IGSID, ms, json!({"mid": "ig_answer", "text": "Há sim!", "is_echo": true}))).await,
        200
    );
    let read =
        serde_json::to_vec(&json!({"object": "instagram", "entry": [{"id": IG_A, "time": ms + 500, "messaging": [
        {"sender": {"id": IGSID}, "recipient": {"id": IG_A}, "timestamp": ms + 500, "read": {"mid": "ig_answer"}}]}]}))
        .expect("body");
    assert_eq!(app.webhook(&read).await, 200);
    let react =
        serde_json::to_vec(&json!({"object": "instagram", "entry": [{"id": IG_A, "time": ms + 600, "messaging": [
        {"sender": {"id": IGSID}, "recipient": {"id": IG_A}, "timestamp": ms + 600,
         "reaction": {"mid": "ig_answer", "action": "react", "reaction": "love", "emoji": "❤️"}}]}]}))
        .expect("body");
    assert_eq!(app.webhook(&react).await, 200);
    process_now(&app);
    let ghost: i64 = app.count("SELECT id AS n FROM tenant_acme.messages WHERE external_id = 'ig_answer'");
    assert_ne!(ghost, id);
    // The send's answer.
    let mut pooled = app.pool.get().expect("conn");
    let tenant = switchboard::tenancy::find_by_slug(&mut pooled, "acme").expect("q").expect("acme").tenant_id();
    switchboard::db::with_tenant(&mut pooled, &switchboard::db::TenantScope::system(tenant), |tc| {
        let mut log = switchboard::inbox::events::EventLog::new();
        switchboard::inbox::messages::mark_sent(tc, &mut log, id, "ig_answer", None)?;
        log.notify(tc)
    })
    .expect("mark sent");
    let msgs = messages(&app, &ctx.admin, &conv).await;
    let out: Vec<&Value> = msgs.iter().filter(|m| m["direction"] == "out").collect();
    assert_eq!(out.len(), 1, "{msgs:?}");
    assert_eq!((out[0]["id"].as_str(), out[0]["status"].as_str()), (Some(id.to_string().as_str()), Some("read")));
    assert_eq!(out[0]["reactions"], json!({IGSID: "❤️"}));
    let summary = app.call("GET", &format!("/api/conversations/{conv}"), Some(&ctx.admin), None).await.body;
    assert_eq!(summary["last_message"]["id"].as_str(), Some(id.to_string().as_str()), "{summary}");
    let told = app.count(&format!(
        "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'message.updated' \
          AND payload->>'id' = '{ghost}' AND payload->>'merged_into' = '{id}' AND payload->>'deleted_at' IS NOT NULL"
    ));
    assert_eq!(told, 1);
    let last = app.count(&format!(
        "SELECT count(*) AS n FROM tenant_acme.events WHERE seq = (SELECT max(seq) FROM tenant_acme.events) \
          AND type = 'conversation.updated' AND payload->'last_message'->>'id' = '{id}'"
    ));
    assert_eq!(last, 1);
}

/// An Instagram echo stored while the send's answer is being recorded
/// (its insert not yet committed when the record looks for it) is merged
/// as one stored before: the record waits for it, then takes it in,
/// rather than failing on the id they share and leaving the reply pending,
/// for its job to send it to the customer again.
#[actix_web::test]
async fn an_echo_stored_while_the_send_is_recorded_is_merged_too() {
    const IGSID: &str = "6841100000654321";
    let app = spawn_app_without_workers().await;
    let ctx = acme(&app).await;
    let ms = chrono::Utc::now().timestamp_millis();
    let question = json!({"object": "instagram", "entry": [{"id": IG_A, "time": ms, "messaging": [
        {"sender": {"id": IGSID}, "recipient": {"id": IG_A}, "timestamp": ms, "message": {"mid": "ig_q2", "text": "¿Queda?"}}]}]});
    assert_eq!(app.webhook(&serde_json::to_vec(&question).expect("body")).await, 200);
    process_now(&app);
    let conv = conversations(&app, &ctx.admin, "").await[0]["id"].as_str().expect("id").to_string();
    let (status, msg) = reply(&app, &ctx.admin, &conv, "¡Queda una!", "c-1").await;
    assert_eq!(status, 202, "{msg}");
    let id: i64 = msg["id"].as_str().expect("id").parse().expect("number");

    // The echo's insert, on another connection, committed only once the
    // record waits for it.
    let echo = format!(
        "BEGIN; INSERT INTO tenant_acme.messages (conversation_id, channel_id, direction, sender_kind, text, status, \
                                                  external_id, platform_timestamp, sort_at) \
         SELECT conversation_id, channel_id, 'out', 'page', '¡Queda una!', 'read', 'ig_answer2', now(), now() \
           FROM tenant_acme.messages WHERE id = {id}"
    );
    let (begun, held) = crate::common::transaction_held_until_waited(&app.db.url, echo, None);
    begun.recv().expect("begun");
    let mut pooled = app.pool.get().expect("conn");
    let tenant = switchboard::tenancy::find_by_slug(&mut pooled, "acme").expect("q").expect("acme").tenant_id();
    let recorded = switchboard::db::with_tenant(&mut pooled, &switchboard::db::TenantScope::system(tenant), |tc| {
        let mut log = switchboard::inbox::events::EventLog::new();
        switchboard::inbox::messages::mark_sent(tc, &mut log, id, "ig_answer2", None)?;
        log.notify(tc)
    });
    let (waited, went) = held.join().expect("the echo's thread");
    assert_eq!(went, Ok(()));
    assert!(waited, "the record waited for the echo");
    assert!(recorded.is_ok(), "{:?}", recorded.err().map(|e| e.message));
    let msgs = messages(&app, &ctx.admin, &conv).await;
    let out: Vec<&Value> = msgs.iter().filter(|m| m["direction"] == "out").collect();
    assert_eq!(out.len(), 1, "{msgs:?}");
    let shown = (out[0]["id"].as_str(), out[0]["status"].as_str(), out[0]["external_id"].as_str());
    assert_eq!(shown, (Some(id.to_string().as_str()), Some("read"), Some("ig_answer2")));

    // A reply erased with its contact while on its way has nothing to
    // record: done, not an error its job would try again.
    let gone = switchboard::db::with_tenant(&mut pooled, &switchboard::db::TenantScope::system(tenant), |tc| {
        let mut log = switchboard::inbox::events::EventLog::new();
        switchboard::inbox::messages::mark_sent(tc, &mut log, id + 1_000, "ig_gone", None)
    });
    assert!(gone.is_ok(), "{:?}", gone.err().map(|e| e.message));
}

#[actix_web::test]
async fn a_crash_between_store_and_processing_loses_nothing() {
    let app = spawn_app_without_workers().await;
    acme(&app).await;
    assert_eq!(app.webhook(&fixture("messenger_text.json")).await, 200);
    assert_eq!(app.webhook(&fixture("whatsapp_text.json")).await, 200);
    // A worker claimed one and died (its lease runs out).
    let mut conn = app.db.conn();
    diesel::sql_query("UPDATE public.webhook_events SET attempts = 1, next_attempt_at = now() - interval '1 second' WHERE id = (SELECT min(id) FROM public.webhook_events)")
        .execute(&mut conn)
        .expect("simulate a dead worker's expired lease");
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages"), 0);
    // The next start processes everything.
    let report = one_batch(&app).expect("batch");
    assert_eq!((report.claimed, report.done), (2, 2));
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages"), 2);
    // A suspended tenant's webhooks wait, then land after it resumes.
    switchboard::tenancy::set_status(&mut conn, "acme", switchboard::tenancy::TenantStatus::Suspended)
        .expect("suspend");
    assert_eq!(app.webhook(&fixture("messenger_postback.json")).await, 200);
    let report = one_batch(&app).expect("batch");
    assert_eq!((report.claimed, report.done, report.dead), (1, 0, 0));
    switchboard::tenancy::set_status(&mut conn, "acme", switchboard::tenancy::TenantStatus::Active).expect("resume");
    diesel::sql_query("UPDATE public.webhook_events SET next_attempt_at = now() WHERE status = 'pending'")
        .execute(&mut conn)
        .expect("due now");
    let report = one_batch(&app).expect("batch");
    assert_eq!(report.done, 1);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages"), 3);
}

/// A webhook on which processing panicked or the process died, time after
/// time, must not hold its batch-mates with it for ever: a claim that finds
/// every attempt of one unfinished dead-letters it and processes the rest.
/// A panic while applying one is caught, its transaction given up with
/// its connection, and the processor carries on with a fresh one.
#[actix_web::test]
async fn a_webhook_that_never_finishes_is_dead_lettered_and_a_panic_is_contained() {
    use switchboard::inbox::processor::{guarded, MAX_ATTEMPTS};
    let app = spawn_app_without_workers().await;
    acme(&app).await;
    assert_eq!(app.webhook(&fixture("messenger_text.json")).await, 200);
    assert_eq!(app.webhook(&fixture("whatsapp_text.json")).await, 200);
    let mut conn = app.db.conn();
    diesel::sql_query(format!(
        "UPDATE public.webhook_events SET attempts = {MAX_ATTEMPTS}, next_attempt_at = now() - interval '1 second' \
          WHERE id = (SELECT min(id) FROM public.webhook_events)"
    ))
    .execute(&mut conn)
    .expect("every attempt of the first one died with its worker");
    let report = one_batch(&app).expect("batch");
    assert_eq!((report.claimed, report.done, report.dead), (2, 1, 1));
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages"), 1);
    assert_eq!(
        app.count(
            "SELECT count(*) AS n FROM public.webhook_events WHERE status = 'dead' \
              AND last_error LIKE '8 attempts spent, the last never finished%'"
        ),
        1
    );
    // A panic inside a transaction: an error, the write undone, and the
    // connection handed back one that is not inside that transaction.
    diesel::sql_query("CREATE TABLE public.panic_probe (n int)").execute(&mut conn).expect("table");
    let mut pooled = app.pool.get().expect("connection");
    let out = guarded(&app.pool, &mut pooled, |c| -> switchboard::error::AppResult<()> {
        c.transaction(|c| {
            diesel::sql_query("INSERT INTO public.panic_probe VALUES (1)").execute(c)?;
            panic!("a bug some payload met")
        })
    });
    match out {
        Ok(Err(e)) => assert_eq!(
            (e.code.as_ref(), e.message.as_str()),
            ("processing_panicked", "processing it failed: a bug some payload met")
        ),
        Ok(Ok(())) => panic!("a panic went unnoticed"),
        Err(e) => panic!("no fresh connection: {e}"),
    }
    let again = guarded(&app.pool, &mut pooled, |c| -> switchboard::error::AppResult<()> {
        c.transaction(|c| Ok(diesel::sql_query("INSERT INTO public.panic_probe VALUES (2)").execute(c).map(|_| ())?))
    });
    assert!(matches!(again, Ok(Ok(()))), "{again:?}");
    assert_eq!(app.count("SELECT count(*) AS n FROM public.panic_probe WHERE n = 1"), 0, "the cut write stayed");
    assert_eq!(
        app.count("SELECT count(*) AS n FROM public.panic_probe WHERE n = 2"),
        1,
        "committed inside the old one"
    );
}

pub(crate) async fn reply(app: &TestApp, t: &str, conv: &str, text: &str, client_id: &str) -> (u16, Value) {
    let r = app
        .call(
            "POST",
            &format!("/api/conversations/{conv}/messages"),
            Some(t),
            Some(json!({"text": text, "client_id": client_id})),
        )
        .await;
    (r.status, r.body)
}

async fn message_status(app: &TestApp, t: &str, conv: &str, id: &str) -> Value {
    messages(app, t, conv).await.into_iter().find(|m| m["id"] == id).unwrap_or(Value::Null)
}

/// Meta refuses some sends: a person not available (Messenger 551, WhatsApp
/// 131026) fails the reply with Meta's reason and explanation at once; a rate limit
/// (WhatsApp 130429) keeps it pending and tries again later.
#[actix_web::test]
async fn replies_meta_refuses_fail_with_the_reason_or_wait_for_the_limit() {
    use switchboard::meta::fake::{RATE_LIMITED_WA, UNAVAILABLE_PSID, UNDELIVERABLE_WA};
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    for (to, from) in [(PAGE_A, UNAVAILABLE_PSID), (PHONE, UNDELIVERABLE_WA), (PHONE, RATE_LIMITED_WA)] {
        app.fake("POST", "/_fake/inbound", json!({"to": to, "from": from, "text": "Olá?"})).await;
    }
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let reply_to = |contact: &str| {
        let conv = by_contact(&convs, contact)["id"].as_str().expect("id").to_string();
        let (app, admin) = (&app, ctx.admin.clone());
        async move {
            let (status, msg) = reply(app, &admin, &conv, "Bom dia!", "c-1").await;
            assert_eq!(status, 202, "{msg}");
            (conv, msg["id"].as_str().expect("id").to_string())
        }
    };
    let mut sent = vec![reply_to(UNAVAILABLE_PSID).await, reply_to(UNDELIVERABLE_WA).await];
    // Meta's own explanation, as a WhatsApp `failed` status's shows it
    // (its `error_data.details` before the title in `message`).
    let said = ["(#551) This person isn't available right now.", "Receiver is incapable of receiving this message"];
    for ((conv, id), said) in sent.iter().zip(said) {
        eventually("the refused reply failed", || async {
            message_status(&app, &ctx.admin, conv, id).await["status"] == "failed"
        })
        .await;
        let failed = message_status(&app, &ctx.admin, conv, id).await;
        assert_eq!(failed["error"]["code"], "recipient_unavailable", "{failed}");
        assert_eq!(failed["error"]["message"], said, "{failed}");
    }
    // The number's throughput limit holds its sends, this one's too: tried
    // once, put back uncounted until the hold ends. (Written after the
    // refused ones have failed: a hold found first would keep them too.)
    sent.push(reply_to(RATE_LIMITED_WA).await);
    let (conv, id) = &sent[2];
    eventually("the rate-limited reply was tried and put back", || async {
        app.count(&format!(
            "SELECT count(*) AS n FROM public.send_queue WHERE message_id = {id} AND attempts = 0 \
               AND status = 'pending' AND next_attempt_at > now() AND last_error LIKE '%rate limit%'"
        )) == 1
    })
    .await;
    assert_eq!(message_status(&app, &ctx.admin, conv, id).await["status"], "pending");
    let channel = channel_id(&app, &ctx.admin, PHONE).await;
    let shown = app.call("GET", &format!("/api/channels/{channel}"), Some(&ctx.admin), None).await.body;
    assert_eq!(shown["send_hold"]["code"], 130429, "{shown}");
}

/// Adds agent Al (of no channel yet) to acme: the member, and Al's token.
/// Agents Al and Bo (no channel yet): their user ids.
async fn agents_al_and_bo(app: &TestApp, admin: &str) -> (String, String) {
    let (al, _) = agent_al(app, admin).await;
    let bo = json!({"email": "bo@acme.test", "role": "agent", "password": "bo-password-1"});
    let r = app.call("POST", "/api/members", Some(admin), Some(bo)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = |v: &Value| v["user_id"].as_str().expect("user_id").to_string();
    (id(&al), id(&r.body))
}

pub(crate) async fn agent_al(app: &TestApp, admin: &str) -> (Value, String) {
    let member = json!({"email": "al@acme.test", "role": "agent", "password": "al-password-1"});
    let r = app.call("POST", "/api/members", Some(admin), Some(member)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    (r.body, token(&app.login("al@acme.test", "al-password-1", "acme").await, "access_token"))
}

/// A WhatsApp media object of the number at the fake; its id.
async fn fake_media(app: &TestApp, mime: &str, data: &str) -> String {
    let made =
        app.fake("POST", "/_fake/media", json!({"phone_number_id": PHONE, "mime_type": mime, "data": data})).await;
    made["id"].as_str().expect("media id").to_string()
}

/// A customer's photo or file can be opened from the inbox: WhatsApp media,
/// which Meta serves only to the channel's token, come through this server
/// to agents who may see the conversation; Messenger's CDN links are a
/// redirect away.
#[actix_web::test]
async fn agents_open_what_customers_send() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let photo = fake_media(&app, "image/png", "PNG fake image bytes").await;
    let pdf = fake_media(&app, "application/pdf", "%PDF-1.7 fatura").await;
    let now = chrono::Utc::now().timestamp();
    let media_message = |wamid: &str, kind: &str, media: Value| {
        let mut entry = whatsapp_entry(WA_ID, "Zé", wamid, now, "");
        let m = &mut entry["changes"][0]["value"]["messages"][0];
        m["type"] = json!(kind);
        m[kind] = media;
        if let Some(o) = m.as_object_mut() {
            o.remove("text");
        }
        serde_json::to_vec(&json!({"object": "whatsapp_business_account", "entry": [entry]})).expect("body")
    };
    for body in [
        media_message("wamid.photo", "image", json!({"id": photo, "mime_type": "image/png", "caption": "a encomenda"})),
        media_message(
            "wamid.pdf",
            "document",
            json!({"id": pdf, "mime_type": "application/pdf", "filename": "../Fatura nº 7.pdf"}),
        ),
        media_message("wamid.gone", "image", json!({"id": "999000999000", "mime_type": "image/jpeg"})),
        media_message("wamid.pin", "location", json!({"latitude": 38.7223, "longitude": -9.1393, "name": "Loja"})),
    ] {
        assert_eq!(app.webhook(&body).await, 200);
    }
    assert_eq!(app.webhook(&fixture("messenger_image.json")).await, 200);
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let wa = by_contact(&convs, WA_ID)["id"].as_str().expect("id").to_string();
    let shown = messages(&app, &ctx.admin, &wa).await;
    let url_of = |wamid: &str| url_of_in(&shown, wamid);
    let photo_url = url_of("wamid.photo");
    assert!(photo_url.starts_with("/api/messages/") && photo_url.ends_with("/attachments/0"), "{photo_url}");
    let get = |path: String, t: Option<String>| {
        let req = app.client.get(app.url(&path));
        let req = match t {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        async move { req.send().await.expect("request") }
    };
    let res = get(photo_url.clone(), Some(ctx.admin.clone())).await;
    assert_eq!(res.status(), 200);
    let header = |res: &reqwest::Response, name: &str| {
        res.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    };
    assert_eq!(header(&res, "content-type"), "image/png");
    assert_eq!(header(&res, "content-disposition"), "inline");
    assert_eq!(header(&res, "x-content-type-options"), "nosniff");
    assert_eq!(header(&res, "accept-ranges"), "bytes");
    assert_eq!(res.bytes().await.expect("bytes").as_ref(), b"PNG fake image bytes");
    // A player seeks: the part asked for, from Meta, as Meta gives it.
    let part = app.client.get(app.url(&photo_url)).bearer_auth(&ctx.admin).header("range", "bytes=4-7").send().await;
    let part = part.expect("request");
    assert_eq!((part.status().as_u16(), header(&part, "content-range")), (206, "bytes 4-7/20".to_string()));
    assert_eq!(part.bytes().await.expect("bytes").as_ref(), b"fake");
    let past = app.client.get(app.url(&photo_url)).bearer_auth(&ctx.admin).header("range", "bytes=99-").send().await;
    let past = past.expect("request");
    // With the whole length, so that a player can ask again (RFC 9110 §15.5.17).
    assert_eq!((past.status().as_u16(), header(&past, "content-range")), (416, "bytes */20".to_string()));
    let body: Value = past.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "range_not_satisfiable");
    // Three fetches, one question to Meta for the media's URL.
    let lookups = || async {
        let log = app.fake("GET", "/_fake/requests", json!({})).await;
        log["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.ends_with(&format!("/{photo}"))))
            .count()
    };
    assert_eq!(lookups().await, 1, "the URL Meta gave serves the next parts too");
    // A HEAD says the type and the length, from Meta's lookup: nothing is
    // downloaded, and a Range is not for a HEAD (RFC 9110 §14.2).
    let downloads = || async {
        let log = app.fake("GET", "/_fake/requests", json!({})).await;
        let path = format!("/_fake/media/{photo}/download");
        log["items"].as_array().expect("items").iter().filter(|r| r["path"] == path.as_str()).count()
    };
    let fetched = downloads().await;
    assert_eq!(fetched, 3, "the three GETs above each downloaded");
    let head = app.client.head(app.url(&photo_url)).bearer_auth(&ctx.admin).header("range", "bytes=4-7").send().await;
    let head = head.expect("request");
    assert_eq!(head.status(), 200);
    assert_eq!(
        (header(&head, "content-type"), header(&head, "content-length"), header(&head, "x-content-type-options")),
        ("image/png".to_string(), "20".to_string(), "nosniff".to_string())
    );
    assert!(head.bytes().await.expect("no body").is_empty());
    assert_eq!(downloads().await, fetched, "a HEAD downloads nothing");
    assert_eq!(lookups().await, 1, "nor asks Meta again while the URL is kept");
    // Meta's URL stops working before the server stops using it (Meta's
    // minutes are not a promise): the server asks for a new one, once.
    app.fake("POST", "/_fake/media-urls/expire", json!({})).await;
    let again = app.client.get(app.url(&photo_url)).bearer_auth(&ctx.admin).header("range", "bytes=0-2").send().await;
    let again = again.expect("request");
    assert_eq!((again.status().as_u16(), again.bytes().await.expect("bytes").as_ref()), (206, &b"PNG"[..]));
    assert_eq!(lookups().await, 2, "a new URL, asked for once");
    // A file is a download, never a page of this origin.
    let res = get(url_of("wamid.pdf"), Some(ctx.admin.clone())).await;
    assert_eq!((res.status().as_u16(), header(&res, "content-type")), (200, "application/pdf".to_string()));
    // Under the customer's file name (its last segment; RFC 5987 beside an
    // ASCII stand-in, as it is not ASCII).
    assert_eq!(
        header(&res, "content-disposition"),
        "attachment; filename=\"Fatura n_ 7.pdf\"; filename*=UTF-8''Fatura%20n%C2%BA%207.pdf"
    );
    assert!(header(&res, "content-security-policy").contains("sandbox"));
    // Meta keeps media 30 days: then there is nothing to show.
    let gone = app.call("GET", &url_of("wamid.gone"), Some(&ctx.admin), None).await;
    assert_eq!((gone.status, gone.body["error"]["code"].as_str()), (404, Some("media_unavailable")), "{:?}", gone.body);
    let gone = app.client.head(app.url(&url_of("wamid.gone"))).bearer_auth(&ctx.admin).send().await.expect("HEAD");
    assert_eq!(gone.status(), 404, "a HEAD asks Meta, and says what a GET would");
    // A pin has nothing to fetch; nor has an index past the end.
    let pin = shown.iter().find(|m| m["external_id"] == "wamid.pin").expect("pin");
    let pin_path = format!("/api/messages/{}/attachments/0", pin["id"].as_str().expect("id"));
    let r = app.call("GET", &pin_path, Some(&ctx.admin), None).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (404, Some("no_media")));
    let r = app.call("GET", &photo_url.replace("/attachments/0", "/attachments/7"), Some(&ctx.admin), None).await;
    assert_eq!(r.status, 404);
    // Messenger's CDN link: a redirect.
    let fb = by_contact(&convs, PSID)["id"].as_str().expect("id").to_string();
    let image = messages(&app, &ctx.admin, &fb)
        .await
        .into_iter()
        .find(|m| m["attachments"][0]["type"] == "image")
        .expect("image");
    let cdn = image["attachments"][0]["url"].as_str().expect("cdn url").to_string();
    let res =
        get(format!("/api/messages/{}/attachments/0", image["id"].as_str().expect("id")), Some(ctx.admin.clone()))
            .await;
    assert_eq!((res.status().as_u16(), header(&res, "location")), (302, cdn));
    // The fake's customers send photos as Meta does (the demo's do).
    let sent = app
        .fake(
            "POST",
            "/_fake/inbound",
            json!({"to": PHONE, "from": WA_ID, "text": "esta", "image": {"mime_type": "image/svg+xml", "data": "<svg/>"}}),
        )
        .await;
    let fixture_image: Value = serde_json::from_slice(&fixture("whatsapp_image.json")).expect("fixture");
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
        k.sort();
        k
    };
    let image_of = |v: &Value| v["entry"][0]["changes"][0]["value"]["messages"][0]["image"].clone();
    assert_eq!(keys(&image_of(&sent["webhook"])), keys(&image_of(&fixture_image)));
    app.processed().await;
    let wamid = sent["webhook"]["entry"][0]["changes"][0]["value"]["messages"][0]["id"].as_str().expect("wamid");
    let m = messages(&app, &ctx.admin, &wa).await.into_iter().find(|m| m["external_id"] == wamid).expect("the photo");
    assert_eq!(m["text"], "esta");
    let res = get(m["attachments"][0]["url"].as_str().expect("url").to_string(), Some(ctx.admin.clone())).await;
    assert_eq!(header(&res, "content-type"), "image/svg+xml");
    assert_eq!(res.bytes().await.expect("bytes").as_ref(), b"<svg/>");
    // Only for who may see the conversation.
    assert_eq!(get(photo_url.clone(), None).await.status(), 401);
    // A link stands for the token five minutes, for a <video src>: for this
    // attachment only, and only as this server signed it.
    let made = app.call("POST", &format!("{photo_url}/link"), Some(&ctx.admin), None).await;
    assert_eq!((made.status, made.body["expires_in"].as_i64()), (200, Some(300)), "{:?}", made.body);
    let link = made.body["url"].as_str().expect("url").to_string();
    assert!(link.starts_with(&format!("{photo_url}?link=")), "{link}");
    let res = get(link.clone(), None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.bytes().await.expect("bytes").as_ref(), b"PNG fake image bytes");
    let part = app.client.get(app.url(&link)).header("range", "bytes=0-2").send().await.expect("request");
    assert_eq!((part.status().as_u16(), part.bytes().await.expect("bytes").as_ref()), (206, &b"PNG"[..]));
    let pdf_path = url_of("wamid.pdf");
    for forged in [
        link.replace(&photo_url, &pdf_path),
        format!("{}{}", &link[..link.len() - 1], if link.ends_with('A') { 'B' } else { 'A' }),
        format!("{photo_url}?link=not-a-link"),
    ] {
        let r = app.call("GET", &forged, None, None).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("invalid_link")), "{forged}");
    }
    let me = app.call("GET", "/api/me", Some(&ctx.admin), None).await.body;
    let tenant: i64 = me["tenant"]["id"].as_str().expect("tenant id").parse().expect("number");
    let message: i64 = photo_url.split('/').nth(3).expect("id").parse().expect("number");
    let claims = json!({"t": tenant, "m": message, "i": 0, "e": chrono::Utc::now().timestamp() - 1});
    let expired = format!("{photo_url}?link={}", switchboard::signed::sign(&app.state.link_key, &claims));
    assert_eq!(app.call("GET", &expired, None, None).await.status, 403);
    let (_, al) = agent_al(&app, &ctx.admin).await;
    let r = app.call("POST", &format!("{photo_url}/link"), Some(&al), None).await;
    assert_eq!(r.status, 404, "no link to what one may not see");
    let r = app.call("GET", &photo_url, Some(&al), None).await;
    assert_eq!(r.status, 404, "an agent without the channel sees no such message");
    let other = app.signup("globex", "gil@globex.test", "gil-password-1").await;
    let r = app.call("GET", &photo_url, Some(&token(&other, "access_token")), None).await;
    assert_eq!(r.status, 404, "another tenant's message id names nothing here");
    // Meta refuses the channel's token: 409, and the channel asks to be
    // reconnected, as after a refused send.
    let late = fake_media(&app, "image/jpeg", "JPEG").await;
    let body = media_message("wamid.late", "image", json!({"id": late, "mime_type": "image/jpeg"}));
    assert_eq!(app.webhook(&body).await, 200);
    app.processed().await;
    let expired = json!({"path": late, "status": 400, "error": {"code": 190, "error_subcode": 463, "message": "Error validating access token: Session has expired"}});
    app.fake("POST", "/_fake/errors", expired).await;
    let shown = messages(&app, &ctx.admin, &wa).await;
    let r = app.call("GET", &url_of_in(&shown, "wamid.late"), Some(&ctx.admin), None).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("meta_token_invalid")), "{:?}", r.body);
    let channel = by_contact(&convs, WA_ID)["channel_id"].as_str().expect("channel").to_string();
    let ch = app.call("GET", &format!("/api/channels/{channel}"), Some(&ctx.admin), None).await;
    assert_eq!(ch.body["status"], "reauth_required");
}

/// The `url` of the first attachment of the message Meta knows as `mid`.
fn url_of_in(shown: &[Value], mid: &str) -> String {
    let m = shown.iter().find(|m| m["external_id"] == mid).expect("message");
    m["attachments"][0]["url"].as_str().expect("a url for the media").to_string()
}

/// WhatsApp accepts a send outside the customer's window and reports the
/// failure later, by a `failed` status (131047): the message shows the
/// same reason a refused send shows, with Meta's code beside it.
#[actix_web::test]
async fn a_whatsapp_failure_reported_later_shows_the_same_reason() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    // Meta last heard from the customer 25 hours ago...
    let long_ago = (chrono::Utc::now() - chrono::Duration::hours(25)).to_rfc3339();
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Olá", "at": long_ago})).await;
    app.processed().await;
    let conv = by_contact(&conversations(&app, &ctx.admin, "").await, WA_ID)["id"].as_str().expect("id").to_string();
    let (status, body) = reply(&app, &ctx.admin, &conv, "Bom dia!", "w-0").await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("outside_window")), "{body}");
    // ...while a message we were told of is recent: here the window is
    // open, at Meta it is not.
    let now = chrono::Utc::now().timestamp();
    assert_eq!(app.webhook(&whatsapp_text_at(WA_ID, "wamid.recent-only-here", now, "Ainda aí?")).await, 200);
    app.processed().await;
    let (status, msg) = reply(&app, &ctx.admin, &conv, "Bom dia!", "w-1").await;
    assert_eq!(status, 202, "{msg}");
    let id = msg["id"].as_str().expect("id").to_string();
    eventually("the reply failed by webhook", || async {
        message_status(&app, &ctx.admin, &conv, &id).await["status"] == "failed"
    })
    .await;
    let failed = message_status(&app, &ctx.admin, &conv, &id).await;
    assert_eq!((&failed["error"]["code"], &failed["error"]["meta_code"]), (&json!("outside_window"), &json!(131047)));
    assert!(failed["error"]["message"].as_str().is_some_and(|m| m.contains("24 hours")), "{failed}");
    assert!(failed["external_id"].is_string(), "Meta accepted it first: {failed}");
}

/// Outside WhatsApp's 24-hour window free text is refused, and an agent
/// sends an approved template instead, its parameters filled in: listed
/// from Meta, checked before it is queued, sent as a template, shown as
/// the customer reads it, safe to retry.
#[actix_web::test]
async fn a_whatsapp_template_reopens_a_closed_window() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let waba = "112233445566778";
    let add = |t: Value| app.fake("POST", "/_fake/templates", t);
    add(json!({"waba_id": waba, "name": "order_update", "language": "pt_BR", "header": "Pedido {{1}}",
        "body": "Olá {{1}}, o seu pedido {{2}} saiu para entrega.", "footer": "Loja Exemplo"}))
    .await;
    add(json!({"waba_id": waba, "name": "promo", "language": "pt_BR", "body": "Promoção!", "status": "PENDING"})).await;
    let two_days_ago = (chrono::Utc::now() - chrono::Duration::hours(48)).to_rfc3339();
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Olá", "at": two_days_ago})).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "Olá"})).await;
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let (wa, fb) = (by_contact(&convs, WA_ID), by_contact(&convs, PSID));
    assert_eq!((&wa["can_reply"], &wa["can_send_template"]), (&json!(false), &json!(true)), "{wa}");
    assert_eq!(fb["can_send_template"], false, "{fb}");
    let (wa_conv, fb_conv) = (wa["id"].as_str().expect("id").to_string(), fb["id"].as_str().expect("id").to_string());
    let (wa_channel, fb_channel) = (wa["channel_id"].as_str().expect("id"), fb["channel_id"].as_str().expect("id"));

    // The channel's templates, as Meta has them; approved first.
    let r = app.call("GET", &format!("/api/channels/{wa_channel}/templates"), Some(&ctx.admin), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let items = r.body["items"].as_array().expect("items").clone();
    let named = |n: &str| items.iter().find(|t| t["name"] == n).cloned().unwrap_or_default();
    assert_eq!(named("order_update")["body_parameters"], 2);
    assert_eq!(named("order_update")["header_parameters"], 1);
    assert_eq!((&named("hello_world")["sendable"], &named("promo")["sendable"]), (&json!(true), &json!(false)));
    assert_eq!(items.last().map(|t| t["name"].clone()), Some(json!("promo")));
    let r = app.call("GET", &format!("/api/channels/{fb_channel}/templates"), Some(&ctx.admin), None).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("templates_whatsapp_only")));

    // Text is refused; what a template send gets wrong is said before
    // anything is queued.
    let (status, body) = reply(&app, &ctx.admin, &wa_conv, "Bom dia!", "t-0").await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("outside_window")), "{body}");
    let send = |conv: String, body: Value| {
        let (app, admin) = (&app, ctx.admin.clone());
        async move { app.call("POST", &format!("/api/conversations/{conv}/messages"), Some(&admin), Some(body)).await }
    };
    let order = |params: Value| {
        json!({"template": {"name": "order_update", "language": "pt_BR", "header_parameters": ["#4521"],
            "parameters": params}, "client_id": "t-1"})
    };
    for (body, code) in [
        (order(json!(["Zoë"])), "invalid_template_parameters"),
        (order(json!(["Zoë", "#4521\nx"])), "invalid_template_parameters"),
        (json!({"template": {"name": "order_update", "language": "en_US"}}), "unknown_template"),
        (json!({"template": {"name": "promo", "language": "pt_BR"}}), "template_not_approved"),
        (json!({"text": "x", "template": {"name": "hello_world", "language": "en_US"}}), "invalid_body"),
    ] {
        let r = send(wa_conv.clone(), body.clone()).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some(code)), "{body}: {:?}", r.body);
    }
    let r = send(fb_conv.clone(), json!({"template": {"name": "hello_world", "language": "en_US"}})).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("templates_whatsapp_only")));
    assert!(messages(&app, &ctx.admin, &wa_conv).await.iter().all(|m| m["direction"] == "in"), "nothing queued");

    // The template goes out, shown as the customer reads it, and is read.
    let r = send(wa_conv.clone(), order(json!(["Zoë", "#4521"]))).await;
    assert_eq!((r.status, r.body["status"].as_str()), (202, Some("pending")), "{:?}", r.body);
    assert_eq!(r.body["text"], "Pedido #4521\n\nOlá Zoë, o seu pedido #4521 saiu para entrega.\n\nLoja Exemplo");
    assert_eq!(
        (&r.body["attachments"][0]["type"], &r.body["attachments"][0]["name"]),
        (&json!("template"), &json!("order_update"))
    );
    let id = r.body["id"].as_str().expect("id").to_string();
    eventually("the template read", || async {
        message_status(&app, &ctx.admin, &wa_conv, &id).await["status"] == "read"
    })
    .await;
    // A retry returns the same message and sends nothing more.
    let again = send(wa_conv.clone(), order(json!(["Zoë", "#4521"]))).await;
    assert_eq!((again.status, again.body["id"].as_str()), (202, Some(id.as_str())));
    // Another template under that client_id is no retry.
    let reused = send(wa_conv.clone(), order(json!(["Ana", "#4521"]))).await;
    assert_eq!((reused.status, reused.body["error"]["code"].as_str()), (409, Some("client_id_reused")));
    let log = app.fake("GET", "/_fake/requests", json!({})).await;
    let sent: Vec<Value> = log["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|r| r["path"] == format!("/{PHONE}/messages") && r["body"]["type"] == "template")
        .map(|r| r["body"]["template"].clone())
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        sent[0],
        json!({"name": "order_update", "language": {"code": "pt_BR"}, "components": [
            {"type": "header", "parameters": [{"type": "text", "text": "#4521"}]},
            {"type": "body", "parameters": [{"type": "text", "text": "Zoë"}, {"type": "text", "text": "#4521"}]}]})
    );
    // The sample every account has takes no parameters.
    let r = send(wa_conv.clone(), json!({"template": {"name": "hello_world", "language": "en_US"}})).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert!(r.body["text"].as_str().is_some_and(|t| t.starts_with("Hello World\n\nWelcome")), "{:?}", r.body);
    // Parameters may hold variables, filled in for the customer; a retry
    // fills them in alike and finds its message.
    let first_name = wa["contact"]["name"].as_str().and_then(|n| n.split_whitespace().next()).unwrap_or("cliente");
    let named = json!({"template": {"name": "order_update", "language": "pt_BR", "header_parameters": ["#4522"],
        "parameters": ["{{contact.first_name | cliente}}", "#4522"]}, "client_id": "t-2"});
    let r = send(wa_conv.clone(), named.clone()).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let expected = format!("Pedido #4522\n\nOlá {first_name}, o seu pedido #4522 saiu para entrega.\n\nLoja Exemplo");
    assert_eq!(r.body["text"], json!(expected));
    assert_eq!(r.body["attachments"][0]["parameters"], json!([first_name, "#4522"]));
    let again = send(wa_conv.clone(), named).await;
    assert_eq!((again.status, &again.body["id"]), (202, &r.body["id"]), "{:?}", again.body);
}

/// Meta reviews templates on its own schedule and says so by webhook: the
/// number's agents are told at once, the kept list is dropped (a paused
/// template is not offered for the minute it would otherwise be kept), the
/// admins' audit log has it once, and a retry delivered late changes
/// nothing.
#[actix_web::test]
async fn a_template_meta_pauses_is_announced_and_no_longer_offered() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let channel = channel_id(&app, &ctx.admin, PHONE).await;
    let hello = || async {
        let r = app.call("GET", &format!("/api/channels/{channel}/templates"), Some(&ctx.admin), None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let items = r.body["items"].as_array().expect("items").clone();
        items.into_iter().find(|t| t["name"] == "hello_world").expect("hello_world")
    };
    assert_eq!((&hello().await["status"], &hello().await["sendable"]), (&json!("APPROVED"), &json!(true)));
    let mut socket = crate::realtime::ws(&app, "", Some(&ctx.admin), None).await.expect("socket");

    let review = |event: &str| {
        let app = &app;
        let body = json!({"waba_id": "112233445566778", "name": "hello_world", "language": "en_US",
            "event": event, "reason": "LOW_QUALITY"});
        async move {
            let r = app.fake("POST", "/_fake/template-status", body).await;
            assert_eq!(r["delivered_status"], 200, "{r}");
            app.processed().await;
            r["webhook"].clone()
        }
    };
    let paused = review("PAUSED").await;
    let frame = crate::realtime::until(&mut socket, "template.updated", std::time::Duration::from_secs(10))
        .await
        .expect("template.updated");
    assert_eq!(frame["data"]["channel_id"], json!(channel), "{frame}");
    assert_eq!(
        (&frame["data"]["name"], &frame["data"]["language"], &frame["data"]["event"], &frame["data"]["reason"]),
        (&json!("hello_world"), &json!("en_US"), &json!("PAUSED"), &json!("LOW_QUALITY")),
        "{frame}"
    );
    assert!(frame["seq"].as_i64().is_some(), "logged, so a resuming socket gets it: {frame}");
    // Read from Meta again at once, not a minute later.
    assert_eq!((&hello().await["status"], &hello().await["sendable"]), (&json!("PAUSED"), &json!(false)));

    // Meta's retry of the same webhook adds nothing.
    assert_eq!(app.webhook(&serde_json::to_vec(&paused).expect("body")).await, 200);
    app.processed().await;
    // Reinstated; then the pause again, delivered late (older than the
    // reinstatement): recorded, not announced.
    let reinstated = review("REINSTATED").await;
    assert_eq!(hello().await["sendable"], true);
    let mut late = paused.clone();
    late["entry"][0]["time"] = json!(reinstated["entry"][0]["time"].as_i64().expect("time") - 60);
    assert_eq!(app.webhook(&serde_json::to_vec(&late).expect("body")).await, 200);
    app.processed().await;

    let announced = app.count(
        "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'template.updated' \
          AND payload->>'name' = 'hello_world'",
    );
    assert_eq!(announced, 2, "the pause and the reinstatement, once each");
    let log = app.call("GET", "/api/audit-log?limit=200", Some(&ctx.admin), None).await;
    let events: Vec<&str> = log.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"] == "channel.whatsapp_template_status")
        .filter_map(|e| e["details"]["event"].as_str())
        .collect();
    assert_eq!(events, ["PAUSED", "REINSTATED", "PAUSED"], "newest first");
    // Only the WhatsApp number heard of it; the page did not.
    let elsewhere = format!(
        "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'template.updated' AND channel_id <> {channel}"
    );
    assert_eq!(app.count(&elsewhere), 0);
}

/// Meta's rate limit holds the channel's sends (`channels::send_hold`):
/// the reply that met it and those queued after wait, pending and in order,
/// with no call to Meta meanwhile ("seen" and typing are dropped), for as
/// long as Meta said (its usage header), the hold shown on the channel and
/// announced; once it ends they go, in order, and the hold is lifted.
/// Without Meta's word the first hold is 15 s; a business account's limit
/// (80007) holds every number of that account, and no other.
#[actix_web::test]
async fn metas_rate_limit_holds_the_channels_sends_until_it_passes() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "Olá?"})).await;
    app.processed().await;
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let conv = by_contact(&conversations(&app, &ctx.admin, "").await, PSID)["id"].as_str().expect("id").to_string();
    let length = |hold: &Value| {
        let at = |k: &str| chrono::DateTime::parse_from_rfc3339(hold[k].as_str().expect("a time")).expect("rfc 3339");
        (at("until") - at("since")).num_seconds()
    };
    let sends = || async {
        let log = app.fake("GET", "/_fake/requests", json!({})).await;
        let page_calls = format!("/{PAGE_A}/messages");
        log["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|r| r["path"].as_str().is_some_and(|p| p.ends_with(&page_calls)))
            .map(|r| {
                r["body"]["message"]["text"].as_str().or(r["body"]["sender_action"].as_str()).unwrap_or("").to_string()
            })
            .collect::<Vec<_>>()
    };
    let before = sends().await.len();
    let mut socket = crate::realtime::ws(&app, "", Some(&ctx.admin), None).await.expect("socket");
    let usage = json!({"112233445566778": [{"type": "messenger", "call_count": 100, "total_cputime": 14,
        "total_time": 31, "estimated_time_to_regain_access": 7}]});
    app.fake(
        "POST",
        "/_fake/errors",
        json!({"path": format!("/{PAGE_A}/messages"), "method": "POST",
            "error": {"code": 80006, "message": "(#80006) There have been too many messages sent from this page. Please wait a while and try again."},
            "headers": {"X-Business-Use-Case-Usage": usage}}),
    )
    .await;
    let (status, first) = reply(&app, &ctx.admin, &conv, "Primeira", "held-1").await;
    assert_eq!(status, 202, "{first}");
    let frame = crate::realtime::until(&mut socket, "channel.updated", std::time::Duration::from_secs(10))
        .await
        .expect("channel.updated");
    let hold = frame["data"]["send_hold"].clone();
    assert_eq!((&frame["data"]["id"], &hold["code"]), (&json!(page), &json!(80006)), "{frame}");
    assert_eq!(length(&hold), 7 * 60, "as long as Meta said: {hold}");
    let shown = app.call("GET", &format!("/api/channels/{page}"), Some(&ctx.admin), None).await.body;
    assert_eq!(shown["send_hold"], hold);
    let (status, second) = reply(&app, &ctx.admin, &conv, "Segunda", "held-2").await;
    assert_eq!(status, 202, "{second}");
    let (first, second) = (first["id"].as_str().expect("id"), second["id"].as_str().expect("id"));
    let r = app.call("POST", &format!("/api/conversations/{conv}/read"), Some(&ctx.admin), None).await;
    assert!(r.status < 300, "{:?}", r.body);
    let r = app
        .call("POST", &format!("/api/conversations/{conv}/typing"), Some(&ctx.admin), Some(json!({"on": true})))
        .await;
    assert!(r.status < 300, "{:?}", r.body);
    // The seen, queued after the second reply, is dropped by a claim that
    // would have taken the second too, had it not waited behind the first.
    eventually("the seen dropped, the second reply waiting behind the held first, untried", || async {
        app.count("SELECT count(*) AS n FROM public.send_queue WHERE kind = 'mark_seen' AND status = 'pending'") == 0
            && app.count(&format!(
                "SELECT count(*) AS n FROM public.send_queue WHERE message_id = {second} AND attempts = 0 \
                   AND status = 'pending' AND last_error IS NULL"
            )) == 1
            && app.count(&format!(
                "SELECT count(*) AS n FROM public.send_queue WHERE message_id = {first} AND status = 'pending' \
                   AND last_error LIKE '%80006%' AND next_attempt_at > now() + interval '6 minutes'"
            )) == 1
    })
    .await;
    assert_eq!(sends().await[before..], ["Primeira"], "one call, the one Meta refused");
    for id in [first, second] {
        assert_eq!(message_status(&app, &ctx.admin, &conv, id).await["status"], "pending");
    }

    // The hold ends (as if seven minutes passed): both go, in order, and it is lifted.
    app.count(&format!(
        "WITH ended AS (UPDATE tenant_acme.channels SET send_hold = jsonb_set(send_hold, '{{until}}', \
            to_jsonb(now() - interval '1 second')) WHERE id = {page} RETURNING 1), \
         due AS (UPDATE public.send_queue SET next_attempt_at = now() WHERE status = 'pending' RETURNING 1) \
         SELECT (SELECT count(*) FROM ended) + (SELECT count(*) FROM due) AS n"
    ));
    for id in [first, second] {
        eventually("the held reply went", || async {
            message_status(&app, &ctx.admin, &conv, id).await["status"] != "pending"
        })
        .await;
        assert_eq!(message_status(&app, &ctx.admin, &conv, id).await["error"], Value::Null);
    }
    assert_eq!(sends().await[before..], ["Primeira", "Primeira", "Segunda"]);
    let frame = crate::realtime::until(&mut socket, "channel.updated", std::time::Duration::from_secs(10))
        .await
        .expect("channel.updated");
    assert_eq!(frame["data"]["send_hold"], Value::Null, "{frame}");
    let shown = app.call("GET", &format!("/api/channels/{page}"), Some(&ctx.admin), None).await.body;
    assert_eq!(shown["send_hold"], Value::Null, "lifted: {shown}");
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.channels WHERE send_hold IS NOT NULL"), 0);

    // No word from Meta of how long: 15 s.
    app.fake(
        "POST",
        "/_fake/errors",
        json!({"path": format!("/{PAGE_A}/messages"), "method": "POST",
        "error": {"code": 613, "message": "(#613) Calls to this api have exceeded the rate limit."}}),
    )
    .await;
    let (status, third) = reply(&app, &ctx.admin, &conv, "Terceira", "held-3").await;
    assert_eq!(status, 202, "{third}");
    eventually("the page was held again", || async {
        app.call("GET", &format!("/api/channels/{page}"), Some(&ctx.admin), None).await.body["send_hold"]["code"] == 613
    })
    .await;
    let shown = app.call("GET", &format!("/api/channels/{page}"), Some(&ctx.admin), None).await.body;
    assert_eq!(length(&shown["send_hold"]), 15, "{shown}");

    // A business account's limit holds its numbers, not another account's.
    let numbers = ["109000000000001", "109000000000002"];
    let made = app
        .fake(
            "POST",
            "/_fake/users",
            json!({"name": "Bia", "wabas": [{"id": "445566778899001", "phone_numbers": [
                {"id": numbers[0], "display_phone_number": "+1 555-000-0001", "verified_name": "Loja Azul Sul"},
                {"id": numbers[1], "display_phone_number": "+1 555-000-0002", "verified_name": "Loja Azul Norte"}]}]}),
        )
        .await;
    let waba_token = made["wabas"][0]["access_token"].as_str().expect("token");
    let r = app
        .call(
            "POST",
            "/api/channels/whatsapp/connect",
            Some(&ctx.admin),
            Some(json!({"waba_id": "445566778899001", "access_token": waba_token})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    app.fake("POST", "/_fake/inbound", json!({"to": numbers[0], "from": "351910000077", "text": "Olá"})).await;
    app.processed().await;
    let wa_conv =
        conversations(&app, &ctx.admin, "").await.into_iter().find(|c| c["contact"]["external_id"] == "351910000077");
    let wa_conv = wa_conv.expect("the conversation")["id"].as_str().expect("id").to_string();
    app.fake("POST", "/_fake/errors", json!({"path": format!("/{}/messages", numbers[0]), "method": "POST", "status": 429,
        "error": {"code": 80007, "message": "(#80007) Rate limit issues: the WhatsApp Business Account has reached its rate limit."}}))
    .await;
    let (status, body) = reply(&app, &ctx.admin, &wa_conv, "Bom dia", "waba-1").await;
    assert_eq!(status, 202, "{body}");
    let held = |external: &'static str| {
        let (app, admin) = (&app, ctx.admin.clone());
        async move {
            let id = channel_id(app, &admin, external).await;
            app.call("GET", &format!("/api/channels/{id}"), Some(&admin), None).await.body["send_hold"]["code"].clone()
        }
    };
    eventually("the account's numbers were held", || async {
        held(numbers[0]).await == 80007 && held(numbers[1]).await == 80007
    })
    .await;
    assert_eq!(held(PHONE).await, Value::Null, "another account's number sends");
}

/// Template pacing: Meta takes a template it paces but holds it
/// (`held_for_quality_assessment`). The message shows the hold, live and
/// in the list, until Meta lets it go (then its statuses come as any
/// send's) or drops it (a `failed` status, 132015, and the template
/// paused): the reply then fails with the reason a paused template gets.
#[actix_web::test]
async fn a_template_meta_holds_shows_held_until_it_goes_or_is_dropped() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let waba = "112233445566778";
    let template = json!({"waba_id": waba, "name": "novidades", "language": "pt_BR", "category": "MARKETING",
        "body": "Chegaram as novidades de inverno, {{1}}! 🧣"});
    app.fake("POST", "/_fake/templates", template).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Têm casacos?"})).await;
    app.processed().await;
    let conv = by_contact(&conversations(&app, &ctx.admin, "").await, WA_ID)["id"].as_str().expect("id").to_string();
    let channel = channel_id(&app, &ctx.admin, PHONE).await;
    let pacing = |action: &str| {
        let app = &app;
        let body = json!({"waba_id": waba, "name": "novidades", "language": "pt_BR", "action": action});
        async move {
            let r = app.fake("POST", "/_fake/template-pacing", body).await;
            app.processed().await;
            r
        }
    };
    let send = |client_id: &str| {
        let (app, admin, conv) = (&app, ctx.admin.clone(), conv.clone());
        let body = json!({"template": {"name": "novidades", "language": "pt_BR", "parameters": ["Zoë"]},
            "client_id": client_id});
        async move {
            let r = app.call("POST", &format!("/api/conversations/{conv}/messages"), Some(&admin), Some(body)).await;
            assert_eq!(r.status, 202, "{:?}", r.body);
            assert_eq!(r.body["held_by_meta"], Value::Null, "not sent yet: {:?}", r.body);
            r.body["id"].as_str().expect("id").to_string()
        }
    };
    let mut socket = crate::realtime::ws(&app, "", Some(&ctx.admin), None).await.expect("socket");

    // Held, then let go: its statuses come as any send's.
    pacing("hold").await;
    let first = send("pace-1").await;
    eventually("the first held", || async {
        message_status(&app, &ctx.admin, &conv, &first).await["held_by_meta"] == "held_for_quality_assessment"
    })
    .await;
    let shown = message_status(&app, &ctx.admin, &conv, &first).await;
    assert_eq!((&shown["status"], &shown["error"]), (&json!("sent"), &Value::Null), "{shown}");
    let live = loop {
        let f = crate::realtime::until(&mut socket, "message.updated", std::time::Duration::from_secs(10))
            .await
            .expect("message.updated");
        if f["data"]["id"] == first.as_str() && f["data"]["held_by_meta"].is_string() {
            break f;
        }
    };
    assert_eq!(live["data"]["held_by_meta"], "held_for_quality_assessment", "{live}");
    // Meta said nothing more meanwhile: still held.
    app.processed().await;
    assert_eq!(message_status(&app, &ctx.admin, &conv, &first).await["held_by_meta"], "held_for_quality_assessment");
    // Meta lets it go: its `sent` (the first status Meta gives it) ends
    // the hold, though the message showed `sent` already.
    let wamid =
        message_status(&app, &ctx.admin, &conv, &first).await["external_id"].as_str().expect("wamid").to_string();
    let mut went: Value = serde_json::from_slice(&fixture("whatsapp_status_sent.json")).expect("json");
    went["entry"][0]["changes"][0]["value"]["statuses"][0]["id"] = json!(wamid);
    assert_eq!(app.webhook(&serde_json::to_vec(&went).expect("body")).await, 200);
    app.processed().await;
    let shown = message_status(&app, &ctx.admin, &conv, &first).await;
    assert_eq!((&shown["status"], &shown["held_by_meta"]), (&json!("sent"), &Value::Null), "{shown}");
    let released = pacing("release").await;
    assert_eq!((&released["held"], &released["webhooks"]), (&json!(1), &json!(3)), "{released}");
    eventually("the first read", || async {
        let m = message_status(&app, &ctx.admin, &conv, &first).await;
        m["status"] == "read" && m["held_by_meta"].is_null()
    })
    .await;

    // Held again, then dropped: the reply fails as a paused template's.
    pacing("hold").await;
    let second = send("pace-2").await;
    eventually("the second held", || async {
        message_status(&app, &ctx.admin, &conv, &second).await["held_by_meta"] == "held_for_quality_assessment"
    })
    .await;
    let dropped = pacing("drop").await;
    assert_eq!((&dropped["held"], &dropped["webhooks"]), (&json!(1), &json!(2)), "{dropped}");
    eventually("the second failed", || async {
        message_status(&app, &ctx.admin, &conv, &second).await["status"] == "failed"
    })
    .await;
    let failed = message_status(&app, &ctx.admin, &conv, &second).await;
    assert_eq!(
        (&failed["error"]["code"], &failed["error"]["meta_code"], &failed["held_by_meta"]),
        (&json!("template_not_approved"), &json!(132015), &Value::Null),
        "{failed}"
    );
    // The template is paused: not offered, and a send of it is refused before it is queued.
    let r = app.call("GET", &format!("/api/channels/{channel}/templates"), Some(&ctx.admin), None).await;
    let listed = r.body["items"].as_array().expect("items").iter().find(|t| t["name"] == "novidades").cloned();
    assert_eq!(listed.map(|t| t["sendable"].clone()), Some(json!(false)), "{:?}", r.body);
    let body =
        json!({"template": {"name": "novidades", "language": "pt_BR", "parameters": ["Zoë"]}, "client_id": "pace-3"});
    let r = app.call("POST", &format!("/api/conversations/{conv}/messages"), Some(&ctx.admin), Some(body)).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("template_not_approved")), "{:?}", r.body);
    // A plain reply is never held.
    let (status, body) = reply(&app, &ctx.admin, &conv, "Temos, sim!", "pace-4").await;
    assert_eq!(status, 202, "{body}");
    let plain = body["id"].as_str().expect("id").to_string();
    eventually("the reply read", || async {
        message_status(&app, &ctx.admin, &conv, &plain).await["status"] == "read"
    })
    .await;
    assert_eq!(message_status(&app, &ctx.admin, &conv, &plain).await["held_by_meta"], Value::Null);
}

/// Meta restricts a WhatsApp business account (`account_update`
/// `ACCOUNT_RESTRICTION`): the numbers show it while it is in force, and
/// the sends it restricts are refused before Meta is asked (business-
/// initiated: templates after the window, writing first; customer-
/// initiated: anything inside the window), or fail if queued before. The
/// newest list wins; an empty one lifts them.
#[actix_web::test]
async fn a_restricted_whatsapp_account_refuses_the_sends_meta_restricts() {
    use switchboard::meta::fake::PAIR_LIMITED_WA;
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let waba = "112233445566778";
    let two_days_ago = (chrono::Utc::now() - chrono::Duration::hours(48)).to_rfc3339();
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Olá"})).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": "351910000042", "text": "Oi", "at": two_days_ago}))
        .await;
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": PAIR_LIMITED_WA, "text": "Olá?"})).await;
    app.processed().await;
    let channel = channel_id(&app, &ctx.admin, PHONE).await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let id = |c: &str| by_contact(&convs, c)["id"].as_str().expect("id").to_string();
    let (open, closed, limited) = (id(WA_ID), id("351910000042"), id(PAIR_LIMITED_WA));
    let restrict = |kinds: &[&str], time: i64| {
        let until = chrono::Utc::now().timestamp() + 86_400;
        let info: Vec<Value> = kinds.iter().map(|k| json!({"restriction_type": k, "expiration": until})).collect();
        let body = json!({"object": "whatsapp_business_account", "entry": [{"id": waba, "time": time,
            "changes": [{"field": "account_update", "value": {"event": "ACCOUNT_RESTRICTION", "restriction_info": info}}]}]});
        let app = &app;
        async move {
            assert_eq!(app.webhook(&serde_json::to_vec(&body).expect("body")).await, 200);
            app.processed().await;
        }
    };
    let flags = |conv: String| {
        let (app, admin) = (&app, ctx.admin.clone());
        async move {
            let r = app.call("GET", &format!("/api/conversations/{conv}"), Some(&admin), None).await;
            (r.body["can_reply"].clone(), r.body["can_send_template"].clone())
        }
    };
    let template = |conv: String, client_id: &str| {
        let (app, admin) = (&app, ctx.admin.clone());
        let body = json!({"template": {"name": "hello_world", "language": "en_US"}, "client_id": client_id});
        async move { app.call("POST", &format!("/api/conversations/{conv}/messages"), Some(&admin), Some(body)).await }
    };
    let start = |number: &str| {
        let (app, admin) = (&app, ctx.admin.clone());
        let body = json!({"channel_id": channel, "phone_number": number,
            "template": {"name": "hello_world", "language": "en_US"}, "client_id": format!("start-{number}")});
        async move { app.call("POST", "/api/conversations", Some(&admin), Some(body)).await }
    };
    // A reply the fake keeps refusing for now (the pair rate limit): pending, retried.
    let (status, body) = reply(&app, &ctx.admin, &limited, "Bom dia!", "limited-1").await;
    assert_eq!(status, 202, "{body}");
    let queued = body["id"].as_str().expect("id").to_string();
    let mut socket = crate::realtime::ws(&app, "", Some(&ctx.admin), None).await.expect("socket");

    // No starting conversations: shown on the number, live.
    let now = chrono::Utc::now().timestamp();
    restrict(&["RESTRICTED_BIZ_INITIATED_MESSAGING"], now - 600).await;
    let frame = crate::realtime::until(&mut socket, "channel.updated", std::time::Duration::from_secs(10))
        .await
        .expect("channel.updated");
    let shown = &frame["data"]["whatsapp_number"]["restrictions"];
    assert_eq!(shown[0]["restriction_type"], "RESTRICTED_BIZ_INITIATED_MESSAGING", "{frame}");
    assert!(shown[0]["expires_at"].is_string(), "{frame}");
    let r = app.call("GET", &format!("/api/channels/{channel}"), Some(&ctx.admin), None).await;
    assert_eq!(&r.body["whatsapp_number"]["restrictions"], shown, "{:?}", r.body);
    // Inside the window all goes; after it, no template; no writing first.
    assert_eq!(flags(open.clone()).await, (json!(true), json!(true)));
    assert_eq!(flags(closed.clone()).await, (json!(false), json!(false)));
    let (status, body) = reply(&app, &ctx.admin, &open, "Bom dia!", "open-1").await;
    assert_eq!(status, 202, "{body}");
    let r = template(closed.clone(), "closed-1").await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("messaging_restricted")), "{:?}", r.body);
    let r = start("+351 912 000 111").await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("messaging_restricted")), "{:?}", r.body);
    let contacts = app.count("SELECT count(*) AS n FROM tenant_acme.contacts WHERE external_id = '351912000111'");
    assert_eq!(contacts, 0, "nothing written");
    let messages_of_closed = messages(&app, &ctx.admin, &closed).await;
    assert!(messages_of_closed.iter().all(|m| m["direction"] == "in"), "nothing queued: {messages_of_closed:?}");

    // Now no replies: the newest list wins; the reply queued before fails.
    restrict(&["RESTRICTED_CUSTOMER_INITIATED_MESSAGING"], now - 300).await;
    assert_eq!(flags(open.clone()).await, (json!(false), json!(false)));
    assert_eq!(flags(closed.clone()).await, (json!(false), json!(true)));
    let (status, body) = reply(&app, &ctx.admin, &open, "Ainda aí?", "open-2").await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("messaging_restricted")), "{body}");
    let r = template(open.clone(), "open-3").await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("messaging_restricted")), "{:?}", r.body);
    let r = template(closed.clone(), "closed-2").await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let theirs = messages(&app, &ctx.admin, &open).await.into_iter().find(|m| m["direction"] == "in").expect("in");
    let path = format!("/api/messages/{}/reaction", theirs["id"].as_str().expect("id"));
    let r = app.call("PUT", &path, Some(&ctx.admin), Some(json!({"emoji": "👍"}))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("messaging_restricted")), "{:?}", r.body);
    eventually("the reply queued before failed", || async {
        message_status(&app, &ctx.admin, &limited, &queued).await["status"] == "failed"
    })
    .await;
    let failed = message_status(&app, &ctx.admin, &limited, &queued).await;
    assert_eq!(failed["error"]["code"], "messaging_restricted", "{failed}");
    // Meta's retry of the first, delivered late: recorded, not applied.
    restrict(&["RESTRICTED_BIZ_INITIATED_MESSAGING"], now - 600).await;
    restrict(&["RESTRICTED_BIZ_INITIATED_MESSAGING"], now - 450).await;
    assert_eq!(flags(closed.clone()).await, (json!(false), json!(true)));

    // Lifted: an empty list.
    restrict(&[], now - 100).await;
    let r = app.call("GET", &format!("/api/channels/{channel}"), Some(&ctx.admin), None).await;
    assert_eq!(r.body["whatsapp_number"]["restrictions"], json!([]), "{:?}", r.body);
    assert_eq!(flags(open.clone()).await, (json!(true), json!(true)));
    let (status, body) = reply(&app, &ctx.admin, &open, "Ainda aí?", "open-2").await;
    assert_eq!(status, 202, "{body}");
    let r = start("+351 912 000 111").await;
    assert_eq!(r.status, 202, "{:?}", r.body);

    // One that runs out lifts itself: the clock drops it, announced once.
    let soon = chrono::Utc::now().timestamp() + 2;
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": waba, "time": now,
        "changes": [{"field": "account_update", "value": {"event": "ACCOUNT_RESTRICTION", "restriction_info":
            [{"restriction_type": "RESTRICTED_CUSTOMER_INITIATED_MESSAGING", "expiration": soon}]}}]}]});
    assert_eq!(app.webhook(&serde_json::to_vec(&body).expect("body")).await, 200);
    app.processed().await;
    assert_eq!(flags(open.clone()).await, (json!(false), json!(false)));
    let lift = || {
        let mut pooled = app.pool.get().expect("conn");
        let tenant = switchboard::tenancy::find_by_slug(&mut pooled, "acme").expect("q").expect("acme").tenant_id();
        switchboard::db::with_tenant(&mut pooled, &switchboard::db::TenantScope::system(tenant), |tc| {
            switchboard::channels::whatsapp_number::lift_ended(tc)
        })
        .expect("lift")
    };
    let lifted_updates = || {
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'channel.updated' \
              AND channel_id = {channel} AND (payload->'whatsapp_number'->'restrictions')::jsonb = '[]'::jsonb"
        ))
    };
    let before = lifted_updates();
    assert_eq!(lift(), 0, "still in force");
    actix_web::rt::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(flags(open.clone()).await, (json!(true), json!(true)), "shown as ended before the clock looks");
    assert_eq!(lift(), 1);
    assert_eq!(lift(), 0, "once");
    assert_eq!(lifted_updates(), before + 1);
    let kept = app.count(&format!(
        "SELECT jsonb_array_length(whatsapp_number->'restrictions')::bigint AS n FROM tenant_acme.channels WHERE id = {channel}"
    ));
    assert_eq!(kept, 0);
}

/// Meta re-categorises templates (a utility one found to be marketing):
/// a change coming is announced with its date and changes nothing yet; a
/// change made is announced, read from Meta at once, and a repeat adds
/// nothing.
#[actix_web::test]
async fn a_template_meta_recategorises_is_announced_coming_and_made() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let channel = channel_id(&app, &ctx.admin, PHONE).await;
    let category = || async {
        let r = app.call("GET", &format!("/api/channels/{channel}/templates"), Some(&ctx.admin), None).await;
        let items = r.body["items"].as_array().cloned().unwrap_or_default();
        items.into_iter().find(|t| t["name"] == "hello_world").expect("hello_world")["category"].clone()
    };
    assert_eq!(category().await, "UTILITY");
    let recategorise = |body: Value| {
        let app = &app;
        async move {
            let r = app.fake("POST", "/_fake/template-category", body).await;
            assert_eq!(r["delivered_status"], 200, "{r}");
            app.processed().await;
            r["webhook"].clone()
        }
    };
    let base =
        json!({"waba_id": "112233445566778", "name": "hello_world", "language": "en_US", "category": "MARKETING"});
    let mut coming = base.clone();
    coming["coming_in_hours"] = json!(24);
    recategorise(coming).await;
    assert_eq!(category().await, "UTILITY", "not yet");
    let made = recategorise(base).await;
    assert_eq!(category().await, "MARKETING", "read from Meta again at once");
    assert_eq!(app.webhook(&serde_json::to_vec(&made).expect("body")).await, 200);
    app.processed().await;
    let announced: Vec<Value> = {
        let mut conn = app.db.conn();
        #[derive(QueryableByName)]
        struct P {
            #[diesel(sql_type = diesel::sql_types::Text)]
            p: String,
        }
        diesel::sql_query(
            "SELECT payload::text AS p FROM tenant_acme.events WHERE type = 'template.updated' ORDER BY seq",
        )
        .load::<P>(&mut conn)
        .expect("events")
        .into_iter()
        .map(|p| serde_json::from_str(&p.p).expect("json"))
        .collect()
    };
    assert_eq!(announced.len(), 2, "{announced:?}");
    let (first, second) = (&announced[0], &announced[1]);
    assert_eq!(
        (&first["event"], &first["category"], &first["correct_category"]),
        (&json!("CATEGORY_CHANGE_COMING"), &json!("UTILITY"), &json!("MARKETING"))
    );
    let when = first["category_update_at"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    assert!(when.is_some_and(|w| w.to_utc() > chrono::Utc::now() + chrono::Duration::hours(23)), "{first}");
    assert_eq!(
        (&second["event"], &second["previous_category"], &second["category"], &second["channel_id"]),
        (&json!("CATEGORY_CHANGED"), &json!("UTILITY"), &json!("MARKETING"), &json!(channel))
    );
    let log = app.call("GET", "/api/audit-log?limit=200", Some(&ctx.admin), None).await;
    let kept = log.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"] == "channel.whatsapp_template_category")
        .count();
    assert_eq!(kept, 2);
}

/// A WhatsApp customer who stops marketing messages is not sent a
/// marketing template (a utility one still goes); the choice shows on the
/// contact, follows Meta's order, and a marketing template sent while we
/// did not know yet fails with Meta's reason.
#[actix_web::test]
async fn a_customer_who_stopped_marketing_gets_no_marketing_template() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let waba = "112233445566778";
    app.fake(
        "POST",
        "/_fake/templates",
        json!({"waba_id": waba, "name": "promo", "language": "pt_BR",
        "body": "Promoção de Natal!", "category": "MARKETING"}),
    )
    .await;
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Olá"})).await;
    app.processed().await;
    let conv = by_contact(&conversations(&app, &ctx.admin, "").await, WA_ID).clone();
    let (id, contact) =
        (conv["id"].as_str().expect("id").to_string(), conv["contact"]["id"].as_str().expect("id").to_string());
    let stopped_at = || async {
        app.call("GET", &format!("/api/contacts/{contact}"), Some(&ctx.admin), None).await.body["marketing_stopped_at"]
            .clone()
    };
    assert!(stopped_at().await.is_null());
    let send = |name: &str, client: &str| {
        let (app, admin, path) = (&app, ctx.admin.clone(), format!("/api/conversations/{id}/messages"));
        let body = json!({"template": {"name": name, "language": if name == "promo" { "pt_BR" } else { "en_US" }}, "client_id": client});
        async move { app.call("POST", &path, Some(&admin), Some(body)).await }
    };
    let prefer = |value: &str| {
        let body = json!({"phone_number_id": PHONE, "wa_id": WA_ID, "value": value});
        let app = &app;
        async move {
            let r = app.fake("POST", "/_fake/user-preferences", body).await;
            app.processed().await;
            r
        }
    };

    let stop = prefer("stop").await;
    assert_eq!(stop["delivered_status"], 200, "{stop}");
    assert!(stopped_at().await.is_string(), "shown on the contact");
    let r = send("promo", "m-1").await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("marketing_stopped")), "{:?}", r.body);
    let r = send("hello_world", "u-1").await;
    assert_eq!(r.status, 202, "a utility template still goes: {:?}", r.body);
    // Meta's retry, and a resume older than the stop: nothing changes.
    assert_eq!(app.webhook(&serde_json::to_vec(&stop["webhook"]).expect("body")).await, 200);
    let mut old_resume = stop["webhook"].clone();
    let pref = &mut old_resume["entry"][0]["changes"][0]["value"]["user_preferences"][0];
    pref["value"] = json!("resume");
    pref["timestamp"] = json!(pref["timestamp"].as_i64().expect("ts") - 3600);
    assert_eq!(app.webhook(&serde_json::to_vec(&old_resume).expect("body")).await, 200);
    app.processed().await;
    assert!(stopped_at().await.is_string());
    let audited =
        |action: &str| app.count(&format!("SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = '{action}'"));
    assert_eq!(audited("contact.marketing_stopped"), 1);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'contact.updated' AND payload->>'id' = '{contact}'"
        )),
        1,
        "announced once"
    );

    // Resumed (a second later, as Meta's times are in seconds): it goes.
    actix_web::rt::time::sleep(std::time::Duration::from_millis(1100)).await;
    prefer("resume").await;
    assert!(stopped_at().await.is_null());
    let r = send("promo", "m-2").await;
    assert_eq!(r.status, 202, "{:?}", r.body);

    // Stopped at Meta while we did not hear of it: Meta takes the
    // template and reports it failed, with its reason.
    app.fake("POST", "/_fake/webhook-target", json!({"url": null})).await;
    actix_web::rt::time::sleep(std::time::Duration::from_millis(1100)).await;
    prefer("stop").await;
    app.fake("POST", "/_fake/webhook-target", json!({"url": format!("{}/webhooks/meta", app.base)})).await;
    let r = send("promo", "m-3").await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let sent = r.body["id"].as_str().expect("id").to_string();
    eventually("Meta reports it failed", || async {
        message_status(&app, &ctx.admin, &id, &sent).await["status"] == "failed"
    })
    .await;
    let failed = message_status(&app, &ctx.admin, &id, &sent).await;
    assert_eq!(
        (&failed["error"]["code"], &failed["error"]["meta_code"]),
        (&json!("marketing_stopped"), &json!(131050))
    );
    assert!(failed["error"]["message"].as_str().is_some_and(|m| m.contains("marketing")), "{failed}");
    assert!(stopped_at().await.is_string(), "the failure tells what the preference did not");
    let r = send("promo", "m-4").await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("marketing_stopped")), "{:?}", r.body);
}

/// What Meta says of a WhatsApp number: read at connect and at a check,
/// changed by Meta's quality webhook (which names the number by its
/// display number), shown live, audited once; a late retry changes nothing.
#[actix_web::test]
async fn a_whatsapp_numbers_quality_is_shown_and_follows_meta() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let channel = channel_id(&app, &ctx.admin, PHONE).await;
    let number = || async {
        app.call("GET", &format!("/api/channels/{channel}"), Some(&ctx.admin), None).await.body["whatsapp_number"]
            .clone()
    };
    let at_connect = number().await;
    assert_eq!(
        (&at_connect["display_phone_number"], &at_connect["quality_rating"], &at_connect["quality_event"]),
        (&json!("15551234567"), &json!("GREEN"), &Value::Null),
        "{at_connect}"
    );
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let r = app.call("GET", &format!("/api/channels/{page}"), Some(&ctx.admin), None).await;
    assert!(r.body["whatsapp_number"].is_null(), "pages have none");
    let mut socket = crate::realtime::ws(&app, "", Some(&ctx.admin), None).await.expect("socket");

    let downgrade = json!({"phone_number_id": PHONE, "event": "DOWNGRADE", "quality_rating": "YELLOW",
        "old_limit": "TIER_1K", "current_limit": "TIER_250", "max_daily_conversations_per_business": "250"});
    let sent = app.fake("POST", "/_fake/number-quality", downgrade).await;
    assert_eq!(sent["delivered_status"], 200, "{sent}");
    app.processed().await;
    let frame = crate::realtime::until(&mut socket, "channel.updated", std::time::Duration::from_secs(5))
        .await
        .expect("channel.updated");
    assert_eq!(
        (&frame["data"]["id"], &frame["data"]["whatsapp_number"]["quality_event"]),
        (&json!(channel), &json!("DOWNGRADE")),
        "{frame}"
    );
    let now = number().await;
    assert_eq!(
        (&now["messaging_limit"], &now["quality_event"], &now["quality_rating"]),
        (&json!("250"), &json!("DOWNGRADE"), &json!("GREEN")),
        "the rating is what the account lists: {now}"
    );
    // A check reads the rating Meta lists now.
    let r = app.call("POST", &format!("/api/channels/{channel}/check"), Some(&ctx.admin), None).await;
    assert_eq!((r.status, &r.body["whatsapp_number"]["quality_rating"]), (200, &json!("YELLOW")), "{:?}", r.body);
    assert_eq!(r.body["whatsapp_number"]["messaging_limit"], "250", "kept");

    // Meta's retry adds nothing; an older one (delivered late) is recorded, not applied.
    let webhook = sent["webhook"].clone();
    assert_eq!(app.webhook(&serde_json::to_vec(&webhook).expect("body")).await, 200);
    let mut late = webhook.clone();
    late["entry"][0]["time"] = json!(webhook["entry"][0]["time"].as_i64().expect("time") - 600);
    late["entry"][0]["changes"][0]["value"]["event"] = json!("UPGRADE");
    late["entry"][0]["changes"][0]["value"]["max_daily_conversations_per_business"] = json!("1000");
    assert_eq!(app.webhook(&serde_json::to_vec(&late).expect("body")).await, 200);
    // Another number's (a display number this account does not have): nothing.
    let mut other = webhook.clone();
    other["entry"][0]["changes"][0]["value"]["display_phone_number"] = json!("15559999999");
    other["entry"][0]["changes"][0]["value"]["event"] = json!("FLAGGED");
    other["entry"][0]["time"] = json!(webhook["entry"][0]["time"].as_i64().expect("time") + 60);
    assert_eq!(app.webhook(&serde_json::to_vec(&other).expect("body")).await, 200);
    app.processed().await;
    assert_eq!(
        (&number().await["quality_event"], &number().await["messaging_limit"]),
        (&json!("DOWNGRADE"), &json!("250"))
    );
    let log = app.call("GET", "/api/audit-log?limit=200", Some(&ctx.admin), None).await;
    let kept: Vec<&str> = log.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"] == "channel.whatsapp_number_quality")
        .filter_map(|e| e["details"]["event"].as_str())
        .collect();
    assert_eq!(kept, ["UPGRADE", "DOWNGRADE"], "newest first, each once");
    assert_eq!(
        app.count("SELECT count(*) AS n FROM public.webhook_events WHERE status = 'dead'"),
        0,
        "nothing dead-lettered"
    );
}

/// A private note is for the team: stored at once and never sent (window
/// closed or not), announced like a message but not counted as the
/// conversation's activity, untouched by the customer's receipts, found
/// by search, and safe to retry.
#[actix_web::test]
async fn a_private_note_stays_with_the_team() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let two_days_ago = (chrono::Utc::now() - chrono::Duration::hours(48)).to_rfc3339();
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "Olá"})).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Olá", "at": two_days_ago})).await;
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let (fb, wa) = (by_contact(&convs, PSID).clone(), by_contact(&convs, WA_ID).clone());
    let fb_conv = fb["id"].as_str().expect("id").to_string();
    let note = |conv: &str, body: Value| {
        let (app, admin, conv) = (&app, ctx.admin.clone(), conv.to_string());
        async move { app.call("POST", &format!("/api/conversations/{conv}/messages"), Some(&admin), Some(body)).await }
    };
    let text = "VIP customer: check order #77 before answering";
    let r = note(&fb_conv, json!({"text": text, "private": true, "client_id": "n-1"})).await;
    assert_eq!((r.status, &r.body["status"], &r.body["private"]), (201, &json!("sent"), &json!(true)), "{:?}", r.body);
    assert_eq!(r.body["sender"]["kind"], "agent");
    let id = r.body["id"].as_str().expect("id").to_string();
    // A retry gets the note back; a reply under its client_id is no retry.
    let again = note(&fb_conv, json!({"text": text, "private": true, "client_id": "n-1"})).await;
    assert_eq!((again.status, again.body["id"].as_str()), (201, Some(id.as_str())));
    let (status, reused) = reply(&app, &ctx.admin, &fb_conv, text, "n-1").await;
    assert_eq!((status, reused["error"]["code"].as_str()), (409, Some("client_id_reused")), "{reused}");
    // The list stays about the customer.
    let after = by_contact(&conversations(&app, &ctx.admin, "").await, PSID).clone();
    assert_eq!(
        (&after["last_message"]["id"], &after["last_activity_at"]),
        (&fb["last_message"]["id"], &fb["last_activity_at"])
    );
    // Search finds it.
    let found = conversations(&app, &ctx.admin, "?q=order%20%2377").await;
    assert_eq!(found.iter().map(|c| c["id"].clone()).collect::<Vec<_>>(), vec![json!(fb_conv)]);
    // A reply after it is read by the customer (a watermark); the note is not.
    let (status, sent) = reply(&app, &ctx.admin, &fb_conv, "Olá! Como posso ajudar?", "r-1").await;
    assert_eq!(status, 202, "{sent}");
    let reply_id = sent["id"].as_str().expect("id").to_string();
    eventually("the reply read", || async {
        message_status(&app, &ctx.admin, &fb_conv, &reply_id).await["status"] == "read"
    })
    .await;
    assert_eq!(message_status(&app, &ctx.admin, &fb_conv, &id).await["status"], "sent");
    // Nothing of it went to Meta.
    let log = app.fake("GET", "/_fake/requests", json!({})).await;
    assert!(!log.to_string().contains("VIP customer"), "the note went to Meta");
    // A closed window does not matter; a note is text only.
    let wa_conv = wa["id"].as_str().expect("id");
    assert_eq!(note(wa_conv, json!({"text": "Asked about returns", "private": true})).await.status, 201);
    for body in [
        json!({"text": " ", "private": true}),
        json!({"private": true, "template": {"name": "hello_world", "language": "en_US"}}),
    ] {
        let r = note(wa_conv, body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {:?}", r.body);
    }
}

/// Labels sort a team's conversations: set as a whole by PATCH (kept
/// lower case, once, sorted), shown and announced, filtered on (with the
/// search too), checked, and a PATCH that changes nothing logs nothing.
#[actix_web::test]
async fn labels_sort_conversations() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "Quero devolver o casaco"})).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Preço por atacado?"})).await;
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    assert_eq!(by_contact(&convs, PSID)["labels"], json!([]));
    let (fb, wa) = (
        by_contact(&convs, PSID)["id"].as_str().expect("id").to_string(),
        by_contact(&convs, WA_ID)["id"].as_str().expect("id").to_string(),
    );
    let patch = |conv: &str, body: Value| {
        let (app, admin, conv) = (&app, ctx.admin.clone(), conv.to_string());
        async move { app.call("PATCH", &format!("/api/conversations/{conv}"), Some(&admin), Some(body)).await }
    };
    let r = patch(&fb, json!({"labels": ["Refund", " VIP ", "refund", "Devolução  urgente"]})).await;
    assert_eq!((r.status, &r.body["labels"]), (200, &json!(["devolução urgente", "refund", "vip"])), "{:?}", r.body);
    assert_eq!(patch(&wa, json!({"labels": ["wholesale", "vip"]})).await.status, 200);
    let ids =
        |convs: Vec<Value>| convs.iter().map(|c| c["id"].as_str().unwrap_or_default().to_string()).collect::<Vec<_>>();
    assert_eq!(ids(conversations(&app, &ctx.admin, "?label=VIP").await).len(), 2);
    assert_eq!(ids(conversations(&app, &ctx.admin, "?label=refund").await), vec![fb.clone()]);
    assert_eq!(ids(conversations(&app, &ctx.admin, "?label=vip&q=atacado").await), vec![wa.clone()]);
    assert!(conversations(&app, &ctx.admin, "?label=nobody").await.is_empty());
    // What is in use, most used first, for a client to offer.
    let r = app.call("GET", "/api/labels", Some(&ctx.admin), None).await;
    assert_eq!(
        r.body["items"],
        json!([{"label": "vip", "conversations": 2}, {"label": "devolução urgente", "conversations": 1},
            {"label": "refund", "conversations": 1}, {"label": "wholesale", "conversations": 1}]),
        "{:?}",
        r.body
    );
    // An agent sees the labels of their channels' conversations only.
    let (al, al_token) = agent_al(&app, &ctx.admin).await;
    let labels = |t: String| {
        let app = &app;
        async move { app.call("GET", "/api/labels", Some(&t), None).await.body["items"].clone() }
    };
    assert_eq!(labels(al_token.clone()).await, json!([]));
    let wa_channel = by_contact(&convs, WA_ID)["channel_id"].as_str().expect("channel").to_string();
    let members = json!({"user_ids": [al["user_id"]]});
    let r = app.call("PUT", &format!("/api/channels/{wa_channel}/members"), Some(&ctx.admin), Some(members)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        labels(al_token).await,
        json!([{"label": "vip", "conversations": 1}, {"label": "wholesale", "conversations": 1}])
    );
    // The same set again is no change: no event, no audit row.
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let events = || async {
        let mut conn = app.db.conn();
        diesel::sql_query("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'conversation.updated'")
            .get_result::<Count>(&mut conn)
            .expect("count")
            .n
    };
    let before = events().await;
    assert_eq!(patch(&fb, json!({"labels": ["vip", "REFUND", "devolução urgente"]})).await.status, 200);
    assert_eq!(events().await, before);
    let audit = app.call("GET", "/api/audit-log", Some(&ctx.admin), None).await;
    let labelled = audit.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"] == "conversation.labelled")
        .count();
    assert_eq!(labelled, 2, "{:?}", audit.body);
    // Removing them all, and what is refused.
    let r = patch(&wa, json!({"labels": []})).await;
    assert_eq!((r.status, &r.body["labels"]), (200, &json!([])));
    let many: Vec<String> = (0..21).map(|i| format!("l{i}")).collect();
    for body in [
        json!({"labels": "vip"}),
        json!({"labels": [1]}),
        json!({"labels": [" "]}),
        json!({"labels": ["a,b"]}),
        json!({"labels": ["x".repeat(51)]}),
        json!({"labels": many}),
    ] {
        let r = patch(&fb, body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {:?}", r.body);
    }
    let r = app.call("GET", "/api/conversations?label=a,b", Some(&ctx.admin), None).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some("invalid_query")), "{:?}", r.body);
}

/// The fake delivers what follows a send as Meta does after failures: in
/// one body, in random order, twice. Each reply still ends read, once.
#[actix_web::test]
async fn receipts_batched_shuffled_and_doubled_still_end_read() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let habits = json!({"url": app.url("/webhooks/meta"), "batch": true, "shuffle": true, "duplicates": true});
    app.fake("POST", "/_fake/webhook-target", habits).await;
    for (to, from) in [(PAGE_A, PSID), (PHONE, WA_ID)] {
        app.fake("POST", "/_fake/inbound", json!({"to": to, "from": from, "text": "Olá?"})).await;
    }
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let stored_before = app.count("SELECT count(*) AS n FROM public.webhook_events");
    for (i, contact) in [PSID, WA_ID].into_iter().enumerate() {
        let conv = by_contact(&convs, contact)["id"].as_str().expect("id").to_string();
        let (status, msg) = reply(&app, &ctx.admin, &conv, "Bom dia!", &format!("c-{i}")).await;
        assert_eq!(status, 202, "{msg}");
        let id = msg["id"].as_str().expect("id").to_string();
        eventually("the reply read", || async {
            message_status(&app, &ctx.admin, &conv, &id).await["status"] == "read"
        })
        .await;
        let out = messages(&app, &ctx.admin, &conv).await.into_iter().filter(|m| m["direction"] == "out").count();
        assert_eq!(out, 1);
    }
    // Each send's webhooks came as one body, twice (the second copy may
    // still be on its way when the first has been applied).
    eventually("both copies of each body stored", || async {
        app.count("SELECT count(*) AS n FROM public.webhook_events") - stored_before >= 4
    })
    .await;
    app.processed().await;
    assert_eq!(app.count("SELECT count(*) AS n FROM public.webhook_events") - stored_before, 4);
    let bodies = app.count(
        "SELECT count(DISTINCT body) AS n FROM public.webhook_events \
          WHERE id > (SELECT max(id) - 4 FROM public.webhook_events)",
    );
    assert_eq!(bodies, 2);
}

/// Meta's picture URLs expire and customers rename themselves: a contact
/// who writes more than a day after their profile was looked up is looked
/// up again, in the background as the first time; within the day, not.
#[actix_web::test]
async fn a_profile_is_looked_up_again_a_day_later() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let from = "7392015648120777";
    let name = || async {
        let convs = conversations(&app, &ctx.admin, "").await;
        let theirs = convs.iter().find(|c| c["contact"]["external_id"] == from);
        theirs.and_then(|c| c["contact"]["name"].as_str().map(str::to_string))
    };
    let lookups = || async {
        let log = app.fake("GET", "/_fake/requests", json!({})).await;
        let items = log["items"].as_array().expect("items").clone();
        items.iter().filter(|r| r["method"] == "GET" && r["path"] == format!("/{from}")).count()
    };
    let write = |text: &'static str, name: &'static str| {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": text, "name": name}))
    };
    write("Olá", "Rui Costa").await;
    eventually("the first lookup", || async { name().await.as_deref() == Some("Rui Costa") }).await;
    // Renamed at Meta, writing again the same day: nothing is asked.
    write("Ainda aí?", "Rui C. Costa").await;
    app.processed().await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(name().await.as_deref(), Some("Rui Costa"));
    // A day on, their next message brings the new name.
    let mut conn = app.db.conn();
    diesel::sql_query(format!(
        "UPDATE tenant_acme.contacts SET profile_checked_at = now() - interval '25 hours' WHERE external_id = '{from}'"
    ))
    .execute(&mut conn)
    .expect("a day passes");
    write("Olá de novo", "Rui C. Costa").await;
    eventually("the second lookup", || async { name().await.as_deref() == Some("Rui C. Costa") }).await;
    assert_eq!(lookups().await, 2, "one lookup a day, not one a message");
}

#[actix_web::test]
async fn a_quiet_contacts_stale_profile_is_looked_up_when_looked_at() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (from, other, third) = ("7392015648120888", "7392015648120999", "7392015648120777");
    let contact = |who: &'static str| {
        let (app, admin) = (&app, ctx.admin.clone());
        async move {
            let convs = conversations(app, &admin, "").await;
            let theirs = convs.iter().find(|c| c["contact"]["external_id"] == who);
            theirs.map(|c| c["contact"].clone()).unwrap_or_default()
        }
    };
    let lookups = |who: &'static str| {
        let app = &app;
        async move {
            let log = app.fake("GET", "/_fake/requests", json!({})).await;
            let items = log["items"].as_array().expect("items").clone();
            items.iter().filter(|r| r["method"] == "GET" && r["path"] == format!("/{who}")).count()
        }
    };
    // What a contact's profile looks like days later: Meta's picture URL
    // has expired (here: another URL, and an old name, stand for it).
    let days_pass = |who: &str, days: i64| {
        let mut conn = app.db.conn();
        diesel::sql_query(format!(
            "UPDATE tenant_acme.contacts SET profile_checked_at = now() - interval '{days} days', \
             name = 'Old name', profile_pic_url = 'https://scontent.xx.fbcdn.net/expired.jpg' \
             WHERE external_id = '{who}'"
        ))
        .execute(&mut conn)
        .expect("days pass");
    };
    let settle = || async {
        app.processed().await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    for (who, name) in [(from, "Inês Faria"), (other, "Zé Dias"), (third, "Iara Lopes")] {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": who, "text": "Bom dia", "name": name})).await;
        eventually("the first lookup", || async { contact(who).await["name"] == name }).await;
    }
    let convs = conversations(&app, &ctx.admin, "").await;
    let open = |who: &str| {
        let id = by_contact(&convs, who)["id"].as_str().expect("id").to_string();
        let (app, admin) = (&app, ctx.admin.clone());
        async move {
            let r = app.call("GET", &format!("/api/conversations/{id}"), Some(&admin), None).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
    };

    // Two days on, looking costs nothing.
    days_pass(from, 2);
    open(from).await;
    conversations(&app, &ctx.admin, "").await;
    settle().await;
    assert_eq!((lookups(from).await, contact(from).await["name"].clone()), (1, json!("Old name")));

    // Four days on, opening the conversation looks the profile up again.
    days_pass(from, 4);
    open(from).await;
    eventually("looked up on opening", || async { contact(from).await["name"] == "Inês Faria" }).await;
    let pic = contact(from).await["profile_pic_url"].clone();
    assert!(pic.as_str().is_some_and(|p| !p.contains("expired")), "{pic}");
    // Fresh again: more looks ask nothing.
    open(from).await;
    conversations(&app, &ctx.admin, "").await;
    settle().await;
    assert_eq!(lookups(from).await, 2);

    // So does finding them among the contacts.
    days_pass(third, 4);
    let r = app.call("GET", "/api/contacts?q=old", Some(&ctx.admin), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    eventually("looked up on a contact search", || async { lookups(third).await == 2 }).await;

    // Listing does it too; while Meta fails, it is tried once, not at
    // every look (the contact's next message tries again).
    days_pass(other, 4);
    let down = json!({"path": format!("/{other}"), "method": "GET", "status": 500,
        "error": {"code": 2, "message": "Service temporarily unavailable"}, "times": 10});
    app.fake("POST", "/_fake/errors", down).await;
    conversations(&app, &ctx.admin, "").await;
    // The first lookup, then one on listing: three attempts (Graph's
    // client retries a transient error twice).
    eventually("looked up again on listing", || async { lookups(other).await == 4 }).await;
    let tried = 4;
    for _ in 0..3 {
        conversations(&app, &ctx.admin, "").await;
        open(other).await;
    }
    settle().await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    assert_eq!((lookups(other).await, contact(other).await["name"].clone()), (tried, json!("Old name")));
}

#[actix_web::test]
async fn replies_go_out_once_and_receipts_move_forward() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    // Contacts write (through the fake, which signs and sends the webhooks).
    app.fake(
        "POST",
        "/_fake/inbound",
        json!({"to": PAGE_A, "from": PSID, "text": "Olá, têm entregas?", "name": "Rui Costa"}),
    )
    .await;
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Bom dia", "name": "Ana Sousa"}))
        .await;
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let fb = by_contact(&convs, PSID)["id"].as_str().expect("id").to_string();
    let wa = by_contact(&convs, WA_ID)["id"].as_str().expect("id").to_string();
    assert_eq!(by_contact(&convs, PSID)["can_reply"], true);
    // The profile lookup fills the name in the background.
    eventually("profile name", || async {
        conversations(&app, &ctx.admin, "").await.iter().any(|c| c["contact"]["name"] == "Rui Costa")
    })
    .await;

    let (status, msg) = reply(&app, &ctx.admin, &fb, "Sim, entregamos!", "c-1").await;
    assert_eq!((status, msg["status"].as_str()), (202, Some("pending")), "{msg}");
    let id = msg["id"].as_str().expect("id").to_string();
    // A retried request returns the same message and sends nothing more.
    let (status, again) = reply(&app, &ctx.admin, &fb, "Sim, entregamos!", "c-1").await;
    assert_eq!((status, again["id"].as_str()), (202, Some(id.as_str())));
    // Another text under that client_id is no retry: refused, not dropped.
    let (status, reused) = reply(&app, &ctx.admin, &fb, "Outra coisa", "c-1").await;
    assert_eq!((status, reused["error"]["code"].as_str()), (409, Some("client_id_reused")), "{reused}");
    eventually("messenger reply read", || async {
        message_status(&app, &ctx.admin, &fb, &id).await["status"] == "read"
    })
    .await;
    let sent = app.fake("GET", "/_fake/requests", json!({})).await;
    let sends: Vec<&Value> = sent["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|r| r["path"] == format!("/{PAGE_A}/messages") && r["body"]["message"].is_object())
        .collect();
    assert_eq!(sends.len(), 1, "one send for two requests with one client_id");
    let body = &sends[0]["body"];
    assert_eq!(body["recipient"]["id"], PSID);
    assert_eq!(body["messaging_type"], "RESPONSE");
    assert_eq!(body["message"]["text"], "Sim, entregamos!");
    assert_eq!(body["message"]["metadata"], format!("sb:{id}"));
    // The echo matched the message: no second copy.
    let fb_msgs = messages(&app, &ctx.admin, &fb).await;
    assert_eq!(fb_msgs.iter().filter(|m| m["text"] == "Sim, entregamos!").count(), 1);
    let mine = fb_msgs.iter().find(|m| m["id"] == id.as_str()).expect("mine");
    assert!(mine["external_id"].as_str().is_some_and(|e| e.starts_with("m_")));
    assert_eq!(mine["sender"]["kind"], "agent");

    // WhatsApp: the fake reports sent, read, delivered (out of order): ends read.
    let (status, msg) = reply(&app, &ctx.admin, &wa, "Bom dia! Como posso ajudar?", "c-2").await;
    assert_eq!(status, 202);
    let wid = msg["id"].as_str().expect("id").to_string();
    eventually("whatsapp reply read", || async {
        message_status(&app, &ctx.admin, &wa, &wid).await["status"] == "read"
    })
    .await;
    actix_web::rt::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        message_status(&app, &ctx.admin, &wa, &wid).await["status"],
        "read",
        "a late 'delivered' does not go back"
    );
    let wa_send = app.fake("GET", "/_fake/requests", json!({})).await["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|r| r["path"] == format!("/{PHONE}/messages"))
        .cloned()
        .expect("wa send");
    assert_eq!(
        wa_send["body"],
        json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": WA_ID, "type": "text",
            "text": {"preview_url": false, "body": "Bom dia! Como posso ajudar?"},
            // Ours, passed back on its statuses.
            "biz_opaque_callback_data": format!("sb:{wid}")})
    );

    // Reading the conversation clears unread and tells Meta.
    let r = app.call("POST", &format!("/api/conversations/{fb}/read"), Some(&ctx.admin), None).await;
    assert_eq!(r.status, 204);
    let c = app.call("GET", &format!("/api/conversations/{fb}"), Some(&ctx.admin), None).await;
    assert_eq!(c.body["unread_count"], 0);
    eventually("mark_seen sent", || async {
        app.fake("GET", "/_fake/requests", json!({})).await["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["body"]["sender_action"] == "mark_seen"))
    })
    .await;
    // Marked unread again, to come back to: 1, announced; again, unchanged;
    // Meta is not told (a "seen" cannot be taken back).
    let seen = || async {
        let log = app.fake("GET", "/_fake/requests", json!({})).await;
        log["items"].as_array().map_or(0, |a| a.iter().filter(|r| r["body"]["sender_action"] == "mark_seen").count())
    };
    let seen_before = seen().await;
    let mut socket = crate::realtime::ws(&app, "", Some(&ctx.admin), None).await.expect("socket");
    let unread = format!("/api/conversations/{fb}/unread");
    for _ in 0..2 {
        assert_eq!(app.call("POST", &unread, Some(&ctx.admin), None).await.status, 204);
    }
    let c = app.call("GET", &format!("/api/conversations/{fb}"), Some(&ctx.admin), None).await;
    assert_eq!(c.body["unread_count"], 1);
    // (A profile look-up may announce another conversation first.)
    let frame = loop {
        let f = crate::realtime::until(&mut socket, "conversation.updated", std::time::Duration::from_secs(5))
            .await
            .expect("announced");
        if f["data"]["id"] == json!(fb) {
            break f;
        }
    };
    assert_eq!(frame["data"]["unread_count"], 1, "{frame}");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'conversation.updated' \
              AND conversation_id = {fb} AND (payload->>'unread_count')::int = 1 AND seq > {}",
            frame["seq"]
        )),
        0,
        "the second changed nothing"
    );
    assert_eq!(app.call("POST", "/api/conversations/999999/unread", Some(&ctx.admin), None).await.status, 404);
    let queued =
        app.count("SELECT count(*) AS n FROM public.send_queue WHERE kind = 'mark_seen' AND status = 'pending'");
    assert_eq!((seen().await, queued), (seen_before, 0), "Meta is not told");

    // Bad input.
    let r = app
        .call("POST", &format!("/api/conversations/{fb}/messages"), Some(&ctx.admin), Some(json!({"text": "   "})))
        .await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("empty_text")));
    let r = app
        .call(
            "POST",
            &format!("/api/conversations/{fb}/messages"),
            Some(&ctx.admin),
            Some(json!({"text": "x".repeat(2001)})),
        )
        .await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("text_too_long")));
    // PostgreSQL text cannot hold U+0000: a clear 422, nothing written.
    let before = messages(&app, &ctx.admin, &fb).await.len();
    for body in [json!({"text": "a\u{0}b"}), json!({"text": "ok", "client_id": "c\u{0}"})] {
        let r = app.call("POST", &format!("/api/conversations/{fb}/messages"), Some(&ctx.admin), Some(body)).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_text")), "{:?}", r.body);
    }
    assert_eq!(messages(&app, &ctx.admin, &fb).await.len(), before);
    let r = app.call("POST", "/api/conversations/999999/messages", Some(&ctx.admin), Some(json!({"text": "hi"}))).await;
    assert_eq!(r.status, 404);
}

#[actix_web::test]
async fn outside_the_window_and_expired_tokens() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let two_days_ago = (chrono::Utc::now() - chrono::Duration::days(2)).to_rfc3339();
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "old question", "at": two_days_ago}))
        .await;
    app.processed().await;
    let conv = conversations(&app, &ctx.admin, "").await[0].clone();
    let id = conv["id"].as_str().expect("id").to_string();
    assert_eq!(conv["can_reply"], false);
    let (status, body) = reply(&app, &ctx.admin, &id, "sorry for the delay", "late-1").await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("outside_window")));

    // With the human agent tag enabled: allowed within 7 days, sent tagged.
    let channel_id = conv["channel_id"].as_str().expect("channel").to_string();
    let r = app
        .call(
            "PATCH",
            &format!("/api/channels/{channel_id}"),
            Some(&ctx.admin),
            Some(json!({"settings": {"human_agent": true}})),
        )
        .await;
    assert_eq!(r.status, 200);
    let conv = app.call("GET", &format!("/api/conversations/{id}"), Some(&ctx.admin), None).await.body;
    assert_eq!(conv["can_reply"], true);
    let (status, msg) = reply(&app, &ctx.admin, &id, "sorry for the delay", "late-2").await;
    assert_eq!(status, 202);
    let mid = msg["id"].as_str().expect("id").to_string();
    eventually("tagged send", || async { message_status(&app, &ctx.admin, &id, &mid).await["status"] != "pending" })
        .await;
    let tagged = app.fake("GET", "/_fake/requests", json!({})).await["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|r| r["body"]["message"]["text"] == "sorry for the delay")
        .cloned()
        .expect("sent");
    assert_eq!(
        (tagged["body"]["messaging_type"].as_str(), tagged["body"]["tag"].as_str()),
        (Some("MESSAGE_TAG"), Some("HUMAN_AGENT"))
    );

    // The page token expires at Meta: the send fails typed, the channel needs reauth.
    app.fake("POST", "/_fake/tokens/expire", json!({"page_id": PAGE_A})).await;
    let (status, msg) = reply(&app, &ctx.admin, &id, "are you there?", "late-3").await;
    assert_eq!(status, 202);
    let mid = msg["id"].as_str().expect("id").to_string();
    eventually("failed send", || async { message_status(&app, &ctx.admin, &id, &mid).await["status"] == "failed" })
        .await;
    let failed = message_status(&app, &ctx.admin, &id, &mid).await;
    assert_eq!(failed["error"]["code"], "meta_token_invalid");
    let ch = app.call("GET", &format!("/api/channels/{channel_id}"), Some(&ctx.admin), None).await;
    assert_eq!(ch.body["status"], "reauth_required");
    let (status, body) = reply(&app, &ctx.admin, &id, "again", "late-4").await;
    assert_eq!((status, body["error"]["code"].as_str()), (409, Some("channel_not_connected")));
    // Webhooks for the channel keep being accepted.
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "hello?"})).await;
    app.processed().await;
    assert!(messages(&app, &ctx.admin, &id).await.iter().any(|m| m["text"] == "hello?"));
}

#[actix_web::test]
async fn the_inbox_api() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    for (from, text, name) in [
        ("1001", "Where is my order 8812?", "Maria Silva"),
        ("1002", "Do you have blue shoes?", "João Pereira"),
        ("1003", "Vocês entregam em Évora? Thanks!", "Rita"),
    ] {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": text, "name": name})).await;
    }
    app.processed().await;
    let all = conversations(&app, &ctx.admin, "").await;
    assert_eq!(all.len(), 3);
    assert_eq!(all[0]["contact"]["external_id"], "1003", "newest activity first");
    // Search over message text and contact names.
    let found = conversations(&app, &ctx.admin, "?q=order%208812").await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0]["contact"]["external_id"], "1001");
    eventually("profiles", || async { conversations(&app, &ctx.admin, "?q=Pereira").await.len() == 1 }).await;
    // Case and accents fold, both ways; `%` and `_` are taken literally.
    for (q, who) in [("joao", "1002"), ("JOÃO", "1002"), ("voces%20entregam%20em%20evora", "1003"), ("ÉVORA", "1003")]
    {
        let found = conversations(&app, &ctx.admin, &format!("?q={q}")).await;
        let found: Vec<&str> = found.iter().filter_map(|c| c["contact"]["external_id"].as_str()).collect();
        assert_eq!(found, [who], "q={q}");
    }
    // ％ and ＿ (full width) fold to `%` and `_`: still taken literally.
    for q in ["%25", "_", "%EF%BC%85", "%EF%BC%BF"] {
        assert!(conversations(&app, &ctx.admin, &format!("?q={q}")).await.is_empty(), "q={q}");
    }
    let r = app.call("GET", "/api/contacts?q=joao%20pereira", Some(&ctx.admin), None).await;
    assert_eq!(r.body["items"][0]["name"], "João Pereira", "{:?}", r.body);
    // Paging.
    let first = app.call("GET", "/api/conversations?limit=2", Some(&ctx.admin), None).await;
    assert_eq!(first.body["items"].as_array().map(|a| a.len()), Some(2));
    let cursor = first.body["next_cursor"].as_str().expect("cursor").to_string();
    let rest = app.call("GET", &format!("/api/conversations?limit=2&cursor={cursor}"), Some(&ctx.admin), None).await;
    assert_eq!(rest.body["items"][0]["contact"]["external_id"], "1001");
    assert!(rest.body["next_cursor"].is_null());

    // Assign, resolve, snooze; filters follow.
    let maria = by_contact(&all, "1001")["id"].as_str().expect("id").to_string();
    let me =
        app.call("GET", "/api/me", Some(&ctx.admin), None).await.body["user"]["id"].as_str().expect("id").to_string();
    let r = app
        .call(
            "PATCH",
            &format!("/api/conversations/{maria}"),
            Some(&ctx.admin),
            Some(json!({"assignee_id": me, "status": "pending"})),
        )
        .await;
    assert_eq!(
        (r.status, r.body["assignee_id"].as_str(), r.body["status"].as_str()),
        (200, Some(me.as_str()), Some("pending"))
    );
    assert_eq!(conversations(&app, &ctx.admin, "?assignee=me").await.len(), 1);
    assert_eq!(conversations(&app, &ctx.admin, "?assignee=none").await.len(), 2);
    assert_eq!(conversations(&app, &ctx.admin, "?status=pending").await.len(), 1);
    let later = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let r = app
        .call("PATCH", &format!("/api/conversations/{maria}"), Some(&ctx.admin), Some(json!({"snoozed_until": later})))
        .await;
    assert_eq!(r.body["status"], "snoozed");
    let r = app
        .call(
            "PATCH",
            &format!("/api/conversations/{maria}"),
            Some(&ctx.admin),
            Some(json!({"status": "snoozed", "snoozed_until": "2001-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(r.status, 422);
    let r = app
        .call("PATCH", &format!("/api/conversations/{maria}"), Some(&ctx.admin), Some(json!({"status": "closed"})))
        .await;
    assert_eq!(r.status, 422);
    let r = app
        .call("PATCH", &format!("/api/conversations/{maria}"), Some(&ctx.admin), Some(json!({"colour": "red"})))
        .await;
    assert_eq!(r.status, 422);
    let r = app
        .call(
            "PATCH",
            &format!("/api/conversations/{maria}"),
            Some(&ctx.admin),
            Some(json!({"status": "resolved", "assignee_id": null})),
        )
        .await;
    assert_eq!((r.body["status"].as_str(), r.body["assignee_id"].is_null()), (Some("resolved"), true));
    // A new message reopens it.
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "1001", "text": "still waiting"})).await;
    app.processed().await;
    let c = app.call("GET", &format!("/api/conversations/{maria}"), Some(&ctx.admin), None).await;
    assert_eq!(c.body["status"], "open");
    assert_eq!(conversations(&app, &ctx.admin, "?unread=true").await.len(), 3);

    // Agents see only their channels' conversations; viewers never write.
    let (agent, al) = agent_al(&app, &ctx.admin).await;
    assert!(conversations(&app, &al, "").await.is_empty());
    assert_eq!(app.call("GET", &format!("/api/conversations/{maria}"), Some(&al), None).await.status, 404);
    assert_eq!(app.call("GET", &format!("/api/conversations/{maria}/messages"), Some(&al), None).await.status, 404);
    let channel = c.body["channel_id"].as_str().expect("channel").to_string();
    app.call(
        "PUT",
        &format!("/api/channels/{channel}/members"),
        Some(&ctx.admin),
        Some(json!({"user_ids": [agent["user_id"]]})),
    )
    .await;
    assert_eq!(conversations(&app, &al, "").await.len(), 3);
    app.call(
        "POST",
        "/api/members",
        Some(&ctx.admin),
        Some(json!({"email": "vi@acme.test", "role": "viewer", "password": "vi-password-1"})),
    )
    .await;
    let vi = token(&app.login("vi@acme.test", "vi-password-1", "acme").await, "access_token");
    let r =
        app.call("POST", &format!("/api/conversations/{maria}/messages"), Some(&vi), Some(json!({"text": "hi"}))).await;
    assert_eq!(r.status, 403);

    // Messages page oldest to newest with a cursor to older ones.
    let page = app.call("GET", &format!("/api/conversations/{maria}/messages?limit=1"), Some(&ctx.admin), None).await;
    assert_eq!(page.body["items"][0]["text"], "still waiting");
    let older = app
        .call(
            "GET",
            &format!(
                "/api/conversations/{maria}/messages?limit=1&before={}",
                page.body["next_cursor"].as_str().expect("cursor")
            ),
            Some(&ctx.admin),
            None,
        )
        .await;
    assert_eq!(older.body["items"][0]["text"], "Where is my order 8812?");

    // Contacts and canned responses.
    let r = app.call("GET", "/api/contacts?q=Rita", Some(&ctx.admin), None).await;
    assert_eq!(r.body["items"].as_array().map(|a| a.len()), Some(1));
    let r = app
        .call(
            "POST",
            "/api/canned-responses",
            Some(&ctx.admin),
            Some(json!({"shortcut": "ship", "text": "We ship in 2-3 days."})),
        )
        .await;
    assert_eq!(r.status, 201);
    let cid = r.body["id"].as_str().expect("id").to_string();
    let r = app
        .call("POST", "/api/canned-responses", Some(&ctx.admin), Some(json!({"shortcut": "ship", "text": "dup"})))
        .await;
    assert_eq!(r.status, 409);
    // A retry is answered with the one it made.
    let again = json!({"shortcut": "/ship", "text": "We ship in 2-3 days."});
    let r = app.call("POST", "/api/canned-responses", Some(&ctx.admin), Some(again)).await;
    assert_eq!((r.status, r.body["id"].as_str()), (200, Some(cid.as_str())), "{:?}", r.body);
    assert_eq!(app.call("GET", "/api/canned-responses", Some(&al), None).await.body["items"][0]["shortcut"], "ship");
    // Edited: its text, its shortcut (unless another has it).
    let other = json!({"shortcut": "hours", "text": "We answer 9 to 18h."});
    assert_eq!(app.call("POST", "/api/canned-responses", Some(&ctx.admin), Some(other)).await.status, 201);
    let path = format!("/api/canned-responses/{cid}");
    let r = app.call("PATCH", &path, Some(&al), Some(json!({"text": "We ship in 1-2 days 🚚"}))).await;
    assert_eq!(
        (r.status, r.body["text"].as_str(), r.body["shortcut"].as_str()),
        (200, Some("We ship in 1-2 days 🚚"), Some("ship"))
    );
    let r = app.call("PATCH", &path, Some(&al), Some(json!({"shortcut": "hours"}))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("shortcut_taken")));
    let r = app.call("PATCH", &path, Some(&al), Some(json!({"shortcut": "two words"}))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_shortcut")));
    let r = app.call("PATCH", &path, Some(&al), Some(json!({"shortcut": "/envio"}))).await;
    assert_eq!((r.status, r.body["shortcut"].as_str()), (200, Some("envio")));
    // Found as the agent types: a shortcut's start (a `/` passed over), or
    // the text anywhere, either case; a `%` or `_` is only itself.
    let odd = json!({"shortcut": "desc_50", "text": "50% OFF até domingo"});
    assert_eq!(app.call("POST", "/api/canned-responses", Some(&ctx.admin), Some(odd)).await.status, 201);
    let found = |q: &str| {
        let query = reqwest::Url::parse_with_params("http://x/", [("q", q)]).expect("url");
        let path = format!("/api/canned-responses?{}", query.query().unwrap_or_default());
        let (app, al) = (&app, al.clone());
        async move {
            let r = app.call("GET", &path, Some(&al), None).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            let items = r.body["items"].as_array().cloned().unwrap_or_default();
            items.iter().filter_map(|c| c["shortcut"].as_str().map(str::to_string)).collect::<Vec<_>>()
        }
    };
    assert_eq!(found("/EN").await, ["envio"]);
    assert_eq!(found("ho").await, ["hours"], "a shortcut's start, not its middle");
    assert_eq!(found("1-2 DAYS").await, ["envio"]);
    assert_eq!(found("até").await, ["desc_50"]);
    assert_eq!(found("50%").await, ["desc_50"]);
    assert_eq!(found("%").await, ["desc_50"]);
    assert_eq!(found("_").await, Vec::<String>::new());
    assert_eq!(found("desc_").await, ["desc_50"]);
    assert_eq!(found(" ").await.len(), 3, "nothing to look for: all of them");
    assert_eq!(found("nothing like it").await, Vec::<String>::new());
    assert_eq!(
        app.call("PATCH", "/api/canned-responses/999999", Some(&al), Some(json!({"text": "x"}))).await.status,
        404
    );
    assert_eq!(app.call("DELETE", &format!("/api/canned-responses/{cid}"), Some(&ctx.admin), None).await.status, 204);

    // The audit log has the assignment and status changes and the sends.
    let log = app.call("GET", "/api/audit-log?limit=200", Some(&ctx.admin), None).await;
    let actions: Vec<&str> =
        log.body["items"].as_array().expect("items").iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(
        actions.contains(&"conversation.assigned") && actions.contains(&"conversation.status_changed"),
        "{actions:?}"
    );
}

/// The id of the channel of `external_id` (a page, account or number).
pub(crate) async fn channel_id(app: &TestApp, admin: &str, external_id: &str) -> String {
    let channels = app.call("GET", "/api/channels", Some(admin), None).await.body["items"].clone();
    let found = channels.as_array().expect("items").iter().find(|c| c["external_id"] == external_id).cloned();
    found.expect("channel")["id"].as_str().expect("id").to_string()
}

#[actix_web::test]
async fn auto_reply_and_notifications() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let r = app
        .call(
            "PATCH",
            &format!("/api/channels/{page}"),
            Some(&ctx.admin),
            Some(json!({"settings": {"auto_reply": {"enabled": true, "text": "Thanks! We answer within the hour."}}})),
        )
        .await;
    assert_eq!(r.status, 200);
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "hi"})).await;
    app.processed().await;
    let conv = conversations(&app, &ctx.admin, "").await[0]["id"].as_str().expect("id").to_string();
    eventually("auto reply sent", || async {
        messages(&app, &ctx.admin, &conv)
            .await
            .iter()
            .any(|m| m["text"] == "Thanks! We answer within the hour." && m["status"] != "pending")
    })
    .await;
    // Only when a conversation opens: a second message gets no second auto-reply.
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "hello again"})).await;
    app.processed().await;
    actix_web::rt::time::sleep(std::time::Duration::from_millis(300)).await;
    let count = messages(&app, &ctx.admin, &conv)
        .await
        .iter()
        .filter(|m| m["text"] == "Thanks! We answer within the hour.")
        .count();
    assert_eq!(count, 1);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'notification'"), 2);
    // Muted: no notification events, the list still updates.
    app.call(
        "PATCH",
        &format!("/api/channels/{page}"),
        Some(&ctx.admin),
        Some(json!({"settings": {"notifications": false}})),
    )
    .await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "third"})).await;
    app.processed().await;
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'notification'"), 2);
    assert_eq!(conversations(&app, &ctx.admin, "").await[0]["last_message"]["text"], "third");
}

/// Variables in what the server writes for the team (`inbox::variables`):
/// a channel's greeting names the customer (or says its fallback while
/// Meta's name for them is not known yet) and the channel; a macro's
/// message and note and a canned response filled in for a conversation
/// name the customer, the agent and the channel; anything else in braces
/// stays as written.
#[actix_web::test]
async fn variables_fill_in_greetings_macros_and_canned_responses() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let greeting = "Olá {{contact.first_name | cliente}}! A {{channel.name}} responde já. {{1}}";
    let mut names = std::collections::HashMap::new();
    for external in [PAGE_A, PHONE, IG_A] {
        let channel = channel_id(&app, &ctx.admin, external).await;
        let settings = json!({"settings": {"auto_reply": {"enabled": true, "text": greeting}}});
        let r = app.call("PATCH", &format!("/api/channels/{channel}"), Some(&ctx.admin), Some(settings)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        names.insert(external, r.body["name"].as_str().expect("name").to_string());
    }
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "Olá", "name": "Rui Costa"})).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Bom dia", "name": "Ana Sousa"}))
        .await;
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let fb = by_contact(&convs, PSID)["id"].as_str().expect("id").to_string();
    let wa = by_contact(&convs, WA_ID)["id"].as_str().expect("id").to_string();
    let texts = |conv: String| {
        let (app, admin) = (&app, ctx.admin.clone());
        async move {
            let all = messages(app, &admin, &conv).await;
            all.iter().filter_map(|m| m["text"].as_str().map(str::to_string)).collect::<Vec<_>>()
        }
    };
    // WhatsApp names the customer with their message; Messenger only when
    // asked, after it: the greeting is queued with the fallback, and the
    // sender looks the profile up and fills it in again before it goes.
    let to_rui = format!("Olá Rui! A {} responde já. {{{{1}}}}", names[PAGE_A]);
    let to_ana = format!("Olá Ana! A {} responde já. {{{{1}}}}", names[PHONE]);
    assert!(texts(wa.clone()).await.contains(&to_ana), "{:?}", texts(wa.clone()).await);
    eventually("the greeting naming Rui", || async { texts(fb.clone()).await.contains(&to_rui) }).await;
    let sent_to = |to: &'static str| {
        let app = &app;
        async move {
            let log = app.fake("GET", "/_fake/requests", json!({})).await;
            let items = log["items"].as_array().cloned().unwrap_or_default();
            items
                .into_iter()
                .filter(|r| r["method"] == "POST" && r["body"]["recipient"]["id"] == to)
                .filter_map(|r| r["body"]["message"]["text"].as_str().map(str::to_string))
                .collect::<Vec<_>>()
        }
    };
    eventually("the greeting sent", || async { !sent_to(PSID).await.is_empty() }).await;
    assert_eq!(sent_to(PSID).await, std::slice::from_ref(&to_rui), "sent once, named");
    assert_eq!(
        conversations(&app, &ctx.admin, "").await.iter().filter(|c| c["contact"]["name"] == "Rui Costa").count(),
        1
    );
    let announced = format!(
        "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'message.updated' AND payload->>'status' = 'pending' AND payload->>'text' = '{}'",
        to_rui.replace('\'', "''")
    );
    assert_eq!(app.count(&announced), 1, "the new text is announced");
    let previewed = format!(
        "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'conversation.updated' AND payload->'last_message'->>'text' = '{}'",
        to_rui.replace('\'', "''")
    );
    assert!(app.count(&previewed) >= 1, "and so is the list's preview");
    // Filled in once: the stored text has no variables left to fill.
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages WHERE unrendered IS NOT NULL"), 0);
    // A lookup that fails does not hold the greeting: it goes with the fallback.
    let eva = "7392015648120777";
    let fail = json!({"path": format!("/{eva}"), "method": "GET", "status": 500,
        "times": 20, "error": {"code": 2, "message": "An unexpected error has occurred. Please retry your request later."}});
    app.fake("POST", "/_fake/errors", fail).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": eva, "text": "Oi", "name": "Eva Lima"})).await;
    app.processed().await;
    let to_eva = format!("Olá cliente! A {} responde já. {{{{1}}}}", names[PAGE_A]);
    eventually("the greeting to Eva sent", || async { !sent_to(eva).await.is_empty() }).await;
    assert_eq!(sent_to(eva).await, [to_eva]);
    // Instagram's profile says `name` (not first and last): the same.
    let zoe = "6841100000124111";
    app.fake("POST", "/_fake/inbound", json!({"to": IG_A, "from": zoe, "text": "Oi 📷", "name": "Zoë Lima"})).await;
    app.processed().await;
    eventually("the greeting to Zoë sent", || async { !sent_to(zoe).await.is_empty() }).await;
    assert_eq!(sent_to(zoe).await, [format!("Olá Zoë! A {} responde já. {{{{1}}}}", names[IG_A])]);
    // A greeting that is only variables, none known yet, is not sent.
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let bare = json!({"settings": {"auto_reply": {"enabled": true, "text": "{{ contact.name }}"}}});
    assert_eq!(app.call("PATCH", &format!("/api/channels/{page}"), Some(&ctx.admin), Some(bare)).await.status, 200);
    let unnamed = "7392015648120999";
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": unnamed, "text": "Olá?"})).await;
    app.processed().await;
    let quiet = by_contact(&conversations(&app, &ctx.admin, "").await, unnamed)["id"].as_str().expect("id").to_string();
    assert_eq!(texts(quiet).await, ["Olá?"]);

    // A macro's message and note, as the agent who runs it: one who gave
    // no name is the fallback, never their email.
    let me = app.call("GET", "/api/me", Some(&ctx.admin), None).await.body;
    assert_eq!(me["user"]["name"], "", "{me}");
    let hello = json!({"name": "Hello", "actions": [
        {"type": "send_message", "text": "{{contact.first_name}}, sou {{ agent.first_name | a equipa }} da {{channel.name}}."},
        {"type": "add_note", "text": "Falei com {{contact.name}} ({{contact.email | sem email}}) {{contact.mood}}"}]});
    let r = app.call("POST", "/api/macros", Some(&ctx.admin), Some(hello)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let path = format!("/api/conversations/{fb}/macros/{}", r.body["id"].as_str().expect("id"));
    let first = app.call("POST", &path, Some(&ctx.admin), Some(json!({"client_id": "hello-1"}))).await;
    assert_eq!(first.status, 200, "{:?}", first.body);
    let said = texts(fb.clone()).await;
    assert!(said.contains(&format!("Rui, sou a equipa da {}.", names[PAGE_A])), "{said:?}");
    assert!(said.contains(&"Falei com Rui Costa (sem email) {{contact.mood}}".to_string()), "{said:?}");

    // A canned response, filled in for one conversation; its text stays.
    let named = json!({"name": "Zoë Quintela"});
    assert_eq!(app.call("PATCH", "/api/me", Some(&ctx.admin), Some(named)).await.status, 200);
    let agent = "Zoë Quintela";
    let oi = json!({"shortcut": "oi", "text": "Oi {{contact.first_name}}, aqui {{agent.name}}!"});
    assert_eq!(app.call("POST", "/api/canned-responses", Some(&ctx.admin), Some(oi)).await.status, 201);
    let r = app.call("GET", &format!("/api/canned-responses?q=oi&conversation_id={wa}"), Some(&ctx.admin), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let item = &r.body["items"][0];
    assert_eq!(item["rendered"].as_str(), Some(format!("Oi Ana, aqui {agent}!").as_str()), "{item}");
    // What the team saved of Ana: her address and an attribute.
    let plan = json!({"key": "plan", "name": "Plano", "type": "text"});
    assert_eq!(app.call("POST", "/api/contact-attributes", Some(&ctx.admin), Some(plan)).await.status, 201);
    let ana = by_contact(&convs, WA_ID)["contact"]["id"].as_str().expect("contact").to_string();
    let saved = json!({"email": "ana@example.com", "attributes": {"plan": "Pro"}});
    let r = app.call("PATCH", &format!("/api/contacts/{ana}"), Some(&ctx.admin), Some(saved)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let plano = json!({"shortcut": "plano", "text": "Plano {{contact.attributes.plan}}, recibo para {{contact.email}}{{contact.phone| }}."});
    assert_eq!(app.call("POST", "/api/canned-responses", Some(&ctx.admin), Some(plano)).await.status, 201);
    let r =
        app.call("GET", &format!("/api/canned-responses?q=plano&conversation_id={wa}"), Some(&ctx.admin), None).await;
    assert_eq!(r.body["items"][0]["rendered"], "Plano Pro, recibo para ana@example.com.", "{:?}", r.body);
    // And the greeting when she comes back: the webhook path reads it too.
    let phone = channel_id(&app, &ctx.admin, PHONE).await;
    let back = json!({"settings": {"auto_reply": {"enabled": true, "text": "Olá de novo, cliente {{contact.attributes.plan}}!"}}});
    assert_eq!(app.call("PATCH", &format!("/api/channels/{phone}"), Some(&ctx.admin), Some(back)).await.status, 200);
    let resolve = json!({"status": "resolved"});
    assert_eq!(
        app.call("PATCH", &format!("/api/conversations/{wa}"), Some(&ctx.admin), Some(resolve)).await.status,
        200
    );
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Voltei", "name": "Ana Sousa"}))
        .await;
    app.processed().await;
    assert!(
        texts(wa.clone()).await.contains(&"Olá de novo, cliente Pro!".to_string()),
        "{:?}",
        texts(wa.clone()).await
    );
    assert_eq!(item["text"], "Oi {{contact.first_name}}, aqui {{agent.name}}!");
    let plain = app.call("GET", "/api/canned-responses?q=oi", Some(&ctx.admin), None).await;
    assert!(plain.body["items"][0].get("rendered").is_none(), "{:?}", plain.body);
    for (query, status) in [("conversation_id=abc", 400), ("conversation_id=999999", 404)] {
        let r = app.call("GET", &format!("/api/canned-responses?{query}"), Some(&ctx.admin), None).await;
        assert_eq!(r.status, status, "{query}: {:?}", r.body);
    }

    // The macro's retry, now that the agent has a name: the first run's
    // messages answer it, and nothing is sent again.
    let before = texts(fb.clone()).await;
    let again = app.call("POST", &path, Some(&ctx.admin), Some(json!({"client_id": "hello-1"}))).await;
    assert_eq!(again.status, 200, "{:?}", again.body);
    let ids = |body: &Value| body["messages"].as_array().map(|m| m.iter().map(|m| m["id"].clone()).collect::<Vec<_>>());
    assert_eq!(ids(&again.body), ids(&first.body));
    assert_eq!(ids(&first.body).map(|m| m.len()), Some(2));
    assert_eq!(texts(fb.clone()).await, before);
}

/// Business hours and the away reply: a customer writing while the
/// channel is closed gets the away text once per closed period, after the
/// greeting when the conversation opens (a second message, or Meta's
/// retry, adds nothing); while it is open, only the greeting. Hours are
/// checked before anything is written.
#[actix_web::test]
async fn the_away_reply_goes_once_while_closed() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let path = format!("/api/channels/{page}");
    let patch = |settings: Value| app.call("PATCH", &path, Some(&ctx.admin), Some(json!({"settings": settings})));
    let utc = |week: Value| json!({"timezone": "UTC", "week": week});
    for (settings, says) in [
        (json!({"away_reply": {"enabled": true, "text": "Closed."}}), "needs business_hours"),
        (json!({"business_hours": {"timezone": "Nowhere/Atlantis", "week": []}}), "time zone"),
        (json!({"business_hours": utc(json!([{"day": "mon", "open": "18:00", "close": "09:00"}]))}), "closes before"),
        (json!({"business_hours": utc(json!([{"day": "mon", "open": "9", "close": "17:00"}]))}), "HH:MM"),
        (json!({"business_hours": utc(json!([{"day": "someday", "open": "09:00", "close": "17:00"}]))}), "mon … sun"),
        (json!({"business_hours": utc(json!([])), "away_reply": {"enabled": true, "text": " "}}), "needs a text"),
        (json!({"business_hours": utc(json!([])), "away_reply": {"text": "x".repeat(1001)}}), "at most 1000"),
    ] {
        let r = patch(settings.clone()).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_settings")), "{settings}");
        let message = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{settings}: {message}");
    }
    for settings in
        [json!({"business_hours": {"timezone": "UTC"}}), json!({"business_hours": utc(json!([{"day": "mon"}]))})]
    {
        assert_eq!(patch(settings.clone()).await.status, 422, "{settings}");
    }
    let r = app.call("GET", "/api/channels", Some(&ctx.admin), None).await;
    let unchanged = r.body["items"].as_array().expect("items").iter().find(|c| c["id"] == page.as_str()).cloned();
    let unchanged = unchanged.expect("page");
    assert_eq!(
        (unchanged["settings"]["business_hours"].is_null(), &unchanged["settings"]["away_reply"]["enabled"]),
        (true, &json!(false))
    );

    // Closed all week (no openings), greeting and away reply on.
    let r = patch(json!({"auto_reply": {"enabled": true, "text": "Hello!"},
        "business_hours": {"timezone": " Europe/Lisbon", "week": []},
        "away_reply": {"enabled": true, "text": "We are closed; back at nine."}}))
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["settings"]["business_hours"], json!({"timezone": "Europe/Lisbon", "week": []}));
    // Written now, so the reply window is open.
    let now_text = |from: &str, mid: &str, text: &str| {
        let mut v: Value = serde_json::from_slice(&messenger_text(from, mid, text)).expect("json");
        v["entry"][0]["messaging"][0]["timestamp"] = json!(chrono::Utc::now().timestamp_millis());
        serde_json::to_vec(&v).expect("body")
    };
    let first = now_text(PSID, "m_away_1", "anyone there?");
    for _ in 0..2 {
        assert_eq!(app.webhook(&first).await, 200);
    }
    app.processed().await;
    let conv = by_contact(&conversations(&app, &ctx.admin, "").await, PSID)["id"].as_str().expect("id").to_string();
    let gone_out = |m: &Value| ["sent", "delivered", "read"].contains(&m["status"].as_str().unwrap_or(""));
    let texts = |msgs: &[Value]| msgs.iter().map(|m| m["text"].as_str().unwrap_or("").to_string()).collect::<Vec<_>>();
    eventually("greeting and away reply sent", || async {
        let msgs = messages(&app, &ctx.admin, &conv).await;
        msgs.len() == 3 && msgs[1..].iter().all(gone_out)
    })
    .await;
    let msgs = messages(&app, &ctx.admin, &conv).await;
    assert_eq!(texts(&msgs), ["anyone there?", "Hello!", "We are closed; back at nine."]);
    assert_eq!((&msgs[2]["direction"], &msgs[2]["sender"]["kind"]), (&json!("out"), &json!("page")));
    // The same evening: nothing more.
    assert_eq!(app.webhook(&now_text(PSID, "m_away_2", "hello?")).await, 200);
    app.processed().await;
    actix_web::rt::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(texts(&messages(&app, &ctx.admin, &conv).await).len(), 4);
    // Open around the clock: a new customer gets the greeting only.
    let always: Vec<Value> = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
        .iter()
        .map(|d| json!({"day": d, "open": "00:00", "close": "24:00"}))
        .collect();
    let r = patch(json!({"business_hours": {"timezone": "Asia/Tokyo", "week": always}})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["settings"]["away_reply"]["enabled"], true);
    assert_eq!(app.webhook(&now_text("7392015648120777", "m_away_3", "hi")).await, 200);
    app.processed().await;
    let other = by_contact(&conversations(&app, &ctx.admin, "").await, "7392015648120777")["id"]
        .as_str()
        .expect("id")
        .to_string();
    eventually("greeting sent", || async {
        messages(&app, &ctx.admin, &other).await.iter().any(|m| m["text"] == "Hello!" && gone_out(m))
    })
    .await;
    actix_web::rt::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(texts(&messages(&app, &ctx.admin, &other).await), ["hi", "Hello!"]);
    // Hours taken away (null): the away reply must go off first.
    let r = patch(json!({"business_hours": null})).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_settings")));
    let r = patch(json!({"business_hours": null, "away_reply": {"enabled": false}})).await;
    assert_eq!((r.status, r.body["settings"]["business_hours"].is_null()), (200, true), "{:?}", r.body);
}

#[actix_web::test]
async fn snoozes_wake_and_edits_update_in_place() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "typo heer", "id": "m_edit_me"}))
        .await;
    app.processed().await;
    let conv = conversations(&app, &ctx.admin, "").await[0]["id"].as_str().expect("id").to_string();
    // An edit of that message: same row, new text.
    let edit = json!({"object": "page", "entry": [{"id": PAGE_A, "time": 1, "messaging": [{"sender": {"id": PSID}, "recipient": {"id": PAGE_A},
        "timestamp": chrono::Utc::now().timestamp_millis(), "message_edit": {"mid": "m_edit_me", "text": "typo here", "num_edit": 1}}]}]});
    assert_eq!(app.webhook(edit.to_string().as_bytes()).await, 200);
    app.processed().await;
    let msgs = messages(&app, &ctx.admin, &conv).await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0]["text"], "typo here");
    assert!(msgs[0]["edited_at"].is_string());
    // A snooze whose time has passed wakes the conversation.
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(60)).to_rfc3339();
    let r = app
        .call("PATCH", &format!("/api/conversations/{conv}"), Some(&ctx.admin), Some(json!({"snoozed_until": soon})))
        .await;
    assert_eq!(r.body["status"], "snoozed");
    let mut conn = app.db.conn();
    diesel::sql_query("UPDATE tenant_acme.conversations SET snoozed_until = now() - interval '1 second'")
        .execute(&mut conn)
        .expect("time passes");
    let mut pooled = app.pool.get().expect("conn");
    let tenant = switchboard::tenancy::find_by_slug(&mut pooled, "acme").expect("q").expect("acme").tenant_id();
    let woken = switchboard::db::with_tenant(&mut pooled, &switchboard::db::TenantScope::system(tenant), |tc| {
        let mut log = switchboard::inbox::events::EventLog::new();
        let n = switchboard::inbox::conversations::wake_snoozed(tc, &mut log, &[])?;
        log.notify(tc)?;
        Ok::<_, switchboard::AppError>(n)
    })
    .expect("wake");
    assert_eq!(woken, 1);
    let c = app.call("GET", &format!("/api/conversations/{conv}"), Some(&ctx.admin), None).await;
    assert_eq!((c.body["status"].as_str(), c.body["snoozed_until"].is_null()), (Some("open"), true));
}

/// A snooze that has run out stays until the clock wakes it (every 30 s):
/// meanwhile a change that leaves the snooze alone (an assignee, labels,
/// a bulk change, a macro) goes ahead; only snoozing again needs a time
/// still to come. It refused them all with 422 `invalid_snooze` (seen in
/// the chaos runs).
#[actix_web::test]
async fn a_snooze_run_out_before_the_clock_woke_it_blocks_no_other_change() {
    let app = spawn_app_without_workers().await;
    let ctx = acme(&app).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "call me back"})).await;
    process_now(&app);
    let conv = conversations(&app, &ctx.admin, "").await[0]["id"].as_str().expect("id").to_string();
    let path = format!("/api/conversations/{conv}");
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(60)).to_rfc3339();
    let r = app.call("PATCH", &path, Some(&ctx.admin), Some(json!({"snoozed_until": soon}))).await;
    assert_eq!(r.body["status"], "snoozed", "{:?}", r.body);
    app.exec(&format!(
        "UPDATE tenant_acme.conversations SET snoozed_until = now() - interval '1 second' WHERE id = {conv}"
    ));
    let ann = app.call("GET", "/api/me", Some(&ctx.admin), None).await.body["user"]["id"].clone();

    let r = app.call("PATCH", &path, Some(&ctx.admin), Some(json!({"assignee_id": ann, "add_labels": ["vip"]}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!((r.body["status"].as_str(), r.body["assignee_id"].clone()), (Some("snoozed"), ann.clone()));
    let r = app
        .call("POST", "/api/conversations/bulk", Some(&ctx.admin), Some(json!({"ids": [conv], "priority": "high"})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Snoozing again, or keeping it snoozed by name, needs a time to come.
    for change in [json!({"status": "snoozed"}), json!({"snoozed_until": "2001-01-01T00:00:00Z"})] {
        let r = app.call("PATCH", &path, Some(&ctx.admin), Some(change)).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_snooze")), "{:?}", r.body);
    }
    let r = app.call("PATCH", &path, Some(&ctx.admin), Some(json!({"status": "open"}))).await;
    assert_eq!((r.status, r.body["status"].as_str(), r.body["snoozed_until"].is_null()), (200, Some("open"), true));
    let c = app.call("GET", &path, Some(&ctx.admin), None).await;
    assert_eq!((c.body["assignee_id"].clone(), c.body["priority"].as_str()), (ann, Some("high")), "{:?}", c.body);
}

/// Two workers racing: one stores a customer's message while the other
/// handles its unsend and, not seeing the uncommitted message, keeps the
/// unsend for later. Neither transaction sees the other's row, so the
/// keeping side looks again soon after: the message ends unsent within
/// seconds, not at the hourly sweep.
#[actix_web::test]
async fn an_unsend_kept_while_its_message_was_being_stored_is_applied_soon() {
    use diesel::connection::SimpleConnection;
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    assert_eq!(app.webhook(&messenger_text(PSID, "m_first", "Olá")).await, 200);
    app.processed().await;
    // The other worker's transaction: the message is in, not committed.
    let mut storing = app.db.conn();
    storing
        .batch_execute(
            "BEGIN; \
             INSERT INTO tenant_acme.messages \
                    (conversation_id, channel_id, direction, sender_kind, text, status, external_id, platform_timestamp) \
             SELECT conversation_id, channel_id, 'in', 'contact', 'o meu PIN é 4321', 'received', 'm_racing', now() \
               FROM tenant_acme.messages WHERE external_id = 'm_first'",
        )
        .expect("the racing insert");
    let now = chrono::Utc::now().timestamp_millis();
    let unsend = serde_json::to_vec(&json!({"object": "page", "entry": [{"id": PAGE_A, "time": now, "messaging": [
        {"sender": {"id": PSID}, "recipient": {"id": PAGE_A}, "timestamp": now,
         "message": {"mid": "m_racing", "is_deleted": true}}]}]}))
    .expect("body");
    assert_eq!(app.webhook(&unsend).await, 200);
    app.processed().await;
    assert_eq!(
        app.count("SELECT count(*) AS n FROM tenant_acme.early_changes"),
        1,
        "kept: the message was not visible"
    );
    storing.batch_execute("COMMIT").expect("the racing commit");
    eventually("the kept unsend applied", || async {
        app.count(
            "SELECT count(*) AS n FROM tenant_acme.messages WHERE external_id = 'm_racing' AND deleted_at IS NOT NULL",
        ) == 1
    })
    .await;
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.early_changes"), 0);
    let conv = conversations(&app, &ctx.admin, "").await[0]["id"].as_str().expect("id").to_string();
    let shown = messages(&app, &ctx.admin, &conv).await;
    let racing = shown.iter().find(|m| m["external_id"] == "m_racing").expect("the racing message");
    assert!(racing["text"].is_null() && racing["deleted_at"].is_string(), "{racing:?}");
    // Live inboxes were told.
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'message.updated'"), 1);
}

/// After failures Meta retries in no particular order: a customer's unsend,
/// edits and reaction can come before their message. They wait for it, and
/// the message is created as it is now; duplicates and older edits change
/// nothing; what waits for a message that never comes is dropped in time.
#[actix_web::test]
async fn changes_that_come_before_their_message_wait_for_it() {
    const IGSID: &str = "6841100000123456";
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let t0 = chrono::Utc::now().timestamp_millis() - 60_000;
    let messaging = |object: &str, account: &str, from: &str, ms: i64, event: Value| {
        let mut m = json!({"sender": {"id": from}, "recipient": {"id": account}, "timestamp": ms});
        if let (Some(m), Some(e)) = (m.as_object_mut(), event.as_object()) {
            m.extend(e.clone());
        }
        serde_json::to_vec(&json!({"object": object, "entry": [{"id": account, "time": ms, "messaging": [m]}]}))
            .expect("body")
    };
    let ig = |ms: i64, event: Value| messaging("instagram", IG_A, IGSID, ms, event);
    let fb = |ms: i64, event: Value| messaging("page", PAGE_A, PSID, ms, event);
    let secret = "o meu cartão é 4111 1111 1111 1111";
    let bodies = [
        // Instagram: unsent (twice) before the message itself came.
        ig(t0 + 2_000, json!({"message": {"mid": "ig_unsent", "is_deleted": true}})),
        ig(t0 + 2_000, json!({"message": {"mid": "ig_unsent", "is_deleted": true}})),
        // Messenger: the second edit, the first, a reaction, then the message.
        fb(t0 + 5_000, json!({"message_edit": {"mid": "m_edited", "text": "Olá, têm o tamanho M?", "num_edit": 2}})),
        fb(t0 + 3_000, json!({"message_edit": {"mid": "m_edited", "text": "Olá, têm tamanho M", "num_edit": 1}})),
        fb(t0 + 6_000, json!({"reaction": {"mid": "m_edited", "action": "react", "reaction": "love", "emoji": "❤️"}})),
    ];
    for body in &bodies {
        assert_eq!(app.webhook(body).await, 200);
    }
    app.processed().await;
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.early_changes"), 4);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages"), 0);
    for body in [
        ig(t0, json!({"message": {"mid": "ig_unsent", "text": secret}})),
        fb(t0, json!({"message": {"mid": "m_edited", "text": "Ola tem tamanho"}})),
    ] {
        assert_eq!(app.webhook(&body).await, 200);
    }
    app.processed().await;
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.early_changes"), 0);
    let convs = conversations(&app, &ctx.admin, "").await;
    let conv_of = |platform: &str| {
        convs.iter().find(|c| c["platform"] == platform).expect("conversation")["id"].as_str().expect("id").to_string()
    };
    let unsent = messages(&app, &ctx.admin, &conv_of("instagram")).await;
    assert_eq!(unsent.len(), 1);
    assert!(unsent[0]["text"].is_null() && unsent[0]["deleted_at"].is_string(), "{:?}", unsent[0]);
    // A message unsent before it came is no question: nobody waits; the
    // edited one waits.
    let waiting_of =
        |platform: &str| convs.iter().find(|c| c["platform"] == platform).map(|c| c["waiting_since"].clone());
    assert_eq!(waiting_of("instagram"), Some(Value::Null));
    assert!(waiting_of("facebook").is_some_and(|w| w.is_string()), "{convs:?}");
    // Nobody is pinged for a message that was unsent before it came.
    let pings = format!(
        "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'notification' AND conversation_id = {}",
        conv_of("instagram")
    );
    assert_eq!(app.count(&pings), 0);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'notification'"), 1);
    let edited = messages(&app, &ctx.admin, &conv_of("facebook")).await;
    assert_eq!(edited.len(), 1);
    assert_eq!(edited[0]["text"], "Olá, têm o tamanho M?", "{:?}", edited[0]);
    assert_eq!(edited[0]["reactions"], json!({PSID: "❤️"}));
    // The unsent text never reached the log, a notification or the index.
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE payload::text LIKE '%4111%'"), 0);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages WHERE search_text LIKE '%4111%'"), 0);
    // Created as they are: no message.updated for what came first.
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'message.updated'"), 0);

    // Now in order: a duplicate and an older edit change nothing and log
    // nothing; a newer one does, once.
    for body in [
        &bodies[2],
        &bodies[3],
        &fb(t0 + 9_000, json!({"message_edit": {"mid": "m_edited", "text": "Têm o M?", "num_edit": 3}})),
    ] {
        assert_eq!(app.webhook(body).await, 200);
    }
    app.processed().await;
    let edited = messages(&app, &ctx.admin, &conv_of("facebook")).await;
    assert_eq!(edited[0]["text"], "Têm o M?");
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'message.updated'"), 1);
    // A reaction made before the one shown, delivered after it: no change.
    let older = fb(t0 + 4_000, json!({"reaction": {"mid": "m_edited", "action": "react", "emoji": "👍"}}));
    assert_eq!(app.webhook(&older).await, 200);
    app.processed().await;
    assert_eq!(messages(&app, &ctx.admin, &conv_of("facebook")).await[0]["reactions"], json!({PSID: "❤️"}));
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'message.updated'"), 1);
    // An unsend, then an edit that was made before it: stays unsent, and
    // the image goes with the text.
    app.webhook(&fb(
        t0 + 10_000,
        json!({"message": {"mid": "m_photo", "text": "esta",
        "attachments": [{"type": "image", "payload": {"url": "https://scontent.xx.fbcdn.net/v/photo.jpg"}}]}}),
    ))
    .await;
    app.webhook(&fb(t0 + 12_000, json!({"message": {"mid": "m_photo", "is_deleted": true}}))).await;
    app.webhook(&fb(t0 + 11_000, json!({"message_edit": {"mid": "m_photo", "text": "esta aqui", "num_edit": 1}})))
        .await;
    app.processed().await;
    let photo =
        messages(&app, &ctx.admin, &conv_of("facebook")).await.into_iter().find(|m| m["external_id"] == "m_photo");
    let photo = photo.expect("photo");
    assert_eq!((photo["text"].clone(), photo["attachments"].clone()), (Value::Null, json!([])), "{photo:?}");

    // A reply typed in the Page inbox, read (by watermark) before its echo
    // came; and one sent after that read, which the watermark does not cover.
    app.webhook(&fb(t0 + 31_000, json!({"read": {"watermark": t0 + 30_500}}))).await;
    let page_echo = |ms: i64, mid: &str| {
        let mut v: Value = serde_json::from_slice(&messaging(
            "page",
            PAGE_A,
            PAGE_A,
            ms,
            json!({"message":
            {"mid": mid, "text": "Respondido na caixa da página", "is_echo": true, "app_id": 263902037430900_i64}}),
        ))
        .expect("json");
        v["entry"][0]["messaging"][0]["recipient"]["id"] = json!(PSID);
        serde_json::to_vec(&v).expect("body")
    };
    app.webhook(&page_echo(t0 + 30_000, "m_page_inbox_read")).await;
    app.webhook(&page_echo(t0 + 32_000, "m_page_inbox_unread")).await;
    app.processed().await;
    let fb_msgs = messages(&app, &ctx.admin, &conv_of("facebook")).await;
    let status_of = |mid: &str| fb_msgs.iter().find(|m| m["external_id"] == mid).expect("echo")["status"].clone();
    assert_eq!((status_of("m_page_inbox_read"), status_of("m_page_inbox_unread")), (json!("read"), json!("sent")));

    // A reply typed in the Instagram app, read before its echo came.
    let echo = |ms: i64, event: Value| messaging("instagram", IG_A, IG_A, ms, event);
    app.webhook(&ig(t0 + 21_000, json!({"read": {"mid": "ig_from_app"}}))).await;
    let mut reply =
        echo(t0 + 20_000, json!({"message": {"mid": "ig_from_app", "text": "Já seguiu!", "is_echo": true}}));
    let mut v: Value = serde_json::from_slice(&reply).expect("json");
    v["entry"][0]["messaging"][0]["recipient"]["id"] = json!(IGSID);
    reply = serde_json::to_vec(&v).expect("body");
    app.webhook(&reply).await;
    app.processed().await;
    let from_app =
        messages(&app, &ctx.admin, &conv_of("instagram")).await.into_iter().find(|m| m["external_id"] == "ig_from_app");
    let from_app = from_app.expect("echo");
    assert_eq!(
        (from_app["direction"].as_str(), from_app["status"].as_str()),
        (Some("out"), Some("read")),
        "{from_app:?}"
    );

    // Two workers raced: one kept a reaction while the other stored its
    // message (neither saw the other's row). The hourly sweep applies it.
    let mut pooled = app.pool.get().expect("conn");
    let tenant = switchboard::tenancy::find_by_slug(&mut pooled, "acme").expect("q").expect("acme").tenant_id();
    let scope = switchboard::db::TenantScope::system(tenant);
    let mut conn = app.db.conn();
    diesel::sql_query(format!(
        "INSERT INTO tenant_acme.early_changes (channel_id, external_id, kind, contact, at, value) \
         SELECT channel_id, external_id, 'reaction', '{PSID}', now(), '😮' FROM tenant_acme.messages WHERE external_id = 'm_photo'"
    ))
    .execute(&mut conn)
    .expect("a kept reaction");
    let updates = "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'message.updated'";
    let updates_before = app.count(updates);
    let swept = switchboard::db::with_tenant(&mut pooled, &scope, |tc| {
        let mut log = switchboard::inbox::events::EventLog::new();
        let n = switchboard::inbox::early::sweep(tc, &mut log)?;
        log.notify(tc)?;
        Ok::<_, switchboard::AppError>(n)
    })
    .expect("sweep");
    assert_eq!(swept, 1);
    assert_eq!(app.count(updates), updates_before + 1);
    let photo =
        messages(&app, &ctx.admin, &conv_of("facebook")).await.into_iter().find(|m| m["external_id"] == "m_photo");
    assert_eq!(photo.expect("photo")["reactions"], json!({PSID: "😮"}));
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.early_changes"), 0);

    // A reaction to a message that never comes (sent before the channel was
    // connected) waits seven days, and so does a receipt.
    app.webhook(&fb(t0, json!({"reaction": {"mid": "m_before_us", "action": "react", "emoji": "👍"}}))).await;
    app.webhook(&fixture("whatsapp_status_delivered.json")).await;
    app.processed().await;
    let waiting = "SELECT (SELECT count(*) FROM tenant_acme.early_changes) + (SELECT count(*) FROM tenant_acme.early_statuses) AS n";
    assert_eq!(app.count(waiting), 2);
    let prune =
        |pooled: &mut _| switchboard::db::with_tenant(pooled, &scope, switchboard::inbox::early::prune).expect("prune");
    assert_eq!(prune(&mut pooled), 0);
    diesel::connection::SimpleConnection::batch_execute(
        &mut conn,
        "UPDATE tenant_acme.early_changes SET created_at = now() - interval '8 days'; \
         UPDATE tenant_acme.early_statuses SET created_at = now() - interval '8 days'",
    )
    .expect("time passes");
    assert_eq!(prune(&mut pooled), 2);
    assert_eq!(app.count(waiting), 0);

    // Meta's own shapes: the fixtures' unsend (a minute later) of the
    // fixtures' text, delivered first.
    for name in ["instagram_deleted.json", "instagram_text.json"] {
        assert_eq!(app.webhook(&fixture(name)).await, 200);
        app.processed().await;
    }
    let text: Value = serde_json::from_slice(&fixture("instagram_text.json")).expect("json");
    let mid = text["entry"][0]["messaging"][0]["message"]["mid"].as_str().expect("mid");
    let unsent = messages(&app, &ctx.admin, &conv_of("instagram")).await.into_iter().find(|m| m["external_id"] == mid);
    let unsent = unsent.expect("the fixture's message");
    assert!(unsent["text"].is_null() && unsent["deleted_at"].is_string(), "{unsent}");
}

/// More than a full batch waiting (a burst, a restart): the processor and
/// its helper share the backlog, and every message lands exactly once, with
/// one unread each, and the event log has no gap.
#[actix_web::test]
async fn a_deep_backlog_is_shared_and_lands_exactly_once() {
    let app = spawn_app().await;
    acme(&app).await;
    const MESSAGES: usize = 1300;
    let bodies: Vec<Vec<u8>> = (0..MESSAGES + 200)
        .map(|i| {
            // The last 200 repeat earlier messages (Meta's retries).
            let i = if i >= MESSAGES { i - MESSAGES } else { i };
            messenger_text(&format!("9{:015}", i % 97), &format!("m_backlog_{i}"), &format!("backlog {i} — ünïcode"))
        })
        .collect();
    // Stored as the endpoint stores them, all at once, before any processing.
    app.store_bodies(&bodies);
    app.processed().await;
    assert_eq!(
        app.count("SELECT count(*) AS n FROM tenant_acme.messages WHERE external_id LIKE 'm_backlog_%'"),
        MESSAGES as i64
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.conversations WHERE contact_id IN (SELECT id FROM tenant_acme.contacts WHERE external_id LIKE '9%')"), 97);
    assert_eq!(
        app.count("SELECT coalesce(sum(unread_count), 0)::bigint AS n FROM tenant_acme.conversations"),
        MESSAGES as i64
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM public.webhook_events WHERE status <> 'done'"), 0);
    assert_eq!(
        app.count("SELECT (max(seq) - min(seq) + 1 - count(*))::bigint AS n FROM tenant_acme.events"),
        0,
        "the event log has a gap"
    );
}

/// Stores Messenger texts for page A as webhook rows (as the endpoint would).
fn store_texts(app: &TestApp, texts: &[(usize, String)]) {
    let rows: Vec<Vec<u8>> = texts
        .iter()
        .map(|(i, text)| messenger_text(&format!("8{:015}", i % 5), &format!("m_poison_{i}"), text))
        .collect();
    app.store_bodies(&rows);
}

#[actix_web::test]
async fn one_poisonous_webhook_does_not_take_its_batch_down() {
    let app = spawn_app_without_workers().await;
    acme(&app).await;
    // PostgreSQL refuses one message of the batch.
    let mut conn = app.db.conn();
    diesel::connection::SimpleConnection::batch_execute(
        &mut conn,
        "CREATE FUNCTION tenant_acme.refuse() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN RAISE EXCEPTION 'refused for the test'; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT ON tenant_acme.messages FOR EACH ROW \
           WHEN (NEW.text = 'poison') EXECUTE FUNCTION tenant_acme.refuse()",
    )
    .expect("trigger");
    let mut texts: Vec<(usize, String)> = (0..20).map(|i| (i, format!("fine {i}"))).collect();
    texts.insert(7, (99, "poison".into()));
    store_texts(&app, &texts);
    let pool = app.db.pool(2);
    let report = switchboard::inbox::processor::process_batch(&pool, &app.config.meta.app_id, &app.state.online, 500)
        .expect("batch");
    assert_eq!((report.claimed, report.done, report.retried), (21, 20, 1), "{report:?}");
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages WHERE external_id LIKE 'm_poison_%'"), 20);
    assert_eq!(
        app.count("SELECT count(*) AS n FROM public.webhook_events WHERE status = 'pending' AND last_error LIKE '%refused for the test%'"),
        1
    );
    // The event log has the 20, with no gap.
    assert_eq!(app.count("SELECT (max(seq) - min(seq) + 1 - count(*))::bigint AS n FROM tenant_acme.events"), 0);
}

/// The processor's connection lost in the middle of a batch (a restart, a
/// failover, a proxy cutting it): the batch goes on with another, at once,
/// rather than failing each webhook on the dead one and waiting out its
/// lease.
#[actix_web::test]
async fn a_batch_whose_connection_is_lost_goes_on_with_another() {
    let app = spawn_app_without_workers().await;
    acme(&app).await;
    // The first message stored ends its own connection (a sequence, which
    // the rollback leaves as it is, so only once).
    let mut conn = app.db.conn();
    diesel::connection::SimpleConnection::batch_execute(
        &mut conn,
        "CREATE SEQUENCE tenant_acme.cut_once; \
         CREATE FUNCTION tenant_acme.cut() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN IF nextval('tenant_acme.cut_once') = 1 THEN \
                PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(5); END IF; \
              RETURN NEW; END $$; \
         CREATE TRIGGER cut BEFORE INSERT ON tenant_acme.messages FOR EACH ROW EXECUTE FUNCTION tenant_acme.cut()",
    )
    .expect("trigger");
    let texts: Vec<(usize, String)> = (0..12).map(|i| (i, format!("still there {i}?"))).collect();
    store_texts(&app, &texts);
    let pool = app.db.pool(2);
    let report = switchboard::inbox::processor::process_batch(&pool, &app.config.meta.app_id, &app.state.online, 500)
        .expect("batch");
    assert_eq!((report.claimed, report.done, report.retried, report.dead), (12, 12, 0, 0), "{report:?}");
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages"), 12);
    assert_eq!(app.count("SELECT count(*) AS n FROM public.webhook_events WHERE status <> 'done'"), 0);
    assert_eq!(app.count("SELECT last_value AS n FROM tenant_acme.cut_once"), 13, "cut once, then all 12 stored");
}

#[actix_web::test]
async fn a_nul_character_is_dropped_not_the_message() {
    let app = spawn_app_without_workers().await;
    acme(&app).await;
    store_texts(&app, &[(1, "nul \u{0} inside".into()), (2, "fine".into())]);
    let pool = app.db.pool(2);
    let report = switchboard::inbox::processor::process_batch(&pool, &app.config.meta.app_id, &app.state.online, 500)
        .expect("batch");
    assert_eq!((report.done, report.retried), (2, 0), "{report:?}");
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages WHERE text = 'nul  inside'"), 1);
}

/// Pending entries of the tenant's message-text search index (pgstattuple).
fn pending_search_entries(app: &TestApp) -> i64 {
    let mut conn = app.db.conn();
    diesel::connection::SimpleConnection::batch_execute(&mut conn, "CREATE EXTENSION IF NOT EXISTS pgstattuple")
        .expect("pgstattuple");
    app.count("SELECT pending_tuples::bigint AS n FROM pgstatginindex('tenant_acme.messages_text_trgm')")
}

/// 300 texts, over 64 KiB in all (MERGE_AT_BYTES): due at once, not after a wait.
fn parcel_texts() -> Vec<(usize, String)> {
    let rest = "I ordered it last week and the tracking page has not moved since Monday. \
                Could you tell me when it will arrive, or send me a new tracking number? \
                It is a birthday present, so the date matters a lot 📦 — ünïcode, thanks!";
    let texts: Vec<(usize, String)> = (0..300).map(|i| (i, format!("Where is my parcel {i}? {rest}"))).collect();
    let bytes: usize = texts.iter().map(|(_, t)| t.len()).sum();
    assert!(bytes > switchboard::inbox::search_index::MERGE_AT_BYTES, "{bytes} bytes");
    texts
}

/// A batch only adds its texts to the search index's pending list; the
/// merge is a call of its own (the background worker's), after which the
/// texts are in the index proper and still found.
#[actix_web::test]
async fn a_batch_leaves_the_search_index_merge_to_a_call_of_its_own() {
    let app = spawn_app_without_workers().await;
    let ctx = acme(&app).await;
    let texts = parcel_texts();
    store_texts(&app, &texts);
    let pool = app.db.pool(2);
    let report = switchboard::inbox::processor::process_batch(&pool, &app.config.meta.app_id, &app.state.online, 500)
        .expect("batch");
    assert_eq!(report.done, texts.len(), "{report:?}");
    let bytes: usize = report.indexed_text.iter().map(|(_, b)| b).sum();
    assert_eq!(bytes, texts.iter().map(|(_, t)| t.len()).sum::<usize>(), "every stored text is counted once");
    assert!(pending_search_entries(&app) > 0, "the batch merged the index itself");
    let mut conn = pool.get().expect("conn");
    let tenant = switchboard::tenancy::find_by_slug(&mut conn, "acme").expect("q").expect("acme").tenant_id();
    let merge = |conn: &mut diesel::PgConnection| {
        switchboard::db::with_tenant(
            conn,
            &switchboard::db::TenantScope::system(tenant),
            switchboard::inbox::search_index::merge_pending,
        )
        .expect("merge")
    };
    assert!(merge(&mut conn) > 0, "pending pages merged");
    assert_eq!(pending_search_entries(&app), 0);
    assert_eq!(merge(&mut conn), 0, "nothing left the second time");
    assert_eq!(conversations(&app, &ctx.admin, "?q=parcel%20199").await.len(), 1);
    // Duplicates (Meta's retries) store nothing and index nothing.
    store_texts(&app, &texts[..10]);
    let report = switchboard::inbox::processor::process_batch(&pool, &app.config.meta.app_id, &app.state.online, 500)
        .expect("batch");
    assert_eq!((report.done, report.indexed_text.iter().map(|(_, b)| b).sum::<usize>()), (10, 0), "{report:?}");
}

/// With the workers running, a processed burst's search entries are merged
/// in the background as soon as enough text has gathered.
#[actix_web::test]
async fn the_server_merges_the_search_index_in_the_background() {
    let app = spawn_app().await;
    acme(&app).await;
    let texts = parcel_texts();
    store_texts(&app, &texts);
    app.processed().await;
    eventually("search index merged", || async { pending_search_entries(&app) == 0 }).await;
    assert_eq!(
        app.count("SELECT count(*) AS n FROM tenant_acme.messages WHERE text LIKE 'Where is my parcel%'"),
        texts.len() as i64
    );
}

/// Meta's notice that a WhatsApp customer changed number, from the old one.
fn number_change_notice(old: &str, new: &str, wamid: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"object": "whatsapp_business_account", "entry": [{"id": "112233445566778", "changes": [{
        "field": "messages",
        "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15551234567", "phone_number_id": PHONE},
            "messages": [{"from": old, "id": wamid, "timestamp": "1773140200", "type": "system",
                "system": {"body": format!("User A changed from {old} to {new}"), "wa_id": new, "type": "user_changed_number"}}]}}]}]}))
    .expect("body")
}

#[actix_web::test]
async fn a_whatsapp_customer_who_changes_number_keeps_their_conversation() {
    const NEW: &str = "14155550999";
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    assert_eq!(app.webhook(&fixture("whatsapp_text.json")).await, 200);
    app.processed().await;
    let before = by_contact(&conversations(&app, &ctx.admin, "").await, WA_ID).clone();
    let conv = before["id"].as_str().expect("id").to_string();
    // The notice, twice (Meta retries).
    for _ in 0..2 {
        assert_eq!(app.webhook(&number_change_notice(WA_ID, NEW, "wamid.SYS1")).await, 200);
    }
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let wa: Vec<&Value> = convs.iter().filter(|c| c["platform"] == "whatsapp").collect();
    assert_eq!(wa.len(), 1, "{convs:?}");
    assert_eq!((wa[0]["id"].as_str(), wa[0]["contact"]["external_id"].as_str()), (Some(conv.as_str()), Some(NEW)));
    assert_eq!(wa[0]["contact"]["id"], before["contact"]["id"]);
    assert_eq!(wa[0]["contact"]["name"], before["contact"]["name"]);
    let notices: Vec<Value> =
        messages(&app, &ctx.admin, &conv).await.into_iter().filter(|m| m["external_id"] == "wamid.SYS1").collect();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0]["text"], format!("User A changed from {WA_ID} to {NEW}"));
    // The customer writes from the new number: same conversation; a reply
    // goes to the new number.
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": NEW, "text": "é o meu número novo"})).await;
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    assert_eq!(convs.iter().filter(|c| c["platform"] == "whatsapp").count(), 1, "{convs:?}");
    assert_eq!(by_contact(&convs, NEW)["last_message"]["text"], "é o meu número novo");
    let (status, _) = reply(&app, &ctx.admin, &conv, "Obrigado, anotado!", "c-new-number").await;
    assert_eq!(status, 202);
    eventually("reply sent to the new number", || async {
        app.fake("GET", "/_fake/requests", json!({})).await["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["path"] == format!("/{PHONE}/messages") && r["body"]["to"] == NEW))
    })
    .await;
    assert_eq!(
        app.count("SELECT count(*) AS n FROM tenant_acme.contacts WHERE external_id IN ('14155550123', '14155550999')"),
        1
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM public.webhook_events WHERE status = 'dead'"), 0);
}

/// A new customer's first message, their number change and a message sent
/// from the old number before the change but delivered after the notice, all
/// in one POST (so one batch): one contact, known by the new number, with all
/// three in its conversation. Then the same for the now known customer.
#[actix_web::test]
async fn a_number_change_within_one_batch_keeps_one_contact() {
    const OLD: &str = "5511987650001";
    const NEW: &str = "5511987650002";
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    // Then, a known customer: the change again, to a third number.
    const THIRD: &str = "5511987650003";
    let batch = |old: &str, new: &str, ids: [&str; 3]| {
        let text = |id: &str, body: &str| json!({"from": old, "id": id, "timestamp": "1773140100", "type": "text", "text": {"body": body}});
        serde_json::to_vec(&json!({"object": "whatsapp_business_account", "entry": [{"id": "112233445566778", "changes": [{
            "field": "messages",
            "value": {"messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15551234567", "phone_number_id": PHONE},
                "contacts": [{"profile": {"name": "Zé"}, "wa_id": old}],
                "messages": [
                    text(ids[0], "oi"),
                    {"from": old, "id": ids[1], "timestamp": "1773140200", "type": "system",
                        "system": {"body": format!("User A changed from {old} to {new}"), "wa_id": new, "type": "user_changed_number"}},
                    text(ids[2], "mandei antes de trocar"),
                ]}}]}]}))
        .expect("body")
    };
    let mut expected = Vec::new();
    for (old, new, ids) in
        [(OLD, NEW, ["wamid.B1", "wamid.B2", "wamid.B3"]), (NEW, THIRD, ["wamid.C1", "wamid.C2", "wamid.C3"])]
    {
        assert_eq!(app.webhook(&batch(old, new, ids)).await, 200);
        app.processed().await;
        expected.extend(ids);
        let convs = conversations(&app, &ctx.admin, "").await;
        assert_eq!(convs.len(), 1, "{convs:?}");
        assert_eq!(convs[0]["contact"]["external_id"], new);
        assert_eq!(convs[0]["contact"]["name"], "Zé");
        let stored: Vec<String> = messages(&app, &ctx.admin, convs[0]["id"].as_str().expect("id"))
            .await
            .iter()
            .filter_map(|m| m["external_id"].as_str().map(str::to_string))
            .collect();
        assert_eq!(stored.len(), expected.len(), "{stored:?}");
        for id in &expected {
            assert!(stored.iter().any(|i| i == id), "{id} in {stored:?}");
        }
    }
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.contacts"), 1);
}

/// One WhatsApp text from `from`, sent at `at` (Unix seconds).
fn whatsapp_text_at(from: &str, wamid: &str, at: i64, body: &str) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"object": "whatsapp_business_account", "entry": [whatsapp_entry(from, "Zé", wamid, at, body)]}),
    )
    .expect("body")
}

/// One entry of a WhatsApp messages webhook: `from`, with the profile name
/// `name`, wrote `body` at `at`.
fn whatsapp_entry(from: &str, name: &str, wamid: &str, at: i64, body: &str) -> Value {
    json!({"id": "112233445566778", "changes": [{
        "field": "messages",
        "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15551234567", "phone_number_id": PHONE},
            "contacts": [{"profile": {"name": name}, "wa_id": from}],
            "messages": [{"from": from, "id": wamid, "timestamp": at.to_string(), "type": "text", "text": {"body": body}}]}}]})
}

/// A WhatsApp customer who renames themselves shows the new name, live and
/// over REST. A message from before the rename, delivered late, does not
/// bring the old name back, nor does an older entry after a newer one in
/// the same webhook.
#[actix_web::test]
async fn a_whatsapp_customer_who_renames_themselves_shows_the_new_name() {
    const WHO: &str = "5511987650201";
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let send = |entries: Vec<Value>| {
        serde_json::to_vec(&json!({"object": "whatsapp_business_account", "entry": entries})).expect("body")
    };
    let name = || async {
        let convs = conversations(&app, &ctx.admin, "").await;
        by_contact(&convs, WHO)["contact"]["name"].as_str().map(str::to_string)
    };
    assert_eq!(app.webhook(&send(vec![whatsapp_entry(WHO, "Ana", "wamid.N1", 1773140100, "oi")])).await, 200);
    app.processed().await;
    assert_eq!(name().await.as_deref(), Some("Ana"));
    let mut socket = crate::realtime::ws(&app, "", Some(&ctx.admin), None).await.expect("ws");
    let hello = crate::realtime::next(&mut socket, std::time::Duration::from_secs(3)).await.expect("hello");
    assert_eq!(hello["type"], "hello");
    let renamed = whatsapp_entry(WHO, "Ana Sousa ✓", "wamid.N2", 1773140200, "sou eu");
    assert_eq!(app.webhook(&send(vec![renamed])).await, 200);
    let wait = std::time::Duration::from_secs(10);
    let m = crate::realtime::until(&mut socket, "message.created", wait).await.expect("message.created");
    assert_eq!(m["data"]["sender"]["name"], "Ana Sousa ✓");
    let c = crate::realtime::until(&mut socket, "conversation.updated", wait).await.expect("conversation.updated");
    assert_eq!(c["data"]["contact"]["name"], "Ana Sousa ✓");
    // Sent before the rename, delivered after it.
    let late = whatsapp_entry(WHO, "Ana", "wamid.N0", 1773140050, "mandei antes");
    assert_eq!(app.webhook(&send(vec![late])).await, 200);
    app.processed().await;
    assert_eq!(name().await.as_deref(), Some("Ana Sousa ✓"));
    // Two renames in one webhook, the newer first.
    let both = send(vec![
        whatsapp_entry(WHO, "Ana S.", "wamid.N4", 1773140400, "de novo"),
        whatsapp_entry(WHO, "Ana Lima", "wamid.N3", 1773140300, "antes disso"),
    ]);
    assert_eq!(app.webhook(&both).await, 200);
    app.processed().await;
    assert_eq!(name().await.as_deref(), Some("Ana S."));
    assert_eq!(app.count(&format!("SELECT count(*) AS n FROM tenant_acme.contacts WHERE external_id = '{WHO}'")), 1);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages WHERE external_id LIKE 'wamid.N%'"), 5);
}

/// Messages from a number that changed, each delivered in a webhook of its
/// own after the change: those sent before the change (Meta retries late)
/// belong to the customer under the new number, however many changes later;
/// one sent after it is someone else's (numbers are recycled), and does not
/// pull the late ones away from the customer.
#[actix_web::test]
async fn a_late_message_from_a_former_number_finds_its_customer() {
    const OLD: &str = "5511987650101";
    const NEW: &str = "5511987650102";
    const THIRD: &str = "5511987650103";
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    // The notice's time: 1773140200 (see `number_change_notice`).
    let steps: [(Vec<u8>, &str); 6] = [
        (whatsapp_text_at(OLD, "wamid.L1", 1773140100, "oi"), "a first message"),
        (number_change_notice(OLD, NEW, "wamid.L2"), "the change"),
        (whatsapp_text_at(OLD, "wamid.L3", 1773140150, "mandei antes de trocar 📱"), "sent before, delivered after"),
        (whatsapp_text_at(OLD, "wamid.L4", 1773140300, "número novo na operadora"), "someone else, after"),
        (whatsapp_text_at(OLD, "wamid.L5", 1773140160, "mais uma de antes"), "before, with OLD taken again"),
        (number_change_notice(NEW, THIRD, "wamid.L6"), "a second change"),
    ];
    for (body, what) in &steps {
        assert_eq!(app.webhook(body).await, 200, "{what}");
        app.processed().await;
    }
    // The second notice has the same time as the first: what the first
    // number sent before it still follows the customer to the third.
    assert_eq!(app.webhook(&whatsapp_text_at(OLD, "wamid.L7", 1773140170, "e outra")).await, 200);
    // Delivered again: stored once.
    assert_eq!(app.webhook(&whatsapp_text_at(OLD, "wamid.L3", 1773140150, "mandei antes de trocar 📱")).await, 200);
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let customer = by_contact(&convs, THIRD);
    let ids = |conv: &Value| {
        let conv = conv["id"].as_str().expect("id").to_string();
        let app = &app;
        let admin = ctx.admin.clone();
        async move {
            let mut ids: Vec<String> = messages(app, &admin, &conv)
                .await
                .iter()
                .filter_map(|m| m["external_id"].as_str().map(str::to_string))
                .collect();
            ids.sort();
            ids
        }
    };
    assert_eq!(ids(customer).await, ["wamid.L1", "wamid.L2", "wamid.L3", "wamid.L5", "wamid.L6", "wamid.L7"]);
    assert_eq!(ids(by_contact(&convs, OLD)).await, ["wamid.L4"]);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.contacts WHERE external_id IN ('{OLD}', '{NEW}', '{THIRD}')"
        )),
        2
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM public.webhook_events WHERE status = 'dead'"), 0);
}

/// A WhatsApp Business app number that joins shares its chat history
/// (`history`, Meta's shape): the messages are stored once each, both
/// directions, in conversations that start resolved and are announced per
/// conversation, not per message; nothing is counted unread, notified or
/// answered, even with an auto-reply on.
#[actix_web::test]
async fn a_shared_whatsapp_history_is_imported_quietly() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let wa = channel_id(&app, &ctx.admin, PHONE).await;
    let settings = json!({"settings": {"auto_reply": {"enabled": true, "text": "Olá!"}, "notifications": true}});
    assert_eq!(app.call("PATCH", &format!("/api/channels/{wa}"), Some(&ctx.admin), Some(settings)).await.status, 200);
    let now = chrono::Utc::now().timestamp();
    let at = |ago: i64| (now - ago).to_string();
    let chunk = |order: i64, threads: Value| {
        serde_json::to_vec(&json!({"object": "whatsapp_business_account", "entry": [{"id": "112233445566778", "changes": [{
            "field": "history",
            "value": {"messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15551234567", "phone_number_id": PHONE},
                "history": [{"metadata": {"phase": 0, "chunk_order": order, "progress": 100}, "threads": threads}]}}]}]}))
        .expect("body")
    };
    let first = chunk(
        1,
        json!([{"id": "5511900000001", "messages": [
            {"from": "5511900000001", "id": "wamid.H1", "timestamp": at(7200), "type": "text", "text": {"body": "Vocês entregam em Lisboa? 🇵🇹"},
                "history_context": {"status": "READ"}},
            {"from": "15551234567", "to": "5511900000001", "id": "wamid.H2", "timestamp": at(7000), "type": "text", "text": {"body": "Sim!"},
                "history_context": {"status": "READ"}},
            {"from": "5511900000001", "id": "wamid.H3", "timestamp": at(3600), "type": "media_placeholder",
                "history_context": {"status": "DELIVERED"}},
        ]}]),
    );
    // Out of order, repeated, and a declined chunk among them; two through
    // the fake Meta, which shapes them itself.
    let second = json!({"phone_number_id": PHONE, "chunk_order": 2, "threads": [{"id": "5511900000002", "messages": [
        {"from": "15551234567", "to": "5511900000002", "id": "wamid.H4", "timestamp": at(86400 * 30), "type": "text",
            "text": {"body": "Seu pedido saiu"}, "history_context": {"status": "DELIVERED"}},
    ]}]});
    assert_eq!(app.fake("POST", "/_fake/history", second).await["delivered_status"], 200);
    assert_eq!(app.webhook(&first).await, 200);
    let declined = app.fake("POST", "/_fake/history", json!({"phone_number_id": PHONE, "declined": true})).await;
    assert_eq!(declined["webhook"]["entry"][0]["changes"][0]["value"]["history"][0]["errors"][0]["code"], 2593109);
    assert_eq!(app.webhook(&first).await, 200);
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    assert_eq!(convs.len(), 2, "{convs:?}");
    assert!(convs.iter().all(|c| c["status"] == "resolved" && c["unread_count"] == 0), "{convs:?}");
    let a = by_contact(&convs, "5511900000001");
    assert_eq!(a["last_message"]["direction"], "in");
    assert_eq!(a["can_reply"], true, "the customer wrote within 24 h: {a}");
    let found = messages(&app, &ctx.admin, a["id"].as_str().expect("id")).await;
    let shape: Vec<(&str, &str, &str)> = found
        .iter()
        .map(|m| {
            (
                m["external_id"].as_str().unwrap_or(""),
                m["direction"].as_str().unwrap_or(""),
                m["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        shape,
        vec![("wamid.H1", "in", "received"), ("wamid.H2", "out", "read"), ("wamid.H3", "in", "received")]
    );
    assert_eq!(found[0]["text"], "Vocês entregam em Lisboa? 🇵🇹");
    assert_eq!(found[1]["sender"]["kind"], "page");
    assert_eq!(found[2]["attachments"][0]["type"], "media_placeholder");
    // The media come later, by the same id: the placeholder takes them.
    let media = json!({"phone_number_id": PHONE, "chunk_order": 3, "threads": [{"id": "5511900000001", "messages": [
        {"from": "5511900000001", "id": "wamid.H3", "timestamp": at(3600), "type": "image",
            "image": {"id": "998877", "mime_type": "image/jpeg", "sha256": "abc", "caption": "a foto"},
            "history_context": {"status": "DELIVERED"}},
    ]}]});
    assert_eq!(app.fake("POST", "/_fake/history", media).await["delivered_status"], 200);
    app.processed().await;
    let found = messages(&app, &ctx.admin, a["id"].as_str().expect("id")).await;
    assert_eq!((found.len(), found[2]["attachments"][0]["type"].as_str()), (3, Some("image")), "{found:?}");
    assert_eq!(found[2]["text"], "a foto");
    let b = by_contact(&convs, "5511900000002");
    assert_eq!((b["last_message"]["status"].as_str(), b["can_reply"].as_bool()), (Some("delivered"), Some(false)));
    // Nothing answered, nothing notified.
    actix_web::rt::time::sleep(std::time::Duration::from_millis(300)).await;
    let sent = app.fake("GET", "/_fake/requests", json!({})).await["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|r| r["path"] == format!("/{PHONE}/messages"))
        .count();
    assert_eq!(sent, 0);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'notification'"), 0);
    // The live inbox hears of each conversation, not of every old message.
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'message.created'"), 0);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'conversation.created'"), 2);
    // One more for the three-message chunk, after its conversation opened.
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'conversation.updated'"), 1);
    assert_eq!(
        app.count(
            "SELECT count(*) AS n FROM tenant_acme.events u JOIN tenant_acme.events c USING (conversation_id) \
              WHERE u.type = 'conversation.updated' AND c.type = 'conversation.created' AND u.seq < c.seq"
        ),
        0
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages"), 4);
    // The customer writes again: the conversation reopens, as any would.
    let again = serde_json::to_vec(&json!({"object": "whatsapp_business_account", "entry": [{"id": "112233445566778", "changes": [{
        "field": "messages",
        "value": {"messaging_product": "whatsapp", "metadata": {"display_phone_number": "15551234567", "phone_number_id": PHONE},
            "contacts": [{"profile": {"name": "Ana"}, "wa_id": "5511900000001"}],
            "messages": [{"from": "5511900000001", "id": "wamid.H5", "timestamp": at(0), "type": "text", "text": {"body": "Oi de novo"}}]}}]}]}))
    .expect("body");
    assert_eq!(app.webhook(&again).await, 200);
    app.processed().await;
    let a = by_contact(&conversations(&app, &ctx.admin, "").await, "5511900000001").clone();
    assert_eq!((a["status"].as_str(), a["unread_count"].as_i64()), (Some("open"), Some(1)), "{a}");
}

#[actix_web::test]
async fn whatsapp_customers_see_the_agent_typing_on_their_latest_message() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    assert_eq!(app.webhook(&fixture("whatsapp_text.json")).await, 200);
    app.processed().await;
    let wa = by_contact(&conversations(&app, &ctx.admin, "").await, WA_ID)["id"].as_str().expect("id").to_string();
    let typing_receipts = || async {
        let log = app.fake("GET", "/_fake/requests", json!({})).await;
        log["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|r| r["path"] == format!("/{PHONE}/messages") && r["body"]["typing_indicator"].is_object())
            .cloned()
            .collect::<Vec<Value>>()
    };
    let r =
        app.call("POST", &format!("/api/conversations/{wa}/typing"), Some(&ctx.admin), Some(json!({"on": true}))).await;
    assert_eq!(r.status, 204);
    eventually("typing indicator sent", || async { !typing_receipts().await.is_empty() }).await;
    assert_eq!(
        typing_receipts().await[0]["body"],
        json!({"messaging_product": "whatsapp", "status": "read",
               "message_id": "wamid.HBgLMTQxNTU1NTAxMjMVAgASGBQzQUZBS0UwMDAwMDAwMDAwMDAwMQA=",
               "typing_indicator": {"type": "text"}})
    );
    // WhatsApp has no "off": nothing more is sent.
    let r = app
        .call("POST", &format!("/api/conversations/{wa}/typing"), Some(&ctx.admin), Some(json!({"on": false})))
        .await;
    assert_eq!(r.status, 204);
    actix_web::rt::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(typing_receipts().await.len(), 1);
}

/// A channel shows when a webhook last came for it (to the minute): set by
/// the first, left alone by the next within the minute, none for a channel
/// that had none.
#[actix_web::test]
async fn a_channel_shows_when_its_last_webhook_came() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let last_webhook = |external: &'static str| {
        let app = &app;
        let admin = ctx.admin.clone();
        async move {
            let list = app.call("GET", "/api/channels", Some(&admin), None).await;
            list.body["items"]
                .as_array()
                .expect("items")
                .iter()
                .find(|c| c["external_id"] == external)
                .expect("channel")["last_webhook_at"]
                .clone()
        }
    };
    assert!(last_webhook(PAGE_A).await.is_null(), "none yet");
    assert_eq!(app.webhook(&messenger_text(PSID, "m_last.1", "olá")).await, 200);
    app.processed().await;
    let first = last_webhook(PAGE_A).await;
    let at = chrono::DateTime::parse_from_rfc3339(first.as_str().expect("a time")).expect("RFC 3339");
    assert!((chrono::Utc::now() - at.with_timezone(&chrono::Utc)).num_seconds().abs() < 60, "{first}");
    assert_eq!(app.webhook(&messenger_text(PSID, "m_last.2", "ainda aí?")).await, 200);
    app.processed().await;
    assert_eq!(last_webhook(PAGE_A).await, first, "written at most once a minute");
    assert!(last_webhook(PHONE).await.is_null(), "the WhatsApp number had none");
}

/// Work no local store wakes the processor for (another instance stored it
/// and stopped, or a retry fell due) is still taken by an idle processor,
/// which sleeps until the next row is due but never unboundedly.
#[actix_web::test]
async fn an_idle_processor_still_takes_work_it_was_not_woken_for() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    assert_eq!(app.webhook(&messenger_text(PSID, "m_idle.1", "first")).await, 200);
    app.processed().await;
    // Idle long enough that its waits pass unwoken and it sleeps long.
    actix_web::rt::time::sleep(std::time::Duration::from_millis(800)).await;
    app.store_bodies(&[messenger_text(PSID, "m_idle.2", "stored elsewhere")]);
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let conv = by_contact(&convs, PSID)["id"].as_str().expect("id").to_string();
    let shown = messages(&app, &ctx.admin, &conv).await;
    assert!(shown.iter().any(|m| m["text"] == "stored elsewhere"), "{shown:?}");
}

/// Meta's CDN URLs expire: an Instagram or Messenger photo (a customer's,
/// or the business's own sent from elsewhere) is copied as it comes, and
/// served from the copy (a part for a `Range`) once Meta's
/// URL no longer works; its `url` stays Meta's. An unsend removes the copy.
/// A URL off Meta's CDN (a link a customer shares) is never fetched.
#[actix_web::test]
async fn cdn_media_are_copied_before_metas_urls_expire() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (from, other) = ("6841100000188888", "7392015648120888");
    let photo = json!({"mime_type": "image/png", "data": "PNG bytes of a photo"});
    let sent =
        app.fake("POST", "/_fake/inbound", json!({"to": IG_A, "from": from, "id": "m_photo.1", "image": photo})).await;
    let cdn = sent["webhook"]["entry"][0]["messaging"][0]["message"]["attachments"][0]["payload"]["url"]
        .as_str()
        .expect("the CDN URL")
        .to_string();
    // On Messenger, a shared link on a host that is no CDN of Meta's, in
    // the same message as a photo of Meta's: only the photo is fetched.
    let mut body: Value = serde_json::from_slice(&messenger_text(other, "m_two.1", "")).expect("json");
    let message = &mut body["entry"][0]["messaging"][0]["message"];
    message.as_object_mut().expect("message").remove("text");
    message["attachments"] = json!([
        {"type": "fallback", "payload": {"url": format!("{}/healthz", app.base)}},
        {"type": "image", "payload": {"url": cdn}},
    ]);
    assert_eq!(app.webhook(&serde_json::to_vec(&body).expect("body")).await, 200);
    // The business answers with a photo from the Page inbox: its echo's
    // URL expires alike.
    let mut echo: Value = serde_json::from_slice(&fixture("messenger_echo.json")).expect("fixture");
    echo["entry"][0]["id"] = json!(PAGE_A);
    let event = &mut echo["entry"][0]["messaging"][0];
    event["sender"]["id"] = json!(PAGE_A);
    event["recipient"]["id"] = json!(other);
    event["message"] = json!({"mid": "m_echo_photo.1", "is_echo": true, "app_id": 263902037430900_i64,
        "attachments": [{"type": "image", "payload": {"url": cdn}}]});
    assert_eq!(app.webhook(&serde_json::to_vec(&echo).expect("body")).await, 200);
    app.processed().await;
    let copies = "SELECT count(*) AS n FROM tenant_acme.media_copies";
    eventually("three copies", || async { app.count(copies) == 3 }).await;
    let of_echo = "SELECT count(*) AS n FROM tenant_acme.media_copies c JOIN tenant_acme.messages m \
                   ON m.id = c.message_id WHERE m.external_id = 'm_echo_photo.1' AND m.sender_kind = 'page'";
    assert_eq!(app.count(of_echo), 1);
    let metrics = app.client.get(app.url("/metrics")).send().await.expect("request").text().await.expect("text");
    let copied = metrics
        .lines()
        .find_map(|l| l.strip_prefix("switchboard_media_copied_total "))
        .and_then(|n| n.parse::<u64>().ok())
        .expect("the copies' counter");
    assert!(copied >= 3, "{copied}");
    // A copy missed (the process stopped before it was made, say) is made
    // when the attachment is first asked for, while Meta's URL works.
    let missed = app
        .count("WITH d AS (DELETE FROM tenant_acme.media_copies WHERE idx = 1 RETURNING message_id) SELECT count(*) AS n FROM d");
    assert_eq!(missed, 1);
    let two_id = app.count("SELECT id AS n FROM tenant_acme.messages WHERE external_id = 'm_two.1'");
    let res = app.client.get(app.url(&format!("/api/messages/{two_id}/attachments/1"))).bearer_auth(&ctx.admin);
    let res = res.send().await.expect("request");
    assert_eq!(
        (res.status().as_u16(), res.headers().get("location").and_then(|l| l.to_str().ok())),
        (302, Some(cdn.as_str()))
    );
    eventually("the missed copy", || async { app.count(copies) == 3 }).await;
    app.fake("POST", "/_fake/cdn/expire", json!({})).await;
    assert_eq!(app.client.get(&cdn).send().await.expect("request").status().as_u16(), 403, "Meta's URL expired");

    let convs = conversations(&app, &ctx.admin, "").await;
    let conv_of = |contact: &str| by_contact(&convs, contact)["id"].as_str().expect("id").to_string();
    let find = |shown: Vec<Value>, mid: &str| shown.into_iter().find(|m| m["external_id"] == mid).expect("message");
    let first = find(messages(&app, &ctx.admin, &conv_of(from)).await, "m_photo.1");
    assert_eq!(first["attachments"][0]["url"], cdn.as_str(), "the url stays Meta's");
    let path = format!("/api/messages/{}/attachments/0", first["id"].as_str().expect("id"));
    let get = |path: String, range: Option<&'static str>| {
        let mut req = app.client.get(app.url(&path)).bearer_auth(&ctx.admin);
        if let Some(r) = range {
            req = req.header("range", r);
        }
        async move { req.send().await.expect("request") }
    };
    let header = |res: &reqwest::Response, name: &str| {
        res.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    };
    let res = get(path.clone(), None).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "content-type"), "image/png");
    assert_eq!(header(&res, "content-disposition"), "inline");
    assert_eq!(header(&res, "x-content-type-options"), "nosniff");
    assert!(header(&res, "content-security-policy").contains("sandbox"));
    assert_eq!(res.bytes().await.expect("bytes").as_ref(), b"PNG bytes of a photo");
    let part = get(path.clone(), Some("bytes=4-8")).await;
    assert_eq!((part.status().as_u16(), header(&part, "content-range")), (206, "bytes 4-8/20".to_string()));
    assert_eq!(part.bytes().await.expect("bytes").as_ref(), b"bytes");
    // A HEAD: the whole copy's type and length, no body, whatever the Range.
    let head = app.client.head(app.url(&path)).bearer_auth(&ctx.admin).header("range", "bytes=4-8").send().await;
    let head = head.expect("request");
    assert_eq!(
        (head.status().as_u16(), header(&head, "content-type"), header(&head, "content-length")),
        (200, "image/png".to_string(), "20".to_string())
    );
    assert!(head.bytes().await.expect("no body").is_empty());
    // Read from the database as a part, not the whole cut down: the end.
    let tail = get(path.clone(), Some("bytes=-5")).await;
    assert_eq!((tail.status().as_u16(), header(&tail, "content-range")), (206, "bytes 15-19/20".to_string()));
    assert_eq!(tail.bytes().await.expect("bytes").as_ref(), b"photo");
    let past = get(path.clone(), Some("bytes=20-")).await;
    assert_eq!((past.status().as_u16(), header(&past, "content-range")), (416, "bytes */20".to_string()));
    let body: Value = past.json().await.expect("json error");
    assert_eq!(body["error"]["code"], "range_not_satisfiable");
    // Without a token: a link made for the attachment, as for WhatsApp's.
    let link = app.call("POST", &format!("{path}/link"), Some(&ctx.admin), None).await;
    let link = link.body["url"].as_str().expect("link").to_string();
    let res = app.client.get(app.url(&link)).send().await.expect("request");
    assert_eq!(
        (res.status().as_u16(), res.bytes().await.expect("bytes").as_ref()),
        (200, &b"PNG bytes of a photo"[..])
    );

    // The message of two: the shared link was not fetched (a redirect
    // still), the photo was.
    let two = find(messages(&app, &ctx.admin, &conv_of(other)).await, "m_two.1");
    let two_path = |i: usize| format!("/api/messages/{}/attachments/{i}", two["id"].as_str().expect("id"));
    let res = app.client.get(app.url(&two_path(0))).bearer_auth(&ctx.admin).send().await.expect("request");
    assert_eq!(res.status().as_u16(), 302);
    let res = get(two_path(1), None).await;
    assert_eq!(
        (res.status().as_u16(), res.bytes().await.expect("bytes").as_ref()),
        (200, &b"PNG bytes of a photo"[..])
    );

    // The customer unsends the photo: its copy goes with it.
    let mut unsend: Value = serde_json::from_slice(&fixture("instagram_deleted.json")).expect("fixture");
    let now = chrono::Utc::now().timestamp_millis();
    unsend["entry"][0]["id"] = json!(IG_A);
    unsend["entry"][0]["time"] = json!(now);
    let event = &mut unsend["entry"][0]["messaging"][0];
    event["sender"]["id"] = json!(from);
    event["recipient"]["id"] = json!(IG_A);
    event["timestamp"] = json!(now);
    event["message"]["mid"] = json!("m_photo.1");
    assert_eq!(app.webhook(&serde_json::to_vec(&unsend).expect("body")).await, 200);
    app.processed().await;
    assert_eq!(app.count(copies), 2);
    assert_eq!(get(path, None).await.status().as_u16(), 404);
}

/// A `multipart/form-data` send of `file` (name, type, bytes) with the other parts given.
pub(crate) async fn send_file(
    app: &TestApp,
    t: &str,
    conv: &str,
    file: Option<(&str, &str, &[u8])>,
    parts: &[(&str, &str)],
) -> crate::common::Resp {
    post_form(app, t, &format!("/api/conversations/{conv}/messages"), file, parts).await
}

/// A `multipart/form-data` POST to `path` of `file` (name, type, bytes) with the other parts given.
pub(crate) async fn post_form(
    app: &TestApp,
    t: &str,
    path: &str,
    file: Option<(&str, &str, &[u8])>,
    parts: &[(&str, &str)],
) -> crate::common::Resp {
    let mut form = reqwest::multipart::Form::new();
    for (name, value) in parts {
        form = form.text(name.to_string(), value.to_string());
    }
    if let Some((name, mime, bytes)) = file {
        let part = reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(name.to_string()).mime_str(mime);
        form = form.part("file", part.expect("mime"));
    }
    let res = app.client.post(app.url(path)).bearer_auth(t).multipart(form).send().await.expect("send");
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if status >= 400 {
        crate::common::assert_error_shape(status, &body);
    }
    crate::common::Resp { status, body }
}

#[actix_web::test]
async fn an_agent_sends_files_as_each_platform_takes_them() {
    const IGSID: &str = "6841100000654321";
    const LATE_WA: &str = "14155550999";
    let png: Vec<u8> = [&b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"[..], &[7u8; 64][..]].concat();
    let jpeg: Vec<u8> = [&b"\xff\xd8\xff\xe0\0\x10JFIF\0"[..], "recibo nº 7 🧾".as_bytes()].concat();
    let pdf: &[u8] = b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n%%EOF\n";
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    for (to, from) in [(PAGE_A, PSID), (IG_A, IGSID), (PHONE, WA_ID)] {
        app.fake("POST", "/_fake/inbound", json!({"to": to, "from": from, "text": "Pode mandar a fatura?"})).await;
    }
    let two_days_ago = (chrono::Utc::now() - chrono::Duration::hours(48)).to_rfc3339();
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": LATE_WA, "text": "Olá", "at": two_days_ago})).await;
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let conv = |who: &str| by_contact(&convs, who)["id"].as_str().expect("id").to_string();
    let (fb, ig, wa, late) = (conv(PSID), conv(IGSID), conv(WA_ID), conv(LATE_WA));

    // Messenger: the photo is stored with the message and uploaded with the send.
    let r = send_file(&app, &ctx.admin, &fb, Some(("foto.png", "image/png", &png)), &[("client_id", "f-1")]).await;
    assert_eq!((r.status, r.body["status"].as_str()), (202, Some("pending")), "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    let shown = &r.body["attachments"][0];
    assert_eq!(
        (&shown["type"], &shown["url"], &shown["filename"], &shown["mime_type"], &shown["size"]),
        (
            &json!("image"),
            &json!(format!("/api/messages/{id}/attachments/0")),
            &json!("foto.png"),
            &json!("image/png"),
            &json!(png.len())
        ),
        "{shown}"
    );
    assert_eq!(r.body["text"], Value::Null);
    eventually("the photo read", || async { message_status(&app, &ctx.admin, &fb, &id).await["status"] == "read" })
        .await;
    let file = app.client.get(app.url(&format!("/api/messages/{id}/attachments/0"))).bearer_auth(&ctx.admin);
    let res = file.send().await.expect("get");
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers().get("content-type").and_then(|v| v.to_str().ok()), Some("image/png"));
    // A file a browser may keep for itself; the API's other answers no cache keeps.
    let kept = res.headers().get_all("cache-control").iter().map(|v| v.to_str().unwrap_or_default().to_string());
    assert_eq!(kept.collect::<Vec<_>>(), ["private, max-age=3600"]);
    assert_eq!(res.bytes().await.expect("bytes").to_vec(), png);
    // The echo (matched by its metadata) is the same message, not another.
    let outgoing: Vec<Value> =
        messages(&app, &ctx.admin, &fb).await.into_iter().filter(|m| m["direction"] == "out").collect();
    assert_eq!(outgoing.len(), 1, "{outgoing:?}");
    // The list shows what the last message holds where it has no text.
    let listed = conversations(&app, &ctx.admin, "").await;
    let last = &by_contact(&listed, PSID)["last_message"];
    assert_eq!((&last["text"], &last["attachment_type"]), (&Value::Null, &json!("image")), "{last}");
    assert_eq!(by_contact(&listed, IGSID)["last_message"]["attachment_type"], Value::Null);
    // A retry is answered with the message; another file under its client_id is not a retry.
    let again = send_file(&app, &ctx.admin, &fb, Some(("foto.png", "image/png", &png)), &[("client_id", "f-1")]).await;
    assert_eq!((again.status, again.body["id"].as_str()), (202, Some(id.as_str())));
    let other =
        send_file(&app, &ctx.admin, &fb, Some(("f.pdf", "application/pdf", pdf)), &[("client_id", "f-1")]).await;
    assert_eq!((other.status, other.body["error"]["code"].as_str()), (409, Some("client_id_reused")));

    // What each platform refuses is said before anything is stored.
    let zip: &[u8] = b"PK\x03\x04\x14\0\0\0\x08\0rest";
    let mut big = png.clone();
    big.resize(6 * 1024 * 1024, 0);
    for (conv, file, parts, status, code) in [
        (&fb, Some(("foto.png", "image/png", &png[..])), vec![("text", "a caption")], 422, "caption_not_supported"),
        (&ig, Some(("a.zip", "application/zip", zip)), vec![], 422, "unsupported_attachment"),
        (&wa, Some(("a.zip", "application/zip", zip)), vec![], 422, "unsupported_attachment"),
        (&wa, Some(("big.png", "image/png", &big[..])), vec![], 413, "file_too_large"),
        (&wa, Some(("empty.txt", "text/plain", &b""[..])), vec![], 422, "empty_file"),
        (&late, Some(("foto.png", "image/png", &png[..])), vec![], 422, "outside_window"),
        (&wa, None, vec![("text", "no file")], 400, "invalid_body"),
        (&wa, Some(("foto.png", "image/png", &png[..])), vec![("private", "maybe")], 422, "invalid_body"),
        (&wa, Some(("foto.png", "image/png", &png[..])), vec![("colour", "red")], 400, "invalid_body"),
    ] {
        let r = send_file(&app, &ctx.admin, conv, file, &parts).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (status, Some(code)), "{parts:?}: {:?}", r.body);
    }
    // A text part ignored before the file was refused was not stored either.
    assert!(messages(&app, &ctx.admin, &late).await.iter().all(|m| m["direction"] == "in"));

    // Instagram takes a PDF, in the send call itself.
    let r = send_file(&app, &ctx.admin, &ig, Some(("fatura.pdf", "application/pdf", pdf)), &[]).await;
    assert_eq!((r.status, r.body["attachments"][0]["type"].as_str()), (202, Some("file")), "{:?}", r.body);
    let ig_id = r.body["id"].as_str().expect("id").to_string();
    eventually("the PDF sent", || async {
        ["sent", "delivered", "read"]
            .contains(&message_status(&app, &ctx.admin, &ig, &ig_id).await["status"].as_str().unwrap_or(""))
    })
    .await;

    // WhatsApp: uploaded to the number's media, then sent by its id with the caption.
    let r = send_file(
        &app,
        &ctx.admin,
        &wa,
        Some(("C:\\fotos\\recibo.jpg", "image/jpeg", &jpeg)),
        &[("text", "Aqui está o recibo 🧾"), ("client_id", "w-1")],
    )
    .await;
    assert_eq!((r.status, r.body["text"].as_str()), (202, Some("Aqui está o recibo 🧾")), "{:?}", r.body);
    assert_eq!(r.body["attachments"][0]["filename"], "recibo.jpg");
    let wa_id = r.body["id"].as_str().expect("id").to_string();
    eventually("the receipt read", || async {
        message_status(&app, &ctx.admin, &wa, &wa_id).await["status"] == "read"
    })
    .await;
    let r = send_file(&app, &ctx.admin, &wa, Some(("nota.txt", "text/plain", b"Total: 10 EUR")), &[]).await;
    assert_eq!((r.status, r.body["attachments"][0]["type"].as_str()), (202, Some("file")), "{:?}", r.body);
    let doc_id = r.body["id"].as_str().expect("id").to_string();
    eventually("the document sent", || async {
        message_status(&app, &ctx.admin, &wa, &doc_id).await["status"] == "read"
    })
    .await;

    let log = app.fake("GET", "/_fake/requests", json!({})).await;
    let calls = log["items"].as_array().expect("items").clone();
    let to = |path: String| calls.iter().filter(|c| c["path"] == path).map(|c| c["body"].clone()).collect::<Vec<_>>();
    let fb_sends: Vec<Value> =
        to(format!("/{PAGE_A}/messages")).into_iter().filter(|b| b["filedata"].is_object()).collect();
    assert_eq!(fb_sends.len(), 1, "one upload for the photo and its retry: {fb_sends:?}");
    assert_eq!(fb_sends[0]["recipient"], json!({"id": PSID}));
    assert_eq!(fb_sends[0]["message"]["attachment"]["type"], "image");
    assert_eq!(
        (&fb_sends[0]["filedata"]["content_type"], &fb_sends[0]["filedata"]["size"]),
        (&json!("image/png"), &json!(png.len()))
    );
    let ig_sends: Vec<Value> =
        to(format!("/{IG_A}/messages")).into_iter().filter(|b| b["filedata"].is_object()).collect();
    assert_eq!(ig_sends.len(), 1);
    assert_eq!(ig_sends[0]["message"]["attachment"]["type"], "file");
    let uploads = to(format!("/{PHONE}/media"));
    assert_eq!(uploads.len(), 2, "{uploads:?}");
    assert_eq!((&uploads[0]["type"], &uploads[0]["messaging_product"]), (&json!("image/jpeg"), &json!("whatsapp")));
    let sends: Vec<Value> = to(format!("/{PHONE}/messages"))
        .into_iter()
        .filter(|b| b["type"] == "image" || b["type"] == "document")
        .collect();
    assert_eq!(sends.len(), 2, "{sends:?}");
    assert_eq!(sends[0]["image"]["caption"], "Aqui está o recibo 🧾");
    assert!(sends[0]["image"]["id"].is_string());
    assert_eq!(sends[1]["document"]["filename"], "nota.txt");
    // What WhatsApp got is what the agent sent.
    let media_id = sends[0]["image"]["id"].as_str().expect("media id");
    let waba_token = &ctx.waba_token;
    let meta = app.client.get(format!("{}/v24.0/{media_id}", app.fake_base)).bearer_auth(waba_token).send().await;
    let meta: Value = meta.expect("media").json().await.expect("json");
    let download = app.client.get(meta["url"].as_str().expect("url")).bearer_auth(waba_token).send().await;
    assert_eq!(download.expect("download").bytes().await.expect("bytes").to_vec(), jpeg);
}

#[actix_web::test]
async fn a_slow_upload_holds_back_only_its_own_conversation() {
    let jpeg: Vec<u8> = [&b"\xff\xd8\xff\xe0\0\x10JFIF\0"[..], &[1u8; 256][..]].concat();
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    for (to, from) in [(PAGE_A, PSID), (PHONE, WA_ID)] {
        app.fake("POST", "/_fake/inbound", json!({"to": to, "from": from, "text": "Olá"})).await;
    }
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let (fb, wa) =
        (by_contact(&convs, PSID)["id"].as_str().expect("id"), by_contact(&convs, WA_ID)["id"].as_str().expect("id"));
    // WhatsApp takes four seconds over the upload.
    app.fake("POST", "/_fake/errors", json!({"path": "/media", "method": "POST", "delay_ms": 4000, "times": 1})).await;
    let r = send_file(&app, &ctx.admin, wa, Some(("foto.jpg", "image/jpeg", &jpeg)), &[]).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let photo = r.body["id"].as_str().expect("id").to_string();
    let (status, after) = reply(&app, &ctx.admin, wa, "e depois o texto", "wa-2").await;
    assert_eq!(status, 202, "{after}");
    let (status, other) = reply(&app, &ctx.admin, fb, "noutra conversa", "fb-1").await;
    assert_eq!(status, 202, "{other}");
    let other_id = other["id"].as_str().expect("id").to_string();
    // Another conversation's reply does not wait for the upload...
    eventually("the other conversation's reply sent", || async {
        message_status(&app, &ctx.admin, fb, &other_id).await["status"] != "pending"
    })
    .await;
    assert_eq!(message_status(&app, &ctx.admin, wa, &photo).await["status"], "pending", "the upload is still going");
    // ...and the text after the photo goes after it.
    let after_id = after["id"].as_str().expect("id").to_string();
    eventually("the text after the photo read", || async {
        message_status(&app, &ctx.admin, wa, &after_id).await["status"] == "read"
    })
    .await;
    assert_eq!(message_status(&app, &ctx.admin, wa, &photo).await["status"], "read");
    let log = app.fake("GET", "/_fake/requests", json!({})).await;
    let sends: Vec<String> = log["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|c| c["path"] == format!("/{PHONE}/messages") && c["body"]["to"].is_string())
        .map(|c| c["body"]["type"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(sends, ["image", "text"]);
}

/// A note is its author's to rewrite; its author or an admin may delete it,
/// and it stays in its place as deleted. What the customer was sent stays.
#[actix_web::test]
async fn a_note_is_edited_by_its_author_and_deleted_by_its_author_or_an_admin() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Olá"})).await;
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let (conv, channel) = {
        let c = by_contact(&convs, WA_ID);
        (c["id"].as_str().expect("id").to_string(), c["channel_id"].as_str().expect("channel").to_string())
    };
    let (al, al_token) = agent_al(&app, &ctx.admin).await;
    let r = app
        .call(
            "PUT",
            &format!("/api/channels/{channel}/members"),
            Some(&ctx.admin),
            Some(json!({"user_ids": [al["user_id"]]})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let note = |t: String, text: &str| {
        let (app, conv, body) = (&app, conv.clone(), json!({"text": text, "private": true}));
        async move { app.call("POST", &format!("/api/conversations/{conv}/messages"), Some(&t), Some(body)).await }
    };
    let mine = note(al_token.clone(), "cliente prefere email").await;
    assert_eq!(mine.status, 201, "{:?}", mine.body);
    let mine = format!("/api/messages/{}", mine.body["id"].as_str().expect("id"));
    let admins = note(ctx.admin.clone(), "pedido #4521 atrasado").await;
    let admins = format!("/api/messages/{}", admins.body["id"].as_str().expect("id"));
    let inbound = messages(&app, &ctx.admin, &conv).await.into_iter().find(|m| m["direction"] == "in").expect("in");
    let inbound = format!("/api/messages/{}", inbound["id"].as_str().expect("id"));

    // The author rewrites it: shown, announced, searchable under its new words.
    let before = app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'message.updated'");
    let r = app.call("PATCH", &mine, Some(&al_token), Some(json!({"text": "cliente prefere WhatsApp 📱"}))).await;
    assert_eq!((r.status, r.body["text"].as_str()), (200, Some("cliente prefere WhatsApp 📱")), "{:?}", r.body);
    assert!(r.body["edited_at"].is_string(), "{:?}", r.body);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'message.updated'"), before + 1);
    // The same text again changes nothing.
    let r = app.call("PATCH", &mine, Some(&al_token), Some(json!({"text": "cliente prefere WhatsApp 📱"}))).await;
    assert_eq!(r.status, 200);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'message.updated'"), before + 1);
    assert_eq!(conversations(&app, &ctx.admin, "?q=prefere%20whatsapp").await.len(), 1);
    assert_eq!(conversations(&app, &ctx.admin, "?q=prefere%20email").await.len(), 0);

    // Nobody else rewrites it; what the customer wrote or was sent is no note.
    for (path, t, body, status, code) in [
        (&mine, &ctx.admin, json!({"text": "x"}), 403, "not_your_note"),
        (&admins, &al_token, json!({"text": "x"}), 403, "not_your_note"),
        (&inbound, &ctx.admin, json!({"text": "x"}), 403, "not_a_note"),
        (&mine, &al_token, json!({"text": "  "}), 422, "empty_text"),
        (&mine, &al_token, json!({"text": "x".repeat(10_001)}), 422, "text_too_long"),
        (&mine, &al_token, json!({"texto": "x"}), 422, "invalid_body"),
    ] {
        let r = app.call("PATCH", path, Some(t), Some(body)).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (status, Some(code)), "{path}: {:?}", r.body);
    }
    for path in ["/api/messages/999999", "/api/messages/abc"] {
        assert_eq!(app.call("PATCH", path, Some(&ctx.admin), Some(json!({"text": "x"}))).await.status, 404);
        assert_eq!(app.call("DELETE", path, Some(&ctx.admin), None).await.status, 404);
    }
    let r = app.call("DELETE", &admins, Some(&al_token), None).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("not_your_note")));
    let r = app.call("DELETE", &inbound, Some(&ctx.admin), None).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("not_a_note")));

    // Deleted by an admin: it stays in its place as deleted, once.
    assert_eq!(app.call("DELETE", &mine, Some(&ctx.admin), None).await.status, 204);
    assert_eq!(app.call("DELETE", &mine, Some(&al_token), None).await.status, 204);
    let shown = messages(&app, &al_token, &conv).await;
    let gone =
        shown.iter().find(|m| format!("/api/messages/{}", m["id"].as_str().unwrap_or("")) == mine).expect("kept");
    assert_eq!((&gone["text"], gone["deleted_at"].is_string(), &gone["private"]), (&Value::Null, true, &json!(true)));
    let r = app.call("PATCH", &mine, Some(&al_token), Some(json!({"text": "de volta"}))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("note_deleted")));
    assert_eq!(app.call("DELETE", &admins, Some(&ctx.admin), None).await.status, 204);

    // A note may carry a file (a screenshot for the team): kept, never sent,
    // and gone with the note.
    let shot: Vec<u8> = [&b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"[..], &[9u8; 40][..]].concat();
    let parts = [("private", "true"), ("text", "o erro que o cliente viu"), ("client_id", "n-1")];
    let r = send_file(&app, &al_token, &conv, Some(("erro.png", "image/png", &shot)), &parts).await;
    assert_eq!((r.status, &r.body["private"], &r.body["status"]), (201, &json!(true), &json!("sent")), "{:?}", r.body);
    let again = send_file(&app, &al_token, &conv, Some(("erro.png", "image/png", &shot)), &parts).await;
    assert_eq!((again.status, &again.body["id"]), (201, &r.body["id"]), "a retry");
    let url = r.body["attachments"][0]["url"].as_str().expect("url").to_string();
    let file = app.client.get(app.url(&url)).bearer_auth(&al_token).send().await.expect("get");
    assert_eq!(file.bytes().await.expect("bytes").to_vec(), shot);
    let log = app.fake("GET", "/_fake/requests", json!({})).await;
    assert!(
        log["items"].as_array().expect("items").iter().all(|c| c["path"] != format!("/{PHONE}/media")),
        "never sent"
    );
    let with_file = format!("/api/messages/{}", r.body["id"].as_str().expect("id"));
    assert_eq!(app.call("DELETE", &with_file, Some(&al_token), None).await.status, 204);
    assert_eq!(app.call("GET", &url, Some(&al_token), None).await.status, 404, "its file is gone with it");
    let kept = format!(
        "SELECT count(*) AS n FROM tenant_acme.media_copies WHERE message_id = {}",
        r.body["id"].as_str().expect("id")
    );
    assert_eq!(app.count(&kept), 0);
    assert_eq!(
        app.count(
            "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action IN ('message.note_edited', 'message.note_deleted')"
        ),
        4
    );
    assert_eq!(conversations(&app, &ctx.admin, "?q=prefere").await.len(), 0, "a deleted note is not found");
}

/// A WhatsApp customer writes `on_whatsapp` to the number, a Messenger one
/// `on_messenger` to page A: their conversations' ids, processed.
async fn two_customers_write(app: &TestApp, ctx: &Ctx, on_whatsapp: &[&str], on_messenger: &str) -> (String, String) {
    for text in on_whatsapp {
        app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": text})).await;
    }
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": on_messenger})).await;
    app.processed().await;
    let convs = conversations(app, &ctx.admin, "").await;
    let id = |external: &str| by_contact(&convs, external)["id"].as_str().expect("id").to_string();
    (id(WA_ID), id(PSID))
}

/// A WhatsApp reply may quote the customer's message it answers.
#[actix_web::test]
async fn a_whatsapp_reply_quotes_the_message_it_answers() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (wa, fb) = &two_customers_write(&app, &ctx, &["Qual é o prazo?", "E o preço?"], "Olá").await;
    let shown = messages(&app, &ctx.admin, wa).await;
    let question = shown.iter().find(|m| m["text"] == "Qual é o prazo?").expect("question").clone();
    let fb_message = messages(&app, &ctx.admin, fb).await[0]["id"].clone();
    let send = |conv: &str, body: Value| {
        let (app, t, conv) = (&app, ctx.admin.clone(), conv.to_string());
        async move { app.call("POST", &format!("/api/conversations/{conv}/messages"), Some(&t), Some(body)).await }
    };
    let note = send(wa, json!({"text": "ver com o armazém", "private": true})).await;
    for (conv, body, code) in [
        (wa, json!({"text": "x", "reply_to": note.body["id"]}), "invalid_reply_to"),
        (wa, json!({"text": "x", "reply_to": fb_message}), "invalid_reply_to"),
        (wa, json!({"text": "x", "reply_to": "abc"}), "invalid_reply_to"),
        (fb, json!({"text": "x", "reply_to": fb_message}), "reply_to_whatsapp_only"),
        (wa, json!({"text": "x", "reply_to": question["id"], "private": true}), "invalid_body"),
    ] {
        let r = send(conv, body.clone()).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some(code)), "{body}: {:?}", r.body);
    }
    let r = send(wa, json!({"text": "Três dias úteis.", "reply_to": question["id"], "client_id": "q-1"})).await;
    assert_eq!((r.status, &r.body["reply_to"]), (202, &question["external_id"]), "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    eventually("the answer read", || async { message_status(&app, &ctx.admin, wa, &id).await["status"] == "read" })
        .await;
    // A file quotes as well.
    let jpeg: Vec<u8> = [&b"\xff\xd8\xff\xe0\0\x10JFIF\0"[..], &[2u8; 32][..]].concat();
    let price = shown.iter().find(|m| m["text"] == "E o preço?").expect("price");
    let r = send_file(
        &app,
        &ctx.admin,
        wa,
        Some(("tabela.jpg", "image/jpeg", &jpeg)),
        &[("reply_to", price["id"].as_str().expect("id"))],
    )
    .await;
    assert_eq!((r.status, &r.body["reply_to"]), (202, &price["external_id"]), "{:?}", r.body);
    let file_id = r.body["id"].as_str().expect("id").to_string();
    eventually("the table read", || async { message_status(&app, &ctx.admin, wa, &file_id).await["status"] == "read" })
        .await;
    let log = app.fake("GET", "/_fake/requests", json!({})).await;
    let contexts: Vec<Value> = log["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|c| c["path"] == format!("/{PHONE}/messages") && c["body"]["to"].is_string())
        .map(|c| json!([c["body"]["type"], c["body"]["context"]["message_id"]]))
        .collect();
    assert_eq!(contexts, [json!(["text", question["external_id"]]), json!(["image", price["external_id"]])]);
}

/// An agent reacts to a customer's message as the page or number.
#[actix_web::test]
async fn an_agent_reacts_to_a_customers_message() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Chegou, obrigado!"})).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "Adorei"})).await;
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let (wa, fb) =
        (by_contact(&convs, WA_ID)["id"].as_str().expect("id"), by_contact(&convs, PSID)["id"].as_str().expect("id"));
    let wa_in = messages(&app, &ctx.admin, wa).await[0].clone();
    let fb_in = messages(&app, &ctx.admin, fb).await[0].clone();
    let path = |m: &Value| format!("/api/messages/{}/reaction", m["id"].as_str().expect("id"));
    let sent_to = |account: &'static str| {
        let app = &app;
        async move {
            let log = app.fake("GET", "/_fake/requests", json!({})).await;
            log["items"]
                .as_array()
                .expect("items")
                .iter()
                .filter(|c| c["path"] == format!("/{account}/messages"))
                .filter(|c| {
                    c["body"]["type"] == "reaction"
                        || c["body"]["sender_action"].as_str().is_some_and(|a| a.ends_with("react"))
                })
                .map(|c| c["body"].clone())
                .collect::<Vec<Value>>()
        }
    };

    let r = app.call("PUT", &path(&wa_in), Some(&ctx.admin), Some(json!({"emoji": "👍"}))).await;
    assert_eq!((r.status, &r.body["reactions"]), (200, &json!({PHONE: "👍"})), "{:?}", r.body);
    // The same again changes and sends nothing.
    let r = app.call("PUT", &path(&wa_in), Some(&ctx.admin), Some(json!({"emoji": "👍"}))).await;
    assert_eq!(r.status, 200);
    eventually("the reaction sent", || async { sent_to(PHONE).await.len() == 1 }).await;
    let r = app.call("DELETE", &path(&wa_in), Some(&ctx.admin), None).await;
    assert_eq!((r.status, &r.body["reactions"]), (200, &json!({})), "{:?}", r.body);
    eventually("the reaction taken back", || async { sent_to(PHONE).await.len() == 2 }).await;
    let sent = sent_to(PHONE).await;
    let wamid = &wa_in["external_id"];
    assert_eq!(sent[0]["reaction"], json!({"message_id": wamid, "emoji": "👍"}));
    assert_eq!(sent[1]["reaction"], json!({"message_id": wamid, "emoji": ""}));
    assert_eq!(sent[0]["to"], WA_ID);

    let r = app.call("PUT", &path(&fb_in), Some(&ctx.admin), Some(json!({"emoji": "❤️"}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    eventually("the page's reaction sent", || async { sent_to(PAGE_A).await.len() == 1 }).await;
    assert_eq!(
        sent_to(PAGE_A).await[0],
        json!({"recipient": {"id": PSID}, "sender_action": "react", "payload": {"message_id": fb_in["external_id"], "reaction": "❤️"}})
    );
    // The live inbox hears of it as of any change to the message.
    assert!(app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'message.updated'") >= 3);

    // Only a customer's message, with one emoji.
    let (status, ours) = reply(&app, &ctx.admin, wa, "De nada!", "r-1").await;
    assert_eq!(status, 202);
    let note = app
        .call(
            "POST",
            &format!("/api/conversations/{wa}/messages"),
            Some(&ctx.admin),
            Some(json!({"text": "ok", "private": true})),
        )
        .await;
    for (m, why) in [(&ours, "not one the team or the page sent"), (&note.body, "a private note")] {
        let r = app.call("PUT", &path(m), Some(&ctx.admin), Some(json!({"emoji": "👍"}))).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("cannot_react")), "{:?}", r.body);
        let message = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(why), "{message}");
    }
    for (m, body, status, code) in [
        (&wa_in, json!({"emoji": "two words"}), 422, "invalid_reaction"),
        (&wa_in, json!({"emoji": ""}), 422, "invalid_reaction"),
        (&wa_in, json!({"emoji": "👍", "x": 1}), 422, "invalid_body"),
    ] {
        let r = app.call("PUT", &path(m), Some(&ctx.admin), Some(body.clone())).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (status, Some(code)), "{body}: {:?}", r.body);
    }
    assert_eq!(
        app.call("PUT", "/api/messages/abc/reaction", Some(&ctx.admin), Some(json!({"emoji": "👍"}))).await.status,
        404
    );

    // A message the customer took back is told apart.
    let now = chrono::Utc::now().timestamp_millis();
    let unsend = serde_json::to_vec(&json!({"object": "page", "entry": [{"id": PAGE_A, "time": now, "messaging": [
        {"sender": {"id": PSID}, "recipient": {"id": PAGE_A}, "timestamp": now,
         "message": {"mid": fb_in["external_id"], "is_deleted": true}}]}]}))
    .expect("body");
    assert_eq!(app.webhook(&unsend).await, 200);
    app.processed().await;
    let r = app.call("PUT", &path(&fb_in), Some(&ctx.admin), Some(json!({"emoji": "😮"}))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("cannot_react")), "{:?}", r.body);
    let message = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("the customer deleted"), "{message}");
}

/// An agent writes first to a WhatsApp number with a template: the
/// conversation is made (or found, or reopened), the customer's answer
/// lands in it, nothing is written when the template is refused, and a
/// retry is the same message.
#[actix_web::test]
async fn an_agent_writes_first_to_a_whatsapp_number_with_a_template() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (phone, page) = (channel_id(&app, &ctx.admin, PHONE).await, channel_id(&app, &ctx.admin, PAGE_A).await);
    let me = app.call("GET", "/api/me", Some(&ctx.admin), None).await.body["user"]["id"].clone();
    let hello = json!({"name": "hello_world", "language": "en_US"});
    let template = json!({"waba_id": "112233445566778", "name": "invoice", "language": "pt_BR",
        "header_media": "DOCUMENT", "body": "A sua fatura {{1}} está pronta."});
    app.fake("POST", "/_fake/templates", template).await;
    let promo = json!({"waba_id": "112233445566778", "name": "promo", "language": "pt_BR",
        "body": "Promoção de Natal!", "category": "MARKETING"});
    app.fake("POST", "/_fake/templates", promo).await;
    let start = |t: &str, body: Value| {
        let (app, t) = (&app, t.to_string());
        async move { app.call("POST", "/api/conversations", Some(&t), Some(body)).await }
    };
    let written = |number: &str| {
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.contacts c JOIN tenant_acme.conversations v ON v.contact_id = c.id \
              WHERE c.external_id = '{number}'"
        )) + app.count(&format!("SELECT count(*) AS n FROM tenant_acme.contacts WHERE external_id = '{number}'"))
    };
    let number = "351912345678";
    let (_, al) = agent_al(&app, &ctx.admin).await;
    for (token, body, status, code) in [
        (&ctx.admin, json!({"channel_id": phone, "phone_number": "+351 912 345 678"}), 422, "template_required"),
        (
            &ctx.admin,
            json!({"channel_id": phone, "phone_number": "+351 912 345 678", "text": "Olá", "template": hello}),
            422,
            "template_required",
        ),
        (
            &ctx.admin,
            json!({"channel_id": phone, "phone_number": "12 34", "template": hello}),
            422,
            "invalid_phone_number",
        ),
        (
            &ctx.admin,
            json!({"channel_id": phone, "phone_number": "0351912345678", "template": hello}),
            422,
            "invalid_phone_number",
        ),
        (
            &ctx.admin,
            json!({"channel_id": phone, "phone_number": "+351 9I2 345 678", "template": hello}),
            422,
            "invalid_phone_number",
        ),
        (
            &ctx.admin,
            json!({"channel_id": page, "phone_number": "+351 912 345 678", "template": hello}),
            422,
            "whatsapp_only",
        ),
        (
            &ctx.admin,
            json!({"channel_id": "987654", "phone_number": "+351 912 345 678", "template": hello}),
            404,
            "not_found",
        ),
        (&al, json!({"channel_id": phone, "phone_number": "+351 912 345 678", "template": hello}), 404, "not_found"),
        (
            &ctx.admin,
            json!({"channel_id": phone, "phone_number": "+351 912 345 678", "template": {"name": "nope", "language": "en_US"}}),
            422,
            "unknown_template",
        ),
        (
            &ctx.admin,
            json!({"channel_id": phone, "phone_number": "+351 912 345 678", "template": hello, "client_id": ""}),
            422,
            "invalid_client_id",
        ),
    ] {
        let r = start(token, body.clone()).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (status, Some(code)), "{body}: {:?}", r.body);
    }
    for bad in
        [json!({"channel_id": phone}), json!({"phone_number": 351_912_345_678_i64, "channel_id": phone}), json!([])]
    {
        let r = start(&ctx.admin, bad.clone()).await;
        assert!(matches!(r.status, 400 | 422) && r.body["error"]["code"].is_string(), "{bad}: {:?}", r.body);
    }
    assert_eq!(written(number), 0, "nothing written for a refused start");

    // The start: a new conversation, open and the starter's, with the template queued.
    let body = json!({"channel_id": phone, "phone_number": "+351 912 345 678", "template": hello, "client_id": "s-1"});
    let r = start(&ctx.admin, body.clone()).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let (conv, message) = (r.body["conversation"].clone(), r.body["message"].clone());
    let id = conv["id"].as_str().expect("id").to_string();
    assert_eq!(
        (&conv["status"], &conv["assignee_id"], &conv["contact"]["external_id"], &conv["channel_id"]),
        (&json!("open"), &me, &json!(number), &json!(phone)),
        "{conv}"
    );
    assert_eq!((&conv["can_reply"], &conv["can_send_template"]), (&json!(false), &json!(true)), "{conv}");
    assert!(message["text"].as_str().is_some_and(|t| t.starts_with("Hello World")), "{message}");
    let mid = message["id"].as_str().expect("id").to_string();
    eventually("the template delivered", || async {
        matches!(message_status(&app, &ctx.admin, &id, &mid).await["status"].as_str(), Some("delivered" | "read"))
    })
    .await;
    let log = app.fake("GET", "/_fake/requests", json!({})).await;
    let sends: Vec<Value> = log["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|c| c["path"] == format!("/{PHONE}/messages") && c["body"]["type"] == "template")
        .map(|c| c["body"].clone())
        .collect();
    assert_eq!(sends.len(), 1, "{sends:?}");
    // Sent to the number as a phone number, until Meta names the customer.
    let plus = format!("+{number}");
    assert_eq!((&sends[0]["to"], &sends[0]["template"]["name"]), (&json!(plus), &json!("hello_world")));
    // A retry is the same message in the same conversation.
    let again = start(&ctx.admin, body.clone()).await;
    assert_eq!(
        (again.status, &again.body["message"]["id"], &again.body["conversation"]["id"]),
        (202, &json!(mid), &json!(id))
    );
    let counted = |sql: &str| app.count(&format!("SELECT count(*) AS n FROM tenant_acme.{sql}"));
    assert_eq!(counted("audit_log WHERE action = 'conversation.started'"), 1);
    assert_eq!(counted(&format!("events WHERE type = 'conversation.created' AND conversation_id = {id}")), 1);
    assert_eq!(counted(&format!("messages WHERE conversation_id = {id}")), 1);

    // The customer's answer lands in it, and they may be answered freely.
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": number, "text": "Olá! Sim, obrigado."})).await;
    app.processed().await;
    let c = app.call("GET", &format!("/api/conversations/{id}"), Some(&ctx.admin), None).await.body;
    assert_eq!((&c["can_reply"], &c["unread_count"]), (&json!(true), &json!(1)), "{c}");
    let listed = app.call("GET", &format!("/api/conversations/{id}/messages"), Some(&ctx.admin), None).await.body;
    let texts: Vec<&str> =
        listed["items"].as_array().expect("items").iter().filter_map(|m| m["text"].as_str()).collect();
    assert!(texts.contains(&"Olá! Sim, obrigado."), "{texts:?}");
    assert_eq!(written(number), 2, "one contact, one conversation");
    // Meta named them as written: a reply goes to their WhatsApp id.
    let (status, sent) = reply(&app, &ctx.admin, &id, "Até amanhã!", "r-1").await;
    assert_eq!(status, 202, "{sent}");
    let sent_id = sent["id"].as_str().expect("id").to_string();
    eventually("the reply sent", || async {
        message_status(&app, &ctx.admin, &id, &sent_id).await["status"] != "pending"
    })
    .await;
    let log = app.fake("GET", "/_fake/requests", json!({})).await;
    let last = log["items"]
        .as_array()
        .expect("items")
        .iter()
        .rev()
        .find(|c| c["path"] == format!("/{PHONE}/messages") && c["body"]["type"] == "text")
        .cloned();
    assert_eq!(last.map(|c| c["body"]["to"].clone()), Some(json!(number)));

    // Resolved, a start reopens it; open, it is left as it is.
    let path = format!("/api/conversations/{id}");
    let r = app.call("PATCH", &path, Some(&ctx.admin), Some(json!({"status": "resolved", "assignee_id": null}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut later = body.clone();
    later["client_id"] = json!("s-2");
    later["phone_number"] = json!("351912345678");
    let r = start(&ctx.admin, later).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(
        (&r.body["conversation"]["id"], &r.body["conversation"]["status"], &r.body["conversation"]["assignee_id"]),
        (&json!(id), &json!("open"), &me)
    );
    assert_eq!(counted("audit_log WHERE action = 'conversation.started'"), 1);

    // A blocked customer is written to no more.
    let contact = conv["contact"]["id"].as_str().expect("contact").to_string();
    let r =
        app.call("PATCH", &format!("/api/contacts/{contact}"), Some(&ctx.admin), Some(json!({"blocked": true}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut blocked = body.clone();
    blocked["client_id"] = json!("s-3");
    let r = start(&ctx.admin, blocked).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("contact_blocked")), "{:?}", r.body);

    // A template with a document header takes its file as a form.
    let pdf: &[u8] = b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n% fatura 8\n%%EOF\n";
    let choice = json!({"name": "invoice", "language": "pt_BR", "parameters": ["#8"]}).to_string();
    let file = Some(("fatura-8.pdf", "application/pdf", pdf));
    let other = "447700900123";
    let r = post_form(&app, &ctx.admin, "/api/conversations", file, &[("template", &choice), ("phone_number", other)])
        .await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some("invalid_body")), "{:?}", r.body);
    let r = app
        .call(
            "POST",
            "/api/conversations",
            Some(&ctx.admin),
            Some(json!({"channel_id": phone, "phone_number": other, "template": {"name": "invoice", "language": "pt_BR", "parameters": ["#8"]}})),
        )
        .await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("template_needs_media")), "{:?}", r.body);
    assert_eq!(written(other), 0);
    let parts = [("template", choice.as_str()), ("phone_number", "+44 7700 900123"), ("channel_id", phone.as_str())];
    let r = post_form(&app, &ctx.admin, "/api/conversations", file, &parts).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(
        (&r.body["conversation"]["contact"]["external_id"], &r.body["message"]["attachments"][0]["filename"]),
        (&json!(other), &json!("fatura-8.pdf"))
    );

    // Meta knows many Brazilian mobiles without their ninth digit and says
    // so in its answer: the contact takes Meta's id, the customer's answer
    // (from it) lands in the conversation, and the number typed again
    // finds it.
    let typed =
        json!({"channel_id": phone, "phone_number": "+55 11 98765-4321", "template": hello, "client_id": "br-1"});
    let r = start(&ctx.admin, typed.clone()).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert_eq!(r.body["conversation"]["contact"]["external_id"], "5511987654321");
    let br = r.body["conversation"]["id"].as_str().expect("id").to_string();
    let br_path = format!("/api/conversations/{br}");
    eventually("the contact takes Meta's id", || async {
        let c = app.call("GET", &br_path, Some(&ctx.admin), None).await.body;
        c["contact"]["external_id"] == "551187654321"
    })
    .await;
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": "551187654321", "text": "Oi!"})).await;
    app.processed().await;
    let c = app.call("GET", &br_path, Some(&ctx.admin), None).await.body;
    assert_eq!((&c["unread_count"], &c["can_reply"]), (&json!(1), &json!(true)), "{c}");
    let mut again = typed;
    again["client_id"] = json!("br-2");
    let r = start(&ctx.admin, again).await;
    assert_eq!((r.status, &r.body["conversation"]["id"]), (202, &json!(br)), "{:?}", r.body);
    assert_eq!(written("5511987654321") + written("551187654321"), 2, "one contact, one conversation");
    assert_eq!(counted("audit_log WHERE action = 'contact.whatsapp_id'"), 1);

    // A customer who never wrote stopped marketing messages (a template
    // sent from elsewhere): kept, so a marketing template is refused and a
    // utility one goes, in a conversation made for them.
    let stopper = "14155550777";
    let r = app
        .fake("POST", "/_fake/user-preferences", json!({"phone_number_id": PHONE, "wa_id": stopper, "value": "stop"}))
        .await;
    assert_eq!(r["delivered_status"], 200, "{r}");
    app.processed().await;
    let mut to_stopper = json!({"channel_id": phone, "phone_number": format!("+{stopper}"),
        "template": {"name": "promo", "language": "pt_BR"}, "client_id": "m-1"});
    let r = start(&ctx.admin, to_stopper.clone()).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("marketing_stopped")), "{:?}", r.body);
    assert_eq!(written(stopper), 1, "the contact alone");
    to_stopper["template"] = hello.clone();
    let r = start(&ctx.admin, to_stopper).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    assert!(r.body["conversation"]["contact"]["id"].is_string());
    assert_eq!(written(stopper), 2);

    // The reports count the conversations the team started, by channel
    // and by who started them: the first, the invoice, the Brazilian and
    // the stopper's (a restart of a known one is no start). Of those
    // opened, the first's is left out: its customer is blocked now.
    let report = app.call("GET", "/api/reports/overview", Some(&ctx.admin), None).await.body;
    assert_eq!((&report["conversations_started"], &report["conversations_opened"]), (&json!(4), &json!(3)), "{report}");
    let mine = report["agents"].as_array().and_then(|a| a.iter().find(|a| a["user_id"] == me).cloned());
    assert_eq!(mine.map(|a| a["conversations_started"].clone()), Some(json!(4)), "{report}");
    let by_channel =
        report["channels"].as_array().and_then(|c| c.iter().find(|c| c["channel_id"] == json!(phone)).cloned());
    assert_eq!(by_channel.map(|c| c["conversations_started"].clone()), Some(json!(4)), "{report}");

    // A number as people write it finds the customer, in contacts and in
    // the inbox, by their id or by the number written first to.
    for (q, conv) in
        [("+351 912 345 678", &id), ("(912) 345-678", &id), ("+55 11 98765-4321", &br), ("+55 11 8765-4321", &br)]
    {
        let query = format!("?q={}", switchboard::ids::percent_encode(q));
        let found = conversations(&app, &ctx.admin, &query).await;
        let ids: Vec<&str> = found.iter().filter_map(|c| c["id"].as_str()).collect();
        assert_eq!(ids, [conv.as_str()], "{q}");
        let contacts = app.call("GET", &format!("/api/contacts{query}"), Some(&ctx.admin), None).await.body;
        assert_eq!(contacts["items"].as_array().map(Vec::len), Some(1), "{q}: {contacts}");
    }

    // A customer who wrote before under the id Meta knows, written to by
    // the number as people write it: the template joins their thread, and
    // the number typed again finds it.
    let rio = "552187654321";
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": rio, "text": "Oi, tudo bem?"})).await;
    app.processed().await;
    let thread = by_contact(&conversations(&app, &ctx.admin, "").await, rio)["id"].as_str().expect("id").to_string();
    let typed =
        json!({"channel_id": phone, "phone_number": "+55 21 98765-4321", "template": hello, "client_id": "rio-1"});
    let r = start(&ctx.admin, typed.clone()).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let apart = r.body["conversation"]["id"].as_str().expect("id").to_string();
    assert_ne!(apart, thread, "Meta has not said yet");
    eventually("the template joins the customer's thread", || async {
        app.call("GET", &format!("/api/conversations/{apart}"), Some(&ctx.admin), None).await.status == 404
    })
    .await;
    let listed = app.call("GET", &format!("/api/conversations/{thread}/messages"), Some(&ctx.admin), None).await.body;
    let texts: Vec<&str> =
        listed["items"].as_array().expect("items").iter().filter_map(|m| m["text"].as_str()).collect();
    assert!(texts.len() == 2 && texts[1].starts_with("Hello World"), "{texts:?}");
    assert_eq!((written("5521987654321"), written(rio)), (0, 2), "one contact, one thread");
    assert_eq!(counted("audit_log WHERE action = 'contact.merged'"), 1);
    assert_eq!(
        counted(&format!("events WHERE type = 'conversation.deleted' AND payload->>'id' = '{apart}'")),
        1,
        "open inboxes are told"
    );
    let mut again = typed;
    again["client_id"] = json!("rio-2");
    let r = start(&ctx.admin, again).await;
    assert_eq!((r.status, &r.body["conversation"]["id"]), (202, &json!(thread)), "{:?}", r.body);
}

/// A template whose header is a document takes the agent's file, window or not.
#[actix_web::test]
async fn a_template_with_a_document_header_sends_the_agents_file() {
    let pdf: &[u8] = b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n% fatura 7\n%%EOF\n";
    let png: Vec<u8> = [&b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"[..], &[3u8; 32][..]].concat();
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let template = json!({"waba_id": "112233445566778", "name": "invoice", "language": "pt_BR",
        "header_media": "DOCUMENT", "body": "A sua fatura {{1}} está pronta."});
    app.fake("POST", "/_fake/templates", template).await;
    let two_days_ago = (chrono::Utc::now() - chrono::Duration::hours(48)).to_rfc3339();
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Olá", "at": two_days_ago})).await;
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let (wa, channel) = {
        let c = by_contact(&convs, WA_ID);
        (c["id"].as_str().expect("id").to_string(), c["channel_id"].as_str().expect("channel").to_string())
    };
    let r = app.call("GET", &format!("/api/channels/{channel}/templates"), Some(&ctx.admin), None).await;
    let invoice = r.body["items"].as_array().expect("items").iter().find(|t| t["name"] == "invoice").cloned();
    let invoice = invoice.expect("invoice");
    assert_eq!(
        (&invoice["header_media"], &invoice["sendable"], &invoice["body_parameters"]),
        (&json!("document"), &json!(true), &json!(1))
    );
    let choice = json!({"name": "invoice", "language": "pt_BR", "parameters": ["#7"]}).to_string();

    // Without the file, with another kind of file, or with text of its own: refused.
    let body = json!({"template": {"name": "invoice", "language": "pt_BR", "parameters": ["#7"]}});
    let r = app.call("POST", &format!("/api/conversations/{wa}/messages"), Some(&ctx.admin), Some(body)).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("template_needs_media")), "{:?}", r.body);
    for (file, parts, code) in [
        (("f.png", "image/png", &png[..]), vec![("template", choice.as_str())], "invalid_template_media"),
        (("f.pdf", "application/pdf", pdf), vec![("template", choice.as_str()), ("text", "olá")], "invalid_body"),
        (("f.pdf", "application/pdf", pdf), vec![("template", "{\"name\": 1}")], "invalid_body"),
    ] {
        let r = send_file(&app, &ctx.admin, &wa, Some(file), &parts).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some(code)), "{parts:?}: {:?}", r.body);
    }

    let parts = [("template", choice.as_str()), ("client_id", "inv-7")];
    let r = send_file(&app, &ctx.admin, &wa, Some(("fatura-7.pdf", "application/pdf", pdf)), &parts).await;
    assert_eq!((r.status, r.body["text"].as_str()), (202, Some("A sua fatura #7 está pronta.")), "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    let (file, template) = (&r.body["attachments"][0], &r.body["attachments"][1]);
    assert_eq!((&file["type"], &file["filename"]), (&json!("file"), &json!("fatura-7.pdf")));
    assert_eq!((&template["type"], &template["header_media"]), (&json!("template"), &json!("document")));
    eventually("the invoice read", || async { message_status(&app, &ctx.admin, &wa, &id).await["status"] == "read" })
        .await;
    // A retry is the same message; another file under its client_id is not a retry.
    let again = send_file(&app, &ctx.admin, &wa, Some(("fatura-7.pdf", "application/pdf", pdf)), &parts).await;
    assert_eq!((again.status, again.body["id"].as_str()), (202, Some(id.as_str())));
    let other =
        send_file(&app, &ctx.admin, &wa, Some(("f.pdf", "application/pdf", b"%PDF-1.4\nother\n")), &parts).await;
    assert_eq!((other.status, other.body["error"]["code"].as_str()), (409, Some("client_id_reused")));

    let log = app.fake("GET", "/_fake/requests", json!({})).await;
    let calls = log["items"].as_array().expect("items");
    assert_eq!(calls.iter().filter(|c| c["path"] == format!("/{PHONE}/media")).count(), 1);
    let sent: Vec<&Value> = calls
        .iter()
        .filter(|c| c["path"] == format!("/{PHONE}/messages") && c["body"]["type"] == "template")
        .map(|c| &c["body"]["template"]["components"])
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let header = &sent[0][0];
    assert_eq!((&header["type"], &header["parameters"][0]["type"]), (&json!("header"), &json!("document")));
    assert_eq!(header["parameters"][0]["document"]["filename"], "fatura-7.pdf");
    assert!(header["parameters"][0]["document"]["id"].is_string(), "{header}");
    assert_eq!(sent[0][1], json!({"type": "body", "parameters": [{"type": "text", "text": "#7"}]}));
    // The list was read from Meta once for the look and every send since (kept a minute).
    let reads = |log: &Value| {
        log["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|c| c["path"] == "/112233445566778/message_templates")
            .count()
    };
    assert_eq!(reads(&log), 1);

    // Meta pauses it: the kept list still offers it, Meta refuses the send,
    // and the list is read again, so the next try is refused before anything is queued.
    let paused = json!({"waba_id": "112233445566778", "name": "invoice", "language": "pt_BR",
        "header_media": "DOCUMENT", "body": "A sua fatura {{1}} está pronta.", "status": "PAUSED"});
    app.fake("POST", "/_fake/templates", paused).await;
    let parts = [("template", choice.as_str()), ("client_id", "inv-8")];
    let r = send_file(&app, &ctx.admin, &wa, Some(("fatura-8.pdf", "application/pdf", pdf)), &parts).await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    eventually("the paused template's send failed", || async {
        message_status(&app, &ctx.admin, &wa, &id).await["status"] == "failed"
    })
    .await;
    let parts = [("template", choice.as_str()), ("client_id", "inv-9")];
    let r = send_file(&app, &ctx.admin, &wa, Some(("fatura-8.pdf", "application/pdf", pdf)), &parts).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("template_not_approved")), "{:?}", r.body);
    assert_eq!(reads(&app.fake("GET", "/_fake/requests", json!({})).await), 2);
}

/// The team names a contact; Meta's names wait until the team takes it back.
#[actix_web::test]
async fn the_team_names_a_contact_and_metas_names_wait() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Olá", "name": "Zé"})).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "Olá", "name": "Rita Meta"})).await;
    app.processed().await;
    let contact_of = |who: &'static str| {
        let (app, t) = (&app, ctx.admin.clone());
        async move { by_contact(&conversations(app, &t, "").await, who)["contact"].clone() }
    };
    eventually("the Messenger profile looked up", || async { contact_of(PSID).await["name"] == "Rita Meta" }).await;
    let (wa, fb) = (contact_of(WA_ID).await, contact_of(PSID).await);
    let path = |c: &Value| format!("/api/contacts/{}", c["id"].as_str().expect("id"));

    let r = app.call("PATCH", &path(&wa), Some(&ctx.admin), Some(json!({"name": "  José Silva (loja) "}))).await;
    assert_eq!((r.status, r.body["name"].as_str()), (200, Some("José Silva (loja)")), "{:?}", r.body);
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "?", "name": "Zé 2"})).await;
    app.processed().await;
    assert_eq!(contact_of(WA_ID).await["name"], "José Silva (loja)", "a webhook's name waits");
    assert_eq!(conversations(&app, &ctx.admin, "?q=jose%20silva").await.len(), 1, "found by the team's name");
    for (p, body, status, code) in [
        (path(&wa), json!({"name": ""}), 422, "invalid_name"),
        (path(&wa), json!({"name": "a\nb"}), 422, "invalid_name"),
        (path(&wa), json!({}), 422, "invalid_body"),
        (path(&wa), json!({"name": 5}), 422, "invalid_body"),
        (path(&wa), json!({"nome": "x"}), 422, "invalid_body"),
        ("/api/contacts/abc".to_string(), json!({"name": "x"}), 404, "not_found"),
        ("/api/contacts/999999".to_string(), json!({"name": "x"}), 404, "not_found"),
    ] {
        let r = app.call("PATCH", &p, Some(&ctx.admin), Some(body.clone())).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (status, Some(code)), "{body}: {:?}", r.body);
    }
    // Taken back: the name stays until Meta gives the next one.
    let r = app.call("PATCH", &path(&wa), Some(&ctx.admin), Some(json!({"name": null}))).await;
    assert_eq!((r.status, r.body["name"].as_str()), (200, Some("José Silva (loja)")));
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "!", "name": "Zé 3"})).await;
    app.processed().await;
    assert_eq!(contact_of(WA_ID).await["name"], "Zé 3");

    // Messenger: a profile lookup's name waits too; taken back, it is looked up again.
    let r = app.call("PATCH", &path(&fb), Some(&ctx.admin), Some(json!({"name": "Rita VIP"}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut pooled = app.pool.get().expect("conn");
    let tenant = switchboard::tenancy::find_by_slug(&mut pooled, "acme").expect("q").expect("acme").tenant_id();
    let fb_id: i64 = fb["id"].as_str().expect("id").parse().expect("number");
    switchboard::db::with_tenant(&mut pooled, &switchboard::db::TenantScope::system(tenant), |tc| {
        let mut log = switchboard::inbox::events::EventLog::new();
        switchboard::inbox::contacts::store_profile(tc, &mut log, fb_id, Some("Rita Meta".into()), None)?;
        log.notify(tc)
    })
    .expect("profile stored");
    assert_eq!(contact_of(PSID).await["name"], "Rita VIP");
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "x", "name": "Rita Nova"})).await;
    let r = app.call("PATCH", &path(&fb), Some(&ctx.admin), Some(json!({"name": null}))).await;
    assert_eq!(r.status, 200);
    eventually("Meta's name back", || async { contact_of(PSID).await["name"] == "Rita Nova" }).await;
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action LIKE 'contact.%'"), 4);
}

/// The team keeps what it knows of a customer beyond Meta's profile: an
/// address, a number and a note, each checked before anything is written,
/// found by contact search, announced to the channel's agents and audited
/// without the note's text; a retry changes nothing.
#[actix_web::test]
async fn the_team_keeps_a_contacts_address_number_and_note() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "Olá", "name": "Zoé Meta"})).await;
    app.processed().await;
    let contact_of = || async { by_contact(&conversations(&app, &ctx.admin, "").await, PSID)["contact"].clone() };
    eventually("the profile looked up", || async { contact_of().await["name"] == "Zoé Meta" }).await;
    let contact = contact_of().await;
    let path = format!("/api/contacts/{}", contact["id"].as_str().expect("id"));
    let mut socket = crate::realtime::ws(&app, "", Some(&ctx.admin), None).await.expect("socket");
    let patch = |body: Value| {
        let (app, path, t) = (&app, path.clone(), ctx.admin.clone());
        async move { app.call("PATCH", &path, Some(&t), Some(body)).await }
    };

    let details = json!({"email": " zoe.lima@exemplo.pt ", "phone": "+351 912-345 678",
        "notes": "Prefere manhãs.\n\tCliente desde 2019 — 🛋️"});
    let r = patch(details.clone()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        (&r.body["email"], &r.body["phone"], &r.body["notes"]),
        (
            &json!("zoe.lima@exemplo.pt"),
            &json!("+351 912-345 678"),
            &json!("Prefere manhãs.\n\tCliente desde 2019 — 🛋️")
        )
    );
    let frame = crate::realtime::until(&mut socket, "contact.updated", std::time::Duration::from_secs(10))
        .await
        .expect("contact.updated");
    assert_eq!((&frame["data"]["id"], &frame["data"]["email"]), (&contact["id"], &json!("zoe.lima@exemplo.pt")));
    let shown = app.call("GET", &path, Some(&ctx.admin), None).await;
    assert_eq!((shown.status, &shown.body["phone"]), (200, &json!("+351 912-345 678")), "{:?}", shown.body);
    // With the conversation a contact page opens.
    let conversation = by_contact(&conversations(&app, &ctx.admin, "").await, PSID)["id"].clone();
    assert_eq!(shown.body["conversation_id"], conversation);
    let listed = app.call("GET", "/api/contacts?q=exemplo", Some(&ctx.admin), None).await;
    assert_eq!(listed.body["items"][0]["conversation_id"], conversation, "{:?}", listed.body);

    // Found by the saved address or number, not by anything else.
    for (q, found) in [("EXEMPLO.pt", 1), ("912-345", 1), ("nowhere.example", 0)] {
        let r = app.call("GET", &format!("/api/contacts?q={}", q.replace(' ', "%20")), Some(&ctx.admin), None).await;
        assert_eq!(r.body["items"].as_array().map(Vec::len), Some(found), "{q}: {:?}", r.body);
        // The inbox's search finds the contact's conversation by them too.
        assert_eq!(conversations(&app, &ctx.admin, &format!("?q={q}")).await.len(), found, "{q}");
    }

    // Each field is checked before anything is written.
    let long = "x".repeat(5001);
    for body in [
        json!({"email": "zoe@"}),
        json!({"email": "zoe lima@exemplo.pt"}),
        json!({"email": "zoe@localhost"}),
        json!({"email": "a@b@c.pt"}),
        json!({"phone": "12"}),
        json!({"phone": "call me"}),
        json!({"phone": "351+912"}),
        json!({"notes": long}),
        json!({"notes": "bell \u{7}"}),
        json!({"name": "Zoé Lima", "email": "not an address"}),
    ] {
        let r = patch(body.clone()).await;
        assert_eq!(r.status, 422, "{body}: {:?}", r.body);
        assert!(r.body["error"]["code"].as_str().is_some_and(|c| c.starts_with("invalid_")), "{:?}", r.body);
    }
    for body in [json!({"email": 5}), json!({"age": 30}), json!({})] {
        let r = patch(body.clone()).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_body")), "{body}");
    }
    let unchanged = app.call("GET", &path, Some(&ctx.admin), None).await.body;
    assert_eq!((&unchanged["email"], &unchanged["name"]), (&json!("zoe.lima@exemplo.pt"), &json!("Zoé Meta")));

    // A retry changes nothing; clearing takes null or "".
    assert_eq!(patch(details).await.status, 200);
    let r = patch(json!({"email": null, "phone": ""})).await;
    assert_eq!((&r.body["email"], &r.body["phone"], r.body["notes"].is_string()), (&json!(null), &json!(null), true));
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'contact.updated'"), 2);
    let log = app.call("GET", "/api/audit-log?limit=200", Some(&ctx.admin), None).await;
    let entries: Vec<Value> = log.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"] == "contact.updated")
        .map(|e| e["details"].clone())
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[1]["fields"], json!(["email", "phone", "notes"]));
    assert!(entries.iter().all(|d| !d.to_string().contains("manhãs")), "the note stays out of the log");

    // Only for who may see the contact's channel.
    let (_, al) = agent_al(&app, &ctx.admin).await;
    assert_eq!(app.call("GET", &path, Some(&al), None).await.status, 404);
    let r = app.call("PATCH", &path, Some(&al), Some(json!({"notes": "x"}))).await;
    assert_eq!(r.status, 404);
}

/// A reply Meta refused is sent again at an agent's word, as it was
/// written, when it could be sent now (channel connected, window open);
/// one that went out, a customer's message or a note cannot be.
#[actix_web::test]
async fn a_failed_reply_is_sent_again_when_it_can_be() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "Olá"})).await;
    app.processed().await;
    let conv = by_contact(&conversations(&app, &ctx.admin, "").await, PSID)["id"].as_str().expect("id").to_string();
    let refuse = json!({"path": format!("/{PAGE_A}/messages"), "method": "POST", "status": 400,
        "error": {"code": 100, "message": "(#100) Invalid parameter"}, "times": 1});
    app.fake("POST", "/_fake/errors", refuse).await;
    let (status, msg) = reply(&app, &ctx.admin, &conv, "Bom dia, Zoë!", "r-1").await;
    assert_eq!(status, 202, "{msg}");
    let id = msg["id"].as_str().expect("id").to_string();
    eventually("the refused reply failed", || async {
        message_status(&app, &ctx.admin, &conv, &id).await["status"] == "failed"
    })
    .await;
    let retry = |id: String| {
        let (app, t) = (&app, ctx.admin.clone());
        async move { app.call("POST", &format!("/api/messages/{id}/retry"), Some(&t), None).await }
    };
    let sql = |statement: String| {
        let mut conn = app.db.conn();
        diesel::sql_query(statement).execute(&mut conn).expect("sql");
    };

    // Not while it could not be sent either.
    sql(format!("UPDATE tenant_acme.conversations SET last_inbound_at = now() - interval '3 days' WHERE id = {conv}"));
    let r = retry(id.clone()).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("outside_window")), "{:?}", r.body);
    sql(format!("UPDATE tenant_acme.conversations SET last_inbound_at = now() WHERE id = {conv}"));
    sql(format!("UPDATE tenant_acme.channels SET status = 'reauth_required' WHERE external_id = '{PAGE_A}'"));
    let r = retry(id.clone()).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("channel_not_connected")), "{:?}", r.body);
    sql(format!("UPDATE tenant_acme.channels SET status = 'connected' WHERE external_id = '{PAGE_A}'"));
    assert_eq!(message_status(&app, &ctx.admin, &conv, &id).await["status"], "failed", "nothing half written");

    // Sent again, and it goes out.
    let r = retry(id.clone()).await;
    assert_eq!((r.status, &r.body["status"], &r.body["error"]), (202, &json!("pending"), &json!(null)), "{:?}", r.body);
    assert_eq!(r.body["text"], "Bom dia, Zoë!");
    eventually("the second attempt went out", || async {
        let s = message_status(&app, &ctx.admin, &conv, &id).await["status"].clone();
        s != "pending" && s != "failed"
    })
    .await;
    let r = retry(id.clone()).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("not_failed")));
    let log = app.fake("GET", "/_fake/requests", json!({})).await;
    let attempts = log["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|r| r["path"] == format!("/{PAGE_A}/messages") && r["body"]["message"]["text"] == "Bom dia, Zoë!")
        .count();
    assert_eq!(attempts, 2, "the refused send and the retry");

    // What cannot be sent again.
    let customers = messages(&app, &ctx.admin, &conv).await.into_iter().find(|m| m["direction"] == "in");
    let customers = customers.expect("the customer's message")["id"].as_str().expect("id").to_string();
    let note = app
        .call(
            "POST",
            &format!("/api/conversations/{conv}/messages"),
            Some(&ctx.admin),
            Some(json!({"text": "Cliente VIP", "private": true})),
        )
        .await;
    assert_eq!(note.status, 201, "{:?}", note.body);
    for other in [customers, note.body["id"].as_str().expect("id").to_string()] {
        let r = retry(other).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("not_retryable")), "{:?}", r.body);
    }
    for missing in ["999999", "abc"] {
        assert_eq!(retry(missing.to_string()).await.status, 404);
    }
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'message.retried'"), 1);
}

/// An admin's report of a period: what came in, what the team answered and
/// how soon, who answered and resolved, per channel; for one channel or an
/// empty past period; refused to agents and for a bad period.
#[actix_web::test]
async fn a_report_shows_what_came_in_and_who_answered_how_soon() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (al, al_token) = agent_al(&app, &ctx.admin).await;
    let wa_channel = channel_id(&app, &ctx.admin, PHONE).await;
    let r = app
        .call(
            "PUT",
            &format!("/api/channels/{wa_channel}/members"),
            Some(&ctx.admin),
            Some(json!({"user_ids": [al["user_id"]]})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    const QUIET: &str = "7392015648120999";
    for (to, from) in [(PAGE_A, PSID), (PHONE, WA_ID), (PAGE_A, QUIET)] {
        app.fake("POST", "/_fake/inbound", json!({"to": to, "from": from, "text": "Olá?"})).await;
    }
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let conv_of = |who: &str| by_contact(&convs, who)["id"].as_str().expect("id").to_string();
    let (fb, wa) = (conv_of(PSID), conv_of(WA_ID));
    // The customers wrote ten and two minutes before they were answered.
    let mut conn = app.db.conn();
    for (conv, seconds) in [(&fb, 600), (&wa, 120)] {
        diesel::sql_query(format!(
            "UPDATE tenant_acme.messages SET sort_at = now() - interval '{seconds} seconds' WHERE conversation_id = {conv}"
        ))
        .execute(&mut conn)
        .expect("earlier");
    }
    assert_eq!(reply(&app, &ctx.admin, &fb, "Bom dia!", "rep-1").await.0, 202);
    assert_eq!(reply(&app, &al_token, &wa, "Olá, diga", "rep-2").await.0, 202);
    let note = json!({"text": "VIP", "private": true});
    let r = app.call("POST", &format!("/api/conversations/{fb}/messages"), Some(&ctx.admin), Some(note)).await;
    assert_eq!(r.status, 201);
    let r = app
        .call("PATCH", &format!("/api/conversations/{fb}"), Some(&ctx.admin), Some(json!({"status": "resolved"})))
        .await;
    assert_eq!(r.status, 200);
    let mine = json!({"assignee_id": al["user_id"]});
    let r = app.call("PATCH", &format!("/api/conversations/{wa}"), Some(&al_token), Some(mine)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // A spammer, blocked: left out of what customers brought (their
    // conversation, messages and the target their wait missed), though the
    // block's resolution is Ann's.
    const SPAM: &str = "7392015648120666";
    for text in ["Cheap followers!", "Cheap followers!!"] {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": SPAM, "text": text})).await;
    }
    app.processed().await;
    let spam = by_contact(&conversations(&app, &ctx.admin, "").await, SPAM).clone();
    let spam_contact = spam["contact"]["id"].as_str().expect("id").to_string();
    diesel::sql_query(format!(
        "INSERT INTO tenant_acme.missed_targets (conversation_id, channel_id, priority, waiting_since, due_at) \
         VALUES ({}, {}, NULL, now() - interval '2 hours', now() - interval '1 hour')",
        spam["id"].as_str().expect("id"),
        spam["channel_id"].as_str().expect("id")
    ))
    .execute(&mut conn)
    .expect("a missed target");
    let block = |on: bool| {
        let (app, t, path) = (&app, ctx.admin.clone(), format!("/api/contacts/{spam_contact}"));
        async move {
            let r = app.call("PATCH", &path, Some(&t), Some(json!({"blocked": on}))).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
    };
    block(true).await;

    let report = |query: String| {
        let (app, t) = (&app, ctx.admin.clone());
        async move { app.call("GET", &format!("/api/reports/overview{query}"), Some(&t), None).await }
    };
    let r = report(String::new()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let o = &r.body;
    assert_eq!(
        [
            &o["conversations_opened"],
            &o["conversations_resolved"],
            &o["messages_received"],
            &o["replies_sent"],
            &o["notes_written"]
        ],
        [&json!(3), &json!(2), &json!(3), &json!(2), &json!(1)],
        "{o}"
    );
    assert_eq!(o["targets_missed"], 0, "{o}");
    assert_eq!(
        o["now"],
        json!({"open": 2, "pending": 0, "snoozed": 0, "open_unassigned": 1, "waiting": 1, "overdue": 0,
               "queued": 0, "oldest_queued_at": null}),
        "the inbox now: the quiet customer waits"
    );
    let first = &o["first_response"];
    assert_eq!((&first["answered"], &first["unanswered"]), (&json!(2), &json!(1)), "{first}");
    let near = |v: &Value, secs: i64| v.as_i64().is_some_and(|s| (secs - 2..=secs + 30).contains(&s));
    assert!(near(&first["median_seconds"], 120) && near(&first["p90_seconds"], 600), "{first}");
    let agents = o["agents"].as_array().expect("agents");
    let agent = |email: &str| agents.iter().find(|a| a["email"] == email).cloned().unwrap_or_default();
    let (ann, al_figures) = (agent("ann@acme.test"), agent("al@acme.test"));
    assert_eq!(
        (&ann["replies"], &ann["resolved"], &ann["first_responses"]),
        (&json!(1), &json!(2), &json!(1)),
        "{ann}"
    );
    assert!(near(&ann["median_first_response_seconds"], 600), "{ann}");
    assert_eq!((&al_figures["replies"], &al_figures["resolved"]), (&json!(1), &json!(0)), "{al_figures}");
    assert!(near(&al_figures["median_first_response_seconds"], 120), "{al_figures}");
    let channels = o["channels"].as_array().expect("channels");
    let page = channels.iter().find(|c| c["platform"] == "facebook").expect("the page");
    assert_eq!(
        (&page["conversations_opened"], &page["messages_received"], &page["replies_sent"]),
        (&json!(2), &json!(2), &json!(1))
    );

    // One channel; a past period holds nothing.
    let r = report(format!("?channel_id={wa_channel}")).await;
    assert_eq!(
        (&r.body["conversations_opened"], &r.body["conversations_resolved"]),
        (&json!(1), &json!(0)),
        "{:?}",
        r.body
    );
    assert_eq!(r.body["now"]["open_unassigned"], 0, "{:?}", r.body);
    let r = report("?from=2020-01-01&to=2020-02-01".into()).await;
    assert_eq!((&r.body["messages_received"], &r.body["agents"]), (&json!(0), &json!([])), "{:?}", r.body);
    assert_eq!(r.body["now"]["open"], 2, "the inbox now, whatever the period");
    assert_eq!(r.body["from"], "2020-01-01T00:00:00Z");

    for (query, code) in [
        ("?from=2026-12-01&to=2026-11-01", "invalid_period"),
        ("?from=2020-01-01&to=2026-01-01", "invalid_period"),
        ("?from=yesterday", "invalid_period"),
        ("?channel_id=abc", "invalid_channel_id"),
    ] {
        let r = report(query.to_string()).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some(code)), "{query}");
    }
    let r = app.call("GET", "/api/reports/overview", Some(&al_token), None).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("forbidden")));

    // The tables as CSV, for a spreadsheet: the same figures, a row each.
    let csv = |table: &str, token: &str| {
        let (client, url, t) = (app.client.clone(), app.url(&format!("/api/reports/{table}.csv")), token.to_string());
        async move { client.get(url).bearer_auth(t).send().await.expect("csv") }
    };
    let r = csv("agents", &ctx.admin).await;
    assert_eq!(r.status(), 200);
    let kind = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    assert_eq!(kind, "text/csv; charset=utf-8");
    let text = r.text().await.expect("text");
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(rows[0][..5], ["user_id", "name", "email", "replies", "resolved"], "{text}");
    assert!(text.ends_with("\r\n"), "CRLF lines");
    let ann_row = rows.iter().find(|r| r.get(2) == Some(&"ann@acme.test")).expect("Ann's row");
    assert_eq!((ann_row[3], ann_row[4], ann_row[5]), ("1", "2", "1"), "{text}");
    assert_eq!(rows.len(), agents.len() + 1);
    let channels_csv = csv("channels", &ctx.admin).await.text().await.expect("text");
    let facebook = channels_csv.lines().find(|l| l.contains(",facebook,")).expect("the page's row");
    // opened, started by writing first, received, replies, targets missed,
    // left the queue and their median wait
    assert!(facebook.ends_with(",2,0,2,1,0,0,"), "{channels_csv}");
    assert_eq!(csv("agents", &al_token).await.status(), 403);
    let r = app.call("GET", "/api/reports/channels.csv?from=yesterday", Some(&ctx.admin), None).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some("invalid_period")));

    // Unblocked, the spammer counts again.
    block(false).await;
    let o = report(String::new()).await.body;
    assert_eq!(
        [&o["conversations_opened"], &o["messages_received"], &o["targets_missed"], &o["first_response"]["unanswered"]],
        [&json!(4), &json!(5), &json!(1), &json!(2)],
        "{o}"
    );
}

/// A team resolves or assigns a screenful of conversations at once: each
/// changed, audited and announced as one by one; a conversation the caller
/// may not see, or a change one refuses, and none changes.
#[actix_web::test]
async fn conversations_change_in_bulk_all_or_none() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (al, al_token) = agent_al(&app, &ctx.admin).await;
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let members = json!({"user_ids": [al["user_id"]]});
    assert_eq!(
        app.call("PUT", &format!("/api/channels/{page}/members"), Some(&ctx.admin), Some(members)).await.status,
        200
    );
    for from in ["7392015648120001", "7392015648120002", "7392015648120003"] {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": "Olá"})).await;
    }
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Oi"})).await;
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let id_of = |who: &str| by_contact(&convs, who)["id"].clone();
    let on_page: Vec<Value> =
        ["7392015648120001", "7392015648120002", "7392015648120003"].iter().map(|w| id_of(w)).collect();
    let wa = id_of(WA_ID);
    let bulk = |t: String, body: Value| {
        let app = &app;
        async move { app.call("POST", "/api/conversations/bulk", Some(&t), Some(body)).await }
    };
    let statuses = || async {
        let convs = conversations(&app, &ctx.admin, "").await;
        convs.iter().map(|c| (c["id"].clone(), c["status"].clone())).collect::<std::collections::HashMap<_, _>>()
    };

    // Al may not see the WhatsApp number: nothing changes, the page's neither.
    let mut with_wa = on_page.clone();
    with_wa.push(wa.clone());
    let r = bulk(al_token.clone(), json!({"ids": with_wa, "status": "resolved"})).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (404, Some("not_found")), "{:?}", r.body);
    assert!(statuses().await.values().all(|s| s == "open"), "nothing half written");
    // A change one refuses (a snooze in the past) refuses them all.
    let past = json!({"ids": on_page, "status": "snoozed", "snoozed_until": "2020-01-01T00:00:00Z"});
    let r = bulk(al_token.clone(), past).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_snooze")), "{:?}", r.body);
    for (body, code) in [
        (json!({"status": "resolved"}), "invalid_ids"),
        (json!({"ids": [], "status": "resolved"}), "invalid_ids"),
        (json!({"ids": (1..=101).map(|i| i.to_string()).collect::<Vec<_>>(), "status": "resolved"}), "invalid_ids"),
        (json!({"ids": on_page, "status": "closed"}), "invalid_status"),
        (json!({"ids": on_page, "colour": "red"}), "invalid_body"),
    ] {
        let r = bulk(al_token.clone(), body.clone()).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some(code)), "{body}: {:?}", r.body);
    }

    // Resolved and assigned at once (an id twice counts once).
    let mut twice = on_page.clone();
    twice.push(on_page[0].clone());
    let r = bulk(al_token.clone(), json!({"ids": twice, "status": "resolved", "assignee_id": al["user_id"]})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let items = r.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 3);
    assert!(items.iter().all(|c| c["status"] == "resolved" && c["assignee_id"] == al["user_id"]), "{items:?}");
    let now = statuses().await;
    assert!(on_page.iter().all(|id| now[id] == "resolved") && now[&wa] == "open", "{now:?}");
    let audited = "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'conversation.status_changed'";
    assert_eq!(app.count(audited), 3);
    // The same again changes nothing.
    let r = bulk(al_token.clone(), json!({"ids": on_page, "status": "resolved"})).await;
    assert_eq!(r.status, 200);
    assert_eq!(app.count(audited), 3);

    // One label on them all, whatever else each has; then one taken off.
    let first = format!("/api/conversations/{}", on_page[0].as_str().expect("id"));
    let r = app.call("PATCH", &first, Some(&al_token), Some(json!({"labels": ["legal", "refund"]}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = bulk(al_token.clone(), json!({"ids": on_page, "add_labels": [" VIP "]})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let labels: Vec<Value> = r.body["items"].as_array().expect("items").iter().map(|c| c["labels"].clone()).collect();
    assert_eq!(labels, [json!(["legal", "refund", "vip"]), json!(["vip"]), json!(["vip"])]);
    let r = bulk(al_token.clone(), json!({"ids": on_page, "remove_labels": ["legal"], "add_labels": ["late"]})).await;
    let labels: Vec<Value> = r.body["items"].as_array().expect("items").iter().map(|c| c["labels"].clone()).collect();
    assert_eq!(labels, [json!(["late", "refund", "vip"]), json!(["late", "vip"]), json!(["late", "vip"])]);
    for (body, code) in [
        (json!({"ids": on_page, "labels": ["a"], "add_labels": ["b"]}), "invalid_body"),
        (json!({"ids": on_page, "add_labels": ["vip"], "remove_labels": ["VIP"]}), "invalid_label"),
        (json!({"ids": on_page, "add_labels": [5]}), "invalid_label"),
        (json!({"ids": on_page, "remove_labels": "vip"}), "invalid_body"),
    ] {
        let r = bulk(al_token.clone(), body.clone()).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some(code)), "{body}: {:?}", r.body);
    }
    // The same works on one conversation.
    let r = app.call("PATCH", &first, Some(&al_token), Some(json!({"remove_labels": ["late", "refund"]}))).await;
    assert_eq!(r.body["labels"], json!(["vip"]), "{:?}", r.body);
}

/// Satisfaction surveys: resolving a conversation on a channel with `csat`
/// on sends the survey; the customer's bare rating is kept and leaves the
/// conversation resolved, a rating with words reopens it with the words as
/// the comment, anything else just reopens it; no survey outside the reply
/// window; reports average the answers.
#[actix_web::test]
async fn a_resolved_conversation_asks_how_it_went() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let path = format!("/api/channels/{page}");
    let r = app.call("PATCH", &path, Some(&ctx.admin), Some(json!({"settings": {"csat": {"enabled": true}}}))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_settings")), "needs a text");
    let survey = "How did we do? Answer 1 (bad) to 5 (great).";
    let r = app
        .call("PATCH", &path, Some(&ctx.admin), Some(json!({"settings": {"csat": {"enabled": true, "text": survey}}})))
        .await;
    assert_eq!(r.body["settings"]["csat"]["text"], survey, "{:?}", r.body);

    let say = |text: &'static str| {
        let app = &app;
        async move {
            app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": text})).await;
            app.processed().await;
        }
    };
    let resolve = |conv: String| {
        let (app, admin) = (&app, ctx.admin.clone());
        async move {
            let body = json!({"status": "resolved"});
            let r = app.call("PATCH", &format!("/api/conversations/{conv}"), Some(&admin), Some(body)).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            r.body
        }
    };
    let status_of = |conv: String| {
        let (app, admin) = (&app, ctx.admin.clone());
        async move {
            let r = app.call("GET", &format!("/api/conversations/{conv}"), Some(&admin), None).await;
            (r.body["status"].as_str().unwrap_or("").to_string(), r.body["unread_count"].as_i64().unwrap_or(-1))
        }
    };
    say("my order is late").await;
    let conv = by_contact(&conversations(&app, &ctx.admin, "").await, PSID)["id"].as_str().expect("id").to_string();
    app.call("POST", &format!("/api/conversations/{conv}/read"), Some(&ctx.admin), None).await;
    let resolved = resolve(conv.clone()).await;
    assert_eq!((&resolved["status"], &resolved["last_message"]["text"]), (&json!("resolved"), &json!(survey)));
    eventually("survey sent", || async {
        messages(&app, &ctx.admin, &conv).await.iter().any(|m| m["text"] == survey && m["status"] != "pending")
    })
    .await;
    let sent = messages(&app, &ctx.admin, &conv).await;
    let sent = sent.iter().find(|m| m["text"] == survey).expect("survey");
    assert_eq!((&sent["sender"]["kind"], &sent["status"] == "failed"), (&json!("page"), false), "{sent}");

    // A bare rating: kept, the conversation stays resolved and read.
    say("4").await;
    assert_eq!(status_of(conv.clone()).await, ("resolved".to_string(), 0));
    // Changed their mind: the later rating counts.
    say("⭐⭐⭐⭐⭐").await;
    assert_eq!(status_of(conv.clone()).await.0, "resolved");
    // A rating is not a question: nobody waits (`waiting`).
    let c = app.call("GET", &format!("/api/conversations/{conv}"), Some(&ctx.admin), None).await.body;
    assert_eq!(c["waiting_since"], Value::Null, "{c}");
    let row = |conv: &str| {
        let sql = format!(
            "SELECT count(*) AS n FROM tenant_acme.csat_surveys WHERE conversation_id = {conv} AND rating = 5 AND comment IS NULL"
        );
        app.count(&sql)
    };
    assert_eq!(row(&conv), 1);
    // Something else: reopened, nothing rated.
    say("and another thing").await;
    assert_eq!(status_of(conv.clone()).await.0, "open");
    // Resolved again: a second survey; a rating with words reopens.
    resolve(conv.clone()).await;
    say("2 - the box came broken").await;
    assert_eq!(status_of(conv.clone()).await.0, "open");
    let commented = app.count(&format!(
        "SELECT count(*) AS n FROM tenant_acme.csat_surveys WHERE conversation_id = {conv} AND rating = 2 \
         AND comment = 'the box came broken'"
    ));
    assert_eq!(commented, 1);
    // Outside the reply window: no survey.
    let mut conn = app.db.conn();
    diesel::sql_query(format!(
        "UPDATE tenant_acme.conversations SET last_inbound_at = now() - interval '25 hours' WHERE id = {conv}"
    ))
    .execute(&mut conn)
    .expect("a day passes");
    resolve(conv.clone()).await;
    assert_eq!(
        app.count(&format!("SELECT count(*) AS n FROM tenant_acme.csat_surveys WHERE conversation_id = {conv}")),
        2
    );
    // Reports: two surveys, both answered, 5 and 2.
    let r = app.call("GET", "/api/reports/overview", Some(&ctx.admin), None).await;
    assert_eq!(r.body["csat"], json!({"surveys_sent": 2, "answered": 2, "average": 3.5, "ratings": [0, 1, 0, 0, 1]}));
    let agents = r.body["agents"].as_array().expect("agents");
    assert_eq!((&agents[0]["csat_answered"], &agents[0]["csat_average"]), (&json!(2), &json!(3.5)), "{agents:?}");
}

/// A contact the team blocks: their conversation is resolved without a
/// survey, their messages are kept quietly (no reopening, unread count,
/// notification or automatic reply), nothing is sent to them (a reply
/// queued before the block fails as `contact_blocked`), and
/// `?blocked=true` finds them. Unblocked, their next message opens the
/// conversation as anyone's does.
#[actix_web::test]
async fn a_blocked_contact_is_kept_quietly_and_sent_nothing() {
    use switchboard::meta::fake::PAIR_LIMITED_WA as RATE_LIMITED_WA;
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let settings = json!({"settings": {"auto_reply": {"enabled": true, "text": "Hello!"},
        "csat": {"enabled": true, "text": "How did we do? 1 to 5"}}});
    let r = app.call("PATCH", &format!("/api/channels/{page}"), Some(&ctx.admin), Some(settings)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "buy 10k followers 🚀"})).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": RATE_LIMITED_WA, "text": "Olá"})).await;
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let conv = by_contact(&convs, PSID)["id"].as_str().expect("id").to_string();
    let contact_path = |c: &Value| format!("/api/contacts/{}", c["contact"]["id"].as_str().expect("contact id"));
    let (spammer, rate_limited) =
        (contact_path(by_contact(&convs, PSID)), contact_path(by_contact(&convs, RATE_LIMITED_WA)));
    let texts = |msgs: &[Value]| msgs.iter().map(|m| m["text"].as_str().unwrap_or("").to_string()).collect::<Vec<_>>();
    eventually("the greeting went out", || async {
        let msgs = messages(&app, &ctx.admin, &conv).await;
        msgs.len() == 2 && msgs[1]["status"] != "pending"
    })
    .await;
    // A reply Meta holds back (rate limit) waits in the queue when the block comes.
    let wa_conv = by_contact(&convs, RATE_LIMITED_WA)["id"].as_str().expect("id").to_string();
    let (status, held) = reply(&app, &ctx.admin, &wa_conv, "Bom dia!", "c-1").await;
    assert_eq!(status, 202, "{held}");
    let held = held["id"].as_str().expect("id").to_string();
    eventually("the rate-limited reply was put back", || async {
        app.count(&format!(
            "SELECT count(*) AS n FROM public.send_queue WHERE message_id = {held} AND attempts >= 1 AND status <> 'done'"
        )) == 1
    })
    .await;
    let before = app.call("GET", &format!("/api/conversations/{conv}"), Some(&ctx.admin), None).await.body;
    assert_eq!((&before["status"], &before["contact"]["blocked"]), (&json!("open"), &json!(false)));
    let notifications = || app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'notification'");
    let notified = notifications();

    let mut socket = crate::realtime::ws(&app, "", Some(&ctx.admin), None).await.expect("socket");
    for path in [&spammer, &rate_limited] {
        let r = app.call("PATCH", path, Some(&ctx.admin), Some(json!({"blocked": true}))).await;
        assert_eq!(
            (r.status, &r.body["blocked"], r.body["blocked_at"].is_string()),
            (200, &json!(true), true),
            "{:?}",
            r.body
        );
    }
    let frame = crate::realtime::until(&mut socket, "conversation.updated", std::time::Duration::from_secs(10))
        .await
        .expect("conversation.updated");
    assert_eq!((&frame["data"]["status"], &frame["data"]["contact"]["blocked"]), (&json!("resolved"), &json!(true)));
    // Resolved by the block, without a survey.
    let shown = app.call("GET", &format!("/api/conversations/{conv}"), Some(&ctx.admin), None).await.body;
    assert_eq!((&shown["status"], &shown["contact"]["blocked"]), (&json!("resolved"), &json!(true)));
    assert_eq!(texts(&messages(&app, &ctx.admin, &conv).await).len(), 2);
    // The reply queued before the block is not sent.
    app.count(&format!(
        "WITH due AS (UPDATE public.send_queue SET next_attempt_at = now() WHERE message_id = {held} RETURNING 1) \
         SELECT count(*) AS n FROM due"
    ));
    eventually("the held reply failed", || async {
        message_status(&app, &ctx.admin, &wa_conv, &held).await["status"] == "failed"
    })
    .await;
    assert_eq!(message_status(&app, &ctx.admin, &wa_conv, &held).await["error"]["code"], "contact_blocked");

    // Their messages are kept, quietly.
    for text in ["follow back!!", "FREE FOLLOWERS"] {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": text})).await;
    }
    app.processed().await;
    let msgs = messages(&app, &ctx.admin, &conv).await;
    assert_eq!(texts(&msgs), ["buy 10k followers 🚀", "Hello!", "follow back!!", "FREE FOLLOWERS"]);
    let quiet = app.call("GET", &format!("/api/conversations/{conv}"), Some(&ctx.admin), None).await.body;
    assert_eq!(
        (&quiet["status"], &quiet["unread_count"], &quiet["last_message"]["text"]),
        (&json!("resolved"), &before["unread_count"], &json!("Hello!")),
        "{quiet}"
    );
    assert_eq!(notifications(), notified);
    assert!(conversations(&app, &ctx.admin, "?status=open").await.iter().all(|c| c["id"] != conv.as_str()));

    // Nothing is sent to them; notes stay free.
    let (status, refused) = reply(&app, &ctx.admin, &conv, "Please stop.", "c-2").await;
    assert_eq!((status, refused["error"]["code"].as_str()), (409, Some("contact_blocked")), "{refused}");
    let path = format!("/api/conversations/{conv}/messages");
    let note = app.call("POST", &path, Some(&ctx.admin), Some(json!({"text": "spam bot", "private": true}))).await;
    assert_eq!(note.status, 201, "{:?}", note.body);
    let spam = msgs[2]["id"].as_str().expect("id");
    let r = app
        .call("PUT", &format!("/api/messages/{spam}/reaction"), Some(&ctx.admin), Some(json!({"emoji": "👎"})))
        .await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("contact_blocked")), "{:?}", r.body);

    // Reopened and resolved by hand while blocked: still no survey.
    for status in ["open", "resolved"] {
        let body = json!({"status": status});
        let r = app.call("PATCH", &format!("/api/conversations/{conv}"), Some(&ctx.admin), Some(body)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.csat_surveys"), 0);

    // Found among the blocked; the filter and the field are checked.
    let listed = |q: &'static str| {
        let (app, t) = (&app, ctx.admin.clone());
        async move { app.call("GET", &format!("/api/contacts{q}"), Some(&t), None).await }
    };
    assert_eq!(listed("?blocked=true").await.body["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(listed("?blocked=false").await.body["items"].as_array().map(Vec::len), Some(0));
    let r = listed("?blocked=maybe").await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some("invalid_blocked")));
    for body in [json!({"blocked": "yes"}), json!({"blocked": null}), json!({"blocked": 1})] {
        let r = app.call("PATCH", &spammer, Some(&ctx.admin), Some(body.clone())).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_body")), "{body}");
    }
    // Blocking again changes nothing.
    let r = app.call("PATCH", &spammer, Some(&ctx.admin), Some(json!({"blocked": true}))).await;
    assert_eq!((r.status, &r.body["blocked"]), (200, &json!(true)));
    let log = app.call("GET", "/api/audit-log?limit=200", Some(&ctx.admin), None).await.body;
    let actions: Vec<&Value> = log["items"].as_array().expect("items").iter().collect();
    let count = |action: &str| actions.iter().filter(|e| e["action"] == action).count();
    assert_eq!(count("contact.blocked"), 2);
    assert!(actions
        .iter()
        .any(|e| e["action"] == "conversation.status_changed" && e["details"]["by"] == "contact_blocked"));

    // Unblocked: the next message opens the conversation as anyone's.
    let r = app.call("PATCH", &spammer, Some(&ctx.admin), Some(json!({"blocked": false}))).await;
    assert_eq!((r.status, &r.body["blocked"], &r.body["blocked_at"]), (200, &json!(false), &json!(null)));
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "sorry, a real question"})).await;
    app.processed().await;
    let reopened = app.call("GET", &format!("/api/conversations/{conv}"), Some(&ctx.admin), None).await.body;
    assert_eq!((&reopened["status"], &reopened["contact"]["blocked"]), (&json!("open"), &json!(false)));
    assert_eq!(reopened["unread_count"].as_i64(), before["unread_count"].as_i64().map(|n| n + 1));
    assert_eq!(notifications(), notified + 1);
    eventually("the greeting again", || async {
        texts(&messages(&app, &ctx.admin, &conv).await).iter().filter(|t| *t == "Hello!").count() == 2
    })
    .await;
    let log = app.call("GET", "/api/audit-log?limit=200", Some(&ctx.admin), None).await.body;
    assert!(log["items"].as_array().expect("items").iter().any(|e| e["action"] == "contact.unblocked"));
}

/// A reply, or a note, to a conversation erased while it is being written
/// (the customer's erasure commits between the write's check and its
/// insert) is a 404, as a moment later, with nothing written: not a 500.
#[actix_web::test]
async fn a_reply_to_a_conversation_erased_meanwhile_is_not_found() {
    use crate::common::transaction_held_until_waited;
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let writes = [
        ("6630000000000001", json!({"text": "Tudo bem?", "client_id": "gone-1"})),
        ("6630000000000002", json!({"text": "Nota", "private": true, "client_id": "gone-2"})),
    ];
    for (customer, body) in writes {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": customer, "text": "Apaguem-me"})).await;
        app.processed().await;
        let conv =
            by_contact(&conversations(&app, &ctx.admin, "").await, customer)["id"].as_str().expect("id").to_string();
        let erase = format!("BEGIN; DELETE FROM tenant_acme.conversations WHERE id = {conv}");
        let (begun, held) = transaction_held_until_waited(&app.db.url, erase, None);
        begun.recv().expect("begun");
        let r = app.call("POST", &format!("/api/conversations/{conv}/messages"), Some(&ctx.admin), Some(body)).await;
        let (waited, went) = held.join().expect("the erasure's thread");
        assert_eq!(went, Ok(()));
        assert!(waited, "the write waited for the erasure");
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (404, Some("not_found")), "{:?}", r.body);
        assert_eq!(r.body["error"]["message"], "conversation not found");
    }
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages WHERE direction = 'out'"), 0);
}

/// A customer's right to erasure: an admin deletes a contact, and with it
/// their conversation, messages and everything the live log and the audit
/// log held of them; open inboxes are told; the other customers' stay. If
/// the customer writes again, they are someone new.
#[actix_web::test]
async fn an_erased_contact_leaves_nothing_of_theirs_behind() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let other = "7392015648120555";
    app.fake(
        "POST",
        "/_fake/inbound",
        json!({"to": PAGE_A, "from": PSID, "text": "Sou a Zoé Quintela, NIF 123456789"}),
    )
    .await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": other, "text": "Another customer"})).await;
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let conv = by_contact(&convs, PSID)["id"].as_str().expect("id").to_string();
    let contact = format!("/api/contacts/{}", by_contact(&convs, PSID)["contact"]["id"].as_str().expect("contact"));
    let r = app.call("PATCH", &contact, Some(&ctx.admin), Some(json!({"email": "zoe.quintela@exemplo.pt"}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let (status, sent) = reply(&app, &ctx.admin, &conv, "Olá Zoé Quintela!", "c-1").await;
    assert_eq!(status, 202, "{sent}");
    let reply_id = sent["id"].as_str().expect("id").to_string();
    eventually("the reply went out", || async {
        message_status(&app, &ctx.admin, &conv, &reply_id).await["status"] != "pending"
    })
    .await;
    app.processed().await;
    let path = format!("/api/conversations/{conv}/messages");
    let note = json!({"text": "Zoé Quintela asked for an invoice", "private": true});
    assert_eq!(app.call("POST", &path, Some(&ctx.admin), Some(note)).await.status, 201);
    let held = |table: &str, column: &str| {
        app.count(&format!("SELECT count(*) AS n FROM tenant_acme.{table} WHERE {column}::text ILIKE '%quintela%'"))
    };
    assert!(held("events", "payload") >= 4, "the live log holds copies before");
    assert_eq!(held("audit_log", "details"), 1, "the saved address is in the log");

    // What Meta sent of them that is not processed yet: dead letters (one
    // shared with another customer, one theirs alone, one from another
    // page) and a retry not due yet.
    let said = |from: &str, to: &str, mid: &str, text: &str| {
        json!({"sender": {"id": from}, "recipient": {"id": to}, "timestamp": 1_773_140_000_000_i64,
               "message": {"mid": mid, "text": text}})
    };
    let page =
        |id: &str, items: Vec<Value>| json!({"object": "page", "entry": [{"id": id, "time": 1, "messaging": items}]});
    let stored = |body: Value, status: &str| {
        app.count(&format!(
            "INSERT INTO public.webhook_events (body, status, next_attempt_at) \
             VALUES (convert_to($b${body}$b$, 'UTF8'), '{status}', now() + interval '1 hour') RETURNING id AS n"
        ))
    };
    let shared = stored(
        page(PAGE_A, vec![said(PSID, PAGE_A, "m_d1", "Quintela outra vez"), said(other, PAGE_A, "m_d2", "still here")]),
        "dead",
    );
    let theirs = stored(page(PAGE_A, vec![said(PSID, PAGE_A, "m_d3", "Quintela, a morada")]), "dead");
    let elsewhere = stored(page("999000111222333", vec![said(PSID, "999000111222333", "m_d4", "Quintela")]), "dead");
    let retry = stored(page(PAGE_A, vec![said(PSID, PAGE_A, "m_d5", "Quintela: retry")]), "pending");
    let body_of = |id: i64| {
        app.count(&format!(
            "SELECT count(*) AS n FROM public.webhook_events WHERE id = {id} \
               AND convert_from(body, 'UTF8') ILIKE '%quintela%'"
        ))
    };
    assert_eq!(body_of(shared) + body_of(theirs) + body_of(retry) + body_of(elsewhere), 4);
    // And what was processed: their message, the reply's echo and receipts.
    let processed = |text: &str| {
        app.count(&format!(
            "SELECT count(*) AS n FROM public.webhook_events WHERE status = 'done' \
               AND convert_from(body, 'UTF8') LIKE '%{text}%'"
        ))
    };
    // (The fake sends the reply's echo and receipts after it answers the
    // send: they may come after the wait for processing above.)
    eventually("their processed bodies: their message, the reply's echo", || async { processed(PSID) >= 2 }).await;
    assert_eq!(processed("Another customer"), 1);

    // Admins only.
    let (_, al) = agent_al(&app, &ctx.admin).await;
    assert_eq!(app.call("DELETE", &contact, Some(&al), None).await.status, 403);
    let mut socket = crate::realtime::ws(&app, "", Some(&ctx.admin), None).await.expect("socket");
    let r = app.call("DELETE", &contact, Some(&ctx.admin), None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let frame = crate::realtime::until(&mut socket, "conversation.deleted", std::time::Duration::from_secs(10))
        .await
        .expect("conversation.deleted");
    assert_eq!(frame["data"]["id"], conv.as_str());

    // Nothing of theirs is left, anywhere the tenant keeps it.
    assert_eq!(app.call("GET", &contact, Some(&ctx.admin), None).await.status, 404);
    assert_eq!(app.call("GET", &format!("/api/conversations/{conv}"), Some(&ctx.admin), None).await.status, 404);
    assert_eq!(app.count(&format!("SELECT count(*) AS n FROM tenant_acme.messages WHERE conversation_id = {conv}")), 0);
    assert_eq!(held("messages", "text"), 0);
    assert_eq!(held("events", "payload"), 0);
    assert_eq!(held("audit_log", "details"), 0);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.events WHERE payload::text LIKE '%zoe.quintela%'"), 0);
    let resumed = app.call("GET", "/api/conversations?q=Quintela", Some(&ctx.admin), None).await;
    assert_eq!(resumed.body["items"].as_array().map(Vec::len), Some(0));
    let log = app.call("GET", "/api/audit-log?limit=200", Some(&ctx.admin), None).await.body;
    let erased = log["items"].as_array().expect("items").iter().find(|e| e["action"] == "contact.erased").cloned();
    let erased = erased.expect("contact.erased");
    assert_eq!((&erased["details"]["conversations"], &erased["details"]["messages"]), (&json!(1), &json!(3)));
    // The webhook inbox: theirs taken out, the other customer's kept, what
    // came for another page left; nothing left of a body is gone.
    let details = &erased["details"];
    assert_eq!((&details["webhooks_changed"], &details["webhooks_deleted"]), (&json!(1), &json!(2)), "{details}");
    assert_eq!(body_of(shared) + body_of(theirs) + body_of(retry), 0);
    let kept = |id: i64| app.count(&format!("SELECT count(*) AS n FROM public.webhook_events WHERE id = {id}"));
    assert_eq!((kept(shared), kept(theirs), kept(retry), kept(elsewhere)), (1, 0, 0, 1));
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM public.webhook_events WHERE id = {shared} \
               AND convert_from(body, 'UTF8') LIKE '%still here%' AND status = 'dead'"
        )),
        1
    );
    // What was processed goes soon after, in the background; the other
    // customer's stays, and so does nothing of the pass itself.
    eventually("their processed bodies are scrubbed", || async {
        processed(PSID) == 0 && app.count("SELECT count(*) AS n FROM public.webhook_scrubs") == 0
    })
    .await;
    assert_eq!(processed("Another customer"), 1);
    assert_eq!(body_of(elsewhere), 1, "another page's body is another channel's");
    // The other customer's conversation stays; a second erase finds nothing.
    let left = conversations(&app, &ctx.admin, "").await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["last_message"]["text"], "Another customer");
    assert_eq!(app.call("DELETE", &contact, Some(&ctx.admin), None).await.status, 404);
    // Meta's echo of the reply, late (a retry): ours, gone, not brought back.
    let echo = json!({"object": "page", "entry": [{"id": PAGE_A, "time": 1, "messaging": [{
        "sender": {"id": PAGE_A}, "recipient": {"id": PSID}, "timestamp": chrono::Utc::now().timestamp_millis(),
        "message": {"mid": "m_late_echo", "is_echo": true, "app_id": 1234567890123456_i64,
                    "metadata": format!("sb:{reply_id}"), "text": "Olá Zoé Quintela!"}}]}]});
    assert_eq!(app.webhook(&serde_json::to_vec(&echo).expect("body")).await, 200);
    app.processed().await;
    assert_eq!(conversations(&app, &ctx.admin, "").await.len(), 1);
    assert_eq!(held("messages", "text"), 0);

    // Writing again, they are someone new.
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "hello again"})).await;
    app.processed().await;
    let again = conversations(&app, &ctx.admin, "").await;
    let new = by_contact(&again, PSID);
    assert_ne!(new["id"], conv.as_str());
    assert_eq!(messages(&app, &ctx.admin, new["id"].as_str().expect("id")).await.len(), 1);
}

/// A conversation exported as text: each message a line, in the zone
/// asked for, the team's notes only when asked for, audited; only for who
/// may see the conversation.
#[actix_web::test]
async fn a_conversation_is_exported_as_a_transcript() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    app.fake(
        "POST",
        "/_fake/inbound",
        json!({"to": PAGE_A, "from": PSID, "text": "Olá!\nA encomenda 4417 não chegou.", "name": "Zoé Lima"}),
    )
    .await;
    app.processed().await;
    // The name comes from the profile lookup, which runs after the webhook.
    eventually("the profile looked up", || async {
        by_contact(&conversations(&app, &ctx.admin, "").await, PSID)["contact"]["name"] == "Zoé Lima"
    })
    .await;
    let conv = by_contact(&conversations(&app, &ctx.admin, "").await, PSID)["id"].as_str().expect("id").to_string();
    let (status, sent) = reply(&app, &ctx.admin, &conv, "Vamos ver já 📦", "c-1").await;
    assert_eq!(status, 202, "{sent}");
    let path = format!("/api/conversations/{conv}/messages");
    let note = json!({"text": "Carrier lost it; refund", "private": true});
    assert_eq!(app.call("POST", &path, Some(&ctx.admin), Some(note)).await.status, 201);
    let get = |query: &str| {
        let url = app.url(&format!("/api/conversations/{conv}/transcript{query}"));
        let (client, t) = (app.client.clone(), ctx.admin.clone());
        async move { client.get(url).bearer_auth(t).send().await.expect("transcript") }
    };

    let r = get("").await;
    assert_eq!(r.status(), 200);
    let header = |r: &reqwest::Response, name: &str| {
        r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    };
    assert_eq!(header(&r, "content-type"), "text/plain; charset=utf-8");
    assert_eq!(header(&r, "content-disposition"), format!("attachment; filename=\"conversation-{conv}.txt\""));
    let text = r.text().await.expect("text");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with(&format!("Conversation {conv} with Zoé Lima (Messenger, ")), "{text}");
    assert!(lines[1].contains("(UTC)"), "{text}");
    let said: Vec<&str> = lines.iter().skip(3).map(|l| l.split_once("] ").map_or(*l, |(_, rest)| rest)).collect();
    assert_eq!(
        said,
        ["Zoé Lima: Olá!", "    A encomenda 4417 não chegou.", "ann@acme.test: Vamos ver já 📦"],
        "{text}"
    );
    assert!(!text.contains("refund"), "notes stay out unless asked for");

    let with_notes = get("?notes=true&tz=Asia/Tokyo").await.text().await.expect("text");
    assert!(with_notes.contains("Note by ann@acme.test: Carrier lost it; refund"), "{with_notes}");
    assert!(with_notes.lines().nth(1).is_some_and(|l| l.contains("(Asia/Tokyo)")), "{with_notes}");
    let at = |t: &str| t.lines().nth(3).and_then(|l| l.get(1..17)).unwrap_or_default().to_string();
    assert_ne!(at(&text), at(&with_notes), "times are in the zone asked for");
    for (query, code) in [("?tz=Mars/Olympus", "invalid_timezone"), ("?notes=yes", "invalid_notes")] {
        let r = get(query).await;
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"]["code"], code);
    }
    let (_, al) = agent_al(&app, &ctx.admin).await;
    let r = app.call("GET", &format!("/api/conversations/{conv}/transcript"), Some(&al), None).await;
    assert_eq!(r.status, 404);
    let log = app.call("GET", "/api/audit-log?limit=200", Some(&ctx.admin), None).await.body;
    let exports =
        log["items"].as_array().expect("items").iter().filter(|e| e["action"] == "conversation.exported").count();
    assert_eq!(exports, 2);
}

/// A note calls colleagues in: each mentioned member who may see the
/// conversation is told (a `mention` notification naming them) and finds
/// the note in `GET /api/mentions`; a member who cannot see it cannot be
/// mentioned; a retry tells nobody twice.
#[actix_web::test]
async fn a_note_mentions_a_colleague() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (al_member, al) = agent_al(&app, &ctx.admin).await;
    let al_id = al_member["user_id"].as_str().expect("id").to_string();
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "Where is my refund?"})).await;
    app.processed().await;
    let conv = by_contact(&conversations(&app, &ctx.admin, "").await, PSID)["id"].as_str().expect("id").to_string();
    let path = format!("/api/conversations/{conv}/messages");
    let note = |mentions: Value, client_id: &str| json!({"text": "@Al can you check the refund?", "private": true, "mentions": mentions, "client_id": client_id});
    // Al cannot see page A yet.
    let r = app.call("POST", &path, Some(&ctx.admin), Some(note(json!([al_id]), "n-1"))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_mentions")), "{:?}", r.body);
    for bad in [json!(["abc"]), json!(["999999"]), json!((0..21).map(|i| i.to_string()).collect::<Vec<_>>())] {
        let r = app.call("POST", &path, Some(&ctx.admin), Some(note(bad.clone(), "n-1"))).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_mentions")), "{bad}");
    }
    let r = app.call("POST", &path, Some(&ctx.admin), Some(json!({"text": "hi", "mentions": [al_id]}))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_body")), "not on a reply");
    assert_eq!(messages(&app, &ctx.admin, &conv).await.len(), 1, "nothing was written");

    let members = json!({"user_ids": [al_id]});
    let r = app.call("PUT", &format!("/api/channels/{page}/members"), Some(&ctx.admin), Some(members)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut socket = crate::realtime::ws(&app, "", Some(&al), None).await.expect("socket");
    let ann_id =
        app.call("GET", "/api/me", Some(&ctx.admin), None).await.body["user"]["id"].as_str().expect("id").to_string();
    // Named twice, and the author too: Al is told once, the author not at all.
    let mut first_note = String::new();
    for _ in 0..2 {
        let r = app.call("POST", &path, Some(&ctx.admin), Some(note(json!([al_id, al_id, ann_id]), "n-2"))).await;
        assert!(r.status == 201 || r.status == 200, "{:?}", r.body);
        first_note = r.body["id"].as_str().expect("id").to_string();
    }
    let told =
        crate::realtime::until(&mut socket, "notification", std::time::Duration::from_secs(10)).await.expect("told");
    assert_eq!(
        (&told["data"]["kind"], &told["data"]["user_id"], &told["data"]["by"], &told["data"]["conversation_id"]),
        (&json!("mention"), &json!(al_id), &json!(ann_id), &json!(conv))
    );
    assert_eq!(told["data"]["preview"], "@Al can you check the refund?");
    assert_eq!(
        app.count(
            "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'notification' AND payload->>'kind' = 'mention'"
        ),
        1
    );
    let mine = app.call("GET", "/api/mentions", Some(&al), None).await;
    assert_eq!(mine.status, 200, "{:?}", mine.body);
    let items = mine.body["items"].as_array().expect("items");
    assert_eq!(items.len(), 1);
    assert_eq!((&items[0]["conversation_id"], &items[0]["by"]), (&json!(conv), &json!(ann_id)));
    let theirs = app.call("GET", "/api/mentions", Some(&ctx.admin), None).await;
    assert_eq!(theirs.body["items"].as_array().map(Vec::len), Some(1), "the author named themself");

    // A note with a file names them in a `mentions` part; not a reply.
    let file = Some(("refund.pdf", "application/pdf", b"%PDF-1.4 refund form".as_slice()));
    let parts = [("private", "true"), ("text", "@Al the form"), ("mentions", al_id.as_str())];
    let r = send_file(&app, &ctx.admin, &conv, file, &parts).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = send_file(&app, &ctx.admin, &conv, file, &[("text", "x"), ("mentions", al_id.as_str())]).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_body")));
    let mine = app.call("GET", "/api/mentions", Some(&al), None).await;
    let texts: Vec<&str> =
        mine.body["items"].as_array().expect("items").iter().filter_map(|m| m["text"].as_str()).collect();
    assert_eq!(texts, ["@Al the form", "@Al can you check the refund?"], "newest first");

    // Edited, the note names whom it names now: Al no longer, then again
    // (told again); the same edit twice, or text alone, changes no one.
    let mentions_told = || {
        app.count(
            "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'notification' AND payload->>'kind' = 'mention'",
        )
    };
    let al_sees = || async {
        let mine = app.call("GET", "/api/mentions", Some(&al), None).await.body;
        mine["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|m| m["text"].as_str().map(str::to_string))
            .collect::<Vec<_>>()
    };
    let edit = |body: Value| {
        let (app, path, t) = (&app, format!("/api/messages/{first_note}"), ctx.admin.clone());
        async move { app.call("PATCH", &path, Some(&t), Some(body)).await }
    };
    let before = mentions_told();
    let r = edit(json!({"text": "Ann will check the refund", "mentions": [ann_id]})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(al_sees().await, ["@Al the form"]);
    assert_eq!(mentions_told(), before, "nobody new");
    let r = edit(json!({"text": "Ann will check the refund", "mentions": ["999999"]})).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_mentions")));
    for _ in 0..2 {
        let r = edit(json!({"text": "@Al over to you", "mentions": [al_id, ann_id]})).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    assert_eq!(mentions_told(), before + 1, "Al, once");
    // Ann dropped, Al kept: Al is not told again.
    let r = edit(json!({"text": "@Al over to you", "mentions": [al_id]})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(mentions_told(), before + 1, "Al was named already");
    let r = edit(json!({"text": "@Al over to you, thanks"})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(al_sees().await, ["@Al the form", "@Al over to you, thanks"]);
    assert_eq!(mentions_told(), before + 1);
}

/// The team marks how urgent a conversation is: shown on it, a filter of
/// the list, changed one at a time or in bulk, audited; a repeat changes
/// nothing, `null` takes it away.
#[actix_web::test]
async fn conversations_carry_a_priority() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    for from in ["7392015648120001", "7392015648120002", "7392015648120003"] {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": "hello"})).await;
    }
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let id = |from: &str| by_contact(&convs, from)["id"].as_str().expect("id").to_string();
    let (first, second, third) = (id("7392015648120001"), id("7392015648120002"), id("7392015648120003"));
    assert!(convs.iter().all(|c| c["priority"].is_null()));
    let patch = |conv: &str, body: Value| {
        let (app, path, t) = (&app, format!("/api/conversations/{conv}"), ctx.admin.clone());
        async move { app.call("PATCH", &path, Some(&t), Some(body)).await }
    };
    for _ in 0..2 {
        let r = patch(&first, json!({"priority": "urgent"})).await;
        assert_eq!((r.status, &r.body["priority"]), (200, &json!("urgent")), "{:?}", r.body);
    }
    for bad in [json!({"priority": "URGENT"}), json!({"priority": "p1"}), json!({"priority": ""})] {
        let r = patch(&second, bad.clone()).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_priority")), "{bad}");
    }
    let r = patch(&second, json!({"priority": 3})).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_body")));
    let bulk = json!({"ids": [second, third], "priority": "high"});
    let r = app.call("POST", "/api/conversations/bulk", Some(&ctx.admin), Some(bulk)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(r.body["items"].as_array().expect("items").iter().all(|c| c["priority"] == "high"));
    let r = patch(&third, json!({"priority": null})).await;
    assert_eq!((r.status, &r.body["priority"]), (200, &json!(null)));

    let ids = |list: Vec<Value>| list.iter().map(|c| c["id"].as_str().unwrap_or("").to_string()).collect::<Vec<_>>();
    assert_eq!(ids(conversations(&app, &ctx.admin, "?priority=urgent").await), [first.as_str()]);
    assert_eq!(ids(conversations(&app, &ctx.admin, "?priority=high").await), [second.as_str()]);
    assert_eq!(ids(conversations(&app, &ctx.admin, "?priority=none").await), [third.as_str()]);
    let r = app.call("GET", "/api/conversations?priority=p1", Some(&ctx.admin), None).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some("invalid_query")));
    let log = app.call("GET", "/api/audit-log?limit=200", Some(&ctx.admin), None).await.body;
    let changes: Vec<&Value> =
        log["items"].as_array().expect("items").iter().filter(|e| e["action"] == "conversation.prioritized").collect();
    assert_eq!(changes.len(), 4, "urgent once, high twice, then none: {changes:?}");
}

/// A block that commits while a webhook batch waits for the conversation's
/// lock (the batch read the contact before the block) still keeps the
/// message quiet: the conversation stays resolved.
#[actix_web::test]
async fn a_block_committed_while_a_batch_waits_keeps_its_message_quiet() {
    let app = spawn_app_without_workers().await;
    acme(&app).await;
    assert_eq!(app.webhook(&messenger_text(PSID, "m_race_1", "first")).await, 200);
    process_now(&app);
    let conv = app.count("SELECT id AS n FROM tenant_acme.conversations");
    let unread = |app: &TestApp| {
        app.count(&format!("SELECT unread_count::int8 AS n FROM tenant_acme.conversations WHERE id = {conv}"))
    };
    let before = unread(&app);
    assert_eq!(app.webhook(&messenger_text(PSID, "m_race_2", "second")).await, 200);
    let (locked, is_locked) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        // What blocking does, holding the conversation while the batch reads the contact.
        let blocker = s.spawn(|| {
            let mut conn = app.db.conn();
            conn.transaction::<_, diesel::result::Error, _>(|conn| {
                diesel::sql_query(format!("SELECT id FROM tenant_acme.conversations WHERE id = {conv} FOR UPDATE"))
                    .execute(conn)?;
                locked.send(()).expect("signal");
                std::thread::sleep(std::time::Duration::from_millis(800));
                diesel::sql_query("UPDATE tenant_acme.contacts SET blocked_at = now()").execute(conn)?;
                diesel::sql_query(format!(
                    "UPDATE tenant_acme.conversations SET status = 'resolved' WHERE id = {conv}"
                ))
                .execute(conn)?;
                Ok(())
            })
            .expect("block");
        });
        is_locked.recv().expect("locked");
        process_now(&app);
        blocker.join().expect("blocker");
    });
    let status = app.count(&format!(
        "SELECT count(*) AS n FROM tenant_acme.conversations WHERE id = {conv} AND status = 'resolved'"
    ));
    assert_eq!((status, unread(&app)), (1, before), "stays resolved, nothing counted");
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.messages"), 2, "kept all the same");
}

/// An admin keeps macros; an agent runs one on a conversation: its
/// messages, then its changes, all or nothing; a retry under the same
/// `client_id` sends, changes and records nothing again.
#[actix_web::test]
async fn a_macro_answers_labels_and_resolves_all_or_nothing() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let refund = json!({"name": "Refund sent", "actions": [
        {"type": "send_message", "text": "Your refund is on its way."},
        {"type": "add_note", "text": "Refund issued in the shop's back office"},
        {"type": "add_labels", "labels": ["Refund"]},
        {"type": "set_priority", "priority": "low"},
        {"type": "set_status", "status": "resolved"}]});
    let r = app.call("POST", "/api/macros", Some(&ctx.admin), Some(refund.clone())).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let id = r.body["id"].as_str().expect("id").to_string();
    assert_eq!(r.body["actions"][2], json!({"type": "add_labels", "labels": ["refund"]}));
    let r = app.call("POST", "/api/macros", Some(&ctx.admin), Some(refund)).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("macro_name_taken")));
    for (body, code) in [
        (json!({"name": "x", "actions": []}), "invalid_actions"),
        (json!({"name": "x", "actions": [{"type": "set_status", "status": "snoozed"}]}), "invalid_actions"),
        (json!({"name": "x", "actions": [{"type": "explode"}]}), "invalid_body"),
        (json!({"name": " ", "actions": [{"type": "add_note", "text": "x"}]}), "invalid_name"),
    ] {
        let r = app.call("POST", "/api/macros", Some(&ctx.admin), Some(body.clone())).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some(code)), "{body}: {:?}", r.body);
    }
    let (_, al) = agent_al(&app, &ctx.admin).await;
    let r = app
        .call(
            "POST",
            "/api/macros",
            Some(&al),
            Some(json!({"name": "mine", "actions": [{"type": "add_note", "text": "x"}]})),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(app.call("GET", "/api/macros", Some(&al), None).await.body["items"].as_array().map(Vec::len), Some(1));

    // A customer who wrote just now, and one whose window closed long ago.
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "Where is my refund?"})).await;
    assert_eq!(app.webhook(&messenger_text("7392015648120777", "m_old", "old question")).await, 200);
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let (fresh, old) = (
        by_contact(&convs, PSID)["id"].as_str().expect("id").to_string(),
        by_contact(&convs, "7392015648120777")["id"].as_str().expect("id").to_string(),
    );
    let run = |conv: &str, body: Option<Value>| {
        let (app, path, t) = (&app, format!("/api/conversations/{conv}/macros/{id}"), ctx.admin.clone());
        async move { app.call("POST", &path, Some(&t), body).await }
    };
    // Sent many times at once, and once more after a colleague changed the
    // priority: one run, whose messages each answer names; the retry does
    // nothing again (the colleague's priority stays).
    let first = |_| run(&fresh, Some(json!({"client_id": "run-1"})));
    let answers = futures_util::future::join_all((0..6).map(first)).await;
    let ids = |r: &crate::common::Resp| {
        r.body["messages"].as_array().map(|l| l.iter().map(|m| m["id"].clone()).collect::<Vec<_>>())
    };
    for r in &answers {
        assert_eq!(r.status, 200, "{:?}", r.body);
        let c = &r.body["conversation"];
        assert_eq!(
            (&c["status"], &c["labels"], &c["priority"]),
            (&json!("resolved"), &json!(["refund"]), &json!("low"))
        );
        assert_eq!(ids(r), ids(&answers[0]));
        assert_eq!(r.body["messages"].as_array().map(Vec::len), Some(2));
    }
    let high = json!({"priority": "high"});
    let r = app.call("PATCH", &format!("/api/conversations/{fresh}"), Some(&ctx.admin), Some(high)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = run(&fresh, Some(json!({"client_id": "run-1"}))).await;
    assert_eq!((r.status, &r.body["conversation"]["priority"]), (200, &json!("high")), "{:?}", r.body);
    assert_eq!(ids(&r), ids(&answers[0]));
    let texts: Vec<String> =
        messages(&app, &ctx.admin, &fresh).await.iter().map(|m| m["text"].as_str().unwrap_or("").to_string()).collect();
    assert_eq!(texts, ["Where is my refund?", "Your refund is on its way.", "Refund issued in the shop's back office"]);

    // The window closed: nothing of the run happens, and the error says which action.
    let r = run(&old, None).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("outside_window")), "{:?}", r.body);
    assert!(r.body["error"]["message"].as_str().is_some_and(|m| m.starts_with("action 1:")), "{:?}", r.body);
    let untouched = app.call("GET", &format!("/api/conversations/{old}"), Some(&ctx.admin), None).await.body;
    assert_eq!((&untouched["status"], &untouched["labels"]), (&json!("open"), &json!([])));
    assert_eq!(messages(&app, &ctx.admin, &old).await.len(), 1, "not even the note");
    // Al sees neither channel nor conversation: not found.
    assert_eq!(app.call("POST", &format!("/api/conversations/{fresh}/macros/{id}"), Some(&al), None).await.status, 404);

    // A macro snoozes for some hours; the last status action counts.
    let later = json!({"name": "Later", "actions": [{"type": "set_status", "status": "open"}, {"type": "snooze", "hours": 24}]});
    let made = app.call("POST", "/api/macros", Some(&ctx.admin), Some(later)).await;
    assert_eq!(made.status, 201, "{:?}", made.body);
    let path = format!("/api/conversations/{fresh}/macros/{}", made.body["id"].as_str().expect("id"));
    let r = app.call("POST", &path, Some(&ctx.admin), None).await;
    assert_eq!(r.body["conversation"]["status"], "snoozed", "{:?}", r.body);
    let until =
        r.body["conversation"]["snoozed_until"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    let hours = until.map(|t| (t.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_minutes());
    assert!(hours.is_some_and(|m| (23 * 60..=24 * 60).contains(&m)), "{:?}", r.body);
    let bad = json!({"name": "Never", "actions": [{"type": "snooze", "hours": 0}]});
    let r = app.call("POST", "/api/macros", Some(&ctx.admin), Some(bad)).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_actions")));

    // Renamed, then deleted: gone.
    let renamed = json!({"name": "Refund done", "actions": [{"type": "add_labels", "labels": ["refund"]}]});
    let r = app.call("PATCH", &format!("/api/macros/{id}"), Some(&ctx.admin), Some(renamed)).await;
    assert_eq!((r.status, &r.body["name"]), (200, &json!("Refund done")), "{:?}", r.body);
    assert_eq!(app.call("DELETE", &format!("/api/macros/{id}"), Some(&ctx.admin), None).await.status, 204);
    assert_eq!(run(&fresh, None).await.status, 404);
    let log = app.call("GET", "/api/audit-log?limit=200", Some(&ctx.admin), None).await.body;
    let runs = log["items"].as_array().expect("items").iter().filter(|e| e["action"] == "macro.run").count();
    assert_eq!(runs, 2, "run-1 once, its retries not again, and Later");
}

fn time_of(v: &Value) -> Option<chrono::DateTime<chrono::Utc>> {
    v.as_str().and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok()).map(|t| t.with_timezone(&chrono::Utc))
}

/// A customer waits from their first unanswered message until the team
/// answers: an automatic greeting does not answer, a failed reply did not,
/// a reply, resolving or the business writing from Meta's apps does. A
/// channel's reply targets by priority give `reply_due_at`; the list
/// shows the waiting, the overdue, and the longest waits first.
#[actix_web::test]
async fn a_waiting_customer_is_due_an_answer_by_the_channels_target() {
    use switchboard::meta::fake::UNAVAILABLE_PSID;
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let settings = |s: Value| {
        let (app, path, t) = (&app, format!("/api/channels/{page}"), ctx.admin.clone());
        async move { app.call("PATCH", &path, Some(&t), Some(json!({"settings": s}))).await }
    };
    for bad in [json!({"urgent": 0}), json!({"none": 43_201}), json!({"critical": 5}), json!({"high": "soon"})] {
        let r = settings(json!({"reply_targets": bad})).await;
        assert!(matches!(r.status, 400 | 422), "{bad}: {:?}", r.body);
        assert!(r.body["error"]["code"].is_string(), "{:?}", r.body);
    }
    let targets = json!({"reply_targets": {"urgent": 5, "none": 60}, "auto_reply": {"enabled": true, "text": "Hi!"}});
    let r = settings(targets).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        r.body["settings"]["reply_targets"],
        json!({"urgent": 5, "high": null, "medium": null, "low": null, "none": 60, "only_business_hours": false})
    );

    let now = chrono::Utc::now();
    let ago = |minutes: i64| now - chrono::Duration::minutes(minutes);
    let (long, short, answered, late) =
        ("7392015648130001", "7392015648130002", "7392015648130003", "7392015648130004");
    let asked = [(long, ago(120)), (short, ago(10)), (answered, ago(30)), (UNAVAILABLE_PSID, ago(20)), (late, ago(90))];
    for (from, at) in asked {
        let body = json!({"to": PAGE_A, "from": from, "text": "hello?", "at": at.to_rfc3339()});
        app.fake("POST", "/_fake/inbound", body).await;
    }
    app.processed().await;
    // Asking again does not move the wait: it is from the first question.
    let again = json!({"to": PAGE_A, "from": long, "text": "anyone?", "at": ago(100).to_rfc3339()});
    app.fake("POST", "/_fake/inbound", again).await;
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let id = |from: &str| by_contact(&convs, from)["id"].as_str().expect("id").to_string();
    let close = |a: Option<chrono::DateTime<chrono::Utc>>, b: chrono::DateTime<chrono::Utc>| {
        a.is_some_and(|a| (a - b).num_milliseconds().abs() < 1_000)
    };
    for (from, asked) in [(long, ago(120)), (short, ago(10)), (answered, ago(30))] {
        let c = by_contact(&convs, from);
        assert!(close(time_of(&c["waiting_since"]), asked), "the greeting answers nothing: {c}");
        assert!(close(time_of(&c["reply_due_at"]), asked + chrono::Duration::minutes(60)), "{c}");
    }

    // A reply answers; one Meta refuses did not.
    let (status, body) = reply(&app, &ctx.admin, &id(answered), "Here we are", "w-1").await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = reply(&app, &ctx.admin, &id(UNAVAILABLE_PSID), "Here we are", "w-2").await;
    assert_eq!(status, 202, "{body}");
    let refused = id(UNAVAILABLE_PSID);
    eventually("the refused reply failed and the wait came back", || async {
        let c = app.call("GET", &format!("/api/conversations/{refused}"), Some(&ctx.admin), None).await.body;
        close(time_of(&c["waiting_since"]), ago(20))
    })
    .await;
    let c = app.call("GET", &format!("/api/conversations/{}", id(answered)), Some(&ctx.admin), None).await.body;
    assert_eq!((&c["waiting_since"], &c["reply_due_at"]), (&Value::Null, &Value::Null), "{c}");
    // Answered past its target, before the clock looked: a target missed
    // all the same (counted below), though nobody is told any more.
    let (status, body) = reply(&app, &ctx.admin, &id(late), "Sorry for the wait", "w-3").await;
    assert_eq!(status, 202, "{body}");
    let answered_late = id(late);
    let ids = |list: Vec<Value>| list.iter().map(|c| c["id"].as_str().unwrap_or("").to_string()).collect::<Vec<_>>();
    let mut not_waiting = ids(conversations(&app, &ctx.admin, "?waiting=false").await);
    not_waiting.sort();
    let mut expected = vec![id(answered), answered_late.clone()];
    expected.sort();
    assert_eq!(not_waiting, expected);

    let me = app.call("GET", "/api/me", Some(&ctx.admin), None).await.body["user"]["id"].clone();
    assert_eq!(ids(conversations(&app, &ctx.admin, "?overdue=true").await), [id(long)]);
    let r = app
        .call(
            "PATCH",
            &format!("/api/conversations/{}", id(short)),
            Some(&ctx.admin),
            Some(json!({"priority": "urgent", "assignee_id": me})),
        )
        .await;
    assert!(close(time_of(&r.body["reply_due_at"]), ago(10) + chrono::Duration::minutes(5)), "{:?}", r.body);
    // Pending or snoozed, the customer still waits, and is due as before.
    let snooze_until = (chrono::Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    for change in [json!({"status": "pending"}), json!({"snoozed_until": snooze_until}), json!({"status": "open"})] {
        let r = app.call("PATCH", &format!("/api/conversations/{}", id(short)), Some(&ctx.admin), Some(change)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert!(close(time_of(&r.body["waiting_since"]), ago(10)), "{:?}", r.body);
        assert!(close(time_of(&r.body["reply_due_at"]), ago(10) + chrono::Duration::minutes(5)), "{:?}", r.body);
    }
    let mut overdue = ids(conversations(&app, &ctx.admin, "?overdue=true").await);
    overdue.sort();
    let mut expected = vec![id(long), id(short)];
    expected.sort();
    assert_eq!(overdue, expected);
    let report = app.call("GET", "/api/reports/overview", Some(&ctx.admin), None).await.body;
    assert_eq!((&report["now"]["waiting"], &report["now"]["overdue"]), (&json!(3), &json!(2)), "{report}");
    // The clock rings each overdue wait once.
    let ring = || {
        let mut pooled = app.pool.get().expect("conn");
        let tenant = switchboard::tenancy::find_by_slug(&mut pooled, "acme").expect("q").expect("acme").tenant_id();
        switchboard::db::with_tenant(&mut pooled, &switchboard::db::TenantScope::system(tenant), |tc| {
            let mut log = switchboard::inbox::events::EventLog::new();
            let n = switchboard::inbox::waiting::ring_overdue(tc, &mut log)?;
            log.write(tc)?;
            Ok::<_, switchboard::AppError>(n)
        })
        .expect("ring")
    };
    assert_eq!((ring(), ring()), (2, 0));
    let rung = app.count(
        "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'notification' AND payload->>'kind' = 'reply_overdue'",
    );
    assert_eq!(rung, 2, "the late answer rings nothing");
    let short_rung = app.count(&format!(
        "SELECT count(*) AS n FROM tenant_acme.events WHERE payload->>'kind' = 'reply_overdue' \
            AND payload->>'conversation_id' = '{}' AND payload->>'reply_due_at' IS NOT NULL",
        id(short)
    ));
    assert_eq!(short_rung, 1);
    let with_team = app.count(
        "SELECT count(*) AS n FROM tenant_acme.events WHERE payload->>'kind' = 'reply_overdue' AND payload::jsonb ? 'team_id'",
    );
    assert_eq!(with_team, 2, "each names the conversation's team (none here)");
    // The reports count each wait rung, and each answered late, as a
    // target missed, by channel and by who had it then.
    let report = app.call("GET", "/api/reports/overview", Some(&ctx.admin), None).await.body;
    assert_eq!(report["targets_missed"], json!(3), "{report}");
    assert_eq!(report["channels"][0]["targets_missed"], json!(3), "{report}");
    let agents = report["agents"].as_array().cloned().unwrap_or_default();
    let admin = agents.iter().find(|a| a["user_id"] == me).expect("the admin's figures");
    assert_eq!(admin["targets_missed"], json!(1), "{report}");
    let csv = app.client.get(app.url("/api/reports/agents.csv")).bearer_auth(&ctx.admin).send().await.expect("csv");
    let csv = csv.text().await.expect("text");
    let (header, row) = (
        csv.lines().next().unwrap_or_default(),
        csv.lines().find(|l| l.starts_with(&format!("{},", me.as_str().unwrap_or("?")))),
    );
    let column = header.split(',').position(|c| c == "targets_missed").expect("the column");
    assert_eq!(row.and_then(|r| r.split(',').nth(column)), Some("1"), "{csv}");
    // Longest waits first, a page at a time.
    let longest = [id(long), refused.clone(), id(short)];
    let first = app.call("GET", "/api/conversations?sort=waiting&limit=2", Some(&ctx.admin), None).await.body;
    assert_eq!(ids(first["items"].as_array().expect("items").clone()), longest[..2]);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let rest = conversations(&app, &ctx.admin, &format!("?sort=waiting&limit=2&cursor={cursor}")).await;
    assert_eq!(ids(rest), longest[2..]);
    // Soonest due first: the urgent one, asked last, is due before the
    // one Meta refused an answer to.
    let soonest = [id(long), id(short), refused.clone()];
    let first = app.call("GET", "/api/conversations?sort=due&limit=2", Some(&ctx.admin), None).await.body;
    assert_eq!(ids(first["items"].as_array().expect("items").clone()), soonest[..2]);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let rest = conversations(&app, &ctx.admin, &format!("?sort=due&limit=2&cursor={cursor}")).await;
    assert_eq!(ids(rest), soonest[2..]);
    for bad in ["?waiting=maybe", "?overdue=1", "?sort=oldest", "?sort=waiting&q=hello", "?sort=due&q=hello"] {
        let r = app.call("GET", &format!("/api/conversations{bad}"), Some(&ctx.admin), None).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some("invalid_query")), "{bad}");
    }
    // A rung wait whose due time moves later rings again when it runs
    // over that; the reports count the wait once.
    let priority = |p: Value| {
        let (app, path, t) = (&app, format!("/api/conversations/{}", id(short)), ctx.admin.clone());
        async move { app.call("PATCH", &path, Some(&t), Some(json!({ "priority": p }))).await }
    };
    let r = priority(Value::Null).await;
    assert!(close(time_of(&r.body["reply_due_at"]), ago(10) + chrono::Duration::minutes(60)), "{:?}", r.body);
    assert_eq!(ring(), 0, "not due now");
    priority(json!("urgent")).await;
    assert_eq!((ring(), ring()), (1, 0), "due again, rung again, once");
    let report = app.call("GET", "/api/reports/overview", Some(&ctx.admin), None).await.body;
    assert_eq!(report["targets_missed"], json!(3), "{report}");

    // Resolving ends a wait; the customer's next message starts one.
    let r = app
        .call(
            "PATCH",
            &format!("/api/conversations/{}", id(long)),
            Some(&ctx.admin),
            Some(json!({"status": "resolved"})),
        )
        .await;
    assert_eq!((r.status, &r.body["waiting_since"]), (200, &Value::Null), "{:?}", r.body);
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": long, "text": "me again"})).await;
    app.processed().await;
    let c = app.call("GET", &format!("/api/conversations/{}", id(long)), Some(&ctx.admin), None).await.body;
    assert!(close(time_of(&c["waiting_since"]), chrono::Utc::now()), "{c}");

    // The business answering from the WhatsApp Business app answers too.
    assert_eq!(app.webhook(&fixture("whatsapp_text.json")).await, 200);
    app.processed().await;
    let wa = by_contact(&conversations(&app, &ctx.admin, "").await, WA_ID)["id"].as_str().expect("id").to_string();
    let path = format!("/api/conversations/{wa}");
    assert!(app.call("GET", &path, Some(&ctx.admin), None).await.body["waiting_since"].is_string());
    assert_eq!(app.webhook(&whatsapp_echo(WA_ID, "wamid.ANSWERED", "Sim!")).await, 200);
    app.processed().await;
    assert_eq!(app.call("GET", &path, Some(&ctx.admin), None).await.body["waiting_since"], Value::Null);

    // Another target moves the waits' due times, each announced to the
    // open inboxes.
    let mut socket = crate::realtime::ws(&app, "", Some(&ctx.admin), None).await.expect("socket");
    let r = settings(json!({"reply_targets": {"none": 120}})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let moved = id(long);
    let frame = loop {
        let wait = std::time::Duration::from_secs(5);
        let f = crate::realtime::until(&mut socket, "conversation.updated", wait).await.expect("the moved wait");
        if f["data"]["id"] == json!(moved) {
            break f;
        }
    };
    let since = time_of(&frame["data"]["waiting_since"]).expect("waiting");
    assert!(close(time_of(&frame["data"]["reply_due_at"]), since + chrono::Duration::minutes(120)), "{frame}");
}

/// A team's view: every member lists and uses it, each as themselves
/// (`assignee: me`); admins alone keep it; it stays when its maker leaves.
#[actix_web::test]
async fn a_team_view_serves_every_member_as_themselves() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (al_member, al) = agent_al(&app, &ctx.admin).await;
    let al_id = al_member["user_id"].as_str().expect("id").to_string();
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let r = app
        .call("PUT", &format!("/api/channels/{page}/members"), Some(&ctx.admin), Some(json!({"user_ids": [al_id]})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    for from in ["7392015648150001", "7392015648150002"] {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": "hello"})).await;
    }
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let id = |from: &str| by_contact(&convs, from)["id"].as_str().expect("id").to_string();
    let (hers, his) = (id("7392015648150001"), id("7392015648150002"));
    let me = app.call("GET", "/api/me", Some(&ctx.admin), None).await.body["user"]["id"].clone();
    for (conv, body) in [(&hers, json!({"assignee_id": me})), (&his, json!({"assignee_id": al_id}))] {
        let r = app.call("PATCH", &format!("/api/conversations/{conv}"), Some(&ctx.admin), Some(body)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let mine = json!({"name": "Mine", "visibility": "team", "filters": {"assignee": "me"}});
    let r = app.call("POST", "/api/views", Some(&al), Some(mine.clone())).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("forbidden")), "admins keep the team's");
    let r = app.call("POST", "/api/views", Some(&ctx.admin), Some(mine.clone())).await;
    assert_eq!((r.status, &r.body["visibility"]), (201, &json!("team")), "{:?}", r.body);
    let team = r.body["id"].as_str().expect("id").to_string();
    let r = app.call("POST", "/api/views", Some(&ctx.admin), Some(mine)).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("view_name_taken")));

    // Al lists it and uses it as himself.
    let listed = app.call("GET", "/api/views", Some(&al), None).await.body["items"].clone();
    assert_eq!(
        listed.as_array().map(|l| l.iter().map(|v| v["id"].clone()).collect::<Vec<_>>()),
        Some(vec![json!(team)])
    );
    let ids = |list: Vec<Value>| list.iter().map(|c| c["id"].as_str().unwrap_or("").to_string()).collect::<Vec<_>>();
    assert_eq!(ids(conversations(&app, &al, &format!("?view={team}")).await), [his.as_str()]);
    assert_eq!(ids(conversations(&app, &ctx.admin, &format!("?view={team}")).await), [hers.as_str()]);
    // He neither changes nor deletes it; a view of his own may share its name.
    let path = format!("/api/views/{team}");
    let r = app.call("PATCH", &path, Some(&al), Some(json!({"name": "Ours", "filters": {}}))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("forbidden")));
    assert_eq!(app.call("DELETE", &path, Some(&al), None).await.status, 403);
    let r = app.call("POST", "/api/views", Some(&al), Some(json!({"name": "Mine", "filters": {"unread": true}}))).await;
    assert_eq!((r.status, &r.body["visibility"]), (201, &json!("personal")), "{:?}", r.body);
    // Visibility stays as made.
    let r = app.call("PATCH", &path, Some(&ctx.admin), Some(json!({"name": "Mine", "visibility": "personal"}))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_visibility")));
    let r = app
        .call("PATCH", &path, Some(&ctx.admin), Some(json!({"name": "Assigned to me", "filters": {"assignee": "me"}})))
        .await;
    assert_eq!((r.status, &r.body["name"]), (200, &json!("Assigned to me")), "{:?}", r.body);

    // Al leaves: his own view goes, the team's stays.
    assert_eq!(app.call("DELETE", &format!("/api/members/{al_id}"), Some(&ctx.admin), None).await.status, 204);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.saved_views"), 1);
    assert_eq!(app.call("DELETE", &path, Some(&ctx.admin), None).await.status, 204);
    // The team's are audited; a member's own are not.
    let audited = app.count(&format!(
        "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE target_type = 'view' AND target_id = '{team}' \
           AND action IN ('view.created', 'view.updated', 'view.deleted')"
    ));
    assert_eq!(audited, 3);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.audit_log WHERE target_type = 'view'"), 3);
}

/// A target may count only the channel's business hours: the wait's due
/// time stops at night and at weekends, and moves with the priority, the
/// targets and the hours.
#[actix_web::test]
async fn a_target_in_business_hours_stops_while_the_channel_is_closed() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let settings = |s: Value| {
        let (app, path, t) = (&app, format!("/api/channels/{page}"), ctx.admin.clone());
        async move { app.call("PATCH", &path, Some(&t), Some(json!({"settings": s}))).await }
    };
    let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).map(|d| d.to_utc()).ok();
    let weekdays: Vec<Value> = ["mon", "tue", "wed", "thu", "fri"]
        .iter()
        .map(|d| json!({"day": d, "open": "09:00", "close": "17:00"}))
        .collect();
    let hours = json!({"timezone": "UTC", "week": weekdays});
    let targets = json!({"none": 60, "urgent": 15, "only_business_hours": true});
    let r = settings(json!({"reply_targets": targets})).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_settings")), "no hours to count");
    let r = settings(json!({"reply_targets": targets, "business_hours": hours})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = settings(json!({"business_hours": null})).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_settings")), "targets count them");

    // Friday 2026-11-27, ten minutes before closing: an hour of opening
    // is ten minutes on Friday and fifty on Monday.
    let from = "7392015648130041";
    let body = json!({"to": PAGE_A, "from": from, "text": "still there?", "at": "2026-11-27T16:50:00Z"});
    app.fake("POST", "/_fake/inbound", body).await;
    app.processed().await;
    let id = by_contact(&conversations(&app, &ctx.admin, "").await, from)["id"].as_str().expect("id").to_string();
    let path = format!("/api/conversations/{id}");
    let due = || {
        let (app, path, t) = (&app, path.clone(), ctx.admin.clone());
        async move { time_of(&app.call("GET", &path, Some(&t), None).await.body["reply_due_at"]) }
    };
    assert_eq!(due().await, at("2026-11-30T09:50:00Z"));
    // Urgent: fifteen minutes, five of them on Monday.
    let r = app.call("PATCH", &path, Some(&ctx.admin), Some(json!({"priority": "urgent"}))).await;
    assert_eq!(time_of(&r.body["reply_due_at"]), at("2026-11-30T09:05:00Z"), "{:?}", r.body);
    assert_eq!(due().await, at("2026-11-30T09:05:00Z"));
    // Saturday mornings open too: due then.
    let mut week = hours["week"].as_array().cloned().unwrap_or_default();
    week.push(json!({"day": "sat", "open": "10:00", "close": "12:00"}));
    let r = settings(json!({"business_hours": {"timezone": "UTC", "week": week}})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(due().await, at("2026-11-28T10:05:00Z"));
    // Minutes of the clock again.
    let r = settings(json!({"reply_targets": {"none": 60, "urgent": 15}})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(due().await, at("2026-11-27T17:05:00Z"));
    let overdue = conversations(&app, &ctx.admin, "?overdue=true").await;
    assert_eq!(overdue.iter().map(|c| c["id"].clone()).collect::<Vec<_>>(), [json!(id)]);
    // No target for its priority: not due, not overdue.
    let r = settings(json!({"reply_targets": {"none": 60}})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(due().await, None);
    assert!(conversations(&app, &ctx.admin, "?overdue=true").await.is_empty());
}

/// A change of a channel's targets or hours waits for the webhook batches
/// that read the old ones (their new waits' due times come from them), and
/// is then applied to what they wrote: held here by a transaction that
/// reads the channel as a batch does.
#[actix_web::test]
async fn a_change_of_targets_waits_for_the_batches_reading_them() {
    use switchboard::db::{with_tenant, TenantScope};
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let tenant = switchboard::ids::TenantId(app.count("SELECT id AS n FROM public.tenants WHERE slug = 'acme'"));
    let channel: i64 = page.parse().expect("numeric id");
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let mut conn = app.db.conn();
    let batch = std::thread::spawn(move || {
        with_tenant(&mut conn, &TenantScope::system(tenant), |tc| {
            switchboard::channels::read_settings(tc, &[channel])?;
            let _ = locked_tx.send(());
            let _ = release_rx.recv_timeout(std::time::Duration::from_secs(20));
            Ok::<_, switchboard::error::AppError>(())
        })
    });
    locked.recv_timeout(std::time::Duration::from_secs(10)).expect("the batch reads the channel");
    let path = format!("/api/channels/{page}");
    let mut change = Box::pin(app.call(
        "PATCH",
        &path,
        Some(&ctx.admin),
        Some(json!({"settings": {"reply_targets": {"none": 30}}})),
    ));
    let early = actix_web::rt::time::timeout(std::time::Duration::from_millis(700), &mut change).await;
    assert!(early.is_err(), "the change went ahead of a batch reading the old targets");
    let _ = release.send(());
    batch.join().expect("thread").expect("batch");
    let r = change.await;
    assert_eq!((r.status, &r.body["settings"]["reply_targets"]["none"]), (200, &json!(30)), "{:?}", r.body);
}

/// A member keeps macros of their own: nobody else sees, changes or runs
/// them; names are unique per owner; visibility stays as made; they go
/// when the member leaves.
#[actix_web::test]
async fn an_agent_keeps_macros_of_their_own() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (al_member, al) = agent_al(&app, &ctx.admin).await;
    let al_id = al_member["user_id"].as_str().expect("id").to_string();
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let r = app
        .call("PUT", &format!("/api/channels/{page}/members"), Some(&ctx.admin), Some(json!({"user_ids": [al_id]})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let make = |t: &str, body: Value| {
        let (app, t) = (&app, t.to_string());
        async move { app.call("POST", "/api/macros", Some(&t), Some(body)).await }
    };
    let mine = |visibility: Option<&str>| {
        let mut m = json!({"name": "Chase the courier", "actions": [{"type": "add_note", "text": "Courier chased"}]});
        if let Some(v) = visibility {
            m["visibility"] = json!(v);
        }
        m
    };
    let r = make(&al, mine(None)).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("forbidden")), "the team's are admins'");
    let r = make(&al, mine(Some("personal"))).await;
    assert_eq!((r.status, &r.body["visibility"]), (201, &json!("personal")), "{:?}", r.body);
    let al_macro = r.body["id"].as_str().expect("id").to_string();
    let r = make(&al, mine(Some("personal"))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("macro_name_taken")));
    let r = make(&al, mine(Some("everyone"))).await;
    assert_eq!(r.status, 422, "{:?}", r.body);
    // The same name is free among the team's and the admin's own.
    let r = make(&ctx.admin, mine(None)).await;
    assert_eq!((r.status, &r.body["visibility"]), (201, &json!("team")), "{:?}", r.body);
    let r = make(&ctx.admin, mine(Some("personal"))).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let listed = |t: &str| {
        let (app, t) = (&app, t.to_string());
        async move {
            let items = app.call("GET", "/api/macros", Some(&t), None).await.body["items"].clone();
            items
                .as_array()
                .expect("items")
                .iter()
                .map(|m| m["visibility"].as_str().unwrap_or("").to_string())
                .collect::<Vec<_>>()
        }
    };
    let (mut al_sees, mut admin_sees) = (listed(&al).await, listed(&ctx.admin).await);
    al_sees.sort();
    admin_sees.sort();
    assert_eq!(al_sees, ["personal", "team"], "his own and the team's");
    assert_eq!(admin_sees, ["personal", "team"], "hers and the team's");

    // Anyone else, an admin too: not found.
    let path = format!("/api/macros/{al_macro}");
    let renamed = json!({"name": "Courier", "actions": [{"type": "add_note", "text": "Courier chased"}]});
    let r = app.call("PATCH", &path, Some(&ctx.admin), Some(renamed.clone())).await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    assert_eq!(app.call("DELETE", &path, Some(&ctx.admin), None).await.status, 404);
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "Where is my parcel?"})).await;
    app.processed().await;
    let conv = by_contact(&conversations(&app, &ctx.admin, "").await, PSID)["id"].as_str().expect("id").to_string();
    let run = format!("/api/conversations/{conv}/macros/{al_macro}");
    assert_eq!(app.call("POST", &run, Some(&ctx.admin), None).await.status, 404);
    let mut team = renamed.clone();
    team["visibility"] = json!("team");
    let r = app.call("PATCH", &path, Some(&al), Some(team)).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_visibility")));
    let r = app.call("PATCH", &path, Some(&al), Some(renamed)).await;
    assert_eq!((r.status, &r.body["name"], &r.body["visibility"]), (200, &json!("Courier"), &json!("personal")));
    let r = app.call("POST", &run, Some(&al), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["messages"][0]["text"], "Courier chased");

    // Al leaves: his macros go, the team's stay.
    assert_eq!(app.call("DELETE", &format!("/api/members/{al_id}"), Some(&ctx.admin), None).await.status, 204);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.macros WHERE owner_user_id IS NOT NULL"), 1);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.macros WHERE owner_user_id IS NULL"), 1);
}

/// A member saves named filters of the list and lists by them, a filter
/// in the query taking the place of the view's; nobody else sees or uses
/// them; filters are checked as the list checks them.
#[actix_web::test]
async fn a_saved_view_lists_as_its_filters_say() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (al_member, al) = agent_al(&app, &ctx.admin).await;
    for from in ["7392015648140001", "7392015648140002", "7392015648140003"] {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": "hello"})).await;
    }
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let id = |from: &str| by_contact(&convs, from)["id"].as_str().expect("id").to_string();
    let (first, second, third) = (id("7392015648140001"), id("7392015648140002"), id("7392015648140003"));
    let me = app.call("GET", "/api/me", Some(&ctx.admin), None).await.body["user"]["id"].clone();
    for (conv, body) in [
        (&first, json!({"priority": "urgent", "assignee_id": me})),
        (&second, json!({"priority": "urgent"})),
        (&third, json!({"assignee_id": me})),
    ] {
        let r = app.call("PATCH", &format!("/api/conversations/{conv}"), Some(&ctx.admin), Some(body)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let view = json!({"name": "Mine, urgent", "filters": {"assignee": "me", "priority": "urgent", "unread": true}});
    let r = app.call("POST", "/api/views", Some(&ctx.admin), Some(view.clone())).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["filters"], json!({"assignee": "me", "priority": "urgent", "unread": "true"}));
    let view_id = r.body["id"].as_str().expect("id").to_string();
    let r = app.call("POST", "/api/views", Some(&ctx.admin), Some(view)).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("view_name_taken")));
    for bad in [json!({"priority": "p1"}), json!({"colour": "red"}), json!({"sort": "waiting", "q": "x"})] {
        let r = app.call("POST", "/api/views", Some(&ctx.admin), Some(json!({"name": "bad", "filters": bad}))).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_filters")), "{bad}");
    }

    let ids = |list: Vec<Value>| list.iter().map(|c| c["id"].as_str().unwrap_or("").to_string()).collect::<Vec<_>>();
    assert_eq!(ids(conversations(&app, &ctx.admin, &format!("?view={view_id}")).await), [first.as_str()]);
    // The query's own filter takes the place of the view's.
    let mut either = ids(conversations(&app, &ctx.admin, &format!("?view={view_id}&assignee=")).await);
    either.sort();
    let mut urgent = vec![first.clone(), second.clone()];
    urgent.sort();
    assert_eq!(either, urgent);
    assert_eq!(ids(conversations(&app, &ctx.admin, &format!("?view={view_id}&priority=none")).await), [third]);
    let r = app.call("GET", &format!("/api/conversations?view={view_id}&priority=p1"), Some(&ctx.admin), None).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some("invalid_query")));

    // Al neither sees nor uses it.
    assert_eq!(app.call("GET", "/api/views", Some(&al), None).await.body["items"], json!([]));
    for (method, path) in [
        ("GET", format!("/api/conversations?view={view_id}")),
        ("DELETE", format!("/api/views/{view_id}")),
        ("GET", "/api/conversations?view=abc".to_string()),
    ] {
        assert_eq!(app.call(method, &path, Some(&al), None).await.status, 404, "{method} {path}");
    }
    let renamed = json!({"name": "Urgent", "filters": {"priority": "urgent"}});
    assert_eq!(app.call("PATCH", &format!("/api/views/{view_id}"), Some(&al), Some(renamed.clone())).await.status, 404);
    let r = app.call("PATCH", &format!("/api/views/{view_id}"), Some(&ctx.admin), Some(renamed)).await;
    assert_eq!((r.status, &r.body["name"]), (200, &json!("Urgent")), "{:?}", r.body);
    assert_eq!(ids(conversations(&app, &ctx.admin, &format!("?view={view_id}")).await).len(), 2);
    assert_eq!(app.call("DELETE", &format!("/api/views/{view_id}"), Some(&ctx.admin), None).await.status, 204);
    assert_eq!(app.call("GET", "/api/views", Some(&ctx.admin), None).await.body["items"], json!([]));
    // Fifty a member; the fifty-first waits for one to go.
    for n in 0..50 {
        let r = app
            .call("POST", "/api/views", Some(&ctx.admin), Some(json!({"name": format!("v{n}"), "filters": {}})))
            .await;
        assert_eq!(r.status, 201, "{n}: {:?}", r.body);
    }
    let r = app.call("POST", "/api/views", Some(&ctx.admin), Some(json!({"name": "one more", "filters": {}}))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("too_many_views")), "{:?}", r.body);
    let deleted = "WITH d AS (DELETE FROM tenant_acme.saved_views RETURNING 1) SELECT count(*) AS n FROM d";
    assert_eq!(app.count(deleted), 50);
    // A member who leaves takes their views along.
    let r =
        app.call("POST", "/api/views", Some(&al), Some(json!({"name": "Open", "filters": {"status": "open"}}))).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let al_id = al_member["user_id"].as_str().expect("id");
    assert_eq!(app.call("DELETE", &format!("/api/members/{al_id}"), Some(&ctx.admin), None).await.status, 204);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.saved_views"), 0);
}

/// Handover: another app (Meta's Page Inbox) takes a customer's thread;
/// agents see it live, the customer's messages still come (on standby), a
/// repeated or older handover event changes nothing, an agent's reply takes
/// the thread back before it is sent, and agents take or pass the thread
/// themselves; bad requests get their reasons.
#[actix_web::test]
async fn a_thread_another_app_holds_is_shown_and_a_reply_takes_it_back() {
    use switchboard::meta::webhook::PAGE_INBOX_APP_ID;
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let from = "7392015648120777";
    let write =
        |text: &'static str| app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": from, "text": text}));
    assert!(write("Olá").await["webhook"]["entry"][0]["messaging"].is_array());
    app.processed().await;
    let conv = by_contact(&conversations(&app, &ctx.admin, "").await, from)["id"].as_str().expect("id").to_string();
    let one = |conv: String| {
        let (app, admin) = (&app, ctx.admin.clone());
        async move { app.call("GET", &format!("/api/conversations/{conv}"), Some(&admin), None).await.body }
    };
    assert!(one(conv.clone()).await["thread_control"].is_null(), "untouched: we answer");
    let updates = || {
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'conversation.updated' AND conversation_id = {conv}"
        ))
    };
    let mut socket = crate::realtime::ws(&app, "", Some(&ctx.admin), None).await.expect("socket");
    assert_eq!(
        crate::realtime::next(&mut socket, std::time::Duration::from_secs(3)).await.expect("hello")["type"],
        "hello"
    );

    // The Page Inbox takes it: shown live.
    let took = app.fake("POST", "/_fake/handover", json!({"to": PAGE_A, "from": from, "action": "take"})).await;
    assert_eq!((took["subscribed"].as_bool(), took["delivered_status"].as_u64()), (Some(true), Some(200)), "{took}");
    app.processed().await;
    let live = loop {
        let wait = std::time::Duration::from_secs(5);
        let update = crate::realtime::until(&mut socket, "conversation.updated", wait).await.expect("live");
        if !update["data"]["thread_control"].is_null() {
            break update;
        }
    };
    let held = &live["data"]["thread_control"];
    assert_eq!(
        (&held["held_by"], &held["app_id"], &held["page_inbox"], &held["requested_by"]),
        (&json!("other"), &json!(PAGE_INBOX_APP_ID), &json!(true), &Value::Null),
        "{live}"
    );
    assert_eq!(one(conv.clone()).await["thread_control"], *held);
    let told = |kind: &str| {
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'notification' \
                AND payload->>'kind' = '{kind}' AND payload->>'conversation_id' = '{conv}'"
        ))
    };
    assert_eq!(told("thread_taken"), 1, "the team is told");
    // The same event again, and an older one saying it came back: nothing.
    let before = updates();
    let again = serde_json::to_vec(&took["webhook"]).expect("body");
    assert_eq!(app.webhook(&again).await, 200);
    let mut older = took["webhook"].clone();
    let event = &mut older["entry"][0]["messaging"][0];
    let earlier = event["timestamp"].as_i64().expect("ms") - 60_000;
    event["timestamp"] = json!(earlier);
    let taken = event.as_object_mut().and_then(|e| e.remove("take_thread_control")).expect("take");
    event["pass_thread_control"] =
        json!({"previous_owner_app_id": taken["new_owner_app_id"], "new_owner_app_id": "1234567890123456"});
    assert_eq!(app.webhook(&serde_json::to_vec(&older).expect("body")).await, 200);
    app.processed().await;
    assert_eq!(updates(), before, "a repeat or older event announces nothing");
    assert_eq!(one(conv.clone()).await["thread_control"]["held_by"], "other");

    // The customer writes on: Meta delivers it on standby, and it is stored.
    let standby = write("Ainda aí? 🙂").await;
    assert!(standby["webhook"]["entry"][0]["standby"].is_array(), "{standby}");
    app.processed().await;
    let texts: Vec<Value> = messages(&app, &ctx.admin, &conv).await.iter().map(|m| m["text"].clone()).collect();
    assert!(texts.contains(&json!("Ainda aí? 🙂")), "{texts:?}");
    assert_eq!(one(conv.clone()).await["thread_control"]["app_id"], PAGE_INBOX_APP_ID, "standby keeps the app known");

    // An agent's reply takes the thread back first.
    let requests_before = app.fake("GET", "/_fake/requests", json!({})).await["items"].as_array().expect("items").len();
    let (status, sent) = reply(&app, &ctx.admin, &conv, "Sim, estou aqui.", "c-1").await;
    assert_eq!(status, 202, "{sent}");
    let id = sent["id"].as_str().expect("id").to_string();
    eventually("the reply sent", || async {
        message_status(&app, &ctx.admin, &conv, &id).await["status"] != "pending"
    })
    .await;
    let status = message_status(&app, &ctx.admin, &conv, &id).await["status"].clone();
    assert!(["sent", "delivered", "read"].contains(&status.as_str().unwrap_or_default()), "{status}");
    let calls: Vec<String> = app.fake("GET", "/_fake/requests", json!({})).await["items"].as_array().expect("items")
        [requests_before..]
        .iter()
        .filter(|r| r["method"] == "POST")
        .map(|r| r["path"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(calls, ["take_thread_control", "messages"]);
    let ours = one(conv.clone()).await["thread_control"].clone();
    assert_eq!((&ours["held_by"], &ours["app_id"]), (&json!("us"), &Value::Null), "{ours}");
    assert!(write("Obrigada").await["webhook"]["entry"][0]["messaging"].is_array(), "the fake agrees");

    // The Page Inbox asks for it; an agent passes it there, then takes it back.
    app.fake(
        "POST",
        "/_fake/handover",
        json!({"to": PAGE_A, "from": from, "action": "request", "metadata": "a human"}),
    )
    .await;
    app.processed().await;
    assert_eq!(one(conv.clone()).await["thread_control"]["requested_by"], PAGE_INBOX_APP_ID);
    assert_eq!(told("thread_requested"), 1);
    let path = format!("/api/conversations/{conv}/thread-control");
    let r = app.call("POST", &path, Some(&ctx.admin), Some(json!({"action": "pass"}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        (
            &r.body["thread_control"]["held_by"],
            &r.body["thread_control"]["page_inbox"],
            &r.body["thread_control"]["requested_by"]
        ),
        (&json!("other"), &json!(true), &Value::Null)
    );
    let log = app.fake("GET", "/_fake/requests", json!({})).await;
    let pass = log["items"].as_array().expect("items").iter().rev().find(|r| r["method"] == "POST").cloned();
    let pass = pass.expect("a call");
    assert!(pass["path"].as_str().is_some_and(|p| p.ends_with(&format!("{PAGE_A}/pass_thread_control"))), "{pass}");
    assert_eq!(
        (&pass["body"]["recipient"]["id"], &pass["body"]["target_app_id"]),
        (&json!(from), &json!(PAGE_INBOX_APP_ID))
    );
    assert!(write("?").await["webhook"]["entry"][0]["standby"].is_array(), "passed at Meta too");
    let listed = |query: &str| {
        let (app, admin, query) = (&app, ctx.admin.clone(), query.to_string());
        async move {
            let list = conversations(app, &admin, &query).await;
            list.iter().map(|c| c["id"].as_str().unwrap_or_default().to_string()).collect::<Vec<_>>()
        }
    };
    assert_eq!(
        listed("?held_elsewhere=true").await,
        std::slice::from_ref(&conv),
        "the list of threads another app holds"
    );
    assert!(!listed("?held_elsewhere=false").await.contains(&conv));
    // A saved view keeps the filter; a value of the wrong type is refused.
    let view = json!({"name": "Held elsewhere", "filters": {"held_elsewhere": true}});
    let r = app.call("POST", "/api/views", Some(&ctx.admin), Some(view)).await;
    assert_eq!((r.status, &r.body["filters"]["held_elsewhere"]), (201, &json!("true")), "{:?}", r.body);
    let held_view = format!("?view={}", r.body["id"].as_str().expect("id"));
    assert_eq!(listed(&held_view).await, std::slice::from_ref(&conv));
    let bad = json!({"name": "Odd", "filters": {"held_elsewhere": "yes"}});
    let r = app.call("POST", "/api/views", Some(&ctx.admin), Some(bad)).await;
    assert!(matches!(r.status, 400 | 422) && r.body["error"]["code"].is_string(), "{:?}", r.body);
    let r = app.call("POST", &path, Some(&ctx.admin), Some(json!({"action": "take"}))).await;
    assert_eq!((r.status, &r.body["thread_control"]["held_by"]), (200, &json!("us")), "{:?}", r.body);
    assert!(listed("?held_elsewhere=true").await.is_empty());
    assert!(listed(&held_view).await.is_empty(), "the view follows the thread");
    assert_eq!(listed("?held_elsewhere=false").await, std::slice::from_ref(&conv));
    let r = app.call("GET", "/api/conversations?held_elsewhere=maybe", Some(&ctx.admin), None).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some("invalid_query")));

    // Meta refuses a take: the thread stays as it was, and Meta's reason is told.
    app.call("POST", &path, Some(&ctx.admin), Some(json!({"action": "pass", "app_id": 4455}))).await;
    app.fake("POST", "/_fake/errors", json!({"path": "/take_thread_control", "error": {"code": 10, "message": "(#10) Application does not have permission for this action"}})).await;
    let r = app.call("POST", &path, Some(&ctx.admin), Some(json!({"action": "take"}))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("meta_permission_denied")), "{:?}", r.body);
    let held = one(conv.clone()).await["thread_control"].clone();
    assert_eq!(
        (&held["held_by"], &held["app_id"], &held["page_inbox"]),
        (&json!("other"), &json!("4455"), &json!(false))
    );
    // …and a reply that cannot take the thread fails with it.
    app.fake("POST", "/_fake/errors", json!({"path": "/take_thread_control", "error": {"code": 10, "message": "(#10) Application does not have permission for this action"}})).await;
    let (_, refused) = reply(&app, &ctx.admin, &conv, "Olá de novo", "c-2").await;
    let id = refused["id"].as_str().expect("id").to_string();
    eventually("the reply failed", || async {
        message_status(&app, &ctx.admin, &conv, &id).await["status"] == "failed"
    })
    .await;
    assert_eq!(message_status(&app, &ctx.admin, &conv, &id).await["error"]["code"], "meta_permission_denied");

    assert_eq!((told("thread_taken"), told("thread_requested")), (1, 1), "agents' own moves tell nobody");

    // Bad requests.
    for (body, status, code) in [
        (json!({"action": "steal"}), 422, "invalid_action"),
        (json!({"action": "pass", "app_id": "12ab"}), 422, "invalid_app_id"),
        (json!({"action": "pass", "app_id": "1234567890123456"}), 422, "invalid_app_id"),
        (json!({"action": "take", "app_id": "42"}), 422, "invalid_app_id"),
        (json!({"action": "pass", "app_id": -1}), 422, "invalid_app_id"),
    ] {
        let r = app.call("POST", &path, Some(&ctx.admin), Some(body.clone())).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (status, Some(code)), "{body}");
    }
    let r = app.call("POST", &path, Some(&ctx.admin), Some(json!({"action": "take", "why": "x"}))).await;
    assert!(r.status == 400 || r.status == 422, "{:?}", r.body);
    assert!(r.body["error"]["code"].is_string());
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Bom dia"})).await;
    app.processed().await;
    let wa = by_contact(&conversations(&app, &ctx.admin, "").await, WA_ID)["id"].as_str().expect("id").to_string();
    let r = app
        .call(
            "POST",
            &format!("/api/conversations/{wa}/thread-control"),
            Some(&ctx.admin),
            Some(json!({"action": "take"})),
        )
        .await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("handover_unsupported")));
    let (_, al) = agent_al(&app, &ctx.admin).await;
    let r = app.call("POST", &path, Some(&al), Some(json!({"action": "take"}))).await;
    assert_eq!(r.status, 404, "not Al's channel");

    // A new customer whose thread the Page Inbox holds from the start: the
    // conversation comes announced as held there, and our greeting stays
    // quiet (it would take the thread from the person answering there),
    // and so does a routing rule's answer.
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let greeting = json!({"settings": {"auto_reply": {"enabled": true, "text": "Olá! Já respondemos."},
        "routing": [{"contains": ["olá"], "reply": "Respondemos já.", "on": "every_message"}]}});
    assert_eq!(app.call("PATCH", &format!("/api/channels/{page}"), Some(&ctx.admin), Some(greeting)).await.status, 200);
    let newcomer = "7392015648120888";
    app.fake("POST", "/_fake/handover", json!({"to": PAGE_A, "from": newcomer, "action": "take"})).await;
    let first = app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": newcomer, "text": "Olá"})).await;
    assert!(first["webhook"]["entry"][0]["standby"].is_array(), "{first}");
    app.processed().await;
    let new_conv = by_contact(&conversations(&app, &ctx.admin, "").await, newcomer).clone();
    assert_eq!(new_conv["thread_control"]["held_by"], "other", "{new_conv}");
    let new_id = new_conv["id"].as_str().expect("id").to_string();
    let first_event = app.count(&format!(
        "SELECT count(*) AS n FROM (SELECT type, payload FROM tenant_acme.events WHERE conversation_id = {new_id} \
            ORDER BY seq LIMIT 1) e WHERE e.type = 'conversation.created' AND e.payload->'thread_control'->>'held_by' = 'other'"
    ));
    assert_eq!(first_event, 1, "announced once, as it is, before anything else of it");
    let said: Vec<Value> = messages(&app, &ctx.admin, &new_id).await.iter().map(|m| m["direction"].clone()).collect();
    assert_eq!(said, [json!("in")], "no greeting, no rule's answer");
    // Nor does a survey at resolving take the thread: it fails, saying why.
    let survey = json!({"settings": {"csat": {"enabled": true, "text": "Como correu? Responda de 1 a 5."}}});
    assert_eq!(app.call("PATCH", &format!("/api/channels/{page}"), Some(&ctx.admin), Some(survey)).await.status, 200);
    let resolve = json!({"status": "resolved"});
    let r = app.call("PATCH", &format!("/api/conversations/{new_id}"), Some(&ctx.admin), Some(resolve)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    eventually("the survey tried", || async {
        messages(&app, &ctx.admin, &new_id).await.iter().any(|m| m["direction"] == "out" && m["status"] == "failed")
    })
    .await;
    let tried =
        messages(&app, &ctx.admin, &new_id).await.into_iter().find(|m| m["direction"] == "out").expect("survey");
    assert_eq!(tried["error"]["code"], "thread_held_elsewhere", "{tried}");
    let takes = app.fake("GET", "/_fake/requests", json!({})).await["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|r| {
            r["path"].as_str().is_some_and(|p| p.ends_with("take_thread_control"))
                && r["body"]["recipient"]["id"] == newcomer
        })
        .count();
    assert_eq!(takes, 0, "never taken for an automatic message");
    let off = json!({"settings": {"csat": {"enabled": false, "text": "Como correu? Responda de 1 a 5."}}});
    assert_eq!(app.call("PATCH", &format!("/api/channels/{page}"), Some(&ctx.admin), Some(off)).await.status, 200);
    // The first customer, whose thread is ours, is greeted when they come back.
    let r = app
        .call("PATCH", &format!("/api/conversations/{conv}"), Some(&ctx.admin), Some(json!({"status": "resolved"})))
        .await;
    assert_eq!(r.status, 200);
    app.call("POST", &path, Some(&ctx.admin), Some(json!({"action": "take"}))).await;
    write("Voltei").await;
    app.processed().await;
    let greeted = messages(&app, &ctx.admin, &conv).await.iter().any(|m| m["text"] == "Olá! Já respondemos.");
    assert!(greeted, "a thread of ours is greeted");
}

/// The inbox's badges (`GET /api/conversations/counts`): all, mine and no
/// one's, for the list's filters or a saved view, of what the caller may
/// see; not with a search.
#[actix_web::test]
async fn the_inbox_counts_what_its_lists_hold() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (al, al_token) = agent_al(&app, &ctx.admin).await;
    let wa_channel = channel_id(&app, &ctx.admin, PHONE).await;
    let listed = json!({"user_ids": [al["user_id"]]});
    let r = app.call("PUT", &format!("/api/channels/{wa_channel}/members"), Some(&ctx.admin), Some(listed)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    const QUIET: &str = "7392015648121999";
    for (to, from) in [(PAGE_A, PSID), (PHONE, WA_ID), (PAGE_A, QUIET)] {
        app.fake("POST", "/_fake/inbound", json!({"to": to, "from": from, "text": "Olá, ¿hay alguien? 🙂"})).await;
    }
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let conv_of = |who: &str| by_contact(&convs, who)["id"].as_str().expect("id").to_string();
    let me = app.call("GET", "/api/me", Some(&ctx.admin), None).await.body["user"]["id"].clone();
    for (conv, assignee) in [(conv_of(PSID), me), (conv_of(WA_ID), al["user_id"].clone())] {
        let r = app
            .call(
                "PATCH",
                &format!("/api/conversations/{conv}"),
                Some(&ctx.admin),
                Some(json!({"assignee_id": assignee})),
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let counts = |t: String, query: String| {
        let app = &app;
        async move {
            let r = app.call("GET", &format!("/api/conversations/counts{query}"), Some(&t), None).await;
            assert_eq!(r.status, 200, "{query}: {:?}", r.body);
            (r.body["all"].as_i64(), r.body["mine"].as_i64(), r.body["unassigned"].as_i64())
        }
    };
    let (admin, agent) = (ctx.admin.clone(), al_token.clone());
    assert_eq!(counts(admin.clone(), String::new()).await, (Some(3), Some(1), Some(1)));
    assert_eq!(counts(admin.clone(), "?assignee=none".into()).await, (Some(3), Some(1), Some(1)), "assignee aside");
    assert_eq!(counts(agent.clone(), String::new()).await, (Some(1), Some(1), Some(0)), "what Al may see");
    assert_eq!(counts(admin.clone(), format!("?channel_id={wa_channel}")).await, (Some(1), Some(0), Some(0)));
    assert_eq!(counts(admin.clone(), "?status=resolved".into()).await, (Some(0), Some(0), Some(0)));
    let view = json!({"name": "WhatsApp", "filters": {"channel_id": wa_channel}});
    let r = app.call("POST", "/api/views", Some(&ctx.admin), Some(view)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let view = r.body["id"].as_str().expect("id").to_string();
    assert_eq!(counts(admin.clone(), format!("?view={view}")).await, (Some(1), Some(0), Some(0)));
    for (query, status, code) in [
        ("?q=ol%C3%A1", 400, "invalid_query"),
        ("?status=closed", 400, "invalid_status"),
        ("?unread=maybe", 400, "invalid_query"),
        ("?view=999999", 404, "not_found"),
    ] {
        let r = app.call("GET", &format!("/api/conversations/counts{query}"), Some(&admin), None).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (status, Some(code)), "{query}");
    }
    assert_eq!(app.call("GET", "/api/conversations/counts", None, None).await.status, 401);
}

/// A resolved conversation keeps its assignee (for the reports); when the
/// customer writes again it goes back to them only if they may still
/// answer it. Al, taken off the Page's list since, is taken off it
/// (audited `by: "reopened"`); Bo, still listed, keeps his.
#[actix_web::test]
async fn a_reopened_conversation_leaves_an_assignee_who_may_no_longer_answer_it() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (al, bo) = agents_al_and_bo(&app, &ctx.admin).await;
    let (al, bo) = (al.as_str(), bo.as_str());
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let list = |ids: Value| {
        let (app, admin, path) = (&app, ctx.admin.clone(), format!("/api/channels/{page}/members"));
        async move {
            let r = app.call("PUT", &path, Some(&admin), Some(json!({"user_ids": ids}))).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
    };
    list(json!([al, bo])).await;
    let customers = [("6670000000000001", al), ("6670000000000002", bo)];
    let mut convs = Vec::new();
    for (customer, who) in customers {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": customer, "text": "Olá 👋"})).await;
        app.processed().await;
        let conv =
            by_contact(&conversations(&app, &ctx.admin, "").await, customer)["id"].as_str().expect("id").to_string();
        let done = json!({"assignee_id": who, "status": "resolved"});
        let r = app.call("PATCH", &format!("/api/conversations/{conv}"), Some(&ctx.admin), Some(done)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        convs.push(conv);
    }
    list(json!([bo])).await;
    let shown = app.call("GET", &format!("/api/conversations/{}", convs[0]), Some(&ctx.admin), None).await;
    assert_eq!(shown.body["assignee_id"], json!(al), "kept while resolved");
    for (customer, _) in customers {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": customer, "text": "Outra coisa"})).await;
        app.processed().await;
    }
    let shown = app.call("GET", &format!("/api/conversations/{}", convs[0]), Some(&ctx.admin), None).await;
    assert_eq!((shown.body["status"].as_str(), &shown.body["assignee_id"]), (Some("open"), &Value::Null));
    let shown = app.call("GET", &format!("/api/conversations/{}", convs[1]), Some(&ctx.admin), None).await;
    assert_eq!((shown.body["status"].as_str(), &shown.body["assignee_id"]), (Some("open"), &json!(bo)));
    let audited = format!(
        "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'conversation.assigned' \
          AND target_id = '{}' AND details->>'by' = 'reopened' AND details->>'from' = '{al}'",
        convs[0]
    );
    assert_eq!(app.count(&audited), 1);

    // Reopened by hand, the same: Al's (resolved with him, as before he
    // left the list) is taken off him; Bo's stays his.
    app.exec(&format!(
        "UPDATE tenant_acme.conversations SET status = 'resolved', assignee_id = {al} WHERE id = {}",
        convs[0]
    ));
    for (conv, kept) in [(&convs[0], Value::Null), (&convs[1], json!(bo))] {
        let path = format!("/api/conversations/{conv}");
        let r = app.call("PATCH", &path, Some(&ctx.admin), Some(json!({"status": "resolved"}))).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let r = app.call("PATCH", &path, Some(&ctx.admin), Some(json!({"status": "pending"}))).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!((r.body["status"].as_str(), &r.body["assignee_id"]), (Some("pending"), &kept));
    }
    assert_eq!(app.count(&audited), 2, "audited as a customer's reopening is");
}

/// An assignment goes by what it found of its assignee before it took the
/// conversation: Al, not on the Page's list then, is refused (422) even
/// if he is listed while it waits for the conversation. Looked at again
/// once the conversation was held, it waited for a list change under way
/// (here taking Al off again) that waited for the same conversation: a
/// deadlock (503).
#[actix_web::test]
async fn an_assignment_goes_by_its_assignee_as_found_before_it_took_the_conversation() {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (al, _) = agent_al(&app, &ctx.admin).await;
    let al = al["user_id"].as_str().expect("id").to_string();
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "6660000000000001", "text": "Olá, ninguém?"}))
        .await;
    app.processed().await;
    let conv = by_contact(&conversations(&app, &ctx.admin, "").await, "6660000000000001")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let url = app.db.url.clone();
    let (begun_tx, begun) = std::sync::mpsc::channel();
    let (conv_t, al_t) = (conv.clone(), al.clone());
    let others = std::thread::spawn(move || {
        let connect = || diesel::PgConnection::establish(&url).expect("connect");
        let (mut bulk, mut listing, mut watcher) = (connect(), connect(), connect());
        let waiting = crate::common::a_lock_waited_for;
        let lock = format!("SELECT id FROM tenant_acme.conversations WHERE id = {conv_t} FOR NO KEY UPDATE");
        bulk.batch_execute(&format!("BEGIN; {lock}")).expect("held");
        begun_tx.send(()).expect("told");
        // The assignment, having found Al unlisted, waits for the
        // conversation; Al is listed meanwhile, and a list change taking
        // him off again begins.
        assert!(waiting(&mut watcher, std::time::Duration::from_secs(5)), "the assignment waited");
        let listed = format!("INSERT INTO tenant_acme.channel_members (channel_id, user_id) VALUES ({page}, {al_t})");
        watcher.batch_execute(&listed).expect("listed");
        let unlist = format!("BEGIN; DELETE FROM tenant_acme.channel_members WHERE user_id = {al_t}");
        listing.batch_execute(&unlist).expect("unlisting");
        bulk.batch_execute("COMMIT").expect("bulk done");
        // The list change then takes the conversation to hand it back.
        waiting(&mut watcher, std::time::Duration::from_secs(1));
        listing.batch_execute(&format!("{lock}; COMMIT")).map_err(|e| e.to_string())
    });
    begun.recv().expect("begun");
    let r = app
        .call("PATCH", &format!("/api/conversations/{conv}"), Some(&ctx.admin), Some(json!({"assignee_id": al})))
        .await;
    let went = others.join().expect("the others' thread");
    assert_eq!(went, Ok(()), "the list change went through");
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_assignee")), "{:?}", r.body);
}

/// An assignment made while its assignee is being removed, or taken off
/// the channel's list, waits for that change and is refused (422
/// `invalid_assignee`): no conversation is left with someone who may no
/// longer answer it (the change's hand-back had looked before the
/// assignment was written). So is an agent starting a WhatsApp
/// conversation, theirs, as they are being removed (401
/// `membership_revoked`).
#[actix_web::test]
async fn an_assignment_during_the_assignees_removal_is_refused() {
    use crate::common::transaction_held_until_waited;
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (al_member, _al) = agent_al(&app, &ctx.admin).await;
    let al_id = al_member["user_id"].as_str().expect("id").to_string();
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let list = || {
        let (app, admin, path) = (&app, ctx.admin.clone(), format!("/api/channels/{page}/members"));
        let al_id = al_id.clone();
        async move {
            let r = app.call("PUT", &path, Some(&admin), Some(json!({"user_ids": [al_id]}))).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
    };
    list().await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "6500000000000001", "text": "¿Hola?"})).await;
    app.processed().await;
    let conv = by_contact(&conversations(&app, &ctx.admin, "").await, "6500000000000001")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let path = format!("/api/conversations/{conv}");
    let tenant = app.count("SELECT id AS n FROM public.tenants WHERE slug = 'acme'");

    let changes = [
        (format!("BEGIN; DELETE FROM tenant_acme.channel_members WHERE user_id = {al_id}"), "cannot see this channel"),
        (
            format!("BEGIN; DELETE FROM public.memberships WHERE user_id = {al_id} AND tenant_id = {tenant}"),
            "must be a member",
        ),
    ];
    for (change, said) in changes.clone() {
        let (begun, held) = transaction_held_until_waited(&app.db.url, change, None);
        begun.recv().expect("begun");
        let r = app.call("PATCH", &path, Some(&ctx.admin), Some(json!({"assignee_id": al_id}))).await;
        let (waited, went) = held.join().expect("the change's thread");
        assert_eq!(went, Ok(()));
        assert!(waited, "the assignment waited for the change");
        assert_eq!(r.status, 422, "{:?}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_assignee");
        assert!(r.body["error"]["message"].as_str().is_some_and(|m| m.contains(said)), "{:?}", r.body);
        let shown = app.call("GET", &path, Some(&ctx.admin), None).await;
        assert_eq!(shown.body["assignee_id"], Value::Null);
        if said == "cannot see this channel" {
            list().await;
        }
    }

    // Al, added back and listed on the number, starts a conversation as
    // his removal goes.
    let al = json!({"email": "al@acme.test", "role": "agent"});
    assert_eq!(app.call("POST", "/api/members", Some(&ctx.admin), Some(al)).await.status, 201);
    let al = token(&app.login("al@acme.test", "al-password-1", "acme").await, "access_token");
    let number = channel_id(&app, &ctx.admin, PHONE).await;
    let r = app
        .call("PUT", &format!("/api/channels/{number}/members"), Some(&ctx.admin), Some(json!({"user_ids": [al_id]})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let removal = format!("BEGIN; DELETE FROM public.memberships WHERE user_id = {al_id} AND tenant_id = {tenant}");
    let (begun, held) = transaction_held_until_waited(&app.db.url, removal, None);
    begun.recv().expect("begun");
    let start = json!({"channel_id": number, "phone_number": "+351 913 000 222",
        "template": {"name": "hello_world", "language": "en_US"}, "client_id": "start-1"});
    let r = app.call("POST", "/api/conversations", Some(&al), Some(start)).await;
    let (waited, went) = held.join().expect("the removal's thread");
    assert_eq!(went, Ok(()));
    assert!(waited, "the start waited for the removal");
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (401, Some("membership_revoked")), "{:?}", r.body);
    assert_eq!(
        app.count(&format!("SELECT count(*) AS n FROM tenant_acme.conversations WHERE assignee_id = {al_id}")),
        0
    );

    // Al, back again, answers the conversation; the change then takes his
    // conversations' locks, as its hand-back does (`release`). The
    // assignment, waiting for the change, must not hold the conversation
    // meanwhile: the two would wait on each other until PostgreSQL ended
    // one of them.
    // One by PATCH, one by a bulk change, one by a macro.
    let give_al = json!({"name": "To Al", "actions": [{"type": "assign", "assignee_id": al_id}]});
    let r = app.call("POST", "/api/macros", Some(&ctx.admin), Some(give_al)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let run = format!("{path}/macros/{}", r.body["id"].as_str().expect("id"));
    let ways = [
        ("PATCH", path.clone(), json!({"assignee_id": al_id, "priority": "high"})),
        ("POST", "/api/conversations/bulk".to_string(), json!({"ids": [conv], "assignee_id": al_id})),
        ("POST", run, json!({})),
    ];
    for (method, way, body) in ways {
        for (change, said) in changes.clone() {
            let member = app.count(&format!(
                "SELECT count(*) AS n FROM public.memberships WHERE user_id = {al_id} AND tenant_id = {tenant}"
            ));
            if member == 0 {
                let al = json!({"email": "al@acme.test", "role": "agent"});
                assert_eq!(app.call("POST", "/api/members", Some(&ctx.admin), Some(al)).await.status, 201);
            }
            list().await;
            let r = app.call("PATCH", &path, Some(&ctx.admin), Some(json!({"assignee_id": al_id}))).await;
            assert_eq!((r.status, r.body["assignee_id"].as_str()), (200, Some(al_id.as_str())), "{:?}", r.body);
            let hand_back = format!("SELECT id FROM tenant_acme.conversations WHERE assignee_id = {al_id} FOR UPDATE");
            let (begun, held) = transaction_held_until_waited(&app.db.url, change, Some(hand_back));
            begun.recv().expect("begun");
            let r = app.call(method, &way, Some(&ctx.admin), Some(body.clone())).await;
            let (waited, went) = held.join().expect("the change's thread");
            assert_eq!(went, Ok(()), "{way}: the change went through");
            assert!(waited, "{way}: the assignment waited for the change");
            assert_eq!(r.status, 422, "{way}: {:?}", r.body);
            assert!(r.body["error"]["message"].as_str().is_some_and(|m| m.contains(said)), "{way}: {:?}", r.body);
        }
    }
}

/// The sender records a send Meta took as the customer is erased (here by
/// hand: the conversation, then its message). It takes the conversation
/// before the message, as the erasure does, so it waits for the erasure,
/// then finds the message gone and records nothing, the job done. (Taking
/// the message first, it went on to write what hangs off the
/// conversation, and in a chaos run deadlocked with an erasure.)
#[actix_web::test]
async fn a_send_recorded_and_its_customers_erasure_at_once_take_turns() {
    use crate::common::transaction_held_until_waited;
    let app = crate::common::spawn_app_without_workers().await;
    let ctx = acme(&app).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "6660000000000003", "text": "Olá?"})).await;
    process_now(&app);
    let conv = by_contact(&conversations(&app, &ctx.admin, "").await, "6660000000000003")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let (status, body) = reply(&app, &ctx.admin, &conv, "Olá! Em que posso ajudar?", "erased-as-sent").await;
    assert_eq!(status, 202, "{body}");
    let message = body["id"].as_str().expect("id").to_string();
    let begin = format!("BEGIN; SELECT id FROM tenant_acme.conversations WHERE id = {conv} FOR UPDATE");
    let then = format!("DELETE FROM tenant_acme.messages WHERE id = {message}");
    let (begun, held) = transaction_held_until_waited(&app.db.url, begin, Some(then));
    begun.recv().expect("begun");
    let claimed = switchboard::inbox::sender::run_once(&app.state, &switchboard::inbox::sender::Pacer::default())
        .await
        .expect("the sender's pass");
    assert_eq!(claimed, 1);
    let (waited, went) = held.join().expect("the erasure's thread");
    assert_eq!(went, Ok(()), "the erasure went through");
    assert!(waited, "the sender waited for the erasure");
    let left = format!("SELECT count(*) AS n FROM tenant_acme.messages WHERE id = {message}");
    assert_eq!(app.count(&left), 0);
    let pending =
        format!("SELECT count(*) AS n FROM public.send_queue WHERE message_id = {message} AND status = 'pending'");
    assert_eq!(app.count(&pending), 0, "nothing to send again");
}

/// Al reads a conversation of his as he is removed (here by hand: the
/// conversation, then his notifications). The read takes the conversation
/// before his notifications of it, as the removal does, so one waits for
/// the other; it took his notifications first: a deadlock (503).
#[actix_web::test]
async fn a_read_and_the_readers_removal_at_once_take_turns() {
    use crate::common::transaction_held_until_waited;
    let app = spawn_app().await;
    let (admin, al_id, al, _) = crate::teams::al_on_page_a(&app).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "6680000000000001", "text": "Leu? 👀"})).await;
    app.processed().await;
    let conv =
        by_contact(&conversations(&app, &admin, "").await, "6680000000000001")["id"].as_str().expect("id").to_string();
    let assign = json!({"assignee_id": al_id});
    let r = app.call("PATCH", &format!("/api/conversations/{conv}"), Some(&admin), Some(assign)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let notified = format!("SELECT count(*) AS n FROM tenant_acme.notifications WHERE user_id = {al_id}");
    assert!(app.count(&notified) > 0, "Al was told of it");
    let begin = format!("BEGIN; SELECT id FROM tenant_acme.conversations WHERE id = {conv} FOR NO KEY UPDATE");
    let then = format!("DELETE FROM tenant_acme.notifications WHERE user_id = {al_id}");
    let (begun, held) = transaction_held_until_waited(&app.db.url, begin, Some(then));
    begun.recv().expect("begun");
    let r = app.call("POST", &format!("/api/conversations/{conv}/read"), Some(&al), None).await;
    let (waited, went) = held.join().expect("the removal's thread");
    assert_eq!(went, Ok(()), "the removal went through");
    assert!(waited, "the read waited for it");
    assert_eq!(r.status, 204, "{:?}", r.body);
}

/// A change of a channel's list handing back conversations of two members
/// takes them all at once, in id order, as a bulk change does; and it
/// touches only the rows of those who leave or join.
#[actix_web::test]
async fn a_list_change_handing_back_two_members_conversations_and_a_bulk_change_take_turns() {
    // Al answers the newer conversation, Bo the older; both leave the
    // Page's list while a bulk change holds the older and then takes the
    // newer. The list change takes both members' conversations at once,
    // in id order; it took Al's, then Bo's: a deadlock (503).
    use crate::common::transaction_held_until_waited;
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (al, bo) = agents_al_and_bo(&app, &ctx.admin).await;
    let (al, bo) = (al.as_str(), bo.as_str());
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let listed = json!({"user_ids": [al, bo]});
    let r = app.call("PUT", &format!("/api/channels/{page}/members"), Some(&ctx.admin), Some(listed)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let mut convs = Vec::new();
    for customer in ["6650000000000001", "6650000000000002"] {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": customer, "text": "Olá 🙂"})).await;
        app.processed().await;
        let found = by_contact(&conversations(&app, &ctx.admin, "").await, customer)["id"].clone();
        convs.push(found.as_str().expect("id").parse::<i64>().expect("id"));
    }
    convs.sort_unstable();
    for (conv, who) in [(convs[0], bo), (convs[1], al)] {
        let r = app
            .call("PATCH", &format!("/api/conversations/{conv}"), Some(&ctx.admin), Some(json!({"assignee_id": who})))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let lock = |id: i64| format!("SELECT id FROM tenant_acme.conversations WHERE id = {id} FOR NO KEY UPDATE");
    let (begun, held) =
        transaction_held_until_waited(&app.db.url, format!("BEGIN; {}", lock(convs[0])), Some(lock(convs[1])));
    begun.recv().expect("begun");
    let none = json!({"user_ids": []});
    let r = app.call("PUT", &format!("/api/channels/{page}/members"), Some(&ctx.admin), Some(none)).await;
    let (waited, went) = held.join().expect("the bulk change's thread");
    assert_eq!(went, Ok(()), "the bulk change went through");
    assert!(waited, "the list change waited for it");
    assert_eq!(r.status, 200, "{:?}", r.body);
    let kept = format!("SELECT count(*) AS n FROM tenant_acme.conversations WHERE assignee_id IN ({al}, {bo})");
    assert_eq!(app.count(&kept), 0, "both handed back");

    // Al leaves again while Bo, who stays, is being assigned (the
    // assignment holds his row of the list): the change touches only
    // Al's row, so neither waits, and the assignment does not find Bo
    // gone from a list he is still on.
    let listed = json!({"user_ids": [al, bo]});
    let r = app.call("PUT", &format!("/api/channels/{page}/members"), Some(&ctx.admin), Some(listed)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let assigning = format!(
        "BEGIN; SELECT user_id FROM tenant_acme.channel_members WHERE channel_id = {page} AND user_id = {bo} FOR SHARE"
    );
    let (begun, held) = transaction_held_until_waited(&app.db.url, assigning, None);
    begun.recv().expect("begun");
    let r = app
        .call("PUT", &format!("/api/channels/{page}/members"), Some(&ctx.admin), Some(json!({"user_ids": [bo]})))
        .await;
    let (waited, went) = held.join().expect("the assignment's thread");
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(went, Ok(()));
    assert!(!waited, "the list change did not wait for Bo's assignment");
    assert_eq!(r.body["member_ids"], json!([bo]));
}

/// A member removed as the channel's list changes, as a customer of theirs
/// is erased, or as a bulk change takes conversations of theirs: each
/// takes the channels' lists, then the conversations (all at once, in id
/// order), then what hangs off them (the member's notifications), so one
/// waits for the other. Taken in another order, each held what the other
/// waited for: a deadlock (503).
#[actix_web::test]
async fn a_members_removal_and_a_list_change_or_an_erasure_at_once_take_turns() {
    use crate::common::transaction_held_until_waited;
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (al_member, _al) = agent_al(&app, &ctx.admin).await;
    let al_id = al_member["user_id"].as_str().expect("id").to_string();
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "6640000000000001", "text": "Esqueçam-me"})).await;
    app.processed().await;
    let shown = conversations(&app, &ctx.admin, "").await[0].clone();
    let (conv, contact) = (shown["id"].as_str().expect("id"), shown["contact"]["id"].as_str().expect("contact"));
    let notified = format!("SELECT count(*) AS n FROM tenant_acme.notifications WHERE user_id = {al_id}");
    let changes = [
        (
            format!("BEGIN; DELETE FROM tenant_acme.channel_members WHERE channel_id = {page}"),
            format!("SELECT id FROM tenant_acme.conversations WHERE assignee_id = {al_id} FOR UPDATE"),
        ),
        (
            format!("BEGIN; SELECT id FROM tenant_acme.conversations WHERE id = {conv} FOR UPDATE"),
            format!("DELETE FROM tenant_acme.contacts WHERE id = {contact}"),
        ),
    ];
    for (n, (change, then)) in changes.into_iter().enumerate() {
        if n > 0 {
            let al = json!({"email": "al@acme.test", "role": "agent"});
            assert_eq!(app.call("POST", "/api/members", Some(&ctx.admin), Some(al)).await.status, 201);
        }
        let listed = json!({"user_ids": [al_id]});
        let r = app.call("PUT", &format!("/api/channels/{page}/members"), Some(&ctx.admin), Some(listed)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let assign = json!({"assignee_id": al_id});
        let r = app.call("PATCH", &format!("/api/conversations/{conv}"), Some(&ctx.admin), Some(assign)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert!(app.count(&notified) > 0, "Al was told of it");

        let (begun, held) = transaction_held_until_waited(&app.db.url, change, Some(then));
        begun.recv().expect("begun");
        let r = app.call("DELETE", &format!("/api/members/{al_id}"), Some(&ctx.admin), None).await;
        let (waited, went) = held.join().expect("the change's thread");
        assert_eq!(went, Ok(()), "the change went through");
        assert!(waited, "the removal waited for the change");
        assert_eq!(r.status, 204, "{:?}", r.body);
        assert_eq!(app.count(&notified), 0);
    }

    // A bulk change taking, in id order, a conversation in which Al has a
    // message scheduled, then a newer one he answers: the removal, which
    // cancels the one and hands back the other, takes both in that order.
    let al = json!({"email": "al@acme.test", "role": "agent"});
    assert_eq!(app.call("POST", "/api/members", Some(&ctx.admin), Some(al)).await.status, 201);
    let listed = json!({"user_ids": [al_id]});
    let r = app.call("PUT", &format!("/api/channels/{page}/members"), Some(&ctx.admin), Some(listed)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let al = token(&app.login("al@acme.test", "al-password-1", "acme").await, "access_token");
    let mut convs = Vec::new();
    for customer in ["6640000000000002", "6640000000000003"] {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": customer, "text": "Olá"})).await;
        app.processed().await;
        let found = by_contact(&conversations(&app, &ctx.admin, "").await, customer)["id"].clone();
        convs.push(found.as_str().expect("id").to_string());
    }
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let scheduled = json!({"text": "Até já", "send_at": later});
    let r = app
        .call("POST", &format!("/api/conversations/{}/scheduled-messages", convs[0]), Some(&al), Some(scheduled))
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let assign = json!({"assignee_id": al_id});
    let r = app.call("PATCH", &format!("/api/conversations/{}", convs[1]), Some(&ctx.admin), Some(assign)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let lock = |id: &str| format!("SELECT id FROM tenant_acme.conversations WHERE id = {id} FOR UPDATE");
    let (begun, held) =
        transaction_held_until_waited(&app.db.url, format!("BEGIN; {}", lock(&convs[0])), Some(lock(&convs[1])));
    begun.recv().expect("begun");
    let r = app.call("DELETE", &format!("/api/members/{al_id}"), Some(&ctx.admin), None).await;
    let (waited, went) = held.join().expect("the bulk change's thread");
    assert_eq!(went, Ok(()), "the bulk change went through");
    assert!(waited, "the removal waited for the bulk change");
    assert_eq!(r.status, 204, "{:?}", r.body);
    let cancelled = "SELECT count(*) AS n FROM tenant_acme.scheduled_messages WHERE status = 'cancelled'";
    assert_eq!(app.count(cancelled), 1);
}

/// Someone who leaves the tenant, or an agent who no longer sees a
/// channel, hands their unresolved conversations back to the queue (each
/// announced and audited); resolved ones keep them for the reports, and an
/// admin taken off a channel's list still sees it and keeps theirs.
#[actix_web::test]
async fn conversations_of_someone_who_leaves_go_back_to_the_queue() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (al_member, _al) = agent_al(&app, &ctx.admin).await;
    let al_id = al_member["user_id"].as_str().expect("id").to_string();
    let ann_id =
        app.call("GET", "/api/me", Some(&ctx.admin), None).await.body["user"]["id"].as_str().expect("id").to_string();
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let list = |ids: Value| {
        let app = &app;
        let (admin, page) = (ctx.admin.clone(), page.clone());
        async move {
            let path = format!("/api/channels/{page}/members");
            let r = app.call("PUT", &path, Some(&admin), Some(json!({"user_ids": ids}))).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
    };
    list(json!([al_id])).await;
    let customers = ["6200000000000001", "6200000000000002", "6200000000000003"];
    for psid in customers {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": psid, "text": "Olá, alguém aí?"})).await;
    }
    app.processed().await;
    let all = conversations(&app, &ctx.admin, "").await;
    let conv: Vec<String> =
        customers.iter().map(|p| by_contact(&all, p)["id"].as_str().expect("id").to_string()).collect();
    let patch = |c: &str, change: Value| {
        let app = &app;
        let (admin, path) = (ctx.admin.clone(), format!("/api/conversations/{c}"));
        async move {
            let r = app.call("PATCH", &path, Some(&admin), Some(change)).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
    };
    let assignee = |c: &str| {
        let app = &app;
        let (admin, path) = (ctx.admin.clone(), format!("/api/conversations/{c}"));
        async move { app.call("GET", &path, Some(&admin), None).await.body["assignee_id"].clone() }
    };
    for c in &conv {
        patch(c, json!({"assignee_id": al_id})).await;
    }
    patch(&conv[2], json!({"status": "resolved"})).await;
    let mut socket = crate::realtime::ws(&app, "", Some(&ctx.admin), None).await.expect("socket");

    // Al no longer on the channel: the two open ones go back to the queue.
    list(json!([])).await;
    assert_eq!((assignee(&conv[0]).await, assignee(&conv[1]).await), (Value::Null, Value::Null));
    assert_eq!(assignee(&conv[2]).await, json!(al_id), "a resolved one keeps its assignee");
    let told = crate::realtime::until(&mut socket, "conversation.updated", std::time::Duration::from_secs(10)).await;
    assert_eq!(told.expect("announced")["data"]["assignee_id"], Value::Null);
    let released = "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'conversation.assigned' \
                    AND details->>'to' IS NULL AND details->>'by' = ";
    assert_eq!(app.count(&format!("{released}'channel_left'")), 2);
    // The same list again changes nothing.
    list(json!([])).await;
    assert_eq!(app.count(&format!("{released}'channel_left'")), 2);

    // An admin taken off the list still sees the channel, and keeps theirs.
    list(json!([al_id, ann_id])).await;
    patch(&conv[1], json!({"assignee_id": ann_id})).await;
    patch(&conv[0], json!({"assignee_id": al_id})).await;
    list(json!([al_id])).await;
    assert_eq!(assignee(&conv[1]).await, json!(ann_id));

    // Al leaves the tenant: theirs go back too.
    assert_eq!(app.call("DELETE", &format!("/api/members/{al_id}"), Some(&ctx.admin), None).await.status, 204);
    assert_eq!(assignee(&conv[0]).await, Value::Null);
    assert_eq!(assignee(&conv[2]).await, json!(al_id));
    assert_eq!(app.count(&format!("{released}'member_removed'")), 1);

    // An admin who becomes an agent keeps what the channels they are
    // listed on hold; a viewer answers nothing, and keeps none.
    let add = |email: &str, role: &str| {
        let app = &app;
        let admin = ctx.admin.clone();
        let member = json!({"email": email, "role": role, "password": "member-password-1"});
        async move {
            let r = app.call("POST", "/api/members", Some(&admin), Some(member)).await;
            assert_eq!(r.status, 201, "{:?}", r.body);
            r.body["user_id"].as_str().expect("id").to_string()
        }
    };
    let (ed_id, vi_id) = (add("ed@acme.test", "admin").await, add("vi@acme.test", "agent").await);
    list(json!([vi_id])).await;
    patch(&conv[0], json!({"assignee_id": ed_id})).await;
    patch(&conv[1], json!({"assignee_id": vi_id})).await;
    let role = |user: &str, role: &str| {
        let app = &app;
        let (admin, path) = (ctx.admin.clone(), format!("/api/members/{user}"));
        let body = json!({"role": role});
        async move { assert_eq!(app.call("PATCH", &path, Some(&admin), Some(body)).await.status, 200) }
    };
    role(&ed_id, "agent").await;
    assert_eq!((assignee(&conv[0]).await, assignee(&conv[1]).await), (Value::Null, json!(vi_id)));
    role(&vi_id, "viewer").await;
    assert_eq!(assignee(&conv[1]).await, Value::Null);
    assert_eq!(app.count(&format!("{released}'role_changed'")), 2);

    // An operator's `user create` that makes an admin a viewer hands back
    // theirs as well, audited with no actor.
    role(&ed_id, "admin").await;
    patch(&conv[0], json!({"assignee_id": ed_id})).await;
    let drained = crate::realtime::until(&mut socket, "none such", std::time::Duration::from_millis(800)).await;
    assert!(drained.is_none(), "{drained:?}");
    let mut cli =
        app.db.command(&["user", "create", "--email", "ed@acme.test", "--tenant", "acme", "--role", "viewer"]);
    let cli = cli.output().expect("run switchboard");
    assert!(cli.status.success(), "{cli:?}");
    assert_eq!(assignee(&conv[0]).await, Value::Null);
    let told = crate::realtime::until(&mut socket, "conversation.updated", std::time::Duration::from_secs(10)).await;
    assert_eq!(told.expect("announced")["data"]["id"], json!(conv[0]));
    let by_nobody = format!("{released}'role_changed' AND actor_user_id IS NULL");
    assert_eq!((app.count(&format!("{released}'role_changed'")), app.count(&by_nobody)), (3, 1));
}

/// Links of three contacts made all at once, in every pairing: they take
/// turns, so each answers 200 and the three end as one person (not two
/// persons each joined by half the calls).
#[actix_web::test]
async fn contacts_linked_all_at_once_end_as_one_person() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let igsid = "6841100000123888";
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "Olá"})).await;
    app.fake("POST", "/_fake/inbound", json!({"to": IG_A, "from": igsid, "text": "Olá 📷"})).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Sou eu"})).await;
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let contact = |external: &str| by_contact(&convs, external)["contact"]["id"].as_str().expect("id").to_string();
    let all = [contact(PSID), contact(igsid), contact(WA_ID)];
    let pairs: Vec<(String, String)> =
        (0..12).map(|i| (all[i % 3].clone(), all[(i + 1 + i / 3 % 2) % 3].clone())).collect();
    let link = |(id, other): &(String, String)| {
        let path = format!("/api/contacts/{id}/links");
        let (app, admin) = (&app, ctx.admin.clone());
        let body = json!({"contact_id": other});
        async move { app.call("POST", &path, Some(&admin), Some(body)).await }
    };
    for r in futures_util::future::join_all(pairs.iter().map(link)).await {
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    for id in &all {
        let r = app.call("GET", &format!("/api/contacts/{id}"), Some(&ctx.admin), None).await;
        let linked = r.body["linked"].as_array().map(Vec::len);
        assert_eq!(linked, Some(2), "{id}: {:?}", r.body);
    }
}

/// One customer on Messenger, Instagram and WhatsApp: the team links their
/// contacts as one person; a page lists the others the caller may see,
/// persons join, stop at ten, come apart, and lose an erased contact.
#[actix_web::test]
async fn a_customer_on_several_channels_is_one_person() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let igsid = "6841100000123999";
    let others: Vec<String> = (0..9).map(|n| format!("3519120000{n:02}")).collect();
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "Olá", "name": "Rui Costa"})).await;
    app.fake("POST", "/_fake/inbound", json!({"to": IG_A, "from": igsid, "text": "Olá 📷"})).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Sou o Rui", "name": "Rui"})).await;
    for (n, number) in others.iter().enumerate() {
        let name = format!("Cliente {n}");
        app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": number, "text": "Oi", "name": name})).await;
    }
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "?limit=100").await;
    let contact = |external: &str| by_contact(&convs, external)["contact"]["id"].as_str().expect("id").to_string();
    let (fb, ig, wa) = (contact(PSID), contact(igsid), contact(WA_ID));
    let more: Vec<String> = others.iter().map(|n| contact(n)).collect();
    let link = |who: String, id: String, body: Value| {
        let app = &app;
        async move { app.call("POST", &format!("/api/contacts/{id}/links"), Some(&who), Some(body)).await }
    };
    let linked = |who: String, id: String| {
        let app = &app;
        async move {
            let r = app.call("GET", &format!("/api/contacts/{id}"), Some(&who), None).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            r.body["linked"]
                .as_array()
                .expect("linked")
                .iter()
                .map(|c| c["id"].as_str().unwrap_or("").to_string())
                .collect::<Vec<_>>()
        }
    };
    assert!(linked(ctx.admin.clone(), fb.clone()).await.is_empty());

    let told = |id: &str| {
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'contact.updated' AND payload->>'id' = '{id}'"
        ))
    };
    let before = (told(&fb), told(&wa), told(&ig));
    let r = link(ctx.admin.clone(), fb.clone(), json!({"contact_id": wa})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["id"], fb.as_str());
    // Each contact whose person changed is announced; no other.
    assert_eq!((told(&fb), told(&wa), told(&ig)), (before.0 + 1, before.1 + 1, before.2));
    let shown = &r.body["linked"][0];
    assert_eq!(
        (shown["id"].as_str(), shown["platform"].as_str(), shown["name"].as_str()),
        (Some(wa.as_str()), Some("whatsapp"), Some("Rui"))
    );
    assert_eq!(shown["conversation_id"], by_contact(&convs, WA_ID)["id"]);
    assert_eq!(linked(ctx.admin.clone(), wa.clone()).await, vec![fb.clone()]);
    // The same link again changes nothing; nor its other way round.
    let audited = "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'contact.linked'";
    for (a, b) in [(&fb, &wa), (&wa, &fb)] {
        assert_eq!(link(ctx.admin.clone(), a.clone(), json!({"contact_id": b})).await.status, 200);
    }
    assert_eq!(app.count(audited), 1);

    // Al sees the WhatsApp number only: its page shows no Messenger
    // contact, and he cannot link one.
    let (al, al_token) = agent_al(&app, &ctx.admin).await;
    let wa_channel = by_contact(&convs, WA_ID)["channel_id"].as_str().expect("channel").to_string();
    let members = json!({"user_ids": [al["user_id"]]});
    let r = app.call("PUT", &format!("/api/channels/{wa_channel}/members"), Some(&ctx.admin), Some(members)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(linked(al_token.clone(), wa.clone()).await.is_empty());
    let r = link(al_token.clone(), wa.clone(), json!({"contact_id": ig})).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("unknown_contact")), "{:?}", r.body);
    let r = link(al_token.clone(), ig.clone(), json!({"contact_id": wa})).await;
    assert_eq!(r.status, 404, "{:?}", r.body);
    // He links two WhatsApp contacts of his, one of them Rui's: the
    // persons join, and Rui's Messenger contact shows both.
    let r = link(al_token.clone(), more[0].clone(), json!({"contact_id": more[1]})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = link(al_token.clone(), wa.clone(), json!({"contact_id": more[0]})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(linked(al_token.clone(), wa.clone()).await, [more[0].clone(), more[1].clone()]);
    assert_eq!(linked(ctx.admin.clone(), fb.clone()).await, [wa.clone(), more[0].clone(), more[1].clone()]);
    // One conversation shows its contact's linked ones too, those the
    // caller may see; a list leaves them out.
    let in_conversation = |who: String, external: &'static str| {
        let (app, id) = (&app, by_contact(&convs, external)["id"].as_str().expect("id").to_string());
        async move {
            let r = app.call("GET", &format!("/api/conversations/{id}"), Some(&who), None).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            r.body["contact"]["linked"].as_array().expect("linked").clone()
        }
    };
    let shown = in_conversation(ctx.admin.clone(), PSID).await;
    let ids = |shown: &[Value]| shown.iter().map(|c| c["id"].as_str().unwrap_or("").to_string()).collect::<Vec<_>>();
    assert_eq!(ids(&shown), [wa.clone(), more[0].clone(), more[1].clone()]);
    assert_eq!(
        (&shown[0]["conversation_id"], &shown[0]["platform"]),
        (&by_contact(&convs, WA_ID)["id"], &json!("whatsapp"))
    );
    assert_eq!(ids(&in_conversation(al_token.clone(), WA_ID).await), [more[0].clone(), more[1].clone()]);
    assert!(in_conversation(ctx.admin.clone(), igsid).await.is_empty());
    let listed = conversations(&app, &ctx.admin, "?limit=100").await;
    assert!(listed.iter().all(|c| c["contact"].get("linked").is_none()), "{listed:?}");

    for (id, body, status, code) in [
        (fb.clone(), json!({"contact_id": fb}), 422, "same_contact"),
        (fb.clone(), json!({"contact_id": "999999"}), 422, "unknown_contact"),
        (fb.clone(), json!({"contact_id": "abc"}), 422, "invalid_body"),
        (fb.clone(), json!({}), 422, "invalid_body"),
        (fb.clone(), json!({"contact_id": wa, "also": 1}), 422, "invalid_body"),
        ("999999".to_string(), json!({"contact_id": wa}), 404, "not_found"),
    ] {
        let r = link(ctx.admin.clone(), id, body.clone()).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (status, Some(code)), "{body}: {:?}", r.body);
    }

    // Ten at most: Rui's person holds 4; six more fill it, one more is refused.
    for other in &more[2..8] {
        assert_eq!(link(ctx.admin.clone(), fb.clone(), json!({"contact_id": other})).await.status, 200);
    }
    let r = link(ctx.admin.clone(), ig.clone(), json!({"contact_id": fb})).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("too_many_linked")), "{:?}", r.body);
    assert!(linked(ctx.admin.clone(), ig.clone()).await.is_empty());

    // Taken out: the WhatsApp contact is alone again, the others stay one.
    let r = app.call("DELETE", &format!("/api/contacts/{wa}/links"), Some(&al_token), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["linked"], json!([]));
    assert_eq!(linked(ctx.admin.clone(), fb.clone()).await.len(), 8);
    let r = app.call("DELETE", &format!("/api/contacts/{wa}/links"), Some(&al_token), None).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'contact.unlinked'"), 1);

    // Erased: out of its person; a person of two erased down to one is none.
    let r = link(ctx.admin.clone(), ig.clone(), json!({"contact_id": more[8]})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    for erased in [&more[8], &more[7]] {
        let r = app.call("DELETE", &format!("/api/contacts/{erased}"), Some(&ctx.admin), None).await;
        assert_eq!(r.status, 204, "{:?}", r.body);
    }
    assert!(linked(ctx.admin.clone(), ig.clone()).await.is_empty());
    assert_eq!(linked(ctx.admin.clone(), fb.clone()).await.len(), 7);
    let ig_key = format!("SELECT count(*) AS n FROM tenant_acme.contact_links WHERE contact_id = {ig}");
    assert_eq!(app.count(&ig_key), 0);
    // The export names each contact's linked ones; the import passes the
    // column over.
    let csv = app.client.get(app.url("/api/contacts.csv")).bearer_auth(&ctx.admin).send().await.expect("export");
    let csv = csv.text().await.expect("csv");
    let header: Vec<&str> = csv.lines().next().unwrap_or("").split(',').collect();
    let column = header.iter().position(|c| *c == "linked").expect("a linked column");
    let cell = |id: &str| {
        let row = csv.lines().find(|l| l.starts_with(&format!("{id},"))).unwrap_or_else(|| panic!("{id} in {csv}"));
        row.split(',').nth(column).unwrap_or("").to_string()
    };
    assert_eq!(cell(&fb), linked(ctx.admin.clone(), fb.clone()).await.join(" "));
    assert_eq!(cell(&ig), "");
    let r = app
        .client
        .post(app.url("/api/contacts/import"))
        .bearer_auth(&ctx.admin)
        .header("Content-Type", "text/csv")
        .body(csv.clone())
        .send()
        .await
        .expect("import");
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap_or_default());
    // A viewer reads a page but links nothing.
    let viewer = json!({"email": "vi@acme.test", "role": "viewer", "password": "vi-password-1"});
    assert_eq!(app.call("POST", "/api/members", Some(&ctx.admin), Some(viewer)).await.status, 201);
    let vi = token(&app.login("vi@acme.test", "vi-password-1", "acme").await, "access_token");
    assert_eq!(link(vi.clone(), fb.clone(), json!({"contact_id": ig})).await.status, 403);
}

/// The same `DELETE` sent many times at once, for a member, a team's saved
/// view, a team's macro and a purged channel: one is answered 204, the others 404
/// as they would be a moment later, and the admins' audit log has it once
/// (before, each that found the row before the first had deleted it was
/// answered 204 and recorded the deletion again; a member's removal took
/// turns already, on the owners' rows it locks to keep the last owner).
#[actix_web::test]
async fn deletes_sent_at_once_delete_once() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let view = json!({"name": "Open", "visibility": "team", "filters": {"status": "open"}});
    let r = app.call("POST", "/api/views", Some(&ctx.admin), Some(view)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let view = r.body["id"].as_str().expect("id").to_string();
    let tidy = json!({"name": "Tidy", "actions": [{"type": "add_labels", "labels": ["tidy"]}]});
    let r = app.call("POST", "/api/macros", Some(&ctx.admin), Some(tidy)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let tidy = r.body["id"].as_str().expect("id").to_string();
    let page = channel_id(&app, &ctx.admin, PAGE_A).await;
    let al = json!({"email": "al@acme.test", "role": "agent", "password": "al-password-1"});
    let r = app.call("POST", "/api/members", Some(&ctx.admin), Some(al)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let al = r.body["user_id"].as_str().expect("id").to_string();
    for (path, action) in [
        (format!("/api/members/{al}"), "member.removed"),
        (format!("/api/views/{view}"), "view.deleted"),
        (format!("/api/macros/{tidy}"), "macro.deleted"),
        (format!("/api/channels/{page}?purge=true"), "channel.purged"),
    ] {
        let delete = |_| app.call("DELETE", &path, Some(&ctx.admin), None);
        let answers = futures_util::future::join_all((0..8).map(delete)).await;
        let mut statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
        statuses.sort_unstable();
        assert_eq!(statuses, [204, 404, 404, 404, 404, 404, 404, 404], "{path}");
        for r in answers.iter().filter(|r| r.status == 404) {
            assert_eq!(r.body["error"]["code"], "not_found", "{path}: {:?}", r.body);
        }
        let audited = app.count(&format!("SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = '{action}'"));
        assert_eq!(audited, 1, "{path}");
    }
}

/// PATCHes of one conversation sent at once take turns: the same change
/// many times is made, audited and announced once (each was, before, and
/// each read queued a "seen" for Meta), and
/// labels added by several at once are all kept (each read the labels
/// there and wrote its own beside them, losing the others').
#[actix_web::test]
async fn changes_to_one_conversation_sent_at_once_take_turns() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "Olá"})).await;
    app.processed().await;
    let conv = by_contact(&conversations(&app, &ctx.admin, "").await, PSID)["id"].as_str().expect("id").to_string();
    let path = format!("/api/conversations/{conv}");
    let announced = || {
        app.count(&format!(
            "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'conversation.updated' AND conversation_id = {conv}"
        ))
    };
    let before = announced();
    let urgent = |_| app.call("PATCH", &path, Some(&ctx.admin), Some(json!({"priority": "urgent"})));
    for r in futures_util::future::join_all((0..8).map(urgent)).await {
        assert_eq!((r.status, &r.body["priority"]), (200, &json!("urgent")), "{:?}", r.body);
    }
    let audited =
        app.count("SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'conversation.prioritized'");
    assert_eq!((audited, announced() - before), (1, 1));
    // Read many times at once: read once, announced once, and Meta told
    // once that the page saw it.
    let (before, read) = (announced(), format!("{path}/read"));
    let seen =
        format!("SELECT count(*) AS n FROM public.send_queue WHERE conversation_id = {conv} AND kind = 'mark_seen'");
    let seen_before = app.count(&seen);
    for r in futures_util::future::join_all((0..8).map(|_| app.call("POST", &read, Some(&ctx.admin), None))).await {
        assert!(r.status < 300, "{:?}", r.body);
    }
    assert_eq!((announced() - before, app.count(&seen) - seen_before), (1, 1));

    let labels: Vec<String> = (0..8).map(|i| format!("topic-{i}")).collect();
    let add = |label: &String| app.call("PATCH", &path, Some(&ctx.admin), Some(json!({"add_labels": [label]})));
    for r in futures_util::future::join_all(labels.iter().map(add)).await {
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let shown = app.call("GET", &path, Some(&ctx.admin), None).await.body;
    let mut kept: Vec<String> =
        shown["labels"].as_array().expect("labels").iter().filter_map(|l| l.as_str().map(str::to_string)).collect();
    kept.sort();
    assert_eq!(kept, labels);

    // Bulk changes naming the same conversations in other orders.
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": "7392015648120395", "text": "Oi"})).await;
    app.processed().await;
    let other = by_contact(&conversations(&app, &ctx.admin, "").await, "7392015648120395")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let orders = [[conv.clone(), other.clone()], [other.clone(), conv.clone()]];
    let bulk = |i: usize| {
        let body = json!({"ids": orders[i % 2], "add_labels": [format!("bulk-{i}")]});
        app.call("POST", "/api/conversations/bulk", Some(&ctx.admin), Some(body))
    };
    for r in futures_util::future::join_all((0..8).map(bulk)).await {
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    for id in [&conv, &other] {
        let shown = app.call("GET", &format!("/api/conversations/{id}"), Some(&ctx.admin), None).await.body;
        let bulk_labels = shown["labels"]
            .as_array()
            .expect("labels")
            .iter()
            .filter(|l| l.as_str().is_some_and(|l| l.starts_with("bulk-")));
        assert_eq!(bulk_labels.count(), 8, "{shown}");
    }
}

/// Saving a team's view or macro as it is (a retry, or the same sent many
/// times at once) writes and audits nothing more; a real change is
/// audited once. Macros made at once under one name: `macro_name_taken`.
#[actix_web::test]
async fn saving_a_view_or_macro_as_it_is_records_nothing() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let view = json!({"name": "Open", "visibility": "team", "filters": {"status": "open"}});
    let r = app.call("POST", "/api/views", Some(&ctx.admin), Some(view)).await;
    let view = format!("/api/views/{}", r.body["id"].as_str().expect("id"));
    let tidy = json!({"name": "Tidy", "actions": [{"type": "add_labels", "labels": ["tidy"]}]});
    let r = app.call("POST", "/api/macros", Some(&ctx.admin), Some(tidy)).await;
    let tidy = format!("/api/macros/{}", r.body["id"].as_str().expect("id"));
    let audited =
        |action: &str| app.count(&format!("SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = '{action}'"));
    for (path, body, action) in [
        (&view, json!({"name": "Open ones", "filters": {"status": "open"}}), "view.updated"),
        (&tidy, json!({"name": "Tidy up", "actions": [{"type": "add_labels", "labels": ["tidy"]}]}), "macro.updated"),
    ] {
        let save = |_| app.call("PATCH", path, Some(&ctx.admin), Some(body.clone()));
        for r in futures_util::future::join_all((0..6).map(save)).await {
            assert_eq!((r.status, &r.body["name"]), (200, &body["name"]), "{:?}", r.body);
        }
        assert_eq!(save(0).await.status, 200);
        assert_eq!(audited(action), 1, "{action}");
    }
    // Made at once under one name: one made, the others told why.
    let same = json!({"name": "Twice", "actions": [{"type": "add_labels", "labels": ["twice"]}]});
    let make = |_| app.call("POST", "/api/macros", Some(&ctx.admin), Some(same.clone()));
    let mut answers: Vec<(u16, String)> = futures_util::future::join_all((0..6).map(make))
        .await
        .into_iter()
        .map(|r| (r.status, r.body["error"]["code"].as_str().unwrap_or("").to_string()))
        .collect();
    answers.sort();
    let taken = (409, "macro_name_taken".to_string());
    assert_eq!(answers, [(201, String::new()), taken.clone(), taken.clone(), taken.clone(), taken.clone(), taken]);
}

/// Meta's payloads change shape between Graph versions and carry what no
/// fixture shows. Every webhook fixture, each of its values in turn
/// replaced by a value of another kind or removed (two variants per value,
/// the kinds taken in turn; message ids made unique so each variant is
/// new work, not a duplicate), is processed or dead-lettered on its first
/// attempt: none panics the processor or is left retrying for a payload
/// PostgreSQL refused. The inbox still reads afterwards (every list,
/// conversation and message page answers 200) and takes a plain message.
#[actix_web::test]
async fn webhooks_of_any_shape_are_settled_at_once_and_the_inbox_still_reads() {
    fn unique_ids(v: &mut Value, n: usize) {
        match v {
            Value::Object(m) => {
                for (k, child) in m.iter_mut() {
                    match child {
                        Value::String(s) if k == "mid" || s.starts_with("wamid.") => s.push_str(&format!(".v{n}")),
                        _ => unique_ids(child, n),
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|c| unique_ids(c, n)),
            _ => {}
        }
    }
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let kinds = variants::odd_values();
    let dir = crate::common::project_dir().join("../shared/fixtures/meta");
    let mut names: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    names.sort();
    let mut bodies = Vec::new();
    for name in names {
        let original: Value = serde_json::from_slice(&std::fs::read(&name).expect("read")).expect("json");
        if original.get("entry").is_none() {
            continue;
        }
        let all = variants::pointers(&original);
        for pass in 0..2 {
            for at in &all {
                let n = bodies.len();
                let mut v = variants::changed(&original, at, kinds[(n + pass) % kinds.len()].as_ref());
                unique_ids(&mut v, n);
                bodies.push(serde_json::to_vec(&v).expect("json"));
            }
        }
    }
    assert!(bodies.len() > 1_000, "only {} variants", bodies.len());
    app.store_bodies(&bodies);
    // Each tried once: settled, or waiting for a retry with its error.
    let unsettled = "SELECT count(*) AS n FROM public.webhook_events WHERE status = 'pending' AND last_error IS NULL";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while app.count(unsettled) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} variants still unprocessed after 120 s",
            app.count(unsettled)
        );
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    #[derive(QueryableByName, Debug)]
    struct Failed {
        #[diesel(sql_type = diesel::sql_types::Text)]
        status: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        last_error: String,
        #[diesel(sql_type = diesel::sql_types::Text)]
        body: String,
    }
    let failed: Vec<Failed> = diesel::sql_query(
        "SELECT status, last_error, convert_from(body, 'UTF8') AS body FROM public.webhook_events \
          WHERE status = 'pending' OR last_error LIKE '%failed:%' OR last_error LIKE '%never finished%' \
          ORDER BY id",
    )
    .load(&mut app.db.conn())
    .expect("failed");
    let told: Vec<String> =
        failed.iter().take(10).map(|f| format!("{} {}\n  {}", f.status, f.last_error, f.body)).collect();
    assert!(failed.is_empty(), "{} of {} variants failed:\n{}", failed.len(), bodies.len(), told.join("\n"));
    assert!(app.count("SELECT count(*) AS n FROM public.webhook_events WHERE status = 'done'") > 500);
    // Whatever was stored reads back.
    let listed = app.call("GET", "/api/conversations?limit=200", Some(&ctx.admin), None).await;
    assert_eq!(listed.status, 200, "{:?}", listed.body);
    let convs = listed.body["items"].as_array().expect("items").clone();
    assert!(convs.len() >= 3, "{convs:?}");
    for c in &convs {
        let id = c["id"].as_str().expect("id");
        let one = app.call("GET", &format!("/api/conversations/{id}"), Some(&ctx.admin), None).await;
        assert_eq!(one.status, 200, "{:?}", one.body);
        let page =
            app.call("GET", &format!("/api/conversations/{id}/messages?limit=200"), Some(&ctx.admin), None).await;
        assert_eq!(page.status, 200, "{:?}", page.body);
    }
    for q in ["/api/contacts", "/api/conversations?q=%F0%9F%99%82", "/api/conversations?unread=true"] {
        let r = app.call("GET", q, Some(&ctx.admin), None).await;
        assert_eq!(r.status, 200, "{q}: {:?}", r.body);
    }
    // And a plain message still lands.
    assert_eq!(app.webhook(&messenger_text("555000111222333", "m_after_the_storm", "still here?")).await, 200);
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "?limit=200").await;
    assert_eq!(by_contact(&convs, "555000111222333")["last_message"]["text"], "still here?");
}

/// Meta took a reply, then writing that down failed for a moment (here two
/// serialization failures PostgreSQL is made to raise): the record is
/// tried again, not the send. The customer gets the message once, and it
/// shows as sent (then delivered and read) with Meta's id.
#[actix_web::test]
async fn a_reply_meta_took_is_not_sent_again_when_its_record_fails_for_a_moment() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let now = chrono::Utc::now().timestamp();
    assert_eq!(app.webhook(&whatsapp_text_at(WA_ID, "wamid.record-1", now, "Têm o M?")).await, 200);
    app.processed().await;
    let convs = conversations(&app, &ctx.admin, "").await;
    let conv = by_contact(&convs, WA_ID)["id"].as_str().expect("id").to_string();
    // The first two attempts to mark a reply sent fail as PostgreSQL fails
    // a transaction that lost a race (40001); a sequence counts them, since
    // what the failing transaction wrote is undone.
    for sql in [
        "CREATE SEQUENCE public.record_failures",
        "CREATE FUNCTION tenant_acme.fail_record() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF nextval('public.record_failures') <= 2 THEN \
             RAISE EXCEPTION 'injected' USING ERRCODE = '40001'; \
           END IF; RETURN NEW; END $$",
        "CREATE TRIGGER fail_record BEFORE UPDATE ON tenant_acme.messages FOR EACH ROW \
           WHEN (OLD.status = 'pending' AND NEW.status = 'sent') EXECUTE FUNCTION tenant_acme.fail_record()",
    ] {
        diesel::sql_query(sql).execute(&mut app.db.conn()).expect(sql);
    }
    let (status, msg) = reply(&app, &ctx.admin, &conv, "Temos, sim!", "record-1").await;
    assert_eq!(status, 202, "{msg}");
    let id = msg["id"].as_str().expect("id").to_string();
    // Sent, then delivered and read as the fake's statuses come.
    eventually("the reply sent", || async {
        message_status(&app, &ctx.admin, &conv, &id).await["status"].as_str().is_some_and(|s| s != "pending")
    })
    .await;
    assert_eq!(app.count("SELECT last_value AS n FROM public.record_failures"), 3, "two failures, then the record");
    let log = app.fake("GET", "/_fake/requests", json!({})).await;
    let sends = log["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|r| r["path"] == format!("/{PHONE}/messages") && r["body"]["text"]["body"] == "Temos, sim!")
        .count();
    assert_eq!(sends, 1, "the customer got the reply {sends} times");
    let shown = message_status(&app, &ctx.admin, &conv, &id).await;
    assert!(shown["external_id"].as_str().is_some_and(|w| w.starts_with("wamid.")), "{shown}");
}

/// A tenant keeps at most so many canned responses, and the team (and each
/// member, of their own) so many macros, however many creates come at
/// once; a retry of one kept is still answered with it, and a deletion
/// makes room.
#[actix_web::test]
async fn canned_responses_and_macros_stop_at_their_limits() {
    use switchboard::inbox::{canned::MOST_CANNED, macros::MOST_MACROS};
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let admin = ctx.admin.as_str();
    let (_, al) = agent_al(&app, admin).await;
    // All but one, kept already.
    app.exec(&format!(
        "INSERT INTO tenant_acme.canned_responses (shortcut, text) \
         SELECT 'c' || g, 'Olá ' || g FROM generate_series(1, {}) g",
        MOST_CANNED - 1
    ));
    let canned = |i: usize| {
        let body = json!({"shortcut": format!("new{i}"), "text": "Até já"});
        let app = &app;
        async move { app.call("POST", "/api/canned-responses", Some(admin), Some(body)).await }
    };
    let answers = futures_util::future::join_all((0..5).map(canned)).await;
    crate::common::one_made_rest_refused(&answers, "too_many_canned_responses");
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.canned_responses"), MOST_CANNED);
    // At the limit, a retry of one kept is answered with it.
    let again =
        app.call("POST", "/api/canned-responses", Some(admin), Some(json!({"shortcut": "c7", "text": "Olá 7"}))).await;
    assert_eq!((again.status, &again.body["shortcut"]), (200, &json!("c7")), "{:?}", again.body);
    let seventh = again.body["id"].as_str().expect("id").to_string();
    assert_eq!(app.call("DELETE", &format!("/api/canned-responses/{seventh}"), Some(admin), None).await.status, 204);
    assert_eq!(canned(99).await.status, 201, "room again");

    app.exec(&format!(
        "INSERT INTO tenant_acme.macros (name, actions) \
         SELECT 'm' || g, '[{{\"type\": \"set_status\", \"status\": \"resolved\"}}]' FROM generate_series(1, {}) g",
        MOST_MACROS - 1
    ));
    let team_macro = |i: usize| {
        let body = json!({"name": format!("Fechar {i}"), "actions": [{"type": "set_status", "status": "resolved"}]});
        let app = &app;
        async move { app.call("POST", "/api/macros", Some(admin), Some(body)).await }
    };
    let answers = futures_util::future::join_all((0..5).map(team_macro)).await;
    crate::common::one_made_rest_refused(&answers, "too_many_macros");
    // The team's are full; a member's own are counted apart, and a change
    // to one kept is no new one.
    let own =
        json!({"name": "Fechar 1", "actions": [{"type": "add_note", "text": "Fechado"}], "visibility": "personal"});
    let r = app.call("POST", "/api/macros", Some(&al), Some(own)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let kept = app.count("SELECT id AS n FROM tenant_acme.macros WHERE name = 'm1'");
    let r = app
        .call(
            "PATCH",
            &format!("/api/macros/{kept}"),
            Some(admin),
            Some(json!({"name": "Primeiro", "actions": [{"type": "set_status", "status": "resolved"}]})),
        )
        .await;
    assert_eq!((r.status, &r.body["name"]), (200, &json!("Primeiro")), "{:?}", r.body);
    assert_eq!(app.count("SELECT count(*) AS n FROM tenant_acme.macros WHERE owner_user_id IS NULL"), MOST_MACROS);
}

/// A send waiting on Meta holds up only its own conversation: the sender
/// runs conversations side by side (`sender::SENDS_AT_ONCE`), and each
/// one's replies in the order they were written.
#[actix_web::test]
async fn a_reply_waiting_on_meta_holds_up_only_its_own_conversation() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (wa, fb) = &two_customers_write(&app, &ctx, &["Oi"], "Hi").await;
    // Meta takes 6 s over each of the page's next two sends.
    let slow = json!({"path": format!("/{PAGE_A}/messages"), "method": "POST", "delay_ms": 6_000, "times": 2});
    app.fake("POST", "/_fake/errors", slow).await;
    let mut ids = Vec::new();
    for (conv, text) in [(fb, "One moment…"), (fb, "Found it: 🧦 × 2."), (wa, "Olá! Já vejo.")] {
        let body = json!({"text": text});
        let r = app.call("POST", &format!("/api/conversations/{conv}/messages"), Some(&ctx.admin), Some(body)).await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        ids.push(r.body["id"].as_str().expect("id").to_string());
    }
    let started = std::time::Instant::now();
    let status = |conv: &String, id: &String| {
        let (app, t, conv, id) = (&app, ctx.admin.clone(), conv.clone(), id.clone());
        async move { message_status(app, &t, &conv, &id).await["status"].as_str().unwrap_or_default().to_string() }
    };
    while status(wa, &ids[2]).await == "pending" {
        assert!(started.elapsed() < std::time::Duration::from_secs(4), "the WhatsApp reply waited for the page's");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status(fb, &ids[0]).await, "pending", "the page's first reply is still with Meta");
    // The page's two, in turn: about 12 s.
    tokio::time::sleep(std::time::Duration::from_secs(8)).await;
    eventually("the page's replies sent", || async {
        status(fb, &ids[0]).await != "pending" && status(fb, &ids[1]).await != "pending"
    })
    .await;
    assert_eq!(page_sends(&app).await, ["One moment…", "Found it: 🧦 × 2."], "each once, in the order written");
}

/// The texts of the replies the fake took for `PAGE_A`, in the order it took them.
async fn page_sends(app: &TestApp) -> Vec<String> {
    let log = app.fake("GET", "/_fake/requests", json!({})).await;
    log["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|c| c["path"] == format!("/{PAGE_A}/messages"))
        .filter_map(|c| c["body"]["message"]["text"].as_str().map(str::to_string))
        .collect()
}

/// One pass of the sender, in a test without workers: how many jobs it claimed.
async fn sender_pass(app: &TestApp) -> usize {
    switchboard::inbox::sender::run_once(&app.state, &switchboard::inbox::sender::Pacer::default())
        .await
        .expect("the sender's pass")
}

/// A customer writes `PAGE_A` (processed without workers): their conversation's id.
async fn page_customer_writes(app: &TestApp, ctx: &Ctx, psid: &str, text: &str) -> String {
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": psid, "text": text})).await;
    process_now(app);
    by_contact(&conversations(app, &ctx.admin, "").await, psid)["id"].as_str().expect("id").to_string()
}

/// A claimed job whose turn comes more than 5 s after its claim (the sends
/// before it in its conversation waited on Meta) is handed back, untried,
/// to the next claim, so that a send never starts late in its lease.
#[actix_web::test]
async fn a_reply_whose_turn_comes_late_is_handed_back_to_the_next_claim() {
    let app = crate::common::spawn_app_without_workers().await;
    let ctx = acme(&app).await;
    let conv = page_customer_writes(&app, &ctx, "6660000000000044", "Olá?").await;
    let slow = json!({"path": format!("/{PAGE_A}/messages"), "method": "POST", "delay_ms": 6_000, "times": 1});
    app.fake("POST", "/_fake/errors", slow).await;
    for (text, key) in [("Um momento…", "late-1"), ("Encontrei!", "late-2")] {
        let (status, body) = reply(&app, &ctx.admin, &conv, text, key).await;
        assert_eq!(status, 202, "{body}");
    }
    assert_eq!(sender_pass(&app).await, 2, "both claimed at once");
    let jobs = "SELECT count(*) AS n FROM public.send_queue q JOIN tenant_acme.messages m ON m.id = q.message_id \
                WHERE q.status = 'pending' AND q.attempts = 0 AND q.next_attempt_at <= now() AND m.text = 'Encontrei!' \
                AND q.last_error LIKE 'handed back%'";
    assert_eq!(app.count(jobs), 1, "the second handed back, untried and due");
    assert_eq!(page_sends(&app).await, ["Um momento…"]);
    assert_eq!(sender_pass(&app).await, 1);
    assert_eq!(page_sends(&app).await, ["Um momento…", "Encontrei!"], "each once, in the order written");
}

/// `many` customers (PSIDs from `prefix`) write `PAGE_A`, processed
/// without workers, and each is answered with a reply queued as `admin`:
/// many replies to one channel, each in its own conversation.
async fn replies_to_many(app: &TestApp, ctx: &Ctx, prefix: &str, many: usize) {
    let psids: Vec<String> = (0..many).map(|i| format!("{prefix}{i:05}")).collect();
    for psid in &psids {
        app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": psid, "text": "Olá 👋"})).await;
    }
    // A batch takes 100 at most.
    for _ in 0..many.div_ceil(100) {
        process_now(app);
    }
    let convs = conversations(app, &ctx.admin, "?limit=200").await;
    for (i, psid) in psids.iter().enumerate() {
        let conv = by_contact(&convs, psid)["id"].as_str().expect("id");
        let (status, body) = reply(app, &ctx.admin, conv, &format!("Resposta nº {i}"), &format!("{prefix}-{i}")).await;
        assert_eq!(status, 202, "{body}");
    }
}

/// The channel's rate (20 a second) hands the sends it holds back to the
/// queue, each told its turn in the channel's line (`sender::Pacer`): each
/// is handed back about once, not again at every turn another send took
/// first.
#[actix_web::test]
async fn sends_the_channels_rate_holds_back_are_handed_back_about_once() {
    const MANY: usize = 40;
    let app = spawn_app_without_workers().await;
    let ctx = acme(&app).await;
    replies_to_many(&app, &ctx, "66600000010", MANY).await;
    // The sender's passes, one pacer across them as in the worker.
    let pacer = switchboard::inbox::sender::Pacer::default();
    let (mut claimed, started) = (0, std::time::Instant::now());
    while page_sends(&app).await.len() < MANY {
        let n = switchboard::inbox::sender::run_once(&app.state, &pacer).await.expect("the sender's pass");
        claimed += n;
        if n == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "only {claimed} claims went");
    }
    let sent = page_sends(&app).await;
    let each: std::collections::HashSet<&String> = sent.iter().collect();
    assert_eq!((sent.len(), each.len()), (MANY, MANY), "each once");
    // Each claimed once to be paced and once to go (78 here); some again
    // when a slow pass hands out together sends whose turns are a gap
    // apart (81–90 with the machine's cores busy). Sent back at every turn
    // another took first, they were claimed about 350 times.
    assert!(claimed <= 4 * MANY, "{claimed} claims for {MANY} sends");
    // The order is not checked here: a pass running 8 side by side on a
    // loaded machine reaches the pacer in its own order, and a free moment
    // goes to whoever is there (the turns are `sender::Pacer`'s unit tests).
}

/// Two instances send (`inbox::roster`): this one's sender, checked in as
/// it starts beside the other's, keeps to half the channel's rate (20 a
/// second), so that together they keep to it. Its 40 replies to one Page
/// go at least 100 ms apart after a burst of two: 3.8 s at the least, where
/// the whole rate (50 ms) took about 2.
#[actix_web::test]
async fn an_instance_among_others_sends_at_its_share_of_the_channels_rate() {
    const MANY: usize = 40;
    let app = spawn_app_without_workers().await;
    let ctx = acme(&app).await;
    replies_to_many(&app, &ctx, "66600000020", MANY).await;
    // Another instance's sender, checked in just now (it counts 10 s: the
    // sends take 4).
    app.exec("INSERT INTO public.senders (id, seen_at) VALUES (gen_random_uuid(), now())");
    let started = std::time::Instant::now();
    switchboard::app::spawn_workers(&app.state);
    while page_sends(&app).await.len() < MANY {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{} sent", page_sends(&app).await.len());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_millis(3_800), "sent at more than its share: in {took:?}");
    let each: std::collections::HashSet<String> = page_sends(&app).await.into_iter().collect();
    assert_eq!(each.len(), MANY, "each once");
    assert_eq!(app.count("SELECT count(*) AS n FROM public.senders"), 2, "this sender checked in");
}

/// Two instances' senders on one database count each other
/// (`inbox::roster`) and share a Page's rate (20 a second): 60 replies,
/// claimed by whichever is free, go at 10 a second from each, so the one
/// that sends the more of them sends at least 30, 100 ms apart after a
/// burst of two: 2.8 s at the least, where each at the whole rate took
/// about 1.4. Together they use the whole rate (150 took 7.6 s, as one
/// instance alone; told turns at their share, 9.7 s).
#[actix_web::test]
async fn two_instances_senders_share_a_channels_rate() {
    const MANY: usize = 60;
    let app = spawn_app_without_workers().await;
    let ctx = acme(&app).await;
    replies_to_many(&app, &ctx, "66600000030", MANY).await;
    // Another instance: its own state and pool on this database, the same
    // Meta.
    let other = actix_web::web::Data::new(switchboard::app::AppState::new(
        app.config.clone(),
        switchboard::db::Db::new(app.db.pool(4)),
    ));
    // Both checked in before either sends, as two instances running a
    // while: the first to start counts itself alone until its next
    // check-in (2 s), and at the whole rate meanwhile it sent these 60 in
    // 2.7 s once. Their senders check in under these ids.
    for state in [&other, &app.state] {
        switchboard::inbox::roster::enlist(state, &switchboard::inbox::sender::Pacer::default()).await;
    }
    let started = std::time::Instant::now();
    switchboard::app::spawn_workers(&other);
    switchboard::app::spawn_workers(&app.state);
    while page_sends(&app).await.len() < MANY {
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{} sent", page_sends(&app).await.len());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    eprintln!("two senders: {MANY} replies in {took:?}");
    assert!(took >= std::time::Duration::from_millis(2_800), "sent at more than the channel's rate: in {took:?}");
    let each: std::collections::HashSet<String> = page_sends(&app).await.into_iter().collect();
    assert_eq!(each.len(), MANY, "each once");
    assert_eq!(app.count("SELECT count(*) AS n FROM public.senders"), 2, "both checked in");
}

/// The count of instances sending (`inbox::roster`): a check-in counts for
/// 10 s, a check-out at once; rows long stale are dropped on the way.
#[test]
fn senders_are_counted_while_they_check_in() {
    use switchboard::inbox::roster::{check_in, check_out};
    let db = crate::common::TestDb::new();
    let mut conn = db.conn();
    let (one, two) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    assert_eq!(check_in(&mut conn, one).expect("check-in"), 1, "alone");
    assert_eq!(check_in(&mut conn, two).expect("check-in"), 2);
    assert_eq!(check_in(&mut conn, one).expect("check-in"), 2, "checking in again counts once");
    let quiet = |conn: &mut PgConnection, id: uuid::Uuid, seconds: i32| {
        diesel::sql_query("UPDATE public.senders SET seen_at = now() - make_interval(secs => $2) WHERE id = $1::uuid")
            .bind::<diesel::sql_types::Text, _>(id.to_string())
            .bind::<diesel::sql_types::Integer, _>(seconds)
            .execute(conn)
            .expect("update");
    };
    quiet(&mut conn, two, 11);
    assert_eq!(check_in(&mut conn, one).expect("check-in"), 1, "silent for 11 s: no longer counted");
    quiet(&mut conn, two, 8);
    assert_eq!(check_in(&mut conn, one).expect("check-in"), 2, "three missed check-ins still count");
    check_out(&mut conn, two).expect("check-out");
    assert_eq!(check_in(&mut conn, one).expect("check-in"), 1, "checked out: at once");
    let three = uuid::Uuid::new_v4();
    check_in(&mut conn, three).expect("check-in");
    quiet(&mut conn, three, 301);
    check_in(&mut conn, one).expect("check-in");
    let left: Vec<Sender> = diesel::sql_query("SELECT id::text FROM public.senders").load(&mut conn).expect("rows");
    assert_eq!(
        left.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        [one.to_string()],
        "silent for five minutes: forgotten"
    );
}

/// A sender started again after a panic (`app::supervise`) checks in as
/// the same sender, so it is counted once; a stop checks it out.
#[actix_web::test]
async fn a_sender_started_again_is_counted_once() {
    use switchboard::inbox::{roster, sender::Pacer};
    let app = spawn_app_without_workers().await;
    let first = roster::enlist(&app.state, &Pacer::default()).await;
    let again = roster::enlist(&app.state, &Pacer::default()).await;
    assert_eq!(first, again);
    let senders = "SELECT count(*) AS n FROM public.senders";
    assert_eq!(app.count(senders), 1);
    roster::leave(&app.state).await.expect("check-out");
    assert_eq!(app.count(senders), 0);
}

#[derive(QueryableByName)]
struct Sender {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
}

/// A reply Meta fails for a moment is tried again seconds later; the reply
/// written after it in its conversation waits for it, in the same turn and
/// in the queue, rather than reach the customer first; and the idle sender
/// sleeps until the first is due instead of looking every 250 ms.
#[actix_web::test]
async fn a_reply_to_be_tried_again_holds_back_the_replies_after_it() {
    let app = crate::common::spawn_app_without_workers().await;
    let ctx = acme(&app).await;
    let conv = page_customer_writes(&app, &ctx, "6660000000000045", "Tem em azul?").await;
    // Past the Graph client's own quick retries: the job's try fails.
    let down = json!({"path": format!("/{PAGE_A}/messages"), "method": "POST", "status": 500, "times": 3,
        "error": {"code": 2, "message": "Service temporarily unavailable"}});
    app.fake("POST", "/_fake/errors", down).await;
    for (text, key) in [("Tem sim: azul-marinho 💙", "again-1"), ("Quer o link?", "again-2")] {
        let (status, body) = reply(&app, &ctx.admin, &conv, text, key).await;
        assert_eq!(status, 202, "{body}");
    }
    // Another conversation's reply does not wait.
    app.fake("POST", "/_fake/inbound", json!({"to": PHONE, "from": WA_ID, "text": "Oi"})).await;
    process_now(&app);
    let wa = by_contact(&conversations(&app, &ctx.admin, "").await, WA_ID)["id"].as_str().expect("id").to_string();
    let (status, body) = reply(&app, &ctx.admin, &wa, "Olá!", "again-3").await;
    assert_eq!(status, 202, "{body}");
    let whatsapp_sends = || async {
        let log = app.fake("GET", "/_fake/requests", json!({})).await;
        log["items"].as_array().expect("items").iter().filter(|c| c["body"]["text"]["body"] == "Olá!").count()
    };
    assert_eq!(sender_pass(&app).await, 3, "all three claimed at once");
    let first = "Tem sim: azul-marinho 💙";
    assert!(page_sends(&app).await.iter().all(|t| t == first), "only the first tried: {:?}", page_sends(&app).await);
    assert_eq!(whatsapp_sends().await, 1, "the other conversation's reply went");
    let held = "SELECT count(*) AS n FROM public.send_queue q JOIN tenant_acme.messages m ON m.id = q.message_id \
                WHERE q.status = 'pending' AND q.attempts = 0 AND m.text = 'Quer o link?' \
                AND q.last_error LIKE 'handed back: waits for a reply before it%'";
    assert_eq!(app.count(held), 1, "the second handed back, untried");
    // Due, but it waits for the first (tried again 2 s later).
    assert_eq!(sender_pass(&app).await, 0, "the second is not claimed before the first");
    let mut conn = app.db.conn();
    let wait = switchboard::db::queue::idle_wait(&mut conn, switchboard::db::queue::Queue::Sends).expect("idle wait");
    assert!(wait > std::time::Duration::from_millis(500), "sleeps till the first is due, not 250 ms: {wait:?}");
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    assert_eq!(sender_pass(&app).await, 2, "both, together");
    let sent = page_sends(&app).await;
    let second_at = sent.iter().position(|t| t == "Quer o link?").expect("the second went");
    assert!(sent[..second_at].len() >= 2 && sent[..second_at].iter().all(|t| t == first), "in order: {sent:?}");
    assert_eq!(sent.len(), second_at + 1, "each once: {sent:?}");
    for text in [first, "Quer o link?"] {
        let q = format!("SELECT count(*) AS n FROM tenant_acme.messages WHERE text = '{text}' AND status = 'sent'");
        assert_eq!(app.count(&q), 1, "{text} sent");
    }
}

/// Two instances claiming at once: a claim meets the first of a
/// conversation's replies locked by the other instance's claim (its row
/// held, as while that claim commits) and skips it; it does not take the
/// reply after it either, which would then reach the customer first. Once
/// the other claim lets the first go, both go, in order.
#[actix_web::test]
async fn a_claim_passes_over_the_replies_after_one_another_claim_holds() {
    use diesel::connection::SimpleConnection;
    let app = crate::common::spawn_app_without_workers().await;
    let ctx = acme(&app).await;
    let conv = page_customer_writes(&app, &ctx, "6660000000000046", "Chegou o pedido?").await;
    let (first, second) = ("Chegou, sim! 📦", "Precisa de mais algo?");
    for (text, key) in [(first, "held-1"), (second, "held-2")] {
        let (status, body) = reply(&app, &ctx.admin, &conv, text, key).await;
        assert_eq!(status, 202, "{body}");
    }
    let mut other = app.db.conn();
    other
        .batch_execute(&format!(
            "BEGIN; SELECT q.id FROM public.send_queue q JOIN tenant_acme.messages m ON m.id = q.message_id \
              WHERE m.text = '{first}' FOR UPDATE OF q"
        ))
        .expect("the other claim holds the first");
    assert_eq!(sender_pass(&app).await, 0, "the second is not claimed while the first is held");
    other.batch_execute("ROLLBACK").expect("let go");
    assert_eq!(sender_pass(&app).await, 2, "both, together");
    assert_eq!(page_sends(&app).await, [first, second], "each once, in order");
}

/// A reply Meta took whose answer came after the Graph client gave up (its
/// 10 s) is known sent by what Meta sends next, and is not sent again,
/// though that comes seconds after the give-up: the job's next try waits
/// for it (`sender::AFTER_NO_ANSWER`). On WhatsApp the statuses name the
/// reply by our mark (`biz_opaque_callback_data`), on Messenger the echo by
/// its `metadata`; Instagram's echo names nothing of ours and is stored as
/// the page's own message, which the next try takes over by its text.
#[actix_web::test]
async fn a_reply_whose_answer_was_lost_is_known_by_what_meta_sends_next_and_not_sent_again() {
    let app = spawn_app().await;
    let ctx = acme(&app).await;
    let (wa, fb) = &two_customers_write(&app, &ctx, &["Ainda há?"], "Still there?").await;
    let igsid = "6841100000124999";
    app.fake("POST", "/_fake/inbound", json!({"to": IG_A, "from": igsid, "text": "Tem em azul?"})).await;
    app.processed().await;
    let ig = &by_contact(&conversations(&app, &ctx.admin, "").await, igsid)["id"].as_str().expect("id").to_string();
    // Meta takes the three replies at once, answers 11 s later, and its
    // webhooks about them come 14 s after the sends.
    let late = json!({"path": "/messages", "method": "POST", "delay_ms": 11_000, "answer_late": true, "times": 3});
    app.fake("POST", "/_fake/errors", late).await;
    let target = json!({"url": format!("{}/webhooks/meta", app.base), "late_ms": 14_000});
    app.fake("POST", "/_fake/webhook-target", target).await;
    let mut ids = Vec::new();
    for (conv, text) in [(wa, "Há, sim."), (fb, "Yes, still here."), (ig, "Temos, sim! 💙")] {
        let body = json!({"text": text, "client_id": format!("late-{conv}")});
        let r = app.call("POST", &format!("/api/conversations/{conv}/messages"), Some(&ctx.admin), Some(body)).await;
        assert_eq!(r.status, 202, "{:?}", r.body);
        ids.push(r.body["id"].as_str().expect("id").to_string());
    }
    // Known sent by the statuses and the echo when they come, before the
    // jobs' next try.
    tokio::time::sleep(std::time::Duration::from_secs(13)).await;
    eventually("the WhatsApp reply read", || async {
        message_status(&app, &ctx.admin, wa, &ids[0]).await["status"] == "read"
    })
    .await;
    eventually("the Messenger reply sent", || async {
        message_status(&app, &ctx.admin, fb, &ids[1]).await["status"] != "pending"
    })
    .await;
    // The jobs' next try, 30 s after the sends, takes the Instagram echo over.
    tokio::time::sleep(std::time::Duration::from_secs(16)).await;
    eventually("the Instagram reply sent", || async {
        message_status(&app, &ctx.admin, ig, &ids[2]).await["status"] != "pending"
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let log = app.fake("GET", "/_fake/requests", json!({})).await;
    // A Messenger or Instagram send names its message, a WhatsApp send its
    // `to` (not so "seen" and typing).
    let sends = |path: String| {
        let items = log["items"].as_array().expect("items");
        let send = |c: &&Value| c["body"]["message"].is_object() || c["body"]["to"].is_string();
        items.iter().filter(|c| c["path"] == path).filter(send).count()
    };
    assert_eq!(sends(format!("/{PHONE}/messages")), 1, "the WhatsApp reply went once");
    assert_eq!(sends(format!("/{PAGE_A}/messages")), 1, "the Messenger reply went once");
    assert_eq!(sends(format!("/{IG_A}/messages")), 1, "the Instagram reply went once");
    let wa_reply = message_status(&app, &ctx.admin, wa, &ids[0]).await;
    assert!(wa_reply["external_id"].as_str().is_some_and(|w| w.starts_with("wamid.")), "{wa_reply}");
    let shown: Vec<Value> =
        messages(&app, &ctx.admin, ig).await.into_iter().filter(|m| m["text"] == "Temos, sim! 💙").collect();
    assert_eq!(shown.len(), 1, "the echo and the reply are one: {shown:?}");
    assert_eq!((&shown[0]["id"], &shown[0]["sender"]["kind"]), (&json!(ids[2]), &json!("agent")));
    assert!(shown[0]["external_id"].as_str().is_some_and(|e| !e.is_empty()), "{:?}", shown[0]);
}
