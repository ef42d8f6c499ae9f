//! Variables in the texts the server writes for the team (an extension):
//! a channel's automatic replies (`auto_reply`, `away_reply`, a routing
//! rule's `reply`), a macro's message and note, and a canned response as
//! `GET /api/canned-responses?conversation_id=` fills it in for one
//! conversation, and a WhatsApp template's parameters (an agent's, as they
//! send it in a conversation; a broadcast's, for each customer).
//!
//! Decisions:
//! - `{{contact.name}}`, `{{contact.first_name}}` (the name's first word),
//!   `{{contact.email}}`, `{{contact.phone}}` (what the team saved of the
//!   customer) and `{{contact.attributes.<key>}}` (one of their attributes,
//!   `attributes`: a text or list value as written, a number or true/false
//!   as JSON writes it, a date `YYYY-MM-DD`),
//!   `{{agent.name}}`, `{{agent.first_name}}` (who runs the macro or asks
//!   for the canned response, by the name they gave, never their email,
//!   which goes to no customer; an automatic reply has no agent) and
//!   `{{channel.name}}`, spaces inside the braces allowed. A fallback
//!   follows a `|`: `{{contact.first_name | there}}` is "there" when the
//!   contact has no name.
//! - A Messenger or Instagram customer's name is known only once their
//!   profile is looked up at Meta, after their first message. An automatic
//!   reply to that message that names them is stored with the fallbacks
//!   and its text with the variables still in (`messages.unrendered`); the
//!   sender looks the profile up first, fills the text in again and, if it
//!   changed, stores and announces it (`message.updated`, and
//!   `conversation.updated` while it is the conversation's last message,
//!   for a list's preview) before it sends it. A lookup that fails leaves
//!   the fallbacks; the greeting still goes, one Graph call later than it
//!   would have.
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
    /// What the team saved of the customer, when a text asks for it
    /// ([`needs_details`]).
    pub details: Option<&'a super::contacts::ContactDetails>,
}

/// The values of one conversation as a member writes in it, looked up.
#[derive(Debug, Default)]
pub struct Looked {
    contact: Option<String>,
    agent: Option<String>,
    channel: Option<String>,
    details: Option<super::contacts::ContactDetails>,
}

impl Looked {
    pub fn values(&self) -> Values<'_> {
        Values {
            contact: self.contact.as_deref(),
            agent: self.agent.as_deref(),
            channel: self.channel.as_deref(),
            details: self.details.as_ref(),
        }
    }
}

/// The values of conversation `conversation` as `agent` writes in it (the
/// caller has checked they may see it; `None`: the server writes): one
/// query, and one for the agent.
pub fn look_up(tc: &mut TenantConn<'_>, conversation: i64, agent: Option<UserId>) -> AppResult<Looked> {
    use super::contacts::ContactDetails;
    use crate::db::tenant_schema::{channels as ch, contacts as ct, conversations as c};
    let found: Option<(Option<String>, String, ContactDetails)> = c::table
        .inner_join(ct::table)
        .inner_join(ch::table)
        .filter(c::id.eq(conversation))
        .select((ct::name, ch::name, ContactDetails::as_select()))
        .first(tc.pg())
        .optional()?;
    // Their name only: colleagues may see an email in its place, a
    // customer must not.
    let agent = match agent {
        Some(agent) => crate::auth::users::find(tc.pg(), agent)?.map(|u| u.name).filter(|n| !n.trim().is_empty()),
        None => None,
    };
    let Some((contact, channel, details)) = found else { return Ok(Looked { agent, ..Looked::default() }) };
    Ok(Looked { contact, channel: Some(channel), agent, details: Some(details) })
}

/// Keeps `raw`, the text of automatic reply `message` with its variables
/// still in, for the sender to fill in again ([`fill_in_late`]).
pub fn fill_later(tc: &mut TenantConn<'_>, message: i64, raw: &str) -> AppResult<()> {
    use crate::db::tenant_schema::messages as m;
    diesel::update(m::table.find(message)).set(m::unrendered.eq(raw)).execute(tc.pg())?;
    Ok(())
}

