//! Writing WhatsApp templates (an extension): admins submit a new template
//! to Meta for review from here, and delete one, as WhatsApp Manager lets
//! them, so a team need not leave the inbox to have a template approved.
//!
//! Decisions:
//! - `POST /api/channels/{id}/templates` `{name, language, category,
//!   header?, body, footer?, buttons?, examples?}` on a WhatsApp number:
//!   the template goes to the number's business account (Meta keeps
//!   templates per account, so every number of it has it). What this
//!   server fills in and sends (`inbox::templates`) is what may be
//!   written: a text header with at most `{{1}}`, a body with positional
//!   parameters `{{1}}`…`{{n}}` (each number used, none at the very start
//!   or end, as Meta requires), a footer without parameters, and up to ten
//!   buttons that need nothing at send time (`QUICK_REPLY`, a fixed `URL`,
//!   a `PHONE_NUMBER`). Each parameter needs an example
//!   (`examples.header`, `examples.body[]`), which Meta's reviewers read.
//!   `MARKETING` or `UTILITY`; `AUTHENTICATION` templates have a shape Meta
//!   writes itself (`template_not_supported`). Checked here first
//!   (422 `invalid_template`, naming the field) so a mistake costs no
//!   review.
//! - Answered 201 with the template as the list shows it (`PENDING`,
//!   `sendable: false`); Meta's review comes by its
//!   `message_template_status_update` webhook, which `inbox::templates`
//!   already announces (`template.updated`). A name already used in that
//!   language is 409 `template_exists`, unless it is this same template
//!   (a retry, also one whose answer was lost and that Meta then refused
//!   as existing): 200 with it. Meta refusing it otherwise is 422
//!   `meta_refused` with Meta's words.
//! - `DELETE /api/channels/{id}/templates/{name}`: every language of it,
//!   as Meta deletes by name (404 when the account has none of that
//!   name). Meta does not let a deleted approved template's name be used
//!   again for 30 days; its messages already queued fail as Meta says.
//! - Both drop every instance's kept list of the account's templates (at
//!   the commit, by the bus), and are audited on the channel:
//!   `channel.template_submitted`, `channel.template_deleted`.

use serde::Deserialize;
use serde_json::{json, Value};

use super::templates::{self, Template};
use crate::app::AppState;
use crate::auth::Role;
use crate::channels::{ChannelId, ChannelRow};
use crate::db::TenantScope;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;
use crate::meta::graph::GraphError;
use crate::secret::Secret;

/// Meta's longest body, and header or footer.
const BODY_CHARS: usize = 1024;
const LINE_CHARS: usize = 60;
/// A button's longest label.
const BUTTON_CHARS: usize = 25;
const MOST_BUTTONS: usize = 10;
/// Meta's subcode for a name already used in that language.
const NAME_TAKEN: i64 = 2388024;
/// Meta's subcode (of code 100) for deleting a template the account does
/// not have.
const NOT_FOUND: i64 = 2593002;

/// `POST /api/channels/{id}/templates`, read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTemplate {
    pub name: String,
    pub language: String,
    pub category: String,
    #[serde(default)]
    pub header: Option<String>,
    pub body: String,
    #[serde(default)]
    pub footer: Option<String>,
    #[serde(default)]
    pub buttons: Vec<Button>,
    #[serde(default)]
    pub examples: Examples,
}

/// A button that needs nothing at send time.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE", deny_unknown_fields)]
pub enum Button {
    QuickReply { text: String },
    Url { text: String, url: String },
    PhoneNumber { text: String, phone_number: String },
}

/// What the parameters could hold, for Meta's reviewers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Examples {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub body: Vec<String>,
}

fn invalid(message: String) -> AppError {
    AppError::invalid("invalid_template", message)
}

/// A text of at most `most` characters, not blank.
fn line(field: &str, text: &str, most: usize) -> AppResult<String> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > most {
        return Err(invalid(format!("{field} must be 1 to {most} characters")));
    }
    Ok(text.to_string())
}

/// The positional parameters of `text`, checked as Meta checks them: how
/// many (`{{1}}`…`{{n}}`, each number used).
fn parameters(field: &str, text: &str) -> AppResult<usize> {
    let mut used = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else { break };
        match after[..end].trim().parse::<usize>() {
            Ok(n) if n >= 1 => {
                used.insert(n);
            }
            _ => {
                return Err(invalid(format!(
                    "{field}: parameters are written {{{{1}}}}, {{{{2}}}}…; named ones are not supported"
                )))
            }
        }
        rest = &after[end + 2..];
    }
    let n = used.len();
    if used.iter().copied().ne(1..=n) {
        return Err(invalid(format!("{field}: parameters must be numbered {{{{1}}}} to {{{{{n}}}}}, each used")));
    }
    Ok(n)
}

