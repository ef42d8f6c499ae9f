//! Mail about the inbox: a member who is not online hears by mail that a
//! colleague assigned them a conversation or mentioned them in a note, or
//! that a conversation assigned to them passed its reply target (an
//! extension; with mail on, `mail`).
//!
//! Decisions:
//! - The trigger is the notice a change leaves for one member: a
//!   mention's or an overdue reply's `notification` event (the latter to
//!   the assignee; one without an assignee mails nobody), or an
//!   assignment's notice kept for
//!   mail alone (`{kind: "assigned", user_id, by, conversation_id}`; the
//!   live inbox has `conversation.updated` with the assignee, and its
//!   stream stays as clients know it). The same unit of work queues the
//!   mail ([`queue`], called by
//!   `AppState::tenant_with_events` before its events are written), so a
//!   change that rolls back mails nothing and one that commits is mailed
//!   even if the instance stops at once.
//! - Only to someone not online in the tenant at that moment (their
//!   presence offline or away, on every instance, as the hub shows it):
//!   someone looking at the inbox sees it there. Never
//!   for what a member does to themselves (taking a conversation), nor
//!   for the server's auto-assignments (they go to members online), nor
//!   for a customer writing in a conversation assigned to them (kept in
//!   their notifications; mailing every message would bury the rest).
//! - Each member chooses, per tenant, `email_notifications: {assigned,
//!   mentioned, overdue}` (`GET`/`PATCH /api/me`); all on by default, as
//!   support tools do.
//! - One mail per member and unit of work: a bulk change assigning forty
//!   conversations sends one mail listing the first [`MOST_LISTED`] and
//!   how many more. At most [`MOST_PER_HOUR`] such mails to an address an
//!   hour (a busy day must not flood a mailbox, nor a tenant's admins use
//!   the server to mail someone without end); past it, notices are only in
//!   the inbox, and the log says so.
//! - The mail names the workspace, who did it, the customer, the channel,
//!   and a short preview (the note that mentions, or the customer's last
//!   message); it leaves our servers, so it holds no more than the inbox
//!   would show at a glance. With `SWITCHBOARD_CONVERSATION_URL` (a
//!   template with `{tenant}` and `{conversation_id}`, where the
//!   operator's inbox app shows one) each line links to its conversation;
//!   without, it says where to look.
//! - Each mail can be stopped from the mail itself: it ends with a link,
//!   and carries it as its `List-Unsubscribe` header with
//!   `List-Unsubscribe-Post` (RFC 8058), so mail apps show their own
//!   button. The link (`SWITCHBOARD_PUBLIC_URL/unsubscribe?token=…`, the
//!   token signed for this use alone and naming the member and the
//!   tenant, and the kinds of notice the mail carried) opens a page that
//!   asks first (`GET` changes nothing: mail scanners open links); `POST`
//!   to it, by that page or a mail app's button, turns off those kinds of
//!   notice mail of that tenant to that member, as a mail app's button
//!   stops the one list a mail came from; the page's second button (or
//!   `&all=true`) turns off all three ([`unsubscribe`]). `PATCH /api/me`
//!   turns them on again. A link mailed before links named their kinds
//!   stops all three, as it said it would. It does not expire: a mail read
//!   months later must still stop the next; all it can do is stop mail.

use diesel::pg::PgConnection;
use diesel::prelude::*;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};

use super::events::MemberNotice;
use crate::auth::members::prefs_of_member;
use crate::auth::users;
use crate::db::schema::mail_outbox;
use crate::db::TenantConn;
use crate::error::AppResult;
use crate::ids::UserId;

/// The `kind` of these mails in `public.mail_outbox`.
pub const KIND: &str = "notice";
/// Notice mails to one address in an hour, at most.
pub const MOST_PER_HOUR: i64 = 30;
/// Notices one mail lists; the rest are counted.
pub const MOST_LISTED: usize = 10;
/// Characters of a preview.
const PREVIEW_CHARS: usize = 200;

/// Who may be mailed now: mail is on, and who is online in the tenant.
pub struct Reach<'a> {
    pub online: &'a [UserId],
    /// `SWITCHBOARD_CONVERSATION_URL`, if set.
    pub conversation_url: Option<&'a str>,
    /// `SWITCHBOARD_PUBLIC_URL`, where the unsubscribe page is.
    pub public_url: &'a str,
    /// The key unsubscribe links are signed with ([`unsubscribe_key`]).
    pub unsubscribe_key: &'a [u8],
}

/// The key that signs unsubscribe links, of the server's secret.
pub fn unsubscribe_key(secret: &[u8]) -> Vec<u8> {
    crate::signed::key(secret, "switchboard notice mail unsubscribe v1")
}

