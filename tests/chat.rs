//! Chat over real TCP against a real server and a real RocksDB: threads, groups, messages,
//! receipts, recall, history, sync, contacts, presence, typing, and authorization failures.

mod util;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use courier_protocol::*;
use util::{direct, error_code, send, Server, TestConn, PASSWORD};

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

fn message_push(c: &mut TestConn) -> Message {
    match c.push_where(WAIT, |f| matches!(f, Frame::MessagePush(_))) {
        Some(Frame::MessagePush(p)) => p.message,
        other => panic!("expected a MESSAGE_PUSH, got {other:?}"),
    }
}

fn history(c: &mut TestConn, thread: u64) -> Vec<Message> {
    match c.request(History {
        thread,
        anchor: 0,
        direction: Direction::Forward,
        limit: 500,
    }) {
        Frame::Messages(m) => m.messages,
        other => panic!("HISTORY: {other:?}"),
    }
}

/// Every batch of one sync walk from `since`.
fn sync_walk(c: &mut TestConn, since: u64, limit: u16) -> Vec<SyncBatch> {
    let mut batches = Vec::new();
    let (mut after_thread, mut after_message, mut watermark) = (0, 0, 0);
    loop {
        let Frame::SyncBatch(b) = c.request(Sync {
            since,
            after_thread,
            after_message,
            limit,
            watermark,
            vector: Default::default(),
        }) else {
            panic!("SYNC did not answer SYNC_BATCH")
        };
        (after_thread, after_message, watermark) = (b.next_thread, b.next_message, b.watermark);
        let more = b.more;
        batches.push(b);
        if !more {
            return batches;
        }
    }
}

/// Every page of a sync from `since`; returns threads, messages and the new watermark.
fn sync_all(c: &mut TestConn, since: u64, limit: u16) -> (Vec<Thread>, Vec<Message>, u64) {
    let (mut threads, mut messages, mut watermark) = (Vec::new(), Vec::new(), 0);
    for b in sync_walk(c, since, limit) {
        threads.extend(b.threads);
        messages.extend(b.messages);
        watermark = b.watermark;
    }
    (threads, messages, watermark)
}

/// The last state of `thread` a sync returned.
fn synced_thread(threads: &[Thread], thread: u64) -> Option<&Thread> {
    threads.iter().rev().find(|t| t.id == thread)
}

fn login(server: &Server, handle: &str, device: &str) -> (TestConn, AuthOk) {
    let mut c = server.connect();
    c.hello();
    let ok = c.login(handle, PASSWORD, device);
    (c, ok)
}

fn system_event(m: &Message) -> SystemEvent {
    use courier_protocol::wire::{Reader, Wire};
    SystemEvent::get(&mut Reader::new(m.body.clone()), "body").expect("a system event body")
}

#[test]
fn one_to_one_send_push_ack_and_the_three_ticks() {
    let server = Server::start();
    let (mut alice, a) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let t = direct(&mut alice, b.user);
    assert_eq!(
        direct(&mut bob, a.user),
        t,
        "the direct thread of a pair is unique"
    );

    let sent = send(&mut alice, t, 1, "hello bob");
    let got = message_push(&mut bob);
    assert_eq!(
        (got.id, got.sender, &got.body[..]),
        (sent.message, a.user, &b"hello bob"[..])
    );

    // Two ticks: bob's device acknowledges; alice is told.
    assert_eq!(
        bob.request(Receipt {
            thread: t,
            kind: ReceiptKind::Delivered,
            up_to: got.id
        }),
        Done {}.into()
    );
    let tick = alice.push_where(WAIT, |f| matches!(f, Frame::ReceiptPush(_)));
    assert_eq!(
        tick,
        Some(
            ReceiptPush {
                thread: t,
                user: b.user,
                kind: ReceiptKind::Delivered,
                up_to: got.id
            }
            .into()
        )
    );
    // Blue ticks.
    bob.request(Receipt {
        thread: t,
        kind: ReceiptKind::Read,
        up_to: got.id,
    });
    let tick = alice.push_where(WAIT, |f| matches!(f, Frame::ReceiptPush(_)));
    assert_eq!(
        tick,
        Some(
            ReceiptPush {
                thread: t,
                user: b.user,
                kind: ReceiptKind::Read,
                up_to: got.id
            }
            .into()
        )
    );
    // A stale receipt moves nothing and is not pushed.
    bob.request(Receipt {
        thread: t,
        kind: ReceiptKind::Delivered,
        up_to: 1,
    });
    assert_eq!(
        alice.push_where(QUIET, |f| matches!(f, Frame::ReceiptPush(_))),
        None
    );

    let Frame::ReadersList(r) = alice.request(Readers {
        thread: t,
        message: got.id,
    }) else {
        panic!()
    };
    assert_eq!((r.delivered, r.read), (vec![b.user], vec![b.user]));
}

