//! Global users. One person is one user across tenants; memberships say where
//! they work and with which role.

use chrono::{DateTime, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use serde::Serialize;

use super::password::{self, PasswordHash};
use crate::db::schema::users;
use crate::db::DbError;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

/// An email address that passed a (deliberately modest) shape check and was
/// lower-cased; the unique index is on `lower(email)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> AppResult<Email> {
        let e = raw.trim().to_lowercase();
        let bad = || AppError::invalid("invalid_email", format!("{raw:?} is not an email address"));
        if e.len() > 254 || e.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad());
        }
        let (local, domain) = e.split_once('@').ok_or_else(bad)?;
        if local.is_empty() || domain.is_empty() || domain.contains('@') || !domain.contains('.') {
            return Err(bad());
        }
        Ok(Email(e))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub name: String,
    password_hash: String,
    pub created_at: DateTime<Utc>,
    /// When two-step sign-in was turned on (`auth::mfa`); `None`: off.
    pub totp_enabled_at: Option<DateTime<Utc>>,
}

impl User {
    /// What colleagues see: the name, or the email without one.
    pub fn display_name(&self) -> &str {
        if self.name.is_empty() {
            &self.email
        } else {
            &self.name
        }
    }

    pub fn user_id(&self) -> UserId {
        UserId(self.id)
    }

    pub fn password_matches(&self, password: &str) -> bool {
        password::verify(password, &self.password_hash)
    }

    pub fn public(&self) -> UserView {
        UserView {
            id: self.user_id(),
            email: self.email.clone(),
            name: self.name.clone(),
            mfa_enabled: self.totp_enabled_at.is_some(),
        }
    }
}

/// A user as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct UserView {
    pub id: UserId,
    pub email: String,
    pub name: String,
    /// Whether the person signs in in two steps (an extension; `auth::mfa`).
    pub mfa_enabled: bool,
}

pub fn find_by_email(conn: &mut PgConnection, email: &Email) -> Result<Option<User>, DbError> {
    Ok(users::table
        .filter(diesel::dsl::sql::<diesel::sql_types::Text>("lower(email)").eq(email.as_str()))
        .select(User::as_select())
        .first(conn)
        .optional()?)
}

pub fn find(conn: &mut PgConnection, id: UserId) -> Result<Option<User>, DbError> {
    Ok(users::table.find(id.0).select(User::as_select()).first(conn).optional()?)
}

/// The caller's own row, locked for a change of their account (a token's
/// user that is gone is a 401). Changes of one account take turns; the
/// lock is the one an update that keeps the key takes (`FOR NO KEY
/// UPDATE`), so work that only names the user by key (a row whose foreign
/// key checks theirs: an invitation they send, a login, a membership)
/// goes on beside it. `FOR UPDATE` made such work, holding the person's
/// membership as an invitation does, deadlock with a change of that
/// membership's settings (`PATCH /api/me`).
pub fn own_for_update(conn: &mut PgConnection, id: UserId) -> AppResult<User> {
    users::table
        .find(id.0)
        .select(User::as_select())
        .for_no_key_update()
        .first(conn)
        .optional()?
        .ok_or_else(|| AppError::unauthorized("invalid_token", "unknown user"))
}

/// Inserts a user; a taken email is a 409.
pub fn insert(conn: &mut PgConnection, email: &Email, name: &str, hash: &PasswordHash) -> AppResult<User> {
    let name = name.trim();
    if name.chars().count() > 200 {
        return Err(AppError::invalid("invalid_name", "name must be at most 200 characters"));
    }
    diesel::insert_into(users::table)
        .values((users::email.eq(email.as_str()), users::name.eq(name), users::password_hash.eq(hash.as_str())))
        .on_conflict_do_nothing()
        .returning(User::as_returning())
        .get_result(conn)
        .optional()?
        .ok_or_else(|| AppError::conflict("email_taken", "a user with this email already exists"))
}

/// Creates a user (hashing first, outside any transaction).
pub fn create(conn: &mut PgConnection, email: &Email, name: &str, password: &str) -> AppResult<User> {
    let hash = PasswordHash::create(password)?;
    insert(conn, email, name, &hash)
}

/// How colleagues see a user: their name, or their email when they have none.
pub fn display_name(conn: &mut PgConnection, user: UserId) -> Result<String, DbError> {
    let user: User = users::table.find(user.0).select(User::as_select()).first(conn)?;
    Ok(user.display_name().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(Email::parse(" Ann@Example.COM ").map(|e| e.0).ok(), Some("ann@example.com".into()));
        for bad in ["", "ann", "ann@", "@x.y", "a b@x.y", "a@b@c.d", "ann@localhost"] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }
}
