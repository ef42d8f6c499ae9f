//! Meta webhooks: the signature over the raw body, and parsing a body into
//! platform-neutral items.
//!
//! The signature is checked on the bytes exactly as received (Meta signs its
//! own escaped serialization; re-serializing changes the bytes). Parsing is
//! tolerant: every entry, messaging object, change, message and status of a
//! batch is read; unknown event kinds are skipped, never errors. U+0000 is
//! removed from every string (PostgreSQL text and jsonb cannot hold it, and a
//! customer's message must not be lost over an invisible character).

use chrono::{DateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::channels::Platform;

/// Checks `X-Hub-Signature-256: sha256=<hex>` against the raw body, in
/// constant time. The prefix is case-insensitive; the hex may be upper case.
pub fn verify_signature(app_secret: &[u8], body: &[u8], header: Option<&str>) -> bool {
    let Some(header) = header else { return false };
    let header = header.trim();
    let Some((scheme, hex_sig)) = header.split_once('=') else { return false };
    if !scheme.eq_ignore_ascii_case("sha256") {
        return false;
    }
    let Ok(sig) = hex::decode(hex_sig.to_ascii_lowercase()) else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(app_secret) else { return false };
    mac.update(body);
    mac.verify_slice(&sig).is_ok()
}

/// `sha256=<hex>` for a body (the simulator and tests sign with it).
pub fn sign(app_secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `sha1=<hex>`: the older `X-Hub-Signature` header Meta still sends beside
/// the SHA-256 one (we check only the latter; senders send both).
pub fn sign_sha1(app_secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(app_secret).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Serializes JSON the way Meta does on the wire: ASCII only, non-ASCII as
/// lowercase `\uXXXX` (UTF-16 surrogate pairs beyond the BMP), `/` as `\/`.
pub fn meta_json(v: &Value) -> String {
    let compact = v.to_string();
    let mut out = String::with_capacity(compact.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    for c in compact.chars() {
        if in_string {
            if escaped {
                escaped = false;
                out.push(c);
                continue;
            }
            match c {
                '\\' => {
                    escaped = true;
                    out.push(c);
                }
                '"' => {
                    in_string = false;
                    out.push(c);
                }
                '/' => out.push_str("\\/"),
                c if (c as u32) < 0x80 => out.push(c),
                c => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
            }
        } else {
            if c == '"' {
                in_string = true;
            }
            out.push(c);
        }
    }
    out
}

/// Where an item belongs: the channel's platform and external id, or with
/// `parent` the id of the account that holds channels (a WhatsApp business
/// account): the item then concerns each of its channels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    pub platform: Platform,
    pub external_id: String,
    pub parent: bool,
}

impl RouteKey {
    pub fn channel(platform: Platform, external_id: impl Into<String>) -> Self {
        RouteKey { platform, external_id: external_id.into(), parent: false }
    }

    pub fn parent(platform: Platform, external_id: impl Into<String>) -> Self {
        RouteKey { platform, external_id: external_id.into(), parent: true }
    }
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    #[serde(rename = "type")]
    pub kind: String,
    pub url: Option<String>,
    /// WhatsApp media id (fetched through the Graph API).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub media_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub caption: Option<String>,
    /// A WhatsApp document's file name, as the customer's phone gave it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub filename: Option<String>,
}

impl Attachment {
    /// An attachment known only by its kind (a location, a notice, what the
    /// API cannot show).
    fn bare(kind: &str) -> Attachment {
        Attachment { kind: kind.to_string(), url: None, media_id: None, caption: None, filename: None }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Sent,
    Delivered,
    Read,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Read => "read",
            DeliveryStatus::Failed => "failed",
        }
    }
}

/// One thing that happened, in our terms.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A contact wrote (text, attachments, quick reply, postback…).
    Message {
        contact: String,
        contact_name: Option<String>,
        mid: String,
        text: Option<String>,
        attachments: Vec<Attachment>,
        quick_reply: Option<String>,
        postback: Option<String>,
        reply_to: Option<String>,
        timestamp: DateTime<Utc>,
    },
    /// The page sent a message (ours, the Page inbox's, another app's).
    Echo {
        contact: String,
        mid: String,
        text: Option<String>,
        attachments: Vec<Attachment>,
        app_id: Option<String>,
        metadata: Option<String>,
        timestamp: DateTime<Utc>,
    },
    /// A message of the chat history a WhatsApp Business app number shares
    /// when it joins the Cloud API (coexistence, field `history`): stored
    /// as it was, without notifying, counting unread or answering.
    History {
        contact: String,
        mid: String,
        /// Sent by the customer (else by the business, from the app).
        inbound: bool,
        text: Option<String>,
        attachments: Vec<Attachment>,
        /// Ours for outbound ones (`sent`, `delivered`, `read`, `failed`).
        status: String,
        timestamp: DateTime<Utc>,
    },
    Edit {
        contact: String,
        mid: String,
        text: Option<String>,
        timestamp: DateTime<Utc>,
    },
    Delete {
        contact: String,
        mid: String,
        timestamp: DateTime<Utc>,
    },
    /// `emoji: None` removes the contact's reaction.
    Reaction {
        contact: String,
        mid: String,
        emoji: Option<String>,
        timestamp: DateTime<Utc>,
    },
    /// Messenger delivery: everything sent up to `watermark` (and `mids`).
    Delivery {
        contact: String,
        mids: Vec<String>,
        watermark: Option<DateTime<Utc>>,
    },
    /// Read up to `watermark` (Messenger) or up to message `mid` (Instagram).
    Read {
        contact: String,
        watermark: Option<DateTime<Utc>>,
        mid: Option<String>,
    },
    /// WhatsApp status of one of our messages.
    Status {
        contact: String,
        wamid: String,
        status: DeliveryStatus,
        error: Option<Value>,
        timestamp: DateTime<Utc>,
        /// The send's own mark (`biz_opaque_callback_data`), passed back.
        mark: Option<String>,
    },
    /// A WhatsApp customer changed their phone number (a `system` message,
    /// which also comes as a `Message` with the notice's text).
    NumberChanged {
        contact: String,
        new_contact: String,
        timestamp: DateTime<Utc>,
    },
    /// Meta changed a WhatsApp business account (`account_update`): the app
    /// removed, the account deleted, banned, restricted… `detail` is the
    /// rest of the change's value. Routed by the account, for each number.
    AccountUpdate {
        event: String,
        detail: Value,
        timestamp: DateTime<Utc>,
    },
    /// Meta approved, rejected, paused, disabled or reinstated one of a
    /// WhatsApp business account's message templates
    /// (`message_template_status_update`). Routed by the account.
    TemplateStatus {
        /// Meta's template id (a number in the payload, kept as text).
        template_id: Option<String>,
        name: String,
        language: Option<String>,
        /// `APPROVED`, `REJECTED`, `PAUSED`, `DISABLED`, `REINSTATED`…
        event: String,
        reason: Option<String>,
        timestamp: DateTime<Utc>,
    },
    /// Who answers a Messenger or Instagram customer changed, or another
    /// app asked to (the handover protocol: `pass_thread_control`,
    /// `take_thread_control`, `request_thread_control`), or an event came on
    /// the `standby` channel, which Meta uses while another app holds the
    /// thread.
    ThreadControl {
        contact: String,
        change: ThreadChange,
        timestamp: DateTime<Utc>,
    },
    /// A WhatsApp customer stopped or resumed the business's marketing
    /// messages (`user_preferences`, category `marketing_messages`).
    MarketingChoice {
        contact: String,
        stopped: bool,
        timestamp: DateTime<Utc>,
    },
    /// Meta changed a WhatsApp number's quality or messaging limit
    /// (`phone_number_quality_update`). Routed by the account; the number
    /// is named by its display number, digits only.
    NumberQuality {
        display: String,
        event: String,
        /// `max_daily_conversations_per_business`, else `current_limit`.
        limit: Option<String>,
        timestamp: DateTime<Utc>,
    },
    /// Meta changed the messaging limit of the business portfolio a
    /// WhatsApp account belongs to, which all its numbers share
    /// (`business_capability_update`). Routed by the account.
    BusinessCapability {
        /// As [`messaging_limit`] reads it.
        limit: String,
        timestamp: DateTime<Utc>,
    },
    /// Meta changed a WhatsApp template's category, or says it will
    /// (`template_category_update`). Routed by the account.
    TemplateCategory {
        template_id: Option<String>,
        name: String,
        language: Option<String>,
        /// A change made: the category before.
        previous: Option<String>,
        /// The category now (`new_category`).
        category: Option<String>,
        /// A change coming: the category it will have (`correct_category`),
        /// and when (`category_update_timestamp`).
        coming: Option<String>,
        coming_at: Option<DateTime<Utc>>,
        timestamp: DateTime<Utc>,
    },
    /// Meta enforced its Messenger policies on the page
    /// (`policy_enforcement`: `warning`, `block` or `unblock`, with a reason).
    PolicyEnforcement {
        action: String,
        reason: Option<String>,
        timestamp: DateTime<Utc>,
    },
}

/// Meta's Page Inbox app (Business Suite), which holds a thread a person
/// answers from there. Meta's documents give it with 15 digits and, in one
/// place, 14: both are recognised ([`is_page_inbox`]).
pub const PAGE_INBOX_APP_ID: &str = "263902037430900";

pub fn is_page_inbox(app_id: &str) -> bool {
    app_id == PAGE_INBOX_APP_ID || app_id == "26390203743090"
}

/// What a handover event says of a thread (app ids as Meta sends them,
/// numbers or text, kept as text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ThreadChange {
    /// `pass_thread_control`, delivered to the new owner: `to` holds it now.
    Passed { to: Option<String> },
    /// `take_thread_control`, delivered to the app it was taken from: `by`
    /// (when Meta names it) holds it now.
    Taken { by: Option<String> },
    /// `request_thread_control`: app `by` asks the owner for the thread.
    Requested { by: Option<String> },
    /// An event delivered on `standby`: some other app holds the thread.
    Standby,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Routed {
    pub route: RouteKey,
    pub item: Item,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("the body is not JSON")]
    NotJson,
    #[error("unknown webhook object {0:?}")]
    UnknownObject(String),
}

