//! The media garbage collector: a thread that wakes every interval and, with bounded work per
//! pass, removes
//!
//! * parts of abandoned uploads: no chunk for the upload timeout (the engine forgets such
//!   uploads after the same timeout; a chunk for a collected part is answered UNKNOWN_MEDIA);
//! * unreferenced blobs: stored longer than the grace period since their last commit, and
//!   never sent in any message (sent and then recalled everywhere still counts as sent: the
//!   uploader keeps it). Their header and uploader links go in one RocksDB commit,
//!   each uploader's usage is lowered by a merge (so it never races the uploader's shard),
//!   and the file is deleted after.
//!
//! It never runs on an event loop. Known races, documented rather than locked against, both
//! needing a blob unsent for its whole grace period (a day by default) to be used in the very
//! moment the collector deletes it:
//! * a SEND referring to it stores a message whose media is gone (MEDIA_GET then answers
//!   UNKNOWN_MEDIA);
//! * a MEDIA_COMMIT of the same content that finds the file still there drops its own copy,
//!   and the header it writes outlives the file; MEDIA_BEGIN checks the file, so uploading
//!   the content again repairs it.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use crossbeam_channel::{RecvTimeoutError, Sender};

use super::{BlobStore, Error, MediaId};
use crate::clock::wall_us;
use crate::metrics::MediaMetrics;
use crate::store::keys::{MEDIA_OWNER, MEDIA_THREAD};
use crate::store::Store;

/// Blob headers and parts looked at per pass (each at most).
pub const PER_PASS: usize = 256;

/// When things become garbage.
#[derive(Debug, Clone, Copy)]
pub struct GcConfig {
    /// An upload with no chunk for this long is abandoned.
    pub upload_timeout: Duration,
    /// A blob sent in no message this long after its last commit is deleted.
    pub grace: Duration,
    /// Time between passes.
    pub interval: Duration,
}

/// What one pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub parts: usize,
    pub blobs: usize,
}

/// The collector's walk over blob headers, resumed by each pass where the last one stopped.
pub struct Collector {
    store: Store,
    blobs: Arc<dyn BlobStore>,
    config: GcConfig,
    cursor: Option<MediaId>,
}

impl Collector {
    pub fn new(store: Store, blobs: Arc<dyn BlobStore>, config: GcConfig) -> Self {
        Self {
            store,
            blobs,
            config,
            cursor: None,
        }
    }

    /// One pass: at most [`PER_PASS`] parts and [`PER_PASS`] blob headers looked at.
    pub fn sweep(&mut self) -> Result<Swept, Error> {
        let mut swept = Swept::default();
        let before = SystemTime::now()
            .checked_sub(self.config.upload_timeout)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        for part in self.blobs.stale_parts(before, PER_PASS)? {
            self.blobs.discard_part(&part)?;
            swept.parts += 1;
        }
        let grace_us = self.config.grace.as_micros().min(u64::MAX as u128) as u64;
        let now = wall_us();
        let page = self
            .store
            .media_headers_after(self.cursor.as_ref(), PER_PASS)?;
        // A short page reached the end: the next pass starts over.
        self.cursor = match page.len() {
            PER_PASS => page.last().map(|(m, _)| *m),
            _ => None,
        };
        for (media, header) in page {
            if now.saturating_sub(header.committed_at) <= grace_us {
                continue;
            }
            // A thread link counts even at 0 (every message that sent it there recalled):
            // the uploader keeps their upload, as with media sent and never recalled.
            let mut referenced = false;
            self.store.media_link_refs(MEDIA_THREAD, &media, |_, _| {
                referenced = true;
                Ok(false)
            })?;
            if referenced {
                continue;
            }
            let mut owners = Vec::new();
            self.store.media_links(MEDIA_OWNER, &media, |user| {
                owners.push(user);
                Ok(true)
            })?;
            let mut batch = self.store.batch();
            batch.delete_media(&media, &owners, &[]);
            for &user in &owners {
                batch.add_media_usage(user, -(header.total_len as i64));
            }
            self.store.commit(batch)?;
            self.blobs.delete(&media)?;
            swept.blobs += 1;
        }
        Ok(swept)
    }
}

/// The collector's thread, to be stopped at shutdown.
pub struct GcThread {
    stop: Sender<()>,
    handle: JoinHandle<()>,
}

impl GcThread {
    /// Runs `collector` every interval; what it removes is counted in `counters`.
    pub fn spawn(
        mut collector: Collector,
        counters: Arc<MediaMetrics>,
    ) -> std::io::Result<GcThread> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let interval = collector.config.interval;
        let handle = std::thread::Builder::new()
            .name("media-gc".into())
            .spawn(move || loop {
                match stopped.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) => match collector.sweep() {
                        Ok(Swept { parts: 0, blobs: 0 }) => {}
                        Ok(s) => {
                            let add = |c: &std::sync::atomic::AtomicU64, n: usize| {
                                c.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed)
                            };
                            add(&counters.collected_parts, s.parts);
                            add(&counters.collected_blobs, s.blobs);
                            tracing::info!(
                                parts = s.parts,
                                blobs = s.blobs,
                                "media collector removed abandoned uploads and unreferenced blobs"
                            );
                        }
                        Err(e) => {
                            counters
                                .collector_failures
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            tracing::error!(error = %e, "media collector pass failed");
                        }
                    },
                    _ => return,
                }
            })?;
        Ok(GcThread { stop, handle })
    }

    pub fn shutdown(self) {
        let _ = self.stop.send(());
        if self.handle.join().is_err() {
            tracing::error!("the media collector panicked");
        }
    }
}
