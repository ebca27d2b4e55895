//! Memtable options for the families keyed by thread (`messages`, `unread`: thread u64 ++
//! message id u64), measured on a real RocksDB the way `Batch::put_message` writes them.
//!
//! Every candidate gets its own database, pre-filled with [`PREFILL`] messages spread over
//! [`THREADS`] threads (ids increasing per thread, as clock values are), so that the memtable
//! is as large as it is on a busy server when the timed inserts run.
//!
//! - `memtable_insert/<candidate>`: one round of [`ROUND`] messages (a message row and an
//!   `unread` row each, as the store wrote them before issue 13; `one_key` only the message
//!   row; `seq` only the message row, 8 bytes longer: what the store writes since), one WriteBatch, WAL written, not
//!   synced (the sync is the same for every candidate and would hide the memtable).
//! - `memtable_read/<candidate>/history`: the newest 50 messages of one thread (a reverse
//!   bounded scan, as HISTORY does); `/sync`: every message of 20 threads above a watermark
//!   (forward scans, as SYNC does); `/unread`: the `unread` rows of one thread above a cursor
//!   (as LIST_THREADS counts them).
//!
//! Before its timings, each candidate prints the key comparisons a round costs (RocksDB's perf
//! context): a count, comparable across runs on a busy machine.
//!
//! `hint` is what `Store::open` uses for `messages` since `pcpu` (`today` before issue 13). `MEMTABLE_CANDIDATES=today,one_key`
//! runs only the named candidates.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use rocksdb::perf::{set_perf_stats, PerfContext, PerfMetric, PerfStatsLevel};
use rocksdb::{
    BlockBasedOptions, ColumnFamilyDescriptor, MemtableFactory, Options, ReadOptions,
    SliceTransform, WriteBatch, WriteOptions, DB,
};

const THREADS: u64 = 20_000;
const PREFILL: u64 = 400_000;
const ROUND: u64 = 64;
/// A typical message value: the record header and a short text body.
const VALUE: usize = 120;

#[derive(Clone, Copy)]
enum Candidate {
    /// Options of `messages`/`unread` before issue 13: skip list, 64 MiB write buffer.
    Today,
    /// Today's, but only the message row (what dropping the `unread` row would save).
    OneKey,
    /// Only the message row, with its `seq` (8 bytes) appended: what `Store` writes now.
    Seq,
    /// `seq`, with inserts hinted per thread id (`memtable_insert_with_hint_prefix_extractor`,
    /// which needs concurrent memtable writes off): what `Store` writes since `pcpu`.
    Hint,
    /// Skip list with a prefix extractor on the thread id and a memtable prefix bloom.
    PrefixBloom,
    /// Prefix bloom also over whole keys.
    WholeKeyBloom,
    /// Hash skip list: one small skip list per thread prefix.
    HashSkipList,
    /// Hash linked list: one sorted list per thread prefix.
    HashLinkList,
    /// Skip list with an 8 MiB write buffer (a smaller list, more of it in cache).
    SmallBuffer,
    /// Skip list with in-place updates on (turns concurrent memtable writes off).
    InPlace,
}

