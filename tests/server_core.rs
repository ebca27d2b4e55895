//! The server core over real TCP against a real `courier serve` with RocksDB in a temp dir:
//! sessions, liveness, limits, bad input, presence fan-out and shutdown.

mod util;

use std::io::Read;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use courier_protocol::noise::Keypair;
use courier_protocol::{
    AdminStats, ContactAdd, Done, ErrorCode, Frame, Hello, Logout, LogoutAll, MessageKind,
    OpenDirect, Ping, PresenceQuery, PresenceSubscribe, Send,
};
use util::{error_code, has_error, Server, TestConn, PASSWORD};

const SHORT: Duration = Duration::from_secs(5);

#[test]
fn register_login_and_resume_identify_the_same_user() {
    let server = Server::start();
    let (mut phone, reg) = server.user("alice");
    assert_eq!(reg.handle, "alice");
    assert_eq!(reg.token.len(), 32);
    phone.ping();

    let mut laptop = server.connect();
    laptop.hello();
    let login = laptop.login("alice", PASSWORD, "laptop");
    assert_eq!(login.user, reg.user);
    assert_ne!(
        login.device, reg.device,
        "another device name is another device"
    );

    let mut again = server.connect();
    again.hello();
    let resumed = again.resume(&login.token);
    assert_eq!(
        (resumed.user, resumed.device, resumed.handle.as_str()),
        (reg.user, login.device, "alice")
    );
    assert_eq!(
        error_code(&again.try_resume(&login.token)),
        ErrorCode::AlreadyAuthenticated
    );
}

#[test]
fn bad_credentials_are_refused_and_the_connection_stays() {
    let server = Server::start();
    server.user("bob");
    let mut c = server.connect();
    c.hello();
    assert_eq!(
        error_code(&c.try_login("bob", "not the password", "d")),
        ErrorCode::BadCredentials
    );
    assert_eq!(
        error_code(&c.try_login("nobody", PASSWORD, "d")),
        ErrorCode::BadCredentials
    );
    assert_eq!(
        error_code(&c.try_resume(&Bytes::from(vec![7u8; 32]))),
        ErrorCode::InvalidToken
    );
    assert_eq!(
        error_code(&c.try_register("bob", PASSWORD, "d")),
        ErrorCode::HandleTaken
    );
    assert_eq!(
        error_code(&c.try_register("Bad Handle!", PASSWORD, "d")),
        ErrorCode::InvalidHandle
    );
    c.ping();
    c.login("bob", PASSWORD, "d");
}

#[test]
fn logout_revokes_the_token_and_closes() {
    let server = Server::start();
    let (mut c, ok) = server.user("carol");
    assert_eq!(c.request(Logout {}), Frame::Done(Done {}));
    c.expect_closed(SHORT);
    let mut again = server.connect();
    again.hello();
    assert_eq!(
        error_code(&again.try_resume(&ok.token)),
        ErrorCode::InvalidToken
    );
}

#[test]
fn logout_all_closes_every_other_device_with_session_revoked() {
    let server = Server::start();
    let (mut phone, reg) = server.user("dave");
    let mut devices: Vec<TestConn> = ["laptop", "tablet"]
        .iter()
        .map(|name| {
            let mut c = server.connect();
            c.hello();
            c.login("dave", PASSWORD, name);
            c
        })
        .collect();
    assert_eq!(phone.request(LogoutAll {}), Frame::Done(Done {}));
    phone.expect_closed(SHORT);
    for d in &mut devices {
        let frames = d.expect_closed(SHORT);
        assert!(has_error(&frames, ErrorCode::SessionRevoked), "{frames:?}");
    }
    let mut again = server.connect();
    again.hello();
    assert_eq!(
        error_code(&again.try_resume(&reg.token)),
        ErrorCode::InvalidToken
    );
}

