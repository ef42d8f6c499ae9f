//! What Meta says of a WhatsApp number: its quality rating (how customers
//! received the business's messages lately; a low one comes before Meta
//! limits or blocks the number) and its messaging limit (how many customers
//! the business may start conversations with a day).
//!
//! Decisions:
//! - Read with the number's other details at connect and at each channel
//!   check (`GET /{waba-id}/phone_numbers`: the display number,
//!   `quality_rating`, and the messaging limit as
//!   `whatsapp_business_manager_messaging_limit`, the field Meta names in
//!   place of the retired `messaging_limit_tier`; a Graph version that
//!   does not know it is asked again without it), and changed by Meta's
//!   `phone_number_quality_update` webhook: its `event` (`FLAGGED`,
//!   `UNFLAGGED`, `DOWNGRADE`, `UPGRADE`, `ONBOARDING`,
//!   `THROUGHPUT_UPGRADE`…) and the messaging limit
//!   (`max_daily_conversations_per_business`, or `current_limit`, which
//!   Meta is retiring).
//! - Meta sets the messaging limit per business portfolio now, shared by
//!   all its numbers, and says so with `business_capability_update`
//!   (`max_daily_conversations_per_business`: a number, `-1` for none;
//!   else the retiring `max_daily_conversation_per_phone`): it is routed
//!   by the account and applies to each of its numbers (audited
//!   `channel.whatsapp_messaging_limit` once per number, a
//!   `channel.updated` when it changed). Kept as Meta wrote it (`TIER_2K`,
//!   `2000`), `-1` as `TIER_UNLIMITED`; broadcasts read it
//!   (`inbox::broadcasts`).
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
//! - Meta's restrictions of the number's business account
//!   (`account_update` `ACCOUNT_RESTRICTION`, `restriction_info[]`: a
//!   `restriction_type` and an `expiration` in seconds) are shown there too,
//!   as `restrictions` `[{restriction_type, expires_at}]`, while in force:
//!   the newest event's list is the account's (an empty one lifts them),
//!   and one lifts itself at its expiration (no event of Meta's says so:
//!   the clock that wakes snoozed conversations drops it within 30
//!   seconds, a `channel.updated`, [`lift_ended`]). Two stop
//!   sends before Meta is asked ([`refuse_if_restricted`], 409
//!   `messaging_restricted`; a reply queued before fails with that reason):
//!   `RESTRICTED_CUSTOMER_INITIATED_MESSAGING` anything inside a customer's
//!   24-hour window (replies, files, templates, reactions, automatic
//!   messages), and
//!   `RESTRICTED_BIZ_INITIATED_MESSAGING` what starts a conversation:
//!   templates once the window has closed, and writing first
//!   (`inbox::outreach`). Conversations show it in `can_reply` and
//!   `can_send_template`; clients read them again on the channel's
//!   `channel.updated` (a conversation's flags change without an event of
//!   its own). Others (adding numbers…) are only shown.

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
    /// The customers the business may start conversations with a day
    /// (`TIER_2K`, `TIER_UNLIMITED`, a number…), as Meta last said.
    pub messaging_limit: Option<String>,
    pub quality_event: Option<String>,
    pub quality_event_at: Option<DateTime<Utc>>,
    /// Meta's restrictions of the account in force ([module docs](self)).
    #[serde(default)]
    pub restrictions: Vec<Restriction>,
}

/// A restriction Meta put on a WhatsApp business account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restriction {
    /// `RESTRICTED_BIZ_INITIATED_MESSAGING`,
    /// `RESTRICTED_CUSTOMER_INITIATED_MESSAGING`,
    /// `RESTRICTED_ADD_PHONE_NUMBER_ACTION`… as Meta names it.
    pub restriction_type: String,
    /// When it ends, as Meta said; none: until Meta lifts it.
    pub expires_at: Option<DateTime<Utc>>,
}

/// No template once the window has closed, no writing first.
pub const BUSINESS_INITIATED: &str = "RESTRICTED_BIZ_INITIATED_MESSAGING";
/// Nothing inside a customer's window.
pub const CUSTOMER_INITIATED: &str = "RESTRICTED_CUSTOMER_INITIATED_MESSAGING";

impl Restriction {
    fn in_force(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|end| end > now)
    }

    /// `restriction_info` of an `ACCOUNT_RESTRICTION` (its `expiration` a
    /// number or a string of seconds); an item without a type is skipped.
    pub fn listed(detail: &serde_json::Value) -> Vec<Restriction> {
        let items = detail.get("restriction_info").and_then(serde_json::Value::as_array);
        items
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let kind = r.get("restriction_type")?.as_str()?.trim();
                let end = match r.get("expiration") {
                    // Seconds; a fraction of one is dropped.
                    Some(serde_json::Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
                    Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
                    _ => None,
                };
                (!kind.is_empty()).then(|| Restriction {
                    restriction_type: kind.chars().take(100).collect(),
                    expires_at: end.and_then(|s| DateTime::from_timestamp(s, 0)),
                })
            })
            .collect()
    }
}

