//! Two-step sign-in (an extension): after the password, a code from an
//! authenticator app — a time-based one-time code (TOTP, RFC 6238:
//! HMAC-SHA1 over 30-second steps, 6 digits, what such apps make).
//!
//! Decisions:
//! - It belongs to the person (the user), in every tenant they work in, as
//!   the password does.
//! - Turning it on takes two calls: `POST /api/me/mfa {current_password}`
//!   answers a new secret (base32, and an `otpauth://` link for a QR code),
//!   kept sealed with the encryption keys and pending; `POST
//!   /api/me/mfa/confirm {code}` with a code the app made from it turns it
//!   on and answers ten recovery codes, shown this once, each good once (a
//!   lost phone), kept as SHA-256 (they are random: a slow hash adds
//!   nothing). Turning it on ends the person's other logins, as a new
//!   password does: a session someone else holds does not outlive it.
//! - Login then needs `otp` (the six digits) or `recovery_code` after a
//!   right password: none is 401 `otp_required` (not counted as a failure);
//!   a wrong one 401 `invalid_otp`, counted with the failed logins of the
//!   account (`auth::throttle`), so codes cannot be guessed faster than
//!   passwords. Codes of the step before and after are taken (clocks
//!   drift), and each only once: the step of the last code taken is kept
//!   and a code of that step or an earlier one is refused, so a code read
//!   over a shoulder cannot be used again.
//! - `POST /api/me/mfa/recovery-codes {code}` (a code from the app) answers
//!   ten new recovery codes; the old ones, used or not, stop working.
//! - `DELETE /api/me/mfa {current_password, code}` (a code or a recovery
//!   code) turns it off, unless a tenant the person works in requires it
//!   (409 `mfa_required_by_tenant`). An operator turns it off for a person who lost
//!   both (`switchboard user mfa-off`). Refresh tokens, API tokens and
//!   WebSocket tickets are not asked again: they come from a login that was.
//! - A tenant may require it of its members (`PATCH /api/tenant
//!   {require_mfa}`, owners, who must have it on themselves). A member
//!   without it then cannot log in there (403 `mfa_required`) and their
//!   logins there end at their next refresh (within 15 minutes); they set it
//!   up with their password instead of a login: `POST /api/auth/mfa-setup
//!   {email, password, tenant}` answers the secret, `POST
//!   /api/auth/mfa-setup/confirm {email, password, tenant, code}` turns it on
//!   and answers the recovery codes with a login. Both are counted as
//!   logins are. API tokens go on working (they are a member's own, for
//!   scripts; the member answers for them).
//! - `GET /api/me` and a login's `user` show `mfa_enabled`; turning it on
//!   or off is audited in the tenant the person did it from
//!   (`account.mfa_enabled`, `account.mfa_disabled`).

use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::Serialize;
use sha2::Digest;
use subtle::ConstantTimeEq;

use super::users::{self, User};
use crate::crypto::Keyring;
use crate::db::schema::{recovery_codes as rc, users as u};
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;
use crate::secret::Secret;

/// Seconds a code stands for.
const STEP_SECS: i64 = 30;
/// Steps either side of now whose codes are taken (a clock off by 30 s).
const DRIFT_STEPS: i64 = 1;
/// Recovery codes made when it is turned on.
const RECOVERY_CODES: usize = 10;
/// The code of a missing second step at login.
pub const OTP_REQUIRED: &str = "otp_required";
/// The code of a wrong one-time or recovery code.
pub const INVALID_OTP: &str = "invalid_otp";

/// What a login brings beside the password.
#[derive(Debug, Default, Clone)]
pub struct SecondStep {
    pub otp: Option<String>,
    pub recovery_code: Option<String>,
}

/// A secret to add to an authenticator app (shown once; pending until confirmed).
#[derive(Debug, Serialize)]
pub struct Enrollment {
    /// The secret in base32, for typing into the app.
    pub secret: String,
    /// The same as an `otpauth://totp/…` link, for a QR code.
    pub otpauth_url: String,
}

/// The recovery codes made when two-step sign-in is turned on.
#[derive(Debug, Serialize)]
pub struct RecoveryCodes {
    pub recovery_codes: Vec<String>,
}

fn aad(user: UserId) -> String {
    format!("user-totp:{}", user.0)
}

