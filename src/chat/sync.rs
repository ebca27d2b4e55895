//! Offline sync: everything that changed since a watermark, in pages.
//!
//! The caller's threads are walked in ascending id; a thread whose `changed_at` is above
//! `since` contributes its full view (members' receipt cursors included) and every message
//! above `since` that the caller may see, in id order. A page ends at `limit` messages or at
//! the reply size budget, with a resume point (`next_thread`, `next_message`).
//!
//! The watermark is taken before anything is read (see [`Shared::watermark`](super::Shared)),
//! so a change committed while the pages are read has a clock value above it and shows up in
//! the next sync, if not already in this one. Clients deduplicate by message id.

use courier_protocol::wire::Wire;
use courier_protocol::{Frame, Sync, SyncBatch};

use super::engine::Reject;
use super::messages::to_wire;
use super::threads::{internal, view, ThreadState};
use super::{Caller, Shared};

/// Messages per page when the request asks for 0, and the most it may ask for.
const DEFAULT_PAGE: usize = 200;
const MAX_PAGE: usize = 1000;

pub(super) fn sync(shared: &Shared, caller: &Caller, f: Sync) -> Result<Option<Frame>, Reject> {
    let watermark = shared.watermark();
    let store = shared.store.clone();
    let memberships = store.memberships(caller.user).map_err(internal)?;
    let ids: Vec<u64> = memberships
        .iter()
        .map(|(t, _)| *t)
        .filter(|&t| t >= f.after_thread)
        .collect();
    let records = store.threads(&ids).map_err(internal)?;
    let limit = match f.limit as usize {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    };
    let budget = shared.config.max_reply_bytes;
    let mut batch = SyncBatch {
        watermark,
        ..Default::default()
    };
    let mut size = 0usize;
    for (&thread, rec) in ids.iter().zip(records) {
        let Some(rec) = rec else { continue };
        if rec.changed_at <= f.since {
            continue;
        }
        let members = store
            .members(thread)
            .map_err(internal)?
            .into_iter()
            .collect();
        let state = ThreadState::new_from(rec, members);
        let v = view(&store, thread, &state, caller.user)?;
        if size + v.size() > budget && (!batch.threads.is_empty() || !batch.messages.is_empty()) {
            batch.more = true;
            batch.next_thread = thread;
            batch.next_message = if thread == f.after_thread {
                f.after_message
            } else {
                0
            };
            return Ok(Some(batch.into()));
        }
        size += v.size();
        batch.threads.push(v);
        let private = store
            .private_state(caller.user, thread)
            .map_err(internal)?
            .unwrap_or_default();
        let hidden_upto = if private.hidden {
            private.hidden_upto
        } else {
            0
        };
        let deleted: std::collections::HashSet<u64> = store
            .hidden_messages(caller.user, thread)
            .map_err(internal)?
            .into_iter()
            .collect();
        let resume = if thread == f.after_thread {
            f.after_message
        } else {
            0
        };
        let after = f.since.max(hidden_upto).max(resume);
        let room = limit.saturating_sub(batch.messages.len());
        let mut last = after;
        let mut cut = false;
        let more_in_thread = store
            .messages(thread, after, u64::MAX, false, room, |id, m| {
                if cut {
                    return Ok(());
                }
                let m = to_wire(thread, id, m);
                if size + m.size() > budget && !batch.messages.is_empty() {
                    cut = true;
                    return Ok(());
                }
                last = id;
                if !deleted.contains(&id) {
                    size += m.size();
                    batch.messages.push(m);
                }
                Ok(())
            })
            .map_err(internal)?;
        if more_in_thread || cut {
            batch.more = true;
            batch.next_thread = thread;
            batch.next_message = last;
            return Ok(Some(batch.into()));
        }
    }
    Ok(Some(batch.into()))
}
