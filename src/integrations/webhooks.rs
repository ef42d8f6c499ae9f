//! Integrators' webhooks: a tenant's admins name URLs, and the server POSTs
//! the tenant's live events to each, signed, in order, at least once.
//!
//! Decisions:
//! - The events are the WebSocket's (`seq`, `type`, `at`, `data`), every
//!   channel's, read from the tenant's event log after the endpoint's
//!   cursor: `{"events": [...]}`, at most [`BATCH`] a request, oldest
//!   first. An endpoint starts at the log's end when it is made. A 2xx
//!   moves the cursor past the batch; anything else (or no answer within
//!   10 s) is tried again, backing off from 2 s to 10 minutes, the same
//!   events first; a receiver deduplicates by `seq`. After [`MOST_FAILURES`]
//!   failures in a row (about a day) the endpoint is switched off and the
//!   audit log says so; switching it on again resumes where it stopped.
//! - `event_types` chooses the types delivered (none listed: all); the
//!   cursor passes over the others.
//! - If retention pruned events an endpoint had not had yet, its next
//!   request begins with `{"type": "resync_required", "data": {"since": N}}`,
//!   as a socket resuming too late is told.
//! - Each request carries `X-Switchboard-Signature-256: sha256=<hex HMAC of
//!   the body with the endpoint's secret>` (as Meta signs ours), the secret
//!   shown once when the endpoint is made, kept encrypted like channel
//!   tokens.
//! - One endpoint per URL in a tenant: naming a URL another endpoint has
//!   (made again by a double click or a retry, or changed to it) is 409
//!   `webhook_url_taken`, naming that endpoint, rather than a second
//!   endpoint sending every event twice to one receiver; its secret is
//!   not shown again (`PATCH` the one there, or delete it and make anew).
//! - An endpoint is the tenant's, not its maker's: it goes on after the
//!   admin who made it leaves, as an organisation's webhooks do (their
//!   invitations, which let people in, do not: `auth::invitations`). The
//!   audit log says who made it.
//! - Only `http`/`https` URLs, and, unless `SWITCHBOARD_WEBHOOKS_PRIVATE_OK`,
//!   only public addresses: the host is resolved at each delivery and the
//!   request goes to the address that was checked (no redirects), so a
//!   tenant cannot make the server call what sits beside it.
//! - `POST …/{id}/ping` sends one signed `ping` event (`seq` 0, not from
//!   the log) at once and answers how it went, for an admin setting up a
//!   receiver; the cursor and the failure count are left alone.
//! - One delivery at a time per endpoint, across instances (a lease on the
//!   row), all of a round's at once; endpoints are looked at every
//!   [`LOOK_EVERY`], so an event reaches an endpoint within about that.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use serde::Serialize;
use serde_json::json;
use std::net::{IpAddr, SocketAddr};

use crate::app::AppState;
use crate::audit;
use crate::crypto::Keyring;
use crate::db::schema::outgoing_webhooks as w;
use crate::db::{with_tenant, PgPool, TenantConn, TenantScope};
use crate::error::{AppError, AppResult};
use crate::ids::{TenantId, UserId};
use crate::inbox::events;
use crate::secret::Secret;

/// Events in one request.
pub const BATCH: i64 = 100;
/// Failures in a row before an endpoint is switched off.
pub const MOST_FAILURES: i32 = 150;
/// Endpoints a tenant may have.
pub const MOST_ENDPOINTS: i64 = 10;
/// How often endpoints are looked at.
pub const LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
const MOST_URL_CHARS: usize = 2000;
const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const LEASE_SECS: i64 = 60;

/// The event types an endpoint may ask for.
pub const EVENT_TYPES: [&str; 17] = [
    "message.created",
    "message.updated",
    "conversation.created",
    "conversation.updated",
    "conversation.deleted",
    "channel.updated",
    "channels.changed",
    "contact.updated",
    "template.updated",
    "broadcast.updated",
    "scheduled_message.updated",
    "team.updated",
    "team.deleted",
    "contact_attribute.updated",
    "contact_attribute.deleted",
    "notification",
    "resync_required",
];