/// The examples for `n` parameters of `field`, each given.
fn examples(field: &str, given: &[String], n: usize) -> AppResult<Vec<String>> {
    if given.len() != n || given.iter().any(|e| e.trim().is_empty()) {
        return Err(invalid(format!("{field} needs an example for each of its {n} parameters")));
    }
    Ok(given.iter().map(|e| e.trim().to_string()).collect())
}

/// The template as Meta takes it (`{name, language, category,
/// components}`), or why it cannot be submitted ([module docs](self)).
pub fn checked(new: &NewTemplate) -> AppResult<Value> {
    let name = new.name.trim();
    if name.is_empty()
        || name.len() > 512
        || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(invalid("name may hold only lowercase letters, digits and underscores (at most 512)".into()));
    }
    let language = new.language.trim();
    let (lang, region) = language.split_once('_').unwrap_or((language, ""));
    // A region is letters (`pt_BR`) or digits (`es_419`).
    let region_ok = region.is_empty()
        || (2..=3).contains(&region.len()) && region.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
    if !(2..=3).contains(&lang.len()) || !lang.bytes().all(|b| b.is_ascii_lowercase()) || !region_ok {
        return Err(invalid("language is a code as Meta writes it: en, pt_BR, en_US…".into()));
    }
    let category = new.category.trim().to_ascii_uppercase();
    match category.as_str() {
        "MARKETING" | "UTILITY" => {}
        "AUTHENTICATION" => {
            return Err(AppError::invalid(
                "template_not_supported",
                "authentication templates have a shape Meta writes; make them in WhatsApp Manager",
            ))
        }
        _ => return Err(invalid("category must be MARKETING or UTILITY".into())),
    }
    let mut components = Vec::new();
    if let Some(header) = &new.header {
        let header = line("header", header, LINE_CHARS)?;
        let mut part = json!({"type": "HEADER", "format": "TEXT", "text": header});
        match parameters("header", &header)? {
            0 => {}
            1 => {
                let given: Vec<String> = new.examples.header.iter().cloned().collect();
                part["example"] = json!({"header_text": examples("header", &given, 1)?});
            }
            _ => return Err(invalid("header: at most one parameter, {{1}}".into())),
        }
        components.push(part);
    }
    let body = line("body", &new.body, BODY_CHARS)?;
    let n = parameters("body", &body)?;
    let mut part = json!({"type": "BODY", "text": body});
    if n > 0 {
        if body.starts_with("{{") || body.ends_with("}}") {
            return Err(invalid("body: a parameter may not be at its very start or end".into()));
        }
        part["example"] = json!({"body_text": [examples("body", &new.examples.body, n)?]});
    } else if !new.examples.body.is_empty() {
        return Err(invalid("examples.body: the body has no parameters".into()));
    }
    components.push(part);
    if let Some(footer) = &new.footer {
        let footer = line("footer", footer, LINE_CHARS)?;
        if footer.contains("{{") {
            return Err(invalid("footer: no parameters".into()));
        }
        components.push(json!({"type": "FOOTER", "text": footer}));
    }
    if !new.buttons.is_empty() {
        components.push(json!({"type": "BUTTONS", "buttons": buttons(&new.buttons)?}));
    }
    Ok(json!({"name": name, "language": language, "category": category, "components": components}))
}

fn buttons(given: &[Button]) -> AppResult<Vec<Value>> {
    if given.len() > MOST_BUTTONS {
        return Err(invalid(format!("at most {MOST_BUTTONS} buttons")));
    }
    let count = |f: fn(&Button) -> bool| given.iter().filter(|b| f(b)).count();
    if count(|b| matches!(b, Button::Url { .. })) > 2 || count(|b| matches!(b, Button::PhoneNumber { .. })) > 1 {
        return Err(invalid("at most two URL buttons and one PHONE_NUMBER button".into()));
    }
    given
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let label = |text: &str| line(&format!("buttons[{i}].text"), text, BUTTON_CHARS);
            Ok(match b {
                Button::QuickReply { text } => json!({"type": "QUICK_REPLY", "text": label(text)?}),
                Button::Url { text, url } => {
                    let url = url.trim();
                    let fine = (url.starts_with("https://") || url.starts_with("http://"))
                        && url.len() <= 2000
                        && !url.contains("{{")
                        && !url.chars().any(char::is_whitespace);
                    if !fine {
                        return Err(invalid(format!("buttons[{i}].url must be an http(s) link without parameters")));
                    }
                    json!({"type": "URL", "text": label(text)?, "url": url})
                }
                Button::PhoneNumber { text, phone_number } => {
                    let number = super::outreach::Number::parse(phone_number)
                        .map_err(|e| invalid(format!("buttons[{i}].phone_number: {}", e.message)))?;
                    json!({"type": "PHONE_NUMBER", "text": label(text)?, "phone_number": format!("+{}", number.as_str())})
                }
            })
        })
        .collect()
}

