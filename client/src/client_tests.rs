//! The client against the fake server: handshake, auth, replies, pushes, reconnect.

use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

use courier_protocol::{ErrorCode, ErrorReply, Frame, MessageKind, ReceiptKind, ReceiptPush};

use crate::{BackoffPolicy, Client, ClientConfig, Error, Event};
use courier_fake::FakeServer;

const WAIT: Duration = Duration::from_secs(5);

fn fast_reconnect() -> ClientConfig {
    ClientConfig {
        backoff: BackoffPolicy {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(100),
            ..BackoffPolicy::default()
        },
        ..ClientConfig::reconnecting()
    }
}

/// The next event that is not about the connection itself.
fn next_message(client: &Client) -> Option<courier_protocol::Message> {
    let deadline = Instant::now() + WAIT;
    while let Some(event) =
        client.recv_event_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        if let Event::Message(m) = event {
            return Some(m);
        }
    }
    None
}

fn wait_for(client: &Client, want: impl Fn(&Event) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while let Some(event) =
        client.recv_event_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        let done = want(&event);
        seen.push(event);
        if done {
            return seen;
        }
    }
    panic!("event not seen; got {seen:?}");
}

#[test]
fn register_login_and_bad_password() {
    let server = FakeServer::start();
    let alice = Client::connect(server.addr, ClientConfig::default()).unwrap();
    let auth = alice.register("alice", "password1").unwrap();
    assert_eq!(alice.user_id(), Some(auth.user));
    assert_eq!(alice.welcome().unwrap().node, "fake");

    let again = Client::connect(server.addr, ClientConfig::default()).unwrap();
    let err = again.login("alice", "wrong-password").unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadCredentials), "{err}");
    assert!(
        again.login("alice", "password1").is_ok(),
        "the connection survives a refused login"
    );
    let taken = again.register("alice", "password1").unwrap_err();
    assert_eq!(taken.code(), Some(ErrorCode::HandleTaken));
}

#[test]
fn a_refused_handshake_and_another_version_fail_connect() {
    let server = FakeServer::start();
    server.behave(|b| b.refuse_hello = Some(ErrorCode::ServerFull));
    let err = Client::connect(server.addr, ClientConfig::default())
        .err()
        .expect("HELLO refused");
    assert!(
        matches!(
            err,
            Error::Server {
                code: ErrorCode::ServerFull,
                ..
            }
        ),
        "{err:?}"
    );
    server.behave(|b| {
        b.refuse_hello = None;
        b.welcome_version = Some(2);
    });
    let err = Client::connect(server.addr, ClientConfig::default())
        .err()
        .expect("version 2 refused");
    assert!(
        matches!(
            err,
            Error::VersionMismatch {
                server: 2,
                client: 1
            }
        ),
        "{err:?}"
    );
    server.behave(|b| b.welcome_version = None);
    assert!(Client::connect(server.addr, ClientConfig::default()).is_ok());
}

#[test]
fn unreachable_names_the_address() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let err = Client::connect(&addr, ClientConfig::default())
        .err()
        .expect("nothing listens there");
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&addr) && text.contains("courier serve"),
        "{text}"
    );
}

#[test]
fn replies_are_matched_by_request_id_across_threads() {
    let server = FakeServer::start();
    let client = Client::connect(server.addr, ClientConfig::default()).unwrap();
    client.register("alice", "password1").unwrap();
    thread::scope(|s| {
        for t in 0..8u64 {
            let client = &client;
            s.spawn(move || {
                for i in 0..20 {
                    let text = format!("{t}-{i}");
                    let sent = client.send_text(100 + t, &text).unwrap();
                    assert_eq!(sent.thread, 100 + t);
                }
            });
        }
    });
    assert_eq!(server.messages().len(), 160);
}

#[test]
fn pushes_become_events_and_unanswered_requests_time_out() {
    let server = FakeServer::start();
    let config = ClientConfig::default().with_request_timeout(Duration::from_millis(200));
    let client = Client::connect(server.addr, config).unwrap();
    let me = client.register("alice", "password1").unwrap().user;
    let pushed = server.inject(1, 99, "hi");
    assert_eq!(next_message(&client), Some(pushed));
    server.push_all(
        ReceiptPush {
            thread: 1,
            user: 99,
            kind: ReceiptKind::Read,
            up_to: 5,
        }
        .into(),
    );
    wait_for(&client, |e| {
        matches!(
            e,
            Event::Receipt {
                user: 99,
                kind: ReceiptKind::Read,
                up_to: 5,
                ..
            }
        )
    });

    server.behave(|b| b.ignore_contact_list = true);
    let err = client.contacts().unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                request: "ContactList",
                ..
            }
        ),
        "{err:?}"
    );
    // A late reply to the abandoned request must not confuse the next one.
    assert_eq!(client.lookup_user("alice").unwrap().id, me);
    let unknown = client.lookup_user("nobody").unwrap_err();
    assert_eq!(unknown.code(), Some(ErrorCode::UnknownUser));
}

