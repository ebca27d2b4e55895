//! Chat: threads, groups, messages, receipts, sync, contacts, media.
//!
//! Each shard owns one [`Engine`]. Thread-scoped requests run on the thread's owner shard
//! ([`Engine::shard_for`]), so every change to a thread is serialised without a lock. A request
//! stages its writes in the round's batch and its answers in a pending list; [`Engine::commit`]
//! makes the round durable (group commit) and only then releases the answers as [`Effect`]s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use courier_protocol::Frame;
use xxhash_rust::xxh3::xxh3_64;

use crate::caller::ConnRef;
use crate::clock::Clock;
use crate::cluster::Router;
use crate::media::{BlobStore, FileBlobs};
use crate::push::{Gate, Pushers};
use crate::store::Store;

/// What the shard must send once a round is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The answer to request `request_id` of connection `to`.
    Reply {
        to: ConnRef,
        request_id: u32,
        frame: Frame,
    },
    /// `frame` for every online device of every user in `users`, except connection `except`.
    Push {
        users: Arc<[u64]>,
        except: Option<ConnRef>,
        frame: Frame,
        /// A message's push only, with a push gateway: the members homed on other nodes who
        /// did not mute the thread, sorted. Their homes get them in `PUSH_BATCH.notify` and
        /// queue a notification for those with no device online (`push::Gate`).
        notify: Option<Arc<[u64]>>,
    },
}

/// Chat limits and policies.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    pub max_body: usize,
    pub max_group: usize,
    pub recall_window_us: u64,
    /// Largest media upload, bytes.
    pub max_media: u64,
    /// Bytes of stored media plus uploads in progress one user may have.
    pub media_quota: u64,
    /// An upload with no chunk for this long (µs) is forgotten (its part is collected).
    pub upload_idle_us: u64,
    /// `MEDIA_UPLOAD.chunk_max`: a MEDIA_CHUNK carrying this much must fit `max_frame`.
    pub media_chunk: u32,
    pub history_limit: u16,
    /// The largest reply body the engine builds (kept under the frame limit clients accept).
    pub max_reply_bytes: usize,
    /// Threads kept in memory per shard before the cache is emptied.
    pub thread_cache: usize,
    /// How long a retried SEND answers the original SENT (see `dedupe`).
    pub dedupe_window_us: u64,
    /// Recent sends each shard remembers in memory (older ones are read from the store).
    pub recent_sends: usize,
    /// Contacts per user (CONTACTS carries them all, so it must fit the frame limit).
    pub max_contacts: usize,
    /// Delete-for-me entries per user and thread.
    pub max_deleted_per_thread: usize,
    /// Uploads in progress per user.
    pub max_uploads_per_user: usize,
    /// How long after sending a message its sender may edit it.
    pub edit_window_us: u64,
    /// Distinct reactions one message may carry (each user has one per message).
    pub max_reactions: usize,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            max_body: 16 * 1024,
            max_group: 1024,
            recall_window_us: 3_600_000_000,
            max_media: 100 << 20,
            media_quota: 1 << 30,
            upload_idle_us: 600_000_000,
            media_chunk: 32 * 1024,
            history_limit: 500,
            max_reply_bytes: 60 * 1024,
            thread_cache: 100_000,
            dedupe_window_us: 86_400_000_000,
            recent_sends: 65_536,
            max_contacts: 1000,
            max_deleted_per_thread: 1000,
            max_uploads_per_user: 8,
            edit_window_us: 86_400_000_000,
            max_reactions: 32,
        }
    }
}

/// State shared by every shard's engine: created once at start.
pub struct Shared {
    pub store: Store,
    /// Media bytes: files under `<data-dir>/media/`.
    pub blobs: Arc<dyn BlobStore>,
    pub clock: Arc<Clock>,
    pub config: ChatConfig,
    pub shards: usize,
    /// Push registrations (REGISTER_PUSH; removed with a device's token).
    pub pushers: Arc<Pushers>,
    /// Who gets a push notification: set at start only when a push gateway is configured
    /// (without one, no outbox row is ever written).
    push: OnceLock<Gate>,
    /// In a cluster: where users and threads live, and the nodes' ids (media bytes held by
    /// another node are recorded by that node's id). Unset on a single node.
    router: OnceLock<Router>,
    /// Per shard: a lower bound of every clock value the shard has handed out but not yet
    /// committed (`u64::MAX` when nothing is in flight). See [`Shared::watermark`].
    in_flight: Box<[Padded]>,
}

