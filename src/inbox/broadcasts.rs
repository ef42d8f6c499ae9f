//! Broadcasts: one approved WhatsApp template sent to many customers of
//! one number (an extension; a sale, a change of opening hours, a
//! reminder to everyone labelled `renewal`), each message filled in for
//! its customer.
//!
//! Decisions:
//! - WhatsApp only (`whatsapp_only`), with a template only: a broadcast
//!   reaches customers whose 24-hour window has mostly closed, and on
//!   Messenger and Instagram a business may not write first. Admins and
//!   owners make, read and cancel them; agents answer what comes back.
//! - Recipients: `to.phone_numbers` (numbers as `POST /api/conversations`
//!   takes them, `inbox::outreach`), `to.label` (the number's customers
//!   whose conversation carries the label) and `to.attribute` (the
//!   number's customers with a contact attribute, `key` or `key:value` as
//!   `GET /api/contacts?attribute=` reads it, `inbox::attributes`): any
//!   of them, everyone they name together, each number once, 1 to
//!   [`MOST_RECIPIENTS`]. Fixed when the broadcast is made, a scheduled
//!   one too (the admin sees who it will reach): a label or attribute
//!   given later is not followed. More recipients outside their 24-hour
//!   window than the number's messaging limit (Meta's, per business
//!   portfolio, `channels::whatsapp_number`) is refused
//!   (`over_messaging_limit`): Meta would fail the rest. Customers who
//!   wrote in the last 24 hours do not count, as Meta counts; the
//!   conversations the business started elsewhere that day, or on the
//!   portfolio's other numbers, are not known here and are not counted.
//! - Parameters may hold variables (`inbox::variables`: `{{contact.
//!   first_name | there}}`, an attribute…), filled in for each customer
//!   as their message is queued, with what the team knows of them then.
//!   One that comes out empty or unsendable skips that customer
//!   (`invalid_template_parameters`), not the broadcast. A template whose
//!   header is a file is refused (`template_not_supported`).
//! - Checked before anything is written, as writing first is: the
//!   template with Meta (approved, of a kind sent from here, its
//!   parameters), a restricted number (409 `messaging_restricted`). A
//!   `client_id` makes a retry safe: the same admin, name, channel and
//!   template get the broadcast made the first time (200), anything else
//!   under it a 409 `client_id_reused`.
//! - At most [`MOST_WAITING`] of a tenant's broadcasts are scheduled or
//!   sending at once (409 `too_many_broadcasts`; a retry of one of them is
//!   still answered with it): each holds up to [`MOST_RECIPIENTS`] rows and
//!   queues a job, and a tenant's queue is shared with its agents' replies.
//! - Scheduled with `send_at` (RFC 3339, at most [`MOST_DAYS_AHEAD`] days
//!   ahead; a time up to a minute past is taken as now, an earlier one
//!   refused, `invalid_send_at`): the broadcast is `scheduled` and its
//!   first job is due then; everything else is checked when it is made,
//!   and the template with Meta again when it starts. `PATCH
//!   /api/broadcasts/{id}` `{send_at}` moves it (`null`: now) while it is
//!   still scheduled (409 `broadcast_not_scheduled` after); cancelling it
//!   skips everyone. Audited `broadcast.rescheduled`.
//! - Each customer's message goes where writing first would put it
//!   (`outreach::known_contact`): their conversation on the number, left
//!   as it is (an open one stays open), or a new one, made `resolved` and
//!   unassigned in the channel's team, so a thousand messages out do not
//!   fill the open tab; a customer who answers reopens it as always. The
//!   message is the business's own (no agent): it answers no waiting
//!   customer. Its `client_id` is `broadcast-<id>`, once per conversation.
//!   A blocked customer (`contact_blocked`) and, for a `MARKETING`
//!   template, one who stopped marketing messages (`marketing_stopped`)
//!   are skipped.
//! - Paced by the sender: a `broadcast` job in the send queue queues the
//!   next [`WAVE`] messages and then itself again behind them, and the
//!   next wave only once the last, and the channel's other messages
//!   waiting for their turn, have gone (the sender hands a message the
//!   channel's rate holds back to the queue, so the job behind them is due
//!   at once). A reply an agent sends meanwhile waits for at most one
//!   wave, not for thousands; the messages go at the channel's send rate.
//!   A message waiting for a retry after a failure holds nothing back.
//!   Meta's rate limit on the number (`channels::send_hold`) or a
//!   restriction waits for its end; Meta no longer having the template
//!   (deleted, paused, disabled) ends the broadcast `failed`, its
//!   remaining customers skipped with that reason. Each job's step is one
//!   transaction, and a job other than the broadcast's own (one taken up
//!   again after its instance stopped) does nothing, so no customer is
//!   sent it twice.
//! - Seen as counts (`pending`, `skipped`, and of the queued messages
//!   `queued`, `sent`, `delivered`, `read`, `failed`, from the messages'
//!   own statuses; `replied`: customers who wrote in the conversation
//!   after it, whatever its status) and as a list of recipients, each
//!   with when they first replied. Cancelling skips who is
//!   left (`cancelled`); what is queued still goes.
//! - Announced live as `broadcast.updated` (the broadcast, with its
//!   counts) when it is made, moved, cancelled or fails, and after each
//!   wave (the last one says `done`), to those who see its channel, as its
//!   messages are; its messages' receipts come as their own
//!   `message.updated`, not as a new count each.
//! - A broadcast is the business's, not its maker's: one scheduled or
//!   sending goes on after the admin who made it leaves, as an
//!   integrator's endpoint does (`integrations::webhooks`), and any admin
//!   cancels it; an agent's scheduled reply, sent in their name, is
//!   cancelled instead (`inbox::scheduled`).
//! - Erasing a contact drops their number from every broadcast of their
//!   channel; a channel removed takes its broadcasts. Audited
//!   `broadcast.created`, `broadcast.cancelled`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap};

use super::events::EventLog;
use super::outreach::Number;
use super::sender::Next;
use super::templates::{Choice, Template};
use super::views::{ContactRow, ConversationRow, Names};
use super::{ConversationId, MessageId};
use crate::app::AppState;
use crate::auth::Role;
use crate::channels::whatsapp_number::WhatsappNumber;
use crate::channels::{self, ChannelId, ChannelRow, Platform};
use crate::db::schema::send_queue as sq;
use crate::db::tenant_schema::{
    broadcast_recipients as r, broadcasts as b, contacts as ct, conversations as cv, messages as m,
};
use crate::db::{TenantConn, TenantScope};
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

