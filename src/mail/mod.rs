//! Mail the server sends: an invitation's link to the person invited, a
//! password reset's link to the person who asked, and a member's notice
//! of a conversation assigned or a mention while they were not online
//! (`inbox::notice_mail`) (an extension).
//!
//! Decisions:
//! - Off unless `SWITCHBOARD_SMTP_URL` names an SMTP server
//!   (`config::MailConfig`); then invitations are also mailed, and people
//!   may reset a forgotten password by mail (`auth::password_reset`).
//!   `print` ([`PRINT`]) prints each mail on standard output instead: the
//!   demo's, for development.
//! - A mail is written to `public.mail_outbox` in the transaction that
//!   decides it ([`queue`]): one that rolls back sends nothing, and one
//!   that commits is sent even if this instance stops at once. A worker in
//!   every `serve` ([`run`]) sends what is due, woken by this instance's
//!   queuing and looking every [`LOOK_EVERY`] for other instances' rows.
//!   A claim moves the row's next attempt past the time its sending may
//!   take, so two instances never send one mail at once; an instance that
//!   stops between sending and noting it has the mail sent again later
//!   (at least once, never lost).
//! - A mail the server refuses for good (an SMTP 5xx, an address that is
//!   none) is given up at once; a refusal for now, or a server not
//!   reached, is tried again after 1, 2, 4… minutes, [`MOST_ATTEMPTS`] in
//!   all (about four hours). A mail given up says why in `last_error`
//!   and in the log.
//! - Once sent or given up, the body (which holds a link worth an account)
//!   and any unsubscribe address are emptied; housekeeping deletes the row a week later
//!   (`db::housekeeping`).
//! - A notice mail names the tenant and member it tells about, and the
//!   conversations it quotes. One not yet sent when that member is
//!   removed, the tenant dropped, a conversation it quotes erased or
//!   purged, or the member can no longer see one it quotes (taken off its
//!   channel's list, or made an agent or a viewer) is withdrawn
//!   ([`withdraw`], [`withdraw_quoting_gone`], [`withdraw_unseen`]): given
//!   up as above, saying why, rather than sent, perhaps hours later when an
//!   SMTP server that was down comes back, to someone no longer in the
//!   tenant, quoting a customer they may no longer see, or one the
//!   business was asked to forget. One a worker is sending at that moment
//!   still goes.

use chrono::{DateTime, Duration, Utc};
use diesel::pg::PgConnection;
use diesel::prelude::*;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::MailConfig;
use crate::db::schema::mail_outbox as m;
use crate::db::schema::memberships;
use crate::db::{DbError, TenantConn};
use crate::error::{AppError, AppResult};
use crate::ids::{TenantId, UserId};

/// How often the worker looks for mail other instances queued.
pub const LOOK_EVERY: std::time::Duration = std::time::Duration::from_secs(30);
/// Attempts before a mail is given up.
pub const MOST_ATTEMPTS: i32 = 9;
/// A mail's one-click unsubscribe headers (RFC 2369, RFC 8058).
const LIST_UNSUBSCRIBE: HeaderName = HeaderName::new_from_ascii_str("List-Unsubscribe");
const LIST_UNSUBSCRIBE_POST: HeaderName = HeaderName::new_from_ascii_str("List-Unsubscribe-Post");
/// Mails sent per claim.
const BATCH: i64 = 20;
/// How long one SMTP conversation may take.
const SMTP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Queues a plain-text mail to `to` in `conn`'s transaction; the worker
/// sends it once that commits.
pub fn queue(conn: &mut PgConnection, to: &str, subject: &str, body: &str) -> Result<i64, DbError> {
    queue_as(conn, "account", to, subject, body, None, None)
}

/// Whom and what a mail tells about (a member's notice: the member, of
/// which tenant, and the conversations whose customers it quotes), so that
/// it goes no further once they part or those are erased ([`withdraw`]).
#[derive(Debug, Clone)]
pub struct About {
    pub tenant: TenantId,
    pub member: UserId,
    pub conversations: Vec<i64>,
}