#[test]
fn every_device_of_a_user_gets_pushes_except_the_sender() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice2");
    let (mut bob_phone, bob) = server.user("bob2");
    let mut bob_laptop = server.connect();
    bob_laptop.hello();
    bob_laptop.login("bob2", PASSWORD, "laptop");

    let thread = match alice.request(OpenDirect { peer: bob.user }) {
        Frame::ThreadInfo(t) => t.thread.id,
        other => panic!("expected THREAD_INFO, got {other:?}"),
    };
    let send = Send {
        thread,
        client_msg_id: 1,
        kind: MessageKind::Text,
        body: Bytes::from_static(b"hi bob"),
        reply_to: 0,
    };
    assert!(matches!(alice.request(send), Frame::Sent(_)));
    for device in [&mut bob_phone, &mut bob_laptop] {
        let push = device.push_where(SHORT, |f| matches!(f, Frame::MessagePush(_)));
        match push {
            Some(Frame::MessagePush(p)) => assert_eq!(&p.message.body[..], b"hi bob"),
            other => panic!("bob's device got no MESSAGE_PUSH: {other:?}"),
        }
    }
    assert!(alice
        .push_where(Duration::from_millis(500), |f| matches!(
            f,
            Frame::MessagePush(_)
        ))
        .is_none());
}

#[test]
fn presence_subscribers_see_contacts_come_and_go() {
    let server = Server::start();
    let (mut watcher, _) = server.user("watcher");
    let (bob_conn, bob) = server.user("bobby");
    let (_, stranger) = server.user("stranger");
    assert_eq!(
        watcher.request(ContactAdd { user: bob.user }),
        Frame::Done(Done {})
    );
    assert_eq!(
        error_code(&watcher.request(PresenceSubscribe {
            users: vec![stranger.user]
        })),
        ErrorCode::NotContact
    );
    assert_eq!(
        watcher.request(PresenceSubscribe {
            users: vec![bob.user]
        }),
        Frame::Done(Done {})
    );

    // A stranger's presence is not disclosed: the whole query is refused.
    let refused = watcher.request(PresenceQuery {
        users: vec![bob.user, stranger.user],
    });
    assert_eq!(error_code(&refused), ErrorCode::NotContact);
    match watcher.request(PresenceQuery {
        users: vec![bob.user],
    }) {
        Frame::PresenceList(l) => assert!(l.entries[0].online),
        other => panic!("expected PRESENCE_LIST, got {other:?}"),
    }
    drop(bob_conn);
    let offline = watcher.push_where(
        SHORT,
        |f| matches!(f, Frame::PresencePush(p) if p.presence.user == bob.user),
    );
    match offline {
        Some(Frame::PresencePush(p)) => assert!(!p.presence.online && p.presence.last_seen > 0),
        other => panic!("no offline push: {other:?}"),
    }
    let _back = server.resumed(&bob.token);
    let online = watcher.push_where(
        SHORT,
        |f| matches!(f, Frame::PresencePush(p) if p.presence.user == bob.user),
    );
    assert!(matches!(online, Some(Frame::PresencePush(p)) if p.presence.online));
}

#[test]
fn a_reconnect_storm_is_coalesced_for_subscribers() {
    let server = Server::start();
    let (mut watcher, _) = server.user("watcher2");
    let (_, flappy) = server.user("flappy");
    watcher.request(ContactAdd { user: flappy.user });
    watcher.request(PresenceSubscribe {
        users: vec![flappy.user],
    });
    let started = Instant::now();
    for _ in 0..20 {
        let _c = server.resumed(&flappy.token);
    }
    let elapsed = started.elapsed().as_secs() + 2;
    std::thread::sleep(Duration::from_millis(2500));
    let mut pushes = 0;
    while watcher.next_push(Duration::from_millis(200)).is_some() {
        pushes += 1;
    }
    assert!(pushes >= 1, "the changes were not pushed at all");
    assert!(
        pushes as u64 <= elapsed + 1,
        "{pushes} pushes in about {elapsed} s: not coalesced per second"
    );
}

#[test]
fn handshake_timeout_closes_silent_and_unauthenticated_connections() {
    let server = Server::start_with(&["--handshake-timeout-secs", "1"]);
    let mut silent = server.connect();
    let mut hello_only = server.connect();
    hello_only.hello();
    let (mut authed, _) = server.user("eve");
    for c in [&mut silent, &mut hello_only] {
        let frames = c.expect_closed(SHORT);
        assert!(
            has_error(&frames, ErrorCode::HandshakeTimeout),
            "{frames:?}"
        );
    }
    authed.ping();
}

#[test]
fn heartbeat_timeout_closes_idle_sessions_only() {
    let server = Server::start_with(&["--heartbeat-secs", "1"]);
    let (mut idle, _) = server.user("idle");
    let (mut busy, _) = server.user("busy");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        busy.ping();
        std::thread::sleep(Duration::from_millis(400));
    }
    let frames = idle.expect_closed(Duration::from_secs(3));
    assert!(
        has_error(&frames, ErrorCode::HeartbeatTimeout),
        "{frames:?}"
    );
    busy.ping();
}

