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
    /// should hear of it by push: no device online, homed on this node, not muting the thread
    /// (`muted(user)`: the round's own change if any, else `None` to read the store), and with
    /// at least one registration.
    ///
    /// Members homed on other nodes who did not mute the thread are appended to `remote`
    /// instead: only their home knows their devices and registrations, and it decides there
    /// ([`stage_home`](Self::stage_home)). The mute check is made here, where the thread's
    /// membership rows live (ARCHITECTURE.md "Push notifications", "In a cluster").
    ///
    /// Per member: one Directory lookup; for offline ones one point read of `pushers` (the
    /// bloom filter answers most), and for those with a registration one of `memberships`.
    /// Per member of another node: one read of `memberships` (unless the round changed it).
    pub fn stage(
        &self,
        batch: &mut Batch,
        thread: u64,
        members: impl IntoIterator<Item = u64>,
        muted: impl Fn(u64) -> Option<bool>,
        event: &OutboxOp,
        remote: &mut Vec<u64>,
    ) -> Result<usize, Error> {
        let is_muted = |user: u64| -> Result<bool, Error> {
            Ok(match muted(user) {
                Some(m) => m,
                None => self
                    .store
                    .private_state(user, thread)?
                    .is_some_and(|p| p.muted),
            })
        };
        let mut staged = 0;
        for user in members {
            if self.router.user_home(user) != Home::Local {
                if !is_muted(user)? {
                    remote.push(user);
                }
                continue;
            }
            if self.directory.is_online(user) || !self.store.has_pushers(user)? {
                continue;
            }
            if is_muted(user)? {
                continue;
            }
            batch.outbox(user, event);
            staged += 1;
        }
        Ok(staged)
    }

    /// The home's half for members of a thread another node owns: `users` (homed here, not
    /// muting the thread, as the owner found) were sent `event`'s message in a `PUSH_BATCH`;
    /// each one with no device online here and a registration gets the notification, in one
    /// write of this node's own. Returns how many.
    ///
    /// Weaker than on one node: the message is durable on its owner, but this write is the
    /// home's own and is not synced (the push that carried it is at most once too), so a
    /// notification can be lost when the link drops the push or this node loses power. The
    /// message itself is not: the devices get it by SYNC.
    pub fn stage_home(&self, users: &[u64], event: &OutboxOp) -> Result<usize, Error> {
        let mut batch = self.store.batch();
        let mut staged = 0;
        for &user in users {
            if self.router.user_home(user) != Home::Local
                || self.directory.is_online(user)
                || !self.store.has_pushers(user)?
            {
                continue;
            }
            batch.outbox(user, event);
            staged += 1;
        }
        if staged > 0 {
            self.store.commit_relaxed(batch)?;
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
