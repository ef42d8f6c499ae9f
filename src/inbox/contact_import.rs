//! `POST /api/contacts/import`: contacts from a spreadsheet, the way back
//! of `contact_export` (an extension): a list of WhatsApp customers to
//! write to, or a column of plans filled in from a CRM.
//!
//! Decisions:
//! - Admins only, as the export. The CSV is the body, or a form's `file`
//!   part (the HTTP handler reads either; a page's file input sends a
//!   form). It is UTF-8 (a byte order mark allowed, CRLF, LF or CR lines,
//!   RFC 4180 quoting), its first line
//!   the column names (in any case); at most [`MOST_BYTES`] (413) and [`MOST_ROWS`] rows
//!   (422 `too_many_rows`: split it).
//! - Columns: `id`, `channel_id`, `external_id` find the contact; `name`,
//!   `email`, `phone`, `notes` and `attributes.<key>` (a definition's key,
//!   `attributes`) are what a row sets. The export's other columns
//!   (`blocked`, `blocked_at`, `marketing_stopped_at`, `created_at`,
//!   `conversation_id`, `linked`) are read-only and passed over, so an export edited
//!   in a spreadsheet goes back as it is. Any other column, a column twice,
//!   or an attribute no definition has is 422 `invalid_csv`, before any row
//!   is read: a misspelt column would otherwise be lost without a word.
//! - A row's contact: by `id` (ours, as the export gives it); else by
//!   `external_id` on the row's channel (its `channel_id` cell, else the
//!   query's `channel_id`); else, on WhatsApp only, by the number in
//!   `phone`. On WhatsApp the number (`external_id` or `phone`, read as
//!   writing first reads it) finds the customer whether they wrote or an
//!   agent wrote first to them, and a number nobody has becomes a contact
//!   without a conversation (as `outreach` makes one; their first message,
//!   or an agent writing first, finds it). On Messenger and Instagram a
//!   contact is never made: their ids are Meta's, from the customer's own
//!   message.
//! - A cell the export kept from running as a formula (a leading `'`
//!   before `=`, `+`, `-`, `@`) is read without its `'`.
//! - An empty cell changes nothing (a list from elsewhere with no address
//!   for some customers does not wipe the addresses the team saved);
//!   clearing a value is `PATCH /api/contacts/{id}`'s. A `name` that is the
//!   name shown already changes nothing either, so an export's Meta names
//!   do not become the team's. Every value is checked as `PATCH
//!   /api/contacts/{id}` checks it; attribute cells are read as their type
//!   reads them (a number, `true`/`false` in any case, `YYYY-MM-DD`, one of
//!   a list's options).
//! - All or nothing: one transaction. When any row is wrong nothing is
//!   written, and the 422 `invalid_import` names the lines (as a
//!   spreadsheet numbers them, the column names being line 1), the first
//!   [`MOST_ERRORS_SHOWN`] of them in its message; its `details` list the
//!   first [`MOST_ERRORS_LISTED`] as `{line, code, message}` (the code the
//!   `PATCH` gives, e.g. `invalid_email`, or `invalid_import` for the
//!   import's own: no such contact, no channel…) with `wrong_rows`, the
//!   count, for a client to mark the cells. Rows are applied in order: a
//!   contact two rows name takes the later one's values.
//! - Safe to repeat: the same file again finds the same contacts and
//!   changes nothing (each row is applied as `contacts::update` applies a
//!   change: what is as it was is left, announced and audited only when it
//!   changes). Each contact made or changed is announced
//!   (`contact.updated`) and the change audited as a `PATCH` is, and the
//!   import once (`contacts.imported`, with the counts).
//! - `?dry_run=true` does all of it and then undoes it: the same answer
//!   (or the same 422), nothing kept, announced or audited.
//! - Rows are applied one by one, as a `PATCH` would apply them (about
//!   2 ms a new contact, 0.5 ms one left as it was, `bench search`), each
//!   contact held until the import commits: a webhook from one of those
//!   customers waits for it. [`MOST_ROWS`] keeps that wait to a few
//!   seconds at worst.