#[test]
fn a_retried_send_is_stored_once() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let t = direct(&mut alice, b.user);
    let first = send(&mut alice, t, 42, "once");
    let again = send(&mut alice, t, 42, "once");
    assert_eq!(first.message, again.message);
    assert_eq!(history(&mut bob, t).len(), 1);
    assert_eq!(message_push(&mut bob).id, first.message);
    assert_eq!(
        bob.push_where(QUIET, |f| matches!(f, Frame::MessagePush(_))),
        None,
        "no second push"
    );
}

#[test]
fn every_device_of_a_user_gets_every_push() {
    let server = Server::start();
    let (mut alice, a) = server.user("alice");
    let (mut bob_phone, b) = server.user("bob");
    let (mut bob_laptop, b2) = login(&server, "bob", "laptop");
    assert_eq!(b.user, b2.user);
    assert_ne!(b.device, b2.device);
    let (mut alice_tablet, _) = login(&server, "alice", "tablet");
    let t = direct(&mut alice, b.user);
    let sent = send(&mut alice, t, 1, "to all your devices");
    assert_eq!(message_push(&mut bob_phone).id, sent.message);
    assert_eq!(message_push(&mut bob_laptop).id, sent.message);
    // The sender's other device sees it too; the sending device has SENT instead.
    assert_eq!(message_push(&mut alice_tablet).id, sent.message);
    assert_eq!(
        alice.push_where(QUIET, |f| matches!(f, Frame::MessagePush(_))),
        None
    );
    // A read on one device reaches the user's other device.
    bob_phone.request(Receipt {
        thread: t,
        kind: ReceiptKind::Read,
        up_to: sent.message,
    });
    let r = bob_laptop.push_where(WAIT, |f| matches!(f, Frame::ReceiptPush(_)));
    assert_eq!(
        r,
        Some(
            ReceiptPush {
                thread: t,
                user: b.user,
                kind: ReceiptKind::Read,
                up_to: sent.message
            }
            .into()
        )
    );
    let _ = a;
}

#[test]
fn an_offline_member_syncs_everything_once_in_order() {
    let server = Server::start();
    let (mut alice, a) = server.user("alice");
    let (bob, b) = server.user("bob");
    let (mut carol, c) = server.user("carol");
    let (since, bob_token) = {
        let mut bob = bob;
        let (_, _, w) = sync_all(&mut bob, 0, 0);
        (w, b.token.clone())
    }; // bob goes offline
    let Frame::ThreadInfo(g) = alice.request(CreateGroup {
        name: "trip".into(),
        members: vec![b.user, c.user],
    }) else {
        panic!()
    };
    let g = g.thread.id;
    let t = direct(&mut alice, b.user);
    let mut acked = Vec::new();
    for i in 0..30 {
        acked.push(send(&mut alice, t, i, "direct").message);
        acked.push(send(&mut carol, g, i, "group").message);
    }
    // Bob comes back on the same device and syncs in small pages.
    let mut bob = server.connect();
    bob.hello();
    assert_eq!(bob.resume(&bob_token).user, b.user);
    let (threads, messages, watermark) = sync_all(&mut bob, since, 7);
    let text: Vec<&Message> = messages
        .iter()
        .filter(|m| m.kind == MessageKind::Text)
        .collect();
    let ids: HashSet<u64> = text.iter().map(|m| m.id).collect();
    assert_eq!(ids.len(), text.len(), "no duplicates");
    assert_eq!(
        ids,
        acked.iter().copied().collect(),
        "every acked message, nothing else"
    );
    for pair in messages.windows(2) {
        assert!(
            (pair[0].thread, pair[0].id) < (pair[1].thread, pair[1].id),
            "thread order"
        );
    }
    assert!(threads.iter().any(|x| x.id == g) && threads.iter().any(|x| x.id == t));
    // The group's creation notice came along.
    assert!(messages
        .iter()
        .any(|m| m.thread == g && m.kind == MessageKind::System));

    // Receipts that happened meanwhile arrive as cursors.
    let last_in_t = *acked
        .iter()
        .filter(|&&id| text.iter().any(|m| m.id == id && m.thread == t))
        .max()
        .unwrap();
    bob.request(Receipt {
        thread: t,
        kind: ReceiptKind::Read,
        up_to: last_in_t,
    });
    let (threads, messages, _) = sync_all(&mut alice, watermark, 0);
    assert!(messages.is_empty());
    let thread = threads
        .iter()
        .find(|x| x.id == t)
        .expect("the thread changed");
    assert_eq!(
        thread
            .members
            .iter()
            .find(|m| m.user == b.user)
            .unwrap()
            .read,
        last_in_t
    );
    let _ = a;
}

