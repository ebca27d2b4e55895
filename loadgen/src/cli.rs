//! Command-line options. Options common to every scenario are global: they may come before or
//! after the subcommand.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Connections one worker process holds by default: the per-process open-file limit here is
/// 20,000, and a worker needs a few descriptors of its own.
pub const DEFAULT_CONNS_PER_WORKER: usize = 18_000;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "courier-loadgen",
    version,
    about = "Load generator for the Courier chat push server"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// A server listen address; repeat it to spread connections over several (give every
    /// --server on the same side of the subcommand).
    #[arg(long = "server", value_name = "ADDR", global = true)]
    pub servers: Vec<SocketAddr>,
    /// Provisioned users, one `user_id handle token_hex` per line (`courier admin provision`).
    #[arg(long, value_name = "FILE", global = true, conflicts_with = "register")]
    pub users: Option<PathBuf>,
    /// Register fresh users with REGISTER instead (argon2 on the server: slow, for small runs).
    #[arg(long, global = true)]
    pub register: bool,
    /// Worker processes [default: enough for --conns-per-worker each].
    #[arg(long, global = true)]
    pub workers: Option<usize>,
    /// Connections per worker process when --workers is not given.
    #[arg(long, global = true, default_value_t = DEFAULT_CONNS_PER_WORKER)]
    pub conns_per_worker: usize,
    /// Source addresses 127.0.0.1, 127.0.0.2, … to bind client sockets to [default: one per
    /// 1,000 connections, the server's default --max-conns-per-addr].
    #[arg(long, global = true)]
    pub source_ips: Option<u32>,
    /// The server's public key, 64 hex digits (`courier keys show` on the server): every
    /// connection is encrypted (Noise IK) and refused by a server holding another key.
    #[arg(
        long,
        value_name = "HEX",
        global = true,
        conflicts_with = "insecure_plaintext"
    )]
    pub server_key: Option<String>,
    /// Plain TCP, for a server run with --insecure-plaintext (compare runs with and without
    /// encryption on the same machine).
    #[arg(long, global = true)]
    pub insecure_plaintext: bool,
    /// A node of a cluster, written as in the servers' --peer list; repeat it for every node
    /// (instead of --server). Each user connects to its home node, pinning that node's key.
    #[arg(
        long = "peer",
        value_name = "ID=CLIENT_ADDR@CLUSTER_ADDR#KEY",
        global = true,
        conflicts_with_all = ["servers", "server_key", "nodes"]
    )]
    pub peers: Vec<String>,
    /// The cluster's node list from a file: one --peer entry per line (`#` starts a comment
    /// line).
    #[arg(
        long,
        value_name = "FILE",
        global = true,
        conflicts_with_all = ["servers", "server_key"]
    )]
    pub nodes: Option<PathBuf>,
    /// On a cluster, how users are put in threads: `any` (users round-robin over their home
    /// nodes: threads across nodes, requests forwarded) or `local` (pairs and groups whose users and thread
    /// share a home node: nothing crosses nodes).
    #[arg(long, value_enum, global = true, default_value = "any")]
    pub pairing: crate::cluster::Pairing,
    /// Connect over WebSocket: every --server is a `--listen-ws` address of the server (the same
    /// Courier bytes in binary messages; compare with TCP on the same machine). Users come from
    /// --users (provisioned), since --register speaks TCP.
    #[arg(long, global = true, conflicts_with = "register")]
    pub ws: bool,
    /// Also write the JSON report to this file (it is always printed on stdout).
    #[arg(long, value_name = "FILE", global = true)]
    pub json: Option<PathBuf>,
    /// The server's pid: measure its RSS per connection.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,
    /// Connections opened per second while ramping up (scenarios other than `connect`).
    #[arg(long, global = true, default_value_t = 10_000.0)]
    pub connect_rate: f64,
    /// Bytes per message body (at least the 28-byte loadgen header).
    #[arg(long, global = true, default_value_t = 64)]
    pub body_size: usize,
    /// Seconds to wait after traffic stops for the last deliveries, before the final SYNC.
    #[arg(long, global = true, default_value_t = 10.0)]
    pub settle_secs: f64,
    /// No progress lines on stderr.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Run workers as threads of this process instead of child processes (tests, small runs:
    /// they then share one open-file limit).
    #[arg(long, global = true, hide = true)]
    pub in_process: bool,
    /// The binary to run workers from [default: this one, or courier-loadgen next to it].
    #[arg(long, global = true, hide = true)]
    pub worker_exe: Option<PathBuf>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Ramp up authenticated idle connections, hold them, measure memory per connection.
    Connect {
        #[arg(long)]
        connections: usize,
        /// Connections per second during the ramp (0 = as fast as possible).
        #[arg(long, default_value_t = 5_000.0)]
        rate: f64,
        /// Seconds to hold the connections (they PING every heartbeat).
        #[arg(long, default_value_t = 10.0)]
        hold: f64,
    },
    /// Pairs of users in direct threads; one side sends, the other receives.
    Chat {
        #[arg(long)]
        pairs: usize,
        /// Messages per second over all senders; 0 = unthrottled (each sender keeps --window
        /// unacknowledged messages in flight).
        #[arg(long, default_value_t = 0.0)]
        rate: f64,
        /// Most unacknowledged messages per sender.
        #[arg(long, default_value_t = 16)]
        window: u32,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Receivers send a DELIVERED receipt for what they receive.
        #[arg(long)]
        receipts: bool,
    },
    /// Groups: the creator adds members in chunks, then publishes.
    Group {
        #[arg(long)]
        groups: usize,
        /// Members per group, the creator included (server cap: 1024).
        #[arg(long)]
        members: usize,
        /// Messages per second over all groups (0 = unthrottled, --window per publisher).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        #[arg(long, default_value_t = 16)]
        window: u32,
        /// Members per ADD_MEMBERS request.
        #[arg(long, default_value_t = 100)]
        chunk: usize,
        /// Members of each group that publish (the creator first).
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        #[arg(long)]
        receipts: bool,
    },
    /// Connect (in pairs, sending), drop every connection at once halfway through, reconnect
    /// all with RESUME + SYNC; time until all are back; check nothing was lost.
    Storm {
        /// Connections (rounded up to even: they form pairs).
        #[arg(long)]
        connections: usize,
        /// Messages per second over all senders [default: connections / 10].
        #[arg(long)]
        rate: Option<f64>,
        /// Seconds of traffic; the storm happens at half time.
        #[arg(long, default_value_t = 6.0)]
        duration: f64,
        /// Connections (re)opened at once per worker while recovering.
        #[arg(long, default_value_t = 2_000)]
        max_connecting: usize,
    },
    /// A compressed WhatsApp-like day: circles of friends with direct threads and a group,
    /// receipts, presence subscriptions, typing, reconnects.
    Mixed {
        #[arg(long)]
        connections: usize,
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
        /// Messages per second over all users [default: connections / 20].
        #[arg(long)]
        rate: Option<f64>,
        /// Reconnects per second over all users [default: connections / 200].
        #[arg(long)]
        reconnects_per_sec: Option<f64>,
        /// Users per circle (one group, a ring of direct threads).
        #[arg(long, default_value_t = 8)]
        circle: usize,
    },
    /// Probe latency while heavy reads run: one client PINGs at a fixed rate while another
    /// downloads a media file in chunks and another pages through its threads (4 users; run
    /// the server with `--shards 1` so they share a shard). Prints its own JSON report.
    Probe(ProbeArgs),
    /// Internal: a worker process, driven by JSON lines on stdin.
    #[command(hide = true)]
    Worker,
}