/// Whether `listed` is the template `submitted` (a retry of it).
fn same(listed: &Template, submitted: &Value) -> bool {
    let view = templates::parse(&json!({"name": submitted["name"], "language": submitted["language"],
        "status": listed.status, "category": submitted["category"], "components": submitted["components"]}));
    view.is_some_and(|v| (&v.header, &v.body, &v.footer) == (&listed.header, &listed.body, &listed.footer))
}

/// The WhatsApp channel `id` an admin writes templates for: the row, its
/// business account and token.
async fn channel(
    app: &AppState,
    scope: TenantScope,
    user: UserId,
    role: Role,
    id: ChannelId,
) -> AppResult<(ChannelRow, String, Secret<String>)> {
    let keys = app.keys.clone();
    app.db.tenant(scope, move |tc| templates::channel_for_templates(tc, &keys, user, role, id)).await
}

/// Meta refused what was asked: its words, or what a failed call says of
/// the channel (a dead token marks it `reauth_required`).
async fn refused(app: &AppState, scope: TenantScope, row: &ChannelRow, e: GraphError) -> AppError {
    match e {
        GraphError::Other { message, .. } | GraphError::Permission { message, .. } => {
            AppError::invalid("meta_refused", format!("Meta refused it: {message}"))
        }
        e => crate::channels::connect::note_graph_error(app, scope.tenant, ChannelId(row.id), e).await.into(),
    }
}

/// Records what was done to the account's templates on the channel and
/// drops every instance's kept list of them at the commit.
async fn noted(
    app: &AppState,
    scope: TenantScope,
    user: UserId,
    row: &ChannelRow,
    waba: &str,
    action: &'static str,
    details: Value,
) -> AppResult<()> {
    app.templates.forget(waba);
    let (id, waba) = (row.id, waba.to_string());
    app.db
        .tenant(scope, move |tc| {
            crate::audit::record(tc, Some(user), action, "channel", Some(id.to_string()), details)?;
            crate::realtime::bus::notify_live(tc.pg(), &crate::realtime::LiveMsg::Templates { waba })?;
            Ok::<_, AppError>(())
        })
        .await
}

/// `POST /api/channels/{id}/templates` ([module docs](self)): the
/// template, and whether this call submitted it (not a retry).
pub async fn create(
    app: &AppState,
    scope: TenantScope,
    user: UserId,
    role: Role,
    id: ChannelId,
    new: NewTemplate,
) -> AppResult<(Template, bool)> {
    let submitted = checked(&new)?;
    let (name, language) = (submitted["name"].as_str().unwrap_or(""), submitted["language"].as_str().unwrap_or(""));
    let (row, waba, token) = channel(app, scope, user, role, id).await?;
    let existing = |list: Vec<Template>| list.into_iter().find(|t| t.name == name && t.language == language);
    let taken = || {
        AppError::conflict(
            "template_exists",
            format!("the business account has a template {name} in {language} already; pick another name"),
        )
    };
    if let Some(t) = existing(templates::read(app, scope.tenant, &row, &waba, &token).await?) {
        return if same(&t, &submitted) { Ok((t, false)) } else { Err(taken()) };
    }
    let answer = match app.graph.create_whatsapp_template(&waba, &token, &submitted).await {
        Ok(answer) => answer,
        // Taken meanwhile, perhaps by this very template (an answer lost on the way).
        Err(GraphError::Other { subcode: Some(NAME_TAKEN), .. }) => {
            app.templates.forget(&waba);
            let listed = existing(templates::read(app, scope.tenant, &row, &waba, &token).await?);
            return match listed {
                Some(t) if same(&t, &submitted) => Ok((t, false)),
                _ => Err(taken()),
            };
        }
        Err(e) => return Err(refused(app, scope, &row, e).await),
    };
    let status = answer.get("status").and_then(Value::as_str).unwrap_or("PENDING");
    let category =
        answer.get("category").and_then(Value::as_str).unwrap_or(submitted["category"].as_str().unwrap_or(""));
    let details = json!({"name": name, "language": language, "category": category, "status": status,
        "template_id": answer.get("id"), "business_account": waba});
    noted(app, scope, user, &row, &waba, "channel.template_submitted", details).await?;
    let view = json!({"name": name, "language": language, "status": status, "category": category,
        "components": submitted["components"]});
    let template = templates::parse(&view)
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("a submitted template does not read back")))?;
    Ok((template, true))
}

