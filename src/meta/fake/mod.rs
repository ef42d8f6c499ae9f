//! `switchboard fake-meta`: a stateful, local stand-in for the Graph API
//! endpoints Switchboard calls, plus the OAuth dialog. It is product code:
//! development, the demo, tests and load tests run against it.
//!
//! Graph endpoints accept an optional `/vNN.N/` prefix and the token as
//! `?access_token=` or `Authorization: Bearer`, and answer with the shapes of
//! `shared/fixtures/meta/`, which `tests/it/fake_meta.rs` checks field by
//! field, for the webhooks it sends too. Errors use Meta's error body and
//! HTTP 400. A profile (`GET /{psid|igsid}`) answers only the `fields` asked
//! for, and refuses a field its platform's profile does not have. A send
//! without a recipient (or a blank one), with a message tag Meta does not
//! have, or a WhatsApp read receipt without the message's id is refused
//! with #100, as Meta refuses them; requests of any shape get a success or
//! Meta's error body, never a 5xx (tested with every value of the request
//! fixtures retyped or removed).
//!
//! Files a business sends (`uploads`): a Messenger or Instagram attachment
//! uploaded with the send (`filedata`) is put on the fake's CDN and echoed
//! with its URL there; `POST /{phone-number-id}/media` keeps a WhatsApp
//! upload as a media object, which image, video, audio and document
//! messages then name by id. Types and sizes are checked as Meta checks
//! them; attachments by URL are refused (the fake does not fetch).
//!
//! Control API (JSON, for tests and the demo), all under `/_fake`:
//! - `POST /_fake/users` `{name?, id?, pages: [{id?, name, category?, instagram?: {id?, username?, name?}}], wabas: [{id?, phone_numbers: [{id?, display_phone_number?, verified_name?}]}]}`
//!   creates a Facebook user with pages, Instagram accounts and WhatsApp
//!   business accounts; answers every id and token made.
//! - `POST /_fake/dialog-user` `{user_id}`: who "logs in" at `/dialog/oauth`
//!   (otherwise the dialog shows a page to pick a user, or takes `fake_user=`).
//! - `POST /_fake/codes` `{user_id, redirect_uri?}` → `{code}` (embedded sign-up).
//! - `POST /_fake/tokens/expire|revoke|restore` `{token}` or `{page_id}`: the
//!   token then fails with 190/463 (expired) or 190/467 (logged out).
//! - `POST /_fake/errors` `{path, method?, status?, error: {code, error_subcode?, message?}, times?, delay_ms?, headers?}`:
//!   the next `times` calls whose path contains `path` fail that way (or,
//!   without `error`, only answer `delay_ms` late), with `headers` (name to
//!   value; a value that is not a string is sent as its JSON, as Meta's
//!   `X-Business-Use-Case-Usage` is). With `answer_late: true` (and no
//!   `error`) the call is done at once and only its answer waits: a send
//!   Meta took whose answer a client gave up on.
//! - Magic recipients (meta/CONTRACTS.md §11): Messenger/Instagram sends to
//!   `5510000000001545` fail with 551/1545041 (not available) and to
//!   `6130000000000613` with 613 (rate limit); WhatsApp sends to
//!   `15550130429` fail with 130429 (HTTP 429), to `15550131026` with
//!   131026 (undeliverable), as Meta's fixtures show them, and to
//!   `15550131056` with 131056 (the pair rate limit).
//! - A WhatsApp send answers with the customer's `wa_id`, which for a send
//!   to a phone number (`+` and digits) of a Brazilian mobile (`55`, area,
//!   `9`, eight digits) that has not written to the number lacks the ninth
//!   digit ([`whatsapp_id`]), as Meta's does for many such numbers.
//! - `POST /_fake/webhook-target` `{url, disable_after?, batch?, shuffle?, duplicates?, late_ms?}`:
//!   where the fake sends webhooks (`switchboard fake-meta --webhook-url`
//!   sets it at start). With `disable_after: N`, N failed deliveries in a
//!   row to a page or WhatsApp business account remove its subscription,
//!   as Meta does after an hour of failures, and its webhooks stop until
//!   the app subscribes it again (the watchdog's job). The webhooks that
//!   follow a send (echo, delivery, read; a WhatsApp reply's statuses) go
//!   in one body with `batch`, in random order with `shuffle`, and each
//!   twice with `duplicates`, as Meta delivers them after failures
//!   (meta/CONTRACTS.md §3.4); with `late_ms`, that long after the send
//!   (Meta's come late when it is busy).
//! - `POST /_fake/inbound` `{to, from, text?, name?, id?, at?, image?}`: a
//!   contact writes to a page, Instagram account or number; the fake sends
//!   the signed webhook now and remembers the contact (window, profile).
//!   `image: {mime_type?, data?}` sends a photo instead, `text` its caption:
//!   to a number as a media object the fake then serves (as `/_fake/media`
//!   makes), to a page or Instagram account as a CDN URL on the fake
//!   (`GET /_fake/cdn/{name}`, no token, as Meta's CDN), which answers 403
//!   once `POST /_fake/cdn/expire` has said its URLs expired.
//! - `POST /_fake/account-update` `{waba_id, event, ...}`: Meta changes a
//!   WhatsApp business account (`PARTNER_REMOVED`, `DISABLED_UPDATE` with
//!   `ban_info`…); the fake sends the `account_update` webhook, shaped as
//!   Meta's, and ends the subscription when the app was removed. An
//!   `ACCOUNT_RESTRICTION` changes none of the fake's answers: Meta's error
//!   for a restricted send is not known here (Switchboard refuses those
//!   sends itself).
//! - `POST /_fake/policy-enforcement` `{page_id, action, reason?}`: Meta
//!   warns, blocks or unblocks a page for its policies and sends the
//!   `policy_enforcement` webhook (if the page's subscription has the
//!   field); a blocked page's sends fail with `(#368)`.
//! - `POST /_fake/handover` `{to, from, action, app_id?, metadata?}`:
//!   another app (Meta's Page Inbox unless `app_id` names one) `take`s a
//!   customer's thread, `pass`es it back, or `request`s it, and the fake
//!   sends the `messaging_handovers` webhook (if the page's subscription has
//!   the field). While another app holds a thread, the customer's messages
//!   come on `standby`. `POST /{account}/take_thread_control` and
//!   `…/pass_thread_control` (`recipient`, `target_app_id`) move it as
//!   Meta does, answering `{"success": true}`.
//! - `POST /_fake/number-quality` `{phone_number_id, event, quality_rating?,
//!   current_limit?, old_limit?, max_daily_conversations_per_business?}`:
//!   Meta re-rates a WhatsApp number (`quality_rating` is what
//!   `phone_numbers` lists from then on) and sends
//!   `phone_number_quality_update`, naming it by its display number.
//! - `POST /_fake/business-capability` `{waba_id,
//!   max_daily_conversations_per_business}` (a number, `-1` for none, or
//!   a tier): Meta changes the messaging limit of the account's portfolio
//!   (what `phone_numbers` lists as
//!   `whatsapp_business_manager_messaging_limit` from then on; `TIER_250`
//!   before) and sends `business_capability_update`.
//! - `POST /_fake/user-preferences` `{phone_number_id, wa_id, value}`: a
//!   WhatsApp customer stops (`stop`) or resumes (`resume`) the number's
//!   marketing messages; the fake sends `user_preferences`, and from then
//!   on a marketing template to them is taken and reported `failed`
//!   (131050), as Meta does.
//! - `POST /_fake/history` `{phone_number_id, threads?, declined?, phase?,
//!   chunk_order?, progress?}`: the number's WhatsApp Business app shares
//!   its chat history; the fake sends one `history` chunk shaped as Meta's
//!   (`declined: true`: the chunk saying sharing is off).
//! - `POST /_fake/templates` `{waba_id, name, body, language?, category?,
//!   status?, header? | header_media? (IMAGE, VIDEO, DOCUMENT), footer?}`:
//!   a WhatsApp message template (each account
//!   starts with Meta's approved `hello_world`); `templates` says how
//!   `GET /{waba-id}/message_templates` and template sends behave.
//!   `POST /_fake/template-status` `{waba_id, name, language?, event,
//!   reason?}`: Meta approves, rejects, pauses, disables or reinstates it
//!   and sends the `message_template_status_update` webhook.
//!   `POST /_fake/template-category` `{waba_id, name, language?, category,
//!   coming_in_hours?}`: Meta re-categorises it, or says it will, and sends
//!   `template_category_update`.
//!   `POST /_fake/template-pacing` `{waba_id, name, language?, action:
//!   hold|release|drop}`: Meta paces it (its sends are taken as
//!   `held_for_quality_assessment`), then lets the held ones go or drops
//!   them (132015) and pauses it.
//! - `POST /_fake/media` `{phone_number_id, mime_type?, data?}` → `{id}`: a
//!   WhatsApp media object; `GET /{media-id}` then answers a URL, which
//!   downloads with the Bearer token for five minutes (Meta's URLs are
//!   short-lived; meta/CONTRACTS.md §7.6), then answers 404.
//!   `POST /_fake/media-urls/expire` ends every URL handed out so far, as
//!   if those minutes had passed.
//! - `GET /_fake/requests` every Graph call and media download received
//!   (tokens and secrets removed); `GET /_fake/state` pages, subscriptions, numbers; `POST /_fake/reset`.

