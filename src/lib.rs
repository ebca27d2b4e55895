//! Courier: a chat push server. See ARCHITECTURE.md for the one-page picture.

pub mod admin;
pub mod caller;
pub mod chat;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod directory;
pub mod hash;
pub mod keys;
pub mod media;
pub mod metrics;
pub mod push;
pub mod server;
pub mod session;
pub mod shard;
pub mod store;
