//! Every frame of protocol version 1, with its type code and body layout.
//!
//! A body is its fields in the order written here, each in the encoding of
//! [`wire`](crate::wire). Codes `0x01..=0x7F` are client requests, `0x80..=0xBF` server
//! responses, `0xC0..=0xFF` server pushes (sent with request id 0).

use bytes::{Bytes, BytesMut};

pub use crate::wire::Tail;
use crate::wire::{wire_enum, wire_struct, Reader, Wire};
use crate::Error;

wire_enum! {
    /// What a message body holds. The server stores the body opaque; only `System` bodies are
    /// written by the server itself (see [`SystemEvent`]).
    #[derive(Default)]
    pub enum MessageKind {
        #[default]
        Text = 0,
        /// A media reference: the body starts with the 32-byte media id returned by
        /// `MEDIA_COMMIT` (the server checks it), then whatever the client adds.
        Media = 1,
        /// Written by the server: membership changes, renames, recalls.
        System = 2,
    }
}

wire_enum! {
    #[derive(Default)]
    pub enum ThreadKind {
        #[default]
        Direct = 1,
        Group = 2,
    }
}

wire_enum! {
    #[derive(Default)]
    pub enum Role {
        #[default]
        Member = 0,
        Admin = 1,
    }
}

wire_enum! {
    /// The second and third tick.
    #[derive(Default)]
    pub enum ReceiptKind {
        #[default]
        Delivered = 1,
        Read = 2,
    }
}

wire_enum! {
    #[derive(Default)]
    pub enum Direction {
        /// Older than the anchor, newest first.
        #[default]
        Backward = 0,
        /// Newer than the anchor, oldest first.
        Forward = 1,
    }
}

wire_enum! {
    /// The event a `System` message records; its body is a [`SystemEvent`].
    #[derive(Default)]
    pub enum SystemEventKind {
        #[default]
        Created = 1,
        MemberAdded = 2,
        MemberRemoved = 3,
        MemberLeft = 4,
        Renamed = 5,
        /// `subject` is the id of the recalled message, which history now shows as a tombstone.
        Recalled = 6,
        /// `subject` is the id of the edited message; `body` is its new body, which history now
        /// shows with an edited mark. The edit time is this system message's id.
        Edited = 7,
        /// `subject` is the id of the message `actor` reacted to; `text` is the actor's reaction
        /// now (empty: removed); `reactions` are the message's counts after the change.
        Reacted = 8,
    }
}

wire_struct! {
    /// How many members reacted to a message with one reaction.
    pub struct ReactionCount {
        /// 1 to 32 bytes of UTF-8, e.g. one emoji.
        pub reaction: String,
        pub count: u32,
    }
}

wire_struct! {
    /// What a message carries besides its [`Message`] fields: the message it replies to, its
    /// last edit and its reactions. Listed (in `MESSAGES.meta` and `SYNC_BATCH.meta`) only for
    /// messages that have any of them; `Message` itself cannot grow (see PROTOCOL.md section 3).
    pub struct MessageMeta {
        /// The message described (of the same list's thread).
        pub id: u64,
        /// The message this one replies to (same thread), 0 for none.
        pub reply_to: u64,
        /// When the sender last edited it (the id of the EDITED system message), 0 if never.
        pub edited_at: u64,
        /// Members' reactions, counted per reaction, most frequent first.
        pub reactions: Vec<ReactionCount>,
        /// The asking user's own reaction, empty for none.
        pub mine: String,
    }
}