impl Candidate {
    fn name(self) -> &'static str {
        match self {
            Candidate::Today => "today",
            Candidate::OneKey => "one_key",
            Candidate::Seq => "seq",
            Candidate::Hint => "hint",
            Candidate::PrefixBloom => "prefix_bloom",
            Candidate::WholeKeyBloom => "whole_key_bloom",
            Candidate::HashSkipList => "hash_skiplist",
            Candidate::HashLinkList => "hash_linklist",
            Candidate::SmallBuffer => "small_buffer_8m",
            Candidate::InPlace => "inplace_update",
        }
    }

    fn cf_options(self) -> Options {
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        let mut cf = match self {
            Candidate::Hint => Options::default()
                .get_options_from_string(
                    "memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.8",
                )
                .unwrap(),
            _ => Options::default(),
        };
        cf.set_block_based_table_factory(&table);
        cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let prefix = |cf: &mut Options| {
            cf.set_prefix_extractor(SliceTransform::create_fixed_prefix(8));
            cf.set_memtable_prefix_bloom_ratio(0.1);
        };
        match self {
            Candidate::Today | Candidate::OneKey | Candidate::Seq | Candidate::Hint => {}
            Candidate::PrefixBloom => prefix(&mut cf),
            Candidate::WholeKeyBloom => {
                prefix(&mut cf);
                cf.set_memtable_whole_key_filtering(true);
            }
            Candidate::HashSkipList => {
                prefix(&mut cf);
                cf.set_memtable_factory(MemtableFactory::HashSkipList {
                    bucket_count: 200_000,
                    height: 4,
                    branching_factor: 4,
                });
            }
            Candidate::HashLinkList => {
                prefix(&mut cf);
                cf.set_memtable_factory(MemtableFactory::HashLinkList {
                    bucket_count: 200_000,
                });
            }
            Candidate::SmallBuffer => cf.set_write_buffer_size(8 << 20),
            Candidate::InPlace => cf.set_inplace_update_support(true),
        }
        cf
    }

    /// Whether reads may use prefix mode (the store does so on these families).
    fn prefixed(self) -> bool {
        !matches!(
            self,
            Candidate::Today
                | Candidate::OneKey
                | Candidate::Seq
                | Candidate::Hint
                | Candidate::SmallBuffer
                | Candidate::InPlace
        )
    }
}

struct Bench {
    db: DB,
    _dir: tempfile::TempDir,
    /// The next id per thread (ids only grow, as clock values do).
    next_id: Vec<u64>,
    /// A xorshift state for picking threads.
    rng: u64,
    candidate: Candidate,
    value: Vec<u8>,
}

fn key(thread: u64, id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&thread.to_be_bytes());
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

impl Bench {
    fn new(candidate: Candidate) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        if matches!(
            candidate,
            Candidate::InPlace
                | Candidate::HashSkipList
                | Candidate::HashLinkList
                | Candidate::Hint
        ) {
            // Only the skip list takes concurrent inserts; RocksDB refuses to open otherwise.
            opts.set_allow_concurrent_memtable_write(false);
        }
        let cfs = ["messages", "unread"]
            .map(|name| ColumnFamilyDescriptor::new(name, candidate.cf_options()));
        let db = DB::open_cf_descriptors(&opts, dir.path(), cfs).unwrap();
        let mut b = Bench {
            db,
            _dir: dir,
            next_id: vec![1_000_000; THREADS as usize],
            rng: 0x9E37_79B9_7F4A_7C15,
            candidate,
            value: vec![
                b'x';
                VALUE
                    + if matches!(candidate, Candidate::Seq | Candidate::Hint) {
                        8
                    } else {
                        0
                    }
            ],
        };
        for _ in 0..PREFILL / ROUND {
            b.round();
        }
        b
    }

    fn pick(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % THREADS
    }

    /// One round of messages, one WriteBatch.
    fn round(&mut self) {
        let mut picks = [0u64; ROUND as usize];
        for p in &mut picks {
            *p = self.pick();
        }
        let messages = self.db.cf_handle("messages").unwrap();
        let unread = self.db.cf_handle("unread").unwrap();
        let mut batch = WriteBatch::default();
        for thread in picks {
            let id = self.next_id[thread as usize];
            self.next_id[thread as usize] += 1;
            let k = key(thread, id);
            batch.put_cf(messages, k, &self.value);
            if !matches!(
                self.candidate,
                Candidate::OneKey | Candidate::Seq | Candidate::Hint
            ) {
                batch.put_cf(unread, k, 7u64.to_be_bytes());
            }
        }
        self.db.write_opt(batch, &WriteOptions::default()).unwrap();
    }

    fn read_options(&self, lower: &[u8], upper: &[u8]) -> ReadOptions {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lower.to_vec());
        ro.set_iterate_upper_bound(upper.to_vec());
        if self.candidate.prefixed() {
            ro.set_prefix_same_as_start(true);
        }
        ro
    }

    /// Rows of `cf` for `thread` with id in `from..to`, newest first when `reverse`, at most
    /// `limit`.
    fn scan(
        &self,
        cf: &str,
        thread: u64,
        from: u64,
        to: u64,
        reverse: bool,
        limit: usize,
    ) -> usize {
        let (lower, upper) = (key(thread, from), key(thread, to));
        let ro = self.read_options(&lower, &upper);
        let mut it = self
            .db
            .raw_iterator_cf_opt(self.db.cf_handle(cf).unwrap(), ro);
        if reverse {
            it.seek_for_prev(upper);
            if it.key() == Some(&upper[..]) {
                it.prev();
            }
        } else {
            it.seek(lower);
        }
        let mut n = 0;
        while it.valid() && n < limit {
            std::hint::black_box(it.value());
            n += 1;
            if reverse {
                it.prev();
            } else {
                it.next();
            }
        }
        n
    }
}