/// [`queue`], with the kind of mail it is: `account` (invitations,
/// resets), `notice` (`inbox::notice_mail`, which counts its own); and,
/// for mail someone may ask to stop, the address that stops it with one
/// click (sent as `List-Unsubscribe` with `List-Unsubscribe-Post`, RFC
/// 8058, so mail apps offer their own button); and whom it tells about,
/// if anyone.
pub fn queue_as(
    conn: &mut PgConnection,
    kind: &str,
    to: &str,
    subject: &str,
    body: &str,
    unsubscribe: Option<&str>,
    about: Option<&About>,
) -> Result<i64, DbError> {
    Ok(diesel::insert_into(m::table)
        .values((
            m::recipient.eq(to),
            m::subject.eq(subject),
            m::body.eq(body),
            m::kind.eq(kind),
            m::list_unsubscribe.eq(unsubscribe),
            m::tenant_id.eq(about.map(|a| a.tenant.0)),
            m::user_id.eq(about.map(|a| a.member.0)),
            m::conversation_ids.eq(about.map(|a| &a.conversations)),
        ))
        .returning(m::id)
        .get_result(conn)?)
}

/// Which of a tenant's unsent mail [`withdraw`] gives up.
#[derive(Debug, Clone, Copy)]
pub enum Withdrawn {
    /// What tells about this member: they left the tenant.
    Member(UserId),
    /// Everything: the tenant was dropped.
    All,
}

/// Gives up, in `conn`'s transaction, `tenant`'s mail not yet sent that
/// `which` names, saying `why`; answers how many. A mail claimed and being
/// sent at this moment goes.
pub fn withdraw(conn: &mut PgConnection, tenant: TenantId, which: Withdrawn, why: &str) -> Result<usize, DbError> {
    let which = match which {
        Withdrawn::Member(member) => Which::Member(member),
        Withdrawn::All => Which::All,
    };
    withdraw_where(conn, tenant, which, why)
}

/// [`withdraw`] of the tenant's mail that quotes a conversation no longer
/// there (erased with its contact, purged with its channel): called in
/// the transaction that deleted them, after the delete. Its work is the
/// few unsent mails', not the deleted conversations'.
pub fn withdraw_quoting_gone(tc: &mut TenantConn<'_>, why: &str) -> Result<usize, DbError> {
    let tenant = tc.tenant();
    withdraw_where(tc.pg(), tenant, Which::QuotingGone, why)
}

/// [`withdraw`] of `member`'s mail that quotes a conversation of a channel
/// they no longer see: called, in the transaction that took it from them
/// (taken off the channel's list, or made an agent or a viewer, who see
/// only the channels they are listed on), once the change is written.
pub fn withdraw_unseen(tc: &mut TenantConn<'_>, member: UserId, why: &str) -> Result<usize, DbError> {
    let tenant = tc.tenant();
    withdraw_where(tc.pg(), tenant, Which::Unseen(member), why)
}

/// What [`withdraw_where`] gives up.
enum Which {
    Member(UserId),
    All,
    /// Read in the tenant's schema (its `conversations`).
    QuotingGone,
    /// Read in the tenant's schema (its `conversations`, `channel_members`).
    Unseen(UserId),
}

