//! A channel's sends held while Meta rate-limits it (an extension).
//!
//! Meta answers a call over one of its limits with 4, 17, 32, 613, 8000x or
//! (WhatsApp) 130429, and asks for a back-off scoped to what met the limit
//! (meta/CONTRACTS.md §8.2). A reply retried on its own schedule would meet
//! the limit again with every attempt and fail after a minute; instead the
//! channel's sends are held: replies, files, templates and reactions wait in
//! the queue, `pending` and in order, until the hold ends; "seen" signals and
//! typing indicators meanwhile are dropped (news of nothing by then). The
//! hold is kept on the channel, so every instance's sender keeps it, and
//! clients see it: `send_hold: {code, since, until}` on the channel and in
//! its `channel.updated`.
//!
//! Decisions:
//! - How long: what Meta said (its usage header's
//!   `estimated_time_to_regain_access`, or `Retry-After`; a day at most),
//!   else [`FIRST`], doubled while the limits follow each other (a hold that
//!   began within the hour, and no send went through since) up to [`LONGEST`].
//! - Scope: WhatsApp's business-account limit (80007) holds every number of
//!   that account in the tenant; the pair limit (131056: too many messages to
//!   one customer) holds nothing but that send, retried with its own backoff;
//!   any other holds the channel that met it — the app's own limit (4)
//!   included: each channel meets it once, then waits.
//! - The first call that goes through lifts the hold (with a
//!   `channel.updated`); one that has ended but not yet been lifted shows as
//!   none.
//! - A held reply waits however long Meta's limit lasts: it fails only as
//!   Meta then says (outside the reply window, say), not because it waited.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ChannelRow, Platform};
use crate::db::tenant_schema::channels;
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};

/// A hold with no word from Meta of how long: the first.
pub const FIRST: Duration = Duration::seconds(15);
/// … and the longest, doubling from [`FIRST`].
pub const LONGEST: Duration = Duration::minutes(15);
/// The longest Meta's own word is taken for.
const LONGEST_SAID: Duration = Duration::days(1);
/// Holds that began within this follow each other (the next doubles).
const FOLLOWING: Duration = Duration::hours(1);

/// Sends held: since when, until when, after which of Meta's codes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendHold {
    pub code: i64,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

impl SendHold {
    /// The hold the channel is under at `now`, if any.
    pub fn of(row: &ChannelRow, now: DateTime<Utc>) -> Option<SendHold> {
        SendHold::kept(row.send_hold.as_ref()).filter(|h| h.until > now)
    }

    fn kept(value: Option<&serde_json::Value>) -> Option<SendHold> {
        value.and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// The hold to begin at `now` after Meta's limit `code`, which Meta said
    /// lasts `said` (if it said), the channel's last hold being `kept`.
    pub fn next(kept: Option<&SendHold>, code: i64, said: Option<std::time::Duration>, now: DateTime<Utc>) -> SendHold {
        let said = said.and_then(|d| Duration::from_std(d).ok()).filter(|d| *d > Duration::zero());
        let length = match said {
            Some(d) => d.min(LONGEST_SAID),
            None => kept
                .filter(|k| k.since > now - FOLLOWING)
                .map(|k| ((k.until - k.since) * 2).clamp(FIRST, LONGEST))
                .unwrap_or(FIRST),
        };
        SendHold { code, since: now, until: now + length }
    }
}

/// What a limit of Meta's holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Only the send that met it (its own retries).
    Send,
    /// The channel.
    Channel,
    /// Every number of the channel's WhatsApp business account.
    Account,
}

/// The scope of Meta's rate-limit `code` (CONTRACTS.md §8.2).
pub fn scope(code: i64) -> Scope {
    match code {
        131056 => Scope::Send,
        80007 => Scope::Account,
        _ => Scope::Channel,
    }
}