/// One atomic on its own cache line, so shards do not slow each other down.
#[repr(align(64))]
struct Padded(AtomicU64);

mod contacts;
mod dedupe;
mod edits;
mod engine;
mod groups;
mod limits;
mod media;
mod messages;
mod round;
mod sync;
mod threads;

pub use contacts::check_get_users;
pub use engine::Engine;
pub use media::{held_for_send, media_read, MediaRead, MEDIA_CHUNK_OVERHEAD};
pub use threads::list_limit;

impl Shared {
    pub fn new(store: Store, clock: Arc<Clock>, config: ChatConfig, shards: usize) -> Arc<Self> {
        let shards = shards.max(1);
        let in_flight = (0..shards)
            .map(|_| Padded(AtomicU64::new(u64::MAX)))
            .collect();
        let blobs = Arc::new(FileBlobs::new(store.dir().join("media")));
        let pushers = Arc::new(Pushers::new(store.clone()));
        Arc::new(Self {
            store,
            blobs,
            clock,
            config,
            shards,
            pushers,
            push: OnceLock::new(),
            router: OnceLock::new(),
            in_flight,
        })
    }

    /// Turns the push outbox on: from now on, messages for offline members with push
    /// registrations stage a notification in their own commit. Once; later calls are ignored.
    pub fn enable_push(&self, gate: Gate) {
        let _ = self.push.set(gate);
    }

    /// The push gate, if a gateway is configured.
    pub fn push(&self) -> Option<&Gate> {
        self.push.get()
    }

    /// Sets the cluster's placement (at start, in a cluster). Once; later calls are ignored.
    pub fn set_router(&self, router: Router) {
        let _ = self.router.set(router);
    }

    /// The id of cluster node `index`, if this node is in a cluster.
    pub fn node_id(&self, index: u16) -> Option<&str> {
        self.router.get().map(|r| r.node_id(index))
    }

    /// This node's index in the cluster (0 on a single node).
    pub fn local_node(&self) -> u16 {
        self.router.get().map_or(0, Router::local_index)
    }

    /// The sync watermark: every change with a clock value at or below it is committed and
    /// visible to readers. Sync hands it out as the next `since`, so nothing committed later
    /// can hide below it.
    ///
    /// Why it holds: a shard publishes `clock.last() + 1` in `in_flight` *before* it ticks
    /// the clock for its first change of a round, and clears it only after the commit. If
    /// this read of `in_flight` comes first, the clock read before it saw a value below any
    /// tick that shard makes later; otherwise the published bound is below that tick.
    pub fn watermark(&self) -> u64 {
        let now = self.clock.last();
        let low = self
            .in_flight
            .iter()
            .map(|p| p.0.load(Ordering::SeqCst))
            .min()
            .unwrap_or(u64::MAX);
        now.min(low.saturating_sub(1))
    }

    /// The shard that owns `thread`: all of the thread's changes run there, in order.
    pub fn thread_shard(&self, thread: u64) -> u16 {
        (xxh3_64(&thread.to_be_bytes()) % self.shards as u64) as u16
    }

    /// The shard that runs a user's own sets (contacts, uploads), so their caps are checked
    /// by one thread of execution.
    pub fn user_shard(&self, user: u64) -> u16 {
        (xxh3_64(&user.to_le_bytes()) % self.shards as u64) as u16
    }

    /// The shard that creates the direct thread of two users (so it is created once).
    pub fn pair_shard(&self, a: u64, b: u64) -> u16 {
        (xxh3_64(&crate::store::keys::direct(a, b)) % self.shards as u64) as u16
    }
}

#[cfg(test)]
mod tests;
