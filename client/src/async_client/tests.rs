//! The async client against the fake server: handshake, auth, replies, pushes, heartbeat,
//! reconnect, redirects; the same cases as the blocking client's `client_tests.rs`.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use courier_fake::FakeServer;
use courier_protocol::{
    ErrorCode, ErrorReply, Frame, Message, MessageKind, ReceiptKind, ReceiptPush,
};

use crate::{AsyncClient, BackoffPolicy, ClientConfig, Error, Event};

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

async fn registered(server: &FakeServer, config: ClientConfig) -> AsyncClient {
    let client = AsyncClient::connect(server.addr, config).await.unwrap();
    client.register("alice", "password1").await.unwrap();
    client
}

async fn next_message(client: &AsyncClient) -> Option<Message> {
    let deadline = Instant::now() + WAIT;
    while let Some(event) = client
        .recv_event_timeout(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        if let Event::Message(m) = event {
            return Some(m);
        }
    }
    None
}

async fn wait_for(client: &AsyncClient, want: impl Fn(&Event) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while let Some(event) = client
        .recv_event_timeout(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        let done = want(&event);
        seen.push(event);
        if done {
            return seen;
        }
    }
    panic!("event not seen; got {seen:?}");
}

#[tokio::test]
async fn register_login_and_bad_password() {
    let server = FakeServer::start();
    let alice = AsyncClient::connect(server.addr, ClientConfig::default())
        .await
        .unwrap();
    let auth = alice.register("alice", "password1").await.unwrap();
    assert_eq!(alice.user_id(), Some(auth.user));
    assert_eq!(alice.token(), Some(auth.token.to_vec()));
    assert_eq!(alice.welcome().unwrap().node, "fake");

    let again = AsyncClient::connect(server.addr, ClientConfig::default())
        .await
        .unwrap();
    let err = again.login("alice", "wrong-password").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadCredentials), "{err}");
    assert!(
        again.login("alice", "password1").await.is_ok(),
        "the connection survives a refused login"
    );
    let taken = again.register("alice", "password1").await.unwrap_err();
    assert_eq!(taken.code(), Some(ErrorCode::HandleTaken));

    // The saved token logs a third connection in without the password.
    let third = AsyncClient::connect(server.addr, ClientConfig::default())
        .await
        .unwrap();
    assert_eq!(third.resume(&auth.token).await.unwrap().user, auth.user);
}

#[tokio::test]
async fn a_refused_handshake_and_another_version_fail_connect() {
    let server = FakeServer::start();
    server.behave(|b| b.refuse_hello = Some(ErrorCode::ServerFull));
    let err = AsyncClient::connect(server.addr, ClientConfig::default())
        .await
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
    let err = AsyncClient::connect(server.addr, ClientConfig::default())
        .await
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
}

#[tokio::test]
async fn unreachable_names_the_address() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let err = AsyncClient::connect(&addr, ClientConfig::default())
        .await
        .err()
        .expect("nothing listens there");
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&addr), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_are_matched_by_request_id_across_tasks() {
    let server = FakeServer::start();
    let client = std::sync::Arc::new(registered(&server, ClientConfig::default()).await);
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let client = std::sync::Arc::clone(&client);
            tokio::spawn(async move {
                for i in 0..20 {
                    let sent = client
                        .send_text(100 + t, &format!("{t}-{i}"))
                        .await
                        .unwrap();
                    assert_eq!(sent.thread, 100 + t);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(server.messages().len(), 160);
}

#[tokio::test]
async fn pushes_become_events_and_unanswered_requests_time_out() {
    let server = FakeServer::start();
    let config = ClientConfig::default().with_request_timeout(Duration::from_millis(200));
    let client = registered(&server, config).await;
    let me = client.user_id().unwrap();
    let pushed = server.inject(1, 99, "hi");
    assert_eq!(next_message(&client).await, Some(pushed));
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
    })
    .await;

    server.behave(|b| b.ignore_contact_list = true);
    let err = client.contacts().await.unwrap_err();
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
    assert_eq!(client.lookup_user("alice").await.unwrap().id, me);
    let unknown = client.lookup_user("nobody").await.unwrap_err();
    assert_eq!(unknown.code(), Some(ErrorCode::UnknownUser));
}

#[tokio::test]
async fn heartbeat_pings_at_the_announced_interval() {
    let server = FakeServer::with_heartbeat(1);
    let _client = registered(&server, ClientConfig::default()).await;
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert!(server.pings() >= 2, "pings: {}", server.pings());
}

#[tokio::test]
async fn a_server_silent_for_three_heartbeats_is_given_up() {
    let server = FakeServer::with_heartbeat(1);
    let client = registered(&server, ClientConfig::default()).await;
    let silent_from = Instant::now();
    server.behave(|b| b.ignore_pings = true);
    let events = wait_for(&client, |e| matches!(e, Event::SessionEnded { .. })).await;
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
        client.send_text(1, "x").await,
        Err(Error::Disconnected { reason: None })
    ));
}