#[derive(Debug, Serialize, Queryable, Selectable)]
#[diesel(table_name = w)]
pub struct Endpoint {
    #[serde(serialize_with = "crate::ids::as_string")]
    pub id: i64,
    pub url: String,
    pub event_types: Vec<String>,
    pub enabled: bool,
    pub failures: i32,
    pub last_error: Option<String>,
    pub last_delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A new endpoint as its maker sees it, once: with its secret.
#[derive(Debug, Serialize)]
pub struct Created {
    #[serde(flatten)]
    pub endpoint: Endpoint,
    pub secret: String,
}

fn invalid_url(why: &str) -> AppError {
    AppError::invalid("invalid_url", format!("the webhook URL {why}"))
}

/// Checks a URL's shape (its address is checked at each delivery).
pub fn checked_url(raw: &str) -> AppResult<reqwest::Url> {
    let raw = raw.trim();
    if raw.chars().count() > MOST_URL_CHARS {
        return Err(invalid_url("is too long"));
    }
    let url = reqwest::Url::parse(raw).map_err(|_| invalid_url("is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid_url("must be http:// or https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid_url("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid_url("must not hold a user name or password"));
    }
    Ok(url)
}

fn checked_types(types: Vec<String>) -> AppResult<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for t in types {
        let t = t.trim().to_string();
        if !EVENT_TYPES.contains(&t.as_str()) {
            return Err(AppError::invalid(
                "invalid_event_types",
                format!("{t:?} is not an event type; known: {}", EVENT_TYPES.join(", ")),
            ));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

/// What a tenant's endpoint secrets are sealed with besides the key.
pub fn aad(tenant: TenantId) -> String {
    format!("outgoing-webhook:{}", tenant.0)
}

pub fn list(tc: &mut TenantConn<'_>) -> AppResult<Vec<Endpoint>> {
    Ok(w::table.filter(w::tenant_id.eq(tc.tenant().0)).order(w::id).select(Endpoint::as_select()).load(tc.pg())?)
}

/// Makes an endpoint that delivers from the log's end on.
pub fn create(
    tc: &mut TenantConn<'_>,
    keys: &Keyring,
    actor: UserId,
    url: &str,
    types: Vec<String>,
) -> AppResult<Created> {
    let url = checked_url(url)?;
    let types = checked_types(types)?;
    let tenant = tc.tenant();
    // Two creates at once would both count nine: the tenant's creates take
    // turns (a lock of this transaction's, so nothing to release).
    crate::db::locks::hold(tc.pg(), crate::db::locks::LockClass::WebhookEndpoints, &tenant.0.to_string())?;
    let n: i64 = w::table.filter(w::tenant_id.eq(tenant.0)).count().get_result(tc.pg())?;
    refuse_taken_url(tc, url.as_str(), None)?;
    if n >= MOST_ENDPOINTS {
        return Err(AppError::conflict("too_many_webhooks", format!("a tenant has at most {MOST_ENDPOINTS} webhooks")));
    }
    let mut bytes = [0u8; 24];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bytes);
    let secret = format!("whsec_{}", hex::encode(bytes));
    let cursor = events::last_seq(tc)?;
    let endpoint: Endpoint = diesel::insert_into(w::table)
        .values((
            w::tenant_id.eq(tenant.0),
            w::url.eq(url.as_str()),
            w::secret_enc.eq(keys.encrypt(&Secret::new(secret.clone()), &aad(tenant))),
            w::event_types.eq(&types),
            w::cursor_seq.eq(cursor),
        ))
        .returning(Endpoint::as_returning())
        .get_result(tc.pg())?;
    audit::record(
        tc,
        Some(actor),
        "webhook.created",
        "webhook",
        Some(endpoint.id.to_string()),
        json!({"url": endpoint.url, "event_types": endpoint.event_types}),
    )?;
    Ok(Created { endpoint, secret })
}

/// 409 `webhook_url_taken` when another endpoint of the tenant than `own`
/// has `url` (as [`checked_url`] writes it). Called under the tenant's
/// endpoints lock.
fn refuse_taken_url(tc: &mut TenantConn<'_>, url: &str, own: Option<i64>) -> AppResult<()> {
    let held: Option<i64> = w::table
        .filter(w::tenant_id.eq(tc.tenant().0))
        .filter(w::url.eq(url))
        .filter(w::id.ne(own.unwrap_or(0)))
        .select(w::id)
        .first(tc.pg())
        .optional()?;
    match held {
        Some(held) => Err(AppError::conflict(
            "webhook_url_taken",
            format!("webhook {held} has this URL already: change that one, or delete it first"),
        )),
        None => Ok(()),
    }
}

/// A change to an endpoint; left out: unchanged.
#[derive(Debug, Default)]
pub struct Change {
    pub url: Option<String>,
    pub event_types: Option<Vec<String>>,
    pub enabled: Option<bool>,
}

pub fn update(tc: &mut TenantConn<'_>, actor: UserId, id: i64, change: Change) -> AppResult<Endpoint> {
    let url = change.url.as_deref().map(checked_url).transpose()?.map(|u| u.to_string());
    let types = change.event_types.map(checked_types).transpose()?;
    if let Some(url) = &url {
        // Taking turns with creates, as they do among themselves, so that
        // two endpoints cannot come to share a URL.
        let tenant = tc.tenant();
        crate::db::locks::hold(tc.pg(), crate::db::locks::LockClass::WebhookEndpoints, &tenant.0.to_string())?;
        refuse_taken_url(tc, url, Some(id))?;
    }
    let current: Endpoint = w::table
        .filter(w::tenant_id.eq(tc.tenant().0))
        .find(id)
        .select(Endpoint::as_select())
        .for_update()
        .first(tc.pg())
        .optional()?
        .ok_or_else(|| AppError::not_found("webhook"))?;
    let url = url.unwrap_or(current.url.clone());
    let types = types.unwrap_or(current.event_types.clone());
    let enabled = change.enabled.unwrap_or(current.enabled);
    if (&url, &types, enabled) == (&current.url, &current.event_types, current.enabled) {
        return Ok(current);
    }
    let target = w::table.find(id);
    let updated: Endpoint = if enabled && !current.enabled {
        // On again: resume where it stopped, at once, with a clean slate.
        diesel::update(target)
            .set((
                w::url.eq(&url),
                w::event_types.eq(&types),
                w::enabled.eq(true),
                w::failures.eq(0),
                w::last_error.eq(None::<String>),
                w::next_attempt_at.eq(Utc::now()),
            ))
            .returning(Endpoint::as_returning())
            .get_result(tc.pg())?
    } else {
        diesel::update(target)
            .set((w::url.eq(&url), w::event_types.eq(&types), w::enabled.eq(enabled)))
            .returning(Endpoint::as_returning())
            .get_result(tc.pg())?
    };
    audit::record(
        tc,
        Some(actor),
        "webhook.updated",
        "webhook",
        Some(id.to_string()),
        json!({"url": updated.url, "event_types": updated.event_types, "enabled": updated.enabled}),
    )?;
    Ok(updated)
}

pub fn delete(tc: &mut TenantConn<'_>, actor: UserId, id: i64) -> AppResult<()> {
    let n = diesel::delete(w::table.filter(w::tenant_id.eq(tc.tenant().0)).find(id)).execute(tc.pg())?;
    if n == 0 {
        return Err(AppError::not_found("webhook"));
    }
    audit::record(tc, Some(actor), "webhook.deleted", "webhook", Some(id.to_string()), json!({}))?;
    Ok(())
}

/// Re-seals the tenant's endpoint secrets with the current key
/// (`switchboard keys rotate`); answers how many changed.
pub fn reencrypt_secrets(tc: &mut TenantConn<'_>, keys: &Keyring) -> AppResult<usize> {
    let tenant = tc.tenant();
    let current = keys.current_key_id().to_string();
    let rows: Vec<(i64, String)> =
        w::table.filter(w::tenant_id.eq(tenant.0)).select((w::id, w::secret_enc)).load(tc.pg())?;
    let mut changed = 0;
    for (id, sealed) in rows {
        if Keyring::key_id_of(&sealed) == Some(current.as_str()) {
            continue;
        }
        let secret = keys.decrypt(&sealed, &aad(tenant))?;
        diesel::update(w::table.find(id))
            .set(w::secret_enc.eq(keys.encrypt(&secret, &aad(tenant))))
            .execute(tc.pg())?;
        changed += 1;
    }
    Ok(changed)
}

/// Whether `ip` is an address a tenant must not reach by default:
/// loopback, private, link-local, shared (CGNAT), unique-local, multicast,
/// unspecified, documentation or benchmarking ranges.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 198 && (b == 18 || b == 19))
                || a >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8
        }
    }
}

