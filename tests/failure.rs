//! How the server behaves when a part of it fails, over real TCP against a real server: a
//! panicking shard, a failing disk, a stalled process, an exhausted file table.

mod util;

use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_protocol::*;
use util::{direct, try_send, Server, TestConn};

const WAIT: Duration = Duration::from_secs(5);

/// Every message of `thread`, oldest first (all pages).
fn history(c: &mut TestConn, thread: u64) -> Vec<Message> {
    let mut all: Vec<Message> = Vec::new();
    loop {
        let anchor = all.last().map_or(0, |m| m.id);
        match c.request(History {
            thread,
            anchor,
            direction: Direction::Forward,
            limit: 500,
        }) {
            Frame::Messages(m) if m.messages.is_empty() => return all,
            Frame::Messages(m) => all.extend(m.messages),
            other => panic!("HISTORY: {other:?}"),
        }
    }
}

/// The nonce that makes a shard panic in these tests (see `FAULT_PANIC_ON_PING`).
const PANIC_NONCE: u64 = 0xdead_beef;

/// Regression: a shard that panicked used to leave the process serving half alive (its users
/// online forever, its threads unanswered). Now the process stops, syncs and exits non-zero.
#[test]
fn a_panicking_shard_stops_the_process_and_keeps_acked_data() {
    let mut server = Server::start_configured(
        &[],
        Box::new(|c| {
            c.env("COURIER_FAULT_PANIC_ON_PING", PANIC_NONCE.to_string());
        }),
    );
    let (mut alice, a) = server.user("alice");
    let (_bob, b) = server.user("bob");
    let thread = direct(&mut alice, b.user);
    let mut acked = Vec::new();
    for i in 1..=20 {
        match try_send(&mut alice, thread, i, &format!("before the panic {i}")) {
            Frame::Sent(s) => acked.push(s.message),
            other => panic!("SEND: {other:?}"),
        }
    }
    let (mut victim, _) = server.user("victim");
    victim.send_request(Ping { nonce: PANIC_NONCE });

    let started = Instant::now();
    let status = server
        .wait_exit(Duration::from_secs(10))
        .unwrap_or_else(|| {
            panic!(
                "the server kept running after a shard panicked; log:\n{}",
                server.log()
            )
        });
    assert!(
        !status.success(),
        "a failure must exit non-zero: {status:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let log = server.log();
    assert!(
        log.contains("stopped: it panicked: fault injection: PING"),
        "the log names the shard and the panic:\n{log}"
    );
    let _ = alice.expect_closed(WAIT);

    server.restart();
    let mut again = server.resumed(&a.token);
    let stored: Vec<u64> = history(&mut again, thread).iter().map(|m| m.id).collect();
    assert_eq!(stored, acked, "every acked message survives the failure");
}

/// `GET path` on the metrics port: (status code, body).
fn http_get(server: &Server, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let log = server.log();
    let addr = log
        .rsplit("metrics on http://")
        .next()
        .and_then(|rest| rest.split('/').next())
        .filter(|_| log.contains("metrics on http://"))
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"));
    let mut http = std::net::TcpStream::connect(addr).expect("connect to the metrics port");
    http.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .unwrap();
    let _ = http.set_read_timeout(Some(WAIT));
    let mut text = String::new();
    let _ = http.read_to_string(&mut text);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    (status, text)
}

/// A small tmpfs mounted for one test, unmounted when dropped; or, where mounting is not
/// permitted, a plain directory and a flag file that makes the server's free-space check see a
/// full disk (`COURIER_FAULT_FULL_DISK_FLAG`).
struct SmallDisk {
    dir: tempfile::TempDir,
    mounted: bool,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size`, or falls back to the flag file.
    fn mount_or_simulate(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("create a mount point");
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        let mounted = out.as_ref().is_ok_and(|o| o.status.success());
        if !mounted {
            eprintln!(
                "cannot mount a tmpfs ({out:?}): simulating a full disk with \
                 COURIER_FAULT_FULL_DISK_FLAG"
            );
        }
        SmallDisk { dir, mounted }
    }

    /// Mounts a tmpfs of `size`; panics where that is not permitted.
    fn mount(size: &str) -> SmallDisk {
        let disk = SmallDisk::mount_or_simulate(size);
        assert!(
            disk.mounted,
            "this test mounts a {size} tmpfs to fill a disk and needs root"
        );
        disk
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The flag file of the simulation (see [`SmallDisk`]).
    fn flag(&self) -> std::path::PathBuf {
        self.path().join("disk-is-full")
    }

    /// Fills the file system with one file (or creates the flag); returns what to delete to
    /// free the space.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        if !self.mounted {
            std::fs::write(self.flag(), b"").expect("create the flag");
            return self.flag();
        }
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).expect("create the filler");
        let chunk = vec![0xa5u8; 64 * 1024];
        loop {
            if f.write_all(&chunk).is_err() {
                break;
            }
        }
        // The last bytes, down to one.
        for size in [4096, 512, 1] {
            while f.write_all(&chunk[..size]).is_ok() {}
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

fn body(i: u64) -> String {
    format!("{i:08} {}", "x".repeat(8 * 1024))
}

/// Regression: after the disk filled up and was freed, every SEND kept failing with INTERNAL
/// ("Writer has previous error") until a restart, and SIGTERM then exited 1. Now the failure
/// is visible (`/health` 503, `courier_commit_failures_total`), nothing is acked that is not
/// stored, and writes resume by themselves once space returns.
#[test]
fn a_full_disk_fails_requests_then_recovers_without_a_restart() {
    let disk = SmallDisk::mount_or_simulate("24m");
    let logs = tempfile::tempdir().expect("a log directory");
    let flag = disk.flag();
    let server = Server::start_in(
        logs,
        disk.path().join("data"),
        &["--metrics", "127.0.0.1:0"],
        Some(Box::new(move |c| {
            c.env("COURIER_FAULT_FULL_DISK_FLAG", &flag);
        })),
    );
    let (mut alice, _) = server.user("alice");
    let (_bob, b) = server.user("bob");
    let thread = direct(&mut alice, b.user);
    let mut acked = Vec::new();
    let mut next = 1;
    assert!(matches!(
        try_send(&mut alice, thread, next, &body(next)),
        Frame::Sent(_)
    ));
    acked.push(next);
    assert_eq!(http_get(&server, "/health").0, 200);

    let filler = disk.fill();
    // The WAL may still have room in blocks it reserved; keep sending until a commit fails.
    let mut failed = None;
    for _ in 0..5_000 {
        next += 1;
        match try_send(&mut alice, thread, next, &body(next)) {
            Frame::Sent(_) => acked.push(next),
            Frame::ErrorReply(e) => {
                failed = Some(e);
                break;
            }
            other => panic!("SEND: {other:?}"),
        }
    }
    let failed = failed.expect("a send fails once the disk is full");
    assert_eq!(
        ErrorCode::from_u16(failed.code),
        Some(ErrorCode::Internal),
        "{failed:?}"
    );
    let (status, text) = http_get(&server, "/health");
    assert_eq!(status, 503, "{text}");
    let (_, metrics) = http_get(&server, "/metrics");
    assert!(
        !metrics.contains("courier_commit_failures_total 0\n"),
        "{metrics}"
    );
    assert!(metrics.contains("courier_ready 0"), "{metrics}");
    alice.ping();

    std::fs::remove_file(&filler).expect("free the space");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        next += 1;
        match try_send(&mut alice, thread, next, &body(next)) {
            Frame::Sent(_) => {
                acked.push(next);
                break;
            }
            Frame::ErrorReply(e) if Instant::now() < deadline => {
                assert_eq!(ErrorCode::from_u16(e.code), Some(ErrorCode::Internal));
                std::thread::sleep(Duration::from_millis(200));
            }
            other => panic!(
                "SEND still fails 30 s after space returned: {other:?}; log:\n{}\nRocksDB:\n{}",
                server.log(),
                std::fs::read_to_string(server.data_dir.join("LOG"))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("rror") || l.contains("ecover") || l.contains("esum"))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }
    for _ in 0..10 {
        next += 1;
        assert!(matches!(
            try_send(&mut alice, thread, next, &body(next)),
            Frame::Sent(_)
        ));
        acked.push(next);
    }
    let (status, text) = http_get(&server, "/health");
    assert_eq!(status, 200, "{text}");
    let stored: Vec<u64> = history(&mut alice, thread)
        .iter()
        .map(|m| m.client_msg_id)
        .collect();
    for id in &acked {
        assert!(stored.contains(id), "acked message {id} is stored");
    }
    let status = server.stop().expect("the server exits by itself");
    assert!(
        status.success(),
        "SIGTERM after recovery exits 0: {status:?}\n{}",
        server.log()
    );
}

/// Regression: with `--heartbeat-secs 2`, a server stopped for 8 s closed every client with
/// HEARTBEAT_TIMEOUT after SIGCONT, although their PINGs sat unread in the socket buffers.
#[test]
fn a_stalled_server_does_not_time_out_clients_that_kept_pinging() {
    const CLIENTS: usize = 20;
    let server = Server::start_with(&["--heartbeat-secs", "2"]);
    let mut clients: Vec<TestConn> = (0..CLIENTS)
        .map(|i| server.user(&format!("pinger{i}")).0)
        .collect();
    server.signal(libc::SIGSTOP);
    // Eight seconds stopped (more than 3 × 2 s), every client pinging each second meanwhile.
    let mut sent = vec![Vec::new(); CLIENTS];
    for round in 0..8 {
        for (c, ids) in clients.iter_mut().zip(&mut sent) {
            let id = c.send_request(Ping { nonce: round });
            ids.push(id);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    server.signal(libc::SIGCONT);
    for (i, (c, ids)) in clients.iter_mut().zip(&sent).enumerate() {
        for &id in ids {
            // Replies come in order on one connection: the next frame must be this PONG.
            match c.recv_until(Instant::now() + WAIT) {
                util::Recv::Frame(e) if e.request_id == id => assert!(
                    matches!(e.frame, Frame::Pong(_)),
                    "client {i}: {:?}",
                    e.frame
                ),
                util::Recv::Frame(e) => {
                    panic!("client {i} got {:?} instead of PONG {id}", e.frame)
                }
                other => panic!("client {i}: {other:?} instead of PONG {id}"),
            }
        }
        c.ping();
    }
}

/// Regression: after an accept failed (EMFILE), connections waiting in the backlog were never
/// accepted, since an edge-triggered listener reports no new edge for them.
#[test]
fn after_running_out_of_descriptors_waiting_connections_are_accepted() {
    use std::os::unix::process::CommandExt;
    const NOFILE: libc::rlim_t = 96;
    let server = Server::start_configured(
        &[
            "--shards",
            "1",
            "--max-connections",
            "100000",
            "--handshake-timeout-secs",
            "120",
            // A connection left in the backlog cannot run the encrypted handshake, which
            // Server::connect waits for; what this test is about is below the transport.
            "--insecure-plaintext",
        ],
        Box::new(|c| {
            // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
            unsafe {
                c.pre_exec(|| {
                    let lim = libc::rlimit {
                        rlim_cur: NOFILE,
                        rlim_max: NOFILE,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }),
    );
    // Open connections until the server cannot accept one: its HELLO stays unanswered.
    let mut open = Vec::new();
    let mut waiting = loop {
        assert!(
            open.len() < NOFILE as usize,
            "the server never ran out of descriptors"
        );
        let mut c = server.connect();
        c.start_hello();
        match c.recv_until(Instant::now() + Duration::from_millis(500)) {
            util::Recv::Frame(e) => {
                assert!(matches!(e.frame, Frame::Welcome(_)), "{:?}", e.frame);
                open.push(c);
            }
            util::Recv::Timeout => break c,
            util::Recv::Closed => panic!("the server closed a new connection"),
        }
    };
    assert!(
        server.log().contains("accept failed"),
        "the server ran out of descriptors:\n{}",
        server.log()
    );
    // Free descriptors; the waiting connection must be accepted without any new connection.
    open.truncate(open.len() - 8);
    match waiting.recv_until(Instant::now() + WAIT) {
        util::Recv::Frame(e) => assert!(matches!(e.frame, Frame::Welcome(_)), "{:?}", e.frame),
        other => panic!("the waiting connection was never accepted: {other:?}"),
    }
    waiting.ping();
    server.connect().hello();
    for c in &mut open {
        c.ping();
    }
}

/// If RocksDB itself meets the full disk (here: the free-space check is switched off, as when a
/// write races another process filling the disk), it stays in a hard error on a small disk
/// even after space returns. The server must not stay half alive: it stops with status 1, and
/// a restart recovers with every acked message.
#[test]
fn a_store_stuck_after_a_full_disk_stops_the_process_and_a_restart_recovers() {
    let disk = SmallDisk::mount("24m");
    let logs = tempfile::tempdir().expect("a log directory");
    let mut server = Server::start_in(
        logs,
        disk.path().join("data"),
        &[],
        Some(Box::new(|c| {
            c.env("COURIER_FAULT_SKIP_SPACE_CHECK", "1");
        })),
    );
    let (mut alice, a) = server.user("alice");
    let (_bob, b) = server.user("bob");
    let thread = direct(&mut alice, b.user);
    let mut acked = Vec::new();
    let mut next = 0;
    let filler = disk.fill();
    let mut failed = false;
    for _ in 0..5_000 {
        next += 1;
        match try_send(&mut alice, thread, next, &body(next)) {
            Frame::Sent(_) => acked.push(next),
            Frame::ErrorReply(_) => {
                failed = true;
                break;
            }
            other => panic!("SEND: {other:?}"),
        }
    }
    assert!(failed, "a send fails once the disk is full");
    std::fs::remove_file(&filler).expect("free the space");
    // Writes keep failing with room on the disk; the server stops itself.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.wait_exit(Duration::from_millis(500)) {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the server stayed up with a stuck store; log:\n{}",
            server.log()
        );
        next += 1;
        let id = next as u32; // any non-zero id: these replies are never read
        let frame = Send {
            thread,
            client_msg_id: next,
            kind: MessageKind::Text,
            body: Bytes::from(body(next)),
            reply_to: 0,
        };
        let mut bytes = bytes::BytesMut::new();
        encode(id, &frame.into(), &mut bytes);
        // The server may be gone already: a failed write is fine here.
        let _ = alice.try_send_raw(&bytes);
    };
    assert!(!status.success(), "{status:?}");
    assert!(
        server
            .log()
            .contains("the store has failed every write for"),
        "{}",
        server.log()
    );

    server.restart();
    let mut again = server.resumed(&a.token);
    next += 1;
    assert!(matches!(
        try_send(&mut again, thread, next, &body(next)),
        Frame::Sent(_)
    ));
    acked.push(next);
    let stored: Vec<u64> = history(&mut again, thread)
        .iter()
        .map(|m| m.client_msg_id)
        .collect();
    for id in &acked {
        assert!(stored.contains(id), "acked message {id} is stored");
    }
}

/// Regression: a REGISTER or LOGIN that panicked on an auth worker killed the worker without an
/// answer; after as many panics as workers, every later REGISTER and LOGIN waited forever. Now
/// the worker answers `INTERNAL`, logs the panic and takes the next job.
#[test]
fn an_auth_job_that_panics_is_answered_internal_and_the_pool_goes_on() {
    let server = Server::start_with_env(&[], &[("COURIER_FAULT_PANIC_ON_REGISTER", "doomed")]);
    // More panics than there are auth workers (2).
    for _ in 0..3 {
        let mut c = server.connect();
        c.hello();
        let answer = c.request(Register {
            handle: "doomed".into(),
            password: util::PASSWORD.into(),
            device: "test".into(),
        });
        assert_eq!(util::error_code(&answer), ErrorCode::Internal);
    }
    let (_, ok) = server.user("alive");
    assert!(ok.user > 0);
    assert!(
        server.log().contains("an authentication job panicked"),
        "{}",
        server.log()
    );
}
