//! Customers' media as agents open them
//! (`GET /api/messages/{id}/attachments/{index}`).
//!
//! Meta serves a WhatsApp media only to the channel's token, which never
//! leaves the server: the server asks Meta for the media's URL (good for
//! five minutes), downloads it with the token and passes the bytes on as
//! they come, storing nothing. A player seeking through a video asks for
//! many parts, so the URL is kept for four minutes per channel and media:
//! one Graph call a part, not two. A kept URL Meta refuses is asked for
//! again, once.

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

/// How long a media URL from Meta is used (Meta's last five minutes).
const KEEP: Duration = Duration::from_secs(240);
/// URLs kept at most; past it, the expired go (and, if none, all).
const MOST: usize = 10_000;

type Key = (i64, i64, String);
/// A URL, the media's type, and when Meta gave them.
type Kept = (String, Option<String>, Instant);

/// Media URLs Meta gave, with the media's type: (tenant, channel, media id).
#[derive(Default)]
pub struct MediaUrls {
    urls: Mutex<HashMap<Key, Kept>>,
}

impl MediaUrls {
    fn get(&self, key: &Key, now: Instant) -> Option<(String, Option<String>)> {
        let urls = self.urls.lock().ok()?;
        let (url, mime, at) = urls.get(key)?;
        (now.duration_since(*at) < KEEP).then(|| (url.clone(), mime.clone()))
    }

    fn put(&self, key: Key, url: String, mime: Option<String>, now: Instant) {
        let Ok(mut urls) = self.urls.lock() else { return };
        if urls.len() >= MOST {
            urls.retain(|_, (_, _, at)| now.duration_since(*at) < KEEP);
            if urls.len() >= MOST {
                urls.clear();
            }
        }
        urls.insert(key, (url, mime, now));
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
    let sealed = channel.sealed_token().unwrap_or_default();
    let token =
        state.keys.decrypt(sealed, &crate::channels::token_aad(channel.platform().as_str(), &channel.external_id))?;
    let failed = |e: GraphError| async {
        refused(crate::channels::connect::note_graph_error(state, tenant, channel.channel_id(), e).await)
    };
    let key: Key = (tenant.0, channel.id, media_id.to_string());
    let mut kept = state.media_urls.get(&key, Instant::now());
    loop {
        let was_kept = kept.is_some();
        let (url, mime) = match kept.take() {
            Some(hit) => hit,
            None => {
                let info = match state.graph.media(media_id, &token).await {
                    Ok(info) => info,
                    Err(e) => return Err(failed(e).await),
                };
                let text = |k: &str| info.get(k).and_then(Value::as_str).map(str::to_string);
                let Some(url) = text("url") else {
                    return Err(AppError::new(ErrorKind::BadGateway, "meta_error", "Meta gave no URL for this media"));
                };
                let mime = text("mime_type");
                state.media_urls.put(key.clone(), url.clone(), mime.clone(), Instant::now());
                (url, mime)
            }
        };
        match state.graph.download_stream(&url, &token, range).await {
            Ok(stream) if stream.status == 416 => {
                // Meta's `bytes */<length>`, passed on.
                let whole =
                    stream.content_range.as_deref().and_then(|r| r.strip_prefix("bytes */")?.trim().parse().ok());
                return Err(AppError::range_not_satisfiable(whole));
            }
            Ok(stream) => {
                let mime = mime
                    .or_else(|| stream.content_type.clone())
                    .filter(|m| m.parse::<actix_web::mime::Mime>().is_ok())
                    .unwrap_or_else(|| "application/octet-stream".into());
                return Ok(Opened { stream, mime });
            }
            // A kept URL that stopped working (expired early): ask again.
            Err(_) if was_kept => state.media_urls.forget(&key),
            Err(e) => return Err(failed(e).await),
        }
    }
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
        urls.put(key(0), "https://lookaside.example/0".into(), Some("image/jpeg".into()), t0);
        assert_eq!(
            urls.get(&key(0), t0 + Duration::from_secs(239)).map(|h| h.0).as_deref(),
            Some("https://lookaside.example/0")
        );
        assert!(urls.get(&key(0), t0 + KEEP).is_none());
        assert!(urls.get(&(9, 2, "media-0".into()), t0).is_none(), "another tenant's key is another entry");
        for i in 1..=MOST {
            urls.put(key(i), format!("u{i}"), None, t0);
        }
        assert!(urls.urls.lock().expect("lock").len() <= MOST);
        urls.forget(&key(MOST));
        assert!(urls.get(&key(MOST), t0).is_none());
    }
}
