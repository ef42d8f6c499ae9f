//! The fake's WhatsApp message templates: each business account starts
//! with Meta's sample `hello_world` (en_US, approved), as a new account at
//! Meta does; `POST /_fake/templates` adds or replaces one.
//!
//! `GET /{waba-id}/message_templates` lists them in Graph's shape (filters
//! `name` and `status`, `limit`, the `after` cursor). A `template` send
//! (`POST /{phone-number-id}/messages`) is checked as Meta checks it: the
//! name and language must exist in the number's account (132001), the
//! template must be approved (132001; paused 132015, disabled 132016), the
//! body's parameters must all be given (132000), and a parameter may hold
//! no new line, tab or more than four spaces in a row (132018).
//!
//! `POST /{waba-id}/message_templates` submits a template for review
//! (`PENDING`) and `DELETE /{waba-id}/message_templates?name=` deletes
//! one, as Graph does ([`create`], [`delete`]).
//!
//! `POST /_fake/template-status` `{waba_id, name, language?, event,
//! reason?}` is Meta reviewing a template: its status changes as the event
//! (one of Meta's) says (`REINSTATED` makes it approved again, `DELETED`
//! takes it off the list) and the fake sends the
//! `message_template_status_update` webhook, shaped as Meta's.
//!
//! `POST /_fake/template-category` `{waba_id, name, language?, category,
//! coming_in_hours?}` is Meta re-categorising a template: the category
//! changes and the fake sends `template_category_update` naming the
//! previous one; with `coming_in_hours` it only says the change will come
//! then (`correct_category`, `category_update_timestamp`), changing nothing.
//!
//! `POST /_fake/template-pacing` `{waba_id, name, language?, action}` is
//! Meta's template pacing: `hold` makes the template's sends answer
//! `message_status: held_for_quality_assessment` and send no status;
//! `release` (a good quality signal, or none in time) lets the held ones
//! go (`sent`, `delivered`, `read` webhooks) and ends the pacing; `drop` (a
//! bad signal) fails each held one with a `failed` status of code 132015
//! and pauses the template, with its `message_template_status_update`
//! (`PAUSED`) webhook.

use actix_web::HttpResponse;
use serde_json::{json, Value};

use super::{graph_error, no_object, random_alnum, Owner, State};
use crate::inbox::templates::placeholders;

#[derive(Clone, Debug)]
pub(super) struct Template {
    id: String,
    name: String,
    language: String,
    category: String,
    status: String,
    components: Value,
    /// Meta paces it (`/_fake/template-pacing`): sends are held.
    paced: bool,
    /// The sends held meanwhile, with the category each is priced by.
    held: Vec<(super::messaging::SentTo, String)>,
}

impl Template {
    /// The sample every new WhatsApp business account has.
    pub(super) fn sample() -> Template {
        Template {
            id: format!("9{}", random_digits(14)),
            name: "hello_world".into(),
            language: "en_US".into(),
            category: "UTILITY".into(),
            status: "APPROVED".into(),
            components: json!([
                {"type": "HEADER", "format": "TEXT", "text": "Hello World"},
                {"type": "BODY", "text": "Welcome and congratulations!! This message demonstrates your ability to send a WhatsApp message notification from the Cloud API, hosted by Meta. Thank you for taking the time to test with us."},
                {"type": "FOOTER", "text": "WhatsApp Business Platform sample message"}
            ]),
            paced: false,
            held: Vec::new(),
        }
    }

    fn graph(&self) -> Value {
        json!({"name": self.name, "parameter_format": "POSITIONAL", "components": self.components,
            "language": self.language, "status": self.status, "category": self.category, "id": self.id})
    }

