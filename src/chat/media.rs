//! Media requests: content-addressed, resumable uploads and authorized ranged downloads.
//!
//! The media id is the BLAKE3 hash of the content. The client announces it at MEDIA_BEGIN;
//! chunks arrive in order, are written to a part file (see [`crate::media::blob`]) and hashed
//! as they come; MEDIA_COMMIT compares the hash and only then publishes the blob and writes its
//! header. A mismatch stores nothing.
//!
//! Uploads in progress live on the uploader's shard ([`Engine::shard_for`]), keyed by (user,
//! hash), so a MEDIA_BEGIN of the same content after a disconnect finds the upload and answers
//! the offset to continue from. They survive disconnects, not restarts (a restart forgets the
//! hasher's state; the part is collected and the upload starts again from 0).
//!
//! Identical content is stored once: a commit of a hash that is stored already drops its part
//! and only links the uploader. A MEDIA_BEGIN of stored content completes at once (offset =
//! total length) only for a caller who may already read it: the hash travels in messages, so
//! knowing it proves nothing, and anyone else must send the bytes (which are then verified
//! and dropped).
//!
//! Who may read: the uploaders, and the members of every thread in which a MEDIA message
//! referring to it was sent and not recalled (the thread's `t` link counts those messages).
//! Anyone else is answered UNKNOWN_MEDIA, like for an id that does not exist, so a refusal
//! does not tell whether the media exists.

use std::collections::HashMap;
use std::io;

use courier_protocol::{
    Done, ErrorCode, Frame, MediaBegin, MediaChunk, MediaData, MediaGet, MediaRef, MediaUpload,
};

use super::engine::{Engine, Reject};
use super::threads::internal;
use super::Shared;
use crate::caller::{Caller, UsersChecked};
use crate::clock::wall_us;
use crate::media::{MediaId, PartId};
use crate::store::keys::{MEDIA_ID, MEDIA_OWNER, MEDIA_THREAD};
use crate::store::MediaHeader;

/// Longest MIME type, in bytes (RFC 6838: a 127-byte type, `/`, a 127-byte subtype).
const MAX_MIME: usize = 255;
/// The bytes of a MEDIA_CHUNK frame besides its data (counted in `len`): type, request id,
/// upload, offset, the data's length.
pub const MEDIA_CHUNK_OVERHEAD: u32 = 1 + 4 + 8 + 8 + 4;

/// Uploads in progress per shard before the oldest are forgotten.
const MAX_UPLOADS: usize = 4096;
/// Referring threads looked at to authorize one read: a media sent in more threads than this
/// is readable by the members of the first ones (in thread id order) and by its uploaders.
pub const MAX_THREADS_CHECKED: usize = 1024;

const UNKNOWN: Reject = (
    ErrorCode::UnknownMedia,
    "no such media, or you may not read it: only its uploader and the members of threads it was sent in may",
);
const EXPIRED: Reject = (
    ErrorCode::UnknownMedia,
    "no such upload in progress (unknown, committed, or abandoned too long): send MEDIA_BEGIN again to learn where to continue",
);

/// Uploads in progress on one shard, with caps so abandoned ones cannot pile up.
#[derive(Default)]
pub(super) struct Uploads {
    map: HashMap<u64, Upload>,
    /// (user, content) → upload id.
    by_part: HashMap<PartId, u64>,
    /// Bytes committed this round per user: the store cannot see them before the commit.
    round_usage: HashMap<u64, u64>,
    /// The same for the sealed round the commit stage holds (see `chat::round`).
    sealed_usage: HashMap<u64, u64>,
}

impl Uploads {
    fn remove(&mut self, upload: u64) -> Option<Upload> {
        let up = self.map.remove(&upload)?;
        self.by_part.remove(&up.part);
        Some(up)
    }

    /// Forgets uploads idle for longer than `idle_us`; their parts are left to the collector.
    fn expire(&mut self, now: u64, idle_us: u64) {
        let Self { map, by_part, .. } = self;
        map.retain(|_, u| {
            let keep = now.saturating_sub(u.touched) <= idle_us;
            if !keep {
                by_part.remove(&u.part);
            }
            keep
        });
    }

    /// The round was committed inline (or a commit failed): the store shows all it will.
    pub(super) fn end_round(&mut self) {
        self.round_usage.clear();
        self.sealed_usage.clear();
    }

    /// The round was handed to the commit stage.
    pub(super) fn seal(&mut self) {
        std::mem::swap(&mut self.round_usage, &mut self.sealed_usage);
        self.round_usage.clear();
    }