fn withdraw_where(conn: &mut PgConnection, tenant: TenantId, which: Which, why: &str) -> Result<usize, DbError> {
    let unsent = m::table.filter(m::tenant_id.eq(tenant.0)).filter(m::sent_at.is_null()).filter(m::failed_at.is_null());
    let gone = given_up(Utc::now(), why);
    let withdrawn = match which {
        Which::Member(member) => diesel::update(unsent.filter(m::user_id.eq(member.0))).set(gone).execute(conn)?,
        Which::QuotingGone => {
            let quotes_gone = diesel::dsl::sql::<diesel::sql_types::Bool>(
                "EXISTS (SELECT 1 FROM unnest(conversation_ids) AS q(id) \
                          WHERE NOT EXISTS (SELECT 1 FROM conversations c WHERE c.id = q.id))",
            );
            diesel::update(unsent.filter(m::conversation_ids.is_not_null()).filter(quotes_gone))
                .set(gone)
                .execute(conn)?
        }
        Which::Unseen(member) => {
            // The member's id is a number, written into the SQL as one.
            let quotes_unseen = diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
                "EXISTS (SELECT 1 FROM unnest(conversation_ids) AS q(id) JOIN conversations c ON c.id = q.id \
                          WHERE NOT EXISTS (SELECT 1 FROM channel_members l \
                                             WHERE l.channel_id = c.channel_id AND l.user_id = {}))",
                member.0
            ));
            diesel::update(unsent.filter(m::user_id.eq(member.0)).filter(m::conversation_ids.is_not_null()))
                .filter(quotes_unseen)
                .set(gone)
                .execute(conn)?
        }
        Which::All => diesel::update(unsent).set(gone).execute(conn)?,
    };
    if withdrawn > 0 {
        tracing::info!(tenant_id = tenant.0, withdrawn, "unsent mail withdrawn: {why}");
    }
    Ok(withdrawn)
}

#[derive(Queryable, Selectable, Debug)]
#[diesel(table_name = m)]
struct Due {
    id: i64,
    recipient: String,
    subject: String,
    body: String,
    attempts: i32,
    list_unsubscribe: Option<String>,
    tenant_id: Option<i64>,
    user_id: Option<i64>,
}

/// Why a mail is withdrawn: the member it tells about left the tenant.
pub const MEMBER_LEFT: &str = "withdrawn: the member left the tenant";
/// Why a mail is withdrawn: its member no longer sees a conversation it
/// quotes.
pub const NO_LONGER_SEEN: &str = "withdrawn: the member no longer sees the conversation";

/// What a mail given up keeps: when and why, not its body (which may hold
/// a link worth an account) nor its unsubscribe address.
fn given_up(at: DateTime<Utc>, why: &str) -> GivenUp<'_> {
    GivenUp { failed_at: at, body: "", list_unsubscribe: None, last_error: why }
}

#[derive(AsChangeset)]
#[diesel(table_name = m, treat_none_as_null = true)]
struct GivenUp<'a> {
    failed_at: DateTime<Utc>,
    body: &'a str,
    list_unsubscribe: Option<&'a str>,
    last_error: &'a str,
}

/// When attempt `attempts` (from 1) that failed is tried again.
fn retry_at(now: DateTime<Utc>, attempts: i32) -> DateTime<Utc> {
    now + Duration::minutes(1i64 << (attempts - 1).clamp(0, 8))
}

/// How long a claim holds its mail from other instances: the batch sent
/// one by one, each within [`SMTP_TIMEOUT`], with room to spare.
fn lease() -> Duration {
    Duration::from_std(SMTP_TIMEOUT * (BATCH as u32 + 1)).unwrap_or_else(|_| Duration::minutes(10))
}

/// Claims up to a batch of due mail, held from other instances for the
/// [`lease`]. Due by the database's clock, which wrote the rows' times (a
/// mail just queued is due at once however the clocks differ). Mail
/// about a member no longer in its tenant is withdrawn instead: it was
/// queued as they were being removed, after [`withdraw`] looked.
fn claim(conn: &mut PgConnection, now: DateTime<Utc>) -> Result<Vec<Due>, DbError> {
    conn.transaction(|conn| {
        let mut due: Vec<Due> = m::table
            .filter(m::sent_at.is_null())
            .filter(m::failed_at.is_null())
            .filter(m::next_attempt_at.le(diesel::dsl::now))
            .order(m::id)
            .limit(BATCH)
            .for_update()
            .skip_locked()
            .select(Due::as_select())
            .load(conn)?;
        let mut left = Vec::new();
        for mail in &due {
            let (Some(tenant), Some(member)) = (mail.tenant_id, mail.user_id) else { continue };
            let member_still = diesel::select(diesel::dsl::exists(memberships::table.find((member, tenant))));
            if !member_still.get_result::<bool>(conn)? {
                left.push(mail.id);
            }
        }
        if !left.is_empty() {
            tracing::info!(mails = ?left, "unsent mail withdrawn: {MEMBER_LEFT}");
            diesel::update(m::table.filter(m::id.eq_any(&left))).set(given_up(now, MEMBER_LEFT)).execute(conn)?;
            due.retain(|mail| !left.contains(&mail.id));
        }
        for mail in &due {
            diesel::update(m::table.find(mail.id))
                .set((m::attempts.eq(mail.attempts + 1), m::next_attempt_at.eq(now + lease())))
                .execute(conn)?;
        }
        Ok(due.into_iter().map(|d| Due { attempts: d.attempts + 1, ..d }).collect())
    })
}

