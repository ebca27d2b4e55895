//! A worker: one mio event loop driving thousands of non-blocking client connections.
//!
//! The loop follows mio's `tcp_server` example: a connection's slot index is its [`Token`],
//! reads drain until `WouldBlock` (or, for a readable event that reported no close or error,
//! until a read fills less than it asked: the socket is empty, and later bytes raise a new
//! edge, so the read that would only say `WouldBlock` is skipped, as tokio does), `Ok(0)` is a
//! close, and only the loop deregisters. Output is
//! queued in each connection's buffer and written before the loop sleeps (redis'
//! "handle clients with pending writes"); a connection waits for WRITABLE only while bytes are
//! left. Commands from the parent arrive on a channel and wake the loop through a [`Waker`].

mod conn;
mod ws;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, BufRead, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use courier_protocol::noise::PublicKey;
use courier_protocol::session::Encryption;
use crossbeam_channel::{Receiver, Sender};
use mio::{Events, Interest, Poll, Token, Waker};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::hist::Latencies;
use crate::ipc::{Collected, Counters, FromWorker, Init, Phase, StormTimes, ToWorker, TrafficSpec};
use crate::sys::monotonic_ns;
use conn::{Conn, Outcome, State};

const WAKER: Token = Token(usize::MAX);
/// A handshake (TCP connect to ready) that takes longer than this is abandoned and retried.
const HANDSHAKE_TIMEOUT_NS: u64 = 30_000_000_000;
/// Attempts before a connection is given up on.
const MAX_ATTEMPTS: u32 = 8;
const TICK_NS: u64 = 100_000_000;
const PROGRESS_NS: u64 = 1_000_000_000;

/// State shared by every connection of a worker: run constants, counters and histograms.
pub struct Cx {
    pub now_ns: u64,
    /// An `Instant` and the `now_ns` of the same moment, to give sessions `now_ns` as an
    /// `Instant` (both are CLOCK_MONOTONIC).
    pub epoch: (Instant, u64),
    pub run_id: u32,
    pub run_since: u64,
    pub body_size: usize,
    /// Scratch space for message bodies.
    pub body: BytesMut,
    pub counters: Counters,
    pub lat: Latencies,
    pub sync_on_connect: bool,
    pub receipts: bool,
    pub read_receipts: bool,
    pub typing: bool,
    /// Whether the traffic window is open (deliveries count towards the rate).
    pub in_window: bool,
    /// Connections whose setup requests are still running.
    pub setup_pending: usize,
    /// Connections whose final SYNC has not finished.
    pub final_sync_pending: usize,
    /// Threads created by this worker's connections since the last report.
    pub threads_out: Vec<(u32, u64)>,
    pub rng: SmallRng,
}

impl Cx {
    /// `now_ns` as an `Instant`, for the connections' sessions.
    pub fn now(&self) -> Instant {
        self.epoch.0 + Duration::from_nanos(self.now_ns.saturating_sub(self.epoch.1))
    }
}

/// Spreads events evenly over time: `take` says how many are due.
struct Pacer {
    rate: f64,
    tokens: f64,
    last_ns: u64,
}

impl Pacer {
    fn new(rate: f64, now: u64) -> Self {
        Self {
            rate,
            tokens: 0.0,
            last_ns: now,
        }
    }

    fn take(&mut self, now: u64) -> usize {
        if self.rate <= 0.0 {
            return usize::MAX;
        }
        let dt = now.saturating_sub(self.last_ns) as f64 / 1e9;
        self.last_ns = now;
        // No bursts beyond a tenth of a second of backlog after a stall.
        self.tokens = (self.tokens + self.rate * dt).min(self.rate * 0.1 + 1.0);
        let n = self.tokens.floor();
        self.tokens -= n;
        n as usize
    }
}

struct Traffic {
    spec: TrafficSpec,
    start_ns: u64,
    end_ns: u64,
    sending: bool,
    send_pacer: Pacer,
    reconnect_pacer: Pacer,
    /// (connection, slot) pairs that send.
    senders: Vec<(u32, u16)>,
    next_sender: usize,
    storm: Option<StormTimes>,
    storm_start_ns: u64,
    inflight: usize,
}

