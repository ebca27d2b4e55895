//! A client for the Courier chat server, protocol v1, in two styles on one protocol session:
//! the blocking [`Client`] and, with the `tokio` feature, `AsyncClient` (the same methods,
//! `async`). Both log in with a password or a saved token, reconnect with backoff, resume and
//! sync what was missed, and deliver pushes as [`Event`]s, each message once.
//!
//! ```no_run
//! use courier_client::{Client, ClientConfig, Event};
//!
//! # fn main() -> Result<(), courier_client::Error> {
//! let client = Client::connect("127.0.0.1:7878", ClientConfig::reconnecting())?;
//! client.login("alice", "correct horse")?;
//! let bob = client.lookup_user("bob")?;
//! let thread = client.open_direct(bob.id)?;
//! client.send_text(thread.id, "hello")?;
//! for event in client.events() {
//!     if let Event::Message(m) = event {
//!         println!("{}: {}", m.sender, String::from_utf8_lossy(&m.body));
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Features: `tokio` (off by default) adds `AsyncClient`; `cli` (on by default) builds the
//! `courier-cli` binary and is all that needs clap, serde, serde_json, toml and hex, so a
//! program using only the library depends on this crate with `default-features = false`.
//!
//! Threads of the blocking client: the caller's threads do requests (blocking until the reply
//! with the same request id arrives); one reader thread per connection feeds the bytes to the
//! connection's [`protocol::Session`] and routes the replies and pushes it gives back; one
//! heartbeat thread per connection sleeps until the session's `poll_timeout`, then lets it send
//! `PING` (every `heartbeat_secs` from `WELCOME`) or give up on a server silent for three
//! intervals. Reconnecting runs on the reader thread of the connection that dropped. The async
//! client runs each connection as one task instead (see `AsyncClient`). Everything else, from
//! how each request is built and its reply decoded to what a dropped connection means, is one
//! implementation both use.

mod api;
#[cfg(feature = "tokio")]
mod async_client;
mod backoff;
mod client;
mod config;
mod connection;
mod dedupe;
mod error;
mod event;
mod shared;
mod state;
mod sync;
mod ticks;

pub use api::new_client_msg_id;
#[cfg(feature = "tokio")]
pub use async_client::AsyncClient;
pub use backoff::{Backoff, BackoffPolicy};
pub use client::Client;
pub use config::{ClientConfig, DEFAULT_MAX_HELD_PUSHES, MAX_CATCH_UP_ROUNDS};
pub use dedupe::{Dedupe, MAX_THREADS as DEDUPE_MAX_THREADS, RECENT_PER_THREAD};
pub use error::{Error, Result};
pub use event::{Event, Events};
pub use sync::SyncResult;
pub use ticks::{apply_receipt, apply_sent, tick, Tick};

/// The wire protocol this client speaks, re-exported so users need not depend on it.
pub use courier_protocol as protocol;
pub use courier_protocol::{
    AuthOk, Direction, ErrorCode, Message, MessageKind, Presence, ReceiptKind, Sent, Thread,
    ThreadSummary, UserInfo,
};

#[cfg(test)]
mod client_tests;
