//! A shard: one thread, one mio `Poll`, its own share of the connections.
//!
//! Every shard has its own `SO_REUSEPORT` listener per listen address (the kernel spreads new
//! connections over them), its own slab of [`Conn`]s, its own chat [`Engine`], timer wheel and
//! presence subscriptions. Shards share only read-mostly state ([`Core`]): the store, accounts,
//! the directory and the router. Everything else crosses shards as messages (see [`mailbox`]).
//!
//! One round of the loop:
//!
//! 1. poll, with a timeout up to the next one-second tick (zero if work is waiting);
//! 2. handle events: accept, read and handle frames, write where the socket became writable;
//! 3. drain the mailbox (requests for threads we own, deliveries, kicks, auth and read results);
//! 4. on a tick: time out connections, flush coalesced presence pushes;
//! 5. `engine.commit` — one durable write for the round — and route its effects;
//! 6. hand messages to other shards' mailboxes (waking each once);
//! 7. write queued bytes directly, asking for WRITABLE only where bytes remain; close the
//!    connections that asked to close.

pub mod auth_pool;
pub mod conn;
mod forward;
mod heap;
mod io;
pub mod mailbox;
pub mod per_addr;
pub mod presence;
pub mod read_pool;
mod route;
mod session;
#[cfg(test)]
mod tests;
pub mod timer;
pub mod ws;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use courier_protocol::{encode, Decoder, ErrorCode, ErrorReply, Frame};
use crossbeam_channel::{Receiver, Sender};
use mio::net::TcpListener;
use mio::{Events, Poll, Token};
use slab::Slab;

use crate::caller::ConnRef;
use crate::chat::{Effect, Engine, Shared};
use crate::cluster::Router;
use crate::config::Config;
use crate::directory::Directory;
use crate::metrics::{Metrics, Reason, ShardMetrics};
use crate::session::Accounts;
use auth_pool::AuthRequest;
use conn::{Conn, SpareBusy};
use mailbox::{Mailbox, Outbox, ShardMsg};
use presence::Subscriptions;
use read_pool::ReadQueue;
use timer::Wheel;

/// The waker's token; listeners take the tokens just below it. Connections use their slab
/// index, which never gets near these.
pub const WAKER: Token = Token(usize::MAX - 1);

fn listener_token(i: usize) -> Token {
    Token(usize::MAX - 2 - i)
}

fn listener_index(t: Token) -> Option<usize> {
    (usize::MAX - 2)
        .checked_sub(t.0)
        .filter(|&i| i < crate::config::MAX_LISTEN)
}

/// Bytes read from a socket per `read` call, into the shard's scratch buffer.
const SCRATCH: usize = 64 * 1024;
/// Mailbox messages handled per round before polling again (fairness with sockets).
const MAILBOX_BUDGET: usize = 16 * 1024;
/// How long a shard keeps writing goodbyes after a shutdown signal.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// State every shard shares, immutable or internally synchronised.
pub struct Core {
    pub config: Config,
    pub chat: Arc<Shared>,
    pub accounts: Arc<Accounts>,
    pub directory: Arc<Directory>,
    pub router: Router,
    /// Links to the other nodes of the cluster; `None` for a single node.
    pub links: Option<crate::cluster::links::Links>,
    pub metrics: Arc<Metrics>,
    pub mailboxes: Arc<[Mailbox]>,
    pub auth: Sender<AuthRequest>,
    /// The read workers' queue (HISTORY, SYNC, LIST_THREADS, MEDIA_GET, READERS).
    pub reads: ReadQueue,
    /// Set by the signal handler (or a failed shard); each shard then finishes its round and
    /// exits.
    pub shutdown: AtomicBool,
    /// The first part that failed (a shard that panicked or whose event loop broke): the
    /// process stops and exits non-zero instead of serving half alive.
    pub failure: Mutex<Option<Failure>>,
    /// Test-only fault injection (see [`Faults`]); all off in production.
    pub faults: Faults,
    /// Open connections in the whole process, against `max_connections`.
    pub connections: AtomicUsize,
    pub max_connections: usize,
    /// The server's Noise static key: every connection starts with the encrypted handshake.
    /// `None` with `--insecure-plaintext`.
    pub noise_key: Option<courier_protocol::noise::Keypair>,
    /// Connections per client address, against `--max-conns-per-addr`.
    pub per_addr: per_addr::PerAddr,
    /// Presence subscriptions in the whole process: changes are broadcast only when nonzero.
    pub presence_subscriptions: AtomicUsize,
    /// Presence subscriptions to users of other nodes, and other nodes' to ours.
    pub cluster_presence: crate::cluster::presence::ClusterPresence,
    /// The static files plain GETs on a WebSocket listener get (`--web-root`).
    pub web_root: Option<ws::WebRoot>,
}