    /// The sealed round is durable: the store now shows its usage.
    pub(super) fn durable(&mut self) {
        self.sealed_usage.clear();
    }

    /// Bytes staged for `user` and not yet durable.
    fn staged_usage(&self, user: u64) -> u64 {
        self.round_usage.get(&user).unwrap_or(&0) + self.sealed_usage.get(&user).unwrap_or(&0)
    }
}

struct Upload {
    part: PartId,
    /// When the upload began or last took a chunk (µs).
    touched: u64,
    total: u64,
    received: u64,
    mime: String,
    /// The hash of the bytes received so far.
    hasher: blake3::Hasher,
    /// The content is stored and the caller may read it: nothing to send, commit links them.
    stored: bool,
    /// The caller does not own this content yet: its size counts against their quota now and
    /// is added to their usage at commit.
    charged: bool,
}

/// The 32-byte media id in `bytes`, or `err`.
fn media_id(bytes: &[u8], err: Reject) -> Result<MediaId, Reject> {
    bytes.try_into().map_err(|_| err)
}

fn io_failed(e: io::Error) -> Reject {
    tracing::error!(error = %e, "media storage failed");
    (
        ErrorCode::Internal,
        "the server could not store or read this media; retry later",
    )
}

/// Where the bytes of media a caller may read are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// On this node.
    Here,
    /// On the cluster node with this id (the uploader's home), which serves them.
    Node(String),
}

impl Holder {
    /// Where the bytes of `media`, as sent in `thread`, are: the node its `MEDIA_HOLDER` row
    /// names, else here.
    fn of_thread(shared: &Shared, media: &MediaId, thread: u64) -> Result<Holder, Reject> {
        let value = shared
            .store
            .media_holder(media, thread)
            .map_err(internal)?
            .unwrap_or_default();
        Ok(match std::str::from_utf8(&value) {
            Ok(id) if !value.is_empty() && shared.node_id(shared.local_node()) != Some(id) => {
                Holder::Node(id.to_owned())
            }
            _ => Holder::Here,
        })
    }
}

/// Whether `user` may read `media`, and where its bytes are: an uploader (the bytes are
/// here, on the uploader's home), or a member of a thread it was sent in (the bytes are where
/// that thread's link says). `hint` (0: none) is a thread to try first: one lookup instead of
/// a walk over the threads.
pub(super) fn access(
    shared: &Shared,
    media: &MediaId,
    user: u64,
    hint: u64,
) -> Result<Option<Holder>, Reject> {
    let store = &shared.store;
    if store.is_media_owner(media, user).map_err(internal)? {
        return Ok(Some(Holder::Here));
    }
    if hint != 0
        && store
            .is_media_linked(MEDIA_THREAD, media, hint)
            .map_err(internal)?
        && store.member(hint, user).map_err(internal)?.is_some()
    {
        return Holder::of_thread(shared, media, hint).map(Some);
    }
    let (mut allowed, mut checked) = (None, 0);
    store
        .media_links(MEDIA_THREAD, media, |thread| {
            checked += 1;
            if store.member(thread, user)?.is_some() {
                allowed = Some(thread);
            }
            Ok(allowed.is_none() && checked < MAX_THREADS_CHECKED)
        })
        .map_err(internal)?;
    allowed
        .map(|thread| Holder::of_thread(shared, media, thread))
        .transpose()
}

/// Whether `user` may read `media` (see [`access`]).
pub(super) fn may_read(
    shared: &Shared,
    media: &MediaId,
    user: u64,
    hint: u64,
) -> Result<bool, Reject> {
    Ok(access(shared, media, user, hint)?.is_some())
}

/// On the sender's home, before a SEND of kind MEDIA goes to the thread's owner on another
/// node: whether this node holds the media the body names and the sender may read it. If so
/// the owner is told (`UsersChecked::MediaHeld`) and records this node as the holder; and a
/// link of the media to the thread is written here, so that the collector keeps the bytes
/// (the thread's own link is on its owner). The link is written before the owner's answer:
/// a SEND the owner then refuses keeps the blob from the collector, charged to its uploader
/// as before. Unsynced (a power cut may lose it, and the collector may then take the bytes
/// after `--media-grace-secs`, the race ARCHITECTURE.md "Media" already names).
pub fn held_for_send(shared: &Shared, caller: &Caller, thread: u64, body: &[u8]) -> bool {
    let Some(media) = body.get(..MEDIA_ID).and_then(|b| MediaId::try_from(b).ok()) else {
        return false;
    };
    let held = (|| -> Result<bool, Reject> {
        if shared
            .store
            .media_header(&media)
            .map_err(internal)?
            .is_none()
        {
            return Ok(false);
        }
        Ok(access(shared, &media, caller.user, 0)? == Some(Holder::Here))
    })();
    if held != Ok(true) {
        return false;
    }
    let mut batch = shared.store.batch();
    batch.add_media_thread_refs(&media, thread, 1);
    if let Err(e) = shared.store.commit_relaxed(batch) {
        tracing::error!(error = %e, "media: could not link media to a thread of another node; the SEND is checked there");
        return false;
    }
    true
}