#[test]
fn a_slow_consumer_is_cut_off_and_others_carry_on() {
    let server = Server::start_with(&["--max-output", "262144", "--rate-limit", "100000"]);
    let (mut sender, _) = server.user("sender");
    let (mut victim, v) = server.user("victim");
    let thread = match sender.request(OpenDirect { peer: v.user }) {
        Frame::ThreadInfo(t) => t.thread.id,
        other => panic!("expected THREAD_INFO, got {other:?}"),
    };
    let body = Bytes::from(vec![b'x'; 15 * 1024]);
    let total = 2000u64;
    for batch in 0..total / 100 {
        let ids: Vec<u32> = (0..100)
            .map(|i| {
                let send = Send {
                    thread,
                    client_msg_id: batch * 100 + i + 1,
                    kind: MessageKind::Text,
                    body: body.clone(),
                    reply_to: 0,
                };
                sender.send_request(send)
            })
            .collect();
        for id in ids {
            assert!(matches!(sender.reply(id, SHORT), Frame::Sent(_)));
        }
    }
    sender.ping();
    // The victim now reads everything it was sent: the stream must end before all pushes.
    let _ = victim
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)));
    let mut received = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    loop {
        match victim.stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => received += n,
        }
    }
    let sent = (total as usize) * body.len();
    assert!(
        received < sent,
        "the victim got all {sent} bytes: it was never cut off"
    );
    assert!(
        server.log().contains("slow consumer"),
        "the cut-off is logged"
    );
}

#[test]
fn bad_frames_get_an_error_and_a_close_while_others_carry_on() {
    let server = Server::start();
    let (mut bystander, _) = server.user("bystander");
    let oversize = 70_000u32.to_be_bytes().to_vec();
    let mut unknown = BytesMut::new();
    unknown.put_u32(5);
    unknown.put_u8(0x7E);
    unknown.put_u32(1);
    let mut truncated = BytesMut::new();
    truncated.put_u32(7);
    truncated.put_u8(0x01); // HELLO whose body ends inside its version field
    truncated.put_u32(1);
    truncated.put_u16(1);
    let too_short = 2u32.to_be_bytes().to_vec();
    let cases: [(&str, Vec<u8>, ErrorCode); 4] = [
        ("oversize", oversize, ErrorCode::FrameTooLarge),
        ("unknown type", unknown.to_vec(), ErrorCode::UnknownFrame),
        ("truncated body", truncated.to_vec(), ErrorCode::Malformed),
        ("length below the header", too_short, ErrorCode::Malformed),
    ];
    for (name, bytes, code) in cases {
        let mut c = server.connect();
        c.send_raw(&bytes);
        let frames = c.expect_closed(SHORT);
        assert!(has_error(&frames, code), "{name}: {frames:?}");
        bystander.ping();
    }
    let mut garbage = server.connect();
    garbage.hello();
    garbage.send_raw(&[0xFF; 64]);
    assert!(has_error(
        &garbage.expect_closed(SHORT),
        ErrorCode::FrameTooLarge
    ));
    bystander.ping();
}