    /// How many `{{n}}` the body and a text header ask for, each.
    /// `image`, `video` or `document` for a media header.
    fn header_media(&self) -> Option<String> {
        self.components
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c.get("type").and_then(Value::as_str) == Some("HEADER"))
            .and_then(|h| h.get("format").and_then(Value::as_str))
            .map(str::to_ascii_lowercase)
            .filter(|f| matches!(f.as_str(), "image" | "video" | "document"))
    }

    fn wanted(&self) -> (usize, usize) {
        let count = |kind: &str| {
            self.components
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c.get("type").and_then(Value::as_str) == Some(kind))
                .filter_map(|c| c.get("text").and_then(Value::as_str))
                .map(placeholders)
                .sum::<usize>()
        };
        (count("HEADER"), count("BODY"))
    }
}

fn random_digits(n: usize) -> String {
    random_alnum(n * 3).chars().filter(char::is_ascii_digit).chain(std::iter::repeat('7')).take(n).collect()
}

/// `POST /_fake/templates` `{waba_id, name, language?, category?, status?,
/// header?, body, footer?}`.
pub(super) fn add(st: &mut State, body: &Value) -> HttpResponse {
    let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(waba_id), Some(name), Some(text)) = (s("waba_id"), s("name"), s("body")) else {
        return HttpResponse::BadRequest().json(json!({"error": "waba_id, name and body are required"}));
    };
    let Some(waba) = st.wabas.get_mut(&waba_id) else {
        return HttpResponse::BadRequest().json(json!({"error": "no such business account"}));
    };
    let mut components = Vec::new();
    if let Some(format) = s("header_media").map(|f| f.to_ascii_uppercase()) {
        if !matches!(format.as_str(), "IMAGE" | "VIDEO" | "DOCUMENT") {
            return HttpResponse::BadRequest().json(json!({"error": "header_media is IMAGE, VIDEO or DOCUMENT"}));
        }
        // Meta keeps an example of the header's media, by a handle of its own.
        components.push(json!({"type": "HEADER", "format": format, "example": {"header_handle": [format!("4::{}", random_alnum(16))]}}));
    } else if let Some(h) = s("header") {
        components.push(json!({"type": "HEADER", "format": "TEXT", "text": h}));
    }
    components.push(json!({"type": "BODY", "text": text}));
    if let Some(f) = s("footer") {
        components.push(json!({"type": "FOOTER", "text": f}));
    }
    let language = s("language").unwrap_or_else(|| "en_US".into());
    waba.templates.retain(|t| !(t.name == name && t.language == language));
    let template = Template {
        id: format!("9{}", random_digits(14)),
        name,
        language,
        category: s("category").unwrap_or_else(|| "UTILITY".into()),
        status: s("status").unwrap_or_else(|| "APPROVED".into()),
        components: Value::Array(components),
        paced: false,
        held: Vec::new(),
    };
    let answer = template.graph();
    waba.templates.push(template);
    HttpResponse::Ok().json(answer)
}

/// The events of Meta's `message_template_status_update`.
const REVIEW_EVENTS: [&str; 13] = [
    "APPROVED",
    "ARCHIVED",
    "DELETED",
    "DISABLED",
    "FLAGGED",
    "IN_APPEAL",
    "LIMIT_EXCEEDED",
    "LOCKED",
    "PAUSED",
    "PENDING",
    "PENDING_DELETION",
    "REINSTATED",
    "REJECTED",
];

/// The status a template has after Meta's review event.
fn status_after(event: &str) -> &str {
    match event {
        "REINSTATED" => "APPROVED",
        other => other,
    }
}

/// `POST /_fake/template-status`: see the module docs.
pub(super) async fn review(fake: &super::FakeMeta, body: &Value) -> HttpResponse {
    let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(waba_id), Some(name), Some(event)) = (s("waba_id"), s("name"), s("event")) else {
        return super::bad("waba_id, name and event are required");
    };
    let event = event.to_ascii_uppercase();
    if !REVIEW_EVENTS.contains(&event.as_str()) {
        return super::bad(&format!("event is one of {}", REVIEW_EVENTS.join(", ")));
    }
    let language = s("language").unwrap_or_else(|| "en_US".into());
    let (template_id, target) = {
        let mut st = fake.lock();
        let template = match found(&mut st, &waba_id, &name, &language) {
            Ok(t) => t,
            Err(missing) => return super::bad(missing),
        };
        template.status = status_after(&event).to_string();
        // Meta sends the id as a JSON number.
        let id: u64 = template.id.parse().unwrap_or_default();
        // A deleted template leaves the account's list.
        if let (true, Some(waba)) = (event == "DELETED", st.wabas.get_mut(&waba_id)) {
            waba.templates.retain(|t| !(t.name == name && t.language == language));
        }
        (id, st.webhook_target.clone())
    };
    let webhook = status_update(&waba_id, template_id, &name, &language, &event, s("reason"));
    let delivered = match target {
        Some(url) => fake.post_noted(&url, &webhook).await,
        None => None,
    };
    HttpResponse::Ok().json(json!({"webhook": webhook, "delivered_status": delivered}))
}

