//! Counters and a tiny Prometheus endpoint.
//!
//! Each shard owns one [`ShardMetrics`], aligned to its own cache lines, and is its only
//! writer: the hot path is a relaxed `fetch_add` on a line no other core writes, never a lock.
//! Readers (the HTTP responder, `ADMIN_STATS`) sum the shards with relaxed loads; a snapshot is
//! therefore a moment's view, not a consistent cut, which is what a scrape needs.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::store::db::Health;
use crate::store::Store;

/// Why a connection ended: one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The peer closed, or the socket failed.
    PeerClosed,
    /// A frame that did not decode, of an unknown type or over the size limit.
    ProtocolError,
    HandshakeTimeout,
    HeartbeatTimeout,
    SlowConsumer,
    ServerFull,
    Logout,
    SessionRevoked,
    Redirected,
    ShuttingDown,
    /// The encrypted transport failed; [`NoiseFailure`] says how.
    EncryptionFailed,
    /// Refused at accept: its address holds `--max-conns-per-addr` connections.
    TooManyFromAddr,
    /// A WebSocket upgrade was refused ([`WsRefusal`] says why).
    WsRefused,
    /// A plain HTTP GET on a WebSocket listener was answered (a page of `--web-root`).
    PageServed,
}

impl Reason {
    pub const ALL: [Reason; 14] = [
        Reason::PeerClosed,
        Reason::ProtocolError,
        Reason::HandshakeTimeout,
        Reason::HeartbeatTimeout,
        Reason::SlowConsumer,
        Reason::ServerFull,
        Reason::Logout,
        Reason::SessionRevoked,
        Reason::Redirected,
        Reason::ShuttingDown,
        Reason::EncryptionFailed,
        Reason::TooManyFromAddr,
        Reason::WsRefused,
        Reason::PageServed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::PeerClosed => "peer_closed",
            Reason::ProtocolError => "protocol_error",
            Reason::HandshakeTimeout => "handshake_timeout",
            Reason::HeartbeatTimeout => "heartbeat_timeout",
            Reason::SlowConsumer => "slow_consumer",
            Reason::ServerFull => "server_full",
            Reason::Logout => "logout",
            Reason::SessionRevoked => "session_revoked",
            Reason::Redirected => "redirected",
            Reason::ShuttingDown => "shutting_down",
            Reason::EncryptionFailed => "encryption_failed",
            Reason::TooManyFromAddr => "too_many_from_address",
            Reason::WsRefused => "ws_upgrade_refused",
            Reason::PageServed => "http_page_served",
        }
    }
}

/// Why a WebSocket upgrade was refused: `courier_ws_upgrade_refusals_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsRefusal {
    /// An `Origin` not in `--ws-allowed-origin` (HTTP 403).
    Origin,
    /// Not a valid HTTP GET or WebSocket upgrade (HTTP 400).
    BadRequest,
    /// A request over 4 KiB (HTTP 431).
    TooLarge,
    /// The request did not arrive within the handshake deadline (closed).
    Timeout,
    /// The server or the client's address was full (HTTP 503).
    ServerFull,
}

impl WsRefusal {
    pub const ALL: [WsRefusal; 5] = [
        WsRefusal::Origin,
        WsRefusal::BadRequest,
        WsRefusal::TooLarge,
        WsRefusal::Timeout,
        WsRefusal::ServerFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WsRefusal::Origin => "origin",
            WsRefusal::BadRequest => "bad_request",
            WsRefusal::TooLarge => "too_large",
            WsRefusal::Timeout => "timeout",
            WsRefusal::ServerFull => "server_full",
        }
    }
}

/// Why a connection's encrypted transport failed: `courier_noise_failures_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoiseFailure {
    /// A plaintext client talked to the encrypted server (it was told so).
    PlaintextPeer,
    /// An IK handshake for another key: the client pinned an old or another server's key.
    PinMismatch,
    /// A handshake message that is not Courier's Noise handshake (length, pattern, crypto).
    BadHandshake,
    /// The handshake did not end before the handshake deadline.
    HandshakeTimeout,
    /// A record that failed authentication: altered, replayed, reordered or dropped.
    RecordAuth,
    /// A record length over the limit (or too short to hold a tag).
    RecordLength,
    /// Anything else (nonce exhausted, the random number generator failed).
    Other,
}