mod messaging;
mod templates;
mod uploads;

pub use messaging::{
    whatsapp_id, PAIR_LIMITED_WA, RATE_LIMITED_PSID, RATE_LIMITED_WA, UNAVAILABLE_PSID, UNDELIVERABLE_WA,
};

use actix_web::dev::Server;
use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ids::percent_encode as enc;

#[derive(Clone, Debug)]
pub struct FakeConfig {
    pub app_id: String,
    pub app_secret: String,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig { app_id: "1234567890123456".into(), app_secret: "fake_app_secret_0123456789abcdef".into() }
    }
}

impl FakeConfig {
    /// What a server that talks to this fake, served at `base`, is given:
    /// the same app, its Graph API and OAuth dialog there.
    pub fn meta_config(&self, base: &str, verify_token: &str) -> crate::config::MetaConfig {
        crate::config::MetaConfig {
            app_id: self.app_id.clone(),
            app_secret: crate::secret::Secret::new(self.app_secret.clone()),
            verify_token: crate::secret::Secret::new(verify_token.to_string()),
            graph_url: base.to_string(),
            graph_version: "v24.0".into(),
            dialog_url: base.to_string(),
        }
    }
}

#[derive(Clone, Debug)]
enum Owner {
    User(String),
    Page(String),
    /// A system-user token that manages one WhatsApp business account.
    Waba(String),
}