/// The body of a `System` message.
///
/// `users`, `body` and `reactions` were appended to the layout: a body that ends before one of
/// them (written by an earlier server) decodes with it empty, so the body of every stored
/// system message still reads.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SystemEvent {
    pub event: SystemEventKind,
    /// Who did it.
    pub actor: u64,
    /// The user added (the first one, for `MemberAdded`), removed or who left; the recalled
    /// message id; 0 otherwise.
    pub subject: u64,
    /// The group's name for `Created` and `Renamed`, empty otherwise.
    pub text: String,
    /// For `MemberAdded`, every user added by the one request (`subject` is the first);
    /// empty otherwise.
    pub users: Vec<u64>,
    /// For `Edited`, the message's new body; empty otherwise.
    pub body: Bytes,
    /// For `Reacted`, the message's reaction counts after the change; empty otherwise.
    pub reactions: Vec<ReactionCount>,
}

impl Wire for SystemEvent {
    fn put(&self, buf: &mut BytesMut) {
        self.event.put(buf);
        self.actor.put(buf);
        self.subject.put(buf);
        self.text.put(buf);
        self.users.put(buf);
        self.body.put(buf);
        self.reactions.put(buf);
    }
    fn get(r: &mut Reader, _field: &'static str) -> Result<Self, Error> {
        let mut ev = Self {
            event: Wire::get(r, "SystemEvent.event")?,
            actor: Wire::get(r, "SystemEvent.actor")?,
            subject: Wire::get(r, "SystemEvent.subject")?,
            text: Wire::get(r, "SystemEvent.text")?,
            users: Vec::new(),
            body: Bytes::new(),
            reactions: Vec::new(),
        };
        if r.remaining() > 0 {
            ev.users = Wire::get(r, "SystemEvent.users")?;
        }
        if r.remaining() > 0 {
            ev.body = Wire::get(r, "SystemEvent.body")?;
        }
        if r.remaining() > 0 {
            ev.reactions = Wire::get(r, "SystemEvent.reactions")?;
        }
        Ok(ev)
    }
    fn size(&self) -> usize {
        self.event.size()
            + self.actor.size()
            + self.subject.size()
            + self.text.size()
            + self.users.size()
            + self.body.size()
            + self.reactions.size()
    }
}

wire_struct! {
    /// One stored message, as pushed, returned by history and by sync.
    pub struct Message {
        pub thread: u64,
        /// Unique and strictly increasing within the thread: microseconds since the Unix epoch
        /// from the server's monotonic clock, so it is also the time the server accepted it.
        pub id: u64,
        pub sender: u64,
        /// The sender's own id for this message, echoed so its devices can match it.
        pub client_msg_id: u64,
        pub kind: MessageKind,
        /// Set when the sender recalled the message; the body is then empty (a tombstone).
        pub recalled: bool,
        pub body: Bytes,
    }
}

wire_struct! {
    pub struct Member {
        pub user: u64,
        pub role: Role,
        /// Everything up to this message id has reached one of the member's devices.
        pub delivered: u64,
        /// Everything up to this message id has been read by the member.
        pub read: u64,
    }
}

wire_struct! {
    /// A thread in full: shared state, members with their receipt cursors, and the asking
    /// user's private state.
    pub struct Thread {
        pub id: u64,
        pub kind: ThreadKind,
        /// The group's name; empty for a direct thread.
        pub name: String,
        pub members: Vec<Member>,
        /// Id of the newest message, 0 when there is none.
        pub last_msg_id: u64,
        pub muted: bool,
        pub hidden: bool,
        /// The asking user's private label (nickname) for the thread.
        pub label: String,
    }
}

wire_struct! {
    /// One row of the thread list.
    pub struct ThreadSummary {
        pub id: u64,
        pub kind: ThreadKind,
        pub name: String,
        /// For a direct thread, the other member; 0 for a group.
        pub peer: u64,
        pub member_count: u16,
        pub last_msg_id: u64,
        /// Messages from others newer than the asking user's read cursor.
        pub unread: u32,
        pub muted: bool,
        pub hidden: bool,
        pub label: String,
        pub last_message: Option<Message>,
    }
}

wire_struct! {
    pub struct UserInfo {
        pub id: u64,
        pub handle: String,
    }
}

