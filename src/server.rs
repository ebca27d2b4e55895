//! Start-up and shutdown of `courier serve`.
//!
//! Start-up opens the store, builds the shared state, binds one `SO_REUSEPORT` listener per
//! shard and listen address, starts the auth and read workers, the shards and the metrics responder,
//! and prints `courier server key HEX` (the public key clients pin, or `none` with
//! `--insecure-plaintext`), then `courier listening on IP:PORT` once per address (scripts and
//! tests wait for it). The key pair is read from the data directory, or created there on the
//! first start (see [`crate::keys`]).
//! A SIGTERM or SIGINT sets the shutdown flag and wakes every shard; each finishes its round,
//! says `SHUTTING_DOWN` to its connections (bounded) and exits; then the WAL is synced.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use courier_protocol::noise::Keypair;
use crossbeam_channel::Receiver;
use mio::net::TcpListener;
use mio::{Poll, Waker};
use socket2::{Domain, Protocol, Socket, Type};

use crate::chat::{self, ChatConfig};
use crate::clock::Clock;
use crate::cluster::forward::Forwarding;
use crate::cluster::links::{self, LinkConfig, LinkThread, Links};
use crate::cluster::reads::ClusterReads;
use crate::cluster::Router;
use crate::config::Config;
use crate::directory::Directory;
use crate::keys;
use crate::media::gc::{Collector, GcConfig, GcThread};
use crate::metrics::{self, Metrics};
use crate::push;
use crate::session::{self, Accounts, AuthConfig, AuthError, Policy, Thresholds};
use crate::shard::mailbox::{Mailbox, ShardMsg, MAILBOX_CAPACITY};
use crate::shard::read_pool::ReadPool;
use crate::shard::{self, auth_pool, Core, ShardParts, WAKER};
use crate::store::{self, Store, StoreOptions};