/// An endpoint claimed for one delivery.
struct Due {
    id: i64,
    tenant: TenantId,
    url: String,
    secret_enc: String,
    event_types: Vec<String>,
    cursor: i64,
    failures: i32,
}

/// Claims up to `limit` endpoints due now, each leased for a minute: one
/// statement, so an idle server's look costs a single round trip.
fn claim(conn: &mut PgConnection, limit: i64) -> AppResult<Vec<Due>> {
    use diesel::sql_types::{Array, BigInt, Integer, Text};
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        id: i64,
        #[diesel(sql_type = BigInt)]
        tenant_id: i64,
        #[diesel(sql_type = Text)]
        url: String,
        #[diesel(sql_type = Text)]
        secret_enc: String,
        #[diesel(sql_type = Array<Text>)]
        event_types: Vec<String>,
        #[diesel(sql_type = BigInt)]
        cursor_seq: i64,
        #[diesel(sql_type = Integer)]
        failures: i32,
    }
    let rows: Vec<Row> = diesel::sql_query(format!(
        "UPDATE public.outgoing_webhooks SET leased_until = now() + interval '{LEASE_SECS} seconds' \
          WHERE id IN (SELECT id FROM public.outgoing_webhooks \
                        WHERE enabled AND next_attempt_at <= now() \
                          AND (leased_until IS NULL OR leased_until < now()) \
                        ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) \
          RETURNING id, tenant_id, url, secret_enc, event_types, cursor_seq, failures"
    ))
    .bind::<BigInt, _>(limit)
    .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|r| Due {
            id: r.id,
            tenant: TenantId(r.tenant_id),
            url: r.url,
            secret_enc: r.secret_enc,
            event_types: r.event_types,
            cursor: r.cursor_seq,
            failures: r.failures,
        })
        .collect())
}