#[test]
fn groups_admins_membership_and_system_messages() {
    let server = Server::start_with(&["--max-group", "3"]);
    let (mut alice, _) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let (mut carol, c) = server.user("carol");
    let (_dave, d) = server.user("dave");
    let Frame::ThreadInfo(info) = alice.request(CreateGroup {
        name: "team".into(),
        members: vec![b.user],
    }) else {
        panic!()
    };
    let g = info.thread.id;
    assert_eq!(info.thread.kind, ThreadKind::Group);
    let created = message_push(&mut bob);
    assert_eq!(system_event(&created).event, SystemEventKind::Created);

    assert_eq!(
        error_code(&bob.request(AddMembers {
            thread: g,
            members: vec![c.user]
        })),
        ErrorCode::NotAdmin
    );
    assert_eq!(
        alice.request(AddMembers {
            thread: g,
            members: vec![c.user]
        }),
        Done {}.into()
    );
    assert_eq!(
        error_code(&alice.request(AddMembers {
            thread: g,
            members: vec![d.user]
        })),
        ErrorCode::GroupFull
    );
    let added = message_push(&mut carol);
    assert_eq!(
        (system_event(&added).event, system_event(&added).subject),
        (SystemEventKind::MemberAdded, c.user)
    );

    // A group message reaches every member; receipts count per member.
    let sent = send(&mut bob, g, 1, "hi all");
    assert_eq!(message_push(&mut carol).id, sent.message);
    carol.request(Receipt {
        thread: g,
        kind: ReceiptKind::Read,
        up_to: sent.message,
    });
    let Frame::ReadersList(r) = bob.request(Readers {
        thread: g,
        message: sent.message,
    }) else {
        panic!()
    };
    assert_eq!(r.read, vec![c.user], "alice has not read it yet");

    assert_eq!(
        alice.request(RemoveMember {
            thread: g,
            user: b.user
        }),
        Done {}.into()
    );
    let removed = bob.push_where(WAIT, |f| matches!(f, Frame::MessagePush(m) if m.message.kind == MessageKind::System && system_event(&m.message).event == SystemEventKind::MemberRemoved));
    assert!(removed.is_some(), "the removed member is told");
    let late = Send {
        thread: g,
        client_msg_id: 2,
        kind: MessageKind::Text,
        body: Bytes::from_static(b"x"),
        reply_to: 0,
    };
    assert_eq!(error_code(&bob.request(late)), ErrorCode::NotMember);
    assert_eq!(
        carol.request(RenameGroup {
            thread: g,
            name: "crew".into()
        }),
        Done {}.into()
    );
    assert_eq!(carol.request(LeaveGroup { thread: g }), Done {}.into());
    let Frame::ThreadInfo(info) = alice.request(GetThread { thread: g }) else {
        panic!()
    };
    assert_eq!(
        (info.thread.name.as_str(), info.thread.members.len()),
        ("crew", 1)
    );
}