fn ms(v: Option<&Value>) -> Option<DateTime<Utc>> {
    let n = v?.as_i64()?;
    Utc.timestamp_millis_opt(n).single()
}

fn secs(v: Option<&Value>) -> Option<DateTime<Utc>> {
    let v = v?;
    let n = v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse::<i64>().ok()))?;
    Utc.timestamp_opt(n, 0).single()
}

fn s(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn arr(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

/// Parses a webhook body. Objects Switchboard does not handle are an error
/// (the event is dead-lettered, not retried); unknown event kinds inside a
/// known object are skipped.
pub fn parse(body: &[u8]) -> Result<Vec<Routed>, ParseError> {
    let mut v: Value = serde_json::from_slice(body).map_err(|_| ParseError::NotJson)?;
    super::strip_nul(&mut v);
    let object = v.get("object").and_then(Value::as_str).unwrap_or("");
    let mut out = Vec::new();
    match object {
        "page" | "instagram" => {
            let platform = if object == "page" { Platform::Facebook } else { Platform::Instagram };
            for entry in arr(v.get("entry")) {
                let Some(id) = s(entry.get("id")) else { continue };
                let route = RouteKey::channel(platform, id.clone());
                for m in arr(entry.get("messaging")) {
                    if let Some(item) = messaging_item(m, &id) {
                        out.push(Routed { route: route.clone(), item });
                    }
                }
                // Events another app's thread lets us see: stored as any
                // other, and telling that the thread is not ours now.
                // The thread's holder first: what the event brings (a greeting
                // to a new customer) knows another app answers them.
                for m in arr(entry.get("standby")) {
                    if let Some(contact) = contact_of(m, &id) {
                        let timestamp = ms(m.get("timestamp")).unwrap_or_else(Utc::now);
                        let item = Item::ThreadControl { contact, change: ThreadChange::Standby, timestamp };
                        out.push(Routed { route: route.clone(), item });
                    }
                    if let Some(item) = messaging_item(m, &id) {
                        out.push(Routed { route: route.clone(), item });
                    }
                }
            }
        }
        "whatsapp_business_account" => {
            for entry in arr(v.get("entry")) {
                for change in arr(entry.get("changes")) {
                    let value = change.get("value").unwrap_or(&Value::Null);
                    match change.get("field").and_then(Value::as_str) {
                        Some("messages") => whatsapp_value(value, &mut out),
                        Some("smb_message_echoes") => whatsapp_echoes(value, &mut out),
                        Some("history") => whatsapp_history(value, &mut out),
                        Some("account_update") => account_update(entry, value, &mut out),
                        Some("message_template_status_update") => template_status(entry, value, &mut out),
                        Some("template_category_update") => template_category(entry, value, &mut out),
                        Some("phone_number_quality_update") => number_quality(entry, value, &mut out),
                        Some("business_capability_update") => business_capability(entry, value, &mut out),
                        Some("user_preferences") => user_preferences(value, &mut out),
                        _ => {}
                    }
                }
            }
        }
        other => return Err(ParseError::UnknownObject(other.to_string())),
    }
    Ok(out)
}

/// The new number of a `system` message saying the customer changed theirs
/// (`user_changed_number` with `wa_id`; earlier `customer_changed_number`
/// with `new_wa_id`).
fn changed_number(m: &Value) -> Option<String> {
    let sys = m.get("system")?;
    match sys.get("type").and_then(Value::as_str)? {
        "user_changed_number" | "customer_changed_number" => s(sys.get("wa_id")).or_else(|| s(sys.get("new_wa_id"))),
        _ => None,
    }
}

/// `account_update` carries `entry.time` in seconds. The account is
/// `entry.id`, except in the partner events (`PARTNER_REMOVED`,
/// `PARTNER_APP_UNINSTALLED`…), whose entry is the partner's business and
/// whose account is `value.waba_info.waba_id`.
fn account_update(entry: &Value, value: &Value, out: &mut Vec<Routed>) {
    let waba = s(value.get("waba_info").and_then(|w| w.get("waba_id"))).or_else(|| s(entry.get("id")));
    let (Some(waba), Some(event)) = (waba, value.get("event").and_then(Value::as_str)) else { return };
    let mut detail = value.clone();
    if let Some(fields) = detail.as_object_mut() {
        fields.remove("event");
    }
    out.push(Routed {
        route: RouteKey::parent(Platform::Whatsapp, waba),
        item: Item::AccountUpdate {
            event: event.to_string(),
            detail,
            timestamp: secs(entry.get("time")).unwrap_or_else(Utc::now),
        },
    });
}

/// `message_template_status_update`: `entry.id` is the account, `entry.time`
/// in seconds. Meta's `reason` is `null` or `"NONE"` when there is none.
fn template_status(entry: &Value, value: &Value, out: &mut Vec<Routed>) {
    let (Some(waba), Some(name), Some(event)) =
        (s(entry.get("id")), s(value.get("message_template_name")), s(value.get("event")))
    else {
        return;
    };
    out.push(Routed {
        route: RouteKey::parent(Platform::Whatsapp, waba),
        item: Item::TemplateStatus {
            template_id: s(value.get("message_template_id")),
            name,
            language: s(value.get("message_template_language")),
            event,
            reason: s(value.get("reason")).filter(|r| !r.is_empty() && r != "NONE"),
            timestamp: secs(entry.get("time")).unwrap_or_else(Utc::now),
        },
    });
}

/// `user_preferences`: routed by the number (`metadata.phone_number_id`);
/// each preference names its customer (`wa_id`, or the business-scoped
/// `user_id` of one who hides their number) and its `value`, `stop` or
/// `resume`, with a `timestamp` in seconds. Only marketing messages have
/// preferences today; other categories are skipped.
fn user_preferences(value: &Value, out: &mut Vec<Routed>) {
    let Some(phone_id) = s(value.get("metadata").and_then(|m| m.get("phone_number_id"))) else { return };
    let route = RouteKey::channel(Platform::Whatsapp, phone_id);
    for p in arr(value.get("user_preferences")) {
        if p.get("category").and_then(Value::as_str) != Some("marketing_messages") {
            continue;
        }
        let stopped = match p.get("value").and_then(Value::as_str).map(str::to_ascii_lowercase).as_deref() {
            Some("stop") => true,
            Some("resume") => false,
            _ => continue,
        };
        let Some(contact) = s(p.get("wa_id")).or_else(|| s(p.get("user_id"))) else { continue };
        let timestamp = secs(p.get("timestamp")).unwrap_or_else(Utc::now);
        out.push(Routed { route: route.clone(), item: Item::MarketingChoice { contact, stopped, timestamp } });
    }
}

/// `phone_number_quality_update`: `entry.id` is the account, `entry.time`
/// in seconds; the number is its display number.
fn number_quality(entry: &Value, value: &Value, out: &mut Vec<Routed>) {
    let display =
        s(value.get("display_phone_number")).map(|d| d.chars().filter(char::is_ascii_digit).collect::<String>());
    let (Some(waba), Some(display), Some(event)) =
        (s(entry.get("id")), display.filter(|d| !d.is_empty()), s(value.get("event")))
    else {
        return;
    };
    let limit =
        ["max_daily_conversations_per_business", "current_limit"].iter().find_map(|k| messaging_limit(value.get(*k)));
    out.push(Routed {
        route: RouteKey::parent(Platform::Whatsapp, waba),
        item: Item::NumberQuality {
            display,
            event,
            limit,
            timestamp: secs(entry.get("time")).unwrap_or_else(Utc::now),
        },
    });
}

/// A messaging limit as Meta writes it (`TIER_1K`, `2000`, `-1` for none,
/// `TIER_UNLIMITED`), as it is kept: a tier or a number, `-1` as
/// `TIER_UNLIMITED`; none when empty.
pub fn messaging_limit(v: Option<&Value>) -> Option<String> {
    let raw = s(v)?;
    let raw = raw.trim();
    match raw {
        "" => None,
        "-1" => Some("TIER_UNLIMITED".to_string()),
        other => Some(other.chars().take(40).collect()),
    }
}

/// `business_capability_update`: `entry.id` is the account, `entry.time`
/// in seconds; the limit is `max_daily_conversations_per_business`, else
/// `max_daily_conversation_per_phone` (which Meta is retiring). One that
/// names no limit (only the numbers an account may have) is passed over.
fn business_capability(entry: &Value, value: &Value, out: &mut Vec<Routed>) {
    let Some(waba) = s(entry.get("id")) else { return };
    let limit = ["max_daily_conversations_per_business", "max_daily_conversation_per_phone"]
        .iter()
        .find_map(|k| messaging_limit(value.get(*k)));
    let Some(limit) = limit else { return };
    out.push(Routed {
        route: RouteKey::parent(Platform::Whatsapp, waba),
        item: Item::BusinessCapability { limit, timestamp: secs(entry.get("time")).unwrap_or_else(Utc::now) },
    });
}

/// `template_category_update`: `entry.id` is the account, times in
/// seconds. A change made names `previous_category`; one coming names
/// `correct_category` and `category_update_timestamp`.
fn template_category(entry: &Value, value: &Value, out: &mut Vec<Routed>) {
    let (Some(waba), Some(name)) = (s(entry.get("id")), s(value.get("message_template_name"))) else { return };
    let text = |key: &str| s(value.get(key)).filter(|c| !c.is_empty());
    let coming = text("correct_category");
    let previous = text("previous_category");
    if coming.is_none() && previous.is_none() {
        return;
    }
    out.push(Routed {
        route: RouteKey::parent(Platform::Whatsapp, waba),
        item: Item::TemplateCategory {
            template_id: s(value.get("message_template_id")),
            name,
            language: s(value.get("message_template_language")),
            previous,
            category: text("new_category"),
            coming_at: coming.as_ref().and_then(|_| secs(value.get("category_update_timestamp"))),
            coming,
            timestamp: secs(entry.get("time")).unwrap_or_else(Utc::now),
        },
    });
}

fn attachments(m: &Value) -> Vec<Attachment> {
    // A kind of message the API cannot show (Instagram): the agent should
    // still see that the contact wrote something, and look in the app.
    if m.get("is_unsupported").and_then(Value::as_bool) == Some(true) {
        return vec![Attachment::bare("unsupported")];
    }
    let mut out: Vec<Attachment> = arr(m.get("attachments"))
        .iter()
        .map(|a| Attachment {
            url: a.get("payload").and_then(|p| p.get("url")).and_then(Value::as_str).map(str::to_string),
            ..Attachment::bare(a.get("type").and_then(Value::as_str).unwrap_or("file"))
        })
        .collect();
    out.extend(referral(m.get("referral")));
    // An Instagram reply to a story: without the story the text makes no
    // sense to the agent, so it comes along as a `story_reply` attachment
    // (its CDN URL expires with the story).
    if let Some(story) = m.get("reply_to").and_then(|r| r.get("story")) {
        out.push(Attachment {
            url: s(story.get("url")),
            caption: s(story.get("id")).map(|id| format!("story {id}")),
            ..Attachment::bare("story_reply")
        });
    }
    out
}

/// The ad or post a customer came from (Click-to-Messenger/Instagram/
/// WhatsApp ads, a Marketplace listing): their first message ("Is this
/// still available?") means nothing without it, so it comes along as a
/// `referral` attachment — the ad's picture or link as `url`, its title as
/// `caption`. A referral from a plain m.me / ig.me link (a `ref` only) has
/// nothing to show and adds none.
fn referral(r: Option<&Value>) -> Option<Attachment> {
    let r = r?;
    let ads = r.get("ads_context_data").unwrap_or(&Value::Null);
    let url = ["photo_url", "video_url"]
        .iter()
        .find_map(|k| s(ads.get(*k)))
        .or_else(|| ["source_url", "image_url", "video_url", "thumbnail_url"].iter().find_map(|k| s(r.get(*k))));
    let caption = s(ads.get("ad_title")).or_else(|| {
        let parts: Vec<String> = ["headline", "body"].iter().filter_map(|k| s(r.get(*k))).collect();
        (!parts.is_empty()).then(|| parts.join(" — "))
    });
    if url.is_none() && caption.is_none() {
        return None;
    }
    Some(Attachment { url, caption, ..Attachment::bare("referral") })
}

/// The customer of a Messenger/Instagram event: whoever of sender and
/// recipient is not the page or account (`None` for events about the page).
fn contact_of(m: &Value, own_id: &str) -> Option<String> {
    let sender = s(m.get("sender").and_then(|x| x.get("id")))?;
    let recipient = s(m.get("recipient").and_then(|x| x.get("id"))).unwrap_or_default();
    Some(if sender == own_id { recipient } else { sender })
}

fn messaging_item(m: &Value, own_id: &str) -> Option<Item> {
    let timestamp = ms(m.get("timestamp")).unwrap_or_else(Utc::now);
    // About the page itself: it has no sender.
    if let Some(p) = m.get("policy_enforcement") {
        let action = p.get("action").and_then(Value::as_str)?.to_ascii_lowercase();
        let reason = p.get("reason").and_then(Value::as_str).map(str::to_string);
        return Some(Item::PolicyEnforcement { action, reason, timestamp });
    }
    let contact = contact_of(m, own_id)?;
    let owner = |v: &Value, key: &str| s(v.get(key)).filter(|id| !id.is_empty());
    if let Some(p) = m.get("pass_thread_control") {
        let change = ThreadChange::Passed { to: owner(p, "new_owner_app_id") };
        return Some(Item::ThreadControl { contact, change, timestamp });
    }
    if let Some(p) = m.get("take_thread_control") {
        let change = ThreadChange::Taken { by: owner(p, "new_owner_app_id") };
        return Some(Item::ThreadControl { contact, change, timestamp });
    }
    if let Some(p) = m.get("request_thread_control") {
        let change = ThreadChange::Requested { by: owner(p, "requested_owner_app_id") };
        return Some(Item::ThreadControl { contact, change, timestamp });
    }
    if let Some(msg) = m.get("message") {
        let mid = s(msg.get("mid"))?;
        let text = msg.get("text").and_then(Value::as_str).map(str::to_string);
        if msg.get("is_deleted").and_then(Value::as_bool) == Some(true) {
            return Some(Item::Delete { contact, mid, timestamp });
        }
        if msg.get("is_echo").and_then(Value::as_bool) == Some(true) {
            return Some(Item::Echo {
                contact,
                mid,
                text,
                attachments: attachments(msg),
                app_id: s(msg.get("app_id")),
                metadata: msg.get("metadata").and_then(Value::as_str).map(str::to_string),
                timestamp,
            });
        }
        return Some(Item::Message {
            contact,
            contact_name: None,
            mid,
            text,
            attachments: attachments(msg),
            quick_reply: msg
                .get("quick_reply")
                .and_then(|q| q.get("payload"))
                .and_then(Value::as_str)
                .map(str::to_string),
            postback: None,
            reply_to: msg.get("reply_to").and_then(|r| r.get("mid")).and_then(Value::as_str).map(str::to_string),
            timestamp,
        });
    }
    if let Some(pb) = m.get("postback") {
        // Standby postbacks carry no mid or payload; key them by time.
        let mid = s(pb.get("mid")).unwrap_or_else(|| format!("postback:{contact}:{}", timestamp.timestamp_millis()));
        return Some(Item::Message {
            contact,
            contact_name: None,
            mid,
            text: pb.get("title").and_then(Value::as_str).map(str::to_string),
            // "Get Started" tapped in an ad's conversation names the ad.
            attachments: referral(pb.get("referral")).into_iter().collect(),
            quick_reply: None,
            postback: pb.get("payload").and_then(Value::as_str).map(str::to_string),
            reply_to: None,
            timestamp,
        });
    }
    if let Some(edit) = m.get("message_edit") {
        return Some(Item::Edit {
            contact,
            mid: s(edit.get("mid"))?,
            text: edit.get("text").and_then(Value::as_str).map(str::to_string),
            timestamp,
        });
    }
    if let Some(r) = m.get("reaction") {
        let emoji = match r.get("action").and_then(Value::as_str) {
            Some("unreact") => None,
            _ => r
                .get("emoji")
                .and_then(Value::as_str)
                .or_else(|| r.get("reaction").and_then(Value::as_str))
                .map(str::to_string),
        };
        return Some(Item::Reaction { contact, mid: s(r.get("mid"))?, emoji, timestamp });
    }
    if let Some(d) = m.get("delivery") {
        let mids = arr(d.get("mids")).iter().filter_map(|x| x.as_str().map(str::to_string)).collect();
        return Some(Item::Delivery { contact, mids, watermark: ms(d.get("watermark")) });
    }
    if let Some(r) = m.get("read") {
        return Some(Item::Read { contact, watermark: ms(r.get("watermark")), mid: s(r.get("mid")) });
    }
    None
}

fn whatsapp_value(value: &Value, out: &mut Vec<Routed>) {
    let Some(phone_id) = s(value.get("metadata").and_then(|m| m.get("phone_number_id"))) else { return };
    let route = RouteKey::channel(Platform::Whatsapp, phone_id);
    let contacts = arr(value.get("contacts"));
    // (phone or business-scoped user id, display name): a user who adopted
    // a username may come without a name, shown by the username then.
    let names: Vec<(String, String)> = contacts
        .iter()
        .flat_map(|c| {
            let profile = c.get("profile");
            let name = profile
                .and_then(|p| p.get("name").or_else(|| p.get("username")))
                .and_then(Value::as_str)
                .map(str::to_string);
            [s(c.get("wa_id")), s(c.get("user_id"))].into_iter().flatten().filter_map(move |k| Some((k, name.clone()?)))
        })
        .collect();
    for m in arr(value.get("messages")) {
        // Who wrote: the phone number (`from`) while Meta shares it; for a
        // user who adopted a username (2026) it may be withheld, and the
        // business-scoped user id (BSUID) names them instead — on the
        // message, or on the payload's one contact. A contact first known
        // by phone stays that contact while the phone keeps coming.
        let lone = |key: &str| if contacts.len() == 1 { s(contacts[0].get(key)) } else { None };
        let from =
            s(m.get("from")).or_else(|| s(m.get("from_user_id"))).or_else(|| lone("wa_id")).or_else(|| lone("user_id"));
        let (Some(from), Some(id)) = (from, s(m.get("id"))) else { continue };
        let timestamp = secs(m.get("timestamp")).unwrap_or_else(Utc::now);
        let kind = m.get("type").and_then(Value::as_str).unwrap_or("unknown");
        let reply_to = m.get("context").and_then(|c| c.get("id")).and_then(Value::as_str).map(str::to_string);
        let item = match kind {
            "reaction" => {
                let r = m.get("reaction").unwrap_or(&Value::Null);
                let Some(target) = s(r.get("message_id")) else { continue };
                let emoji = r.get("emoji").and_then(Value::as_str).filter(|e| !e.is_empty()).map(str::to_string);
                Item::Reaction { contact: from, mid: target, emoji, timestamp }
            }
            _ => {
                let (text, mut attachments, quick, postback) = whatsapp_content(m, kind);
                attachments.extend(referral(m.get("referral")));
                let contact_name = names.iter().find(|(w, _)| *w == from).map(|(_, n)| n.clone());
                // The customer changed their number: from now on the contact
                // is known by the new one (the change first), and the notice
                // shows in the conversation that goes on there.
                let from = match changed_number(m) {
                    Some(new_contact) if new_contact != from => {
                        let change = Item::NumberChanged { contact: from, new_contact: new_contact.clone(), timestamp };
                        out.push(Routed { route: route.clone(), item: change });
                        new_contact
                    }
                    _ => from,
                };
                Item::Message {
                    contact: from,
                    contact_name,
                    mid: id,
                    text,
                    attachments,
                    quick_reply: quick,
                    postback,
                    reply_to,
                    timestamp,
                }
            }
        };
        out.push(Routed { route: route.clone(), item });
    }
    for st in arr(value.get("statuses")) {
        let (Some(wamid), Some(status)) = (s(st.get("id")), st.get("status").and_then(Value::as_str)) else { continue };
        let status = match status {
            "sent" => DeliveryStatus::Sent,
            "delivered" => DeliveryStatus::Delivered,
            // A voice note played (since Nov 2025): it was read first.
            "read" | "played" => DeliveryStatus::Read,
            "failed" => DeliveryStatus::Failed,
            _ => continue,
        };
        let error = st.get("errors").and_then(|e| e.as_array()).and_then(|e| e.first()).map(status_error);
        out.push(Routed {
            route: route.clone(),
            item: Item::Status {
                contact: s(st.get("recipient_id")).unwrap_or_default(),
                wamid,
                status,
                error,
                timestamp: secs(st.get("timestamp")).unwrap_or_else(Utc::now),
                mark: s(st.get("biz_opaque_callback_data")),
            },
        });
    }
}

/// Messages the business sent from the WhatsApp Business app or a linked
/// device, on a number also connected to the Cloud API (coexistence): the
/// agents see them in the conversation as sent by the page, as Messenger's
/// echoes from the Page inbox. `from` is the business number, `to` the
/// customer (or, for a customer known by username only, `to_user_id`).
/// WhatsApp's code for a marketing template to a customer who stopped
/// marketing messages: reported only by a `failed` status.
pub const MARKETING_STOPPED: i64 = 131050;

/// WhatsApp's code for a marketing template Meta did not deliver "to
/// maintain healthy ecosystem engagement" (a customer's limit of
/// marketing messages from all businesses): not before a day has passed.
pub const MARKETING_LIMITED: i64 = 131049;

/// A WhatsApp `failed` status's error as the message shows it: the same
/// reason a refused send gets (`outside_window` for 131047, which Meta
/// reports only this way), Meta's explanation, and Meta's code as
/// `meta_code`.
fn status_error(e: &Value) -> Value {
    let meta_code = e.get("code").and_then(Value::as_i64);
    let message = crate::meta::graph::explained(e).unwrap_or_else(|| "failed".to_string());
    let reason = match meta_code {
        // The customer stopped marketing messages (a marketing template).
        Some(MARKETING_STOPPED) => "marketing_stopped",
        // Meta held back a marketing template: try again in a day or more.
        Some(MARKETING_LIMITED) => "marketing_limited",
        Some(c) => crate::meta::graph::GraphError::classify(c, None, &message).reason(),
        None => "meta_error",
    };
    serde_json::json!({"code": reason, "message": message, "meta_code": meta_code})
}

fn whatsapp_echoes(value: &Value, out: &mut Vec<Routed>) {
    let Some(phone_id) = s(value.get("metadata").and_then(|m| m.get("phone_number_id"))) else { return };
    let route = RouteKey::channel(Platform::Whatsapp, phone_id);
    for m in arr(value.get("message_echoes")) {
        let contact = s(m.get("to")).or_else(|| s(m.get("to_user_id")));
        let (Some(contact), Some(mid)) = (contact, s(m.get("id"))) else { continue };
        let kind = m.get("type").and_then(Value::as_str).unwrap_or("unknown");
        // A reaction from the phone targets a message; it is not one.
        if kind == "reaction" {
            continue;
        }
        let (text, attachments, _, _) = whatsapp_content(m, kind);
        out.push(Routed {
            route: route.clone(),
            item: Item::Echo {
                contact,
                mid,
                text,
                attachments,
                app_id: None,
                metadata: None,
                timestamp: secs(m.get("timestamp")).unwrap_or_else(Utc::now),
            },
        });
    }
}

/// `history`: chunks of `threads`, each a customer (`id`) and the messages
/// between them and the business, oldest first; `from` is the customer or
/// the business number. A chunk of `errors` (the business declined to
/// share) carries no messages. Chunks may come out of order and again:
/// each message is stored once, by its id.
fn whatsapp_history(value: &Value, out: &mut Vec<Routed>) {
    let Some(phone_id) = s(value.get("metadata").and_then(|m| m.get("phone_number_id"))) else { return };
    let route = RouteKey::channel(Platform::Whatsapp, phone_id);
    for chunk in arr(value.get("history")) {
        for thread in arr(chunk.get("threads")) {
            let Some(contact) = s(thread.get("id")) else { continue };
            for m in arr(thread.get("messages")) {
                let Some(mid) = s(m.get("id")) else { continue };
                let kind = m.get("type").and_then(Value::as_str).unwrap_or("unknown");
                if kind == "reaction" {
                    continue;
                }
                let inbound = s(m.get("from")).is_some_and(|f| f == contact);
                let (text, attachments, _, _) = whatsapp_content(m, kind);
                let told = m.get("history_context").and_then(|h| h.get("status")).and_then(Value::as_str);
                let status = match told.map(str::to_ascii_lowercase).as_deref() {
                    _ if inbound => "received",
                    Some("delivered") => "delivered",
                    Some("read" | "played") => "read",
                    Some("error" | "failed") => "failed",
                    _ => "sent",
                };
                out.push(Routed {
                    route: route.clone(),
                    item: Item::History {
                        contact: contact.clone(),
                        mid,
                        inbound,
                        text,
                        attachments,
                        status: status.into(),
                        timestamp: secs(m.get("timestamp")).unwrap_or_else(Utc::now),
                    },
                });
            }
        }
    }
}

type Content = (Option<String>, Vec<Attachment>, Option<String>, Option<String>);

fn whatsapp_content(m: &Value, kind: &str) -> Content {
    let body = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    match kind {
        "text" => (body(m.get("text").and_then(|t| t.get("body"))), vec![], None, None),
        "image" | "video" | "audio" | "document" | "sticker" => {
            let media = m.get(kind).unwrap_or(&Value::Null);
            let caption = body(media.get("caption"));
            let a = Attachment {
                media_id: s(media.get("id")),
                caption: caption.clone(),
                filename: body(media.get("filename")),
                ..Attachment::bare(if kind == "document" { "file" } else { kind })
            };
            (caption, vec![a], None, None)
        }
        "button" => {
            let b = m.get("button").unwrap_or(&Value::Null);
            (body(b.get("text")), vec![], body(b.get("payload")), None)
        }
        "interactive" => {
            let i = m.get("interactive").unwrap_or(&Value::Null);
            let reply = i.get("button_reply").or_else(|| i.get("list_reply")).unwrap_or(&Value::Null);
            (body(reply.get("title")), vec![], body(reply.get("id")), None)
        }
        // A pin: its place's name and address when it has them, and a
        // `geo:` URI (RFC 5870) that maps apps open.
        "location" => {
            let l = m.get("location").unwrap_or(&Value::Null);
            let (lat, long) = (l.get("latitude").and_then(Value::as_f64), l.get("longitude").and_then(Value::as_f64));
            let place: Vec<String> = ["name", "address"].iter().filter_map(|k| body(l.get(*k))).collect();
            let at = match (lat, long) {
                (Some(lat), Some(long)) => format!("{lat}, {long}"),
                _ => String::new(),
            };
            let text = match (place.is_empty(), at.is_empty()) {
                (false, false) => format!("📍 {} ({at})", place.join(", ")),
                (false, true) => format!("📍 {}", place.join(", ")),
                _ => format!("📍 {at}"),
            };
            let url = match (lat, long) {
                (Some(lat), Some(long)) => Some(format!("geo:{lat},{long}")),
                _ => body(l.get("url")),
            };
            (Some(text), vec![Attachment { url, ..Attachment::bare("location") }], None, None)
        }
        // An order from the business's catalog: what and how many, readable.
        "order" => {
            let o = m.get("order").unwrap_or(&Value::Null);
            let mut lines = vec!["🛒 Order".to_string()];
            for item in arr(o.get("product_items")) {
                let product = s(item.get("product_retailer_id")).unwrap_or_default();
                let quantity = s(item.get("quantity")).unwrap_or_else(|| "1".into());
                let price = match (s(item.get("item_price")), s(item.get("currency"))) {
                    (Some(p), Some(c)) => format!(" — {p} {c}"),
                    (Some(p), None) => format!(" — {p}"),
                    _ => String::new(),
                };
                lines.push(format!("{quantity} × {product}{price}"));
            }
            lines.extend(body(o.get("text")));
            (Some(lines.join("\n")), vec![Attachment::bare("order")], None, None)
        }
        // Meta's notice, e.g. that the customer changed their number.
        "system" => {
            let sys = m.get("system").unwrap_or(&Value::Null);
            (body(sys.get("body")), vec![Attachment::bare("system")], None, None)
        }
        // Shared contact cards: their names and first numbers, readable.
        "contacts" => {
            let cards: Vec<String> = arr(m.get("contacts"))
                .iter()
                .map(|c| {
                    let name =
                        c.get("name").and_then(|n| n.get("formatted_name")).and_then(Value::as_str).unwrap_or("");
                    let phone = arr(c.get("phones")).first().and_then(|p| p.get("phone")).and_then(Value::as_str);
                    format!("👤 {name} {}", phone.unwrap_or("")).trim_end().to_string()
                })
                .collect();
            let text = (!cards.is_empty()).then(|| cards.join("\n"));
            (text, vec![Attachment::bare("contacts")], None, None)
        }
        _ => (None, vec![Attachment::bare(kind)], None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(crate::meta::fixture_path(name)).expect("fixture")
    }

    #[test]
    fn signature_over_raw_bytes_not_reserialized() {
        let secret = b"fake_app_secret_0123456789abcdef";
        let raw = fixture("signature/messenger_unicode_body.raw");
        let good = "sha256=02167e90e9f3f3636c13390296b063109f2ce034c86bbf27c4e1eaf17cab92c5";
        assert!(verify_signature(secret, &raw, Some(good)));
        assert!(verify_signature(secret, &raw, Some(&good.to_uppercase())));
        let reserialized = serde_json::to_vec(&serde_json::from_slice::<Value>(&raw).expect("json")).expect("json");
        assert!(!verify_signature(secret, &reserialized, Some(good)));
        assert!(!verify_signature(secret, &raw, None));
        assert!(!verify_signature(secret, &raw, Some("sha1=0f62145090842379e67f37b09ef5607604a9ed87")));
        assert!(!verify_signature(b"other", &raw, Some(good)));
        // Our Meta-style serialization escapes the same way (key order aside).
        let parsed: Value = serde_json::from_slice(&raw).expect("json");
        let ours = meta_json(&parsed);
        assert!(
            ours.is_ascii()
                && ours.contains("\\u00e1")
                && ours.contains("\\ud83d\\ude00")
                && ours.contains("https:\\/\\/")
        );
        assert_eq!(serde_json::from_str::<Value>(&ours).expect("json"), parsed);
        assert_eq!(sign(secret, &raw), good);
    }

    #[test]
    fn a_played_voice_note_counts_as_read() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{"messaging_product":"whatsapp","metadata":{"phone_number_id":"106540352242922"},"statuses":[{"id":"wamid.V1","status":"played","timestamp":"1762160000","recipient_id":"16505551234"}]}}]}]}"#;
        let items = parse(body).expect("parse");
        assert!(
            matches!(items.as_slice(), [Routed { item: Item::Status { wamid, status: DeliveryStatus::Read, .. }, .. }] if wamid == "wamid.V1"),
            "{items:?}"
        );
    }

    #[test]
    fn a_status_carries_back_the_sends_own_mark() {
        let mut status: Value = serde_json::from_slice(&fixture("whatsapp_status_sent.json")).expect("fixture");
        let marks = |v: &Value| -> Vec<Option<String>> {
            let items = parse(&serde_json::to_vec(v).expect("json")).expect("parse");
            items
                .into_iter()
                .filter_map(|r| match r.item {
                    Item::Status { mark, .. } => Some(mark),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(marks(&status), [None], "none without one");
        status["entry"][0]["changes"][0]["value"]["statuses"][0]["biz_opaque_callback_data"] = Value::from("sb:42");
        assert_eq!(marks(&status), [Some("sb:42".to_string())]);
    }

    #[test]
    fn whatsapp_business_app_echoes_are_the_page_writing() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"112233445566778","changes":[{"field":"smb_message_echoes","value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15551234567","phone_number_id":"123456789012345"},"message_echoes":[
            {"from":"15551234567","to":"14155550123","id":"wamid.E1","timestamp":"1773140100","type":"text","text":{"body":"Sim, ainda temos \ud83d\ude0a"}},
            {"from":"15551234567","to":"14155550123","id":"wamid.E2","timestamp":"1773140101","type":"image","image":{"id":"media-9","mime_type":"image/jpeg","caption":"a mesa"}},
            {"from":"15551234567","to":"14155550123","id":"wamid.E3","timestamp":"1773140102","type":"reaction","reaction":{"message_id":"wamid.X","emoji":"\u2764"}},
            {"from":"15551234567","id":"wamid.E4","timestamp":"1773140103","type":"text","text":{"body":"no recipient"}}]}}]}]}"#;
        let items = parse(body).expect("parse");
        assert_eq!(items.len(), 2, "{items:?}");
        assert!(items
            .iter()
            .all(|r| r.route.platform == Platform::Whatsapp && r.route.external_id == "123456789012345"));
        match &items[0].item {
            Item::Echo { contact, mid, text, app_id: None, metadata: None, timestamp, .. } => {
                assert_eq!(
                    (contact.as_str(), mid.as_str(), text.as_deref()),
                    ("14155550123", "wamid.E1", Some("Sim, ainda temos 😊"))
                );
                assert_eq!(timestamp.timestamp(), 1_773_140_100, "seconds, not ms");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&items[1].item, Item::Echo { attachments, text, .. } if attachments[0].media_id.as_deref() == Some("media-9") && text.as_deref() == Some("a mesa"))
        );
        // Other fields of the account are not messages.
        let other = String::from_utf8_lossy(body).replace("smb_message_echoes", "history");
        assert_eq!(parse(other.as_bytes()).expect("parse"), vec![]);
    }

    #[test]
    fn unsupported_system_and_contact_card_messages_are_shown_for_what_they_are() {
        let ig = br#"{"object":"instagram","entry":[{"id":"17841400123456789","time":1773140300123,"messaging":[{"sender":{"id":"6841100000123456"},"recipient":{"id":"17841400123456789"},"timestamp":1773140300123,"message":{"mid":"aWdfU1","is_unsupported":true}}]}]}"#;
        match &parse(ig).expect("parse")[0].item {
            Item::Message { text: None, attachments, .. } => assert_eq!(attachments[0].kind, "unsupported"),
            other => panic!("{other:?}"),
        }
        let wa = |message: Value| {
            let body = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages",
                "value": {"messaging_product": "whatsapp", "metadata": {"phone_number_id": "123456789012345"}, "messages": [message]}}]}]});
            match parse(&serde_json::to_vec(&body).expect("body")).expect("parse").pop().expect("an item").item {
                Item::Message { text, attachments, .. } => (text, attachments[0].kind.clone()),
                other => panic!("{other:?}"),
            }
        };
        let system = wa(
            serde_json::json!({"from": "14155550123", "id": "wamid.S1", "timestamp": "1773140000", "type": "system",
            "system": {"body": "User A changed from 14155550123 to 14155550999", "wa_id": "14155550999", "type": "user_changed_number"}}),
        );
        assert_eq!(system, (Some("User A changed from 14155550123 to 14155550999".into()), "system".into()));
        // The change of number, then the notice under the new number (both
        // spellings Meta used).
        for sys in [
            serde_json::json!({"body": "changed", "wa_id": "14155550999", "type": "user_changed_number"}),
            serde_json::json!({"body": "changed", "new_wa_id": "14155550999", "type": "customer_changed_number"}),
        ] {
            let body = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
                "field": "messages", "value": {"messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "15550001111", "phone_number_id": "106540352242922"},
                    "messages": [{"from": "14155550123", "id": "wamid.S1", "timestamp": "1773140000", "type": "system", "system": sys}]}}]}]});
            let items: Vec<Item> =
                parse(&serde_json::to_vec(&body).expect("body")).expect("parse").into_iter().map(|r| r.item).collect();
            assert!(
                matches!(items.as_slice(), [Item::NumberChanged { contact, new_contact, .. }, Item::Message { contact: by, .. }]
                if contact == "14155550123" && new_contact == "14155550999" && by == "14155550999"),
                "{items:?}"
            );
        }
        let cards = wa(
            serde_json::json!({"from": "14155550123", "id": "wamid.C1", "timestamp": "1773140000", "type": "contacts",
            "contacts": [{"name": {"formatted_name": "João Silva", "first_name": "João"}, "phones": [{"phone": "+351 912 345 678", "type": "CELL"}]},
                         {"name": {"formatted_name": "Loja"}}]}),
        );
        assert_eq!(cards, (Some("👤 João Silva +351 912 345 678\n👤 Loja".into()), "contacts".into()));
    }

    #[test]
    fn a_whatsapp_user_without_a_phone_number_is_known_by_their_bsuid() {
        let value = |contact: Value, message: Value| {
            let body = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{
                "field": "messages", "value": {"messaging_product": "whatsapp",
                    "metadata": {"display_phone_number": "15550001111", "phone_number_id": "106540352242922"},
                    "contacts": [contact], "messages": [message]}}]}]});
            let mut items = parse(&serde_json::to_vec(&body).expect("body")).expect("parse");
            assert_eq!(items.len(), 1, "{items:?}");
            match items.remove(0).item {
                Item::Message { contact, contact_name, text, .. } => (contact, contact_name, text),
                other => panic!("{other:?}"),
            }
        };
        let text = serde_json::json!({"type": "text", "text": {"body": "olá 👋"}, "timestamp": "1749416383", "id": "wamid.B1"});
        let with = |extra: Value| {
            let mut m = text.clone();
            m.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
            m
        };
        // The message names its sender's BSUID; the contact has a username only.
        let contact = serde_json::json!({"profile": {"username": "@sheena"}, "user_id": "US.13491208655302741918"});
        assert_eq!(
            value(contact.clone(), with(serde_json::json!({"from_user_id": "US.13491208655302741918"}))),
            ("US.13491208655302741918".into(), Some("@sheena".into()), Some("olá 👋".into()))
        );
        // Only the payload's one contact names them.
        assert_eq!(value(contact, text.clone()).0, "US.13491208655302741918");
        // While the phone number comes, it stays the contact's key.
        let both = serde_json::json!({"profile": {"name": "Sheena"}, "wa_id": "16505551234", "user_id": "US.1"});
        assert_eq!(
            value(both, with(serde_json::json!({"from": "16505551234", "from_user_id": "US.1"}))),
            ("16505551234".into(), Some("Sheena".into()), Some("olá 👋".into()))
        );
    }

    #[test]
    fn fixtures_parse_into_items() {
        let one = |name: &str| {
            let mut v = parse(&fixture(name)).expect(name);
            assert_eq!(v.len(), 1, "{name}: {v:?}");
            v.remove(0)
        };
        let r = one("messenger_text.json");
        assert_eq!(r.route, RouteKey::channel(Platform::Facebook, "102938475610293"));
        assert!(
            matches!(r.item, Item::Message { ref contact, ref text, .. } if contact == "7392015648120394" && text.as_deref() == Some("Hi! Do you ship to Lisbon?"))
        );
        if let Item::Message { timestamp, .. } = r.item {
            assert_eq!(timestamp.timestamp_millis(), 1773140000123, "Messenger times are milliseconds");
        }
        assert!(
            matches!(one("messenger_echo.json").item, Item::Echo { ref contact, ref app_id, .. } if contact == "7392015648120394" && app_id.as_deref() == Some("1234567890123456"))
        );
        assert!(
            matches!(one("messenger_delivery.json").item, Item::Delivery { ref mids, watermark: Some(_), .. } if mids.len() == 1)
        );
        assert!(matches!(one("messenger_read.json").item, Item::Read { watermark: Some(_), .. }));
        assert!(matches!(one("messenger_reaction.json").item, Item::Reaction { emoji: Some(_), .. }));
        assert!(
            matches!(one("messenger_postback.json").item, Item::Message { ref postback, .. } if postback.as_deref() == Some("GET_STARTED"))
        );
        // A standby event is stored, and tells that another app holds the thread.
        let standby = parse(&fixture("messenger_standby.json")).expect("standby");
        assert!(matches!(&standby[..], [
            Routed { item: Item::ThreadControl { contact: b, change: ThreadChange::Standby, timestamp }, .. },
            Routed { item: Item::Message { contact: a, .. }, .. },
        ] if a == "7392015648120394" && b == a && timestamp.timestamp_millis() == 1_773_140_100_023));
        assert!(
            matches!(one("messenger_image.json").item, Item::Message { ref attachments, .. } if attachments[0].kind == "image" && attachments[0].url.is_some())
        );
        assert!(
            matches!(one("messenger_text_quick_reply_and_reply_to.json").item, Item::Message { ref quick_reply, ref reply_to, .. } if quick_reply.as_deref() == Some("CONFIRM_ORDER_8812") && reply_to.is_some())
        );
        assert!(matches!(one("instagram_text.json").route.platform, Platform::Instagram));
        assert!(
            matches!(one("instagram_echo.json").item, Item::Echo { ref contact, .. } if contact == "6841100000123456")
        );
        assert!(matches!(one("instagram_seen.json").item, Item::Read { mid: Some(_), .. }));
        assert!(matches!(one("instagram_deleted.json").item, Item::Delete { .. }));
        assert!(
            matches!(one("instagram_story_mention.json").item, Item::Message { ref attachments, .. } if attachments[0].kind == "story_mention")
        );
        assert!(matches!(one("instagram_story_reply.json").item, Item::Message { ref attachments, ref text, .. }
                if text.as_deref() == Some("Love this one") && attachments.len() == 1 && attachments[0].kind == "story_reply"
                    && attachments[0].url.as_deref().is_some_and(|u| u.contains("asset_id=17900000000000002"))));
        let wa = one("whatsapp_text.json");
        assert_eq!(wa.route, RouteKey::channel(Platform::Whatsapp, "123456789012345"));
        if let Item::Message { contact_name, timestamp, text, .. } = wa.item {
            assert_eq!(contact_name.as_deref(), Some("Ana Sousa"));
            assert_eq!(timestamp.timestamp(), 1773140000, "WhatsApp times are seconds");
            assert_eq!(text.as_deref(), Some("Olá! Ainda têm a mesa de carvalho?"));
        }
        assert!(
            matches!(one("whatsapp_image.json").item, Item::Message { ref attachments, .. } if attachments[0].media_id.as_deref() == Some("1020304050607080"))
        );
        assert!(matches!(one("whatsapp_reaction.json").item, Item::Reaction { emoji: Some(_), .. }));
        match one("whatsapp_status_failed.json").item {
            Item::Status { status: DeliveryStatus::Failed, error: Some(e), .. } => {
                assert_eq!((&e["code"], &e["meta_code"]), (&Value::from("outside_window"), &Value::from(131047)));
                assert!(e["message"].as_str().is_some_and(|m| m.contains("24 hours")), "{e}");
            }
            other => panic!("{other:?}"),
        }
        // Meta's other reasons a status gives (the same body, another code).
        for (code, reason) in [
            (131050, "marketing_stopped"),
            (131049, "marketing_limited"),
            (132015, "template_not_approved"),
            (131026, "recipient_unavailable"),
            (131000, "meta_error"),
        ] {
            let mut failed: Value = serde_json::from_slice(&fixture("whatsapp_status_failed.json")).expect("json");
            failed["entry"][0]["changes"][0]["value"]["statuses"][0]["errors"][0]["code"] = Value::from(code);
            match parse(&serde_json::to_vec(&failed).expect("body")).expect("parsed").remove(0).item {
                Item::Status { error: Some(e), .. } => {
                    assert_eq!((&e["code"], &e["meta_code"]), (&Value::from(reason), &Value::from(code)))
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(parse(&fixture("whatsapp_status_batch_out_of_order.json")).expect("batch").len(), 2);
        assert_eq!(parse(&fixture("messenger_batch_two_pages.json")).expect("batch").len(), 3);
        let account = one("whatsapp_account_update.json");
        assert_eq!(account.route, RouteKey::parent(Platform::Whatsapp, "112233445566778"));
        match account.item {
            Item::AccountUpdate { event, detail, timestamp } => {
                assert_eq!(event, "ACCOUNT_RESTRICTION");
                assert!(detail.get("event").is_none() && detail["restriction_info"].is_array());
                // entry.time is in seconds here.
                assert_eq!(timestamp.timestamp(), 1_773_140_000);
            }
            other => panic!("{other:?}"),
        }
        let template = one("whatsapp_template_status_update.json");
        assert_eq!(template.route, RouteKey::parent(Platform::Whatsapp, "112233445566778"));
        match template.item {
            Item::TemplateStatus { template_id, name, language, event, reason, timestamp } => {
                // The id is a number in the payload, too long for some parsers.
                assert_eq!(template_id.as_deref(), Some("1122334455667788"));
                assert_eq!((name.as_str(), language.as_deref()), ("order_followup", Some("pt_PT")));
                assert_eq!((event.as_str(), reason), ("APPROVED", None));
                assert_eq!(timestamp.timestamp(), 1_773_140_000);
            }
            other => panic!("{other:?}"),
        }
        let paused = br#"{"object":"whatsapp_business_account","entry":[{"id":"9","time":1773140000,"changes":[{"field":"message_template_status_update","value":{"event":"PAUSED","message_template_id":7,"message_template_name":"promo","message_template_language":"en_US","reason":"LOW_QUALITY"}}]}]}"#;
        assert!(matches!(&parse(paused).expect("paused")[0].item,
            Item::TemplateStatus { event, reason: Some(r), .. } if event == "PAUSED" && r == "LOW_QUALITY"));
        // Edits and unreactions (no fixture: shapes from the Messenger reference).
        let edit = br#"{"object":"page","entry":[{"id":"1","time":1,"messaging":[{"sender":{"id":"2"},"recipient":{"id":"1"},"timestamp":1773140000000,"message_edit":{"mid":"m_1","text":"fixed typo","num_edit":1}}]}]}"#;
        assert!(
            matches!(&parse(edit).expect("edit")[0].item, Item::Edit { mid, text, .. } if mid == "m_1" && text.as_deref() == Some("fixed typo"))
        );
        let unreact = br#"{"object":"page","entry":[{"id":"1","time":1,"messaging":[{"sender":{"id":"2"},"recipient":{"id":"1"},"timestamp":1,"reaction":{"mid":"m_1","action":"unreact"}}]}]}"#;
        assert!(matches!(&parse(unreact).expect("unreact")[0].item, Item::Reaction { emoji: None, .. }));
        // Unknown event kinds inside a known object are skipped, not errors.
        let optin = br#"{"object":"page","entry":[{"id":"1","time":1,"messaging":[{"sender":{"id":"2"},"recipient":{"id":"1"},"timestamp":1,"optin":{"ref":"x"}}]}]}"#;
        assert!(parse(optin).expect("optin").is_empty());
        assert_eq!(parse(b"{not json"), Err(ParseError::NotJson));
        assert!(matches!(parse(br#"{"object":"user","entry":[]}"#), Err(ParseError::UnknownObject(_))));
    }

    #[test]
    fn a_whatsapp_pin_and_order_read_as_text() {
        let wa = |message: serde_json::Value| {
            let body = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp", "metadata": {"phone_number_id": "106540352242922"},
                "messages": [message]}}]}]});
            match parse(body.to_string().as_bytes()).expect("parses").remove(0).item {
                Item::Message { text, attachments, .. } => (text.unwrap_or_default(), attachments),
                other => panic!("{other:?}"),
            }
        };
        let (text, att) = wa(
            serde_json::json!({"from": "16505551234", "id": "wamid.L", "timestamp": "1749416383", "type": "location",
            "location": {"latitude": 38.7223, "longitude": -9.1393, "name": "Loja Azul", "address": "Rua Augusta 1, Lisboa"}}),
        );
        assert_eq!(text, "📍 Loja Azul, Rua Augusta 1, Lisboa (38.7223, -9.1393)");
        assert_eq!((att[0].kind.as_str(), att[0].url.as_deref()), ("location", Some("geo:38.7223,-9.1393")));
        let (text, _) = wa(
            serde_json::json!({"from": "16505551234", "id": "wamid.P", "timestamp": "1749416383", "type": "location",
            "location": {"latitude": 38.7223, "longitude": -9.1393}}),
        );
        assert_eq!(text, "📍 38.7223, -9.1393");
        let (text, att) =
            wa(serde_json::json!({"from": "16505551234", "id": "wamid.O", "timestamp": "1749416383", "type": "order",
            "order": {"catalog_id": "5551234", "text": "Para sábado, por favor", "product_items": [
                {"product_retailer_id": "MESA-CARVALHO", "quantity": 1, "item_price": 349.9, "currency": "EUR"},
                {"product_retailer_id": "CADEIRA-01", "quantity": "4", "item_price": "59", "currency": "EUR"}]}}));
        assert_eq!(text, "🛒 Order\n1 × MESA-CARVALHO — 349.9 EUR\n4 × CADEIRA-01 — 59 EUR\nPara sábado, por favor");
        assert_eq!(att[0].kind, "order");
    }

    #[test]
    fn the_ad_a_customer_came_from_comes_with_their_message() {
        let attachments_of =
            |body: serde_json::Value| match parse(body.to_string().as_bytes()).expect("parses").remove(0).item {
                Item::Message { attachments, .. } => attachments,
                other => panic!("{other:?}"),
            };
        // Click-to-WhatsApp (the shape of meta/CONTRACTS.md §6).
        let wa = attachments_of(
            serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp", "metadata": {"phone_number_id": "106540352242922"},
            "messages": [{"from": "16505551234", "id": "wamid.A", "timestamp": "1749416383", "type": "text", "text": {"body": "Ainda está disponível?"},
                "referral": {"source_url": "https://fb.me/3cr4Wqqkv", "source_id": "120226305854810726", "source_type": "ad",
                    "headline": "Mesa de carvalho", "body": "Entrega em Lisboa", "media_type": "image",
                    "image_url": "https://scontent.xx.fbcdn.net/v/ad.jpg", "ctwa_clid": "ARAkLkA8rmlFeiCktEJQ"}}]}}]}]}),
        );
        assert_eq!(wa.len(), 1);
        assert_eq!(
            (wa[0].kind.as_str(), wa[0].url.as_deref(), wa[0].caption.as_deref()),
            ("referral", Some("https://fb.me/3cr4Wqqkv"), Some("Mesa de carvalho — Entrega em Lisboa"))
        );
        // Click-to-Messenger: the ad's picture and title.
        let fb = attachments_of(
            serde_json::json!({"object": "page", "entry": [{"id": "1", "time": 1, "messaging": [{"sender": {"id": "2"},
            "recipient": {"id": "1"}, "timestamp": 1773140000000_i64, "message": {"mid": "m_ad", "text": "Is this available?",
            "referral": {"ref": "spring", "ad_id": "6045246247433", "source": "ADS", "type": "OPEN_THREAD",
                "ads_context_data": {"ad_title": "Oak table", "photo_url": "https://scontent.xx.fbcdn.net/v/table.jpg", "post_id": "1_2"}}}}]}]}),
        );
        assert_eq!(
            (fb[0].kind.as_str(), fb[0].url.as_deref(), fb[0].caption.as_deref()),
            ("referral", Some("https://scontent.xx.fbcdn.net/v/table.jpg"), Some("Oak table"))
        );
        // An m.me link's ref alone: nothing to show.
        let link = attachments_of(
            serde_json::json!({"object": "page", "entry": [{"id": "1", "time": 1, "messaging": [{"sender": {"id": "2"},
            "recipient": {"id": "1"}, "timestamp": 1773140000000_i64, "message": {"mid": "m_link", "text": "Olá",
            "referral": {"ref": "footer", "source": "SHORTLINK", "type": "OPEN_THREAD"}}}]}]}),
        );
        assert!(link.is_empty());
    }

    #[test]
    fn handover_events_say_who_holds_the_thread() {
        // Meta's shapes, in one batch of two pages (standby and messaging),
        // app ids as numbers and as text, an idle previous owner (null).
        let body = r#"{"object":"page","entry":[
          {"id":"102938475610293","time":1773140000523,"messaging":[
            {"sender":{"id":"7392015648120394"},"recipient":{"id":"102938475610293"},"timestamp":1773140000100,
             "pass_thread_control":{"previous_owner_app_id":null,"new_owner_app_id":"1234567890123456","metadata":"ç"}},
            {"sender":{"id":"7392015648120394"},"recipient":{"id":"102938475610293"},"timestamp":1773140000200,
             "take_thread_control":{"previous_owner_app_id":1234567890123456,"new_owner_app_id":263902037430900,"metadata":""}},
            {"sender":{"id":"7392015648120394"},"recipient":{"id":"102938475610293"},"timestamp":1773140000300,
             "request_thread_control":{"requested_owner_app_id":"263902037430900","metadata":"a human, please"}},
            {"recipient":{"id":"102938475610293"},"timestamp":1773140000400,"app_roles":{"1234567890123456":["primary_receiver"]}}]},
          {"id":"564738291056473","time":1773140000523,"standby":[
            {"sender":{"id":"7001"},"recipient":{"id":"564738291056473"},"timestamp":1773140000500,"read":{"watermark":1773140000000}},
            {"sender":{"id":"564738291056473"},"recipient":{"id":"7002"},"timestamp":1773140000600,
             "message":{"mid":"m_pageinbox","is_echo":true,"app_id":263902037430900,"text":"Olá 👋"}}]}]}"#;
        let items = parse(body.as_bytes()).expect("parses");
        let changes: Vec<(&str, &str, ThreadChange, i64)> = items
            .iter()
            .filter_map(|r| match &r.item {
                Item::ThreadControl { contact, change, timestamp } => {
                    Some((r.route.external_id.as_str(), contact.as_str(), change.clone(), timestamp.timestamp_millis()))
                }
                _ => None,
            })
            .collect();
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            changes,
            [
                (
                    "102938475610293",
                    "7392015648120394",
                    ThreadChange::Passed { to: some("1234567890123456") },
                    1773140000100
                ),
                (
                    "102938475610293",
                    "7392015648120394",
                    ThreadChange::Taken { by: some("263902037430900") },
                    1773140000200
                ),
                (
                    "102938475610293",
                    "7392015648120394",
                    ThreadChange::Requested { by: some("263902037430900") },
                    1773140000300
                ),
                ("564738291056473", "7001", ThreadChange::Standby, 1773140000500),
                ("564738291056473", "7002", ThreadChange::Standby, 1773140000600),
            ]
        );
        // The standby read and echo are still what they are; app_roles is about the page: nothing.
        assert_eq!(items.len(), 7, "{items:?}");
        assert!(items.iter().any(|r| matches!(&r.item, Item::Read { contact, .. } if contact == "7001")));
        assert!(items.iter().any(|r| matches!(&r.item, Item::Echo { contact, .. } if contact == "7002")));
    }

    #[test]
    fn a_customers_marketing_choice_is_read_per_customer() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"112233445566778","changes":[{"field":"user_preferences",
          "value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15551234567","phone_number_id":"123456789012345"},
            "contacts":[{"profile":{"name":"Ze"},"wa_id":"14155550123"}],
            "user_preferences":[
              {"wa_id":"14155550123","detail":"User requested to stop marketing messages","category":"marketing_messages","value":"stop","timestamp":1773140000},
              {"user_id":"US.1349120865530274","detail":"User requested to resume marketing messages","category":"marketing_messages","value":"resume","timestamp":"1773140100"},
              {"wa_id":"14155550199","category":"something_else","value":"stop","timestamp":1773140200},
              {"wa_id":"14155550199","category":"marketing_messages","value":"maybe","timestamp":1773140200}]}}]}]}"#;
        let items = parse(body).expect("parses");
        let got: Vec<(&str, bool, i64)> = items
            .iter()
            .filter_map(|r| match &r.item {
                Item::MarketingChoice { contact, stopped, timestamp } => {
                    Some((contact.as_str(), *stopped, timestamp.timestamp()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(got, [("14155550123", true, 1773140000), ("US.1349120865530274", false, 1773140100)]);
        assert_eq!(items[0].route, RouteKey::channel(Platform::Whatsapp, "123456789012345"));
    }

    #[test]
    fn a_number_quality_update_names_the_number_by_its_display_number() {
        let body = br#"{"object":"whatsapp_business_account","entry":[{"id":"112233445566778","time":1773140000,
          "changes":[{"field":"phone_number_quality_update","value":{"display_phone_number":"15550783881",
            "event":"DOWNGRADE","old_limit":"TIER_1K","current_limit":"TIER_250","max_daily_conversations_per_business":"250"}},
           {"field":"phone_number_quality_update","value":{"display_phone_number":"+1 555-078-3881","event":"FLAGGED"}},
           {"field":"phone_number_quality_update","value":{"display_phone_number":"","event":"FLAGGED"}}]}]}"#;
        let items = parse(body).expect("parses");
        let got: Vec<(&str, &str, Option<&str>, i64)> = items
            .iter()
            .filter_map(|r| match &r.item {
                Item::NumberQuality { display, event, limit, timestamp } => {
                    Some((display.as_str(), event.as_str(), limit.as_deref(), timestamp.timestamp()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            got,
            [("15550783881", "DOWNGRADE", Some("250"), 1773140000), ("15550783881", "FLAGGED", None, 1773140000)]
        );
        assert_eq!(items[0].route, RouteKey::parent(Platform::Whatsapp, "112233445566778"));
    }

    #[test]
    fn a_business_capability_update_gives_the_accounts_messaging_limit() {
        let body = br#"{"object":"whatsapp_business_account","entry":[
          {"id":"524126980791429","time":1739321024,"changes":[{"field":"business_capability_update",
            "value":{"max_daily_conversations_per_business":2000,"max_phone_numbers_per_waba":25}}]},
          {"id":"524126980791429","time":1739321100,"changes":[
            {"field":"business_capability_update","value":{"max_daily_conversation_per_phone":-1}},
            {"field":"business_capability_update","value":{"max_daily_conversations_per_business":"TIER_10K",
              "max_daily_conversation_per_phone":1000}},
            {"field":"business_capability_update","value":{"max_phone_numbers_per_business":2}},
            {"field":"business_capability_update","value":{"max_daily_conversations_per_business":" "}}]}]}"#;
        let items = parse(body).expect("parses");
        let got: Vec<(&str, i64)> = items
            .iter()
            .filter_map(|r| match &r.item {
                Item::BusinessCapability { limit, timestamp } => Some((limit.as_str(), timestamp.timestamp())),
                _ => None,
            })
            .collect();
        assert_eq!(got, [("2000", 1739321024), ("TIER_UNLIMITED", 1739321100), ("TIER_10K", 1739321100)]);
        assert_eq!(items.len(), 3, "one without a limit is passed over: {items:?}");
        assert_eq!(items[0].route, RouteKey::parent(Platform::Whatsapp, "524126980791429"));
    }

    #[test]
    fn a_template_category_change_made_or_coming() {
        let body = br#"{"object":"whatsapp_business_account","entry":[
          {"id":"112233445566778","time":1773140000,"changes":[{"field":"template_category_update","value":{
            "message_template_id":1234567890,"message_template_name":"order_update","message_template_language":"pt_BR",
            "previous_category":"UTILITY","new_category":"MARKETING"}}]},
          {"id":"112233445566778","time":1773140100,"changes":[{"field":"template_category_update","value":{
            "message_template_id":"987","message_template_name":"promo","message_template_language":"en_US",
            "correct_category":"MARKETING","new_category":"UTILITY","category_update_timestamp":1773226500}},
            {"field":"template_category_update","value":{"message_template_name":"odd","new_category":"UTILITY"}}]}]}"#;
        let items = parse(body).expect("parses");
        assert_eq!(items.len(), 2, "{items:?}");
        assert_eq!(items[0].route, RouteKey::parent(Platform::Whatsapp, "112233445566778"));
        match (&items[0].item, &items[1].item) {
            (
                Item::TemplateCategory { template_id, name, previous, category, coming: None, timestamp, .. },
                Item::TemplateCategory { coming: Some(coming), coming_at: Some(when), category: now, .. },
            ) => {
                assert_eq!((template_id.as_deref(), name.as_str()), (Some("1234567890"), "order_update"));
                assert_eq!((previous.as_deref(), category.as_deref()), (Some("UTILITY"), Some("MARKETING")));
                assert_eq!(timestamp.timestamp(), 1_773_140_000);
                assert_eq!(
                    (coming.as_str(), now.as_deref(), when.timestamp()),
                    ("MARKETING", Some("UTILITY"), 1_773_226_500)
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_policy_enforcement_is_about_the_page_and_has_no_sender() {
        let body = br#"{"object":"page","entry":[{"id":"102938475610293","time":1773140000523,"messaging":[{"recipient":{"id":"102938475610293"},"timestamp":1773140000123,"policy_enforcement":{"action":"block","reason":"The bot violated our Platform Policies (https:\/\/developers.facebook.com\/policy\/#messengerplatform)."}}]}]}"#;
        let items = parse(body).expect("parses");
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].route, RouteKey::channel(Platform::Facebook, "102938475610293"));
        match &items[0].item {
            Item::PolicyEnforcement { action, reason, timestamp } => {
                assert_eq!(action, "block");
                assert!(reason.as_deref().is_some_and(|r| r.contains("developers.facebook.com/policy")));
                assert_eq!(timestamp.timestamp_millis(), 1_773_140_000_123);
            }
            other => panic!("{other:?}"),
        }
        // No action: nothing to apply.
        let bare = String::from_utf8_lossy(body).replace(r#""action":"block","#, "");
        assert!(parse(bare.as_bytes()).expect("parses").is_empty());
        assert!(matches!(parse(br#"{"object":"user","entry":[]}"#), Err(ParseError::UnknownObject(_))));
    }

    /// Every webhook fixture with each value in turn replaced by another
    /// kind of value (or removed): the parser answers, an error or what it could
    /// read, and never panics. Real traffic has fields a version adds,
    /// drops or retypes; a panic here would be a stored webhook the
    /// processor can never get past.
    #[test]
    fn any_field_of_any_webhook_may_be_missing_or_of_another_kind() {
        use crate::meta::variants::{every_variant, odd_values};
        let dir = crate::meta::fixture_path("");
        let mut fixtures: Vec<(String, Value)> = std::fs::read_dir(&dir)
            .expect("fixtures")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| {
                let v: Value = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
                let name = p.file_name()?.to_string_lossy().into_owned();
                v.get("entry").is_some().then_some((name, v))
            })
            .collect();
        fixtures.sort_by(|a, b| a.0.cmp(&b.0));
        assert!(fixtures.len() >= 25, "only {} webhook fixtures found in {}", fixtures.len(), dir.display());
        let mut tried = 0;
        let mut panics = Vec::new();
        for (name, original) in &fixtures {
            for (what, v) in every_variant(original, &odd_values()) {
                tried += 1;
                let body = serde_json::to_vec(&v).expect("json");
                if std::panic::catch_unwind(|| parse(&body)).is_err() {
                    panics.push(format!("{name} {what}"));
                }
            }
        }
        assert!(tried > 5_000, "only {tried} variants");
        assert!(panics.is_empty(), "{} of {tried} variants panicked:\n{}", panics.len(), panics.join("\n"));
    }
}
