//! Connecting channels end to end against the fake Meta, over HTTP.

use diesel::prelude::*;
use serde_json::{json, Value};

use switchboard::channels::oauth::sign_state;
use switchboard::crypto::Keyring;
use switchboard::ids::{TenantId, UserId};

use crate::common::{spawn_app, token, TestApp};

pub(crate) const META_USER: &str = "10160000000000001";
pub(crate) const PAGE_A: &str = "102938475610293";
pub(crate) const PAGE_B: &str = "109876543210987";
pub(crate) const IG_A: &str = "17841400123456789";

/// A Meta user (the fixtures' ids) with two pages, the first with Instagram.
pub(crate) async fn meta_user(app: &TestApp) -> Value {
    app.fake(
        "POST",
        "/_fake/users",
        json!({"id": META_USER, "name": "Ana Admin", "pages": [
            {"id": PAGE_A, "name": "Loja Azul", "category": "Clothing (Brand)", "instagram": {"id": IG_A, "username": "loja.azul"}},
            {"id": PAGE_B, "name": "Tasca do Zé", "category": "Restaurant"},
        ], "wabas": [{"id": "112233445566778", "phone_numbers": [{"id": "123456789012345", "display_phone_number": "+1 555-123-4567", "verified_name": "Loja Azul"}]}]}),
    )
    .await
}

/// start → dialog → callback (JSON): the selection.
pub(crate) async fn oauth_round(app: &TestApp, admin: &str) -> Value {
    let start = app.call("POST", "/api/channels/facebook/oauth/start", Some(admin), None).await;
    assert_eq!(start.status, 200, "{:?}", start.body);
    let url = start.body["url"].as_str().expect("url").to_string();
    assert!(
        url.starts_with(&format!("{}/v24.0/dialog/oauth?client_id=1234567890123456&redirect_uri=", app.fake_base)),
        "{url}"
    );
    let dialog = app.client.get(&url).send().await.expect("dialog");
    assert_eq!(dialog.status().as_u16(), 302);
    let callback = dialog.headers()["location"].to_str().expect("location").to_string();
    assert!(callback.starts_with(&format!("{}/api/channels/facebook/oauth/callback?code=", app.base)), "{callback}");
    let res = app.client.get(&callback).header("accept", "application/json").send().await.expect("callback");
    assert_eq!(res.status().as_u16(), 200);
    res.json().await.expect("json")
}

