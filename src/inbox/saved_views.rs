//! Saved views: named filters of the conversation list ("My urgent ones",
//! "Overdue on WhatsApp"), a member's own or the team's, kept here so that
//! every device they sign in on has them.
//!
//! Decisions:
//! - A view is its maker's own (`visibility: "personal"`, the default), or
//!   the team's (`"team"`: every member lists and uses it, admins make,
//!   change and delete it: "Urgent, unassigned" set up once for everyone).
//!   Anyone else's own view is not found; a member's own views go when
//!   they leave, the team's stay. Visibility is chosen when a view is made
//!   and stays (`invalid_visibility`). The team's are shared settings,
//!   audited (`view.created`, `view.updated`, `view.deleted`); a member's
//!   own are their preference, not audited.
//! - `filters` holds the list's own query parameters (`status`,
//!   `channel_id`, `assignee`, `unread`, `q`, `label`, `priority`,
//!   `waiting`, `overdue`, `sort`, `held_elsewhere`), each a string (a JSON `true` or number
//!   is taken as written), checked as the list checks them
//!   (`invalid_filters` says which is wrong). `assignee: "me"` is whoever
//!   uses the view, so one team view serves each member.
//! - `GET /api/conversations?view={id}` lists by the view; a filter also
//!   given in the query takes the place of the view's one. A channel the
//!   member does not see simply lists nothing from it.
//! - Names are 1 to [`MOST_NAME_CHARS`] characters, unique among the
//!   team's and among each member's own (409 `view_name_taken`; a member's
//!   may share a team view's name); at most [`MOST_PER_MEMBER`] views a
//!   member, and as many for the team (409 `too_many_views`).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::conversations::FilterParams;
use super::Visibility;
use crate::auth::Role;
use crate::db::tenant_schema::saved_views as sv;
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

/// The most views a member keeps, and the team.
pub const MOST_PER_MEMBER: i64 = 50;
/// The longest name.
pub const MOST_NAME_CHARS: usize = 100;

/// A view as listed.
#[derive(Debug, Serialize)]
pub struct SavedView {
    #[serde(serialize_with = "crate::ids::as_string")]
    pub id: i64,
    pub name: String,
    pub filters: FilterParams,
    pub visibility: Visibility,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Its owner, for the checks; not shown (only the owner sees it).
    #[serde(skip)]
    owner: Option<i64>,
}

type Row = (i64, String, Value, DateTime<Utc>, DateTime<Utc>, Option<i64>);

macro_rules! row_columns {
    () => {
        (sv::id, sv::name, sv::filters, sv::created_at, sv::updated_at, sv::user_id)
    };
}

fn of_row((id, name, filters, created_at, updated_at, owner): Row) -> SavedView {
    // Written by `save` only, from checked filters.
    let filters = serde_json::from_value(filters).unwrap_or_default();
    let visibility = Visibility::of(owner);
    SavedView { id, name, filters, visibility, created_at, updated_at, owner }
}

/// A view's name and filters checked ([module docs](self)); the filters
/// as stored.
fn checked(user: UserId, name: &str, filters: &Map<String, Value>) -> AppResult<(String, FilterParams)> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > MOST_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(AppError::invalid(
            "invalid_name",
            format!("a view's name is 1 to {MOST_NAME_CHARS} characters, without control characters"),
        ));
    }
    let invalid = |why: String| AppError::invalid("invalid_filters", why);
    let mut given = Map::new();
    for (key, value) in filters {
        if !FilterParams::NAMES.contains(&key.as_str()) {
            return Err(invalid(format!(
                "`{key}` is not a filter of the list; they are {}",
                FilterParams::NAMES.join(", ")
            )));
        }
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::Null => continue,
            _ => return Err(invalid(format!("`{key}` is a string"))),
        };
        given.insert(key.clone(), Value::String(text));
    }
    let params: FilterParams = serde_json::from_value(Value::Object(given)).map_err(|e| invalid(e.to_string()))?;
    params.filter(user).map_err(|e| invalid(e.message))?;
    Ok((name.to_string(), params))
}

/// The team's views and `user`'s own, by name.
pub fn list(tc: &mut TenantConn<'_>, user: UserId) -> AppResult<Vec<SavedView>> {
    let rows: Vec<Row> = sv::table
        .filter(sv::user_id.eq(user.0).or(sv::user_id.is_null()))
        .order((sv::name, sv::id))
        .select(row_columns!())
        .load(tc.pg())?;
    Ok(rows.into_iter().map(of_row).collect())
}

/// View `id` if `user` may use it (the team's, or their own); anyone
/// else's is not found.
pub fn find(tc: &mut TenantConn<'_>, user: UserId, id: i64) -> AppResult<SavedView> {
    let row: Option<Row> = sv::table
        .find(id)
        .filter(sv::user_id.eq(user.0).or(sv::user_id.is_null()))
        .select(row_columns!())
        .first(tc.pg())
        .optional()?;
    row.map(of_row).ok_or_else(|| AppError::not_found("view"))
}

/// Who may keep a view of `visibility`: the team's, admins; one's own,
/// its owner (the only one who sees it).
fn may_keep(role: Role, visibility: Visibility) -> AppResult<()> {
    if visibility == Visibility::Personal || role.at_least(Role::Admin) {
        return Ok(());
    }
    Err(AppError::forbidden(
        "forbidden",
        "only admins keep the team's views; make one of your own with visibility personal",
    ))
}

