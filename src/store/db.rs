//! Typed reads and writes over the column families of [`keys`](super::keys).
//!
//! Reads go straight to RocksDB (it is thread-safe; every shard reads). Writes are staged in a
//! [`Batch`] and applied with [`Store::commit`], one WAL write per batch.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rocksdb::compaction_filter::Decision;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Options, ReadOptions,
    WriteBatch, WriteBufferManager, WriteOptions, DB,
};

use super::keys::{self, *};
use super::records::*;
use super::{Error, FsyncMode};
use crate::clock::wall_us;
use crate::cluster::partition::{self, Partition, MAX_SEQ, PARTITIONS};

/// How many ids an allocator reserves per durable write of its counter.
const ID_LEASE: u64 = 1024;

/// What a [`Store::messages`] visitor did with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// Took it: it counts toward the limit.
    Took,
    /// Passed over it (deleted for the reader): it does not count, so a page is never cut
    /// short by what the reader may not see. Bounded by the delete-for-me cap per thread.
    Skipped,
    /// The page is full (its byte budget): stop here; the scan reports more to come.
    Stop,
}

/// The block cache shared by every column family.
pub const BLOCK_CACHE_BYTES: usize = 128 << 20;
/// The most all memtables together may hold before RocksDB flushes the largest. Without it the
/// bound is per column family (64 MiB, two of them each, for every family): gigabytes.
pub const MEMTABLE_BUDGET_BYTES: usize = 128 << 20;

/// Where an insert into a family written per message starts (RocksDB's
/// `memtable_insert_with_hint_prefix_extractor`): at the previous insert with the same key
/// prefix, rather than at the top of the memtable's skip list. Keys of one prefix are written
/// in increasing order (message ids and client ids grow; `members` rows are rewritten), so
/// the new key is next to the previous one and the insert costs a few comparisons instead of
/// a search through the whole list, each a cache miss. RocksDB uses hints only without
/// concurrent memtable writes, which are off anyway (see [`Store::open_with`]). `threads` has
/// none: its rows are updated in place.
fn insert_hint_prefix(cf: &str) -> Option<&'static str> {
    match cf {
        // thread ++ message id.
        CF_MESSAGES => Some("rocksdb.FixedPrefix.8"),
        // thread ++ sender ++ client message id.
        CF_DEDUPE => Some("rocksdb.FixedPrefix.16"),
        // thread ++ user: the sender's cursors with every SEND, the reader's with every ack.
        CF_MEMBERS => Some("rocksdb.FixedPrefix.16"),
        _ => None,
    }
}

/// Bits of the `dedupe` family's memtable bloom filter (over whole keys), as a fraction of its
/// write buffer: about 10 bits per entry, so that the lookup every new idempotent SEND makes
/// (a miss, nearly always) skips the memtable's skip list.
const DEDUPE_MEMTABLE_BLOOM_RATIO: f64 = 0.02;

/// What RocksDB holds in memory, by its own accounting (`rocksdb::perf`): the part of the
/// server's memory that is bounded by [`MEMTABLE_BUDGET_BYTES`] and [`BLOCK_CACHE_BYTES`]
/// rather than by the number of connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreMemory {
    pub memtables: u64,
    pub table_readers: u64,
    pub block_cache: u64,
}

/// The one RocksDB of a server. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: DB,
    cache: Cache,
    /// The data directory, for the free-space check.
    dir: std::path::PathBuf,
    /// The free-space check is on (always, except in fault-injection tests).
    space_check: AtomicBool,
    /// Fault injection: the disk counts as full while this file exists.
    full_flag: std::sync::OnceLock<std::path::PathBuf>,
    fsync: FsyncMode,
    users: IdCounters,
    threads: IdCounters,
    health: Arc<Health>,
}

/// Whether writes reach the disk: every write reports here, `/health` and the metrics read it.
///
/// A failed write (disk full, I/O error) marks the store failing until a write succeeds
/// again. The log gets the first failure at once and then one line per [`LOG_EVERY`] with
/// the count in between, not one line per event-loop round.
#[derive(Debug, Default)]
pub struct Health {
    failing: AtomicBool,
    /// Failed writes since start (`courier_commit_failures_total`).
    failures: AtomicU64,
    log: Mutex<FailureLog>,
}

/// Free space below which writes are refused (see [`Store::write`]), capped at 5 % of the
/// file system so that small ones stay usable.
pub const MIN_FREE: u64 = 64 << 20;

/// How often a persisting write failure is logged again.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct FailureLog {
    /// When the last line was logged.
    last: Option<Instant>,
    /// Failures since that line.
    unlogged: u64,
    /// Failures since writes last succeeded.
    streak: u64,
    /// The latest error, for `/health`.
    error: String,
    /// Since when RocksDB has failed writes although the disk has room (see
    /// [`Health::stuck_for`]).
    stuck_since: Option<Instant>,
}

impl Health {
    /// Whether the last write failed.
    pub fn failing(&self) -> bool {
        self.failing.load(Ordering::Acquire)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// The latest write error while writes fail.
    pub fn last_error(&self) -> Option<String> {
        self.failing().then(|| self.log.lock().error.clone())
    }

    /// How long RocksDB has failed every write although the disk has room: the state it
    /// cannot leave by itself on a small disk (see [`Store::write`]). `None` while writes
    /// succeed, or fail for lack of space.
    pub fn stuck_for(&self, now: Instant) -> Option<Duration> {
        if !self.failing() {
            return None;
        }
        self.log
            .lock()
            .stuck_since
            .map(|since| now.saturating_duration_since(since))
    }

    /// Records a failed write; `with_room` when the disk had space for it.
    fn failed(&self, e: &dyn std::fmt::Display, with_room: bool, now: Instant) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.failing.store(true, Ordering::Release);
        let mut log = self.log.lock();
        if !with_room {
            log.stuck_since = None;
        } else if log.stuck_since.is_none() {
            log.stuck_since = Some(now);
        }
        log.streak += 1;
        log.unlogged += 1;
        log.error = e.to_string();
        if log
            .last
            .is_none_or(|at| now.duration_since(at) >= LOG_EVERY)
        {
            tracing::error!(
                error = %e,
                failed_writes = log.unlogged,
                "writes to the data directory fail: requests are answered INTERNAL and nothing \
                 is acknowledged until they succeed again. Free disk space or fix the device; \
                 the server recovers by itself (logged at most every {}s)",
                LOG_EVERY.as_secs()
            );
            log.last = Some(now);
            log.unlogged = 0;
        }
    }

    fn succeeded(&self) {
        if self.failing.swap(false, Ordering::AcqRel) {
            let mut log = self.log.lock();
            tracing::warn!(
                failed_writes = log.streak,
                "writes to the data directory succeed again; the server is ready"
            );
            *log = FailureLog::default();
        }
    }
}

/// Staged writes, applied atomically by [`Store::commit`].
pub struct Batch {
    store: Store,
    batch: WriteBatch,
    /// Values of the hot records (messages) are encoded here before being copied into the
    /// batch, so a message costs no allocation of its own.
    scratch: bytes::BytesMut,
}

/// How the store treats what it keeps only for a while.
#[derive(Debug, Clone, Copy)]
pub struct StoreOptions {
    /// Dedupe entries (idempotent SEND) older than this are removed by compaction.
    /// `u64::MAX`: kept forever (tools that open the store offline must not expire what the
    /// server, with its own window, still needs).
    pub dedupe_window_us: u64,
    /// Session tokens unused for longer than this are removed by compaction (the server also
    /// removes one when it is presented). `u64::MAX`: kept forever (tools opening the store
    /// offline).
    pub token_idle_us: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            dedupe_window_us: u64::MAX,
            token_idle_us: u64::MAX,
        }
    }
}

/// The compaction filter of the `tokens` family: a token idle for more than `idle_us` is
/// removed (its `user_tokens` row goes at the user's next login or logout-all); anything
/// unreadable is kept.
fn expire_token(idle_us: u64, now_us: impl Fn() -> u64, value: &[u8]) -> Decision {
    match TokenRecord::decode(value) {
        Ok(t) if t.expired(idle_us, now_us()) => Decision::Remove,
        _ => Decision::Keep,
    }
}

/// The compaction filter of the `dedupe` family: an entry's value is the message id, a clock
/// value in microseconds, i.e. the time the send was accepted. Entries older than the window
/// are removed; anything unreadable is kept (it is not ours to judge here).
fn expire_dedupe(window_us: u64, now_us: impl Fn() -> u64, value: &[u8]) -> Decision {
    match <[u8; 8]>::try_from(value) {
        Ok(v) if now_us().saturating_sub(u64::from_be_bytes(v)) > window_us => Decision::Remove,
        _ => Decision::Keep,
    }
}

/// The merge operator of `media` counters: the sum of big-endian i64s. Only `u` keys (bytes
/// of usage) and `t` keys (messages referring to a media in a thread) are ever merged; an
/// operand of another width is skipped (it is not a counter). An empty stored value is a `t`
/// link written before links were counted and counts as one message (see
/// [`media_refs`]).
fn sum_i64(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    let as_i64 = |v: &[u8]| <[u8; 8]>::try_from(v).map(i64::from_be_bytes).ok();
    let mut sum = existing.map_or(0, |v| media_refs(v).unwrap_or(0));
    for op in operands {
        sum = sum.saturating_add(as_i64(op).unwrap_or(0));
    }
    Some(sum.to_be_bytes().to_vec())
}

