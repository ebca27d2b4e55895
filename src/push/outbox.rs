//! Staging notifications in a message's own commit, and cancelling them when a device
//! connects.

use std::sync::Arc;

use crate::cluster::{Home, Router};
use crate::directory::Directory;
use crate::store::{Batch, Error, OutboxOp, Store};

/// What the engine consults to decide who gets a notification: set on `chat::Shared` only
/// when a gateway is configured, so without one nothing is read or written per message.
pub struct Gate {
    store: Store,
    directory: Arc<Directory>,
    router: Router,
}

impl Gate {
    pub fn new(store: Store, directory: Arc<Directory>, router: Router) -> Self {
        Self {
            store,
            directory,
            router,
        }
    }

    /// Stages `event` (an [`OutboxOp::Event`]) in `batch` for every user of `members` who
    /// should hear of it by push: no device online, homed on this node (in a cluster, only the
    /// home knows a user's devices and registrations: see ARCHITECTURE.md), not muting the
    /// thread (`muted(user)`: the round's own change if any, else `None` to read the store),
    /// and with at least one registration.
    ///
    /// Per member: one Directory lookup; for offline ones one point read of `pushers` (the
    /// bloom filter answers most), and for those with a registration one of `memberships`.
    pub fn stage(
        &self,
        batch: &mut Batch,
        thread: u64,
        members: impl IntoIterator<Item = u64>,
        muted: impl Fn(u64) -> Option<bool>,
        event: &OutboxOp,
    ) -> Result<usize, Error> {
        let mut staged = 0;
        for user in members {
            if self.directory.is_online(user) || self.router.user_home(user) != Home::Local {
                continue;
            }
            if !self.store.has_pushers(user)? {
                continue;
            }
            let muted = match muted(user) {
                Some(m) => m,
                None => self
                    .store
                    .private_state(user, thread)?
                    .is_some_and(|p| p.muted),
            };
            if muted {
                continue;
            }
            batch.outbox(user, event);
            staged += 1;
        }
        Ok(staged)
    }

    /// A device of `user` authenticated: what is pending for them is dropped (the device
    /// syncs). Not synced to disk: losing this delete in a power cut costs one notification
    /// for messages the device already has, nothing more.
    pub fn connected(&self, user: u64) -> Result<(), Error> {
        if self.store.outbox_row(user)?.is_none() {
            return Ok(());
        }
        let mut batch = self.store.batch();
        batch.delete_outbox(user);
        self.store.commit_relaxed(batch)
    }
}
