//! Media upload in chunks and download in ranges.

use bytes::Bytes;
use courier_protocol::{
    Frame, MediaBegin, MediaChunk, MediaCommit, MediaData, MediaGet, MediaRef, MediaUpload,
};

use crate::{Client, ErrorCode, Result};

/// Room left in a frame for the header and the fixed fields around the data.
const FRAME_OVERHEAD: u32 = 128;
/// Waits after a `RATE_LIMITED` chunk or range: doubling from the first to the last, then
/// giving up (the server's per-connection rate limit, 500 requests/s by default, is easily
/// reached by an upload in 32 KiB chunks on a fast link).
const PACE_FIRST: std::time::Duration = std::time::Duration::from_millis(5);
const PACE_MAX: std::time::Duration = std::time::Duration::from_millis(500);
const PACE_TRIES: u32 = 40;
/// Chunks of one upload in flight at once: an upload is not one round trip per chunk.
pub const UPLOAD_WINDOW: usize = 8;

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

requests! {
    /// Starts, or resumes, the upload of `total_len` bytes whose BLAKE3 hash is `hash` (the
    /// media id). `MediaUpload.offset` is where to continue; `total_len` means nothing is
    /// left to send.
    pub fn media_begin(total_len: u64, mime: &str, hash: &[u8; 32]) -> MediaUpload {
        MediaBegin { total_len, mime: mime.into(), hash: Bytes::copy_from_slice(hash) } => MediaUpload(reply) => reply
    }

    /// Sends one chunk; `offset` must be the number of bytes sent so far.
    pub fn media_chunk(upload: u64, offset: u64, data: impl Into<Bytes>) -> () {
        MediaChunk { upload, offset, data: data.into() } => Done(_) => ()
    }

    /// Finishes an upload; the returned media id goes into a `Media`-kind message.
    pub fn media_commit(upload: u64) -> MediaRef {
        MediaCommit { upload } => MediaRef(reply) => reply
    }

    /// Reads up to `max_len` bytes of a media object from `offset`. `thread`: where the
    /// caller saw it (the message's thread; 0 when unknown), which the server checks first.
    pub fn media_get(media: &[u8], thread: u64, offset: u64, max_len: u32) -> MediaData {
        MediaGet { media: Bytes::copy_from_slice(media), offset, max_len, thread } => MediaData(reply) => reply
    }
}

impl Client {
    /// Uploads `data` whole: begin (or resume where the server is), chunks no larger than
    /// the server allows with several in flight, commit. Content the server already has is
    /// not sent again.
    pub fn upload_media(&self, mime: &str, data: &[u8]) -> Result<MediaRef> {
        let hash = *blake3::hash(data).as_bytes();
        let upload = self.send_chunks(data.len() as u64, mime, &hash, |at, n| {
            Ok(Bytes::copy_from_slice(&data[at as usize..at as usize + n]))
        })?;
        paced(|| self.media_commit(upload))
    }

