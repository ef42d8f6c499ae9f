//! Cursor pagination: `?limit=` (default 50, max 200) and an opaque
//! `?cursor=`; answers are `{"items": [...], "next_cursor": ... | null}`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::error::{AppError, AppResult};

#[derive(Debug, Deserialize)]
pub struct PageQuery {
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

pub struct PageRequest {
    pub limit: i64,
    /// The key the next page starts after.
    pub after: Option<i64>,
}

impl PageQuery {
    pub fn parse(&self) -> AppResult<PageRequest> {
        let limit = match self.limit.as_deref() {
            None | Some("") => 50,
            Some(l) => l
                .parse::<i64>()
                .ok()
                .filter(|n| (1..=200).contains(n))
                .ok_or_else(|| AppError::bad_request("invalid_limit", "limit must be a number from 1 to 200"))?,
        };
        let after = match self.cursor.as_deref() {
            None | Some("") => None,
            Some(c) => Some(decode_cursor(c)?),
        };
        Ok(PageRequest { limit, after })
    }
}

pub fn encode_cursor(key: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("k:{key}"))
}

pub fn decode_cursor(c: &str) -> AppResult<i64> {
    let bad = || AppError::bad_request("invalid_cursor", "the cursor is not one this server gave out");
    let raw = URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?;
    let s = std::str::from_utf8(&raw).map_err(|_| bad())?;
    s.strip_prefix("k:").and_then(|k| k.parse().ok()).ok_or_else(bad)
}

#[derive(Debug, Serialize)]
pub struct Paged<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Paged<T> {
    /// Builds a page from a result of at most `limit` rows; `key` gives the
    /// cursor key of an item.
    pub fn new(items: Vec<T>, limit: i64, key: impl Fn(&T) -> i64) -> Self {
        let next_cursor = if items.len() as i64 >= limit { items.last().map(|i| encode_cursor(key(i))) } else { None };
        Paged { items, next_cursor }
    }
}

impl<T> Paged<T> {
    /// A page of a short list read whole (a tenant's teams, macros, views,
    /// endpoints…: each kept under a limit of its own, so read at once and
    /// in its own order), by position: the cursor says where the next page
    /// starts, and there is one only when more follow. Something added or
    /// removed between two pages shifts the rest by one: acceptable for
    /// lists people keep by hand, and every list reads `limit` and
    /// `cursor` alike.
    pub fn whole(items: Vec<T>, page: &PageRequest) -> Self {
        let start = usize::try_from(page.after.unwrap_or(0)).unwrap_or(0);
        let limit = usize::try_from(page.limit).unwrap_or(1);
        let mut rest: Vec<T> = items.into_iter().skip(start).collect();
        let more = rest.len() > limit;
        rest.truncate(limit);
        let next_cursor = more.then(|| encode_cursor((start + rest.len()) as i64));
        Paged { items: rest, next_cursor }
    }
}

/// A cursor over (time, id), for lists ordered by a timestamp.
pub fn encode_time_cursor(at: chrono::DateTime<chrono::Utc>, id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("t:{}:{id}", at.timestamp_micros()))
}

pub fn decode_time_cursor(c: &str) -> AppResult<(chrono::DateTime<chrono::Utc>, i64)> {
    let bad = || AppError::bad_request("invalid_cursor", "the cursor is not one this server gave out");
    let raw = URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?;
    let s = std::str::from_utf8(&raw).map_err(|_| bad())?;
    let rest = s.strip_prefix("t:").ok_or_else(bad)?;
    let (micros, id) = rest.split_once(':').ok_or_else(bad)?;
    let at = chrono::DateTime::from_timestamp_micros(micros.parse().map_err(|_| bad())?).ok_or_else(bad)?;
    Ok((at, id.parse().map_err(|_| bad())?))
}

/// Parses `?limit=`: default 50, 1 to 200.
pub fn parse_limit(raw: Option<&str>) -> AppResult<i64> {
    match raw {
        None | Some("") => Ok(50),
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=200).contains(n))
            .ok_or_else(|| AppError::bad_request("invalid_limit", "limit must be a number from 1 to 200")),
    }
}

/// A `status=` filter: one of `statuses`, or none when left out or empty.
pub fn one_of(raw: Option<&str>, statuses: &[&str]) -> AppResult<Option<String>> {
    match raw.filter(|s| !s.is_empty()) {
        Some(s) if statuses.contains(&s) => Ok(Some(s.to_string())),
        Some(_) => {
            Err(AppError::bad_request("invalid_status", format!("status must be one of {}", statuses.join(", "))))
        }
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_whole_list_pages_by_position_with_a_cursor_only_when_more_follow() {
        let page = |limit, after| PageRequest { limit, after };
        let all: Vec<i32> = (1..=5).collect();
        let first = Paged::whole(all.clone(), &page(2, None));
        assert_eq!(first.items, [1, 2]);
        let next = decode_cursor(first.next_cursor.as_deref().expect("more follow")).expect("ours");
        let second = Paged::whole(all.clone(), &page(2, Some(next)));
        assert_eq!(second.items, [3, 4]);
        let last = decode_cursor(second.next_cursor.as_deref().expect("one more")).expect("ours");
        let third = Paged::whole(all.clone(), &page(2, Some(last)));
        assert_eq!((third.items, third.next_cursor), (vec![5], None));
        // Exactly a page: no cursor to an empty one; past the end, nothing.
        assert_eq!(Paged::whole(all.clone(), &page(5, None)).next_cursor, None);
        assert!(Paged::whole(all.clone(), &page(5, Some(9))).items.is_empty());
        assert_eq!(Paged::whole(all, &page(5, Some(-3))).items.len(), 5, "a cursor before the start is the start");
    }
}