/// The most customers one broadcast reaches.
pub const MOST_RECIPIENTS: usize = 10_000;
/// Messages one step of a broadcast queues before the send queue's other
/// work has its turn.
pub const WAVE: i64 = 20;
/// The longest name.
const NAME_CHARS: usize = 100;
/// How far ahead a broadcast may be scheduled.
pub const MOST_DAYS_AHEAD: i64 = 90;
/// Broadcasts a tenant may have scheduled or sending at once.
pub const MOST_WAITING: i64 = 50;
/// A broadcast's statuses, as `GET /api/broadcasts?status=` takes them.
pub const STATUSES: [&str; 5] = ["scheduled", "sending", "done", "cancelled", "failed"];

crate::id_type!(
    /// A broadcast, inside one tenant.
    BroadcastId
);

/// Who a broadcast goes to (`to`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audience {
    #[serde(default)]
    pub phone_numbers: Vec<String>,
    #[serde(default)]
    pub label: Option<String>,
    /// `key` or `key:value` (`inbox::attributes`).
    #[serde(default)]
    pub attribute: Option<String>,
}

/// `POST /api/broadcasts`, read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewBroadcast {
    pub channel_id: ChannelId,
    pub name: String,
    pub template: Choice,
    pub to: Audience,
    #[serde(default)]
    pub client_id: Option<String>,
    /// When to start; absent or `null`: now.
    #[serde(default)]
    pub send_at: Option<DateTime<Utc>>,
}

/// `PATCH /api/broadcasts/{id}`, read: the only thing a scheduled
/// broadcast changes is when it starts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reschedule {
    /// `null`: now. Required: an empty body must not send a broadcast.
    #[serde(deserialize_with = "given")]
    pub send_at: Option<DateTime<Utc>>,
}

/// A field that must be there, and may be `null` (serde takes a missing
/// `Option` as `None` unless it is read by a function).
fn given<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    Option::deserialize(d)
}

/// How a broadcast's recipients stand.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub total: i64,
    pub pending: i64,
    pub skipped: i64,
    pub queued: i64,
    pub sent: i64,
    pub delivered: i64,
    pub read: i64,
    pub failed: i64,
    /// Of the queued, customers who wrote after their message.
    pub replied: i64,
}

/// A broadcast as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BroadcastView {
    pub id: BroadcastId,
    pub channel_id: ChannelId,
    pub name: String,
    pub template: Value,
    /// `scheduled`, `sending`, `done`, `cancelled` or `failed`.
    pub status: String,
    /// When it was scheduled to start; `null`: at once.
    pub send_at: Option<DateTime<Utc>>,
    /// Why it failed (an error code).
    pub error: Option<String>,
    pub created_by: UserId,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub counts: Counts,
}

/// One recipient as the API shows them.
#[derive(Debug, Clone, Serialize)]
pub struct RecipientView {
    pub phone_number: String,
    /// `pending`, `skipped`, or the message's status once queued
    /// (`queued` while it waits to go, `sent`, `delivered`, `read`,
    /// `failed`).
    pub status: String,
    pub reason: Option<String>,
    pub conversation_id: Option<ConversationId>,
    pub message_id: Option<MessageId>,
    pub updated_at: Option<DateTime<Utc>>,
    /// When the customer first wrote after their message.
    pub replied_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = b)]
struct BroadcastRow {
    id: i64,
    channel_id: i64,
    name: String,
    template: Value,
    created_by: i64,
    status: String,
    error: Option<String>,
    job_id: Option<i64>,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    send_at: Option<DateTime<Utc>>,
}

impl BroadcastRow {
    fn choice(&self) -> AppResult<Choice> {
        serde_json::from_value(self.template.clone())
            .map_err(|e| AppError::internal(anyhow::anyhow!("broadcast {} keeps an unreadable template: {e}", self.id)))
    }
}

/// The stored form of the template asked for.
fn template_json(choice: &Choice) -> Value {
    json!({"name": choice.name, "language": choice.language,
        "parameters": choice.parameters, "header_parameters": choice.header_parameters})
}

/// The daily limit Meta's messaging tier names (`TIER_1K`, `TIER_250`, a
/// number); `None`: unlimited or not known.
pub fn daily_limit(tier: &str) -> Option<usize> {
    let raw = tier.trim().to_ascii_uppercase();
    let raw = raw.strip_prefix("TIER_").unwrap_or(&raw);
    let (digits, times) = match raw.strip_suffix('K') {
        Some(d) => (d, 1_000),
        None => (raw, 1),
    };
    digits.parse::<usize>().ok().map(|n| n * times)
}

/// What a create checked, before Meta is asked.
pub enum Found {
    /// The `client_id` made this broadcast already.
    Retried(BroadcastView),
    /// The channel and the numbers, each once, in order.
    Channel(ChannelRow, Vec<String>),
}

/// The numbers, read (`invalid_phone_number` names the first bad one).
fn parse_numbers(raw: &[String]) -> AppResult<Vec<String>> {
    raw.iter()
        .enumerate()
        .map(|(i, n)| {
            Number::parse(n)
                .map(|n| n.as_str().to_string())
                .map_err(|e| AppError::new(e.kind, e.code, format!("to.phone_numbers[{i}]: {}", e.message)))
        })
        .collect()
}