/// Why the process stops with a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub shard: u16,
    /// The panic message, or the event loop's I/O error.
    pub what: String,
}

/// Environment variable naming a `PING` nonce that makes the shard reading it panic. Tests
/// set it on their own server to prove that a panicking shard stops the process; it is never
/// set in production, so no client can trigger it.
pub const FAULT_PANIC_ON_PING: &str = "COURIER_FAULT_PANIC_ON_PING";

/// Environment variable naming a `HISTORY` limit: a HISTORY with that limit panics the read
/// worker that runs it. Tests only, like [`FAULT_PANIC_ON_PING`].
pub const FAULT_PANIC_ON_HISTORY_LIMIT: &str = "COURIER_FAULT_PANIC_ON_HISTORY_LIMIT";

/// Environment variable naming a handle: a `REGISTER` of it panics the auth worker that runs
/// it. Tests only, like [`FAULT_PANIC_ON_PING`].
pub const FAULT_PANIC_ON_REGISTER: &str = "COURIER_FAULT_PANIC_ON_REGISTER";

/// Environment variable that, set to `1`, turns the store's free-space check off so that
/// RocksDB itself meets a full disk (see `Store::write`). Tests only.
pub const FAULT_SKIP_SPACE_CHECK: &str = "COURIER_FAULT_SKIP_SPACE_CHECK";

/// Environment variable naming a file: while it exists, the store's free-space check reports
/// a full disk (for tests that cannot mount a small file system). Tests only.
pub const FAULT_FULL_DISK_FLAG: &str = "COURIER_FAULT_FULL_DISK_FLAG";

/// How long the store may fail every write although the disk has room before the process
/// stops so that a restart reopens it (failure policy).
pub const STORE_STUCK_LIMIT: Duration = Duration::from_secs(30);

/// Test-only faults, read once from the environment at start.
#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// A `PING` with this nonce panics the shard that reads it.
    pub panic_on_ping: Option<u64>,
    /// A `HISTORY` with this limit panics the read worker that runs it.
    pub panic_on_history_limit: Option<u16>,
    /// A `REGISTER` of this handle panics the auth worker that runs it.
    pub panic_on_register: Option<String>,
    /// The store's free-space check is off.
    pub skip_space_check: bool,
    /// The disk counts as full while this file exists.
    pub full_disk_flag: Option<std::path::PathBuf>,
}

impl Faults {
    pub fn from_env() -> Faults {
        let panic_on_ping = std::env::var(FAULT_PANIC_ON_PING)
            .ok()
            .and_then(|v| v.parse().ok());
        if panic_on_ping.is_some() {
            tracing::warn!(
                "fault injection is on ({FAULT_PANIC_ON_PING}): a client can crash this server"
            );
        }
        let panic_on_history_limit = std::env::var(FAULT_PANIC_ON_HISTORY_LIMIT)
            .ok()
            .and_then(|v| v.parse().ok());
        if panic_on_history_limit.is_some() {
            tracing::warn!(
                "fault injection is on ({FAULT_PANIC_ON_HISTORY_LIMIT}): a client can make reads panic"
            );
        }
        let panic_on_register = std::env::var(FAULT_PANIC_ON_REGISTER).ok();
        if panic_on_register.is_some() {
            tracing::warn!(
                "fault injection is on ({FAULT_PANIC_ON_REGISTER}): a client can make registration panic"
            );
        }
        let skip_space_check = std::env::var(FAULT_SKIP_SPACE_CHECK).is_ok_and(|v| v == "1");
        if skip_space_check {
            tracing::warn!(
                "fault injection is on ({FAULT_SKIP_SPACE_CHECK}): a full disk stops the store"
            );
        }
        let full_disk_flag = std::env::var_os(FAULT_FULL_DISK_FLAG).map(std::path::PathBuf::from);
        if full_disk_flag.is_some() {
            tracing::warn!(
                "fault injection is on ({FAULT_FULL_DISK_FLAG}): a file can make the disk look full"
            );
        }
        Faults {
            panic_on_ping,
            panic_on_history_limit,
            panic_on_register,
            skip_space_check,
            full_disk_flag,
        }
    }
}

