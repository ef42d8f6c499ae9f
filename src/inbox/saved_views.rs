//! Saved views: a member's named filters of the conversation list ("My
//! urgent ones", "Overdue on WhatsApp"), kept here so that every device
//! they sign in on has them.
//!
//! Decisions:
//! - A view is its owner's alone (`/api/views`: list, make, change whole,
//!   delete); anyone else's is not found. They go when the member leaves.
//! - `filters` holds the list's own query parameters (`status`,
//!   `channel_id`, `assignee`, `unread`, `q`, `label`, `priority`,
//!   `waiting`, `overdue`, `sort`), each a string (a JSON `true` or number
//!   is taken as written), checked as the list checks them
//!   (`invalid_filters` says which is wrong). `assignee: "me"` is whoever
//!   uses the view: its owner.
//! - `GET /api/conversations?view={id}` lists by the view; a filter also
//!   given in the query takes the place of the view's one. A channel the
//!   owner no longer sees simply lists nothing from it.
//! - Names are 1 to [`MOST_NAME_CHARS`] characters, unique per member
//!   (409 `view_name_taken`); at most [`MOST_PER_MEMBER`] views a member.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;
use serde_json::{Map, Value};

use super::conversations::FilterParams;
use crate::db::tenant_schema::saved_views as sv;
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

/// The most views a member keeps.
pub const MOST_PER_MEMBER: i64 = 50;
/// The longest name.
pub const MOST_NAME_CHARS: usize = 100;
/// First key of the advisory lock a member's makes take turns under.
const MAKE_LOCK_CLASS: i32 = 0x5b_0004;

/// A view as listed.
#[derive(Debug, Serialize)]
pub struct SavedView {
    #[serde(serialize_with = "crate::ids::as_string")]
    pub id: i64,
    pub name: String,
    pub filters: FilterParams,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

type Row = (i64, String, Value, DateTime<Utc>, DateTime<Utc>);

macro_rules! row_columns {
    () => {
        (sv::id, sv::name, sv::filters, sv::created_at, sv::updated_at)
    };
}

fn of_row((id, name, filters, created_at, updated_at): Row) -> SavedView {
    // Written by `save` only, from checked filters.
    let filters = serde_json::from_value(filters).unwrap_or_default();
    SavedView { id, name, filters, created_at, updated_at }
}

/// A view's name and filters checked ([module docs](self)); the filters
/// as stored.
fn checked(owner: UserId, name: &str, filters: &Map<String, Value>) -> AppResult<(String, FilterParams)> {
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
    params.filter(owner).map_err(|e| invalid(e.message))?;
    Ok((name.to_string(), params))
}

/// `user`'s views, by name.
pub fn list(tc: &mut TenantConn<'_>, user: UserId) -> AppResult<Vec<SavedView>> {
    let rows: Vec<Row> =
        sv::table.filter(sv::user_id.eq(user.0)).order((sv::name, sv::id)).select(row_columns!()).load(tc.pg())?;
    Ok(rows.into_iter().map(of_row).collect())
}

/// View `id` if it is `user`'s; anyone else's is not found.
pub fn find(tc: &mut TenantConn<'_>, user: UserId, id: i64) -> AppResult<SavedView> {
    let row: Option<Row> =
        sv::table.find(id).filter(sv::user_id.eq(user.0)).select(row_columns!()).first(tc.pg()).optional()?;
    row.map(of_row).ok_or_else(|| AppError::not_found("view"))
}

/// Makes a view (`id` `None`) or changes one of `user`'s, whole.
pub fn save(
    tc: &mut TenantConn<'_>,
    user: UserId,
    id: Option<i64>,
    name: &str,
    filters: &Map<String, Value>,
) -> AppResult<SavedView> {
    if let Some(id) = id {
        find(tc, user, id)?;
    }
    let (name, params) = checked(user, name, filters)?;
    // Two makes at once would both count forty-nine: a member's take turns.
    diesel::sql_query("SELECT pg_catalog.pg_advisory_xact_lock($1, pg_catalog.hashtext($2))")
        .bind::<diesel::sql_types::Int4, _>(MAKE_LOCK_CLASS)
        .bind::<diesel::sql_types::Text, _>(format!("{}:{}", tc.tenant().0, user.0))
        .execute(tc.pg())?;
    let taken: Option<i64> =
        sv::table.filter(sv::user_id.eq(user.0)).filter(sv::name.eq(&name)).select(sv::id).first(tc.pg()).optional()?;
    if taken.is_some_and(|t| Some(t) != id) {
        return Err(AppError::conflict("view_name_taken", "another view of yours has this name"));
    }
    let value = serde_json::to_value(&params).map_err(AppError::internal)?;
    let row: Row = match id {
        None => {
            let held: i64 = sv::table.filter(sv::user_id.eq(user.0)).count().get_result(tc.pg())?;
            if held >= MOST_PER_MEMBER {
                return Err(AppError::conflict(
                    "too_many_views",
                    format!("a member keeps at most {MOST_PER_MEMBER} views; delete one first"),
                ));
            }
            diesel::insert_into(sv::table)
                .values((sv::user_id.eq(user.0), sv::name.eq(&name), sv::filters.eq(&value)))
                .returning(row_columns!())
                .get_result(tc.pg())?
        }
        Some(id) => diesel::update(sv::table.find(id))
            .set((sv::name.eq(&name), sv::filters.eq(&value), sv::updated_at.eq(diesel::dsl::now)))
            .returning(row_columns!())
            .get_result(tc.pg())?,
    };
    Ok(of_row(row))
}

pub fn delete(tc: &mut TenantConn<'_>, user: UserId, id: i64) -> AppResult<()> {
    let gone = diesel::delete(sv::table.find(id).filter(sv::user_id.eq(user.0))).execute(tc.pg())?;
    if gone == 0 {
        return Err(AppError::not_found("view"));
    }
    Ok(())
}

/// A member left the tenant: their views go with them.
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
