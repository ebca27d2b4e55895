//! One shard's chat engine. (Body being written by the lead; this is the contract.)

use std::sync::Arc;

use courier_protocol::Frame;

use super::{Caller, Effect, Shared};

pub struct Engine {
    shared: Arc<Shared>,
    shard: u16,
}

impl Engine {
    pub fn new(shared: Arc<Shared>, shard: u16) -> Self {
        Self { shared, shard }
    }

    /// The shard that must run `frame` for `caller`, or `None` when `frame` is not a chat
    /// request (session, presence and admin frames are the shard's own business).
    pub fn shard_for(shared: &Shared, caller: &Caller, frame: &Frame) -> Option<u16> {
        let _ = (shared, caller, frame);
        None
    }

    /// Runs one chat request. Its answers come out of [`commit`](Self::commit).
    pub fn handle(&mut self, caller: Caller, request_id: u32, frame: Frame) {
        let _ = (caller, request_id, frame, self.shard, &self.shared);
    }

    /// Whether requests are waiting for [`commit`](Self::commit).
    pub fn has_pending(&self) -> bool {
        false
    }

    /// Makes this round's writes durable (one WAL write and, per fsync mode, one sync) and
    /// appends the answers and pushes they release to `out`. Call once per event-loop round.
    pub fn commit(&mut self, out: &mut Vec<Effect>) {
        let _ = out;
    }

    /// A user's last device went offline at `at` (µs): persisted as their last seen.
    pub fn record_last_seen(&mut self, user: u64, at: u64) {
        let _ = (user, at);
    }
}