/// When a broadcast asked to start at `send_at` is scheduled for, at
/// `now`: `None` to start now.
fn scheduled_for(send_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> AppResult<Option<DateTime<Utc>>> {
    let Some(at) = send_at else { return Ok(None) };
    if at < now - chrono::Duration::seconds(super::sender::PAST_GRACE_SECONDS) {
        return Err(AppError::invalid("invalid_send_at", "send_at is in the past; leave it out to send now"));
    }
    if at > now + chrono::Duration::days(MOST_DAYS_AHEAD) {
        return Err(AppError::invalid(
            "invalid_send_at",
            format!("send_at may be at most {MOST_DAYS_AHEAD} days ahead"),
        ));
    }
    Ok((at > now).then_some(at))
}

/// The checks of a create that need no Meta and no database: the numbers
/// given, read, and when it starts (`None`: now).
fn check_shape(new: &NewBroadcast, now: DateTime<Utc>) -> AppResult<(Vec<String>, Option<DateTime<Utc>>)> {
    let name = new.name.trim();
    if name.is_empty() || name.chars().count() > NAME_CHARS {
        return Err(AppError::invalid("invalid_name", format!("name must be 1 to {NAME_CHARS} characters")));
    }
    if let Some(cid) = &new.client_id {
        if cid.is_empty() || cid.chars().count() > 200 {
            return Err(AppError::invalid("invalid_client_id", "client_id must be 1 to 200 characters"));
        }
    }
    if new.to.phone_numbers.len() > MOST_RECIPIENTS {
        return Err(too_many());
    }
    if new.to.phone_numbers.is_empty() && new.to.label.is_none() && new.to.attribute.is_none() {
        return Err(AppError::invalid("no_recipients", "to needs phone_numbers, a label or an attribute"));
    }
    let send_at = scheduled_for(new.send_at, now)?;
    Ok((parse_numbers(&new.to.phone_numbers)?, send_at))
}

fn too_many() -> AppError {
    AppError::invalid("too_many_recipients", format!("a broadcast reaches at most {MOST_RECIPIENTS} customers"))
}

/// Customers' WhatsApp ids as numbers; one that is not a number (none on
/// WhatsApp) is passed over.
fn numbers_of(ids: Vec<String>) -> impl Iterator<Item = String> {
    ids.into_iter().filter_map(|n| Number::parse(&n).ok().map(|n| n.as_str().to_string()))
}

/// Where a create goes, as the database knows it ([module docs](self)).
fn look(
    tc: &mut TenantConn<'_>,
    user: UserId,
    role: Role,
    new: &NewBroadcast,
    numbers: Vec<String>,
) -> AppResult<Found> {
    if !channels::can_see(tc, user, role, new.channel_id)? {
        return Err(AppError::not_found("channel"));
    }
    if let Some(cid) = &new.client_id {
        let made: Option<BroadcastRow> = b::table
            .filter(b::created_by.eq(user.0))
            .filter(b::client_id.eq(cid))
            .select(BroadcastRow::as_select())
            .first(tc.pg())
            .optional()?;
        if let Some(row) = made {
            if row.channel_id != new.channel_id.0
                || row.name != new.name.trim()
                || row.template != template_json(&new.template)
            {
                return Err(AppError::conflict(
                    "client_id_reused",
                    "this client_id made another broadcast; use a new one for a new broadcast",
                ));
            }
            return Ok(Found::Retried(view(tc, row)?));
        }
    }
    let row = channels::find(tc, new.channel_id)?;
    if row.platform() != Platform::Whatsapp {
        return Err(AppError::invalid(
            "whatsapp_only",
            "only WhatsApp lets a business write first; on Messenger and Instagram the customer does",
        ));
    }
    channels::whatsapp_number::refuse_if_restricted(&row, false)?;
    let mut seen = BTreeSet::new();
    let mut all: Vec<String> = numbers.into_iter().filter(|n| seen.insert(n.clone())).collect();
    if let Some(label) = &new.to.label {
        let label = super::conversations::normalize_label(label)?;
        let labelled: Vec<String> = cv::table
            .inner_join(ct::table)
            .filter(cv::channel_id.eq(row.id))
            .filter(cv::labels.contains(vec![label]))
            .select(ct::external_id)
            .order(ct::id)
            .limit(MOST_RECIPIENTS as i64 + 1)
            .load(tc.pg())?;
        all.extend(numbers_of(labelled).filter(|n| seen.insert(n.clone())));
    }
    if let Some(raw) = &new.to.attribute {
        let wanted = super::attributes::wanted(tc, raw)?;
        let mut q = ct::table.filter(ct::channel_id.eq(row.id)).into_boxed();
        q = match wanted.contained() {
            Some(contained) => q.filter(ct::attributes.contains(contained)),
            None => q.filter(ct::attributes.has_key(wanted.key().to_string())),
        };
        let holding: Vec<String> =
            q.select(ct::external_id).order(ct::id).limit(MOST_RECIPIENTS as i64 + 1).load(tc.pg())?;
        all.extend(numbers_of(holding).filter(|n| seen.insert(n.clone())));
    }
    if all.is_empty() {
        return Err(AppError::invalid("no_recipients", "no customer of this number carries that label or attribute"));
    }
    if all.len() > MOST_RECIPIENTS {
        return Err(too_many());
    }
    let limit = WhatsappNumber::of(&row).and_then(|n| n.messaging_limit).and_then(|t| daily_limit(&t));
    if let Some(limit) = limit.filter(|l| all.len() > *l) {
        // Meta counts the customers reached outside their 24-hour window.
        let since = Utc::now() - chrono::Duration::hours(24);
        let in_window: i64 = cv::table
            .inner_join(ct::table)
            .filter(cv::channel_id.eq(row.id))
            .filter(cv::last_inbound_at.gt(since))
            .filter(ct::external_id.eq_any(&all))
            .count()
            .get_result(tc.pg())?;
        let outside = all.len().saturating_sub(usize::try_from(in_window).unwrap_or(0));
        if outside > limit {
            return Err(AppError::invalid(
                "over_messaging_limit",
                format!("this number may start conversations with {limit} customers a day (Meta's messaging limit); this broadcast reaches {outside} outside their 24-hour window"),
            ));
        }
    }
    Ok(Found::Channel(row, all))
}

/// `POST /api/broadcasts` ([module docs](self)): the broadcast, and
/// whether this call made it (not a retry).
pub async fn create(
    app: &AppState,
    scope: TenantScope,
    user: UserId,
    role: Role,
    new: NewBroadcast,
) -> AppResult<(BroadcastView, bool)> {
    let (numbers, send_at) = check_shape(&new, Utc::now())?;
    let asked = new.clone();
    let found = app.db.tenant(scope, move |tc| look(tc, user, role, &asked, numbers)).await?;
    let (row, numbers) = match found {
        Found::Retried(view) => return Ok((view, false)),
        Found::Channel(row, numbers) => (row, numbers),
    };
    let template =
        super::templates::find(app, scope.tenant, row.clone(), &new.template.name, &new.template.language).await?;
    sendable(&template)?;
    // The parameters' shape, as written (variables are filled in later).
    super::templates::prepare(&template, &new.template, None)?;
    app.tenant_with_events(scope, move |tc, log| store(tc, log, user, &row, &new, &numbers, send_at)).await
}

/// A template a broadcast may send: one Meta approved, with no file in its
/// header (each customer would need one).
fn sendable(t: &Template) -> AppResult<()> {
    if t.header_media.is_some() {
        return Err(AppError::invalid(
            "template_not_supported",
            "a broadcast cannot send a template whose header is a file",
        ));
    }
    Ok(())
}

/// Writes the broadcast, its recipients and its first job.
fn store(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    channel: &ChannelRow,
    new: &NewBroadcast,
    numbers: &[String],
    send_at: Option<DateTime<Utc>>,
) -> AppResult<(BroadcastView, bool)> {
    // Two broadcasts made at once would both count one short of the limit.
    let tenant = tc.tenant().0.to_string();
    crate::db::locks::hold(tc.pg(), crate::db::locks::LockClass::Broadcasts, &tenant)?;
    let waiting: i64 = b::table.filter(b::status.eq_any(["scheduled", "sending"])).count().get_result(tc.pg())?;
    let retried = match new.client_id.as_deref() {
        Some(client_id) => diesel::select(diesel::dsl::exists(
            b::table.filter(b::created_by.eq(user.0)).filter(b::client_id.eq(client_id)),
        ))
        .get_result(tc.pg())?,
        None => false,
    };
    if waiting >= MOST_WAITING && !retried {
        return Err(AppError::conflict(
            "too_many_broadcasts",
            format!("a tenant has at most {MOST_WAITING} broadcasts scheduled or sending: wait, or cancel one"),
        ));
    }
    let inserted: Option<BroadcastRow> = diesel::insert_into(b::table)
        .values((
            b::channel_id.eq(channel.id),
            b::name.eq(new.name.trim()),
            b::template.eq(template_json(&new.template)),
            b::created_by.eq(user.0),
            b::client_id.eq(new.client_id.as_deref()),
            b::status.eq(if send_at.is_some() { "scheduled" } else { "sending" }),
            b::send_at.eq(send_at),
        ))
        .on_conflict((b::created_by, b::client_id))
        .do_nothing()
        .returning(BroadcastRow::as_returning())
        .get_result(tc.pg())
        .optional()?;
    let Some(row) = inserted else {
        // The same client_id, made by a retry that raced this one.
        let row = b::table
            .filter(b::created_by.eq(user.0))
            .filter(b::client_id.eq(new.client_id.as_deref().unwrap_or_default()))
            .select(BroadcastRow::as_select())
            .first(tc.pg())?;
        return Ok((view(tc, row)?, false));
    };
    for chunk in numbers.chunks(1_000) {
        let values: Vec<_> = chunk.iter().map(|n| (r::broadcast_id.eq(row.id), r::number.eq(n))).collect();
        diesel::insert_into(r::table).values(values).execute(tc.pg())?;
    }
    let job = queue_job(tc, row.id, send_at)?;
    let row: BroadcastRow = diesel::update(b::table.find(row.id))
        .set(b::job_id.eq(job))
        .returning(BroadcastRow::as_returning())
        .get_result(tc.pg())?;
    let made = announce(tc, log, row.id)?;
    crate::audit::record(
        tc,
        Some(user),
        "broadcast.created",
        "broadcast",
        Some(row.id.to_string()),
        json!({"channel_id": channel.id.to_string(), "name": row.name, "template": new.template.name,
            "language": new.template.language, "recipients": numbers.len(), "send_at": send_at}),
    )?;
    Ok((made, true))
}

/// Queues broadcast `id`'s next step behind what is queued now, due at
/// `at` (`None`: now).
fn queue_job(tc: &mut TenantConn<'_>, id: i64, at: Option<DateTime<Utc>>) -> AppResult<i64> {
    let job = (sq::tenant_id.eq(tc.tenant().0), sq::kind.eq("broadcast"), sq::broadcast_id.eq(id));
    let insert = diesel::insert_into(sq::table);
    // Due now by the database's clock, as the sender reads it.
    Ok(match at {
        Some(at) => insert.values((job, sq::next_attempt_at.eq(at))).returning(sq::id).get_result(tc.pg())?,
        None => insert.values(job).returning(sq::id).get_result(tc.pg())?,
    })
}

/// A broadcast's message `m` was answered: its customer wrote after it.
const REPLIED: &str = "EXISTS (SELECT 1 FROM messages i WHERE i.conversation_id = m.conversation_id \
                                 AND i.direction = 'in' AND i.id > m.id)";

/// Counts of each broadcast in `ids`.
fn counts(tc: &mut TenantConn<'_>, ids: &[i64]) -> AppResult<HashMap<i64, Counts>> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text};
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        id: i64,
        #[diesel(sql_type = Text)]
        status: String,
        #[diesel(sql_type = Nullable<Text>)]
        message: Option<String>,
        #[diesel(sql_type = BigInt)]
        n: i64,
        #[diesel(sql_type = BigInt)]
        replied: i64,
    }
    let rows: Vec<Row> = diesel::sql_query(format!(
        "SELECT r.broadcast_id AS id, r.status, m.status AS message, count(*) AS n, \
                count(*) FILTER (WHERE {REPLIED}) AS replied \
           FROM broadcast_recipients r LEFT JOIN messages m ON m.id = r.message_id \
          WHERE r.broadcast_id = ANY($1) GROUP BY 1, 2, 3"
    ))
    .bind::<Array<BigInt>, _>(ids)
    .load(tc.pg())?;
    let mut all: HashMap<i64, Counts> = HashMap::new();
    for Row { id, status, message, n, replied } in rows {
        let c = all.entry(id).or_default();
        c.total += n;
        c.replied += replied;
        match (status.as_str(), message.as_deref()) {
            ("pending", _) => c.pending += n,
            ("skipped", _) => c.skipped += n,
            (_, Some("sent")) => c.sent += n,
            (_, Some("delivered")) => c.delivered += n,
            (_, Some("read")) => c.read += n,
            (_, Some("failed")) => c.failed += n,
            // Waiting to go, or its message gone since (retention).
            _ => c.queued += n,
        }
    }
    Ok(all)
}