#[derive(Clone, Debug)]
struct Token {
    owner: Owner,
    error: Option<(i64, i64, &'static str)>,
}

#[derive(Clone, Debug)]
struct User {
    id: String,
    name: String,
    pages: Vec<String>,
    wabas: Vec<String>,
}

#[derive(Clone, Debug)]
struct Page {
    id: String,
    name: String,
    category: String,
    token: String,
    instagram: Option<String>,
    subscribed_fields: Option<Vec<String>>,
}

#[derive(Clone, Debug)]
struct Instagram {
    id: String,
    username: String,
    name: String,
}

#[derive(Clone, Debug)]
struct Waba {
    id: String,
    phones: Vec<String>,
    subscribed: bool,
    templates: Vec<templates::Template>,
    /// Its portfolio's messaging limit, shared by its numbers: `TIER_250`
    /// (a new portfolio's) until `POST /_fake/business-capability`.
    messaging_limit: Value,
}

#[derive(Clone, Debug)]
struct Phone {
    id: String,
    display: String,
    verified_name: String,
    /// `GREEN` until `POST /_fake/number-quality` says otherwise.
    quality: String,
}

#[derive(Clone, Debug)]
struct Injection {
    path: String,
    method: Option<String>,
    status: u16,
    error: Option<Value>,
    remaining: u32,
    delay_ms: u64,
    /// The delay is the answer's, after the call was done.
    answer_late: bool,
    headers: Vec<(String, String)>,
}

/// Meta's delivery habits, on demand: the webhooks that follow a send (an
/// echo, its delivery and read; a WhatsApp reply's statuses) in one body,
/// in random order, each twice, or late.
#[derive(Default, Clone, Copy)]
struct Delivery {
    batch: bool,
    shuffle: bool,
    duplicates: bool,
    /// How long after the send the first goes.
    late: Duration,
}

#[derive(Default)]
struct State {
    next_id: u64,
    users: BTreeMap<String, User>,
    pages: BTreeMap<String, Page>,
    instagram: HashMap<String, Instagram>,
    wabas: BTreeMap<String, Waba>,
    phones: HashMap<String, Phone>,
    tokens: HashMap<String, Token>,
    codes: HashMap<String, (String, Option<String>)>,
    dialog_user: Option<String>,
    injections: Vec<Injection>,
    log: Vec<Value>,
    /// Where webhooks go (`POST /_fake/webhook-target`).
    webhook_target: Option<String>,
    /// How the webhooks that follow a send are delivered (the same call's
    /// `batch`, `shuffle`, `duplicates`, `late_ms`).
    delivery: Delivery,
    /// After this many failed deliveries in a row to one page or business
    /// account, its subscription is removed, as Meta does after an hour of
    /// failures (`POST /_fake/webhook-target` `disable_after`).
    disable_after: Option<u32>,
    /// Failed deliveries in a row, by page or business account id.
    failures: HashMap<String, u32>,
    /// Pages and business accounts unsubscribed for failing: their webhooks
    /// are no longer sent until the app subscribes again.
    disabled: std::collections::HashSet<String>,
    /// When each contact last wrote to each account: (account, contact).
    last_inbound: HashMap<(String, String), chrono::DateTime<chrono::Utc>>,
    /// Contact profiles; `None` answers 2018218 (no profile available).
    profiles: HashMap<String, Option<String>>,
    /// WhatsApp media: id -> (phone number id it belongs to, mime type, bytes).
    media: HashMap<String, (String, String, Vec<u8>)>,
    /// Messenger and Instagram photos on the fake's "CDN"
    /// (`/_fake/cdn/{name}`): name -> (mime type, bytes). Served to whoever
    /// asks, as Meta's CDN is, until `POST /_fake/cdn/expire`.
    cdn: HashMap<String, (String, Vec<u8>)>,
    /// Whether the CDN URLs handed out have expired (403, as Meta's do).
    cdn_expired: bool,
    /// The download URLs handed out for media: grant -> (media id, when).
    /// Each lasts [`MEDIA_URL_LIFETIME`], as Meta's last minutes, not days.
    media_urls: HashMap<String, (String, std::time::Instant)>,
    /// Pages Meta blocked for its policies (`POST /_fake/policy-enforcement`):
    /// they cannot send until unblocked.
    blocked_pages: std::collections::HashSet<String>,
    /// Customers' threads another app holds (handover): (page or Instagram
    /// account, contact) -> that app's id. Absent: ours (or idle).
    thread_owners: HashMap<(String, String), String>,
    /// WhatsApp customers who stopped a number's marketing messages:
    /// (phone number id, wa_id).
    marketing_stopped: std::collections::HashSet<(String, String)>,
}

impl State {
    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{:010}", self.next_id)
    }

    fn token(&mut self, kind: &str, owner: Owner) -> String {
        let t = format!("EAAFake{kind}{}", random_alnum(24));
        self.tokens.insert(t.clone(), Token { owner, error: None });
        t
    }
}

/// How long a media URL the fake hands out downloads (Meta's: minutes).
const MEDIA_URL_LIFETIME: Duration = Duration::from_secs(300);

fn random_alnum(n: usize) -> String {
    let mut r = rand::thread_rng();
    (0..n)
        .map(|_| {
            let c = r.gen_range(0..36u8);
            (if c < 10 { b'0' + c } else { b'a' + c - 10 }) as char
        })
        .collect()
}

/// The fake's shared state; cheap to clone.
#[derive(Clone)]
pub struct FakeMeta {
    cfg: FakeConfig,
    state: Arc<Mutex<State>>,
    http: reqwest::Client,
}

fn graph_error(code: i64, subcode: Option<i64>, message: &str) -> HttpResponse {
    let mut e = json!({"message": message, "type": "OAuthException", "code": code, "fbtrace_id": format!("Fake{}", random_alnum(12))});
    if let Some(s) = subcode {
        e["error_subcode"] = json!(s);
    }
    HttpResponse::BadRequest().json(json!({ "error": e }))
}

fn no_object(id: &str) -> HttpResponse {
    graph_error(
        100,
        Some(33),
        &format!(
            "Unsupported get request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation."
        ),
    )
}

impl FakeMeta {
    pub fn new(cfg: FakeConfig) -> FakeMeta {
        // Its webhooks go to a Switchboard behind whatever proxy
        // (`http::CLIENT_IDLE`).
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .pool_idle_timeout(crate::http::CLIENT_IDLE)
            .build()
            .unwrap_or_default();
        FakeMeta { cfg, state: Arc::new(Mutex::new(State::default())), http }
    }

    /// Sends webhooks to `url` (`None` keeps them).
    pub fn set_webhook_target(&self, url: Option<String>) {
        self.lock().webhook_target = url;
    }

