//! Accounts and sessions: registration, password login, token resume, logout.
//!
//! Password hashing (argon2id) takes tens of milliseconds, so [`Accounts::register`] and
//! [`Accounts::login`] must run on the auth worker pool, never on a shard's event loop.
//! [`Accounts::resume`] is one hash of a 32-byte token and one point read: microseconds.

mod accounts;
mod limits;
mod throttle;

pub use accounts::{Accounts, AuthConfig, Authed, TokenDigest, UserRef};
pub use limits::Thresholds;
pub use throttle::Policy;

use courier_protocol::ErrorCode;

/// Environment variable (tests only) that sets the token idle time in milliseconds instead of
/// `--token-idle-days`, so a test can watch a token expire.
pub const TEST_TOKEN_IDLE_MS: &str = "COURIER_TEST_TOKEN_IDLE_MS";

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("the handle is taken")]
    HandleTaken,
    #[error("wrong handle or password")]
    BadCredentials,
    #[error("the session token is unknown or revoked; log in with the password")]
    InvalidToken,
    #[error(
        "the session token expired: it was not used for {idle_days} days; log in with the password"
    )]
    TokenExpired { idle_days: u64 },
    /// The message ends with the retry hint in the fixed form of
    /// [`courier_protocol::retry_hint`] (PROTOCOL.md section 8).
    #[error("{scope}; retry in {retry_after_secs} s [retry_after_secs={retry_after_secs}]")]
    Throttled {
        scope: &'static str,
        retry_after_secs: u32,
    },
    #[error("a handle is 3 to 32 characters of a-z, 0-9, '_', '.' or '-'")]
    InvalidHandle,
    #[error("a password is 8 to 256 bytes")]
    WeakPassword,
    #[error("this account already uses {max} device names, the most it may; log in with the name of a device it already uses")]
    TooManyDevices { max: u32 },
    #[error("a device name is 1 to 64 bytes of printable characters: no control characters, no invisible formatting characters, not only spaces")]
    InvalidDevice,
    #[error("the prefix plus a number must make a valid handle: 3 to 32 characters of a-z, 0-9, '_', '.' or '-' (e.g. --prefix load)")]
    InvalidPrefix,
    #[error("no account has {0}; `courier admin list` shows the admins, a client's AUTH_OK shows a user's id")]
    UnknownUser(String),
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// The job panicked on an auth worker (logged there); the client may retry.
    #[error("the server failed to check this request; try again")]
    Internal,
}

impl AuthError {
    /// A failure of the server's, not of the request: its text is for the log, never for the
    /// client (it may name RocksDB, files or disk space).
    pub fn is_internal(&self) -> bool {
        matches!(
            self,
            AuthError::Hash(_) | AuthError::Store(_) | AuthError::Internal
        )
    }

    /// The code sent to the client.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::HandleTaken => ErrorCode::HandleTaken,
            AuthError::BadCredentials => ErrorCode::BadCredentials,
            AuthError::InvalidToken | AuthError::TokenExpired { .. } => ErrorCode::InvalidToken,
            AuthError::Throttled { .. } => ErrorCode::LoginThrottled,
            AuthError::InvalidHandle | AuthError::InvalidPrefix => ErrorCode::InvalidHandle,
            AuthError::WeakPassword => ErrorCode::WeakPassword,
            AuthError::TooManyDevices { .. } => ErrorCode::TooManyDevices,
            AuthError::InvalidDevice => ErrorCode::InvalidArgument,
            AuthError::UnknownUser(_) => ErrorCode::UnknownUser,
            AuthError::Hash(_) | AuthError::Store(_) | AuthError::Internal => ErrorCode::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttled_message_carries_the_documented_retry_hint() {
        let e = AuthError::Throttled {
            scope: "too many failed logins from your address",
            retry_after_secs: 42,
        };
        let message = e.to_string();
        assert_eq!(courier_protocol::retry_after_secs(&message), Some(42));
        assert!(
            message.ends_with(&courier_protocol::retry_hint(42)),
            "{message}"
        );
    }
}
