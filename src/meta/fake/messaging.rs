//! The fake's messaging side: the Send API (Messenger, Instagram), sender
//! actions, WhatsApp messages and mark-read, media, user profiles, and the
//! webhooks Meta would send back — echoes, deliveries, reads, WhatsApp
//! statuses — signed with the app secret exactly as Meta does (ASCII-escaped
//! body, `X-Hub-Signature-256` and `X-Hub-Signature`).
//!
//! The messaging window is enforced for contacts the fake has seen write
//! (`POST /_fake/inbound`): Messenger/Instagram answer `(#10)` subcode
//! 2018278 outside 24 hours without the `HUMAN_AGENT` tag (7 days with it);
//! WhatsApp accepts the send and then reports a `failed` status with 131047,
//! unless it is a template (`templates`), which may be sent at any time.

use actix_web::HttpResponse;
use chrono::{DateTime, Duration, Utc};
use serde_json::{json, Value};

use super::uploads::FakeFile;
use super::{graph_error, random_alnum, FakeMeta, Owner, State};
use crate::meta::webhook::{meta_json, sign, sign_sha1};

/// A Messenger/Instagram recipient Meta says is not available (551/1545041).
pub const UNAVAILABLE_PSID: &str = "5510000000001545";
/// A Messenger/Instagram recipient whose sends hit the page's rate limit (613).
pub const RATE_LIMITED_PSID: &str = "6130000000000613";
/// A WhatsApp number whose sends hit the throughput limit (130429, HTTP 429).
pub const RATE_LIMITED_WA: &str = "15550130429";
/// A WhatsApp number that cannot receive messages (131026, answered at once).
pub const UNDELIVERABLE_WA: &str = "15550131026";
/// A WhatsApp number the business has written to too often just now: the
/// pair rate limit (131056), which holds sends to that customer only.
pub const PAIR_LIMITED_WA: &str = "15550131056";

/// Who a message goes through.
#[derive(Clone, Debug)]
pub(super) enum Account {
    Page(String),
    Instagram { ig: String },
    Phone(String),
}

impl State {
    pub(super) fn account_of(&self, id: &str) -> Option<Account> {
        if self.pages.contains_key(id) {
            Some(Account::Page(id.to_string()))
        } else if self.instagram.contains_key(id) {
            Some(Account::Instagram { ig: id.to_string() })
        } else if self.phones.contains_key(id) {
            Some(Account::Phone(id.to_string()))
        } else {
            None
        }
    }

    /// A number's business account and the `metadata` its webhooks carry
    /// (Meta writes the display number in digits only).
    fn number_metadata(&self, phone: &str) -> (String, Value) {
        let waba = self.wabas.values().find(|w| w.phones.iter().any(|p| p == phone)).map(|w| w.id.clone());
        let display: String = self
            .phones
            .get(phone)
            .map(|p| p.display.chars().filter(char::is_ascii_digit).collect())
            .unwrap_or_default();
        (waba.unwrap_or_default(), json!({"display_phone_number": display, "phone_number_id": phone}))
    }

    /// Whether `owner` may act for the account.
    pub(super) fn may_use(&self, owner: &Owner, account: &Account) -> bool {
        match (owner, account) {
            (Owner::Page(p), Account::Page(id)) => p == id,
            (Owner::Page(p), Account::Instagram { ig }) => {
                self.pages.get(p).and_then(|pg| pg.instagram.as_ref()) == Some(ig)
            }
            (Owner::Waba(w), Account::Phone(ph)) => self.wabas.get(w).is_some_and(|wb| wb.phones.contains(ph)),
            (Owner::User(u), Account::Phone(ph)) => self.users.get(u).is_some_and(|usr| {
                usr.wabas.iter().any(|w| self.wabas.get(w).is_some_and(|wb| wb.phones.contains(ph)))
            }),
            _ => false,
        }
    }
}

fn mid() -> String {
    format!("m_{}", random_alnum(40))
}

fn wamid() -> String {
    use base64::Engine;
    format!("wamid.{}", base64::engine::general_purpose::STANDARD.encode(random_alnum(30)))
}

/// `POST /{account}/messages`: JSON, or for a Messenger or Instagram
/// attachment multipart with the file (`filedata`, `uploads`); `base` is
/// where the fake's CDN is.
pub(super) fn send(
    fake: &FakeMeta,
    st: &mut State,
    owner: &Owner,
    id: &str,
    body: &Value,
    file: Option<&FakeFile>,
    base: &str,
) -> HttpResponse {
    let Some(account) = st.account_of(id) else { return super::no_object(id) };
    if !st.may_use(owner, &account) {
        return graph_error(200, None, "(#200) The access token cannot send as this account");
    }
    match account {
        Account::Phone(_) if file.is_some() => {
            wa_error(100, "(#100) Upload media to /{phone-number-id}/media, then send its id")
        }
        Account::Phone(phone) => whatsapp(fake, st, &phone, body),
        acct => messenger(fake, st, acct, body, file, base),
    }
}

/// The Send API's message tags (a message outside the 24-hour window).
const MESSAGE_TAGS: [&str; 4] = ["CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE", "ACCOUNT_UPDATE", "HUMAN_AGENT"];

/// `recipient.id`, when it is there and not blank (Meta refuses both alike).
fn recipient_of(body: &Value) -> Option<String> {
    body.pointer("/recipient/id").and_then(Value::as_str).filter(|r| !r.trim().is_empty()).map(str::to_string)
}

