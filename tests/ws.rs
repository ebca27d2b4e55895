//! The WebSocket listener (`--listen-ws`) over real TCP against a real server, with
//! tungstenite's client: a chat between a WebSocket user and a TCP user in plaintext and
//! encrypted (the protocol's `Session` driven over the WebSocket), the stream rule (several
//! frames in one message, one frame over several), text messages (1003), oversize messages
//! (1009), the upgrade's limits (Origin 403, a request over 4 KiB), ping/pong as liveness, and
//! the page served by `--web-root`.

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use courier_protocol::session::{Encryption, Event};
use courier_protocol::*;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};
use util::{direct, send, Server, PASSWORD};

const SHORT: Duration = Duration::from_secs(5);

/// A free loopback port for `--listen-ws` (the harness reads only the TCP address).
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// A server with a WebSocket listener; returns it and the listener's address.
fn ws_server(extra: &[&str]) -> (Server, SocketAddr) {
    let ws = free_addr();
    let ws_arg = ws.to_string();
    let mut args = vec!["--listen-ws", ws_arg.as_str()];
    args.extend_from_slice(extra);
    (Server::start_with(&args), ws)
}

fn ws_connect(addr: SocketAddr) -> WebSocket<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, SHORT).expect("connect");
    stream.set_read_timeout(Some(SHORT)).unwrap();
    stream.set_nodelay(true).unwrap();
    let (ws, response) =
        tungstenite::client(format!("ws://{addr}/"), stream).expect("the upgrade is accepted");
    assert_eq!(response.status(), 101);
    ws
}

/// A user on a WebSocket: the protocol's client session driven over binary messages.
struct WsUser {
    ws: WebSocket<TcpStream>,
    session: Session,
    events: std::collections::VecDeque<Event>,
}

impl WsUser {
    fn connect(addr: SocketAddr, encryption: Encryption) -> WsUser {
        let config = SessionConfig {
            client_name: "courier-tests-ws".into(),
            encryption,
            ..SessionConfig::default()
        };
        let mut user = WsUser {
            ws: ws_connect(addr),
            session: Session::new(config, Instant::now()),
            events: Default::default(),
        };
        user.transmit();
        user
    }

    /// Sends what the session queued, one binary message per call.
    fn transmit(&mut self) {
        let mut out = BytesMut::new();
        if self.session.poll_transmit(&mut out) > 0 {
            self.ws.send(Message::Binary(out.freeze())).expect("send");
        }
    }

    fn next_event(&mut self, deadline: Instant) -> Event {
        loop {
            self.transmit();
            if let Some(e) = self.events.pop_front() {
                return e;
            }
            if let Some(e) = self.session.poll_event() {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no event from the server in time"
            );
            match self.ws.read() {
                Ok(Message::Binary(b)) => self.session.handle_input(&b, Instant::now()),
                Ok(Message::Close(_)) => self.session.handle_transport_closed(),
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => self.session.handle_transport_closed(),
            }
        }
    }

    fn request(&mut self, frame: impl Into<Frame>) -> Frame {
        let id = self.session.send_request(&frame.into()).expect("send");
        let deadline = Instant::now() + SHORT;
        let mut early = Vec::new();
        let answer = loop {
            match self.next_event(deadline) {
                Event::Reply { request_id, frame } if request_id == id => break frame,
                Event::Authenticated { request_id, auth } if request_id == id => {
                    break Frame::AuthOk(auth)
                }
                Event::Closed { reason } => panic!("closed: {reason}"),
                other => early.push(other),
            }
        };
        self.events.extend(early);
        answer
    }

    fn register(&mut self, handle: &str) -> AuthOk {
        match self.request(Register {
            handle: handle.into(),
            password: PASSWORD.into(),
            device: "web".into(),
        }) {
            Frame::AuthOk(a) => a,
            other => panic!("REGISTER: {other:?}"),
        }
    }

