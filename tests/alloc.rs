//! Allocations on the SEND path, counted by a global allocator of this test binary.
//!
//! A steady-state round of N SENDs through `chat::Engine` (handle, then commit: staging, the
//! WriteBatch, the write, the released SENT replies and MESSAGE_PUSH effects) is measured for
//! a small and a large N after warm-up rounds have grown every reusable buffer. The marginal
//! allocations per message, `(allocs(large) - allocs(small)) / (large - small)`, must stay at
//! or below [`PER_MESSAGE`]: a change that makes a SEND allocate more per message fails here.
//!
//! Measured (issue 13, item 3): before, 2 allocations per message, both in encoding the
//! stored message (`Record::encode`: a 64-byte `BytesMut`, then its growth for a 100-byte
//! body); the batch now encodes into a scratch buffer it keeps (`Record::encode_into`), and a
//! round of SENDs allocates a constant 8 times whatever N (the next round's batch and scratch,
//! the clock-floor key, growth of reused maps). A round of SENDs each to its own thread (paced
//! traffic) also writes each thread's row and the sender's member row: 2.00 allocations per
//! message until every record was encoded through that scratch buffer, 0.00 since. The
//! shard's side (decode, routing, writes, `src/shard/`) is counted with `perf` in
//! BENCHMARKS.md ("allocations per message on the shard threads").

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use courier::caller::{Caller, ConnRef};
use courier::chat::{ChatConfig, Engine, Shared};
use courier::clock::Clock;
use courier::store::{FsyncMode, Store, UserRecord};
use courier_protocol::{Frame, MessageKind, OpenDirect, Send};

/// The most allocations one more SEND in a round may add (see the module docs): none.
const PER_MESSAGE: f64 = 0.5;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Only the test's own thread is counted (RocksDB's and the harness's are not).
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn counting() -> bool {
    COUNTING.try_with(Cell::get).unwrap_or(false)
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting only reads a
// thread-local flag and bumps an atomic, neither of which allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counting() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as for `dealloc`; the caller guarantees `new_size` is valid for `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn caller(user: u64) -> Caller {
    Caller {
        user,
        device: 1,
        conn: ConnRef {
            node: 0,
            shard: 0,
            slot: 1,
            gen: 1,
        },
        checked: Default::default(),
    }
}

struct Sender {
    _dir: tempfile::TempDir,
    engine: Engine,
    threads: Vec<u64>,
    next: u64,
    body: Bytes,
    out: Vec<courier::chat::Effect>,
}

impl Sender {
    /// User 1 and a direct thread with each of `peers` other users.
    fn new(peers: u64) -> Sender {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        let mut users = store.batch();
        for user in 1..=peers + 1 {
            let rec = UserRecord {
                handle: format!("user{user}"),
                password_hash: String::new(),
                created_at: 0,
            };
            users.put_user(user, &rec);
        }
        store.commit(users).unwrap();
        let clock = Arc::new(Clock::new(store.clock_floor().unwrap()));
        let shared = Shared::new(store.clone(), clock, ChatConfig::default(), 1);
        let mut engine = Engine::new(shared, 0);
        let mut out = Vec::new();
        for peer in 2..=peers + 1 {
            engine.handle(caller(1), 1, OpenDirect { peer }.into());
        }
        engine.commit(&mut out);
        let threads = (2..=peers + 1)
            .map(|peer| store.direct_thread(1, peer).unwrap().unwrap())
            .collect();
        Sender {
            _dir: dir,
            engine,
            threads,
            next: 0,
            body: Bytes::from(vec![b'x'; 100]),
            out,
        }
    }

    /// One round of `n` SENDs, the i-th to thread `i % threads` of the sender's; returns the
    /// allocations it made on this thread.
    fn round(&mut self, n: usize, threads: usize) -> u64 {
        let frames: Vec<Frame> = (0..n)
            .map(|i| {
                self.next += 1;
                Send {
                    thread: self.threads[i % threads],
                    client_msg_id: self.next,
                    kind: MessageKind::Text,
                    body: self.body.clone(),
                    reply_to: 0,
                }
                .into()
            })
            .collect();
        self.out.clear();
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        COUNTING.with(|c| c.set(true));
        for frame in frames {
            self.engine.handle(caller(1), 1, frame);
        }
        self.engine.commit(&mut self.out);
        COUNTING.with(|c| c.set(false));
        let made = ALLOCATIONS.load(Ordering::Relaxed) - before;
        assert_eq!(self.out.len(), 2 * n, "a SENT and a push per message");
        made
    }
}

/// Asserts that the marginal allocations per message between a round of `SMALL` and one of
/// `LARGE` SENDs, the least of several rounds each (a rare growth of a map or of RocksDB's
/// arena is not the path's cost per message), are at most [`PER_MESSAGE`]. `spread`: each SEND
/// of a round to its own thread.
fn assert_allocations_per_message(spread: bool) {
    const SMALL: usize = 16;
    const LARGE: usize = 512;
    let mut s = Sender::new(if spread { LARGE as u64 } else { 1 });
    let threads = |n: usize| if spread { n } else { 1 };
    for _ in 0..8 {
        s.round(LARGE, threads(LARGE));
    }
    let small = (0..5)
        .map(|_| s.round(SMALL, threads(SMALL)))
        .min()
        .unwrap();
    let large = (0..5)
        .map(|_| s.round(LARGE, threads(LARGE)))
        .min()
        .unwrap();
    let per_message = (large as f64 - small as f64) / (LARGE - SMALL) as f64;
    eprintln!(
        "allocations (spread: {spread}): {small} for {SMALL} SENDs, {large} for {LARGE}: \
         {per_message:.2} per message"
    );
    assert!(
        per_message <= PER_MESSAGE,
        "a SEND (spread over threads: {spread}) allocates {per_message:.2} times per message \
         in a steady round (at most {PER_MESSAGE})"
    );
}

#[test]
fn a_send_round_allocates_at_most_a_few_times_per_message() {
    assert_allocations_per_message(false);
}

/// Paced traffic: a round holds one SEND of each of many conversations, so every SEND also
/// changes its thread's row and the sender's member row (read up to their own message).
/// Before those rows were encoded into the batch's scratch buffer, 2 allocations each.
#[test]
fn a_round_of_sends_to_many_threads_allocates_nothing_per_thread() {
    assert_allocations_per_message(true);
}
