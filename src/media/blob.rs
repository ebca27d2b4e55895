//! Where media bytes live: the [`BlobStore`] boundary and its file implementation.
//!
//! The chat engine and the garbage collector only speak [`BlobStore`], so an object store can
//! take the place of [`FileBlobs`] later. RocksDB keeps what is *about* a blob (its header, who
//! uploaded it, which threads refer to it); the bytes are here.
//!
//! Layout under `<data-dir>/media/`:
//!
//! ```text
//! parts/<user hex>-<hash hex>.part    an upload in progress (one per user and content)
//! blobs/ab/cd/<hash hex>              a stored blob, fanned out by the first two hash bytes
//! ```
//!
//! A part is written in place at the offsets the client sends; when it is complete it is
//! fsynced, renamed into `blobs/`, and the folder fsynced, so a blob's path exists only once
//! its bytes are durable. Reads open the blob and read at the offset (`pread`), never from the
//! start.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::store::keys::MEDIA_ID;

/// A media id: the BLAKE3 hash of the content.
pub type MediaId = [u8; MEDIA_ID];

/// An upload in progress: one per user and content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartId {
    pub user: u64,
    pub media: MediaId,
}

/// Storage of media bytes. Every method may block on the disk: call them off the event
/// loops where they can take long (reads on the read pool, sweeps on the collector thread).
pub trait BlobStore: Send + Sync {
    /// Starts the part `part` empty (truncating what a forgotten earlier attempt left).
    fn create_part(&self, part: &PartId) -> io::Result<()>;
    /// Writes `data` at `offset` of the part. `NotFound` when the part is gone (collected).
    fn write_part(&self, part: &PartId, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Makes the part durable and publishes it as the blob `part.media`. If that blob exists
    /// already (same content, uploaded by someone else meanwhile), the part is dropped.
    fn publish(&self, part: &PartId) -> io::Result<()>;
    /// Drops a part (an upload abandoned or refused).
    fn discard_part(&self, part: &PartId) -> io::Result<()>;
    /// Reads up to `buf.len()` bytes of blob `media` from `offset`; returns how many (fewer
    /// only at the end). `NotFound` when there is no such blob.
    fn read_at(&self, media: &MediaId, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Deletes blob `media` (absent already is fine).
    fn delete(&self, media: &MediaId) -> io::Result<()>;
    /// Whether blob `media` exists.
    fn contains(&self, media: &MediaId) -> io::Result<bool>;
    /// Up to `max` parts last written before `before`: abandoned uploads, for the collector.
    fn stale_parts(&self, before: SystemTime, max: usize) -> io::Result<Vec<PartId>>;
}

/// Blobs as files under one folder (see the module docs for the layout).
pub struct FileBlobs {
    root: PathBuf,
}

impl FileBlobs {
    /// Blobs under `root` (created on first write).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    fn parts(&self) -> PathBuf {
        self.root.join("parts")
    }

    fn part_path(&self, part: &PartId) -> PathBuf {
        self.parts().join(format!(
            "{:016x}-{}.part",
            part.user,
            hex::encode(part.media)
        ))
    }

    /// `blobs/ab/cd/<hex>`.
    pub fn blob_path(&self, media: &MediaId) -> PathBuf {
        self.root
            .join("blobs")
            .join(hex::encode(&media[..1]))
            .join(hex::encode(&media[1..2]))
            .join(hex::encode(media))
    }

    fn parse_part_name(name: &str) -> Option<PartId> {
        let stem = name.strip_suffix(".part")?;
        let (user, media) = stem.split_once('-')?;
        let user = u64::from_str_radix(user, 16).ok()?;
        let media: MediaId = hex::decode(media).ok()?.try_into().ok()?;
        Some(PartId { user, media })
    }
}

/// Starts writing `len` bytes at `offset` of `file` to disk without waiting (like RocksDB's
/// `bytes_per_sync`), so the fsync at publish finds little left to write instead of a whole
/// upload. Best effort: an error only means the fsync will do that work.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: usize) {
    use std::os::fd::AsRawFd;
    // SAFETY: sync_file_range only reads its integer arguments; the descriptor is open for as
    // long as `file` is borrowed, and SYNC_FILE_RANGE_WRITE neither waits nor changes data.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: usize) {}

/// Fsyncs a folder, so that a rename or create in it is durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl BlobStore for FileBlobs {
    fn create_part(&self, part: &PartId) -> io::Result<()> {
        fs::create_dir_all(self.parts())?;
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.part_path(part))
            .map(drop)
    }

    fn write_part(&self, part: &PartId, offset: u64, data: &[u8]) -> io::Result<()> {
        let file = OpenOptions::new().write(true).open(self.part_path(part))?;
        file.write_all_at(data, offset)?;
        start_writeback(&file, offset, data.len());
        Ok(())
    }

    fn publish(&self, part: &PartId) -> io::Result<()> {
        let from = self.part_path(part);
        let to = self.blob_path(&part.media);
        if to.exists() {
            return self.discard_part(part);
        }
        File::open(&from)?.sync_all()?;
        let dir = to.parent().expect("a blob path has a folder");
        fs::create_dir_all(dir)?;
        fs::rename(&from, &to)?;
        sync_dir(dir)
    }

    fn discard_part(&self, part: &PartId) -> io::Result<()> {
        match fs::remove_file(self.part_path(part)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn read_at(&self, media: &MediaId, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        let file = File::open(self.blob_path(media))?;
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(got)
    }

    fn delete(&self, media: &MediaId) -> io::Result<()> {
        match fs::remove_file(self.blob_path(media)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn contains(&self, media: &MediaId) -> io::Result<bool> {
        self.blob_path(media).try_exists()
    }

    fn stale_parts(&self, before: SystemTime, max: usize) -> io::Result<Vec<PartId>> {
        let entries = match fs::read_dir(self.parts()) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other?,
        };
        let mut out = Vec::new();
        for entry in entries {
            if out.len() >= max {
                break;
            }
            let entry = entry?;
            let Some(part) = entry.file_name().to_str().and_then(Self::parse_part_name) else {
                continue;
            };
            if entry.metadata()?.modified()? < before {
                out.push(part);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_becomes_a_blob_read_at_any_offset() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = FileBlobs::new(dir.path().join("media"));
        let part = PartId {
            user: 7,
            media: [0xab; MEDIA_ID],
        };
        blobs.create_part(&part).unwrap();
        blobs.write_part(&part, 0, b"hello ").unwrap();
        blobs.write_part(&part, 6, b"world").unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(
            blobs.read_at(&part.media, 0, &mut buf).unwrap_err().kind(),
            io::ErrorKind::NotFound,
            "a part is not readable before it is published"
        );
        assert!(!blobs.contains(&part.media).unwrap());
        blobs.publish(&part).unwrap();
        assert!(blobs.contains(&part.media).unwrap());
        assert_eq!(blobs.read_at(&part.media, 3, &mut buf).unwrap(), 4);
        assert_eq!(&buf, b"lo w");
        assert_eq!(blobs.read_at(&part.media, 9, &mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"ld");
        assert!(blobs
            .blob_path(&part.media)
            .starts_with(dir.path().join("media/blobs/ab/ab")));
        blobs.delete(&part.media).unwrap();
        blobs.delete(&part.media).unwrap();
        assert!(blobs.read_at(&part.media, 0, &mut buf).is_err());
    }

    #[test]
    fn stale_parts_are_listed_and_a_collected_part_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = FileBlobs::new(dir.path().to_path_buf());
        let part = PartId {
            user: u64::MAX,
            media: [1; MEDIA_ID],
        };
        blobs.create_part(&part).unwrap();
        let future = SystemTime::now() + std::time::Duration::from_secs(60);
        assert_eq!(blobs.stale_parts(future, 10).unwrap(), vec![part]);
        assert!(blobs
            .stale_parts(SystemTime::UNIX_EPOCH, 10)
            .unwrap()
            .is_empty());
        blobs.discard_part(&part).unwrap();
        let err = blobs.write_part(&part, 0, b"x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
