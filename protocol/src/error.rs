//! Decode errors, and the error codes carried by `ERROR_REPLY` frames.

/// Why bytes could not be decoded into a frame. Every variant is fatal for the connection: the
/// byte stream can no longer be trusted to be aligned on frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    FrameTooLarge { len: u32, max: u32 },
    #[error("frame length {len} is shorter than the 5-byte frame header")]
    FrameTooShort { len: u32 },
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    #[error("frame ends inside field {field}")]
    Truncated { field: &'static str },
    #[error("field {field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("field {field} has invalid value {value}")]
    InvalidValue { field: &'static str, value: u64 },
}

impl Error {
    /// The code a server answers this error with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::FrameTooLarge { .. } => ErrorCode::FrameTooLarge,
            Error::UnknownFrameType(_) => ErrorCode::UnknownFrame,
            Error::FrameTooShort { .. }
            | Error::Truncated { .. }
            | Error::InvalidUtf8 { .. }
            | Error::InvalidValue { .. } => ErrorCode::Malformed,
        }
    }
}

macro_rules! error_codes {
    ($( $(#[$meta:meta])* $name:ident = $code:literal, $closes:literal; )*) => {
        /// The `code` of an `ERROR_REPLY` frame.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum ErrorCode { $($(#[$meta])* $name = $code),* }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            pub fn from_u16(code: u16) -> Option<Self> {
                match code { $($code => Some(ErrorCode::$name),)* _ => None }
            }

            /// Whether the server closes the connection after sending this error.
            pub fn closes_connection(self) -> bool {
                match self { $(ErrorCode::$name => $closes),* }
            }

            /// The code's Rust name, e.g. `NotMember`; PROTOCOL.md spells it `NOT_MEMBER`.
            pub fn name(self) -> &'static str {
                match self { $(ErrorCode::$name => stringify!($name)),* }
            }
        }
    };
}

error_codes! {
    // Connection-level: the server closes after sending these.
    /// The bytes did not decode into a frame.
    Malformed = 1, true;
    UnknownFrame = 2, true;
    FrameTooLarge = 3, true;
    UnsupportedVersion = 4, true;
    /// The first frame was not `HELLO`, or `HELLO` came twice.
    HandshakeRequired = 5, true;
    /// Anything but `REGISTER`, `LOGIN`, `RESUME` or `PING` before authentication.
    NotAuthenticated = 6, true;
    HandshakeTimeout = 7, true;
    HeartbeatTimeout = 8, true;
    /// The client did not read its pushes fast enough; its output queue hit the limit.
    SlowConsumer = 9, true;
    /// Too many requests per second; the request was dropped, the connection stays.
    RateLimited = 10, false;
    /// The server is at its connection limit.
    ServerFull = 11, true;
    ShuttingDown = 12, true;
    AlreadyAuthenticated = 13, false;
    /// This device's token was revoked (logout, logout-all) while connected.
    SessionRevoked = 14, true;
    /// A plaintext client reached a server that requires the encrypted transport (PROTOCOL.md
    /// section 10); sent in plaintext, request id 0, then the server closes.
    EncryptionRequired = 15, true;
    // Accounts.
    HandleTaken = 20, false;
    BadCredentials = 21, false;
    InvalidToken = 22, false;
    /// Too many failed logins for this account or address; wait and retry.
    LoginThrottled = 23, false;
    /// A handle is 3 to 32 characters of a-z, 0-9, `_`, `.` or `-`.
    InvalidHandle = 24, false;
    /// A password is 8 to 256 bytes.
    WeakPassword = 25, false;
    /// The account has as many device names as it may have; log in with one it already uses.
    TooManyDevices = 26, false;
    // Chat.
    UnknownThread = 40, false;
    NotMember = 41, false;
    NotAdmin = 42, false;
    GroupFull = 43, false;
    BodyTooLarge = 44, false;
    UnknownUser = 45, false;
    NotContact = 46, false;
    RecallWindowExpired = 47, false;
    NotSender = 48, false;
    UnknownMessage = 49, false;
    InvalidArgument = 50, false;
    NotAGroup = 51, false;
    /// The caller has as many contacts as they may have; remove one first.
    TooManyContacts = 52, false;
    /// The caller deleted as many messages of this thread for themselves as they may.
    TooManyDeleted = 53, false;
    /// The message was recalled: it can no longer be edited, reacted to or replied to.
    MessageRecalled = 54, false;
    /// The edit window (24 hours by default) has passed; send a new message instead.
    EditWindowExpired = 55, false;
    /// A reaction is 1 to 32 bytes of UTF-8 without spaces or control characters.
    InvalidReaction = 56, false;
    /// The message has as many distinct reactions as it may; react with one already there.
    TooManyReactions = 57, false;
    // Media.
    UnknownMedia = 60, false;
    MediaTooLarge = 61, false;
    BadOffset = 62, false;
    /// The caller has as many uploads in progress as they may; commit or abandon one first.
    TooManyUploads = 63, false;
    /// The upload would take the caller over their media quota; free space or upload less.
    MediaQuotaExceeded = 64, false;
    /// The content's BLAKE3 hash is not the one announced at `MEDIA_BEGIN`; nothing was stored.
    MediaHashMismatch = 65, false;
    // Cluster and administration.
    Forbidden = 70, false;
    WrongNode = 71, true;
    /// A node of the cluster this request needs is down (or its link is saturated); nothing
    /// was done there; retry later.
    Unavailable = 72, false;
    // Push notifications.
    /// The device (10) or the user (20) has as many push registrations as it may; unregister
    /// one first (`UNREGISTER_PUSH`), or register the same pushkey again to replace it.
    TooManyPushers = 80, false;
    // Server.
    /// The server failed (storage error); nothing was stored, the request may be retried.
    Internal = 90, false;
}

