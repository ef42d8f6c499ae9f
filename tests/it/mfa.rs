//! Two-step sign-in (`auth::mfa`), through the API, with codes made here as
//! an authenticator app makes them.

use hmac::{Hmac, Mac};
use serde_json::{json, Value};

use crate::common::{spawn_app, token, TestApp};

/// RFC 4648 base32 (no padding) back to bytes.
fn unbase32(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u64, 0);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => panic!("not base32: {s}"),
        };
        buffer = (buffer << 5) | u64::from(v);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    out
}

/// The six digits an authenticator app shows for `step` (30-second steps).
pub(crate) fn code(secret: &str, step: i64) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&unbase32(secret)).expect("key");
    mac.update(&(step as u64).to_be_bytes());
    let h = mac.finalize().into_bytes();
    let o = (h[19] & 0xf) as usize;
    let n = u32::from_be_bytes([h[o] & 0x7f, h[o + 1], h[o + 2], h[o + 3]]) % 1_000_000;
    format!("{n:06}")
}

/// The step of the last code the server took.
fn last_step_taken(app: &TestApp) -> i64 {
    app.count("SELECT coalesce(max(totp_last_step), 0) AS n FROM public.users")
}

/// The recovery codes of an answer.
pub(crate) fn recovery_codes(answer: &Value) -> Vec<String> {
    answer["recovery_codes"].as_array().expect("codes").iter().map(|c| c.as_str().expect("a code").into()).collect()
}

pub(crate) fn step_now() -> i64 {
    chrono::Utc::now().timestamp() / 30
}

/// A code that is none of the steps around now.
fn wrong(secret: &str) -> String {
    let now = step_now();
    let taken: Vec<String> = (now - 2..=now + 2).map(|s| code(secret, s)).collect();
    (0..1_000_000).map(|n| format!("{n:06}")).find(|c| !taken.contains(c)).expect("a wrong code")
}

async fn login(app: &TestApp, extra: Value) -> (u16, Value) {
    let mut body = json!({"email": "ann@acme.test", "password": "ann-password-1", "tenant": "acme"});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    let r = app.call("POST", "/api/auth/login", None, Some(body)).await;
    (r.status, r.body)
}