/// Why a connection is being closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// A failure worth retrying after a backoff.
    Retry,
    /// A failure that will not get better (bad token).
    Fatal,
    /// The loadgen closes it on purpose and reconnects at once.
    Planned,
}

pub struct Worker {
    index: usize,
    poll: Poll,
    conns: Vec<Conn>,
    by_user: HashMap<u32, usize>,
    cx: Cx,
    rx: Receiver<ToWorker>,
    out: Sender<(usize, FromWorker)>,
    scratch: Box<[u8]>,
    dirty: Vec<usize>,
    ramp: Option<Pacer>,
    next_initial: usize,
    max_connecting: usize,
    handshaking: usize,
    reconnects: BinaryHeap<Reverse<(u64, usize)>>,
    waiting: Option<Phase>,
    traffic: Option<Traffic>,
    last_tick_ns: u64,
    last_progress_ns: u64,
    /// `--ws`: every connection is a WebSocket one.
    ws: bool,
}

/// The parent's handle on a worker running as a thread.
pub struct Inbox {
    pub tx: Sender<ToWorker>,
    pub waker: Arc<Waker>,
}

impl Inbox {
    pub fn send(&self, msg: ToWorker) -> io::Result<()> {
        self.tx
            .send(msg)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "worker thread has exited"))?;
        self.waker.wake()
    }
}

/// Starts a worker on a thread of this process.
pub fn spawn_thread(
    index: usize,
    out: Sender<(usize, FromWorker)>,
) -> io::Result<(std::thread::JoinHandle<()>, Inbox)> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let handle = std::thread::Builder::new()
        .name(format!("loadgen-worker-{index}"))
        .spawn(move || {
            let worker = Worker::new(index, poll, rx, out.clone());
            if let Err(e) = worker.run() {
                let _ = out.send((
                    index,
                    FromWorker::Failed {
                        reason: e.to_string(),
                    },
                ));
            }
        })?;
    Ok((handle, Inbox { tx, waker }))
}

/// The `worker` subcommand: commands as JSON lines on stdin, reports as JSON lines on stdout.
pub fn run_stdio() -> io::Result<()> {
    let _ = crate::sys::raise_nofile_limit();
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let (tx, rx) = crossbeam_channel::unbounded::<ToWorker>();
    let (out_tx, out_rx) = crossbeam_channel::unbounded::<(usize, FromWorker)>();
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<ToWorker>(&line) {
                    Ok(msg) => {
                        if tx.send(msg).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        eprintln!("courier-loadgen worker: bad command line: {e}");
                        break;
                    }
                }
                let _ = waker.wake();
            }
            // EOF: the parent is gone; dropping `tx` makes the loop exit.
            drop(tx);
            let _ = waker.wake();
        })?;
    let writer =
        std::thread::Builder::new()
            .name("stdout".into())
            .spawn(move || -> io::Result<()> {
                let stdout = io::stdout();
                for (_, msg) in out_rx {
                    let mut lock = stdout.lock();
                    serde_json::to_writer(&mut lock, &msg)?;
                    lock.write_all(b"\n")?;
                    lock.flush()?;
                }
                Ok(())
            })?;
    let worker = Worker::new(0, poll, rx, out_tx.clone());
    let result = worker.run();
    if let Err(e) = &result {
        let _ = out_tx.send((
            0,
            FromWorker::Failed {
                reason: e.to_string(),
            },
        ));
    }
    drop(out_tx);
    writer
        .join()
        .map_err(|_| io::Error::other("stdout writer panicked"))??;
    result
}

/// Opens a non-blocking socket to `server`, bound to `source` when the server is on loopback.
fn open_socket(source: std::net::Ipv4Addr, server: SocketAddr) -> io::Result<mio::net::TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(
        Domain::for_address(server),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    sock.set_nonblocking(true)?;
    sock.set_nodelay(true)?;
    if let IpAddr::V4(ip) = server.ip() {
        if ip.is_loopback() {
            // Let connect() pick the port per 4-tuple rather than bind() per source address,
            // so one source address serves far more than 28k connections across servers.
            let one: libc::c_int = 1;
            // SAFETY: the fd is a valid socket owned by `sock`; `one` outlives the call and the
            // length passed is its size.
            let rc = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&sock),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            sock.bind(&SocketAddr::new(IpAddr::V4(source), 0).into())?;
        }
    }
    match sock.connect(&server.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    Ok(mio::net::TcpStream::from_std(sock.into()))
}

