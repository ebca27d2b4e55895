//! Idempotency and limits over real TCP against a real server: `client_msg_id` 0, the dedupe
//! window across a restart, the per-user caps, replies that must fit the announced frame, and
//! every limit of PROTOCOL.md section 9 that a client can hit.

mod util;

use std::time::Duration;

use bytes::Bytes;
use courier_protocol::*;
use util::{direct, error_code, send, Server, TestConn};

fn bodies(c: &mut TestConn, thread: u64) -> Vec<Bytes> {
    match c.request(History {
        thread,
        anchor: 0,
        direction: Direction::Forward,
        limit: 500,
    }) {
        Frame::Messages(m) => m.messages.into_iter().map(|m| m.body).collect(),
        other => panic!("HISTORY: {other:?}"),
    }
}

#[test]
fn client_msg_id_zero_stores_every_send() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (_bob, bob_ok) = server.user("bob");
    let thread = direct(&mut alice, bob_ok.user);
    let first = send(&mut alice, thread, 0, "one");
    let second = send(&mut alice, thread, 0, "two");
    assert_ne!(
        first.message, second.message,
        "a second SEND with client_msg_id 0 must be a new message, not a retry of the first"
    );
    assert_eq!(second.client_msg_id, 0);
    assert_eq!(
        bodies(&mut alice, thread),
        [Bytes::from_static(b"one"), Bytes::from_static(b"two")]
    );
    // Pipelined, so both are likely handled in one server round (the round's own dedupe).
    let [x, y] = ["four", "five"].map(|body| {
        alice.send_request(Send {
            thread,
            client_msg_id: 0,
            kind: MessageKind::Text,
            body: Bytes::from_static(body.as_bytes()),
            reply_to: 0,
        })
    });
    let ids: Vec<u64> = [x, y]
        .map(|id| match alice.reply(id, util::REPLY_TIMEOUT) {
            Frame::Sent(s) => s.message,
            other => panic!("SEND: {other:?}"),
        })
        .into();
    assert_ne!(ids[0], ids[1]);
    assert_eq!(bodies(&mut alice, thread).len(), 4);
    // Non-zero ids stay idempotent.
    let a = send(&mut alice, thread, 9, "three");
    let b = send(&mut alice, thread, 9, "three again");
    assert_eq!(a.message, b.message);
    assert_eq!(bodies(&mut alice, thread).len(), 5);
}

#[test]
fn a_retry_inside_the_dedupe_window_returns_the_original_id_also_after_a_restart() {
    let mut server = Server::start();
    let (mut alice, ok) = server.user("alice");
    let (_bob, bob_ok) = server.user("bob");
    let thread = direct(&mut alice, bob_ok.user);
    let first = send(&mut alice, thread, 77, "once");
    assert_eq!(send(&mut alice, thread, 77, "once").message, first.message);
    drop(alice);
    server.restart();
    let mut alice = server.resumed(&ok.token);
    assert_eq!(send(&mut alice, thread, 77, "once").message, first.message);
    assert_eq!(bodies(&mut alice, thread).len(), 1);
}

#[test]
fn retries_of_ids_sent_out_of_order_are_stored_once_also_after_a_restart() {
    // The server skips the dedupe lookups for an id above the sender's highest in the thread
    // (chat::dedupe); ids below it, new or retried, still go through them, and after a
    // restart the bound is learnt from the store.
    let mut server = Server::start();
    let (mut alice, ok) = server.user("alice");
    let (_bob, bob_ok) = server.user("bob");
    let thread = direct(&mut alice, bob_ok.user);
    let nine = send(&mut alice, thread, 9, "nine").message;
    let four = send(&mut alice, thread, 4, "four").message;
    assert_ne!(four, nine, "an id below the highest can be new");
    assert_eq!(send(&mut alice, thread, 4, "four").message, four);
    drop(alice);
    server.restart();
    let mut alice = server.resumed(&ok.token);
    assert_eq!(send(&mut alice, thread, 9, "nine").message, nine);
    assert_eq!(send(&mut alice, thread, 4, "four").message, four);
    let six = send(&mut alice, thread, 6, "six").message;
    assert!(![four, nine].contains(&six));
    assert_eq!(send(&mut alice, thread, 6, "six").message, six);
    let ten = send(&mut alice, thread, 10, "ten").message;
    assert_eq!(send(&mut alice, thread, 10, "ten").message, ten);
    assert_eq!(bodies(&mut alice, thread).len(), 4);
}