fn messenger(
    fake: &FakeMeta,
    st: &mut State,
    acct: Account,
    body: &Value,
    file: Option<&FakeFile>,
    base: &str,
) -> HttpResponse {
    let Some(recipient) = recipient_of(body) else {
        return graph_error(100, None, "(#100) The parameter recipient is required");
    };
    let account_id = match &acct {
        Account::Page(p) => p.clone(),
        Account::Instagram { ig } => ig.clone(),
        Account::Phone(p) => p.clone(),
    };
    if matches!(&acct, Account::Page(p) if st.blocked_pages.contains(p)) {
        return graph_error(
            368,
            None,
            "(#368) The action attempted has been deemed abusive or is otherwise disallowed",
        );
    }
    if let Some(action) = body.get("sender_action").and_then(Value::as_str) {
        if !["typing_on", "typing_off", "mark_seen", "react", "unreact"].contains(&action) {
            return graph_error(
                100,
                None,
                "(#100) Param sender_action must be one of {MARK_SEEN, TYPING_ON, TYPING_OFF, REACT, UNREACT}",
            );
        }
        if matches!(action, "react" | "unreact") && body.pointer("/payload/message_id").is_none() {
            return graph_error(100, None, "(#100) Param payload[message_id] is required");
        }
        if action == "react" && body.pointer("/payload/reaction").and_then(Value::as_str).is_none() {
            return graph_error(100, None, "(#100) Param payload[reaction] is required");
        }
        return HttpResponse::Ok().json(json!({"recipient_id": recipient}));
    }
    let Some(message) = body.get("message") else {
        return graph_error(100, None, "(#100) The parameter message is required");
    };
    match recipient.as_str() {
        UNAVAILABLE_PSID => return graph_error(551, Some(1545041), "(#551) This person isn't available right now."),
        RATE_LIMITED_PSID => return graph_error(613, None, "(#613) Calls to this api have exceeded the rate limit."),
        _ => {}
    }
    let attachments = match super::uploads::messenger_attachment(st, &acct, message, file, base) {
        Ok(a) => a,
        Err(refused) => return *refused,
    };
    let text = message.get("text").and_then(Value::as_str).unwrap_or("");
    if text.chars().count() > 2000 {
        return graph_error(100, None, "(#100) Length of param message[text] must be less than or equal to 2000");
    }
    if let Some(quick) = message.get("quick_replies") {
        let fine = quick.as_array().is_some_and(|q| {
            (1..=13).contains(&q.len())
                && q.iter().all(|r| {
                    r.get("content_type").and_then(Value::as_str) == Some("text")
                        && r.get("title")
                            .and_then(Value::as_str)
                            .is_some_and(|t| !t.is_empty() && t.chars().count() <= 20)
                        && r.get("payload").and_then(Value::as_str).is_some_and(|p| !p.is_empty())
                })
        });
        if !fine {
            return graph_error(100, None, "(#100) Param message[quick_replies] must be 1 to 13 text quick replies with a title of at most 20 characters and a payload");
        }
    }
    let messaging_type = body.get("messaging_type").and_then(Value::as_str).unwrap_or("");
    let tag = body.get("tag").and_then(Value::as_str);
    match messaging_type {
        "RESPONSE" | "UPDATE" => {}
        "MESSAGE_TAG" if tag.is_some_and(|t| MESSAGE_TAGS.contains(&t)) => {}
        "MESSAGE_TAG" if tag.is_some() => {
            return graph_error(
                100,
                None,
                "(#100) Param tag must be one of {CONFIRMED_EVENT_UPDATE, POST_PURCHASE_UPDATE, ACCOUNT_UPDATE, HUMAN_AGENT}",
            )
        }
        "MESSAGE_TAG" => return graph_error(100, None, "(#100) Param tag is required for messaging_type MESSAGE_TAG"),
        _ => {
            return graph_error(100, None, "(#100) Param messaging_type must be one of {RESPONSE, UPDATE, MESSAGE_TAG}")
        }
    }
    if let Some(last) = st.last_inbound.get(&(account_id.clone(), recipient.clone())) {
        let age = Utc::now() - *last;
        let allowed = if tag == Some("HUMAN_AGENT") { Duration::days(7) } else { Duration::hours(24) };
        if age > allowed {
            let sub = if matches!(acct, Account::Instagram { .. }) { 2534022 } else { 2018278 };
            return graph_error(10, Some(sub), "(#10) This message is sent outside of allowed window.");
        }
    }
    let message_id = mid();
    let now = Utc::now();
    let (object, mut echo_message) = match &acct {
        Account::Instagram { .. } => ("instagram", json!({"mid": message_id, "text": text, "is_echo": true})),
        _ => {
            let mut m = json!({"mid": message_id, "is_echo": true, "app_id": fake.cfg.app_id.parse::<u64>().map(Value::from).unwrap_or(json!(fake.cfg.app_id)), "text": text});
            if let Some(md) = message.get("metadata") {
                m["metadata"] = md.clone();
            }
            ("page", m)
        }
    };
    // An attachment is echoed as Meta echoes it: no text, its CDN URL.
    if let (Some(a), Some(m)) = (attachments, echo_message.as_object_mut()) {
        m.remove("text");
        m.insert("attachments".into(), a);
    }
    let ms = now.timestamp_millis();
    let envelope =
        |event: Value| json!({"object": object, "entry": [{"id": account_id, "time": ms, "messaging": [event]}]});
    let mut out = vec![envelope(
        json!({"sender": {"id": account_id}, "recipient": {"id": recipient}, "timestamp": ms, "message": echo_message}),
    )];
    if object == "page" {
        out.push(envelope(json!({"sender": {"id": recipient}, "recipient": {"id": account_id}, "timestamp": ms + 300, "delivery": {"mids": [message_id], "watermark": ms}})));
        out.push(envelope(json!({"sender": {"id": recipient}, "recipient": {"id": account_id}, "timestamp": ms + 600, "read": {"watermark": ms}})));
    } else {
        out.push(envelope(json!({"sender": {"id": recipient}, "recipient": {"id": account_id}, "timestamp": ms + 600, "read": {"mid": message_id}})));
    }
    fake.emit_to(st.webhook_target.clone(), out);
    HttpResponse::Ok().json(json!({"recipient_id": recipient, "message_id": message_id}))
}

/// A WhatsApp `interactive` message of reply buttons (at most 3, titles
/// up to 20 characters) or a list (a button label up to 20, at most 10
/// rows of titles up to 24), with a body of at most 1,024 characters and
/// ids told apart, as Meta checks them.
fn check_interactive(i: &Value) -> Result<(), String> {
    let text = i.pointer("/body/text").and_then(Value::as_str).unwrap_or("");
    if text.is_empty() || text.chars().count() > 1024 {
        return Err("interactive.body.text must be 1 to 1024 characters".into());
    }
    let short = |v: Option<&Value>, most: usize| {
        v.and_then(Value::as_str).is_some_and(|t| !t.is_empty() && t.chars().count() <= most)
    };
    let (items, title_most): (Vec<&Value>, usize) = match i.get("type").and_then(Value::as_str) {
        Some("button") => {
            let buttons: Vec<&Value> =
                i.pointer("/action/buttons").and_then(Value::as_array).into_iter().flatten().collect();
            if buttons.is_empty()
                || buttons.len() > 3
                || buttons.iter().any(|b| b.get("type").and_then(Value::as_str) != Some("reply"))
            {
                return Err("action.buttons must be 1 to 3 reply buttons".into());
            }
            (buttons.iter().map(|b| b.get("reply").unwrap_or(&Value::Null)).collect(), 20)
        }
        Some("list") => {
            if !short(i.pointer("/action/button"), 20) {
                return Err("action.button must be 1 to 20 characters".into());
            }
            let rows: Vec<&Value> = i
                .pointer("/action/sections")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(|s| s.get("rows").and_then(Value::as_array).into_iter().flatten())
                .collect();
            if rows.is_empty() || rows.len() > 10 {
                return Err("a list has 1 to 10 rows".into());
            }
            (rows, 24)
        }
        _ => return Err("interactive.type must be button or list here".into()),
    };
    let mut ids = std::collections::HashSet::new();
    for item in items {
        if !short(item.get("title"), title_most) {
            return Err(format!("a title must be 1 to {title_most} characters"));
        }
        if !item.get("id").and_then(Value::as_str).is_some_and(|id| ids.insert(id.to_string())) {
            return Err("each id must be given, once".into());
        }
    }
    Ok(())
}

