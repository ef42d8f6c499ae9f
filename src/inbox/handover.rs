//! Handover: which app answers a Messenger or Instagram customer.
//!
//! A page may have several apps at once: Switchboard, a chatbot, Meta's own
//! Page Inbox (Business Suite). Meta's handover protocol (and Conversation
//! Routing, which builds on it) lets one app hold a customer's thread at a
//! time; the others get the thread's events on `standby` and cannot answer.
//! This module keeps what Meta told us of who holds each conversation's
//! thread (`conversations.thread_control`), so agents see it and a reply
//! takes the thread back before it is sent:
//!
//! - `pass_thread_control` naming our app (or none): ours; naming another: theirs.
//! - `take_thread_control` (sent to the app it was taken from): theirs, by
//!   the app Meta names in `new_owner_app_id` (when it does).
//! - `request_thread_control`: another app asks for the thread; kept as
//!   `requested_by` until the thread moves.
//! - any event delivered on `standby`: another app holds it (standby does
//!   not say which; an app already known is kept).
//!
//! Events apply in Meta's order (their `timestamp`), whatever order they
//! are delivered in: one older than the last applied changes nothing, and
//! neither does a repeat. A change is announced (`conversation.updated`).
//! When another app asks for the thread, or takes it, of a conversation
//! not resolved, the channel's sockets also get a `notification`
//! (`thread_requested`, `thread_taken`: `{conversation_id, channel_id,
//! user_id (the assignee, or null), app_id, page_inbox}`), as the person
//! working on it should know; an agent's own take or pass tells nobody.
//! A conversation no handover event or standby delivery touched has no
//! `thread_control` (null): the usual case, where Switchboard answers.
//!
//! An agent's reply to a thread held elsewhere takes it first
//! (`take_thread_control`, in the sender; if Meta refuses, the reply fails
//! with Meta's reason). Automatic messages never take it: no greeting or
//! away reply is written for a thread held elsewhere (a standby event's
//! holder is applied before the message it brings), and a survey, or
//! anything automatic queued before the thread moved, fails with
//! `thread_held_elsewhere`. `POST /api/conversations/{id}/thread-control`
//! takes the thread, or passes it to another app (the Page Inbox unless
//! one is named). WhatsApp has no such events here: its conversations never
//! have a `thread_control`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use serde::{Deserialize, Serialize};

use super::events::EventLog;
use super::views::{ConversationRow, ConversationView, Names};
use super::ConversationId;
use crate::auth::Role;
use crate::channels::{ChannelRow, Platform};
use crate::db::tenant_schema::conversations as c;
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;
use crate::meta::webhook::{is_page_inbox, ThreadChange, PAGE_INBOX_APP_ID};
use crate::secret::Secret;

/// SQL: the conversation's thread is held by another app (the list's
/// `held_elsewhere` filter; NULL when nothing was said).
pub const HELD_ELSEWHERE: &str = "conversations.thread_control->>'held_by' = 'other'";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Holder {
    /// Switchboard answers.
    Us,
    /// Another app does; replies take the thread back first.
    Other,
}

/// What is kept in `conversations.thread_control`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadControl {
    pub held_by: Holder,
    /// The other app, when Meta named it.
    #[serde(default)]
    pub app_id: Option<String>,
    /// Another app asked for the thread since it last moved.
    #[serde(default)]
    pub requested_by: Option<String>,
    /// Meta's time of the event this was last set from.
    pub since: DateTime<Utc>,
}

/// As clients see it.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadControlView {
    /// `us` or `other`.
    pub held_by: Holder,
    pub app_id: Option<String>,
    /// The app holding it is Meta's Page Inbox (Business Suite).
    pub page_inbox: bool,
    pub requested_by: Option<String>,
    pub since: DateTime<Utc>,
}

