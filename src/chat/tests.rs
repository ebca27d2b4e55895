//! Engine tests against a real RocksDB in a temp dir, with two shards and routing honoured.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use courier_protocol::wire::Wire;
use courier_protocol::*;

use super::{ChatConfig, Effect, Engine, Shared};
use crate::caller::{Caller, ConnRef};
use crate::clock::Clock;
use crate::session::{Accounts, AuthConfig};
use crate::store::{FsyncMode, Store};

struct World {
    _dir: tempfile::TempDir,
    shared: Arc<Shared>,
    engines: Vec<Engine>,
    accounts: Accounts,
    next_conn: u32,
}

impl World {
    fn new(config: ChatConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), FsyncMode::Batch).unwrap();
        let clock = Arc::new(Clock::new(store.clock_floor().unwrap()));
        let shared = Shared::new(store.clone(), clock, config, 2);
        let engines = (0..2).map(|s| Engine::new(shared.clone(), s)).collect();
        let accounts = Accounts::new(
            store,
            AuthConfig {
                argon2_m_kib: 64,
                argon2_t: 1,
                ..Default::default()
            },
        )
        .unwrap();
        Self {
            _dir: dir,
            shared,
            engines,
            accounts,
            next_conn: 0,
        }
    }

    fn user(&mut self, handle: &str) -> Caller {
        let a = self
            .accounts
            .register(handle, "password1", "phone")
            .unwrap();
        self.device(a.user)
    }

    /// Another connection of `user`, alternating shards.
    fn device(&mut self, user: u64) -> Caller {
        self.next_conn += 1;
        Caller {
            user,
            device: self.next_conn,
            conn: ConnRef {
                shard: (self.next_conn % 2) as u16,
                slot: self.next_conn,
                gen: 1,
                node: 0,
            },
            checked: Default::default(),
        }
    }

    /// Runs `frame` on the shard that owns it, commits, and returns every effect.
    fn run(&mut self, caller: &Caller, frame: impl Into<Frame>) -> Vec<Effect> {
        let frame = frame.into();
        let shard = Engine::shard_for(&self.shared, caller, &frame).expect("a chat frame");
        let engine = &mut self.engines[shard as usize];
        engine.handle(*caller, 7, frame);
        let mut out = Vec::new();
        engine.commit(&mut out);
        out
    }

    fn ask(&mut self, caller: &Caller, frame: impl Into<Frame>) -> Frame {
        let effects = self.run(caller, frame);
        effects
            .into_iter()
            .find_map(|e| match e {
                Effect::Reply {
                    to,
                    request_id: 7,
                    frame,
                } if to == caller.conn => Some(frame),
                _ => None,
            })
            .expect("a reply")
    }

    fn error(&mut self, caller: &Caller, frame: impl Into<Frame>) -> ErrorCode {
        match self.ask(caller, frame) {
            Frame::ErrorReply(e) => ErrorCode::from_u16(e.code).unwrap(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn direct(&mut self, a: &Caller, b: &Caller) -> u64 {
        match self.ask(a, OpenDirect { peer: b.user }) {
            Frame::ThreadInfo(t) => t.thread.id,
            other => panic!("{other:?}"),
        }
    }

    fn send(
        &mut self,
        caller: &Caller,
        thread: u64,
        client_msg_id: u64,
        body: &'static str,
    ) -> u64 {
        match self.ask(
            caller,
            Send {
                thread,
                client_msg_id,
                kind: MessageKind::Text,
                body: Bytes::from_static(body.as_bytes()),
                reply_to: 0,
            },
        ) {
            Frame::Sent(s) => s.message,
            other => panic!("{other:?}"),
        }
    }

    fn history(&mut self, caller: &Caller, thread: u64) -> Vec<Message> {
        match self.ask(
            caller,
            History {
                thread,
                anchor: 0,
                direction: Direction::Forward,
                limit: 500,
            },
        ) {
            Frame::Messages(m) => m.messages,
            other => panic!("{other:?}"),
        }
    }

    fn sync_all(
        &mut self,
        caller: &Caller,
        since: u64,
        limit: u16,
    ) -> (Vec<Thread>, Vec<Message>, u64, usize) {
        let (mut threads, mut messages, mut pages) = (Vec::new(), Vec::new(), 0);
        let (mut after_thread, mut after_message, mut watermark) = (0, 0, 0);
        loop {
            pages += 1;
            let Frame::SyncBatch(b) = self.ask(
                caller,
                Sync {
                    since,
                    after_thread,
                    after_message,
                    limit,
                    watermark,
                    vector: Default::default(),
                },
            ) else {
                panic!()
            };
            threads.extend(b.threads);
            messages.extend(b.messages);
            if !b.more {
                return (threads, messages, b.watermark, pages);
            }
            (after_thread, after_message, watermark) = (b.next_thread, b.next_message, b.watermark);
        }
    }
}

fn pushes_to(effects: &[Effect], user: u64) -> Vec<Frame> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Push { users, frame, .. } if users.contains(&user) => Some(frame.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_direct_thread_is_unique_whoever_opens_it() {
    let mut w = World::new(ChatConfig::default());
    let (a, b) = (w.user("alice"), w.user("bob"));
    let t1 = w.direct(&a, &b);
    let t2 = w.direct(&b, &a);
    let a2 = w.device(a.user);
    assert_eq!(t1, t2);
    assert_eq!(w.direct(&a2, &b), t1);
    assert_eq!(
        w.error(&a, OpenDirect { peer: a.user }),
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        w.error(&a, OpenDirect { peer: 999_999 }),
        ErrorCode::UnknownUser
    );
}

#[test]
fn users_and_threads_get_ids_in_their_partitions() {
    use crate::cluster::partition;
    let mut w = World::new(ChatConfig::default());
    let (a, b, c) = (w.user("alice"), w.user("bob"), w.user("carol"));
    for (user, handle) in [(&a, "alice"), (&b, "bob"), (&c, "carol")] {
        assert_eq!(partition::of_id(user.user), partition::of_handle(handle));
    }
    let ab = w.direct(&a, &b);
    let ca = w.direct(&c, &a);
    assert_eq!(partition::of_id(ab), partition::of_pair(a.user, b.user));
    assert_eq!(partition::of_id(ca), partition::of_pair(a.user, c.user));
    let Frame::ThreadInfo(info) = w.ask(
        &c,
        CreateGroup {
            name: "team".into(),
            members: vec![a.user, b.user],
        },
    ) else {
        panic!()
    };
    assert_eq!(partition::of_id(info.thread.id), partition::of_id(c.user));
    // Nothing else changes: the threads work as before.
    w.send(&a, ab, 1, "hi");
    w.send(&b, info.thread.id, 1, "hello team");
}

#[test]
fn send_acks_pushes_and_dedupes_retries() {
    let mut w = World::new(ChatConfig::default());
    let (a, b) = (w.user("alice"), w.user("bob"));
    let t = w.direct(&a, &b);
    let effects = w.run(
        &a,
        Send {
            thread: t,
            client_msg_id: 1,
            kind: MessageKind::Text,
            body: Bytes::from_static(b"hi"),
            reply_to: 0,
        },
    );
    let pushed = pushes_to(&effects, b.user);
    assert_eq!(pushed.len(), 1);
    let Frame::MessagePush(p) = &pushed[0] else {
        panic!()
    };
    assert_eq!(&p.message.body[..], b"hi");
    // The push excludes the sending connection but reaches the sender's other devices.
    assert!(effects.iter().any(|e| matches!(e, Effect::Push { users, except: Some(c), .. } if users.contains(&a.user) && *c == a.conn)));
    let id = p.message.id;
    assert_eq!(
        w.send(&a, t, 1, "hi"),
        id,
        "a retry returns the original id"
    );
    assert_eq!(w.history(&b, t).len(), 1, "a retry stores nothing");
    let second = w.send(&a, t, 2, "again");
    assert!(second > id);
}

#[test]
fn bad_sends_are_refused_and_store_nothing() {
    let mut w = World::new(ChatConfig {
        max_body: 8,
        ..ChatConfig::default()
    });
    let (a, b, c) = (w.user("alice"), w.user("bob"), w.user("carol"));
    let t = w.direct(&a, &b);
    let big = Send {
        thread: t,
        client_msg_id: 1,
        kind: MessageKind::Text,
        body: Bytes::from_static(b"123456789"),
        reply_to: 0,
    };
    assert_eq!(w.error(&a, big), ErrorCode::BodyTooLarge);
    let intruder = Send {
        thread: t,
        client_msg_id: 1,
        kind: MessageKind::Text,
        body: Bytes::from_static(b"x"),
        reply_to: 0,
    };
    assert_eq!(w.error(&c, intruder.clone()), ErrorCode::NotMember);
    assert_eq!(
        w.error(
            &c,
            History {
                thread: t,
                anchor: 0,
                direction: Direction::Backward,
                limit: 5
            }
        ),
        ErrorCode::NotMember
    );
    let nowhere = Send {
        thread: 424_242,
        ..intruder
    };
    assert_eq!(w.error(&a, nowhere), ErrorCode::UnknownThread);
    let system = Send {
        thread: t,
        client_msg_id: 3,
        kind: MessageKind::System,
        body: Bytes::new(),
        reply_to: 0,
    };
    assert_eq!(w.error(&a, system), ErrorCode::InvalidArgument);
    assert!(w.history(&a, t).is_empty());
}

#[test]
fn groups_enforce_admins_caps_and_record_changes() {
    let mut w = World::new(ChatConfig {
        max_group: 3,
        ..ChatConfig::default()
    });
    let (a, b, c, d) = (
        w.user("alice"),
        w.user("bob"),
        w.user("carol"),
        w.user("dave"),
    );
    let Frame::ThreadInfo(info) = w.ask(
        &a,
        CreateGroup {
            name: "team".into(),
            members: vec![b.user],
        },
    ) else {
        panic!()
    };
    let g = info.thread.id;
    assert_eq!(info.thread.members.len(), 2);
    assert_eq!(
        info.thread
            .members
            .iter()
            .find(|m| m.user == a.user)
            .unwrap()
            .role,
        Role::Admin
    );
    assert_eq!(
        w.error(
            &b,
            AddMembers {
                thread: g,
                members: vec![c.user]
            }
        ),
        ErrorCode::NotAdmin
    );
    assert_eq!(
        w.error(
            &a,
            AddMembers {
                thread: g,
                members: vec![123_456]
            }
        ),
        ErrorCode::UnknownUser
    );
    assert_eq!(
        w.ask(
            &a,
            AddMembers {
                thread: g,
                members: vec![c.user]
            }
        ),
        Done {}.into()
    );
    assert_eq!(
        w.error(
            &a,
            AddMembers {
                thread: g,
                members: vec![d.user]
            }
        ),
        ErrorCode::GroupFull
    );
    assert_eq!(
        w.ask(
            &a,
            RemoveMember {
                thread: g,
                user: b.user
            }
        ),
        Done {}.into()
    );
    assert_eq!(
        w.error(
            &b,
            Send {
                thread: g,
                client_msg_id: 1,
                kind: MessageKind::Text,
                body: Bytes::new(),
                reply_to: 0
            }
        ),
        ErrorCode::NotMember
    );
    assert_eq!(
        w.ask(
            &c,
            RenameGroup {
                thread: g,
                name: "crew".into()
            }
        ),
        Done {}.into()
    );
    assert_eq!(w.ask(&a, LeaveGroup { thread: g }), Done {}.into());
    let Frame::ThreadInfo(info) = w.ask(&c, GetThread { thread: g }) else {
        panic!()
    };
    assert_eq!(info.thread.name, "crew");
    assert_eq!(info.thread.members.len(), 1);
    assert_eq!(
        info.thread.members[0].role,
        Role::Admin,
        "the last admin leaving promotes someone"
    );
    let events: Vec<SystemEventKind> = w
        .history(&c, g)
        .iter()
        .filter(|m| m.kind == MessageKind::System)
        .map(|m| {
            SystemEvent::get(&mut wire::Reader::new(m.body.clone()), "e")
                .unwrap()
                .event
        })
        .collect();
    assert_eq!(
        events,
        [
            SystemEventKind::Created,
            SystemEventKind::MemberAdded,
            SystemEventKind::MemberRemoved,
            SystemEventKind::Renamed,
            SystemEventKind::MemberLeft
        ]
    );
    let t = w.direct(&a, &b);
    assert_eq!(w.error(&a, LeaveGroup { thread: t }), ErrorCode::NotAGroup);
}

#[test]
fn receipts_move_forward_only_and_are_pushed() {
    let mut w = World::new(ChatConfig::default());
    let (a, b) = (w.user("alice"), w.user("bob"));
    let t = w.direct(&a, &b);
    let m1 = w.send(&a, t, 1, "one");
    let m2 = w.send(&a, t, 2, "two");
    let effects = w.run(
        &b,
        Receipt {
            thread: t,
            kind: ReceiptKind::Delivered,
            up_to: m2,
        },
    );
    let p = pushes_to(&effects, a.user);
    assert_eq!(
        p,
        vec![Frame::from(ReceiptPush {
            thread: t,
            user: b.user,
            kind: ReceiptKind::Delivered,
            up_to: m2
        })]
    );
    let stale = w.run(
        &b,
        Receipt {
            thread: t,
            kind: ReceiptKind::Delivered,
            up_to: m1,
        },
    );
    assert!(
        pushes_to(&stale, a.user).is_empty(),
        "a stale receipt is ignored"
    );
    w.run(
        &b,
        Receipt {
            thread: t,
            kind: ReceiptKind::Read,
            up_to: m1,
        },
    );
    let Frame::ReadersList(r) = w.ask(
        &a,
        Readers {
            thread: t,
            message: m2,
        },
    ) else {
        panic!()
    };
    assert_eq!((r.delivered, r.read), (vec![b.user], vec![]));
    let Frame::ReadersList(r) = w.ask(
        &a,
        Readers {
            thread: t,
            message: m1,
        },
    ) else {
        panic!()
    };
    assert_eq!((r.delivered, r.read), (vec![b.user], vec![b.user]));
}

#[test]
fn recall_leaves_a_tombstone_and_a_system_message() {
    let mut w = World::new(ChatConfig::default());
    let (a, b) = (w.user("alice"), w.user("bob"));
    let t = w.direct(&a, &b);
    let m = w.send(&a, t, 1, "oops");
    assert_eq!(
        w.error(
            &b,
            Recall {
                thread: t,
                message: m
            }
        ),
        ErrorCode::NotSender
    );
    let effects = w.run(
        &a,
        Recall {
            thread: t,
            message: m,
        },
    );
    assert_eq!(pushes_to(&effects, b.user).len(), 1);
    let h = w.history(&b, t);
    assert!(h[0].recalled && h[0].body.is_empty());
    assert_eq!(h[1].kind, MessageKind::System);
    assert_eq!(
        w.error(
            &a,
            Recall {
                thread: t,
                message: 5
            }
        ),
        ErrorCode::UnknownMessage
    );

    let mut w = World::new(ChatConfig {
        recall_window_us: 0,
        ..ChatConfig::default()
    });
    let (a, b) = (w.user("alice"), w.user("bob"));
    let t = w.direct(&a, &b);
    let m = w.send(&a, t, 1, "late");
    std::thread::sleep(std::time::Duration::from_millis(2));
    assert_eq!(
        w.error(
            &a,
            Recall {
                thread: t,
                message: m
            }
        ),
        ErrorCode::RecallWindowExpired
    );
}

#[test]
fn delete_for_me_hides_only_for_me() {
    let mut w = World::new(ChatConfig::default());
    let (a, b) = (w.user("alice"), w.user("bob"));
    let t = w.direct(&a, &b);
    let m = w.send(&a, t, 1, "x");
    w.send(&a, t, 2, "y");
    assert_eq!(
        w.ask(
            &b,
            DeleteForMe {
                thread: t,
                message: m
            }
        ),
        Done {}.into()
    );
    assert_eq!(w.history(&b, t).len(), 1);
    assert_eq!(w.history(&a, t).len(), 2);
}

#[test]
fn sync_pages_return_every_message_once_in_order() {
    let mut w = World::new(ChatConfig::default());
    let (a, b, c) = (w.user("alice"), w.user("bob"), w.user("carol"));
    let t1 = w.direct(&a, &b);
    let t2 = w.direct(&c, &b);
    let mut sent = HashSet::new();
    for i in 0..25 {
        sent.insert(w.send(&a, t1, i, "a"));
        sent.insert(w.send(&c, t2, i, "c"));
    }
    let (threads, messages, watermark, pages) = w.sync_all(&b, 0, 7);
    assert!(pages > 5, "small pages: {pages}");
    assert_eq!(messages.len(), 50);
    let got: HashSet<u64> = messages.iter().map(|m| m.id).collect();
    assert_eq!(got, sent, "nothing lost, nothing duplicated");
    for pair in messages.windows(2) {
        assert!(
            (pair[0].thread, pair[0].id) < (pair[1].thread, pair[1].id),
            "thread order"
        );
    }
    assert!(threads.iter().any(|t| t.id == t1) && threads.iter().any(|t| t.id == t2));

    let later = w.send(&a, t1, 100, "new");
    let (_, messages, _, _) = w.sync_all(&b, watermark, 0);
    assert_eq!(
        messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![later]
    );
    // A receipt changes the thread, which sync reports with the new cursor.
    let Frame::Done(_) = w.ask(
        &b,
        Receipt {
            thread: t1,
            kind: ReceiptKind::Read,
            up_to: later,
        },
    ) else {
        panic!()
    };
    let (threads, messages, _, _) = w.sync_all(&a, watermark, 0);
    let t = threads.iter().find(|t| t.id == t1).unwrap();
    assert_eq!(
        t.members.iter().find(|m| m.user == b.user).unwrap().read,
        later
    );
    assert_eq!(messages.len(), 1);
}

/// One page of a sync walk.
fn sync_page(w: &mut World, caller: &Caller, f: Sync) -> SyncBatch {
    match w.ask(caller, f) {
        Frame::SyncBatch(b) => b,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_message_committed_between_sync_pages_into_a_walked_thread_is_not_skipped() {
    let mut w = World::new(ChatConfig::default());
    let (alice, b, carol) = (w.user("alice"), w.user("bob"), w.user("carol"));
    let (ab, cb) = (w.direct(&alice, &b), w.direct(&carol, &b));
    // The walk visits threads in id order; ids are not in creation order (each thread's id is
    // in its own partition), so `first` is whichever of the two sorts first.
    let (first, a, second, c) = if ab < cb {
        (ab, alice, cb, carol)
    } else {
        (cb, carol, ab, alice)
    };
    w.send(&a, first, 1, "a1");
    w.send(&a, first, 2, "a2");
    for i in 0..5 {
        w.send(&c, second, i, "c");
    }
    // Page 1 walks `first` completely and stops inside `second`.
    let page1 = sync_page(
        &mut w,
        &b,
        Sync {
            since: 0,
            after_thread: 0,
            after_message: 0,
            limit: 4,
            watermark: 0,
            vector: Default::default(),
        },
    );
    assert!(page1.more);
    assert_eq!(page1.next_thread, second);
    // Now a message is committed into `first`, behind the walk.
    let late = w.send(&a, first, 3, "late");
    let page2 = sync_page(
        &mut w,
        &b,
        Sync {
            since: 0,
            after_thread: page1.next_thread,
            after_message: page1.next_message,
            limit: 4,
            watermark: page1.watermark,
            vector: Default::default(),
        },
    );
    assert!(!page2.more);
    assert!(page2.messages.iter().all(|m| m.id != late));
    // The next sync, from the walk's watermark, returns the late message.
    let (_, messages, _, _) = w.sync_all(&b, page2.watermark, 0);
    assert!(
        messages.iter().any(|m| m.id == late),
        "the message committed mid-walk was skipped for good"
    );
    assert_eq!(page2.watermark, page1.watermark, "one walk, one watermark");
}

#[test]
fn a_sync_continuation_needs_the_walks_watermark_and_cannot_claim_a_future_one() {
    let mut w = World::new(ChatConfig::default());
    let (a, b) = (w.user("alice"), w.user("bob"));
    let t = w.direct(&a, &b);
    w.send(&a, t, 1, "x");
    let continuation = Sync {
        since: 0,
        after_thread: t,
        after_message: 0,
        limit: 0,
        watermark: 0,
        vector: Default::default(),
    };
    assert_eq!(w.error(&b, continuation), ErrorCode::InvalidArgument);
    let future = sync_page(
        &mut w,
        &b,
        Sync {
            since: 0,
            after_thread: 0,
            after_message: 0,
            limit: 0,
            watermark: u64::MAX,
            vector: Default::default(),
        },
    );
    assert!(future.watermark <= w.shared.watermark());
}

#[test]
fn watermark_stays_below_uncommitted_changes() {
    let mut w = World::new(ChatConfig::default());
    let (a, b) = (w.user("alice"), w.user("bob"));
    let t = w.direct(&a, &b);
    let shard = w.shared.thread_shard(t) as usize;
    let frame: Frame = Send {
        thread: t,
        client_msg_id: 1,
        kind: MessageKind::Text,
        body: Bytes::new(),
        reply_to: 0,
    }
    .into();
    w.engines[shard].handle(a, 1, frame);
    let before_commit = w.shared.watermark();
    let mut out = Vec::new();
    w.engines[shard].commit(&mut out);
    let Some(Effect::Reply {
        frame: Frame::Sent(s),
        ..
    }) = out.iter().find(|e| matches!(e, Effect::Reply { .. }))
    else {
        panic!()
    };
    assert!(before_commit < s.message);
    assert!(w.shared.watermark() >= s.message);
}

#[test]
fn thread_list_is_newest_first_with_unread_and_pages() {
    let mut w = World::new(ChatConfig::default());
    let (a, b, c) = (w.user("alice"), w.user("bob"), w.user("carol"));
    let ab = w.direct(&a, &b);
    let ac = w.direct(&a, &c);
    w.send(&b, ab, 1, "1");
    w.send(&c, ac, 1, "2");
    w.send(&c, ac, 2, "3");
    let Frame::ThreadList(l) = w.ask(
        &a,
        ListThreads {
            before_msg_id: 0,
            before_thread: 0,
            limit: 1,
        },
    ) else {
        panic!()
    };
    assert!(l.more);
    assert_eq!(l.threads[0].id, ac);
    assert_eq!(l.threads[0].unread, 2);
    assert_eq!(l.threads[0].name, "carol");
    assert_eq!(l.threads[0].peer, c.user);
    let first = &l.threads[0];
    let Frame::ThreadList(l2) = w.ask(
        &a,
        ListThreads {
            before_msg_id: first.last_msg_id,
            before_thread: first.id,
            limit: 10,
        },
    ) else {
        panic!()
    };
    assert!(!l2.more);
    assert_eq!(
        l2.threads.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ab]
    );
    // Hiding a conversation removes it until a newer message arrives.
    w.ask(
        &a,
        SetThreadState {
            thread: ab,
            muted: true,
            hidden: true,
            label: String::new(),
        },
    );
    let Frame::ThreadList(l3) = w.ask(
        &a,
        ListThreads {
            before_msg_id: 0,
            before_thread: 0,
            limit: 10,
        },
    ) else {
        panic!()
    };
    assert_eq!(l3.threads.len(), 1);
    w.send(&b, ab, 2, "back");
    let Frame::ThreadList(l4) = w.ask(
        &a,
        ListThreads {
            before_msg_id: 0,
            before_thread: 0,
            limit: 10,
        },
    ) else {
        panic!()
    };
    assert_eq!(l4.threads[0].id, ab);
    assert!(l4.threads[0].muted);
    assert_eq!(
        w.history(&a, ab).len(),
        1,
        "history before hiding is gone for the hider"
    );
}

#[test]
fn contacts_and_lookup() {
    let mut w = World::new(ChatConfig::default());
    let (a, b) = (w.user("alice"), w.user("bob"));
    let Frame::User(u) = w.ask(
        &a,
        LookupUser {
            handle: "bob".into(),
        },
    ) else {
        panic!()
    };
    assert_eq!(u.user.id, b.user);
    assert_eq!(
        w.error(
            &a,
            LookupUser {
                handle: "nobody".into()
            }
        ),
        ErrorCode::UnknownUser
    );
    assert_eq!(w.ask(&a, ContactAdd { user: b.user }), Done {}.into());
    assert!(w.shared.store.is_contact(a.user, b.user).unwrap());
    let Frame::Contacts(c) = w.ask(&a, ContactList {}) else {
        panic!()
    };
    assert_eq!(
        c.users,
        vec![UserInfo {
            id: b.user,
            handle: "bob".into()
        }]
    );
    w.ask(&a, ContactRemove { user: b.user });
    assert!(!w.shared.store.is_contact(a.user, b.user).unwrap());
}

#[test]
fn media_round_trips_in_chunks() {
    let mut w = World::new(ChatConfig {
        media_chunk: 4,
        ..ChatConfig::default()
    });
    let a = w.user("alice");
    let Frame::MediaUpload(up) = w.ask(
        &a,
        MediaBegin {
            total_len: 10,
            mime: "text/plain".into(),
            hash: Bytes::copy_from_slice(blake3::hash(b"0123456789").as_bytes()),
        },
    ) else {
        panic!()
    };
    assert_eq!(
        w.error(
            &a,
            MediaChunk {
                upload: up.upload,
                offset: 4,
                data: Bytes::from_static(b"abcd")
            }
        ),
        ErrorCode::BadOffset
    );
    for (off, part) in [(0, &b"0123"[..]), (4, b"4567"), (8, b"89")] {
        assert_eq!(
            w.ask(
                &a,
                MediaChunk {
                    upload: up.upload,
                    offset: off,
                    data: Bytes::from_static(part)
                }
            ),
            Done {}.into()
        );
    }
    let Frame::MediaRef(r) = w.ask(&a, MediaCommit { upload: up.upload }) else {
        panic!()
    };
    let Frame::MediaData(d) = w.ask(
        &a,
        MediaGet {
            thread: 0,
            media: r.media.clone(),
            offset: 3,
            max_len: 5,
        },
    ) else {
        panic!()
    };
    assert_eq!((&d.data[..], d.total_len), (&b"34567"[..], 10));
    assert_eq!(
        w.error(
            &a,
            MediaGet {
                thread: 0,
                media: Bytes::from_static(b"nope"),
                offset: 0,
                max_len: 1
            }
        ),
        ErrorCode::UnknownMedia
    );
}

#[test]
fn a_member_removed_in_the_round_they_sent_is_not_written_back() {
    let mut w = World::new(ChatConfig::default());
    let (a, b) = (w.user("alice"), w.user("bob"));
    let Frame::ThreadInfo(info) = w.ask(
        &a,
        CreateGroup {
            name: "g".into(),
            members: vec![b.user],
        },
    ) else {
        panic!()
    };
    let g = info.thread.id;
    let shard = w.shared.thread_shard(g) as usize;
    let send: Frame = Send {
        thread: g,
        client_msg_id: 1,
        kind: MessageKind::Text,
        body: Bytes::new(),
        reply_to: 0,
    }
    .into();
    w.engines[shard].handle(b, 1, send);
    w.engines[shard].handle(
        a,
        2,
        RemoveMember {
            thread: g,
            user: b.user,
        }
        .into(),
    );
    let mut out = Vec::new();
    w.engines[shard].commit(&mut out);
    assert!(
        w.shared.store.member(g, b.user).unwrap().is_none(),
        "the removal stands"
    );
    let me = w.shared.store.member(g, a.user).unwrap().unwrap();
    assert!(me.admin);
    assert_eq!(w.shared.store.thread(g).unwrap().unwrap().member_count, 1);
}

#[test]
fn the_thread_cache_past_its_size_evicts_only_the_excess() {
    let limit = 16;
    let mut w = World::new(ChatConfig {
        thread_cache: limit,
        ..ChatConfig::default()
    });
    let (a, b) = (w.user("alice"), w.user("bob"));
    let mut threads = Vec::new();
    for i in 0..60 {
        let name = format!("group {i}");
        let Frame::ThreadInfo(t) = w.ask(
            &a,
            CreateGroup {
                name,
                members: vec![b.user],
            },
        ) else {
            panic!("CREATE_GROUP")
        };
        threads.push(t.thread.id);
    }
    // Each send loads its thread on the owner shard and commits its own round.
    for &t in &threads {
        w.send(&a, t, 0, "hi");
    }
    for shard in 0..2u16 {
        let owned: Vec<u64> = threads
            .iter()
            .copied()
            .filter(|&t| w.shared.thread_shard(t) == shard)
            .collect();
        assert!(owned.len() > limit, "the test needs more threads per shard");
        let engine = &w.engines[shard as usize];
        let cached = owned
            .iter()
            .filter(|&&t| engine.threads.get(t).is_some())
            .count();
        assert_eq!(cached, limit, "shard {shard} keeps a full cache");
        let newest = owned[owned.len() - 1];
        assert!(engine.threads.get(newest).is_some());
    }
}

/// Runs every frame on its shard in one round (no commit in between) and returns the replies
/// by request id (1, 2, …), in order.
fn one_round(w: &mut World, caller: &Caller, frames: Vec<Frame>) -> Vec<Frame> {
    let mut shards = HashSet::new();
    let n = frames.len();
    for (i, frame) in frames.into_iter().enumerate() {
        let shard = Engine::shard_for(&w.shared, caller, &frame).expect("a chat frame");
        shards.insert(shard);
        w.engines[shard as usize].handle(*caller, i as u32 + 1, frame);
    }
    let mut out = Vec::new();
    for s in shards {
        w.engines[s as usize].commit(&mut out);
    }
    (1..=n as u32)
        .map(|id| {
            out.iter()
                .find_map(|e| match e {
                    Effect::Reply {
                        request_id, frame, ..
                    } if *request_id == id => Some(frame.clone()),
                    _ => None,
                })
                .expect("a reply")
        })
        .collect()
}

fn code_of(f: &Frame) -> Option<ErrorCode> {
    match f {
        Frame::ErrorReply(e) => ErrorCode::from_u16(e.code),
        _ => None,
    }
}

#[test]
fn the_caps_count_what_the_same_round_staged() {
    let mut w = World::new(ChatConfig {
        max_contacts: 2,
        max_deleted_per_thread: 2,
        ..ChatConfig::default()
    });
    let a = w.user("alice");
    let others: Vec<u64> = ["bob", "carol", "dave"]
        .iter()
        .map(|h| w.user(h).user)
        .collect();
    let add = |user| Frame::from(ContactAdd { user });
    let replies = one_round(
        &mut w,
        &a,
        vec![
            add(others[0]),
            add(others[0]),
            add(others[1]),
            add(others[2]),
        ],
    );
    let codes: Vec<_> = replies.iter().map(code_of).collect();
    assert_eq!(codes, [None, None, None, Some(ErrorCode::TooManyContacts)]);
    // Removing and adding in one round: the removal makes room.
    let remove = Frame::from(ContactRemove { user: others[0] });
    let replies = one_round(&mut w, &a, vec![remove, add(others[2]), add(others[0])]);
    let codes: Vec<_> = replies.iter().map(code_of).collect();
    assert_eq!(codes, [None, None, Some(ErrorCode::TooManyContacts)]);
    let mut contacts = w.shared.store.contacts(a.user).unwrap();
    contacts.sort_unstable();
    assert_eq!(contacts, [others[1], others[2]]);

    let b = w.device(others[0]);
    let thread = w.direct(&a, &b);
    let ids: Vec<u64> = (1..=3).map(|i| w.send(&a, thread, i, "x")).collect();
    let delete = |message| Frame::from(DeleteForMe { thread, message });
    let replies = one_round(
        &mut w,
        &a,
        vec![
            delete(ids[0]),
            delete(ids[0]),
            delete(ids[1]),
            delete(ids[2]),
        ],
    );
    let codes: Vec<_> = replies.iter().map(code_of).collect();
    assert_eq!(codes, [None, None, None, Some(ErrorCode::TooManyDeleted)]);
    assert_eq!(w.shared.store.count_hidden(a.user, thread, 10).unwrap(), 2);
}

/// The RECEIPT_PUSHes among `effects` that reach anyone, with their recipients.
fn receipt_pushes(effects: &[Effect]) -> Vec<(Vec<u64>, ReceiptPush)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Push {
                users,
                frame: Frame::ReceiptPush(p),
                ..
            } if !users.is_empty() => Some((users.to_vec(), p.clone())),
            _ => None,
        })
        .collect()
}

fn group(w: &mut World, creator: &Caller, members: Vec<u64>) -> u64 {
    match w.ask(
        creator,
        CreateGroup {
            name: "g".into(),
            members,
        },
    ) {
        Frame::ThreadInfo(t) => t.thread.id,
        other => panic!("{other:?}"),
    }
}

fn sorted(mut users: Vec<u64>) -> Vec<u64> {
    users.sort_unstable();
    users.dedup();
    users
}

#[test]
fn a_receipt_is_pushed_to_the_senders_it_covers_and_the_readers_devices_not_to_everyone() {
    let mut w = World::new(ChatConfig::default());
    let people: Vec<Caller> = (0..6).map(|i| w.user(&format!("user{i}"))).collect();
    let (a, c) = (people[0], people[2]);
    let g = group(&mut w, &a, people[1..].iter().map(|p| p.user).collect());
    let m1 = w.send(&a, g, 1, "from a");
    let m2 = w.send(&c, g, 1, "from c");

    // Two advances of one cursor in one round make one push, with the later cursor.
    let r = people[5];
    let shard = w.shared.thread_shard(g) as usize;
    for (id, up_to) in [(1, m1), (2, m2)] {
        let receipt = Receipt {
            thread: g,
            kind: ReceiptKind::Delivered,
            up_to,
        };
        w.engines[shard].handle(r, id, receipt.into());
    }
    let mut effects = Vec::new();
    w.engines[shard].commit(&mut effects);
    let pushes = receipt_pushes(&effects);
    assert_eq!(pushes.len(), 1, "aggregated per round: {pushes:?}");
    assert_eq!(pushes[0].1.up_to, m2);
    assert_eq!(pushes[0].0, sorted(vec![a.user, c.user, r.user]));

    // A read up to m1 concerns a only; then up to m2, c only (and the reader's devices).
    let b = people[1];
    let read = |up_to| Receipt {
        thread: g,
        kind: ReceiptKind::Read,
        up_to,
    };
    let pushes = receipt_pushes(&w.run(&b, read(m1)));
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].0, sorted(vec![a.user, b.user]));
    let pushes = receipt_pushes(&w.run(&b, read(m2)));
    assert_eq!(pushes[0].0, sorted(vec![c.user, b.user]));

    // Everyone else reads: 3 recipients each, not the 6 members.
    for r in &people[3..] {
        let pushes = receipt_pushes(&w.run(r, read(m2)));
        assert_eq!(pushes.len(), 1);
        assert_eq!(pushes[0].0, sorted(vec![a.user, c.user, r.user]));
    }
    // READERS still tells who has read.
    let Frame::ReadersList(list) = w.ask(
        &a,
        Readers {
            thread: g,
            message: m1,
        },
    ) else {
        panic!()
    };
    assert_eq!(
        list.read,
        sorted(people[1..].iter().map(|p| p.user).collect())
    );
}