/// What became of one attempt.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Sent,
    /// Try again later (the server said "not now", or was not reached).
    Later(String),
    /// Never (an address that is none, a refusal for good).
    Never(String),
}

fn settle(conn: &mut PgConnection, mail: &Due, outcome: &Outcome, now: DateTime<Utc>) -> Result<(), DbError> {
    let row = m::table.find(mail.id);
    match outcome {
        Outcome::Sent => diesel::update(row)
            .set((
                m::sent_at.eq(now),
                m::body.eq(""),
                m::list_unsubscribe.eq(None::<String>),
                m::last_error.eq(None::<String>),
            ))
            .execute(conn)?,
        Outcome::Later(why) if mail.attempts < MOST_ATTEMPTS => diesel::update(row)
            .set((m::last_error.eq(why), m::next_attempt_at.eq(retry_at(now, mail.attempts))))
            .execute(conn)?,
        Outcome::Later(why) | Outcome::Never(why) => {
            tracing::warn!(mail = mail.id, error = %why, "mail given up");
            diesel::update(row).set(given_up(now, why)).execute(conn)?
        }
    };
    Ok(())
}

/// `SWITCHBOARD_SMTP_URL` that prints mail instead of sending it: for the
/// demo and development only, since a mail's link is worth an account.
pub const PRINT: &str = "print";

/// Where mail goes.
enum Transport {
    /// One SMTP transport, kept for the worker's life (lettre pools its
    /// connections).
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    /// Standard output ([`PRINT`]).
    Print,
}

/// The sending side of the worker.
pub struct Mailer {
    transport: Transport,
    from: Mailbox,
}

impl Mailer {
    pub fn new(cfg: &MailConfig) -> anyhow::Result<Mailer> {
        let url = cfg.smtp_url.expose();
        let transport = if url == PRINT {
            Transport::Print
        } else {
            Transport::Smtp(AsyncSmtpTransport::<Tokio1Executor>::from_url(url)?.timeout(Some(SMTP_TIMEOUT)).build())
        };
        Ok(Mailer { transport, from: cfg.from.parse()? })
    }

    async fn send(&self, mail: &Due) -> Outcome {
        let to: Mailbox = match mail.recipient.parse() {
            Ok(to) => to,
            Err(e) => return Outcome::Never(format!("the address {:?} is none: {e}", mail.recipient)),
        };
        let mut message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.as_str())
            .header(ContentType::TEXT_PLAIN);
        if let Some(url) = &mail.list_unsubscribe {
            message = message
                .raw_header(HeaderValue::new(LIST_UNSUBSCRIBE, format!("<{url}>")))
                .raw_header(HeaderValue::new(LIST_UNSUBSCRIBE_POST, "List-Unsubscribe=One-Click".into()));
        }
        let message = message.body(mail.body.clone());
        let message = match message {
            Ok(message) => message,
            Err(e) => return Outcome::Never(format!("the mail could not be made: {e}")),
        };
        let smtp = match &self.transport {
            Transport::Smtp(smtp) => smtp,
            Transport::Print => {
                println!("\n--- mail to {}: {}\n{}---", mail.recipient, mail.subject, mail.body);
                return Outcome::Sent;
            }
        };
        match smtp.send(message).await {
            Ok(_) => Outcome::Sent,
            Err(e) if e.is_permanent() => Outcome::Never(e.to_string()),
            Err(e) => Outcome::Later(e.to_string()),
        }
    }
}