#[test]
fn a_retry_after_the_dedupe_window_is_a_new_message() {
    let server = Server::start_with(&["--dedupe-window-secs", "1"]);
    let (mut alice, _) = server.user("alice");
    let (_bob, bob_ok) = server.user("bob");
    let thread = direct(&mut alice, bob_ok.user);
    let first = send(&mut alice, thread, 5, "early");
    assert_eq!(send(&mut alice, thread, 5, "early").message, first.message);
    // Message ids are microsecond times: once the window has passed, the entry is expired
    // whether or not a compaction has removed it yet.
    std::thread::sleep(Duration::from_millis(1_200));
    let late = send(&mut alice, thread, 5, "late");
    assert_ne!(late.message, first.message);
    assert_eq!(bodies(&mut alice, thread).len(), 2);
}

/// Creates `n` accounts `{prefix}0`, `{prefix}1`, … in the stopped `server`'s data directory
/// (restarting it) and returns their user ids in order.
fn provision(server: &mut Server, prefix: &str, n: usize) -> Vec<u64> {
    server.stop();
    let out = server.data_dir.with_file_name(format!("{prefix}users.txt"));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["admin", "provision", "--data-dir"])
        .arg(&server.data_dir)
        .args(["--users", &n.to_string(), "--prefix", prefix])
        .args([
            "--password",
            util::PASSWORD,
            "--argon2-m-kib",
            "64",
            "--out",
        ])
        .arg(&out)
        .status()
        .expect("run courier admin provision");
    assert!(status.success());
    server.restart();
    let text = std::fs::read_to_string(&out).expect("the users file");
    let mut users: Vec<(u64, u64)> = text
        .lines()
        .map(|l| {
            let mut f = l.split(' ');
            let id = f.next().unwrap().parse().unwrap();
            let n = f.next().unwrap()[prefix.len()..].parse().unwrap();
            (n, id)
        })
        .collect();
    users.sort_unstable();
    users.into_iter().map(|(_, id)| id).collect()
}

/// Sends every frame at once (pipelined), then returns the replies in order.
fn pipeline(c: &mut TestConn, frames: Vec<Frame>) -> Vec<Frame> {
    let ids: Vec<u32> = frames.into_iter().map(|f| c.send_request(f)).collect();
    ids.into_iter()
        .map(|id| c.reply(id, util::REPLY_TIMEOUT))
        .collect()
}

/// The encoded `len` of `frame` (what a client compares with `WELCOME.max_frame`).
fn frame_len(frame: &Frame) -> usize {
    let mut out = bytes::BytesMut::new();
    encode(1, frame, &mut out);
    out.len() - 4
}

fn is_done(f: &Frame) -> bool {
    matches!(f, Frame::Done(_))
}

#[test]
fn devices_per_account_are_capped() {
    let server = Server::start();
    let (_first, _) = server.user("alice"); // device "test", the first of 100
    for i in 1..100 {
        let mut c = server.connect();
        c.hello();
        c.login("alice", util::PASSWORD, &format!("device{i}"));
    }
    let mut c = server.connect();
    c.hello();
    let refused = c.try_login("alice", util::PASSWORD, "one-too-many");
    assert_eq!(error_code(&refused), ErrorCode::TooManyDevices);
    // A device name already in use still logs in, on the same connection after the refusal.
    c.login("alice", util::PASSWORD, "device7");
}