/// Holds the sends `scope(code)` names after `channel` met Meta's limit at
/// `now`, each changed channel announced (`channel.updated`). Returns when
/// the channel's own hold ends (a longer one kept stays).
pub fn hold(
    tc: &mut TenantConn<'_>,
    channel: &ChannelRow,
    code: i64,
    said: Option<std::time::Duration>,
    now: DateTime<Utc>,
) -> AppResult<DateTime<Utc>> {
    let ids: Vec<i64> = match (scope(code), channel.parent_external_id.as_deref()) {
        (Scope::Account, Some(account)) if channel.platform() == Platform::Whatsapp => channels::table
            .filter(channels::platform.eq(Platform::Whatsapp.as_str()))
            .filter(channels::parent_external_id.eq(account))
            .select(channels::id)
            .load(tc.pg())?,
        _ => vec![channel.id],
    };
    let held: Vec<(i64, Option<serde_json::Value>)> = channels::table
        .filter(channels::id.eq_any(&ids))
        .select((channels::id, channels::send_hold))
        .order(channels::id)
        .for_update()
        .load(tc.pg())?;
    let mut until = now;
    for (id, kept) in held {
        let kept = SendHold::kept(kept.as_ref());
        let next = SendHold::next(kept.as_ref(), code, said, now);
        let end = match kept {
            // A longer hold stays as it is.
            Some(k) if k.until >= next.until => k.until,
            _ => {
                let value = serde_json::to_value(&next).map_err(AppError::internal)?;
                diesel::update(channels::table.find(id)).set(channels::send_hold.eq(value)).execute(tc.pg())?;
                announce(tc, id, Some(&next))?;
                next.until
            }
        };
        if id == channel.id {
            until = end;
        }
    }
    Ok(until)
}

/// Lifts the channel's hold once a call went through (none kept: nothing).
pub fn lift(tc: &mut TenantConn<'_>, channel_id: i64) -> AppResult<()> {
    let lifted = diesel::update(channels::table.find(channel_id).filter(channels::send_hold.is_not_null()))
        .set(channels::send_hold.eq(None::<serde_json::Value>))
        .execute(tc.pg())?;
    if lifted > 0 {
        announce(tc, channel_id, None)?;
    }
    Ok(())
}

fn announce(tc: &mut TenantConn<'_>, id: i64, hold: Option<&SendHold>) -> AppResult<()> {
    let row = super::find(tc, super::ChannelId(id))?;
    super::channel_updated(
        tc,
        id,
        json!({"id": id.to_string(), "status": row.status, "status_reason": row.status_reason, "send_hold": hold}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("a time")
    }

    #[test]
    fn a_hold_lasts_what_meta_said_else_doubles_while_limits_follow_each_other() {
        let now = at("2026-12-02T10:00:00Z");
        let first = SendHold::next(None, 613, None, now);
        assert_eq!((first.since, first.until - first.since, first.code), (now, FIRST, 613));
        // Met again while held (or right after, no send through): twice as long.
        let second = SendHold::next(Some(&first), 32, None, first.until);
        assert_eq!(second.until - second.since, FIRST * 2);
        let mut h = second;
        for _ in 0..20 {
            h = SendHold::next(Some(&h), 32, None, h.until);
        }
        assert_eq!(h.until - h.since, LONGEST, "doubling stops at the longest");
        // A limit an hour and more after the last hold began starts again.
        let later = SendHold::next(Some(&h), 32, None, h.since + FOLLOWING + Duration::seconds(1));
        assert_eq!(later.until - later.since, FIRST);
        // Meta's word wins, within a day; a zero is no word.
        let said = SendHold::next(Some(&h), 80001, Some(std::time::Duration::from_secs(19 * 60)), now);
        assert_eq!(said.until - said.since, Duration::minutes(19));
        let said = SendHold::next(None, 80001, Some(std::time::Duration::from_secs(9 * 86_400)), now);
        assert_eq!(said.until - said.since, Duration::days(1));
        let zero = SendHold::next(None, 80001, Some(std::time::Duration::ZERO), now);
        assert_eq!(zero.until - zero.since, FIRST);
    }

    #[test]
    fn a_channel_shows_a_hold_only_until_it_ends() {
        let now = at("2026-12-02T10:00:00Z");
        let mut row = ChannelRow::sample(Platform::Facebook);
        assert_eq!(SendHold::of(&row, now), None);
        let hold = SendHold::next(None, 613, None, now);
        row.send_hold = Some(serde_json::to_value(&hold).expect("json"));
        assert_eq!(SendHold::of(&row, now), Some(hold.clone()));
        assert_eq!(SendHold::of(&row, hold.until), None);
        row.send_hold = Some(json!({"code": "x"}));
        assert_eq!(SendHold::of(&row, now), None, "an unreadable hold holds nothing");
    }

    #[test]
    fn scopes_follow_metas_codes() {
        assert_eq!(scope(131056), Scope::Send);
        assert_eq!(scope(80007), Scope::Account);
        for code in [4, 17, 32, 613, 80001, 80004, 80006, 130429] {
            assert_eq!(scope(code), Scope::Channel, "{code}");
        }
    }
}