impl NoiseFailure {
    pub const ALL: [NoiseFailure; 7] = [
        NoiseFailure::PlaintextPeer,
        NoiseFailure::PinMismatch,
        NoiseFailure::BadHandshake,
        NoiseFailure::HandshakeTimeout,
        NoiseFailure::RecordAuth,
        NoiseFailure::RecordLength,
        NoiseFailure::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NoiseFailure::PlaintextPeer => "plaintext_peer",
            NoiseFailure::PinMismatch => "pin_mismatch",
            NoiseFailure::BadHandshake => "bad_handshake",
            NoiseFailure::HandshakeTimeout => "handshake_timeout",
            NoiseFailure::RecordAuth => "record_auth",
            NoiseFailure::RecordLength => "record_length",
            NoiseFailure::Other => "other",
        }
    }

    pub fn of(e: &courier_protocol::noise::Error) -> NoiseFailure {
        use courier_protocol::noise::Error as E;
        match e {
            E::PlaintextPeer => NoiseFailure::PlaintextPeer,
            E::ClientPinnedOtherKey => NoiseFailure::PinMismatch,
            E::UnknownPattern(_) | E::HandshakeMsgLen { .. } | E::Handshake(_) => {
                NoiseFailure::BadHandshake
            }
            E::RecordAuth => NoiseFailure::RecordAuth,
            E::RecordTooLarge { .. } | E::RecordTooShort { .. } => NoiseFailure::RecordLength,
            _ => NoiseFailure::Other,
        }
    }
}

/// Upper bounds (µs) of the commit latency histogram buckets; the last bucket is +Inf.
pub const COMMIT_BUCKETS_US: [u64; 12] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
];

/// One shard's counters. Only that shard writes them.
#[derive(Default)]
#[repr(align(128))]
pub struct ShardMetrics {
    pub connections: AtomicU64,
    pub authenticated: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub rate_limited: AtomicU64,
    /// REGISTER, LOGIN and RESUME refused with LOGIN_THROTTLED (session::limits, or a full
    /// auth queue).
    pub auth_throttled: AtomicU64,
    /// Messages waiting in this shard's mailbox at the end of its last round.
    pub mailbox_depth: AtomicU64,
    /// Messages this shard could not hand to a full mailbox at once (retried later).
    pub mailbox_overflows: AtomicU64,
    pub overflow_pending: AtomicU64,
    /// Times this shard's `poll` returned (rounds of its loop).
    pub polls: AtomicU64,
    /// Pokes of this shard's waker (eventfd writes) by anyone, and wakes that skipped theirs
    /// because one was on its way (`mailbox::Doorbell`); copied from the doorbell each round.
    pub wakes: AtomicU64,
    pub wakes_elided: AtomicU64,
    /// Times a connection stopped being read because its requests' shard was congested.
    pub paused_reads: AtomicU64,
    /// Connections not read right now for that reason.
    pub paused_now: AtomicU64,
    /// WebSocket connections (also counted in `connections`).
    pub ws_connections: AtomicU64,
    /// Heap bytes of the shard's recent-sends table (bounded; fills over the first sends).
    pub dedupe_cache_bytes: AtomicU64,
    ws_refusals: [AtomicU64; WsRefusal::ALL.len()],
    disconnects: [AtomicU64; Reason::ALL.len()],
    noise_failures: [AtomicU64; NoiseFailure::ALL.len()],
    commit_buckets: [AtomicU64; COMMIT_BUCKETS_US.len() + 1],
    commit_sum_us: AtomicU64,
}

impl ShardMetrics {
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    #[inline]
    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn disconnected(&self, reason: Reason) {
        Self::add(&self.disconnects[reason as usize], 1);
    }

    pub fn noise_failed(&self, why: NoiseFailure) {
        Self::add(&self.noise_failures[why as usize], 1);
    }

    pub fn ws_refused(&self, why: WsRefusal) {
        Self::add(&self.ws_refusals[why as usize], 1);
    }

    /// Records one round commit that took `us` microseconds from sealing to durable.
    pub fn commit_took(&self, us: u64) {
        let bucket = COMMIT_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(COMMIT_BUCKETS_US.len());
        Self::add(&self.commit_buckets[bucket], 1);
        Self::add(&self.commit_sum_us, us);
    }
}

/// Picks one counter out of a shard's counters.
type Field = fn(&ShardMetrics) -> &AtomicU64;

/// The read pool's counters: shards add to `queued` (and `refused`), workers take from it.
#[derive(Default)]
pub struct ReadMetrics {
    /// Read requests queued and not yet taken by a worker (a gauge).
    pub queued: AtomicU64,
    /// Read requests answered.
    pub done: AtomicU64,
    /// Read requests refused with RATE_LIMITED because the queue was full.
    pub refused: AtomicU64,
}

