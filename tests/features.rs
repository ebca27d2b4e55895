//! Replies, edits and reactions over real TCP against a real server: across two devices of
//! one user and another member, through SYNC for a device that was offline, and every refusal.

mod util;

use std::time::Duration;

use bytes::Bytes;
use courier_protocol::wire::{Reader, Wire};
use courier_protocol::*;
use util::{direct, error_code, send, Server, TestConn, PASSWORD};

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

fn login(server: &Server, handle: &str, device: &str) -> (TestConn, AuthOk) {
    let mut c = server.connect();
    c.hello();
    let ok = c.login(handle, PASSWORD, device);
    (c, ok)
}

fn message_push(c: &mut TestConn) -> MessagePush {
    match c.push_where(WAIT, |f| matches!(f, Frame::MessagePush(_))) {
        Some(Frame::MessagePush(p)) => p,
        other => panic!("expected a MESSAGE_PUSH, got {other:?}"),
    }
}

fn no_message_push(c: &mut TestConn) {
    let got = c.push_where(QUIET, |f| matches!(f, Frame::MessagePush(_)));
    assert_eq!(got, None, "no MESSAGE_PUSH expected");
}

fn system_event(m: &Message) -> SystemEvent {
    assert_eq!(m.kind, MessageKind::System, "{m:?}");
    SystemEvent::get(&mut Reader::new(m.body.clone()), "body").expect("a system event body")
}

fn history(c: &mut TestConn, thread: u64) -> Messages {
    match c.request(History {
        thread,
        anchor: 0,
        direction: Direction::Forward,
        limit: 500,
    }) {
        Frame::Messages(m) => m,
        other => panic!("HISTORY: {other:?}"),
    }
}

/// Hides `thread` for `c`'s user (SET_THREAD_STATE `hidden`).
fn hide(c: &mut TestConn, thread: u64) {
    let state = SetThreadState {
        thread,
        muted: false,
        hidden: true,
        label: String::new(),
    };
    assert_eq!(c.request(state), Done {}.into());
}

fn meta_of(metas: &[MessageMeta], id: u64) -> Option<&MessageMeta> {
    metas.iter().find(|m| m.id == id)
}

/// Every page of a sync walk from `since`: messages, their meta, and the watermark.
fn sync_all(c: &mut TestConn, since: u64) -> (Vec<Message>, Vec<MessageMeta>, u64) {
    let (mut messages, mut metas) = (Vec::new(), Vec::new());
    let (mut after_thread, mut after_message, mut watermark) = (0, 0, 0);
    loop {
        let Frame::SyncBatch(b) = c.request(Sync {
            since,
            after_thread,
            after_message,
            limit: 0,
            watermark,
            vector: Default::default(),
        }) else {
            panic!("SYNC did not answer SYNC_BATCH")
        };
        messages.extend(b.messages);
        metas.extend(b.meta);
        (after_thread, after_message, watermark) = (b.next_thread, b.next_message, b.watermark);
        if !b.more {
            return (messages, metas, watermark);
        }
    }
}

fn send_reply(c: &mut TestConn, thread: u64, client_msg_id: u64, body: &str, to: u64) -> Frame {
    c.request(Send {
        thread,
        client_msg_id,
        kind: MessageKind::Text,
        body: Bytes::copy_from_slice(body.as_bytes()),
        reply_to: to,
    })
}

fn edit(c: &mut TestConn, thread: u64, message: u64, body: &str) -> Frame {
    c.request(Edit {
        thread,
        message,
        body: Bytes::copy_from_slice(body.as_bytes()),
    })
}

fn react(c: &mut TestConn, thread: u64, message: u64, reaction: &str) -> Frame {
    c.request(React {
        thread,
        message,
        reaction: reaction.into(),
    })
}

fn counts(list: &[(&str, u32)]) -> Vec<ReactionCount> {
    list.iter()
        .map(|&(r, n)| ReactionCount {
            reaction: r.into(),
            count: n,
        })
        .collect()
}