/// HOTP (RFC 4226) of `counter`: six digits.
fn hotp(secret: &[u8], counter: u64) -> u32 {
    // An HMAC takes a key of any length: this never fails.
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret) else { return u32::MAX };
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = (h[h.len() - 1] & 0x0f) as usize;
    let bin = u32::from_be_bytes([h[offset] & 0x7f, h[offset + 1], h[offset + 2], h[offset + 3]]);
    bin % 1_000_000
}

/// The step (of [`STEP_SECS`]) a code given at `now` was made for, if it is
/// one of the steps around now after `last` (the last taken).
fn matching_step(secret: &[u8], code: &str, now: i64, last: Option<i64>) -> Option<i64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step = now.div_euclid(STEP_SECS);
    (step - DRIFT_STEPS..=step + DRIFT_STEPS).filter(|s| *s >= 0 && last.is_none_or(|l| *s > l)).find(|s| {
        let made = format!("{:06}", hotp(secret, *s as u64));
        bool::from(made.as_bytes().ct_eq(code.as_bytes()))
    })
}

/// RFC 4648 base32 without padding, as authenticator apps take a secret.
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for b in bytes {
        buffer = (buffer << 8) | u32::from(*b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// A recovery code as it is compared: its letters and digits, lower case.
fn normalized(code: &str) -> String {
    code.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

fn recovery_hash(code: &str) -> String {
    hex::encode(sha2::Sha256::digest(normalized(code).as_bytes()))
}

/// Ten letters and digits (no 0/o, 1/l), as `xxxxx-xxxxx`: about 50 bits.
fn new_recovery_code() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
    let mut raw = [0u8; 10];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let chars: String = raw.iter().map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char).collect();
    format!("{}-{}", &chars[..5], &chars[5..])
}

fn wrong_code() -> AppError {
    AppError::unauthorized(INVALID_OTP, "the code is wrong, was used already, or is too old")
}

/// Begins turning two-step sign-in on for `user`, whose current password
/// is `password`: a new secret, pending until [`confirm`].
pub fn enroll(tc: &mut TenantConn<'_>, keys: &Keyring, user: UserId, password: &str) -> AppResult<Enrollment> {
    let row = users::own_for_update(tc.pg(), user)?;
    if !row.password_matches(password) {
        return Err(AppError::forbidden(super::account::WRONG_PASSWORD, "the current password is wrong"));
    }
    if row.totp_enabled_at.is_some() {
        return Err(AppError::conflict("mfa_enabled", "two-step sign-in is on already; turn it off first"));
    }
    let mut secret = [0u8; 20];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let sealed = keys.encrypt(&Secret::new(hex::encode(secret)), &aad(user));
    diesel::update(u::table.find(user.0))
        .set((u::totp_secret_enc.eq(sealed), u::totp_last_step.eq(None::<i64>)))
        .execute(tc.pg())?;
    let secret = base32(&secret);
    let label = crate::ids::percent_encode(&format!("Switchboard:{}", row.email));
    let otpauth_url =
        format!("otpauth://totp/{label}?secret={secret}&issuer=Switchboard&algorithm=SHA1&digits=6&period=30");
    Ok(Enrollment { secret, otpauth_url })
}

fn secret_of(conn: &mut PgConnection, keys: &Keyring, user: UserId) -> AppResult<Option<(Vec<u8>, Option<i64>)>> {
    let (sealed, last): (Option<String>, Option<i64>) =
        u::table.find(user.0).select((u::totp_secret_enc, u::totp_last_step)).first(conn)?;
    let Some(sealed) = sealed else { return Ok(None) };
    let secret = keys.decrypt(&sealed, &aad(user))?;
    let bytes = hex::decode(secret.expose()).map_err(AppError::internal)?;
    Ok(Some((bytes, last)))
}

/// Takes `code` for `user` at `now` if it is right and not used before:
/// the step is kept (a second use of the code, or of an earlier one, fails).
fn take_code(conn: &mut PgConnection, keys: &Keyring, user: UserId, code: &str, now: i64) -> AppResult<bool> {
    let Some((secret, last)) = secret_of(conn, keys, user)? else { return Ok(false) };
    let Some(step) = matching_step(&secret, code, now, last) else { return Ok(false) };
    // Two logins racing with one code: only one moves the step.
    let taken =
        diesel::update(u::table.find(user.0).filter(u::totp_last_step.is_null().or(u::totp_last_step.lt(step))))
            .set(u::totp_last_step.eq(step))
            .execute(conn)?;
    Ok(taken == 1)
}

fn take_recovery_code(conn: &mut PgConnection, user: UserId, code: &str) -> AppResult<bool> {
    if normalized(code).is_empty() {
        return Ok(false);
    }
    let used = diesel::update(
        rc::table
            .filter(rc::user_id.eq(user.0))
            .filter(rc::code_hash.eq(recovery_hash(code)))
            .filter(rc::used_at.is_null()),
    )
    .set(rc::used_at.eq(diesel::dsl::now))
    .execute(conn)?;
    Ok(used == 1)
}

/// Turns two-step sign-in on with a code made from the pending secret;
/// answers the recovery codes. `keep_family` is the login doing it: the
/// person's other logins end.
pub fn confirm(
    tc: &mut TenantConn<'_>,
    keys: &Keyring,
    user: UserId,
    keep_family: &str,
    code: &str,
    now: DateTime<Utc>,
) -> AppResult<RecoveryCodes> {
    let row = users::own_for_update(tc.pg(), user)?;
    if row.totp_enabled_at.is_some() {
        return Err(AppError::conflict("mfa_enabled", "two-step sign-in is on already"));
    }
    if secret_of(tc.pg(), keys, user)?.is_none() {
        return Err(AppError::conflict(
            "mfa_not_started",
            "begin with POST /api/me/mfa (or, without a login, POST /api/auth/mfa-setup)",
        ));
    }
    if !take_code(tc.pg(), keys, user, code, now.timestamp())? {
        return Err(AppError::invalid(INVALID_OTP, "the code is wrong or too old: type the one the app shows now"));
    }
    diesel::update(u::table.find(user.0)).set(u::totp_enabled_at.eq(now)).execute(tc.pg())?;
    let codes = new_recovery_codes(tc.pg(), user)?;
    super::account::end_logins(tc.pg(), user, Some(keep_family))?;
    super::account::audited(tc, user, "account.mfa_enabled", serde_json::json!({}))?;
    Ok(codes)
}

/// Replaces the person's recovery codes with ten new ones.
fn new_recovery_codes(conn: &mut PgConnection, user: UserId) -> AppResult<RecoveryCodes> {
    diesel::delete(rc::table.filter(rc::user_id.eq(user.0))).execute(conn)?;
    let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| new_recovery_code()).collect();
    let rows: Vec<_> = codes.iter().map(|c| (rc::user_id.eq(user.0), rc::code_hash.eq(recovery_hash(c)))).collect();
    diesel::insert_into(rc::table).values(&rows).on_conflict_do_nothing().execute(conn)?;
    Ok(RecoveryCodes { recovery_codes: codes })
}