/// The retry hint of an `ERROR_REPLY.message` (PROTOCOL.md section 8): a `LOGIN_THROTTLED`
/// message ends with `[retry_after_secs=N]`, `N` whole seconds as a decimal `u32`.
pub fn retry_hint(secs: u32) -> String {
    format!("[retry_after_secs={secs}]")
}

/// The seconds of the hint [`retry_hint`] put at the end of `message`, if it has one.
pub fn retry_after_secs(message: &str) -> Option<u32> {
    let (_, rest) = message.trim_end().rsplit_once("[retry_after_secs=")?;
    rest.strip_suffix(']')?.parse().ok()
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u16)
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::{Decoder, DEFAULT_MAX_FRAME_LEN};

    fn decode_hex(hex: &str) -> Result<Option<crate::Envelope>, Error> {
        let raw: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        Decoder::default().decode(&mut BytesMut::from(&raw[..]))
    }

    #[test]
    fn frame_too_large() {
        let err = decode_hex("00010001").unwrap_err();
        assert_eq!(
            err,
            Error::FrameTooLarge {
                len: 65_537,
                max: DEFAULT_MAX_FRAME_LEN
            }
        );
        assert_eq!(err.code(), ErrorCode::FrameTooLarge);
        assert_eq!(
            err.to_string(),
            "frame length 65537 exceeds the limit of 65536 bytes"
        );
    }

    #[test]
    fn frame_too_short() {
        let err = decode_hex("00000004").unwrap_err();
        assert_eq!(err, Error::FrameTooShort { len: 4 });
        assert_eq!(err.code(), ErrorCode::Malformed);
    }

    #[test]
    fn unknown_frame_type() {
        let err = decode_hex("00000005ff00000001").unwrap_err();
        assert_eq!(err, Error::UnknownFrameType(0xff));
        assert_eq!(err.code(), ErrorCode::UnknownFrame);
        assert_eq!(err.to_string(), "unknown frame type 0xff");
    }

    #[test]
    fn truncated() {
        // PING with a 4-byte body: the u64 nonce does not fit.
        let err = decode_hex("00000009070000000100000000").unwrap_err();
        assert_eq!(
            err,
            Error::Truncated {
                field: "Ping.nonce"
            }
        );
        assert_eq!(err.code(), ErrorCode::Malformed);
    }

    #[test]
    fn invalid_utf8() {
        let err = decode_hex("00000008330000000100018f").unwrap_err();
        assert_eq!(
            err,
            Error::InvalidUtf8 {
                field: "LookupUser.handle"
            }
        );
        assert_eq!(err.code(), ErrorCode::Malformed);
    }

    #[test]
    fn invalid_value() {
        let err = decode_hex("0000000e2700000001000000000000000502").unwrap_err();
        assert_eq!(
            err,
            Error::InvalidValue {
                field: "Typing.active",
                value: 2
            }
        );
        assert_eq!(err.code(), ErrorCode::Malformed);
        assert!(err.code().closes_connection());
    }

    #[test]
    fn error_codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            assert!(seen.insert(code as u16), "duplicate code {code}");
            assert_eq!(ErrorCode::from_u16(code as u16), Some(code));
        }
        let unknown = (0..=u16::MAX)
            .filter(|c| ErrorCode::from_u16(*c).is_none())
            .count();
        assert_eq!(unknown, 65_536 - ErrorCode::ALL.len());
    }

    #[test]
    fn exactly_the_documented_codes_close_the_connection() {
        let closing: Vec<u16> = ErrorCode::ALL
            .iter()
            .filter(|c| c.closes_connection())
            .map(|&c| c as u16)
            .collect();
        assert_eq!(closing, [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 14, 15, 71]);
    }

    #[test]
    fn unavailable_is_72_and_keeps_the_connection() {
        assert_eq!(ErrorCode::from_u16(72), Some(ErrorCode::Unavailable));
        assert!(!ErrorCode::Unavailable.closes_connection());
        assert_eq!(ErrorCode::Unavailable.to_string(), "Unavailable (72)");
    }

    #[test]
    fn a_retry_hint_reads_back_from_the_end_of_a_message() {
        let message = format!("too many failed logins; retry in 7 s {}", retry_hint(7));
        assert_eq!(retry_after_secs(&message), Some(7));
        assert_eq!(retry_after_secs("no hint here"), None);
        assert_eq!(retry_after_secs("[retry_after_secs=x]"), None);
        assert_eq!(retry_after_secs("[retry_after_secs=3] and more"), None);
    }

    #[test]
    fn display_names_the_code() {
        assert_eq!(ErrorCode::NotMember.to_string(), "NotMember (41)");
        assert_eq!(ErrorCode::NotMember.name(), "NotMember");
    }
}
