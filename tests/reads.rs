//! Reads off the event loop: HISTORY, SYNC, LIST_THREADS, MEDIA_GET and READERS run on the
//! read pool, answer from committed state, and never stall the other connections of a shard.

mod util;

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use courier_protocol::*;
use util::{error_code, Recv, Server, TestConn, REPLY_TIMEOUT};

/// A server whose read jobs wait until `gate` exists (the `COURIER_TEST_READ_GATE` hook), with
/// one shard so that every connection shares it.
fn gated_server(gate: &Path, extra: &[&str]) -> Server {
    let mut args = vec!["--shards", "1"];
    args.extend_from_slice(extra);
    Server::start_with_env(
        &args,
        &[(
            "COURIER_TEST_READ_GATE",
            gate.to_str().expect("a UTF-8 path"),
        )],
    )
}

fn group(c: &mut TestConn, members: Vec<u64>) -> u64 {
    match c.request(CreateGroup {
        name: "g".into(),
        members,
    }) {
        Frame::ThreadInfo(t) => t.thread.id,
        other => panic!("{other:?}"),
    }
}

fn send(c: &mut TestConn, thread: u64, client_msg_id: u64, body: &'static str) -> u64 {
    match c.request(Send {
        thread,
        client_msg_id,
        kind: MessageKind::Text,
        body: Bytes::from_static(body.as_bytes()),
        reply_to: 0,
    }) {
        Frame::Sent(s) => s.message,
        other => panic!("{other:?}"),
    }
}

fn history(thread: u64) -> History {
    History {
        thread,
        anchor: 0,
        direction: Direction::Forward,
        limit: 100,
    }
}

/// Asserts that nothing answers `request_id` for `wait` (pushes and other answers are skipped).
fn assert_unanswered(c: &mut TestConn, request_id: u32, wait: Duration) {
    let deadline = Instant::now() + wait;
    loop {
        match c.recv_until(deadline) {
            Recv::Frame(e) if e.request_id == request_id => {
                panic!("request {request_id} was answered while its read was held: {e:?}")
            }
            Recv::Frame(_) => {}
            Recv::Closed => panic!("the server closed the connection"),
            Recv::Timeout => return,
        }
    }
}

