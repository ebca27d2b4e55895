//! Courier: a chat push server. See ARCHITECTURE.md for the one-page picture.

pub mod chat;
pub mod clock;
pub mod session;
pub mod store;