use std::collections::HashMap;

use diesel::connection::SimpleConnection;
use serde::Serialize;
use serde_json::{Map, Value};

use super::attributes::{self, Definition};
use super::contacts::{self, ContactChanges};
use super::events::EventLog;
use super::outreach::Number;
use super::ContactId;
use crate::auth::Role;
use crate::channels::{self, ChannelId, Platform};
use crate::db::TenantConn;
use crate::error::{AppError, AppResult, ErrorKind};
use crate::ids::UserId;

/// The largest file taken.
pub const MOST_BYTES: usize = 2 * 1024 * 1024;
/// The most rows one import takes.
pub const MOST_ROWS: usize = 2_000;
/// The most wrong lines one error's message names.
pub const MOST_ERRORS_SHOWN: usize = 10;
/// The most wrong rows one error lists in its `details`.
pub const MOST_ERRORS_LISTED: usize = 100;

/// The export's columns an import reads past.
const READ_ONLY: [&str; 6] =
    ["blocked", "blocked_at", "marketing_stopped_at", "created_at", "conversation_id", "linked"];

/// What a column holds.
#[derive(Clone, Debug, PartialEq)]
enum Column {
    Id,
    Channel,
    External,
    Name,
    Email,
    Phone,
    Notes,
    Attribute(Definition),
    ReadOnly,
}

impl Column {
    fn named(name: &str, definitions: &[Definition]) -> AppResult<Column> {
        Ok(match name {
            "id" => Column::Id,
            "channel_id" => Column::Channel,
            "external_id" => Column::External,
            "name" => Column::Name,
            "email" => Column::Email,
            "phone" => Column::Phone,
            "notes" => Column::Notes,
            n if READ_ONLY.contains(&n) => Column::ReadOnly,
            n => match n.strip_prefix("attributes.") {
                Some(key) => match definitions.iter().find(|d| d.key == key) {
                    Some(d) => Column::Attribute(d.clone()),
                    None => return Err(bad_csv(format!("no contact attribute has the key `{key}` (column `{n}`)"))),
                },
                None => {
                    return Err(bad_csv(format!(
                        "unknown column `{n}`: columns are id, channel_id, external_id, name, email, phone, notes \
                         and attributes.<key>"
                    )))
                }
            },
        })
    }
}

fn bad_csv(why: String) -> AppError {
    AppError::invalid("invalid_csv", why)
}

/// What an import did (or, dry, would do).
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct Imported {
    /// Rows read.
    pub rows: usize,
    /// Contacts made (WhatsApp numbers nobody had).
    pub created: usize,
    /// Contacts found and changed.
    pub updated: usize,
    /// Contacts found and left as they were.
    pub unchanged: usize,
    pub dry_run: bool,
}

/// One row, read.
#[derive(Default)]
struct Row {
    line: u64,
    id: Option<String>,
    channel: Option<String>,
    external: Option<String>,
    name: Option<String>,
    email: Option<String>,
    phone: Option<String>,
    notes: Option<String>,
    attributes: Map<String, Value>,
}

