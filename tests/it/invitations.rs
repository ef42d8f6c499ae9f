//! Invitations: an admin invites an email; whoever holds the link sets a
//! password (or gives their account's) and becomes a member, once.

use serde_json::{json, Value};

use crate::common::{spawn_app, token, TestApp};

async fn invite(app: &TestApp, admin: &str, email: &str, role: &str) -> crate::common::Resp {
    app.call("POST", "/api/invitations", Some(admin), Some(json!({"email": email, "role": role}))).await
}

async fn look(app: &TestApp, invitation: &str) -> crate::common::Resp {
    app.call("POST", "/api/auth/invitation", None, Some(json!({"token": invitation}))).await
}

async fn accept(app: &TestApp, invitation: &str, password: &str, name: &str) -> crate::common::Resp {
    app.call(
        "POST",
        "/api/auth/invitation/accept",
        None,
        Some(json!({"token": invitation, "password": password, "name": name})),
    )
    .await
}

fn code(r: &crate::common::Resp) -> (u16, &str) {
    (r.status, r.body["error"]["code"].as_str().unwrap_or(""))
}

fn audited(log: &Value, action: &str) -> Vec<Value> {
    log["items"].as_array().expect("items").iter().filter(|e| e["action"] == action).cloned().collect()
}

#[actix_web::test]
async fn an_invited_person_sets_their_password_and_joins_once() {
    let app = spawn_app().await;
    let ann = token(&app.signup("acme", "ann@acme.test", "ann-password-1").await, "access_token");

    // Who may invite whom.
    let r = app
        .call(
            "POST",
            "/api/members",
            Some(&ann),
            Some(json!({"email": "al@acme.test", "role": "admin", "password": "al-password-1"})),
        )
        .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    app.call(
        "POST",
        "/api/members",
        Some(&ann),
        Some(json!({"email": "vic@acme.test", "role": "agent", "password": "vic-password-1"})),
    )
    .await;
    let al = token(&app.login("al@acme.test", "al-password-1", "acme").await, "access_token");
    let vic = token(&app.login("vic@acme.test", "vic-password-1", "acme").await, "access_token");
    assert_eq!(code(&invite(&app, &vic, "new@acme.test", "agent").await), (403, "forbidden"));
    assert_eq!(code(&invite(&app, &al, "new@acme.test", "owner").await), (403, "forbidden"));
    assert_eq!(code(&invite(&app, &al, "VIC@acme.test", "agent").await), (409, "already_member"));
    assert_eq!(code(&invite(&app, &al, "not an email", "agent").await), (422, "invalid_email"));
    assert_eq!(code(&invite(&app, &al, "new@acme.test", "boss").await), (422, "invalid_role"));
    // Without a password, adding someone new points at invitations.
    let r = app.call("POST", "/api/members", Some(&al), Some(json!({"email": "new@acme.test", "role": "agent"}))).await;
    assert_eq!(code(&r), (422, "password_required"));

    // The first link, then a second for the same email: the first stops.
    let first = invite(&app, &al, " New@Acme.test ", "viewer").await;
    assert_eq!(first.status, 201, "{:?}", first.body);
    let first_token = token(&first.body, "token");
    let r = invite(&app, &al, "new@acme.test", "agent").await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let link = r.body.clone();
    let invitation = token(&link, "token");
    assert!(invitation.starts_with("sbi_") && invitation != first_token);
    assert_eq!(
        (link["email"].as_str(), link["role"].as_str(), link["expired"].as_bool()),
        (Some("new@acme.test"), Some("agent"), Some(false))
    );
    assert_eq!(link["accept_url"], json!(format!("{}/invite#{invitation}", app.base)));
    // The first link is told apart from an unknown one: "use the newer".
    assert_eq!(code(&look(&app, &first_token).await), (410, "invitation_replaced"));
    assert_eq!(code(&accept(&app, &first_token, "new-password-1", "New").await), (410, "invitation_replaced"));
    let pending = app.call("GET", "/api/invitations", Some(&al), None).await;
    assert_eq!(pending.body["items"].as_array().map(Vec::len), Some(1), "{:?}", pending.body);
    assert!(pending.body["items"][0].get("token").is_none(), "a listing never shows the token");
    assert_eq!(app.call("GET", "/api/invitations", Some(&vic), None).await.status, 403);

    // What the link is for; made-up and malformed tokens are unknown.
    let r = look(&app, &invitation).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        (
            r.body["tenant"]["slug"].as_str(),
            r.body["email"].as_str(),
            r.body["role"].as_str(),
            r.body["has_account"].as_bool()
        ),
        (Some("acme"), Some("new@acme.test"), Some("agent"), Some(false))
    );
    for bad in [
        "",
        "sbi_",
        "sbt_whatever",
        &invitation.replace("sbi_", "sbi_x"),
        // Its last character changed (to one it is not).
        &format!("{}{}", &invitation[..invitation.len() - 1], if invitation.ends_with('A') { 'B' } else { 'A' }),
    ] {
        assert_eq!(code(&look(&app, bad).await), (404, "invitation_not_found"), "{bad}");
    }
    // The page the link opens.
    let page = app.client.get(app.url("/invite")).send().await.expect("page");
    assert_eq!(page.status().as_u16(), 200);
    // No other site may frame it, nor learn its address from it.
    let header = |name: &str| page.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(header("x-frame-options").as_deref(), Some("DENY"));
    assert_eq!(header("content-security-policy").as_deref(), Some("frame-ancestors 'none'"));
    assert_eq!(header("referrer-policy").as_deref(), Some("no-referrer"));
    assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"));
    assert!(page.text().await.expect("html").contains("/api/auth/invitation/accept"));

    // A weak password makes nothing; a good one makes the account and the
    // membership, and they sign in with it.
    assert_eq!(code(&accept(&app, &invitation, "short", "Nia").await), (422, "weak_password"));
    assert_eq!(app.count("SELECT count(*) AS n FROM public.users WHERE email = 'new@acme.test'"), 0);
    let r = accept(&app, &invitation, "nia-password-1", "Nia Ode").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(
        (r.body["user"]["name"].as_str(), r.body["role"].as_str(), r.body["tenant"]["slug"].as_str()),
        (Some("Nia Ode"), Some("agent"), Some("acme"))
    );
    // Accepting proved what a login proves: it is one.
    assert_eq!((r.body["token_type"].as_str(), r.body["mfa_setup_required"].as_bool()), (Some("Bearer"), Some(false)));
    let me = app.call("GET", "/api/me", Some(&token(&r.body, "access_token")), None).await;
    assert_eq!((me.status, me.body["role"].as_str()), (200, Some("agent")), "{:?}", me.body);
    let renewed =
        app.call("POST", "/api/auth/refresh", None, Some(json!({"refresh_token": token(&r.body, "refresh_token")})));
    assert_eq!(renewed.await.status, 200);
    let nia = app.login("new@acme.test", "nia-password-1", "acme").await;
    assert_eq!(nia["role"], "agent");
    // A retry is answered the same (a login again: the password is all
    // this account proves); anyone else finds it used.
    let again = accept(&app, &invitation, "nia-password-1", "Nia Ode").await;
    assert_eq!((again.status, again.body["user"]["id"].clone()), (200, r.body["user"]["id"].clone()));
    assert!(again.body["access_token"].is_string(), "{:?}", again.body);
    assert_eq!(code(&accept(&app, &invitation, "someone-else-1", "Eve").await), (409, "invitation_used"));
    assert_eq!(code(&look(&app, &invitation).await), (409, "invitation_used"));
    assert_eq!(app.call("GET", "/api/invitations", Some(&al), None).await.body["items"], json!([]));
    assert_eq!(app.count("SELECT count(*) AS n FROM public.users WHERE email = 'new@acme.test'"), 1);

    // Someone with an account elsewhere proves it as at a login: its
    // password (a wrong one refused, and counted as a failed login of that
    // account), then its second step.
    let bob = token(&app.signup("bobco", "bob@bob.test", "bob-password-1").await, "access_token");
    let begun = json!({"current_password": "bob-password-1"});
    let secret = token(&app.call("POST", "/api/me/mfa", Some(&bob), Some(begun)).await.body, "secret");
    let confirm = json!({"code": crate::mfa::code(&secret, crate::mfa::step_now())});
    let on = app.call("POST", "/api/me/mfa/confirm", Some(&bob), Some(confirm)).await;
    let recovery = crate::mfa::recovery_codes(&on.body);
    let r = invite(&app, &ann, "bob@bob.test", "owner").await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let for_bob = token(&r.body, "token");
    assert_eq!(look(&app, &for_bob).await.body["has_account"], json!(true));
    assert_eq!(code(&accept(&app, &for_bob, "not-bobs-password", "Mallory").await), (401, "invalid_credentials"));
    assert_eq!(code(&accept(&app, &for_bob, "bob-password-1", "Mallory").await), (401, "otp_required"));
    let with = |second: Value| {
        let mut body = json!({"token": for_bob, "password": "bob-password-1", "name": "Mallory"});
        body.as_object_mut().expect("object").extend(second.as_object().expect("object").clone());
        app.call("POST", "/api/auth/invitation/accept", None, Some(body))
    };
    assert_eq!(code(&with(json!({"recovery_code": "aaaaa-bbbbb"})).await), (401, "invalid_otp"));
    assert_eq!(app.count("SELECT count(*) AS n FROM public.memberships m JOIN public.users u ON u.id = m.user_id WHERE u.email = 'bob@bob.test'"), 1);
    // Twenty failures in all hold the account back, here as at a login.
    for _ in 0..18 {
        accept(&app, &for_bob, "not-bobs-password", "Mallory").await;
    }
    let held = accept(&app, &for_bob, "bob-password-1", "Mallory").await;
    assert_eq!(code(&held), (429, "too_many_attempts"));
    app.state.login_throttle.succeeded("bob@bob.test");
    let r = with(json!({"recovery_code": recovery[0]})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["role"], "owner");
    assert_ne!(r.body["user"]["name"], "Mallory", "an account's name is its own");
    let me = app.call("GET", "/api/me", Some(&token(&r.body, "access_token")), None).await;
    assert_eq!((me.status, me.body["tenant"]["slug"].as_str()), (200, Some("acme")), "{:?}", me.body);
    // A retry proves the password alone: the membership, no login.
    let again = accept(&app, &for_bob, "bob-password-1", "Mallory").await;
    assert_eq!((again.status, again.body["role"].as_str()), (200, Some("owner")), "{:?}", again.body);
    assert!(again.body.get("access_token").is_none() && again.body["mfa_setup_required"] == json!(false));
    let second =
        json!({"email": "bob@bob.test", "password": "bob-password-1", "tenant": "acme", "recovery_code": recovery[1]});
    let bob = app.call("POST", "/api/auth/login", None, Some(second)).await.body;
    let me = app.call("GET", "/api/me", Some(&token(&bob, "access_token")), None).await;
    assert_eq!(me.body["memberships"].as_array().map(Vec::len), Some(2));

    // Where the tenant requires two-step sign-in, someone new joins but
    // gets no login until they set it up.
    let at_bobco =
        json!({"email": "bob@bob.test", "password": "bob-password-1", "tenant": "bobco", "recovery_code": recovery[2]});
    let bobco = token(&app.call("POST", "/api/auth/login", None, Some(at_bobco)).await.body, "access_token");
    let r = app.call("PATCH", "/api/tenant", Some(&bobco), Some(json!({"require_mfa": true}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let zoe = json!({"email": "zoe@bob.test", "role": "agent"});
    let r = app.call("POST", "/api/invitations", Some(&bobco), Some(zoe)).await;
    let r = accept(&app, &token(&r.body, "token"), "zoe-password-1", "Zoe").await;
    assert_eq!((r.status, r.body["mfa_setup_required"].as_bool()), (200, Some(true)), "{:?}", r.body);
    assert!(r.body.get("access_token").is_none() && r.body.get("refresh_token").is_none());
    let login = json!({"email": "zoe@bob.test", "password": "zoe-password-1", "tenant": "bobco"});
    assert_eq!(code(&app.call("POST", "/api/auth/login", None, Some(login)).await), (403, "mfa_required"));

    // Revoked, expired. Two at once (a double click): both are made, one
    // after the other; the link of the one replaced says so.
    let (one, two) = futures_util::future::join(
        invite(&app, &al, "cat@acme.test", "agent"),
        invite(&app, &al, "cat@acme.test", "agent"),
    )
    .await;
    assert_eq!((one.status, two.status), (201, 201), "{:?} {:?}", one.body, two.body);
    let mut looked = Vec::new();
    for r in [&one, &two] {
        let seen = look(&app, &token(&r.body, "token")).await;
        let (status, error) = code(&seen);
        looked.push((status, error.to_string()));
    }
    looked.sort();
    assert_eq!(looked, [(200, String::new()), (410, "invitation_replaced".to_string())]);
    let r = invite(&app, &al, "cat@acme.test", "agent").await;
    let (for_cat, cat_id) = (token(&r.body, "token"), token(&r.body, "id"));
    assert_eq!(app.call("DELETE", &format!("/api/invitations/{cat_id}"), Some(&vic), None).await.status, 403);
    assert_eq!(app.call("DELETE", &format!("/api/invitations/{cat_id}"), Some(&al), None).await.status, 204);
    assert_eq!(app.call("DELETE", &format!("/api/invitations/{cat_id}"), Some(&al), None).await.status, 404);
    assert_eq!(app.call("DELETE", "/api/invitations/nope", Some(&al), None).await.status, 404);
    assert_eq!(code(&accept(&app, &for_cat, "cat-password-1", "Cat").await), (404, "invitation_not_found"));
    // What it replaced is unknown now too: there is no newer link to use.
    for r in [&one, &two] {
        assert_eq!(code(&look(&app, &token(&r.body, "token")).await), (404, "invitation_not_found"));
    }
    let r = invite(&app, &al, "dan@acme.test", "agent").await;
    let for_dan = token(&r.body, "token");
    let mut conn = app.db.conn();
    diesel::RunQueryDsl::execute(
        diesel::sql_query(
            "UPDATE public.invitations SET expires_at = now() - interval '1 minute' WHERE email = 'dan@acme.test'",
        ),
        &mut conn,
    )
    .expect("expire");
    assert_eq!(code(&look(&app, &for_dan).await), (410, "invitation_expired"));
    assert_eq!(code(&accept(&app, &for_dan, "dan-password-1", "Dan").await), (410, "invitation_expired"));
    assert_eq!(app.count("SELECT count(*) AS n FROM public.users WHERE email = 'dan@acme.test'"), 0);
    let listed = app.call("GET", "/api/invitations", Some(&al), None).await;
    assert_eq!(listed.body["items"][0]["expired"], json!(true), "{:?}", listed.body);

    // A suspended tenant's links wait for it.
    let r = invite(&app, &al, "eve@acme.test", "agent").await;
    let for_eve = token(&r.body, "token");
    switchboard::tenancy::set_status(&mut conn, "acme", switchboard::tenancy::TenantStatus::Suspended)
        .expect("suspend");
    assert_eq!(code(&look(&app, &for_eve).await), (403, "tenant_suspended"));
    assert_eq!(code(&accept(&app, &for_eve, "eve-password-1", "Eve").await), (403, "tenant_suspended"));
    switchboard::tenancy::set_status(&mut conn, "acme", switchboard::tenancy::TenantStatus::Active).expect("resume");
    // The suspension ended every login: al and ann sign in again.
    assert_eq!(code(&invite(&app, &al, "zed@acme.test", "agent").await), (401, "login_ended"));
    let al = token(&app.login("al@acme.test", "al-password-1", "acme").await, "access_token");
    let ann = token(&app.login("ann@acme.test", "ann-password-1", "acme").await, "access_token");

    // Two people racing with one link: one account, one member.
    let (a, b) = tokio::join!(
        accept(&app, &for_eve, "eve-password-1", "Eve"),
        accept(&app, &for_eve, "mallory-password", "Mallory")
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409], "{:?} {:?}", a.body, b.body);
    assert_eq!(app.count("SELECT count(*) AS n FROM public.users WHERE email = 'eve@acme.test'"), 1);

    // A thousand pending at most (with the expired one above); inviting
    // one of them again still works.
    let tenant = app.count("SELECT id AS n FROM public.tenants WHERE slug = 'acme'");
    diesel::RunQueryDsl::execute(
        diesel::sql_query(format!(
            "INSERT INTO public.invitations (tenant_id, email, role, token_hash, expires_at) \
             SELECT {tenant}, 'bulk' || i || '@acme.test', 'agent', decode(md5(i::text), 'hex'), now() + interval '1 day' \
               FROM generate_series(1, 999) AS i"
        )),
        &mut conn,
    )
    .expect("bulk");
    assert_eq!(code(&invite(&app, &al, "one-more@acme.test", "agent").await), (409, "too_many_invitations"));
    assert_eq!(invite(&app, &al, "bulk7@acme.test", "agent").await.status, 201);

    // The audit log tells who invited whom, and who came in by a link.
    let log = app.call("GET", "/api/audit-log?limit=200", Some(&ann), None).await.body;
    assert_eq!(audited(&log, "member.invited").len(), 9, "{log}");
    assert_eq!(audited(&log, "invitation.revoked").len(), 1);
    let joined = audited(&log, "member.added").into_iter().filter(|e| e["details"]["by"] == "invitation").count();
    assert_eq!(joined, 3);
    assert!(!log.to_string().contains("sbi_"), "no token in the audit log");
}

/// Re-inviting one email in a loop keeps only the latest replaced links
/// told apart ("use the newer one"); older ones are unknown.
#[actix_web::test]
async fn only_the_latest_replaced_links_are_kept() {
    let app = spawn_app().await;
    let ann = token(&app.signup("acme", "ann@acme.test", "ann-password-1").await, "access_token");
    let kept = switchboard::auth::invitations::MOST_REPLACED_KEPT as usize;
    let mut links = Vec::new();
    for _ in 0..kept + 3 {
        let r = invite(&app, &ann, "loop@acme.test", "agent").await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        links.push(token(&r.body, "token"));
    }
    assert_eq!(app.count("SELECT count(*) AS n FROM public.replaced_invitations"), kept as i64);
    let (latest, replaced) = links.split_last().expect("links");
    assert_eq!(look(&app, latest).await.status, 200);
    for (i, link) in replaced.iter().enumerate() {
        let want = if i < 2 { (404, "invitation_not_found") } else { (410, "invitation_replaced") };
        assert_eq!(code(&look(&app, link).await), want, "link {i}");
    }
}

/// An invitation grants what its inviter may grant: an admin made an
/// agent, an owner made an admin, or an admin removed takes back the
/// pending invitations they could not make now (a link kept for their own
/// address would otherwise let them back in); others' stay.
#[actix_web::test]
async fn invitations_go_with_the_power_of_who_sent_them() {
    let app = spawn_app().await;
    let ann = token(&app.signup("acme", "ann@acme.test", "ann-password-1").await, "access_token");
    let bea = json!({"email": "bea@acme.test", "role": "admin", "password": "bea-password-1"});
    let r = app.call("POST", "/api/members", Some(&ann), Some(bea)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let bea_id = r.body["user_id"].as_str().expect("id").to_string();
    let bea = || async { token(&app.login("bea@acme.test", "bea-password-1", "acme").await, "access_token") };
    let role = |role: &str| {
        let (app, ann, path) = (&app, ann.clone(), format!("/api/members/{bea_id}"));
        let body = json!({"role": role});
        async move {
            let r = app.call("PATCH", &path, Some(&ann), Some(body)).await;
            assert_eq!(r.status, 200, "{:?}", r.body);
        }
    };
    let link = |r: crate::common::Resp| {
        assert_eq!(r.status, 201, "{:?}", r.body);
        token(&r.body, "token")
    };
    let pending = || async {
        let r = app.call("GET", "/api/invitations", Some(&ann), None).await;
        let mut emails: Vec<String> = r.body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["email"].as_str().expect("email").into())
            .collect();
        emails.sort();
        emails
    };

    // Bea, an admin, invites an agent and (to her own other address) an
    // admin; Ann invites someone too.
    let as_admin = bea().await;
    let agent = link(invite(&app, &as_admin, "cy@acme.test", "agent").await);
    let own = link(invite(&app, &as_admin, "bea.private@mail.test", "admin").await);
    let anns = link(invite(&app, &ann, "dee@acme.test", "agent").await);
    // Made an agent, she may invite no one: hers are taken back.
    role("agent").await;
    assert_eq!(pending().await, ["dee@acme.test"]);
    for gone in [&agent, &own] {
        assert_eq!(code(&look(&app, gone).await), (404, "invitation_not_found"));
        assert_eq!(code(&accept(&app, gone, "a-new-password-1", "Bea").await), (404, "invitation_not_found"));
    }
    assert_eq!(look(&app, &anns).await.status, 200, "another admin's stays");

    // An owner made an admin keeps what an admin may grant.
    role("owner").await;
    let as_owner = bea().await;
    let owner = link(invite(&app, &as_owner, "eve@acme.test", "owner").await);
    let viewer = link(invite(&app, &as_owner, "fay@acme.test", "viewer").await);
    role("admin").await;
    assert_eq!(code(&look(&app, &owner).await), (404, "invitation_not_found"));
    assert_eq!(pending().await, ["dee@acme.test", "fay@acme.test"]);

    // Removed, she takes back the rest; an accept of what stays works.
    let r = app.call("DELETE", &format!("/api/members/{bea_id}"), Some(&ann), None).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    assert_eq!(code(&look(&app, &viewer).await), (404, "invitation_not_found"));
    assert_eq!(pending().await, ["dee@acme.test"]);
    assert_eq!(accept(&app, &anns, "dee-password-1", "Dee").await.status, 200);

    let log = app.call("GET", "/api/audit-log?limit=200", Some(&ann), None).await.body;
    let said = |e: &Value, key: &str| e["details"][key].as_str().unwrap_or("").to_string();
    let mut taken: Vec<String> =
        audited(&log, "invitation.revoked").iter().map(|e| format!("{} {}", said(e, "email"), said(e, "by"))).collect();
    taken.sort();
    assert_eq!(
        taken,
        [
            "bea.private@mail.test role_changed",
            "cy@acme.test role_changed",
            "eve@acme.test role_changed",
            "fay@acme.test member_removed"
        ]
    );
}

/// An invitation written while its sender is being made an agent does not
/// slip past the change: it waits for it and is refused (401
/// `token_revoked`, as the guard answers a role that changed), so nothing
/// is left that the change could not take back.
#[actix_web::test]
async fn an_invitation_sent_during_its_senders_demotion_is_refused() {
    let app = spawn_app().await;
    let ann = token(&app.signup("acme", "ann@acme.test", "ann-password-1").await, "access_token");
    let bea = json!({"email": "bea@acme.test", "role": "admin", "password": "bea-password-1"});
    let r = app.call("POST", "/api/members", Some(&ann), Some(bea)).await;
    let bea_id: i64 = r.body["user_id"].as_str().expect("id").parse().expect("number");
    let bea = token(&app.login("bea@acme.test", "bea-password-1", "acme").await, "access_token");

    // The change, held open by another connection until the invitation
    // waits for it (at most 5 s).
    let change = format!("BEGIN; UPDATE public.memberships SET role = 'agent' WHERE user_id = {bea_id}");
    let (changed, change) = crate::common::transaction_held_until_waited(&app.db.url, change, None);
    changed.recv().expect("changed");
    let r = invite(&app, &bea, "cy@acme.test", "agent").await;
    let (waited, went) = change.join().expect("the change's thread");
    assert_eq!(went, Ok(()));
    assert_eq!(code(&r), (401, "token_revoked"), "{:?}", r.body);
    assert!(waited, "the invitation waited for the change");
    let pending = app.call("GET", "/api/invitations", Some(&ann), None).await;
    assert_eq!(pending.body["items"], json!([]), "nothing pending");
}

/// Someone invited who is then added directly (by an admin) is a member:
/// their invitation is no longer listed as pending, and its link answers
/// as a used one, whose accept with their password still logs them in.
#[actix_web::test]
async fn an_invitation_of_someone_added_directly_is_settled() {
    let app = spawn_app().await;
    let ann = token(&app.signup("acme", "ann@acme.test", "ann-password-1").await, "access_token");
    let r = invite(&app, &ann, "gus@acme.test", "viewer").await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let link = token(&r.body, "token");
    let gus = json!({"email": "Gus@acme.test", "role": "agent", "password": "gus-password-1"});
    let r = app.call("POST", "/api/members", Some(&ann), Some(gus)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);

    let pending = app.call("GET", "/api/invitations", Some(&ann), None).await;
    assert_eq!(pending.body["items"], json!([]), "not pending for a member");
    assert_eq!(code(&look(&app, &link).await), (409, "invitation_used"));
    let r = accept(&app, &link, "gus-password-1", "").await;
    assert_eq!((r.status, r.body["role"].as_str()), (200, Some("agent")), "{:?}", r.body);
    assert!(r.body["access_token"].is_string(), "{:?}", r.body);
    assert_eq!(code(&accept(&app, &link, "not-his-password-1", "").await), (409, "invitation_used"));
}
