//! Typed reads and writes over the column families of [`keys`](super::keys).
//!
//! Reads go straight to RocksDB (it is thread-safe; every shard reads). Writes are staged in a
//! [`Batch`] and applied with [`Store::commit`], one WAL write per batch.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

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

/// The one RocksDB of a server. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: DB,
    fsync: FsyncMode,
    users: IdAllocator,
    threads: IdAllocator,
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
        let store = Store {
            inner: Arc::new(Inner {
                db,
                fsync,
                users,
                threads,
            }),
        };
        store.index_unread()?;
        Ok(store)
    }

    /// Builds the `unread` index from `messages` once, for a store written before the index
    /// existed (one pass over every message), then records that it is complete. Interrupted,
    /// it starts over at the next open (its writes are idempotent).
    fn index_unread(&self) -> Result<(), Error> {
        if self.get(CF_META, META_UNREAD_INDEXED)?.is_some() {
            return Ok(());
        }
        let mut b = self.batch();
        self.scan(CF_MESSAGES, &[], &[], false, |k, v| {
            let (sender, kind) = MessageRecord::peek_sender_kind(v)?;
            if kind != courier_protocol::MessageKind::System {
                b.put(CF_UNREAD, k, &sender.to_be_bytes());
            }
            if b.len() >= 10_000 {
                self.commit(std::mem::replace(&mut b, self.batch()))?;
            }
            Ok(true)
        })?;
        b.put(CF_META, META_UNREAD_INDEXED, &[1]);
        self.commit(b)
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
        self.inner.db.write_opt(batch.batch, &wo)?;
        Ok(())
    }

    /// Flushes and syncs the WAL: used at shutdown.
    pub fn sync(&self) -> Result<(), Error> {
        self.inner.db.flush_wal(true)?;
        Ok(())
    }

    // ---- ids ----

    pub fn next_user_id(&self) -> Result<u64, Error> {
        self.inner.users.next(&self.inner.db)
    }

    pub fn next_thread_id(&self) -> Result<u64, Error> {
        self.inner.threads.next(&self.inner.db)
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

    /// Creates a user; [`Error::HandleTaken`] when the handle exists. Serialised by a lock so
    /// two shards cannot both claim one handle.
    pub fn create_user(&self, handle: &str, password_hash: &str, now: u64) -> Result<u64, Error> {
        static CREATE: Mutex<()> = Mutex::new(());
        let _guard = CREATE.lock();
        if self.user_id_by_handle(handle)?.is_some() {
            return Err(Error::HandleTaken);
        }
        let id = self.next_user_id()?;
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

    /// Counts messages of `thread` newer than `after` not sent by `reader` and not system
    /// messages, stopping at `cap`. Reads the `unread` index (16-byte keys, 8-byte senders),
    /// never a message: a thread of large unread messages costs no more than one of small.
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
        self.scan(CF_UNREAD, &lower, &upper, false, |_, v| {
            let sender: [u8; 8] = v.try_into().map_err(|_| Error::CorruptValue {
                record: "unread sender",
            })?;
            if u64::from_be_bytes(sender) != reader {
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

    /// Appends the bytes `from..end` of `media` to `out`, reading only the chunks that hold
    /// them: one seek to the chunk that starts at or before `from` (chunks are stored in order,
    /// keyed by their start offset), then forward until `end`. Stops early at a gap.
    pub fn media_range(
        &self,
        media: &[u8; MEDIA_ID],
        from: u64,
        end: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        if from >= end {
            return Ok(());
        }
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(keys::media_chunk(media, 0).to_vec());
        ro.set_iterate_upper_bound(keys::media_chunk(media, u64::MAX).to_vec());
        let mut it = self.inner.db.raw_iterator_cf_opt(self.cf(CF_MEDIA), ro);
        it.seek_for_prev(keys::media_chunk(media, from));
        if !it.valid() {
            // Nothing starts at or before `from`: start at the first chunk after it.
            it.seek(keys::media_chunk(media, from));
        }
        let mut at = from;
        while it.valid() && at < end {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            let off = keys::parse_media_chunk(k)?.1;
            let chunk_end = off + v.len() as u64;
            if off > at {
                break;
            }
            if chunk_end > at {
                let to = end.min(chunk_end);
                out.extend_from_slice(&v[(at - off) as usize..(to - off) as usize]);
                at = to;
            }
            it.next();
        }
        Ok(it.status()?)
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

    /// Stores a message, and indexes it in `unread` unless it is a system message.
    pub fn put_message(&mut self, thread: u64, msg: u64, rec: &MessageRecord) {
        let key = keys::message(thread, msg);
        self.put(CF_MESSAGES, &key, &rec.encode());
        if rec.kind != courier_protocol::MessageKind::System {
            self.put(CF_UNREAD, &key, &rec.sender.to_be_bytes());
        }
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

    fn next(&self, db: &DB) -> Result<u64, Error> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut leased = self.leased_to.lock();
        if id >= *leased {
            let end = id + ID_LEASE;
            let cf = db
                .cf_handle(CF_META)
                .expect("column family created at open");
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.put_cf_opt(cf, self.key, end.to_be_bytes(), &wo)?;
            *leased = end;
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_protocol::MessageKind;

    fn message(sender: u64, kind: MessageKind) -> MessageRecord {
        MessageRecord {
            sender,
            kind,
            body: bytes::Bytes::from_static(b"body"),
            ..Default::default()
        }
    }

    #[test]
    fn unread_counts_others_messages_but_not_system_ones_or_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        let mut b = store.batch();
        b.put_message(1, 10, &message(7, MessageKind::Text));
        b.put_message(1, 11, &message(8, MessageKind::Text));
        b.put_message(1, 12, &message(7, MessageKind::System));
        b.put_message(1, 13, &message(7, MessageKind::Media));
        b.put_message(2, 5, &message(7, MessageKind::Text));
        store.commit(b).unwrap();
        assert_eq!(store.count_unread(1, 0, 8, 999).unwrap(), 2);
        assert_eq!(store.count_unread(1, 10, 8, 999).unwrap(), 1);
        assert_eq!(store.count_unread(1, 0, 9, 999).unwrap(), 3);
        assert_eq!(store.count_unread(1, 0, 9, 2).unwrap(), 2);
        assert_eq!(store.count_unread(1, 13, 9, 999).unwrap(), 0);
    }

    #[test]
    fn a_store_from_before_the_unread_index_is_indexed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
            let mut b = store.batch();
            for id in 1..=3 {
                b.put_message(4, id, &message(7, MessageKind::Text));
            }
            b.put_message(4, 4, &message(7, MessageKind::System));
            // As an older version left it: messages, no index, no marker.
            for id in 1..=3 {
                b.delete(CF_UNREAD, &keys::message(4, id));
            }
            b.delete(CF_META, META_UNREAD_INDEXED);
            store.commit(b).unwrap();
            assert_eq!(store.count_unread(4, 0, 8, 999).unwrap(), 0);
        }
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        assert_eq!(store.count_unread(4, 0, 8, 999).unwrap(), 3);
    }

    #[test]
    fn count_unread_reads_no_message_values() {
        // Before: the count read every unread message's value (up to 16 KiB of body each) to
        // learn its sender and kind; with the values made unreadable it failed.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        let mut b = store.batch();
        for id in 1..=5 {
            b.put_message(1, id, &message(7, MessageKind::Text));
        }
        store.commit(b).unwrap();
        let mut b = store.batch();
        for id in 1..=5 {
            b.put(CF_MESSAGES, &keys::message(1, id), b"not a message record");
        }
        store.commit(b).unwrap();
        assert_eq!(store.count_unread(1, 0, 8, 999).unwrap(), 5);
        assert_eq!(store.count_unread(1, 2, 8, 999).unwrap(), 3);
    }
}
