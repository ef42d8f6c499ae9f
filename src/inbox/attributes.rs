//! Contact attributes: what a team keeps about its customers beyond Meta's
//! profile and the contact's address, number and note — a plan, an order
//! number, a renewal date, a VIP flag — defined once per tenant and filled
//! in on each contact (an extension; `/api/contact-attributes`, and
//! `attributes` on `PATCH /api/contacts/{id}`).
//!
//! Decisions:
//! - A definition has a `key` (`[a-z][a-z0-9_]{0,39}`, what clients and
//!   integrators use, fixed once made), a `name` to show (1 to 100
//!   characters) and a `type`: `text` (up to [`MOST_TEXT_CHARS`]
//!   characters), `number`, `boolean`, `date` (`YYYY-MM-DD`) or `list` (one
//!   of its `options`, 1 to [`MOST_OPTIONS`] of 1 to 100 characters, no
//!   two alike). At most [`MOST_ATTRIBUTES`] in a tenant. Admins keep
//!   them; every member reads them. The same create again is answered
//!   with the one made (200); another with its key is 409
//!   `attribute_exists`.
//! - A contact's values are an object by key; a change names only the keys
//!   it changes (`null`, or an empty text, removes one, whatever its
//!   type: what a form sends for a field it cleared), each checked
//!   against its definition before anything is written (422
//!   `invalid_attributes`, naming the key). A list's value names its
//!   option in any case (`PRO`, `pro`: a spreadsheet's or a person's
//!   spelling) and is kept as the option is written; when two options
//!   differ in case alone only the exact one is taken. The contacts'
//!   `attribute=`, the reports' and the routing rules' values are read
//!   the same way; the inbox's `contact_attribute=`, read without the
//!   definitions, matches the value as kept. Shown on every contact, `{}`
//!   when none; announced and audited with the contact's other changes
//!   (the audit names the keys, not the values, which may be personal).
//! - A definition's name and a list's options may change; its key and type
//!   may not (a value of another type would be lost or wrong): make a new
//!   one. A list's option taken away, or a definition deleted, goes from
//!   every contact that has it, in the same transaction, so no contact
//!   shows a value no definition explains; those contacts are not each
//!   announced (a client shows what the definitions now allow). The
//!   channels' routing rules that name it go too (`routing`, each channel
//!   announced).
//! - Every member's socket (and integrators' endpoints) hears of the
//!   definitions, logged and replayed like any event, as of teams:
//!   `contact_attribute.updated` with the definition when one is made or
//!   changed, `contact_attribute.deleted` `{key}` (after the channels
//!   whose rules named it). The contacts whose values went with an option
//!   or a definition are not each announced: a client drops what the
//!   definitions no longer allow.

use chrono::{DateTime, NaiveDate, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Array, Text};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::events::EventLog;
use crate::audit;
use crate::db::tenant_schema::contact_attributes as ca;
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

pub const MOST_ATTRIBUTES: i64 = 50;
pub const MOST_OPTIONS: usize = 100;
pub const MOST_TEXT_CHARS: usize = 500;
const MOST_NAME_CHARS: usize = 100;
const MOST_KEY_CHARS: usize = 40;
/// The event of a definition made or changed.
const UPDATED: &str = "contact_attribute.updated";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Text,
    Number,
    Boolean,
    Date,
    List,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Number => "number",
            Kind::Boolean => "boolean",
            Kind::Date => "date",
            Kind::List => "list",
        }
    }

    fn parse(raw: &str) -> Option<Kind> {
        serde_json::from_value(Value::String(raw.to_string())).ok()
    }
}

/// A definition, as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Definition {
    pub key: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub options: Vec<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = ca)]
struct Row {
    key: String,
    name: String,
    kind: String,
    options: Vec<String>,
    created_at: DateTime<Utc>,
}

impl Row {
    fn definition(self) -> Definition {
        // The table's CHECK keeps the kind one of ours.
        let kind = Kind::parse(&self.kind).unwrap_or(Kind::Text);
        Definition { key: self.key, name: self.name, kind, options: self.options, created_at: self.created_at }
    }
}

/// `POST /api/contact-attributes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDefinition {
    pub key: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: Kind,
    #[serde(default)]
    pub options: Vec<String>,
}

/// `PATCH /api/contact-attributes/{key}`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefinitionChange {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub options: Option<Vec<String>>,
}

fn invalid(code: &'static str, why: impl Into<String>) -> AppError {
    AppError::invalid(code, why.into())
}

fn not_found() -> AppError {
    AppError::not_found("attribute")
}

