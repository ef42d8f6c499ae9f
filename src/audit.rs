//! The tenant's audit log: who did what, when. Rows are written in the same
//! transaction as the change they describe.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use crate::db::tenant_schema::audit_log;
use crate::db::{DbError, TenantConn};
use crate::ids::UserId;

#[derive(Debug, Serialize, Queryable, Selectable)]
#[diesel(table_name = audit_log)]
pub struct AuditEntry {
    #[serde(serialize_with = "crate::ids::as_string")]
    pub id: i64,
    #[serde(serialize_with = "opt_as_string")]
    pub actor_user_id: Option<i64>,
    pub action: String,
    pub target_type: String,
    pub target_id: Option<String>,
    pub details: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

fn opt_as_string<S: serde::Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

pub fn record(
    tc: &mut TenantConn<'_>,
    actor: Option<UserId>,
    action: &str,
    target_type: &str,
    target_id: Option<String>,
    details: serde_json::Value,
) -> Result<(), DbError> {
    diesel::insert_into(audit_log::table)
        .values((
            audit_log::actor_user_id.eq(actor.map(|a| a.0)),
            audit_log::action.eq(action),
            audit_log::target_type.eq(target_type),
            audit_log::target_id.eq(target_id),
            audit_log::details.eq(details),
        ))
        .execute(tc.pg())?;
    Ok(())
}

/// The `details` of the entries for `action` on `target` among the newest
/// `window` of the log, newest first: what Meta's notices, which may come
/// twice or late, are checked against before they are recorded.
pub fn recent(
    tc: &mut TenantConn<'_>,
    action: &str,
    target: &str,
    window: i64,
) -> Result<Vec<serde_json::Value>, DbError> {
    #[derive(QueryableByName)]
    struct Recent {
        #[diesel(sql_type = diesel::sql_types::Jsonb)]
        details: serde_json::Value,
    }
    let rows: Vec<Recent> = diesel::sql_query(
        "SELECT details FROM (SELECT id, action, target_id, details FROM audit_log ORDER BY id DESC LIMIT $1) recent \
         WHERE action = $2 AND target_id = $3 ORDER BY id DESC",
    )
    .bind::<diesel::sql_types::BigInt, _>(window)
    .bind::<diesel::sql_types::Text, _>(action)
    .bind::<diesel::sql_types::Text, _>(target)
    .load(tc.pg())?;
    Ok(rows.into_iter().map(|r| r.details).collect())
}

/// Newest first; `before` is the id of the last entry of the previous page.
pub fn list(tc: &mut TenantConn<'_>, before: Option<i64>, limit: i64) -> Result<Vec<AuditEntry>, DbError> {
    let mut q = audit_log::table.select(AuditEntry::as_select()).order(audit_log::id.desc()).limit(limit).into_boxed();
    if let Some(b) = before {
        q = q.filter(audit_log::id.lt(b));
    }
    Ok(q.load(tc.pg())?)
}