#[test]
fn recall_history_paging_and_delete_for_me() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let t = direct(&mut alice, b.user);
    let ids: Vec<u64> = (0..10)
        .map(|i| send(&mut alice, t, i, &format!("m{i}")).message)
        .collect();
    // Backward from the newest, 4 at a time, newest first.
    let Frame::Messages(page) = bob.request(History {
        thread: t,
        anchor: 0,
        direction: Direction::Backward,
        limit: 4,
    }) else {
        panic!()
    };
    assert!(page.more);
    assert_eq!(
        page.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        ids[6..].iter().rev().copied().collect::<Vec<_>>()
    );
    let Frame::Messages(older) = bob.request(History {
        thread: t,
        anchor: ids[6],
        direction: Direction::Backward,
        limit: 4,
    }) else {
        panic!()
    };
    assert_eq!(older.messages[0].id, ids[5]);
    let Frame::Messages(newer) = bob.request(History {
        thread: t,
        anchor: ids[7],
        direction: Direction::Forward,
        limit: 10,
    }) else {
        panic!()
    };
    assert_eq!(
        newer.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        ids[8..].to_vec()
    );
    assert!(!newer.more);

    assert_eq!(
        error_code(&bob.request(Recall {
            thread: t,
            message: ids[3]
        })),
        ErrorCode::NotSender
    );
    assert_eq!(
        alice.request(Recall {
            thread: t,
            message: ids[3]
        }),
        Done {}.into()
    );
    let notice = bob.push_where(
        WAIT,
        |f| matches!(f, Frame::MessagePush(m) if m.message.kind == MessageKind::System),
    );
    let Some(Frame::MessagePush(notice)) = notice else {
        panic!("no RECALLED notice")
    };
    assert_eq!(
        (
            system_event(&notice.message).event,
            system_event(&notice.message).subject
        ),
        (SystemEventKind::Recalled, ids[3])
    );
    let h = history(&mut bob, t);
    let tomb = h.iter().find(|m| m.id == ids[3]).unwrap();
    assert!(
        tomb.recalled && tomb.body.is_empty(),
        "history shows a tombstone"
    );

    assert_eq!(
        bob.request(DeleteForMe {
            thread: t,
            message: ids[0]
        }),
        Done {}.into()
    );
    assert!(history(&mut bob, t).iter().all(|m| m.id != ids[0]));
    assert!(
        history(&mut alice, t).iter().any(|m| m.id == ids[0]),
        "only for me"
    );
}

#[test]
fn thread_list_private_state_and_unread_counts() {
    let server = Server::start();
    let (mut alice, a) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let (mut carol, _) = server.user("carol");
    let ab = direct(&mut bob, a.user);
    let ac = direct(&mut carol, a.user);
    send(&mut bob, ab, 1, "from bob");
    send(&mut carol, ac, 1, "from carol 1");
    send(&mut carol, ac, 2, "from carol 2");
    let list = alice.thread_list(10);
    let rows: Vec<(u64, u32, &str)> = list
        .threads
        .iter()
        .map(|t| (t.id, t.unread, t.name.as_str()))
        .collect();
    assert_eq!(rows, vec![(ac, 2, "carol"), (ab, 1, "bob")]);
    assert_eq!(
        list.threads[0].last_message.as_ref().map(|m| &m.body[..]),
        Some(&b"from carol 2"[..])
    );
    alice.request(SetThreadState {
        thread: ab,
        muted: true,
        hidden: false,
        label: "Bobby".into(),
    });
    let Frame::ThreadInfo(info) = alice.request(GetThread { thread: ab }) else {
        panic!()
    };
    assert!(info.thread.muted);
    assert_eq!(info.thread.label, "Bobby");
    let _ = b;
}

