//! Macros: a named list of actions an agent runs on a conversation at once
//! ("Refund sent": reply with the refund text, label `refund`, resolve).
//!
//! Decisions:
//! - Admins keep the team's macros (`/api/macros`); every member lists
//!   and runs them (`POST /api/conversations/{id}/macros/{macro_id}`).
//! - A member who answers (owner, admin, agent) also keeps macros of their
//!   own (`visibility: "personal"` when made): only they see, change and
//!   run them (to anyone else they do not exist: 404), and they go when
//!   the member leaves the tenant. Names are unique among the team's and
//!   among each member's own; one of each may share a name. Visibility is
//!   chosen when a macro is made and stays. The team keeps at most
//!   [`MOST_MACROS`], and so does each member of their own (409
//!   `too_many_macros`).
//! - Actions: `send_message {text}`, `add_note {text}`, `add_labels` and
//!   `remove_labels {labels}`, `assign {assignee_id}` (`null` unassigns),
//!   `set_status {status}` (open, pending or resolved), `set_priority
//!   {priority}`, `snooze {hours}` (1 to 720), `set_contact_attributes
//!   {attributes}` (the contact's, `inbox::attributes`; checked against
//!   the definitions when saved and when run); 1 to [`MOST_ACTIONS`]; of
//!   the status actions, the last one counts. Each is checked when the macro is
//!   saved (`invalid_actions` names the first wrong one), and again when it
//!   runs, as the same change by hand would be.
//! - A run is one transaction: every message, in the macro's order, then
//!   the conversation's changes at once (one `conversation.updated`, the
//!   usual audit entries), so a macro that answers and resolves sends its
//!   answer before any satisfaction survey. If one action is refused (the
//!   reply window closed, an assignee who left), nothing of the run
//!   happens and the error says which.
//! - A `client_id` makes a run safe to retry: its messages take
//!   `<client_id>:<n>`, so a retry sends nothing twice (the changes are
//!   the same again, so they change nothing). A retry answers with the
//!   messages the first run wrote, even where their variables would fill
//!   in otherwise now (the customer's name changed in between).
//! - A run is audited (`macro.run`, with the macro's name).
//! - A message's or note's text may use variables (`variables`):
//!   `{{contact.first_name}}`, `{{agent.name}}`… filled in when it runs.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::conversations::{self, Patch};
use super::events::EventLog;
use super::messages::{self, Note, ReplyOptions};
use super::views::{ConversationView, MessageView};
use super::ConversationId;
use crate::audit;
use crate::auth::Role;
use crate::db::tenant_schema::macros as mc;
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

/// The most actions one macro holds.
pub const MOST_ACTIONS: usize = 20;
/// Macros the team keeps, and each member of their own.
pub const MOST_MACROS: i64 = 300;
/// The longest name.
pub const MOST_NAME_CHARS: usize = 100;
/// The longest snooze a macro sets: 30 days.
pub const MOST_SNOOZE_HOURS: i64 = 720;

/// One step of a macro.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    SendMessage {
        text: String,
    },
    AddNote {
        text: String,
    },
    AddLabels {
        labels: Vec<String>,
    },
    RemoveLabels {
        labels: Vec<String>,
    },
    Assign {
        assignee_id: Option<UserId>,
    },
    /// Hands it to a team (`inbox::teams`), or takes it from its team.
    AssignTeam {
        team_id: Option<super::teams::TeamId>,
    },
    SetStatus {
        status: String,
    },
    SetPriority {
        priority: Option<String>,
    },
    /// Snoozes it for this many hours (1 to [`MOST_SNOOZE_HOURS`]).
    Snooze {
        hours: i64,
    },
    /// Sets the contact's attributes (`inbox::attributes`), as `PATCH
    /// /api/contacts/{id}` `{attributes}` would: `null` removes one.
    SetContactAttributes {
        attributes: serde_json::Map<String, serde_json::Value>,
    },
}

pub use super::Visibility;

/// A macro as listed.
#[derive(Debug, Serialize)]
pub struct Macro {
    #[serde(serialize_with = "crate::ids::as_string")]
    pub id: i64,
    pub name: String,
    pub actions: Vec<Action>,
    pub visibility: Visibility,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Its owner, for the checks; not shown (only the owner sees it).
    #[serde(skip)]
    owner: Option<i64>,
}

type Row = (i64, String, serde_json::Value, DateTime<Utc>, DateTime<Utc>, Option<i64>);