/// Whether `raw` is written as a key is (`[a-z][a-z0-9_]*`, at most
/// [`MOST_KEY_CHARS`]).
pub fn is_key(raw: &str) -> bool {
    let mut chars = raw.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && raw.len() <= MOST_KEY_CHARS
}

fn checked_key(raw: &str) -> AppResult<String> {
    if !is_key(raw) {
        return Err(invalid(
            "invalid_key",
            format!("a key is a lower-case letter, then up to {} of a-z, 0-9 and _", MOST_KEY_CHARS - 1),
        ));
    }
    Ok(raw.to_string())
}

fn checked_name(raw: &str) -> AppResult<String> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > MOST_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(invalid(
            "invalid_name",
            format!("a name is 1 to {MOST_NAME_CHARS} characters, without control characters"),
        ));
    }
    Ok(name.to_string())
}

/// A list's options: trimmed, each 1 to 100 characters, no two alike, in
/// the order given; only a list has them.
fn checked_options(kind: Kind, raw: Vec<String>) -> AppResult<Vec<String>> {
    if kind != Kind::List {
        if raw.is_empty() {
            return Ok(raw);
        }
        return Err(invalid("invalid_options", "only a list has options"));
    }
    if raw.is_empty() || raw.len() > MOST_OPTIONS {
        return Err(invalid("invalid_options", format!("a list has 1 to {MOST_OPTIONS} options")));
    }
    let mut options: Vec<String> = Vec::with_capacity(raw.len());
    for option in raw {
        let option = option.trim().to_string();
        if option.is_empty() || option.chars().count() > MOST_NAME_CHARS || option.chars().any(char::is_control) {
            return Err(invalid(
                "invalid_options",
                format!("an option is 1 to {MOST_NAME_CHARS} characters, without control characters"),
            ));
        }
        if options.contains(&option) {
            return Err(invalid("invalid_options", format!("the option {option:?} is given twice")));
        }
        options.push(option);
    }
    Ok(options)
}

/// `GET /api/contact-attributes`: every definition, oldest first.
pub fn list(tc: &mut TenantConn<'_>) -> AppResult<Vec<Definition>> {
    let rows: Vec<Row> = ca::table.order((ca::created_at, ca::key)).select(Row::as_select()).load(tc.pg())?;
    Ok(rows.into_iter().map(Row::definition).collect())
}

/// The definition of `key`, locked for a change when `to_change`. A key
/// no definition can have (not of a key's shape, a NUL that PostgreSQL
/// would refuse) is not found, without asking.
fn find(tc: &mut TenantConn<'_>, key: &str, to_change: bool) -> AppResult<Option<Definition>> {
    if checked_key(key).is_err() {
        return Ok(None);
    }
    let query = ca::table.find(key).select(Row::as_select());
    let row: Option<Row> =
        if to_change { query.for_update().first(tc.pg()) } else { query.first(tc.pg()) }.optional()?;
    Ok(row.map(Row::definition))
}

/// Makes a definition ([module docs](self)): it and whether it is new.
pub fn create(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    actor: UserId,
    new: NewDefinition,
) -> AppResult<(Definition, bool)> {
    let key = checked_key(&new.key)?;
    let name = checked_name(&new.name)?;
    let options = checked_options(new.kind, new.options)?;
    // One create at a time per tenant: two would both count 49.
    diesel::sql_query("LOCK TABLE contact_attributes IN SHARE ROW EXCLUSIVE MODE").execute(tc.pg())?;
    if let Some(same) = find(tc, &key, true)? {
        if (&same.name, same.kind, &same.options) == (&name, new.kind, &options) {
            return Ok((same, false));
        }
        return Err(AppError::conflict("attribute_exists", format!("another attribute has the key `{key}`")));
    }
    let count: i64 = ca::table.count().get_result(tc.pg())?;
    if count >= MOST_ATTRIBUTES {
        return Err(AppError::conflict(
            "too_many_attributes",
            format!("a tenant keeps at most {MOST_ATTRIBUTES} contact attributes"),
        ));
    }
    let row: Row = diesel::insert_into(ca::table)
        .values((ca::key.eq(&key), ca::name.eq(&name), ca::kind.eq(new.kind.as_str()), ca::options.eq(&options)))
        .returning(Row::as_returning())
        .get_result(tc.pg())?;
    audit::record(
        tc,
        Some(actor),
        "contact_attribute.created",
        "contact_attribute",
        Some(key),
        json!({"name": name, "type": new.kind, "options": options}),
    )?;
    let made = row.definition();
    log.append(tc, UPDATED, None, None, &made)?;
    Ok((made, true))
}