    /// Uploads a file, resuming an upload of the same content that a dropped connection
    /// left on the server; reads only the part not sent yet.
    pub fn upload_file(&self, path: &std::path::Path, mime: &str) -> Result<MediaRef> {
        use std::os::unix::fs::FileExt;
        let io = |source| crate::Error::File {
            path: path.display().to_string(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(&mut file).map_err(io)?;
        let total = file.metadata().map_err(io)?.len();
        let hash = *hasher.finalize().as_bytes();
        let upload = self.send_chunks(total, mime, &hash, |at, n| {
            let mut buf = vec![0u8; n];
            file.read_exact_at(&mut buf, at).map_err(io)?;
            Ok(buf.into())
        })?;
        paced(|| self.media_commit(upload))
    }

    /// Begins (or resumes) an upload and sends the content from the server's offset to the
    /// end, [`UPLOAD_WINDOW`] chunks in flight; `read(offset, len)` gives the content. When
    /// the server refuses a chunk (`RATE_LIMITED` drops it, and the chunks after it are then
    /// out of order: `BAD_OFFSET`), it waits, asks the server where it is (`MEDIA_BEGIN` of the
    /// same content answers the offset) and continues from there. Returns the upload id.
    fn send_chunks(
        &self,
        total: u64,
        mime: &str,
        hash: &[u8; 32],
        mut read: impl FnMut(u64, usize) -> Result<Bytes>,
    ) -> Result<u64> {
        let frame_room = self.max_frame()?.saturating_sub(FRAME_OVERHEAD).max(1);
        let timeout = self.inner().config.request_timeout;
        let (mut wait, mut tries) = (PACE_FIRST, 0);
        loop {
            let upload = paced(|| self.media_begin(total, mime, hash))?;
            let chunk = upload.chunk_max.min(frame_room).max(1) as u64;
            let conn = self.inner().current()?;
            let mut offset = upload.offset.min(total);
            let mut in_flight = std::collections::VecDeque::with_capacity(UPLOAD_WINDOW);
            let mut failed = None;
            loop {
                while failed.is_none() && offset < total && in_flight.len() < UPLOAD_WINDOW {
                    let n = chunk.min(total - offset);
                    let frame = MediaChunk {
                        upload: upload.upload,
                        offset,
                        data: read(offset, n as usize)?,
                    };
                    match conn.start(&frame.into()) {
                        Ok(pending) => in_flight.push_back(pending),
                        Err(e) => failed = Some(e),
                    }
                    offset += n;
                }
                let Some(pending) = in_flight.pop_front() else {
                    break;
                };
                let answer = match conn.finish(pending, timeout) {
                    Ok(Frame::Done(_)) => continue,
                    Ok(other) => crate::Error::UnexpectedReply {
                        request: "MediaChunk",
                        reply: other.name(),
                    },
                    Err(e) => e,
                };
                // Keep the first failure; the rest of the window only echoes it.
                failed.get_or_insert(answer);
            }
            match failed {
                None => return Ok(upload.upload),
                Some(e)
                    if matches!(
                        e.code(),
                        Some(ErrorCode::RateLimited | ErrorCode::BadOffset)
                    ) && tries < PACE_TRIES =>
                {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(PACE_MAX);
                    tries += 1;
                }
                Some(e) => return Err(e),
            }
        }
    }

    /// Downloads a media object into `path`, continuing after the bytes the file already
    /// holds (a download cut short resumes); returns the media's total length.
    pub fn download_file(&self, media: &[u8], thread: u64, path: &std::path::Path) -> Result<u64> {
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
        let result = self.download_into(media, thread, &mut file, path);
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
        thread: u64,
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
            let part = paced(|| self.media_get(media, thread, at, room))?;
            file.write_all(&part.data).map_err(io)?;
            at += part.data.len() as u64;
            if part.data.is_empty() || at >= part.total_len {
                file.sync_all().map_err(io)?;
                return Ok(part.total_len);
            }
        }
    }

    /// Downloads a media object whole (`thread`: where it was seen, 0 when unknown).
    pub fn download_media(&self, media: &[u8], thread: u64) -> Result<Vec<u8>> {
        let room = self.max_frame()?.saturating_sub(FRAME_OVERHEAD).max(1);
        let mut out = Vec::new();
        loop {
            let part = paced(|| self.media_get(media, thread, out.len() as u64, room))?;
            out.extend_from_slice(&part.data);
            if part.data.is_empty() || out.len() as u64 >= part.total_len {
                return Ok(out);
            }
        }
    }
}

#[cfg(feature = "tokio")]
impl crate::AsyncClient {
    /// Uploads `data` whole: begin (content the server already has is not sent again),
    /// chunks no larger than the server allows, commit.
    pub async fn upload_media(&self, mime: &str, data: &[u8]) -> Result<MediaRef> {
        let hash = *blake3::hash(data).as_bytes();
        let upload = self.media_begin(data.len() as u64, mime, &hash).await?;
        let room = self.max_frame()?.saturating_sub(FRAME_OVERHEAD).max(1);
        let chunk = upload.chunk_max.min(room).max(1) as usize;
        let mut offset = (upload.offset as usize).min(data.len());
        while offset < data.len() {
            let piece = Bytes::copy_from_slice(&data[offset..(offset + chunk).min(data.len())]);
            let len = piece.len();
            self.media_chunk(upload.upload, offset as u64, piece)
                .await?;
            offset += len;
        }
        self.media_commit(upload.upload).await
    }

    /// Downloads a media object whole; `thread` as in [`media_get`](Self::media_get).
    pub async fn download_media(&self, media: &[u8], thread: u64) -> Result<Vec<u8>> {
        let room = self.max_frame()?.saturating_sub(FRAME_OVERHEAD).max(1);
        let mut out = Vec::new();
        loop {
            let part = self
                .media_get(media, thread, out.len() as u64, room)
                .await?;
            out.extend_from_slice(&part.data);
            if part.data.is_empty() || out.len() as u64 >= part.total_len {
                return Ok(out);
            }
        }
    }
}