fn whatsapp(fake: &FakeMeta, st: &mut State, phone: &str, body: &Value) -> HttpResponse {
    if body.get("messaging_product").and_then(Value::as_str) != Some("whatsapp") {
        return wa_error(100, "(#100) The parameter messaging_product is required.");
    }
    if body.get("status").and_then(Value::as_str) == Some("read") {
        // A typing indicator rides on a read receipt; its only type is text.
        let typing = body.get("typing_indicator").map(|t| t.get("type").and_then(Value::as_str));
        return match (body.get("message_id").and_then(Value::as_str).filter(|m| !m.trim().is_empty()), typing) {
            (None, _) => wa_error(100, "(#100) The parameter message_id is required."),
            (Some(_), Some(kind)) if kind != Some("text") => {
                wa_error(100, "(#100) Invalid parameter: typing_indicator.type must be text.")
            }
            (Some(_), _) => HttpResponse::Ok().json(json!({"success": true})),
        };
    }
    let Some(to) = body.get("to").and_then(Value::as_str).filter(|t| !t.trim().is_empty()).map(str::to_string) else {
        return wa_error(100, "(#100) The parameter to is required.");
    };
    // A template's category, which Meta prices it by (`None` for text), and
    // whether Meta paces it.
    let (template, paced) = match body.get("type").and_then(Value::as_str) {
        Some("template") => {
            let (waba, _) = st.number_metadata(phone);
            match super::templates::check_send(st, &waba, body) {
                Ok((category, paced)) => (Some(category), paced),
                Err(refused) => return *refused,
            }
        }
        Some("text") => {
            let text = body.pointer("/text/body").and_then(Value::as_str).unwrap_or("");
            if text.is_empty() {
                return wa_error(100, "(#100) The parameter text.body is required.");
            }
            if text.chars().count() > 4096 {
                return wa_error(100, "(#100) text.body must be at most 4096 characters");
            }
            (None, false)
        }
        Some("reaction") => {
            let reaction = body.get("reaction");
            let (Some(_), Some(_)) = (
                reaction.and_then(|r| r.get("message_id")).and_then(Value::as_str),
                reaction.and_then(|r| r.get("emoji")).and_then(Value::as_str),
            ) else {
                return wa_error(100, "(#100) Param reaction must have message_id and emoji");
            };
            (None, false)
        }
        Some(kind @ ("image" | "video" | "audio" | "document")) => {
            if let Err(refused) = super::uploads::check_media_send(st, phone, kind, body) {
                return *refused;
            }
            (None, false)
        }
        Some("interactive") => {
            if let Err(why) = check_interactive(body.get("interactive").unwrap_or(&Value::Null)) {
                return wa_error(131009, &format!("(#131009) Parameter value is not valid: {why}"));
            }
            (None, false)
        }
        _ => return wa_error(
            100,
            "(#100) The fake sends text, template, image, video, audio, document, interactive and reaction messages",
        ),
    };
    // A WhatsApp id is taken as it is; a phone number (`+` and digits) is
    // looked up, and a customer who wrote is known by the id they wrote from.
    let digits: String = to.chars().filter(char::is_ascii_digit).collect();
    let wrote = st.last_inbound.contains_key(&(phone.to_string(), digits.clone()));
    let wa_id = if wrote || !to.trim_start().starts_with('+') { digits } else { whatsapp_id(&to) };
    match wa_id.as_str() {
        RATE_LIMITED_WA => {
            return wa_error_as(
                actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                130429,
                "(#130429) Rate limit hit",
                "Message failed to send because there were too many messages sent from this phone number in a short period of time",
            )
        }
        PAIR_LIMITED_WA => {
            return wa_error_as(
                actix_web::http::StatusCode::BAD_REQUEST,
                131056,
                "(#131056) (Business Account, Consumer Account) pair rate limit hit",
                "Message failed to send because there were too many messages sent from this phone number to the same phone number in a short period of time",
            )
        }
        UNDELIVERABLE_WA => {
            return wa_error_as(
                actix_web::http::StatusCode::BAD_REQUEST,
                131026,
                "(#131026) Message Undeliverable",
                "Receiver is incapable of receiving this message",
            )
        }
        _ => {}
    }
    let id = wamid();
    // Templates are what may be sent outside the customer service window.
    let outside = template.is_none()
        && st
            .last_inbound
            .get(&(phone.to_string(), wa_id.clone()))
            .is_some_and(|t| Utc::now() - *t > Duration::hours(24));
    let (waba, metadata) = st.number_metadata(phone);
    let now = Utc::now().timestamp();
    // Meta passes the sender's own mark back on each status.
    let callback = body.get("biz_opaque_callback_data").and_then(Value::as_str).map(str::to_string);
    let sent = SentTo { waba: waba.clone(), metadata, wamid: id.clone(), wa_id: wa_id.clone(), callback };
    let status = |s: &str, at: i64, extra: Value| sent.status(s, at, extra);
    // A marketing template to a customer who stopped them: taken, then failed.
    let stopped =
        template.as_deref() == Some("marketing") && st.marketing_stopped.contains(&(phone.to_string(), wa_id.clone()));
    let out = if stopped {
        vec![status(
            "failed",
            now,
            json!({"errors": [{"code": 131050, "title": "Unable to deliver the message. This recipient has chosen to stop receiving marketing messages on WhatsApp from your business.",
            "message": "Unable to deliver the message. This recipient has chosen to stop receiving marketing messages on WhatsApp from your business.",
            "error_data": {"details": "The recipient stopped marketing messages from this business."},
            "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"}]}),
        )]
    } else if outside {
        vec![status(
            "failed",
            now,
            json!({"errors": [{"code": 131047, "title": "Re-engagement message", "message": "Re-engagement message",
            "error_data": {"details": "Message failed to send because more than 24 hours have passed since the customer last replied to this number."},
            "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"}]}),
        )]
    } else if paced {
        // Held until the pacing ends (`/_fake/template-pacing`): no status yet.
        let body = body.get("template").unwrap_or(&Value::Null);
        let name = body.get("name").and_then(Value::as_str).unwrap_or_default();
        let language = body.pointer("/language/code").and_then(Value::as_str).unwrap_or_default();
        super::templates::hold(st, &waba, name, language, sent.clone(), template.clone().unwrap_or_default());
        Vec::new()
    } else {
        sent.went(template.as_deref(), now)
    };
    fake.emit_to(st.webhook_target.clone(), out);
    // v24+ says how a template was taken (pacing can hold it).
    let message = match (template, paced) {
        (Some(_), true) => json!({"id": id, "message_status": "held_for_quality_assessment"}),
        (Some(_), false) => json!({"id": id, "message_status": "accepted"}),
        (None, _) => json!({"id": id}),
    };
    HttpResponse::Ok().json(
        json!({"messaging_product": "whatsapp", "contacts": [{"input": to, "wa_id": wa_id}], "messages": [message]}),
    )
}