impl ThreadControl {
    pub fn of(row: &ConversationRow) -> Option<ThreadControl> {
        row.thread_control.as_ref().and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// Whether a reply must take the thread first.
    pub fn held_elsewhere(row: &ConversationRow) -> bool {
        ThreadControl::of(row).is_some_and(|t| t.held_by == Holder::Other)
    }

    pub fn view(&self) -> ThreadControlView {
        ThreadControlView {
            held_by: self.held_by,
            app_id: self.app_id.clone(),
            page_inbox: self.app_id.as_deref().is_some_and(is_page_inbox),
            requested_by: self.requested_by.clone(),
            since: self.since,
        }
    }

    /// The thread after `change` at `at` ([module docs](self)); `None` when
    /// it changes nothing (older than what is kept, or a repeat). `ours` is
    /// this deployment's app id.
    pub fn next(
        current: Option<&ThreadControl>,
        change: &ThreadChange,
        at: DateTime<Utc>,
        ours: &str,
    ) -> Option<ThreadControl> {
        if current.is_some_and(|c| at < c.since) {
            return None;
        }
        let held = |app: &Option<String>| match app {
            Some(a) if a != ours => (Holder::Other, Some(a.clone())),
            _ => (Holder::Us, None),
        };
        let (held_by, app_id, requested_by) = match change {
            ThreadChange::Passed { to } => {
                let (h, a) = held(to);
                (h, a, None)
            }
            ThreadChange::Taken { by } => match by {
                Some(b) if b == ours => (Holder::Us, None, None),
                by => (Holder::Other, by.clone(), None),
            },
            ThreadChange::Requested { by } => {
                let (h, a) = current.map_or((Holder::Us, None), |c| (c.held_by, c.app_id.clone()));
                (h, a, by.clone().filter(|b| b != ours))
            }
            // Standby says someone else holds it, not who: what is known stays.
            ThreadChange::Standby => match current {
                Some(c) if c.held_by == Holder::Other => return None,
                _ => (Holder::Other, None, None),
            },
        };
        let next = ThreadControl { held_by, app_id, requested_by, since: at };
        (current != Some(&next)).then_some(next)
    }

    /// The same holder and request (whatever the time).
    fn same_as(&self, other: &ThreadControl) -> bool {
        (self.held_by, &self.app_id, &self.requested_by) == (other.held_by, &other.app_id, &other.requested_by)
    }
}

/// A thread's move, as written.
pub struct Moved {
    pub before: Option<ThreadControl>,
    pub after: ThreadControl,
}

impl Moved {
    /// Whether agents should hear of it: the holder or the request
    /// changed, not just the time.
    pub fn announced(&self) -> bool {
        self.before.as_ref().is_none_or(|c| !c.same_as(&self.after))
    }

