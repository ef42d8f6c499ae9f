//! Tenants and their schemas: validated names, provisioning (schema + tenant
//! migrations + owner, all or nothing; the schema made ahead of time when a
//! spare is ready, `spares`), suspension and removal.
//!
//! Decisions: a slug is `[a-z][a-z0-9-]{1,39}` (URL-friendly, no `_`, so the
//! mapping to a schema name `tenant_<slug with - as _>` is one-to-one). A
//! suspended tenant keeps its data; its members cannot log in or call the API.

use chrono::{DateTime, Utc};
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use serde::Serialize;

use crate::auth::password::PasswordHash;
use crate::auth::users::{self, Email, User};
use crate::auth::Role;
use crate::db::migrate::{migrate_schema_in_tx, Migrations};
use crate::db::schema::{memberships, tenants};
use crate::db::DbError;
use crate::error::{AppError, AppResult};
use crate::ids::TenantId;

pub mod spares;

/// A tenant slug that passed validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantSlug(String);

impl TenantSlug {
    pub fn parse(raw: &str) -> AppResult<Self> {
        let bad = |why: &str| AppError::invalid("invalid_slug", format!("slug {raw:?} is not valid: {why}"));
        let bytes = raw.as_bytes();
        if !(2..=40).contains(&bytes.len()) {
            return Err(bad("it must be 2 to 40 characters long"));
        }
        if !bytes[0].is_ascii_lowercase() {
            return Err(bad("it must start with a lowercase letter"));
        }
        if !bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-') {
            return Err(bad("only lowercase letters, digits and '-' are allowed"));
        }
        if raw.ends_with('-') || raw.contains("--") {
            return Err(bad("'-' must separate words"));
        }
        if raw == "public" || raw == "information-schema" || raw.starts_with("pg-") {
            return Err(bad("that name is reserved"));
        }
        Ok(TenantSlug(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn schema_name(&self) -> SchemaName {
        SchemaName(format!("tenant_{}", self.0.replace('-', "_")))
    }
}

/// A PostgreSQL schema name that is safe to quote into SQL:
/// `[a-z][a-z0-9_]{1,47}`, not a system schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchemaName(String);

impl SchemaName {
    pub fn parse(raw: &str) -> AppResult<Self> {
        let b = raw.as_bytes();
        let shape_ok = (2..=48).contains(&b.len())
            && b[0].is_ascii_lowercase()
            && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_');
        let reserved = raw == "public" || raw == "information_schema" || raw.starts_with("pg_");
        if !shape_ok || reserved {
            return Err(AppError::invalid("invalid_schema_name", format!("schema name {raw:?} is not allowed")));
        }
        Ok(SchemaName(raw.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identifier in double quotes. Validation already excludes quotes,
    /// so this is belt and braces.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0.replace('"', "\"\""))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    Active,
    Suspended,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
        }
    }
}

#[derive(Clone, Debug, Queryable, Selectable, Serialize)]
#[diesel(table_name = tenants)]
pub struct Tenant {
    #[serde(serialize_with = "ser_tenant_id")]
    pub id: i64,
    pub slug: String,
    pub name: String,
    pub schema_name: String,
    pub status: String,
    pub schema_version: Option<String>,
    pub created_at: DateTime<Utc>,
    /// Its members must sign in in two steps (`auth::mfa`).
    pub require_mfa: bool,
}

fn ser_tenant_id<S: serde::Serializer>(id: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

impl Tenant {
    pub fn tenant_id(&self) -> TenantId {
        TenantId(self.id)
    }

    pub fn is_active(&self) -> bool {
        self.status == TenantStatus::Active.as_str()
    }
}

/// What creating a tenant needs; the password is hashed before any database
/// work so the transaction stays short.
pub struct NewTenant {
    pub slug: TenantSlug,
    pub name: String,
    pub owner_email: Email,
    pub owner_name: String,
    pub owner_password: String,
}

fn validate_name(name: &str) -> AppResult<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(AppError::invalid("invalid_name", "name must be 1 to 200 characters"));
    }
    Ok(name.to_string())
}

/// Creates the tenant row, its schema with every tenant migration, and its
/// owner (a new user, or an existing one who proves their password), in one
/// transaction: on any failure nothing remains.
pub fn create_tenant(conn: &mut PgConnection, new: NewTenant) -> AppResult<(Tenant, User)> {
    let name = validate_name(&new.name)?;
    enum Owner {
        Existing(User),
        New(PasswordHash),
    }
    let owner = match users::find_by_email(conn, &new.owner_email)? {
        Some(user) if user.password_matches(&new.owner_password) => Owner::Existing(user),
        Some(_) => {
            return Err(AppError::conflict(
                "email_taken",
                "a user with this email exists; give their password to make them the owner",
            ))
        }
        None => Owner::New(PasswordHash::create(&new.owner_password)?),
    };
    conn.transaction(|conn| {
        let tenant = provision(conn, &new.slug, &name)?;
        let owner = match owner {
            Owner::Existing(user) => user,
            Owner::New(hash) => users::insert(conn, &new.owner_email, &new.owner_name, &hash)?,
        };
        diesel::insert_into(memberships::table)
            .values((
                memberships::user_id.eq(owner.id),
                memberships::tenant_id.eq(tenant.id),
                memberships::role.eq(Role::Owner.as_str()),
            ))
            .execute(conn)?;
        Ok((tenant, owner))
    })
}

/// Creates the tenant row and its schema with every tenant migration, in one
/// transaction (nested in the caller's when there is one). No members yet.
pub fn provision(conn: &mut PgConnection, slug: &TenantSlug, name: &str) -> AppResult<Tenant> {
    let name = validate_name(name)?;
    let schema = slug.schema_name();
    conn.transaction(|conn| {
        let tenant: Tenant = diesel::insert_into(tenants::table)
            .values((
                tenants::slug.eq(slug.as_str()),
                tenants::name.eq(&name),
                tenants::schema_name.eq(schema.as_str()),
            ))
            .on_conflict_do_nothing()
            .returning(Tenant::as_returning())
            .get_result(conn)
            .optional()?
            .ok_or_else(|| AppError::conflict("tenant_exists", format!("tenant {:?} already exists", slug.as_str())))?;
        // A spare made ahead of time is renamed; otherwise the schema is
        // made here (spares.rs). Either way the migrations below run.
        let make = match spares::take(conn)? {
            Some(spare) => format!("ALTER SCHEMA {} RENAME TO {}", spare.quoted(), schema.quoted()),
            None => format!("CREATE SCHEMA {}", schema.quoted()),
        };
        conn.batch_execute(&make).map_err(|e| match e {
            diesel::result::Error::DatabaseError(..) => {
                AppError::conflict("tenant_exists", format!("schema {} already exists", schema.as_str()))
            }
            other => other.into(),
        })?;
        migrate_schema_in_tx(conn, &schema, &Migrations::tenant())?;
        // Re-read so the returned row shows the recorded schema version.
        Ok(tenants::table.find(tenant.id).select(Tenant::as_select()).get_result(conn)?)
    })
}

pub fn find_by_slug(conn: &mut PgConnection, slug: &str) -> Result<Option<Tenant>, DbError> {
    Ok(tenants::table.filter(tenants::slug.eq(slug)).select(Tenant::as_select()).first(conn).optional()?)
}

pub fn find(conn: &mut PgConnection, id: TenantId) -> Result<Option<Tenant>, DbError> {
    Ok(tenants::table.find(id.0).select(Tenant::as_select()).first(conn).optional()?)
}

pub fn list(conn: &mut PgConnection) -> Result<Vec<Tenant>, DbError> {
    Ok(tenants::table.order(tenants::slug).select(Tenant::as_select()).load(conn)?)
}

/// Suspends or resumes a tenant. Suspension also ends every refresh-token
/// family of the tenant so no session survives it.
pub fn set_status(conn: &mut PgConnection, slug: &str, status: TenantStatus) -> AppResult<Tenant> {
    conn.transaction(|conn| {
        let tenant: Tenant = diesel::update(tenants::table.filter(tenants::slug.eq(slug)))
            .set((tenants::status.eq(status.as_str()), tenants::updated_at.eq(diesel::dsl::now)))
            .returning(Tenant::as_returning())
            .get_result(conn)
            .optional()?
            .ok_or_else(|| AppError::not_found("tenant"))?;
        if status == TenantStatus::Suspended {
            crate::auth::refresh::revoke_tenant(conn, tenant.tenant_id())?;
            crate::realtime::bus::notify_live(conn, &crate::realtime::LiveMsg::Removed { t: tenant.id, u: 0 })?;
        }
        Ok(tenant)
    })
}

/// Drops the tenant's schema and everything in `public` that belongs to it.
pub fn drop_tenant(conn: &mut PgConnection, slug: &str) -> AppResult<Tenant> {
    conn.transaction(|conn| {
        let tenant: Tenant = tenants::table
            .filter(tenants::slug.eq(slug))
            .select(Tenant::as_select())
            .for_update()
            .first(conn)
            .optional()?
            .ok_or_else(|| AppError::not_found("tenant"))?;
        let schema = SchemaName::parse(&tenant.schema_name)?;
        conn.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", schema.quoted()))?;
        diesel::delete(tenants::table.find(tenant.id)).execute(conn)?;
        crate::mail::withdraw(
            conn,
            tenant.tenant_id(),
            crate::mail::Withdrawn::All,
            "withdrawn: the tenant was dropped",
        )?;
        // Its open sockets close as a suspended tenant's (4403), on every
        // instance, rather than stay open with nothing to hear.
        crate::realtime::bus::notify_live(conn, &crate::realtime::LiveMsg::Removed { t: tenant.id, u: 0 })?;
        Ok(tenant)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_and_schema_names() {
        assert_eq!(TenantSlug::parse("acme-co").map(|s| s.schema_name().0).ok(), Some("tenant_acme_co".into()));
        for bad in [
            "a; drop schema public",
            "A",
            "Acme",
            "x\"y",
            "acme'",
            "",
            "a",
            "public",
            "pg-catalog",
            "information-schema",
            "-acme",
            "acme-",
            "ac--me",
            "acme_co",
            &"a".repeat(41),
        ] {
            assert!(TenantSlug::parse(bad).is_err(), "{bad:?} should be refused");
        }
        for bad in
            ["public", "pg_catalog", "information_schema", "pg_toast", "a; drop", "Upper", "x\"", &"a".repeat(49)]
        {
            assert!(SchemaName::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert_eq!(SchemaName::parse("tenant_acme").map(|s| s.quoted()).ok(), Some("\"tenant_acme\"".into()));
    }
}
