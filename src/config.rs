//! `courier serve` options: command line, optional TOML file, defaults.
//!
//! Every option has the same name in both places (`--max-output` on the command line is
//! `max_output` in the file). A value given on the command line wins over the file, which wins
//! over the default. The file is strict: an unknown key or a value of the wrong type is an
//! error that names the key, so a typo never silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use courier_protocol::noise::PublicKey;
use courier_protocol::MAX_FRAME_LEN;

use crate::store::FsyncMode;

/// Listen addresses a server accepts (each shard reserves a token per address).
pub const MAX_LISTEN: usize = 64;

/// Connections one client address may hold by default: a NAT'd office or a carrier-grade NAT
/// address fits (hundreds of people, a device or two each), and one host can take no more than
/// a thousandth of a server sized for a million connections. Load tests from one machine
/// spread their connections over 127.0.0.x (the loadgen does, one address per 1,000) or raise
/// the cap.
pub const DEFAULT_MAX_CONNS_PER_ADDR: u32 = 1000;

/// Members a group may have by default (fewer when `max_frame` cannot carry that many).
pub const DEFAULT_MAX_GROUP: usize = 1024;
/// Contacts a user may have by default (fewer when `max_frame` cannot carry that many).
pub const DEFAULT_MAX_CONTACTS: usize = 1000;
/// The most bytes one contact takes in CONTACTS: id, handle length, a 32-byte handle.
const CONTACT_BYTES: usize = 8 + 2 + 32;
/// The bytes one member takes in a `Thread` (THREAD_INFO, SYNC_BATCH).
const MEMBER_BYTES: usize = 25;
/// A `Thread` without its members, name and label at their longest, plus the frame header.
const THREAD_BYTES: usize = 8 + 1 + 66 + 2 + 8 + 1 + 1 + 66 + 9;

/// The largest reply body the server builds for a `max_frame`: replies must fit the frame
/// limit clients were told in WELCOME, headers included, with room to spare.
pub fn reply_budget(max_frame: u32) -> usize {
    max_frame as usize / 16 * 15
}

/// How many members one THREAD_INFO frame can carry under `max_frame`.
pub fn members_that_fit(max_frame: u32) -> usize {
    reply_budget(max_frame).saturating_sub(THREAD_BYTES) / MEMBER_BYTES
}

/// How many contacts one CONTACTS frame can carry under `max_frame`.
pub fn contacts_that_fit(max_frame: u32) -> usize {
    reply_budget(max_frame).saturating_sub(16) / CONTACT_BYTES
}

/// What to do instead of the removed `admin` option (a handle made whoever registered it
/// first an admin).
pub const ADMIN_REMOVED: &str = "admin rights no longer go to whoever registers a configured handle. \
Remove `admin` from the configuration, stop the server and grant them by account: \
`courier admin grant --data-dir DIR --handle HANDLE` (or `--user ID`); `courier admin list` shows the grants";

/// The longest registration window: 30 days.
pub const MAX_REGISTER_WINDOW_SECS: u64 = 30 * 86_400;

/// The longest dedupe window: 30 days.
pub const MAX_DEDUPE_WINDOW_SECS: u64 = 30 * 86_400;

/// A configuration that cannot be used, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("the config file {path} has a bad `{key}`: {message}")]
    Key {
        path: PathBuf,
        key: String,
        message: String,
    },
    #[error("`{key}` (--{}) was removed: {what_to_do}", .key.replace('_', "-"))]
    Removed {
        key: &'static str,
        what_to_do: &'static str,
    },
    #[error("`{key}` = {value} is not allowed: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: &'static str,
    },
}

/// `--fsync` and `fsync =`: how a commit is made durable before its acknowledgements go out
/// ([`FsyncMode`], which the store keeps free of command-line and file-format concerns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// Every request's writes are one WAL write and one fsync, before its ack.
    Always,
    /// Group commit: all writes of one event-loop round are one WAL write and one fsync,
    /// before any of that round's acks.
    Batch,
    /// The WAL is written (so a process crash loses nothing) but not synced (a power loss may).
    Never,
}

impl From<Fsync> for FsyncMode {
    fn from(fsync: Fsync) -> FsyncMode {
        match fsync {
            Fsync::Always => FsyncMode::Always,
            Fsync::Batch => FsyncMode::Batch,
            Fsync::Never => FsyncMode::Never,
        }
    }
}