/// What a MEDIA_GET comes to on this node.
pub enum MediaRead {
    /// The answer (MEDIA_DATA or an error).
    Answer(Result<Option<Frame>, Reject>),
    /// The caller may read it and the bytes are on the node with this id: ask it
    /// (`cluster::reads`), passing the request with the access checked.
    Elsewhere(String),
}

impl Engine {
    pub(super) fn media_begin(
        &mut self,
        caller: &Caller,
        f: MediaBegin,
    ) -> Result<Option<Frame>, Reject> {
        let config = &self.shared.config;
        if f.total_len == 0 {
            return Err((
                ErrorCode::InvalidArgument,
                "empty media cannot be uploaded: total_len must be at least 1 byte",
            ));
        }
        if f.total_len > config.max_media {
            return Err((
                ErrorCode::MediaTooLarge,
                "the media is over the server's size limit (100 MiB by default)",
            ));
        }
        if f.mime.is_empty() || f.mime.len() > MAX_MIME {
            return Err((
                ErrorCode::InvalidArgument,
                "a MIME type is 1 to 255 bytes (application/octet-stream when unknown)",
            ));
        }
        let media = media_id(
            &f.hash,
            (
                ErrorCode::InvalidArgument,
                "hash must be the 32-byte BLAKE3 hash of the whole content",
            ),
        )?;
        let (chunk_max, idle_us) = (config.media_chunk, config.upload_idle_us);
        let now = wall_us();
        self.uploads.expire(now, idle_us);
        let part = PartId {
            user: caller.user,
            media,
        };
        // The same content again: resume where the server is.
        if let Some(&upload) = self.uploads.by_part.get(&part) {
            let up = self.uploads.map.get_mut(&upload).expect("indexed upload");
            if up.total != f.total_len {
                return Err((
                    ErrorCode::InvalidArgument,
                    "this content is being uploaded with another total_len: the hash or the length is wrong",
                ));
            }
            up.touched = now;
            return Ok(Some(
                MediaUpload {
                    upload,
                    chunk_max,
                    offset: up.received,
                }
                .into(),
            ));
        }
        let stored = match self.shared.store.media_header(&media).map_err(internal)? {
            // The file is checked too: a header whose file the collector is deleting right
            // now must not make a new upload "complete at once" with no bytes behind it.
            Some(h) if h.total_len == f.total_len => {
                may_read(&self.shared, &media, caller.user, 0)?
                    && self.shared.blobs.contains(&media).map_err(io_failed)?
            }
            Some(_) => {
                return Err((
                    ErrorCode::InvalidArgument,
                    "content with this hash is stored with another length: the hash or total_len is wrong",
                ))
            }
            None => false,
        };
        let mine = self
            .uploads
            .map
            .values()
            .filter(|u| u.part.user == caller.user);
        // Content the caller already owns adds nothing to their usage.
        let (count, pending) = mine.fold((0, 0), |(n, b), u| {
            (n + 1, if u.charged { b + u.total } else { b })
        });
        if count >= self.shared.config.max_uploads_per_user {
            return Err((
                ErrorCode::TooManyUploads,
                "you have as many uploads in progress as you may; commit them first (an upload with no chunk for 10 minutes is forgotten)",
            ));
        }
        let charged = !self
            .shared
            .store
            .is_media_owner(&media, caller.user)
            .map_err(internal)?;
        if charged {
            self.settle();
            let used = self
                .shared
                .store
                .media_usage(caller.user)
                .map_err(internal)?
                + self.uploads.staged_usage(caller.user)
                + pending;
            if used.saturating_add(f.total_len) > self.shared.config.media_quota {
                return Err((
                    ErrorCode::MediaQuotaExceeded,
                    "this upload would take you over your media quota (stored plus in-progress uploads; 1 GiB by default)",
                ));
            }
        }
        if self.uploads.map.len() >= MAX_UPLOADS {
            // Forget the oldest upload (lowest id: ids are clock values).
            if let Some(&oldest) = self.uploads.map.keys().min() {
                self.uploads.remove(oldest);
            }
        }
        if !stored {
            self.shared.blobs.create_part(&part).map_err(io_failed)?;
        }
        let upload = self.shared.clock.tick();
        self.uploads.by_part.insert(part, upload);
        self.uploads.map.insert(
            upload,
            Upload {
                part,
                touched: now,
                total: f.total_len,
                received: if stored { f.total_len } else { 0 },
                mime: f.mime,
                hasher: blake3::Hasher::new(),
                stored,
                charged,
            },
        );
        Ok(Some(
            MediaUpload {
                upload,
                chunk_max,
                offset: if stored { f.total_len } else { 0 },
            }
            .into(),
        ))
    }