/// The template `name` in `language` of the account `waba_id`, or what
/// is missing.
fn found<'a>(st: &'a mut State, waba_id: &str, name: &str, language: &str) -> Result<&'a mut Template, &'static str> {
    let Some(waba) = st.wabas.get_mut(waba_id) else { return Err("no such business account") };
    waba.templates
        .iter_mut()
        .find(|t| t.name == name && t.language == language)
        .ok_or("no such template in that account and language")
}

/// Meta's `message_template_status_update` webhook of a template.
fn status_update(waba_id: &str, id: u64, name: &str, language: &str, event: &str, reason: Option<String>) -> Value {
    let value = json!({"event": event, "message_template_id": id, "message_template_name": name,
        "message_template_language": language, "reason": reason});
    json!({"object": "whatsapp_business_account", "entry": [{"id": waba_id,
        "time": chrono::Utc::now().timestamp(), "changes": [{"field": "message_template_status_update", "value": value}]}]})
}

/// Keeps a send of a paced template until its pacing ends.
pub(super) fn hold(
    st: &mut State,
    waba: &str,
    name: &str,
    language: &str,
    sent: super::messaging::SentTo,
    category: String,
) {
    let template =
        st.wabas.get_mut(waba).and_then(|w| w.templates.iter_mut().find(|t| t.name == name && t.language == language));
    if let Some(t) = template {
        t.held.push((sent, category));
    }
}

/// `POST /_fake/template-pacing`: see the module docs.
pub(super) async fn pacing(fake: &super::FakeMeta, body: &Value) -> HttpResponse {
    let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(waba_id), Some(name), Some(action)) = (s("waba_id"), s("name"), s("action")) else {
        return super::bad("waba_id, name and action are required");
    };
    if !matches!(action.as_str(), "hold" | "release" | "drop") {
        return super::bad("action is hold, release or drop");
    }
    let language = s("language").unwrap_or_else(|| "en_US".into());
    let (held, template_id, target) = {
        let mut st = fake.lock();
        let template = match found(&mut st, &waba_id, &name, &language) {
            Ok(t) => t,
            Err(missing) => return super::bad(missing),
        };
        template.paced = action == "hold";
        if action == "drop" {
            template.status = "PAUSED".into();
        }
        let held = std::mem::take(&mut template.held);
        (held, template.id.parse::<u64>().unwrap_or_default(), st.webhook_target.clone())
    };
    let now = chrono::Utc::now().timestamp();
    let mut out: Vec<Value> = Vec::new();
    for (sent, category) in &held {
        match action.as_str() {
            "release" => out.extend(sent.went(Some(category), now)),
            _ => out.push(sent.status(
                "failed",
                now,
                json!({"errors": [{"code": 132015, "title": "Template is Paused", "message": "Template is Paused",
                    "error_data": {"details": "Template is temporarily unavailable to use because it was paused due to low quality."},
                    "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"}]}),
            )),
        }
    }
    let paused = (action == "drop").then(|| status_update(&waba_id, template_id, &name, &language, "PAUSED", None));
    let mut delivered = Vec::new();
    if let Some(url) = target {
        for webhook in out.iter().chain(&paused) {
            delivered.push(fake.post_noted(&url, webhook).await);
        }
    }
    HttpResponse::Ok().json(json!({"held": held.len(), "webhooks": out.len() + usize::from(paused.is_some()),
        "delivered_status": delivered}))
}

