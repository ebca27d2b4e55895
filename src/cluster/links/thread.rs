//! The link thread: one mio loop that dials, accepts, handshakes, pings and writes every link.
//!
//! Edge-triggered like the shards: reads and accepts are drained until `WouldBlock`. Each pass
//! of the loop handles socket events, moves queued payloads into the output buffers of links
//! that are up (at most [`OUT_HIGH`] bytes each), runs the timers (dials that are due, pings,
//! silence and handshake limits) and writes what it can, asking for WRITABLE only where bytes
//! remain. Handlers never close a socket themselves: they mark the link and the loop closes it.
//!
//! On an encrypted node a link's bytes pass through [`Crypto`]: the Noise handshake first (its
//! messages go straight to `out`), then records. Frames are decoded from the opened plaintext
//! (`plain_in`) and encoded into `plain_out`, which is sealed into `out` as one record (or a few,
//! for more than 64 KiB) at each flush. Plain links decode `input` and encode into `out`.

use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use courier_protocol::noise::{self, Established, Handshake, PublicKey, Transport, MAX_RECORD_LEN};
use courier_protocol::peer::{
    decode_peer, encode_peer, PeerFrame, PeerHello, PeerPing, PeerPong, PeerRefuse, PeerWelcome,
    RefuseReason, PEER_VERSION,
};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use rand::Rng;
use slab::Slab;

use super::{Inbound, NodeIndex, Payload, Shared};
use crate::metrics::{PeerMetrics, REFUSAL_REASONS};

pub(super) const WAKER: Token = Token(0);
const LISTENER: Token = Token(1);
/// Link sockets use their slab key plus this.
const FIRST_LINK: usize = 2;

/// Payload bytes moved from a link's queue into its output buffer at most: the rest waits in
/// the queue, where it counts against `--peer-queue-bytes`.
pub(super) const OUT_HIGH: usize = 256 * 1024;
/// Bytes read per `read` call.
const SCRATCH: usize = 64 * 1024;
/// Longest poll wait, so timers are checked at least this often.
const TICK: Duration = Duration::from_millis(50);
/// How long a refused dialer has to read `PEER_REFUSE` before the socket is closed.
const REFUSE_LINGER: Duration = Duration::from_millis(500);
/// A refused node redials every few seconds; its refusal is logged at most this often.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);
/// Index of `wrong_node` in [`REFUSAL_REASONS`].
const WRONG_NODE: usize = 5;
/// Index of `key` in [`REFUSAL_REASONS`] (a Noise handshake failed on a key, or `PEER_REFUSE`
/// reason KEY).
const KEY: usize = RefuseReason::Key as usize - 1;
/// Index of `protocol` in [`REFUSAL_REASONS`].
const PROTOCOL: usize = RefuseReason::Protocol as usize - 1;

/// A link's encryption.
enum Crypto {
    /// `--insecure-plaintext`: frames straight on the socket.
    Plain,
    /// The Noise handshake is running.
    Handshake(Box<Handshake>),
    /// Established: records.
    Transport(Transport),
}

/// Which end of a link this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// We dialed it: link `link` of our pool to `peer`.
    Dialed { peer: NodeIndex, link: usize },
    /// A peer dialed us; `peer` is known once its `PEER_HELLO` was accepted.
    Accepted { peer: Option<NodeIndex> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Dialed, TCP not connected yet.
    Connecting,
    /// The Noise handshake is running (either role; encrypted nodes only).
    Noise,
    /// Dialed, `PEER_HELLO` sent.
    AwaitWelcome,
    /// Accepted, waiting for `PEER_HELLO`.
    AwaitHello,
    /// Handshake done.
    Up,
    /// Accepted and refused: flushing `PEER_REFUSE`, then closed.
    Refusing,
}

struct Link {
    stream: TcpStream,
    role: Role,
    state: State,
    input: BytesMut,
    out: BytesMut,
    /// When the current state began (dial and handshake limits).
    since: Instant,
    last_heard: Instant,
    last_ping: Instant,
    next_nonce: u64,
    writable: bool,
    /// Set by handlers; the loop closes the link after its writes.
    close: Option<String>,
    crypto: Crypto,
    /// Opened record plaintext not yet decoded (encrypted links only).
    plain_in: BytesMut,
    /// Encoded frames not yet sealed (encrypted links only).
    plain_out: BytesMut,
    /// On an accepted encrypted link: the static key the dialer proved in the handshake.
    remote_key: Option<PublicKey>,
}