#[test]
fn a_reply_is_pushed_to_every_device_listed_in_history_and_synced() {
    let server = Server::start();
    let (mut alice, a) = server.user("alice");
    let (mut alice_phone, _) = login(&server, "alice", "phone");
    let (mut bob, b) = server.user("bob");
    let t = direct(&mut alice, b.user);
    let (mut bob_tablet, _) = login(&server, "bob", "tablet");
    let Frame::SyncBatch(before) = bob_tablet.request(Sync {
        since: 0,
        after_thread: 0,
        after_message: 0,
        limit: 0,
        watermark: 0,
        vector: Default::default(),
    }) else {
        panic!("SYNC")
    };
    drop(bob_tablet);

    let question = send(&mut alice, t, 1, "lunch?").message;
    assert_eq!(message_push(&mut bob).reply_to, 0);
    assert_eq!(message_push(&mut alice_phone).reply_to, 0);

    let Frame::Sent(answer) = send_reply(&mut bob, t, 1, "yes", question) else {
        panic!("a reply is sent like any message")
    };
    for device in [&mut alice, &mut alice_phone] {
        let p = message_push(device);
        assert_eq!(
            (p.message.id, &p.message.body[..], p.reply_to),
            (answer.message, &b"yes"[..], question),
            "a reply's push names the message it quotes"
        );
    }

    let page = history(&mut alice, t);
    assert_eq!(page.messages.len(), 2);
    assert_eq!(
        meta_of(&page.meta, answer.message).map(|m| m.reply_to),
        Some(question)
    );
    assert_eq!(
        meta_of(&page.meta, question),
        None,
        "a message that neither replies, nor was edited, nor has reactions has no meta"
    );

    let (mut bob_tablet, _) = login(&server, "bob", "tablet");
    let (messages, metas, _) = sync_all(&mut bob_tablet, before.watermark);
    assert_eq!(
        messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        [question, answer.message]
    );
    assert_eq!(
        meta_of(&metas, answer.message).map(|m| m.reply_to),
        Some(question),
        "an offline device learns what a message replied to from SYNC"
    );
    let _ = a;
}

#[test]
fn a_reply_to_another_threads_message_a_recalled_one_or_a_notice_is_refused() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (_bob, b) = server.user("bob");
    let (_carol, c) = server.user("carol");
    let with_bob = direct(&mut alice, b.user);
    let with_carol = direct(&mut alice, c.user);
    let elsewhere = send(&mut alice, with_carol, 1, "for carol").message;
    let taken_back = send(&mut alice, with_bob, 2, "oops").message;
    assert_eq!(
        alice.request(Recall {
            thread: with_bob,
            message: taken_back
        }),
        Done {}.into()
    );
    let Frame::ThreadInfo(g) = alice.request(CreateGroup {
        name: "g".into(),
        members: vec![b.user],
    }) else {
        panic!("CREATE_GROUP")
    };
    let notice = g.thread.last_msg_id;

    let refused = [
        (with_bob, elsewhere, ErrorCode::UnknownMessage),
        (with_bob, 12345, ErrorCode::UnknownMessage),
        (with_bob, taken_back, ErrorCode::MessageRecalled),
        (g.thread.id, notice, ErrorCode::InvalidArgument),
    ];
    for (i, (thread, to, code)) in refused.into_iter().enumerate() {
        let reply = send_reply(&mut alice, thread, 10 + i as u64, "re", to);
        assert_eq!(error_code(&reply), code, "reply to {to} in {thread}");
        let Frame::ErrorReply(e) = reply else {
            unreachable!()
        };
        assert!(!e.message.is_empty(), "the refusal says what to do");
    }
    let bodies: Vec<_> = history(&mut alice, with_bob)
        .messages
        .into_iter()
        .filter(|m| m.kind != MessageKind::System)
        .map(|m| m.body)
        .collect();
    assert_eq!(bodies, [Bytes::new()], "nothing but the recalled tombstone");
}

#[test]
fn an_edit_reaches_every_device_and_history_shows_the_latest_text_marked_edited() {
    let server = Server::start();
    let (mut alice, a) = server.user("alice");
    let (mut alice_phone, _) = login(&server, "alice", "phone");
    let (mut bob, b) = server.user("bob");
    let t = direct(&mut alice, b.user);
    let m = send(&mut alice, t, 1, "helo").message;
    message_push(&mut bob);
    message_push(&mut alice_phone);

    assert_eq!(edit(&mut alice, t, m, "hello"), Done {}.into());
    let mut edited_at = 0;
    for device in [&mut alice, &mut alice_phone, &mut bob] {
        let p = message_push(device);
        let ev = system_event(&p.message);
        assert_eq!(
            (ev.event, ev.actor, ev.subject, &ev.body[..]),
            (SystemEventKind::Edited, a.user, m, &b"hello"[..]),
            "the EDITED notice carries the new text"
        );
        edited_at = p.message.id;
    }

    let page = history(&mut bob, t);
    let original = page.messages.iter().find(|x| x.id == m).unwrap();
    assert_eq!(
        &original.body[..],
        b"hello",
        "history shows the latest text"
    );
    assert_eq!(meta_of(&page.meta, m).map(|x| x.edited_at), Some(edited_at));

    // A retried EDIT (same text) changes nothing and is not announced again.
    assert_eq!(edit(&mut alice, t, m, "hello"), Done {}.into());
    no_message_push(&mut bob);

    // A second edit moves the mark.
    assert_eq!(edit(&mut alice, t, m, "hello!"), Done {}.into());
    let second = message_push(&mut bob).message.id;
    let page = history(&mut alice, t);
    let original = page.messages.iter().find(|x| x.id == m).unwrap();
    assert_eq!(&original.body[..], b"hello!");
    assert_eq!(meta_of(&page.meta, m).map(|x| x.edited_at), Some(second));
}