/// `DELETE /api/channels/{id}/templates/{name}`: every language of it.
pub async fn delete(
    app: &AppState,
    scope: TenantScope,
    user: UserId,
    role: Role,
    id: ChannelId,
    name: &str,
) -> AppResult<()> {
    let (row, waba, token) = channel(app, scope, user, role, id).await?;
    let languages: Vec<String> = templates::read(app, scope.tenant, &row, &waba, &token)
        .await?
        .into_iter()
        .filter(|t| t.name == name)
        .map(|t| t.language)
        .collect();
    if languages.is_empty() {
        return Err(AppError::not_found("template"));
    }
    match app.graph.delete_whatsapp_template(&waba, &token, name).await {
        Ok(()) => {}
        // Deleted meanwhile (by a delete sent at the same time, or in
        // WhatsApp Manager): as a moment later, and the kept list is stale.
        Err(GraphError::Other { code: 100, subcode: Some(NOT_FOUND), .. }) => {
            app.templates.forget(&waba);
            return Err(AppError::not_found("template"));
        }
        Err(e) => return Err(refused(app, scope, &row, e).await),
    }
    let details = json!({"name": name, "languages": languages, "business_account": waba});
    noted(app, scope, user, &row, &waba, "channel.template_deleted", details).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(body: &str) -> NewTemplate {
        NewTemplate {
            name: "order_ready".into(),
            language: "pt_BR".into(),
            category: "utility".into(),
            header: None,
            body: body.into(),
            footer: None,
            buttons: vec![],
            examples: Examples::default(),
        }
    }

    #[test]
    fn a_template_is_written_as_meta_takes_it() {
        let mut t = new("Olá {{1}}, o pedido {{2}} está pronto.");
        t.header = Some("Pedido {{1}}".into());
        t.footer = Some("Loja Azul".into());
        t.examples = Examples { header: Some("#77".into()), body: vec!["Ana".into(), "#77".into()] };
        t.buttons = vec![
            Button::QuickReply { text: "Obrigado".into() },
            Button::Url { text: "Ver".into(), url: "https://loja.example/p".into() },
            Button::PhoneNumber { text: "Ligar".into(), phone_number: "+55 11 91234-5678".into() },
        ];
        let v = checked(&t).expect("fine");
        for language in ["en", "fil", "es_419", "zh_HK"] {
            let mut other = new("Olá.");
            other.language = language.into();
            assert!(checked(&other).is_ok(), "{language}");
        }
        assert_eq!(v["category"], "UTILITY");
        assert_eq!(v["components"][0]["example"]["header_text"], json!(["#77"]));
        assert_eq!(v["components"][1]["example"]["body_text"], json!([["Ana", "#77"]]));
        assert_eq!(v["components"][2], json!({"type": "FOOTER", "text": "Loja Azul"}));
        assert_eq!(v["components"][3]["buttons"][2]["phone_number"], "+5511912345678");
        assert!(checked(&new("Sem parâmetros.")).expect("fine")["components"][0].get("example").is_none());
    }

    #[test]
    fn a_template_meta_would_refuse_is_refused_first() {
        let code = |t: &NewTemplate| checked(t).expect_err("refused").code;
        let with = |f: &dyn Fn(&mut NewTemplate)| {
            let mut t = new("Olá {{1}}, tudo bem?");
            t.examples.body = vec!["Ana".into()];
            f(&mut t);
            t
        };
        assert!(checked(&with(&|_| {})).is_ok());
        for bad in [
            with(&|t| t.name = "Order Ready".into()),
            with(&|t| t.language = "portuguese".into()),
            with(&|t| t.category = "GREETING".into()),
            with(&|t| t.examples.body.clear()),
            with(&|t| t.body = "Olá {{2}}, tudo bem?".into()),
            with(&|t| t.body = "Olá {{name}}, tudo bem?".into()),
            with(&|t| t.body = "{{1}}, tudo bem?".into()),
            with(&|t| t.body = "x".repeat(BODY_CHARS + 1)),
            with(&|t| t.body = "  ".into()),
            with(&|t| t.header = Some("{{1}} e {{2}}".into())),
            with(&|t| t.footer = Some("Até {{1}}".into())),
            with(&|t| t.buttons = vec![Button::Url { text: "Ver".into(), url: "ftp://x".into() }]),
            with(&|t| t.buttons = vec![Button::QuickReply { text: "x".repeat(26) }]),
            with(&|t| t.buttons = (0..11).map(|i| Button::QuickReply { text: format!("b{i}") }).collect()),
        ] {
            assert_eq!(code(&bad), "invalid_template", "{bad:?}");
        }
        assert_eq!(code(&with(&|t| t.category = "AUTHENTICATION".into())), "template_not_supported");
    }
}
