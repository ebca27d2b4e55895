//! The loadgen's one error type.

use std::path::PathBuf;

/// Why a run could not be carried out. Lost or duplicated messages are not errors: they are
/// results, reported in [`Report`](crate::Report).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read users file {path}: {source}")]
    UsersFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("users file {path}, line {line}: expected `user_id handle token_hex`")]
    UsersLine { path: PathBuf, line: usize },
    #[error(
        "the scenario needs {needed} users but only {have} are available; provision more \
         (`courier admin provision --users N`) or use --register"
    )]
    NotEnoughUsers { needed: usize, have: usize },
    #[error("give either --users FILE (provisioned tokens) or --register")]
    NoUsers,
    #[error("registering user {handle} at {server}: {reason}")]
    Register {
        handle: String,
        server: String,
        reason: String,
    },
    #[error("cannot start worker process {exe}: {source}")]
    SpawnWorker {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("worker {worker} failed: {reason}")]
    Worker { worker: usize, reason: String },
    #[error("worker {worker} exited or stopped answering during {phase}")]
    WorkerGone { worker: usize, phase: &'static str },
    #[error("bad histogram from worker: {0}")]
    Histogram(String),
    #[error("invalid arguments: {0}")]
    Args(String),
    #[error("cannot write {path}: {source}")]
    WriteReport {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the server closed the connection: {0}")]
    Closed(courier_protocol::session::CloseReason),
    #[error("request not sent: {0}")]
    Session(#[from] courier_protocol::SessionError),
    #[error("{request}: the server refused it with {code}: {message}")]
    Refused {
        request: &'static str,
        code: String,
        message: String,
    },
    #[error("{request}: the server answered {answer}, which does not fit")]
    UnexpectedAnswer {
        request: &'static str,
        answer: &'static str,
    },
    #[error("no answer to {request} within {after:?}; is the server overloaded or stuck?")]
    NoAnswer {
        request: &'static str,
        after: std::time::Duration,
    },
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
