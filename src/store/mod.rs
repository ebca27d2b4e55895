//! Persistence in one local RocksDB: column families and keys in [`keys`], stored values in
//! [`records`], typed reads and writes in [`db`].

pub mod committer;
pub mod db;
pub mod keys;
pub mod records;

pub use db::{
    Batch, Store, StoreMemory, StoreOptions, Visit, BLOCK_CACHE_BYTES, MEMTABLE_BUDGET_BYTES,
};
pub use records::*;

/// How a commit is made durable before its acknowledgements go out. The command line and the
/// configuration file name it with `config::Fsync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncMode {
    /// Every request's writes are one WAL write and one fsync, before its ack.
    Always,
    /// Group commit: all writes of one event-loop round are one WAL write and one fsync,
    /// before any of that round's acks.
    #[default]
    Batch,
    /// The WAL is written (so a process crash loses nothing) but not synced (a power loss may).
    Never,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("RocksDB failed: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("cannot open the data directory {path}: {source}. Check that it exists and is writable, and that no other courier process uses it")]
    Open {
        path: String,
        source: rocksdb::Error,
    },
    #[error("a key of column family {cf} has {len} bytes, which no key of that family has: the data directory is corrupt")]
    CorruptKey { cf: &'static str, len: usize },
    #[error("a stored {record} cannot be decoded: the data directory is corrupt or from a newer version")]
    CorruptValue { record: &'static str },
    #[error("the handle is taken")]
    HandleTaken,
    #[error("the account already has {max} device names, the most it may have; log in with the name of a device it already uses")]
    TooManyDevices { max: u32 },
    #[error("the data directory's disk is nearly full ({free} bytes free, {need} needed): writes are refused until space is freed")]
    DiskFull { free: u64, need: u64 },
    #[error("the commit stage of a shard stopped (its writer thread is gone): the server is shutting down or failed; restart it")]
    CommitterStopped,
    #[error("the store was in use while it was being opened ({what} could not be dropped): restart the server")]
    Migration { what: &'static str },
    #[error("partition {partition} has no ids left (or is not a partition): the cluster has outgrown its id space")]
    IdsExhausted { partition: u16 },
}