/// A view to save: its name, filters and, when made, visibility.
#[derive(Debug)]
pub struct Draft {
    pub name: String,
    pub filters: Map<String, Value>,
    /// `personal` when left out.
    pub visibility: Option<Visibility>,
}

/// Makes a view (`id` `None`) or changes one `user` may keep, whole.
pub fn save(tc: &mut TenantConn<'_>, user: UserId, role: Role, id: Option<i64>, draft: &Draft) -> AppResult<SavedView> {
    let owner = match id {
        None => {
            let visibility = draft.visibility.unwrap_or(Visibility::Personal);
            may_keep(role, visibility)?;
            visibility.owner(user)
        }
        Some(id) => {
            let found = find(tc, user, id)?;
            may_keep(role, found.visibility)?;
            found.visibility.kept(draft.visibility, "view")?;
            found.owner
        }
    };
    let (name, params) = checked(user, &draft.name, &draft.filters)?;
    // Two makes at once would both count forty-nine: an owner's take turns.
    let key = format!("{}:{}", tc.tenant().0, owner.unwrap_or(0));
    crate::db::locks::hold(tc.pg(), crate::db::locks::LockClass::SavedViews, &key)?;
    let of_owner = |owner: Option<i64>| match owner {
        Some(o) => sv::table.filter(sv::user_id.eq(o)).into_boxed(),
        None => sv::table.filter(sv::user_id.is_null()).into_boxed(),
    };
    let taken: Option<i64> = of_owner(owner).filter(sv::name.eq(&name)).select(sv::id).first(tc.pg()).optional()?;
    if taken.is_some_and(|t| Some(t) != id) {
        let whose = if owner.is_some() { "another view of yours" } else { "another of the team's views" };
        return Err(AppError::conflict("view_name_taken", format!("{whose} has this name")));
    }
    let value = serde_json::to_value(&params).map_err(AppError::internal)?;
    let row: Row = match id {
        None => {
            let held: i64 = of_owner(owner).count().get_result(tc.pg())?;
            if held >= MOST_PER_MEMBER {
                let whose = if owner.is_some() { "a member keeps" } else { "the team keeps" };
                return Err(AppError::conflict(
                    "too_many_views",
                    format!("{whose} at most {MOST_PER_MEMBER} views; delete one first"),
                ));
            }
            diesel::insert_into(sv::table)
                .values((sv::user_id.eq(owner), sv::name.eq(&name), sv::filters.eq(&value)))
                .returning(row_columns!())
                .get_result(tc.pg())?
        }
        Some(id) => {
            let changed = sv::name.ne(&name).or(sv::filters.ne(&value));
            let row: Option<Row> = diesel::update(sv::table.find(id).filter(changed))
                .set((sv::name.eq(&name), sv::filters.eq(&value), sv::updated_at.eq(diesel::dsl::now)))
                .returning(row_columns!())
                .get_result(tc.pg())
                .optional()?;
            // The same again (a retry): nothing written, nothing recorded.
            let Some(row) = row else { return find(tc, user, id) };
            row
        }
    };
    if owner.is_none() {
        let action = if id.is_some() { "view.updated" } else { "view.created" };
        crate::audit::record(tc, Some(user), action, "view", Some(row.0.to_string()), json!({"name": row.1}))?;
    }
    Ok(of_row(row))
}

/// Deletes view `id`, if `user` may keep it.
pub fn delete(tc: &mut TenantConn<'_>, user: UserId, role: Role, id: i64) -> AppResult<()> {
    let found = find(tc, user, id)?;
    may_keep(role, found.visibility)?;
    // A delete sent twice at once: the second finds the row, then waits on
    // the first's lock and deletes nothing. It is answered as it would be
    // a moment later, and records nothing.
    if diesel::delete(sv::table.find(found.id)).execute(tc.pg())? == 0 {
        return Err(AppError::not_found("view"));
    }
    if found.owner.is_none() {
        crate::audit::record(
            tc,
            Some(user),
            "view.deleted",
            "view",
            Some(id.to_string()),
            json!({"name": found.name}),
        )?;
    }
    Ok(())
}

/// A member left the tenant: their own views go with them (the team's
/// they made stay).
pub fn forget_member(tc: &mut TenantConn<'_>, user: UserId) -> AppResult<()> {
    diesel::delete(sv::table.filter(sv::user_id.eq(user.0))).execute(tc.pg())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn filters_are_checked_as_the_list_checks_them() {
        let me = UserId(7);
        let (name, params) = checked(
            me,
            " Mine, urgent ",
            &map(json!({"assignee": "me", "priority": "urgent", "unread": true, "channel_id": 3, "q": null})),
        )
        .expect("checked");
        assert_eq!(name, "Mine, urgent");
        assert_eq!(params.unread.as_deref(), Some("true"));
        assert_eq!(params.channel_id.as_deref(), Some("3"));
        assert_eq!(params.q, None);
        assert_eq!(params.filter(UserId(9)).expect("filter").assignee, Some(Some(9)), "me is whoever uses it");
        for bad in [
            json!({"priority": "p1"}),
            json!({"status": "closed"}),
            json!({"colour": "red"}),
            json!({"label": ["a"]}),
            json!({"sort": "waiting", "q": "refund"}),
        ] {
            let e = checked(me, "x", &map(bad.clone())).expect_err("refused");
            assert_eq!(e.code, "invalid_filters", "{bad}");
        }
        assert_eq!(checked(me, " ", &Map::new()).expect_err("no name").code, "invalid_name");
    }
}
