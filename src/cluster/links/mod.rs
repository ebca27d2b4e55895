//! Node-to-node links: persistent TCP connections from this node to every other node of the
//! cluster, which a shard can use without ever blocking.
//!
//! One **link thread** per node (its own mio `Poll`, [`thread`]) owns every link socket and
//! the cluster listener. Shards talk to it only through [`Links`]:
//!
//! ```text
//!  shard ── Links::send(peer, lane, payload) ──► per-link queue ──┐   (bytes counted against
//!        ◄─ Ok / Err(Down) / Err(Full) at once                   │    --peer-queue-bytes)
//!                                                 Waker (once) ──┤
//!                                                                ▼
//!                link thread: dial, handshake, heartbeat, write ──TCP──► peer's link thread
//!                                      accepted links ◄──TCP── peers ──► Inbound::deliver
//! ```
//!
//! **Pools and lanes.** This node dials `--peer-links` links to every peer and sends only on
//! those; the links the peers dial carry their payloads to us (PROTOCOL.md section 13). A
//! payload's *lane* (the thread id for a thread's traffic) picks the link, always the same one
//! for a lane, so **the payloads of one lane that arrive, arrive in the order they were sent.**
//! Delivery is at most once: a payload still queued when its link fails is dropped (counted in
//! `courier_peer_dropped_total`), never resent on the next link; the sender has already been
//! told nothing, so callers that wait for an answer bound the wait themselves.
//!
//! **Bounds.** `send` refuses with [`LinkError::Full`] once a peer's queued payload bytes would
//! pass `--peer-queue-bytes` (or a link's queue holds [`LINK_QUEUE_SLOTS`] payloads), and with
//! [`LinkError::Down`] while the lane's link is not up (handshake not done, or failed): it
//! never waits. The link thread moves at most [`OUT_HIGH`](thread::OUT_HIGH) bytes per link
//! into a link's output buffer, so memory per peer is bounded by the queue bound plus that per
//! link. Queues are arrays allocated once, so queueing allocates nothing. Accepted links are
//! capped too.
//!
//! **Encryption.** Unless the node runs with `--insecure-plaintext` ([`LinkConfig::noise`] is
//! `None`), every link starts with a Noise IK handshake (NOISE.md section 6) before
//! `PEER_HELLO`: the dialer pins the key the member list gives for the peer, so it only ever
//! links to the holder of that key; the acceptor reads the dialer's static key from the
//! handshake and refuses (`PEER_REFUSE` reason KEY, sent encrypted) a `PEER_HELLO` whose node
//! is listed with another key. After the handshake every node frame travels in the client
//! transport's records (`courier_protocol::noise::Transport`, one record per flush).
//!
//! **Failure detection.** The dialer pings every 500 ms; a link with nothing received for
//! 1.5 s is closed, so `is_up` turns false and `send` answers `Down` within 2 s of a peer
//! dying even without a FIN or RST. Dials back off exponentially with jitter (100 ms doubling
//! to 5 s).

pub mod membership;
#[cfg(test)]
mod tests;
mod thread;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use courier_protocol::noise::Keypair;
use courier_protocol::peer::{
    Forward, ForwardReply, PeerFrame, PeerRead, PeerReadReply, PresenceChanges, PresenceUnwatch,
    PresenceWatch, PushBatch, PEER_MAX_FRAME_LEN,
};
use crossbeam_channel::{Receiver, Sender};
use mio::{Poll, Waker};

use crate::metrics::{LinkMetrics, PeerMetrics};
pub use membership::{Membership, MembershipError, Node, NodeIndex};

/// Why `send` did not take a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The link this lane uses is not up: the peer is down, or not linked yet. Answer the
    /// client `UNAVAILABLE`.
    #[error("the link to that node is down; retry later")]
    Down,
    /// The peer's queue is at `--peer-queue-bytes`: it is not reading fast enough. Answer the
    /// client `RATE_LIMITED` or `UNAVAILABLE`.
    #[error("the queue to that node is full; retry in a moment")]
    Full,
}