#[test]
fn contacts_are_capped_and_the_list_always_fits_the_announced_frame() {
    // 20,000 bytes carry 446 contacts of 32-byte handles: the default cap shrinks to that.
    let mut server = Server::start_with(&["--max-frame", "20000", "--rate-limit", "100000"]);
    let prefix = "contact_with_a_long_handle_";
    let others = provision(&mut server, prefix, 600);
    let (mut alice, _) = server.user("alice");
    let max_frame = {
        let mut c = server.connect();
        c.hello().max_frame as usize
    };
    let replies = pipeline(
        &mut alice,
        others
            .iter()
            .map(|&user| ContactAdd { user }.into())
            .collect(),
    );
    let added = replies.iter().take_while(|f| is_done(f)).count();
    assert!(
        added < others.len(),
        "every one of {} contacts was accepted",
        others.len()
    );
    for f in &replies[added..] {
        assert_eq!(error_code(f), ErrorCode::TooManyContacts);
    }
    let list = alice.request(ContactList {});
    let Frame::Contacts(c) = &list else {
        panic!("CONTACT_LIST: {list:?}")
    };
    assert_eq!(c.users.len(), added);
    assert!(
        frame_len(&list) <= max_frame,
        "CONTACTS is {} bytes, over the announced max_frame {max_frame}",
        frame_len(&list)
    );
    // PRESENCE_QUERY about more users than anyone may have as contacts is refused, not
    // answered with a list over the frame limit.
    let many = vec![others[0]; added + 1];
    assert_eq!(
        error_code(&alice.request(PresenceQuery { users: many })),
        ErrorCode::InvalidArgument
    );
    let reply = alice.request(PresenceQuery {
        users: vec![others[0]; added],
    });
    assert!(matches!(reply, Frame::PresenceList(_)) && frame_len(&reply) <= max_frame);
    // GET_USERS is capped the same way.
    let reply = alice.request(GetUsers {
        users: others.clone(),
    });
    assert_eq!(error_code(&reply), ErrorCode::InvalidArgument);
    let reply = alice.request(GetUsers {
        users: others[..added].to_vec(),
    });
    assert!(matches!(reply, Frame::Users(_)) && frame_len(&reply) <= max_frame);
}

#[test]
fn the_contact_cap_counts_this_rounds_adds_and_removes() {
    let mut server = Server::start_with(&["--max-contacts", "3"]);
    let others = provision(&mut server, "pal", 5);
    let (mut alice, _) = server.user("alice");
    // Pipelined: likely one round, which the store cannot see yet.
    let replies = pipeline(
        &mut alice,
        others[..4]
            .iter()
            .map(|&user| ContactAdd { user }.into())
            .collect(),
    );
    assert!(replies[..3].iter().all(is_done), "{replies:?}");
    assert_eq!(error_code(&replies[3]), ErrorCode::TooManyContacts);
    // Adding a contact again is not an error, even at the cap.
    assert!(is_done(&alice.request(ContactAdd { user: others[0] })));
    let replies = pipeline(
        &mut alice,
        vec![
            ContactRemove { user: others[0] }.into(),
            ContactRemove { user: others[0] }.into(),
            ContactAdd { user: others[3] }.into(),
            ContactAdd { user: others[4] }.into(),
        ],
    );
    assert!(replies[..3].iter().all(is_done), "{replies:?}");
    assert_eq!(error_code(&replies[3]), ErrorCode::TooManyContacts);
    let Frame::Contacts(c) = alice.request(ContactList {}) else {
        panic!("CONTACT_LIST")
    };
    let mut ids: Vec<u64> = c.users.iter().map(|u| u.id).collect();
    ids.sort_unstable();
    // Ids are not in registration order (each is in its handle's partition).
    let mut expected = [others[1], others[2], others[3]];
    expected.sort_unstable();
    assert_eq!(ids, expected);
}

#[test]
fn delete_for_me_entries_per_thread_are_capped() {
    let server = Server::start_with(&["--rate-limit", "100000"]);
    let (mut alice, _) = server.user("alice");
    let (_bob, bob_ok) = server.user("bob");
    let thread = direct(&mut alice, bob_ok.user);
    let sends = (1..=1001u64)
        .map(|i| {
            Send {
                thread,
                client_msg_id: i,
                kind: MessageKind::Text,
                body: Bytes::from_static(b"x"),
                reply_to: 0,
            }
            .into()
        })
        .collect();
    let ids: Vec<u64> = pipeline(&mut alice, sends)
        .into_iter()
        .map(|f| match f {
            Frame::Sent(s) => s.message,
            other => panic!("SEND: {other:?}"),
        })
        .collect();
    let deletes = ids
        .iter()
        .map(|&message| DeleteForMe { thread, message }.into())
        .collect();
    let replies = pipeline(&mut alice, deletes);
    assert!(replies[..1000].iter().all(is_done));
    assert_eq!(error_code(&replies[1000]), ErrorCode::TooManyDeleted);
    // Deleting an already deleted message again is not an error.
    assert!(is_done(&alice.request(DeleteForMe {
        thread,
        message: ids[0]
    })));
    // The refused one is still visible; the newest deleted one is not.
    let Frame::Messages(page) = alice.request(History {
        thread,
        anchor: 0,
        direction: Direction::Backward,
        limit: 2,
    }) else {
        panic!("HISTORY")
    };
    assert_eq!(page.messages.first().map(|m| m.id), Some(ids[1000]));
    assert!(page.messages.iter().all(|m| m.id != ids[999]));
}