#[test]
fn heartbeat_pings_at_the_announced_interval() {
    let server = FakeServer::with_heartbeat(1);
    let client = Client::connect(server.addr, ClientConfig::default()).unwrap();
    client.register("alice", "password1").unwrap();
    thread::sleep(Duration::from_millis(2300));
    assert!(server.pings() >= 2, "pings: {}", server.pings());
}

#[test]
fn a_server_silent_for_three_heartbeats_is_given_up() {
    let server = FakeServer::with_heartbeat(1);
    let client = Client::connect(server.addr, ClientConfig::default()).unwrap();
    client.register("alice", "password1").unwrap();
    let silent_from = Instant::now();
    server.behave(|b| b.ignore_pings = true);
    let events = wait_for(&client, |e| matches!(e, Event::SessionEnded { .. }));
    let after = silent_from.elapsed();
    assert_eq!(
        events,
        [
            Event::Disconnected { reason: None },
            Event::SessionEnded { reason: None }
        ]
    );
    // The AUTH_OK was the last thing heard; dead three one-second intervals later.
    assert!(
        after >= Duration::from_millis(2500) && after < Duration::from_millis(4500),
        "given up after {after:?}"
    );
    assert!(matches!(
        client.send_text(1, "x"),
        Err(Error::Disconnected { reason: None })
    ));
}

#[test]
fn reconnect_resumes_and_syncs_without_loss_or_duplicates() {
    let server = FakeServer::start();
    server.behave(|b| b.sync_page = Some(2));
    let before = server.store_only(1, 99, "before login");
    let client = Client::connect(server.addr, fast_reconnect()).unwrap();
    client.register("alice", "password1").unwrap();
    // Sync starts at the login's watermark: history is not replayed as events.
    assert_eq!(client.watermark(), Some(before.id));

    let live = server.inject(1, 99, "pushed while connected");
    assert_eq!(next_message(&client), Some(live.clone()));

    server.drop_connections();
    let missed: Vec<_> = (0..5)
        .map(|i| server.store_only(1 + i % 2, 99, &format!("missed {i}")))
        .collect();

    let events = wait_for(&client, |e| matches!(e, Event::Reconnected { .. }));
    assert!(
        matches!(events[0], Event::Disconnected { reason: None }),
        "{events:?}"
    );
    let mut got: Vec<_> = events
        .into_iter()
        .filter_map(|e| {
            if let Event::Message(m) = e {
                Some(m)
            } else {
                None
            }
        })
        .collect();
    got.sort_by_key(|m| m.id);
    assert_eq!(
        got, missed,
        "every missed message once; the pushed one not again"
    );
    assert!(server.resumes() >= 1);
    assert_eq!(client.watermark(), Some(missed.last().unwrap().id));

    // And the connection works afterwards.
    let after = server.inject(2, 99, "after");
    assert_eq!(next_message(&client), Some(after));
    assert!(
        client
            .recv_event_timeout(Duration::from_millis(200))
            .is_none(),
        "nothing extra"
    );
}