/// The kinds of notice mail, as `email_notifications` names them.
pub const KINDS: [&str; 3] = ["assigned", "mentioned", "overdue"];

/// What an unsubscribe link names.
#[derive(serde::Serialize, Deserialize)]
struct Unsubscribing {
    /// The member.
    u: i64,
    /// The tenant.
    t: i64,
    /// The kinds of notice its mail carried (of [`KINDS`]), which it stops.
    /// Links mailed before they named them have none: every kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k: Option<Vec<String>>,
}

/// The `email_notifications` kind a notice is mailed under; none for a
/// customer writing in a conversation assigned to the member: the inbox
/// keeps it (`notifications`), and a mail each time a customer wrote
/// would bury the rest.
fn kind_of(notice: &MemberNotice) -> Option<&'static str> {
    match notice.kind.as_str() {
        "assigned" => Some("assigned"),
        "mention" => Some("mentioned"),
        super::notifications::REPLY_OVERDUE => Some("overdue"),
        _ => None,
    }
}

/// The link that stops `member`'s notice mail of `tenant` of `kinds`.
fn unsubscribe_url(reach: &Reach<'_>, member: UserId, tenant: crate::ids::TenantId, kinds: Vec<String>) -> String {
    let token = crate::signed::sign(reach.unsubscribe_key, &Unsubscribing { u: member.0, t: tenant.0, k: Some(kinds) });
    format!("{}/unsubscribe?token={token}", reach.public_url.trim_end_matches('/'))
}

/// What `POST /unsubscribe` answers.
#[derive(Debug, serde::Serialize)]
pub struct Unsubscribed {
    pub unsubscribed: bool,
    /// The tenant's name, for the page to say which mails stop.
    pub workspace: Option<String>,
    /// The kinds it turns off (of [`KINDS`]; some may have been off
    /// already), for the page to say which.
    pub stopped: Vec<&'static str>,
}

/// Turns off the notice mail the link `token` names (one member, one
/// tenant, the kinds its mail carried; every kind with `all`): 404
/// `unsubscribe_link_not_found` for a token this server did not sign for
/// this use. Once more, or for someone who left, it answers the same and
/// changes nothing.
pub fn unsubscribe(conn: &mut PgConnection, key: &[u8], token: &str, all: bool) -> AppResult<Unsubscribed> {
    let Ok(named) = crate::signed::open::<Unsubscribing>(key, token) else {
        return Err(crate::error::AppError::new(
            crate::error::ErrorKind::NotFound,
            "unsubscribe_link_not_found",
            "this unsubscribe link is not one this server mailed; open the whole link from the mail",
        ));
    };
    let (member, tenant) = (UserId(named.u), crate::ids::TenantId(named.t));
    let workspace = crate::tenancy::find(conn, tenant)?.map(|t| t.name);
    let stopped: Vec<&'static str> = match (all, &named.k) {
        (false, Some(kinds)) => KINDS.into_iter().filter(|k| kinds.iter().any(|named| named == k)).collect(),
        _ => KINDS.to_vec(),
    };
    let off = |kind: &str| stopped.contains(&kind).then_some(false);
    let change = crate::auth::members::PrefsChange {
        assigned: off("assigned"),
        mentioned: off("mentioned"),
        overdue: off("overdue"),
    };
    if crate::auth::members::set_prefs(conn, member, tenant, change)? {
        tracing::info!(user_id = member.0, tenant_id = tenant.0, kinds = ?stopped, "notice mail turned off by its unsubscribe link");
    }
    Ok(Unsubscribed { unsubscribed: true, workspace, stopped })
}

#[derive(QueryableByName)]
struct About {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    contact: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Text)]
    channel: String,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    last_in: Option<String>,
}

/// One line of a mail.
struct Line {
    conversation: i64,
    text: String,
}