/// What a shard sends to another node, and what arrives from one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Forward(Forward),
    ForwardReply(ForwardReply),
    PushBatch(PushBatch),
    PeerRead(PeerRead),
    PeerReadReply(PeerReadReply),
    PresenceWatch(PresenceWatch),
    PresenceUnwatch(PresenceUnwatch),
    PresenceChanges(PresenceChanges),
}

impl Payload {
    fn into_frame(self) -> PeerFrame {
        match self {
            Payload::Forward(f) => f.into(),
            Payload::ForwardReply(f) => f.into(),
            Payload::PushBatch(f) => f.into(),
            Payload::PeerRead(f) => f.into(),
            Payload::PeerReadReply(f) => f.into(),
            Payload::PresenceWatch(f) => f.into(),
            Payload::PresenceUnwatch(f) => f.into(),
            Payload::PresenceChanges(f) => f.into(),
        }
    }

    fn from_frame(frame: PeerFrame) -> Option<Payload> {
        match frame {
            PeerFrame::Forward(f) => Some(Payload::Forward(f)),
            PeerFrame::ForwardReply(f) => Some(Payload::ForwardReply(f)),
            PeerFrame::PushBatch(f) => Some(Payload::PushBatch(f)),
            PeerFrame::PeerRead(f) => Some(Payload::PeerRead(f)),
            PeerFrame::PeerReadReply(f) => Some(Payload::PeerReadReply(f)),
            PeerFrame::PresenceWatch(f) => Some(Payload::PresenceWatch(f)),
            PeerFrame::PresenceUnwatch(f) => Some(Payload::PresenceUnwatch(f)),
            PeerFrame::PresenceChanges(f) => Some(Payload::PresenceChanges(f)),
            _ => None,
        }
    }
}

/// Where payloads from other nodes go. Called on the link thread, in arrival order per link:
/// it must not block (hand the payload to a shard's mailbox, or to a channel in tests).
pub trait Inbound: Send + 'static {
    fn deliver(&mut self, from: NodeIndex, payload: Payload);

    /// Link `link` of the pool this node dialed to `peer` is up (payloads on its lanes may be
    /// sent again). Called on the link thread, after `send` takes them.
    fn dialed_up(&mut self, _peer: NodeIndex, _link: usize) {}

    /// The last link `peer` dialed to this node closed: nothing more arrives from it until it
    /// links again.
    fn accepted_gone(&mut self, _peer: NodeIndex) {}

    /// The end of a burst of deliveries: the link thread calls it once per round of its loop,
    /// after handing on everything its reads brought. An implementation that queues for
    /// threads to wake wakes them here, once each, instead of once per payload.
    fn flush(&mut self) {}
}

/// Tests (and anything that drains a channel) receive payloads as `(from, payload)`.
impl Inbound for Sender<(NodeIndex, Payload)> {
    fn deliver(&mut self, from: NodeIndex, payload: Payload) {
        // An unbounded channel never blocks; a closed one means nobody listens any more.
        let _ = self.send((from, payload));
    }
}

/// Timings and bounds of the links.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Links dialed to every peer (`--peer-links`).
    pub pool: usize,
    /// Payload bytes queued per peer before `send` answers `Full` (`--peer-queue-bytes`).
    pub queue_bytes: u64,
    /// How often the dialer pings.
    pub ping_every: Duration,
    /// A link with nothing received for this long is down (also the dial and handshake limit).
    pub silence: Duration,
    /// The first redial waits about this long; each failure doubles it up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// This node's static key: links run Noise IK under the node frames, the dialer pinning
    /// the peer's key from the member list, the acceptor checking the dialer's key against the
    /// entry of the node its `PEER_HELLO` names. `None`: plain TCP (`--insecure-plaintext`).
    pub noise: Option<Keypair>,
}

impl Default for LinkConfig {
    fn default() -> Self {
        LinkConfig {
            pool: 2,
            queue_bytes: 64 << 20,
            ping_every: Duration::from_millis(500),
            silence: Duration::from_millis(1500),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            noise: None,
        }
    }
}

/// Payloads one link's queue holds at most, whatever their size. The queue is an array
/// allocated once (about 1.5 MiB per link), so queueing a payload never allocates.
pub const LINK_QUEUE_SLOTS: usize = 16 * 1024;