/// A number's display number as Meta's webhooks write it: digits only.
pub fn digits(display: &str) -> String {
    display.chars().filter(char::is_ascii_digit).collect()
}

impl WhatsappNumber {
    /// As kept, without the restrictions that ran out.
    pub fn of(row: &ChannelRow) -> Option<WhatsappNumber> {
        let mut number = WhatsappNumber::kept(row)?;
        let now = Utc::now();
        number.restrictions.retain(|r| r.in_force(now));
        Some(number)
    }

    /// As kept, restrictions that ran out included.
    fn kept(row: &ChannelRow) -> Option<WhatsappNumber> {
        row.whatsapp_number.as_ref().and_then(|v| serde_json::from_value(v.clone()).ok())
    }
}

/// The restriction of Meta's that a send on `channel` breaks now, if one
/// does: inside the customer's window (`window_open`) customer-initiated
/// messaging, else business-initiated.
pub fn restricting(channel: &ChannelRow, window_open: bool) -> Option<Restriction> {
    if channel.platform() != Platform::Whatsapp {
        return None;
    }
    let kind = if window_open { CUSTOMER_INITIATED } else { BUSINESS_INITIATED };
    WhatsappNumber::of(channel)?.restrictions.into_iter().find(|r| r.restriction_type == kind)
}

/// 409 `messaging_restricted` when a send would break a restriction of
/// Meta's ([`restricting`]).
pub fn refuse_if_restricted(channel: &ChannelRow, window_open: bool) -> AppResult<()> {
    match restricting(channel, window_open) {
        Some(r) => Err(AppError::conflict("messaging_restricted", restricted_message(&r))),
        None => Ok(()),
    }
}

/// Why a send is refused, in words.
pub fn restricted_message(r: &Restriction) -> String {
    let what = match r.restriction_type.as_str() {
        CUSTOMER_INITIATED => "replying to customers",
        _ => "starting conversations (templates after the 24-hour window, writing first)",
    };
    match r.expires_at {
        Some(end) => format!("Meta restricted this WhatsApp account from {what} until {}", end.to_rfc3339()),
        None => format!("Meta restricted this WhatsApp account from {what}"),
    }
}

/// Meta's newest list of the account's restrictions, on one of its
/// numbers (locked by the caller): kept, and shown at once when it changed.
pub fn restricted(tc: &mut TenantConn<'_>, channel: &ChannelRow, restrictions: Vec<Restriction>) -> AppResult<()> {
    let before = WhatsappNumber::of(channel).unwrap_or_default();
    let now = Utc::now();
    let after = WhatsappNumber {
        restrictions: restrictions.into_iter().filter(|r| r.in_force(now)).collect(),
        ..before.clone()
    };
    if after == before {
        return Ok(());
    }
    write(tc, channel.id, &after)?;
    announce(tc, channel.id)
}

/// Drops the restrictions that ran out from the numbers that kept them,
/// each a `channel.updated` (their conversations may send again: clients
/// read them again); how many numbers. Run by the clock that wakes snoozed
/// conversations: only the numbers with a restriction past its end are
/// read and locked (a webhook batch may be reading the others); one another
/// transaction holds waits for the next tick.
pub fn lift_ended(tc: &mut TenantConn<'_>) -> AppResult<usize> {
    let rows: Vec<ChannelRow> = channels::table
        .filter(channels::platform.eq(Platform::Whatsapp.as_str()))
        .filter(diesel::dsl::sql::<diesel::sql_types::Bool>(
            "jsonb_typeof(whatsapp_number->'restrictions') = 'array' \
             AND EXISTS (SELECT 1 FROM jsonb_array_elements(whatsapp_number->'restrictions') AS r \
                          WHERE (r->>'expires_at')::timestamptz <= now())",
        ))
        .order(channels::id)
        .select(ChannelRow::as_select())
        .for_update()
        .skip_locked()
        .load(tc.pg())?;
    let mut lifted = 0;
    for row in rows {
        let (Some(kept), Some(now)) = (WhatsappNumber::kept(&row), WhatsappNumber::of(&row)) else { continue };
        if now.restrictions.len() != kept.restrictions.len() {
            write(tc, row.id, &now)?;
            announce(tc, row.id)?;
            lifted += 1;
        }
    }
    Ok(lifted)
}

