//! Presence across nodes: subscriptions to users of other nodes, and their changes.
//!
//! A user's presence (its [`Directory`](crate::directory::Directory) entry, its last seen
//! time) is known only on the user's home node, where its devices connect. So:
//!
//! ```text
//!  origin node (subscribers)                          home node (the watched user)
//!  PRESENCE_SUBSCRIBE ─► Subscriptions (per shard, as for local users)
//!    Watching: user → local subscriptions; 0 → 1 ──► PRESENCE_WATCH{users} ─► Watched[origin]
//!                                                      └► current state ─┐ (a shard reads it)
//!  link thread ◄── PRESENCE_CHANGES{epoch, [seq, presence]} ◄────────────┘
//!    └► ShardMsg::Presence → every shard: Subscriptions::changed, pushed on the tick
//!                     end of a round: the round's changes of watched users, one
//!                     PRESENCE_CHANGES per watching node ◄── presence_out (the shard path)
//!  last local subscription of a user gone ──────────► PRESENCE_UNWATCH{users}
//! ```
//!
//! * **Watches are per node**, refcounted on the origin ([`Watching`]: (connection, user)
//!   subscriptions per remote user). The home keeps, per peer node, the set of its users that
//!   node watches ([`Watched`]). Both are bounded by [`MAX_WATCHES_PER_PEER`]: the origin
//!   refuses a PRESENCE_SUBSCRIBE that would pass it (`INVALID_ARGUMENT`, nothing changed);
//!   the home ignores watches past it (counted, logged once), which only a node configured
//!   otherwise can cause.
//! * **One lane.** Every presence payload between two nodes goes on [`PRESENCE_LANE`], so one
//!   link carries them in order: a watch and the unwatch after it cannot cross, and the
//!   watches are sent while [`Watching`] is locked, so they leave in refcount order.
//! * **Ordering of changes.** A change carries the home's directory number (`seq`), as between
//!   shards; the state the home sends in answer to a watch carries the directory's newest
//!   number at the moment it read the state (under the user's stripe), so a change it does not
//!   reflect has a higher number and wins wherever the two meet. A restarted home numbers
//!   from 1 again: every payload carries the home's `epoch` (its start time in µs), and a
//!   subscriber's shard takes a change of another epoch as new (see `Subscriptions::changed`).
//! * **Links.** Delivery is at most once, so a watch, an unwatch or a change can be lost with
//!   a link. When the link that carries [`PRESENCE_LANE`] to a node comes up, the origin sends
//!   its whole watch set for that node (`reset`), which replaces what the home held, and the
//!   home answers with the current state of each user: a change missed while the link was down
//!   is corrected. The home, when its own link to a node comes up, sends that node the current
//!   state of everything it watches (its changes to that node went on that link). When the
//!   last link a node dialed here closes, the home drops that node's watches. A send refused
//!   because the queue is full marks the node *stale*, and shard 0 sends the whole set again
//!   on its next tick.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use courier_protocol::peer::{PresenceChange, PresenceChanges, PresenceUnwatch, PresenceWatch};
use parking_lot::Mutex;

use super::links::{LinkError, Links, NodeIndex, Payload};
use super::Router;
use crate::shard::mailbox::ShardMsg;
use crate::shard::presence::Change;
use crate::shard::Core;

/// The lane of every presence payload between two nodes.
pub const PRESENCE_LANE: u64 = 0x7072_6573_656e_6365;

/// Users of one node that another node may watch (`PRESENCE_WATCH`), on both ends.
pub const MAX_WATCHES_PER_PEER: usize = 256 * 1024;

/// Users per `PRESENCE_WATCH` or state snapshot (128 KiB of ids; a node frame takes 2 MiB).
pub const WATCH_CHUNK: usize = 16 * 1024;

/// The origin's side: remote users its connections subscribe to.
#[derive(Default)]
struct Watching {
    /// Remote user → (connection, user) subscriptions to it on this node.
    refs: HashMap<u64, u32>,
    /// Node index → its users in `refs`.
    per_node: HashMap<u16, usize>,
    /// Nodes whose watch set must be sent again (a send found the queue full).
    stale: HashSet<u16>,
}