wire_struct! {
    pub struct Presence {
        pub user: u64,
        pub online: bool,
        /// Microseconds since the Unix epoch: when the user was last online; while online, the
        /// time of the answer or push.
        pub last_seen: u64,
    }
}

wire_struct! {
    /// Names one message: its thread and id.
    pub struct MessageRef {
        pub thread: u64,
        pub id: u64,
    }
}

wire_struct! {
    /// `SYNC.vector`: a sync against a cluster. A message id is its thread's owner's clock, so
    /// one number cannot say "everything committed" across nodes whose clocks differ: each node
    /// index (the sorted member list) has its own watermark.
    pub struct SyncVector {
        /// Node index → the watermark of the last completed sync there (`BatchVector.watermarks`
        /// of its last page). Empty (or of another length): `since` for every node.
        pub since: Vec<u64>,
        /// The walk's watermarks as the previous `SYNC_BATCH` gave them; empty on a first page.
        pub watermarks: Vec<u64>,
        /// The node this page continues on (`BatchVector.next_node`); 0 on a first page.
        pub after_node: u16,
    }
}

wire_struct! {
    /// `SYNC_BATCH.vector`: the walk's per-node watermarks (node index → that node's
    /// watermark, 0 for a node the walk has not reached yet) and the node the next page starts
    /// on. When `more` is false every entry is set: keep them as the next `SyncVector.since`.
    pub struct BatchVector {
        pub watermarks: Vec<u64>,
        pub next_node: u16,
    }
}

wire_struct! {
    pub struct Stat {
        pub name: String,
        pub value: u64,
    }
}