#[test]
fn contacts_presence_and_typing() {
    let server = Server::start();
    let (mut alice, a) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let Frame::User(u) = alice.request(LookupUser {
        handle: "bob".into(),
    }) else {
        panic!()
    };
    assert_eq!(u.user.id, b.user);
    assert_eq!(
        error_code(&alice.request(LookupUser {
            handle: "nobody".into()
        })),
        ErrorCode::UnknownUser
    );
    // Presence of a non-contact is not disclosed, neither by subscription nor by query.
    assert_eq!(
        error_code(&alice.request(PresenceSubscribe {
            users: vec![b.user]
        })),
        ErrorCode::NotContact
    );
    let query = alice.request(PresenceQuery {
        users: vec![b.user],
    });
    assert_eq!(error_code(&query), ErrorCode::NotContact);
    assert_eq!(alice.request(ContactAdd { user: b.user }), Done {}.into());
    let Frame::Contacts(list) = alice.request(ContactList {}) else {
        panic!()
    };
    assert_eq!(
        list.users,
        vec![UserInfo {
            id: b.user,
            handle: "bob".into()
        }]
    );
    let Frame::PresenceList(p) = alice.request(PresenceQuery {
        users: vec![b.user],
    }) else {
        panic!()
    };
    assert!(p.entries[0].online);
    assert_eq!(
        alice.request(PresenceSubscribe {
            users: vec![b.user]
        }),
        Done {}.into()
    );

    let t = direct(&mut alice, b.user);
    // Never answered; the session still gives it a non-zero id (PROTOCOL.md section 4).
    bob.send_request(Typing {
        thread: t,
        active: true,
    });
    let typing = alice.push_where(WAIT, |f| matches!(f, Frame::TypingPush(_)));
    assert_eq!(
        typing,
        Some(
            TypingPush {
                thread: t,
                user: b.user,
                active: true
            }
            .into()
        )
    );

    drop(bob); // bob goes offline: alice sees it, with a last-seen time
    let off = alice.push_where(
        Duration::from_secs(5),
        |f| matches!(f, Frame::PresencePush(p) if !p.presence.online),
    );
    let Some(Frame::PresencePush(off)) = off else {
        panic!("no offline presence push")
    };
    assert_eq!(off.presence.user, b.user);
    assert!(off.presence.last_seen > 0);
    let _ = a;
}

#[test]
fn authorization_and_bad_arguments_get_codes_and_keep_the_connection() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (_bob, b) = server.user("bob");
    let (mut eve, _) = server.user("eve");
    let t = direct(&mut alice, b.user);
    let text = |thread, body: &'static [u8]| Send {
        thread,
        client_msg_id: 9,
        kind: MessageKind::Text,
        body: Bytes::from_static(body),
        reply_to: 0,
    };
    assert_eq!(
        error_code(&eve.request(text(t, b"let me in"))),
        ErrorCode::NotMember
    );
    assert_eq!(
        error_code(&eve.request(History {
            thread: t,
            anchor: 0,
            direction: Direction::Backward,
            limit: 10
        })),
        ErrorCode::NotMember
    );
    assert_eq!(
        error_code(&eve.request(text(987_654_321, b"?"))),
        ErrorCode::UnknownThread
    );
    assert_eq!(
        error_code(&eve.request(OpenDirect { peer: 987_654_321 })),
        ErrorCode::UnknownUser
    );
    let big = Send {
        thread: t,
        client_msg_id: 1,
        kind: MessageKind::Text,
        body: Bytes::from(vec![0u8; 16 * 1024 + 1]),
        reply_to: 0,
    };
    assert_eq!(error_code(&alice.request(big)), ErrorCode::BodyTooLarge);
    let Frame::ThreadInfo(g) = alice.request(CreateGroup {
        name: "g".into(),
        members: vec![b.user],
    }) else {
        panic!()
    };
    assert_eq!(
        error_code(&eve.request(AddMembers {
            thread: g.thread.id,
            members: vec![]
        })),
        ErrorCode::NotMember
    );
    // Nothing was stored, and both connections still work.
    assert!(history(&mut alice, t).is_empty());
    assert!(matches!(eve.request(ContactList {}), Frame::Contacts(_)));
    assert!(matches!(alice.request(ContactList {}), Frame::Contacts(_)));
}