impl Core {
    /// Records the first failure and stops every shard: the process then exits non-zero
    /// after the other shards finished their rounds and the WAL is synced.
    pub fn fail(&self, failure: Failure) {
        if let Ok(mut first) = self.failure.lock() {
            first.get_or_insert(failure);
        }
        self.shutdown.store(true, Ordering::Release);
        for m in self.mailboxes.iter() {
            m.wake();
        }
    }

    /// The failure that stopped the process, if any.
    pub fn failed(&self) -> Option<Failure> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }
}

/// What a shard thread is started with.
pub struct ShardParts {
    pub id: u16,
    pub poll: Poll,
    pub listeners: Vec<TcpListener>,
    /// WebSocket listeners (`--listen-ws`), after the TCP ones.
    pub ws_listeners: Vec<TcpListener>,
    pub mailbox: Receiver<ShardMsg>,
}

pub struct Shard {
    id: u16,
    core: Arc<Core>,
    poll: Poll,
    /// TCP listeners, then WebSocket ones from `first_ws` on.
    listeners: Vec<TcpListener>,
    first_ws: usize,
    mailbox: Receiver<ShardMsg>,
    conns: Slab<Conn>,
    engine: Engine,
    decoder: Decoder,
    /// Next connection generation (see [`ConnRef::gen`]).
    next_gen: u32,
    epoch: Instant,
    /// The shard second of the last tick.
    last_tick: u32,
    wheel: Wheel,
    subs: Subscriptions,
    outbox: Outbox,
    /// Socket reads land here; only a partial frame is copied into its connection.
    scratch: Vec<u8>,
    /// Frames are encoded here and split off as shared `Bytes`.
    enc: BytesMut,
    /// Encrypted reads: the records to open (a connection's partial record, then the bytes
    /// read), and their plaintext (its partial frame, then the records' contents).
    records_in: BytesMut,
    plain_in: BytesMut,
    /// Encrypted writes: a connection's queued frames, concatenated to be sealed, and the
    /// sealed records, split off as `Bytes`.
    plain_out: Vec<u8>,
    sealed_out: BytesMut,
    /// WebSocket frame headers and control frames, split off as `Bytes`.
    ws_headers: BytesMut,
    /// One frame's bytes on their way into the decoder.
    frame_buf: BytesMut,
    /// Boxes of connections that wrote everything, for the next ones that queue frames.
    spare_busy: SpareBusy,
    /// Connections with bytes queued this round.
    pending_writes: Vec<usize>,
    /// Connections whose read budget ran out with bytes left (slot, generation): read again
    /// next round.
    carry_reads: Vec<(usize, u32)>,
    /// Connections to close at the end of this round.
    closing: Vec<usize>,
    effects: Vec<Effect>,
    /// Presence changes of users on this shard, to broadcast at the end of the round.
    presence_out: Vec<presence::Change>,
    /// A reusable list of connections (directory lookups).
    refs: Vec<ConnRef>,
    more_mail: bool,
    /// An accept failed (e.g. EMFILE) and connections may wait in the backlog.
    accept_stalled: bool,
    /// Connections not read because the target shard of their last request is congested
    /// (slot, generation, target shard); see [`Outbox::congested`].
    paused: Vec<(usize, u32, u16)>,
    /// Requests forwarded to other nodes and answers owed to them (`forward.rs`).
    fwd: forward::Forwarder,
    /// Connections with bytes to read that were not read because the round being built is
    /// full while the previous one commits ([`Engine::saturated`]); read once it is durable.
    held_reads: Vec<(usize, u32)>,
}

