//! The encrypted transport: a Noise handshake, then authenticated records. Sans-IO.
//!
//! Served by default: the server encrypts every client connection unless it runs with
//! `--insecure-plaintext`, and the one client [`Session`](crate::Session) speaks it when its
//! config asks (`protocol/NOISE.md` is the specification; PROTOCOL.md section 1.1 links it).
//!
//! Like the frame codec, this module does no I/O and reads no clock: handshake messages and
//! records go in and out as bytes in caller-owned buffers. It does draw randomness (a fresh
//! ephemeral key per handshake, and [`Keypair::generate`]) from the operating system.
//!
//! # Handshake
//!
//! Two Noise patterns, both `25519_ChaChaPoly_BLAKE2s`, with the prologue [`PROLOGUE`]:
//!
//! - **XX** for a client that does not know the server's static key yet (or wants to learn it
//!   while still checking a pin): three messages, 1.5 round trips.
//! - **IK** for a client that has the server's key pinned: two messages, one round trip, so a
//!   reconnecting client waits one round trip less (the server's CPU per handshake is about the
//!   same; `protocol/NOISE.md` has the figures).
//!
//! ```text
//!  XX  client                                            server
//!      | len | 0x01 | e                              -->  |          message 1 (35 bytes)
//!      |  <--  len | e, ee, s, es                         |          message 2 (98 bytes)
//!      | len | s, se                                 -->  |          message 3 (66 bytes)
//!      |  client checks the server's s against its pin before sending message 3
//!
//!  IK  client (knows server key s)                       server
//!      | len | 0x02 | e, es, s, ss                   -->  |          message 1 (99 bytes)
//!      |  <--  len | e, ee, se                            |          message 2 (50 bytes)
//!      |  <--  0x0001 | 0x01   instead, if the server cannot decrypt message 1:
//!      |                       "the key you pinned is not mine" (REJECT, 3 bytes)
//! ```
//!
//! Every handshake message is framed with a 2-byte big-endian length that counts the bytes after
//! it; the client's first message starts with a pattern byte ([`Pattern`]) so the server knows
//! which handshake to run. A length of 0 is never valid, which is how a plaintext Courier frame
//! (whose 4-byte length starts `00 00`) is recognised and refused with
//! [`Error::PlaintextPeer`]. Lengths over [`MAX_HANDSHAKE_MSG_LEN`] are refused before the body
//! is buffered. Handshake payloads are empty: Courier authenticates users with `LOGIN`/`RESUME`
//! frames inside the encrypted channel.
//!
//! # Records
//!
//! After the handshake each side keeps only a [`Transport`]: the two transport keys from the
//! Noise `Split()` and two nonce counters (80 bytes). Each record is one Noise transport message
//! (ChaCha20-Poly1305, 96-bit nonce = 4 zero bytes + the counter little-endian, empty associated
//! data), framed with the same 2-byte length:
//!
//! ```text
//!  0        2                                      2+len-16        2+len
//! +--------+--------------------------------------+---------------+
//! |  len   |  ciphertext (len - 16 bytes)         |  tag (16)     |
//! | u16 BE |  = plaintext XOR ChaCha20 keystream  |  Poly1305     |
//! +--------+--------------------------------------+---------------+
//! ```
//!
//! `len` (16..=65535) is checked against the reader's limit before any of the body is buffered.
//! The plaintext of consecutive records is one byte stream carrying ordinary Courier frames, so a
//! frame may span records and a record may hold many frames; the frame codec's own length check
//! still applies to the decrypted stream. Nonces are implicit counters: a dropped, replayed,
//! reordered or altered record fails authentication ([`Error::RecordAuth`]) and the connection
//! must be closed.
//!
//! # Keys
//!
//! X25519 keys; a public key is written as 64 lowercase hex digits ([`PublicKey`]'s `Display`
//! and `FromStr`). A key pair is stored as a small text file ([`Keypair::to_file_text`]).
//!
//! `protocol/noise-vectors.json` holds the exact bytes of both handshakes and of the first
//! records from fixed keys.