    /// See `POST /_fake/webhook-target`'s `disable_after`.
    pub fn set_disable_after(&self, failures: Option<u32>) {
        let mut st = self.lock();
        st.disable_after = failures.map(|n| n.max(1));
        st.failures.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug in the fake; keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The HTTP app: Graph endpoints, the OAuth dialog and the control API.
    pub fn configure(&self, cfg: &mut web::ServiceConfig) {
        cfg.app_data(web::Data::new(self.clone()))
            // WhatsApp documents go up to 100 MB.
            .app_data(web::PayloadConfig::new(101 * 1024 * 1024))
            .service(web::scope("/_fake").default_service(web::to(control)))
            .default_service(web::to(graph));
    }

    pub fn build_server(&self, listener: TcpListener) -> std::io::Result<Server> {
        let fake = self.clone();
        // An idle connection is kept longer than its clients keep one (our
        // Graph client: 30 s), so they let go first and never send on one
        // it is closing, which actix's 5 s would race with.
        Ok(HttpServer::new(move || App::new().configure(|c| fake.configure(c)))
            .workers(2)
            .keep_alive(crate::http::KEEP_ALIVE)
            .listen(listener)?
            .run())
    }
}

/// Strips an optional `/vNN.N` prefix and splits the path.
fn segments(path: &str) -> Vec<String> {
    let mut parts: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(str::to_string).collect();
    if parts.first().is_some_and(|p| {
        p.len() > 1
            && p.starts_with('v')
            && p[1..].split('.').all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }) {
        parts.remove(0);
    }
    parts
}

fn query_map(req: &HttpRequest) -> HashMap<String, String> {
    web::Query::<HashMap<String, String>>::from_query(req.query_string()).map(|q| q.into_inner()).unwrap_or_default()
}

fn bearer_or_query(req: &HttpRequest, q: &HashMap<String, String>) -> Option<String> {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        // A token that is not ASCII is one Meta cannot parse (190), not none.
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")).map(str::to_string));
    header.or_else(|| q.get("access_token").cloned())
}

async fn graph(req: HttpRequest, body: web::Bytes, fake: web::Data<FakeMeta>) -> HttpResponse {
    let parts = segments(req.path());
    let q = query_map(&req);
    let token = bearer_or_query(&req, &q);
    let method = req.method().as_str().to_string();
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let (body_json, file) = if multipart {
        match uploads::read_form(req.headers(), body).await {
            Ok(form) => form,
            Err(e) => return graph_error(100, None, &format!("(#100) The multipart body could not be read: {e}")),
        }
    } else {
        (serde_json::from_slice(&body).unwrap_or(Value::Null), None)
    };
    let base = format!("{}://{}", req.connection_info().scheme(), req.connection_info().host());

    // Injected failures and delays come first.
    let injected = {
        let mut st = fake.lock();
        let path = format!("/{}", parts.join("/"));
        let mut log_q = q.clone();
        for secret in ["access_token", "client_secret", "fb_exchange_token", "input_token", "code"] {
            if log_q.contains_key(secret) {
                log_q.insert(secret.into(), "[removed]".into());
            }
        }
        let owner = token.as_ref().and_then(|t| st.tokens.get(t)).map(|t| format!("{:?}", t.owner));
        st.log.push(json!({"method": method, "path": path, "query": log_q, "body": body_json, "token_owner": owner}));
        let hit = st.injections.iter_mut().find(|i| {
            i.remaining > 0
                && path.contains(&i.path)
                && i.method.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(&method))
        });
        hit.map(|i| {
            i.remaining -= 1;
            (i.status, i.error.clone(), i.delay_ms, i.answer_late, i.headers.clone())
        })
    };
    let mut answer_in = Duration::ZERO;
    if let Some((status, error, delay_ms, answer_late, headers)) = injected {
        if answer_late && error.is_none() {
            answer_in = Duration::from_millis(delay_ms);
        } else if delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        }
        if let Some(e) = error {
            let status =
                actix_web::http::StatusCode::from_u16(status).unwrap_or(actix_web::http::StatusCode::BAD_REQUEST);
            let mut answer = HttpResponse::build(status);
            for header in headers {
                answer.insert_header(header);
            }
            return answer.json(json!({ "error": e }));
        }
    }

    let p: Vec<&str> = parts.iter().map(String::as_str).collect();
    let answer = match (method.as_str(), p.as_slice()) {
        ("GET", ["dialog", "oauth"]) => dialog(&fake, &q),
        ("GET", ["oauth", "access_token"]) => access_token(&fake, &q),
        ("GET", ["debug_token"]) => debug_token(&fake, &q, token.as_deref()),
        (_, ["me", rest @ ..]) => with_token(&fake, token.as_deref(), |st, owner| match (owner, rest) {
            (Owner::User(u), []) => {
                let user = &st.users[u];
                HttpResponse::Ok().json(json!({"id": user.id, "name": user.name}))
            }
            (Owner::User(u), ["accounts"]) => accounts(st, u, &q),
            (Owner::Page(p), []) => HttpResponse::Ok().json(json!({"id": p, "name": st.pages[p].name})),
            _ => graph_error(100, None, "Unsupported request on /me for this token"),
        }),
        (m, [id, "subscribed_apps"]) => {
            let (m, id) = (m.to_string(), id.to_string());
            let app_id = fake.cfg.app_id.clone();
            with_token(&fake, token.as_deref(), move |st, owner| subscribed_apps(st, owner, &m, &id, &q, &app_id))
        }
        ("GET", [id, "phone_numbers"]) => {
            let id = id.to_string();
            with_token(&fake, token.as_deref(), move |st, owner| phone_numbers(st, owner, &id, &q))
        }
        ("GET", [id, "message_templates"]) => {
            let id = id.to_string();
            with_token(&fake, token.as_deref(), move |st, owner| templates::list(st, owner, &id, &q))
        }
        ("POST", [id, "message_templates"]) => {
            let id = id.to_string();
            with_token(&fake, token.as_deref(), move |st, owner| templates::create(st, owner, &id, &body_json))
        }
        ("DELETE", [id, "message_templates"]) => {
            let id = id.to_string();
            with_token(&fake, token.as_deref(), move |st, owner| templates::delete(st, owner, &id, &q))
        }
        ("POST", [id, "messages"]) => {
            let id = id.to_string();
            let f = fake.get_ref().clone();
            with_token(&fake, token.as_deref(), move |st, owner| {
                messaging::send(&f, st, owner, &id, &body_json, file.as_ref(), &base)
            })
        }
        ("POST", [id, action @ ("take_thread_control" | "pass_thread_control")]) => {
            let (id, take) = (id.to_string(), *action == "take_thread_control");
            let app_id = fake.cfg.app_id.clone();
            with_token(&fake, token.as_deref(), move |st, owner| {
                messaging::thread_control(st, owner, &id, take, &body_json, &app_id)
            })
        }
        ("POST", [id, "media"]) => {
            let id = id.to_string();
            with_token(&fake, token.as_deref(), move |st, owner| {
                uploads::whatsapp_upload(st, owner, &id, &body_json, file)
            })
        }
        ("GET", [id]) => {
            let id = id.to_string();
            let fields = q.get("fields").cloned();
            with_token(&fake, token.as_deref(), move |st, owner| {
                messaging::media(st, owner, &id, &base)
                    .or_else(|| messaging::profile(st, &id, fields.as_deref()))
                    .unwrap_or_else(|| object(st, &id))
            })
        }
        _ => graph_error(100, None, &format!("Unknown path components: {}", req.path())),
    };
    // Done already: a client that stops waiting does not undo it.
    if !answer_in.is_zero() {
        tokio::time::sleep(answer_in).await;
    }
    answer
}