/// The columns of a [`Row`].
macro_rules! row_columns {
    () => {
        (mc::id, mc::name, mc::actions, mc::created_at, mc::updated_at, mc::owner_user_id)
    };
}

fn of_row((id, name, actions, created_at, updated_at, owner): Row) -> Macro {
    // Written by `save` only, from checked actions.
    let actions = serde_json::from_value(actions).unwrap_or_default();
    let visibility = Visibility::of(owner);
    Macro { id, name, actions, visibility, created_at, updated_at, owner }
}

/// Macro `id` as `user` may see it: the team's, or their own; anyone
/// else's is not found.
fn visible(tc: &mut TenantConn<'_>, user: UserId, id: i64) -> AppResult<Macro> {
    let row: Option<Row> = mc::table
        .find(id)
        .filter(mc::owner_user_id.is_null().or(mc::owner_user_id.eq(user.0)))
        .select(row_columns!())
        .first(tc.pg())
        .optional()?;
    row.map(of_row).ok_or_else(|| AppError::not_found("macro"))
}

/// Who may change a macro of `visibility`: the team's, admins; one's own,
/// its owner if they answer (they are the only one who sees it).
fn may_keep(role: Role, visibility: Visibility) -> AppResult<()> {
    let needed = if visibility == Visibility::Team { Role::Admin } else { Role::Agent };
    if role.at_least(needed) {
        return Ok(());
    }
    Err(AppError::forbidden(
        "forbidden",
        if visibility == Visibility::Team {
            "only admins keep the team's macros; make one of your own with visibility personal"
        } else {
            "only members who answer keep macros"
        },
    ))
}

fn invalid(why: String) -> AppError {
    AppError::invalid("invalid_actions", why)
}

/// A name and actions checked and tidied: labels as kept, texts trimmed.
fn checked(name: &str, actions: Vec<Action>) -> AppResult<(String, Vec<Action>)> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MOST_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(AppError::invalid(
            "invalid_name",
            format!("a macro's name is 1 to {MOST_NAME_CHARS} characters, without control characters"),
        ));
    }
    if actions.is_empty() || actions.len() > MOST_ACTIONS {
        return Err(invalid(format!("a macro has 1 to {MOST_ACTIONS} actions")));
    }
    let mut tidy = Vec::with_capacity(actions.len());
    for (n, action) in actions.into_iter().enumerate() {
        let at = |e: AppError| invalid(format!("action {}: {}", n + 1, e.message));
        tidy.push(match action {
            Action::SendMessage { text } => Action::SendMessage { text: checked_text(&text, n)? },
            Action::AddNote { text } => Action::AddNote { text: checked_text(&text, n)? },
            Action::AddLabels { labels } => {
                Action::AddLabels { labels: conversations::normalize_labels(&labels).map_err(at)? }
            }
            Action::RemoveLabels { labels } => {
                Action::RemoveLabels { labels: conversations::normalize_labels(&labels).map_err(at)? }
            }
            Action::SetStatus { status } if ["open", "pending", "resolved"].contains(&status.as_str()) => {
                Action::SetStatus { status }
            }
            Action::SetStatus { .. } => {
                return Err(invalid(format!("action {}: status is open, pending or resolved", n + 1)))
            }
            Action::Snooze { hours } if !(1..=MOST_SNOOZE_HOURS).contains(&hours) => {
                return Err(invalid(format!("action {}: hours is 1 to {MOST_SNOOZE_HOURS}", n + 1)))
            }
            Action::SetPriority { priority: Some(p) } => {
                Action::SetPriority { priority: Some(conversations::checked_priority(&p).map_err(at)?) }
            }
            other => other,
        });
    }
    Ok((name.to_string(), tidy))
}

fn checked_text(text: &str, n: usize) -> AppResult<String> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > messages::MOST_NOTE_CHARS {
        return Err(invalid(format!("action {}: a text is 1 to {} characters", n + 1, messages::MOST_NOTE_CHARS)));
    }
    Ok(text.to_string())
}

/// The team's macros and `user`'s own, by name.
pub fn list(tc: &mut TenantConn<'_>, user: UserId) -> AppResult<Vec<Macro>> {
    let rows: Vec<Row> = mc::table
        .filter(mc::owner_user_id.is_null().or(mc::owner_user_id.eq(user.0)))
        .order((mc::name, mc::id))
        .select(row_columns!())
        .load(tc.pg())?;
    Ok(rows.into_iter().map(of_row).collect())
}

