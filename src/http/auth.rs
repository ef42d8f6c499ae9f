//! `/api/auth/*` and `/api/me`.

use super::json::Json;
use actix_web::{web, HttpResponse};
use serde::Deserialize;
use std::time::Instant;

use super::pagination::{PageQuery, Paged};
use super::AppState;
use crate::auth::account::{self, AccountChanges};
use crate::auth::invitations::{self, Acceptance};
use crate::auth::password::PasswordHash;
use crate::auth::password_reset;
use crate::auth::users::Email;
use crate::auth::{api_tokens, logins, mfa, session, AuthContext, JwtKeys, Role};
use crate::db::TenantScope;
use crate::error::{AppError, AppResult, ErrorKind};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(super::resource("/auth/login").post(login))
        .service(super::resource("/auth/refresh").post(refresh))
        .service(super::resource("/auth/logout").post(logout))
        .service(super::resource("/auth/mfa-setup").post(mfa_setup))
        .service(super::resource("/auth/mfa-setup/confirm").post(mfa_setup_confirm))
        .service(super::resource("/auth/invitation").post(invitation))
        .service(super::resource("/auth/invitation/accept").post(accept_invitation))
        .service(super::resource("/auth/password-reset").post(password_reset))
        .service(super::resource("/auth/password-reset/confirm").post(password_reset_confirm))
        .service(super::resource("/me").get(me).patch(change_me))
        .service(super::resource("/me/mfa").post(mfa_enroll).delete(mfa_disable))
        .service(super::resource("/me/mfa/confirm").post(mfa_confirm))
        .service(super::resource("/me/mfa/recovery-codes").post(mfa_recovery_codes))
        .service(super::resource("/me/logins").get(my_logins).delete(end_other_logins))
        .service(super::resource("/me/logins/{id}").delete(end_login))
        .service(super::resource("/me/tokens").get(my_tokens).post(create_token))
        .service(super::resource("/me/tokens/{id}").delete(revoke_token))
        .service(super::resource("/api-tokens").get(all_tokens))
        .service(super::resource("/api-tokens/{id}").delete(revoke_token));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    #[serde(default)]
    expires_in_days: Option<i64>,
}

/// `GET /api/me/tokens`: the caller's API tokens here (`auth::api_tokens`).
async fn my_tokens(
    state: web::Data<AppState>,
    auth: AuthContext,
    page: web::Query<PageQuery>,
) -> AppResult<HttpResponse> {
    let page = page.parse()?;
    let user = auth.user;
    let items = state.db.tenant(auth.scope(), move |tc| api_tokens::list(tc, Some(user))).await?;
    Ok(HttpResponse::Ok().json(Paged::whole(items, &page)))
}

/// `GET /api/api-tokens` (admins): every member's tokens here.
async fn all_tokens(
    state: web::Data<AppState>,
    auth: AuthContext,
    page: web::Query<PageQuery>,
) -> AppResult<HttpResponse> {
    let page = page.parse()?;
    auth.require(Role::Admin)?;
    let items = state.db.tenant(auth.scope(), move |tc| api_tokens::list(tc, None)).await?;
    Ok(HttpResponse::Ok().json(Paged::whole(items, &page)))
}

/// `POST /api/me/tokens` `{name, expires_in_days?}`: 201 with the token,
/// shown this once.
async fn create_token(state: web::Data<AppState>, auth: AuthContext, body: Json<NewToken>) -> AppResult<HttpResponse> {
    let body = body.into_inner();
    let created = state
        .db
        .tenant(auth.scope(), move |tc| api_tokens::create(tc, &auth, &body.name, body.expires_in_days))
        .await?;
    Ok(HttpResponse::Created().json(created))
}

