//! Idempotent SEND: the recent sends a shard remembers in memory.
//!
//! A retried SEND (same thread, sender and non-zero `client_msg_id`) must answer the original
//! `SENT` for as long as the dedupe window lasts (`--dedupe-window-secs`). Two layers keep that
//! promise with bounded space:
//!
//! * [`RecentSends`] here: the newest sends of this shard's threads, so a quick retry (the
//!   usual one, after a dropped connection) needs no store read, and a retry inside the same
//!   round finds a send the store cannot see before the commit. Bounded: past its capacity the
//!   oldest entry is forgotten, never one of the current round.
//! * The `dedupe` column family: one entry per send, whose value (the message id) is the time
//!   it was accepted; a compaction filter removes entries older than the window
//!   (`store::db`), so the family holds about one window of sends, not every send ever made.
//!
//! Both layers treat an entry older than the window as absent, so the answer does not depend
//! on whether compaction has run yet.
//!
//! Most SENDs are new, and clients number their messages upwards, so both lookups usually
//! miss, at the price of a cache miss in the table and a read of the store. [`RecentSends`]
//! therefore also remembers, per (thread, sender), the highest client message id that may be
//! stored or staged: a SEND above it is new without either lookup. That bound is learnt once
//! from the store (the family's keys sort by thread, sender, then id: one backward seek) and
//! then raised by every send; it may only ever be too high, which costs a lookup, never too
//! low, which would store a retry twice. Forgetting a bound is always safe: the next SEND
//! learns it again, from the store and from the sends not yet durable, which only this table
//! holds.

use std::collections::VecDeque;

use crate::hash::Map;

/// (thread, sender, client message id).
pub(super) type SendKey = (u64, u64, u64);

pub(super) struct RecentSends {
    ids: Map<SendKey, u64>,
    /// Entries in insertion order, oldest first; the last `round` were added by the round
    /// being built, the `sealed` before them by the round being committed. A key sent again
    /// after its entry expired appears twice: only the copy whose id is still in `ids` owns
    /// the entry.
    order: VecDeque<(SendKey, u64)>,
    /// (thread, sender) → at least the highest client message id of that sender in that
    /// thread that is stored or staged. Bounded by `capacity`: past it, an arbitrary bound is
    /// forgotten.
    newest: Map<(u64, u64), u64>,
    capacity: usize,
    round: usize,
    sealed: usize,
}

impl RecentSends {
    pub fn new(capacity: usize) -> Self {
        Self {
            ids: Map::default(),
            order: VecDeque::new(),
            newest: Map::default(),
            capacity: capacity.max(1),
            round: 0,
            sealed: 0,
        }
    }

    /// The message id of an earlier send with `key` accepted at most `window_us` before `now`.
    /// Message ids are clock values in microseconds, so the id is also the send's time.
    pub fn get(&self, key: &SendKey, now: u64, window_us: u64) -> Option<u64> {
        self.ids
            .get(key)
            .copied()
            .filter(|&id| now.saturating_sub(id) <= window_us)
    }

    /// The bound of (thread, sender): every client message id above it is new. `None`: not
    /// known, [`learn`](Self::learn) it from the store first.
    pub fn newest(&self, thread: u64, sender: u64) -> Option<u64> {
        self.newest.get(&(thread, sender)).copied()
    }

    /// Sets the bound of (thread, sender) from `stored`, the highest client message id the
    /// store holds for them (0: none), and from the sends not yet durable, which the store
    /// cannot show; returns it.
    pub fn learn(&mut self, thread: u64, sender: u64, stored: u64) -> u64 {
        let pending = self.order.len() - (self.round + self.sealed).min(self.order.len());
        let newest = self
            .order
            .range(pending..)
            .filter(|((t, s, _), _)| (*t, *s) == (thread, sender))
            .map(|((_, _, client), _)| *client)
            .fold(stored, u64::max);
        if self.newest.len() >= self.capacity {
            if let Some(&any) = self.newest.keys().next() {
                self.newest.remove(&any);
            }
        }
        self.newest.insert((thread, sender), newest);
        newest
    }

