//! Courier's wire protocol, version 1: frames, a sans-IO codec and a sans-IO client session.
//!
//! This crate does no I/O and reads no clock. [`encode`] appends a frame to a caller-owned
//! buffer; [`Decoder::decode`] takes whole frames off the front of one. `protocol/PROTOCOL.md`
//! is the specification; `protocol/vectors.json` holds the exact bytes of every frame type.
//! [`session::Session`] is the client side of a connection (handshake, request ids, reply
//! matching, heartbeat, close) for every client to drive, in the shape of quinn-proto:
//! `handle_*` inputs with the time passed in, `poll_*` outputs.
//!
//! ```text
//!  0               4       5               9
//! +---------------+-------+---------------+--------------------------+
//! |  len (u32 BE) | type  | request id    | body (len - 5 bytes)     |
//! +---------------+-------+---------------+--------------------------+
//! ```

mod codec;
mod error;
mod frame;
pub mod noise;
pub mod peer;
pub mod placement;
pub mod session;
pub mod wire;

pub use codec::{
    decode_one, encode, peek_len, Decoder, Envelope, DEFAULT_MAX_FRAME_LEN, HEADER_BYTES,
    LEN_BYTES, MAX_FRAME_LEN,
};
pub use error::{retry_after_secs, retry_hint, Error, ErrorCode};
pub use frame::*;
pub use session::{Session, SessionConfig, SessionError};

/// The protocol version this crate speaks, sent in `HELLO` and `WELCOME`.
pub const VERSION: u16 = 1;