/// File descriptors kept back from the connection capacity: RocksDB's files, listeners,
/// pollers, wakers, the metrics socket.
const FD_RESERVE: u64 = 1024;

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error(transparent)]
    Key(#[from] keys::Error),
    #[error("cannot set up accounts: {0}")]
    Accounts(#[from] AuthError),
    #[error("cannot listen on {addr}: {source}. Is another process using the port?")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot serve metrics on {addr}: {source}")]
    Metrics {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot accept cluster links on {addr}: {source}. Is another process using the port? Set --cluster-listen or this node's CLUSTER_ADDR in --peer")]
    ClusterBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the cluster's member list cannot be used: {0}")]
    Membership(#[from] links::MembershipError),
    #[error(
        "this node's --peer entry (`{node}`) has the key {listed}, but its data directory's key \
         (noise.key) is {actual}: put {actual} in `{node}`'s entry of the --peer list on every \
         node (or restore the noise.key that belongs to {listed})"
    )]
    OwnKeyMismatch {
        node: String,
        listed: courier_protocol::noise::PublicKey,
        actual: courier_protocol::noise::PublicKey,
    },
    #[error("push notifications: {0}")]
    Push(#[from] push::Error),
    #[error(transparent)]
    WebRoot(#[from] shard::ws::WebRootError),
    #[error("cannot start the event loops: {0}")]
    Io(#[from] std::io::Error),
    #[error("shard {} failed ({}); the server stopped after syncing what was committed. A service manager restarts it; if it keeps failing, report this message and the log above it", .0.shard, .0.what)]
    ShardFailed(shard::Failure),
}

/// Runs a server until SIGTERM or SIGINT.
pub fn serve(config: Config) -> Result<(), Error> {
    let limit = raise_open_files_limit();
    let max_connections = config.max_connections.unwrap_or_else(|| {
        limit
            .saturating_sub(FD_RESERVE)
            .max(64)
            .min(usize::MAX as u64) as usize
    });
    tracing::info!("capacity: {max_connections} connections (open files limit {limit})");

    let dedupe_window_us = config.dedupe_window_secs.saturating_mul(1_000_000);
    let token_idle_us = std::env::var(session::TEST_TOKEN_IDLE_MS)
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .map_or(u64::from(config.token_idle_days) * 86_400_000_000, |ms| {
            ms.saturating_mul(1000)
        });
    let store = Store::open_with(
        &config.data_dir,
        config.fsync,
        StoreOptions {
            dedupe_window_us,
            token_idle_us,
        },
    )?;
    let faults = shard::Faults::from_env();
    if faults.skip_space_check {
        store.skip_space_check();
    }
    if let Some(flag) = &faults.full_disk_flag {
        store.fake_full_disk(flag.clone());
    }
    let clock = Arc::new(Clock::new(store.clock_floor()?));
    let chat_config = ChatConfig {
        max_group: config.max_group,
        max_body: config.max_body,
        recall_window_us: config.recall_window_secs.saturating_mul(1_000_000),
        edit_window_us: config.edit_window_secs.saturating_mul(1_000_000),
        max_reactions: config.max_reactions_per_message,
        max_media: config.max_media,
        media_quota: config.media_quota_bytes,
        upload_idle_us: config.media_upload_timeout_secs.saturating_mul(1_000_000),
        // A MEDIA_CHUNK of chunk_max bytes must fit in the max_frame announced in WELCOME.
        media_chunk: ChatConfig::default()
            .media_chunk
            .min(config.max_frame - chat::MEDIA_CHUNK_OVERHEAD),
        dedupe_window_us,
        max_reply_bytes: crate::config::reply_budget(config.max_frame),
        max_contacts: config.max_contacts,
        max_deleted_per_thread: config.max_deleted_per_thread,
        max_uploads_per_user: config.max_uploads_per_user,
        ..ChatConfig::default()
    };
    let chat = chat::Shared::new(store.clone(), clock, chat_config, config.shards);
    if !config.peers.is_empty() {
        chat.set_router(Router::new(&config.node_id, &config.peers));
    }
    let auth_config = AuthConfig {
        argon2_m_kib: config.argon2_m_kib,
        max_devices: config.max_devices,
        limits: Thresholds {
            register_per_source: Policy::Window {
                limit: config.register_per_address,
                window: Duration::from_secs(config.register_window_secs),
            },
            ..Thresholds::default()
        },
        router: Some(Router::new(&config.node_id, &config.peers).with_keys(&config.peer_keys)),
        token_idle_us,
        ..AuthConfig::default()
    };
    let accounts = Arc::new(Accounts::new(store.clone(), auth_config)?);

    let mut polls = Vec::with_capacity(config.shards);
    let mut mailboxes = Vec::with_capacity(config.shards);
    let mut receivers: Vec<Receiver<ShardMsg>> = Vec::with_capacity(config.shards);
    for _ in 0..config.shards {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = crossbeam_channel::bounded(MAILBOX_CAPACITY);
        polls.push(poll);
        mailboxes.push(Mailbox::new(tx, waker));
        receivers.push(rx);
    }
    let mailboxes: Arc<[Mailbox]> = mailboxes.into();
    let (mut listeners, bound) = bind_all(&config.listen, config.shards)?;
    let (mut ws_listeners, ws_bound) = bind_all(&config.listen_ws, config.shards)?;
    let web_root = match &config.web_root {
        Some(dir) => {
            let root = shard::ws::WebRoot::load(dir)?;
            tracing::info!(
                "serving the web page from {} ({} files) on the WebSocket ports",
                dir.display(),
                root.len()
            );
            Some(root)
        }
        None => None,
    };

    let noise_key = if config.insecure_plaintext {
        tracing::warn!(
            "serving plain TCP (--insecure-plaintext): passwords, tokens and messages cross the \
             network readable; use this for local benchmarks only"
        );
        None
    } else {
        Some(keys::load_or_create(&config.data_dir)?)
    };
    let metrics = Metrics::new(config.shards, store.health());
    if let Some(addr) = config.metrics {
        let at = metrics::serve(addr, metrics.clone(), store.clone())
            .map_err(|source| Error::Metrics { addr, source })?;
        tracing::info!("metrics on http://{at}/metrics");
    }
    // The links start before the shards' shared state exists; their inbound handler gets it
    // once built (see `Forwarding`).
    let served = Arc::new(OnceLock::new());
    let (links, link_thread, cluster_reads) =
        match start_links(&config, noise_key.as_ref(), &metrics, served.clone())? {
            Some((links, thread, reads)) => (Some(links), Some(thread), Some(reads)),
            None => (None, None, None),
        };
    let auth = auth_pool::spawn(accounts.clone(), mailboxes.clone(), &faults)?;
    let reads = ReadPool::spawn(
        chat.clone(),
        mailboxes.clone(),
        metrics.clone(),
        &faults,
        config.read_threads,
        config.read_queue,
        cluster_reads,
    )?;
    let per_addr = shard::per_addr::PerAddr::new(config.max_conns_per_addr);
    let gc = GcThread::spawn(
        Collector::new(
            store.clone(),
            chat.blobs.clone(),
            GcConfig {
                upload_timeout: Duration::from_secs(config.media_upload_timeout_secs),
                grace: Duration::from_secs(config.media_grace_secs),
                interval: Duration::from_millis(config.media_gc_interval_ms),
            },
        ),
        metrics.media.clone(),
    )?;
    let directory = Arc::new(Directory::new());
    let notifier = match &config.push_gateway {
        Some(url) => {
            chat.enable_push(push::Gate::new(
                store.clone(),
                directory.clone(),
                Router::new(&config.node_id, &config.peers),
            ));
            let notifier = push::Notifier::new(
                store.clone(),
                chat.pushers.clone(),
                push::NotifierConfig::new(url)?,
                metrics.push.clone(),
            );
            tracing::info!("push notifications for offline devices go to {url}");
            Some(push::NotifierThread::spawn(notifier)?)
        }
        None => {
            tracing::info!("no --push-gateway: no push notifications are queued");
            None
        }
    };
    let core = Arc::new(Core {
        router: Router::new(&config.node_id, &config.peers).with_keys(&config.peer_keys),
        links,
        config,
        chat,
        accounts,
        directory,
        metrics,
        mailboxes,
        auth,
        reads: reads.queue(),
        shutdown: AtomicBool::new(false),
        failure: std::sync::Mutex::new(None),
        faults,
        connections: AtomicUsize::new(0),
        max_connections,
        noise_key: noise_key.clone(),
        per_addr,
        presence_subscriptions: AtomicUsize::new(0),
        cluster_presence: Default::default(),
        web_root,
    });
    let _ = served.set(core.clone());
    let parts = polls
        .into_iter()
        .zip(receivers)
        .enumerate()
        .map(|(id, (poll, mailbox))| ShardParts {
            id: id as u16,
            poll,
            listeners: std::mem::take(&mut listeners[id]),
            ws_listeners: std::mem::take(&mut ws_listeners[id]),
            mailbox,
        })
        .collect();
    let shards = shard::spawn(core.clone(), parts)?;
    watch_signals(core.clone())?;

    let mut stdout = std::io::stdout().lock();
    match &noise_key {
        Some(key) => {
            let _ = writeln!(stdout, "courier server key {}", key.public());
        }
        None => {
            let _ = writeln!(stdout, "courier server key none (--insecure-plaintext)");
        }
    }
    for addr in &bound {
        let _ = writeln!(stdout, "courier listening on {addr}");
    }
    for addr in &ws_bound {
        let _ = writeln!(stdout, "courier listening on ws://{addr}");
    }
    let _ = stdout.flush();
    drop(stdout);

    for handle in shards {
        let _ = handle.join();
    }
    reads.shutdown();
    if let Some(thread) = link_thread {
        thread.stop();
    }
    gc.shutdown();
    if let Some(notifier) = notifier {
        notifier.shutdown();
    }
    let synced = store.sync();
    if let Some(failure) = core.failed() {
        match synced {
            Ok(()) => tracing::error!("stopped after a failure; the write-ahead log is synced"),
            Err(e) => {
                tracing::error!(error = %e, "stopped after a failure; cannot sync the write-ahead log")
            }
        }
        return Err(Error::ShardFailed(failure));
    }
    synced?;
    tracing::info!("stopped; the write-ahead log is synced");
    Ok(())
}

/// Starts the link thread when the node has peers: binds the cluster address and dials every
/// other node (see `cluster::links`). Also returns the read side of the cluster
/// (`cluster::reads`), which the links deliver `PEER_READ`s and their replies to.
fn start_links(
    config: &Config,
    noise_key: Option<&Keypair>,
    metrics: &Metrics,
    served: Arc<OnceLock<Arc<Core>>>,
) -> Result<Option<(Links, LinkThread, Arc<ClusterReads>)>, Error> {
    if config.peers.is_empty() {
        return Ok(None);
    }
    let membership = links::Membership::new(config.members(), &config.node_id)?;
    if let Some(key) = noise_key {
        let own = membership
            .index_of(&config.node_id)
            .and_then(|i| membership.node(i))
            .and_then(|n| n.key);
        // `Config::check` already refused an encrypted cluster with a keyless entry.
        if let Some(listed) = own.filter(|&listed| listed != key.public()) {
            return Err(Error::OwnKeyMismatch {
                node: config.node_id.clone(),
                listed,
                actual: key.public(),
            });
        }
    }
    let own = links::cluster_addr(&membership, &config.node_id);
    let addr = config
        .cluster_listen
        .or(own)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let listener = bind_cluster(addr).map_err(|source| Error::ClusterBind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| Error::ClusterBind { addr, source })?;
    let link_config = LinkConfig {
        pool: config.peer_links,
        queue_bytes: config.peer_queue_bytes,
        noise: noise_key.cloned(),
        ..LinkConfig::default()
    };
    let hash = membership.hash();
    let others = membership.nodes().len() - 1;
    let local = membership
        .index_of(&config.node_id)
        .unwrap_or(links::NodeIndex(0));
    let names = membership.nodes().iter().map(|n| n.id.clone()).collect();
    let reads = Arc::new(ClusterReads::new(
        local,
        names,
        metrics.cluster_reads.clone(),
    ));
    let (links, thread) = Links::spawn(
        membership,
        &config.node_id,
        listener,
        link_config,
        Box::new(Forwarding::new(served, reads.clone())),
    )?;
    reads.set_links(links.clone());
    let _ = metrics.links.set(links.metrics());
    tracing::info!(
        "cluster links on {bound}: linking to {others} other node(s), {} links each, {}, member list hash {hash:016x}",
        config.peer_links,
        if noise_key.is_some() { "encrypted (Noise IK, keys from --peer)" } else { "plain TCP (--insecure-plaintext)" }
    );
    Ok(Some((links, thread, reads)))
}

/// A listener for cluster links. `SO_REUSEADDR`, so a node restarted right after a crash can
/// bind again while its old links linger in TIME_WAIT.
fn bind_cluster(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Binds every listen address once per shard. Port 0 is resolved by the first bind and reused
/// for the others, so all shards share the port. Returns the listeners per shard and the bound
/// addresses.
fn bind_all(
    addrs: &[SocketAddr],
    shards: usize,
) -> Result<(Vec<Vec<TcpListener>>, Vec<SocketAddr>), Error> {
    let mut per_shard: Vec<Vec<TcpListener>> = (0..shards).map(|_| Vec::new()).collect();
    let mut bound = Vec::with_capacity(addrs.len());
    for &addr in addrs {
        let first = bind_reuseport(addr).map_err(|source| Error::Bind { addr, source })?;
        let real = first
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        per_shard[0].push(first);
        for listeners in per_shard.iter_mut().skip(1) {
            listeners
                .push(bind_reuseport(real).map_err(|source| Error::Bind { addr: real, source })?);
        }
        bound.push(real);
    }
    Ok((per_shard, bound))
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Raises the soft open-files limit to the hard one; returns the soft limit in force.
fn raise_open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass, which lives on our stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
    let soft = lim.rlim_cur as u64;
    soft
}

/// On the first SIGTERM or SIGINT, sets the shutdown flag and wakes every shard. A second
/// signal exits at once (status 130), for an operator who does not want to wait.
fn watch_signals(core: Arc<Core>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = false;
            for signal in signals.forever() {
                if seen {
                    std::process::exit(130);
                }
                seen = true;
                tracing::info!(
                    signal,
                    "shutting down: finishing the round and closing connections"
                );
                core.shutdown.store(true, Ordering::Release);
                for m in core.mailboxes.iter() {
                    m.wake();
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_shared_by_every_shard() {
        let (listeners, bound) = bind_all(&["127.0.0.1:0".parse().unwrap()], 3).unwrap();
        let port = bound[0].port();
        assert_ne!(port, 0);
        for l in listeners.iter().flatten() {
            assert_eq!(l.local_addr().unwrap().port(), port);
        }
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let soft = raise_open_files_limit();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in raise_open_files_limit.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(soft, lim.rlim_cur);
        assert_eq!(lim.rlim_cur, lim.rlim_max);
    }
}
