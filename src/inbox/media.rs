//! Customers' media as agents open them
//! (`GET /api/messages/{id}/attachments/{index}`).
//!
//! Meta serves a WhatsApp media only to the channel's token, which never
//! leaves the server: the server asks Meta for the media's URL (good for
//! five minutes), downloads it with the token and passes the bytes on as
//! they come, storing nothing. A player seeking through a video asks for
//! many parts, so the URL is kept for four minutes per channel and media:
//! one Graph call a part, not two. A kept URL Meta refuses is asked for
//! again, once. A `HEAD` is answered from the lookup alone (type and
//! length): nothing is downloaded for it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::app::AppState;
use crate::channels::ChannelRow;
use crate::error::{AppError, AppResult, ErrorKind};
use crate::ids::TenantId;
use crate::meta::graph::MediaStream;
use crate::meta::GraphError;
use crate::secret::Secret;

/// How long a media URL from Meta is used (Meta's last five minutes).
const KEEP: Duration = Duration::from_secs(240);
/// URLs kept at most; past it, the expired go (and, if none, all).
const MOST: usize = 10_000;

type Key = (i64, i64, String);

/// What Meta's lookup of a media says: where to download it (for a few
/// minutes), its type and its length.
#[derive(Clone, Debug, PartialEq)]
struct Found {
    url: String,
    mime: Option<String>,
    size: Option<u64>,
}

/// Media URLs Meta gave, with the media's type and length: (tenant,
/// channel, media id).
#[derive(Default)]
pub struct MediaUrls {
    urls: Mutex<HashMap<Key, (Found, Instant)>>,
}

impl MediaUrls {
    fn get(&self, key: &Key, now: Instant) -> Option<Found> {
        let urls = self.urls.lock().ok()?;
        let (found, at) = urls.get(key)?;
        (now.duration_since(*at) < KEEP).then(|| found.clone())
    }

    fn put(&self, key: Key, found: Found, now: Instant) {
        let Ok(mut urls) = self.urls.lock() else { return };
        if urls.len() >= MOST {
            urls.retain(|_, (_, at)| now.duration_since(*at) < KEEP);
            if urls.len() >= MOST {
                urls.clear();
            }
        }
        urls.insert(key, (found, now));
    }

    fn forget(&self, key: &Key) {
        if let Ok(mut urls) = self.urls.lock() {
            urls.remove(key);
        }
    }
}

/// A media on its way from Meta, and its type.
pub struct Opened {
    pub stream: MediaStream,
    pub mime: String,
}

/// What a `HEAD` says of a media: its type and, when Meta gives it, its
/// length.
pub struct Described {
    pub mime: String,
    pub size: Option<u64>,
}

/// A channel's media, as the server asks Meta for it with the channel's token.
struct Media<'a> {
    state: &'a AppState,
    tenant: TenantId,
    channel: &'a ChannelRow,
    token: Secret<String>,
    key: Key,
}

impl<'a> Media<'a> {
    fn of(state: &'a AppState, tenant: TenantId, channel: &'a ChannelRow, media_id: &str) -> AppResult<Self> {
        let sealed = channel.sealed_token().unwrap_or_default();
        let aad = crate::channels::token_aad(channel.platform().as_str(), &channel.external_id);
        let token = state.keys.decrypt(sealed, &aad)?;
        Ok(Media { state, tenant, channel, token, key: (tenant.0, channel.id, media_id.to_string()) })
    }

    fn kept(&self) -> Option<Found> {
        self.state.media_urls.get(&self.key, Instant::now())
    }

    /// Asks Meta where the media is now, and keeps the answer.
    async fn look_up(&self) -> AppResult<Found> {
        let info = match self.state.graph.media(&self.key.2, &self.token).await {
            Ok(info) => info,
            Err(e) => return Err(self.failed(e).await),
        };
        let text = |k: &str| info.get(k).and_then(Value::as_str).map(str::to_string);
        let Some(url) = text("url") else {
            return Err(AppError::new(ErrorKind::BadGateway, "meta_error", "Meta gave no URL for this media"));
        };
        // A number in Meta's examples; a numeric string is taken too.
        let size = info.get("file_size").and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()));
        let found = Found { url, mime: text("mime_type"), size };
        self.state.media_urls.put(self.key.clone(), found.clone(), Instant::now());
        Ok(found)
    }

    async fn failed(&self, e: GraphError) -> AppError {
        refused(crate::channels::connect::note_graph_error(self.state, self.tenant, self.channel.channel_id(), e).await)
    }
}