/// A whole OAuth round and a connect of `pages`: the connect answer.
pub(crate) async fn connect_pages(app: &TestApp, admin: &str, pages: &[&str], instagram: bool) -> Value {
    let sel = oauth_round(app, admin).await;
    let r = app
        .call(
            "POST",
            "/api/channels/facebook/connect",
            Some(admin),
            Some(json!({"selection_id": sel["selection_id"], "page_ids": pages, "instagram": instagram})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

async fn channels(app: &TestApp, t: &str) -> Vec<Value> {
    let r = app.call("GET", "/api/channels", Some(t), None).await;
    assert_eq!(r.status, 200);
    r.body["items"].as_array().expect("items").clone()
}

fn sealed_tokens(app: &TestApp, schema: &str) -> Vec<(String, Option<String>)> {
    let mut conn = app.db.conn();
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        external_id: String,
        #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
        access_token_enc: Option<String>,
    }
    diesel::sql_query(format!("SELECT external_id, access_token_enc FROM {schema}.channels ORDER BY id"))
        .load::<Row>(&mut conn)
        .expect("channels")
        .into_iter()
        .map(|r| (r.external_id, r.access_token_enc))
        .collect()
}

#[actix_web::test]
async fn facebook_connect_flow_end_to_end() {
    let app = spawn_app().await;
    let created = meta_user(&app).await;
    let page_a_token = created["pages"][0]["access_token"].as_str().expect("token").to_string();
    app.fake("POST", "/_fake/dialog-user", json!({"user_id": META_USER})).await;
    let owner = app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let admin = token(&owner, "access_token");

    // A browser (no JSON) is sent on to the connect page.
    let start = app.call("POST", "/api/channels/facebook/oauth/start", Some(&admin), None).await;
    let dialog = app.client.get(start.body["url"].as_str().expect("url")).send().await.expect("dialog");
    let callback = dialog.headers()["location"].to_str().expect("location").to_string();
    let res = app.client.get(&callback).send().await.expect("callback");
    assert_eq!(res.status().as_u16(), 302);
    let location = res.headers()["location"].to_str().expect("location").to_string();
    assert!(location.starts_with(&format!("{}/channels/connect?selection_id=", app.base)), "{location}");
    let page = app.client.get(&location).send().await.expect("connect page");
    assert_eq!(page.status().as_u16(), 200);
    // The same callback again: the state is spent.
    let replay = app.client.get(&callback).header("accept", "application/json").send().await.expect("replay");
    assert_eq!(replay.status().as_u16(), 400);

    // A JSON round: both pages, the first with Instagram.
    let sel = oauth_round(&app, &admin).await;
    let selection_id = sel["selection_id"].as_str().expect("id").to_string();
    assert_eq!(sel["pages"].as_array().map(|p| p.len()), Some(2));
    assert_eq!(sel["pages"][0]["instagram"]["id"], IG_A);
    let pending = app.call("GET", &format!("/api/channels/facebook/pending/{selection_id}"), Some(&admin), None).await;
    assert_eq!(pending.body["pages"][1]["name"], "Tasca do Zé");

    // Connect page A with Instagram: two channels, A subscribed at Meta.
    let r = app
        .call(
            "POST",
            "/api/channels/facebook/connect",
            Some(&admin),
            Some(json!({"selection_id": selection_id, "page_ids": [PAGE_A], "instagram": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["items"].as_array().map(|i| i.len()), Some(2));
    let list = channels(&app, &admin).await;
    let platforms: Vec<_> =
        list.iter().map(|c| (c["platform"].as_str().unwrap_or(""), c["external_id"].as_str().unwrap_or(""))).collect();
    assert_eq!(platforms, [("facebook", PAGE_A), ("instagram", IG_A)]);
    assert_eq!(list[0]["status"], "connected");
    assert_eq!(
        list[0]["settings"],
        json!({"auto_reply": {"enabled": false, "text": ""}, "notifications": true, "human_agent": false,
            "business_hours": null, "away_reply": {"enabled": false, "text": ""}, "auto_assign": false, "auto_assign_limit": null,
            "csat": {"enabled": false, "text": ""},
            "reply_targets": {"urgent": null, "high": null, "medium": null, "low": null, "none": null,
                "only_business_hours": false}, "team_id": null, "routing": [], "auto_resolve": null,
                "retention": null, "sign_replies": false})
    );
    let state = app.fake("GET", "/_fake/state", json!({})).await;
    let a = state["pages"].as_array().expect("pages").iter().find(|p| p["id"] == PAGE_A).expect("page A").clone();
    assert!(a["subscribed_fields"]
        .as_array()
        .is_some_and(|f| f.contains(&json!("messages")) && f.contains(&json!("message_echoes"))));
    // Unknown page of the selection: 422; nothing else changes.
    let r = app
        .call(
            "POST",
            "/api/channels/facebook/connect",
            Some(&admin),
            Some(json!({"selection_id": selection_id, "page_ids": ["999"]})),
        )
        .await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("unknown_page")));

    // Tokens: never in an answer, sealed in the database.
    let text = app
        .client
        .get(app.url("/api/channels"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("list")
        .text()
        .await
        .expect("text");
    assert!(!text.contains("EAAFake") && !text.contains(&page_a_token));
    let sealed = sealed_tokens(&app, "tenant_acme");
    let first_seal = sealed[0].1.clone().expect("sealed");
    assert!(first_seal.starts_with("k1:") && !first_seal.contains(&page_a_token));

    // Later: page B from a new round leaves A intact.
    connect_pages(&app, &admin, &[PAGE_B], false).await;
    assert_eq!(channels(&app, &admin).await.len(), 3);
    // Reconnecting A: same row, new seal, no duplicate.
    let a_id = list[0]["id"].as_str().expect("id").to_string();
    let sel3 = oauth_round(&app, &admin).await;
    let r = app
        .call(
            "POST",
            "/api/channels/facebook/connect",
            Some(&admin),
            Some(json!({"selection_id": sel3["selection_id"], "page_ids": [PAGE_A], "instagram": true})),
        )
        .await;
    assert_eq!(r.status, 200);
    let after = channels(&app, &admin).await;
    assert_eq!(after.len(), 3);
    assert_eq!(after[0]["id"].as_str(), Some(a_id.as_str()));
    assert_ne!(sealed_tokens(&app, "tenant_acme")[0].1.as_deref(), Some(first_seal.as_str()));

    // Another tenant cannot take page A: 409 at connect.
    let beth = app.signup("beta", "beth@beta.test", "beth-password-1").await;
    let beta_admin = token(&beth, "access_token");
    let sel_b = oauth_round(&app, &beta_admin).await;
    assert_eq!(sel_b["pages"][0]["taken"], true);
    let r = app
        .call(
            "POST",
            "/api/channels/facebook/connect",
            Some(&beta_admin),
            Some(json!({"selection_id": sel_b["selection_id"], "page_ids": [PAGE_A]})),
        )
        .await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("channel_taken")));
    // Beta's selection is invisible to acme (another tenant's id is a 404).
    let r = app
        .call(
            "GET",
            &format!("/api/channels/facebook/pending/{}", sel_b["selection_id"].as_str().unwrap_or("")),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(r.status, 404);

    // Agents see only their channels.
    let agent = app
        .call(
            "POST",
            "/api/members",
            Some(&admin),
            Some(json!({"email": "al@acme.test", "role": "agent", "password": "al-password-1"})),
        )
        .await;
    let agent_id = agent.body["user_id"].as_str().expect("id").to_string();
    let al = token(&app.login("al@acme.test", "al-password-1", "acme").await, "access_token");
    assert!(channels(&app, &al).await.is_empty());
    let r = app.call("GET", &format!("/api/channels/{a_id}"), Some(&al), None).await;
    assert_eq!(r.status, 404);
    let r = app
        .call("PUT", &format!("/api/channels/{a_id}/members"), Some(&admin), Some(json!({"user_ids": [agent_id]})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["member_ids"], json!([agent_id]));
    let seen = channels(&app, &al).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["external_id"], PAGE_A);
    let beth_id = beth["user"]["id"].as_str().expect("id");
    let r = app
        .call("PUT", &format!("/api/channels/{a_id}/members"), Some(&admin), Some(json!({"user_ids": [beth_id]})))
        .await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("unknown_user")));
    let r = app.call("PATCH", &format!("/api/channels/{a_id}"), Some(&al), Some(json!({"name": "x"}))).await;
    assert_eq!(r.status, 403);

    // Settings.
    let r = app.call("PATCH", &format!("/api/channels/{a_id}"), Some(&admin), Some(json!({"name": "Loja", "settings": {"auto_reply": {"enabled": true, "text": "Olá! Já respondemos."}, "notifications": false}}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["settings"]["auto_reply"]["text"], "Olá! Já respondemos.");
    assert_eq!(r.body["settings"]["notifications"], false);
    let r = app
        .call(
            "PATCH",
            &format!("/api/channels/{a_id}"),
            Some(&admin),
            Some(json!({"settings": {"auto_reply": {"enabled": true, "text": ""}}})),
        )
        .await;
    assert_eq!(r.status, 422);
    let r = app
        .call("PATCH", &format!("/api/channels/{a_id}"), Some(&admin), Some(json!({"settings": {"colour": "red"}})))
        .await;
    assert_eq!(r.status, 422);

    // Token health: Meta answers 190 → reauth_required, visible in the list.
    app.fake("POST", "/_fake/tokens/expire", json!({"page_id": PAGE_A})).await;
    let r = app.call("POST", &format!("/api/channels/{a_id}/check"), Some(&admin), None).await;
    assert_eq!((r.status, r.body["status"].as_str()), (200, Some("reauth_required")));
    app.fake("POST", "/_fake/tokens/restore", json!({"page_id": PAGE_A})).await;
    let r = app.call("POST", &format!("/api/channels/{a_id}/check"), Some(&admin), None).await;
    assert_eq!(r.body["status"], "connected");

    // Disconnect B: unsubscribed at Meta, kept as disconnected, released.
    let b_id = after.iter().find(|c| c["external_id"] == PAGE_B).and_then(|c| c["id"].as_str()).expect("B").to_string();
    let r = app.call("DELETE", &format!("/api/channels/{b_id}"), Some(&admin), None).await;
    assert_eq!(r.status, 204);
    let b = app.call("GET", &format!("/api/channels/{b_id}"), Some(&admin), None).await;
    assert_eq!(b.body["status"], "disconnected");
    // Again, twice at once: answered as before, and nothing more recorded
    // or announced; the reason stays the first one.
    let path = format!("/api/channels/{b_id}");
    let again = |_| app.call("DELETE", &path, Some(&admin), None);
    for r in futures_util::future::join_all((0..2).map(again)).await {
        assert_eq!(r.status, 204, "{:?}", r.body);
    }
    let announced = format!(
        "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'channel.updated' \
          AND payload->>'id' = '{b_id}' AND payload->>'status' = 'disconnected'"
    );
    let audited = format!(
        "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'channel.disconnected' AND target_id = '{b_id}'"
    );
    assert_eq!((app.count(&announced), app.count(&audited)), (1, 1));
    let state = app.fake("GET", "/_fake/state", json!({})).await;
    let b_meta = state["pages"].as_array().expect("pages").iter().find(|p| p["id"] == PAGE_B).expect("B").clone();
    assert!(b_meta["subscribed_fields"].is_null());
    let r = app
        .call(
            "POST",
            "/api/channels/facebook/connect",
            Some(&beta_admin),
            Some(json!({"selection_id": sel_b["selection_id"], "page_ids": [PAGE_B]})),
        )
        .await;
    assert_eq!(r.status, 200, "a released page can be connected elsewhere: {:?}", r.body);
    // Purge removes the row.
    let r = app.call("DELETE", &format!("/api/channels/{b_id}?purge=true"), Some(&admin), None).await;
    assert_eq!(r.status, 204);
    assert_eq!(app.call("GET", &format!("/api/channels/{b_id}"), Some(&admin), None).await.status, 404);

    // The audit log saw it all.
    let log = app.call("GET", "/api/audit-log?limit=200", Some(&admin), None).await;
    let actions: Vec<&str> =
        log.body["items"].as_array().expect("items").iter().filter_map(|e| e["action"].as_str()).collect();
    for a in [
        "channel.connected",
        "channel.reconnected",
        "channel.members_set",
        "channel.updated",
        "channel.reauth_required",
        "channel.disconnected",
        "channel.purged",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
}

#[actix_web::test]
async fn tampered_expired_and_foreign_states_are_refused() {
    let app = spawn_app().await;
    meta_user(&app).await;
    app.fake("POST", "/_fake/dialog-user", json!({"user_id": META_USER})).await;
    let owner = app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let admin = token(&owner, "access_token");
    let start = app.call("POST", "/api/channels/facebook/oauth/start", Some(&admin), None).await;
    let dialog = app.client.get(start.body["url"].as_str().expect("url")).send().await.expect("dialog");
    let callback = dialog.headers()["location"].to_str().expect("location").to_string();
    let (base, state) = callback.split_once("&state=").expect("state");
    let get = |url: String| {
        let c = app.client.clone();
        async move {
            let r = c.get(url).header("accept", "application/json").send().await.expect("callback");
            let s = r.status().as_u16();
            let b: Value = r.json().await.expect("json");
            (s, b)
        }
    };
    // Tampered: one character of the payload changed.
    let mut chars: Vec<char> = state.chars().collect();
    chars[3] = if chars[3] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    let (s, b) = get(format!("{base}&state={tampered}")).await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("invalid_state")));
    // Expired: correctly signed, but past its time.
    let owner_id = UserId(owner["user"]["id"].as_str().and_then(|s| s.parse().ok()).expect("id"));
    let tenant_id = TenantId(owner["tenant"]["id"].as_str().and_then(|s| s.parse().ok()).expect("id"));
    let expired = sign_state(&app.state.state_key, "nonce-x", tenant_id, owner_id, chrono::Utc::now().timestamp() - 5);
    let (s, _) = get(format!("{base}&state={expired}")).await;
    assert_eq!(s, 400);
    // Well signed but never issued (forged nonce): refused.
    let forged =
        sign_state(&app.state.state_key, "never-issued", tenant_id, owner_id, chrono::Utc::now().timestamp() + 300);
    let (s, _) = get(format!("{base}&state={forged}")).await;
    assert_eq!(s, 400);
    // The real one still works once, then not again.
    let (s, b) = get(callback.clone()).await;
    assert_eq!(s, 200, "{b}");
    let (s, _) = get(callback).await;
    assert_eq!(s, 400);
    // Meta's "user denied" comes back as an error.
    let (s, b) = get(format!(
        "{}/api/channels/facebook/oauth/callback?error=access_denied&error_reason=user_denied&state=x",
        app.base
    ))
    .await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("oauth_denied")));
    // Only admins start the flow.
    app.call(
        "POST",
        "/api/members",
        Some(&admin),
        Some(json!({"email": "al@acme.test", "role": "agent", "password": "al-password-1"})),
    )
    .await;
    let al = token(&app.login("al@acme.test", "al-password-1", "acme").await, "access_token");
    let r = app.call("POST", "/api/channels/facebook/oauth/start", Some(&al), None).await;
    assert_eq!(r.status, 403);
}

#[actix_web::test]
async fn whatsapp_connect_rotation_and_meta_callbacks() {
    let app = spawn_app().await;
    let created = meta_user(&app).await;
    let waba_token = created["wabas"][0]["access_token"].as_str().expect("token").to_string();
    let owner = app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let admin = token(&owner, "access_token");

    // With a business account id and token.
    let r = app
        .call(
            "POST",
            "/api/channels/whatsapp/connect",
            Some(&admin),
            Some(json!({"waba_id": "112233445566778", "access_token": waba_token})),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["items"][0]["platform"], "whatsapp");
    assert_eq!(r.body["items"][0]["external_id"], "123456789012345");
    assert_eq!(r.body["items"][0]["name"], "Loja Azul (+1 555-123-4567)");
    assert!(!r.body.to_string().contains(&waba_token));
    let state = app.fake("GET", "/_fake/state", json!({})).await;
    assert_eq!(state["wabas"][0]["subscribed"], true);
    // Again, through embedded sign-up's code: same number, updated in place.
    let code = app.fake("POST", "/_fake/codes", json!({"user_id": META_USER})).await;
    let r = app.call("POST", "/api/channels/whatsapp/connect", Some(&admin), Some(json!({"code": code["code"]}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(channels(&app, &admin).await.len(), 1);
    // A bad token is Meta's answer, not ours: 422 (one Meta cannot even
    // parse, or none, too); both kinds of body at once: 422.
    // A token or code that cannot be Meta's never goes into a request to it
    // (a new line in a header, or longer than a URL may be, once made the
    // Graph client fail as if Meta were down: 503).
    let long = "E".repeat(70_000);
    for bad in ["EAAnope", "ü🙂", " ", "EAA\nBcd", "EAA Bcd", long.as_str()] {
        let r = app
            .call(
                "POST",
                "/api/channels/whatsapp/connect",
                Some(&admin),
                Some(json!({"waba_id": "112233445566778", "access_token": bad})),
            )
            .await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (422, Some("meta_token_invalid")),
            "{bad:?} {:?}",
            r.body
        );
    }
    // An account Meta has no such object for is the caller's mistake too.
    // An id that is not a number would name another Graph node (or none).
    let long = "1".repeat(70_000);
    for waba in ["999888777666555", "a", "ü", "../me#", "1122/phone_numbers?x=", "", long.as_str()] {
        let body = json!({"waba_id": waba, "access_token": waba_token});
        let r = app.call("POST", "/api/channels/whatsapp/connect", Some(&admin), Some(body)).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_waba")), "{waba:?} {:?}", r.body);
    }
    let r = app
        .call(
            "POST",
            "/api/channels/whatsapp/connect",
            Some(&admin),
            Some(json!({"code": "x", "waba_id": "1", "access_token": "y"})),
        )
        .await;
    assert_eq!(r.status, 422);
    let long = "c".repeat(70_000);
    for code in ["", "a b", "ab\ncd", long.as_str()] {
        let r = app.call("POST", "/api/channels/whatsapp/connect", Some(&admin), Some(json!({"code": code}))).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (400, Some("oauth_failed")), "{:?}", r.body);
    }
    assert_eq!(channels(&app, &admin).await.len(), 1, "nothing was connected");

    // Also page A through OAuth (records the Meta user for the callbacks).
    app.fake("POST", "/_fake/dialog-user", json!({"user_id": META_USER})).await;
    connect_pages(&app, &admin, &[PAGE_A], false).await;

    // An integrator's webhook, whose signing secret is sealed too.
    let hook = json!({"url": "https://crm.example.com/hooks"});
    let made = app.call("POST", "/api/integrations/webhooks", Some(&admin), Some(hook)).await;
    let hook_secret = made.body["secret"].as_str().expect("secret").to_string();
    // And a person's authenticator secret (two-step sign-in begun).
    let begun = json!({"current_password": "ann-password-1"});
    let enrolled = app.call("POST", "/api/me/mfa", Some(&admin), Some(begun)).await;
    assert_eq!(enrolled.status, 200, "{:?}", enrolled.body);

    // Key rotation: everything re-sealed under k2, readable with k2 alone.
    let k1 = switchboard::config::EncryptionKey { id: "k1".into(), key: switchboard::secret::Secret::new([7u8; 32]) };
    let k2 = switchboard::config::EncryptionKey { id: "k2".into(), key: switchboard::secret::Secret::new([9u8; 32]) };
    let rotated = Keyring::new(&[k2.clone(), k1]);
    let mut conn = app.pool.get().expect("conn");
    let report = switchboard::ops::rotate_keys(&mut conn, &rotated).expect("rotate");
    let expected = vec![("acme".to_string(), 4), ("(people's authenticator secrets)".to_string(), 1)];
    assert_eq!(report, expected, "two channels, one pending selection, one webhook; one person");
    let person: Vec<Option<String>> = switchboard::db::schema::users::table
        .select(switchboard::db::schema::users::totp_secret_enc)
        .load(&mut conn)
        .expect("users");
    assert!(
        person.iter().flatten().all(|s| s.starts_with("k2:")) && person.iter().flatten().count() == 1,
        "{person:?}"
    );
    let only_k2 = Keyring::new(&[k2]);
    for (external_id, sealed) in sealed_tokens(&app, "tenant_acme") {
        let sealed = sealed.expect("sealed");
        assert!(sealed.starts_with("k2:"));
        let platform = if external_id == PAGE_A { "facebook" } else { "whatsapp" };
        let aad = switchboard::channels::token_aad(platform, &external_id);
        assert!(only_k2.decrypt(&sealed, &aad).expect("opens").expose().starts_with("EAAFake"));
    }
    let (tenant, sealed): (i64, String) = switchboard::db::schema::outgoing_webhooks::table
        .select((
            switchboard::db::schema::outgoing_webhooks::tenant_id,
            switchboard::db::schema::outgoing_webhooks::secret_enc,
        ))
        .first(&mut conn)
        .expect("webhook");
    let aad = switchboard::integrations::webhooks::aad(switchboard::ids::TenantId(tenant));
    assert_eq!(only_k2.decrypt(&sealed, &aad).expect("opens").expose(), &hook_secret);
    drop(conn);

    // signed_request callbacks, with the shared fixtures (same app secret).
    let fixture = String::from_utf8(crate::common::fixture("signed_request_example.txt")).expect("fixture");
    let forms: Vec<&str> = fixture.lines().filter_map(|l| l.strip_prefix("form_body=")).collect();
    let tampered = fixture.lines().filter_map(|l| l.strip_prefix("signed_request=")).nth(2).expect("tampered");
    let post = |path: &'static str, body: String| {
        let c = app.client.clone();
        let url = app.url(path);
        async move {
            let r = c
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .expect("post");
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, b) = post("/meta/deauthorize", format!("signed_request={tampered}")).await;
    assert_eq!(s, 403, "{b}");
    let (s, _) = post("/meta/data-deletion", format!("signed_request={tampered}")).await;
    assert_eq!(s, 403);
    let (s, _) = post("/meta/data-deletion", "nothing=here".into()).await;
    assert_eq!(s, 400);
    let (s, b) = post("/meta/deauthorize", format!("signed_request={}", "a".repeat(100_000))).await;
    assert_eq!((s, b["error"]["code"].as_str()), (413, Some("payload_too_large")), "{b}");
    assert!(
        channels(&app, &admin).await.iter().all(|c| c["status"] == "connected"),
        "a refused callback changes nothing"
    );

    let (s, _) = post("/meta/deauthorize", forms[1].to_string()).await;
    assert_eq!(s, 200);
    let list = channels(&app, &admin).await;
    assert!(list.iter().all(|c| c["status"] == "disconnected"), "{list:?}");
    // A first try that stopped before its work (the process died): the
    // request kept under its signed_request, received, nothing deleted.
    let request = forms[0].strip_prefix("signed_request=").expect("a signed_request");
    app.exec(&format!(
        "INSERT INTO public.data_deletion_requests (confirmation_code, meta_user_id, status, request_key) \
         VALUES ('DELSTOPPED23', 'x', 'received', encode(sha256(convert_to('{request}', 'UTF8')), 'hex'))"
    ));
    // Meta sends it again: the work is done now, under the first receipt.
    let (s, b) = post("/meta/data-deletion", forms[0].to_string()).await;
    assert_eq!(s, 200, "{b}");
    let code = b["confirmation_code"].as_str().expect("code").to_string();
    assert_eq!(code, "DELSTOPPED23");
    assert_eq!(b["url"].as_str(), Some(format!("{}/meta/data-deletion/{code}", app.base).as_str()));
    // Meta sends it again when our answer was late, perhaps twice at once:
    // the same request, the same receipt.
    let again = futures_util::future::join_all((0..3).map(|_| post("/meta/data-deletion", forms[0].to_string()))).await;
    for (s, b) in &again {
        assert_eq!((*s, b["confirmation_code"].as_str()), (200, Some(code.as_str())), "{b}");
    }
    assert_eq!(app.count("SELECT count(*) AS n FROM public.data_deletion_requests"), 1);
    assert!(sealed_tokens(&app, "tenant_acme").iter().all(|(_, t)| t.is_none()), "tokens forgotten");
    let page = app.client.get(app.url(&format!("/meta/data-deletion/{code}"))).send().await.expect("status page");
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.expect("html");
    assert!(html.contains(&code) && html.contains("completed"));
    assert_eq!(app.call("GET", "/meta/data-deletion/NOPE123", None, None).await.status, 404);
}

/// An `account_update` webhook about business account `waba`.
fn account_update(entry_id: &str, value: Value) -> Vec<u8> {
    account_update_at(entry_id, value, 1773140000)
}

/// As [`account_update`], sent by Meta at `time` (seconds).
fn account_update_at(entry_id: &str, value: Value, time: i64) -> Vec<u8> {
    serde_json::to_vec(&json!({"object": "whatsapp_business_account", "entry": [{"id": entry_id, "time": time,
        "changes": [{"field": "account_update", "value": value}]}]}))
    .expect("body")
}

/// Acme's WhatsApp business account, with two numbers, and Beta's, with one.
const WABA: &str = "112233445566778";
const OTHER_WABA: &str = "998877665544332";

/// Acme (its two WhatsApp numbers, and Page A with `page`) and Beta (its
/// one number) connected: their admins' tokens.
async fn two_accounts(app: &TestApp, page: bool) -> (String, String) {
    let mut user = json!({"id": META_USER, "name": "Ana Admin",
        "wabas": [{"id": WABA, "phone_numbers": [{"id": "123456789012345"}, {"id": "123456789012346"}]}]});
    if page {
        user["pages"] = json!([{"id": PAGE_A, "name": "Loja Azul"}]);
    }
    let acme = app.fake("POST", "/_fake/users", user).await;
    let beta = app
        .fake("POST", "/_fake/users", json!({"wabas": [{"id": OTHER_WABA, "phone_numbers": [{"id": "5550001"}]}]}))
        .await;
    app.fake("POST", "/_fake/dialog-user", json!({"user_id": META_USER})).await;
    let admin = token(&app.signup("acme", "ann@acme.test", "ann-password-1").await, "access_token");
    let beta_admin = token(&app.signup("beta", "bo@beta.test", "bo-password-1").await, "access_token");
    if page {
        connect_pages(app, &admin, &[PAGE_A], false).await;
    }
    for (t, waba, grant) in [(&admin, WABA, &acme), (&beta_admin, OTHER_WABA, &beta)] {
        let body = json!({"waba_id": waba, "access_token": grant["wabas"][0]["access_token"]});
        let r = app.call("POST", "/api/channels/whatsapp/connect", Some(t), Some(body)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    (admin, beta_admin)
}

#[actix_web::test]
async fn whatsapp_account_updates_reach_every_number_of_the_account() {
    let app = spawn_app().await;
    let (admin, beta_admin) = two_accounts(&app, true).await;
    let state = |t: String| {
        let app = &app;
        async move {
            let mut out: Vec<(String, String, Option<String>)> = channels(app, &t)
                .await
                .iter()
                .map(|c| {
                    (
                        c["external_id"].as_str().expect("id").to_string(),
                        c["status"].as_str().expect("status").to_string(),
                        c["status_reason"].as_str().map(str::to_string),
                    )
                })
                .collect();
            out.sort();
            out
        }
    };
    let wa = |status: &str, reason: Option<&str>| {
        vec![
            (PAGE_A.to_string(), "connected".to_string(), None),
            ("123456789012345".to_string(), status.to_string(), reason.map(str::to_string)),
            ("123456789012346".to_string(), status.to_string(), reason.map(str::to_string)),
        ]
    };
    let beta_connected = vec![("5550001".to_string(), "connected".to_string(), None)];

    // A restriction changes nothing but is noted for the admins, once per
    // number though Meta sent it twice.
    for _ in 0..2 {
        assert_eq!(app.webhook(&crate::common::fixture("whatsapp_account_update.json")).await, 200);
    }
    app.processed().await;
    assert_eq!(state(admin.clone()).await, wa("connected", None));
    let log = app.call("GET", "/api/audit-log?limit=200", Some(&admin), None).await;
    let notes: Vec<&Value> = log.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"] == "channel.whatsapp_account_update")
        .collect();
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes.iter().all(|n| n["details"]["event"] == "ACCOUNT_RESTRICTION"
        && n["details"]["detail"]["restriction_info"][0]["restriction_type"] == "RESTRICTED_BIZ_INITIATED_MESSAGING"));

    // Disabled: replies would fail; the channel check does not lift it.
    let ban = |state: &str| json!({"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": state, "waba_ban_date": "March 10, 2026"}});
    assert_eq!(app.webhook(&account_update(WABA, ban("DISABLE"))).await, 200);
    app.processed().await;
    assert_eq!(state(admin.clone()).await, wa("reauth_required", Some("whatsapp_account_disabled")));
    let numbers = channels(&app, &admin).await;
    let number_id = numbers.iter().find(|c| c["external_id"] == "123456789012345").expect("number")["id"].clone();
    let r =
        app.call("POST", &format!("/api/channels/{}/check", number_id.as_str().expect("id")), Some(&admin), None).await;
    assert_eq!((r.status, r.body["status"].as_str()), (200, Some("reauth_required")), "{:?}", r.body);
    // Reinstated: connected again.
    assert_eq!(app.webhook(&account_update_at(WABA, ban("REINSTATE"), 1773140600)).await, 200);
    app.processed().await;
    assert_eq!(state(admin.clone()).await, wa("connected", None));
    // A ban from before the reinstatement, retried late: noted, not applied.
    assert_eq!(app.webhook(&account_update_at(WABA, ban("DISABLE"), 1773140300)).await, 200);
    app.processed().await;
    assert_eq!(state(admin.clone()).await, wa("connected", None));

    // Another app uninstalled from the account: not ours, only noted.
    let uninstalled = |app_id: &str| json!({"event": "PARTNER_APP_UNINSTALLED", "waba_info": {"waba_id": WABA, "owner_business_id": "1284923862322270", "partner_app_id": app_id}});
    assert_eq!(app.webhook(&account_update("2949482758682047", uninstalled("869361281603019"))).await, 200);
    app.processed().await;
    assert_eq!(state(admin.clone()).await, wa("connected", None));

    // The business removed us: the entry is the partner's business, the
    // account is in waba_info. Both numbers disconnected, once, though the
    // webhook came twice; the page and the other tenant untouched.
    let removed =
        json!({"event": "PARTNER_REMOVED", "waba_info": {"waba_id": WABA, "owner_business_id": "2329417887457253"}});
    for _ in 0..2 {
        assert_eq!(app.webhook(&account_update("2949482758682047", removed.clone())).await, 200);
    }
    app.processed().await;
    assert_eq!(state(admin.clone()).await, wa("disconnected", Some("whatsapp_partner_removed")));
    assert_eq!(state(beta_admin.clone()).await, beta_connected);
    assert_eq!(
        app.count(
            "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'channel.updated' \
              AND payload->>'status' = 'disconnected' AND payload->>'status_reason' = 'whatsapp_partner_removed'"
        ),
        2
    );
    // The admin disconnecting them too changes nothing: Meta's reason stays,
    // and nothing more is announced or audited.
    for number in channels(&app, &admin).await.iter().filter(|c| c["platform"] == "whatsapp") {
        let path = format!("/api/channels/{}", number["id"].as_str().expect("id"));
        assert_eq!(app.call("DELETE", &path, Some(&admin), None).await.status, 204);
    }
    assert_eq!(state(admin.clone()).await, wa("disconnected", Some("whatsapp_partner_removed")));
    let disconnections = "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'channel.updated' \
                            AND payload->>'status' = 'disconnected'";
    let audited = "SELECT count(*) AS n FROM tenant_acme.audit_log WHERE action = 'channel.disconnected'";
    assert_eq!((app.count(disconnections), app.count(audited)), (2, 2));
    // The numbers are free: their messages now find no tenant.
    assert_eq!(app.count("SELECT count(*) AS n FROM public.webhook_events WHERE status = 'dead'"), 0);
    assert_eq!(app.webhook(&crate::common::fixture("whatsapp_text.json")).await, 200);
    app.processed().await;
    assert_eq!(app.count("SELECT count(*) AS n FROM public.webhook_events WHERE status = 'dead'"), 1);
    // Our own app uninstalled from the other tenant's account, by the fake
    // Meta: the webhook names our app, and the subscription ends there.
    let sent = app
        .fake("POST", "/_fake/account-update", json!({"waba_id": OTHER_WABA, "event": "PARTNER_APP_UNINSTALLED"}))
        .await;
    assert_eq!(sent["delivered_status"], 200, "{sent}");
    assert_eq!(
        sent["webhook"]["entry"][0]["changes"][0]["value"]["waba_info"]["partner_app_id"],
        json!(app.config.meta.app_id)
    );
    let fake_state = app.client.get(format!("{}/_fake/state", app.fake_base)).send().await.expect("state");
    let fake_state: Value = fake_state.json().await.expect("json");
    let other = fake_state["wabas"].as_array().expect("wabas").iter().find(|w| w["id"] == OTHER_WABA).cloned();
    assert_eq!(other.expect("other")["subscribed"], false);
    app.processed().await;
    assert_eq!(
        state(beta_admin.clone()).await,
        vec![("5550001".to_string(), "disconnected".to_string(), Some("whatsapp_app_uninstalled".to_string()))]
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM public.webhook_events WHERE status = 'dead'"), 1);
}

#[actix_web::test]
async fn a_page_meta_blocks_cannot_reply_until_meta_unblocks_it() {
    const PSID: &str = "7392015648120394";
    let app = spawn_app().await;
    let grant = meta_user(&app).await;
    app.fake("POST", "/_fake/dialog-user", json!({"user_id": META_USER})).await;
    let admin = token(&app.signup("acme", "ann@acme.test", "ann-password-1").await, "access_token");
    connect_pages(&app, &admin, &[PAGE_A], false).await;
    let page_token = grant["pages"][0]["access_token"].as_str().expect("page token").to_string();
    let subscribed_fields = || async {
        let state = app.fake("GET", "/_fake/state", json!({})).await;
        let page = state["pages"].as_array().expect("pages").iter().find(|p| p["id"] == PAGE_A).cloned();
        page.expect("page")["subscribed_fields"].clone()
    };
    // Connecting subscribes the page to the notices (and to edits).
    let fields = subscribed_fields().await;
    for field in ["messaging_policy_enforcement", "message_edits", "messages"] {
        assert!(fields.as_array().is_some_and(|f| f.contains(&json!(field))), "{field}: {fields}");
    }
    let status = || async {
        let list = channels(&app, &admin).await;
        let c = list.iter().find(|c| c["external_id"] == PAGE_A).expect("page").clone();
        (c["status"].as_str().unwrap_or_default().to_string(), c["status_reason"].as_str().map(str::to_string))
    };
    let connected = ("connected".to_string(), None);
    let blocked = ("reauth_required".to_string(), Some("meta_policy_block".to_string()));
    let enforce = |action: &'static str| {
        let app = &app;
        async move {
            let sent =
                app.fake("POST", "/_fake/policy-enforcement", json!({"page_id": PAGE_A, "action": action})).await;
            assert_eq!(sent["delivered_status"], 200, "{sent}");
            app.processed().await;
            sent["webhook"].clone()
        }
    };
    app.fake("POST", "/_fake/inbound", json!({"to": PAGE_A, "from": PSID, "text": "Olá, há tamanho M?"})).await;
    app.processed().await;
    let convs = app.call("GET", "/api/conversations", Some(&admin), None).await;
    let conv_id = convs.body["items"][0]["id"].as_str().expect("conversation").to_string();

    // A warning changes nothing; the admins read it in the audit log.
    enforce("warning").await;
    assert_eq!(status().await, connected);

    // Blocked (and the webhook delivered twice): the channel says why,
    // replies are refused, and the channel check, whose token still
    // works, does not lift it.
    let block = enforce("block").await;
    assert_eq!(app.webhook(&serde_json::to_vec(&block).expect("body")).await, 200);
    app.processed().await;
    assert_eq!(status().await, blocked);
    let conv = app.call("GET", &format!("/api/conversations/{conv_id}"), Some(&admin), None).await;
    assert_eq!(conv.body["can_reply"], false, "{:?}", conv.body);
    let reply = json!({"text": "Temos sim!", "client_id": "c-1"});
    let r =
        app.call("POST", &format!("/api/conversations/{conv_id}/messages"), Some(&admin), Some(reply.clone())).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("channel_not_connected")), "{:?}", r.body);
    let channel_id = channels(&app, &admin).await[0]["id"].as_str().expect("id").to_string();
    let r = app.call("POST", &format!("/api/channels/{channel_id}/check"), Some(&admin), None).await;
    assert_eq!((r.status, r.body["status"].as_str()), (200, Some("reauth_required")), "{:?}", r.body);
    // At Meta, the page's sends fail meanwhile.
    let send = app
        .client
        .post(format!("{}/v24.0/{PAGE_A}/messages?access_token={page_token}", app.fake_base))
        .json(&json!({"recipient": {"id": PSID}, "messaging_type": "RESPONSE", "message": {"text": "oi"}}))
        .send()
        .await
        .expect("send");
    let error: Value = send.json().await.expect("json");
    assert_eq!(error["error"]["code"], 368, "{error}");

    // Unblocked: replies work again.
    let unblock = enforce("unblock").await;
    assert_eq!(status().await, connected);
    let r = app.call("POST", &format!("/api/conversations/{conv_id}/messages"), Some(&admin), Some(reply)).await;
    assert_eq!(r.status, 202, "{:?}", r.body);

    // A block Meta retried late, older than the unblock: noted, not applied.
    let mut late = block.clone();
    let before = unblock["entry"][0]["messaging"][0]["timestamp"].as_i64().expect("ms") - 1;
    late["entry"][0]["messaging"][0]["timestamp"] = json!(before);
    assert_eq!(app.webhook(&serde_json::to_vec(&late).expect("body")).await, 200);
    app.processed().await;
    assert_eq!(status().await, connected);

    let log = app.call("GET", "/api/audit-log?limit=200", Some(&admin), None).await;
    let actions: Vec<(String, String)> = log.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"] == "channel.policy_enforcement")
        .map(|e| (e["details"]["action"].as_str().unwrap_or_default().to_string(), e["details"]["reason"].to_string()))
        .collect();
    let order: Vec<&str> = actions.iter().rev().map(|(a, _)| a.as_str()).collect();
    assert_eq!(order, ["warning", "block", "unblock", "block"], "{actions:?}");
    assert!(actions.iter().all(|(_, reason)| reason.contains("Platform Policies")), "{actions:?}");
    assert_eq!(
        app.count(
            "SELECT count(*) AS n FROM tenant_acme.events WHERE type = 'channel.updated' \
              AND payload->>'status_reason' = 'meta_policy_block'"
        ),
        1
    );

    // A page whose subscription lost some of the usual fields: the channel
    // check subscribes it again, with all of ours.
    let subscribe_at_meta = |fields: &'static str| {
        let (app, token) = (&app, page_token.clone());
        async move {
            let url = format!(
                "{}/v24.0/{PAGE_A}/subscribed_apps?subscribed_fields={fields}&access_token={token}",
                app.fake_base
            );
            assert_eq!(app.client.post(url).send().await.expect("subscribe").status().as_u16(), 200);
        }
    };
    let check = || async {
        let r = app.call("POST", &format!("/api/channels/{channel_id}/check"), Some(&admin), None).await;
        assert_eq!((r.status, r.body["status"].as_str()), (200, Some("connected")), "{:?}", r.body);
    };
    subscribe_at_meta("messages,messaging_postbacks,message_deliveries,message_reads,message_echoes").await;
    assert!(!subscribed_fields().await.as_array().is_some_and(|f| f.contains(&json!("message_edits"))));
    check().await;
    let fields = subscribed_fields().await;
    assert!(fields.as_array().is_some_and(|f| f.contains(&json!("messaging_policy_enforcement"))), "{fields}");
    // A page with Meta's example list (meta/CONTRACTS.md §7.3) is left as it is.
    subscribe_at_meta(switchboard::meta::graph::PAGE_FIELDS_NEEDED).await;
    let subscribes = || async {
        let log = app.fake("GET", "/_fake/requests", json!({})).await;
        log["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter(|r| r["method"] == "POST" && r["path"] == format!("/{PAGE_A}/subscribed_apps"))
            .count()
    };
    let before = subscribes().await;
    assert!(before >= 3, "the connect's, the check's and ours: {before}");
    check().await;
    assert_eq!(subscribes().await, before);
    // A page an older release subscribed (it did not record the fields):
    // subscribed again once, with our additions, then left alone.
    app.count(
        "WITH u AS (UPDATE tenant_acme.channels SET subscribed_fields = NULL RETURNING 1) SELECT count(*) AS n FROM u",
    );
    check().await;
    assert_eq!(subscribes().await, before + 1);
    let fields = subscribed_fields().await;
    assert!(fields.as_array().is_some_and(|f| f.contains(&json!("messaging_policy_enforcement"))), "{fields}");
    check().await;
    assert_eq!(subscribes().await, before + 1);
}