/// Options of the `probe` scenario.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// Seconds of measurement (after setup).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// PINGs per second of the probe client.
    #[arg(long, default_value_t = 100.0)]
    pub probe_rate: f64,
    /// Bytes of the media file downloaded over and over.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub media_bytes: u64,
    /// Threads the lister pages through.
    #[arg(long, default_value_t = 1000)]
    pub threads: usize,
    /// Messages from another member in each thread (unread by the lister).
    #[arg(long, default_value_t = 5)]
    pub unread: usize,
    /// Threads per LIST_THREADS page.
    #[arg(long, default_value_t = 100)]
    pub list_limit: u16,
    /// Baseline: set everything up, but only the prober runs (no download, no listing).
    #[arg(long)]
    pub probe_only: bool,
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Connect { .. } => "connect",
            Command::Chat { .. } => "chat",
            Command::Group { .. } => "group",
            Command::Storm { .. } => "storm",
            Command::Mixed { .. } => "mixed",
            Command::Probe(_) => "probe",
            Command::Worker => "worker",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "courier-loadgen",
            "--quiet",
            "chat",
            "--pairs",
            "2",
            "--server",
            "127.0.0.1:1",
            "--server",
            "127.0.0.1:2",
            "--register",
        ])
        .unwrap();
        assert_eq!(cli.common.servers.len(), 2);
        assert!(cli.common.quiet);
        assert!(cli.common.register);
        assert!(matches!(
            cli.command,
            Command::Chat {
                pairs: 2,
                window: 16,
                ..
            }
        ));
        assert!(Cli::try_parse_from(["x", "--users", "f", "--register", "worker"]).is_err());
    }
}