/// The count a `media` link's value holds: a `t` link counts the messages of its thread that
/// refer to the media and are not recalled (a merged i64); an `o` link is empty, and so is a
/// `t` link stored before links were counted, which counts as one message. `None`: corrupt.
fn media_refs(value: &[u8]) -> Option<i64> {
    match value.len() {
        0 => Some(1),
        _ => <[u8; 8]>::try_from(value).map(i64::from_be_bytes).ok(),
    }
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, keeping dedupe entries forever.
    pub fn open(dir: &Path, fsync: FsyncMode) -> Result<Store, Error> {
        Self::open_with(dir, fsync, StoreOptions::default())
    }

    /// Opens (creating if needed) the store in `dir`.
    pub fn open_with(dir: &Path, fsync: FsyncMode, options: StoreOptions) -> Result<Store, Error> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        // `threads` updates its rows in place and the families of `insert_hint_prefix` insert
        // with hints (below), which RocksDB does only without concurrent memtable writes.
        // Measured at 20K msgs/s: the commit threads' CPU is the same either way
        // (BENCHMARKS.md, issue 13).
        opts.set_allow_concurrent_memtable_write(false);
        opts.set_write_buffer_manager(&WriteBufferManager::new_write_buffer_manager(
            MEMTABLE_BUDGET_BYTES,
            false,
        ));
        let cache = Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        // A store written before `seq` still has the `unread` family: RocksDB opens a store
        // only with every family it holds, so it is opened too, and dropped below.
        let retired = DB::list_cf(&opts, dir)
            .map(|names| names.iter().any(|n| n == CF_UNREAD_RETIRED))
            .unwrap_or(false);
        let mut names: Vec<&str> = ALL_CFS.to_vec();
        if retired {
            names.push(CF_UNREAD_RETIRED);
        }
        let mut cfs = Vec::with_capacity(names.len());
        for name in names {
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_bloom_filter(10.0, false);
            let mut cf = match insert_hint_prefix(name) {
                Some(prefix) => Options::default().get_options_from_string(format!(
                    "memtable_insert_with_hint_prefix_extractor={prefix}"
                ))?,
                None => Options::default(),
            };
            cf.set_block_based_table_factory(&table);
            if name == CF_DEDUPE {
                cf.set_memtable_prefix_bloom_ratio(DEDUPE_MEMTABLE_BLOOM_RATIO);
                cf.set_memtable_whole_key_filtering(true);
            }
            if name == CF_THREADS {
                // A thread's row is rewritten by every round that appends to it, at the same
                // size: overwritten in the memtable, it stays one entry per thread instead of
                // one more per message in a skip list that grows all the time. Sound because
                // this family is only read by `get` and `multi_get`, which take the row's
                // lock (an iterator would not), and nothing here reads it at a snapshot.
                cf.set_inplace_update_support(true);
            }
            if name == CF_MESSAGES || name == CF_MEDIA {
                cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
            }
            if name == CF_DEDUPE && options.dedupe_window_us != u64::MAX {
                let window = options.dedupe_window_us;
                cf.set_compaction_filter(
                    "courier-dedupe-window",
                    move |_level: u32, _key: &[u8], value: &[u8]| {
                        expire_dedupe(window, wall_us, value)
                    },
                );
                // Files nothing else compacts (a quiet server) are still compacted, and so
                // expired, about once a window (at least every 10 minutes, at most daily).
                cf.set_periodic_compaction_seconds((window / 1_000_000).clamp(600, 86_400));
            }
            if name == CF_TOKENS && options.token_idle_us != u64::MAX {
                let idle = options.token_idle_us;
                cf.set_compaction_filter(
                    "courier-token-idle",
                    move |_level: u32, _key: &[u8], value: &[u8]| {
                        expire_token(idle, wall_us, value)
                    },
                );
                // A quiet store is still swept about daily: bounded work, in the background.
                cf.set_periodic_compaction_seconds(86_400);
            }
            if name == CF_MEMBERSHIPS {
                cf.set_compaction_filter("expired_membership_tombstones", drop_expired_tombstone);
            }
            if name == CF_MEDIA {
                cf.set_merge_operator_associative("courier-media-usage", sum_i64);
            }
            if name == CF_PUSH_OUTBOX {
                // No partial merge: an outcome depends on the row it meets, so operands are
                // only folded onto a base (or onto none), in order.
                cf.set_merge_operator(
                    "courier-push-outbox",
                    |_key: &[u8], existing: Option<&[u8]>, ops: &rocksdb::MergeOperands| {
                        Some(merge_outbox(existing, ops))
                    },
                    |_key: &[u8], _existing: Option<&[u8]>, _ops: &rocksdb::MergeOperands| None,
                );
                cf.set_compaction_filter("courier-settled-outbox", drop_settled_outbox);
                // Settled rows (empty values) of a quiet outbox still go about daily.
                cf.set_periodic_compaction_seconds(86_400);
            }
            cfs.push(ColumnFamilyDescriptor::new(name, cf));
        }
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|source| Error::Open {
            path: dir.display().to_string(),
            source,
        })?;
        let users = IdCounters::load(&db, META_NEXT_USER)?;
        let threads = IdCounters::load(&db, META_NEXT_THREAD)?;
        let store = Store {
            inner: Arc::new(Inner {
                db,
                cache,
                dir: dir.to_owned(),
                space_check: AtomicBool::new(true),
                full_flag: std::sync::OnceLock::new(),
                fsync,
                users,
                threads,
                health: Arc::default(),
            }),
        };
        let mut store = store;
        store.number_messages()?;
        store.mark_hidden_threads()?;
        if retired {
            let inner = Arc::get_mut(&mut store.inner).ok_or(Error::Migration {
                what: "the retired `unread` family",
            })?;
            inner.db.drop_cf(CF_UNREAD_RETIRED)?;
        }
        Ok(store)
    }

    /// Gives every message of a store written before `seq` existed its `seq`, every thread
    /// its `countable` and every member the `own_floor` their unread count needs (their newest
    /// own countable message above their read cursor), in one pass over `messages`, then
    /// records that it is done. Interrupted, it starts over at the next open (it only writes
    /// values computed from the messages, so a second pass writes the same).
    fn number_messages(&self) -> Result<(), Error> {
        if self.get(CF_META, META_MESSAGE_SEQ)?.is_some() {
            return Ok(());
        }
        /// The thread being numbered: its countable messages so far, and each sender's newest.
        struct Walk {
            thread: u64,
            countable: u64,
            newest_own: HashMap<u64, u64>,
        }
        let mut b = self.batch();
        let mut walk: Option<Walk> = None;
        let mut value = Vec::new();
        self.scan(CF_MESSAGES, &[], &[], false, |k, v| {
            let (thread, id) = keys::parse_pair(CF_MESSAGES, k)?;
            if walk.as_ref().is_some_and(|w| w.thread != thread) {
                if let Some(done) = walk.take() {
                    self.finish_numbering(&mut b, done.thread, done.countable, &done.newest_own)?;
                }
            }
            let w = walk.get_or_insert_with(|| Walk {
                thread,
                countable: 0,
                newest_own: HashMap::new(),
            });
            let (sender, kind) = MessageRecord::peek_sender_kind(v)?;
            if kind != courier_protocol::MessageKind::System {
                w.countable += 1;
                w.newest_own.insert(sender, id);
            }
            // V2 is V1 with its version byte and `seq` as the last 8 bytes.
            let fields = match MessageRecord::peek_seq(v)? {
                None => &v[1..],
                Some(_) => &v[1..v.len() - 8],
            };
            value.clear();
            value.push(MESSAGE_V2);
            value.extend_from_slice(fields);
            value.extend_from_slice(&w.countable.to_be_bytes());
            b.put(CF_MESSAGES, k, &value);
            if b.len() >= 10_000 {
                self.commit(std::mem::replace(&mut b, self.batch()))?;
            }
            Ok(true)
        })?;
        if let Some(done) = walk {
            self.finish_numbering(&mut b, done.thread, done.countable, &done.newest_own)?;
        }
        b.delete(CF_META, META_UNREAD_INDEXED_RETIRED);
        b.put(CF_META, META_MESSAGE_SEQ, &[1]);
        self.commit(b)
    }

    /// Gives the record of every thread a member hid (SET_THREAD_STATE `hidden`) its
    /// `hidden_upto`, the highest mark of its members, which a server before the mark did not
    /// keep; then records that it is done. Without it, a notice about a message hidden with its
    /// conversation would be pushed to the member who hid it (`Engine::notice` reads members'
    /// private states only at or below the mark). One pass over `memberships`, applied
    /// `MARKS_PER_BATCH` threads at a time so the pass holds a bounded map; a thread met again
    /// in a later batch reads the record the earlier one wrote. Interrupted, it starts over at
    /// the next open, and only ever raises a mark, so a second pass changes nothing.
    fn mark_hidden_threads(&self) -> Result<(), Error> {
        const MARKS_PER_BATCH: usize = 10_000;
        if self.get(CF_META, META_HIDE_MARKS)?.is_some() {
            return Ok(());
        }
        let mut marks: HashMap<u64, u64> = HashMap::new();
        self.scan(CF_MEMBERSHIPS, &[], &[], false, |k, v| {
            let state = PrivateState::decode(v)?;
            if state.hidden && !state.left && state.hidden_upto > 0 {
                let thread = keys::parse_pair(CF_MEMBERSHIPS, k)?.1;
                let mark = marks.entry(thread).or_default();
                *mark = (*mark).max(state.hidden_upto);
                if marks.len() >= MARKS_PER_BATCH {
                    self.raise_hide_marks(&mut marks, self.batch())?;
                }
            }
            Ok(true)
        })?;
        let mut b = self.batch();
        b.put(CF_META, META_HIDE_MARKS, &[1]);
        self.raise_hide_marks(&mut marks, b)
    }

    /// Raises each thread's `hidden_upto` in `marks` to its mark (a thread without a record
    /// is skipped), commits `b` with them, and empties `marks`.
    fn raise_hide_marks(&self, marks: &mut HashMap<u64, u64>, mut b: Batch) -> Result<(), Error> {
        for (thread, mark) in marks.drain() {
            if let Some(mut rec) = self.thread(thread)? {
                if rec.hidden_upto < mark {
                    rec.hidden_upto = mark;
                    b.put_thread(thread, &rec);
                }
            }
        }
        self.commit(b)
    }

    /// The end of one thread in [`number_messages`](Self::number_messages): its record's
    /// `countable`, and each member's `own_floor`.
    fn finish_numbering(
        &self,
        b: &mut Batch,
        thread: u64,
        countable: u64,
        newest_own: &HashMap<u64, u64>,
    ) -> Result<(), Error> {
        if let Some(mut rec) = self.thread(thread)? {
            rec.countable = countable;
            b.put_thread(thread, &rec);
        }
        for (user, mut m) in self.members(thread)? {
            let floor = newest_own.get(&user).copied().filter(|&id| id > m.read);
            m.own_floor = floor.unwrap_or(0);
            b.put_member(thread, user, &m);
        }
        Ok(())
    }

    /// RocksDB's memory by its own accounting (memtables, table readers, block cache).
    pub fn memory(&self) -> Result<StoreMemory, Error> {
        let stats = rocksdb::perf::get_memory_usage_stats(
            Some(&[&self.inner.db]),
            Some(&[&self.inner.cache]),
        )?;
        Ok(StoreMemory {
            memtables: stats.mem_table_total,
            table_readers: stats.mem_table_readers_total,
            block_cache: stats.cache_total,
        })
    }

    pub fn fsync_mode(&self) -> FsyncMode {
        self.inner.fsync
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        // Every family in ALL_CFS is created at open, so this cannot fail.
        self.inner
            .db
            .cf_handle(name)
            .expect("column family created at open")
    }

    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<rocksdb::DBPinnableSlice<'_>>, Error> {
        Ok(self.inner.db.get_pinned_cf(self.cf(cf), key)?)
    }

    fn get_record<R: Record>(&self, cf: &str, key: &[u8]) -> Result<Option<R>, Error> {
        self.get(cf, key)?.map(|v| R::decode(&v)).transpose()
    }

    /// A point read that leaves the block cache as it is, for the rows a connect reads once
    /// (its token, its user, its device): cached, they cost every connection its blocks (about
    /// 200 bytes each at 19K connections) until the cache's bound; read again at a reconnect,
    /// their file blocks are still in the OS page cache.
    fn get_once(
        &self,
        cf: &str,
        key: &[u8],
    ) -> Result<Option<rocksdb::DBPinnableSlice<'_>>, Error> {
        let mut ro = ReadOptions::default();
        ro.fill_cache(false);
        Ok(self.inner.db.get_pinned_cf_opt(self.cf(cf), key, &ro)?)
    }

    fn get_u64(&self, cf: &str, key: &[u8]) -> Result<Option<u64>, Error> {
        match self.get(cf, key)? {
            None => Ok(None),
            Some(v) if v.len() == 8 => Ok(Some(u64::from_be_bytes(
                v[..8].try_into().unwrap_or_default(),
            ))),
            Some(_) => Err(Error::CorruptValue { record: "u64" }),
        }
    }

    /// Calls `f` for each (key, value) with `lower <= key < upper` (upper empty = unbounded),
    /// ascending, or descending when `reverse`, until `f` returns false.
    pub fn scan(
        &self,
        cf: &str,
        lower: &[u8],
        upper: &[u8],
        reverse: bool,
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(lower.to_vec());
        if !upper.is_empty() {
            ro.set_iterate_upper_bound(upper.to_vec());
        }
        let mut it = self.inner.db.raw_iterator_cf_opt(self.cf(cf), ro);
        if reverse {
            it.seek_to_last();
        } else {
            it.seek_to_first();
        }
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if !f(k, v)? {
                return Ok(());
            }
            if reverse {
                it.prev();
            } else {
                it.next();
            }
        }
        Ok(it.status()?)
    }

    fn scan_prefix(
        &self,
        cf: &str,
        prefix: &[u8],
        f: impl FnMut(&[u8], &[u8]) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        self.scan(cf, prefix, &keys::prefix_end(prefix), false, f)
    }

    /// Applies `batch` atomically; synced to disk unless the fsync mode is `never`.
    pub fn commit(&self, batch: Batch) -> Result<(), Error> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(self.inner.fsync != FsyncMode::Never);
        self.write(|| self.inner.db.write_opt(batch.batch, &wo))
    }

    /// Applies `batch` atomically through the WAL without waiting for a sync, whatever the
    /// fsync mode: for bookkeeping whose loss in a power cut is harmless (a token's last use),
    /// written where a sync would stall an event loop.
    pub fn commit_relaxed(&self, batch: Batch) -> Result<(), Error> {
        if batch.is_empty() {
            return Ok(());
        }
        let wo = WriteOptions::default();
        self.write(|| self.inner.db.write_opt(batch.batch, &wo))
    }

    /// Runs one write, unless the disk is nearly full, and records the outcome in [`Health`].
    ///
    /// The free-space check keeps RocksDB from ever meeting a full disk in the common case (the
    /// disk fills up gradually): RocksDB turns a failed write into a hard background error that
    /// it clears only once as much space as its write buffer (64 MiB) is free, and it cannot be
    /// resumed through its C API. Refused here, the write fails cleanly and the next one
    /// succeeds as soon as space returns.
    ///
    /// If RocksDB gets into that state anyway (a write raced another process filling the disk)
    /// and stays there with room on the disk, [`Health::stuck_for`] says so; the shards then
    /// stop the process, so that a restart reopens the store (failure policy).
    fn write(&self, write: impl FnOnce() -> Result<(), rocksdb::Error>) -> Result<(), Error> {
        let low = self.low_on_space();
        if let Some((free, need)) = low.filter(|_| self.inner.space_check.load(Ordering::Relaxed)) {
            let e = Error::DiskFull { free, need };
            self.inner.health.failed(&e, false, Instant::now());
            return Err(e);
        }
        match write() {
            Ok(()) => {
                self.inner.health.succeeded();
                Ok(())
            }
            Err(e) => {
                self.inner.health.failed(&e, low.is_none(), Instant::now());
                Err(e.into())
            }
        }
    }

    /// Turns the free-space check of [`Store::write`] off, so that RocksDB itself meets a full
    /// disk. Fault injection for tests only.
    pub fn skip_space_check(&self) {
        self.inner.space_check.store(false, Ordering::Relaxed);
    }

    /// Makes the free-space check report a full disk while a file exists at `flag`, for tests
    /// that cannot mount a small file system. Fault injection for tests only.
    pub fn fake_full_disk(&self, flag: std::path::PathBuf) {
        let _ = self.inner.full_flag.set(flag);
    }

    /// See [`Health::stuck_for`].
    pub fn stuck_for(&self, now: Instant) -> Option<Duration> {
        self.inner.health.stuck_for(now)
    }

    /// `(free, needed)` bytes when the data directory's file system has less free than
    /// [`MIN_FREE`] (or 5 % of its size, if smaller); `None` when there is room or the file
    /// system cannot tell.
    fn low_on_space(&self) -> Option<(u64, u64)> {
        if self.inner.full_flag.get().is_some_and(|flag| flag.exists()) {
            return Some((0, MIN_FREE));
        }
        let path = std::ffi::CString::new(self.inner.dir.as_os_str().as_encoded_bytes()).ok()?;
        // SAFETY: statvfs writes one struct into `st`, which lives on our stack; `path` is a
        // NUL-terminated string that outlives the call.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return None;
        }
        #[allow(clippy::unnecessary_cast)] // the field types differ between targets
        let (block, avail, blocks) = (st.f_frsize as u64, st.f_bavail as u64, st.f_blocks as u64);
        let free = avail.saturating_mul(block);
        let need = MIN_FREE.min(blocks.saturating_mul(block) / 20);
        (free < need).then_some((free, need))
    }

    /// Whether writes currently reach the disk (shared with the metrics responder).
    pub fn health(&self) -> Arc<Health> {
        self.inner.health.clone()
    }

    /// Compacts every token now (the compaction filter then expires idle ones).
    #[cfg(test)]
    pub(crate) fn compact_tokens(&self) {
        self.inner
            .db
            .compact_range_cf(self.cf(CF_TOKENS), None::<&[u8]>, None::<&[u8]>);
    }

    /// Compacts every dedupe entry now (the compaction filter then expires old ones).
    #[cfg(test)]
    pub(crate) fn compact_dedupe(&self) {
        self.inner
            .db
            .compact_range_cf(self.cf(CF_DEDUPE), None::<&[u8]>, None::<&[u8]>);
    }

    /// Flushes and syncs the WAL: used at shutdown.
    pub fn sync(&self) -> Result<(), Error> {
        self.inner.db.flush_wal(true)?;
        Ok(())
    }

    // ---- ids ----

    /// A new user id in `partition`. Only the node that owns the partition may call this: that
    /// is what makes ids unique across a cluster without a coordinator.
    pub fn next_user_id(&self, partition: Partition) -> Result<u64, Error> {
        self.inner.users.next(self, partition)
    }

    /// A new thread id in `partition` (same rule as [`next_user_id`](Self::next_user_id)).
    pub fn next_thread_id(&self, partition: Partition) -> Result<u64, Error> {
        self.inner.threads.next(self, partition)
    }

    /// The highest clock value any shard recorded as durable (see [`Batch::clock_floor`]).
    pub fn clock_floor(&self) -> Result<u64, Error> {
        let mut max = 0;
        self.scan_prefix(CF_META, META_CLOCK_FLOOR, |_, v| {
            if v.len() == 8 {
                max = max.max(u64::from_be_bytes(v.try_into().unwrap_or_default()));
            }
            Ok(true)
        })?;
        Ok(max)
    }

    // ---- accounts ----

    pub fn user(&self, user: u64) -> Result<Option<UserRecord>, Error> {
        self.get_record(CF_USERS, &keys::id(user))
    }

    /// [`Store::user`] for a connect's authentication (RESUME reads its token's user once):
    /// does not fill the block cache.
    pub fn user_at_connect(&self, user: u64) -> Result<Option<UserRecord>, Error> {
        self.get_once(CF_USERS, &keys::id(user))?
            .map(|v| UserRecord::decode(&v))
            .transpose()
    }

    pub fn user_id_by_handle(&self, handle: &str) -> Result<Option<u64>, Error> {
        self.get_u64(CF_HANDLES, handle.as_bytes())
    }

    /// Creates a user with a new id in the handle's partition ([`partition::of_handle`]), so
    /// the account lives where the handle is decided; [`Error::HandleTaken`] when the handle
    /// exists. Serialised by a lock so two shards cannot both claim one handle.
    pub fn create_user(&self, handle: &str, password_hash: &str, now: u64) -> Result<u64, Error> {
        static CREATE: Mutex<()> = Mutex::new(());
        let _guard = CREATE.lock();
        if self.user_id_by_handle(handle)?.is_some() {
            return Err(Error::HandleTaken);
        }
        let id = self.next_user_id(partition::of_handle(handle))?;
        let mut b = self.batch();
        b.put_user(
            id,
            &UserRecord {
                handle: handle.into(),
                password_hash: password_hash.into(),
                created_at: now,
            },
        );
        self.commit(b)?;
        Ok(id)
    }

    /// The token with this digest; read once per connect, so it does not fill the block cache.
    pub fn token(&self, digest: &[u8; TOKEN_DIGEST]) -> Result<Option<TokenRecord>, Error> {
        self.get_once(CF_TOKENS, digest)?
            .map(|v| TokenRecord::decode(&v))
            .transpose()
    }

    pub fn user_tokens(&self, user: u64) -> Result<Vec<[u8; TOKEN_DIGEST]>, Error> {
        let mut out = Vec::new();
        self.scan_prefix(CF_USER_TOKENS, &keys::id(user), |k, _| {
            out.push(keys::parse_user_token(k)?.1);
            Ok(true)
        })?;
        Ok(out)
    }

    /// The stable device number of `name` for `user`, assigning the next one on first use;
    /// [`Error::TooManyDevices`] when `user` already has `max` device names.
    pub fn device_id(&self, user: u64, name: &str, max: u32) -> Result<u32, Error> {
        static ASSIGN: Mutex<()> = Mutex::new(());
        let key = keys::device(user, name);
        let _guard = ASSIGN.lock();
        if let Some(v) = self.get_once(CF_DEVICES, &key)? {
            return v[..]
                .try_into()
                .map(u32::from_be_bytes)
                .map_err(|_| Error::CorruptValue { record: "device" });
        }
        let mut count = 0u32;
        self.scan_prefix(CF_DEVICES, &keys::id(user), |_, _| {
            count += 1;
            Ok(true)
        })?;
        if count >= max {
            return Err(Error::TooManyDevices { max });
        }
        let id = count + 1;
        let mut b = self.batch();
        b.put(CF_DEVICES, &key, &id.to_be_bytes());
        self.commit(b)?;
        Ok(id)
    }

    /// Whether `user` was granted admin rights (`courier admin grant`).
    pub fn is_admin(&self, user: u64) -> Result<bool, Error> {
        Ok(self.get(CF_ADMINS, &keys::id(user))?.is_some())
    }

    /// Every admin grant: (user, microseconds of the grant), by user id.
    pub fn admins(&self) -> Result<Vec<(u64, u64)>, Error> {
        let mut out = Vec::new();
        self.scan(CF_ADMINS, &[], &[], false, |k, v| {
            let at = <[u8; 8]>::try_from(v).map_err(|_| Error::CorruptValue { record: "admin" })?;
            out.push((keys::parse_id(CF_ADMINS, k)?, u64::from_be_bytes(at)));
            Ok(true)
        })?;
        Ok(out)
    }

    pub fn last_seen(&self, user: u64) -> Result<Option<u64>, Error> {
        self.get_u64(CF_LAST_SEEN, &keys::id(user))
    }

    pub fn is_contact(&self, user: u64, other: u64) -> Result<bool, Error> {
        Ok(self.get(CF_CONTACTS, &keys::pair(user, other))?.is_some())
    }

    /// How many contacts `user` has, counting no further than `stop_at`.
    pub fn count_contacts(&self, user: u64, stop_at: usize) -> Result<usize, Error> {
        self.count_prefix(CF_CONTACTS, &keys::id(user), stop_at)
    }

    /// How many messages of `thread` `user` deleted for themselves, counting no further than
    /// `stop_at`.
    pub fn count_hidden(&self, user: u64, thread: u64, stop_at: usize) -> Result<usize, Error> {
        self.count_prefix(CF_HIDDEN, &keys::pair(user, thread), stop_at)
    }

    pub fn is_hidden(&self, user: u64, thread: u64, msg: u64) -> Result<bool, Error> {
        Ok(self
            .get(CF_HIDDEN, &keys::triple(user, thread, msg))?
            .is_some())
    }

    fn count_prefix(&self, cf: &str, prefix: &[u8], stop_at: usize) -> Result<usize, Error> {
        let mut n = 0;
        if stop_at > 0 {
            self.scan_prefix(cf, prefix, |_, _| {
                n += 1;
                Ok(n < stop_at)
            })?;
        }
        Ok(n)
    }

    pub fn contacts(&self, user: u64) -> Result<Vec<u64>, Error> {
        let mut out = Vec::new();
        self.scan_prefix(CF_CONTACTS, &keys::id(user), |k, _| {
            out.push(keys::parse_pair(CF_CONTACTS, k)?.1);
            Ok(true)
        })?;
        Ok(out)
    }

    // ---- threads ----

    pub fn thread(&self, thread: u64) -> Result<Option<ThreadRecord>, Error> {
        self.get_record(CF_THREADS, &keys::id(thread))
    }

    pub fn direct_thread(&self, a: u64, b: u64) -> Result<Option<u64>, Error> {
        self.get_u64(CF_DIRECT, &keys::direct(a, b))
    }

    pub fn member(&self, thread: u64, user: u64) -> Result<Option<MemberRecord>, Error> {
        self.get_record(CF_MEMBERS, &keys::pair(thread, user))
    }

    /// Every member of `thread`, by user id.
    pub fn members(&self, thread: u64) -> Result<Vec<(u64, MemberRecord)>, Error> {
        let mut out = Vec::new();
        self.scan_prefix(CF_MEMBERS, &keys::id(thread), |k, v| {
            out.push((keys::parse_pair(CF_MEMBERS, k)?.1, MemberRecord::decode(v)?));
            Ok(true)
        })?;
        Ok(out)
    }

    pub fn private_state(&self, user: u64, thread: u64) -> Result<Option<PrivateState>, Error> {
        self.get_record(CF_MEMBERSHIPS, &keys::pair(user, thread))
    }

    /// Every thread `user` belongs to, with the user's private state, by thread id
    /// (tombstones of threads they left are not memberships).
    pub fn memberships(&self, user: u64) -> Result<Vec<(u64, PrivateState)>, Error> {
        let mut out = Vec::new();
        self.scan_prefix(CF_MEMBERSHIPS, &keys::id(user), |k, v| {
            let state = PrivateState::decode(v)?;
            if !state.left {
                out.push((keys::parse_pair(CF_MEMBERSHIPS, k)?.1, state));
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// At most `max` of `user`'s memberships from thread `from` on (inclusive), by thread id,
    /// tombstones included (expired ones are not): a sync page starts where the previous one
    /// stopped instead of rescanning them all.
    pub fn memberships_from(
        &self,
        user: u64,
        from: u64,
        max: usize,
    ) -> Result<Vec<(u64, PrivateState)>, Error> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let lower = keys::pair(user, from);
        let upper = keys::prefix_end(&keys::id(user));
        let now = wall_us();
        self.scan(CF_MEMBERSHIPS, &lower, &upper, false, |k, v| {
            let state = PrivateState::decode(v)?;
            if !state.expired(now) {
                out.push((keys::parse_pair(CF_MEMBERSHIPS, k)?.1, state));
            }
            Ok(out.len() < max)
        })?;
        Ok(out)
    }

    /// Thread records for many ids at once (one batched lookup).
    pub fn threads(&self, ids: &[u64]) -> Result<Vec<Option<ThreadRecord>>, Error> {
        let cf = self.cf(CF_THREADS);
        let keys: Vec<[u8; 8]> = ids.iter().map(|&t| keys::id(t)).collect();
        self.inner
            .db
            .batched_multi_get_cf(cf, keys.iter(), false)
            .into_iter()
            .map(|r| r?.map(|v| ThreadRecord::decode(&v)).transpose())
            .collect()
    }

    // ---- messages ----

    pub fn message(&self, thread: u64, msg: u64) -> Result<Option<MessageRecord>, Error> {
        self.get_record(CF_MESSAGES, &keys::message(thread, msg))
    }

    /// Messages of `thread` with `after < id < before`, ascending (or descending when
    /// `newest_first`), handed to `f` until it has taken `limit` of them (see [`Visit`]) or
    /// stops. Returns whether more remain.
    pub fn messages(
        &self,
        thread: u64,
        after: u64,
        before: u64,
        newest_first: bool,
        limit: usize,
        mut f: impl FnMut(u64, MessageRecord) -> Result<Visit, Error>,
    ) -> Result<bool, Error> {
        let lower = keys::message(thread, after.saturating_add(1));
        let upper = keys::message(thread, before);
        if after.saturating_add(1) >= before {
            return Ok(false);
        }
        let mut n = 0;
        let mut more = false;
        self.scan(CF_MESSAGES, &lower, &upper, newest_first, |k, v| {
            if n == limit {
                more = true;
                return Ok(false);
            }
            let (_, id) = keys::parse_pair(CF_MESSAGES, k)?;
            match f(id, MessageRecord::decode(v)?)? {
                Visit::Took => n += 1,
                Visit::Skipped => {}
                Visit::Stop => {
                    more = true;
                    return Ok(false);
                }
            }
            Ok(true)
        })?;
        Ok(more)
    }

    /// Adds to `out` (once each) the senders of the non-system messages of `thread` with
    /// `after < id <= up_to`, reading no message body. Returns false, with `out` incomplete,
    /// when the range holds more than `cap` messages or does not end at a stored `up_to`.
    pub fn message_senders(
        &self,
        thread: u64,
        after: u64,
        up_to: u64,
        cap: usize,
        out: &mut Vec<u64>,
    ) -> Result<bool, Error> {
        if up_to <= after {
            return Ok(true);
        }
        let lower = keys::message(thread, after + 1);
        let upper = keys::prefix_end(&keys::message(thread, up_to));
        let (mut seen, mut last) = (0usize, 0u64);
        self.scan(CF_MESSAGES, &lower, &upper, false, |k, v| {
            seen += 1;
            if seen > cap {
                return Ok(false);
            }
            last = keys::parse_pair(CF_MESSAGES, k)?.1;
            let (sender, kind) = MessageRecord::peek_sender_kind(v)?;
            if kind != courier_protocol::MessageKind::System && !out.contains(&sender) {
                out.push(sender);
            }
            Ok(true)
        })?;
        Ok(seen <= cap && last == up_to)
    }

    /// Counts messages of `thread` newer than `after` not sent by `reader` and not system
    /// messages, stopping at `cap`. `countable` is the thread record's, `own_floor` the
    /// reader's member record's: above `own_floor` no message is the reader's own, so the
    /// count there is `countable` less the `seq` of the newest message at or below the start,
    /// one message read whatever the count; only the messages in (`after`, `own_floor`] (a
    /// member who rejoined and has not read past it) are looked at one by one, at most `cap`
    /// of them that count.
    pub fn count_unread(
        &self,
        thread: u64,
        after: u64,
        reader: u64,
        own_floor: u64,
        countable: u64,
        cap: u32,
    ) -> Result<u32, Error> {
        let mut n = 0u64;
        let mut from = after;
        if own_floor > after {
            let lower = keys::message(thread, after.saturating_add(1));
            let upper = keys::message(thread, own_floor.saturating_add(1));
            self.scan(CF_MESSAGES, &lower, &upper, false, |_, v| {
                let (sender, kind) = MessageRecord::peek_sender_kind(v)?;
                if kind != courier_protocol::MessageKind::System && sender != reader {
                    n += 1;
                }
                Ok(n < u64::from(cap))
            })?;
            if n >= u64::from(cap) {
                return Ok(cap);
            }
            from = own_floor;
        }
        n += countable.saturating_sub(self.seq_at(thread, from)?);
        Ok(n.min(u64::from(cap)) as u32)
    }

    /// The `seq` of the newest message of `thread` at or below `id` (0 when there is none):
    /// how many countable messages the thread held up to `id`.
    fn seq_at(&self, thread: u64, id: u64) -> Result<u64, Error> {
        let mut seq = Ok(0);
        let lower = keys::id(thread);
        let upper = match id.checked_add(1) {
            Some(next) => keys::message(thread, next).to_vec(),
            None => keys::prefix_end(&lower).to_vec(),
        };
        self.scan(CF_MESSAGES, &lower, &upper, true, |_, v| {
            seq = MessageRecord::peek_seq(v)?.ok_or(Error::CorruptValue {
                record: "MessageRecord without seq",
            });
            Ok(false)
        })?;
        seq
    }

    pub fn dedupe(
        &self,
        thread: u64,
        sender: u64,
        client_msg_id: u64,
    ) -> Result<Option<u64>, Error> {
        self.get_u64(CF_DEDUPE, &keys::triple(thread, sender, client_msg_id))
    }

    /// The highest client message id with a dedupe entry of `sender` in `thread`, expired or
    /// not: every SEND of theirs with a higher id is new. One backward seek, since the keys
    /// sort by thread, sender, then id.
    pub fn newest_dedupe(&self, thread: u64, sender: u64) -> Result<Option<u64>, Error> {
        let prefix = keys::pair(thread, sender);
        let mut newest = None;
        self.scan(
            CF_DEDUPE,
            &prefix,
            &keys::prefix_end(&prefix),
            true,
            |k, _| {
                newest = Some(keys::parse_triple(CF_DEDUPE, k)?.2);
                Ok(false)
            },
        )?;
        Ok(newest)
    }

    /// (message id, when) of each message of `thread` that `user` deleted for themselves;
    /// `when` is the clock value of the DELETE_FOR_ME, 0 for deletions stored without one.
    pub fn hidden_messages_at(&self, user: u64, thread: u64) -> Result<Vec<(u64, u64)>, Error> {
        let mut out = Vec::new();
        self.scan_prefix(CF_HIDDEN, &keys::pair(user, thread), |k, v| {
            let at = match v.len() {
                0 => 0,
                8 => u64::from_be_bytes(v.try_into().unwrap_or_default()),
                _ => return Err(Error::CorruptValue { record: "hidden" }),
            };
            out.push((keys::parse_triple(CF_HIDDEN, k)?.2, at));
            Ok(true)
        })?;
        Ok(out)
    }

    /// `user`'s reaction to message `msg` of `thread`, if any.
    pub fn reaction(&self, thread: u64, msg: u64, user: u64) -> Result<Option<String>, Error> {
        match self.get(CF_REACTIONS, &keys::triple(thread, msg, user))? {
            None => Ok(None),
            Some(v) => String::from_utf8(v.to_vec())
                .map(Some)
                .map_err(|_| Error::CorruptValue { record: "reaction" }),
        }
    }

    /// The users with a reaction to message `msg` of `thread` (at most one row per member).
    pub fn reactors(&self, thread: u64, msg: u64) -> Result<Vec<u64>, Error> {
        let mut out = Vec::new();
        self.scan_prefix(CF_REACTIONS, &keys::pair(thread, msg), |k, _| {
            out.push(keys::parse_triple(CF_REACTIONS, k)?.2);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Message ids of `thread` that `user` deleted for themselves.
    pub fn hidden_messages(&self, user: u64, thread: u64) -> Result<Vec<u64>, Error> {
        let mut out = Vec::new();
        self.scan_prefix(CF_HIDDEN, &keys::pair(user, thread), |k, _| {
            out.push(keys::parse_triple(CF_HIDDEN, k)?.2);
            Ok(true)
        })?;
        Ok(out)
    }

    /// Every push registration of `user` (none: empty).
    pub fn pushers(&self, user: u64) -> Result<Vec<Pusher>, Error> {
        Ok(self
            .get_record::<PusherSet>(CF_PUSHERS, &keys::id(user))?
            .map(|set| set.pushers)
            .unwrap_or_default())
    }

    /// Whether `user` has any push registration: one point read, answered by the bloom filter
    /// alone for most users without one.
    pub fn has_pushers(&self, user: u64) -> Result<bool, Error> {
        Ok(self.get(CF_PUSHERS, &keys::id(user))?.is_some())
    }

    /// `user`'s pending notification, if any.
    pub fn outbox_row(&self, user: u64) -> Result<Option<OutboxRow>, Error> {
        match self.get(CF_PUSH_OUTBOX, &keys::id(user))? {
            Some(v) => OutboxRow::decode_pending(&v),
            None => Ok(None),
        }
    }

    /// Pending notifications of users after `after` (`None`: from the first), ascending, at
    /// most `examine` stored rows looked at (settled ones included). Returns the rows and
    /// the last user looked at (`None`: the end of the outbox was reached).
    pub fn outbox_page(
        &self,
        after: Option<u64>,
        examine: usize,
        out: &mut Vec<(u64, OutboxRow)>,
    ) -> Result<Option<u64>, Error> {
        let lower = match after {
            Some(u) if u == u64::MAX => return Ok(None),
            Some(u) => keys::id(u + 1).to_vec(),
            None => Vec::new(),
        };
        let (mut seen, mut last) = (0, None);
        self.scan(CF_PUSH_OUTBOX, &lower, &[], false, |k, v| {
            let user = keys::parse_id(CF_PUSH_OUTBOX, k)?;
            if let Some(row) = OutboxRow::decode_pending(v)? {
                out.push((user, row));
            }
            seen += 1;
            last = Some(user);
            Ok(seen < examine)
        })?;
        Ok(if seen < examine { None } else { last })
    }

    /// RocksDB's estimate of the keys in the outbox (settled rows included until compacted).
    pub fn outbox_estimate(&self) -> u64 {
        self.inner
            .db
            .property_int_value_cf(self.cf(CF_PUSH_OUTBOX), "rocksdb.estimate-num-keys")
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    // ---- media ----

    pub fn media_header(&self, media: &[u8; MEDIA_ID]) -> Result<Option<MediaHeader>, Error> {
        self.get_record(CF_MEDIA, &keys::media_meta(media))
    }

    /// Whether `user` uploaded `media`.
    pub fn is_media_owner(&self, media: &[u8; MEDIA_ID], user: u64) -> Result<bool, Error> {
        self.is_media_linked(MEDIA_OWNER, media, user)
    }

    /// Whether `media` is linked to user or thread `id` (`MEDIA_OWNER`, `MEDIA_THREAD`). A
    /// thread is linked while a message of it that refers to the media is not recalled.
    pub fn is_media_linked(
        &self,
        kind: u8,
        media: &[u8; MEDIA_ID],
        id: u64,
    ) -> Result<bool, Error> {
        let key = keys::media_link(kind, media, id);
        match self.get(CF_MEDIA, &key)? {
            None => Ok(false),
            Some(v) => Ok(media_refs(&v).ok_or(Error::CorruptValue {
                record: "media link",
            })? > 0),
        }
    }

    /// Calls `f` with each user (`MEDIA_OWNER`) or thread (`MEDIA_THREAD`) linked to `media`
    /// (as [`is_media_linked`](Self::is_media_linked) says), in id order, until it returns
    /// false.
    pub fn media_links(
        &self,
        kind: u8,
        media: &[u8; MEDIA_ID],
        mut f: impl FnMut(u64) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        self.media_link_refs(
            kind,
            media,
            |id, refs| if refs > 0 { f(id) } else { Ok(true) },
        )
    }

    /// Calls `f` with each link of `media` of one kind, linked or not: the user or thread and
    /// its count (see `media_refs`; 0 or less: every message that referred to it in that
    /// thread was recalled), in id order, until it returns false.
    pub fn media_link_refs(
        &self,
        kind: u8,
        media: &[u8; MEDIA_ID],
        mut f: impl FnMut(u64, i64) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        self.scan_prefix(CF_MEDIA, &keys::media_links(kind, media), |k, v| {
            let refs = media_refs(v).ok_or(Error::CorruptValue {
                record: "media link",
            })?;
            f(keys::parse_media_link(k)?, refs)
        })
    }

    /// In a cluster: the id of the node holding the bytes of `media` as sent in `thread`, if
    /// that is not this node (see [`Batch::put_media_holder`]).
    pub fn media_holder(
        &self,
        media: &[u8; MEDIA_ID],
        thread: u64,
    ) -> Result<Option<Vec<u8>>, Error> {
        let key = keys::media_link(MEDIA_HOLDER, media, thread);
        Ok(self.get(CF_MEDIA, &key)?.map(|v| v.to_vec()))
    }

    /// Bytes of stored media `user` uploaded (counted once per upload of distinct content).
    pub fn media_usage(&self, user: u64) -> Result<u64, Error> {
        match self.get(CF_MEDIA, &keys::media_usage(user))? {
            None => Ok(0),
            Some(v) => match <[u8; 8]>::try_from(&v[..]) {
                Ok(b) => Ok(i64::from_be_bytes(b).max(0) as u64),
                Err(_) => Err(Error::CorruptValue {
                    record: "media usage",
                }),
            },
        }
    }

    /// Up to `max` stored blobs whose id is above `after` (all of them when `None`), in id
    /// order, with their headers: one page of the garbage collector's walk.
    pub fn media_headers_after(
        &self,
        after: Option<&[u8; MEDIA_ID]>,
        max: usize,
    ) -> Result<Vec<([u8; MEDIA_ID], MediaHeader)>, Error> {
        let lower = match after {
            Some(m) => keys::prefix_end(&keys::media_meta(m)),
            None => vec![MEDIA_META],
        };
        let mut out = Vec::new();
        self.scan(CF_MEDIA, &lower, &[MEDIA_META + 1], false, |k, v| {
            out.push((keys::parse_media_meta(k)?, MediaHeader::decode(v)?));
            Ok(out.len() < max)
        })?;
        Ok(out)
    }

    /// The data directory (RocksDB's files; media blobs live in its `media/` folder).
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// An empty batch of staged writes.
    pub fn batch(&self) -> Batch {
        Batch {
            store: self.clone(),
            batch: WriteBatch::default(),
            scratch: bytes::BytesMut::new(),
        }
    }
}

/// Typed staging of every write the server makes.
impl Batch {
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    pub fn len(&self) -> usize {
        self.batch.len()
    }

    fn put(&mut self, cf: &str, key: &[u8], value: &[u8]) {
        self.batch.put_cf(self.store.cf(cf), key, value);
    }

    /// Stages `rec` under `key`, encoded into the batch's scratch buffer: no allocation per
    /// record once the buffer has grown to the largest record (a message, a thread's or a
    /// member's row is written per SEND).
    fn put_record(&mut self, cf: &str, key: &[u8], rec: &impl Record) {
        rec.encode_into(&mut self.scratch);
        let Batch {
            store,
            batch,
            scratch,
        } = self;
        batch.put_cf(store.cf(cf), key, &scratch[..]);
    }

    fn delete(&mut self, cf: &str, key: &[u8]) {
        self.batch.delete_cf(self.store.cf(cf), key);
    }

    pub fn put_user(&mut self, user: u64, rec: &UserRecord) {
        self.put_record(CF_USERS, &keys::id(user), rec);
        self.put(CF_HANDLES, rec.handle.as_bytes(), &user.to_be_bytes());
    }

    pub fn put_token(&mut self, digest: &[u8; TOKEN_DIGEST], rec: &TokenRecord) {
        self.put_record(CF_TOKENS, digest, rec);
        self.put(CF_USER_TOKENS, &keys::user_token(rec.user, digest), &[]);
    }

    pub fn delete_token(&mut self, user: u64, digest: &[u8; TOKEN_DIGEST]) {
        self.delete(CF_TOKENS, digest);
        self.delete(CF_USER_TOKENS, &keys::user_token(user, digest));
    }

    pub fn put_device(&mut self, user: u64, name: &str, device: u32) {
        self.put(CF_DEVICES, &keys::device(user, name), &device.to_be_bytes());
    }

    pub fn put_admin(&mut self, user: u64, granted_at: u64) {
        self.put(CF_ADMINS, &keys::id(user), &granted_at.to_be_bytes());
    }

    pub fn delete_admin(&mut self, user: u64) {
        self.delete(CF_ADMINS, &keys::id(user));
    }

    pub fn put_last_seen(&mut self, user: u64, at: u64) {
        self.put(CF_LAST_SEEN, &keys::id(user), &at.to_be_bytes());
    }

    pub fn put_contact(&mut self, user: u64, other: u64) {
        self.put(CF_CONTACTS, &keys::pair(user, other), &[]);
    }

    pub fn delete_contact(&mut self, user: u64, other: u64) {
        self.delete(CF_CONTACTS, &keys::pair(user, other));
    }

    pub fn put_thread(&mut self, thread: u64, rec: &ThreadRecord) {
        self.put_record(CF_THREADS, &keys::id(thread), rec);
    }

    pub fn put_direct(&mut self, a: u64, b: u64, thread: u64) {
        self.put(CF_DIRECT, &keys::direct(a, b), &thread.to_be_bytes());
    }

    pub fn put_member(&mut self, thread: u64, user: u64, rec: &MemberRecord) {
        self.put_record(CF_MEMBERS, &keys::pair(thread, user), rec);
    }

    /// Removes `user` from the members of `thread`. Their `memberships` row stays, as the
    /// tombstone the caller writes with [`put_private_state`](Self::put_private_state).
    pub fn delete_member(&mut self, thread: u64, user: u64) {
        self.delete(CF_MEMBERS, &keys::pair(thread, user));
    }

    pub fn put_private_state(&mut self, user: u64, thread: u64, rec: &PrivateState) {
        self.put_record(CF_MEMBERSHIPS, &keys::pair(user, thread), rec);
    }

    /// Stores a message: one key, whatever its kind (its `seq` is in the value).
    pub fn put_message(&mut self, thread: u64, msg: u64, rec: &MessageRecord) {
        self.put_record(CF_MESSAGES, &keys::message(thread, msg), rec);
    }

    pub fn put_dedupe(&mut self, thread: u64, sender: u64, client_msg_id: u64, msg: u64) {
        self.put(
            CF_DEDUPE,
            &keys::triple(thread, sender, client_msg_id),
            &msg.to_be_bytes(),
        );
    }

    /// `user`'s reaction to message `msg` of `thread` is now `reaction` (empty: none).
    pub fn put_reaction(&mut self, thread: u64, msg: u64, user: u64, reaction: &str) {
        let key = keys::triple(thread, msg, user);
        if reaction.is_empty() {
            self.delete(CF_REACTIONS, &key);
        } else {
            self.put(CF_REACTIONS, &key, reaction.as_bytes());
        }
    }

    /// `msg` deleted for `user` at clock value `at`.
    pub fn put_hidden(&mut self, user: u64, thread: u64, msg: u64, at: u64) {
        self.put(
            CF_HIDDEN,
            &keys::triple(user, thread, msg),
            &at.to_be_bytes(),
        );
    }

    pub fn put_media_header(&mut self, media: &[u8; MEDIA_ID], rec: &MediaHeader) {
        self.put_record(CF_MEDIA, &keys::media_meta(media), rec);
    }

    /// Links `media` to an uploader (`MEDIA_OWNER`).
    pub fn put_media_link(&mut self, kind: u8, media: &[u8; MEDIA_ID], id: u64) {
        self.put(CF_MEDIA, &keys::media_link(kind, media, id), &[]);
    }

    /// Adds `delta` to the messages of `thread` that refer to `media` (`MEDIA_THREAD` link):
    /// +1 when one is sent, -1 when one is recalled. A merge, so neither needs to read the
    /// count (nor see the round's uncommitted sends).
    pub fn add_media_thread_refs(&mut self, media: &[u8; MEDIA_ID], thread: u64, delta: i64) {
        self.batch.merge_cf(
            self.store.cf(CF_MEDIA),
            keys::media_link(MEDIA_THREAD, media, thread),
            delta.to_be_bytes(),
        );
    }

    /// In a cluster: records that the bytes of `media`, sent in `thread`, are on node `holder`
    /// (its id), not here.
    pub fn put_media_holder(&mut self, media: &[u8; MEDIA_ID], thread: u64, holder: &[u8]) {
        self.put(
            CF_MEDIA,
            &keys::media_link(MEDIA_HOLDER, media, thread),
            holder,
        );
    }

    /// Adds `delta` to the bytes of stored media charged to `user`: a merge, so the user's
    /// shard (uploads) and the garbage collector (deletes) never overwrite each other's change.
    pub fn add_media_usage(&mut self, user: u64, delta: i64) {
        self.batch.merge_cf(
            self.store.cf(CF_MEDIA),
            keys::media_usage(user),
            delta.to_be_bytes(),
        );
    }

    /// Forgets a stored blob: its header and every link of it.
    pub fn delete_media(&mut self, media: &[u8; MEDIA_ID], owners: &[u64], threads: &[u64]) {
        self.delete(CF_MEDIA, &keys::media_meta(media));
        for &user in owners {
            self.delete(CF_MEDIA, &keys::media_link(MEDIA_OWNER, media, user));
        }
        for &thread in threads {
            self.delete(CF_MEDIA, &keys::media_link(MEDIA_THREAD, media, thread));
            self.delete(CF_MEDIA, &keys::media_link(MEDIA_HOLDER, media, thread));
        }
    }

    /// Replaces every push registration of `user` (none: the row goes).
    pub fn put_pushers(&mut self, user: u64, pushers: Vec<Pusher>) {
        if pushers.is_empty() {
            self.delete(CF_PUSHERS, &keys::id(user));
        } else {
            self.put(CF_PUSHERS, &keys::id(user), &PusherSet { pushers }.encode());
        }
    }

    /// Changes `user`'s pending notification (a merge: see [`OutboxOp`]).
    pub fn outbox(&mut self, user: u64, op: &OutboxOp) {
        self.batch
            .merge_cf(self.store.cf(CF_PUSH_OUTBOX), keys::id(user), op.encode());
    }

    /// Forgets `user`'s pending notification (a device of theirs connected: it will sync).
    pub fn delete_outbox(&mut self, user: u64) {
        self.delete(CF_PUSH_OUTBOX, &keys::id(user));
    }

    /// Records that clock values up to `at` may be in use by shard `shard`: at start the clock
    /// resumes above the highest floor, so ids never repeat even if the wall clock went back.
    pub fn clock_floor(&mut self, shard: u16, at: u64) {
        let mut key = META_CLOCK_FLOOR.to_vec();
        key.extend_from_slice(&shard.to_be_bytes());
        self.put(CF_META, &key, &at.to_be_bytes());
    }
}

/// Compaction filter of `memberships`: drops tombstones past their retention, so the rows of
/// threads a user left do not pile up forever. Anything it cannot decode is kept.
fn drop_expired_tombstone(_level: u32, _key: &[u8], value: &[u8]) -> Decision {
    match PrivateState::decode(value) {
        Ok(state) if state.expired(wall_us()) => Decision::Remove,
        _ => Decision::Keep,
    }
}

/// Compaction filter of `push_outbox`: drops settled rows (empty values).
fn drop_settled_outbox(_level: u32, _key: &[u8], value: &[u8]) -> Decision {
    if value.is_empty() {
        Decision::Remove
    } else {
        Decision::Keep
    }
}

/// One counter per partition of one kind of id, each persisted in leases: ids are unique
/// across restarts without a write per id. The stored value is the end of the lease, the first
/// sequence number not yet reserved (for partition 0, equal to the id: the pre-partition
/// counter carries on).
struct IdCounters {
    name: &'static [u8],
    /// Per partition: the next sequence number and the end of its lease.
    parts: Box<[IdAllocator]>,
}

struct IdAllocator {
    next: AtomicU64,
    leased_to: Mutex<u64>,
}

impl IdCounters {
    /// Reads the counters of every partition (one point read each, at open).
    fn load(db: &DB, name: &'static [u8]) -> Result<Self, Error> {
        let cf = db
            .cf_handle(CF_META)
            .expect("column family created at open");
        let parts = (0..PARTITIONS)
            .map(|p| {
                let start = match db.get_cf(cf, keys::id_counter(name, p))? {
                    Some(v) if v.len() == 8 => {
                        u64::from_be_bytes(v[..].try_into().unwrap_or_default())
                    }
                    Some(_) => {
                        return Err(Error::CorruptValue {
                            record: "id counter",
                        })
                    }
                    None => 1,
                };
                // Everything below the persisted lease end may have been handed out: start
                // after it.
                Ok(IdAllocator {
                    next: AtomicU64::new(start),
                    leased_to: Mutex::new(start),
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(Self { name, parts })
    }

    fn next(&self, store: &Store, partition: Partition) -> Result<u64, Error> {
        let part = self
            .parts
            .get(usize::from(partition))
            .ok_or(Error::IdsExhausted { partition })?;
        let seq = part.next.fetch_add(1, Ordering::Relaxed);
        if seq > MAX_SEQ {
            return Err(Error::IdsExhausted { partition });
        }
        let mut leased = part.leased_to.lock();
        if seq >= *leased {
            let end = seq + ID_LEASE;
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            let key = keys::id_counter(self.name, partition);
            store.write(|| {
                store
                    .inner
                    .db
                    .put_cf_opt(store.cf(CF_META), &key, end.to_be_bytes(), &wo)
            })?;
            *leased = end;
        }
        Ok(partition::compose(partition, seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000_000;

    #[test]
    fn ids_carry_their_partition_and_counters_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        let mut before = std::collections::HashSet::new();
        for p in [0, 5, 1023] {
            for _ in 0..3 {
                let (u, t) = (
                    store.next_user_id(p).unwrap(),
                    store.next_thread_id(p).unwrap(),
                );
                assert_eq!((partition::of_id(u), partition::of_id(t)), (p, p));
                assert!(partition::seq_of(u) >= 1 && before.insert(u));
                before.insert(t);
            }
        }
        assert_eq!(store.next_user_id(7).unwrap(), partition::compose(7, 1));
        drop(store);
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        for p in [0, 5, 1023] {
            let (u, t) = (
                store.next_user_id(p).unwrap(),
                store.next_thread_id(p).unwrap(),
            );
            assert!(
                !before.contains(&u) && !before.contains(&t),
                "{u} or {t} handed out twice"
            );
            assert_eq!((partition::of_id(u), partition::of_id(t)), (p, p));
        }
    }

    #[test]
    fn a_thread_link_counts_its_unrecalled_messages_and_an_old_empty_one_counts_as_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        let (media, old) = ([7u8; MEDIA_ID], [8u8; MEDIA_ID]);
        let linked = |m: &[u8; MEDIA_ID]| store.is_media_linked(MEDIA_THREAD, m, 5).unwrap();
        let mut b = store.batch();
        b.add_media_thread_refs(&media, 5, 1);
        b.add_media_thread_refs(&media, 5, 1);
        b.add_media_thread_refs(&media, 5, -1);
        store.commit(b).unwrap();
        assert!(linked(&media), "two sent, one recalled");
        let mut b = store.batch();
        b.add_media_thread_refs(&media, 5, -1);
        store.commit(b).unwrap();
        assert!(!linked(&media), "both recalled");
        let mut walked = Vec::new();
        store
            .media_link_refs(MEDIA_THREAD, &media, |t, n| {
                walked.push((t, n));
                Ok(true)
            })
            .unwrap();
        assert_eq!(walked, [(5, 0)], "the row stays, at 0");
        store
            .media_links(MEDIA_THREAD, &media, |t| panic!("thread {t} listed at 0"))
            .unwrap();
        // A link written before counts (an empty value) is one message: recalling it unlinks.
        let mut b = store.batch();
        b.put_media_link(MEDIA_THREAD, &old, 5);
        store.commit(b).unwrap();
        assert!(linked(&old));
        let mut b = store.batch();
        b.add_media_thread_refs(&old, 5, -1);
        store.commit(b).unwrap();
        assert!(!linked(&old));
    }

    #[test]
    fn a_data_dir_from_before_partitions_keeps_counting_in_partition_zero() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What the old single counter left: ids 1..2048 were leased.
            let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
            let meta = store.cf(CF_META);
            let db = &store.inner.db;
            db.put_cf(meta, META_NEXT_USER, 2049u64.to_be_bytes())
                .unwrap();
            db.put_cf(meta, META_NEXT_THREAD, 1025u64.to_be_bytes())
                .unwrap();
        }
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        assert_eq!(store.next_user_id(0).unwrap(), 2049);
        assert_eq!(store.next_thread_id(0).unwrap(), 1025);
        assert_eq!(store.next_user_id(1).unwrap(), partition::compose(1, 1));
    }

    #[test]
    fn an_exhausted_partition_refuses_ids() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
            let key = keys::id_counter(META_NEXT_THREAD, 9);
            let meta = store.cf(CF_META);
            store
                .inner
                .db
                .put_cf(meta, key, MAX_SEQ.to_be_bytes())
                .unwrap();
        }
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        assert_eq!(
            store.next_thread_id(9).unwrap(),
            partition::compose(9, MAX_SEQ)
        );
        let err = store.next_thread_id(9).unwrap_err();
        assert!(matches!(err, Error::IdsExhausted { partition: 9 }), "{err}");
        assert!(matches!(
            store.next_thread_id(PARTITIONS),
            Err(Error::IdsExhausted { .. })
        ));
        assert_eq!(store.next_thread_id(10).unwrap(), partition::compose(10, 1));
    }

    /// Three nodes, each with its own store, allocate only in the partitions they own: no id is
    /// handed out twice, and every node agrees that each id is homed where it was made.
    #[test]
    fn nodes_allocating_in_their_own_partitions_never_collide() {
        use crate::cluster::{Home, Router};
        let all = ["a", "b", "c"].map(|n| (n.to_string(), format!("{n}:1")));
        let routers: Vec<Router> = all.iter().map(|(id, _)| Router::new(id, &all)).collect();
        let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let stores: Vec<Store> = dirs
            .iter()
            .map(|d| Store::open(d.path(), FsyncMode::Never).unwrap())
            .collect();
        let mut seen = HashMap::new();
        for (node, (router, store)) in routers.iter().zip(&stores).enumerate() {
            for p in router.owned() {
                for _ in 0..3 {
                    // User ids and thread ids are separate spaces: each is unique on its own.
                    let user = ("user", store.next_user_id(p).unwrap());
                    let thread = ("thread", store.next_thread_id(p).unwrap());
                    for id in [user, thread] {
                        assert_eq!(seen.insert(id, node), None, "{id:?} allocated twice");
                    }
                }
            }
        }
        assert_eq!(seen.len(), PARTITIONS as usize * 6);
        for (&(_, id), &node) in &seen {
            for (other, router) in routers.iter().enumerate() {
                assert_eq!(router.user_home(id) == Home::Local, other == node);
                assert_eq!(router.owner(partition::of_id(id)), all[node].0);
            }
        }
    }

    /// The newest OPTIONS file RocksDB wrote in `dir`: the options it runs with.
    fn options_file(dir: &Path) -> String {
        let newest = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("OPTIONS-"))
            .max_by_key(|n| n["OPTIONS-".len()..].parse::<u64>().unwrap_or(0))
            .expect("RocksDB writes an OPTIONS file");
        std::fs::read_to_string(dir.join(newest)).unwrap()
    }

    /// The lines of `[section]` in an OPTIONS file.
    fn options_section<'a>(options: &'a str, section: &str) -> Vec<&'a str> {
        let head = format!("[{section}]");
        options
            .lines()
            .skip_while(|l| l.trim() != head)
            .skip(1)
            .take_while(|l| !l.trim_start().starts_with('['))
            .map(str::trim)
            .collect()
    }

    /// The dedupe lookup of a new send (a miss) is answered by the memtable's bloom filter
    /// over whole keys, and every entry written is still found (blooms have no false
    /// negatives; the filter is only a shortcut).
    /// Paced 1:1 chat writes, per SEND, a `messages` row, a `dedupe` row and the sender's
    /// `members` row, each into a memtable holding every other conversation's rows. Hinted,
    /// each insert starts next to the previous row of its thread (or thread and user) and
    /// costs a few key comparisons; searched from the top of the skip list (up to 24,000
    /// entries per family here) it costs about three times as many. Measured over 30 runs of
    /// the store's tests, which run in parallel: 7–15 per row hinted, 28–31 searched; the
    /// hinted count spreads from run to run (one run in 30 at 15, which the earlier threshold
    /// of 14 failed), the searched one does not.
    #[test]
    fn the_rows_of_a_send_are_inserted_next_to_the_previous_row_of_their_thread() {
        use rocksdb::perf::{set_perf_stats, PerfContext, PerfMetric, PerfStatsLevel};
        const THREADS: u64 = 2_000;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        let round = |n: u64| {
            let mut b = store.batch();
            for thread in 1..=THREADS {
                let sender = 1 + (thread + n) % 2;
                let msg = MessageRecord {
                    sender,
                    client_msg_id: n,
                    body: bytes::Bytes::from_static(b"hello"),
                    ..Default::default()
                };
                b.put_message(thread, 1_000 + n, &msg);
                b.put_dedupe(thread, sender, n, 1_000 + n);
                let member = MemberRecord {
                    read: 1_000 + n,
                    ..Default::default()
                };
                b.put_member(thread, sender, &member);
            }
            store.commit(b).unwrap();
        };
        for n in 0..8 {
            round(n);
        }
        // The commit's write group has one writer, this thread: its perf context counts the
        // memtable inserts.
        set_perf_stats(PerfStatsLevel::EnableCount);
        let mut ctx = PerfContext::default();
        ctx.reset();
        for n in 8..12 {
            round(n);
        }
        let comparisons = ctx.metric(PerfMetric::UserKeyComparisonCount);
        set_perf_stats(PerfStatsLevel::Disable);
        let per_row = comparisons as f64 / (4 * 3 * THREADS) as f64;
        assert!(
            per_row < 20.0,
            "{per_row:.1} key comparisons per inserted row: the inserts searched the skip list"
        );
    }

    #[test]
    fn a_threads_row_is_overwritten_in_the_memtable_and_its_last_version_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = ThreadRecord {
            name: "a group".into(),
            ..Default::default()
        };
        {
            let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
            for id in 1..=100 {
                rec.last_msg_id = 1_000 + id;
                rec.changed_at = 1_000 + id;
                rec.countable = id;
                let mut b = store.batch();
                b.put_thread(7, &rec);
                b.put_thread(8, &rec);
                store.commit(b).unwrap();
            }
            let entries = store
                .inner
                .db
                .property_int_value_cf(store.cf(CF_THREADS), "rocksdb.num-entries-active-mem-table")
                .unwrap();
            assert_eq!(
                entries,
                Some(2),
                "one entry per thread, not one per version"
            );
            assert_eq!(store.thread(7).unwrap(), Some(rec.clone()));
            assert_eq!(
                store.threads(&[8, 9]).unwrap(),
                vec![Some(rec.clone()), None]
            );
            // A longer row does not fit in place: it is added, and read back.
            rec.name = "a group with a longer name".into();
            let mut b = store.batch();
            b.put_thread(7, &rec);
            store.commit(b).unwrap();
            assert_eq!(store.thread(7).unwrap(), Some(rec.clone()));
        }
        // Reopened, the WAL is replayed into a memtable: the last version of each.
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        assert_eq!(store.thread(7).unwrap(), Some(rec.clone()));
        rec.name = "a group".into();
        assert_eq!(store.thread(8).unwrap(), Some(rec));
    }

    #[test]
    fn dedupe_lookups_go_through_a_whole_key_memtable_bloom() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        let dedupe = options_section(&options_file(dir.path()), "CFOptions \"dedupe\"")
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
        assert!(dedupe.contains(&"memtable_whole_key_filtering=true".to_owned()));
        assert!(dedupe
            .iter()
            .any(|l| l.starts_with("memtable_prefix_bloom_size_ratio=0.02")));
        let mut b = store.batch();
        for client_id in 1..=1000 {
            b.put_dedupe(7, 8, client_id, 1_000_000 + client_id);
        }
        store.commit(b).unwrap();
        for client_id in 1..=1000 {
            assert_eq!(
                store.dedupe(7, 8, client_id).unwrap(),
                Some(1_000_000 + client_id)
            );
        }
        for client_id in 1001..=2000 {
            assert_eq!(store.dedupe(7, 8, client_id).unwrap(), None);
        }
    }

    #[test]
    fn the_newest_dedupe_entry_is_the_highest_client_id_of_that_sender_in_that_thread() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        let mut b = store.batch();
        for (thread, sender, client) in [(7, 8, 3), (7, 8, 300), (7, 8, 1 << 40), (7, 9, u64::MAX)]
        {
            b.put_dedupe(thread, sender, client, 1);
        }
        b.put_dedupe(8, 8, u64::MAX, 1);
        b.put_dedupe(6, 8, u64::MAX, 1);
        store.commit(b).unwrap();
        assert_eq!(store.newest_dedupe(7, 8).unwrap(), Some(1 << 40));
        assert_eq!(store.newest_dedupe(7, 9).unwrap(), Some(u64::MAX));
        assert_eq!(store.newest_dedupe(7, 10).unwrap(), None);
        assert_eq!(store.newest_dedupe(7, 7).unwrap(), None);
    }

    #[test]
    fn compaction_removes_dedupe_entries_older_than_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            dedupe_window_us: MINUTE,
            ..StoreOptions::default()
        };
        let store = Store::open_with(dir.path(), FsyncMode::Never, options).unwrap();
        let now = wall_us();
        let mut b = store.batch();
        b.put_dedupe(1, 2, 3, now - 2 * MINUTE);
        b.put_dedupe(1, 2, 4, now - MINUTE / 2);
        b.put_dedupe(1, 2, 5, now);
        store.commit(b).unwrap();
        assert_eq!(store.dedupe(1, 2, 3).unwrap(), Some(now - 2 * MINUTE));
        store.compact_dedupe();
        assert_eq!(store.dedupe(1, 2, 3).unwrap(), None);
        assert_eq!(store.dedupe(1, 2, 4).unwrap(), Some(now - MINUTE / 2));
        assert_eq!(store.dedupe(1, 2, 5).unwrap(), Some(now));
        // After a reopen with the same window, the survivors are still there.
        drop(store);
        let store = Store::open_with(dir.path(), FsyncMode::Never, options).unwrap();
        assert_eq!(store.dedupe(1, 2, 4).unwrap(), Some(now - MINUTE / 2));
    }

    #[test]
    fn a_store_opened_without_a_window_keeps_every_dedupe_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        let mut b = store.batch();
        b.put_dedupe(1, 2, 3, 1);
        store.commit(b).unwrap();
        store.compact_dedupe();
        assert_eq!(store.dedupe(1, 2, 3).unwrap(), Some(1));
    }

    #[test]
    fn the_filter_judges_by_the_message_id_and_keeps_what_it_cannot_read() {
        let at = |now: u64| move || now;
        let id = 1_000u64.to_be_bytes();
        assert!(matches!(expire_dedupe(10, at(1_010), &id), Decision::Keep));
        assert!(matches!(
            expire_dedupe(10, at(1_011), &id),
            Decision::Remove
        ));
        assert!(matches!(
            expire_dedupe(10, at(5_000), &[1, 2]),
            Decision::Keep
        ));
    }

    /// A reconnect storm reads a token, a user and (LOGIN) a device row per connection, each
    /// once: those reads must not keep their blocks in the block cache, or every connection
    /// costs about 200 bytes of cache (issue 13). Chat reads of users still fill it.
    #[test]
    fn connect_reads_leave_the_block_cache_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        const USERS: u64 = 3_000;
        let digest = |i: u64| {
            let mut d = [0u8; TOKEN_DIGEST];
            d[..8].copy_from_slice(&i.to_be_bytes());
            d
        };
        let mut b = store.batch();
        for i in 1..=USERS {
            b.put_user(
                i,
                &UserRecord {
                    handle: format!("user{i}"),
                    password_hash:
                        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into(),
                    created_at: 1,
                },
            );
            b.put_token(
                &digest(i),
                &TokenRecord {
                    user: i,
                    device: 1,
                    device_name: "phone".into(),
                    created_at: 1,
                    last_used: 1,
                },
            );
            b.put_device(i, "phone", 1);
        }
        store.commit(b).unwrap();
        for cf in [CF_USERS, CF_TOKENS, CF_DEVICES] {
            store.inner.db.flush_cf(store.cf(cf)).unwrap();
        }
        let cached = || store.memory().unwrap().block_cache;
        let before = cached();
        for i in 1..=USERS {
            let t = store.token(&digest(i)).unwrap().unwrap();
            assert_eq!(
                store.user_at_connect(t.user).unwrap().unwrap().created_at,
                1
            );
            assert_eq!(store.device_id(i, "phone", 8).unwrap(), 1);
        }
        let after = cached();
        assert!(
            after - before < 16 * 1024,
            "{USERS} connects' reads grew the block cache from {before} to {after} bytes"
        );
        // The chat path's user reads are cached as before.
        for i in 1..=USERS {
            store.user(i).unwrap().unwrap();
        }
        assert!(
            cached() - after > 64 * 1024,
            "chat reads of {USERS} users are no longer cached ({} bytes)",
            cached()
        );
    }

    #[test]
    fn compaction_removes_tokens_idle_for_longer_than_the_idle_time() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            token_idle_us: MINUTE,
            ..StoreOptions::default()
        };
        let store = Store::open_with(dir.path(), FsyncMode::Never, options).unwrap();
        let now = wall_us();
        let token = |last_used| TokenRecord {
            user: 1,
            device: 1,
            device_name: "d".into(),
            created_at: 0,
            last_used,
        };
        let mut b = store.batch();
        b.put_token(&[1; TOKEN_DIGEST], &token(now - 2 * MINUTE));
        b.put_token(&[2; TOKEN_DIGEST], &token(now - MINUTE / 2));
        store.commit(b).unwrap();
        store.compact_tokens();
        assert_eq!(store.token(&[1; TOKEN_DIGEST]).unwrap(), None);
        assert!(store.token(&[2; TOKEN_DIGEST]).unwrap().is_some());
        assert!(matches!(expire_token(10, || 5, &[1, 2]), Decision::Keep));
    }

    #[test]
    fn compaction_drops_only_expired_membership_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        let now = wall_us();
        let state = |left, changed_at| PrivateState {
            left,
            changed_at,
            ..Default::default()
        };
        let mut b = store.batch();
        b.put_private_state(1, 10, &state(true, 1)); // left long ago: expired
        b.put_private_state(1, 11, &state(true, now)); // left just now
        b.put_private_state(1, 12, &state(false, 1)); // a member, unchanged for long
        store.commit(b).unwrap();
        let threads =
            |v: Vec<(u64, PrivateState)>| v.into_iter().map(|(t, _)| t).collect::<Vec<_>>();
        assert_eq!(threads(store.memberships_from(1, 0, 10).unwrap()), [11, 12]);
        assert_eq!(threads(store.memberships(1).unwrap()), [12]);
        assert!(
            store.private_state(1, 10).unwrap().is_some(),
            "still on disk"
        );
        store
            .inner
            .db
            .compact_range_cf(store.cf(CF_MEMBERSHIPS), None::<&[u8]>, None::<&[u8]>);
        assert!(
            store.private_state(1, 10).unwrap().is_none(),
            "compacted away"
        );
        assert!(store.private_state(1, 11).unwrap().is_some());
        assert!(store.private_state(1, 12).unwrap().is_some());
    }

    use courier_protocol::MessageKind;

    fn message(sender: u64, kind: MessageKind) -> MessageRecord {
        MessageRecord {
            sender,
            kind,
            body: bytes::Bytes::from_static(b"body"),
            ..Default::default()
        }
    }

    /// Stages `(id, sender, kind)` in `thread` the way `Engine::append` numbers them, and
    /// returns the thread's `countable` after them.
    fn append(b: &mut Batch, thread: u64, messages: &[(u64, u64, MessageKind)]) -> u64 {
        let mut countable = 0;
        for &(id, sender, kind) in messages {
            if kind != MessageKind::System {
                countable += 1;
            }
            let m = MessageRecord {
                seq: countable,
                ..message(sender, kind)
            };
            b.put_message(thread, id, &m);
        }
        countable
    }

    #[test]
    fn unread_counts_others_messages_but_not_system_ones_or_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        let mut b = store.batch();
        let n = append(
            &mut b,
            1,
            &[
                (10, 7, MessageKind::Text),
                (11, 8, MessageKind::Text),
                (12, 7, MessageKind::System),
                (13, 7, MessageKind::Media),
            ],
        );
        append(&mut b, 2, &[(5, 7, MessageKind::Text)]);
        store.commit(b).unwrap();
        assert_eq!(n, 3);
        // 8's own message 11 is above the cursor 0, below its floor: looked at one by one.
        assert_eq!(store.count_unread(1, 0, 8, 11, n, 999).unwrap(), 2);
        assert_eq!(store.count_unread(1, 10, 8, 11, n, 999).unwrap(), 1);
        // At or above the floor: two seqs, whatever lies between.
        assert_eq!(store.count_unread(1, 11, 8, 11, n, 999).unwrap(), 1);
        assert_eq!(store.count_unread(1, 12, 8, 0, n, 999).unwrap(), 1);
        assert_eq!(store.count_unread(1, 0, 9, 0, n, 999).unwrap(), 3);
        assert_eq!(store.count_unread(1, 5, 9, 0, n, 999).unwrap(), 3);
        assert_eq!(store.count_unread(1, 0, 9, 0, n, 2).unwrap(), 2);
        assert_eq!(store.count_unread(1, 0, 8, 11, n, 1).unwrap(), 1);
        assert_eq!(store.count_unread(1, 13, 9, 0, n, 999).unwrap(), 0);
        assert_eq!(store.count_unread(1, u64::MAX, 9, 0, n, 999).unwrap(), 0);
    }

    #[test]
    fn count_unread_reads_one_message_value_whatever_the_count() {
        // Every message but the one at the cursor unreadable: the count still works, so it
        // read no other (up to 16 KiB of body each); from cursor 0 it reads none.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        let mut b = store.batch();
        let n = append(&mut b, 1, &[(1, 7, MessageKind::Text); 1]);
        store.commit(b).unwrap();
        let mut b = store.batch();
        let mut countable = n;
        for id in 2..=5 {
            countable += 1;
            b.put_message(
                1,
                id,
                &MessageRecord {
                    seq: countable,
                    ..message(7, MessageKind::Text)
                },
            );
        }
        store.commit(b).unwrap();
        let mut b = store.batch();
        for id in [1, 3, 4, 5] {
            b.put(CF_MESSAGES, &keys::message(1, id), b"not a message record");
        }
        store.commit(b).unwrap();
        assert_eq!(store.count_unread(1, 2, 8, 0, countable, 999).unwrap(), 3);
        let mut b = store.batch();
        b.put(CF_MESSAGES, &keys::message(1, 2), b"not a message record");
        store.commit(b).unwrap();
        assert_eq!(store.count_unread(1, 0, 8, 0, countable, 999).unwrap(), 5);
    }

    #[test]
    fn a_store_written_before_seq_is_numbered_at_open_and_its_unread_family_dropped() {
        // The old code's layout, byte for byte: V1 messages (no seq), thread records without
        // `countable`, an `unread` family with its rows and its marker.
        let dir = tempfile::tempdir().unwrap();
        let thread_rec = ThreadRecord {
            name: "g".into(),
            last_msg_id: 5,
            member_count: 2,
            ..Default::default()
        };
        {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            opts.create_missing_column_families(true);
            let mut names = ALL_CFS.to_vec();
            names.push(CF_UNREAD_RETIRED);
            let db = DB::open_cf(&opts, dir.path(), &names).unwrap();
            let cf = |n: &str| db.cf_handle(n).unwrap();
            let v1 = |sender: u64, kind: MessageKind| {
                let mut buf = bytes::BytesMut::from(&[1u8][..]);
                message(sender, kind).put(&mut buf);
                buf
            };
            // Read cursors from before SEND moved its sender's: 8 read only message 1.
            let messages = [
                (1, 7, MessageKind::Text),
                (2, 8, MessageKind::Text),
                (3, 7, MessageKind::Text),
                (4, 7, MessageKind::System),
                (5, 8, MessageKind::Text),
            ];
            for (id, sender, kind) in messages {
                db.put_cf(cf(CF_MESSAGES), keys::message(4, id), v1(sender, kind))
                    .unwrap();
                if kind != MessageKind::System {
                    db.put_cf(
                        cf(CF_UNREAD_RETIRED),
                        keys::message(4, id),
                        sender.to_be_bytes(),
                    )
                    .unwrap();
                }
            }
            db.put_cf(
                cf(CF_MESSAGES),
                keys::message(6, 1),
                v1(9, MessageKind::Text),
            )
            .unwrap();
            let t = thread_rec.encode();
            db.put_cf(cf(CF_THREADS), keys::id(4), &t[..t.len() - 8])
                .unwrap();
            for (user, read) in [(7, 0), (8, 1)] {
                let m = MemberRecord {
                    read,
                    ..Default::default()
                };
                db.put_cf(cf(CF_MEMBERS), keys::pair(4, user), m.encode())
                    .unwrap();
            }
            db.put_cf(cf(CF_META), META_UNREAD_INDEXED_RETIRED, [1])
                .unwrap();
        }
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        let names = DB::list_cf(&Options::default(), dir.path()).unwrap();
        assert!(!names.iter().any(|n| n == CF_UNREAD_RETIRED), "{names:?}");
        assert!(store
            .get(CF_META, META_UNREAD_INDEXED_RETIRED)
            .unwrap()
            .is_none());
        let rec = store.thread(4).unwrap().unwrap();
        assert_eq!(
            rec,
            ThreadRecord {
                countable: 4,
                ..thread_rec
            }
        );
        let seqs: Vec<u64> = (1..=5)
            .map(|id| store.message(4, id).unwrap().unwrap().seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 3, 4]);
        assert_eq!(
            store.message(4, 2).unwrap().unwrap(),
            MessageRecord {
                seq: 2,
                ..message(8, MessageKind::Text)
            }
        );
        assert_eq!(store.message(6, 1).unwrap().unwrap().seq, 1);
        // What the `unread` index counted: others' messages above the cursor, not system ones.
        let members: HashMap<u64, MemberRecord> = store.members(4).unwrap().into_iter().collect();
        assert_eq!((members[&7].own_floor, members[&8].own_floor), (3, 5));
        let count = |user: u64, after: u64| {
            store
                .count_unread(4, after, user, members[&user].own_floor, rec.countable, 999)
                .unwrap()
        };
        assert_eq!((count(7, 0), count(8, 1)), (2, 1));
        assert_eq!((count(7, 3), count(8, 3)), (1, 0));
        drop(store);
        // Opened again: nothing left to do, same answers.
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        assert_eq!(store.message(4, 5).unwrap().unwrap().seq, 4);
    }

    #[test]
    fn a_store_written_before_the_hide_mark_gets_it_at_open_from_its_members_hidden_states() {
        let dir = tempfile::tempdir().unwrap();
        let rec = |hidden_upto| ThreadRecord {
            last_msg_id: 50,
            member_count: 3,
            hidden_upto,
            ..Default::default()
        };
        let state = |hidden, hidden_upto, left| PrivateState {
            hidden,
            hidden_upto,
            left,
            ..Default::default()
        };
        {
            // What a server before the mark wrote: hidden states, no mark on the threads.
            let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
            let mut b = store.batch();
            for t in [1, 2, 3, 4] {
                b.put_thread(t, &rec(0));
            }
            b.put_thread(5, &rec(40));
            // Thread 1: two members hid it, at 30 and 42; the highest is its mark.
            b.put_private_state(7, 1, &state(true, 30, false));
            b.put_private_state(8, 1, &state(true, 42, false));
            b.put_private_state(9, 1, &state(false, 0, false));
            // Thread 2: shown again (hidden false) and a tombstone: no mark.
            b.put_private_state(7, 2, &state(false, 0, false));
            b.put_private_state(8, 2, &state(true, 20, true));
            // Thread 6: no record (a membership without its thread is skipped, not an error).
            b.put_private_state(7, 6, &state(true, 10, false));
            // Thread 5: a higher mark already; never lowered.
            b.put_private_state(7, 5, &state(true, 12, false));
            b.delete(CF_META, META_HIDE_MARKS);
            store.commit(b).unwrap();
        }
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        let marks: Vec<u64> = (1..=5)
            .map(|t| store.thread(t).unwrap().unwrap().hidden_upto)
            .collect();
        assert_eq!(marks, [42, 0, 0, 0, 40]);
        assert!(store.thread(6).unwrap().is_none());
        assert!(store.get(CF_META, META_HIDE_MARKS).unwrap().is_some());

        // Done once: a mark dropped afterwards is not put back at the next open.
        let mut b = store.batch();
        b.put_thread(1, &rec(0));
        store.commit(b).unwrap();
        drop(store);
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        assert_eq!(store.thread(1).unwrap().unwrap().hidden_upto, 0);
    }
}