#[test]
fn a_frame_split_byte_by_byte_is_reassembled() {
    let server = Server::start();
    let mut c = server.connect();
    let mut hello = BytesMut::new();
    courier_protocol::encode(
        9,
        &Hello {
            version: 1,
            client: "slow typist".into(),
        }
        .into(),
        &mut hello,
    );
    for b in hello.iter() {
        c.send_raw(&[*b]);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(matches!(c.reply(9, SHORT), Frame::Welcome(_)));
}

#[test]
fn the_session_state_machine_is_enforced() {
    let server = Server::start();
    let mut no_hello = server.connect();
    no_hello.send(1, Ping { nonce: 1 });
    assert!(has_error(
        &no_hello.expect_closed(SHORT),
        ErrorCode::HandshakeRequired
    ));

    let mut future = server.connect();
    future.send(
        1,
        Hello {
            version: 2,
            client: "from the future".into(),
        },
    );
    assert!(has_error(
        &future.expect_closed(SHORT),
        ErrorCode::UnsupportedVersion
    ));

    let mut eager = server.connect();
    eager.hello();
    eager.send(2, OpenDirect { peer: 1 });
    assert!(has_error(
        &eager.expect_closed(SHORT),
        ErrorCode::NotAuthenticated
    ));

    let mut twice = server.connect();
    twice.hello();
    twice.send(
        2,
        Hello {
            version: 1,
            client: "again".into(),
        },
    );
    assert!(has_error(
        &twice.expect_closed(SHORT),
        ErrorCode::HandshakeRequired
    ));

    let mut pinger = server.connect();
    pinger.hello();
    pinger.ping();
}

#[test]
fn rate_limit_drops_requests_but_keeps_the_connection() {
    let server = Server::start_with(&["--rate-limit", "5"]);
    let (mut c, _) = server.user("chatty");
    let ids: Vec<u32> = (0..40).map(|i| c.send_request(Ping { nonce: i })).collect();
    let replies: Vec<Frame> = ids.iter().map(|&id| c.reply(id, SHORT)).collect();
    let limited = replies
        .iter()
        .filter(|f| matches!(f, Frame::ErrorReply(e) if e.code == ErrorCode::RateLimited as u16))
        .count();
    let pongs = replies
        .iter()
        .filter(|f| matches!(f, Frame::Pong(_)))
        .count();
    assert!(limited >= 20, "only {limited} of 40 were limited");
    assert_eq!(limited + pongs, 40, "every request gets exactly one answer");
    std::thread::sleep(Duration::from_millis(500));
    c.ping();
}

#[test]
fn admin_stats_are_for_admins_only() {
    let mut server = Server::start();
    server.user("root");
    server.admin(&["grant", "--handle", "root"]);
    let mut root = server.connect();
    root.hello();
    root.login("root", PASSWORD, "test");
    let (mut user, _) = server.user("someone");
    match root.request(AdminStats {}) {
        Frame::Stats(s) => {
            let get = |name: &str| s.entries.iter().find(|e| e.name == name).map(|e| e.value);
            assert!(get("connections").is_some_and(|n| n >= 2), "{s:?}");
            assert!(get("authenticated").is_some_and(|n| n >= 2), "{s:?}");
        }
        other => panic!("expected STATS, got {other:?}"),
    }
    assert_eq!(
        error_code(&user.request(AdminStats {})),
        ErrorCode::Forbidden
    );
}

/// Node `a` of a two-node cluster whose node `b` (client port 9) is never started.
/// Node `a` of a two-node cluster whose node `b` never runs (its addresses are dead ends): the
/// REDIRECTs `a` sends are the test's object. Links are encrypted, so both entries carry keys.
fn cluster_of_a_and_b() -> (Server, Keypair) {
    let a = Keypair::from_private([0x3a; 32]);
    let b = Keypair::from_private([0x3b; 32]);
    let peer_a = format!("a=127.0.0.1:1@127.0.0.1:0#{}", a.public());
    let peer_b = format!("b=127.0.0.1:9@127.0.0.1:9#{}", b.public());
    let server = Server::start_keyed(
        &a,
        &["--node-id", "a", "--peer", &peer_a, "--peer", &peer_b],
    );
    (server, b)
}

#[test]
fn users_homed_on_another_node_are_redirected() {
    let (mut server, b) = cluster_of_a_and_b();
    // Provisioned without the node list, every account is in a's data directory, but the
    // handles of some are homed on node b: a LOGIN for those is redirected before any
    // password work.
    server.provision(16);
    let (mut local, mut redirected) = (0, 0);
    for i in 0..16 {
        let mut c = server.connect();
        assert_eq!(c.hello().node, "a");
        let id = c.send_request(courier_protocol::Login {
            handle: format!("load{i}"),
            password: PASSWORD.into(),
            device: "d".into(),
        });
        let frames = match c.recv_until(Instant::now() + SHORT) {
            util::Recv::Frame(e) => match e.frame {
                Frame::Redirect(r) if e.request_id == 0 => {
                    assert_eq!((r.node.as_str(), r.addr.as_str()), ("b", "127.0.0.1:9"));
                    assert_eq!(&r.key[..], &b.public().as_bytes()[..], "b's key");
                    redirected += 1;
                    c.expect_closed(SHORT)
                }
                Frame::AuthOk(_) if e.request_id == id => {
                    local += 1;
                    Vec::new()
                }
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("no answer to LOGIN: {other:?}"),
        };
        assert!(frames.iter().all(|f| !matches!(f, Frame::AuthOk(_))));
    }
    assert!(
        local > 0 && redirected > 0,
        "local {local}, redirected {redirected}"
    );
}

/// Regression: REGISTER used to create the account first and then redirect it when its new
/// id was homed on another node, leaving an account on the wrong node. Now the handle decides
/// the home: REGISTER is answered AUTH_OK at the home, and elsewhere redirected before any
/// account is created (so asking again is redirected again, not HANDLE_TAKEN).
#[test]
fn register_in_a_cluster_creates_accounts_only_at_their_home() {
    let (server, b) = cluster_of_a_and_b();
    let (mut here, mut redirected) = (0, 0);
    for i in 0..16 {
        let handle = format!("newcomer{i}");
        for attempt in 0..2 {
            let mut c = server.connect();
            c.hello();
            let id = c.send_request(courier_protocol::Register {
                handle: handle.clone(),
                password: PASSWORD.into(),
                device: format!("d{attempt}"),
            });
            match c.recv_until(Instant::now() + SHORT) {
                util::Recv::Frame(e) if e.request_id == id && attempt == 0 => {
                    assert!(matches!(e.frame, Frame::AuthOk(ok) if ok.handle == handle));
                    here += 1;
                    break;
                }
                util::Recv::Frame(e) if e.request_id == 0 => {
                    let Frame::Redirect(r) = e.frame else {
                        panic!("REGISTER {handle}: {:?}", e.frame)
                    };
                    assert_eq!((r.node.as_str(), r.addr.as_str()), ("b", "127.0.0.1:9"));
                    assert_eq!(&r.key[..], &b.public().as_bytes()[..], "b's key");
                    assert!(c.expect_closed(SHORT).is_empty());
                    redirected += 1;
                }
                other => panic!("REGISTER {handle} answered {other:?}"),
            }
        }
    }
    assert!(
        here > 0 && redirected > 0,
        "here {here}, redirected {redirected}"
    );
}

/// Regression: a request with id 0 was answered with id 0, which a client takes for a push
/// or a close announcement. It is refused: `ERROR_REPLY(0, MALFORMED)` and a close.
#[test]
fn a_request_with_id_zero_is_refused() {
    let server = Server::start();
    let mut c = server.connect();
    c.send(
        0,
        Hello {
            version: courier_protocol::VERSION,
            client: "zero".into(),
        },
    );
    let frames = c.expect_closed(SHORT);
    assert!(has_error(&frames, ErrorCode::Malformed), "{frames:?}");
    assert!(
        frames.iter().all(|f| !matches!(f, Frame::Welcome(_))),
        "{frames:?}"
    );

    let (mut authed, _) = server.user("zero");
    authed.send(0, Ping { nonce: 1 });
    let frames = authed.expect_closed(SHORT);
    assert!(has_error(&frames, ErrorCode::Malformed), "{frames:?}");
    assert!(
        frames.iter().all(|f| !matches!(f, Frame::Pong(_))),
        "{frames:?}"
    );
}

#[test]
fn connections_over_the_limit_are_told_the_server_is_full() {
    let server = Server::start_with(&["--max-connections", "2"]);
    let (mut a, _) = server.user("first");
    let mut b = server.connect();
    b.hello();
    let mut c = server.connect();
    assert!(has_error(&c.expect_closed(SHORT), ErrorCode::ServerFull));
    a.ping();
    drop(b);
    std::thread::sleep(Duration::from_millis(200));
    server.connect().hello();
}

#[test]
fn metrics_are_served_over_http() {
    let server = Server::start_with(&["--metrics", "127.0.0.1:0"]);
    let (mut c, _) = server.user("measured");
    c.ping();
    let log = server.log();
    let addr = log
        .split("metrics on http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"));
    let mut http = std::net::TcpStream::connect(addr).expect("connect to metrics");
    std::io::Write::write_all(&mut http, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let _ = http.set_read_timeout(Some(SHORT));
    let mut text = String::new();
    let _ = http.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.0 200 OK"), "{text}");
    assert!(text.contains("courier_connections{shard=\"0\"}"), "{text}");
    assert!(
        text.contains("courier_disconnects_total{reason=\"slow_consumer\"}"),
        "{text}"
    );
    assert!(text.contains("courier_commit_seconds_count"), "{text}");
    assert!(
        text.contains("courier_rocksdb_memory_bytes{part=\"memtables\"}"),
        "{text}"
    );
}

#[test]
fn sigterm_says_goodbye_exits_zero_and_data_survives_restart() {
    let mut server = Server::start();
    let (mut c, ok) = server.user("persistent");
    let started = Instant::now();
    let status = server.stop().expect("the server exited by itself");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert!(has_error(&c.expect_closed(SHORT), ErrorCode::ShuttingDown));

    server.restart();
    let mut again = server.connect();
    again.hello();
    let resumed = again.resume(&ok.token);
    assert_eq!(
        (resumed.user, resumed.handle.as_str()),
        (ok.user, "persistent")
    );
}

/// Regression: a client that sends far more than one round's read budget in one burst is read
/// over several rounds, and every frame is still answered, in order; another client is
/// served meanwhile.
#[test]
fn a_burst_larger_than_the_read_budget_is_answered_completely() {
    const PINGS: u64 = 60_000; // 17 bytes each: about 1 MiB, four read budgets
                               // A tiny budget: without the carry-over, bytes left in the socket after the last write
                               // would never be read (no new edge), and the test would stop short.
    let server = Server::start_with(&[
        "--rate-limit",
        "1000000",
        "--read-budget",
        "4096",
        "--insecure-plaintext", // raw_writer: frames from another thread
    ]);
    let (mut flooder, _) = server.user("flood");
    let (mut other, _) = server.user("other");
    let mut burst = BytesMut::new();
    for nonce in 1..=PINGS {
        courier_protocol::encode(1, &Ping { nonce }.into(), &mut burst);
    }
    let mut writer = flooder.raw_writer();
    let sending = std::thread::spawn(move || std::io::Write::write_all(&mut writer, &burst));
    let mut expected = 1;
    let deadline = Instant::now() + Duration::from_secs(30);
    while expected <= PINGS {
        match flooder.recv_until(deadline) {
            util::Recv::Frame(e) => match e.frame {
                Frame::Pong(p) => {
                    assert_eq!(p.nonce, expected, "pongs come back in order, none missing");
                    expected += 1;
                }
                other => panic!("unexpected {other:?}"),
            },
            util::Recv::Closed | util::Recv::Timeout => panic!("stopped at pong {expected}"),
        }
        if expected % 20_000 == 0 {
            assert!(matches!(other.request(Ping { nonce: 7 }), Frame::Pong(_)));
        }
    }
    sending
        .join()
        .expect("writer thread")
        .expect("the burst was written");
}

/// The server ends a readable event's reading at a read that fills less than it asked (the
/// socket is empty then): bytes that arrive after that short read raise a new edge and are
/// still read. The first half of a HELLO is sent, the server has read it (its
/// `courier_bytes_in_total` counts it), then the rest, which must be answered.
#[test]
fn bytes_arriving_after_a_short_read_are_still_read() {
    let server = Server::start_with(&["--metrics", "127.0.0.1:0"]);
    let bytes_in = || Server::metric_sum(&server.metrics(), "courier_bytes_in_total");
    let mut c = server.connect();
    // After the handshake, if any: only the half frame's bytes count below.
    let before = bytes_in();
    let mut hello = BytesMut::new();
    courier_protocol::encode(
        9,
        &Hello {
            version: 1,
            client: "half now, half later".into(),
        }
        .into(),
        &mut hello,
    );
    let half = hello.len() / 2;
    c.send_raw(&hello[..half]);
    let deadline = Instant::now() + SHORT;
    while bytes_in() < before + half as f64 {
        assert!(
            Instant::now() < deadline,
            "the server never read the first half"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    c.send_raw(&hello[half..]);
    assert!(matches!(c.reply(9, SHORT), Frame::Welcome(_)));
}

/// A frame and the peer's FIN that are both in the socket before the server looks (it is
/// stopped while the client writes them) come in one readable event that also reports the
/// close. The read of the frame is short, but the reading must go on to the read that returns
/// 0: no later edge would report the FIN. The server answers the frame and closes.
#[test]
fn a_frame_and_a_fin_that_arrive_together_are_both_seen() {
    let server = Server::start();
    let mut c = server.connect();
    c.hello();
    server.signal(libc::SIGSTOP);
    server.wait_stopped();
    c.send(7, Ping { nonce: 7 });
    c.stream
        .shutdown(std::net::Shutdown::Write)
        .expect("half-close the client's side");
    server.signal(libc::SIGCONT);
    let frames = c.expect_closed(SHORT);
    assert!(
        frames
            .iter()
            .any(|f| matches!(f, Frame::Pong(p) if p.nonce == 7)),
        "{frames:?}"
    );
}
