//! Accounts and access: global users with argon2 password hashes, memberships
//! `(user, tenant, role)`, HS256 access tokens, rotating refresh tokens and the
//! request extractor that hands handlers an authenticated [`AuthContext`].

pub mod account;
pub mod api_tokens;
pub mod extract;
pub mod invitations;
pub mod jwt;
pub mod logins;
pub mod members;
pub mod mfa;
pub mod password;
pub mod password_reset;
pub mod refresh;
pub mod session;
pub mod throttle;
pub mod users;

pub use extract::AuthContext;
pub use jwt::JwtKeys;

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::error::AppError;

/// Roles, from most to least powerful. Owners and admins manage the tenant;
/// agents answer conversations on their channels; viewers only read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Agent,
    Viewer,
}

impl Role {
    /// Every role, from most to least powerful.
    pub const ALL: [Role; 4] = [Role::Owner, Role::Admin, Role::Agent, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Agent => "agent",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "agent" => Some(Role::Agent),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    fn rank(self) -> u8 {
        match self {
            Role::Owner => 3,
            Role::Admin => 2,
            Role::Agent => 1,
            Role::Viewer => 0,
        }
    }

    /// Whether this role has at least the powers of `other`.
    pub fn at_least(self, other: Role) -> bool {
        self.rank() >= other.rank()
    }

    pub fn can_write(self) -> bool {
        self != Role::Viewer
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses a role from a stored column, where an unknown value is a bug.
pub(crate) fn stored_role(s: &str) -> Result<Role, AppError> {
    Role::parse(s).ok_or_else(|| AppError::internal(anyhow::anyhow!("unknown stored role {s:?}")))
}