/// Meta's template categories.
const CATEGORIES: [&str; 3] = ["MARKETING", "UTILITY", "AUTHENTICATION"];

/// `POST /_fake/template-category`: see the module docs.
pub(super) async fn recategorise(fake: &super::FakeMeta, body: &Value) -> HttpResponse {
    let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(waba_id), Some(name), Some(category)) = (s("waba_id"), s("name"), s("category")) else {
        return super::bad("waba_id, name and category are required");
    };
    let category = category.to_ascii_uppercase();
    if !CATEGORIES.contains(&category.as_str()) {
        return super::bad(&format!("category is one of {}", CATEGORIES.join(", ")));
    }
    let coming = match body.get("coming_in_hours") {
        None | Some(Value::Null) => None,
        Some(h) => match h.as_u64().filter(|h| (1..=720).contains(h)) {
            Some(h) => Some(chrono::Utc::now() + chrono::Duration::hours(h as i64)),
            None => return super::bad("coming_in_hours is 1 to 720"),
        },
    };
    let language = s("language").unwrap_or_else(|| "en_US".into());
    let (template_id, before, target) = {
        let mut st = fake.lock();
        let template = match found(&mut st, &waba_id, &name, &language) {
            Ok(t) => t,
            Err(missing) => return super::bad(missing),
        };
        let before = template.category.clone();
        if coming.is_none() {
            template.category = category.clone();
        }
        (template.id.parse::<u64>().unwrap_or_default(), before, st.webhook_target.clone())
    };
    let mut value = json!({"message_template_id": template_id, "message_template_name": name,
        "message_template_language": language});
    match coming {
        Some(at) => {
            value["correct_category"] = json!(category);
            value["new_category"] = json!(before);
            value["category_update_timestamp"] = json!(at.timestamp());
        }
        None => {
            value["previous_category"] = json!(before);
            value["new_category"] = json!(category);
        }
    }
    let webhook = json!({"object": "whatsapp_business_account", "entry": [{"id": waba_id,
        "time": chrono::Utc::now().timestamp(), "changes": [{"field": "template_category_update", "value": value}]}]});
    let delivered = match target {
        Some(url) => fake.post_noted(&url, &webhook).await,
        None => None,
    };
    HttpResponse::Ok().json(json!({"webhook": webhook, "delivered_status": delivered}))
}

/// `GET /{waba-id}/message_templates`.
pub(super) fn list(
    st: &State,
    owner: &Owner,
    waba_id: &str,
    q: &std::collections::HashMap<String, String>,
) -> HttpResponse {
    let Some(waba) = st.wabas.get(waba_id) else { return no_object(waba_id) };
    if !super::owns_waba(st, owner, waba_id) {
        return graph_error(200, None, "(#200) Permissions error");
    }
    let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(25).clamp(1, 250);
    let from = q.get("after").and_then(|a| a.strip_prefix("fake-after-")).and_then(|n| n.parse().ok()).unwrap_or(0);
    let matching: Vec<&Template> = waba
        .templates
        .iter()
        .filter(|t| q.get("name").is_none_or(|n| &t.name == n))
        .filter(|t| q.get("status").is_none_or(|s| t.status.eq_ignore_ascii_case(s)))
        .collect();
    let page: Vec<Value> = matching.iter().skip(from).take(limit).map(|t| t.graph()).collect();
    let mut paging = json!({"cursors": {"before": format!("fake-before-{from}"), "after": format!("fake-after-{}", from + page.len())}});
    if from + page.len() < matching.len() {
        paging["next"] = json!(format!(
            "https://graph.facebook.com/v24.0/{waba_id}/message_templates?after=fake-after-{}",
            from + page.len()
        ));
    }
    HttpResponse::Ok().json(json!({"data": page, "paging": paging}))
}