    /// Remembers a send staged this round. Forgets the oldest durable entries while over
    /// capacity; entries not yet durable stay (a retry before the commit must find them, the
    /// store cannot), so the map exceeds its capacity by at most two rounds' sends.
    pub fn insert(&mut self, key: SendKey, id: u64) {
        if let Some(newest) = self.newest.get_mut(&(key.0, key.1)) {
            *newest = (*newest).max(key.2);
        }
        self.ids.insert(key, id);
        self.order.push_back((key, id));
        self.round += 1;
        while self.order.len() > self.capacity && self.order.len() > self.round + self.sealed {
            if let Some((old, old_id)) = self.order.pop_front() {
                self.remove(old, old_id);
            }
        }
    }

    /// Every staged send is durable and becomes an ordinary entry.
    #[cfg(test)]
    pub fn commit_round(&mut self) {
        self.round = 0;
        self.sealed = 0;
    }

    /// The round was handed to the commit stage; its sends stay pinned until it is durable.
    pub fn seal(&mut self) {
        debug_assert_eq!(self.sealed, 0, "one sealed round at a time");
        self.sealed = self.round;
        self.round = 0;
    }

    /// The sealed round is durable: its sends become ordinary entries.
    pub fn durable(&mut self) {
        self.sealed = 0;
    }

    /// A commit failed: the sends not yet durable (the sealed round's and the current one's,
    /// which was built on it) were never stored, so a retry must store them.
    pub fn forget_round(&mut self) {
        for _ in 0..self.round + self.sealed {
            if let Some((key, id)) = self.order.pop_back() {
                self.remove(key, id);
            }
        }
        self.round = 0;
        self.sealed = 0;
    }