#[test]
fn a_push_right_behind_auth_ok_waits_for_the_backlog_of_the_resume() {
    let server = FakeServer::start();
    let client = Client::connect(server.addr, fast_reconnect()).unwrap();
    client.register("alice", "password1").unwrap();
    // Stored, not pushed: the backlog the resume's SYNC brings.
    let missed = server.store_only(1, 99, "missed");
    server.behave(|b| b.push_on_resume = Some("live".into()));
    server.drop_connections();
    let events = wait_for(&client, |e| matches!(e, Event::Reconnected { .. }));
    let texts: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(String::from_utf8_lossy(&m.body).into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(
        texts,
        ["missed", "live"],
        "backlog first, once each: {events:?}"
    );
    assert_eq!(client.watermark(), Some(missed.id + 1));
}

#[test]
fn pushes_past_the_held_bound_during_a_catch_up_come_from_another_sync_once_each() {
    let server = FakeServer::start();
    let config = ClientConfig {
        max_held_pushes: 2,
        ..fast_reconnect()
    };
    let client = Client::connect(server.addr, config).unwrap();
    // Five messages are sent while the login's catch-up SYNC runs: above the watermark it
    // saves, pushed before its reply, so three overflow the two held pushes.
    server.behave(|b| b.push_during_sync = 5);
    client.register("alice", "password1").unwrap();
    let stored = server.messages();
    assert_eq!(stored.len(), 5);
    let mut got = Vec::new();
    while let Some(event) = client.recv_event_timeout(Duration::from_millis(300)) {
        if let Event::Message(m) = event {
            got.push(m);
        }
    }
    assert_eq!(got, stored, "each once, in order, none lost");
    assert_eq!(client.watermark(), Some(stored.last().unwrap().id));
}

#[test]
fn send_with_retry_uses_the_same_client_msg_id() {
    let server = FakeServer::start();
    let client = Client::connect(server.addr, fast_reconnect()).unwrap();
    client.register("alice", "password1").unwrap();
    server.behave(|b| b.drop_on_next_send = true);
    let sent = client
        .send_with_retry(7, MessageKind::Text, &b"once"[..], WAIT)
        .unwrap();
    let stored = server.messages();
    assert_eq!(stored.len(), 1, "stored once: {stored:?}");
    assert_eq!(stored[0].id, sent.message);
    assert_eq!(stored[0].client_msg_id, sent.client_msg_id);
}

#[test]
fn broken_socket_reconnects_and_requests_work_again() {
    let server = FakeServer::start();
    let client = Client::connect(server.addr, fast_reconnect()).unwrap();
    client.register("alice", "password1").unwrap();
    client.break_connection();
    wait_for(&client, |e| matches!(e, Event::Reconnected { .. }));
    assert!(client.send_text(1, "still here").is_ok());
}

#[test]
fn login_follows_a_redirect() {
    let home = FakeServer::start();
    let front = FakeServer::start();
    // The account exists on its home node only.
    Client::connect(home.addr, ClientConfig::default())
        .unwrap()
        .register("alice", "password1")
        .unwrap();
    front.behave(|b| b.redirect_to = Some(home.addr.to_string()));
    let client = Client::connect(front.addr, ClientConfig::default()).unwrap();
    client.login("alice", "password1").unwrap();
    assert_eq!(client.server_addr(), home.addr.to_string());
    assert!(client.send_text(1, "hi from home").is_ok());
}

#[test]
fn a_redirect_loop_names_the_last_node_and_address() {
    let front = FakeServer::start();
    // The node sends the user to itself, again and again.
    front.behave(|b| b.redirect_to = Some(front.addr.to_string()));
    let client = Client::connect(front.addr, ClientConfig::default()).unwrap();
    let err = client.login("alice", "password1").unwrap_err();
    match &err {
        Error::TooManyRedirects { node, addr } => {
            assert_eq!(node, "other");
            assert_eq!(*addr, front.addr.to_string());
        }
        other => panic!("not TooManyRedirects: {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.contains(&format!("node \"other\" at {}", front.addr)) && text.contains("--peer"),
        "{text}"
    );
}

#[test]
fn reconnect_follows_a_redirect() {
    let home = FakeServer::start();
    let front = FakeServer::start();
    let client = Client::connect(front.addr, fast_reconnect()).unwrap();
    let auth = client.register("alice", "password1").unwrap();
    // Make the home node accept the token (it is derived from the user id in the fake).
    let home_client = Client::connect(home.addr, ClientConfig::default()).unwrap();
    assert_eq!(
        home_client.register("alice", "password1").unwrap().token,
        auth.token
    );

    front.behave(|b| b.redirect_to = Some(home.addr.to_string()));
    front.drop_connections();
    wait_for(
        &client,
        |e| matches!(e, Event::Reconnected { addr } if *addr == home.addr.to_string()),
    );
    assert_eq!(client.server_addr(), home.addr.to_string());
}

#[test]
fn revoked_session_ends_without_reconnect() {
    let server = FakeServer::start();
    let client = Client::connect(server.addr, fast_reconnect()).unwrap();
    client.register("alice", "password1").unwrap();
    server.push_all(Frame::ErrorReply(ErrorReply {
        code: ErrorCode::SessionRevoked as u16,
        message: "revoked".into(),
    }));
    server.drop_connections();
    wait_for(&client, |e| {
        matches!(
            e,
            Event::SessionEnded {
                reason: Some(ErrorCode::SessionRevoked)
            }
        )
    });
    assert!(client.events().next().is_none(), "the stream ends");
    let err = client.send_text(1, "x").unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::SessionRevoked), "{err}");
}

#[test]
fn without_reconnect_a_drop_ends_the_event_stream() {
    let server = FakeServer::start();
    let client = Client::connect(server.addr, ClientConfig::default()).unwrap();
    client.register("alice", "password1").unwrap();
    server.drop_connections();
    let events: Vec<_> = client.events().collect();
    assert_eq!(
        events,
        vec![
            Event::Disconnected { reason: None },
            Event::SessionEnded { reason: None }
        ]
    );
    assert!(matches!(
        client.send_text(1, "x"),
        Err(Error::Disconnected { .. })
    ));
}