/// A WhatsApp message the fake took: what its status webhooks name.
#[derive(Clone, Debug)]
pub(super) struct SentTo {
    pub(super) waba: String,
    pub(super) metadata: Value,
    pub(super) wamid: String,
    pub(super) wa_id: String,
    /// The send's `biz_opaque_callback_data`, if it had one.
    pub(super) callback: Option<String>,
}

impl SentTo {
    /// A `statuses` webhook of this message (`extra`: pricing, errors).
    pub(super) fn status(&self, status: &str, at: i64, extra: Value) -> Value {
        let mut v =
            json!({"id": self.wamid, "status": status, "timestamp": at.to_string(), "recipient_id": self.wa_id});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        if let Some(callback) = &self.callback {
            v["biz_opaque_callback_data"] = Value::String(callback.clone());
        }
        json!({"object": "whatsapp_business_account", "entry": [{"id": self.waba, "changes": [{"value": {
            "messaging_product": "whatsapp",
            "metadata": self.metadata, "statuses": [v]}, "field": "messages"}]}]})
    }

    /// The statuses of a message that went at `now`: sent (priced by the
    /// template's `category`, or free inside the customer's window), then
    /// read before delivered (Meta does not promise order).
    pub(super) fn went(&self, category: Option<&str>, now: i64) -> Vec<Value> {
        // Meta prices a message on one of its statuses, not several: here `sent`.
        let pricing = match category {
            Some(category) => {
                json!({"pricing": {"billable": true, "pricing_model": "PMP", "type": "regular", "category": category}})
            }
            None => {
                json!({"pricing": {"billable": false, "pricing_model": "PMP", "type": "free_customer_service", "category": "service"}})
            }
        };
        vec![
            self.status("sent", now, pricing),
            self.status("read", now + 2, json!({})),
            self.status("delivered", now + 1, json!({})),
        ]
    }
}

/// The WhatsApp id Meta answers a send to the phone number `to` with
/// (`contacts[0].wa_id`) when the customer has not written to the number
/// (one who has is known by the id they wrote from; a send to a WhatsApp
/// id, digits alone, names that id): its digits, except that a Brazilian mobile
/// (`55`, a two-digit area, a leading `9`, eight digits) is known without
/// that ninth digit, as many registered before Brazil added it are.
/// Meta's answer "may differ from the input"; this is the case the fake
/// shows of it.
pub fn whatsapp_id(to: &str) -> String {
    let digits: String = to.chars().filter(char::is_ascii_digit).collect();
    match digits.as_bytes() {
        [b'5', b'5', _, _, b'9', ..] if digits.len() == 13 => format!("{}{}", &digits[..4], &digits[5..]),
        _ => digits,
    }
}

pub(super) fn wa_error(code: i64, message: &str) -> HttpResponse {
    wa_error_as(actix_web::http::StatusCode::BAD_REQUEST, code, message, message)
}

/// A WhatsApp error with the HTTP status its docs give (429 for a rate
/// limit) and `error_data.details`.
pub(super) fn wa_error_as(
    status: actix_web::http::StatusCode,
    code: i64,
    message: &str,
    details: &str,
) -> HttpResponse {
    HttpResponse::build(status).json(json!({"error": {"message": message, "type": "OAuthException", "code": code,
        "error_data": {"messaging_product": "whatsapp", "details": details}, "fbtrace_id": format!("Fake{}", random_alnum(12))}}))
}

/// `GET /{psid|igsid}?fields=…`: a profile the fake knows (from
/// `/_fake/inbound`). Like Graph, it answers the fields asked for and the id,
/// and refuses a field the platform's user profile does not have. Instagram
/// users are those who wrote to an Instagram account.
pub(super) fn profile(st: &State, id: &str, fields: Option<&str>) -> Option<HttpResponse> {
    let p = st.profiles.get(id)?;
    let Some(name) = p else {
        return Some(graph_error(2018218, None, "No profile available for this user."));
    };
    let instagram =
        st.last_inbound.keys().any(|(account, contact)| contact == id && st.instagram.contains_key(account));
    let (first, last) = name.split_once(' ').unwrap_or((name.as_str(), ""));
    let pic = format!("https://fake-meta.invalid/profile/{id}.jpg");
    let known = if instagram {
        json!({"name": name, "username": name.to_lowercase().replace(' ', "."), "profile_pic": pic,
            "follower_count": 0, "is_user_follow_business": false, "is_business_follow_user": false,
            "is_verified_user": false})
    } else {
        json!({"name": name, "first_name": first, "last_name": last, "profile_pic": pic})
    };
    let default = if instagram { "name,username,profile_pic" } else { "first_name,last_name,profile_pic" };
    let mut out = serde_json::Map::new();
    for field in fields.unwrap_or(default).split(',').map(str::trim).filter(|f| !f.is_empty() && *f != "id") {
        let Some(v) = known.get(field) else {
            let node = if instagram { "IGUser" } else { "User" };
            return Some(graph_error(
                100,
                None,
                &format!("(#100) Tried accessing nonexisting field ({field}) on node type ({node})"),
            ));
        };
        out.insert(field.to_string(), v.clone());
    }
    out.insert("id".into(), json!(id));
    Some(HttpResponse::Ok().json(out))
}

