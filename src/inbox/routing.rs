//! Routing: a channel's rules that sort a conversation as it opens by what
//! the customer wrote ("refund" → the Billing team, label `refund`,
//! priority high), the automation a support inbox is asked for first (an
//! extension; the channel's `settings.routing`).
//!
//! Decisions:
//! - At most [`MOST_RULES`] rules, in order. A rule has up to
//!   [`MOST_KEYWORDS`] keywords (`contains`, each 1 to
//!   [`MOST_KEYWORD_CHARS`] characters), a `contact_attribute` (`vip`, or
//!   `plan:enterprise`: the customer's, `inbox::attributes`, checked
//!   against the definitions when saved), or both (both must hold), and
//!   at least one action: a reply (`reply`), a team
//!   (`team_id`), labels to add (`labels`), a `priority`. A wrong one is 422
//!   (`invalid_settings`, or `invalid_team`, `invalid_label`,
//!   `invalid_priority` for the actions), the rules replaced whole by a
//!   channel's PATCH (`[]` removes them).
//! - When a conversation opens (new, or reopened by the customer's message)
//!   the first rule that holds applies: a keyword in that message's text,
//!   compared as search compares (`public.sb_fold`: case and accents aside;
//!   anywhere in the text, so `reembolso` is found in "REEMBOLSOS"), and
//!   the customer's attribute as the contact has it then (a value as its
//!   text or the number or boolean it reads as). Later messages of the open conversation do not
//!   route again, except by the rules with `on: "every_message"` (a
//!   conversation labelled `refund` whenever the customer asks for one,
//!   however late): those look at each of the customer's messages, the
//!   opening one too, and a later message applies the first of them that
//!   holds. A message without text (a photo) meets only rules without
//!   keywords. A rule that holds but would change nothing (its labels
//!   there already, its team and priority set, no reply) is passed over
//!   silently. The contact's attributes are read only when a rule looked
//!   at asks for one.
//! - A rule's `reply` (1 to the auto-reply's characters; with
//!   `reply_choices` to tap under it, `inbox::choices`) is sent to the
//!   customer each time the rule applies (a question answered at once:
//!   "hours" → the opening hours), as the channel's own automatic
//!   replies are: from nobody, within the window the customer's message
//!   just opened, not while another app holds a Messenger thread
//!   (`handover`), once per customer message (its `client_id` names the
//!   message, so Meta's retry sends nothing again).
//! - The rule's team goes to a conversation with none (so before the
//!   channel's own `team_id`; a team deleted since is passed over), its
//!   labels are added (as far as a conversation's 20 allow), its priority
//!   is set on one with none (and the wait's due time follows). Auto-assign
//!   then picks as it would, among the team when there is one. The
//!   conversation's frames show the result; audited `conversation.routed`
//!   `{rule (from 1), keyword (the one found, null for a rule without),
//!   contact_attribute, team_id, labels, priority, replied}`.
//! - Deleting a team takes it off the rules that name it (a rule left with
//!   nothing to do goes), each channel announced (`channel.updated`).
//!   Deleting a contact attribute takes the rules that name it away whole,
//!   and taking a list's option away those that name that value: such a
//!   rule would hold for nobody (and be refused when the rules are saved
//!   again), and one with keywords too would hold for too many without
//!   its attribute. Such a deletion holds every channel's settings
//!   (`channels::change_all_settings`) before the team or definition, as a
//!   change of a channel's settings holds them before the teams and
//!   definitions its rules name: a change under way finishes first (its
//!   rules then taken away) or waits and is checked against what is left;
//!   neither can read the rules before the other commits and write them
//!   back after, and the two never deadlock. Webhook batches take none of
//!   it: a deletion clearing many contacts never holds up webhooks.

use diesel::prelude::*;
use diesel::sql_types::{Array, Integer, Text};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::events::EventLog;
use super::teams::TeamId;
use super::views::ConversationRow;
use crate::audit;
use crate::channels::AllSettingsHeld;
use crate::db::tenant_schema::{channels as ch, conversations as c};
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};

pub const MOST_RULES: usize = 20;
pub const MOST_KEYWORDS: usize = 20;
pub const MOST_KEYWORD_CHARS: usize = 100;

