//! Canned responses: a tenant's shortcuts to often-typed answers.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::Serialize;

use crate::db::tenant_schema::canned_responses as cr;
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

#[derive(Debug, Serialize, Queryable)]
pub struct Canned {
    #[serde(serialize_with = "as_string")]
    pub id: i64,
    pub shortcut: String,
    pub text: String,
    pub created_at: DateTime<Utc>,
}

fn as_string<S: serde::Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

pub fn list(tc: &mut TenantConn<'_>, after: Option<i64>, limit: i64) -> AppResult<Vec<Canned>> {
    let mut q =
        cr::table.select((cr::id, cr::shortcut, cr::text, cr::created_at)).order(cr::id).limit(limit).into_boxed();
    if let Some(a) = after {
        q = q.filter(cr::id.gt(a));
    }
    Ok(q.load(tc.pg())?)
}

pub fn create(tc: &mut TenantConn<'_>, user: UserId, shortcut: &str, text: &str) -> AppResult<Canned> {
    let shortcut = shortcut.trim().trim_start_matches('/');
    if shortcut.is_empty() || shortcut.chars().count() > 50 || shortcut.chars().any(char::is_whitespace) {
        return Err(AppError::invalid("invalid_shortcut", "shortcut must be 1 to 50 characters without spaces"));
    }
    if text.trim().is_empty() || text.chars().count() > 4096 {
        return Err(AppError::invalid("invalid_text", "text must be 1 to 4096 characters"));
    }
    diesel::insert_into(cr::table)
        .values((cr::shortcut.eq(shortcut), cr::text.eq(text), cr::created_by.eq(user.0)))
        .on_conflict_do_nothing()
        .returning((cr::id, cr::shortcut, cr::text, cr::created_at))
        .get_result(tc.pg())
        .optional()?
        .ok_or_else(|| AppError::conflict("shortcut_taken", "a canned response with this shortcut exists"))
}

pub fn delete(tc: &mut TenantConn<'_>, id: i64) -> AppResult<()> {
    let n = diesel::delete(cr::table.find(id)).execute(tc.pg())?;
    if n == 0 {
        return Err(AppError::not_found("canned response"));
    }
    Ok(())
}
