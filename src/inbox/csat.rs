//! Satisfaction surveys (CSAT): when an agent resolves a conversation on a
//! channel whose `settings.csat` is on, the channel sends the survey's text
//! (say "How did we do? Answer 1 (bad) to 5 (great)"), and the customer's
//! answer is kept as a rating that reports average.
//!
//! Decisions:
//! - Sent only inside the standard 24-hour reply window (not on the
//!   `HUMAN_AGENT` tag, which Meta keeps for a person's answers), and only
//!   on a change to `resolved` by a member: one survey per resolution. The
//!   server resolving nothing itself, nothing else sends one.
//! - An answer is the customer's next message while the conversation is
//!   still resolved, within [`ANSWER_DAYS`] of the survey, that starts
//!   with a rating: a digit 1 to 5 not followed by another digit ("5",
//!   "4!", "3 - slow but fine"), or one to five stars (⭐ or ★) alone.
//!   A bare rating leaves the conversation resolved (no unread, no
//!   notification); a rating with words after it is kept with the words as
//!   its comment and reopens the conversation as any message does, so a
//!   question asked with a rating is not lost. A later rating replaces
//!   the earlier one while the conversation stays resolved.
//! - Anything else reopens the conversation as usual and answers nothing.
//! - The survey is a message of the conversation's (sender `page`, a
//!   `client_id` of `csat:<survey id>`), so it shows and fails like any;
//!   it is not a reply for reports' first responses.
//! - It may offer the ratings to tap (`settings.csat.choices`,
//!   `inbox::choices`: a list on WhatsApp, quick replies on Messenger and
//!   Instagram), so a customer answers with one touch. Each must be what a
//!   customer could write as a bare rating ("5 ⭐⭐⭐⭐⭐", "⭐⭐⭐", "1"),
//!   each score once ([`check_choices`]): a tap comes back as its text, a
//!   rating with no words, which leaves the conversation resolved.

use chrono::{DateTime, Duration, Utc};
use diesel::prelude::*;

use super::events::EventLog;
use super::messages::{self, NewOutgoing};
use super::views::{ConversationRow, Names, ReplyWindow};
use super::ConversationId;
use crate::channels::{self, ChannelId};
use crate::db::tenant_schema::csat_surveys as s;
use crate::db::TenantConn;
use crate::error::{AppError, AppResult};
use crate::ids::UserId;

/// How long after the survey a customer's rating still counts.
pub const ANSWER_DAYS: i64 = 7;

/// A customer's answer to a survey, read from their message.
#[derive(Debug, PartialEq, Eq)]
pub struct Rating {
    pub score: i16,
    /// The words after the rating, if any.
    pub comment: Option<String>,
}

/// The rating a message's text gives, if it gives one ([module docs](self)).
pub fn rating_of(text: &str) -> Option<Rating> {
    let text = text.trim();
    let stars = text.chars().filter(|c| matches!(c, '⭐' | '★')).count();
    if stars > 0 && text.chars().all(|c| matches!(c, '⭐' | '★' | '\u{fe0f}') || c.is_whitespace()) {
        return (1..=5).contains(&stars).then_some(Rating { score: stars as i16, comment: None });
    }
    let mut chars = text.chars();
    let score = chars.next()?.to_digit(10).filter(|d| (1..=5).contains(d))?;
    let rest = chars.as_str();
    // "10", "3.5", "2,5": not a rating of ours.
    let mut after = rest.chars();
    match (after.next(), after.next()) {
        (Some(c), _) if c.is_ascii_digit() => return None,
        (Some('.' | ','), Some(d)) if d.is_ascii_digit() => return None,
        _ => {}
    }
    let comment = rest.trim_start_matches(|c: char| c.is_whitespace() || "-–—:,.!/)".contains(c)).trim();
    // Words, not an emoji or two.
    let comment = (comment.chars().filter(|c| c.is_alphanumeric()).count() >= 2).then(|| comment.to_string());
    Some(Rating { score: score as i16, comment })
}