/// Turned on with the password and a code of the new secret (other logins
/// end; recovery codes shown once); then a login needs a code, each taken
/// once, or a recovery code, each good once; wrong ones are told apart from
/// a missing one but not from each other; turned off with the password and
/// a code; an operator turns it off for a lost phone.
#[actix_web::test]
async fn two_step_sign_in_asks_a_code_once_it_is_on() {
    let app = spawn_app().await;
    let first = app.signup("acme", "ann@acme.test", "ann-password-1").await;
    let ann = token(&first, "access_token");
    assert_eq!(first["user"]["mfa_enabled"], false);
    let other = app.login("ann@acme.test", "ann-password-1", "acme").await;

    let r = app.call("POST", "/api/me/mfa", Some(&ann), Some(json!({"current_password": "nope-nope-1"}))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("wrong_password")), "{:?}", r.body);
    let r = app.call("POST", "/api/me/mfa/confirm", Some(&ann), Some(json!({"code": "123456"}))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("mfa_not_started")), "{:?}", r.body);
    let r = app.call("POST", "/api/me/mfa", Some(&ann), Some(json!({"current_password": "ann-password-1"}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let secret = r.body["secret"].as_str().expect("secret").to_string();
    assert_eq!(secret.len(), 32, "160 bits");
    let url = r.body["otpauth_url"].as_str().expect("otpauth_url");
    assert!(url.starts_with("otpauth://totp/Switchboard%3Aann%40acme.test?secret="), "{url}");
    assert!(url.contains(&format!("secret={secret}&issuer=Switchboard")), "{url}");
    // Not on until confirmed: a login needs no code yet.
    assert_eq!(login(&app, json!({})).await.0, 200);
    let r = app.call("POST", "/api/me/mfa/confirm", Some(&ann), Some(json!({"code": wrong(&secret)}))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_otp")), "{:?}", r.body);
    let confirm = code(&secret, step_now());
    let r = app.call("POST", "/api/me/mfa/confirm", Some(&ann), Some(json!({"code": confirm}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let recovery = recovery_codes(&r.body);
    assert_eq!(recovery.len(), 10);
    assert!(recovery.iter().all(|c| c.len() == 11), "{recovery:?}");
    let r = app.call("POST", "/api/me/mfa/confirm", Some(&ann), Some(json!({"code": confirm}))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("mfa_enabled")), "{:?}", r.body);
    let me = app.call("GET", "/api/me", Some(&ann), None).await;
    assert_eq!((me.status, &me.body["user"]["mfa_enabled"]), (200, &json!(true)), "{:?}", me.body);
    // Admins see who signs in in two steps.
    let members = app.call("GET", "/api/members", Some(&ann), None).await.body;
    assert_eq!(members["items"][0]["mfa_enabled"], true, "{members}");
    // The other login ended; this one goes on.
    let refresh = json!({"refresh_token": token(&other, "refresh_token")});
    assert_eq!(app.call("POST", "/api/auth/refresh", None, Some(refresh)).await.status, 401);

    // A login now: the password, then a code.
    let (status, body) = login(&app, json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("otp_required")), "{body}");
    let (status, body) = login(&app, json!({"password": "nope-nope-1", "otp": code(&secret, step_now())})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_credentials")), "{body}");
    let (status, body) = login(&app, json!({"otp": wrong(&secret)})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_otp")), "{body}");
    // The code that turned it on was taken: not again.
    let (status, body) = login(&app, json!({"otp": confirm})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_otp")), "{body}");
    // The app's next code (a clock a step ahead) is taken, once.
    let next = code(&secret, step_now() + 1);
    let (status, body) = login(&app, json!({"otp": format!("{} {}", &next[..3], &next[3..])})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["mfa_enabled"], true);
    let (status, body) = login(&app, json!({"otp": next})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_otp")), "{body}");
    // A recovery code, in any case and spacing, once.
    let (status, body) = login(&app, json!({"recovery_code": recovery[0].to_uppercase().replace('-', " ")})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = login(&app, json!({"recovery_code": recovery[0]})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_otp")), "{body}");

    // New recovery codes, with a code from the app; the old ones stop.
    let renew = |code: String| json!({"code": code});
    let r = app.call("POST", "/api/me/mfa/recovery-codes", Some(&ann), Some(renew(wrong(&secret)))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("invalid_otp")), "{:?}", r.body);
    let taken = last_step_taken(&app);
    let r = app.call("POST", "/api/me/mfa/recovery-codes", Some(&ann), Some(renew(code(&secret, taken)))).await;
    assert_eq!(
        (r.status, r.body["error"]["code"].as_str()),
        (403, Some("invalid_otp")),
        "the login took it: {:?}",
        r.body
    );
    // A minute and a half later (the last code taken set back, rather than waited for).
    app.count("WITH back AS (UPDATE public.users SET totp_last_step = totp_last_step - 3 RETURNING 1) SELECT count(*) AS n FROM back");
    let soon = code(&secret, step_now());
    let r = app.call("POST", "/api/me/mfa/recovery-codes", Some(&ann), Some(renew(soon))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let old = recovery.clone();
    let recovery = recovery_codes(&r.body);
    assert_eq!(recovery.len(), 10);
    let (status, body) = login(&app, json!({"recovery_code": old[2]})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("invalid_otp")), "an old one: {body}");

    // Off: the password and a code (a recovery code will do).
    let off = |password: &str, code: &str| json!({"current_password": password, "code": code});
    let r = app.call("DELETE", "/api/me/mfa", Some(&ann), Some(off("ann-password-1", &wrong(&secret)))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("invalid_otp")), "{:?}", r.body);
    let r = app.call("DELETE", "/api/me/mfa", Some(&ann), Some(off("nope-nope-1", &recovery[1]))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("wrong_password")), "{:?}", r.body);
    let r = app.call("DELETE", "/api/me/mfa", Some(&ann), Some(off("ann-password-1", &recovery[1]))).await;
    assert_eq!(r.status, 204, "{:?}", r.body);
    let (status, body) = login(&app, json!({})).await;
    assert_eq!((status, &body["user"]["mfa_enabled"]), (200, &json!(false)), "{body}");
    let r = app.call("DELETE", "/api/me/mfa", Some(&ann), Some(off("ann-password-1", &recovery[2]))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("mfa_not_enabled")), "{:?}", r.body);
    let log = app.call("GET", "/api/audit-log?limit=200", Some(&ann), None).await.body;
    let actions: Vec<&str> =
        log["items"].as_array().expect("items").iter().filter_map(|e| e["action"].as_str()).collect();
    assert!(actions.contains(&"account.mfa_enabled") && actions.contains(&"account.mfa_disabled"), "{actions:?}");
    assert_eq!(app.count("SELECT count(*) AS n FROM public.recovery_codes"), 0, "gone with it");

    // On again, then an operator turns it off (a lost phone).
    let r = app.call("POST", "/api/me/mfa", Some(&ann), Some(json!({"current_password": "ann-password-1"}))).await;
    let secret = r.body["secret"].as_str().expect("secret").to_string();
    assert_ne!(app.count("SELECT count(*) AS n FROM public.users WHERE totp_secret_enc LIKE '%:%'"), 0, "sealed");
    let r = app.call("POST", "/api/me/mfa/confirm", Some(&ann), Some(json!({"code": code(&secret, step_now())}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(login(&app, json!({})).await.0, 401);
    let email = switchboard::auth::users::Email::parse("ann@acme.test").expect("email");
    let mut conn = app.pool.get().expect("conn");
    assert!(switchboard::auth::mfa::turn_off_for(&mut conn, &email).expect("off"));
    assert_eq!(login(&app, json!({})).await.0, 200);

    // Wrong codes count with the account's failed logins: guessing them is
    // no faster than guessing the password.
    let r = app.call("POST", "/api/me/mfa", Some(&ann), Some(json!({"current_password": "ann-password-1"}))).await;
    let secret = r.body["secret"].as_str().expect("secret").to_string();
    let r = app.call("POST", "/api/me/mfa/confirm", Some(&ann), Some(json!({"code": code(&secret, step_now())}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    for _ in 0..20 {
        assert_eq!(login(&app, json!({"otp": wrong(&secret)})).await.0, 401);
    }
    let (status, body) = login(&app, json!({"otp": code(&secret, step_now() + 1)})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("too_many_attempts")), "{body}");
}

/// An owner who signs in in two steps may require it of every member: one
/// without it cannot log in, their logins end at the next refresh, and they
/// set it up with their password, which logs them in; lifted, logins need
/// no code again.
#[actix_web::test]
async fn a_tenant_may_require_two_step_sign_in() {
    let app = spawn_app().await;
    let ann = token(&app.signup("acme", "ann@acme.test", "ann-password-1").await, "access_token");
    let member = json!({"email": "bo@acme.test", "role": "agent", "password": "bo-password-1"});
    assert_eq!(app.call("POST", "/api/members", Some(&ann), Some(member)).await.status, 201);
    let bo = app.login("bo@acme.test", "bo-password-1", "acme").await;
    let made = json!({"name": "bo's script"});
    let r = app.call("POST", "/api/me/tokens", Some(&token(&bo, "access_token")), Some(made)).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let script = r.body["token"].as_str().expect("an API token").to_string();
    let require = |on: bool| json!({"require_mfa": on});
    let r = app.call("PATCH", "/api/tenant", Some(&token(&bo, "access_token")), Some(require(true))).await;
    assert_eq!(r.status, 403, "owners only: {:?}", r.body);
    let r = app.call("PATCH", "/api/tenant", Some(&ann), Some(require(true))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("mfa_not_enabled")), "{:?}", r.body);
    let r = app.call("POST", "/api/me/mfa", Some(&ann), Some(json!({"current_password": "ann-password-1"}))).await;
    let secret = r.body["secret"].as_str().expect("secret").to_string();
    let r = app.call("POST", "/api/me/mfa/confirm", Some(&ann), Some(json!({"code": code(&secret, step_now())}))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = app.call("PATCH", "/api/tenant", Some(&ann), Some(require(true))).await;
    assert_eq!(
        (r.status, &r.body["require_mfa"], &r.body["slug"]),
        (200, &json!(true), &json!("acme")),
        "{:?}",
        r.body
    );
    let r = app.call("GET", "/api/tenant", Some(&token(&bo, "access_token")), None).await;
    assert_eq!((r.status, &r.body["require_mfa"]), (200, &json!(true)), "{:?}", r.body);
    // Ann cannot turn hers off while it is required where she works.
    let off = json!({"current_password": "ann-password-1", "code": code(&secret, step_now() + 1)});
    let r = app.call("DELETE", "/api/me/mfa", Some(&ann), Some(off)).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (409, Some("mfa_required_by_tenant")), "{:?}", r.body);
    assert!(r.body["error"]["message"].as_str().is_some_and(|m| m.contains("acme")), "{:?}", r.body);

    // Bo, without it: no login, and the one he has ends at its refresh.
    let refresh = json!({"refresh_token": token(&bo, "refresh_token")});
    let r = app.call("POST", "/api/auth/refresh", None, Some(refresh.clone())).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("mfa_required")), "{:?}", r.body);
    assert_eq!(app.call("POST", "/api/auth/refresh", None, Some(refresh)).await.status, 401, "ended");
    // His API token, for scripts, goes on working.
    assert_eq!(app.call("GET", "/api/me", Some(&script), None).await.status, 200);
    let bo_login = json!({"email": "bo@acme.test", "password": "bo-password-1", "tenant": "acme"});
    let r = app.call("POST", "/api/auth/login", None, Some(bo_login.clone())).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (403, Some("mfa_required")), "{:?}", r.body);

    // He sets it up with his password, and is logged in.
    let wrong_password = json!({"email": "bo@acme.test", "password": "nope-nope-1", "tenant": "acme"});
    let r = app.call("POST", "/api/auth/mfa-setup", None, Some(wrong_password)).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (401, Some("invalid_credentials")), "{:?}", r.body);
    let r = app.call("POST", "/api/auth/mfa-setup", None, Some(bo_login.clone())).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let bo_secret = r.body["secret"].as_str().expect("secret").to_string();
    let with_code = |c: &str| {
        let mut b = bo_login.clone();
        b["code"] = json!(c);
        b
    };
    let r = app.call("POST", "/api/auth/mfa-setup/confirm", None, Some(bo_login.clone())).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("code_required")), "{:?}", r.body);
    let r = app.call("POST", "/api/auth/mfa-setup/confirm", None, Some(with_code(&wrong(&bo_secret)))).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (422, Some("invalid_otp")), "{:?}", r.body);
    let r = app.call("POST", "/api/auth/mfa-setup/confirm", None, Some(with_code(&code(&bo_secret, step_now())))).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!((&r.body["user"]["mfa_enabled"], &r.body["tenant"]["require_mfa"]), (&json!(true), &json!(true)));
    assert_eq!(recovery_codes(&r.body).len(), 10);
    let me = app.call("GET", "/api/me", Some(&token(&r.body, "access_token")), None).await;
    assert_eq!(me.status, 200, "the login works: {:?}", me.body);
    let r = app.call("POST", "/api/auth/login", None, Some(bo_login.clone())).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (401, Some("otp_required")), "{:?}", r.body);

    // Lifted: a member without it logs in as before.
    let member = json!({"email": "cy@acme.test", "role": "viewer", "password": "cy-password-1"});
    assert_eq!(app.call("POST", "/api/members", Some(&ann), Some(member)).await.status, 201);
    let cy_login = json!({"email": "cy@acme.test", "password": "cy-password-1", "tenant": "acme"});
    assert_eq!(app.call("POST", "/api/auth/login", None, Some(cy_login.clone())).await.status, 403);
    let r = app.call("PATCH", "/api/tenant", Some(&ann), Some(require(false))).await;
    assert_eq!((r.status, &r.body["require_mfa"]), (200, &json!(false)), "{:?}", r.body);
    assert_eq!(app.call("POST", "/api/auth/login", None, Some(cy_login)).await.status, 200);
    let log = app.call("GET", "/api/audit-log?limit=200", Some(&ann), None).await.body;
    let changes = log["items"].as_array().expect("items").iter().filter(|e| e["action"] == "tenant.updated").count();
    assert_eq!(changes, 2);
}