/// The sender's last look at `message` before it goes (see the module
/// docs): a text kept by [`fill_later`] is filled in again with what is
/// known of the customer now; a text that changed is stored and announced
/// (`message.updated`). Returns the message as it is to be sent; `None`
/// when it is gone. Filled in once: a retry finds nothing to do.
pub fn fill_in_late(
    tc: &mut TenantConn<'_>,
    log: &mut super::events::EventLog,
    message: i64,
) -> AppResult<Option<super::views::MessageRow>> {
    use super::views::MessageRow;
    use crate::db::tenant_schema::messages as m;
    let found: Option<(MessageRow, Option<String>)> = m::table
        .find(message)
        .select((MessageRow::as_select(), m::unrendered))
        .for_update()
        .first(tc.pg())
        .optional()?;
    let Some((row, raw)) = found else { return Ok(None) };
    let Some(raw) = raw else { return Ok(Some(row)) };
    let looked = look_up(tc, row.conversation_id, None)?;
    let text = render(&raw, &looked.values());
    // A name found empty leaves what was queued (never an empty message).
    let changed = !text.trim().is_empty() && row.text.as_deref() != Some(text.as_str());
    let row: MessageRow = diesel::update(m::table.find(message))
        .set((
            m::unrendered.eq(None::<String>),
            m::text.eq(if changed { Some(text) } else { row.text.clone() }),
            m::updated_at.eq(diesel::dsl::now),
        ))
        .returning(MessageRow::as_returning())
        .get_result(tc.pg())?;
    if changed {
        use crate::db::tenant_schema::conversations as c;
        log.append(tc, "message.updated", Some(row.channel_id), Some(row.conversation_id), row.update_view())?;
        // A list shows the last message's text: the greeting usually is it.
        let conv: Option<super::views::ConversationRow> = c::table
            .find(row.conversation_id)
            .filter(c::last_message_id.eq(row.id))
            .select(super::views::ConversationRow::as_select())
            .first(tc.pg())
            .optional()?;
        if let Some(conv) = conv {
            super::conversations::announce(tc, log, &[conv])?;
        }
    }
    Ok(Some(row))
}

/// Whether `text` asks for what the team saved of the customer (their
/// address, number or attributes), which the webhook path reads only then.
pub fn needs_details(text: &str) -> bool {
    any(text) && ["contact.email", "contact.phone", "contact.attributes."].iter().any(|v| text.contains(v))
}

/// Whether `text` asks for the customer's name, which Meta tells of a
/// Messenger or Instagram customer only when asked, after their first
/// message: such an automatic reply is filled in again just before it is
/// sent (`inbox::sender`). A cheap look, as [`needs_details`].
pub fn names_contact(text: &str) -> bool {
    any(text) && ["contact.name", "contact.first_name"].iter().any(|v| text.contains(v))
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
    let details = values.details;
    let value = match name {
        "contact.name" => whole(values.contact),
        "contact.first_name" => first(values.contact),
        "contact.email" => whole(details.and_then(|d| d.email.as_deref())),
        "contact.phone" => whole(details.and_then(|d| d.phone.as_deref())),
        "agent.name" => whole(values.agent),
        "agent.first_name" => first(values.agent),
        "channel.name" => whole(values.channel),
        other => {
            let key = other.strip_prefix("contact.attributes.")?;
            if !super::attributes::is_key(key) {
                return None;
            }
            match details.and_then(|d| d.attributes.get(key)) {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => whole(Some(s)),
                Some(v) => Some(v.to_string()),
            }
        }
    };
    Some(value.or_else(|| fallback.map(str::to_string)).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANA: Values<'static> = Values {
        contact: Some("  Ana Sousa Ñ "),
        agent: Some("Zoë Quintela"),
        channel: Some("Loja Azul"),
        details: None,
    };

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
    fn what_the_team_saved_is_filled_in_too() {
        let details = super::super::contacts::ContactDetails {
            email: Some("ana@example.com".into()),
            phone: None,
            notes: Some("never in a text".into()),
            marketing_stopped_at: None,
            attributes: serde_json::json!({"plan": "pro", "seats": 12, "vip": true, "renewal": "2027-01-31"}),
        };
        let ana = Values { details: Some(&details), ..ANA };
        assert_eq!(
            render("{{contact.email}} · {{contact.phone | sem número}} · {{contact.attributes.plan}}", &ana),
            "ana@example.com · sem número · pro"
        );
        assert_eq!(
            render("{{contact.attributes.seats}} {{contact.attributes.vip}} {{ contact.attributes.renewal }}", &ana),
            "12 true 2027-01-31"
        );
        assert_eq!(render("[{{contact.attributes.order_ref | –}}] [{{contact.email}}]", &ANA), "[–] []");
        assert!(needs_details("Hi {{contact.attributes.plan}}") && needs_details("{{ contact.email }}"));
        // A cheap look: a false "yes" only reads the details in vain.
        assert!(!needs_details("write to contact.email") && !needs_details("{{contact.first_name}}"));
    }

    #[test]
    fn anything_else_in_braces_is_left_as_written() {
        for text in [
            "Your order {{1}} ships {{ 2 }}",
            "{{contact.mood}} {{}} {{contact.name",
            "{{contact.attributes.Not-A-Key}} {{contact.attributes.}}",
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
        assert!(names_contact("Hi {{ contact.first_name | there }}") && names_contact("{{contact.name}}"));
        assert!(!names_contact("Hi contact.name") && !names_contact("{{channel.name}} {{contact.email}}"));
    }
}