/// What one look at an endpoint found to send.
struct Batch {
    /// The request's body; `None`: nothing to send.
    body: Option<String>,
    /// The cursor once it is delivered.
    last: i64,
}

/// The endpoint's next events, as a request body.
fn next_batch(pool: &PgPool, due: &Due) -> AppResult<Batch> {
    crate::db::tenant_on_pool(pool, &TenantScope::system(due.tenant), |tc| {
        let events = events::since(tc, due.cursor, BATCH)?;
        let mut frames: Vec<String> = Vec::new();
        // What retention pruned before this endpoint had it.
        if let Some(oldest) = events::oldest_seq(tc)? {
            if oldest > due.cursor + 1 {
                let resync = json!({"type": "resync_required", "at": Utc::now(), "data": {"since": due.cursor}});
                if due.event_types.is_empty() || due.event_types.iter().any(|t| t == "resync_required") {
                    frames.push(resync.to_string());
                }
            }
        }
        let last = events.last().map_or(due.cursor, |e| e.seq);
        let wanted = |kind: &str| due.event_types.is_empty() || due.event_types.iter().any(|t| t == kind);
        frames.extend(events.iter().filter(|e| wanted(&e.kind)).map(|e| e.frame()));
        let body = (!frames.is_empty()).then(|| format!(r#"{{"events":[{}]}}"#, frames.join(",")));
        Ok::<_, AppError>(Batch { body, last })
    })
}

/// Signs `body` with `secret` as `X-Switchboard-Signature-256` wants it.
pub fn signature(secret: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// POSTs `body` to `url`, at an address checked first.
async fn post(url: &str, body: String, secret: &str, private_ok: bool) -> Result<(), String> {
    let url = checked_url(url).map_err(|e| e.message)?;
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = match host.trim_matches(['[', ']']).parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect(),
    };
    let Some(addr) = addrs.first().copied() else { return Err(format!("{host} has no address")) };
    if !private_ok && addrs.iter().any(|a| is_internal(a.ip())) {
        return Err(format!("{host} resolves to an internal address ({})", addr.ip()));
    }
    let client = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .resolve(&host, addr)
        .build()
        .map_err(|e| format!("client: {e}"))?;
    let sig = signature(secret, body.as_bytes());
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .header("user-agent", "Switchboard-Webhooks/1")
        .header("x-switchboard-signature-256", sig)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", r.status().as_u16()))
    }
}

/// How a ping went.
#[derive(Debug, Serialize)]
pub struct Ping {
    pub delivered: bool,
    /// Why not, when it was not.
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// What pinging endpoint `id` needs: its URL and its secret.
pub fn ping_target(tc: &mut TenantConn<'_>, keys: &Keyring, id: i64) -> AppResult<(String, Secret<String>)> {
    let tenant = tc.tenant();
    let (url, secret_enc): (String, String) = w::table
        .filter(w::tenant_id.eq(tenant.0))
        .find(id)
        .select((w::url, w::secret_enc))
        .first(tc.pg())
        .optional()?
        .ok_or_else(|| AppError::not_found("webhook"))?;
    let secret = keys.decrypt(&secret_enc, &aad(tenant)).map_err(AppError::internal)?;
    Ok((url, secret))
}

/// Sends endpoint `id` (at `url`, signed with `secret`) a `ping` event now.
pub async fn ping(id: i64, url: &str, secret: &Secret<String>, private_ok: bool) -> Ping {
    let at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let body = json!({"events": [{"seq": 0, "type": "ping", "at": at, "data": {"webhook_id": id.to_string()}}]});
    let started = std::time::Instant::now();
    let outcome = post(url, body.to_string(), secret.expose(), private_ok).await;
    Ping {
        delivered: outcome.is_ok(),
        error: outcome.err(),
        duration_ms: started.elapsed().as_millis().try_into().unwrap_or(u64::MAX),
    }
}

/// The wait before the next try after `failures` failures in a row: 2 s,
/// doubling, at most 10 minutes.
pub fn backoff(failures: i32) -> Duration {
    Duration::seconds((1i64 << failures.clamp(1, 10)).min(600))
}

/// Records a delivery's outcome and lets the endpoint go.
fn settle(pool: &PgPool, due: &Due, outcome: Result<Option<i64>, String>) -> AppResult<()> {
    // Not one the server closed since: the delivery made would otherwise
    // wait out its lease and go again.
    let mut conn = crate::db::live_connection(pool)?;
    let row = w::table.find(due.id);
    match outcome {
        // Nothing new: look again at the next round.
        Ok(None) => {
            diesel::update(row).set(w::leased_until.eq(None::<DateTime<Utc>>)).execute(&mut conn)?;
        }
        Ok(Some(last)) => {
            diesel::update(row)
                .set((
                    w::cursor_seq.eq(last),
                    w::failures.eq(0),
                    w::last_error.eq(None::<String>),
                    w::last_delivered_at.eq(Utc::now()),
                    w::leased_until.eq(None::<DateTime<Utc>>),
                    w::next_attempt_at.eq(Utc::now()),
                ))
                .execute(&mut conn)?;
        }
        Err(why) => {
            let failures = due.failures.saturating_add(1);
            let off = failures >= MOST_FAILURES;
            tracing::warn!(webhook = due.id, tenant = due.tenant.0, failures, %why, "webhook delivery failed");
            // Off stays off: an admin may have switched it off while the
            // delivery was under way, and the failure must not set it on.
            let update = diesel::update(row).set((
                w::failures.eq(failures),
                w::last_error.eq(why.clone()),
                w::enabled.eq(w::enabled.and::<_, diesel::sql_types::Bool>(!off)),
                w::leased_until.eq(None::<DateTime<Utc>>),
                w::next_attempt_at.eq(Utc::now() + backoff(failures)),
            ));
            if off {
                // Switched off and audited together: whoever sees it off
                // finds the record of why.
                with_tenant(&mut conn, &TenantScope::system(due.tenant), |tc| {
                    update.execute(tc.pg())?;
                    audit::record(
                        tc,
                        None,
                        "webhook.disabled",
                        "webhook",
                        Some(due.id.to_string()),
                        json!({"failures": failures, "last_error": why}),
                    )
                    .map_err(AppError::from)
                })?;
            } else {
                update.execute(&mut conn)?;
            }
        }
    }
    Ok(())
}

/// One round: every endpoint due gets its next batch, all at once, so a
/// slow receiver holds up only itself.
pub async fn deliver_due(state: &AppState) -> AppResult<usize> {
    let pool = state.db.pool().clone();
    let claimed = actix_web::web::block(move || claim(&mut *crate::db::live_connection(&pool)?, 16)).await??;
    let rounds = futures_util::future::join_all(claimed.into_iter().map(|due| deliver(state, due))).await;
    let mut sent = 0;
    for delivered in rounds {
        sent += usize::from(delivered?);
    }
    Ok(sent)
}

/// One endpoint's next batch, sent and settled; whether it was delivered.
async fn deliver(state: &AppState, due: Due) -> AppResult<bool> {
    let pool = state.db.pool().clone();
    let (batch, due) = actix_web::web::block(move || (next_batch(&pool, &due), due)).await?;
    let requested = matches!(batch, Ok(Batch { body: Some(_), .. }));
    let outcome = match batch {
        // Our database failed, not the endpoint: nothing counted against
        // it (failures switch it off in the end, and the integrator reads
        // `last_error`); looked at again next round.
        Err(e) if e.code == crate::error::DATABASE_UNAVAILABLE => {
            tracing::warn!(webhook = due.id, tenant = due.tenant.0, error = %e.message, "cannot read the events to deliver");
            Ok(None)
        }
        Err(e) => Err(format!("reading the events: {}", e.message)),
        Ok(Batch { body: None, last }) if last == due.cursor => Ok(None),
        // Only types it does not want: passed over.
        Ok(Batch { body: None, last }) => Ok(Some(last)),
        Ok(Batch { body: Some(body), last }) => match state.keys.decrypt(&due.secret_enc, &aad(due.tenant)) {
            Err(e) => Err(format!("the secret cannot be read: {e}")),
            // A bug met delivering to one endpoint fails that delivery
            // (tried again later), not the others' of this round.
            Ok(secret) => {
                crate::app::contained(post(&due.url, body, secret.expose(), state.config.webhooks_private_ok))
                    .await
                    .unwrap_or_else(|panic| Err(format!("delivering it failed: {panic}")))
                    .map(|()| Some(last))
            }
        },
    };
    let delivered = requested && outcome.is_ok();
    let pool = state.db.pool().clone();
    actix_web::web::block(move || settle(&pool, &due, outcome)).await??;
    Ok(delivered)
}

/// The delivery loop of a `serve` process.
pub async fn run(state: actix_web::web::Data<AppState>) {
    let mut failing = crate::telemetry::Repeats::default();
    loop {
        crate::telemetry::tell_repeats!(failing, "webhook deliveries' pass", &deliver_due(&state).await);
        actix_web::rt::time::sleep(LOOK_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
        ] {
            assert!(is_internal(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "100.128.0.1"] {
            assert!(!is_internal(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[test]
    fn urls_and_backoff() {
        assert!(checked_url("https://crm.example.com/hooks/switchboard?k=1").is_ok());
        for bad in ["ftp://x.example/", "https://", "not a url", "https://user:pw@x.example/", "file:///etc/passwd"] {
            assert_eq!(checked_url(bad).err().map(|e| e.code.to_string()).as_deref(), Some("invalid_url"), "{bad}");
        }
        assert_eq!(backoff(1).num_seconds(), 2);
        assert_eq!(backoff(3).num_seconds(), 8);
        assert_eq!(backoff(100).num_seconds(), 600);
    }

    /// Refused before any connection is tried; allowed, the same kind of
    /// address is connected to.
    #[actix_web::test]
    async fn internal_targets_are_refused_unless_allowed() {
        for url in ["http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://[::1]:9/hook", "http://10.0.0.1:9/"] {
            let why = post(url, "{}".into(), "s", false).await.expect_err("refused");
            assert!(why.contains("internal address"), "{url}: {why}");
        }
        // A port just freed: nothing listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        let url = format!("http://127.0.0.1:{port}/hook");
        let why = post(&url, "{}".into(), "s", true).await.expect_err("nothing listens");
        assert!(why.starts_with("no answer"), "{why}");
    }

    #[test]
    fn signatures_are_hex_hmac_sha256() {
        // RFC 4231 test case 2.
        let sig = signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(sig, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }
}
