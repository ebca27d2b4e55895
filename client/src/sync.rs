//! `SYNC`: everything that changed since a watermark, drained over all pages.

use std::time::Duration;

use courier_protocol::{
    Frame, Message, MessageMeta, MessageRef, SyncBatch, SyncVector, Tail, Thread,
};

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
    /// Against a cluster: the watermark of each node (by index in the sorted member list),
    /// to pass back with `watermark` next time (`watermark` is their minimum). Message ids are
    /// each thread's owner node's clock, so one number cannot stand for every node without
    /// fetching some messages twice. Empty from a single node.
    pub watermarks: Vec<u64>,
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
    /// The last sync's per-node watermarks (a cluster), else empty.
    since_vector: Vec<u64>,
    limit: u16,
    /// The cursor and the walk's watermark: 0s ask for a new walk; every later page carries
    /// the first batch's watermark back, so nothing committed mid-walk can hide below it.
    after_thread: u64,
    after_message: u64,
    watermark: u64,
    /// A cluster's walk: the per-node watermarks so far and the node the next page is on.
    vector: Option<(Vec<u64>, u16)>,
    out: SyncResult,
}

impl SyncWalk {
    /// A walk from `since`, with the per-node watermarks saved with it (empty if none).
    pub(crate) fn new(since: u64, since_vector: Vec<u64>, limit: u16) -> SyncWalk {
        SyncWalk {
            since,
            since_vector,
            limit,
            after_thread: 0,
            after_message: 0,
            watermark: 0,
            vector: None,
            out: SyncResult::default(),
        }
    }

    /// The next page's request.
    /// The next page's request. Without per-node watermarks (a single node) the frame is
    /// the same as before clusters, byte for byte.
    pub(crate) fn request(&self) -> Frame {
        let vector = match &self.vector {
            Some((watermarks, next_node)) => Some(SyncVector {
                since: self.since_vector.clone(),
                watermarks: watermarks.clone(),
                after_node: *next_node,
            }),
            None if !self.since_vector.is_empty() => Some(SyncVector {
                since: self.since_vector.clone(),
                watermarks: Vec::new(),
                after_node: 0,
            }),
            None => None,
        };
        Frame::Sync(courier_protocol::Sync {
            since: self.since,
            after_thread: self.after_thread,
            after_message: self.after_message,
            limit: self.limit,
            watermark: self.watermark,
            vector: Tail(vector),
        })
    }

    /// Takes one page; the whole result once the server says there are no more.
    pub(crate) fn feed(&mut self, batch: SyncBatch) -> Option<SyncResult> {
        self.out.threads.extend(batch.threads);
        self.out.messages.extend(batch.messages);
        self.out.deleted.extend(batch.deleted);
        self.out.meta.extend(batch.meta);
        let vector = batch.vector.0.map(|v| (v.watermarks, v.next_node));
        if !batch.more {
            self.out.watermark = batch.watermark;
            self.out.watermarks = vector.map(|(w, _)| w).unwrap_or_default();
            return Some(std::mem::take(&mut self.out));
        }
        self.after_thread = batch.next_thread;
        self.after_message = batch.next_message;
        self.watermark = batch.watermark;
        self.vector = vector;
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
    since_vector: Vec<u64>,
    limit: u16,
    timeout: Duration,
) -> Result<SyncResult> {
    let mut walk = SyncWalk::new(since, since_vector, limit);
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

    /// Like [`sync`](Self::sync) from an explicit watermark (with the per-node watermarks
    /// saved with it, if it is the saved one).
    pub fn sync_since(&self, since: u64) -> Result<SyncResult> {
        let inner = self.inner();
        let conn = inner.current()?;
        let result = sync_pages(
            &conn,
            since,
            inner.watermarks_for(since),
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

#[cfg(test)]
mod tests {
    use courier_protocol::BatchVector;

    use super::*;

    fn sync_of(frame: Frame) -> courier_protocol::Sync {
        match frame {
            Frame::Sync(s) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_single_node_walk_sends_no_vector() {
        let mut walk = SyncWalk::new(5, Vec::new(), 10);
        assert_eq!(sync_of(walk.request()).vector, Tail(None));
        let page = SyncBatch {
            more: true,
            next_thread: 3,
            next_message: 4,
            watermark: 9,
            ..SyncBatch::default()
        };
        assert!(walk.feed(page).is_none());
        let next = sync_of(walk.request());
        assert_eq!((next.after_thread, next.watermark), (3, 9));
        assert_eq!(next.vector, Tail(None));
        let done = walk.feed(SyncBatch {
            watermark: 9,
            ..SyncBatch::default()
        });
        let done = done.expect("the last page");
        assert_eq!((done.watermark, done.watermarks), (9, vec![]));
    }

    #[test]
    fn a_cluster_walk_carries_its_vector_back_and_returns_every_nodes_watermark() {
        let mut walk = SyncWalk::new(5, vec![5, 7, 6], 10);
        let first = sync_of(walk.request()).vector.0.expect("the saved vector");
        assert_eq!(
            (first.since, first.watermarks, first.after_node),
            (vec![5, 7, 6], vec![], 0)
        );
        let page = SyncBatch {
            more: true,
            watermark: 20,
            vector: Tail::some(BatchVector {
                watermarks: vec![20, 0, 0],
                next_node: 1,
            }),
            ..SyncBatch::default()
        };
        assert!(walk.feed(page).is_none());
        let next = sync_of(walk.request());
        let vector = next.vector.0.expect("a continuation carries the vector");
        assert_eq!(
            (vector.since, vector.watermarks, vector.after_node),
            (vec![5, 7, 6], vec![20, 0, 0], 1)
        );
        let done = walk
            .feed(SyncBatch {
                watermark: 18,
                vector: Tail::some(BatchVector {
                    watermarks: vec![20, 18, 19],
                    next_node: 0,
                }),
                ..SyncBatch::default()
            })
            .expect("the last page");
        assert_eq!((done.watermark, done.watermarks), (18, vec![20, 18, 19]));
    }
}