/// What a macro is made of, as given.
pub struct Draft {
    pub name: String,
    pub actions: Vec<Action>,
    /// Only when it is made (`None`: the team's); a change keeps it.
    pub visibility: Option<Visibility>,
}

/// Saves a new macro (`id` `None`) or changes one ([module docs](self));
/// a name in use among the same owner's is 409 `macro_name_taken`.
pub fn save(tc: &mut TenantConn<'_>, user: UserId, role: Role, id: Option<i64>, draft: Draft) -> AppResult<Macro> {
    let owner = match id {
        None => {
            let visibility = draft.visibility.unwrap_or(Visibility::Team);
            may_keep(role, visibility)?;
            visibility.owner(user)
        }
        Some(id) => {
            let found = visible(tc, user, id)?;
            may_keep(role, found.visibility)?;
            found.visibility.kept(draft.visibility, "macro")?;
            found.owner
        }
    };
    let (name, actions) = checked(&draft.name, draft.actions)?;
    // Against the definitions as they are now (and again at each run).
    for (n, action) in actions.iter().enumerate() {
        if let Action::SetContactAttributes { attributes } = action {
            if attributes.is_empty() {
                return Err(invalid(format!("action {}: attributes names at least one", n + 1)));
            }
            super::attributes::apply(tc, &json!({}), attributes)
                .map_err(|e| invalid(format!("action {}: {}", n + 1, e.message)))?;
        }
    }
    let same_name = mc::table.filter(mc::name.eq(&name)).select(mc::id).into_boxed();
    let same_name = match owner {
        Some(o) => same_name.filter(mc::owner_user_id.eq(o)),
        None => same_name.filter(mc::owner_user_id.is_null()),
    };
    if id.is_none() {
        // Two creates at once would both count one short of the limit.
        let whose = format!("{}:{}", tc.tenant().0, owner.map_or("team".to_string(), |o| o.to_string()));
        crate::db::locks::hold(tc.pg(), crate::db::locks::LockClass::Macros, &whose)?;
    }
    let taken: Option<i64> = same_name.first(tc.pg()).optional()?;
    let name_taken = || AppError::conflict("macro_name_taken", "another macro of the same owner has this name");
    if taken.is_some_and(|t| Some(t) != id) {
        return Err(name_taken());
    }
    if id.is_none() {
        let kept = match owner {
            Some(o) => mc::table.filter(mc::owner_user_id.eq(o)).count().get_result::<i64>(tc.pg())?,
            None => mc::table.filter(mc::owner_user_id.is_null()).count().get_result::<i64>(tc.pg())?,
        };
        if kept >= MOST_MACROS {
            let whose = if owner.is_some() { "a member keeps of their own" } else { "the team keeps" };
            return Err(AppError::conflict(
                "too_many_macros",
                format!("{whose} at most {MOST_MACROS} macros: delete some first"),
            ));
        }
    }
    // Made at the same time under the same name: the unique index says so.
    let clash = |e: diesel::result::Error| match e {
        diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::UniqueViolation, _) => name_taken(),
        e => e.into(),
    };
    let value = serde_json::to_value(&actions).map_err(AppError::internal)?;
    let row: Row = match id {
        None => diesel::insert_into(mc::table)
            .values((
                mc::name.eq(&name),
                mc::actions.eq(&value),
                mc::created_by.eq(user.0),
                mc::owner_user_id.eq(owner),
            ))
            .returning(row_columns!())
            .get_result(tc.pg())
            .map_err(clash)?,
        Some(id) => {
            // Only a change: the same again (a retry, or sent twice at once,
            // the second finding the first's) writes and records nothing.
            let changed = mc::name.ne(&name).or(mc::actions.ne(&value));
            let row: Option<Row> = diesel::update(mc::table.find(id).filter(changed))
                .set((mc::name.eq(&name), mc::actions.eq(&value), mc::updated_at.eq(diesel::dsl::now)))
                .returning(row_columns!())
                .get_result(tc.pg())
                .optional()
                .map_err(clash)?;
            let Some(row) = row else { return visible(tc, user, id) };
            row
        }
    };
    let action = if id.is_some() { "macro.updated" } else { "macro.created" };
    let visibility = if owner.is_some() { "personal" } else { "team" };
    audit::record(
        tc,
        Some(user),
        action,
        "macro",
        Some(row.0.to_string()),
        json!({"name": row.1, "visibility": visibility}),
    )?;
    Ok(of_row(row))
}