#[test]
fn typing_is_pushed_once_per_interval_and_the_stop_still_goes_out() {
    let mut w = World::new(ChatConfig::default());
    let (a, b, c) = (w.user("alice"), w.user("bob"), w.user("carol"));
    let g = group(&mut w, &a, vec![b.user, c.user]);
    let typing = |w: &mut World, active| {
        w.run(&a, Typing { thread: g, active })
            .into_iter()
            .filter(|e| {
                matches!(
                    e,
                    Effect::Push {
                        frame: Frame::TypingPush(_),
                        ..
                    }
                )
            })
            .count()
    };
    let starts: usize = (0..10).map(|_| typing(&mut w, true)).sum();
    assert_eq!(starts, 1, "ten TYPINGs within the interval make one push");
    assert_eq!(typing(&mut w, false), 1, "the stop goes out");
    assert_eq!(typing(&mut w, false), 0);
}

#[test]
fn adding_several_members_writes_one_system_message_naming_them_all() {
    let mut w = World::new(ChatConfig::default());
    let (a, b, c, d) = (
        w.user("alice"),
        w.user("bob"),
        w.user("carol"),
        w.user("dave"),
    );
    let g = group(&mut w, &a, vec![]);
    let effects = w.run(
        &a,
        AddMembers {
            thread: g,
            members: vec![d.user, b.user, c.user, b.user],
        },
    );
    let added: Vec<Message> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Push {
                frame: Frame::MessagePush(p),
                ..
            } => Some(p.message.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(added.len(), 1, "one message for the whole request");
    let ev = SystemEvent::get(&mut wire::Reader::new(added[0].body.clone()), "e").unwrap();
    assert_eq!(ev.event, SystemEventKind::MemberAdded);
    assert_eq!(ev.users, sorted(vec![b.user, c.user, d.user]));
    assert_eq!(ev.subject, ev.users[0]);
    assert_eq!(w.history(&d, g).len(), 2, "CREATED and one MEMBER_ADDED");
}

/// Uploads `len` bytes (byte `i` is `i % 251`) in chunks of the world's `media_chunk`.
fn upload(w: &mut World, a: &Caller, len: u64) -> Bytes {
    let all: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let Frame::MediaUpload(up) = w.ask(
        a,
        MediaBegin {
            total_len: len,
            mime: "application/octet-stream".into(),
            hash: Bytes::copy_from_slice(blake3::hash(&all).as_bytes()),
        },
    ) else {
        panic!()
    };
    let mut off = 0;
    for part in all.chunks(up.chunk_max as usize) {
        let chunk = MediaChunk {
            upload: up.upload,
            offset: off,
            data: Bytes::copy_from_slice(part),
        };
        assert_eq!(w.ask(a, chunk), Done {}.into());
        off += part.len() as u64;
    }
    let Frame::MediaRef(r) = w.ask(a, MediaCommit { upload: up.upload }) else {
        panic!()
    };
    r.media
}

#[test]
fn media_get_returns_the_asked_range_across_chunk_boundaries() {
    let mut w = World::new(ChatConfig {
        media_chunk: 7,
        ..ChatConfig::default()
    });
    let a = w.user("alice");
    let media = upload(&mut w, &a, 100);
    for (offset, max_len) in [
        (0, 1),
        (0, 7),
        (6, 2),
        (7, 7),
        (13, 30),
        (50, 100),
        (99, 5),
        (100, 3),
    ] {
        let Frame::MediaData(d) = w.ask(
            &a,
            MediaGet {
                thread: 0,
                media: media.clone(),
                offset,
                max_len,
            },
        ) else {
            panic!()
        };
        let end = (offset + max_len as u64).min(100);
        let want: Vec<u8> = (offset..end).map(|i| (i % 251) as u8).collect();
        assert_eq!(&d.data[..], &want[..], "offset {offset}, max_len {max_len}");
        assert_eq!(d.offset, offset);
    }
    assert_eq!(
        w.error(
            &a,
            MediaGet {
                thread: 0,
                media,
                offset: 101,
                max_len: 1
            }
        ),
        ErrorCode::BadOffset
    );
}

#[test]
fn a_write_is_answered_only_once_a_pool_read_can_see_it() {
    // The read pool reads committed state from another thread, at any moment. Drive the race
    // by hand: between handling a SEND (or RECEIPT) and committing its round, a pooled read
    // does not see the write, and no answer has left; after the commit both have.
    let mut w = World::new(ChatConfig::default());
    let (a, b) = (w.user("alice"), w.user("bob"));
    let t = w.direct(&a, &b);
    let owner = w.shared.thread_shard(t) as usize;
    let history: Frame = History {
        thread: t,
        anchor: 0,
        direction: Direction::Forward,
        limit: 0,
    }
    .into();
    let send: Frame = Send {
        thread: t,
        client_msg_id: 1,
        kind: MessageKind::Text,
        body: Bytes::from_static(b"hi"),
        reply_to: 0,
    }
    .into();
    w.engines[owner].handle(a, 1, send);
    let Frame::Messages(before) = Engine::read(&w.shared, &b, history.clone()) else {
        panic!()
    };
    assert!(
        before.messages.is_empty(),
        "an uncommitted message was read"
    );
    let mut out = Vec::new();
    w.engines[owner].commit(&mut out);
    let sent = out
        .iter()
        .find_map(|e| match e {
            Effect::Reply {
                frame: Frame::Sent(s),
                ..
            } => Some(s.message),
            _ => None,
        })
        .expect("SENT leaves with the commit");
    let Frame::Messages(after) = Engine::read(&w.shared, &b, history) else {
        panic!()
    };
    assert_eq!(
        after.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
        [sent]
    );

    let receipt: Frame = Receipt {
        thread: t,
        kind: ReceiptKind::Read,
        up_to: sent,
    }
    .into();
    let readers: Frame = Readers {
        thread: t,
        message: sent,
    }
    .into();
    w.engines[owner].handle(b, 2, receipt);
    let Frame::ReadersList(r) = Engine::read(&w.shared, &a, readers.clone()) else {
        panic!()
    };
    assert!(r.read.is_empty(), "an uncommitted cursor was read");
    let mut out = Vec::new();
    assert!(w.engines[owner].has_pending());
    w.engines[owner].commit(&mut out);
    assert!(out.iter().any(|e| matches!(
        e,
        Effect::Reply {
            frame: Frame::Done(_),
            request_id: 2,
            ..
        }
    )));
    let Frame::ReadersList(r) = Engine::read(&w.shared, &a, readers) else {
        panic!()
    };
    assert_eq!(r.read, vec![b.user]);
}

/// Runs `frames` (caller, frame) on `thread`'s owner as one round: every request is handled
/// before the one commit. Returns each request's answer, in order.
fn round_on_owner(w: &mut World, thread: u64, frames: Vec<(Caller, Frame)>) -> Vec<Frame> {
    let owner = w.shared.thread_shard(thread) as usize;
    let n = frames.len();
    for (i, (caller, frame)) in frames.into_iter().enumerate() {
        w.engines[owner].handle(caller, 100 + i as u32, frame);
    }
    let mut out = Vec::new();
    w.engines[owner].commit(&mut out);
    (0..n)
        .map(|i| {
            out.iter()
                .find_map(|e| match e {
                    Effect::Reply {
                        request_id, frame, ..
                    } if *request_id == 100 + i as u32 => Some(frame.clone()),
                    _ => None,
                })
                .expect("every request answered")
        })
        .collect()
}

fn react(thread: u64, message: u64, reaction: &str) -> Frame {
    React {
        thread,
        message,
        reaction: reaction.into(),
    }
    .into()
}

#[test]
fn two_reactions_to_one_message_in_one_round_both_count() {
    let mut w = World::new(ChatConfig::default());
    let (a, b) = (w.user("alice"), w.user("bob"));
    let t = w.direct(&a, &b);
    let m = w.send(&a, t, 1, "hi");
    // Neither request sees the other's write in the store: the round's own record must.
    let answers = round_on_owner(
        &mut w,
        t,
        vec![(a, react(t, m, "👍")), (b, react(t, m, "👍"))],
    );
    assert_eq!(answers, [Done {}.into(), Done {}.into()]);
    let stored = w.shared.store.message(t, m).unwrap().unwrap();
    assert_eq!(
        stored.reactions,
        [ReactionCount {
            reaction: "👍".into(),
            count: 2
        }]
    );
    // And one user's change of mind within a round counts once.
    let answers = round_on_owner(
        &mut w,
        t,
        vec![(b, react(t, m, "😂")), (b, react(t, m, "🎉"))],
    );
    assert_eq!(answers, [Done {}.into(), Done {}.into()]);
    let stored = w.shared.store.message(t, m).unwrap().unwrap();
    let counts: Vec<_> = stored
        .reactions
        .iter()
        .map(|c| (c.reaction.as_str(), c.count))
        .collect();
    assert_eq!(counts, [("🎉", 1), ("👍", 1)]);
    assert_eq!(
        w.shared.store.reaction(t, m, b.user).unwrap().as_deref(),
        Some("🎉")
    );
}

#[test]
fn an_edit_in_the_round_of_a_recall_does_not_bring_the_message_back() {
    let mut w = World::new(ChatConfig::default());
    let (a, b) = (w.user("alice"), w.user("bob"));
    let t = w.direct(&a, &b);
    let m = w.send(&a, t, 1, "oops");
    let recall = Recall {
        thread: t,
        message: m,
    }
    .into();
    let edit = Edit {
        thread: t,
        message: m,
        body: Bytes::from_static(b"back"),
    }
    .into();
    let answers = round_on_owner(&mut w, t, vec![(a, recall), (a, edit)]);
    assert_eq!(answers[0], Done {}.into());
    let Frame::ErrorReply(e) = &answers[1] else {
        panic!("{:?}", answers[1])
    };
    assert_eq!(e.code, ErrorCode::MessageRecalled as u16);
    let stored = w.shared.store.message(t, m).unwrap().unwrap();
    assert!(stored.recalled && stored.body.is_empty(), "{stored:?}");
}

#[test]
fn a_reaction_and_an_edit_in_one_round_both_stand() {
    let mut w = World::new(ChatConfig::default());
    let (a, b) = (w.user("alice"), w.user("bob"));
    let t = w.direct(&a, &b);
    let m = w.send(&a, t, 1, "helo");
    let edit = Edit {
        thread: t,
        message: m,
        body: Bytes::from_static(b"hello"),
    }
    .into();
    let answers = round_on_owner(&mut w, t, vec![(b, react(t, m, "👍")), (a, edit)]);
    assert_eq!(answers, [Done {}.into(), Done {}.into()]);
    let stored = w.shared.store.message(t, m).unwrap().unwrap();
    assert_eq!(&stored.body[..], b"hello");
    assert_ne!(stored.edited_at, 0);
    assert_eq!(stored.reactions.len(), 1, "the edit kept the reaction");
}

/// Who each MESSAGE_PUSH of `out` about a system event went to: (event, recipients).
fn notice_pushes(out: &[Effect]) -> Vec<(SystemEventKind, Vec<u64>)> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Push {
                users,
                frame: Frame::MessagePush(p),
                ..
            } if p.message.kind == MessageKind::System => {
                let ev = SystemEvent::get(&mut wire::Reader::new(p.message.body.clone()), "body")
                    .unwrap();
                Some((ev.event, users.to_vec()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_delete_for_me_in_the_round_of_an_edit_keeps_the_notices_from_the_deleter() {
    let mut w = World::new(ChatConfig::default());
    let (a, b) = (w.user("alice"), w.user("bob"));
    let t = w.direct(&a, &b);
    let m = w.send(&a, t, 1, "helo");
    let owner = w.shared.thread_shard(t) as usize;
    let edit = |body: &'static [u8]| -> Frame {
        Edit {
            thread: t,
            message: m,
            body: Bytes::from_static(body),
        }
        .into()
    };
    // The edit first: Bob still hears it (it came before his deletion).
    let engine = &mut w.engines[owner];
    engine.handle(a, 100, edit(b"hello"));
    engine.handle(
        b,
        101,
        DeleteForMe {
            thread: t,
            message: m,
        }
        .into(),
    );
    // Neither the deletion nor the flag on the message is in the store yet: the round's
    // own state must keep these from Bob.
    engine.handle(a, 102, edit(b"hello!"));
    engine.handle(a, 103, react(t, m, "👍"));
    engine.handle(
        a,
        104,
        Recall {
            thread: t,
            message: m,
        }
        .into(),
    );
    let mut out = Vec::new();
    engine.commit(&mut out);
    let both = sorted(vec![a.user, b.user]);
    assert_eq!(
        notice_pushes(&out),
        [
            (SystemEventKind::Edited, both),
            (SystemEventKind::Edited, vec![a.user]),
            (SystemEventKind::Reacted, vec![a.user]),
            (SystemEventKind::Recalled, vec![a.user]),
        ]
    );
    assert!(
        w.shared
            .store
            .message(t, m)
            .unwrap()
            .unwrap()
            .deleted_for_some
    );
    // And from the store, in a later round.
    let m2 = w.send(&a, t, 2, "again");
    assert!(
        !w.shared
            .store
            .message(t, m2)
            .unwrap()
            .unwrap()
            .deleted_for_some
    );
    assert_eq!(
        w.ask(
            &b,
            DeleteForMe {
                thread: t,
                message: m2
            }
        ),
        Done {}.into()
    );
    let out = w.run(&a, react(t, m2, "👍"));
    assert_eq!(
        notice_pushes(&out),
        [(SystemEventKind::Reacted, vec![a.user])]
    );
}

#[test]
fn a_recall_drops_the_messages_reactions_this_rounds_included() {
    let mut w = World::new(ChatConfig::default());
    let (a, b) = (w.user("alice"), w.user("bob"));
    let t = w.direct(&a, &b);
    let m = w.send(&a, t, 1, "hi");
    assert_eq!(w.ask(&b, react(t, m, "👍")), Done {}.into());
    let recall = Recall {
        thread: t,
        message: m,
    }
    .into();
    let answers = round_on_owner(&mut w, t, vec![(a, react(t, m, "🎉")), (a, recall)]);
    assert_eq!(answers, [Done {}.into(), Done {}.into()]);
    assert_eq!(w.shared.store.reactors(t, m).unwrap(), Vec::<u64>::new());
    let stored = w.shared.store.message(t, m).unwrap().unwrap();
    assert!(stored.recalled && stored.reactions.is_empty(), "{stored:?}");
}

#[test]
fn the_collector_and_an_upload_commit_never_lose_each_others_usage_change() {
    // The race, driven by hand: Alice's commit of B is staged on her shard (usage +20) when
    // the collector deletes her unreferenced A (usage -10) and commits first. A read-modify-
    // write of the counter on either side would lose the other's change (30 or 0); merges
    // add up.
    use crate::media::gc::{Collector, GcConfig};
    use std::time::Duration;
    let mut w = World::new(ChatConfig::default());
    let a = w.user("alice");
    let old = upload(&mut w, &a, 10);
    assert_eq!(w.shared.store.media_usage(a.user).unwrap(), 10);
    let data: Vec<u8> = (0..20u8).map(|i| i ^ 0x5a).collect();
    let Frame::MediaUpload(up) = w.ask(
        &a,
        MediaBegin {
            total_len: 20,
            mime: "a/b".into(),
            hash: Bytes::copy_from_slice(blake3::hash(&data).as_bytes()),
        },
    ) else {
        panic!()
    };
    let chunk = MediaChunk {
        upload: up.upload,
        offset: 0,
        data: data.clone().into(),
    };
    assert_eq!(w.ask(&a, chunk), Done {}.into());
    let commit = Frame::from(MediaCommit { upload: up.upload });
    let shard = Engine::shard_for(&w.shared, &a, &commit).unwrap() as usize;
    w.engines[shard].handle(a, 8, commit);

    std::thread::sleep(Duration::from_millis(2)); // A's grace of 0 µs has passed.
    let mut collector = Collector::new(
        w.shared.store.clone(),
        w.shared.blobs.clone(),
        GcConfig {
            upload_timeout: Duration::from_secs(3600),
            grace: Duration::ZERO,
            interval: Duration::from_secs(1),
        },
    );
    let swept = collector.sweep().unwrap();
    assert_eq!(
        (swept.blobs, swept.parts),
        (1, 0),
        "A collected, B not visible yet"
    );
    assert_eq!(w.shared.store.media_usage(a.user).unwrap(), 0);

    let mut out = Vec::new();
    w.engines[shard].commit(&mut out);
    assert!(matches!(
        &out[..],
        [Effect::Reply {
            frame: Frame::MediaRef(_),
            ..
        }]
    ));
    assert_eq!(w.shared.store.media_usage(a.user).unwrap(), 20);
    let old: [u8; 32] = old.as_ref().try_into().unwrap();
    assert!(w.shared.store.media_header(&old).unwrap().is_none());
    let mut buf = [0u8; 20];
    assert!(w.shared.blobs.read_at(&old, 0, &mut buf).is_err());
    let new = *blake3::hash(&data).as_bytes();
    assert_eq!(w.shared.blobs.read_at(&new, 0, &mut buf).unwrap(), 20);
    assert_eq!(&buf[..], &data[..]);
}

#[test]
fn a_header_whose_file_is_gone_is_repaired_by_uploading_the_content_again() {
    // The outcome of the collector deleting a file while a commit of the same content wrote
    // the header: driven by hand by deleting the file under a stored header. Before the file
    // check in MEDIA_BEGIN, the uploader was told "stored, commit at once" and the content
    // stayed unreadable for good.
    let mut w = World::new(ChatConfig::default());
    let a = w.user("alice");
    let id = upload(&mut w, &a, 50);
    let media: [u8; 32] = id.as_ref().try_into().unwrap();
    w.shared.blobs.delete(&media).unwrap();
    let all: Vec<u8> = (0..50u64).map(|i| (i % 251) as u8).collect();
    let Frame::MediaUpload(up) = w.ask(
        &a,
        MediaBegin {
            total_len: 50,
            mime: "a/b".into(),
            hash: id.clone(),
        },
    ) else {
        panic!()
    };
    assert_eq!(up.offset, 0, "the bytes must be sent again");
    let chunk = MediaChunk {
        upload: up.upload,
        offset: 0,
        data: all.clone().into(),
    };
    assert_eq!(w.ask(&a, chunk), Done {}.into());
    assert!(matches!(
        w.ask(&a, MediaCommit { upload: up.upload }),
        Frame::MediaRef(_)
    ));
    let Frame::MediaData(d) = w.ask(
        &a,
        MediaGet {
            thread: 0,
            media: id,
            offset: 0,
            max_len: 100,
        },
    ) else {
        panic!()
    };
    assert_eq!(&d.data[..], &all[..]);
}

#[test]
fn a_media_read_naming_its_thread_is_allowed_past_the_threads_checked_without_it() {
    // Media sent in more threads than one read walks (MAX_THREADS_CHECKED): a member of only
    // the last one is found when MEDIA_GET names the thread; without it the walk stops first.
    use super::media::MAX_THREADS_CHECKED;
    let mut w = World::new(ChatConfig::default());
    let (a, c) = (w.user("alice"), w.user("carol"));
    let media = upload(&mut w, &a, 10);
    let mut body = media.to_vec();
    body.extend_from_slice(b"!");
    let mut last = 0;
    for i in 0..=MAX_THREADS_CHECKED {
        let members = if i == MAX_THREADS_CHECKED {
            vec![c.user]
        } else {
            vec![]
        };
        let Frame::ThreadInfo(g) = w.ask(
            &a,
            CreateGroup {
                name: "g".into(),
                members,
            },
        ) else {
            panic!()
        };
        last = g.thread.id;
        let send = Send {
            thread: last,
            client_msg_id: 0,
            kind: MessageKind::Media,
            body: body.clone().into(),
            reply_to: 0,
        };
        assert!(matches!(w.ask(&a, send), Frame::Sent(_)));
    }
    let get = |thread| MediaGet {
        media: media.clone(),
        offset: 0,
        max_len: 10,
        thread,
    };
    assert_eq!(w.error(&c, get(0)), ErrorCode::UnknownMedia);
    assert!(matches!(w.ask(&c, get(last)), Frame::MediaData(d) if d.data.len() == 10));
}

/// Puts an engine on `w`'s shard `shard` whose commits wait at a test gate: the test sends
/// one permit per batch, and `notified` says when a batch's result is back.
fn gate_engine(
    w: &mut World,
    shard: u16,
) -> (
    crossbeam_channel::Sender<()>,
    crossbeam_channel::Receiver<()>,
) {
    let (permit, gate) = crossbeam_channel::unbounded();
    let (done, notified) = crossbeam_channel::unbounded();
    let committer = crate::store::committer::Committer::spawn_gated(
        w.shared.store.clone(),
        shard,
        Box::new(move || {
            let _ = done.send(());
        }),
        Some(gate),
    )
    .unwrap();
    w.engines[shard as usize] = Engine::pipelined(w.shared.clone(), shard, committer);
    (permit, notified)
}

fn sent_ids(out: &[Effect]) -> Vec<u64> {
    out.iter()
        .filter_map(|e| match e {
            Effect::Reply {
                frame: Frame::Sent(s),
                ..
            } => Some(s.message),
            _ => None,
        })
        .collect()
}

fn text(thread: u64, client_msg_id: u64) -> Frame {
    Send {
        thread,
        client_msg_id,
        kind: MessageKind::Text,
        body: Bytes::from_static(b"hi"),
        reply_to: 0,
    }
    .into()
}

/// The ids of `thread`'s messages `reader` reads from the committed state (HISTORY, oldest
/// first).
fn history_ids(w: &World, reader: &Caller, thread: u64) -> Vec<u64> {
    let history = History {
        thread,
        anchor: 0,
        direction: Direction::Forward,
        limit: 0,
    };
    match Engine::read(&w.shared, reader, history.into()) {
        Frame::Messages(m) => m.messages.iter().map(|m| m.id).collect(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_round_built_while_the_previous_one_commits_sees_its_state_and_waits_for_it() {
    // The commit stage holds round N (gated) while round N+1 handles requests on the same
    // thread. N+1 must see N's staged state (a member added, a send to deduplicate) although
    // the store cannot, must not evict the thread N touched (a reload would lose the member),
    // and nothing of either round may be answered, read or covered by the watermark before
    // it is durable.
    let mut w = World::new(ChatConfig {
        thread_cache: 16,
        ..ChatConfig::default()
    });
    let (a, b, c) = (w.user("alice"), w.user("bob"), w.user("carol"));
    let g = group(&mut w, &a, vec![b.user]);
    let owner = w.shared.thread_shard(g);
    // Threads of the same owner, to press the thread cache in round N+1.
    let mut others = Vec::new();
    while others.len() < 40 {
        let t = group(&mut w, &a, vec![b.user]);
        if w.shared.thread_shard(t) == owner {
            others.push(t);
        }
    }
    let (permit, notified) = gate_engine(&mut w, owner);
    let read_ids = |w: &World| history_ids(w, &b, g);
    let before = read_ids(&w);

    // Round N: carol joins, alice sends (client id 1). Sealed and handed over: held.
    let e = &mut w.engines[owner as usize];
    e.handle(
        a,
        1,
        AddMembers {
            thread: g,
            members: vec![c.user],
        }
        .into(),
    );
    e.handle(a, 2, text(g, 1));
    let mut out = Vec::new();
    e.commit(&mut out);
    assert!(out.is_empty(), "nothing leaves before round N is durable");
    let mark = w.shared.watermark();

    // Round N+1: 40 other threads first (the cache must evict to take them, and must not
    // pick the thread of round N), then the same thread: a retry of client id 1, a new send.
    let e = &mut w.engines[owner as usize];
    for &t in &others {
        e.handle(a, 4, text(t, 9));
    }
    e.handle(a, 3, text(g, 1));
    e.handle(a, 5, text(g, 2));
    assert!(
        !e.has_pending(),
        "nothing to do until the committer reports"
    );
    assert!(!e.saturated());
    e.commit(&mut out);
    assert!(out.is_empty(), "round N+1 waits for round N");
    assert_eq!(
        read_ids(&w),
        before,
        "a pool read sees nothing of round N yet"
    );
    assert_eq!(
        w.shared.watermark(),
        mark,
        "the watermark waits for round N"
    );

    // Round N becomes durable: its answers go, round N+1 is sealed and handed over.
    permit.send(()).unwrap();
    notified.recv().unwrap();
    w.engines[owner as usize].commit(&mut out);
    let first = sent_ids(&out);
    assert_eq!(first.len(), 1, "round N's SENT only: {out:?}");
    let m1 = first[0];
    assert!(read_ids(&w).contains(&m1));
    assert!(w.shared.watermark() >= m1);
    out.clear();
    w.engines[owner as usize].commit(&mut out);
    assert!(out.is_empty(), "round N+1 is still in flight");

    // Round N+1 becomes durable.
    permit.send(()).unwrap();
    notified.recv().unwrap();
    w.engines[owner as usize].commit(&mut out);
    let second = sent_ids(&out);
    assert_eq!(second.len(), 2 + others.len());
    assert_eq!(
        second[others.len()],
        m1,
        "the retry is answered with round N's message"
    );
    let m2 = *second.last().unwrap();
    assert!(m2 > m1);
    let push_to = out
        .iter()
        .find_map(|e| match e {
            Effect::Push {
                users,
                frame: Frame::MessagePush(p),
                ..
            } if p.message.id == m2 => Some(users.to_vec()),
            _ => None,
        })
        .expect("a push of m2");
    assert!(
        push_to.contains(&c.user),
        "carol, added by round N, gets round N+1's message: {push_to:?}"
    );
    let ids = read_ids(&w);
    assert_eq!(ids.iter().filter(|&&id| id == m1).count(), 1, "stored once");
    assert!(ids.contains(&m2));
    assert!(w.shared.watermark() >= m2);
}

#[test]
fn an_idle_shard_writes_its_round_itself_but_never_past_a_round_in_flight() {
    // `commit_idle` writes the round on the calling thread only when nothing is in flight
    // and nothing durable waits to be released; else it hands the round over like
    // `commit`. Driven by hand: the writer thread takes a batch only when the test says so.
    let mut w = World::new(ChatConfig::default());
    let (a, b) = (w.user("alice"), w.user("bob"));
    let t = w.direct(&a, &b);
    let owner = w.shared.thread_shard(t);
    let (permit, notified) = gate_engine(&mut w, owner);
    let read_ids = |w: &World| history_ids(w, &b, t);
    let mut out = Vec::new();

    // Idle, nothing in flight: written here, answered at once, the writer never asked.
    let e = &mut w.engines[owner as usize];
    e.handle(a, 1, text(t, 1));
    e.commit_idle(&mut out);
    let m1 = sent_ids(&out);
    assert_eq!(m1.len(), 1, "answered in the same round: {out:?}");
    assert!(read_ids(&w).contains(&m1[0]), "durable before its answer");
    assert!(notified.is_empty(), "no hand-over");
    out.clear();

    // Round 2 is handed over (the shard was busy) and held at the gate. Round 3, on an
    // idle shard, must not overtake it: it waits, unsealed.
    let e = &mut w.engines[owner as usize];
    e.handle(a, 2, text(t, 2));
    e.commit(&mut out);
    assert!(out.is_empty(), "round 2 is in flight");
    let e = &mut w.engines[owner as usize];
    e.handle(a, 3, text(t, 3));
    e.commit_idle(&mut out);
    assert!(out.is_empty(), "round 3 waits behind round 2");
    assert_eq!(read_ids(&w), m1, "neither round 2 nor 3 reached the store");

    // Round 2 is durable. Its answer must not wait for round 3's sync: round 3 is handed
    // over (held at the gate) and round 2's answer goes now.
    permit.send(()).unwrap();
    notified.recv().unwrap();
    w.engines[owner as usize].commit_idle(&mut out);
    let m2 = sent_ids(&out);
    assert_eq!(m2.len(), 1, "round 2's SENT only: {out:?}");
    assert_eq!(read_ids(&w), [m1[0], m2[0]], "round 3 is at the gate");
    out.clear();
    w.engines[owner as usize].commit_idle(&mut out);
    assert!(out.is_empty(), "round 3 is still in flight");

    permit.send(()).unwrap();
    notified.recv().unwrap();
    w.engines[owner as usize].commit_idle(&mut out);
    let m3 = sent_ids(&out);
    assert_eq!(m3.len(), 1, "round 3's SENT: {out:?}");
    assert_eq!(read_ids(&w), [m1[0], m2[0], m3[0]], "in the order sealed");
}

#[test]
fn a_failed_commit_fails_its_round_and_the_round_built_on_it() {
    let mut w = World::new(ChatConfig::default());
    let (a, b) = (w.user("alice"), w.user("bob"));
    let t = w.direct(&a, &b);
    let owner = w.shared.thread_shard(t);
    let (permit, notified) = gate_engine(&mut w, owner);
    let flag = w._dir.path().join("full");
    w.shared.store.fake_full_disk(flag.clone());

    let e = &mut w.engines[owner as usize];
    e.handle(a, 1, text(t, 1));
    let mut out = Vec::new();
    e.commit(&mut out);
    e.handle(a, 2, text(t, 2));
    e.commit(&mut out);
    assert!(out.is_empty());
    std::fs::write(&flag, b"").unwrap();
    permit.send(()).unwrap();
    notified.recv().unwrap();
    w.engines[owner as usize].commit(&mut out);
    let codes: Vec<_> = out
        .iter()
        .map(|e| match e {
            Effect::Reply {
                request_id,
                frame: Frame::ErrorReply(r),
                ..
            } => (*request_id, ErrorCode::from_u16(r.code)),
            other => panic!("only INTERNAL errors, got {other:?}"),
        })
        .collect();
    assert_eq!(
        codes,
        [
            (1, Some(ErrorCode::Internal)),
            (2, Some(ErrorCode::Internal))
        ],
        "round N failed, and round N+1 was built on it"
    );
    assert_eq!(
        w.shared.watermark(),
        w.shared.clock.last(),
        "nothing in flight"
    );

    // The disk has room again: a retry of client id 1 is stored (its first try never was).
    std::fs::remove_file(&flag).unwrap();
    out.clear();
    let e = &mut w.engines[owner as usize];
    e.handle(a, 3, text(t, 1));
    e.commit(&mut out);
    permit.send(()).unwrap();
    notified.recv().unwrap();
    w.engines[owner as usize].commit(&mut out);
    assert_eq!(sent_ids(&out).len(), 1);
    assert_eq!(w.history(&b, t).len(), 1);
}

#[test]
fn a_full_round_behind_one_in_flight_stops_reading() {
    let mut w = World::new(ChatConfig::default());
    let (a, b) = (w.user("alice"), w.user("bob"));
    let t = w.direct(&a, &b);
    let owner = w.shared.thread_shard(t);
    let (permit, notified) = gate_engine(&mut w, owner);
    let e = &mut w.engines[owner as usize];
    e.handle(a, 1, text(t, 1));
    let mut out = Vec::new();
    e.commit(&mut out);
    // Each SEND stages two answers (SENT and the push).
    let mut sends = 0;
    while !e.saturated() {
        e.handle(a, 2, text(t, 100 + sends as u64));
        sends += 1;
        assert!(sends <= super::engine::STAGED_BOUND, "the round is bounded");
    }
    assert_eq!(sends, super::engine::STAGED_BOUND / 2);
    permit.send(()).unwrap();
    notified.recv().unwrap();
    e.commit(&mut out);
    assert!(
        !e.saturated(),
        "once round N is durable the full round is in flight"
    );
    permit.send(()).unwrap();
    notified.recv().unwrap();
    e.commit(&mut out);
    assert_eq!(sent_ids(&out).len(), 1 + sends);
}

/// What a round in flight staged must count once, not twice: a cap check in the next round
/// reads the store, which may already show the sealed round (its write finished) before the
/// shard has taken the committer's result. Driven by hand: round N is written and reported,
/// but not yet polled, when round N+1 checks its caps.
#[test]
fn a_cap_counts_a_round_whose_write_finished_but_was_not_yet_taken_once() {
    let mut w = World::new(ChatConfig {
        max_contacts: 3,
        max_deleted_per_thread: 3,
        ..ChatConfig::default()
    });
    let a = w.user("alice");
    let others: Vec<Caller> = ["bob", "carol", "dave", "erin"]
        .iter()
        .map(|h| w.user(h))
        .collect();
    let thread = w.direct(&a, &others[0]);
    let ids: Vec<u64> = (1..=3).map(|i| w.send(&a, thread, i, "x")).collect();

    // Deletions run on the thread's owner, contacts on the user's shard.
    for (shard, first, second) in [
        (
            w.shared.thread_shard(thread),
            vec![
                Frame::from(DeleteForMe {
                    thread,
                    message: ids[0],
                }),
                DeleteForMe {
                    thread,
                    message: ids[1],
                }
                .into(),
            ],
            Frame::from(DeleteForMe {
                thread,
                message: ids[2],
            }),
        ),
        (
            w.shared.user_shard(a.user),
            vec![
                ContactAdd {
                    user: others[1].user,
                }
                .into(),
                ContactAdd {
                    user: others[2].user,
                }
                .into(),
            ],
            ContactAdd {
                user: others[3].user,
            }
            .into(),
        ),
    ] {
        let (permit, notified) = gate_engine(&mut w, shard);
        let e = &mut w.engines[shard as usize];
        for (i, f) in first.into_iter().enumerate() {
            e.handle(a, i as u32 + 1, f);
        }
        let mut out = Vec::new();
        e.commit(&mut out);
        // Round N's write finishes and reports; the shard has not polled it yet.
        permit.send(()).unwrap();
        notified
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
        // Round N+1: the third of three allowed.
        e.handle(a, 9, second);
        permit.send(()).unwrap();
        let mut answers = Vec::new();
        while answers.len() < 3 {
            e.commit(&mut out);
            for effect in out.drain(..) {
                if let Effect::Reply {
                    request_id, frame, ..
                } = effect
                {
                    answers.push((request_id, frame));
                }
            }
            if answers.len() < 3 {
                let _ = notified.recv_timeout(std::time::Duration::from_secs(10));
            }
        }
        answers.sort_by_key(|(id, _)| *id);
        let codes: Vec<_> = answers.iter().map(|(_, f)| code_of(f)).collect();
        assert_eq!(codes, [None, None, None], "{answers:?}");
    }
}

/// `caller`'s unread count of `thread` as LIST_THREADS shows it.
fn unread_of(w: &mut World, caller: &Caller, thread: u64) -> u32 {
    let Frame::ThreadList(l) = w.ask(
        caller,
        ListThreads {
            before_msg_id: 0,
            before_thread: 0,
            limit: 100,
        },
    ) else {
        panic!("LIST_THREADS failed")
    };
    l.threads
        .iter()
        .find(|t| t.id == thread)
        .map(|t| t.unread)
        .expect("the thread is listed")
}

#[test]
fn unread_counts_others_messages_above_the_read_cursor_not_own_or_system_ones() {
    let mut w = World::new(ChatConfig::default());
    let (a, b, c) = (w.user("alice"), w.user("bob"), w.user("carol"));
    let g = group(&mut w, &a, vec![b.user, c.user]);
    // CREATED is a system message: nothing is unread.
    assert_eq!(unread_of(&mut w, &a, g), 0);
    assert_eq!(unread_of(&mut w, &b, g), 0);
    w.send(&b, g, 1, "b1");
    w.send(&b, g, 2, "b2");
    w.send(&a, g, 1, "a1");
    let b3 = w.send(&b, g, 3, "b3");
    let c1 = w.send(&c, g, 1, "c1");
    // Alice's own SEND moved her read cursor past b1 and b2.
    assert_eq!(unread_of(&mut w, &a, g), 2);
    assert_eq!(unread_of(&mut w, &b, g), 1);
    assert_eq!(unread_of(&mut w, &c, g), 0);
    w.ask(
        &a,
        Receipt {
            thread: g,
            kind: ReceiptKind::Read,
            up_to: b3,
        },
    );
    assert_eq!(unread_of(&mut w, &a, g), 1);
    // A RENAMED notice is a system message; a recalled message still counts (as it did
    // when the `unread` index kept its row), its RECALLED notice does not.
    w.ask(
        &b,
        RenameGroup {
            thread: g,
            name: "h".into(),
        },
    );
    assert_eq!(
        w.ask(
            &c,
            Recall {
                thread: g,
                message: c1,
            },
        ),
        Done {}.into()
    );
    assert_eq!(unread_of(&mut w, &a, g), 1);
    assert_eq!(unread_of(&mut w, &b, g), 1);
    w.send(&c, g, 2, "c2");
    assert_eq!(unread_of(&mut w, &a, g), 2);
}

#[test]
fn a_member_added_back_does_not_count_their_own_earlier_messages_as_unread() {
    let mut w = World::new(ChatConfig::default());
    let (a, b) = (w.user("alice"), w.user("bob"));
    let g = group(&mut w, &a, vec![b.user]);
    w.send(&b, g, 1, "b1");
    w.send(&b, g, 2, "b2");
    let a1 = w.send(&a, g, 1, "a1");
    w.ask(
        &a,
        RemoveMember {
            thread: g,
            user: b.user,
        },
    );
    w.send(&a, g, 2, "a2");
    w.send(&a, g, 3, "a3");
    assert_eq!(
        w.ask(
            &a,
            AddMembers {
                thread: g,
                members: vec![b.user],
            },
        ),
        Done {}.into()
    );
    // Bob starts over with his read cursor at 0: Alice's three are unread, his two are not.
    assert_eq!(unread_of(&mut w, &b, g), 3);
    w.ask(
        &b,
        Receipt {
            thread: g,
            kind: ReceiptKind::Read,
            up_to: a1,
        },
    );
    assert_eq!(unread_of(&mut w, &b, g), 2);
    w.send(&a, g, 4, "a4");
    assert_eq!(unread_of(&mut w, &b, g), 3);
    w.send(&b, g, 3, "b3");
    assert_eq!(unread_of(&mut w, &b, g), 0);
    w.send(&a, g, 5, "a5");
    assert_eq!(unread_of(&mut w, &b, g), 1);
}

#[test]
fn unread_counts_from_a_hidden_conversations_cut_and_stop_at_the_cap() {
    let mut w = World::new(ChatConfig::default());
    let (a, b) = (w.user("alice"), w.user("bob"));
    let ab = w.direct(&a, &b);
    w.send(&b, ab, 1, "1");
    w.send(&b, ab, 2, "2");
    w.ask(
        &a,
        SetThreadState {
            thread: ab,
            muted: false,
            hidden: true,
            label: String::new(),
        },
    );
    w.send(&b, ab, 3, "3");
    assert_eq!(unread_of(&mut w, &a, ab), 1);
    // 1,000 more in one round: the count stops at UNREAD_CAP, on the cursor's fast path and
    // on a rejoined member's message-by-message one.
    let g = group(&mut w, &a, vec![b.user]);
    w.ask(
        &a,
        RemoveMember {
            thread: g,
            user: b.user,
        },
    );
    w.send(&a, g, 1, "a1");
    assert_eq!(
        w.ask(
            &a,
            AddMembers {
                thread: g,
                members: vec![b.user],
            },
        ),
        Done {}.into()
    );
    for (thread, sender) in [(ab, b), (g, a)] {
        let frame = |n: u64| Send {
            thread,
            client_msg_id: 100 + n,
            kind: MessageKind::Text,
            body: Bytes::from_static(b"x"),
            reply_to: 0,
        };
        let shard = Engine::shard_for(&w.shared, &sender, &frame(0).into()).unwrap();
        let engine = &mut w.engines[shard as usize];
        for n in 0..1_000 {
            engine.handle(sender, 7, frame(n).into());
        }
        engine.finish(&mut Vec::new());
    }
    assert_eq!(unread_of(&mut w, &a, ab), 999);
    assert_eq!(unread_of(&mut w, &b, g), 999);
}

#[test]
fn a_send_above_the_senders_bound_reads_neither_the_recent_sends_nor_the_store() {
    // A dedupe entry planted behind the engine's back, above alice's bound: a SEND with that
    // id is taken as new without a lookup. (With a lookup it would be answered with the
    // planted message id, inside the window.)
    let mut w = World::new(ChatConfig::default());
    let (a, b) = (w.user("alice"), w.user("bob"));
    let t = w.direct(&a, &b);
    let first = w.send(&a, t, 1, "one");
    let planted = crate::clock::wall_us();
    let mut batch = w.shared.store.batch();
    batch.put_dedupe(t, a.user, 7, planted);
    w.shared.store.commit(batch).unwrap();
    let seventh = w.send(&a, t, 7, "seven");
    assert_ne!(seventh, planted, "no lookup above the bound");
    assert_eq!(w.history(&b, t).len(), 2);
    // At or below the bound, the lookups answer as before.
    assert_eq!(w.send(&a, t, 1, "one"), first);
    assert_eq!(w.send(&a, t, 7, "seven"), seventh);
    assert_eq!(w.history(&b, t).len(), 2, "the retries stored nothing");
}

#[test]
fn a_bound_forgotten_while_its_send_is_in_flight_is_learnt_again_with_that_send() {
    // One bound at most (`recent_sends: 1`): bob's SEND makes the shard forget alice's while
    // her round is held at the commit gate, not yet in the store. Her retry in the next
    // round learns the bound again: from the store (which has nothing yet) and from the sends
    // not durable, which hold her id. Learnt from the store alone, the retry would be stored
    // as a second message.
    let mut w = World::new(ChatConfig {
        recent_sends: 1,
        ..ChatConfig::default()
    });
    let (a, b) = (w.user("alice"), w.user("bob"));
    let t = w.direct(&a, &b);
    let owner = w.shared.thread_shard(t);
    let (permit, notified) = gate_engine(&mut w, owner);
    let mut out = Vec::new();
    let e = &mut w.engines[owner as usize];
    e.handle(a, 1, text(t, 5));
    e.commit(&mut out);
    assert!(out.is_empty(), "alice's round is at the gate");
    e.handle(b, 2, text(t, 1));
    e.handle(a, 3, text(t, 5));
    for _ in 0..2 {
        permit.send(()).unwrap();
        notified.recv().unwrap();
        w.engines[owner as usize].commit(&mut out);
    }
    let sent = sent_ids(&out);
    assert_eq!(sent.len(), 3, "{out:?}");
    assert_eq!(
        sent[2], sent[0],
        "the retry is answered with the first send's id"
    );
    let ids = history_ids(&w, &b, t);
    assert_eq!(ids.len(), 2, "alice's message once, bob's once: {ids:?}");
}