/// The home's side: per peer node, the users of this node it watches.
#[derive(Default)]
struct Watched {
    by_peer: HashMap<u16, HashSet<u64>>,
}

/// A subscription the origin refuses: the node already watches as many users of `node` as it
/// may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this node already watches {MAX_WATCHES_PER_PEER} users of node index {node}")]
pub struct TooManyWatches {
    pub node: u16,
}

/// Presence across nodes, shared by the shards and the link thread (in [`Core`]).
///
/// Lock order: `watching` and `watched` are never held together, nor with any other lock;
/// `Links::send` (which never blocks) is the only call made while `watching` is held.
pub struct ClusterPresence {
    /// This run's epoch: the start time in µs (see the module docs).
    pub epoch: u64,
    watching: Mutex<Watching>,
    watched: Mutex<Watched>,
    /// Entries of `watched`: a shard takes its lock only when some node watches anyone here.
    watched_total: AtomicUsize,
    any_stale: AtomicBool,
    warned_cap: AtomicBool,
}

impl Default for ClusterPresence {
    fn default() -> Self {
        ClusterPresence::new(crate::clock::wall_us())
    }
}

impl ClusterPresence {
    pub fn new(epoch: u64) -> ClusterPresence {
        ClusterPresence {
            epoch,
            watching: Mutex::new(Watching::default()),
            watched: Mutex::new(Watched::default()),
            watched_total: AtomicUsize::new(0),
            any_stale: AtomicBool::new(false),
            warned_cap: AtomicBool::new(false),
        }
    }

    // ---- Origin ----

    /// New local subscriptions to `users` (each a (connection, user) pair new on this node;
    /// users of this node are skipped). A user no connection here watched yet is watched on
    /// its home. Refuses, changing nothing, when a home's users would pass the bound.
    pub fn watch(
        &self,
        links: &Links,
        router: &Router,
        users: &[u64],
    ) -> Result<(), TooManyWatches> {
        let local = router.local_index();
        let mut w = self.watching.lock();
        let mut fresh: Vec<(u16, u64)> = users
            .iter()
            .map(|&u| (router.user_node(u), u))
            .filter(|&(node, u)| node != local && !w.refs.contains_key(&u))
            .collect();
        fresh.sort_unstable();
        fresh.dedup();
        for group in fresh.chunk_by(|a, b| a.0 == b.0) {
            let node = group[0].0;
            if w.per_node.get(&node).copied().unwrap_or(0) + group.len() > MAX_WATCHES_PER_PEER {
                return Err(TooManyWatches { node });
            }
        }
        for &u in users {
            if router.user_node(u) != local {
                *w.refs.entry(u).or_insert(0) += 1;
            }
        }
        for group in fresh.chunk_by(|a, b| a.0 == b.0) {
            let node = group[0].0;
            *w.per_node.entry(node).or_insert(0) += group.len();
            set_gauge(links, node, |m| &m.presence_watching, w.per_node[&node]);
            let users = group.iter().map(|&(_, u)| u).collect();
            let sent = links.send(NodeIndex(node), PRESENCE_LANE, watch(false, users));
            self.note_sent(&mut w, node, sent);
        }
        Ok(())
    }

    /// Local subscriptions to `users` ended (a subscriber closed; one entry per (connection,
    /// user) pair; users of this node are skipped). A user no connection here watches any
    /// more is unwatched on its home.
    pub fn unwatch(&self, links: &Links, router: &Router, users: &[u64]) {
        let local = router.local_index();
        let mut w = self.watching.lock();
        let mut gone: Vec<(u16, u64)> = Vec::new();
        for &u in users {
            let node = router.user_node(u);
            if node == local {
                continue;
            }
            if let Some(n) = w.refs.get_mut(&u) {
                *n -= 1;
                if *n == 0 {
                    w.refs.remove(&u);
                    gone.push((node, u));
                }
            }
        }
        gone.sort_unstable();
        for group in gone.chunk_by(|a, b| a.0 == b.0) {
            let node = group[0].0;
            let left = w
                .per_node
                .get(&node)
                .copied()
                .unwrap_or(0)
                .saturating_sub(group.len());
            w.per_node.insert(node, left);
            set_gauge(links, node, |m| &m.presence_watching, left);
            let users = group.iter().map(|&(_, u)| u).collect();
            let payload = Payload::PresenceUnwatch(PresenceUnwatch { users });
            let sent = links.send(NodeIndex(node), PRESENCE_LANE, payload);
            self.note_sent(&mut w, node, sent);
        }
    }