/// The options as given on the command line; `None`/empty means "not given".
#[derive(Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// TOML file with the same options (underscores instead of dashes); the command line wins.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where RocksDB keeps its files [default: ./data].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address to accept clients on; repeatable. Port 0 picks a free port [default: 127.0.0.1:7878].
    #[arg(long)]
    pub listen: Vec<SocketAddr>,
    /// Address to accept WebSocket clients on (browsers; RFC 6455, binary messages carrying
    /// the same bytes as TCP); repeatable. Port 0 picks a free port [default: none].
    #[arg(long)]
    pub listen_ws: Vec<SocketAddr>,
    /// An `Origin` allowed to open WebSocket connections (e.g. https://chat.example.com);
    /// repeatable; others are refused with HTTP 403 [default: none given, any origin].
    #[arg(long)]
    pub ws_allowed_origin: Vec<String>,
    /// Serve the web chat page from this folder (web/ after `npm run build:web`: index.html,
    /// style.css, dist/) to plain HTTP GETs on the --listen-ws ports; read once at start.
    #[arg(long)]
    pub web_root: Option<PathBuf>,
    /// Event-loop threads [default: one per core].
    #[arg(long)]
    pub shards: Option<usize>,
    /// Serve Prometheus metrics over HTTP on this address.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// When a commit reaches the disk [default: batch].
    #[arg(long, value_enum)]
    pub fsync: Option<Fsync>,
    /// With `--fsync batch`: a shard with nothing else to do writes and syncs its round on
    /// its own thread instead of handing it to its writer thread (two wake-ups fewer per
    /// round, but the shard's loop waits for the sync). Off by default: see BENCHMARKS.md,
    /// "Issue 13: the 1K/s tail (plat)".
    #[arg(long)]
    pub commit_inline_when_idle: bool,
    /// Heartbeat period announced to clients; 3 missed periods close the connection [default: 30].
    #[arg(long)]
    pub heartbeat_secs: Option<u16>,
    /// Seconds a new connection has to say HELLO and authenticate [default: 10].
    #[arg(long)]
    pub handshake_timeout_secs: Option<u64>,
    /// Connections accepted at once [default: the open files limit minus a reserve].
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Connections one client address may hold (an IPv6 /64 counts as one address); more are
    /// refused with SERVER_FULL [default: 1000].
    #[arg(long)]
    pub max_conns_per_addr: Option<u32>,
    /// Largest frame accepted, in bytes [default: 65536].
    #[arg(long)]
    pub max_frame: Option<u32>,
    /// Unsent bytes a connection may queue before it is cut off as a slow consumer [default: 4 MiB].
    #[arg(long)]
    pub max_output: Option<usize>,
    /// Requests per second per connection, with bursts of twice that [default: 500].
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// Removed: admin rights are granted by user id with `courier admin grant`. Still parsed
    /// so that an old command line gets an error saying so, not "unexpected argument".
    #[arg(long, hide = true)]
    pub admin: Vec<String>,
    /// argon2id memory cost in KiB [default: 19456].
    #[arg(long)]
    pub argon2_m_kib: Option<u32>,
    /// Accounts one source address (IPv4 address, IPv6 /64) may register per
    /// register-window-secs [default: 20].
    #[arg(long)]
    pub register_per_address: Option<u32>,
    /// The window of register-per-address, in seconds [default: 3600].
    #[arg(long)]
    pub register_window_secs: Option<u64>,
    /// Days a session token may go unused before it expires (RESUME then answers
    /// INVALID_TOKEN; the device logs in with its password) [default: 90].
    #[arg(long)]
    pub token_idle_days: Option<u32>,
    /// Members a group may have; THREAD_INFO must fit in max_frame [default: 1024, or fewer
    /// when max_frame is small].
    #[arg(long)]
    pub max_group: Option<usize>,
    /// Largest message body in bytes [default: 16384].
    #[arg(long)]
    pub max_body: Option<usize>,
    /// Bytes read from one connection per event-loop round before others get their turn
    /// [default: 262144].
    #[arg(long)]
    pub read_budget: Option<usize>,
    /// How long after sending a message its sender may recall it, in seconds [default: 3600].
    #[arg(long)]
    pub recall_window_secs: Option<u64>,
    /// How long after sending a message its sender may edit it, in seconds [default: 86400].
    #[arg(long)]
    pub edit_window_secs: Option<u64>,
    /// Different reactions one message may carry (each member has at most one) [default: 32].
    #[arg(long)]
    pub max_reactions_per_message: Option<usize>,
    /// Largest media upload in bytes [default: 104857600, 100 MiB].
    #[arg(long = "media-max-bytes", alias = "max-media")]
    pub max_media: Option<u64>,
    /// Bytes of media one user may have stored plus in uploads in progress; content stored
    /// for several users counts for each [default: 1073741824, 1 GiB].
    #[arg(long)]
    pub media_quota_bytes: Option<u64>,
    /// An upload with no chunk for this long is abandoned and its bytes collected, in seconds
    /// [default: 600].
    #[arg(long)]
    pub media_upload_timeout_secs: Option<u64>,
    /// Stored media sent in no message this long after its upload is deleted, in seconds
    /// [default: 86400].
    #[arg(long)]
    pub media_grace_secs: Option<u64>,
    /// Time between passes of the media garbage collector, in milliseconds [default: 60000].
    #[arg(long)]
    pub media_gc_interval_ms: Option<u64>,
    /// Push gateway for offline devices (Matrix push gateway API, e.g. Sygnal), plain HTTP:
    /// `http://127.0.0.1:5000` (POSTs go to its /_matrix/push/v1/notify). Without it no
    /// notification is queued at all; push registrations are still kept [default: none].
    #[arg(long)]
    pub push_gateway: Option<String>,
    /// How long a retried SEND (same client_msg_id) answers the original SENT, in seconds
    /// [default: 86400].
    #[arg(long)]
    pub dedupe_window_secs: Option<u64>,
    /// Device names one account may use [default: 100].
    #[arg(long)]
    pub max_devices: Option<u32>,
    /// Contacts one user may have; CONTACTS must fit in max_frame [default: 1000, or fewer
    /// when max_frame is small].
    #[arg(long)]
    pub max_contacts: Option<usize>,
    /// Messages one user may delete for themselves in one thread [default: 1000].
    #[arg(long)]
    pub max_deleted_per_thread: Option<usize>,
    /// Media uploads one user may have in progress [default: 8].
    #[arg(long)]
    pub max_uploads_per_user: Option<usize>,
    /// Threads that answer HISTORY, SYNC, LIST_THREADS, MEDIA_GET and READERS off the event
    /// loops [default: 2].
    #[arg(long)]
    pub read_threads: Option<usize>,
    /// Read requests in flight (queued, running, or answered but not yet taken by the shard)
    /// before new ones are refused with RATE_LIMITED [default: 1024].
    #[arg(long)]
    pub read_queue: Option<usize>,
    /// This node's id on the cluster ring, announced in WELCOME [default: node1].
    #[arg(long)]
    pub node_id: Option<String>,
    /// A node of the cluster as ID=CLIENT_ADDR@CLUSTER_ADDR#KEY (clients are redirected to
    /// CLIENT_ADDR, nodes link to CLUSTER_ADDR, an IP:PORT; KEY is that node's public key from
    /// `courier keys show`, left out only with --insecure-plaintext); repeatable. List every
    /// node, this one too, and give every node the same list.
    #[arg(long)]
    pub peer: Vec<String>,
    /// Address to accept other nodes' links on [default: this node's CLUSTER_ADDR in --peer].
    #[arg(long)]
    pub cluster_listen: Option<SocketAddr>,
    /// Links this node dials to each other node; one thread's traffic always uses one
    /// [default: 2].
    #[arg(long)]
    pub peer_links: Option<usize>,
    /// Bytes queued for one other node before sends to it are refused [default: 67108864].
    #[arg(long)]
    pub peer_queue_bytes: Option<u64>,
    /// Serve plain TCP instead of the encrypted transport (NOISE.md): passwords,
    /// tokens and messages cross the network readable. For local benchmarks and tests only.
    #[arg(long)]
    pub insecure_plaintext: bool,
}