/// Reads across the nodes of a cluster (`cluster::reads`).
#[derive(Default)]
pub struct ClusterReadMetrics {
    /// Parts of this node's reads asked of other nodes (`PEER_READ`s sent).
    pub parts_asked: AtomicU64,
    /// Reads answered UNAVAILABLE because a node was down or silent past the deadline.
    pub unavailable: AtomicU64,
    /// `PEER_READ_REPLY`s that came after their read had given up (dropped).
    pub late_replies: AtomicU64,
    /// Other nodes' parts this node refused (its part queue was full, or it was starting).
    pub parts_refused: AtomicU64,
}

/// Why a link handshake failed: the `reason` label of `courier_peer_refusals_total`, indexed
/// like `protocol::peer::RefuseReason` codes minus one, then `wrong_node` (the dialer's own
/// check that it reached the node it meant). `key` also counts Noise handshakes that failed
/// because one side does not hold the key the other side's member list gives for it.
pub const REFUSAL_REASONS: [&str; 6] = [
    "version",
    "unknown_node",
    "membership",
    "protocol",
    "key",
    "wrong_node",
];

/// One peer node's link counters, written by the link thread (and `queued_bytes` and `full`
/// by the shards that send).
#[derive(Default)]
pub struct PeerMetrics {
    /// 1 while every link of the pool to the peer is up.
    pub up: AtomicU64,
    /// Links of the pool that are up.
    pub links_up: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Payload bytes accepted by `send` and not yet handed to a link's output buffer; also the
    /// count the `--peer-queue-bytes` bound is checked against.
    pub queued_bytes: AtomicU64,
    /// Dials after the first of each link (after a failure or a refusal).
    pub reconnects: AtomicU64,
    /// Payloads dropped because their link went down before they were written.
    pub dropped: AtomicU64,
    /// Sends refused because the queue was at its bound.
    pub full: AtomicU64,
    /// Client requests forwarded to this peer (`FORWARD`, the internal user checks included).
    pub forwards: AtomicU64,
    /// Forwarded requests this peer did not answer within 2 s (answered `UNAVAILABLE`).
    pub forward_timeouts: AtomicU64,
    /// `PUSH_BATCH`es sent to this peer: one per push per node with recipients there.
    pub push_batches: AtomicU64,
    /// `PUSH_BATCH`es not sent because the peer was down or its queue full (best effort: its
    /// users sync what they missed).
    pub push_dropped: AtomicU64,
    /// Payloads from this peer not handed on because a mailbox or the read queue here was
    /// full (a forwarded request is answered `RATE_LIMITED` instead and not counted here).
    pub inbound_dropped: AtomicU64,
    /// Users of this node that the peer watches (`PRESENCE_WATCH`): their changes go to it.
    pub presence_watched: AtomicU64,
    /// Users of the peer that this node watches for its subscribers.
    pub presence_watching: AtomicU64,
    /// `PRESENCE_CHANGES` sent to the peer: one per round with changes it watches, or a state
    /// snapshot (refused ones count in `push_dropped`).
    pub presence_batches: AtomicU64,
    /// Watches of the peer ignored past the bound (`MAX_WATCHES_PER_PEER`).
    pub presence_refused: AtomicU64,
    /// Our dials this peer refused (`direction="out"`), by [`REFUSAL_REASONS`].
    pub refused_out: [AtomicU64; REFUSAL_REASONS.len()],
    /// Dials from this peer we refused (`direction="in"`).
    pub refused_in: [AtomicU64; REFUSAL_REASONS.len()],
}

/// Picks one counter out of a peer's counters.
type PeerField = fn(&PeerMetrics) -> &AtomicU64;

/// The link thread's counters: one [`PeerMetrics`] per other node.
#[derive(Default)]
pub struct LinkMetrics {
    /// (peer id, counters), in member-list order.
    pub peers: Vec<(String, PeerMetrics)>,
    /// Dials we refused from a node id that is not a member (`peer="unknown"`).
    pub refused_unknown: [AtomicU64; REFUSAL_REASONS.len()],
    /// Messages the link thread put into shard mailboxes (forwarded requests, answers, one
    /// per shard per push batch), from every peer.
    pub inbound_queued: AtomicU64,
    /// Shard wake-ups those took: one per shard fed per burst of the link thread, so
    /// `inbound_queued / inbound_wakes` is the messages each wake-up covered.
    pub inbound_wakes: AtomicU64,
}

