//! Channels: the Facebook Pages, Instagram accounts and WhatsApp numbers a
//! tenant has connected, who may see them, and their tokens (encrypted).
//!
//! Decisions:
//! - A page or number is held by at most one tenant (`public.channel_routes`,
//!   unique on (platform, external id)); connecting one another tenant holds
//!   is 409 `channel_taken`. Disconnecting releases it; the channel row stays
//!   (status `disconnected`) with its history unless `?purge=true`.
//! - Reconnecting updates the row in place (same id, new token).
//! - Owners and admins see every channel; agents and viewers only those they
//!   are members of.
//! - An Instagram account receives its webhooks through its Page's
//!   subscription, so disconnecting a Page keeps that subscription while the
//!   linked Instagram channel stays connected (and vice versa); a WhatsApp
//!   business account is unsubscribed when its last number goes.

pub mod connect;
pub mod hours;
pub mod meta_callbacks;
pub mod oauth;
pub mod policy;
pub mod reconcile;
pub mod send_hold;
pub mod whatsapp_account;
pub mod whatsapp_number;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit;
use crate::auth::Role;
use crate::crypto::Keyring;
use crate::db::locks::Taken;
use crate::db::schema::{channel_routes, meta_user_links};
use crate::db::tenant_schema::{channel_members, channels};
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;
use crate::secret::Secret;

