//! Failed-login throttling: a fixed window of failures per key (an account or a source
//! address). The table is bounded: when full, expired windows are dropped first, then all.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

const MAX_KEYS: usize = 100_000;

pub struct Throttle<K> {
    limit: u32,
    window: Duration,
    failures: Mutex<HashMap<K, (u32, Instant)>>,
}

impl<K: Hash + Eq> Throttle<K> {
    /// At most `limit` failures per `window`; beyond that, [`allowed`](Self::allowed) is false
    /// until the window ends.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self {
            limit,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    pub fn allowed(&self, key: &K, now: Instant) -> bool {
        match self.failures.lock().get(key) {
            Some(&(n, start)) => n < self.limit || now.duration_since(start) >= self.window,
            None => true,
        }
    }

    pub fn fail(&self, key: K, now: Instant) {
        let mut map = self.failures.lock();
        if map.len() >= MAX_KEYS {
            let window = self.window;
            map.retain(|_, (_, start)| now.duration_since(*start) < window);
            if map.len() >= MAX_KEYS {
                map.clear();
            }
        }
        let entry = map.entry(key).or_insert((0, now));
        if now.duration_since(entry.1) >= self.window {
            *entry = (0, now);
        }
        entry.0 += 1;
    }

    pub fn succeed(&self, key: &K) {
        self.failures.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_limit_until_window_ends() {
        let t = Throttle::new(3, Duration::from_secs(60));
        let now = Instant::now();
        for _ in 0..3 {
            assert!(t.allowed(&"a", now));
            t.fail("a", now);
        }
        assert!(!t.allowed(&"a", now));
        assert!(t.allowed(&"b", now));
        assert!(t.allowed(&"a", now + Duration::from_secs(61)));
        t.succeed(&"a");
        assert!(t.allowed(&"a", now));
    }
}