#[test]
fn media_upload_message_and_download() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let content: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let Frame::MediaUpload(up) = alice.request(MediaBegin {
        total_len: content.len() as u64,
        mime: "image/png".into(),
        hash: Bytes::copy_from_slice(blake3::hash(&content).as_bytes()),
    }) else {
        panic!()
    };
    for (i, chunk) in content.chunks(up.chunk_max as usize).enumerate() {
        let offset = (i * up.chunk_max as usize) as u64;
        let reply = alice.request(MediaChunk {
            upload: up.upload,
            offset,
            data: Bytes::copy_from_slice(chunk),
        });
        assert_eq!(reply, Done {}.into());
    }
    let Frame::MediaRef(r) = alice.request(MediaCommit { upload: up.upload }) else {
        panic!()
    };
    let t = direct(&mut alice, b.user);
    alice.request(Send {
        thread: t,
        client_msg_id: 1,
        kind: MessageKind::Media,
        body: r.media.clone(),
        reply_to: 0,
    });
    let m = message_push(&mut bob);
    let mut got = Vec::new();
    while (got.len() as u64) < r.total_len {
        let Frame::MediaData(d) = bob.request(MediaGet {
            media: m.body.slice(..32),
            offset: got.len() as u64,
            max_len: 65_536,
            thread: m.thread,
        }) else {
            panic!()
        };
        assert!(!d.data.is_empty());
        got.extend_from_slice(&d.data);
    }
    assert_eq!(got, content);
}

#[test]
fn messages_and_receipts_survive_a_restart() {
    let mut server = Server::start();
    let (mut alice, a) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let t = direct(&mut alice, b.user);
    let ids: Vec<u64> = (0..5)
        .map(|i| send(&mut alice, t, i, "durable").message)
        .collect();
    bob.request(Receipt {
        thread: t,
        kind: ReceiptKind::Read,
        up_to: ids[2],
    });
    drop((alice, bob));
    server.restart();
    let mut bob = server.resumed(&b.token);
    assert_eq!(
        history(&mut bob, t)
            .iter()
            .map(|m| m.id)
            .collect::<Vec<_>>(),
        ids
    );
    let Frame::ThreadInfo(info) = bob.request(GetThread { thread: t }) else {
        panic!()
    };
    assert_eq!(
        info.thread
            .members
            .iter()
            .find(|m| m.user == b.user)
            .unwrap()
            .read,
        ids[2]
    );
    // Ids keep increasing after the restart.
    let mut alice = server.resumed(&a.token);
    assert!(send(&mut alice, t, 99, "after").message > ids[4]);
}

#[test]
fn recall_after_the_configured_window_is_refused() {
    let server = Server::start_with(&["--recall-window-secs", "0"]);
    let (mut alice, _) = server.user("alice");
    let (_bob, b) = server.user("bob");
    let t = direct(&mut alice, b.user);
    let sent = send(&mut alice, t, 1, "too late to take back");
    std::thread::sleep(Duration::from_millis(5));
    let reply = alice.request(Recall {
        thread: t,
        message: sent.message,
    });
    assert_eq!(error_code(&reply), ErrorCode::RecallWindowExpired);
    assert!(!history(&mut alice, t)[0].recalled);
}

#[test]
fn a_new_device_syncs_from_its_login_watermark_and_names_users_by_id() {
    let server = Server::start();
    let (mut alice, a) = server.user("alice");
    let (_bob, b) = server.user("bob");
    let t = direct(&mut alice, b.user);
    let old = send(&mut alice, t, 1, "before the new device");
    let (mut tablet, auth) = login(&server, "bob", "tablet");
    assert!(
        auth.watermark >= old.message,
        "the login watermark covers what was committed"
    );
    let new = send(&mut alice, t, 2, "after");
    let (_, messages, _) = sync_all(&mut tablet, auth.watermark, 0);
    assert_eq!(
        messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![new.message]
    );
    let Frame::Users(users) = tablet.request(GetUsers {
        users: vec![a.user, 424_242],
    }) else {
        panic!()
    };
    assert_eq!(
        users.users,
        vec![UserInfo {
            id: a.user,
            handle: "alice".into()
        }]
    );
}

