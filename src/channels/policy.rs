//! What Meta's enforcement of its Messenger policies does to a page
//! (`policy_enforcement` webhooks: `warning`, `block`, `unblock`).
//!
//! Decisions:
//! - `block`: Meta stops our app from messaging as the page, so replies
//!   would fail. The channel becomes `reauth_required` with reason
//!   `meta_policy_block` (the contract has no other "cannot reply"
//!   status); the token is kept, and the channel check does not lift it,
//!   since the token still reads the page. `unblock` does (back to
//!   `connected`), and so does connecting the page again.
//! - Only the page's own channel: its Instagram account is a channel of
//!   its own, which the notice does not name.
//! - `warning`, or an action we do not know, changes nothing.
//! - Every one is written to the audit log for the admins
//!   (`channel.policy_enforcement`: Meta's action, reason and time), once: a
//!   retried or duplicated webhook adds nothing. Meta's retries can come
//!   late, so a `block` or `unblock` older than one already recorded for
//!   the channel changes nothing: a late `block` does not undo a newer
//!   `unblock`.

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{ChannelRow, ChannelStatus, Notice};
use crate::audit;
use crate::db::TenantConn;
use crate::error::AppResult;

/// `status_reason` of a page Meta blocked.
pub const POLICY_BLOCK: &str = "meta_policy_block";

const ACTION: &str = "channel.policy_enforcement";

/// Applies one `policy_enforcement` event to its page's channel.
pub fn apply(
    tc: &mut TenantConn<'_>,
    channel: &ChannelRow,
    action: &str,
    reason: Option<&str>,
    at: DateTime<Utc>,
) -> AppResult<()> {
    // Locked: a duplicate applied at the same time waits for this entry.
    let channel = super::find_locked(tc, channel.channel_id())?;
    if channel.status == ChannelStatus::Disconnected.as_str() {
        return Ok(());
    }
    let id = channel.channel_id();
    let details = json!({"action": action, "reason": reason});
    let undoing = |d: &serde_json::Value| matches!(d["action"].as_str(), Some("block" | "unblock"));
    if super::record_notice(tc, id, ACTION, details, at, undoing)? != Notice::Fresh {
        return Ok(());
    }
    match action {
        "block" => super::mark_held(tc, id, POLICY_BLOCK),
        "unblock" => {
            if super::restore_connected(tc, id, Some(POLICY_BLOCK))? {
                audit::record(tc, None, "channel.reinstated", "channel", Some(id.to_string()), json!({}))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}