/// Queues, in `tc`'s transaction, the mails a unit of work's `notices`
/// call for (see the module docs); answers how many.
pub fn queue(tc: &mut TenantConn<'_>, notices: &[MemberNotice], reach: &Reach<'_>) -> AppResult<usize> {
    let mut by_member: BTreeMap<i64, Vec<&MemberNotice>> = BTreeMap::new();
    // The server's own assignments (auto-assign, `by` none) go to members
    // online, who see them in the inbox; a mail would have no colleague to
    // name.
    let mailable = |n: &&MemberNotice| kind_of(n).is_some() && !(n.kind == "assigned" && n.by.is_none());
    for notice in notices.iter().filter(mailable).filter(|n| !reach.online.contains(&UserId(n.user))) {
        by_member.entry(notice.user).or_default().push(notice);
    }
    if by_member.is_empty() {
        return Ok(0);
    }
    let tenant_id = tc.tenant();
    let Some(tenant) = crate::tenancy::find(tc.pg(), tenant_id)? else { return Ok(0) };
    let mut queued = 0;
    // A colleague named in several lines is looked up once.
    let mut names: HashMap<i64, String> = HashMap::new();
    for (member, notices) in by_member {
        // A conversation may still name someone who left the tenant (its
        // reply target passing): they are mailed nothing of it.
        let Some(prefs) = prefs_of_member(tc.pg(), UserId(member), tenant_id)? else { continue };
        let asked: Vec<_> = notices
            .iter()
            .filter(|notice| match kind_of(notice) {
                Some("assigned") => prefs.assigned,
                Some("mentioned") => prefs.mentioned,
                Some(_) => prefs.overdue,
                None => false,
            })
            .collect();
        if asked.is_empty() {
            continue;
        }
        let Some(person) = users::find(tc.pg(), UserId(member))? else { continue };
        if sent_lately(tc.pg(), &person.email)? >= MOST_PER_HOUR {
            tracing::info!(user_id = member, "notice mail skipped: this address had its mails this hour");
            continue;
        }
        // Only the listed lines are worked out; the rest are counted.
        let mut lines = Vec::with_capacity(asked.len().min(MOST_LISTED));
        for notice in asked.iter().take(MOST_LISTED) {
            let who = colleague(tc, &mut names, notice.by)?;
            lines.push(line(tc, notice, &who)?);
        }
        let kinds = KINDS.into_iter().filter(|k| asked.iter().any(|n| kind_of(n) == Some(*k))).map(String::from);
        let stop = unsubscribe_url(reach, UserId(member), tenant_id, kinds.collect());
        let (subject, body) = compose(&tenant, &lines, asked.len(), reach.conversation_url, &stop);
        let conversations = lines.iter().map(|l| l.conversation).collect();
        let about = crate::mail::About { tenant: tenant_id, member: UserId(member), conversations };
        crate::mail::queue_as(tc.pg(), KIND, &person.email, &subject, &body, Some(&stop), Some(&about))?;
        queued += 1;
    }
    Ok(queued)
}

/// The name colleague `by` goes by, looked up once per mail run.
fn colleague(tc: &mut TenantConn<'_>, names: &mut HashMap<i64, String>, by: Option<i64>) -> AppResult<String> {
    let Some(id) = by else { return Ok("A colleague".into()) };
    if let Some(name) = names.get(&id) {
        return Ok(name.clone());
    }
    let name = users::find(tc.pg(), UserId(id))?.map_or_else(|| "A colleague".into(), |u| u.display_name().to_string());
    names.insert(id, name.clone());
    Ok(name)
}

fn sent_lately(conn: &mut PgConnection, address: &str) -> AppResult<i64> {
    // By the database's clock, which wrote the rows' times.
    let within_the_hour = diesel::dsl::sql::<diesel::sql_types::Bool>("created_at > now() - interval '1 hour'");
    Ok(mail_outbox::table
        .filter(mail_outbox::recipient.eq(address))
        .filter(mail_outbox::kind.eq(KIND))
        .filter(within_the_hour)
        .count()
        .get_result(conn)?)
}

/// "Al assigned you the conversation with Ana (Acme Support)", and a
/// preview.
fn line(tc: &mut TenantConn<'_>, notice: &MemberNotice, who: &str) -> AppResult<Line> {
    let conversation = notice.conversation;
    let about: Option<About> = diesel::sql_query(
        "SELECT ct.name AS contact, ch.name AS channel, \
                (SELECT m.text FROM messages m WHERE m.conversation_id = c.id AND m.direction = 'in' \
                   AND m.deleted_at IS NULL ORDER BY m.id DESC LIMIT 1) AS last_in \
           FROM conversations c JOIN contacts ct ON ct.id = c.contact_id JOIN channels ch ON ch.id = c.channel_id \
          WHERE c.id = $1",
    )
    .bind::<diesel::sql_types::BigInt, _>(conversation)
    .get_result(tc.pg())
    .optional()?;
    let (name, channel, last_in) = match about {
        Some(a) => (a.contact.filter(|n| !n.trim().is_empty()), a.channel, a.last_in),
        None => (None, "a channel".into(), None),
    };
    let customer = name.clone().unwrap_or_else(|| "a customer".into());
    let customer_said = |writer: Option<String>| {
        let writer = writer.unwrap_or_else(|| "Customer".into());
        last_in.as_deref().map(|t| format!("{writer}: {}", clip(t)))
    };
    let (mut text, preview) = match notice.kind.as_str() {
        "assigned" => {
            (format!("{who} assigned you the conversation with {customer} ({channel})."), customer_said(name))
        }
        "mention" => (
            format!("{who} mentioned you in the conversation with {customer} ({channel})."),
            notice.preview.as_deref().map(|t| format!("{who}: {}", clip(t))),
        ),
        _ => (format!("The reply to {customer} ({channel}) is overdue: they are still waiting."), customer_said(name)),
    };
    if let Some(p) = preview {
        text.push_str(&format!("\n  \u{201c}{p}\u{201d}"));
    }
    Ok(Line { conversation, text })
}