fn view_of(row: BroadcastRow, counts: Counts) -> BroadcastView {
    BroadcastView {
        id: BroadcastId(row.id),
        channel_id: ChannelId(row.channel_id),
        name: row.name,
        template: row.template,
        status: row.status,
        error: row.error,
        created_by: UserId(row.created_by),
        created_at: row.created_at,
        finished_at: row.finished_at,
        send_at: row.send_at,
        counts,
    }
}

/// Announces broadcast `id` as it is now (`broadcast.updated`); its view.
fn announce(tc: &mut TenantConn<'_>, log: &mut EventLog, id: i64) -> AppResult<BroadcastView> {
    let row: BroadcastRow = b::table.find(id).select(BroadcastRow::as_select()).first(tc.pg())?;
    let channel = row.channel_id;
    let view = view(tc, row)?;
    log.append(tc, "broadcast.updated", Some(channel), None, &view)?;
    Ok(view)
}

fn view(tc: &mut TenantConn<'_>, row: BroadcastRow) -> AppResult<BroadcastView> {
    let counts = counts(tc, &[row.id])?.remove(&row.id).unwrap_or_default();
    Ok(view_of(row, counts))
}

/// The broadcast `id`, if the caller may see its channel.
fn visible(tc: &mut TenantConn<'_>, user: UserId, role: Role, id: BroadcastId) -> AppResult<BroadcastRow> {
    let row: Option<BroadcastRow> = b::table.find(id.0).select(BroadcastRow::as_select()).first(tc.pg()).optional()?;
    match row {
        Some(row) if channels::can_see(tc, user, role, ChannelId(row.channel_id))? => Ok(row),
        _ => Err(AppError::not_found("broadcast")),
    }
}

