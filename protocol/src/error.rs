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

            /// The code's name as in PROTOCOL.md, e.g. `NOT_MEMBER`.
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
    // Media.
    UnknownMedia = 60, false;
    MediaTooLarge = 61, false;
    BadOffset = 62, false;
    // Cluster and administration.
    Forbidden = 70, false;
    WrongNode = 71, true;
    // Server.
    /// The server failed (storage error); nothing was stored, the request may be retried.
    Internal = 90, false;
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u16)
    }
}