#[test]
fn a_member_removed_while_offline_learns_it_from_sync() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let (_carol, c) = server.user("carol");
    let Frame::ThreadInfo(info) = alice.request(CreateGroup {
        name: "team".into(),
        members: vec![b.user, c.user],
    }) else {
        panic!("CREATE_GROUP")
    };
    let g = info.thread.id;
    send(&mut alice, g, 1, "hello team");
    let (_, _, watermark) = sync_all(&mut bob, 0, 0);
    drop(bob);
    assert_eq!(
        alice.request(RemoveMember {
            thread: g,
            user: b.user
        }),
        Done {}.into()
    );
    send(&mut alice, g, 2, "bob is gone");

    let (mut bob, _) = login(&server, "bob", "test");
    let (threads, messages, _) = sync_all(&mut bob, watermark, 0);
    let t = synced_thread(&threads, g).expect("the group bob was removed from is in his sync");
    assert!(
        t.members.iter().all(|m| m.user != b.user),
        "shown without bob among its members"
    );
    let notices: Vec<&Message> = messages.iter().filter(|m| m.thread == g).collect();
    assert_eq!(notices.len(), 1, "the removal notice, nothing after it");
    let notice = system_event(notices[0]);
    assert_eq!(
        (notice.event, notice.subject),
        (SystemEventKind::MemberRemoved, b.user)
    );
    assert_eq!(t.last_msg_id, notices[0].id);
    let list = bob.thread_list(100);
    assert!(list.threads.iter().all(|t| t.id != g));

    // Added back: the tombstone is replaced by a membership again.
    assert_eq!(
        alice.request(AddMembers {
            thread: g,
            members: vec![b.user]
        }),
        Done {}.into()
    );
    let (threads, _, _) = sync_all(&mut bob, watermark, 0);
    let t = synced_thread(&threads, g).unwrap();
    assert!(t.members.iter().any(|m| m.user == b.user));
}

#[test]
fn thread_state_set_on_one_device_reaches_another_through_sync() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (mut phone, b) = server.user("bob");
    let t = direct(&mut alice, b.user);
    send(&mut alice, t, 1, "hi");
    let (mut laptop, _) = login(&server, "bob", "laptop");
    let (_, _, watermark) = sync_all(&mut laptop, 0, 0);

    let state = SetThreadState {
        thread: t,
        muted: true,
        hidden: false,
        label: "alice (work)".into(),
    };
    assert_eq!(phone.request(state), Done {}.into());
    let (threads, messages, watermark) = sync_all(&mut laptop, watermark, 0);
    let seen = synced_thread(&threads, t).expect("the muted and labelled thread is in the sync");
    assert_eq!((seen.muted, seen.label.as_str()), (true, "alice (work)"));
    assert!(messages.is_empty());

    let hide = SetThreadState {
        thread: t,
        muted: true,
        hidden: true,
        label: "alice (work)".into(),
    };
    assert_eq!(phone.request(hide), Done {}.into());
    let (threads, _, _) = sync_all(&mut laptop, watermark, 0);
    let seen = synced_thread(&threads, t).expect("the hidden thread is in the sync");
    assert!(seen.hidden);
}

#[test]
fn a_message_deleted_for_me_on_one_device_is_deleted_on_another_through_sync() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (mut phone, b) = server.user("bob");
    let t = direct(&mut alice, b.user);
    let gone = send(&mut alice, t, 1, "delete me");
    send(&mut alice, t, 2, "keep me");
    let (mut laptop, _) = login(&server, "bob", "laptop");
    let (_, _, watermark) = sync_all(&mut laptop, 0, 0);

    assert_eq!(
        phone.request(DeleteForMe {
            thread: t,
            message: gone.message
        }),
        Done {}.into()
    );
    let batches = sync_walk(&mut laptop, watermark, 0);
    let deleted: Vec<MessageRef> = batches.iter().flat_map(|b| b.deleted.clone()).collect();
    assert_eq!(
        deleted,
        vec![MessageRef {
            thread: t,
            id: gone.message
        }]
    );
    let watermark = batches.last().unwrap().watermark;
    let again: usize = sync_walk(&mut laptop, watermark, 0)
        .iter()
        .map(|b| b.deleted.len())
        .sum();
    assert_eq!(again, 0, "reported once");
}