    fn remove(&mut self, key: SendKey, id: u64) {
        if self.ids.get(&key) == Some(&id) {
            self.ids.remove(&key);
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Heap bytes the three tables hold, from their capacities (a hash table of `n` usable
    /// slots has the next power of two above `n * 8 / 7` buckets, each an entry and a control
    /// byte). Grows until `capacity` entries, then stays: a bounded cache, not a leak.
    pub fn heap_bytes(&self) -> usize {
        const ENTRY: usize = std::mem::size_of::<(SendKey, u64)>();
        let buckets = match self.ids.capacity() {
            0 => 0,
            n => (n * 8 / 7).next_power_of_two(),
        };
        const BOUND: usize = std::mem::size_of::<((u64, u64), u64)>();
        let bound_buckets = match self.newest.capacity() {
            0 => 0,
            n => (n * 8 / 7).next_power_of_two(),
        };
        buckets * (ENTRY + 1) + self.order.capacity() * ENTRY + bound_buckets * (BOUND + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3_600_000_000;

    #[test]
    fn heap_bytes_grow_with_the_entries_up_to_the_capacity_only() {
        let mut r = RecentSends::new(1000);
        assert_eq!(r.heap_bytes(), 0);
        let mut last = 0;
        for i in 0..5000 {
            r.insert((1, 1, i), i);
            r.commit_round();
            if i == 999 {
                last = r.heap_bytes();
                // 1,000 entries of 32 bytes in two tables, at most twice over for growth.
                assert!((64_000..=4 * 64_000).contains(&last), "{last}");
            }
        }
        assert_eq!(r.len(), 1000);
        assert!(
            r.heap_bytes() <= 2 * last,
            "{} after 5,000 sends",
            r.heap_bytes()
        );
    }

    #[test]
    fn the_oldest_committed_entries_go_first_and_the_round_stays() {
        let mut r = RecentSends::new(2);
        r.insert((1, 1, 1), 10);
        r.insert((1, 1, 2), 20);
        r.commit_round();
        r.insert((1, 1, 3), 30);
        assert_eq!(r.len(), 2);
        assert_eq!(r.get(&(1, 1, 1), 30, HOUR), None);
        assert_eq!(r.get(&(1, 1, 2), 30, HOUR), Some(20));
        // A round larger than the capacity keeps every one of its sends.
        r.insert((1, 1, 4), 40);
        r.insert((1, 1, 5), 50);
        assert_eq!(r.len(), 3);
        for (c, id) in [(3, 30), (4, 40), (5, 50)] {
            assert_eq!(r.get(&(1, 1, c), 50, HOUR), Some(id));
        }
        r.commit_round();
        r.insert((1, 1, 6), 60);
        assert_eq!(r.len(), 2);
        assert_eq!(r.get(&(1, 1, 5), 60, HOUR), Some(50));
    }

    #[test]
    fn a_sealed_round_stays_until_durable_and_a_failure_forgets_both_rounds() {
        let mut r = RecentSends::new(1);
        r.insert((1, 1, 1), 10);
        r.seal();
        r.insert((1, 1, 2), 20);
        assert_eq!(r.get(&(1, 1, 1), 20, HOUR), Some(10), "sealed: not evicted");
        assert_eq!(r.len(), 2);
        r.forget_round();
        assert_eq!(
            r.len(),
            0,
            "the sealed round failed, and the round built on it"
        );
        r.insert((1, 1, 3), 30);
        r.seal();
        r.durable();
        r.insert((1, 1, 4), 40);
        assert_eq!(
            r.get(&(1, 1, 3), 40, HOUR),
            None,
            "durable: evicted past capacity"
        );
    }

    #[test]
    fn a_failed_round_is_forgotten() {
        let mut r = RecentSends::new(8);
        r.insert((1, 1, 1), 10);
        r.commit_round();
        r.insert((1, 1, 2), 20);
        r.insert((2, 1, 2), 21);
        r.forget_round();
        assert_eq!(r.get(&(1, 1, 1), 30, HOUR), Some(10));
        assert_eq!(r.get(&(1, 1, 2), 30, HOUR), None);
        assert_eq!(r.get(&(2, 1, 2), 30, HOUR), None);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn a_resend_after_expiry_that_fails_to_commit_leaves_nothing_behind() {
        let mut r = RecentSends::new(8);
        r.insert((1, 1, 1), 10);
        r.commit_round();
        // Expired at 11 with a window of 0: the send is stored again under a new id.
        assert_eq!(r.get(&(1, 1, 1), 11, 0), None);
        r.insert((1, 1, 1), 11);
        r.forget_round();
        assert_eq!(r.get(&(1, 1, 1), 11, HOUR), None);
    }

    #[test]
    fn an_entry_older_than_the_window_is_absent() {
        let mut r = RecentSends::new(8);
        r.insert((1, 1, 1), 1_000);
        assert_eq!(r.get(&(1, 1, 1), 1_000 + HOUR, HOUR), Some(1_000));
        assert_eq!(r.get(&(1, 1, 1), 1_001 + HOUR, HOUR), None);
    }

    #[test]
    fn a_bound_is_learnt_from_the_store_and_the_sends_not_yet_durable() {
        let mut r = RecentSends::new(10);
        r.insert((1, 1, 3), 30);
        r.seal();
        r.durable();
        r.insert((1, 1, 8), 80);
        r.seal();
        r.insert((1, 1, 5), 50);
        r.insert((2, 1, 100), 90);
        r.insert((1, 2, 100), 95);
        // The durable 3 is the store's to report (4 here); 8 (sealed) and 5 (this round) are
        // not in the store yet.
        assert_eq!(r.learn(1, 1, 4), 8);
        assert_eq!(r.newest(1, 1), Some(8));
        assert_eq!(r.learn(1, 3, 0), 0, "another sender's sends do not count");
        r.durable();
        assert_eq!(
            r.learn(1, 1, 2),
            5,
            "only this round's 5 is not durable now"
        );
    }

    #[test]
    fn a_send_raises_a_known_bound_and_a_bound_only_rises() {
        let mut r = RecentSends::new(10);
        r.insert((1, 1, 3), 30);
        assert_eq!(r.newest(1, 1), None, "a send does not invent a bound");
        r.learn(1, 1, 7);
        r.insert((1, 1, 9), 90);
        assert_eq!(r.newest(1, 1), Some(9));
        r.insert((1, 1, 4), 40);
        assert_eq!(r.newest(1, 1), Some(9));
        r.forget_round();
        assert_eq!(
            r.newest(1, 1),
            Some(9),
            "too high is safe: it costs a lookup"
        );
    }

    #[test]
    fn bounds_are_held_for_at_most_capacity_pairs() {
        let mut r = RecentSends::new(2);
        for sender in 0..100 {
            r.learn(1, sender, sender);
            assert!(r.newest.len() <= 2);
        }
        assert_eq!(r.newest(1, 99), Some(99), "the newest is always kept");
    }
}