/// Checks the token and runs `f` with its owner.
fn with_token(
    fake: &FakeMeta,
    token: Option<&str>,
    f: impl FnOnce(&mut State, &Owner) -> HttpResponse,
) -> HttpResponse {
    let mut st = fake.lock();
    let Some(t) = token.and_then(|t| st.tokens.get(t)).cloned() else {
        return if token.is_none() {
            graph_error(2500, None, "An active access token must be used to query information about the current user.")
        } else {
            graph_error(190, None, "Invalid OAuth access token - Cannot parse access token")
        };
    };
    if let Some((code, subcode, message)) = t.error {
        return graph_error(code, Some(subcode), message);
    }
    f(&mut st, &t.owner)
}

fn dialog(fake: &FakeMeta, q: &HashMap<String, String>) -> HttpResponse {
    if q.get("client_id") != Some(&fake.cfg.app_id) {
        return graph_error(100, None, "Invalid App ID");
    }
    let Some(redirect) = q.get("redirect_uri").filter(|r| r.starts_with("http")) else {
        return graph_error(100, None, "redirect_uri is required");
    };
    let state_param = q.get("state").cloned().unwrap_or_default();
    let mut st = fake.lock();
    let user = q.get("fake_user").cloned().or_else(|| st.dialog_user.clone());
    let Some(user) = user.filter(|u| st.users.contains_key(u)) else {
        // Let a person pick who logs in.
        let mut html =
            String::from("<!doctype html><title>Fake Meta login</title><h1>Log in to the fake Meta as</h1><ul>");
        let base = q.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&");
        for u in st.users.values() {
            html.push_str(&format!(
                "<li><a href=\"?{base}&fake_user={}\">{} ({} pages)</a></li>",
                enc(&u.id),
                html_escape(&u.name),
                u.pages.len()
            ));
        }
        html.push_str("</ul>");
        return HttpResponse::Ok().content_type("text/html; charset=utf-8").body(html);
    };
    let code = format!("FakeCode{}", random_alnum(32));
    st.codes.insert(code.clone(), (user, Some(redirect.clone())));
    let sep = if redirect.contains('?') { '&' } else { '?' };
    let location = format!("{redirect}{sep}code={}&state={}", enc(&code), enc(&state_param));
    HttpResponse::Found().insert_header((header::LOCATION, location)).finish()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn access_token(fake: &FakeMeta, q: &HashMap<String, String>) -> HttpResponse {
    if q.get("client_id") != Some(&fake.cfg.app_id) || q.get("client_secret") != Some(&fake.cfg.app_secret) {
        return graph_error(101, None, "Error validating client secret.");
    }
    let mut st = fake.lock();
    let user = if q.get("grant_type").map(String::as_str) == Some("fb_exchange_token") {
        match q.get("fb_exchange_token").and_then(|t| st.tokens.get(t)) {
            Some(Token { owner: Owner::User(u), error: None }) => u.clone(),
            _ => return graph_error(190, None, "Invalid OAuth access token."),
        }
    } else {
        let Some(code) = q.get("code") else {
            return graph_error(100, None, "Missing authorization code");
        };
        // Codes are single use.
        let Some((user, redirect)) = st.codes.remove(code) else {
            return graph_error(100, Some(36009), "This authorization code has been used.");
        };
        if redirect.is_some() && redirect.as_ref() != q.get("redirect_uri") {
            return graph_error(100, Some(36008), "Error validating verification code. Please make sure your redirect_uri is identical to the one you used in the OAuth dialog request");
        }
        user
    };
    let token = st.token("User", Owner::User(user));
    HttpResponse::Ok().json(json!({"access_token": token, "token_type": "bearer", "expires_in": 5183944}))
}

fn debug_token(fake: &FakeMeta, q: &HashMap<String, String>, token: Option<&str>) -> HttpResponse {
    if token != Some(&format!("{}|{}", fake.cfg.app_id, fake.cfg.app_secret)) {
        return graph_error(190, None, "Invalid OAuth access token signature.");
    }
    let st = fake.lock();
    let Some(input) = q.get("input_token").and_then(|t| st.tokens.get(t)) else {
        let data =
            json!({"is_valid": false, "scopes": [], "error": {"code": 190, "message": "Invalid OAuth access token."}});
        return HttpResponse::Ok().json(json!({ "data": data }));
    };
    let (kind, user, pages, wabas) = match &input.owner {
        Owner::User(u) => {
            let user = &st.users[u];
            ("USER", Some(u.clone()), user.pages.clone(), user.wabas.clone())
        }
        Owner::Page(p) => ("PAGE", None, vec![p.clone()], vec![]),
        Owner::Waba(w) => ("SYSTEM_USER", None, vec![], vec![w.clone()]),
    };
    let mut data = json!({"app_id": fake.cfg.app_id, "type": kind, "application": "Switchboard (fake)"});
    if let Some(u) = user {
        data["user_id"] = json!(u);
    }
    if let Some((code, subcode, message)) = input.error {
        // Meta still describes the token, and says why it no longer works.
        data["data_access_expires_at"] = json!(0);
        data["expires_at"] = json!(1773139990);
        data["is_valid"] = json!(false);
        data["scopes"] = json!([]);
        data["error"] = json!({"code": code, "subcode": subcode, "message": message});
    } else {
        let igs: Vec<String> = pages.iter().filter_map(|p| st.pages.get(p).and_then(|p| p.instagram.clone())).collect();
        data["data_access_expires_at"] = json!(1780916000);
        data["expires_at"] = json!(0);
        data["is_valid"] = json!(true);
        data["issued_at"] = json!(1773140000);
        data["scopes"] = json!([
            "pages_show_list",
            "pages_messaging",
            "pages_manage_metadata",
            "instagram_basic",
            "instagram_manage_messages",
            "whatsapp_business_management",
            "whatsapp_business_messaging"
        ]);
        data["granular_scopes"] = json!([
            {"scope": "pages_show_list", "target_ids": pages},
            {"scope": "pages_messaging", "target_ids": pages},
            {"scope": "instagram_manage_messages", "target_ids": igs},
            {"scope": "whatsapp_business_management", "target_ids": wabas},
            {"scope": "whatsapp_business_messaging", "target_ids": wabas},
        ]);
    }
    HttpResponse::Ok().json(json!({ "data": data }))
}

fn accounts(st: &State, user: &str, q: &HashMap<String, String>) -> HttpResponse {
    let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(25).clamp(1, 100);
    let start = q
        .get("after")
        .and_then(|a| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(a).ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.strip_prefix("idx:").and_then(|n| n.parse::<usize>().ok()))
        .unwrap_or(0);
    let with_ig = q.get("fields").is_some_and(|f| f.contains("instagram_business_account"));
    let ids = &st.users[user].pages;
    let data: Vec<Value> = ids
        .iter()
        .skip(start)
        .take(limit)
        .filter_map(|id| st.pages.get(id))
        .map(|p| {
            let mut v = json!({
                "access_token": p.token, "category": p.category,
                "category_list": [{"id": "2209", "name": p.category}],
                "name": p.name, "id": p.id, "tasks": ["ANALYZE", "MESSAGING", "MODERATE", "MANAGE"],
            });
            if let (true, Some(ig)) = (with_ig, p.instagram.as_ref().and_then(|i| st.instagram.get(i))) {
                v["instagram_business_account"] = json!({"id": ig.id, "username": ig.username, "name": ig.name});
            }
            v
        })
        .collect();
    use base64::Engine;
    let cursor = |i: usize| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("idx:{i}"));
    let end = start + data.len();
    let mut paging = json!({"cursors": {"before": cursor(start), "after": cursor(end)}});
    if end < ids.len() {
        paging["next"] =
            json!(format!("https://graph.facebook.com/v24.0/me/accounts?after={}&limit={limit}", cursor(end)));
    }
    HttpResponse::Ok().json(json!({"data": data, "paging": paging}))
}