impl Link {
    /// Where frames to send are encoded: sealed at the flush on encrypted links.
    fn frames_out(&mut self) -> &mut BytesMut {
        match self.crypto {
            Crypto::Plain => &mut self.out,
            _ => &mut self.plain_out,
        }
    }

    /// Where received frames are decoded from.
    fn frames_in(&mut self) -> &mut BytesMut {
        match self.crypto {
            Crypto::Plain => &mut self.input,
            _ => &mut self.plain_in,
        }
    }

    /// Bytes waiting to be written, sealed or not.
    fn pending_out(&self) -> usize {
        self.out.len() + self.plain_out.len()
    }

    /// Seals the frames encoded since the last flush into `out`.
    fn seal(&mut self) {
        let Crypto::Transport(transport) = &mut self.crypto else {
            return;
        };
        if self.plain_out.is_empty() {
            return;
        }
        if let Err(e) = transport.seal(&self.plain_out, &mut self.out) {
            self.close
                .get_or_insert_with(|| format!("cannot seal: {e}"));
        }
        self.plain_out.clear();
    }
}

/// One link of our pool to one peer, and when to dial it next.
struct DialSlot {
    peer: NodeIndex,
    link: usize,
    /// The slab key of its socket while one exists.
    conn: Option<usize>,
    /// Failures since it was last up: the backoff exponent.
    failures: u32,
    next_dial: Instant,
    /// Dialed at least once (later dials count as reconnects).
    dialed: bool,
    /// The failure last logged in the current run of failures: a failure is logged when it
    /// differs from the one before, not on every redial.
    logged: Option<String>,
}

pub(super) struct LinkLoop {
    shared: Arc<Shared>,
    poll: Poll,
    listener: TcpListener,
    inbound: Box<dyn Inbound>,
    links: Slab<Link>,
    slots: Vec<DialSlot>,
    /// Accepted links at most; more are closed at once.
    max_accepted: usize,
    accepted: usize,
    scratch: Box<[u8]>,
    /// When a refusal of each node's dials (by node index; the last entry for unknown ids) was
    /// last logged: at most one line per [`REFUSAL_LOG_EVERY`], however often it redials.
    refusal_logged: Vec<Option<Instant>>,
}