    fn next_push(&mut self) -> Frame {
        let deadline = Instant::now() + SHORT;
        loop {
            match self.next_event(deadline) {
                Event::Push(frame) => return frame,
                Event::Closed { reason } => panic!("closed: {reason}"),
                _ => {}
            }
        }
    }
}

/// A WebSocket user and a TCP user chat both ways in a direct thread.
fn chat_between_websocket_and_tcp(server: &Server, ws: SocketAddr, encryption: Encryption) {
    let mut web = WsUser::connect(ws, encryption);
    let web_auth = web.register("web_alice");
    let (mut tcp, _) = server.user("tcp_bob");
    let thread = direct(&mut tcp, web_auth.user);
    send(&mut tcp, thread, 1, "hello from TCP");
    match web.next_push() {
        Frame::MessagePush(p) => assert_eq!(&p.message.body[..], b"hello from TCP"),
        other => panic!("expected the message, got {other:?}"),
    }
    match web.request(courier_protocol::Send {
        thread,
        client_msg_id: 7,
        kind: MessageKind::Text,
        body: Bytes::from_static(b"hello from the browser"),
        reply_to: 0,
    }) {
        Frame::Sent(_) => {}
        other => panic!("SEND: {other:?}"),
    }
    let push = tcp
        .push_where(SHORT, |f| matches!(f, Frame::MessagePush(_)))
        .expect("the TCP user gets the message");
    match push {
        Frame::MessagePush(p) => assert_eq!(&p.message.body[..], b"hello from the browser"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_websocket_user_chats_with_a_tcp_user_in_plaintext() {
    let (server, ws) = ws_server(&["--insecure-plaintext"]);
    chat_between_websocket_and_tcp(&server, ws, Encryption::Plaintext);
}

#[test]
fn a_websocket_user_chats_with_a_tcp_user_through_the_noise_handshake() {
    let (server, ws) = ws_server(&[]);
    let key = server.key.expect("an encrypted server prints its key");
    chat_between_websocket_and_tcp(&server, ws, Encryption::Pinned(key));
}

/// Frames the server sent in binary messages until `n` arrived; panics on anything else.
fn read_frames(ws: &mut WebSocket<TcpStream>, n: usize) -> Vec<Frame> {
    let decoder = Decoder::new(MAX_FRAME_LEN);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    while frames.len() < n {
        match ws.read().expect("a message") {
            Message::Binary(b) => buf.extend_from_slice(&b),
            other => panic!("expected frames, got {other:?}"),
        }
        while let Some(env) = decoder.decode(&mut buf).expect("frames decode") {
            frames.push(env.frame);
        }
    }
    frames
}

fn frame_bytes(request_id: u32, frame: impl Into<Frame>) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(request_id, &frame.into(), &mut out);
    out.to_vec()
}

fn hello() -> Hello {
    Hello {
        version: VERSION,
        client: "raw-ws".into(),
    }
}

#[test]
fn a_message_may_hold_several_frames_or_part_of_one() {
    let (_server, addr) = ws_server(&["--insecure-plaintext"]);
    let mut ws = ws_connect(addr);
    let hello = frame_bytes(1, hello());
    // HELLO split over two messages, the second also holding two whole PINGs.
    ws.send(Message::Binary(hello[..3].to_vec().into()))
        .unwrap();
    let mut rest = hello[3..].to_vec();
    rest.extend(frame_bytes(2, Ping { nonce: 21 }));
    rest.extend(frame_bytes(3, Ping { nonce: 22 }));
    ws.send(Message::Binary(rest.into())).unwrap();
    let frames = read_frames(&mut ws, 3);
    assert!(matches!(frames[0], Frame::Welcome(_)), "{frames:?}");
    assert_eq!(frames[1], Frame::Pong(Pong { nonce: 21 }));
    assert_eq!(frames[2], Frame::Pong(Pong { nonce: 22 }));
}

/// Reads until the server's close frame; returns its code and the frames before it.
fn read_until_close(ws: &mut WebSocket<TcpStream>) -> (Option<CloseCode>, Vec<Frame>) {
    let decoder = Decoder::new(MAX_FRAME_LEN);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Binary(b)) => {
                buf.extend_from_slice(&b);
                while let Some(env) = decoder.decode(&mut buf).expect("frames decode") {
                    frames.push(env.frame);
                }
            }
            Ok(Message::Close(close)) => return (close.map(|c| c.code), frames),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

fn error_codes(frames: &[Frame]) -> Vec<u16> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::ErrorReply(e) => Some(e.code),
            _ => None,
        })
        .collect()
}

