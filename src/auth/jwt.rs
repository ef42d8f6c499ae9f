//! Access tokens: HS256 only (the algorithm is pinned, never read from the
//! token), with `exp`, `nbf`, `iat`, `iss` and `aud` all required and checked.
//! A token names exactly one tenant and the role the user had there.

use chrono::Utc;
use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::Role;
use crate::error::AppError;
use crate::ids::{TenantId, UserId};

pub const ISSUER: &str = "switchboard";
pub const AUDIENCE: &str = "switchboard-api";
/// Access tokens are short: a demoted or removed member loses access at the
/// latest at the next refresh (and, for tenant work, at once: see
/// `public.sb_enter_tenant`).
pub const ACCESS_TTL_SECS: i64 = 15 * 60;
const LEEWAY_SECS: u64 = 5;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    /// Tenant id.
    pub tid: String,
    /// Tenant slug, for logs.
    pub ten: String,
    pub role: Role,
    /// Refresh-token family this access token was minted with.
    pub fam: String,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
}

impl Claims {
    pub fn user_id(&self) -> Option<UserId> {
        UserId::parse(&self.sub)
    }
    pub fn tenant_id(&self) -> Option<TenantId> {
        TenantId::parse(&self.tid)
    }
}

#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl JwtKeys {
    /// `secret` must hold at least 32 bytes (checked by the configuration).
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        JwtKeys { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), validation }
    }

    pub fn issue(
        &self,
        user: UserId,
        tenant: TenantId,
        slug: &str,
        role: Role,
        family: &str,
    ) -> Result<String, AppError> {
        let now = Utc::now().timestamp();
        let claims = Claims {
            sub: user.to_string(),
            tid: tenant.to_string(),
            ten: slug.to_string(),
            role,
            fam: family.to_string(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now,
            nbf: now,
            exp: now + ACCESS_TTL_SECS,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        self.sign(&claims)
    }

    /// Signs arbitrary claims (tests use it to forge edge cases).
    pub fn sign(&self, claims: &Claims) -> Result<String, AppError> {
        encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| AppError::internal(anyhow::anyhow!("jwt encode: {e}")))
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AppError> {
        use jsonwebtoken::errors::ErrorKind as K;
        decode::<Claims>(token, &self.decoding, &self.validation).map(|d| d.claims).map_err(|e| match e.kind() {
            K::ExpiredSignature => AppError::unauthorized("token_expired", "the access token has expired"),
            K::ImmatureSignature => AppError::unauthorized("invalid_token", "the access token is not valid yet"),
            K::InvalidAudience | K::InvalidIssuer => {
                AppError::unauthorized("invalid_token", "the access token is not for this service")
            }
            _ => AppError::unauthorized("invalid_token", "the access token is invalid"),
        })
    }
}