/// `POST /_fake/inbound`: a contact writes to an account. The fake records
/// it (window, profile) and sends the webhook Meta would send.
pub(super) async fn inbound(fake: &FakeMeta, body: &Value, base: &str) -> HttpResponse {
    let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(to), Some(from)) = (s("to"), s("from")) else { return super::bad("to and from are required") };
    let text = s("text").unwrap_or_else(|| "hello".into());
    let at: DateTime<Utc> = s("at")
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(Utc::now);
    let (event, target) = {
        let mut st = fake.lock();
        let Some(account) = st.account_of(&to) else {
            return super::bad("no such page, Instagram account or phone number");
        };
        st.last_inbound.insert((to.clone(), from.clone()), at);
        let name = s("name");
        if body.get("name").is_some() || !st.profiles.contains_key(&from) {
            st.profiles.insert(from.clone(), name.clone());
        }
        let id = s("id");
        let image = body.get("image").filter(|i| i.is_object());
        let event = match account {
            Account::Phone(phone) => {
                let (waba, metadata) = st.number_metadata(&phone);
                let wamid = id.unwrap_or_else(wamid);
                let mut message = json!({"from": from, "id": wamid, "timestamp": at.timestamp().to_string(), "type": "text", "text": {"body": text}});
                if let Some(image) = image {
                    let mime = image.get("mime_type").and_then(Value::as_str).unwrap_or("image/jpeg").to_string();
                    let data =
                        image.get("data").and_then(Value::as_str).unwrap_or("fake image bytes").as_bytes().to_vec();
                    use base64::Engine;
                    use sha2::Digest;
                    // Webhooks carry the checksum in base64 (the media endpoint in hex).
                    let sha = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&data));
                    let media_id = st.id("10203");
                    st.media.insert(media_id.clone(), (phone.clone(), mime.clone(), data));
                    message = json!({"from": from, "id": message["id"], "timestamp": message["timestamp"], "type": "image",
                        "image": {"caption": text, "mime_type": mime, "sha256": sha, "id": media_id}});
                }
                let mut value = json!({"messaging_product": "whatsapp", "metadata": metadata, "messages": [message]});
                if let Some(n) = &name {
                    value["contacts"] = json!([{"profile": {"name": n}, "wa_id": from}]);
                }
                json!({"object": "whatsapp_business_account", "entry": [{"id": waba, "changes": [{"value": value, "field": "messages"}]}]})
            }
            acct => {
                let object = if matches!(acct, Account::Instagram { .. }) { "instagram" } else { "page" };
                let ms = at.timestamp_millis();
                let mid = id.unwrap_or_else(mid);
                let message = match image {
                    // Meta's CDN serves a photo to whoever has its URL.
                    Some(image) => {
                        let mime = image.get("mime_type").and_then(Value::as_str).unwrap_or("image/jpeg").to_string();
                        let data =
                            image.get("data").and_then(Value::as_str).unwrap_or("fake image bytes").as_bytes().to_vec();
                        let name = format!("{mid}.jpg");
                        st.cdn.insert(name.clone(), (mime, data));
                        json!({"mid": mid, "attachments": [{"type": "image",
                            "payload": {"url": format!("{base}/_fake/cdn/{name}")}}]})
                    }
                    None => json!({"mid": mid, "text": text}),
                };
                // Another app holds the thread: Meta delivers it on standby.
                let channel =
                    if st.thread_owners.contains_key(&(to.clone(), from.clone())) { "standby" } else { "messaging" };
                json!({"object": object, "entry": [{"id": to, "time": ms, channel: [{"sender": {"id": from}, "recipient": {"id": to},
                "timestamp": ms, "message": message}]}]})
            }
        };
        (event, st.webhook_target.clone())
    };
    let (delivered, dropped) = match target {
        Some(url) if fake.sending_to(&event) => (fake.post_noted(&url, &event).await, false),
        Some(_) => (None, true),
        None => (None, false),
    };
    HttpResponse::Ok().json(json!({"webhook": event, "delivered_status": delivered, "dropped": dropped}))
}

/// The business that owns the app, as Meta names it in the partner events'
/// `entry.id`.
const PARTNER_BUSINESS: &str = "100200300400500";

/// `POST /_fake/account-update` `{waba_id, event, ...}`: Meta changes a
/// WhatsApp business account and sends `account_update`. The rest of the
/// body becomes the change's value (`ban_info`, `restriction_info`…). Partner
/// events (`PARTNER_REMOVED`, `PARTNER_APP_UNINSTALLED`…) name the partner's
/// business as the entry and the account in `waba_info`, as Meta's do; the
/// app removed or uninstalled, or the account deleted, also ends the
/// account's subscription here.
pub(super) async fn account_update(fake: &FakeMeta, body: &Value) -> HttpResponse {
    let mut value = body.clone();
    let Some(fields) = value.as_object_mut() else { return super::bad("a JSON object is required") };
    let (Some(waba), Some(event)) = (
        fields.remove("waba_id").and_then(|v| v.as_str().map(str::to_string)),
        fields.get("event").and_then(Value::as_str).map(str::to_string),
    ) else {
        return super::bad("waba_id and event are required");
    };
    let target = {
        let mut st = fake.lock();
        let Some(account) = st.wabas.get_mut(&waba) else { return super::bad("no such business account") };
        if matches!(event.as_str(), "PARTNER_REMOVED" | "PARTNER_APP_UNINSTALLED" | "ACCOUNT_DELETED") {
            account.subscribed = false;
        }
        st.webhook_target.clone()
    };
    let entry_id = if event.starts_with("PARTNER_") {
        let mut info = json!({"waba_id": waba, "owner_business_id": "2329417887457253"});
        if event.starts_with("PARTNER_APP_") {
            info["partner_app_id"] = json!(fake.cfg.app_id);
        }
        fields.insert("waba_info".into(), info);
        PARTNER_BUSINESS.to_string()
    } else {
        waba
    };
    let event = json!({"object": "whatsapp_business_account", "entry": [{"id": entry_id, "time": Utc::now().timestamp(),
        "changes": [{"value": value, "field": "account_update"}]}]});
    let delivered = match target {
        Some(url) => fake.post_noted(&url, &event).await,
        None => None,
    };
    HttpResponse::Ok().json(json!({"webhook": event, "delivered_status": delivered}))
}

/// `POST /_fake/user-preferences` `{phone_number_id, wa_id, value}`: see
/// the module docs of `fake`.
pub(super) async fn user_preferences(fake: &FakeMeta, body: &Value) -> HttpResponse {
    let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(phone), Some(wa_id), Some(value)) = (s("phone_number_id"), s("wa_id"), s("value")) else {
        return super::bad("phone_number_id, wa_id and value are required");
    };
    let stop = match value.as_str() {
        "stop" => true,
        "resume" => false,
        _ => return super::bad("value is stop or resume"),
    };
    let (target, waba, metadata) = {
        let mut st = fake.lock();
        if !st.phones.contains_key(&phone) {
            return super::bad("no such phone number");
        }
        let key = (phone.clone(), wa_id.clone());
        if stop {
            st.marketing_stopped.insert(key);
        } else {
            st.marketing_stopped.remove(&key);
        }
        let (waba, metadata) = st.number_metadata(&phone);
        (st.webhook_target.clone(), waba, metadata)
    };
    let detail =
        if stop { "User requested to stop marketing messages" } else { "User requested to resume marketing messages" };
    let value = json!({"messaging_product": "whatsapp", "metadata": metadata,
        "contacts": [{"profile": {"name": "Customer"}, "wa_id": wa_id}],
        "user_preferences": [{"wa_id": wa_id, "detail": detail, "category": "marketing_messages", "value": value,
            "timestamp": Utc::now().timestamp()}]});
    let event = json!({"object": "whatsapp_business_account", "entry": [{"id": waba,
        "changes": [{"value": value, "field": "user_preferences"}]}]});
    let delivered = match target {
        Some(url) => fake.post_noted(&url, &event).await,
        None => None,
    };
    HttpResponse::Ok().json(json!({"webhook": event, "delivered_status": delivered}))
}