/// New recovery codes for a person whose two-step sign-in is on (the old
/// ones, used or not, stop working), with a code from the app: a stolen
/// session alone cannot read them.
pub fn renew_recovery_codes(
    tc: &mut TenantConn<'_>,
    keys: &Keyring,
    user: UserId,
    code: &str,
    now: DateTime<Utc>,
) -> AppResult<RecoveryCodes> {
    let row = users::own_for_update(tc.pg(), user)?;
    if row.totp_enabled_at.is_none() {
        return Err(AppError::conflict("mfa_not_enabled", "two-step sign-in is not on"));
    }
    if !take_code(tc.pg(), keys, user, code, now.timestamp())? {
        return Err(AppError::forbidden(INVALID_OTP, "the code is wrong, was used already, or is too old"));
    }
    let codes = new_recovery_codes(tc.pg(), user)?;
    super::account::audited(tc, user, "account.mfa_recovery_codes_renewed", serde_json::json!({}))?;
    Ok(codes)
}

/// Turns two-step sign-in off, with the current password and a code (or
/// a recovery code).
pub fn disable(
    tc: &mut TenantConn<'_>,
    keys: &Keyring,
    user: UserId,
    password: &str,
    code: &str,
    now: DateTime<Utc>,
) -> AppResult<()> {
    let row = users::own_for_update(tc.pg(), user)?;
    if !row.password_matches(password) {
        return Err(AppError::forbidden(super::account::WRONG_PASSWORD, "the current password is wrong"));
    }
    if row.totp_enabled_at.is_none() {
        return Err(AppError::conflict("mfa_not_enabled", "two-step sign-in is not on"));
    }
    if !(take_code(tc.pg(), keys, user, code, now.timestamp())? || take_recovery_code(tc.pg(), user, code)?) {
        return Err(AppError::forbidden(INVALID_OTP, "the code is wrong, was used already, or is too old"));
    }
    // Off, the person could no longer log in where it is required.
    let requiring: Vec<String> = {
        use crate::db::schema::{memberships, tenants};
        memberships::table
            .inner_join(tenants::table)
            .filter(memberships::user_id.eq(user.0))
            .filter(tenants::require_mfa)
            .order(tenants::slug)
            .select(tenants::slug)
            .load(tc.pg())?
    };
    if !requiring.is_empty() {
        return Err(AppError::conflict(
            "mfa_required_by_tenant",
            format!("two-step sign-in is required where you work: {}", requiring.join(", ")),
        ));
    }
    turn_off(tc.pg(), user)?;
    super::account::audited(tc, user, "account.mfa_disabled", serde_json::json!({}))?;
    Ok(())
}

