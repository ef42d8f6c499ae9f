//! Accounts over HTTP: login, refresh rotation, roles, members, tenants, and
//! the JSON error contract.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use switchboard::auth::jwt::{Claims, JwtKeys, AUDIENCE, ISSUER};
use switchboard::auth::Role;
use switchboard::config::Signup;

use crate::common::{spawn_app, spawn_app_with, token, TestApp, ALLOWED_ORIGIN, JWT_SECRET, OPERATOR_TOKEN};

/// An owner's claims for `user` in `tenant`, live for ten minutes.
pub(crate) fn claims(user: &str, tenant: &str) -> Claims {
    let now = chrono::Utc::now().timestamp();
    Claims {
        sub: user.into(),
        tid: tenant.into(),
        ten: "x".into(),
        role: Role::Owner,
        fam: "f".into(),
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        iat: now,
        nbf: now,
        exp: now + 600,
        jti: "j".into(),
    }
}

async fn me_status(app: &TestApp, token: &str) -> (u16, String) {
    let r = app.call("GET", "/api/me", Some(token), None).await;
    (r.status, r.body.pointer("/error/code").and_then(|c| c.as_str()).unwrap_or("").to_string())
}

#[actix_web::test]
async fn login_me_and_forged_or_stale_tokens() {
    let app = spawn_app().await;
    let ann = app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let access = token(&ann, "access_token");
    assert_eq!(ann["role"], "owner");
    assert_eq!(ann["tenant"]["slug"], "acme");

    let me = app.call("GET", "/api/me", Some(&access), None).await;
    assert_eq!(me.status, 200);
    // No cache keeps a token, or what a member reads (RFC 6749 §5.1), nor an error.
    let login = json!({"email": "ann@acme.test", "password": "ann-password-1", "tenant": "acme"});
    for ask in [
        app.client.post(app.url("/api/auth/login")).json(&login),
        app.client.get(app.url("/api/me")).bearer_auth(&access),
        app.client.get(app.url("/api/me")),
        app.client.get(app.url("/api/nothing-here")),
    ] {
        let res = ask.send().await.expect("send");
        let cache = res.headers().get("cache-control").and_then(|v| v.to_str().ok()).map(str::to_string);
        assert_eq!(cache.as_deref(), Some("no-store"), "{}", res.url());
    }
    assert_eq!(me.body["user"]["email"], "ann@acme.test");
    assert_eq!(me.body["memberships"][0]["tenant"]["slug"], "acme");
    let user_id = me.body["user"]["id"].as_str().expect("id").to_string();
    let tenant_id = me.body["tenant"]["id"].as_str().expect("id").to_string();

    // Wrong password, unknown tenant, unknown email: one answer.
    for (email, pw, tenant) in [
        ("ann@acme.test", "nope-nope-1", "acme"),
        ("ann@acme.test", "ann-password-1", "other"),
        ("zed@acme.test", "ann-password-1", "acme"),
    ] {
        let r = app
            .call("POST", "/api/auth/login", None, Some(json!({"email": email, "password": pw, "tenant": tenant})))
            .await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (401, Some("invalid_credentials")));
    }
    // Email and tenant as a person types them: case and spaces do not matter.
    let r = app
        .call(
            "POST",
            "/api/auth/login",
            None,
            Some(json!({"email": " Ann@ACME.test", "password": "ann-password-1", "tenant": "Acme "})),
        )
        .await;
    assert_eq!((r.status, r.body["tenant"]["slug"].as_str()), (200, Some("acme")), "{:?}", r.body);

    let keys = JwtKeys::new(JWT_SECRET.as_bytes());
    let now = chrono::Utc::now().timestamp();
    let mut expired = claims(&user_id, &tenant_id);
    expired.exp = now - 120;
    expired.iat = now - 1000;
    expired.nbf = now - 1000;
    let mut early = claims(&user_id, &tenant_id);
    early.nbf = now + 300;
    let mut aud = claims(&user_id, &tenant_id);
    aud.aud = "someone-else".into();
    let mut iss = claims(&user_id, &tenant_id);
    iss.iss = "evil".into();
    let other_key = JwtKeys::new(b"another-secret-another-secret-another!");
    let header_none = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(&user_id, &tenant_id)).expect("json"));
    let header_hs512 = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS512","typ":"JWT"}"#);

    let bad = [
        keys.sign(&expired).expect("sign"),
        keys.sign(&early).expect("sign"),
        keys.sign(&aud).expect("sign"),
        keys.sign(&iss).expect("sign"),
        other_key.sign(&claims(&user_id, &tenant_id)).expect("sign"),
        format!("{header_none}.{payload}."),
        format!("{header_hs512}.{payload}.AAAA"),
        "garbage".into(),
        String::new(),
    ];
    for t in &bad {
        let (status, _) = me_status(&app, t).await;
        assert_eq!(status, 401, "token {t:?} must be refused");
    }
    let (_, code) = me_status(&app, &bad[0]).await;
    assert_eq!(code, "token_expired");
    let r = app.client.get(app.url("/api/me")).send().await.expect("send");
    assert_eq!(r.status().as_u16(), 401);
    // Every 401 names its scheme (RFC 7235), and a bad token says so (RFC 6750).
    let challenge = |r: &reqwest::Response| {
        r.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    };
    assert_eq!(challenge(&r), r#"Bearer realm="switchboard""#);
    let r = app.client.get(app.url("/api/me")).bearer_auth(&bad[0]).send().await.expect("send");
    assert_eq!(challenge(&r), r#"Bearer realm="switchboard", error="invalid_token""#);

    // A well-signed token naming a tenant the user is not a member of.
    let beth = app.signup("beta", "beth@beta.test", "beth-password-1").await;
    let beta_id = beth["tenant"]["id"].as_str().expect("id");
    let crossed = keys.sign(&claims(&user_id, beta_id)).expect("sign");
    assert_eq!(me_status(&app, &crossed).await, (401, "membership_revoked".to_string()));
}

/// Twenty wrong passwords for one account within the window, and its
/// logins answer 429 with Retry-After, the right password too; other
/// accounts log in as before. (`SWITCHBOARD_LOGIN_ATTEMPTS`, default 20.)
#[actix_web::test]
async fn repeated_failed_logins_hold_the_account_back() {
    let app = spawn_app().await;
    app.signup("acme", "ann@acme.test", "ann-password-1").await;
    app.signup("beta", "bob@beta.test", "bob-password-1").await;
    let login = |email: &'static str, pw: &'static str, tenant: &'static str| {
        let (client, url) = (app.client.clone(), app.url("/api/auth/login"));
        async move {
            let r = client
                .post(url)
                .json(&json!({"email": email, "password": pw, "tenant": tenant}))
                .send()
                .await
                .expect("login");
            let retry =
                r.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
            (r.status().as_u16(), retry, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    for i in 0..20 {
        // Mixed case and spaces are the same account.
        let email = if i % 2 == 0 { "ann@acme.test" } else { " Ann@ACME.test" };
        let (status, _, body) = login(email, "wrong-password", "acme").await;
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_credentials")), "attempt {i}");
    }
    for pw in ["wrong-password", "ann-password-1"] {
        let (status, retry, body) = login("ann@acme.test", pw, "acme").await;
        assert_eq!((status, body["error"]["code"].as_str()), (429, Some("too_many_attempts")), "{body}");
        assert!(retry.is_some_and(|s| (1..=900).contains(&s)), "{retry:?}");
    }
    let (status, _, _) = login("bob@beta.test", "bob-password-1", "beta").await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let app = spawn_app().await;
    let first = app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let r1 = token(&first, "refresh_token");

    let second = app.call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": r1}))).await;
    assert_eq!(second.status, 200);
    let r2 = token(&second.body, "refresh_token");
    assert_ne!(r1, r2);
    assert_eq!(me_status(&app, &token(&second.body, "access_token")).await.0, 200);

    // r1 again: reuse. Refused, and r2 (same family) dies with it, and so
    // do the family's access tokens, whoever holds them.
    let reuse = app.call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": r1}))).await;
    assert_eq!((reuse.status, reuse.body["error"]["code"].as_str()), (401, Some("refresh_token_reused")));
    let after = app.call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": r2}))).await;
    assert_eq!(after.status, 401);
    for access in [token(&first, "access_token"), token(&second.body, "access_token")] {
        assert_eq!(me_status(&app, &access).await, (401, "login_ended".to_string()));
    }

    // A fresh login is a new family; logout ends it, its access token at
    // once (it cannot mint an API token to outlive it), and no other login.
    let third = app.login("ann@acme.test", "ann-password-1", "acme").await;
    let fourth = app.login("ann@acme.test", "ann-password-1", "acme").await;
    let r3 = token(&third, "refresh_token");
    assert_eq!(me_status(&app, &token(&third, "access_token")).await.0, 200);
    let out = app.call("POST", "/api/auth/logout", None, Some(json!({"refresh_token": r3}))).await;
    assert_eq!(out.status, 204);
    let after = app.call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": r3}))).await;
    assert_eq!(after.status, 401);
    assert_eq!(me_status(&app, &token(&third, "access_token")).await, (401, "login_ended".to_string()));
    let minted =
        app.call("POST", "/api/me/tokens", Some(&token(&third, "access_token")), Some(json!({"name": "after"}))).await;
    assert_eq!((minted.status, minted.body["error"]["code"].as_str()), (401, Some("login_ended")));
    let r = app.client.get(app.url("/api/me")).bearer_auth(token(&third, "access_token")).send().await.expect("send");
    let challenge = r.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="switchboard", error="invalid_token""#));
    assert_eq!(me_status(&app, &token(&fourth, "access_token")).await.0, 200, "another login carries on");
    let tokens = app.count("SELECT count(*) AS n FROM public.api_tokens");
    assert_eq!(tokens, 0, "nothing minted by an ended login");
    let junk = app.call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": "nope"}))).await;
    assert_eq!(junk.status, 401);
}

#[actix_web::test]
async fn roles_members_and_the_last_owner() {
    let app = spawn_app().await;
    let owner = app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let owner_t = token(&owner, "access_token");

    // Add a viewer and an admin.
    let v = app
        .call(
            "POST",
            "/api/members",
            Some(&owner_t),
            Some(json!({"email": "vic@acme.test", "role": "viewer", "password": "vic-password-1"})),
        )
        .await;
    assert_eq!(v.status, 201, "{:?}", v.body);
    let vic_id = v.body["user_id"].as_str().expect("id").to_string();
    let a = app
        .call(
            "POST",
            "/api/members",
            Some(&owner_t),
            Some(json!({"email": "al@acme.test", "role": "admin", "password": "al-password-1"})),
        )
        .await;
    assert_eq!(a.status, 201);
    let dup =
        app.call("POST", "/api/members", Some(&owner_t), Some(json!({"email": "AL@acme.test", "role": "agent"}))).await;
    assert_eq!((dup.status, dup.body["error"]["code"].as_str()), (409, Some("already_member")));
    let nopw = app
        .call("POST", "/api/members", Some(&owner_t), Some(json!({"email": "new@acme.test", "role": "agent"})))
        .await;
    assert_eq!((nopw.status, nopw.body["error"]["code"].as_str()), (422, Some("password_required")));
    let badrole = app
        .call(
            "POST",
            "/api/members",
            Some(&owner_t),
            Some(json!({"email": "new@acme.test", "role": "god", "password": "whatever-1"})),
        )
        .await;
    assert_eq!(badrole.status, 422);

    // A viewer calling admin endpoints.
    let vic = app.login("vic@acme.test", "vic-password-1", "acme").await;
    let vic_t = token(&vic, "access_token");
    for (m, p, b) in [
        ("GET", "/api/members", None),
        ("POST", "/api/members", Some(json!({"email": "x@acme.test", "role": "agent", "password": "xx-password"}))),
    ] {
        let r = app.call(m, p, Some(&vic_t), b).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("forbidden")), "{m} {p}");
    }

    // An admin cannot make owners; the last owner cannot be demoted or removed.
    let al = app.login("al@acme.test", "al-password-1", "acme").await;
    let al_t = token(&al, "access_token");
    let r = app.call("PATCH", &format!("/api/members/{vic_id}"), Some(&al_t), Some(json!({"role": "owner"}))).await;
    assert_eq!(r.status, 403);
    let ann_id = owner["user"]["id"].as_str().expect("id").to_string();
    let r = app.call("PATCH", &format!("/api/members/{ann_id}"), Some(&owner_t), Some(json!({"role": "admin"}))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("last_owner")));
    let r = app.call("DELETE", &format!("/api/members/{ann_id}"), Some(&owner_t), None).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("last_owner")));

    // Promote vic to agent: vic's old token (role viewer) stops working at once.
    let r = app.call("PATCH", &format!("/api/members/{vic_id}"), Some(&al_t), Some(json!({"role": "agent"}))).await;
    assert_eq!((r.status, r.body["role"].as_str()), (200, Some("agent")));
    assert_eq!(me_status(&app, &vic_t).await, (401, "token_revoked".to_string()));
    let vic = app.login("vic@acme.test", "vic-password-1", "acme").await;
    let vic_t = token(&vic, "access_token");
    let vic_r = token(&vic, "refresh_token");

    // Removing vic: access token refused now, saying so (not "log in
    // again", as for a role change), refresh refused next time.
    let r = app.call("DELETE", &format!("/api/members/{vic_id}"), Some(&al_t), None).await;
    assert_eq!(r.status, 204);
    assert_eq!(me_status(&app, &vic_t).await, (401, "membership_revoked".to_string()));
    let r = app.call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": vic_r}))).await;
    assert_eq!(r.status, 401);
    let r = app.call("DELETE", &format!("/api/members/{vic_id}"), Some(&al_t), None).await;
    assert_eq!(r.status, 404);

    // Tenant B's member is a 404 from tenant A's admin.
    let beth = app.signup("beta", "beth@beta.test", "beth-password-1").await;
    let beth_id = beth["user"]["id"].as_str().expect("id");
    let r =
        app.call("PATCH", &format!("/api/members/{beth_id}"), Some(&owner_t), Some(json!({"role": "viewer"}))).await;
    assert_eq!(r.status, 404);
    let r = app.call("DELETE", &format!("/api/members/{beth_id}"), Some(&owner_t), None).await;
    assert_eq!(r.status, 404);
    let list = app.call("GET", "/api/members?limit=1", Some(&owner_t), None).await;
    assert_eq!(list.body["items"].as_array().map(|a| a.len()), Some(1));
    let cursor = list.body["next_cursor"].as_str().expect("cursor").to_string();
    let rest = app.call("GET", &format!("/api/members?cursor={cursor}"), Some(&owner_t), None).await;
    let emails: Vec<_> =
        rest.body["items"].as_array().expect("items").iter().map(|m| m["email"].as_str().unwrap_or("")).collect();
    assert_eq!(emails, ["al@acme.test"]);
    assert!(!emails.contains(&"beth@beta.test"));

    // One person, two tenants: memberships show both.
    let r = app
        .call(
            "POST",
            "/api/members",
            Some(&token(&beth, "access_token")),
            Some(json!({"email": "al@acme.test", "role": "agent"})),
        )
        .await;
    assert_eq!(r.status, 201);
    let al_beta = app.login("al@acme.test", "al-password-1", "beta").await;
    let me = app.call("GET", "/api/me", Some(&token(&al_beta, "access_token")), None).await;
    assert_eq!(me.body["memberships"].as_array().map(|a| a.len()), Some(2));
    assert_eq!(me.body["tenant"]["slug"], "beta");
    assert_eq!(me.body["role"], "agent");
}

