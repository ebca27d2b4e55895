//! Media upload in chunks and download in ranges.

use bytes::Bytes;
use courier_protocol::{
    MediaBegin, MediaChunk, MediaCommit, MediaData, MediaGet, MediaRef, MediaUpload,
};

use crate::{Client, Result};

/// Room left in a frame for the header and the fixed fields around the data.
const FRAME_OVERHEAD: u32 = 128;

/// The most data one frame carries, given the server's frame limit.
fn frame_room(max_frame: u32) -> u32 {
    max_frame.saturating_sub(FRAME_OVERHEAD).max(1)
}

/// The size of each `MEDIA_CHUNK` of an upload: what the server takes per chunk and per frame.
fn chunk_len(upload: &MediaUpload, max_frame: u32) -> usize {
    upload.chunk_max.min(frame_room(max_frame)).max(1) as usize
}

/// Whether a download that has `have` bytes, after a `MEDIA_DATA` of `part`, is whole.
fn download_done(part: &MediaData, have: usize) -> bool {
    part.data.is_empty() || have as u64 >= part.total_len
}

requests! {
    /// Starts an upload of `total_len` bytes.
    pub fn media_begin(total_len: u64, mime: &str) -> MediaUpload {
        MediaBegin { total_len, mime: mime.into() } => MediaUpload(reply) => reply
    }

    /// Sends one chunk; `offset` must be the number of bytes sent so far.
    pub fn media_chunk(upload: u64, offset: u64, data: impl Into<Bytes>) -> () {
        MediaChunk { upload, offset, data: data.into() } => Done(_) => ()
    }

    /// Finishes an upload; the returned media id goes into a `Media`-kind message.
    pub fn media_commit(upload: u64) -> MediaRef {
        MediaCommit { upload } => MediaRef(reply) => reply
    }

    /// Reads up to `max_len` bytes of a media object from `offset`.
    pub fn media_get(media: &[u8], offset: u64, max_len: u32) -> MediaData {
        MediaGet { media: Bytes::copy_from_slice(media), offset, max_len } => MediaData(reply) => reply
    }
}

impl Client {
    /// Uploads `data` whole: begin, chunks no larger than the server allows, commit.
    pub fn upload_media(&self, mime: &str, data: &[u8]) -> Result<MediaRef> {
        let upload = self.media_begin(data.len() as u64, mime)?;
        let chunk = chunk_len(&upload, self.max_frame()?);
        let mut offset = 0usize;
        for piece in data.chunks(chunk) {
            self.media_chunk(upload.upload, offset as u64, Bytes::copy_from_slice(piece))?;
            offset += piece.len();
        }
        self.media_commit(upload.upload)
    }

    /// Downloads a media object whole.
    pub fn download_media(&self, media: &[u8]) -> Result<Vec<u8>> {
        let room = frame_room(self.max_frame()?);
        let mut out = Vec::new();
        loop {
            let part = self.media_get(media, out.len() as u64, room)?;
            out.extend_from_slice(&part.data);
            if download_done(&part, out.len()) {
                return Ok(out);
            }
        }
    }
}

#[cfg(feature = "tokio")]
impl crate::AsyncClient {
    /// Uploads `data` whole: begin, chunks no larger than the server allows, commit.
    pub async fn upload_media(&self, mime: &str, data: &[u8]) -> Result<MediaRef> {
        let upload = self.media_begin(data.len() as u64, mime).await?;
        let chunk = chunk_len(&upload, self.max_frame()?);
        let mut offset = 0usize;
        for piece in data.chunks(chunk) {
            let piece = Bytes::copy_from_slice(piece);
            let len = piece.len();
            self.media_chunk(upload.upload, offset as u64, piece)
                .await?;
            offset += len;
        }
        self.media_commit(upload.upload).await
    }

    /// Downloads a media object whole.
    pub async fn download_media(&self, media: &[u8]) -> Result<Vec<u8>> {
        let room = frame_room(self.max_frame()?);
        let mut out = Vec::new();
        loop {
            let part = self.media_get(media, out.len() as u64, room).await?;
            out.extend_from_slice(&part.data);
            if download_done(&part, out.len()) {
                return Ok(out);
            }
        }
    }
}
