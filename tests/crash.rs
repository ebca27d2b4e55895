//! Crash safety: while clients send, the server is killed with SIGKILL and restarted on the
//! same data directory. Every message whose SENT ack a client received must be in history
//! exactly once, in order, under `--fsync always` and `--fsync batch` (with and without
//! `--commit-inline-when-idle`).

mod util;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_protocol::*;
use util::{Recv, Server, TestConn};

/// Sends pipelined (up to `WINDOW` unacked) until the connection dies or `limit` passes;
/// returns (client message id -> acked message id).
fn send_until_killed(mut c: TestConn, thread: u64, limit: Duration) -> HashMap<u64, u64> {
    const WINDOW: u64 = 32;
    let deadline = Instant::now() + limit;
    let mut acked = HashMap::new();
    let mut next = 1u64;
    let mut in_flight = 0u64;
    loop {
        while in_flight < WINDOW {
            let frame = Send {
                thread,
                client_msg_id: next,
                kind: MessageKind::Text,
                body: Bytes::from_static(b"crash me"),
                reply_to: 0,
            };
            let mut out = bytes::BytesMut::new();
            encode(next as u32, &frame.into(), &mut out);
            if c.try_send_raw(&out).is_err() {
                return acked;
            }
            next += 1;
            in_flight += 1;
        }
        match c.recv_until(deadline) {
            Recv::Frame(Envelope {
                frame: Frame::Sent(s),
                ..
            }) => {
                assert!(
                    acked.insert(s.client_msg_id, s.message).is_none(),
                    "one ack per send"
                );
                in_flight -= 1;
            }
            Recv::Frame(_) => {}
            Recv::Closed | Recv::Timeout => return acked,
        }
    }
}

fn crash_keeps_every_acked_message(flags: &[&str]) {
    let mut server = Server::start_with(flags);
    let mut threads = Vec::new();
    let mut peer_tokens = Vec::new();
    let mut senders = Vec::new();
    for i in 0..3 {
        let (mut sender, _) = server.user(&format!("sender{i}"));
        let (_, peer) = server.user(&format!("peer{i}"));
        let Frame::ThreadInfo(t) = sender.request(OpenDirect { peer: peer.user }) else {
            panic!()
        };
        threads.push(t.thread.id);
        peer_tokens.push(peer.token.clone());
        senders.push((sender, t.thread.id));
    }
    let workers: Vec<_> = senders
        .into_iter()
        .map(|(c, t)| std::thread::spawn(move || send_until_killed(c, t, Duration::from_secs(20))))
        .collect();
    // Let traffic flow, then crash mid-stream.
    std::thread::sleep(Duration::from_millis(700));
    server.kill();
    let acked: Vec<HashMap<u64, u64>> = workers
        .into_iter()
        .map(|w| w.join().expect("sender thread"))
        .collect();
    assert!(
        acked.iter().all(|a| !a.is_empty()),
        "every sender got acks before the crash"
    );

    server.restart();
    for ((thread, token), acked) in threads.iter().zip(&peer_tokens).zip(&acked) {
        let mut peer = server.connect();
        peer.hello();
        peer.resume(token);
        let mut stored = Vec::new();
        let mut anchor = 0;
        loop {
            let Frame::Messages(page) = peer.request(History {
                thread: *thread,
                anchor,
                direction: Direction::Forward,
                limit: 500,
            }) else {
                panic!("history after restart")
            };
            stored.extend(page.messages);
            if !page.more {
                break;
            }
            anchor = stored.last().map_or(0, |m| m.id);
        }
        let ids: Vec<u64> = stored.iter().map(|m| m.id).collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "history is in order with no repeats"
        );
        let client_ids: HashSet<u64> = stored.iter().map(|m| m.client_msg_id).collect();
        assert_eq!(client_ids.len(), stored.len(), "no send stored twice");
        let by_id: HashSet<u64> = ids.iter().copied().collect();
        for (client_id, message) in acked {
            assert!(
                by_id.contains(message),
                "acked message {message} (client id {client_id}) lost in the crash with {flags:?}"
            );
        }
    }
    // A send retried after the restart with an acked client id returns the same message and
    // stores nothing new.
    for (i, (thread, acked)) in threads.iter().zip(&acked).enumerate() {
        let mut sender = server.connect();
        sender.hello();
        sender.login(&format!("sender{i}"), util::PASSWORD, "test");
        let (&client_id, &message) = acked.iter().next().expect("acks");
        let retry = Send {
            thread: *thread,
            client_msg_id: client_id,
            kind: MessageKind::Text,
            body: Bytes::from_static(b"crash me"),
            reply_to: 0,
        };
        match sender.request(retry) {
            Frame::Sent(s) => assert_eq!(s.message, message, "the retry returns the original id"),
            other => panic!("retry after restart: {other:?}"),
        }
    }
}

#[test]
fn sigkill_loses_no_acked_message_with_fsync_always() {
    crash_keeps_every_acked_message(&["--fsync", "always"]);
}

#[test]
fn sigkill_loses_no_acked_message_with_fsync_batch() {
    crash_keeps_every_acked_message(&["--fsync", "batch"]);
}

#[test]
fn sigkill_loses_no_acked_message_when_idle_shards_commit_inline() {
    crash_keeps_every_acked_message(&["--fsync", "batch", "--commit-inline-when-idle"]);
}