/// Renames a definition or changes a list's options ([module docs](self)).
pub fn update(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    actor: UserId,
    key: &str,
    change: DefinitionChange,
) -> AppResult<Definition> {
    // Before the definition: a list's option taken away takes the rules
    // naming it, and a channel's change holds its settings first.
    let held = change.options.is_some().then(|| crate::channels::change_all_settings(tc)).transpose()?;
    let old = find(tc, key, true)?.ok_or_else(not_found)?;
    let name = change.name.as_deref().map(checked_name).transpose()?.unwrap_or_else(|| old.name.clone());
    let options = match change.options {
        Some(given) => checked_options(old.kind, given)?,
        None => old.options.clone(),
    };
    if (&name, &options) == (&old.name, &old.options) {
        return Ok(old);
    }
    let row: Row = diesel::update(ca::table.find(key))
        .set((ca::name.eq(&name), ca::options.eq(&options)))
        .returning(Row::as_returning())
        .get_result(tc.pg())?;
    let dropped: Vec<&String> = old.options.iter().filter(|o| !options.contains(o)).collect();
    let cleared = if dropped.is_empty() {
        0
    } else {
        diesel::sql_query(
            "UPDATE contacts SET attributes = attributes - $1, updated_at = now() WHERE attributes ->> $1 = ANY($2)",
        )
        .bind::<Text, _>(key)
        .bind::<Array<Text>, _>(&dropped)
        .execute(tc.pg())?
    };
    if let Some(held) = held.as_ref().filter(|_| !dropped.is_empty()) {
        super::routing::forget_attribute(tc, log, held, key, Some(&dropped))?;
    }
    audit::record(
        tc,
        Some(actor),
        "contact_attribute.updated",
        "contact_attribute",
        Some(key.to_string()),
        json!({"name": name, "options": options, "contacts_cleared": cleared}),
    )?;
    let changed = row.definition();
    log.append(tc, UPDATED, None, None, &changed)?;
    Ok(changed)
}

/// Deletes a definition and its values on every contact.
pub fn delete(tc: &mut TenantConn<'_>, log: &mut EventLog, actor: UserId, key: &str) -> AppResult<()> {
    let held = crate::channels::change_all_settings(tc)?;
    let old = find(tc, key, true)?.ok_or_else(not_found)?;
    diesel::delete(ca::table.find(key)).execute(tc.pg())?;
    super::routing::forget_attribute(tc, log, &held, key, None)?;
    let cleared =
        diesel::sql_query("UPDATE contacts SET attributes = attributes - $1, updated_at = now() WHERE attributes ? $1")
            .bind::<Text, _>(key)
            .execute(tc.pg())?;
    audit::record(
        tc,
        Some(actor),
        "contact_attribute.deleted",
        "contact_attribute",
        Some(key.to_string()),
        json!({"name": old.name, "contacts_cleared": cleared}),
    )?;
    log.append(tc, "contact_attribute.deleted", None, None, json!({"key": key}))?;
    Ok(())
}

/// A contact's values after `changes`: each key checked against its
/// definition ([module docs](self)), `null` or an empty text removing it.
/// `current` is the contact's object as stored.
pub fn apply(tc: &mut TenantConn<'_>, current: &Value, changes: &Map<String, Value>) -> AppResult<Value> {
    let mut values = current.as_object().cloned().unwrap_or_default();
    if changes.is_empty() {
        return Ok(Value::Object(values));
    }
    if let Some(key) = changes.keys().find(|k| checked_key(k).is_err()) {
        return Err(invalid("invalid_attributes", format!("no contact attribute has the key {key:?}")));
    }
    let keys: Vec<&String> = changes.keys().collect();
    // Shared locks: a definition deleted or narrowed meanwhile waits for
    // this change and then clears what it wrote, or, first, is not found.
    let rows: Vec<Row> = ca::table.filter(ca::key.eq_any(&keys)).select(Row::as_select()).for_share().load(tc.pg())?;
    let definitions: std::collections::HashMap<String, Definition> =
        rows.into_iter().map(|r| (r.key.clone(), r.definition())).collect();
    for (key, given) in changes {
        let Some(definition) = definitions.get(key) else {
            return Err(invalid("invalid_attributes", format!("no contact attribute has the key `{key}`")));
        };
        match checked_value(definition, given)? {
            Some(v) => values.insert(key.clone(), v),
            None => values.remove(key),
        };
    }
    Ok(Value::Object(values))
}