impl Worker {
    fn new(
        index: usize,
        poll: Poll,
        rx: Receiver<ToWorker>,
        out: Sender<(usize, FromWorker)>,
    ) -> Self {
        let now = monotonic_ns();
        Self {
            index,
            poll,
            conns: Vec::new(),
            by_user: HashMap::new(),
            cx: Cx {
                now_ns: now,
                epoch: (Instant::now(), now),
                run_id: 0,
                run_since: 0,
                body_size: 64,
                body: BytesMut::new(),
                counters: Counters::default(),
                lat: Latencies::default(),
                sync_on_connect: true,
                receipts: false,
                read_receipts: false,
                typing: false,
                in_window: false,
                setup_pending: 0,
                final_sync_pending: 0,
                threads_out: Vec::new(),
                rng: SmallRng::from_os_rng(),
            },
            rx,
            out,
            scratch: vec![0u8; 64 * 1024].into_boxed_slice(),
            dirty: Vec::new(),
            ramp: None,
            next_initial: 0,
            max_connecting: 1000,
            handshaking: 0,
            reconnects: BinaryHeap::new(),
            waiting: None,
            traffic: None,
            last_tick_ns: now,
            last_progress_ns: now,
            ws: false,
        }
    }

    fn emit(&self, msg: FromWorker) {
        let _ = self.out.send((self.index, msg));
    }

    fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(4096);
        loop {
            let busy = self.ramp.is_some()
                || !self.reconnects.is_empty()
                || self.traffic.as_ref().is_some_and(|t| t.sending);
            let timeout = Duration::from_millis(if busy { 1 } else { 20 });
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.cx.now_ns = monotonic_ns();
            for ev in events.iter() {
                if ev.token() != WAKER {
                    self.on_event(
                        ev.token().0,
                        ev.is_readable() || ev.is_read_closed(),
                        ev.is_writable(),
                        // A FIN or error that came before the event raises no new edge: read
                        // on to the `Ok(0)` or the error then.
                        !(ev.is_read_closed() || ev.is_error()),
                    );
                }
            }
            loop {
                match self.rx.try_recv() {
                    Ok(cmd) => {
                        if !self.on_command(cmd) {
                            return Ok(());
                        }
                    }
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => return Ok(()),
                }
            }
            self.cx.now_ns = monotonic_ns();
            self.pace();
            if self.cx.now_ns.saturating_sub(self.last_tick_ns) >= TICK_NS {
                self.tick();
            }
            self.flush_dirty();
            self.check_phase();
        }
    }

    fn on_command(&mut self, cmd: ToWorker) -> bool {
        let now = self.cx.now_ns;
        match cmd {
            ToWorker::Init(init) => self.init(init),
            ToWorker::Connect {
                rate,
                max_connecting,
                sync,
            } => {
                self.cx.sync_on_connect = sync;
                self.max_connecting = max_connecting.max(1);
                self.ramp = Some(Pacer::new(rate, now));
                self.waiting = Some(Phase::Connect);
            }
            ToWorker::Setup => {
                for i in 0..self.conns.len() {
                    if self.conns[i].is_ready() {
                        self.conns[i].start_setup(&mut self.cx);
                        self.mark_dirty(i);
                    }
                }
                self.waiting = Some(Phase::Setup);
            }
            ToWorker::Traffic(spec) => self.start_traffic(spec),
            ToWorker::FinalSync { users } => {
                for u in users {
                    let Some(&i) = self.by_user.get(&u) else {
                        continue;
                    };
                    if self.conns[i].state == State::Failed {
                        continue;
                    }
                    self.cx.final_sync_pending += 1;
                    self.conns[i].start_final_sync(self.cx.run_since, now);
                    self.mark_dirty(i);
                }
                self.waiting = Some(Phase::FinalSync);
            }
            ToWorker::Collect => {
                let (mut sent, mut seen) = (Vec::new(), Vec::new());
                for c in &self.conns {
                    c.ledgers(&mut sent, &mut seen);
                }
                let collected = Collected {
                    counters: self.cx.counters.clone(),
                    latencies: self.cx.lat.encode(),
                    sent,
                    seen,
                    rss_bytes: crate::sys::own_rss_bytes(),
                };
                self.emit(FromWorker::Collected(Box::new(collected)));
            }
            ToWorker::Exit => return false,
        }
        true
    }

    fn init(&mut self, init: Init) {
        self.index = init.worker;
        self.cx.run_id = init.run_id;
        self.cx.run_since = init.run_since;
        self.cx.body_size = init.body_size.max(crate::ledger::BodyHeader::LEN);
        self.ws = init.ws;
        let encryption = match &init.server_key {
            Some(text) => Encryption::Pinned(
                PublicKey::parse(text, "the server key").expect("the parent checked --server-key"),
            ),
            None => Encryption::Plaintext,
        };
        self.conns = init
            .conns
            .into_iter()
            .map(|s| {
                // On a cluster each connection pins its own node's key.
                let own = s.key.as_deref().map(|text| {
                    Encryption::Pinned(
                        PublicKey::parse(text, "a node key")
                            .expect("the parent checked the node list"),
                    )
                });
                let mut conn = Conn::new(s, init.run_since);
                conn.encryption = own.unwrap_or(encryption);
                conn
            })
            .collect();
        self.by_user = self
            .conns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.user, i))
            .collect();
    }

    fn start_traffic(&mut self, spec: TrafficSpec) {
        let now = self.cx.now_ns;
        let ids: HashMap<u32, u64> = spec.threads.iter().copied().collect();
        let mut senders = Vec::new();
        for (i, c) in self.conns.iter_mut().enumerate() {
            c.learn_threads(&ids);
            for s in c.sending_slots() {
                senders.push((i as u32, s as u16));
            }
        }
        self.cx.receipts = spec.receipts;
        self.cx.read_receipts = spec.read_receipts;
        self.cx.typing = spec.typing;
        self.cx.in_window = true;
        self.max_connecting = spec.max_connecting.max(1);
        self.traffic = Some(Traffic {
            start_ns: now,
            end_ns: now + spec.duration_ms * 1_000_000,
            sending: true,
            send_pacer: Pacer::new(spec.rate, now),
            reconnect_pacer: Pacer::new(spec.reconnects_per_sec, now),
            senders,
            next_sender: 0,
            storm: None,
            storm_start_ns: 0,
            inflight: 0,
            spec,
        });
        self.waiting = Some(Phase::Traffic);
        self.fill_windows();
    }

    fn mark_dirty(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if !c.dirty && !c.wbuf.is_empty() {
            c.dirty = true;
            self.dirty.push(i);
        }
    }

    fn start_connect(&mut self, i: usize) {
        let now = self.cx.now_ns;
        let c = &mut self.conns[i];
        c.started_ns = now;
        c.state = State::Connecting;
        self.handshaking += 1;
        match open_socket(c.source, c.spec_server) {
            Ok(mut sock) => {
                match self.poll.registry().register(
                    &mut sock,
                    Token(i),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    Ok(()) => c.sock = Some(sock),
                    Err(_) => self.close(i, Close::Retry),
                }
            }
            Err(_) => self.close(i, Close::Retry),
        }
    }

    fn close(&mut self, i: usize, why: Close) {
        let now = self.cx.now_ns;
        let c = &mut self.conns[i];
        let was = c.state;
        if let Some(mut sock) = c.sock.take() {
            let _ = self.poll.registry().deregister(&mut sock);
        }
        if was.is_handshaking() {
            self.handshaking -= 1;
            if why != Close::Planned {
                self.cx.counters.connect_errors += 1;
            }
        }
        if was == State::Ready && why != Close::Planned {
            self.cx.counters.disconnects += 1;
        }
        c.on_closed(&mut self.cx);
        c.state = State::Down;
        match why {
            Close::Planned => {
                self.cx.counters.reconnects += 1;
                self.reconnects.push(Reverse((now, i)));
            }
            Close::Retry if c.attempts < MAX_ATTEMPTS => {
                c.attempts += 1;
                let backoff_ms = (50u64 << c.attempts.min(7)).min(5_000);
                let jitter = self.cx.rng.random_range(0..=backoff_ms / 2);
                self.reconnects
                    .push(Reverse((now + (backoff_ms + jitter) * 1_000_000, i)));
            }
            _ => {
                c.state = State::Failed;
                self.cx.counters.failed += 1;
                if c.final_sync_wanted {
                    c.final_sync_wanted = false;
                    self.cx.final_sync_pending = self.cx.final_sync_pending.saturating_sub(1);
                }
            }
        }
    }

    /// `stop_short`: a read that fills less than `scratch` ends the reading (see the module).
    fn on_event(&mut self, i: usize, readable: bool, writable: bool, stop_short: bool) {
        let Some(c) = self.conns.get_mut(i) else {
            return;
        };
        let Some(sock) = c.sock.as_mut() else { return };
        if c.state == State::Connecting {
            match sock.take_error() {
                Ok(None) => {}
                Ok(Some(_)) | Err(_) => return self.close(i, Close::Retry),
            }
            match sock.peer_addr() {
                Ok(_) => {
                    if self.ws {
                        match ws::WsLink::start(c.spec_server, &mut c.wbuf) {
                            Ok(link) => c.ws = Some(Box::new(link)),
                            Err(_) => return self.close(i, Close::Retry),
                        }
                    }
                    c.on_connected(self.cx.now())
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(_) => return self.close(i, Close::Retry),
            }
        }
        if readable {
            let mut eof = false;
            let ready_before = c.is_ready();
            let handshaking = c.state.is_handshaking();
            let mut outcome = Outcome::Continue;
            while let Some(sock) = c.sock.as_mut() {
                match sock.read(&mut self.scratch) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        let short = stop_short && n < self.scratch.len();
                        outcome = match c.ws.take() {
                            None => c.on_input(&self.scratch[..n], &mut self.cx),
                            Some(mut link) => {
                                let o = ws_input(c, &mut link, &self.scratch[..n], &mut self.cx);
                                c.ws = Some(link);
                                o
                            }
                        };
                        if outcome != Outcome::Continue || short {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        eof = true;
                        break;
                    }
                }
            }
            // Keep the handshake count true before any close looks at it.
            if handshaking && !c.state.is_handshaking() {
                self.handshaking -= 1;
            }
            if let Outcome::Close { retry } = outcome {
                return self.close(i, if retry { Close::Retry } else { Close::Fatal });
            }
            c.flush_receipts(&mut self.cx);
            if eof {
                return self.close(i, Close::Retry);
            }
            let became_ready = !ready_before && c.is_ready();
            if became_ready
                || self
                    .traffic
                    .as_ref()
                    .is_some_and(|t| t.sending && t.spec.rate <= 0.0)
            {
                self.fill_window(i);
            }
        }
        if writable || !self.conns[i].wbuf.is_empty() {
            self.mark_dirty(i);
        }
    }

    fn write_out(&mut self, i: usize) -> Result<(), ()> {
        let c = &mut self.conns[i];
        let Some(sock) = c.sock.as_mut() else {
            return Ok(());
        };
        if c.state == State::Connecting {
            return Ok(());
        }
        // WebSocket: what the session wrote goes out as one masked binary message, and
        // nothing but the upgrade request before the server accepted it.
        if let Some(link) = c.ws.as_mut() {
            let mask = self.cx.rng.random::<u32>().to_be_bytes();
            link.frame(&mut c.wbuf, mask);
        }
        loop {
            let ready = c.ws.as_ref().map_or(c.wbuf.len(), |l| l.framed);
            if ready == 0 {
                break;
            }
            match sock.write(&c.wbuf[..ready]) {
                Ok(0) => return Err(()),
                Ok(n) => {
                    c.wbuf.advance(n);
                    if let Some(link) = c.ws.as_mut() {
                        link.written(n);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(()),
            }
        }
        if c.wbuf.is_empty() {
            c.wbuf = BytesMut::new();
        }
        Ok(())
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for &i in &dirty {
            self.conns[i].dirty = false;
            if self.write_out(i).is_err() {
                self.close(i, Close::Retry);
            }
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.dirty.is_empty() {
            self.dirty = dirty;
        }
    }

    /// Unthrottled traffic: tops the connection's window up, over its sending slots in turn.
    fn fill_window(&mut self, i: usize) {
        let Some(t) = self.traffic.as_ref() else {
            return;
        };
        if !t.sending || t.spec.rate > 0.0 {
            return;
        }
        let window = t.spec.window;
        let c = &mut self.conns[i];
        let slots: Vec<usize> = c.sending_slots().collect();
        if slots.is_empty() {
            return;
        }
        while c.inflight() < window as usize {
            let mut progressed = false;
            for &s in &slots {
                progressed |= c.try_send(s, window, &mut self.cx);
            }
            if !progressed {
                break;
            }
        }
        self.mark_dirty(i);
    }

    fn fill_windows(&mut self) {
        let Some(t) = self.traffic.as_ref() else {
            return;
        };
        let mut conns: Vec<u32> = t.senders.iter().map(|&(c, _)| c).collect();
        conns.dedup();
        for c in conns {
            self.fill_window(c as usize);
        }
    }

    fn pace(&mut self) {
        let now = self.cx.now_ns;
        if let Some(ramp) = self.ramp.as_mut() {
            let mut n = ramp.take(now);
            while n > 0
                && self.next_initial < self.conns.len()
                && self.handshaking < self.max_connecting
            {
                let i = self.next_initial;
                self.next_initial += 1;
                n -= 1;
                self.start_connect(i);
            }
            if self.next_initial >= self.conns.len() {
                self.ramp = None;
            }
        }
        while self.handshaking < self.max_connecting {
            match self.reconnects.peek() {
                Some(&Reverse((due, i))) if due <= now => {
                    self.reconnects.pop();
                    if self.conns[i].state == State::Down {
                        self.start_connect(i);
                    }
                }
                _ => break,
            }
        }
        self.pace_traffic();
    }

    fn pace_traffic(&mut self) {
        let now = self.cx.now_ns;
        let Some(t) = self.traffic.as_mut() else {
            return;
        };
        if !t.sending {
            return;
        }
        if now >= t.end_ns {
            t.sending = false;
            self.cx.in_window = false;
            return;
        }
        if let Some(at) = t.spec.storm_at_ms {
            if t.storm.is_none() && now >= t.start_ns + at * 1_000_000 {
                return self.storm();
            }
        }
        let reconnects = if t.spec.reconnects_per_sec > 0.0 {
            t.reconnect_pacer.take(now)
        } else {
            0
        };
        for _ in 0..reconnects {
            let i = self.cx.rng.random_range(0..self.conns.len());
            if self.conns[i].is_ready() {
                self.close(i, Close::Planned);
            }
        }
        let Some(t) = self.traffic.as_mut() else {
            return;
        };
        if t.spec.rate <= 0.0 || t.senders.is_empty() {
            return;
        }
        let n = t.send_pacer.take(now);
        let (window, random) = (t.spec.window, t.spec.random_pick);
        for _ in 0..n {
            let mut sent = false;
            let tries = t.senders.len().min(16);
            for _ in 0..tries {
                let k = if random {
                    self.cx.rng.random_range(0..t.senders.len())
                } else {
                    t.next_sender = (t.next_sender + 1) % t.senders.len();
                    t.next_sender
                };
                let (c, s) = t.senders[k];
                if self.conns[c as usize].try_send(s as usize, window, &mut self.cx) {
                    let conn = &mut self.conns[c as usize];
                    if !conn.dirty {
                        conn.dirty = true;
                        self.dirty.push(c as usize);
                    }
                    sent = true;
                    break;
                }
            }
            if !sent {
                self.cx.counters.send_skipped += 1;
            }
        }
    }

    /// Drops every connection at once; they all reconnect with RESUME + SYNC.
    fn storm(&mut self) {
        let start = monotonic_ns();
        let mut dropped = 0;
        for i in 0..self.conns.len() {
            if self.conns[i].sock.is_some() {
                self.close(i, Close::Planned);
                dropped += 1;
            }
        }
        let now = monotonic_ns();
        if let Some(t) = self.traffic.as_mut() {
            t.storm = Some(StormTimes {
                dropped,
                drop_ms: (now - start) / 1_000_000,
                recover_ms: None,
            });
            t.storm_start_ns = start;
        }
    }

    fn tick(&mut self) {
        let now = self.cx.now_ns;
        self.last_tick_ns = now;
        if self.handshaking > 0 {
            for i in 0..self.conns.len() {
                let c = &self.conns[i];
                if c.state.is_handshaking()
                    && now.saturating_sub(c.started_ns) > HANDSHAKE_TIMEOUT_NS
                {
                    *self
                        .cx
                        .counters
                        .errors
                        .entry("HANDSHAKE_TIMEOUT_CLIENT".into())
                        .or_default() += 1;
                    self.close(i, Close::Retry);
                }
            }
        }
        let all_back = self.cx.counters.ready + self.cx.counters.failed == self.conns.len() as u64;
        if let Some(t) = self.traffic.as_mut() {
            if let Some(storm) = t.storm.as_mut() {
                if storm.recover_ms.is_none() && all_back && self.handshaking == 0 {
                    storm.recover_ms = Some((now - t.storm_start_ns) / 1_000_000);
                }
            }
            t.inflight = t
                .senders
                .iter()
                .map(|&(c, _)| self.conns[c as usize].inflight())
                .sum();
        }
        self.fill_windows();
        if now.saturating_sub(self.last_progress_ns) >= PROGRESS_NS {
            self.last_progress_ns = now;
            for i in 0..self.conns.len() {
                match self.conns[i].heartbeat(&mut self.cx) {
                    Outcome::Continue => self.mark_dirty(i),
                    Outcome::Close { retry } => {
                        self.close(i, if retry { Close::Retry } else { Close::Fatal })
                    }
                }
            }
            self.emit(FromWorker::Progress(self.cx.counters.clone()));
        }
    }

    fn check_phase(&mut self) {
        let Some(phase) = self.waiting else { return };
        let now = self.cx.now_ns;
        let done = match phase {
            Phase::Connect => {
                self.ramp.is_none() && self.handshaking == 0 && self.reconnects.is_empty()
            }
            Phase::Setup => self.cx.setup_pending == 0,
            Phase::FinalSync => self.cx.final_sync_pending == 0,
            Phase::Traffic => {
                let t = self
                    .traffic
                    .as_ref()
                    .expect("traffic phase has traffic state");
                let storm_over = t.storm.is_none_or(|s| s.recover_ms.is_some());
                !t.sending
                    && ((t.inflight == 0
                        && storm_over
                        && now >= self.last_tick_ns
                        && self.last_tick_ns > t.end_ns)
                        || now >= t.end_ns + t.spec.drain_ms * 1_000_000)
            }
        };
        if !done {
            return;
        }
        self.waiting = None;
        let storm = match phase {
            Phase::Traffic => self.traffic.as_ref().and_then(|t| t.storm),
            _ => None,
        };
        if phase == Phase::Traffic {
            self.traffic = None;
        }
        let threads = std::mem::take(&mut self.cx.threads_out);
        self.emit(FromWorker::Done {
            phase,
            counters: self.cx.counters.clone(),
            threads,
            storm,
        });
    }
}

/// Bytes read from a WebSocket connection: the upgrade's answer, then the payload of the
/// server's binary messages, which go to the session as TCP bytes would.
fn ws_input(c: &mut Conn, link: &mut ws::WsLink, data: &[u8], cx: &mut Cx) -> Outcome {
    let mut pos = 0;
    loop {
        match link.next(data, &mut pos) {
            Ok(None) => return Outcome::Continue,
            Ok(Some(ws::Piece::Data(bytes))) => {
                let outcome = c.on_input(bytes, cx);
                if outcome != Outcome::Continue {
                    return outcome;
                }
            }
            Ok(Some(ws::Piece::Closed)) | Err(_) => return Outcome::Close { retry: true },
        }
    }
}
