//! Shared harness for black-box tests: a real `courier serve` child on an ephemeral loopback
//! port with its own temporary data directory, and a small blocking client over the protocol's `Session`.
//!
//! Servers are encrypted, as by default: the harness reads the public key the server prints
//! at start ([`Server::key`]) and [`Server::connect`] pins it (IK). A test passes
//! `--insecure-plaintext` for a plaintext server; [`Server::client_args`] gives the matching
//! flags for the CLI and the load generator.
//!
//! Everything is bounded in time: starting waits at most [`START_TIMEOUT`], every read takes a
//! timeout, and a [`Server`] kills its child when dropped, so a failing test leaves no process
//! behind. Only the child each `Server` started is ever signalled.

// Each test binary uses a different part of the harness.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use courier_protocol::noise::{Keypair, PublicKey, Transport, MAX_RECORD_LEN};
use courier_protocol::session::{CloseReason, Encryption, Event};
use courier_protocol::{
    encode, AuthOk, Decoder, Envelope, ErrorCode, ErrorReply, Frame, ListThreads, Login, Ping,
    Redirect, Register, Resume, Session, SessionConfig, ThreadList, Welcome, MAX_FRAME_LEN,
};

pub mod cluster;
pub mod proxy;
pub mod push;

/// How long a server may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `stop` waits for a clean exit before killing.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default wait for one reply.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The key each encrypted server of this test process printed, by address: for helpers that
/// only have the address in hand ([`client_args_for`]).
static SERVER_KEYS: Mutex<Vec<(String, PublicKey)>> = Mutex::new(Vec::new());

/// [`Server::client_args`] for the server listening on `addr`: `--server-key HEX` if it is an
/// encrypted server of this process, else `--insecure-plaintext`.
pub fn client_args_for(addr: impl std::fmt::Display) -> Vec<String> {
    let addr = addr.to_string();
    let keys = SERVER_KEYS.lock().unwrap_or_else(|e| e.into_inner());
    match keys.iter().rev().find(|(a, _)| *a == addr) {
        Some((_, key)) => vec!["--server-key".into(), key.to_string()],
        None => vec!["--insecure-plaintext".into()],
    }
}

/// A password every test account can use.
pub const PASSWORD: &str = "correct horse battery";

/// The `courier-cli` binary, built next to `courier` by `cargo build --workspace` (this package
/// cannot name another package's binary with `CARGO_BIN_EXE_*`).
pub fn cli_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_courier")).with_file_name("courier-cli");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --workspace` first (`cargo test -p courier` alone does not build courier-cli)",
        bin.display()
    );
    bin
}

/// A running `courier serve`.
pub struct Server {
    /// The client address (one listen address, port chosen by the OS).
    pub addr: SocketAddr,
    /// The server's public key as it printed it; `None` with `--insecure-plaintext`.
    pub key: Option<PublicKey>,
    pub data_dir: PathBuf,
    /// The server's stderr (its log), kept next to the data directory.
    pub log_path: PathBuf,
    args: Vec<String>,
    /// Applied to the command on every start (environment, resource limits).
    configure: Option<Configure>,
    child: Mutex<Option<Child>>,
    _dir: tempfile::TempDir,
}

/// Adjusts the server's command before it is spawned (see [`Server::start_configured`]).
pub type Configure = Box<dyn Fn(&mut Command) + Send + Sync>;

impl Server {
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// Starts a server with `extra` arguments. The harness adds `--shards 2`,
    /// `--argon2-m-kib 64` (fast password hashing) and `--register-per-address 1000000` unless
    /// `extra` sets them.
    pub fn start_with(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let data_dir = dir.path().join("data");
        Server::start_in(dir, data_dir, extra, None)
    }

    /// [`start_with`](Self::start_with) on a data directory that already holds `key` as its
    /// `noise.key`: a cluster's `--peer` list names every node's key before any node starts.
    pub fn start_keyed(key: &Keypair, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let data_dir = dir.path().join("data");
        write_key(&data_dir, key);
        Server::start_in(dir, data_dir, extra, None)
    }

