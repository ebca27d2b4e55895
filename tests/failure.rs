//! How the server behaves when a part of it fails, over real TCP against a real server: a
//! panicking shard, a failing disk, a stalled process, an exhausted file table.

mod util;

use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_protocol::*;
use util::{Server, TestConn};

const WAIT: Duration = Duration::from_secs(5);

fn direct(c: &mut TestConn, peer: u64) -> u64 {
    match c.request(OpenDirect { peer }) {
        Frame::ThreadInfo(t) => t.thread.id,
        other => panic!("OPEN_DIRECT: {other:?}"),
    }
}

fn send(c: &mut TestConn, thread: u64, client_msg_id: u64, body: &str) -> Frame {
    c.request(Send {
        thread,
        client_msg_id,
        kind: MessageKind::Text,
        body: Bytes::copy_from_slice(body.as_bytes()),
    })
}

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
        match send(&mut alice, thread, i, &format!("before the panic {i}")) {
            Frame::Sent(s) => acked.push(s.message),
            other => panic!("SEND: {other:?}"),
        }
    }
    let (mut victim, _) = server.user("victim");
    let id = victim.id();
    victim.send(id, Ping { nonce: PANIC_NONCE });

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
    let mut again = server.connect();
    again.hello();
    again.resume(&a.token);
    let stored: Vec<u64> = history(&mut again, thread).iter().map(|m| m.id).collect();
    assert_eq!(stored, acked, "every acked message survives the failure");
}