pub fn delete(tc: &mut TenantConn<'_>, user: UserId, role: Role, id: i64) -> AppResult<()> {
    let found = visible(tc, user, id)?;
    may_keep(role, found.visibility)?;
    // Deleted meanwhile by a delete sent at the same time: as a moment later.
    if diesel::delete(mc::table.find(id)).execute(tc.pg())? == 0 {
        return Err(AppError::not_found("macro"));
    }
    audit::record(tc, Some(user), "macro.deleted", "macro", Some(id.to_string()), json!({"name": found.name}))?;
    Ok(())
}

/// A member left the tenant: their own macros go with them.
pub fn forget_member(tc: &mut TenantConn<'_>, user: UserId) -> AppResult<()> {
    diesel::delete(mc::table.filter(mc::owner_user_id.eq(user.0))).execute(tc.pg())?;
    Ok(())
}

/// How many of the tenant's latest audited actions a run's `client_id` is
/// looked for in (`macro.run` keeps it): a retry comes within seconds.
const RUNS_LOOKED_BACK: i64 = 500;

/// What a run did: the messages it wrote, and the conversation after.
#[derive(Debug, Serialize)]
pub struct Ran {
    pub conversation: ConversationView,
    pub messages: Vec<MessageView>,
    /// Whether a reply was queued or the conversation resolved (the caller
    /// wakes the sender).
    #[serde(skip)]
    pub queued: bool,
}

