//! Copies of Messenger and Instagram media. Meta serves them from its CDN
//! to whoever has the URL, but the URL expires (a story's with the story,
//! the others after some days), and an old conversation would lose its
//! photos. So each is copied once, right after its message is stored, and
//! `GET /api/messages/{id}/attachments/{index}` serves the copy where there
//! is one (else it redirects to Meta's URL, as before).
//!
//! Decisions:
//! - What a customer sends is copied, and what the business sent from
//!   elsewhere (the Page inbox, its phone: echoes), whose URLs expire alike.
//! - Only Meta's CDN is fetched from: https on a host under `fbcdn.net`,
//!   `fbsbx.com` or `cdninstagram.com`, or the host of `META_GRAPH_URL`
//!   (the local fake), redirects included. A link a customer shares
//!   points elsewhere and is never fetched: a webhook does not get this
//!   server to request what it names.
//! - Meta's limit, 25 MB, is the most copied; a larger file, or one that
//!   takes longer than [`FETCH_TIMEOUT`], keeps Meta's URL only.
//! - Best effort: a bounded queue of this instance, [`COPIES_AT_ONCE`]
//!   fetches at a time. What was not copied (queue full, the process
//!   stopped, the CDN failed) redirects to Meta's URL, and is queued again
//!   when it is asked for, so it is copied if that URL still works; at
//!   most once every [`RETRY_AFTER`] per attachment ([`Retries`]), so an
//!   old conversation full of expired URLs does not send the CDN a request
//!   for every photo at every look.
//! - Kept in the tenant's schema (`media_copies`): gone with the message
//!   (a channel purged, the tenant dropped), and at once when the contact
//!   unsends it ([`forget`]); a copy that lands after the unsend is not
//!   stored ([`store`] holds the message's row).
//! - WhatsApp media are not copied: Meta keeps them 30 days behind the
//!   channel's token (`inbox::media`).
//! - The same table keeps the files agents send (`inbox::uploads`), stored
//!   with their message: there the kept file is the original, not a copy.

use diesel::prelude::*;
use serde_json::Value;
use std::time::Duration;

use super::views::MessageRow;
use crate::app::AppState;
use crate::db::tenant_schema::{media_copies as mc, messages as m};
use crate::db::{TenantConn, TenantScope};
use crate::error::AppResult;
use crate::ids::TenantId;

/// The largest file copied (Meta's limit for attachments).
pub const MOST_BYTES: usize = 25 * 1024 * 1024;
/// How long one fetch may take, start to end.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Fetches in flight at once.
pub const COPIES_AT_ONCE: usize = 4;
/// Meta's CDN hosts: these and their subdomains.
const CDN_DOMAINS: [&str; 3] = ["fbcdn.net", "fbsbx.com", "cdninstagram.com"];

/// How soon a copy asked for again is tried again (by this instance).
pub const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(600);
/// Attachments remembered as tried at most; past it, the old are forgotten.
const RETRIES_KEPT: usize = 10_000;

/// Copies queued again from a look at their attachment, by this instance:
/// at most every [`RETRY_AFTER`] per attachment.
pub type Retries = super::once_per::OncePer<(i64, i64, i32)>;

/// An empty [`Retries`].
pub fn retries() -> Retries {
    Retries::new(RETRY_AFTER, RETRIES_KEPT)
}

/// One attachment to copy.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaCopy {
    pub tenant: TenantId,
    pub message_id: i64,
    pub index: i32,
    pub url: String,
}

impl MediaCopy {
    /// Which attachment: (tenant, message, index).
    pub fn key(&self) -> (i64, i64, i32) {
        (self.tenant.0, self.message_id, self.index)
    }
}

/// The attachments of a message that have a URL to fetch (which
/// of them may be fetched is [`CdnHosts`]'s to say). An unsent message
/// has none.
pub fn wanted(tenant: TenantId, row: &MessageRow) -> Vec<MediaCopy> {
    if row.deleted_at.is_some() {
        return Vec::new();
    }
    let Some(items) = row.attachments.as_array() else { return Vec::new() };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            let url = a.get("url").and_then(Value::as_str)?;
            let index = i32::try_from(i).ok()?;
            Some(MediaCopy { tenant, message_id: row.id, index, url: url.to_string() })
        })
        .collect()
}

/// Where copies may be fetched from: Meta's CDN, and the Graph API's own
/// host (the fake serves its "CDN" there).
#[derive(Debug, Clone)]
pub struct CdnHosts {
    graph: Option<(String, Option<u16>)>,
}

impl CdnHosts {
    pub fn new(graph_url: &str) -> CdnHosts {
        let graph = reqwest::Url::parse(graph_url)
            .ok()
            .and_then(|u| u.host_str().map(|h| (h.to_ascii_lowercase(), u.port_or_known_default())));
        CdnHosts { graph }
    }

