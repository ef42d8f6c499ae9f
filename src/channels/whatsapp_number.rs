//! What Meta says of a WhatsApp number: its quality rating (how customers
//! received the business's messages lately; a low one comes before Meta
//! limits or blocks the number) and its messaging limit (how many customers
//! the business may start conversations with a day).
//!
//! Decisions:
//! - Read with the number's other details at connect and at each channel
//!   check (`GET /{waba-id}/phone_numbers`: the display number and
//!   `quality_rating`), and changed by Meta's `phone_number_quality_update`
//!   webhook: its `event` (`FLAGGED`, `UNFLAGGED`, `DOWNGRADE`, `UPGRADE`,
//!   `ONBOARDING`, `THROUGHPUT_UPGRADE`…) and the messaging limit
//!   (`max_daily_conversations_per_business`, or `current_limit`, which
//!   Meta is retiring).
//! - That webhook names the number by its display number (digits), not its
//!   id: it is routed by its business account and applies to the account's
//!   number whose display number it is. A number whose display number is
//!   not known yet (connected by an older release and not checked since)
//!   takes it when it is the account's only number.
//! - Shown on the channel as `whatsapp_number` `{display_phone_number,
//!   quality_rating, messaging_limit, quality_event, quality_event_at}`
//!   (null for pages). A webhook's change is a `channel.updated` and is
//!   audited (`channel.whatsapp_number_quality`) once; one older than one
//!   recorded (a retry delivered late) is recorded but not applied.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{ChannelId, ChannelRow, Notice, Platform};
use crate::db::tenant_schema::channels;
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhatsappNumber {
    /// Digits only, as Meta's webhooks write it.
    pub display_phone_number: Option<String>,
    /// `GREEN`, `YELLOW`, `RED` or `UNKNOWN`, as Meta lists the number.
    pub quality_rating: Option<String>,
    /// From the last quality webhook (`TIER_1K`, `TIER_UNLIMITED`, a number…).
    pub messaging_limit: Option<String>,
    pub quality_event: Option<String>,
    pub quality_event_at: Option<DateTime<Utc>>,
}

/// A number's display number as Meta's webhooks write it: digits only.
pub fn digits(display: &str) -> String {
    display.chars().filter(char::is_ascii_digit).collect()
}

impl WhatsappNumber {
    pub fn of(row: &ChannelRow) -> Option<WhatsappNumber> {
        row.whatsapp_number.as_ref().and_then(|v| serde_json::from_value(v.clone()).ok())
    }
}

fn write(tc: &mut TenantConn<'_>, id: i64, number: &WhatsappNumber) -> AppResult<()> {
    let value = serde_json::to_value(number).map_err(AppError::internal)?;
    diesel::update(channels::table.find(id))
        .set((channels::whatsapp_number.eq(value), channels::updated_at.eq(diesel::dsl::now)))
        .execute(tc.pg())?;
    Ok(())
}

/// The number `external_id` as its account lists it (connect, check):
/// kept if it changed; whether it did.
pub fn listed(
    tc: &mut TenantConn<'_>,
    external_id: &str,
    display: Option<&str>,
    quality_rating: Option<&str>,
) -> AppResult<bool> {
    let row: Option<ChannelRow> = channels::table
        .filter(channels::platform.eq(Platform::Whatsapp.as_str()))
        .filter(channels::external_id.eq(external_id))
        .select(ChannelRow::as_select())
        .for_update()
        .first(tc.pg())
        .optional()?;
    let Some(row) = row else { return Ok(false) };
    let before = WhatsappNumber::of(&row).unwrap_or_default();
    let after = WhatsappNumber {
        display_phone_number: display.map(digits).filter(|d| !d.is_empty()).or(before.display_phone_number.clone()),
        quality_rating: quality_rating.map(str::to_string).or(before.quality_rating.clone()),
        ..before.clone()
    };
    if after == before && row.whatsapp_number.is_some() {
        return Ok(false);
    }
    write(tc, row.id, &after)?;
    Ok(true)
}

/// What one `phone_number_quality_update` says.
#[derive(Debug, Clone, Copy)]
pub struct QualityUpdate<'a> {
    /// Digits only.
    pub display: &'a str,
    pub event: &'a str,
    pub limit: Option<&'a str>,
    pub at: DateTime<Utc>,
}

/// Applies a quality webhook routed by its account to `channel`, one of
/// the account's numbers, if it names it ([module docs](self)).
pub fn quality_update(tc: &mut TenantConn<'_>, channel: &ChannelRow, update: QualityUpdate<'_>) -> AppResult<()> {
    if channel.platform() != Platform::Whatsapp || channel.status == super::ChannelStatus::Disconnected.as_str() {
        return Ok(());
    }
    let before = WhatsappNumber::of(channel).unwrap_or_default();
    let ours = match &before.display_phone_number {
        Some(d) => *d == update.display,
        // Not known yet: the account's only number.
        None => {
            let numbers: i64 = channels::table
                .filter(channels::platform.eq(Platform::Whatsapp.as_str()))
                .filter(channels::parent_external_id.eq(&channel.parent_external_id))
                .count()
                .get_result(tc.pg())?;
            numbers == 1
        }
    };
    if !ours {
        return Ok(());
    }
    let details =
        json!({"display_phone_number": update.display, "event": update.event, "messaging_limit": update.limit});
    let notice =
        super::record_notice(tc, channel.channel_id(), "channel.whatsapp_number_quality", details, update.at, |_| {
            true
        })?;
    if notice != Notice::Fresh {
        return Ok(());
    }
    let after = WhatsappNumber {
        display_phone_number: Some(update.display.to_string()),
        messaging_limit: update.limit.map(str::to_string).or(before.messaging_limit.clone()),
        quality_event: Some(update.event.to_string()),
        quality_event_at: Some(update.at),
        ..before
    };
    write(tc, channel.id, &after)?;
    // The live inbox shows it at once, as a settings change.
    let view = super::get_view(tc, ChannelId(channel.id))?;
    super::channel_updated(
        tc,
        channel.id,
        json!({"id": view.id, "status": view.status, "status_reason": view.status_reason,
            "whatsapp_number": view.whatsapp_number}),
    )
}