/// `POST /_fake/number-quality` `{phone_number_id, event, quality_rating?,
/// current_limit?, old_limit?, max_daily_conversations_per_business?}`:
/// Meta re-rates a WhatsApp number and sends `phone_number_quality_update`
/// to its account's subscribers, naming the number by its display number
/// (digits only), as Meta does; a limit given is what the account lists
/// from then on.
pub(super) async fn number_quality(fake: &FakeMeta, body: &Value) -> HttpResponse {
    let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(phone), Some(event)) = (s("phone_number_id"), s("event")) else {
        return super::bad("phone_number_id and event are required");
    };
    let (target, waba, display) = {
        let mut st = fake.lock();
        let Some(number) = st.phones.get_mut(&phone) else { return super::bad("no such phone number") };
        if let Some(q) = s("quality_rating") {
            number.quality = q;
        }
        let display: String = number.display.chars().filter(char::is_ascii_digit).collect();
        let (waba, _) = st.number_metadata(&phone);
        // The account lists the limit the event names from then on.
        let limit = s("max_daily_conversations_per_business").or_else(|| s("current_limit"));
        if let (Some(limit), Some(account)) = (limit, st.wabas.get_mut(&waba)) {
            account.messaging_limit = json!(limit);
        }
        (st.webhook_target.clone(), waba, display)
    };
    let mut value = json!({"display_phone_number": display, "event": event});
    for key in ["current_limit", "old_limit", "max_daily_conversations_per_business"] {
        if let Some(v) = s(key) {
            value[key] = json!(v);
        }
    }
    let event = json!({"object": "whatsapp_business_account", "entry": [{"id": waba, "time": Utc::now().timestamp(),
        "changes": [{"value": value, "field": "phone_number_quality_update"}]}]});
    let delivered = match target {
        Some(url) => fake.post_noted(&url, &event).await,
        None => None,
    };
    HttpResponse::Ok().json(json!({"webhook": event, "delivered_status": delivered}))
}

/// `POST /_fake/business-capability` `{waba_id,
/// max_daily_conversations_per_business}`: Meta changes the messaging limit
/// of the account's business portfolio and sends
/// `business_capability_update` to its subscribers, as Meta does (the
/// limit as a number, `-1` for none).
pub(super) async fn business_capability(fake: &FakeMeta, body: &Value) -> HttpResponse {
    let waba = body.get("waba_id").and_then(Value::as_str).map(str::to_string);
    let limit = body.get("max_daily_conversations_per_business").filter(|l| l.is_number() || l.is_string());
    let (Some(waba), Some(limit)) = (waba, limit.cloned()) else {
        return super::bad("waba_id and max_daily_conversations_per_business are required");
    };
    let target = {
        let mut st = fake.lock();
        let Some(account) = st.wabas.get_mut(&waba) else { return super::bad("no such business account") };
        account.messaging_limit = limit.clone();
        st.webhook_target.clone()
    };
    let value = json!({"max_daily_conversations_per_business": limit, "max_phone_numbers_per_waba": 25});
    let event = json!({"object": "whatsapp_business_account", "entry": [{"id": waba, "time": Utc::now().timestamp(),
        "changes": [{"value": value, "field": "business_capability_update"}]}]});
    let delivered = match target {
        Some(url) => fake.post_noted(&url, &event).await,
        None => None,
    };
    HttpResponse::Ok().json(json!({"webhook": event, "delivered_status": delivered}))
}

/// Webhooks of one object in one body, their entries in order (Meta
/// batches up to 1,000 updates so).
fn batched(events: Vec<Value>) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for ev in events {
        let same = out.last().is_some_and(|last: &Value| last["object"] == ev["object"]);
        match (same, out.last_mut().and_then(|l| l["entry"].as_array_mut()), ev["entry"].as_array()) {
            (true, Some(entries), Some(more)) => entries.extend(more.iter().cloned()),
            _ => out.push(ev),
        }
    }
    out
}

/// `POST /_fake/policy-enforcement` `{page_id, action, reason?}`: Meta
/// enforces its Messenger policies on a page and sends
/// `policy_enforcement`, which names the page as recipient and has no
/// sender, if the page's subscription has `messaging_policy_enforcement`.
/// `block` makes the page's Messenger sends fail with `(#368)` until
/// `unblock` (its Instagram account is another channel, not blocked).
pub(super) async fn policy_enforcement(fake: &FakeMeta, body: &Value) -> HttpResponse {
    let (Some(page), Some(action)) =
        (body.get("page_id").and_then(Value::as_str), body.get("action").and_then(Value::as_str))
    else {
        return super::bad("page_id and action are required");
    };
    if !["warning", "block", "unblock"].contains(&action) {
        return super::bad("action must be warning, block or unblock");
    }
    let reason = body.get("reason").and_then(Value::as_str).unwrap_or(
        "The bot violated our Platform Policies (https://developers.facebook.com/docs/messenger-platform/policy/policy-overview).",
    );
    let (target, subscribed) = {
        let mut st = fake.lock();
        let Some(p) = st.pages.get(page) else { return super::bad("no such page") };
        // Meta sends it only to an app whose page subscription has the field.
        let subscribed =
            p.subscribed_fields.as_ref().is_some_and(|f| f.iter().any(|f| f == "messaging_policy_enforcement"));
        match action {
            "block" => st.blocked_pages.insert(page.to_string()),
            "unblock" => st.blocked_pages.remove(page),
            _ => false,
        };
        (st.webhook_target.clone(), subscribed)
    };
    let ms = Utc::now().timestamp_millis();
    let event = json!({"object": "page", "entry": [{"id": page, "time": ms, "messaging": [{
        "recipient": {"id": page}, "timestamp": ms, "policy_enforcement": {"action": action, "reason": reason}}]}]});
    let delivered = match target {
        Some(url) if subscribed && fake.sending_to(&event) => fake.post_noted(&url, &event).await,
        _ => None,
    };
    HttpResponse::Ok().json(json!({"webhook": event, "delivered_status": delivered, "subscribed": subscribed}))
}