/// The smallest `queue_bytes`: one largest node frame must fit.
pub const MIN_QUEUE_BYTES: u64 = PEER_MAX_FRAME_LEN as u64;

/// One dialed link's queue, shared by the senders and the link thread.
struct LinkQueue {
    /// Set by the link thread once the handshake is done, cleared when the link fails.
    up: AtomicBool,
    tx: Sender<PeerFrame>,
    rx: Receiver<PeerFrame>,
}

/// What the shards and the link thread share about one peer.
struct Peer {
    index: NodeIndex,
    links: Box<[LinkQueue]>,
    links_up: AtomicU64,
}

/// State shared by [`Links`] handles and the link thread.
struct Shared {
    membership: Membership,
    local: NodeIndex,
    config: LinkConfig,
    /// By node index; `None` for this node.
    peers: Box<[Option<Peer>]>,
    metrics: Arc<LinkMetrics>,
    waker: Waker,
    /// Set by a sender that woke the thread, cleared by the thread before it drains queues:
    /// the thread is woken once per batch of sends, not once per send.
    wake_pending: AtomicBool,
    stop: AtomicBool,
}

impl Shared {
    fn peer(&self, node: NodeIndex) -> Option<&Peer> {
        self.peers.get(node.0 as usize)?.as_ref()
    }

    /// Marks every link down and drops what is queued: the link thread is gone.
    fn cut_off(&self) {
        for p in self.peers.iter().flatten() {
            for index in 0..p.links.len() {
                p.links[index].up.store(false, Ordering::Release);
                thread::drop_queued(self, p.index, index);
            }
            p.links_up.store(0, Ordering::Release);
            let m = self.peer_metrics(p.index);
            m.up.store(0, Ordering::Relaxed);
            m.links_up.store(0, Ordering::Relaxed);
        }
    }

    /// The metrics of `node`, which is a peer (metrics are in member-list order, without us).
    fn peer_metrics(&self, node: NodeIndex) -> &PeerMetrics {
        let i = node.0 as usize - usize::from(node > self.local);
        &self.metrics.peers[i].1
    }
}

/// The shards' handle on the links: cheap to clone, every method non-blocking.
#[derive(Clone)]
pub struct Links {
    shared: Arc<Shared>,
}

/// The running link thread; [`LinkThread::stop`] closes every link and joins it.
pub struct LinkThread {
    shared: Arc<Shared>,
    handle: Option<JoinHandle<()>>,
}

