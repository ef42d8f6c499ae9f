//! Replies with choices (an extension): an agent asks a question and
//! offers the answers as buttons the customer taps ("Sim" / "Não", a
//! time slot, a shop), as each platform shows them.
//!
//! Decisions:
//! - `POST /api/conversations/{id}/messages` `{text, choices: [...],
//!   choices_button?}`: 1 to 10 choices on WhatsApp, 1 to 13 on Messenger
//!   and Instagram, each 1 to [`TITLE_CHARS`] characters and told apart
//!   regardless of case (Meta refuses two alike). Inside the reply window
//!   only, as any reply; not with a template, a file or a private note.
//! - WhatsApp: up to three as reply buttons (`interactive` `button`), more
//!   as a list (`interactive` `list`) behind a button labelled
//!   `choices_button` (1 to 20 characters; "Options" when not given); the
//!   question is the message's body, at most 1,024 characters there.
//!   Messenger and Instagram: quick replies under the text.
//! - What the customer taps comes back as their message: its text the
//!   choice, its `quick_reply_payload` the choice's id (`choice-1`…), as
//!   Meta reports a tap (`interactive` `button_reply`/`list_reply` on
//!   WhatsApp, `quick_reply` on Messenger and Instagram).
//! - Stored as the question with one attachment `{type: "choices", url:
//!   null, options, button}`, which tells the sender what to send and
//!   clients what was offered. A retry under the same `client_id` with
//!   other choices is the same request as long as its text is: the text
//!   is what the customer reads first.
//! - A channel's automatic replies (`auto_reply`, `away_reply`) and its
//!   routing rules' replies (`reply_choices`) may carry choices too
//!   (`settings.auto_reply.choices`): a greeting's menu
//!   ("Vendas", "Suporte"). Routing rules that look at every message
//!   (`inbox::routing`, `on: every_message`, a keyword the choice holds)
//!   then sort the conversation by the tap: a menu that routes, with no
//!   bot of its own. A WhatsApp greeting with more than three shows them
//!   as a list behind "Options".

use serde_json::{json, Value};

use crate::channels::Platform;
use crate::error::{AppError, AppResult};

/// A choice's longest title (Meta's, for buttons and quick replies).
pub const TITLE_CHARS: usize = 20;
/// A WhatsApp question's longest text (an interactive message's body).
pub const WHATSAPP_TEXT_CHARS: usize = 1024;
/// How many reply buttons WhatsApp shows; more go in a list.
const WHATSAPP_BUTTONS: usize = 3;
/// The list's button when the agent names none.
const LIST_BUTTON: &str = "Options";

/// The most choices a platform shows.
fn most(platform: Platform) -> usize {
    match platform {
        Platform::Whatsapp => 10,
        _ => 13,
    }
}

/// The attachment that offers `options` on `platform` (and names a
/// WhatsApp list's `button`), or why it cannot ([module docs](self)).
pub fn attachment(platform: Platform, options: &[String], button: Option<&str>) -> AppResult<Value> {
    let titles = checked(platform, options)?;
    let button = match button.map(str::trim) {
        None => None,
        Some(b) if !b.is_empty() && b.chars().count() <= TITLE_CHARS && !b.chars().any(char::is_control) => {
            Some(b.to_string())
        }
        Some(_) => {
            return Err(AppError::invalid(
                "invalid_choices",
                format!("choices_button must be 1 to {TITLE_CHARS} characters on one line"),
            ))
        }
    };
    Ok(json!({"type": "choices", "url": null, "options": titles, "button": button}))
}

/// `options` as `platform` shows them (trimmed), or why it cannot
/// (`invalid_choices`, naming the first wrong one).
pub fn checked(platform: Platform, options: &[String]) -> AppResult<Vec<String>> {
    let most = most(platform);
    if options.is_empty() || options.len() > most {
        return Err(AppError::invalid("invalid_choices", format!("choices must be 1 to {most} on this platform")));
    }
    let mut seen = std::collections::HashSet::new();
    let mut titles = Vec::with_capacity(options.len());
    for (i, option) in options.iter().enumerate() {
        let title = option.trim();
        if title.is_empty() || title.chars().count() > TITLE_CHARS || title.chars().any(char::is_control) {
            return Err(AppError::invalid(
                "invalid_choices",
                format!("choices[{i}] must be 1 to {TITLE_CHARS} characters on one line"),
            ));
        }
        if !seen.insert(title.to_lowercase()) {
            return Err(AppError::invalid("invalid_choices", format!("choices[{i}] is offered already")));
        }
        titles.push(title.to_string());
    }
    Ok(titles)
}