#[test]
fn an_offline_device_gets_the_edit_and_the_latest_text_from_sync() {
    let server = Server::start();
    let (mut alice, a) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let t = direct(&mut alice, b.user);
    let m = send(&mut alice, t, 1, "see you at 5").message;
    message_push(&mut bob);
    let (_, _, watermark) = sync_all(&mut bob, 0);
    drop(bob);

    assert_eq!(edit(&mut alice, t, m, "see you at 6"), Done {}.into());

    let (mut bob, _) = login(&server, "bob", "test");
    let (messages, _, _) = sync_all(&mut bob, watermark);
    assert_eq!(messages.len(), 1, "only the edit is new: {messages:?}");
    let ev = system_event(&messages[0]);
    assert_eq!(
        (ev.event, ev.actor, ev.subject, &ev.body[..]),
        (SystemEventKind::Edited, a.user, m, &b"see you at 6"[..])
    );

    // A device with nothing saved gets the message with its latest text and the mark.
    let (mut tablet, _) = login(&server, "bob", "tablet");
    let (messages, metas, _) = sync_all(&mut tablet, 0);
    let original = messages.iter().find(|x| x.id == m).unwrap();
    assert_eq!(&original.body[..], b"see you at 6");
    assert_eq!(
        meta_of(&metas, m).map(|x| x.edited_at),
        Some(messages[1].id)
    );
}

#[test]
fn edits_by_another_member_of_recalled_messages_or_notices_are_refused() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let t = direct(&mut alice, b.user);
    let m = send(&mut alice, t, 1, "mine").message;
    let gone = send(&mut alice, t, 2, "gone").message;
    alice.request(Recall {
        thread: t,
        message: gone,
    });
    let Frame::ThreadInfo(g) = alice.request(CreateGroup {
        name: "g".into(),
        members: vec![b.user],
    }) else {
        panic!("CREATE_GROUP")
    };

    assert_eq!(
        error_code(&edit(&mut bob, t, m, "theirs")),
        ErrorCode::NotSender
    );
    assert_eq!(
        error_code(&edit(&mut alice, t, gone, "back")),
        ErrorCode::MessageRecalled
    );
    assert_eq!(
        error_code(&edit(&mut alice, g.thread.id, g.thread.last_msg_id, "x")),
        ErrorCode::NotSender
    );
    assert_eq!(
        error_code(&edit(&mut alice, t, 12345, "x")),
        ErrorCode::UnknownMessage
    );
    // A media message needs media the sender may read: upload five bytes.
    let photo = b"photo";
    let Frame::MediaUpload(up) = alice.request(MediaBegin {
        total_len: photo.len() as u64,
        mime: "image/jpeg".into(),
        hash: Bytes::copy_from_slice(blake3::hash(photo).as_bytes()),
    }) else {
        panic!("MEDIA_BEGIN")
    };
    let chunk = MediaChunk {
        upload: up.upload,
        offset: 0,
        data: Bytes::from_static(photo),
    };
    assert_eq!(alice.request(chunk), Done {}.into());
    let Frame::MediaRef(stored) = alice.request(MediaCommit { upload: up.upload }) else {
        panic!("MEDIA_COMMIT")
    };
    let Frame::Sent(media) = alice.request(Send {
        thread: t,
        client_msg_id: 3,
        kind: MessageKind::Media,
        body: stored.media,
        reply_to: 0,
    }) else {
        panic!("SEND of a media message")
    };
    let reply = edit(&mut alice, t, media.message, "another media id");
    assert_eq!(error_code(&reply), ErrorCode::InvalidArgument);
    let big = "x".repeat(16 * 1024 + 1);
    assert_eq!(
        error_code(&edit(&mut alice, t, m, &big)),
        ErrorCode::BodyTooLarge
    );
    let page = history(&mut bob, t);
    assert_eq!(&page.messages[0].body[..], b"mine");
    assert!(page.meta.is_empty(), "nothing was edited: {:?}", page.meta);
}

