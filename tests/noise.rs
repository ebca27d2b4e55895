//! The encrypted transport over real TCP against a real server (NOISE.md): both
//! handshakes and a chat through them, a wrong pin, altered, replayed and reordered records, a
//! plaintext client, the handshake deadline, and the server's key file.

mod util;

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use courier_protocol::noise::{Keypair, PublicKey};
use courier_protocol::session::{CloseReason, Encryption};
use courier_protocol::*;
use util::{direct, has_error, send, Server, TestConn, PASSWORD};

const SHORT: Duration = Duration::from_secs(5);

fn metrics_server(extra: &[&str]) -> Server {
    let mut args = vec!["--metrics", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Server::start_with(&args)
}

fn noise_failures(server: &Server, reason: &str) -> f64 {
    Server::metric_sum(
        &server.metrics(),
        &format!("courier_noise_failures_total{{reason=\"{reason}\"}}"),
    )
}

fn history(c: &mut TestConn, thread: u64) -> Vec<Bytes> {
    match c.request(History {
        thread,
        anchor: 0,
        direction: Direction::Forward,
        limit: 100,
    }) {
        Frame::Messages(m) => m.messages.into_iter().map(|m| m.body).collect(),
        other => panic!("HISTORY: {other:?}"),
    }
}

fn encoded(request_id: u32, frame: impl Into<Frame>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(request_id, &frame.into(), &mut buf);
    buf.to_vec()
}

#[test]
fn ik_and_xx_handshakes_carry_a_chat() {
    let server = Server::start();
    let key = server
        .key
        .expect("the server is encrypted by default and prints its key");
    // IK: the key pinned.
    let mut alice = server.connect();
    assert_eq!(alice.server_key(), Some(key));
    alice.hello();
    let alice_ok = alice.register("alice", PASSWORD, "laptop");
    // XX: trust on first use learns the same key.
    let mut bob = TestConn::connect_with(server.addr, Encryption::TrustOnFirstUse);
    assert_eq!(bob.server_key(), Some(key), "XX proves the same key");
    bob.hello();
    let bob_ok = bob.register("bob", PASSWORD, "phone");
    let thread = direct(&mut alice, bob_ok.user);
    send(&mut alice, thread, 1, "through the tunnel");
    let push = bob
        .push_where(SHORT, |f| matches!(f, Frame::MessagePush(_)))
        .expect("bob gets the message");
    let Frame::MessagePush(p) = push else {
        unreachable!()
    };
    assert_eq!(p.message.body, Bytes::from_static(b"through the tunnel"));
    assert_eq!(p.message.sender, alice_ok.user);
    // A reconnect with the key pinned resumes the session.
    let mut again = server.resumed(&bob_ok.token);
    assert_eq!(
        history(&mut again, thread),
        [Bytes::from_static(b"through the tunnel")]
    );
}

#[test]
fn a_client_pinned_to_another_key_is_refused_with_a_message_naming_both() {
    let server = metrics_server(&[]);
    let wrong = Keypair::from_private([0x99; 32]).public();
    let refused = TestConn::try_connect_with(server.addr, Encryption::Pinned(wrong))
        .err()
        .expect("the server cannot finish an IK handshake made for another key");
    assert_eq!(
        refused,
        CloseReason::ServerKeyMismatch {
            pinned: wrong,
            presented: None
        }
    );
    let text = refused.to_string();
    assert!(
        text.contains(&wrong.to_string())
            && text.contains("do not connect")
            && text.contains("courier keys show"),
        "{text}"
    );
    assert_eq!(noise_failures(&server, "pin_mismatch"), 1.0);
    // The server goes on serving the right key.
    server.connect().hello();
}

#[test]
fn a_tampered_record_closes_the_connection_and_stores_nothing() {
    let server = metrics_server(&[]);
    let (mut alice, _) = server.user("alice");
    let (mut bob, bob_ok) = server.user("bob");
    let thread = direct(&mut alice, bob_ok.user);
    let frame = encoded(
        7,
        courier_protocol::Send {
            thread,
            client_msg_id: 1,
            kind: MessageKind::Text,
            body: Bytes::from_static(b"altered in transit"),
            reply_to: 0,
        },
    );
    let mut record = alice.seal_record(&frame);
    let last = record.len() - 1;
    record[last] ^= 0x01; // one bit of the tag
    alice.write_wire(&record).unwrap();
    let frames = alice.expect_closed(SHORT);
    assert!(
        frames.is_empty(),
        "nothing answers an altered record: {frames:?}"
    );
    assert!(history(&mut bob, thread).is_empty(), "nothing was stored");
    assert_eq!(noise_failures(&server, "record_auth"), 1.0);
}

#[test]
fn a_replayed_record_is_rejected() {
    let server = metrics_server(&[]);
    let (mut c, _) = server.user("carol");
    let record = c.seal_record(&encoded(5, Ping { nonce: 1 }));
    c.write_wire(&record).unwrap();
    assert!(
        matches!(c.reply(5, SHORT), Frame::Pong(_)),
        "the first copy is fine"
    );
    c.write_wire(&record).unwrap();
    let frames = c.expect_closed(SHORT);
    assert!(frames.is_empty(), "the replay is not answered: {frames:?}");
    assert_eq!(noise_failures(&server, "record_auth"), 1.0);
}

#[test]
fn reordered_records_are_rejected() {
    let server = metrics_server(&[]);
    let (mut c, _) = server.user("dave");
    let first = c.seal_record(&encoded(5, Ping { nonce: 1 }));
    let second = c.seal_record(&encoded(6, Ping { nonce: 2 }));
    c.write_wire(&second).unwrap();
    c.write_wire(&first).unwrap();
    let frames = c.expect_closed(SHORT);
    assert!(frames.is_empty(), "neither is answered: {frames:?}");
    assert_eq!(noise_failures(&server, "record_auth"), 1.0);
}

#[test]
fn a_plaintext_client_is_told_that_encryption_is_required() {
    let server = metrics_server(&[]);
    let mut c = TestConn::connect(server.addr);
    c.start_hello();
    let frames = c.expect_closed(SHORT);
    assert!(
        has_error(&frames, ErrorCode::EncryptionRequired),
        "{frames:?}"
    );
    let Some(Frame::ErrorReply(e)) = frames.first() else {
        unreachable!()
    };
    assert!(
        e.message.contains("requires the encrypted transport")
            && e.message.contains("courier keys show"),
        "{}",
        e.message
    );
    assert_eq!(noise_failures(&server, "plaintext_peer"), 1.0);
}

#[test]
fn an_encrypted_client_of_a_plaintext_server_is_told_so() {
    let server = Server::start_with(&["--insecure-plaintext"]);
    assert_eq!(server.key, None);
    let key = Keypair::from_private([0x53; 32]).public();
    let refused = TestConn::try_connect_with(server.addr, Encryption::Pinned(key))
        .err()
        .expect("a plaintext server cannot answer a handshake");
    match &refused {
        CloseReason::PlaintextAnswer { code, .. } => {
            assert_eq!(*code, ErrorCode::FrameTooLarge as u16)
        }
        other => panic!("{other:?}"),
    }
    assert!(
        refused.to_string().contains("--insecure-plaintext"),
        "{refused}"
    );
}

#[test]
fn the_handshake_deadline_closes_a_silent_connection() {
    let server = metrics_server(&["--handshake-timeout-secs", "1"]);
    let mut silent = TcpStream::connect(server.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    // The server says why in plaintext (the client's session reports it as the server's
    // plaintext answer to its handshake), then closes.
    silent
        .read_to_end(&mut got)
        .expect("the server closes the connection");
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut buf = BytesMut::from(&got[..]);
    let env = Decoder::new(MAX_FRAME_LEN)
        .decode(&mut buf)
        .unwrap()
        .expect("one frame");
    assert!(
        matches!(env.frame, Frame::ErrorReply(ref e) if e.code == ErrorCode::HandshakeTimeout as u16),
        "{env:?}"
    );
    assert_eq!(noise_failures(&server, "handshake_timeout"), 1.0);
}

#[test]
fn the_key_file_is_private_and_keys_show_prints_the_pinned_key() {
    let mut server = Server::start();
    let key = server.key.unwrap();
    let file = server.data_dir.join("noise.key");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let shown = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["keys", "show", "--data-dir"])
        .arg(&server.data_dir)
        .output()
        .unwrap();
    assert!(shown.status.success(), "{shown:?}");
    let shown = PublicKey::parse(&String::from_utf8_lossy(&shown.stdout), "keys show").unwrap();
    assert_eq!(shown, key);
    // The key survives a restart: pinned clients go on connecting.
    server.restart();
    assert_eq!(server.key, Some(key));
    server.connect().hello();
    // A key file others may read is refused at start, with the fix.
    server.stop();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let refused = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&server.data_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("mode 0644") && stderr.contains("chmod 600"),
        "{stderr}"
    );
}