#[test]
fn readers_leave_out_the_sender_whose_cursors_are_at_the_message() {
    let server = Server::start();
    let (mut alice, a) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let (_carol, c) = server.user("carol");
    let Frame::ThreadInfo(info) = alice.request(CreateGroup {
        name: "team".into(),
        members: vec![b.user, c.user],
    }) else {
        panic!("CREATE_GROUP")
    };
    let g = info.thread.id;
    let m = send(&mut alice, g, 1, "who read this?").message;
    assert_eq!(
        bob.request(Receipt {
            thread: g,
            kind: ReceiptKind::Read,
            up_to: m
        }),
        Done {}.into()
    );
    let Frame::ThreadInfo(info) = alice.request(GetThread { thread: g }) else {
        panic!("GET_THREAD")
    };
    let me = info
        .thread
        .members
        .iter()
        .find(|x| x.user == a.user)
        .unwrap();
    assert!(
        me.delivered >= m && me.read >= m,
        "the sender's cursors are at it"
    );
    for asker in [&mut alice, &mut bob] {
        let Frame::ReadersList(r) = asker.request(Readers {
            thread: g,
            message: m,
        }) else {
            panic!("READERS")
        };
        assert_eq!((r.delivered, r.read), (vec![b.user], vec![b.user]));
    }
}

#[test]
fn a_receipt_in_a_group_reaches_the_sender_and_not_every_member() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (mut bob, b) = server.user("bob");
    let (mut carol, c) = server.user("carol");
    let Frame::ThreadInfo(info) = alice.request(CreateGroup {
        name: "team".into(),
        members: vec![b.user, c.user],
    }) else {
        panic!("CREATE_GROUP")
    };
    let g = info.thread.id;
    let m = send(&mut alice, g, 1, "hi all").message;
    let read = Receipt {
        thread: g,
        kind: ReceiptKind::Read,
        up_to: m,
    };
    assert_eq!(bob.request(read), Done {}.into());
    assert_eq!(
        alice.push_where(WAIT, |f| matches!(f, Frame::ReceiptPush(_))),
        Some(
            ReceiptPush {
                thread: g,
                user: b.user,
                kind: ReceiptKind::Read,
                up_to: m
            }
            .into()
        ),
        "the sender gets the tick"
    );
    // Carol's request on the thread runs on its owner after the receipt, so its answer comes
    // after anything that receipt pushed to her.
    let Frame::ThreadInfo(_) = carol.request(GetThread { thread: g }) else {
        panic!("GET_THREAD")
    };
    assert_eq!(
        carol.push_where(Duration::ZERO, |f| matches!(f, Frame::ReceiptPush(_))),
        None,
        "a member who sent nothing is not told"
    );
    let Frame::ReadersList(r) = carol.request(Readers {
        thread: g,
        message: m,
    }) else {
        panic!("READERS")
    };
    assert_eq!(r.read, vec![b.user], "READERS still says who read");
}

/// Regression: messages deleted for the caller counted against HISTORY's page limit, so a
/// page of the newest messages, all deleted, came back empty with `more` set: no message to
/// anchor the next page on, and the older messages out of reach.
#[test]
fn history_pages_are_full_even_when_the_newest_messages_were_deleted_for_me() {
    let server = Server::start();
    let (mut alice, a) = server.user("alice");
    let (mut bob, _) = server.user("bob");
    let t = direct(&mut bob, a.user);
    let ids: Vec<u64> = (1..=5)
        .map(|i| send(&mut bob, t, i, &format!("m{i}")).message)
        .collect();
    for &message in &ids[2..] {
        assert_eq!(
            alice.request(DeleteForMe { thread: t, message }),
            Done {}.into()
        );
    }
    let Frame::Messages(page) = alice.request(History {
        thread: t,
        anchor: 0,
        direction: Direction::Backward,
        limit: 2,
    }) else {
        panic!("HISTORY")
    };
    let got: Vec<u64> = page.messages.iter().map(|m| m.id).collect();
    assert_eq!(got, vec![ids[1], ids[0]], "the two messages not deleted");
    assert!(!page.more, "nothing older is left");
}
