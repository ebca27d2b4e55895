//! Courier's load generator.
//!
//! The parent process plans a scenario (which user connects where, which threads exist, who
//! sends), starts worker processes (this binary's hidden `worker` subcommand; each holds up to
//! ~18,000 sockets under a 20,000 open-file limit) and drives them through phases over JSON
//! lines on their stdin/stdout: connect → setup → traffic → collect → verify. Each worker is
//! one mio event loop of small per-connection state machines, each driving a
//! `courier_protocol::Session`; the side tools (registering users, the probe scenario) drive
//! the same `Session` over blocking sockets (`blocking.rs`).
//!
//! ```text
//!  parent ──Init/Connect/Setup/Traffic/Collect──▶ worker 0..K (mio loop, 18k conns each)
//!    ▲                                              │ sockets bound to 127.0.0.X
//!    └──────Progress/Done/Collected (JSON lines)────┘──────────────▶ courier servers
//! ```
//!
//! Latency: the send time (CLOCK_MONOTONIC ns) is the first 8 bytes of every message body
//! ([`ledger::BodyHeader`]), so a receiver in any worker computes send→push latency alone.
//! HdrHistograms are merged in the parent. Verification definitions: [`ledger`]. Kernel memory
//! measurement: [`sys`].

mod blocking;
pub mod cli;
pub mod cluster;
mod error;
#[doc(hidden)]
mod fleet;
pub mod hist;
pub mod ipc;
pub mod ledger;
pub mod plan;
pub mod probe;
mod report;
mod runner;
pub mod sys;
pub mod users;
mod worker;

pub use cli::{Cli, Command, Common, ProbeArgs};
pub use error::{Error, Result};
pub use report::{missing_keys, Report, StormReport, LATENCY_QUANTILES, REQUIRED_KEYS};
pub use runner::run;

/// The hidden `worker` subcommand: serve the parent over stdin/stdout until told to exit.
pub fn run_worker() -> std::io::Result<()> {
    worker::run_stdio()
}