    /// A refused watch or unwatch leaves the home's set wrong: send the whole set again, when
    /// the link comes up (`Down`) or on the next tick (`Full`).
    fn note_sent(&self, w: &mut Watching, node: u16, sent: Result<(), LinkError>) {
        if sent == Err(LinkError::Full) {
            w.stale.insert(node);
            self.any_stale.store(true, Ordering::Relaxed);
        }
    }

    /// Sends this node's whole watch set for the users of `node` (`reset`), in chunks.
    pub fn resync(&self, links: &Links, router: &Router, node: u16) {
        let mut w = self.watching.lock();
        let mut users: Vec<u64> = w
            .refs
            .keys()
            .copied()
            .filter(|&u| router.user_node(u) == node)
            .collect();
        users.sort_unstable();
        let mut chunks = users.chunks(WATCH_CHUNK);
        let first = chunks.next().unwrap_or(&[]);
        let mut sent = links.send(NodeIndex(node), PRESENCE_LANE, watch(true, first.to_vec()));
        for chunk in chunks {
            if sent.is_err() {
                break;
            }
            sent = links.send(NodeIndex(node), PRESENCE_LANE, watch(false, chunk.to_vec()));
        }
        match sent {
            Ok(()) => {
                w.stale.remove(&node);
            }
            // The next link-up sends it again.
            Err(LinkError::Down) => {}
            Err(LinkError::Full) => {
                w.stale.insert(node);
                self.any_stale.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Sends the watch set again to every stale node whose link is up (shard 0, once a second).
    pub fn retry_stale(&self, links: &Links, router: &Router) {
        if !self.any_stale.swap(false, Ordering::Relaxed) {
            return;
        }
        let stale: Vec<u16> = self.watching.lock().stale.iter().copied().collect();
        for node in stale {
            self.resync(links, router, node);
        }
        if !self.watching.lock().stale.is_empty() {
            self.any_stale.store(true, Ordering::Relaxed);
        }
    }

    // ---- Home ----

    /// `from` watches `users` (all of its set when `reset`). Returns the users whose current
    /// state to send it: those taken (past the bound they are ignored).
    pub fn on_watch(
        &self,
        links: Option<&Links>,
        from: u16,
        reset: bool,
        users: Vec<u64>,
    ) -> Vec<u64> {
        let mut w = self.watched.lock();
        let set = w.by_peer.entry(from).or_default();
        let before = set.len();
        if reset {
            set.clear();
        }
        let mut taken = Vec::with_capacity(users.len());
        let mut refused = 0;
        for u in users {
            if set.len() >= MAX_WATCHES_PER_PEER && !set.contains(&u) {
                refused += 1;
                continue;
            }
            set.insert(u);
            taken.push(u);
        }
        let after = set.len();
        self.adjust_total(before, after);
        if let Some(m) = links.and_then(|l| l.peer_metrics(NodeIndex(from))) {
            m.presence_watched.store(after as u64, Ordering::Relaxed);
            m.presence_refused.fetch_add(refused, Ordering::Relaxed);
        }
        if refused > 0 && !self.warned_cap.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                peer = from,
                "cluster presence: a node watches more than {MAX_WATCHES_PER_PEER} users of this one; \
                 the rest get no presence changes (run the same release on every node; logged once)"
            );
        }
        taken
    }

    /// `from` no longer watches `users`.
    pub fn on_unwatch(&self, links: Option<&Links>, from: u16, users: &[u64]) {
        let mut w = self.watched.lock();
        let Some(set) = w.by_peer.get_mut(&from) else {
            return;
        };
        let before = set.len();
        for u in users {
            set.remove(u);
        }
        let after = set.len();
        self.adjust_total(before, after);
        if let Some(m) = links.and_then(|l| l.peer_metrics(NodeIndex(from))) {
            m.presence_watched.store(after as u64, Ordering::Relaxed);
        }
    }

    /// The last link `from` dialed here closed: its watches go (it sends them again when it
    /// is linked again).
    pub fn peer_gone(&self, links: Option<&Links>, from: u16) {
        let mut w = self.watched.lock();
        if let Some(set) = w.by_peer.remove(&from) {
            self.adjust_total(set.len(), 0);
        }
        if let Some(m) = links.and_then(|l| l.peer_metrics(NodeIndex(from))) {
            m.presence_watched.store(0, Ordering::Relaxed);
        }
    }

    /// The users of this node that `node` watches.
    pub fn watched_by(&self, node: u16) -> Vec<u64> {
        let w = self.watched.lock();
        w.by_peer
            .get(&node)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    fn adjust_total(&self, before: usize, after: usize) {
        if after >= before {
            self.watched_total
                .fetch_add(after - before, Ordering::Relaxed);
        } else {
            self.watched_total
                .fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    /// Calls `send(node, changes)` once per node watching any of the users `changes` are
    /// about, with those changes in order (one `PRESENCE_CHANGES` per node per round).
    pub fn route(&self, changes: &[Change], mut send: impl FnMut(u16, Vec<PresenceChange>)) {
        if self.watched_total.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut out: Vec<(u16, Vec<PresenceChange>)> = Vec::new();
        {
            let w = self.watched.lock();
            for (&node, set) in &w.by_peer {
                let mine: Vec<PresenceChange> = changes
                    .iter()
                    .filter(|c| set.contains(&c.presence.user))
                    .map(|c| PresenceChange {
                        seq: c.seq,
                        presence: c.presence.clone(),
                    })
                    .collect();
                if !mine.is_empty() {
                    out.push((node, mine));
                }
            }
        }
        for (node, changes) in out {
            send(node, changes);
        }
    }
}

fn watch(reset: bool, users: Vec<u64>) -> Payload {
    Payload::PresenceWatch(PresenceWatch { reset, users })
}

fn set_gauge(
    links: &Links,
    node: u16,
    field: fn(&crate::metrics::PeerMetrics) -> &std::sync::atomic::AtomicU64,
    value: usize,
) {
    if let Some(m) = links.peer_metrics(NodeIndex(node)) {
        field(m).store(value as u64, Ordering::Relaxed);
    }
}

/// Sends `PRESENCE_CHANGES` to `node`; a refused send is counted (the state is corrected when
/// the link comes up again).
pub fn send_changes(core: &Core, node: u16, changes: Vec<PresenceChange>) {
    let Some(links) = &core.links else {
        return;
    };
    let payload = Payload::PresenceChanges(PresenceChanges {
        epoch: core.cluster_presence.epoch,
        changes,
    });
    let sent = links.send(NodeIndex(node), PRESENCE_LANE, payload);
    if let Some(m) = links.peer_metrics(NodeIndex(node)) {
        let counter = if sent.is_ok() {
            &m.presence_batches
        } else {
            &m.push_dropped
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the link thread does with a presence payload from `from`. Returns false when a
/// mailbox refused it (the caller counts the drop).
pub fn inbound(core: &Core, from: NodeIndex, payload: Payload) -> bool {
    let links = core.links.as_ref();
    let presence = &core.cluster_presence;
    match payload {
        Payload::PresenceWatch(w) => {
            let users = presence.on_watch(links, from.0, w.reset, w.users);
            snapshot(core, from.0, users)
        }
        Payload::PresenceUnwatch(u) => {
            presence.on_unwatch(links, from.0, &u.users);
            true
        }
        Payload::PresenceChanges(c) => {
            // Not gated on `presence_subscriptions`: a subscriber's shard counts its
            // subscriptions after it sent the watch, so the answer may come first. Changes
            // come only for users this node watches anyway.
            let changes: Arc<[Change]> = c
                .changes
                .into_iter()
                .map(|p| Change {
                    epoch: c.epoch,
                    seq: p.seq,
                    presence: p.presence,
                })
                .collect();
            let mut all = true;
            for mailbox in core.mailboxes.iter() {
                match mailbox.tx.try_send(ShardMsg::Presence(changes.clone())) {
                    Ok(()) => mailbox.wake(),
                    Err(_) => all = false,
                }
            }
            all
        }
        _ => true,
    }
}

/// Has the shards send `node` the current state of `users` (in chunks, spread over the
/// shards: reading last seen times is store work, kept off the link thread).
pub fn snapshot(core: &Core, node: u16, users: Vec<u64>) -> bool {
    let shards = core.mailboxes.len();
    let mut all = true;
    for (i, chunk) in users.chunks(WATCH_CHUNK).enumerate() {
        let mailbox = &core.mailboxes[(usize::from(node) + i) % shards];
        let msg = ShardMsg::PresenceSnapshot {
            node,
            users: chunk.to_vec(),
        };
        match mailbox.tx.try_send(msg) {
            Ok(()) => mailbox.wake(),
            Err(_) => all = false,
        }
    }
    all
}

/// A link this node dialed to `peer` came up. If it is the one carrying presence: send our
/// watch set for `peer`'s users, and the current state of what `peer` watches here.
pub fn dialed_up(core: &Core, peer: NodeIndex, link: usize) -> bool {
    let Some(links) = &core.links else {
        return true;
    };
    if links.link_of(peer, PRESENCE_LANE) != Some(link) {
        return true;
    }
    core.cluster_presence.resync(links, &core.router, peer.0);
    let users = core.cluster_presence.watched_by(peer.0);
    snapshot(core, peer.0, users)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: u64, user: u64) -> Change {
        Change {
            epoch: 1,
            seq,
            presence: courier_protocol::Presence {
                user,
                online: true,
                last_seen: 0,
            },
        }
    }

    #[test]
    fn changes_go_to_the_nodes_that_watch_their_users_one_batch_each() {
        let p = ClusterPresence::new(1);
        let mut none = Vec::new();
        p.route(&[change(1, 10)], |n, c| none.push((n, c.len())));
        assert!(none.is_empty(), "nobody watches");
        let mut sent = Vec::new();
        assert_eq!(p.on_watch(None, 1, false, vec![10, 11]), vec![10, 11]);
        assert_eq!(p.on_watch(None, 2, false, vec![11]), vec![11]);
        p.route(&[change(1, 10), change(2, 11), change(3, 12)], |n, c| {
            sent.push((n, c.iter().map(|c| c.seq).collect::<Vec<_>>()))
        });
        sent.sort();
        assert_eq!(sent, vec![(1, vec![1, 2]), (2, vec![2])]);

        p.on_unwatch(None, 1, &[10]);
        p.peer_gone(None, 2);
        let mut sent = Vec::new();
        p.route(&[change(4, 10), change(5, 11)], |n, c| {
            sent.push((n, c.len()))
        });
        assert_eq!(sent, vec![(1, 1)]);
        assert_eq!(p.watched_total.load(Ordering::Relaxed), 1);

        // A reset replaces the set.
        p.on_watch(None, 1, true, vec![12]);
        assert_eq!(p.watched_by(1), vec![12]);
        assert_eq!(p.watched_total.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_peer_cannot_watch_unbounded_users() {
        let p = ClusterPresence::new(1);
        let many: Vec<u64> = (0..MAX_WATCHES_PER_PEER as u64 + 5).collect();
        let taken = p.on_watch(None, 1, false, many);
        assert_eq!(taken.len(), MAX_WATCHES_PER_PEER);
        assert_eq!(p.watched_by(1).len(), MAX_WATCHES_PER_PEER);
        // Those it watches already may be named again.
        assert_eq!(p.on_watch(None, 1, false, vec![0]), vec![0]);
    }
}