#[test]
fn an_edit_after_the_configured_window_is_refused() {
    let server = Server::start_with(&["--edit-window-secs", "1"]);
    let (mut alice, _) = server.user("alice");
    let (_bob, b) = server.user("bob");
    let t = direct(&mut alice, b.user);
    let m = send(&mut alice, t, 1, "typo").message;
    assert_eq!(edit(&mut alice, t, m, "fixed"), Done {}.into());
    std::thread::sleep(Duration::from_millis(1100));
    let reply = edit(&mut alice, t, m, "fixed again");
    assert_eq!(error_code(&reply), ErrorCode::EditWindowExpired);
    let page = history(&mut alice, t);
    assert_eq!(&page.messages[0].body[..], b"fixed");
}

#[test]
fn reactions_are_one_per_member_changeable_removable_pushed_and_counted() {
    let server = Server::start();
    let (mut alice, a) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let (mut bob_phone, _) = login(&server, "bob", "phone");
    let t = direct(&mut alice, b.user);
    let m = send(&mut alice, t, 1, "we won").message;
    message_push(&mut bob);
    message_push(&mut bob_phone);

    // Bob 👍 from his laptop: his phone and alice hear of it.
    assert_eq!(react(&mut bob, t, m, "👍"), Done {}.into());
    for device in [&mut alice, &mut bob_phone] {
        let ev = system_event(&message_push(device).message);
        assert_eq!(
            (ev.event, ev.actor, ev.subject, ev.text.as_str()),
            (SystemEventKind::Reacted, b.user, m, "👍")
        );
        assert_eq!(ev.reactions, counts(&[("👍", 1)]));
    }
    message_push(&mut bob);
    assert_eq!(react(&mut alice, t, m, "👍"), Done {}.into());
    for device in [&mut alice, &mut bob, &mut bob_phone] {
        let ev = system_event(&message_push(device).message);
        assert_eq!(
            ev.reactions,
            counts(&[("👍", 2)]),
            "the reactor's device too"
        );
    }

    // One per member: bob changes his; the same one again changes nothing.
    assert_eq!(react(&mut bob, t, m, "🎉"), Done {}.into());
    let ev = system_event(&message_push(&mut alice).message);
    assert_eq!(ev.reactions, counts(&[("🎉", 1), ("👍", 1)]));
    assert_eq!(react(&mut bob, t, m, "🎉"), Done {}.into());
    no_message_push(&mut alice);

    let page = history(&mut bob, t);
    let meta = meta_of(&page.meta, m).expect("meta of a message with reactions");
    assert_eq!(
        (meta.reactions.clone(), meta.mine.as_str()),
        (counts(&[("🎉", 1), ("👍", 1)]), "🎉")
    );
    let page = history(&mut alice, t);
    assert_eq!(meta_of(&page.meta, m).unwrap().mine, "👍");

    // Removed: an empty reaction.
    let (_, _, watermark) = sync_all(&mut bob_phone, 0);
    drop(bob_phone);
    assert_eq!(react(&mut bob, t, m, ""), Done {}.into());
    let ev = system_event(&message_push(&mut alice).message);
    assert_eq!(
        (ev.text.as_str(), ev.reactions.clone()),
        ("", counts(&[("👍", 1)]))
    );

    // The offline phone learns it from SYNC; a new device gets the counts with the message.
    let (mut bob_phone, _) = login(&server, "bob", "phone");
    let (messages, _, _) = sync_all(&mut bob_phone, watermark);
    assert_eq!(messages.len(), 1, "{messages:?}");
    let ev = system_event(&messages[0]);
    assert_eq!(
        (ev.event, ev.actor, ev.reactions),
        (SystemEventKind::Reacted, b.user, counts(&[("👍", 1)]))
    );
    let (mut tablet, _) = login(&server, "bob", "tablet");
    let (_, metas, _) = sync_all(&mut tablet, 0);
    let meta = meta_of(&metas, m).unwrap();
    assert_eq!(
        (meta.reactions.clone(), meta.mine.as_str()),
        (counts(&[("👍", 1)]), "")
    );
    let _ = a;
}