/// Meta's messaging limit is the business portfolio's, shared by its
/// numbers: read at connect and at a check from the account's listing,
/// and changed for every number of the account by
/// `business_capability_update`, once, a late retry not applied.
#[actix_web::test]
async fn a_portfolios_messaging_limit_reaches_each_of_its_numbers() {
    let app = spawn_app().await;
    let (admin, beta_admin) = two_accounts(&app, false).await;
    let limits = |t: String| {
        let app = &app;
        async move {
            let mut out: Vec<(String, Value)> = channels(app, &t)
                .await
                .iter()
                .map(|c| {
                    (
                        c["external_id"].as_str().unwrap_or("").to_string(),
                        c["whatsapp_number"]["messaging_limit"].clone(),
                    )
                })
                .collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        }
    };
    let both = |limit: &str| {
        vec![("123456789012345".to_string(), json!(limit)), ("123456789012346".to_string(), json!(limit))]
    };
    // A new portfolio's, as the account lists it.
    assert_eq!(limits(admin.clone()).await, both("TIER_250"));
    let mut socket = crate::realtime::ws(&app, "", Some(&admin), None).await.expect("socket");

    let sent = app
        .fake(
            "POST",
            "/_fake/business-capability",
            json!({"waba_id": WABA, "max_daily_conversations_per_business": 2000}),
        )
        .await;
    assert_eq!(sent["delivered_status"], 200, "{sent}");
    app.processed().await;
    assert_eq!(limits(admin.clone()).await, both("2000"));
    assert_eq!(limits(beta_admin.clone()).await, vec![("5550001".to_string(), json!("TIER_250"))], "not theirs");
    let frame = crate::realtime::until(&mut socket, "channel.updated", std::time::Duration::from_secs(5))
        .await
        .expect("channel.updated");
    assert_eq!(frame["data"]["whatsapp_number"]["messaging_limit"], "2000", "{frame}");

    // Meta's retry adds nothing; an older one delivered late is not applied.
    let webhook = sent["webhook"].clone();
    assert_eq!(app.webhook(&serde_json::to_vec(&webhook).expect("body")).await, 200);
    let mut late = webhook.clone();
    late["entry"][0]["time"] = json!(webhook["entry"][0]["time"].as_i64().expect("time") - 600);
    late["entry"][0]["changes"][0]["value"]["max_daily_conversations_per_business"] = json!(250);
    assert_eq!(app.webhook(&serde_json::to_vec(&late).expect("body")).await, 200);
    app.processed().await;
    assert_eq!(limits(admin.clone()).await, both("2000"));
    let log = app.call("GET", "/api/audit-log?limit=200", Some(&admin), None).await;
    let noted = log.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|e| e["action"] == "channel.whatsapp_messaging_limit")
        .count();
    assert_eq!(noted, 4, "each number's change and late retry, once each");

    // Unlimited (-1); a check reads the account's listing, the same.
    app.fake(
        "POST",
        "/_fake/business-capability",
        json!({"waba_id": WABA, "max_daily_conversations_per_business": -1}),
    )
    .await;
    app.processed().await;
    assert_eq!(limits(admin.clone()).await, both("TIER_UNLIMITED"));
    app.exec(
        "UPDATE tenant_acme.channels SET whatsapp_number = whatsapp_number - 'messaging_limit' \
          WHERE external_id = '123456789012345'",
    );
    let number =
        channels(&app, &admin).await.into_iter().find(|c| c["external_id"] == "123456789012345").expect("number");
    let check = format!("/api/channels/{}/check", number["id"].as_str().expect("id"));
    let r = app.call("POST", &check, Some(&admin), None).await;
    assert_eq!(
        (r.status, &r.body["whatsapp_number"]["messaging_limit"]),
        (200, &json!("TIER_UNLIMITED")),
        "{:?}",
        r.body
    );
    // A Graph version that does not know the limit's field: asked again without it.
    app.exec("UPDATE tenant_acme.channels SET whatsapp_number = whatsapp_number - 'quality_rating'");
    let unknown = json!({"path": format!("/{WABA}/phone_numbers"), "status": 400,
        "error": {"code": 100, "message": "(#100) Tried accessing nonexisting field (whatsapp_business_manager_messaging_limit)"}});
    app.fake("POST", "/_fake/errors", unknown).await;
    let r = app.call("POST", &check, Some(&admin), None).await;
    assert_eq!(
        (r.status, &r.body["status"], &r.body["whatsapp_number"]["quality_rating"]),
        (200, &json!("connected"), &json!("GREEN")),
        "{:?}",
        r.body
    );
    let log = app.fake("GET", "/_fake/requests", json!({})).await;
    let asked: Vec<String> = log["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|c| c["path"] == format!("/{WABA}/phone_numbers"))
        .filter_map(|c| c["query"]["fields"].as_str().map(str::to_string))
        .collect();
    let last_two = &asked[asked.len().saturating_sub(2)..];
    assert!(
        last_two[0].contains("whatsapp_business_manager_messaging_limit") && !last_two[1].contains("messaging_limit"),
        "{asked:?}"
    );
}

