//! What rounds staged that the store cannot show yet.
//!
//! With the commit stage (`store::committer`), a shard builds round N+1 while round N's batch
//! is being made durable. A request of round N+1 must see what rounds N and N+1 staged, since
//! the store shows neither; once round N is durable the store shows it and its entries go.
//! So each of these holds two generations: `current` (the round being built) and `sealed`
//! (the round being committed; at most one per shard). Reads look at the newest first.

use crate::hash::Map;
use std::hash::Hash;

/// A map of staged values by key, in two generations (see the module docs).
pub(super) struct RoundMap<K, V> {
    current: Map<K, V>,
    sealed: Map<K, V>,
}

impl<K, V> Default for RoundMap<K, V> {
    fn default() -> Self {
        Self {
            current: Map::default(),
            sealed: Map::default(),
        }
    }
}

impl<K: Eq + Hash, V> RoundMap<K, V> {
    /// The newest staged value of `key`: this round's, else the sealed round's.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.current.get(key).or_else(|| self.sealed.get(key))
    }

    pub fn insert(&mut self, key: K, value: V) {
        self.current.insert(key, value);
    }

    /// Every staged key (a key staged by both rounds appears twice).
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.current.keys().chain(self.sealed.keys())
    }

    /// The current round was handed to the commit stage. The previous sealed round must be
    /// durable (or failed) by now: a shard has one round in flight.
    pub fn seal(&mut self) {
        debug_assert!(self.sealed.is_empty(), "one sealed round at a time");
        std::mem::swap(&mut self.current, &mut self.sealed);
        self.current.clear();
    }

    /// The sealed round is durable: the store shows it now.
    pub fn durable(&mut self) {
        self.sealed.clear();
    }

    /// A commit failed: nothing staged reached the store.
    pub fn clear(&mut self) {
        self.current.clear();
        self.sealed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_round_wins_and_a_durable_round_is_forgotten() {
        let mut m = RoundMap::default();
        m.insert(1, "a");
        m.insert(2, "b");
        m.seal();
        assert_eq!(m.get(&1), Some(&"a"));
        m.insert(1, "c");
        assert_eq!(
            m.get(&1),
            Some(&"c"),
            "this round's value over the sealed one"
        );
        assert_eq!(m.keys().count(), 3);
        m.durable();
        assert_eq!(m.get(&2), None, "the store shows the durable round");
        assert_eq!(m.get(&1), Some(&"c"));
        m.clear();
        assert_eq!(m.get(&1), None);
    }
}