#[actix_web::test]
async fn suspended_tenants_are_locked_out() {
    let app = spawn_app().await;
    let ann = app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let mut conn = app.db.conn();
    switchboard::tenancy::set_status(&mut conn, "acme", switchboard::tenancy::TenantStatus::Suspended)
        .expect("suspend");
    assert_eq!(me_status(&app, &token(&ann, "access_token")).await, (403, "tenant_suspended".to_string()));
    let r = app
        .call(
            "POST",
            "/api/auth/login",
            None,
            Some(json!({"email": "ann@acme.test", "password": "ann-password-1", "tenant": "acme"})),
        )
        .await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("tenant_suspended")));
    let r =
        app.call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": token(&ann, "refresh_token")}))).await;
    assert_eq!(r.status, 401);
    switchboard::tenancy::set_status(&mut conn, "acme", switchboard::tenancy::TenantStatus::Active).expect("resume");
    app.login("ann@acme.test", "ann-password-1", "acme").await;
}

#[actix_web::test]
async fn signup_rules_and_bad_slugs() {
    let app = spawn_app_with(Signup::Closed).await;
    let body =
        json!({"slug": "acme", "name": "Acme", "owner_email": "ann@acme.test", "owner_password": "ann-password-1"});
    let r = app.call("POST", "/api/tenants", None, Some(body.clone())).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("signup_closed")));
    let r = app.call("POST", "/api/tenants", Some("wrong-operator-token"), Some(body.clone())).await;
    assert_eq!(r.status, 401);
    let r = app.call("POST", "/api/tenants", Some(OPERATOR_TOKEN), Some(body.clone())).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = app.call("POST", "/api/tenants", Some(OPERATOR_TOKEN), Some(body.clone())).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("tenant_exists")));

    for slug in [
        "a; drop schema public",
        "x\"; DROP TABLE users; --",
        "Acme",
        "public",
        "pg-catalog",
        "information-schema",
        "pg_catalog",
        &"a".repeat(60),
        "",
    ] {
        let mut b = body.clone();
        b["slug"] = json!(slug);
        let r = app.call("POST", "/api/tenants", Some(OPERATOR_TOKEN), Some(b)).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_slug")), "{slug}");
    }
    let mut b = body.clone();
    b["slug"] = json!("other");
    b["owner_email"] = json!("otto@other.test");
    b["owner_password"] = json!("short");
    let r = app.call("POST", "/api/tenants", Some(OPERATOR_TOKEN), Some(b)).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("weak_password")));
    // Owner email of an existing user with a wrong password: refused, nothing made.
    let mut b = body.clone();
    b["slug"] = json!("other");
    b["owner_password"] = json!("not-anns-password");
    let r = app.call("POST", "/api/tenants", Some(OPERATOR_TOKEN), Some(b)).await;
    assert_eq!(r.status, 409);
    let mut conn = app.db.conn();
    assert!(switchboard::tenancy::find_by_slug(&mut conn, "other").expect("query").is_none());
}

