//! Errors as the person at the terminal should read them: one line, with what to do.

use std::path::PathBuf;

use courier_client::{Error, ErrorCode};

/// Why a CLI command failed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Client(#[from] Error),
    #[error("no user named '{0}' (handles are exact, lower case)")]
    UnknownUser(String),
    #[error("wrong handle or password for '{0}'")]
    WrongPassword(String),
    #[error("the handle '{0}' is already taken; pick another or `courier-cli login {0}`")]
    HandleTaken(String),
    #[error("not logged in to {0}: run `courier-cli login HANDLE` (or `register`) first")]
    NotLoggedIn(String),
    #[error("the saved session for {0} has expired or was revoked: run `courier-cli login HANDLE` again")]
    SessionExpired(String),
    #[error("config file {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("cannot find a config directory: set COURIER_CONFIG or HOME")]
    NoConfigDir,
    #[error("{0}")]
    Usage(String),
    #[error(
        "no key pinned for the server {0}, and the connection is encrypted: pass --server-key \
         HEX (`courier keys show --data-dir DIR` on the server prints it), or \
         --trust-on-first-use to accept and save the key the server presents, or \
         --insecure-plaintext for a server run with --insecure-plaintext"
    )]
    NoServerKey(String),
    #[error("terminal: {0}")]
    Terminal(#[from] std::io::Error),
}

impl CliError {
    /// Turns server refusals that have a better wording in context into their own variants.
    pub fn for_account(e: Error, handle: &str) -> CliError {
        match e.code() {
            Some(ErrorCode::BadCredentials) => CliError::WrongPassword(handle.into()),
            Some(ErrorCode::HandleTaken) => CliError::HandleTaken(handle.into()),
            Some(ErrorCode::UnknownUser) => CliError::UnknownUser(handle.into()),
            Some(ErrorCode::InvalidHandle) => CliError::Usage(format!(
                "'{handle}' is not a valid handle: use 3 to 32 of a-z 0-9 _ . -"
            )),
            Some(ErrorCode::WeakPassword) => {
                CliError::Usage("the password must be 8 to 256 bytes".into())
            }
            Some(ErrorCode::LoginThrottled) => {
                let wait = e
                    .retry_after_secs()
                    .map_or_else(|| "a minute".to_owned(), |s| format!("{s} s"));
                CliError::Usage(format!(
                    "too many failed attempts from this address: wait {wait} and try again"
                ))
            }
            _ => CliError::Client(e),
        }
    }

    /// The process exit code: 2 for usage, 3 when the server is unreachable, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Client(Error::Unreachable { .. }) => 3,
            _ => 1,
        }
    }
}
