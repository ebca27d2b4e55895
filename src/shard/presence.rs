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
//!
//! **Users of other nodes** (`cluster::presence`): a PRESENCE_QUERY naming them is answered
//! once their homes answered (an internal PRESENCE_QUERY per home, gathered like the user
//! checks in `forward.rs`); a subscription to them is also a watch of this node on their home,
//! whose changes arrive as [`ShardMsg::Presence`](super::mailbox::ShardMsg::Presence) like a
//! local shard's and are coalesced and pushed the same way.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use courier_protocol::peer::PresenceChange;
use courier_protocol::{Done, ErrorCode, ErrorReply, Frame, Presence, PresenceList};

use super::conn::flag;
use super::Shard;
use crate::caller::{Caller, ConnRef, UsersChecked};
use crate::cluster::presence::{send_changes, TooManyWatches};

/// Users one connection may watch.
pub const MAX_PER_CONN: usize = 4096;

/// One user's presence change, numbered by the [`Directory`](crate::directory::Directory)
/// of the user's home in the order the changes happened there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The home's run (`ClusterPresence::epoch`): numbers restart with a restarted home.
    pub epoch: u64,
    pub seq: u64,
    pub presence: Presence,
}

/// Why a PRESENCE_SUBSCRIBE was refused (nothing changed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    #[error("too many presence subscriptions on one connection (at most {MAX_PER_CONN} users)")]
    PerConnection,
    #[error(transparent)]
    Node(#[from] TooManyWatches),
}

#[derive(Default)]
pub struct Subscriptions {
    /// Watched user → local subscriber connections.
    watchers: HashMap<u64, Vec<ConnRef>>,
    /// Subscriber slot → users it watches (to undo on close).
    by_conn: HashMap<u32, Vec<u64>>,
    /// Latest unpushed state per watched user.
    dirty: HashMap<u64, Presence>,
    /// (epoch, sequence number) of the newest change taken per watched user. Changes of one
    /// user made on different shards travel through different mailboxes and may arrive out of
    /// order; an older one arriving later is ignored, so the newest state wins, not the last
    /// arrival. A change of another epoch is of a restarted home (whose numbers start again),
    /// which comes after everything of the old run (the link to the old one failed first).
    newest: HashMap<u64, (u64, u64)>,
}

impl Subscriptions {
    /// Adds `users` to what `conn` watches; returns how many subscriptions are new. Fails (and
    /// changes nothing) when the connection would watch more than [`MAX_PER_CONN`] users, or
    /// when `admit`, given the new ones, refuses them.
    pub fn subscribe(
        &mut self,
        conn: ConnRef,
        users: &[u64],
        admit: impl FnOnce(&[u64]) -> Result<(), TooManyWatches>,
    ) -> Result<usize, SubscribeError> {
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
        let admitted = if mine.len() + fresh.len() > MAX_PER_CONN {
            Err(SubscribeError::PerConnection)
        } else {
            admit(&fresh).map_err(SubscribeError::from)
        };
        if let Err(e) = admitted {
            if mine.is_empty() {
                self.by_conn.remove(&conn.slot);
            }
            return Err(e);
        }
        for &u in &fresh {
            mine.push(u);
            self.watchers.entry(u).or_default().push(conn);
        }
        Ok(fresh.len())
    }

