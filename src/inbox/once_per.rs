//! "At most once per period for each key", remembered by this instance:
//! work a look at something queues (a media copy, a profile lookup) must
//! not be queued again at every look while it fails or waits.
//!
//! In memory on purpose: losing it (a restart) costs one more try, and
//! instances need not agree. Bounded: past `kept` keys the expired are
//! forgotten, and if that is not enough, all are.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct OncePer<K> {
    period: Duration,
    kept: usize,
    tried: Mutex<HashMap<K, Instant>>,
}

impl<K: Hash + Eq> OncePer<K> {
    pub fn new(period: Duration, kept: usize) -> Self {
        OncePer { period, kept, tried: Mutex::new(HashMap::new()) }
    }

    /// Whether `key` is due at `now` (and if so, remembers that it was).
    pub fn due(&self, key: K, now: Instant) -> bool {
        let Ok(mut tried) = self.tried.lock() else { return false };
        if tried.get(&key).is_some_and(|at| now.duration_since(*at) < self.period) {
            return false;
        }
        if tried.len() >= self.kept {
            tried.retain(|_, at| now.duration_since(*at) < self.period);
            if tried.len() >= self.kept {
                tried.clear();
            }
        }
        tried.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_due_once_a_period() {
        let once = OncePer::new(Duration::from_secs(600), 2);
        let now = Instant::now();
        assert!(once.due(7, now));
        assert!(!once.due(7, now + Duration::from_secs(60)));
        assert!(once.due(8, now), "another key");
        assert!(once.due(7, now + Duration::from_secs(600)));
        // Full: the expired are forgotten first, then all.
        assert!(once.due(9, now + Duration::from_secs(601)));
        assert!(!once.due(9, now + Duration::from_secs(602)));
    }
}