impl Shard {
    pub fn new(core: Arc<Core>, parts: ShardParts) -> Shard {
        let shards = core.mailboxes.len();
        let engine = Self::engine(&core, parts.id);
        let first_ws = parts.listeners.len();
        let mut listeners = parts.listeners;
        listeners.extend(parts.ws_listeners);
        Shard {
            id: parts.id,
            decoder: Decoder::new(core.config.max_frame),
            poll: parts.poll,
            listeners,
            first_ws,
            mailbox: parts.mailbox,
            conns: Slab::new(),
            engine,
            next_gen: 1,
            epoch: Instant::now(),
            last_tick: 0,
            wheel: Wheel::new(0),
            subs: Subscriptions::default(),
            outbox: Outbox::new(shards, mailbox::OUTBOX_CAP),
            scratch: vec![0; SCRATCH],
            enc: BytesMut::with_capacity(16 * 1024),
            records_in: BytesMut::new(),
            plain_in: BytesMut::new(),
            plain_out: Vec::new(),
            sealed_out: BytesMut::new(),
            ws_headers: BytesMut::with_capacity(4096),
            frame_buf: BytesMut::new(),
            spare_busy: SpareBusy::default(),
            pending_writes: Vec::new(),
            carry_reads: Vec::new(),
            closing: Vec::new(),
            effects: Vec::new(),
            presence_out: Vec::new(),
            refs: Vec::new(),
            more_mail: false,
            accept_stalled: false,
            paused: Vec::new(),
            fwd: forward::Forwarder::default(),
            held_reads: Vec::new(),
            core,
        }
    }

    /// The shard's chat engine: with `--fsync batch`, its rounds are made durable by a writer
    /// thread of its own (the commit stage), which wakes the shard when one is durable.
    /// `always` writes each request inline before its answer, and `never` each round inline
    /// (a write without a sync costs less than the hand-over).
    fn engine(core: &Arc<Core>, id: u16) -> Engine {
        let shared = core.chat.clone();
        if shared.store.fsync_mode() != crate::store::FsyncMode::Batch {
            return Engine::new(shared, id);
        }
        let mailbox = core.mailboxes[id as usize].clone();
        let notify = Box::new(move || mailbox.wake());
        match crate::store::committer::Committer::spawn(shared.store.clone(), id, notify) {
            Ok(committer) => Engine::pipelined(shared, id, committer),
            Err(e) => {
                tracing::warn!(shard = id, error = %e, "cannot start the commit thread; committing on the event loop");
                Engine::new(shared, id)
            }
        }
    }

    fn metrics(&self) -> &ShardMetrics {
        &self.core.metrics.shards[self.id as usize]
    }

    /// Seconds since this shard started: the unit of deadlines.
    fn now_secs(&self) -> u32 {
        self.epoch.elapsed().as_secs() as u32
    }

    /// Milliseconds since this shard started, wrapping: the unit of rate buckets.
    fn now_ms(&self) -> u32 {
        self.epoch.elapsed().as_millis() as u32
    }

    /// Runs rounds until shutdown; returns after the goodbyes are written (bounded).
    pub fn run(mut self) -> std::io::Result<()> {
        self.register_listeners()?;
        let mut events = Events::with_capacity(1024);
        let mut carried = Vec::new();
        loop {
            self.round(&mut events, &mut carried)?;
            if self.core.shutdown.load(Ordering::Acquire) {
                self.shut_down();
                return Ok(());
            }
        }
    }

    fn register_listeners(&mut self) -> std::io::Result<()> {
        for (i, l) in self.listeners.iter_mut().enumerate() {
            self.poll
                .registry()
                .register(l, listener_token(i), mio::Interest::READABLE)?;
        }
        Ok(())
    }

