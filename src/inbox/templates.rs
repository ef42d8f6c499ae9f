//! WhatsApp message templates: what an agent sends a WhatsApp customer
//! whose customer service window (24 hours after their last message) has
//! closed, when free text is refused (meta/CONTRACTS.md §10). Meta
//! approves each template beforehand; the agent picks one and fills in its
//! parameters.
//!
//! Decisions:
//! - Read from Meta, and kept by each instance for [`KEPT_FOR`] per
//!   business account ([`TemplateCache`]): Meta approves, pauses and
//!   disables templates on its own schedule, so a copy kept long would
//!   offer what Meta then refuses; read at every look and send, a team
//!   opening the template picker all day would spend the business
//!   account's Graph call budget. A send Meta refuses because the template
//!   is gone, paused or disabled drops the copy (`inbox::sender`), as does
//!   Meta's `message_template_status_update` webhook ([`status_changed`]):
//!   on the instance that processes it as soon as it commits, on the
//!   others when the bus tells them (`LiveMsg::Templates`).
//! - That webhook is also announced to the agents of each number of the
//!   account (`template.updated`, so a template picker reloads) and written
//!   to the channel's audit log (`channel.whatsapp_template_status`), once:
//!   Meta's retry or duplicate finds its entry and adds nothing, and a
//!   change older than one recorded for the same template (a retry
//!   delivered late) is recorded but not announced.
//! - Positional text parameters are supported, in the body and in a text
//!   header. They may hold variables (`inbox::variables`:
//!   `{{contact.first_name | there}}`), filled in for the conversation as
//!   the agent sends (a broadcast fills them in for each customer,
//!   `inbox::broadcasts`); writing first to a number has no customer to
//!   fill them in from, and sends them as written. An image, video or document header (`header_media`) takes
//!   the agent's file, sent as multipart with the template as a JSON
//!   `template` part (`inbox::uploads`); the file is uploaded to the
//!   number's media and the header names it. A template with a location
//!   header, named parameters, buttons that need something at send time (a
//!   code to copy, a flow, a catalogue, a link with a parameter) or parts
//!   other than header, body, footer and buttons (a carousel) is listed
//!   with `sendable: false`.
//! - The message stored shows the template as the customer reads it
//!   (header, body and footer, parameters filled in), so the conversation,
//!   its preview and search read like any reply; its one attachment,
//!   `{type: "template", name, language, header_parameters, parameters}`,
//!   says what the sender sends.
//! - A customer who stopped marketing messages on WhatsApp (Meta's
//!   `user_preferences`, kept on the contact as `marketing_stopped_at`) is
//!   not sent a `MARKETING` template: 409 `marketing_stopped` before Meta
//!   is asked (Meta would accept it and report it failed, 131050). Utility
//!   and authentication templates, and replies, still go.
//! - Template pacing: Meta may take a template and hold it while it
//!   gathers customers' feedback on it (the send's answer says
//!   `held_for_quality_assessment`). The message shows `sent` with
//!   `held_by_meta` until Meta's next status for it (`messages::
//!   advance_status`): `sent`, `delivered` or `read` as Meta lets it go, or
//!   `failed` (132015, reason `template_not_approved`) when Meta drops it
//!   and pauses the template. Nobody is told apart from the
//!   `message.updated`: the hold is Meta's, and usually short.
//! - A template may be sent at any time, window open or not; Messenger and
//!   Instagram have none (their 7-day `HUMAN_AGENT` tag is the reply
//!   window's business, `inbox::views::ReplyWindow`).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::messages::{self, TemplateTarget};
use super::views::MessageView;
use super::ConversationId;
use crate::app::AppState;
use crate::auth::Role;
use crate::channels::{ChannelId, ChannelRow, Platform};
use crate::db::{TenantConn, TenantScope};
use crate::error::{AppError, AppResult};
use crate::ids::UserId;
use crate::secret::Secret;

/// A parameter's longest text (Meta's body holds at most 1,024 characters).
pub const MOST_PARAMETER_CHARS: usize = 1024;