impl LinkMetrics {
    pub fn new<'a>(peers: impl IntoIterator<Item = &'a str>) -> LinkMetrics {
        LinkMetrics {
            peers: peers
                .into_iter()
                .map(|id| (id.to_owned(), PeerMetrics::default()))
                .collect(),
            refused_unknown: Default::default(),
            inbound_queued: AtomicU64::new(0),
            inbound_wakes: AtomicU64::new(0),
        }
    }

    fn render(&self, out: &mut String) {
        let per_peer: [(&str, &str, PeerField); 19] = [
            ("courier_peer_up", "gauge", |p| &p.up),
            ("courier_peer_links_up", "gauge", |p| &p.links_up),
            ("courier_peer_frames_in_total", "counter", |p| &p.frames_in),
            ("courier_peer_frames_out_total", "counter", |p| {
                &p.frames_out
            }),
            ("courier_peer_bytes_in_total", "counter", |p| &p.bytes_in),
            ("courier_peer_bytes_out_total", "counter", |p| &p.bytes_out),
            ("courier_peer_queued_bytes", "gauge", |p| &p.queued_bytes),
            ("courier_peer_reconnects_total", "counter", |p| {
                &p.reconnects
            }),
            ("courier_peer_dropped_total", "counter", |p| &p.dropped),
            ("courier_peer_queue_full_total", "counter", |p| &p.full),
            ("courier_peer_forwards_total", "counter", |p| &p.forwards),
            ("courier_peer_forward_timeouts_total", "counter", |p| {
                &p.forward_timeouts
            }),
            ("courier_peer_push_batches_total", "counter", |p| {
                &p.push_batches
            }),
            ("courier_peer_push_dropped_total", "counter", |p| {
                &p.push_dropped
            }),
            ("courier_peer_inbound_dropped_total", "counter", |p| {
                &p.inbound_dropped
            }),
            ("courier_presence_remote_watches", "gauge", |p| {
                &p.presence_watched
            }),
            ("courier_presence_watching", "gauge", |p| {
                &p.presence_watching
            }),
            ("courier_peer_presence_batches_total", "counter", |p| {
                &p.presence_batches
            }),
            ("courier_presence_watches_refused_total", "counter", |p| {
                &p.presence_refused
            }),
        ];
        for (name, kind, f) in per_peer {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (peer, m) in &self.peers {
                let _ = writeln!(out, "{name}{{peer=\"{peer}\"}} {}", load(f(m)));
            }
        }
        for (name, v) in [
            ("courier_peer_inbound_queued_total", &self.inbound_queued),
            ("courier_peer_inbound_wakes_total", &self.inbound_wakes),
        ] {
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", load(v));
        }
        let _ = writeln!(out, "# TYPE courier_peer_refusals_total counter");
        for (i, reason) in REFUSAL_REASONS.iter().enumerate() {
            for (peer, m) in &self.peers {
                for (direction, v) in [("out", &m.refused_out[i]), ("in", &m.refused_in[i])] {
                    let _ = writeln!(
                        out,
                        "courier_peer_refusals_total{{peer=\"{peer}\",direction=\"{direction}\",reason=\"{reason}\"}} {}",
                        load(v)
                    );
                }
            }
            let _ = writeln!(
                out,
                "courier_peer_refusals_total{{peer=\"unknown\",direction=\"in\",reason=\"{reason}\"}} {}",
                load(&self.refused_unknown[i])
            );
        }
    }
}

/// Trims of the heap's free memory (`shard::heap`): `courier_malloc_trims_total` and
/// `courier_malloc_trim_seconds_total` (the time the trims took, each with the arenas locked).
#[derive(Debug, Default)]
pub struct HeapMetrics {
    trims: AtomicU64,
    trim_us: AtomicU64,
}

impl HeapMetrics {
    /// Counts one trim that took `took`.
    pub fn trimmed(&self, took: Duration) {
        self.trims.fetch_add(1, Ordering::Relaxed);
        self.trim_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn trims(&self) -> u64 {
        load(&self.trims)
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# TYPE courier_malloc_trims_total counter\ncourier_malloc_trims_total {}",
            self.trims()
        );
        let _ = writeln!(
            out,
            "# TYPE courier_malloc_trim_seconds_total counter\ncourier_malloc_trim_seconds_total {:.6}",
            load(&self.trim_us) as f64 / 1e6
        );
    }
}

/// The media garbage collector's counters (only its thread writes them).
#[derive(Default)]
pub struct MediaMetrics {
    /// Parts of abandoned uploads deleted.
    pub collected_parts: AtomicU64,
    /// Blobs sent in no message within their grace period, deleted.
    pub collected_blobs: AtomicU64,
    /// Collector passes that failed (logged with their error).
    pub collector_failures: AtomicU64,
}