/// `GET /api/broadcasts/{id}`.
pub fn get(tc: &mut TenantConn<'_>, user: UserId, role: Role, id: BroadcastId) -> AppResult<BroadcastView> {
    let row = visible(tc, user, role, id)?;
    view(tc, row)
}

/// `GET /api/broadcasts` (admins, who see every channel): newest first,
/// one channel's with `channel`, of one of [`STATUSES`] with `status`;
/// `limit` after the id `before`.
pub fn list(
    tc: &mut TenantConn<'_>,
    channel: Option<ChannelId>,
    status: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> AppResult<Vec<BroadcastView>> {
    let mut q = b::table.into_boxed();
    if let Some(c) = channel {
        q = q.filter(b::channel_id.eq(c.0));
    }
    if let Some(status) = status {
        q = q.filter(b::status.eq(status.to_string()));
    }
    if let Some(before) = before {
        q = q.filter(b::id.lt(before));
    }
    let rows: Vec<BroadcastRow> = q.order(b::id.desc()).limit(limit).select(BroadcastRow::as_select()).load(tc.pg())?;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let mut all = counts(tc, &ids)?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let c = all.remove(&row.id).unwrap_or_default();
            view_of(row, c)
        })
        .collect())
}

/// A recipient as read: number, status, reason, message, when, and the
/// message's status and conversation.
type RecipientRow = (String, String, Option<String>, Option<i64>, Option<DateTime<Utc>>, Option<String>, Option<i64>);

/// The statuses a recipient may be asked for by.
pub const RECIPIENT_STATUSES: [&str; 7] = ["pending", "skipped", "queued", "sent", "delivered", "read", "failed"];

/// `GET /api/broadcasts/{id}/recipients`: by number, after the number
/// `after` (its digits), `status` one of [`RECIPIENT_STATUSES`].
pub fn recipients(
    tc: &mut TenantConn<'_>,
    user: UserId,
    role: Role,
    id: BroadcastId,
    status: Option<&str>,
    after: Option<i64>,
    limit: i64,
) -> AppResult<Vec<RecipientView>> {
    let row = visible(tc, user, role, id)?;
    let mut q = r::table.left_join(m::table).filter(r::broadcast_id.eq(row.id)).into_boxed();
    match status {
        None => {}
        Some(s @ ("pending" | "skipped")) => q = q.filter(r::status.eq(s)),
        Some("queued") => {
            q = q
                .filter(r::status.eq("queued"))
                .filter(m::status.nullable().eq("pending").or(m::id.nullable().is_null()))
        }
        Some(s) => q = q.filter(r::status.eq("queued")).filter(m::status.nullable().eq(s)),
    }
    if let Some(after) = after {
        // The cursor is the last number's digits (no number starts with 0).
        q = q.filter(r::number.gt(after.to_string()));
    }
    let rows: Vec<RecipientRow> = q
        .order(r::number)
        .limit(limit)
        .select((
            r::number,
            r::status,
            r::reason,
            r::message_id,
            r::done_at,
            m::status.nullable(),
            m::conversation_id.nullable(),
        ))
        .load(tc.pg())?;
    let messages: Vec<i64> = rows.iter().filter_map(|r| r.3).collect();
    let replies = first_replies(tc, &messages)?;
    Ok(rows
        .into_iter()
        .map(|(number, status, reason, message, at, message_status, conversation)| RecipientView {
            phone_number: format!("+{number}"),
            status: match (status.as_str(), message_status.as_deref()) {
                ("queued", Some("pending") | None) => "queued".to_string(),
                ("queued", Some(s)) => s.to_string(),
                _ => status,
            },
            reason,
            conversation_id: conversation.map(ConversationId),
            message_id: message.map(MessageId),
            updated_at: at,
            replied_at: message.and_then(|m| replies.get(&m).copied()),
        })
        .collect())
}

/// When each of the `messages` was first answered by its customer.
fn first_replies(tc: &mut TenantConn<'_>, messages: &[i64]) -> AppResult<HashMap<i64, DateTime<Utc>>> {
    use diesel::sql_types::{Array, BigInt, Timestamptz};
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = BigInt)]
        id: i64,
        #[diesel(sql_type = Timestamptz)]
        at: DateTime<Utc>,
    }
    if messages.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT m.id, min(i.created_at) AS at FROM messages m \
           JOIN messages i ON i.conversation_id = m.conversation_id AND i.direction = 'in' AND i.id > m.id \
          WHERE m.id = ANY($1) GROUP BY m.id",
    )
    .bind::<Array<BigInt>, _>(messages)
    .load(tc.pg())?;
    Ok(rows.into_iter().map(|r| (r.id, r.at)).collect())
}