/// `POST /{account}/take_thread_control` or `…/pass_thread_control`:
/// our app takes a customer's thread, or passes it to `target_app_id`.
/// Meta tells the other app, not us: no webhook comes back.
pub(super) fn thread_control(
    st: &mut State,
    owner: &Owner,
    id: &str,
    take: bool,
    body: &Value,
    ours: &str,
) -> HttpResponse {
    let Some(account) = st.account_of(id) else { return super::no_object(id) };
    if matches!(account, Account::Phone(_)) {
        return graph_error(100, None, "(#100) Unsupported post request: handover is for pages and Instagram accounts");
    }
    if !st.may_use(owner, &account) {
        return graph_error(200, None, "(#200) The access token cannot act for this account");
    }
    let Some(recipient) = recipient_of(body) else {
        return graph_error(100, None, "(#100) The parameter recipient is required");
    };
    let key = (id.to_string(), recipient);
    if take {
        st.thread_owners.remove(&key);
    } else {
        let target = match body.get("target_app_id") {
            Some(Value::String(t)) => t.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return graph_error(100, None, "(#100) The parameter target_app_id is required"),
        };
        if target == ours {
            return graph_error(100, None, "(#100) Param target_app_id must be another app than the caller");
        }
        st.thread_owners.insert(key, target);
    }
    HttpResponse::Ok().json(json!({"success": true}))
}

/// `POST /_fake/handover` `{to, from, action, app_id?, metadata?}`: another
/// app takes a customer's thread from ours (`take`), passes it to ours
/// (`pass`) or asks ours for it (`request`); Meta sends our app
/// `take_thread_control`, `pass_thread_control` or `request_thread_control`
/// if the page's subscription has `messaging_handovers`.
pub(super) async fn handover(fake: &FakeMeta, body: &Value) -> HttpResponse {
    let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(to), Some(from), Some(action)) = (s("to"), s("from"), s("action")) else {
        return super::bad("to, from and action are required");
    };
    let app = s("app_id").unwrap_or_else(|| crate::meta::webhook::PAGE_INBOX_APP_ID.to_string());
    let metadata = s("metadata").unwrap_or_default();
    let ours = fake.cfg.app_id.clone();
    if app == ours {
        return super::bad("app_id is another app's: our app's own moves come through the Graph API");
    }
    let (target, subscribed, object) = {
        let mut st = fake.lock();
        let object = match st.account_of(&to) {
            Some(Account::Page(_)) => "page",
            Some(Account::Instagram { .. }) => "instagram",
            _ => return super::bad("no such page or Instagram account"),
        };
        let page = st.pages.values().find(|p| p.id == to || p.instagram.as_deref() == Some(to.as_str()));
        let subscribed = page
            .and_then(|p| p.subscribed_fields.as_ref())
            .is_some_and(|f| f.iter().any(|f| f == "messaging_handovers"));
        let key = (to.clone(), from.clone());
        match action.as_str() {
            "take" => {
                st.thread_owners.insert(key, app.clone());
            }
            "pass" => {
                st.thread_owners.remove(&key);
            }
            "request" => {}
            _ => return super::bad("action must be take, pass or request"),
        }
        (st.webhook_target.clone(), subscribed, object)
    };
    let change = match action.as_str() {
        "take" => {
            json!({"take_thread_control": {"previous_owner_app_id": ours, "new_owner_app_id": app, "metadata": metadata}})
        }
        "pass" => {
            json!({"pass_thread_control": {"previous_owner_app_id": app, "new_owner_app_id": ours, "metadata": metadata}})
        }
        _ => json!({"request_thread_control": {"requested_owner_app_id": app, "metadata": metadata}}),
    };
    let ms = Utc::now().timestamp_millis();
    let mut messaging = json!({"sender": {"id": from}, "recipient": {"id": to}, "timestamp": ms});
    if let (Some(m), Some(c)) = (messaging.as_object_mut(), change.as_object()) {
        m.extend(c.clone());
    }
    let event = json!({"object": object, "entry": [{"id": to, "time": ms, "messaging": [messaging]}]});
    let delivered = match target {
        Some(url) if subscribed && fake.sending_to(&event) => fake.post_noted(&url, &event).await,
        _ => None,
    };
    HttpResponse::Ok().json(json!({"webhook": event, "delivered_status": delivered, "subscribed": subscribed}))
}

/// `POST /_fake/history` `{phone_number_id, threads?, declined?, phase?,
/// chunk_order?, progress?}`: the WhatsApp Business app behind a number
/// shares its chat history, and the fake sends one `history` chunk as Meta
/// shapes it. `threads` are Meta's (`[{id: customer, messages: [...]}]`,
/// each message with `from`, `id`, `timestamp`, `type`, its content and
/// `history_context`); `declined: true` sends the chunk that says the
/// business turned sharing off.
pub(super) async fn history(fake: &FakeMeta, body: &Value) -> HttpResponse {
    let Some(phone_id) = body.get("phone_number_id").and_then(Value::as_str) else {
        return super::bad("phone_number_id is required");
    };
    let (target, waba, metadata) = {
        let st = fake.lock();
        if !st.phones.contains_key(phone_id) {
            return super::bad("no such phone number");
        }
        let (waba, metadata) = st.number_metadata(phone_id);
        (st.webhook_target.clone(), waba, metadata)
    };
    let chunk = if body.get("declined").and_then(Value::as_bool).unwrap_or(false) {
        json!({"errors": [{"code": 2593109, "title": "History sync is turned off by the business",
            "message": "History sync is turned off by the business",
            "error_data": {"details": "The business has turned off history sharing"}}]})
    } else {
        let n = |key: &str, default: i64| body.get(key).and_then(Value::as_i64).unwrap_or(default);
        json!({"metadata": {"phase": n("phase", 0), "chunk_order": n("chunk_order", 1), "progress": n("progress", 100)},
            "threads": body.get("threads").cloned().unwrap_or_else(|| json!([]))})
    };
    let event = json!({"object": "whatsapp_business_account", "entry": [{"id": waba, "changes": [{"value": {
        "messaging_product": "whatsapp", "metadata": metadata,
        "history": [chunk]}, "field": "history"}]}]});
    let delivered = match target {
        Some(url) => fake.post_noted(&url, &event).await,
        None => None,
    };
    HttpResponse::Ok().json(json!({"webhook": event, "delivered_status": delivered}))
}

impl FakeMeta {
    /// Serializes and signs a webhook body the way Meta does.
    pub fn signed(&self, event: &Value) -> (String, String, String) {
        let body = meta_json(event);
        let sha256 = sign(self.cfg.app_secret.as_bytes(), body.as_bytes());
        let sha1 = sign_sha1(self.cfg.app_secret.as_bytes(), body.as_bytes());
        (body, sha256, sha1)
    }