impl LinkLoop {
    pub(super) fn new(
        shared: Arc<Shared>,
        poll: Poll,
        mut listener: TcpListener,
        inbound: Box<dyn Inbound>,
    ) -> std::io::Result<LinkLoop> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let now = Instant::now();
        let mut slots = Vec::new();
        for peer in shared.peers.iter().flatten() {
            for link in 0..peer.links.len() {
                slots.push(DialSlot {
                    peer: peer.index,
                    link,
                    conn: None,
                    failures: 0,
                    next_dial: now,
                    dialed: false,
                    logged: None,
                });
            }
        }
        // Every peer's pool, twice over (a restarted peer's old links linger until silent),
        // plus a few dialers still in their handshake.
        let max_accepted = slots.len() * 2 + 16;
        let refusal_logged = vec![None; shared.membership.nodes().len() + 1];
        Ok(LinkLoop {
            shared,
            poll,
            listener,
            inbound,
            links: Slab::new(),
            slots,
            max_accepted,
            accepted: 0,
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            refusal_logged,
        })
    }

    pub(super) fn run(mut self) {
        let mut events = Events::with_capacity(256);
        while !self.shared.stop.load(Ordering::SeqCst) {
            let timeout = if self.has_queued() {
                Duration::ZERO
            } else {
                TICK
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "cluster links: poll failed; links stop");
                break;
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    LISTENER => self.accept(),
                    Token(t) => {
                        let key = t - FIRST_LINK;
                        if event.is_writable() || event.is_error() || event.is_write_closed() {
                            self.on_writable(key);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(key);
                        }
                    }
                }
            }
            // Whatever the reads of this round handed on: wake its shards, once each.
            self.inbound.flush();
            self.shared.wake_pending.store(false, Ordering::SeqCst);
            let now = Instant::now();
            self.timers(now);
            self.fill_outputs();
            self.flush_and_close(now);
        }
        // Stopping: every socket closes with the loop; peers see the links end at once.
        let keys: Vec<usize> = self.links.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.close(key, None, Instant::now());
        }
    }

    /// Whether an up link has payloads waiting and room in its output buffer.
    fn has_queued(&self) -> bool {
        self.slots.iter().any(|slot| {
            slot.conn
                .and_then(|k| self.links.get(k))
                .is_some_and(|l| l.state == State::Up && l.pending_out() < OUT_HIGH)
                && self
                    .shared
                    .peer(slot.peer)
                    .is_some_and(|p| !p.links[slot.link].rx.is_empty())
        })
    }

    fn metrics(&self, peer: NodeIndex) -> &PeerMetrics {
        self.shared.peer_metrics(peer)
    }

    fn node_id(&self, peer: NodeIndex) -> &str {
        self.shared
            .membership
            .node(peer)
            .map_or("?", |n| n.id.as_str())
    }

    fn insert(
        &mut self,
        stream: TcpStream,
        role: Role,
        state: State,
        crypto: Crypto,
        now: Instant,
    ) -> Option<usize> {
        let entry = self.links.vacant_entry();
        let key = entry.key();
        let mut link = Link {
            stream,
            role,
            state,
            input: BytesMut::new(),
            out: BytesMut::new(),
            since: now,
            last_heard: now,
            last_ping: now,
            next_nonce: 1,
            writable: state == State::Connecting,
            close: None,
            crypto,
            plain_in: BytesMut::new(),
            plain_out: BytesMut::new(),
            remote_key: None,
        };
        let interest = if link.writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut link.stream, Token(key + FIRST_LINK), interest)
        {
            tracing::warn!(error = %e, "cluster links: cannot register a socket");
            return None;
        }
        entry.insert(link);
        Some(key)
    }

    fn accept(&mut self) {
        loop {
            let (stream, addr) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster links: accept failed");
                    return;
                }
            };
            if self.accepted >= self.max_accepted {
                tracing::warn!(%addr, "cluster links: too many inbound links; closing this one");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let (state, crypto) = match &self.shared.config.noise {
                Some(local) => (
                    State::Noise,
                    Crypto::Handshake(Box::new(Handshake::responder(local))),
                ),
                None => (State::AwaitHello, Crypto::Plain),
            };
            if self
                .insert(
                    stream,
                    Role::Accepted { peer: None },
                    state,
                    crypto,
                    Instant::now(),
                )
                .is_some()
            {
                self.accepted += 1;
            }
        }
    }

    fn dial(&mut self, slot: usize, now: Instant) {
        let (peer, link) = (self.slots[slot].peer, self.slots[slot].link);
        let Some(addr) = self.shared.membership.node(peer).map(|n| n.cluster_addr) else {
            return;
        };
        if self.slots[slot].dialed {
            bump(&self.metrics(peer).reconnects);
        }
        self.slots[slot].dialed = true;
        match TcpStream::connect(addr) {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                self.slots[slot].conn = self.insert(
                    stream,
                    Role::Dialed { peer, link },
                    State::Connecting,
                    Crypto::Plain,
                    now,
                );
                if self.slots[slot].conn.is_none() {
                    self.dial_failed(slot, "cannot register the socket", now);
                }
            }
            Err(e) => self.dial_failed(slot, &e.to_string(), now),
        }
    }

    /// Schedules the next dial of `slot` after a backoff with jitter, and logs the first
    /// failure of a run.
    fn dial_failed(&mut self, slot: usize, why: &str, now: Instant) {
        let config = &self.shared.config;
        let s = &mut self.slots[slot];
        s.conn = None;
        let doubled = config
            .backoff_min
            .saturating_mul(1u32 << s.failures.min(16))
            .min(config.backoff_max);
        s.failures = s.failures.saturating_add(1);
        // Between half and all of the backoff, so nodes that failed together do not redial
        // together.
        let wait = doubled.mul_f64(rand::rng().random_range(0.5..=1.0));
        s.next_dial = now + wait;
        let (peer, link) = (s.peer, s.link);
        let first = s.logged.as_deref() != Some(why);
        if first {
            s.logged = Some(why.to_owned());
        }
        let id = self.node_id(peer).to_owned();
        if first {
            tracing::warn!(peer = %id, link, "cluster link to {id} is down: {why}; redialing with backoff");
        } else {
            tracing::debug!(peer = %id, link, ?wait, "cluster link to {id}: {why}");
        }
    }

    fn timers(&mut self, now: Instant) {
        for slot in 0..self.slots.len() {
            if self.slots[slot].conn.is_none() && self.slots[slot].next_dial <= now {
                self.dial(slot, now);
            }
        }
        let config = self.shared.config.clone();
        for (_, link) in self.links.iter_mut() {
            if link.close.is_some() {
                continue;
            }
            match link.state {
                State::Connecting | State::Noise | State::AwaitWelcome | State::AwaitHello
                    if now.duration_since(link.since) > config.silence =>
                {
                    link.close = Some(format!("no handshake within {:?}", config.silence));
                }
                State::Refusing if now.duration_since(link.since) > REFUSE_LINGER => {
                    link.close = Some("refused".into());
                }
                State::Up if now.duration_since(link.last_heard) > config.silence => {
                    link.close = Some(format!("silent for {:?}", config.silence));
                }
                State::Up
                    if matches!(link.role, Role::Dialed { .. })
                        && now.duration_since(link.last_ping) >= config.ping_every =>
                {
                    link.last_ping = now;
                    let nonce = link.next_nonce;
                    link.next_nonce += 1;
                    put(&self.shared, link, &PeerPing { nonce }.into());
                }
                _ => {}
            }
        }
    }

    /// Moves queued payloads into the output buffers of dialed links that are up.
    fn fill_outputs(&mut self) {
        for slot in &self.slots {
            let Some(link) = slot.conn.and_then(|k| self.links.get_mut(k)) else {
                continue;
            };
            if link.state != State::Up || link.close.is_some() {
                continue;
            }
            let Some(peer) = self.shared.peer(slot.peer) else {
                continue;
            };
            let queue = &peer.links[slot.link];
            let m = self.shared.peer_metrics(slot.peer);
            let mut moved = 0u64;
            while link.pending_out() < OUT_HIGH {
                let Ok(frame) = queue.rx.try_recv() else {
                    break;
                };
                moved += frame.encoded_len() as u64;
                encode_peer(&frame, link.frames_out());
                bump(&m.frames_out);
            }
            m.queued_bytes.fetch_sub(moved, Ordering::AcqRel);
        }
    }

    fn on_writable(&mut self, key: usize) {
        let Some(link) = self.links.get_mut(key) else {
            return;
        };
        if link.state != State::Connecting {
            return;
        }
        if let Ok(Some(e)) | Err(e) = link.stream.take_error() {
            link.close = Some(format!("cannot connect: {e}"));
            return;
        }
        match link.stream.peer_addr() {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::NotConnected => return,
            Err(e) => {
                link.close = Some(format!("cannot connect: {e}"));
                return;
            }
        }
        link.since = Instant::now();
        let Some(local) = &self.shared.config.noise else {
            put(&self.shared, link, &hello(&self.shared));
            link.state = State::AwaitWelcome;
            return;
        };
        let Role::Dialed { peer, .. } = link.role else {
            return;
        };
        // `Config::check` refuses an encrypted cluster with a keyless entry.
        let Some(pinned) = self.shared.membership.node(peer).and_then(|n| n.key) else {
            link.close = Some("the member list has no key for this node; give it as ID=CLIENT_ADDR@CLUSTER_ADDR#KEY".into());
            return;
        };
        match Handshake::initiator_ik(local, pinned, &mut link.out) {
            Ok(handshake) => {
                link.crypto = Crypto::Handshake(Box::new(handshake));
                link.state = State::Noise;
            }
            Err(e) => link.close = Some(format!("cannot start the Noise handshake: {e}")),
        }
    }

    fn on_readable(&mut self, key: usize) {
        loop {
            let Some(link) = self.links.get_mut(key) else {
                return;
            };
            if link.close.is_some() || link.state == State::Connecting {
                return;
            }
            match link.stream.read(&mut self.scratch) {
                Ok(0) => {
                    link.close = Some("the peer closed the link".into());
                    return;
                }
                Ok(n) => {
                    link.input.extend_from_slice(&self.scratch[..n]);
                    link.last_heard = Instant::now();
                    if let Some(peer) = peer_of(link.role) {
                        add(&self.shared.peer_metrics(peer).bytes_in, n as u64);
                    }
                    self.decode(key);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    link.close = Some(format!("read failed: {e}"));
                    return;
                }
            }
        }
    }

    /// Handles every whole frame in `key`'s input (after the handshake and opening the
    /// records, on an encrypted link).
    fn decode(&mut self, key: usize) {
        self.unseal(key);
        loop {
            let Some(link) = self.links.get_mut(key) else {
                return;
            };
            if link.close.is_some() || link.state == State::Refusing {
                link.input.clear();
                link.plain_in.clear();
                return;
            }
            if link.state == State::Noise {
                return;
            }
            match decode_peer(link.frames_in()) {
                Ok(Some(frame)) => self.handle(key, frame),
                Ok(None) => return,
                Err(e) => {
                    if link.state == State::AwaitHello {
                        self.refuse(key, None, RefuseReason::Protocol, format!("{e}"));
                    } else {
                        link.close = Some(format!("undecodable frame: {e}"));
                    }
                    return;
                }
            }
        }
    }

    /// Runs the handshake on what arrived, or opens the records that arrived into `plain_in`.
    fn unseal(&mut self, key: usize) {
        let Some(link) = self.links.get_mut(key) else {
            return;
        };
        if link.close.is_some() || link.state == State::Refusing {
            return;
        }
        let Link {
            crypto,
            input,
            out,
            plain_in,
            close,
            ..
        } = link;
        match crypto {
            Crypto::Plain => {}
            Crypto::Transport(transport) => {
                if let Err(e) = transport.open_all(input, MAX_RECORD_LEN, plain_in) {
                    close.get_or_insert_with(|| format!("encrypted link failed: {e}"));
                }
            }
            Crypto::Handshake(handshake) => match handshake.handle(input, out) {
                Ok(None) => {}
                Ok(Some(established)) => {
                    self.established(key, established);
                    // Records that came with the last handshake message.
                    self.unseal(key);
                }
                Err(e) => self.handshake_failed(key, e),
            },
        }
    }

    /// The Noise handshake is done: the dialer says `PEER_HELLO`, the acceptor waits for it.
    fn established(&mut self, key: usize, established: Established) {
        let shared = self.shared.clone();
        let Some(link) = self.links.get_mut(key) else {
            return;
        };
        link.crypto = Crypto::Transport(established.transport);
        link.since = Instant::now();
        match link.role {
            Role::Dialed { .. } => {
                put(&shared, link, &hello(&shared));
                link.state = State::AwaitWelcome;
            }
            Role::Accepted { .. } => {
                link.remote_key = Some(established.remote);
                link.state = State::AwaitHello;
            }
        }
    }

    /// Logs and counts a failed Noise handshake; the link closes (after writing what the
    /// handshake answered, on the accepting side).
    fn handshake_failed(&mut self, key: usize, e: noise::Error) {
        let Some(link) = self.links.get_mut(key) else {
            return;
        };
        let ours = self.shared.config.noise.as_ref().map(|k| k.public());
        let local = self.shared.membership.nodes()[self.shared.local.0 as usize]
            .id
            .clone();
        match (link.role, e) {
            (Role::Accepted { .. }, noise::Error::PlaintextPeer) => {
                // Answer in the dialer's language, so that it logs why.
                link.crypto = Crypto::Plain;
                let msg = format!(
                    "node `{local}` encrypts its cluster links and the dialer sent plaintext: it runs with --insecure-plaintext; run every node of the cluster alike"
                );
                self.refuse(key, None, RefuseReason::Protocol, msg);
            }
            (Role::Accepted { .. }, noise::Error::ClientPinnedOtherKey) => {
                let ours = ours.map_or_else(String::new, |k| k.to_string());
                let msg = format!(
                    "a node dialed with a key pinned for `{local}` that is not its key ({ours}): that node's --peer entry for `{local}` is out of date; put `{local}`'s key {ours} in the --peer list of every node"
                );
                self.count_refusal(key, None, RefuseReason::Key, &msg);
                self.linger(key);
            }
            (Role::Accepted { .. }, e) => {
                let msg = format!("the Noise handshake failed: {e}");
                self.count_refusal(key, None, RefuseReason::Protocol, &msg);
                self.linger(key);
            }
            (Role::Dialed { peer, link: index }, e) => {
                let id = self
                    .shared
                    .membership
                    .node(peer)
                    .map_or("?", |n| n.id.as_str())
                    .to_owned();
                let (reason, detail) = match &e {
                    noise::Error::ServerKeyMismatch { pinned, .. } => (
                        KEY,
                        format!(
                            "node {id} does not hold the key its --peer entry gives ({pinned}): it could not read our handshake. Run `courier keys show` on {id} and put its key in the --peer list of every node"
                        ),
                    ),
                    noise::Error::HandshakeMsgLen { len: 0, .. } => {
                        // A plaintext node answers a handshake with a plain PEER_REFUSE.
                        let refusal = match decode_peer(&mut link.input) {
                            Ok(Some(PeerFrame::PeerRefuse(r))) => r.message,
                            _ => "no reason given".into(),
                        };
                        (
                            PROTOCOL,
                            format!(
                                "node {id} answered our Noise handshake in plaintext ({refusal}): it runs with --insecure-plaintext; run every node of the cluster alike"
                            ),
                        )
                    }
                    e => (PROTOCOL, format!("the Noise handshake with {id} failed: {e}")),
                };
                let why = format!("refused ({})", REFUSAL_REASONS[reason]);
                self.log_dial_refusal(peer, index, &why, &detail);
                bump(&self.metrics(peer).refused_out[reason]);
                self.mark_close(key, why);
            }
        }
    }

    /// Logs a refusal of one of our dials once per run of the same failure (the link redials
    /// every few seconds).
    fn log_dial_refusal(&mut self, peer: NodeIndex, link: usize, why: &str, detail: &str) {
        let id = self.node_id(peer).to_owned();
        let slot = self
            .slots
            .iter_mut()
            .find(|s| s.peer == peer && s.link == link);
        let first = slot.is_some_and(|s| {
            let first = s.logged.as_deref() != Some(why);
            s.logged = Some(why.to_owned());
            first
        });
        if first {
            tracing::error!(peer = %id, "cluster node {id} refused our link: {detail}");
        }
    }

    fn handle(&mut self, key: usize, frame: PeerFrame) {
        let Some(link) = self.links.get(key) else {
            return;
        };
        if let Some(peer) = peer_of(link.role) {
            bump(&self.shared.peer_metrics(peer).frames_in);
        }
        match (link.role, link.state, frame) {
            (Role::Accepted { .. }, State::AwaitHello, PeerFrame::PeerHello(hello)) => {
                self.on_hello(key, hello)
            }
            (Role::Accepted { .. }, State::AwaitHello, other) => self.refuse(
                key,
                None,
                RefuseReason::Protocol,
                format!("the first frame was {}, not PEER_HELLO", other.name()),
            ),
            (Role::Dialed { peer, link }, State::AwaitWelcome, PeerFrame::PeerWelcome(w)) => {
                self.on_welcome(key, peer, link, w)
            }
            (Role::Dialed { peer, link }, State::AwaitWelcome, PeerFrame::PeerRefuse(r)) => {
                let why = format!("refused ({})", r.reason.name());
                self.log_dial_refusal(peer, link, &why, &r.message);
                bump(&self.metrics(peer).refused_out[r.reason as usize - 1]);
                self.mark_close(key, why);
            }
            (Role::Accepted { .. }, State::Up, PeerFrame::PeerPing(p)) => {
                if let Some(link) = self.links.get_mut(key) {
                    put(&self.shared, link, &PeerPong { nonce: p.nonce }.into());
                }
            }
            (Role::Dialed { .. }, State::Up, PeerFrame::PeerPong(_)) => {}
            (Role::Accepted { peer: Some(peer) }, State::Up, frame) => {
                match Payload::from_frame(frame) {
                    Some(payload) => self.inbound.deliver(peer, payload),
                    None => self.mark_close(key, "a handshake frame on a linked link".into()),
                }
            }
            (_, _, frame) => {
                self.mark_close(key, format!("unexpected {} on this link", frame.name()))
            }
        }
    }

    fn mark_close(&mut self, key: usize, why: String) {
        if let Some(link) = self.links.get_mut(key) {
            link.close.get_or_insert(why);
        }
    }

    fn on_hello(&mut self, key: usize, hello: PeerHello) {
        let s = self.shared.clone();
        let ours = s.membership.hash();
        let peer = s.membership.index_of(&hello.node).filter(|&i| i != s.local);
        if hello.version != PEER_VERSION {
            let msg = format!(
                "node-to-node protocol version {} is not ours ({PEER_VERSION}): run the same Courier release on every node",
                hello.version
            );
            return self.refuse(key, peer, RefuseReason::Version, msg);
        }
        let Some(peer) = peer else {
            let msg = format!(
                "node id `{}` is not another member of this cluster: start it with one of the ids of the --peer list",
                hello.node
            );
            return self.refuse(key, None, RefuseReason::UnknownNode, msg);
        };
        // Encrypted: the dialer proved its static key; it must be the key listed for the node
        // it says it is, before any node frame of it is taken.
        if let Some(proved) = self.links.get(key).and_then(|l| l.remote_key) {
            let listed = s.membership.node(peer).and_then(|n| n.key);
            if listed != Some(proved) {
                let listed = listed.map_or_else(|| "no key".to_owned(), |k| k.to_string());
                let msg = format!(
                    "node `{0}` proved the key {proved}, but the --peer list here gives {listed} for `{0}`: if `{0}` was re-keyed, put its new key (`courier keys show` on it) in the --peer list of every node",
                    hello.node
                );
                return self.refuse(key, Some(peer), RefuseReason::Key, msg);
            }
        }
        if hello.membership != ours {
            let local = &s.membership.nodes()[s.local.0 as usize].id;
            let msg = format!(
                "member lists differ (hash {ours:016x} on {local}, {:016x} on {}): start every node with the same --peer list",
                hello.membership, hello.node
            );
            return self.refuse(key, Some(peer), RefuseReason::Membership, msg);
        }
        let welcome = PeerWelcome {
            version: PEER_VERSION,
            node: s.membership.nodes()[s.local.0 as usize].id.clone(),
            membership: ours,
        };
        let Some(link) = self.links.get_mut(key) else {
            return;
        };
        link.role = Role::Accepted { peer: Some(peer) };
        put(&s, link, &welcome.into());
        link.state = State::Up;
        link.since = Instant::now();
        tracing::debug!(peer = %hello.node, "cluster link from {} accepted", hello.node);
    }

    /// Answers `PEER_REFUSE`, logs why and counts it; the link closes once it is written.
    fn refuse(
        &mut self,
        key: usize,
        peer: Option<NodeIndex>,
        reason: RefuseReason,
        message: String,
    ) {
        self.count_refusal(key, peer, reason, &message);
        let Some(link) = self.links.get_mut(key) else {
            return;
        };
        encode_peer(&PeerRefuse { reason, message }.into(), link.frames_out());
        self.linger(key);
    }

    /// Lets the link write what it holds (a refusal), then closes it.
    fn linger(&mut self, key: usize) {
        let Some(link) = self.links.get_mut(key) else {
            return;
        };
        link.state = State::Refusing;
        link.since = Instant::now();
        link.input.clear();
        link.plain_in.clear();
    }

    /// Logs (at most once per [`REFUSAL_LOG_EVERY`] per node) and counts a refused dial.
    fn count_refusal(
        &mut self,
        key: usize,
        peer: Option<NodeIndex>,
        reason: RefuseReason,
        message: &str,
    ) {
        let addr = self
            .links
            .get(key)
            .and_then(|l| l.stream.peer_addr().ok())
            .map_or_else(|| "?".to_owned(), |a| a.to_string());
        let who = peer
            .map_or("an unknown node", |p| self.node_id(p))
            .to_owned();
        let slot = peer.map_or(self.refusal_logged.len() - 1, |p| p.0 as usize);
        let now = Instant::now();
        if self.refusal_logged[slot].is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_EVERY) {
            self.refusal_logged[slot] = Some(now);
            tracing::error!(
                from = %addr,
                reason = reason.name(),
                "cluster links: refused a link from {who}: {message}"
            );
        }
        let counter = match peer {
            Some(p) => &self.metrics(p).refused_in[reason as usize - 1],
            None => &self.shared.metrics.refused_unknown[reason as usize - 1],
        };
        bump(counter);
    }

    fn on_welcome(&mut self, key: usize, peer: NodeIndex, index: usize, w: PeerWelcome) {
        let expected = self.node_id(peer).to_owned();
        if w.node != expected || w.membership != self.shared.membership.hash() {
            tracing::error!(
                peer = %expected,
                "cluster links: dialed {expected} but reached node `{}` (member list hash {:016x}): check the cluster addresses in --peer",
                w.node,
                w.membership
            );
            bump(&self.metrics(peer).refused_out[WRONG_NODE]);
            return self.mark_close(key, format!("reached `{}` instead", w.node));
        }
        let Some(link) = self.links.get_mut(key) else {
            return;
        };
        link.state = State::Up;
        link.since = Instant::now();
        let Some(p) = self.shared.peer(peer) else {
            return;
        };
        // Anything queued now was sent while the link was down (a send that raced the
        // failure): it is stale, drop it rather than deliver it late.
        drop_queued(&self.shared, peer, index);
        p.links[index].up.store(true, Ordering::Release);
        let up = p.links_up.fetch_add(1, Ordering::AcqRel) + 1;
        let m = self.metrics(peer);
        m.links_up.store(up, Ordering::Relaxed);
        if up == p.links.len() as u64 {
            m.up.store(1, Ordering::Relaxed);
            tracing::info!(peer = %expected, "cluster node {expected} is linked ({up} links)");
        }
        if let Some(slot) = self
            .slots
            .iter_mut()
            .find(|s| s.peer == peer && s.link == index)
        {
            slot.failures = 0;
            slot.logged = None;
        }
        self.inbound.dialed_up(peer, index);
    }

    /// Writes every link's output, then closes the links marked for closing.
    fn flush_and_close(&mut self, now: Instant) {
        let mut closing = Vec::new();
        for (key, link) in self.links.iter_mut() {
            link.seal();
            if link.state != State::Connecting && !link.out.is_empty() {
                let written = write_out(link);
                if written > 0 {
                    if let Some(peer) = peer_of(link.role) {
                        add(&self.shared.peer_metrics(peer).bytes_out, written as u64);
                    }
                }
                let want = !link.out.is_empty();
                if want != link.writable && link.close.is_none() {
                    let interest = if want {
                        Interest::READABLE | Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    if self
                        .poll
                        .registry()
                        .reregister(&mut link.stream, Token(key + FIRST_LINK), interest)
                        .is_ok()
                    {
                        link.writable = want;
                    }
                }
            }
            if link.close.is_some() {
                closing.push(key);
            }
        }
        for key in closing {
            let why = self.links.get_mut(key).and_then(|l| l.close.take());
            self.close(key, why, now);
        }
    }

    /// Closes `key`; a dialed link that was up marks its lane down and drops its queue, and
    /// its slot is scheduled for a redial.
    fn close(&mut self, key: usize, why: Option<String>, now: Instant) {
        let Some(mut link) = self.links.try_remove(key) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut link.stream);
        let why = why.unwrap_or_else(|| "this node is stopping".into());
        match link.role {
            Role::Accepted { peer } => {
                self.accepted -= 1;
                if let (Some(peer), State::Up) = (peer, link.state) {
                    let id = self.node_id(peer).to_owned();
                    tracing::debug!(peer = %id, "cluster link from {id} closed: {why}");
                    let from_peer = Role::Accepted { peer: Some(peer) };
                    if !self
                        .links
                        .iter()
                        .any(|(_, l)| l.role == from_peer && l.state == State::Up)
                    {
                        self.inbound.accepted_gone(peer);
                    }
                }
            }
            Role::Dialed { peer, link: index } => {
                if link.state == State::Up {
                    if let Some(p) = self.shared.peer(peer) {
                        p.links[index].up.store(false, Ordering::Release);
                        let up = p.links_up.fetch_sub(1, Ordering::AcqRel) - 1;
                        let m = self.metrics(peer);
                        m.links_up.store(up, Ordering::Relaxed);
                        m.up.store(0, Ordering::Relaxed);
                    }
                    drop_queued(&self.shared, peer, index);
                }
                if let Some(slot) = self
                    .slots
                    .iter()
                    .position(|s| s.peer == peer && s.link == index)
                {
                    if !self.shared.stop.load(Ordering::SeqCst) {
                        self.dial_failed(slot, &why, now);
                    }
                }
            }
        }
    }
}