/// The type to serve: Meta's word for it, else the download's, if it is a
/// type at all.
fn served_type(said: Option<String>, download: Option<&str>) -> String {
    said.or_else(|| download.map(str::to_string))
        .filter(|m| m.parse::<actix_web::mime::Mime>().is_ok())
        .unwrap_or_else(|| "application/octet-stream".into())
}

/// Opens WhatsApp media `media_id` of `channel` (or the part `range`, a
/// `Range` header's value, names). Meta refusing the channel's token marks
/// the channel `reauth_required`, as a send would.
pub async fn open(
    state: &AppState,
    tenant: TenantId,
    channel: &ChannelRow,
    media_id: &str,
    range: Option<&str>,
) -> AppResult<Opened> {
    let media = Media::of(state, tenant, channel, media_id)?;
    let mut kept = media.kept();
    loop {
        let was_kept = kept.is_some();
        let found = match kept.take() {
            Some(hit) => hit,
            None => media.look_up().await?,
        };
        match state.graph.download_stream(&found.url, &media.token, range).await {
            Ok(stream) if stream.status == 416 => {
                // Meta's `bytes */<length>`, passed on.
                let whole =
                    stream.content_range.as_deref().and_then(|r| r.strip_prefix("bytes */")?.trim().parse().ok());
                return Err(AppError::range_not_satisfiable(whole));
            }
            Ok(stream) => {
                let mime = served_type(found.mime, stream.content_type.as_deref());
                return Ok(Opened { stream, mime });
            }
            // A kept URL that stopped working (expired early): ask again.
            Err(_) if was_kept => state.media_urls.forget(&media.key),
            Err(e) => return Err(media.failed(e).await),
        }
    }
}

/// The type and length of WhatsApp media `media_id` of `channel`, for a
/// `HEAD`: from Meta's lookup (kept, or asked for), without downloading it.
/// A media Meta no longer serves is 404 `media_unavailable`, as for a `GET`.
pub async fn describe(
    state: &AppState,
    tenant: TenantId,
    channel: &ChannelRow,
    media_id: &str,
) -> AppResult<Described> {
    let media = Media::of(state, tenant, channel, media_id)?;
    let found = match media.kept() {
        Some(hit) => hit,
        None => media.look_up().await?,
    };
    Ok(Described { mime: served_type(found.mime, None), size: found.size })
}

/// What Meta's refusal to hand over a media means for the agent.
fn refused(e: GraphError) -> AppError {
    match &e {
        // WhatsApp keeps media for 30 days, then the id names nothing (or
        // names a media this number may no longer read).
        GraphError::Other { code: 100 | 404, .. } | GraphError::Permission { code: 200..=299 | 10, .. } => {
            AppError::new(ErrorKind::NotFound, "media_unavailable", format!("Meta no longer serves this media ({e})"))
        }
        GraphError::TokenInvalid { .. } => AppError::conflict(
            "meta_token_invalid",
            "Meta refused the channel's token; reconnect the channel to fetch its media",
        ),
        _ => e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_kept_four_minutes_and_never_past_the_bound() {
        let urls = MediaUrls::default();
        let t0 = Instant::now();
        let key = |i: usize| (1, 2, format!("media-{i}"));
        let found = |url: &str| Found { url: url.into(), mime: Some("image/jpeg".into()), size: Some(20) };
        urls.put(key(0), found("https://lookaside.example/0"), t0);
        assert_eq!(urls.get(&key(0), t0 + Duration::from_secs(239)), Some(found("https://lookaside.example/0")));
        assert!(urls.get(&key(0), t0 + KEEP).is_none());
        assert!(urls.get(&(9, 2, "media-0".into()), t0).is_none(), "another tenant's key is another entry");
        for i in 1..=MOST {
            urls.put(key(i), found(&format!("u{i}")), t0);
        }
        assert!(urls.urls.lock().expect("lock").len() <= MOST);
        urls.forget(&key(MOST));
        assert!(urls.get(&key(MOST), t0).is_none());
    }
}
