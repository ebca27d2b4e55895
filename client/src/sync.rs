//! `SYNC`: everything that changed since a watermark, drained over all pages.

use std::time::Duration;

use courier_protocol::{Frame, Message, MessageMeta, MessageRef, SyncBatch, Thread};

use crate::connection::Connection;
use crate::{Client, Error, Result};

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

/// A `SYNC` walk over all pages, sans-IO: send [`request`](Self::request), feed each
/// `SYNC_BATCH` to [`feed`](Self::feed) until it returns the result.
pub(crate) struct SyncWalk {
    since: u64,
    limit: u16,
    /// The cursor and the walk's watermark: 0s ask for a new walk; every later page carries
    /// the first batch's watermark back, so nothing committed mid-walk can hide below it.
    after_thread: u64,
    after_message: u64,
    watermark: u64,
    out: SyncResult,
}

impl SyncWalk {
    pub(crate) fn new(since: u64, limit: u16) -> SyncWalk {
        SyncWalk {
            since,
            limit,
            after_thread: 0,
            after_message: 0,
            watermark: 0,
            out: SyncResult::default(),
        }
    }

    /// The next page's request.
    pub(crate) fn request(&self) -> Frame {
        Frame::Sync(courier_protocol::Sync {
            since: self.since,
            after_thread: self.after_thread,
            after_message: self.after_message,
            limit: self.limit,
            watermark: self.watermark,
        })
    }

    /// Takes one page; the whole result once the server says there are no more.
    pub(crate) fn feed(&mut self, batch: SyncBatch) -> Option<SyncResult> {
        self.out.threads.extend(batch.threads);
        self.out.messages.extend(batch.messages);
        self.out.deleted.extend(batch.deleted);
        self.out.meta.extend(batch.meta);
        if !batch.more {
            self.out.watermark = batch.watermark;
            return Some(std::mem::take(&mut self.out));
        }
        self.after_thread = batch.next_thread;
        self.after_message = batch.next_message;
        self.watermark = batch.watermark;
        None
    }
}

/// The `SYNC_BATCH` in a reply.
pub(crate) fn expect_batch(reply: Frame) -> Result<SyncBatch> {
    match reply {
        Frame::SyncBatch(batch) => Ok(batch),
        other => Err(Error::UnexpectedReply {
            request: "Sync",
            reply: other.name(),
        }),
    }
}

/// Asks for pages until the server says there are no more.
pub(crate) fn sync_pages(
    conn: &Connection,
    since: u64,
    limit: u16,
    timeout: Duration,
) -> Result<SyncResult> {
    let mut walk = SyncWalk::new(since, limit);
    loop {
        let batch = expect_batch(conn.request(walk.request(), timeout)?)?;
        if let Some(result) = walk.feed(batch) {
            return Ok(result);
        }
    }
}

impl Client {
    /// Everything that changed since the saved watermark (else the login's, else the
    /// beginning), over all pages. Saves the new watermark and counts the messages as seen, so
    /// the event stream will not repeat them.
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
        inner
            .state
            .lock()
            .record_sync(&result, false, &mut Vec::new());
        Ok(result)
    }
}