/// A preview on one line, at most [`PREVIEW_CHARS`] characters.
fn clip(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > PREVIEW_CHARS {
        format!("{}…", flat.chars().take(PREVIEW_CHARS).collect::<String>())
    } else {
        flat
    }
}

/// The mail of `lines`, the first of `all` notices.
fn compose(
    tenant: &crate::tenancy::Tenant,
    lines: &[Line],
    all: usize,
    url: Option<&str>,
    unsubscribe: &str,
) -> (String, String) {
    let subject = match lines {
        [one] if all == 1 => format!("{} — {}", first_words(&one.text), tenant.name),
        _ => format!("{all} conversations need you in {}", tenant.name),
    };
    let mut body = String::new();
    for line in lines {
        body.push_str(&line.text);
        body.push('\n');
        if let Some(url) = url {
            body.push_str(&format!(
                "  {}\n",
                url.replace("{tenant}", &tenant.slug).replace("{conversation_id}", &line.conversation.to_string())
            ));
        }
        body.push('\n');
    }
    if all > lines.len() {
        body.push_str(&format!("…and {} more.\n\n", all - lines.len()));
    }
    if url.is_none() {
        let them = if all == 1 { "it" } else { "them" };
        body.push_str(&format!("Find {them} in the {} inbox (workspace “{}”).\n\n", tenant.name, tenant.slug));
    }
    body.push_str(&format!(
        "You were mailed because you were not online in the inbox. Choose which of these mails you get in your \
         settings (email notifications), or stop mails like this one from {}:\n{unsubscribe}\n",
        tenant.name
    ));
    (subject, body)
}

/// A subject from a line: its first sentence, without the preview.
fn first_words(text: &str) -> String {
    text.lines().next().unwrap_or_default().trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preview_is_one_clipped_line() {
        assert_eq!(clip("  where is\n my   order? "), "where is my order?");
        let long = "é".repeat(PREVIEW_CHARS + 5);
        assert_eq!(clip(&long).chars().count(), PREVIEW_CHARS + 1);
        assert!(clip(&long).ends_with('…'));
    }

    #[test]
    fn a_mail_lists_its_first_lines_and_counts_the_rest() {
        let tenant = crate::tenancy::Tenant {
            id: 1,
            slug: "acme".into(),
            name: "Acme".into(),
            schema_name: "tenant_acme".into(),
            status: "active".into(),
            schema_version: None,
            created_at: chrono::Utc::now(),
            require_mfa: false,
        };
        let lines: Vec<Line> =
            (1..=MOST_LISTED as i64).map(|n| Line { conversation: n, text: format!("Line {n}.") }).collect();
        let (subject, body) = compose(
            &tenant,
            &lines,
            MOST_LISTED + 2,
            Some("https://x.test/{tenant}/c/{conversation_id}"),
            "https://u.test",
        );
        assert_eq!(subject, format!("{} conversations need you in Acme", MOST_LISTED + 2));
        assert!(body.contains("Line 1.\n  https://x.test/acme/c/1\n") && body.contains("…and 2 more."), "{body}");
        assert!(!body.contains("Find"), "a link says where: {body}");
        let (subject, body) = compose(&tenant, &lines[..1], 1, None, "https://x.test/unsubscribe?token=t");
        assert_eq!(subject, "Line 1 — Acme");
        assert!(body.contains("Find it in the Acme inbox (workspace “acme”)."), "{body}");
        assert!(body.ends_with("stop mails like this one from Acme:\nhttps://x.test/unsubscribe?token=t\n"), "{body}");
    }

    #[test]
    fn a_subject_is_the_first_sentence() {
        assert_eq!(
            first_words("Al assigned you the conversation with Ana (Shop).\n  “hi”"),
            "Al assigned you the conversation with Ana (Shop)"
        );
    }
}