/// The live inbox shows a change of the number at once, as a settings change.
fn announce(tc: &mut TenantConn<'_>, id: i64) -> AppResult<()> {
    let view = super::get_view(tc, ChannelId(id))?;
    super::channel_updated(
        tc,
        id,
        json!({"id": view.id, "status": view.status, "status_reason": view.status_reason,
            "whatsapp_number": view.whatsapp_number}),
    )
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
    messaging_limit: Option<&str>,
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
        messaging_limit: messaging_limit.map(str::to_string).or(before.messaging_limit.clone()),
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
    announce(tc, channel.id)
}

/// Applies a `business_capability_update` routed by its account to
/// `channel`, one of the account's numbers: the messaging limit all the
/// portfolio's numbers share ([module docs](self)).
pub fn capability_update(
    tc: &mut TenantConn<'_>,
    channel: &ChannelRow,
    limit: &str,
    at: DateTime<Utc>,
) -> AppResult<()> {
    if channel.platform() != Platform::Whatsapp || channel.status == super::ChannelStatus::Disconnected.as_str() {
        return Ok(());
    }
    let details = json!({"messaging_limit": limit});
    let notice =
        super::record_notice(tc, channel.channel_id(), "channel.whatsapp_messaging_limit", details, at, |_| true)?;
    let before = WhatsappNumber::of(channel).unwrap_or_default();
    if notice != Notice::Fresh || before.messaging_limit.as_deref() == Some(limit) {
        return Ok(());
    }
    let after = WhatsappNumber { messaging_limit: Some(limit.to_string()), ..before };
    write(tc, channel.id, &after)?;
    announce(tc, channel.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_restrictions_are_read_as_meta_writes_them() {
        let fixture: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(crate::meta::fixture_path("whatsapp_account_update.json")).expect("fixture"),
        )
        .expect("json");
        let value = &fixture["entry"][0]["changes"][0]["value"];
        let listed = Restriction::listed(value);
        assert_eq!(
            listed,
            vec![Restriction {
                restriction_type: BUSINESS_INITIATED.into(),
                expires_at: DateTime::from_timestamp(1_773_226_400, 0),
            }]
        );
        // The fixture's ran out in March 2026.
        assert!(!listed[0].in_force(Utc::now()));
        let odd = json!({"restriction_info": [
            {"restriction_type": CUSTOMER_INITIATED, "expiration": "4102444800"},
            {"restriction_type": BUSINESS_INITIATED, "expiration": 4102444800.5},
            {"restriction_type": "RESTRICTED_ADD_PHONE_NUMBER_ACTION"},
            {"expiration": 4102444800_i64},
            {"restriction_type": "", "expiration": 1},
            "not an object"
        ]});
        let listed = Restriction::listed(&odd);
        assert_eq!(listed.len(), 3, "{listed:?}");
        assert_eq!(listed[0].expires_at, DateTime::from_timestamp(4_102_444_800, 0), "seconds as a string");
        assert_eq!(listed[1].expires_at, DateTime::from_timestamp(4_102_444_800, 0), "a fraction dropped");
        assert!(listed[2].expires_at.is_none() && listed[2].in_force(Utc::now()), "no end: in force");
        assert!(Restriction::listed(&json!({})).is_empty());
        assert!(Restriction::listed(&json!({"restriction_info": "x"})).is_empty());
    }

    #[test]
    fn a_restriction_refuses_only_what_it_names() {
        let restriction = |kind: &str| Restriction { restriction_type: kind.into(), expires_at: None };
        let number = |r: Vec<Restriction>| WhatsappNumber { restrictions: r, ..WhatsappNumber::default() };
        let mut channel = ChannelRow::sample(Platform::Whatsapp);
        channel.whatsapp_number = serde_json::to_value(number(vec![restriction(BUSINESS_INITIATED)])).ok();
        assert!(restricting(&channel, false).is_some(), "a template after the window");
        assert!(restricting(&channel, true).is_none(), "a reply inside it");
        channel.whatsapp_number = serde_json::to_value(number(vec![restriction(CUSTOMER_INITIATED)])).ok();
        assert!(restricting(&channel, true).is_some());
        assert!(restricting(&channel, false).is_none());
        let ended = Restriction {
            expires_at: Some(Utc::now() - chrono::Duration::seconds(1)),
            ..restriction(CUSTOMER_INITIATED)
        };
        channel.whatsapp_number = serde_json::to_value(number(vec![ended])).ok();
        assert!(restricting(&channel, true).is_none(), "ran out");
        let mut page = ChannelRow::sample(Platform::Facebook);
        page.whatsapp_number = serde_json::to_value(number(vec![restriction(CUSTOMER_INITIATED)])).ok();
        assert!(restricting(&page, true).is_none(), "only WhatsApp numbers");
    }
}
