//! Two real users against a real server: chat, receipts, offline catch-up, reconnect.

mod util;

use std::thread;
use std::time::{Duration, Instant};

use courier_client::protocol::Direction;
use courier_client::{
    BackoffPolicy, Client, ClientConfig, ErrorCode, Event, Message, MessageKind, ReceiptKind,
};
use util::proxy::Proxy;

const WAIT: Duration = Duration::from_secs(10);

/// The client library over plain TCP: what these tests check is above the transport;
/// tests/noise.rs runs it encrypted.
const PLAINTEXT: &[&str] = &["--insecure-plaintext"];

fn config() -> ClientConfig {
    ClientConfig {
        backoff: BackoffPolicy {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(500),
            ..BackoffPolicy::default()
        },
        ..ClientConfig::reconnecting()
    }
}

fn user(addr: impl std::fmt::Display, handle: &str) -> Client {
    let client = Client::connect(addr, config()).expect("connect");
    client
        .register(handle, "correct-horse-battery")
        .expect("register");
    client
}

fn next_message(client: &Client) -> Message {
    let deadline = Instant::now() + WAIT;
    while let Some(event) =
        client.recv_event_timeout(deadline.saturating_duration_since(Instant::now()))
    {
        if let Event::Message(m) = event {
            if m.kind != MessageKind::System {
                return m;
            }
        }
    }
    panic!("no message within {WAIT:?}");
}

fn wait_event(client: &Client, want: impl Fn(&Event) -> bool) -> Vec<Event> {
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
    panic!("expected event not seen; got {seen:?}");
}

#[test]
fn two_users_chat_with_receipts() {
    let server = util::Server::start_with(PLAINTEXT);
    let alice = user(server.addr, "alice");
    let bob = user(server.addr, "bob");
    let bob_id = alice.lookup_user("bob").unwrap().id;
    let thread = alice.open_direct(bob_id).unwrap();
    assert_eq!(
        bob.open_direct(alice.user_id().unwrap()).unwrap().id,
        thread.id,
        "one direct thread per pair"
    );

    let sent = alice.send_text(thread.id, "hello bob").unwrap();
    let got = next_message(&bob);
    assert_eq!(
        (got.id, got.sender, &got.body[..]),
        (sent.message, alice.user_id().unwrap(), &b"hello bob"[..])
    );

    bob.receipt(thread.id, ReceiptKind::Delivered, got.id)
        .unwrap();
    wait_event(
        &alice,
        |e| matches!(e, Event::Receipt { user, kind: ReceiptKind::Delivered, up_to, .. } if *user == bob_id && *up_to >= sent.message),
    );
    bob.receipt(thread.id, ReceiptKind::Read, got.id).unwrap();
    wait_event(
        &alice,
        |e| matches!(e, Event::Receipt { user, kind: ReceiptKind::Read, up_to, .. } if *user == bob_id && *up_to >= sent.message),
    );
    let readers = alice.readers(thread.id, sent.message).unwrap();
    assert!(readers.read.contains(&bob_id) && readers.delivered.contains(&bob_id));

    let reply = bob.send_text(thread.id, "hi alice").unwrap();
    assert_eq!(next_message(&alice).id, reply.message);
    let history = alice
        .history(thread.id, 0, Direction::Backward, 10)
        .unwrap();
    let ids: Vec<u64> = history
        .messages
        .iter()
        .filter(|m| m.kind != MessageKind::System)
        .map(|m| m.id)
        .collect();
    assert_eq!(ids, vec![reply.message, sent.message], "newest first");
    server.stop();
}

#[test]
fn offline_user_gets_what_it_missed_through_sync() {
    let server = util::Server::start_with(PLAINTEXT);
    let alice = user(server.addr, "alice");
    let bob = user(server.addr, "bob");
    let bob_id = bob.user_id().unwrap();
    let token = bob.token().unwrap();
    let watermark = bob.watermark().unwrap();
    drop(bob);

    let thread = alice.open_direct(bob_id).unwrap();
    let sent: Vec<u64> = (0..5)
        .map(|i| {
            alice
                .send_text(thread.id, &format!("while away {i}"))
                .unwrap()
                .message
        })
        .collect();

    // Bob comes back with his saved token and watermark: the backlog arrives as events.
    let bob = Client::connect(server.addr, config()).unwrap();
    bob.set_watermark(watermark);
    bob.resume(&token).unwrap();
    let got: Vec<u64> = (0..5).map(|_| next_message(&bob).id).collect();
    assert_eq!(got, sent);
    server.stop();
}