/// `DELETE /api/me/tokens/{id}` (one's own) and `/api/api-tokens/{id}`
/// (an admin's, anyone's): 204.
async fn revoke_token(
    state: web::Data<AppState>,
    auth: AuthContext,
    path: web::Path<String>,
) -> AppResult<HttpResponse> {
    let id = path.parse::<i64>().map_err(|_| AppError::not_found("token"))?;
    state.db.tenant(auth.scope(), move |tc| api_tokens::revoke(tc, &auth, id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    email: String,
    password: String,
    tenant: String,
    /// The second step of a person who turned it on (`auth::mfa`).
    #[serde(default)]
    otp: Option<String>,
    #[serde(default)]
    recovery_code: Option<String>,
}

/// Holds back a caller whose account has used up its failed passwords.
fn throttled(state: &AppState, email: &str) -> AppResult<()> {
    state.login_throttle.check(email, Instant::now()).map_err(|wait| {
        let secs = wait.as_secs() + 1;
        AppError::new(
            ErrorKind::RateLimited,
            "too_many_attempts",
            format!("too many failed logins for this account; try again in {secs} s"),
        )
        .retry_after(secs)
    })
}

async fn login(state: web::Data<AppState>, keys: web::Data<JwtKeys>, body: Json<LoginBody>) -> AppResult<HttpResponse> {
    let body = body.into_inner();
    let keys = keys.into_inner();
    let email = body.email.clone();
    throttled(&state, &email)?;
    let keyring = state.keys.clone();
    let second = mfa::SecondStep { otp: body.otp, recovery_code: body.recovery_code };
    let result = state
        .db
        .public(move |conn| session::login(conn, &keys, &keyring, &body.email, &body.password, &body.tenant, &second))
        .await;
    counts(&state, &email, &result);
    if let Ok(pair) = &result {
        tracing::info!(tenant = %pair.tenant.slug, user_id = %pair.user.id, "login");
    }
    Ok(HttpResponse::Ok().json(result?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

async fn refresh(
    state: web::Data<AppState>,
    keys: web::Data<JwtKeys>,
    body: Json<RefreshBody>,
) -> AppResult<HttpResponse> {
    let token = body.into_inner().refresh_token;
    let keys = keys.into_inner();
    let pair = state.db.public(move |conn| session::refresh(conn, &keys, &token)).await?;
    Ok(HttpResponse::Ok().json(pair))
}

async fn logout(state: web::Data<AppState>, body: Json<RefreshBody>) -> AppResult<HttpResponse> {
    let token = body.into_inner().refresh_token;
    state.db.public(move |conn| session::logout(conn, &token)).await?;
    Ok(HttpResponse::NoContent().finish())
}

async fn me(state: web::Data<AppState>, auth: AuthContext) -> AppResult<HttpResponse> {
    let me = state.db.tenant(auth.scope(), move |tc| session::me(tc.pg(), auth.user, auth.tenant, auth.role)).await?;
    Ok(HttpResponse::Ok().json(me))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MeChange {
    name: Option<String>,
    current_password: Option<String>,
    new_password: Option<String>,
    email_notifications: Option<crate::auth::members::PrefsChange>,
    inbox_notifications: Option<crate::auth::members::InboxPrefsChange>,
    /// Left out: unchanged; `null` or blank: none.
    #[serde(default, deserialize_with = "crate::patch::present")]
    signature: Option<Option<String>>,
}

/// `PATCH /api/me`: one's own name and password (see [`account`]). Answers
/// as `GET /api/me` does.
async fn change_me(state: web::Data<AppState>, auth: AuthContext, body: Json<MeChange>) -> AppResult<HttpResponse> {
    let body = body.into_inner();
    let checks_password = body.current_password.is_some();
    let email = if checks_password { Some(counting(&state, &auth).await?) } else { None };
    // Hashing the new password (tens of ms) runs on the blocking pool too.
    let changes = web::block(move || {
        AccountChanges::checked(
            body.name,
            body.current_password,
            body.new_password,
            body.email_notifications,
            body.inbox_notifications,
            body.signature,
        )
    })
    .await??;
    let result = state
        .db
        .tenant(auth.scope(), move |tc| {
            let changed = account::change(tc, auth.user, &auth.family, changes)?;
            Ok::<_, AppError>((changed, session::me(tc.pg(), auth.user, auth.tenant, auth.role)?))
        })
        .await;
    if let Some(email) = email {
        counts(&state, &email, &result);
    }
    let (changed, me) = result?;
    if !changed.is_empty() {
        tracing::info!(user_id = %auth.user, ?changed, "account changed");
    }
    Ok(HttpResponse::Ok().json(me))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MfaEnroll {
    current_password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MfaConfirm {
    code: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MfaDisable {
    current_password: String,
    code: String,
}

/// Runs `work` (which checks the caller's password or code) behind the
/// account's failed-login count: a wrong password or code counts as a
/// failed login, so a stolen access token buys no more guesses.
async fn counted<T: Send + 'static>(
    state: &AppState,
    auth: &AuthContext,
    work: impl FnOnce(&mut crate::db::TenantConn<'_>) -> AppResult<T> + Send + 'static,
) -> AppResult<T> {
    let email = counting(state, auth).await?;
    let result = state.db.tenant(auth.scope(), work).await;
    counts(state, &email, &result);
    result
}

/// The email the caller's failed logins are counted under, once it is not
/// held back (429) — checked before any password is hashed or compared.
async fn counting(state: &AppState, auth: &AuthContext) -> AppResult<String> {
    let user = auth.user;
    let email = state.db.public(move |conn| account::email_of(conn, user)).await?;
    throttled(state, &email)?;
    Ok(email)
}

/// Counts how a check of `email`'s password or code went: a wrong one is a
/// failed login of the account; a success clears the count.
fn counts<T>(state: &AppState, email: &str, result: &AppResult<T>) {
    match result {
        Ok(_) => state.login_throttle.succeeded(email),
        Err(e) if [session::INVALID_CREDENTIALS, account::WRONG_PASSWORD, mfa::INVALID_OTP].contains(&&*e.code) => {
            state.login_throttle.failed(email, Instant::now())
        }
        Err(_) => {}
    }
}

/// `POST /api/me/mfa` `{current_password}`: a new authenticator secret,
/// pending until confirmed (`auth::mfa`).
async fn mfa_enroll(state: web::Data<AppState>, auth: AuthContext, body: Json<MfaEnroll>) -> AppResult<HttpResponse> {
    let (keys, password, user) = (state.keys.clone(), body.into_inner().current_password, auth.user);
    let enrollment = counted(&state, &auth, move |tc| mfa::enroll(tc, &keys, user, &password)).await?;
    Ok(HttpResponse::Ok().json(enrollment))
}

/// `POST /api/me/mfa/confirm` `{code}`: turns two-step sign-in on; answers
/// the recovery codes, this once.
async fn mfa_confirm(state: web::Data<AppState>, auth: AuthContext, body: Json<MfaConfirm>) -> AppResult<HttpResponse> {
    let (keys, code, user, family) = (state.keys.clone(), body.into_inner().code, auth.user, auth.family.clone());
    let codes = state
        .db
        .tenant(auth.scope(), move |tc| mfa::confirm(tc, &keys, user, &family, &code, chrono::Utc::now()))
        .await?;
    tracing::info!(user_id = %auth.user, "two-step sign-in turned on");
    Ok(HttpResponse::Ok().json(codes))
}

/// `DELETE /api/me/mfa` `{current_password, code}`: turns it off (204).
async fn mfa_disable(state: web::Data<AppState>, auth: AuthContext, body: Json<MfaDisable>) -> AppResult<HttpResponse> {
    let body = body.into_inner();
    let (keys, user) = (state.keys.clone(), auth.user);
    counted(&state, &auth, move |tc| {
        mfa::disable(tc, &keys, user, &body.current_password, &body.code, chrono::Utc::now())
    })
    .await?;
    tracing::info!(user_id = %auth.user, "two-step sign-in turned off");
    Ok(HttpResponse::NoContent().finish())
}

/// `GET /api/me/logins`: the caller's live logins, in every tenant
/// (`auth::logins`).
async fn my_logins(
    state: web::Data<AppState>,
    auth: AuthContext,
    page: web::Query<PageQuery>,
) -> AppResult<HttpResponse> {
    let page = page.parse()?;
    let (user, family) = (auth.user, auth.family.clone());
    let items = state.db.tenant(auth.scope(), move |tc| logins::list(tc, user, &family)).await?;
    Ok(HttpResponse::Ok().json(Paged::whole(items, &page)))
}

/// `DELETE /api/me/logins`: ends every login of the caller's but this one.
async fn end_other_logins(state: web::Data<AppState>, auth: AuthContext) -> AppResult<HttpResponse> {
    let (user, family) = (auth.user, auth.family.clone());
    let ended = state.db.tenant(auth.scope(), move |tc| logins::end_others(tc, user, &family)).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({"ended": ended})))
}

/// `DELETE /api/me/logins/{id}`: ends one of the caller's logins (204).
async fn end_login(state: web::Data<AppState>, auth: AuthContext, path: web::Path<String>) -> AppResult<HttpResponse> {
    let (user, id) = (auth.user, path.into_inner());
    state.db.tenant(auth.scope(), move |tc| logins::end(tc, user, &id)).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// `POST /api/me/mfa/recovery-codes` `{code}`: ten new recovery codes.
async fn mfa_recovery_codes(
    state: web::Data<AppState>,
    auth: AuthContext,
    body: Json<MfaConfirm>,
) -> AppResult<HttpResponse> {
    let (keys, code, user) = (state.keys.clone(), body.into_inner().code, auth.user);
    let codes =
        counted(&state, &auth, move |tc| mfa::renew_recovery_codes(tc, &keys, user, &code, chrono::Utc::now())).await?;
    Ok(HttpResponse::Ok().json(codes))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MfaSetup {
    email: String,
    password: String,
    tenant: String,
    #[serde(default)]
    code: Option<String>,
}

/// Checks a setup's credentials as a login does, counted as one.
async fn setup_credentials(
    state: &AppState,
    body: &MfaSetup,
) -> AppResult<(crate::auth::users::User, crate::tenancy::Tenant, Role)> {
    throttled(state, &body.email)?;
    let (email, password, tenant) = (body.email.clone(), body.password.clone(), body.tenant.clone());
    let result = state.db.public(move |conn| session::credentials(conn, &email, &password, &tenant)).await;
    // Failures only: a right password here is no login, and must not clear
    // the count of wrong codes at login (`counts` would).
    if let Err(e) = &result {
        if e.code == session::INVALID_CREDENTIALS {
            state.login_throttle.failed(&body.email, Instant::now());
        }
    }
    result
}

/// `POST /api/auth/mfa-setup` `{email, password, tenant}`: for a person
/// whose tenant requires two-step sign-in, a new secret without a login
/// (as `POST /api/me/mfa` answers).
async fn mfa_setup(state: web::Data<AppState>, body: Json<MfaSetup>) -> AppResult<HttpResponse> {
    let body = body.into_inner();
    let (user, tenant, _) = setup_credentials(&state, &body).await?;
    let (keys, id, password) = (state.keys.clone(), user.user_id(), body.password);
    let scope = crate::db::TenantScope::system(tenant.tenant_id());
    let enrollment = state.db.tenant(scope, move |tc| mfa::enroll(tc, &keys, id, &password)).await?;
    Ok(HttpResponse::Ok().json(enrollment))
}

/// `POST /api/auth/mfa-setup/confirm` `{email, password, tenant, code}`:
/// turns it on and logs in: the session, with the recovery codes.
async fn mfa_setup_confirm(
    state: web::Data<AppState>,
    jwt: web::Data<JwtKeys>,
    body: Json<MfaSetup>,
) -> AppResult<HttpResponse> {
    let body = body.into_inner();
    let Some(code) = body.code.clone() else {
        return Err(AppError::invalid("code_required", "give the code the authenticator app shows as `code`"));
    };
    let (user, tenant, role) = setup_credentials(&state, &body).await?;
    let (keys, jwt, id) = (state.keys.clone(), jwt.into_inner(), user.user_id());
    let scope = crate::db::TenantScope::system(tenant.tenant_id());
    let (codes, pair) = state
        .db
        .tenant(scope, move |tc| {
            let codes = mfa::confirm(tc, &keys, id, "", &code, chrono::Utc::now())?;
            let user = crate::auth::users::find(tc.pg(), id)?.ok_or_else(|| AppError::not_found("user"))?;
            let pair = session::open(tc.pg(), &jwt, &user, &tenant, role)?;
            Ok::<_, AppError>((codes, pair))
        })
        .await?;
    state.login_throttle.succeeded(&body.email);
    let mut answer = serde_json::to_value(&pair).map_err(AppError::internal)?;
    answer["recovery_codes"] = serde_json::json!(codes.recovery_codes);
    Ok(HttpResponse::Ok().json(answer))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InvitationBody {
    token: String,
}

/// `POST /api/auth/invitation` `{token}` (no login): what the link is for,
/// before accepting it. A POST, so the token stays out of URLs and logs.
async fn invitation(state: web::Data<AppState>, body: Json<InvitationBody>) -> AppResult<HttpResponse> {
    let token = body.into_inner().token;
    let found = state.db.public(move |conn| invitations::find(conn, &token)).await?;
    found.usable(chrono::Utc::now())?;
    Ok(HttpResponse::Ok().json(found.details))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptBody {
    token: String,
    password: String,
    #[serde(default)]
    name: Option<String>,
    /// An existing account's second step (`auth::mfa`).
    #[serde(default)]
    otp: Option<String>,
    #[serde(default)]
    recovery_code: Option<String>,
}

/// `POST /api/auth/invitation/accept` `{token, password, name?}` (no
/// login needed): makes the membership (and the account of someone new)
/// and answers it with a login (`auth::invitations`).
async fn accept_invitation(
    state: web::Data<AppState>,
    jwt: web::Data<JwtKeys>,
    body: Json<AcceptBody>,
) -> AppResult<HttpResponse> {
    let body = body.into_inner();
    let token = body.token.clone();
    let found = state.db.public(move |conn| invitations::find(conn, &token)).await?;
    if !found.accepted() {
        found.usable(chrono::Utc::now())?;
    }
    let email = found.details.email.clone();
    // Guessing an account's password here costs what it costs at login.
    throttled(&state, &email)?;
    let new_password = if found.details.has_account {
        None
    } else {
        let password = body.password.clone();
        Some(web::block(move || PasswordHash::create(&password)).await??)
    };
    let acceptance = Acceptance {
        token: body.token,
        password: body.password,
        second: mfa::SecondStep { otp: body.otp, recovery_code: body.recovery_code },
        new_password,
        name: body.name.unwrap_or_default(),
    };
    let keys = state.keys.clone();
    let jwt = jwt.into_inner();
    let result = state
        .db
        .tenant(TenantScope::system(found.tenant), move |tc| {
            invitations::accept(tc, &keys, &jwt, &acceptance, chrono::Utc::now())
        })
        .await;
    match &result {
        Err(e) if e.code == invitations::USED => state.login_throttle.failed(&email, Instant::now()),
        _ => counts(&state, &email, &result),
    }
    let accepted = result?;
    tracing::info!(tenant = %accepted.tenant.slug, user_id = %accepted.user.id, "invitation accepted");
    Ok(HttpResponse::Ok().json(accepted))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    email: String,
}

/// `POST /api/auth/password-reset` `{email}` (no login): 202 whatever the
/// email, a link mailed to an account that has it
/// (`auth::password_reset`); 503 `mail_unavailable` with mail off.
async fn password_reset(state: web::Data<AppState>, body: Json<ResetBody>) -> AppResult<HttpResponse> {
    let came = Instant::now();
    // Bad input is told as such (422) whether mail is on or not.
    let email = Email::parse(&body.into_inner().email)?;
    if state.config.mail.is_none() {
        return Err(AppError::unavailable(
            "mail_unavailable",
            "this server sends no mail: ask its operator to set your password",
        ));
    }
    let public_url = state.config.public_url.clone();
    let mailed =
        state.db.public(move |conn| password_reset::request(conn, &email, &public_url, chrono::Utc::now())).await?;
    if mailed {
        state.wake_mail.notify_one();
    }
    // Whether the address has an account is not told by the time either.
    actix_web::rt::time::sleep_until((came + password_reset::ANSWER_AFTER).into()).await;
    Ok(HttpResponse::Accepted().json(serde_json::json!({})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetConfirmBody {
    token: String,
    password: String,
}

/// `POST /api/auth/password-reset/confirm` `{token, password}` (no
/// login): the link's account gets the password, and every login of
/// theirs ends: 204.
async fn password_reset_confirm(state: web::Data<AppState>, body: Json<ResetConfirmBody>) -> AppResult<HttpResponse> {
    let body = body.into_inner();
    let token = body.token.clone();
    state.db.public(move |conn| password_reset::check(conn, &token, chrono::Utc::now())).await?;
    let password = body.password;
    let hash = web::block(move || PasswordHash::create(&password)).await??;
    let token = body.token;
    let user = state.db.public(move |conn| password_reset::confirm(conn, &token, &hash, chrono::Utc::now())).await?;
    tracing::info!(user_id = %user, "password reset by mail");
    Ok(HttpResponse::NoContent().finish())
}