/// `GET /api/contacts?attribute=`: contacts that have an attribute, or a
/// value of it.
#[derive(Debug, Clone, PartialEq)]
pub enum Wanted {
    /// `key`: any value.
    Has(String),
    /// `key:value`: that value, as the definition reads it (`seats:12` is
    /// the number 12, `vip:true` the boolean).
    Is(String, Value),
}

impl Wanted {
    /// The object a contact's attributes must contain, for `Is`.
    pub fn contained(&self) -> Option<Value> {
        match self {
            Wanted::Has(_) => None,
            Wanted::Is(key, value) => Some(json!({key.as_str(): value})),
        }
    }

    pub fn key(&self) -> &str {
        match self {
            Wanted::Has(key) | Wanted::Is(key, _) => key,
        }
    }
}

/// `key` or `key:value`: the key, and the value when given (it may hold
/// colons itself).
fn split(raw: &str) -> (&str, Option<&str>) {
    match raw.split_once(':') {
        Some((key, value)) => (key, Some(value)),
        None => (raw, None),
    }
}

/// Reads `key` or `key:value` against the definitions (422
/// `invalid_attribute`: no such key, or a value the definition would not
/// keep).
pub fn wanted(tc: &mut TenantConn<'_>, raw: &str) -> AppResult<Wanted> {
    wanted_as(tc, raw, false)
}

/// [`wanted`], the definition held until the transaction ends (a routing
/// rule being saved: its deletion waits, then takes the rule away).
pub fn wanted_held(tc: &mut TenantConn<'_>, raw: &str) -> AppResult<Wanted> {
    wanted_as(tc, raw, true)
}

fn wanted_as(tc: &mut TenantConn<'_>, raw: &str, hold: bool) -> AppResult<Wanted> {
    let (key, value) = split(raw);
    let bad = |why: String| invalid("invalid_attribute", why);
    let Some(definition) = find(tc, key, hold)? else {
        return Err(bad(format!("no contact attribute has the key {key:?}; give attribute=key or key:value")));
    };
    let Some(value) = value else { return Ok(Wanted::Has(definition.key)) };
    match typed(&definition, value) {
        Some(v) => Ok(Wanted::Is(definition.key, v)),
        None => Err(bad(format!("`{value}` is no value of `{key}`"))),
    }
}

/// `text` (a query's value, a spreadsheet's cell) as a value `definition`
/// keeps: a number, `true` or `false` (in any case: spreadsheets write
/// `TRUE`), a date, one of a list's options, a text; `None` when it is none
/// of its type, or empty.
pub fn typed(definition: &Definition, text: &str) -> Option<Value> {
    let given = match definition.kind {
        Kind::Number => Value::Number(serde_json::from_str::<serde_json::Number>(text).ok()?),
        Kind::Boolean => Value::Bool(text.to_ascii_lowercase().parse::<bool>().ok()?),
        _ => Value::String(text.to_string()),
    };
    checked_value(definition, &given).ok().flatten()
}

/// `key` or `key:value` as the conversations' `contact_attribute=` gives
/// it, read without the definitions (a saved view outlives them: a key
/// none has finds nothing).
pub fn parsed_query(raw: &str) -> AppResult<(String, Option<String>)> {
    let (key, value) = split(raw);
    let value = value.map(str::to_string);
    let wrong = || invalid("invalid_query", format!("contact_attribute is key or key:value, not {raw:?}"));
    let key = checked_key(key).map_err(|_| wrong())?;
    // No value holds a control character (PostgreSQL's JSON refuses a NUL).
    if value.as_deref().is_some_and(|v| v.chars().any(|c| c.is_control() && c != '\n')) {
        return Err(wrong());
    }
    Ok((key, value))
}

/// What a contact's attributes contain when its `key` is `value` as any
/// type could hold it: the text, and the number or boolean it reads as
/// (each a containment the GIN index answers).
pub fn containing(key: &str, value: &str) -> Vec<Value> {
    let typed = serde_json::from_str::<serde_json::Number>(value)
        .map(Value::Number)
        .ok()
        .or_else(|| value.parse::<bool>().ok().map(Value::Bool));
    std::iter::once(Value::String(value.to_string())).chain(typed).map(|v| json!({key: v})).collect()
}

/// [`containing`], and the value as `key`'s definition, if there is one,
/// reads it: the inbox's `contact_attribute=plan:PRO` finds the contacts
/// of option `Pro`, as a contact's PATCH would have stored it.
pub fn containing_as_defined(tc: &mut TenantConn<'_>, key: &str, value: &str) -> AppResult<Vec<Value>> {
    let mut all = containing(key, value);
    if let Some(v) = find(tc, key, false)?.and_then(|definition| typed(&definition, value.trim())) {
        let defined = json!({key: v});
        if !all.contains(&defined) {
            all.push(defined);
        }
    }
    Ok(all)
}