fn subscribed_apps(
    st: &mut State,
    owner: &Owner,
    method: &str,
    id: &str,
    q: &HashMap<String, String>,
    app_id: &str,
) -> HttpResponse {
    if let Some(page) = st.pages.get_mut(id) {
        if !matches!(owner, Owner::Page(p) if p == id) {
            return graph_error(210, None, "(#210) A page access token is required to request this resource.");
        }
        return match method {
            "POST" => {
                let fields = q.get("subscribed_fields").map(|f| f.split(',').map(str::to_string).collect());
                let Some(fields) = fields else {
                    return graph_error(100, None, "(#100) The parameter subscribed_fields is required.");
                };
                page.subscribed_fields = Some(fields);
                st.disabled.remove(id);
                HttpResponse::Ok().json(json!({"success": true}))
            }
            "DELETE" => {
                page.subscribed_fields = None;
                HttpResponse::Ok().json(json!({"success": true}))
            }
            _ => {
                let data: Vec<Value> = page
                    .subscribed_fields
                    .iter()
                    .map(|f| json!({"category": "Business", "link": "https://switchboard.example.test/", "name": "Switchboard", "id": app_id, "subscribed_fields": f}))
                    .collect();
                HttpResponse::Ok().json(json!({ "data": data }))
            }
        };
    }
    if st.wabas.contains_key(id) {
        if !owns_waba(st, owner, id) {
            return graph_error(200, None, "(#200) Permissions error");
        }
        let Some(waba) = st.wabas.get_mut(id) else { return no_object(id) };
        return match method {
            "POST" => {
                waba.subscribed = true;
                st.disabled.remove(id);
                HttpResponse::Ok().json(json!({"success": true}))
            }
            "DELETE" => {
                waba.subscribed = false;
                HttpResponse::Ok().json(json!({"success": true}))
            }
            _ => {
                let data: Vec<Value> = if waba.subscribed {
                    vec![json!({"whatsapp_business_api_data": {"id": app_id, "name": "Switchboard"}})]
                } else {
                    vec![]
                };
                HttpResponse::Ok().json(json!({ "data": data }))
            }
        };
    }
    no_object(id)
}

fn owns_waba(st: &State, owner: &Owner, waba: &str) -> bool {
    match owner {
        Owner::Waba(w) => w == waba,
        Owner::User(u) => st.users.get(u).is_some_and(|u| u.wabas.iter().any(|w| w == waba)),
        Owner::Page(_) => false,
    }
}

/// `GET /{waba}/phone_numbers`: the default fields, and the portfolio's
/// messaging limit when `fields` asks for it, as Graph answers.
fn phone_numbers(st: &State, owner: &Owner, id: &str, q: &HashMap<String, String>) -> HttpResponse {
    let Some(waba) = st.wabas.get(id) else { return no_object(id) };
    if !owns_waba(st, owner, id) {
        return graph_error(200, None, "(#200) Permissions error");
    }
    const LIMIT: &str = "whatsapp_business_manager_messaging_limit";
    let with_limit = q.get("fields").is_some_and(|f| f.split(',').any(|f| f.trim() == LIMIT));
    let data: Vec<Value> = waba
        .phones
        .iter()
        .filter_map(|p| st.phones.get(p))
        .map(|p| {
            let mut number = json!({
                "verified_name": p.verified_name, "code_verification_status": "VERIFIED",
                "display_phone_number": p.display, "quality_rating": p.quality, "platform_type": "CLOUD_API",
                "throughput": {"level": "STANDARD"}, "id": p.id,
            });
            if with_limit {
                number[LIMIT] = waba.messaging_limit.clone();
            }
            number
        })
        .collect();
    HttpResponse::Ok().json(json!({"data": data, "paging": {"cursors": {"before": "QVFIUmFrZUJlZm9yZQZDZD", "after": "QVFIUmFrZUFmdGVyZAZDZD"}}}))
}

fn object(st: &State, id: &str) -> HttpResponse {
    if let Some(p) = st.pages.get(id) {
        let mut v = json!({"id": p.id, "name": p.name});
        if let Some(ig) = &p.instagram {
            v["instagram_business_account"] = json!({"id": ig});
        }
        return HttpResponse::Ok().json(v);
    }
    if let Some(ig) = st.instagram.get(id) {
        return HttpResponse::Ok().json(json!({"id": ig.id, "username": ig.username, "name": ig.name}));
    }
    no_object(id)
}

// ---- control API -------------------------------------------------------

#[derive(Deserialize)]
struct NewUser {
    id: Option<String>,
    name: Option<String>,
    #[serde(default)]
    pages: Vec<NewPage>,
    #[serde(default)]
    wabas: Vec<NewWaba>,
}

#[derive(Deserialize)]
struct NewPage {
    id: Option<String>,
    name: String,
    category: Option<String>,
    instagram: Option<NewInstagram>,
}