#[test]
fn a_held_read_does_not_stall_other_requests_on_its_shard() {
    // Before: HISTORY ran on the shard's event loop, so while it read, nothing else of that
    // shard moved (here: it was answered at once, the gate did not exist yet).
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("open");
    let server = gated_server(&gate, &[]);
    let (mut a, _) = server.user("alice");
    let (mut b, bob) = server.user("bob");
    let thread = group(&mut a, vec![bob.user]);
    let id = send(&mut a, thread, 1, "hello");

    let held = a.send_request(history(thread));
    // The same connection and another one on the same (only) shard are served meanwhile.
    assert!(matches!(a.request(Ping { nonce: 1 }), Frame::Pong(_)));
    assert!(matches!(b.request(Ping { nonce: 2 }), Frame::Pong(_)));
    assert!(send(&mut b, thread, 1, "meanwhile") > id);
    assert_unanswered(&mut a, held, Duration::from_millis(300));

    std::fs::write(&gate, b"").unwrap();
    match a.reply(held, REPLY_TIMEOUT) {
        Frame::Messages(m) => {
            assert!(m.messages.iter().any(|m| m.id == id), "{m:?}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.stop().and_then(|s| s.code()), Some(0));
}

#[test]
fn a_full_read_queue_refuses_with_rate_limited_and_answers_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("open");
    let server = gated_server(&gate, &["--read-threads", "1", "--read-queue", "2"]);
    let (mut a, _) = server.user("alice");
    let thread = group(&mut a, vec![]);
    let id = send(&mut a, thread, 1, "hello");

    // At most 2 reads in flight (one held in the worker at the gate, one queued): 2 of 8 are
    // accepted, whenever the worker takes its first.
    let ids: Vec<u32> = (0..8).map(|_| a.send_request(history(thread))).collect();
    assert!(matches!(a.request(Ping { nonce: 1 }), Frame::Pong(_)));
    std::fs::write(&gate, b"").unwrap();
    let (mut refused, mut answered) = (0, 0);
    for rid in ids {
        match a.reply(rid, REPLY_TIMEOUT) {
            Frame::Messages(m) => {
                assert_eq!(m.messages.last().map(|m| m.id), Some(id));
                answered += 1;
            }
            other => {
                assert_eq!(error_code(&other), ErrorCode::RateLimited, "{other:?}");
                refused += 1;
            }
        }
    }
    assert_eq!((answered, refused), (2, 6));
    // Answers taken by the shard free their places: reads are accepted again.
    match a.request(history(thread)) {
        Frame::Messages(m) => assert_eq!(m.messages.last().map(|m| m.id), Some(id)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn every_pooled_read_sees_the_writes_acked_before_it() {
    let server = Server::start();
    let (mut a, _) = server.user("alice");
    let (mut b, bob) = server.user("bob");
    let thread = group(&mut a, vec![bob.user]);
    let first = send(&mut a, thread, 1, "one");
    // RECEIPT acked, then READERS: the cursor is there.
    assert!(matches!(
        b.request(Receipt {
            thread,
            kind: ReceiptKind::Read,
            up_to: first,
        }),
        Frame::Done(_)
    ));
    match b.request(Readers {
        thread,
        message: first,
    }) {
        Frame::ReadersList(r) => assert_eq!(r.read, vec![bob.user]),
        other => panic!("{other:?}"),
    }
    // SEND acked, then HISTORY, LIST_THREADS and SYNC: the message is there.
    let second = send(&mut a, thread, 2, "two");
    match b.request(history(thread)) {
        Frame::Messages(m) => assert_eq!(m.messages.last().map(|m| m.id), Some(second)),
        other => panic!("{other:?}"),
    }
    match b.request(ListThreads {
        before_msg_id: 0,
        before_thread: 0,
        limit: 10,
    }) {
        Frame::ThreadList(l) => {
            assert_eq!(l.threads.len(), 1);
            assert_eq!((l.threads[0].last_msg_id, l.threads[0].unread), (second, 1));
        }
        other => panic!("{other:?}"),
    }
    match b.request(Sync {
        since: first,
        after_thread: 0,
        after_message: 0,
        limit: 0,
        watermark: 0,
        vector: Default::default(),
    }) {
        Frame::SyncBatch(s) => {
            let ids: Vec<u64> = s.messages.iter().map(|m| m.id).collect();
            assert_eq!(ids, vec![second]);
        }
        other => panic!("{other:?}"),
    }
    // MEDIA_COMMIT acked, then MEDIA_GET.
    let Frame::MediaUpload(up) = a.request(MediaBegin {
        total_len: 5,
        mime: "text/plain".into(),
        hash: Bytes::copy_from_slice(blake3::hash(b"abcde").as_bytes()),
    }) else {
        panic!()
    };
    a.request(MediaChunk {
        upload: up.upload,
        offset: 0,
        data: Bytes::from_static(b"abcde"),
    });
    let Frame::MediaRef(r) = a.request(MediaCommit { upload: up.upload }) else {
        panic!()
    };
    // (By the uploader: nobody else may read media never sent in a thread.)
    match a.request(MediaGet {
        thread: 0,
        media: r.media,
        offset: 1,
        max_len: 3,
    }) {
        Frame::MediaData(d) => assert_eq!(&d.data[..], b"bcd"),
        other => panic!("{other:?}"),
    }
    // Errors come back through the pool too.
    assert_eq!(
        error_code(&b.request(history(thread + 1000))),
        ErrorCode::UnknownThread
    );
    let (mut c, _) = server.user("carol");
    assert_eq!(
        error_code(&c.request(history(thread))),
        ErrorCode::NotMember
    );
}

#[test]
fn the_probe_benchmark_runs_all_three_clients() {
    use clap::Parser;
    // Encrypted, as by default: the probe's connections pin the key the server printed.
    let server = Server::start_with(&["--shards", "1", "--rate-limit", "100000"]);
    let addr = server.addr.to_string();
    let key = server
        .key
        .expect("an encrypted server printed its key")
        .to_string();
    let cli = courier_loadgen::Cli::try_parse_from([
        "courier-loadgen",
        "--quiet",
        "--server-key",
        &key,
        "--register",
        "--server",
        &addr,
        "probe",
        "--duration",
        "1",
        "--threads",
        "20",
        "--unread",
        "2",
        "--list-limit",
        "6",
        "--media-bytes",
        "300000",
    ])
    .expect("valid probe arguments");
    let courier_loadgen::Command::Probe(args) = &cli.command else {
        panic!("parsed as {:?}", cli.command)
    };
    let r = courier_loadgen::probe::run(&cli.common, args).expect("probe run");
    assert_eq!(r.errors, 0, "{r:#?}");
    assert!(r.probes >= 90 && r.probe_latency_us.p99 > 0, "{r:#?}");
    assert!(
        r.media_downloads > 0 && r.media_bytes_per_sec > 0.0,
        "{r:#?}"
    );
    // 20 threads at 6 a page: 4 pages a walk.
    assert!(
        r.list_walks > 0 && r.list_pages >= 4 * r.list_walks,
        "{r:#?}"
    );
}

/// Regression: a read that panicked on the pool killed its worker without an answer; with the
/// workers gone, every later read waited forever (a zombie pool behind a healthy-looking
/// server). Now the worker answers `INTERNAL`, logs the panic and serves the next read.
#[test]
fn a_read_that_panics_is_answered_internal_and_the_pool_goes_on() {
    let server = Server::start_with_env(
        &["--shards", "1", "--read-threads", "1"],
        &[("COURIER_FAULT_PANIC_ON_HISTORY_LIMIT", "77")],
    );
    let (mut a, _) = server.user("alice");
    let (_, bob) = server.user("bob");
    let thread = group(&mut a, vec![bob.user]);
    let id = send(&mut a, thread, 1, "hello");
    let doomed = History {
        limit: 77,
        ..history(thread)
    };
    for _ in 0..2 {
        assert_eq!(error_code(&a.request(doomed.clone())), ErrorCode::Internal);
    }
    match a.request(history(thread)) {
        Frame::Messages(m) => assert!(m.messages.iter().any(|m| m.id == id), "{m:?}"),
        other => panic!("{other:?}"),
    }
    assert!(server.log().contains("a read panicked"), "{}", server.log());
}
