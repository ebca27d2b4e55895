//! Media upload in chunks and download in ranges.

use bytes::Bytes;
use courier_protocol::{
    MediaBegin, MediaChunk, MediaCommit, MediaData, MediaGet, MediaRef, MediaUpload,
};

use crate::client::expect_reply;
use crate::{Client, Result};

/// Room left in a frame for the header and the fixed fields around the data.
const FRAME_OVERHEAD: u32 = 128;

impl Client {
    /// Starts an upload of `total_len` bytes.
    pub fn media_begin(&self, total_len: u64, mime: &str) -> Result<MediaUpload> {
        expect_reply!(
            self.call(MediaBegin {
                total_len,
                mime: mime.into()
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

    /// Uploads `data` whole: begin, chunks no larger than the server allows, commit.
    pub fn upload_media(&self, mime: &str, data: &[u8]) -> Result<MediaRef> {
        let upload = self.media_begin(data.len() as u64, mime)?;
        let frame_room = self.max_frame()?.saturating_sub(FRAME_OVERHEAD).max(1);
        let chunk = upload.chunk_max.min(frame_room).max(1) as usize;
        let mut offset = 0usize;
        for piece in data.chunks(chunk) {
            self.media_chunk(upload.upload, offset as u64, Bytes::copy_from_slice(piece))?;
            offset += piece.len();
        }
        self.media_commit(upload.upload)
    }

    /// Downloads a media object whole.
    pub fn download_media(&self, media: &[u8]) -> Result<Vec<u8>> {
        let room = self.max_frame()?.saturating_sub(FRAME_OVERHEAD).max(1);
        let mut out = Vec::new();
        loop {
            let part = self.media_get(media, out.len() as u64, room)?;
            out.extend_from_slice(&part.data);
            if part.data.is_empty() || out.len() as u64 >= part.total_len {
                return Ok(out);
            }
        }
    }
}
