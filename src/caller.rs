//! Who a request comes from and which connection answers go to: the small types the chat
//! engine, the directory and the shards all name, kept apart so that none of them depends on
//! another for them.

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
