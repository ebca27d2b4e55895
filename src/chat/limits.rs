//! Per-user caps on sets a client can grow (contacts, delete-for-me entries), counted over
//! the committed state plus what this round staged, which the store cannot see before the
//! commit. A user's contacts change only on the user's shard and a thread's delete-for-me
//! entries only on the thread's owner shard, so each count is exact: no other shard can add
//! to it at the same time.

use std::collections::{HashMap, HashSet};

/// What the rounds not yet durable staged: the round being built and the sealed round being
/// committed (see `chat::round`). A sealed round's part goes once it is durable; both go when
/// a commit fails.
#[derive(Default)]
pub(super) struct Staged {
    current: Generation,
    sealed: Generation,
}

/// What one round staged.
#[derive(Default)]
struct Generation {
    /// (user, contact) pairs changed this round: whether they are contacts afterwards.
    contacts: HashMap<(u64, u64), bool>,
    /// Per user, how this round changed the number of contacts.
    contact_delta: HashMap<u64, i64>,
    /// (user, thread, message) delete-for-me entries added this round.
    hidden: HashSet<(u64, u64, u64)>,
}

impl Generation {
    fn clear(&mut self) {
        self.contacts.clear();
        self.contact_delta.clear();
        self.hidden.clear();
    }

    fn is_empty(&self) -> bool {
        self.contacts.is_empty() && self.contact_delta.is_empty() && self.hidden.is_empty()
    }
}

impl Staged {
    /// A commit failed: nothing staged reached the store.
    pub fn clear(&mut self) {
        self.current.clear();
        self.sealed.clear();
    }

    /// The current round was handed to the commit stage (the sealed one is durable by now).
    pub fn seal(&mut self) {
        debug_assert!(self.sealed.is_empty(), "one sealed round at a time");
        std::mem::swap(&mut self.current, &mut self.sealed);
        self.current.clear();
    }

    /// The sealed round is durable: the store counts it now.
    pub fn durable(&mut self) {
        self.sealed.clear();
    }

    /// Whether the rounds made `contact` a contact of `user` (`Some(true)`), removed it
    /// (`Some(false)`), or did not touch the pair (`None`: ask the store).
    pub fn contact(&self, user: u64, contact: u64) -> Option<bool> {
        let key = (user, contact);
        self.current
            .contacts
            .get(&key)
            .or_else(|| self.sealed.contacts.get(&key))
            .copied()
    }

    /// Records that the pair changed from `!present` to `present`.
    pub fn set_contact(&mut self, user: u64, contact: u64, present: bool) {
        self.current.contacts.insert((user, contact), present);
        *self.current.contact_delta.entry(user).or_default() += if present { 1 } else { -1 };
    }

    /// `committed` contacts of `user` adjusted by the staged changes.
    pub fn contacts_of(&self, user: u64, committed: usize) -> usize {
        let delta = [&self.current, &self.sealed]
            .iter()
            .map(|g| g.contact_delta.get(&user).copied().unwrap_or(0))
            .sum::<i64>();
        (committed as i64 + delta).max(0) as usize
    }

    pub fn is_hidden(&self, user: u64, thread: u64, message: u64) -> bool {
        let key = (user, thread, message);
        self.current.hidden.contains(&key) || self.sealed.hidden.contains(&key)
    }

    pub fn hide(&mut self, user: u64, thread: u64, message: u64) {
        self.current.hidden.insert((user, thread, message));
    }

    /// Delete-for-me entries of `user` in `thread` staged and not yet durable.
    pub fn hidden_in(&self, user: u64, thread: u64) -> usize {
        [&self.current, &self.sealed]
            .iter()
            .flat_map(|g| g.hidden.iter())
            .filter(|&&(u, t, _)| (u, t) == (user, thread))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_counts_follow_the_round() {
        let mut s = Staged::default();
        assert_eq!(s.contact(1, 2), None);
        s.set_contact(1, 2, true);
        s.set_contact(1, 3, true);
        s.set_contact(1, 4, false);
        assert_eq!(s.contact(1, 2), Some(true));
        assert_eq!(s.contact(1, 4), Some(false));
        assert_eq!(s.contacts_of(1, 5), 6);
        assert_eq!(s.contacts_of(9, 5), 5);
        s.seal();
        s.set_contact(1, 5, true);
        assert_eq!(
            s.contacts_of(1, 5),
            7,
            "the sealed round counts until it is durable"
        );
        assert_eq!(s.contact(1, 2), Some(true));
        s.durable();
        assert_eq!(
            s.contacts_of(1, 5),
            6,
            "a durable round is counted by the store"
        );
        s.clear();
        assert_eq!(s.contacts_of(1, 5), 5);
    }

    #[test]
    fn hidden_counts_are_per_user_and_thread() {
        let mut s = Staged::default();
        s.hide(1, 10, 100);
        s.hide(1, 10, 101);
        s.hide(1, 11, 100);
        s.hide(2, 10, 100);
        assert_eq!(s.hidden_in(1, 10), 2);
        assert!(s.is_hidden(1, 11, 100));
        assert!(!s.is_hidden(2, 11, 100));
    }
}