/// The push notifier's counters (`push::Notifier`).
#[derive(Debug, Default)]
pub struct PushMetrics {
    /// Notifications the gateway took (2xx).
    pub sent: AtomicU64,
    /// Attempts that failed and are retried: no answer (connect error, timeout) …
    pub failed_network: AtomicU64,
    /// … or a 5xx or 429 answer.
    pub failed_server: AtomicU64,
    /// Notifications dropped on another 4xx (logged once per status).
    pub refused: AtomicU64,
    /// Notifications dropped undelivered after the give-up time (24 h).
    pub gave_up: AtomicU64,
    /// Registrations removed because the gateway answered their push key in `rejected`.
    pub rejected_keys: AtomicU64,
    /// Retries scheduled (with backoff).
    pub retries: AtomicU64,
    /// Rows in the outbox, RocksDB's estimate after the latest full pass.
    pub outbox_rows: AtomicU64,
}

impl PushMetrics {
    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "# TYPE courier_push_sent_total counter");
        let _ = writeln!(out, "courier_push_sent_total {}", load(&self.sent));
        let _ = writeln!(out, "# TYPE courier_push_failed_total counter");
        for (reason, v) in [
            ("network", &self.failed_network),
            ("server_error", &self.failed_server),
            ("refused", &self.refused),
            ("gave_up", &self.gave_up),
        ] {
            let _ = writeln!(
                out,
                "courier_push_failed_total{{reason=\"{reason}\"}} {}",
                load(v)
            );
        }
        for (name, kind, v) in [
            (
                "courier_push_rejected_keys_total",
                "counter",
                &self.rejected_keys,
            ),
            ("courier_push_retries_total", "counter", &self.retries),
            ("courier_push_outbox_rows", "gauge", &self.outbox_rows),
        ] {
            let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {}", load(v));
        }
    }
}

/// Every shard's counters, the read pool's, and the store's health.
pub struct Metrics {
    pub shards: Box<[ShardMetrics]>,
    pub reads: ReadMetrics,
    /// The cluster links' counters, set once at start when the node has peers.
    pub links: OnceLock<Arc<LinkMetrics>>,
    /// Cross-node reads; rendered with the links.
    pub cluster_reads: Arc<ClusterReadMetrics>,
    pub media: Arc<MediaMetrics>,
    pub push: Arc<PushMetrics>,
    pub heap: HeapMetrics,
    /// Whether commits reach the disk: `courier_commit_failures_total`, `courier_ready`, `/health`.
    pub store: Arc<Health>,
}