/// The rows of `body` ([module docs](self)), checked as far as they can be
/// without the contacts: columns, sizes, attribute cells' types.
fn read(body: &[u8], definitions: &[Definition]) -> AppResult<Vec<Result<Row, (u64, AppError)>>> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let text = std::str::from_utf8(body).map_err(|_| bad_csv("the file is not UTF-8 text".into()))?;
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(text.as_bytes());
    let header = reader.headers().map_err(|e| bad_csv(format!("the first line: {e}")))?.clone();
    let mut columns = Vec::with_capacity(header.len());
    // Named in any case (`Phone`, `Email`): keys are lower case anyway.
    let names: Vec<String> = header.iter().map(|name| name.trim().to_lowercase()).collect();
    for (n, name) in names.iter().enumerate() {
        if names[..n].contains(name) {
            return Err(bad_csv(format!("the column `{name}` is there twice")));
        }
        columns.push(Column::named(name, definitions)?);
    }
    if !columns.iter().any(|c| matches!(c, Column::Id | Column::External | Column::Phone)) {
        return Err(bad_csv("a row's contact is found by id, external_id or (WhatsApp) phone: give one".into()));
    }
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| bad_csv(e.to_string()))?;
        if rows.len() == MOST_ROWS {
            return Err(AppError::invalid(
                "too_many_rows",
                format!("an import takes at most {MOST_ROWS} rows: split the file"),
            ));
        }
        let line = record.position().map_or(0, |p| line_at(text, p.byte()));
        // A blank line (a spreadsheet's last) is no row.
        if record.iter().all(|cell| cell.trim().is_empty()) {
            continue;
        }
        rows.push(row(line, &columns, &record));
    }
    Ok(rows)
}

/// The line (from 1) of the record the csv crate places at `byte`: its
/// own count is short after CRLFs, and its place may be before the line
/// ends and empty lines it passed over (a record starts with neither).
fn line_at(text: &str, byte: u64) -> u64 {
    let from = usize::try_from(byte).unwrap_or(usize::MAX).min(text.len());
    let bytes = text.as_bytes();
    let ends = bytes[from..].iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
    // A line ends at LF, CRLF, or a lone CR (as old Mac files have it).
    let breaks = bytes[..from + ends]
        .iter()
        .enumerate()
        .filter(|(i, b)| **b == b'\n' || (**b == b'\r' && bytes.get(i + 1) != Some(&b'\n')))
        .count();
    1 + breaks as u64
}

fn row(line: u64, columns: &[Column], record: &csv::StringRecord) -> Result<Row, (u64, AppError)> {
    let mut row = Row { line, ..Row::default() };
    for (column, cell) in columns.iter().zip(record.iter()) {
        // Empty changes nothing ([module docs](self)).
        if cell.trim().is_empty() {
            continue;
        }
        // PostgreSQL's text takes no NUL; no field of ours holds one.
        if cell.contains('\0') {
            return Err((line, AppError::invalid("invalid_text", "a cell holds a NUL character")));
        }
        let cell = unneutralized(cell);
        let kept = Some(cell.to_string());
        match column {
            Column::Id => row.id = kept,
            Column::Channel => row.channel = kept,
            Column::External => row.external = kept,
            Column::Name => row.name = kept,
            Column::Email => row.email = kept,
            Column::Phone => row.phone = kept,
            Column::Notes => row.notes = kept,
            Column::ReadOnly => {}
            Column::Attribute(d) => {
                let text = cell.trim();
                let value = attributes::typed(d, text).ok_or_else(|| {
                    let why = format!("attributes.{}: `{text}` is no {} value", d.key, d.kind.as_str());
                    (line, AppError::invalid("invalid_attributes", why))
                })?;
                row.attributes.insert(d.key.clone(), value);
            }
        }
    }
    Ok(row)
}

/// `cell` as it was before an export kept it from running as a formula
/// (`reports::csv_row`: `'+351 912…` is `+351 912…`).
fn unneutralized(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if rest.starts_with(['=', '+', '-', '@', '\t', '\r']) => rest,
        _ => cell,
    }
}

/// Imports the CSV `body` for admin `user` ([module docs](self)); rows
/// without a `channel_id` cell go to `channel`.
pub fn import(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    channel: Option<ChannelId>,
    body: &[u8],
    dry_run: bool,
) -> AppResult<Imported> {
    let definitions = attributes::list(tc)?;
    let rows = read(body, &definitions)?;
    if !dry_run {
        return apply(tc, log, user, channel, rows);
    }
    // Done, answered, undone: a savepoint inside the request's transaction,
    // the events of a throwaway log.
    tc.pg().batch_execute("SAVEPOINT contact_import_dry_run")?;
    let done = apply(tc, &mut EventLog::new(), user, channel, rows);
    if done.as_ref().is_err_and(|e| e.kind != ErrorKind::Unprocessable) {
        return done;
    }
    tc.pg().batch_execute("ROLLBACK TO SAVEPOINT contact_import_dry_run")?;
    done.map(|imported| Imported { dry_run: true, ..imported })
}

