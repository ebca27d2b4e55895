//! Offline sync: everything that changed since a watermark, in pages.
//!
//! The caller's memberships are walked in ascending thread id; a thread whose `changed_at`, or
//! whose membership's own change marker (private state, delete-for-me), is above `since`
//! contributes its full view (members' receipt cursors included), the messages the caller
//! deleted for themselves since then, and every message above `since` that the caller may see,
//! in id order. A membership tombstone (the caller left or was removed) contributes the thread
//! without members and its messages up to the notice of the leaving. A page ends at `limit` messages or at
//! the reply size budget, with a resume point (`next_thread`, `next_message`); the next page
//! seeks straight to it instead of rescanning the memberships before it.
//!
//! One walk has one watermark. The first page takes it (see [`Shared::watermark`]) before
//! anything is read, and every later page of the walk gets it back in `Sync::watermark` and
//! answers with it unchanged. A change committed while the pages are read has a clock value
//! above it, so the next sync (from that watermark) returns it even when it landed in a thread
//! an earlier page had already walked. Were each page to take its own watermark, such a
//! change would sit below the last page's watermark and never be returned. Clients
//! deduplicate by message id.

use std::collections::HashSet;

use courier_protocol::wire::Wire;
use courier_protocol::{ErrorCode, Frame, MessageRef, Sync, SyncBatch};

use super::edits;
use super::engine::Reject;
use super::messages::{hidden_from, to_wire};
use super::threads::{internal, left_view, view, ThreadState};
use super::Shared;
use crate::caller::Caller;
use crate::store::Visit;

/// Messages per page when the request asks for 0, and the most it may ask for.
const DEFAULT_PAGE: usize = 200;
const MAX_PAGE: usize = 1000;
/// Memberships read from the store at a time while a page fills.
const MEMBERSHIP_CHUNK: usize = 256;
/// Encoded size of one `MessageRef`.
const MESSAGE_REF_SIZE: usize = 16;

/// The watermark of the walk a SYNC belongs to: taken now on a first page, else the one the
/// client carries, never above the current one (a client cannot claim a future watermark).
fn walk_watermark(shared: &Shared, f: &Sync) -> Result<u64, Reject> {
    let now = shared.watermark();
    match f.watermark {
        0 if f.after_thread != 0 => Err((
            ErrorCode::InvalidArgument,
            "a SYNC that continues a walk carries the watermark of the previous SYNC_BATCH; \
             start again with after_thread 0 and watermark 0",
        )),
        0 => Ok(now),
        given => Ok(given.min(now)),
    }
}

/// One page of a sync walk for `caller`. Reads only committed state (store, config,
/// watermark), so it can run anywhere.
pub(super) fn sync(shared: &Shared, caller: &Caller, f: Sync) -> Result<Option<Frame>, Reject> {
    let watermark = walk_watermark(shared, &f)?;
    let store = &shared.store;
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
    let mut from = f.after_thread;
    loop {
        let chunk = store
            .memberships_from(caller.user, from, MEMBERSHIP_CHUNK)
            .map_err(internal)?;
        let ids: Vec<u64> = chunk.iter().map(|(t, _)| *t).collect();
        let records = store.threads(&ids).map_err(internal)?;
        for ((thread, private), rec) in chunk.into_iter().zip(records) {
            let Some(rec) = rec else { continue };
            // The thread changed (messages, members, cursors, name), or only what the caller
            // alone sees of it (private state, delete-for-me, their leaving).
            let changed = if private.left {
                private.changed_at > f.since
            } else {
                rec.changed_at > f.since || private.changed_at > f.since
            };
            if !changed {
                continue;
            }
            let resume = if thread == f.after_thread {
                f.after_message
            } else {
                0
            };
            // A former member sees the thread without members, and its messages up to the
            // notice of their leaving.
            let (v, before) = if private.left {
                (left_view(thread, &rec, &private), private.changed_at + 1)
            } else {
                let members = store
                    .members(thread)
                    .map_err(internal)?
                    .into_iter()
                    .collect();
                let state = ThreadState::new_from(rec, members);
                (view(store, thread, &state, caller.user)?, u64::MAX)
            };
            let hidden = store
                .hidden_messages_at(caller.user, thread)
                .map_err(internal)?;
            // Deletions are reported once per walk, with the thread's first page.
            let newly_deleted = hidden
                .iter()
                .filter(|&&(_, at)| resume == 0 && at > f.since)
                .map(|&(id, _)| MessageRef { thread, id });
            let deleted_size = newly_deleted.clone().count() * MESSAGE_REF_SIZE;
            if size + v.size() + deleted_size > budget
                && (!batch.threads.is_empty() || !batch.messages.is_empty())
            {
                batch.more = true;
                batch.next_thread = thread;
                batch.next_message = resume;
                return Ok(Some(batch.into()));
            }
            size += v.size() + deleted_size;
            batch.threads.push(v);
            batch.deleted.extend(newly_deleted);
            let hidden_upto = if private.hidden {
                private.hidden_upto
            } else {
                0
            };
            let deleted: HashSet<u64> = hidden.iter().map(|&(id, _)| id).collect();
            let after = f.since.max(hidden_upto).max(resume);
            let room = limit.saturating_sub(batch.messages.len());
            let mut last = after;
            let more_in_thread = store
                .messages(thread, after, before, false, room, |id, m| {
                    if hidden_from(hidden_upto, &deleted, id, &m) {
                        // Passed over, but the resume point moves past it.
                        last = id;
                        return Ok(Visit::Skipped);
                    }
                    let meta = edits::meta(store, thread, id, &m, caller.user)?;
                    let m = to_wire(thread, id, m);
                    let m_size = m.size() + meta.as_ref().map_or(0, Wire::size);
                    if size + m_size > budget && !batch.messages.is_empty() {
                        return Ok(Visit::Stop);
                    }
                    last = id;
                    size += m_size;
                    batch.messages.push(m);
                    batch.meta.extend(meta);
                    Ok(Visit::Took)
                })
                .map_err(internal)?;
            if more_in_thread {
                batch.more = true;
                batch.next_thread = thread;
                batch.next_message = last;
                return Ok(Some(batch.into()));
            }
        }
        match ids.last() {
            Some(&last) if ids.len() == MEMBERSHIP_CHUNK && last < u64::MAX => from = last + 1,
            _ => return Ok(Some(batch.into())),
        }
    }
}