/// A template as Meta lists it, readable.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Template {
    pub name: String,
    pub language: String,
    pub category: String,
    /// `APPROVED`, `PENDING`, `REJECTED`, `PAUSED`, `DISABLED`…
    pub status: String,
    /// A text header, if it has one.
    pub header: Option<String>,
    /// `image`, `video` or `document`: the header is a file the agent gives.
    pub header_media: Option<String>,
    pub body: String,
    pub footer: Option<String>,
    /// How many `{{n}}` the header and the body take.
    pub header_parameters: usize,
    pub body_parameters: usize,
    /// Approved and of the kind this server fills in.
    pub sendable: bool,
}

/// What an agent asks to send (`template` in `POST …/messages`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Choice {
    pub name: String,
    pub language: String,
    #[serde(default)]
    pub parameters: Vec<String>,
    #[serde(default)]
    pub header_parameters: Vec<String>,
}

/// A chosen template made ready: the text stored and the attachment that
/// tells the sender what to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    pub text: String,
    pub attachment: Value,
}

/// How many parameters a template text takes: its highest `{{n}}`
/// (`{{2}}` alone still takes two). The fake counts with this too, so the
/// two cannot disagree.
pub fn placeholders(text: &str) -> usize {
    let mut most = 0;
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        if let Ok(n) = after[..end].trim().parse::<usize>() {
            most = most.max(n);
        }
        rest = &after[end + 2..];
    }
    most
}

/// Whether a text holds a named parameter (`{{first_name}}`).
fn named_placeholders(text: &str) -> bool {
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { return false };
        if after[..end].trim().parse::<usize>().is_err() {
            return true;
        }
        rest = &after[end + 2..];
    }
    false
}

/// One template of Meta's list; `None` if it has no name, language or body.
pub fn parse(v: &Value) -> Option<Template> {
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let components = v.get("components").and_then(Value::as_array).cloned().unwrap_or_default();
    let of = |kind: &str| components.iter().find(|c| s(c, "type").is_some_and(|t| t.eq_ignore_ascii_case(kind)));
    let body = of("BODY").and_then(|c| s(c, "text"))?;
    let header = of("HEADER");
    let header_text =
        header.filter(|h| s(h, "format").is_none_or(|f| f.eq_ignore_ascii_case("TEXT"))).and_then(|h| s(h, "text"));
    let footer = of("FOOTER").and_then(|c| s(c, "text"));
    let status = s(v, "status").unwrap_or_default();
    let named = s(v, "parameter_format").is_some_and(|f| f.eq_ignore_ascii_case("NAMED"))
        || named_placeholders(&body)
        || header_text.as_deref().is_some_and(named_placeholders);
    let header_format = header.and_then(|h| s(h, "format")).map(|f| f.to_ascii_lowercase());
    let header_media = header_format.filter(|f| matches!(f.as_str(), "image" | "video" | "document"));
    // A location header needs coordinates at send time, which nothing here asks for.
    let other_header = header.is_some() && header_text.is_none() && header_media.is_none();
    // Quick replies, calls and fixed links need nothing at send time; a
    // code to copy (authentication), a flow, a catalogue or a link with a
    // parameter would.
    let plain_buttons = of("BUTTONS").and_then(|b| b.get("buttons")).and_then(Value::as_array).is_none_or(|bs| {
        bs.iter().all(|b| {
            s(b, "type").is_some_and(|t| matches!(t.to_uppercase().as_str(), "QUICK_REPLY" | "PHONE_NUMBER" | "URL"))
                && !b.to_string().contains("{{")
        })
    });
    // Carousels, limited-time offers and the like take parts of their own.
    let known_parts = components.iter().all(|c| {
        s(c, "type").is_some_and(|t| matches!(t.to_uppercase().as_str(), "HEADER" | "BODY" | "FOOTER" | "BUTTONS"))
    });
    Some(Template {
        name: s(v, "name")?,
        language: s(v, "language")?,
        category: s(v, "category").unwrap_or_default(),
        sendable: status == "APPROVED" && !named && !other_header && plain_buttons && known_parts,
        status,
        header_parameters: header_text.as_deref().map_or(0, placeholders),
        body_parameters: placeholders(&body),
        header: header_text,
        header_media,
        body,
        footer,
    })
}