#[test]
fn a_text_message_is_refused_with_close_code_1003_after_an_error_reply() {
    let (_server, addr) = ws_server(&["--insecure-plaintext"]);
    let mut ws = ws_connect(addr);
    ws.send(Message::Text("hello".into())).unwrap();
    let (code, frames) = read_until_close(&mut ws);
    assert_eq!(code, Some(CloseCode::Unsupported));
    assert_eq!(error_codes(&frames), vec![ErrorCode::Malformed as u16]);
}

#[test]
fn a_message_over_the_frame_limits_is_refused_with_close_code_1009() {
    let (_server, addr) = ws_server(&["--insecure-plaintext"]);
    let mut ws = ws_connect(addr);
    // Before authentication a plaintext frame is at most 4 KiB, so is a message.
    ws.send(Message::Binary(vec![0u8; 5000].into())).unwrap();
    let (code, frames) = read_until_close(&mut ws);
    assert_eq!(code, Some(CloseCode::Size));
    assert_eq!(error_codes(&frames), vec![ErrorCode::FrameTooLarge as u16]);
}

/// Sends a hand-written upgrade request; returns the response's status line.
fn raw_upgrade(addr: SocketAddr, headers: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, SHORT).unwrap();
    s.set_read_timeout(Some(SHORT)).unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{headers}\r\n"
    );
    let _ = s.write_all(request.as_bytes());
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    text.lines().next().unwrap_or_default().to_owned()
}

fn read_response(addr: SocketAddr, request: &str) -> (String, String) {
    let mut s = TcpStream::connect_timeout(&addr, SHORT).unwrap();
    s.set_read_timeout(Some(SHORT)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.to_owned(), body.to_owned())
}

#[test]
fn an_origin_not_allowed_is_refused_with_403_and_counted() {
    let (server, addr) = ws_server(&[
        "--insecure-plaintext",
        "--metrics",
        "127.0.0.1:0",
        "--ws-allowed-origin",
        "https://chat.example",
    ]);
    let status = raw_upgrade(addr, "Origin: https://evil.example\r\n");
    assert!(status.starts_with("HTTP/1.1 403"), "{status}");
    let status = raw_upgrade(addr, "");
    assert!(status.starts_with("HTTP/1.1 403"), "no Origin: {status}");
    let status = raw_upgrade(addr, "Origin: https://chat.example\r\n");
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let metrics = server.metrics();
    assert_eq!(
        Server::metric_sum(
            &metrics,
            "courier_ws_upgrade_refusals_total{reason=\"origin\"}"
        ),
        2.0
    );
}

#[test]
fn an_upgrade_request_over_4_kib_is_refused() {
    let (_server, addr) = ws_server(&["--insecure-plaintext"]);
    let status = raw_upgrade(addr, &format!("X-Padding: {}\r\n", "a".repeat(5000)));
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
}