fn load(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Metrics {
    pub fn new(shards: usize, store: Arc<Health>) -> Arc<Metrics> {
        Arc::new(Metrics {
            shards: (0..shards).map(|_| ShardMetrics::default()).collect(),
            store,
            reads: ReadMetrics::default(),
            links: OnceLock::new(),
            cluster_reads: Arc::default(),
            media: Arc::default(),
            push: Arc::default(),
            heap: HeapMetrics::default(),
        })
    }

    /// Whether the server can serve writes: `/health` answers 200 when true, 503 when not.
    pub fn ready(&self) -> bool {
        !self.store.failing()
    }

    /// `(status line, body)` of `GET /health`.
    pub fn health(&self) -> (&'static str, String) {
        match self.store.last_error() {
            None => ("200 OK", "ready\n".to_owned()),
            Some(error) => (
                "503 Service Unavailable",
                format!(
                    "not ready: writes to the data directory fail ({} failed so far): {error}\n",
                    self.store.failures()
                ),
            ),
        }
    }

    fn sum(&self, f: impl Fn(&ShardMetrics) -> &AtomicU64) -> u64 {
        self.shards.iter().map(|s| load(f(s))).sum()
    }

    /// Process-wide totals as (name, value), for `ADMIN_STATS`.
    pub fn totals(&self) -> Vec<(String, u64)> {
        let mut out = vec![
            ("connections".to_owned(), self.sum(|s| &s.connections)),
            ("ws_connections".to_owned(), self.sum(|s| &s.ws_connections)),
            ("authenticated".to_owned(), self.sum(|s| &s.authenticated)),
            ("frames_in".to_owned(), self.sum(|s| &s.frames_in)),
            ("frames_out".to_owned(), self.sum(|s| &s.frames_out)),
            ("bytes_in".to_owned(), self.sum(|s| &s.bytes_in)),
            ("bytes_out".to_owned(), self.sum(|s| &s.bytes_out)),
            ("rate_limited".to_owned(), self.sum(|s| &s.rate_limited)),
            ("auth_throttled".to_owned(), self.sum(|s| &s.auth_throttled)),
            (
                "mailbox_overflows".to_owned(),
                self.sum(|s| &s.mailbox_overflows),
            ),
            ("shards".to_owned(), self.shards.len() as u64),
            ("commit_failures".to_owned(), self.store.failures()),
            ("read_queue_depth".to_owned(), load(&self.reads.queued)),
            ("reads".to_owned(), load(&self.reads.done)),
            ("reads_refused".to_owned(), load(&self.reads.refused)),
            (
                "media_collected_parts".to_owned(),
                load(&self.media.collected_parts),
            ),
            (
                "media_collected_blobs".to_owned(),
                load(&self.media.collected_blobs),
            ),
            (
                "media_collector_failures".to_owned(),
                load(&self.media.collector_failures),
            ),
            ("push_sent".to_owned(), load(&self.push.sent)),
            ("push_retries".to_owned(), load(&self.push.retries)),
            (
                "push_rejected_keys".to_owned(),
                load(&self.push.rejected_keys),
            ),
        ];
        for r in Reason::ALL {
            out.push((
                format!("disconnects_{}", r.name()),
                self.sum(|s| &s.disconnects[r as usize]),
            ));
        }
        out
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let per_shard: [(&str, &str, Field); 14] = [
            ("courier_connections", "gauge", |s| &s.connections),
            ("courier_ws_connections", "gauge", |s| &s.ws_connections),
            ("courier_authenticated_sessions", "gauge", |s| {
                &s.authenticated
            }),
            ("courier_mailbox_depth", "gauge", |s| &s.mailbox_depth),
            ("courier_mailbox_overflow_pending", "gauge", |s| {
                &s.overflow_pending
            }),
            ("courier_mailbox_overflows_total", "counter", |s| {
                &s.mailbox_overflows
            }),
            ("courier_shard_polls_total", "counter", |s| &s.polls),
            ("courier_shard_wakes_total", "counter", |s| &s.wakes),
            ("courier_shard_wakes_elided_total", "counter", |s| {
                &s.wakes_elided
            }),
            ("courier_rate_limited_total", "counter", |s| &s.rate_limited),
            ("courier_auth_throttled_total", "counter", |s| {
                &s.auth_throttled
            }),
            ("courier_paused_reads_total", "counter", |s| &s.paused_reads),
            ("courier_paused_connections", "gauge", |s| &s.paused_now),
            ("courier_dedupe_cache_bytes", "gauge", |s| {
                &s.dedupe_cache_bytes
            }),
        ];
        for (name, kind, f) in per_shard {
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (i, s) in self.shards.iter().enumerate() {
                let _ = writeln!(out, "{name}{{shard=\"{i}\"}} {}", load(f(s)));
            }
        }
        let totals: [(&str, Field); 4] = [
            ("courier_frames_in_total", |s| &s.frames_in),
            ("courier_frames_out_total", |s| &s.frames_out),
            ("courier_bytes_in_total", |s| &s.bytes_in),
            ("courier_bytes_out_total", |s| &s.bytes_out),
        ];
        for (name, f) in totals {
            let _ = writeln!(out, "# TYPE {name} counter\n{name} {}", self.sum(f));
        }
        let _ = writeln!(out, "# TYPE courier_disconnects_total counter");
        for r in Reason::ALL {
            let _ = writeln!(
                out,
                "courier_disconnects_total{{reason=\"{}\"}} {}",
                r.name(),
                self.sum(|s| &s.disconnects[r as usize])
            );
        }
        let _ = writeln!(out, "# TYPE courier_noise_failures_total counter");
        for f in NoiseFailure::ALL {
            let _ = writeln!(
                out,
                "courier_noise_failures_total{{reason=\"{}\"}} {}",
                f.name(),
                self.sum(|s| &s.noise_failures[f as usize])
            );
        }
        let _ = writeln!(out, "# TYPE courier_ws_upgrade_refusals_total counter");
        for r in WsRefusal::ALL {
            let _ = writeln!(
                out,
                "courier_ws_upgrade_refusals_total{{reason=\"{}\"}} {}",
                r.name(),
                self.sum(|s| &s.ws_refusals[r as usize])
            );
        }
        let _ = writeln!(out, "# TYPE courier_commit_seconds histogram");
        let mut cumulative = 0;
        for (i, bound) in COMMIT_BUCKETS_US.iter().enumerate() {
            cumulative += self.sum(|s| &s.commit_buckets[i]);
            let _ = writeln!(
                out,
                "courier_commit_seconds_bucket{{le=\"{}\"}} {cumulative}",
                *bound as f64 / 1e6
            );
        }
        cumulative += self.sum(|s| &s.commit_buckets[COMMIT_BUCKETS_US.len()]);
        let _ = writeln!(
            out,
            "courier_commit_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
        );
        let _ = writeln!(
            out,
            "courier_commit_seconds_sum {}",
            self.sum(|s| &s.commit_sum_us) as f64 / 1e6
        );
        let _ = writeln!(out, "courier_commit_seconds_count {cumulative}");
        let _ = writeln!(
            out,
            "# TYPE courier_commit_failures_total counter\ncourier_commit_failures_total {}",
            self.store.failures()
        );
        let _ = writeln!(
            out,
            "# TYPE courier_ready gauge\ncourier_ready {}",
            u8::from(self.ready())
        );
        let reads: [(&str, &str, &AtomicU64); 3] = [
            ("courier_read_queue_depth", "gauge", &self.reads.queued),
            ("courier_reads_total", "counter", &self.reads.done),
            (
                "courier_reads_refused_total",
                "counter",
                &self.reads.refused,
            ),
        ];
        for (name, kind, v) in reads {
            let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {}", load(v));
        }
        if let Some(links) = self.links.get() {
            links.render(&mut out);
            let c = &self.cluster_reads;
            for (name, v) in [
                ("courier_cluster_read_parts_total", &c.parts_asked),
                ("courier_cluster_read_unavailable_total", &c.unavailable),
                ("courier_cluster_read_late_replies_total", &c.late_replies),
                ("courier_cluster_read_parts_refused_total", &c.parts_refused),
            ] {
                let _ = writeln!(out, "# TYPE {name} counter\n{name} {}", load(v));
            }
        }
        let media: [(&str, &AtomicU64); 3] = [
            (
                "courier_media_collected_parts_total",
                &self.media.collected_parts,
            ),
            (
                "courier_media_collected_blobs_total",
                &self.media.collected_blobs,
            ),
            (
                "courier_media_collector_failures_total",
                &self.media.collector_failures,
            ),
        ];
        for (name, v) in media {
            let _ = writeln!(out, "# TYPE {name} counter\n{name} {}", load(v));
        }
        self.push.render(&mut out);
        self.heap.render(&mut out);
        out
    }
}

/// Bytes the C allocator has handed out and not had back: the process's live heap, RocksDB's
/// included, from glibc's `mallinfo2` (`uordblks` in the arenas plus `hblkhd` mapped on their
/// own). Unlike RSS it leaves out what was freed but is kept by the allocator for reuse, so
/// it says what is alive, not how high it once went. `None` off glibc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn heap_in_use() -> Option<u64> {
    // SAFETY: `mallinfo2` takes no arguments and only reads the allocator's statistics,
    // locking each arena itself; it is safe to call from any thread at any time.
    let m = unsafe { libc::mallinfo2() };
    Some(m.uordblks.saturating_add(m.hblkhd) as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn heap_in_use() -> Option<u64> {
    None
}

/// Appends the live heap ([`heap_in_use`]) and RocksDB's memory by its own accounting
/// (bounded by the store's budgets, not by connections), or a comment saying why it could
/// not be read.
fn render_store(out: &mut String, store: &Store) {
    if let Some(bytes) = heap_in_use() {
        let _ = writeln!(
            out,
            "# TYPE courier_heap_in_use_bytes gauge\ncourier_heap_in_use_bytes {bytes}"
        );
    }
    match store.memory() {
        Ok(m) => {
            let _ = writeln!(out, "# TYPE courier_rocksdb_memory_bytes gauge");
            for (part, bytes) in [
                ("memtables", m.memtables),
                ("table_readers", m.table_readers),
                ("block_cache", m.block_cache),
            ] {
                let _ = writeln!(
                    out,
                    "courier_rocksdb_memory_bytes{{part=\"{part}\"}} {bytes}"
                );
            }
        }
        Err(e) => {
            let _ = writeln!(out, "# courier_rocksdb_memory_bytes unavailable: {e}");
        }
    }
}

/// Serves HTTP/1.0 on `addr`, one request at a time, on its own thread: `GET /health` is 200
/// while the server is ready and 503 while writes fail (for load balancers and service
/// managers); any other path is the Prometheus text: the counters of `metrics` and the memory
/// of `store`. Returns the bound address.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>, store: Store) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new().name("metrics".into()).spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
            // The request itself does not matter; read what arrived so the close is clean.
            // The request line decides the answer: read until it is complete (bounded by the
            // buffer and the read timeout).
            let mut request = [0u8; 1024];
            let mut n = 0;
            while n < request.len() && !request[..n].contains(&b'\n') {
                match stream.read(&mut request[n..]) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += k,
                }
            }
            let (status, body) = if is_health(&request[..n]) {
                metrics.health()
            } else {
                let mut body = metrics.render();
                render_store(&mut body, &store);
                ("200 OK", body)
            };
            let head = format!(
                "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(body.as_bytes()));
        }
    })?;
    Ok(bound)
}