/// `{{n}}` replaced by the n-th parameter.
fn fill(text: &str, parameters: &[String]) -> String {
    super::variables::replace_braces(text, |inside| {
        let n = inside.trim().parse::<usize>().ok()?;
        parameters.get(n.checked_sub(1)?).cloned()
    })
}

/// Checks the agent's parameters against the template (Meta's own rules:
/// each given, no new line or tab, at most four spaces in a row), and the
/// file a media header takes (`header_file`: what WhatsApp takes, of the
/// header's kind), and makes the message.
pub fn prepare(t: &Template, choice: &Choice, header_file: Option<&super::uploads::Upload>) -> AppResult<Prepared> {
    if t.status != "APPROVED" {
        return Err(AppError::invalid(
            "template_not_approved",
            format!("template {} ({}) is {}, not approved", t.name, t.language, t.status.to_lowercase()),
        ));
    }
    if !t.sendable {
        return Err(AppError::invalid(
            "template_not_supported",
            "this template needs a location header, named parameters or button parameters, which cannot be sent from here",
        ));
    }
    match (t.header_media.as_deref(), header_file) {
        (Some(kind), None) => {
            return Err(AppError::invalid(
                "template_needs_media",
                format!("this template's header is a {kind}: send the template as multipart/form-data with the file"),
            ));
        }
        (None, Some(_)) => {
            return Err(AppError::invalid("invalid_body", "this template's header takes no file"));
        }
        (Some(kind), Some(file)) => {
            let sent_as = super::uploads::check(Platform::Whatsapp, file, None)?.whatsapp_type();
            if sent_as != kind {
                return Err(AppError::invalid(
                    "invalid_template_media",
                    format!("this template's header is a {kind}; the file is a {sent_as} ({})", file.mime),
                ));
            }
        }
        (None, None) => {}
    }
    let bad = |why: String| AppError::invalid("invalid_template_parameters", why);
    for (given, wanted, what) in [
        (&choice.header_parameters, t.header_parameters, "header_parameters"),
        (&choice.parameters, t.body_parameters, "parameters"),
    ] {
        if given.len() != wanted {
            return Err(bad(format!("the template takes {wanted} {what}; {} given", given.len())));
        }
        for p in given {
            if p.trim().is_empty() {
                return Err(bad(format!("{what} must not be empty")));
            }
            if p.contains(['\n', '\t']) || p.contains("     ") {
                return Err(bad(format!("{what} may not hold a new line, a tab or more than four spaces in a row")));
            }
            if p.chars().count() > MOST_PARAMETER_CHARS {
                return Err(bad(format!("{what} must be at most {MOST_PARAMETER_CHARS} characters each")));
            }
        }
    }
    let parts: Vec<String> = [
        t.header.as_deref().map(|h| fill(h, &choice.header_parameters)),
        Some(fill(&t.body, &choice.parameters)),
        t.footer.clone(),
    ]
    .into_iter()
    .flatten()
    .filter(|p| !p.trim().is_empty())
    .collect();
    Ok(Prepared {
        text: parts.join("\n\n"),
        attachment: json!({"type": "template", "url": null, "name": t.name, "language": t.language,
            "header_parameters": choice.header_parameters, "parameters": choice.parameters,
            "header_media": t.header_media}),
    })
}

/// The template a stored message's attachments say to send, if any:
/// (name, language, header parameters, body parameters).
pub fn stored(attachments: &Value) -> Option<(String, String, Vec<String>, Vec<String>)> {
    let a = attachments.as_array()?.iter().find(|a| a.get("type").and_then(Value::as_str) == Some("template"))?;
    let strings = |k: &str| -> Vec<String> {
        a.get(k).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect()
    };
    Some((
        a.get("name")?.as_str()?.to_string(),
        a.get("language")?.as_str()?.to_string(),
        strings("header_parameters"),
        strings("parameters"),
    ))
}

/// A WhatsApp channel the caller may see, with its business account and
/// token: where its templates are read.
pub(super) fn channel_for_templates(
    tc: &mut TenantConn<'_>,
    keys: &crate::crypto::Keyring,
    user: UserId,
    role: Role,
    id: ChannelId,
) -> AppResult<(ChannelRow, String, Secret<String>)> {
    if !crate::channels::can_see(tc, user, role, id)? {
        return Err(AppError::not_found("channel"));
    }
    let row = crate::channels::find(tc, id)?;
    source(keys, row)
}