impl Links {
    /// Starts the link thread for node `local` of `membership`, accepting peers' links on
    /// `listener` (already bound, so the caller knows its address). Payloads from peers go to
    /// `inbound`. Returns the handle for senders and the thread.
    pub fn spawn(
        membership: Membership,
        local: &str,
        listener: std::net::TcpListener,
        config: LinkConfig,
        inbound: Box<dyn Inbound>,
    ) -> std::io::Result<(Links, LinkThread)> {
        let local = membership.index_of(local).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("node `{local}` is not in the member list"),
            )
        })?;
        let metrics = Arc::new(LinkMetrics::new(
            membership
                .nodes()
                .iter()
                .filter(|n| membership.index_of(&n.id) != Some(local))
                .map(|n| n.id.as_str()),
        ));
        let pool = config.pool.max(1);
        let peers = (0..membership.nodes().len())
            .map(|i| {
                let index = NodeIndex(i as u16);
                (index != local).then(|| Peer {
                    index,
                    links: (0..pool)
                        .map(|_| {
                            let (tx, rx) = crossbeam_channel::bounded(LINK_QUEUE_SLOTS);
                            LinkQueue {
                                up: AtomicBool::new(false),
                                tx,
                                rx,
                            }
                        })
                        .collect(),
                    links_up: AtomicU64::new(0),
                })
            })
            .collect();
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), thread::WAKER)?;
        let shared = Arc::new(Shared {
            membership,
            local,
            config: LinkConfig { pool, ..config },
            peers,
            metrics,
            waker,
            wake_pending: AtomicBool::new(false),
            stop: AtomicBool::new(false),
        });
        listener.set_nonblocking(true)?;
        let listener = mio::net::TcpListener::from_std(listener);
        let looped = thread::LinkLoop::new(shared.clone(), poll, listener, inbound)?;
        let on_panic = shared.clone();
        let handle = std::thread::Builder::new()
            .name("links".into())
            .spawn(move || {
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                    looped.run()
                }));
                if let Err(panic) = ran {
                    // Its sockets closed as it unwound, so the peers see this node down;
                    // senders here must see them down too, not queue into a dead thread.
                    tracing::error!(
                        "cluster links stopped: the link thread panicked: {}; this node is cut off from the other nodes until it is restarted",
                        crate::shard::panic_message(&*panic)
                    );
                    on_panic.cut_off();
                }
            })?;
        Ok((
            Links {
                shared: shared.clone(),
            },
            LinkThread {
                shared,
                handle: Some(handle),
            },
        ))
    }

    /// Queues `payload` for `peer` on the link `lane` picks, and wakes the link thread. Never
    /// blocks: `Down` if that link is not up, `Full` if the peer's queue is at its bound in
    /// bytes, or the link's queue holds [`LINK_QUEUE_SLOTS`] payloads.
    pub fn send(&self, peer: NodeIndex, lane: u64, payload: Payload) -> Result<(), LinkError> {
        let s = &*self.shared;
        let Some(p) = s.peer(peer) else {
            return Err(LinkError::Down);
        };
        let link = &p.links[lane_link(lane, p.links.len())];
        if !link.up.load(Ordering::Acquire) {
            return Err(LinkError::Down);
        }
        let frame = payload.into_frame();
        let n = frame.encoded_len() as u64;
        let m = s.peer_metrics(peer);
        let before = m.queued_bytes.fetch_add(n, Ordering::AcqRel);
        if before + n > s.config.queue_bytes {
            m.queued_bytes.fetch_sub(n, Ordering::AcqRel);
            m.full.fetch_add(1, Ordering::Relaxed);
            return Err(LinkError::Full);
        }
        // The receiver lives in `Shared` as long as we do, so this fails only when every slot
        // is taken (many small payloads): the same answer as too many bytes.
        if link.tx.try_send(frame).is_err() {
            m.queued_bytes.fetch_sub(n, Ordering::AcqRel);
            m.full.fetch_add(1, Ordering::Relaxed);
            return Err(LinkError::Full);
        }
        if !s.wake_pending.swap(true, Ordering::SeqCst) {
            let _ = s.waker.wake();
        }
        Ok(())
    }

    /// The link of `peer`'s pool that carries `lane` (`None` for this node or an unknown one).
    pub fn link_of(&self, peer: NodeIndex, lane: u64) -> Option<usize> {
        let p = self.shared.peer(peer)?;
        Some(lane_link(lane, p.links.len()))
    }

    /// Whether every link of the pool to `peer` is up (so `send` takes any lane).
    pub fn is_up(&self, peer: NodeIndex) -> bool {
        self.shared
            .peer(peer)
            .is_some_and(|p| p.links_up.load(Ordering::Acquire) == p.links.len() as u64)
    }

    pub fn membership(&self) -> &Membership {
        &self.shared.membership
    }

    /// This node's index in the member list.
    pub fn local(&self) -> NodeIndex {
        self.shared.local
    }

    /// The counters of `peer` (`None` for this node or an unknown index).
    pub fn peer_metrics(&self, peer: NodeIndex) -> Option<&PeerMetrics> {
        self.shared.peer(peer)?;
        Some(self.shared.peer_metrics(peer))
    }

    /// The counters, for `/metrics`.
    pub fn metrics(&self) -> Arc<LinkMetrics> {
        self.shared.metrics.clone()
    }
}

impl LinkThread {
    /// Closes every link and the listener, and waits for the thread to end.
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = self.shared.waker.wake();
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

impl Drop for LinkThread {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// The link of a pool of `pool` that carries `lane`: a pure function, so a lane is always on
/// the same link (Fibonacci hashing spreads sequential ids evenly).
fn lane_link(lane: u64, pool: usize) -> usize {
    ((lane.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % pool as u64) as usize
}

/// Where a node's links listen by default: its own entry in the member list.
pub fn cluster_addr(membership: &Membership, local: &str) -> Option<SocketAddr> {
    let index = membership.index_of(local)?;
    membership.node(index).map(|n| n.cluster_addr)
}