/// `POST /{waba-id}/message_templates` `{name, language, category,
/// components}`: a business submits a template for review. Meta's checks
/// that matter here: a name of lowercase letters, digits and underscores;
/// a category Meta knows; a body; an example for each body parameter; the
/// name free in that language (subcode 2388024). Made `PENDING`, answered
/// `{id, status, category}`; `/_fake/template-status` reviews it.
pub(super) fn create(st: &mut State, owner: &Owner, waba_id: &str, body: &Value) -> HttpResponse {
    if !st.wabas.contains_key(waba_id) {
        return no_object(waba_id);
    }
    if !super::owns_waba(st, owner, waba_id) {
        return graph_error(200, None, "(#200) Permissions error");
    }
    let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let (name, language, category) = (text("name"), text("language"), text("category"));
    let components = body.get("components").and_then(Value::as_array).cloned().unwrap_or_default();
    let invalid = |why: &str| graph_error(100, None, &format!("(#100) Invalid parameter: {why}"));
    if name.is_empty()
        || name.len() > 512
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return invalid("name may hold only lowercase letters, digits and underscores");
    }
    if language.is_empty() {
        return invalid("language is required");
    }
    if !matches!(category.as_str(), "MARKETING" | "UTILITY" | "AUTHENTICATION") {
        return invalid("category must be MARKETING, UTILITY or AUTHENTICATION");
    }
    let Some(body_part) = components.iter().find(|c| c.get("type").and_then(Value::as_str) == Some("BODY")) else {
        return invalid("a template needs a BODY component");
    };
    let wanted = body_part.get("text").and_then(Value::as_str).map(placeholders).unwrap_or(0);
    let examples = body_part.pointer("/example/body_text/0").and_then(Value::as_array).map_or(0, Vec::len);
    if wanted > 0 && examples != wanted {
        return graph_error(100, Some(2388043), "(#100) Message template body requires an example for each variable");
    }
    let waba = st.wabas.get_mut(waba_id).expect("checked above");
    if waba.templates.iter().any(|t| t.name == name && t.language == language) {
        return graph_error(
            100,
            Some(2388024),
            &format!("(#100) Message template \"{name}\" already exists in {language}"),
        );
    }
    let template = Template {
        id: format!("9{}", random_digits(14)),
        name,
        language,
        category,
        status: "PENDING".into(),
        components: Value::Array(components),
        paced: false,
        held: Vec::new(),
    };
    let answer = json!({"id": template.id, "status": template.status, "category": template.category});
    waba.templates.push(template);
    HttpResponse::Ok().json(answer)
}

/// `DELETE /{waba-id}/message_templates?name=` (and `hsm_id=`, one
/// language's): the templates of that name, every language unless
/// `hsm_id` names one, are deleted.
pub(super) fn delete(
    st: &mut State,
    owner: &Owner,
    waba_id: &str,
    q: &std::collections::HashMap<String, String>,
) -> HttpResponse {
    if !st.wabas.contains_key(waba_id) {
        return no_object(waba_id);
    }
    if !super::owns_waba(st, owner, waba_id) {
        return graph_error(200, None, "(#200) Permissions error");
    }
    let Some(name) = q.get("name").filter(|n| !n.is_empty()) else {
        return graph_error(100, None, "(#100) The parameter name is required");
    };
    let waba = st.wabas.get_mut(waba_id).expect("checked above");
    let before = waba.templates.len();
    waba.templates.retain(|t| !(&t.name == name && q.get("hsm_id").is_none_or(|id| &t.id == id)));
    if waba.templates.len() == before {
        // Meta's answer: a generic message, the explanation for people.
        let e = json!({"message": "Invalid parameter", "type": "OAuthException", "code": 100,
            "error_subcode": 2593002, "is_transient": false,
            "error_user_title": "Message template not found",
            "error_user_msg": format!("The message template {name} wasn't found for this account."),
            "fbtrace_id": format!("Fake{}", random_alnum(12))});
        return HttpResponse::BadRequest().json(json!({ "error": e }));
    }
    HttpResponse::Ok().json(json!({"success": true}))
}