/// `POST /api/broadcasts/{id}/cancel`: who is left is skipped
/// (`cancelled`); a cancelled one is answered as it is, a finished one
/// refused (409 `broadcast_finished`).
pub fn cancel(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: BroadcastId,
) -> AppResult<BroadcastView> {
    visible(tc, user, role, id)?;
    let row: BroadcastRow = b::table.find(id.0).select(BroadcastRow::as_select()).for_update().first(tc.pg())?;
    match row.status.as_str() {
        "sending" | "scheduled" => {}
        "cancelled" => return view(tc, row),
        _ => {
            return Err(AppError::conflict(
                "broadcast_finished",
                format!("this broadcast is {} already; nothing is left to cancel", row.status),
            ))
        }
    }
    super::sender::drop_job(tc, row.job_id)?;
    let skipped = end(tc, row.id, "cancelled", None, "cancelled")?;
    crate::audit::record(
        tc,
        Some(user),
        "broadcast.cancelled",
        "broadcast",
        Some(row.id.to_string()),
        json!({"channel_id": row.channel_id.to_string(), "skipped": skipped}),
    )?;
    announce(tc, log, row.id)
}

/// `PATCH /api/broadcasts/{id}` ([module docs](self)): a scheduled
/// broadcast starts at `send_at` instead (`None`: now); the broadcast, and
/// whether its job is due now (the sender is woken).
pub fn reschedule(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    user: UserId,
    role: Role,
    id: BroadcastId,
    to: Reschedule,
    now: DateTime<Utc>,
) -> AppResult<(BroadcastView, bool)> {
    visible(tc, user, role, id)?;
    let send_at = scheduled_for(to.send_at, now)?;
    let row: BroadcastRow = b::table.find(id.0).select(BroadcastRow::as_select()).for_update().first(tc.pg())?;
    if row.status != "scheduled" {
        return Err(AppError::conflict(
            "broadcast_not_scheduled",
            format!("this broadcast is {} already; only a scheduled one can be moved", row.status),
        ));
    }
    // A new job, so the old one is a stray whatever it is doing now.
    super::sender::drop_job(tc, row.job_id)?;
    let job = queue_job(tc, row.id, send_at)?;
    let row: BroadcastRow = diesel::update(b::table.find(row.id))
        .set((
            b::job_id.eq(job),
            b::send_at.eq(send_at.unwrap_or(now)),
            b::status.eq(if send_at.is_some() { "scheduled" } else { "sending" }),
        ))
        .returning(BroadcastRow::as_returning())
        .get_result(tc.pg())?;
    crate::audit::record(
        tc,
        Some(user),
        "broadcast.rescheduled",
        "broadcast",
        Some(row.id.to_string()),
        json!({"channel_id": row.channel_id.to_string(), "send_at": row.send_at}),
    )?;
    Ok((announce(tc, log, row.id)?, send_at.is_none()))
}

/// Ends broadcast `id` (`status`, `error`), its pending recipients skipped
/// with `reason`; how many were.
fn end(tc: &mut TenantConn<'_>, id: i64, status: &str, error: Option<&str>, reason: &str) -> AppResult<usize> {
    let skipped = diesel::update(r::table.filter(r::broadcast_id.eq(id)).filter(r::status.eq("pending")))
        .set((r::status.eq("skipped"), r::reason.eq(reason), r::done_at.eq(diesel::dsl::now)))
        .execute(tc.pg())?;
    diesel::update(b::table.find(id))
        .set((b::status.eq(status), b::error.eq(error), b::job_id.eq(None::<i64>), b::finished_at.eq(diesel::dsl::now)))
        .execute(tc.pg())?;
    Ok(skipped)
}

/// Drops a customer's numbers (their WhatsApp id and the number written
/// for them) from the broadcasts of their channel: erasure.
pub fn forget(tc: &mut TenantConn<'_>, channel: i64, numbers: &[&str]) -> AppResult<()> {
    let of_channel = b::table.filter(b::channel_id.eq(channel)).select(b::id);
    diesel::delete(r::table.filter(r::broadcast_id.eq_any(of_channel)).filter(r::number.eq_any(numbers)))
        .execute(tc.pg())?;
    Ok(())
}

/// The sender's `broadcast` job `job` of broadcast `id` ([module docs](self)).
pub async fn run_job(app: &AppState, tenant: crate::ids::TenantId, id: i64, job: i64) -> AppResult<Next> {
    let scope = TenantScope::system(tenant);
    let found = app
        .db
        .tenant(scope, move |tc| {
            let row: Option<BroadcastRow> =
                b::table.find(id).select(BroadcastRow::as_select()).first(tc.pg()).optional()?;
            match row {
                Some(row) if live(&row.status) && row.job_id == Some(job) => {
                    let channel = channels::find(tc, ChannelId(row.channel_id))?;
                    let unsent = ahead_of_next_wave(tc, id, channel.id)?;
                    Ok::<_, AppError>(Some((row, channel, unsent)))
                }
                _ => Ok(None),
            }
        })
        .await?;
    let Some((row, channel, unsent)) = found else { return Ok(Next::Done) };
    if let Some(wait) = not_yet(&row, Utc::now()) {
        return Ok(Next::Wait(wait, SCHEDULED));
    }
    if let Some(hold) = crate::channels::send_hold::SendHold::of(&channel, Utc::now()) {
        return Ok(Next::Wait(super::sender::until(hold.until), HELD));
    }
    // Reconnected, or lifted, it goes on; cancelling ends the wait.
    if channel.status != "connected" || channels::whatsapp_number::refuse_if_restricted(&channel, false).is_err() {
        return Ok(Next::Wait(std::time::Duration::from_secs(60), HELD));
    }
    // The sender hands a message back to the queue until the channel's rate
    // lets it go, so this job, queued behind its last wave, is due before
    // that wave has gone, and a reply queued meanwhile would wait behind
    // the next wave too: it waits about as long as what is ahead takes at
    // that rate.
    if unsent > 0 {
        let gap = std::time::Duration::from_secs(1) / super::sender::send_rate();
        return Ok(Next::Wait(gap * unsent, WAVE_UNSENT));
    }
    let choice = row.choice()?;
    let template = super::templates::find(app, tenant, channel.clone(), &choice.name, &choice.language).await;
    let template = match template.and_then(|t| {
        sendable(&t)?;
        super::templates::prepare(&t, &choice, None)?;
        Ok(t)
    }) {
        Ok(t) => t,
        // Meta no longer has it as it was: the broadcast cannot go on.
        Err(e) if e.kind == crate::error::ErrorKind::Unprocessable => {
            let code = e.code.to_string();
            app.tenant_with_events(scope, move |tc, log| {
                let locked: Option<String> = b::table
                    .find(id)
                    .filter(b::job_id.eq(job))
                    .select(b::status)
                    .for_update()
                    .first(tc.pg())
                    .optional()?;
                if locked.as_deref().is_some_and(live) {
                    end(tc, id, "failed", Some(&code), &code)?;
                    announce(tc, log, id)?;
                }
                Ok::<_, AppError>(())
            })
            .await?;
            return Ok(Next::Done);
        }
        Err(e) => return Err(e),
    };
    app.tenant_with_events(scope, move |tc, log| step(tc, log, id, job, &channel, &template)).await
}

