//! The encrypted transport (Noise): sans-IO; not yet served by the server.

mod keys;
mod record;

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