    /// One round of the loop (steps 1–7 in the module docs). `carried` is scratch space for
    /// the connections carried over from the last round.
    fn round(
        &mut self,
        events: &mut Events,
        carried: &mut Vec<(usize, u32)>,
    ) -> std::io::Result<()> {
        let timeout = self.poll_timeout();
        std::mem::swap(carried, &mut self.carry_reads);
        if let Err(e) = self.poll.poll(events, Some(timeout)) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        // Before anything a wake-up may be for (mailbox, commit stage, shutdown) is looked at:
        // senders from now on poke again (see `mailbox::Doorbell`).
        let doorbell = &self.core.mailboxes[self.id as usize].doorbell;
        doorbell.answer();
        let (pokes, elided) = doorbell.counts();
        let metrics = self.metrics();
        ShardMetrics::add(&metrics.polls, 1);
        metrics.wakes.store(pokes, Ordering::Relaxed);
        metrics.wakes_elided.store(elided, Ordering::Relaxed);
        for event in events.iter() {
            match event.token() {
                WAKER => {}
                t => match listener_index(t) {
                    Some(i) => self.accept(i),
                    None => {
                        let readable =
                            event.is_readable() || event.is_read_closed() || event.is_error();
                        let hold = readable && self.engine.saturated();
                        if hold {
                            if let Some(c) = self.conns.get(t.0) {
                                self.held_reads.push((t.0, c.gen));
                            }
                        }
                        let drain = if event.is_read_closed() || event.is_error() {
                            io::Drain::WouldBlock
                        } else {
                            io::Drain::ShortRead
                        };
                        self.on_conn_event(t.0, readable && !hold, event.is_writable(), drain)
                    }
                },
            }
        }
        if self.engine.saturated() {
            self.held_reads.append(carried);
        }
        self.read_carried(carried);
        self.drain_mailbox();
        self.expire_forwards();
        self.on_tick();
        self.end_round();
        Ok(())
    }

    fn poll_timeout(&self) -> Duration {
        if self.more_mail
            || !self.outbox.is_empty()
            || self.engine.has_pending()
            || !self.carry_reads.is_empty()
        {
            return Duration::ZERO;
        }
        let elapsed = self.epoch.elapsed();
        let next_tick = Duration::from_secs(elapsed.as_secs() + 1);
        let tick = next_tick.saturating_sub(elapsed);
        self.next_forward_deadline().map_or(tick, |d| d.min(tick))
    }

    /// Reads the connections carried over from the last round, after this round's events,
    /// unless an event already read one of them and carried it again.
    fn read_carried(&mut self, carried: &mut Vec<(usize, u32)>) {
        for (slot, gen) in carried.drain(..) {
            let same = self.conns.get(slot).is_some_and(|c| c.gen == gen);
            if same && !self.carry_reads.contains(&(slot, gen)) {
                self.read(slot);
            }
        }
    }

    /// Commit, route, hand over, write, close: steps 5–7 of a round.
    fn end_round(&mut self) {
        if self.core.config.commit_inline_when_idle && self.quiet() {
            // The round may be written on this thread (see `commit`): what it already has for
            // other shards and for sockets goes out first, so the sync holds none of it up.
            self.flush_outbox();
            self.flush_writes();
        }
        self.commit();
        self.broadcast_presence();
        self.flush_outbox();
        self.resume_reads();
        self.metrics()
            .mailbox_depth
            .store(self.mailbox.len() as u64, Ordering::Relaxed);
        self.flush_writes();
        self.close_pending();
    }

    /// Hands this round's messages to other shards' mailboxes (waking each once).
    fn flush_outbox(&mut self) {
        let flushed = self.outbox.flush(&self.core.mailboxes);
        ShardMetrics::add(&self.metrics().mailbox_overflows, flushed.refusals as u64);
        self.metrics()
            .overflow_pending
            .store(flushed.waiting as u64, Ordering::Relaxed);
    }

