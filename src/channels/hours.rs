//! A channel's opening hours, and the away reply they drive.
//!
//! Hours are a week of openings in the channel's time zone (an IANA name,
//! so summer time is the zone's): `{day: "mon", open: "09:00", close:
//! "17:30"}`, a day listed again for a break, `close` `"24:00"` for the end
//! of the day. A night shift is two openings (22:00–24:00, then 00:00–06:00
//! the next day); an empty week is closed all the time. Times that summer
//! time skips open or close an hour later, as a clock does.
//!
//! When a customer writes while the channel is closed and its away reply is
//! on, the server sends the away text once per closed period per
//! conversation: the reply's `client_id` names the moment the channel last
//! closed, so a second message that evening, or Meta's retry of the first,
//! adds nothing, and the next evening's first message gets it again. It is
//! judged when the message is processed, not by the message's own time, so
//! a message Meta delivers late into opening hours is not told the channel
//! is closed. A conversation opened while closed gets the greeting
//! (`auto_reply`) and then the away text: the contract's greeting is
//! unconditional.
//!
//! Reply targets may count only these hours (`inbox::waiting`):
//! [`BusinessHours::after_open_minutes`] runs the clock while open.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::error::{AppError, AppResult};

/// The most openings a week may hold.
pub const MOST_OPENINGS: usize = 50;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BusinessHours {
    pub timezone: String,
    pub week: Vec<Opening>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Opening {
    pub day: String,
    pub open: String,
    pub close: String,
}

const DAYS: [(&str, Weekday); 7] = [
    ("mon", Weekday::Mon),
    ("tue", Weekday::Tue),
    ("wed", Weekday::Wed),
    ("thu", Weekday::Thu),
    ("fri", Weekday::Fri),
    ("sat", Weekday::Sat),
    ("sun", Weekday::Sun),
];

fn invalid(message: String) -> AppError {
    AppError::invalid("invalid_settings", message)
}

/// Minutes since midnight of "HH:MM" ("24:00" only where `end`).
fn minutes(text: &str, end: bool) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    match (h, m) {
        (24, 0) if end => Some(24 * 60),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

/// A checked week: per weekday, its openings as minute ranges, sorted.
struct Week {
    tz: Tz,
    days: [Vec<(u32, u32)>; 7],
}

impl BusinessHours {
    /// Checks the hours and writes the zone's name as the database of zones
    /// spells it.
    pub fn checked(mut self) -> AppResult<BusinessHours> {
        let week = self.week()?;
        self.timezone = week.tz.name().to_string();
        for o in &mut self.week {
            o.day = o.day.trim().to_ascii_lowercase();
        }
        Ok(self)
    }

    fn week(&self) -> AppResult<Week> {
        let tz: Tz = self.timezone.trim().parse().map_err(|_| {
            invalid(format!(
                "business_hours.timezone {:?} is not a time zone name (such as Europe/Lisbon)",
                self.timezone
            ))
        })?;
        if self.week.len() > MOST_OPENINGS {
            return Err(invalid(format!("business_hours.week holds at most {MOST_OPENINGS} openings")));
        }
        let mut days: [Vec<(u32, u32)>; 7] = Default::default();
        for o in &self.week {
            let Some(day) = DAYS.iter().position(|(name, _)| name.eq_ignore_ascii_case(o.day.trim())) else {
                return Err(invalid(format!("business_hours.week: day {:?} is not one of mon … sun", o.day)));
            };
            let (Some(open), Some(close)) = (minutes(&o.open, false), minutes(&o.close, true)) else {
                return Err(invalid(format!(
                    "business_hours.week: {} {:?}–{:?}: times are HH:MM, 00:00 to 24:00",
                    o.day, o.open, o.close
                )));
            };
            if close <= open {
                return Err(invalid(format!(
                    "business_hours.week: {} {}–{} closes before it opens (a night is two openings)",
                    o.day, o.open, o.close
                )));
            }
            days[day].push((open, close));
        }
        for (d, ranges) in days.iter_mut().enumerate() {
            ranges.sort_unstable();
            if ranges.windows(2).any(|w| w[1].0 < w[0].1) {
                return Err(invalid(format!("business_hours.week: {}'s openings overlap", DAYS[d].0)));
            }
        }
        Ok(Week { tz, days })
    }

    /// `None` while open at `now`; while closed, the moment it last closed
    /// (or, for a week with no openings in the last eight days, the start
    /// of today in the zone), which names the closed period.
    pub fn closed_since(&self, now: DateTime<Utc>) -> AppResult<Option<DateTime<Utc>>> {
        let week = self.week()?;
        let today = now.with_timezone(&week.tz).date_naive();
        let mut last_close: Option<DateTime<Utc>> = None;
        for back in 0..=8 {
            let Some(date) = today.checked_sub_signed(Duration::days(back)) else { continue };
            let day = date.weekday().num_days_from_monday() as usize;
            for &(open, close) in &week.days[day] {
                let (from, to) = (week.at(date, open), week.at(date, close));
                if from <= now && now < to {
                    return Ok(None);
                }
                if to <= now && last_close.is_none_or(|c| to > c) {
                    last_close = Some(to);
                }
            }
        }
        Ok(Some(last_close.unwrap_or_else(|| week.at(today, 0))))
    }

    /// The moment `minutes` minutes of opening have passed since `since`,
    /// the clock stopped while closed (`inbox::waiting`'s targets in
    /// business hours); `None` when the openings of the next
    /// [`MOST_DAYS_AHEAD`] days do not add up to that (an empty week never does).
    pub fn after_open_minutes(&self, since: DateTime<Utc>, minutes: u32) -> AppResult<Option<DateTime<Utc>>> {
        let week = self.week()?;
        let mut left = Duration::minutes(i64::from(minutes));
        // An opening ends by its day's midnight, so none before `since`'s
        // own day in the zone reaches past it.
        let first = since.with_timezone(&week.tz).date_naive();
        for ahead in 0..=MOST_DAYS_AHEAD {
            let Some(date) = first.checked_add_signed(Duration::days(ahead)) else { break };
            for &(open, close) in &week.days[date.weekday().num_days_from_monday() as usize] {
                let (from, to) = (week.at(date, open).max(since), week.at(date, close));
                if to <= from {
                    continue;
                }
                if to - from >= left {
                    return Ok(Some(from + left));
                }
                left -= to - from;
            }
        }
        Ok(None)
    }
}

/// How far ahead [`BusinessHours::after_open_minutes`] looks: a year.
pub const MOST_DAYS_AHEAD: i64 = 366;

impl Week {
    /// The instant `minute` minutes into `date` in the zone; a wall time
    /// summer time skips is taken an hour later.
    fn at(&self, date: NaiveDate, minute: u32) -> DateTime<Utc> {
        let midnight = NaiveDateTime::new(date, NaiveTime::MIN);
        let wall = midnight + Duration::minutes(i64::from(minute));
        let local = self
            .tz
            .from_local_datetime(&wall)
            .earliest()
            .or_else(|| self.tz.from_local_datetime(&(wall + Duration::hours(1))).earliest());
        // Unreachable for real zones (no gap is longer than an hour); the
        // naive time read as UTC is still a moment.
        local.map_or_else(|| wall.and_utc(), |l| l.with_timezone(&Utc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hours(tz: &str, week: &[(&str, &str, &str)]) -> BusinessHours {
        BusinessHours {
            timezone: tz.into(),
            week: week
                .iter()
                .map(|(d, o, c)| Opening { day: d.to_string(), open: o.to_string(), close: c.to_string() })
                .collect(),
        }
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).map(|d| d.with_timezone(&Utc)).expect("time")
    }

    fn code(h: BusinessHours) -> String {
        h.checked().err().map(|e| e.message).unwrap_or_default()
    }

    #[test]
    fn what_hours_must_hold() {
        assert!(code(hours("Mars/Olympus", &[])).contains("time zone"));
        assert!(code(hours("UTC", &[("mon", "9:00", "17:00")])).contains("HH:MM"));
        assert!(code(hours("UTC", &[("mon", "09:00", "24:01")])).contains("HH:MM"));
        assert!(code(hours("UTC", &[("mon", "24:00", "24:00")])).contains("HH:MM"));
        assert!(code(hours("UTC", &[("funday", "09:00", "17:00")])).contains("mon … sun"));
        assert!(code(hours("UTC", &[("mon", "17:00", "09:00")])).contains("night is two openings"));
        assert!(code(hours("UTC", &[("mon", "09:00", "13:00"), ("Mon", "12:00", "17:00")])).contains("overlap"));
        let many: Vec<(&str, &str, &str)> = (0..51).map(|_| ("mon", "09:00", "10:00")).collect();
        assert!(code(hours("UTC", &many)).contains("at most"));
        assert!(code(hours("europe/lisbon", &[])).contains("time zone"), "names as the zone database spells them");
        // Trimmed, days in any case, openings that touch.
        let ok =
            hours(" Europe/Lisbon ", &[(" MON", "09:00", "13:00"), ("mon", "13:00", "24:00")]).checked().expect("ok");
        assert_eq!(ok.timezone, "Europe/Lisbon");
        assert_eq!(ok.week[0].day, "mon");
    }

    #[test]
    fn open_closed_and_since_when() {
        // Lisbon, weekdays 09:00–13:00 and 14:00–18:00. 2026-12-01 is a
        // Tuesday; Lisbon is on UTC in winter.
        let day: Vec<(&str, &str, &str)> = ["mon", "tue", "wed", "thu", "fri"]
            .iter()
            .flat_map(|d| [(*d, "09:00", "13:00"), (*d, "14:00", "18:00")])
            .collect();
        let h = hours("Europe/Lisbon", &day);
        assert_eq!(h.closed_since(at("2026-12-01T10:00:00Z")).expect("ok"), None);
        // Lunch: closed since 13:00.
        assert_eq!(h.closed_since(at("2026-12-01T13:30:00Z")).expect("ok"), Some(at("2026-12-01T13:00:00Z")));
        // Evening and the night after: one period, since 18:00.
        assert_eq!(h.closed_since(at("2026-12-01T21:00:00Z")).expect("ok"), Some(at("2026-12-01T18:00:00Z")));
        assert_eq!(h.closed_since(at("2026-12-02T08:59:00Z")).expect("ok"), Some(at("2026-12-01T18:00:00Z")));
        assert_eq!(h.closed_since(at("2026-12-02T09:00:00Z")).expect("ok"), None);
        // The weekend: since Friday 18:00.
        assert_eq!(h.closed_since(at("2026-12-06T12:00:00Z")).expect("ok"), Some(at("2026-12-04T18:00:00Z")));
        // Summer: Lisbon is UTC+1, 09:00 there is 08:00 UTC.
        assert_eq!(h.closed_since(at("2026-07-01T08:30:00Z")).expect("ok"), None);
        assert_eq!(h.closed_since(at("2026-07-01T07:30:00Z")).expect("ok"), Some(at("2026-06-30T17:00:00Z")));
        // A night shift across midnight is one open stretch.
        let night = hours("UTC", &[("tue", "22:00", "24:00"), ("wed", "00:00", "06:00")]);
        assert_eq!(night.closed_since(at("2026-12-01T23:59:00Z")).expect("ok"), None);
        assert_eq!(night.closed_since(at("2026-12-02T00:00:00Z")).expect("ok"), None);
        assert_eq!(night.closed_since(at("2026-12-02T07:00:00Z")).expect("ok"), Some(at("2026-12-02T06:00:00Z")));
        // Never open: one period a day, from the zone's midnight.
        let never = hours("America/New_York", &[]);
        assert_eq!(never.closed_since(at("2026-12-01T12:00:00Z")).expect("ok"), Some(at("2026-12-01T05:00:00Z")));
        // Always open.
        let always: Vec<(&str, &str, &str)> = DAYS.iter().map(|(d, _)| (*d, "00:00", "24:00")).collect();
        assert_eq!(hours("Asia/Tokyo", &always).closed_since(at("2026-12-01T12:00:00Z")).expect("ok"), None);
    }

    #[test]
    fn minutes_of_opening_stop_while_closed() {
        // Lisbon, weekdays 09:00–13:00 and 14:00–18:00; 2026-12-01 is a Tuesday.
        let day: Vec<(&str, &str, &str)> = ["mon", "tue", "wed", "thu", "fri"]
            .iter()
            .flat_map(|d| [(*d, "09:00", "13:00"), (*d, "14:00", "18:00")])
            .collect();
        let h = hours("Europe/Lisbon", &day);
        let after = |since: &str, minutes: u32| h.after_open_minutes(at(since), minutes).expect("valid hours");
        // Open: the clock runs.
        assert_eq!(after("2026-12-01T10:00:00Z", 30), Some(at("2026-12-01T10:30:00Z")));
        // Across lunch: an hour stopped.
        assert_eq!(after("2026-12-01T12:45:00Z", 30), Some(at("2026-12-01T14:15:00Z")));
        // Written at lunch: the clock starts at 14:00.
        assert_eq!(after("2026-12-01T13:20:00Z", 60), Some(at("2026-12-01T15:00:00Z")));
        // Used up exactly at closing: due then, not next morning.
        assert_eq!(after("2026-12-01T17:00:00Z", 60), Some(at("2026-12-01T18:00:00Z")));
        // Friday evening: Monday morning.
        assert_eq!(after("2026-12-04T20:00:00Z", 15), Some(at("2026-12-07T09:15:00Z")));
        // Two working days (16 hours) from Tuesday noon: Thursday noon.
        assert_eq!(after("2026-12-01T12:00:00Z", 16 * 60), Some(at("2026-12-03T12:00:00Z")));
        // Summer time: 09:00 in Lisbon is 08:00 UTC.
        assert_eq!(after("2026-07-01T06:00:00Z", 10), Some(at("2026-07-01T08:10:00Z")));
        // A night shift across midnight runs on.
        let night = hours("UTC", &[("tue", "22:00", "24:00"), ("wed", "00:00", "06:00")]);
        assert_eq!(
            night.after_open_minutes(at("2026-12-01T23:30:00Z"), 60).expect("ok"),
            Some(at("2026-12-02T00:30:00Z"))
        );
        // Never open: never due; an hour a week reaches a month's target
        // within the year; thirty days of minutes at an hour a week does not.
        assert_eq!(hours("UTC", &[]).after_open_minutes(at("2026-12-01T12:00:00Z"), 1).expect("ok"), None);
        let sparse = hours("UTC", &[("mon", "09:00", "10:00")]);
        assert_eq!(
            sparse.after_open_minutes(at("2026-12-01T12:00:00Z"), 120).expect("ok"),
            Some(at("2026-12-14T10:00:00Z"))
        );
        assert_eq!(sparse.after_open_minutes(at("2026-12-01T12:00:00Z"), 43_200).expect("ok"), None);
    }

    #[test]
    fn a_skipped_hour_opens_an_hour_later() {
        // Lisbon skips 01:00–02:00 on 2026-03-29 (a Sunday).
        let h = hours("Europe/Lisbon", &[("sun", "01:30", "03:00")]);
        // 01:30 does not exist; opening is at 02:30 local, 01:30 UTC.
        assert!(h.closed_since(at("2026-03-29T01:00:00Z")).expect("ok").is_some());
        assert_eq!(h.closed_since(at("2026-03-29T01:45:00Z")).expect("ok"), None);
    }
}