#[test]
fn manual_sync_drains_pages() {
    let server = FakeServer::start();
    server.behave(|b| b.sync_page = Some(2));
    let stored: Vec<_> = (0..5)
        .map(|i| server.store_only(1 + i % 3, 99, "m"))
        .collect();
    let client = Client::connect(server.addr, ClientConfig::default()).unwrap();
    client.register("alice", "password1").unwrap();
    // Sync starts at the login: nothing new yet. From 0 it is everything, in pages.
    assert!(client.sync().unwrap().messages.is_empty());
    let result = client.sync_since(0).unwrap();
    assert_eq!(result.messages.len(), 5);
    assert_eq!(result.watermark, stored.last().unwrap().id);
    assert_eq!(client.watermark(), Some(result.watermark));
    assert!(client.sync().unwrap().messages.is_empty());
}

/// The same client over the encrypted transport: the pinned key, pushes and a reconnect (a
/// new handshake, then RESUME) all go through records; another key is refused.
#[test]
fn the_client_pins_the_servers_key_and_reconnects_encrypted() {
    let server = FakeServer::encrypted();
    let key = server.key.expect("an encrypted fake has a key");
    let alice = Client::connect(server.addr, fast_reconnect().with_server_key(key)).unwrap();
    assert_eq!(alice.server_key().unwrap(), Some(key));
    alice.register("alice", "password1").unwrap();
    server.inject(1, 99, "sealed");
    assert_eq!(next_message(&alice).map(|m| m.body), Some("sealed".into()));
    server.drop_connections();
    wait_for(&alice, |e| matches!(e, Event::Reconnected { .. }));
    server.inject(1, 99, "after the reconnect");
    assert_eq!(
        next_message(&alice).map(|m| m.body),
        Some("after the reconnect".into())
    );
    let wrong = courier_protocol::noise::Keypair::from_private([0x99; 32]).public();
    match Client::connect(server.addr, ClientConfig::default().with_server_key(wrong)) {
        Err(Error::Encryption(reason)) => {
            assert!(reason.to_string().contains("do not connect"), "{reason}")
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a client pinned to another key connected"),
    }
}

/// A client pinned to the first node's key is sent to another node: it pins the key the
/// REDIRECT names for that node (one round trip, IK), logs in there, and its reconnects keep
/// that key. A REDIRECT naming a key the node does not hold is refused there, with the keys.
#[test]
fn a_redirect_is_followed_pinning_the_key_it_names() {
    let home = FakeServer::encrypted();
    let front = FakeServer::encrypted();
    let (home_key, front_key) = (home.key.unwrap(), front.key.unwrap());
    // The account exists on its home node only.
    Client::connect(home.addr, ClientConfig::default().with_server_key(home_key))
        .unwrap()
        .register("alice", "password1")
        .unwrap();
    front.behave(|b| {
        b.redirect_to = Some(home.addr.to_string());
        b.redirect_key = Some(home_key);
    });
    let client = Client::connect(front.addr, fast_reconnect().with_server_key(front_key)).unwrap();
    client.login("alice", "password1").unwrap();
    assert_eq!(client.server_addr(), home.addr.to_string());
    assert_eq!(client.server_key().unwrap(), Some(home_key));
    assert_eq!(
        home.handshakes(),
        (0, 2),
        "IK with the key the REDIRECT named"
    );
    home.drop_connections();
    wait_for(
        &client,
        |e| matches!(e, Event::Reconnected { addr } if *addr == home.addr.to_string()),
    );
    assert_eq!(client.server_key().unwrap(), Some(home_key));
    assert_eq!(home.handshakes(), (0, 3), "the reconnect pins the same key");

    // A REDIRECT that names another key than the node's: the client keeps to the key it was
    // given, and the node refuses the handshake.
    let wrong = courier_protocol::noise::Keypair::from_private([0x99; 32]).public();
    front.behave(|b| b.redirect_key = Some(wrong));
    let client = Client::connect(
        front.addr,
        ClientConfig::default().with_server_key(front_key),
    )
    .unwrap();
    match client.login("alice", "password1") {
        Err(Error::Encryption(reason)) => {
            assert!(reason.to_string().contains(&wrong.to_string()), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

/// Trust on first use learns the key with XX, then the reconnects pin it (IK): a server that
/// changed its key meanwhile would be refused, not trusted again.
#[test]
fn trust_on_first_use_pins_the_learned_key_for_reconnects() {
    use courier_protocol::session::Encryption;
    let server = FakeServer::encrypted();
    let config = fast_reconnect().with_encryption(Encryption::TrustOnFirstUse);
    let alice = Client::connect(server.addr, config).unwrap();
    assert_eq!(alice.server_key().unwrap(), server.key);
    alice.register("alice", "password1").unwrap();
    assert_eq!(server.handshakes(), (1, 0), "first contact: XX");
    server.drop_connections();
    wait_for(&alice, |e| matches!(e, Event::Reconnected { .. }));
    assert_eq!(
        server.handshakes(),
        (1, 1),
        "the reconnect: IK with the learned key"
    );
}