/// The choices a stored reply offers, and its list's button.
pub fn stored(attachments: &Value) -> Option<(Vec<String>, Option<String>)> {
    let a = attachments.as_array()?.iter().find(|a| a.get("type").and_then(Value::as_str) == Some("choices"))?;
    let options: Vec<String> =
        a.get("options")?.as_array()?.iter().filter_map(Value::as_str).map(str::to_string).collect();
    let button = a.get("button").and_then(Value::as_str).map(str::to_string);
    (!options.is_empty()).then_some((options, button))
}

/// The id Meta reports back when choice `index` (from 0) is tapped.
pub fn id(index: usize) -> String {
    format!("choice-{}", index + 1)
}

/// The WhatsApp `interactive` object asking `text` with `options`: reply
/// buttons, or a list behind `button`.
pub fn whatsapp_interactive(text: &str, options: &[String], button: Option<&str>) -> Value {
    if options.len() <= WHATSAPP_BUTTONS {
        let buttons: Vec<Value> = options
            .iter()
            .enumerate()
            .map(|(i, title)| json!({"type": "reply", "reply": {"id": id(i), "title": title}}))
            .collect();
        return json!({"type": "button", "body": {"text": text}, "action": {"buttons": buttons}});
    }
    let rows: Vec<Value> = options.iter().enumerate().map(|(i, title)| json!({"id": id(i), "title": title})).collect();
    json!({"type": "list", "body": {"text": text},
        "action": {"button": button.unwrap_or(LIST_BUTTON), "sections": [{"rows": rows}]}})
}

/// Messenger's and Instagram's quick replies for `options`.
pub fn quick_replies(options: &[String]) -> Value {
    options
        .iter()
        .enumerate()
        .map(|(i, title)| json!({"content_type": "text", "title": title, "payload": id(i)}))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn choices_are_checked_as_meta_checks_them() {
        let a = attachment(Platform::Whatsapp, &strings(&[" Sim ", "Não"]), None).expect("fine");
        assert_eq!(a["options"], json!(["Sim", "Não"]));
        assert_eq!(stored(&json!([a])), Some((strings(&["Sim", "Não"]), None)));
        let eleven: Vec<String> = (0..11).map(|i| format!("op {i}")).collect();
        assert!(attachment(Platform::Facebook, &eleven, None).is_ok(), "13 on Messenger");
        for (options, button) in [
            (vec![], None),
            (eleven.clone(), None),
            (strings(&["x".repeat(21).as_str()]), None),
            (strings(&["Sim", "sim"]), None),
            (strings(&["a\nb"]), None),
            (strings(&["  "]), None),
            (strings(&["Sim"]), Some("")),
        ] {
            let e = attachment(Platform::Whatsapp, &options, button).expect_err("refused");
            assert_eq!(e.code, "invalid_choices", "{options:?}");
        }
    }

    #[test]
    fn whatsapp_shows_three_as_buttons_and_more_as_a_list() {
        let three = whatsapp_interactive("Hoje?", &strings(&["Sim", "Não", "Talvez"]), None);
        assert_eq!(three["type"], "button");
        assert_eq!(
            three["action"]["buttons"][2],
            json!({"type": "reply", "reply": {"id": "choice-3", "title": "Talvez"}})
        );
        let four = whatsapp_interactive("Que hora?", &strings(&["9h", "10h", "11h", "12h"]), Some("Horas"));
        assert_eq!((&four["type"], &four["action"]["button"]), (&json!("list"), &json!("Horas")));
        assert_eq!(four["action"]["sections"][0]["rows"][3], json!({"id": "choice-4", "title": "12h"}));
        assert_eq!(
            quick_replies(&strings(&["Sim"])),
            json!([{"content_type": "text", "title": "Sim", "payload": "choice-1"}])
        );
    }
}