/// What became of one mail sent at once ([`Mailer::send_now`]).
pub enum Sent {
    Sent,
    /// Refused for good: the reason.
    Refused(String),
    /// Not now (the server not reached, a refusal for now): the reason.
    NotNow(String),
}

impl Mailer {
    /// Sends one mail at once, outside the outbox: `switchboard mail test`.
    pub async fn send_now(&self, to: &str, subject: &str, body: &str) -> Sent {
        let mail = Due {
            id: 0,
            recipient: to.into(),
            subject: subject.into(),
            body: body.into(),
            attempts: 0,
            list_unsubscribe: None,
            tenant_id: None,
            user_id: None,
        };
        match self.send(&mail).await {
            Outcome::Sent => Sent::Sent,
            Outcome::Never(why) => Sent::Refused(why),
            Outcome::Later(why) => Sent::NotNow(why),
        }
    }
}

/// Sends the mail due now; how many went.
pub async fn send_due(pool: &crate::db::PgPool, mailer: &Mailer) -> AppResult<usize> {
    let mut sent = 0;
    loop {
        let p = pool.clone();
        // Connections the server closed since are passed over: a pass failed
        // on one waits for the next, and a settle failed on one leaves mail
        // that went to be sent again once its lease runs out.
        let due = actix_web::web::block(move || claim(&mut *crate::db::live_connection(&p)?, Utc::now()))
            .await
            .map_err(AppError::internal)??;
        if due.is_empty() {
            return Ok(sent);
        }
        let full = due.len() as i64 == BATCH;
        let mut outcomes = Vec::with_capacity(due.len());
        for mail in due {
            // A bug met with one mail fails that one (tried later, as a
            // refusal for now is), not the rest of the batch.
            let outcome = crate::app::contained(mailer.send(&mail))
                .await
                .unwrap_or_else(|panic| Outcome::Later(format!("sending it failed: {panic}")));
            sent += usize::from(outcome == Outcome::Sent);
            outcomes.push((mail, outcome));
        }
        let p = pool.clone();
        actix_web::web::block(move || {
            let conn = &mut *crate::db::live_connection(&p)?;
            let now = Utc::now();
            outcomes.iter().try_for_each(|(mail, outcome)| settle(conn, mail, outcome, now))?;
            Ok::<_, DbError>(())
        })
        .await
        .map_err(AppError::internal)??;
        if !full {
            return Ok(sent);
        }
    }
}

/// The worker of `serve`: sends what is due whenever this instance queues
/// a mail, and every [`LOOK_EVERY`]. Does nothing when mail is off.
pub async fn run(state: actix_web::web::Data<crate::app::AppState>) {
    let Some(cfg) = state.config.mail.clone() else { return };
    let mailer = match Mailer::new(&cfg) {
        Ok(mailer) => mailer,
        Err(e) => {
            tracing::error!(error = %e, "mail is off: SWITCHBOARD_SMTP_URL or SWITCHBOARD_MAIL_FROM cannot be used");
            return;
        }
    };
    let mut failing = crate::telemetry::Repeats::default();
    loop {
        crate::telemetry::tell_repeats!(failing, "mail's pass", &send_due(state.db.pool(), &mailer).await);
        let _ = tokio::time::timeout(LOOK_EVERY, state.wake_mail.notified()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_hours() {
        let now = Utc::now();
        assert_eq!(retry_at(now, 1) - now, Duration::minutes(1));
        assert_eq!(retry_at(now, 2) - now, Duration::minutes(2));
        assert_eq!(retry_at(now, 9) - now, Duration::minutes(256));
        assert_eq!(retry_at(now, 30) - now, Duration::minutes(256));
        let total: i64 = (1..MOST_ATTEMPTS).map(|n| (retry_at(now, n) - now).num_minutes()).sum();
        assert!((240..=600).contains(&total), "{total} minutes of retries");
    }
}
