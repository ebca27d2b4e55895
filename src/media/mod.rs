//! Media storage: blobs behind the [`BlobStore`] boundary ([`blob`]) and the garbage
//! collector that removes abandoned uploads and unreferenced blobs ([`gc`]). The requests
//! themselves (upload, commit, authorized download) are served by `chat::media`.

pub mod blob;
pub mod gc;

pub use blob::{BlobStore, FileBlobs, MediaId, PartId};

/// A media layer failure (the collector's; requests map theirs to error replies).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("media metadata: {0}")]
    Store(#[from] crate::store::Error),
    #[error("media files under the data directory: {0}. Check that its media/ folder is writable and the disk is not full")]
    Io(#[from] std::io::Error),
}