    /// Whether the shard has no work waiting past this round: no mail left in its mailbox,
    /// no reads carried over or held back.
    fn quiet(&self) -> bool {
        !self.more_mail && self.carry_reads.is_empty() && self.held_reads.is_empty()
    }

    /// Hands the round to the commit stage (or writes it) and routes what became durable.
    /// With `--commit-inline-when-idle`, a shard with nothing else to do this round (quiet,
    /// nothing left to write or hand over) writes the round itself
    /// ([`Engine::commit_idle`]): the round's answers skip two wake-ups, but mail that comes
    /// in during the sync waits for it. Connections held back while the round being built
    /// was full are read again once it is not.
    fn commit(&mut self) {
        let mut effects = std::mem::take(&mut self.effects);
        let idle = self.core.config.commit_inline_when_idle
            && self.quiet()
            && self.pending_writes.is_empty()
            && self.outbox.is_empty();
        if idle {
            self.engine.commit_idle(&mut effects);
        } else {
            self.engine.commit(&mut effects);
        }
        if let Some(took) = self.engine.take_commit_took() {
            self.metrics().commit_took(took.as_micros() as u64);
        }
        self.metrics()
            .dedupe_cache_bytes
            .store(self.engine.dedupe_cache_bytes() as u64, Ordering::Relaxed);
        for effect in effects.drain(..) {
            self.route(effect);
        }
        self.effects = effects;
        if !self.held_reads.is_empty() && !self.engine.saturated() {
            self.carry_reads.append(&mut self.held_reads);
        }
    }

    /// Once a second: deadlines, coalesced presence, the store's health, the heap's free
    /// memory (one shard at a time, [`heap`]).
    fn on_tick(&mut self) {
        let now = self.now_secs();
        if now == self.last_tick {
            return;
        }
        self.last_tick = now;
        self.check_store();
        heap::TRIMMER.tick(Instant::now(), &self.core.metrics.heap);
        self.retry_accepts();
        let mut due = Vec::new();
        self.wheel.advance(now, &mut due);
        let handshake = self.core.config.handshake_timeout_secs.min(u32::MAX as u64) as u32;
        let idle = 3 * self.core.config.heartbeat_secs as u32;
        for (slot, gen) in due {
            let Some(conn) = self.conns.get(slot as usize) else {
                continue;
            };
            if conn.gen != gen || conn.closing() {
                continue;
            }
            let mut deadline = conn.deadline(handshake, idle);
            if conn.has(conn::flag::PAUSED) {
                // Not read because another shard is slow: the silence is the server's.
                self.wheel.schedule(slot, gen, now.saturating_add(idle));
                continue;
            }
            if deadline <= now {
                // A stall of the server (SIGSTOP, a swapped-out process, a long round) is not
                // the client's silence: its PINGs may be waiting unread in the socket. Read
                // them before judging.
                self.read(slot as usize);
                match self.conns.get(slot as usize) {
                    Some(c) if c.gen == gen && !c.closing() => {
                        deadline = c.deadline(handshake, idle)
                    }
                    _ => continue,
                }
            }
            if deadline > now {
                self.wheel.schedule(slot, gen, deadline);
                continue;
            }
            let Some(conn) = self.conns.get(slot as usize) else {
                continue;
            };
            let (code, reason) = match conn.state {
                conn::State::Authed => (ErrorCode::HeartbeatTimeout, Reason::HeartbeatTimeout),
                _ => (ErrorCode::HandshakeTimeout, Reason::HandshakeTimeout),
            };
            if matches!(conn.crypto, conn::Crypto::Handshaking(_)) {
                // The ERROR_REPLY below goes out in plaintext: the client's session reports
                // it as the server's plaintext answer to its handshake.
                self.metrics()
                    .noise_failed(crate::metrics::NoiseFailure::HandshakeTimeout);
            }
            self.fail(slot as usize, 0, code, reason);
        }
        self.flush_presence();
    }

