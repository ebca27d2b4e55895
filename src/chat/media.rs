//! Media in chunks. An upload gets a random 16-byte media id at MEDIA_BEGIN; chunks are
//! stored under it as they arrive (in order), and MEDIA_COMMIT writes the header that makes it
//! readable. The id is unguessable and serves as the capability to download: whoever was sent
//! the id in a message can fetch the media, as in the seed design's "hash with the location".

use std::collections::HashMap;

use courier_protocol::{
    Done, ErrorCode, Frame, MediaBegin, MediaChunk, MediaData, MediaGet, MediaRef, MediaUpload,
};

use super::engine::{Engine, Reject};
use super::threads::internal;
use super::Shared;
use crate::caller::Caller;
use crate::clock::wall_us;
use crate::store::keys::MEDIA_ID;
use crate::store::MediaHeader;

/// Uploads in progress on one shard, with a cap so abandoned ones cannot pile up.
#[derive(Default)]
pub(super) struct Uploads {
    map: HashMap<u64, Upload>,
}

/// Longest MIME type, in bytes (RFC 6838: a 127-byte type, `/`, a 127-byte subtype).
const MAX_MIME: usize = 255;
/// The bytes of a MEDIA_CHUNK frame besides its data (counted in `len`): type, request id,
/// upload, offset, the data's length.
pub const MEDIA_CHUNK_OVERHEAD: u32 = 1 + 4 + 8 + 8 + 4;

/// Uploads in progress per shard before the oldest are forgotten.
const MAX_UPLOADS: usize = 4096;
/// An upload with no chunk for this long (µs) is forgotten, so an abandoned one does not hold
/// a place under its user's cap for good.
const UPLOAD_IDLE_US: u64 = 600_000_000;

struct Upload {
    user: u64,
    /// When the upload began or last took a chunk (µs).
    touched: u64,
    media: [u8; MEDIA_ID],
    total: u64,
    received: u64,
    mime: String,
}

impl Engine {
    pub(super) fn media_begin(
        &mut self,
        caller: &Caller,
        f: MediaBegin,
    ) -> Result<Option<Frame>, Reject> {
        if f.total_len == 0 {
            return Err((
                ErrorCode::InvalidArgument,
                "empty media cannot be uploaded: total_len must be at least 1 byte",
            ));
        }
        if f.total_len > self.shared.config.max_media {
            return Err((
                ErrorCode::MediaTooLarge,
                "the media is over the server's size limit (16 MiB by default)",
            ));
        }
        if f.mime.is_empty() || f.mime.len() > MAX_MIME {
            return Err((
                ErrorCode::InvalidArgument,
                "a MIME type is 1 to 255 bytes (application/octet-stream when unknown)",
            ));
        }
        let now = wall_us();
        self.uploads
            .map
            .retain(|_, u| now.saturating_sub(u.touched) <= UPLOAD_IDLE_US);
        let mine = self
            .uploads
            .map
            .values()
            .filter(|u| u.user == caller.user)
            .count();
        if mine >= self.shared.config.max_uploads_per_user {
            return Err((
                ErrorCode::TooManyUploads,
                "you have as many uploads in progress as you may; commit them first (an upload with no chunk for 10 minutes is forgotten)",
            ));
        }
        if self.uploads.map.len() >= MAX_UPLOADS {
            // Forget the oldest upload (lowest id: ids are clock values).
            if let Some(&oldest) = self.uploads.map.keys().min() {
                self.uploads.map.remove(&oldest);
            }
        }
        let upload = self.shared.clock.tick();
        let media: [u8; MEDIA_ID] = rand::random();
        self.uploads.map.insert(
            upload,
            Upload {
                user: caller.user,
                touched: now,
                media,
                total: f.total_len,
                received: 0,
                mime: f.mime,
            },
        );
        Ok(Some(
            MediaUpload {
                upload,
                chunk_max: self.shared.config.media_chunk,
            }
            .into(),
        ))
    }

    fn upload(&mut self, caller: &Caller, upload: u64) -> Result<&mut Upload, Reject> {
        match self.uploads.map.get_mut(&upload) {
            Some(u) if u.user == caller.user => Ok(u),
            _ => Err((
                ErrorCode::UnknownMedia,
                "no such upload in progress on this connection",
            )),
        }
    }

    pub(super) fn media_chunk(
        &mut self,
        caller: &Caller,
        f: MediaChunk,
    ) -> Result<Option<Frame>, Reject> {
        let chunk_max = self.shared.config.media_chunk as usize;
        let up = self.upload(caller, f.upload)?;
        if f.offset != up.received {
            return Err((
                ErrorCode::BadOffset,
                "chunks must arrive in order: offset must equal the bytes sent so far",
            ));
        }
        if f.data.is_empty()
            || f.data.len() > chunk_max
            || up.received + f.data.len() as u64 > up.total
        {
            return Err((
                ErrorCode::MediaTooLarge,
                "the chunk is empty, over chunk_max, or past the announced length",
            ));
        }
        up.received += f.data.len() as u64;
        up.touched = wall_us();
        let media = up.media;
        self.batch.put_media_chunk(&media, f.offset, &f.data);
        Ok(Some(Done {}.into()))
    }

    pub(super) fn media_commit(
        &mut self,
        caller: &Caller,
        upload: u64,
    ) -> Result<Option<Frame>, Reject> {
        let up = self.upload(caller, upload)?;
        if up.received != up.total {
            return Err((ErrorCode::BadOffset, "the upload is incomplete"));
        }
        let (media, total) = (up.media, up.total);
        let header = MediaHeader {
            total_len: total,
            mime: std::mem::take(&mut up.mime),
            uploader: caller.user,
        };
        self.uploads.map.remove(&upload);
        self.batch.put_media_header(&media, &header);
        Ok(Some(
            MediaRef {
                media: media.to_vec().into(),
                total_len: total,
            }
            .into(),
        ))
    }
}

/// Up to `max_len` bytes of committed media from `offset` (runs on the read pool). The media
/// id is the capability: no membership is checked.
pub(super) fn media_get(shared: &Shared, f: MediaGet) -> Result<Option<Frame>, Reject> {
    let unknown = (ErrorCode::UnknownMedia, "no such media");
    let media: [u8; MEDIA_ID] = f.media.as_ref().try_into().map_err(|_| unknown)?;
    let store = &shared.store;
    let header = store
        .media_header(&media)
        .map_err(internal)?
        .ok_or(unknown)?;
    if f.offset > header.total_len {
        return Err((ErrorCode::BadOffset, "offset is past the end of the media"));
    }
    let want = (f.max_len as u64).min(shared.config.max_reply_bytes as u64 - 256);
    let end = (f.offset + want).min(header.total_len);
    let mut data = Vec::with_capacity((end - f.offset) as usize);
    store
        .media_range(&media, f.offset, end, &mut data)
        .map_err(internal)?;
    Ok(Some(
        MediaData {
            media: f.media,
            total_len: header.total_len,
            offset: f.offset,
            data: data.into(),
        }
        .into(),
    ))
}