    /// What the team is told of a move another app made, for a
    /// conversation not resolved: another app asked for the thread
    /// (`thread_requested`), or took it (`thread_taken`). `user_id` is the
    /// assignee (or null), as in the other notifications.
    pub fn notice(&self, row: &ConversationRow) -> Option<serde_json::Value> {
        if row.status == "resolved" {
            return None;
        }
        let before = self.before.as_ref();
        let (kind, app) = if self.after.requested_by.is_some()
            && before.and_then(|b| b.requested_by.as_ref()) != self.after.requested_by.as_ref()
        {
            ("thread_requested", self.after.requested_by.as_deref())
        } else if self.after.held_by == Holder::Other && before.is_none_or(|b| b.held_by != Holder::Other) {
            ("thread_taken", self.after.app_id.as_deref())
        } else {
            return None;
        };
        Some(serde_json::json!({
            "kind": kind,
            "conversation_id": row.id.to_string(),
            "channel_id": row.channel_id.to_string(),
            "user_id": row.assignee_id.map(|a| a.to_string()),
            "app_id": app,
            "page_inbox": app.is_some_and(is_page_inbox),
        }))
    }
}

/// Applies `change` to `row` (locked by the caller), writing it and
/// keeping the row in step; the move, if it moved.
pub fn apply(
    tc: &mut TenantConn<'_>,
    row: &mut ConversationRow,
    change: &ThreadChange,
    at: DateTime<Utc>,
    ours: &str,
) -> AppResult<Option<Moved>> {
    let before = ThreadControl::of(row);
    let Some(after) = ThreadControl::next(before.as_ref(), change, at, ours) else { return Ok(None) };
    let value = serde_json::to_value(&after).map_err(AppError::internal)?;
    diesel::update(c::table.find(row.id))
        .set((c::thread_control.eq(&value), c::updated_at.eq(diesel::dsl::now)))
        .execute(tc.pg())?;
    row.thread_control = Some(value);
    Ok(Some(Moved { before, after }))
}

/// Applies `change` to conversation `id` (locking it) and announces it.
pub fn apply_to(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    id: i64,
    change: &ThreadChange,
    at: DateTime<Utc>,
    ours: &str,
) -> AppResult<ConversationRow> {
    let mut row: ConversationRow =
        c::table.find(id).select(ConversationRow::as_select()).for_no_key_update().first(tc.pg())?;
    if apply(tc, &mut row, change, at, ours)?.is_some_and(|m| m.announced()) {
        let view = Names::default().conversation(tc, &row)?;
        log.append(tc, "conversation.updated", Some(row.channel_id), Some(row.id), &view)?;
    }
    Ok(row)
}

/// What an agent asks of a thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Take,
    /// To this app.
    Pass(String),
}

impl Request {
    /// From `POST …/thread-control` `{action, app_id?}`.
    pub fn parse(action: &str, app_id: Option<&str>, ours: &str) -> AppResult<Request> {
        let app = match app_id {
            None => None,
            // Meta's ids are positive numbers, written without leading zeros.
            Some(a)
                if (1..=32).contains(&a.len())
                    && a.bytes().all(|b| b.is_ascii_digit())
                    && !a.starts_with('0')
                    && a != ours =>
            {
                Some(a)
            }
            Some(_) => {
                return Err(AppError::invalid("invalid_app_id", "app_id is another app's Meta id (digits only)"))
            }
        };
        match (action, app) {
            ("take", None) => Ok(Request::Take),
            ("take", Some(_)) => Err(AppError::invalid("invalid_app_id", "taking the thread names no app")),
            ("pass", app) => Ok(Request::Pass(app.unwrap_or(PAGE_INBOX_APP_ID).to_string())),
            _ => Err(AppError::invalid("invalid_action", "action is take or pass")),
        }
    }

    /// What Meta will have done once it says yes.
    pub fn change(&self, ours: &str) -> ThreadChange {
        match self {
            Request::Take => ThreadChange::Passed { to: Some(ours.to_string()) },
            Request::Pass(app) => ThreadChange::Passed { to: Some(app.clone()) },
        }
    }
}

/// What a take or pass needs of Meta, read with the caller's access checked.
pub struct Target {
    pub conversation: i64,
    pub channel: ChannelRow,
    pub contact: String,
    pub token: Secret<String>,
}

/// The thread of a conversation the caller sees, on a connected Messenger
/// or Instagram channel.
pub fn target(
    tc: &mut TenantConn<'_>,
    keys: &crate::crypto::Keyring,
    user: UserId,
    role: Role,
    id: ConversationId,
) -> AppResult<Target> {
    use crate::db::tenant_schema::contacts;
    let conv = super::messages::visible_conversation(tc, user, role, id)?;
    let channel = crate::channels::find(tc, crate::channels::ChannelId(conv.channel_id))?;
    if channel.platform() == Platform::Whatsapp {
        return Err(AppError::invalid("handover_unsupported", "WhatsApp threads are not handed over here"));
    }
    let token = match (channel.status.as_str(), channel.token(keys)?) {
        ("connected", Some(t)) => t,
        (status, _) => {
            return Err(AppError::conflict("channel_not_connected", format!("the channel is {status}")));
        }
    };
    let contact: String = contacts::table.find(conv.contact_id).select(contacts::external_id).first(tc.pg())?;
    Ok(Target { conversation: conv.id, channel, contact, token })
}