/// Drops what waits in a dialed link's queue (its bytes leave the peer's count).
pub(super) fn drop_queued(shared: &Shared, peer: NodeIndex, index: usize) {
    let Some(p) = shared.peer(peer) else {
        return;
    };
    let m = shared.peer_metrics(peer);
    let (mut frames, mut bytes) = (0u64, 0u64);
    while let Ok(frame) = p.links[index].rx.try_recv() {
        frames += 1;
        bytes += frame.encoded_len() as u64;
    }
    if frames > 0 {
        m.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
        add(&m.dropped, frames);
    }
}

/// This node's `PEER_HELLO`.
fn hello(shared: &Shared) -> PeerFrame {
    PeerHello {
        version: PEER_VERSION,
        node: shared.membership.nodes()[shared.local.0 as usize]
            .id
            .clone(),
        membership: shared.membership.hash(),
    }
    .into()
}

/// Appends a frame to `link`'s output and counts it for the link's peer (once known).
fn put(shared: &Shared, link: &mut Link, frame: &PeerFrame) {
    encode_peer(frame, link.frames_out());
    if let Some(peer) = peer_of(link.role) {
        bump(&shared.peer_metrics(peer).frames_out);
    }
}

fn peer_of(role: Role) -> Option<NodeIndex> {
    match role {
        Role::Dialed { peer, .. } => Some(peer),
        Role::Accepted { peer } => peer,
    }
}

/// Writes as much of `link.out` as the socket takes; a failure marks the link for closing.
fn write_out(link: &mut Link) -> usize {
    let mut written = 0;
    while !link.out.is_empty() {
        match link.stream.write(&link.out) {
            Ok(0) => {
                link.close
                    .get_or_insert_with(|| "the peer stopped reading".into());
                break;
            }
            Ok(n) => {
                link.out.advance(n);
                written += n;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                link.close
                    .get_or_insert_with(|| format!("write failed: {e}"));
                break;
            }
        }
    }
    written
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

const _: () = assert!(REFUSAL_REASONS.len() == WRONG_NODE + 1);
