//! Failed logins per account: after `SWITCHBOARD_LOGIN_ATTEMPTS` (20) wrong
//! passwords for one email within 15 minutes, that email's logins answer 429
//! `too_many_attempts` (with `Retry-After`) until the window ends, without a
//! password check, so guessing costs an attacker the window and us no argon2.
//! A success clears the count.
//!
//! Keyed by the email, not the client's address: behind a load balancer
//! every client has the balancer's address, and an attacker has many.
//! The price: someone who knows an email can keep its owner out, a window
//! at a time; the limit is high enough that a person mistyping never meets
//! it. Counts live in this
//! instance's memory: with N instances an attacker gets N times the guesses,
//! still a few thousand a day instead of unlimited.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// Entries kept before the expired ones are swept.
const SWEEP_AT: usize = 10_000;
/// Beyond this many live entries (a spray of made-up emails), those with
/// few failures are forgotten: an account under attack has many.
const MOST_TRACKED: usize = 100_000;

pub struct LoginThrottle {
    /// Failures allowed per window (0: no limit).
    limit: u32,
    window: Duration,
    /// Normalised email -> (window start, failures in it).
    failures: Mutex<HashMap<String, (Instant, u32)>>,
}

impl LoginThrottle {
    pub fn new(limit: u32, window: Duration) -> LoginThrottle {
        LoginThrottle { limit, window, failures: Mutex::default() }
    }

    /// `SWITCHBOARD_LOGIN_ATTEMPTS` (20; 0 turns the limit off).
    pub fn from_env() -> LoginThrottle {
        let limit = std::env::var("SWITCHBOARD_LOGIN_ATTEMPTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
        LoginThrottle::new(limit, WINDOW)
    }

    fn key(email: &str) -> String {
        email.trim().to_lowercase()
    }

    /// `Err(wait)` while `email` has used up its failures in this window.
    pub fn check(&self, email: &str, now: Instant) -> Result<(), Duration> {
        if self.limit == 0 {
            return Ok(());
        }
        let Ok(failures) = self.failures.lock() else { return Ok(()) };
        match failures.get(&Self::key(email)) {
            Some((start, n)) if *n >= self.limit && now < *start + self.window => Err(*start + self.window - now),
            _ => Ok(()),
        }
    }

    pub fn failed(&self, email: &str, now: Instant) {
        if self.limit == 0 {
            return;
        }
        let Ok(mut failures) = self.failures.lock() else { return };
        if failures.len() >= SWEEP_AT {
            let window = self.window;
            failures.retain(|_, (start, _)| now < *start + window);
            if failures.len() >= MOST_TRACKED {
                let few = self.limit / 2;
                failures.retain(|_, (_, n)| *n > few);
            }
        }
        let entry = failures.entry(Self::key(email)).or_insert((now, 0));
        if now >= entry.0 + self.window {
            *entry = (now, 0);
        }
        entry.1 += 1;
    }

    pub fn succeeded(&self, email: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(&Self::key(email));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_account_is_held_after_its_failures_until_the_window_ends() {
        let throttle = LoginThrottle::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(throttle.check("Ann@Acme.test", t0).is_ok(), "attempt {i}");
            throttle.failed("ann@acme.test ", t0 + Duration::from_secs(i));
        }
        let wait = throttle.check("ANN@acme.test", t0 + Duration::from_secs(10)).expect_err("held");
        assert_eq!(wait, Duration::from_secs(50));
        // Another account is not affected.
        assert!(throttle.check("bob@acme.test", t0).is_ok());
        // The window ends: a new one starts with the next failure.
        let later = t0 + Duration::from_secs(61);
        assert!(throttle.check("ann@acme.test", later).is_ok());
        throttle.failed("ann@acme.test", later);
        assert!(throttle.check("ann@acme.test", later).is_ok());
        // A success clears the count.
        throttle.failed("ann@acme.test", later);
        throttle.succeeded("ann@acme.test");
        throttle.failed("ann@acme.test", later);
        throttle.failed("ann@acme.test", later);
        assert!(throttle.check("ann@acme.test", later).is_ok());
    }

    #[test]
    fn zero_turns_the_limit_off() {
        let throttle = LoginThrottle::new(0, Duration::from_secs(60));
        let now = Instant::now();
        for _ in 0..100 {
            throttle.failed("ann@acme.test", now);
        }
        assert!(throttle.check("ann@acme.test", now).is_ok());
    }
}
