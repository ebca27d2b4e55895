//! Typed reads and writes over the column families of [`keys`](super::keys).
//!
//! Reads go straight to RocksDB (it is thread-safe; every shard reads). Writes are staged in a
//! [`Batch`] and applied with [`Store::commit`], one WAL write per batch.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, Options, ReadOptions,
    WriteBatch, WriteOptions, DB,
};

use super::keys::{self, *};
use super::records::*;
use super::{Error, FsyncMode};

/// How many ids an allocator reserves per durable write of its counter.
const ID_LEASE: u64 = 1024;
/// Ids [`Store::create_user`] skips before giving up: with `n` nodes on the ring about one id
/// in `n` is homed here, so this is only reached if this node owns (almost) nothing.
const MAX_ID_TRIES: u32 = 100_000;

/// The one RocksDB of a server. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: DB,
    /// The data directory, for the free-space check.
    dir: std::path::PathBuf,
    /// The free-space check is on (always, except in fault-injection tests).
    space_check: AtomicBool,
    /// Fault injection: the disk counts as full while this file exists.
    full_flag: std::sync::OnceLock<std::path::PathBuf>,
    fsync: FsyncMode,
    users: IdAllocator,
    threads: IdAllocator,
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
}

impl Store {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: &Path, fsync: FsyncMode) -> Result<Store, Error> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.increase_parallelism(2);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        let cache = Cache::new_lru_cache(128 << 20);
        let cfs = ALL_CFS.iter().map(|name| {
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_bloom_filter(10.0, false);
            let mut cf = Options::default();
            cf.set_block_based_table_factory(&table);
            if *name == CF_MESSAGES || *name == CF_MEDIA {
                cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
            }
            ColumnFamilyDescriptor::new(*name, cf)
        });
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|source| Error::Open {
            path: dir.display().to_string(),
            source,
        })?;
        let users = IdAllocator::load(&db, META_NEXT_USER, 1)?;
        let threads = IdAllocator::load(&db, META_NEXT_THREAD, 1)?;
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                dir: dir.to_owned(),
                space_check: AtomicBool::new(true),
                full_flag: std::sync::OnceLock::new(),
                fsync,
                users,
                threads,
                health: Arc::default(),
            }),
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

    /// Flushes and syncs the WAL: used at shutdown.
    pub fn sync(&self) -> Result<(), Error> {
        self.inner.db.flush_wal(true)?;
        Ok(())
    }

    // ---- ids ----

    pub fn next_user_id(&self) -> Result<u64, Error> {
        self.inner.users.next(self)
    }

    pub fn next_thread_id(&self) -> Result<u64, Error> {
        self.inner.threads.next(self)
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

    pub fn user_id_by_handle(&self, handle: &str) -> Result<Option<u64>, Error> {
        self.get_u64(CF_HANDLES, handle.as_bytes())
    }

    /// Creates a user with the first free id that `accept` takes (in a cluster: an id homed on
    /// this node, so the new account never needs a redirect); [`Error::HandleTaken`] when the
    /// handle exists. Serialised by a lock so two shards cannot both claim one handle.
    pub fn create_user(
        &self,
        handle: &str,
        password_hash: &str,
        now: u64,
        accept: impl Fn(u64) -> bool,
    ) -> Result<u64, Error> {
        static CREATE: Mutex<()> = Mutex::new(());
        let _guard = CREATE.lock();
        if self.user_id_by_handle(handle)?.is_some() {
            return Err(Error::HandleTaken);
        }
        let mut tries = 0;
        let id = loop {
            let id = self.next_user_id()?;
            if accept(id) {
                break id;
            }
            tries += 1;
            if tries == MAX_ID_TRIES {
                return Err(Error::NoAcceptableId { tries });
            }
        };
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

    pub fn token(&self, digest: &[u8; TOKEN_DIGEST]) -> Result<Option<TokenRecord>, Error> {
        self.get_record(CF_TOKENS, digest)
    }

    pub fn user_tokens(&self, user: u64) -> Result<Vec<[u8; TOKEN_DIGEST]>, Error> {
        let mut out = Vec::new();
        self.scan_prefix(CF_USER_TOKENS, &keys::id(user), |k, _| {
            out.push(keys::parse_user_token(k)?.1);
            Ok(true)
        })?;
        Ok(out)
    }

    /// The stable device number of `name` for `user`, assigning the next one on first use.
    pub fn device_id(&self, user: u64, name: &str) -> Result<u32, Error> {
        static ASSIGN: Mutex<()> = Mutex::new(());
        let key = keys::device(user, name);
        let _guard = ASSIGN.lock();
        if let Some(v) = self.get(CF_DEVICES, &key)? {
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
        let id = count + 1;
        let mut b = self.batch();
        b.put(CF_DEVICES, &key, &id.to_be_bytes());
        self.commit(b)?;
        Ok(id)
    }

    pub fn last_seen(&self, user: u64) -> Result<Option<u64>, Error> {
        self.get_u64(CF_LAST_SEEN, &keys::id(user))
    }

    pub fn is_contact(&self, user: u64, other: u64) -> Result<bool, Error> {
        Ok(self.get(CF_CONTACTS, &keys::pair(user, other))?.is_some())
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

    /// Every thread `user` belongs to, with the user's private state, by thread id.
    pub fn memberships(&self, user: u64) -> Result<Vec<(u64, PrivateState)>, Error> {
        let mut out = Vec::new();
        self.scan_prefix(CF_MEMBERSHIPS, &keys::id(user), |k, v| {
            out.push((
                keys::parse_pair(CF_MEMBERSHIPS, k)?.1,
                PrivateState::decode(v)?,
            ));
            Ok(true)
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
    /// `newest_first`), at most `limit`. Returns whether more remain.
    pub fn messages(
        &self,
        thread: u64,
        after: u64,
        before: u64,
        newest_first: bool,
        limit: usize,
        mut f: impl FnMut(u64, MessageRecord) -> Result<(), Error>,
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
            f(id, MessageRecord::decode(v)?)?;
            n += 1;
            Ok(true)
        })?;
        Ok(more)
    }

    /// Counts messages of `thread` newer than `after` not sent by `reader`, stopping at `cap`.
    pub fn count_unread(
        &self,
        thread: u64,
        after: u64,
        reader: u64,
        cap: u32,
    ) -> Result<u32, Error> {
        let mut n = 0u32;
        let lower = keys::message(thread, after.saturating_add(1));
        let upper = keys::prefix_end(&keys::id(thread));
        self.scan(CF_MESSAGES, &lower, &upper, false, |_, v| {
            let (sender, kind) = MessageRecord::peek_sender_kind(v)?;
            if sender != reader && kind != courier_protocol::MessageKind::System {
                n += 1;
            }
            Ok(n < cap)
        })?;
        Ok(n)
    }

    pub fn dedupe(
        &self,
        thread: u64,
        sender: u64,
        client_msg_id: u64,
    ) -> Result<Option<u64>, Error> {
        self.get_u64(CF_DEDUPE, &keys::triple(thread, sender, client_msg_id))
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

    // ---- media ----

    pub fn media_header(&self, media: &[u8; MEDIA_ID]) -> Result<Option<MediaHeader>, Error> {
        self.get_record(CF_MEDIA, &keys::media_chunk(media, u64::MAX))
    }

    /// Calls `f(offset, bytes)` for each stored chunk of `media` that overlaps `from..`.
    pub fn media_chunks(
        &self,
        media: &[u8; MEDIA_ID],
        mut f: impl FnMut(u64, &[u8]) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        let lower = keys::media_chunk(media, 0);
        let upper = keys::media_chunk(media, u64::MAX);
        self.scan(CF_MEDIA, &lower, &upper, false, |k, v| {
            f(keys::parse_media_chunk(k)?.1, v)
        })
    }

    /// An empty batch of staged writes.
    pub fn batch(&self) -> Batch {
        Batch {
            store: self.clone(),
            batch: WriteBatch::default(),
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

    fn delete(&mut self, cf: &str, key: &[u8]) {
        self.batch.delete_cf(self.store.cf(cf), key);
    }

    pub fn put_user(&mut self, user: u64, rec: &UserRecord) {
        self.put(CF_USERS, &keys::id(user), &rec.encode());
        self.put(CF_HANDLES, rec.handle.as_bytes(), &user.to_be_bytes());
    }

    pub fn put_token(&mut self, digest: &[u8; TOKEN_DIGEST], rec: &TokenRecord) {
        self.put(CF_TOKENS, digest, &rec.encode());
        self.put(CF_USER_TOKENS, &keys::user_token(rec.user, digest), &[]);
    }

    pub fn delete_token(&mut self, user: u64, digest: &[u8; TOKEN_DIGEST]) {
        self.delete(CF_TOKENS, digest);
        self.delete(CF_USER_TOKENS, &keys::user_token(user, digest));
    }

    pub fn put_device(&mut self, user: u64, name: &str, device: u32) {
        self.put(CF_DEVICES, &keys::device(user, name), &device.to_be_bytes());
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
        self.put(CF_THREADS, &keys::id(thread), &rec.encode());
    }

    pub fn put_direct(&mut self, a: u64, b: u64, thread: u64) {
        self.put(CF_DIRECT, &keys::direct(a, b), &thread.to_be_bytes());
    }

    pub fn put_member(&mut self, thread: u64, user: u64, rec: &MemberRecord) {
        self.put(CF_MEMBERS, &keys::pair(thread, user), &rec.encode());
    }

    pub fn delete_member(&mut self, thread: u64, user: u64) {
        self.delete(CF_MEMBERS, &keys::pair(thread, user));
        self.delete(CF_MEMBERSHIPS, &keys::pair(user, thread));
    }

    pub fn put_private_state(&mut self, user: u64, thread: u64, rec: &PrivateState) {
        self.put(CF_MEMBERSHIPS, &keys::pair(user, thread), &rec.encode());
    }

    pub fn put_message(&mut self, thread: u64, msg: u64, rec: &MessageRecord) {
        self.put(CF_MESSAGES, &keys::message(thread, msg), &rec.encode());
    }

    pub fn put_dedupe(&mut self, thread: u64, sender: u64, client_msg_id: u64, msg: u64) {
        self.put(
            CF_DEDUPE,
            &keys::triple(thread, sender, client_msg_id),
            &msg.to_be_bytes(),
        );
    }

    pub fn put_hidden(&mut self, user: u64, thread: u64, msg: u64) {
        self.put(CF_HIDDEN, &keys::triple(user, thread, msg), &[]);
    }

    pub fn put_media_chunk(&mut self, media: &[u8; MEDIA_ID], offset: u64, data: &[u8]) {
        self.put(CF_MEDIA, &keys::media_chunk(media, offset), data);
    }

    pub fn put_media_header(&mut self, media: &[u8; MEDIA_ID], rec: &MediaHeader) {
        self.put(CF_MEDIA, &keys::media_chunk(media, u64::MAX), &rec.encode());
    }

    /// Records that clock values up to `at` may be in use by shard `shard`: at start the clock
    /// resumes above the highest floor, so ids never repeat even if the wall clock went back.
    pub fn clock_floor(&mut self, shard: u16, at: u64) {
        let mut key = META_CLOCK_FLOOR.to_vec();
        key.extend_from_slice(&shard.to_be_bytes());
        self.put(CF_META, &key, &at.to_be_bytes());
    }
}

/// A counter persisted in leases: ids are unique across restarts without a write per id.
struct IdAllocator {
    key: &'static [u8],
    next: AtomicU64,
    leased_to: Mutex<u64>,
}

impl IdAllocator {
    fn load(db: &DB, key: &'static [u8], first: u64) -> Result<Self, Error> {
        let cf = db
            .cf_handle(CF_META)
            .expect("column family created at open");
        let start = match db.get_cf(cf, key)? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v[..].try_into().unwrap_or_default()),
            Some(_) => {
                return Err(Error::CorruptValue {
                    record: "id counter",
                })
            }
            None => first,
        };
        // Everything below the persisted lease end may have been handed out: start after it.
        Ok(Self {
            key,
            next: AtomicU64::new(start),
            leased_to: Mutex::new(start),
        })
    }

    fn next(&self, store: &Store) -> Result<u64, Error> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut leased = self.leased_to.lock();
        if id >= *leased {
            let end = id + ID_LEASE;
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            store.write(|| {
                store
                    .inner
                    .db
                    .put_cf_opt(store.cf(CF_META), self.key, end.to_be_bytes(), &wo)
            })?;
            *leased = end;
        }
        Ok(id)
    }
}