/// `PUT /api/channels/{id}/members` sent many times at once with different
/// lists: each is answered 200 and the channel ends with one of them whole
/// (they take turns; once the second's insert met the first's rows: 409).
#[actix_web::test]
async fn lists_of_a_channels_members_set_at_once_take_turns() {
    let app = spawn_app().await;
    let admin = crate::inbox::acme(&app).await.admin;
    let channel = crate::inbox::channel_id(&app, &admin, PAGE_A).await;
    let mut agents = Vec::new();
    for name in ["al", "bo", "cy", "di"] {
        let body = json!({"email": format!("{name}@acme.test"), "role": "agent", "password": "agent-password-1"});
        let r = app.call("POST", "/api/members", Some(&admin), Some(body)).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        agents.push(r.body["user_id"].clone());
    }
    let lists: Vec<Vec<Value>> = (0..16).map(|i| agents[..(i % agents.len()) + 1].to_vec()).collect();
    let path = format!("/api/channels/{channel}/members");
    let put = |list: &Vec<Value>| app.call("PUT", &path, Some(&admin), Some(json!({"user_ids": list})));
    let answers = futures_util::future::join_all(lists.iter().map(put)).await;
    for r in &answers {
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let shown = app.call("GET", &format!("/api/channels/{channel}"), Some(&admin), None).await;
    let mut kept = shown.body["member_ids"].as_array().expect("member_ids").clone();
    kept.sort_by_key(|v| v.as_str().map(str::to_string));
    assert!(
        lists.iter().any(|l| {
            let mut l = l.clone();
            l.sort_by_key(|v| v.as_str().map(str::to_string));
            l == kept
        }),
        "{kept:?}"
    );
}

/// A member removed leaves every channel's list with the membership: the
/// list an admin reads names only members, so sending it back (less
/// someone) is not refused as naming a stranger, and someone added again
/// later starts with no channel rather than the ones they had.
#[actix_web::test]
async fn a_removed_member_leaves_the_channels_lists() {
    let app = spawn_app().await;
    let admin = crate::inbox::acme(&app).await.admin;
    let channel = crate::inbox::channel_id(&app, &admin, PAGE_A).await;
    let mut agents = Vec::new();
    for name in ["al", "bo"] {
        let body = json!({"email": format!("{name}@acme.test"), "role": "agent", "password": "agent-password-1"});
        let r = app.call("POST", "/api/members", Some(&admin), Some(body)).await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        agents.push(r.body["user_id"].as_str().expect("id").to_string());
    }
    let path = format!("/api/channels/{channel}/members");
    let r = app.call("PUT", &path, Some(&admin), Some(json!({"user_ids": agents}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = app.call("DELETE", &format!("/api/members/{}", agents[0]), Some(&admin), None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let shown = app.call("GET", &format!("/api/channels/{channel}"), Some(&admin), None).await;
    assert_eq!(shown.body["member_ids"], json!([agents[1]]), "{:?}", shown.body);
    // The list read, sent back as it is: taken.
    let r = app.call("PUT", &path, Some(&admin), Some(json!({"user_ids": shown.body["member_ids"]}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    // Added again, Al sees no channel until listed anew.
    let body = json!({"email": "al@acme.test", "role": "agent"});
    let r = app.call("POST", "/api/members", Some(&admin), Some(body)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let al = token(&app.login("al@acme.test", "agent-password-1", "acme").await, "access_token");
    let seen = app.call("GET", "/api/channels", Some(&al), None).await;
    assert_eq!(seen.body["items"], json!([]), "{:?}", seen.body);
}