    /// [`start_with`](Self::start_with), with environment variables for the server (test hooks
    /// such as `COURIER_TEST_READ_GATE`).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Server::start_configured(
            extra,
            Box::new(move |command: &mut Command| {
                command.envs(env.iter().map(|(k, v)| (k, v)));
            }),
        )
    }

    /// Like [`start_with`](Self::start_with), with `configure` applied to the command on this
    /// and every later start (environment variables, `pre_exec` resource limits).
    pub fn start_configured(extra: &[&str], configure: Configure) -> Server {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let data_dir = dir.path().join("data");
        Server::start_in(dir, data_dir, extra, Some(configure))
    }

    /// Starts a server whose data directory is `data_dir` (e.g. on a small file system the
    /// test mounted); the log goes to `dir`.
    pub fn start_in(
        dir: tempfile::TempDir,
        data_dir: PathBuf,
        extra: &[&str],
        configure: Option<Configure>,
    ) -> Server {
        let log_path = dir.path().join("server.log");
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, addr, key) = spawn(
            &data_dir,
            &log_path,
            "127.0.0.1:0",
            &args,
            configure.as_deref(),
        );
        Server {
            addr,
            key,
            data_dir,
            log_path,
            args,
            configure,
            child: Mutex::new(Some(child)),
            _dir: dir,
        }
    }

    /// Waits up to `timeout` for the server to exit by itself; returns its status, or `None`
    /// if it is still running (it is left running).
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut guard = self.child.lock().ok()?;
            let child = guard.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                guard.take();
                return Some(status);
            }
            drop(guard);
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.lock().ok()?.as_ref().map(Child::id)
    }

    /// Waits (at most 10 s) until the kernel reports every thread of the server stopped, after
    /// a SIGSTOP: it takes effect on each thread as it next runs (one thread takes the signal
    /// and then stops the others, and on a loaded machine the rest may answer a request
    /// meanwhile).
    pub fn wait_stopped(&self) {
        let pid = self.pid().expect("a running server");
        let deadline = Instant::now() + Duration::from_secs(10);
        let all_stopped = || {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                return false;
            };
            tasks.flatten().all(|task| {
                let status =
                    std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
                status
                    .lines()
                    .any(|l| l.starts_with("State:") && l.contains("stopped"))
            })
        };
        while !all_stopped() {
            assert!(Instant::now() < deadline, "pid {pid} did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`) to the running child, if any.
    pub fn signal(&self, signal: libc::c_int) {
        if let Some(child) = self.child.lock().ok().as_ref().and_then(|c| c.as_ref()) {
            // SAFETY: kill(2) with our own child's pid, which we have not waited for yet.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
    }

    /// SIGKILL: a crash, with no chance to flush anything.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().ok().and_then(|mut c| c.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits (at most [`STOP_TIMEOUT`], then SIGKILL) and returns the exit
    /// status, or `None` if the server was not running or had to be killed.
    pub fn stop(&self) -> Option<ExitStatus> {
        let mut child = self.child.lock().ok()?.take()?;
        // SAFETY: kill(2) with our own child's pid, which we have not waited for yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    /// Stops the server (SIGTERM) if running and starts it again on the same data directory.
    /// It listens on a fresh ephemeral port (read `addr` again): reusing the old one could race
    /// with another process taking it meanwhile.
    pub fn restart(&mut self) {
        self.stop();
        let (child, addr, key) = spawn(
            &self.data_dir,
            &self.log_path,
            "127.0.0.1:0",
            &self.args,
            self.configure.as_deref(),
        );
        self.addr = addr;
        self.key = key;
        if let Ok(mut c) = self.child.lock() {
            *c = Some(child);
        }
    }

    /// SIGKILL, then a start on the same data directory **and the same address**, for clients
    /// that must find the server where they left it (the soak test's load generator). The
    /// port was ours until the kill; if another process takes it meanwhile, the start fails
    /// with the server's log.
    pub fn crash_and_restart_in_place(&mut self) {
        self.kill();
        let (child, addr, _key) = spawn(
            &self.data_dir,
            &self.log_path,
            &self.addr.to_string(),
            &self.args,
            self.configure.as_deref(),
        );
        assert_eq!(addr, self.addr, "restarted on another address");
        if let Ok(mut c) = self.child.lock() {
            *c = Some(child);
        }
    }

    /// Resident memory of the server process, from `/proc/PID/status` (`VmRSS`).
    pub fn rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    }

    /// The Prometheus text of `GET /metrics`, from the address the running server logged last
    /// (started with `--metrics 127.0.0.1:0`; a restart logs a new one).
    pub fn metrics(&self) -> String {
        let log = self.log();
        let addr = log
            .rsplit("metrics on http://")
            .next()
            .filter(|_| log.contains("metrics on http://"))
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| {
                panic!("no metrics address in the log (start with --metrics 127.0.0.1:0):\n{log}")
            })
            .to_owned();
        let mut http = TcpStream::connect(&addr).expect("connect to the metrics address");
        http.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        http.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        let _ = http.read_to_string(&mut text);
        assert!(text.starts_with("HTTP/1.0 200"), "metrics answered: {text}");
        text
    }

    /// The sum of every sample of metric `name` (all label sets) in `metrics` text.
    pub fn metric_sum(metrics: &str, name: &str) -> f64 {
        metrics
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Sockets the server process holds open (connections, listeners, the metrics socket),
    /// from `/proc/PID/fd`; 0 when it is not running.
    pub fn open_sockets(&self) -> u64 {
        let Some(pid) = self.pid() else { return 0 };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return 0;
        };
        fds.filter_map(Result::ok)
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .filter(|target| target.to_string_lossy().starts_with("socket:"))
            .count() as u64
    }

    /// Stops the server, provisions `n` load-test users (`load0`, `load1`, …, password
    /// [`PASSWORD`]) into its data directory with `courier admin provision`, restarts it, and
    /// returns the users file (`user_id handle token_hex` lines) the load generator reads.
    pub fn provision(&mut self, n: usize) -> PathBuf {
        self.stop();
        let out = self.data_dir.with_file_name("users.txt");
        let output = Command::new(env!("CARGO_BIN_EXE_courier"))
            .args(["admin", "provision", "--data-dir"])
            .arg(&self.data_dir)
            .args([
                "--users",
                &n.to_string(),
                "--prefix",
                "load",
                "--password",
                PASSWORD,
            ])
            .args(["--argon2-m-kib", "64", "--out"])
            .arg(&out)
            .output()
            .expect("run courier admin provision");
        assert!(
            output.status.success(),
            "courier admin provision failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        self.restart();
        out
    }

    /// Stops the server, runs `courier admin ARGS --data-dir DIR` on its data directory,
    /// restarts it and returns what the command printed; panics with its stderr if it failed.
    pub fn admin(&mut self, args: &[&str]) -> String {
        self.stop();
        let output = Command::new(env!("CARGO_BIN_EXE_courier"))
            .arg("admin")
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .output()
            .expect("run courier admin");
        assert!(
            output.status.success(),
            "courier admin {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        self.restart();
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A new connection to this server, its handshake done if the server is encrypted
    /// (with the server's key pinned); nothing else is sent yet.
    pub fn connect(&self) -> TestConn {
        TestConn::connect_with(self.addr, self.encryption())
    }

    /// How a client reaches this server: the pinned key, or plaintext.
    pub fn encryption(&self) -> Encryption {
        self.key.map_or(Encryption::Plaintext, Encryption::Pinned)
    }

    /// The flags that point `courier-cli` or the load generator at this server's transport:
    /// `--server-key HEX`, or `--insecure-plaintext`.
    pub fn client_args(&self) -> Vec<String> {
        match self.key {
            Some(key) => vec!["--server-key".into(), key.to_string()],
            None => vec!["--insecure-plaintext".into()],
        }
    }

    /// A connection that said hello and registered `handle` (device "test").
    /// A new connection, past HELLO, resumed with `token`.
    pub fn resumed(&self, token: &Bytes) -> TestConn {
        let mut c = self.connect();
        c.hello();
        c.resume(token);
        c
    }

    pub fn user(&self, handle: &str) -> (TestConn, AuthOk) {
        let mut c = self.connect();
        c.hello();
        let ok = c.register(handle, PASSWORD, "test");
        (c, ok)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(
    data_dir: &std::path::Path,
    log_path: &std::path::Path,
    listen: &str,
    extra: &[String],
    configure: Option<&(dyn Fn(&mut Command) + Send + Sync)>,
) -> (Child, SocketAddr, Option<PublicKey>) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("open the server log");
    let mut defaults = Vec::new();
    // Tests register many accounts from one loopback address: no registration limit unless
    // a test sets one.
    for (flag, value) in [
        ("--shards", "2"),
        ("--argon2-m-kib", "64"),
        ("--register-per-address", "1000000"),
    ] {
        if !extra.iter().any(|a| a == flag) {
            defaults.extend([flag, value]);
        }
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_courier"));
    command
        .arg("serve")
        .args(["--listen", listen])
        .args(&defaults)
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    if let Some(configure) = configure {
        configure(&mut command);
    }
    let mut child = command.spawn().expect("start the courier binary");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keeps draining stdout for the life of the child so it never blocks on a full pipe.
        let mut key = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(text) = line.strip_prefix("courier server key ") {
                key = PublicKey::parse(text, "the server's key line").ok();
            }
            if let Some(addr) = line.strip_prefix("courier listening on ") {
                let _ = tx.send((addr.trim().to_owned(), key));
            }
        }
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok((addr, key)) => {
            let mut keys = SERVER_KEYS.lock().unwrap_or_else(|e| e.into_inner());
            keys.retain(|(a, _)| *a != addr);
            if let Some(key) = key {
                keys.push((addr.clone(), key));
            }
            (
                child,
                addr.parse().expect("the listening line holds an address"),
                key,
            )
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(log_path).unwrap_or_default();
            panic!("courier did not start within {START_TIMEOUT:?}; its log:\n{log}");
        }
    }
}

/// OPEN_DIRECT with `peer`: the thread's id (panics on anything else).
pub fn direct(c: &mut TestConn, peer: u64) -> u64 {
    match c.request(courier_protocol::OpenDirect { peer }) {
        Frame::ThreadInfo(t) => t.thread.id,
        other => panic!("OPEN_DIRECT: {other:?}"),
    }
}

/// SEND of the text `body`: the server's answer as it is (SENT or an error).
pub fn try_send(c: &mut TestConn, thread: u64, client_msg_id: u64, body: &str) -> Frame {
    c.request(courier_protocol::Send {
        thread,
        client_msg_id,
        kind: courier_protocol::MessageKind::Text,
        body: Bytes::copy_from_slice(body.as_bytes()),
        reply_to: 0,
    })
}

/// SEND of the text `body`, which must be answered with SENT.
pub fn send(
    c: &mut TestConn,
    thread: u64,
    client_msg_id: u64,
    body: &str,
) -> courier_protocol::Sent {
    match try_send(c, thread, client_msg_id, body) {
        Frame::Sent(s) => s,
        other => panic!("SEND: {other:?}"),
    }
}

/// What one read from a [`TestConn`] produced.
#[derive(Debug)]
pub enum Recv {
    Frame(Envelope),
    /// The server closed the connection (EOF or reset).
    Closed,
    Timeout,
}

/// Who reads the connection: the protocol [`Session`], or the test itself.
enum Speaker {
    /// Every well-behaved test: the session says `HELLO`, allocates request ids and matches
    /// replies, as the client library and the loadgen do.
    Session(Box<Session>),
    /// After a test sent hand-made bytes ([`TestConn::send`], [`TestConn::send_raw`],
    /// [`TestConn::raw_writer`]): request id 0, a second `HELLO`, oversize or garbage frames, a
    /// burst of frames under one id. The session would refuse to send these, and would drop the
    /// replies to ids it did not allocate, so from then on the frames are decoded here as they
    /// come and handed to the test unmatched. On an encrypted connection the session's record
    /// layer is taken over: hand-made bytes are sealed, the server's records opened here.
    Raw {
        buf: BytesMut,
        decoder: Decoder,
        records: Option<RawRecords>,
    },
}

/// The record layer of an encrypted connection that went raw.
struct RawRecords {
    transport: Transport,
    /// Received bytes not yet opened (a partial record).
    unopened: BytesMut,
}

/// Plaintext bytes per record when a test writes hand-made bytes: below the server's
/// pre-authentication record limit, so a big hand-made frame reaches the frame decoder.
const RAW_RECORD_PLAINTEXT: usize = 4096;

/// A blocking client for tests over a protocol [`Session`]: sends requests, matches replies by
/// request id and buffers everything else (pushes, replies to other requests). Tests that must
/// send what a correct client never sends use the raw methods, which take the session out.
pub struct TestConn {
    pub stream: TcpStream,
    speaker: Speaker,
    /// Frames received while waiting for something else, in arrival order.
    pending: VecDeque<Envelope>,
    /// Frames decoded (by the session, as events) and not yet handed out by `recv_until`.
    decoded: VecDeque<Envelope>,
    /// The server closed the transport (EOF or an error). A session closed by the server's
    /// ERROR_REPLY(0) or REDIRECT is not enough: tests wait for the socket to close too.
    closed: bool,
    /// Whether the session's `HELLO` went out.
    hello_sent: bool,
}

/// The request id of the session's `HELLO`: the first id it allocates.
const HELLO_ID: u32 = 1;

impl TestConn {
    /// Connects in plaintext (a server run with `--insecure-plaintext`); nothing is sent
    /// until the test says `HELLO` or sends something itself.
    pub fn connect(addr: SocketAddr) -> TestConn {
        TestConn::connect_with(addr, Encryption::Plaintext)
    }

    /// Connects and runs the encrypted handshake, if any, to its end; nothing else is sent
    /// until the test says `HELLO` or sends something itself. A server that answers the
    /// handshake with a plaintext `ERROR_REPLY` (full, shutting down) gives a connection whose
    /// first frame is that reply, then the close; any other failure panics.
    pub fn connect_with(addr: SocketAddr, encryption: Encryption) -> TestConn {
        TestConn::start(
            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .expect("connect to the server"),
            encryption,
        )
    }

    /// A connected stream's session, its handshake run as in [`connect_with`](Self::connect_with).
    fn start(stream: TcpStream, encryption: Encryption) -> TestConn {
        let mut conn = TestConn::new(stream, encryption);
        if encryption == Encryption::Plaintext {
            return conn;
        }
        match conn.handshake() {
            Ok(()) => {}
            Err(CloseReason::PlaintextAnswer { code, message }) => {
                let frame = Frame::ErrorReply(ErrorReply { code, message });
                conn.decoded.push_back(Envelope {
                    request_id: 0,
                    frame,
                });
            }
            Err(reason) => panic!("the encrypted handshake failed: {reason}"),
        }
        conn
    }

    /// [`connect_with`](Self::connect_with), returning why the handshake failed.
    pub fn try_connect_with(
        addr: SocketAddr,
        encryption: Encryption,
    ) -> Result<TestConn, CloseReason> {
        let mut conn = TestConn::open(addr, encryption);
        if encryption != Encryption::Plaintext {
            conn.handshake()?;
        }
        Ok(conn)
    }

    /// [`connect_with`](Self::connect_with) from the local address `source` (e.g.
    /// 127.0.0.2: the whole of 127/8 is loopback), for tests of per-address limits.
    pub fn connect_from(
        addr: SocketAddr,
        source: std::net::IpAddr,
        encryption: Encryption,
    ) -> TestConn {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .expect("create a socket");
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .expect("bind the source address");
        socket
            .connect_timeout(&addr.into(), Duration::from_secs(5))
            .expect("connect to the server");
        TestConn::start(socket.into(), encryption)
    }

    /// Connects; the session's first handshake message, if any, is not written yet.
    fn open(addr: SocketAddr, encryption: Encryption) -> TestConn {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .expect("connect to the server");
        TestConn::new(stream, encryption)
    }

    fn new(stream: TcpStream, encryption: Encryption) -> TestConn {
        let _ = stream.set_nodelay(true);
        let config = SessionConfig {
            client_name: "courier-tests".into(),
            encryption,
            ..SessionConfig::default()
        };
        TestConn {
            stream,
            speaker: Speaker::Session(Box::new(Session::new(config, Instant::now()))),
            pending: VecDeque::new(),
            decoded: VecDeque::new(),
            closed: false,
            hello_sent: false,
        }
    }

    /// Writes the session's handshake messages and reads the server's until the session is
    /// secured; `HELLO` stays queued. Only for an encrypted connection.
    fn handshake(&mut self) -> Result<(), CloseReason> {
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let Speaker::Session(session) = &mut self.speaker else {
                unreachable!("a new connection has its session")
            };
            let mut out = BytesMut::new();
            if session.poll_handshake_transmit(&mut out) > 0 {
                self.stream.write_all(&out).expect("write to the server");
            }
            if session.is_secured() {
                return Ok(());
            }
            if let Some(Event::Closed { reason }) = session.poll_event() {
                return Err(reason);
            }
            let now = Instant::now();
            assert!(now < deadline, "the server did not finish the handshake");
            let _ = self.stream.set_read_timeout(Some(deadline - now));
            let mut chunk = [0u8; 1024];
            match self.stream.read(&mut chunk) {
                Ok(n) if n > 0 => session.handle_input(&chunk[..n], Instant::now()),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                _ => session.handle_transport_closed(),
            }
        }
    }

    /// The server's key as the handshake proved it; `None` on a plaintext connection.
    pub fn server_key(&self) -> Option<PublicKey> {
        match &self.speaker {
            Speaker::Session(session) => session.server_key(),
            Speaker::Raw { .. } => None,
        }
    }

    /// Sends `frame` under a fresh request id without waiting; the reply comes from
    /// [`reply`](Self::reply) with that id. `TYPING` gets no reply.
    pub fn send_request(&mut self, frame: impl Into<Frame>) -> u32 {
        let frame = frame.into();
        let Speaker::Session(session) = &mut self.speaker else {
            panic!(
                "this connection sent hand-made frames, so the session no longer matches its \
                 replies: send {} on a new connection",
                frame.name()
            );
        };
        assert!(
            self.hello_sent,
            "say HELLO first (TestConn::hello), or send {} raw with TestConn::send",
            frame.name()
        );
        let id = session
            .send_request(&frame)
            .unwrap_or_else(|e| panic!("the session refused {}: {e}", frame.name()));
        self.flush();
        id
    }

    /// Sends one hand-made frame with `request_id`, without waiting. The session is taken out
    /// (see [`Speaker::Raw`]): later frames arrive unmatched through
    /// [`recv_until`](Self::recv_until), [`reply`](Self::reply) and
    /// [`expect_closed`](Self::expect_closed).
    pub fn send(&mut self, request_id: u32, frame: impl Into<Frame>) {
        let mut out = BytesMut::new();
        encode(request_id, &frame.into(), &mut out);
        self.send_raw(&out);
    }

    /// Writes hand-made bytes (see [`send`](Self::send)).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.try_send_raw(bytes).expect("write to the server");
    }

    /// [`send_raw`](Self::send_raw) for a server that may be gone already.
    pub fn try_send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.go_raw();
        match &mut self.speaker {
            Speaker::Raw {
                records: Some(r), ..
            } => {
                let mut sealed = BytesMut::new();
                for chunk in bytes.chunks(RAW_RECORD_PLAINTEXT) {
                    r.transport
                        .seal(chunk, &mut sealed)
                        .expect("nonces are far from exhausted");
                }
                self.stream.write_all(&sealed)
            }
            _ => self.stream.write_all(bytes),
        }
    }

    /// Seals hand-made plaintext as one record of this encrypted connection without sending
    /// it, for tests that alter, replay or reorder records ([`write_wire`](Self::write_wire)
    /// sends them). The session is taken out as by [`send_raw`](Self::send_raw).
    pub fn seal_record(&mut self, plaintext: &[u8]) -> Vec<u8> {
        self.go_raw();
        let Speaker::Raw {
            records: Some(r), ..
        } = &mut self.speaker
        else {
            panic!("seal_record needs an encrypted connection whose handshake is done");
        };
        let mut sealed = BytesMut::new();
        r.transport
            .seal(plaintext, &mut sealed)
            .expect("nonces are far from exhausted");
        sealed.to_vec()
    }

    /// Writes bytes to the socket exactly as given: no sealing, even on an encrypted
    /// connection.
    pub fn write_wire(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.go_raw();
        self.stream.write_all(bytes)
    }

    /// A second handle on the socket for writing hand-made bytes from another thread (see
    /// [`send`](Self::send)); plaintext connections only, since the record layer cannot be
    /// shared between two threads.
    pub fn raw_writer(&mut self) -> TcpStream {
        self.go_raw();
        assert!(
            matches!(self.speaker, Speaker::Raw { records: None, .. }),
            "raw_writer needs a plaintext connection: start the server with --insecure-plaintext"
        );
        self.stream.try_clone().expect("clone the socket")
    }

    /// Takes the session out: frames it decoded are kept in order, and the bytes it had not
    /// decoded yet are decoded here from now on (on an encrypted connection, after the
    /// records they came in are opened here). Frames the session had not sent (a `HELLO` the
    /// test did not say) are dropped.
    fn go_raw(&mut self) {
        if let Speaker::Session(session) = &mut self.speaker {
            let records = session
                .take_transport()
                .map(|(transport, unopened)| RawRecords {
                    transport,
                    unopened,
                });
            let buf = session.take_undecoded();
            self.drain_events();
            self.speaker = Speaker::Raw {
                buf,
                decoder: Decoder::new(MAX_FRAME_LEN),
                records,
            };
        }
    }

    /// Writes what the session has to send.
    fn flush(&mut self) {
        if let Speaker::Session(session) = &mut self.speaker {
            let mut out = BytesMut::new();
            if session.poll_transmit(&mut out) > 0 {
                self.stream.write_all(&out).expect("write to the server");
            }
        }
    }

    /// Sends `frame` with a fresh id and returns the reply with that id (an `ErrorReply` is a
    /// reply too). Panics if none comes within [`REPLY_TIMEOUT`] or the connection closes.
    /// The first page of LIST_THREADS with `limit` rows (0: the server's default).
    pub fn thread_list(&mut self, limit: u16) -> ThreadList {
        match self.request(ListThreads {
            before_msg_id: 0,
            before_thread: 0,
            limit,
        }) {
            Frame::ThreadList(list) => list,
            other => panic!("LIST_THREADS: {other:?}"),
        }
    }

    pub fn request(&mut self, frame: impl Into<Frame>) -> Frame {
        let id = self.send_request(frame);
        self.reply(id, REPLY_TIMEOUT)
    }

    /// Waits for the reply to `request_id`, buffering other frames.
    pub fn reply(&mut self, request_id: u32, timeout: Duration) -> Frame {
        if let Some(i) = self.pending.iter().position(|e| e.request_id == request_id) {
            return self
                .pending
                .remove(i)
                .map(|e| e.frame)
                .unwrap_or_else(|| unreachable!());
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv_until(deadline) {
                Recv::Frame(e) if e.request_id == request_id => return e.frame,
                Recv::Frame(e) => self.pending.push_back(e),
                Recv::Closed => panic!(
                    "connection closed while waiting for reply {request_id}; got {:?}",
                    self.pending
                ),
                Recv::Timeout => panic!(
                    "no reply to request {request_id} within {timeout:?}; got {:?}",
                    self.pending
                ),
            }
        }
    }

    /// The next push (request id 0), skipping nothing else: other frames stay buffered.
    pub fn next_push(&mut self, timeout: Duration) -> Option<Frame> {
        if let Some(i) = self.pending.iter().position(|e| e.request_id == 0) {
            return self.pending.remove(i).map(|e| e.frame);
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv_until(deadline) {
                Recv::Frame(e) if e.request_id == 0 => return Some(e.frame),
                Recv::Frame(e) => self.pending.push_back(e),
                Recv::Closed | Recv::Timeout => return None,
            }
        }
    }

    /// The next push matching `pred`, dropping other pushes.
    pub fn push_where(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Frame) -> bool,
    ) -> Option<Frame> {
        let deadline = Instant::now() + timeout;
        while let Some(f) = self.next_push(deadline.saturating_duration_since(Instant::now())) {
            if pred(&f) {
                return Some(f);
            }
        }
        None
    }

    /// Waits for the server to close the connection; returns every frame that came before the
    /// close (including buffered ones). Panics if it stays open for `timeout`.
    pub fn expect_closed(&mut self, timeout: Duration) -> Vec<Frame> {
        let mut frames: Vec<Frame> = self.pending.drain(..).map(|e| e.frame).collect();
        let deadline = Instant::now() + timeout;
        loop {
            match self.recv_until(deadline) {
                Recv::Frame(e) => frames.push(e.frame),
                Recv::Closed => return frames,
                Recv::Timeout => panic!(
                    "the server did not close the connection within {timeout:?}; got {frames:?}"
                ),
            }
        }
    }

    /// Reads one frame, or reports a close or the deadline passing. Frames decoded earlier
    /// and not yet handed out come first.
    pub fn recv_until(&mut self, deadline: Instant) -> Recv {
        loop {
            if let Some(e) = self.next_decoded() {
                return Recv::Frame(e);
            }
            if self.closed {
                return Recv::Closed;
            }
            let now = Instant::now();
            if now >= deadline {
                return Recv::Timeout;
            }
            let _ = self
                .stream
                .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))));
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => self.transport_closed(),
                Ok(n) => match &mut self.speaker {
                    Speaker::Session(session) => session.handle_input(&chunk[..n], Instant::now()),
                    Speaker::Raw {
                        buf, records: None, ..
                    } => buf.extend_from_slice(&chunk[..n]),
                    Speaker::Raw {
                        buf,
                        records: Some(r),
                        ..
                    } => {
                        r.unopened.extend_from_slice(&chunk[..n]);
                        if let Err(e) = r.transport.open_all(&mut r.unopened, MAX_RECORD_LEN, buf) {
                            panic!("the server sent a record that does not open: {e}");
                        }
                    }
                },
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Recv::Timeout
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.transport_closed(),
            }
        }
    }

    fn transport_closed(&mut self) {
        self.closed = true;
        if let Speaker::Session(session) = &mut self.speaker {
            session.handle_transport_closed();
        }
    }

    /// The next frame already decoded: the session's events as the frames that caused them,
    /// or, raw, the next frame in the buffer.
    fn next_decoded(&mut self) -> Option<Envelope> {
        self.drain_events();
        if let Some(e) = self.decoded.pop_front() {
            return Some(e);
        }
        match &mut self.speaker {
            Speaker::Session(_) => None,
            Speaker::Raw { buf, decoder, .. } => match decoder.decode(buf) {
                Ok(e) => e,
                Err(e) => panic!("the server sent bytes that do not decode: {e}"),
            },
        }
    }

    /// Turns the session's events into the frames that caused them, in order.
    fn drain_events(&mut self) {
        let Speaker::Session(session) = &mut self.speaker else {
            return;
        };
        while let Some(event) = session.poll_event() {
            let (request_id, frame) = match event {
                Event::Welcomed(w) => (HELLO_ID, Frame::Welcome(w)),
                Event::Authenticated { request_id, auth } => (request_id, Frame::AuthOk(auth)),
                Event::Reply { request_id, frame } => (request_id, frame),
                Event::Push(frame) => (0, frame),
                Event::Redirect { node, addr, key } => {
                    let key = key.map_or(Bytes::new(), |k| Bytes::copy_from_slice(k.as_bytes()));
                    (0, Frame::Redirect(Redirect { node, addr, key }))
                }
                Event::Closed { reason } => {
                    match reason {
                        // The frame that announced the close, as the server sent it.
                        CloseReason::Server { code, message } => {
                            (0, Frame::ErrorReply(ErrorReply { code, message }))
                        }
                        CloseReason::HandshakeRefused { code, message } => {
                            (HELLO_ID, Frame::ErrorReply(ErrorReply { code, message }))
                        }
                        // The server closes the socket next; recv_until reports that.
                        CloseReason::Redirected
                        | CloseReason::TransportClosed
                        | CloseReason::Local => continue,
                        other => panic!("the session closed the connection: {other}"),
                    }
                }
            };
            self.decoded.push_back(Envelope { request_id, frame });
        }
    }

    /// Sends the session's `HELLO` without waiting for `WELCOME`.
    pub fn start_hello(&mut self) {
        assert!(
            matches!(self.speaker, Speaker::Session(_)) && !self.hello_sent,
            "HELLO goes first, once"
        );
        self.hello_sent = true;
        self.flush();
    }

    pub fn hello(&mut self) -> Welcome {
        self.start_hello();
        match self.reply(HELLO_ID, REPLY_TIMEOUT) {
            Frame::Welcome(w) => w,
            other => panic!("expected WELCOME, got {other:?}"),
        }
    }

    pub fn try_register(&mut self, handle: &str, password: &str, device: &str) -> Frame {
        self.request(Register {
            handle: handle.into(),
            password: password.into(),
            device: device.into(),
        })
    }

    pub fn register(&mut self, handle: &str, password: &str, device: &str) -> AuthOk {
        expect_auth(self.try_register(handle, password, device))
    }

    pub fn try_login(&mut self, handle: &str, password: &str, device: &str) -> Frame {
        self.request(Login {
            handle: handle.into(),
            password: password.into(),
            device: device.into(),
        })
    }

    pub fn login(&mut self, handle: &str, password: &str, device: &str) -> AuthOk {
        expect_auth(self.try_login(handle, password, device))
    }

    pub fn try_resume(&mut self, token: &Bytes) -> Frame {
        self.request(Resume {
            token: token.clone(),
        })
    }

    pub fn resume(&mut self, token: &Bytes) -> AuthOk {
        expect_auth(self.try_resume(token))
    }

    /// PING, expecting PONG.
    pub fn ping(&mut self) {
        match self.request(Ping { nonce: 42 }) {
            Frame::Pong(p) => assert_eq!(p.nonce, 42),
            other => panic!("expected PONG, got {other:?}"),
        }
    }
}

fn expect_auth(frame: Frame) -> AuthOk {
    match frame {
        Frame::AuthOk(ok) => ok,
        other => panic!("expected AUTH_OK, got {other:?}"),
    }
}

/// The error code of an `ERROR_REPLY`, or a panic naming what came instead.
pub fn error_code(frame: &Frame) -> ErrorCode {
    match frame {
        Frame::ErrorReply(e) => {
            ErrorCode::from_u16(e.code).unwrap_or_else(|| panic!("unknown error code {}", e.code))
        }
        other => panic!("expected ERROR_REPLY, got {other:?}"),
    }
}

/// Whether `frames` holds an `ERROR_REPLY` with `code`.
pub fn has_error(frames: &[Frame], code: ErrorCode) -> bool {
    frames
        .iter()
        .any(|f| matches!(f, Frame::ErrorReply(e) if e.code == code as u16))
}

/// Writes `key` as the `noise.key` of `data_dir` (created if missing), mode 0600 as the server
/// requires.
pub fn write_key(data_dir: &Path, key: &Keypair) {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(data_dir).expect("create the data directory");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(data_dir.join("noise.key"))
        .expect("create noise.key");
    file.write_all(key.to_file_text().as_bytes())
        .expect("write noise.key");
}
