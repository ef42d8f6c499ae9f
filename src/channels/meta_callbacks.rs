//! Meta's deauthorize and data-deletion callbacks.
//!
//! Both name an app-scoped Meta user: the person who connected pages. A
//! deauthorize marks the channels they connected `disconnected` (tokens are
//! dead anyway). A data deletion also forgets the tokens, the link to that
//! Meta user and their pending selections, in every tenant that holds them
//! (found through `public.meta_user_links`, not by scanning schemas), and is
//! recorded under a confirmation code whose status page Meta shows the user.
//! Conversations with customers are the business's records and stay.
//!
//! Meta sends a callback again when our answer did not reach it in time.
//! A deauthorize again changes nothing more; a data deletion again (the
//! same `signed_request`) is answered with the first one's confirmation
//! code, and finishes its work if the first did not get to the end.

use chrono::Utc;
use diesel::prelude::*;
use rand::Rng;

use crate::app::AppState;
use crate::db::schema::{data_deletion_requests as ddr, meta_user_links};
use crate::db::tenant_schema::{channels, pending_selections};
use crate::db::TenantScope;
use crate::error::AppResult;
use crate::ids::TenantId;

async fn tenants_of(app: &AppState, meta_user: &str) -> AppResult<Vec<i64>> {
    let m = meta_user.to_string();
    app.db
        .public(move |conn| {
            Ok(meta_user_links::table
                .filter(meta_user_links::meta_user_id.eq(&m))
                .select(meta_user_links::tenant_id)
                .load::<i64>(conn)?)
        })
        .await
}

/// Disconnects every channel the Meta user connected; returns how many.
pub async fn deauthorize(app: &AppState, meta_user: &str) -> AppResult<usize> {
    let mut total = 0;
    for tenant in tenants_of(app, meta_user).await? {
        let m = meta_user.to_string();
        total += app
            .db
            .tenant(TenantScope::maintenance(TenantId(tenant)), move |tc| {
                let ids: Vec<i64> = channels::table
                    .filter(channels::meta_user_id.eq(&m))
                    .filter(channels::status.ne("disconnected"))
                    .select(channels::id)
                    .load(tc.pg())?;
                for id in &ids {
                    super::mark_disconnected(tc, None, super::ChannelId(*id), "deauthorized")?;
                }
                Ok::<_, crate::error::AppError>(ids.len())
            })
            .await?;
    }
    Ok(total)
}

pub struct DeletionReceipt {
    pub confirmation_code: String,
}

fn confirmation_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut r = rand::thread_rng();
    let tail: String = (0..10).map(|_| ALPHABET[r.gen_range(0..ALPHABET.len())] as char).collect();
    format!("DEL{tail}")
}

/// What tells one request from another: the signed_request's SHA-256.
fn request_key(signed_request: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(signed_request.trim().as_bytes()))
}

/// Deletes what the Meta user of `signed_request` (verified by the
/// caller) left with us; the receipt of the first time it was asked.
pub async fn delete_user_data(app: &AppState, meta_user: &str, signed_request: &str) -> AppResult<DeletionReceipt> {
    let (c, m, key) = (confirmation_code(), meta_user.to_string(), request_key(signed_request));
    let (code, completed) = app
        .db
        .public(move |conn| {
            diesel::insert_into(ddr::table)
                .values((
                    ddr::confirmation_code.eq(&c),
                    ddr::meta_user_id.eq(&m),
                    ddr::status.eq("received"),
                    ddr::request_key.eq(&key),
                ))
                .on_conflict(ddr::request_key)
                .do_nothing()
                .execute(conn)?;
            let (code, status): (String, String) = ddr::table
                .filter(ddr::request_key.eq(&key))
                .select((ddr::confirmation_code, ddr::status))
                .first(conn)?;
            Ok::<_, crate::error::AppError>((code, status == "completed"))
        })
        .await?;
    if completed {
        return Ok(DeletionReceipt { confirmation_code: code });
    }
    let tenants = tenants_of(app, meta_user).await?;
    let mut channels_affected = 0i32;
    for tenant in &tenants {
        let m = meta_user.to_string();
        channels_affected += app
            .db
            .tenant(TenantScope::maintenance(TenantId(*tenant)), move |tc| {
                let ids: Vec<i64> =
                    channels::table.filter(channels::meta_user_id.eq(&m)).select(channels::id).load(tc.pg())?;
                for id in &ids {
                    let row = super::find(tc, super::ChannelId(*id))?;
                    if row.status != "disconnected" {
                        super::mark_disconnected(tc, None, super::ChannelId(*id), "data_deletion")?;
                    }
                }
                diesel::update(channels::table.filter(channels::meta_user_id.eq(&m)))
                    .set((channels::meta_user_id.eq(None::<String>), channels::access_token_enc.eq(None::<String>)))
                    .execute(tc.pg())?;
                diesel::delete(pending_selections::table.filter(pending_selections::meta_user_id.eq(&m)))
                    .execute(tc.pg())?;
                diesel::delete(
                    meta_user_links::table
                        .filter(meta_user_links::meta_user_id.eq(&m))
                        .filter(meta_user_links::tenant_id.eq(tc.tenant().0)),
                )
                .execute(tc.pg())?;
                Ok::<_, crate::error::AppError>(ids.len() as i32)
            })
            .await?;
    }
    let (c, n_tenants) = (code.clone(), tenants.len() as i32);
    app.db
        .public(move |conn| {
            diesel::update(ddr::table.find(&c))
                .set((
                    ddr::status.eq("completed"),
                    ddr::tenants_affected.eq(n_tenants),
                    ddr::channels_affected.eq(channels_affected),
                    ddr::completed_at.eq(Utc::now()),
                ))
                .execute(conn)?;
            Ok::<_, crate::error::AppError>(())
        })
        .await?;
    Ok(DeletionReceipt { confirmation_code: code })
}

pub struct DeletionStatus {
    pub status: String,
    pub created_at: chrono::DateTime<Utc>,
    pub completed_at: Option<chrono::DateTime<Utc>>,
}

pub async fn deletion_status(app: &AppState, code: String) -> AppResult<Option<DeletionStatus>> {
    app.db
        .public(move |conn| {
            let row: Option<(String, chrono::DateTime<Utc>, Option<chrono::DateTime<Utc>>)> = ddr::table
                .find(&code)
                .select((ddr::status, ddr::created_at, ddr::completed_at))
                .first(conn)
                .optional()?;
            Ok(row.map(|(status, created_at, completed_at)| DeletionStatus { status, created_at, completed_at }))
        })
        .await
}