#[derive(Deserialize)]
struct NewInstagram {
    id: Option<String>,
    username: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct NewWaba {
    id: Option<String>,
    #[serde(default)]
    phone_numbers: Vec<NewPhone>,
}

#[derive(Deserialize)]
struct NewPhone {
    id: Option<String>,
    display_phone_number: Option<String>,
    verified_name: Option<String>,
}

/// An injected error's `headers`: names and values HTTP allows.
fn injected_headers(given: Option<&Value>) -> Result<Vec<(String, String)>, &'static str> {
    let Some(given) = given.filter(|v| !v.is_null()) else { return Ok(Vec::new()) };
    let Some(map) = given.as_object() else { return Err("headers must be an object of names and values") };
    let mut headers = Vec::new();
    for (name, value) in map {
        let value = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let valid = actix_web::http::header::HeaderName::try_from(name.as_str()).is_ok()
            && actix_web::http::header::HeaderValue::from_str(&value).is_ok();
        if !valid {
            return Err("a header's name or value is not one HTTP allows");
        }
        headers.push((name.clone(), value));
    }
    Ok(headers)
}

fn bad(message: &str) -> HttpResponse {
    HttpResponse::BadRequest().json(json!({"error": {"code": "bad_request", "message": message}}))
}

async fn control(req: HttpRequest, body: web::Bytes, fake: web::Data<FakeMeta>) -> HttpResponse {
    let path = req.path().trim_start_matches("/_fake").trim_matches('/').to_string();
    let method = req.method().as_str().to_string();
    let body: Value = if body.is_empty() { json!({}) } else { serde_json::from_slice(&body).unwrap_or(Value::Null) };
    match (method.as_str(), path.as_str()) {
        ("POST", "users") => match serde_json::from_value::<NewUser>(body) {
            Ok(u) => create_user(&fake, u),
            Err(e) => bad(&e.to_string()),
        },
        ("POST", "dialog-user") => {
            let Some(u) = body.get("user_id").and_then(Value::as_str) else { return bad("user_id is required") };
            fake.lock().dialog_user = Some(u.to_string());
            HttpResponse::Ok().json(json!({"ok": true}))
        }
        ("POST", "codes") => {
            let Some(u) = body.get("user_id").and_then(Value::as_str) else { return bad("user_id is required") };
            let mut st = fake.lock();
            if !st.users.contains_key(u) {
                return bad("no such user");
            }
            let code = format!("FakeCode{}", random_alnum(32));
            let redirect = body.get("redirect_uri").and_then(Value::as_str).map(str::to_string);
            st.codes.insert(code.clone(), (u.to_string(), redirect));
            HttpResponse::Ok().json(json!({ "code": code }))
        }
        ("POST", "tokens/expire" | "tokens/revoke" | "tokens/restore") => {
            let mut st = fake.lock();
            let token = match (body.get("token").and_then(Value::as_str), body.get("page_id").and_then(Value::as_str)) {
                (Some(t), _) => t.to_string(),
                (None, Some(p)) => match st.pages.get(p) {
                    Some(page) => page.token.clone(),
                    None => return bad("no such page"),
                },
                _ => return bad("token or page_id is required"),
            };
            let error = match path.as_str() {
                "tokens/expire" => Some((190, 463, "Error validating access token: Session has expired on Tuesday, 10-Mar-26 03:00:00 PDT. The current time is Tuesday, 10-Mar-26 04:12:45 PDT.")),
                "tokens/revoke" => Some((190, 467, "Error validating access token: The user has not authorized application 1234567890123456.")),
                _ => None,
            };
            match st.tokens.get_mut(&token) {
                Some(t) => {
                    t.error = error;
                    HttpResponse::Ok().json(json!({"ok": true}))
                }
                None => bad("no such token"),
            }
        }
        ("POST", "errors") => {
            let Some(p) = body.get("path").and_then(Value::as_str) else { return bad("path is required") };
            let inj = Injection {
                path: p.to_string(),
                method: body.get("method").and_then(Value::as_str).map(str::to_string),
                status: body.get("status").and_then(Value::as_u64).map(|s| s as u16).unwrap_or(400),
                error: match body.get("error").filter(|e| !e.is_null()).map(Value::as_object) {
                    None => None,
                    Some(None) => return bad("error must be an object: {code, error_subcode?, message?}"),
                    Some(Some(e)) => {
                        let mut e = e.clone();
                        e.entry("type").or_insert_with(|| json!("OAuthException"));
                        e.entry("message").or_insert_with(|| json!("Injected error"));
                        Some(Value::Object(e))
                    }
                },
                remaining: body.get("times").and_then(Value::as_u64).unwrap_or(1) as u32,
                delay_ms: body.get("delay_ms").and_then(Value::as_u64).unwrap_or(0),
                answer_late: body.get("answer_late").and_then(Value::as_bool).unwrap_or(false),
                headers: match injected_headers(body.get("headers")) {
                    Ok(h) => h,
                    Err(why) => return bad(why),
                },
            };
            fake.lock().injections.push(inj);
            HttpResponse::Ok().json(json!({"ok": true}))
        }
        ("POST", "webhook-target") => {
            let url = body.get("url").and_then(Value::as_str).map(str::to_string);
            fake.set_webhook_target(url);
            fake.set_disable_after(
                body.get("disable_after").and_then(Value::as_u64).map(|n| n.min(u32::MAX as u64) as u32),
            );
            let flag = |k: &str| body.get(k).and_then(Value::as_bool).unwrap_or(false);
            let late = Duration::from_millis(body.get("late_ms").and_then(Value::as_u64).unwrap_or(0));
            fake.lock().delivery =
                Delivery { batch: flag("batch"), shuffle: flag("shuffle"), duplicates: flag("duplicates"), late };
            HttpResponse::Ok().json(json!({"ok": true}))
        }
        ("POST", "inbound") => {
            let base = format!("{}://{}", req.connection_info().scheme(), req.connection_info().host());
            messaging::inbound(&fake, &body, &base).await
        }
        ("POST", "cdn/expire") => {
            fake.lock().cdn_expired = true;
            HttpResponse::Ok().json(json!({"ok": true}))
        }
        ("GET", p) if p.starts_with("cdn/") => {
            let st = fake.lock();
            match st.cdn.get(p.trim_start_matches("cdn/")) {
                // Meta's CDN refuses an expired URL's signature with a 403.
                Some(_) if st.cdn_expired => HttpResponse::Forbidden().body("URL signature expired"),
                Some((mime, data)) => HttpResponse::Ok().content_type(mime.as_str()).body(data.clone()),
                None => HttpResponse::NotFound().finish(),
            }
        }
        ("POST", "templates") => templates::add(&mut fake.lock(), &body),
        ("POST", "template-status") => templates::review(&fake, &body).await,
        ("POST", "template-category") => templates::recategorise(&fake, &body).await,
        ("POST", "template-pacing") => templates::pacing(&fake, &body).await,
        ("POST", "account-update") => messaging::account_update(&fake, &body).await,
        ("POST", "number-quality") => messaging::number_quality(&fake, &body).await,
        ("POST", "business-capability") => messaging::business_capability(&fake, &body).await,
        ("POST", "user-preferences") => messaging::user_preferences(&fake, &body).await,
        ("POST", "policy-enforcement") => messaging::policy_enforcement(&fake, &body).await,
        ("POST", "handover") => messaging::handover(&fake, &body).await,
        ("POST", "history") => messaging::history(&fake, &body).await,
        ("POST", "media") => messaging::add_media(&fake, &body),
        ("POST", "media-urls/expire") => {
            fake.lock().media_urls.clear();
            HttpResponse::Ok().json(json!({"ok": true}))
        }
        (_, p) if p.starts_with("media/") && p.ends_with("/download") => {
            let id = p.trim_start_matches("media/").trim_end_matches("/download").to_string();
            let q = query_map(&req);
            let token = bearer_or_query(&req, &q);
            let range = req.headers().get("range").and_then(|v| v.to_str().ok());
            let method = req.method().as_str();
            messaging::download(&fake, &id, method, q.get("grant").map(String::as_str), token.as_deref(), range)
        }
        ("GET", "requests") => HttpResponse::Ok().json(json!({"items": fake.lock().log.clone()})),
        ("GET", "state") => {
            let st = fake.lock();
            let pages: Vec<Value> = st
                .pages
                .values()
                .map(|p| json!({"id": p.id, "name": p.name, "instagram": p.instagram, "subscribed_fields": p.subscribed_fields}))
                .collect();
            let wabas: Vec<Value> = st
                .wabas
                .values()
                .map(|w| json!({"id": w.id, "phone_numbers": w.phones, "subscribed": w.subscribed}))
                .collect();
            HttpResponse::Ok()
                .json(json!({"pages": pages, "wabas": wabas, "users": st.users.keys().collect::<Vec<_>>()}))
        }
        ("POST", "reset") => {
            let mut st = fake.lock();
            let target = st.webhook_target.take();
            *st = State::default();
            st.webhook_target = target;
            HttpResponse::Ok().json(json!({"ok": true}))
        }
        _ => HttpResponse::NotFound().json(json!({"error": {"code": "not_found", "message": "unknown control path"}})),
    }
}