/// One rule: when the opening message holds one of `contains`, do what
/// the rest says.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(default)]
    pub contains: Vec<String>,
    /// `key` or `key:value`: the customer's attribute (left out of a rule
    /// without one, as rules were before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact_attribute: Option<String>,
    #[serde(default)]
    pub team_id: Option<TeamId>,
    #[serde(default)]
    pub labels: Vec<String>,
    #[serde(default)]
    pub priority: Option<String>,
    /// A text sent to the customer when the rule applies (a question
    /// answered at once); left out of a rule without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// Answers to tap under the reply (`inbox::choices`); left out of a
    /// rule without.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reply_choices: Vec<String>,
    /// When it is looked at: as the conversation opens (left out), or at
    /// every message of the customer's.
    #[serde(default, skip_serializing_if = "On::is_opening")]
    pub on: On,
}

/// Which of the customer's messages a rule looks at.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum On {
    /// The one that opens the conversation (new, or reopened).
    #[default]
    Opening,
    /// Every one, the opening one too.
    EveryMessage,
}

impl On {
    fn is_opening(&self) -> bool {
        *self == On::Opening
    }
}

impl Rule {
    fn does_something(&self) -> bool {
        self.team_id.is_some() || !self.labels.is_empty() || self.priority.is_some() || self.reply.is_some()
    }
}

fn invalid(why: String) -> AppError {
    AppError::invalid("invalid_settings", why)
}

/// `rules` as a channel keeps them: checked ([module docs](self)), each
/// keyword trimmed, labels as stored.
pub fn checked(tc: &mut TenantConn<'_>, rules: Vec<Rule>, platform: crate::channels::Platform) -> AppResult<Vec<Rule>> {
    if rules.len() > MOST_RULES {
        return Err(invalid(format!("routing holds at most {MOST_RULES} rules")));
    }
    let mut kept = Vec::with_capacity(rules.len());
    for (n, rule) in rules.into_iter().enumerate() {
        let n = n + 1;
        if rule.contains.len() > MOST_KEYWORDS {
            return Err(invalid(format!("routing rule {n}: contains holds at most {MOST_KEYWORDS} keywords")));
        }
        if rule.contains.is_empty() && rule.contact_attribute.is_none() {
            return Err(invalid(format!("routing rule {n}: give it keywords (contains), a contact_attribute or both")));
        }
        // Against the definitions as they are now; kept as `key` or
        // `key:value`, the value as its type writes it.
        let contact_attribute = match rule.contact_attribute.as_deref() {
            None => None,
            Some(raw) => Some(match super::attributes::wanted_held(tc, raw.trim()) {
                Ok(super::attributes::Wanted::Has(key)) => key,
                Ok(super::attributes::Wanted::Is(key, Value::String(v))) => format!("{key}:{v}"),
                Ok(super::attributes::Wanted::Is(key, v)) => format!("{key}:{v}"),
                Err(e) => return Err(invalid(format!("routing rule {n}: {}", e.message))),
            }),
        };
        let mut contains = Vec::with_capacity(rule.contains.len());
        for keyword in &rule.contains {
            let keyword = keyword.trim();
            let chars = keyword.chars().count();
            if chars == 0 || chars > MOST_KEYWORD_CHARS || keyword.chars().any(char::is_control) {
                return Err(invalid(format!(
                    "routing rule {n}: a keyword is 1 to {MOST_KEYWORD_CHARS} characters, without control characters"
                )));
            }
            contains.push(keyword.to_string());
        }
        if !rule.does_something() {
            return Err(invalid(format!("routing rule {n}: give it a team_id, labels, a priority or a reply")));
        }
        let reply = rule.reply.as_deref().map(str::trim).map(str::to_string);
        if reply.as_ref().is_some_and(|r| {
            r.is_empty() || r.chars().count() > crate::channels::MAX_AUTO_REPLY_CHARS || r.contains('\0')
        }) {
            return Err(invalid(format!(
                "routing rule {n}: a reply is 1 to {} characters",
                crate::channels::MAX_AUTO_REPLY_CHARS
            )));
        }
        let reply_choices = match (&reply, rule.reply_choices.is_empty()) {
            (_, true) => Vec::new(),
            (None, false) => return Err(invalid(format!("routing rule {n}: reply_choices go with a reply"))),
            (Some(_), false) => super::choices::checked(platform, &rule.reply_choices)
                .map_err(|e| invalid(format!("routing rule {n}: reply_{}", e.message)))?,
        };
        let team_id = rule.team_id.map(|t| super::teams::existing(tc, t)).transpose()?.map(TeamId);
        let labels = super::conversations::normalize_labels(&rule.labels)?;
        let priority = rule.priority.as_deref().map(super::conversations::checked_priority).transpose()?;
        kept.push(Rule { contains, contact_attribute, team_id, labels, priority, reply, reply_choices, on: rule.on });
    }
    Ok(kept)
}