/// The config file: the same options, all optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<Vec<SocketAddr>>,
    listen_ws: Option<Vec<SocketAddr>>,
    ws_allowed_origin: Option<Vec<String>>,
    web_root: Option<PathBuf>,
    shards: Option<usize>,
    metrics: Option<SocketAddr>,
    fsync: Option<Fsync>,
    commit_inline_when_idle: Option<bool>,
    heartbeat_secs: Option<u16>,
    handshake_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    max_conns_per_addr: Option<u32>,
    max_frame: Option<u32>,
    max_output: Option<usize>,
    rate_limit: Option<u32>,
    /// Removed (see [`ADMIN_REMOVED`]); any value is refused with that message.
    admin: Option<toml::Value>,
    argon2_m_kib: Option<u32>,
    register_per_address: Option<u32>,
    register_window_secs: Option<u64>,
    token_idle_days: Option<u32>,
    max_group: Option<usize>,
    max_body: Option<usize>,
    recall_window_secs: Option<u64>,
    edit_window_secs: Option<u64>,
    max_reactions_per_message: Option<usize>,
    #[serde(alias = "media_max_bytes")]
    max_media: Option<u64>,
    media_quota_bytes: Option<u64>,
    media_upload_timeout_secs: Option<u64>,
    media_grace_secs: Option<u64>,
    media_gc_interval_ms: Option<u64>,
    push_gateway: Option<String>,
    read_budget: Option<usize>,
    dedupe_window_secs: Option<u64>,
    max_devices: Option<u32>,
    max_contacts: Option<usize>,
    max_deleted_per_thread: Option<usize>,
    max_uploads_per_user: Option<usize>,
    read_threads: Option<usize>,
    read_queue: Option<usize>,
    node_id: Option<String>,
    peer: Option<Vec<String>>,
    cluster_listen: Option<SocketAddr>,
    peer_links: Option<usize>,
    peer_queue_bytes: Option<u64>,
    insecure_plaintext: Option<bool>,
}

/// The resolved configuration of a server.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: Vec<SocketAddr>,
    /// WebSocket listen addresses (`--listen-ws`).
    pub listen_ws: Vec<SocketAddr>,
    /// Origins allowed to upgrade; empty: any.
    pub ws_allowed_origins: Vec<String>,
    /// The web page's folder (`--web-root`).
    pub web_root: Option<PathBuf>,
    pub shards: usize,
    pub metrics: Option<SocketAddr>,
    pub fsync: FsyncMode,
    /// An idle shard commits its round itself (`--commit-inline-when-idle`).
    pub commit_inline_when_idle: bool,
    pub heartbeat_secs: u16,
    pub handshake_timeout_secs: u64,
    /// `None`: derived from the open files limit at start.
    pub max_connections: Option<usize>,
    /// Connections one client address may hold.
    pub max_conns_per_addr: u32,
    pub max_frame: u32,
    pub max_output: usize,
    pub rate_limit: u32,
    pub argon2_m_kib: u32,
    /// Registrations per source address per `register_window_secs`.
    pub register_per_address: u32,
    pub register_window_secs: u64,
    /// Days a session token may go unused before it expires.
    pub token_idle_days: u32,
    pub max_group: usize,
    pub max_body: usize,
    pub recall_window_secs: u64,
    pub edit_window_secs: u64,
    pub max_reactions_per_message: usize,
    pub max_media: u64,
    pub media_quota_bytes: u64,
    pub media_upload_timeout_secs: u64,
    pub media_grace_secs: u64,
    pub media_gc_interval_ms: u64,
    /// The push gateway's URL; `None`: no push notifications are queued.
    pub push_gateway: Option<String>,
    pub read_budget: usize,
    pub dedupe_window_secs: u64,
    pub max_devices: u32,
    pub max_contacts: usize,
    pub max_deleted_per_thread: usize,
    pub max_uploads_per_user: usize,
    /// Threads of the read pool.
    pub read_threads: usize,
    /// Reads in flight before the read pool refuses more.
    pub read_queue: usize,
    pub node_id: String,
    /// (id, client address) of every node of the cluster (this one too, when it has peers);
    /// empty for a single node.
    pub peers: Vec<(String, String)>,
    /// (id, cluster address) of the same nodes, in the same order: where links are dialed.
    pub cluster_addrs: Vec<(String, SocketAddr)>,
    /// (id, static Noise key) of the same nodes, in the same order; `None` only when the
    /// cluster runs with `--insecure-plaintext`.
    pub peer_keys: Vec<(String, Option<PublicKey>)>,
    /// Where this node accepts links; `None`: its own cluster address.
    pub cluster_listen: Option<SocketAddr>,
    /// Links dialed to each other node.
    pub peer_links: usize,
    /// Bytes queued per other node before sends are refused.
    pub peer_queue_bytes: u64,
    /// Plain TCP instead of the Noise transport (`--insecure-plaintext`).
    pub insecure_plaintext: bool,
}

