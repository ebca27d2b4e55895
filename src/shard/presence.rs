//! Presence subscriptions of one shard's connections, and coalescing of their pushes.
//!
//! A presence change (first device online, last device offline) is broadcast to every shard
//! once per round while anyone subscribes anywhere. Each shard keeps only the latest state per
//! watched user in `dirty` and pushes it on its one-second tick: a user flapping a hundred times
//! in a second costs each subscriber one `PRESENCE_PUSH`, so a reconnect storm cannot flood
//! subscribers. Subscriptions die with the subscriber's connection.
//!
//! Also the shard's presence handlers: PRESENCE_QUERY and PRESENCE_SUBSCRIBE (contacts only),
//! and the note of a change for the end-of-round broadcast.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use courier_protocol::{Done, ErrorCode, Frame, Presence, PresenceList};

use super::conn::flag;
use super::Shard;
use crate::caller::ConnRef;

/// Users one connection may watch.
pub const MAX_PER_CONN: usize = 4096;

/// One user's presence change, numbered by the [`Directory`](crate::directory::Directory)
/// in the order the changes happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub seq: u64,
    pub presence: Presence,
}

#[derive(Default)]
pub struct Subscriptions {
    /// Watched user → local subscriber connections.
    watchers: HashMap<u64, Vec<ConnRef>>,
    /// Subscriber slot → users it watches (to undo on close).
    by_conn: HashMap<u32, Vec<u64>>,
    /// Latest unpushed state per watched user.
    dirty: HashMap<u64, Presence>,
    /// Sequence number of the newest change taken per watched user. Changes of one user made
    /// on different shards travel through different mailboxes and may arrive out of order;
    /// an older one arriving later is ignored, so the newest state wins, not the last arrival.
    newest: HashMap<u64, u64>,
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
                    self.newest.remove(u);
                }
            }
        }
        users.len()
    }

    /// Notes a change, if anyone here watches that user and it is newer than the last one
    /// taken.
    pub fn changed(&mut self, c: &Change) {
        let user = c.presence.user;
        if !self.watchers.contains_key(&user) {
            return;
        }
        let newest = self.newest.entry(user).or_insert(0);
        if c.seq <= *newest {
            return;
        }
        *newest = c.seq;
        self.dirty.insert(user, c.presence.clone());
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

impl Shard {
    pub(super) fn presence_query(
        &mut self,
        slot: usize,
        request_id: u32,
        caller: u64,
        users: &[u64],
    ) {
        // Only contacts may be asked about, so this many always fit in one PRESENCE_LIST
        // (a contact takes more bytes in CONTACTS than an entry here).
        let max = self.core.config.max_contacts;
        if users.len() > max {
            let message = format!(
                "ask about at most {max} users at once (the most contacts a user may have)"
            );
            return self.reply_error(slot, request_id, ErrorCode::InvalidArgument, &message);
        }
        if !self.all_contacts(slot, request_id, caller, users) {
            return;
        }
        let now = crate::clock::wall_us();
        let mut entries = Vec::with_capacity(users.len());
        for &user in users {
            let online = self.core.directory.is_online(user);
            let last_seen = if online {
                now
            } else {
                match self.core.chat.store.last_seen(user) {
                    Ok(at) => at.unwrap_or(0),
                    Err(e) => return self.internal(slot, request_id, &e),
                }
            };
            entries.push(Presence {
                user,
                online,
                last_seen,
            });
        }
        self.send(
            slot,
            request_id,
            &Frame::PresenceList(PresenceList { entries }),
        );
    }

    /// Presence is disclosed to contacts only: answers NOT_CONTACT (or INTERNAL) and returns
    /// false unless every one of `users` is in the caller's contacts.
    fn all_contacts(&mut self, slot: usize, request_id: u32, caller: u64, users: &[u64]) -> bool {
        for &user in users {
            match self.core.chat.store.is_contact(caller, user) {
                Ok(true) => {}
                Ok(false) => {
                    let message = format!("user {user} is not in your contacts; add them first");
                    self.reply_error(slot, request_id, ErrorCode::NotContact, &message);
                    return false;
                }
                Err(e) => {
                    self.internal(slot, request_id, &e);
                    return false;
                }
            }
        }
        true
    }

    pub(super) fn presence_subscribe(
        &mut self,
        slot: usize,
        request_id: u32,
        caller: u64,
        users: &[u64],
    ) {
        if !self.all_contacts(slot, request_id, caller, users) {
            return;
        }
        let Some(me) = self.conn_ref(slot) else {
            return;
        };
        match self.subs.subscribe(me, users) {
            Ok(added) => {
                self.core
                    .presence_subscriptions
                    .fetch_add(added, Ordering::Relaxed);
                if let Some(conn) = self.conns.get_mut(slot) {
                    conn.flags |= flag::SUBSCRIBED;
                }
                self.send(slot, request_id, &Frame::Done(Done {}));
            }
            Err(()) => self.reply_error(
                slot,
                request_id,
                ErrorCode::InvalidArgument,
                "too many presence subscriptions on one connection",
            ),
        }
    }

    /// Notes that `user` came online or went offline (change `seq` of the directory), for the
    /// end-of-round broadcast.
    pub(super) fn presence_changed(&mut self, seq: u64, user: u64, online: bool, at_us: u64) {
        self.presence_out.push(Change {
            seq,
            presence: Presence {
                user,
                online,
                last_seen: at_us,
            },
        });
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
            node: 0,
        }
    }

    fn change(seq: u64, user: u64, online: bool) -> Change {
        Change {
            seq,
            presence: Presence {
                user,
                online,
                last_seen: seq,
            },
        }
    }

    #[test]
    fn changes_coalesce_to_the_latest_state_per_user() {
        let mut s = Subscriptions::default();
        assert_eq!(s.subscribe(c(1), &[10, 11, 10]), Ok(2));
        assert_eq!(s.subscribe(c(2), &[10]), Ok(1));
        for i in 0..100 {
            s.changed(&change(i + 1, 10, i % 2 == 0));
        }
        s.changed(&change(101, 99, true));
        let mut pushes = Vec::new();
        s.flush(|p, w| pushes.push((p.user, p.last_seen, w.len())));
        assert_eq!(pushes, vec![(10, 100, 2)]);
        s.flush(|_, _| panic!("nothing changed since"));
    }

    /// Regression: a user reconnecting from shard 0 to shard 1 goes offline on 0 (change 1)
    /// and online on 1 (change 2); the two broadcasts reach a subscriber's shard through two
    /// mailboxes, here in the wrong order. The subscriber must see the user online.
    #[test]
    fn an_older_change_arriving_later_does_not_win() {
        let mut s = Subscriptions::default();
        s.subscribe(c(1), &[10]).unwrap();
        s.changed(&change(2, 10, true));
        s.changed(&change(1, 10, false));
        let mut pushes = Vec::new();
        s.flush(|p, _| pushes.push((p.user, p.online)));
        assert_eq!(pushes, vec![(10, true)]);

        // Also across a flush: the late offline must not be pushed on the next tick.
        s.changed(&change(1, 10, false));
        s.flush(|p, _| panic!("a stale change was pushed: {p:?}"));
        s.changed(&change(3, 10, false));
        let mut pushes = Vec::new();
        s.flush(|p, _| pushes.push((p.user, p.online)));
        assert_eq!(pushes, vec![(10, false)]);
    }

    #[test]
    fn subscriptions_die_with_the_connection() {
        let mut s = Subscriptions::default();
        s.subscribe(c(1), &[10]).unwrap();
        s.changed(&change(1, 10, true));
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