#[test]
fn reconnect_loses_nothing_and_shows_nothing_twice() {
    let server = util::Server::start_with(PLAINTEXT);
    let proxy = Proxy::start(server.addr);
    let alice = user(server.addr, "alice");
    let bob = user(proxy.addr, "bob");
    let thread = alice.open_direct(bob.user_id().unwrap()).unwrap();

    let first = alice
        .send_text(thread.id, "before the cut")
        .unwrap()
        .message;
    assert_eq!(next_message(&bob).id, first);

    proxy.cut();
    proxy.refuse(true);
    let missed: Vec<u64> = (0..10)
        .map(|i| {
            alice
                .send_text(thread.id, &format!("during {i}"))
                .unwrap()
                .message
        })
        .collect();
    proxy.refuse(false);

    let events = wait_event(&bob, |e| matches!(e, Event::Reconnected { .. }));
    let mut got: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            Event::Message(m) if m.kind != MessageKind::System => Some(m.id),
            _ => None,
        })
        .collect();
    // Anything pushed right after the reconnect counts too.
    while got.len() < missed.len() {
        got.push(next_message(&bob).id);
    }
    assert_eq!(got, missed, "each missed message exactly once, in order");
    assert!(bob
        .recv_event_timeout(Duration::from_millis(500))
        .is_none_or(|e| !matches!(e, Event::Message(_))));

    let after = alice.send_text(thread.id, "after").unwrap().message;
    assert_eq!(next_message(&bob).id, after);
    server.stop();
}

#[test]
fn send_with_retry_across_a_cut_stores_once() {
    let server = util::Server::start_with(PLAINTEXT);
    let proxy = Proxy::start(server.addr);
    let alice = user(proxy.addr, "alice");
    let bob = user(server.addr, "bob");
    let thread = alice.open_direct(bob.user_id().unwrap()).unwrap();
    let cutter = {
        let proxy = proxy.clone();
        thread::spawn(move || {
            thread::sleep(Duration::from_millis(5));
            proxy.cut();
        })
    };
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(
            alice
                .send_with_retry(
                    thread.id,
                    MessageKind::Text,
                    format!("m{i}").into_bytes(),
                    WAIT,
                )
                .unwrap()
                .message,
        );
    }
    cutter.join().unwrap();
    let history = bob.history(thread.id, 0, Direction::Forward, 100).unwrap();
    let texts: Vec<_> = history
        .messages
        .iter()
        .filter(|m| m.kind == MessageKind::Text)
        .map(|m| m.body.clone())
        .collect();
    assert_eq!(texts.len(), 20, "each message stored exactly once");
    server.stop();
}

#[test]
fn groups_recall_and_errors() {
    let server = util::Server::start_with(PLAINTEXT);
    let alice = user(server.addr, "alice");
    let bob = user(server.addr, "bob");
    let carol = user(server.addr, "carol");
    let (bob_id, carol_id) = (bob.user_id().unwrap(), carol.user_id().unwrap());
    let group = alice.create_group("team", &[bob_id]).unwrap();
    alice.add_members(group.id, &[carol_id]).unwrap();
    let err = bob.remove_member(group.id, carol_id).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotAdmin));

    let sent = alice.send_text(group.id, "to the team").unwrap();
    assert_eq!(next_message(&carol).id, sent.message);
    alice.recall(group.id, sent.message).unwrap();
    let err = bob.recall(group.id, sent.message).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotSender));
    let page = bob.history(group.id, 0, Direction::Backward, 10).unwrap();
    let recalled = page.messages.iter().find(|m| m.id == sent.message).unwrap();
    assert!(recalled.recalled && recalled.body.is_empty());

    assert_eq!(
        alice.lookup_user("nobody-here").unwrap_err().code(),
        Some(ErrorCode::UnknownUser)
    );
    assert_eq!(
        alice.admin_stats().unwrap_err().code(),
        Some(ErrorCode::Forbidden)
    );
    server.stop();
}

#[test]
fn contacts_presence_and_media() {
    let server = util::Server::start_with(PLAINTEXT);
    let alice = user(server.addr, "alice");
    let bob = user(server.addr, "bob");
    let bob_id = bob.user_id().unwrap();
    assert_eq!(
        alice.presence_subscribe(&[bob_id]).unwrap_err().code(),
        Some(ErrorCode::NotContact)
    );
    alice.contact_add(bob_id).unwrap();
    assert_eq!(
        alice
            .contacts()
            .unwrap()
            .iter()
            .map(|u| u.handle.as_str())
            .collect::<Vec<_>>(),
        ["bob"]
    );
    alice.presence_subscribe(&[bob_id]).unwrap();
    assert!(alice.presence_query(&[bob_id]).unwrap()[0].online);
    drop(bob);
    wait_event(
        &alice,
        |e| matches!(e, Event::Presence(p) if p.user == bob_id && !p.online && p.last_seen > 0),
    );

    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let media = alice
        .upload_media("application/octet-stream", &data)
        .unwrap();
    assert_eq!(media.total_len, data.len() as u64);
    assert_eq!(alice.download_media(&media.media, 0).unwrap(), data);
    server.stop();
}