/// The channel's business account and token, if it is WhatsApp's and connected.
fn source(keys: &crate::crypto::Keyring, row: ChannelRow) -> AppResult<(ChannelRow, String, Secret<String>)> {
    if row.platform() != Platform::Whatsapp {
        return Err(AppError::invalid("templates_whatsapp_only", "message templates are WhatsApp's"));
    }
    let not_connected =
        || AppError::conflict("channel_not_connected", format!("the channel is {}; reconnect it first", row.status));
    if row.status != "connected" {
        return Err(not_connected());
    }
    let (Some(waba), Some(token)) = (row.parent_external_id.clone(), row.token(keys)?) else {
        return Err(not_connected());
    };
    Ok((row, waba, token))
}

/// How long an instance keeps a business account's templates as read.
pub const KEPT_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Each business account's templates as last read from Meta, and when.
#[derive(Default)]
pub struct TemplateCache {
    lists: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Vec<Template>)>>,
}

impl TemplateCache {
    fn lists(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (std::time::Instant, Vec<Template>)>> {
        // Only whole lists are put and taken under the lock: a poisoned one holds good lists.
        self.lists.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, waba: &str) -> Option<Vec<Template>> {
        self.lists().get(waba).filter(|(at, _)| at.elapsed() < KEPT_FOR).map(|(_, list)| list.clone())
    }

    fn put(&self, waba: &str, list: Vec<Template>) {
        let mut lists = self.lists();
        lists.retain(|_, (at, _)| at.elapsed() < KEPT_FOR);
        lists.insert(waba.to_string(), (std::time::Instant::now(), list));
    }

    /// Drops a business account's list: Meta said one of them changed.
    pub fn forget(&self, waba: &str) {
        self.lists().remove(waba);
    }
}

/// What Meta's `message_template_status_update` says about one template.
#[derive(Debug, Clone, Copy)]
pub struct StatusChange<'a> {
    pub template_id: Option<&'a str>,
    pub name: &'a str,
    pub language: Option<&'a str>,
    pub event: &'a str,
    pub reason: Option<&'a str>,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// Records a template's new status for one number of its account and
/// announces it to the number's agents ([module docs](self)). Returns
/// whether it was announced. Every instance's kept list is dropped when
/// the bus tells it, at the commit; the processing instance's is also
/// dropped by its caller straight after the commit
/// (`Followups::templates_changed`), so its next look cannot beat the bus.
pub fn status_changed(
    tc: &mut TenantConn<'_>,
    log: &mut super::events::EventLog,
    channel: &ChannelRow,
    change: StatusChange<'_>,
) -> AppResult<bool> {
    let details = json!({
        "event": change.event,
        "template_id": change.template_id,
        "name": change.name,
        "language": change.language,
        "reason": change.reason,
        "business_account": channel.parent_external_id,
    });
    let data = json!({
        "channel_id": channel.channel_id(),
        "template_id": change.template_id,
        "name": change.name,
        "language": change.language,
        "event": change.event,
        "reason": change.reason,
        "at": change.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    let notice = Notice { action: "channel.whatsapp_template_status", details, data, at: change.at, kept_stale: true };
    announce(tc, log, channel, notice, change.name, change.language)
}

/// What Meta's `template_category_update` says about one template: a
/// change made (`previous` set) or one coming (`coming` set, at `coming_at`).
#[derive(Debug, Clone, Copy)]
pub struct CategoryChange<'a> {
    pub template_id: Option<&'a str>,
    pub name: &'a str,
    pub language: Option<&'a str>,
    pub previous: Option<&'a str>,
    pub category: Option<&'a str>,
    pub coming: Option<&'a str>,
    pub coming_at: Option<chrono::DateTime<chrono::Utc>>,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// Records a template's category change (made, or coming) for one number
/// of its account and announces it as `template.updated` with `event`
/// `CATEGORY_CHANGED` (`previous_category`, `category`) or
/// `CATEGORY_CHANGE_COMING` (`category`, `correct_category`,
/// `category_update_at`): a category decides what a template may be used
/// for and what Meta charges for it. Once, as a status change; a change
/// made drops the kept lists as one does, a coming one changes nothing yet.
pub fn category_changed(
    tc: &mut TenantConn<'_>,
    log: &mut super::events::EventLog,
    channel: &ChannelRow,
    change: CategoryChange<'_>,
) -> AppResult<bool> {
    let event = if change.coming.is_some() { "CATEGORY_CHANGE_COMING" } else { "CATEGORY_CHANGED" };
    let details = json!({
        "event": event,
        "template_id": change.template_id,
        "name": change.name,
        "language": change.language,
        "previous_category": change.previous,
        "category": change.category,
        "correct_category": change.coming,
        "category_update_at": change.coming_at,
        "business_account": channel.parent_external_id,
    });
    let mut data = json!({
        "channel_id": channel.channel_id(),
        "template_id": change.template_id,
        "name": change.name,
        "language": change.language,
        "event": event,
        "reason": null,
        "category": change.category,
        "at": change.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    match change.coming {
        Some(coming) => {
            data["correct_category"] = json!(coming);
            data["category_update_at"] = json!(change.coming_at);
        }
        None => data["previous_category"] = json!(change.previous),
    }
    let notice = Notice {
        action: "channel.whatsapp_template_category",
        details,
        data,
        at: change.at,
        kept_stale: change.coming.is_none(),
    };
    announce(tc, log, channel, notice, change.name, change.language)
}

/// A template notice of Meta's, as kept and as announced.
struct Notice {
    action: &'static str,
    details: Value,
    data: Value,
    at: chrono::DateTime<chrono::Utc>,
    /// The kept lists no longer say what Meta says.
    kept_stale: bool,
}

/// Records `notice` in the channel's audit log once and, unless a newer
/// one for the same template was recorded (a retry delivered late),
/// announces it to the number's agents; whether it did.
fn announce(
    tc: &mut TenantConn<'_>,
    log: &mut super::events::EventLog,
    channel: &ChannelRow,
    notice: Notice,
    name: &str,
    language: Option<&str>,
) -> AppResult<bool> {
    if channel.platform() != Platform::Whatsapp
        || channel.status == crate::channels::ChannelStatus::Disconnected.as_str()
    {
        return Ok(false);
    }
    let same_template = |d: &Value| d["name"] == name && d["language"] == json!(language);
    let recorded = crate::channels::record_notice(
        tc,
        channel.channel_id(),
        notice.action,
        notice.details,
        notice.at,
        same_template,
    )?;
    if recorded != crate::channels::Notice::Fresh {
        return Ok(false);
    }
    // Every instance drops its kept list at the commit (identical
    // notifications of one transaction are sent once).
    if let (true, Some(waba)) = (notice.kept_stale, &channel.parent_external_id) {
        crate::realtime::bus::notify_live(tc.pg(), &crate::realtime::LiveMsg::Templates { waba: waba.clone() })?;
    }
    log.append(tc, "template.updated", Some(channel.id), None, notice.data)?;
    Ok(true)
}

/// Meta's templates of a business account, readable: kept a while
/// ([`TemplateCache`]); a dead token marks the channel `reauth_required`
/// on the way.
pub(super) async fn read(
    app: &AppState,
    tenant: crate::ids::TenantId,
    row: &ChannelRow,
    waba: &str,
    token: &Secret<String>,
) -> AppResult<Vec<Template>> {
    if let Some(list) = app.templates.get(waba) {
        return Ok(list);
    }
    match app.graph.whatsapp_templates(waba, token, None).await {
        Ok(list) => {
            let list: Vec<Template> = list.iter().filter_map(parse).collect();
            app.templates.put(waba, list.clone());
            Ok(list)
        }
        Err(e) => Err(crate::channels::connect::note_graph_error(app, tenant, ChannelId(row.id), e).await.into()),
    }
}

/// `GET /api/channels/{id}/templates`: the channel's templates, every
/// status (an agent sees why one cannot be sent), approved first.
pub async fn list(
    app: &AppState,
    scope: TenantScope,
    user: UserId,
    role: Role,
    id: ChannelId,
) -> AppResult<Vec<Template>> {
    let keys = app.keys.clone();
    let (row, waba, token) = app.db.tenant(scope, move |tc| channel_for_templates(tc, &keys, user, role, id)).await?;
    let mut list = read(app, scope.tenant, &row, &waba, &token).await?;
    list.sort_by(|a, b| (!a.sendable, &a.name, &a.language).cmp(&(!b.sendable, &b.name, &b.language)));
    Ok(list)
}

/// `POST /api/conversations/{id}/messages` with `template`: the template is
/// read from Meta, checked and filled in, and the reply queued as any other.
#[allow(clippy::too_many_arguments)]
pub async fn send(
    app: &AppState,
    scope: TenantScope,
    user: UserId,
    role: Role,
    id: ConversationId,
    choice: Choice,
    opts: messages::ReplyOptions,
    header_file: Option<super::uploads::Upload>,
) -> AppResult<(MessageView, bool)> {
    let cid = opts.client_id.clone();
    let sha = header_file.as_ref().map(|f| f.sha256.clone());
    let (target, choice) = app
        .db
        .tenant(scope, move |tc| {
            // Filled in first, so a retry compares what was sent; for a
            // conversation the caller may not see, nothing of it is answered.
            let choice = fill_in(tc, id, user, choice)?;
            let target = messages::template_target(tc, user, role, id, cid.as_deref(), &choice, sha.as_deref())?;
            Ok::<_, AppError>((target, choice))
        })
        .await?;
    let (row, marketing_stopped) = match target {
        TemplateTarget::Retried(view) => return Ok((view, false)),
        TemplateTarget::Channel(row, stopped) => (row, stopped),
    };
    let prepared = checked(app, scope.tenant, row, &choice, header_file.as_ref(), marketing_stopped).await?;
    app.tenant_with_events(scope, move |tc, log| {
        messages::create_template_reply(tc, log, user, role, id, prepared, header_file, opts)
    })
    .await
}

/// Template `name` in `language` as Meta has it for channel `row` now
/// (kept a while, [`TemplateCache`]); 422 `unknown_template` when it has none.
pub async fn find(
    app: &AppState,
    tenant: crate::ids::TenantId,
    row: ChannelRow,
    name: &str,
    language: &str,
) -> AppResult<Template> {
    let (row, waba, token) = source(&app.keys, row)?;
    let found = read(app, tenant, &row, &waba, &token).await?;
    found.into_iter().find(|t| t.name == name && t.language == language).ok_or_else(|| {
        AppError::invalid("unknown_template", format!("the business account has no template {name} in {language}"))
    })
}

/// `choice` with the variables in its parameters (`inbox::variables`:
/// `{{contact.first_name}}`…) filled in for conversation `id` as `agent`
/// writes in it; a retry fills them in alike, so it finds its message.
fn fill_in(tc: &mut TenantConn<'_>, id: ConversationId, agent: UserId, choice: Choice) -> AppResult<Choice> {
    use super::variables;
    if !choice.parameters.iter().chain(&choice.header_parameters).any(|p| variables::any(p)) {
        return Ok(choice);
    }
    let looked = variables::look_up(tc, id.0, Some(agent))?;
    Ok(choice.filled_in(&looked.values()))
}

impl Choice {
    /// The choice with the variables in its parameters filled in from
    /// `values` (`inbox::variables`).
    pub fn filled_in(&self, values: &super::variables::Values<'_>) -> Choice {
        let fill = |ps: &[String]| ps.iter().map(|p| super::variables::render(p, values)).collect();
        Choice { parameters: fill(&self.parameters), header_parameters: fill(&self.header_parameters), ..self.clone() }
    }
}

/// `choice` of the templates Meta has for channel `row` now, checked and
/// filled in (`marketing_stopped`: its customer stopped marketing ones).
pub async fn checked(
    app: &AppState,
    tenant: crate::ids::TenantId,
    row: ChannelRow,
    choice: &Choice,
    header_file: Option<&super::uploads::Upload>,
    marketing_stopped: bool,
) -> AppResult<Prepared> {
    let template = find(app, tenant, row, &choice.name, &choice.language).await?;
    // Meta would take it and report it failed (131050): say so now.
    if marketing_stopped && template.category.eq_ignore_ascii_case("MARKETING") {
        return Err(AppError::conflict(
            "marketing_stopped",
            "the customer stopped marketing messages on WhatsApp; a utility template or a reply in the window still reaches them",
        ));
    }
    prepare(&template, choice, header_file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order_update() -> Value {
        json!({"name": "order_update", "language": "pt_BR", "status": "APPROVED", "category": "UTILITY",
        "parameter_format": "POSITIONAL", "id": "1",
        "components": [
            {"type": "HEADER", "format": "TEXT", "text": "Pedido {{1}}"},
            {"type": "BODY", "text": "Olá {{1}}, o seu pedido {{2}} saiu para entrega. Obrigado, {{1}}!"},
            {"type": "FOOTER", "text": "Loja Exemplo"},
            {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Falar com alguém"}]}
        ]})
    }

    fn choice(header: &[&str], body: &[&str]) -> Choice {
        Choice {
            name: "order_update".into(),
            language: "pt_BR".into(),
            header_parameters: header.iter().map(|s| s.to_string()).collect(),
            parameters: body.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_template_is_read_and_filled_in() {
        let t = parse(&order_update()).expect("template");
        assert_eq!((t.header_parameters, t.body_parameters, t.sendable), (1, 2, true));
        let p = prepare(&t, &choice(&["#4521"], &["Zoë", "#4521"]), None).expect("prepared");
        assert_eq!(
            p.text,
            "Pedido #4521\n\nOlá Zoë, o seu pedido #4521 saiu para entrega. Obrigado, Zoë!\n\nLoja Exemplo"
        );
        assert_eq!(
            stored(&json!([p.attachment])),
            Some(("order_update".into(), "pt_BR".into(), vec!["#4521".into()], vec!["Zoë".into(), "#4521".into()]))
        );
        // A filled-in parameter that looks like a placeholder stays as given.
        let p = prepare(&t, &choice(&["{{2}}"], &["a", "b"]), None).expect("prepared");
        assert!(p.text.starts_with("Pedido {{2}}\n\nOlá a"), "{}", p.text);
    }

    #[test]
    fn parameters_are_checked_as_meta_checks_them() {
        let t = parse(&order_update()).expect("template");
        for (header, body) in [
            (&["#1"][..], &["Zoë"][..]),
            (&[][..], &["Zoë", "#1"][..]),
            (&["#1"][..], &["Zoë", " "][..]),
            (&["#1"][..], &["Zoë\nAna", "#1"][..]),
            (&["#1"][..], &["Zoë     Ana", "#1"][..]),
        ] {
            let e = prepare(&t, &choice(header, body), None).expect_err("refused");
            assert_eq!(e.code, "invalid_template_parameters", "{header:?} {body:?}");
        }
        let long = "x".repeat(MOST_PARAMETER_CHARS + 1);
        assert!(prepare(&t, &choice(&["#1"], &["Zoë", &long]), None).is_err());
    }

    #[test]
    fn what_cannot_be_sent_from_here_says_so() {
        let mut paused = order_update();
        paused["status"] = json!("PAUSED");
        let t = parse(&paused).expect("template");
        assert!(!t.sendable);
        assert_eq!(prepare(&t, &choice(&["#1"], &["a", "b"]), None).expect_err("paused").code, "template_not_approved");
        for change in [
            json!({"type": "HEADER", "format": "LOCATION"}),
            json!({"type": "BUTTONS", "buttons": [{"type": "URL", "text": "Ver", "url": "https://x.test/{{1}}"}]}),
        ] {
            let mut v = order_update();
            let kind = change["type"].clone();
            let components = v["components"].as_array_mut().expect("components");
            components.retain(|c| c["type"] != kind);
            components.push(change);
            assert!(!parse(&v).expect("template").sendable, "{v}");
        }
        let otp = json!({"name": "code", "language": "en", "status": "APPROVED", "category": "AUTHENTICATION",
            "components": [{"type": "BODY", "text": "{{1}} is your verification code."},
                {"type": "BUTTONS", "buttons": [{"type": "OTP", "otp_type": "COPY_CODE", "text": "Copy code"}]}]});
        assert!(!parse(&otp).expect("template").sendable);
        let carousel = json!({"name": "c", "language": "en", "status": "APPROVED",
            "components": [{"type": "BODY", "text": "Look"}, {"type": "CAROUSEL", "cards": []}]});
        assert!(!parse(&carousel).expect("template").sendable);
        let named = json!({"name": "n", "language": "en", "status": "APPROVED", "parameter_format": "NAMED",
            "components": [{"type": "BODY", "text": "Hi {{first_name}}"}]});
        assert!(!parse(&named).expect("template").sendable);
        assert!(parse(&json!({"name": "x", "language": "en", "components": []})).is_none(), "no body");
    }

    /// Meta's template list carries shapes no example shows (new component
    /// and button kinds, fields retyped between versions). Each value of
    /// two templates retyped or removed: the template is read or passed
    /// over, never panicked on; one read as sendable is approved and is
    /// filled in with as many parameters as it says it takes.
    #[test]
    fn a_template_of_any_shape_is_read_or_passed_over() {
        use crate::meta::variants::{every_variant, odd_values};
        let invoice = json!({"name": "invoice", "language": "pt_BR", "status": "APPROVED", "category": "UTILITY",
            "components": [{"type": "HEADER", "format": "DOCUMENT", "example": {"header_handle": ["4::YQ=="]}},
                {"type": "BODY", "text": "A sua fatura {{1}}."},
                {"type": "BUTTONS", "buttons": [{"type": "URL", "text": "Ver", "url": "https://x.test/f"},
                    {"type": "PHONE_NUMBER", "text": "Ligar", "phone_number": "+351912345678"}]}]});
        let mut tried = 0;
        for original in [order_update(), invoice] {
            for (what, v) in every_variant(&original, &odd_values()) {
                tried += 1;
                let Ok(read) = std::panic::catch_unwind(|| parse(&v)) else { panic!("{what}: parse panicked") };
                let Some(t) = read.filter(|t| t.sendable) else { continue };
                assert_eq!(t.status, "APPROVED", "{what}");
                if t.header_media.is_some() {
                    continue;
                }
                let filled = |n: usize| (1..=n).map(|i| format!("p{i}")).collect::<Vec<_>>();
                let choice = Choice {
                    name: t.name.clone(),
                    language: t.language.clone(),
                    header_parameters: filled(t.header_parameters),
                    parameters: filled(t.body_parameters),
                };
                let prepared = std::panic::catch_unwind(|| prepare(&t, &choice, None));
                assert!(prepared.as_ref().is_ok_and(|p| p.is_ok()), "{what}: {:?}", prepared.map(|p| p.err()));
            }
        }
        assert!(tried > 300, "{tried}");
    }

    #[test]
    fn a_media_header_takes_a_file_of_its_kind() {
        use crate::inbox::uploads::Upload;
        let invoice = json!({"name": "invoice", "language": "pt_BR", "status": "APPROVED", "category": "UTILITY",
            "components": [{"type": "HEADER", "format": "DOCUMENT", "example": {"header_handle": ["4::YQ=="]}},
                {"type": "BODY", "text": "A sua fatura {{1}}."}]});
        let t = parse(&invoice).expect("template");
        assert!(t.sendable);
        assert_eq!((t.header_media.as_deref(), t.header_parameters), (Some("document"), 0));
        let pdf = Upload::new(b"%PDF-1.7\n1 0 obj\n".to_vec(), None, Some("fatura.pdf"));
        let png = Upload::new(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec(), None, None);
        let p = prepare(&t, &choice(&[], &["#7"]), Some(&pdf)).expect("prepared");
        assert_eq!((p.text.as_str(), &p.attachment["header_media"]), ("A sua fatura #7.", &json!("document")));
        let code = |file: Option<&Upload>| prepare(&t, &choice(&[], &["#7"]), file).expect_err("refused").code;
        assert_eq!(code(None), "template_needs_media");
        assert_eq!(code(Some(&png)), "invalid_template_media");
        let text_header = parse(&order_update()).expect("template");
        let e = prepare(&text_header, &choice(&["#1"], &["a", "b"]), Some(&pdf)).expect_err("no file");
        assert_eq!(e.code, "invalid_body");
    }
}