    pub fn allows(&self, url: &str) -> bool {
        reqwest::Url::parse(url).is_ok_and(|u| self.allows_url(&u))
    }

    fn allows_url(&self, url: &reqwest::Url) -> bool {
        let Some(host) = url.host_str().map(str::to_ascii_lowercase) else { return false };
        if !url.username().is_empty() || url.password().is_some() {
            return false;
        }
        if let Some((graph_host, port)) = &self.graph {
            if &host == graph_host && url.port_or_known_default() == *port {
                return true;
            }
        }
        url.scheme() == "https"
            && CDN_DOMAINS.iter().any(|d| host == *d || host.strip_suffix(d).is_some_and(|rest| rest.ends_with('.')))
    }

    /// A client for the CDN: it follows a redirect only to an allowed host.
    pub fn client(&self) -> reqwest::Client {
        let hosts = self.clone();
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() < 5 && hosts.allows_url(attempt.url()) {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        reqwest::Client::builder()
            .redirect(policy)
            .timeout(FETCH_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default()
    }
}

/// Copies what the processor queued, [`COPIES_AT_ONCE`] at a time.
pub async fn run(state: actix_web::web::Data<AppState>) {
    use futures_util::StreamExt;
    let rx = state.copy_queue().await;
    let http = state.cdn_hosts.client();
    let copies = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    copies
        .for_each_concurrent(COPIES_AT_ONCE, |copy| {
            let (state, http) = (state.clone(), http.clone());
            async move {
                let (message, index) = (copy.message_id, copy.index);
                match copy_one(&state, &http, copy).await {
                    Ok(stored) => {
                        crate::metrics::inc(&crate::metrics::MEDIA_COPIED, u64::from(stored));
                        tracing::debug!(message, index, stored, "media copy");
                    }
                    Err(e) => {
                        crate::metrics::inc(&crate::metrics::MEDIA_NOT_COPIED, 1);
                        tracing::debug!(message, index, error = %e, "media not copied");
                    }
                }
            }
        })
        .await;
}

/// Why a copy was not made.
#[derive(Debug, thiserror::Error)]
enum CopyError {
    #[error("the CDN answered {0}")]
    Status(u16),
    #[error("larger than {MOST_BYTES} bytes")]
    TooLarge,
    #[error(transparent)]
    Fetch(#[from] reqwest::Error),
    #[error(transparent)]
    Store(#[from] crate::error::AppError),
}

async fn copy_one(state: &AppState, http: &reqwest::Client, copy: MediaCopy) -> Result<bool, CopyError> {
    let mut res = http.get(&copy.url).send().await?;
    if !res.status().is_success() {
        return Err(CopyError::Status(res.status().as_u16()));
    }
    if res.content_length().is_some_and(|n| n > MOST_BYTES as u64) {
        return Err(CopyError::TooLarge);
    }
    let mime = res
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .unwrap_or_else(|| "application/octet-stream".into());
    let mut bytes = Vec::new();
    while let Some(chunk) = res.chunk().await? {
        if bytes.len() + chunk.len() > MOST_BYTES {
            return Err(CopyError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    let MediaCopy { tenant, message_id, index, .. } = copy;
    let stored =
        state.db.tenant(TenantScope::system(tenant), move |tc| store(tc, message_id, index, &mime, &bytes)).await?;
    Ok(stored)
}

/// Stores a copy of attachment `index` of `message_id`, unless the message
/// is gone or unsent (its row is held meanwhile, so an unsend waits for
/// this and then removes it) or a copy is there already.
pub fn store(tc: &mut TenantConn<'_>, message_id: i64, index: i32, mime: &str, bytes: &[u8]) -> AppResult<bool> {
    let shown: Option<i64> = m::table
        .find(message_id)
        .filter(m::deleted_at.is_null())
        .select(m::id)
        .for_share()
        .first(tc.pg())
        .optional()?;
    if shown.is_none() {
        return Ok(false);
    }
    let n = diesel::insert_into(mc::table)
        .values((mc::message_id.eq(message_id), mc::idx.eq(index), mc::mime.eq(mime), mc::bytes.eq(bytes)))
        .on_conflict_do_nothing()
        .execute(tc.pg())?;
    Ok(n > 0)
}

/// A copy as read: the media's type and size, and the bytes asked for.
#[derive(Debug)]
pub struct StoredCopy {
    pub mime: String,
    pub len: usize,
    /// What was read: the whole (`None`), the part a `Range` named
    /// (inclusive offsets, with its bytes), or nothing for a part the
    /// media does not have (`Err`).
    pub part: Option<Result<(usize, usize), ()>>,
    pub bytes: Vec<u8>,
}

/// The copy of attachment `index` of `message_id`, whole or only the part
/// `range` (a `Range` header's value) names: the bytes are stored out of
/// line uncompressed, so a player seeking through a video reads its parts,
/// not the whole file each time.
pub fn find(
    tc: &mut TenantConn<'_>,
    message_id: i64,
    index: usize,
    range: Option<&str>,
) -> AppResult<Option<StoredCopy>> {
    use diesel::sql_types::{BigInt, Binary, Integer};
    #[derive(QueryableByName)]
    struct Part {
        #[diesel(sql_type = Binary)]
        bytes: Vec<u8>,
    }
    let Some(StoredCopy { mime, len, .. }) = describe(tc, message_id, index)? else { return Ok(None) };
    let Ok(index) = i32::try_from(index) else { return Ok(None) };
    let part = range.and_then(|r| crate::byte_range::byte_range(r, len));
    let (from, count) = match part {
        Some(Err(())) => return Ok(Some(StoredCopy { mime, len, part, bytes: Vec::new() })),
        Some(Ok((start, end))) => (start, end - start + 1),
        None => (0, len),
    };
    // `substring` counts from 1; both fit an i32, as the size did.
    let (from, count) = (i32::try_from(from + 1).unwrap_or(i32::MAX), i32::try_from(count).unwrap_or(i32::MAX));
    let read: Part = diesel::sql_query(
        "SELECT substring(bytes FROM $3 FOR $4) AS bytes FROM media_copies WHERE message_id = $1 AND idx = $2",
    )
    .bind::<BigInt, _>(message_id)
    .bind::<Integer, _>(index)
    .bind::<Integer, _>(from)
    .bind::<Integer, _>(count)
    .get_result(tc.pg())?;
    Ok(Some(StoredCopy { mime, len, part, bytes: read.bytes }))
}

/// The type and size of the copy of attachment `index` of `message_id`,
/// without its bytes (`bytes` is empty): what a `HEAD` says.
pub fn describe(tc: &mut TenantConn<'_>, message_id: i64, index: usize) -> AppResult<Option<StoredCopy>> {
    use diesel::sql_types::{BigInt, Integer, Text};
    #[derive(QueryableByName)]
    struct Head {
        #[diesel(sql_type = Text)]
        mime: String,
        #[diesel(sql_type = Integer)]
        len: i32,
    }
    let Ok(index) = i32::try_from(index) else { return Ok(None) };
    // The size comes from the stored value's header, without reading it.
    let head: Option<Head> = diesel::sql_query(
        "SELECT mime, octet_length(bytes) AS len FROM media_copies WHERE message_id = $1 AND idx = $2",
    )
    .bind::<BigInt, _>(message_id)
    .bind::<Integer, _>(index)
    .get_result(tc.pg())
    .optional()?;
    Ok(head.map(|Head { mime, len }| StoredCopy {
        mime,
        len: usize::try_from(len).unwrap_or(0),
        part: None,
        bytes: Vec::new(),
    }))
}

/// Removes a message's copies (its contact unsent it).
pub fn forget(tc: &mut TenantConn<'_>, message_id: i64) -> AppResult<()> {
    diesel::delete(mc::table.filter(mc::message_id.eq(message_id))).execute(tc.pg())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_asked_for_again_is_tried_once_in_a_while() {
        let retries = retries();
        let copy = |m| MediaCopy { tenant: TenantId(1), message_id: m, index: 0, url: "https://x.fbcdn.net/1".into() };
        let now = std::time::Instant::now();
        assert!(retries.due(copy(7).key(), now));
        assert!(!retries.due(copy(7).key(), now + std::time::Duration::from_secs(60)));
        assert!(retries.due(copy(8).key(), now), "another attachment");
        assert!(retries.due(copy(7).key(), now + RETRY_AFTER));
    }

    #[test]
    fn only_metas_cdn_and_the_graph_host_are_fetched_from() {
        let hosts = CdnHosts::new("http://127.0.0.1:9090");
        for ok in [
            "https://scontent.xx.fbcdn.net/v/t1.15752-9/1.jpg?oe=66F00000",
            "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=1",
            "https://scontent-lis1-1.cdninstagram.com/v/2.mp4",
            "https://fbcdn.net/x.jpg",
            "http://127.0.0.1:9090/_fake/cdn/m_1.jpg",
        ] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for refused in [
            "http://scontent.xx.fbcdn.net/1.jpg",
            "https://evilfbcdn.net/1.jpg",
            "https://fbcdn.net.evil.example/1.jpg",
            "https://user:pw@scontent.xx.fbcdn.net/1.jpg",
            "http://127.0.0.1:9091/_fake/cdn/m_1.jpg",
            "http://localhost:9090/x",
            "https://example.com/shared-link",
            "geo:38.7,-9.1",
            "not a url",
        ] {
            assert!(!hosts.allows(refused), "{refused}");
        }
    }
}