crate::id_type!(
    /// A channel, inside one tenant.
    ChannelId
);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Facebook,
    Instagram,
    Whatsapp,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Facebook => "facebook",
            Platform::Instagram => "instagram",
            Platform::Whatsapp => "whatsapp",
        }
    }

    pub fn parse(s: &str) -> Option<Platform> {
        match s {
            "facebook" => Some(Platform::Facebook),
            "instagram" => Some(Platform::Instagram),
            "whatsapp" => Some(Platform::Whatsapp),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelStatus {
    Connected,
    ReauthRequired,
    Disconnected,
}

impl ChannelStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelStatus::Connected => "connected",
            ChannelStatus::ReauthRequired => "reauth_required",
            ChannelStatus::Disconnected => "disconnected",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AutoReply {
    pub enabled: bool,
    pub text: String,
    /// Answers to tap under it (`inbox::choices`): a greeting's menu, which
    /// routing rules can sort by (a tap is the customer's message). Shown
    /// only when set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
}

impl AutoReply {
    fn off() -> AutoReply {
        AutoReply { enabled: false, text: String::new(), choices: Vec::new() }
    }

    /// The text to send, when on.
    pub fn due(&self) -> Option<&str> {
        (self.enabled && !self.text.trim().is_empty()).then_some(self.text.as_str())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    pub auto_reply: AutoReply,
    pub notifications: bool,
    /// Messenger and Instagram: let human agents answer between 24 hours and
    /// 7 days after the contact's last message, with the `HUMAN_AGENT` tag
    /// (the app needs Meta's Human Agent permission).
    #[serde(default)]
    pub human_agent: bool,
    /// When the team answers ([`hours`]); `None`: always.
    #[serde(default)]
    pub business_hours: Option<hours::BusinessHours>,
    /// Sent once per closed period to a conversation whose customer writes
    /// outside `business_hours`.
    #[serde(default = "AutoReply::off")]
    pub away_reply: AutoReply,
    /// A conversation that opens with no one assigned goes to the least
    /// busy of the channel's agents online now (`inbox::ingest`).
    #[serde(default)]
    pub auto_assign: bool,
    /// Agents with this many open or pending conversations are passed over
    /// by `auto_assign`; `None`: no limit.
    #[serde(default)]
    pub auto_assign_limit: Option<u32>,
    /// A satisfaction survey sent when a conversation is resolved
    /// (`inbox::csat`).
    #[serde(default = "AutoReply::off")]
    pub csat: AutoReply,
    /// Minutes the team gives itself to answer, by priority
    /// (`inbox::waiting`).
    #[serde(default)]
    pub reply_targets: crate::inbox::waiting::ReplyTargets,
    /// The team a conversation that opens with none is handed to
    /// (`inbox::teams`); `auto_assign` then picks among its members.
    #[serde(default)]
    pub team_id: Option<crate::inbox::teams::TeamId>,
    /// Rules that sort a conversation as it opens by what the customer
    /// wrote (`inbox::routing`).
    #[serde(default)]
    pub routing: Vec<crate::inbox::routing::Rule>,
    /// Conversations idle this long are resolved (`inbox::auto_resolve`);
    /// `None`: never.
    #[serde(default)]
    pub auto_resolve: Option<crate::inbox::auto_resolve::AutoResolve>,
    /// Resolved conversations quiet this long are deleted
    /// (`inbox::retention`); `None`: kept.
    #[serde(default)]
    pub retention: Option<crate::inbox::retention::Retention>,
    /// Agents' replies end with their signature, so the customer knows who
    /// answers for the page (`inbox::messages`); a reply may say otherwise.
    #[serde(default)]
    pub sign_replies: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            auto_reply: AutoReply::off(),
            notifications: true,
            human_agent: false,
            business_hours: None,
            away_reply: AutoReply::off(),
            auto_assign: false,
            auto_assign_limit: None,
            csat: AutoReply::off(),
            reply_targets: Default::default(),
            team_id: None,
            routing: Vec::new(),
            auto_resolve: None,
            retention: None,
            sign_replies: false,
        }
    }
}

impl Settings {
    /// The away text and the moment the channel closed, when a customer
    /// writing at `now` should get it. Hours stored before a check existed
    /// and no longer valid count as always open.
    pub fn away_due(&self, now: DateTime<Utc>) -> Option<(&str, DateTime<Utc>)> {
        let text = self.away_reply.due()?;
        let since = self.business_hours.as_ref()?.closed_since(now).ok()??;
        Some((text, since))
    }
}

#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = channels)]
pub struct ChannelRow {
    pub id: i64,
    pub platform: String,
    pub external_id: String,
    pub name: String,
    pub status: String,
    pub settings: serde_json::Value,
    access_token_enc: Option<String>,
    pub parent_external_id: Option<String>,
    pub meta_user_id: Option<String>,
    pub status_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_webhook_at: Option<DateTime<Utc>>,
    /// The webhook fields we last subscribed the page with (Facebook and
    /// Instagram); `None` before this was recorded.
    pub subscribed_fields: Option<String>,
    /// What Meta says of a WhatsApp number ([`whatsapp_number`]).
    pub whatsapp_number: Option<serde_json::Value>,
    /// Its sends held while Meta rate-limits it ([`send_hold`]).
    pub send_hold: Option<serde_json::Value>,
}

/// Associated data binding a sealed token to its channel.
pub fn token_aad(platform: &str, external_id: &str) -> String {
    format!("channel:{platform}:{external_id}")
}

#[cfg(test)]
impl ChannelRow {
    /// A connected channel of `platform`, for unit tests to vary.
    pub fn sample(platform: Platform) -> ChannelRow {
        ChannelRow {
            id: 1,
            platform: platform.as_str().into(),
            external_id: "123456789012345".into(),
            name: "Sample".into(),
            status: ChannelStatus::Connected.as_str().into(),
            settings: json!({}),
            access_token_enc: None,
            parent_external_id: None,
            meta_user_id: None,
            status_reason: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            last_webhook_at: None,
            subscribed_fields: None,
            whatsapp_number: None,
            send_hold: None,
        }
    }
}

impl ChannelRow {
    pub fn channel_id(&self) -> ChannelId {
        ChannelId(self.id)
    }

    pub fn platform(&self) -> Platform {
        Platform::parse(&self.platform).unwrap_or(Platform::Facebook)
    }

    pub fn settings(&self) -> Settings {
        serde_json::from_value(self.settings.clone()).unwrap_or_default()
    }

    /// The channel's access token, if it has one.
    pub fn token(&self, keys: &Keyring) -> AppResult<Option<Secret<String>>> {
        match &self.access_token_enc {
            None => Ok(None),
            Some(enc) => Ok(Some(keys.decrypt(enc, &token_aad(&self.platform, &self.external_id))?)),
        }
    }

    pub fn sealed_token(&self) -> Option<&str> {
        self.access_token_enc.as_deref()
    }
}

/// A channel as the API shows it: never a token.
#[derive(Clone, Debug, Serialize)]
pub struct ChannelView {
    pub id: ChannelId,
    pub platform: Platform,
    pub external_id: String,
    pub name: String,
    pub status: String,
    pub settings: Settings,
    pub member_ids: Vec<UserId>,
    pub parent_external_id: Option<String>,
    /// Why it is not connected (see `mark_disconnected`'s callers and
    /// `whatsapp_account`), `None` while connected.
    pub status_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When a webhook last came for it, to the minute ([`note_webhooks`]);
    /// `None` before the first.
    pub last_webhook_at: Option<DateTime<Utc>>,
    /// What Meta says of a WhatsApp number (an extension; [`whatsapp_number`]).
    pub whatsapp_number: Option<whatsapp_number::WhatsappNumber>,
    /// Its sends held while Meta rate-limits it (an extension; [`send_hold`]);
    /// `None` when they are not.
    pub send_hold: Option<send_hold::SendHold>,
}

fn view(tc: &mut TenantConn<'_>, row: ChannelRow) -> AppResult<ChannelView> {
    let member_ids: Vec<i64> = channel_members::table
        .filter(channel_members::channel_id.eq(row.id))
        .order(channel_members::user_id)
        .select(channel_members::user_id)
        .load(tc.pg())?;
    Ok(ChannelView {
        id: row.channel_id(),
        platform: row.platform(),
        external_id: row.external_id.clone(),
        name: row.name.clone(),
        status: row.status.clone(),
        settings: row.settings(),
        member_ids: member_ids.into_iter().map(UserId).collect(),
        parent_external_id: row.parent_external_id.clone(),
        status_reason: row.status_reason.clone(),
        created_at: row.created_at,
        updated_at: row.updated_at,
        last_webhook_at: row.last_webhook_at,
        whatsapp_number: whatsapp_number::WhatsappNumber::of(&row),
        send_hold: send_hold::SendHold::of(&row, Utc::now()),
    })
}

/// Channels the caller may see, ordered by id, after `after`.
pub fn list(
    tc: &mut TenantConn<'_>,
    user: UserId,
    role: Role,
    after: Option<i64>,
    limit: i64,
) -> AppResult<Vec<ChannelView>> {
    let mut q = channels::table.select(ChannelRow::as_select()).order(channels::id).limit(limit).into_boxed();
    if let Some(a) = after {
        q = q.filter(channels::id.gt(a));
    }
    if !role.at_least(Role::Admin) {
        let mine =
            channel_members::table.filter(channel_members::user_id.eq(user.0)).select(channel_members::channel_id);
        q = q.filter(channels::id.eq_any(mine));
    }
    let rows = q.load(tc.pg())?;
    rows.into_iter().map(|r| view(tc, r)).collect()
}

pub fn find(tc: &mut TenantConn<'_>, id: ChannelId) -> AppResult<ChannelRow> {
    channels::table
        .find(id.0)
        .select(ChannelRow::as_select())
        .first(tc.pg())
        .optional()?
        .ok_or_else(|| AppError::not_found("channel"))
}

/// Records that the page of this Facebook or Instagram channel was just
/// subscribed with [`PAGE_FIELDS`](crate::meta::graph::PAGE_FIELDS) (its
/// Page and Instagram channels share the subscription).
pub fn note_subscribed(tc: &mut TenantConn<'_>, row: &ChannelRow) -> AppResult<()> {
    let page = match row.platform() {
        Platform::Facebook => row.external_id.clone(),
        Platform::Instagram => match &row.parent_external_id {
            Some(page) => page.clone(),
            None => return Ok(()),
        },
        Platform::Whatsapp => return Ok(()),
    };
    let of_page = channels::platform
        .eq(Platform::Facebook.as_str())
        .and(channels::external_id.eq(page.clone()))
        .or(channels::platform.eq(Platform::Instagram.as_str()).and(channels::parent_external_id.eq(page)));
    diesel::update(channels::table.filter(of_page))
        .set(channels::subscribed_fields.eq(crate::meta::graph::PAGE_FIELDS))
        .execute(tc.pg())?;
    Ok(())
}

/// [`find`], locking the row until the transaction ends: for Meta's
/// notices, so that a duplicate applied at the same time waits for this one.
pub fn find_locked(tc: &mut TenantConn<'_>, id: ChannelId) -> AppResult<ChannelRow> {
    channels::table
        .find(id.0)
        .select(ChannelRow::as_select())
        .for_update()
        .first(tc.pg())
        .optional()?
        .ok_or_else(|| AppError::not_found("channel"))
}

/// Several channels in one query (the processor's batch), by id.
pub fn find_many(tc: &mut TenantConn<'_>, ids: &[i64]) -> AppResult<std::collections::HashMap<i64, ChannelRow>> {
    let rows: Vec<ChannelRow> =
        channels::table.filter(channels::id.eq_any(ids)).select(ChannelRow::as_select()).load(tc.pg())?;
    Ok(rows.into_iter().map(|c| (c.id, c)).collect())
}

/// First key of the advisory locks between a channel's settings and the
/// webhook batches that act on them: a batch works out new waits' reply
/// due times from the targets and hours it read (`inbox::waiting`), which a
/// change committed meanwhile would leave stale (its `redue` sees only the
/// waits already committed).
const SETTINGS_LOCK_CLASS: i32 = crate::db::locks::LockClass::ChannelSettings.key();

/// For a webhook batch, before it reads channels `ids`: their settings stay
/// as read until it commits. Shared: batches never wait for each other,
/// only for a change of the settings ([`patch`]), which waits for them.
pub fn read_settings(tc: &mut TenantConn<'_>, ids: &[i64]) -> AppResult<()> {
    let tenant = tc.tenant().0.to_string();
    crate::db::prepared(
        "SELECT pg_catalog.pg_advisory_xact_lock_shared($1, pg_catalog.hashtext($2 || ':' || id)) \
           FROM unnest($3::bigint[]) AS id ORDER BY id",
    )
    .bind::<diesel::sql_types::Integer, _>(SETTINGS_LOCK_CLASS)
    .bind::<diesel::sql_types::Text, _>(tenant)
    .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(ids)
    .execute(tc.pg())?;
    Ok(())
}

/// For a change of channel `id`'s settings, before it reads them: waits for
/// the webhook batches acting on them ([`read_settings`]), any other
/// change (which would otherwise be lost) and a change of every channel's
/// ([`change_all_settings`]), and they for it.
fn change_settings(tc: &mut TenantConn<'_>, id: ChannelId) -> AppResult<()> {
    rules_lock(tc, "pg_advisory_xact_lock_shared")?;
    diesel::sql_query("SELECT pg_catalog.pg_advisory_xact_lock($1, pg_catalog.hashtext($2 || ':' || $3::bigint))")
        .bind::<diesel::sql_types::Integer, _>(SETTINGS_LOCK_CLASS)
        .bind::<diesel::sql_types::Text, _>(tc.tenant().0.to_string())
        .bind::<diesel::sql_types::BigInt, _>(id.0)
        .execute(tc.pg())?;
    Ok(())
}

/// Second key of the advisory locks between changes of channels'
/// settings: one per tenant, held shared by a change of one channel's
/// settings ([`patch`]) and alone by what changes every channel's rules
/// ([`change_all_settings`]).
const RULES_LOCK_CLASS: i32 = crate::db::locks::LockClass::AllChannelSettings.key();

/// No channel's settings change until the transaction ends
/// ([`change_all_settings`]): what takes rules off every channel asks for
/// it, so it cannot run without the lock.
pub struct AllSettingsHeld(());

/// For a change of every channel's settings at once (a team or a contact
/// attribute deleted, the rules naming it taken away): waits for the
/// changes of channels' settings under way, and they, and new ones, for
/// it. Taken before the team or definition itself, as a change of a
/// channel's settings takes its share before the teams and definitions its
/// rules name: one order, so the two never deadlock, and a change cannot
/// read a channel's settings before such a deletion and write them back
/// after it. Webhook batches do not take it ([`read_settings`] is
/// another lock): a deletion, however many rows it clears, never holds
/// up the tenant's webhooks, nor they it.
pub fn change_all_settings(tc: &mut TenantConn<'_>) -> AppResult<AllSettingsHeld> {
    rules_lock(tc, "pg_advisory_xact_lock")?;
    Ok(AllSettingsHeld(()))
}

fn rules_lock(tc: &mut TenantConn<'_>, function: &str) -> AppResult<()> {
    diesel::sql_query(format!("SELECT pg_catalog.{function}($1, pg_catalog.hashtext($2))"))
        .bind::<diesel::sql_types::Integer, _>(RULES_LOCK_CLASS)
        .bind::<diesel::sql_types::Text, _>(tc.tenant().0.to_string())
        .execute(tc.pg())?;
    Ok(())
}

/// Notes that webhooks came for `ids` (the processor, in its tenant
/// transaction). To the minute: a channel's row is written at most once a
/// minute however busy it is, and never waited for (one locked by another
/// processor or a request is being written anyway, or will be next minute).
pub fn note_webhooks(tc: &mut TenantConn<'_>, ids: &[i64]) -> AppResult<()> {
    crate::db::prepared(
        "UPDATE channels SET last_webhook_at = now() WHERE id IN ( \
             SELECT id FROM channels WHERE id = ANY($1) \
                AND (last_webhook_at IS NULL OR last_webhook_at < now() - interval '1 minute') \
                FOR UPDATE SKIP LOCKED)",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(ids)
    .execute(tc.pg())?;
    Ok(())
}

/// Whether `user` may see the channel (admins see all).
pub fn can_see(tc: &mut TenantConn<'_>, user: UserId, role: Role, id: ChannelId) -> AppResult<bool> {
    if role.at_least(Role::Admin) {
        return Ok(true);
    }
    let n: i64 = channel_members::table
        .filter(channel_members::channel_id.eq(id.0))
        .filter(channel_members::user_id.eq(user.0))
        .count()
        .get_result(tc.pg())?;
    Ok(n > 0)
}

/// The channels whose settings hold `key` as an object, with it as
/// `check` takes it (for the clock's rules: `inbox::auto_resolve`,
/// `inbox::retention`). Written by [`patch`], checked there; one that does
/// not read or check now is passed over rather than taken for a rule.
pub fn with_setting<T: serde::de::DeserializeOwned>(
    tc: &mut TenantConn<'_>,
    key: &'static str,
    check: fn(T) -> AppResult<T>,
) -> AppResult<Vec<(i64, T)>> {
    use diesel::sql_types::{Bool, Jsonb};
    let found: Vec<(i64, serde_json::Value)> = channels::table
        .filter(diesel::dsl::sql::<Bool>(&format!("jsonb_typeof(settings->'{key}') = 'object'")))
        .order(channels::id)
        .select((channels::id, diesel::dsl::sql::<Jsonb>(&format!("settings->'{key}'"))))
        .load(tc.pg())?;
    Ok(found
        .into_iter()
        .filter_map(|(id, rule)| serde_json::from_value::<T>(rule).ok().and_then(|r| check(r).ok()).map(|r| (id, r)))
        .collect())
}

pub fn get_view(tc: &mut TenantConn<'_>, id: ChannelId) -> AppResult<ChannelView> {
    let row = find(tc, id)?;
    view(tc, row)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    pub auto_reply: Option<AutoReplyPatch>,
    pub notifications: Option<bool>,
    pub human_agent: Option<bool>,
    /// Left out: unchanged; `null`: no hours (always open); else replaced.
    #[serde(default, deserialize_with = "crate::patch::present")]
    pub business_hours: Option<Option<hours::BusinessHours>>,
    pub away_reply: Option<AutoReplyPatch>,
    pub auto_assign: Option<bool>,
    #[serde(default, deserialize_with = "crate::patch::present")]
    pub auto_assign_limit: Option<Option<u32>>,
    pub csat: Option<AutoReplyPatch>,
    /// Left out: unchanged; `null`: no targets; else replaced whole.
    #[serde(default, deserialize_with = "crate::patch::present")]
    pub reply_targets: Option<Option<crate::inbox::waiting::ReplyTargets>>,
    /// Left out: unchanged; `null`: none.
    #[serde(default, deserialize_with = "crate::patch::present")]
    pub team_id: Option<Option<crate::inbox::teams::TeamId>>,
    /// Left out: unchanged; else replaced whole (`[]`: none).
    pub routing: Option<Vec<crate::inbox::routing::Rule>>,
    /// Left out: unchanged; `null`: off; else replaced whole.
    #[serde(default, deserialize_with = "crate::patch::present")]
    pub auto_resolve: Option<Option<crate::inbox::auto_resolve::AutoResolve>>,
    /// Left out: unchanged; `null`: kept; else replaced whole.
    #[serde(default, deserialize_with = "crate::patch::present")]
    pub retention: Option<Option<crate::inbox::retention::Retention>>,
    pub sign_replies: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoReplyPatch {
    pub enabled: Option<bool>,
    pub text: Option<String>,
    /// Replaces them; `[]` takes them away.
    pub choices: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelPatch {
    pub name: Option<String>,
    pub settings: Option<SettingsPatch>,
}

pub const MAX_AUTO_REPLY_CHARS: usize = 1000;
pub const MOST_AUTO_ASSIGN_LIMIT: u32 = 10_000;

impl AutoReplyPatch {
    fn apply_to(self, reply: &mut AutoReply, field: &str, platform: Platform) -> AppResult<()> {
        if let Some(choices) = self.choices {
            reply.choices = match choices.is_empty() {
                true => Vec::new(),
                false => crate::inbox::choices::checked(platform, &choices)
                    .map_err(|e| AppError::invalid("invalid_settings", format!("{field}.{}", e.message)))?,
            };
        }
        if let Some(t) = self.text {
            if t.chars().count() > MAX_AUTO_REPLY_CHARS {
                return Err(AppError::invalid(
                    "invalid_settings",
                    format!("{field}.text must be at most {MAX_AUTO_REPLY_CHARS} characters"),
                ));
            }
            reply.text = t;
        }
        if let Some(e) = self.enabled {
            reply.enabled = e;
        }
        Ok(())
    }
}

/// `PATCH /api/channels/{id}`; `online` (the tenant's members online now)
/// take what waits with no one on it when `auto_assign` is turned on.
pub fn patch(
    tc: &mut TenantConn<'_>,
    actor: UserId,
    id: ChannelId,
    p: ChannelPatch,
    online: &[UserId],
) -> AppResult<ChannelView> {
    // Read after the lock: this statement's snapshot has what committed before.
    change_settings(tc, id)?;
    let row = find(tc, id)?;
    let mut settings = row.settings();
    let name = match p.name {
        Some(n) => {
            let n = n.trim().to_string();
            if n.is_empty() || n.chars().count() > 200 {
                return Err(AppError::invalid("invalid_name", "name must be 1 to 200 characters"));
            }
            n
        }
        None => row.name.clone(),
    };
    if let Some(s) = p.settings {
        if let Some(n) = s.notifications {
            settings.notifications = n;
        }
        if let Some(h) = s.human_agent {
            settings.human_agent = h;
        }
        if let Some(a) = s.auto_assign {
            settings.auto_assign = a;
        }
        if let Some(sign) = s.sign_replies {
            settings.sign_replies = sign;
        }
        if let Some(limit) = s.auto_assign_limit {
            if limit.is_some_and(|n| !(1..=MOST_AUTO_ASSIGN_LIMIT).contains(&n)) {
                return Err(AppError::invalid(
                    "invalid_settings",
                    format!("auto_assign_limit is 1 to {MOST_AUTO_ASSIGN_LIMIT}, or null for no limit"),
                ));
            }
            settings.auto_assign_limit = limit;
        }
        if let Some(a) = s.auto_reply {
            a.apply_to(&mut settings.auto_reply, "auto_reply", row.platform())?;
        }
        if let Some(a) = s.away_reply {
            a.apply_to(&mut settings.away_reply, "away_reply", row.platform())?;
        }
        if let Some(a) = s.csat {
            if let Some(choices) = &a.choices {
                crate::inbox::csat::check_choices(choices)?;
            }
            a.apply_to(&mut settings.csat, "csat", row.platform())?;
        }
        if let Some(h) = s.business_hours {
            settings.business_hours = h.map(hours::BusinessHours::checked).transpose()?;
        }
        if let Some(t) = s.reply_targets {
            settings.reply_targets = t.map(|t| t.checked()).transpose()?.unwrap_or_default();
        }
        if let Some(t) = s.team_id {
            settings.team_id =
                t.map(|t| crate::inbox::teams::existing(tc, t)).transpose()?.map(crate::inbox::teams::TeamId);
        }
        if let Some(rules) = s.routing {
            settings.routing = crate::inbox::routing::checked(tc, rules, row.platform())?;
        }
        if let Some(a) = s.auto_resolve {
            settings.auto_resolve = a.map(crate::inbox::auto_resolve::AutoResolve::checked).transpose()?;
        }
        if let Some(r) = s.retention {
            settings.retention = r.map(crate::inbox::retention::Retention::checked).transpose()?;
        }
    }
    if settings.auto_reply.enabled && settings.auto_reply.text.trim().is_empty() {
        return Err(AppError::invalid("invalid_settings", "an enabled auto_reply needs a text"));
    }
    if settings.away_reply.enabled && settings.away_reply.text.trim().is_empty() {
        return Err(AppError::invalid("invalid_settings", "an enabled away_reply needs a text"));
    }
    if settings.csat.enabled && settings.csat.text.trim().is_empty() {
        return Err(AppError::invalid("invalid_settings", "an enabled csat needs a text"));
    }
    if settings.away_reply.enabled && settings.business_hours.is_none() {
        return Err(AppError::invalid("invalid_settings", "an enabled away_reply needs business_hours"));
    }
    if settings.reply_targets.only_business_hours && settings.business_hours.is_none() {
        return Err(AppError::invalid("invalid_settings", "reply_targets.only_business_hours needs business_hours"));
    }
    let settings_json = serde_json::to_value(&settings).map_err(AppError::internal)?;
    let before = row.settings();
    // A retried or repeated PATCH changes nothing: no write, no event.
    if name == row.name && settings_json == serde_json::to_value(&before).map_err(AppError::internal)? {
        return get_view(tc, id);
    }
    // The waiting conversations' due times follow the targets and hours
    // (each announced, in the one NOTIFY of this change).
    let mut log = crate::inbox::events::EventLog::new();
    if (&settings.reply_targets, &settings.business_hours) != (&before.reply_targets, &before.business_hours) {
        crate::inbox::waiting::redue(tc, &mut log, id.0, &settings)?;
    }
    diesel::update(channels::table.find(id.0))
        .set((
            channels::name.eq(&name),
            channels::settings.eq(&settings_json),
            channels::updated_at.eq(diesel::dsl::now),
        ))
        .execute(tc.pg())?;
    audit::record(
        tc,
        Some(actor),
        "channel.updated",
        "channel",
        Some(id.to_string()),
        json!({"name": name, "settings": settings_json}),
    )?;
    // Turned off: what waited for the channel to hand it out waits no more,
    // unless its team hands it out. Turned on: what no rule covered is
    // handed out (among `online`) as the channel's rule now would
    // (`inbox::hand_out`; read as now written).
    let this = crate::inbox::hand_out::Waiting::OfChannel(id.0);
    if before.auto_assign && !settings.auto_assign {
        crate::inbox::hand_out::settle_all(tc, &mut log, this)?;
    } else if !before.auto_assign && settings.auto_assign {
        crate::inbox::hand_out::take_up(tc, &mut log, this, online)?;
    }
    let view = announce_settings(tc, &mut log, id)?;
    log.notify(tc)?;
    Ok(view)
}

/// The channel as it is now, its name and settings announced in `log`
/// (`channel.updated`), so the live inbox shows them at once.
pub fn announce_settings(
    tc: &mut TenantConn<'_>,
    log: &mut crate::inbox::events::EventLog,
    id: ChannelId,
) -> AppResult<ChannelView> {
    let view = get_view(tc, id)?;
    log.append(
        tc,
        "channel.updated",
        Some(id.0),
        None,
        json!({"id": id.to_string(), "status": view.status, "status_reason": view.status_reason,
            "name": view.name, "settings": view.settings}),
    )?;
    Ok(view)
}

/// Waits for, then holds until the transaction ends, the right to change
/// channel `id`'s member list ([`set_members`], [`purge`]).
fn hold_members_list(tc: &mut TenantConn<'_>, id: ChannelId) -> AppResult<()> {
    let key = format!("{}:{}", tc.tenant().0, id.0);
    crate::db::locks::hold(tc.pg(), crate::db::locks::LockClass::ChannelMembers, &key)?;
    Ok(())
}

/// Replaces the channel's member list; every user must be a member of the tenant.
pub fn set_members(
    tc: &mut TenantConn<'_>,
    log: &mut crate::inbox::events::EventLog,
    actor: UserId,
    id: ChannelId,
    users: &[UserId],
    online: &[UserId],
) -> AppResult<ChannelView> {
    find(tc, id)?;
    // Two lists of one channel at once take turns: each replaces what the
    // other left (the later wins), where both would delete the same rows
    // and the second insert would find the first's (409).
    hold_members_list(tc, id)?;
    let ids = crate::auth::members::all_members(tc, users)?;
    // The same list again (a retry): nothing to write, audit or tell.
    let current: Vec<i64> = channel_members::table
        .filter(channel_members::channel_id.eq(id.0))
        .order(channel_members::user_id)
        .select(channel_members::user_id)
        .load(tc.pg())?;
    if current == ids {
        return get_view(tc, id);
    }
    // Only those who leave and those who join: the rows of those who stay
    // are left alone, so an assignment of one of them at this moment
    // (`conversations::answerer_held`) neither waits for the change nor
    // finds them gone.
    let gone: Vec<i64> = current.iter().copied().filter(|u| !ids.contains(u)).collect();
    diesel::delete(
        channel_members::table
            .filter(channel_members::channel_id.eq(id.0))
            .filter(channel_members::user_id.eq_any(&gone)),
    )
    .execute(tc.pg())?;
    let rows: Vec<_> = ids
        .iter()
        .filter(|u| !current.contains(u))
        .map(|u| (channel_members::channel_id.eq(id.0), channel_members::user_id.eq(*u)))
        .collect();
    diesel::insert_into(channel_members::table).values(&rows).execute(tc.pg())?;
    // Ids are strings in every answer, the audit log's details too.
    let listed: Vec<String> = ids.iter().map(i64::to_string).collect();
    audit::record(
        tc,
        Some(actor),
        "channel.members_set",
        "channel",
        Some(id.to_string()),
        json!({"user_ids": listed}),
    )?;
    // Someone who no longer sees the channel (owners and admins see every
    // one) answers none of its customers: theirs go back to the queue
    // (or to someone online, where the channel hands them out).
    let mut unseeing = Vec::new();
    for gone in &gone {
        if !crate::auth::members::role_of(tc, UserId(*gone))?.is_some_and(|r| r.at_least(Role::Admin)) {
            unseeing.push(UserId(*gone));
        }
    }
    // Every conversation handed back at once, in id order, as a bulk
    // change takes them.
    let which = crate::inbox::conversations::Released::Of(id.0);
    crate::inbox::conversations::lock_answered(tc, &unseeing, which)?;
    for gone in unseeing {
        crate::inbox::conversations::release(tc, log, Some(actor), gone, which, "channel_left", online)?;
        crate::mail::withdraw_unseen(tc, gone, crate::mail::NO_LONGER_SEEN)?;
    }
    // Their unread notifications of it count, or no longer do.
    let moved: Vec<UserId> = current
        .iter()
        .filter(|u| !ids.contains(u))
        .chain(ids.iter().filter(|u| !current.contains(u)))
        .map(|u| UserId(*u))
        .collect();
    crate::inbox::notifications::sight_changed(tc, log, &moved, id)?;
    // The open sockets of those whose lists changed widen or narrow to the
    // new channel sets; the others' go on untouched.
    if !moved.is_empty() {
        let t = tc.tenant().0;
        let u = (moved.len() <= crate::realtime::bus::ACL_NAMED_MAX).then(|| moved.iter().map(|u| u.0).collect());
        crate::realtime::bus::notify_live(tc.pg(), &crate::realtime::LiveMsg::Acl { t, u })?;
    }
    get_view(tc, id)
}

/// Takes a member who left the tenant off every channel's list: the lists
/// name members only (a list read and sent back must not name a stranger),
/// and someone added again later starts with no channel.
pub fn forget_member(tc: &mut TenantConn<'_>, user: UserId) -> AppResult<()> {
    diesel::delete(channel_members::table.filter(channel_members::user_id.eq(user.0))).execute(tc.pg())?;
    Ok(())
}

/// Everything needed to connect (or reconnect) one channel.
pub struct NewChannel {
    pub platform: Platform,
    pub external_id: String,
    pub name: String,
    pub token: Secret<String>,
    pub parent_external_id: Option<String>,
    pub meta_user_id: Option<String>,
}

/// Which tenant holds a page or number, if any.
pub fn holder(conn: &mut diesel::PgConnection, platform: Platform, external_id: &str) -> AppResult<Option<i64>> {
    Ok(channel_routes::table
        .filter(channel_routes::platform.eq(platform.as_str()))
        .filter(channel_routes::external_id.eq(external_id))
        .select(channel_routes::tenant_id)
        .first(conn)
        .optional()?)
}

fn taken(platform: Platform, external_id: &str) -> AppError {
    AppError::conflict("channel_taken", format!("{} {external_id} is connected to another tenant", platform.as_str()))
}

/// Inserts or updates the channel, claims its route, and records who
/// connected it; 409 `channel_taken` when another tenant holds it.
pub fn upsert_connected(
    tc: &mut TenantConn<'_>,
    keys: &Keyring,
    actor: Option<UserId>,
    c: &NewChannel,
) -> AppResult<ChannelRow> {
    let tenant = tc.tenant().0;
    if holder(tc.pg(), c.platform, &c.external_id)?.is_some_and(|t| t != tenant) {
        return Err(taken(c.platform, &c.external_id));
    }
    let sealed = keys.encrypt(&c.token, &token_aad(c.platform.as_str(), &c.external_id));
    let existed = channels::table
        .filter(channels::platform.eq(c.platform.as_str()))
        .filter(channels::external_id.eq(&c.external_id))
        .count()
        .get_result::<i64>(tc.pg())?
        > 0;
    let row: ChannelRow = diesel::insert_into(channels::table)
        .values((
            channels::platform.eq(c.platform.as_str()),
            channels::external_id.eq(&c.external_id),
            channels::name.eq(&c.name),
            channels::access_token_enc.eq(&sealed),
            channels::parent_external_id.eq(&c.parent_external_id),
            channels::meta_user_id.eq(&c.meta_user_id),
        ))
        .on_conflict((channels::platform, channels::external_id))
        .do_update()
        .set((
            channels::name.eq(&c.name),
            channels::access_token_enc.eq(&sealed),
            channels::status.eq(ChannelStatus::Connected.as_str()),
            channels::status_reason.eq(None::<String>),
            channels::parent_external_id.eq(&c.parent_external_id),
            channels::meta_user_id.eq(&c.meta_user_id),
            channels::updated_at.eq(diesel::dsl::now),
        ))
        .returning(ChannelRow::as_returning())
        .get_result(tc.pg())?;
    diesel::insert_into(channel_routes::table)
        .values((
            channel_routes::platform.eq(c.platform.as_str()),
            channel_routes::external_id.eq(&c.external_id),
            channel_routes::tenant_id.eq(tenant),
            channel_routes::channel_id.eq(row.id),
        ))
        .on_conflict_do_nothing()
        .execute(tc.pg())?;
    // A concurrent connect by another tenant may have won the route.
    if holder(tc.pg(), c.platform, &c.external_id)? != Some(tenant) {
        return Err(taken(c.platform, &c.external_id));
    }
    // The parent may have changed (a number moved to another business
    // account): account-wide webhooks find the channel by it.
    diesel::update(
        channel_routes::table
            .filter(channel_routes::platform.eq(c.platform.as_str()))
            .filter(channel_routes::external_id.eq(&c.external_id)),
    )
    .set(channel_routes::parent_external_id.eq(&c.parent_external_id))
    .execute(tc.pg())?;
    if let Some(m) = &c.meta_user_id {
        diesel::insert_into(meta_user_links::table)
            .values((meta_user_links::meta_user_id.eq(m), meta_user_links::tenant_id.eq(tenant)))
            .on_conflict_do_nothing()
            .execute(tc.pg())?;
    }
    channel_event(tc, row.id, ChannelStatus::Connected, None)?;
    let action = if existed { "channel.reconnected" } else { "channel.connected" };
    audit::record(
        tc,
        actor,
        action,
        "channel",
        Some(row.id.to_string()),
        json!({"platform": c.platform, "external_id": c.external_id, "name": c.name}),
    )?;
    Ok(row)
}

/// Marks a channel disconnected: token dropped, route released, history kept.
/// One disconnected already stays as it is, with the reason it has: a
/// second disconnect (the admin's again, Meta's retried webhook, or both
/// at once) records and announces nothing.
pub fn mark_disconnected(tc: &mut TenantConn<'_>, actor: Option<UserId>, id: ChannelId, reason: &str) -> AppResult<()> {
    let row = find(tc, id)?;
    let changed =
        diesel::update(channels::table.find(id.0).filter(channels::status.ne(ChannelStatus::Disconnected.as_str())))
            .set((
                channels::status.eq(ChannelStatus::Disconnected.as_str()),
                channels::status_reason.eq(reason),
                channels::access_token_enc.eq(None::<String>),
                channels::updated_at.eq(diesel::dsl::now),
            ))
            .execute(tc.pg())?;
    if changed == 0 {
        return Ok(());
    }
    release_route(tc, &row)?;
    audit::record(tc, actor, "channel.disconnected", "channel", Some(id.to_string()), json!({"reason": reason}))?;
    channel_event(tc, id.0, ChannelStatus::Disconnected, Some(reason))?;
    Ok(())
}

fn release_route(tc: &mut TenantConn<'_>, row: &ChannelRow) -> AppResult<()> {
    let tenant = tc.tenant().0;
    diesel::delete(
        channel_routes::table
            .filter(channel_routes::platform.eq(&row.platform))
            .filter(channel_routes::external_id.eq(&row.external_id))
            .filter(channel_routes::tenant_id.eq(tenant)),
    )
    .execute(tc.pg())?;
    Ok(())
}

/// Times a purge takes the channel's conversations again when one was
/// started on it as it took them; past that, 503 `retry`.
const PURGE_ATTEMPTS: usize = 5;

/// Deletes the channel and, through cascades, its history (and what waited
/// for messages that had not come, [`crate::inbox::early`]); and empties its
/// events in the log, which hold copies of its messages and conversations
/// and would otherwise be replayed to a socket resuming from before the
/// purge until the retention pruned them. They are redacted rather than
/// deleted: their numbers stay, so a purge at the head of the log does not
/// look like retention and send resuming clients `resync_required`
/// ([`events::redact_channel`](crate::inbox::events::redact_channel)).
/// Open sockets are told (`channel.updated` with `deleted: true`); notice
/// mails still queued that quote its conversations are withdrawn.
pub fn purge(tc: &mut TenantConn<'_>, actor: Option<UserId>, id: ChannelId) -> AppResult<()> {
    let row = find(tc, id)?;
    // Taken before the channel, in the order the writers of its
    // conversations take them: a change of its settings (its lock, then
    // the conversations whose due times move, the channel, and those it
    // hands out or back), a change of its member list (its lock, then the
    // conversations it hands back), then every conversation in id order
    // (a webhook batch holds one, then writes a row naming the channel).
    // The channel's deletion first, then its conversations by the cascade
    // (in the order of the (channel, contact) index), deadlocked with
    // each. After them the channel itself (`FOR UPDATE`, which no one
    // starting a conversation on it or writing a message to it gets past): one
    // started between the two (by an agent, a broadcast) would be taken
    // last by the cascade, out of order, while a change holding it waited
    // for the channel (writing a message); so then all are let go and
    // taken again, that one in its turn (`db::locks::in_turn`). The
    // settings' lock also waits for every webhook batch acting on the
    // channel (`read_settings`), and later ones wait for the purge: the
    // cascade deletes messages in its own order, and none of them is held
    // by a batch (which takes them in id order, `ingest::lock_named`).
    change_settings(tc, id)?;
    hold_members_list(tc, id)?;
    let taken = crate::db::locks::in_turn(tc.pg(), PURGE_ATTEMPTS, |conn| -> AppResult<Taken<()>> {
        use crate::db::tenant_schema::conversations as c;
        let held: Vec<i64> =
            c::table.filter(c::channel_id.eq(id.0)).order(c::id).select(c::id).for_update().load(conn)?;
        // Purged meanwhile by a purge sent at the same time: as a moment later.
        let there: Option<i64> = channels::table.find(id.0).select(channels::id).for_update().first(conn).optional()?;
        there.ok_or_else(|| AppError::not_found("channel"))?;
        let late = c::table.filter(c::channel_id.eq(id.0)).filter(c::id.ne_all(&held)).select(c::id);
        let late: Option<i64> = late.first(conn).optional()?;
        Ok(if late.is_some() { Taken::Late } else { Taken::All(()) })
    })?;
    if taken.is_none() {
        return Err(AppError::concurrent_update());
    }
    release_route(tc, &row)?;
    // Held since the attempt above found it: there to delete.
    diesel::delete(channels::table.find(id.0)).execute(tc.pg())?;
    // Notice mails still queued quote its customers.
    crate::mail::withdraw_quoting_gone(tc, "withdrawn: the channel was purged")?;
    crate::inbox::early::forget_channel(tc, id.0)?;
    crate::inbox::events::redact_channel(tc, id.0)?;
    // Open inboxes drop it: disconnected, and gone for good (`deleted`).
    channel_updated(
        tc,
        id.0,
        json!({"id": id.to_string(), "status": ChannelStatus::Disconnected.as_str(), "status_reason": "purged", "deleted": true}),
    )?;
    audit::record(
        tc,
        actor,
        "channel.purged",
        "channel",
        Some(id.to_string()),
        json!({"platform": row.platform, "external_id": row.external_id}),
    )?;
    Ok(())
}

/// Logs `channel.updated` (`{id, status, status_reason}`) for open sockets.
fn channel_event(tc: &mut TenantConn<'_>, id: i64, status: ChannelStatus, reason: Option<&str>) -> AppResult<()> {
    channel_updated(tc, id, json!({"id": id.to_string(), "status": status.as_str(), "status_reason": reason}))
}

/// Logs `channel.updated` with `data` for the channel's sockets.
pub(crate) fn channel_updated(tc: &mut TenantConn<'_>, id: i64, data: serde_json::Value) -> AppResult<()> {
    let mut log = crate::inbox::events::EventLog::new();
    log.append(tc, "channel.updated", Some(id), None, data)?;
    log.notify(tc)
}

/// Meta rejected the channel's token: it needs a new connect. Only a
/// connected channel changes (a disconnected one stays disconnected).
pub fn mark_reauth_required(tc: &mut TenantConn<'_>, id: ChannelId, reason: &str) -> AppResult<bool> {
    let n = diesel::update(channels::table.find(id.0).filter(channels::status.eq(ChannelStatus::Connected.as_str())))
        .set((
            channels::status.eq(ChannelStatus::ReauthRequired.as_str()),
            channels::status_reason.eq(reason),
            channels::updated_at.eq(diesel::dsl::now),
        ))
        .execute(tc.pg())?;
    if n > 0 {
        audit::record(tc, None, "channel.reauth_required", "channel", Some(id.to_string()), json!({"reason": reason}))?;
        channel_event(tc, id.0, ChannelStatus::ReauthRequired, Some(reason))?;
    }
    Ok(n > 0)
}

/// How many of the newest audit entries Meta's notices about a channel are
/// checked against (for a duplicate, or a newer notice already applied).
pub const NOTICE_WINDOW: i64 = 500;

/// What a notice from Meta about a channel is, against those recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// Recorded already (Meta's retry or duplicate): nothing to do.
    Duplicate,
    /// Older than a recorded notice of its kind (a retry delivered late):
    /// recorded for the admins, but it changes nothing.
    Late,
    /// Recorded; it is the newest of its kind: apply it.
    Fresh,
}

/// Records Meta's notice (`details`, an object) as `action` in the channel's
/// audit log, with its time `at` added, once. Among the notices `ordered` picks (those
/// that change the channel and undo each other, like a block and an
/// unblock), one older than a recorded one is [`Notice::Late`].
pub fn record_notice(
    tc: &mut TenantConn<'_>,
    id: ChannelId,
    action: &str,
    mut details: serde_json::Value,
    at: chrono::DateTime<chrono::Utc>,
    ordered: impl Fn(&serde_json::Value) -> bool,
) -> AppResult<Notice> {
    if let Some(fields) = details.as_object_mut() {
        fields.insert("at".into(), json!(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)));
    }
    let target = id.to_string();
    let recent = audit::recent(tc, action, &target, NOTICE_WINDOW)?;
    if recent.contains(&details) {
        return Ok(Notice::Duplicate);
    }
    let late = ordered(&details)
        && recent
            .iter()
            .filter(|d| ordered(d))
            .filter_map(|d| d["at"].as_str().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok()))
            .any(|newer| newer > at);
    audit::record(tc, None, action, "channel", Some(target), details)?;
    Ok(if late { Notice::Late } else { Notice::Fresh })
}

/// Why Meta, not a token, holds a channel back; only Meta lifts these (or a
/// new connect), never the channel check, since the token still works.
pub const HELD_BY_META: [&str; 2] = [whatsapp_account::ACCOUNT_DISABLED, policy::POLICY_BLOCK];

/// Meta holds the channel back (`reason`, one of [`HELD_BY_META`]):
/// replies would fail. `reauth_required` with that reason, also when a
/// token problem had already made it so (Meta's hold is what matters now).
pub fn mark_held(tc: &mut TenantConn<'_>, id: ChannelId, reason: &str) -> AppResult<()> {
    if mark_reauth_required(tc, id, reason)? {
        return Ok(());
    }
    let n = diesel::update(
        channels::table
            .find(id.0)
            .filter(channels::status.eq(ChannelStatus::ReauthRequired.as_str()))
            .filter(channels::status_reason.is_distinct_from(reason)),
    )
    .set((channels::status_reason.eq(reason), channels::updated_at.eq(diesel::dsl::now)))
    .execute(tc.pg())?;
    if n > 0 {
        channel_event(tc, id.0, ChannelStatus::ReauthRequired, Some(reason))?;
    }
    Ok(())
}

/// A `reauth_required` channel works again: `connected`, and open inboxes
/// are told. With `reason`, only a channel held back for that reason.
/// Returns whether it changed.
pub fn restore_connected(tc: &mut TenantConn<'_>, id: ChannelId, reason: Option<&str>) -> AppResult<bool> {
    let row = find(tc, id)?;
    if row.status != ChannelStatus::ReauthRequired.as_str()
        || reason.is_some_and(|r| row.status_reason.as_deref() != Some(r))
    {
        return Ok(false);
    }
    let n =
        diesel::update(channels::table.find(id.0).filter(channels::status.eq(ChannelStatus::ReauthRequired.as_str())))
            .set((
                channels::status.eq(ChannelStatus::Connected.as_str()),
                channels::status_reason.eq(None::<String>),
                channels::updated_at.eq(diesel::dsl::now),
            ))
            .execute(tc.pg())?;
    if n > 0 {
        channel_event(tc, id.0, ChannelStatus::Connected, None)?;
    }
    Ok(n > 0)
}

/// Other connected channels of this tenant that share `parent` (a page's
/// Instagram account, a business account's numbers) or are that parent.
pub fn dependents_connected(
    tc: &mut TenantConn<'_>,
    except: ChannelId,
    platform: Platform,
    external_or_parent: &str,
) -> AppResult<i64> {
    let live = [ChannelStatus::Connected.as_str(), ChannelStatus::ReauthRequired.as_str()];
    let q = channels::table
        .filter(channels::id.ne(except.0))
        .filter(channels::status.eq_any(live))
        .filter(channels::parent_external_id.eq(external_or_parent).or(channels::external_id.eq(external_or_parent)));
    let n = match platform {
        Platform::Whatsapp => q.filter(channels::platform.eq("whatsapp")).count().get_result(tc.pg())?,
        _ => q.filter(channels::platform.ne("whatsapp")).count().get_result(tc.pg())?,
    };
    Ok(n)
}

/// Re-seals every token of this tenant with the keyring's current key.
/// Returns how many values changed.
pub fn reencrypt_tokens(tc: &mut TenantConn<'_>, keys: &Keyring) -> AppResult<usize> {
    use crate::db::tenant_schema::pending_selections as ps;
    let current = keys.current_key_id().to_string();
    let mut changed = 0;
    let rows: Vec<(i64, String, String, String)> = channels::table
        .filter(channels::access_token_enc.is_not_null())
        .select((channels::id, channels::platform, channels::external_id, channels::access_token_enc.assume_not_null()))
        .load(tc.pg())?;
    for (id, platform, external_id, sealed) in rows {
        if Keyring::key_id_of(&sealed) == Some(current.as_str()) {
            continue;
        }
        let aad = token_aad(&platform, &external_id);
        let token = keys.decrypt(&sealed, &aad)?;
        diesel::update(channels::table.find(id))
            .set(channels::access_token_enc.eq(keys.encrypt(&token, &aad)))
            .execute(tc.pg())?;
        changed += 1;
    }
    let pending: Vec<(String, String)> = ps::table.select((ps::id, ps::user_token_enc)).load(tc.pg())?;
    for (id, sealed) in pending {
        if Keyring::key_id_of(&sealed) == Some(current.as_str()) {
            continue;
        }
        let aad = oauth::selection_aad(&id);
        let token = keys.decrypt(&sealed, &aad)?;
        diesel::update(ps::table.find(&id)).set(ps::user_token_enc.eq(keys.encrypt(&token, &aad))).execute(tc.pg())?;
        changed += 1;
    }
    Ok(changed)
}