impl Config {
    /// Merges the command line over the file named by `--config` (if any) over the defaults,
    /// and checks the result.
    pub fn load(args: ServeArgs) -> Result<Config, Error> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        if !args.admin.is_empty() || file.admin.is_some() {
            return Err(Error::Removed {
                key: "admin",
                what_to_do: ADMIN_REMOVED,
            });
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let listen = pick_list(args.listen, file.listen);
        let config = Config {
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./data")),
            listen: if listen.is_empty() {
                vec![SocketAddr::from(([127, 0, 0, 1], 7878))]
            } else {
                listen
            },
            listen_ws: pick_list(args.listen_ws, file.listen_ws),
            ws_allowed_origins: pick_list(args.ws_allowed_origin, file.ws_allowed_origin),
            web_root: args.web_root.or(file.web_root),
            shards: args.shards.or(file.shards).unwrap_or(cores),
            metrics: args.metrics.or(file.metrics),
            fsync: args
                .fsync
                .or(file.fsync)
                .map_or_else(FsyncMode::default, FsyncMode::from),
            commit_inline_when_idle: args.commit_inline_when_idle
                || file.commit_inline_when_idle.unwrap_or(false),
            heartbeat_secs: args.heartbeat_secs.or(file.heartbeat_secs).unwrap_or(30),
            handshake_timeout_secs: args
                .handshake_timeout_secs
                .or(file.handshake_timeout_secs)
                .unwrap_or(10),
            max_connections: args.max_connections.or(file.max_connections),
            max_conns_per_addr: args
                .max_conns_per_addr
                .or(file.max_conns_per_addr)
                .unwrap_or(DEFAULT_MAX_CONNS_PER_ADDR),
            max_frame: args.max_frame.or(file.max_frame).unwrap_or(64 * 1024),
            max_output: args.max_output.or(file.max_output).unwrap_or(4 << 20),
            rate_limit: args.rate_limit.or(file.rate_limit).unwrap_or(500),
            argon2_m_kib: args.argon2_m_kib.or(file.argon2_m_kib).unwrap_or(19 * 1024),
            register_per_address: args
                .register_per_address
                .or(file.register_per_address)
                .unwrap_or(20),
            register_window_secs: args
                .register_window_secs
                .or(file.register_window_secs)
                .unwrap_or(3600),
            token_idle_days: args.token_idle_days.or(file.token_idle_days).unwrap_or(90),
            max_group: 0,
            max_body: args.max_body.or(file.max_body).unwrap_or(16 * 1024),
            recall_window_secs: args
                .recall_window_secs
                .or(file.recall_window_secs)
                .unwrap_or(3600),
            edit_window_secs: args
                .edit_window_secs
                .or(file.edit_window_secs)
                .unwrap_or(86_400),
            max_reactions_per_message: args
                .max_reactions_per_message
                .or(file.max_reactions_per_message)
                .unwrap_or(32),
            max_media: args.max_media.or(file.max_media).unwrap_or(100 << 20),
            media_quota_bytes: args
                .media_quota_bytes
                .or(file.media_quota_bytes)
                .unwrap_or(1 << 30),
            media_upload_timeout_secs: args
                .media_upload_timeout_secs
                .or(file.media_upload_timeout_secs)
                .unwrap_or(600),
            media_grace_secs: args
                .media_grace_secs
                .or(file.media_grace_secs)
                .unwrap_or(86_400),
            media_gc_interval_ms: args
                .media_gc_interval_ms
                .or(file.media_gc_interval_ms)
                .unwrap_or(60_000),
            push_gateway: args.push_gateway.or(file.push_gateway),
            read_budget: args.read_budget.or(file.read_budget).unwrap_or(256 * 1024),
            dedupe_window_secs: args
                .dedupe_window_secs
                .or(file.dedupe_window_secs)
                .unwrap_or(86_400),
            max_devices: args.max_devices.or(file.max_devices).unwrap_or(100),
            max_contacts: 0,
            max_deleted_per_thread: args
                .max_deleted_per_thread
                .or(file.max_deleted_per_thread)
                .unwrap_or(1000),
            max_uploads_per_user: args
                .max_uploads_per_user
                .or(file.max_uploads_per_user)
                .unwrap_or(8),
            read_threads: args.read_threads.or(file.read_threads).unwrap_or(2),
            read_queue: args.read_queue.or(file.read_queue).unwrap_or(1024),
            node_id: args
                .node_id
                .or(file.node_id)
                .unwrap_or_else(|| "node1".to_owned()),
            peers: Vec::new(),
            cluster_addrs: Vec::new(),
            peer_keys: Vec::new(),
            cluster_listen: args.cluster_listen.or(file.cluster_listen),
            peer_links: args.peer_links.or(file.peer_links).unwrap_or(2),
            peer_queue_bytes: args
                .peer_queue_bytes
                .or(file.peer_queue_bytes)
                .unwrap_or(64 << 20),
            insecure_plaintext: args.insecure_plaintext || file.insecure_plaintext.unwrap_or(false),
        };
        let mut config = config;
        for spec in pick_list(args.peer, file.peer) {
            let (id, client, cluster, key) = parse_peer(&spec)?;
            config.peers.push((id.clone(), client));
            config.cluster_addrs.push((id.clone(), cluster));
            config.peer_keys.push((id, key));
        }
        // Defaults that a small max_frame could not carry shrink to what it can.
        config.max_contacts = args
            .max_contacts
            .or(file.max_contacts)
            .unwrap_or(DEFAULT_MAX_CONTACTS.min(contacts_that_fit(config.max_frame)));
        config.max_group = args
            .max_group
            .or(file.max_group)
            .unwrap_or(DEFAULT_MAX_GROUP.min(members_that_fit(config.max_frame)));
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), Error> {
        let invalid = |key, value: &dyn std::fmt::Display, reason| {
            Err(Error::Invalid {
                key,
                value: value.to_string(),
                reason,
            })
        };
        if !(1..=1024).contains(&self.shards) {
            return invalid(
                "shards",
                &self.shards,
                "use 1 to 1024 shards (one per core is best)",
            );
        }
        if self.listen.len() + self.listen_ws.len() > MAX_LISTEN {
            return invalid(
                "listen",
                &(self.listen.len() + self.listen_ws.len()),
                "use at most 64 listen addresses (listen and listen_ws together)",
            );
        }
        if !(64..=MAX_FRAME_LEN).contains(&self.max_frame) {
            return invalid("max_frame", &self.max_frame, "use 64 to 1048576 bytes");
        }
        if self.heartbeat_secs == 0 {
            return invalid("heartbeat_secs", &0, "use at least 1 second");
        }
        if self.max_conns_per_addr == 0 {
            return invalid(
                "max_conns_per_addr",
                &0,
                "use at least 1 (the default 1000 lets a NAT'd office in and keeps one host to a small share)",
            );
        }
        if self.handshake_timeout_secs == 0 {
            return invalid("handshake_timeout_secs", &0, "use at least 1 second");
        }
        if self.max_output < self.max_frame as usize {
            return invalid(
                "max_output",
                &self.max_output,
                "must be at least max_frame, or no reply could be queued",
            );
        }
        if self.max_group < 2 {
            return invalid(
                "max_group",
                &self.max_group,
                "a group needs room for at least 2 members",
            );
        }
        if self.max_body + 1024 > self.max_frame as usize {
            return invalid(
                "max_body",
                &self.max_body,
                "must leave 1024 bytes of max_frame for the rest of a SEND",
            );
        }
        if self.read_budget == 0 {
            return invalid("read_budget", &0, "use at least 1 byte per round");
        }
        if !(1..=256).contains(&self.read_threads) {
            return invalid(
                "read_threads",
                &self.read_threads,
                "use 1 to 256 read threads",
            );
        }
        if !(1..=1 << 20).contains(&self.read_queue) {
            return invalid(
                "read_queue",
                &self.read_queue,
                "use 1 to 1048576 queued read requests",
            );
        }
        if !(1..=1 << 40).contains(&self.max_media) {
            return invalid(
                "max_media",
                &self.max_media,
                "use 1 byte to 1 TiB (1099511627776)",
            );
        }
        if self.media_quota_bytes < self.max_media {
            return invalid(
                "media_quota_bytes",
                &self.media_quota_bytes,
                "use at least --media-max-bytes, or no file of the largest size can be uploaded",
            );
        }
        if self.media_upload_timeout_secs == 0 {
            return invalid("media_upload_timeout_secs", &0, "use at least 1 second");
        }
        if !(10..=86_400_000).contains(&self.media_gc_interval_ms) {
            return invalid(
                "media_gc_interval_ms",
                &self.media_gc_interval_ms,
                "use 10 ms to one day (86400000)",
            );
        }
        if let Some(url) = &self.push_gateway {
            if crate::push::NotifierConfig::new(url).is_err() {
                return invalid(
                    "push_gateway",
                    url,
                    "use a plain http:// URL with a host, e.g. http://127.0.0.1:5000 (the \
                     gateway, e.g. Sygnal, next to the server or behind a local TLS proxy)",
                );
            }
        }
        if !(1..=MAX_DEDUPE_WINDOW_SECS).contains(&self.dedupe_window_secs) {
            return invalid(
                "dedupe_window_secs",
                &self.dedupe_window_secs,
                "use 1 second to 30 days (86400, one day, covers any sane retry)",
            );
        }
        if self.max_devices == 0 {
            return invalid("max_devices", &0, "use at least 1 device per account");
        }
        if self.max_contacts > contacts_that_fit(self.max_frame) {
            return invalid(
                "max_contacts",
                &self.max_contacts,
                "CONTACTS lists every contact in one frame: raise max_frame (each contact takes up to 42 bytes) or lower max_contacts",
            );
        }
        if !(1..=256).contains(&self.max_reactions_per_message) {
            return invalid(
                "max_reactions_per_message",
                &self.max_reactions_per_message,
                "use 1 to 256 different reactions per message (each is listed with the message)",
            );
        }
        if self.max_deleted_per_thread == 0 {
            return invalid("max_deleted_per_thread", &0, "use at least 1");
        }
        if self.max_uploads_per_user == 0 {
            return invalid("max_uploads_per_user", &0, "use at least 1");
        }
        if self.max_group > members_that_fit(self.max_frame) {
            return invalid(
                "max_group",
                &self.max_group,
                "THREAD_INFO lists every member in one frame: raise max_frame (each member takes 25 bytes) or lower max_group",
            );
        }
        if self.register_per_address == 0 {
            return invalid(
                "register_per_address",
                &0,
                "use at least 1 account per address and window",
            );
        }
        if !(1..=MAX_REGISTER_WINDOW_SECS).contains(&self.register_window_secs) {
            return invalid(
                "register_window_secs",
                &self.register_window_secs,
                "use 1 second to 30 days",
            );
        }
        if !(1..=3650).contains(&self.token_idle_days) {
            return invalid(
                "token_idle_days",
                &self.token_idle_days,
                "use 1 to 3650 days",
            );
        }
        if self.rate_limit == 0 {
            return invalid("rate_limit", &0, "use at least 1 request per second");
        }
        if self.max_connections == Some(0) {
            return invalid(
                "max_connections",
                &0,
                "use at least 1, or leave it out to derive it from the open files limit",
            );
        }
        if self.node_id.is_empty() {
            return invalid("node_id", &"\"\"", "a node id must not be empty");
        }
        self.check_cluster()
    }