#[test]
fn uploads_in_progress_per_user_are_capped() {
    let server = Server::start();
    let (mut alice, ok) = server.user("alice");
    let mut phone = server.resumed(&ok.token);
    // Distinct content each time: a MEDIA_BEGIN of the same content resumes its upload.
    let content = |i: u8| [b'a', b'b', i];
    let begin = |i: u8| MediaBegin {
        total_len: 3,
        mime: "text/plain".into(),
        hash: Bytes::copy_from_slice(blake3::hash(&content(i)).as_bytes()),
    };
    let mut uploads = Vec::new();
    for i in 0..8 {
        // Alternate devices: the cap is per user, whichever shard a connection is on.
        let c = if i % 2 == 0 { &mut alice } else { &mut phone };
        match c.request(begin(i)) {
            Frame::MediaUpload(u) => uploads.push(u.upload),
            other => panic!("MEDIA_BEGIN {i}: {other:?}"),
        }
    }
    assert_eq!(
        error_code(&alice.request(begin(8))),
        ErrorCode::TooManyUploads
    );
    assert_eq!(
        error_code(&phone.request(begin(9))),
        ErrorCode::TooManyUploads
    );
    // Finishing one frees its place.
    assert!(is_done(&alice.request(MediaChunk {
        upload: uploads[0],
        offset: 0,
        data: Bytes::copy_from_slice(&content(0)),
    })));
    assert!(matches!(
        alice.request(MediaCommit { upload: uploads[0] }),
        Frame::MediaRef(_)
    ));
    assert!(matches!(phone.request(begin(9)), Frame::MediaUpload(_)));
    // Another user is not affected.
    let (mut bob, _) = server.user("bob");
    assert!(matches!(bob.request(begin(8)), Frame::MediaUpload(_)));
}

#[test]
fn chunk_max_fits_a_configured_max_frame() {
    let server = Server::start_with(&["--max-frame", "20000"]);
    let (mut alice, _) = server.user("alice");
    let Frame::MediaUpload(up) = alice.request(MediaBegin {
        total_len: 50_000,
        mime: "application/octet-stream".into(),
        hash: Bytes::copy_from_slice(&[1; 32]),
    }) else {
        panic!("MEDIA_BEGIN")
    };
    let chunk = Frame::from(MediaChunk {
        upload: up.upload,
        offset: 0,
        data: vec![7u8; up.chunk_max as usize].into(),
    });
    assert!(
        frame_len(&chunk) <= 20_000,
        "a MEDIA_CHUNK of chunk_max {} bytes is {} bytes, over max_frame 20000",
        up.chunk_max,
        frame_len(&chunk)
    );
    assert!(is_done(&alice.request(chunk)));
}

#[test]
fn list_threads_with_limit_0_returns_a_default_page() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (_bob, bob_ok) = server.user("bob");
    let creates = (0..60)
        .map(|i| {
            CreateGroup {
                name: format!("group {i}"),
                members: vec![bob_ok.user],
            }
            .into()
        })
        .collect();
    assert!(pipeline(&mut alice, creates)
        .iter()
        .all(|f| matches!(f, Frame::ThreadInfo(_))));
    let page = alice.thread_list(0);
    assert_eq!(
        page.threads.len(),
        50,
        "limit 0 means the default page of 50"
    );
    assert!(page.more);
}