    /// Drops every subscription of the connection in `slot`; returns the users it watched.
    pub fn drop_conn(&mut self, slot: u32) -> Vec<u64> {
        let Some(users) = self.by_conn.remove(&slot) else {
            return Vec::new();
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
        users
    }

    /// Notes a change, if anyone here watches that user and it is newer than the last one
    /// taken.
    pub fn changed(&mut self, c: &Change) {
        let user = c.presence.user;
        if !self.watchers.contains_key(&user) {
            return;
        }
        if let Some(&(epoch, seq)) = self.newest.get(&user) {
            if epoch == c.epoch && c.seq <= seq {
                return;
            }
        }
        self.newest.insert(user, (c.epoch, c.seq));
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
        let local = self.core.router.local_index();
        if self.core.links.is_some()
            && users
                .iter()
                .any(|&u| self.core.router.user_node(u) != local)
        {
            let Some(conn) = self.conns.get(slot) else {
                return;
            };
            let Some(me) = self.conn_ref(slot) else {
                return;
            };
            let caller = Caller {
                user: caller,
                device: conn.device,
                conn: me,
                checked: UsersChecked::No,
            };
            return self.presence_gather(slot, caller, request_id, users.to_vec());
        }
        let now = crate::clock::wall_us();
        let mut entries = Vec::with_capacity(users.len());
        for &user in users {
            match self.presence_of(user, now) {
                Ok(p) => entries.push(p),
                Err(e) => return self.internal(slot, request_id, &e),
            }
        }
        self.send(
            slot,
            request_id,
            &Frame::PresenceList(PresenceList { entries }),
        );
    }

    /// The presence of `user`, a user of this node, at `now` (µs).
    pub(super) fn presence_of(&self, user: u64, now: u64) -> Result<Presence, crate::store::Error> {
        let online = self.core.directory.is_online(user);
        let last_seen = if online {
            now
        } else {
            self.core.chat.store.last_seen(user)?.unwrap_or(0)
        };
        Ok(Presence {
            user,
            online,
            last_seen,
        })
    }

    /// A PRESENCE_QUERY of users of this node from the home of the asking user (which checked
    /// that they are its contacts: contacts live with their user), forwarded by
    /// `presence_gather` there. Answered PRESENCE_LIST over the links.
    pub(super) fn presence_query_for_node(
        &mut self,
        caller: Caller,
        request_id: u32,
        users: &[u64],
    ) {
        let max = self.core.config.max_contacts;
        let now = crate::clock::wall_us();
        let answer = if users.len() > max {
            Frame::ErrorReply(ErrorReply {
                code: ErrorCode::InvalidArgument as u16,
                message: format!(
                    "ask about at most {max} users at once (the most contacts a user may have)"
                ),
            })
        } else {
            let entries: Result<Vec<Presence>, _> =
                users.iter().map(|&u| self.presence_of(u, now)).collect();
            match entries {
                Ok(entries) => Frame::PresenceList(PresenceList { entries }),
                Err(e) => {
                    tracing::error!(error = %e, "presence query of another node failed");
                    Frame::ErrorReply(ErrorReply {
                        code: ErrorCode::Internal as u16,
                        message: format!(
                            "node {}: the store failed; retry later",
                            self.core.router.local()
                        ),
                    })
                }
            }
        };
        let bytes = self.encode(request_id, &answer);
        self.reply_remote(caller.conn, request_id, bytes);
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
        let core = self.core.clone();
        let admit = |fresh: &[u64]| match &core.links {
            Some(links) => core.cluster_presence.watch(links, &core.router, fresh),
            None => Ok(()),
        };
        match self.subs.subscribe(me, users, admit) {
            Ok(added) => {
                self.core
                    .presence_subscriptions
                    .fetch_add(added, Ordering::Relaxed);
                if let Some(conn) = self.conns.get_mut(slot) {
                    conn.flags |= flag::SUBSCRIBED;
                }
                self.send(slot, request_id, &Frame::Done(Done {}));
            }
            Err(SubscribeError::PerConnection) => self.reply_error(
                slot,
                request_id,
                ErrorCode::InvalidArgument,
                "too many presence subscriptions on one connection",
            ),
            Err(SubscribeError::Node(TooManyWatches { node })) => {
                let message = format!(
                    "this node already watches the presence of {} users of node {} for its clients, \
                     the most it may; subscribe to fewer users, or later",
                    crate::cluster::presence::MAX_WATCHES_PER_PEER,
                    self.core.router.node_id(node)
                );
                self.reply_error(slot, request_id, ErrorCode::InvalidArgument, &message)
            }
        }
    }

    /// A subscriber closed: its subscriptions to users of other nodes end (`users`: what it
    /// watched).
    pub(super) fn presence_unwatch(&self, users: &[u64]) {
        if users.is_empty() {
            return;
        }
        if let Some(links) = &self.core.links {
            let core = &self.core;
            core.cluster_presence.unwatch(links, &core.router, users);
        }
    }

    /// The round's changes of users other nodes watch: one `PRESENCE_CHANGES` per such node.
    pub(super) fn presence_to_nodes(&mut self) {
        let core = &self.core;
        core.cluster_presence
            .route(&self.presence_out, |node, changes| {
                send_changes(core, node, changes)
            });
    }

    /// Node `node` watches `users` of this node: send it their current state, numbered so
    /// that a change it does not reflect wins over it (see `Directory::presence_state`).
    pub(super) fn presence_snapshot(&mut self, node: u16, users: &[u64]) {
        let now = crate::clock::wall_us();
        let mut changes = Vec::with_capacity(users.len());
        for &user in users {
            let (online, seq) = self.core.directory.presence_state(user);
            let last_seen = if online {
                now
            } else {
                match self.core.chat.store.last_seen(user) {
                    Ok(at) => at.unwrap_or(0),
                    Err(e) => {
                        tracing::error!(error = %e, user, "presence state for another node: the store failed; left out");
                        continue;
                    }
                }
            };
            changes.push(PresenceChange {
                seq,
                presence: Presence {
                    user,
                    online,
                    last_seen,
                },
            });
        }
        send_changes(&self.core, node, changes);
    }

    /// Notes that `user` came online or went offline (change `seq` of the directory), for the
    /// end-of-round broadcast.
    pub(super) fn presence_changed(&mut self, seq: u64, user: u64, online: bool, at_us: u64) {
        self.presence_out.push(Change {
            epoch: self.core.cluster_presence.epoch,
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

    fn ok(_: &[u64]) -> Result<(), TooManyWatches> {
        Ok(())
    }

    fn change(seq: u64, user: u64, online: bool) -> Change {
        Change {
            epoch: 1,
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
        assert_eq!(s.subscribe(c(1), &[10, 11, 10], ok), Ok(2));
        assert_eq!(s.subscribe(c(2), &[10], ok), Ok(1));
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
        s.subscribe(c(1), &[10], ok).unwrap();
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

    /// A home restarted: its directory numbers from 1 again, in a new epoch. Its first
    /// change (the state it answers a watch with) must win over the old run's higher numbers.
    #[test]
    fn a_change_of_a_restarted_home_wins_over_the_old_runs_numbers() {
        let mut s = Subscriptions::default();
        s.subscribe(c(1), &[10], ok).unwrap();
        s.changed(&change(40, 10, true));
        s.flush(|_, _| {});
        let restarted = Change {
            epoch: 2,
            ..change(1, 10, false)
        };
        s.changed(&restarted);
        let mut pushes = Vec::new();
        s.flush(|p, _| pushes.push((p.user, p.online)));
        assert_eq!(pushes, vec![(10, false)]);
        // Within the new epoch, numbers order changes again.
        s.changed(&Change {
            epoch: 2,
            ..change(3, 10, true)
        });
        s.changed(&Change {
            epoch: 2,
            ..change(2, 10, false)
        });
        let mut pushes = Vec::new();
        s.flush(|p, _| pushes.push((p.user, p.online)));
        assert_eq!(pushes, vec![(10, true)]);
    }

    /// The state a home answers a watch with is numbered with the directory's newest number
    /// when it was read: the change it did not see (numbered after) wins whichever arrives
    /// last; one it saw (numbered at or before) does not undo it.
    #[test]
    fn a_state_snapshot_and_a_change_meet_in_either_order() {
        let d = crate::directory::Directory::new();
        let (online, before) = d.presence_state(10);
        assert!(!online);
        let went_online = d.register(10, c(5)).unwrap();
        assert!(went_online > before);
        let (online, after) = d.presence_state(10);
        assert!(online && after >= went_online);

        // Snapshot read before the change, arriving after it: ignored.
        let mut s = Subscriptions::default();
        s.subscribe(c(1), &[10], ok).unwrap();
        s.changed(&change(went_online, 10, true));
        s.changed(&change(before, 10, false));
        let mut pushes = Vec::new();
        s.flush(|p, _| pushes.push(p.online));
        assert_eq!(pushes, vec![true]);
        // Snapshot read after the change, arriving before it: the change changes nothing.
        let mut s = Subscriptions::default();
        s.subscribe(c(1), &[10], ok).unwrap();
        s.changed(&change(after, 10, true));
        s.flush(|_, _| {});
        s.changed(&change(went_online, 10, true));
        s.flush(|p, _| panic!("pushed twice: {p:?}"));
    }

    #[test]
    fn a_refused_watch_changes_nothing() {
        let mut s = Subscriptions::default();
        let refuse = |_: &[u64]| Err(TooManyWatches { node: 1 });
        assert_eq!(
            s.subscribe(c(1), &[10], refuse),
            Err(SubscribeError::Node(TooManyWatches { node: 1 }))
        );
        assert!(s.drop_conn(1).is_empty());
        s.changed(&change(1, 10, true));
        s.flush(|p, _| panic!("not subscribed: {p:?}"));
    }

    #[test]
    fn subscriptions_die_with_the_connection() {
        let mut s = Subscriptions::default();
        s.subscribe(c(1), &[10], ok).unwrap();
        s.changed(&change(1, 10, true));
        assert_eq!(s.drop_conn(1), vec![10]);
        s.flush(|_, _| panic!("no subscriber left"));
        assert!(s.drop_conn(1).is_empty());
    }

    #[test]
    fn a_connection_cannot_watch_unbounded_users() {
        let mut s = Subscriptions::default();
        let many: Vec<u64> = (0..=MAX_PER_CONN as u64).collect();
        assert_eq!(
            s.subscribe(c(1), &many, ok),
            Err(SubscribeError::PerConnection)
        );
        assert!(s.drop_conn(1).is_empty());
    }
}
