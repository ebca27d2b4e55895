//! The tokio front end (`AsyncClient`) against a real server: chat with receipts, groups and
//! errors, contacts, presence and media, reconnect across a cut, logout. The blocking client's
//! twins are in `tests/client.rs`.

mod util;

use std::time::{Duration, Instant};

use courier_client::protocol::session::Encryption;
use courier_client::protocol::Direction;
use courier_client::{
    AsyncClient, BackoffPolicy, ClientConfig, ErrorCode, Event, Message, MessageKind, ReceiptKind,
};
use util::proxy::Proxy;

const WAIT: Duration = Duration::from_secs(10);

/// Reconnects fast; pins the key of the server the test started (`Server::encryption`).
fn config(encryption: Encryption) -> ClientConfig {
    ClientConfig {
        encryption,
        backoff: BackoffPolicy {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(500),
            ..BackoffPolicy::default()
        },
        ..ClientConfig::reconnecting()
    }
}

async fn user(addr: impl std::fmt::Display, encryption: Encryption, handle: &str) -> AsyncClient {
    let client = AsyncClient::connect(addr, config(encryption))
        .await
        .expect("connect");
    client
        .register(handle, "correct-horse-battery")
        .await
        .expect("register");
    client
}

async fn next_message(client: &AsyncClient) -> Message {
    let deadline = Instant::now() + WAIT;
    while let Some(event) = client
        .recv_event_timeout(deadline.saturating_duration_since(Instant::now()))
        .await
    {
        if let Event::Message(m) = event {
            if m.kind != MessageKind::System {
                return m;
            }
        }
    }
    panic!("no message within {WAIT:?}");
}

async fn wait_event(client: &AsyncClient, want: impl Fn(&Event) -> bool) -> Vec<Event> {
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
    panic!("expected event not seen; got {seen:?}");
}

#[tokio::test]
async fn async_two_users_chat_with_receipts() {
    let server = util::Server::start();
    let alice = user(server.addr, server.encryption(), "alice").await;
    let bob = user(server.addr, server.encryption(), "bob").await;
    let bob_id = alice.lookup_user("bob").await.unwrap().id;
    let thread = alice.open_direct(bob_id).await.unwrap();

    let sent = alice.send_text(thread.id, "hello bob").await.unwrap();
    let got = next_message(&bob).await;
    assert_eq!(
        (got.id, got.sender, &got.body[..]),
        (sent.message, alice.user_id().unwrap(), &b"hello bob"[..])
    );

    bob.receipt(thread.id, ReceiptKind::Read, got.id)
        .await
        .unwrap();
    wait_event(
        &alice,
        |e| matches!(e, Event::Receipt { user, kind: ReceiptKind::Read, up_to, .. } if *user == bob_id && *up_to >= sent.message),
    )
    .await;
    let readers = alice.readers(thread.id, sent.message).await.unwrap();
    assert!(readers.read.contains(&bob_id));

    let reply = bob.send_text(thread.id, "hi alice").await.unwrap();
    assert_eq!(next_message(&alice).await.id, reply.message);
    let history = alice
        .history(thread.id, 0, Direction::Backward, 10)
        .await
        .unwrap();
    let ids: Vec<u64> = history
        .messages
        .iter()
        .filter(|m| m.kind != MessageKind::System)
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, vec![reply.message, sent.message], "newest first");
    let threads = alice.list_all_threads().await.unwrap();
    assert_eq!(
        threads.iter().map(|t| t.id).collect::<Vec<_>>(),
        [thread.id]
    );
    server.stop();
}

#[tokio::test]
async fn async_groups_contacts_presence_and_media() {
    let server = util::Server::start();
    let alice = user(server.addr, server.encryption(), "alice").await;
    let bob = user(server.addr, server.encryption(), "bob").await;
    let carol = user(server.addr, server.encryption(), "carol").await;
    let (bob_id, carol_id) = (bob.user_id().unwrap(), carol.user_id().unwrap());
    let group = alice.create_group("team", &[bob_id]).await.unwrap();
    alice.add_members(group.id, &[carol_id]).await.unwrap();
    let err = bob.remove_member(group.id, carol_id).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotAdmin));
    let sent = alice.send_text(group.id, "to the team").await.unwrap();
    assert_eq!(next_message(&bob).await.id, sent.message);
    assert_eq!(
        alice.admin_stats().await.unwrap_err().code(),
        Some(ErrorCode::Forbidden)
    );

    alice.contact_add(bob_id).await.unwrap();
    let names = alice.users(&[bob_id]).await.unwrap();
    assert_eq!(names[0].handle, "bob");
    alice.presence_subscribe(&[bob_id]).await.unwrap();
    assert!(alice.presence_query(&[bob_id]).await.unwrap()[0].online);
    drop(bob);
    wait_event(
        &alice,
        |e| matches!(e, Event::Presence(p) if p.user == bob_id && !p.online),
    )
    .await;

    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let media = alice
        .upload_media("application/octet-stream", &data)
        .await
        .unwrap();
    assert_eq!(media.total_len, data.len() as u64);
    assert_eq!(alice.download_media(&media.media, 0).await.unwrap(), data);
    server.stop();
}

#[tokio::test]
async fn async_reconnect_loses_nothing_and_shows_nothing_twice() {
    let server = util::Server::start();
    let proxy = Proxy::start(server.addr);
    let alice = user(server.addr, server.encryption(), "alice").await;
    let bob = user(proxy.addr, server.encryption(), "bob").await;
    let thread = alice.open_direct(bob.user_id().unwrap()).await.unwrap();

    let first = alice.send_text(thread.id, "before the cut").await.unwrap();
    assert_eq!(next_message(&bob).await.id, first.message);

    proxy.cut();
    proxy.refuse(true);
    let mut missed = Vec::new();
    for i in 0..10 {
        let text = format!("during {i}");
        missed.push(alice.send_text(thread.id, &text).await.unwrap().message);
    }
    proxy.refuse(false);

    let events = wait_event(&bob, |e| matches!(e, Event::Reconnected { .. })).await;
    let mut got: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) if m.kind != MessageKind::System => Some(m.id),
            _ => None,
        })
        .collect();
    // Anything pushed right after the reconnect counts too.
    while got.len() < missed.len() {
        got.push(next_message(&bob).await.id);
    }
    assert_eq!(got, missed, "each missed message exactly once, in order");
    assert!(bob
        .recv_event_timeout(Duration::from_millis(500))
        .await
        .is_none_or(|e| !matches!(e, Event::Message(_))));

    let after = alice.send_text(thread.id, "after").await.unwrap().message;
    assert_eq!(next_message(&bob).await.id, after);
    server.stop();
}

#[tokio::test]
async fn async_logout_ends_the_session_and_the_token() {
    let server = util::Server::start();
    let alice = user(server.addr, server.encryption(), "alice").await;
    let token = alice.token().unwrap();
    alice.logout().await.unwrap();
    wait_event(&alice, |e| matches!(e, Event::SessionEnded { .. })).await;
    let again = AsyncClient::connect(server.addr, config(server.encryption()))
        .await
        .unwrap();
    let err = again.resume(&token).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidToken), "{err}");
    server.stop();
}