    fn upload(&mut self, caller: &Caller, upload: u64) -> Result<&mut Upload, Reject> {
        match self.uploads.map.get_mut(&upload) {
            Some(u) if u.part.user == caller.user => Ok(u),
            _ => Err(EXPIRED),
        }
    }

    pub(super) fn media_chunk(
        &mut self,
        caller: &Caller,
        f: MediaChunk,
    ) -> Result<Option<Frame>, Reject> {
        let chunk_max = self.shared.config.media_chunk as usize;
        let blobs = self.shared.blobs.clone();
        let up = self.upload(caller, f.upload)?;
        if f.offset != up.received {
            return Err((
                ErrorCode::BadOffset,
                "chunks must arrive in order: offset must equal the bytes sent so far (MEDIA_BEGIN again tells it)",
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
        match blobs.write_part(&up.part, f.offset, &f.data) {
            Ok(()) => {
                up.hasher.update(&f.data);
                up.received += f.data.len() as u64;
                up.touched = wall_us();
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The collector took the part of an upload idle for too long.
                self.uploads.remove(f.upload);
                return Err(EXPIRED);
            }
            Err(e) => return Err(io_failed(e)),
        }
        Ok(Some(Done {}.into()))
    }

    pub(super) fn media_commit(
        &mut self,
        caller: &Caller,
        upload: u64,
    ) -> Result<Option<Frame>, Reject> {
        let up = self.upload(caller, upload)?;
        if up.received != up.total {
            return Err((
                ErrorCode::BadOffset,
                "the upload is incomplete: send the rest first (MEDIA_BEGIN again tells the offset)",
            ));
        }
        let up = self.uploads.remove(upload).expect("found above");
        let blobs = &self.shared.blobs;
        let media = up.part.media;
        if !up.stored {
            if *up.hasher.finalize().as_bytes() != media {
                blobs.discard_part(&up.part).map_err(io_failed)?;
                return Err((
                    ErrorCode::MediaHashMismatch,
                    "the content's BLAKE3 hash is not the hash sent in MEDIA_BEGIN; nothing was stored: hash the file again and upload it anew",
                ));
            }
            blobs.publish(&up.part).map_err(io_failed)?;
        }
        let store = &self.shared.store;
        let header = store.media_header(&media).map_err(internal)?;
        if up.stored && header.is_none() {
            // Collected since MEDIA_BEGIN answered that it was stored.
            return Err(EXPIRED);
        }
        let uploader = header.as_ref().map_or(caller.user, |h| h.uploader);
        self.batch.put_media_header(
            &media,
            &MediaHeader {
                total_len: up.total,
                mime: up.mime,
                uploader,
                committed_at: wall_us(),
            },
        );
        if !store
            .is_media_owner(&media, caller.user)
            .map_err(internal)?
        {
            self.batch.put_media_link(MEDIA_OWNER, &media, caller.user);
            self.batch.add_media_usage(caller.user, up.total as i64);
            *self.uploads.round_usage.entry(caller.user).or_default() += up.total;
        }
        Ok(Some(
            MediaRef {
                media: media.to_vec().into(),
                total_len: up.total,
            }
            .into(),
        ))
    }

    /// Checks a MEDIA message's reference before it is stored: its body starts with the id of
    /// stored media the sender may read, here or, in a cluster, as the sender's home vouched
    /// (`UsersChecked::MediaHeld`: the home holds the bytes). Returns the id and where the
    /// bytes are, to be linked to the thread with [`link_media`](Self::link_media) once the
    /// message is staged.
    pub(super) fn media_reference(
        &self,
        caller: &Caller,
        thread: u64,
        body: &[u8],
    ) -> Result<(MediaId, Holder), Reject> {
        let unknown = (
            ErrorCode::UnknownMedia,
            "a MEDIA message's body starts with the 32-byte id of media you uploaded or may read",
        );
        let media = media_id(body.get(..MEDIA_ID).ok_or(unknown)?, unknown)?;
        let stored = self.shared.store.media_header(&media).map_err(internal)?;
        let local = self.shared.local_node();
        if caller.checked == UsersChecked::MediaHeld && caller.conn.node != local {
            if stored.is_some() {
                return Ok((media, Holder::Here));
            }
            let Some(id) = self.shared.node_id(caller.conn.node) else {
                return Err(unknown);
            };
            return Ok((media, Holder::Node(id.to_owned())));
        }
        // Sent in this thread before (a re-send, or a forward back): one lookup.
        match access(&self.shared, &media, caller.user, thread)? {
            Some(Holder::Here) if stored.is_some() => Ok((media, Holder::Here)),
            Some(holder @ Holder::Node(_)) => Ok((media, holder)),
            _ => Err(unknown),
        }
    }

    /// Records that a message of `thread` refers to `media`, whose bytes `holder` keeps: its
    /// members may read it.
    pub(super) fn link_media(&mut self, media: &MediaId, holder: &Holder, thread: u64) {
        self.batch.add_media_thread_refs(media, thread, 1);
        if let Holder::Node(id) = holder {
            self.batch.put_media_holder(media, thread, id.as_bytes());
        }
    }

    /// A message of `thread` that referred to stored media (a MEDIA message's `body`) is
    /// recalled: once no message of the thread refers to it, its members may no longer read
    /// it (its uploaders still may, and so may the members of other threads it was sent in).
    pub(super) fn unlink_media(&mut self, thread: u64, body: &[u8]) {
        if let Some(media) = body.get(..MEDIA_ID).and_then(|b| MediaId::try_from(b).ok()) {
            self.batch.add_media_thread_refs(&media, thread, -1);
        }
    }
}

/// Up to `max_len` bytes of stored media from `offset` (runs on the read pool: the read is a
/// `pread` at the offset). In a cluster, media whose bytes another node holds is
/// [`MediaRead::Elsewhere`]; a request that node passes on with `UsersChecked::MediaHeld` (the
/// thread's owner checked the access) is served without checking again.
pub fn media_read(shared: &Shared, caller: &Caller, f: MediaGet) -> MediaRead {
    let media = match media_id(&f.media, UNKNOWN) {
        Ok(m) => m,
        Err(e) => return MediaRead::Answer(Err(e)),
    };
    if caller.checked != UsersChecked::MediaHeld {
        match access(shared, &media, caller.user, f.thread) {
            Ok(Some(Holder::Here)) => {}
            Ok(Some(Holder::Node(node))) => return MediaRead::Elsewhere(node),
            Ok(None) => return MediaRead::Answer(Err(UNKNOWN)),
            Err(e) => return MediaRead::Answer(Err(e)),
        }
    }
    MediaRead::Answer(serve(shared, &media, f))
}

/// MEDIA_GET on one node: media held elsewhere cannot be had here.
pub(super) fn media_get(
    shared: &Shared,
    caller: &Caller,
    f: MediaGet,
) -> Result<Option<Frame>, Reject> {
    match media_read(shared, caller, f) {
        MediaRead::Answer(answer) => answer,
        MediaRead::Elsewhere(_) => Err((
            ErrorCode::Unavailable,
            "this media's bytes are held by another node of the cluster, which this node cannot reach; retry in a moment",
        )),
    }
}

/// The range `f` asks of media stored here (access already checked).
fn serve(shared: &Shared, media: &MediaId, f: MediaGet) -> Result<Option<Frame>, Reject> {
    let header = shared
        .store
        .media_header(media)
        .map_err(internal)?
        .ok_or(UNKNOWN)?;
    if f.offset > header.total_len {
        return Err((ErrorCode::BadOffset, "offset is past the end of the media"));
    }
    let want = (f.max_len as u64).min(shared.config.max_reply_bytes as u64 - 256);
    let end = (f.offset + want).min(header.total_len);
    let mut data = vec![0u8; (end - f.offset) as usize];
    let got = match shared.blobs.read_at(media, f.offset, &mut data) {
        Ok(n) => n,
        // Collected between the header read and now.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(UNKNOWN),
        Err(e) => return Err(io_failed(e)),
    };
    data.truncate(got);
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