    fn check_cluster(&self) -> Result<(), Error> {
        let invalid = |key, value: &dyn std::fmt::Display, reason| {
            Err(Error::Invalid {
                key,
                value: value.to_string(),
                reason,
            })
        };
        if !(1..=16).contains(&self.peer_links) {
            return invalid("peer_links", &self.peer_links, "use 1 to 16 links per node");
        }
        if !(crate::cluster::links::MIN_QUEUE_BYTES..=1 << 40).contains(&self.peer_queue_bytes) {
            return invalid(
                "peer_queue_bytes",
                &self.peer_queue_bytes,
                "use 2097152 (one largest node frame) to 1099511627776 bytes",
            );
        }
        if self.peers.is_empty() {
            return Ok(());
        }
        if let Err(e) = crate::cluster::links::Membership::new(self.members(), &self.node_id) {
            return invalid(
                "peer",
                &e,
                "list every node of the cluster once, this one too (its id is node_id), with the same --peer list on every node",
            );
        }
        if !self.insecure_plaintext {
            if let Some((id, _)) = self.peer_keys.iter().find(|(_, key)| key.is_none()) {
                return invalid(
                    "peer",
                    id,
                    "links are encrypted, so every node's entry needs its key: ID=CLIENT_ADDR@CLUSTER_ADDR#KEY, KEY from `courier keys show --data-dir DIR` on that node (or run every node with --insecure-plaintext, for local benchmarks only)",
                );
            }
        }
        Ok(())
    }

