//! Variables in the texts the server writes for the team (an extension):
//! a channel's automatic replies (`auto_reply`, `away_reply`, a routing
//! rule's `reply`), a macro's message and note, and a canned response as
//! `GET /api/canned-responses?conversation_id=` fills it in for one
//! conversation.
//!
//! Decisions:
//! - `{{contact.name}}`, `{{contact.first_name}}` (the name's first word),
//!   `{{agent.name}}`, `{{agent.first_name}}` (who runs the macro or asks
//!   for the canned response, by the name they gave, never their email,
//!   which goes to no customer; an automatic reply has no agent) and
//!   `{{channel.name}}`, spaces inside the braces allowed. A fallback
//!   follows a `|`: `{{contact.first_name | there}}` is "there" when the
//!   contact has no name yet (a Messenger or Instagram customer's name is
//!   looked up at Meta after their first message, so the automatic reply
//!   to that message has only the fallback).
//! - A known variable with no value and no fallback becomes nothing.
//!   Anything else in braces (a WhatsApp template's `{{1}}`, a typo) is
//!   left as written: a text that never meant a variable is not changed.
//! - Values are put in as they are; nothing in them is read as a variable
//!   again.

use diesel::prelude::*;

use crate::db::TenantConn;
use crate::error::AppResult;
use crate::ids::UserId;

/// What the variables stand for in one conversation.
#[derive(Debug, Default, Clone, Copy)]
pub struct Values<'a> {
    pub contact: Option<&'a str>,
    pub agent: Option<&'a str>,
    pub channel: Option<&'a str>,
}

/// The values of one conversation as a member writes in it, looked up.
#[derive(Debug, Default)]
pub struct Looked {
    contact: Option<String>,
    agent: Option<String>,
    channel: Option<String>,
}

impl Looked {
    pub fn values(&self) -> Values<'_> {
        Values { contact: self.contact.as_deref(), agent: self.agent.as_deref(), channel: self.channel.as_deref() }
    }
}

#[derive(QueryableByName)]
struct Names {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    contact: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    channel: String,
}

/// The values of conversation `conversation` as `agent` writes in it (the
/// caller has checked they may see it): one query, and one for the agent.
pub fn look_up(tc: &mut TenantConn<'_>, conversation: i64, agent: UserId) -> AppResult<Looked> {
    let names: Option<Names> = diesel::sql_query(
        "SELECT ct.name AS contact, ch.name AS channel FROM conversations c \
           JOIN contacts ct ON ct.id = c.contact_id JOIN channels ch ON ch.id = c.channel_id WHERE c.id = $1",
    )
    .bind::<diesel::sql_types::BigInt, _>(conversation)
    .get_result(tc.pg())
    .optional()?;
    // Their name only: colleagues may see an email in its place, a
    // customer must not.
    let agent = crate::auth::users::find(tc.pg(), agent)?.map(|u| u.name).filter(|n| !n.trim().is_empty());
    Ok(Looked { contact: names.as_ref().and_then(|n| n.contact.clone()), channel: names.map(|n| n.channel), agent })
}

/// Whether `text` may hold a variable (worth looking up the values).
pub fn any(text: &str) -> bool {
    text.contains("{{")
}

/// `text` with its variables filled in from `values` (see the module docs).
pub fn render(text: &str, values: &Values<'_>) -> String {
    replace_braces(text, |inside| fill(inside, values))
}

/// `text` with each `{{…}}` replaced by what `value` gives for its inside,
/// or left as written where it gives nothing (also a template's `{{n}}`,
/// `inbox::templates`). What is put in is not read again.
pub fn replace_braces(text: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            out.push_str(&rest[start..]);
            return out;
        };
        match value(&after[..end]) {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[start..start + 2 + end + 2]),
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// The value of one `{{…}}`'s inside, or `None` when it names no variable.
fn fill(inside: &str, values: &Values<'_>) -> Option<String> {
    let (name, fallback) = match inside.split_once('|') {
        Some((name, fallback)) => (name.trim(), Some(fallback.trim())),
        None => (inside.trim(), None),
    };
    let whole = |v: Option<&str>| v.map(str::trim).filter(|v| !v.is_empty()).map(str::to_string);
    let first = |v: Option<&str>| whole(v).and_then(|v| v.split_whitespace().next().map(str::to_string));
    let value = match name {
        "contact.name" => whole(values.contact),
        "contact.first_name" => first(values.contact),
        "agent.name" => whole(values.agent),
        "agent.first_name" => first(values.agent),
        "channel.name" => whole(values.channel),
        _ => return None,
    };
    Some(value.or_else(|| fallback.map(str::to_string)).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANA: Values<'static> =
        Values { contact: Some("  Ana Sousa Ñ "), agent: Some("Zoë Quintela"), channel: Some("Loja Azul") };

    #[test]
    fn variables_are_filled_in_with_their_first_words_and_fallbacks() {
        assert_eq!(
            render("Olá {{contact.first_name}}! Sou a {{ agent.first_name }}, da {{channel.name}}.", &ANA),
            "Olá Ana! Sou a Zoë, da Loja Azul."
        );
        assert_eq!(render("{{contact.name}} / {{agent.name}}", &ANA), "Ana Sousa Ñ / Zoë Quintela");
        let nobody = Values { contact: Some("  "), ..Values::default() };
        assert_eq!(
            render("Hi {{contact.first_name | there}}, {{agent.name|the team}} here", &nobody),
            "Hi there, the team here"
        );
        assert_eq!(render("Hi {{contact.name}}!", &nobody), "Hi !");
    }

    #[test]
    fn anything_else_in_braces_is_left_as_written() {
        for text in [
            "Your order {{1}} ships {{ 2 }}",
            "{{contact.email}} {{}} {{contact.name",
            "a }} b {{ c",
            "no variables at all 🚚",
            "{{{contact.name}}}",
        ] {
            assert_eq!(render(text, &ANA), text);
        }
        // A value is not read again.
        let tricky = Values { contact: Some("{{agent.name}}"), ..ANA };
        assert_eq!(render("{{contact.name}}", &tricky), "{{agent.name}}");
        assert!(any("{{x}}") && !any("{x}"));
    }
}