/// The option of `options` that `given` names: the one written so, else
/// the only one that differs from it in case alone (`PRO` is `pro`, as a
/// spreadsheet or a person may write it); `None` when none, or when two
/// differ from it in case alone (options `Pro` and `pro` both kept).
fn option<'a>(options: &'a [String], given: &str) -> Option<&'a str> {
    if let Some(exact) = options.iter().find(|o| *o == given) {
        return Some(exact);
    }
    let folded = given.to_lowercase();
    let mut alike = options.iter().filter(|o| o.to_lowercase() == folded);
    match (alike.next(), alike.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

/// `given` as `definition` keeps it; `None` removes the value.
fn checked_value(definition: &Definition, given: &Value) -> AppResult<Option<Value>> {
    let key = &definition.key;
    let wrong = |what: &str| invalid("invalid_attributes", format!("`{key}` is {what}, or null to remove it"));
    Ok(match (definition.kind, given) {
        (_, Value::Null) => None,
        // What a form sends for a field it cleared, whatever its type.
        (_, Value::String(s)) if s.trim().is_empty() => None,
        (Kind::Text, Value::String(s)) => {
            let s = s.trim();
            if s.chars().count() > MOST_TEXT_CHARS || s.chars().any(|c| c.is_control() && c != '\n') {
                return Err(wrong(&format!("a text of at most {MOST_TEXT_CHARS} characters")));
            }
            (!s.is_empty()).then(|| Value::String(s.to_string()))
        }
        (Kind::Text, _) => return Err(wrong("a text")),
        (Kind::Number, Value::Number(n)) => Some(Value::Number(n.clone())),
        (Kind::Number, _) => return Err(wrong("a number")),
        (Kind::Boolean, Value::Bool(b)) => Some(Value::Bool(*b)),
        (Kind::Boolean, _) => return Err(wrong("true or false")),
        (Kind::Date, Value::String(s)) if s.len() == 10 && NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() => {
            Some(Value::String(s.clone()))
        }
        (Kind::Date, _) => return Err(wrong("a date, YYYY-MM-DD")),
        (Kind::List, given) => match given.as_str().and_then(|s| option(&definition.options, s.trim())) {
            Some(option) => Some(Value::String(option.to_string())),
            None => {
                let options = serde_json::to_string(&definition.options).unwrap_or_default();
                return Err(wrong(&format!("one of {options}")));
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn definition(kind: Kind, options: &[&str]) -> Definition {
        Definition {
            key: "k".into(),
            name: "K".into(),
            kind,
            options: options.iter().map(|o| o.to_string()).collect(),
            created_at: Utc::now(),
        }
    }

    #[test]
    fn a_list_value_names_its_option_in_any_case_but_never_two() {
        let plan = definition(Kind::List, &["free", "Pro", "Enterprise", "Ação"]);
        let kept = |given: &str| checked_value(&plan, &json!(given)).ok().flatten();
        assert_eq!(kept("Pro"), Some(json!("Pro")));
        assert_eq!(kept(" PRO "), Some(json!("Pro")));
        assert_eq!(kept("enterprise"), Some(json!("Enterprise")));
        assert_eq!(kept("AÇÃO"), Some(json!("Ação")), "beyond ASCII too");
        assert_eq!(kept("gold"), None);
        assert_eq!(typed(&plan, "FREE"), Some(json!("free")));
        let twins = definition(Kind::List, &["Pro", "pro"]);
        assert_eq!(checked_value(&twins, &json!("pro")).ok().flatten(), Some(json!("pro")), "as written first");
        assert_eq!(checked_value(&twins, &json!("Pro")).ok().flatten(), Some(json!("Pro")));
        assert_eq!(
            checked_value(&twins, &json!("PRO")).map_err(|e| e.code.to_string()),
            Err("invalid_attributes".into())
        );
    }

    #[test]
    fn an_empty_text_removes_a_value_of_any_type() {
        for kind in [Kind::Text, Kind::Number, Kind::Boolean, Kind::Date, Kind::List] {
            let options: &[&str] = if kind == Kind::List { &["a"] } else { &[] };
            let d = definition(kind, options);
            for given in [json!(""), json!("  "), Value::Null] {
                assert_eq!(checked_value(&d, &given).ok(), Some(None), "{kind:?} {given}");
            }
            assert!(checked_value(&d, &json!([])).is_err(), "{kind:?}");
        }
    }
}
