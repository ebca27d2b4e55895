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
//!
//! The threads are bounded too: at most `max_threads` (default [`MAX_THREADS`]) are kept, the
//! ones most recently touched. Past the bound the thread touched longest ago is forgotten
//! whole; a message of it that arrives a second time (a push, then again in a later sync) may
//! then be emitted twice. Memory is at most `max_threads × RECENT_PER_THREAD` ids.

use std::collections::{BTreeSet, HashMap};

/// Ids above the floor kept per thread.
pub const RECENT_PER_THREAD: usize = 1024;
/// Threads remembered by default; the least recently touched is forgotten past it.
pub const MAX_THREADS: usize = 4096;

#[derive(Debug, Default)]
struct ThreadSeen {
    floor: u64,
    recent: BTreeSet<u64>,
    /// When it was last touched, from `Dedupe::clock`.
    touched: u64,
}

/// Seen `(thread, message id)` pairs.
#[derive(Debug)]
pub struct Dedupe {
    threads: HashMap<u64, ThreadSeen>,
    max_threads: usize,
    /// Counts touches: the thread with the smallest `touched` is the least recently used.
    clock: u64,
}

impl Default for Dedupe {
    fn default() -> Self {
        Self::with_max_threads(MAX_THREADS)
    }
}

impl Dedupe {
    /// An empty set that remembers [`MAX_THREADS`] threads.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty set that remembers at most `max_threads` threads (at least 1).
    pub fn with_max_threads(max_threads: usize) -> Self {
        Dedupe {
            threads: HashMap::new(),
            max_threads: max_threads.max(1),
            clock: 0,
        }
    }

    /// Threads remembered (at most `max_threads`).
    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }

    /// The thread's entry, marked the most recently touched; forgets the least recently
    /// touched thread when a new one would pass the bound. Finding it walks the map, which
    /// happens only when a thread not remembered appears at the bound; a touch is O(1).
    fn entry(&mut self, thread: u64) -> &mut ThreadSeen {
        self.clock += 1;
        if !self.threads.contains_key(&thread) && self.threads.len() >= self.max_threads {
            let oldest = self
                .threads
                .iter()
                .min_by_key(|(_, seen)| seen.touched)
                .map(|(&id, _)| id);
            if let Some(oldest) = oldest {
                self.threads.remove(&oldest);
            }
        }
        let seen = self.threads.entry(thread).or_default();
        seen.touched = self.clock;
        seen
    }

    /// Records the message; true if it had not been seen before.
    pub fn insert(&mut self, thread: u64, id: u64) -> bool {
        let seen = self.entry(thread);
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
        let seen = self.entry(thread);
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

    #[test]
    fn the_least_recently_touched_thread_is_forgotten_past_the_bound() {
        let mut d = Dedupe::with_max_threads(3);
        for thread in 1..=3 {
            assert!(d.insert(thread, 10));
        }
        // Touch 1 again (a duplicate counts), and raise 2's floor: 3 is now the oldest.
        assert!(!d.insert(1, 10));
        d.raise_floor(2, 20);
        assert!(d.insert(4, 10));
        assert_eq!(d.thread_count(), 3, "bounded");
        assert!(
            !d.contains(3, 10),
            "the least recently touched is forgotten"
        );
        assert!(d.contains(1, 10) && d.contains(2, 15) && d.contains(4, 10));
        assert!(
            d.insert(3, 10),
            "a forgotten thread's message may be emitted again (documented)"
        );
        assert!(!d.contains(1, 10), "3 came back: 1 was now the oldest");
        for thread in 100..10_000 {
            d.insert(thread, 1);
        }
        assert_eq!(d.thread_count(), 3);
    }
}
