//! Idempotency and limits over real TCP against a real server: `client_msg_id` 0, the dedupe
//! window across a restart, the per-user caps, replies that must fit the announced frame, and
//! every limit of PROTOCOL.md section 9 that a client can hit.

mod util;

use std::time::Duration;

use bytes::Bytes;
use courier_protocol::*;
use util::{error_code, Server, TestConn};

fn direct(c: &mut TestConn, peer: u64) -> u64 {
    match c.request(OpenDirect { peer }) {
        Frame::ThreadInfo(t) => t.thread.id,
        other => panic!("OPEN_DIRECT: {other:?}"),
    }
}

fn try_send(c: &mut TestConn, thread: u64, client_msg_id: u64, body: &str) -> Frame {
    c.request(Send {
        thread,
        client_msg_id,
        kind: MessageKind::Text,
        body: Bytes::copy_from_slice(body.as_bytes()),
    })
}

fn send(c: &mut TestConn, thread: u64, client_msg_id: u64, body: &str) -> Sent {
    match try_send(c, thread, client_msg_id, body) {
        Frame::Sent(s) => s,
        other => panic!("SEND: {other:?}"),
    }
}

fn bodies(c: &mut TestConn, thread: u64) -> Vec<Bytes> {
    match c.request(History {
        thread,
        anchor: 0,
        direction: Direction::Forward,
        limit: 500,
    }) {
        Frame::Messages(m) => m.messages.into_iter().map(|m| m.body).collect(),
        other => panic!("HISTORY: {other:?}"),
    }
}

#[test]
fn client_msg_id_zero_stores_every_send() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (_bob, bob_ok) = server.user("bob");
    let thread = direct(&mut alice, bob_ok.user);
    let first = send(&mut alice, thread, 0, "one");
    let second = send(&mut alice, thread, 0, "two");
    assert_ne!(
        first.message, second.message,
        "a second SEND with client_msg_id 0 must be a new message, not a retry of the first"
    );
    assert_eq!(second.client_msg_id, 0);
    assert_eq!(
        bodies(&mut alice, thread),
        [Bytes::from_static(b"one"), Bytes::from_static(b"two")]
    );
    // Pipelined, so both are likely handled in one server round (the round's own dedupe).
    let (x, y) = (alice.id(), alice.id());
    for (id, body) in [(x, "four"), (y, "five")] {
        alice.send(
            id,
            Send {
                thread,
                client_msg_id: 0,
                kind: MessageKind::Text,
                body: Bytes::from_static(body.as_bytes()),
            },
        );
    }
    let ids: Vec<u64> = [x, y]
        .map(|id| match alice.reply(id, util::REPLY_TIMEOUT) {
            Frame::Sent(s) => s.message,
            other => panic!("SEND: {other:?}"),
        })
        .into();
    assert_ne!(ids[0], ids[1]);
    assert_eq!(bodies(&mut alice, thread).len(), 4);
    // Non-zero ids stay idempotent.
    let a = send(&mut alice, thread, 9, "three");
    let b = send(&mut alice, thread, 9, "three again");
    assert_eq!(a.message, b.message);
    assert_eq!(bodies(&mut alice, thread).len(), 5);
}

#[test]
fn a_retry_inside_the_dedupe_window_returns_the_original_id_also_after_a_restart() {
    let mut server = Server::start();
    let (mut alice, ok) = server.user("alice");
    let (_bob, bob_ok) = server.user("bob");
    let thread = direct(&mut alice, bob_ok.user);
    let first = send(&mut alice, thread, 77, "once");
    assert_eq!(send(&mut alice, thread, 77, "once").message, first.message);
    drop(alice);
    server.restart();
    let mut alice = server.connect();
    alice.hello();
    alice.resume(&ok.token);
    assert_eq!(send(&mut alice, thread, 77, "once").message, first.message);
    assert_eq!(bodies(&mut alice, thread).len(), 1);
}

#[test]
fn a_retry_after_the_dedupe_window_is_a_new_message() {
    let server = Server::start_with(&["--dedupe-window-secs", "1"]);
    let (mut alice, _) = server.user("alice");
    let (_bob, bob_ok) = server.user("bob");
    let thread = direct(&mut alice, bob_ok.user);
    let first = send(&mut alice, thread, 5, "early");
    assert_eq!(send(&mut alice, thread, 5, "early").message, first.message);
    // Message ids are microsecond times: once the window has passed, the entry is expired
    // whether or not a compaction has removed it yet.
    std::thread::sleep(Duration::from_millis(1_200));
    let late = send(&mut alice, thread, 5, "late");
    assert_ne!(late.message, first.message);
    assert_eq!(bodies(&mut alice, thread).len(), 2);
}