#[test]
fn an_upgrade_that_never_ends_is_closed_at_the_handshake_deadline() {
    let (_server, addr) = ws_server(&["--insecure-plaintext", "--handshake-timeout-secs", "1"]);
    let mut s = TcpStream::connect_timeout(&addr, SHORT).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(6))).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = s.read_to_end(&mut buf);
    assert!(read.is_ok(), "closed, not timed out: {read:?}");
    assert!(
        buf.is_empty(),
        "no Courier frame in the HTTP stream: {buf:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn pings_are_answered_and_keep_an_idle_connection_alive() {
    let (_server, addr) = ws_server(&["--insecure-plaintext", "--heartbeat-secs", "1"]);
    let mut web = WsUser::connect(addr, Encryption::Plaintext);
    web.register("pinger");
    // The idle limit is 3 heartbeats (3 s): WebSocket pings every 500 ms for 5 s keep the
    // connection open without any Courier frame.
    let until = Instant::now() + Duration::from_secs(5);
    let mut n = 0u8;
    while Instant::now() < until {
        n += 1;
        web.ws.send(Message::Ping(vec![n].into())).unwrap();
        loop {
            match web.ws.read().expect("the connection stays open") {
                Message::Pong(p) => {
                    assert_eq!(&p[..], &[n]);
                    break;
                }
                Message::Binary(_) => {}
                other => panic!("expected a pong, got {other:?}"),
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_plain_get_gets_the_web_root_and_nothing_outside_it() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("index.html"), "<h1>courier</h1>").unwrap();
    std::fs::write(root.path().join("style.css"), "h1 {}").unwrap();
    std::fs::create_dir_all(root.path().join("dist/web/src")).unwrap();
    std::fs::write(root.path().join("dist/web/src/app.js"), "export {}").unwrap();
    std::fs::write(root.path().join("secret.txt"), "no").unwrap();
    let root_arg = root.path().to_str().unwrap().to_owned();
    let (_server, addr) = ws_server(&["--insecure-plaintext", "--web-root", &root_arg]);
    let get = |path: &str| read_response(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
    let (head, body) = get("/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert_eq!(body, "<h1>courier</h1>");
    let (head, body) = get("/dist/web/src/app.js?v=1");
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert_eq!(body, "export {}");
    for path in [
        "/secret.txt",
        "/../secret.txt",
        "/dist/../secret.txt",
        "/nope",
    ] {
        let (head, _) = get(path);
        assert!(head.starts_with("HTTP/1.1 404"), "{path}: {head}");
    }
}

/// An idle WebSocket connection costs the server at most 128 bytes more than a TCP one, by its
/// resident memory: after a warm-up (the slab, the wheel and the allocator's arenas grow in
/// steps, which would charge whichever batch meets a step), 2,000 more idle TCP connections
/// (past HELLO), then 2,000 more idle WebSocket ones.
#[test]
fn an_idle_websocket_connection_costs_at_most_128_bytes_more_than_a_tcp_one() {
    const N: usize = 2000;
    let (server, addr) = ws_server(&[
        "--insecure-plaintext",
        "--shards",
        "1",
        "--handshake-timeout-secs",
        "600",
        "--max-conns-per-addr",
        "100000",
    ]);
    let rss = || {
        // Let the shard finish its round before looking.
        std::thread::sleep(Duration::from_millis(300));
        server.rss_bytes().expect("the server's RSS") as i64
    };
    let hello = frame_bytes(1, hello());
    let mut tcp = Vec::new();
    let mut ws = Vec::new();
    let mut add = |websocket: bool| {
        for _ in 0..N {
            if websocket {
                let mut c = ws_connect(addr);
                c.send(Message::Binary(hello.clone().into())).unwrap();
                let frames = read_frames(&mut c, 1);
                assert!(matches!(frames[0], Frame::Welcome(_)), "{frames:?}");
                ws.push(c);
            } else {
                let mut c = server.connect();
                c.hello();
                tcp.push(c);
            }
        }
    };
    add(false);
    add(true);
    let before = rss();
    add(false);
    let after_tcp = rss();
    add(true);
    let after_ws = rss();
    let per_tcp = (after_tcp - before) / N as i64;
    let per_ws = (after_ws - after_tcp) / N as i64;
    eprintln!("server RSS per idle connection: TCP {per_tcp} B, WebSocket {per_ws} B");
    assert!(
        per_ws <= per_tcp + 128,
        "an idle WebSocket connection costs {per_ws} B, a TCP one {per_tcp} B: more than 128 B apart"
    );
}

/// `courier-loadgen --ws` chats over the WebSocket listener, encrypted (the key pinned) and in
/// plaintext: nothing lost, nothing duplicated, every connection up.
#[test]
fn the_loadgen_chats_over_websocket_and_loses_nothing() {
    use clap::Parser;
    for plaintext in [false, true] {
        let mut extra = vec!["--rate-limit", "100000", "--fsync", "batch"];
        if plaintext {
            extra.push("--insecure-plaintext");
        }
        let (mut server, ws) = ws_server(&extra);
        let users = server.provision(20);
        let mut args = vec![
            "courier-loadgen".to_string(),
            "--quiet".into(),
            "--in-process".into(),
            "--ws".into(),
            "--server".into(),
            ws.to_string(),
            "--settle-secs".into(),
            "2".into(),
            "--users".into(),
            users.display().to_string(),
        ];
        match server.key {
            Some(key) => args.extend(["--server-key".into(), key.to_string()]),
            None => args.push("--insecure-plaintext".into()),
        }
        args.extend(["chat", "--pairs", "5", "--duration", "2"].map(String::from));
        let cli = courier_loadgen::Cli::try_parse_from(args).expect("valid loadgen arguments");
        let r = courier_loadgen::run(&cli).expect("loadgen run");
        assert_eq!((r.lost, r.duplicates, r.out_of_order), (0, 0, 0), "{r:#?}");
        assert!(r.passed, "{r:#?}");
        assert_eq!(r.connect_failures, 0, "{r:#?}");
        assert!(r.acked > 100 && r.delivered >= r.acked, "{r:#?}");
    }
}

/// The per-address limit counts WebSocket connections with TCP ones; a WebSocket client over
/// it gets an HTTP 503 it can read, not a Courier frame.
#[test]
fn the_per_address_limit_counts_websocket_connections_and_refuses_with_503() {
    let (server, addr) = ws_server(&[
        "--insecure-plaintext",
        "--max-conns-per-addr",
        "2",
        "--metrics",
        "127.0.0.1:0",
    ]);
    // A WELCOME means the server accepted it: with a listener per shard (SO_REUSEPORT) a bare
    // TCP connect can still wait in another shard's accept queue when the upgrade below is
    // counted, and the upgrade would then be the second connection, not the third.
    let mut tcp = server.connect();
    tcp.hello();
    let _ws = ws_connect(addr);
    let status = raw_upgrade(addr, "");
    assert!(status.starts_with("HTTP/1.1 503"), "{status}");
    let metrics = server.metrics();
    assert_eq!(
        Server::metric_sum(
            &metrics,
            "courier_ws_upgrade_refusals_total{reason=\"server_full\"}"
        ),
        1.0
    );
    assert_eq!(
        Server::metric_sum(&metrics, "courier_ws_connections"),
        1.0,
        "{metrics}"
    );
}

/// Pings take tokens of the connection's rate bucket like `PING` frames: a flood of them gets
/// pongs only up to the rate, and is counted as rate limited.
#[test]
fn pings_over_the_rate_limit_get_no_pong() {
    let (server, addr) = ws_server(&[
        "--insecure-plaintext",
        "--rate-limit",
        "1",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let mut ws = ws_connect(addr);
    ws.send(Message::Binary(frame_bytes(1, hello()).into()))
        .unwrap();
    assert!(matches!(read_frames(&mut ws, 1)[0], Frame::Welcome(_)));
    for n in 0..10u8 {
        ws.send(Message::Ping(vec![n].into())).unwrap();
    }
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut pongs = 0;
    loop {
        match ws.read() {
            Ok(Message::Pong(_)) => pongs += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => break,
        }
    }
    assert!(
        (1..=3).contains(&pongs),
        "{pongs} pongs for 10 pings at 1 request/s (burst 2)"
    );
    let limited = Server::metric_sum(&server.metrics(), "courier_rate_limited_total");
    assert!(limited >= 7.0, "{limited} counted");
}
