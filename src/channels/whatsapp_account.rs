//! What Meta says about a WhatsApp business account (`account_update`
//! webhooks) and what it does to the account's numbers, our channels.
//!
//! Decisions:
//! - The business removed us (`PARTNER_REMOVED`), uninstalled our app
//!   (`PARTNER_APP_UNINSTALLED` naming our app id, or no app) or deleted the
//!   account (`ACCOUNT_DELETED`): its numbers are `disconnected` (token
//!   dropped, history kept, number free for a new connect), as a disconnect
//!   by an admin would, with the event as `status_reason`.
//! - Meta disabled the account (`DISABLED_UPDATE`, `ban_info.waba_ban_state`
//!   `DISABLE`): its numbers are `reauth_required` with reason
//!   `whatsapp_account_disabled` — replies would fail, the token is kept, and
//!   the channel check does not lift it; `REINSTATE` does (back to
//!   `connected`), as does connecting the number again.
//! - A restriction (`ACCOUNT_RESTRICTION`) is kept on each number
//!   (`whatsapp_number::restricted`: shown, and some sends refused), the
//!   newest one winning as a ban's does.
//! - Everything else (violations, pricing tiers, partner added,
//!   `SCHEDULE_FOR_DISABLE`…) changes nothing but is written to the audit log
//!   for the admins, once: a retried or duplicated webhook finds its entry
//!   among the channel's recent ones and adds none. Bans and reinstatements
//!   are written there too, and one older than one recorded (a retry
//!   delivered late) changes nothing: a late ban does not undo a newer
//!   reinstatement.
//!
//! Every number of the account gets the event (the processor routes it by
//! the account); a channel that is already disconnected is left alone.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{ChannelRow, ChannelStatus, Notice};
use crate::audit;
use crate::db::TenantConn;
use crate::error::AppResult;

/// `status_reason` of a number whose account Meta disabled.
pub const ACCOUNT_DISABLED: &str = "whatsapp_account_disabled";

/// Applies one `account_update` event to one of the account's numbers.
pub fn apply(
    tc: &mut TenantConn<'_>,
    channel: &ChannelRow,
    app_id: &str,
    event: &str,
    detail: &Value,
    at: DateTime<Utc>,
) -> AppResult<()> {
    // Read again, and locked: an earlier item of the same batch (a
    // duplicate) may have changed it since the processor loaded it, and a
    // duplicate in another batch waits for this one's audit entry.
    let channel = &super::find_locked(tc, channel.channel_id())?;
    if channel.status == ChannelStatus::Disconnected.as_str() {
        return Ok(());
    }
    let id = channel.channel_id();
    // Which app was uninstalled (a string, or a number in some payloads).
    let for_us = || match detail.get("waba_info").and_then(|w| w.get("partner_app_id")) {
        Some(Value::String(app)) => app == app_id,
        Some(Value::Number(app)) => app.to_string() == app_id,
        Some(_) => false,
        None => true,
    };
    let ban_state = detail.get("ban_info").and_then(|b| b.get("waba_ban_state")).and_then(Value::as_str);
    match (event, ban_state) {
        ("PARTNER_REMOVED", _) => super::mark_disconnected(tc, None, id, "whatsapp_partner_removed"),
        ("PARTNER_APP_UNINSTALLED", _) if for_us() => {
            super::mark_disconnected(tc, None, id, "whatsapp_app_uninstalled")
        }
        ("ACCOUNT_DELETED", _) => super::mark_disconnected(tc, None, id, "whatsapp_account_deleted"),
        ("DISABLED_UPDATE", Some(state @ ("DISABLE" | "REINSTATE"))) => {
            // A ban and a reinstatement undo each other: the newest wins.
            let bans = |d: &Value| d["event"] == "DISABLED_UPDATE";
            if note(tc, channel, event, detail, at, bans)? != Notice::Fresh {
                return Ok(());
            }
            match state {
                "DISABLE" => super::mark_held(tc, id, ACCOUNT_DISABLED),
                _ => reinstate(tc, channel),
            }
        }
        ("ACCOUNT_RESTRICTION", _) => {
            // Each lists the account's restrictions: the newest wins.
            let restrictions = |d: &Value| d["event"] == "ACCOUNT_RESTRICTION";
            if note(tc, channel, event, detail, at, restrictions)? != Notice::Fresh {
                return Ok(());
            }
            super::whatsapp_number::restricted(tc, channel, super::whatsapp_number::Restriction::listed(detail))
        }
        _ => note(tc, channel, event, detail, at, |_| false).map(|_| ()),
    }
}

/// A number of a disabled account is connected again.
fn reinstate(tc: &mut TenantConn<'_>, channel: &ChannelRow) -> AppResult<()> {
    if super::restore_connected(tc, channel.channel_id(), Some(ACCOUNT_DISABLED))? {
        audit::record(tc, None, "channel.reinstated", "channel", Some(channel.id.to_string()), json!({}))?;
    }
    Ok(())
}

/// Records the event for the admins, once ([`super::record_notice`]).
fn note(
    tc: &mut TenantConn<'_>,
    channel: &ChannelRow,
    event: &str,
    detail: &Value,
    at: DateTime<Utc>,
    ordered: impl Fn(&Value) -> bool,
) -> AppResult<Notice> {
    let details = json!({"event": event, "business_account": channel.parent_external_id, "detail": detail});
    super::record_notice(tc, channel.channel_id(), "channel.whatsapp_account_update", details, at, ordered)
}
