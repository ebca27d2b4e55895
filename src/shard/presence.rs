//! Presence subscriptions of one shard's connections, and coalescing of their pushes.
//!
//! A presence change (first device online, last device offline) is broadcast to every shard
//! once per round while anyone subscribes anywhere. Each shard keeps only the latest state per
//! watched user in `dirty` and pushes it on its one-second tick: a user flapping a hundred times
//! in a second costs each subscriber one `PRESENCE_PUSH`, so a reconnect storm cannot flood
//! subscribers. Subscriptions die with the subscriber's connection.

use std::collections::HashMap;

use courier_protocol::Presence;

use crate::chat::ConnRef;

/// Users one connection may watch.
pub const MAX_PER_CONN: usize = 4096;

#[derive(Default)]
pub struct Subscriptions {
    /// Watched user → local subscriber connections.
    watchers: HashMap<u64, Vec<ConnRef>>,
    /// Subscriber slot → users it watches (to undo on close).
    by_conn: HashMap<u32, Vec<u64>>,
    /// Latest unpushed state per watched user.
    dirty: HashMap<u64, Presence>,
}

impl Subscriptions {
    /// Adds `users` to what `conn` watches; returns how many subscriptions are new. Fails (and
    /// changes nothing) when the connection would watch more than [`MAX_PER_CONN`] users.
    pub fn subscribe(&mut self, conn: ConnRef, users: &[u64]) -> Result<usize, ()> {
        let mine = self.by_conn.entry(conn.slot).or_default();
        let fresh: Vec<u64> = {
            let mut f: Vec<u64> = users
                .iter()
                .copied()
                .filter(|u| !mine.contains(u))
                .collect();
            f.sort_unstable();
            f.dedup();
            f
        };
        if mine.len() + fresh.len() > MAX_PER_CONN {
            if mine.is_empty() {
                self.by_conn.remove(&conn.slot);
            }
            return Err(());
        }
        for &u in &fresh {
            mine.push(u);
            self.watchers.entry(u).or_default().push(conn);
        }
        Ok(fresh.len())
    }

    /// Drops every subscription of the connection in `slot`; returns how many there were.
    pub fn drop_conn(&mut self, slot: u32) -> usize {
        let Some(users) = self.by_conn.remove(&slot) else {
            return 0;
        };
        for u in &users {
            if let Some(w) = self.watchers.get_mut(u) {
                w.retain(|c| c.slot != slot);
                if w.is_empty() {
                    self.watchers.remove(u);
                    self.dirty.remove(u);
                }
            }
        }
        users.len()
    }

    /// Notes a change, if anyone here watches that user.
    pub fn changed(&mut self, p: &Presence) {
        if self.watchers.contains_key(&p.user) {
            self.dirty.insert(p.user, p.clone());
        }
    }

    /// Takes the coalesced changes, calling `push(state, subscribers)` once per user.
    pub fn flush(&mut self, mut push: impl FnMut(&Presence, &[ConnRef])) {
        for (user, p) in self.dirty.drain() {
            if let Some(w) = self.watchers.get(&user) {
                push(&p, w);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(slot: u32) -> ConnRef {
        ConnRef {
            shard: 0,
            slot,
            gen: 0,
        }
    }

    #[test]
    fn changes_coalesce_to_the_latest_state_per_user() {
        let mut s = Subscriptions::default();
        assert_eq!(s.subscribe(c(1), &[10, 11, 10]), Ok(2));
        assert_eq!(s.subscribe(c(2), &[10]), Ok(1));
        for i in 0..100 {
            s.changed(&Presence {
                user: 10,
                online: i % 2 == 0,
                last_seen: i,
            });
        }
        s.changed(&Presence {
            user: 99,
            online: true,
            last_seen: 1,
        });
        let mut pushes = Vec::new();
        s.flush(|p, w| pushes.push((p.user, p.last_seen, w.len())));
        assert_eq!(pushes, vec![(10, 99, 2)]);
        s.flush(|_, _| panic!("nothing changed since"));
    }

    #[test]
    fn subscriptions_die_with_the_connection() {
        let mut s = Subscriptions::default();
        s.subscribe(c(1), &[10]).unwrap();
        s.changed(&Presence {
            user: 10,
            online: true,
            last_seen: 1,
        });
        assert_eq!(s.drop_conn(1), 1);
        s.flush(|_, _| panic!("no subscriber left"));
        assert_eq!(s.drop_conn(1), 0);
    }

    #[test]
    fn a_connection_cannot_watch_unbounded_users() {
        let mut s = Subscriptions::default();
        let many: Vec<u64> = (0..=MAX_PER_CONN as u64).collect();
        assert_eq!(s.subscribe(c(1), &many), Err(()));
        assert_eq!(s.drop_conn(1), 0);
    }
}