/// Why a scheduled broadcast's job waits.
const SCHEDULED: &str = "scheduled: not due yet";
/// Why a held one's does.
const HELD: &str = "held: the number cannot send now";
/// Why one whose last wave, or a reply, has not gone does.
const WAVE_UNSENT: &str = "sending: waits for what is queued ahead of its next wave";

/// How far a pending message job may be due ahead and still count as
/// waiting for its turn at the channel's rate, not for a retry after a
/// failure (seconds, then more) or under a claim's lease.
const IN_TURN: chrono::Duration = chrono::Duration::seconds(2);

/// How many messages go ahead of broadcast `id`'s next wave, on its
/// channel `channel`: the last wave's not gone yet (their status still
/// `pending`, under way or waiting), or, if more, the channel's message
/// jobs waiting for their turn (an agent's reply queued during the last
/// wave among them). Waves go in the order of the numbers, so the last
/// one is the [`WAVE`] recipients just below the first number still
/// pending (none before the first wave).
fn ahead_of_next_wave(tc: &mut TenantConn<'_>, id: i64, channel: i64) -> AppResult<u32> {
    let first_pending: Option<String> = r::table
        .filter(r::broadcast_id.eq(id))
        .filter(r::status.eq("pending"))
        .select(diesel::dsl::min(r::number))
        .first(tc.pg())?;
    let Some(first_pending) = first_pending else { return Ok(0) };
    let wave = r::table
        .filter(r::broadcast_id.eq(id))
        .filter(r::number.lt(first_pending))
        .order(r::number.desc())
        .limit(WAVE)
        .select(r::message_id)
        .load::<Option<i64>>(tc.pg())?;
    let unsent: i64 = m::table
        .filter(m::id.eq_any(wave.into_iter().flatten().collect::<Vec<_>>()))
        .filter(m::status.eq("pending"))
        .count()
        .get_result(tc.pg())?;
    // The queue is the instance's (public) and the conversations the
    // tenant's: two reads, the first of the few jobs pending.
    let waiting: Vec<Option<i64>> = sq::table
        .filter(sq::status.eq("pending"))
        .filter(sq::tenant_id.eq(tc.tenant().0))
        .filter(sq::kind.eq("message"))
        .filter(sq::next_attempt_at.le(Utc::now() + IN_TURN))
        .select(sq::conversation_id)
        .load(tc.pg())?;
    let of_channel: BTreeSet<i64> = cv::table
        .filter(cv::channel_id.eq(channel))
        .filter(cv::id.eq_any(waiting.iter().flatten().collect::<BTreeSet<_>>()))
        .select(cv::id)
        .load::<i64>(tc.pg())?
        .into_iter()
        .collect();
    let in_turn = waiting.iter().flatten().filter(|c| of_channel.contains(c)).count() as i64;
    Ok(u32::try_from(unsent.max(in_turn)).unwrap_or(u32::MAX))
}

/// A broadcast its job carries on: scheduled or sending.
fn live(status: &str) -> bool {
    matches!(status, "scheduled" | "sending")
}

/// How long a scheduled broadcast has yet to wait at `now`, if at all (its
/// job is due at its time; the clocks of the database and this instance
/// may differ by a little).
fn not_yet(row: &BroadcastRow, now: DateTime<Utc>) -> Option<std::time::Duration> {
    match row.send_at {
        Some(at) if row.status == "scheduled" && at > now => (at - now).to_std().ok(),
        _ => None,
    }
}

/// One wave: up to [`WAVE`] pending recipients queued or skipped, then the
/// next job queued, or the broadcast done.
fn step(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    id: i64,
    job: i64,
    channel: &ChannelRow,
    template: &Template,
) -> AppResult<Next> {
    let row: Option<BroadcastRow> =
        b::table.find(id).select(BroadcastRow::as_select()).for_update().first(tc.pg()).optional()?;
    let Some(row) = row.filter(|r| live(&r.status) && r.job_id == Some(job)) else { return Ok(Next::Done) };
    // Moved later while its job was on its way here.
    if let Some(wait) = not_yet(&row, Utc::now()) {
        return Ok(Next::Wait(wait, SCHEDULED));
    }
    if row.status == "scheduled" {
        diesel::update(b::table.find(id)).set(b::status.eq("sending")).execute(tc.pg())?;
    }
    let choice = row.choice()?;
    let wave: Vec<String> = r::table
        .filter(r::broadcast_id.eq(id))
        .filter(r::status.eq("pending"))
        .order(r::number)
        .limit(WAVE)
        .select(r::number)
        .load(tc.pg())?;
    let marketing = template.category.eq_ignore_ascii_case("MARKETING");
    let mut names = Names::default();
    for number in &wave {
        let sent = send_to(tc, log, &mut names, &row, channel, template, &choice, number, marketing)?;
        let (status, reason, message) = match sent {
            Ok(message) => ("queued", None, Some(message)),
            Err(code) => ("skipped", Some(code), None),
        };
        diesel::update(r::table.find((id, number)))
            .set((
                r::status.eq(status),
                r::reason.eq(reason),
                r::message_id.eq(message),
                r::done_at.eq(diesel::dsl::now),
            ))
            .execute(tc.pg())?;
    }
    if (wave.len() as i64) < WAVE {
        diesel::update(b::table.find(id))
            .set((b::status.eq("done"), b::job_id.eq(None::<i64>), b::finished_at.eq(diesel::dsl::now)))
            .execute(tc.pg())?;
    } else {
        let next = queue_job(tc, id, None)?;
        diesel::update(b::table.find(id)).set(b::job_id.eq(next)).execute(tc.pg())?;
    }
    announce(tc, log, id)?;
    Ok(Next::Done)
}