#[test]
fn bad_reactions_reactions_past_the_cap_and_to_recalled_messages_are_refused() {
    let server = Server::start_with(&["--max-reactions-per-message", "2"]);
    let (mut alice, _) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let (mut carol, c) = server.user("carol");
    let Frame::ThreadInfo(g) = alice.request(CreateGroup {
        name: "g".into(),
        members: vec![b.user, c.user],
    }) else {
        panic!("CREATE_GROUP")
    };
    let (g, notice) = (g.thread.id, g.thread.last_msg_id);
    let m = send(&mut alice, g, 1, "vote").message;

    for bad in ["a b", "\n", &"x".repeat(33)] {
        let reply = react(&mut bob, g, m, bad);
        assert_eq!(error_code(&reply), ErrorCode::InvalidReaction, "{bad:?}");
    }
    assert_eq!(
        error_code(&react(&mut bob, g, notice, "👍")),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        error_code(&react(&mut bob, g, 12345, "👍")),
        ErrorCode::UnknownMessage
    );

    assert_eq!(react(&mut alice, g, m, "a"), Done {}.into());
    assert_eq!(react(&mut bob, g, m, "b"), Done {}.into());
    let reply = react(&mut carol, g, m, "c");
    assert_eq!(error_code(&reply), ErrorCode::TooManyReactions);
    assert_eq!(
        react(&mut carol, g, m, "a"),
        Done {}.into(),
        "one already there"
    );
    // Bob's was the only "b": moving it to "c" keeps two different reactions.
    assert_eq!(react(&mut bob, g, m, "c"), Done {}.into());
    let page = history(&mut carol, g);
    assert_eq!(
        meta_of(&page.meta, m).unwrap().reactions,
        counts(&[("a", 2), ("c", 1)])
    );

    assert_eq!(
        alice.request(Recall {
            thread: g,
            message: m
        }),
        Done {}.into()
    );
    assert_eq!(
        error_code(&react(&mut bob, g, m, "a")),
        ErrorCode::MessageRecalled
    );
    let page = history(&mut carol, g);
    assert_eq!(
        meta_of(&page.meta, m),
        None,
        "a tombstone shows no reactions"
    );
}

#[test]
fn the_client_library_replies_edits_reacts_and_reports_meta_as_events() {
    use courier_client::{Client, ClientConfig, Event};

    let server = Server::start();
    let addr = server.addr;
    let config = || ClientConfig::default().with_encryption(server.encryption());
    let alice = Client::connect(addr, config()).expect("connect");
    let a = alice.register("alice", PASSWORD).expect("register");
    let bob = Client::connect(addr, config()).expect("connect");
    bob.register("bob", PASSWORD).expect("register");
    let t = bob.open_direct(a.user).expect("open").id;
    let question = alice.send_text(t, "lunch?").expect("send").message;
    let answer = bob.send_reply(t, question, "yes").expect("reply").message;

    // The pushed reply comes out as the message, then its meta.
    let mut events = Vec::new();
    while let Some(e) = alice.recv_event_timeout(WAIT) {
        let done = matches!(&e, Event::MessageMeta { .. });
        events.push(e);
        if done {
            break;
        }
    }
    let n = events.len();
    assert!(n >= 2, "{events:?}");
    assert!(matches!(&events[n - 2], Event::Message(m) if m.id == answer));
    assert!(
        matches!(&events[n - 1], Event::MessageMeta { thread, meta }
            if *thread == t && meta.id == answer && meta.reply_to == question),
        "{events:?}"
    );

    alice.edit(t, question, &b"lunch at 1?"[..]).expect("edit");
    bob.react(t, question, "👍").expect("react");
    let err = bob.edit(t, question, &b"mine now"[..]).unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotSender), "{err}");

    let synced = bob.sync_since(0).expect("sync");
    let meta = synced
        .meta
        .iter()
        .find(|m| m.id == question)
        .expect("the question's meta");
    assert_ne!(meta.edited_at, 0);
    assert_eq!(
        (meta.reactions.clone(), meta.mine.as_str()),
        (counts(&[("👍", 1)]), "👍")
    );
    assert_eq!(
        synced
            .meta
            .iter()
            .find(|m| m.id == answer)
            .map(|m| m.reply_to),
        Some(question)
    );
    let page = alice.history(t, 0, Direction::Forward, 0).expect("history");
    let edited = page.messages.iter().find(|m| m.id == question).unwrap();
    assert_eq!(&edited.body[..], b"lunch at 1?");
}