/// After Meta said yes: the thread as the agent made it, announced; the
/// conversation as the caller sees it.
pub fn done(
    tc: &mut TenantConn<'_>,
    log: &mut EventLog,
    id: i64,
    request: &Request,
    ours: &str,
) -> AppResult<ConversationView> {
    let row = apply_to(tc, log, id, &request.change(ours), Utc::now(), ours)?;
    Names::default().conversation(tc, &row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const OURS: &str = "1234567890123456";

    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).single().expect("time")
    }

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn events_move_the_thread_in_metas_order() {
        let taken = ThreadChange::Taken { by: some(PAGE_INBOX_APP_ID) };
        let t1 = ThreadControl::next(None, &taken, at(100), OURS).expect("taken");
        assert_eq!((t1.held_by, t1.app_id.as_deref()), (Holder::Other, Some(PAGE_INBOX_APP_ID)));
        assert!(t1.view().page_inbox);
        // A repeat changes nothing; an older pass back neither.
        assert_eq!(ThreadControl::next(Some(&t1), &taken, at(100), OURS), None);
        let back = ThreadChange::Passed { to: some(OURS) };
        assert_eq!(ThreadControl::next(Some(&t1), &back, at(99), OURS), None);
        let t2 = ThreadControl::next(Some(&t1), &back, at(101), OURS).expect("passed back");
        assert_eq!((t2.held_by, t2.app_id.as_deref()), (Holder::Us, None));
        // A pass with no new owner named is to us (it is delivered to the new owner).
        let t3 = ThreadControl::next(Some(&t1), &ThreadChange::Passed { to: None }, at(102), OURS).expect("ours");
        assert_eq!(t3.held_by, Holder::Us);
        // Taken by an app Meta does not name.
        let t4 = ThreadControl::next(Some(&t2), &ThreadChange::Taken { by: None }, at(103), OURS).expect("taken");
        assert_eq!((t4.held_by, t4.app_id.as_deref(), t4.view().page_inbox), (Holder::Other, None, false));
    }

    #[test]
    fn standby_says_another_app_holds_it_but_not_which() {
        let t1 = ThreadControl::next(None, &ThreadChange::Standby, at(10), OURS).expect("standby");
        assert_eq!((t1.held_by, t1.app_id.as_deref()), (Holder::Other, None));
        // More standby traffic writes nothing.
        assert_eq!(ThreadControl::next(Some(&t1), &ThreadChange::Standby, at(20), OURS), None);
        let bot = ThreadControl::next(None, &ThreadChange::Taken { by: some("777") }, at(30), OURS).expect("bot");
        assert_eq!(ThreadControl::next(Some(&bot), &ThreadChange::Standby, at(40), OURS), None, "the app stays known");
        // A standby event from before the thread came back is old news.
        let ours =
            ThreadControl::next(Some(&bot), &ThreadChange::Passed { to: some(OURS) }, at(50), OURS).expect("ours");
        assert_eq!(ThreadControl::next(Some(&ours), &ThreadChange::Standby, at(45), OURS), None);
        assert!(ThreadControl::next(Some(&ours), &ThreadChange::Standby, at(55), OURS).is_some());
    }

    #[test]
    fn a_request_is_kept_until_the_thread_moves() {
        let asked = ThreadChange::Requested { by: some(PAGE_INBOX_APP_ID) };
        let t1 = ThreadControl::next(None, &asked, at(10), OURS).expect("asked");
        assert_eq!((t1.held_by, t1.requested_by.as_deref()), (Holder::Us, Some(PAGE_INBOX_APP_ID)));
        let passed = ThreadChange::Passed { to: some(PAGE_INBOX_APP_ID) };
        let t2 = ThreadControl::next(Some(&t1), &passed, at(20), OURS).expect("passed");
        assert_eq!((t2.held_by, t2.requested_by.as_deref()), (Holder::Other, None));
        assert!(!t1.same_as(&t2));
    }

    #[test]
    fn the_team_is_told_when_another_app_asks_for_or_takes_a_thread() {
        let row = |status: &str| ConversationRow {
            id: 7,
            channel_id: 3,
            contact_id: 5,
            status: status.into(),
            assignee_id: Some(11),
            snoozed_until: None,
            unread_count: 0,
            last_message_id: None,
            last_activity_at: at(0),
            last_inbound_at: None,
            last_inbound_external_id: None,
            created_at: at(0),
            updated_at: at(0),
            labels: vec![],
            priority: None,
            waiting_since: None,
            reply_due_at: None,
            queued_at: None,
            next_scheduled_at: None,
            thread_control: None,
            team_id: None,
        };
        let moved = |before: Option<&ThreadControl>, change: ThreadChange, ms: i64| {
            let after = ThreadControl::next(before, &change, at(ms), OURS).expect("moves");
            Moved { before: before.cloned(), after }
        };
        let kind = |m: &Moved, status: &str| m.notice(&row(status)).map(|n| n["kind"].as_str().map(str::to_string));
        let asked = moved(None, ThreadChange::Requested { by: some(PAGE_INBOX_APP_ID) }, 10);
        assert_eq!(kind(&asked, "open"), Some(Some("thread_requested".into())));
        let notice = asked.notice(&row("open")).expect("notice");
        assert_eq!((&notice["user_id"], &notice["page_inbox"]), (&serde_json::json!("11"), &serde_json::json!(true)));
        assert_eq!(kind(&asked, "resolved"), None, "nobody works on it");
        // Asked again by the same app: told once.
        let again = moved(Some(&asked.after), ThreadChange::Requested { by: some(PAGE_INBOX_APP_ID) }, 20);
        assert_eq!(kind(&again, "open"), None);
        let taken = moved(Some(&asked.after), ThreadChange::Taken { by: some("777") }, 30);
        assert_eq!(kind(&taken, "pending"), Some(Some("thread_taken".into())));
        // Meta naming the app after standby told it was taken: nothing new.
        let standby = moved(None, ThreadChange::Standby, 40);
        assert_eq!(kind(&standby, "open"), Some(Some("thread_taken".into())));
        let named = moved(Some(&standby.after), ThreadChange::Taken { by: some("777") }, 50);
        assert_eq!(kind(&named, "open"), None);
        // Coming back to us tells nobody.
        let back = moved(Some(&taken.after), ThreadChange::Passed { to: some(OURS) }, 60);
        assert_eq!(kind(&back, "open"), None);
    }

    #[test]
    fn agents_take_or_pass_to_an_app_by_its_id() {
        assert_eq!(Request::parse("take", None, OURS).expect("take"), Request::Take);
        assert_eq!(Request::parse("pass", None, OURS).expect("pass"), Request::Pass(PAGE_INBOX_APP_ID.to_string()));
        assert_eq!(Request::parse("pass", Some("42"), OURS).expect("pass"), Request::Pass("42".into()));
        for (action, app, code) in [
            ("give", None, "invalid_action"),
            ("TAKE", None, "invalid_action"),
            ("take", Some("42"), "invalid_app_id"),
            ("pass", Some(OURS), "invalid_app_id"),
            ("pass", Some("12a"), "invalid_app_id"),
            ("pass", Some(""), "invalid_app_id"),
            ("pass", Some("0"), "invalid_app_id"),
            ("pass", Some("042"), "invalid_app_id"),
        ] {
            let e = Request::parse(action, app, OURS).expect_err(action);
            assert_eq!(e.code, code, "{action} {app:?}");
        }
    }
}