    /// Every node of the cluster, from `--peer` (empty for a single node).
    pub fn members(&self) -> Vec<crate::cluster::links::Node> {
        self.peers
            .iter()
            .zip(&self.cluster_addrs)
            .zip(&self.peer_keys)
            .map(
                |(((id, client), (_, cluster)), (_, key))| crate::cluster::links::Node {
                    id: id.clone(),
                    client_addr: client.clone(),
                    cluster_addr: *cluster,
                    key: *key,
                },
            )
            .collect()
    }
}

/// The command line's list if it has any entries, else the file's.
fn pick_list<T>(cli: Vec<T>, file: Option<Vec<T>>) -> Vec<T> {
    if cli.is_empty() {
        file.unwrap_or_default()
    } else {
        cli
    }
}

/// `ID=CLIENT_ADDR@CLUSTER_ADDR#KEY` into its four parts (`#KEY` is optional here; `check`
/// requires it unless the cluster is plaintext); the cluster address must be an IP and a port
/// (links are dialed from an event loop, which must not wait on name lookups).
fn parse_peer(spec: &str) -> Result<(String, String, SocketAddr, Option<PublicKey>), Error> {
    let (spec_addrs, key) = match spec.split_once('#') {
        Some((addrs, key)) => match PublicKey::parse(key, "the key after `#`") {
            Ok(key) => (addrs, Some(key)),
            Err(_) => {
                return Err(Error::Invalid {
                    key: "peer",
                    value: spec.to_owned(),
                    reason: "the key after `#` must be the node's public key, 64 hex digits, as `courier keys show --data-dir DIR` prints it on that node",
                })
            }
        },
        None => (spec, None),
    };
    let parts = spec_addrs.split_once('=').and_then(|(id, rest)| {
        let (client, cluster) = rest.rsplit_once('@')?;
        Some((id, client, cluster))
    });
    match parts {
        Some((id, client, cluster)) if !id.is_empty() && client.contains(':') => {
            match cluster.parse::<SocketAddr>() {
                Ok(cluster) => Ok((id.to_owned(), client.to_owned(), cluster, key)),
                Err(_) => Err(Error::Invalid {
                    key: "peer",
                    value: spec.to_owned(),
                    reason: "the cluster address after `@` must be IP:PORT, e.g. node2=node2.example:7878@10.0.0.2:7879",
                }),
            }
        }
        _ => Err(Error::Invalid {
            key: "peer",
            value: spec.to_owned(),
            reason: "write a node as ID=CLIENT_ADDR@CLUSTER_ADDR#KEY, e.g. node2=10.0.0.2:7878@10.0.0.2:7879#<64 hex digits> (clients are redirected to the first address, nodes link to the second; the key is what `courier keys show` prints on that node)",
        }),
    }
}