#[test]
fn a_new_device_starts_at_its_login_and_names_users_by_id() {
    let server = util::Server::start_with(PLAINTEXT);
    let alice = user(server.addr, "alice");
    let bob = user(server.addr, "bob");
    let (alice_id, bob_id) = (alice.user_id().unwrap(), bob.user_id().unwrap());
    let thread = alice.open_direct(bob_id).unwrap();
    let old = alice.send_text(thread.id, "before the new device").unwrap();

    // A second device of bob's with nothing saved: its first sync starts at the login, not at 0.
    let tablet = Client::connect(server.addr, ClientConfig::default().with_device("tablet"))
        .expect("connect");
    let auth = tablet.login("bob", "correct-horse-battery").unwrap();
    assert!(auth.watermark >= old.message, "{auth:?} {old:?}");
    assert_eq!(tablet.watermark(), Some(auth.watermark));
    assert!(tablet.sync().unwrap().messages.is_empty(), "no backlog");
    let new = alice.send_text(thread.id, "after the login").unwrap();
    let synced = tablet.sync().unwrap();
    let ids: Vec<u64> = synced.messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, [new.message]);
    // What came before is history.
    let page = tablet
        .history(thread.id, 0, Direction::Backward, 10)
        .unwrap();
    assert!(page.messages.iter().any(|m| m.id == old.message));

    let users = tablet.users(&[bob_id, 999_999, alice_id]).unwrap();
    let names: Vec<(u64, &str)> = users.iter().map(|u| (u.id, u.handle.as_str())).collect();
    assert_eq!(
        names,
        [(bob_id, "bob"), (alice_id, "alice")],
        "unknown ids skipped"
    );
    let many: Vec<u64> = (0..2500)
        .map(|i| if i == 1234 { alice_id } else { 1_000_000 + i })
        .collect();
    assert_eq!(
        tablet.users(&many).unwrap().len(),
        1,
        "split into requests of 1,000"
    );
    server.stop();
}

#[test]
fn other_devices_get_pushes_and_logout_all_ends_every_device() {
    let server = util::Server::start_with(PLAINTEXT);
    let phone = user(server.addr, "alice");
    let laptop = Client::connect(server.addr, config().with_device("laptop")).unwrap();
    laptop.login("alice", "correct-horse-battery").unwrap();
    let bob = user(server.addr, "bob");
    let bob_id = bob.user_id().unwrap();
    let thread = phone.open_direct(bob_id).unwrap();

    // The sender's other device gets its message; only the sending connection does not.
    let sent = phone.send_text(thread.id, "from the phone").unwrap();
    let on_laptop = next_message(&laptop);
    assert_eq!(
        (on_laptop.id, on_laptop.sender),
        (sent.message, phone.user_id().unwrap())
    );
    assert_eq!(next_message(&bob).id, sent.message);
    bob.receipt(thread.id, ReceiptKind::Read, sent.message)
        .unwrap();
    for device in [&phone, &laptop] {
        wait_event(
            device,
            |e| matches!(e, Event::Receipt { user, kind: ReceiptKind::Read, up_to, .. } if *user == bob_id && *up_to == sent.message),
        );
    }

    let token = laptop.token().unwrap();
    phone.logout_all().unwrap();
    let events = wait_event(&laptop, |e| matches!(e, Event::SessionEnded { .. }));
    assert_eq!(
        events.last(),
        Some(&Event::SessionEnded {
            reason: Some(ErrorCode::SessionRevoked)
        }),
        "{events:?}"
    );
    assert!(!phone.is_connected() && !laptop.is_connected());
    let again = Client::connect(server.addr, config()).unwrap();
    assert_eq!(
        again.resume(&token).unwrap_err().code(),
        Some(ErrorCode::InvalidToken)
    );
    server.stop();
}

/// PROTOCOL.md 7.4: `PRESENCE_QUERY` is for contacts only (`NOT_CONTACT` otherwise).
/// Regression: the server used to answer it for anyone, disclosing a stranger's online state
/// and last-seen time.
#[test]
fn presence_query_of_a_non_contact_is_refused() {
    let server = util::Server::start_with(PLAINTEXT);
    let alice = user(server.addr, "alice");
    let stranger = user(server.addr, "stranger");
    let err = alice
        .presence_query(&[stranger.user_id().unwrap()])
        .expect_err("a stranger's presence must not be disclosed");
    assert_eq!(err.code(), Some(ErrorCode::NotContact));
    server.stop();
}