fn turn_off(conn: &mut PgConnection, user: UserId) -> AppResult<()> {
    diesel::update(u::table.find(user.0))
        .set((
            u::totp_secret_enc.eq(None::<String>),
            u::totp_enabled_at.eq(None::<DateTime<Utc>>),
            u::totp_last_step.eq(None::<i64>),
        ))
        .execute(conn)?;
    diesel::delete(rc::table.filter(rc::user_id.eq(user.0))).execute(conn)?;
    Ok(())
}

/// Turns it off for the person with `email` (an operator's, for a lost
/// phone and lost recovery codes). Answers whether it was on.
pub fn turn_off_for(conn: &mut PgConnection, email: &users::Email) -> AppResult<bool> {
    conn.transaction(|conn| {
        let user = users::find_by_email(conn, email)?.ok_or_else(|| {
            AppError::new(crate::error::ErrorKind::NotFound, "user_not_found", "no user has this email")
        })?;
        let was_on = user.totp_enabled_at.is_some();
        turn_off(conn, user.user_id())?;
        Ok(was_on)
    })
}

/// The login's second step for `user`, whose password was right: nothing
/// when two-step sign-in is off; else a code or a recovery code, taken.
pub fn check_login(
    conn: &mut PgConnection,
    keys: &Keyring,
    user: &User,
    tenant: &crate::tenancy::Tenant,
    second: &SecondStep,
    now: DateTime<Utc>,
) -> AppResult<()> {
    if user.totp_enabled_at.is_none() {
        return if tenant.require_mfa { Err(required_here()) } else { Ok(()) };
    }
    check_second_step(conn, keys, user, second, now)
}

/// The second step of a person who turned it on (nothing for one who has
/// not): a login's, or an invitation's accept by an existing account.
pub fn check_second_step(
    conn: &mut PgConnection,
    keys: &Keyring,
    user: &User,
    second: &SecondStep,
    now: DateTime<Utc>,
) -> AppResult<()> {
    if user.totp_enabled_at.is_none() {
        return Ok(());
    }
    let id = user.user_id();
    let taken = match (second.otp.as_deref(), second.recovery_code.as_deref()) {
        (None, None) => {
            return Err(AppError::unauthorized(
                OTP_REQUIRED,
                "this account signs in in two steps: send the code the authenticator app shows as `otp` (or a recovery code as `recovery_code`)",
            ))
        }
        (Some(otp), _) => take_code(conn, keys, id, otp, now.timestamp())?,
        (None, Some(recovery)) => take_recovery_code(conn, id, recovery)?,
    };
    if taken {
        Ok(())
    } else {
        Err(wrong_code())
    }
}

/// The code of a login refused because its tenant requires two-step
/// sign-in, which the person has not set up.
pub const MFA_REQUIRED: &str = "mfa_required";

/// 403 `mfa_required`: the tenant requires two-step sign-in of a person
/// without it.
pub fn required_here() -> AppError {
    AppError::forbidden(
        MFA_REQUIRED,
        "this tenant requires two-step sign-in: set it up with POST /api/auth/mfa-setup {email, password, tenant}, \
         then POST /api/auth/mfa-setup/confirm with a code from the app, which logs you in",
    )
}

