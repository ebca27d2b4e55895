//! `SYNC`: everything that changed since a watermark, drained over all pages.

use std::time::Duration;

use courier_protocol::{Frame, Message, MessageMeta, MessageRef, Sync, Thread};

use crate::client::{expect_reply, record_sync};
use crate::connection::Connection;
use crate::{Client, Result};

/// What one full sync returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncResult {
    /// Every thread that changed since the watermark, in full (members with their receipt
    /// cursors, the caller's private state). A thread whose members do not include the user
    /// is one they left or were removed from.
    pub threads: Vec<Thread>,
    /// Every new message in those threads: thread by thread in ascending thread id, each
    /// thread's messages in id order.
    pub messages: Vec<Message>,
    /// Pass this as `since` next time.
    pub watermark: u64,
    /// Messages the user deleted for themselves (on any device) since the watermark: drop
    /// them from what is shown.
    pub deleted: Vec<MessageRef>,
    /// What those of `messages` that reply, were edited or have reactions carry besides
    /// themselves (by `MessageMeta::id`).
    pub meta: Vec<MessageMeta>,
}

/// Asks for pages until the server says there are no more.
pub(crate) fn sync_pages(
    conn: &Connection,
    since: u64,
    limit: u16,
    timeout: Duration,
) -> Result<SyncResult> {
    let mut out = SyncResult::default();
    // The cursor and the walk's watermark: 0s ask for a new walk; every later page carries
    // the first batch's watermark back, so nothing committed mid-walk can hide below it.
    let (mut after_thread, mut after_message, mut watermark) = (0, 0, 0);
    loop {
        let request = Sync {
            since,
            after_thread,
            after_message,
            limit,
            watermark,
        };
        let batch = expect_reply!(
            conn.request(Frame::Sync(request), timeout),
            "Sync",
            SyncBatch
        )?;
        out.threads.extend(batch.threads);
        out.messages.extend(batch.messages);
        out.deleted.extend(batch.deleted);
        out.meta.extend(batch.meta);
        if !batch.more {
            out.watermark = batch.watermark;
            return Ok(out);
        }
        after_thread = batch.next_thread;
        after_message = batch.next_message;
        watermark = batch.watermark;
    }
}

impl Client {
    /// Everything that changed since the saved watermark (else the login's, else the
    /// beginning), over all pages. Saves the new watermark and counts the messages as seen, so the event stream
    /// will not repeat them.
    pub fn sync(&self) -> Result<SyncResult> {
        let since = self.watermark().unwrap_or(0);
        self.sync_since(since)
    }

    /// Like [`sync`](Self::sync) from an explicit watermark.
    pub fn sync_since(&self, since: u64) -> Result<SyncResult> {
        let inner = self.inner();
        let conn = inner.current()?;
        let result = sync_pages(
            &conn,
            since,
            inner.config.sync_page,
            inner.config.request_timeout,
        )?;
        let mut state = inner.state.lock();
        record_sync(&mut state, &result, false, &mut Vec::new());
        Ok(result)
    }
}