    /// Stops the process when the store has failed every write for [`STORE_STUCK_LIMIT`]
    /// although the disk has room: RocksDB cannot leave that state by itself on a small disk,
    /// and a restart reopens it (failure policy).
    fn check_store(&mut self) {
        let Some(stuck) = self.core.chat.store.stuck_for(Instant::now()) else {
            return;
        };
        if stuck < STORE_STUCK_LIMIT || self.core.failed().is_some() {
            return;
        }
        let what = format!(
            "the store has failed every write for {}s although the disk has room",
            stuck.as_secs()
        );
        tracing::error!(
            shard = self.id,
            "{what}; stopping the server (exit status 1) so that a restart reopens the store"
        );
        self.core.fail(Failure {
            shard: self.id,
            what,
        });
    }

    /// Encodes one frame into shared bytes.
    fn encode(&mut self, request_id: u32, frame: &Frame) -> bytes::Bytes {
        encode(request_id, frame, &mut self.enc);
        self.enc.split().freeze()
    }

    /// Sends `ERROR_REPLY(request_id, code)` and closes the connection after this round.
    fn fail(&mut self, slot: usize, request_id: u32, code: ErrorCode, reason: Reason) {
        let frame = Frame::ErrorReply(ErrorReply {
            code: code as u16,
            message: code.name().to_owned(),
        });
        self.send(slot, request_id, &frame);
        self.close_soon(slot, reason);
    }

    /// Stops accepting, says goodbye to every connection, writes for up to [`SHUTDOWN_FLUSH`],
    /// then closes everything (recording last-seen times) and commits once more.
    fn shut_down(&mut self) {
        // The round in flight and the one built behind it: their answers go out before the
        // goodbyes.
        let mut effects = std::mem::take(&mut self.effects);
        self.engine.finish(&mut effects);
        for effect in effects.drain(..) {
            self.route(effect);
        }
        self.outbox.flush(&self.core.mailboxes);
        for l in &mut self.listeners {
            let _ = self.poll.registry().deregister(l);
        }
        self.listeners.clear();
        let slots: Vec<usize> = self.conns.iter().map(|(s, _)| s).collect();
        for slot in slots {
            self.fail(slot, 0, ErrorCode::ShuttingDown, Reason::ShuttingDown);
        }
        let deadline = Instant::now() + SHUTDOWN_FLUSH;
        let mut events = Events::with_capacity(1024);
        loop {
            self.flush_writes();
            let waiting: Vec<usize> = self
                .conns
                .iter()
                .filter(|(_, c)| c.queued() > 0)
                .map(|(s, _)| s)
                .collect();
            let now = Instant::now();
            if waiting.is_empty() || now >= deadline {
                break;
            }
            let _ = self.poll.poll(
                &mut events,
                Some((deadline - now).min(Duration::from_millis(50))),
            );
            for slot in waiting {
                self.pending_writes.push(slot);
            }
        }
        self.close_pending();
        self.engine.finish(&mut effects);
    }
}

/// Starts one thread per shard; returns their handles.
///
/// Failure policy: a shard that panics (or whose poller fails) cannot go on, and the process
/// must not go on without it (its users would look online forever, requests for its threads
/// would vanish). The panic is caught at the top of the thread, logged with the shard and the
/// message, and turned into [`Core::fail`]: the other shards finish their round and close
/// their connections, the WAL is synced, and `serve` returns an error (exit status 1) so a
/// service manager restarts the process.
pub fn spawn(
    core: Arc<Core>,
    parts: Vec<ShardParts>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    parts
        .into_iter()
        .map(|p| {
            let core = core.clone();
            std::thread::Builder::new().name(format!("shard-{}", p.id)).spawn(move || {
                let id = p.id;
                let shard_core = core.clone();
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                    Shard::new(shard_core, p).run()
                }));
                let what = match ran {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => format!("its event loop failed: {e}"),
                    Err(panic) => format!("it panicked: {}", panic_message(&*panic)),
                };
                tracing::error!(
                    shard = id,
                    "shard {id} stopped: {what}; stopping the server (exit status 1) so that it is restarted"
                );
                core.fail(Failure { shard: id, what });
            })
        })
        .collect()
}

/// The text of a panic payload (`panic!` with a literal or with a format string).
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}