/// Whether a tenant requires two-step sign-in (`PATCH /api/tenant`): only
/// a person who signs in so may turn it on (they would lock themselves out
/// otherwise). Audited as `tenant.updated`. Answers the tenant.
pub fn set_required(tc: &mut TenantConn<'_>, user: UserId, required: bool) -> AppResult<crate::tenancy::Tenant> {
    use crate::db::schema::tenants;
    let me = users::own_for_update(tc.pg(), user)?;
    if required && me.totp_enabled_at.is_none() {
        return Err(AppError::conflict(
            "mfa_not_enabled",
            "turn on your own two-step sign-in (POST /api/me/mfa) before requiring it of everyone",
        ));
    }
    let tenant = tc.tenant().0;
    let changed = diesel::update(tenants::table.find(tenant).filter(tenants::require_mfa.ne(required)))
        .set((tenants::require_mfa.eq(required), tenants::updated_at.eq(diesel::dsl::now)))
        .execute(tc.pg())?;
    if changed > 0 {
        let details = serde_json::json!({"require_mfa": required});
        crate::audit::record(tc, Some(user), "tenant.updated", "tenant", Some(tenant.to_string()), details)?;
    }
    crate::tenancy::find(tc.pg(), crate::ids::TenantId(tenant))?.ok_or_else(|| AppError::not_found("tenant"))
}

/// Re-seals every person's authenticator secret with the current key.
pub fn reencrypt_secrets(conn: &mut PgConnection, keys: &Keyring) -> AppResult<usize> {
    let sealed: Vec<(i64, String)> = u::table
        .filter(u::totp_secret_enc.is_not_null())
        .select((u::id, u::totp_secret_enc.assume_not_null()))
        .load(conn)?;
    let current = keys.current_key_id().to_string();
    let mut n = 0;
    for (id, value) in sealed {
        if Keyring::key_id_of(&value) == Some(current.as_str()) {
            continue;
        }
        let plain = keys.decrypt(&value, &aad(UserId(id)))?;
        diesel::update(u::table.find(id))
            .set(u::totp_secret_enc.eq(keys.encrypt(&plain, &aad(UserId(id)))))
            .execute(conn)?;
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238's SHA-1 vectors (its secret is the ASCII "1234567890" twice),
    /// their last six digits.
    #[test]
    fn codes_are_rfc_6238s() {
        let secret = b"12345678901234567890";
        for (time, code) in [(59, 287_082), (1_111_111_109, 81_804), (1_111_111_111, 50_471), (1_234_567_890, 5_924)] {
            assert_eq!(hotp(secret, (time / 30) as u64), code, "at {time}");
        }
        // RFC 4226's HOTP vectors, counters 0 and 9.
        assert_eq!(hotp(secret, 0), 755_224);
        assert_eq!(hotp(secret, 9), 520_489);
    }

    #[test]
    fn a_code_is_taken_around_now_once_and_never_an_older_one() {
        let secret = b"12345678901234567890";
        let now = 1_111_111_111;
        let step = now / 30;
        assert_eq!(matching_step(secret, "050471", now, None), Some(step));
        assert_eq!(matching_step(secret, "050 471", now, None), Some(step), "spaces as apps show them");
        assert_eq!(matching_step(secret, "050471", now + 30, None), Some(step), "a step late");
        assert_eq!(matching_step(secret, "050471", now - 30, None), Some(step), "a step early");
        assert_eq!(matching_step(secret, "050471", now + 60, None), None, "too old");
        assert_eq!(matching_step(secret, "050471", now, Some(step)), None, "taken already");
        assert_eq!(matching_step(secret, "050471", now, Some(step + 1)), None, "a later one was taken");
        for odd in ["", "50471", "0504711", "05047a", "٠٥٠٤٧١", "-50471"] {
            assert_eq!(matching_step(secret, odd, now, None), None, "{odd:?}");
        }
    }

    #[test]
    fn secrets_are_base32_as_rfc_4648_writes_it() {
        for (raw, written) in
            [("", ""), ("f", "MY"), ("fo", "MZXQ"), ("foo", "MZXW6"), ("foob", "MZXW6YQ"), ("foobar", "MZXW6YTBOI")]
        {
            assert_eq!(base32(raw.as_bytes()), written);
        }
        assert_eq!(base32(&[0u8; 20]).len(), 32);
    }

    #[test]
    fn recovery_codes_are_compared_as_letters_and_digits() {
        let code = new_recovery_code();
        assert_eq!((code.len(), code.as_bytes()[5]), (11, b'-'));
        assert_eq!(recovery_hash(&code), recovery_hash(&code.to_uppercase().replace('-', " ")));
        assert_ne!(recovery_hash(&code), recovery_hash(&new_recovery_code()));
        assert_eq!(normalized(" -- "), "");
    }
}