#[derive(QueryableByName)]
struct Matched {
    #[diesel(sql_type = Integer)]
    rule: i32,
    #[diesel(sql_type = Text)]
    keyword: String,
}

/// What routing gave a conversation, as it now is, and the reply the rule
/// sends.
pub struct Routed {
    pub team_id: Option<i64>,
    pub labels: Vec<String>,
    pub priority: Option<String>,
    pub reply: Option<String>,
    /// What the reply offers to tap.
    pub reply_choices: Vec<String>,
}

/// Whether `attributes` (a contact's) hold `wanted` (`key` or `key:value`
/// as [`checked`] keeps it): the value as its text, or the number or
/// boolean it reads as.
fn holds(attributes: &Value, wanted: &str) -> bool {
    let Ok((key, value)) = super::attributes::parsed_query(wanted) else { return false };
    let Some(have) = attributes.get(&key).filter(|v| !v.is_null()) else { return false };
    match value {
        None => true,
        Some(value) => super::attributes::containing(&key, &value).iter().any(|c| c.get(&key) == Some(have)),
    }
}

/// Routes conversation `conv`, given a message of the customer's with
/// `text` (none for a photo) that is `opening` it or a later one, by
/// `rules` ([module docs](self)): what it is now, when a rule applied and
/// changed something.
pub fn route(
    tc: &mut TenantConn<'_>,
    conv: &ConversationRow,
    rules: &[Rule],
    text: Option<&str>,
    opening: bool,
) -> AppResult<Option<Routed>> {
    let looked_at = |rule: &Rule| opening || rule.on == On::EveryMessage;
    if !rules.iter().any(looked_at) {
        return Ok(None);
    }
    // The contact's attributes, only when a rule asks for one.
    let attributes: Value = match rules.iter().any(|r| looked_at(r) && r.contact_attribute.is_some()) {
        true => crate::db::tenant_schema::contacts::table
            .find(conv.contact_id)
            .select(crate::db::tenant_schema::contacts::attributes)
            .first(tc.pg())?,
        false => Value::Null,
    };
    let may = |rule: &Rule| looked_at(rule) && rule.contact_attribute.as_deref().is_none_or(|w| holds(&attributes, w));
    // The first rule that holds without keywords bounds the ones with.
    let plain = rules.iter().position(|r| r.contains.is_empty() && may(r));
    let with_keywords = rules
        .iter()
        .zip(0i32..)
        .take(plain.unwrap_or(rules.len()))
        .filter(|(rule, _)| !rule.contains.is_empty() && may(rule));
    let (keywords, owners): (Vec<&str>, Vec<i32>) =
        with_keywords.flat_map(|(rule, n)| rule.contains.iter().map(move |k| (k.as_str(), n))).unzip();
    // The first rule that matches, and its first keyword that does.
    let matched: Option<Matched> = match text.filter(|_| !keywords.is_empty()) {
        None => None,
        Some(text) => diesel::sql_query(
            "SELECT r.n AS rule, r.keyword FROM unnest($2::text[], $3::int4[]) WITH ORDINALITY AS r(keyword, n, at) \
              WHERE public.sb_fold($1) LIKE public.sb_fold_contains(r.keyword) ORDER BY r.at LIMIT 1",
        )
        .bind::<Text, _>(text)
        .bind::<Array<Text>, _>(&keywords)
        .bind::<Array<Integer>, _>(&owners)
        .get_result(tc.pg())
        .optional()?,
    };
    let found = match (matched, plain) {
        (Some(m), _) => Some((m.rule as usize, Some(m.keyword))),
        (None, Some(n)) => Some((n, None)),
        (None, None) => None,
    };
    let Some((n, keyword, rule)) = found.and_then(|(n, keyword)| rules.get(n).map(|rule| (n, keyword, rule))) else {
        return Ok(None);
    };
    let mut labels = conv.labels.clone();
    for label in &rule.labels {
        if !labels.contains(label) && labels.len() < super::conversations::MOST_LABELS {
            labels.push(label.clone());
        }
    }
    labels.sort();
    // A team deleted since is passed over (held, so a delete waits).
    let team = match (conv.team_id, rule.team_id) {
        (None, Some(t)) => match super::teams::existing(tc, t) {
            Ok(id) => Some(id),
            Err(e) if e.code == "invalid_team" => None,
            Err(e) => return Err(e),
        },
        (kept, _) => kept,
    };
    let priority = conv.priority.clone().or_else(|| rule.priority.clone());
    let mut before = conv.labels.clone();
    before.sort();
    let unchanged = (team, &labels, &priority) == (conv.team_id, &before, &conv.priority);
    // Nothing to do (a later message meeting a rule met before).
    if unchanged && rule.reply.is_none() {
        return Ok(None);
    }
    let (team_id, labels, priority): (Option<i64>, Vec<String>, Option<String>) = if unchanged {
        (team, labels, priority)
    } else {
        diesel::update(c::table.find(conv.id))
            .set((
                c::team_id.eq(team),
                c::labels.eq(&labels),
                c::priority.eq(&priority),
                c::updated_at.eq(diesel::dsl::now),
            ))
            .returning((c::team_id, c::labels, c::priority))
            .get_result(tc.pg())?
    };
    audit::record(
        tc,
        None,
        "conversation.routed",
        "conversation",
        Some(conv.id.to_string()),
        json!({"rule": n + 1, "keyword": keyword, "contact_attribute": rule.contact_attribute,
            "team_id": team_id.map(|t| t.to_string()), "labels": labels, "priority": priority,
            "replied": rule.reply.is_some()}),
    )?;
    Ok(Some(Routed { team_id, labels, priority, reply: rule.reply.clone(), reply_choices: rule.reply_choices.clone() }))
}

