//! Request forwarding and batched fan-out between nodes: what arrives over the links
//! ([`Forwarding`], the server's [`Inbound`]) and the origin's table of forwarded requests in
//! flight ([`Pending`]).
//!
//! ```text
//!  origin node (client's home)                         owner node (thread's home)
//!  shard: FORWARD{lane, origin, request, frame} ─────► Forwarding::deliver (link thread)
//!         Pending: (slot, gen, request) → deadline        └► ShardMsg::Forward → owner shard
//!                                                               engine.handle … commit
//!  Forwarding::deliver ◄──── FORWARD_REPLY{origin, reply} ◄─ route: Effect::Reply (remote)
//!    └► ShardMsg::Answer → the connection's shard: in Pending? queue it : drop it (late)
//!  Forwarding::deliver ◄──── PUSH_BATCH{users, except, push} ◄─ route: Effect::Push, one
//!    └► Directory → ShardMsg::Deliver per shard                 batch per node per push
//! ```
//!
//! The link thread runs [`Forwarding::deliver`], so it never blocks: mailboxes and the read
//! queue are offered with `try_send`; what they refuse is answered at once over the links
//! (`RATE_LIMITED`) or, for answers and pushes, dropped and counted (the origin's deadline
//! turns a lost answer into `UNAVAILABLE`; a lost push is caught up by SYNC). A message is in
//! its mailbox at once, but its shard is woken at the end of the link thread's burst
//! ([`Inbound::flush`]): once per shard per burst, not once per payload.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use courier_protocol::peer::{Forward, ForwardReply, Origin, PushBatch};
use courier_protocol::{decode_one, encode, ErrorCode, ErrorReply, Frame, MAX_FRAME_LEN};
use crossbeam_channel::TrySendError;

use super::links::{Inbound, NodeIndex, Payload};
use super::reads::ClusterReads;
use crate::caller::{Caller, ConnRef};
use crate::chat::Engine;
use crate::clock::wall_us;
use crate::metrics::LinkMetrics;
use crate::shard::mailbox::{Recipients, ShardMsg, Wakes};
use crate::shard::read_pool::{ReadRequest, Refused};
use crate::shard::Core;
use crate::store::OutboxOp;

/// How long the origin waits for the owner's answer before it answers `UNAVAILABLE`.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// Forwarded requests one shard keeps in flight; past it a request is refused `RATE_LIMITED`.
pub const MAX_PENDING: usize = 64 * 1024;

/// `ConnRef::slot` of the origin's own requests (the user checks of a request that names users
/// of other nodes): no connection has this slot.
pub const INTERNAL_SLOT: u32 = u32::MAX;

/// A forwarded request in flight: the origin connection and the client's request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub slot: u32,
    pub gen: u32,
    pub request_id: u32,
}

/// The origin shard's forwarded requests in flight, each with its deadline, bounded.
///
/// Deadlines are `insert` time plus a fixed timeout, so they come in order: a queue in
/// insertion order is sorted by deadline. An answer removes the entry from the map only; its
/// queue item goes stale and is skipped when it reaches the front (and dropped in bulk when
/// the queue reaches twice the cap), so the queue never holds more than `2 × cap` items.
#[derive(Debug)]
pub struct Pending {
    /// Key → (node asked, insertion number).
    entries: HashMap<Key, (u16, u64)>,
    /// (deadline in ms, insertion number, key), in insertion order.
    deadlines: VecDeque<(u64, u64, Key)>,
    next: u64,
    cap: usize,
    timeout_ms: u64,
}