/// Runs macro `id` on conversation `conversation` for `user`
/// ([module docs](self)); `online` as for `conversations::patch` (a team
/// the macro hands it to may pick its assignee among them).
#[allow(clippy::too_many_arguments)]
pub fn run(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    conversation: ConversationId,
    id: i64,
    client_id: Option<String>,
    online: &[UserId],
) -> AppResult<Ran> {
    let found = visible(tc, user, id)?;
    // The conversation's turn first (a retry sent while the first still
    // runs waits for it, and then finds it done); then a conversation the
    // caller may not see is not found. The one it is assigned to is held
    // first, as a PATCH holds them (`conversations::hold_assignee`).
    let assigned = found.actions.iter().rev().find_map(|a| match a {
        Action::Assign { assignee_id } => Some(*assignee_id),
        _ => None,
    });
    let held = match assigned {
        Some(Some(assignee)) => Some(conversations::hold_assignee(tc, assignee, &[conversation.0])?),
        _ => None,
    };
    conversations::lock(tc, &[conversation.0])?;
    let row = messages::visible_conversation(tc, user, role, conversation)?;
    let client = |n: usize| client_id.as_ref().map(|c| format!("{c}:{}", n + 1));
    if let Some(cid) = &client_id {
        let ran = audit::recent(tc, "macro.run", &conversation.to_string(), RUNS_LOOKED_BACK)?;
        let macro_id = found.id.to_string();
        if ran.iter().any(|d| d["client_id"] == cid.as_str() && d["macro_id"] == macro_id.as_str()) {
            // A retry of a run that went: what it wrote, and the
            // conversation as it is, nothing done again (a change made
            // since by someone else stays).
            let mut written = Vec::new();
            for (n, action) in found.actions.iter().enumerate() {
                let private = match action {
                    Action::SendMessage { .. } => false,
                    Action::AddNote { .. } => true,
                    _ => continue,
                };
                written.extend(messages::macro_retried(tc, user, &row, client(n).as_deref(), private)?);
            }
            let view = super::views::Names::default().conversation(tc, &row)?;
            return Ok(Ran { conversation: view, messages: written, queued: false });
        }
    }
    let step = |n: usize, mut e: AppError| {
        e.message = format!("action {}: {}", n + 1, e.message);
        e
    };
    let mut written = Vec::new();
    let mut queued = false;
    let mut patch = Patch::default();
    // Its texts' variables (`variables`), looked up once if any has one.
    let has_variables = found.actions.iter().any(|a| match a {
        Action::SendMessage { text } | Action::AddNote { text } => super::variables::any(text),
        _ => false,
    });
    let looked = match has_variables {
        true => super::variables::look_up(tc, row.id, Some(user))?,
        false => super::variables::Looked::default(),
    };
    let filled = |text: &str| super::variables::render(text, &looked.values());
    for (n, action) in found.actions.iter().enumerate() {
        match action {
            Action::SendMessage { text } => {
                if let Some(view) = messages::macro_retried(tc, user, &row, client(n).as_deref(), false)? {
                    written.push(view);
                    continue;
                }
                let opts = ReplyOptions { client_id: client(n), reply_to: None, sign: None };
                let (view, created) = messages::create_reply(tc, log, user, role, conversation, filled(text), opts)
                    .map_err(|e| step(n, e))?;
                queued |= created;
                written.push(view);
            }
            Action::AddNote { text } => {
                if let Some(view) = messages::macro_retried(tc, user, &row, client(n).as_deref(), true)? {
                    written.push(view);
                    continue;
                }
                let note = Note { text: Some(filled(text)), client_id: client(n), ..Note::default() };
                let (view, _) =
                    messages::create_note(tc, log, user, role, conversation, note).map_err(|e| step(n, e))?;
                written.push(view);
            }
            Action::AddLabels { labels } => {
                patch.remove_labels.retain(|l| !labels.contains(l));
                patch.add_labels.extend(labels.iter().cloned());
            }
            Action::RemoveLabels { labels } => {
                patch.add_labels.retain(|l| !labels.contains(l));
                patch.remove_labels.extend(labels.iter().cloned());
            }
            Action::Assign { assignee_id } => patch.assignee_id = Some(*assignee_id),
            Action::AssignTeam { team_id } => patch.team_id = Some(*team_id),
            Action::SetStatus { status } => {
                patch.status = Some(status.clone());
                patch.snoozed_until = None;
            }
            Action::Snooze { hours } => {
                patch.status = Some("snoozed".into());
                patch.snoozed_until = Some(Some(Utc::now() + chrono::Duration::hours(*hours)));
            }
            Action::SetPriority { priority } => patch.priority = Some(priority.clone()),
            Action::SetContactAttributes { attributes } => {
                let changes = super::contacts::ContactChanges { attributes: attributes.clone(), ..Default::default() };
                super::contacts::update(tc, log, user, role, super::ContactId(row.contact_id), changes)
                    .map_err(|e| step(n, e))?;
            }
        }
    }
    let resolves = patch.status.as_deref() == Some("resolved");
    let view = conversations::patch_locked(tc, log, user, role, conversation, patch, online, held.as_ref()).map_err(
        |mut e| {
            e.message = format!("the changes: {}", e.message);
            e
        },
    )?;
    audit::record(
        tc,
        Some(user),
        "macro.run",
        "conversation",
        Some(conversation.to_string()),
        json!({"macro_id": found.id.to_string(), "name": found.name, "client_id": client_id}),
    )?;
    Ok(Ran { conversation: view, messages: written, queued: queued || resolves })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_are_read_and_checked() {
        let actions: Vec<Action> = serde_json::from_value(json!([
            {"type": "send_message", "text": " Refund sent. "},
            {"type": "add_labels", "labels": ["Refund", "refund"]},
            {"type": "assign", "assignee_id": null},
            {"type": "assign", "assignee_id": "7"},
            {"type": "set_priority", "priority": "high"},
            {"type": "set_status", "status": "resolved"}
        ]))
        .expect("actions");
        let (name, tidy) = checked(" Refund ", actions).expect("checked");
        assert_eq!(name, "Refund");
        assert_eq!(tidy[0], Action::SendMessage { text: "Refund sent.".into() });
        assert_eq!(tidy[1], Action::AddLabels { labels: vec!["refund".into()] });
        assert_eq!(tidy[3], Action::Assign { assignee_id: Some(UserId(7)) });
        for bad in [
            json!([{"type": "explode"}]),
            json!([{"type": "send_message"}]),
            json!([{"type": "send_message", "text": "x", "extra": 1}]),
        ] {
            assert!(serde_json::from_value::<Vec<Action>>(bad.clone()).is_err(), "{bad}");
        }
        for bad in [
            vec![],
            vec![Action::SendMessage { text: " ".into() }],
            vec![Action::SetStatus { status: "snoozed".into() }],
            vec![Action::SetPriority { priority: Some("p1".into()) }],
            vec![Action::AddLabels { labels: vec!["a,b".into()] }],
            vec![Action::Snooze { hours: 0 }],
            vec![Action::Snooze { hours: 721 }],
        ] {
            let e = checked("x", bad.clone()).err().map(|e| e.code);
            assert_eq!(e.as_deref(), Some("invalid_actions"), "{bad:?}");
        }
        assert_eq!(
            checked(" ", vec![Action::AddNote { text: "x".into() }]).err().map(|e| e.code),
            Some("invalid_name".into())
        );
    }
}