mod handshake;
mod keys;
mod record;
#[cfg(test)]
mod vectors;

pub use handshake::{Established, Handshake, Pattern, REJECT_KEY_MISMATCH};
pub use keys::{Keypair, PublicKey, KEY_LEN};
pub use record::{Transport, MAX_RECORD_LEN, MAX_RECORD_PLAINTEXT, TAG_LEN};

/// Bytes of the length prefix of every handshake message and every record.
pub const LEN_BYTES: usize = 2;
/// The longest handshake message body accepted; Courier's are at most 97 bytes.
pub const MAX_HANDSHAKE_MSG_LEN: usize = 256;
/// Mixed into both handshakes: binds them to Courier's wire protocol version 1.
pub const PROLOGUE: &[u8] = b"courier/1";
/// The Noise protocol name of the first-contact handshake.
pub const NOISE_XX: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// The Noise protocol name of the pinned-key handshake.
pub const NOISE_IK: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";

/// Why the encrypted transport cannot go on. Every variant is fatal for the connection: send
/// whatever the handshake wrote to its output buffer, then close.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum Error {
    #[error(
        "the server's key is not the one pinned (pinned {pinned}, {}): either the server was \
         re-keyed or this is not your server; do not connect. If the operator confirms a new \
         key (`courier keys show` on the server), pin that key instead",
        match presented { Some(key) => format!("server presented {key}"), None => "the server could not decrypt a handshake made for the pinned key".to_string() }
    )]
    ServerKeyMismatch {
        pinned: PublicKey,
        /// The key the server proved it holds (XX), or `None` when it refused an IK handshake.
        presented: Option<PublicKey>,
    },
    #[error(
        "a client's IK handshake could not be decrypted with this server's key: the client has \
         another key pinned (an old key of this server, or another server's); it was told so"
    )]
    ClientPinnedOtherKey,
    #[error(
        "the peer sent a plaintext Courier frame where a Noise handshake was expected: this \
         server requires the encrypted transport; configure the client with the server's key \
         (or run both sides with --insecure-plaintext for local benchmarks only)"
    )]
    PlaintextPeer,
    #[error(
        "unknown handshake pattern byte 0x{0:02x}: the peer speaks another protocol or version"
    )]
    UnknownPattern(u8),
    #[error(
        "handshake message of {len} bytes is outside 1..={max}: the peer is not speaking \
         Courier's Noise handshake"
    )]
    HandshakeMsgLen { len: usize, max: usize },
    #[error("the Noise handshake failed ({0}): the peer is not speaking Courier's handshake, or the bytes were altered in transit")]
    Handshake(snow::Error),
    #[error("the handshake is already over; use the Transport it returned")]
    HandshakeDone,
    #[error(
        "encrypted record of {len} bytes exceeds the limit of {max}: the peer is misbehaving; \
         close the connection"
    )]
    RecordTooLarge { len: usize, max: usize },
    #[error("encrypted record of {len} bytes cannot hold the 16-byte tag; close the connection")]
    RecordTooShort { len: usize },
    #[error(
        "encrypted record failed authentication (altered, replayed, reordered or dropped in \
         transit); close the connection"
    )]
    RecordAuth,
    #[error("the connection used all 2^64-1 record nonces; reconnect")]
    NonceExhausted,
    #[error("{what} must be {expected} hex digits, got {got} characters")]
    KeyLength {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{what} is not hexadecimal (digits 0-9 and a-f only)")]
    KeyNotHex { what: &'static str },
    #[error("key file line {line}: {problem}; the file should hold `private = <64 hex>` and `public = <64 hex>`")]
    KeyFile { line: usize, problem: &'static str },
    #[error(
        "key file has no `{0} = ...` line; regenerate the key or restore the file from a backup"
    )]
    KeyFileMissing(&'static str),
    #[error(
        "key file's public key does not belong to its private key: the file is damaged; restore \
         it from a backup (clients pinned to the old public key would refuse a new one)"
    )]
    KeyFileMismatch,
    #[error("the operating system's random number generator failed: {0}")]
    Random(snow::Error),
}