    /// Sends webhooks to `url` in the background, in order (or as the
    /// `webhook-target`'s delivery habits say), retrying a few times on
    /// failure like Meta does.
    pub(super) fn emit_to(&self, url: Option<String>, mut events: Vec<Value>) {
        let Some(url) = url else { return };
        let fake = self.clone();
        tokio::spawn(async move {
            // Read here, not before: the caller holds the state's lock.
            let habits = fake.lock().delivery;
            tokio::time::sleep(habits.late).await;
            if habits.shuffle {
                use rand::seq::SliceRandom;
                events.shuffle(&mut rand::thread_rng());
            }
            if habits.batch {
                events = batched(events);
            }
            let copies = if habits.duplicates { 2 } else { 1 };
            for ev in events.iter().flat_map(|ev| std::iter::repeat_n(ev, copies)) {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                if !fake.sending_to(ev) {
                    continue;
                }
                let mut delivered = false;
                for attempt in 0..4u32 {
                    if fake.post(&url, ev).await == Some(200) {
                        delivered = true;
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
                }
                // One delivery, however many attempts it took.
                fake.noted(ev, delivered);
            }
        });
    }

    /// Whose subscription a webhook goes by: the page (an Instagram
    /// account's page) or the WhatsApp business account.
    fn subscriber(&self, event: &Value) -> Option<String> {
        let id = event.get("entry")?.get(0)?.get("id")?.as_str()?;
        let st = self.lock();
        if st.pages.contains_key(id) || st.wabas.contains_key(id) {
            return Some(id.to_string());
        }
        st.pages.values().find(|p| p.instagram.as_deref() == Some(id)).map(|p| p.id.clone())
    }

    /// Whether webhooks of this subscriber still go out (not disabled for
    /// failing).
    pub(super) fn sending_to(&self, event: &Value) -> bool {
        self.subscriber(event).is_none_or(|id| !self.lock().disabled.contains(&id))
    }

    /// Posts and counts the outcome towards `disable_after`.
    pub(super) async fn post_noted(&self, url: &str, event: &Value) -> Option<u16> {
        let status = self.post(url, event).await;
        self.noted(event, status == Some(200));
        status
    }

    /// A delivery's outcome: a success clears the count, the
    /// `disable_after`-th failure in a row removes the subscription.
    fn noted(&self, event: &Value, ok: bool) {
        let Some(id) = self.subscriber(event) else { return };
        let mut st = self.lock();
        let Some(limit) = st.disable_after else { return };
        if ok {
            st.failures.remove(&id);
            return;
        }
        let n = st.failures.entry(id.clone()).or_default();
        *n += 1;
        if *n < limit {
            return;
        }
        st.failures.remove(&id);
        if let Some(page) = st.pages.get_mut(&id) {
            page.subscribed_fields = None;
        }
        if let Some(waba) = st.wabas.get_mut(&id) {
            waba.subscribed = false;
        }
        st.disabled.insert(id);
    }

    pub(super) async fn post(&self, url: &str, event: &Value) -> Option<u16> {
        let (body, sha256, sha1) = self.signed(event);
        let res = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("x-hub-signature-256", sha256)
            .header("x-hub-signature", sha1)
            .body(body)
            .send()
            .await
            .ok()?;
        Some(res.status().as_u16())
    }
}

/// `GET /{media-id}` (WhatsApp): where to download it, for the number's token.
pub(super) fn media(st: &mut State, owner: &Owner, id: &str, base: &str) -> Option<HttpResponse> {
    let (phone, mime, data) = st.media.get(id)?;
    if !st.may_use(owner, &Account::Phone(phone.clone())) {
        return Some(graph_error(200, None, "(#200) Permissions error"));
    }
    use sha2::Digest;
    // The media endpoint gives the checksum in hex (webhooks carry base64).
    let sha = hex::encode(sha2::Sha256::digest(data));
    let (mime, size) = (mime.clone(), data.len());
    // Every lookup hands out a new URL, good for a few minutes.
    let now = std::time::Instant::now();
    st.media_urls.retain(|_, (_, at)| now.duration_since(*at) < super::MEDIA_URL_LIFETIME);
    let grant = super::random_alnum(20);
    st.media_urls.insert(grant.clone(), (id.to_string(), now));
    Some(HttpResponse::Ok().json(json!({
        "messaging_product": "whatsapp", "url": format!("{base}/_fake/media/{id}/download?grant={grant}"),
        "mime_type": mime, "sha256": sha, "file_size": size, "id": id,
    })))
}

/// `POST /_fake/media`.
pub(super) fn add_media(fake: &FakeMeta, body: &Value) -> HttpResponse {
    let Some(phone) = body.get("phone_number_id").and_then(Value::as_str) else {
        return super::bad("phone_number_id is required");
    };
    let mut st = fake.lock();
    if !st.phones.contains_key(phone) {
        return super::bad("no such phone number");
    }
    let id = body.get("id").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| st.id("10203"));
    let mime = body.get("mime_type").and_then(Value::as_str).unwrap_or("image/jpeg").to_string();
    let data = body.get("data").and_then(Value::as_str).unwrap_or("fake image bytes").as_bytes().to_vec();
    st.media.insert(id.clone(), (phone.to_string(), mime, data));
    HttpResponse::Created().json(json!({"id": id}))
}

/// The media bytes; like Meta's lookaside URL it needs the Bearer token,
/// works only for a few minutes after the lookup that gave it (`grant`),
/// and serves a part for a `Range` (206, or 416 past the end).
/// Each download is logged with the Graph calls (`GET /_fake/requests`).
pub(super) fn download(
    fake: &FakeMeta,
    id: &str,
    method: &str,
    grant: Option<&str>,
    token: Option<&str>,
    range: Option<&str>,
) -> HttpResponse {
    let mut st = fake.lock();
    let owner = token.and_then(|t| st.tokens.get(t)).map(|t| format!("{:?}", t.owner));
    let path = format!("/_fake/media/{id}/download");
    st.log.push(json!({"method": method, "path": path, "query": {}, "body": null, "token_owner": owner}));
    let Some((phone, mime, data)) = st.media.get(id) else { return HttpResponse::NotFound().finish() };
    let current = grant
        .and_then(|g| st.media_urls.get(g))
        .is_some_and(|(media, at)| media == id && at.elapsed() < super::MEDIA_URL_LIFETIME);
    if !current {
        return HttpResponse::NotFound().finish();
    }
    let allowed = token
        .and_then(|t| st.tokens.get(t))
        .is_some_and(|t| t.error.is_none() && st.may_use(&t.owner, &Account::Phone(phone.clone())));
    if !allowed {
        return HttpResponse::Unauthorized().finish();
    }
    match range.and_then(|r| crate::byte_range::byte_range(r, data.len())) {
        None => {
            HttpResponse::Ok().content_type(mime.as_str()).insert_header(("accept-ranges", "bytes")).body(data.clone())
        }
        Some(Ok((start, end))) => HttpResponse::PartialContent()
            .content_type(mime.as_str())
            .insert_header(("accept-ranges", "bytes"))
            .insert_header(("content-range", format!("bytes {start}-{end}/{}", data.len())))
            .body(data[start..=end].to_vec()),
        Some(Err(())) => HttpResponse::RangeNotSatisfiable()
            .insert_header(("content-range", format!("bytes */{}", data.len())))
            .finish(),
    }
}