#[test]
fn the_cli_replies_edits_reacts_and_history_shows_them() {
    use std::process::{Command, Output};

    let server = Server::start();
    let addr = server.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let run = |who: &str, args: &[&str]| -> String {
        let out: Output = Command::new(util::cli_bin())
            .env("COURIER_CONFIG", dir.path().join(format!("{who}.toml")))
            .env("COURIER_SERVER", &addr)
            .env_remove("COURIER_PASSWORD")
            .args(server.client_args())
            .args(args)
            .output()
            .expect("run courier-cli");
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let json = |text: String| -> serde_json::Value { serde_json::from_str(&text).unwrap() };
    run(
        "alice",
        &["register", "alice", "--password", "alice-password"],
    );
    run("bob", &["register", "bob", "--password", "bob-password"]);

    let sent = json(run("alice", &["--json", "send", "--to", "bob", "lunch?"]));
    let (thread, question) = (
        sent["thread"].as_u64().unwrap().to_string(),
        sent["message"].as_u64().unwrap().to_string(),
    );
    run(
        "bob",
        &["send", "--thread", &thread, "--reply-to", &question, "yes"],
    );
    run(
        "alice",
        &[
            "edit",
            "--thread",
            &thread,
            "--message",
            &question,
            "lunch at 1?",
        ],
    );
    run(
        "bob",
        &["react", "--thread", &thread, "--message", &question, "👍"],
    );

    let shown = run("bob", &["history", "--thread", &thread]);
    let lines: Vec<&str> = shown.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.contains("lunch at 1?") && l.ends_with("(edited)"))
        .unwrap_or_else(|| panic!("the edited message, marked:\n{shown}"));
    assert_eq!(lines[at + 1].trim(), "👍 1 (you: 👍)", "{shown}");
    assert!(
        shown.contains("↪ reply to alice: \"lunch at 1?\""),
        "the reply quotes what it answers:\n{shown}"
    );

    let history = json(run("alice", &["--json", "history", "--thread", &thread]));
    let rows = history.as_array().unwrap();
    let q = rows
        .iter()
        .find(|m| m["id"].as_u64() == sent["message"].as_u64())
        .unwrap();
    assert_eq!(q["reactions"][0]["reaction"], "👍");
    assert_ne!(q["edited_at"], 0);
    assert_eq!(q["my_reaction"], "");

    run(
        "bob",
        &["react", "--thread", &thread, "--message", &question],
    );
    let history = json(run("alice", &["--json", "history", "--thread", &thread]));
    let q = history
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"].as_u64() == sent["message"].as_u64())
        .unwrap();
    assert_eq!(q["reactions"].as_array().map(Vec::len), Some(0), "{q}");
}

#[test]
fn a_member_who_deleted_a_message_for_themselves_hears_nothing_more_of_it() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let (mut bob_phone, _) = login(&server, "bob", "phone");
    let (mut carol, c) = server.user("carol");
    let Frame::ThreadInfo(g) = alice.request(CreateGroup {
        name: "three".into(),
        members: vec![b.user, c.user],
    }) else {
        panic!("CREATE_GROUP")
    };
    let t = g.thread.id;
    let m = send(&mut alice, t, 1, "helo").message;
    let kept = send(&mut alice, t, 2, "still here").message;
    for device in [&mut bob, &mut bob_phone, &mut carol] {
        let created = system_event(&message_push(device).message);
        assert_eq!(created.event, SystemEventKind::Created);
        assert_eq!(message_push(device).message.id, m);
        assert_eq!(message_push(device).message.id, kept);
    }
    let (_, _, watermark) = sync_all(&mut bob_phone, 0);
    assert_eq!(
        bob.request(DeleteForMe {
            thread: t,
            message: m
        }),
        Done {}.into()
    );

    // Alice edits it, Alice and Carol react to it: Carol hears each change, Bob nothing. The
    // marker Alice sends after them is the next push Bob's devices get.
    assert_eq!(edit(&mut alice, t, m, "hello"), Done {}.into());
    assert_eq!(react(&mut alice, t, m, "👍"), Done {}.into());
    assert_eq!(react(&mut carol, t, m, "🎉"), Done {}.into());
    // A change to another message still reaches him.
    assert_eq!(react(&mut carol, t, kept, "👍"), Done {}.into());
    let marker = send(&mut alice, t, 3, "marker").message;
    let mut notices = Vec::new();
    for _ in 0..3 {
        let p = message_push(&mut carol);
        let ev = system_event(&p.message);
        assert_eq!(ev.subject, m, "{ev:?}");
        notices.push((p.message.id, ev.event));
    }
    assert_eq!(
        notices.iter().map(|n| n.1).collect::<Vec<_>>(),
        [
            SystemEventKind::Edited,
            SystemEventKind::Reacted,
            SystemEventKind::Reacted
        ]
    );
    assert_eq!(
        system_event(&message_push(&mut carol).message).subject,
        kept
    );
    assert_eq!(message_push(&mut carol).message.id, marker);
    for device in [&mut bob, &mut bob_phone] {
        let p = message_push(device);
        let ev = system_event(&p.message);
        assert_eq!(
            (ev.event, ev.subject),
            (SystemEventKind::Reacted, kept),
            "the first push after the deletion is the reaction to the other message"
        );
        assert_eq!(message_push(device).message.id, marker);
    }

    // His HISTORY and SYNC (an old device catching up, a new one from scratch) show neither
    // the message nor the notices about it; Carol's show all.
    let about_m = |list: &[Message]| {
        list.iter()
            .filter(|x| {
                x.id == m || (x.kind == MessageKind::System && system_event(x).subject == m)
            })
            .count()
    };
    assert_eq!(about_m(&history(&mut bob, t).messages), 0);
    assert_eq!(about_m(&sync_all(&mut bob_phone, watermark).0), 0);
    let (mut bob_tablet, _) = login(&server, "bob", "tablet");
    let (synced, metas, _) = sync_all(&mut bob_tablet, 0);
    assert_eq!(about_m(&synced), 0);
    assert!(meta_of(&metas, m).is_none());
    assert!(synced.iter().any(|x| x.id == marker), "the rest is synced");
    assert_eq!(about_m(&history(&mut carol, t).messages), 4);

    // For him the message is gone: READERS, EDIT and REACT answer as for no message.
    for reply in [
        bob.request(Readers {
            thread: t,
            message: m,
        }),
        react(&mut bob, t, m, "👍"),
    ] {
        assert_eq!(error_code(&reply), ErrorCode::UnknownMessage, "{reply:?}");
    }
    let mine = send(&mut bob, t, 4, "typo").message;
    assert_eq!(message_push(&mut bob_phone).message.id, mine);
    assert_eq!(message_push(&mut carol).message.id, mine);
    assert_eq!(
        bob.request(DeleteForMe {
            thread: t,
            message: mine
        }),
        Done {}.into()
    );
    assert_eq!(
        error_code(&edit(&mut bob, t, mine, "fixed")),
        ErrorCode::UnknownMessage
    );

    // Its recall is not announced to him either.
    assert_eq!(
        alice.request(Recall {
            thread: t,
            message: m
        }),
        Done {}.into()
    );
    let p = message_push(&mut carol);
    assert_eq!(system_event(&p.message).event, SystemEventKind::Recalled);
    let last = send(&mut alice, t, 5, "last").message;
    for device in [&mut bob, &mut bob_phone] {
        assert_eq!(message_push(device).message.id, last);
    }
}