/// Queues the broadcast's message to `number`: its id, or why the
/// customer is skipped (an error code). A database error ends the step
/// (and its transaction); refusals come before anything is written.
#[allow(clippy::too_many_arguments)]
fn send_to(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    names: &mut Names,
    row: &BroadcastRow,
    channel: &ChannelRow,
    template: &Template,
    choice: &Choice,
    number: &str,
    marketing: bool,
) -> AppResult<Result<i64, String>> {
    let skip = |e: AppError| Ok(Err(e.code.to_string()));
    let number = match Number::parse(number) {
        Ok(n) => n,
        Err(e) => return skip(e),
    };
    let known = super::outreach::known_contact(tc, channel.id, &number)?;
    let (name, details) = match known {
        Some(id) => {
            let (contact, details): (ContactRow, super::contacts::ContactDetails) = ct::table
                .find(id)
                .select((ContactRow::as_select(), super::contacts::ContactDetails::as_select()))
                .first(tc.pg())?;
            if let Err(e) = super::contacts::refuse_if_blocked(&contact) {
                return skip(e);
            }
            if marketing && details.marketing_stopped_at.is_some() {
                return Ok(Err("marketing_stopped".into()));
            }
            (contact.name, Some(details))
        }
        None => (None, None),
    };
    let values = super::variables::Values {
        contact: name.as_deref(),
        agent: None,
        channel: Some(&channel.name),
        details: details.as_ref(),
    };
    let prepared = match super::templates::prepare(template, &choice.filled_in(&values), None) {
        Ok(p) => p,
        Err(e) => return skip(e),
    };
    let contact = match known {
        Some(id) => id,
        None => super::outreach::new_contact(tc, channel.id, &number)?,
    };
    let (conv, created) = super::ingest::conversation_for(tc, channel.id, contact)?;
    let conv = if created {
        if let Some(team) = channel.settings().team_id {
            super::teams::hand_to_channels_team(tc, conv.id, team)?;
        }
        let conv: ConversationRow = diesel::update(cv::table.find(conv.id))
            .set((cv::status.eq("resolved"), cv::updated_at.eq(diesel::dsl::now)))
            .returning(ConversationRow::as_returning())
            .get_result(tc.pg())?;
        let view = names.conversation(tc, &conv)?;
        log.append(tc, "conversation.created", Some(channel.id), Some(conv.id), &view)?;
        conv
    } else {
        conv
    };
    let out = super::messages::NewOutgoing {
        conversation: ConversationId(conv.id),
        text: Some(prepared.text),
        client_id: Some(format!("broadcast-{}", row.id)),
        agent: None,
        attachments: vec![prepared.attachment],
        reply_to_external_id: None,
        signature: None,
    };
    let (message, _) = super::messages::queue_outgoing(tc, log, names, channel, &conv, out)?;
    Ok(Ok(message.id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messaging_tiers_are_read_as_meta_writes_them() {
        for (tier, limit) in [
            ("TIER_250", Some(250)),
            ("TIER_1K", Some(1_000)),
            ("TIER_2K", Some(2_000)),
            ("tier_10k", Some(10_000)),
            ("TIER_100K", Some(100_000)),
            ("TIER_UNLIMITED", None),
            ("1000", Some(1_000)),
            ("", None),
        ] {
            assert_eq!(daily_limit(tier), limit, "{tier}");
        }
    }

    #[test]
    fn a_broadcast_is_checked_before_anything_is_asked() {
        let new = |numbers: Vec<&str>, label: Option<&str>, name: &str| NewBroadcast {
            channel_id: ChannelId(1),
            name: name.into(),
            template: Choice { name: "t".into(), language: "en".into(), parameters: vec![], header_parameters: vec![] },
            to: Audience {
                phone_numbers: numbers.into_iter().map(String::from).collect(),
                label: label.map(String::from),
                attribute: None,
            },
            client_id: None,
            send_at: None,
        };
        let now = Utc::now();
        let check = |b: &NewBroadcast| check_shape(b, now);
        assert_eq!(
            check(&new(vec!["+351 912 345 678", "14155550123"], None, "Sale")).expect("fine"),
            (vec!["351912345678".to_string(), "14155550123".to_string()], None)
        );
        assert_eq!(check(&new(vec![], None, "Sale")).expect_err("nobody").code, "no_recipients");
        assert!(check(&new(vec![], Some("vip"), "Sale")).expect("a label").0.is_empty());
        let mut by_attribute = new(vec![], None, "Sale");
        by_attribute.to.attribute = Some("plan:gold".into());
        assert!(check(&by_attribute).expect("an attribute").0.is_empty());
        let bad = check(&new(vec!["+351912345678", "12"], None, "Sale")).expect_err("bad number");
        assert_eq!(bad.code, "invalid_phone_number");
        assert!(bad.message.contains("phone_numbers[1]"), "{}", bad.message);
        assert_eq!(check(&new(vec!["+351912345678"], None, "  ")).expect_err("no name").code, "invalid_name");
        let many: Vec<String> = (0..=MOST_RECIPIENTS).map(|i| format!("+1415{i:07}")).collect();
        let mut lots = new(vec![], None, "Sale");
        lots.to.phone_numbers = many;
        assert_eq!(check(&lots).expect_err("too many").code, "too_many_recipients");
    }

    #[test]
    fn a_broadcast_is_scheduled_ahead_and_not_in_the_past() {
        let now = Utc::now();
        let in_ = |s: i64| Some(now + chrono::Duration::seconds(s));
        assert_eq!(scheduled_for(None, now).expect("now"), None);
        assert_eq!(scheduled_for(in_(3_600), now).expect("in an hour"), in_(3_600));
        // A form sent a little late, or a clock a little behind: now.
        assert_eq!(scheduled_for(in_(-30), now).expect("just past"), None);
        assert_eq!(scheduled_for(in_(0), now).expect("this instant"), None);
        assert_eq!(scheduled_for(in_(-61), now).expect_err("past").code, "invalid_send_at");
        let far = MOST_DAYS_AHEAD * 86_400;
        assert_eq!(scheduled_for(in_(far), now).expect("the last day"), in_(far));
        assert_eq!(scheduled_for(in_(far + 1), now).expect_err("too far").code, "invalid_send_at");
    }
}