/// Takes the rules that name contact attribute `key` off every channel's
/// routing, each channel announced: the rules naming it at all when
/// `values` is `None` (the definition deleted), else those naming one of
/// `values` (a list's options taken away). Such a rule would hold for
/// nobody, and be refused when the channel's rules are saved again; a rule
/// with keywords as well would hold for too many with the attribute
/// dropped, so the rule goes whole.
pub fn forget_attribute(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    held: &AllSettingsHeld,
    key: &str,
    values: Option<&[&String]>,
) -> AppResult<()> {
    let names = |rule: &Rule| {
        rule.contact_attribute.as_deref().is_some_and(|wanted| match wanted.split_once(':') {
            Some((k, v)) => k == key && values.is_none_or(|vs| vs.iter().any(|x| x.as_str() == v)),
            None => wanted == key && values.is_none(),
        })
    };
    forget(tc, log, held, |rules| rules.retain(|r| !names(r)))
}

/// `change` made to every channel's rules that it changes, each channel
/// written and announced. Every channel's settings are held (`_held`,
/// taken before the team or definition): no change of them is under way,
/// and none starts until this transaction ends.
fn forget(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    _held: &AllSettingsHeld,
    change: impl Fn(&mut Vec<Rule>),
) -> AppResult<()> {
    let changed = |raw: serde_json::Value| {
        let mut settings = serde_json::from_value::<crate::channels::Settings>(raw).ok()?;
        let before = settings.routing.clone();
        change(&mut settings.routing);
        (settings.routing != before).then_some(settings)
    };
    let all: Vec<(i64, serde_json::Value)> = ch::table.select((ch::id, ch::settings)).load(tc.pg())?;
    for (id, raw) in all {
        let Some(settings) = changed(raw) else { continue };
        let json = serde_json::to_value(&settings).map_err(AppError::internal)?;
        diesel::update(ch::table.find(id))
            .set((ch::settings.eq(json), ch::updated_at.eq(diesel::dsl::now)))
            .execute(tc.pg())?;
        crate::channels::announce_settings(tc, log, crate::channels::ChannelId(id))?;
    }
    Ok(())
}

/// Takes deleted team `team` off every channel's rules (a rule left with
/// nothing to do goes), each channel announced.
pub fn forget_team(tc: &mut TenantConn<'_>, log: &mut EventLog, held: &AllSettingsHeld, team: i64) -> AppResult<()> {
    forget(tc, log, held, |rules| {
        for rule in rules.iter_mut() {
            if rule.team_id == Some(TeamId(team)) {
                rule.team_id = None;
            }
        }
        rules.retain(Rule::does_something);
    })
}
