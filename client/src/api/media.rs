//! Media upload in chunks and download in ranges.

use bytes::Bytes;
use courier_protocol::{
    MediaBegin, MediaChunk, MediaCommit, MediaData, MediaGet, MediaRef, MediaUpload,
};

use crate::client::expect_reply;
use crate::{Client, ErrorCode, Result};

/// Room left in a frame for the header and the fixed fields around the data.
const FRAME_OVERHEAD: u32 = 128;
/// Waits after a `RATE_LIMITED` chunk or range: doubling from the first to the last, then
/// giving up (the server's per-connection rate limit, 500 requests/s by default, is easily
/// reached by an upload in 32 KiB chunks on a fast link).
const PACE_FIRST: std::time::Duration = std::time::Duration::from_millis(5);
const PACE_MAX: std::time::Duration = std::time::Duration::from_millis(500);
const PACE_TRIES: u32 = 40;

/// Runs `request` again after a pause while the server answers `RATE_LIMITED` (it dropped
/// the request, so a retry cannot apply it twice).
fn paced<T>(mut request: impl FnMut() -> Result<T>) -> Result<T> {
    let mut wait = PACE_FIRST;
    let mut tries = 0;
    loop {
        match request() {
            Err(e) if e.code() == Some(ErrorCode::RateLimited) && tries < PACE_TRIES => {
                std::thread::sleep(wait);
                wait = (wait * 2).min(PACE_MAX);
                tries += 1;
            }
            other => return other,
        }
    }
}

impl Client {
    /// Starts, or resumes, the upload of `total_len` bytes whose BLAKE3 hash is `hash` (the
    /// media id). `MediaUpload.offset` is where to continue; `total_len` means nothing is
    /// left to send.
    pub fn media_begin(&self, total_len: u64, mime: &str, hash: &[u8; 32]) -> Result<MediaUpload> {
        expect_reply!(
            self.call(MediaBegin {
                total_len,
                mime: mime.into(),
                hash: Bytes::copy_from_slice(hash),
            }),
            "MediaBegin",
            MediaUpload
        )
    }

    /// Sends one chunk; `offset` must be the number of bytes sent so far.
    pub fn media_chunk(&self, upload: u64, offset: u64, data: impl Into<Bytes>) -> Result<()> {
        expect_reply!(
            self.call(MediaChunk {
                upload,
                offset,
                data: data.into()
            }),
            "MediaChunk",
            Done
        )
        .map(drop)
    }

    /// Finishes an upload; the returned media id goes into a `Media`-kind message.
    pub fn media_commit(&self, upload: u64) -> Result<MediaRef> {
        expect_reply!(self.call(MediaCommit { upload }), "MediaCommit", MediaRef)
    }

    /// Reads up to `max_len` bytes of a media object from `offset`.
    pub fn media_get(&self, media: &[u8], offset: u64, max_len: u32) -> Result<MediaData> {
        let request = MediaGet {
            media: Bytes::copy_from_slice(media),
            offset,
            max_len,
        };
        expect_reply!(self.call(request), "MediaGet", MediaData)
    }

    /// Uploads `data` whole: begin (or resume where the server is), chunks no larger than
    /// the server allows, commit. Content the server already has is not sent again.
    pub fn upload_media(&self, mime: &str, data: &[u8]) -> Result<MediaRef> {
        let hash = blake3::hash(data);
        let upload = paced(|| self.media_begin(data.len() as u64, mime, hash.as_bytes()))?;
        let frame_room = self.max_frame()?.saturating_sub(FRAME_OVERHEAD).max(1);
        let chunk = upload.chunk_max.min(frame_room).max(1) as usize;
        let start = (upload.offset as usize).min(data.len());
        let mut offset = start;
        for piece in data[start..].chunks(chunk) {
            let piece = Bytes::copy_from_slice(piece);
            paced(|| self.media_chunk(upload.upload, offset as u64, piece.clone()))?;
            offset += piece.len();
        }
        paced(|| self.media_commit(upload.upload))
    }

    /// Uploads a file, resuming an upload of the same content that a dropped connection
    /// left on the server; reads only the part not sent yet.
    pub fn upload_file(&self, path: &std::path::Path, mime: &str) -> Result<MediaRef> {
        use std::io::{Read, Seek, SeekFrom};
        let io = |source| crate::Error::File {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(&mut file).map_err(io)?;
        let total = file.metadata().map_err(io)?.len();
        let hash = hasher.finalize();
        let upload = paced(|| self.media_begin(total, mime, hash.as_bytes()))?;
        let frame_room = self.max_frame()?.saturating_sub(FRAME_OVERHEAD).max(1);
        let chunk = upload.chunk_max.min(frame_room).max(1) as usize;
        let mut offset = upload.offset.min(total);
        file.seek(SeekFrom::Start(offset)).map_err(io)?;
        let mut buf = vec![0u8; chunk];
        while offset < total {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            let piece = Bytes::copy_from_slice(&buf[..n]);
            paced(|| self.media_chunk(upload.upload, offset, piece.clone()))?;
            offset += n as u64;
        }
        paced(|| self.media_commit(upload.upload))
    }

    /// Downloads a media object into `path`, continuing after the bytes the file already
    /// holds (a download cut short resumes); returns the media's total length.
    pub fn download_file(&self, media: &[u8], path: &std::path::Path) -> Result<u64> {
        let io = |source| crate::Error::File {
            path: path.display().to_string(),
            source,
        };
        let existed = path.exists();
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let result = self.download_into(media, &mut file, path);
        if result.is_err() && !existed && file.metadata().is_ok_and(|m| m.len() == 0) {
            // Refused before any byte came (unknown media, not allowed): leave no empty file.
            let _ = std::fs::remove_file(path);
        }
        result
    }

    /// Appends the media from the file's current length to its end.
    fn download_into(
        &self,
        media: &[u8],
        file: &mut std::fs::File,
        path: &std::path::Path,
    ) -> Result<u64> {
        use std::io::Write;
        let io = |source| crate::Error::File {
            path: path.display().to_string(),
            source,
        };
        let mut at = file.metadata().map_err(io)?.len();
        let room = self.max_frame()?.saturating_sub(FRAME_OVERHEAD).max(1);
        loop {
            let part = paced(|| self.media_get(media, at, room))?;
            file.write_all(&part.data).map_err(io)?;
            at += part.data.len() as u64;
            if part.data.is_empty() || at >= part.total_len {
                file.sync_all().map_err(io)?;
                return Ok(part.total_len);
            }
        }
    }

    /// Downloads a media object whole.
    pub fn download_media(&self, media: &[u8]) -> Result<Vec<u8>> {
        let room = self.max_frame()?.saturating_sub(FRAME_OVERHEAD).max(1);
        let mut out = Vec::new();
        loop {
            let part = paced(|| self.media_get(media, out.len() as u64, room))?;
            out.extend_from_slice(&part.data);
            if part.data.is_empty() || out.len() as u64 >= part.total_len {
                return Ok(out);
            }
        }
    }
}