/// Declares every frame: a body struct per frame, the [`Frame`] enum, and its codec glue.
macro_rules! frames {
    ($( $(#[$meta:meta])* $name:ident = $code:literal { $($(#[$fmeta:meta])* $field:ident : $ty:ty),* $(,)? } )*) => {
        $(
            wire_struct! { $(#[$meta])* pub struct $name { $($(#[$fmeta])* pub $field: $ty),* } }
        )*

        /// One frame of any type.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Frame { $($name($name)),* }

        $(
            impl From<$name> for Frame {
                fn from(f: $name) -> Self { Frame::$name(f) }
            }
        )*

        impl Frame {
            /// The type code of every frame, in code order.
            pub const CODES: &'static [(u8, &'static str)] = &[$(($code, stringify!($name))),*];

            /// This frame's type code.
            pub fn code(&self) -> u8 {
                match self { $(Frame::$name(_) => $code),* }
            }

            /// This frame's Rust name, e.g. `MessagePush`; PROTOCOL.md spells it `MESSAGE_PUSH`.
            pub fn name(&self) -> &'static str {
                match self { $(Frame::$name(_) => stringify!($name)),* }
            }

            pub(crate) fn body_size(&self) -> usize {
                match self { $(Frame::$name(f) => f.size()),* }
            }

            pub(crate) fn put_body(&self, buf: &mut BytesMut) {
                match self { $(Frame::$name(f) => f.put(buf)),* }
            }

            /// Decodes a body of type `code`. Trailing bytes after the known fields are ignored:
            /// a later protocol version may append fields to a body.
            pub(crate) fn decode_body(code: u8, body: Bytes) -> Result<Frame, Error> {
                let mut r = Reader::new(body);
                match code {
                    $($code => Ok(Frame::$name(<$name as Wire>::get(&mut r, stringify!($name))?)),)*
                    other => Err(Error::UnknownFrameType(other)),
                }
            }
        }
    };
}

frames! {
    // ---- Session: handshake, accounts, liveness (client → server) ----
    /// First frame on every connection.
    Hello = 0x01 { version: u16, client: String }
    /// Creates an account and logs this device in.
    Register = 0x02 { handle: String, password: String, device: String }
    Login = 0x03 { handle: String, password: String, device: String }
    /// Logs in again with the token from `AuthOk`: no password, no hashing.
    Resume = 0x04 { token: Bytes }
    /// Revokes this device's token and closes the connection.
    Logout = 0x05 {}
    /// Revokes every token of the user; every device is disconnected.
    LogoutAll = 0x06 {}
    /// Heartbeat.
    Ping = 0x07 { nonce: u64 }

    // ---- Threads and groups ----
    /// Returns the one direct thread between the caller and `peer`, creating it on first use.
    OpenDirect = 0x10 { peer: u64 }
    CreateGroup = 0x11 { name: String, members: Vec<u64> }
    AddMembers = 0x12 { thread: u64, members: Vec<u64> }
    RemoveMember = 0x13 { thread: u64, user: u64 }
    LeaveGroup = 0x14 { thread: u64 }
    RenameGroup = 0x15 { thread: u64, name: String }
    /// Threads by last message, newest first. The page starts after the cursor
    /// (`before_msg_id`, `before_thread`); both 0 for the first page.
    ListThreads = 0x16 { before_msg_id: u64, before_thread: u64, limit: u16 }
    GetThread = 0x17 { thread: u64 }
    /// Sets the caller's private state of a thread.
    SetThreadState = 0x18 { thread: u64, muted: bool, hidden: bool, label: String }

    // ---- Messages, receipts, sync ----
    /// `reply_to`: a message of the same thread this one replies to, 0 for none.
    Send = 0x20 { thread: u64, client_msg_id: u64, kind: MessageKind, body: Bytes, reply_to: u64 }
    /// Messages strictly older (backward) or newer (forward) than `anchor`. Anchor 0 means
    /// "from the newest" backward and "from the oldest" forward.
    History = 0x21 { thread: u64, anchor: u64, direction: Direction, limit: u16 }
    /// "Everything up to `up_to` reached a device of mine / was read by me." Cumulative.
    Receipt = 0x22 { thread: u64, kind: ReceiptKind, up_to: u64 }
    Recall = 0x23 { thread: u64, message: u64 }
    /// Hides one message from the caller's own history on all their devices.
    DeleteForMe = 0x24 { thread: u64, message: u64 }
    /// Which members have received and read a message.
    Readers = 0x25 { thread: u64, message: u64 }
    /// Everything that changed since `since` (a `watermark` from an earlier `SyncBatch`, 0 the
    /// first time). Continue a page with the `next_thread`/`next_message` of the last batch and
    /// its `watermark` (0 on the first page): one walk keeps one watermark.
    ///
    /// `vector` (a [`Tail`]: left out by clients of a single node): on a cluster, the
    /// per-node watermarks of the last completed sync and the walk's position (see
    /// [`SyncVector`]).
    Sync = 0x26 { since: u64, after_thread: u64, after_message: u64, limit: u16, watermark: u64, vector: Tail<SyncVector> }
    /// Typing indicator; never answered, never stored.
    Typing = 0x27 { thread: u64, active: bool }
    /// Replaces the body of the caller's own message (within the edit window).
    Edit = 0x28 { thread: u64, message: u64, body: Bytes }
    /// Sets the caller's one reaction to a message; an empty `reaction` removes it.
    React = 0x29 { thread: u64, message: u64, reaction: String }

    // ---- Contacts and presence ----
    ContactAdd = 0x30 { user: u64 }
    ContactRemove = 0x31 { user: u64 }
    ContactList = 0x32 {}
    LookupUser = 0x33 { handle: String }
    /// Pushes presence changes of these users (contacts only) for the life of the connection.
    PresenceSubscribe = 0x34 { users: Vec<u64> }
    PresenceQuery = 0x35 { users: Vec<u64> }
    /// Handles of users by id (at most 1,000; unknown ids are left out of the answer).
    GetUsers = 0x36 { users: Vec<u64> }

    // ---- Media, in chunks ----
    /// `hash`: the BLAKE3 hash (32 bytes) of the whole content, which becomes its media id.
    /// Sent again after a disconnect, it resumes the upload (`MediaUpload.offset`).
    MediaBegin = 0x40 { total_len: u64, mime: String, hash: Bytes }
    MediaChunk = 0x41 { upload: u64, offset: u64, data: Bytes }
    MediaCommit = 0x42 { upload: u64 }
    /// `thread`: a thread in which the caller saw the media (0: none or unknown), checked
    /// first, so the read is authorized without looking through every thread it was sent in.
    MediaGet = 0x43 { media: Bytes, offset: u64, max_len: u32, thread: u64 }

    // ---- Administration ----
    /// Server counters; allowed for admin accounts only.
    AdminStats = 0x50 {}

    // ---- Push notifications (for this device while it is offline) ----
    /// Registers a push key of this device with the push gateway's `app_id` (`platform`, e.g.
    /// `apns`, `fcm`, `web`, and `lang` are for the gateway and the app; `data`: a JSON
    /// object handed to the gateway as the device's `data`, empty for none). The same
    /// (`app_id`, `pushkey`) registered again replaces the earlier registration.
    RegisterPush = 0x70 { app_id: String, pushkey: String, platform: String, lang: String, data: String }
    /// Removes this user's registration of (`app_id`, `pushkey`); unknown ones are ignored.
    UnregisterPush = 0x71 { app_id: String, pushkey: String }

    // ---- Responses (server → client, same request id as the request) ----
    Done = 0x80 {}
    /// A request failed (`request_id` = the request's), or the connection is being closed
    /// (`request_id` = 0). `code` is one of [`ErrorCode`](crate::ErrorCode).
    ErrorReply = 0x81 { code: u16, message: String }
    Welcome = 0x82 { version: u16, max_frame: u32, heartbeat_secs: u16, node: String }
    /// `watermark`: the server's sync watermark at login; a device with nothing saved can
    /// sync from it instead of from 0 (and fetch older history per thread on demand).
    AuthOk = 0x83 { user: u64, device: u32, token: Bytes, handle: String, watermark: u64 }
    ThreadInfo = 0x84 { thread: Thread }
    ThreadList = 0x85 { threads: Vec<ThreadSummary>, more: bool }
    /// The first tick: the message is durable.
    Sent = 0x86 { thread: u64, message: u64, client_msg_id: u64 }
    /// `meta`: replies, edits and reactions of those `messages` that have any.
    Messages = 0x87 { thread: u64, messages: Vec<Message>, more: bool, meta: Vec<MessageMeta> }
    /// One page of sync. While `more`, ask again with `next_thread`/`next_message` and this
    /// `watermark` (the same on every page of a walk); when done, keep `watermark` as the next
    /// `since`. `deleted`: messages of these threads the caller deleted for themselves (on any
    /// device) since `since`. `meta`: replies, edits and reactions of those `messages` that
    /// have any.
    ///
    /// `vector` (a [`Tail`]: absent from a single node): on a cluster, the walk's per-node
    /// watermarks and the node the next page starts on (see [`BatchVector`]).
    SyncBatch = 0x88 { threads: Vec<Thread>, messages: Vec<Message>, more: bool, next_thread: u64, next_message: u64, watermark: u64, deleted: Vec<MessageRef>, meta: Vec<MessageMeta>, vector: Tail<BatchVector> }
    ReadersList = 0x89 { thread: u64, message: u64, delivered: Vec<u64>, read: Vec<u64> }
    Contacts = 0x8A { users: Vec<UserInfo> }
    User = 0x8B { user: UserInfo }
    PresenceList = 0x8C { entries: Vec<Presence> }
    Pong = 0x8D { nonce: u64 }
    /// `offset`: the bytes of this content the server already has; continue from there
    /// (`total_len`: nothing left to send, commit at once).
    MediaUpload = 0x8E { upload: u64, chunk_max: u32, offset: u64 }
    MediaRef = 0x8F { media: Bytes, total_len: u64 }
    MediaData = 0x90 { media: Bytes, total_len: u64, offset: u64, data: Bytes }
    Stats = 0x91 { entries: Vec<Stat> }
    Users = 0x92 { users: Vec<UserInfo> }

    // ---- Pushes (server → client, request id 0) ----
    /// `reply_to`: the message this one replies to, 0 for none.
    MessagePush = 0xC0 { message: Message, reply_to: u64 }
    ReceiptPush = 0xC1 { thread: u64, user: u64, kind: ReceiptKind, up_to: u64 }
    PresencePush = 0xC2 { presence: Presence }
    TypingPush = 0xC3 { thread: u64, user: u64, active: bool }
    /// The user lives on another node: reconnect to `addr` and resume. The server closes.
    /// `key`: that node's static Noise public key (32 bytes) for the client to pin on the new
    /// connection; empty when the cluster runs plaintext.
    Redirect = 0xC4 { node: String, addr: String, key: Bytes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_system_event_without_the_appended_users_decodes_with_none() {
        // MEMBER_ADDED, actor 7, subject 9, empty text: the layout before `users`.
        let mut old = vec![SystemEventKind::MemberAdded as u8];
        old.extend_from_slice(&7u64.to_be_bytes());
        old.extend_from_slice(&9u64.to_be_bytes());
        old.extend_from_slice(&[0, 0]);
        let ev = SystemEvent::get(&mut Reader::new(Bytes::from(old)), "body").unwrap();
        assert_eq!((ev.actor, ev.subject, ev.users.len()), (7, 9, 0));
        let new = SystemEvent {
            users: vec![9, 11],
            body: Bytes::from_static(b"new"),
            reactions: vec![ReactionCount {
                reaction: "+1".into(),
                count: 2,
            }],
            ..ev
        };
        let mut buf = BytesMut::new();
        new.put(&mut buf);
        assert_eq!(buf.len(), new.size());
        assert_eq!(
            SystemEvent::get(&mut Reader::new(buf.freeze()), "body").unwrap(),
            new
        );
    }

    #[test]
    fn codes_are_unique_ascending_and_in_their_direction_range() {
        for pair in Frame::CODES.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{:?} then {:?}", pair[0], pair[1]);
        }
        let requests = Frame::CODES
            .iter()
            .filter(|(c, _)| (0x01..=0x7f).contains(c))
            .count();
        let responses = Frame::CODES
            .iter()
            .filter(|(c, _)| (0x80..=0xbf).contains(c))
            .count();
        let pushes = Frame::CODES.iter().filter(|(c, _)| *c >= 0xc0).count();
        assert_eq!((requests, responses, pushes), (40, 19, 5));
        assert!(
            !Frame::CODES.iter().any(|(c, _)| *c == 0),
            "code 0 is never assigned"
        );
    }

    #[test]
    fn unknown_code_is_an_error_and_known_ones_decode_their_body() {
        for code in 0..=u8::MAX {
            let known = Frame::CODES.iter().any(|(c, _)| *c == code);
            match Frame::decode_body(code, Bytes::new()) {
                Err(Error::UnknownFrameType(c)) => assert!(!known && c == code),
                // An empty body decodes for field-less frames and is truncated for the rest.
                Ok(f) => assert!(known && f.code() == code && f.body_size() == 0),
                Err(e) => assert!(known && matches!(e, Error::Truncated { .. }), "{e}"),
            }
        }
    }

    #[test]
    fn enum_codes_round_trip() {
        for &k in MessageKind::ALL {
            assert_eq!(MessageKind::from_code(k as u8), Some(k));
        }
        for &k in SystemEventKind::ALL {
            assert_eq!(SystemEventKind::from_code(k as u8), Some(k));
        }
        assert_eq!(ReceiptKind::from_code(0), None);
        assert_eq!(ThreadKind::from_code(0), None);
    }
}