/// A web inbox served from an allowed origin may call the API (CORS);
/// another origin's browser is not let read the answers.
#[actix_web::test]
async fn browsers_of_allowed_origins_may_call_the_api() {
    let app = spawn_app().await;
    let ann = app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let access = token(&ann, "access_token");
    let header = |r: &reqwest::Response, name: &str| {
        r.headers().get(name).and_then(|v| v.to_str().ok()).map(|v| v.to_ascii_lowercase())
    };
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/conversations/1"))
            .header("origin", origin)
            .header("access-control-request-method", "PATCH")
            .header("access-control-request-headers", "authorization, content-type")
            .send()
    };
    let ok = preflight(ALLOWED_ORIGIN).await.expect("preflight");
    assert!(ok.status().is_success(), "{}", ok.status());
    assert_eq!(header(&ok, "access-control-allow-origin").as_deref(), Some(ALLOWED_ORIGIN));
    assert!(header(&ok, "access-control-allow-methods").is_some_and(|m| m.contains("patch")));
    let allowed = header(&ok, "access-control-allow-headers").unwrap_or_default();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"), "{allowed}");
    // A web inbox elsewhere fetches a customer's video by parts.
    let media = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/api/messages/1/attachments/0"))
        .header("origin", ALLOWED_ORIGIN)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization, range")
        .send()
        .await
        .expect("preflight");
    assert!(media.status().is_success(), "{}", media.status());
    assert!(header(&media, "access-control-allow-headers").is_some_and(|h| h.contains("range")));
    assert!(header(&ok, "access-control-allow-credentials").is_none(), "tokens, not cookies");
    // The answer itself, an error's too, names the origin and lets the
    // page read Retry-After and WWW-Authenticate.
    for bearer in [Some(access.as_str()), None] {
        let mut req = app.client.get(app.url("/api/me")).header("origin", ALLOWED_ORIGIN);
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let r = req.send().await.expect("me");
        assert_eq!(r.status().as_u16(), if bearer.is_some() { 200 } else { 401 });
        assert_eq!(header(&r, "access-control-allow-origin").as_deref(), Some(ALLOWED_ORIGIN));
        let exposed = header(&r, "access-control-expose-headers").unwrap_or_default();
        assert!(
            ["retry-after", "content-range", "content-disposition"].iter().all(|h| exposed.contains(h)),
            "{exposed}"
        );
    }
    // The server's own origin (the pages it serves) is allowed as well.
    let own = app.client.get(app.url("/api/me")).bearer_auth(&access).header("origin", &app.base).send().await;
    let own = own.expect("me");
    assert_eq!(header(&own, "access-control-allow-origin"), Some(app.base.clone()));
    // Another origin: served as to any client, without the header that
    // would let its page read the answer; its preflight is refused.
    let evil = app.client.get(app.url("/api/me")).bearer_auth(&access).header("origin", "https://evil.example");
    let evil = evil.send().await.expect("me");
    assert_eq!(evil.status().as_u16(), 200);
    assert!(header(&evil, "access-control-allow-origin").is_none());
    let refused = preflight("https://evil.example").await.expect("preflight");
    assert_eq!(refused.status().as_u16(), 400);
    assert!(header(&refused, "access-control-allow-origin").is_none());
    let body: serde_json::Value = refused.json().await.expect("json");
    crate::common::assert_error_shape(400, &body);
}

