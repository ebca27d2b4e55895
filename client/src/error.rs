//! The client's one error type.

use std::time::Duration;

use courier_protocol::session::CloseReason;
use courier_protocol::{ErrorCode, Frame, VERSION};

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
    /// The encrypted transport failed: the server does not hold the pinned key, it answered
    /// in plaintext, or a record failed authentication. The text says what to do.
    #[error("{0}")]
    Encryption(courier_protocol::session::CloseReason),
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
    #[error(
        "redirected too many times (last: node {node:?} at {addr}): the nodes disagree on where \
         this user lives; check that every node runs with the same --peer list"
    )]
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

    /// The seconds the server asked to wait before retrying (the `[retry_after_secs=N]` hint
    /// of `LOGIN_THROTTLED`, PROTOCOL.md section 8), if it gave one.
    pub fn retry_after_secs(&self) -> Option<u32> {
        match self {
            Error::Server { message, .. } | Error::UnknownErrorCode { message, .. } => {
                courier_protocol::retry_after_secs(message)
            }
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

    /// A response as a call's result: `ERROR_REPLY` is an error, anything else the reply.
    pub(crate) fn reply(frame: Frame) -> Result<Frame> {
        match frame {
            Frame::ErrorReply(e) => Err(Error::from_reply(e.code, e.message)),
            other => Ok(other),
        }
    }

    /// What opening a connection fails with when the session closed (`reason`, with the
    /// server's `code` if it gave one) before `WELCOME`.
    pub(crate) fn handshake(reason: CloseReason, code: Option<ErrorCode>) -> Error {
        match reason {
            CloseReason::HandshakeRefused { code, message } => Error::from_reply(code, message),
            CloseReason::VersionMismatch { server } => Error::VersionMismatch {
                server,
                client: VERSION,
            },
            // Before WELCOME: the server's reason, e.g. ENCRYPTION_REQUIRED for a plaintext client.
            CloseReason::Server { code, message } => Error::from_reply(code, message),
            reason @ (CloseReason::ServerKeyMismatch { .. }
            | CloseReason::PlaintextAnswer { .. }
            | CloseReason::Encryption(_)) => Error::Encryption(reason),
            _ => Error::Disconnected { reason: code },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_hint_of_a_refusal_is_read() {
        let throttled = Error::from_reply(
            ErrorCode::LoginThrottled as u16,
            format!("too many failed logins {}", courier_protocol::retry_hint(9)),
        );
        assert_eq!(throttled.retry_after_secs(), Some(9));
        let plain = Error::from_reply(ErrorCode::BadCredentials as u16, "wrong".into());
        assert_eq!(plain.retry_after_secs(), None);
    }
}
