//! Chat: threads, groups, messages, receipts, sync, contacts, media.
//!
//! Each shard owns one [`Engine`]. Thread-scoped requests run on the thread's owner shard
//! ([`Engine::shard_for`]), so every change to a thread is serialised without a lock. A request
//! stages its writes in the round's batch and its answers in a pending list; [`Engine::commit`]
//! makes the round durable (group commit) and only then releases the answers as [`Effect`]s.

use std::sync::Arc;

use courier_protocol::Frame;

use crate::clock::Clock;
use crate::store::Store;

/// A connection anywhere in the process: its shard, its slab slot, and the slot's generation,
/// so that an answer never reaches a later connection that reused the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub shard: u16,
    pub slot: u32,
    pub gen: u32,
}

/// The authenticated sender of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub user: u64,
    pub device: u32,
    pub conn: ConnRef,
}

/// What the shard must send once a round is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// The answer to request `request_id` of connection `to`.
    Reply { to: ConnRef, request_id: u32, frame: Frame },
    /// `frame` for every online device of every user in `users`, except connection `except`.
    Push { users: Arc<[u64]>, except: Option<ConnRef>, frame: Frame },
}

/// Chat limits and policies.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    pub max_body: usize,
    pub max_group: usize,
    pub recall_window_us: u64,
    pub max_media: u64,
    pub media_chunk: u32,
    pub history_limit: u16,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            max_body: 16 * 1024,
            max_group: 1024,
            recall_window_us: 3_600_000_000,
            max_media: 16 * 1024 * 1024,
            media_chunk: 32 * 1024,
            history_limit: 500,
        }
    }
}

/// State shared by every shard's engine: created once at start.
pub struct Shared {
    pub store: Store,
    pub clock: Arc<Clock>,
    pub config: ChatConfig,
    pub shards: usize,
}

mod engine;
pub use engine::Engine;

impl Shared {
    pub fn new(store: Store, clock: Arc<Clock>, config: ChatConfig, shards: usize) -> Arc<Self> {
        Arc::new(Self { store, clock, config, shards })
    }
}