/// Ratings a survey may offer to tap ([module docs](self)): each a bare
/// rating, no score twice.
pub fn check_choices(choices: &[String]) -> AppResult<()> {
    let mut seen = std::collections::HashSet::new();
    for (i, choice) in choices.iter().enumerate() {
        match rating_of(choice) {
            Some(Rating { score, comment: None }) if seen.insert(score) => {}
            Some(Rating { comment: None, .. }) => {
                return Err(AppError::invalid("invalid_settings", format!("csat.choices[{i}] rates as another does")))
            }
            _ => {
                return Err(AppError::invalid(
                    "invalid_settings",
                    format!(
                        "csat.choices[{i}] must be a rating a customer could write, with no words: \
                         a digit 1 to 5 (\"5\", \"5 ⭐⭐⭐⭐⭐\") or one to five stars"
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// After `row` was resolved by `by`: sends the channel's survey, if it has
/// one on and the customer can still be written to. Answers whether one
/// was queued (the caller wakes the sender).
pub fn on_resolved(tc: &mut TenantConn<'_>, log: &mut EventLog, row: &ConversationRow, by: UserId) -> AppResult<bool> {
    let channel = channels::find(tc, ChannelId(row.channel_id))?;
    let settings = channel.settings();
    let Some(text) = settings.csat.due() else { return Ok(false) };
    // Nothing goes to a blocked contact (`contacts`).
    let blocked: Option<DateTime<Utc>> = crate::db::tenant_schema::contacts::table
        .find(row.contact_id)
        .select(crate::db::tenant_schema::contacts::blocked_at)
        .first(tc.pg())?;
    if blocked.is_some() {
        return Ok(false);
    }
    let window = ReplyWindow::of(&channel, row.last_inbound_at, Utc::now());
    if !window.can_reply || window.tag.is_some() {
        return Ok(false);
    }
    let survey: i64 = diesel::insert_into(s::table)
        .values((
            s::conversation_id.eq(row.id),
            s::channel_id.eq(row.channel_id),
            s::assignee_id.eq(row.assignee_id),
            s::resolved_by.eq(by.0),
        ))
        .returning(s::id)
        .get_result(tc.pg())?;
    let out = NewOutgoing {
        conversation: ConversationId(row.id),
        text: Some(text.to_string()),
        client_id: Some(format!("csat:{survey}")),
        agent: None,
        // Checked when set; one that no longer checks (the platform's
        // rules changed) leaves the survey as text.
        attachments: match settings.csat.choices.is_empty() {
            true => Vec::new(),
            false => {
                super::choices::attachment(channel.platform(), &settings.csat.choices, None).ok().into_iter().collect()
            }
        },
        reply_to_external_id: None,
        signature: None,
    };
    let (message, _) = messages::queue_outgoing(tc, log, &mut Names::default(), &channel, row, out)?;
    diesel::update(s::table.find(survey)).set(s::message_id.eq(message.id)).execute(tc.pg())?;
    Ok(true)
}

/// A customer's message `text` on resolved conversation `conversation`,
/// received at `now`: the rating it records on the latest survey, if it is
/// one and a survey awaits it.
pub fn answer(
    tc: &mut TenantConn<'_>,
    conversation: i64,
    text: Option<&str>,
    now: DateTime<Utc>,
) -> AppResult<Option<Rating>> {
    let Some(rating) = text.and_then(rating_of) else { return Ok(None) };
    let latest: Option<i64> = s::table
        .filter(s::conversation_id.eq(conversation))
        .filter(s::sent_at.gt(now - Duration::days(ANSWER_DAYS)))
        .order(s::sent_at.desc())
        .select(s::id)
        .first(tc.pg())
        .optional()?;
    let Some(survey) = latest else { return Ok(None) };
    diesel::update(s::table.find(survey))
        .set((s::rating.eq(rating.score), s::comment.eq(rating.comment.as_deref()), s::answered_at.eq(now)))
        .execute(tc.pg())?;
    Ok(Some(rating))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (score, comment or "").
    fn r(text: &str) -> Option<(i16, String)> {
        rating_of(text).map(|r| (r.score, r.comment.unwrap_or_default()))
    }

    #[test]
    fn what_counts_as_a_rating() {
        assert_eq!(r("5"), Some((5, String::new())));
        assert_eq!(r(" 4! "), Some((4, String::new())));
        assert_eq!(r("1 👎"), Some((1, String::new())));
        assert_eq!(r("3 - slow but fine"), Some((3, "slow but fine".to_string())));
        assert_eq!(r("2: a caixa chegou partida"), Some((2, "a caixa chegou partida".to_string())));
        assert_eq!(r("⭐⭐⭐⭐"), Some((4, String::new())));
        assert_eq!(r("★ ★ ★ ★ ★"), Some((5, String::new())));
        assert_eq!(r("⭐️⭐️"), Some((2, String::new())), "with the emoji variation selector");
        for not in ["0", "6", "10", "3.5", "2,5", "", "great!", "⭐⭐⭐⭐⭐⭐", "⭐ great", "five"] {
            assert_eq!(r(not), None, "{not:?}");
        }
    }

    #[test]
    fn ratings_to_tap_are_bare_ratings_each_score_once() {
        let ok: Vec<String> = ["5 ⭐⭐⭐⭐⭐", "⭐⭐⭐⭐", "3", "2 👎", "1 😞"].iter().map(|s| s.to_string()).collect();
        assert!(check_choices(&ok).is_ok());
        for bad in [vec!["5 - great"], vec!["Excelente"], vec!["5", "⭐⭐⭐⭐⭐"], vec!["6"]] {
            let bad: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
            assert_eq!(
                check_choices(&bad).err().map(|e| e.code.to_string()),
                Some("invalid_settings".into()),
                "{bad:?}"
            );
        }
    }
}