/// Every limit of PROTOCOL.md section 9 that a request can break, each with its error.
#[test]
fn every_documented_limit_is_enforced_with_its_error() {
    let server = Server::start();
    let (mut alice, _) = server.user("alice");
    let (_bob, bob_ok) = server.user("bob");
    let group = match alice.request(CreateGroup {
        name: "ok".into(),
        members: vec![bob_ok.user],
    }) {
        Frame::ThreadInfo(t) => t.thread.id,
        other => panic!("CREATE_GROUP: {other:?}"),
    };
    let name = |n: usize| "n".repeat(n);
    let media = |total_len: u64, mime: &str| MediaBegin {
        total_len,
        mime: mime.into(),
        hash: Bytes::copy_from_slice(&[total_len as u8; 32]),
    };
    let state = |label: String| SetThreadState {
        thread: group,
        muted: false,
        hidden: false,
        label,
    };
    let cases: Vec<(&str, Frame, Option<ErrorCode>)> = vec![
        (
            "group name of 64 bytes",
            CreateGroup {
                name: name(64),
                members: vec![],
            }
            .into(),
            None,
        ),
        (
            "group name of 65 bytes",
            CreateGroup {
                name: name(65),
                members: vec![],
            }
            .into(),
            Some(ErrorCode::InvalidArgument),
        ),
        (
            "empty group name",
            CreateGroup {
                name: String::new(),
                members: vec![],
            }
            .into(),
            Some(ErrorCode::InvalidArgument),
        ),
        (
            "blank group name",
            CreateGroup {
                name: "   ".into(),
                members: vec![],
            }
            .into(),
            Some(ErrorCode::InvalidArgument),
        ),
        (
            "rename to 65 bytes",
            RenameGroup {
                thread: group,
                name: name(65),
            }
            .into(),
            Some(ErrorCode::InvalidArgument),
        ),
        ("label of 64 bytes", state(name(64)).into(), None),
        (
            "label of 65 bytes",
            state(name(65)).into(),
            Some(ErrorCode::InvalidArgument),
        ),
        ("MIME type of 255 bytes", media(10, &name(255)).into(), None),
        (
            "MIME type of 256 bytes",
            media(10, &name(256)).into(),
            Some(ErrorCode::InvalidArgument),
        ),
        (
            "empty MIME type",
            media(10, "").into(),
            Some(ErrorCode::InvalidArgument),
        ),
        (
            "zero-length media",
            media(0, "image/png").into(),
            Some(ErrorCode::InvalidArgument),
        ),
        (
            "media over 100 MiB",
            media((100 << 20) + 1, "image/png").into(),
            Some(ErrorCode::MediaTooLarge),
        ),
        (
            "body over 16 KiB",
            Send {
                thread: group,
                client_msg_id: 1,
                kind: MessageKind::Text,
                body: vec![0u8; 16_385].into(),
                reply_to: 0,
            }
            .into(),
            Some(ErrorCode::BodyTooLarge),
        ),
    ];
    for (what, frame, expected) in cases {
        let reply = alice.request(frame);
        match expected {
            Some(code) => assert_eq!(error_code(&reply), code, "{what}: {reply:?}"),
            None => assert!(!matches!(reply, Frame::ErrorReply(_)), "{what}: {reply:?}"),
        }
    }

    // Device names: 1 to 64 bytes, at REGISTER and LOGIN, checked before anything is created.
    for (device, ok) in [(name(64), true), (name(65), false), (String::new(), false)] {
        for register in [true, false] {
            let mut c = server.connect();
            c.hello();
            let reply = if register {
                c.try_register(
                    &format!("carol{}{}", device.len(), register as u8),
                    util::PASSWORD,
                    &device,
                )
            } else {
                c.try_login("alice", util::PASSWORD, &device)
            };
            if ok {
                assert!(
                    matches!(reply, Frame::AuthOk(_)),
                    "device of {} bytes: {reply:?}",
                    device.len()
                );
            } else {
                assert_eq!(
                    error_code(&reply),
                    ErrorCode::InvalidArgument,
                    "device of {} bytes",
                    device.len()
                );
            }
        }
    }
    let mut c = server.connect();
    c.hello();
    assert_eq!(
        error_code(&c.try_register("carol650", util::PASSWORD, "")),
        ErrorCode::InvalidArgument
    );
    // The refused REGISTER created no account: the handle is still free.
    c.register("carol650", util::PASSWORD, "phone");

    // HELLO.client: at most 64 bytes; a longer one is refused and HELLO may be said again.
    // Hand-made HELLOs: the session says its own, once.
    let mut c = server.connect();
    c.send(
        1,
        Hello {
            version: VERSION,
            client: name(65),
        },
    );
    assert_eq!(
        error_code(&c.reply(1, util::REPLY_TIMEOUT)),
        ErrorCode::InvalidArgument
    );
    c.send(
        2,
        Hello {
            version: VERSION,
            client: name(64),
        },
    );
    let ok = c.reply(2, util::REPLY_TIMEOUT);
    assert!(matches!(ok, Frame::Welcome(_)), "{ok:?}");
}