fn apply(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    channel: Option<ChannelId>,
    rows: Vec<Result<Row, (u64, AppError)>>,
) -> AppResult<Imported> {
    let mut done = Imported { rows: rows.len(), ..Imported::default() };
    let mut wrong: Vec<(u64, AppError)> = Vec::new();
    let mut platforms: HashMap<i64, Option<Platform>> = HashMap::new();
    for row in rows {
        let outcome = match row {
            Ok(row) => {
                let line = row.line;
                one(tc, log, user, channel, &mut platforms, row).map_err(|e| (line, e))
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(Outcome::Created) => done.created += 1,
            Ok(Outcome::Updated) => done.updated += 1,
            Ok(Outcome::Unchanged) => done.unchanged += 1,
            // A value checked and refused, a contact not there: the row's
            // fault, and the transaction goes on to find the others'.
            Err((line, e)) if matches!(e.kind, ErrorKind::Unprocessable | ErrorKind::NotFound) => wrong.push((line, e)),
            // Anything else (the database's) may have ended the transaction.
            Err((_, e)) => return Err(e),
        }
    }
    if !wrong.is_empty() {
        return Err(refused(&wrong, done.rows));
    }
    crate::audit::record(
        tc,
        Some(user),
        "contacts.imported",
        "contact",
        None,
        serde_json::json!({"channel_id": channel.map(|c| c.0.to_string()), "rows": done.rows,
            "created": done.created, "updated": done.updated, "unchanged": done.unchanged}),
    )?;
    Ok(done)
}

enum Outcome {
    Created,
    Updated,
    Unchanged,
}

/// The 422 of an import with `wrong` rows of `rows`: the first
/// [`MOST_ERRORS_SHOWN`] in the message, the first [`MOST_ERRORS_LISTED`]
/// in `details.rows` (each `{line, code, message}`, the code as the
/// `PATCH` would answer it), and how many there are in
/// `details.wrong_rows`.
fn refused(wrong: &[(u64, AppError)], rows: usize) -> AppError {
    let mut shown: Vec<String> =
        wrong.iter().take(MOST_ERRORS_SHOWN).map(|(line, e)| format!("line {line}: {}", e.message)).collect();
    if wrong.len() > MOST_ERRORS_SHOWN {
        shown.push(format!("and {} more", wrong.len() - MOST_ERRORS_SHOWN));
    }
    let listed: Vec<Value> = wrong
        .iter()
        .take(MOST_ERRORS_LISTED)
        .map(|(line, e)| serde_json::json!({"line": line, "code": e.code, "message": e.message}))
        .collect();
    AppError::invalid(
        "invalid_import",
        format!("nothing was imported; {} of {rows} rows are wrong: {}", wrong.len(), shown.join("; ")),
    )
    .details(serde_json::json!({"wrong_rows": wrong.len(), "rows": listed}))
}

/// Applies one row.
fn one(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    default_channel: Option<ChannelId>,
    platforms: &mut HashMap<i64, Option<Platform>>,
    row: Row,
) -> AppResult<Outcome> {
    let wrong = |why: String| AppError::invalid("invalid_import", why);
    let channel = match row.channel.as_deref().map(str::trim) {
        Some(raw) => Some(
            raw.parse::<i64>()
                .ok()
                .filter(|c| *c > 0)
                .map(ChannelId)
                .ok_or_else(|| wrong(format!("channel_id `{raw}` is no channel's id")))?,
        ),
        None => default_channel,
    };
    let platform = match channel {
        None => None,
        Some(c) => match platforms.get(&c.0) {
            Some(known) => *known,
            None => {
                let found = match channels::find(tc, c) {
                    Ok(row) => Some(row.platform()),
                    Err(e) if e.kind == ErrorKind::NotFound => None,
                    Err(e) => return Err(e),
                };
                platforms.insert(c.0, found);
                found
            }
        },
    };
    if let (Some(c), None) = (channel, platform) {
        return Err(wrong(format!("no channel {c}")));
    }
    let (id, created) = match (&row.id, channel, platform) {
        (Some(raw), _, _) => {
            let id = ContactId::parse(raw.trim()).ok_or_else(|| wrong(format!("no contact {}", raw.trim())))?;
            (id, false)
        }
        (None, None, _) | (None, _, None) => {
            return Err(wrong("no channel_id: give the column, or ?channel_id= for the whole file".into()))
        }
        (None, Some(c), Some(Platform::Whatsapp)) => {
            let Some(raw) = row.external.as_deref().or(row.phone.as_deref()) else {
                return Err(wrong("a WhatsApp contact is found by id, external_id or phone".into()));
            };
            let number = Number::parse(raw).map_err(|e| {
                AppError::new(ErrorKind::Unprocessable, e.code, format!("`{}`: {}", raw.trim(), e.message))
            })?;
            match super::outreach::known_contact(tc, c.0, &number)? {
                Some(id) => (ContactId(id), false),
                None => (ContactId(super::outreach::new_contact(tc, c.0, &number)?), true),
            }
        }
        (None, Some(c), Some(_)) => {
            let Some(external) = row.external.as_deref().map(str::trim) else {
                return Err(wrong("a Messenger or Instagram contact is found by id or external_id".into()));
            };
            let found = contacts::find_external(tc, c, external)?
                .ok_or_else(|| wrong(format!("no contact has external_id `{external}` on channel {c}")))?;
            (found, false)
        }
    };
    // The name shown, and that the contact is on the row's channel (one
    // made now has no name, on the channel it was made on).
    let shown_name = match created {
        true => None,
        false => {
            let shown = contacts::shown(tc, id)?.ok_or_else(|| wrong(format!("no contact {id}")))?;
            if let Some(c) = channel.filter(|c| *c != shown.channel_id) {
                return Err(wrong(format!("contact {id} is not on channel {c}")));
            }
            shown.name
        }
    };
    let name = row.name.map(|n| n.trim().to_string()).filter(|n| Some(n) != shown_name.as_ref());
    let changes = ContactChanges {
        name: name.map(Some),
        email: row.email.map(Some),
        phone: row.phone.map(Some),
        notes: row.notes.map(Some),
        blocked: None,
        attributes: row.attributes,
    };
    let (item, changed) = contacts::update_telling(tc, log, user, Role::Admin, id, changes)?;
    if created && !changed {
        // Made, with nothing else to set: announced all the same.
        log.append(tc, "contact.updated", Some(item.channel_id.0), None, &item)?;
    }
    Ok(match (created, changed) {
        (true, _) => Outcome::Created,
        (false, true) => Outcome::Updated,
        (false, false) => Outcome::Unchanged,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inbox::attributes::Kind;

    fn definition(key: &str, kind: Kind, options: &[&str]) -> Definition {
        Definition {
            key: key.into(),
            name: key.into(),
            kind,
            options: options.iter().map(|o| o.to_string()).collect(),
            created_at: chrono::Utc::now(),
        }
    }

    fn code(r: AppResult<Vec<Result<Row, (u64, AppError)>>>) -> String {
        r.err().map(|e| e.code.to_string()).unwrap_or_default()
    }

    #[test]
    fn columns_are_checked_before_any_row() {
        let defs = [definition("plan", Kind::List, &["free", "pro"]), definition("seats", Kind::Number, &[])];
        assert_eq!(code(read(b"phone,plna\n+351912345678,pro\n", &defs)), "invalid_csv");
        assert_eq!(code(read(b"phone,attributes.plna\n1,pro\n", &defs)), "invalid_csv");
        assert_eq!(code(read(b"phone,Phone \n1,2\n", &defs)), "invalid_csv");
        assert_eq!(code(read(b"name,email\nAna,a@b.pt\n", &defs)), "invalid_csv");
        assert_eq!(code(read(b"phone,name\n1\n", &defs)), "invalid_csv");
        assert_eq!(code(read(b"\xff\xfephone\n", &defs)), "invalid_csv");
        assert_eq!(code(read(b"", &defs)), "invalid_csv");
        let many = format!("phone\n{}", "+351912345678\n".repeat(MOST_ROWS + 1));
        assert_eq!(code(read(many.as_bytes(), &defs)), "too_many_rows");
        let enough = format!("phone\n{}", "+351912345678\n".repeat(MOST_ROWS));
        assert_eq!(read(enough.as_bytes(), &defs).map(|r| r.len()).ok(), Some(MOST_ROWS));
    }

    #[test]
    fn cells_are_read_as_their_types() {
        let defs = [
            definition("plan", Kind::List, &["free", "pro"]),
            definition("seats", Kind::Number, &[]),
            definition("vip", Kind::Boolean, &[]),
        ];
        let body = "\u{feff}Phone,attributes.plan,attributes.Seats,attributes.vip,blocked,Name\r\n\
                    +351 912 345 678,pro,12,TRUE,false,\"Ana, \"\"the\"\" client\"\r\n\
                    ,,,,,\r\n\
                    +351912345679,gold,x,maybe,,\r\n\
                    +351912345670,,,,,\r\n";
        let rows = read(body.as_bytes(), &defs).expect("read");
        assert_eq!(rows.len(), 3, "the blank line is no row");
        let first = rows[0].as_ref().expect("first row");
        assert_eq!(first.line, 2);
        assert_eq!(first.name.as_deref(), Some("Ana, \"the\" client"));
        assert_eq!(
            Value::Object(first.attributes.clone()),
            serde_json::json!({"plan": "pro", "seats": 12, "vip": true})
        );
        assert_eq!(rows[1].as_ref().err().map(|e| e.0), Some(4), "a wrong cell names its line");
        let last = rows[2].as_ref().expect("last row");
        assert!(last.attributes.is_empty() && last.name.is_none(), "empty cells change nothing");
        // Lines as a spreadsheet numbers them, past empty lines and a
        // cell of two lines, with either ending.
        for end in ["\n", "\r\n", "\r"] {
            let body = ["phone,notes", "", "+351912345671,\"two", "lines\"", "", "+351912345672,'=1+1"].join(end);
            let rows = read(body.as_bytes(), &defs).expect("read");
            let lines: Vec<u64> = rows.iter().filter_map(|r| r.as_ref().ok()).map(|r| r.line).collect();
            assert_eq!(lines, [3, 6], "{body:?}");
            let notes = rows[1].as_ref().ok().and_then(|r| r.notes.clone());
            assert_eq!(notes.as_deref(), Some("=1+1"), "the export's neutralising undone");
        }
    }

    #[test]
    fn a_refusal_names_the_first_lines_and_lists_more_with_the_count() {
        let wrong: Vec<(u64, AppError)> =
            (2..152).map(|line| (line, AppError::invalid("invalid_email", format!("bad {line}")))).collect();
        let e = refused(&wrong, 2000);
        assert_eq!((e.code.as_ref(), e.kind), ("invalid_import", ErrorKind::Unprocessable));
        assert!(e.message.starts_with("nothing was imported; 150 of 2000 rows are wrong: line 2: bad 2;"), "{e}");
        assert!(e.message.ends_with("line 11: bad 11; and 140 more"), "{e}");
        let details = e.details.as_deref().expect("details");
        assert_eq!(details["wrong_rows"], 150);
        let rows = details["rows"].as_array().expect("rows");
        assert_eq!(rows.len(), MOST_ERRORS_LISTED);
        assert_eq!(rows[99], serde_json::json!({"line": 101, "code": "invalid_email", "message": "bad 101"}));
    }
}
