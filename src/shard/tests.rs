//! One shard driven round by round against real sockets and a real RocksDB, with the other
//! shard's mailbox held by the test: what another shard does, and when, is the test's choice.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use courier_protocol::{encode, Frame, Hello, MessageKind, Ping, Resume, Send, VERSION};
use crossbeam_channel::Receiver;
use mio::net::TcpListener;
use mio::{Events, Poll, Waker};

use super::mailbox::{Mailbox, ShardMsg, MAILBOX_CAPACITY, OUTBOX_CAP};
use super::read_pool::ReadPool;
use super::{auth_pool, Core, Faults, Shard, ShardParts, WAKER};
use crate::chat::{self, ChatConfig};
use crate::clock::Clock;
use crate::cluster::Router;
use crate::config::{Config, ServeArgs};
use crate::directory::Directory;
use crate::metrics::Metrics;
use crate::session::{Accounts, AuthConfig};
use crate::store::{FsyncMode, Store};

/// Shard 0 of two, not running: the test calls its rounds. Shard 1 exists only as a mailbox
/// of `peer_capacity` messages that the test drains (or not).
struct Rig {
    shard: Shard,
    peer: Receiver<ShardMsg>,
    addr: SocketAddr,
    /// The shard's WebSocket listener.
    ws_addr: SocketAddr,
    token: Vec<u8>,
    events: Events,
    carried: Vec<(usize, u32)>,
    _dir: tempfile::TempDir,
}

impl Rig {
    fn new(peer_capacity: usize) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        let clock = Arc::new(Clock::new(store.clock_floor().unwrap()));
        let chat = chat::Shared::new(store.clone(), clock, ChatConfig::default(), 2);
        let accounts = Arc::new(
            Accounts::new(
                store.clone(),
                AuthConfig {
                    argon2_m_kib: 64,
                    ..AuthConfig::default()
                },
            )
            .unwrap(),
        );
        let token = accounts
            .register("flooder", "password1", "d")
            .unwrap()
            .token
            .to_vec();
        let mut polls = Vec::new();
        let mut mailboxes = Vec::new();
        let mut receivers = Vec::new();
        for capacity in [MAILBOX_CAPACITY, peer_capacity] {
            let poll = Poll::new().unwrap();
            let waker = Arc::new(Waker::new(poll.registry(), WAKER).unwrap());
            let (tx, rx) = crossbeam_channel::bounded(capacity);
            polls.push(poll);
            mailboxes.push(Mailbox::new(tx, waker));
            receivers.push(rx);
        }
        let mailboxes: Arc<[Mailbox]> = mailboxes.into();
        let config = Config::load(ServeArgs {
            data_dir: Some(dir.path().to_owned()),
            shards: Some(2),
            rate_limit: Some(10_000_000),
            ..ServeArgs::default()
        })
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let ws_listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let ws_addr = ws_listener.local_addr().unwrap();
        let metrics = Metrics::new(2, store.health());
        // Its workers end when the core (holding the queue's only sender) is dropped.
        let reads = ReadPool::spawn(
            chat.clone(),
            mailboxes.clone(),
            metrics.clone(),
            &Faults::default(),
            1,
            16,
            None,
        )
        .unwrap()
        .queue();
        let core = Arc::new(Core {
            router: Router::new(&config.node_id, &config.peers),
            links: None,
            config,
            chat,
            reads,
            auth: auth_pool::spawn(accounts.clone(), mailboxes.clone(), &Faults::default())
                .unwrap(),
            accounts,
            directory: Arc::new(Directory::new()),
            metrics,
            mailboxes,
            shutdown: AtomicBool::new(false),
            failure: Mutex::new(None),
            faults: Faults::default(),
            connections: AtomicUsize::new(0),
            max_connections: 1024,
            noise_key: None,
            per_addr: crate::shard::per_addr::PerAddr::new(1000),
            presence_subscriptions: AtomicUsize::new(0),
            cluster_presence: Default::default(),
            web_root: None,
        });
        let peer = receivers.pop().unwrap();
        let mut shard = Shard::new(
            core,
            ShardParts {
                id: 0,
                poll: polls.swap_remove(0),
                listeners: vec![listener],
                ws_listeners: vec![ws_listener],
                mailbox: receivers.pop().unwrap(),
            },
        );
        shard.register_listeners().unwrap();
        Rig {
            shard,
            peer,
            addr,
            ws_addr,
            token,
            events: Events::with_capacity(1024),
            carried: Vec::new(),
            _dir: dir,
        }
    }

    fn round(&mut self) {
        self.shard
            .round(&mut self.events, &mut self.carried)
            .unwrap();
    }

    /// A thread id that shard 1 owns.
    fn thread_of_peer(&self) -> u64 {
        (1..)
            .find(|&t| self.shard.core.chat.thread_shard(t) == 1)
            .unwrap()
    }

    fn waiting_for_peer(&self) -> usize {
        self.shard.outbox.waiting(1)
    }

    fn paused(&self) -> usize {
        self.shard.paused.len()
    }
}