#[actix_web::test]
async fn every_error_has_the_json_shape() {
    let app = spawn_app().await;
    let ann = app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let t = token(&ann, "access_token");
    let send = |method: &str, path: &str, body: &'static str| {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        app.client
            .request(m, app.url(path))
            .bearer_auth(&t)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let cases: Vec<(&str, &str, &'static str, u16)> = vec![
        ("POST", "/api/auth/login", "{not json", 400),
        ("POST", "/api/auth/login", "", 400),
        ("POST", "/api/auth/login", r#"{"email": 5, "password": "x", "tenant": "acme"}"#, 422),
        ("POST", "/api/auth/login", r#"{"email": "a@b.co", "password": "x", "tenant": "acme", "extra": 1}"#, 422),
        ("POST", "/api/auth/login", r#"{"email": "a@b.co"}"#, 422),
        ("POST", "/api/members", r#"["array"]"#, 422),
        ("PATCH", "/api/members/abc", r#"{"role": "agent"}"#, 404),
        ("PATCH", "/api/members/99999", r#"{"role": "agent"}"#, 404),
        ("GET", "/api/members?limit=1000", "", 400),
        ("GET", "/api/members?cursor=%%%", "", 400),
        ("GET", "/api/nothing-here", "", 404),
        ("PUT", "/api/members", "{}", 405),
        ("GET", "/api/auth/login", "", 405),
    ];
    for (m, p, b, want) in cases {
        let res = send(m, p, b).await.expect("send");
        let status = res.status().as_u16();
        let nosniff = res.headers().get("x-content-type-options").and_then(|v| v.to_str().ok());
        assert_eq!(nosniff, Some("nosniff"), "{m} {p}");
        let body: serde_json::Value = res.json().await.unwrap_or(serde_json::Value::Null);
        assert_eq!(status, want, "{m} {p} {b}: {body}");
        crate::common::assert_error_shape(status, &body);
    }
    // A body over the limit: 413 with the shape, not a dropped connection.
    let big = format!(r#"{{"email": "{}", "password": "x", "tenant": "acme"}}"#, "a".repeat(600 * 1024));
    let res = app
        .client
        .post(app.url("/api/auth/login"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .expect("send");
    assert_eq!(res.status().as_u16(), 413);
    let body: serde_json::Value = res.json().await.expect("json");
    crate::common::assert_error_shape(413, &body);
    // Health endpoints answer.
    assert_eq!(app.call("GET", "/healthz", None, None).await.status, 200);
    assert_eq!(app.call("GET", "/readyz", None, None).await.status, 200);
    for path in ["/healthz", "/readyz"] {
        let head = app.call("HEAD", path, None, None).await;
        assert_eq!((head.status, head.body), (200, serde_json::Value::Null), "HEAD {path}: no body");
    }
    let doc: serde_json::Value =
        app.client.get(app.url("/api/openapi.json")).send().await.expect("openapi").json().await.expect("json");
    for path in [
        "/api/auth/login",
        "/api/members/{user_id}",
        "/api/channels/facebook/connect",
        "/api/conversations/{id}/messages",
        "/ws",
        "/webhooks/meta",
        "/meta/data-deletion",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} missing from the OpenAPI document");
    }
    let metrics = app.client.get(app.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(
        metrics.contains("switchboard_webhooks_pending 0") && metrics.contains("# TYPE switchboard_ws_open gauge"),
        "{metrics}"
    );
}

/// A login's answer, whatever it is.
async fn try_login(app: &TestApp, email: &str, password: &str, tenant: &str) -> crate::common::Resp {
    app.call("POST", "/api/auth/login", None, Some(json!({"email": email, "password": password, "tenant": tenant})))
        .await
}

/// `PATCH /api/me` as the holder of `access`.
async fn change_me(app: &TestApp, access: &str, body: Value) -> crate::common::Resp {
    app.call("PATCH", "/api/me", Some(access), Some(body)).await
}

/// A person's own change (`PATCH /api/me`) holds their user row as an
/// update that keeps its key does (`FOR NO KEY UPDATE`), not `FOR UPDATE`:
/// work of theirs in flight that names them by key (an invitation they
/// send: it holds their membership, then its `invited_by` checks their
/// user row) goes on, and the change after it, rather than the two
/// deadlocking and one of them answering 503 `retry`.
#[actix_web::test]
async fn ones_own_change_and_ones_invitation_at_once_do_not_deadlock() {
    let app = spawn_app().await;
    let ann = app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let ann_id: i64 = ann["user"]["id"].as_str().expect("id").parse().expect("number");
    let access = token(&ann, "access_token");

    // The invitation's work, on another connection: her membership held
    // until the change waits for it, then her user row checked as the
    // invitation's foreign key does.
    let held = format!("BEGIN; SELECT 1 FROM public.memberships WHERE user_id = {ann_id} FOR SHARE");
    let keyed = format!("SELECT 1 FROM public.users WHERE id = {ann_id} FOR KEY SHARE");
    let (begun, invitation) = crate::common::transaction_held_until_waited(&app.db.url, held, Some(keyed));
    begun.recv().expect("held");
    let change = json!({"name": "Ann Ávila", "email_notifications": {"assigned": false}});
    let r = change_me(&app, &access, change).await;
    let (waited, went) = invitation.join().expect("the invitation's thread");
    assert!(waited, "the change waited for the invitation");
    assert_eq!(went, Ok(()), "the invitation went on");
    assert_eq!(r.status, 200, "{:?}", r.body);
    let me = app.call("GET", "/api/me", Some(&access), None).await.body;
    assert_eq!((&me["user"]["name"], &me["email_notifications"]["assigned"]), (&json!("Ann Ávila"), &json!(false)));
}

/// A person changes their own name and password. A new password needs the
/// current one (a wrong one changes nothing and counts as a failed login of
/// the account), and ends every other login of theirs, in every tenant:
/// refresh tokens refused, sockets closed with 4401; the login that made the
/// change carries on. An operator sets a password without the current one,
/// ending every login.
#[actix_web::test]
async fn a_person_changes_their_name_and_password() {
    use crate::realtime::{next, until, ws};
    use std::time::Duration;

    let app = spawn_app().await;
    let ann = app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let beth = app.signup("beta", "beth@beta.test", "beth-password-1").await;
    let r = app
        .call(
            "POST",
            "/api/members",
            Some(&token(&beth, "access_token")),
            Some(json!({"email": "ann@acme.test", "role": "agent"})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let here = token(&ann, "access_token");
    let other = app.login("ann@acme.test", "ann-password-1", "acme").await;
    let at_beta = app.login("ann@acme.test", "ann-password-1", "beta").await;
    let mut sockets = Vec::new();
    for t in [&here, &token(&other, "access_token"), &token(&at_beta, "access_token")] {
        let mut s = ws(&app, "", Some(t), None).await.expect("socket");
        assert_eq!(next(&mut s, Duration::from_secs(3)).await.expect("hello")["type"], "hello");
        sockets.push(s);
    }

    for (body, status, code) in [
        (json!({"new_password": "new-password-1"}), 422, "current_password_required"),
        (json!({"current_password": "ann-password-1"}), 422, "new_password_required"),
        (json!({"current_password": "ann-password-1", "new_password": "short"}), 422, "weak_password"),
        (json!({"current_password": "ann-password-1", "new_password": "ann-password-1"}), 422, "same_password"),
        (
            json!({"name": "x".repeat(201), "current_password": "ann-password-1", "new_password": "new-password-1"}),
            422,
            "invalid_name",
        ),
        (
            json!({"name": "Ann", "current_password": "wrong-password", "new_password": "new-password-1"}),
            403,
            "wrong_password",
        ),
    ] {
        let r = change_me(&app, &here, body.clone()).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (status, Some(code)), "{body}: {:?}", r.body);
    }
    for body in [json!({"name": 5}), json!({"email": "x@y.test"}), json!([])] {
        let r = change_me(&app, &here, body.clone()).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_body")), "{body}: {:?}", r.body);
    }
    let unchanged = app.call("GET", "/api/me", Some(&here), None).await;
    assert_eq!(unchanged.body["user"]["name"], "", "nothing was written");
    assert_eq!(app.login("ann@acme.test", "ann-password-1", "acme").await["role"], "owner");

    // The change: a name, and a new password.
    let change = json!({"name": "  Ann Lee ", "current_password": "ann-password-1", "new_password": "new-password-1"});
    let r = change_me(&app, &here, change).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!((r.body["user"]["name"].as_str(), r.body["tenant"]["slug"].as_str()), (Some("Ann Lee"), Some("acme")));
    let old = try_login(&app, "ann@acme.test", "ann-password-1", "acme").await;
    assert_eq!(old.status, 401);
    assert_eq!(app.login("ann@acme.test", "new-password-1", "beta").await["role"], "agent");
    // The other logins end, here and at beta; this one carries on.
    for other in [&other, &at_beta] {
        let r = app
            .call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": token(other, "refresh_token")})))
            .await;
        assert_eq!(r.status, 401, "{:?}", r.body);
    }
    for s in &mut sockets[1..] {
        let closed = until(s, "closed", Duration::from_secs(5)).await.expect("closed");
        assert_eq!(closed["code"], 4401, "{closed}");
    }
    crate::realtime::send(&mut sockets[0], json!({"type": "ping"})).await;
    assert_eq!(until(&mut sockets[0], "pong", Duration::from_secs(3)).await.expect("still open")["type"], "pong");
    let r =
        app.call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": token(&ann, "refresh_token")}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let (here, kept) = (token(&r.body, "access_token"), token(&r.body, "refresh_token"));
    // The members list shows the name; the audit log names the fields only.
    let members = app.call("GET", "/api/members", Some(&here), None).await;
    assert_eq!(members.body["items"][0]["name"], "Ann Lee", "{:?}", members.body);
    let log = app.call("GET", "/api/audit-log", Some(&here), None).await;
    let entry = log.body["items"].as_array().expect("items").iter().find(|e| e["action"] == "account.updated").cloned();
    let entry = entry.expect("audited");
    assert_eq!(entry["details"]["fields"], json!(["password", "name"]));
    assert!(!entry.to_string().contains("new-password-1"));
    // A name alone; the same name again changes and logs nothing.
    for _ in 0..2 {
        let r = change_me(&app, &here, json!({"name": "Ann"})).await;
        assert_eq!(r.body["user"]["name"], "Ann");
    }
    let log = app.call("GET", "/api/audit-log", Some(&here), None).await;
    let updates =
        log.body["items"].as_array().expect("items").iter().filter(|e| e["action"] == "account.updated").count();
    assert_eq!(updates, 2);

    // Wrong current passwords count against the account's logins.
    for _ in 0..20 {
        let r =
            change_me(&app, &here, json!({"current_password": "guess-guess", "new_password": "x-password-9"})).await;
        assert_eq!(r.status, 403);
    }
    let r = change_me(&app, &here, json!({"current_password": "new-password-1", "new_password": "x-password-9"})).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (429, Some("too_many_attempts")));
    let r = try_login(&app, "ann@acme.test", "new-password-1", "acme").await;
    assert_eq!(r.status, 429);

    // An operator sets it without the current one; every login ends.
    let mut cli = app.db.command(&["user", "password", "--email", "ANN@acme.test"]);
    let cli = cli.env("SWITCHBOARD_USER_PASSWORD", "reset-password-1").output().expect("run switchboard");
    let out = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success() && out.contains("ann@acme.test"), "{out} {}", String::from_utf8_lossy(&cli.stderr));
    let closed = until(&mut sockets[0], "closed", Duration::from_secs(5)).await.expect("closed");
    assert_eq!(closed["code"], 4401, "{closed}");
    let r = app.call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": kept}))).await;
    assert_eq!(r.status, 401, "{:?}", r.body);
}

/// A member's API token acts as them, with the role they have at each use,
/// opens sockets, cannot make tokens, and stops at once when revoked (its
/// sockets closing) or when the member is removed; only its hash is kept.
#[actix_web::test]
async fn an_api_token_acts_as_its_member_until_revoked() {
    use crate::realtime::{next, until, ws};
    use std::time::Duration;

    let app = spawn_app().await;
    let ann = token(&app.signup("acme", "ann@acme.test", "ann-password-1").await, "access_token");
    let member = json!({"email": "al@acme.test", "role": "agent", "password": "al-password-1"});
    let r = app.call("POST", "/api/members", Some(&ann), Some(member)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let al_id = r.body["user_id"].as_str().expect("id").to_string();
    let al = token(&app.login("al@acme.test", "al-password-1", "acme").await, "access_token");
    let create = |t: &str, body: Value| {
        let (app, t) = (&app, t.to_string());
        async move { app.call("POST", "/api/me/tokens", Some(&t), Some(body)).await }
    };

    for (body, code) in [
        (json!({"name": " "}), "invalid_name"),
        (json!({"name": "x".repeat(101)}), "invalid_name"),
        (json!({"name": "CRM", "expires_in_days": 0}), "invalid_expiry"),
        (json!({"name": "CRM", "expires_in_days": 3651}), "invalid_expiry"),
        (json!({"name": 5}), "invalid_body"),
        (json!({"name": "CRM", "scope": "all"}), "invalid_body"),
        (json!({}), "invalid_body"),
    ] {
        let r = create(&al, body.clone()).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some(code)), "{body}: {:?}", r.body);
    }
    let r = create(&al, json!({"name": " CRM sync ", "expires_in_days": 30})).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!((r.body["name"].as_str(), r.body["expires_at"].is_string()), (Some("CRM sync"), true));
    let crm = r.body["token"].as_str().expect("token").to_string();
    let crm_id = r.body["id"].as_str().expect("id").to_string();
    assert!(crm.starts_with("sbt_") && crm.len() == 47, "{crm}");
    assert_eq!(app.count("SELECT count(*) AS n FROM public.api_tokens WHERE token_hash::text LIKE '%sbt_%'"), 0);

    // It acts as Al, an agent.
    let me = app.call("GET", "/api/me", Some(&crm), None).await;
    assert_eq!((me.status, me.body["role"].as_str()), (200, Some("agent")), "{:?}", me.body);
    assert_eq!(me.body["user"]["email"], "al@acme.test");
    let r = create(&crm, json!({"name": "another"})).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("token_cannot_mint")));
    let mine = app.call("GET", "/api/me/tokens", Some(&al), None).await;
    let items = mine.body["items"].as_array().expect("items").clone();
    assert_eq!(items.len(), 1);
    assert!(items[0].get("token").is_none() && items[0]["last_used_at"].is_string(), "{items:?}");
    for bad in ["sbt_nothing-like-a-token", "sbt_"] {
        let r = app.call("GET", "/api/me", Some(bad), None).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (401, Some("invalid_token")), "{bad}");
    }
    // Demoted, the token has the new role at once.
    let r = app.call("PATCH", &format!("/api/members/{al_id}"), Some(&ann), Some(json!({"role": "viewer"}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let me = app.call("GET", "/api/me", Some(&crm), None).await;
    assert_eq!((me.status, me.body["role"].as_str()), (200, Some("viewer")), "{:?}", me.body);
    // (Al's access token, issued as an agent's, is refused now: a new login.)
    let al = token(&app.login("al@acme.test", "al-password-1", "acme").await, "access_token");
    assert_eq!(app.call("GET", "/api/api-tokens", Some(&crm), None).await.status, 403);
    let all = app.call("GET", "/api/api-tokens", Some(&ann), None).await;
    assert_eq!(all.body["items"][0]["user_id"], al_id.as_str(), "{:?}", all.body);

    // A new password ends logins, not tokens.
    let change = json!({"current_password": "al-password-1", "new_password": "al-password-2"});
    assert_eq!(change_me(&app, &al, change).await.status, 200);
    assert_eq!(app.call("GET", "/api/me", Some(&crm), None).await.status, 200);

    // A socket opened with it closes when it is revoked; then it is refused.
    let mut socket = ws(&app, "", Some(&crm), None).await.expect("socket");
    assert_eq!(next(&mut socket, Duration::from_secs(3)).await.expect("hello")["type"], "hello");
    let r = app.call("DELETE", &format!("/api/me/tokens/{crm_id}"), Some(&al), None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let closed = until(&mut socket, "closed", Duration::from_secs(10)).await.expect("closed");
    assert_eq!(closed["code"], 4401, "{closed}");
    assert_eq!(app.call("GET", "/api/me", Some(&crm), None).await.status, 401);
    assert_eq!(app.call("DELETE", &format!("/api/me/tokens/{crm_id}"), Some(&al), None).await.status, 404);

    // An admin revokes anyone's; another member cannot; a removed member's go.
    let second = create(&al, json!({"name": "backup"})).await.body;
    let second_id = second["id"].as_str().expect("id").to_string();
    let third = create(&al, json!({"name": "reports"})).await.body["token"].as_str().expect("token").to_string();
    let r = app.call("DELETE", &format!("/api/me/tokens/{second_id}"), Some(&ann), None).await;
    assert_eq!(r.status, 204, "an admin revokes it by either path");
    let r = app.call("DELETE", &format!("/api/api-tokens/{second_id}"), Some(&ann), None).await;
    assert_eq!(r.status, 404);
    assert_eq!(app.call("GET", "/api/me", Some(&third), None).await.status, 200);
    let r = app.call("DELETE", &format!("/api/members/{al_id}"), Some(&ann), None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(app.call("GET", "/api/me", Some(&third), None).await.status, 401);
    assert_eq!(app.count("SELECT count(*) AS n FROM public.api_tokens"), 0);

    // At most twenty a member.
    for i in 0..20 {
        assert_eq!(create(&ann, json!({"name": format!("t{i}")})).await.status, 201);
    }
    let r = create(&ann, json!({"name": "one more"})).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("too_many_tokens")));
    let log = app.call("GET", "/api/audit-log?limit=200", Some(&ann), None).await.body;
    let entries = log["items"].as_array().expect("items");
    assert!(entries.iter().any(|e| e["action"] == "api_token.revoked"));
    assert!(!log.to_string().contains("sbt_"), "never the token");
}

/// The family (`fam`) an access token belongs to.
fn family_of(access: &str) -> String {
    let payload = access.split('.').nth(1).expect("a JWT");
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64")).expect("json");
    claims["fam"].as_str().expect("fam").to_string()
}

/// A person sees their live logins (one per refresh family, a refresh
/// moving its last refresh, not adding one), ends one (its refresh token
/// stops, its sockets close with 4401) or every other; never another
/// person's.
#[actix_web::test]
async fn a_person_sees_and_ends_their_logins() {
    use crate::realtime::{until, ws};
    use std::time::Duration;
    let app = spawn_app().await;
    let first = app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let ann = token(&first, "access_token");
    let second = app.login("ann@acme.test", "ann-password-1", "acme").await;
    let third = app.login("ann@acme.test", "ann-password-1", "acme").await;
    let member = json!({"email": "bo@acme.test", "role": "agent", "password": "bo-password-1"});
    assert_eq!(app.call("POST", "/api/members", Some(&ann), Some(member)).await.status, 201);
    let bo = app.login("bo@acme.test", "bo-password-1", "acme").await;
    let logins = || async {
        let r = app.call("GET", "/api/me/logins", Some(&ann), None).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body["items"].as_array().expect("items").clone()
    };
    let listed = logins().await;
    assert_eq!(listed.len(), 3, "{listed:?}");
    let current: Vec<&Value> = listed.iter().filter(|l| l["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!((&current[0]["id"], &current[0]["tenant"]["slug"]), (&json!(family_of(&ann)), &json!("acme")));
    let id_of = |pair: &Value| family_of(&token(pair, "access_token"));
    let before = listed.iter().find(|l| l["id"] == id_of(&second)).expect("second").clone();

    // A refresh is the same login, refreshed later.
    let r = app
        .call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": token(&second, "refresh_token")})))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let second_refresh = token(&r.body, "refresh_token");
    let listed = logins().await;
    assert_eq!(listed.len(), 3, "{listed:?}");
    let after = listed.iter().find(|l| l["id"] == id_of(&second)).expect("second");
    assert_eq!(after["started_at"], before["started_at"]);
    let at = |l: &Value| {
        chrono::DateTime::parse_from_rfc3339(l["last_refreshed_at"].as_str().expect("a time")).expect("rfc 3339")
    };
    assert!(at(after) > at(&before), "{before} {after}");

    // One ended: its refresh token stops, its socket closes. Asked to
    // end it many times at once, it ends once (one 204, and one line in
    // the audit log, counted below), the others answered as later.
    let mut socket = ws(&app, "", Some(&token(&third, "access_token")), None).await.expect("socket");
    let path = format!("/api/me/logins/{}", id_of(&third));
    let answers = futures_util::future::join_all((0..8).map(|_| app.call("DELETE", &path, Some(&ann), None))).await;
    let mut statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
    statuses.sort_unstable();
    let bodies: Vec<&Value> = answers.iter().map(|r| &r.body).collect();
    assert_eq!(statuses, [204, 404, 404, 404, 404, 404, 404, 404], "{bodies:?}");
    let closed = until(&mut socket, "closed", Duration::from_secs(5)).await.expect("closed");
    assert_eq!(closed["code"], 4401, "{closed}");
    let r = app
        .call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": token(&third, "refresh_token")})))
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(logins().await.len(), 2);
    // Not another person's, nor one that is gone.
    for id in [id_of(&bo), id_of(&third), "no-such-login".to_string()] {
        let r = app.call("DELETE", &format!("/api/me/logins/{id}"), Some(&ann), None).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (404, Some("not_found")), "{:?}", r.body);
    }
    let r =
        app.call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": token(&bo, "refresh_token")}))).await;
    assert_eq!(r.status, 200, "Bo's login goes on");

    // Every other one.
    let r = app.call("DELETE", "/api/me/logins", Some(&ann), None).await;
    assert_eq!((r.status, &r.body["ended"]), (200, &json!(1)), "{:?}", r.body);
    let r = app.call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": second_refresh}))).await;
    assert_eq!(r.status, 401);
    let listed = logins().await;
    assert_eq!((listed.len(), &listed[0]["current"]), (1, &json!(true)), "{listed:?}");
    let log = app.call("GET", "/api/audit-log?limit=200", Some(&ann), None).await.body;
    let ended =
        log["items"].as_array().expect("items").iter().filter(|e| e["action"] == "account.logins_ended").count();
    assert_eq!(ended, 2);
}

/// A membership starts with no logins or API tokens. One made while its
/// member's removal was under way escapes the removal's revoke (the
/// removal cannot see what is not yet committed); here what such a race
/// leaves behind is put back by hand (the login not revoked, the API token
/// still there). Added again, the person gets nothing back from them, the
/// login's access token included: a new login works, the old ones do not.
#[actix_web::test]
async fn credentials_of_an_earlier_membership_do_not_come_back() {
    let app = spawn_app().await;
    let ann = token(&app.signup("acme", "ann@acme.test", "ann-password-1").await, "access_token");
    let member = json!({"email": "al@acme.test", "role": "agent", "password": "al-password-1"});
    let r = app.call("POST", "/api/members", Some(&ann), Some(member)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let al_id = r.body["user_id"].as_str().expect("id").to_string();
    let login = app.login("al@acme.test", "al-password-1", "acme").await;
    let access = token(&login, "access_token");
    let made = app.call("POST", "/api/me/tokens", Some(&access), Some(json!({"name": "CRM"}))).await;
    let api = token(&made.body, "token");
    assert_eq!(me_status(&app, &api).await.0, 200);

    app.exec(&format!("CREATE TABLE public.kept_tokens AS SELECT * FROM public.api_tokens WHERE user_id = {al_id}"));
    let r = app.call("DELETE", &format!("/api/members/{al_id}"), Some(&ann), None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(app.exec(&format!("UPDATE public.refresh_tokens SET revoked_at = NULL WHERE user_id = {al_id}")), 1);
    assert_eq!(app.exec("INSERT INTO public.api_tokens SELECT * FROM public.kept_tokens"), 1);
    app.exec("DROP TABLE public.kept_tokens");
    let again = app.call("POST", "/api/members", Some(&ann), Some(json!({"email": "al@acme.test", "role": "agent"})));
    assert_eq!(again.await.status, 201);

    let r = app.call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": token(&login, "refresh_token")})));
    let r = r.await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (401, Some("invalid_refresh_token")), "{:?}", r.body);
    assert_eq!(me_status(&app, &access).await, (401, "login_ended".to_string()));
    assert_eq!(me_status(&app, &api).await, (401, "invalid_token".to_string()));
    let fresh = app.login("al@acme.test", "al-password-1", "acme").await;
    assert_eq!(me_status(&app, &token(&fresh, "access_token")).await.0, 200);
    let r = app.call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": token(&fresh, "refresh_token")})));
    assert_eq!(r.await.status, 200, "a login of this membership refreshes");
}