impl Pending {
    pub fn new(cap: usize, timeout: Duration) -> Pending {
        Pending {
            entries: HashMap::new(),
            deadlines: VecDeque::new(),
            next: 0,
            cap: cap.max(1),
            timeout_ms: timeout.as_millis() as u64,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Tracks `key`, asked of `node` at `now_ms`. False (nothing tracked) at the cap. A key
    /// already in flight (a client reusing a request id) gets the new deadline.
    pub fn insert(&mut self, key: Key, node: u16, now_ms: u64) -> bool {
        if self.entries.len() >= self.cap && !self.entries.contains_key(&key) {
            return false;
        }
        if self.deadlines.len() >= 2 * self.cap {
            let entries = &self.entries;
            self.deadlines
                .retain(|(_, seq, k)| entries.get(k).is_some_and(|e| e.1 == *seq));
        }
        self.next += 1;
        self.entries.insert(key, (node, self.next));
        self.deadlines
            .push_back((now_ms + self.timeout_ms, self.next, key));
        true
    }

    /// The answer for `key` arrived: the node it was asked of, or `None` if it is not in
    /// flight (never was, or already timed out: a late answer, to be dropped).
    pub fn remove(&mut self, key: Key) -> Option<u16> {
        self.entries.remove(&key).map(|(node, _)| node)
    }

    /// When the next entry times out (possibly one answered already: a spurious wake-up).
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.front().map(|d| d.0)
    }

    /// Removes every entry whose deadline is at or before `now_ms` and appends it to `out`
    /// with the node that did not answer.
    pub fn expire(&mut self, now_ms: u64, out: &mut Vec<(Key, u16)>) {
        while let Some(&(deadline, seq, key)) = self.deadlines.front() {
            if deadline > now_ms {
                break;
            }
            self.deadlines.pop_front();
            if let Some(&(node, s)) = self.entries.get(&key) {
                if s == seq {
                    self.entries.remove(&key);
                    out.push((key, node));
                }
            }
        }
    }
}

/// The `Origin` of a connection, for node frames.
pub fn origin_of(conn: ConnRef) -> Origin {
    Origin {
        node: conn.node,
        shard: conn.shard,
        slot: conn.slot,
        gen: conn.gen,
    }
}

/// The connection an `Origin` names, on node `node`.
pub fn conn_of(node: u16, o: &Origin) -> ConnRef {
    ConnRef {
        node,
        shard: o.shard,
        slot: o.slot,
        gen: o.gen,
    }
}

/// The request id of an encoded client frame (`len`, `type`, `request_id`, …): the 4 bytes
/// after the type. 0 (a push's) if the bytes are too short to hold one.
pub fn request_id_of(frame: &[u8]) -> u32 {
    match frame.get(5..9) {
        Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

/// The server's [`Inbound`]: serves what other nodes send. Runs on the link thread.
pub struct Forwarding {
    /// Set once the shards' shared state exists (the links start before it); what arrives
    /// before is dropped (logged), and its origin answers `UNAVAILABLE` at its deadline.
    core: Arc<OnceLock<Arc<Core>>>,
    /// Scratch: the connections of a push's recipients.
    refs: Vec<ConnRef>,
    /// Scratch: error answers encoded here.
    enc: BytesMut,
    warned: bool,
    /// Cross-node reads: `PEER_READ` parts to serve here, and the replies to our own.
    reads: Arc<ClusterReads>,
    /// Shards fed in this burst, woken once each at its end.
    wakes: Wakes,
    /// Where the burst counters go (the links' metrics), once known.
    metrics: Option<Arc<LinkMetrics>>,
}

impl Forwarding {
    pub fn new(core: Arc<OnceLock<Arc<Core>>>, reads: Arc<ClusterReads>) -> Forwarding {
        Forwarding {
            core,
            refs: Vec::new(),
            enc: BytesMut::new(),
            warned: false,
            reads,
            wakes: Wakes::default(),
            metrics: None,
        }
    }

    /// `shard`'s mailbox took a message: its wake waits for the end of the burst (or for
    /// `WAKE_EVERY` messages).
    fn queued(&mut self, core: &Core, shard: u16) {
        if self.wakes.queued(shard) {
            self.wake(core);
        }
    }

    /// Wakes every shard fed since the last wake, once each, and counts it
    /// (`courier_peer_inbound_queued_total`, `courier_peer_inbound_wakes_total`).
    fn wake(&mut self, core: &Core) {
        let burst = self.wakes.flush(&core.mailboxes);
        if burst.messages == 0 {
            return;
        }
        if self.metrics.is_none() {
            self.metrics = core.links.as_ref().map(|l| l.metrics());
        }
        if let Some(m) = &self.metrics {
            m.inbound_queued
                .fetch_add(burst.messages as u64, Ordering::Relaxed);
            m.inbound_wakes
                .fetch_add(burst.wakes as u64, Ordering::Relaxed);
        }
    }

    /// Counts (`courier_peer_inbound_dropped_total`) and logs, once, a payload from `from` that
    /// could not be handed on.
    fn drop_one(&mut self, core: Option<&Core>, from: NodeIndex, what: &str) {
        let links = core.and_then(|c| c.links.as_ref());
        if let Some(m) = links.and_then(|l| l.peer_metrics(from)) {
            m.inbound_dropped.fetch_add(1, Ordering::Relaxed);
        }
        if !self.warned {
            self.warned = true;
            tracing::warn!(
                "cluster: dropped {what} from another node (this node is starting, or its shards are overloaded); \
                 the origin answers UNAVAILABLE after 2 s, pushes are caught up by SYNC (logged once)"
            );
        }
    }

    /// Answers a forwarded request at once, over the links, without running it.
    fn refuse(&mut self, core: &Core, from: NodeIndex, f: &Forward, code: ErrorCode, why: &str) {
        if matches!(decode_one(f.frame.clone(), MAX_FRAME_LEN), Ok(e) if matches!(e.frame, Frame::Typing(_)))
        {
            return;
        }
        let message = format!("node {}: {why}", core.router.local());
        encode(
            f.request_id,
            &Frame::ErrorReply(ErrorReply {
                code: code as u16,
                message,
            }),
            &mut self.enc,
        );
        let frame = self.enc.split().freeze();
        if let Some(links) = &core.links {
            let reply = ForwardReply {
                origin: f.origin.clone(),
                frame,
            };
            let _ = links.send(from, f.lane, Payload::ForwardReply(reply));
        }
    }

    fn forward(&mut self, core: &Core, from: NodeIndex, mut f: Forward) {
        let env = match decode_one(f.frame.clone(), MAX_FRAME_LEN) {
            Ok(env) => env,
            Err(e) => {
                tracing::warn!(node = from.0, error = %e, "cluster: a forwarded request did not decode; answered MALFORMED");
                let why =
                    "the forwarded request did not decode: run the same release on every node";
                return self.refuse(core, from, &f, ErrorCode::Malformed, why);
            }
        };
        let caller = Caller {
            user: f.user,
            device: f.device,
            conn: conn_of(from.0, &f.origin),
            checked: f.checked,
        };
        if Engine::is_read(&env.frame) {
            let req = ReadRequest {
                caller,
                request_id: f.request_id,
                frame: env.frame,
            };
            return match core.reads.submit(req) {
                Ok(()) => {}
                Err(Refused::Full) => self.refuse(
                    core,
                    from,
                    &f,
                    ErrorCode::RateLimited,
                    "too many reads waiting; retry in a moment",
                ),
                Err(Refused::Stopped) => self.refuse(
                    core,
                    from,
                    &f,
                    ErrorCode::Unavailable,
                    "the node is shutting down; retry in a moment",
                ),
            };
        }
        let shards = core.mailboxes.len();
        let shard = match &env.frame {
            // Presence of users of this node, asked by the caller's home (which checked that
            // they are the caller's contacts): any shard answers.
            Frame::PresenceQuery(_) => Some((f.user % shards as u64) as u16),
            frame => Engine::shard_for(&core.chat, &caller, frame),
        };
        let Some(shard) = shard else {
            let why = "this request is not forwarded between nodes";
            return self.refuse(core, from, &f, ErrorCode::InvalidArgument, why);
        };
        // A shard index of the origin (a request that runs "where the caller is") is taken
        // modulo this node's shards: any shard may serve those.
        let shard = (shard as usize % shards) as u16;
        let mailbox = &core.mailboxes[shard as usize];
        let msg = ShardMsg::Forward {
            caller,
            request_id: f.request_id,
            frame: env.frame,
            lane: f.lane,
            handles: f.handles.0.take().unwrap_or_default(),
        };
        match mailbox.tx.try_send(msg) {
            Ok(()) => self.queued(core, shard),
            Err(TrySendError::Full(_)) => self.refuse(
                core,
                from,
                &f,
                ErrorCode::RateLimited,
                "too many requests waiting; retry in a moment",
            ),
            Err(TrySendError::Disconnected(_)) => self.refuse(
                core,
                from,
                &f,
                ErrorCode::Unavailable,
                "the node is shutting down; retry in a moment",
            ),
        }
    }

    fn answer(&mut self, core: &Core, from: NodeIndex, reply: ForwardReply) {
        let local = core.router.local_index();
        if reply.origin.node != local {
            return self.drop_one(Some(core), from, "an answer for another node");
        }
        let to = conn_of(local, &reply.origin);
        let Some(mailbox) = core.mailboxes.get(to.shard as usize) else {
            return self.drop_one(Some(core), from, "an answer for an unknown shard");
        };
        match mailbox.tx.try_send(ShardMsg::Answer {
            to,
            bytes: reply.frame,
        }) {
            Ok(()) => self.queued(core, to.shard),
            Err(_) => self.drop_one(Some(core), from, "an answer"),
        }
    }

    /// One push for the online devices of `users` here: grouped by shard, one message each.
    fn push(&mut self, core: &Core, from: NodeIndex, batch: PushBatch) {
        let mut refs = std::mem::take(&mut self.refs);
        refs.clear();
        for &user in &batch.users {
            core.directory.devices_into(user, &mut refs);
        }
        // `except` is the connection whose request caused the push (the sender's own), if
        // it is a connection of this node.
        let local = core.router.local_index();
        let except = batch.except.as_ref().filter(|e| e.node == local);
        if let Some(except) = except.map(|e| conn_of(local, e)) {
            refs.retain(|r| *r != except);
        }
        refs.sort_unstable_by_key(|r| (r.shard, r.slot, r.gen));
        refs.dedup();
        for group in refs.chunk_by(|a, b| a.shard == b.shard) {
            let Some(mailbox) = core.mailboxes.get(group[0].shard as usize) else {
                continue;
            };
            let msg = ShardMsg::Deliver {
                to: Recipients::of(group),
                bytes: batch.frame.clone(),
            };
            match mailbox.tx.try_send(msg) {
                Ok(()) => self.queued(core, group[0].shard),
                Err(_) => self.drop_one(Some(core), from, "a push"),
            }
        }
        self.refs = refs;
        if let Some(users) = batch.notify.0.as_deref().filter(|u| !u.is_empty()) {
            self.notify(core, users, &batch.frame);
        }
    }

    /// `PUSH_BATCH.notify`: users of this node who did not mute the thread of the message
    /// `frame` pushes (the owner checked). Those with no device online and a registration get
    /// a push notification, staged in one unsynced write here (see `push::Gate::stage_home`:
    /// a small write on the link thread, never a wait on a disk sync or on another node).
    fn notify(&mut self, core: &Core, users: &[u64], frame: &Bytes) {
        let Some(gate) = core.chat.push() else {
            return;
        };
        let push = match decode_one(frame.clone(), MAX_FRAME_LEN) {
            Ok(env) => match env.frame {
                Frame::MessagePush(p) => p,
                other => {
                    tracing::warn!(frame = other.name(), "cluster: a PUSH_BATCH asked for notifications of a push that is not a message; ignored");
                    return;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cluster: a PUSH_BATCH asking for notifications did not decode; ignored");
                return;
            }
        };
        let m = push.message;
        let event = OutboxOp::Event {
            thread: m.thread,
            message: m.id,
            sender: m.sender,
            kind: m.kind,
            at: wall_us(),
        };
        if let Err(e) = gate.stage_home(users, &event) {
            tracing::error!(error = %e, thread = m.thread, message = m.id, "push: could not queue notifications for a message of another node; they are lost (the message is not)");
        }
    }
}

impl Inbound for Forwarding {
    fn deliver(&mut self, from: NodeIndex, payload: Payload) {
        // Cross-node reads have their own workers and need no shard.
        let payload = match payload {
            Payload::PeerRead(read) => return self.reads.accept(from, read),
            Payload::PeerReadReply(reply) => return self.reads.reply(reply),
            other => other,
        };
        let Some(core) = self.core.get().cloned() else {
            return self.drop_one(None, from, "a payload");
        };
        match payload {
            Payload::Forward(f) => self.forward(&core, from, f),
            Payload::ForwardReply(r) => self.answer(&core, from, r),
            Payload::PushBatch(b) => self.push(&core, from, b),
            Payload::PeerRead(_) | Payload::PeerReadReply(_) => {}
            p @ (Payload::PresenceWatch(_)
            | Payload::PresenceUnwatch(_)
            | Payload::PresenceChanges(_)) => {
                if !super::presence::inbound(&core, from, p) {
                    self.drop_one(Some(&core), from, "presence");
                }
            }
        }
    }

    fn dialed_up(&mut self, peer: NodeIndex, link: usize) {
        let Some(core) = self.core.get().cloned() else {
            return;
        };
        if !super::presence::dialed_up(&core, peer, link) {
            self.drop_one(Some(&core), peer, "presence states");
        }
    }

    fn accepted_gone(&mut self, peer: NodeIndex) {
        if let Some(core) = self.core.get() {
            core.cluster_presence.peer_gone(core.links.as_ref(), peer.0);
        }
    }

    fn flush(&mut self) {
        let core = self.core.clone();
        if let Some(core) = core.get() {
            self.wake(core);
        }
    }
}

/// The encoded `FORWARD_REPLY` payload for `to` (a connection of another node).
pub fn reply_to(to: ConnRef, frame: Bytes) -> Payload {
    Payload::ForwardReply(ForwardReply {
        origin: origin_of(to),
        frame,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(request_id: u32) -> Key {
        Key {
            slot: 1,
            gen: 1,
            request_id,
        }
    }

    #[test]
    fn an_entry_expires_at_its_deadline_unless_answered() {
        let mut p = Pending::new(8, Duration::from_millis(2000));
        assert!(p.insert(key(1), 2, 0));
        assert!(p.insert(key(2), 1, 500));
        assert_eq!(p.next_deadline(), Some(2000));
        let mut out = Vec::new();
        p.expire(1999, &mut out);
        assert!(out.is_empty());
        assert_eq!(p.remove(key(2)), Some(1), "answered in time");
        p.expire(2000, &mut out);
        assert_eq!(out, vec![(key(1), 2)]);
        p.expire(10_000, &mut out);
        assert_eq!(out.len(), 1, "the answered one never times out");
        assert_eq!(p.remove(key(1)), None, "a late answer finds nothing");
        assert!(p.is_empty());
    }

    #[test]
    fn the_table_refuses_at_its_cap_and_its_queue_stays_bounded() {
        let mut p = Pending::new(4, Duration::from_millis(2000));
        for id in 0..4 {
            assert!(p.insert(key(id), 0, 0));
        }
        assert!(!p.insert(key(9), 0, 0), "at the cap");
        assert!(
            p.insert(key(3), 0, 1),
            "a key in flight is renewed, not refused"
        );
        // Answer-and-ask forever: the queue of deadlines is compacted, never unbounded.
        for n in 0..1000 {
            assert_eq!(p.remove(key(0)), Some(0));
            assert!(p.insert(key(0), 0, n));
            assert!(p.deadlines.len() <= 2 * 4 + 1, "{}", p.deadlines.len());
        }
        // The renewed key times out at its new deadline, once.
        let mut out = Vec::new();
        p.expire(2000, &mut out);
        assert_eq!(out, vec![(key(1), 0), (key(2), 0)]);
        p.expire(2001, &mut out);
        assert_eq!(out[2], (key(3), 0));
    }

    #[test]
    fn the_request_id_is_read_from_the_encoded_frame() {
        let mut buf = BytesMut::new();
        encode(
            0xdead_beef,
            &Frame::Ping(courier_protocol::Ping { nonce: 1 }),
            &mut buf,
        );
        assert_eq!(request_id_of(&buf), 0xdead_beef);
        assert_eq!(request_id_of(&buf[..6]), 0);
    }
}