#[test]
fn the_client_library_pins_the_key_or_learns_it_and_refuses_another() {
    use courier_client::{Client, ClientConfig, Error};
    let server = Server::start();
    let key = server.key.unwrap();
    let pinned = Client::connect(server.addr, ClientConfig::default().with_server_key(key))
        .expect("the pinned key is the server's");
    pinned.register("erin", PASSWORD).unwrap();
    assert_eq!(pinned.server_key().unwrap(), Some(key));
    let learned = Client::connect(
        server.addr,
        ClientConfig::default().with_encryption(Encryption::TrustOnFirstUse),
    )
    .unwrap();
    assert_eq!(learned.server_key().unwrap(), Some(key));
    let wrong = Keypair::from_private([0x99; 32]).public();
    match Client::connect(server.addr, ClientConfig::default().with_server_key(wrong)) {
        Err(e @ Error::Encryption(CloseReason::ServerKeyMismatch { .. })) => {
            assert!(e.to_string().contains("do not connect"), "{e}")
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a client pinned to another key connected"),
    }
    match Client::connect(server.addr, ClientConfig::default()) {
        Err(e) => assert_eq!(e.code(), Some(ErrorCode::EncryptionRequired), "{e}"),
        Ok(_) => panic!("a plaintext client connected to an encrypted server"),
    }
}

#[test]
fn the_load_generator_chats_encrypted_and_loses_nothing() {
    use clap::Parser;
    let mut server = Server::start_with(&["--rate-limit", "100000"]);
    let users = server.provision(40);
    let mut args = vec![
        "courier-loadgen".to_string(),
        "--quiet".into(),
        "--in-process".into(),
        "--server".into(),
        server.addr.to_string(),
        "--settle-secs".into(),
        "3".into(),
        "--users".into(),
        users.display().to_string(),
    ];
    args.extend(server.client_args());
    args.extend(["chat", "--pairs", "20", "--window", "4", "--duration", "2"].map(String::from));
    let r = courier_loadgen::run(&courier_loadgen::Cli::try_parse_from(args).unwrap()).unwrap();
    assert_eq!(
        (r.lost, r.duplicates, r.connect_failures),
        (0, 0, 0),
        "{r:#?}"
    );
    assert!(r.passed && r.acked > 0, "{r:#?}");
    // Without a key or --insecure-plaintext the load generator says how to get one.
    let no_key = courier_loadgen::Cli::try_parse_from([
        "courier-loadgen",
        "--server",
        &server.addr.to_string(),
        "--users",
        &users.display().to_string(),
        "chat",
        "--pairs",
        "1",
    ])
    .unwrap();
    let err = courier_loadgen::run(&no_key).unwrap_err().to_string();
    assert!(
        err.contains("--server-key") && err.contains("courier keys show"),
        "{err}"
    );
}
