//! The client's one error type.

use std::time::Duration;

use courier_protocol::ErrorCode;

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered the request with `ERROR_REPLY`.
    #[error("server refused the request: {code}: {message}")]
    Server {
        /// The protocol error code.
        code: ErrorCode,
        /// The server's human-readable explanation (may be empty).
        message: String,
    },
    /// The server sent an `ERROR_REPLY` code this client does not know.
    #[error("server sent unknown error code {code}: {message}")]
    UnknownErrorCode {
        /// The raw code.
        code: u16,
        /// The server's explanation.
        message: String,
    },
    /// No TCP connection could be made to the server.
    #[error(
        "cannot reach the Courier server at {addr}: {source} \
         (is `courier serve` running there? check --server / COURIER_SERVER and any firewall)"
    )]
    Unreachable {
        /// The address that was tried, as given by the caller.
        addr: String,
        /// The underlying connect or resolve error.
        #[source]
        source: std::io::Error,
    },
    /// A socket read or write failed on an established connection.
    #[error("connection i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A local file to upload or download into could not be read or written.
    #[error("{path}: {source}. Check the path and its permissions")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The server's bytes did not decode into frames.
    #[error("protocol error: {0}")]
    Protocol(#[from] courier_protocol::Error),
    /// The request was refused before it was sent: too many requests outstanding, a frame over
    /// the server's limit.
    #[error("request not sent: {0}")]
    Session(#[from] courier_protocol::SessionError),
    /// The server answered with a frame that does not fit the request.
    #[error("unexpected reply to {request}: got {reply}")]
    UnexpectedReply {
        /// The request's frame name.
        request: &'static str,
        /// The reply's frame name.
        reply: &'static str,
    },
    /// The server speaks another protocol version.
    #[error("server speaks protocol version {server}, this client speaks {client}")]
    VersionMismatch {
        /// The version in the server's `WELCOME`.
        server: u16,
        /// [`courier_protocol::VERSION`].
        client: u16,
    },
    /// The connection is closed (and, for a reconnecting client, not yet re-established).
    #[error("not connected to the server{}", match .reason { Some(c) => format!(" (server closed it: {c})"), None => String::new() })]
    Disconnected {
        /// The code the server gave when it closed the connection, if it gave one.
        reason: Option<ErrorCode>,
    },
    /// No reply arrived within the request timeout.
    #[error("no reply to {request} within {after:?}")]
    Timeout {
        /// The request's frame name.
        request: &'static str,
        /// How long the client waited.
        after: Duration,
    },
    /// The call needs a logged-in session (or a saved token) and there is none.
    #[error("not logged in")]
    NotLoggedIn,
    /// The server redirected this user to another node too many times in a row.
    #[error("redirected too many times (last: {node} at {addr})")]
    TooManyRedirects {
        /// The last node named.
        node: String,
        /// Its address.
        addr: String,
    },
    /// A `REDIRECT` named an address that does not resolve.
    #[error("server redirected to an invalid address {addr:?}")]
    BadRedirect {
        /// The address as the server sent it.
        addr: String,
    },
}

impl Error {
    /// The server's error code, if this is a refusal by the server or a close it announced.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            Error::Disconnected { reason } => *reason,
            _ => None,
        }
    }

    /// Whether retrying the same request after a reconnect may succeed: the connection failed,
    /// not the request.
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Error::Io(_)
                | Error::Disconnected { .. }
                | Error::Timeout { .. }
                | Error::Unreachable { .. }
        )
    }

    pub(crate) fn from_reply(code: u16, message: String) -> Error {
        match ErrorCode::from_u16(code) {
            Some(code) => Error::Server { code, message },
            None => Error::UnknownErrorCode { code, message },
        }
    }

    pub(crate) fn unreachable(addr: impl ToString, source: std::io::Error) -> Error {
        Error::Unreachable {
            addr: addr.to_string(),
            source,
        }
    }
}

/// The result type of every client call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