#[tokio::test]
async fn reconnect_resumes_and_syncs_without_loss_or_duplicates() {
    let server = FakeServer::start();
    server.behave(|b| b.sync_page = Some(2));
    let before = server.store_only(1, 99, "before login");
    let client = registered(&server, fast_reconnect()).await;
    // Sync starts at the login's watermark: history is not replayed as events.
    assert_eq!(client.watermark(), Some(before.id));

    let live = server.inject(1, 99, "pushed while connected");
    assert_eq!(next_message(&client).await, Some(live));

    server.drop_connections();
    let missed: Vec<_> = (0..5)
        .map(|i| server.store_only(1 + i % 2, 99, &format!("missed {i}")))
        .collect();

    let events = wait_for(&client, |e| matches!(e, Event::Reconnected { .. })).await;
    assert!(
        matches!(events[0], Event::Disconnected { reason: None }),
        "{events:?}"
    );
    let mut got: Vec<_> = events
        .into_iter()
        .filter_map(|e| match e {
            Event::Message(m) => Some(m),
            _ => None,
        })
        .collect();
    got.sort_by_key(|m| m.id);
    assert_eq!(
        got, missed,
        "every missed message once; the pushed one not again"
    );
    assert!(server.resumes() >= 1);
    assert_eq!(client.watermark(), Some(missed.last().unwrap().id));

    let after = server.inject(2, 99, "after");
    assert_eq!(next_message(&client).await, Some(after));
    assert!(
        client
            .recv_event_timeout(Duration::from_millis(200))
            .await
            .is_none(),
        "nothing extra"
    );
}

#[tokio::test]
async fn a_push_right_behind_auth_ok_waits_for_the_backlog_of_the_resume() {
    let server = FakeServer::start();
    let client = registered(&server, fast_reconnect()).await;
    // Stored, not pushed: the backlog the resume's SYNC brings.
    let missed = server.store_only(1, 99, "missed");
    server.behave(|b| b.push_on_resume = Some("live".into()));
    server.drop_connections();
    let events = wait_for(&client, |e| matches!(e, Event::Reconnected { .. })).await;
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

#[tokio::test]
async fn send_with_retry_uses_the_same_client_msg_id() {
    let server = FakeServer::start();
    let client = registered(&server, fast_reconnect()).await;
    server.behave(|b| b.drop_on_next_send = true);
    let sent = client
        .send_with_retry(7, MessageKind::Text, &b"once"[..], WAIT)
        .await
        .unwrap();
    let stored = server.messages();
    assert_eq!(stored.len(), 1, "stored once: {stored:?}");
    assert_eq!(stored[0].id, sent.message);
    assert_eq!(stored[0].client_msg_id, sent.client_msg_id);
}

#[tokio::test]
async fn login_follows_a_redirect() {
    let home = FakeServer::start();
    let front = FakeServer::start();
    // The account exists on its home node only.
    registered(&home, ClientConfig::default()).await;
    front.behave(|b| b.redirect_to = Some(home.addr.to_string()));
    let client = AsyncClient::connect(front.addr, ClientConfig::default())
        .await
        .unwrap();
    client.login("alice", "password1").await.unwrap();
    assert_eq!(client.server_addr(), home.addr.to_string());
    assert!(client.send_text(1, "hi from home").await.is_ok());
}

#[tokio::test]
async fn reconnect_follows_a_redirect() {
    let home = FakeServer::start();
    let front = FakeServer::start();
    let client = registered(&front, fast_reconnect()).await;
    // The home node accepts the same token (derived from the user id in the fake).
    let at_home = registered(&home, ClientConfig::default()).await;
    assert_eq!(at_home.token(), client.token());

    front.behave(|b| b.redirect_to = Some(home.addr.to_string()));
    front.drop_connections();
    wait_for(
        &client,
        |e| matches!(e, Event::Reconnected { addr } if *addr == home.addr.to_string()),
    )
    .await;
    assert_eq!(client.server_addr(), home.addr.to_string());
    assert!(client.send_text(1, "hi from home").await.is_ok());
}

#[tokio::test]
async fn revoked_session_ends_without_reconnect() {
    let server = FakeServer::start();
    let client = registered(&server, fast_reconnect()).await;
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
    })
    .await;
    assert!(client.recv_event().await.is_none(), "the stream ends");
    let err = client.send_text(1, "x").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::SessionRevoked), "{err}");
}

#[tokio::test]
async fn without_reconnect_a_drop_ends_the_event_stream() {
    let server = FakeServer::start();
    let client = registered(&server, ClientConfig::default()).await;
    server.drop_connections();
    let mut events = Vec::new();
    while let Some(event) = client.recv_event().await {
        events.push(event);
    }
    assert_eq!(
        events,
        vec![
            Event::Disconnected { reason: None },
            Event::SessionEnded { reason: None }
        ]
    );
    assert!(matches!(
        client.send_text(1, "x").await,
        Err(Error::Disconnected { .. })
    ));
}

#[tokio::test]
async fn manual_sync_drains_pages() {
    let server = FakeServer::start();
    server.behave(|b| b.sync_page = Some(2));
    let stored: Vec<_> = (0..5)
        .map(|i| server.store_only(1 + i % 3, 99, "m"))
        .collect();
    let client = registered(&server, ClientConfig::default()).await;
    // Sync starts at the login: nothing new yet. From 0 it is everything, in pages.
    assert!(client.sync().await.unwrap().messages.is_empty());
    let result = client.sync_since(0).await.unwrap();
    assert_eq!(result.messages.len(), 5);
    assert_eq!(result.watermark, stored.last().unwrap().id);
    assert_eq!(client.watermark(), Some(result.watermark));
    assert!(client.sync().await.unwrap().messages.is_empty());
}

#[tokio::test]
async fn close_ends_the_stream_and_refuses_requests() {
    let server = FakeServer::start();
    let client = registered(&server, fast_reconnect()).await;
    client.close();
    assert_eq!(
        client.recv_event().await,
        Some(Event::SessionEnded { reason: None })
    );
    assert!(client.recv_event().await.is_none());
    assert!(!client.wait_connected(Duration::from_millis(100)).await);
    assert!(matches!(
        client.lookup_user("alice").await,
        Err(Error::Disconnected { .. })
    ));
}