/// Key comparisons per round of inserts (RocksDB's perf context of this thread, which does the
/// inserts): a count, which other processes on a shared machine do not disturb as they do
/// the times.
fn comparisons_per_round(b: &mut Bench) -> f64 {
    const ROUNDS: u64 = 200;
    set_perf_stats(PerfStatsLevel::EnableCount);
    let mut ctx = PerfContext::default();
    ctx.reset();
    for _ in 0..ROUNDS {
        b.round();
    }
    let n = ctx.metric(PerfMetric::UserKeyComparisonCount);
    set_perf_stats(PerfStatsLevel::Disable);
    n as f64 / ROUNDS as f64
}

const CANDIDATES: &[Candidate] = &[
    Candidate::Today,
    Candidate::OneKey,
    Candidate::Seq,
    Candidate::Hint,
    Candidate::PrefixBloom,
    Candidate::WholeKeyBloom,
    Candidate::HashSkipList,
    Candidate::HashLinkList,
    Candidate::SmallBuffer,
    Candidate::InPlace,
];

fn memtable(c: &mut Criterion) {
    let only = std::env::var("MEMTABLE_CANDIDATES").ok();
    for &candidate in CANDIDATES {
        if only
            .as_deref()
            .is_some_and(|o| !o.split(',').any(|n| n == candidate.name()))
        {
            continue;
        }
        let mut b = Bench::new(candidate);
        println!(
            "memtable_insert/{}: {:.0} key comparisons per round of {ROUND}",
            candidate.name(),
            comparisons_per_round(&mut b)
        );
        c.bench_function(&format!("memtable_insert/{}", candidate.name()), |bench| {
            bench.iter(|| b.round())
        });
        if matches!(candidate, Candidate::OneKey | Candidate::Seq) {
            continue;
        }
        // A thread with about PREFILL / THREADS messages; reads take what the store would.
        let thread = 7;
        let top = b.next_id[thread as usize];
        c.bench_function(
            &format!("memtable_read/{}/history", candidate.name()),
            |bench| bench.iter(|| assert!(b.scan("messages", thread, 0, top, true, 50) > 0)),
        );
        c.bench_function(
            &format!("memtable_read/{}/sync", candidate.name()),
            |bench| {
                bench.iter_batched(
                    || (),
                    |()| {
                        let mut n = 0;
                        for t in 0..20 {
                            let from = b.next_id[t as usize].saturating_sub(5);
                            n += b.scan("messages", t, from, u64::MAX, false, usize::MAX);
                        }
                        assert!(n > 0);
                    },
                    BatchSize::SmallInput,
                )
            },
        );
        c.bench_function(
            &format!("memtable_read/{}/unread", candidate.name()),
            |bench| {
                bench.iter(|| assert!(b.scan("unread", thread, top - 10, u64::MAX, false, 256) > 0))
            },
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(30)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = memtable
}
criterion_main!(benches);
