//! Remembers which messages were already handed to the user, in bounded memory.
//!
//! A message can arrive twice: as a push and again in the `SYNC` after a reconnect. Per thread
//! the set keeps a `floor` (every id at or below it counts as seen) and the ids above the floor
//! seen since, capped at [`RECENT_PER_THREAD`]. The floor rises in two ways:
//! - a completed sync proves everything up to the newest message it returned for a thread was
//!   delivered, so the floor moves there;
//! - when the recent ids overflow, the oldest are folded into the floor. Ids that old are far
//!   behind the newest the client has seen, so treating a straggler below them as seen is the
//!   price of the bound.

use std::collections::{BTreeSet, HashMap};

/// Ids above the floor kept per thread.
pub const RECENT_PER_THREAD: usize = 1024;

#[derive(Debug, Default)]
struct ThreadSeen {
    floor: u64,
    recent: BTreeSet<u64>,
}

/// Seen `(thread, message id)` pairs.
#[derive(Debug, Default)]
pub struct Dedupe {
    threads: HashMap<u64, ThreadSeen>,
}

impl Dedupe {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records the message; true if it had not been seen before.
    pub fn insert(&mut self, thread: u64, id: u64) -> bool {
        let seen = self.threads.entry(thread).or_default();
        if id <= seen.floor || !seen.recent.insert(id) {
            return false;
        }
        while seen.recent.len() > RECENT_PER_THREAD {
            if let Some(oldest) = seen.recent.pop_first() {
                seen.floor = oldest;
            }
        }
        true
    }

    /// Whether the message was seen.
    pub fn contains(&self, thread: u64, id: u64) -> bool {
        self.threads
            .get(&thread)
            .is_some_and(|s| id <= s.floor || s.recent.contains(&id))
    }

    /// Counts every id up to `id` in `thread` as seen.
    pub fn raise_floor(&mut self, thread: u64, id: u64) {
        let seen = self.threads.entry(thread).or_default();
        if id > seen.floor {
            seen.floor = id;
            seen.recent = seen.recent.split_off(&(id + 1));
        }
    }

    /// Ids remembered individually, over all threads (for tests and diagnostics).
    pub fn recent_len(&self) -> usize {
        self.threads.values().map(|s| s.recent.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_sighting_is_a_duplicate() {
        let mut d = Dedupe::new();
        assert!(d.insert(1, 10));
        assert!(!d.insert(1, 10));
        assert!(d.insert(2, 10), "threads are separate");
        assert!(d.insert(1, 5), "an older id not yet seen is new");
    }

    #[test]
    fn floor_covers_everything_below_and_drops_recent() {
        let mut d = Dedupe::new();
        d.insert(1, 10);
        d.insert(1, 20);
        d.insert(1, 30);
        d.raise_floor(1, 20);
        assert_eq!(d.recent_len(), 1);
        assert!(!d.insert(1, 15));
        assert!(!d.insert(1, 30));
        assert!(d.insert(1, 31));
        d.raise_floor(1, 5);
        assert!(d.contains(1, 20), "floor never goes down");
    }

    #[test]
    fn memory_is_bounded_per_thread() {
        let mut d = Dedupe::new();
        for id in 1..=(RECENT_PER_THREAD as u64 * 3) {
            assert!(d.insert(7, id));
        }
        assert_eq!(d.recent_len(), RECENT_PER_THREAD);
        assert!(d.contains(7, 1));
        assert!(!d.insert(7, 2));
    }
}