/// The thread list's preview is the newest message the viewer can still see: not one they
/// deleted for themselves, nor a notice about one (as HISTORY hides them).
#[test]
fn the_thread_list_preview_skips_what_the_viewer_deleted_for_themselves() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let t = direct(&mut alice, b.user);
    let first = send(&mut alice, t, 1, "one").message;
    let second = send(&mut alice, t, 2, "two").message;
    assert_eq!(message_push(&mut bob).message.id, first);
    assert_eq!(message_push(&mut bob).message.id, second);
    assert_eq!(
        bob.request(DeleteForMe {
            thread: t,
            message: second
        }),
        Done {}.into()
    );
    let preview = |c: &mut TestConn| {
        let list = c.thread_list(10);
        let row = list.threads.into_iter().find(|r| r.id == t).expect("row");
        row.last_message.map(|m| (m.id, m.body))
    };
    assert_eq!(preview(&mut bob), Some((first, Bytes::from("one"))));
    assert_eq!(preview(&mut alice), Some((second, Bytes::from("two"))));

    // Alice reacts to the message Bob deleted: the notice is the thread's newest message, and
    // still not Bob's preview.
    assert_eq!(react(&mut alice, t, second, "👍"), Done {}.into());
    assert_eq!(preview(&mut bob), Some((first, Bytes::from("one"))));
    assert_ne!(preview(&mut alice).map(|p| p.0), Some(second));
}

/// A message one deleted for oneself is gone for one: quoting it in a reply is refused like
/// quoting no message, while the other member may still quote it.
#[test]
fn a_reply_cannot_quote_a_message_the_sender_deleted_for_themselves() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let t = direct(&mut alice, b.user);
    let m = send(&mut alice, t, 1, "one").message;
    assert_eq!(message_push(&mut bob).message.id, m);
    assert_eq!(
        bob.request(DeleteForMe {
            thread: t,
            message: m
        }),
        Done {}.into()
    );
    assert_eq!(
        error_code(&send_reply(&mut bob, t, 2, "re", m)),
        ErrorCode::UnknownMessage
    );
    assert!(matches!(
        send_reply(&mut alice, t, 3, "re", m),
        Frame::Sent(_)
    ));
}

