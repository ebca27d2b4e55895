//! Chat engine benchmarks, each against a raw-RocksDB baseline measured in the same run.
//!
//! - `thread_list/engine_first_page`: LIST_THREADS (20 rows) for a user with 1,000 threads,
//!   each with `UNREAD` messages unread (sent through the engine after one of the user's own),
//!   through the engine; baseline `thread_list/raw_membership_scan`: only the prefix scan of
//!   that user's 1,000 memberships. Target: first page under 5 ms.
//! - `send_round/engine_100`: 100 SENDs staged and group-committed as one round; baseline
//!   `send_round/raw_write_100`: one WriteBatch of 100 equally sized puts, same fsync mode.

use std::sync::Arc;

use bytes::Bytes;
use courier::caller::{Caller, ConnRef};
use courier::chat::{ChatConfig, Effect, Engine, Shared};
use courier::clock::Clock;
use courier::store::{FsyncMode, MemberRecord, MessageRecord, PrivateState, Store, ThreadRecord};
use courier_protocol::{ListThreads, MessageKind, OpenDirect, Send};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

const THREADS: u64 = 1_000;
/// Messages of the peer after the user's own last one, per thread of the list bench.
const UNREAD: u64 = 100;

fn caller(user: u64) -> Caller {
    Caller {
        user,
        device: 1,
        conn: ConnRef {
            shard: 0,
            slot: 1,
            gen: 1,
            node: 0,
        },
        checked: Default::default(),
    }
}

/// A store where user 1 has `THREADS` direct threads, each with one message.
fn populated(dir: &std::path::Path) -> Store {
    populated_with(dir, false)
}

/// [`populated`], and when `unread`, in each thread one message of user 1 and then `UNREAD` of
/// the peer, sent through the engine (so every stored row is what a SEND writes).
fn populated_with(dir: &std::path::Path, unread: bool) -> Store {
    let store = Store::open(dir, FsyncMode::Never).unwrap();
    let mut batch = store.batch();
    let mut users = store.batch();
    for peer in 1..=THREADS + 1 {
        let rec = courier::store::UserRecord {
            handle: format!("user{peer}"),
            password_hash: String::new(),
            created_at: 0,
        };
        users.put_user(peer, &rec);
    }
    store.commit(users).unwrap();
    for i in 0..THREADS {
        let thread = store.next_thread_id(0).unwrap();
        let peer = i + 2;
        let msg_id = 1_000_000 + i;
        batch.put_thread(
            thread,
            &ThreadRecord {
                last_msg_id: msg_id,
                changed_at: msg_id,
                member_count: 2,
                ..Default::default()
            },
        );
        for u in [1, peer] {
            batch.put_member(thread, u, &MemberRecord::default());
            batch.put_private_state(u, thread, &PrivateState::default());
        }
        batch.put_direct(1, peer, thread);
        let m = MessageRecord {
            sender: peer,
            client_msg_id: i,
            kind: MessageKind::Text,
            recalled: false,
            body: Bytes::from(vec![b'x'; 100]),
            ..Default::default()
        };
        batch.put_message(thread, msg_id, &m);
    }
    store.commit(batch).unwrap();
    if unread {
        let clock = Arc::new(Clock::new(store.clock_floor().unwrap()));
        let shared = Shared::new(store.clone(), clock, ChatConfig::default(), 1);
        let mut engine = Engine::new(shared, 0);
        let mut out = Vec::new();
        let threads = store.memberships(1).unwrap();
        for (n, (thread, _)) in threads.iter().enumerate() {
            let peer = n as u64 + 2;
            for (i, user) in std::iter::once(1)
                .chain((0..UNREAD).map(|_| peer))
                .enumerate()
            {
                let send = Send {
                    thread: *thread,
                    client_msg_id: i as u64 + 1,
                    kind: MessageKind::Text,
                    body: Bytes::from(vec![b'x'; 100]),
                    reply_to: 0,
                };
                engine.handle(caller(user), 1, send.into());
            }
            engine.commit(&mut out);
            out.clear();
        }
    }
    store
}

fn thread_list(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = populated_with(dir.path(), true);
    let clock = Arc::new(Clock::new(store.clock_floor().unwrap()));
    let shared = Shared::new(store.clone(), clock, ChatConfig::default(), 1);
    let mut engine = Engine::new(shared, 0);
    let me = caller(1);
    let mut out = Vec::new();
    let mut g = c.benchmark_group("thread_list");
    g.bench_function("engine_first_page", |b| {
        b.iter(|| {
            engine.handle(
                me,
                1,
                ListThreads {
                    before_msg_id: 0,
                    before_thread: 0,
                    limit: 20,
                }
                .into(),
            );
            engine.commit(&mut out);
            assert!(matches!(out.pop(), Some(Effect::Reply { .. })));
        })
    });
    g.bench_function("raw_membership_scan", |b| {
        b.iter(|| assert_eq!(store.memberships(1).unwrap().len(), THREADS as usize))
    });
    g.finish();
}

fn send_round(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = populated(dir.path());
    let clock = Arc::new(Clock::new(store.clock_floor().unwrap()));
    let shared = Shared::new(store.clone(), clock, ChatConfig::default(), 1);
    let mut engine = Engine::new(shared, 0);
    let me = caller(1);
    let mut out = Vec::new();
    engine.handle(me, 1, OpenDirect { peer: 2 }.into());
    engine.commit(&mut out);
    let thread = store.direct_thread(1, 2).unwrap().unwrap();
    let body = Bytes::from(vec![b'x'; 100]);
    let mut next = 0u64;
    let mut g = c.benchmark_group("send_round");
    g.throughput(criterion::Throughput::Elements(100));
    g.bench_function("engine_100", |b| {
        b.iter(|| {
            for _ in 0..100 {
                next += 1;
                engine.handle(
                    me,
                    1,
                    Send {
                        thread,
                        client_msg_id: next,
                        kind: MessageKind::Text,
                        body: body.clone(),
                        reply_to: 0,
                    }
                    .into(),
                );
            }
            out.clear();
            engine.commit(&mut out);
        })
    });
    let mut key = 10_000_000u64;
    g.bench_function("raw_write_100", |b| {
        b.iter_batched(
            || store.batch(),
            |mut batch| {
                for _ in 0..100 {
                    key += 1;
                    let m = MessageRecord {
                        sender: 1,
                        client_msg_id: key,
                        kind: MessageKind::Text,
                        recalled: false,
                        body: body.clone(),
                        ..Default::default()
                    };
                    batch.put_message(thread, key, &m);
                }
                store.commit(batch).unwrap();
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, thread_list, send_round);
criterion_main!(benches);