/// Reads the file key by key, so an error names the key it is about.
fn read_file(path: &Path) -> Result<FileConfig, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_file(path, &text)
}

fn parse_file(path: &Path, text: &str) -> Result<FileConfig, Error> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| Error::Syntax {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })?;
    for (key, value) in &table {
        let mut one = toml::Table::new();
        one.insert(key.clone(), value.clone());
        toml::Value::Table(one)
            .try_into::<FileConfig>()
            .map_err(|e| Error::Key {
                path: path.to_owned(),
                key: key.clone(),
                message: e.message().to_owned(),
            })?;
    }
    toml::Value::Table(table)
        .try_into::<FileConfig>()
        .map_err(|e| Error::Syntax {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> Result<FileConfig, Error> {
        parse_file(Path::new("courier.toml"), text)
    }

    #[test]
    fn file_values_are_read_and_the_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "max_output = 1048576\nfsync = \"never\"\nlisten = [\"127.0.0.1:9000\"]\nshards = 3\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            shards: Some(2),
            ..ServeArgs::default()
        };
        let c = Config::load(args).unwrap();
        assert_eq!(
            (c.max_output, c.fsync, c.shards),
            (1 << 20, FsyncMode::Never, 2)
        );
        assert_eq!(c.listen, vec!["127.0.0.1:9000".parse().unwrap()]);
        assert_eq!(c.heartbeat_secs, 30);
    }

    #[test]
    fn websocket_options_come_from_the_file_and_count_against_the_listen_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen_ws = [\"127.0.0.1:7880\"]\nws_allowed_origin = [\"https://chat.example\"]\n\
             web_root = \"web\"\n",
        )
        .unwrap();
        let c = Config::load(ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(c.listen_ws, vec!["127.0.0.1:7880".parse().unwrap()]);
        assert_eq!(
            c.ws_allowed_origins,
            vec!["https://chat.example".to_owned()]
        );
        assert_eq!(c.web_root, Some(PathBuf::from("web")));
        let too_many = ServeArgs {
            listen: vec!["127.0.0.1:1".parse().unwrap(); 40],
            listen_ws: vec!["127.0.0.1:2".parse().unwrap(); 30],
            ..ServeArgs::default()
        };
        assert!(matches!(
            Config::load(too_many),
            Err(Error::Invalid { key: "listen", .. })
        ));
    }

    #[test]
    fn the_removed_admin_option_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "admin = [\"root\"]\n").unwrap();
        let from_file = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        let from_flag = ServeArgs {
            admin: vec!["root".into()],
            ..ServeArgs::default()
        };
        for args in [from_file, from_flag] {
            let err = Config::load(args).unwrap_err();
            assert!(matches!(err, Error::Removed { key: "admin", .. }), "{err}");
            assert!(err.to_string().contains("courier admin grant"), "{err}");
        }
    }

    #[test]
    fn an_unknown_key_is_named() {
        match file("max_outptu = 5\n") {
            Err(Error::Key { key, .. }) => assert_eq!(key, "max_outptu"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_value_names_its_key() {
        match file("data_dir = \"d\"\nheartbeat_secs = \"often\"\n") {
            Err(e @ Error::Key { .. }) => {
                assert!(e.to_string().contains("`heartbeat_secs`"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(file("fsync = \"sometimes\""), Err(Error::Key { key, .. }) if key == "fsync")
        );
    }

    #[test]
    fn caps_that_a_reply_lists_shrink_to_fit_a_small_max_frame() {
        let c = Config::load(ServeArgs::default()).unwrap();
        assert_eq!((c.max_contacts, c.max_group), (1000, 1024));
        let small = ServeArgs {
            max_frame: Some(20_000),
            ..ServeArgs::default()
        };
        let c = Config::load(small).unwrap();
        assert_eq!(c.max_contacts, contacts_that_fit(20_000));
        assert!(c.max_contacts < 1000 && c.max_group < 1024);
        let too_many = ServeArgs {
            max_frame: Some(20_000),
            max_contacts: Some(1000),
            ..ServeArgs::default()
        };
        assert!(matches!(
            Config::load(too_many),
            Err(Error::Invalid {
                key: "max_contacts",
                ..
            })
        ));
        let too_big = ServeArgs {
            max_group: Some(5000),
            ..ServeArgs::default()
        };
        assert!(matches!(
            Config::load(too_big),
            Err(Error::Invalid {
                key: "max_group",
                ..
            })
        ));
    }

    #[test]
    fn peers_and_limits_are_checked() {
        let args = ServeArgs {
            peer: vec!["node2".into()],
            ..ServeArgs::default()
        };
        assert!(matches!(
            Config::load(args),
            Err(Error::Invalid { key: "peer", .. })
        ));
        let args = ServeArgs {
            max_frame: Some(10),
            ..ServeArgs::default()
        };
        assert!(matches!(
            Config::load(args),
            Err(Error::Invalid {
                key: "max_frame",
                ..
            })
        ));
        for (read_threads, read_queue, key) in [
            (Some(0), None, "read_threads"),
            (None, Some(0), "read_queue"),
        ] {
            let args = ServeArgs {
                read_threads,
                read_queue,
                ..ServeArgs::default()
            };
            assert!(
                matches!(Config::load(args), Err(Error::Invalid { key: k, .. }) if k == key),
                "{key} 0 must be refused"
            );
        }
        let (k1, k2) = ("11".repeat(32), "22".repeat(32));
        let args = ServeArgs {
            node_id: Some("n1".into()),
            peer: vec![
                format!("n2=10.0.0.2:7878@10.0.0.2:7879#{k2}"),
                format!("n1=courier-1.example:7878@10.0.0.1:7879#{k1}"),
            ],
            ..ServeArgs::default()
        };
        let c = Config::load(args).unwrap();
        assert_eq!(
            c.peer_keys[0],
            ("n2".to_owned(), Some(PublicKey::from_bytes([0x22; 32])))
        );
        assert_eq!(c.members()[1].key, Some(PublicKey::from_bytes([0x11; 32])));
        assert_eq!(
            c.peers,
            vec![
                ("n2".to_owned(), "10.0.0.2:7878".to_owned()),
                ("n1".to_owned(), "courier-1.example:7878".to_owned())
            ]
        );
        assert_eq!(c.cluster_addrs[1].1, "10.0.0.1:7879".parse().unwrap());
        assert_eq!((c.peer_links, c.peer_queue_bytes), (2, 64 << 20));
    }

    #[test]
    fn a_peer_without_a_key_is_refused_unless_the_cluster_is_plaintext() {
        let load = |peers: &[&str], insecure_plaintext: bool| {
            Config::load(ServeArgs {
                node_id: Some("n1".into()),
                peer: peers.iter().map(|p| p.to_string()).collect(),
                insecure_plaintext,
                ..ServeArgs::default()
            })
        };
        let key = "ab".repeat(32);
        let one = format!("n1=10.0.0.1:7878@10.0.0.1:7879#{key}");
        let keyless = "n2=10.0.0.2:7878@10.0.0.2:7879";
        let missing = load(&[&one, keyless], false).unwrap_err().to_string();
        assert!(
            missing.contains("n2") && missing.contains("courier keys show"),
            "{missing}"
        );
        let plain = load(&[&one, keyless], true).unwrap();
        assert_eq!(plain.members()[1].key, None);
        let short = load(&[&one, &format!("{keyless}#abcd")], false).unwrap_err();
        assert!(short.to_string().contains("64 hex digits"), "{short}");
        // The TOML form takes the same strings.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("courier.toml");
        std::fs::write(
            &path,
            format!("node_id = \"n1\"\npeer = [\"{one}\", \"{keyless}#{key}\"]\n"),
        )
        .unwrap();
        let file = Config::load(ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .unwrap();
        assert!(file.members().iter().all(|n| n.key.is_some()));
    }

    #[test]
    fn the_old_peer_form_and_a_list_without_this_node_are_clear_errors() {
        let load = |node: &str, peers: &[&str]| {
            Config::load(ServeArgs {
                node_id: Some(node.into()),
                peer: peers.iter().map(|p| p.to_string()).collect(),
                ..ServeArgs::default()
            })
        };
        let old = load("n1", &["n2=10.0.0.2:7878"]).unwrap_err().to_string();
        assert!(old.contains("ID=CLIENT_ADDR@CLUSTER_ADDR"), "{old}");
        let named = load("n1", &["n2=10.0.0.2:7878@node2:7879"]).unwrap_err();
        assert!(named.to_string().contains("IP:PORT"), "{named}");
        let alone = load("n1", &["n2=10.0.0.2:7878@10.0.0.2:7879"]).unwrap_err();
        assert!(alone.to_string().contains("this one too"), "{alone}");
        let twice = load("n1", &["n1=a:1@127.0.0.1:2", "n1=a:1@127.0.0.1:3"]).unwrap_err();
        assert!(twice.to_string().contains("listed twice"), "{twice}");
        let links = Config::load(ServeArgs {
            peer_links: Some(0),
            ..ServeArgs::default()
        });
        assert!(matches!(
            links,
            Err(Error::Invalid {
                key: "peer_links",
                ..
            })
        ));
    }

    #[test]
    fn media_limits_are_checked_and_default_to_the_documented_values() {
        let c = Config::load(ServeArgs::default()).unwrap();
        assert_eq!(
            (
                c.max_media,
                c.media_quota_bytes,
                c.media_upload_timeout_secs
            ),
            (100 << 20, 1 << 30, 600)
        );
        assert_eq!(
            (c.media_grace_secs, c.media_gc_interval_ms),
            (86_400, 60_000)
        );
        let cases = [
            (
                ServeArgs {
                    max_media: Some(0),
                    ..ServeArgs::default()
                },
                "max_media",
            ),
            (
                ServeArgs {
                    max_media: Some((1 << 40) + 1),
                    media_quota_bytes: Some(u64::MAX),
                    ..ServeArgs::default()
                },
                "max_media",
            ),
            (
                ServeArgs {
                    media_quota_bytes: Some(1000),
                    ..ServeArgs::default()
                },
                "media_quota_bytes",
            ),
            (
                ServeArgs {
                    media_upload_timeout_secs: Some(0),
                    ..ServeArgs::default()
                },
                "media_upload_timeout_secs",
            ),
            (
                ServeArgs {
                    media_gc_interval_ms: Some(1),
                    ..ServeArgs::default()
                },
                "media_gc_interval_ms",
            ),
        ];
        for (args, key) in cases {
            assert!(
                matches!(Config::load(args), Err(Error::Invalid { key: k, .. }) if k == key),
                "{key} must be refused"
            );
        }
    }
}