/// Whether an HTTP request asks for `/health`.
fn is_health(request: &[u8]) -> bool {
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut words = line.split(|&b| b == b' ');
    let _method = words.next();
    matches!(words.next(), Some(b"/health"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn the_live_heap_follows_allocations_and_frees() {
        // Other tests of this binary allocate meanwhile: a block far larger than their
        // churn, zeroed (mapped by the allocator, never touched: it costs no RSS).
        const BLOCK: u64 = 1 << 30;
        const CHURN: u64 = 256 << 20;
        let before = heap_in_use().unwrap();
        let block = std::hint::black_box(vec![0u8; BLOCK as usize]);
        let during = heap_in_use().unwrap();
        assert!(during + CHURN >= before + BLOCK, "{before} -> {during}");
        drop(block);
        let after = heap_in_use().unwrap();
        assert!(
            after + BLOCK <= during + CHURN,
            "{during} -> {after}: freed, no longer live"
        );
    }

    #[test]
    fn only_the_health_path_is_health() {
        assert!(is_health(b"GET /health HTTP/1.0\r\n\r\n"));
        assert!(!is_health(b"GET /metrics HTTP/1.0\r\n\r\n"));
        assert!(!is_health(b"GET /healthz HTTP/1.0\r\n"));
        assert!(!is_health(b""));
    }

    #[test]
    fn render_sums_shards_and_buckets() {
        let m = Metrics::new(2, Arc::default());
        ShardMetrics::add(&m.shards[0].frames_in, 3);
        ShardMetrics::add(&m.shards[1].frames_in, 4);
        m.shards[1].disconnected(Reason::SlowConsumer);
        m.shards[0].commit_took(75);
        m.shards[1].commit_took(1_000_000);
        let text = m.render();
        assert!(text.contains("courier_frames_in_total 7"), "{text}");
        assert!(text.contains("courier_disconnects_total{reason=\"slow_consumer\"} 1"));
        m.shards[0].noise_failed(NoiseFailure::RecordAuth);
        let text = m.render();
        assert!(text.contains("courier_noise_failures_total{reason=\"record_auth\"} 1"));
        assert!(text.contains("courier_commit_seconds_bucket{le=\"0.0001\"} 1"));
        assert!(text.contains("courier_commit_seconds_bucket{le=\"+Inf\"} 2"));
        ShardMetrics::add(&m.reads.queued, 5);
        assert!(m.render().contains("courier_read_queue_depth 5"));
    }

    #[test]
    fn peer_counters_are_rendered_per_peer_once_links_exist() {
        let m = Metrics::new(1, Arc::default());
        assert!(!m.render().contains("courier_peer_up"));
        let links = Arc::new(LinkMetrics::new(["b", "c"]));
        ShardMetrics::add(&links.peers[1].1.up, 1);
        ShardMetrics::add(&links.peers[0].1.refused_out[2], 1);
        assert!(m.links.set(links).is_ok());
        let text = m.render();
        assert!(text.contains("courier_peer_up{peer=\"b\"} 0"), "{text}");
        assert!(text.contains("courier_peer_up{peer=\"c\"} 1"), "{text}");
        assert!(text.contains(
            "courier_peer_refusals_total{peer=\"b\",direction=\"out\",reason=\"membership\"} 1"
        ));
        ShardMetrics::add(&m.cluster_reads.late_replies, 2);
        let text = m.render();
        assert!(
            text.contains("courier_cluster_read_late_replies_total 2"),
            "{text}"
        );
        assert!(
            text.contains("courier_cluster_read_unavailable_total 0"),
            "{text}"
        );
    }

    #[test]
    fn shard_counters_do_not_share_cache_lines() {
        assert_eq!(std::mem::align_of::<ShardMetrics>(), 128);
    }
}