fn create_user(fake: &FakeMeta, new: NewUser) -> HttpResponse {
    let mut st = fake.lock();
    let user_id = new.id.unwrap_or_else(|| st.id("1016"));
    if st.users.contains_key(&user_id) {
        return bad("user exists");
    }
    let mut out_pages = Vec::new();
    let mut page_ids = Vec::new();
    for p in new.pages {
        let id = p.id.unwrap_or_else(|| st.id("10293"));
        if st.pages.contains_key(&id) {
            return bad(&format!("page {id} exists"));
        }
        let token = st.token("Page", Owner::Page(id.clone()));
        let instagram = p.instagram.map(|ig| {
            let ig_id = ig.id.unwrap_or_else(|| st.id("178414"));
            let username = ig.username.unwrap_or_else(|| format!("ig_{ig_id}"));
            st.instagram.insert(
                ig_id.clone(),
                Instagram {
                    id: ig_id.clone(),
                    username: username.clone(),
                    name: ig.name.unwrap_or_else(|| username.clone()),
                },
            );
            ig_id
        });
        out_pages.push(json!({"id": id, "name": p.name, "access_token": token, "instagram_id": instagram}));
        st.pages.insert(
            id.clone(),
            Page {
                id: id.clone(),
                name: p.name,
                category: p.category.unwrap_or_else(|| "Business".into()),
                token,
                instagram,
                subscribed_fields: None,
            },
        );
        page_ids.push(id);
    }
    let mut out_wabas = Vec::new();
    let mut waba_ids = Vec::new();
    for w in new.wabas {
        let id = w.id.unwrap_or_else(|| st.id("11223"));
        let mut phones = Vec::new();
        for ph in w.phone_numbers {
            let pid = ph.id.unwrap_or_else(|| st.id("12345"));
            let display =
                ph.display_phone_number.unwrap_or_else(|| format!("+1 555-{}", &pid[pid.len().saturating_sub(7)..]));
            st.phones.insert(
                pid.clone(),
                Phone {
                    id: pid.clone(),
                    display,
                    verified_name: ph.verified_name.unwrap_or_else(|| "Fake Business".into()),
                    quality: "GREEN".into(),
                },
            );
            phones.push(pid);
        }
        let token = st.token("System", Owner::Waba(id.clone()));
        out_wabas.push(json!({"id": id, "access_token": token, "phone_numbers": phones}));
        st.wabas.insert(
            id.clone(),
            Waba {
                id: id.clone(),
                phones,
                subscribed: false,
                templates: vec![templates::Template::sample()],
                messaging_limit: json!("TIER_250"),
            },
        );
        waba_ids.push(id);
    }
    let user_token = st.token("User", Owner::User(user_id.clone()));
    st.users.insert(
        user_id.clone(),
        User {
            id: user_id.clone(),
            name: new.name.unwrap_or_else(|| "Fake User".into()),
            pages: page_ids,
            wabas: waba_ids,
        },
    );
    HttpResponse::Created().json(json!({
        "user": {"id": user_id, "access_token": user_token},
        "pages": out_pages,
        "wabas": out_wabas,
    }))
}

#[cfg(test)]
mod tests {
    use super::segments;

    #[test]
    fn version_prefixes_are_optional() {
        assert_eq!(segments("/v24.0/me/accounts"), ["me", "accounts"]);
        assert_eq!(segments("/v3.2/me"), ["me"]);
        assert_eq!(segments("/me/accounts"), ["me", "accounts"]);
        assert_eq!(segments("/vip/x"), ["vip", "x"]);
    }
}