/// A conversation hidden with SET_THREAD_STATE stays hidden when a member edits or reacts to a
/// message hidden with it: the hider's devices get no push of the notice, and their thread
/// list, GET_THREAD, HISTORY and SYNC show none of it; for them the message is gone (REACT and
/// READERS answer as for no message). A new message brings the conversation back, with only
/// what came after the mark.
#[test]
fn a_notice_about_a_message_hidden_with_its_conversation_does_not_bring_it_back() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let (mut bob_phone, _) = login(&server, "bob", "phone");
    let t = direct(&mut alice, b.user);
    let old = send(&mut alice, t, 1, "old news").message;
    for device in [&mut bob, &mut bob_phone] {
        assert_eq!(message_push(device).message.id, old);
    }
    let (_, _, watermark) = sync_all(&mut bob_phone, 0);
    hide(&mut bob, t);
    let listed = |c: &mut TestConn| c.thread_list(10).threads.iter().any(|r| r.id == t);
    let hidden = |c: &mut TestConn| match c.request(GetThread { thread: t }) {
        Frame::ThreadInfo(info) => info.thread.hidden,
        other => panic!("GET_THREAD: {other:?}"),
    };
    assert!(!listed(&mut bob));
    assert!(hidden(&mut bob));

    assert_eq!(edit(&mut alice, t, old, "old news, edited"), Done {}.into());
    assert_eq!(react(&mut alice, t, old, "👍"), Done {}.into());
    no_message_push(&mut bob);
    no_message_push(&mut bob_phone);
    assert!(
        !listed(&mut bob),
        "a notice about a hidden message shows the thread again"
    );
    assert!(hidden(&mut bob));
    assert_eq!(history(&mut bob, t).messages, []);
    let (synced, metas, _) = sync_all(&mut bob_phone, watermark);
    assert_eq!(synced, []);
    assert!(meta_of(&metas, old).is_none());
    assert_eq!(
        error_code(&react(&mut bob, t, old, "🎉")),
        ErrorCode::UnknownMessage
    );
    let readers = bob.request(Readers {
        thread: t,
        message: old,
    });
    assert_eq!(error_code(&readers), ErrorCode::UnknownMessage);
    // Alice still has it all.
    assert_eq!(history(&mut alice, t).messages.len(), 3);

    let new = send(&mut alice, t, 2, "news").message;
    for device in [&mut bob, &mut bob_phone] {
        assert_eq!(
            message_push(device).message.id,
            new,
            "the first push since the hide"
        );
    }
    let row = bob
        .thread_list(10)
        .threads
        .into_iter()
        .find(|r| r.id == t)
        .expect("a new message shows the thread again");
    assert!(!row.hidden, "listed as THREAD_INFO reads it");
    assert_eq!(row.last_message.map(|m| m.id), Some(new));
    assert!(!hidden(&mut bob));
    let ids: Vec<u64> = history(&mut bob, t).messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, [new]);
}

/// A conversation hidden under a server from before the hide mark (its thread record without
/// `hidden_upto`, the store without `hide_marks`): the first start of this server gives the
/// thread its mark from the hider's private state, so an edit of the hidden message is still
/// not pushed to the hider.
#[test]
fn a_conversation_hidden_before_the_hide_mark_keeps_its_notices_away_after_an_upgrade() {
    let mut server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let t = direct(&mut alice, b.user);
    let old = send(&mut alice, t, 1, "old news").message;
    assert_eq!(message_push(&mut bob).message.id, old);
    hide(&mut bob, t);
    drop((alice, bob));
    server.stop();
    forget_hide_marks(&server.data_dir, t);

    server.restart();
    let (mut alice, _) = login(&server, "alice", "laptop");
    let (mut bob, _) = login(&server, "bob", "phone");
    assert_eq!(edit(&mut alice, t, old, "old news, edited"), Done {}.into());
    no_message_push(&mut bob);
    assert!(
        !bob.thread_list(10).threads.iter().any(|r| r.id == t),
        "the edit shows the thread again"
    );
    let new = send(&mut alice, t, 2, "news").message;
    assert_eq!(message_push(&mut bob).message.id, new);
}

/// Makes `data_dir` (no server running) look as a server from before the hide mark left it:
/// `thread`'s record without its mark, and no `hide_marks` in `meta`.
fn forget_hide_marks(data_dir: &std::path::Path, thread: u64) {
    use courier::store::keys::{ALL_CFS, CF_META, META_HIDE_MARKS};
    use courier::store::{FsyncMode, Store};
    {
        let store = Store::open(data_dir, FsyncMode::Always).expect("open the store");
        let mut rec = store.thread(thread).unwrap().expect("the thread's record");
        assert!(rec.hidden_upto > 0, "this server keeps the mark: {rec:?}");
        rec.hidden_upto = 0;
        let mut batch = store.batch();
        batch.put_thread(thread, &rec);
        store.commit(batch).expect("write the record");
    }
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), data_dir, ALL_CFS)
        .expect("open the store's RocksDB");
    let meta = db.cf_handle(CF_META).expect("the meta family");
    db.delete_cf(meta, META_HIDE_MARKS)
        .expect("delete hide_marks");
}