/// Reads frames from `stream` until one with `request_id` arrives.
fn expect_reply(rig: &mut Rig, stream: &mut std::net::TcpStream, request_id: u32) -> Frame {
    let mut buf = BytesMut::new();
    let decoder = courier_protocol::Decoder::default();
    stream.set_nonblocking(true).unwrap();
    for _ in 0..1000 {
        rig.round();
        let mut chunk = [0u8; 4096];
        if let Ok(n) = stream.read(&mut chunk) {
            buf.extend_from_slice(&chunk[..n]);
        }
        while let Some(env) = decoder.decode(&mut buf).unwrap() {
            if env.request_id == request_id {
                stream.set_nonblocking(false).unwrap();
                return env.frame;
            }
        }
    }
    panic!("no reply to request {request_id}");
}

/// A TCP client of `rig`'s shard that sent HELLO and RESUME (request ids 1 and 2) and got
/// Bytes the shard of `rig` has read from its sockets so far.
fn bytes_in(rig: &Rig) -> u64 {
    rig.shard
        .metrics()
        .bytes_in
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Runs rounds until the shard has read `until` bytes in all (at most 10,000 rounds).
fn read_all(rig: &mut Rig, until: u64) {
    let mut rounds = 0;
    while bytes_in(rig) < until {
        rig.round();
        rounds += 1;
        assert!(rounds < 10_000, "the shard never read the bytes");
    }
}

/// AUTH_OK.
fn authed_client(rig: &mut Rig) -> std::net::TcpStream {
    let mut client = std::net::TcpStream::connect(rig.addr).unwrap();
    let mut out = BytesMut::new();
    encode(
        1,
        &Hello {
            version: VERSION,
            client: "rig".into(),
        }
        .into(),
        &mut out,
    );
    encode(
        2,
        &Resume {
            token: rig.token.clone().into(),
        }
        .into(),
        &mut out,
    );
    client.write_all(&out).unwrap();
    assert!(matches!(
        expect_reply(rig, &mut client, 2),
        Frame::AuthOk(_)
    ));
    client
}

/// Requests for a congested shard stop the reading of the connection that sends them (the
/// rest waits in its socket, not in memory), and reading resumes when the shard catches up;
/// every request arrives, in order.
#[test]
fn reads_pause_while_the_target_shard_is_congested_and_resume_after() {
    const REQUESTS: u32 = (OUTBOX_CAP as u32) * 3;
    let mut rig = Rig::new(64);
    let thread = rig.thread_of_peer();
    let client = authed_client(&mut rig);

    // The whole flood, written by another thread: it blocks once the socket is full.
    let mut flood = BytesMut::new();
    for id in 0..REQUESTS {
        let send = Send {
            thread,
            client_msg_id: id as u64 + 1,
            kind: MessageKind::Text,
            body: bytes::Bytes::from_static(b"x"),
            reply_to: 0,
        };
        encode(id + 10, &send.into(), &mut flood);
    }
    let flood_len = flood.len();
    let mut writer = client.try_clone().unwrap();
    let writing = std::thread::spawn(move || writer.write_all(&flood));

    // Shard 1 takes nothing: shard 0 fills its mailbox, then queues up to the cap, then stops
    // reading the connection.
    let mut rounds = 0;
    while rig.paused() == 0 {
        rig.round();
        rounds += 1;
        assert!(rounds < 100_000, "the connection was never paused");
    }
    for _ in 0..50 {
        rig.round();
        assert!(
            rig.waiting_for_peer() <= OUTBOX_CAP,
            "{} waiting for shard 1: over the cap of {OUTBOX_CAP}",
            rig.waiting_for_peer()
        );
    }
    assert_eq!(rig.paused(), 1);
    let read = rig
        .shard
        .metrics()
        .bytes_in
        .load(std::sync::atomic::Ordering::Relaxed) as usize;
    assert!(
        read < flood_len,
        "paused reads leave the rest in the socket"
    );

    // Shard 1 catches up: reading resumes and every request arrives, in order.
    let mut got = 0u32;
    let mut rounds = 0;
    while got < REQUESTS {
        while let Ok(msg) = rig.peer.try_recv() {
            if let ShardMsg::Request { request_id, .. } = msg {
                assert_eq!(request_id, got + 10, "requests arrive in order");
                got += 1;
            }
        }
        rig.round();
        assert!(rig.waiting_for_peer() <= OUTBOX_CAP);
        rounds += 1;
        assert!(rounds < 1_000_000, "stuck at {got} of {REQUESTS} requests");
    }
    assert_eq!(rig.paused(), 0);
    writing.join().unwrap().unwrap();
}

/// A length prefix reserves nothing: a peer that announces a big frame and sends a few bytes
/// costs the server those bytes, not the frame (issue 12). Before, the partial-frame buffer
/// was reserved for the whole announced frame (here 60,004 bytes per connection).
#[test]
fn a_partial_frame_buffer_grows_as_bytes_arrive_not_from_its_length_prefix() {
    let mut rig = Rig::new(MAILBOX_CAPACITY);
    let mut client = authed_client(&mut rig);
    let input_capacity = |rig: &Rig| {
        let (_, conn) = rig.shard.conns.iter().next().expect("one connection");
        let capacity = conn.busy.as_ref().map_or(0, |b| b.input.capacity());
        (conn.input().len(), capacity)
    };
    // A frame of 60,000 bytes (under the 64 KiB limit) announced; ten bytes of it sent.
    let start = bytes_in(&rig);
    let mut partial = 60_000u32.to_be_bytes().to_vec();
    partial.extend_from_slice(&[0x02, 0, 0, 0, 3, 0]);
    client.write_all(&partial).unwrap();
    read_all(&mut rig, start + 10);
    let (len, capacity) = input_capacity(&rig);
    assert_eq!(len, 10);
    assert!(
        capacity < 1024,
        "{capacity} bytes held for 10 that arrived: reserved from the length prefix"
    );
    // More arrives: the buffer grows with it (doubling), still bounded by what came.
    client.write_all(&[0u8; 20_000]).unwrap();
    read_all(&mut rig, start + 20_010);
    let (len, capacity) = input_capacity(&rig);
    assert_eq!(len, 20_010);
    assert!(capacity <= 2 * len, "{capacity} bytes held for {len}");
}

/// The input, output and WebSocket state share one box that exists only while the connection
/// holds something (issue 13, pconn): none after whole frames and replies written at once; one
/// for a partial frame, kept (the same box) while the frame arrives in pieces, and dropped
/// once it is whole and answered.
#[test]
fn a_connection_boxes_its_buffers_only_while_it_holds_something() {
    let mut rig = Rig::new(MAILBOX_CAPACITY);
    let mut client = authed_client(&mut rig);
    let busy = |rig: &Rig| {
        let (_, conn) = rig.shard.conns.iter().next().expect("one connection");
        conn.busy.as_deref().map(|b| b as *const super::conn::Busy)
    };
    assert_eq!(busy(&rig), None, "whole frames, replies written at once");
    let mut ping = BytesMut::new();
    encode(3, &Ping { nonce: 7 }.into(), &mut ping);
    assert!(ping.len() > 6);
    let start = bytes_in(&rig);
    client.write_all(&ping[..3]).unwrap();
    read_all(&mut rig, start + 3);
    let boxed = busy(&rig).expect("a partial frame is held in the box");
    client.write_all(&ping[3..6]).unwrap();
    read_all(&mut rig, start + 6);
    assert_eq!(
        busy(&rig),
        Some(boxed),
        "the same box while the frame arrives"
    );
    client.write_all(&ping[6..]).unwrap();
    assert!(matches!(
        expect_reply(&mut rig, &mut client, 3),
        Frame::Pong(_)
    ));
    assert_eq!(busy(&rig), None, "the frame was whole and answered");
}

/// An idle WebSocket connection costs the server what a TCP one does: the same `Conn`, and
/// after the upgrade and a message no frame state, no input and no output buffer.
#[test]
fn an_idle_websocket_connection_holds_nothing_more_than_a_tcp_one() {
    let mut rig = Rig::new(MAILBOX_CAPACITY);
    let (ws_addr, token) = (rig.ws_addr, rig.token.clone());
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
    let (release_tx, release_rx) = crossbeam_channel::bounded::<()>(1);
    let client = std::thread::spawn(move || {
        let stream = std::net::TcpStream::connect(ws_addr).unwrap();
        let (mut ws, _) = tungstenite::client(format!("ws://{ws_addr}/"), stream).unwrap();
        let mut out = BytesMut::new();
        let hello = Hello {
            version: VERSION,
            client: "rig-ws".into(),
        };
        encode(1, &hello.into(), &mut out);
        encode(
            2,
            &Resume {
                token: token.into(),
            }
            .into(),
            &mut out,
        );
        // HELLO and RESUME in two messages, the split inside RESUME.
        let split = out.len() - 5;
        ws.send(tungstenite::Message::Binary(out[..split].to_vec().into()))
            .unwrap();
        ws.send(tungstenite::Message::Binary(out[split..].to_vec().into()))
            .unwrap();
        let mut got = BytesMut::new();
        let decoder = courier_protocol::Decoder::default();
        loop {
            if let tungstenite::Message::Binary(b) = ws.read().unwrap() {
                got.extend_from_slice(&b);
            }
            if let Some(env) = decoder.decode(&mut got).unwrap() {
                if env.request_id == 2 {
                    assert!(matches!(env.frame, Frame::AuthOk(_)), "{:?}", env.frame);
                    break;
                }
            }
        }
        done_tx.send(()).unwrap();
        // Stay connected (idle) until the test looked.
        release_rx.recv().unwrap();
    });
    let mut rounds = 0;
    while done_rx.try_recv().is_err() {
        rig.round();
        rounds += 1;
        assert!(rounds < 100_000, "the WebSocket client never authenticated");
    }
    rig.round();
    let conns: Vec<_> = rig.shard.conns.iter().map(|(_, c)| c).collect();
    assert_eq!(conns.len(), 1);
    let conn = conns[0];
    assert!(conn.has(super::conn::flag::WS));
    assert_eq!(conn.state, super::conn::State::Authed);
    assert!(conn.ws().is_none(), "no frame state between messages");
    assert!(conn.input().is_empty(), "no input buffer");
    assert!(conn.output().is_none(), "no output buffer");
    assert!(conn.busy.is_none(), "nothing boxed while idle");
    release_tx.send(()).unwrap();
    client.join().unwrap();
}

/// Backpressure over WebSocket, one SEND per message: a read holds many messages, and once
/// the connection is paused the rest of them is kept, not handled (before, each further
/// message of the read got one more frame handled, past the outbox cap); reading resumes
/// when shard 1 catches up and every request arrives, in order.
#[test]
fn a_paused_websocket_connection_keeps_the_rest_of_its_read() {
    const REQUESTS: u32 = (OUTBOX_CAP as u32) * 2;
    let mut rig = Rig::new(64);
    let thread = rig.thread_of_peer();
    let (ws_addr, token) = (rig.ws_addr, rig.token.clone());
    let (authed_tx, authed_rx) = crossbeam_channel::bounded::<()>(1);
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(1);
    let client = std::thread::spawn(move || {
        let stream = std::net::TcpStream::connect(ws_addr).unwrap();
        let (mut ws, _) = tungstenite::client(format!("ws://{ws_addr}/"), stream).unwrap();
        let mut out = BytesMut::new();
        let hello = Hello {
            version: VERSION,
            client: "rig-ws".into(),
        };
        encode(1, &hello.into(), &mut out);
        encode(
            2,
            &Resume {
                token: token.into(),
            }
            .into(),
            &mut out,
        );
        ws.send(tungstenite::Message::Binary(out.split().freeze()))
            .unwrap();
        let mut got = BytesMut::new();
        let decoder = courier_protocol::Decoder::default();
        'auth: loop {
            if let tungstenite::Message::Binary(b) = ws.read().unwrap() {
                got.extend_from_slice(&b);
            }
            while let Some(env) = decoder.decode(&mut got).unwrap() {
                if env.request_id == 2 {
                    assert!(matches!(env.frame, Frame::AuthOk(_)), "{:?}", env.frame);
                    break 'auth;
                }
            }
        }
        authed_tx.send(()).unwrap();
        for id in 0..REQUESTS {
            let send = Send {
                thread,
                client_msg_id: id as u64 + 1,
                kind: MessageKind::Text,
                body: bytes::Bytes::from_static(b"x"),
                reply_to: 0,
            };
            encode(id + 10, &send.into(), &mut out);
            // Blocks while the socket is full (the server paused reading).
            ws.send(tungstenite::Message::Binary(out.split().freeze()))
                .unwrap();
        }
        done_rx.recv().unwrap();
    });
    let mut rounds = 0;
    while authed_rx.try_recv().is_err() {
        rig.round();
        rounds += 1;
        assert!(rounds < 100_000, "the WebSocket client never authenticated");
    }
    let mut rounds = 0;
    while rig.paused() == 0 {
        rig.round();
        rounds += 1;
        assert!(rounds < 1_000_000, "the connection was never paused");
    }
    for _ in 0..50 {
        rig.round();
        assert!(
            rig.waiting_for_peer() <= OUTBOX_CAP,
            "{} waiting for shard 1: over the cap of {OUTBOX_CAP}",
            rig.waiting_for_peer()
        );
    }
    assert_eq!(rig.paused(), 1);
    let mut got = 0u32;
    let mut rounds = 0;
    while got < REQUESTS {
        while let Ok(msg) = rig.peer.try_recv() {
            if let ShardMsg::Request { request_id, .. } = msg {
                assert_eq!(request_id, got + 10, "requests arrive in order");
                got += 1;
            }
        }
        rig.round();
        assert!(rig.waiting_for_peer() <= OUTBOX_CAP);
        rounds += 1;
        assert!(rounds < 1_000_000, "stuck at {got} of {REQUESTS} requests");
    }
    assert_eq!(rig.paused(), 0);
    done_tx.send(()).unwrap();
    client.join().unwrap();
}