/// Checks a `template` send through a number of `waba`; `Ok` with the
/// template's category (which Meta prices the message by) and whether
/// Meta paces it (holds the send).
pub(super) fn check_send(st: &State, waba: &str, body: &Value) -> Result<(String, bool), Box<HttpResponse>> {
    let t = body.get("template").unwrap_or(&Value::Null);
    let name = t.get("name").and_then(Value::as_str).unwrap_or("");
    let language = t.pointer("/language/code").and_then(Value::as_str).unwrap_or("");
    if name.is_empty() || language.is_empty() {
        return Err(Box::new(super::messaging::wa_error(
            100,
            "(#100) The parameters template.name and template.language.code are required.",
        )));
    }
    let found = st.wabas.get(waba).and_then(|w| w.templates.iter().find(|x| x.name == name && x.language == language));
    let missing = || {
        super::messaging::wa_error_as(
            actix_web::http::StatusCode::BAD_REQUEST,
            132001,
            "(#132001) Template name does not exist in the translation",
            &format!("template name ({name}) does not exist in {language}"),
        )
    };
    let Some(found) = found else { return Err(Box::new(missing())) };
    match found.status.as_str() {
        "APPROVED" => {}
        "PAUSED" => {
            return Err(Box::new(super::messaging::wa_error(132015, "(#132015) Template is Paused")));
        }
        "DISABLED" => {
            return Err(Box::new(super::messaging::wa_error(132016, "(#132016) Template is Disabled")));
        }
        _ => return Err(Box::new(missing())),
    }
    let given = |kind: &str| -> Vec<String> {
        t.get("components")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| c.get("type").and_then(Value::as_str).is_some_and(|k| k.eq_ignore_ascii_case(kind)))
            .flat_map(|c| c.get("parameters").and_then(Value::as_array).cloned().unwrap_or_default())
            .map(|p| p.get("text").and_then(Value::as_str).unwrap_or("").to_string())
            .collect()
    };
    if let Some(kind) = found.header_media() {
        // The header's one parameter names a media object of the business's numbers, of the header's kind.
        let parameter = t
            .get("components")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c.get("type").and_then(Value::as_str).is_some_and(|k| k.eq_ignore_ascii_case("header")))
            .and_then(|c| c.get("parameters")?.as_array()?.first().cloned());
        let phones = st.wabas.get(waba).map(|w| w.phones.clone()).unwrap_or_default();
        let media_ok = parameter.as_ref().is_some_and(|p| {
            p.get("type").and_then(Value::as_str) == Some(kind.as_str())
                && p.get(kind.as_str()).and_then(|m| m.get("id")).and_then(Value::as_str).is_some_and(|id| {
                    st.media.get(id).is_some_and(|(phone, mime, _)| {
                        phones.contains(phone) && (kind == "document" || mime.starts_with(&format!("{kind}/")))
                    })
                })
        });
        if !media_ok {
            return Err(Box::new(super::messaging::wa_error(
                132012,
                "(#132012) Parameter format does not match format in the created template",
            )));
        }
    }
    let (header, body_params) =
        if found.header_media().is_some() { (Vec::new(), given("body")) } else { (given("header"), given("body")) };
    let (want_header, want_body) = found.wanted();
    if header.len() != want_header || body_params.len() != want_body {
        return Err(Box::new(super::messaging::wa_error(
            132000,
            "(#132000) Number of parameters does not match the expected number of params",
        )));
    }
    if header.iter().chain(&body_params).any(|p| p.is_empty() || p.contains(['\n', '\t']) || p.contains("     ")) {
        return Err(Box::new(super::messaging::wa_error(
            132018,
            "(#132018) Param text cannot have new-line/tab characters or more than 4 consecutive spaces",
        )));
    }
    Ok((found.category.to_lowercase(), found.paced))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_counted_once_each() {
        assert_eq!(placeholders("Hi {{1}}, your order {{2}} ships {{ 3 }}; thanks {{1}}"), 3);
        assert_eq!(placeholders("No parameters"), 0);
        assert_eq!(placeholders("Broken {{1"), 0);
    }
}
